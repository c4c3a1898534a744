"""Fault injection: a run SIGKILLed at many moments resumes to the weights of an uninterrupted run.

Each run is a real process killed with SIGKILL: no ``finally``, no flush, the kernel
drops its lock. To kill at exact moments, the process kills itself when it reaches one:
after an optimiser step, just before or after one of vitlab's atomic renames (a
checkpoint's weights, state, record or pointer, the final model), or halfway through
appending a metrics line. One zygote process imports vitlab once and forks a fresh
process per run, because a cold ``python -m vitlab`` spends ~6 s importing torch and
timm; the run itself takes about a second (a micro ViT on 300 fake images).

Run as ``python tests/test_faults.py`` this file is that zygote: it reads one job per line
(the CLI arguments, a fault, a log file), runs it in a forked child and answers how the
child ended.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from vitlab.training import run_folder

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the zygote forks its runs (POSIX)")

ROOT = Path(__file__).resolve().parent.parent
#: 2 epochs of 15 steps, checkpoints at steps 4, 8, 12, 15 (epoch end), 16, 20, 24, 28 and 30.
FLAGS = ["--model", "vit_micro_c10", "--epochs", "2", "--batch-size", "20", "--warmup-epochs", "0.5",
         "--checkpoint-every", "4", "--no-progress"]
#: The same run with timm's CutMix and mixup (draws from NumPy's global state) and torchvision's RandAugment per image
#: (draws from torch's): issue 27's modern protocol.
MODERN = [*FLAGS, "--cutmix", "1.0", "--mixup", "0.8", "--randaugment", "2"]
#: The same schedule pre-training by masked patch prediction (``python -m vitlab pretrain``): the
#: corruption is drawn from the run's checkpointed stream.
PRETRAIN = ["pretrain", *FLAGS]

#: (fault, what the kill interrupts, the step the next run resumes at: 0 is from the start).
#: Each run resumes where the one before was killed, so the chain crosses every moment once.
CHAIN = [
    (["after", "checkpoint-00000004.safetensors", 1], "first checkpoint: weights written, no state or record", 0),
    (["step", 6], "between two checkpoints", 4),
    (["after", "checkpoint-00000008.state.pt", 1], "checkpoint: weights and state written, no record", 4),
    (["before", "checkpoint-00000012.safetensors", 1], "checkpoint: weights in a temporary file, not renamed", 8),
    (["after", "checkpoint-00000012.json", 1], "checkpoint: record written, pointer not moved", 12),
    (["torn-metrics"], "appending the epoch's metrics line (half written)", 12),
    (["before", "checkpoint-00000015.safetensors", 1], "epoch end: metrics logged, checkpoint not begun", 12),
    (["after", "checkpoint.json", 2], "checkpoint: pointer moved, older files not yet deleted", 16),
    (["step", 27], "between two checkpoints in epoch 2", 24),
    (["after", "model.safetensors", 1], "finish: model written, sidecar not", 30),
]


# --- the zygote and its children ---------------------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(fault: list) -> None:
    """Arm ``fault`` in this (child) process: it SIGKILLs itself at that moment."""
    from vitlab.training import loop

    kind, *args = fault or [None]
    if kind == "step":  # right after optimiser step args[0]
        step = loop._step

        def stepped(run, x, y):
            result = step(run, x, y)
            if run.step == args[0]:
                _die()
            return result

        loop._step = stepped
    elif kind in ("before", "after"):  # around the args[1]-th atomic rename onto a file named args[0]
        replace, seen = os.replace, []

        def renamed(src, dst, *rest, **kw):
            hit = Path(dst).name == args[0] and (seen.append(dst) or len(seen) == args[1])
            if hit and kind == "before":
                _die()
            replace(src, dst, *rest, **kw)
            if hit:
                _die()

        os.replace = renamed
    elif kind == "torn-metrics":  # halfway through writing the first epoch's line

        def torn(out, record):
            line = json.dumps(record) + "\n"
            with open(out / "metrics.jsonl", "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()

        loop.append_metrics = torn
    elif kind == "signal":  # a real signal args[1] to itself right after the args[2]-th (default first) step args[0]
        step, seen = loop._step, []
        # as in a terminal: a job started in the background by a non-interactive shell inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def signalled(run, x, y):
            result = step(run, x, y)
            if run.step == args[0] and (seen.append(1) or len(seen) == (args[2:] or [1])[0]):
                os.kill(os.getpid(), args[1])  # Python runs its handler at the next bytecode: here
            return result

        loop._step = signalled
    elif kind == "signal-evaluating":  # a real signal args[0] to itself while publish measures accuracy

        from vitlab.training import zoo

        measure = zoo._check_set_accuracy
        zoo._check_set_accuracy = lambda *a: os.kill(os.getpid(), args[0]) or measure(*a)
    elif kind == "file-size":  # the kernel refuses to grow a file past args[0] bytes (EFBIG, SIGXFSZ ignored)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args[0], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    elif kind == "full":  # writes of files named args[0] find the disk full (ENOSPC, as a rename may)
        replace = os.replace

        def full(src, dst, *rest, **kw):
            if Path(dst).name == args[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            replace(src, dst, *rest, **kw)

        os.replace = full
    elif kind == "read-only":  # nothing can be created under the folder args[0] (EROFS, as read-only media)
        open_, mkdir = os.open, os.mkdir

        def refuse(path, *rest, **kw):
            if str(path).startswith(args[0]):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        os.open = lambda path, flags, *rest, **kw: (flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and refuse(path)
                                                    or open_(path, flags, *rest, **kw))
        os.mkdir = lambda path, *rest, **kw: refuse(path) or mkdir(path, *rest, **kw)
    elif kind == "slow-publish":  # hold publish between its checks and its writes for args[0] seconds

        from vitlab.training import zoo

        measure = zoo._check_set_accuracy
        zoo._check_set_accuracy = lambda *a: time.sleep(args[0]) or measure(*a)


def _child(job: dict) -> None:
    """Run ``python -m vitlab train`` with the job's arguments and fault; never returns."""
    import logging
    import traceback

    from vitlab.__main__ import main

    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    code = 1
    try:
        if "zoo" in job:  # publish into a temporary zoo, checking accuracy on the fake test split's few images
            from vitlab.models import loading
            from vitlab.training import zoo

            loading.ZOO_DIR, zoo.CHECK_SIZE = Path(job["zoo"]), 20
        _inject(job["fault"])
        argv = job["argv"]
        code = main(argv if argv[0] in ("pretrain", "publish", "sweep") else ["train", *argv])
    except SystemExit as err:  # as Python ends: a number is the status, a message is printed and the status is 1
        code = err.code if isinstance(err.code, int) else 0 if err.code is None else print(err.code) or 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _zygote() -> None:
    import vitlab.training.loop  # noqa: F401  (imported once here, inherited by every child)

    for line in sys.stdin:
        jobs = json.loads(line)  # a job, or a list of jobs run at once
        pids = []
        for job in jobs if isinstance(jobs, list) else [jobs]:
            pids.append(os.fork())
            if pids[-1] == 0:
                _child(job)
        ended = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            ended.append(dict(signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                              code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None))
        print(json.dumps(ended if isinstance(jobs, list) else ended[0]), flush=True)


