"""Measured readouts: what the model on screen shows, next to what the paper claims.

Each readout turns the numbers behind one of the paper's figures into a typed record
(:class:`Readout` subclasses) with one or two plain sentences (``text``) and the paper's
own reading of that figure (``paper``). A notebook cell ending in a readout displays it
(``_repr_markdown_``); the explorers show ``html()`` under their figures.

The readout functions take the statistics (attention distances per image, similarities,
explained-variance ratios, rollout maps), so synthetic cases can be fed to them; each has
a thin ``*_of(model, ...)`` convenience that computes those from a model and images, with
random-initialised models of the same architecture (:func:`vitlab.analysis.capture.random_init`,
seeds :data:`vitlab.analysis.capture.INIT_SEEDS`) as the reference.

Spread: image readouts (attention distance, rollout) give a bootstrap interval of the mean
over images (:func:`bootstrap_interval`) and the standard deviation across images;
weight-only readouts (filters, position embeddings) give the range over init seeds.
"""
from __future__ import annotations

import html
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..analysis import metrics
from ..analysis.capture import INIT_SEEDS, capture, head_statistics, random_init, random_init_statistics, uniform_distance
from ..models.inputs import check_images
from ..records import FAMILY_ORDER, InsideView, Recipes, RunInside, RunRecord

#: A head is "local" when its whole 95% interval lies below this fraction of the uniform-attention distance.
LOCAL_FRACTION = 0.5
#: Position embeddings "hold the grid" when the Spearman structure score reaches this (and beats random init).
STRUCTURE_THRESHOLD = 0.3
#: Bootstrap defaults: resamples of the images, their seed, and the interval's level.
RESAMPLES, BOOTSTRAP_SEED, LEVEL = 1000, 0, 0.95


@dataclass(frozen=True, kw_only=True)
class Readout:
    """What one figure shows for this model, measured.

    Attributes:
        figure: the paper's figure, e.g. "Fig. 7 (right)".
        text: one or two plain sentences with the measured numbers.
        paper: the paper's claim for that figure, in one sentence.
    """

    figure: str
    text: str
    paper: str

    def _repr_markdown_(self) -> str:
        return f"**Measured ({self.figure}):** {self.text}\n\n*Paper:* {self.paper}"

    def html(self) -> str:
        """The readout as HTML, for a widget under an explorer's figure."""
        return (f"<b>Measured ({html.escape(self.figure)}):</b> {html.escape(self.text)}<br>"
                f"<i>Paper:</i> {html.escape(self.paper)}")

    def __str__(self) -> str:
        return f"{self.text}\nPaper: {self.paper}"


