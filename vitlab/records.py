"""Typed records of sweeps and probes, the result files they live in, and spread over seeds.

A sweep keeps one :class:`RunRecord` per training run in ``<results>.json`` and
``<results>.csv``; the few-shot probes of each run's final representation are kept apart,
one :class:`RunProbe` per run in ``<results>-fewshot.json`` and ``.csv``. :func:`read_runs`
merges the two, so ``run.fewshot[k]`` is the run's k-shot probe accuracy.

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
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from . import settings
from .io import atomic_write

#: The committed CPU sweep (``<RESULTS>.csv``, ``<RESULTS>.json`` and their ``-fewshot`` files).
#: The order figures and readouts give the model families: ViTs, hybrids, ResNets (others after them).
FAMILY_ORDER = {"vit": 0, "hybrid": 1, "resnet": 2}

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


class ResultsFileError(ValueError):
    """A results file cannot be read whole; it is left as it is."""


@dataclass(frozen=True, kw_only=True)
class RunOf:
    """What names one sweep run: its training record, its probes and its inside view all start with these fields.

    Attributes:
        model: zoo name of the trained model; family: ``"vit"``, ``"hybrid"`` or ``"resnet"``.
        subset_size: training images (a class-stratified CIFAR-10 subset); seed; epochs; batch_size.
        init: how the run was initialised: ``""`` from scratch, else ``"<objective>:<weights>"``
            (e.g. ``"mpp:vit_tiny_c10_mpp"``, fine-tuned from that masked-patch-prediction encoder).
    """

    model: str
    family: str
    subset_size: int
    seed: int
    epochs: int
    batch_size: int
    init: str = ""

    @property
    def key(self) -> tuple:
        """What identifies a run: (model, subset_size, seed, epochs, batch_size, init)."""
        return (self.model, self.subset_size, self.seed, self.epochs, self.batch_size, self.init)

    @property
    def label(self) -> str:
        """How figures name the run's series: the model, and what it was fine-tuned from if anything."""
        return run_label(self.model, self.init)


def run_label(model: str, init: str) -> str:
    """``model``, or ``"model ← init"`` for a run fine-tuned from pre-trained weights."""
    return f"{model} ← {init}" if init else model


_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunOf))


@dataclass(frozen=True, kw_only=True)
class RunRecord(RunOf):
    """One training run of a sweep: the run (:class:`RunOf`'s fields) and what its training measured.

    Attributes:
        test_accuracy: fraction of the 10,000 test images classified correctly.
        train_flops: FLOPs of all training steps (forward + backward); flops_per_image: of one image.
        params: parameters; wall_seconds: training time; hardware: where it ran.
        images_seen: training images processed (steps x batch size).
        optimizer, lr, weight_decay: the recipe (with ``batch_size``); code_version: git commit of vitlab.
        fewshot: shots per class -> mean few-shot probe accuracy of the run's final
            representation (empty when the run was not probed).
    """

    batch_size: int = 0  # optional here, as it always was for a run record
    test_accuracy: float
    train_flops: float = 0.0
    params: int = 0
    wall_seconds: float = 0.0
    hardware: str = ""
    images_seen: int = 0
    flops_per_image: float = 0.0
    optimizer: str = ""
    lr: float = 0.0
    weight_decay: float = 0.0
    code_version: str = ""
    fewshot: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ProbeRecord:
    """One few-shot linear probe: one layer and pooling of a model, one draw of the shots.

    Attributes:
        model: the name the probed model was given; family: ``"vit"``, ``"hybrid"`` or ``"resnet"``.
        layer: module name (e.g. ``"blocks.3"``, ``"layer2"``) or ``"pre_logits"`` (what
            the classifier head reads).
        depth: the layer's index in ``features.representation_layers`` (``pre_logits``
            comes after the last one).
        pooling: ``"cls"`` (class token), ``"mean"`` (mean patch token), ``"gap"``
            (global average of a feature map) or ``"head"`` (the head's own pooling).
        shots: training images per class; seed: draw of those images; accuracy: a fraction.
    """

    model: str
    family: str
    layer: str
    depth: int
    pooling: str
    shots: int
    seed: int
    accuracy: float




@dataclass(frozen=True, kw_only=True)
class RunProbe(RunOf):
    """Few-shot probes of one run's final representation, as kept in ``<results>-fewshot.json``.

    Attributes:
        layer, pooling: the representation probed (see :class:`ProbeRecord`).
        fewshot: shots per class -> accuracy averaged over the probe's seeds.
        probe_setting: how it was probed (e.g. ``{"shots": [1, 5], "seeds": 3, "test": 2000}``).
    """

    layer: str
    pooling: str
    fewshot: dict[int, float]
    probe_setting: dict[str, Any]


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


# --- mean and spread over seeds ----------------------------------------------------------------


class Spread(NamedTuple):
    """Mean, sample standard deviation (0 for one value) and count of a group of values."""

    mean: float
    std: float
    n: int


