"""Figures out of the notebook: standalone HTML pages (plotly.js inlined once: they open offline) and PNG, SVG or PDF
images through kaleido 1.x, which drives a Chrome (:func:`vitlab.settings.browser_path`); without one, the HTML page is
written instead, with one warning that says how to get the image."""
from __future__ import annotations

import asyncio
import html
import queue
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.basedatatypes import BaseFigure

from .. import settings
from ..io import atomic_write

IMAGE_FORMATS = ("png", "svg", "pdf")
FORMATS = ("html", *IMAGE_FORMATS)


@dataclass(frozen=True)
class Section:
    """A part of a page: a heading, its figures side by side, then paragraphs of plain text (escaped when written)."""
    heading: str
    figures: Sequence[Any] = ()
    text: Sequence[str] = ()


def _format(path: Path) -> str:
    """The format ``path``'s suffix names; ValueError in one line for any other."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        said = f"'{path.suffix}'" if path.suffix else "no suffix"
        raise ValueError(f"{path}: cannot save a figure with {said}; end the name in .html, .png, .svg or .pdf")
    return suffix


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path} exists: pass overwrite=True to replace it, or choose another path")


def _figure(fig: Any) -> go.Figure:
    """``fig`` (a Figure, a FigureWidget or a figure dict) as a plain Figure; TypeError in one line otherwise."""
    if isinstance(fig, (BaseFigure, dict)):
        return go.Figure(fig)
    raise TypeError(f"expected a plotly figure (go.Figure, go.FigureWidget or a figure dict), got {type(fig).__name__}")


def _figures(figures: Sequence[Any]) -> list[go.Figure | Section]:
    return [f if isinstance(f, Section) else _figure(f) for f in figures]


def _figure_json(fig: go.Figure) -> str:
    # "<" only occurs inside JSON strings, where \u003c reads the same: no "</script>" can end the block early.
    return pio.to_json(fig, validate=False).replace("<", "\\u003c")


_STYLE = ("body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}p{max-width:75em;line-height:1.4}"
          ".figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.note{color:#a60}")
#: Draws every figure block of the page into the div before it; config as in a notebook, without plotly's logo.
_DRAW = ("document.querySelectorAll('script.vitlab-figure').forEach(function (s) {"
         "var f = JSON.parse(s.textContent);"
         "Plotly.newPlot(s.previousElementSibling, f.data, f.layout, {displaylogo: false});});")


def _paragraphs(text: Sequence[str] | str, css: str = "") -> str:
    text = [text] if isinstance(text, str) else text
    attr = f' class="{css}"' if css else ""
    return "".join(f"<p{attr}>{html.escape(t).replace(chr(10), '<br>')}</p>\n" for t in text if t)


def page_html(parts: Sequence[go.Figure | Section], title: str = "", text: Sequence[str] | str = ()) -> str:
    """One self-contained HTML page: ``title``, ``text`` paragraphs, then ``parts`` (figures, or :class:`Section`\\ s
    of figures and paragraphs) in order; plotly.js inlined once, each figure's JSON in a block of its own."""
    from plotly.offline import get_plotlyjs
    body, n = [f"<h1>{html.escape(title)}</h1>\n" if title else "", _paragraphs(text)], 0
    for part in parts:
        section = part if isinstance(part, Section) else Section("", [part])
        body.append(f"<h2>{html.escape(section.heading)}</h2>\n" if section.heading else "")
        if section.figures:
            body.append('<div class="figures">\n')
            for fig in section.figures:
                n += 1
                body.append(f'<div><div id="figure-{n}"></div><script type="application/json" class="vitlab-figure">'
                            f"{_figure_json(_figure(fig))}</script></div>\n")
            body.append("</div>\n")
        body.append(_paragraphs(section.text))
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title or 'vitlab figure')}</title>\n<style>{_STYLE}</style>\n"
            f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n{"".join(body)}'
            f"<script>{_DRAW}</script>\n</body>\n</html>\n")


