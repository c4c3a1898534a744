"""Supervised training, fine-tuning and self-supervised pre-training of zoo architectures on CIFAR-10.

:func:`train` is a short setup around :func:`train_one_epoch` and :func:`evaluate`, as in
timm's ``train.py``. :class:`TrainConfig` holds a run's settings only; where the run lives
(``out``) and how it reports are arguments, so resuming compares settings alone. The data
stays on the device as uint8 and is augmented in whole batches. Under ``torchrun`` the
same function trains data-parallel (DDP; NCCL on GPUs, gloo on CPUs). A run started again
in ``<out>`` with the same settings continues from its last checkpoint
(:mod:`vitlab.training.run_folder`) and ends with the weights of a run that was never interrupted;
a finished one is given back untouched. Settings out of range, a folder in use or holding
another run are refused with one line before any data is read. A ViT's inside views (the
paper's Fig. 7 numbers and tensors on a fixed probe set, :mod:`vitlab.training.inside`) are recorded
at the end of each epoch, at most 30 per run. Mixup and CutMix are timm's
(:class:`timm.data.Mixup` on whole batches, soft targets); with them on, the train accuracy
is counted against each mixed image's dominant label. The step loop never waits for the
device: losses and hit counts stay device tensors, read once per epoch and at progress-bar
refreshes. With ``objective="mpp"`` the same loop pre-trains a ViT without labels by the
paper's masked patch prediction (:mod:`vitlab.training.mpp`): the accuracies it logs are then the
share of corrupted patches whose 3-bit colour is predicted right, and the final file is the
plain ViT with the objective's parameters under ``mpp.*`` keys.
"""
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
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from tqdm.auto import tqdm

from .. import data
from . import inside as inside_views
from . import mpp
# code_version, hardware and read_metrics are re-exported: train.read_metrics(out) keeps working.
from .run_folder import append_metrics, code_version, finished_run, hardware, load_checkpoint, lock_run, prepare_folder, read_metrics, record_inside, restore, save_checkpoint, save_final, trim_inside, trim_metrics
from .config import ConfigError, check_choices
from ..analysis.capture import restoring
from ..models import ARCHITECTURES, build_model, load_model, preprocess, set_input_size, weights_file
from ..models.sidecar import read_sidecar, sidecar_path
from ..models.weights import WeightsFileError

