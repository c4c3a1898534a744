"""Atomic file writes (a crash never leaves a half-written file behind), and the one parser of JSON and TOML text."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` on success; on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp (and some writers, e.g. safetensors) create 0600: saved files would be private.
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)  # atomic on POSIX: the same folder
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``; text nested too deeply to parse is a ValueError, as other bad JSON is."""
    return _parse(json.loads, text, "JSON")


def parse_toml(text: str) -> Any:
    """``tomllib.loads(text)``; text nested too deeply to parse is a ValueError, as other bad TOML is."""
    return _parse(tomllib.loads, text, "TOML")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in the file ``path`` (OSError, or ValueError for bad or too deeply nested JSON)."""
    return parse_json(Path(path).read_text())


def _parse(loads: Callable[[Any], Any], text: str | bytes, what: str) -> Any:
    # Both parsers recurse once per level: a 100,000-deep [[[...]]] (a few hundred kB) would end in a
    # RecursionError traceback, which callers that report bad files in one line do not expect.
    try:
        return loads(text)
    except RecursionError:
        raise ValueError(f"{what} nested too deeply to read (past Python's recursion limit)") from None
