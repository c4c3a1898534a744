"""The package's import graph runs one way: each module imports only from layers below it."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitlab"

#: The folders in the order the data flows; a module imports only from its own folder or folders before it.
FOLDERS = ("", "data", "models", "analysis", "training", "views")
#: Within a folder, lowest first: a module imports modules of a lower rank, or of its own rank where listed in
#: SAME_RANK. The package's ``__init__`` and ``__main__`` sit above every folder.
RANKS = {
    "settings": 0, "io": 0, "records": 1, "result_files": 2, "data.files": 0, "data.image_files": 1, "data.__init__": 2,
    "models.inputs": 0, "models.architectures": 0, "models.weights": 0, "models.hub": 0, "models.sidecar": 1,
    "models.loading": 2, "models.__init__": 3,
    "analysis.metrics": 0, "analysis.attention_maps": 0, "analysis.capture": 1, "analysis.references": 1, "analysis.distance": 2,
    "analysis.filters": 2, "analysis.positions": 2, "analysis.rollout": 2, "analysis.features": 2,
    "analysis.residual": 2, "analysis.lens": 3, "analysis.ablation": 4, "analysis.patching": 4,
    "analysis.faithfulness": 4, "analysis.representations": 3, "analysis.saliency": 4, "analysis.map_checks": 5,
    "analysis.scoreboard": 6, "analysis.__init__": 7,
    "training.config": 0, "training.provenance": 0, "training.run_folder": 1, "training.mpp": 1, "training.steps": 1, "training.inside": 2,
    "training.objectives": 2, "training.evaluators": 3, "training.loop": 4, "training.zoo": 5, "training.sweep": 6,
    "training.recipes": 6, "training.__init__": 7,
    "views.style": 0, "views.readouts": 1, "views.figures": 1, "views.study_readouts": 2, "views.recipe_readouts": 2,
    "views.study_figures": 2, "views.controls": 2, "views.figure_views": 1, "views.export": 1, "views.report": 4,
    "views.intervention_figures": 2, "views.intervention_readouts": 2, "views.intervention_explorers": 5, "views.image_sources": 3, "views.study_explorers": 3, "views.explorers": 4,
    "views.attribution_readouts": 3, "views.attribution_figures": 2, "views.attribution_explorers": 6,
    "views.__init__": 7,
    "__init__": 9, "__main__": 9,
}
SAME_RANK: set[tuple[str, str]] = set()


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _folder(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def _resolve(me: str, level: int, target: str) -> str:
    """The dotted module (relative to vitlab) that ``from <level dots><target>`` in module ``me`` names."""
    base = me.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *target.split(".")]) if target else ".".join(base)


def _known(name: str) -> str | None:
    """The module key for a dotted name: the module itself, a package's __init__, or None outside vitlab."""
    if name in RANKS:
        return name
    if f"{name}.__init__" in RANKS:
        return f"{name}.__init__"
    return None


def _imports(path: Path, me: str | None = None) -> set[str]:
    """vitlab modules imported anywhere in ``path`` (module level or inside functions)."""
    me = me or _module(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1:
                pkg = _resolve(me, node.level, node.module or "")
            elif node.module and node.module.split(".")[0] == "vitlab":
                pkg = ".".join(node.module.split(".")[1:])
            else:
                continue
            for a in node.names:
                found.add(_known(f"{pkg}.{a.name}" if pkg else a.name) or _known(pkg) or "")
        elif isinstance(node, ast.Import):
            found |= {_known(".".join(a.name.split(".")[1:])) or "" for a in node.names if a.name.startswith("vitlab.")}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(".")):
            found.add(_known(_resolve(me, 1, node.args[0].value[1:])) or "")  # importlib.import_module(".views", ...)
    return found - {"", me}


def _order(module: str) -> tuple[int, int]:
    if module in ("__init__", "__main__"):
        return (len(FOLDERS), RANKS[module])
    return (FOLDERS.index(_folder(module)), RANKS[module])


def test_every_module_has_a_rank():
    assert {_module(p) for p in PACKAGE.rglob("*.py")} == set(RANKS)


def test_every_folder_has_a_docstring():
    for folder in FOLDERS[1:]:
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder


def test_same_rank_exceptions_stay_few():
    assert len(SAME_RANK) <= 3


@pytest.mark.parametrize("module", sorted(RANKS))
def test_imports_run_downward(module):
    path = PACKAGE / (module.replace(".", "/") + ".py")
    upward = [m for m in _imports(path, module) if
              _order(m) > _order(module)
              or (_order(m) == _order(module) and (module, m) not in SAME_RANK)]
    assert upward == [], f"vitlab.{module} imports {upward} from its own layer or above"


def test_the_checker_sees_upward_imports(tmp_path):
    """The parser finds all three spellings of an import, at module level and inside a function."""
    source = tmp_path / "m.py"
    source.write_text("from . import figures\nfrom ..training.loop import X\ndef f():\n    import vitlab.analysis.capture\n"
                      "    from vitlab import records\n    from ..models import load_model\n"
                      "    importlib.import_module('.style', __name__)\n    x = '.json'\n")
    assert _imports(source, "views.readouts") == {"views.figures", "training.loop", "analysis.capture", "records",
                                                  "models.__init__", "views.style"}


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

    assert vitlab.views.explorers.__name__ == "vitlab.views.explorers" and vitlab.views.figures.__name__ == "vitlab.views.figures"


def test_module_map_in_docs_lists_every_module_in_rank_order():
    # docs/api.md's module map is what a newcomer reads first: every module, in the order imports run.
    text = (PACKAGE.parent / "docs" / "api.md").read_text()
    listed = [m.removeprefix("vitlab.") for m in re.findall(r"^\| \w+ \| `(vitlab[\w.]*)` \|", text, re.M)]
    modules = {_module(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    expected = {m.removesuffix(".__init__") for m in modules if not m.startswith("__")} - {"views", "models",
                                                                                           "analysis", "training"}
    assert sorted(listed) == sorted(expected)
    order = [(FOLDERS.index(_folder(m)) if m != "data" else FOLDERS.index("data"),
              RANKS[m if m != "data" else "data.__init__"]) for m in listed]
    assert order == sorted(order), f"docs/api.md's module map is out of rank order: {listed}"
