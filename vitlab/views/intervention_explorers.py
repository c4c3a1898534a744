"""The interventions explorer: which heads a ViT or hybrid needs (head ablation), what each block's tokens already
decode (logit lens) and what each head writes to the logit (direct logit attribution); click a head of the ablation
matrix to see its attention maps (notebook 04's view) beside its ablation effect."""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from .. import data
from ..analysis import attention_maps, residual
from ..analysis.ablation import KINDS, ablation_analysis
from ..analysis.capture import capture
from ..analysis.lens import attribution_analysis, logit_lens_analysis
from ..settings import quick_or
from ..training.inside import probe_set
from . import intervention_figures as figures
from . import intervention_readouts as readouts
from .controls import STYLE, DoesNotApply, Explorer, Recent, Spec, cached_model, model_key, show_figure, side_by_side
from .explorers import _menu, _OwnImages, _refuse_resnet
from .image_sources import ImageSource

#: Everything drawn for one model, images and kind: the three analyses, the images as the model took them, the
#: labels used (None: the model's own predictions stood in), and each image's attention per layer (heads, N, N).
Interventions = namedtuple("Interventions", ["ablation", "lens", "attribution", "images", "labelled", "attn", "grid",
                                             "prefix", "pooled"])
#: How many images the clicked head's attention is drawn over.
SHOWN_MAPS = 4


def reference_images(count: int = 256) -> torch.Tensor | None:
    """``count`` class-balanced CIFAR-10 training images (uint8), what mean ablation averages over (the trainer's
    probe order, :func:`~vitlab.training.inside.probe_set`); None without CIFAR-10 on this machine."""
    return None if data.find_cifar10() is None else probe_set(count, split="train")[0]


def labelled_test_images() -> tuple[ImageSource, torch.Tensor | None]:
    """The CIFAR-10 test set in class-balanced order with its labels, else the shipped samples without labels."""
    if data.find_cifar10() is None:
        images, names = data.samples(32)
        return ImageSource(images, names, "the shipped sample images"), None
    images, names, source = data.analysis_images()  # in stratified order, named by class
    labels = data.cifar10("test", download=False)[1]
    return ImageSource(images, names, f"the {source}"), labels[data.stratified_order(labels, seed=0)]


class LabelledImages(_OwnImages):
    """Images with labels for an explorer that scores a model: the CIFAR-10 test set in class-balanced order (or the
    samples), ``images`` with ``labels``, or your own images, whose labels the model's predictions stand in for; the
    explorer's ``images`` menu offers the counts of ``counts`` that fit, and ``default``."""

    def _default_images(self) -> ImageSource:
        source, labels = labelled_test_images()
        if self.labels is None:
            self.labels = labels
        return source

    def _set_counts(self) -> None:
        n = len(self.shown_images)
        counts = sorted({c for c in self.counts if 2 <= c <= n} | {min(self.default, n)})
        with self.hold():
            self.images.options, self.images.value = counts, min(self.default, n)

    def _fit_images(self) -> None:
        self.labels = None  # uploaded or shown images: their labels are not known
        self._set_counts()

    def show_images(self, images: Any, labels: Any = None) -> None:
        """Show these images (a uint8 batch, folder, file, list or :class:`ImageSource`), with ``labels`` if known
        (else the model's predictions stand in for them), and redraw."""
        self.shown_images = images if isinstance(images, ImageSource) else ImageSource(images)
        self._fit_images()
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self.refresh()


