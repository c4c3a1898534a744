"""Analysis: capture a model's internals, the paper's Fig. 6/7 analyses, representations and probes. ``distance``,
``filters``, ``positions`` and ``rollout`` are the four analyses, each one function returning one result that readouts,
figures and explorers read. Nothing here trains or draws."""
from . import (ablation, attention_maps, capture, distance, faithfulness, features, filters, lens, map_checks,
               metrics, patching, positions, references, representations, residual, rollout, saliency, scoreboard)
