"""Figures as plotly ``go.Figure`` objects; nothing here calls ``.show()``, runs a model or computes a metric.

The Fig. 6/7 figures draw an analysis result (:mod:`vitlab.analysis.distance`, ``filters``,
``positions``, ``rollout``), the others the records of runs. Every figure is laid out by
:func:`vitlab.views.style.layout` and every tiled image by :func:`vitlab.views.style.tile`;
colours come from the records' ``family``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..analysis import metrics
from ..analysis.distance import DistanceResult
from ..analysis.filters import FiltersResult
from ..analysis.positions import PositionResult
from ..training import mpp
from .style import (duration, family_color, family_shades, integer_ticks, json_safe, layout, mosaic_axes, number,
                    spread_text, square_axes, table, tile)
from ..records import (FAMILY_ORDER, InsideView, ProbeRecord, Recipes, RunInside, RunRecord, check_one_grid,
                       group_spread, spread)


def tile_mosaic(tiles: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Lay (A, B, r, c) tiles out as one image of A x B tiles with 1-pixel NaN gaps.

    Returns ``(z, custom)``: ``z`` (A*(r+1) - 1, B*(c+1) - 1) and, per pixel, the tile
    index (a, b) and the position (y, x) inside the tile it shows, 1-based for display
    (-1 in gaps). A position similarity (R, C, R, C) gives Fig. 7 (center)'s layout.
    Figures pass ``z`` through :func:`json_safe`, as NaN is not valid JSON.
    """
    z, index = tile(tiles.detach().cpu().float().numpy(), np.nan)
    return z, np.where(index >= 0, index + 1, -1).astype(np.int32)


def mosaic_tile(shape: tuple[int, ...], x: float, y: float) -> tuple[int, int] | None:
    """The (a, b) tile of :func:`tile_mosaic` for ``shape`` (A, B, r, c) under pixel (x, y).

    None in a gap or outside the mosaic.
    """
    a_n, b_n, rows, cols = shape
    i, ry = divmod(int(round(y)), rows + 1)
    j, rx = divmod(int(round(x)), cols + 1)
    if ry == rows or rx == cols or not (0 <= i < a_n and 0 <= j < b_n):
        return None
    return i, j


def _uniform_line(uniform: float, xs: Sequence[float], width: float | None = None, hover: bool = True,
                 **extra) -> go.Scatter:
    """The uniform-attention reference of every distance figure: a dashed black line at ``uniform`` pixels over ``xs``.

    ``width``: of the line (plotly's default without); ``hover``: say the value on hover (else
    no hover); ``extra`` goes on the trace as is (e.g. ``showlegend``).
    """
    line = dict(dash="dash", color="black") if width is None else dict(dash="dash", color="black", width=width)
    return go.Scatter(x=list(xs), y=[uniform, uniform], mode="lines", line=line,
                      name=f"uniform attention ({uniform:.1f} px)",
                      hovertemplate=f"uniform attention: {uniform:.1f} px<extra></extra>" if hover else None,
                      hoverinfo=None if hover else "skip", **extra)


def _scores_text(result: PositionResult) -> str:
    """The structure and mirror scores of a position result, one line each (``<br>``), each beside the
    mean [min, max] over seeds of random-initialised models' when the result has them."""
    s, m, reference = result.structure, result.mirror, result.reference
    lines = [f"nearby patches more similar, Spearman ρ(similarity, -distance): {number(s.closeness, 2)}",
             f"same row or column more similar, partial ρ given distance: {number(s.row_column, 2)}",
             f"similarity to the mirror position {number(m.mirror, 2)}, to neighbours {number(m.neighbour, 2)}"]
    if reference:
        init = f"random init ({len(reference)} seeds)"
        lines[0] += f" · {init} {spread_text([r.closeness for r, _ in reference])}"
        lines[1] += f" · {init} {spread_text([r.row_column for r, _ in reference])}"
        lines[2] += (f" · {init} {spread_text([r.mirror for _, r in reference])}, "
                     f"{spread_text([r.neighbour for _, r in reference])}")
    return "<br>".join(lines)


def position_similarity_figure(result: PositionResult, title: str = "Position embedding similarity") -> go.Figure:
    """Paper Fig. 7 (center): one small heatmap per patch, tiled by the patch's position.

    Tile (i, j) shows the cosine similarity of patch (i, j)'s position embedding with every
    other patch's (``result.sim``, :func:`vitlab.analysis.positions.position_analysis`). Under the
    mosaic: its structure and mirror scores, beside those of random-initialised models of the
    architecture when the result has them.
    """
    sim = result.sim
    rows, cols = sim.shape[:2]
    z, custom = tile_mosaic(sim)
    fig = go.Figure(go.Heatmap(
        z=json_safe(z), customdata=custom, zmin=-1, zmax=1, colorscale="Viridis", hoverongaps=False,
        colorbar=dict(title=dict(text="Cosine<br>similarity", side="right")),
        hovertemplate="query patch (row %{customdata[0]}, col %{customdata[1]})<br>"
                      "key patch (row %{customdata[2]}, col %{customdata[3]})<br>similarity %{z:.3f}<extra></extra>",
    ))
    layout(fig, title, 680, 660, margin=(70, 20, 50, 110), plot_bgcolor="white")
    fig.add_annotation(text=_scores_text(result), xref="paper", yref="paper", x=0, y=0, yshift=-48,
                       xanchor="left", yanchor="top", align="left", showarrow=False, font=dict(size=11))
    mosaic_axes(fig, (rows, cols), (rows, cols), ("Input patch column", "Input patch row"))
    return fig