# --- the tests ---------------------------------------------------------------------


class Runs:
    """Training jobs, each in a forked child of one zygote process."""

    def __init__(self, env: dict[str, str]):
        self.zygote = subprocess.Popen([sys.executable, __file__], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, bufsize=1)
        self.count = 0
        self.baseline: Path | None = None  # the folder of the uninterrupted run

    def run(self, out: Path, fault: list | None = None, flags: list[str] = FLAGS) -> tuple[dict, str]:
        """Train into ``out`` with ``fault``; returns how the process ended and what it printed."""
        self.count += 1
        log = out.parent / f"{out.name}-{self.count}.log"
        job = dict(argv=[*flags, "--out", str(out)], fault=fault, log=str(log))
        self.zygote.stdin.write(json.dumps(job) + "\n")
        ended = json.loads(self.zygote.stdout.readline())
        return ended, log.read_text()

    def publish(self, zoo: Path, *jobs: tuple[Path, list, list | None]) -> list[tuple[dict, str]]:
        """Each (run folder, extra flags, fault): ``publish <run> vit_micro_c10`` into ``zoo``, all at once."""
        sent = []
        for run, flags, fault in jobs:
            self.count += 1
            log = zoo.parent / f"publish-{self.count}.log"
            sent.append(dict(argv=["publish", str(run), "vit_micro_c10", *flags], fault=fault, log=str(log),
                             zoo=str(zoo)))
        self.zygote.stdin.write(json.dumps(sent) + "\n")
        ended = json.loads(self.zygote.stdout.readline())
        return [(e, Path(job["log"]).read_text()) for e, job in zip(ended, sent)]

    def close(self) -> None:
        self.zygote.stdin.close()
        self.zygote.wait(timeout=180)  # its exit unloads torch: tens of seconds on a machine busy with other work


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import make_batches

    root = tmp_path_factory.mktemp("faults")
    make_batches(root / "data", per_batch=60, test_size=50)  # 300 training images
    env = dict(os.environ, VITLAB_DATA=str(root / "data"), VITLAB_CACHE=str(root / "cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    runs = Runs(env)
    ended, output = runs.run(root / "uninterrupted")
    assert ended == dict(signal=None, code=0), output
    runs.baseline = root / "uninterrupted"
    yield runs
    runs.close()
    print(f"\nfault injection: {runs.count} runs in {time.monotonic() - started:.1f} s")


def _assert_same_weights(out: Path, baseline: Path) -> None:
    a, b = (safetensors.torch.load_file(folder / "model.safetensors") for folder in (out, baseline))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{out} ended with other weights"


def _resumed_at(output: str) -> int:
    found = re.search(r"resuming at step (\d+)|from the start", output)
    assert found, output
    return int(found[1] or 0)


def _scores(out: Path) -> list:
    """What an interrupted run must log as the uninterrupted one did (loss and speed cover only the last session)."""
    return [(r["epoch"], r["step"], r["test_accuracy"], r["lr"]) for r in run_folder.read_metrics(out)]


@pytest.mark.slow
def test_sigkill_at_ten_moments_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    """Each run resumes where the last was killed and is killed at the next moment; a copy of each
    killed folder is run to the end and must end exactly as the uninterrupted run did."""
    out = tmp_path / "run"
    for i, (fault, moment, resume_at) in enumerate(CHAIN):
        ended, output = runs.run(out, fault)
        assert ended["signal"] == signal.SIGKILL, f"{fault} never fired:\n{output}"
        copy = tmp_path / f"killed-{i}"
        shutil.copytree(out, copy)
        ended, output = runs.run(copy)
        assert ended == dict(signal=None, code=0), output
        assert _resumed_at(output) == resume_at, f"after a kill at {moment}:\n{output}"
        assert ("dropped its last line" in output) == (fault == ["torn-metrics"]), output
        _assert_same_weights(copy, runs.baseline)
        assert _scores(copy) == _scores(runs.baseline)
        assert not list(copy.glob(".*.tmp")), "a killed write's temporary file was left behind"
        assert sorted(p.name for p in copy.glob("checkpoint-*")) == [
            f"checkpoint-{s:08d}.{ext}" for s in (28, 30) for ext in ("json", "safetensors", "state.pt")]


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(runs, tmp_path):
    out = tmp_path / "run"
    ended, output = runs.run(out, ["step", 14])
    assert ended["signal"] == signal.SIGKILL, output
    weights = out / "checkpoint-00000012.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ended, output = runs.run(out)
    assert ended == dict(signal=None, code=0), output
    assert re.search(r"UserWarning: .*checkpoint-00000012.safetensors does not match the sha256.*resumed from "
                     r".*checkpoint-00000008.json \(step 8\)", output), output
    assert _resumed_at(output) == 8
    _assert_same_weights(out, runs.baseline)


@pytest.mark.slow
def test_a_cutmix_randaugment_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    """Every child is forked with the zygote's NumPy and torch states, so a resumed run that drew its mixing or
    its RandAugment ops from a global stream would replay the first steps' draws and end elsewhere."""
    baseline = tmp_path / "uninterrupted"
    ended, output = runs.run(baseline, flags=MODERN)
    assert ended == dict(signal=None, code=0), output
    assert "dominant label" in output
    mixed, plain = (safetensors.torch.load_file(folder / "model.safetensors") for folder in (baseline, runs.baseline))
    assert not torch.equal(mixed["head.weight"], plain["head.weight"]), "CutMix changed nothing"
    _kill_and_resume(runs, tmp_path, baseline, [(["step", 6], 4), (["step", 27], 24)], MODERN)


def _kill_and_resume(runs: Runs, tmp_path: Path, baseline: Path, faults: list, flags: list[str]) -> None:
    """Each (fault, step it resumes at): kill a run there, run it again, and it must end as ``baseline`` did."""
    for i, (fault, resume_at) in enumerate(faults):
        out = tmp_path / f"killed-{i}"
        ended, output = runs.run(out, fault, flags=flags)
        assert ended["signal"] == signal.SIGKILL, output
        ended, output = runs.run(out, flags=flags)
        assert ended == dict(signal=None, code=0), output
        assert _resumed_at(output) == resume_at
        _assert_same_weights(out, baseline)
        assert _scores(out) == _scores(baseline)


@pytest.mark.slow
def test_a_pretraining_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    baseline = tmp_path / "uninterrupted"
    ended, output = runs.run(baseline, flags=PRETRAIN)
    assert ended == dict(signal=None, code=0), output
    assert "pre-training (masked patch prediction, no labels)" in output
    weights = safetensors.torch.load_file(baseline / "model.safetensors")
    assert {"mpp.mask_token", "mpp.colour_head.weight"} <= weights.keys()  # the objective's state is kept, and resumed
    _kill_and_resume(runs, tmp_path, baseline, [(["step", 6], 4), (["after", "checkpoint-00000012.json", 1], 12),
                                                (["step", 27], 24)], PRETRAIN)


# --- publishing into the zoo ---------------------------------------------------------

#: (fault, what the kill interrupts, what is left: "old" (the entry as it was) or "half" (reported half-written)).
#: Each kill publishes the other run over the entry with --force; the first is over an entry whose sidecar lists no
#: sha256 (as the shipped ones), so that sidecar is first rewritten listing them.
PUBLISH_KILLS = [
    (["after", "vit_micro_c10.json", 1], "old sidecar rewritten with its files' sha256, nothing replaced", "old"),
    (["after", "vit_micro_c10.metrics.jsonl", 1], "metrics log replaced, nothing else", "half"),
    (["after", "inside.safetensors", 1], "inside tensors replaced, their log not", "half"),
    (["after", "vit_micro_c10.safetensors", 1], "weights replaced, sidecar not", "half"),
    (["before", "vit_micro_c10.json", 1], "new sidecar in its temporary file", "half"),
]


@pytest.fixture(scope="module")
def other_run(runs):
    """A finished run of other settings (seed 1) beside the uninterrupted one."""
    out = runs.baseline.parent / "seed1"
    ended, output = runs.run(out, flags=[*FLAGS, "--seed", "1"])
    assert ended == dict(signal=None, code=0), output
    return out


def _zoo_files(zoo_dir: Path) -> dict[str, str]:
    """The sha256 of every file in the zoo but the lock file a killed publish leaves behind."""
    return {p.relative_to(zoo_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(zoo_dir.rglob("*")) if p.is_file() and p.suffix != ".lock"}


def _assert_published(zoo_dir: Path, run: Path) -> None:
    """The entry is intact and is ``run``'s: its settings, log and inside views, and no temporary file left."""
    from vitlab.training import zoo

    assert zoo.half_written("vit_micro_c10") is None and zoo.trained("vit_micro_c10")
    sidecar = json.loads((zoo_dir / "vit_micro_c10.json").read_text())
    assert sidecar["config"]["seed"] == json.loads((run / "model.json").read_text())["config"]["seed"]
    assert (zoo_dir / "vit_micro_c10.metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    for name in ("inside.jsonl", "inside.safetensors"):
        assert (zoo_dir / "vit_micro_c10.inside" / name).read_bytes() == (run / name).read_bytes()
    assert set(sidecar["files"]) == set(_zoo_files(zoo_dir)) - {"vit_micro_c10.json"}
    assert not list(zoo_dir.rglob("*.tmp"))


def _assert_half_written(zoo_dir: Path) -> str:
    import vitlab
    from vitlab.models.weights import WeightsFileError
    from vitlab.training import zoo

    with pytest.warns(UserWarning, match="half-written"):
        assert not zoo.trained("vit_micro_c10")
    message = zoo.half_written("vit_micro_c10")
    assert message and "\n" not in message and "publish it again with" in message and "--force" in message
    assert zoo.zoo()["vit_micro_c10"]["half_written"] == message and not zoo.zoo()["vit_micro_c10"]["trained"]
    with pytest.raises(WeightsFileError, match="zoo entry vit_micro_c10 is half-written"):
        vitlab.load_model("vit_micro_c10", device="cpu")
    return message


@pytest.mark.slow
def test_publish_killed_midway_leaves_the_old_entry_or_a_half_written_one_that_force_repairs(runs, other_run,
                                                                                             tmp_path, monkeypatch):
    from vitlab.models import loading

    zoo_dir = tmp_path / "zoo"
    monkeypatch.setattr(loading, "ZOO_DIR", zoo_dir)
    # A first publish killed between the weights and the sidecar: refused without --force, repaired with it.
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, [], ["after", "vit_micro_c10.safetensors", 1]))
    assert ended["signal"] == signal.SIGKILL, output
    message = _assert_half_written(zoo_dir)
    [(ended, output)] = runs.publish(zoo_dir, (other_run, [], None))
    assert ended["code"] == 1 and output.strip().splitlines() == [f"python -m vitlab publish: error: {message}"]
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, ["--force"], None))
    assert ended == dict(signal=None, code=0), output
    _assert_published(zoo_dir, runs.baseline)
    sidecar = json.loads((zoo_dir / "vit_micro_c10.json").read_text())
    del sidecar["files"]  # as a sidecar written before publish listed the sha256 (the shipped entries')
    (zoo_dir / "vit_micro_c10.json").write_text(json.dumps(sidecar))
    current, other = runs.baseline, other_run
    for fault, moment, left in PUBLISH_KILLS:
        before = _zoo_files(zoo_dir)
        [(ended, output)] = runs.publish(zoo_dir, (other, ["--force"], fault))
        assert ended["signal"] == signal.SIGKILL, f"{fault} never fired:\n{output}"
        if left == "old":  # the same files, its sidecar now listing their sha256
            after = _zoo_files(zoo_dir)
            assert after.pop("vit_micro_c10.json") != before.pop("vit_micro_c10.json") and after == before, moment
            _assert_published(zoo_dir, current)
        else:
            _assert_half_written(zoo_dir)
        [(ended, output)] = runs.publish(zoo_dir, (other, ["--force"], None))
        assert ended == dict(signal=None, code=0), f"after a kill at {moment}:\n{output}"
        _assert_published(zoo_dir, other)
        current, other = other, current


