"""The explorer pattern under every view: the :class:`Explorer` base, a model cache and small widget helpers."""
from __future__ import annotations

import contextlib
import html
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
from torch import nn

from .. import models
from ..training import zoo

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


def model_key(spec: str) -> tuple:
    """What the weights of ``spec`` are now: the spec and its weights file's path, mtime, size and inode."""
    path = models.weights_file(spec)
    if path is None:
        return (spec,)
    stat = path.stat()
    return (spec, str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)


def cached_model(spec: str) -> nn.Module:
    """``load_model(spec)`` on the CPU, kept until its weights file changes; load warnings go to :func:`load_note`."""
    key = model_key(spec)
    if key not in _MODELS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
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


def load_note(spec: str) -> str:
    """What loading ``spec`` warned about (empty when nothing, or when it was not loaded yet)."""
    return _NOTES.get(model_key(spec), "")


#: Descriptions as wide as their text (ipywidgets cuts them at 90 px otherwise).
STYLE = {"description_width": "initial"}


def fit_width(labels: Sequence[str], description: str = "") -> W.Layout:
    """A layout wide enough for the longest of ``labels`` after ``description``."""
    chars = max(map(len, labels), default=10) + len(description) + 8
    return W.Layout(width=f"{min(max(chars, 24), 80)}ch")


def side_by_side(children: Sequence[W.Widget]) -> W.Box:
    """Widgets side by side that wrap onto the next line when the output area is too narrow."""
    return W.Box(list(children), layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center",
                                                 width="100%"))


def model_dropdown(specs: Sequence[str], initial: str | None = None, description: str = "model") -> W.Dropdown:
    """A dropdown of ``specs`` labelled by :func:`vitlab.training.zoo.label`, ``initial`` added in front if missing."""
    specs = list(dict.fromkeys(specs))
    if initial is not None and initial not in specs:
        specs.insert(0, initial)
    if not specs:
        raise ValueError("give at least one model spec (a zoo name, timm name or path)")
    options = [(zoo.label(s), s) for s in specs]
    return W.Dropdown(options=options, value=initial if initial is not None else specs[0], description=description,
                      style=STYLE, layout=fit_width([label for label, _ in options], description))


def _coloured(text: str, colour: str = "#a60") -> str:
    """``text`` as HTML in ``colour`` (default: the amber of notes), for a status line."""
    return f"<span style='color:{colour}'>{html.escape(text)}</span>"


def show_figure(widget: go.FigureWidget, fresh: go.Figure) -> None:
    """Put ``fresh``'s traces and layout into ``widget`` in one update (in place where trace types match)."""
    layout = fresh.layout.to_plotly_json()
    layout.pop("template", None)  # the widget has it already
    for key in ("shapes", "annotations"):
        layout.setdefault(key, [])
    with widget.batch_update():
        if [t.type for t in widget.data] == [t.type for t in fresh.data]:
            for old, new in zip(widget.data, fresh.data):
                old.update(new.to_plotly_json(), overwrite=True)
        else:
            widget.data = []
            widget.add_traces(list(fresh.data))
        widget.layout.update(layout, overwrite=True)


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

    def __init__(self, models: Sequence[str] | None = None, initial: str | None = None, description: str = "model"):
        super().__init__()
        self.model = model_dropdown(models, initial, description) if models is not None else None
        self.status = W.HTML()
        self.bar = W.IntProgress(layout=W.Layout(display="none", width="240px"))
        self.output = W.Output()
        self.run = None if self.live else W.Button(description="Compute", button_style="primary")
        self.plots = [go.FigureWidget() for _ in range(self.n_figures)]
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

    def _build(self, rows: Sequence[Sequence[W.Widget] | W.Widget], controls: Sequence[W.ValueWidget] = ()) -> None:
        """Lay out ``rows`` (a list of widgets becomes a wrapping row), the status under the first, and draw."""
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

    def click(self, plot: int, trace: int, handler: Callable[[Any, Any, Any], None]) -> None:
        """Call ``handler(trace, points, state)`` on clicks on trace ``trace`` of ``plots[plot]``, across redraws."""
        self._clicks.append((plot, trace, handler))
        self._attach_clicks()

    def _attach_clicks(self) -> None:
        for plot, trace, handler in self._clicks:
            if self.plots[plot].data:
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
            self.status.value = _coloured("settings changed: press Compute to redraw")

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
            self.status.value = _coloured(f"{type(error).__name__}: {error}", "#b00")  # one red line
            return
        self.result = result
        for widget, fig in zip(self.plots, fresh):
            show_figure(widget, fig)
        self._attach_clicks()
        notes = [n for n in [*self.notes(), *(str(w.message) for w in caught)] if n]
        self.status.value = " ".join([html.escape(self.describe(result)), *map(_coloured, dict.fromkeys(notes))])
