"""Supervised training and fine-tuning of zoo models on CIFAR-10 subsets.

One function, :func:`train`, driven by a frozen :class:`TrainConfig`; the command line
(``python -m vitlab train``) maps its flags onto the same dataclass. The whole uint8
dataset stays on the training device and augmentation runs on whole batches, with no
per-image Python work. Under ``torchrun`` the same function trains data-parallel
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs).

Checkpoints (``<out>/checkpoint.*``) hold the weights (safetensors), a JSON sidecar and
the optimiser and random-number state, all written atomically; a run started again with
the same config continues from the last one and ends with the same weights as a run
that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data, settings
from .io import atomic_path, atomic_write, write_json
from .models import ZOO, build_model, load_model, preprocess, save_model, set_input_size


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train and how. Sizes are in images (``img_size`` in pixels)."""

    model: str = "vit_tiny_c10"  # zoo architecture to build
    init: str | None = None  # fine-tune: start from these weights (any load_model spec)
    img_size: int | None = None  # fine-tune at this resolution; ViT position embeddings are resampled in 2-D
    subset_size: int | None = None  # class-stratified training subset; None: all 50,000 images
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128  # global batch, split across processes under torchrun
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, Nesterov)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    crop_padding: int = 4  # pixels of reflection padding for random crops
    flip: bool = True
    precision: str = "auto"  # "auto" (bf16 on GPUs, fp32 on CPUs), "bf16" or "fp32"
    compile: bool = False  # torch.compile the model (GPU)
    eval_size: int | None = None  # class-stratified test subset; None: all 10,000 images
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at epoch ends only)
    progress: bool = True  # a progress bar per epoch
    out: str = "runs/vit_tiny_c10"


@dataclass
class TrainResult:
    """The trained model (on the CPU) and the final metrics record."""

    model: nn.Module
    record: dict[str, Any]


# --- pieces ------------------------------------------------------------------------


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    On this project's CPUs bf16 autocast measured 0.5x the speed of fp32 for
    ``vit_tiny_c10`` (2 threads), so ``"auto"`` uses bf16 only on GPUs that support it.
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


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) of ``model`` on uint8 ``images`` (N, 3, H, W)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(preprocess(model, images[i : i + batch_size]))
        correct += (logits.argmax(-1).cpu() == labels[i : i + batch_size].cpu()).sum().item()
    return correct / len(images)


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl`` (empty before the first epoch)."""
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    # Seeded by (seed, epoch) alone, so a resumed run sees exactly the same batches.
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen, device=device)


def _code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """A short description of ``device`` for run records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


# --- validation before any work -----------------------------------------------------


def _check(config: TrainConfig) -> None:
    if config.model not in ZOO:
        raise ValueError(f"unknown zoo model {config.model!r}; choose one of {list(ZOO)}")
    if config.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {config.precision!r}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch size must be at least 1")
    if config.subset_size is not None and config.batch_size > config.subset_size:
        raise ValueError(f"batch size {config.batch_size} exceeds the subset of {config.subset_size} images; "
                         "lower --batch-size or raise --subset-size")
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write-test", lambda tmp: tmp.write_text("ok"))
        (out / ".write-test").unlink()
    except OSError as err:
        raise PermissionError(f"output folder {out} is not writable ({err.strerror}); choose another --out") from None


def _initial_model(config: TrainConfig) -> nn.Module:
    if config.init is None:
        model = build_model({"zoo": config.model})
    else:
        model = load_model(config.init, num_classes=len(data.CLASSES), device="cpu")
        wanted = build_model({"zoo": config.model})
        if type(model) is not type(wanted):
            raise ValueError(f"--init {config.init} holds a {type(model).__name__}, but --model "
                             f"{config.model} is a {type(wanted).__name__}")
    if config.img_size is not None:
        set_input_size(model, config.img_size)
    return model


# --- the loop ----------------------------------------------------------------------


