"""Figures (plotly) of the attribution results (issue 32): every method's maps side by side, deletion and insertion
curves with their 95% bands, the scoreboard table of one or several models, the sanity-check cascade and the Focus
score. Each draws the result it is given; none runs a model or computes a score beyond the result's own means and
intervals."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..analysis.faithfulness import FaithfulnessResult
from ..analysis.map_checks import FLAG_SPEARMAN, FocusResult, SanityResult
from ..analysis.references import bootstrap_interval
from ..analysis.saliency import METHODS, MapsResult
from ..analysis.scoreboard import ScoreboardResult
from ..records import AttributionScore
from .style import layout, table

#: One colour per method in every figure; the random floor grey (and dashed in curves).
METHOD_COLOURS = {"random": "#7f7f7f", "attention": "#1f77b4", "rollout": "#ff7f0e", "grad_rollout": "#2ca02c",
                  "attn_grad": "#d62728", "occlusion": "#9467bd", "integrated_gradients": "#8c564b",
                  "input_x_gradient": "#e377c2", "grad_cam": "#17becf"}
REMOVAL_NAMES = {"drop": "token drop", "mean": "mean fill", "blur": "blur"}
#: What an empty scoreboard cell says: the method was not run on that model, or this score was not computed.
DOES_NOT_APPLY, NOT_SCORED = "does not apply to this model", "not scored"
FOCUS_CHANCE = 0.25


def method_colour(method: str) -> str:
    """The colour of ``method`` in every attribution figure (grey for unknown names)."""
    return METHOD_COLOURS.get(method, "#555555")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _band(fig: go.Figure, x: list, low: np.ndarray, high: np.ndarray, colour: str, row: int, col: int,
          meta: dict) -> None:
    """A shaded 95% interval between ``low`` and ``high``, drawn under its line."""
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(high) + list(low[::-1]), mode="lines", fill="toself",
                             fillcolor=colour, opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False,
                             legendgroup=meta["method"], meta=dict(meta, band=True)), row=row, col=col)


def _short(name: str) -> str:
    """An image's name short enough for a small subplot's title: "CIFAR-10 test #44 (airplane)" -> "airplane"."""
    if name.endswith(")") and "(" in name:
        return name[name.rfind("(") + 1:-1]
    return name if len(name) <= 14 else name[:13] + "…"


def _range(values: torch.Tensor) -> dict:
    """One colour scale for a method's row: 0 to the largest value for a map that is never negative, else symmetric
    around 0 (red for evidence for the target, blue against)."""
    top = max(float(values.abs().max()), 1e-12)
    if float(values.min()) >= 0:
        return dict(zmin=0.0, zmax=top, colorscale="Inferno")
    return dict(zmin=-top, zmax=top, zmid=0.0, colorscale="RdBu_r")


def maps_figure(result: MapsResult, indices: Sequence[int] | None = None, methods: Sequence[str] | None = None,
                names: Sequence[str] | None = None, title: str = "Attribution maps",
                classes: Sequence[str] | None = None) -> go.Figure:
    """Images ``indices`` (default the first four) in the top row, under each one heatmap per method on the patch
    grid (a row per method, one colour scale per row); ``classes``: the class names the targets index (default:
    the index). Traces: the images, then the heatmaps method by method, each
    heatmap's ``meta`` {"method", "image"} (an explorer's click reads it)."""
    indices = list(range(min(4, len(result.targets)))) if indices is None else list(indices)
    methods = list(result.methods if methods is None else methods)
    names = names or [f"image {i + 1}" for i in range(len(result.targets))]
    cols, rows = len(indices), len(methods) + 1
    said = [classes[int(t)] if classes is not None and int(t) < len(classes) else str(int(t)) for t in result.targets]
    titles = [f"{_short(names[i])}<br>target {said[i]}" for i in indices] + [""] * (cols * (rows - 1))
    fig = make_subplots(rows, cols, subplot_titles=titles, horizontal_spacing=0.02, vertical_spacing=0.02)
    for c, i in enumerate(indices, 1):
        fig.add_trace(go.Image(z=result.images[i].permute(1, 2, 0).cpu().numpy(), hoverinfo="skip"), row=1, col=c)
    for r, method in enumerate(methods, 2):
        scale = _range(result.maps[method][indices])
        for c, i in enumerate(indices, 1):
            fig.add_trace(go.Heatmap(z=_np(result.maps[method][i]).tolist(), showscale=False, meta=dict(
                method=method, image=i), hovertemplate=f"{method}, cell (row %{{y}}, col %{{x}})<br>%{{z:.3g}}"
                                                       "<extra></extra>", **scale), row=r, col=c)
        fig.update_yaxes(title=dict(text=method, font=dict(size=11)), row=r, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    for k in range(cols + 1, rows * cols + 1):  # the map rows: square cells, row 0 on top, as in the image
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k}", row=(k - 1) // cols + 1, col=(k - 1) % cols + 1)
    said = f"{title}: {len(methods)} methods, the model's target class (colour scale shared along each row)"
    return layout(fig, said, min(1100, 120 * cols + 160), 118 * rows + 110, margin=(120, 20, 90, 20),
                  font=dict(size=11))


def curves_figure(result: FaithfulnessResult, removal: str | None = None, measure: str = "probability",
                  methods: Sequence[str] | None = None, image: int | None = None, highlight: str | None = None,
                  title: str = "Deletion and insertion") -> go.Figure:
    """Deletion (left) and insertion (right) curves, a row per removal (``removal``: only that one): the mean over
    images with its 95% bootstrap band per method, or with ``image`` that image's own curves; the random floor
    dashed; ``highlight`` drawn thicker. Every line's ``meta`` holds {"method", "removal", "curve"}."""
    removals = [removal] if removal is not None else list(result.removals)
    methods = list(result.methods if methods is None else methods)
    x = [float(v) for v in result.fractions]
    titles = [f"{curve} ({REMOVAL_NAMES.get(r, r)})" for r in removals for curve in ("deletion", "insertion")]
    fig = make_subplots(len(removals), 2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.12)
    for row, r in enumerate(removals, 1):
        for col, (curve, curves) in enumerate((("deletion", result.deletion), ("insertion", result.insertion)), 1):
            for method in methods:
                values = curves[method, r][measure]  # (N, steps + 1)
                colour, meta = method_colour(method), dict(method=method, removal=r, curve=curve)
                if image is None:
                    low, high = bootstrap_interval(values.double())
                    _band(fig, x, _np(low), _np(high), colour, row, col, meta)
                    y = _np(values.double().mean(0))
                else:
                    y = _np(values[image])
                width = 4 if method == highlight else 2
                fig.add_trace(go.Scatter(
                    x=x, y=y, mode="lines", name=method, legendgroup=method, showlegend=row == 1 and col == 1,
                    meta=meta, line=dict(color=colour, width=width, dash="dash" if method == "random" else "solid"),
                    hovertemplate=f"{method}: %{{y:.3f}} at %{{x:.0%}}<extra></extra>"), row=row, col=col)
    fig.update_xaxes(title="share of patches removed / inserted", tickformat=".0%")
    fig.update_yaxes(title=f"target {measure}" if measure == "probability" else "accuracy", range=[0, 1.02])
    shown = (f"image {image + 1}" if image is not None else
             f"mean over {result.images} images with 95% bands")
    height = 300 * len(removals) + 190
    return layout(fig, f"{title}: target-class {measure}, {shown} (deletion: lower is better; insertion: higher)",
                  960, height, margin=(60, 20, 80, 110),
                  legend=dict(orientation="h", y=-75 / (height - 190)))  # under the x axes' title, in any height


