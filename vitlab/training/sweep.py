"""ViT against the ResNet baseline as the training set grows (paper Fig. 3 and 5, small scale)."""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import signal
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from .. import data, result_files
from . import inside, mpp, zoo
from .config import CADENCE, MAX_SEED, ConfigError, TrainConfig, check_fields, command_line, from_args
from ..models import ARCHITECTURES, build_model, check_spec, load_model, weights_file
from ..models.sidecar import read_sidecar, sidecar_path
from ..analysis.distance import head_statistics, lowest_head
from ..records import RunInside, RunProbe, RunRecord
from .loop import train
from .objectives import evaluate, init_objective, objective_for
from .evaluators import FewshotEvaluator, InsideViewEvaluator
from .provenance import code_version
from .run_folder import MODEL, Interrupted
from ..analysis.representations import PRE_LOGITS

_Split = tuple[torch.Tensor, torch.Tensor]  #: images, uint8 (N, 3, 32, 32), and labels (N,)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A grid of runs: every model x subset size x seed, under one budget rule (:meth:`epochs_for`).

    Attributes:
        models: zoo entries to train, each with its own recipe.
        init: fine-tune every model from these weights (a zoo name or file, e.g. the masked-patch-prediction encoder
            ``vit_tiny_c10_mpp``) instead of training from scratch; its runs are told apart by their ``init``
            (``"mpp:vit_tiny_c10_mpp"``) in the results and in their folders' names.
        sizes: training images per run.
        seeds: one run per seed (the subset, initial weights and batch order).
        epochs: at least this many epochs per run.
        min_samples: and at least this many training images seen.
        batch_size: of every run.
        warmup_fraction: of each run's epochs spent in learning-rate warmup (none, and no warmup_epochs: 0.1).
        warmup_epochs: epochs of learning-rate warmup in every run, whatever its length, instead of warmup_fraction.
        monitor_size: class-stratified test images scored at each evaluation of a run.
        eval_every: each run scores its monitor_size images and checkpoints every this many epochs and after its last
            (``TrainConfig.eval_every``); the weights are the same for any value.
        precision: auto, bf16 or fp32.
        fewshot: shots per class for probes of each run's final representation (paper Fig. 4).
        fewshot_seeds: draws of the few-shot training images per probe.
        fewshot_test: class-stratified test images the probes are scored on.
        out: one training folder per run below this.
        results: writes <results>.csv and <results>.json.
    """
    models: tuple[str, ...] = ("vit_tiny_c10", "resnet_tiny_c10")
    init: str | None = None
    sizes: tuple[int, ...] = (1000, 5000, 10000, 25000, 50000)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 5
    min_samples: int = 50_000
    batch_size: int = 128
    warmup_fraction: float | None = None
    warmup_epochs: float | None = None
    monitor_size: int = 1000
    eval_every: int = dataclasses.field(default=1, metadata=CADENCE)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    fewshot: tuple[int, ...] = ()
    fewshot_seeds: int = 3
    fewshot_test: int = 2000
    out: str = "runs/sweep"
    results: str = "data/results/vit_vs_resnet"

    def __post_init__(self) -> None:
        check_fields(self)

    def epochs_for(self, size: int) -> int:
        """Epochs for a subset of ``size`` images: at least ``epochs``, and enough to see ``min_samples`` images."""
        return max(self.epochs, math.ceil(self.min_samples / size))

    def warmup_for(self, epochs: int) -> float:
        """Warmup epochs of a run of ``epochs``: ``warmup_epochs``, else ``warmup_fraction`` (0.1 unset) of them."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return (0.1 if self.warmup_fraction is None else self.warmup_fraction) * epochs

    def runs(self) -> list[Run]:
        """Every run of the grid, smallest subsets first so early results span the axis."""
        init = _init_label(self.init)
        return [Run(model=m, subset_size=n, seed=s, epochs=self.epochs_for(n), batch_size=self.batch_size, init=init)
                for s in self.seeds for n in sorted(self.sizes) for m in self.models]

    def command(self) -> str:
        """The ``python -m vitlab sweep`` command that runs this config."""
        return command_line("python -m vitlab sweep", self)


@dataclass(frozen=True, kw_only=True)
class Run:
    """One run of a sweep: a zoo entry trained on a subset under one seed."""
    model: str
    subset_size: int
    seed: int
    epochs: int
    batch_size: int
    init: str = ""  # "" from scratch, else _init_label(SweepConfig.init)


def _key(run: Run | RunRecord | RunProbe) -> tuple:
    return (run.model, run.subset_size, run.seed, run.epochs, run.batch_size, run.init)


def _init_label(spec: str | None) -> str:
    """What a run fine-tuned from ``spec`` records as ``init``: ``"<objective>:<zoo name or file stem>"``, or ``""``."""
    if spec is None:
        return ""
    path = Path(spec)
    return f"{init_objective(spec)}:{path.stem if path.is_file() else spec}"


