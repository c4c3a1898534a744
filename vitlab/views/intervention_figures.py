"""Figures (plotly) of the intervention results: logit lens, direct logit attribution, head ablation, activation
patching, attention distance against ablation effect, and head importance over training. Each draws the result it
is given; none runs a model or computes a metric beyond the result's own means and intervals."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..analysis.ablation import AblationResult, LinkResult
from ..analysis.lens import READINGS, AttributionResult, LensResult
from ..analysis.patching import PatchingResult
from ..analysis.references import bootstrap_interval
from ..records import InsideView
from .style import DASHES, integer_ticks, json_safe, layout, outline

#: What an ablation measures, as axis text.
MEASURES = {"accuracy": "accuracy drop", "logit": "true-class logit drop"}
_HEAD = re.compile(r"L\d+H\d+$")  # a head's part name in an AttributionResult
_LAYER_COLOURS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#b5de2b", "#fde725", "#e16462", "#fca636",
                  "#0d0887", "#9c179e", "#ed7953", "#f0f921")


def layer_colour(layer: int) -> str:
    """The colour of block ``layer`` (0-based) in every figure that colours heads by layer."""
    return _LAYER_COLOURS[layer % len(_LAYER_COLOURS)]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _rows(depth: int) -> list[str]:
    return ["embedding"] + [f"layer {i + 1}" for i in range(depth)]


def _band(fig: go.Figure, x: list, low: np.ndarray, high: np.ndarray, colour: str, row: int, col: int) -> None:
    """A shaded 95% interval between ``low`` and ``high``, drawn under its line."""
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(high) + list(low[::-1]), mode="lines", fill="toself",
                             fillcolor=colour, opacity=0.2, line=dict(width=0),
                             hoverinfo="skip", showlegend=False), row=row, col=col)


def lens_figure(result: LensResult, title: str = "Logit lens: each block read through the final norm and head"
                ) -> go.Figure:
    """Per layer (embedding first): top-1 accuracy with its 95% interval band, agreement with the final prediction,
    and KL to the final distribution; one line per reading (class token, mean patch token)."""
    fig = make_subplots(1, 3, subplot_titles=("top-1 accuracy (95% interval)", "agreement with final prediction",
                                              "KL(final ‖ lens), nats"), horizontal_spacing=0.08)
    x = list(range(result.depth + 1))
    names = _rows(result.depth)
    for r, reading in enumerate(result.readings):
        colour = ("#1f77b4", "#ff7f0e")[r % 2]
        label = READINGS[reading] + (" (the model's own)" if reading == result.pool else "")
        for col, field in enumerate(("correct", "agree", "kl"), 1):
            mean = _np(result.mean(field)[r])
            if field == "correct":
                low, high = (_np(v[r]) for v in result.interval(field))
                _band(fig, x, low, high, colour, 1, col)
            fig.add_trace(go.Scatter(
                x=x, y=mean, mode="lines+markers", name=label, legendgroup=reading, showlegend=col == 1,
                line=dict(color=colour, dash=DASHES[r % len(DASHES)]), customdata=names,
                hovertemplate=f"%{{customdata}}<br>{label}: %{{y:.3f}}<extra></extra>"), row=1, col=col)
    axis = dict(title="layer (0: embedding)", tickvals=x, ticktext=["emb"] + [str(i) for i in x[1:]])
    fig.update_xaxes(**axis)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    return layout(fig, f"{title} ({result.images} images)", 1020, 400, margin=(60, 20, 80, 60),
                  legend=dict(orientation="h", y=-0.25))


def _head_heatmap(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, what: str, **extra) -> go.Heatmap:
    """A layers x heads heatmap (layer 1 on top) whose hover gives each head's 95% interval."""
    depth, heads = values.shape
    custom = np.stack([_np(low), _np(high)], -1)
    return go.Heatmap(z=_np(values), x=list(range(1, heads + 1)), y=list(range(1, depth + 1)), customdata=custom,
                      hovertemplate=f"layer %{{y}}, head %{{x}}<br>{what} %{{z:.3f}}<br>"
                                    "95% interval %{customdata[0]:.3f} to %{customdata[1]:.3f}<extra></extra>",
                      **extra)