#: Without ``progress``, runs report here (``python -m vitlab`` prints it; notebooks stay quiet).
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train and how: the settings of a run. Sizes are in images, ``img_size`` in pixels.

    Attributes:
        model: architecture to build (a key of ``vitlab.models.ARCHITECTURES``).
        init: fine-tune: start from these weights (any load_model spec). Weights pre-trained
            without labels (``objective="mpp"``) get a new classifier head.
        objective: classify (supervised, with labels), or mpp (masked patch prediction
            without labels, a ViT only: ``python -m vitlab pretrain``).
        img_size: fine-tune at this resolution; ViT position embeddings are resampled in 2-D.
        subset_size: class-stratified training subset; None: all 50,000 images.
        seed: seeds the subset, the initial weights, the batch order and the augmentation.
        epochs: passes over the training images.
        batch_size: global batch, split across processes under torchrun.
        optimizer: adamw, or sgd (momentum 0.9, Nesterov).
        lr: peak learning rate, after a linear warmup, before a cosine decay to zero.
        weight_decay: decoupled weight decay of weights (not of biases, norms, embeddings).
        warmup_epochs: epochs of linear learning-rate warmup, at most ``epochs`` (the default 2
            is kept in shorter runs, whose learning rate then peaks below ``lr``).
        label_smoothing: of the cross-entropy loss (folded into the soft targets under mixing).
        mixup: alpha of mixup's Beta(alpha, alpha) mixing weight; 0: off (timm's ``mixup_alpha``).
        cutmix: alpha of CutMix's Beta(alpha, alpha) box area; 0: off (timm's ``cutmix_alpha``).
        mix_prob: chance that a batch is mixed at all, when mixup or cutmix is on (timm's ``prob``).
        mix_switch_prob: with both on, chance that a mixed batch uses CutMix rather than mixup
            (timm's ``switch_prob``).
        crop_padding: pixels of reflection padding for random crops.
        flip: random horizontal flips.
        precision: auto (bf16 on GPUs, fp32 on CPUs), bf16 or fp32.
        compile: torch.compile the model (GPU).
        eval_size: class-stratified test subset scored after every epoch; None: all 10,000.
    """

    model: str = "vit_tiny_c10"
    init: str | None = None
    objective: Literal["classify", "mpp"] = "classify"
    img_size: int | None = None
    subset_size: int | None = None
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    crop_padding: int = 4
    flip: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    eval_size: int | None = None

    def __post_init__(self) -> None:
        check_choices(self)


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
    model: nn.Module  # the bare model: evaluated, checkpointed and saved
    net: nn.Module  # what the step runs: the model, maybe wrapped in DDP and compiled
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the augmentation stream, on the device
    mixup: Mixup | None  # timm's batch mixup/CutMix; None: plain labels
    device: torch.device
    amp: torch.dtype | None
    rank: int
    world: int
    steps_per_epoch: int
    step: int = 0
    wall: float = 0.0  # training seconds so far, over all sessions of the run
    probe: torch.Tensor | None = None  # uint8 probe images of the inside views (rank 0, ViTs); None: none recorded

    @property
    def analysed(self) -> nn.Module:
        """The model the inside views look at: the ViT itself, or the encoder being pre-trained."""
        return self.model.encoder if isinstance(self.model, mpp.MaskedPatchPrediction) else self.model

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def warmup(self) -> int:
        return int(self.config.warmup_epochs * self.steps_per_epoch)


# --- pieces ------------------------------------------------------------------------


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``"auto"`` uses bf16 only on GPUs that support it. On a CPU bf16 pays only where the
    CPU has native bf16 matmuls; on this project's (4.25x the fp32 matmul peak) ``"bf16"``
    trains ``vit_tiny_c10`` 2.39x faster than fp32, with the unfused attention of
    :func:`cpu_bf16_attention` (``benchmarks/train_step.py``), so ask for it by name.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflection padding, and random horizontal flip, batched.

    ``images`` is (B, C, H, W) of any dtype; returns the same shape. Offsets and flips
    are drawn from ``generator`` (on the images' device) so runs are reproducible.
    """
    b, c, h, w = images.shape
    dev = images.device
    if padding:
        padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=dev)[:, None, None, None]
        chans = torch.arange(c, device=dev)[None, :, None, None]
        images = padded[batch, chans, rows, cols]  # (B, C, H, W)
    if flip:
        mirror = torch.rand(b, generator=generator, device=dev) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups: weights decay; what the model exempts and 1-D parameters do not.

    The exemptions are read from the model, as timm does: the names its
    ``no_weight_decay()`` returns (a ViT's ``cls_token`` and ``pos_embed``) and every
    parameter with at most one dimension (biases, norm scales and shifts).
    """
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, rest = [], []
    for name, param in model.named_parameters():
        (rest if param.ndim <= 1 or name in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) of ``model`` on uint8 ``images`` (N, 3, H, W)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    for i in range(0, len(images), batch_size):
        logits = model(preprocess(model, images[i : i + batch_size]))  # (B, classes)
        correct = correct.to(logits.device) + (logits.argmax(-1) == labels[i : i + batch_size].to(logits.device)).sum()
    return correct.item() / len(images)  # one read-back for the whole set


# --- setup -------------------------------------------------------------------------

#: CIFAR-10's training and test images, and their side in pixels: the bounds of the size settings.
TRAIN_IMAGES, TEST_IMAGES, IMAGE_SIZE = 50_000, 10_000, 32


def check(config: TrainConfig, out: str | os.PathLike, checkpoint_every: int = 0) -> None:
    """Raise :class:`~vitlab.training.config.ConfigError` (or PermissionError for ``out``) before any work.

    Each setting out of range gets one line naming its flag, the value and the range.
    """
    if config.model not in ARCHITECTURES:
        raise ConfigError(f"unknown zoo model {config.model!r}: choose an architecture of {list(ARCHITECTURES)}")
    if config.objective == "mpp" and ARCHITECTURES[config.model].family != "vit":
        raise ConfigError(f"--objective mpp (masked patch prediction) pre-trains a ViT, and {config.model} is a "
                          f"{ARCHITECTURES[config.model].family}; choose a ViT architecture")
    problem = _out_of_range(config, checkpoint_every)
    if problem is not None:
        raise ConfigError(problem)
    if config.subset_size is not None and config.batch_size > config.subset_size:
        raise ConfigError(f"batch size {config.batch_size} exceeds the subset of {config.subset_size} images; "
                          "lower --batch-size or raise --subset-size")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world:
        raise ConfigError(f"batch size {config.batch_size} must divide evenly over {world} processes")
    prepare_folder(Path(out))


def _out_of_range(config: TrainConfig, checkpoint_every: int) -> str | None:
    """The first setting outside its range, as ``"--flag value: must be ..."``; None when all fit."""
    c = config
    arch = ARCHITECTURES[c.model]
    patch = getattr(arch, "patch_size", getattr(arch, "stride", None))  # a hybrid's tokens are stride apart; ResNets
    size_rule = f"a positive multiple of {patch}, the patch size of {c.model}" if patch else "at least 1 pixel"
    # The default warmup stays allowed in shorter runs (their learning rate peaks below lr), as before.
    warmup_ok = 0 <= c.warmup_epochs <= c.epochs or c.warmup_epochs == TrainConfig.warmup_epochs
    rules = [
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
        ("img_size", c.img_size, c.img_size is None or (c.img_size >= 1 and c.img_size % (patch or 1) == 0), size_rule),
        ("checkpoint_every", checkpoint_every, checkpoint_every >= 0, "0 (epoch ends only) or more steps"),
        # Masked patch prediction reads no labels: label smoothing and mixing have nothing to act on.
        ("label_smoothing", c.label_smoothing, c.objective != "mpp" or c.label_smoothing == 0,
         "0 with --objective mpp (pre-training uses no labels)"),
        ("img_size", c.img_size, c.objective != "mpp" or c.img_size in (None, IMAGE_SIZE),
         f"none with --objective mpp (colour targets are taken at CIFAR's {IMAGE_SIZE} pixels)"),
        ("mixup", c.mixup, c.objective != "mpp" or c.mixup == 0, "0 with --objective mpp (no labels to mix)"),
        ("cutmix", c.cutmix, c.objective != "mpp" or c.cutmix == 0, "0 with --objective mpp (no labels to mix)"),
    ]
    for name, value, ok, allowed in rules:
        if not ok:
            return f"--{name.replace('_', '-')} {value}: must be {allowed}"
    return None


def mixing(config: TrainConfig) -> bool:
    """Whether ``config`` mixes images (mixup or CutMix on)."""
    return config.mixup > 0 or config.cutmix > 0


def mixer(config: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's :class:`~timm.data.Mixup` for ``config`` in batch mode (one draw per batch); None when off."""
    if not mixing(config):
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mix_prob,
                 switch_prob=config.mix_switch_prob, mode="batch", label_smoothing=config.label_smoothing,
                 num_classes=num_classes)


def mix(mixup: Mixup, x: torch.Tensor, y: torch.Tensor, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the normalised batch ``x`` (B, C, H, W) in place; returns it and its soft targets (B, classes).

    timm draws from NumPy's global random state, which checkpoints do not hold: the state is
    seeded from ``(seed, step)`` for the call and put back after, so a resumed run draws what
    the uninterrupted one drew and the caller's NumPy stream is untouched.
    """
    saved = np.random.get_state()
    np.random.seed((seed * 1_000_003 + step) % 2**32)
    try:
        return mixup(x, y)
    finally:
        np.random.set_state(saved)


@contextlib.contextmanager
def cpu_bf16_attention(model: nn.Module, amp: torch.dtype | None, device: torch.device):
    """While training under bf16 autocast on a CPU, timm's unfused attention; put back on exit.

    PyTorch's fused CPU attention is slow backwards in bf16: 194 ms against 44 ms in fp32
    per ``vit_tiny_c10`` step of 128 images, while the unfused path (matmuls, softmax)
    made the whole bf16 step 2.54x faster than fp32 (``benchmarks/train_step.py --profile``,
    2 threads, ``data/results/locality/train_step_profile.log``). Other devices and
    precisions are left alone.
    """
    if amp is not torch.bfloat16 or device.type != "cpu":
        yield
        return
    with restoring(model):
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        yield


def _processes() -> tuple[int, int]:
    """``(rank, world size)``, joining the process group when started by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _lock(out: Path) -> contextlib.AbstractContextManager:
    """The folder's lock, taken by the first process only (torchrun's other ranks share its run)."""
    return lock_run(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()


def _finished(config: TrainConfig, out: Path, progress: bool) -> TrainResult | None:
    """The result of the run that already finished in ``out`` with these settings, read back; else None."""
    record = finished_run(out, config)
    if record is None:
        return None
    metrics = record.metrics
    _report(progress, f"{out} already finished with these settings (test accuracy {metrics.get('test_accuracy')}); "
            "returning its model without training")
    weights = out / "model.safetensors"
    model = mpp.load_pretrainer(weights, "cpu") if config.objective == "mpp" else load_model(weights, device="cpu")
    return TrainResult(model.eval(), metrics)


def _data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train images, train labels, test images, test labels)``: the subsets the config names."""
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
    if config.init is None:
        model = build_model({"zoo": config.model})
    else:
        model = load_model(config.init, num_classes=len(data.CLASSES), device="cpu")
        wanted = build_model({"zoo": config.model})
        if type(model) is not type(wanted):
            raise ConfigError(f"--init {config.init} holds a {type(model).__name__}, but --model "
                              f"{config.model} is a {type(wanted).__name__}")
        if init_objective(config.init) == "mpp":  # its head never saw a label: start a new one (seeded)
            model.reset_classifier(len(data.CLASSES))
    if config.img_size is not None:
        set_input_size(model, config.img_size)
    return mpp.MaskedPatchPrediction(model) if config.objective == "mpp" else model


def init_objective(spec: str | os.PathLike | None) -> str:
    """How the weights ``spec`` names were trained: ``"mpp"``, ``"classify"``, or ``""`` for none (scratch).

    Read from the sidecar of a vitlab file or zoo checkpoint; other weights (timm's, a bare
    state dict) count as supervised.
    """
    if spec is None:
        return ""
    path = weights_file(spec)
    try:
        return read_sidecar(sidecar_path(path)).objective if path is not None else "classify"
    except (OSError, WeightsFileError):  # no sidecar, or one that is not vitlab's
        return "classify"


def _start(config: TrainConfig, out: Path, device: str | torch.device | None,
           progress: bool, inside: bool = True) -> tuple[_Run, tuple[torch.Tensor, ...]]:
    """The run, resumed from its checkpoint, and its data on the device.

    The model and checkpoint come first, so an unreadable checkpoint is reported before the
    data is loaded.
    """
    if device is None:
        cuda = torch.cuda.is_available()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    device = torch.device(device)
    rank, world = _processes()
    torch.manual_seed(config.seed)
    model = _initial_model(config)
    state = load_checkpoint(out, config, model)
    train_x, train_y, test_x, test_y = _data(config)
    run = _setup(config, out, model, device, rank, world, len(train_x) // config.batch_size)
    if state is not None:
        run.step, run.wall = restore(state, run.opt, run.gen)
    if rank == 0:
        trim_metrics(out, run.step)
        trim_inside(out, run.step)
        if inside and inside_views.is_vit(run.analysed):  # its own generator: the training streams are untouched
            run.probe = inside_views.probe_images().to(device)
        what = "pre-training (masked patch prediction, no labels)" if config.objective == "mpp" else "training"
        _report(progress, f"{what} {config.model}: {len(train_x)} images, {run.total} steps, {world} "
                f"process(es) on {hardware(device)}, "
                f"{'resuming at step ' + str(run.step) if run.step else 'from the start'}"
                + ("; images mixed (timm Mixup/CutMix): train accuracy counts each image's dominant label"
                   if run.mixup is not None else ""))
    return run, (train_x.to(device), train_y.to(device), test_x, test_y)


def _setup(config: TrainConfig, out: Path, model: nn.Module, device: torch.device, rank: int, world: int,
           steps_per_epoch: int) -> _Run:
    """Wrap the model for the step (DDP, compile) and build its optimiser and augmentation stream."""
    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if config.compile:
        net = torch.compile(net)
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, fused=device.type == "cuda" or None)
    return _Run(config=config, out=out, model=model, net=net, opt=opt, device=device,
                gen=torch.Generator(device=device).manual_seed(config.seed + 1), mixup=mixer(config, len(data.CLASSES)),
                amp=autocast_dtype(config.precision, device), rank=rank, world=world,
                steps_per_epoch=steps_per_epoch)


# --- the loop ----------------------------------------------------------------------


def train(config: TrainConfig, out: str | os.PathLike, *, device: str | torch.device | None = None,
          progress: bool = True, checkpoint_every: int = 0,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, inside: bool = True) -> TrainResult:
    """Train (or fine-tune) ``config.model`` on CIFAR-10 in ``out``; resumes from its checkpoint.

    Writes ``<out>/metrics.jsonl`` (epoch, step, loss, train/test accuracy, learning rate,
    images/s, wall seconds), checkpoints, and finally ``<out>/model.safetensors`` with its
    sidecar (config, metrics, data subset, code version, hardware). A run that finished in
    ``out`` with the same settings is returned as it is; one with other settings, a model
    vitlab did not write, or another process training into ``out`` is refused before any work.

    Args:
        device: default: the local rank's GPU when there is one, else the CPU.
        progress: print a start line and show a bar per epoch; else report to :data:`log`.
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
        on_epoch: called with each epoch's record (e.g. to draw live curves in a notebook).
        inside: record a ViT's inside views in ``<out>/inside.jsonl`` and ``inside.safetensors``
            (:mod:`vitlab.training.inside`) at the end of each epoch, at most 30 per run; ignored for
            ResNets. An argument, not a setting: the weights are the same either way, so a run
            may be resumed with the other choice (the views then cover only part of it).
    """
    out = Path(out)
    check(config, out, checkpoint_every)
    with _lock(out):
        done = _finished(config, out, progress)
        if done is not None:
            return done
        run, (train_x, train_y, test_x, test_y) = _start(config, out, device, progress, inside)
        record: dict[str, Any] = (read_metrics(out) or [{}])[-1] if run.step else {}
        with cpu_bf16_attention(run.model, run.amp, run.device):
            record = _epochs(run, (train_x, train_y, test_x, test_y), record, progress, checkpoint_every, on_epoch)
        return _finish(run, record)


def _epochs(run: _Run, tensors: tuple[torch.Tensor, ...], record: dict[str, Any], progress: bool,
            checkpoint_every: int, on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Train, evaluate, log and checkpoint epoch after epoch to the end of the run; the last record."""
    train_x, train_y, test_x, test_y = tensors
    out = run.out
    while run.step < run.total:
        epoch = run.step // run.steps_per_epoch
        stats = train_one_epoch(run, train_x, train_y, progress=progress, checkpoint_every=checkpoint_every)
        accuracy = _test_accuracy(run, test_x, test_y) if run.rank == 0 else float("nan")
        record = dict(epoch=epoch + 1, step=run.step, loss=stats["loss"], train_accuracy=stats["train_accuracy"],
                      test_accuracy=accuracy, lr=run.opt.param_groups[0]["lr"],
                      images_per_second=stats["images_per_second"], wall_seconds=run.wall)
        if run.rank == 0:
            _log_epoch(out, record, progress, on_epoch)
            _record_inside(run, epoch + 1)
        _save_checkpoint(run, epoch + 1)
    return record


def _test_accuracy(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy on the test images, or under masked patch prediction the share of their
    corrupted patches whose colour is predicted right (the same corruption every epoch)."""
    if run.config.objective == "mpp":
        return mpp.masked_accuracy(run.model, images)
    return evaluate(run.model, images, labels)


def _log_epoch(out: Path, record: dict[str, Any], progress: bool,
               on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    append_metrics(out, record)
    if not progress:
        log.info(json.dumps(record))
    if on_epoch is not None:
        on_epoch(record)


def _record_inside(run: _Run, epoch: int) -> None:
    """The inside view of the model at the end of ``epoch`` (1-based), when this epoch is one to record."""
    if run.probe is None or epoch not in inside_views.recorded_epochs(run.config.epochs):
        return
    view = inside_views.inside_view(run.analysed, run.probe, epoch, run.step)
    record_inside(run.out, view, inside_views.inside_tensors(run.analysed, epoch))


def train_one_epoch(run: _Run, images: torch.Tensor, labels: torch.Tensor, progress: bool = True,
                    checkpoint_every: int = 0) -> dict[str, float]:
    """Train from ``run.step`` to the end of its epoch; returns loss, train accuracy and images/s.

    ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) are the whole training set, on the
    device (masked patch prediction ignores the labels). A resumed run starts mid-epoch,
    where its checkpoint was written.
    """
    config, bs = run.config, run.config.batch_size
    epoch, first = divmod(run.step, run.steps_per_epoch)
    order = _epoch_order(len(images), config.seed, epoch, run.device)
    shard = slice(run.rank * bs // run.world, (run.rank + 1) * bs // run.world)
    run.net.train()
    started, seen = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=run.device)  # summed on the device: no host sync per step
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    bar = tqdm(range(first, run.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not progress or run.rank != 0)
    for b in bar:
        idx = order[b * bs : (b + 1) * bs]
        x, y = batch(run, images[idx], labels[idx])
        x, y = x[shard], y[shard]  # (B / world, 3, H, W), (B / world[, classes])
        loss, hits, scored = _step(run, x, y)
        loss_sum += loss
        correct += hits
        seen += scored
        if not bar.disable and (b - first) % PROGRESS_EVERY == 0:  # the only read-back inside the epoch
            bar.set_postfix(loss=f"{loss_sum.item() / (b - first + 1):.3f}")
        if checkpoint_every and run.step % checkpoint_every == 0 and run.step % run.steps_per_epoch:
            _save_checkpoint(run, run.step / run.steps_per_epoch, wall=run.wall + time.perf_counter() - started)
    loss_total, hit_total = loss_sum.item(), correct.item()  # waits for the epoch's last step
    elapsed = time.perf_counter() - started
    run.wall += elapsed
    steps = run.steps_per_epoch - first
    return dict(loss=loss_total / max(1, steps), train_accuracy=hit_total / max(1, seen),
                images_per_second=steps * bs / elapsed)


#: Steps between progress-bar updates, each of which reads the running loss back from the device.
PROGRESS_EVERY = 20


def batch(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training inputs of one whole batch: augmented, normalised and maybe mixed.

    Every process draws the whole batch's augmentation and mixing (or corruption) and keeps
    its shard, so the random streams (and the result) do not depend on the number of processes.

    Returns:
        ``(x, y)``: float inputs (B, 3, H, W), and labels (B,) or soft targets (B, classes);
        under masked patch prediction, y is (B, patches, 3): each patch's colour target,
        corruption kind and source patch (:func:`_unpack_mpp`).
    """
    augmented = augment(images, run.config.crop_padding, run.config.flip, run.gen)  # (B, 3, H, W) uint8
    x = preprocess(run.analysed, augmented)
    if run.config.objective == "mpp":
        targets, corruption = mpp.draw_batch(augmented, run.model.patch_size, run.gen)
        return x, torch.stack([targets, corruption.kind.long(), corruption.source], dim=-1)
    if run.mixup is None:
        return x, labels
    return mix(run.mixup, x, labels, run.config.seed, run.step)


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimiser step on the inputs ``x`` (B, 3, H, W) against labels or soft targets ``y``.

    Returns the loss and the count of correct predictions (against each mixed image's
    dominant label; under masked patch prediction, of corrupted patches' colours) as device
    tensors, so the step never waits for the device, and how many predictions were scored.
    """
    for group in run.opt.param_groups:
        group["lr"] = lr_at(run.step, run.total, run.warmup, run.config.lr)
    with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
        if run.config.objective == "mpp":
            targets, corruption = _unpack_mpp(y)
            loss, hits, _ = mpp.score(run.net(x, corruption), targets, corruption)  # logits (B, patches, 512)
            scored = len(x) * mpp.corrupted_per_image(targets.shape[1])
        else:
            logits = run.net(x)  # (B, classes)
            if y.ndim == 2:  # soft targets; the label smoothing is in them
                loss = SoftTargetCrossEntropy()(logits, y)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=run.config.label_smoothing)
            hits, scored = (logits.argmax(-1) == (y.argmax(-1) if y.ndim == 2 else y)).sum(), len(x)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    run.step += 1
    return loss.detach(), hits, scored


def _unpack_mpp(y: torch.Tensor) -> tuple[torch.Tensor, mpp.Corruption]:
    """The colour targets (B, patches) and corruption packed in ``y`` (B, patches, 3) by :func:`batch`."""
    return y[..., 0], mpp.Corruption(kind=y[..., 1], source=y[..., 2])


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    # Seeded by (seed, epoch) alone, so a resumed run sees exactly the same batches.
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen, device=device)


def _report(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
    else:
        log.info(message)


def _finish(run: _Run, record: dict[str, Any]) -> TrainResult:
    """Save the final model with its record (rank 0) and return it."""
    model, pretraining = run.model, run.config.objective == "mpp"
    final = dict(record, hardware=hardware(run.device), processes=run.world,
                 **({"train_accuracy_of": "dominant label"} if run.mixup is not None else {}),
                 **({"accuracy_of": MPP_ACCURACY} if pretraining else {}),
                 precision=str(run.amp or torch.float32), params=sum(p.numel() for p in run.analysed.parameters()))
    if run.rank == 0:
        extra = mpp.objective_state(model) if pretraining else None
        save_final(run.out, run.analysed.cpu(), config=run.config, metrics=final, data=_data_record(run.config),
                   extra=extra)
    if run.world > 1:
        dist.barrier()
    return TrainResult(model.cpu().eval(), final)


#: What the accuracies of a masked-patch-prediction run count.
MPP_ACCURACY = "corrupted patches whose 3-bit mean colour (512 classes) is predicted right"


def _data_record(config: TrainConfig) -> dict[str, Any]:
    return dict(dataset="cifar10", train_images=config.subset_size or 50_000, subset_seed=config.seed,
                test_images=config.eval_size or 10_000)


def _save_checkpoint(run: _Run, epoch: float, wall: float | None = None) -> None:
    """Checkpoint the run (rank 0 only); ``wall`` gives the training seconds when mid-epoch."""
    if run.rank == 0:
        save_checkpoint(run.out, step=run.step, epoch=epoch, wall_seconds=run.wall if wall is None else wall,
                        model=run.model, optimizer=run.opt, generator=run.gen, config=run.config,
                        data=_data_record(run.config))
