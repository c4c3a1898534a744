"""Interactive views of Fig. 6/7 (drawn with the figures and readouts notebook cells call) and live training curves."""
from __future__ import annotations

import sys
import warnings
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from .. import data
from ..analysis import attention_maps
from ..analysis.capture import capture
from ..analysis.distance import DistanceResult, distance_analysis
from ..analysis.filters import FiltersResult, components, filters_analysis
from ..analysis.metrics import is_hybrid
from ..analysis.positions import PositionResult, position_analysis
from ..analysis.references import INIT_SEEDS
from ..analysis.representations import model_family
from ..analysis.rollout import RolloutResult, rollout_analysis
from ..settings import quick_or
from ..training import zoo
from ..training.loop import train
from ..training.objectives import mixing
from ..training.run_folder import Interrupted, read_metrics
from . import figures, readouts
from .controls import (STYLE, DoesNotApply, Explorer, PatchPicker, Recent, Spec, as_spec, cached_model, coloured,
                       figure_view, fit_width, load_note, model_key, show_figure, side_by_side, spec_label)
from .image_sources import ImageSource, upload_box, uploaded


def _menu(models: Sequence[Spec] | None, family: str | tuple[str, ...]) -> list[Spec]:
    """The model menu: ``models`` as given, else every model of ``family`` that loads offline."""
    return list(models) if models is not None else zoo.available(family=family)


def _refuse_resnet(model: nn.Module, what: str) -> None:
    if model_family(model) == "resnet":
        raise DoesNotApply(f"{what} needs a ViT or hybrid; a ResNet has no tokens (pick a ViT)")


class PositionEmbeddingExplorer(Explorer):
    """Fig. 7 (center) of the model picked, against random init (seeds ``SEEDS``); click a tile to enlarge it.
    ``model=`` shows a model of your own: a spec string or a ViT from code."""
    n_figures, SEEDS = 2, INIT_SEEDS

    def __init__(self, models: Sequence[Spec] | None = None, initial: Spec | None = None,
                 model: Spec | nn.Module | None = None, static: bool | None = None):
        super().__init__(_menu(models, ("vit", "hybrid")), initial, model=model, static=static)
        self.selected = (0, 0)
        self._results, self.readout = Recent(), W.HTML()
        self.mosaic, self.detail = self.plots
        self.picker = PatchPicker(self.show_patch) if self.static else None  # the click, on the static path
        hint = self.hint("Click a tile to see that patch's similarity map large.",
                         "Pick a patch's row and column to see its similarity map large.")
        self._build([[self.model], hint, *([self.picker] if self.picker else []), side_by_side(self.plots),
                     self.readout])
        self.click(0, 0, self._clicked)

    @property
    def sim(self) -> torch.Tensor:
        return self.result.sim

    def compute(self) -> PositionResult:
        model = cached_model(self.model.value)
        _refuse_resnet(model, "position similarity")
        result = self._results.keep(model_key(self.model.value), lambda: position_analysis(model, self.SEEDS))
        self.selected = tuple(min(s, n - 1) for s, n in zip(self.selected, result.sim.shape[:2]))
        if self.picker is not None:
            self.picker.fit(result.sim.shape[:2], self.selected)
        return result

    def figures(self, result: PositionResult) -> list[go.Figure]:
        self.readout.value = readouts.readout(result).html()
        return [figures.position_similarity_figure(result, title=self.model.label),
                figures.patch_similarity_figure(result, *self.selected)]

    def _clicked(self, trace, points, state) -> None:
        if points.xs:
            tile = figures.mosaic_tile(self.sim.shape, points.xs[0], points.ys[0])
            if tile is not None:
                self.show_patch(*tile)

    def show_patch(self, row: int, col: int) -> None:
        """Show patch (row, col)'s similarity map (0-based) in the detail figure."""
        self.selected = (row, col)
        self.refresh()


def position_embedding_explorer(models: Sequence[Spec] | None = None, initial: Spec | None = None,
                                model: Spec | nn.Module | None = None,
                                static: bool | None = None) -> PositionEmbeddingExplorer:
    """Dropdown of ``models`` with the Fig. 7 (center) mosaic and a clicked-patch view."""
    return PositionEmbeddingExplorer(models, initial, model=model, static=static)


