"""The attribution explorer (issue 32): every method's map of the model picked (a ViT, hybrid or ResNet: only the
methods that apply are offered), their deletion and insertion curves under the removal picked, and the scoreboard
table of what was computed; click a method's map tile (or pick an image and method) to see that image's curves."""
from __future__ import annotations

import dataclasses
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from ..analysis.faithfulness import REMOVALS, check_removal, faithfulness_analysis
from ..analysis.saliency import METHODS, applicable_methods, maps_analysis, patch_grid
from ..analysis.scoreboard import ScoreboardResult
from ..records import AttributionScore
from ..settings import quick_or
from . import attribution_figures as figures
from . import attribution_readouts as readouts
from .controls import STYLE, Explorer, Recent, Spec, cached_model, model_key, show_figure
from .explorers import _menu
from .intervention_explorers import LabelledImages

#: What one Compute draws from: the maps, their faithfulness scores, and whether labels were known.
Attributions = namedtuple("Attributions", ["maps", "faithfulness", "labelled"])
#: How many images' maps are drawn side by side.
SHOWN_MAPS = 4
#: The most deletion steps; fewer where they would not divide the model's grid.
MOST_STEPS = 16


def steps_for(cells: int, most: int = MOST_STEPS) -> int:
    """The largest number of deletion steps, at most ``most``, that divides ``cells`` grid cells."""
    return max(d for d in range(1, min(most, cells) + 1) if cells % d == 0)


def removals_for(model: nn.Module) -> list[str]:
    """The removals of :data:`REMOVALS` that apply to ``model`` (no token drop without patch tokens)."""
    found = []
    for removal in REMOVALS:
        try:
            check_removal(model, removal)
        except ValueError:
            continue
        found.append(removal)
    return found


def board_rows(result: Attributions, name: str) -> list[AttributionScore]:
    """The scoreboard rows of what the explorer computed (no sanity, no Focus); without labels no accuracy row."""
    maps = result.maps if result.labelled else dataclasses.replace(result.maps, labels=result.maps.predictions)
    rows = ScoreboardResult(model_name=name, maps=maps, faithfulness=result.faithfulness, sanity=None, focus=None,
                            seconds={}).rows()
    return rows if result.labelled else [r for r in rows if r.score != "accuracy"]


