import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if not p.startswith("-e")} == wanted
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)[:2]
    assert [b.strip() for b in first_blocks] == ["make lab", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_have_no_outputs(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "Fig." in "".join(cells[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    for cell in code:
        source = "".join(cell["source"])
        assert not cell.get("outputs") and cell.get("execution_count") is None, "clear outputs before committing"
        assert not re.search(r"^\s*(def|class|for|while) |^\s*[!%]", source, re.M), source
        assert len(source.splitlines()) <= 6, "notebook cells call vitlab; logic belongs in the package"


def test_a_wheel_holds_every_subpackage(tmp_path):
    """``packages.find`` (not a fixed list) puts every module of every subpackage into the wheel."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "vitlab", source / "vitlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("vitlab-*.whl"))
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("vitlab/") and n.endswith(".py")}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vitlab").rglob("*.py")}
    assert in_wheel, "the wheel holds no vitlab modules"
    assert len({p.split("/")[1] for p in in_tree if p.count("/") > 1}) >= 4  # the subpackages themselves
    assert in_wheel == in_tree


def test_project_data_and_zoo_paths_resolve_from_the_subpackages():
    from vitlab import data, records, settings
    from vitlab.models import ZOO_DIR, zoo_weights

    assert settings.PROJECT_ROOT == ROOT
    assert ZOO_DIR == ROOT / "data" / "zoo" and zoo_weights("vit_tiny_c10_e40").is_file()
    assert (data.SAMPLES_DIR / "samples.json").is_file()
    assert records.RESULTS.with_suffix(".csv").is_file() and records.INSIDE_RESULTS.parent.is_dir()