class EmbeddingFiltersExplorer(Explorer):
    """Fig. 7 (left): principal components of a model's patch-embedding filters, against random init (``SEEDS``)."""
    n_figures, SEEDS = 2, INIT_SEEDS

    def __init__(self, models: Sequence[Spec] | None = None, initial: Spec | None = None, k: int = 28,
                 model: Spec | nn.Module | None = None, static: bool | None = None):
        super().__init__(_menu(models, "vit"), initial, model=model, static=static)
        self.components = W.IntSlider(value=k, min=1, max=64, description="components", continuous_update=False,
                                      style=STYLE)
        self._results, self.readout = Recent(), W.HTML()
        self.filters, self.variance = self.plots
        self._build([[self.model, self.components], side_by_side(self.plots), self.readout], [self.components])

    def compute(self) -> FiltersResult:
        model = cached_model(self.model.value)
        _refuse_resnet(model, "Fig. 7 (left)")
        if is_hybrid(model):
            raise DoesNotApply("a hybrid has no patch-embedding filters to show: its tokens come from a CNN's "
                               "feature map, not from pixels (pick a ViT)")
        with self.hold():  # a smaller maximum may lower the value: no second redraw
            self.components.max = components(model)
        k = self.components.value
        return self._results.keep((model_key(self.model.value), k), lambda: filters_analysis(model, k, self.SEEDS))

    def figures(self, result: FiltersResult) -> list[go.Figure]:
        self.readout.value = readouts.readout(result).html()
        return [figures.embedding_filters_figure(result, title=f"{self.model.label}: first {result.k} principal "
                                                                "components"),
                figures.explained_variance_figure(result)]


def _distance_title(name: str, result: DistanceResult, images: str, convention: str | None = None) -> str:
    """Fig. 7 (right)'s title: the model, the convention, the images and the reference numbers drawn."""
    text = f"{name}: mean attention distance" + (f" ({convention})" if convention else "") + f", {images}; "
    text += f"uniform {result.uniform:.1f} px"
    if convention and result.random_init is not None:
        r = result.random_init
        text += (f", random init {float(r.min()):.1f}-{float(r.max()):.1f} px ({len(r)} seeds, "
                 f"{result.random_images} images)")
    return text


class _OwnImages:
    """An explorer part: the images shown, with an upload button that replaces them (``images``: a uint8 batch, a
    folder, a file, a list of files)."""
    def _take_images(self, images: Any, names: Sequence[str] | None, described: str | None) -> None:
        """Show ``images`` (None: the explorer's default ones); ones that cannot be read are refused in the status
        line, in one line, and the default images shown instead."""
        self.shown_images = None
        if isinstance(images, ImageSource):
            self.shown_images = images
        elif images is not None:
            try:
                self.shown_images = ImageSource(images, names, described)
            except (OSError, TypeError, ValueError) as err:  # no images, a non-image, a broken or tiny file
                self.refused.append(f"{err} (showing the default images instead)")
        if self.shown_images is None:
            self.shown_images = self._default_images()
        self.upload = upload_box()
        self.upload.observe(self._uploaded, names="value")

    def _uploaded(self, change) -> None:
        if not change["new"]:
            return
        files = uploaded(change["new"])
        try:
            source = ImageSource(files, described=f"your {len(files)} uploaded image{'s' * (len(files) > 1)}")
        except Exception as err:  # a non-image or a broken file: one line, the images shown stay
            self.status.value = coloured(f"{type(err).__name__}: {err}", "#b00")
            return
        self.show_images(source)

    def show_images(self, images: Any) -> None:
        """Show these images (a uint8 batch, a folder, file, list or :class:`ImageSource`) and redraw."""
        self.shown_images = images if isinstance(images, ImageSource) else ImageSource(images)
        self._fit_images()
        self.refresh()

    def notes(self) -> list[str]:
        model = cached_model(self.model.value)
        return [*super().notes(), self.shown_images.note(model, self._shown_count())]

    def _shown_count(self) -> int | None:
        """How many of the images the figures show (None: all)."""
        return None


