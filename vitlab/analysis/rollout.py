"""Fig. 6, attention rollout: where the class token's rolled-out attention lies, against random init.

:func:`rollout_analysis` is the one analysis behind the rollout figure, its readout and its
explorer: the class token's rollout over the patches (:func:`vitlab.analysis.attention_maps.attention_rollout`)
for every image, and how much of it lies on the central region of the image (:func:`_centre_ratio`):
per image, its mean with a 95% bootstrap interval over images, and the mean of random-initialised
models of the architecture (:mod:`vitlab.analysis.references`). CIFAR-10 objects mostly sit in the
centre; without segmentation masks this measures a preference for the centre, not for the object.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import attention_maps
from .capture import capture
from .references import INIT_SEEDS, bootstrap_interval, random_inits
from ..models.inputs import check_images


def central_region(grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols) bool mask of the central patches: the middle half of the rows and of the columns.

    A quarter of the area on grids divisible by 4 (the central 4x4 of an 8x8 grid).
    """
    rows, cols = grid
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4] = True
    return mask


def _centre_ratio(rollout: torch.Tensor) -> torch.Tensor:
    """Per image, rollout mass in :func:`central_region` over its share of area: (images,) float64.

    Args:
        rollout: (images, rows, cols) non-negative class-token rollout over the patches.
    """
    if rollout.ndim != 3:
        raise ValueError(f"rollout must be (images, rows, cols), got {tuple(rollout.shape)}")
    r = rollout.detach().double().cpu()
    mask = central_region(tuple(r.shape[1:]))
    mass = r[:, mask].sum(1) / r.flatten(1).sum(1).clamp_min(1e-30)  # (images,)
    return mass / mask.double().mean()


@torch.no_grad()
def rollout_maps(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 batch_size: int = 64) -> torch.Tensor:
    """The class token's rollout (:func:`vitlab.analysis.attention_maps.attention_rollout`) per image: (images, rows, cols)."""
    check_images(model, images)
    maps = []
    for i in range(0, len(images), batch_size):
        cap = capture(model, images[i : i + batch_size])
        roll = attention_maps.attention_rollout(cap.attn, cap.num_prefix_tokens, head_fusion, discard_ratio)  # (B, n)
        maps.append(roll.reshape(len(roll), *cap.grid))
    return torch.cat(maps)


@dataclass(frozen=True, kw_only=True)
class RolloutResult:
    """Attention rollout of one model over images and its share on the image centre (:func:`rollout_analysis`).

    Attributes:
        maps: (images, rows, cols) the class token's rollout over the patches of each image.
        ratios: (images,) rollout mass in the central region over that region's share of the area.
        area: fraction of the patches in the central region (:func:`central_region`).
        ratio: mean of ``ratios`` (1 for a uniform rollout); low, high: its 95% bootstrap interval
            over images; std: the standard deviation across images.
        reference: the mean ratio of each random-initialised model (may be empty).
        head_fusion, discard_ratio: the rollout's settings.
    """

    maps: torch.Tensor
    ratios: torch.Tensor
    area: float
    ratio: float
    low: float
    high: float
    std: float
    reference: list[float]
    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    @property
    def images(self) -> int:
        """How many images."""
        return len(self.ratios)

    @classmethod
    def from_maps(cls, maps: torch.Tensor, reference: Sequence[torch.Tensor] = (), **settings) -> RolloutResult:
        """The result for given rollout maps (images, rows, cols) and those of random-init models (one per seed)."""
        ratios = _centre_ratio(maps)  # (images,)
        low, high = bootstrap_interval(ratios)
        return cls(maps=maps, ratios=ratios, area=float(central_region(tuple(maps.shape[1:])).double().mean()),
                   ratio=float(ratios.mean()), low=float(low), high=float(high),
                   std=float(ratios.std()) if len(ratios) > 1 else 0.0,
                   reference=[float(_centre_ratio(r).mean()) for r in reference], **settings)


def rollout_analysis(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                     seeds: Sequence[int] = INIT_SEEDS, batch_size: int = 64) -> RolloutResult:
    """Fig. 6 of ``model`` on uint8 ``images`` (N, 3, H, W), against random-initialised models of its architecture.

    Args:
        head_fusion, discard_ratio: of the rollout (:func:`vitlab.analysis.attention_maps.attention_rollout`).
        seeds: of the random-initialised models (none for a model without ``vitlab_arch``, or with ``seeds=()``).
    """
    maps = rollout_maps(model, images, head_fusion, discard_ratio, batch_size)
    reference = [rollout_maps(m, images, head_fusion, discard_ratio, batch_size) for m in random_inits(model, seeds)]
    return RolloutResult.from_maps(maps, reference, head_fusion=head_fusion, discard_ratio=discard_ratio)
