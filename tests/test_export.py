"""Figures out of the notebook: standalone HTML, PNG/SVG through kaleido, the fallback without a Chrome, refusals,
atomic writes, an explorer's save and the report page."""
from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

import plotly.graph_objects as go
import pytest
import timm
import torch
from plotly.offline import get_plotlyjs

import vitlab
from vitlab import settings
from vitlab.views import export

BLOCK = re.compile(r'<script type="application/json" class="vitlab-figure">(.*?)</script>', re.S)


def _figure(title: str = "a </script> title & more") -> go.Figure:
    fig = go.Figure([go.Scatter(x=[1, 2, 3], y=[4.5, -1.0, 2.25], name="line"),
                     go.Heatmap(z=[[0.0, 1.0], [2.0, 3.0]])])
    return fig.update_layout(title=title, width=420, height=300)


def _blocks(page: str) -> list[go.Figure]:
    return [go.Figure(json.loads(b)) for b in BLOCK.findall(page)]


def _chrome_or_skip() -> Path:
    pytest.importorskip("kaleido", reason="kaleido is not installed")
    chrome = settings.browser_path()
    if chrome is None:
        pytest.skip("no Chrome or Chromium (BROWSER_PATH, chromium on the PATH): image export needs one")
    return chrome


def test_html_is_standalone_and_round_trips(tmp_path):
    fig = _figure()
    path = export.save_figure(fig, tmp_path / "fig.html")
    page = path.read_text()
    assert get_plotlyjs()[:2000] in page  # plotly.js inlined
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script is loaded from elsewhere: the page needs a network"
    got, = _blocks(page)  # the </script> in the title did not end the block early
    assert got.to_plotly_json()["data"] == fig.to_plotly_json()["data"]
    assert got.layout.title.text == "a </script> title & more"


def test_page_inlines_plotly_once_and_escapes_text(tmp_path):
    figs = [_figure(f"figure {i}") for i in range(3)]
    sections = [export.Section("first", figs[:1], ["under <b>one</b>"]), *figs[1:]]
    path = export.save_page(sections, tmp_path / "page.html", "A & B", text=["x < y & z", "second"])
    page = path.read_text()
    assert page.count(get_plotlyjs()[:2000]) == 1
    assert [f.layout.title.text for f in _blocks(page)] == ["figure 0", "figure 1", "figure 2"]
    assert "<p>x &lt; y &amp; z</p>" in page and "under &lt;b&gt;one&lt;/b&gt;" in page
    assert "<h1>A &amp; B</h1>" in page and "<h2>first</h2>" in page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_png_has_the_asked_size_and_svg_is_svg(tmp_path):
    _chrome_or_skip()
    path = export.save_figure(_figure(), tmp_path / "fig.png", width=300, height=200)
    assert _png_size(path.read_bytes()) == (300, 200)
    written = export.save_view([_figure(), _figure("b")], tmp_path / "view.svg", "a view", ["its readout"])
    assert [p.name for p in written] == ["view-1.svg", "view-2.svg", "view.txt"]
    assert all(p.read_text().startswith("<svg") for p in written[:2])
    assert (tmp_path / "view.txt").read_text() == "a view\n\nits readout\n"


def _no_path_chrome(monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(settings.shutil, "which", lambda name: None)
    monkeypatch.setattr(settings, "SYSTEM_CHROMES", ())


@pytest.mark.parametrize("how", ["BROWSER_PATH to a missing file", "no chromium on the PATH"])
def test_without_chrome_html_is_written_with_one_warning(how, tmp_path, monkeypatch):
    if how.startswith("BROWSER_PATH"):
        monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "missing-chrome"))
    else:
        _no_path_chrome(monkeypatch)
    assert settings.browser_path() is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export.save_figure(_figure(), tmp_path / "fig.png")
    assert [str(w.message).count("\n") for w in caught] == [0]
    assert "BROWSER_PATH" in str(caught[0].message) and "chromium" in str(caught[0].message)
    assert path == tmp_path / "fig.html" and not (tmp_path / "fig.png").exists()
    assert len(_blocks(path.read_text())) == 1


