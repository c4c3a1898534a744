"""Interactive views: ipywidgets wiring around :mod:`vitlab.plots` figures.

Figures are plotly ``FigureWidget``s updated in place, so changing a widget never
re-runs a cell. Every view returns its root widget; its parts are reachable as
attributes for tests and for users who want to rearrange them.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import ipywidgets as W
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from . import metrics, plots
from .capture import capture, head_statistics
from .compare import cka_matrix, fewshot_probes
from .models import load_model
from .sweep import fewshot_shots


@lru_cache(maxsize=8)
def _model(spec: str):
    """Models the views have loaded, by spec (views switch back and forth between a few)."""
    return load_model(spec, device="cpu")


def _position_similarity(spec: str) -> torch.Tensor:
    return metrics.position_similarity(_model(spec))


class PositionEmbeddingExplorer(W.VBox):
    """Fig. 7 (center) for a model picked from a dropdown; click a tile to enlarge it.

    Attributes:
        model: the model dropdown.
        mosaic: FigureWidget with one similarity tile per patch.
        detail: FigureWidget with the clicked patch's similarity map.
        status: a label for errors (e.g. weights that cannot be loaded offline).
    """

    def __init__(self, models: Sequence[str], initial: str | None = None):
        if not models:
            raise ValueError("give at least one model spec (a zoo name, timm name or path)")
        initial = initial if initial is not None else models[0]
        options = list(dict.fromkeys([initial, *models]))
        self.model = W.Dropdown(options=options, value=initial, description="model")
        self.status = W.HTML()
        self.sim = _position_similarity(initial)
        self.mosaic = go.FigureWidget(plots.position_similarity_figure(self.sim, title=initial))
        self.detail = go.FigureWidget(plots.patch_similarity_figure(self.sim, 0, 0))
        self.mosaic.data[0].on_click(self._on_click)
        self.model.observe(self._on_model, names="value")
        hint = W.HTML("<i>Click a tile to see that patch's similarity map large.</i>")
        super().__init__([W.HBox([self.model, self.status]), hint, W.HBox([self.mosaic, self.detail])])

    def _on_model(self, change) -> None:
        try:
            sim = _position_similarity(change["new"])
        except Exception as err:  # show loading errors beside the dropdown, keep the old figure
            self.status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"
            return
        self.status.value = ""
        self.sim = sim
        fresh = plots.position_similarity_figure(sim, title=change["new"])
        with self.mosaic.batch_update():
            self.mosaic.data[0].z = fresh.data[0].z
            self.mosaic.data[0].customdata = fresh.data[0].customdata
            self.mosaic.layout.title.text = change["new"]
            self.mosaic.layout.xaxis.update(fresh.layout.xaxis)
            self.mosaic.layout.yaxis.update(fresh.layout.yaxis)
        self.show_patch(0, 0)

    def _on_click(self, trace, points, state) -> None:
        if points.xs:
            tile = plots.mosaic_tile(self.sim.shape, points.xs[0], points.ys[0])
            if tile is not None:
                self.show_patch(*tile)

    def show_patch(self, row: int, col: int) -> None:
        """Show patch (row, col)'s similarity map (0-based) in the detail figure."""
        fresh = plots.patch_similarity_figure(self.sim, row, col)
        with self.detail.batch_update():
            self.detail.data[0].update(z=fresh.data[0].z, x=fresh.data[0].x, y=fresh.data[0].y)
            self.detail.data[1].update(x=fresh.data[1].x, y=fresh.data[1].y)
            self.detail.layout.title.text = fresh.layout.title.text


def position_embedding_explorer(models: Sequence[str], initial: str | None = None) -> PositionEmbeddingExplorer:
    """Dropdown of ``models`` with the Fig. 7 (center) mosaic and a clicked-patch view."""
    return PositionEmbeddingExplorer(models, initial)


def _replace(widget: go.FigureWidget, fresh: go.Figure) -> None:
    """Swap a FigureWidget's traces and layout for those of ``fresh``, in one update."""
    with widget.batch_update():
        widget.data = []
        for trace in fresh.data:
            widget.add_trace(trace)
        widget.layout.update(fresh.layout)


def _error_html(err: Exception) -> str:
    return f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"


