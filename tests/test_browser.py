"""JupyterLab in headless Chromium: run a notebook as a user would, then change its widgets.

Every notebook runs with Run All (quick mode) and is then checked the same way
(:meth:`Lab.check`): no error and no unexpected stderr output in any cell, every figure
inside its output area with the file browser open, widget labels, dropdown texts and table cells not
cut off, plot titles clear of the mode bar. :meth:`Lab.change` is the one
screenshot/change/wait/screenshot sequence the notebook-specific tests use. A Run All is also the
notebook's nbmake check (tests/notebook_runs.py): its cells must all have run, in order, without an
error, and nbmake then does not execute the notebook a second time.
"""
import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect

from conftest import NOTEBOOKS_NEEDING_CIFAR
from notebook_runs import nbmake_error, record

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Requests the offline sandbox refuses (JupyterLab's news and update checks, fonts): not our errors.
IGNORED_CONSOLE = ("net::ERR_", "Failed to load resource", "favicon")
#: A line of a tqdm bar written as text (the fallback without widget bars): allowed where a test says so.
TEXT_PROGRESS_BAR = re.compile(r"\d+%\|.*\|")
#: Notebook 00's own images warning that some are far smaller than the model's input (the warning and its source line).
SIZE_WARNING = (re.compile(r"UserWarning: \d+ of \d+ images \(e\.g\. .*\) have a short side of \d+ px, far from"),
                re.compile(r"^\s*yours, names = vitlab\.data\.images\(photos"))
PLOTS = ".jp-Notebook .js-plotly-plot"
# The model of the notebook at a path as JupyterLab holds it (the server runs with expose_app_in_browser).
_MODEL = "[...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path).context.model"
# Run All has ended: every code cell has an execution count, or one shows an error (Run All stops there).
# (JupyterLab renders an error output as stderr text, so the model says it, not the page.)
_RUN_ALL_ENDED = f"""path => {{
    const code = [...{_MODEL}.cells].filter(c => c.type === 'code');
    const failed = c => [...Array(c.outputs.length).keys()].some(i => c.outputs.get(i).type === 'error');
    return code.some(failed) || code.every(c => c.executionCount !== null);
}}"""
# Its cells in nbformat's terms, outputs but errors left out.
_EXECUTED_CELLS = f"""path => {_MODEL}.toJSON().cells.map(c => ({{cell_type: c.cell_type, source: c.source,
    execution_count: c.execution_count ?? null, outputs: (c.outputs || []).filter(o => o.output_type === 'error')}}))"""
STDERR = "application/vnd.jupyter.stderr"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (make test installs it)"),
]


@pytest.fixture(scope="session")  # one server for the session (or per pytest-xdist worker)
def lab(tmp_path_factory, request):
    """A JupyterLab server on 127.0.0.1 with a token, serving the project folder, and what keeps a notebook's
    run for its nbmake item (None when the kernels here run in another quick mode than nbmake's). Its kernels run
    the FigureWidget path (``VITLAB_STATIC=0``) unless a test sets the static path in one (:class:`Lab`'s
    ``static``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    home = tmp_path_factory.mktemp("jupyter")
    # JupyterLab autosaves open notebooks (outputs included): serve copies, never the committed files.
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    # Quick mode unless the caller asks for the full notebooks (VITLAB_QUICK=0 pytest tests/test_browser.py).
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               VITLAB_QUICK=os.environ.get("VITLAB_QUICK", "1"))
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:  # kernels of two workers share the cores
        env["OMP_NUM_THREADS"] = "1"
    env["VITLAB_STATIC"] = "0"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the notebook's cells as JupyterLab holds them
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
    committed = {p: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}
    same_kernels = env["VITLAB_QUICK"] == os.environ.get("VITLAB_QUICK")
    yield base, token, functools.partial(record, request.config) if same_kernels else None
    server.terminate()
    server.wait(timeout=20)
    assert {p: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")} == committed, "a notebook was rewritten"


#: What a passing widget-path test leaves for its notebook's static-path test: notebook path -> (its page, with the
#: notebook open and its kernel running, and the index of the first cell whose output was a widget).
_HANDED_ON: dict[str, tuple] = {}
# Clear the outputs and execution counts of the cells from the first whose output is a widget (or the first of all) to
# the last; that cell's index.
_CLEAR_FROM_FIRST_WIDGET = f"""([path, all]) => {{
    const cells = [...{_MODEL}.cells];
    const widget = c => c.type === 'code'
        && [...Array(c.outputs.length).keys()].some(i => '{WIDGET_VIEW}' in c.outputs.get(i).data);
    const first = all ? 0 : Math.max(cells.findIndex(widget), 0);
    cells.slice(first).filter(c => c.type === 'code').forEach(c => {{ c.outputs.clear(); c.executionCount = null; }});
    return first;
}}"""


@pytest.fixture
def page(request, chromium):
    """A Chromium page in a context of its own, and afterwards the kernels of the server's notebooks ended. A passing
    widget-path test hands its page and kernel, every widget closed, on to its notebook's static-path test, next on the
    same worker (``page.hand_on``, :meth:`Lab.check`): the outputs from the first widget on cleared, the cells above as
    they ran (``page.rerun_from``: that first widget's cell; None for a fresh page). A page the test reloaded has every
    output cleared (rerun from 0): after a reload JupyterLab shows a plain figure's saved PNG until it is drawn anew."""
    lab = request.getfixturevalue("lab")
    handed = None
    if request.node.originalname == "test_static_path":
        handed = _HANDED_ON.pop(f"notebooks/{request.node.callspec.params['notebook']}", None)
    for stale, _ in _HANDED_ON.values():  # its static-path test did not run next (not selected)
        stale.context.close()
    _HANDED_ON.clear()
    if handed:
        page, page.rerun_from = handed
    else:
        page = chromium.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.rerun_from = None
    page.console_errors, page.nodeid, page.hand_on, page.reloaded = [], request.node.nodeid, None, False
    yield page
    if page.hand_on:
        _HANDED_ON[page.hand_on] = (page, page.evaluate(_CLEAR_FROM_FIRST_WIDGET, [page.hand_on, page.reloaded]))
        kernel_run(page, "import ipywidgets; ipywidgets.Widget.close_all()")
    else:
        page.context.close()
    _end_kernels(*lab[:2], keep=page.hand_on)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium per session (or pytest-xdist worker), started once: each test opens a context of its own
    (its own cookies and storage, as a fresh browser has)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"],
        )
        yield browser
        browser.close()


