"""Figures (plotly) of Fig. 6/7 results, training curves and the zoo; none calls ``.show()`` or computes a metric."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..analysis import attention_maps
from ..analysis.distance import DistanceResult
from ..analysis.filters import FiltersResult
from ..analysis.positions import PositionResult
from ..records import InsideView
from .style import (family_color, integer_ticks, json_safe, layout, mosaic_axes, number, spread_text, square_axes,
                    table, tile)


def _tile_mosaic(tiles: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~vitlab.views.style.tile` of (A, B, r, c) tiles with NaN gaps, the index 1-based (-1 in gaps)."""
    z, index = tile(tiles.detach().cpu().float().numpy(), np.nan)
    return z, np.where(index >= 0, index + 1, -1).astype(np.int32)


def mosaic_tile(shape: tuple[int, ...], x: float, y: float) -> tuple[int, int] | None:
    """The (a, b) tile of a mosaic of ``shape`` (A, B, r, c) tiles under pixel (x, y); None in a gap or outside."""
    a_n, b_n, rows, cols = shape
    i, ry = divmod(int(round(y)), rows + 1)
    j, rx = divmod(int(round(x)), cols + 1)
    return None if ry == rows or rx == cols or not (0 <= i < a_n and 0 <= j < b_n) else (i, j)


def uniform_line(uniform: float, xs: Sequence[float], width: float | None = None, hover: bool = True,
                 **extra) -> go.Scatter:
    """The uniform-attention reference of every distance figure: a dashed black line at ``uniform`` pixels."""
    line = dict(dash="dash", color="black") if width is None else dict(dash="dash", color="black", width=width)
    return go.Scatter(x=list(xs), y=[uniform, uniform], mode="lines", line=line,
                      name=f"uniform attention ({uniform:.1f} px)",
                      hovertemplate=f"uniform attention: {uniform:.1f} px<extra></extra>" if hover else None,
                      hoverinfo=None if hover else "skip", **extra)


def position_similarity_figure(result: PositionResult, title: str = "Position embedding similarity") -> go.Figure:
    """Paper Fig. 7 (center): tile (i, j) is patch (i, j)'s position-embedding similarity, with the scores under it."""
    s, m, reference = result.structure, result.mirror, result.reference
    lines = [f"nearby patches more similar, Spearman ρ(similarity, -distance): {number(s.closeness, 2)}",
             f"same row or column more similar, partial ρ given distance: {number(s.row_column, 2)}",
             f"similarity to the mirror position {number(m.mirror, 2)}, to neighbours {number(m.neighbour, 2)}"]
    if reference:  # random init's mean [min, max] beside each score
        init = f"random init ({len(reference)} seeds)"
        lines[0] += f" · {init} {spread_text([r.closeness for r, _ in reference])}"
        lines[1] += f" · {init} {spread_text([r.row_column for r, _ in reference])}"
        lines[2] += (f" · {init} {spread_text([r.mirror for _, r in reference])}, "
                     f"{spread_text([r.neighbour for _, r in reference])}")
    rows, cols = result.sim.shape[:2]
    z, custom = _tile_mosaic(result.sim)
    fig = go.Figure(go.Heatmap(
        z=json_safe(z), customdata=custom, zmin=-1, zmax=1, colorscale="Viridis", hoverongaps=False,
        colorbar=dict(title=dict(text="Cosine<br>similarity", side="right")),
        hovertemplate="query patch (row %{customdata[0]}, col %{customdata[1]})<br>"
                      "key patch (row %{customdata[2]}, col %{customdata[3]})<br>similarity %{z:.3f}<extra></extra>"))
    layout(fig, title, 680, 660, margin=(70, 20, 50, 110), plot_bgcolor="white")
    fig.add_annotation(text="<br>".join(lines), xref="paper", yref="paper", x=0, y=0, yshift=-48,
                       xanchor="left", yanchor="top", align="left", showarrow=False, font=dict(size=11))
    mosaic_axes(fig, (rows, cols), (rows, cols), ("Input patch column", "Input patch row"))
    return fig


