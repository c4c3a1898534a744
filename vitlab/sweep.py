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
from collections.abc import Callable, Sequence
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
    fewshot: tuple[int, ...] = ()  # shots per class for probes of each run's final representation (paper Fig. 4)
    fewshot_seeds: int = 3  # draws of the few-shot training images per probe
    fewshot_test: int = 2000  # class-stratified test images the probes are scored on
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
    if config.fewshot and (min(config.fewshot) < 1 or max(config.fewshot) * classes > min(config.sizes)
                           or config.fewshot_seeds < 1):
        raise ValueError(f"few-shot probes need 1..{min(config.sizes) // classes} shots per class (the smallest "
                         f"subset) and at least one seed, got shots {list(config.fewshot)}, {config.fewshot_seeds} seeds")


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


def _file(results: str | os.PathLike, suffix: str) -> Path:
    """``<results><suffix>``; a ``.csv`` or ``.json`` ending on ``results`` itself is dropped first."""
    base = str(results)
    for ending in (".csv", ".json"):
        base = base.removesuffix(ending)
    return Path(base + suffix)


def read_results(results: str | os.PathLike) -> list[dict[str, Any]]:
    """The run records stored at ``<results>.json`` (empty if there is none yet).

    Runs that were probed (``<results>-fewshot.json``) carry ``fewshot_<k>`` fields: the
    mean few-shot accuracy of their final representation with k images per class.
    """
    path = _file(results, ".json")
    records = json.loads(path.read_text())["runs"] if path.is_file() else []
    probes = _file(results, "-fewshot.json")
    if probes.is_file():
        found = {_key(p): p for p in json.loads(probes.read_text())["runs"]}
        for r in records:
            probe = found.get(_key(r), {})
            r.update({f"fewshot_{k}": probe[f"fewshot_{k}"] for k in fewshot_shots([probe])})
    return records


def fewshot_shots(records: list[dict[str, Any]]) -> list[int]:
    """The shots k of the ``fewshot_<k>`` fields found in ``records``, ascending."""
    return sorted({int(k[8:]) for r in records for k in r if k.startswith("fewshot_") and k[8:].isdigit()})


def _ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["family"], r["model"], r["subset_size"], r["seed"], r["epochs"]))


def write_results(results: str | os.PathLike, records: list[dict[str, Any]], commands: list[str]) -> None:
    """Write ``<results>.json`` (records and the commands that made them) and ``<results>.csv``."""
    _write(results, "", records, commands, FIELDS)


def _write(results: str | os.PathLike, tag: str, records: list[dict[str, Any]], commands: list[str],
           fields: Sequence[str]) -> None:
    _file(results, ".json").parent.mkdir(parents=True, exist_ok=True)
    records = _ordered(records)
    text = json.dumps(dict(commands=commands, fields=list(fields), runs=records), indent=1) + "\n"
    atomic_write(_file(results, f"{tag}.json"), lambda tmp: tmp.write_text(text))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write(_file(results, f"{tag}.csv"), lambda tmp: tmp.write_text(table.getvalue()))


