"""Bad input gets one clear line before any work: one table, input -> exception and a phrase.

Each row does one bad thing in a fresh folder and names the exception it must raise and a
phrase its message must hold (the input named, or what to do). ``before`` says what the
same input did before issue 12, for the record. CIFAR-10 is pointed at an empty folder and
downloads fail, so a row whose error came only after loading data would fail with
``DataNotFoundError`` instead: the errors are raised before any data is read.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vitlab import data


@dataclass(frozen=True)
class Bad:
    """One row: ``call(tmp_path)`` must raise ``error`` whose one-line message holds ``phrase``."""

    call: Callable[[Path], Any]
    error: type[BaseException]
    phrase: str
    before: str


def cli(*argv: str) -> None:
    """``python -m vitlab *argv`` in-process; a bad input ends in SystemExit with the line."""
    from vitlab.__main__ import main

    main(list(argv))


ROWS: dict[str, Bad] = {}
# Scaffolding while the table is written in sections (tests/bad_rows_<area>.py, each a
# ``ROWS`` dict built with Bad and cli from here); the sections are merged into this file.
import importlib  # noqa: E402
import sys  # noqa: E402

sys.modules.setdefault("test_bad_inputs", sys.modules[__name__])
for _section in sorted(Path(__file__).parent.glob("bad_rows_*.py")):
    ROWS.update(importlib.import_module(_section.stem).ROWS)


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """CIFAR-10 nowhere and no download: any row that reads data first fails differently."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("VITLAB_DATA", str(empty))

    def refuse(root):
        raise AssertionError("a bad-input row started a download: its error came too late")

    monkeypatch.setattr(data, "_download_cifar10", refuse)


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_fails_with_one_clear_line(name, tmp_path, no_data):
    row = ROWS[name]
    with pytest.raises(row.error) as info:
        row.call(tmp_path)
    message = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
    assert "\n" not in message.strip(), f"{name}: the error spans lines:\n{message}"
    assert row.phrase.lower() in message.lower(), f"{name}: {row.phrase!r} not in {message!r}"
