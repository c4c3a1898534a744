"""vitlab's model zoo: named entries, each an architecture with its training recipe, maybe trained in ``data/zoo``."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from .. import data, settings
from ..models import loading
from ..models.sidecar import Sidecar, read_sidecar, sidecar_path, write_sidecar
from ..models.weights import WeightsFileError
from . import run_folder
from .run_folder import INSIDE_LOG, INSIDE_TENSORS, METRICS_LOG, read_jsonl
from .config import ConfigError, TrainConfig, command_line, from_args
from .objectives import Objective, objective_for
from ..io import atomic_write, locked, probe_write, sha256

#: The recipe of the ViT entries: AdamW, as for the paper's ViTs (read-only: entries share it).
_VIT_RECIPE: Mapping[str, Any] = MappingProxyType(dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=30,
                                                      batch_size=128, warmup_epochs=2.0, label_smoothing=0.1))
#: The recipe of the ResNet entries: SGD with Nesterov momentum, the usual CIFAR ResNet recipe.
_RESNET_RECIPE: Mapping[str, Any] = MappingProxyType(dict(_VIT_RECIPE, optimizer="sgd", lr=0.1, weight_decay=5e-4))
#: The recipe of the pre-trained encoders: the ViT recipe without labels, masked patch prediction.
_MPP_RECIPE: Mapping[str, Any] = MappingProxyType(dict(_VIT_RECIPE, objective="mpp", label_smoothing=0.0, epochs=20))

CHECK_SIZE = 1000  #: test images every zoo checkpoint is re-checked on (class-stratified, seed 0)


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    """A zoo name: an architecture and the recipe it is (or would be) trained with."""
    name: str  # load_model(name); checkpoint data/zoo/<name>.safetensors
    architecture: str  # a key of vitlab.models.ARCHITECTURES
    recipe: Mapping[str, Any]  # TrainConfig fields of its training run
    description: str  # one line for listings
    shipped: bool = False  # the repository ships a trained checkpoint of it

    @property
    def family(self) -> str:
        """``"vit"``, ``"hybrid"`` or ``"resnet"``, from the architecture."""
        return loading.ARCHITECTURES[self.architecture].family

    @property
    def objective(self) -> str:
        """``"classify"`` (trained with labels) or ``"mpp"`` (pre-trained without them: its head is untrained)."""
        return self.recipe.get("objective", "classify")

    @property
    def weights(self) -> Path:
        """Where its trained checkpoint is (or would be) stored."""
        return loading.zoo_weights(self.name)


def _entry(name: str, recipe: Mapping[str, Any], shipped: bool = False, arch: str = "", note: str = "") -> ZooEntry:
    """An entry of architecture ``arch`` (default: ``name``), described by it and ``note``."""
    description = loading.ARCHITECTURES[arch or name].description + note
    return ZooEntry(name=name, architecture=arch or name, recipe=recipe, description=description, shipped=shipped)


#: Every zoo entry, by name; the micro entries are minute-scale models for quick runs.
ENTRIES: dict[str, ZooEntry] = {e.name: e for e in [
    _entry("vit_tiny_c10_e40", MappingProxyType(dict(_VIT_RECIPE, epochs=40)), shipped=True, arch="vit_tiny_c10",
           note="; the zoo recipe for 40 epochs (crop, flip, label smoothing 0.1, no CutMix), inside views recorded"),
    _entry("vit_tiny_c10", _VIT_RECIPE, shipped=True),
    _entry("vit_tiny_c10_mpp", _MPP_RECIPE, shipped=True, arch="vit_tiny_c10", note="; pre-trained without labels by "
           "masked patch prediction for 20 epochs (its classifier head is untrained: fine-tune it with --init)"),
    _entry("vit_tiny_c10_mpp_ft", MappingProxyType(dict(_VIT_RECIPE, init="vit_tiny_c10_mpp")), shipped=True,
           arch="vit_tiny_c10", note="; vit_tiny_c10_mpp fine-tuned on all 50,000 labels with the zoo recipe for 30 "
           "epochs, inside views recorded"),
    _entry("vit_small_c10", _VIT_RECIPE),
    _entry("hybrid_tiny_c10", _VIT_RECIPE, shipped=True),
    _entry("resnet_tiny_c10", _RESNET_RECIPE, shipped=True),
    _entry("resnet_small_c10", _RESNET_RECIPE),
    _entry("vit_micro_c10", _VIT_RECIPE),
    _entry("resnet_micro_c10", _RESNET_RECIPE),
    _entry("hybrid_micro_c10", _VIT_RECIPE),
    _entry("vit_micro_c10_mpp", _MPP_RECIPE, arch="vit_micro_c10",
           note="; pre-trained without labels by masked patch prediction (quick runs)"),
]}


def entry(name: str) -> ZooEntry:
    """The entry called ``name``; ConfigError listing the entries if there is none."""
    if name not in ENTRIES:
        raise ConfigError(f"unknown zoo model {name!r}; choose one of {list(ENTRIES)}")
    return ENTRIES[name]


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`~vitlab.training.config.TrainConfig` of zoo entry ``name``, with ``overrides`` of its recipe."""
    found = entry(name)
    return TrainConfig(**{"model": found.architecture, **found.recipe, **overrides})


