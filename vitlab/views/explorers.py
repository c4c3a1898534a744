"""Interactive views: ipywidgets wiring around :mod:`vitlab.views.figures` figures.

Every view is an :class:`~vitlab.views.controls.Explorer`: a model dropdown, its own controls,
a status line and plotly ``FigureWidget``s updated in place, so changing a widget never
re-runs a cell. The tensor work lives in :mod:`vitlab.analysis.metrics` and :mod:`vitlab.analysis.capture`;
here it is only called. Every view is its own root widget; its parts are attributes, for
tests and for users who want to rearrange them. The views of the ViT vs ResNet study
(:class:`SweepExplorer`, :class:`ProbeExplorer`, :class:`CKAExplorer`) live in
:mod:`vitlab.views.study_explorers` and are given here under the same names.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from .. import data
from ..analysis import metrics
from . import figures
from . import readouts
from .study_explorers import CKAExplorer, ProbeExplorer, SweepExplorer
from .controls import STYLE, Explorer, Recent, cached_model, fit_width, load_note, model_key, show_figure, side_by_side
from ..analysis.capture import INIT_SEEDS, capture, head_statistics, random_init_statistics, uniform_distance
from ..settings import quick_or
from ..training.loop import train
from ..training.objectives import mixing
from ..training.run_folder import read_metrics


# --- Fig. 7: filters, position embeddings, attention distance ----------------------------------


_Scores = tuple[metrics.PositionStructure, metrics.MirrorScore]


@dataclass(frozen=True)
class _Positions:
    sim: torch.Tensor  # (rows, cols, rows, cols)
    reference: list[_Scores]  # one per seed of SEEDS; empty for a model without vitlab_arch


class PositionEmbeddingExplorer(Explorer):
    """Fig. 7 (center) for a model picked from a dropdown; click a tile to enlarge it.

    Under the mosaic, the structure and mirror scores of the model and of random-initialised
    models of its architecture (:func:`vitlab.analysis.capture.random_init` with seeds ``SEEDS``,
    cached per model).

    Attributes: ``model``, ``mosaic`` (one similarity tile per patch), ``detail`` (the
    clicked patch's map), ``status``, ``sim`` (the similarity shown), ``reference`` (the
    random-init scores shown, one (structure, mirror) pair per seed), ``selected`` (patch),
    ``readout`` (HTML under the figures: :func:`vitlab.views.readouts.position_embeddings` of the model shown).
    """

    n_figures = 2
    SEEDS = INIT_SEEDS

    def __init__(self, models: Sequence[str], initial: str | None = None):
        super().__init__(models, initial)
        self.selected = (0, 0)
        self._references = Recent()
        self.mosaic, self.detail = self.plots
        self.readout = W.HTML()
        self._build([[self.model], W.HTML("<i>Click a tile to see that patch's similarity map large.</i>"),
                     side_by_side(self.plots), self.readout])
        self.click(0, 0, self._clicked)

    @property
    def sim(self) -> torch.Tensor:
        return self.result.sim

    @property
    def reference(self) -> list[_Scores]:
        return self.result.reference

    def compute(self) -> _Positions:
        model = cached_model(self.model.value)
        sim = metrics.position_similarity(model)  # (rows, cols, rows, cols)
        self.selected = tuple(min(s, n - 1) for s, n in zip(self.selected, sim.shape[:2]))
        return _Positions(sim, self.random_init(model))

    def random_init(self, model: nn.Module) -> list[_Scores]:
        """Structure and mirror scores of random-initialised models of ``model``'s architecture, cached per model."""
        return self._references.keep(model_key(self.model.value),
                                     lambda: readouts.position_reference(model, self.SEEDS))

    def figures(self, result: _Positions) -> list[go.Figure]:
        self.readout.value = readouts.position_embeddings(result.sim, result.reference).html()
        return [figures.position_similarity_figure(result.sim, title=self.model.value, reference=result.reference),
                figures.patch_similarity_figure(result.sim, *self.selected)]

    def _clicked(self, trace, points, state) -> None:
        if points.xs:
            tile = figures.mosaic_tile(self.sim.shape, points.xs[0], points.ys[0])
            if tile is not None:
                self.show_patch(*tile)

    def show_patch(self, row: int, col: int) -> None:
        """Show patch (row, col)'s similarity map (0-based) in the detail figure."""
        self.selected = (row, col)
        self.refresh()


