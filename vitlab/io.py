"""Atomic file writes (a crash never leaves a half-written file behind), the one parser of JSON and TOML text, the one
check of a value read from such a file against its field's annotation, and a lock for read-merge-write updates."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import resource
import tempfile
import tomllib
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: What a value of each plain field type must be, as error messages say it.
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def field_type(hint: Any) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)`` of a field annotation."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` (read from a file) cannot be a field annotated ``hint``: ``"<repr>: must be ..."``, or None.

    Whole numbers must be ints (not floats or bools), numbers finite ints or floats, switches bools, text strings,
    ``tuple[...]`` fields tuples of such items (the bad item named); None only where the annotation allows it. Other
    annotations (``Literal``, dicts, classes) are left to their owners' checks."""
    kind, optional = field_type(hint)
    if value is None and optional:
        return None
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, tuple):
            return f"{value!r}: must be a list, not {_a(value)}"
        return next(filter(None, (type_problem(item, typing.get_args(kind)[0]) for item in value)), None)
    if kind not in _KINDS:
        return None
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        return f"{value!r}: must be a finite number"
    if kind in (int, float):
        fits = isinstance(value, int) and not isinstance(value, bool) or kind is float and isinstance(value, float)
    else:
        fits = isinstance(value, kind)
    return None if fits else f"{value!r}: must be {_KINDS[kind]}, not {_a(value)}"


def _a(value: Any) -> str:
    name = type(value).__name__
    return "none" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


class DiskFullError(OSError):
    """A write that found no room (a full disk, a used-up quota, a file-size limit), said in one line."""

    def __str__(self) -> str:
        return self.strerror


#: What each errno of a write that found no room means, and what frees room for it.
_NO_ROOM = {errno.ENOSPC: ("the disk is full", "free space"),
            errno.EDQUOT: ("the disk quota is used up", "free space"),
            errno.EFBIG: ("a file outgrew the file-size limit (ulimit -f)", "raise the limit")}


def no_room(err: BaseException, folder: str | os.PathLike) -> DiskFullError | None:
    """``err`` as a :class:`DiskFullError` naming ``folder`` when it says a write found no room, else None.

    Reads an OSError's errno, safetensors' ``(os error 28)`` and torch.save's short write (``unexpected pos``,
    which carries no errno: a file-size limit in force is taken as its cause, else a full disk).
    """
    code = err.errno if isinstance(err, OSError) else None
    if not isinstance(err, OSError) and (found := re.search(r"os error (\d+)", str(err))):
        code = int(found[1])
    elif isinstance(err, RuntimeError) and re.search(r"unexpected pos|failed writing", str(err)):
        code = errno.EFBIG if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY else errno.ENOSPC
    if code not in _NO_ROOM or isinstance(err, DiskFullError):
        return None
    cause, remedy = _NO_ROOM[code]
    return DiskFullError(code, f"{cause} while writing {folder}: {remedy} and rerun the same command to resume")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` on success; on error remove it.

    A write that finds no room (see :func:`no_room`) raises :class:`DiskFullError`, its temporary file removed.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp (and some writers, e.g. safetensors) create 0600: saved files would be private.
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)  # atomic on POSIX: the same folder
    except BaseException as err:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if (full := no_room(err, path.parent)) is not None:
            raise full from err
        raise


def probe_write(folder: str | os.PathLike) -> None:
    """Create ``folder`` and write and remove a small file in it, as vitlab writes (OSError where it cannot)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
    atomic_write(probe, lambda tmp: tmp.write_text("ok"))
    probe.unlink()


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


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of the file ``path`` (hex), remembered while its size, mtime and inode stay the same."""
    info = os.stat(path)
    key = (os.fspath(path), info.st_size, info.st_mtime_ns, info.st_ino)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


#: Hashes already computed: zoo listings check every published entry's files, and menus list them often.
_HASHES: dict[tuple, str] = {}


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (its holder's PID inside) while the block runs.

    Waits up to ``timeout`` seconds for another holder, then raises TimeoutError. The file is removed on release,
    so none is left beside what it guards; a waiter that locked a file so removed locks the new one instead.
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            held = _flock(fd, path, deadline)
            same = held and os.fstat(fd).st_ino == os.stat(path).st_ino  # not removed by the holder before
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same or not held:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: no waiter reads a PID that has gone
        os.close(fd)


def _holder(fd: int) -> str:
    """The PID in a held lock file; its holder writes it just after locking, so wait a moment for it."""
    for _ in range(50):
        if pid := os.pread(fd, 32, 0).decode(errors="replace").strip():
            return pid
        time.sleep(0.01)
    return "unknown"


def _flock(fd: int, path: Path, deadline: float) -> bool:
    """Lock ``fd``, polling until ``deadline``; False (with a warning) where the file system has no locks."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} is held by PID {_holder(fd)}") from None
            time.sleep(0.02)
        except OSError as err:  # e.g. a network file system without locks
            warnings.warn(f"cannot lock {path} ({err.strerror}); make sure no other process writes beside it",
                          stacklevel=4)
            return False
