"""The files a training run keeps in its folder (checkpoints, the metrics log) and its provenance.

A checkpoint is ``checkpoint-<step>.safetensors`` (weights) and ``checkpoint-<step>.state.pt``
(optimiser, augmentation stream, torch RNG), named by ``checkpoint.json``. Each file is
written atomically and the pointer last, so a crash at any moment leaves ``checkpoint.json``
naming a complete checkpoint. ``metrics.jsonl`` holds one JSON record per finished epoch.
Settings are compared field by field on resume, so this module needs no training code.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from . import settings
from .config import ConfigError
from .io import atomic_path, atomic_write, write_json

#: The per-epoch log in a run's folder.
METRICS_LOG = "metrics.jsonl"
#: The pointer to a run's latest complete checkpoint.
POINTER = "checkpoint.json"


def code_version() -> str:
    """The short git commit of the vitlab checkout, or ``"unknown"``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """A short description of ``device`` for run records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def prepare_folder(out: Path) -> None:
    """Create the run folder ``out``; PermissionError, naming it, when it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write-test", lambda tmp: tmp.write_text("ok"))
        (out / ".write-test").unlink()
    except OSError as err:
        raise PermissionError(f"output folder {out} is not writable ({err.strerror}); choose another --out") from None


# --- the metrics log -----------------------------------------------------------------


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl`` (empty before the first epoch)."""
    path = Path(out) / METRICS_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """Add one epoch's ``record`` to the run's log."""
    with open(out / METRICS_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be redone)."""
    records = [r for r in read_metrics(out) if r["step"] <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out / METRICS_LOG, lambda tmp: tmp.write_text(text))


# --- checkpoints ---------------------------------------------------------------------


def save_checkpoint(out: Path, *, step: int, epoch: float, wall_seconds: float, model: nn.Module,
                    optimizer: torch.optim.Optimizer, generator: torch.Generator, config: Any,
                    data: dict[str, Any]) -> None:
    """Write ``checkpoint-<step>.{safetensors,state.pt}``, then point ``checkpoint.json`` at them.

    Args:
        out: the run's folder; older checkpoints in it are deleted once the pointer moved.
        step, epoch: optimiser steps taken, and epochs (fractional mid-epoch) they make.
        wall_seconds: training seconds so far, over all sessions of the run.
        model: a model built by vitlab (its ``vitlab_arch`` is recorded).
        optimizer, generator: their states are saved with the torch RNG state.
        config: the run's settings (a dataclass); a resumed run must match them.
        data: the data record (dataset, subset sizes and seed) stored beside them.
    """
    stem = f"checkpoint-{step:08d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / f"{stem}.safetensors") as tmp:
        safetensors.torch.save_file(weights, str(tmp))
    state = dict(optimizer=optimizer.state_dict(), generator=generator.get_state().cpu(), torch_rng=torch.get_rng_state())
    with atomic_path(out / f"{stem}.state.pt") as tmp:
        torch.save(state, tmp)
    # The learning rate is a pure function of the step, so the step is the scheduler's state.
    write_json(out / POINTER, dict(
        step=step, epoch=epoch, wall_seconds=wall_seconds,
        weights=f"{stem}.safetensors", state=f"{stem}.state.pt", metrics=read_metrics(out)[-1:],
        config=dataclasses.asdict(config), architecture=model.vitlab_arch,
        data=data, code_version=code_version(),
    ))
    for old in out.glob("checkpoint-*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)


def changes(saved: dict[str, Any], config: Any) -> list[str]:
    """How ``config`` differs from the settings ``saved`` in a checkpoint, one phrase per field.

    Keys that are no setting (``out``, ``progress`` in checkpoints of earlier versions) are
    not compared; a setting the checkpoint predates counts as its default.
    """
    pairs = [(f.name, saved.get(f.name, f.default), getattr(config, f.name)) for f in dataclasses.fields(config)]
    return [f"{name} {old!r} in the checkpoint, {new!r} now" for name, old, new in pairs if old != new]


def load_checkpoint(out: Path, config: Any, model: nn.Module) -> dict[str, Any] | None:
    """Load the weights of the checkpoint in ``out`` into ``model``; None when there is none.

    Returns the rest of its state for :func:`restore`. Raises
    :class:`~vitlab.config.ConfigError` naming every setting of ``config`` (a dataclass)
    that differs from the checkpoint's.
    """
    pointer = out / POINTER
    if not pointer.is_file():
        return None
    meta = json.loads(pointer.read_text())
    differences = changes(meta["config"], config)
    if differences:
        raise ConfigError(f"{out} holds a checkpoint of a run with other settings ({'; '.join(differences)}); "
                          "resume with the same settings or choose another --out")
    state = torch.load(out / meta["state"], map_location="cpu", weights_only=True)
    model.load_state_dict(safetensors.torch.load_file(out / meta["weights"]))
    return dict(state, step=meta["step"], wall_seconds=meta["wall_seconds"])


def restore(state: dict[str, Any], optimizer: torch.optim.Optimizer, generator: torch.Generator) -> tuple[int, float]:
    """Put back the optimiser, augmentation-stream and torch RNG states of a loaded checkpoint.

    Returns ``(step, wall seconds)`` to continue from.
    """
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["wall_seconds"])
