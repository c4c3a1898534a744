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
from . import inside, run_folder
from .run_folder import RunFolderError
from .config import ConfigError, TrainConfig, command_line, from_args
from ..analysis.distance import head_statistics, lowest_head
from ..io import write_json
from ..models import load_model
from ..records import RecipeRun, Recipes
from ..result_files import ResultsFileError

LOCALITY = settings.PROJECT_ROOT / "data" / "results" / "locality"  #: issue 14's experiment (with, without CutMix)
#: What a run folder must hold to be collected, and what is copied of it.
RUN_FILES = (run_folder.SIDECAR, run_folder.METRICS_LOG, run_folder.INSIDE_LOG, run_folder.INSIDE_TENSORS)
EXPERIMENT, FORMAT = "experiment.json", 1
_NOT_RECIPE = {"seed", "out", "progress"}  #: settings that may differ within an arm, or name no property of a recipe


def _config(run: Path) -> tuple[dict[str, Any], str]:
    """The run's settings (every field of today's TrainConfig) and its commit."""
    record = run_folder.run_sidecar(run)
    return dataclasses.asdict(from_args(TrainConfig, record.config)), record.code_version or ""


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
    """Copy the records of finished runs (``arms``: label -> run folders) into ``out`` as a comparison; read it back."""
    out = Path(out)
    folders = _checked_folders(arms, out, force)
    configs = {arm: [_config(f)[0] for f in runs] for arm, runs in folders.items()}
    differ = differences(configs)
    images = inside.probe_images()
    stored: dict[str, list[dict[str, Any]]] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for arm, runs in folders.items():
            stored[arm] = []
            for f in runs:
                (tmp / f.name).mkdir()
                for n in RUN_FILES:
                    shutil.copy2(f / n, tmp / f.name / n)
                if not run_folder.read_inside(f):  # before anything is written
                    raise ValueError(f"{f} recorded no inside views: collect ViT runs trained with inside views on")
                stats = head_statistics(load_model(f / run_folder.MODEL, device="cpu"), images, progress=progress)
                lowest = lowest_head(stats["distance_per_image"])
                stored[arm].append(dict(name=f.name, seed=_config(f)[0]["seed"], lowest_std=lowest.std,
                                        lowest_low=lowest.low, lowest_high=lowest.high))
        trained = [f"{command_line('python -m vitlab train', from_args(TrainConfig, _config(f)[0]))} "
                   f"--out {shlex.quote(str(f))}" for runs in folders.values() for f in runs]
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


def _checked_folders(arms: Mapping[str, Sequence[str | os.PathLike]], out: Path, force: bool) -> dict[str, list[Path]]:
    """The run folders of each arm, once checked: ``out`` free (or ``force``), two arms, unique names, finished runs."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out, or pass --force to replace it")
    if len(arms) < 2 or any(not runs for runs in arms.values()):
        raise ConfigError("a comparison needs at least two arms, each with at least one run folder")
    folders = {arm: [Path(r) for r in runs] for arm, runs in arms.items()}
    names = [f.name for runs in folders.values() for f in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run folder names must be unique (they name the copies): {names}")
    for f in (f for runs in folders.values() for f in runs):
        if missing := [n for n in (*RUN_FILES, run_folder.MODEL) if not (f / n).is_file()]:
            raise FileNotFoundError(f"{f} lacks {', '.join(missing)}: collect finished ViT runs trained with "
                                    "inside views on (the default)")
    return folders


def read(folder: str | os.PathLike = LOCALITY) -> Recipes:
    """The comparison :func:`collect` wrote in ``folder``; a missing or damaged file is named in one line."""
    folder = Path(folder)
    path = folder / EXPERIMENT
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPERIMENT} in {folder}: collect runs into it with `python -m vitlab recipes`")
    try:
        stored = json.loads(path.read_text())
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
    config, code = _config(run)
    views, metrics = run_folder.read_inside(run), run_folder.read_metrics(run)
    if not views or not metrics:
        raise ValueError(f"{run} has no inside views or no metrics")
    return RecipeRun(name=row["name"], arm=arm, seed=int(row["seed"]), config=config, code_version=code,
                     metrics=metrics, views=views, lowest_std=float(row["lowest_std"]),
                     lowest_low=float(row["lowest_low"]), lowest_high=float(row["lowest_high"]))
