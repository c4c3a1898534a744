"""Analysis: capture a model's internals and compute the paper's analyses (Figs. 6 and 7), representations and probes.

Imports from ``vitlab.models`` and the base modules only; nothing here trains or draws.
"""
from . import capture, features, metrics, representations
