"""Are the maps faithful? Deletion and insertion curves (Petsiuk et al., RISE 2018) and Chefer et al.'s positive and
negative perturbation (ICCV 2021) score attribution maps on the patch grid by removing grid cells in the map's order
and watching the target class's probability and the accuracy.

A cell is removed in one of three ways: its token dropped (a hook on ``model.patch_drop``, after the position
embeddings are added: the sequence gets shorter), its pixels filled with the dataset mean (0 after normalisation), or
its pixels blurred (Gaussian, sigma 2 px). Every step of every method runs as one batch of equal-length inputs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from timm import layers as timm_layers
from torch import nn
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from ..models import preprocess
from ..models.inputs import check_images, input_size
from .capture import pooling, restoring
from .lens import check_labels
from .references import bootstrap_interval

REMOVALS = ("drop", "mean", "blur")  #: drop the cell's token, fill it with the dataset mean, blur it
MEASURES = ("probability", "accuracy")  #: the target class's softmax probability; argmax == label (or target)
BLUR_SIGMA = 2.0  #: pixels
BLUR_KERNEL = 13  #: pixels: 2 * ceil(3 sigma) + 1, the Gaussian cut at three sigma
CHEFER_TENTHS = tuple(range(1, 10))  #: Chefer et al.'s protocol removes 10%, 20%, ... 90% of the cells
_ROPE = (timm_layers.AttentionRope, timm_layers.RotaryEmbedding, timm_layers.RotaryEmbeddingCat,
         timm_layers.RotaryEmbeddingMixed)


@dataclass(frozen=True, kw_only=True)
class Score:
    """A mean over images and its 95% bootstrap interval over images."""
    mean: float
    low: float
    high: float


@dataclass(frozen=True, kw_only=True)
class FaithfulnessResult:
    """Deletion, insertion and Chefer perturbation scores of attribution maps (:func:`faithfulness_analysis`)."""
    methods: tuple[str, ...]
    removals: tuple[str, ...]
    steps: int
    fractions: torch.Tensor  # (steps + 1,) share of the cells removed (deletion) or inserted (insertion)
    deletion: dict[tuple[str, str], dict[str, torch.Tensor]]  # (method, removal) -> measure -> (N, steps + 1)
    insertion: dict[tuple[str, str], dict[str, torch.Tensor]]
    auc: dict[tuple[str, str, str, str], Score]  # (curve, measure, method, removal) -> trapezoid AUC over 0..1
    chefer: dict[tuple[str, str], Score]  # ("positive" | "negative", method) -> AUC of accuracy over 10%..90% removed
    ranking: dict[str, tuple[str, ...]]  # removal -> methods, most faithful (insertion - deletion probability) first
    images: int
    model_name: str = ""
    described: str = ""


def _has_rope(model: nn.Module) -> bool:
    return getattr(model, "rope", None) is not None or any(isinstance(m, _ROPE) for m in model.modules())


def check_removal(model: nn.Module, removal: str) -> None:
    """A one-line ValueError unless ``removal`` is one of :data:`REMOVALS` and applies to ``model``."""
    if removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
    if removal != "drop":
        return
    name = type(model).__name__
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if _has_rope(model):
        raise ValueError(f"{name} uses rotary position embeddings (RoPE), applied inside attention after "
                         "patch_drop, so dropped tokens would take other positions: use removal 'mean' or 'blur'")
    if not isinstance(getattr(model, "patch_drop", None), nn.Module) or grid is None:
        raise ValueError(f"{name} has no patch tokens to drop (no patch_embed and patch_drop): use removal 'mean' "
                         "or 'blur'")
    if pooling(model) != "token":
        raise ValueError(f"{name} reads its patch tokens (global_pool {getattr(model, 'global_pool', None)!r}), "
                         "which drop removes entirely at the end of deletion: use removal 'mean' or 'blur'")


def _check_maps(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, removals, steps: int,
                name: str = "maps") -> None:
    """A one-line ValueError unless ``maps`` are finite (N, rows, cols) on a grid that tiles the model's input, the
    patch grid where tokens are dropped, and ``steps`` divides its cells."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or len(maps) != len(images):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be one (rows, cols) map per image: {len(images)} images, got {shape}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} hold NaN or infinite values: give finite maps")
    (h, w), (rows, cols) = input_size(model), maps.shape[1:]
    if h % rows or w % cols:
        raise ValueError(f"{name} are on a {rows}x{cols} grid, which does not tile the model's {h}x{w} input")
    if "drop" in removals and tuple(model.patch_embed.grid_size) != (rows, cols):
        raise ValueError(f"{name} are on a {rows}x{cols} grid but the model's patch grid is "
                         f"{tuple(model.patch_embed.grid_size)}: drop removes tokens, so give maps on the patch grid")
    if not isinstance(steps, int) or steps < 1 or (rows * cols) % steps:
        raise ValueError(f"steps must divide the {rows * cols} cells of the {rows}x{cols} grid (e.g. 16 or "
                         f"{rows * cols}), got {steps!r}")


