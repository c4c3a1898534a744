"""Training and pre-training on CIFAR-10: :func:`train` around :func:`train_one_epoch`, as timm's ``train.py``."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .. import data
from .config import IMAGE_SIZE, MAX_SEED, TEST_IMAGES, TRAIN_IMAGES, ConfigError, TrainConfig
from .evaluators import InsideViewEvaluator
from .inside import PROBE_IMAGES, PROBE_SEED, inside_tensors, is_vit, probe_set, recorded_epochs
from .objectives import Objective, init_model, mixing, objective_for
from .run_folder import (MODEL, append_metrics, check_out, finished_run, interrupted,
                         load_checkpoint, lock_run, prepare_folder, read_metrics, record_inside, restore,
                         save_checkpoint, save_final, trim_inside, trim_metrics)
from .provenance import code_history, hardware, warn_changes
from .steps import augment, autocast_dtype, cpu_bf16_attention, epoch_order, lr_at, param_groups, randaugment
from ..models import ARCHITECTURES, build_model, set_input_size
from ..models.architectures import MAX_IMG_SIZE

log = logging.getLogger(__name__)  #: without ``progress``, runs report here (``python -m vitlab`` prints it)


@dataclass
class TrainResult:
    """The trained model (on the CPU) and the final metrics record."""
    model: nn.Module
    record: dict[str, Any]


@dataclass
class _Run:
    """The state of a run in progress: what the loop reads and advances."""
    config: TrainConfig
    out: Path
    objective: Objective
    model: nn.Module  # what trains, as the objective prepared it: evaluated, checkpointed and saved
    net: nn.Module  # what the step runs: the model, maybe wrapped in DDP and compiled
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the augmentation stream (and the objective's draws), on the device
    device: torch.device
    amp: torch.dtype | None
    rank: int
    world: int
    steps_per_epoch: int
    step: int = 0
    wall: float = 0.0  # training seconds so far, over all sessions of the run
    inside: InsideViewEvaluator | None = None  # on the probe images (rank 0, ViTs); None: no views recorded
    code_versions: list[str] = dataclasses.field(default_factory=list)  # every one the run went through, in order
    train_sha256: str = ""  # the content hash of the training data (data.content_sha256)
    epoch_sums: dict[str, Any] | None = None  # a mid-epoch checkpoint's running sums, until its epoch resumes

    @property
    def encoder(self) -> nn.Module:
        """The model inside what trains: the one the inside views look at and the final file holds."""
        return self.objective.encoder(self.model)

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def warmup(self) -> int:
        return int(self.config.warmup_epochs * self.steps_per_epoch)


def check(config: TrainConfig, out: str | os.PathLike, checkpoint_every: int = 0, prepare: bool = True) -> None:
    """Raise :class:`~vitlab.training.config.ConfigError` (or PermissionError for ``out``) before any work;
    ``prepare``: also create ``out`` and check that it can be written."""
    if config.model not in ARCHITECTURES:
        raise ConfigError(f"unknown zoo model {config.model!r}: choose an architecture of {list(ARCHITECTURES)}")
    objective = objective_for(config)
    objective.check()
    for name, value, ok, allowed in [*_rules(config, checkpoint_every), *objective.rules()]:
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be {allowed}")
    if config.subset_size is not None and config.batch_size > config.subset_size:
        raise ConfigError(f"batch size {config.batch_size} exceeds the subset of {config.subset_size} images; "
                          "lower --batch-size or raise --subset-size")
    if config.batch_size % (world := int(os.environ.get("WORLD_SIZE", "1"))):
        raise ConfigError(f"batch size {config.batch_size} must divide evenly over {world} processes")
    check_out(Path(out))
    if prepare:
        prepare_folder(Path(out))


def _rules(c: TrainConfig, checkpoint_every: int) -> list[tuple[str, Any, bool, str]]:
    arch = ARCHITECTURES[c.model]
    patch = getattr(arch, "patch_size", getattr(arch, "stride", None))  # a hybrid's tokens are stride apart; ResNets
    size_rule = (f"a positive multiple of {patch}, the patch size of {c.model}" if patch else "at least 1 pixel"
                 ) + f", and at most {MAX_IMG_SIZE} pixels"
    size_ok = c.img_size is None or (1 <= c.img_size <= MAX_IMG_SIZE and c.img_size % (patch or 1) == 0)
    # The default warmup stays allowed in shorter runs (their learning rate peaks below lr), as before.
    warmup_ok = 0 <= c.warmup_epochs <= c.epochs or c.warmup_epochs == TrainConfig.warmup_epochs
    return [
        ("seed", c.seed, 0 <= c.seed <= MAX_SEED, f"0..{MAX_SEED}"),
        ("epochs", c.epochs, c.epochs >= 1, "at least 1"),
        ("batch_size", c.batch_size, c.batch_size >= 1, "at least 1"),
        ("subset_size", c.subset_size, c.subset_size is None or 1 <= c.subset_size <= TRAIN_IMAGES,
         f"1..{TRAIN_IMAGES} training images, or none for all"),
        ("eval_size", c.eval_size, c.eval_size is None or 1 <= c.eval_size <= TEST_IMAGES,
         f"1..{TEST_IMAGES} test images, or none for all"),
        ("lr", c.lr, math.isfinite(c.lr) and c.lr >= 0, "0 or more (the peak learning rate; 0 keeps the weights)"),
        ("weight_decay", c.weight_decay, math.isfinite(c.weight_decay) and c.weight_decay >= 0, "0 or more"),
        ("warmup_epochs", c.warmup_epochs, warmup_ok, f"0..{c.epochs} (at most --epochs)"),
        ("label_smoothing", c.label_smoothing, 0 <= c.label_smoothing < 1, "at least 0 and below 1"),
        ("mixup", c.mixup, math.isfinite(c.mixup) and c.mixup >= 0, "0 (off) or a positive Beta alpha, e.g. 0.8"),
        ("cutmix", c.cutmix, math.isfinite(c.cutmix) and c.cutmix >= 0, "0 (off) or a positive Beta alpha, e.g. 1.0"),
        ("mix_prob", c.mix_prob, 0 <= c.mix_prob <= 1, "a probability, 0..1"),
        ("mix_switch_prob", c.mix_switch_prob, 0 <= c.mix_switch_prob <= 1, "a probability, 0..1"),
        # timm mixes each image with its mirror in the batch (x.flip(0)), so the pairs need an even batch.
        ("batch_size", c.batch_size, not mixing(c) or c.batch_size % 2 == 0,
         "even when --mixup or --cutmix is on (timm pairs each image with another of its batch)"),
        ("crop_padding", c.crop_padding, 0 <= c.crop_padding < IMAGE_SIZE,
         f"0..{IMAGE_SIZE - 1} pixels (reflection padding stays below the {IMAGE_SIZE}-pixel CIFAR image size)"),
        ("randaugment", c.randaugment, 0 <= c.randaugment <= 14, "0 (off) to 14 ops per image, e.g. 2"),
        ("randaugment_magnitude", c.randaugment_magnitude, 0 <= c.randaugment_magnitude <= 30, "0..30, e.g. 9"),
        ("img_size", c.img_size, size_ok, size_rule),
        ("eval_every", c.eval_every, type(c.eval_every) is int and c.eval_every >= 1,
         "a whole number of epochs, 1 or more"),
        ("checkpoint_every", checkpoint_every, checkpoint_every >= 0, "0 (evaluated epochs only) or more steps"),
    ]


def _data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train_x, train_y = data.cifar10("train")  # a missing dataset fails here, before any training
    test_x, test_y = data.cifar10("test")
    if config.subset_size is not None:
        subset = data.stratified_subset(train_y, config.subset_size, config.seed)
        train_x, train_y = train_x[subset], train_y[subset]
    if config.batch_size > len(train_x):
        raise ConfigError(f"batch size {config.batch_size} exceeds the {len(train_x)} training images")
    if config.eval_size is not None:
        idx = data.stratified_subset(test_y, config.eval_size, 0)
        test_x, test_y = test_x[idx], test_y[idx]
    return train_x, train_y, test_x, test_y


def _initial_model(config: TrainConfig) -> nn.Module:
    model = build_model({"zoo": config.model}) if config.init is None else init_model(config)
    if config.img_size is not None:
        set_input_size(model, config.img_size)
    return objective_for(config).prepare(model)


def _start(config: TrainConfig, out: Path, device: str | torch.device | None,
           progress: bool, inside: bool = True) -> tuple[_Run, tuple[torch.Tensor, ...]]:
    """The run, resumed from its checkpoint (read before the data: a bad one fails first), and its data."""
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(config.seed)
    model = _initial_model(config)
    state = load_checkpoint(out, config, model)
    train_x, train_y, test_x, test_y = _data(config)
    run = _setup(config, out, model, device, rank, world, len(train_x) // config.batch_size)
    run.train_sha256, run.code_versions = data.content_sha256(train_x, train_y), code_history([])
    if state is not None:
        run.step, run.wall = restore(state, run.opt, run.gen)
        run.code_versions, run.epoch_sums = code_history(state["code_versions"]), state.get("epoch_sums")
        if rank == 0:
            warn_changes(out, state, _data_record(run))
    if rank == 0:
        trim_metrics(out, run.step)
        trim_inside(out, run.step)
        if inside and is_vit(run.encoder):  # its own generator: the training streams are untouched
            run.inside = _inside_evaluator(config, device, train_x, train_y)
        _report(progress, f"{run.objective.what} {config.model}: {len(train_x)} images, {run.total} steps, {world} "
                f"process(es) on {hardware(device)}, "
                f"{'resuming at step ' + str(run.step) if run.step else 'from the start'}{run.objective.remark}")
    return run, (train_x.to(device), train_y.to(device), test_x, test_y)


def _inside_evaluator(config: TrainConfig, device: torch.device, train_x: torch.Tensor,
                      train_y: torch.Tensor) -> InsideViewEvaluator:
    """Inside views on the probe images; a classifier's also record interventions (head ablation, logit lens), with
    the mean ablation's means over the first class-balanced training images."""
    images, labels = probe_set()
    if config.objective != "classify":
        return InsideViewEvaluator(images.to(device))
    reference = train_x[data.stratified_order(train_y, PROBE_SEED)[:PROBE_IMAGES]]
    return InsideViewEvaluator(images.to(device), labels=labels, reference=reference.to(device))


