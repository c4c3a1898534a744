"""Typed records of studies (sweep runs, probes, inside views, recipe comparisons) and spread over seeds."""
from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .io import parse_json, type_problem

#: The order figures and readouts give the model families: ViTs, hybrids, ResNets (others after them).
FAMILY_ORDER = {"vit": 0, "hybrid": 1, "resnet": 2}

T = TypeVar("T")
_K = TypeVar("_K", bound=Hashable)


def field_problem(record: Any) -> str | None:
    """The first field of the dataclass ``record`` (read from a file) whose value is not of its annotated type, as
    ``"field subset_size 'many': must be a whole number, not a str"`` (:func:`vitlab.io.type_problem`), or None."""
    hints = typing.get_type_hints(type(record))
    for f in dataclasses.fields(record):
        if problem := type_problem(getattr(record, f.name), hints[f.name]):
            return f"field {f.name} {problem}"
    return None


@dataclass(frozen=True, kw_only=True)
class RunOf:
    """What names one sweep run: its training record, its probes and its inside view all start with these fields."""
    model: str  # zoo name of the trained model
    family: str  # "vit", "hybrid" or "resnet"
    subset_size: int  # training images (a class-stratified CIFAR-10 subset)
    seed: int
    epochs: int
    batch_size: int
    init: str = ""  # "" from scratch, else "<objective>:<weights>" it was fine-tuned from, e.g. "mpp:vit_tiny_c10_mpp"

    @property
    def key(self) -> tuple:
        """What identifies a run: (model, subset_size, seed, epochs, batch_size, init)."""
        return (self.model, self.subset_size, self.seed, self.epochs, self.batch_size, self.init)

    @property
    def label(self) -> str:
        """How figures name the run's series: the model, and what it was fine-tuned from if anything."""
        return f"{self.model} ← {self.init}" if self.init else self.model


@dataclass(frozen=True, kw_only=True)
class RunRecord(RunOf):
    """One training run of a sweep: the run (:class:`RunOf`'s fields) and what its training measured."""
    batch_size: int = 0  # optional here, as it always was for a run record
    test_accuracy: float  # fraction of the 10,000 test images classified correctly
    train_flops: float = 0.0  # FLOPs of all training steps (forward + backward)
    params: int = 0
    wall_seconds: float = 0.0
    hardware: str = ""
    images_seen: int = 0  # steps x batch size
    flops_per_image: float = 0.0
    images_seen_total: int | None = None  # the weights' whole history: images_seen plus the init's (None: own)
    train_flops_total: float | None = None  # ... and train_flops plus the init's training FLOPs
    optimizer: str = ""
    lr: float = 0.0
    weight_decay: float = 0.0
    code_version: str = ""  # git commit of vitlab
    fewshot: dict[int, float] = field(default_factory=dict)  # shots per class -> mean few-shot probe accuracy

    def __post_init__(self) -> None:
        if self.images_seen_total is None and self.train_flops_total is None and not self.init:
            object.__setattr__(self, "images_seen_total", self.images_seen)  # from scratch: its own training
            object.__setattr__(self, "train_flops_total", self.train_flops)
        elif self.images_seen_total is None or self.train_flops_total is None:
            raise TypeError(f"run {self.label} needs images_seen_total and train_flops_total (its init's training "
                            "included, vitlab.training.sweep.init_history)")


@dataclass(frozen=True, kw_only=True)
class ProbeRecord:
    """One few-shot linear probe: one layer and pooling of a model, one draw of the shots."""
    model: str
    family: str  # "vit", "hybrid" or "resnet"
    layer: str  # module name (e.g. "blocks.3", "layer2") or "pre_logits" (what the head reads)
    depth: int  # index in features.representation_layers (pre_logits after the last)
    pooling: str  # "cls", "mean" (patch tokens), "gap" (a feature map) or "head" (the head's own pooling)
    shots: int  # training images per class
    seed: int  # draw of those images
    accuracy: float  # a fraction


@dataclass(frozen=True, kw_only=True)
class RunProbe(RunOf):
    """Few-shot probes of one run's final representation, as kept in ``<results>-fewshot.json``."""
    layer: str  # the representation probed (see ProbeRecord)
    pooling: str
    fewshot: dict[int, float]  # shots per class -> accuracy averaged over the probe's seeds
    probe_setting: dict[str, Any]  # e.g. {"shots": [1, 5], "seeds": 3, "test": 2000}


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


