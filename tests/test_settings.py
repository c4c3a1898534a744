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