@pytest.mark.slow
def test_two_publishes_of_one_entry_at_once_one_succeeds_and_the_other_fails_in_one_line(runs, other_run, tmp_path,
                                                                                         monkeypatch):
    from vitlab.models import loading

    zoo_dir = tmp_path / "zoo"
    monkeypatch.setattr(loading, "ZOO_DIR", zoo_dir)
    slow = ["slow-publish", 1.0]  # both are past their checks before either writes a file
    (a, out_a), (b, out_b) = runs.publish(zoo_dir, (runs.baseline, [], slow), (other_run, [], slow))
    assert sorted([a["code"], b["code"]]) == [0, 1], (out_a, out_b)
    winner, loser = (runs.baseline, out_b) if a["code"] == 0 else (other_run, out_a)
    [line] = loser.strip().splitlines()
    assert re.fullmatch(r"python -m vitlab publish: error: zoo entry vit_micro_c10 is being published by another "
                        r"process \(.*vit_micro_c10.lock is held by PID \d+\); wait for it to end, then publish again",
                        line), line
    _assert_published(zoo_dir, winner)


# --- signals and a full disk: one line, the exit status, and the same command goes on --------------------------------


def _last_line(output: str) -> str:
    """The one line a stopped command ends with; no traceback anywhere before it."""
    assert "Traceback" not in output, output
    return output.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("flags, fault, status, line, resume_at", [
    (FLAGS, ["signal", 6, signal.SIGINT], 130, "interrupted (SIGINT) at step 6 of 30; the same command resumes from "
     "the last checkpoint, at step 4, in {out}", 4),
    (FLAGS, ["signal", 13, signal.SIGTERM], 143, "interrupted (SIGTERM) at step 13 of 30; the same command resumes "
     "from the last checkpoint, at step 12, in {out}", 12),
    (PRETRAIN, ["signal", 2, signal.SIGTERM], 143, "interrupted (SIGTERM) at step 2 of 30; no checkpoint was saved "
     "yet: the same command starts the run over in {out}", 0),
])
def test_a_signal_stops_a_run_in_one_line_and_the_same_command_resumes_it(runs, tmp_path, flags, fault, status,
                                                                          line, resume_at):
    out = tmp_path / "run"
    ended, output = runs.run(out, fault, flags=flags)
    command = "pretrain" if flags == PRETRAIN else "train"
    assert ended == dict(signal=None, code=status), output
    assert _last_line(output) == f"python -m vitlab {command}: " + line.format(out=out)
    assert not list(out.glob(".*.tmp")), "an interrupted write left its temporary file"
    ended, output = runs.run(out, flags=flags)
    assert ended == dict(signal=None, code=0), output
    assert _resumed_at(output) == resume_at
    if flags == FLAGS:
        _assert_same_weights(out, runs.baseline)
        assert _scores(out) == _scores(runs.baseline)


