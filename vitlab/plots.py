"""Figures as plotly ``go.Figure`` objects; nothing here calls ``.show()``."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch


def tile_mosaic(tiles: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Lay (A, B, r, c) tiles out as one image of A x B tiles with 1-pixel NaN gaps.

    Returns ``(z, custom)``: ``z`` (A*(r+1) - 1, B*(c+1) - 1) and, per pixel, the tile
    index (a, b) and the position (y, x) inside the tile it shows, 1-based for display
    (-1 in gaps). A position similarity (R, C, R, C) gives Fig. 7 (center)'s layout.
    """
    a_n, b_n, rows, cols = tiles.shape
    height, width = a_n * (rows + 1) - 1, b_n * (cols + 1) - 1
    z = np.full((height, width), np.nan, dtype=np.float32)
    custom = np.full((height, width, 4), -1, dtype=np.int32)
    inner = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1) + 1  # (r, c, 2)
    values = tiles.detach().cpu().float().numpy()
    for i in range(a_n):
        for j in range(b_n):
            y, x = i * (rows + 1), j * (cols + 1)
            z[y : y + rows, x : x + cols] = values[i, j]
            custom[y : y + rows, x : x + cols, :2] = (i + 1, j + 1)
            custom[y : y + rows, x : x + cols, 2:] = inner
    return z, custom


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


def position_similarity_figure(sim: torch.Tensor, title: str = "Position embedding similarity") -> go.Figure:
    """Paper Fig. 7 (center): one small heatmap per patch, tiled by the patch's position.

    Tile (i, j) shows the cosine similarity of patch (i, j)'s position embedding with
    every other patch's. ``sim`` is (rows, cols, rows, cols) from
    :func:`vitlab.metrics.position_similarity`.
    """
    rows, cols = sim.shape[:2]
    z, custom = tile_mosaic(sim)
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


def _square_axes(fig: go.Figure) -> None:
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showgrid=False, zeroline=False, autorange="reversed", scaleanchor="x", constrain="domain")