def spread(values: Iterable[float]) -> Spread:
    """The :class:`Spread` of ``values`` (at least one)."""
    v = np.asarray(list(values), dtype=np.float64)
    if not len(v):
        raise ValueError("spread of no values")
    return Spread(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, n=len(v))


K = TypeVar("K", bound=Hashable)


def group_spread(items: Iterable[T], key: Callable[[T], K], value: Callable[[T], float]) -> dict[K, Spread]:
    """Group ``items`` by ``key(item)`` and give each group's :class:`Spread` of ``value(item)``.

    Groups come in the order their first item appears, e.g.
    ``group_spread(probes, lambda p: (p.layer, p.shots), lambda p: p.accuracy)``.
    """
    groups: dict[K, list[float]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(float(value(item)))
    return {k: spread(v) for k, v in groups.items()}


# --- inside views: the paper's Fig. 7 numbers of one model at one moment of training ------------


@dataclass(frozen=True, kw_only=True)
class InsideView:
    """What a ViT looks like inside at the end of one epoch (:func:`vitlab.training.inside.inside_view`).

    One line of a run's ``inside.jsonl``; the field names are the file's keys and stay stable.

    Attributes:
        epoch: epochs finished (1-based); step: optimiser steps taken.
        images: probe images the attention statistics average over.
        grid: (rows, cols) of patches; patch_size: (height, width) in pixels;
            num_prefix_tokens: class token and other non-patch tokens.
        distance: per layer, per head mean attention distance in pixels (layers x heads),
            the paper's convention (raw weights over patch keys, ``renormalize=False``).
        entropy: per layer, per head attention entropy over patch keys in nats (layers x heads).
        uniform: the distance under uniform attention over all tokens, same convention (pixels).
        position_distance, position_row_column: :class:`vitlab.analysis.metrics.PositionStructure`
            of the position embeddings' similarity (Spearman correlations; ``position_distance`` is
            its ``closeness``, the name kept as the files' key).
        mirror, mirror_neighbour: :class:`vitlab.analysis.metrics.MirrorScore` (mean similarity to
            the mirror position, to the neighbours).
        filter_variance_first: explained-variance ratio of the first principal component of
            the patch-embedding filters; filter_variance_k: of the first ``filter_k`` together.
    """

    epoch: int
    step: int
    images: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    num_prefix_tokens: int
    distance: list[list[float]]
    entropy: list[list[float]]
    uniform: float
    position_distance: float
    position_row_column: float
    mirror: float
    mirror_neighbour: float
    filter_variance_first: float
    filter_variance_k: float
    filter_k: int

    @property
    def lowest_local(self) -> float:
        """The lowest layer's most local head: its smallest mean attention distance (pixels)."""
        return min(self.distance[0])

    @property
    def layer_means(self) -> list[float]:
        """Mean attention distance of each layer, averaged over its heads (pixels)."""
        return [sum(row) / len(row) for row in self.distance]

    def to_json(self) -> str:
        """One JSON line (no newline): the fields by name."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str | dict[str, Any]) -> InsideView:
        """The record of one ``inside.jsonl`` line (or its parsed dict); TypeError on missing or unknown fields."""
        row = json.loads(line) if isinstance(line, str) else dict(line)
        if not isinstance(row, dict):
            raise TypeError(f"an inside view is a JSON object, got {type(row).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if row.keys() != names:
            raise TypeError(f"inside view fields differ: missing {sorted(names - row.keys())}, "
                            f"unknown {sorted(row.keys() - names)}")
        return cls(**dict(row, grid=tuple(row["grid"]), patch_size=tuple(row["patch_size"])))


def check_one_grid(views: dict[str, InsideView]) -> None:
    """Refuse views of models with different patch grids: their distances and uniform lines differ."""
    if not views:
        raise ValueError("no inside views to compare")
    grids = {k: (tuple(v.grid), tuple(v.patch_size)) for k, v in views.items()}
    if len(set(grids.values())) > 1:
        raise ValueError(f"compare models of one patch grid; got {grids} (grid, patch size in pixels)")


# --- inside views of sweep runs: Fig. 7 numbers against training-set size ------------------------

#: ``<results>-inside.{json,csv}``: the inside view of each ViT run's final model.
INSIDE_TAG = "-inside"


@dataclass(frozen=True, kw_only=True)
class RunInside(RunOf):
    """The inside view of one sweep run's final model (:func:`vitlab.training.sweep.inside_runs`).

    Attributes:
        test_accuracy: of the run (copied from its record, so a figure needs one file).
        code_version: git commit the run was trained with.
        view: its :class:`InsideView` on the probe images, from the final weights.
        lowest_std, lowest_low, lowest_high: spread over the probe images of the lowest
            layer's most local head (``view.lowest_local``): standard deviation across images
            and the 95% bootstrap interval of the mean, pixels.
    """

    test_accuracy: float
    code_version: str
    view: InsideView
    lowest_std: float = 0.0
    lowest_low: float = 0.0
    lowest_high: float = 0.0


#: Columns of ``<results>-inside.csv`` (the ``.json`` keeps the whole view).
INSIDE_FIELDS = [*_RUN_KEYS, "test_accuracy", "code_version", "lowest_local", "lowest_low", "lowest_high",
                 "lowest_std", "uniform",
                 "position_distance", "position_row_column", "mirror", "mirror_neighbour", "filter_variance_first"]


_INSIDE_SCALARS = ("test_accuracy", "code_version", "lowest_std", "lowest_low", "lowest_high")


def _inside_row(run: RunInside) -> dict[str, Any]:
    row = {k: getattr(run, k) for k in (*_RUN_KEYS, *_INSIDE_SCALARS)}
    view = dataclasses.asdict(run.view)
    flat = {k: view[k] for k in INSIDE_FIELDS if k in view}
    return dict(row, lowest_local=run.view.lowest_local, **flat, view=view)


def read_run_insides(results: str | os.PathLike) -> tuple[list[RunInside], list[str]]:
    """The :class:`RunInside` records of ``<results>-inside.json`` and the commands that made them."""
    stored = _load(results, INSIDE_TAG)

    def build(row: dict[str, Any]) -> RunInside:
        if not isinstance(row.get("view"), dict):
            raise TypeError("no 'view' object")
        return RunInside(**{k: row[k] for k in (*_RUN_KEYS, *_INSIDE_SCALARS) if k in row},
                         view=InsideView.from_json(row["view"]))

    return _records(_file(results, f"{INSIDE_TAG}.json"), stored["runs"], build), list(stored["commands"])


def write_run_insides(results: str | os.PathLike, insides: Sequence[RunInside], commands: Sequence[str]) -> None:
    """Write ``<results>-inside.json`` (whole views) and ``.csv`` (one summary row per run), atomically."""
    _write(results, INSIDE_TAG, [_inside_row(i) for i in insides], commands, INSIDE_FIELDS)


# --- recipe comparisons: arms that differ in a few settings, several seeds each ------------------


@dataclass(frozen=True, kw_only=True)
class RecipeRun:
    """One training run of a recipe comparison (:func:`vitlab.training.recipes.read`), with its inside views.

    Attributes:
        name: the run's folder name under the comparison's folder.
        arm: the recipe it follows (the comparison's label for it, e.g. ``"CutMix 1.0"``).
        seed: its seed; config: its :class:`~vitlab.training.config.TrainConfig` fields (from ``model.json``).
        code_version: git commit it was trained with.
        metrics: its ``metrics.jsonl`` records, one per epoch.
        views: its :class:`InsideView` records, one per recorded epoch.
        lowest_std, lowest_low, lowest_high: spread over the probe images of the final model's
            lowest layer's most local head: standard deviation and 95% bootstrap interval, pixels.
    """

    name: str
    arm: str
    seed: int
    config: dict[str, Any]
    code_version: str
    metrics: list[dict[str, Any]]
    views: list[InsideView]
    lowest_std: float
    lowest_low: float
    lowest_high: float

    @property
    def test_accuracy(self) -> float:
        """Test accuracy of the final model (a fraction)."""
        return float(self.metrics[-1]["test_accuracy"])

    @property
    def epochs(self) -> list[int]:
        """The recorded epochs of its inside views."""
        return [v.epoch for v in self.views]

    def view_at(self, epoch: int) -> InsideView:
        """The inside view at ``epoch``, or the last recorded one before it."""
        earlier = [v for v in self.views if v.epoch <= epoch] or self.views[:1]
        return earlier[-1]

    def accuracy_at(self, epoch: int) -> float:
        """Test accuracy at the end of ``epoch`` (or the last epoch logged before it)."""
        earlier = [m for m in self.metrics if m["epoch"] <= epoch] or self.metrics[:1]
        return float(earlier[-1]["test_accuracy"])


@dataclass(frozen=True, kw_only=True)
class Recipes:
    """A comparison of training recipes (:func:`vitlab.training.recipes.collect` writes it, :func:`vitlab.training.recipes.read` reads).

    Attributes:
        arms: arm label -> its runs (one per seed), in the order the comparison names them.
        differs_in: each setting whose value differs between arms -> arm label -> its value
            (computed from the runs' configs, never declared).
        commands: the commands that trained the runs and collected them.
    """

    arms: dict[str, list[RecipeRun]]
    differs_in: dict[str, dict[str, Any]]
    commands: list[str]

    @property
    def runs(self) -> list[RecipeRun]:
        return [r for runs in self.arms.values() for r in runs]

    @property
    def epochs(self) -> list[int]:
        """Epochs recorded by every run: the ones a side-by-side view can show."""
        common = set(self.runs[0].epochs)
        for r in self.runs[1:]:
            common &= set(r.epochs)
        return sorted(common)