def check(config: SweepConfig, train_images: int = 50_000) -> None:
    """Raise :class:`~vitlab.training.config.ConfigError` naming the bad setting (before any training starts)."""
    if unknown := [m for m in config.models if m not in zoo.ENTRIES]:
        raise ConfigError(f"unknown zoo models {unknown}; choose from {list(zoo.ENTRIES)}")
    if not config.models or not config.sizes or not config.seeds:
        raise ConfigError("a sweep needs at least one model, one subset size and one seed")
    if bad := [s for s in config.seeds if not 0 <= s <= MAX_SEED]:
        raise ConfigError(f"--seeds {' '.join(map(str, bad))}: must be 0..{MAX_SEED}")
    classes = len(data.CLASSES)
    if bad := [n for n in config.sizes if not classes <= n <= train_images]:
        raise ConfigError(f"subset sizes {bad} are outside {classes}..{train_images} (one image per class "
                          "at least, the training set at most)")
    if small := [n for n in config.sizes if n < config.batch_size]:
        raise ConfigError(f"subset sizes {small} are smaller than the batch of {config.batch_size}; "
                          "lower --batch-size or drop them")
    if config.init is not None:
        _check_init(config)
    if config.epochs < 1 or config.min_samples < 0 or not 0 <= (config.warmup_fraction or 0) < 1:
        raise ConfigError("epochs must be >= 1, min_samples >= 0 and warmup_fraction in [0, 1)")
    if config.warmup_epochs is not None and config.warmup_fraction is not None:
        raise ConfigError(f"--warmup-fraction {config.warmup_fraction} and --warmup-epochs {config.warmup_epochs}: "
                          "give one (a share of each run's epochs, or epochs in every run)")
    shortest = min(config.epochs_for(n) for n in config.sizes)
    if config.warmup_epochs is not None and not 0 <= config.warmup_epochs <= shortest:
        raise ConfigError(f"--warmup-epochs {config.warmup_epochs}: must be 0..{shortest} (the shortest run's epochs)")
    if type(config.eval_every) is not int or config.eval_every < 1:
        raise ConfigError(f"--eval-every {config.eval_every}: must be a whole number of epochs, 1 or more")
    if config.fewshot and (min(config.fewshot) < 1 or max(config.fewshot) * classes > min(config.sizes)
                           or config.fewshot_seeds < 1):
        raise ConfigError(f"few-shot probes need 1..{min(config.sizes) // classes} shots per class (the smallest "
                          f"subset) and at least one seed, got shots {list(config.fewshot)}, "
                          f"{config.fewshot_seeds} seeds")


def _check_init(config: SweepConfig) -> None:
    try:
        kind = check_spec(config.init)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"--init {config.init}: {err}") from None
    if kind != "file":
        raise ConfigError(f"--init {config.init} names no trained weights here (a zoo entry without a checkpoint, "
                          "or a timm name); pre-train one first (python -m vitlab pretrain) or give a weights file")
    wanted = load_model(config.init, device="cpu").vitlab_arch.get("zoo")
    if other := [m for m in config.models if zoo.entry(m).architecture != wanted]:
        raise ConfigError(f"--init {config.init} holds a {wanted}, which cannot start {other}; sweep only "
                          f"{wanted} models from it (run the other models from scratch in a sweep of their own)")


def train_flops_per_image(model: nn.Module, img_size: int = 32) -> float:
    """FLOPs of one training step per image of a classifier or :class:`~vitlab.training.mpp.MaskedPatchPrediction`."""
    model = copy.deepcopy(model).cpu().train()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    with FlopCounterMode(display=False) as counter:
        if isinstance(model, mpp.MaskedPatchPrediction):
            images = torch.zeros(2, 3, img_size, img_size, dtype=torch.uint8)
            loss = model.loss(images, torch.Generator().manual_seed(0))[0]
        else:
            loss = F.cross_entropy(model(torch.randn(2, 3, img_size, img_size)), torch.zeros(2, dtype=torch.long))
        loss.backward()
    return counter.get_total_flops() / 2


def init_history(init: str) -> tuple[int, float]:
    """Images seen and training FLOPs behind the weights of ``init`` (``"mpp:vit_tiny_c10_mpp"``), from sidecars."""
    return _history(init.partition(":")[2] or init, ())


