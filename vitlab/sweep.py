"""ViT against the ResNet baseline as the training set grows (paper Fig. 3 and 5, small scale).

:func:`sweep` trains every model of a :class:`SweepConfig` on class-stratified CIFAR-10
subsets of each size and seed, with one budget rule for all models, and keeps one record
per run in ``<results>.csv`` and ``<results>.json``: model, family, subset size, seed,
epochs, test accuracy on all 10,000 test images, training FLOPs counted by
``torch.utils.flop_counter``, parameters, wall seconds and hardware.

Each run trains in its own folder under ``out`` through :func:`vitlab.train.train`, so an
interrupted sweep resumes inside the run it was in; runs already in the results file are
skipped. Results are rewritten atomically after every run.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import data, settings
from .io import atomic_write
from .models import ZOO, build_model
from .train import TrainConfig, _code_version, evaluate, train

#: Optimiser settings per family: those the zoo checkpoints were trained with.
RECIPES: dict[str, dict[str, Any]] = {
    "vit": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05),
    "resnet": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4),
}

#: The committed CPU sweep (``<RESULTS>.csv`` and ``<RESULTS>.json``).
RESULTS = settings.PROJECT_ROOT / "data" / "results" / "vit_vs_resnet"

#: The columns of the results table, in order.
FIELDS = ("model", "family", "subset_size", "seed", "epochs", "test_accuracy", "train_flops", "params",
          "wall_seconds", "hardware", "images_seen", "flops_per_image", "optimizer", "lr", "weight_decay",
          "batch_size", "code_version")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A grid of runs: every model x subset size x seed, under one budget rule.

    The budget rule (:meth:`epochs_for`) gives every model the same number of epochs on
    a subset: at least ``epochs``, and more on small subsets so that every run sees at
    least ``min_samples`` training images (a 1,000-image subset is not trained for 5
    steps). Both families therefore see exactly the same images, the same number of
    times; their FLOPs differ only by their cost per image.
    """

    models: tuple[str, ...] = ("vit_tiny_c10", "resnet_tiny_c10")
    sizes: tuple[int, ...] = (1000, 5000, 10000, 25000, 50000)  # training images per run
    seeds: tuple[int, ...] = (0,)
    epochs: int = 5  # at least this many epochs per run
    min_samples: int = 50_000  # and at least this many training images seen
    batch_size: int = 128
    warmup_fraction: float = 0.1  # of each run's epochs
    monitor_size: int = 1000  # class-stratified test images scored after every epoch
    precision: str = "auto"
    out: str = "runs/sweep"  # one training folder per run below this
    results: str = "data/results/vit_vs_resnet"  # writes <results>.csv and <results>.json

    def epochs_for(self, size: int) -> int:
        """Epochs for a subset of ``size`` images under the budget rule."""
        return max(self.epochs, math.ceil(self.min_samples / size))

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the grid, smallest subsets first so early results span the axis."""
        return [dict(model=m, subset_size=n, seed=s, epochs=self.epochs_for(n))
                for s in self.seeds for n in sorted(self.sizes) for m in self.models]


def check(config: SweepConfig, train_images: int = 50_000) -> None:
    """Raise ValueError naming the bad setting (before any training starts)."""
    unknown = [m for m in config.models if m not in ZOO]
    if unknown:
        raise ValueError(f"unknown zoo models {unknown}; choose from {list(ZOO)}")
    if not config.models or not config.sizes or not config.seeds:
        raise ValueError("a sweep needs at least one model, one subset size and one seed")
    classes = len(data.CLASSES)
    bad = [n for n in config.sizes if not classes <= n <= train_images]
    if bad:
        raise ValueError(f"subset sizes {bad} are outside {classes}..{train_images} (one image per class "
                         "at least, the training set at most)")
    small = [n for n in config.sizes if n < config.batch_size]
    if small:
        raise ValueError(f"subset sizes {small} are smaller than the batch of {config.batch_size}; "
                         "lower --batch-size or drop them")
    if config.epochs < 1 or config.min_samples < 0 or not 0 <= config.warmup_fraction < 1:
        raise ValueError("epochs must be >= 1, min_samples >= 0 and warmup_fraction in [0, 1)")


def train_flops_per_image(model: nn.Module, img_size: int = 32) -> float:
    """FLOPs of one training step (forward and backward) per image, counted by PyTorch.

    Counted on a copy with explicit attention (``fused_attn=False``): the flop counter
    does not see inside the CPU's fused attention kernel. Only matrix products and
    convolutions count, as is usual; the optimiser's elementwise work is not included.
    """
    model = copy.deepcopy(model).cpu().train()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    x = torch.randn(2, 3, img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def _key(record: dict[str, Any]) -> tuple:
    return tuple(record[k] for k in ("model", "subset_size", "seed", "epochs", "batch_size"))


def read_results(results: str | os.PathLike) -> list[dict[str, Any]]:
    """The run records stored at ``<results>.json`` (empty if there is none yet)."""
    path = Path(results).with_suffix(".json")
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def _ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["family"], r["model"], r["subset_size"], r["seed"], r["epochs"]))


def write_results(results: str | os.PathLike, records: list[dict[str, Any]], commands: list[str]) -> None:
    """Write ``<results>.json`` (records and the commands that made them) and ``<results>.csv``."""
    base = Path(results)
    base.parent.mkdir(parents=True, exist_ok=True)
    records = _ordered(records)
    text = json.dumps(dict(commands=commands, fields=list(FIELDS), runs=records), indent=1) + "\n"
    atomic_write(base.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write(base.with_suffix(".csv"), lambda tmp: tmp.write_text(table.getvalue()))


def command_for(config: SweepConfig) -> str:
    """The ``python -m vitlab sweep`` command line that runs ``config``."""
    parts = ["python -m vitlab sweep"]
    for field in dataclasses.fields(SweepConfig):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        parts.append(f"{flag} {' '.join(map(str, value))}" if isinstance(value, tuple) else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def sweep(config: SweepConfig, device: str | torch.device | None = None,
          on_run: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Run every missing run of ``config``; returns all records in the results file, ordered
    by family, model, subset size and seed.

    ``on_run`` is called with each new record (e.g. to redraw a notebook figure).
    """
    train_x, _ = data.cifar10("train")  # a missing dataset fails here, before any training
    check(config, len(train_x))
    test_x, test_y = data.cifar10("test")
    records = read_results(config.results)
    commands = json.loads(Path(config.results).with_suffix(".json").read_text())["commands"] \
        if Path(config.results).with_suffix(".json").is_file() else []
    command = command_for(config)
    if command not in commands:
        commands.append(command)
    done = {_key(r) for r in records}
    for run in config.runs():
        family = ZOO[run["model"]].family
        recipe = RECIPES[family]
        if _key(dict(run, batch_size=config.batch_size)) in done:
            continue
        name = f"{run['model']}-n{run['subset_size']}-s{run['seed']}-e{run['epochs']}"
        train_config = TrainConfig(
            model=run["model"], subset_size=run["subset_size"], seed=run["seed"], epochs=run["epochs"],
            batch_size=config.batch_size, warmup_epochs=config.warmup_fraction * run["epochs"],
            precision=config.precision, eval_size=config.monitor_size if config.monitor_size < len(test_y) else None,
            progress=progress, out=str(Path(config.out) / name), **recipe,
        )
        result = train(train_config, device=device)
        per_image = train_flops_per_image(build_model({"zoo": run["model"]}), ZOO[run["model"]].img_size)
        seen = result.record["step"] * config.batch_size
        record = dict(
            run, family=family, test_accuracy=evaluate(result.model, test_x, test_y),
            train_flops=per_image * seen, params=result.record["params"],
            wall_seconds=round(result.record["wall_seconds"], 1), hardware=result.record["hardware"],
            images_seen=seen, flops_per_image=per_image, batch_size=config.batch_size,
            code_version=_code_version(), **recipe,
        )
        records.append(record)
        done.add(_key(record))
        write_results(config.results, records, commands)
        print(json.dumps(record), flush=True)
        if on_run is not None:
            on_run(record)
    write_results(config.results, records, commands)
    return _ordered(records)

