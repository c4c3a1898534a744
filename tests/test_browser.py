"""JupyterLab in headless Chromium: run a notebook as a user would, then change a widget."""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Requests the offline sandbox refuses (JupyterLab's news and update checks, fonts): not our errors.
IGNORED_CONSOLE = ("net::ERR_", "Failed to load resource", "favicon")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 with a token, serving the project folder."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    home = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               VITLAB_QUICK="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=open(home / "server.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield base, token
    server.terminate()
    server.wait(timeout=20)


@pytest.fixture
def page(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        yield page
        browser.close()


def _run_all(page, base, token, notebook):
    page.goto(f"{base}/lab/tree/notebooks/{notebook}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # The status bar names the kernel once it is connected; running before that is lost.
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "notify about news?" toast
    if news.count():
        news.click()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
        ".every(p => /\\[\\d+\\]/.test(p.textContent))",
        timeout=180_000,
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=180_000)


def _cell_errors(page):
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


def test_position_embeddings_notebook_in_jupyterlab(lab, page):
    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    _run_all(page, base, token, "02_position_embeddings.ipynb")
    plots = page.locator(".jp-Notebook .js-plotly-plot")
    plots.nth(2).wait_for(timeout=60_000)  # the static figure and the widget's two figures
    assert plots.count() == 3
    heatmap = plots.nth(1).locator(".hm image, .heatmaplayer image")  # plotly draws heatmaps as an image
    assert heatmap.count() >= 1
    box = plots.nth(1).bounding_box()
    assert box["width"] > 400 and box["height"] > 400, f"figure is squashed: {box}"
    widget = page.locator(".jp-Notebook .widget-vbox").first
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / "02_position_embeddings_widget_before.png"))

    title = plots.nth(1).locator(".gtitle")
    before = title.text_content()
    image_before = heatmap.first.get_attribute("href")
    select = page.locator(".jp-Notebook .widget-dropdown select").first
    other = next(o for o in select.locator("option").all_inner_texts() if o != before)
    select.select_option(label=other)
    page.wait_for_function("t => document.querySelectorAll('.jp-Notebook .js-plotly-plot')[1]"
                           ".querySelector('.gtitle').textContent === t", arg=other, timeout=60_000)
    assert heatmap.first.get_attribute("href") != image_before  # the tiles were redrawn, not only the title
    plots.nth(1).click(position={"x": box["width"] * 0.45, "y": box["height"] * 0.5})  # a tile: enlarge it
    page.wait_for_function("() => !document.querySelectorAll('.jp-Notebook .js-plotly-plot')[2]"
                           ".querySelector('.gtitle').textContent.includes('(row 1, col 1)')", timeout=30_000)
    widget.screenshot(path=str(ARTIFACTS / "02_position_embeddings_widget_after.png"))
    page.screenshot(path=str(ARTIFACTS / "02_position_embeddings_page.png"))

    assert _cell_errors(page) == []
    assert [e for e in page.console_errors if not any(s in e for s in IGNORED_CONSOLE)] == []


def test_attention_maps_notebook_in_jupyterlab(lab, page):
    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    _run_all(page, base, token, "04_attention_maps.ipynb")
    plots = page.locator(".jp-Notebook .js-plotly-plot")
    plots.nth(3).wait_for(timeout=60_000)  # static rollout, then the widget's rollout, patch and head maps
    assert plots.count() == 4
    for i in range(4):
        box = plots.nth(i).bounding_box()
        assert box["width"] > 300 and box["height"] > 300, f"figure {i} is squashed: {box}"
    widget = page.locator(".jp-Notebook .widget-vbox").first
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / "04_attention_maps_widget_before.png"))

    heads_title = plots.nth(3).locator(".gtitle")
    before = heads_title.text_content()
    select = page.locator(".jp-Notebook .widget-dropdown select").nth(1)  # the image dropdown
    other = select.locator("option").all_inner_texts()[2]
    select.select_option(label=other)
    page.wait_for_function("t => document.querySelectorAll('.jp-Notebook .js-plotly-plot')[3]"
                           ".querySelector('.gtitle').textContent.endsWith(t)", arg=other.replace("\xa0", " "),
                           timeout=60_000)
    assert heads_title.text_content() != before

    patch_title = plots.nth(2).locator(".gtitle")
    start = patch_title.text_content()
    box = plots.nth(1).locator(".heatmaplayer").bounding_box()
    plots.nth(1).click(position={"x": 10 + box["x"] - plots.nth(1).bounding_box()["x"] + box["width"] * 0.8,
                                 "y": box["y"] - plots.nth(1).bounding_box()["y"] + box["height"] * 0.8})
    page.wait_for_function("t => document.querySelectorAll('.jp-Notebook .js-plotly-plot')[2]"
                           ".querySelector('.gtitle').textContent !== t", arg=start, timeout=30_000)
    widget.screenshot(path=str(ARTIFACTS / "04_attention_maps_widget_after.png"))
    assert _cell_errors(page) == []
    assert [e for e in page.console_errors if not any(s in e for s in IGNORED_CONSOLE)] == []


def test_vit_vs_resnet_notebook_in_jupyterlab(lab, page):
    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    _run_all(page, base, token, "05_vit_vs_resnet.ipynb")
    plots = page.locator(".jp-Notebook .js-plotly-plot")
    # Sweep figure and table, the mini-sweep's, the probes' depth and shots figures, two CKA heatmaps.
    plots.nth(7).wait_for(timeout=60_000)
    assert plots.count() == 8
    sweep_plot = plots.nth(0)
    assert sweep_plot.locator(".scatterlayer .trace").count() >= 2  # a ViT and a ResNet curve
    assert plots.nth(2).locator(".scatterlayer .trace").count() == 2  # the live mini-sweep drew both families
    for i in (6, 7):
        assert plots.nth(i).locator(".hm image, .heatmaplayer image").count() >= 1
    widget = page.locator(".jp-Notebook .widget-vbox").first
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / "05_sweep_widget_images.png"))

    page.locator(".jp-Notebook .widget-toggle-button", has_text="training FLOPs").first.click()
    page.wait_for_function("() => document.querySelectorAll('.jp-Notebook .js-plotly-plot')[0]"
                           ".querySelector('.xtitle').textContent.includes('FLOPs')", timeout=30_000)
    widget.screenshot(path=str(ARTIFACTS / "05_sweep_widget_flops.png"))
    for name, index in (("05_probes", 4), ("05_cka", 6)):
        plots.nth(index).scroll_into_view_if_needed()
        plots.nth(index).screenshot(path=str(ARTIFACTS / f"{name}.png"))
    assert _cell_errors(page) == []
    assert [e for e in page.console_errors if not any(s in e for s in IGNORED_CONSOLE)] == []