@pytest.mark.slow
def test_a_sweep_stopped_by_sigint_says_which_run_and_the_same_command_finishes_it(runs, tmp_path):
    out, results = tmp_path / "sweep", tmp_path / "results" / "micro"
    argv = ["sweep", "--models", "vit_micro_c10", "--sizes", "100", "200", "--epochs", "1", "--min-samples", "0",
            "--batch-size", "20", "--results", str(results)]
    ended, output = runs.run(out, ["signal", 3, signal.SIGINT, 2], flags=argv)  # in the second run
    assert ended == dict(signal=None, code=130), output
    assert _last_line(output) == (
        "python -m vitlab sweep: run 2 of 2 (vit_micro_c10, 200 images, seed 0) interrupted (SIGINT) at step 3 of 10; "
        f"no checkpoint was saved yet: the same command starts the run over in {out}/vit_micro_c10-n200-s0-e1; the "
        f"runs before it (1) are saved in {results}.csv")
    ended, output = runs.run(out, flags=argv)
    assert ended == dict(signal=None, code=0), output
    assert "2 runs in" in output
    assert [r["subset_size"] for r in json.loads(results.with_suffix(".json").read_text())["runs"]] == [100, 200]


@pytest.mark.slow
def test_publish_stopped_by_sigterm_while_evaluating_leaves_the_entry_unchanged(runs, other_run, tmp_path,
                                                                                monkeypatch):
    from vitlab.models import loading

    zoo_dir = tmp_path / "zoo"
    monkeypatch.setattr(loading, "ZOO_DIR", zoo_dir)
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, [], None))
    assert ended == dict(signal=None, code=0), output
    before = _zoo_files(zoo_dir)
    [(ended, output)] = runs.publish(zoo_dir, (other_run, ["--force"], ["signal-evaluating", signal.SIGTERM]))
    assert ended == dict(signal=None, code=143), output
    assert _last_line(output) == (f"python -m vitlab publish: interrupted (SIGTERM) while evaluating {other_run}; "
                                  "zoo entry vit_micro_c10 is unchanged")
    assert _zoo_files(zoo_dir) == before and not list(zoo_dir.rglob("*.lock"))
    _assert_published(zoo_dir, runs.baseline)