def _sessions(base: str, token: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as response:
        return json.load(response)


def _end_kernels(base: str, token: str, keep: str | None = None) -> None:
    """End the kernels of the notebooks a test opened (each holds its models in memory), but the one of notebook
    ``keep``, in the background: the server waits for a kernel to exit before it answers, and the next test need not."""
    sessions = [s for s in _sessions(base, token) if s["path"] != keep]

    def end():
        for session in sessions:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}",
                                                              method="DELETE"), timeout=30)
            except OSError:  # the server stopped first (the last test): it ends its kernels itself
                pass

    threading.Thread(target=end, daemon=True).start()


def _start_kernel(base: str, token: str, path: str) -> None:
    """Start the notebook's kernel through the server's sessions API while the page loads: JupyterLab connects to
    the session it finds for the notebook's path instead of starting one."""
    body = json.dumps({"path": path, "type": "notebook", "name": path.rsplit("/", 1)[-1],
                       "kernel": {"name": "python3"}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions?token={token}", data=body, method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=30)


def kernel_run(page, code: str) -> None:
    """Run ``code`` in the kernel of the notebook open in ``page``, silently (no output, no execution count)."""
    status = page.evaluate("""async code => {
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        return (await kernel.requestExecute({code, silent: true, store_history: false}).done).content.status;
    }""", code)
    assert status == "ok", (code, status)


# Page-side checks, each returning a list of problems (empty when all is well).
_CUT_LABELS = """() => {
    const cut = [...document.querySelectorAll('.jp-Notebook .widget-label, .jp-Notebook .widget-toggle-button')]
        .filter(e => e.offsetWidth > 0 && e.scrollWidth > e.clientWidth + 1).map(e => `cut label: ${e.textContent}`);
    const ctx = document.createElement('canvas').getContext('2d');
    const narrow = [...document.querySelectorAll('.jp-Notebook .widget-dropdown select')].filter(s => {
        ctx.font = getComputedStyle(s).font;
        const text = s.selectedIndex >= 0 ? s.options[s.selectedIndex].text : '';
        return s.offsetWidth > 0 && ctx.measureText(text).width + 24 > s.clientWidth;
    }).map(s => `cut dropdown: ${s.options[s.selectedIndex].text}`);
    return cut.concat(narrow);
}"""
# One plot (scrolled into view): does it end past its output area, does the mode bar cover its title?
_PLOT_PROBLEMS = """p => {
    const problems = [], box = p.getBoundingClientRect();
    const out = p.closest('.jp-OutputArea-output').getBoundingClientRect();
    if (box.right > out.right + 1) problems.push(`figure ends ${Math.round(box.right - out.right)} px past its output`);
    const title = p.querySelector('.gtitle'), bar = p.querySelector('.modebar');
    if (title && bar && title.textContent) {
        const t = title.getBoundingClientRect(), b = bar.getBoundingClientRect();
        if (!(t.right <= b.left || t.left >= b.right || t.bottom <= b.top || t.top >= b.bottom))
            problems.push(`mode bar covers title: ${title.textContent}`);
    }
    const area = p.querySelector('.nsewdrag');  // the plotting area of a cartesian figure
    if (title && area && title.textContent && title.getBoundingClientRect().bottom > area.getBoundingClientRect().top + 1)
        problems.push(`title runs into the plot: ${title.textContent}`);
    return problems;
}"""

# One plot's table cells whose text is wider than its column (plotly clips it: "vit_tiny_c10 <- mpp:vit_tiny_c...").
_CUT_CELLS = """p => [...p.querySelectorAll('.y-column')].flatMap(column => {
    const rect = column.querySelector('.cell-rect');
    const room = rect ? Number(rect.getAttribute('width')) - 8 : Infinity;  // the text starts 8 px in (cellPad)
    return [...column.querySelectorAll('.cell-text')].filter(t => t.getBBox().width > room)
        .map(t => `cut table cell (${Math.round(t.getBBox().width)} > ${room} px): ${t.textContent}`);
})"""

# Every plot's problems and cut table cells, each plot scrolled into view first, in one call from Python.
_EVERY_PLOTS_PROBLEMS = f"""() => [...document.querySelectorAll('{PLOTS}')].flatMap(p => {{
    p.scrollIntoView({{block: 'nearest'}});
    return ({_PLOT_PROBLEMS})(p).concat(({_CUT_CELLS})(p));
}})"""

# The (colour, dash) of each legend entry of one plot, as drawn.
_LEGEND_STYLES = """p => [...p.querySelectorAll('.legend .traces')].map(t => {
    const line = t.querySelector('.js-line');
    return line ? [line.style.stroke, line.style.strokeDasharray || 'solid'] : ['none', t.textContent];
})"""


class Lab:
    """One notebook open in JupyterLab: run it, change its widgets, check what a reader sees."""

    def __init__(self, page, lab, notebook: str, allow_stderr=(), keep: bool = True, static: bool = False):
        """``keep``: the Run All serves as the notebook's nbmake check (when ``lab`` keeps runs). ``static``: the
        kernel runs the static path (``VITLAB_STATIC=1`` set in it before anything runs). A page a passing
        widget-path test of the notebook handed on (``page.rerun_from``, the ``page`` fixture) is used as it is, its
        kernel with the imports, models and data loaded; :meth:`run_all` then runs its cells from ``rerun_from`` on."""
        self.page, self.notebook, self.allow_stderr, self.static = page, notebook, allow_stderr, static
        self.name, self.path = notebook.removesuffix(".ipynb"), f"notebooks/{notebook}"
        self.rerun_from = getattr(page, "rerun_from", None)
        ARTIFACTS.mkdir(exist_ok=True)
        base, token, kept = lab
        self.keep = kept if keep and self.rerun_from is None else None
        if self.rerun_from is None:
            _start_kernel(base, token, self.path)
            page.goto(f"{base}/lab/tree/{self.path}?token={token}&reset")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # The status bar names the kernel once it is connected; running before that is lost.
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "notify about news?" toast
            if news.count():
                news.click()
        if static:
            kernel_run(page, "import os; os.environ['VITLAB_STATIC'] = '1'")

    def run_all(self, timeout_s: int = 300) -> None:
        """Run All Cells (on a handed-on page: the cells from ``rerun_from`` to the last) and wait until every cell
        has run and the kernel is idle (longer in full mode); then check the cells run as nbmake would, and keep them
        for the notebook's nbmake item."""
        from vitlab.settings import quick_mode

        timeout_s *= 1 if quick_mode() else 8
        page = self.page
        if self.rerun_from is None:
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        else:
            page.evaluate("""first => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = first;
                window.jupyterapp.commands.execute('notebook:run-all-below'); }""", self.rerun_from)
        page.wait_for_function(_RUN_ALL_ENDED, arg=self.path, polling=250, timeout=timeout_s * 1000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_s * 1000)
        cells = page.evaluate(_EXECUTED_CELLS, self.path)
        if self.keep is not None:
            self.keep(self.path, cells, by=page.nodeid)
        error = nbmake_error({"cells": cells[self.rerun_from or 0:]}, first=1 if self.rerun_from is None else None)
        if error is not None:
            pytest.fail(error.trace, pytrace=False)

    def plots(self, count: int):
        """The notebook's plotly figures, once ``count`` of them are drawn."""
        plots = self.page.locator(PLOTS)
        plots.nth(count - 1).wait_for(timeout=60_000)
        assert plots.count() == count
        return plots

    def title(self, index: int) -> str:
        return self.page.locator(PLOTS).nth(index).locator(".gtitle").text_content()

    def title_has(self, index: int, text: str) -> bool:
        return self.page.evaluate(_title_has(index), text)

    def widget(self, index: int = 0):
        return self.page.locator(".jp-Notebook .jp-OutputArea-output .widget-vbox").nth(index)

    def change(self, shot: str, action, until: str, arg=None, widget: int = 0, timeout_s: int = 60) -> None:
        """Screenshot widget ``widget``, do ``action()``, wait until the JS predicate ``until(arg)``
        holds, screenshot again (``<notebook>_<shot>_before.png`` and ``_after.png``)."""
        box = self.widget(widget)
        box.scroll_into_view_if_needed()
        box.screenshot(path=str(ARTIFACTS / f"{self.name}_{shot}_before.png"))
        action()
        try:
            self.page.wait_for_function(until, arg=arg, timeout=timeout_s * 1000)
        finally:  # what the page shows, also when it never got there
            box.screenshot(path=str(ARTIFACTS / f"{self.name}_{shot}_after.png"))

    def own_models(self, widget: int, plot: int, compute: bool = False) -> None:
        """Explorer ``widget``'s model box takes a timm name (offline: refused in one line, its random-weight model
        offered and drawn) and a weights file (drawn); ``plot``: the index of the figure whose title names the
        model; ``compute``: the explorer redraws on its Compute button."""
        box = self.widget(widget)
        field, offer = box.locator("input[placeholder^='timm name']"), box.locator("button", has_text="random weights")

        def draw(action):
            action()
            if compute:  # once the kernel has taken the new model: the click then computes for it
                expect(box.locator(".widget-html").first).to_contain_text("press Compute", timeout=60_000)
                box.locator("button", has_text="Compute").click()

        def typed(text: str):
            field.fill(text)
            field.press("Enter")

        self.change("timm_name", lambda: draw(lambda: typed("test_vit")), "() => true", widget=widget)
        offer.wait_for(timeout=60_000)
        expect(box.locator(".widget-html").first).to_have_text(
            re.compile(r"^test_vit: its pretrained weights are not cached here"), timeout=30_000)
        self.change("random_weights", lambda: draw(offer.click), _title_has(plot), arg="test_vit (random weights)",
                    widget=widget)
        weights = ROOT / "data" / "zoo" / "vit_tiny_c10.safetensors"  # by its path: the menu and titles name the file
        self.change("weights_file", lambda: draw(lambda: typed(str(weights))), _title_has(plot), arg=weights.name,
                    widget=widget)
        menu = box.locator(".widget-dropdown select").first
        assert menu.evaluate("s => s.options[s.selectedIndex].text") == weights.name  # the menu names what is drawn

    def upload(self, widget: int, files) -> None:
        """Upload ``files`` with explorer ``widget``'s upload button."""
        with self.page.expect_file_chooser() as chooser:  # the widget's file input is not in the page
            self.widget(widget).locator("button.widget-upload").click()
        chooser.value.set_files([str(f) for f in files])

    def reload(self, scroll_to: str) -> None:
        """Save the notebook (as autosave would), reload the page with the kernel running, wait for the kernel, then
        bring the first cell whose source has ``scroll_to`` into view until its widget is drawn again. JupyterLab
        renders cells as they come into view, and on a loaded machine it neither reaches that cell by itself within a
        minute nor always restores its widgets on the first reload (CI once waited 180 s on one; on another run the
        view said "Error displaying widget: model not found"): a second reload is allowed, with a screenshot of the
        first, and the first's console errors of that failure are dropped."""
        self.page.reloaded = True
        failed = self.page.locator(".jp-OutputArea-output", has_text="Error displaying widget")
        for attempt in (1, 2):
            seen = len(self.page.console_errors)
            self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            self.page.wait_for_timeout(1000)
            self.page.reload()
            self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            self.page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            self.page.evaluate("""source => { const nb = window.jupyterapp.shell.currentWidget.content;
                const i = nb.widgets.findIndex(c => c.model.sharedModel.getSource().includes(source));
                return nb.scrollToItem ? nb.scrollToItem(i, 'start') : null; }""", scroll_to)
            try:
                self.widget().or_(failed).first.wait_for(state="attached", timeout=90_000)
                if not failed.count():
                    self.widget().scroll_into_view_if_needed(timeout=30_000)
                    return
            except PlaywrightTimeout:
                pass
            self.page.screenshot(path=str(ARTIFACTS / f"{self.name}_reload_{attempt}_failed.png"))
            if attempt == 2:
                pytest.fail(f"{self.notebook}: the widgets did not come back after two reloads", pytrace=False)
            errors = self.page.console_errors
            errors[seen:] = [e for e in errors[seen:] if "widget model not found" not in e]

    def open_file_browser(self) -> None:
        if not self.page.locator("#filebrowser").is_visible():
            self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='filebrowser']").click()
        self.page.locator("#filebrowser").wait_for(state="visible", timeout=10_000)
        self.page.wait_for_timeout(500)  # let the notebook panel and the widgets lay out again

    def check(self) -> None:
        """No errors, no unexpected stderr, figures inside their outputs with the file browser open,
        nothing cut off; a screenshot of the whole page."""
        page = self.page
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()
        assert errors == []
        stderr = page.locator(f".jp-OutputArea-output[data-mime-type='{STDERR}']").all_inner_texts()
        lines = [line for text in stderr for line in text.splitlines() if line.strip()]
        assert [line for line in lines if not any(p.search(line) for p in self.allow_stderr)] == []
        stubs = page.locator(".jp-OutputArea-output", has_text="Loading widget...")  # views of closed widgets
        assert stubs.count() == 0, stubs.all_inner_texts()
        self.open_file_browser()
        page.screenshot(path=str(ARTIFACTS / f"{self.name}{'_static' if self.static else ''}_page.png"), full_page=True)
        assert page.evaluate(_EVERY_PLOTS_PROBLEMS) == []
        assert page.evaluate(_CUT_LABELS) == []
        assert [e for e in page.console_errors if not any(s in e for s in IGNORED_CONSOLE)] == []
        if not self.static and self.notebook in STATIC_RERUN:
            page.hand_on = self.path  # all passed: this kernel runs the notebook's static path next


def _undrawn(plot, table) -> list[str]:
    """The texts of plotly ``table`` (header and cells) that ``plot`` does not draw, whitespace and line breaks
    aside."""
    flat = lambda text: "".join(str(text).replace("<br>", "").split())  # noqa: E731
    drawn = {flat(t) for t in plot.locator(".cell-text").all_text_contents()}
    expected = [*table.data[0].header.values, *(v for column in table.data[0].cells.values for v in column)]
    return sorted({str(v) for v in expected if flat(v) not in drawn})[:5]


def _title_has(index: int) -> str:
    """A JS predicate: figure ``index``'s title holds ``t`` (white space and line breaks aside)."""
    return f"t => (document.querySelectorAll('{PLOTS}')[{index}]?.querySelector('.gtitle')?.textContent || '')" \
        ".replace(/\\s/g, '').includes(t.replace(/\\s/g, ''))"


#: Explorer ``i`` (its index among the widget boxes) shows ``n`` figures, each drawing something: traces, heatmap
#: images or table texts.
_DRAWN = f"""([i, n]) => {{
    const box = document.querySelectorAll('.jp-Notebook .jp-OutputArea-output .widget-vbox')[i];
    const plots = box ? [...box.querySelectorAll('.js-plotly-plot')] : [];
    return plots.length === n && plots.every(p => p.querySelector('.scatterlayer .trace, .heatmaplayer image, .hm image, '
        + '.imagelayer image, .layer-above image, .cell-text'));
}}"""


def _title_is(index: int) -> str:
    return f"t => document.querySelectorAll('{PLOTS}')[{index}].querySelector('.gtitle').textContent === t"


def test_tour_notebook(lab, page):
    """On the static path (its nbmake item runs the widget path; nothing here is clicked, and the widget views of its
    explorers are drawn in the browser by notebooks 01-04)."""
    import vitlab

    nb = Lab(page, lab, "00_tour.ipynb", allow_stderr=SIZE_WARNING, static=True)
    nb.run_all()
    static_checks(page, nb)
    table = nb.plots(9).nth(0)  # the zoo table, then the explorers of the last section
    names = table.locator(".y-column").first.locator(".cell-text").all_text_contents()
    assert any("vit_tiny_c10" in n for n in names)  # underscores and all
    # Every text in full: architectures, "no head; masked colours ..." (long ones wrapped onto lines; Lab.check
    # sees that no line is wider than its column).
    assert not _undrawn(table, vitlab.views.figures.zoo_table(vitlab.training.zoo.zoo()))
    assert table.locator(".y-column .cell-rect").count() >= 5  # what Lab.check measures the texts against
    table.screenshot(path=str(ARTIFACTS / "00_zoo_table.png"))
    # describe_load's line printed as text, not shown as a quoted Python string.
    cells = json.loads((ROOT / "notebooks" / "00_tour.ipynb").read_text())["cells"]
    online = re.search(r'ONLINE_MODEL = "([^"]+)"', "".join(cells[1]["source"])).group(1)
    cell = page.locator(".jp-CodeCell", has_text="describe_load(ONLINE_MODEL)").first
    described = cell.locator(".jp-OutputArea-output").first.inner_text()
    assert described.startswith(f"{online}:"), described
    # Models from code (random-weight timm ViTs) in the explorers of 01-04, the last two reading a folder.
    # nine figures: the zoo table, then filters (2), positions (2), distance (1) and maps (3)
    kinds = sorted(p.name for p in vitlab.data.SAMPLES_DIR.joinpath("kinds").iterdir())
    for index, text in ((1, "vit_small_patch16_224 (from code): first 8"),
                        (3, "vit_small_patch14_reg4_dinov2 (from code)"),
                        (5, "vit_small_patch14_reg4_dinov2 (from code): mean attention distance"),
                        (5, "5 of the 5 images given"), (8, f"vit_small_patch16_224 (from code), {kinds[0]}")):
        assert nb.title_has(index, text), (index, text, nb.title(index))
    images = nb.widget(3).locator(".widget-dropdown select").nth(1).locator("option").all_text_contents()
    assert images == kinds
    for i in range(4):  # timm's own models cannot be rebuilt at random init: each status line says so
        expect(nb.widget(i).locator(".widget-html").first).to_contain_text("no random-init reference", timeout=30_000)
        nb.widget(i).screenshot(path=str(ARTIFACTS / f"00_own_model_{i}.png"))
    nb.check()


def test_embedding_filters_notebook(lab, page):
    nb = Lab(page, lab, "01_embedding_filters.ipynb")
    nb.run_all()
    nb.plots(4)  # two static figures, the explorer's filters and variance
    slider = page.locator(".jp-Notebook .widget-slider .widget-label").first
    assert slider.text_content() == "components"
    # 8 components: two even rows (4 + 4), not 7 and a lone tile on a band of its own.
    readout = page.locator(".jp-Notebook .widget-slider .widget-readout").first
    eight = f"() => document.querySelectorAll('{PLOTS}')[2].querySelector('.gtitle').textContent.includes('first 8 ')"
    nb.change("eight", lambda: (readout.click(), page.keyboard.press("Control+A"), page.keyboard.type("8"),
                                page.keyboard.press("Enter")), eight)
    nb.plots(4).nth(2).screenshot(path=str(ARTIFACTS / "01_filters_8.png"))
    nb.own_models(0, 2)
    # A browser reload with the kernel running: every figure draws again within 10 s, and the slider redraws.
    nb.reload(scroll_to="EmbeddingFiltersExplorer(")
    try:
        page.wait_for_function(_DRAWN, arg=[0, 2], timeout=10_000)
    finally:
        nb.widget().screenshot(path=str(ARTIFACTS / "01_reloaded.png"))
    page.wait_for_timeout(1000)  # the views just drawn finish setting up before the kernel sends them an update
    readout = page.locator(".jp-Notebook .widget-slider .widget-readout").first
    five = "() => document.querySelector('.jp-OutputArea-output .widget-vbox .gtitle').textContent.includes('first 5 ')"
    nb.change("reloaded_slider", lambda: (readout.click(), page.keyboard.press("Control+A"), page.keyboard.type("5"),
                                          page.keyboard.press("Enter")), five)
    nb.check()


def test_position_embeddings_notebook(lab, page):
    import vitlab

    nb = Lab(page, lab, "02_position_embeddings.ipynb")
    nb.run_all()
    plots = nb.plots(3)  # the static figure and the widget's two figures
    heatmap = plots.nth(1).locator(".hm image, .heatmaplayer image")  # plotly draws heatmaps as an image
    assert heatmap.count() >= 1
    box = plots.nth(1).bounding_box()
    assert box["width"] > 400 and box["height"] > 400, f"figure is squashed: {box}"
    ticks = plots.nth(2).locator(".xtick text").all_text_contents()
    assert ticks and all(t.isdigit() for t in ticks)  # no half-step ticks

    select = page.locator(".jp-Notebook .widget-dropdown select").first
    specs = vitlab.training.zoo.available(family=("vit", "hybrid"))
    labels = [t.replace("\xa0", " ") for t in select.locator("option").all_inner_texts()]
    assert labels == [vitlab.training.zoo.label(s) for s in specs]  # untrained architectures last, and marked
    other = next(i for i, s in enumerate(specs) if s != nb.title(1))
    image_before = heatmap.first.get_attribute("href")
    nb.change("model", lambda: select.select_option(index=other), _title_is(1), arg=specs[other])
    assert heatmap.first.get_attribute("href") != image_before  # the tiles were redrawn, not only the title
    if not vitlab.training.zoo.trained(specs[other]):  # an untrained model says so beside its noise
        expect(nb.widget().locator(".widget-html").first).to_contain_text("random weights", timeout=30_000)
    nb.change("click", lambda: plots.nth(1).click(position={"x": box["width"] * 0.45, "y": box["height"] * 0.5}),
              f"() => !document.querySelectorAll('{PLOTS}')[2].querySelector('.gtitle')"
              ".textContent.includes('(row 1, col 1)')", timeout_s=30)
    nb.own_models(0, 1)
    nb.check()


def test_attention_distance_notebook(lab, page):
    import vitlab

    nb = Lab(page, lab, "03_attention_distance.ipynb")
    nb.run_all()
    # the static view, the explorer, the recipes' arms and their timeline, the zoo run's five inside views, the
    # 40-epoch arms and their timeline, then the hybrid's view, the hybrid beside the ViT, its five inside views
    plots = nb.plots(18)
    depth = len(vitlab.load_model("vit_tiny_c10", device="cpu").blocks)
    comparison = vitlab.training.recipes.read()
    shipped = vitlab.training.run_folder.read_inside(vitlab.training.zoo.inside_folder("vit_tiny_c10_e40"))
    assert f"vit_tiny_c10_e40, epoch {shipped[-1].epoch}: filters" in nb.title(4)
    assert plots.nth(7).locator(".xtick text").count() >= 1  # its attention distance per head, layer by layer
    for i, shot in ((7, "distance"), (8, "timeline")):
        plots.nth(i).scroll_into_view_if_needed()
        plots.nth(i).screenshot(path=str(ARTIFACTS / f"03_zoo_inside_{shot}.png"))
    longer = vitlab.training.recipes.read(vitlab.training.recipes.LOCALITY_E40)
    assert f"at epoch {longer.epochs[-1]}:" in nb.title(9)
    assert all(arm in plots.nth(9).text_content() for arm in longer.arms)
    for i, shot in ((9, "e40_arms"), (10, "e40_timeline")):
        plots.nth(i).scroll_into_view_if_needed()
        plots.nth(i).screenshot(path=str(ARTIFACTS / f"03_cutmix_{shot}.png"))
    hybrid_field = vitlab.analysis.metrics.token_receptive_field(vitlab.load_model("hybrid_tiny_c10", device="cpu"))
    assert f"CNN stem receptive field ({hybrid_field:.0f} px)" in plots.nth(11).text_content()
    assert all(name in plots.nth(12).text_content() for name in ("vit_tiny_c10_e40", "hybrid_tiny_c10"))
    assert "no patch-embedding filters" in nb.title(13)  # a hybrid's filter panels say why they are empty
    for i, shot in ((11, "hybrid"), (12, "hybrid_vs_vit"), (13, "hybrid_filters_note"), (16, "hybrid_distance")):
        plots.nth(i).scroll_into_view_if_needed()
        plots.nth(i).screenshot(path=str(ARTIFACTS / f"03_{shot}.png"))
    assert "epoch" in nb.title(2) and all(arm in plots.nth(2).text_content() for arm in comparison.arms)
    for axis in ("xtick", "x2tick"):  # one depth axis per arm, every layer ticked
        assert plots.nth(2).locator(f".{axis} text").count() == depth
    assert max(float(t) for t in plots.nth(0).locator(".xtick text").all_text_contents()) == depth
    for i in (0, 1):  # the static view's and the explorer's "beyond 45 px" note sits above the plot the line runs in
        plots.nth(i).scroll_into_view_if_needed()
        note = plots.nth(i).locator(".annotation", has_text="beyond").bounding_box()
        assert note["y"] + note["height"] <= plots.nth(i).locator(".nsewdrag").first.bounding_box()["y"] + 1
    plots.nth(0).screenshot(path=str(ARTIFACTS / "03_resnet_note.png"))
    if vitlab.data.find_cifar10() is not None:
        assert "per class" in nb.title(0)  # says what it was computed on
    status = nb.widget().locator(".widget-html").first
    described = status.text_content()
    toggle = page.locator(".jp-Notebook .widget-toggle-button", has_text="renormalised over patches").first
    nb.change("stale", toggle.click, "() => document.querySelector('.jp-Notebook .widget-vbox .widget-html')"
              ".textContent.includes('press Compute')")
    compute = page.locator(".jp-Notebook button", has_text="Compute").first
    nb.change("compute", compute.click, "t => document.querySelector('.jp-Notebook .widget-vbox .widget-html')"
              ".textContent === t", arg=described)
    # The recipes' epoch slider redraws both arms and moves the timeline's marker to the epoch chosen.
    boxes = page.locator(".jp-Notebook .jp-OutputArea-output .widget-vbox")
    explorer = boxes.evaluate_all("bs => bs.findIndex(b => [...b.querySelectorAll('.widget-slider .widget-label')]"
                                  ".some(l => l.textContent === 'epoch'))")
    handle = boxes.nth(explorer).locator(".noUi-handle").first
    earlier = comparison.epochs[-2]
    nb.change("epoch", lambda: (handle.focus(), handle.press("ArrowLeft")),
              f"t => document.querySelectorAll('{PLOTS}')[2].querySelector('.gtitle').textContent.includes(t)",
              arg=f"at epoch {earlier}:", widget=explorer)
    expect(boxes.nth(explorer).locator(".widget-html").first).to_contain_text(f"Epoch {earlier},",
                                                                             timeout=30_000)  # the readout too
    nb.own_models(0, 1, compute=True)
    nb.change("upload", lambda: nb.upload(0, sorted(vitlab.data.SAMPLES_DIR.joinpath("kinds").iterdir())),
              _title_has(1), arg="5 of your 5 uploaded images")
    nb.check()


def test_attention_maps_notebook(lab, page):
    import vitlab

    nb = Lab(page, lab, "04_attention_maps.ipynb")
    nb.run_all()
    plots = nb.plots(4)  # static rollout, then the widget's rollout, patch and head maps
    for i in range(4):
        box = plots.nth(i).bounding_box()
        assert box["width"] > 300 and box["height"] > 300, f"figure {i} is squashed: {box}"
    assert plots.nth(0).locator(".colorbar").count() == 1  # the rollout says what its colours mean

    select = page.locator(".jp-Notebook .widget-dropdown select").nth(1)  # the image dropdown
    other = select.locator("option").all_inner_texts()[2]
    nb.change("image", lambda: select.select_option(label=other),
              f"t => document.querySelectorAll('{PLOTS}')[3].querySelector('.gtitle').textContent.endsWith(t)",
              arg=other.replace("\xa0", " "))
    start = nb.title(2)
    heat = plots.nth(1).locator(".heatmaplayer").bounding_box()
    figure = plots.nth(1).bounding_box()
    click = {"x": heat["x"] - figure["x"] + heat["width"] * 0.8, "y": heat["y"] - figure["y"] + heat["height"] * 0.8}
    nb.change("click", lambda: plots.nth(1).click(position=click),
              f"t => document.querySelectorAll('{PLOTS}')[2].querySelector('.gtitle').textContent !== t", arg=start,
              timeout_s=30)
    nb.own_models(0, 3)
    kinds = sorted(vitlab.data.SAMPLES_DIR.joinpath("kinds").iterdir())
    nb.change("upload", lambda: nb.upload(0, kinds), _title_has(1), arg=f"attention rollout: {kinds[0].name}")
    assert select.locator("option").all_inner_texts() == [k.name for k in kinds]
    nb.check()


@pytest.mark.cifar
def test_vit_vs_resnet_notebook(lab, page):
    import vitlab

    nb = Lab(page, lab, "05_vit_vs_resnet.ipynb", allow_stderr=(TEXT_PROGRESS_BAR,))
    nb.run_all(timeout_s=600)
    # Sweep figure and table, the mini-sweep's, the probes' depth and shots figures, two CKA heatmaps of
    # the ViT and two of the hybrid, attention distance against training-set size of the ViT and the hybrid.
    plots = nb.plots(12)
    # Straight after Run All, before any click: every header and every accuracy is drawn (a loaded machine draws
    # the table's header row a moment after the figure's frame).
    for index in (1, 3):
        page.wait_for_function(f"() => [...document.querySelectorAll('{PLOTS}')[{index}]"
                               ".querySelectorAll('#header .cell-text')].filter(t => t.textContent.trim()).length === 7",
                               timeout=30_000)
        headers = [t.replace("\xa0", " ") for t in plots.nth(index).locator("#header .cell-text").all_text_contents()]
        assert len(headers) == 7 and all(headers), headers
    runs = vitlab.result_files.read_runs(vitlab.result_files.RESULTS)
    assert not _undrawn(plots.nth(1), vitlab.views.study_figures.sweep_table(runs))
    assert plots.nth(0).locator(".scatterlayer .trace").count() >= 3  # a ViT, a hybrid and a ResNet curve
    assert plots.nth(2).locator(".scatterlayer .trace").count() == 3  # the live mini-sweep drew all three families
    for i in (6, 7, 8, 9):
        assert plots.nth(i).locator(".hm image, .heatmaplayer image").count() >= 1
    for i in (10, 11):  # the ViT's and the hybrid's: six sizes, the lowest head, uniform
        assert plots.nth(i).locator(".scatterlayer .trace").count() >= 8
    readout = page.locator(".jp-Notebook .jp-RenderedMarkdown", has_text="Pairwise:").first
    assert "hybrid_tiny_c10" in readout.text_content()  # the families readout, computed from the records
    flops = page.locator(".jp-Notebook .widget-toggle-button", has_text="training FLOPs").first
    nb.change("flops", flops.click, f"() => document.querySelectorAll('{PLOTS}')[0]"
              ".querySelector('.xtitle').textContent.includes('FLOPs')", timeout_s=30)
    # The y axis switched to a probe: the table's accuracy column follows it.
    metric = nb.widget().locator(".widget-dropdown select").first
    probe = metric.locator("option").all_inner_texts()[-1].replace("\xa0", " ")  # e.g. "25-shot probe"
    nb.change("probe", lambda: metric.select_option(label=probe),
              f"() => [...document.querySelectorAll('{PLOTS}')[1].querySelectorAll('#header')]"  # one per column
              ".some(h => h.textContent.includes('probe'))",
              timeout_s=30)
    shots = int(probe.split("-")[0])
    assert not _undrawn(plots.nth(1), vitlab.views.study_figures.sweep_table(runs, shots))
    for name, index in (("sweep", 0), ("probes", 4), ("cka", 6), ("cka_hybrid", 8), ("inside_hybrid", 11)):
        plots.nth(index).scroll_into_view_if_needed()
        plots.nth(index).screenshot(path=str(ARTIFACTS / f"05_{name}.png"))
    nb.check()


@pytest.mark.cifar
def test_train_notebook(lab, page):
    """On the static path (its nbmake item runs the widget path; no widget here is clicked, and the widget views of
    its explorers are drawn in the browser by notebooks 03, 04, 05 and 08)."""
    nb = Lab(page, lab, "06_train.ipynb", allow_stderr=(TEXT_PROGRESS_BAR,), static=True)
    nb.run_all(timeout_s=600)
    static_checks(page, nb)
    # Two training curves, the position embeddings, the attention explorer's three figures, and the
    # inside-views explorer's five (filters, explained variance, position, distance, against epoch) and two more:
    # the classifier's run recorded interventions (head ablation at the epoch, logit-lens accuracy by epoch).
    plots = nb.plots(13)
    for i in (0, 1):  # a run trained here, or resumed from an earlier Run All, shows its epochs
        assert plots.nth(i).locator(".scatterlayer .point").count() >= 3
    assert nb.title_has(11, "head ablation, epoch") and nb.title_has(12, "logit-lens accuracy")
    plots.nth(10).scroll_into_view_if_needed()
    plots.nth(10).screenshot(path=str(ARTIFACTS / "06_inside_views.png"))
    nb.check()


@pytest.mark.cifar
def test_pretraining_notebook(lab, page):
    """On the static path, as notebook 06's test (its nbmake item runs the widget path)."""
    import vitlab

    nb = Lab(page, lab, "07_pretraining.ipynb", allow_stderr=(TEXT_PROGRESS_BAR,), static=True)
    nb.run_all(timeout_s=600)
    static_checks(page, nb)
    # The objective on test images, the pre-training curves, the live micro run, the inside comparison,
    # the encoder's and the from-scratch model's inside-views explorers (five each), the fine-tuning sweep
    # and its table, the probes' depth and shots.
    plots = nb.plots(18)
    assert plots.nth(0).locator("image").count() == 16  # four images, four panels each
    assert plots.nth(1).locator(".legendtext", has_text="guess:").count() == 3  # neighbours, image mean, most frequent
    assert plots.nth(2).locator(".scatterlayer .point").count() >= 2  # the live run shows its epochs
    assert plots.nth(3).locator(".scatterlayer .trace").count() == 7  # three models x (mean, most local) + uniform
    shipped = vitlab.training.zoo.training_record("vit_tiny_c10_mpp").log
    assert f"vit_tiny_c10_mpp, epoch {shipped[-1]['epoch']}" in nb.title(4)  # the encoder's, at its last epoch
    assert "vit_tiny_c10_e40, epoch 40" in nb.title(9)  # then the from-scratch model's
    legend = plots.nth(14).locator(".legendtext").all_text_contents()
    assert any("←" in t for t in legend) and any("resnet" in t for t in legend), legend
    runs = vitlab.result_files.read_runs(vitlab.result_files.RESULTS) + vitlab.result_files.read_runs(
        vitlab.result_files.MPP_RESULTS)
    assert not _undrawn(plots.nth(15), vitlab.views.study_figures.sweep_table(runs))  # "vit_tiny_c10 ← mpp:..." whole
    for i in (16, 17):  # the probes by depth and by shots: every series told apart (not four near-identical blues)
        styles = [tuple(s) for s in plots.nth(i).evaluate(_LEGEND_STYLES)]
        assert len(styles) >= 4 and len(set(styles)) == len(styles), styles
    for i, shot in ((0, "objective"), (1, "curves"), (3, "inside"), (14, "fine_tuning"), (15, "table"), (16, "probes"),
                    (17, "probe_shots")):
        plots.nth(i).scroll_into_view_if_needed()
        plots.nth(i).screenshot(path=str(ARTIFACTS / f"07_{shot}.png"))
    nb.check()


@pytest.mark.cifar
def test_interventions_notebook(lab, page):
    nb = Lab(page, lab, "08_interventions.ipynb", allow_stderr=(TEXT_PROGRESS_BAR,))
    nb.run_all(timeout_s=300)
    # Lens, attribution, ablation matrix and branches, patching by token and by head, the distance link; the committed
    # run's inside views (five Fig. 7 panels, head ablation at the epoch, lens by epoch); the short run's curves and
    # inside views; the explorer's matrix, clicked head, lens and attribution.
    plots = nb.plots(26)
    names = plots.nth(6).locator(".annotation-text").all_text_contents()
    assert {"vit_tiny_c10_e40", "hybrid_tiny_c10", "vit_tiny_c10_mpp_ft"} <= set(names), names
    for ablated, lens in ((12, 13), (20, 21)):  # the committed run's and the short run's intervention panels
        for index, text in ((ablated, "head ablation, epoch"), (lens, "logit-lens accuracy")):  # drawn, if late
            page.wait_for_function(_title_has(index), arg=text, timeout=60_000)
    start = nb.title(23)
    heat = plots.nth(22).locator(".nsewdrag").first.bounding_box()
    figure = plots.nth(22).bounding_box()
    click = {"x": heat["x"] - figure["x"] + heat["width"] * 0.9, "y": heat["y"] - figure["y"] + heat["height"] * 0.9}
    nb.change("click", lambda: plots.nth(22).click(position=click),
              f"t => document.querySelectorAll('{PLOTS}')[23].querySelector('.gtitle').textContent !== t", arg=start,
              widget=3, timeout_s=30)
    assert nb.title_has(23, "Layer 6, head 4:"), nb.title(23)  # the bottom-right head of vit_tiny_c10_e40
    for i, shot in ((0, "lens"), (1, "attribution"), (2, "ablation"), (3, "branches"), (4, "patching"),
                    (6, "link"), (12, "inside_ablation"), (13, "inside_lens"), (23, "clicked_head")):
        plots.nth(i).scroll_into_view_if_needed()
        plots.nth(i).screenshot(path=str(ARTIFACTS / f"08_{shot}.png"))
    nb.check()

@pytest.mark.cifar
def test_attributions_notebook(lab, page):
    import vitlab

    nb = Lab(page, lab, "09_attributions.ipynb", allow_stderr=(TEXT_PROGRESS_BAR,))
    nb.run_all(timeout_s=600)
    # Maps, curves, sanity cascade, Focus bars, the committed scoreboard; the explorer's maps, mean curves, one
    # image's curves and its scores table.
    plots = nb.plots(9)
    rows, _ = vitlab.result_files.read_scoreboards()
    table = plots.nth(4).text_content()
    assert all(model in table for model in {r.model for r in rows})  # every committed model has its rows
    for i in range(9):  # each draws something (a FigureWidget draws a moment after its view is in the page)
        expect(plots.nth(i).locator(".scatterlayer .trace, .barlayer .trace, .heatmaplayer image, .hm image, "
                                    ".cell-text"), f"figure {i} draws nothing").not_to_have_count(0, timeout=30_000)
    for shot, index in (("maps", 0), ("curves", 1), ("sanity", 2), ("focus", 3), ("scoreboard", 4)):
        plots.nth(index).scroll_into_view_if_needed()
        plots.nth(index).screenshot(path=str(ARTIFACTS / f"09_{shot}.png"))
    # A click on the explorer's last map tile (the last image) shows that image's curves.
    start = nb.title(7)
    tiles = plots.nth(5).locator(".heatmaplayer image, .hm image")
    tile, figure = tiles.nth(tiles.count() - 1).bounding_box(), plots.nth(5).bounding_box()
    click = {"x": tile["x"] - figure["x"] + tile["width"] / 2, "y": tile["y"] - figure["y"] + tile["height"] / 2}
    explorer = page.locator(".jp-Notebook .jp-OutputArea-output .widget-vbox").count() - 1
    nb.change("click", lambda: plots.nth(5).click(position=click),
              f"t => document.querySelectorAll('{PLOTS}')[7].querySelector('.gtitle').textContent !== t", arg=start,
              widget=explorer, timeout_s=30)
    nb.check()


#: How many plotly figures each notebook draws in quick mode, on either path.
FIGURES = {"00_tour.ipynb": 9, "01_embedding_filters.ipynb": 4, "02_position_embeddings.ipynb": 3,
           "03_attention_distance.ipynb": 18, "04_attention_maps.ipynb": 4, "05_vit_vs_resnet.ipynb": 12,
           "06_train.ipynb": 13, "07_pretraining.ipynb": 18, "08_interventions.ipynb": 26,
           "09_attributions.ipynb": 9}
# What drew each figure: plotly's renderer of its mime type (a plain figure) or a FigureWidget's view.
_DRAWN_BY = f"() => [...document.querySelectorAll('{PLOTS}')].map(p => p.closest('.jp-RenderedPlotly') ? 'plain' : 'widget')"
_EMPTY = f"""() => [...document.querySelectorAll('{PLOTS}')].map((p, i) => p.querySelector('.scatterlayer .trace, '
    + '.heatmaplayer image, .hm image, .imagelayer image, .layer-above image, .cell-text, .annotation') ? -1 : i)
    .filter(i => i >= 0)"""
_TITLES = f"() => [...document.querySelectorAll('{PLOTS}')].map(p => p.querySelector('.gtitle')?.textContent || '')"


#: Notebooks whose browser test above runs on the static path already; its Run All is also the notebook's nbmake
#: check (every explorer they show runs on the FigureWidget path in another notebook's browser test).
STATIC_TESTED = {"00_tour.ipynb", "06_train.ipynb", "07_pretraining.ipynb"}
#: The others, whose static path :func:`test_static_path` runs after their widget-path test.
STATIC_RERUN = [n for n in FIGURES if n not in STATIC_TESTED]
# Every title that was there is back (a figure drawn again whole has none for a moment) and one changed to column 2.
_PICKED = f"""was => {{
    const now = ({_TITLES})(), before = JSON.parse(was);
    return now.every((t, i) => t || !before[i]) && now.some((t, i) => t !== before[i] && /col 2\\)|\\(1, 2\\)/.test(t));
}}"""


def static_checks(page, nb: Lab) -> None:
    """The static path's checks after Run All: every figure a plain plotly figure (none a FigureWidget), each drawing
    something; one patch picker per explorer whose figure is clicked on the widget path, and its column slider
    moved redraws that explorer's detail figure only."""
    nb.plots(FIGURES[nb.notebook])
    assert set(page.evaluate(_DRAWN_BY)) == {"plain"}
    assert page.evaluate(_EMPTY) == []
    column = page.locator(".jp-Notebook .widget-slider", has_text="patch column")
    cells = "".join("".join(c["source"]) for c in json.loads((ROOT / "notebooks" / nb.notebook).read_text())["cells"])
    assert column.count() == len(re.findall(r"(PositionEmbedding|AttentionMaps)Explorer\(|position_embedding_explorer\(",
                                            cells))
    if column.count():
        titles = page.evaluate(_TITLES)
        handle = column.locator(".noUi-handle").first
        boxes = page.locator(".jp-Notebook .jp-OutputArea-output .widget-vbox")
        explorer = boxes.evaluate_all("bs => bs.findIndex(b => [...b.querySelectorAll('.widget-slider .widget-label')]"
                                      ".some(l => l.textContent === 'patch column'))")
        nb.change("static_pick", lambda: (handle.focus(), handle.press("ArrowRight")), _PICKED, arg=json.dumps(titles),
                  widget=explorer)
        after = page.evaluate(_TITLES)
        changed = [i for i, (a, b) in enumerate(zip(titles, after)) if a != b]
        assert len(changed) == 1 and re.search(r"col 2\)|\(1, 2\)", after[changed[0]]), (titles, after)  # the detail


@pytest.mark.parametrize("notebook", [pytest.param(n, marks=[pytest.mark.cifar] if n in NOTEBOOKS_NEEDING_CIFAR else [])
                                      for n in STATIC_RERUN])
def test_static_path(lab, page, notebook):
    """VITLAB_STATIC=1 (as in VS Code and Colab), each notebook the tests above run on the widget path. When the
    notebook's widget-path test passed (on the same worker just before: tests/notebook_runs.py), in the page and kernel
    it handed on, its widgets closed: the cells from the first whose output was a widget to the last run again. The
    path changes only what explorers draw (``settings.static_mode`` is read in ``vitlab.views`` alone:
    test_static_mode_is_read_by_the_views_alone), so the cells above it, plain figures and text, stay as they ran;
    their imports, models, data and analyses are not computed again. Else Run All in a fresh kernel."""
    nb = Lab(page, lab, notebook, allow_stderr=(TEXT_PROGRESS_BAR, *SIZE_WARNING), keep=False, static=True)
    nb.run_all(timeout_s=600)
    static_checks(page, nb)
    nb.check()


def test_page_checks_find_a_figure_past_its_output_and_a_cut_table_cell(chromium):
    """Lab.check's one-call plot checks on a page made to fail them: a figure wider than its output, a title under
    the mode bar, a table cell's text wider than its column."""
    context = chromium.new_context(viewport={"width": 800, "height": 600})
    page = context.new_page()
    page.set_content("""<div class="jp-Notebook"><div style="height: 2000px"></div>
        <div class="jp-OutputArea-output" style="width: 300px"><div class="js-plotly-plot" style="width: 420px">
          <div class="gtitle" style="position: absolute; width: 100px; height: 20px">a title</div>
          <div class="modebar" style="position: absolute; width: 100px; height: 20px"></div>
          <svg width="400" height="40"><g class="y-column"><rect class="cell-rect" width="40" height="20"/>
            <text class="cell-text" x="0" y="15">a long cell text</text></g></svg></div></div></div>""")
    problems = page.evaluate(_EVERY_PLOTS_PROBLEMS)
    context.close()
    assert len(problems) == 3, problems
    assert problems[0] == "figure ends 120 px past its output"
    assert problems[1] == "mode bar covers title: a title"
    assert problems[2].startswith("cut table cell (") and problems[2].endswith("> 32 px): a long cell text")


def test_report_offline(tmp_path, chromium):
    """vitlab.report's page, opened from file:// with every network request refused, draws every figure it holds."""
    import vitlab
    path = vitlab.report("vit_tiny_c10", path=tmp_path / "report.html")
    blocks = re.findall(r'<script type="application/json" class="vitlab-figure">(.*?)</script>', path.read_text(), re.S)
    traces = [len(json.loads(b)["data"]) for b in blocks]  # what each figure written holds
    written = len(blocks)
    refused = []
    context = chromium.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (refused.append(route.request.url), route.abort()))
    page.goto(path.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {written}", timeout=30_000)
    # Each figure drew every trace: a scatter trace is an SVG group, a heatmap or an RGB image an <image>.
    drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el =>
        el.querySelectorAll('g.trace, image').length)""")
    title = page.locator("h1").text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()
    assert written == 10 and drawn == traces, (drawn, traces)  # filters 2, positions 1, distance 1, 6 rollout maps
    assert title == "vitlab report: vit_tiny_c10"
    assert errors == [] and refused == []