def position_embedding_explorer(models: Sequence[str], initial: str | None = None) -> PositionEmbeddingExplorer:
    """Dropdown of ``models`` with the Fig. 7 (center) mosaic and a clicked-patch view."""
    return PositionEmbeddingExplorer(models, initial)


@dataclass(frozen=True)
class _Filters:
    filters: torch.Tensor  # (k, C, P, P) principal components
    ratio: torch.Tensor  # (k,) explained-variance ratios
    reference: torch.Tensor | None  # (seeds, k) ratios of random-initialised models; None without vitlab_arch


class EmbeddingFiltersExplorer(Explorer):
    """Fig. 7 (left): principal components of a model's patch-embedding filters.

    The explained-variance figure draws, beside the model's cumulative curve, that of
    random-initialised models of its architecture (:func:`vitlab.analysis.capture.random_init` with
    seeds ``SEEDS``, cached per model): filters with more structure than random init put
    more variance in their first components.

    Attributes: ``model`` (dropdown), ``components`` (slider), ``filters`` and ``variance``
    (FigureWidgets), ``status``, ``reference`` ((seeds, k) random-init ratios shown, or None),
    ``readout`` (HTML under the figures: :func:`vitlab.views.readouts.embedding_filters` of the components shown).
    """

    n_figures = 2
    SEEDS = INIT_SEEDS

    def __init__(self, models: Sequence[str], initial: str | None = None, k: int = 28):
        super().__init__(models, initial)
        self.components = W.IntSlider(value=k, min=1, max=64, description="components", continuous_update=False,
                                      style=STYLE)
        self._references = Recent()
        self.filters, self.variance = self.plots
        self.readout = W.HTML()
        self._build([[self.model, self.components], side_by_side(self.plots), self.readout], [self.components])

    @property
    def reference(self) -> torch.Tensor | None:
        return self.result.reference

    def compute(self) -> _Filters:
        model = cached_model(self.model.value)
        proj = getattr(getattr(model, "patch_embed", None), "proj", None)
        if proj is not None:
            with self.hold():  # a smaller maximum may lower the value: no second redraw
                self.components.max = min(proj.weight.shape[0], proj.weight[0].numel())
        k = self.components.value
        filters, ratio = metrics.embedding_filters(model, k=k)
        reference = self.random_init(model)
        return _Filters(filters, ratio, None if reference is None else reference[:, :k])

    def random_init(self, model: nn.Module) -> torch.Tensor | None:
        """(seeds, all components) explained-variance ratios of random-initialised models, cached per model."""
        return self._references.keep(model_key(self.model.value),
                                    lambda: readouts.filters_reference(model, seeds=self.SEEDS))

    def figures(self, result: _Filters) -> list[go.Figure]:
        title = f"{self.model.value}: first {len(result.ratio)} principal components"
        self.readout.value = readouts.embedding_filters(result.ratio, result.reference, len(result.ratio)).html()
        return [figures.embedding_filters_figure(result.filters, result.ratio, title=title),
                figures.explained_variance_figure(result.ratio, result.reference)]


@dataclass(frozen=True)
class _Distances:
    model: nn.Module
    stats: dict[str, torch.Tensor]
    images: int
    uniform: float  # pixels, under the convention shown
    random_init: torch.Tensor | None  # (seeds, layers, heads) pixels; None for a model without vitlab_arch
    random_images: int  # how many of the images the random-initialised models saw


