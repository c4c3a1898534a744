"""The explorer pattern under every view: the :class:`Explorer` base, a model cache and small widget helpers."""
from __future__ import annotations

import contextlib
import html
import itertools
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import ipywidgets as W
import plotly.graph_objects as go
from torch import nn

from .. import models, settings
from ..analysis.representations import model_family
from ..models.hub import WeightsUnavailableError, match_input_size
from ..training import zoo
from .figure_views import STYLE, PatchPicker, StaticFigure, figure_view, show_figure  # noqa: F401 (re-exported)

_CACHE_SIZE = 8
_MODELS: OrderedDict[tuple, nn.Module] = OrderedDict()
_NOTES: dict[tuple, str] = {}


class Recent(OrderedDict):
    """A cache of at most ``size`` entries, the least recently used dropped first."""
    def __init__(self, size: int = 16):
        super().__init__()
        self.size = size

    def keep(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value kept for ``key``, made by ``make()`` the first time."""
        if key in self:
            self.move_to_end(key)
        else:
            self[key] = make()
            while len(self) > self.size:
                self.popitem(last=False)
        return self[key]


@dataclass(frozen=True, eq=False)
class Given:
    """A model passed from code (``Explorer(model=my_model)``), shown in the model menu as ``name``."""
    model: nn.Module
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class RandomWeights:
    """A timm architecture with random weights (``load_model(name, pretrained=False)``), offered when its pretrained
    weights are not at hand."""
    name: str

    def __str__(self) -> str:
        return f"{self.name} (random weights)"


#: What a model menu holds: a spec string (zoo name, timm name, weights file), a model from code, random weights.
Spec = Union[str, Given, RandomWeights]
_GIVEN: weakref.WeakKeyDictionary[nn.Module, Given] = weakref.WeakKeyDictionary()  # one menu entry per model


def given(model: nn.Module) -> Given:
    """``model`` (a ViT, hybrid or ResNet, from code) as a menu entry, the same one each time it is passed;
    ValueError in one line for any other module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model= takes a torch model (nn.Module) or a spec string, got {type(model).__name__}")
    if model in _GIVEN:
        return _GIVEN[model]
    try:
        model_family(model)
    except ValueError:
        raise ValueError(f"model= got a {type(model).__name__}, which is not a ViT, hybrid or ResNet this workbench "
                         "reads (timm's VisionTransformer, ResNet, ResNetV2); pass one, e.g. "
                         "timm.create_model('vit_small_patch16_224')") from None
    match_input_size(model)  # timm keeps its default's input size in pretrained_cfg when built for another
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    name = f"{arch} (from code)"
    taken = {g.name for g in _GIVEN.values()}
    name = next(f"{name} #{i}" for i in itertools.count(2) if f"{name} #{i}" not in taken) if name in taken else name
    _GIVEN[model] = Given(model, name)
    return _GIVEN[model]


def as_spec(model: Spec | nn.Module) -> Spec:
    """A menu entry for ``model``: a spec as it is, a module through :func:`given`."""
    return given(model) if isinstance(model, nn.Module) else model


def model_key(spec: Spec) -> tuple:
    """What the weights of ``spec`` are now: the spec and its weights file's path, mtime, size and inode (a model
    from code: its identity)."""
    if isinstance(spec, Given):
        return ("given", id(spec.model))
    if isinstance(spec, RandomWeights):
        return ("random", spec.name)
    path = models.weights_file(spec)
    if path is None:
        return (spec,)
    stat = path.stat()
    return (spec, str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)


def cached_model(spec: Spec | nn.Module) -> nn.Module:
    """``load_model(spec)`` on the CPU, kept until its weights file changes; load warnings go to :func:`load_note`.
    A model from code is used as it is (on its own device); random weights load with ``pretrained=False``."""
    if isinstance(spec, nn.Module):
        spec = given(spec)
    key = model_key(spec)
    if isinstance(spec, Given):
        _NOTES[key] = "" if getattr(spec.model, "vitlab_arch", None) else (
            f"{spec}: no random-init reference (the model was not built by vitlab.load_model, so its architecture "
            "cannot be rebuilt)")
        return spec.model.eval()
    if key not in _MODELS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if isinstance(spec, RandomWeights):
                model = models.load_model(spec.name, device="cpu", pretrained=False)
                warnings.warn(f"{spec.name}: random weights (pretrained=False), not a trained model")
            else:
                model = models.load_model(spec, device="cpu")
        for stale in [k for k in _MODELS if k[0] == spec]:  # older weights of the same spec
            del _MODELS[stale]
            _NOTES.pop(stale, None)
        _MODELS[key] = model
        _NOTES[key] = " ".join(str(w.message) for w in caught)
        while len(_MODELS) > _CACHE_SIZE:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return _MODELS[key]


def load_note(spec: Spec) -> str:
    """What loading ``spec`` warned about (empty when nothing, or when it was not loaded yet)."""
    return _NOTES.get(model_key(spec), "")


class DoesNotApply(ValueError):
    """An analysis that does not apply to the model chosen (e.g. filters of a hybrid): said in the status line."""


#: Descriptions as wide as their text (ipywidgets cuts them at 90 px otherwise).


def fit_width(labels: Sequence[str], description: str = "") -> W.Layout:
    """A layout wide enough for the longest of ``labels`` after ``description``."""
    chars = max(map(len, labels), default=10) + len(description) + 8
    return W.Layout(width=f"{min(max(chars, 24), 80)}ch")


def side_by_side(children: Sequence[W.Widget]) -> W.Box:
    """Widgets side by side that wrap onto the next line when the output area is too narrow."""
    return W.Box(list(children), layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center",
                                                 width="100%"))


