"""The package's import graph runs one way: each module imports only from layers below it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitlab"

#: Lowest first (STYLE.md: data -> models -> capture/train -> metrics/compare -> plots -> widgets).
#: A module may import modules of a lower rank, or of its own rank where listed in SAME_RANK.
RANKS = {
    "settings": 0, "io": 0, "metrics": 0, "config": 0, "inputs": 0,
    "data": 1, "records": 1, "architectures": 1, "weights": 1, "checkpoints": 1,
    "models": 2,
    "hooks": 3, "features": 3, "train": 3, "inside": 3, "mpp": 3,
    "zoo": 4,
    "compare": 5, "sweep": 5, "readouts": 5, "recipes": 5,
    "plotting": 6, "plots": 6,
    "explorer": 7, "widgets": 7, "compare_widgets": 7,
    "__init__": 8, "__main__": 8,
}
SAME_RANK = {("features", "hooks"), ("inside", "hooks"), ("train", "inside"), ("sweep", "compare"),
             ("sweep", "readouts"), ("plots", "plotting"), ("widgets", "explorer"),
             ("widgets", "compare_widgets"), ("compare_widgets", "explorer"), ("recipes", "readouts"),
             ("train", "hooks"), ("train", "mpp")}


def _imports(path: Path) -> set[str]:
    """vitlab modules imported anywhere in ``path`` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                found |= {a.name for a in node.names} if node.module is None else {node.module.split(".")[0]}
            elif node.module and node.module.split(".")[0] == "vitlab":
                parts = node.module.split(".")
                found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vitlab.")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("."):
            found.add(node.value[1:])  # importlib.import_module(".widgets", ...)
    return found & set(RANKS)


def test_every_module_has_a_rank():
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(RANKS)


@pytest.mark.parametrize("module", sorted(RANKS))
def test_imports_run_downward(module):
    upward = [m for m in _imports(PACKAGE / f"{module}.py") if m != module and (
        RANKS[m] > RANKS[module] or (RANKS[m] == RANKS[module] and (module, m) not in SAME_RANK))]
    assert upward == [], f"vitlab.{module} imports {upward} from its own layer or above"


def test_the_checker_sees_upward_imports(tmp_path):
    """The parser finds all three spellings of an import, at module level and inside a function."""
    source = tmp_path / "m.py"
    source.write_text("from . import plots\nfrom .widgets import X\ndef f():\n    import vitlab.capture\n"
                      "    from vitlab import compare\n")
    assert _imports(source) == {"plots", "widgets", "compare"}


def test_command_line_loads_no_notebook_stack():
    probe = ("import runpy, sys\nsys.argv = ['vitlab', 'train', '--help']\n"
             "try:\n    runpy.run_module('vitlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'plotly', 'IPython')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert "--model" in out.stdout  # the help text was printed
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_widgets_load_on_first_use():
    import vitlab

    assert vitlab.widgets.__name__ == "vitlab.widgets" and vitlab.plots.__name__ == "vitlab.plots"
