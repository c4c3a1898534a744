"""How the views look: the one layout, the one tiling, tables, family colours and number formats."""
from __future__ import annotations

import itertools
import math
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Mode-bar buttons a reader of these figures never needs (the rest: save, zoom, pan, reset).
_MODEBAR_REMOVE = ["lasso2d", "select2d", "autoScale2d", "zoomIn2d", "zoomOut2d"]


def layout(fig: go.Figure, title: str, width: int, height: int, margin: tuple[int, int, int, int] = (70, 20, 50, 60),
           **extra) -> go.Figure:
    """Size (pixels), margins (left, right, top, bottom) and a left-aligned title, wrapped before the mode bar."""
    left, right, top, bottom = margin
    limit = max(20, (width - 190) // 9)  # characters of a 17-pixel title left of the mode bar
    lines = []
    for rest in title.split("<br>"):  # lines the caller broke, each wrapped as needed
        while len(rest) > limit:
            cut = max(rest.rfind(", ", 0, limit + 1), rest.rfind(": ", 0, limit + 1))
            cut = cut + 1 if cut > 0 else rest.rfind(" ", 0, limit + 1)
            if cut <= 0:
                break
            lines.append(rest[:cut])
            rest = rest[cut + 1:]
        lines += [rest] if rest else []
    # Anchored at the top, so each added line pushes the plot down rather than growing both ways.
    title = dict(text="<br>".join(lines), x=0.01, xref="container", xanchor="left", y=1, yref="container",
                 yanchor="top", pad=dict(t=12))
    fig.update_layout(title=title, width=width, height=height,
                      margin=dict(l=left, r=right, t=top + 24 * (len(lines) - 1), b=bottom),
                      modebar=dict(remove=_MODEBAR_REMOVE), **extra)
    return fig


def outline(fig: go.Figure, rects: Sequence[tuple[float, float, float, float, int, int]], line: dict) -> None:
    """Outline rectangles ``(x0, x1, y0, y1, row, col)`` in the subplots of a ``make_subplots`` figure, in one update:
    plotly's ``add_shape`` validates every shape again on each call, quadratic in their number (seconds for 256)."""
    shapes = []
    for x0, x1, y0, y1, row, col in rects:
        axes = fig.get_subplot(row, col)  # a figure of make_subplots: its x axis anchors to its y axis and back
        shapes.append(dict(type="rect", xref=axes.yaxis.anchor, yref=axes.xaxis.anchor, x0=x0, x1=x1, y0=y0, y1=y1,
                           line=line))
    fig.update_layout(shapes=[*fig.layout.shapes, *shapes])


def integer_ticks(count: int) -> dict:
    """Axis ticks on whole numbers 1..count only (no half steps on small ranges)."""
    return dict(tick0=1, dtick=max(1, math.ceil(count / 12)))


def json_safe(values: np.ndarray) -> list:
    """``values`` as nested lists with ``None`` for NaN: strict JSON, and plotly's gaps."""
    return np.where(np.isnan(values), None, values.astype(object)).tolist()


def tile(values: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Lay (A, B, r, c, ...) tiles out as one (A*(r+1) - 1, B*(c+1) - 1, ...) array with 1-pixel gaps of ``fill``.
    Returns ``(mosaic, index)``: ``index`` (H, W, 4) holds each pixel's 0-based tile (a, b) and (y, x), -1 in gaps."""
    a_n, b_n, rows, cols = values.shape[:4]
    def lay(v: np.ndarray, gap: float) -> np.ndarray:
        out = np.full((a_n, rows + 1, b_n, cols + 1, *v.shape[4:]), gap, dtype=v.dtype)
        out[:, :rows, :, :cols] = v.swapaxes(1, 2)  # (A, r, B, c, ...)
        return out.reshape(a_n * (rows + 1), b_n * (cols + 1), *v.shape[4:])[:-1, :-1]
    index = np.moveaxis(np.indices((a_n, b_n, rows, cols)), 0, -1)  # (A, B, r, c, 4)
    return lay(values, fill), lay(index, -1)


def mosaic_axes(fig: go.Figure, tiles: tuple[int, int], size: tuple[int, int], titles: tuple[str, str],
                labels: Sequence[str] | None = None) -> None:
    """Square axes with a tick per tile of a :func:`tile` mosaic of ``tiles`` (A, B) tiles of ``size`` (r, c)."""
    (a_n, b_n), (rows, cols) = tiles, size
    fig.update_xaxes(title=titles[0], tickvals=[j * (cols + 1) + (cols - 1) / 2 for j in range(b_n)],
                     ticktext=[str(j + 1) for j in range(b_n)])
    fig.update_yaxes(title=titles[1], tickvals=[i * (rows + 1) + (rows - 1) / 2 for i in range(a_n)],
                     ticktext=list(labels) if labels else [str(i + 1) for i in range(a_n)])
    square_axes(fig)


def square_axes(fig: go.Figure) -> None:
    """Square pixels, the y axis running down as in an image, no grid."""
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showgrid=False, zeroline=False, autorange="reversed", scaleanchor="x", constrain="domain")


#: Pixels a character of a table cell's 12-pixel font takes on average, with a margin (drawn: about 5.2).
TABLE_CHAR_PX = 6
#: Pixels a cell keeps clear on its left and right, and per line of text.
_CELL_PAD, _LINE_PX = 16, 16


def wrap_cell(value, chars: int) -> str:
    """``value`` as text broken into lines of at most ``chars`` characters with ``<br>``, at spaces where it can
    (mid-word only for a longer word); the spaces left inside a line become non-breaking."""
    lines = textwrap.wrap(str(value), max(chars, 1), break_on_hyphens=False) or [""]
    return "<br>".join(line.replace(" ", "\u00a0") for line in lines)


def table(header: list[str], columns: list[list], widths: list[float], width: int) -> go.Figure:
    """A plotly table of ``columns`` under ``header``, ``width`` pixels wide, split by relative ``widths``;
    text too long for its column is wrapped onto more lines, the rows as tall as the most lines need."""
    import plotly.graph_objects as go  # here, so that readouts can use this module without plotly
    # Lines are broken here, not by plotly: it wraps by measuring text in the page, emptying cells drawn off screen.
    chars = [int((width - 20) * w / sum(widths) - _CELL_PAD) // TABLE_CHAR_PX for w in widths]
    header = [wrap_cell(h, n) for h, n in zip(header, chars)]
    cells = [[wrap_cell(v, n) for v in column] for column, n in zip(columns, chars)]
    def height(row: list[str], least: int) -> int:
        lines = max(text.count("<br>") + 1 for text in row)
        return least if lines == 1 else _LINE_PX * lines + 14
    # Every row as tall as the tallest: plotly grows a row to its lines only in the block of rows it draws first.
    tallest = max((height(list(row), 28) for row in zip(*cells)), default=28)
    fig = go.Figure(go.Table(columnwidth=widths, header=dict(values=header, align="left", height=height(header, 30)),
                             cells=dict(values=cells, align="left", height=tallest)))
    fig.update_layout(width=width, height=54 + height(header, 30) + tallest * max(map(len, cells), default=0),
                      margin=dict(l=10, r=10, t=34, b=10))  # 54: the mode bar above the header
    return fig


#: Shades per model family: blues for ViTs, reds for ResNets, greens for hybrids.
_FAMILY_COLORS = {"vit": ("#1f77b4", "#6baed6", "#08519c"), "resnet": ("#d62728", "#fc9272", "#a50f15"),
                  "hybrid": ("#2ca02c", "#74c476", "#006d2c")}


def family_color(family: str, k: int) -> str:
    """The ``k``-th shade of a family's colour (grey for an unknown family)."""
    shades = _FAMILY_COLORS.get(family, ("#555555", "#999999", "#222222"))
    return shades[k % len(shades)]


#: Colours told apart at a glance (plotly's D3 palette), for models that share a family.
_DISTINCT = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
             "#17becf")
#: Line dashes of a model's series (its poolings, layers), in order.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def model_colours(families: Sequence[str]) -> list[str]:
    """A colour per model of a figure, from each model's family: the family's colour for the only model of its
    family, otherwise a :data:`_DISTINCT` colour no other model has (two ViTs: blue and orange, not two blues)."""
    alone = {f for f in families if list(families).count(f) == 1}
    spare = itertools.cycle([c for c in _DISTINCT if c not in {family_color(f, 0) for f in alone}])
    return [family_color(f, 0) if f in alone else next(spare) for f in families]


def family_shades() -> Callable[[str], str]:
    """A colour per curve from its records' family: the k-th curve of a family gets its k-th shade."""
    counters: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)
    return lambda family: family_color(family, next(counters[family]))