def trained(name: str) -> bool:
    """Whether zoo entry ``name`` has a trained checkpoint in ``data/zoo``; a half-written one (a publish stopped
    midway) is not, with a warning saying how to repair it."""
    if name not in ENTRIES or not ENTRIES[name].weights.is_file():
        return False
    if problem := half_written(name):
        warnings.warn(problem, stacklevel=2)
        return False
    return True


def entry_files(name: str) -> tuple[Path, ...]:
    """The files of zoo entry ``name`` beside its weights and sidecar that exist: metrics log and inside views."""
    weights = entry(name).weights
    files = (weights.with_suffix(".metrics.jsonl"), *(inside_folder(name) / f for f in (INSIDE_LOG, INSIDE_TENSORS)))
    return tuple(f for f in files if f.is_file())


def half_written(name: str) -> str | None:
    """One line saying zoo entry ``name`` is half-written and how to repair it, or None (intact, or absent)."""
    try:
        return loading.zoo_problem(name, entry_files(name))
    except WeightsFileError as err:  # an unreadable sidecar: the entry cannot be trusted either
        return f"zoo entry {name} is half-written ({err}); publish it again with --force"


def zoo() -> dict[str, dict[str, Any]]:
    """Every zoo name with its family, description, parameters and record (None ``test_accuracy`` if untrained)."""
    out = {}
    for name, e in ENTRIES.items():
        sidecar, problem = sidecar_path(e.weights), half_written(name)
        metrics = read_sidecar(sidecar).metrics if sidecar.is_file() and not problem else {}
        params = sum(p.numel() for p in loading.ARCHITECTURES[e.architecture].build().parameters())
        done = e.weights.is_file() and not problem
        out[name] = dict(family=e.family, description=e.description, params=params,
                         checkpoint=str(e.weights) if done else None, objective=e.objective,
                         test_accuracy=metrics.get("test_accuracy"), trained=done)
        if problem:
            out[name]["half_written"] = problem
    return out


def available(family: str | Sequence[str] | None = None, trained_only: bool = False) -> list[str]:
    """Model specs that load offline: trained zoo entries, cached timm models (any ``family``), untrained entries."""
    families = None if family is None else {family} if isinstance(family, str) else set(family)
    names = [n for n, e in ENTRIES.items() if families is None or e.family in families]
    done = [n for n in names if trained(n)]
    # Untrained entries load as random weights only where named after their architecture.
    untrained = [] if trained_only else [n for n in names if not trained(n) and n in loading.ARCHITECTURES]
    return done + _cached_timm_models() + untrained


def _cached_timm_models() -> list[str]:
    from huggingface_hub import constants
    cache = Path(constants.HF_HUB_CACHE)
    repos = sorted(cache.glob("models--timm--*")) if cache.is_dir() else []
    return [repo.name.removeprefix("models--timm--") for repo in repos
            if any(repo.glob("snapshots/*/model.safetensors")) or any(repo.glob("snapshots/*/pytorch_model.bin"))]


def label(spec: str) -> str:
    """How a model spec reads in a menu: ``"vit_small_c10 (untrained)"`` for untrained zoo entries."""
    return f"{spec} (untrained)" if spec in ENTRIES and not trained(spec) else str(spec)


def inside_folder(name: str) -> Path:
    """Where zoo entry ``name``'s inside views over training are (a run folder to :func:`~.inside.load`)."""
    return loading.ZOO_DIR / f"{name}.inside"


