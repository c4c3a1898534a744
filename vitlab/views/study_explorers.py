"""Views of studies: the sweep, few-shot probes and CKA, a run's inside views across training, recipe comparisons."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch

from .. import data
from ..analysis.filters import filters_analysis
from ..analysis.positions import position_analysis
from ..analysis.representations import SHOTS
from ..records import ProbeRecord, RunRecord
from ..training import zoo
from ..training.evaluators import CKAEvaluator, CKAResult, FewshotEvaluator
from . import export, figures, intervention_figures, recipe_readouts, study_figures
from .controls import (STYLE, Explorer, cached_model, figure_view, load_note, model_dropdown, model_key, show_figure,
                       side_by_side)
from .style import layer_label


class SweepExplorer(Explorer):
    """Accuracy against training-set size or FLOPs, from sweep runs, with a table; pass :meth:`add` as ``on_run``."""
    AXES = {"training images": "subset_size", "training FLOPs": "train_flops_total"}
    n_figures = 2

    def __init__(self, records: Sequence[RunRecord], title: str = "", static: bool | None = None):
        super().__init__(static=static)
        self.records, self.title = list(records), title
        self.axis = W.ToggleButtons(options=list(self.AXES), description="x axis",
                                    style=dict(STYLE, button_width="auto"))
        self.metric = W.Dropdown(description="y axis", style=STYLE)
        self.models = W.SelectMultiple(description="models", rows=4, style=STYLE, layout=W.Layout(width="36ch"))
        self._set_options()
        self.figure, self.table = self.plots
        controls = [self.axis, self.metric, self.models]
        self._build([controls, self.figure, self.table], controls)

    def _set_options(self) -> None:
        with self.hold():
            names = sorted({r.label for r in self.records})  # runs fine-tuned from pre-trained weights apart
            hidden = set(self.models.options) - set(self.models.value)  # deselected stay hidden; new models show
            self.models.options = names
            self.models.value = tuple(n for n in names if n not in hidden)
            shots = sorted({k for r in self.records for k in r.fewshot})
            options = [("test accuracy", "test")] + [(f"{k}-shot probe", k) for k in shots]
            if list(self.metric.options) != options:
                value = self.metric.value
                self.metric.options = options
                self.metric.value = value if value in dict(options).values() else "test"

    def compute(self) -> list[RunRecord]:
        return [r for r in self.records if r.label in self.models.value]

    def figures(self, shown: list[RunRecord]) -> list[go.Figure]:
        x, shots = self.AXES[self.axis.value], (None if self.metric.value == "test" else self.metric.value)
        what = "training-set size" if x == "subset_size" else "training compute"
        metric = "accuracy" if shots is None else self.metric.label
        title = f"{self.title}: {metric} vs {what}" if self.title else f"{metric} vs {what}"
        return [study_figures.sweep_figure(self.records, x, list(self.models.value), title=title, shots=shots),
                study_figures.sweep_table(shown, shots)]  # the table shows what the y axis does

    def add(self, record: RunRecord) -> None:
        """Add one run and redraw (once, though the model list may change too)."""
        self.records.append(record)
        self._set_options()
        self.refresh()


class ProbeExplorer(Explorer):
    """Few-shot linear probes on every layer of several models (paper Fig. 4 style), fitted once per model."""
    slow, n_figures = True, 2

    def __init__(self, models: Sequence[str], train_images: torch.Tensor, train_labels: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, shots: Sequence[int] = SHOTS,
                 seeds: Sequence[int] = (0, 1, 2), batch_size: int = 250, source: str = "CIFAR-10 test set",
                 static: bool | None = None):
        super().__init__(static=static)
        self.specs, self.test_labels, self.source = list(dict.fromkeys(models)), test_labels, source
        self.data = (train_images, train_labels, test_images, test_labels)
        self.settings = dict(shots=tuple(shots), seeds=tuple(seeds), batch_size=batch_size)
        self._probes: dict[tuple, list[ProbeRecord]] = {}
        self.shots = W.ToggleButtons(options=list(shots), value=max(shots), description="shots", style=STYLE)
        self.models = W.SelectMultiple(options=[(zoo.label(s), s) for s in self.specs], value=tuple(self.specs),
                                       description="models", rows=3, style=STYLE, layout=W.Layout(width="40ch"))
        self.layers = W.SelectMultiple(description="layers", rows=6, style=STYLE, layout=W.Layout(width="48ch"))
        self.depth, self.curve = self.plots
        self._build([[self.shots, self.models], self.depth, self.layers, self.curve],
                    [self.shots, self.models, self.layers])

    @property
    def records(self) -> list[ProbeRecord]:
        return self.result or []

    def compute(self) -> list[ProbeRecord]:
        todo = [s for s in self.specs if model_key(s) not in self._probes]
        for i, spec in enumerate(todo):
            self.step(f"fitting probes on every layer of {spec} ({i + 1} of {len(todo)} models)", i, len(todo))
            probes = FewshotEvaluator(*self.data, **self.settings)
            self._probes[model_key(spec)] = probes.run(cached_model(spec), name=spec)
        records = [r for s in self.specs for r in self._probes[model_key(s)]]
        if not self.layers.options:  # by default, the curves of each model's last layer
            triples = list(dict.fromkeys((r.model, r.layer, r.pooling) for r in records))
            last = {m: max(r.depth for r in records if r.model == m) for m in self.specs}
            deepest = {(r.model, r.layer, r.pooling) for r in records if r.depth == last[r.model]}
            with self.hold():
                self.layers.options = [(f"{m} · {layer_label(layer)} · {how}", (m, layer, how))
                                       for m, layer, how in triples]
                self.layers.value = tuple(t for t in triples if t in deepest)
        return records

    def describe(self, records: list[ProbeRecord]) -> str:
        return f"probes scored on {data.describe_images(len(self.test_labels), self.source, self.test_labels)}"

    def figures(self, records: list[ProbeRecord]) -> list[go.Figure]:
        mine = [r for r in records if r.model in self.models.value]
        if not mine:
            raise ValueError("select at least one model")
        return [study_figures.probe_depth_figure(mine, self.shots.value),
                study_figures.probe_shots_figure(records, list(self.layers.value))]

    def notes(self) -> list[str]:
        return [load_note(s) for s in self.specs]


class CKAExplorer(Explorer):
    """CKA heatmaps between every layer of two models (A x B) and of A with itself (A x A), kept per settings."""
    slow, n_figures = True, 2

    def __init__(self, models: Sequence[str], images: torch.Tensor, initial: tuple[str, str] | None = None,
                 batch_size: int = 250, source: str = "CIFAR-10 test set", labels: torch.Tensor | None = None,
                 static: bool | None = None):
        a, b = initial if initial is not None else (models[0], models[-1])
        super().__init__(models, a, description="model A", static=static)
        self.data, self.batch_size, self.source, self.labels = images, min(batch_size, len(images)), source, labels
        self._cache: dict[tuple, CKAResult] = {}
        self.model_a, self.model_b = self.model, model_dropdown(models, b, "model B")
        self.representation = W.ToggleButtons(options=["full", "pooled"], description="layer output", style=STYLE)
        self.cross, self.self_similarity = self.plots
        self._build([[self.model_a, self.model_b, self.representation], side_by_side(self.plots)],
                    [self.model_b, self.representation])

    def compute(self) -> list[tuple[str, str, tuple]]:
        a, b, rep = self.model_a.value, self.model_b.value, self.representation.value
        pairs = [(a, b), (a, a)]
        keys = [(model_key(x), model_key(y), rep) for x, y in pairs]
        todo = {k: p for k, p in zip(keys, pairs) if k not in self._cache}  # A x A once when B is A
        for i, (key, (x, y)) in enumerate(todo.items()):
            self.step(f"CKA of {x} x {y} over {self.describe(None)} ({i + 1} of {len(todo)})", i, len(todo))
            cka = CKAEvaluator(self.data, reference=cached_model(y), batch_size=self.batch_size, representation=rep)
            self._cache[key] = cka.run(cached_model(x))
        return [(x, y, self._cache[k]) for (x, y), k in zip(pairs, keys)]

    def describe(self, _result: Any) -> str:
        used = len(self.data) // self.batch_size * self.batch_size  # CKA drops a remainder
        return data.describe_images(used, self.source, self.labels[:used] if self.labels is not None else None)

    def figures(self, result: list[tuple[str, str, tuple]]) -> list[go.Figure]:
        return [study_figures.cka_figure(c, ny, nx, x, y, title=f"CKA: {x} x {y}") for x, y, (c, ny, nx) in result]

    def notes(self) -> list[str]:
        return [load_note(self.model_a.value), load_note(self.model_b.value)]


class InsideViewsExplorer(W.VBox):
    """The three Fig. 7 panels of a ViT run at any recorded epoch, and its attention distance against epoch; where
    the run recorded them, its head-ablation matrix at that epoch and logit-lens accuracy per layer against epoch."""
    def __init__(self, run_folder: str | Path, k: int = 28, static: bool | None = None):
        from ..training import inside
        self.folder, self.k = Path(run_folder), k
        self.views, self.tensors, recorded = inside.load(self.folder)
        if not self.views:
            raise ValueError(f"{self.folder} holds no inside views (inside.jsonl) and no finished ViT: train a ViT "
                             "into it with inside views on (the default)")
        self.note = W.HTML("" if recorded else "<i>This run recorded no inside views (it predates them, or ran "
                           "with them off): only its final model is shown. Train it again into a new folder to "
                           "see every epoch.</i>")
        epochs = [v.epoch for v in self.views]
        self.epoch = W.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                       continuous_update=False, style=STYLE)
        self.filters, self.variance, self.positions, self.distance, self.timeline = (
            figure_view(static) for _ in range(5))
        # Head ablation and logit-lens accuracy, shown only when the run recorded them (optional fields).
        self.ablation, self.lens_timeline = figure_view(static), figure_view(static)
        self.intervened = any(v.head_ablation is not None or v.lens_accuracy is not None for v in self.views)
        self.epoch.observe(lambda change: self.show_epoch(change["new"]), names="value")
        super().__init__([self.epoch, self.note, side_by_side([self.filters, self.variance]),
                          side_by_side([self.positions, self.distance]), self.timeline,
                          *([side_by_side([self.ablation, self.lens_timeline])] if self.intervened else [])])
        self.show_epoch(epochs[-1])

    def save(self, path: str | Path, overwrite: bool = False) -> list[Path]:
        """Save the panels shown and their notes (see :func:`vitlab.views.export.save_widget`)."""
        return export.save_widget(self, path, f"{self.folder.name}, epoch {self.epoch.value}", overwrite)

    def show_epoch(self, epoch: int) -> None:
        """Redraw every panel for ``epoch`` (one of the recorded epochs)."""
        self.view = next(v for v in self.views if v.epoch == epoch)
        if self.epoch.value != epoch:
            self.epoch.value = epoch  # observed: comes back here once with the same epoch
            return
        self._fig7(epoch)
        self._interventions(epoch)

    def _interventions(self, epoch: int) -> None:
        """The head-ablation matrix at ``epoch`` and logit-lens accuracy across epochs, where recorded."""
        name = f"{self.folder.name.removesuffix('.inside')}"
        if self.view.head_ablation is not None:
            show_figure(self.ablation, intervention_figures.inside_ablation_figure(self.view, f"{name}: head ablation"))
        elif any(v.head_ablation is not None for v in self.views):
            show_figure(self.ablation, figures.note_figure(f"{name}, epoch {epoch}: no head ablation recorded",
                                                           "this epoch's inside view holds none"))
        if any(v.lens_accuracy is not None for v in self.views):
            show_figure(self.lens_timeline, intervention_figures.inside_lens_figure(
                self.views, epoch, f"{name}: logit-lens accuracy per layer across training"))

    def _fig7(self, epoch: int) -> None:
        """The Fig. 7 panels of ``epoch`` (the view shown) and attention distance against epoch."""
        from ..training import inside
        stand_in = inside.stored_model(self.view, self.tensors)
        position = position_analysis(stand_in, seeds=())
        self.sim = position.sim  # (rows, cols, rows, cols)
        name = f"{self.folder.name.removesuffix('.inside')}, epoch {epoch}"  # a zoo entry's folder: its name
        if self.view.filter_k:
            result = filters_analysis(stand_in, k=self.k, seeds=())
            self.ratio = result.ratio[: result.k]
            show_figure(self.filters, figures.embedding_filters_figure(result, title=f"{name}: filters"))
            show_figure(self.variance, figures.explained_variance_figure(result))
        else:  # a hybrid: its first layer is a CNN, its embedding projects CNN features
            self.ratio = None
            for widget in (self.filters, self.variance):
                show_figure(widget, figures.note_figure(
                    f"{name}: a hybrid ViT has no patch-embedding filters",
                    "its embedding projects 1x1 patches of a CNN's feature map, not pixels"))
        show_figure(self.positions, figures.position_similarity_figure(position, title=f"{name}: position embeddings"))
        show_figure(self.distance, figures.inside_distance_figure(
            self.view, title=f"{name}: mean attention distance ({self.view.images} probe images)"))
        show_figure(self.timeline, study_figures.inside_views_figure(self.views, epoch=epoch))


class RecipesExplorer(W.VBox):
    """The arms of a recipe comparison (default: the committed locality experiment) side by side at any epoch."""
    def __init__(self, folder: str | Path | None = None, seed_span: tuple[float, str] | None = None,
                 static: bool | None = None):
        from ..training import recipes
        self.comparison, self.seed_span = recipes.read(folder or recipes.LOCALITY), seed_span
        epochs = self.comparison.epochs
        self.epoch = W.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                       continuous_update=False, style=STYLE)
        self.distance, self.timeline, self.readout = figure_view(static), figure_view(static), W.HTML()
        self.epoch.observe(lambda change: self.show_epoch(change["new"]), names="value")
        super().__init__([self.epoch, self.distance, self.readout, self.timeline])
        self.show_epoch(epochs[-1])

    def save(self, path: str | Path, overwrite: bool = False) -> list[Path]:
        """Save the figures shown and the readout (see :func:`vitlab.views.export.save_widget`)."""
        return export.save_widget(self, path, f"recipe comparison, epoch {self.epoch.value}", overwrite)

    def show_epoch(self, epoch: int) -> None:
        """Redraw the arms and the readout at ``epoch`` (one every run recorded)."""
        if self.epoch.value != epoch:
            self.epoch.value = epoch  # observed: comes back here once with the same epoch
            return
        self.measured = recipe_readouts.recipes(self.comparison, epoch, self.seed_span)
        show_figure(self.distance, study_figures.recipes_figure(self.comparison, epoch))
        show_figure(self.timeline, study_figures.recipes_timeline_figure(self.comparison, epoch))
        self.readout.value = self.measured.html()