def _head_axes(fig: go.Figure, depth: int, heads: int, **where) -> None:
    fig.update_xaxes(title="head", **integer_ticks(heads), **where)
    fig.update_yaxes(title="layer", autorange="reversed", **integer_ticks(depth), **where)


def attribution_figure(result: AttributionResult, title: str = "Direct logit attribution") -> go.Figure:
    """Each head's mean contribution to the true-class logit and to the margin (true logit minus the mean of the
    others), layers x heads, and the other parts (embedding, each projection bias, each MLP) as bars with 95%
    intervals."""
    fig = make_subplots(1, 3, subplot_titles=("head → true-class logit", "head → margin over the others",
                                              "other parts → true-class logit"),
                        column_widths=[0.28, 0.28, 0.44], horizontal_spacing=0.12)
    heads = (result.head_true.double(), result.head_margin.double())
    bound = max(float(v.mean(0).abs().max()) for v in heads) or 1.0  # one colour scale for both heatmaps
    for col, values in enumerate(heads, 1):
        low, high = _interval(values)
        fig.add_trace(_head_heatmap(values.mean(0), low, high, "mean contribution", colorscale="RdBu", zmid=0,
                                    zmin=-bound, zmax=bound, showscale=col == 2,
                                    colorbar=dict(title="logit", x=0.575, thickness=12)), row=1, col=col)
        _head_axes(fig, result.depth, result.heads, row=1, col=col)
    others = [i for i, part in enumerate(result.parts) if not _HEAD.match(part)]
    mean = result.true[:, others].double().mean(0)
    low, high = _interval(result.true[:, others])
    fig.add_trace(go.Bar(x=[part_label(result.parts[i]) for i in others], y=_np(mean), marker_color="#7f7f7f",
                         showlegend=False,
                         error_y=dict(type="data", symmetric=False, array=_np(high - mean), arrayminus=_np(mean - low)),
                         hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=1, col=3)
    return layout(fig, f"{title} ({len(result.logit)} images; bars: mean logit with 95% intervals)", 1040, 440,
                  margin=(60, 60, 80, 100))


def part_label(part: str) -> str:
    """An attribution part's name for readers, layers from 1: "L0 mlp" -> "MLP 1", "L2 attn bias" -> "attn bias 3"."""
    if part == "embed":
        return "embedding"
    layer, _, what = part.partition(" ")
    return f"{'MLP' if what == 'mlp' else what} {int(layer[1:]) + 1}"


def _interval(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """95% bootstrap interval over images (the first dimension) of the mean: a result's own interval rule."""
    return bootstrap_interval(values.double())


def ablation_matrix_figure(result: AblationResult, measure: str = "accuracy", title: str = "Head ablation",
                           selected: tuple[int, int] | None = None) -> go.Figure:
    """Layers x heads: the mean drop when that head alone is ablated (hover: its 95% interval over images); the
    ``selected`` (layer, head), 0-based, outlined. Trace 0 is the heatmap (clickable in an explorer)."""
    mean = result.mean(f"head_{measure}")
    low, high = result.interval(f"head_{measure}")
    bound = max(float(mean.abs().max()), 1e-9)
    fig = go.Figure(_head_heatmap(mean, low, high, MEASURES[measure], colorscale="RdBu_r", zmid=0, zmin=-bound,
                                  zmax=bound, colorbar=dict(title=MEASURES[measure].replace(" ", "<br>"))))
    if selected is not None:
        layer, head = selected
        fig.add_trace(go.Scatter(x=[head + 1], y=[layer + 1], mode="markers", hoverinfo="skip", showlegend=False,
                                 marker=dict(symbol="square-open", size=26, color="black", line=dict(width=3))))
    _head_axes(fig, *result.shape)
    kind = f"{result.kind} ablation" + (f" (means of {result.reference_images} images)" if result.reference_images
                                        else "")
    return layout(fig, f"{title}: {kind}, {result.images} images", 640, 460, margin=(60, 20, 90, 50),
                  plot_bgcolor="white")


def ablation_branches_figure(result: AblationResult, measure: str = "accuracy",
                             title: str = "Whole branches and the top heads ablated") -> go.Figure:
    """Left: each block's whole attention and whole MLP ablated (bars with 95% intervals); right: the k most
    important heads ablated together, k = 1, 2, ... (line with its interval band)."""
    fig = make_subplots(1, 2, subplot_titles=("whole attention / MLP of a block", "the k most important heads"),
                        horizontal_spacing=0.12)
    layers = list(range(1, result.shape[0] + 1))
    for site, colour in (("attn", "#1f77b4"), ("mlp", "#d62728")):
        mean = result.mean(f"{site}_{measure}")
        low, high = result.interval(f"{site}_{measure}")
        fig.add_trace(go.Bar(x=layers, y=_np(mean), name="attention" if site == "attn" else "MLP",
                             marker_color=colour, hovertemplate="layer %{x}: %{y:.3f}<extra></extra>",
                             error_y=dict(type="data", symmetric=False, array=_np(high - mean),
                                          arrayminus=_np(mean - low))), row=1, col=1)
    top = getattr(result, f"top_{measure}")
    if top.shape[1]:
        ks = list(range(1, top.shape[1] + 1))
        low, high = result.interval(f"top_{measure}")
        _band(fig, ks, _np(low), _np(high), "#2ca02c", 1, 2)
        names = [f"+ layer {i + 1} head {h + 1}" for i, h in result.top_heads]
        fig.add_trace(go.Scatter(x=ks, y=_np(result.mean(f"top_{measure}")), mode="lines+markers", customdata=names,
                                 name="top k heads together", line=dict(color="#2ca02c"),
                                 hovertemplate="k = %{x} (%{customdata})<br>%{y:.3f}<extra></extra>"), row=1, col=2)
        fig.update_xaxes(title="k", **integer_ticks(len(ks)), row=1, col=2)
    fig.update_xaxes(title="layer", **integer_ticks(len(layers)), row=1, col=1)
    fig.update_yaxes(title=MEASURES[measure], row=1, col=1)
    return layout(fig, f"{title} ({result.kind} ablation, {result.images} images)", 900, 380, barmode="group",
                  legend=dict(orientation="h", y=-0.22))


def patching_figure(result: PatchingResult, title: str = "Activation patching") -> go.Figure:
    """Recovered fraction of the logit difference (0: corrupted, 1: clean). Residual patching: one heatmap per layer
    over the patch grid, the class token's value in each subplot's title; head patching: layers x heads."""
    said = (f"{result.corruption} corruption, {result.pairs} pairs kept, {result.dropped} dropped (gap under "
            f"{result.min_gap:g})")
    if result.what == "head":
        low, high = result.interval()
        fig = go.Figure(_head_heatmap(result.mean(), low, high, "recovered", colorscale="Viridis", zmin=0, zmax=1))
        _head_axes(fig, *result.mean().shape)
        return layout(fig, f"{title}, each head's output: {said}", 520, 440, margin=(60, 20, 70, 50))
    maps, mean = result.patch_maps(), result.mean()  # rows: entering each block, then after the last
    depth, cols = len(maps), min(len(maps), 7)
    rows = -(-depth // cols)
    names = [result.row_name(i) + (f"<br>class token {float(mean[i, 0]):.2f}" if result.prefix else "")
             for i in range(depth)]
    fig = make_subplots(rows, cols, subplot_titles=names, horizontal_spacing=0.02, vertical_spacing=0.12)
    for i in range(depth):
        fig.add_trace(go.Heatmap(z=_np(maps[i]), zmin=0, zmax=1, colorscale="Viridis", showscale=i == 0,
                                 colorbar=dict(title="recovered"), hovertemplate=(
                                     f"{result.row_name(i)}, patch (row %{{y}}, col %{{x}})<br>"
                                     "recovered %{z:.2f}"
                                     "<extra></extra>"),
                                 x=list(range(1, result.grid[1] + 1)), y=list(range(1, result.grid[0] + 1))),
                      row=i // cols + 1, col=i % cols + 1)
    outline(fig, [(c + 0.5, c + 1.5, r + 0.5, r + 1.5, 1, 1) for r, c in result.region],  # the corrupted patches
            line=dict(color="red", width=1))
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, autorange="reversed", constrain="domain", scaleanchor="x")
    for k in range(2, depth + 1):
        fig.update_yaxes(scaleanchor=f"x{k}", row=(k - 1) // cols + 1, col=(k - 1) % cols + 1)
    return layout(fig, f"{title}, the residual stream at each patch token entering each block: {said}",
                  min(1100, 180 * cols + 120), 220 * rows + 140, margin=(20, 20, 100, 20), font=dict(size=11))


def link_figure(links: Mapping[str, LinkResult], ablations: Mapping[str, AblationResult],
                uniform: Mapping[str, float], title: str = "Attention distance against ablation effect") -> go.Figure:
    """One panel per model: each head's mean attention distance (pixels, with the uniform-attention line) against
    its ablation effect (95% interval error bars), one point per head, coloured by layer."""
    names = list(links)
    fig = make_subplots(1, len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04)
    top = max(float(v) for v in uniform.values())
    for col, name in enumerate(names, 1):
        link, result = links[name], ablations[name]
        low, high = result.interval(f"head_{link.measure}")
        dist, eff = _np(link.distance), _np(link.effect)
        for layer in range(dist.shape[0]):
            heads = list(range(1, dist.shape[1] + 1))
            fig.add_trace(go.Scatter(
                x=dist[layer], y=eff[layer], mode="markers", name=f"layer {layer + 1}", legendgroup=str(layer),
                showlegend=col == 1, marker=dict(color=layer_colour(layer), size=9), customdata=heads,
                error_y=dict(type="data", symmetric=False, array=_np(high[layer]) - eff[layer],
                             arrayminus=eff[layer] - _np(low[layer]), thickness=1, color=layer_colour(layer)),
                hovertemplate=f"layer {layer + 1}, head %{{customdata}}<br>%{{x:.1f}} px<br>"
                              f"{MEASURES[link.measure]} %{{y:.3f}}<extra></extra>"), row=1, col=col)
        u = float(uniform[name])
        fig.add_vline(x=u, line=dict(dash="dash", color="black", width=1), row=1, col=col,
                      annotation_text=f"uniform {u:.1f} px", annotation_position="top left")
        fig.add_vline(x=link.split, line=dict(dash="dot", color="gray", width=1), row=1, col=col)
        top = max(top, float(dist.max()))
        fig.update_xaxes(title="mean attention distance (pixels)", range=[0, top * 1.08], row=1, col=col)
    fig.add_hline(y=0, line=dict(color="gray", width=1))
    measure = next(iter(links.values())).measure if links else "accuracy"
    fig.update_yaxes(title=f"{MEASURES[measure]} when ablated alone", row=1, col=1)
    return layout(fig, f"{title} (dotted: the median distance, local heads left of it)",
                  min(1200, 380 * len(names) + 140), 440, legend=dict(title="colour"))


def inside_ablation_figure(view: InsideView, title: str = "Head ablation") -> go.Figure:
    """The head-ablation matrix an inside view recorded at its epoch (mean ablation, accuracy drop)."""
    if view.head_ablation is None:
        raise ValueError(f"epoch {view.epoch}'s inside view holds no head ablation: train with the inside-view "
                         "evaluator's interventions on")
    z = np.asarray(view.head_ablation, dtype=float)
    bound = max(float(np.abs(z).max()), 1e-9)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(1, z.shape[1] + 1)), y=list(range(1, z.shape[0] + 1)),
                               colorscale="RdBu_r", zmid=0, zmin=-bound, zmax=bound,
                               colorbar=dict(title="accuracy<br>drop"),
                               hovertemplate="layer %{y}, head %{x}<br>accuracy drop %{z:.3f}<extra></extra>"))
    _head_axes(fig, *z.shape)
    return layout(fig, f"{title}, epoch {view.epoch} (mean ablation, {view.images} images)", 480, 420,
                  margin=(60, 20, 70, 50), plot_bgcolor="white")


def inside_lens_figure(views: Sequence[InsideView], epoch: int | None = None,
                       title: str = "Logit-lens accuracy across training") -> go.Figure:
    """Each layer's logit-lens top-1 accuracy against epoch (the views that recorded it), ``epoch`` marked."""
    shown = [v for v in views if v.lens_accuracy is not None]
    if not shown:
        raise ValueError("no inside view holds logit-lens accuracy: train with the inside-view evaluator's "
                         "interventions on")
    epochs = [v.epoch for v in shown]
    fig = go.Figure()
    for row, name in enumerate(_rows(len(shown[0].lens_accuracy) - 1)):
        fig.add_trace(go.Scatter(x=epochs, y=[v.lens_accuracy[row] for v in shown], mode="lines+markers", name=name,
                                 line=dict(color="#7f7f7f" if row == 0 else layer_colour(row - 1)),
                                 hovertemplate=f"epoch %{{x}}<br>{name}: %{{y:.3f}}<extra></extra>"))
    if epoch is not None:
        fig.add_vline(x=epoch, line=dict(color="gray", dash="dot"))
    return layout(fig, title, 640, 420, xaxis=dict(title="epoch", **integer_ticks(max(epochs))),
                  yaxis=dict(title="top-1 accuracy of the lens", range=[0, 1.02]))


def _short(name: str) -> str:
    """An image's name short enough for a small subplot's title: "CIFAR-10 test #44 (airplane)" -> "airplane"."""
    if name.endswith(")") and "(" in name:
        return name[name.rfind("(") + 1:-1]
    return name if len(name) <= 16 else name[:15] + "…"


def head_effect_figure(maps: torch.Tensor, images: torch.Tensor, names: Sequence[str], layer: int, head: int,
                       effect: tuple[float, float, float], measure: str = "accuracy") -> go.Figure:
    """One head's attention (``maps`` (images, rows, cols), what the prediction reads) over a few ``images`` (uint8
    (images, 3, H, W)), beside its ablation ``effect`` (mean, low, high)."""
    n = len(maps)
    fig = make_subplots(2, n + 1, specs=[[{} for _ in range(n)] + [{"rowspan": 2}], [{} for _ in range(n)] + [None]],
                        column_widths=[1.0] * n + [0.9], subplot_titles=[*map(_short, names[:n]), "ablation effect"],
                        horizontal_spacing=0.03, vertical_spacing=0.04)
    for i in range(n):
        fig.add_trace(go.Image(z=images[i].permute(1, 2, 0).cpu().numpy(), hoverinfo="skip"), row=1, col=i + 1)
        scaled = maps[i] / maps[i].max().clamp_min(1e-12)
        fig.add_trace(go.Heatmap(z=json_safe(_np(scaled)), zmin=0, zmax=1, colorscale="Inferno", showscale=False,
                                 hovertemplate="patch (row %{y}, col %{x})<br>%{z:.2f} of max<extra></extra>"),
                      row=2, col=i + 1)
    mean, low, high = effect
    fig.add_trace(go.Bar(x=[MEASURES[measure]], y=[mean], marker_color="#d62728", showlegend=False,
                         error_y=dict(type="data", symmetric=False, array=[high - mean], arrayminus=[mean - low]),
                         hovertemplate=f"%{{y:.3f}} (95% interval {low:.3f} to {high:.3f})<extra></extra>"),
                  row=1, col=n + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=True, zeroline=True, side="right", row=1, col=n + 1)
    for i in range(n):  # row 2's axes come after row 1's n + 1: x{n + 2 + i}
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{n + 2 + i}", row=2, col=i + 1)
    return layout(fig, f"Layer {layer + 1}, head {head + 1}: its attention, and the {MEASURES[measure]} when it is "
                       f"ablated: {mean:.3f} (95% interval {low:.3f} to {high:.3f})",
                  min(1100, 150 * n + 260), 420, margin=(20, 20, 70, 30))
