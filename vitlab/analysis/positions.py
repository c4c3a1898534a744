"""Fig. 7 (center), position embeddings: how much of the image grid their similarity holds, against random init.

:func:`position_analysis` is the one analysis behind the figure, its readout and its explorer: the
cosine similarity of every pair of patches' position embeddings, its structure scores (closeness
and row-column, :func:`vitlab.analysis.metrics.position_structure`) and its left-right mirror score
(:func:`vitlab.analysis.metrics.mirror_score`), and the same scores of random-initialised models of
the architecture (:mod:`vitlab.analysis.references`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import metrics
from .references import INIT_SEEDS, random_inits

#: The structure and mirror scores of one similarity.
Scores = tuple[metrics.PositionStructure, metrics.MirrorScore]


def position_scores(sim: torch.Tensor) -> Scores:
    """Structure and mirror scores of a (rows, cols, rows, cols) similarity."""
    grid = tuple(sim.shape[:2])
    return metrics.position_structure(sim, grid), metrics.mirror_score(sim, grid)


@dataclass(frozen=True, kw_only=True)
class PositionResult:
    """Position-embedding similarity of one model and its scores (:func:`position_analysis`).

    Attributes:
        sim: (rows, cols, rows, cols) cosine similarity of the patches' position embeddings.
        structure, mirror: its scores (:func:`position_scores`).
        reference: the scores of each random-initialised model, one pair per seed (may be empty).
    """

    sim: torch.Tensor
    structure: metrics.PositionStructure
    mirror: metrics.MirrorScore
    reference: list[Scores]

    @classmethod
    def from_similarity(cls, sim: torch.Tensor, reference: Sequence[Scores] = ()) -> PositionResult:
        """The result for a given similarity (rows, cols, rows, cols), e.g. of synthetic embeddings."""
        structure, mirror = position_scores(sim)
        return cls(sim=sim, structure=structure, mirror=mirror, reference=list(reference))


def position_analysis(model: nn.Module, seeds: Sequence[int] = INIT_SEEDS) -> PositionResult:
    """Fig. 7 (center) of ``model``, against random-initialised models of its architecture.

    Args:
        seeds: of the random-initialised models (none for a model without ``vitlab_arch``, or
            with ``seeds=()``).
    """
    reference = [position_scores(metrics.position_similarity(m)) for m in random_inits(model, seeds)]
    return PositionResult.from_similarity(metrics.position_similarity(model), reference)
