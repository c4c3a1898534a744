"""Figures of studies: sweeps, few-shot probes, CKA, inside views across training, recipe comparisons, pre-training."""
from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..records import (FAMILY_ORDER, InsideView, ProbeRecord, Recipes, RunInside, RunRecord, check_one_grid,
                       group_spread, spread)
from ..training import mpp
from .figures import training_curves_figure, uniform_line
from .style import (DASHES, duration, family_color, family_shades, integer_ticks, layer_label, layout, model_colours,
                    outline, table)


def _by_size(runs: list[RunRecord]) -> dict[int, list[RunRecord]]:
    size = operator.attrgetter("subset_size")
    return {n: list(group) for n, group in itertools.groupby(sorted(runs, key=size), size)}


#: Marker per family in the sweep's figures (runs fine-tuned from pre-trained weights: diamonds).
_FAMILY_SYMBOLS = {"vit": "circle", "hybrid": "triangle-up", "resnet": "square"}


def sweep_figure(records: list[RunRecord], x: str = "subset_size", models: list[str] | None = None,
                 title: str | None = None, shots: int | None = None) -> go.Figure:
    """Accuracy (mean ± std) against ``x``, ``"subset_size"`` or ``"train_flops_total"``, per model (Fig. 3, 4, 5)."""
    if x not in ("subset_size", "train_flops_total"):
        raise ValueError(f"x must be 'subset_size' or 'train_flops_total', got {x!r}")
    value = (lambda r: r.test_accuracy) if shots is None else (lambda r: r.fewshot.get(shots))
    records = [r for r in records if value(r) is not None]
    family = {r.label: r.family for r in records}  # runs fine-tuned from pre-trained weights are series of their own
    names = [n for n in sorted(family, key=lambda m: (FAMILY_ORDER.get(family[m], len(FAMILY_ORDER)), m))
             if models is None or n in models]
    fig, shades = go.Figure(), family_shades()
    for name in names:
        groups = _by_size([r for r in records if r.label == name])
        stats = [spread(value(r) for r in runs) for runs in groups.values()]
        seconds = [spread(r.wall_seconds for r in runs).mean for runs in groups.values()]
        custom = [[len(runs), runs[0].epochs, size, s / 60, duration(s)]
                  for (size, runs), s in zip(groups.items(), seconds)]
        color = shades(family[name])
        symbol = "diamond" if "←" in name else _FAMILY_SYMBOLS.get(family[name], "square")
        fig.add_trace(go.Scatter(
            x=[spread(getattr(r, x) for r in runs).mean for runs in groups.values()], y=[s.mean for s in stats],
            mode="lines+markers", name=f"{name} ({family[name]})", customdata=custom, line=dict(color=color),
            error_y=dict(type="data", array=[s.std for s in stats], visible=True),
            marker=dict(size=9, color=color, symbol=symbol),
            hovertemplate=("%{customdata[2]:,} images, %{customdata[1]} epochs<br>accuracy %{y:.1%} "
                           "(%{customdata[0]} seed(s))<br>%{customdata[4]} per run<extra>" + name + "</extra>")))
    by_size = x == "subset_size"
    return layout(
        fig, title or ("Accuracy vs training-set size" if by_size else "Accuracy vs training compute"), 900, 440,
        xaxis=dict(type="log", title="Training images (class-stratified CIFAR-10 subset)" if by_size
                   else "Training FLOPs (forward + backward, all epochs, pre-training included)"),
        yaxis=dict(title="CIFAR-10 test accuracy (10,000 images)" if shots is None
                   else f"{shots}-shot linear probe accuracy", tickformat=".0%", rangemode="tozero"))


def sweep_table(records: list[RunRecord], shots: int | None = None) -> go.Figure:
    """The sweep as a table: per model and size, epochs, accuracy (mean ± std: test accuracy, or the ``shots``-shot
    probe's as the sweep figure's y axis shows), total FLOPs (pre-training too), time."""
    value = (lambda r: r.test_accuracy) if shots is None else (lambda r: r.fewshot.get(shots))
    records = [r for r in records if value(r) is not None]
    columns: list[list] = [[] for _ in range(7)]
    for name in sorted({r.label for r in records}):
        for size, runs in _by_size([r for r in records if r.label == name]).items():
            acc, flops = spread(value(r) for r in runs), spread(r.train_flops_total for r in runs)
            accuracy = f"{acc.mean:.1%}" + (f" ± {acc.std:.1%}" if acc.n > 1 else "")
            row = [name, f"{size:,}", runs[0].epochs, len(runs), accuracy, f"{flops.mean:.2e}",
                   duration(spread(r.wall_seconds for r in runs).mean)]
            for column, cell in zip(columns, row):
                column.append(cell)
    metric = "test accuracy" if shots is None else f"{shots}-shot probe accuracy"
    return table(["model", "training images", "epochs", "seeds", metric, "total FLOPs",
                  "time per run"], columns, [2.1, 1.1, 0.7, 0.6, 1.3, 1.1, 1.0], 900)  # a fine-tuned name on one line