def _cell(row: AttributionScore | None) -> str:
    return NOT_SCORED if row is None else f"{row.mean:.3f} [{row.low:.3f}, {row.high:.3f}]"


def _columns(rows: list[AttributionScore], measure: str) -> list[tuple[str, str, str, str]]:
    """The table's score columns (score, measure, removal, header), those some model holds, in a fixed order."""
    held = {(r.score, r.measure, r.removal) for r in rows}
    wanted = [(c, measure, r, f"{c} AUC {'↓' if c == 'deletion' else '↑'} ({REMOVAL_NAMES[r]})")
              for c in ("deletion", "insertion") for r in REMOVAL_NAMES]
    wanted += [("chefer_positive", "accuracy", "mean", "Chefer positive ↓"),
               ("chefer_negative", "accuracy", "mean", "Chefer negative ↑"),
               ("sanity", "spearman", "", f"sanity: Spearman, all re-initialised (flag ≥ {FLAG_SPEARMAN})"),
               ("focus", "share", "", f"Focus ↑ (chance {FOCUS_CHANCE})")]
    return [w for w in wanted if w[:3] in held]


def scoreboard_figure(rows: Iterable[AttributionScore] | ScoreboardResult, measure: str = "probability",
                      title: str = "Attribution scoreboard", absent: Mapping[tuple[str, str], str] | None = None
                      ) -> go.Figure:
    """A table, one row per method of each model (every method of :data:`METHODS`: one that was not run on a model
    says "does not apply", or ``absent[(model, method)]`` where given), a column per score held (AUCs of the target
    ``measure``), each cell "mean [95% interval]"; the model's accuracy on the scored images beside its name."""
    absent = absent or {}
    rows = rows.rows() if isinstance(rows, ScoreboardResult) else list(rows)
    if not rows:
        raise ValueError("no scoreboard rows to draw: pass ScoreboardResult.rows() or read_scoreboards(folder)[0]")
    columns = _columns(rows, measure)
    index = {(r.model, r.method, r.score, r.measure, r.removal): r for r in rows}
    models = list(dict.fromkeys(r.model for r in rows))
    extra = [m for m in dict.fromkeys(r.method for r in rows) if m not in METHODS and m != "model"]
    table_rows = []
    for model in models:
        ran = {r.method for r in rows if r.model == model}
        accuracy = index.get((model, "model", "accuracy", "accuracy", ""))
        label = model + (f" (accuracy {accuracy.mean:.3f} [{accuracy.low:.3f}, {accuracy.high:.3f}])"
                         if accuracy else "")
        for method in [*METHODS, *extra]:
            cells = ([_cell(index.get((model, method, s, m, r))) for s, m, r, _ in columns] if method in ran
                     else [absent.get((model, method), DOES_NOT_APPLY)] * len(columns))
            table_rows.append([label, method, *cells])
    header = ["model", "method", *(h for *_, h in columns)]
    width = min(1500, 240 + 120 * len(columns))
    fig = table(header, [list(c) for c in zip(*table_rows)], [1.6, 1.2, *[1.0] * len(columns)], width)
    said = f"{title}: mean [95% interval] over images; AUCs of the target {measure} (Chefer: accuracy)"
    return layout(fig, said, width, int(fig.layout.height) + 40, margin=(10, 10, 74, 10))


