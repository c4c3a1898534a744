import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: The README and every page under docs/: what the checks of documented facts read.
PAGES = [ROOT / "README.md", *DOCS]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == {"dev", "notebooks"}  # environment.yml installs everything, as make does
    wanted = set(project["dependencies"]).union(*extras.values())
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


def test_readme_fits_a_screen_and_links_every_page_of_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    linked = {ROOT / target for target in re.findall(r"\]\((docs/[^)#]+\.md)", readme)}
    assert DOCS and linked == set(DOCS)


@pytest.mark.slow
def test_readme_api_example_runs(monkeypatch):
    """The README's Python example runs as printed (on four sample images: no dataset needed, and quick)."""
    import vitlab

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- api-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    images, names = vitlab.data.samples(32)
    monkeypatch.setattr(vitlab.data, "analysis_images", lambda: (images[:4], names[:4], "samples"))
    scope = {}
    exec(compile(example, "README.md api-example", "exec"), scope)
    assert isinstance(scope["model"], torch.nn.Module) and scope["positions"].sim.ndim == 4
    assert scope["distance"].mean.shape == (len(scope["model"].blocks), scope["model"].blocks[0].attn.num_heads)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_doc_links_reach_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}"


def _documented_commands(text: str) -> list[str]:
    """Every ``python -m vitlab ...`` or ``torchrun ... -m vitlab ...`` in code blocks and inline code."""
    lines = [line for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S) for line in block.splitlines()]
    lines += re.findall(r"`((?:python|torchrun)[^`]*?-m vitlab [^`]*)`", text)
    return [" ".join(line.split()) for line in lines if re.search(r"-m vitlab ", line)]


def test_every_documented_command_parses():
    from vitlab.__main__ import build_parser

    commands = [c for page in PAGES for c in _documented_commands(page.read_text())]
    assert len(commands) >= 30  # the results' commands are all there
    for command in commands:
        words = shlex.split(command, comments=True)
        args = words[words.index("vitlab") + 1:]
        if "..." in args or "--help" in args or any("<" in a for a in args):
            continue  # an elision or a placeholder, not a command
        if args == ["--version"]:
            assert any("--version" in a.option_strings for a in build_parser()._actions), command
            continue
        if len(args) == 1:  # the text names a command: it must exist
            subcommands = next(a for a in build_parser()._actions if a.dest == "command")
            assert args[0] in subcommands.choices, command
            continue
        try:
            build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"the docs give a command the command line refuses: {command}")


def test_every_documented_benchmark_flag_exists():
    found = 0
    for page in PAGES:
        for script, flags in re.findall(r"python (benchmarks/\w+\.py)((?: --[\w-]+(?: [^\s`|-][^\s`|]*)?)*)", page.read_text()):
            source = (ROOT / script).read_text()
            for flag in re.findall(r"--[\w-]+", flags):
                assert f'"{flag}"' in source, f"{page.name}: {script} has no {flag}"
            found += 1
    assert found >= 8


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=2):
        if not hasattr(obj, name):
            importlib.import_module(".".join(parts[:i]))  # a submodule not imported yet
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "CHANGES.md"], ids=lambda p: p.name)
def test_every_documented_vitlab_name_exists(page):
    """Names in the docs follow the code: ``vitlab.a.b`` resolves (CHANGES.md lists old names on purpose)."""
    names = set(re.findall(r"\bvitlab(?:\.[A-Za-z_]\w*)+", page.read_text())) - {"vitlab.lock"}
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            pytest.fail(f"{page.name} names {name}, which does not exist: {error}")


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


def test_project_data_and_zoo_paths_resolve_from_the_subpackages():
    from vitlab import data, result_files, settings
    from vitlab.models import ZOO_DIR, zoo_weights

    assert settings.PROJECT_ROOT == ROOT
    assert ZOO_DIR == ROOT / "data" / "zoo" and zoo_weights("vit_tiny_c10_e40").is_file()
    assert (data.SAMPLES_DIR / "samples.json").is_file()
    assert result_files.RESULTS.with_suffix(".csv").is_file() and result_files.INSIDE_RESULTS.parent.is_dir()


def test_the_anywidget_in_use_is_in_the_declared_range_and_draws_a_figure_widget():
    """plotly's FigureWidget is an anywidget: the declared range must hold the anywidget tested with this plotly."""
    import importlib.metadata

    import plotly.graph_objects as go
    from packaging.requirements import Requirement

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebooks"]
    anywidget = next(Requirement(r) for r in declared if Requirement(r).name == "anywidget")
    assert anywidget.specifier.contains(importlib.metadata.version("anywidget")), anywidget
    assert any(s.operator == "<" for s in anywidget.specifier), "anywidget needs an upper bound: a release untested"
    widget = go.FigureWidget(go.Figure(go.Bar(y=[1, 2])))
    state = widget.get_state()
    assert state["_esm"] and state["_widget_data"][0]["y"] == [1, 2]  # the front-end module and the figure sync
