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


@pytest.fixture
def file_size_limit():
    """Files may grow to 10 kB at most in this process (the kernel's EFBIG, as a full disk: SIGXFSZ ignored)."""
    import resource
    import signal

    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, limits[1]))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "text"])
def test_a_write_that_finds_no_room_is_one_line_naming_the_folder_and_leaves_no_temp(tmp_path, file_size_limit,
                                                                                     writer):
    import safetensors.torch
    import torch

    from vitlab.io import DiskFullError, atomic_path

    tensors = {"x": torch.zeros(100_000)}  # 400 kB
    write = dict(safetensors=lambda tmp: safetensors.torch.save_file(tensors, str(tmp)),
                 text=lambda tmp: tmp.write_text("x" * 100_000),
                 **{"torch.save": lambda tmp: torch.save(tensors, tmp)})[writer]
    (tmp_path / "out.bin").write_bytes(b"old")
    with pytest.raises(DiskFullError) as err:
        with atomic_path(tmp_path / "out.bin") as tmp:
            write(tmp)
    assert str(err.value) == (f"a file outgrew the file-size limit (ulimit -f) while writing {tmp_path}: raise the "
                              "limit and rerun the same command to resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"old"


def test_a_full_disk_is_said_in_one_line_and_the_metrics_log_keeps_no_half_line(tmp_path, monkeypatch):
    import errno
    import os

    from vitlab.io import DiskFullError
    from vitlab.training import run_folder

    run_folder.append_metrics(tmp_path, dict(step=1))
    before = (tmp_path / "metrics.jsonl").read_bytes()
    write = os.write

    def full(fd, data):  # room for a few bytes, then none
        write(fd, data[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match=f"^the disk is full while writing {tmp_path}: free space and rerun the "
                                            "same command to resume$"):
        run_folder.append_metrics(tmp_path, dict(step=2))
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