def patch_similarity_figure(result: PositionResult, row: int, col: int, title: str | None = None) -> go.Figure:
    """One patch's position-embedding similarity map, large, with the patch marked.

    ``row`` and ``col`` are 0-based patch indices into ``result.sim`` (rows, cols, rows, cols).
    """
    sim = result.sim
    rows, cols = sim.shape[:2]
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


def embedding_filters_figure(result: FiltersResult, cols: int = 7,
                             title: str = "Principal components of the patch-embedding filters") -> go.Figure:
    """Paper Fig. 7 (left): each of the first ``result.k`` principal components shown as an RGB patch.

    Each component of ``result.filters`` (k, 3, P, P) is min-max scaled to the full colour range
    on its own; the hover gives its explained-variance ratio.
    """
    filters, ratio = result.filters, result.ratio[: result.k]
    k, channels, p, _ = filters.shape
    if channels != 3:
        raise ValueError(f"RGB display needs 3 input channels, the filters have {channels}")
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
                   xaxis=dict(visible=False), yaxis=dict(visible=False))


def explained_variance_figure(result: FiltersResult, title: str = "Explained variance") -> go.Figure:
    """Explained-variance ratio of each of the first ``result.k`` principal components, with the cumulative sum.

    With a random-init reference, its cumulative curve is drawn as a dashed mean within a grey
    min-max band over seeds, and the title gives both models' share of the first k components.
    """
    r = result.ratio[: result.k].detach().double().numpy()
    idx = list(range(1, len(r) + 1))
    fig = go.Figure([go.Bar(x=idx, y=r.tolist(), name="component"),
                     go.Scatter(x=idx, y=np.cumsum(r).tolist(), name="cumulative", mode="lines+markers")])
    if result.reference is not None:
        ref = result.reference[:, : result.k].detach().double().numpy().cumsum(1)  # (seeds, k)
        name = f"random init, cumulative ({len(ref)} seeds)"
        fig.add_trace(go.Scatter(x=idx + idx[::-1], y=ref.max(0).tolist() + ref.min(0)[::-1].tolist(),
                                 fill="toself", mode="lines", line=dict(width=0), fillcolor="rgba(128, 128, 128, 0.3)",
                                 hoverinfo="skip", showlegend=False, legendgroup="init"))
        fig.add_trace(go.Scatter(x=idx, y=ref.mean(0).tolist(), name=name, mode="lines", legendgroup="init",
                                 line=dict(dash="dash", color="gray")))
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


def _reference_lines(result: DistanceResult, name: str, cnn: str) -> dict[str, tuple]:
    """The receptive-field lines of Fig. 7 (right): the CNN's blocks spread evenly over depths 1..depth (grey
    dots), then a hybrid's CNN stem window at every depth (dash-dot green: each token sees it before any attention)."""
    lines, depth, fields = {}, result.depth, result.cnn_fields
    if fields:
        xs = [1 + i * (depth - 1) / max(len(fields) - 1, 1) for i in range(len(fields))]
        lines[f"{cnn} receptive field"] = (xs, [r for _, r in fields], [block for block, _ in fields])
    if result.token_field is not None:
        pixels = result.token_field
        style = dict(dash="dashdot", color=family_color("hybrid", 2))  # apart from a CNN's grey receptive fields
        lines[f"{name}'s CNN stem receptive field ({pixels:.0f} px)"] = (
            [1, depth], [pixels, pixels], ["the tokens' CNN window (every layer's input)"] * 2, style)
    return lines


def _reference_traces(fig: go.Figure, reference: dict[str, tuple], top: float) -> None:
    """Reference curves (grey dots unless a fourth element gives the line's style), clipped at ``top``
    with a note of where they leave the plot."""
    for name, (xs, ys, *rest) in reference.items():
        names = rest[0] if rest else [f"depth {x:g}" for x in xs]
        style = rest[1] if len(rest) > 1 else dict(dash="dot", color="gray")
        fig.add_trace(go.Scatter(
            x=xs, y=[min(y, top) for y in ys], mode="lines+markers", name=name, customdata=list(zip(names, ys)),
            line=style, cliponaxis=False,
            marker=dict(symbol=["triangle-up" if y > top else "circle" for y in ys]),  # up: clipped
            hovertemplate="%{customdata[0]}<br>%{customdata[1]:.0f} px<extra>" + name + "</extra>"))
        over = [i for i, y in enumerate(ys) if y > top]
        if over:
            fig.add_annotation(xref="paper", x=0.01, y=top, xanchor="left", yanchor="top", showarrow=False,
                               font=dict(color="gray", size=11),
                               text=f"beyond {top:.0f} px from {names[over[0]]} on (up to {max(ys):.0f} px)")


def _random_init_band(fig: go.Figure, rows: torch.Tensor, random_init: torch.Tensor) -> float:
    """Shade min..max over seeds and heads of ``random_init`` (seeds, layers, heads) per layer; returns the top."""
    r = random_init.detach().float()
    name = f"random init ({len(r)} seed{'s' if len(r) != 1 else ''})"
    r = r.transpose(0, 1).flatten(1)  # (layers, seeds*heads)
    low, high = r.amin(1), r.amax(1)  # (layers,)
    xs = rows.tolist() if len(rows) > 1 else [rows.item() - 0.4, rows.item() + 0.4]  # one layer: a short band
    lo, hi = (low.tolist(), high.tolist()) if len(rows) > 1 else (2 * low.tolist(), 2 * high.tolist())
    fig.add_trace(go.Scatter(
        x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", mode="lines", name=name, line=dict(width=0),
        fillcolor="rgba(128, 128, 128, 0.25)", hoverinfo="skip"))
    return float(high.max())