def _setup(config: TrainConfig, out: Path, model: nn.Module, device: torch.device, rank: int, world: int,
           steps_per_epoch: int) -> _Run:
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if config.compile:
        net = torch.compile(net)
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda" or None)
    return _Run(config=config, out=out, objective=objective_for(config), model=model, net=net, opt=opt, device=device,
                gen=torch.Generator(device=device).manual_seed(config.seed + 1),
                amp=autocast_dtype(config.precision, device), rank=rank, world=world, steps_per_epoch=steps_per_epoch)


def train(config: TrainConfig, out: str | os.PathLike, *, device: str | torch.device | None = None,
          progress: bool = True, checkpoint_every: int = 0,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, inside: bool = True) -> TrainResult:
    """Train (or fine-tune, or pre-train) ``config.model`` on CIFAR-10 in ``out``; resumes, or returns a finished run.

    Args:
        device: default: the local rank's GPU when there is one, else the CPU.
        progress: print a start line and a bar per epoch; else report to :data:`log`.
        checkpoint_every: also checkpoint every this many steps (0: at evaluated epochs only, ``config.eval_every``).
        inside: record a ViT's inside views (:mod:`vitlab.training.inside`); the weights are the same either way.

    Raises:
        vitlab.training.run_folder.Interrupted: on Ctrl-C (KeyboardInterrupt, a notebook's kernel interrupt) or a
            signal raised as one, its message one line: the step it stopped at and the checkpoint the same call
            resumes from. Every file is whole: checkpoints are written atomically.
    """
    out = Path(out)
    check(config, out, checkpoint_every, prepare=False)
    # A finished run is given back without writing anything (no folder check, no lock): it may be on read-only media.
    if (done := _finished(config, out, progress)) is not None:
        return done
    prepare_folder(out)
    run = None
    try:
        with lock_run(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():  # torchrun rank 0
            if (done := _finished(config, out, progress)) is not None:  # finished by another process meanwhile
                return done
            run, tensors = _start(config, out, device, progress, inside)
            record: dict[str, Any] = (read_metrics(out) or [{}])[-1] if run.step else {}
            with cpu_bf16_attention(run.model, run.amp, run.device):
                record = _epochs(run, tensors, record, progress, checkpoint_every, on_epoch)
            return _finish(run, record)
    except KeyboardInterrupt as err:
        raise (interrupted(err, out, run.step, run.total) if run else interrupted(err, out)) from None


def _finished(config: TrainConfig, out: Path, progress: bool) -> TrainResult | None:
    """The finished run in ``out`` with ``config``, read without writing, or None (ConfigError: other settings)."""
    if (done := finished_run(out, config)) is None:
        return None
    _report(progress, f"{out} already finished with these settings (test accuracy "
            f"{done.metrics.get('test_accuracy')}); returning its model without training")
    return TrainResult(objective_for(config).load_trained(out / MODEL).eval(), done.metrics)


def _epochs(run: _Run, tensors: tuple[torch.Tensor, ...], record: dict[str, Any], progress: bool,
            checkpoint_every: int, on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = tensors
    while run.step < run.total:
        epoch = run.step // run.steps_per_epoch + 1  # 1-based: the epoch this pass ends
        stats = train_one_epoch(run, train_x, train_y, progress=progress, checkpoint_every=checkpoint_every)
        evaluated = epoch % run.config.eval_every == 0 or epoch == run.config.epochs  # draws no training randomness
        if evaluated:
            accuracy = run.objective.test_accuracy(run.model, test_x, test_y) if run.rank == 0 else float("nan")
            record = dict(epoch=epoch, step=run.step, loss=stats["loss"], train_accuracy=stats["train_accuracy"],
                          test_accuracy=accuracy, lr=run.opt.param_groups[0]["lr"],
                          images_per_second=stats["images_per_second"], wall_seconds=run.wall)
        if run.rank == 0 and evaluated:
            append_metrics(run.out, record)
            if not progress:
                log.info(json.dumps(record))
            if on_epoch is not None:
                on_epoch(record)
        if run.rank == 0 and run.inside is not None and epoch in recorded_epochs(run.config.epochs):
            view = run.inside.run(run.encoder, epoch=epoch, step=run.step)
            record_inside(run.out, view, inside_tensors(run.encoder, epoch))
        if evaluated:
            _save_checkpoint(run, epoch)
    return record


def train_one_epoch(run: _Run, images: torch.Tensor, labels: torch.Tensor, progress: bool = True,
                    checkpoint_every: int = 0) -> dict[str, float]:
    """Train from ``run.step`` to the end of its epoch on the whole training set (on the device); returns its stats."""
    config, bs = run.config, run.config.batch_size
    epoch, first = divmod(run.step, run.steps_per_epoch)
    order = epoch_order(len(images), config.seed, epoch, run.device)
    shard = slice(run.rank * bs // run.world, (run.rank + 1) * bs // run.world)
    run.net.train()
    started, seen, before = time.perf_counter(), 0, 0.0
    loss_sum = torch.zeros((), device=run.device)  # summed on the device: no host sync per step
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    sums, run.epoch_sums, done = run.epoch_sums, None, 0  # done: steps of this epoch before a resume, in the sums
    if sums is not None and first:  # resumed mid-epoch: the epoch's stats count its steps before the checkpoint too
        loss_sum, correct = sums["loss"].to(run.device), sums["correct"].to(run.device)
        seen, before, done = sums["seen"], sums["seconds"], first
    bar = tqdm(range(first, run.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not progress or run.rank != 0)
    with bar:  # closed (its line cleared) when the epoch is stopped, too: no bar left before the line that says so
        for b in bar:
            idx = order[b * bs : (b + 1) * bs]
            x, y = batch(run, images[idx], labels[idx])
            x, y = x[shard], y[shard]  # (B / world, 3, H, W), targets (B / world, ...)
            loss, hits, scored = _step(run, x, y)
            loss_sum += loss
            correct += hits
            seen += scored
            if not bar.disable and (b - first) % _PROGRESS_EVERY == 0:  # the only read-back inside the epoch
                bar.set_postfix(loss=f"{loss_sum.item() / (b - first + done + 1):.3f}")
            if checkpoint_every and run.step % checkpoint_every == 0 and run.step % run.steps_per_epoch:
                so_far = time.perf_counter() - started
                _save_checkpoint(run, run.step / run.steps_per_epoch, wall=run.wall + so_far,
                                 sums=dict(loss=loss_sum, correct=correct, seen=seen, seconds=before + so_far))
    loss_total, hit_total = loss_sum.item(), correct.item()  # waits for the epoch's last step
    elapsed = time.perf_counter() - started
    run.wall += elapsed
    steps = run.steps_per_epoch - first + done
    return dict(loss=loss_total / max(1, steps), train_accuracy=hit_total / max(1, seen),
                images_per_second=steps * bs / (before + elapsed))


_PROGRESS_EVERY = 20  #: steps between progress-bar updates, each reading the running loss back from the device


def batch(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs (B, 3, H, W) and targets (B, ...) of a whole batch (every process draws all, keeps its shard)."""
    c = run.config
    augmented = augment(images, c.crop_padding, c.flip, run.gen)  # (B, 3, H, W) uint8
    augmented = randaugment(augmented, c.randaugment, c.randaugment_magnitude, c.seed, run.step)
    return run.objective.inputs(run.model, augmented, labels, run.gen, run.step)


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimiser step on ``x`` (B, 3, H, W) against ``y``: loss and hits (device tensors), and the scored count."""
    for group in run.opt.param_groups:
        group["lr"] = lr_at(run.step, run.total, run.warmup, run.config.lr)
    with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
        loss, hits, scored = run.objective.loss(run.net, x, y)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.step += 1
    return loss.detach(), hits, scored


def _report(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
    else:
        log.info(message)


def _finish(run: _Run, record: dict[str, Any]) -> TrainResult:
    final = dict(record, hardware=hardware(run.device), processes=run.world, **run.objective.accuracy_of(),
                 precision=str(run.amp or torch.float32), params=sum(p.numel() for p in run.encoder.parameters()))
    if run.rank == 0:
        extra = run.objective.extra_state(run.model)
        save_final(run.out, run.encoder.cpu(), config=run.config, metrics=final, data=_data_record(run),
                   extra=extra, code_versions=run.code_versions)
    if run.world > 1:
        dist.barrier()
    return TrainResult(run.model.cpu().eval(), final)


def _data_record(run: _Run) -> dict[str, Any]:
    config = run.config
    return dict(dataset="cifar10", train_images=config.subset_size or TRAIN_IMAGES, subset_seed=config.seed,
                test_images=config.eval_size or TEST_IMAGES, train_sha256=run.train_sha256)


def _save_checkpoint(run: _Run, epoch: float, wall: float | None = None, sums: dict[str, Any] | None = None) -> None:
    """Checkpoint the run (rank 0 only); ``wall``: the training seconds, mid-epoch, and ``sums`` the epoch's so far."""
    if run.rank == 0:
        save_checkpoint(run.out, step=run.step, epoch=epoch, wall_seconds=run.wall if wall is None else wall,
                        model=run.model, optimizer=run.opt, generator=run.gen, config=run.config,
                        data=_data_record(run), code_versions=run.code_versions, epoch_sums=sums)