class AttentionDistanceExplorer(_OwnImages, Explorer):
    """Fig. 7 (right): attention distance per head against depth, streamed over images, beside a CNN ``reference``
    (drawn for models of the same input size). ``images`` may also be a folder, file or list; or upload some."""
    #: Label -> ``renormalize``; the paper's convention first (the default).
    CONVENTIONS = {"paper's: raw weights over patches": False, "renormalised over patches": True}
    SEEDS = INIT_SEEDS
    live, slow = False, True

    def __init__(self, models: Sequence[Spec] | None = None, images: Any = None, initial: Spec | None = None,
                 counts: Sequence[int] = (16, 128, 512, 1000, 10000), default: int = 128,
                 reference: str | None = None, source: str = "", model: Spec | nn.Module | None = None,
                 static: bool | None = None):
        super().__init__(_menu(models, ("vit", "hybrid")), initial, model=model, static=static)
        self.source, self.reference, self.counts, self.default = source, reference, counts, default
        self.reference_images = quick_or(256, 16)  # random-init models are alike across images
        self._results, self.skipped = Recent(), ""
        self._take_images(images, None, None)
        self.images = W.Dropdown(description="images", style=STYLE, layout=W.Layout(width="22ch"))
        self._set_counts()
        self.convention = W.ToggleButtons(options=list(self.CONVENTIONS), description="convention",
                                          style=dict(STYLE, button_width="auto"))
        self.figure, self.readout = self.plots[0], W.HTML()
        self._build([[self.model, self.images, self.convention, self.run, self.upload], self.figure, self.readout],
                    [self.images, self.convention])

    def _default_images(self) -> ImageSource:
        images, _, self.source = data.analysis_images()
        return ImageSource(images)

    def _set_counts(self) -> None:
        n = len(self.shown_images)
        counts = sorted({c for c in self.counts if c <= n} | {min(self.default, n)})
        with self.hold():
            self.images.options, self.images.value = counts, min(self.default, n)

    def _fit_images(self) -> None:
        self.source = ""
        self._set_counts()

    def compute(self) -> DistanceResult:
        model, n = cached_model(self.model.value), self.images.value
        _refuse_resnet(model, "attention distance")
        renormalize = self.CONVENTIONS[self.convention.value]
        cnn = None if self.reference is None else cached_model(self.reference)
        self.skipped = ""
        if cnn is not None and cnn.pretrained_cfg["input_size"] != model.pretrained_cfg["input_size"]:
            self.skipped = (f"{self.reference}'s receptive fields are not drawn: it takes "
                            f"{cnn.pretrained_cfg['input_size'][-1]} px images, this model "
                            f"{model.pretrained_cfg['input_size'][-1]} px")
            cnn = None
        images = self.shown_images
        return self._results.keep((model_key(self.model.value), id(images), n, renormalize), lambda: distance_analysis(
            model, images.for_model(model, n, resized=False), renormalize, self.SEEDS,
            min(n, self.reference_images), cnn, progress=True))

    def notes(self) -> list[str]:
        return [*super().notes(), self.skipped]

    def _shown_count(self) -> int:
        return self.images.value

    def describe(self, result: DistanceResult) -> str:
        if self.shown_images.files is not None:
            return f"{result.images} of {self.shown_images.described}"
        return data.describe_images(result.images, self.source)

    def figures(self, result: DistanceResult) -> list[go.Figure]:
        name = self.model.label
        title = _distance_title(name, result, self.describe(result), self.convention.value)
        self.readout.value = readouts.readout(result).html()
        cnn = self.reference if self.reference and not self.skipped else ""
        return [figures.attention_distance_figure(result, title, name=name, cnn=cnn)]