def _distance_heads(distance: torch.Tensor, rows: torch.Tensor, depth: int, uniform: float,
                    random_init: torch.Tensor | None = None) -> tuple[go.Figure, float]:
    """The random-init band, the uniform line and one trace of dots per head (layers, heads); returns the
    figure and the highest value drawn."""
    d = distance.detach().float()
    fig = go.Figure()
    highest = float(d.max())
    if random_init is not None:  # drawn first: under the heads
        highest = max(highest, _random_init_band(fig, rows, random_init))
    fig.add_trace(_uniform_line(uniform, [0.5, depth + 0.5], width=1.5))
    highest = max(highest, uniform)
    for h in range(d.shape[1]):
        fig.add_trace(go.Scatter(
            x=rows.numpy(), y=d[:, h].numpy(), mode="markers", name=f"head {h + 1}", marker=dict(size=9, opacity=0.85),
            hovertemplate=f"layer %{{x}}, head {h + 1}<br>%{{y:.1f}} px<extra></extra>"))
    return fig, highest


def _distance_layout(fig: go.Figure, title: str, depth: int, top: float) -> go.Figure:
    return layout(fig, title, 640, 440, xaxis=dict(title="Network depth (layer)", range=[0.5, depth + 0.5], dtick=1),
                  yaxis=dict(title="Mean attention distance (pixels)", range=[0, top]))


def attention_distance_figure(result: DistanceResult, title: str = "Mean attention distance by head and depth",
                              name: str = "the model", cnn: str = "ResNet") -> go.Figure:
    """Paper Fig. 7 (right): each head's mean attention distance against network depth, with its references.

    Draws :func:`vitlab.analysis.distance.distance_analysis`'s result: each head's mean over the
    images (layers shown 1-based), the uniform-attention line, the min-max band of the
    random-initialised models per layer, a CNN's receptive fields (dotted; points above the top,
    the image's diagonal, are clipped to it) and a hybrid's CNN stem window.

    Args:
        name, cnn: the model's and the CNN's names, for the legend.
    """
    rows = torch.tensor(result.layers).float() + 1
    fig, highest = _distance_heads(result.mean, rows, result.depth, result.uniform, result.random_init)
    top = result.diagonal if result.diagonal is not None else highest * 1.1
    _reference_traces(fig, _reference_lines(result, name, cnn), top)
    return _distance_layout(fig, title, result.depth, top)


def inside_distance_figure(view: InsideView, title: str = "Mean attention distance by head and depth") -> go.Figure:
    """Fig. 7 (right) of one recorded inside view (:class:`~vitlab.records.InsideView`): its heads and uniform attention."""
    d = torch.tensor(view.distance)  # (layers, heads)
    fig, highest = _distance_heads(d, torch.arange(len(d)).float() + 1, len(d), view.uniform)
    return _distance_layout(fig, title, len(d), highest * 1.1)


def attention_overlay_figure(image: torch.Tensor, mask: torch.Tensor, title: str = "",
                             marker: tuple[int, int] | None = None, opacity: float = 0.55,
                             scale: str = "attention") -> go.Figure:
    """An image (left) and the same image under a per-patch map (right), e.g. attention rollout (Fig. 6).

    Args:
        image: uint8 (3, H, W). mask: (rows, cols), one value per patch, shown with its own
            colour range and a colour bar titled ``scale``. marker: optional (row, col) patch
            to outline (0-based). The heatmap is the figure's last trace.
    """
    _, h, w = image.shape
    rows, cols = mask.shape
    ph, pw = h / rows, w / cols
    pixels = image.permute(1, 2, 0).cpu().numpy()
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.03)
    fig.add_trace(go.Image(z=pixels, hoverinfo="skip"), 1, 1)
    fig.add_trace(go.Image(z=pixels, hoverinfo="skip"), 1, 2)
    fig.add_trace(go.Heatmap(
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
    """A (layers, heads) grid of per-patch attention maps, each scaled to its own maximum.

    Args:
        maps: (L, H, rows, cols) attention of the class token (or any query) over patches.
        layers: block indices of the rows (0-based), for labels.
    """
    n_layers, heads, rows, cols = maps.shape
    z, custom = tile_mosaic(metrics.scale_to_max(maps))
    fig = go.Figure(go.Heatmap(
        z=json_safe(z), customdata=custom, zmin=0, zmax=1, colorscale="Inferno", hoverongaps=False,
        colorbar=dict(title=dict(text="share of<br>map's max", side="right")),
        hovertemplate="layer row %{customdata[0]}, head %{customdata[1]}<br>"
                      "patch (row %{customdata[2]}, col %{customdata[3]})<br>%{z:.2f} of max<extra></extra>",
    ))
    layout(fig, title, min(900, 90 * heads + 160), min(1400, 90 * n_layers + 120), margin=(70, 20, 50, 50),
            plot_bgcolor="white")
    mosaic_axes(fig, (n_layers, heads), (rows, cols), ("head", "layer"),
                 [str((layers[i] if layers else i) + 1) for i in range(n_layers)])
    return fig


def training_curves_figure(records: list[dict] | None = None, title: str = "Training",
                           mixed: bool = False, objective: str = "classify") -> go.Figure:
    """Loss and train/test accuracy per epoch from a run's metrics records (may be empty).

    Args:
        mixed: the run mixes images (mixup/CutMix): its train accuracy counts each image's
            dominant label, and the legend says so.
        objective: ``"mpp"``: a masked-patch-prediction run, whose accuracies count corrupted
            patches with the right 3-bit colour (the legend and titles say so).
    """
    records = records or []
    epochs = [r["epoch"] for r in records]
    colours = objective == "mpp"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "loss (cross-entropy over 512 colours)" if colours else "loss",
        "masked-patch colour accuracy" if colours else "accuracy"))
    fig.add_trace(go.Scatter(x=epochs, y=[r["loss"] for r in records], name="train loss", mode="lines+markers"), 1, 1)
    train_name = "train accuracy (dominant label of mixed images)" if mixed else "train accuracy"
    if colours:
        train_name = "train images' corrupted patches"
    test_name = "test images' corrupted patches" if colours else "test accuracy"
    for key, name in (("train_accuracy", train_name), ("test_accuracy", test_name)):
        fig.add_trace(go.Scatter(x=epochs, y=[r.get(key) for r in records], name=name, mode="lines+markers"), 1, 2)
    layout(fig, title, 900, 360, margin=(60, 20, 70, 50))
    fig.update_xaxes(title_text="epoch", **integer_ticks(max(epochs, default=1)))
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    return fig