def embedding_filters_figure(filters: torch.Tensor, ratio: torch.Tensor, cols: int = 7,
                             title: str = "Principal components of the patch-embedding filters") -> go.Figure:
    """Paper Fig. 7 (left): each principal component shown as an RGB patch.

    Args:
        filters: (k, 3, P, P) components from :func:`vitlab.metrics.embedding_filters`;
            each is min-max scaled to the full colour range on its own.
        ratio: (k,) explained-variance ratios, shown in the hover text.
    """
    k, channels, p, _ = filters.shape
    if channels != 3:
        raise ValueError(f"RGB display needs 3 input channels, the filters have {channels}")
    rows = -(-k // cols)
    img = np.full((rows * (p + 1) - 1, cols * (p + 1) - 1, 3), 255, dtype=np.uint8)
    label = np.full(img.shape[:2], -1, dtype=np.int32)
    for i in range(k):
        f = filters[i].detach().float()
        f = (f - f.min()) / (f.max() - f.min()).clamp_min(1e-12)
        y, x = (i // cols) * (p + 1), (i % cols) * (p + 1)
        img[y : y + p, x : x + p] = (f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        label[y : y + p, x : x + p] = i
    share = ratio.detach().float().numpy()
    text = np.where(label >= 0, np.char.add(np.char.add("PC ", (label + 1).astype(str)),
                                            np.char.add(": ", np.char.mod("%.1f%%", 100 * share[label.clip(0)]))), "")
    fig = go.Figure(go.Image(z=img, hovertext=text, hoverinfo="text"))
    fig.update_layout(title=dict(text=title, x=0.5), width=max(420, 64 * cols + 80), height=max(260, 64 * rows + 90),
                      margin=dict(l=20, r=20, t=50, b=20), xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def explained_variance_figure(ratio: torch.Tensor) -> go.Figure:
    """Explained-variance ratio of each principal component, with the cumulative sum."""
    r = ratio.detach().float().numpy()
    idx = np.arange(1, len(r) + 1)
    fig = go.Figure([go.Bar(x=idx, y=r, name="component"),
                     go.Scatter(x=idx, y=np.cumsum(r), name="cumulative", mode="lines+markers")])
    fig.update_layout(title=dict(text="Explained variance", x=0.5), width=520, height=320,
                      xaxis_title="principal component", yaxis=dict(title="fraction of variance", range=[0, 1]),
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(x=0.6, y=0.5))
    return fig


def attention_distance_figure(distance: torch.Tensor, layers: torch.Tensor | None = None,
                              reference: dict[str, tuple[list[float], list[float]]] | None = None,
                              max_distance: float | None = None,
                              title: str = "Mean attention distance by head and depth") -> go.Figure:
    """Paper Fig. 7 (right): each head's mean attention distance against network depth.

    Args:
        distance: (layers, heads) pixels, from :func:`vitlab.head_statistics`.
        layers: block indices (0-based) of the rows; default 0..L-1. Shown 1-based.
        reference: name -> (depths, pixels) curves drawn as lines, e.g. a ResNet's
            receptive-field growth from :func:`vitlab.metrics.receptive_fields`.
        max_distance: top of the y axis in pixels (e.g. the image's diagonal).
    """
    d = distance.detach().float()
    depth = (layers if layers is not None else torch.arange(len(d))).float() + 1
    fig = go.Figure()
    for h in range(d.shape[1]):
        fig.add_trace(go.Scatter(
            x=depth.numpy(), y=d[:, h].numpy(), mode="markers", name=f"head {h + 1}",
            marker=dict(size=9, opacity=0.85),
            hovertemplate=f"layer %{{x}}, head {h + 1}<br>%{{y:.1f}} px<extra></extra>",
        ))
    for name, (xs, ys) in (reference or {}).items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(dash="dot", color="gray"),
                                 hovertemplate="depth %{x}<br>%{y:.0f} px<extra>" + name + "</extra>"))
    top = max_distance if max_distance is not None else float(d.max()) * 1.1
    fig.update_layout(title=dict(text=title, x=0.5), width=640, height=440, margin=dict(l=70, r=20, t=50, b=60),
                      xaxis=dict(title="Network depth (layer)", dtick=1),
                      yaxis=dict(title="Mean attention distance (pixels)", range=[0, top]))
    return fig


def attention_overlay_figure(image: torch.Tensor, mask: torch.Tensor, title: str = "",
                             marker: tuple[int, int] | None = None, opacity: float = 0.6) -> go.Figure:
    """An image with a per-patch map (e.g. attention rollout, paper Fig. 6) laid over it.

    Args:
        image: uint8 (3, H, W). mask: (rows, cols), one value per patch, shown with its
            own colour range. marker: optional (row, col) patch to outline (0-based).
    """
    _, h, w = image.shape
    rows, cols = mask.shape
    ph, pw = h / rows, w / cols
    m = mask.detach().float().numpy()
    fig = go.Figure([
        go.Image(z=image.permute(1, 2, 0).cpu().numpy(), hoverinfo="skip"),
        go.Heatmap(z=m, x0=pw / 2 - 0.5, dx=pw, y0=ph / 2 - 0.5, dy=ph, colorscale="Inferno", opacity=opacity,
                   showscale=False, customdata=np.stack(np.meshgrid(np.arange(1, rows + 1), np.arange(1, cols + 1),
                                                                    indexing="ij"), -1),
                   hovertemplate="patch (row %{customdata[0]}, col %{customdata[1]})<br>%{z:.4f}<extra></extra>"),
    ])
    if marker is not None:
        r, c = marker
        fig.add_shape(type="rect", x0=c * pw - 0.5, x1=(c + 1) * pw - 0.5, y0=r * ph - 0.5, y1=(r + 1) * ph - 0.5,
                      line=dict(color="cyan", width=3))
    # Left-aligned title: plotly's mode bar covers the top right of a figure this narrow.
    fig.update_layout(title=dict(text=title, x=0.02, xanchor="left"), width=420, height=440,
                      margin=dict(l=10, r=10, t=50, b=10), xaxis=dict(visible=False), yaxis=dict(visible=False))
    _square_axes(fig)
    return fig


def head_attention_figure(maps: torch.Tensor, layers: list[int] | None = None,
                          title: str = "Class-token attention per layer and head") -> go.Figure:
    """A (layers, heads) grid of per-patch attention maps, each scaled to its own maximum.

    Args:
        maps: (L, H, rows, cols) attention of the class token (or any query) over patches.
        layers: block indices of the rows (0-based), for labels.
    """
    n_layers, heads, rows, cols = maps.shape
    scaled = maps / maps.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    z, custom = tile_mosaic(scaled)
    layer_names = [str((layers[i] if layers else i) + 1) for i in range(n_layers)]
    fig = go.Figure(go.Heatmap(
        z=z, customdata=custom, zmin=0, zmax=1, colorscale="Inferno", hoverongaps=False,
        colorbar=dict(title=dict(text="share of<br>map's max", side="right")),
        hovertemplate="layer row %{customdata[0]}, head %{customdata[1]}<br>"
                      "patch (row %{customdata[2]}, col %{customdata[3]})<br>%{z:.2f} of max<extra></extra>",
    ))
    fig.update_layout(
        title=dict(text=title, x=0.5), width=min(1100, 90 * heads + 160), height=min(1400, 90 * n_layers + 120),
        margin=dict(l=70, r=20, t=50, b=50), plot_bgcolor="white",
        xaxis=dict(title="head", tickvals=[j * (cols + 1) + (cols - 1) / 2 for j in range(heads)],
                   ticktext=[str(j + 1) for j in range(heads)]),
        yaxis=dict(title="layer", tickvals=[i * (rows + 1) + (rows - 1) / 2 for i in range(n_layers)],
                   ticktext=layer_names),
    )
    _square_axes(fig)
    return fig


def training_curves_figure(records: list[dict] | None = None, title: str = "Training") -> go.Figure:
    """Loss and train/test accuracy per epoch from a run's metrics records (may be empty)."""
    from plotly.subplots import make_subplots

    records = records or []
    epochs = [r["epoch"] for r in records]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    fig.add_trace(go.Scatter(x=epochs, y=[r["loss"] for r in records], name="train loss", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=epochs, y=[r.get("train_accuracy") for r in records], name="train accuracy",
                             mode="lines+markers"), 1, 2)
    fig.add_trace(go.Scatter(x=epochs, y=[r["test_accuracy"] for r in records], name="test accuracy",
                             mode="lines+markers"), 1, 2)
    fig.update_layout(title=dict(text=title, x=0.5), width=900, height=360, margin=dict(l=60, r=20, t=70, b=50))
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    return fig


def zoo_table(zoo: dict[str, dict]) -> go.Figure:
    """The zoo as a table: name, family, description, parameters, recorded test accuracy."""
    names = list(zoo)
    acc = [f"{zoo[n]['test_accuracy']:.1%}" if zoo[n]["test_accuracy"] is not None else "not trained" for n in names]
    fig = go.Figure(go.Table(
        columnwidth=[1.2, 0.7, 3.2, 0.9, 1.1],
        header=dict(values=["name", "family", "architecture", "parameters", "CIFAR-10 test accuracy"], align="left"),
        cells=dict(values=[names, [zoo[n]["family"] for n in names], [zoo[n]["description"] for n in names],
                           [f"{zoo[n]['params']:,}" for n in names], acc], align="left"),
    ))
    fig.update_layout(width=900, height=80 + 32 * len(names), margin=dict(l=10, r=10, t=10, b=10))
    return fig


# --- ViT vs ResNet: data size, compute, probes, CKA ------------------------------------

_FAMILY_COLORS = {"vit": ("#1f77b4", "#6baed6", "#08519c"), "resnet": ("#d62728", "#fc9272", "#a50f15")}


def _color(family: str, k: int) -> str:
    shades = _FAMILY_COLORS.get(family, ("#555555", "#999999", "#222222"))
    return shades[k % len(shades)]


def _by_size(rows: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["subset_size"]):
        groups.setdefault(r["subset_size"], []).append(r)
    return groups


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def sweep_figure(records: list[dict], x: str = "subset_size", models: list[str] | None = None,
                 title: str | None = None, y: str = "test_accuracy") -> go.Figure:
    """Test accuracy against training images or training FLOPs (log axis), per model (paper Fig. 3 and 5).

    Points are means over seeds with error bars of one standard deviation; the hover
    shows the number of seeds, epochs and minutes per run.

    Args:
        records: sweep records (:func:`vitlab.sweep.sweep` or :func:`vitlab.sweep.read_results`).
        x: ``"subset_size"`` (training images) or ``"train_flops"``.
        models: the models to draw (default all); ViTs are drawn first.
        y: ``"test_accuracy"``, or ``"fewshot_<k>"`` for the k-shot probe accuracy of the
            runs' final representation (paper Fig. 4); runs without it are left out.
    """
    if x not in ("subset_size", "train_flops"):
        raise ValueError(f"x must be 'subset_size' or 'train_flops', got {x!r}")
    if y != "test_accuracy" and not y.startswith("fewshot_"):
        raise ValueError(f"y must be 'test_accuracy' or 'fewshot_<shots>', got {y!r}")
    records = [r for r in records if r.get(y) is not None]
    family = {r["model"]: r["family"] for r in records}
    names = [n for n in sorted(family, key=lambda m: (family[m] != "vit", m)) if models is None or n in models]
    fig = go.Figure()
    shade: dict[str, int] = {}
    for name in names:
        groups = _by_size([r for r in records if r["model"] == name])
        stats = [_spread([r[y] for r in runs]) for runs in groups.values()]
        xs = [float(np.mean([r[x] for r in runs])) for runs in groups.values()]
        custom = [[len(runs), runs[0]["epochs"], size, np.mean([r["wall_seconds"] for r in runs]) / 60]
                  for size, runs in groups.items()]
        color = _color(family[name], shade.get(family[name], 0))
        shade[family[name]] = shade.get(family[name], 0) + 1
        fig.add_trace(go.Scatter(
            x=xs, y=[m for m, _ in stats], mode="lines+markers", name=f"{name} ({family[name]})",
            error_y=dict(type="data", array=[sd for _, sd in stats], visible=True),
            marker=dict(size=9, color=color, symbol="circle" if family[name] == "vit" else "square"),
            line=dict(color=color), customdata=custom,
            hovertemplate=("%{customdata[2]:,} images, %{customdata[1]} epochs<br>accuracy %{y:.1%} "
                           "(%{customdata[0]} seed(s))<br>%{customdata[3]:.1f} min per run<extra>" + name + "</extra>"),
        ))
    by_size = x == "subset_size"
    fig.update_layout(
        title=dict(text=title or ("Accuracy vs training-set size" if by_size else "Accuracy vs training compute"), x=0.5),
        width=900, height=440, margin=dict(l=70, r=20, t=50, b=60),
        xaxis=dict(title="Training images (class-stratified CIFAR-10 subset)" if by_size
                   else "Training FLOPs (forward + backward, all epochs)", type="log"),
        yaxis=dict(title="CIFAR-10 test accuracy (10,000 images)" if y == "test_accuracy"
                   else f"{y.split('_')[1]}-shot linear probe accuracy", tickformat=".0%", rangemode="tozero"))
    return fig


def sweep_table(records: list[dict]) -> go.Figure:
    """The sweep as a table: per model and subset size, epochs, accuracy (mean ± std over seeds), FLOPs, time."""
    cells: list[list] = [[] for _ in range(7)]
    for name in sorted({r["model"] for r in records}):
        for size, runs in _by_size([r for r in records if r["model"] == name]).items():
            mean, sd = _spread([r["test_accuracy"] for r in runs])
            row = [name, f"{size:,}", runs[0]["epochs"], len(runs), f"{mean:.1%}" + (f" ± {sd:.1%}" if len(runs) > 1 else ""),
                   f"{np.mean([r['train_flops'] for r in runs]):.2e}", f"{np.mean([r['wall_seconds'] for r in runs]) / 60:.1f}"]
            for column, value in zip(cells, row):
                column.append(value)
    fig = go.Figure(go.Table(
        header=dict(values=["model", "training images", "epochs", "seeds", "test accuracy", "training FLOPs",
                            "minutes per run"], align="left"),
        cells=dict(values=cells, align="left"),
    ))
    fig.update_layout(width=820, height=80 + 28 * len(cells[0]), margin=dict(l=10, r=10, t=10, b=10))
    return fig


def probe_depth_figure(records: list[dict], shots: int, title: str | None = None) -> go.Figure:
    """Few-shot probe accuracy against relative depth, one curve per model and pooling.

    Depth is the layer's index over the model's last index (0 = first listed layer,
    1 = last block or stage), so a 6-block ViT and a 5-stage ResNet share an axis.
    Error bars are one standard deviation over seeds.
    """
    from .compare import mean_over_seeds

    chosen = [r for r in records if r["shots"] == shots]
    if not chosen:
        raise ValueError(f"no probe records with {shots} shots; have {sorted({r['shots'] for r in records})}")
    fig = go.Figure()
    for model in dict.fromkeys(r["model"] for r in chosen):
        mine = [r for r in chosen if r["model"] == model]
        last = max(r["depth"] for r in mine) or 1
        for k, pooling in enumerate(dict.fromkeys(r["pooling"] for r in mine)):
            stats = sorted(mean_over_seeds([r for r in mine if r["pooling"] == pooling], ["layer", "depth"], "accuracy"),
                           key=lambda s: s["depth"])
            family = "vit" if pooling in ("cls", "mean") else "resnet"
            fig.add_trace(go.Scatter(
                x=[s["depth"] / last for s in stats], y=[s["mean"] for s in stats], mode="lines+markers",
                name=f"{model} · {pooling}", error_y=dict(type="data", array=[s["std"] for s in stats], visible=True),
                line=dict(color=_color(family, k), dash="solid" if pooling != "mean" else "dash"),
                customdata=[[s["layer"], s["n"]] for s in stats],
                hovertemplate="%{customdata[0]}: %{y:.1%} (%{customdata[1]} seeds)<extra>" + model + "</extra>",
            ))
    fig.update_layout(title=dict(text=title or f"{shots}-shot linear probe accuracy by depth", x=0.5),
                      width=900, height=420, margin=dict(l=70, r=20, t=50, b=60),
                      xaxis=dict(title="Relative depth (first layer 0, last 1)", range=[-0.05, 1.05]),
                      yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))
    return fig


def probe_shots_figure(records: list[dict], layers: list[tuple[str, str, str]], title: str = "Accuracy vs shots") -> go.Figure:
    """Few-shot accuracy against shots per class (log axis) for chosen ``(model, layer, pooling)`` triples."""
    from .compare import mean_over_seeds

    fig = go.Figure()
    for k, (model, layer, pooling) in enumerate(layers):
        rows = [r for r in records if (r["model"], r["layer"], r["pooling"]) == (model, layer, pooling)]
        if not rows:
            raise ValueError(f"no probe records for {model} {layer} {pooling}")
        stats = sorted(mean_over_seeds(rows, ["shots"], "accuracy"), key=lambda s: s["shots"])
        family = "vit" if pooling in ("cls", "mean") else "resnet"
        fig.add_trace(go.Scatter(x=[s["shots"] for s in stats], y=[s["mean"] for s in stats], mode="lines+markers",
                                 name=f"{model} · {layer} · {pooling}", line=dict(color=_color(family, k)),
                                 error_y=dict(type="data", array=[s["std"] for s in stats], visible=True)))
    fig.update_layout(title=dict(text=title, x=0.5), width=900, height=400, margin=dict(l=70, r=20, t=50, b=60),
                      xaxis=dict(title="Training images per class (shots)", type="log"),
                      yaxis=dict(title="Few-shot test accuracy", tickformat=".0%", rangemode="tozero"))
    return fig


def cka_figure(cka: torch.Tensor, names_y: list[str], names_x: list[str], label_y: str = "", label_x: str = "",
               title: str = "Linear CKA") -> go.Figure:
    """A CKA heatmap (Raghu et al. 2021, Fig. 1-2): rows are ``names_y`` layers, columns ``names_x``."""
    c = cka.detach().float().numpy()
    if c.shape != (len(names_y), len(names_x)):
        raise ValueError(f"CKA matrix {c.shape} does not match {len(names_y)} x {len(names_x)} layer names")
    fig = go.Figure(go.Heatmap(z=c, x=names_x, y=names_y, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title="CKA"), texttemplate="%{z:.2f}",
                               hovertemplate=f"{label_y} %{{y}} vs {label_x} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=dict(text=title, x=0.5), width=560, height=500, margin=dict(l=90, r=20, t=50, b=80),
                      xaxis=dict(title=label_x, type="category"), yaxis=dict(title=label_y, type="category", autorange="reversed"))
    return fig