def group_spread(items: Iterable[T], key: Callable[[T], _K], value: Callable[[T], float]) -> dict[_K, Spread]:
    """The :class:`Spread` of ``value(item)`` per group of ``key(item)``, groups in order of first appearance."""
    groups: dict[_K, list[float]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(float(value(item)))
    return {k: spread(v) for k, v in groups.items()}


@dataclass(frozen=True, kw_only=True)
class InsideView:
    """What a ViT looks like inside at the end of one epoch: one line of a run's ``inside.jsonl`` (its keys)."""
    epoch: int  # epochs finished (1-based)
    step: int  # optimiser steps taken
    images: int  # probe images the attention statistics average over
    grid: tuple[int, int]  # (rows, cols) of patches
    patch_size: tuple[int, int]  # (height, width) in pixels
    num_prefix_tokens: int
    distance: list[list[float]]  # (layers, heads) mean attention distance, pixels, the paper's (renormalize=False)
    entropy: list[list[float]]  # (layers, heads) attention entropy over patch keys, nats
    uniform: float  # distance under uniform attention over all tokens, pixels
    position_distance: float  # PositionStructure.closeness of the position embeddings (the files' key)
    position_row_column: float  # PositionStructure.row_column
    mirror: float  # MirrorScore: mean similarity to the mirror position
    mirror_neighbour: float  # ... and to the neighbours
    filter_variance_first: float  # explained-variance ratio of the patch filters' first principal component
    filter_variance_k: float  # ... of the first filter_k together
    filter_k: int
    # Interventions (optional: views recorded before them load as they were), on the same probe images:
    head_ablation: list[list[float]] | None = None  # (layers, heads) accuracy drop, each head mean-ablated alone
    head_ablation_logit: list[list[float]] | None = None  # (layers, heads) ... drop in the true-class logit
    lens_accuracy: list[float] | None = None  # (layers + 1,) logit-lens top-1 accuracy: embedding, then each block

    @property
    def lowest_local(self) -> float:
        """The lowest layer's most local head: its smallest mean attention distance (pixels)."""
        return min(self.distance[0])

    @property
    def layer_means(self) -> list[float]:
        """Mean attention distance of each layer, averaged over its heads (pixels)."""
        return [sum(row) / len(row) for row in self.distance]

    def as_dict(self) -> dict[str, Any]:
        """The fields by name; optional fields left unset (None) are left out, so older files stay as they were."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json(self) -> str:
        """One JSON line (no newline): :meth:`as_dict`."""
        return json.dumps(self.as_dict())

    @classmethod
    def from_json(cls, line: str | dict[str, Any]) -> InsideView:
        """The record of one ``inside.jsonl`` line (or its parsed dict); TypeError on missing or unknown fields."""
        row = parse_json(line) if isinstance(line, str) else dict(line)
        if not isinstance(row, dict):
            raise TypeError(f"an inside view is a JSON object, got {type(row).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default is None}
        if not names - optional <= row.keys() <= names:
            raise TypeError(f"inside view fields differ: missing {sorted(names - optional - row.keys())}, "
                            f"unknown {sorted(row.keys() - names)}")
        return cls(**dict(row, grid=tuple(row["grid"]), patch_size=tuple(row["patch_size"])))


def check_one_grid(views: dict[str, InsideView]) -> None:
    """Refuse views of models with different patch grids: their distances and uniform lines differ."""
    if not views:
        raise ValueError("no inside views to compare")
    grids = {k: (tuple(v.grid), tuple(v.patch_size)) for k, v in views.items()}
    if len(set(grids.values())) > 1:
        raise ValueError(f"compare models of one patch grid; got {grids} (grid, patch size in pixels)")


@dataclass(frozen=True, kw_only=True)
class RunInside(RunOf):
    """The inside view of one sweep run's final model (:func:`vitlab.training.sweep.inside_runs`)."""
    test_accuracy: float  # copied from the run's record, so a figure needs one file
    code_version: str
    view: InsideView  # on the probe images, from the final weights
    lowest_std: float = 0.0  # view.lowest_local over the probe images: standard deviation, pixels
    lowest_low: float = 0.0  # ... and the 95% bootstrap interval of its mean
    lowest_high: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RecipeRun:
    """One training run of a recipe comparison (:func:`vitlab.training.recipes.read`), with its inside views."""
    name: str  # the run's folder name under the comparison's folder
    arm: str  # the comparison's label for its recipe, e.g. "CutMix 1.0"
    seed: int
    config: dict[str, Any]  # its TrainConfig fields (from model.json)
    code_version: str
    metrics: list[dict[str, Any]]  # its metrics.jsonl records, one per epoch
    views: list[InsideView]  # one per recorded epoch
    lowest_std: float  # as in RunInside, of the final model
    lowest_low: float
    lowest_high: float
    code_versions: tuple[str, ...] = ()  # every commit the run went through, in order; () in files before they did

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
        return ([v for v in self.views if v.epoch <= epoch] or self.views[:1])[-1]

    def accuracy_at(self, epoch: int) -> float:
        """Test accuracy at the end of ``epoch`` (or the last epoch logged before it)."""
        return float(([m for m in self.metrics if m["epoch"] <= epoch] or self.metrics[:1])[-1]["test_accuracy"])


@dataclass(frozen=True, kw_only=True)
class Recipes:
    """A comparison of training recipes (:func:`vitlab.training.recipes.collect` writes it, ``read`` reads it)."""
    arms: dict[str, list[RecipeRun]]  # arm label -> its runs (one per seed), in the comparison's order
    differs_in: dict[str, dict[str, Any]]  # setting that differs between arms -> arm label -> value (from configs)
    commands: list[str]  # the commands that trained the runs and collected them

    @property
    def runs(self) -> list[RecipeRun]:
        return [r for runs in self.arms.values() for r in runs]

    @property
    def epochs(self) -> list[int]:
        """Epochs recorded by every run: the ones a side-by-side view can show."""
        return sorted(set(self.runs[0].epochs).intersection(*(r.epochs for r in self.runs[1:])))


@dataclass(frozen=True, kw_only=True)
class AttributionScore:
    """One cell of an attribution scoreboard (:mod:`vitlab.analysis.scoreboard`): a method's score on a model, with
    its 95% bootstrap interval over the images (or mosaics) it is a mean of."""
    model: str
    method: str  # one of vitlab.analysis.saliency.METHODS, or "model" for the model's own accuracy
    score: str  # "deletion", "insertion", "chefer_positive", "chefer_negative", "sanity", "focus", "accuracy"
    removal: str  # "drop", "mean" or "blur" for deletion and insertion (Chefer's: "mean"); "" otherwise
    measure: str  # "probability" or "accuracy" (curves), "spearman" (sanity, every layer re-initialised), "share"
    mean: float
    low: float
    high: float
    images: int  # how many images (mosaics for focus) the mean is over