class AttentionDistanceExplorer(Explorer):
    """Fig. 7 (right): mean attention distance per head against depth, streamed over images.

    Two references are drawn for the model on screen and the convention in use: uniform
    attention over its grid (:func:`vitlab.analysis.capture.uniform_distance`) and random-initialised
    models of its architecture (seeds ``SEEDS``, on the first ``reference_images`` of the
    images, cached per model, image count and convention).

    Attributes: ``model``, ``images`` (how many of the images), ``convention`` (how
    attention given to the class token is treated), ``run`` (Compute), ``figure``,
    ``status`` (what the figure was computed on, or that the settings changed), ``readout``
    (HTML under the figure: :func:`vitlab.views.readouts.attention_distance` of what it shows).
    """

    #: Label -> ``renormalize``; the paper's convention first (the default).
    CONVENTIONS = {"paper's: raw weights over patches": False, "renormalised over patches": True}
    SEEDS = INIT_SEEDS
    live, slow = False, True

    def __init__(self, models: Sequence[str], images: torch.Tensor, initial: str | None = None,
                 counts: Sequence[int] = (16, 128, 512, 1000, 10000), default: int = 128,
                 reference: str | None = None, source: str = ""):
        super().__init__(models, initial)
        self.data, self.source, self.reference = images, source, reference
        self.reference_images = quick_or(256, 16)  # random-init models are alike across images
        self._random = Recent()
        counts = sorted({c for c in counts if c <= len(images)} | {min(default, len(images))})
        self.images = W.Dropdown(options=counts, value=min(default, len(images)), description="images", style=STYLE,
                                 layout=W.Layout(width="22ch"))
        self.convention = W.ToggleButtons(options=list(self.CONVENTIONS), description="convention",
                                          style=dict(STYLE, button_width="auto"))
        self.figure = self.plots[0]
        self.readout = W.HTML()
        self._build([[self.model, self.images, self.convention, self.run], self.figure, self.readout],
                    [self.images, self.convention])

    def compute(self) -> _Distances:
        model = cached_model(self.model.value)
        n = self.images.value
        renormalize = self.CONVENTIONS[self.convention.value]
        stats = head_statistics(model, self.data[:n], batch_size=64, progress=True, renormalize=renormalize)
        m = min(n, self.reference_images)
        return _Distances(model, stats, n, uniform_distance(model, renormalize),
                          self.random_init(model, m, renormalize), m)

    def random_init(self, model: nn.Module, n: int, renormalize: bool) -> torch.Tensor | None:
        """(seeds, layers, heads) distances of random-initialised models on the first ``n`` images, cached."""
        def make() -> torch.Tensor | None:
            if getattr(model, "vitlab_arch", None) is None:
                return None
            return random_init_statistics(model, self.data[:n], self.SEEDS, batch_size=64, renormalize=renormalize,
                                          progress=True)["distance"]

        return self._random.keep((model_key(self.model.value), n, renormalize), make)

    def describe(self, result: _Distances) -> str:
        return data.describe_images(result.images, self.source)

    def references(self, result: _Distances) -> str:
        """The reference numbers drawn, for the title: uniform, and the random-init range."""
        text = f"uniform {result.uniform:.1f} px"
        if result.random_init is not None:
            r = result.random_init
            text += (f", random init {float(r.min()):.1f}-{float(r.max()):.1f} px ({len(r)} seeds, "
                     f"{result.random_images} images)")
        return text

    def figures(self, result: _Distances) -> list[go.Figure]:
        depth = len(result.model.blocks)
        reference = _distance_references(result.model, self.model.value, self.reference, depth)
        diagonal = math.hypot(*result.model.pretrained_cfg["input_size"][1:])
        title = (f"{self.model.value}: mean attention distance ({self.convention.value}), "
                 f"{self.describe(result)}; {self.references(result)}")
        self.readout.value = readouts.attention_distance(result.stats["distance_per_image"], result.uniform,
                                                         result.random_init, result.stats["layers"].tolist(),
                                                         token_field=readouts.token_field_of(result.model)).html()
        return [figures.attention_distance_figure(result.stats["distance"], result.stats["layers"], reference,
                                                max_distance=diagonal, title=title, depth=depth,
                                                uniform=result.uniform, random_init=result.random_init)]