def test_existing_files_are_refused_unless_overwrite(tmp_path):
    path = tmp_path / "fig.html"
    path.write_text("a user's page")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.save_figure(_figure(), path)
    assert path.read_text() == "a user's page"
    export.save_figure(_figure(), path, overwrite=True)
    assert len(_blocks(path.read_text())) == 1
    (tmp_path / "view-2.png").write_text("kept")  # one target of several taken: nothing is written
    with pytest.raises(FileExistsError, match="view-2.png"):
        export.save_view([_figure(), _figure()], tmp_path / "view.png", "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.html", "view-2.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "fig.html"
    path.write_text("old")

    def half(self, text, **kwargs):  # a write that dies half-way (a full disk, a kill)
        with open(self, "w") as f:
            f.write(text[:100])
        raise OSError("the write broke off")
    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError, match="broke off"):
        export.save_figure(_figure(), path, overwrite=True)
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["fig.html"]
    monkeypatch.setattr(settings, "browser_path", lambda: tmp_path / "chrome")
    monkeypatch.setattr(export, "_render", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("Chrome crashed")))
    with pytest.raises(RuntimeError, match="Chrome crashed"):
        export.save_figure(_figure(), tmp_path / "fig.png")
    assert [p.name for p in tmp_path.iterdir()] == ["fig.html"]


def test_explorer_save_writes_its_figures_and_readout(tiny_vit, tmp_path):
    from vitlab.views.explorers import PositionEmbeddingExplorer
    explorer = PositionEmbeddingExplorer(model=tiny_vit)
    path, = explorer.save(tmp_path / "positions.html")
    page = path.read_text()
    shown = [json.loads(go.Figure(p).to_json())["data"] for p in explorer.plots]
    assert [json.loads(b)["data"] for b in BLOCK.findall(page)] == shown
    assert "Measured (Fig. 7 (center)):" in page and "Paper:" in page
    with pytest.raises(FileExistsError):
        explorer.save(path)


def _texts(page: str) -> str:
    return re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", page, flags=re.S))


def test_report_of_a_vit_has_every_panel_once(tiny_vit, tmp_path):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    path = vitlab.report(tiny_vit, images, tmp_path / "report.html")
    page = path.read_text()
    text = _texts(page)
    for figure in ("Fig. 7 (left)", "Fig. 7 (center)", "Fig. 7 (right)", "Fig. 6"):
        assert f"Measured ({figure}):" in text
    # filters + variance, position mosaic, distance, one rollout map per image (3 < MAPS)
    assert len(_blocks(page)) == 2 + 1 + 1 + 3
    assert "the 3 images given" in text and "vitlab " in text
    assert "RANDOM WEIGHTS" not in text  # a model from code: its weights are whatever it holds


def test_report_notes_what_a_model_lacks_and_random_weights(tmp_path):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    hybrid = vitlab.report("hybrid_micro_c10", images, tmp_path / "hybrid.html")
    text = _texts(hybrid.read_text())
    assert "A hybrid has no patch-embedding filters" in text and "Measured (Fig. 7 (left))" not in text
    assert "RANDOM WEIGHTS" in text  # an untrained zoo entry loads with random weights
    resnet = vitlab.report(timm.create_model("resnet18", pretrained=False, num_classes=10),
                           images, tmp_path / "resnet.html")
    page = resnet.read_text()
    assert _blocks(page) == [] and _texts(page).count("A ResNet has no tokens or attention") == 4


def test_a_view_of_plain_widgets_saves_its_figures_and_readout(tmp_path):
    from vitlab.views.study_explorers import RecipesExplorer
    view = RecipesExplorer()  # the committed locality comparison
    path, = view.save(tmp_path / "recipes.html")
    page = path.read_text()
    shown = [json.loads(go.Figure(w).to_json())["data"] for w in (view.distance, view.timeline)]
    assert [json.loads(b)["data"] for b in BLOCK.findall(page)] == shown
    assert export.plain_text(view.readout.value).split("\n")[0] in export.plain_text(page)