@contextlib.contextmanager
def dropping(model: nn.Module) -> Iterator[dict]:
    """A forward hook on ``model.patch_drop`` that keeps the prefix tokens and, of the patch tokens, those at the
    indices put in the yielded dict's ``"keep"`` ((B, K) long, the same K for every image; None: keep all). The hook
    is removed on exit, also on error."""
    prefix, state = int(getattr(model, "num_prefix_tokens", 1)), {"keep": None}

    def hook(_module, _args, out):  # out (B, prefix + P, D), position embeddings already added
        keep = state["keep"]
        if keep is None:
            return out
        patches = out[:, prefix:].gather(1, keep[..., None].expand(-1, -1, out.shape[-1]))  # (B, K, D)
        return torch.cat([out[:, :prefix], patches], 1)

    handle = model.patch_drop.register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


def _canvas(x: torch.Tensor, removal: str) -> torch.Tensor | None:
    """What a removed cell's pixels become for the normalised input ``x`` (B, 3, H, W): 0 (the dataset mean) or
    ``x`` blurred; None for drop."""
    if removal == "mean":
        return torch.zeros_like(x[:1]).expand_as(x)
    if removal == "blur":  # blur commutes with the per-channel affine normalisation (the kernel sums to 1)
        return gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    return None


def _forward(model, x, canvas, state, keep: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Logits (R, classes) of images ``x[which]`` (R,) with the cells where ``keep`` (R, rows, cols) is False removed:
    tokens dropped when ``canvas`` is None (``state`` is :func:`dropping`'s), else pixels taken from ``canvas``."""
    r, rows, cols = keep.shape
    if canvas is None:
        flat = keep.reshape(r, -1)
        counts = flat.sum(1)
        if bool((counts != counts[0]).any()):
            raise ValueError("drop keeps the same number of patch tokens for every image of a batch")
        state["keep"] = flat.nonzero()[:, 1].reshape(r, int(counts[0]))  # (R, K) in grid order
        try:
            return model(x[which])
        finally:
            state["keep"] = None
    h, w = x.shape[-2:]
    pixels = keep.repeat_interleave(h // rows, 1).repeat_interleave(w // cols, 2)[:, None]  # (R, 1, H, W)
    return model(torch.where(pixels, x[which], canvas[which]))


@torch.inference_mode()
def removed(model: nn.Module, images: torch.Tensor, keep: torch.Tensor, removal: str, *,
            batch_size: int = 256) -> torch.Tensor:
    """``model``'s logits (N, classes) float32 on uint8 ``images`` (N, 3, H, W) with the grid cells where ``keep``
    (N, rows, cols) bool is False removed by ``removal`` (one of :data:`REMOVALS`); for drop, every image keeps the
    same number of cells."""
    check_removal(model, removal)
    check_images(model, images)
    _check_maps(model, images, torch.as_tensor(keep).float(), (removal,), 1, name="keep")
    keep = torch.as_tensor(keep, dtype=torch.bool)
    counts = keep.flatten(1).sum(1)
    if removal == "drop" and bool((counts != counts[0]).any()):
        raise ValueError("drop keeps the same number of cells in every image: give keep masks with equal counts")
    out = []
    with restoring(model), (dropping(model) if removal == "drop" else contextlib.nullcontext()) as state:
        model.eval()
        for start in range(0, len(images), batch_size):
            x = preprocess(model, images[start:start + batch_size])
            k = keep[start:start + batch_size].to(x.device)
            out.append(_forward(model, x, _canvas(x, removal), state, k, torch.arange(len(x), device=x.device)))
    return torch.cat(out).float().cpu()


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """(N, cells) long: each cell's place in the most-relevant-first order of ``maps`` (N, rows, cols), ties by
    index."""
    flat = maps.reshape(len(maps), -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    places = torch.arange(flat.shape[1]).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, places)


class _Scorer:
    """Runs one chunk of images through the model, ``batch_size`` inputs at a time, and scores each input's
    target-class probability and correctness."""

    def __init__(self, model, x, state, targets, truth, batch_size, bar):
        self.model, self.x, self.state, self.batch_size, self.bar = model, x, state, batch_size, bar
        self.targets, self.truth = targets.to(x.device), truth.to(x.device)

    def __call__(self, canvas, keep: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability (R,), correct (R,)) of images ``which`` (R,) with cells outside ``keep`` (R, rows, cols)
        removed."""
        # Methods that agree on an image's cells at this step share one forward pass.
        rows = torch.cat([which[:, None], keep.flatten(1).long()], 1)  # (R, 1 + cells)
        rows, back = torch.unique(rows, dim=0, return_inverse=True)  # (U, 1 + cells), (R,)
        which, keep = rows[:, 0], rows[:, 1:].bool().reshape(-1, *keep.shape[1:])
        probs, hits = [], []
        for start in range(0, len(which), self.batch_size):
            w, k = which[start:start + self.batch_size], keep[start:start + self.batch_size]
            logits = _forward(self.model, self.x, canvas, self.state, k, w).float()  # (b, classes)
            probs.append(logits.softmax(-1).gather(1, self.targets[w, None])[:, 0])
            hits.append((logits.argmax(-1) == self.truth[w]).float())
            self.bar.update(len(w))
        self.bar.update(len(back) - len(which))
        return torch.cat(probs).cpu()[back.cpu()], torch.cat(hits).cpu()[back.cpu()]


def _chunk_curves(score: _Scorer, ranks: torch.Tensor, removals, steps: int, grid, full, out) -> None:
    """Fill ``out[(curve, removal)]`` (methods, C, steps + 1, 2) for one chunk: ``ranks`` (methods, C, cells); index 0
    and the fully removed canvas are shared by every method and computed once per removal."""
    m, c, cells = ranks.shape
    which = torch.arange(c, device=score.x.device).repeat(m)  # (m * C,) method-major
    flat_ranks = ranks.reshape(m * c, cells).to(score.x.device)
    for removal in removals:
        canvas = _canvas(score.x, removal)
        empty = score(canvas, torch.zeros(c, *grid, dtype=torch.bool, device=score.x.device), which[:c])
        for curve in ("deletion", "insertion"):
            res = out[(curve, removal)]
            ends = (full, empty) if curve == "deletion" else (empty, full)
            for end, index in zip(ends, (0, steps)):
                res[:, :, index] = torch.stack(end, -1)  # (C, 2), the same for every method
            for k in range(1, steps):
                top = flat_ranks < k * cells // steps  # (m * C, cells): the k/steps most relevant cells
                keep = ~top if curve == "deletion" else top
                prob, hit = score(canvas, keep.reshape(m * c, *grid), which)
                res[:, :, k] = torch.stack([prob, hit], -1).reshape(m, c, 2)


def _chunk_chefer(score: _Scorer, ranks: torch.Tensor, grid, steps: int, curves: dict, out) -> None:
    """Fill ``out[sign]`` (methods, C, 9): accuracy with 10%..90% of the cells mean-filled, most relevant first
    (positive) or least relevant first (negative). A point that lies on a mean-fill deletion (positive) or insertion
    (negative) step of ``curves`` is read from it."""
    m, c, cells = ranks.shape
    which = torch.arange(c, device=score.x.device).repeat(m)
    flat_ranks = ranks.reshape(m * c, cells).to(score.x.device)
    canvas = _canvas(score.x, "mean")
    for j, tenth in enumerate(CHEFER_TENTHS):
        gone = cells * tenth // 10
        for sign, keep, curve, moved in (("positive", flat_ranks >= gone, "deletion", gone),
                                         ("negative", flat_ranks < cells - gone, "insertion", cells - gone)):
            if (curve, "mean") in curves and (moved * steps) % cells == 0:  # a step of the mean-fill curve
                out[sign][:, :, j] = curves[curve, "mean"][:, :, moved * steps // cells, 1]
            else:
                out[sign][:, :, j] = score(canvas, keep.reshape(m * c, *grid), which)[1].reshape(m, c)


def forwards_per_image(methods: int, removals, steps: int, cells: int, chefer: bool = True) -> int:
    """Forward passes :func:`faithfulness_analysis` runs per image: the whole image once, per removal the fully
    removed canvas and each method's interior deletion and insertion steps, and Chefer's points not shared with the
    mean-fill curves."""
    count = 1 + len(removals) * (1 + 2 * (steps - 1) * methods)
    if chefer:
        on_steps = "mean" in removals
        for gone in (cells * t // 10 for t in CHEFER_TENTHS):  # removed (positive) and kept (negative) cells
            count += methods * sum(not (on_steps and (moved * steps) % cells == 0) for moved in (gone, cells - gone))
    return count


def _prepare(model, images, maps, targets, labels, removals, steps, batch_size):
    """Checks every input before any work: (method -> maps (N, rows, cols) float32, targets or None, labels or None,
    removals tuple)."""
    removals = (removals,) if isinstance(removals, str) else tuple(removals)
    if not removals:
        raise ValueError(f"give at least one removal of {REMOVALS}")
    for removal in removals:
        check_removal(model, removal)
    check_images(model, images)
    if images.dtype != torch.uint8:
        raise TypeError("images must be uint8 (N, 3, H, W) with values 0..255: the removals fill and blur pixels")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps must be a MapsResult or a dict method -> (N, rows, cols) maps, with at least one method")
    grids = {tuple(m.shape[1:]) for m in maps.values() if isinstance(m, torch.Tensor)}
    if len(grids) > 1:
        raise ValueError(f"every method's maps must share one grid, got {sorted(grids)}")
    for method, m in maps.items():
        _check_maps(model, images, m, removals, steps, name=f"maps[{method!r}]")
    classes = getattr(model, "num_classes", None)
    targets = check_labels(images, targets, least=1, classes=classes)
    labels = check_labels(images, labels, least=1, classes=classes)
    return {k: v.detach().float().cpu() for k, v in maps.items()}, targets, labels, removals


@torch.inference_mode()
def _run(model, images, maps, targets, labels, removals, steps, batch_size, progress, with_chefer=True):
    """The engine behind :func:`curves` and :func:`faithfulness_analysis`: (curves, chefer, targets), curves
    ``(curve, removal) -> (methods, N, steps + 1, 2)`` (probability, accuracy), chefer ``sign -> (methods, N, 9)``
    (empty without ``with_chefer``)."""
    methods, n = list(maps), len(images)
    grid = tuple(maps[methods[0]].shape[1:])
    ranks = torch.stack([_ranks(maps[k]) for k in methods])  # (methods, N, cells)
    curves = {(c, r): torch.empty(len(methods), n, steps + 1, 2) for c in ("deletion", "insertion") for r in removals}
    chefer = {s: torch.empty(len(methods), n, len(CHEFER_TENTHS)) for s in ("positive", "negative") if with_chefer}
    per_image = forwards_per_image(len(methods), removals, steps, ranks.shape[-1], chefer=with_chefer)
    all_targets = torch.empty(n, dtype=torch.long)
    bar = tqdm(total=n * per_image, desc="faithfulness", unit="forward", disable=not progress)
    with restoring(model), (dropping(model) if "drop" in removals else contextlib.nullcontext()) as state:
        model.eval()
        for start in range(0, n, batch_size):
            idx = slice(start, min(start + batch_size, n))
            x = preprocess(model, images[idx])
            logits = model(x).float()  # (C, classes): the whole images, index 0 of deletion for every removal
            bar.update(len(x))
            tgt = logits.argmax(-1).cpu() if targets is None else targets[idx]
            truth = tgt if labels is None else labels[idx]
            all_targets[idx] = tgt
            probs = logits.softmax(-1).gather(1, tgt.to(x.device)[:, None])[:, 0].cpu()
            full = (probs, (logits.argmax(-1).cpu() == truth).float())
            score = _Scorer(model, x, state, tgt, truth, batch_size, bar)
            chunk = {k: torch.empty(len(methods), len(x), steps + 1, 2) for k in curves}
            _chunk_curves(score, ranks[:, idx], removals, steps, grid, full, chunk)
            signs = {s: torch.empty(len(methods), len(x), len(CHEFER_TENTHS)) for s in chefer}
            if chefer:
                _chunk_chefer(score, ranks[:, idx], grid, steps, chunk, signs)
            for key in curves:
                curves[key][:, idx] = chunk[key]
            for sign in chefer:
                chefer[sign][:, idx] = signs[sign]
    bar.close()
    return curves, chefer, all_targets


def _split(curves: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, steps + 1, 2) -> {"probability": (N, steps + 1), "accuracy": (N, steps + 1)} float32."""
    return {measure: curves[..., i].float().contiguous() for i, measure in enumerate(MEASURES)}


def curves(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | None = None,
           labels: torch.Tensor | None = None, removal: str = "mean", *, steps: int = 16,
           batch_size: int = 256) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Deletion and insertion curves of one method's ``maps`` (N, rows, cols) on uint8 ``images``.

    Args:
        targets: (N,) the class whose probability is measured; default the model's prediction on each image.
        labels: (N,) for accuracy; default the targets.
        removal: one of :data:`REMOVALS`.
        steps: each step removes (deletion) or inserts into the fully removed canvas (insertion) ``1/steps`` of the
            cells, most relevant first; it must divide the number of cells.

    Returns:
        (deletion, insertion), each {"probability", "accuracy"} -> (N, steps + 1) float32; index k: k/steps of the
        cells removed or inserted.
    """
    maps, targets, labels, removals = _prepare(model, images, {"maps": maps}, targets, labels, removal, steps,
                                               batch_size)
    found, _, _ = _run(model, images, maps, targets, labels, removals, steps, batch_size, False, with_chefer=False)
    return _split(found[("deletion", removal)][0]), _split(found[("insertion", removal)][0])


def _score(values: torch.Tensor) -> Score:
    low, high = bootstrap_interval(values)
    return Score(mean=float(values.double().mean()), low=float(low), high=float(high))


def faithfulness_analysis(model: nn.Module, images: torch.Tensor, maps, targets: torch.Tensor | None = None,
                          labels: torch.Tensor | None = None, *, removals=REMOVALS, steps: int = 16,
                          batch_size: int = 256, chefer: bool = True, progress: bool = True, described: str = "",
                          model_name: str = "") -> FaithfulnessResult:
    """Deletion and insertion curves under each removal and Chefer et al.'s positive and negative perturbation for
    every method's maps, with AUCs and 95% bootstrap intervals over images.

    Args:
        maps: a MapsResult (its targets and labels used when not given) or a dict method -> (N, rows, cols) maps,
            larger = more evidence for the target class.
        targets: (N,) the class each map explains; default the model's prediction.
        labels: (N,) true classes for accuracy; default the targets (accuracy = the prediction is kept).
        removals: a subset of :data:`REMOVALS`; steps: as in :func:`curves`.
        chefer: also run Chefer et al.'s positive and negative perturbation (mean fill); else ``chefer`` is empty.
        progress: a progress bar over forward passes.
    """
    if targets is None:
        targets = getattr(maps, "targets", None)
    if labels is None:
        labels = getattr(maps, "labels", None)
    table = getattr(maps, "maps", maps)
    methods = tuple(getattr(maps, "methods", None) or table) if isinstance(table, Mapping) else ()
    table = {k: table[k] for k in methods} if isinstance(table, Mapping) else table
    table, targets, labels, removals = _prepare(model, images, table, targets, labels, removals, steps, batch_size)
    found, perturbed, targets = _run(model, images, table, targets, labels, removals, steps, batch_size, progress,
                                     with_chefer=chefer)
    fractions = torch.linspace(0, 1, steps + 1)
    deletion, insertion, auc, ranking = {}, {}, {}, {}
    for removal in removals:
        gaps = []
        for i, method in enumerate(methods):
            deletion[method, removal] = _split(found[("deletion", removal)][i])
            insertion[method, removal] = _split(found[("insertion", removal)][i])
            for curve, table_ in (("deletion", deletion), ("insertion", insertion)):
                for measure, values in table_[method, removal].items():
                    auc[curve, measure, method, removal] = _score(torch.trapezoid(values.double(), fractions.double()))
            gaps.append(float((torch.trapezoid(insertion[method, removal]["probability"].double(), fractions.double())
                               - torch.trapezoid(deletion[method, removal]["probability"].double(),
                                                 fractions.double())).mean()))
        ranking[removal] = tuple(m for _, _, m in sorted(zip([-g for g in gaps], range(len(methods)), methods)))
    tenths = torch.tensor(CHEFER_TENTHS, dtype=torch.float64) / 10
    chefer_auc = {(sign, method): _score(torch.trapezoid(perturbed[sign][i].double(), tenths))
                  for sign in perturbed for i, method in enumerate(methods)}
    return FaithfulnessResult(methods=methods, removals=removals, steps=steps, fractions=fractions,
                              deletion=deletion, insertion=insertion, auc=auc, chefer=chefer_auc, ranking=ranking,
                              images=len(images), model_name=model_name or getattr(maps, "model_name", ""),
                              described=described or getattr(maps, "described", ""))