@dataclass(frozen=True)
class TrainingRecord:
    """How a trained checkpoint was made: its sidecar, its metrics log, and where its inside views are."""
    sidecar: Sidecar
    log: list[dict[str, Any]]  # one record per epoch
    inside: Path  # the folder of its inside views over training (may hold none)

    @property
    def config(self) -> TrainConfig:
        """The settings it was trained with (a setting its run predates at its default)."""
        return from_args(TrainConfig, self.sidecar.config)


def training_record(spec: str | os.PathLike) -> TrainingRecord:
    """The :class:`TrainingRecord` of a zoo entry's checkpoint, or of a run's ``model.safetensors``."""
    path = Path(spec)
    if path.is_file():
        sidecar, log, inside = sidecar_path(path), path.parent / METRICS_LOG, path.parent
    elif str(spec) in ENTRIES and (problem := half_written(str(spec))):
        raise FileNotFoundError(problem)
    elif str(spec) in ENTRIES and trained(str(spec)):
        weights = ENTRIES[str(spec)].weights
        sidecar, log, inside = sidecar_path(weights), weights.with_suffix(".metrics.jsonl"), inside_folder(str(spec))
    else:
        names = ", ".join(n for n in ENTRIES if trained(n))
        raise FileNotFoundError(f"{spec} is neither a trained zoo entry ({names}) nor a run's model.safetensors")
    if not sidecar.is_file() or not log.is_file():
        raise FileNotFoundError(f"{spec}: its training record is missing ({sidecar.name} and {log.name} beside it)")
    return TrainingRecord(sidecar=read_sidecar(sidecar), log=read_jsonl(log), inside=inside)


def check_accuracy(name: str) -> float:
    """Zoo entry ``name``'s accuracy on the fixed ``CHECK_SIZE`` test images, as its objective measures it."""
    objective = objective_for(train_config(name))
    return _check_set_accuracy(objective, objective.load_trained(entry(name).weights))


def _check_set_accuracy(objective: Objective, trained: nn.Module) -> float:
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, CHECK_SIZE, seed=0)
    return objective.test_accuracy(trained, images[idx], labels[idx])


def publish(run: str | os.PathLike, name: str, code_version: str | None = None, force: bool = False) -> Path:
    """Copy a finished run into ``data/zoo/<name>`` with its record, logs, command and accuracies, sidecar last.

    Holds ``data/zoo/<name>.lock`` throughout: a second publish of ``name`` meanwhile is refused. The sidecar lists
    the sha256 of every file of the entry, so one stopped midway reads as half-written until published again.
    FileExistsError, before any work, when the entry has files already and ``force`` is False; PermissionError,
    before any work, when ``data/zoo`` cannot be written. A write that fails (a full disk) or is interrupted removes
    what it wrote of an entry that had no files; :class:`~.run_folder.Interrupted` says whether the entry changed.
    """
    found, run = entry(name), Path(run)
    settings.refuse_package_data(found.weights.parent, f"publish {name}",
                                 instead=f"load your run by its path (load_model('{run / run_folder.MODEL}'))")
    try:
        probe_write(found.weights.parent)  # before the evaluation, not after it
    except OSError as err:
        raise PermissionError(f"{found.weights.parent} is not writable ({err.strerror or err}); make it writable, "
                              "then publish again") from None
    try:
        with locked(found.weights.with_suffix(".lock"), timeout=0):
            return _publish(found, run, code_version, force)
    except TimeoutError as err:
        raise ConfigError(f"zoo entry {name} is being published by another process ({err}); wait for it to end, "
                          "then publish again") from None