def _distance_references(model: nn.Module, name: str, cnn: str | None, depth: int) -> dict[str, tuple]:
    """Receptive-field lines for Fig. 7 (right): the CNN ``cnn``'s stages, and a hybrid's own CNN stem."""
    lines = {}
    if cnn is not None:
        lines = figures.receptive_field_reference(metrics.receptive_fields(cached_model(cnn)), depth,
                                                f"{cnn} receptive field")
    pixels = readouts.token_field_of(model)  # None for a ViT
    if pixels is not None:
        lines.update(figures.token_field_reference(pixels, depth, f"{name}'s CNN stem receptive field ({pixels:.0f} px)"))
    return lines


def attention_distance_view(model: str, images: torch.Tensor, reference: str | None = None, source: str = "",
                            renormalize: bool = False) -> tuple[go.Figure, readouts.DistanceReadout]:
    """Fig. 7 (right) for ``model`` on ``images`` with its references, and its readout.

    Computes each head's distance over ``images`` (uint8 (N, 3, H, W)), the uniform line, the
    random-init band (seeds ``INIT_SEEDS``, same images), when ``reference`` names a
    CNN its receptive-field line, and for a hybrid its own CNN stem's receptive field (what each
    token sees before any attention); returns ``(figure, readout)``
    (:func:`vitlab.views.readouts.attention_distance`), what notebook 03 shows.
    """
    net = cached_model(model)
    if load_note(model):  # e.g. random weights: cached_model keeps it for status lines, a notebook shows it
        import warnings

        warnings.warn(load_note(model), stacklevel=2)
    stats = head_statistics(net, images, progress=True, renormalize=renormalize)
    uniform = uniform_distance(net, renormalize)
    band = None if getattr(net, "vitlab_arch", None) is None else random_init_statistics(
        net, images, progress=True, renormalize=renormalize)["distance"]  # (seeds, layers, heads)
    depth = len(net.blocks)
    lines = _distance_references(net, model, reference, depth)
    diagonal = math.hypot(*net.pretrained_cfg["input_size"][1:])  # pixels
    title = f"{model}: mean attention distance, {data.describe_images(len(images), source)}; uniform {uniform:.1f} px"
    figure = figures.attention_distance_figure(stats["distance"], stats["layers"], lines, diagonal, title=title,
                                             depth=depth, uniform=uniform, random_init=band)
    return figure, readouts.attention_distance(stats["distance_per_image"], uniform, band, stats["layers"].tolist(),
                                               token_field=readouts.token_field_of(net))


# --- Fig. 6: attention maps -----------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """One image as a model saw it: the resized image and each block's attention (heads, N, N)."""

    image: torch.Tensor
    attn: list[torch.Tensor]
    grid: tuple[int, int]
    prefix: int


