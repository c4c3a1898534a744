"""Where the explorers draw: plotly's ``FigureWidget``, or on the static path (VS Code, Colab; see
:func:`vitlab.settings.static_mode`) a plain figure in an Output, and the patch picker that stands in for a click."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from copy import deepcopy

import ipywidgets as W
import plotly.graph_objects as go
import plotly.io as pio
import traitlets

from .. import settings

#: Widget descriptions at their own width, not cut to a fixed one.
STYLE = {"description_width": "initial"}


class PatchPicker(W.HBox):
    """Row and column sliders (counted from 1) that pick a patch where a figure cannot be clicked (the static path);
    ``on_pick(row, col)`` gets them 0-based."""

    def __init__(self, on_pick: Callable[[int, int], None]):
        self.row, self.col = (W.IntSlider(value=1, min=1, max=1, description=f"patch {what}", continuous_update=False,
                                          style=STYLE) for what in ("row", "column"))
        super().__init__([self.row, self.col], layout=W.Layout(flex_flow="row wrap"))
        self._on_pick, self._held = on_pick, False
        for slider in (self.row, self.col):
            slider.observe(self._moved, names="value")

    def fit(self, grid: tuple[int, int], selected: tuple[int, int]) -> None:
        """Fit the sliders to a ``grid`` of (rows, cols) patches and show ``selected`` (0-based), silently."""
        self._held = True
        try:
            self.row.max, self.col.max = grid
            self.row.value, self.col.value = selected[0] + 1, selected[1] + 1
        finally:
            self._held = False

    def _moved(self, _change=None) -> None:
        if not self._held:
            self._on_pick(self.row.value - 1, self.col.value - 1)


class StaticFigure(W.Output):
    """A figure for hosts where plotly's ``FigureWidget`` does not draw (VS Code, Colab): a plain ``go.Figure``
    (``figure``) shown in an Output and redrawn whole by :func:`show_figure`; ``data`` reads its traces (its
    ``layout`` stays the widget's)."""

    def __init__(self):
        super().__init__()
        self.figure = go.Figure()

    @property
    def data(self) -> tuple:
        return self.figure.data

    def show(self, fig: go.Figure) -> None:
        """Replace the figure shown: plotly's own mime type (JupyterLab, VS Code), and HTML with plotly.js from its
        CDN for hosts without a plotly renderer (Colab, the classic notebook)."""
        self.figure = fig
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
        bundle["text/html"] = fig.to_html(full_html=False, include_plotlyjs="cdn")
        # Set as state, not printed inside the Output: it needs no running cell and survives a page reload.
        self.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


# plotly's FigureWidget carries its whole front end (plotly.js and its view, 4.9 MB) in every figure's state, and the
# browser parses and evaluates each copy again (plotly.py #5143): notebook 03's 19 figures were 96 MB over the kernel's
# websocket. Here the kernel sends it once, in one shared widget, and each figure's front end is a loader that
# evaluates it once per page and then draws with plotly's own FigureModel and FigureView.
_LOADER = """
const loaded = (globalThis.__vitlabPlotlyWidget ??= new Map());  // bundle hash -> plotly's widget factory

async function plotlyWidget(model) {
  const id = model.get("_front_end").replace(/^IPY_MODEL_/, "");
  let shared;
  for (let tries = 0; !shared; tries++) {  // a reloaded page may restore this figure before the shared widget
    try { shared = await model.widget_manager.get_model(id); } catch (error) {
      if (tries > 1200) throw error;
      await new Promise(resolve => setTimeout(resolve, 50));
    }
  }
  const key = shared.get("key");
  if (!loaded.has(key)) {
    const url = URL.createObjectURL(new Blob([shared.get("source")], {type: "text/javascript"}));
    loaded.set(key, import(url).then(module => module.default, error => { loaded.delete(key); throw error; })
      .finally(() => URL.revokeObjectURL(url)));
  }
  return loaded.get(key);
}

export default () => {
  let widget;
  return {
    async initialize(context) {
      widget = (await plotlyWidget(context.model))();
      return widget.initialize?.(context);
    },
    render(context) { return widget.render(context); },
  };
};
"""


class PlotlyFrontEnd(W.Widget):
    """plotly's FigureWidget front end (``source``, keyed by its hash), sent to the browser once per kernel and read
    by every :class:`FigureWidget`; it has no view."""
    source = traitlets.Unicode().tag(sync=True)
    key = traitlets.Unicode().tag(sync=True)
    _shared: PlotlyFrontEnd | None = None

    @classmethod
    def shared(cls) -> PlotlyFrontEnd:
        """The kernel's one instance (a new one if ``Widget.close_all`` closed it)."""
        if cls._shared is None or cls._shared.comm is None:
            source = str(go.FigureWidget._esm)
            cls._shared = cls(source=source, key=hashlib.sha1(source.encode()).hexdigest())
        return cls._shared


class FigureWidget(go.FigureWidget):
    """plotly's ``FigureWidget``, drawn by plotly's own front end, which it loads from :class:`PlotlyFrontEnd`
    instead of carrying a copy."""
    _esm = _LOADER
    _front_end = traitlets.Instance(PlotlyFrontEnd).tag(sync=True, **W.widget_serialization)

    @traitlets.default("_front_end")
    def _shared_front_end(self) -> PlotlyFrontEnd:
        return PlotlyFrontEnd.shared()


def figure_view(static: bool | None = None) -> FigureWidget | StaticFigure:
    """An empty figure to draw into with :func:`show_figure`: a plotly :class:`FigureWidget`, or a
    :class:`StaticFigure` when ``static`` (default: :func:`vitlab.settings.static_mode`)."""
    return StaticFigure() if (settings.static_mode() if static is None else static) else FigureWidget()


def show_figure(widget: go.FigureWidget | StaticFigure, fresh: go.Figure) -> None:
    """Put ``fresh``'s traces and layout into ``widget`` in one update (in place where trace types match), and
    into the state a reloaded page draws from; a :class:`StaticFigure` is redrawn whole."""
    if isinstance(widget, StaticFigure):
        widget.show(fresh)
        return
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
    # plotly sends updates as messages and keeps its synced state as first displayed (empty): a browser reload
    # would draw empty axes, and later updates would name traces the page lacks. Keep the state current.
    widget._widget_layout = deepcopy(widget._layout_obj._props)
    widget._widget_data = deepcopy(widget._data)
