"""Fig. 7 (left), the patch-embedding filters: their principal components against random init.
:func:`filters_analysis` is the one analysis behind the figure, its readout and its explorer."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import metrics
from .references import INIT_SEEDS, random_inits


@dataclass(frozen=True, kw_only=True)
class FiltersResult:
    """Principal components of one model's patch-embedding filters (:func:`filters_analysis`)."""
    filters: torch.Tensor  # (k, C, P, P) the first k principal components
    ratio: torch.Tensor  # (components,) explained-variance ratios
    reference: torch.Tensor | None  # (seeds, components) the ratios of random-initialised models
    k: int  # how many leading components are shown and summed (first_k)

    @property
    def first(self) -> float:
        """Share of the variance in the first component."""
        return float(self.ratio[0])

    @property
    def first_k(self) -> float:
        """Share of the variance in the first ``k`` components."""
        return float(self.ratio.double()[: self.k].sum())

    @property
    def reference_first(self) -> list[float]:
        """:attr:`first` of each random-init seed (empty without a reference)."""
        return [] if self.reference is None else [float(r[0]) for r in self.reference]

    @property
    def reference_first_k(self) -> list[float]:
        """:attr:`first_k` of each random-init seed (empty without a reference)."""
        return [] if self.reference is None else [float(r.double()[: self.k].sum()) for r in self.reference]

    @classmethod
    def from_ratios(cls, ratio: torch.Tensor, reference: torch.Tensor | None = None, k: int = 28,
                    filters: torch.Tensor | None = None) -> FiltersResult:
        """The result for given explained-variance ratios (components,) and random-init ones (seeds, components)."""
        if reference is not None and reference.shape[1:] != ratio.shape:
            raise ValueError(f"reference has {tuple(reference.shape)} ratios, the model {tuple(ratio.shape)}")
        return cls(filters=torch.empty(0) if filters is None else filters, ratio=ratio.detach().cpu(),
                   reference=reference, k=min(k, len(ratio)))


def components(model: nn.Module) -> int:
    """How many principal components the patch-embedding filters of ``model`` have: min(filters, values per filter)."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no convolutional patch embedding (patch_embed.proj)")
    return min(proj.weight.shape[0], proj.weight[0].numel())


def filters_analysis(model: nn.Module, k: int = 28, seeds: Sequence[int] = INIT_SEEDS) -> FiltersResult:
    """Fig. 7 (left) of ``model``: its first ``k`` (<= :func:`components`) principal components against random inits."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    full = components(model)
    filters, ratio = metrics.embedding_filters(model, k=full)  # (full, C, P, P), (full,)
    inits = [metrics.embedding_filters(m, k=full)[1] for m in random_inits(model, seeds)]
    k = min(k, full)
    return FiltersResult(filters=filters[:k], ratio=ratio, reference=torch.stack(inits) if inits else None, k=k)
