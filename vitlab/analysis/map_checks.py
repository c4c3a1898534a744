"""Checks of attribution maps that need no deletion curves (issue 32): the model-parameter randomisation test
(Adebayo et al., NeurIPS 2018, cascading from the head down) and the Focus score on four-image mosaics (Arias-Duart
et al., 2022), a localisation score without boxes. Maps come from :mod:`vitlab.analysis.saliency`."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import saliency as sal
from .lens import check_labels
from .references import bootstrap_interval, random_init
from .. import data
from ..models.inputs import input_size

#: A method whose maps keep this mean Spearman correlation with the trained model's after every layer is
#: re-initialised does not depend on what the model learnt (flagged).
FLAG_SPEARMAN = 0.5
#: Pixels per side of one mosaic tile (CIFAR-10's size): mosaics are 2x2 tiles, 64x64 before resizing.
TILE = 32


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension of ``values`` (..., n), ties given the mean of their ranks, float64."""
    v = values.double()
    below = (v[..., :, None] > v[..., None, :]).sum(-1)  # (..., n): how many are smaller
    equal = (v[..., :, None] == v[..., None, :]).sum(-1)  # (..., n): how many tie, itself included
    return below.double() + (equal.double() + 1) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation per image of maps ``a`` and ``b`` (N, ...) over their cells, ties averaged: (N,) float64.
    Two constant maps agree (1); a constant map against a varying one has no order in common (0)."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))  # (N, n)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    sa, sb = ra.square().sum(1), rb.square().sum(1)
    rho = (ra * rb).sum(1) / (sa * sb).sqrt().clamp_min(1e-300)
    flat_a, flat_b = sa == 0, sb == 0
    return torch.where(flat_a & flat_b, 1.0, torch.where(flat_a | flat_b, 0.0, rho))


def randomisation_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The cascade of :func:`sanity_analysis`, top first: (stage name, the ``state_dict`` keys it re-initialises).
    A ViT: ``head`` (what follows the blocks), ``block L-1`` ... ``block 0``, ``embedding`` (what precedes them); a
    ResNet: ``head``, ``layer4`` ... ``layer1``, ``stem``."""
    keys = list(model.state_dict())
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList):
        units = [(f"block {i}", f"blocks.{i}.") for i in range(len(blocks))]
        bottom = "embedding"
    else:
        units = [(n, f"{n}.") for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
        bottom = "stem"
    if not units:
        raise ValueError(f"{type(model).__name__} has neither model.blocks nor layer1..layerN: the randomisation "
                         "cascade re-initialises a ViT's blocks or a ResNet's stages")
    inside = [i for i, k in enumerate(keys) if any(k.startswith(p) for _, p in units)]
    first, last = inside[0], inside[-1]
    stages = [("head", keys[last + 1 :])]
    stages += [(name, [k for k in keys if k.startswith(prefix)]) for name, prefix in reversed(units)]
    stages.append((bottom, keys[:first]))
    return [(name, ks) for name, ks in stages if ks]


def _check_methods(model: nn.Module, methods: Sequence[str] | None) -> tuple[str, ...]:
    if methods is None:
        return sal.applicable_methods(model)
    if isinstance(methods, str):
        raise TypeError(f"methods must be a list of method names, got {methods!r}: pass [{methods!r}]")
    for method in methods:
        reason = sal.applicable(model, method)
        if reason is not None:
            raise ValueError(reason)
    return tuple(methods)


@dataclass(frozen=True, kw_only=True)
class SanityResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of each method (:func:`sanity_analysis`)."""
    methods: tuple[str, ...]
    stages: tuple[str, ...]  # what is re-initialised, cumulatively, at each stage ("head", "block 5", ...)
    spearman: dict[str, torch.Tensor]  # method -> (stages, images) Spearman of the trained model's map vs the stage's
    low: dict[str, torch.Tensor]  # method -> (stages,) 95% bootstrap interval of the mean over images
    high: dict[str, torch.Tensor]
    flagged: tuple[str, ...]  # methods whose mean Spearman is still >= FLAG_SPEARMAN with every layer re-initialised
    images: int
    model_name: str = ""
    described: str = ""


def sanity_analysis(model: nn.Module, images: torch.Tensor, methods: Sequence[str] | None = None,
                    targets: torch.Tensor | None = None, *, seed: int = 0, batch_size: int = 64, described: str = "",
                    model_name: str = "") -> SanityResult:
    """Each method's maps on ``model`` against its maps on deep copies whose top layers are replaced, stage by stage,
    by those of ``references.random_init(model, seed)`` (the user's model is never changed). ``images``: uint8
    (N, 3, H, W); ``targets``: the classes explained at every stage (default the trained model's prediction);
    ``methods``: default every applicable one. Spearman per image, ties averaged."""
    methods = _check_methods(model, methods)
    sal._check_request(model, images, methods, targets)
    if len(images) < 2:
        raise ValueError(f"give at least 2 images (got {len(images)}): the intervals are over images")
    fresh = random_init(model, seed).state_dict()  # refuses a model without vitlab_arch, before any map
    stages = randomisation_stages(model)
    trained, _, targets, _, _ = sal._run(model, images, methods, targets, batch_size, seed)
    stage_model = copy.deepcopy(model).eval()
    rhos: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for _, keys in stages:
        stage_model.load_state_dict({k: fresh[k] for k in keys}, strict=False)  # cumulative: earlier stages stay
        maps = sal._run(stage_model, images, methods, targets, batch_size, seed)[0]
        for m in methods:
            rhos[m].append(spearman(trained[m], maps[m]))
    spear = {m: torch.stack(r) for m, r in rhos.items()}  # (stages, images)
    bounds = {m: bootstrap_interval(s.T) for m, s in spear.items()}
    flagged = tuple(m for m in methods if float(spear[m][-1].mean()) >= FLAG_SPEARMAN)
    return SanityResult(methods=methods, stages=tuple(n for n, _ in stages), spearman=spear,
                        low={m: b[0] for m, b in bounds.items()}, high={m: b[1] for m, b in bounds.items()},
                        flagged=flagged, images=len(images), model_name=model_name, described=described)