def train(config: TrainConfig, device: str | torch.device | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or fine-tune) ``config.model`` on CIFAR-10; resumes from ``<out>/checkpoint``.

    Writes ``<out>/metrics.jsonl`` (epoch, step, loss, train/test accuracy, learning rate,
    images/s, wall seconds), checkpoints, and finally ``<out>/model.safetensors`` with its
    sidecar (config, metrics, data subset, code version, hardware). ``on_epoch`` is
    called with each epoch's record (e.g. to update live curves in a notebook).
    """
    _check(config)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} must divide evenly over {world} processes")

    train_x, train_y = data.cifar10("train")  # a missing dataset fails here, before any training
    test_x, test_y = data.cifar10("test")
    torch.manual_seed(config.seed)
    model = _initial_model(config)
    out = Path(config.out)
    state = _load_checkpoint(out, config, model)
    if config.subset_size is not None:
        subset = data.stratified_subset(train_y, config.subset_size, config.seed)
        train_x, train_y = train_x[subset], train_y[subset]
    if config.batch_size > len(train_x):
        raise ValueError(f"batch size {config.batch_size} exceeds the {len(train_x)} training images")
    if config.eval_size is not None:
        idx = data.stratified_subset(test_y, config.eval_size, 0)
        test_x, test_y = test_x[idx], test_y[idx]

    model.to(device)
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    if config.compile:
        net = torch.compile(net)
    opt = _optimizer(model, config, fused=device.type == "cuda")
    amp = autocast_dtype(config.precision, device)
    steps_per_epoch = len(train_x) // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    step, wall = 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, wall = int(state["step"]), float(state["wall_seconds"])
    train_x, train_y = train_x.to(device), train_y.to(device)
    if rank == 0:
        _trim_metrics(out, step)
        print(f"training {config.model}: {len(train_x)} images, {total} steps, {world} process(es) on "
              f"{hardware(device)}, {'resuming at step ' + str(step) if step else 'from the start'}", flush=True)

    record: dict[str, Any] = read_metrics(out)[-1] if step and read_metrics(out) else {}
    shard = config.batch_size // world
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        order = _epoch_order(len(train_x), config.seed, epoch, device)
        net.train()
        started, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not config.progress or rank != 0)
        for b in bar:
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            # Every process draws the whole batch's augmentation and keeps its shard, so the
            # random stream (and the result) does not depend on the number of processes.
            x = augment(train_x[idx], config.crop_padding, config.flip, gen)[rank * shard : (rank + 1) * shard]
            y = train_y[idx][rank * shard : (rank + 1) * shard]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, config.lr)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = net(preprocess(model, x))
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item()
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / (b - first + 1):.3f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step % steps_per_epoch:
                _save_checkpoint(out, config, model, opt, gen, step, step / steps_per_epoch,
                                 wall + time.perf_counter() - started, rank)
        elapsed = time.perf_counter() - started
        wall += elapsed
        acc = evaluate(model, test_x, test_y) if rank == 0 else float("nan")
        record = dict(
            epoch=epoch + 1, step=step, loss=loss_sum / max(1, steps_per_epoch - first),
            train_accuracy=correct / max(1, seen), test_accuracy=acc, lr=opt.param_groups[0]["lr"],
            images_per_second=(steps_per_epoch - first) * config.batch_size / elapsed, wall_seconds=wall,
        )
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if not config.progress:
                print(json.dumps(record), flush=True)
            if on_epoch is not None:
                on_epoch(record)
        _save_checkpoint(out, config, model, opt, gen, step, epoch + 1, wall, rank)

    final = dict(record, hardware=hardware(device), processes=world, precision=str(amp or torch.float32),
                 params=sum(p.numel() for p in model.parameters()))
    if rank == 0:
        save_model(model.cpu(), out / "model.safetensors", metadata=_run_metadata(config, final))
    if distributed:
        dist.barrier()
    return TrainResult(model.cpu().eval(), final)


def _optimizer(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    # Biases, norms and position embeddings get no weight decay (standard ViT practice).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)


def _data_record(config: TrainConfig) -> dict[str, Any]:
    return dict(dataset="cifar10", train_images=config.subset_size or 50_000, subset_seed=config.seed,
                test_images=config.eval_size or 10_000)


def _run_metadata(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    return dict(config=dataclasses.asdict(config), metrics=metrics, data=_data_record(config),
                code_version=_code_version())


# --- checkpoints -------------------------------------------------------------------


def _save_checkpoint(out: Path, config: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator, step: int, epoch: float, wall: float, rank: int) -> None:
    """Write ``checkpoint-<step>.{safetensors,state.pt}``, then point ``checkpoint.json`` at them.

    Each file is written atomically and the pointer last, so a crash at any moment leaves
    ``checkpoint.json`` naming a complete earlier checkpoint. Rank 0 only.
    """
    if rank != 0:
        return
    stem = f"checkpoint-{step:08d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / f"{stem}.safetensors") as tmp:
        safetensors.torch.save_file(weights, str(tmp))
    state = dict(optimizer=opt.state_dict(), generator=gen.get_state().cpu(), torch_rng=torch.get_rng_state())
    with atomic_path(out / f"{stem}.state.pt") as tmp:
        torch.save(state, tmp)
    # The learning rate is a pure function of the step, so the step is the scheduler's state.
    write_json(out / "checkpoint.json", dict(
        step=step, epoch=epoch, wall_seconds=wall, weights=f"{stem}.safetensors", state=f"{stem}.state.pt",
        metrics=read_metrics(out)[-1:], config=dataclasses.asdict(config), architecture=model.vitlab_arch,
        data=_data_record(config), code_version=_code_version(),
    ))
    for old in out.glob("checkpoint-*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)


def _load_checkpoint(out: Path, config: TrainConfig, model: nn.Module) -> dict[str, Any] | None:
    pointer = out / "checkpoint.json"
    if not pointer.is_file():
        return None
    meta = json.loads(pointer.read_text())
    ignored = ("progress", "checkpoint_every")
    saved = {k: v for k, v in meta["config"].items() if k not in ignored}
    now = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise ValueError(f"{out} holds a checkpoint of a run with other settings ({', '.join(changed)}); "
                         "resume with the same settings or choose another --out")
    state = torch.load(out / meta["state"], map_location="cpu", weights_only=True)
    model.load_state_dict(safetensors.torch.load_file(out / meta["weights"]))
    return dict(state, step=meta["step"], wall_seconds=meta["wall_seconds"])


def _trim_metrics(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be redone)."""
    records = [r for r in read_metrics(out) if r["step"] <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out / "metrics.jsonl", lambda tmp: tmp.write_text(text))


