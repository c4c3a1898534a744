"""One execution per notebook: a browser test's Run All also serves as that notebook's nbmake check.

nbmake collects every notebook under ``notebooks/`` and executes it top to bottom in a fresh kernel:
it fails when a cell's output is an error or a cell never ran. The browser tests run the same notebooks
with Run All in a fresh JupyterLab kernel, under the same interpreter and environment (quick mode
included). A browser test records its notebook's cells as JupyterLab holds them once Run All has ended
(:func:`record`); that notebook's nbmake item then checks the record as nbmake checks its own execution
(:func:`nbmake_error`: every code cell ran, once, in order, and none has an error output) instead of
executing the notebook a second time. (The browser tests of notebooks 00, 06 and 07 run on the static path,
``VITLAB_STATIC=1``, so theirs is the run checked: every explorer those three show also runs on the FigureWidget
path, in the browser test of another notebook. The other notebooks' static-path browser tests rerun them, from the
first cell whose output was a widget, in the page and kernel their widget-path test hands on, in the same scheduler
unit; those reruns are not nbmake records.) Where no browser test ran a notebook (no chromium, ``-m "not browser"``,
only notebooks selected, another quick mode, or a browser test that broke before its Run All ended), its nbmake item
executes it itself, as before: no check is lost without a browser.
"""
import pytest
from nbmake.nb_result import NotebookError, NotebookResult
from nbmake.nb_run import NotebookRun
from nbmake.pytest_items import NotebookFailedException

#: Notebook path (relative to the project root, e.g. "notebooks/00_tour.ipynb") -> its executed cells.
EXECUTED = pytest.StashKey[dict]()


def record(config: pytest.Config, path: str, cells: list[dict], by: str) -> None:
    """Keep the cells of a notebook that test ``by`` ran, for the nbmake item of ``path``."""
    config.stash.setdefault(EXECUTED, {})[path] = {"by": by, "notebook": {"cells": cells}}


def nbmake_error(notebook: dict, first: int | None = 1) -> NotebookError | None:
    """What nbmake would report for an executed notebook: its last error output, or the first code cell
    that did not run, or ran out of order (the cells of one Run All in a fresh kernel count 1, 2, 3, ...; in a kernel
    that ran before, ``first=None``, they count on from the first cell's)."""
    error = NotebookRun._get_error(None, notebook)  # nbmake's own reading of error outputs (it needs no self)
    if error is not None:
        return error
    code = [(i, c) for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    if first is None:
        first = (code[0][1].get("execution_count") or 1) if code else 1
    for count, (i, cell) in enumerate(code, start=first):
        if cell.get("execution_count") != count:
            summary = f"code cell {i} has execution count {cell.get('execution_count')}, expected {count}"
            return NotebookError(summary=summary, trace=f"{summary}\n{''.join(cell['source'])}", failing_cell_index=i)
    return None


def _check_or_execute(item: pytest.Item, execute) -> None:
    """An nbmake item's test: the browser test's record when there is one, else nbmake's own execution."""
    path = item.path.relative_to(item.config.rootpath).as_posix()
    executed = item.config.stash.get(EXECUTED, {}).get(path)
    if executed is None:
        return execute()
    item.user_properties.append(("executed_by", executed["by"]))
    error = nbmake_error(executed["notebook"])
    if error is not None:
        raise NotebookFailedException(NotebookResult(nb=executed["notebook"], error=error))


def pair(nodeid: str) -> str | None:
    """The notebook a browser test or an nbmake item checks (``tests/test_browser.py::test_tour_notebook``,
    ``tests/test_browser.py::test_static_path[00_tour.ipynb]`` and ``notebooks/00_tour.ipynb::00_tour.ipynb`` all
    give ``tour``), None for other tests."""
    path, _, name = nodeid.partition("::")
    if path.endswith(".ipynb"):
        return path.rsplit("/", 1)[-1].removesuffix(".ipynb").split("_", 1)[-1]
    if not path.endswith("test_browser.py"):
        return None
    if name.startswith("test_static_path[") and name.endswith(".ipynb]"):
        return name.removeprefix("test_static_path[").removesuffix(".ipynb]").split("_", 1)[-1]
    if name.startswith("test_") and name.endswith("_notebook"):
        return name.removeprefix("test_").removesuffix("_notebook")
    return None


def serve_from_browser_runs(items: list[pytest.Item]) -> None:
    """Run nbmake's notebook items last, each reading its browser test's record when there is one."""
    notebooks = [item for item in items if getattr(item, "nbmake", False)]
    for item in notebooks:
        item.runtest = lambda item=item, execute=item.runtest: _check_or_execute(item, execute)
    items[:] = [item for item in items if not getattr(item, "nbmake", False)] + notebooks


def make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduler, but a notebook's browser tests and its nbmake item are one unit of work:
    one worker runs them, in collection order (the widget-path browser test first, then the static-path one, which
    reuses its page and kernel, then nbmake's); every other test is a unit alone.
    Units go out largest first, so the notebooks start first. (A browser test named otherwise than
    ``test_<notebook without its number>_notebook`` only loses the pairing: nbmake then runs the notebook.)"""
    from xdist.scheduler import LoadScopeScheduling

    class NotebookPairs(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            notebook = pair(nodeid)
            return f"notebook {notebook}" if notebook else nodeid

    return NotebookPairs(config, log)


def summary_lines(stats: dict[str, list]) -> list[str]:
    """For the terminal summary (``terminalreporter.stats``): the notebooks nbmake checked from a browser
    test's run instead of executing them again (read from the reports, so pytest-xdist workers' count too)."""
    reports = [r for key in ("passed", "failed") for r in stats.get(key, []) if getattr(r, "when", None) == "call"]
    return [f"{r.nodeid.split('::')[0]}: checked from {by}" for r in reports
            for name, by in r.user_properties if name == "executed_by"]
