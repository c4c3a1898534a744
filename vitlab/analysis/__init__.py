"""Analysis: capture a model's internals and compute the paper's analyses (Figs. 6 and 7), representations and probes.

``capture`` records attention and tokens; ``metrics`` and ``attention_maps`` are tensor functions over them; ``references`` rebuilds random-initialised models and gives
bootstrap intervals; ``distance``, ``filters``, ``positions`` and ``rollout`` are the four Fig. 6/7
analyses, each one function returning one result that readouts, figures and explorers read.
Imports from ``vitlab.models`` and the base modules only; nothing here trains or draws.
"""
from . import (attention_maps, capture, distance, features, filters, metrics, positions, references, representations,
               rollout)