def zoo_table(zoo: dict[str, dict]) -> go.Figure:
    """The zoo as a table: name, family, description, parameters, recorded test accuracy ("untrained" without).

    A pre-trained encoder (objective ``"mpp"``) has no classifier: its masked-patch colour accuracy is shown, named.
    """
    names = list(zoo)

    def accuracy(entry: dict) -> str:
        if entry.get("test_accuracy") is None:
            return "untrained"
        if entry.get("objective") == "mpp":
            return f"no head; masked colours {entry['test_accuracy']:.1%}"
        return f"{entry['test_accuracy']:.1%}"

    acc = [accuracy(zoo[n]) for n in names]
    return table(["name", "family", "architecture", "parameters", "CIFAR-10 test accuracy"],
                  [names, [zoo[n]["family"] for n in names], [zoo[n]["description"] for n in names],
                   [f"{zoo[n]['params']:,}" for n in names], acc], [1.3, 0.6, 4.4, 0.9, 1.5], 900)


# --- ViT vs ResNet: data size, compute, probes, CKA ------------------------------------


def _by_size(runs: list[RunRecord]) -> dict[int, list[RunRecord]]:
    groups: dict[int, list[RunRecord]] = {}
    for r in sorted(runs, key=lambda r: r.subset_size):
        groups.setdefault(r.subset_size, []).append(r)
    return groups


#: Marker per family in the sweep's figures (runs fine-tuned from pre-trained weights: diamonds).
_FAMILY_SYMBOLS = {"vit": "circle", "hybrid": "triangle-up", "resnet": "square"}


def sweep_figure(records: list[RunRecord], x: str = "subset_size", models: list[str] | None = None,
                 title: str | None = None, shots: int | None = None) -> go.Figure:
    """Accuracy against training images or training FLOPs (log axis), per model (paper Fig. 3 and 5).

    Points are means over seeds with error bars of one standard deviation; the hover
    shows the number of seeds, epochs and the time per run.

    Args:
        records: sweep runs (:func:`vitlab.records.read_runs`).
        x: ``"subset_size"`` (training images) or ``"train_flops"``.
        models: the series to draw, by :attr:`~vitlab.records.RunRecord.label` (default all); ViTs first,
            then hybrids, then ResNets.
        shots: None for test accuracy, or k for the k-shot probe accuracy of the runs'
            final representation (paper Fig. 4); runs without it are left out.
    """
    if x not in ("subset_size", "train_flops"):
        raise ValueError(f"x must be 'subset_size' or 'train_flops', got {x!r}")
    value = (lambda r: r.test_accuracy) if shots is None else (lambda r: r.fewshot.get(shots))
    records = [r for r in records if value(r) is not None]
    family = {r.label: r.family for r in records}  # runs fine-tuned from pre-trained weights are series of their own
    names = [n for n in sorted(family, key=lambda m: (FAMILY_ORDER.get(family[m], len(FAMILY_ORDER)), m))
             if models is None or n in models]
    fig, shade = go.Figure(), {f: 0 for f in family.values()}
    for name in names:
        groups = _by_size([r for r in records if r.label == name])
        stats = [spread(value(r) for r in runs) for runs in groups.values()]
        seconds = [spread(r.wall_seconds for r in runs).mean for runs in groups.values()]
        custom = [[len(runs), runs[0].epochs, size, s / 60, duration(s)]
                  for (size, runs), s in zip(groups.items(), seconds)]
        color, shade[family[name]] = family_color(family[name], shade[family[name]]), shade[family[name]] + 1
        fig.add_trace(go.Scatter(
            x=[spread(getattr(r, x) for r in runs).mean for runs in groups.values()], y=[s.mean for s in stats],
            mode="lines+markers", name=f"{name} ({family[name]})", customdata=custom, line=dict(color=color),
            error_y=dict(type="data", array=[s.std for s in stats], visible=True),
            marker=dict(size=9, color=color, symbol="diamond" if "←" in name else _FAMILY_SYMBOLS.get(family[name],
                                                                                                   "square")),
            hovertemplate=("%{customdata[2]:,} images, %{customdata[1]} epochs<br>accuracy %{y:.1%} "
                           "(%{customdata[0]} seed(s))<br>%{customdata[4]} per run<extra>" + name + "</extra>")))
    by_size = x == "subset_size"
    return layout(
        fig, title or ("Accuracy vs training-set size" if by_size else "Accuracy vs training compute"), 900, 440,
        xaxis=dict(type="log", title="Training images (class-stratified CIFAR-10 subset)" if by_size
                   else "Training FLOPs (forward + backward, all epochs)"),
        yaxis=dict(title="CIFAR-10 test accuracy (10,000 images)" if shots is None
                   else f"{shots}-shot linear probe accuracy", tickformat=".0%", rangemode="tozero"))


