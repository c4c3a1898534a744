"""The results files of studies: where the committed ones are, and how records are read and written.

A sweep keeps one :class:`~vitlab.records.RunRecord` per training run in ``<results>.json`` and
``<results>.csv``; the few-shot probes of each run's final representation are kept apart,
one :class:`~vitlab.records.RunProbe` per run in ``<results>-fewshot.json`` and ``.csv``. :func:`read_runs`
merges the two, so ``run.fewshot[k]`` is the run's k-shot probe accuracy; inside views of sweep runs
live in ``<results>-inside.{json,csv}``.

The on-disk format is the one the committed sweep was written in (``fewshot_<k>`` fields,
runs ordered by family, model, subset size, seed and epochs). Field names are read and
written here, at the file boundary, and nowhere else: the rest of vitlab sees dataclasses.

The ``.json`` file is the record; the ``.csv`` beside it is a copy for spreadsheets, rewritten
from the records on every write. Both are written atomically. A ``.json`` that cannot be read
whole raises an error naming it, never reads as empty: a sweep would otherwise rewrite it
without its finished runs.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import settings
from .io import atomic_write
from .records import InsideView, RunInside, RunOf, RunProbe, RunRecord

#: The committed CPU sweep (``<RESULTS>.csv``, ``<RESULTS>.json`` and their ``-fewshot`` files).
RESULTS = settings.PROJECT_ROOT / "data" / "results" / "vit_vs_resnet"
#: The ViT fine-tuned from the masked-patch-prediction encoder at the sweep's sizes (``init`` set).
MPP_RESULTS = settings.PROJECT_ROOT / "data" / "results" / "mpp_finetune"
#: ViT runs of the sweep's sizes retrained with inside views (``<INSIDE_RESULTS>-inside.json``, ...).
INSIDE_RESULTS = settings.PROJECT_ROOT / "data" / "results" / "vit_inside"

#: Columns of ``<results>.csv`` (and the ``fields`` list of ``<results>.json``), in order.
RUN_FIELDS = ("model", "family", "subset_size", "seed", "epochs", "test_accuracy", "train_flops", "params",
              "wall_seconds", "hardware", "images_seen", "flops_per_image", "optimizer", "lr", "weight_decay",
              "batch_size", "code_version", "init")

# Key order of a run in <results>.json, as the sweep has always written it.
_RUN_JSON_KEYS = ("model", "subset_size", "seed", "epochs", "family", "test_accuracy", "train_flops", "params",
                  "wall_seconds", "hardware", "images_seen", "flops_per_image", "batch_size", "code_version",
                  "optimizer", "lr", "weight_decay", "init")

_FEWSHOT_PREFIX = "fewshot_"
FEWSHOT_TAG = "-fewshot"

T = TypeVar("T")
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunOf))


class ResultsFileError(ValueError):
    """A results file cannot be read whole; it is left as it is."""


# --- the file boundary: field names are parsed and written only below ---------------------------


def _file(results: str | os.PathLike, suffix: str) -> Path:
    """``<results><suffix>``; a ``.csv`` or ``.json`` ending on ``results`` itself is dropped first."""
    base = str(results)
    for ending in (".csv", ".json"):
        base = base.removesuffix(ending)
    return Path(base + suffix)


def _unreadable(path: Path, why: str) -> ResultsFileError:
    return ResultsFileError(f"{path} is not a complete results file ({why}): restore it (from git or a backup), "
                            "or move it away and rerun the sweep; vitlab will not overwrite it")


def _load(results: str | os.PathLike, tag: str) -> dict[str, Any]:
    """The stored ``{"commands": [...], "runs": [...]}`` of ``<results><tag>.json``; empty when there is none.

    A file that does not parse, or a ``.csv`` of results without its ``.json``, raises
    :class:`ResultsFileError` naming the file: reading it as empty would let the next write drop its runs.
    """
    path, table = _file(results, f"{tag}.json"), _file(results, f"{tag}.csv")
    if not path.exists():
        if table.is_file() and table.stat().st_size:
            raise ResultsFileError(f"{table} holds results but {path.name} beside it is missing (vitlab reads and "
                                   "rewrites runs from the .json): restore it, or move the .csv away to start afresh")
        return {"commands": [], "runs": []}
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {err}") from None
    if not (isinstance(stored, dict) and isinstance(stored.get("runs"), list)
            and isinstance(stored.get("commands", []), list) and all(isinstance(r, dict) for r in stored["runs"])):
        raise _unreadable(path, 'not an object with a "runs" list of records')
    return {"commands": stored.get("commands", []), "runs": stored["runs"]}


def _records(path: Path, rows: list[dict[str, Any]], build: Callable[[dict[str, Any]], T]) -> list[T]:
    """``build(row)`` for every stored row; a row with missing or unknown fields names the file and row."""
    built = []
    for i, row in enumerate(rows):
        try:
            built.append(build(row))
        except TypeError as err:
            raise _unreadable(path, f"run {i}: {err}") from None
    return built


def _split_fewshot(row: dict[str, Any]) -> tuple[dict[str, Any], dict[int, float]]:
    """A stored row without its ``fewshot_<k>`` fields, and those fields as {k: accuracy}."""
    rest, shots = {}, {}
    for name, value in row.items():
        suffix = name.removeprefix(_FEWSHOT_PREFIX)
        if suffix != name and suffix.isdigit():
            shots[int(suffix)] = value
        else:
            rest[name] = value
    return rest, shots


def _fewshot_fields(shots: Iterable[int]) -> list[str]:
    return [f"{_FEWSHOT_PREFIX}{k}" for k in sorted(shots)]


def _run_row(run: RunRecord) -> dict[str, Any]:
    return {name: getattr(run, name) for name in _RUN_JSON_KEYS}


def _probe_row(probe: RunProbe) -> dict[str, Any]:
    row = {k: getattr(probe, k) for k in _RUN_KEYS}
    row.update(zip(_fewshot_fields(probe.fewshot), (probe.fewshot[k] for k in sorted(probe.fewshot))))
    return dict(row, layer=probe.layer, pooling=probe.pooling, probe_setting=probe.probe_setting)


def _order(row: dict[str, Any]) -> tuple:
    return (row["family"], row["model"], row.get("init", ""), row["subset_size"], row["seed"], row["epochs"])


def _write(results: str | os.PathLike, tag: str, rows: list[dict[str, Any]], commands: Sequence[str],
           fields: Sequence[str]) -> None:
    """``<results><tag>.json`` (commands, fields, rows) and ``<results><tag>.csv``, atomically.

    ``init`` is written only for runs fine-tuned from pre-trained weights, and is a column
    only where there are such runs: files of runs from scratch keep the format they always had.
    """
    rows = sorted(({k: v for k, v in row.items() if k != "init" or v} for row in rows), key=_order)
    if not any("init" in row for row in rows):
        fields = [f for f in fields if f != "init"]
    text = json.dumps(dict(commands=list(commands), fields=list(fields), runs=rows), indent=1) + "\n"
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # Both texts are built before either file is touched, so a bad record changes neither.
    atomic_write(_file(results, f"{tag}.json"), lambda tmp: tmp.write_text(text))
    atomic_write(_file(results, f"{tag}.csv"), lambda tmp: tmp.write_text(table.getvalue()))


def read_commands(results: str | os.PathLike, tag: str = "") -> list[str]:
    """The command lines recorded in ``<results><tag>.json`` (empty if there is no file)."""
    return list(_load(results, tag)["commands"])


def read_run_probes(results: str | os.PathLike) -> tuple[list[RunProbe], list[str]]:
    """The :class:`RunProbe` records of ``<results>-fewshot.json`` and the commands that made them."""
    stored = _load(results, FEWSHOT_TAG)

    def probe(row: dict[str, Any]) -> RunProbe:
        rest, shots = _split_fewshot(row)
        return RunProbe(**rest, fewshot=shots)

    return _records(_file(results, f"{FEWSHOT_TAG}.json"), stored["runs"], probe), list(stored["commands"])


def write_run_probes(results: str | os.PathLike, probes: Sequence[RunProbe], commands: Sequence[str]) -> None:
    """Write ``<results>-fewshot.json`` and ``.csv``: one row per probed run, ordered like the runs."""
    shots = sorted({k for p in probes for k in p.fewshot})
    fields = ["model", "family", "subset_size", "seed", "epochs", "init", "layer", "pooling", *_fewshot_fields(shots)]
    _write(results, FEWSHOT_TAG, [_probe_row(p) for p in probes], commands, fields)


def read_runs(results: str | os.PathLike) -> list[RunRecord]:
    """The runs of ``<results>.json`` (empty if there is none yet), in stored order.

    Runs probed in ``<results>-fewshot.json`` carry those accuracies in ``.fewshot``.
    """
    probes = {p.key: p.fewshot for p in read_run_probes(results)[0]}
    runs = _records(_file(results, ".json"), _load(results, "")["runs"], lambda row: RunRecord(**row))
    return [dataclasses.replace(r, fewshot=dict(probes.get(r.key, {}))) for r in runs]


def write_runs(results: str | os.PathLike, runs: Sequence[RunRecord], commands: Sequence[str]) -> None:
    """Write ``<results>.json`` (runs and the commands that made them) and ``<results>.csv``.

    ``RunRecord.fewshot`` is not written here: probes live in their own file
    (:func:`write_run_probes`).
    """
    _write(results, "", [_run_row(r) for r in runs], commands, RUN_FIELDS)


#: ``<results>-inside.{json,csv}``: the inside view of each ViT run's final model.
_INSIDE_TAG = "-inside"



#: Columns of ``<results>-inside.csv`` (the ``.json`` keeps the whole view).
_INSIDE_FIELDS = [*_RUN_KEYS, "test_accuracy", "code_version", "lowest_local", "lowest_low", "lowest_high",
                 "lowest_std", "uniform",
                 "position_distance", "position_row_column", "mirror", "mirror_neighbour", "filter_variance_first"]


_INSIDE_SCALARS = ("test_accuracy", "code_version", "lowest_std", "lowest_low", "lowest_high")


def _inside_row(run: RunInside) -> dict[str, Any]:
    row = {k: getattr(run, k) for k in (*_RUN_KEYS, *_INSIDE_SCALARS)}
    view = dataclasses.asdict(run.view)
    flat = {k: view[k] for k in _INSIDE_FIELDS if k in view}
    return dict(row, lowest_local=run.view.lowest_local, **flat, view=view)


def read_run_insides(results: str | os.PathLike) -> tuple[list[RunInside], list[str]]:
    """The :class:`RunInside` records of ``<results>-inside.json`` and the commands that made them."""
    stored = _load(results, _INSIDE_TAG)

    def build(row: dict[str, Any]) -> RunInside:
        if not isinstance(row.get("view"), dict):
            raise TypeError("no 'view' object")
        return RunInside(**{k: row[k] for k in (*_RUN_KEYS, *_INSIDE_SCALARS) if k in row},
                         view=InsideView.from_json(row["view"]))

    return _records(_file(results, f"{_INSIDE_TAG}.json"), stored["runs"], build), list(stored["commands"])


def write_run_insides(results: str | os.PathLike, insides: Sequence[RunInside], commands: Sequence[str]) -> None:
    """Write ``<results>-inside.json`` (whole views) and ``.csv`` (one summary row per run), atomically."""
    _write(results, _INSIDE_TAG, [_inside_row(i) for i in insides], commands, _INSIDE_FIELDS)
