"""Recipe comparisons: what a change of training recipe does inside a ViT, over training (``vitlab recipes``)."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import settings
from . import inside, run_folder, zoo
from .run_folder import RunFolderError
from .config import ConfigError, TrainConfig, command_line, from_args
from ..analysis.distance import head_statistics, lowest_head
from ..io import read_json, write_json
from ..models.sidecar import read_sidecar, sidecar_path
from ..models import load_model
from ..records import RecipeRun, Recipes
from ..result_files import ResultsFileError

LOCALITY = settings.shipped_dir("results") / "locality"  #: issue 14's experiment (with, without CutMix)
LOCALITY_E40 = settings.shipped_dir("results") / "locality_e40"  #: the same at the zoo's 40 epochs
#: What a run folder must hold to be collected, and what is copied of it.
RUN_FILES = (run_folder.SIDECAR, run_folder.METRICS_LOG, run_folder.INSIDE_LOG, run_folder.INSIDE_TENSORS)
EXPERIMENT, FORMAT = "experiment.json", 1
_RUN_MARKS = (run_folder.MODEL, run_folder.LOCK, run_folder.METRICS_LOG)  #: a training run's, never a comparison's
_NOT_RECIPE = {"seed", "out", "progress"}  #: settings that may differ within an arm, or name no property of a recipe


def _config(sidecar: Path) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """A run's settings (every field of today's TrainConfig), its last commit and every commit it went through (its
    last alone, from a sidecar written before they were recorded), from its sidecar."""
    record = read_sidecar(sidecar)
    code = record.code_version or ""
    versions = tuple(record.code_versions) if record.code_versions else (code,) if code else ()
    return dataclasses.asdict(from_args(TrainConfig, record.config)), code, versions


def differences(configs: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``{field: {arm: value}}`` of the settings that differ between arms; ConfigError if runs of one arm do."""
    differ: dict[str, dict[str, Any]] = {}
    fields = sorted({k for runs in configs.values() for c in runs for k in c} - _NOT_RECIPE)
    for arm, runs in configs.items():
        for c in runs[1:]:
            if odd := [f for f in fields if c.get(f) != runs[0].get(f)]:
                raise ConfigError(f"the runs of arm {arm!r} differ in {', '.join(odd)}, not only in their seed: "
                                  "put them in separate arms")
    for f in fields:
        values = {arm: runs[0].get(f) for arm, runs in configs.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            differ[f] = values
    return differ


def collect(arms: Mapping[str, Sequence[str | os.PathLike]], out: str | os.PathLike,
            commands: Sequence[str] = (), force: bool = False, progress: bool = False) -> Recipes:
    """Copy the records of finished runs into ``out`` as a comparison; read it back.

    Args:
        arms: label -> its runs: run folders, or names of zoo entries published with their inside views.
    """
    out = Path(out)
    sources = _checked_runs(arms, out, force)
    configs = {arm: [_config(r[run_folder.SIDECAR])[0] for r in runs.values()] for arm, runs in sources.items()}
    differ = differences(configs)
    images = inside.probe_images()
    stored: dict[str, list[dict[str, Any]]] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for arm, runs in sources.items():
            stored[arm] = []
            for name, files in runs.items():
                (tmp / name).mkdir()
                for n in RUN_FILES:
                    shutil.copy2(files[n], tmp / name / n)
                if not run_folder.read_inside(tmp / name):  # before anything is written
                    raise ValueError(f"{name} recorded no inside views: collect ViT runs trained with inside views on")
                stats = head_statistics(load_model(files[run_folder.MODEL], device="cpu"), images, progress=progress)
                lowest = lowest_head(stats["distance_per_image"])
                stored[arm].append(dict(name=name, seed=_config(files[run_folder.SIDECAR])[0]["seed"],
                                        lowest_std=lowest.std, lowest_low=lowest.low, lowest_high=lowest.high))
        trained = [_command(files) for runs in sources.values() for files in runs.values()]
        arms_in_order = [dict(label=arm, runs=rows) for arm, rows in stored.items()]  # the file's keys are sorted
        write_json(tmp / EXPERIMENT, dict(format=FORMAT, arms=arms_in_order, differs_in=differ,
                                          commands=[*trained, *commands]))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read(out)


def _command(files: dict[str, Path]) -> str:
    """The command that trained a run: rebuilt from a run folder's settings; a zoo entry's as its sidecar says."""
    if files[run_folder.MODEL].name != run_folder.MODEL:  # a zoo entry: its run folder is gone
        return read_sidecar(files[run_folder.SIDECAR]).command or ""
    config = from_args(TrainConfig, _config(files[run_folder.SIDECAR])[0])
    return f"{command_line('python -m vitlab train', config)} --out {shlex.quote(str(files[run_folder.MODEL].parent))}"


def _run_files(run: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """A run's name and where each of its files is: in its folder, or a zoo entry's published copies."""
    folder = Path(run)
    if folder.is_dir() or str(run) not in zoo.ENTRIES:
        return folder.name, {n: folder / n for n in (*RUN_FILES, run_folder.MODEL)}
    weights = zoo.entry(str(run)).weights
    inside_views = zoo.inside_folder(str(run))
    return str(run), {run_folder.SIDECAR: sidecar_path(weights), run_folder.METRICS_LOG: weights.with_suffix(
        ".metrics.jsonl"), **{n: inside_views / n for n in (run_folder.INSIDE_LOG, run_folder.INSIDE_TENSORS)},
        run_folder.MODEL: weights}


def _checked_runs(arms: Mapping[str, Sequence[str | os.PathLike]], out: Path, force: bool
                  ) -> dict[str, dict[str, dict[str, Path]]]:
    """Arm -> run name -> file -> path, once checked: ``out`` free (or ``force``), two arms, unique names, all
    files of finished runs there."""
    if (out.exists() or out.is_symlink()) and not force:
        raise FileExistsError(f"{out} exists; choose another --out, or pass --force to replace it")
    if len(arms) < 2 or any(not runs for runs in arms.values()):
        raise ConfigError("a comparison needs at least two arms, each with at least one run folder")
    found = {arm: {r: _run_files(r) for r in runs} for arm, runs in arms.items()}
    names = [name for runs in found.values() for name, _ in runs.values()]
    if len(set(names)) != len(names):
        raise ConfigError(f"run folder names must be unique (they name the copies): {names}")
    if out.exists() or out.is_symlink():
        _check_replaceable(out, [f for runs in found.values() for _, files in runs.values() for f in files.values()])
    for run, (_, files) in ((r, f) for runs in found.values() for r, f in runs.items()):
        if missing := [f.name for f in files.values() if not f.is_file()]:
            raise FileNotFoundError(f"{run} lacks {', '.join(missing)}: collect finished ViT runs trained with "
                                    "inside views on (the default), or zoo entries published with them")
    return {arm: dict(runs.values()) for arm, runs in found.items()}


def _check_replaceable(out: Path, inputs: Sequence[Path]) -> None:
    """FileExistsError unless ``--force`` may replace ``out``: a comparison vitlab wrote, holding none of ``inputs``
    and nothing else (an empty folder holds nothing to lose)."""
    where = out.resolve()
    if held := sorted({p.parent for p in inputs if p.resolve().parent == where or where in p.resolve().parents}):
        raise FileExistsError(f"--out {out} holds a run being compared ({held[0]}): --force never replaces "
                              "an input run; choose another --out")
    if why := _not_a_comparison(out):
        raise FileExistsError(f"--out {out} is not a comparison vitlab wrote ({why}), and --force replaces only "
                              "those: move it away or choose another --out")


def _not_a_comparison(out: Path) -> str | None:
    """Why ``out`` is not what :func:`collect` leaves (its JSON and copies of the runs it lists), or None if it is."""
    if out.is_symlink() or not out.is_dir():
        return "it is a link" if out.is_symlink() else "it is a file"
    entries = sorted(out.iterdir())
    if not entries:
        return None
    if run := [p.name for p in entries if p.name in _RUN_MARKS or p.name.startswith("checkpoint")]:
        return f"it holds {run[0]}, a training run's file"
    try:
        listed = {row["name"] for arm in json.loads((out / EXPERIMENT).read_text())["arms"] for row in arm["runs"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"it holds no {EXPERIMENT} that lists its runs"
    for entry in entries:
        if entry.name == EXPERIMENT and entry.is_file() and not entry.is_symlink():
            continue
        if entry.is_symlink() or not entry.is_dir() or entry.name not in listed:
            return f"it holds {entry.name}, which vitlab did not write there"
        if odd := [p.name for p in sorted(entry.iterdir()) if p.name not in RUN_FILES or p.is_symlink()
                   or not p.is_file()]:
            return f"it holds {entry.name}/{odd[0]}, which vitlab did not write there"
    return None


def read(folder: str | os.PathLike = LOCALITY) -> Recipes:
    """The comparison :func:`collect` wrote in ``folder``; a missing or damaged file is named in one line."""
    folder = Path(folder)
    path = folder / EXPERIMENT
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPERIMENT} in {folder}: collect runs into it with `python -m vitlab recipes`")
    try:
        stored = read_json(path)
        if stored.get("format", 0) > FORMAT:
            raise ResultsFileError(f"{path} has format {stored['format']}, this vitlab reads {FORMAT}: upgrade vitlab")
        arms = {}
        for arm in stored["arms"]:
            arms[arm["label"]] = [_run(folder, arm["label"], row) for row in arm["runs"]]
        differ = {k: {a: by_arm[a] for a in arms} for k, by_arm in stored["differs_in"].items()}  # arms' order
        return Recipes(arms=arms, differs_in=differ, commands=list(stored.get("commands", [])))
    except (KeyError, TypeError, ValueError, AttributeError, RunFolderError, OSError) as err:
        if isinstance(err, ResultsFileError):
            raise
        raise ResultsFileError(f"{path} or a run folder beside it cannot be read ({type(err).__name__}: {err}); "
                               "collect the runs again") from None


def _run(folder: Path, arm: str, row: dict[str, Any]) -> RecipeRun:
    run = folder / row["name"]
    config, code, versions = _config(run / run_folder.SIDECAR)
    views, metrics = run_folder.read_inside(run), run_folder.read_metrics(run)
    if not views or not metrics:
        raise ValueError(f"{run} has no inside views or no metrics")
    return RecipeRun(name=row["name"], arm=arm, seed=int(row["seed"]), config=config, code_version=code,
                     code_versions=versions, metrics=metrics, views=views, lowest_std=float(row["lowest_std"]),
                     lowest_low=float(row["lowest_low"]), lowest_high=float(row["lowest_high"]))
