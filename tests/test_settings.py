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