@functools.cache
def _history(spec: str, after: tuple[str, ...]) -> tuple[int, float]:
    path = weights_file(spec)
    if path is None or not sidecar_path(path).is_file():
        raise FileNotFoundError(f"init {spec}: no weights file or zoo checkpoint with its sidecar (<weights>.json) "
                                "here, so its training cannot be counted; put them back (data/zoo/ for a zoo name), "
                                "or add images_seen_total and train_flops_total to its runs by hand")
    meta = read_sidecar(sidecar_path(path))
    if "step" not in meta.metrics or "batch_size" not in meta.config or spec in after:
        raise ConfigError(f"{sidecar_path(path)} does not say how its weights were trained ('step' in 'metrics', "
                          f"'batch_size' in 'config') or they start from themselves ({' -> '.join((*after, spec))}); "
                          "add what is missing to it")
    config = from_args(TrainConfig, meta.config)
    images = meta.metrics["step"] * config.batch_size
    trained = objective_for(config).prepare(build_model(meta.architecture))
    flops = images * train_flops_per_image(trained, config.img_size or ARCHITECTURES[config.model].img_size)
    before = _history(config.init, (*after, spec)) if config.init else (0, 0.0)
    return images + before[0], flops + before[1]


def _ordered(runs: list[RunRecord]) -> list[RunRecord]:
    return sorted(runs, key=lambda r: (r.family, r.model, r.subset_size, r.seed, r.epochs))


def _with(commands: list[str], command: str) -> list[str]:
    return commands if command in commands else [*commands, command]


def _run_dir(config: SweepConfig, run: Run | RunRecord) -> Path:
    start = f"-from-{run.init.replace(':', '-')}" if run.init else ""  # fine-tuned runs never share a folder
    return Path(config.out) / f"{run.model}-n{run.subset_size}-s{run.seed}-e{run.epochs}{start}"


def sweep(config: SweepConfig, device: str | torch.device | None = None,
          on_run: Callable[[RunRecord], None] | None = None, progress: bool = False) -> list[RunRecord]:
    """Run every missing run of ``config``; all records in the results file. ``on_run`` gets each new record."""
    check(config)
    before = init_history(config.init) if config.init else (0, 0.0)  # what the init had been trained with
    # Read the results first: a torn file stops here, before any data is loaded. Probes live in their own file.
    done = [dataclasses.replace(r, fewshot={}) for r in result_files.read_runs(config.results, init_history)]
    commands = _with(result_files.read_commands(config.results), config.command())
    train_set, test_set = data.cifar10("train"), data.cifar10("test")  # fails here without a dataset
    check(config, len(train_set[1]))
    finished = {_key(r) for r in done}
    todo = [run for run in config.runs() if _key(run) not in finished]
    flops: dict[str, float] = {}  # training FLOPs per image, counted once per model
    bar = tqdm(todo, desc="sweep", unit="run", disable=not todo)  # a bar over runs, not a printed record each
    trained = 0
    try:
        for run in bar:
            record = _train_run(config, run, test_set, device, progress, flops, before)
            done.append(record)
            result_files.write_runs(config.results, _ordered(done), commands)
            trained += 1
            bar.set_postfix_str(f"last: {run.model}, {run.subset_size:,} images, seed {run.seed}: "
                                f"{record.test_accuracy:.1%} in {record.wall_seconds:.0f} s")
            if on_run is not None:
                on_run(record)
        result_files.write_runs(config.results, _ordered(done), commands)
        inside_runs(config, progress=bool(todo))
        if config.fewshot:
            fewshot_runs(config, train_set, test_set)
    except KeyboardInterrupt as err:
        bar.close()
        raise _interrupted(err, config, todo, trained) from None
    return _ordered(result_files.read_runs(config.results, init_history))


def _interrupted(err: KeyboardInterrupt, config: SweepConfig, todo: list[Run], trained: int) -> Interrupted:
    """What a sweep stopped by ``err`` after ``trained`` of its ``todo`` runs says (one line, as :func:`train`)."""
    saved = f"the runs before it ({trained}) are saved in {config.results}.csv" if trained else "no run had finished"
    if trained < len(todo) and isinstance(err, Interrupted) and str(err):  # train() said where the run stopped
        run = todo[trained]
        return Interrupted(f"run {trained + 1} of {len(todo)} ({run.model}, {run.subset_size} images, seed "
                           f"{run.seed}) {err}; {saved}", err.signum)
    return Interrupted(f"interrupted ({signal.Signals(getattr(err, 'signum', signal.SIGINT)).name}) after {trained} "
                       f"of {len(todo)} runs, in {config.results}.csv; the same command goes on from there",
                       getattr(err, "signum", signal.SIGINT))


