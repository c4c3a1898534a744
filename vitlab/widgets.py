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

from . import metrics, plots
from .models import load_model


@lru_cache(maxsize=8)
def _position_similarity(spec: str) -> torch.Tensor:
    return metrics.position_similarity(load_model(spec, device="cpu"))


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
