from pathlib import Path

import pytest

from vitlab.io import atomic_write, parse_json, parse_toml, read_json, write_json


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    atomic_write(target, lambda tmp: tmp.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def crash(tmp):
        tmp.write_text('{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_respects_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: (tmp.unlink(), tmp.touch(mode=0o600)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("parse, text", [(parse_json, "[" * 100_000 + "]" * 100_000),
                                         (parse_toml, "a = " + "[" * 100_000 + "]" * 100_000)])
def test_text_nested_too_deeply_is_a_value_error(parse, text):
    with pytest.raises(ValueError, match="nested too deeply to read"):
        parse(text)


def test_read_json_reads_what_write_json_wrote(tmp_path):
    assert read_json(write_json(tmp_path / "a.json", {"a": [1, {"b": None}]})) == {"a": [1, {"b": None}]}


def test_a_lock_waits_for_its_holder_gives_up_naming_it_and_leaves_no_file(tmp_path):
    """Another process holding the lock (a child, so its flock is its own) makes a writer wait, then time out."""
    import os
    import subprocess
    import sys
    import time

    from vitlab.io import locked

    path = tmp_path / "results.lock"
    holds = ("import importlib.util, sys, time\n"  # vitlab/io.py alone: no torch to import
             "spec = importlib.util.spec_from_file_location('io_alone', sys.argv[1])\n"
             "io = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(io)\n"
             "with io.locked(sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(0.6)")
    module = Path(__file__).resolve().parents[1] / "vitlab" / "io.py"
    holder = subprocess.Popen([sys.executable, "-c", holds, str(module), str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(TimeoutError, match=f"{path} is held by PID {holder.pid}"):
        with locked(path, timeout=0.1):
            pass
    started = time.monotonic()
    with locked(path):  # waits for the holder to let go
        assert time.monotonic() - started > 0.2 and path.read_text() == f"{os.getpid()}\n"
    assert holder.wait(timeout=10) == 0 and not path.exists()
