"""What a measured number is read against: untrained models of the same architecture, and intervals over images.
:func:`random_inits` is the one place that decides whether a model has a random-init reference."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..models import build_model

#: Initialisation seeds of the random-initialised reference models.
INIT_SEEDS = (0, 1, 2)
#: Bootstrap defaults: resamples of the images, their seed, and the interval's level.
RESAMPLES, BOOTSTRAP_SEED, LEVEL = 1000, 0, 0.95


def random_init(model: nn.Module, seed: int) -> nn.Module:
    """``torch.manual_seed(seed); build_model(model.vitlab_arch)`` on ``model``'s device, in eval mode, RNG restored."""
    arch = getattr(model, "vitlab_arch", None)
    if arch is None:
        raise ValueError(f"{type(model).__name__} has no vitlab_arch record: load it with vitlab.load_model "
                         "to compare it with random-initialised models of its architecture")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(arch)
    return fresh.to(next(model.parameters()).device).eval()


def random_inits(model: nn.Module, seeds: Sequence[int] = INIT_SEEDS) -> Iterator[nn.Module]:
    """:func:`random_init` of ``model`` under each seed, built one at a time; nothing without ``vitlab_arch``."""
    if getattr(model, "vitlab_arch", None) is None:
        return
    for seed in seeds:
        yield random_init(model, seed)


def bootstrap_interval(values: torch.Tensor, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap interval of the mean over the first dimension (images) of ``values`` (images, ...):
    ``(low, high)``, each shaped ``values.shape[1:]``, float64, resampled under ``seed`` by its own generator."""
    if values.ndim < 1 or len(values) < 1:
        raise ValueError(f"values must hold at least one image along dim 0, got shape {tuple(values.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(values)
    flat = values.detach().double().cpu().reshape(n, -1)  # (n, k)
    gen = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, 100):  # 100 resamples at a time: memory 100 x n, whatever n
        picks = torch.randint(0, n, (min(100, resamples - start), n), generator=gen)  # (r, n) image indices
        ones = torch.ones(picks.shape, dtype=torch.float64)
        counts = torch.zeros(len(picks), n, dtype=torch.float64).scatter_add_(1, picks, ones)
        means.append(counts @ flat / n)  # (r, k): each resample's mean
    means = torch.cat(means)  # (R, k)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])