def patch_similarity_figure(result: PositionResult, row: int, col: int, title: str | None = None) -> go.Figure:
    """One patch's position-embedding similarity map, large, with the patch (0-based ``row``, ``col``) marked."""
    sim, (rows, cols) = result.sim, result.sim.shape[:2]
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
    fig = go.Figure([
        go.Heatmap(z=sim[row, col].detach().cpu().float().numpy(), x=list(range(1, cols + 1)),
                   y=list(range(1, rows + 1)), zmin=-1, zmax=1, colorscale="Viridis", showscale=False,
                   hovertemplate="patch (row %{y}, col %{x})<br>similarity %{z:.3f}<extra></extra>"),
        go.Scatter(x=[col + 1], y=[row + 1], mode="markers", hoverinfo="skip", showlegend=False,
                   marker=dict(symbol="square-open", size=14, color="red", line=dict(width=3))),
    ])
    layout(fig, title or f"Patch (row {row + 1}, col {col + 1})", 380, 400, margin=(50, 20, 50, 50),
           xaxis=dict(title="column", **integer_ticks(cols)), yaxis=dict(title="row", **integer_ticks(rows)))
    square_axes(fig)
    return fig


#: Most principal components a row of the filter mosaic holds.
FILTER_COLUMNS = 7


def embedding_filters_figure(result: FiltersResult, cols: int | None = None,
                             title: str = "Principal components of the patch-embedding filters") -> go.Figure:
    """Paper Fig. 7 (left): each of the first ``result.k`` principal components as an RGB patch, min-max scaled,
    ``cols`` a row (default: as few rows of at most :data:`FILTER_COLUMNS` as hold them, filled evenly: 8 as 4 + 4)."""
    filters, ratio = result.filters, result.ratio[: result.k]
    k, channels, p, _ = filters.shape
    if channels != 3:
        raise ValueError(f"RGB display needs 3 input channels, the filters have {channels}")
    if cols is None:  # even rows: a last row of one tile leaves a wide empty band beside it
        cols = -(-k // -(-k // FILTER_COLUMNS))
    rows = -(-k // cols)
    f = filters.detach().float().flatten(1)
    f = (f - f.amin(1, keepdim=True)) / (f.amax(1, keepdim=True) - f.amin(1, keepdim=True)).clamp_min(1e-12)
    rgb = (f.reshape(k, 3, p, p).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (k, P, P, 3)
    rgb = np.concatenate([rgb, np.full((rows * cols - k, p, p, 3), 255, np.uint8)])  # white empty slots
    img, index = tile(rgb.reshape(rows, cols, p, p, 3), 255)
    label = np.where(index[..., 0] >= 0, index[..., 0] * cols + index[..., 1], -1)
    label[label >= k] = -1
    share = ratio.detach().float().numpy()
    text = np.where(label >= 0, np.char.add(np.char.add("PC ", (label + 1).astype(str)),
                                            np.char.add(": ", np.char.mod("%.1f%%", 100 * share[label.clip(0)]))), "")
    fig = go.Figure(go.Image(z=img, hovertext=text, hoverinfo="text"))
    return layout(fig, title, max(420, 64 * cols + 80), max(260, 64 * rows + 90), margin=(20, 20, 50, 20),
                  xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="white")  # no band round it


def explained_variance_figure(result: FiltersResult, title: str = "Explained variance") -> go.Figure:
    """Explained-variance ratio of the first ``result.k`` principal components, cumulative, against random init."""
    r = result.ratio[: result.k].detach().double().numpy()
    idx = list(range(1, len(r) + 1))
    fig = go.Figure([go.Bar(x=idx, y=r.tolist(), name="component"),
                     go.Scatter(x=idx, y=np.cumsum(r).tolist(), name="cumulative", mode="lines+markers")])
    if result.reference is not None:
        ref = result.reference[:, : result.k].detach().double().numpy().cumsum(1)  # (seeds, k)
        fig.add_trace(go.Scatter(x=idx + idx[::-1], y=ref.max(0).tolist() + ref.min(0)[::-1].tolist(),
                                 fill="toself", mode="lines", line=dict(width=0), fillcolor="rgba(128, 128, 128, 0.3)",
                                 hoverinfo="skip", showlegend=False, legendgroup="init"))
        fig.add_trace(go.Scatter(x=idx, y=ref.mean(0).tolist(), name=f"random init, cumulative ({len(ref)} seeds)",
                                 mode="lines", legendgroup="init", line=dict(dash="dash", color="gray")))
        title += (f": first {len(r)} hold {number(100 * r.sum(), 1)}%<br>"
                  f"(random init {spread_text(100 * ref[:, -1], 1, '%')} over seeds)")
    return layout(fig, title, 580, 340, margin=(60, 20, 50, 50),
                  legend=dict(x=0.98, xanchor="right", y=0.04, yanchor="bottom"),
                  xaxis=dict(title="principal component", **integer_ticks(len(r))),
                  yaxis=dict(title="fraction of variance", range=[0, 1]))


def note_figure(title: str, text: str, width: int = 580, height: int = 340) -> go.Figure:
    """A figure without data that says why there is none (``text`` in the middle, no axes)."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=13))
    return layout(fig, title, width, height, xaxis=dict(visible=False), yaxis=dict(visible=False))


#: A note over a distance figure: pixels per line, and its gap above the plot (clear of the clipped markers).
_NOTE_LINE, _NOTE_GAP = 16, 6


def _receptive_fields(fig: go.Figure, result: DistanceResult, name: str, cnn: str, top: float) -> None:
    """A CNN's receptive fields spread over depth and a hybrid's stem window, clipped at ``top`` with a note."""
    depth, fields, curves = result.depth, result.cnn_fields, []
    if fields:
        xs = [1 + i * (depth - 1) / max(len(fields) - 1, 1) for i in range(len(fields))]
        curves.append((f"{cnn} receptive field", xs, [r for _, r in fields], [block for block, _ in fields],
                       dict(dash="dot", color="gray")))
    if result.token_field is not None:
        pixels, style = result.token_field, dict(dash="dashdot", color=family_color("hybrid", 2))  # apart from grey
        curves.append((f"{name}'s CNN stem receptive field ({pixels:.0f} px)", [1, depth], [pixels, pixels],
                       ["the tokens' CNN window (every layer's input)"] * 2, style))
    notes = []
    for label, xs, ys, names, style in curves:
        fig.add_trace(go.Scatter(
            x=xs, y=[min(y, top) for y in ys], mode="lines+markers", name=label, customdata=list(zip(names, ys)),
            line=style, cliponaxis=False,
            marker=dict(symbol=["triangle-up" if y > top else "circle" for y in ys]),  # up: clipped
            hovertemplate="%{customdata[0]}<br>%{customdata[1]:.0f} px<extra>" + label + "</extra>"))
        over = [i for i, y in enumerate(ys) if y > top]
        if over:
            notes.append(f"{label}: beyond {top:.0f} px from {names[over[0]]} on (up to {max(ys):.0f} px)")
    if notes:  # above the plot, in room made for it: a clipped line runs along the top edge, anywhere along it
        fig.add_annotation(xref="paper", x=0, y=top, xanchor="left", yanchor="bottom", yshift=_NOTE_GAP, align="left",
                           showarrow=False, font=dict(color="gray", size=11), text="<br>".join(notes))
        fig.update_layout(margin_t=fig.layout.margin.t + _NOTE_LINE * len(notes) + _NOTE_GAP)


def _distance_figure(distance: torch.Tensor, rows: torch.Tensor, depth: int, uniform: float, title: str,
                     random_init: torch.Tensor | None = None, top: float | None = None) -> tuple[go.Figure, float]:
    """Heads of ``distance`` (layers, heads) over the random-init band and uniform line; returns (figure, y top)."""
    d = distance.detach().float()
    fig = go.Figure()
    highest = max(float(d.max()), uniform)
    if random_init is not None:  # drawn first, under the heads: min..max over seeds and heads per layer
        r = random_init.detach().float()
        name = f"random init ({len(r)} seed{'s' if len(r) != 1 else ''})"
        r = r.transpose(0, 1).flatten(1)  # (layers, seeds*heads)
        low, high = r.amin(1), r.amax(1)  # (layers,)
        xs = rows.tolist() if len(rows) > 1 else [rows.item() - 0.4, rows.item() + 0.4]  # one layer: a short band
        lo, hi = (low.tolist(), high.tolist()) if len(rows) > 1 else (2 * low.tolist(), 2 * high.tolist())
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", mode="lines", name=name,
                                 line=dict(width=0), fillcolor="rgba(128, 128, 128, 0.25)", hoverinfo="skip"))
        highest = max(highest, float(high.max()))
    fig.add_trace(uniform_line(uniform, [0.5, depth + 0.5], width=1.5))
    for h in range(d.shape[1]):
        fig.add_trace(go.Scatter(
            x=rows.numpy(), y=d[:, h].numpy(), mode="markers", name=f"head {h + 1}", marker=dict(size=9, opacity=0.85),
            hovertemplate=f"layer %{{x}}, head {h + 1}<br>%{{y:.1f}} px<extra></extra>"))
    top = highest * 1.1 if top is None else top
    return layout(fig, title, 640, 440, xaxis=dict(title="Network depth (layer)", range=[0.5, depth + 0.5], dtick=1),
                  yaxis=dict(title="Mean attention distance (pixels)", range=[0, top])), top


def attention_distance_figure(result: DistanceResult, title: str = "Mean attention distance by head and depth",
                              name: str = "the model", cnn: str = "ResNet") -> go.Figure:
    """Paper Fig. 7 (right): each head's mean attention distance (pixels) against depth, with its references."""
    rows = torch.tensor(result.layers).float() + 1
    fig, top = _distance_figure(result.mean, rows, result.depth, result.uniform, title, result.random_init,
                                result.diagonal)
    _receptive_fields(fig, result, name, cnn, top)
    return fig


def inside_distance_figure(view: InsideView, title: str = "Mean attention distance by head and depth") -> go.Figure:
    """Fig. 7 (right) of one recorded inside view: its heads and uniform attention."""
    d = torch.tensor(view.distance)  # (layers, heads)
    return _distance_figure(d, torch.arange(len(d)).float() + 1, len(d), view.uniform, title)[0]


def attention_overlay_figure(image: torch.Tensor, mask: torch.Tensor, title: str = "",
                             marker: tuple[int, int] | None = None, opacity: float = 0.55,
                             scale: str = "attention") -> go.Figure:
    """A uint8 ``image`` (3, H, W) and it under a per-patch ``mask`` (rows, cols); ``marker``: (row, col), 0-based."""
    (_, h, w), (rows, cols) = image.shape, mask.shape
    ph, pw = h / rows, w / cols
    pixels = image.permute(1, 2, 0).cpu().numpy()
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.03)
    fig.add_traces([go.Image(z=pixels, hoverinfo="skip"), go.Image(z=pixels, hoverinfo="skip")], rows=1, cols=[1, 2])
    fig.add_trace(go.Heatmap(  # the last trace: explorers listen to clicks on it
        z=mask.detach().float().numpy(), x0=pw / 2 - 0.5, dx=pw, y0=ph / 2 - 0.5, dy=ph, colorscale="Inferno",
        opacity=opacity, colorbar=dict(title=dict(text=scale, side="right"), thickness=14),
        customdata=np.stack(np.meshgrid(np.arange(1, rows + 1), np.arange(1, cols + 1), indexing="ij"), -1),
        hovertemplate="patch (row %{customdata[0]}, col %{customdata[1]})<br>%{z:.4f}<extra></extra>"), 1, 2)
    if marker is not None:
        r, c = marker
        fig.add_shape(type="rect", x0=c * pw - 0.5, x1=(c + 1) * pw - 0.5, y0=r * ph - 0.5, y1=(r + 1) * ph - 0.5,
                      line=dict(color="cyan", width=3), row=1, col=2)
    layout(fig, title, 620, 360, margin=(10, 10, 50, 10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    square_axes(fig)
    fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    return fig


def head_attention_figure(maps: torch.Tensor, layers: list[int] | None = None,
                          title: str = "Class-token attention per layer and head") -> go.Figure:
    """A grid of attention ``maps`` (L, H, rows, cols) of blocks ``layers`` (0-based), each scaled to its maximum."""
    n_layers, heads, rows, cols = maps.shape
    z, custom = _tile_mosaic(attention_maps.scale_to_max(maps))
    fig = go.Figure(go.Heatmap(
        z=json_safe(z), customdata=custom, zmin=0, zmax=1, colorscale="Inferno", hoverongaps=False,
        colorbar=dict(title=dict(text="share of<br>map's max", side="right")),
        hovertemplate="layer row %{customdata[0]}, head %{customdata[1]}<br>"
                      "patch (row %{customdata[2]}, col %{customdata[3]})<br>%{z:.2f} of max<extra></extra>"))
    layout(fig, title, min(900, 90 * heads + 160), min(1400, 90 * n_layers + 120), margin=(70, 20, 50, 50),
           plot_bgcolor="white")
    mosaic_axes(fig, (n_layers, heads), (rows, cols), ("head", "layer"),
                [str((layers[i] if layers else i) + 1) for i in range(n_layers)])
    return fig


def training_curves_figure(records: list[dict] | None = None, title: str = "Training",
                           mixed: bool = False, objective: str = "classify") -> go.Figure:
    """Loss and train/test accuracy per epoch from a run's metrics records (may be empty). ``mixed``: a mixup/CutMix run
    (train accuracy of dominant labels); ``objective="mpp"``: masked patch prediction."""
    records = records or []
    epochs = [r["epoch"] for r in records]
    colours = objective == "mpp"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "loss (cross-entropy over 512 colours)" if colours else "loss",
        "masked-patch colour accuracy" if colours else "accuracy"))
    fig.add_trace(go.Scatter(x=epochs, y=[r["loss"] for r in records], name="train loss", mode="lines+markers"), 1, 1)
    train_name = ("train images' corrupted patches" if colours else
                  "train accuracy (dominant label of mixed images)" if mixed else "train accuracy")
    test_name = "test images' corrupted patches" if colours else "test accuracy"
    for key, name in (("train_accuracy", train_name), ("test_accuracy", test_name)):
        fig.add_trace(go.Scatter(x=epochs, y=[r.get(key) for r in records], name=name, mode="lines+markers"), 1, 2)
    layout(fig, title, 900, 360, margin=(60, 20, 70, 50))
    fig.update_xaxes(title_text="epoch", **integer_ticks(max(epochs, default=1)))
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    return fig


def zoo_table(zoo: dict[str, dict]) -> go.Figure:
    """The zoo as a table: name, family, description, parameters, recorded test accuracy ("untrained" without)."""
    names = list(zoo)
    def accuracy(entry: dict) -> str:
        if entry.get("test_accuracy") is None:
            return "untrained"
        if entry.get("objective") == "mpp":
            return f"no head; masked colours {entry['test_accuracy']:.1%}"
        return f"{entry['test_accuracy']:.1%}"
    return table(["name", "family", "architecture", "parameters", "CIFAR-10 test accuracy"],
                 [names, [zoo[n]["family"] for n in names], [zoo[n]["description"] for n in names],
                  [f"{zoo[n]['params']:,}" for n in names], [accuracy(zoo[n]) for n in names]],
                 [1.5, 0.6, 4.2, 0.9, 1.5], 900)
