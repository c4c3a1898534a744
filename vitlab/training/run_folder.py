"""The run folder: every file a training run keeps in ``out``, written atomically here and nowhere else."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .config import ConfigError
from .provenance import code_version
from ..io import atomic_path, atomic_write, no_room, parse_json, probe_write, read_json, write_json
from ..models import loading, save_model
from ..models.sidecar import Sidecar, read_sidecar
from ..models.weights import WeightsFileError
from ..records import InsideView

#: The per-epoch log, the copy of the latest checkpoint's record, and the lock (its holder's PID inside).
METRICS_LOG, _POINTER, LOCK = "metrics.jsonl", "checkpoint.json", "vitlab.lock"
#: The final model and its sidecar, and a ViT's inside views (a JSON line per recorded epoch) and their tensors.
MODEL, SIDECAR, INSIDE_LOG, INSIDE_TENSORS = "model.safetensors", "model.json", "inside.jsonl", "inside.safetensors"
#: The names of checkpoint files vitlab writes; nothing else in a run folder is ever deleted.
_CHECKPOINT_FILE = re.compile(r"checkpoint-(\d{8,})\.(safetensors|state\.pt|json)")
#: Temporary files of vitlab's atomic writes (``io.atomic_path``) left behind by a killed run.
_LEFTOVER = re.compile(r"\.(checkpoint-\d{8,}\.(safetensors|state\.pt|json)|checkpoint\.json|metrics\.jsonl"
                       r"|model\.safetensors|model\.json|inside\.jsonl|inside\.safetensors)\.\w+\.tmp")


class RunFolderError(ConfigError):
    """A run folder that cannot be trained into as asked: in use, finished, or unreadable."""


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT (Ctrl-C) or SIGTERM; its message is one line saying where it stopped and what the
    same command does next, ``signum`` the signal (``python -m vitlab`` exits with 128 + signum: 130, 143)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


def interrupted(err: KeyboardInterrupt, out: Path, step: int | None = None, total: int | None = None) -> Interrupted:
    """The :class:`Interrupted` of the run in ``out`` stopped by ``err`` at ``step`` of ``total`` (None: before its
    first step), saying what its checkpoints on disk let the same command do."""
    signum = getattr(err, "signum", signal.SIGINT)
    where = "before training began" if step is None else f"at step {step} of {total}"
    records, _ = _records(out)
    if records:
        then = f"the same command resumes from the last checkpoint, at step {records[0][1]['step']}, in {out}"
    else:
        then = f"no checkpoint was saved yet: the same command starts the run over in {out}"
    return Interrupted(f"interrupted ({signal.Signals(signum).name}) {where}; {then}", signum)


def check_out(out: Path) -> None:
    """Refuse, in one line and without writing, an ``out`` that cannot hold a run: a file, a dangling link, or the
    zoo folder or a folder in it (the zoo is written only by ``publish``)."""
    if out.is_symlink() and not out.exists():
        raise RunFolderError(f"--out {out} is a dangling symlink to {os.readlink(out)}: create that folder, or pass "
                             "another --out")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file: pass a folder")
    zoo, where = loading.ZOO_DIR.resolve(), out.resolve()
    if where == zoo or zoo in where.parents:
        raise RunFolderError(f"--out {out} is in the zoo folder {loading.ZOO_DIR}, which only publish writes: train "
                             "into another folder (e.g. runs/<name>), then python -m vitlab publish it")


def prepare_folder(out: Path) -> None:
    """Create the run folder ``out``; PermissionError, naming it, when it cannot be written."""
    try:
        probe_write(out)
    except OSError as err:
        raise PermissionError(f"output folder {out} is not writable ({err.strerror}); choose another --out") from None


@contextlib.contextmanager
def lock_run(out: Path) -> Iterator[None]:
    """Hold ``<out>/vitlab.lock`` (an ``flock``, with the holder's PID) while the block runs, else RunFolderError."""
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(f"{out} is in use: another vitlab process (PID {holder}, see {path}) is training "
                                 "into it; wait for it to end, stop it, or choose another --out") from None
        except OSError as err:  # e.g. a network file system without locks
            warnings.warn(f"cannot lock {path} ({err.strerror}); make sure no other process trains into {out}",
                          stacklevel=3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)  # still held: no other process reads a PID that has gone
    finally:
        os.close(fd)


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl`` (see :func:`read_jsonl`)."""
    return read_jsonl(Path(out) / METRICS_LOG, "a resumed run logs that epoch again")


def read_jsonl(path: Path, redo: str = "a resumed run records it again") -> list[dict[str, Any]]:
    """The JSON records of a run's log ``path``; a last line cut short by a crash is dropped with a warning."""
    lines = path.read_text().splitlines() if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = parse_json(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            warnings.warn(f"{path}: dropped its last line, cut short by a crash ({line[:40]!r}...); {redo}",
                          stacklevel=3)
        else:
            raise RunFolderError(f"{path} line {number} is not a JSON record ({line[:40]!r}); "
                                 "delete that line or choose another --out")
    return records


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """Add one epoch's ``record`` to the run's log, on disk before this returns (DiskFullError, the log as it was,
    where there is no room)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(out / METRICS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            while line:  # unbuffered: a failed write leaves nothing to flush at close
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no half line
            raise no_room(err, out) or err
    finally:
        os.close(fd)


def trim_metrics(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be redone)."""
    records = read_metrics(out)
    if bad := [n for n, r in enumerate(records, 1) if type(r.get("step")) is not int]:  # noqa: E721 (not bool)
        raise RunFolderError(f"{out / METRICS_LOG} line {bad[0]} has no step; delete that line or choose another --out")
    text = "".join(json.dumps(r) + "\n" for r in records if r["step"] <= step)
    atomic_write(out / METRICS_LOG, lambda tmp: tmp.write_text(text))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(out: Path, *, step: int, epoch: float, wall_seconds: float, model: nn.Module,
                    optimizer: torch.optim.Optimizer, generator: torch.Generator, config: Any,
                    data: dict[str, Any], code_versions: list[str] | None = None,
                    epoch_sums: dict[str, Any] | None = None) -> None:
    """Write ``checkpoint-<step>.{safetensors,state.pt}``, its record and ``checkpoint.json``; keep the last two.

    ``code_versions``: every code version the run went through (default: this one); ``epoch_sums``: mid-epoch, the
    epoch's running sums so far (``loss``, ``correct`` tensors, ``seen``, ``seconds``), so a resumed run logs the
    whole epoch."""
    stem = f"checkpoint-{step:08d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # The learning rate is a pure function of the step, so the step is the scheduler's state.
    state = dict(optimizer=optimizer.state_dict(), generator=generator.get_state().cpu(),
                 torch_rng=torch.get_rng_state())
    if epoch_sums is not None:
        state["epoch_sums"] = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in epoch_sums.items()}
    sha256 = {}
    with atomic_path(out / f"{stem}.safetensors") as tmp:
        safetensors.torch.save_file(weights, str(tmp))
        sha256["weights"] = _sha256(tmp)
    with atomic_path(out / f"{stem}.state.pt") as tmp:
        torch.save(state, tmp)
        sha256["state"] = _sha256(tmp)
    record = dict(step=step, epoch=epoch, wall_seconds=wall_seconds, weights=f"{stem}.safetensors",
                  state=f"{stem}.state.pt", sha256=sha256, metrics=read_metrics(out)[-1:],
                  config=dataclasses.asdict(config), architecture=model.vitlab_arch, data=data,
                  code_version=code_version(), code_versions=code_versions or [code_version()])
    write_json(out / f"{stem}.json", record)
    write_json(out / _POINTER, record)
    _prune(out, step)


def _prune(out: Path, step: int) -> None:
    """Keep checkpoint ``step`` and the complete one before it; delete other vitlab checkpoint files, later ones too."""
    steps = {}
    for path in out.iterdir():
        if match := _CHECKPOINT_FILE.fullmatch(path.name):
            steps.setdefault(int(match[1]), []).append(path)
        elif _LEFTOVER.fullmatch(path.name):
            path.unlink(missing_ok=True)
    earlier = [s for s, files in steps.items() if s < step and any(p.suffix == ".json" for p in files)]
    keep = {step, max(earlier, default=step)}
    for path in (p for s, files in steps.items() if s not in keep for p in files):
        path.unlink(missing_ok=True)


def changes(saved: dict[str, Any], config: Any, where: str = "the checkpoint") -> list[str]:
    """How ``config`` differs from ``saved`` (defaults where missing; CADENCE settings skipped), a phrase per field."""
    pairs = [(f.name, saved.get(f.name, f.default), getattr(config, f.name)) for f in dataclasses.fields(config)
             if not f.metadata.get("cadence")]
    return [f"{name} {old!r} in {where}, {new!r} now" for name, old, new in pairs if old != new]


def finished_run(out: Path, config: Any) -> Sidecar | None:
    """The sidecar of the run finished in ``out`` with ``config``, or None; ConfigError/RunFolderError: other run."""
    model = out / MODEL
    if not model.exists():
        return None
    try:
        record = read_sidecar(out / SIDECAR)
        problem = None if record.config else "no run settings"
    except FileNotFoundError:
        problem = f"no {SIDECAR}"
    except (OSError, WeightsFileError) as err:
        problem = f"{SIDECAR} cannot be read: {str(err).splitlines()[0]}"
    if problem is not None:
        if (out / _POINTER).is_file() or any(_CHECKPOINT_FILE.fullmatch(p.name) for p in out.glob("checkpoint-*.json")):
            return None
        raise RunFolderError(f"{model} was not written by a vitlab training run ({problem}); vitlab does not "
                             "overwrite it: choose another --out")
    if differences := changes(record.config, config, where="the finished run"):
        raise ConfigError(f"{out} holds a finished run with other settings ({'; '.join(differences)}); "
                          "choose another --out, or pass the same settings to get its result")
    return record


def run_sidecar(out: str | os.PathLike) -> Sidecar:
    """The sidecar of the finished run in ``out`` (its settings, final metrics, data, code version)."""
    return read_sidecar(Path(out) / SIDECAR)


def save_final(out: Path, model: nn.Module, *, config: Any, metrics: dict[str, Any], data: dict[str, Any],
               extra: dict[str, torch.Tensor] | None = None, code_versions: list[str] | None = None) -> Path:
    """Write the finished run's ``model.safetensors`` and its sidecar; ``extra`` tensors go beside the weights.
    The sidecar's ``code_version`` is this process's; ``code_versions`` every one the run went through."""
    metadata = dict(config=dataclasses.asdict(config), metrics=metrics, data=data, code_version=code_version(),
                    code_versions=code_versions or [code_version()])
    return save_model(model, out / MODEL, metadata=metadata, extra=extra)


def _records(out: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """The checkpoint records in ``out``, one per step from the latest, and why others are unusable."""
    paths = [out / _POINTER] + sorted((p for p in out.glob("checkpoint-*.json") if _CHECKPOINT_FILE.fullmatch(p.name)),
                                     reverse=True)
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    problems = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            record = read_json(path)
            _check_record(record)
        except (OSError, ValueError, TypeError, KeyError) as err:
            problems.append(f"{path} is no checkpoint record ({str(err).splitlines()[0]})")
            continue
        found.setdefault(record["step"], (path, record))
    return [found[s] for s in sorted(found, reverse=True)], problems


def _check_record(record: Any) -> None:
    if not isinstance(record, dict):
        raise TypeError("not a JSON object")
    for key, kind in dict(step=int, wall_seconds=(int, float), config=dict, weights=str, state=str).items():
        if not isinstance(record[key], kind):
            raise TypeError(f"{key} is {record[key]!r}")
    for key in ("weights", "state"):
        if not _CHECKPOINT_FILE.fullmatch(record[key]):
            raise ValueError(f"{key} names {record[key]!r}, not a checkpoint file")


def _read(out: Path, record: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and state of the checkpoint ``record`` names, checked against its checksums (else ValueError)."""
    for key in ("weights", "state"):
        path, expected = out / record[key], record.get("sha256", {}).get(key)  # earlier versions stored none
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if expected is not None and _sha256(path) != expected:
            raise ValueError(f"{path} does not match the sha256 in its record (corrupt)")
    try:
        weights = safetensors.torch.load_file(out / record["weights"])
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{out / record['weights']} cannot be read ({str(err).splitlines()[0]})") from None
    try:
        state = torch.load(out / record["state"], map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"optimizer", "generator", "torch_rng"} <= state.keys():
            raise ValueError("not a training state")
    except Exception as err:
        raise ValueError(f"{out / record['state']} cannot be read ({str(err).splitlines()[0]})") from None
    return weights, state


def load_checkpoint(out: Path, config: Any, model: nn.Module) -> dict[str, Any] | None:
    """Load the latest readable checkpoint in ``out`` into ``model`` (warning of any skipped); its state or None,
    ConfigError for other settings, RunFolderError when none can be resumed."""
    records, problems = _records(out)
    if records:
        if differences := changes(records[0][1]["config"], config):
            raise ConfigError(f"{out} holds a checkpoint of a run with other settings ({'; '.join(differences)}); "
                              "resume with the same settings or choose another --out")
    for path, record in records:
        try:
            weights, state = _read(out, record)
            model.load_state_dict(weights)
        except (ValueError, RuntimeError) as err:
            problems.append(str(err).splitlines()[0])
            continue
        _check_logs(out, path, record)
        for problem in problems:
            warnings.warn(f"{problem}; resumed from {path} (step {record['step']}) instead", stacklevel=2)
        return dict(state, step=record["step"], wall_seconds=record["wall_seconds"], code_versions=_versions(record),
                    data=record.get("data") if isinstance(record.get("data"), dict) else {})
    if problems:
        files = sorted(p.name for p in out.iterdir() if _CHECKPOINT_FILE.fullmatch(p.name) or p.name == _POINTER)
        raise RunFolderError(f"no checkpoint in {out} can be resumed: {'; '.join(problems)}; delete "
                             f"{', '.join(files)} to start the run over, or choose another --out")
    return None


def _versions(record: dict[str, Any]) -> list[str]:
    """The code versions a checkpoint ``record`` says its run went through; earlier versions stored the last only."""
    versions = record.get("code_versions")
    if isinstance(versions, list) and versions and all(isinstance(v, str) for v in versions):
        return versions
    return [record["code_version"]] if isinstance(record.get("code_version"), str) else []


def _check_logs(out: Path, path: Path, record: dict[str, Any]) -> None:
    """Refuse to resume from checkpoint ``record`` (at ``path``) when the metrics log lacks the line it was taken
    after (deleted: the run would end without the record of its epochs), or the inside views disagree."""
    last = record.get("metrics") or [{}]
    step = last[-1].get("step") if isinstance(last[-1], dict) else None
    if step is not None and all(r.get("step") != step for r in read_metrics(out)):
        files = sorted(p.name for p in out.iterdir() if _CHECKPOINT_FILE.fullmatch(p.name) or p.name == _POINTER)
        raise RunFolderError(f"{out / METRICS_LOG} lacks the line of step {step} that {path.name} was taken after "
                             f"(was it deleted?); put it back, or delete {', '.join(files)} to start the run over")
    _check_inside(out, read_inside(out), read_inside_tensors(out))


def _check_inside(out: Path, views: list[InsideView], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse inside views whose log and tensors disagree beyond what a killed write leaves: the tensors of one
    epoch after the last logged one (tensors are written first)."""
    logged = {v.epoch for v in views}
    unlogged = sorted({int(k.rsplit(".", 1)[1]) for k in tensors} - logged)
    missing = sorted(e for e in logged if f"pos_embed.{e}" not in tensors)
    if missing or len(unlogged) > 1 or (unlogged and unlogged[0] < max(logged, default=0)):
        raise RunFolderError(f"{out / INSIDE_LOG} and {out / INSIDE_TENSORS} disagree: epochs "
                             f"{missing or unlogged} are in only one of them (one was deleted or replaced); put "
                             "it back, or delete both to record inside views again from the next epoch")


def restore(state: dict[str, Any], optimizer: torch.optim.Optimizer, generator: torch.Generator) -> tuple[int, float]:
    """Put back the optimiser, augmentation-stream and torch RNG states; ``(step, wall seconds)`` to continue from."""
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["wall_seconds"])


def read_inside(out: str | os.PathLike) -> list[InsideView]:
    """The inside views recorded in ``out``, by epoch (see :func:`read_jsonl`)."""
    return [InsideView.from_json(r) for r in read_jsonl(Path(out) / INSIDE_LOG)]


def read_inside_tensors(out: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Everything in ``<out>/inside.safetensors`` (empty when there is no file)."""
    path = Path(out) / INSIDE_TENSORS
    return safetensors.torch.load_file(path) if path.is_file() else {}


def write_inside(out: Path, views: list[InsideView], tensors: dict[str, torch.Tensor]) -> None:
    """Tensors first, then the log: tensors of an epoch with no line are dropped next time."""
    keep = {v.epoch for v in views}
    tensors = {k: v for k, v in tensors.items() if int(k.rsplit(".", 1)[1]) in keep}  # "<name>.<epoch>"
    with atomic_path(out / INSIDE_TENSORS) as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    text = "".join(v.to_json() + "\n" for v in views)
    atomic_write(out / INSIDE_LOG, lambda tmp: tmp.write_text(text))


def record_inside(out: str | os.PathLike, view: InsideView, tensors: dict[str, torch.Tensor]) -> None:
    """Add ``view`` and its ``tensors`` to the run in ``out``, replacing views of the same or later steps."""
    out = Path(out)
    stored, stored_tensors = read_inside(out), read_inside_tensors(out)
    _check_inside(out, stored, stored_tensors)
    views = [v for v in stored if v.step < view.step] + [view]
    write_inside(out, views, {**stored_tensors, **tensors})


def trim_inside(out: str | os.PathLike, step: int) -> None:
    """Drop inside views (and their tensors) recorded after ``step``: the checkpoint a run resumes from."""
    out = Path(out)
    if (out / INSIDE_LOG).exists() or (out / INSIDE_TENSORS).exists():
        views, tensors = read_inside(out), read_inside_tensors(out)
        _check_inside(out, views, tensors)
        write_inside(out, [v for v in views if v.step <= step], tensors)