def sweep_table(records: list[RunRecord]) -> go.Figure:
    """The sweep as a table: per model and subset size, epochs, accuracy (mean ± std over seeds), FLOPs, time."""
    columns: list[list] = [[] for _ in range(7)]
    for name in sorted({r.label for r in records}):
        for size, runs in _by_size([r for r in records if r.label == name]).items():
            acc, flops = spread(r.test_accuracy for r in runs), spread(r.train_flops for r in runs)
            accuracy = f"{acc.mean:.1%}" + (f" ± {acc.std:.1%}" if acc.n > 1 else "")
            row = [name, f"{size:,}", runs[0].epochs, len(runs), accuracy, f"{flops.mean:.2e}",
                   duration(spread(r.wall_seconds for r in runs).mean)]
            for column, value in zip(columns, row):
                column.append(value)
    return table(["model", "training images", "epochs", "seeds", "test accuracy", "training FLOPs", "time per run"],
                  columns, [1.4, 1.1, 0.7, 0.6, 1.3, 1.1, 1.0], 860)


def probe_depth_figure(records: list[ProbeRecord], shots: int, title: str | None = None) -> go.Figure:
    """Few-shot probe accuracy against relative depth, one curve per model and pooling.

    Depth is the layer's index over the model's last index (0 = first listed layer,
    1 = the last), so a 6-block ViT and a 5-stage ResNet share an axis. Error bars are
    one standard deviation over seeds.
    """
    chosen = [r for r in records if r.shots == shots]
    if not chosen:
        raise ValueError(f"no probe records with {shots} shots; have {sorted({r.shots for r in records})}")
    fig, color = go.Figure(), family_shades()
    for model in dict.fromkeys(r.model for r in chosen):
        mine = [r for r in chosen if r.model == model]
        last = max(r.depth for r in mine) or 1
        for pooling in dict.fromkeys(r.pooling for r in mine):
            stats = sorted(group_spread([r for r in mine if r.pooling == pooling], lambda r: (r.depth, r.layer),
                                        lambda r: r.accuracy).items())
            fig.add_trace(go.Scatter(
                x=[d / last for (d, _), _ in stats], y=[s.mean for _, s in stats], mode="lines+markers",
                name=f"{model} · {pooling}", error_y=dict(type="data", array=[s.std for _, s in stats], visible=True),
                line=dict(color=color(mine[0].family), dash="dash" if pooling == "mean" else "solid"),
                customdata=[[layer, s.n] for (_, layer), s in stats],
                hovertemplate="%{customdata[0]}: %{y:.1%} (%{customdata[1]} seeds)<extra>" + model + "</extra>"))
    return layout(fig, title or f"{shots}-shot linear probe accuracy by depth", 900, 420,
                   xaxis=dict(title="Relative depth (first layer 0, last 1)", range=[-0.05, 1.05]),
                   yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))


def probe_shots_figure(records: list[ProbeRecord], layers: list[tuple[str, str, str]],
                       title: str = "Accuracy vs shots") -> go.Figure:
    """Few-shot accuracy against shots per class (log axis) for chosen ``(model, layer, pooling)`` triples."""
    fig, color = go.Figure(), family_shades()
    for model, layer, pooling in layers:
        rows = [r for r in records if (r.model, r.layer, r.pooling) == (model, layer, pooling)]
        if not rows:
            raise ValueError(f"no probe records for {model} {layer} {pooling}")
        stats = sorted(group_spread(rows, lambda r: r.shots, lambda r: r.accuracy).items())
        fig.add_trace(go.Scatter(x=[k for k, _ in stats], y=[s.mean for _, s in stats], mode="lines+markers",
                                 name=f"{model} · {layer} · {pooling}", line=dict(color=color(rows[0].family)),
                                 error_y=dict(type="data", array=[s.std for _, s in stats], visible=True)))
    return layout(fig, title, 900, 400, xaxis=dict(title="Training images per class (shots)", type="log"),
                   yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))


def cka_figure(cka: torch.Tensor, names_y: list[str], names_x: list[str], label_y: str = "", label_x: str = "",
               title: str = "Linear CKA") -> go.Figure:
    """A CKA heatmap (Raghu et al. 2021, Fig. 1-2): rows are ``names_y`` layers, columns ``names_x``."""
    c = cka.detach().float().numpy()
    if c.shape != (len(names_y), len(names_x)):
        raise ValueError(f"CKA matrix {c.shape} does not match {len(names_y)} x {len(names_x)} layer names")
    fig = go.Figure(go.Heatmap(z=c, x=names_x, y=names_y, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title="CKA"), texttemplate="%{z:.2f}",
                               hovertemplate=f"{label_y} %{{y}} vs {label_x} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>"))
    return layout(fig, title, 560, 500, margin=(90, 20, 50, 80), xaxis=dict(title=label_x, type="category"),
                   yaxis=dict(title=label_y, type="category", autorange="reversed"))


# --- inside views across training -------------------------------------------------------------


