"""Typed records of studies: sweep runs, probes, inside views, recipe comparisons, and spread over seeds.

Records travel between modules as dataclasses with explicit fields; :mod:`vitlab.result_files` reads
and writes the files they live in.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

#: The order figures and readouts give the model families: ViTs, hybrids, ResNets (others after them).
FAMILY_ORDER = {"vit": 0, "hybrid": 1, "resnet": 2}

T = TypeVar("T")


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
        return _run_label(self.model, self.init)


def _run_label(model: str, init: str) -> str:
    """``model``, or ``"model ← init"`` for a run fine-tuned from pre-trained weights."""
    return f"{model} ← {init}" if init else model




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