class EmbeddingFiltersExplorer(W.VBox):
    """Fig. 7 (left): principal components of a model's patch-embedding filters.

    Attributes: ``model`` (dropdown), ``components`` (slider), ``filters`` and ``variance``
    (FigureWidgets), ``status`` (errors).
    """

    def __init__(self, models: Sequence[str], initial: str | None = None, k: int = 28):
        initial = initial if initial is not None else models[0]
        self.model = W.Dropdown(options=list(dict.fromkeys([initial, *models])), value=initial, description="model")
        self.components = W.IntSlider(value=k, min=1, max=64, description="components", continuous_update=False)
        self.status = W.HTML()
        filters, ratio = self._compute(initial, k)
        self.filters = go.FigureWidget(plots.embedding_filters_figure(filters, ratio, title=initial))
        self.variance = go.FigureWidget(plots.explained_variance_figure(ratio))
        self.model.observe(self._update, names="value")
        self.components.observe(self._update, names="value")
        super().__init__([W.HBox([self.model, self.components, self.status]), W.HBox([self.filters, self.variance])])

    def _compute(self, spec: str, k: int):
        weight = _model(spec).patch_embed.proj.weight
        self.components.max = min(weight.shape[0], weight[0].numel())
        return metrics.embedding_filters(_model(spec), k=min(k, self.components.max))

    def _update(self, _change=None) -> None:
        try:
            filters, ratio = self._compute(self.model.value, self.components.value)
        except Exception as err:
            self.status.value = _error_html(err)
            return
        self.status.value = ""
        fresh_f = plots.embedding_filters_figure(filters, ratio, title=self.model.value)
        fresh_v = plots.explained_variance_figure(ratio)
        with self.filters.batch_update():
            self.filters.data[0].update(z=fresh_f.data[0].z, hovertext=fresh_f.data[0].hovertext)
            self.filters.layout.update(title=fresh_f.layout.title, width=fresh_f.layout.width,
                                       height=fresh_f.layout.height)
        with self.variance.batch_update():
            for old, new in zip(self.variance.data, fresh_v.data):
                old.update(x=new.x, y=new.y)


class AttentionDistanceExplorer(W.VBox):
    """Fig. 7 (right): mean attention distance per head against depth, streamed over images.

    Attributes: ``model``, ``images`` (number of test images), ``convention`` (how
    attention given to the class token is treated), ``run`` (button), ``figure``,
    ``progress`` (an output area with the progress bar), ``status``.
    """

    CONVENTIONS = {"renormalise over patches": True, "keep class-token share": False}

    def __init__(self, models: Sequence[str], images: torch.Tensor, initial: str | None = None,
                 counts: Sequence[int] = (16, 128, 512, 1000, 10000), default: int = 128,
                 reference: str | None = None):
        initial = initial if initial is not None else models[0]
        self.data = images
        counts = sorted({c for c in counts if c <= len(images)} | {min(default, len(images))})
        self.model = W.Dropdown(options=list(dict.fromkeys([initial, *models])), value=initial, description="model")
        self.images = W.Dropdown(options=counts, value=min(default, len(images)), description="images")
        self.convention = W.ToggleButtons(options=list(self.CONVENTIONS), description="class token")
        self.run = W.Button(description="Compute", button_style="primary")
        self.progress = W.Output()
        self.status = W.HTML()
        self.reference = {}
        if reference is not None:
            fields = metrics.receptive_fields(_model(reference))
            self.reference = {f"{reference} receptive field": ([i for i in range(len(fields))], [r for _, r in fields])}
        self.figure = go.FigureWidget(plots.attention_distance_figure(torch.zeros(1, 1), reference=self.reference))
        self.run.on_click(lambda _: self.compute())
        super().__init__([W.HBox([self.model, self.images]), W.HBox([self.convention, self.run, self.status]),
                          self.progress, self.figure])
        self.compute()

    def compute(self) -> None:
        """Stream the chosen images through the chosen model and redraw the figure."""
        self.status.value = "computing..."
        try:
            model = _model(self.model.value)
            size = model.pretrained_cfg["input_size"][1:]
            with self.progress:
                stats = head_statistics(model, self.data[: self.images.value], batch_size=64,
                                        renormalize=self.CONVENTIONS[self.convention.value], progress=True)
            self.progress.clear_output()
        except Exception as err:
            self.status.value = _error_html(err)
            return
        self.status.value = f"{self.images.value} images"
        fresh = plots.attention_distance_figure(
            stats["distance"], stats["layers"], reference=self.reference,
            max_distance=float((size[0] ** 2 + size[1] ** 2) ** 0.5) / 2,
            title=f"{self.model.value}: mean attention distance ({self.images.value} images)")
        _replace(self.figure, fresh)