def _model_colours(records: list[ProbeRecord]) -> dict[str, str]:
    """The colour of each model of ``records``, in their order (:func:`~vitlab.views.style.model_colours`)."""
    family = {r.model: r.family for r in records}
    return dict(zip(family, model_colours(list(family.values()))))


def probe_depth_figure(records: list[ProbeRecord], shots: int, title: str | None = None) -> go.Figure:
    """Few-shot probe accuracy against relative depth (0 = first listed layer, 1 = last), per model and pooling."""
    chosen = [r for r in records if r.shots == shots]
    if not chosen:
        raise ValueError(f"no probe records with {shots} shots; have {sorted({r.shots for r in records})}")
    fig, colour = go.Figure(), _model_colours(chosen)  # a colour per model, a dash per pooling
    poolings = list(dict.fromkeys(r.pooling for r in chosen))
    for model in colour:
        mine = [r for r in chosen if r.model == model]
        last = max(r.depth for r in mine) or 1
        for pooling in dict.fromkeys(r.pooling for r in mine):
            stats = sorted(group_spread([r for r in mine if r.pooling == pooling], lambda r: (r.depth, r.layer),
                                        lambda r: r.accuracy).items())
            fig.add_trace(go.Scatter(
                x=[d / last for (d, _), _ in stats], y=[s.mean for _, s in stats], mode="lines+markers",
                name=f"{model} · {pooling}", error_y=dict(type="data", array=[s.std for _, s in stats], visible=True),
                line=dict(color=colour[model], dash=DASHES[poolings.index(pooling) % len(DASHES)]),
                customdata=[[layer_label(layer), s.n] for (_, layer), s in stats],
                hovertemplate="%{customdata[0]}: %{y:.1%} (%{customdata[1]} seeds)<extra>" + model + "</extra>"))
    return layout(fig, title or f"{shots}-shot linear probe accuracy by depth", 900, 420,
                  xaxis=dict(title="Relative depth (first layer 0, last 1)", range=[-0.05, 1.05]),
                  yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))


def probe_shots_figure(records: list[ProbeRecord], layers: list[tuple[str, str, str]],
                       title: str = "Accuracy vs shots") -> go.Figure:
    """Few-shot accuracy against shots per class (log axis) for chosen ``(model, layer, pooling)`` triples."""
    wanted = {tuple(t) for t in layers}
    shown = [r for r in records if (r.model, r.layer, r.pooling) in wanted]
    fig, colour, drawn = go.Figure(), _model_colours(shown), []  # a colour per model, a dash per layer of it
    for model, layer, pooling in layers:
        rows = [r for r in shown if (r.model, r.layer, r.pooling) == (model, layer, pooling)]
        if not rows:
            raise ValueError(f"no probe records for {model} {layer} {pooling}")
        stats = sorted(group_spread(rows, lambda r: r.shots, lambda r: r.accuracy).items())
        drawn.append(model)
        fig.add_trace(go.Scatter(x=[k for k, _ in stats], y=[s.mean for _, s in stats], mode="lines+markers",
                                 name=f"{model} · {layer_label(layer)} · {pooling}",
                                 line=dict(color=colour[model], dash=DASHES[(drawn.count(model) - 1) % len(DASHES)]),
                                 error_y=dict(type="data", array=[s.std for _, s in stats], visible=True)))
    return layout(fig, title, 900, 400, xaxis=dict(title="Training images per class (shots)", type="log"),
                  yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))


def cka_figure(cka: torch.Tensor, names_y: list[str], names_x: list[str], label_y: str = "", label_x: str = "",
               title: str = "Linear CKA") -> go.Figure:
    """A CKA heatmap (Raghu et al. 2021, Fig. 1-2): rows are ``names_y`` layers, columns ``names_x``."""
    c = cka.detach().float().numpy()
    if c.shape != (len(names_y), len(names_x)):
        raise ValueError(f"CKA matrix {c.shape} does not match {len(names_y)} x {len(names_x)} layer names")
    names_x, names_y = [layer_label(n) for n in names_x], [layer_label(n) for n in names_y]
    fig = go.Figure(go.Heatmap(z=c, x=names_x, y=names_y, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title="CKA"), texttemplate="%{z:.2f}",
                               hovertemplate=f"{label_y} %{{y}} vs {label_x} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>"))
    return layout(fig, title, 560, 500, margin=(90, 20, 50, 80), xaxis=dict(title=label_x, type="category"),
                  yaxis=dict(title=label_y, type="category", autorange="reversed"))


