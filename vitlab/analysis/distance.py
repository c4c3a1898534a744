"""Fig. 7 (right), mean attention distance: each head's distance per image, its spread and its references.
:func:`distance_analysis` is the one analysis behind the figure, its readout and its explorer."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import metrics
from .capture import Capture, capture
from .references import BOOTSTRAP_SEED, INIT_SEEDS, RESAMPLES, bootstrap_interval, random_inits
from ..models.inputs import check_images


def attention_distance(cap: Capture, layer: int | None = None, renormalize: bool = False) -> torch.Tensor:
    """Mean attention distance in pixels per head of a captured ``layer``, (heads,), or of every one (None),
    (layers, heads); ``renormalize`` as in :func:`vitlab.analysis.metrics.mean_attention_distance`."""
    if not isinstance(cap, Capture):
        raise TypeError("cap must be a Capture (from vitlab.capture or vitlab.analysis.capture), got "
                        f"{type(cap).__name__}")
    if 0 in cap.grid or 0 in cap.patch_size:
        raise ValueError("cap holds no forward pass yet (its grid is unknown): fill it with vitlab.capture(model, "
                         "images), or run the model inside vitlab.analysis.capture.hooks(model)")
    if layer is not None:
        return metrics.mean_attention_distance(cap.attn[layer], cap.grid, cap.patch_size, cap.num_prefix_tokens,
                                               renormalize)
    return torch.stack([attention_distance(cap, i, renormalize) for i in cap.attn])  # (layers, heads)


def head_statistics(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64,
                    layers: Sequence[int] | None = None, renormalize: bool = False,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-layer, per-head mean attention distance and entropy of uint8 ``images`` (N, 3, H, W) or uint8 batches, in
    constant memory: ``"distance"``, ``"entropy"`` (layers, heads) pixels and nats, ``"distance_per_image"``,
    ``"entropy_per_image"`` (N, layers, heads), ``"layers"``; ``renormalize``: see :func:`attention_distance`."""
    from tqdm.auto import tqdm
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(images, torch.Tensor):
        check_images(model, images)  # all of them, before the first batch's work
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        total = -(-len(images) // batch_size)
    else:
        batches, total = iter(images), None
    stats = metrics.HeadStats(renormalize=renormalize)
    for batch in tqdm(batches, total=total, desc="attention statistics", disable=not progress, leave=False):
        cap = capture(model, batch, layers)
        stats.update(cap.attn, cap.grid, cap.patch_size, cap.num_prefix_tokens)
        del cap  # drop this batch's maps before the next forward
    if not stats.images:
        raise ValueError("images gave no batches: pass a uint8 tensor (N, 3, H, W) or an iterable of such batches")
    return dict(stats.result(), layers=torch.tensor(sorted(stats.distance)))


def uniform_distance(model: nn.Module, renormalize: bool = False) -> float:
    """:func:`vitlab.analysis.metrics.uniform_attention_distance` in pixels for ``model`` at its built input size."""
    patch, prefix = metrics.pixel_patch_size(model), int(getattr(model, "num_prefix_tokens", 0))
    return metrics.uniform_attention_distance(metrics.patch_grid(model), patch, prefix, renormalize)


def random_init_statistics(model: nn.Module, images: torch.Tensor, seeds: Sequence[int] = INIT_SEEDS,
                           batch_size: int = 64, layers: Sequence[int] | None = None, renormalize: bool = False,
                           progress: bool = False) -> dict[str, torch.Tensor] | None:
    """:func:`head_statistics` of random-initialised models of ``model``'s architecture: ``"distance"``, ``"entropy"``
    (seeds, layers, heads) and ``"layers"``; None without seeds or for a model without ``vitlab_arch``."""
    runs = [head_statistics(m, images, batch_size, layers, renormalize, progress) for m in random_inits(model, seeds)]
    if not runs:
        return None
    return {"distance": torch.stack([r["distance"] for r in runs]),  # (seeds, layers, heads)
            "entropy": torch.stack([r["entropy"] for r in runs]), "layers": runs[0]["layers"]}


@dataclass(frozen=True)
class MostLocalHead:
    """The lowest layer's most local head: its index and, in pixels, its mean, std and 95% interval over images."""
    head: int
    mean: float
    std: float
    low: float
    high: float


def _spread(per_image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, standard deviation and 95% bootstrap interval over images of (images, layers, heads), float64."""
    d = per_image.detach().double().cpu()
    if d.ndim != 3 or len(d) < 1:
        raise ValueError(f"per-image distances must be (images, layers, heads), got {tuple(d.shape)}")
    mean = d.mean(0)  # (L, H)
    std = d.std(0, unbiased=True) if len(d) > 1 else torch.zeros_like(mean)
    low, high = bootstrap_interval(d, RESAMPLES, BOOTSTRAP_SEED)  # (L, H) each
    return mean, std, low, high


def _most_local(mean: torch.Tensor, std: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> MostLocalHead:
    head = int(mean[0].argmin())
    return MostLocalHead(head, float(mean[0, head]), float(std[0, head]), float(low[0, head]), float(high[0, head]))


def lowest_head(per_image: torch.Tensor) -> MostLocalHead:
    """The lowest layer's most local head of per-image distances (images, layers, heads), pixels (``result.lowest``)."""
    return _most_local(*_spread(per_image[:, :1]))


@dataclass(frozen=True, kw_only=True)
class DistanceResult:
    """Fig. 7 (right) of one model on a set of images (:func:`distance_analysis`). Distances in pixels."""
    layers: list[int]  # block indices of the rows
    per_image: torch.Tensor  # (images, layers, heads) each image's distance per head
    mean: torch.Tensor  # (layers, heads) float32, like std (across images), low and high (95% bootstrap interval)
    std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    layer_min: list[float]  # per layer the lowest head's, the highest head's and the heads' mean
    layer_max: list[float]
    layer_means: list[float]
    lowest: MostLocalHead
    uniform: float  # the distance under uniform attention
    random_init: torch.Tensor | None = None  # (seeds, layers, heads) of random-initialised models
    random_images: int = 0  # how many of the images (the first ones) the random-initialised models saw
    token_field: float | None = None  # a hybrid's metrics.token_receptive_field; None for a ViT
    cnn_fields: list[tuple[str, float]] = field(default_factory=list)  # a CNN's [(block, pixels), ...]
    depth: int = 0  # the model's number of blocks
    diagonal: float | None = None  # its input image's diagonal, if known
    renormalize: bool = False

    @property
    def images(self) -> int:
        """How many images the means are over."""
        return len(self.per_image)

    @property
    def band(self) -> list[tuple[float, float]]:
        """Per layer the (lowest, highest) random-init head over seeds, pixels; empty without a reference."""
        if self.random_init is None:
            return []
        r = self.random_init.detach().double().cpu()  # (seeds, L, H)
        return [(float(r[:, i].min()), float(r[:, i].max())) for i in range(r.shape[1])]

    @classmethod
    def from_per_image(cls, per_image: torch.Tensor, uniform: float, random_init: torch.Tensor | None = None,
                       layers: Sequence[int] | None = None, **context) -> DistanceResult:
        """The result for per-image distances (images, layers, heads); ``context``: the remaining fields."""
        mean, std, low, high = _spread(per_image)
        layers = list(range(mean.shape[0])) if layers is None else [int(i) for i in layers]
        if random_init is not None and tuple(random_init.shape[1:]) != tuple(mean.shape):
            raise ValueError(f"random_init {tuple(random_init.shape)} must be "
                             f"(seeds, {mean.shape[0]}, {mean.shape[1]})")
        context.setdefault("depth", layers[-1] + 1)
        return cls(layers=layers, per_image=per_image.detach().cpu(), mean=mean.float(), std=std.float(),
                   low=low.float(), high=high.float(), layer_min=[float(x) for x in mean.min(1).values],
                   layer_max=[float(x) for x in mean.max(1).values],
                   layer_means=[float(x) for x in mean.mean(1)], lowest=_most_local(mean, std, low, high),
                   uniform=float(uniform), random_init=random_init, **context)


def distance_analysis(model: nn.Module, images: torch.Tensor, renormalize: bool = False,
                      seeds: Sequence[int] = INIT_SEEDS, reference_images: int | None = None,
                      cnn: nn.Module | None = None, batch_size: int = 64, progress: bool = False) -> DistanceResult:
    """Fig. 7 (right) of ``model`` on uint8 ``images`` (N, 3, H, W) against uniform attention, random inits (``seeds``,
    first ``reference_images`` images) and a ``cnn``'s receptive fields; ``renormalize``: :func:`attention_distance`."""
    stats = head_statistics(model, images, batch_size, renormalize=renormalize, progress=progress)
    shown = images if reference_images is None else images[:reference_images]
    reference = random_init_statistics(model, shown, seeds, batch_size, renormalize=renormalize, progress=progress)
    size = getattr(model, "pretrained_cfg", {}).get("input_size")
    return DistanceResult.from_per_image(
        stats["distance_per_image"], uniform_distance(model, renormalize),
        None if reference is None else reference["distance"], stats["layers"].tolist(),
        random_images=0 if reference is None else len(shown),
        token_field=metrics.token_receptive_field(model) if metrics.is_hybrid(model) else None,
        cnn_fields=[] if cnn is None else metrics.receptive_fields(cnn), depth=len(model.blocks),
        diagonal=math.hypot(*size[1:]) if size else None, renormalize=renormalize)