def attention_distance_view(model: Spec | nn.Module, images: torch.Tensor, reference: str | None = None,
                            source: str = "", renormalize: bool = False) -> tuple[go.Figure, readouts.DistanceReadout]:
    """Fig. 7 (right) for ``model`` on uint8 ``images`` (N, 3, H, W) and a CNN ``reference``: ``(figure, readout)``."""
    spec = as_spec(model)
    net, name = cached_model(spec), spec_label(spec)
    if load_note(spec):  # e.g. random weights: cached_model keeps it for status lines, a notebook shows it
        warnings.warn(load_note(spec), stacklevel=2)
    cnn = None if reference is None else cached_model(reference)
    result = distance_analysis(net, images, renormalize, cnn=cnn, progress=True)
    title = _distance_title(name, result, data.describe_images(result.images, source))
    return figures.attention_distance_figure(result, title, name=name, cnn=reference or ""), readouts.readout(result)


#: One image as a model saw it: the resized image, each block's attention (heads, N, N), grid and prefix tokens.
_Seen = namedtuple("_Seen", ["image", "attn", "grid", "prefix", "pooled"])  # pooled: the prediction averages patches


class AttentionMapsExplorer(_OwnImages, Explorer):
    """Fig. 6: attention rollout over an image (click a patch to see where it attends), and each head's attention.
    ``images`` may be a uint8 batch (with ``names``), a folder, file or list; or upload some."""
    n_figures = 3

    def __init__(self, models: Sequence[Spec] | None = None, images: Any = None, names: Sequence[str] | None = None,
                 initial: Spec | None = None, described: str | None = None, model: Spec | nn.Module | None = None,
                 static: bool | None = None):
        super().__init__(_menu(models, ("vit", "hybrid")), initial, model=model, static=static)
        self._take_images(images, names, described or (f"the {len(images)} images of the image list"
                                                       if isinstance(images, torch.Tensor) else None))
        self.image = W.Dropdown(value=None, description="image", style=STYLE)
        self._set_names()
        self.layer = W.IntSlider(value=1, min=1, max=1, description="layer", continuous_update=False, style=STYLE)
        self.head = W.Dropdown(options=[("mean of heads", -1)], value=-1, description="head", style=STYLE)
        self.fusion = W.Dropdown(options=["mean", "max", "min"], value="mean", description="head fusion", style=STYLE)
        self.discard = W.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="discard ratio",
                                     continuous_update=False, style=STYLE)
        self.selected = (0, 0)
        self._seen, self._rollouts, self.readout = Recent(), Recent(), W.HTML()
        self.rollout, self.patch, self.heads = self.plots
        self.picker = PatchPicker(self.select) if self.static else None  # the click, on the static path
        hint = self.hint("Click a patch of the rollout map to see where it attends (next figure).",
                         "Pick a patch's row and column to see where it attends (next figure).")
        self._build([[self.model, self.image, self.upload], [self.fusion, self.discard, self.layer, self.head],
                     hint, *([self.picker] if self.picker else []), side_by_side(self.plots[:2]), self.readout,
                     self.heads],
                    [self.image, self.layer, self.head, self.fusion, self.discard])
        self.click(0, -1, self._clicked)

    @staticmethod
    def _default_images() -> ImageSource:
        return ImageSource(*data.gallery(), described=data.describe_gallery())

    @property
    def names(self) -> list[str]:
        return self.shown_images.names

    def _set_names(self) -> None:
        with self.hold():
            self.image.options = [(n, i) for i, n in enumerate(self.names)]
            self.image.value = 0
            self.image.layout = fit_width(self.names, "image")

    def _fit_images(self) -> None:
        self._set_names()

    def _see(self) -> _Seen:
        def make() -> _Seen:
            model = cached_model(self.model.value)
            _refuse_resnet(model, "attention maps")
            img = self.shown_images.for_model(model)[self.image.value : self.image.value + 1]  # (1, 3, H, W)
            cap = capture(model, img)
            return _Seen(img[0], [cap.attn[i][0] for i in cap.attn], cap.grid, cap.num_prefix_tokens,
                         cap.pool == "avg" or not cap.class_token)
        return self._seen.keep((model_key(self.model.value), id(self.shown_images), self.image.value), make)
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
        if self.picker is not None:
            self.picker.fit(seen.grid, self.selected)
        return seen

    def figures(self, seen: _Seen) -> list[go.Figure]:
        name, (r, c) = self.names[self.image.value], self.selected
        result = self._rollout_result()
        head = None if self.head.value < 0 else self.head.value
        query = attention_maps.query_attention(seen.attn[self.layer.value - 1], seen.grid, seen.prefix, self.selected,
                                               head)
        where = f"layer {self.layer.value}, " + ("mean of heads" if head is None else f"head {head + 1}")
        self.readout.value = readouts.readout(result).html()
        return [
            figures.attention_overlay_figure(seen.image, result.maps[self.image.value],
                                             title=f"attention rollout: {name}", marker=self.selected, scale="rollout"),
            figures.attention_overlay_figure(seen.image, query, title=f"patch ({r + 1}, {c + 1}) attends: {where}",
                                             marker=self.selected),
            self._heads_figure(seen, f"{self.model.label}, {name}"),
        ]

    @staticmethod
    def _heads_figure(seen: _Seen, name: str) -> go.Figure:
        """Each layer's and head's attention from what the prediction reads: the class token, or the mean patch."""
        if seen.pooled:
            maps, said = attention_maps.pooled_attention(seen.attn, seen.grid, seen.prefix), "mean patch-token"
        else:
            maps, said = attention_maps.class_token_attention(seen.attn, seen.grid, seen.prefix), "class-token"
        return figures.head_attention_figure(maps, title=f"{said} attention per layer and head, {name}")

    def _clicked(self, trace, points, state) -> None:
        if points.point_inds:
            self.select(*points.point_inds[0])

    def select(self, row: int, col: int) -> None:
        """Show where patch (row, col) attends (0-based) and outline it."""
        self.selected = (row, col)
        self.refresh()

    def _rollout_result(self) -> RolloutResult:
        """:func:`~vitlab.analysis.rollout.rollout_analysis` of all the images, for the settings shown (kept)."""
        def make() -> RolloutResult:
            model = cached_model(self.model.value)
            return rollout_analysis(model, self.shown_images.for_model(model), self.fusion.value, self.discard.value,
                                    described=self.shown_images.described)
        key = (model_key(self.model.value), id(self.shown_images), self.fusion.value, self.discard.value)
        return self._rollouts.keep(key, make)