class AttentionMapsExplorer(Explorer):
    """Fig. 6: attention rollout over an image, and each layer's and head's attention.

    Click a patch of the rollout map to see where that patch attends at the chosen layer
    and head. Attributes: ``model``, ``image``, ``layer``, ``head``, ``fusion``, ``discard``
    (controls); ``rollout``, ``patch``, ``heads`` (FigureWidgets); ``selected`` (patch);
    ``readout`` (HTML under the rollout: :func:`vitlab.views.readouts.attention_rollout` over all the
    images of the list, for the model, head fusion and discard ratio shown, against random init;
    cached).
    """

    n_figures = 3

    def __init__(self, models: Sequence[str], images: torch.Tensor, names: Sequence[str],
                 initial: str | None = None):
        super().__init__(models, initial)
        self.images, self.names = images, list(names)
        self.image = W.Dropdown(options=[(n, i) for i, n in enumerate(self.names)], value=0, description="image",
                                style=STYLE, layout=fit_width(self.names, "image"))
        self.layer = W.IntSlider(value=1, min=1, max=1, description="layer", continuous_update=False, style=STYLE)
        self.head = W.Dropdown(options=[("mean of heads", -1)], value=-1, description="head", style=STYLE)
        self.fusion = W.Dropdown(options=["mean", "max", "min"], value="mean", description="head fusion", style=STYLE)
        self.discard = W.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="discard ratio",
                                     continuous_update=False, style=STYLE)
        self.selected = (0, 0)
        self._seen = Recent()
        self._readouts = Recent()
        self.rollout, self.patch, self.heads = self.plots
        self.readout = W.HTML()
        self._build([[self.model, self.image], [self.fusion, self.discard, self.layer, self.head],
                     W.HTML("<i>Click a patch of the rollout map to see where it attends (next figure).</i>"),
                     side_by_side(self.plots[:2]), self.readout, self.heads],
                    [self.image, self.layer, self.head, self.fusion, self.discard])
        self.click(0, -1, self._clicked)

    def _see(self) -> _Seen:
        def make() -> _Seen:
            model = cached_model(self.model.value)
            size = model.pretrained_cfg["input_size"][1:]
            img = data.resize(self.images[self.image.value : self.image.value + 1], size)  # (1, 3, H, W)
            cap = capture(model, img)
            return _Seen(img[0], [cap.attn[i][0] for i in cap.attn], cap.grid, cap.num_prefix_tokens)

        return self._seen.keep((model_key(self.model.value), self.image.value), make)

    def compute(self) -> _Seen:
        seen = self._see()
        heads = seen.attn[0].shape[0]
        with self.hold():  # fit the layer and head controls to this model
            self.layer.max = len(seen.attn)
            options = [("mean of heads", -1)] + [(f"head {h + 1}", h) for h in range(heads)]
            if list(self.head.options) != options:
                value = self.head.value
                self.head.options = options
                self.head.value = value if value < heads else -1
        self.selected = tuple(min(s, n - 1) for s, n in zip(self.selected, seen.grid))
        return seen

    def figures(self, seen: _Seen) -> list[go.Figure]:
        name, (r, c) = self.names[self.image.value], self.selected
        rollout = metrics.attention_rollout([a[None] for a in seen.attn], seen.prefix, self.fusion.value,
                                            self.discard.value)[0].reshape(seen.grid)
        head = None if self.head.value < 0 else self.head.value
        query = metrics.query_attention(seen.attn[self.layer.value - 1], seen.grid, seen.prefix, self.selected, head)
        where = f"layer {self.layer.value}, " + ("mean of heads" if head is None else f"head {head + 1}")
        self.readout.value = self.rollout_readout().html()
        return [
            figures.attention_overlay_figure(seen.image, rollout, title=f"attention rollout: {name}",
                                           marker=self.selected, scale="rollout"),
            figures.attention_overlay_figure(seen.image, query, title=f"patch ({r + 1}, {c + 1}) attends: {where}",
                                           marker=self.selected),
            figures.head_attention_figure(metrics.class_token_attention(seen.attn, seen.grid, seen.prefix),
                                        title=f"class-token attention per layer and head, {name}"),
        ]

    def _clicked(self, trace, points, state) -> None:
        if points.point_inds:
            self.select(*points.point_inds[0])

    def select(self, row: int, col: int) -> None:
        """Show where patch (row, col) attends (0-based) and outline it."""
        self.selected = (row, col)
        self.refresh()

    def rollout_readout(self) -> readouts.RolloutReadout:
        """:func:`vitlab.views.readouts.attention_rollout_of` over all the images, for the settings shown (cached)."""
        def make() -> readouts.RolloutReadout:
            model = cached_model(self.model.value)
            images = data.resize(self.images, model.pretrained_cfg["input_size"][1:])
            return readouts.attention_rollout_of(model, images, self.fusion.value, self.discard.value)

        return self._readouts.keep((model_key(self.model.value), self.fusion.value, self.discard.value), make)