def bootstrap_interval(values: torch.Tensor, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap interval of the mean over the first dimension (images).

    Args:
        values: (images, ...) one value per image (and per layer, head, ...).
        resamples: bootstrap resamples of the images, drawn with replacement under ``seed``
            (a generator of its own: the caller's random state is untouched).
        level: coverage of the interval, e.g. 0.95.

    Returns:
        ``(low, high)``, each shaped ``values.shape[1:]``, float64.
    """
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
        counts = torch.zeros(len(picks), n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(picks.shape,
                                                                                                  dtype=torch.float64))
        means.append(counts @ flat / n)  # (r, k): each resample's mean
    means = torch.cat(means)  # (R, k)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


def _px(x: float) -> str:
    return f"{x:.1f} px"


def number(x: float, digits: int) -> str:
    """``x`` rounded to ``digits`` decimals, never "-0.00"."""
    return f"{round(float(x), digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def spread_text(values: Sequence[float], digits: int = 2, unit: str = "", scale: float = 1.0) -> str:
    """Mean and range of reference values (e.g. over init seeds), times ``scale``: "0.01 [-0.03, 0.04]"."""
    v = [scale * float(x) for x in values]
    mean = sum(v) / len(v)
    return f"{number(mean, digits)}{unit} [{number(min(v), digits)}, {number(max(v), digits)}]"


# --- Fig. 7 (right): mean attention distance -----------------------------------------------------

PAPER_DISTANCE = ("in the lowest layers some heads attend locally while others attend across most of the "
                  "image, and attention distance grows with depth.")
PAPER_HYBRID_DISTANCE = ("(section 4.5) the highly localised attention of a ViT's lowest layers is less pronounced in "
                         "hybrid models that apply a ResNet before the Transformer, suggesting that it may serve a "
                         "similar function as early convolutional layers in CNNs.")


@dataclass(frozen=True, kw_only=True)
class DistanceReadout(Readout):
    """Mean attention distance per layer and head against its references (:func:`attention_distance`).

    Attributes:
        layers: block indices (0-based) of the rows.
        mean: (layers, heads) pixels, averaged over images.
        std: (layers, heads) standard deviation across images, pixels.
        low, high: (layers, heads) the 95% bootstrap interval of the mean, pixels.
        layer_min, layer_max: per layer the lowest and highest head's mean, pixels.
        head: the lowest layer's most local head (0-based); its ``head_mean``, ``head_low``,
            ``head_high`` (interval) and ``head_std`` (across images), pixels.
        uniform: distance under uniform attention for the convention used, pixels.
        band: per layer (low, high) of the random-init heads over seeds, pixels; empty without one.
        local: (layers, heads) bool, the rule of :func:`attention_distance`.
        images: how many images.
    """

    layers: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    layer_min: list[float]
    layer_max: list[float]
    head: int
    head_mean: float
    head_low: float
    head_high: float
    head_std: float
    uniform: float
    band: list[tuple[float, float]]
    local: torch.Tensor
    images: int


def attention_distance(distance_per_image: torch.Tensor, uniform: float, random_init: torch.Tensor | None = None,
                       layers: Sequence[int] | None = None, resamples: int = RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, token_field: float | None = None) -> DistanceReadout:
    """Readout of Fig. 7 (right) from each image's per-head mean attention distance.

    A head is called **local** when the upper end of its 95% bootstrap interval lies below
    ``LOCAL_FRACTION`` (half) of the uniform-attention distance and, with a random-init
    reference, below that layer's lowest random-init head: it attends clearly closer than
    both uniform attention and an untrained model of the same architecture.

    Args:
        distance_per_image: (images, layers, heads) pixels, e.g. ``head_statistics(...)["distance_per_image"]``.
        uniform: the uniform-attention distance for the same convention (:func:`vitlab.analysis.capture.uniform_distance`).
        random_init: (seeds, layers, heads) pixels of random-initialised models, or None.
        layers: block indices of the rows (default 0..layers-1); the first row is the "lowest layer".
        resamples, seed: of the bootstrap over images (:func:`bootstrap_interval`).
        token_field: for a hybrid, the pixels across the window each token sees through its CNN
            (:func:`vitlab.analysis.metrics.token_receptive_field`): said in the text, beside the paper's remark on hybrids.
    """
    d = distance_per_image.detach().double().cpu()
    if d.ndim != 3 or len(d) < 1:
        raise ValueError(f"distance_per_image must be (images, layers, heads), got {tuple(d.shape)}")
    layers = list(range(d.shape[1])) if layers is None else [int(i) for i in layers]
    mean = d.mean(0)  # (L, H)
    std = d.std(0, unbiased=True) if len(d) > 1 else torch.zeros_like(mean)
    low, high = bootstrap_interval(d, resamples, seed)  # (L, H) each
    band = []
    local = high < LOCAL_FRACTION * uniform
    if random_init is not None:
        r = random_init.detach().double().cpu()  # (seeds, L, H)
        if r.shape[1:] != d.shape[1:]:
            raise ValueError(f"random_init {tuple(r.shape)} must be (seeds, {d.shape[1]}, {d.shape[2]})")
        band = [(float(r[:, i].min()), float(r[:, i].max())) for i in range(r.shape[1])]
        local &= high < torch.tensor([b[0] for b in band], dtype=torch.float64)[:, None]
    head = int(mean[0].argmin())
    lo, hi = float(mean[0].min()), float(mean[0].max())
    n_local = int(local[0].sum())
    verdict = ("no local heads" if n_local == 0 else f"{n_local} of {d.shape[2]} heads local")
    refs = f"uniform attention: {_px(uniform)}"
    if band:
        refs += f"; random init: {band[0][0]:.1f} to {_px(band[0][1])}"
    per_layer = mean.mean(1)  # (L,)
    deepest = int(per_layer.argmax())
    text = (f"Lowest layer ({layers[0] + 1}): heads attend {lo:.1f} to {_px(hi)} ({refs}): {verdict}; its most "
            f"local head {head + 1} attends {_px(float(mean[0, head]))} (95% interval {float(low[0, head]):.1f} to "
            f"{float(high[0, head]):.1f}, std {float(std[0, head]):.1f} across {len(d)} images). "
            f"Mean over heads: {_px(float(per_layer[0]))} in layer {layers[0] + 1}, {_px(float(per_layer[-1]))} in "
            f"layer {layers[-1] + 1}, largest in layer {layers[deepest] + 1}.")
    if token_field is not None:
        text += (f" A hybrid: before any attention, each token already sees a {token_field:.0f}-pixel window of the "
                 "image through its CNN.")
    return DistanceReadout(
        figure="Fig. 7 (right)", text=text, paper=PAPER_DISTANCE if token_field is None else PAPER_HYBRID_DISTANCE, layers=layers, mean=mean.float(), std=std.float(),
        low=low.float(), high=high.float(), layer_min=[float(x) for x in mean.min(1).values],
        layer_max=[float(x) for x in mean.max(1).values], head=head, head_mean=float(mean[0, head]),
        head_low=float(low[0, head]), head_high=float(high[0, head]), head_std=float(std[0, head]),
        uniform=float(uniform), band=band, local=local, images=len(d))


def attention_distance_of(model: nn.Module, images: torch.Tensor, renormalize: bool = False,
                          seeds: Sequence[int] = INIT_SEEDS, batch_size: int = 64,
                          progress: bool = False) -> DistanceReadout:
    """:func:`attention_distance` of ``model`` on ``images`` (uint8 (N, 3, H, W)), with its references.

    The random-init band comes from models of its architecture (``seeds``) on the same
    images; a model without ``vitlab_arch`` gets no band.
    """
    stats = head_statistics(model, images, batch_size, renormalize=renormalize, progress=progress)
    band = None
    if getattr(model, "vitlab_arch", None) is not None and seeds:
        band = random_init_statistics(model, images, seeds, batch_size, renormalize=renormalize,
                                      progress=progress)["distance"]
    return attention_distance(stats["distance_per_image"], uniform_distance(model, renormalize), band,
                              stats["layers"].tolist(), token_field=token_field_of(model))


def token_field_of(model: nn.Module) -> float | None:
    """A hybrid's tokens' CNN window in pixels (:func:`vitlab.analysis.metrics.token_receptive_field`); None for a ViT."""
    return metrics.token_receptive_field(model) if metrics.is_hybrid(model) else None


# --- Fig. 7 (center): position embeddings --------------------------------------------------------

PAPER_POSITION = ("nearby patches have similar position embeddings, and a row-column structure appears "
                  "(patches in the same row or column have similar embeddings).")

_Scores = tuple[metrics.PositionStructure, metrics.MirrorScore]


@dataclass(frozen=True, kw_only=True)
class PositionReadout(Readout):
    """Structure and mirror scores of position embeddings against random init (:func:`position_embeddings`).

    Attributes:
        structure: :func:`vitlab.analysis.metrics.position_structure` of the model.
        mirror: :func:`vitlab.analysis.metrics.mirror_score` of the model.
        reference: the same pair for each random-init seed (may be empty).
        grid_structure: the rule of :func:`position_embeddings` for "nearby patches are similar".
        mirror_symmetric: the rule for "as similar to its mirror position as to its neighbours".
    """

    structure: metrics.PositionStructure
    mirror: metrics.MirrorScore
    reference: list[_Scores]
    grid_structure: bool
    mirror_symmetric: bool


def position_scores(sim: torch.Tensor) -> _Scores:
    """Structure and mirror scores of a (rows, cols, rows, cols) similarity."""
    grid = tuple(sim.shape[:2])
    return metrics.position_structure(sim, grid), metrics.mirror_score(sim, grid)


def position_embeddings(sim: torch.Tensor, reference: Sequence[_Scores] = ()) -> PositionReadout:
    """Readout of Fig. 7 (center) from a position-embedding similarity.

    Rules: the grid structure is **there** when the structure score (Spearman correlation of
    similarity with closeness) reaches ``STRUCTURE_THRESHOLD`` and exceeds every random-init
    seed's. The embedding is **mirror-symmetric** left to right when a patch is at least
    about as similar to its mirror position as to its neighbours (``excess`` >= -0.05) and
    that similarity is clearly above chance (mirror similarity >= 0.3).

    Args:
        sim: (rows, cols, rows, cols) from :func:`vitlab.analysis.metrics.position_similarity`.
        reference: :func:`position_scores` of random-initialised models, one per seed.
    """
    structure, mirror = position_scores(sim)
    reference = list(reference)
    init_max = max((r.distance for r, _ in reference), default=-math.inf)
    grid = structure.distance >= STRUCTURE_THRESHOLD and structure.distance > init_max
    symmetric = mirror.excess >= -0.05 and mirror.mirror >= 0.3
    init = f" (random init, {len(reference)} seeds: {spread_text([r.distance for r, _ in reference])})" if reference else ""
    strength = "strong" if structure.distance >= 0.7 else "partial"
    first = (f"Nearby patches are more similar: structure score {structure.distance:.2f}{init}, a {strength} "
             f"grid structure; row/column excess {structure.row_column:.2f}." if grid else
             f"No grid structure: structure score {structure.distance:.2f}{init}; row/column excess "
             f"{structure.row_column:.2f}.")
    second = (f" Mirror-symmetric left to right, as horizontal-flip augmentation teaches: similarity to the mirror "
              f"position {mirror.mirror:.2f}, to neighbours {mirror.neighbour:.2f}." if symmetric else
              f" Not mirror-symmetric: similarity to the mirror position {mirror.mirror:.2f}, to neighbours "
              f"{mirror.neighbour:.2f}.")
    return PositionReadout(figure="Fig. 7 (center)", text=first + second, paper=PAPER_POSITION, structure=structure,
                           mirror=mirror, reference=reference, grid_structure=grid, mirror_symmetric=symmetric)


def position_reference(model: nn.Module, seeds: Sequence[int] = INIT_SEEDS) -> list[_Scores]:
    """Structure and mirror scores of random-initialised models of ``model``'s architecture, one per seed.

    Empty for a model without ``vitlab_arch`` (its architecture cannot be rebuilt).
    """
    if getattr(model, "vitlab_arch", None) is None:
        return []
    return [position_scores(metrics.position_similarity(random_init(model, s))) for s in seeds]


def position_embeddings_of(model: nn.Module, seeds: Sequence[int] = INIT_SEEDS) -> PositionReadout:
    """:func:`position_embeddings` of ``model``, against random-initialised models of its architecture."""
    return position_embeddings(metrics.position_similarity(model), position_reference(model, seeds))


# --- Fig. 7 (left): embedding filters ------------------------------------------------------------

PAPER_FILTERS = ("the top principal components of the patch-embedding filters resemble plausible basis functions "
                 "for a low-dimensional representation of the fine structure within each patch.")


@dataclass(frozen=True, kw_only=True)
class FiltersReadout(Readout):
    """Explained variance of the filters' principal components against random init (:func:`embedding_filters`).

    Attributes:
        k: how many components ``first_k`` sums.
        first, first_k: fractions of the variance in the first component and in the first ``k``.
        reference_first, reference_first_k: the same for each random-init seed.
        verdict: "clearly more", "a little more" or "no more" structure than random init.
    """

    k: int
    first: float
    first_k: float
    reference_first: list[float]
    reference_first_k: list[float]
    verdict: str


def embedding_filters(ratio: torch.Tensor, reference: torch.Tensor | None = None, k: int = 28) -> FiltersReadout:
    """Readout of Fig. 7 (left) from explained-variance ratios.

    Rule: the first component's share against random init's: at least twice its mean over
    seeds is "clearly more" structure, above 1.1 times its maximum "a little more", else "no more".

    Args:
        ratio: (components,) explained-variance ratios, e.g. ``metrics.embedding_filters(model, k)[1]``
            with at least ``k`` components.
        reference: (seeds, components) ratios of random-initialised models, or None.
        k: how many leading components to sum (the paper shows 28).
    """
    ratio = ratio.detach().double().cpu()
    k = min(k, len(ratio))
    first, first_k = float(ratio[0]), float(ratio[:k].sum())
    ref_first = [] if reference is None else [float(r[0]) for r in reference]
    ref_k = [] if reference is None else [float(r[:k].sum()) for r in reference]
    if ref_first:
        verdict = ("clearly more" if first >= 2 * sum(ref_first) / len(ref_first) else
                   "a little more" if first > 1.1 * max(ref_first) else "no more")
        text = (f"The first component holds {100 * first:.1f}% of the variance (random init, {len(ref_first)} seeds: "
                f"{spread_text(ref_first, 1, '%', 100)}), the first {k} hold {100 * first_k:.1f}% "
                f"({spread_text(ref_k, 1, '%', 100)}): {verdict} structure than random init.")
    else:
        verdict = ""
        text = (f"The first component holds {100 * first:.1f}% of the variance, the first {k} hold "
                f"{100 * first_k:.1f}% (no random-init reference for this model).")
    return FiltersReadout(figure="Fig. 7 (left)", text=text, paper=PAPER_FILTERS, k=k, first=first, first_k=first_k,
                          reference_first=ref_first, reference_first_k=ref_k, verdict=verdict)


def _components(model: nn.Module) -> int:
    w = model.patch_embed.proj.weight  # (D, C, P, P)
    return min(w.shape[0], w[0].numel())


def filters_reference(model: nn.Module, k: int | None = None,
                      seeds: Sequence[int] = INIT_SEEDS) -> torch.Tensor | None:
    """(seeds, k) explained-variance ratios of the filters of random-initialised models of ``model``'s architecture.

    ``k`` defaults to every component; None for a model without ``vitlab_arch`` or without seeds.
    """
    if getattr(model, "vitlab_arch", None) is None or not seeds:
        return None
    full = _components(model)
    reference = torch.stack([metrics.embedding_filters(random_init(model, s), k=full)[1] for s in seeds])
    return reference if k is None else reference[:, :k]


def embedding_filters_of(model: nn.Module, k: int = 28, seeds: Sequence[int] = INIT_SEEDS) -> FiltersReadout:
    """:func:`embedding_filters` of ``model``, against random-initialised models of its architecture."""
    ratio = metrics.embedding_filters(model, k=_components(model))[1]
    return embedding_filters(ratio, filters_reference(model, seeds=seeds), k)


# --- Fig. 6: attention rollout -------------------------------------------------------------------

PAPER_ROLLOUT = "the model attends to image regions that are semantically relevant for classification."


def central_region(grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols) bool mask of the central patches: the middle half of the rows and of the columns.

    A quarter of the area on grids divisible by 4 (the central 4x4 of an 8x8 grid).
    """
    rows, cols = grid
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4] = True
    return mask


@dataclass(frozen=True, kw_only=True)
class RolloutReadout(Readout):
    """Share of rollout mass in the image centre against its share of area (:func:`attention_rollout`).

    Attributes:
        area: fraction of the patches in the central region.
        ratio: mean over images of (rollout mass in the centre / ``area``); 1 for uniform rollout.
        low, high: its 95% bootstrap interval over images. std: across images.
        reference: the mean ratio of each random-init seed (may be empty).
        images: how many images.
    """

    area: float
    ratio: float
    low: float
    high: float
    std: float
    reference: list[float]
    images: int


def centre_ratio(rollout: torch.Tensor) -> torch.Tensor:
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


def attention_rollout(rollout: torch.Tensor, reference: Sequence[torch.Tensor] = (), resamples: int = RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> RolloutReadout:
    """Readout of Fig. 6: does the rollout favour the image centre, where CIFAR-10 objects mostly are?

    Measures only where the rollout mass lies relative to the central region (the middle half
    of rows and columns), averaged over images: a ratio of 1 means no preference (uniform
    rollout), above 1 more mass on the centre. It cannot say whether the mass lies on the
    object: no segmentation masks are used, and objects off centre count against it.

    Args:
        rollout: (images, rows, cols) the class token's rollout, e.g. from :func:`rollout_maps`.
        reference: the same for random-initialised models, one tensor per seed.
    """
    ratios = centre_ratio(rollout)  # (images,)
    low, high = bootstrap_interval(ratios, resamples, seed)
    area = float(central_region(tuple(rollout.shape[1:])).double().mean())
    ref = [float(centre_ratio(r).mean()) for r in reference]
    mean, std = float(ratios.mean()), float(ratios.std()) if len(ratios) > 1 else 0.0
    init = f"; random init ({len(ref)} seeds): {spread_text(ref)}" if ref else ""
    text = (f"Over {len(ratios)} images the central {100 * area:.0f}% of the image gets {mean:.2f} times its share of "
            f"the rollout (95% interval {float(low):.2f} to {float(high):.2f}, std {std:.2f} across images; 1 = no "
            f"preference{init}). This measures a preference for the centre, where CIFAR-10 objects mostly are, "
            "not whether the mass lies on the object (no segmentation masks).")
    return RolloutReadout(figure="Fig. 6", text=text, paper=PAPER_ROLLOUT, area=area, ratio=mean, low=float(low),
                          high=float(high), std=std, reference=ref, images=len(ratios))


@torch.no_grad()
def rollout_maps(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 batch_size: int = 64) -> torch.Tensor:
    """The class token's rollout (:func:`vitlab.analysis.metrics.attention_rollout`) per image: (images, rows, cols)."""
    check_images(model, images)
    maps = []
    for i in range(0, len(images), batch_size):
        cap = capture(model, images[i : i + batch_size])
        roll = metrics.attention_rollout(cap.attn, cap.num_prefix_tokens, head_fusion, discard_ratio)  # (B, n)
        maps.append(roll.reshape(len(roll), *cap.grid))
    return torch.cat(maps)


def attention_rollout_of(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean",
                         discard_ratio: float = 0.0, seeds: Sequence[int] = INIT_SEEDS) -> RolloutReadout:
    """:func:`attention_rollout` of ``model`` on ``images`` (uint8), against random-initialised models."""
    maps = rollout_maps(model, images, head_fusion, discard_ratio)
    reference = []
    if getattr(model, "vitlab_arch", None) is not None:
        reference = [rollout_maps(random_init(model, s), images, head_fusion, discard_ratio) for s in seeds]
    return attention_rollout(maps, reference)


# --- Fig. 7 (right) against training-set size (Raghu et al. 2021) -------------------------------

PAPER_DATA_SIZE = ("with enough pre-training data (JFT-300M) some lower-layer heads attend locally; Raghu et al. "
                   "(2021) found that ViTs trained on less data (ImageNet) do not learn this local attention in "
                   "their lower layers.")


@dataclass(frozen=True, kw_only=True)
class DataSizeReadout(Readout):
    """The lowest layer's most local head across training-set sizes (:func:`data_size`).

    Attributes:
        sizes: training images of each run, ascending (one entry per run).
        lowest: the lowest layer's most local head of each run, pixels; ``low``/``high`` its 95%
            interval over the probe images, pixels.
        uniform: distance under uniform attention (the same for every run), pixels.
        local: per run, whether that head is local by :func:`attention_distance`'s rule
            (its interval below ``LOCAL_FRACTION`` of the uniform distance).
    """

    sizes: list[int]
    lowest: list[float]
    low: list[float]
    high: list[float]
    uniform: float
    local: list[bool]


def data_size(runs: Sequence[RunInside]) -> DataSizeReadout:
    """Readout of the inside views of sweep runs (:func:`vitlab.training.sweep.inside_runs`) against their data size."""
    if not runs:
        raise ValueError("no inside views of sweep runs: run `python -m vitlab sweep` on ViTs first")
    runs = sorted(runs, key=lambda r: (r.subset_size, r.seed))
    uniform = runs[0].view.uniform
    local = [r.lowest_high < LOCAL_FRACTION * uniform for r in runs]
    first, last = runs[0], runs[-1]

    def said(r: RunInside) -> str:
        return (f"{r.subset_size:,} images: {_px(r.view.lowest_local)} (95% interval {r.lowest_low:.1f} to "
                f"{r.lowest_high:.1f}, std {r.lowest_std:.1f} across {r.view.images} images; test accuracy "
                f"{r.test_accuracy:.1%})")

    verdict = ("no run has a local head in its lowest layer" if not any(local)
               else f"{sum(local)} of {len(runs)} runs have a local head in their lowest layer")
    text = (f"Lowest layer's most local head, {said(first)}; {said(last)}; uniform attention: {_px(uniform)}. "
            f"Across {len(runs)} runs ({first.model}), {verdict}.")
    return DataSizeReadout(
        figure="Fig. 7 (right) against data size", text=text, paper=PAPER_DATA_SIZE,
        sizes=[r.subset_size for r in runs], lowest=[r.view.lowest_local for r in runs],
        low=[r.lowest_low for r in runs], high=[r.lowest_high for r in runs], uniform=uniform, local=local)


# --- recipe comparisons: what a change of training recipe does to attention distance ---------------

PAPER_RECIPES = ("the ViT paper explains local lower-layer heads by pre-training data (JFT-300M); Santiago "
                 "Toledo and Martinez (2026, arXiv 2605.16390) report that for ViTs trained from scratch on "
                 "CIFAR-10, CIFAR-100 and Tiny-ImageNet CutMix is what makes early heads local (CIFAR-100: minimum "
                 "normalised mean attention distance 0.316 without, 0.008 with), while AutoAugment and label "
                 "smoothing have no effect.")


@dataclass(frozen=True, kw_only=True)
class RecipesReadout(Readout):
    """Arms of a recipe comparison at one epoch (:func:`recipes`).

    Attributes:
        epoch: the epoch read (the last one all runs recorded, unless asked).
        arms: arm labels, in the comparison's order; seeds: per arm, the runs' seeds.
        accuracy: per arm, each run's test accuracy at ``epoch`` (fractions).
        lowest: per arm, each run's lowest-layer most local head at ``epoch`` (pixels).
        low, high: per arm, each run's 95% interval of that head over the probe images (pixels);
            only at the final epoch (the final models were measured per image), else empty.
        structure: per arm, each run's position-embedding structure score (Spearman).
        uniform: the uniform-attention distance (pixels).
        local: per arm, whether each run's lowest layer has a local head: its interval (at the
            final epoch) or its value (before) below ``LOCAL_FRACTION`` of uniform attention.
    """

    epoch: int
    arms: list[str]
    seeds: dict[str, list[int]]
    accuracy: dict[str, list[float]]
    lowest: dict[str, list[float]]
    low: dict[str, list[float]]
    high: dict[str, list[float]]
    structure: dict[str, list[float]]
    uniform: float
    local: dict[str, list[bool]]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def recipes(comparison: Recipes, epoch: int | None = None) -> RecipesReadout:
    """Readout of a recipe comparison (:func:`vitlab.training.recipes.read`) at ``epoch`` (default: the last one)."""
    epochs = comparison.epochs
    if not epochs:
        raise ValueError("the runs of this comparison share no recorded epoch")
    epoch = epochs[-1] if epoch is None else epoch
    final = all(epoch >= r.epochs[-1] for r in comparison.runs)
    arms = list(comparison.arms)
    views = {a: [r.view_at(epoch) for r in runs] for a, runs in comparison.arms.items()}
    uniform = comparison.runs[0].views[-1].uniform
    lowest = {a: [v.lowest_local for v in vs] for a, vs in views.items()}
    accuracy = {a: [r.accuracy_at(epoch) for r in runs] for a, runs in comparison.arms.items()}
    low = {a: [r.lowest_low for r in runs] if final else [] for a, runs in comparison.arms.items()}
    high = {a: [r.lowest_high for r in runs] if final else [] for a, runs in comparison.arms.items()}
    local = {a: [h < LOCAL_FRACTION * uniform for h in (high[a] or lowest[a])] for a in arms}
    structure = {a: [v.position_distance for v in vs] for a, vs in views.items()}
    seeds = {a: [r.seed for r in runs] for a, runs in comparison.arms.items()}

    def arm_text(a: str) -> str:
        runs = ", ".join(
            f"seed {s}: {_px(x)}" + (f" (95% interval {lo:.1f} to {hi:.1f} over images)" if final else "")
            for s, x, lo, hi in zip(seeds[a], lowest[a], low[a] or lowest[a], high[a] or lowest[a]))
        layer1 = _mean([v.layer_means[0] for v in views[a]])
        return (f"{a}: test accuracy {', '.join(f'{x:.1%}' for x in accuracy[a])} (mean {_mean(accuracy[a]):.1%}); "
                f"lowest layer's most local head {runs}; layer-1 mean over heads {_px(layer1)}; position structure "
                f"ρ {', '.join(number(x, 2) for x in structure[a])}")

    first, *rest = arms
    gaps = "; ".join(f"{a} minus {first}: most local head {number(_mean(lowest[a]) - _mean(lowest[first]), 1)} px, "
                     f"accuracy {100 * (_mean(accuracy[a]) - _mean(accuracy[first])):+.1f} points" for a in rest)
    seed_span = max(max(v) - min(v) for v in lowest.values())
    n_local = sum(sum(v) for v in local.values())
    verdict = ("no run has a local head in its lowest layer" if n_local == 0 else
               "; ".join(f"{a}: {sum(local[a])} of {len(local[a])} runs with a local head" for a in arms))
    rule = "its 95% interval" if final else "its value"
    changed = ", ".join(f"{k} ({', '.join(f'{a}: {v}' for a, v in by_arm.items())})"
                        for k, by_arm in comparison.differs_in.items()) or "nothing"
    text = (f"Epoch {epoch}, arms differing in {changed}. " + ". ".join(arm_text(a) for a in arms)
            + f". {gaps} (seeds of one arm span up to {seed_span:.1f} px). Uniform attention: {_px(uniform)}; "
            f"{verdict} ({rule} below {LOCAL_FRACTION:.0%} of uniform).")
    return RecipesReadout(
        figure="Fig. 7 (right) by training recipe", text=text, paper=PAPER_RECIPES, epoch=epoch, arms=arms, seeds=seeds,
        accuracy=accuracy, lowest=lowest, low=low, high=high, structure=structure, uniform=uniform, local=local)


# --- self-supervised pre-training: masked patch prediction, and fine-tuning from it ------------------

PAPER_MPP = ("masked patch prediction (50% of patch embeddings corrupted, 3-bit mean colour predicted) pre-trains "
             "ViT-B/16 on JFT-300M to 79.9% ImageNet top-1 after fine-tuning: 2% above training from scratch, 4% "
             "below supervised pre-training (section 4.6, appendix B.1.2).")


@dataclass(frozen=True, kw_only=True)
class PretrainingReadout(Readout):
    """What pre-training by masked patch prediction reached (:func:`pretraining`).

    Attributes:
        epochs: epochs run; images_seen: training images processed; minutes: training time.
        accuracy: share of corrupted test patches whose 3-bit colour the model predicts (final epoch).
        first: the same after the first epoch.
        baselines: name -> accuracy of a guess that needs no model (:func:`vitlab.training.mpp.baselines`).
    """

    epochs: int
    images_seen: int
    minutes: float
    accuracy: float
    first: float
    baselines: dict[str, float]


def pretraining(log: Sequence[dict], baselines: dict[str, float], batch_size: int) -> PretrainingReadout:
    """Readout of a pre-training run's metrics log (masked-patch colour accuracy per epoch) against guesses.

    Args:
        log: the run's metrics records (:func:`vitlab.training.run_folder.read_metrics`).
        baselines: guesses scored on the same test patches (:func:`vitlab.training.mpp.baselines`).
        batch_size: of the run, to count the images it saw.
    """
    if not log:
        raise ValueError("no epochs in this pre-training log: pre-train first (python -m vitlab pretrain)")
    last = log[-1]
    best_guess = max(baselines.items(), key=lambda kv: kv[1]) if baselines else ("none", 0.0)
    ratio = last["test_accuracy"] / best_guess[1] if best_guess[1] else float("inf")
    guesses = ", ".join(f"{k} {v:.1%}" for k, v in baselines.items())
    text = (f"After {last['epoch']} epochs ({last['step'] * batch_size:,} images seen, no labels, "
            f"{last['wall_seconds'] / 60:.0f} min) the encoder predicts the 3-bit colour of "
            f"{last['test_accuracy']:.1%} of the corrupted test patches ({log[0]['test_accuracy']:.1%} after the first "
            f"epoch). Guesses without a model, on the same patches: {guesses}. ")
    if ratio > 1.05:
        text += (f"The encoder gets {ratio:.1f}x the best guess ({best_guess[0]}): it reads the visible patches "
                 "around each corrupted one, not only the image's overall colour.")
    else:
        text += f"That is no better than the best guess ({best_guess[0]})."
    return PretrainingReadout(figure="masked patch prediction (paper 4.6)", text=text, paper=PAPER_MPP,
                              epochs=last["epoch"], images_seen=last["step"] * batch_size,
                              minutes=last["wall_seconds"] / 60, accuracy=last["test_accuracy"],
                              first=log[0]["test_accuracy"], baselines=dict(baselines))


@dataclass(frozen=True, kw_only=True)
class FinetuneReadout(Readout):
    """Fine-tuned from pre-trained weights against from scratch, per number of labelled images (:func:`fine_tuning`).

    Attributes:
        model: the architecture's zoo name; init: what the fine-tuned runs started from.
        sizes: labelled training images, ascending.
        scratch, tuned: per size, each seed's test accuracy (fractions).
        gain: per size, mean fine-tuned minus mean from scratch (fractions).
    """

    model: str
    init: str
    sizes: list[int]
    scratch: dict[int, list[float]]
    tuned: dict[int, list[float]]
    gain: dict[int, float]


def fine_tuning(runs: Sequence[RunRecord], model: str, init: str, pretrained_on: int | None = None) -> FinetuneReadout:
    """Readout of sweep runs of ``model`` fine-tuned from ``init`` against its runs from scratch of the same sizes.

    Only sizes with runs of both kinds count; seeds are averaged (the spread is the
    standard deviation over seeds, where there are several). ``pretrained_on``: the
    training images the encoder was pre-trained on (its sidecar's ``data``), said in the text.
    """
    mine = [r for r in runs if r.model == model]
    sizes_run = {r.subset_size for r in mine}
    scratch = {n: [r.test_accuracy for r in mine if not r.init and r.subset_size == n] for n in sizes_run}
    tuned = {n: [r.test_accuracy for r in mine if r.init == init and r.subset_size == n] for n in scratch}
    sizes = sorted(n for n in scratch if scratch[n] and tuned[n])
    if not sizes:
        raise ValueError(f"no size has runs of {model} both from scratch and fine-tuned from {init}")
    gain = {n: _mean(tuned[n]) - _mean(scratch[n]) for n in sizes}

    def said(n: int) -> str:
        def acc(xs: list[float]) -> str:
            return f"{_mean(xs):.1%}" + (f" ± {100 * statistics.stdev(xs):.1f}" if len(xs) > 1 else "")
        return f"{n:,} labels: {acc(tuned[n])} vs {acc(scratch[n])} ({100 * gain[n]:+.1f} points)"

    helped = [n for n in sizes if gain[n] > 0]
    verdict = ("pre-training helps at every size" if len(helped) == len(sizes) else
               f"pre-training helps at {len(helped)} of {len(sizes)} sizes" if helped else "pre-training helps at no size")
    most, least = max(sizes, key=gain.get), min(sizes, key=gain.get)
    text = (f"Fine-tuned from {init} vs {model} from scratch, same recipe and budget (mean over seeds ± std): "
            + "; ".join(said(n) for n in sizes) + f". {verdict.capitalize()}"
            + (f"; the gain is largest at {most:,} labels ({100 * gain[most]:+.1f} points) and smallest at "
               f"{least:,} ({100 * gain[least]:+.1f})." if len(sizes) > 1 else ".")
            + (f" The encoder was pre-trained without labels on {pretrained_on:,} CIFAR-10 training images, those the "
               "labelled subsets are drawn from: this tests the objective, not more data." if pretrained_on else ""))
    return FinetuneReadout(figure="masked patch prediction, then fine-tuning (paper 4.6)", text=text, paper=PAPER_MPP,
                           model=model, init=init, sizes=sizes, scratch={n: scratch[n] for n in sizes},
                           tuned={n: tuned[n] for n in sizes}, gain=gain)


# --- three families: ViT, hybrid and ResNet against training-set size ----------------------------

PAPER_FAMILIES = ("Fig. 5 (pre-trained on JFT-300M, transfer accuracy against pre-training compute): ViTs dominate "
                  "ResNets on the performance/compute trade-off, needing 2-4x less compute for the same accuracy; "
                  "hybrids slightly outperform ViTs at small computational budgets, and the difference vanishes "
                  "for larger models.")

@dataclass(frozen=True, kw_only=True)
class FamiliesReadout(Readout):
    """Each model trained from scratch in one sweep, per training-set size (:func:`families`).

    Attributes:
        models: model name -> family, ViTs first, then hybrids, then ResNets.
        sizes: the training-set sizes every model ran, ascending.
        accuracy: model -> size -> each seed's test accuracy (fractions).
        flops_per_image: model -> training FLOPs of one image (forward and backward).
        best: size -> the model with the highest mean test accuracy.
        gaps: (model a, model b) -> size -> mean accuracy of a minus that of b (fractions), for
            every pair in ``models`` order.
    """

    models: dict[str, str]
    sizes: list[int]
    accuracy: dict[str, dict[int, list[float]]]
    flops_per_image: dict[str, float]
    best: dict[int, str]
    gaps: dict[tuple[str, str], dict[int, float]]


def families(runs: Sequence[RunRecord]) -> FamiliesReadout:
    """Readout of a sweep's models trained from scratch against each other, size by size (paper Fig. 5).

    Runs fine-tuned from pre-trained weights (``init``) are left out; seeds are averaged.
    Only sizes that every model ran count.
    """
    scratch = [r for r in runs if not r.init]
    found = {r.model: r.family for r in scratch}
    models = dict(sorted(found.items(), key=lambda kv: (FAMILY_ORDER.get(kv[1], len(FAMILY_ORDER)), kv[0])))
    if len(models) < 2:
        raise ValueError(f"comparing families needs runs of at least two models trained from scratch, got {list(models)}")
    sizes = sorted(set.intersection(*({r.subset_size for r in scratch if r.model == m} for m in models)))
    if not sizes:
        raise ValueError(f"no training-set size was run for every model of {list(models)}")
    acc = {m: {n: [r.test_accuracy for r in scratch if r.model == m and r.subset_size == n] for n in sizes}
           for m in models}
    mean = {m: {n: _mean(acc[m][n]) for n in sizes} for m in models}
    best = {n: max(models, key=lambda m: mean[m][n]) for n in sizes}
    names = list(models)
    gaps = {(a, b): {n: mean[a][n] - mean[b][n] for n in sizes} for i, a in enumerate(names) for b in names[i + 1:]}
    flops = {m: next(r.flops_per_image for r in scratch if r.model == m) for m in models}

    def at(n: int) -> str:
        ranked = sorted(models, key=lambda m: -mean[m][n])
        seeds = {m: f" ({len(acc[m][n])} seeds)" if len(acc[m][n]) > 1 else "" for m in models}
        return f"{n:,} images: " + " > ".join(f"{m} {mean[m][n]:.1%}{seeds[m]}" for m in ranked)

    def pair(a: str, b: str) -> str:
        g = gaps[a, b]
        ahead = sum(v > 0 for v in g.values())
        return (f"{a} ahead of {b} at {ahead} of {len(sizes)} sizes ({100 * g[sizes[0]]:+.1f} points at "
                f"{sizes[0]:,} images, {100 * g[sizes[-1]]:+.1f} at {sizes[-1]:,})")

    text = ("Test accuracy on the 10,000 test images (mean over the seeds run, one where not said): "
            + "; ".join(at(n) for n in sizes) + ". Pairwise: " + "; ".join(pair(a, b) for a, b in gaps)
            + ". Training FLOPs per image: " + ", ".join(f"{m} {flops[m] / 1e6:.0f} M" for m in models) + ".")
    return FamiliesReadout(figure="Fig. 5, small scale", text=text, paper=PAPER_FAMILIES, models=models, sizes=sizes,
                           accuracy=acc, flops_per_image=flops, best=best, gaps=gaps)


@dataclass(frozen=True, kw_only=True)
class InsideComparisonReadout(Readout):
    """Fig. 7 numbers of several models of one architecture side by side (:func:`inside_comparison`).

    Attributes:
        names: the models' labels; lowest: each one's lowest-layer most local head (pixels);
        most_local: each one's most local head anywhere (pixels) and its layer (1-based);
        structure: each one's position-embedding structure score; uniform: uniform attention (pixels).
    """

    names: list[str]
    lowest: dict[str, float]
    most_local: dict[str, tuple[float, int]]
    structure: dict[str, float]
    uniform: float


def check_one_grid(views: dict[str, InsideView]) -> None:
    """Refuse views of models with different patch grids: their distances and uniform lines differ."""
    if not views:
        raise ValueError("no inside views to compare")
    grids = {k: (tuple(v.grid), tuple(v.patch_size)) for k, v in views.items()}
    if len(set(grids.values())) > 1:
        raise ValueError(f"compare models of one patch grid; got {grids} (grid, patch size in pixels)")


def inside_comparison(views: dict[str, InsideView]) -> InsideComparisonReadout:
    """Readout of models' inside views (e.g. pre-trained without labels, trained from scratch, random init)."""
    check_one_grid(views)
    uniform = next(iter(views.values())).uniform
    lowest = {k: v.lowest_local for k, v in views.items()}
    most_local = {}
    for k, v in views.items():
        layer = min(range(len(v.distance)), key=lambda i: min(v.distance[i]))
        most_local[k] = (min(v.distance[layer]), layer + 1)
    structure = {k: v.position_distance for k, v in views.items()}
    local = [k for k, (d, _) in most_local.items() if d < LOCAL_FRACTION * uniform]
    text = ("; ".join(f"{k}: lowest layer's most local head {_px(lowest[k])}, most local head anywhere "
                      f"{_px(most_local[k][0])} (layer {most_local[k][1]}), position structure ρ "
                      f"{number(structure[k], 2)}" for k in views)
            + f". Uniform attention: {_px(uniform)}; "
            + (f"local heads (below {LOCAL_FRACTION:.0%} of uniform) in: {', '.join(local)}." if local else
               f"no model has a head below {LOCAL_FRACTION:.0%} of uniform attention."))
    return InsideComparisonReadout(figure="Fig. 7 (right), by initialisation", text=text, paper=PAPER_DATA_SIZE,
                                   names=list(views), lowest=lowest, most_local=most_local, structure=structure,
                                   uniform=uniform)