class AttentionMapsExplorer(W.VBox):
    """Fig. 6: attention rollout over an image, and each layer's and head's attention.

    Click a patch of the left image to see where that patch attends at the chosen layer
    and head (right image). Attributes: ``model``, ``image``, ``layer``, ``head``,
    ``fusion``, ``discard`` (controls); ``rollout``, ``patch``, ``heads`` (FigureWidgets).
    """

    def __init__(self, models: Sequence[str], images: torch.Tensor, names: Sequence[str],
                 initial: str | None = None):
        initial = initial if initial is not None else models[0]
        self.images, self.names = images, list(names)
        self.model = W.Dropdown(options=list(dict.fromkeys([initial, *models])), value=initial, description="model")
        self.image = W.Dropdown(options=[(n, i) for i, n in enumerate(self.names)], value=0, description="image")
        self.layer = W.IntSlider(value=1, min=1, max=1, description="layer", continuous_update=False)
        self.head = W.Dropdown(options=[("mean of heads", -1)], value=-1, description="head")
        self.fusion = W.Dropdown(options=["mean", "max", "min"], value="mean", description="head fusion")
        self.discard = W.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, description="discard",
                                     continuous_update=False)
        self.status = W.HTML()
        self.selected = (0, 0)
        self._capture()
        self.rollout = go.FigureWidget(self._rollout_figure())
        self.patch = go.FigureWidget(self._patch_figure())
        self.heads = go.FigureWidget(self._heads_figure())
        self.rollout.data[1].on_click(self._on_click)
        for control in (self.model, self.image):
            control.observe(self._on_input, names="value")
        for control in (self.fusion, self.discard):
            control.observe(lambda _: self._redraw(self.rollout, self._rollout_figure()), names="value")
        for control in (self.layer, self.head):
            control.observe(lambda _: self._redraw(self.patch, self._patch_figure()), names="value")
        super().__init__([
            W.HBox([self.model, self.image, self.status]),
            W.HBox([self.fusion, self.discard]), W.HBox([self.layer, self.head]),
            W.HTML("<i>Click a patch on the left to see where it attends (right).</i>"),
            W.HBox([self.rollout, self.patch]), self.heads,
        ])

    def _capture(self) -> None:
        model = _model(self.model.value)
        size = tuple(model.pretrained_cfg["input_size"][1:])
        img = self.images[self.image.value : self.image.value + 1]
        if tuple(img.shape[-2:]) != size:
            img = F.interpolate(img.float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255).byte()
        self.shown = img[0]
        self.cap = capture(model, img)
        self.attn = [self.cap.attn[i] for i in self.cap.attn]  # (1, heads, N, N) per layer
        heads = self.attn[0].shape[1]
        self.layer.max = len(self.attn)
        self.layer.value = min(self.layer.value, self.layer.max)
        self.head.options = [("mean of heads", -1)] + [(f"head {h + 1}", h) for h in range(heads)]
        self.selected = (min(self.selected[0], self.cap.grid[0] - 1), min(self.selected[1], self.cap.grid[1] - 1))

    def _rollout_figure(self) -> go.Figure:
        mask = metrics.attention_rollout(self.attn, self.cap.num_prefix_tokens, self.fusion.value,
                                         self.discard.value)[0].reshape(self.cap.grid)
        return plots.attention_overlay_figure(self.shown, mask, title="attention rollout", marker=self.selected)

    def _patch_figure(self) -> go.Figure:
        a = self.attn[self.layer.value - 1][0]  # (heads, N, N)
        a = a.mean(0) if self.head.value < 0 else a[self.head.value]
        p = self.cap.num_prefix_tokens
        row = a[p + self.selected[0] * self.cap.grid[1] + self.selected[1], p:].reshape(self.cap.grid)
        head = "mean of heads" if self.head.value < 0 else f"head {self.head.value + 1}"
        title = f"patch ({self.selected[0] + 1}, {self.selected[1] + 1}) attends: layer {self.layer.value}, {head}"
        return plots.attention_overlay_figure(self.shown, row, title=title, marker=self.selected)

    def _heads_figure(self) -> go.Figure:
        p = self.cap.num_prefix_tokens
        maps = torch.stack([a[0, :, 0, p:] for a in self.attn]).reshape(len(self.attn), -1, *self.cap.grid)
        return plots.head_attention_figure(maps, title=f"class-token attention per layer and head, {self.names[self.image.value]}")

    @staticmethod
    def _redraw(widget: go.FigureWidget, fresh: go.Figure) -> None:
        with widget.batch_update():
            for old, new in zip(widget.data, fresh.data):
                old.update(new.to_plotly_json())
            widget.layout.shapes = fresh.layout.shapes
            widget.layout.title = fresh.layout.title

    def _on_input(self, _change) -> None:
        try:
            self._capture()
        except Exception as err:
            self.status.value = _error_html(err)
            return
        self.status.value = ""
        self._redraw(self.rollout, self._rollout_figure())
        self._redraw(self.patch, self._patch_figure())
        fresh = self._heads_figure()
        with self.heads.batch_update():
            self.heads.data[0].update(fresh.data[0].to_plotly_json())
            self.heads.layout.update(fresh.layout)

    def _on_click(self, trace, points, state) -> None:
        if points.point_inds:
            self.select(*points.point_inds[0])

    def select(self, row: int, col: int) -> None:
        """Show where patch (row, col) attends (0-based) and outline it."""
        self.selected = (row, col)
        self._redraw(self.rollout, self._rollout_figure())
        self._redraw(self.patch, self._patch_figure())


