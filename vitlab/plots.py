"""Figures as plotly ``go.Figure`` objects; nothing here calls ``.show()``."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch


def similarity_mosaic(sim: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Lay a (R, C, R, C) similarity out as one image of R x C tiles, 1-pixel NaN gaps.

    Returns ``(z, custom)``: ``z`` (R*R + R-1, C*C + C-1) and, per pixel, the query
    row/column and key row/column it shows (-1 in gaps), 1-based for display.
    """
    rows, cols = sim.shape[:2]
    height, width = rows * (rows + 1) - 1, cols * (cols + 1) - 1
    z = np.full((height, width), np.nan, dtype=np.float32)
    custom = np.full((height, width, 4), -1, dtype=np.int32)
    keys = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1) + 1  # (R, C, 2)
    values = sim.detach().cpu().float().numpy()
    for i in range(rows):
        for j in range(cols):
            y, x = i * (rows + 1), j * (cols + 1)
            z[y : y + rows, x : x + cols] = values[i, j]
            custom[y : y + rows, x : x + cols, :2] = (i + 1, j + 1)
            custom[y : y + rows, x : x + cols, 2:] = keys
    return z, custom


def mosaic_tile(sim_shape: tuple[int, ...], x: float, y: float) -> tuple[int, int] | None:
    """The (row, col) tile of :func:`similarity_mosaic` under pixel (x, y); None in a gap."""
    rows, cols = sim_shape[:2]
    i, ry = divmod(int(round(y)), rows + 1)
    j, rx = divmod(int(round(x)), cols + 1)
    if ry == rows or rx == cols or not (0 <= i < rows and 0 <= j < cols):
        return None
    return i, j


def position_similarity_figure(sim: torch.Tensor, title: str = "Position embedding similarity") -> go.Figure:
    """Paper Fig. 7 (center): one small heatmap per patch, tiled by the patch's position.

    Tile (i, j) shows the cosine similarity of patch (i, j)'s position embedding with
    every other patch's. ``sim`` is (rows, cols, rows, cols) from
    :func:`vitlab.metrics.position_similarity`.
    """
    rows, cols = sim.shape[:2]
    z, custom = similarity_mosaic(sim)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            customdata=custom,
            zmin=-1,
            zmax=1,
            colorscale="Viridis",
            colorbar=dict(title=dict(text="Cosine<br>similarity", side="right")),
            hoverongaps=False,
            hovertemplate="query patch (row %{customdata[0]}, col %{customdata[1]})<br>"
            "key patch (row %{customdata[2]}, col %{customdata[3]})<br>"
            "similarity %{z:.3f}<extra></extra>",
        )
    )
    tick_x = [j * (cols + 1) + (cols - 1) / 2 for j in range(cols)]
    tick_y = [i * (rows + 1) + (rows - 1) / 2 for i in range(rows)]
    side = 560
    fig.update_layout(
        title=dict(text=title, x=0.5),
        width=side + 120,
        height=side + 60,
        margin=dict(l=70, r=20, t=50, b=60),
        plot_bgcolor="white",
        xaxis=dict(title="Input patch column", tickvals=tick_x, ticktext=[str(j + 1) for j in range(cols)],
                   showgrid=False, zeroline=False, constrain="domain"),
        yaxis=dict(title="Input patch row", tickvals=tick_y, ticktext=[str(i + 1) for i in range(rows)],
                   autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x", constrain="domain"),
    )
    return fig


def patch_similarity_figure(sim: torch.Tensor, row: int, col: int, title: str | None = None) -> go.Figure:
    """One patch's position-embedding similarity map, large, with the patch marked.

    ``row`` and ``col`` are 0-based patch indices into ``sim`` (rows, cols, rows, cols).
    """
    rows, cols = sim.shape[:2]
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
    fig = go.Figure(
        [
            go.Heatmap(
                z=sim[row, col].detach().cpu().float().numpy(),
                x=list(range(1, cols + 1)),
                y=list(range(1, rows + 1)),
                zmin=-1,
                zmax=1,
                colorscale="Viridis",
                showscale=False,
                hovertemplate="patch (row %{y}, col %{x})<br>similarity %{z:.3f}<extra></extra>",
            ),
            go.Scatter(x=[col + 1], y=[row + 1], mode="markers", hoverinfo="skip", showlegend=False,
                       marker=dict(symbol="square-open", size=14, color="red", line=dict(width=3))),
        ]
    )
    fig.update_layout(
        title=dict(text=title or f"Patch (row {row + 1}, col {col + 1})", x=0.5),
        width=380,
        height=400,
        margin=dict(l=50, r=20, t=50, b=50),
        xaxis=dict(title="column", constrain="domain", showgrid=False),
        yaxis=dict(title="row", autorange="reversed", scaleanchor="x", constrain="domain", showgrid=False),
    )
    return fig