def save_page(figures: Sequence[Any], path: str | Path, title: str, text: Sequence[str] | str = (),
              overwrite: bool = False) -> Path:
    """Write ``figures`` (figures or :class:`Section`\\ s) and ``text`` (plain paragraphs, HTML-escaped) as one
    self-contained ``.html`` page that opens offline (plotly.js inlined once). Returns the path written.

    An existing file is refused unless ``overwrite``; the page is written atomically."""
    path = Path(path)
    if _format(path) != "html":
        raise ValueError(f"{path}: a page is HTML; end the name in .html")
    parts = _figures(figures)
    _refuse_existing([path], overwrite)
    page = page_html(parts, title, text)
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _size(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive number of pixels or None (the figure's own), got {value!r}")


def _chrome() -> tuple[Path | None, str]:
    """The Chrome kaleido will drive, or None with why there is none."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return None, "kaleido is not installed (pip install kaleido)"
    chrome = settings.browser_path()
    return chrome, "" if chrome else ("no Chrome found: install chromium (e.g. apt install chromium) or set "
                                      "BROWSER_PATH to a Chrome or Chromium executable")


def _fallback(path: Path, fmt: str, why: str) -> Path:
    """The page written instead of an image at ``path``, with one warning that says how to get the image."""
    page = path.with_suffix(".html")
    warnings.warn(f"{path.name}: wrote {page} instead of {fmt.upper()}; {why}", stacklevel=3)
    return page


def _render(figures: Sequence[go.Figure], fmt: str, chrome: Path, width: int | None = None,
            height: int | None = None, scale: float = 1.0) -> list[bytes]:
    """Each figure as ``fmt`` bytes, through one Chrome session (kaleido), in a thread of its own: a notebook's
    kernel already runs an event loop."""
    import kaleido
    opts = {"format": fmt, "scale": scale, **({"width": width} if width else {}), **({"height": height} if height else {})}

    async def run() -> list[bytes]:
        # mathjax=False: kaleido would fetch MathJax from a CDN, and no vitlab figure typesets LaTeX.
        async with kaleido.Kaleido(path=str(chrome), mathjax=False) as k:
            return [await k.calc_fig(fig, opts=opts) for fig in figures]

    done: queue.Queue = queue.Queue(maxsize=1)
    thread = threading.Thread(target=lambda: done.put(_outcome(run)), daemon=True)
    thread.start()
    thread.join()
    result = done.get()
    if isinstance(result, BaseException):
        raise result
    return result


def _outcome(run) -> Any:
    try:
        return asyncio.run(run())
    except BaseException as err:  # handed to the caller's thread
        return err


def save_figure(fig: Any, path: str | Path, overwrite: bool = False, *, width: int | None = None,
                height: int | None = None, scale: float = 1.0) -> Path:
    """Save one figure by ``path``'s suffix: ``.html`` a standalone page (plotly.js inlined, opens offline);
    ``.png``, ``.svg``, ``.pdf`` through kaleido (``width``, ``height`` in pixels: default the figure's own;
    ``scale`` multiplies a PNG's pixels). Without a Chrome (``BROWSER_PATH`` or a system chromium) the page is written
    beside ``path`` as ``.html`` instead, with one warning. Returns the path written.

    A bad suffix, size or figure is a one-line error before any work; an existing file is refused unless
    ``overwrite``; the file is written atomically (nothing half-written on failure)."""
    path = Path(path)
    fmt, fig = _format(path), _figure(fig)
    _size(width, "width")
    _size(height, "height")
    _refuse_existing([path], overwrite)
    if fmt == "html":
        return save_page([fig], path, "", overwrite=overwrite)
    chrome, why = _chrome()
    if chrome is None:
        page = _fallback(path, fmt, why)
        _refuse_existing([page], overwrite)
        return save_page([fig], page, "", overwrite=overwrite)
    image, = _render([fig], fmt, chrome, width, height, scale)
    return atomic_write(path, lambda tmp: tmp.write_bytes(image))


def save_view(figures: Sequence[Any], path: str | Path, title: str, text: Sequence[str] | str = (),
              overwrite: bool = False) -> list[Path]:
    """Save a view's figures and its text lines: ``.html`` one page (:func:`save_page`); ``.png``, ``.svg``,
    ``.pdf`` one file per figure (``path`` itself for one figure, else ``name-1.png``, ``name-2.png``, ...) and the
    text in ``name.txt`` beside them. Every target is checked before any is written. Returns the paths written."""
    path = Path(path)
    fmt, figures = _format(path), [_figure(f) for f in figures]
    text = [text] if isinstance(text, str) else [t for t in text if t]
    if not figures:
        raise ValueError(f"{path}: nothing to save: the view shows no figure yet")
    if fmt == "html":
        return [save_page(figures, path, title, text, overwrite)]
    chrome, why = _chrome()
    if chrome is None:
        page = _fallback(path, fmt, why)
        _refuse_existing([page], overwrite)
        return [save_page(figures, page, title, text, overwrite)]
    names = [path] if len(figures) == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}")
                                              for i in range(1, len(figures) + 1)]
    notes = [path.with_suffix(".txt")] if text else []
    _refuse_existing([*names, *notes], overwrite)
    images = _render(figures, fmt, chrome)  # all rendered before any file is written
    for name, image in zip(names, images):
        atomic_write(name, lambda tmp, image=image: tmp.write_bytes(image))
    for note in notes:
        atomic_write(note, lambda tmp: tmp.write_text("\n\n".join([title, *text]) + "\n", encoding="utf-8"))
    return [*names, *notes]


def plain_text(markup: str) -> str:
    """An HTML widget's value as plain text: line breaks kept, tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>", "\n", markup))).strip()


def widget_parts(widget: Any) -> tuple[list[go.Figure], list[str]]:
    """The figures (drawn FigureWidgets or static figures) and texts (HTML widgets) of a widget tree, in display order;
    hidden parts (``display: none``) skipped."""
    import ipywidgets as W
    figures, texts = [], []

    def walk(w: Any) -> None:
        if getattr(getattr(w, "layout", None), "display", None) == "none":
            return
        if isinstance(w, go.FigureWidget) or hasattr(w, "figure"):  # a FigureWidget, or the static path's figure
            if w.data:
                figures.append(go.Figure(getattr(w, "figure", w)))
        elif isinstance(w, W.HTML):
            if text := plain_text(w.value):
                texts.append(text)
        for child in getattr(w, "children", ()):
            walk(child)
    walk(widget)
    return figures, texts


def save_widget(widget: Any, path: str | Path, title: str, overwrite: bool = False) -> list[Path]:
    """Save what a view built of widgets shows (its drawn figures and HTML texts, in order) through
    :func:`save_view`: how views that are plain VBoxes save."""
    _format(Path(path))
    figures, texts = widget_parts(widget)
    return save_view(figures, path, title, texts, overwrite)