# --- training ---------------------------------------------------------------------------------


class TrainingMonitor(W.VBox):
    """Live loss and accuracy curves; pass :meth:`update` as ``train(..., on_epoch=...)``.

    ``records`` are epochs already run (e.g. ``train.read_metrics(out)`` of a run being
    resumed), drawn at once; an epoch reported again replaces its earlier record. ``mixed``:
    the run mixes images, so its train accuracy counts dominant labels (the legend says so).
    ``objective``: ``"mpp"`` for a pre-training run, whose accuracies count masked patches' colours.
    """

    def __init__(self, title: str = "Training", records: list[dict] | None = None, mixed: bool = False,
                 objective: str = "classify"):
        self.records: list[dict] = list(records or [])
        self.title, self.mixed, self.objective = title, mixed, objective
        self.figure = go.FigureWidget(self._figure())
        super().__init__([self.figure])

    def update(self, record: dict) -> None:
        """Add one epoch's record (replacing a record of the same or a later epoch) and redraw."""
        self.records = [r for r in self.records if r["epoch"] < record["epoch"]] + [record]
        show_figure(self.figure, self._figure())

    def _figure(self) -> go.Figure:
        return figures.training_curves_figure(self.records, title=self.title, mixed=self.mixed, objective=self.objective)


def train_with_curves(config, out: str | Path, title: str | None = None):
    """Show live curves, train ``config`` (a :class:`vitlab.training.config.TrainConfig`) into ``out``, return the result."""
    from IPython.display import display

    # A run resumed (or already finished) in ``out`` shows the epochs it has recorded so far.
    what = "Pre-training (masked patch prediction)" if config.objective == "mpp" else "Training"
    monitor = TrainingMonitor(title or f"{what} {config.model} ({out})", read_metrics(out), mixed=mixing(config),
                              objective=config.objective)
    display(monitor)
    return train(config, out, progress=True, on_epoch=monitor.update)


# --- inside views across training ---------------------------------------------------------------