class InterventionsExplorer(LabelledImages, Explorer):
    """Head ablation (mean or zero), logit lens and direct logit attribution of the model picked, on labelled images
    (CIFAR-10 test images by default; ``images`` with ``labels``, or your own images, whose labels the model's own
    predictions stand in for). Click a head of the matrix, or pick its layer and head, to see its attention."""
    n_figures = 4
    live, slow = False, True

    def __init__(self, models: Sequence[Spec] | None = None, images: Any = None, labels: Any = None,
                 initial: Spec | None = None, reference: torch.Tensor | None = None,
                 counts: Sequence[int] = (32, 128, 256, 1000), default: int | None = None,
                 model: Spec | nn.Module | None = None, static: bool | None = None):
        super().__init__(_menu(models, ("vit", "hybrid")), initial, model=model, static=static)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        self._take_images(images, None, None)
        self.reference = reference if reference is not None else reference_images(quick_or(256, 64))
        self.counts, self.default = counts, default or quick_or(256, 32)
        self.images = W.Dropdown(description="images", style=STYLE, layout=W.Layout(width="22ch"))
        self._set_counts()
        self.kind = W.ToggleButtons(options=list(KINDS), description="ablation", style=dict(STYLE, button_width="auto"))
        self.measure = W.ToggleButtons(options=list(figures.MEASURES), description="effect",
                                       style=dict(STYLE, button_width="auto"))
        self.layer = W.Dropdown(options=[1], value=1, description="layer", style=STYLE, layout=W.Layout(width="16ch"))
        self.head = W.Dropdown(options=[1], value=1, description="head", style=STYLE, layout=W.Layout(width="16ch"))
        self._results = Recent(8)
        self.matrix, self.detail, self.lens, self.attribution = self.plots
        self.readout = W.HTML()
        for control in (self.layer, self.head, self.measure):
            control.observe(self._pick, names="value")
        self._build([[self.model, self.images, self.kind, self.run, self.upload], [self.measure, self.layer, self.head],
                     self.hint("Click a head of the ablation matrix to see its attention beside its effect.",
                               "Pick a layer and head to see its attention beside its effect."),
                     side_by_side([self.matrix, self.detail]), self.readout, self.lens, self.attribution],
                    [self.images, self.kind])
        self.click(0, 0, self._clicked)


    def compute(self) -> Interventions:
        model, n, kind = cached_model(self.model.value), self.images.value, self.kind.value
        _refuse_resnet(model, "interventions")
        try:
            s = residual.stream(model)
        except ValueError as err:  # e.g. an attention-pool head: one line, as the analyses say it
            raise DoesNotApply(str(err)) from None
        if kind == "mean" and self.reference is None:
            raise DoesNotApply("mean ablation needs training images to average over (no CIFAR-10 here): pick zero "
                               "ablation, or pass reference=")
        key = (model_key(self.model.value), id(self.shown_images), id(self.labels), n, kind)
        result = self._results.keep(key, lambda: self._analyse(model, n, kind))
        with self.hold():  # fit the head pickers to this model, keeping the head shown where it exists
            self.layer.options, self.head.options = list(range(1, s.depth + 1)), list(range(1, s.heads + 1))
            self.layer.value, self.head.value = min(self.layer.value or 1, s.depth), min(self.head.value or 1, s.heads)
        return result

    def _analyse(self, model: nn.Module, n: int, kind: str) -> Interventions:
        images = self.shown_images.for_model(model, n)
        cap = capture(model, images)
        labelled = self.labels is not None
        labels = self.labels[:n] if labelled else cap.logits.argmax(-1).cpu()
        self.step("ablating each head...", 0, 3)
        ablation = ablation_analysis(model, images, labels, kind=kind, reference=self.reference)
        self.step("reading each block through the head...", 1, 3)
        lens = logit_lens_analysis(model, images, labels)
        self.step("attributing the logit...", 2, 3)
        attribution = attribution_analysis(model, images, labels)
        attn = [[cap.attn[i][k] for i in cap.attn] for k in range(min(SHOWN_MAPS, n))]
        return Interventions(ablation, lens, attribution, images[:SHOWN_MAPS], labelled, attn, cap.grid,
                             cap.num_prefix_tokens, cap.pool == "avg" or not cap.class_token)

    @property
    def selected(self) -> tuple[int, int]:
        """The head shown, (layer, head) 0-based."""
        return self.layer.value - 1, self.head.value - 1

    def head_maps(self, result: Interventions, layer: int, head: int) -> torch.Tensor:
        """(images, rows, cols) head ``head`` of block ``layer``'s attention from what the prediction reads."""
        read = attention_maps.pooled_attention if result.pooled else attention_maps.class_token_attention
        return torch.stack([read(attn, result.grid, result.prefix)[layer, head] for attn in result.attn])

    def _head_figures(self, result: Interventions) -> list[go.Figure]:
        layer, head = self.selected
        measure = self.measure.value
        values = getattr(result.ablation, f"head_{measure}")
        low, high = result.ablation.interval(f"head_{measure}")
        effect = (float(values[:, layer, head].double().mean()), float(low[layer, head]), float(high[layer, head]))
        names = [self.shown_images.names[i] for i in range(len(result.images))]
        return [figures.ablation_matrix_figure(result.ablation, measure, f"{self.model.label}: head ablation",
                                               selected=(layer, head)),
                figures.head_effect_figure(self.head_maps(result, layer, head), result.images, names, layer, head,
                                           effect, measure)]

    def figures(self, result: Interventions) -> list[go.Figure]:
        self.readout.value = "<br><br>".join(readouts.readout(r).html() for r in
                                             (result.ablation, result.lens, result.attribution))
        return [*self._head_figures(result), figures.lens_figure(result.lens, f"{self.model.label}: logit lens"),
                figures.attribution_figure(result.attribution, f"{self.model.label}: direct logit attribution")]

    def describe(self, result: Interventions) -> str:
        said = f"{result.ablation.images} of {self.shown_images.described}"
        return said + ("" if result.labelled else ": no labels, so the model's own predictions stand in for them "
                       "(accuracy here is agreement with the unablated model)")

    def _shown_count(self) -> int:
        return self.images.value

    def _pick(self, _change=None) -> None:
        """Redraw the matrix and the head shown from the result drawn (no new computation)."""
        if self._held or self.result is None:
            return
        for widget, fig in zip(self.plots[:2], self._head_figures(self.result)):
            show_figure(widget, fig)
        self._attach_clicks()

    def _clicked(self, trace, points, state) -> None:
        if points.xs:
            self.select(int(round(points.ys[0])) - 1, int(round(points.xs[0])) - 1)

    def select(self, layer: int, head: int) -> None:
        """Show head ``head`` of block ``layer`` (0-based): its attention maps and ablation effect."""
        depth, heads = self.result.ablation.shape
        if not (0 <= layer < depth and 0 <= head < heads):
            raise ValueError(f"layer {layer + 1}, head {head + 1} is outside this model's {depth} layers x {heads} "
                             "heads (numbered from 1)")
        with self.hold():
            self.layer.value, self.head.value = layer + 1, head + 1
        self._pick()