def make_mosaics(images: torch.Tensor, labels: torch.Tensor, count: int, *, seed: int = 0,
                 size: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` 2x2 mosaics of four ``images`` (uint8 (N, 3, h, w), each resized to 32x32) of four different classes
    in a random order, tiles row-major (quadrant 0 top left, 3 bottom right); one quadrant asked per mosaic.

    Returns:
        mosaics (count, 3, 64, 64) uint8, or resized to ``size`` pixels; targets (count,) the asked quadrant's label;
        quadrants (count,) which quadrant (0..3).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError("images must be a uint8 tensor (N, 3, H, W)")
    labels = check_labels(images, labels, least=4)
    classes = labels.unique()
    if len(classes) < 4:
        raise ValueError(f"mosaics need images of at least 4 different classes, got {len(classes)}: pass a "
                         "class-balanced set, e.g. vitlab.data.stratified_subset")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive number of mosaics, got {count!r}")
    tiles = data.resize(images, (TILE, TILE))  # (N, 3, 32, 32)
    gen = torch.Generator().manual_seed(seed)
    mosaics, targets, quadrants = [], [], []
    for _ in range(count):
        chosen = classes[torch.randperm(len(classes), generator=gen)[:4]]  # (4,) one class per quadrant
        picks = []
        for c in chosen:
            pool = (labels == c).nonzero()[:, 0]
            picks.append(int(pool[torch.randint(len(pool), (1,), generator=gen)]))
        q = int(torch.randint(4, (1,), generator=gen))
        t = tiles[picks]  # (4, 3, 32, 32)
        mosaics.append(torch.cat([torch.cat([t[0], t[1]], -1), torch.cat([t[2], t[3]], -1)], -2))
        targets.append(int(chosen[q]))
        quadrants.append(q)
    mosaics = torch.stack(mosaics)  # (count, 3, 64, 64)
    if size is not None:
        mosaics = data.resize(mosaics, (size, size) if isinstance(size, int) else tuple(size))
    return mosaics, torch.tensor(targets), torch.tensor(quadrants)


def focus_scores(maps: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    """The Focus score per map (M, rows, cols): its positive mass on quadrant ``quadrants`` (M,) (0..3, row-major) over
    its total positive mass, float64; a map with no positive mass says nothing: chance, 0.25."""
    m, rows, cols = maps.shape
    if rows % 2 or cols % 2:
        raise ValueError(f"a {rows}x{cols} grid has no quadrants of whole cells: the Focus score needs an even grid")
    positive = maps.double().clamp_min(0).reshape(m, 2, rows // 2, 2, cols // 2).sum((2, 4)).flatten(1)  # (M, 4)
    total = positive.sum(1)
    share = positive.gather(1, quadrants.long()[:, None])[:, 0] / total.clamp_min(1e-300)
    return torch.where(total > 0, share, 0.25)


@dataclass(frozen=True, kw_only=True)
class FocusResult:
    """The Focus score of each method on mosaics (Arias-Duart et al. 2022; chance 0.25) (:func:`focus_analysis`)."""
    methods: tuple[str, ...]
    focus: dict[str, torch.Tensor]  # method -> (mosaics,) share of the map's positive mass on the target quadrant
    mean: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    accuracy: float  # the model on the mosaics: prediction == the asked quadrant's class
    accuracy_low: float
    accuracy_high: float
    mosaics: torch.Tensor  # (M, 3, H, W) uint8, as the model saw them
    targets: torch.Tensor  # (M,) the class asked
    quadrants: torch.Tensor  # (M,) the quadrant asked, 0..3 row-major
    model_name: str = ""
    described: str = ""


def focus_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, methods: Sequence[str] | None = None,
                   *, count: int = 100, seed: int = 0, batch_size: int = 64, described: str = "",
                   model_name: str = "") -> FocusResult:
    """The Focus score of ``methods`` (default every applicable one) on ``count`` mosaics of uint8 ``images`` with
    ``labels`` (:func:`make_mosaics`, resized to the model's input), each map explaining the asked quadrant's class;
    beside it the model's accuracy on the mosaics. Intervals: 95% bootstrap over mosaics."""
    methods = _check_methods(model, methods)
    labels = check_labels(images, labels, least=4, classes=getattr(model, "num_classes", None))
    rows, cols = sal.patch_grid(model)
    if rows % 2 or cols % 2:
        raise ValueError(f"the model's {rows}x{cols} grid has no quadrants of whole cells: Focus needs an even grid")
    mosaics, targets, quadrants = make_mosaics(images, labels, count, seed=seed, size=input_size(model))
    maps, _, targets, predictions, _ = sal._run(model, mosaics, methods, targets, batch_size, seed)
    focus = {m: focus_scores(maps[m], quadrants) for m in methods}
    bounds = {m: bootstrap_interval(f) for m, f in focus.items()}
    hits = (predictions == targets).double()
    acc_low, acc_high = bootstrap_interval(hits)
    return FocusResult(methods=methods, focus=focus, mean={m: float(f.mean()) for m, f in focus.items()},
                       low={m: float(b[0]) for m, b in bounds.items()},
                       high={m: float(b[1]) for m, b in bounds.items()},
                       accuracy=float(hits.mean()), accuracy_low=float(acc_low), accuracy_high=float(acc_high),
                       mosaics=mosaics, targets=targets, quadrants=quadrants, model_name=model_name,
                       described=described)