def command_for(config: SweepConfig) -> str:
    """The ``python -m vitlab sweep`` command line that runs ``config``."""
    parts = ["python -m vitlab sweep"]
    for field in dataclasses.fields(SweepConfig):
        value = getattr(config, field.name)
        if value == ():
            continue  # an empty list is the default, and argparse cannot take it as a flag
        flag = "--" + field.name.replace("_", "-")
        parts.append(f"{flag} {' '.join(map(str, value))}" if isinstance(value, tuple) else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def sweep(config: SweepConfig, device: str | torch.device | None = None,
          on_run: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Run every missing run of ``config``; returns all records in the results file, ordered
    by family, model, subset size and seed.

    ``on_run`` is called with each new record (e.g. to redraw a notebook figure). With
    ``config.fewshot`` set, every finished run is then probed (:func:`fewshot_runs`).
    """
    train_x, _ = data.cifar10("train")  # a missing dataset fails here, before any training
    check(config, len(train_x))
    test_x, test_y = data.cifar10("test")
    # Probe results live in their own file (fewshot_runs), not among the training records.
    records = [{k: v for k, v in r.items() if not k.startswith("fewshot_")} for r in read_results(config.results)]
    commands = _commands(config.results, "")
    command = command_for(config)
    if command not in commands:
        commands.append(command)
    done = {_key(r) for r in records}
    per_model: dict[str, float] = {}  # training FLOPs per image, counted once per model
    for run in config.runs():
        family = ZOO[run["model"]].family
        recipe = RECIPES[family]
        if _key(dict(run, batch_size=config.batch_size)) in done:
            continue
        train_config = TrainConfig(
            model=run["model"], subset_size=run["subset_size"], seed=run["seed"], epochs=run["epochs"],
            batch_size=config.batch_size, warmup_epochs=config.warmup_fraction * run["epochs"],
            precision=config.precision, eval_size=config.monitor_size if config.monitor_size < len(test_y) else None,
            progress=progress, out=str(_run_dir(config, run)), **recipe,
        )
        result = train(train_config, device=device)
        if run["model"] not in per_model:
            per_model[run["model"]] = train_flops_per_image(build_model({"zoo": run["model"]}), ZOO[run["model"]].img_size)
        per_image = per_model[run["model"]]
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
    if config.fewshot:
        fewshot_runs(config)
    return _ordered(read_results(config.results))


def _commands(results: str | os.PathLike, tag: str) -> list[str]:
    path = _file(results, f"{tag}.json")
    return json.loads(path.read_text())["commands"] if path.is_file() else []


def _run_dir(config: SweepConfig, run: dict[str, Any]) -> Path:
    return Path(config.out) / f"{run['model']}-n{run['subset_size']}-s{run['seed']}-e{run['epochs']}"


def fewshot_runs(config: SweepConfig) -> list[dict[str, Any]]:
    """Few-shot probes of the final representation of every finished run of ``config``.

    The representation is what the classifier head reads (the class token after the last
    block for a token-pooled ViT, else the mean patch token; the pooled last stage for a
    ResNet). For each run and each k in ``config.fewshot``, ``fewshot_<k>`` is the mean
    accuracy over ``config.fewshot_seeds`` draws of the training shots (paper Fig. 4, where
    the few-shot accuracy is plotted against the pre-training set size). Results go to
    ``<results>-fewshot.{json,csv}``; runs probed with the same settings are skipped.
    """
    from .capture import representation_layers
    from .compare import fewshot_probes
    from .models import load_model

    setting = dict(shots=list(config.fewshot), seeds=config.fewshot_seeds, test=config.fewshot_test)
    path = _file(config.results, "-fewshot.json")
    done = json.loads(path.read_text())["runs"] if path.is_file() else []
    probed = {_key(p) for p in done if p["probe_setting"] == setting}
    commands = _commands(config.results, "-fewshot")
    if command_for(config) not in commands:
        commands.append(command_for(config))
    wanted = {_key(dict(run, batch_size=config.batch_size)) for run in config.runs()}
    for record in read_results(config.results):
        key = _key(record)
        weights = _run_dir(config, record) / "model.safetensors"
        if key not in wanted or key in probed or not weights.is_file():
            continue
        model = load_model(weights, device="cpu")
        last = representation_layers(model)[-1]
        token_pooled = getattr(model, "global_pool", None) == "token" and getattr(model, "num_prefix_tokens", 0)
        rows = fewshot_probes(model, config.fewshot, tuple(range(config.fewshot_seeds)), config.fewshot_test,
                              name=record["model"], layers=[last])
        pooling = "cls" if token_pooled else ("mean" if any(r["pooling"] == "mean" for r in rows) else "gap")
        entry = {k: record[k] for k in ("model", "family", "subset_size", "seed", "epochs", "batch_size")}
        for k in config.fewshot:
            accs = [r["accuracy"] for r in rows if r["shots"] == k and r["pooling"] == pooling]
            entry[f"fewshot_{k}"] = sum(accs) / len(accs)
        entry.update(layer=last, pooling=pooling, probe_setting=setting)
        done = [p for p in done if _key(p) != key] + [entry]
        probed.add(key)
        _write(config.results, "-fewshot", done, commands,
               ["model", "family", "subset_size", "seed", "epochs", "layer", "pooling",
                *(f"fewshot_{k}" for k in fewshot_shots(done))])
        print(json.dumps(entry), flush=True)
    return done