class TrainingMonitor(W.VBox):
    """Live loss and accuracy curves; pass :meth:`update` as ``train(..., on_epoch=...)``."""

    def __init__(self, title: str = "Training"):
        self.records: list[dict] = []
        self.figure = go.FigureWidget(plots.training_curves_figure([], title=title))
        super().__init__([self.figure])

    def update(self, record: dict) -> None:
        """Append one epoch's record and redraw."""
        self.records.append(record)
        fresh = plots.training_curves_figure(self.records)
        with self.figure.batch_update():
            for old, new in zip(self.figure.data, fresh.data):
                old.update(x=new.x, y=new.y)


def train_with_curves(config, title: str | None = None):
    """Show live curves, train ``config`` (a :class:`vitlab.train.TrainConfig`), return the result."""
    from IPython.display import display

    from .train import train

    monitor = TrainingMonitor(title or f"Training {config.model}")
    display(monitor)
    return train(config, on_epoch=monitor.update)


# --- ViT vs ResNet --------------------------------------------------------------------


class SweepExplorer(W.VBox):
    """Accuracy against training-set size or training FLOPs, from sweep records, with a table.

    Pass :meth:`add` as ``sweep(..., on_run=...)`` to watch a sweep fill the figure in.
    Attributes: ``axis`` (toggle), ``metric`` (test accuracy or a k-shot probe of the final
    representation, where the records have them), ``models`` (multi-select), ``figure``, ``table``.
    """

    AXES = {"training images": "subset_size", "training FLOPs": "train_flops"}

    def __init__(self, records: list[dict], title: str = ""):
        self.records = list(records)
        self.title = title
        self.axis = W.ToggleButtons(options=list(self.AXES), description="x axis")
        shots = fewshot_shots(self.records)
        self.metric = W.Dropdown(options=[("test accuracy", "test_accuracy")] + [(f"{k}-shot probe", f"fewshot_{k}")
                                                                                 for k in shots], description="y axis")
        self.models = W.SelectMultiple(description="models", rows=4)
        self.figure, self.table = go.FigureWidget(), go.FigureWidget()  # drawn by _redraw below
        self._set_models()
        for control in (self.axis, self.metric, self.models):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.axis, self.metric, self.models]), self.figure, self.table])
        self._redraw()

    def _set_models(self) -> None:
        # Newly seen models are shown; those the user deselected stay hidden.
        names = sorted({r["model"] for r in self.records})
        hidden = set(self.models.options) - set(self.models.value)
        self.models.options = names
        self.models.value = tuple(n for n in names if n not in hidden)

    def _redraw(self, _change=None) -> None:
        x = self.AXES[self.axis.value]
        prefix = f"{self.title}: " if self.title else ""
        what = "training-set size" if x == "subset_size" else "training compute"
        metric = "accuracy" if self.metric.value == "test_accuracy" else self.metric.label
        _replace(self.figure, plots.sweep_figure(self.records, x, list(self.models.value),
                                                 title=f"{prefix}{metric} vs {what}", y=self.metric.value))
        _replace(self.table, plots.sweep_table([r for r in self.records if r["model"] in self.models.value]))

    def add(self, record: dict) -> None:
        """Add one run's record and redraw (once, though the model list may change too)."""
        self.records.append(record)
        self.models.unobserve(self._redraw, names="value")
        self._set_models()
        self.models.observe(self._redraw, names="value")
        self._redraw()