def sanity_figure(result: SanityResult, title: str = "Sanity check: cascading randomisation") -> go.Figure:
    """Mean Spearman correlation, per method, between the trained model's maps and those with the layers up to each
    stage re-initialised (top first), with 95% bands; the 0.5 line above which a method is flagged."""
    x = list(range(len(result.stages)))
    fig = go.Figure()
    for method in result.methods:
        colour, meta = method_colour(method), dict(method=method)
        _band(fig, x, _np(result.low[method]), _np(result.high[method]), colour, None, None, meta)
        fig.add_trace(go.Scatter(x=x, y=_np(result.spearman[method].double().mean(1)), mode="lines+markers",
                                 name=method + (" (flagged)" if method in result.flagged else ""), meta=meta,
                                 legendgroup=method, line=dict(color=colour, dash="dash" if method == "random"
                                                               else "solid"), customdata=list(result.stages),
                                 hovertemplate=f"{method}, up to %{{customdata}}: %{{y:.2f}}<extra></extra>"))
    fig.add_hline(y=FLAG_SPEARMAN, line=dict(color="black", dash="dot", width=1),
                  annotation_text=f"flagged at {FLAG_SPEARMAN} or more", annotation_position="top right")
    return layout(fig, f"{title} ({result.images} images): Spearman of the maps against the trained model's", 820, 440,
                  xaxis=dict(title="re-initialised down to", tickvals=x, ticktext=list(result.stages)),
                  yaxis=dict(title="mean Spearman (95% band)", range=[-1.02, 1.02]))


def focus_figure(result: FocusResult, title: str = "Focus on mosaics") -> go.Figure:
    """Each method's mean Focus score with its 95% interval against chance (0.25), and beside it the model's accuracy
    on the mosaics (the asked quadrant's class), which says how much the Focus scores can mean."""
    fig = make_subplots(1, 2, column_widths=[0.8, 0.2], horizontal_spacing=0.1,
                        subplot_titles=("Focus: the map's share on the asked quadrant", "model on the mosaics"))
    methods = list(result.methods)
    mean = np.array([result.mean[m] for m in methods])
    low, high = np.array([result.low[m] for m in methods]), np.array([result.high[m] for m in methods])
    fig.add_trace(go.Bar(x=methods, y=mean, marker_color=[method_colour(m) for m in methods], showlegend=False,
                         error_y=dict(type="data", symmetric=False, array=high - mean, arrayminus=mean - low),
                         hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_hline(y=FOCUS_CHANCE, line=dict(color="black", dash="dot", width=1), annotation_text="chance 0.25",
                  annotation_position="top right", row=1, col=1)
    acc = result.accuracy
    fig.add_trace(go.Bar(x=["accuracy"], y=[acc], marker_color="#444444", showlegend=False,
                         error_y=dict(type="data", symmetric=False, array=[result.accuracy_high - acc],
                                      arrayminus=[acc - result.accuracy_low]),
                         hovertemplate=f"%{{y:.3f}} (95% interval {result.accuracy_low:.3f} to "
                                       f"{result.accuracy_high:.3f})<extra></extra>"), row=1, col=2)
    fig.update_yaxes(range=[0, 1.02])
    size = result.mosaics.shape[-1]
    return layout(fig, f"{title}: {len(result.targets)} mosaics of four test images, shown to the model at "
                       f"{size}x{size} px", 900, 420, margin=(60, 20, 80, 90))