class InsideViewsExplorer(W.VBox):
    """The three Fig. 7 panels of a ViT run at any recorded epoch, and its attention distance against epoch.

    Reads ``<run>/inside.jsonl`` and ``inside.safetensors`` (written by the trainer,
    :mod:`vitlab.training.inside`). The epoch slider redraws the filters' principal components and
    their explained variance (from the stored filters), the position-embedding similarity
    (from the stored position embeddings) and the attention distance per head (from the
    record, with the uniform line); the line chart marks the epoch shown.

    Attributes: ``epoch`` (slider over recorded epochs), ``filters``, ``variance``,
    ``positions``, ``distance``, ``timeline`` (FigureWidgets), ``views`` (the records),
    ``view`` (the one shown), ``sim`` and ``ratio`` (the similarity and explained variance shown;
    None for a hybrid, whose embedding has no pixel filters: its filter panels say so).
    """

    def __init__(self, run_folder: str | Path, k: int = 28):
        from ..training import inside

        self.folder = Path(run_folder)
        self.views, self.tensors, recorded = inside.load(self.folder)
        if not self.views:
            raise ValueError(f"{self.folder} holds no inside views (inside.jsonl) and no finished ViT: train a ViT "
                             "into it with inside views on (the default)")
        self.note = W.HTML("" if recorded else "<i>This run recorded no inside views (it predates them, or ran "
                           "with them off): only its final model is shown. Train it again into a new folder to "
                           "see every epoch.</i>")
        self.k = k
        epochs = [v.epoch for v in self.views]
        self.epoch = W.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                       continuous_update=False, style=STYLE)
        self.filters, self.variance, self.positions, self.distance, self.timeline = (
            go.FigureWidget() for _ in range(5))
        self.epoch.observe(lambda change: self.show_epoch(change["new"]), names="value")
        super().__init__([self.epoch, self.note, side_by_side([self.filters, self.variance]),
                          side_by_side([self.positions, self.distance]), self.timeline])
        self.show_epoch(epochs[-1])

    def show_epoch(self, epoch: int) -> None:
        """Redraw every panel for ``epoch`` (one of the recorded epochs)."""
        from ..training import inside

        self.view = next(v for v in self.views if v.epoch == epoch)
        if self.epoch.value != epoch:
            self.epoch.value = epoch  # observed: comes back here once with the same epoch
            return
        stand_in = inside.stored_model(self.view, self.tensors)
        self.sim = metrics.position_similarity(stand_in)  # (rows, cols, rows, cols)
        name = f"{self.folder.name.removesuffix('.inside')}, epoch {epoch}"  # a zoo entry's folder: its name
        if self.view.filter_k:
            w = stand_in.patch_embed.proj.weight
            components, self.ratio = metrics.embedding_filters(stand_in, k=min(self.k, w.shape[0], w[0].numel()))
            show_figure(self.filters, figures.embedding_filters_figure(components, self.ratio, title=f"{name}: filters"))
            show_figure(self.variance, figures.explained_variance_figure(self.ratio))
        else:  # a hybrid: its first layer is a CNN, its embedding projects CNN features
            self.ratio = None
            for widget in (self.filters, self.variance):
                show_figure(widget, figures.note_figure(
                    f"{name}: a hybrid ViT has no patch-embedding filters",
                    "its embedding projects 1x1 patches of a CNN's feature map, not pixels"))
        show_figure(self.positions, figures.position_similarity_figure(self.sim, title=f"{name}: position embeddings"))
        show_figure(self.distance, figures.attention_distance_figure(
            torch.tensor(self.view.distance), uniform=self.view.uniform,
            title=f"{name}: mean attention distance ({self.view.images} probe images)"))
        show_figure(self.timeline, figures.inside_views_figure(self.views, epoch=epoch))


class RecipesExplorer(W.VBox):
    """The arms of a recipe comparison side by side at any recorded epoch (e.g. with and without CutMix).

    Reads a comparison folder (:func:`vitlab.training.recipes.read`, default the committed locality
    experiment). The epoch slider redraws each arm's attention distance per head against
    depth (every seed) and the readout for that epoch; the timeline below shows the lowest
    layer's most local head and the test accuracy of every run against epoch, marking the
    epoch shown.

    Attributes: ``epoch`` (slider), ``distance``, ``timeline`` (FigureWidgets), ``readout``
    (HTML), ``comparison`` (the :class:`~vitlab.records.Recipes`), ``measured`` (the
    :class:`~vitlab.views.readouts.RecipesReadout` shown).
    """

    def __init__(self, folder: str | Path | None = None):
        from ..training import recipes

        self.comparison = recipes.read(folder or recipes.LOCALITY)
        epochs = self.comparison.epochs
        self.epoch = W.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                       continuous_update=False, style=STYLE)
        self.distance, self.timeline = go.FigureWidget(), go.FigureWidget()
        self.readout = W.HTML()
        self.epoch.observe(lambda change: self.show_epoch(change["new"]), names="value")
        super().__init__([self.epoch, self.distance, self.readout, self.timeline])
        self.show_epoch(epochs[-1])

    def show_epoch(self, epoch: int) -> None:
        """Redraw the arms and the readout at ``epoch`` (one every run recorded)."""
        if self.epoch.value != epoch:
            self.epoch.value = epoch  # observed: comes back here once with the same epoch
            return
        self.measured = readouts.recipes(self.comparison, epoch)
        show_figure(self.distance, figures.recipes_figure(self.comparison, epoch))
        show_figure(self.timeline, figures.recipes_timeline_figure(self.comparison, epoch))
        self.readout.value = self.measured.html()