def _publish(found: ZooEntry, run: Path, code_version: str | None, force: bool) -> Path:
    """:func:`publish`, under the entry's lock."""
    name, weights = found.name, run / run_folder.MODEL
    if not weights.is_file():
        raise FileNotFoundError(f"{run} holds no finished run (no {run_folder.MODEL})")
    meta = run_folder.run_sidecar(run)
    config = from_args(TrainConfig, meta.config)  # drops keys of earlier versions (out, progress)
    if config.model != found.architecture:
        raise ConfigError(f"{run} trained a {config.model}, but zoo entry {name} is a {found.architecture}")
    problem = half_written(name)
    if not force and problem:
        raise FileExistsError(problem)
    if found.weights.exists() and not force:
        raise FileExistsError(f"zoo entry {name} has a checkpoint already ({found.weights}); pass --force "
                              "(force=True) to replace it")
    if config.objective != found.objective:
        raise ConfigError(f"{run} was trained with objective {config.objective}, but zoo entry {name} is "
                          f"{found.objective}")
    objective = objective_for(config)
    try:
        trained = objective.load_trained(weights)
        images, labels = data.cifar10("test")
        metrics = dict(meta.metrics, test_accuracy=objective.test_accuracy(trained, images, labels))
        metrics[f"test_accuracy_{CHECK_SIZE}"] = _check_set_accuracy(objective, trained)
    except KeyboardInterrupt as err:
        raise run_folder.Interrupted(f"{_signal_name(err)} while evaluating {run}; zoo entry {name} is unchanged",
                                     getattr(err, "signum", signal.SIGINT)) from None
    command = f"{command_line('python -m vitlab train', config)} --out {shlex.quote(str(run))}"
    published = dataclasses.replace(
        meta, config=dataclasses.asdict(config), metrics=metrics, command=command,
        code_version=code_version or ("unknown" if meta.code_version is None else meta.code_version),
        others=dict(meta.others, **objective.published(metrics)))
    _write(found, run, published, objective, trained, sealed=problem is None)
    return found.weights


def _signal_name(err: KeyboardInterrupt) -> str:
    return f"interrupted ({signal.Signals(getattr(err, 'signum', signal.SIGINT)).name})"


def _write(found: ZooEntry, run: Path, published: Sidecar, objective: Objective, trained: nn.Module,
           sealed: bool) -> None:
    """Write the entry's files, sidecar last; on failure, remove what was written of an entry that had none."""
    name, fresh = found.name, not found.weights.exists() and not entry_files(found.name)
    fresh = fresh and not sidecar_path(found.weights).exists()
    try:
        if sealed and sidecar_path(found.weights).is_file():
            _seal(found)  # from here on, a replaced file no longer matches it: the entry reads as half-written
        _copy_logs(run, name)
        keep = {k: v for k, v in published.to_json().items() if k not in ("architecture", "pretrained_cfg", "format")}
        loading.save_model(objective.encoder(trained), found.weights, metadata=keep,
                           extra=objective.extra_state(trained), files=entry_files(name))
    except BaseException as err:
        if fresh and not sidecar_path(found.weights).exists():  # nothing of it was published: leave nothing
            for path in (*entry_files(name), found.weights):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                inside_folder(name).rmdir()  # only when empty: never a file someone put there
        if isinstance(err, KeyboardInterrupt):
            state = ("nothing was published: it is unchanged" if fresh else
                     half_written(name) or "its files match its sidecar: it is whole")
            raise run_folder.Interrupted(f"{_signal_name(err)} while writing zoo entry {name}; {state}",
                                         getattr(err, "signum", signal.SIGINT)) from None
        raise


def _seal(found: ZooEntry) -> None:
    """Add the sha256 of the intact entry's files to its sidecar, where it lists none (written before it did)."""
    sidecar = read_sidecar(sidecar_path(found.weights))
    if "files" not in sidecar.others:
        files = {p.relative_to(found.weights.parent).as_posix(): sha256(p)
                 for p in (found.weights, *entry_files(found.name))}
        write_sidecar(sidecar_path(found.weights), dataclasses.replace(sidecar, others=dict(sidecar.others,
                                                                                            files=files)))


def _copy_logs(run: Path, name: str) -> None:
    inside = inside_folder(name)
    for folder, stem in ((loading.ZOO_DIR, name), (inside, "inside")):  # temporary files of a killed publish
        for leftover in folder.glob(f".{stem}.*.tmp"):
            leftover.unlink()
    log = (run / METRICS_LOG).read_text()
    atomic_write(entry(name).weights.with_suffix(".metrics.jsonl"), lambda tmp: tmp.write_text(log))
    for file in (INSIDE_LOG, INSIDE_TENSORS):
        if (run / file).is_file():
            inside.mkdir(parents=True, exist_ok=True)
            atomic_write(inside / file, lambda tmp, source=run / file: shutil.copyfile(source, tmp))
        elif (inside / file).is_file():  # the replaced checkpoint's record (force): not this run's
            (inside / file).unlink()
