from pathlib import Path

import pytest

from vitlab import settings


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("no", False)])
def test_quick_mode_reads_env(monkeypatch, value, expected):
    monkeypatch.setenv("VITLAB_QUICK", value)
    assert settings.quick_mode() is expected


def test_quick_mode_off_when_unset(monkeypatch):
    monkeypatch.delenv("VITLAB_QUICK", raising=False)
    assert settings.quick_mode() is False


def test_data_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    assert settings.data_root() == tmp_path
    monkeypatch.delenv("VITLAB_DATA")
    checkout = Path(__file__).resolve().parents[1]  # this test file lives in <checkout>/tests
    assert (checkout / "pyproject.toml").is_file()
    assert settings.data_root() == checkout / "data"


def test_lab_serves_working_copies_and_keeps_edited_ones(tmp_path):
    """make lab copies the committed notebooks into a git-ignored folder and serves that; an edited copy stays."""
    import hashlib
    import json
    import re

    checkout = Path(__file__).resolve().parents[1]
    recipe = re.search(r"^lab:.*?\n((?:\t.*\n)+)", (checkout / "Makefile").read_text(), re.M).group(1)
    assert "copy_notebooks()" in recipe and f"--notebook-dir={settings.LAB_DIR.name} " in recipe
    assert f"/{settings.LAB_DIR.name}/" in (checkout / ".gitignore").read_text().split()
    def checksums(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.ipynb")}

    committed = checksums(settings.NOTEBOOKS_DIR)
    lab = tmp_path / "lab"
    assert settings.copy_notebooks(dest=lab) == []
    assert checksums(lab) == committed
    first, second = sorted(committed)[:2]
    edited = json.loads((lab / first).read_text())
    edited["cells"][0]["source"] = ["my notes"]
    (lab / first).write_text(json.dumps(edited))
    ran = json.loads((lab / second).read_text())  # outputs saved by JupyterLab are no edit
    ran["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi"]}]
    (lab / second).write_text(json.dumps(ran))
    (lab / first.replace(".ipynb", "_mine.ipynb")).write_text("{}")  # a notebook of the user's own
    third = sorted(committed)[2]
    (lab / third).unlink()  # deleted: copied again
    assert settings.copy_notebooks(dest=lab) == [first]  # one line tells the user, naming only the edited one
    assert json.loads((lab / first).read_text())["cells"][0]["source"] == ["my notes"]
    assert json.loads((lab / second).read_text())["cells"][0]["outputs"]
    assert hashlib.sha256((lab / third).read_bytes()).hexdigest() == committed[third]
    assert checksums(settings.NOTEBOOKS_DIR) == committed  # the committed notebooks untouched
    settings.copy_notebooks(dest=lab, replace=True)  # make lab-reset: the committed versions back, the user's own kept
    assert hashlib.sha256((lab / first).read_bytes()).hexdigest() == committed[first]
    assert (lab / first.replace(".ipynb", "_mine.ipynb")).exists()