def inside_views_figure(views: Sequence[InsideView], epoch: int | None = None,
                        title: str = "Attention distance across training") -> go.Figure:
    """The lowest layer's most local head and each layer's mean distance against epoch, with uniform attention.

    Args:
        views: a run's inside views (:func:`vitlab.training.inside.read`), in epoch order.
        epoch: marked with a vertical line (e.g. the epoch an explorer shows).
    """
    if not views:
        raise ValueError("no inside views to draw: train a ViT with inside views on (the default)")
    epochs = [v.epoch for v in views]
    uniform = views[-1].uniform
    fig = go.Figure(_uniform_line(uniform, [min(epochs), max(epochs)], width=1.5, hover=False))
    for layer in range(len(views[0].distance)):
        fig.add_trace(go.Scatter(
            x=epochs, y=[v.layer_means[layer] for v in views], mode="lines", name=f"layer {layer + 1}, mean of heads",
            line=dict(width=1.5), opacity=0.8,
            hovertemplate=f"epoch %{{x}}<br>layer {layer + 1} mean %{{y:.1f}} px<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=epochs, y=[v.lowest_local for v in views], mode="lines+markers", name="layer 1, most local head",
        line=dict(width=3, color="crimson"), hovertemplate="epoch %{x}<br>most local head %{y:.1f} px<extra></extra>"))
    if epoch is not None:
        fig.add_vline(x=epoch, line=dict(color="gray", dash="dot"))
    top = max(uniform, max(max(max(row) for row in v.distance) for v in views)) * 1.1
    return layout(fig, title, 640, 420, xaxis=dict(title="epoch", **integer_ticks(max(epochs))),
                  yaxis=dict(title="Mean attention distance (pixels)", range=[0, top]))


def inside_by_size_figure(runs: Sequence[RunInside], title: str | None = None) -> go.Figure:
    """Fig. 7 (right) against training-set size: what more data does to attention distance.

    Left: each layer's mean attention distance (mean over heads) against depth, one line per
    training-set size (darker: more images), with the uniform-attention line. Right: the
    lowest layer's most local head against the number of training images (log axis), with
    its 95% bootstrap interval over the probe images. One point per run; several seeds of a
    size are drawn as separate points.

    Args:
        runs: :class:`~vitlab.records.RunInside` records of ViT or hybrid runs (one architecture),
            drawn in their family's colour.
    """
    if not runs:
        raise ValueError("no inside views to draw: run `python -m vitlab sweep` on ViTs first")
    runs = sorted(runs, key=lambda r: (r.subset_size, r.seed))
    sizes = sorted({r.subset_size for r in runs})
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "mean distance per layer", "lowest layer's most local head"))
    uniform = runs[0].view.uniform
    depth = len(runs[0].view.distance)
    red, green, blue = (int(family_color(runs[0].family, 0)[i:i + 2], 16) for i in (1, 3, 5))
    dark = family_color(runs[0].family, 2)
    for r in runs:
        shade = 0.25 + 0.75 * sizes.index(r.subset_size) / max(1, len(sizes) - 1)
        colour = f"rgba({red}, {green}, {blue}, {shade:.2f})"
        fig.add_trace(go.Scatter(
            x=list(range(1, depth + 1)), y=r.view.layer_means, mode="lines+markers", line=dict(color=colour),
            name=f"{r.subset_size:,} images" + (f", seed {r.seed}" if r.seed else ""), legendgroup=str(r.subset_size),
            hovertemplate=f"{r.subset_size:,} images: layer %{{x}}, %{{y:.1f}} px<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(
        x=[r.subset_size for r in runs], y=[r.view.lowest_local for r in runs], mode="markers+lines",
        name="lowest layer, most local head", marker=dict(size=9, color=dark), line=dict(color=dark),
        error_y=dict(type="data", symmetric=False, array=[r.lowest_high - r.view.lowest_local for r in runs],
                     arrayminus=[r.view.lowest_local - r.lowest_low for r in runs]),  # 95% interval over images
        customdata=[[r.seed, r.test_accuracy] for r in runs],
        hovertemplate="%{x:,} images, seed %{customdata[0]}: %{y:.1f} px (accuracy %{customdata[1]:.1%})"
                      "<extra></extra>"), 1, 2)
    for col, xs in ((1, [0.5, depth + 0.5]), (2, [sizes[0] / 1.3, sizes[-1] * 1.3])):
        fig.add_trace(_uniform_line(uniform, xs, showlegend=col == 1), 1, col)
    top = max(uniform, *(max(r.view.layer_means) for r in runs)) * 1.1
    fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5], row=1, col=1)
    fig.update_xaxes(title_text="training images", type="log", row=1, col=2)
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top], row=1, col=1)
    fig.update_yaxes(title_text="pixels", range=[0, top], row=1, col=2)
    model = runs[0].model
    return layout(fig, title or f"{model}: attention distance against training-set size (paper's convention)",
                  980, 460, margin=(90, 20, 60, 60))


#: One colour per arm of a recipe comparison, in its order; seeds are told apart by dash and symbol.
ARM_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
_SEED_DASH, _SEED_SYMBOL = ("solid", "dash", "dot", "dashdot"), ("circle", "diamond", "square", "cross")


