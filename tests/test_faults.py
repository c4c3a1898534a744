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
        _inject(job["fault"])
        argv = job["argv"]
        code = main(argv if argv[0] == "pretrain" else ["train", *argv])
    except SystemExit as err:
        print(err.code)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _zygote() -> None:
    import vitlab.training.loop  # noqa: F401  (imported once here, inherited by every child)

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            _child(json.loads(line))
        _, status = os.waitpid(pid, 0)
        print(json.dumps(dict(signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                              code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)), flush=True)


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

    def close(self) -> None:
        self.zygote.stdin.close()
        self.zygote.wait(timeout=30)


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


if __name__ == "__main__":
    _zygote()