def inside_views_figure(views: Sequence[InsideView], epoch: int | None = None,
                        title: str = "Attention distance across training") -> go.Figure:
    """A run's lowest-layer most local head and each layer's mean distance against epoch; ``epoch`` marked."""
    if not views:
        raise ValueError("no inside views to draw: train a ViT with inside views on (the default)")
    epochs, uniform = [v.epoch for v in views], views[-1].uniform
    fig = go.Figure(uniform_line(uniform, [min(epochs), max(epochs)], width=1.5, hover=False))
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
    """Fig. 7 (right) against training-set size: layer means against depth, and the lowest layer's most local head."""
    if not runs:
        raise ValueError("no inside views to draw: run `python -m vitlab sweep` on ViTs first")
    runs = sorted(runs, key=lambda r: (r.subset_size, r.seed))
    sizes = sorted({r.subset_size for r in runs})
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "mean distance per layer", "lowest layer's most local head"))
    uniform, depth = runs[0].view.uniform, len(runs[0].view.distance)
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
        fig.add_trace(uniform_line(uniform, xs, showlegend=col == 1), 1, col)
    top = max(uniform, *(max(r.view.layer_means) for r in runs)) * 1.1
    fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5], row=1, col=1)
    fig.update_xaxes(title_text="training images", type="log", row=1, col=2)
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top], row=1, col=1)
    fig.update_yaxes(title_text="pixels", range=[0, top], row=1, col=2)
    return layout(fig, title or f"{runs[0].model}: attention distance against training-set size (paper's convention)",
                  980, 460, margin=(90, 20, 60, 60))


#: One colour per arm of a recipe comparison, in its order; seeds are told apart by dash and symbol.
_ARM_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
_SEED_DASH, _SEED_SYMBOL = ("solid", "dash", "dot", "dashdot"), ("circle", "diamond", "square", "cross")


def recipes_figure(comparison: Recipes, epoch: int, title: str | None = None) -> go.Figure:
    """Fig. 7 (right) for each arm of a recipe comparison at ``epoch``, one panel per arm on a shared y axis."""
    arms = list(comparison.arms)
    fig = make_subplots(rows=1, cols=len(arms), shared_yaxes=True, horizontal_spacing=0.06, subplot_titles=arms)
    uniform, depth = comparison.runs[0].views[-1].uniform, len(comparison.runs[0].views[-1].distance)
    top = uniform
    for col, arm in enumerate(arms, 1):
        colour = _ARM_COLOURS[(col - 1) % len(_ARM_COLOURS)]
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
        fig.add_trace(uniform_line(uniform, [0.5, depth + 0.5], width=1.5, showlegend=col == 1), 1, col)
        fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5], row=1, col=col)
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top * 1.1], row=1, col=1)
    fig.update_yaxes(range=[0, top * 1.1])
    model = comparison.runs[0].config.get("model", "ViT")
    return layout(fig, title or f"{model} at epoch {epoch}: mean attention distance per head, by recipe",
                  max(640, 420 * len(arms)), 460, margin=(70, 20, 90, 60))


def recipes_timeline_figure(comparison: Recipes, epoch: int | None = None, title: str | None = None) -> go.Figure:
    """Each run of a recipe comparison across training: lowest layer's most local head and test accuracy."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "lowest layer's most local head", "test accuracy"))
    uniform, last = comparison.runs[0].views[-1].uniform, max(r.epochs[-1] for r in comparison.runs)
    for i, (arm, runs) in enumerate(comparison.arms.items()):
        colour = _ARM_COLOURS[i % len(_ARM_COLOURS)]
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
    fig.add_trace(uniform_line(uniform, [1, last]), 1, 1)
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


def pretraining_figure(records: list[dict], baselines: dict[str, float] | None = None,
                       title: str = "Masked patch prediction") -> go.Figure:
    """Pre-training loss and masked-patch colour accuracy per epoch, beside guesses that need no model."""
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
    return rgb.view(*grid, 3).repeat_interleave(patch, 0).repeat_interleave(patch, 1).numpy()  # (H, W, 3)


def mpp_example_figure(example: mpp.MaskedExample, title: str = "Masked patch prediction on test images") -> go.Figure:
    """Masked patch prediction image by image: the input, its corruption, the 3-bit targets and the predictions."""
    e, patch, rows = example, example.patch, len(example.pixels)
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
        corrupted = [divmod(p, e.grid[1]) for p in torch.nonzero(e.corrupted[n]).flatten().tolist()]  # (row, col)
        outline(fig, [(c * patch - 0.5, (c + 1) * patch - 0.5, r * patch - 0.5, (r + 1) * patch - 0.5, n + 1, col)
                      for r, c in corrupted for col in (2, 4)], line=dict(color="red", width=1))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=12)
    return layout(fig, title, 860, 90 + 200 * rows, margin=(10, 10, 90, 20))


def inside_comparison_figure(views: dict[str, InsideView], title: str = "Attention distance against depth",
                             families: dict[str, str] | None = None) -> go.Figure:
    """Fig. 7 (right) of several models' inside views on one grid; ``families`` (label -> family) picks colours."""
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
    fig.add_trace(uniform_line(uniform, [0.5, depth + 0.5]))
    top = max(uniform, *(max(max(row) for row in v.distance) for v in views.values())) * 1.1
    fig.update_xaxes(title_text="Network depth (layer)", dtick=1, range=[0.5, depth + 0.5])
    fig.update_yaxes(title_text="Mean attention distance (pixels)", range=[0, top])
    return layout(fig, title, 820, 420)