class TrainingMonitor(W.VBox):
    """Live curves of :func:`~vitlab.views.figures.training_curves_figure`; pass :meth:`update` as ``on_epoch``."""
    def __init__(self, title: str = "Training", records: list[dict] | None = None, mixed: bool = False,
                 objective: str = "classify", static: bool | None = None):
        self.records: list[dict] = list(records or [])
        self.title, self.mixed, self.objective = title, mixed, objective
        self.figure = figure_view(static)
        show_figure(self.figure, self._figure())
        super().__init__([self.figure])

    def update(self, record: dict) -> None:
        """Add one epoch's record (replacing a record of the same or a later epoch) and redraw."""
        self.records = [r for r in self.records if r["epoch"] < record["epoch"]] + [record]
        show_figure(self.figure, self._figure())

    def _figure(self) -> go.Figure:
        return figures.training_curves_figure(self.records, self.title, self.mixed, self.objective)


def train_with_curves(config, out: str | Path, title: str | None = None, static: bool | None = None):
    """Show live curves while training ``config`` (a :class:`~vitlab.training.config.TrainConfig`) into ``out``.

    Returns the :class:`~vitlab.training.loop.TrainResult`; an interrupted run (the kernel's interrupt) prints
    one line saying where it stopped and that running the cell again resumes it, as ``python -m vitlab train``
    does, and returns None instead of showing a traceback.
    """
    from IPython.display import display
    # A run resumed (or already finished) in ``out`` shows the epochs it has recorded so far.
    what = "Pre-training (masked patch prediction)" if config.objective == "mpp" else "Training"
    monitor = TrainingMonitor(title or f"{what} {config.model} ({out})", read_metrics(out), mixed=mixing(config),
                              objective=config.objective, static=static)
    display(monitor)
    try:
        return train(config, out, progress=True, on_epoch=monitor.update)
    except Interrupted as err:
        print(err, file=sys.stderr, flush=True)
        return None
