"""Fig. 6, attention rollout: how much of the prediction's rollout (the class token's row, or the mean of the patch rows
for a model that pools) lies on the image centre, against random init (a preference for the centre, where CIFAR-10
objects mostly sit, not for the object: no segmentation masks)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import attention_maps
from .capture import capture, check_pooling, has_class_token
from .references import INIT_SEEDS, bootstrap_interval, random_inits
from ..models.inputs import check_images


def _central_region(grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols) bool mask of the central patches: the middle half of the rows and of the columns."""
    rows, cols = grid
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4] = True
    return mask


def _centre_ratio(rollout: torch.Tensor) -> torch.Tensor:
    """Per image, the rollout (images, rows, cols) mass in :func:`_central_region` over its share of area, float64."""
    if rollout.ndim != 3:
        raise ValueError(f"rollout must be (images, rows, cols), got {tuple(rollout.shape)}")
    r = rollout.detach().double().cpu()
    mask = _central_region(tuple(r.shape[1:]))
    mass = r[:, mask].sum(1) / r.flatten(1).sum(1).clamp_min(1e-30)  # (images,)
    return mass / mask.double().mean()


@torch.no_grad()
def _rollout_maps(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                  batch_size: int = 64) -> torch.Tensor:
    """The rollout of what the prediction reads (:func:`~vitlab.analysis.capture.pooling`) per image: (images, rows,
    cols)."""
    pool = check_pooling(model)
    check_images(model, images)
    maps = []
    for i in range(0, len(images), batch_size):
        cap = capture(model, images[i : i + batch_size])
        roll = attention_maps.attention_rollout(cap.attn, cap.num_prefix_tokens, head_fusion, discard_ratio,
                                                pool)  # (B, n)
        maps.append(roll.reshape(len(roll), *cap.grid))
    return torch.cat(maps)


@dataclass(frozen=True, kw_only=True)
class RolloutResult:
    """Attention rollout of one model over images and its share on the image centre (:func:`rollout_analysis`)."""
    maps: torch.Tensor  # (images, rows, cols) the rollout of what the prediction reads, over the patches
    ratios: torch.Tensor  # (images,) rollout mass in the central region over that region's share of the area
    area: float  # fraction of the patches in the central region
    ratio: float  # mean of ratios (1 for a uniform rollout), with its 95% bootstrap interval and std across images
    low: float
    high: float
    std: float
    reference: list[float]  # the mean ratio of each random-initialised model (may be empty)
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    described: str = ""  # which images, e.g. "128 CIFAR-10 test images, 12-13 per class" ("": only how many)
    pool: str = "token"  # the row read: "token", the class token's; "avg", the mean of the patch rows (the model pools)
    class_token: bool = True  # whether the model has a class token (unread when it pools)

    @property
    def images(self) -> int:
        """How many images."""
        return len(self.ratios)

    @classmethod
    def from_maps(cls, maps: torch.Tensor, reference: Sequence[torch.Tensor] = (), **settings) -> RolloutResult:
        """The result for given rollout maps (images, rows, cols) and those of random-init models (one per seed)."""
        ratios = _centre_ratio(maps)  # (images,)
        low, high = bootstrap_interval(ratios)
        return cls(maps=maps, ratios=ratios, area=float(_central_region(tuple(maps.shape[1:])).double().mean()),
                   ratio=float(ratios.mean()), low=float(low), high=float(high),
                   std=float(ratios.std()) if len(ratios) > 1 else 0.0,
                   reference=[float(_centre_ratio(r).mean()) for r in reference], **settings)


def rollout_analysis(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                     seeds: Sequence[int] = INIT_SEEDS, batch_size: int = 64, described: str = "") -> RolloutResult:
    """Fig. 6 of ``model`` on uint8 ``images`` (N, 3, H, W) against random inits; ``head_fusion``, ``discard_ratio``: as
    :func:`vitlab.analysis.attention_maps.attention_rollout`; ``described``: which images, for the readout. A model
    that averages its patch tokens gets the mean of the patch rows; one that pools otherwise is refused."""
    pool = check_pooling(model)
    maps = _rollout_maps(model, images, head_fusion, discard_ratio, batch_size)
    reference = [_rollout_maps(m, images, head_fusion, discard_ratio, batch_size) for m in random_inits(model, seeds)]
    return RolloutResult.from_maps(maps, reference, head_fusion=head_fusion, discard_ratio=discard_ratio,
                                   described=described, pool=pool, class_token=has_class_token(model))
