"""The results files of studies (``<results>.json``, ``-fewshot.json``, ``-inside.json``, each with a ``.csv`` copy):
the committed ones, and the only reader and writer of their fields. A broken ``.json`` raises, never reads as empty.

Writers add records: under ``<results>.lock`` each write reads the file again and merges its rows with the stored
ones by run (:attr:`~vitlab.records.RunOf.key`), so two sweeps writing one file at once keep both sweeps' runs."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import settings
from .io import atomic_write, locked, read_json
from .records import AttributionScore, InsideView, RunInside, RunOf, RunProbe, RunRecord, field_problem

#: The committed CPU sweep (``<RESULTS>.csv``, ``<RESULTS>.json`` and their ``-fewshot`` files).
RESULTS = settings.shipped_dir("results") / "vit_vs_resnet"
#: The ViT fine-tuned from the masked-patch-prediction encoder at the sweep's sizes (``init`` set).
MPP_RESULTS = settings.shipped_dir("results") / "mpp_finetune"
#: The ViT from scratch at the fine-tuned runs' images seen, pre-training included (compute-matched arm).
MATCHED_RESULTS = settings.shipped_dir("results") / "compute_matched"
#: ViT runs of the sweep's sizes retrained with inside views (``<INSIDE_RESULTS>-inside.json``, ...).
INSIDE_RESULTS = settings.shipped_dir("results") / "vit_inside"
#: A 30-epoch ``vit_tiny_c10`` run's inside views recorded with interventions (head ablation, logit lens), in a zoo
#: entry's layout (``inside.jsonl``, ``inside.safetensors``): notebook 08's section 6.
INTERVENTIONS_RUN = settings.shipped_dir("results") / "interventions" / "vit_tiny_c10_e30.inside"

#: The committed attribution scoreboards, one ``<model>.json`` (and ``.csv``) each (``python -m vitlab scoreboard``).
SCOREBOARDS = settings.shipped_dir("results") / "attributions"
_SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(AttributionScore))

#: Columns of ``<results>.csv`` (and the ``fields`` list of ``<results>.json``), in order.
RUN_FIELDS = ("model", "family", "subset_size", "seed", "epochs", "test_accuracy", "train_flops", "params",
              "wall_seconds", "hardware", "images_seen", "flops_per_image", "images_seen_total",
              "train_flops_total", "optimizer", "lr", "weight_decay", "batch_size", "code_version", "init")
# Key order of a run in <results>.json, as the sweep has always written it.
_RUN_JSON_KEYS = ("model", "subset_size", "seed", "epochs", "family", "test_accuracy", "train_flops", "params",
                  "wall_seconds", "hardware", "images_seen", "flops_per_image", "images_seen_total",
                  "train_flops_total", "batch_size", "code_version", "optimizer", "lr", "weight_decay", "init")
_FEWSHOT_PREFIX = "fewshot_"
FEWSHOT_TAG = "-fewshot"
_INSIDE_TAG = "-inside"
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunOf))
#: Columns of ``<results>-inside.csv`` (the ``.json`` keeps the whole view).
_INSIDE_FIELDS = [*_RUN_KEYS, "test_accuracy", "code_version", "lowest_local", "lowest_low", "lowest_high",
                  "lowest_std", "uniform", "position_distance", "position_row_column", "mirror", "mirror_neighbour",
                  "filter_variance_first"]
_INSIDE_SCALARS = ("test_accuracy", "code_version", "lowest_std", "lowest_low", "lowest_high")
T = TypeVar("T")


class ResultsFileError(ValueError):
    """A results file cannot be read whole; it is left as it is."""


def _file(results: str | os.PathLike, suffix: str) -> Path:
    """``<results><suffix>``; a ``.csv`` or ``.json`` ending on ``results`` itself is dropped first."""
    return Path(str(results).removesuffix(".csv").removesuffix(".json") + suffix)


def _unreadable(path: Path, why: str, remake: str = "rerun the sweep") -> ResultsFileError:
    """``remake``: what writes the file again once it is moved away."""
    return ResultsFileError(f"{path} is not a complete results file ({why}): restore it (from git or a backup), "
                            f"or move it away and {remake}; vitlab will not overwrite it")


def _load(results: str | os.PathLike, tag: str) -> dict[str, Any]:
    """The stored ``{"commands": [...], "runs": [...]}`` of ``<results><tag>.json``; empty when there is none."""
    path, table = _file(results, f"{tag}.json"), _file(results, f"{tag}.csv")
    if not path.exists():
        if table.is_file() and table.stat().st_size:
            raise ResultsFileError(f"{table} holds results but {path.name} beside it is missing (vitlab reads and "
                                   "rewrites runs from the .json): restore it, or move the .csv away to start afresh")
        return {"commands": [], "runs": []}
    try:
        stored = read_json(path)
    except (OSError, ValueError) as err:  # ValueError: bad JSON, nested too deeply, or not UTF-8
        raise _unreadable(path, f"{type(err).__name__}: {err}") from None
    if not (isinstance(stored, dict) and isinstance(stored.get("runs"), list)
            and isinstance(stored.get("commands", []), list) and all(isinstance(r, dict) for r in stored["runs"])):
        raise _unreadable(path, 'not an object with a "runs" list of records')
    return {"commands": stored.get("commands", []), "runs": stored["runs"]}


def _records(results: str | os.PathLike, tag: str, build: Callable[[dict[str, Any]], T]) -> tuple[list[T], list[str]]:
    """``build(row)`` for every stored row, and the stored commands; a bad row, or a field of it of the wrong type
    (:func:`~vitlab.records.field_problem`), names the file, the row and the field, before any work."""
    stored, built = _load(results, tag), []
    for i, row in enumerate(stored["runs"]):
        try:
            built.append(build(row))
        except TypeError as err:
            raise _unreadable(_file(results, f"{tag}.json"), f"run {i}: {err}") from None
        if problem := field_problem(built[-1]):
            raise ResultsFileError(f"{_file(results, f'{tag}.json')} run {i}: {problem}; correct it there (or restore "
                                   "the file from git or a backup), then run again")
    return built, list(stored["commands"])


def _order(row: dict[str, Any]) -> tuple:
    return (row["family"], row["model"], row.get("init", ""), row["subset_size"], row["seed"], row["epochs"])


def _write(results: str | os.PathLike, tag: str, rows: list[dict[str, Any]], commands: Sequence[str],
           fields: Sequence[str] | Callable[[list[dict[str, Any]]], Sequence[str]],
           replace: Collection[tuple] = ()) -> None:
    """Merge ``rows`` into ``<results><tag>.json`` and write its ``.csv`` of ``fields`` (or ``fields(rows)``),
    under the results' lock; see :func:`_merge`."""
    # Through JSON first: an unwritable value fails here, and rows compare with the stored ones as equals.
    rows = json.loads(json.dumps([{k: v for k, v in row.items() if k != "init" or v} for row in rows]))
    path = _file(results, f"{tag}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with locked(_file(results, ".lock")):
            stored = _load(results, tag)  # what is there now, other writers' runs included
            rows = _merge(path, stored["runs"], rows, set(replace))
            try:
                rows.sort(key=_order)
            except (KeyError, TypeError) as err:
                raise _unreadable(path, f"a stored run lacks its family, model or size: {err!r}") from None
            commands = [*stored["commands"], *(c for c in commands if c not in stored["commands"])]
            _replace(path, rows, commands, fields(rows) if callable(fields) else fields)
    except TimeoutError as err:
        raise ResultsFileError(f"{err} for over a minute: another vitlab process is writing {path.name}; "
                               "wait for it, or stop it if it hangs") from None


def _key(row: dict[str, Any]) -> tuple:
    """A stored row's run, as :attr:`~vitlab.records.RunOf.key` orders it."""
    return (row.get("model"), row.get("subset_size"), row.get("seed"), row.get("epochs"), row.get("batch_size", 0),
            row.get("init", ""))


def _merge(path: Path, stored: list[dict[str, Any]], rows: list[dict[str, Any]], replace: set[tuple]
           ) -> list[dict[str, Any]]:
    """The stored rows with ``rows`` merged in by run: a new run is added, a run stored before gets the fields
    the row adds; a field of a run stored with another value is refused, unless its key is in ``replace``."""
    merged = list(stored)
    try:
        where = {}
        for i, row in enumerate(merged):
            where.setdefault(_key(row), i)
        for row in rows:
            i = where.setdefault(_key(row), len(merged))
            if i == len(merged):
                merged.append(row)
            elif _key(row) in replace:
                merged[i] = row
            else:
                old = merged[i]
                if clash := [f for f in row if f in old and json.dumps(old[f], sort_keys=True)
                             != json.dumps(row[f], sort_keys=True)]:
                    raise ResultsFileError(_clash(path, row, clash[0], old[clash[0]]))
                merged[i] = {**row, **{k: v for k, v in old.items() if k not in row}}
    except TypeError as err:  # a key field that is a list or an object
        raise _unreadable(path, f"a run's model, size, seed, epochs, batch size or init is no value: {err}") from None
    return merged


def _clash(path: Path, row: dict[str, Any], field: str, old: Any) -> str:
    init = f" from {row['init']}" if row.get("init") else ""
    there, here = (r if len(r := repr(v)) <= 60 else f"{r[:57]}..." for v in (old, row[field]))  # a view is long
    return (f"{path} already records {row['model']} on {row['subset_size']} images, seed {row['seed']}, "
            f"{row['epochs']} epochs{init} with {field} {there} there, {here} in this write: another "
            "process recorded this run too; delete one of the two rows (in the .json) and run again")


def _replace(path: Path, rows: list[dict[str, Any]], commands: Sequence[str], fields: Sequence[str]) -> None:
    """Write ``path`` (commands, fields, rows) and its ``.csv``; ``init`` only where a run has one."""
    if not any("init" in row for row in rows):
        fields = [f for f in fields if f != "init"]
    text = json.dumps(dict(commands=list(commands), fields=list(fields), runs=rows), indent=1) + "\n"
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # Both texts are built before either file is touched, so a bad record changes neither.
    atomic_write(path, lambda tmp: tmp.write_text(text))
    atomic_write(path.with_suffix(".csv"), lambda tmp: tmp.write_text(table.getvalue()))


def read_commands(results: str | os.PathLike, tag: str = "") -> list[str]:
    """The command lines recorded in ``<results><tag>.json`` (empty if there is no file)."""
    return list(_load(results, tag)["commands"])


def _probe(row: dict[str, Any]) -> RunProbe:
    """A stored probe row, its ``fewshot_<k>`` fields gathered into ``fewshot`` {k: accuracy}."""
    rest, shots = {}, {}
    for name, value in row.items():
        suffix = name.removeprefix(_FEWSHOT_PREFIX)
        if suffix != name and suffix.isdigit():
            shots[int(suffix)] = value
        else:
            rest[name] = value
    return RunProbe(**rest, fewshot=shots)


def read_run_probes(results: str | os.PathLike) -> tuple[list[RunProbe], list[str]]:
    """The :class:`RunProbe` records of ``<results>-fewshot.json`` and the commands that made them."""
    return _records(results, FEWSHOT_TAG, _probe)


def _probe_row(probe: RunProbe) -> dict[str, Any]:
    shots = {f"{_FEWSHOT_PREFIX}{k}": probe.fewshot[k] for k in sorted(probe.fewshot)}
    return dict({k: getattr(probe, k) for k in _RUN_KEYS}, **shots, layer=probe.layer, pooling=probe.pooling,
                probe_setting=probe.probe_setting)


def _probe_fields(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of ``-fewshot.csv``: a ``fewshot_<k>`` column for every k any row has, in order of k."""
    shots = {int(k.removeprefix(_FEWSHOT_PREFIX)) for row in rows for k in row
             if k.startswith(_FEWSHOT_PREFIX) and k.removeprefix(_FEWSHOT_PREFIX).isdigit()}
    return ["model", "family", "subset_size", "seed", "epochs", "init", "layer", "pooling",
            *(f"{_FEWSHOT_PREFIX}{k}" for k in sorted(shots))]


def write_run_probes(results: str | os.PathLike, probes: Sequence[RunProbe], commands: Sequence[str],
                     replace: Collection[tuple] = ()) -> None:
    """Add ``probes`` to ``<results>-fewshot.json`` and ``.csv`` (one row per probed run, ordered like the runs).

    Args:
        replace: keys (:attr:`~vitlab.records.RunOf.key`) of runs whose stored probes these supersede, e.g. probes
            under another setting; any other run stored with another probe is refused (ResultsFileError).
    """
    _write(results, FEWSHOT_TAG, [_probe_row(p) for p in probes], commands, _probe_fields, replace)


def read_runs(results: str | os.PathLike, history: Callable[[str], tuple[int, float]] | None = None) -> list[RunRecord]:
    """The runs of ``<results>.json`` (empty if none yet), probe accuracies in ``.fewshot``; see ``init_history``."""
    def run(row: dict[str, Any]) -> RunRecord:
        if row.get("init") and not {"images_seen_total", "train_flops_total"} <= row.keys():
            if history is None:
                raise ResultsFileError(
                    f"{_file(results, '.json')} predates images_seen_total and train_flops_total, and a run in it "
                    f"was fine-tuned from {row['init']}: read it with read_runs(..., history=vitlab.training.sweep."
                    "init_history), which adds that init's training from its sidecar, and write_runs it back")
            images, flops = history(row["init"])
            row = dict(row, images_seen_total=row["images_seen"] + images, train_flops_total=row["train_flops"] + flops)
        return RunRecord(**row)
    probes = {p.key: p.fewshot for p in read_run_probes(results)[0]}
    runs = _records(results, "", run)[0]
    return [dataclasses.replace(r, fewshot=dict(probes.get(r.key, {}))) for r in runs]


def write_runs(results: str | os.PathLike, runs: Sequence[RunRecord], commands: Sequence[str]) -> None:
    """Add ``runs`` and ``commands`` to ``<results>.json`` and ``.csv`` (runs stored there are kept, a run stored
    with other values is refused: ResultsFileError); ``fewshot`` goes to :func:`write_run_probes`."""
    _write(results, "", [{name: getattr(r, name) for name in _RUN_JSON_KEYS} for r in runs], commands, RUN_FIELDS)


def _inside(row: dict[str, Any]) -> RunInside:
    if not isinstance(row.get("view"), dict):
        raise TypeError("no 'view' object")
    return RunInside(**{k: row[k] for k in (*_RUN_KEYS, *_INSIDE_SCALARS) if k in row},
                     view=InsideView.from_json(row["view"]))


def read_run_insides(results: str | os.PathLike) -> tuple[list[RunInside], list[str]]:
    """The :class:`RunInside` records of ``<results>-inside.json`` and the commands that made them."""
    return _records(results, _INSIDE_TAG, _inside)


def _inside_row(run: RunInside) -> dict[str, Any]:
    view = run.view.as_dict()
    flat = {k: view[k] for k in _INSIDE_FIELDS if k in view}
    return dict({k: getattr(run, k) for k in (*_RUN_KEYS, *_INSIDE_SCALARS)}, lowest_local=run.view.lowest_local,
                **flat, view=view)


def write_run_insides(results: str | os.PathLike, insides: Sequence[RunInside], commands: Sequence[str]) -> None:
    """Add ``insides`` to ``<results>-inside.json`` (whole views) and ``.csv`` (one summary row per run), as
    :func:`write_runs` adds runs."""
    _write(results, _INSIDE_TAG, [_inside_row(i) for i in insides], commands, _INSIDE_FIELDS)


def scoreboard_file(folder: str | os.PathLike, model: str) -> Path:
    """Where the scoreboard of ``model`` is kept in ``folder``: ``<folder>/<model>.json``."""
    return Path(folder) / f"{model}.json"


def write_scoreboard(folder: str | os.PathLike, rows: Sequence[AttributionScore], command: str,
                     about: dict[str, Any], force: bool = False) -> Path:
    """Write one model's scoreboard ``rows`` to ``<folder>/<model>.json`` with the ``command`` that made it and
    ``about`` (images, seconds, hardware, code version), and a ``.csv`` copy of the rows; an existing scoreboard is
    refused unless ``force``. Both files are written whole or not at all."""
    models = {row.model for row in rows}
    if len(models) != 1:
        raise ValueError(f"a scoreboard file holds one model's rows, got models {sorted(models)}")
    path = scoreboard_file(folder, models.pop())
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass --force to compute it again and replace it")
    data = json.loads(json.dumps({"command": command, **about, "fields": list(_SCORE_FIELDS),
                                  "rows": [dataclasses.asdict(r) for r in rows]}))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=_SCORE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data["rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".csv"), lambda tmp: tmp.write_text(table.getvalue()))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
    return path


_REMAKE_BOARD = "run python -m vitlab scoreboard for its model again"


def read_scoreboards(folder: str | os.PathLike = SCOREBOARDS) -> tuple[list[AttributionScore], dict[str, dict]]:
    """Every scoreboard in ``folder``: the rows of all its models, and per model what else its file says (the
    command, images, seconds, hardware). A file that cannot be read whole raises :class:`ResultsFileError`."""
    rows, about = [], {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = read_json(path)
            read = [AttributionScore(**row) for row in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _unreadable(path, f"{type(err).__name__}: {err}", _REMAKE_BOARD) from None
        for row in read:
            if problem := field_problem(row):
                raise _unreadable(path, problem, _REMAKE_BOARD)
        rows += read
        about[path.stem] = {k: v for k, v in data.items() if k not in ("rows", "fields")}
    return rows, about