# --- publishing to the zoo -----------------------------------------------------------

#: The fixed test images every zoo checkpoint is re-checked on (class-stratified, seed 0).
ZOO_CHECK_SIZE = 1000


def command_for(config: TrainConfig) -> str:
    """The ``python -m vitlab train`` command line that reproduces ``config``.

    Every setting is spelled out (not only those that differ from today's defaults), so
    the command stays exact if a default changes later.
    """
    parts = ["python -m vitlab train"]
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value is None or field.name in ("progress", "checkpoint_every"):
            continue
        flag = "--" + field.name.replace("_", "-")
        parts.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(parts)


def zoo_check_accuracy(model: nn.Module) -> float:
    """Accuracy on the fixed ``ZOO_CHECK_SIZE`` test images that zoo records are checked on."""
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, ZOO_CHECK_SIZE, seed=0)
    return evaluate(model, images[idx], labels[idx])


def publish(run: str | os.PathLike, name: str, code_version: str | None = None) -> Path:
    """Copy a finished run into ``data/zoo/<name>`` with its record, log and command.

    The sidecar gains the exact command, the accuracy on the full test set and on the
    fixed 1,000-image check set, wall time and hardware; the metrics log is copied to
    ``<name>.metrics.jsonl``. ``code_version`` overrides the commit recorded by the run.
    """
    from .models import ZOO_DIR

    run = Path(run)
    weights, sidecar = run / "model.safetensors", run / "model.json"
    if not weights.is_file():
        raise FileNotFoundError(f"{run} holds no finished run (no model.safetensors)")
    meta = json.loads(sidecar.read_text())
    config = TrainConfig(**{k: v for k, v in meta["config"].items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    model = load_model(weights, device="cpu")
    images, labels = data.cifar10("test")
    meta["metrics"]["test_accuracy"] = evaluate(model, images, labels)
    meta["metrics"][f"test_accuracy_{ZOO_CHECK_SIZE}"] = zoo_check_accuracy(model)
    meta.update(command=command_for(config), code_version=code_version or meta.get("code_version", "unknown"))
    target = ZOO_DIR / f"{name}.safetensors"
    save_model(model, target, metadata={k: v for k, v in meta.items() if k not in ("architecture", "pretrained_cfg", "format")})
    log = (run / "metrics.jsonl").read_text()
    atomic_write(ZOO_DIR / f"{name}.metrics.jsonl", lambda tmp: tmp.write_text(log))
    return target