def _installed(monkeypatch, tmp_path: Path) -> Path:
    """Make vitlab read as installed: its package folder in a site-packages with no pyproject.toml beside it."""
    package = tmp_path / "site-packages" / "vitlab"
    package.mkdir(parents=True)
    monkeypatch.setattr(settings, "PROJECT_ROOT", package.parent)
    monkeypatch.setattr(settings, "PACKAGE_DATA", package / "_data")
    for name in ("VITLAB_CACHE", "XDG_CACHE_HOME", "VITLAB_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return package / "_data"


def test_a_checkout_reads_its_own_folders(monkeypatch):
    checkout = Path(__file__).resolve().parents[1]
    for name in ("VITLAB_CACHE", "VITLAB_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert settings.in_checkout()
    assert [settings.shipped_dir(n) for n in ("zoo", "samples", "results", "notebooks")] == [
        checkout / "data" / "zoo", checkout / "data" / "samples", checkout / "data" / "results", checkout / "notebooks"]
    assert settings.cache_dir() == checkout / ".cache" and settings.runs_dir() == checkout / "runs"
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")  # the user's cache is for installed copies only
    assert settings.cache_dir() == checkout / ".cache"
    with pytest.raises(ValueError, match="ships no folder 'weights'"):
        settings.shipped_dir("weights")


def test_installed_reads_package_data_and_caches_in_the_users_cache(monkeypatch, tmp_path):
    package_data = _installed(monkeypatch, tmp_path)
    assert not settings.in_checkout()
    assert settings.shipped_dir("zoo") == package_data / "zoo"
    assert settings.shipped_dir("notebooks") == package_data / "notebooks"
    home_cache = tmp_path / "home" / ".cache" / "vitlab"
    assert settings.cache_dir() == home_cache and settings.data_root() == home_cache / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: a relative path is ignored
    assert settings.cache_dir() == home_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert settings.cache_dir() == tmp_path / "xdg" / "vitlab"
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "mine"))
    assert settings.cache_dir() == tmp_path / "mine" and settings.data_root() == tmp_path / "mine" / "data"
    assert settings.runs_dir() == Path("runs")


def test_a_pyproject_of_another_project_is_no_checkout(monkeypatch, tmp_path):
    _installed(monkeypatch, tmp_path)
    (tmp_path / "site-packages" / "pyproject.toml").write_text('[project]\nname = "someone-else"\nversion = "9"\n')
    assert not settings.in_checkout()
    (tmp_path / "site-packages" / "pyproject.toml").write_text("not toml [")
    settings._checkout_project.cache_clear()
    assert not settings.in_checkout()


def test_writes_into_installed_package_data_are_refused(monkeypatch, tmp_path):
    settings.refuse_package_data(settings.PROJECT_ROOT / "data" / "zoo", "publish")  # a checkout's zoo is writable
    package_data = _installed(monkeypatch, tmp_path)
    with pytest.raises(PermissionError, match="package data of an installed vitlab; pass an out folder"):
        settings.refuse_package_data(package_data / "results" / "mine", "collect")
    settings.refuse_package_data(tmp_path / "mine", "collect")  # anywhere else is the user's


def test_version_is_the_checkouts():
    import tomllib

    checkout = Path(__file__).resolve().parents[1]
    assert settings.version() == tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["version"]


def test_notebooks_command_copies_them_into_a_new_folder(tmp_path, capsys):
    from vitlab.__main__ import main

    dest = tmp_path / "new" / "notebooks"
    assert main(["notebooks", str(dest)]) == 0
    committed = sorted(settings.NOTEBOOKS_DIR.glob("*.ipynb"))
    assert len(committed) >= 9 and sorted(p.name for p in dest.iterdir()) == [p.name for p in committed]
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in committed)
    assert str(dest) in capsys.readouterr().out


def test_notebooks_command_refuses_a_folder_with_one_before_copying_any(tmp_path):
    from vitlab.__main__ import main

    mine = tmp_path / "03_attention_distance.ipynb"
    mine.write_text("my edits")
    with pytest.raises(SystemExit, match=r"holds 03_attention_distance\.ipynb already; copy into a new folder"):
        main(["notebooks", str(tmp_path)])
    assert mine.read_text() == "my edits" and [p.name for p in tmp_path.iterdir()] == [mine.name]


@pytest.mark.parametrize("env, colab, vscode, expected", [
    (None, False, False, False), ("1", False, False, True), ("yes", False, False, True),
    (None, True, False, True), (None, False, True, True),  # Colab, VS Code: FigureWidget reported not to draw
    ("0", True, True, False), ("off", False, True, False),  # asked for widgets wins
])
def test_static_mode_follows_vitlab_static_colab_and_vs_code(monkeypatch, env, colab, vscode, expected):
    import sys
    import types

    for name, value in (("VITLAB_STATIC", env), ("VSCODE_PID", "123" if vscode else None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert settings.static_mode() is expected