class AttributionExplorer(LabelledImages, Explorer):
    """Attribution maps of the model picked and how faithful they are (deletion and insertion under token drop, mean
    fill and blur), on labelled images (CIFAR-10 test images by default; ``images`` with ``labels``, or your own
    images, whose labels the model's predictions stand in for). Pick methods (``methods``: those picked at first,
    default every one; only those that apply to the model are offered), then Compute; pick the removal and measure;
    click a method's map tile (or pick an image and method) to see that image's curves."""
    n_figures = 4
    live, slow = False, True

    def __init__(self, models: Sequence[Spec] | None = None, images: Any = None, labels: Any = None,
                 static: bool | None = None, *, initial: Spec | None = None, model: Spec | nn.Module | None = None,
                 counts: Sequence[int] = (4, 8, 16, 32, 64, 128), default: int | None = None,
                 methods: Sequence[str] | None = None):
        picked = list(METHODS if methods is None else methods)
        if unknown := [m for m in picked if m not in METHODS]:  # before any model or image is loaded
            raise ValueError(f"unknown attribution methods {unknown}: choose from {', '.join(METHODS)}")
        super().__init__(_menu(models, ("vit", "hybrid", "resnet")), initial, model=model, static=static)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self._take_images(images, None, None)
        self.counts, self.default = counts, default or quick_or(32, 4)
        # Quick mode (notebooks under a minute): 8 deletion steps, no Chefer points off the curves' steps, and only
        # the removal picked (another one computes when picked).
        self.most_steps, self.chefer, self.every_removal = quick_or(MOST_STEPS, 8), quick_or(True, False), quick_or(
            True, False)
        self.images = W.Dropdown(description="images", style=STYLE, layout=W.Layout(width="22ch"))
        self._set_counts()
        self.methods = W.SelectMultiple(options=list(METHODS), value=picked, rows=5, description="methods",
                                        style=STYLE)
        self.removal = W.ToggleButtons(options=list(REMOVALS), description="removal",
                                       style=dict(STYLE, button_width="auto"))
        self.measure = W.ToggleButtons(options=["probability", "accuracy"], description="curve of",
                                       style=dict(STYLE, button_width="auto"))
        self.image = W.Dropdown(options=[("image 1", 0)], value=0, description="image", style=STYLE)
        self.method = W.Dropdown(options=list(METHODS), description="method", style=STYLE)
        self._results = Recent(8)
        self.maps, self.curves, self.detail, self.board = self.plots
        self.readout = W.HTML()
        for control in (self.removal, self.measure, self.image, self.method):
            control.observe(self._pick, names="value")
        self._build([[self.model, self.images, self.methods, self.run, self.upload],
                     [self.removal, self.measure, self.image, self.method],
                     self.hint("Click a method's map tile to see that image's deletion and insertion curves.",
                               "Pick an image and a method to see that image's deletion and insertion curves."),
                     self.maps, self.readout, self.curves, self.detail, self.board], [self.images, self.methods])

    def _fit_model(self, model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Offer only the methods and removals that apply to ``model``, keeping those picked where they still do."""
        offered = list(applicable_methods(model))
        removals = removals_for(model)
        with self.hold():
            picked = [m for m in self.methods.value if m in offered]
            self.methods.options = offered
            self.methods.value = picked or offered
            keep = self.removal.value if self.removal.value in removals else removals[0]
            self.removal.options, self.removal.value = removals, keep
        return tuple(self.methods.value), tuple(removals)

    def compute(self) -> Attributions:
        model, n = cached_model(self.model.value), self.images.value
        methods, removals = self._fit_model(model)
        removals = removals if self.every_removal else (self.removal.value,)
        key = (model_key(self.model.value), id(self.shown_images), id(self.labels), n, methods, removals)
        result = self._results.keep(key, lambda: self._analyse(model, n, methods, removals))
        names = self.shown_images.names
        with self.hold():
            self.image.options = [(names[i], i) for i in range(len(result.maps.targets))]
            self.image.value = min(self.image.value or 0, len(result.maps.targets) - 1)
            self.method.options = list(result.maps.methods)
            if self.method.value not in result.maps.methods:
                self.method.value = result.maps.methods[0]
        return result

    def _analyse(self, model: nn.Module, n: int, methods: tuple[str, ...], removals: tuple[str, ...]) -> Attributions:
        images = self.shown_images.for_model(model, n)
        labelled = self.labels is not None
        labels = self.labels[:n] if labelled else None
        described = f"{n} of {self.shown_images.described}"
        self.step("computing the maps...", 0, 2)
        maps = maps_analysis(model, images, methods, labels=labels, described=described, model_name=self.model.label)
        self.step("deleting and inserting patches...", 1, 2)
        rows, cols = patch_grid(model)
        faith = faithfulness_analysis(model, images, maps, removals=removals, progress=False, chefer=self.chefer,
                                      steps=steps_for(rows * cols, self.most_steps))
        return Attributions(maps, faith, labelled)

    def _curve_figures(self, result: Attributions) -> list[go.Figure]:
        name, removal, measure = self.model.label, self.removal.value, self.measure.value
        image = self.image.value
        return [figures.curves_figure(result.faithfulness, removal, measure, title=f"{name}: deletion and insertion"),
                figures.curves_figure(result.faithfulness, removal, measure, image=image, highlight=self.method.value,
                                      title=f"{name}, {self.shown_images.names[image]}")]

    def figures(self, result: Attributions) -> list[go.Figure]:
        self.readout.value = "<br><br>".join(readouts.readout(r).html() for r in (result.maps, result.faithfulness))
        shown, name = list(range(min(SHOWN_MAPS, len(result.maps.targets)))), self.model.label
        return [figures.maps_figure(result.maps, shown, names=self.shown_images.names,
                                    title=f"{self.model.label}: attribution maps"),
                *self._curve_figures(result),
                figures.scoreboard_figure(board_rows(result, name), title=f"{name}: scores", absent={
                    (name, m): "not picked" for m in self.methods.options if m not in result.maps.methods})]

    def describe(self, result: Attributions) -> str:
        said = result.maps.described
        return said + ("" if result.labelled else ": no labels, so the model's own predictions stand in for them "
                       "(accuracy here is agreement with the model on the whole image)")

    def _shown_count(self) -> int:
        return self.images.value

    def _pick(self, _change=None) -> None:
        """Redraw the curves for the removal, measure, image and method picked (no new computation)."""
        if self._held or self.result is None:
            return
        if self.removal.value not in self.result.faithfulness.removals:  # quick mode: computed one at a time
            self.refresh()
            return
        for widget, fig in zip(self.plots[1:3], self._curve_figures(self.result)):
            show_figure(widget, fig)

    def _attach_clicks(self) -> None:
        super()._attach_clicks()
        if isinstance(self.maps, go.FigureWidget):
            for trace in self.maps.data:
                if trace.type == "heatmap":
                    trace.on_click(self._clicked)

    def _clicked(self, trace, points, state) -> None:
        if points.xs and trace.meta:
            self.select(int(trace.meta["image"]), trace.meta["method"])

    def select(self, image: int, method: str) -> None:
        """Show image ``image``'s (0-based, of those computed) deletion and insertion curves, ``method`` drawn bold."""
        n, methods = len(self.result.maps.targets), self.result.maps.methods
        if not 0 <= image < n or method not in methods:
            raise ValueError(f"pick one of the {n} images computed (0 to {n - 1}) and one of {', '.join(methods)}; "
                             f"got image {image}, method {method!r}")
        with self.hold():
            self.image.value, self.method.value = image, method
        self._pick()