def recipes_figure(comparison: Recipes, epoch: int, title: str | None = None) -> go.Figure:
    """Fig. 7 (right) for each arm of a recipe comparison side by side, at ``epoch``.

    One panel per arm: every head's mean attention distance against depth for each seed
    (symbols), each seed's mean over heads as a line, and uniform attention (dashed). The
    y axis is shared, so the arms compare at a glance.
    """
    arms = list(comparison.arms)
    fig = make_subplots(rows=1, cols=len(arms), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[f"{a}" for a in arms])
    uniform = comparison.runs[0].views[-1].uniform
    depth = len(comparison.runs[0].views[-1].distance)
    top = uniform
    for col, arm in enumerate(arms, 1):
        colour = ARM_COLOURS[(col - 1) % len(ARM_COLOURS)]
        for k, run in enumerate(comparison.arms[arm]):
            view = run.view_at(epoch)
            d = torch.tensor(view.distance)  # (layers, heads)
            top = max(top, float(d.max()))
            offset = 0.12 * (k - (len(comparison.arms[arm]) - 1) / 2)  # seeds side by side within a layer
            layers = torch.arange(1, depth + 1).float()
            fig.add_trace(go.Scatter(
                x=(layers[:, None] + offset).expand_as(d).flatten().numpy(), y=d.flatten().numpy(), mode="markers",
                marker=dict(color=colour, size=8, opacity=0.75, symbol=_SEED_SYMBOL[k % 4]),
                name=f"{arm}, seed {run.seed}: heads", legendgroup=f"{arm}{run.seed}",
                customdata=[[h + 1] for _ in range(depth) for h in range(d.shape[1])],
                hovertemplate=f"{arm}, seed {run.seed}<br>layer %{{x:.0f}}, head %{{customdata[0]}}: %{{y:.1f}} px"
                              "<extra></extra>"), 1, col)
            fig.add_trace(go.Scatter(
                x=layers.numpy() + offset, y=view.layer_means, mode="lines", line=dict(color=colour, width=1.5,
                                                                                     dash=_SEED_DASH[k % 4]),
                name=f"{arm}, seed {run.seed}: mean of heads", legendgroup=f"{arm}{run.seed}", showlegend=False,
                hovertemplate=f"{arm}, seed {run.seed}: layer %{{x:.0f}} mean %{{y:.1f}} px<extra></extra>"), 1, col)
        fig.add_trace(_uniform_line(uniform, [0.5, depth + 0.5], width=1.5, showlegend=col == 1), 1, col)
        fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5], row=1, col=col)
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top * 1.1], row=1, col=1)
    fig.update_yaxes(range=[0, top * 1.1])
    model = comparison.runs[0].config.get("model", "ViT")
    return layout(fig, title or f"{model} at epoch {epoch}: mean attention distance per head, by recipe",
                  max(640, 420 * len(arms)), 460, margin=(70, 20, 90, 60))


