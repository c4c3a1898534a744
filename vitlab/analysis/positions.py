"""Fig. 7 (center), position embeddings: how much of the image grid their similarity holds, against random init.
:func:`position_analysis` is the one analysis behind the figure, its readout and its explorer."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import metrics
from .references import INIT_SEEDS, random_inits

_Scores = tuple[metrics.PositionStructure, metrics.MirrorScore]  # the structure and mirror scores of one similarity


def _position_scores(sim: torch.Tensor) -> _Scores:
    """Structure and mirror scores of a (rows, cols, rows, cols) similarity."""
    grid = tuple(sim.shape[:2])
    return metrics.position_structure(sim, grid), metrics.mirror_score(sim, grid)


@dataclass(frozen=True, kw_only=True)
class PositionResult:
    """Position-embedding similarity of one model and its scores (:func:`position_analysis`)."""
    sim: torch.Tensor  # (rows, cols, rows, cols) cosine similarity of the patches' position embeddings
    structure: metrics.PositionStructure
    mirror: metrics.MirrorScore
    reference: list[_Scores]  # (structure, mirror) of each random-initialised model (may be empty)

    @classmethod
    def from_similarity(cls, sim: torch.Tensor, reference: Sequence[_Scores] = ()) -> PositionResult:
        """The result for a given similarity (rows, cols, rows, cols), e.g. of synthetic embeddings."""
        structure, mirror = _position_scores(sim)
        return cls(sim=sim, structure=structure, mirror=mirror, reference=list(reference))


def position_analysis(model: nn.Module, seeds: Sequence[int] = INIT_SEEDS) -> PositionResult:
    """Fig. 7 (center) of ``model``, against random-initialised models (``seeds``; none without ``vitlab_arch``)."""
    reference = [_position_scores(metrics.position_similarity(m)) for m in random_inits(model, seeds)]
    return PositionResult.from_similarity(metrics.position_similarity(model), reference)