def spec_label(spec: Spec) -> str:
    """How ``spec`` reads in a menu and in titles: :func:`vitlab.training.zoo.label` for names, a weights file's
    name (not its folders), else its own name."""
    if isinstance(spec, str) and models.weights_file(spec) is not None and not models.zoo_weights(spec).is_file():
        return Path(spec).name
    return zoo.label(spec) if isinstance(spec, str) else str(spec)


def model_dropdown(specs: Sequence[Spec], initial: Spec | None = None, description: str = "model") -> W.Dropdown:
    """A dropdown of ``specs`` labelled by :func:`spec_label`, ``initial`` added in front if missing."""
    specs = list(dict.fromkeys(specs))
    if initial is not None and initial not in specs:
        specs.insert(0, initial)
    if not specs:
        raise ValueError("give at least one model spec (a zoo name, timm name or path)")
    options = [(spec_label(s), s) for s in specs]
    return W.Dropdown(options=options, value=initial if initial is not None else specs[0], description=description,
                      style=STYLE, layout=fit_width([label for label, _ in options], description))


def coloured(text: str, colour: str = "#a60") -> str:
    """``text`` as HTML in ``colour`` (default: the amber of notes), for a status line."""
    return f"<span style='color:{colour}'>{html.escape(text)}</span>"