def duration(seconds: float) -> str:
    """A run time for people: seconds under a minute ("0.4 s", "42 s"), else minutes ("3.2 min")."""
    return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s" if seconds < 59.5 else f"{seconds / 60:.1f} min"


def number(x: float, digits: int) -> str:
    """``x`` rounded to ``digits`` decimals, never "-0.00"."""
    return f"{round(float(x), digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def spread_text(values: Sequence[float], digits: int = 2, unit: str = "", scale: float = 1.0) -> str:
    """Mean and range of reference values (e.g. over init seeds), times ``scale``: "0.01 [-0.03, 0.04]"."""
    v = [scale * float(x) for x in values]
    return f"{number(sum(v) / len(v), digits)}{unit} [{number(min(v), digits)}, {number(max(v), digits)}]"


def layer_label(module: str) -> str:
    """A layer's module name as text: "blocks.1" -> "layer 2", "layer2" -> "stage 2", "act1" -> "stem", "pre_logits"."""
    kind, _, index = module.rpartition(".")
    if kind == "blocks" and index.isdigit():
        return f"layer {int(index) + 1}"
    if module.startswith("layer") and module[5:].isdigit():
        return f"stage {module[5:]}"
    return {"act1": "stem", "pre_logits": "pre-logits"}.get(module, module)


def px(x: float) -> str:
    """A distance in pixels, one decimal: "14.3 px"."""
    return f"{x:.1f} px"