class ProbeExplorer(W.VBox):
    """Few-shot linear probes on every layer of several models (paper Fig. 4 style).

    Attributes: ``shots`` (toggle), ``models`` (multi-select), ``layers`` (multi-select of
    model · layer · pooling for the shots curve), ``depth`` and ``curve`` (FigureWidgets),
    ``records`` (all probe results).
    """

    def __init__(self, models: Sequence[str], shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                 test_size: int = 2000):
        self.records = [r for spec in models for r in fewshot_probes(_model(spec), shots, seeds, test_size, name=spec)]
        self.shots = W.ToggleButtons(options=list(shots), value=max(shots), description="shots")
        self.models = W.SelectMultiple(options=list(models), value=tuple(models), description="models", rows=3)
        triples = list(dict.fromkeys((r["model"], r["layer"], r["pooling"]) for r in self.records))
        last = {m: max(r["depth"] for r in self.records if r["model"] == m) for m in models}
        depth = {(r["model"], r["layer"], r["pooling"]): r["depth"] for r in self.records}
        default = [t for t in triples if depth[t] == last[t[0]]]
        self.layers = W.SelectMultiple(options=[(" · ".join(t), t) for t in triples], value=tuple(default),
                                       description="layers", rows=6)
        self.depth = go.FigureWidget(plots.probe_depth_figure(self.records, self.shots.value))
        self.curve = go.FigureWidget(plots.probe_shots_figure(self.records, default))
        for control in (self.shots, self.models, self.layers):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.shots, self.models]), self.depth, self.layers, self.curve])

    def _redraw(self, _change=None) -> None:
        mine = [r for r in self.records if r["model"] in self.models.value]
        if mine:
            _replace(self.depth, plots.probe_depth_figure(mine, self.shots.value))
        _replace(self.curve, plots.probe_shots_figure(self.records, list(self.layers.value)))


class CKAExplorer(W.VBox):
    """CKA heatmaps between every layer of two models (A x B) and of A with itself (A x A).

    Results are kept per (models, representation), so switching back is instant.
    Attributes: ``model_a``, ``model_b`` (dropdowns), ``representation`` (toggle),
    ``cross`` and ``self_similarity`` (FigureWidgets), ``status``.
    """

    def __init__(self, models: Sequence[str], images: torch.Tensor, initial: tuple[str, str] | None = None,
                 batch_size: int = 250):
        self.data, self.batch_size, self._cache = images, min(batch_size, len(images)), {}
        a, b = initial if initial is not None else (models[0], models[-1])
        self.model_a = W.Dropdown(options=list(models), value=a, description="model A")
        self.model_b = W.Dropdown(options=list(models), value=b, description="model B")
        self.representation = W.ToggleButtons(options=["full", "pooled"], description="layer output")
        self.status = W.HTML()
        self.cross = go.FigureWidget()
        self.self_similarity = go.FigureWidget()
        for control in (self.model_a, self.model_b, self.representation):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.model_a, self.model_b, self.representation, self.status]),
                          W.HBox([self.cross, self.self_similarity])])
        self._redraw()

    def compute(self, a: str, b: str, representation: str) -> tuple[torch.Tensor, list[str], list[str]]:
        """CKA between every layer of models ``a`` and ``b`` (cached)."""
        key = (a, b, representation)
        if key not in self._cache:
            model_a = _model(a)
            model_b = model_a if a == b else _model(b)
            self._cache[key] = cka_matrix(model_a, model_b, self.data, self.batch_size, representation)
        return self._cache[key]

    def _redraw(self, _change=None) -> None:
        a, b, rep = self.model_a.value, self.model_b.value, self.representation.value
        self.status.value = "computing..."
        try:
            cross, self_sim = self.compute(a, b, rep), self.compute(a, a, rep)
        except Exception as err:
            self.status.value = _error_html(err)
            return
        self.status.value = f"{len(self.data) // self.batch_size * self.batch_size} images"
        _replace(self.cross, plots.cka_figure(cross[0], cross[1], cross[2], a, b, title=f"CKA: {a} x {b}"))
        _replace(self.self_similarity, plots.cka_figure(self_sim[0], self_sim[1], self_sim[2], a, a,
                                                        title=f"CKA: {a} x {a}"))