def _train_run(config: SweepConfig, run: Run, test_set: _Split, device: str | torch.device | None,
               progress: bool, flops: dict[str, float], before: tuple[int, float]) -> RunRecord:
    entry, test_x, test_y = zoo.entry(run.model), *test_set
    settings = zoo.train_config(
        run.model, subset_size=run.subset_size, seed=run.seed, epochs=run.epochs, batch_size=run.batch_size,
        warmup_epochs=config.warmup_for(run.epochs), precision=config.precision, eval_every=config.eval_every,
        eval_size=config.monitor_size if config.monitor_size < len(test_y) else None, init=config.init)
    result = train(settings, _run_dir(config, run), device=device, progress=progress)
    if run.model not in flops:
        flops[run.model] = train_flops_per_image(build_model({"zoo": entry.architecture}),
                                                 ARCHITECTURES[entry.architecture].img_size)
    seen = result.record["step"] * run.batch_size
    return RunRecord(
        model=run.model, family=entry.family, subset_size=run.subset_size, seed=run.seed, epochs=run.epochs,
        test_accuracy=evaluate(result.model, test_x, test_y), train_flops=flops[run.model] * seen,
        params=result.record["params"], wall_seconds=round(result.record["wall_seconds"], 1),
        hardware=result.record["hardware"], images_seen=seen, flops_per_image=flops[run.model],
        images_seen_total=seen + before[0], train_flops_total=flops[run.model] * seen + before[1],
        optimizer=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
        batch_size=run.batch_size, code_version=code_version(), init=run.init, fewshot={})


def fewshot_runs(config: SweepConfig, train_set: _Split | None = None, test_set: _Split | None = None,
                 progress: bool = True) -> list[RunProbe]:
    """Few-shot probes (paper Fig. 4) of what the head reads in every finished run, into ``<results>-fewshot.*``."""
    setting = dict(shots=list(config.fewshot), seeds=config.fewshot_seeds, test=config.fewshot_test)
    probes, commands = result_files.read_run_probes(config.results)  # a torn file stops here, before the data
    commands = _with(commands, config.command())
    skip = {_key(p) for p in probes if p.probe_setting == setting}
    wanted = {_key(run) for run in config.runs()}
    todo = [r for r in result_files.read_runs(config.results, init_history)
            if _key(r) in wanted and _key(r) not in skip and (_run_dir(config, r) / MODEL).is_file()]
    if not todo:
        return probes
    (train_x, train_y), (test_x, test_y) = train_set or data.cifar10("train"), test_set or data.cifar10("test")
    test_idx = data.stratified_subset(test_y, config.fewshot_test, 0)
    evaluator = FewshotEvaluator(train_x, train_y, test_x[test_idx], test_y[test_idx], shots=config.fewshot,
                                 seeds=tuple(range(config.fewshot_seeds)), layers=[PRE_LOGITS])
    for record in tqdm(todo, desc="few-shot probes", disable=not (progress and todo)):
        model = load_model(_run_dir(config, record) / MODEL, device="cpu")
        rows = evaluator.run(model, name=record.model, family=record.family)
        accuracy = {k: statistics.fmean(r.accuracy for r in rows if r.shots == k) for k in config.fewshot}
        probe = RunProbe(model=record.model, family=record.family, subset_size=record.subset_size, seed=record.seed,
                         epochs=record.epochs, batch_size=record.batch_size, init=record.init, layer=PRE_LOGITS,
                         pooling=rows[0].pooling, fewshot=accuracy, probe_setting=setting)
        probes = [p for p in probes if _key(p) != _key(record)] + [probe]
        # A probe of this run under another setting is superseded, not a second record of it.
        result_files.write_run_probes(config.results, probes, commands, replace={_key(record)})
    return probes


def inside_runs(config: SweepConfig, progress: bool = True) -> list[RunInside]:
    """Inside views of the final model of every finished ViT and hybrid run, into ``<results>-inside.*``."""
    views, commands = result_files.read_run_insides(config.results)  # a torn file stops here, before the data
    commands = _with(commands, config.command())
    have, wanted = {v.key for v in views}, {_key(run) for run in config.runs()}
    todo = [r for r in result_files.read_runs(config.results, init_history) if r.family != "resnet"
            and _key(r) in wanted and _key(r) not in have and (_run_dir(config, r) / MODEL).is_file()]
    if not todo:
        return views
    images = inside.probe_images()
    evaluator = InsideViewEvaluator(images)
    for record in tqdm(todo, desc="inside views", disable=not progress):
        model = load_model(_run_dir(config, record) / MODEL, device="cpu")
        stats = head_statistics(model, images)  # once: the view's means and the per-image spread
        view = evaluator.run(model, epoch=record.epochs, step=record.images_seen // record.batch_size, stats=stats)
        lowest = lowest_head(stats["distance_per_image"])  # its spread over the images
        views = [*views, RunInside(
            model=record.model, family=record.family, subset_size=record.subset_size, seed=record.seed,
            epochs=record.epochs, batch_size=record.batch_size, init=record.init, test_accuracy=record.test_accuracy,
            code_version=record.code_version, view=view, lowest_std=lowest.std, lowest_low=lowest.low,
            lowest_high=lowest.high)]
        result_files.write_run_insides(config.results, views, commands)
    return views