@pytest.mark.slow
@pytest.mark.parametrize("fault, line, resume_at", [
    # Past the weights (about 100 kB), short of the optimiser state (about 230 kB): torch.save's "unexpected pos".
    (["file-size", 150_000], "a file outgrew the file-size limit (ulimit -f) while writing {out}: raise the limit and "
     "rerun the same command to resume", 0),
    (["full", "checkpoint-00000008.state.pt"], "the disk is full while writing {out}: free space and rerun the same "
     "command to resume", 4),
])
def test_a_full_disk_while_checkpointing_stops_in_one_line_leaving_nothing_half_written(runs, tmp_path, fault, line,
                                                                                        resume_at):
    out = tmp_path / "run"
    ended, output = runs.run(out, fault)
    assert ended == dict(signal=None, code=1), output
    assert _last_line(output) == "python -m vitlab train: error: " + line.format(out=out)
    assert not list(out.glob(".*.tmp")), "a failed write left its temporary file"
    ended, output = runs.run(out)
    assert ended == dict(signal=None, code=0), output
    assert _resumed_at(output) == resume_at
    _assert_same_weights(out, runs.baseline)


@pytest.mark.slow
def test_a_full_disk_while_publishing_a_new_entry_leaves_no_file_of_it(runs, tmp_path, monkeypatch):
    from vitlab.models import loading

    zoo_dir = tmp_path / "zoo"
    monkeypatch.setattr(loading, "ZOO_DIR", zoo_dir)
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, [], ["full", "vit_micro_c10.safetensors"]))
    assert ended == dict(signal=None, code=1), output
    assert _last_line(output) == (f"python -m vitlab publish: error: the disk is full while writing {zoo_dir}: free "
                                  "space and rerun the same command to resume")
    assert sorted(p.relative_to(zoo_dir).as_posix() for p in zoo_dir.rglob("*")) == []
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, [], None))
    assert ended == dict(signal=None, code=0), output
    _assert_published(zoo_dir, runs.baseline)


@pytest.mark.slow
def test_a_read_only_zoo_is_refused_in_one_line_before_the_evaluation(runs, tmp_path):
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    [(ended, output)] = runs.publish(zoo_dir, (runs.baseline, [], ["read-only", str(zoo_dir)]))
    assert ended == dict(signal=None, code=1), output
    assert output.strip().splitlines() == [f"python -m vitlab publish: error: {zoo_dir} is not writable (Read-only "
                                           "file system); make it writable, then publish again"]
    assert list(zoo_dir.iterdir()) == []


if __name__ == "__main__":
    _zygote()