def recipes_timeline_figure(comparison: Recipes, epoch: int | None = None,
                            title: str | None = None) -> go.Figure:
    """The runs of a recipe comparison across training: lowest layer's most local head and test accuracy.

    Left: the lowest layer's most local head against epoch, one line per run (colour: arm,
    dash: seed), with uniform attention; the final models' 95% intervals over the probe
    images as error bars at the last epoch. Right: test accuracy against epoch.

    Args:
        epoch: marked with a vertical line (the epoch an explorer shows).
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "lowest layer's most local head", "test accuracy"))
    uniform = comparison.runs[0].views[-1].uniform
    last = max(r.epochs[-1] for r in comparison.runs)
    for i, (arm, runs) in enumerate(comparison.arms.items()):
        colour = ARM_COLOURS[i % len(ARM_COLOURS)]
        for k, run in enumerate(runs):
            name, dash = f"{arm}, seed {run.seed}", _SEED_DASH[k % 4]
            lowest = [v.lowest_local for v in run.views]
            fig.add_trace(go.Scatter(
                x=run.epochs, y=lowest, mode="lines+markers", line=dict(color=colour, dash=dash), name=name,
                legendgroup=name, error_y=dict(type="data", symmetric=False, visible=True,
                                               array=[0.0] * (len(lowest) - 1) + [run.lowest_high - lowest[-1]],
                                               arrayminus=[0.0] * (len(lowest) - 1) + [lowest[-1] - run.lowest_low]),
                hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.2f}} px<extra></extra>"), 1, 1)
            fig.add_trace(go.Scatter(
                x=[m["epoch"] for m in run.metrics], y=[m["test_accuracy"] for m in run.metrics], mode="lines+markers",
                line=dict(color=colour, dash=dash), name=name, legendgroup=name, showlegend=False,
                hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.1%}}<extra></extra>"), 1, 2)
    fig.add_trace(_uniform_line(uniform, [1, last]), 1, 1)
    if epoch is not None:
        for col in (1, 2):
            fig.add_vline(x=epoch, line=dict(color="gray", dash="dot"), row=1, col=col)
    high = max(uniform, *(r.lowest_high for r in comparison.runs), *(v.lowest_local for r in comparison.runs
                                                                       for v in r.views))
    fig.update_xaxes(title_text="epoch", **integer_ticks(last))
    # From zero: how far below uniform attention a head gets is the finding, not the wiggle near it.
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, 1.1 * high], row=1, col=1)
    fig.update_yaxes(title_text="test accuracy", tickformat=".0%", row=1, col=2)
    model = comparison.runs[0].config.get("model", "ViT")
    return layout(fig, title or f"{model}: the recipes across training", 980, 440, margin=(70, 20, 90, 60))


# --- self-supervised pre-training: masked patch prediction (paper 4.6, B.1.2) --------------------


def pretraining_figure(records: list[dict], baselines: dict[str, float] | None = None,
                       title: str = "Masked patch prediction") -> go.Figure:
    """Pre-training loss and masked-patch colour accuracy per epoch, with the guesses that need no model.

    Args:
        records: the run's metrics log (:func:`vitlab.training.loop.read_metrics`).
        baselines: accuracy of guesses on the same test patches (:func:`vitlab.training.mpp.baselines`),
            drawn as dotted lines on the accuracy panel.
    """
    fig = training_curves_figure(records, title=title, objective="mpp")
    epochs = [r["epoch"] for r in records] or [1]
    xs = [min(epochs) - 0.5, max(epochs) + 0.5]
    for (name, value), dash in zip((baselines or {}).items(), ("dot", "dashdot", "longdash")):
        fig.add_trace(go.Scatter(x=xs, y=[value, value], mode="lines", line=dict(dash=dash, color="gray"),
                                 name=f"guess: {name} ({value:.1%})",
                                 hovertemplate=f"{name}: {value:.1%}<extra></extra>"), 1, 2)
    return fig


def _colour_tiles(classes: torch.Tensor, grid: tuple[int, int], patch: int) -> np.ndarray:
    """(H, W, 3) uint8 image of 3-bit colour classes (patches,) drawn at the centre of their level bins."""
    k = mpp.LEVELS
    levels = torch.stack([classes // k**2, classes // k % k, classes % k], -1)  # (patches, 3)
    rgb = ((levels.float() + 0.5) * 256 / mpp.LEVELS).round().clamp(0, 255).to(torch.uint8)
    tiles = rgb.view(*grid, 3).repeat_interleave(patch, 0).repeat_interleave(patch, 1)  # (H, W, 3)
    return tiles.numpy()


def mpp_example_figure(example: mpp.MaskedExample, title: str = "Masked patch prediction on test images") -> go.Figure:
    """What the objective asks, image by image: the input, its corruption, the 3-bit targets and the predictions.

    One row per image of ``example`` (:func:`vitlab.training.mpp.masked_example`): the image; what
    the encoder sees (masked patches grey, swapped patches showing the patch they took, unchanged
    ones as they are); each patch's 3-bit mean colour (the targets, drawn at the centre of their
    colour bins); and the model's prediction on the corrupted patches, titled with the share it
    got right (patches that are not scored are flat light grey). Corrupted patches are outlined
    in red on the input and the prediction.
    """
    e, patch = example, example.patch
    rows = len(e.pixels)
    columns = ("image", "encoder input", "target colours")
    titles = [name for n in range(rows) for name in ((*columns,) if n == 0 else ("", "", "")) + (
        f"prediction: {e.right[n]:.0%} right",)]
    fig = make_subplots(rows=rows, cols=4, horizontal_spacing=0.03, vertical_spacing=0.06, subplot_titles=titles)
    for n in range(rows):
        shown = _colour_tiles(e.predicted[n], e.grid, patch)
        kept = (~e.corrupted[n]).view(*e.grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1).numpy()
        shown[kept] = 225  # not scored
        for col, img in enumerate((e.pixels[n].numpy(), e.seen[n].numpy(), _colour_tiles(e.targets[n], e.grid, patch),
                                   shown), start=1):
            fig.add_trace(go.Image(z=img, hoverinfo="skip"), n + 1, col)
        for p in torch.nonzero(e.corrupted[n]).flatten().tolist():
            r, c = divmod(p, e.grid[1])
            for col in (2, 4):
                fig.add_shape(type="rect", x0=c * patch - 0.5, x1=(c + 1) * patch - 0.5, y0=r * patch - 0.5,
                              y1=(r + 1) * patch - 0.5, line=dict(color="red", width=1), row=n + 1, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=12)
    return layout(fig, title, 860, 90 + 200 * rows, margin=(10, 10, 90, 20))


def inside_comparison_figure(views: dict[str, InsideView], title: str = "Attention distance against depth",
                             families: dict[str, str] | None = None) -> go.Figure:
    """Fig. 7 (right) for several models side by side: each layer's mean and most local head, and uniform attention.

    Args:
        views: label -> the model's :class:`~vitlab.records.InsideView` (:func:`vitlab.training.inside.inside_view`),
            all on one grid of tokens (the same uniform-attention distance).
        families: label -> family (``"vit"``, ``"hybrid"``): those labels take their family's colour,
            as in the sweep's figures; the others take a fixed palette in order.
    """
    check_one_grid(views)
    fig = go.Figure()
    palette = iter(("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"))
    families = families or {}
    colours = [family_color(families[name], 0) if name in families else next(palette) for name in views]
    depth = max(len(v.distance) for v in views.values())
    for (name, view), colour in zip(views.items(), colours):
        layers = list(range(1, len(view.distance) + 1))
        fig.add_trace(go.Scatter(x=layers, y=view.layer_means, mode="lines+markers", line=dict(color=colour),
                                 name=f"{name}: mean over heads", legendgroup=name,
                                 hovertemplate=f"{name}, layer %{{x}}: mean %{{y:.1f}} px<extra></extra>"))
        fig.add_trace(go.Scatter(x=layers, y=[min(row) for row in view.distance], mode="lines+markers",
                                 line=dict(color=colour, dash="dot"), marker=dict(symbol="triangle-down"),
                                 name=f"{name}: most local head", legendgroup=name,
                                 hovertemplate=f"{name}, layer %{{x}}: most local head %{{y:.1f}} px<extra></extra>"))
    uniform = next(iter(views.values())).uniform
    fig.add_trace(_uniform_line(uniform, [0.5, depth + 0.5]))
    top = max(uniform, *(max(max(row) for row in v.distance) for v in views.values())) * 1.1
    fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5])
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top])
    return layout(fig, title, 820, 420)