def _display_now(widget: W.Widget):
    """Display ``widget`` in the running cell's output now (in a kernel); returns the handle or None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display(widget, display_id=True) if hasattr(get_ipython(), "kernel") else None


class Explorer(W.VBox):
    """Base of every view: model dropdown, controls, status line, figures, one redraw path (:meth:`refresh`); subclasses
    call :meth:`_build` and define :meth:`compute` and :meth:`figures` (``live = False``: redraw on Compute only)."""
    live = True  # redraw on every control change
    slow = False  # the first computation takes seconds: show progress in the cell meanwhile
    n_figures = 1

    def __init__(self, models: Sequence[Spec] | None = None, initial: Spec | None = None, description: str = "model",
                 model: Spec | nn.Module | None = None, static: bool | None = None):
        super().__init__()
        # Plain figures redrawn on change where FigureWidget does not draw (settings.static_mode); no clicks there.
        self.static = settings.static_mode() if static is None else static
        self.refused: list[str] = []  # why model= (or images=) was not taken, said in the status line once drawn
        if model is not None:
            try:
                initial = as_spec(model)
            except (TypeError, ValueError) as err:
                self.refused.append(str(err))
        self.model = model_dropdown(models, initial, description) if models is not None else None
        # The model box also takes a timm name or weights file typed in; a timm name whose weights are not at hand
        # offers its random-weight model.
        self.typed = W.Text(placeholder="timm name or weights file, then Enter", description="or load",
                            continuous_update=False, style=STYLE, layout=W.Layout(width="40ch"))
        self.offer = W.Button(layout=W.Layout(display="none", width="auto"))
        self.typed.observe(self._typed, names="value")
        self.offer.on_click(lambda _: self.show_model(self.offer.spec))
        self.shown: Spec | None = None  # the model the figures show
        self._typed_in: set[str] = set()
        self.status = W.HTML()
        self.bar = W.IntProgress(layout=W.Layout(display="none", width="240px"))
        self.output = W.Output()
        self.run = None if self.live else W.Button(description="Compute", button_style="primary")
        self.plots = [figure_view(self.static) for _ in range(self.n_figures)]
        self.result: Any = None
        self._clicks: list[tuple[int, int, Callable]] = []
        self._held = 0

    def compute(self) -> Any:
        """The tensor work for the current settings."""
        raise NotImplementedError

    def figures(self, result: Any) -> list[go.Figure]:
        """One figure per FigureWidget in ``plots``, from ``result``."""
        raise NotImplementedError

    def describe(self, result: Any) -> str:
        """The status line after a successful refresh (e.g. what the figures were computed on)."""
        return ""

    def notes(self) -> list[str]:
        """Warnings about the models shown (e.g. random weights), for the status line."""
        return [load_note(self.model.value)] if self.model is not None else []

    def save(self, path: str | Path, overwrite: bool = False) -> list[Path]:
        """Save the figures shown and the status and readout lines: ``.html`` one self-contained page; ``.png``,
        ``.svg``, ``.pdf`` one file per figure (``name-1.png``, ...) and the text in ``name.txt`` (see
        :func:`vitlab.views.export.save_view`). Returns the paths written; an existing file is refused unless
        ``overwrite``."""
        from . import export
        readout = getattr(self, "readout", None)
        text = [export.plain_text(w.value) for w in (self.status, readout) if isinstance(w, W.HTML)]
        shown = f": {spec_label(self.shown)}" if self.shown is not None else ""
        figures = [p.figure if isinstance(p, StaticFigure) else p for p in self.plots if p.data]
        return export.save_view(figures, path, f"{type(self).__name__}{shown}", text, overwrite)

    def _build(self, rows: Sequence[Sequence[W.Widget] | W.Widget], controls: Sequence[W.ValueWidget] = ()) -> None:
        """Lay out ``rows`` (a list of widgets becomes a wrapping row), the status under the first, and draw."""
        rows = [[w for c in r for w in ((c, self.typed, self.offer) if c is self.model else (c,))]
                if isinstance(r, (list, tuple)) else r for r in rows]
        boxes = [side_by_side(r) if isinstance(r, (list, tuple)) else r for r in rows]
        self.children = [boxes[0], side_by_side([self.status, self.bar]), self.output, *boxes[1:]]
        for control in [*([self.model] if self.model is not None else []), *controls]:
            control.observe(self._changed, names="value")
        if self.run is not None:
            self.run.on_click(lambda _: self.refresh())
        busy = W.VBox([side_by_side([self.status, self.bar]), self.output])  # shown while the first compute runs
        handle = _display_now(busy) if self.slow else None
        try:
            self.refresh()
        finally:
            if handle is not None:
                from IPython.display import HTML
                handle.update(HTML(""))
        if self.refused:
            self.status.value = " · ".join(coloured(text, "#b00") for text in self.refused)

    def show_model(self, spec: Spec | nn.Module) -> None:
        """Add ``spec`` (a spec string, random weights, or a model from code) to the model menu and show it."""
        spec = as_spec(spec)
        if spec not in [value for _, value in self.model.options]:
            with self.hold():  # new options would otherwise select (and draw) the first one
                value = self.model.value
                self.model.options = [*self.model.options, (spec_label(spec), spec)]
                self.model.value = value
                self.model.layout = fit_width([label for label, _ in self.model.options], self.model.description)
        self.model.value = spec

    def _typed(self, change) -> None:
        text = change["new"].strip()
        if not text:
            return
        try:
            models.check_spec(text)  # an unknown name or a missing file fails here, in one line
        except Exception as err:
            self.status.value = coloured(f"{text}: {err}", "#b00")
            return
        if text not in [value for _, value in self.model.options]:
            self._typed_in.add(text)
        self.show_model(text)

    def _failed(self, error: Exception) -> None:
        """Say why the settings could not be drawn, in one line, and put the model menu back on the model shown."""
        spec, colour = self.model.value if self.model is not None else None, "#b00"
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, DoesNotApply):
            text, colour = f"{spec}: {error}", "#a60"
        elif isinstance(error, WeightsUnavailableError) and isinstance(spec, str):
            base = spec.split(".", 1)[0]
            self.offer.spec, self.offer.description = RandomWeights(base), f"load {base} with random weights"
            self.offer.layout.display = ""
            text = (f"{spec}: its pretrained weights are not cached here and cannot be downloaded (offline); press "
                    f"'{self.offer.description}' for the model with pretrained=False")
        self.status.value = coloured(text, colour)
        if spec is not None and self.shown is not None and spec != self.shown:
            with self.hold():
                self.model.value = self.shown
                if spec in self._typed_in:  # a typed-in spec that failed leaves the menu
                    self._typed_in.discard(spec)
                    self.model.options = [o for o in self.model.options if o[1] != spec]

    def click(self, plot: int, trace: int, handler: Callable[[Any, Any, Any], None]) -> None:
        """Call ``handler(trace, points, state)`` on clicks on trace ``trace`` of ``plots[plot]``, across redraws
        (not on the static path: there a control picks what a click would)."""
        self._clicks.append((plot, trace, handler))
        self._attach_clicks()

    def hint(self, click: str, pick: str) -> W.HTML:
        """The line under the controls that says how to choose what the detail figure shows: ``click`` on the
        FigureWidget path, ``pick`` (with the controls that replace the click) on the static path."""
        return W.HTML(f"<i>{html.escape(pick if self.static else click, quote=False)}</i>")

    def _attach_clicks(self) -> None:
        for plot, trace, handler in self._clicks:
            if isinstance(self.plots[plot], go.FigureWidget) and self.plots[plot].data:
                self.plots[plot].data[trace].on_click(handler)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Change controls inside without triggering a redraw."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def _changed(self, _change=None) -> None:
        if self.live and not self._held:
            self.refresh()
        elif not self._held:
            self.status.value = coloured("settings changed: press Compute to redraw")

    def step(self, text: str, done: int, total: int) -> None:
        """Say what is being computed, with a progress bar at ``done`` of ``total``."""
        self.status.value = html.escape(text)
        self.bar.max, self.bar.value, self.bar.layout.display = max(total, 1), done, ""

    def refresh(self, _change=None) -> None:
        """Compute for the current settings and redraw every figure: the one redraw path."""
        self.status.value = "computing..."
        error = None
        with self.output, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:  # inside the Output, an exception would be printed and swallowed
                result = self.compute()
                fresh = self.figures(result)
            except Exception as err:
                error = err
        # Finished tqdm bars close their widgets: a cleared output shows no "Loading widget..." stubs.
        self.output.clear_output()
        self.bar.layout.display = "none"
        if error is not None:
            self._failed(error)  # one line
            return
        self.result = result
        if self.model is not None:
            self.shown, self.offer.layout.display = self.model.value, "none"
        for widget, fig in zip(self.plots, fresh):
            show_figure(widget, fig)
        self._attach_clicks()
        notes = [n for n in [*self.notes(), *(str(w.message) for w in caught)] if n]
        self.status.value = " ".join([html.escape(self.describe(result)),
                                      " · ".join(map(coloured, dict.fromkeys(notes)))]).strip()
