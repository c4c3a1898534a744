"""Training on a GPU: time to a test accuracy, and training throughput against the GPU's peak.

On a CUDA device one run prints:

* time to ``--target`` (75%) test accuracy: ``vit_tiny_c10`` trained by vitlab's own loop
  (``vitlab.training.loop.train_one_epoch`` and ``vitlab.training.objectives.evaluate``: its augmentation,
  fused AdamW, warmup and cosine schedule over ``--epochs``, bf16 autocast) on the training images of a subset file
  (``vitlab.data.write_subset``), scored on its test images after every epoch; it stops at the
  target and prints the wall seconds since the first step (evaluations included), or, if the
  target is never reached, the best accuracy and when;
* training-step throughput (forward, loss, backward, fused AdamW step) at ``--batch`` in bf16
  autocast, eager and under ``torch.compile``, on a synthetic batch already on the GPU, for
  ``vit_tiny_c10`` (32x32) and timm's ``vit_small_patch16_224`` (224x224): images/s, achieved
  TFLOP/s and MFU (model FLOPs of forward and backward per second, counted by
  ``torch.utils.flop_counter`` with attention and without flash attention's recomputation, over
  the GPU's dense bf16 peak: nominal for H100, H200 and A100, else a measured 8192^3 bf16
  matmul), and the seconds of the first step (compilation);
* a summary table with the GPU's name.

Sized for about 5 minutes on one H100, most of it compiling (an estimate: this script has not run
on a GPU yet). Without CUDA it says so and exits 0.

The 236 MB dataset does not travel to a lent GPU machine; the subset file does (37 MB for
10,000 training and 2,000 test images). Make it once where CIFAR-10 is, then carry it:

    VITLAB_DATA=/work/shared/data python benchmarks/gpu.py --make-subset   # .cache/cifar10-subset.npz
    PYTHONPATH=. python benchmarks/gpu.py                                  # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu.py --skip-train --no-compile        # throughput only, no subset

On 10,000 training images ``vit_tiny_c10`` may stay below 75% (it reaches 77.7% on all 50,000
in 30 epochs); ``--target`` sets another, and ``--make-subset --train-size 15000`` (52 MB) is about
the largest subset that still travels beside the working tree (64 MiB in all).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vitlab import data
from vitlab.models import ARCHITECTURES, build_model
from vitlab.training.config import TrainConfig
from vitlab.training.loop import _setup, train_one_epoch
from vitlab.training.objectives import evaluate
from vitlab.training.steps import param_groups

#: Dense bf16 peak of known GPUs, FLOP/s, by a part of the device name; the first match counts.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}

#: Models whose training step is timed: zoo names, else timm names (built without weights).
MODELS = ("vit_tiny_c10", "vit_small_patch16_224")


# --- time to accuracy -----------------------------------------------------------------


@dataclass(frozen=True)
class Convergence:
    """A training run towards ``target`` test accuracy; accuracies are fractions, one per epoch run."""

    model: str
    train_images: int
    test_images: int
    batch: int
    epochs: int  # the schedule's length; the run stops early at the target
    target: float
    accuracies: tuple[float, ...]
    seconds: tuple[float, ...]  # wall seconds from the first step to the end of each epoch's evaluation
    images_per_second: float  # vitlab's loop, median over the epochs after the first

    @property
    def reached(self) -> int | None:
        """The first epoch (1-based) at or above the target; None if none was."""
        return next((i + 1 for i, acc in enumerate(self.accuracies) if acc >= self.target), None)

    @property
    def best(self) -> int:
        """The epoch (1-based) of the best accuracy."""
        return max(range(len(self.accuracies)), key=self.accuracies.__getitem__) + 1

    def summary(self) -> str:
        if self.reached is not None:
            e = self.reached
            return (f"{self.target:.0%} reached at epoch {e}: {self.accuracies[e - 1]:.1%} after "
                    f"{self.seconds[e - 1]:.1f} s")
        e = self.best
        return (f"{self.target:.0%} not reached in {len(self.accuracies)} epochs; best {self.accuracies[e - 1]:.1%} "
                f"at epoch {e} ({self.seconds[e - 1]:.1f} s)")


def time_to_accuracy(subset: tuple[torch.Tensor, ...], target: float, epochs: int, batch: int,
                     device: torch.device, model_name: str = "vit_tiny_c10", seed: int = 0,
                     verbose: bool = True) -> Convergence:
    """Train ``model_name`` with vitlab's loop on ``subset`` until its test accuracy reaches ``target``.

    Args:
        subset: ``(train_x, train_y, test_x, test_y)`` as :func:`vitlab.data.read_subset` returns.
        target: test accuracy (a fraction) at which to stop.
        epochs: at most this many; the learning-rate schedule spans all of them.
        batch: images per step.
    """
    train_x, train_y, test_x, test_y = subset
    if batch > len(train_x):
        raise ValueError(f"batch {batch} exceeds the subset's {len(train_x)} training images: lower --batch")
    config = TrainConfig(model=model_name, epochs=epochs, batch_size=batch, seed=seed)
    torch.manual_seed(seed)
    model = build_model({"zoo": model_name})
    accuracies, seconds, speeds = [], [], []
    with tempfile.TemporaryDirectory() as out:  # the run's folder; nothing is checkpointed into it
        run = _setup(config, Path(out), model, device, rank=0, world=1, steps_per_epoch=len(train_x) // batch)
        images, labels = train_x.to(device), train_y.to(device)  # (N, 3, 32, 32) uint8, (N,)
        test_x, test_y = test_x.to(device), test_y.to(device)
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            stats = train_one_epoch(run, images, labels, progress=False)  # returns after the epoch's last step
            accuracies.append(evaluate(run.model, test_x, test_y))
            seconds.append(time.perf_counter() - start)
            speeds.append(stats["images_per_second"])
            if verbose:
                print(f"  epoch {epoch:3d}: test {accuracies[-1]:6.1%}  loss {stats['loss']:.3f}  "
                      f"{seconds[-1]:7.1f} s  {speeds[-1]:8.0f} images/s", flush=True)
            if accuracies[-1] >= target:
                break
    return Convergence(model=model_name, train_images=len(train_x), test_images=len(test_x), batch=batch,
                       epochs=epochs, target=target, accuracies=tuple(accuracies), seconds=tuple(seconds),
                       images_per_second=statistics.median(speeds[1:] or speeds))


# --- throughput -----------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Training-step speed of one model: FLOPs per image count forward and backward (multiply-add = 2)."""

    model: str
    input_size: tuple[int, int]  # pixels
    batch: int
    compiled: bool
    images_per_second: float
    flops_per_image: float
    first_step_seconds: float  # includes compiling when compiled
    final_loss: float

    @property
    def flops_per_second(self) -> float:
        return self.images_per_second * self.flops_per_image

    def mfu(self, peak: float) -> float:
        """Model-FLOPs utilisation: achieved FLOP/s over ``peak`` FLOP/s."""
        return self.flops_per_second / peak


def make_model(name: str) -> nn.Module:
    """A zoo architecture by name, else timm's model of that name without pretrained weights."""
    return build_model({"zoo": name} if name in ARCHITECTURES else {"timm": name})


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * flop_counter.sdpa_flop_count(query, key, value)  # (B, heads, N, d): dQ, dK, dV and the scores' grad


#: Model FLOPs of fused attention, which ``FlopCounterMode`` miscounts for MFU: it does not count the
#: CPU's kernels, and it counts flash attention's backward as 2.5x its forward (it recomputes the
#: scores); model FLOPs count every matmul's backward as twice its forward, as PaLM's MFU does.
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    **{getattr(torch.ops.aten, name): _attention_backward_flops for name in (
        "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
    ) if hasattr(torch.ops.aten, name)},
}


def flops_per_image(model: nn.Module, input_size: tuple[int, int], device: torch.device) -> float:
    """Model FLOPs of forward and backward per image of ``model`` (on ``device``), counted on a batch of 2."""
    x = torch.randn(2, 3, *input_size, device=device)
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def measure_throughput(name: str, batch: int, steps: int, warmup: int, device: torch.device,
                       compile: bool, amp: torch.dtype | None = torch.bfloat16) -> Throughput:
    """Time ``steps`` training steps of a fresh ``name`` on one synthetic batch, after ``warmup`` untimed ones.

    The step is vitlab's: cross-entropy under ``amp`` autocast, AdamW over :func:`param_groups`
    (fused on CUDA). Only the model is compiled, as ``TrainConfig(compile=True)`` does.
    """
    torch.manual_seed(0)
    model = make_model(name).to(device).train()
    size = tuple(model.pretrained_cfg["input_size"][1:])  # (H, W), as the model states it
    flops = flops_per_image(model, size, device)
    net = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=device.type == "cuda" or None)
    x = torch.randn(batch, 3, *size, device=device)  # (B, 3, H, W), already normalised
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    final = loss.item()  # the only read-back, after the last step
    _sync(device)
    elapsed = time.perf_counter() - start
    return Throughput(model=name, input_size=size, batch=batch, compiled=compile,
                      images_per_second=steps * batch / elapsed, flops_per_image=flops,
                      first_step_seconds=first, final_loss=final)


def matmul_flops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an ``n`` x ``n`` x ``n`` bf16 matmul, the mean of ``repeats`` after 3 untimed."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def nominal_peak(gpu_name: str) -> float | None:
    """The dense bf16 FLOP/s of :data:`PEAK_BF16` for a device name; None when unknown."""
    return next((peak for key, peak in PEAK_BF16.items() if key in gpu_name), None)


def cuda_device() -> torch.device | None:
    """The GPU to measure; None without CUDA."""
    return torch.device("cuda") if torch.cuda.is_available() else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the command line -----------------------------------------------------------------

#: Said without CUDA: the benchmark measures GPUs only.
NO_GPU = ("no CUDA GPU here: benchmarks/gpu.py measures training on a GPU; run it on a machine with one "
          f"(PYTHONPATH=. python benchmarks/gpu.py, with .cache/{data.SUBSET_FILE} carried along)")


def print_summary(gpu: str, peak: float, peak_source: str, convergence: Convergence | None,
                  speeds: list[Throughput]) -> None:
    print(f"\nsummary on {gpu}, torch {torch.__version__}; bf16 peak {peak / 1e12:.0f} TFLOP/s ({peak_source})")
    if convergence is not None:
        c = convergence
        print(f"time to accuracy: {c.model}, {c.train_images:,} training images, batch {c.batch}, "
              f"{c.test_images:,} test images: {c.summary()}; vitlab loop {c.images_per_second:,.0f} images/s")
    if speeds:
        print(f"  {'model':<24} {'input':>7} {'batch':>5} {'compile':>7} {'images/s':>10} {'GFLOP/img':>9} "
              f"{'TFLOP/s':>8} {'MFU':>6} {'1st step s':>10}")
        for s in speeds:
            size, compiled = "x".join(map(str, s.input_size)), "yes" if s.compiled else "no"
            print(f"  {s.model:<24} {size:>7} {s.batch:5d} {compiled:>7} {s.images_per_second:10,.0f} "
                  f"{s.flops_per_image / 1e9:9.2f} {s.flops_per_second / 1e12:8.1f} {s.mfu(peak):6.1%} "
                  f"{s.first_step_seconds:10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=Path, default=None,
                        help=f"subset file (default: <VITLAB_CACHE or .cache>/{data.SUBSET_FILE})")
    parser.add_argument("--make-subset", action="store_true",
                        help="write the subset file from CIFAR-10 (VITLAB_DATA) and exit; needs no GPU")
    parser.add_argument("--train-size", type=int, default=10_000, help="with --make-subset: training images")
    parser.add_argument("--test-size", type=int, default=2_000, help="with --make-subset: test images")
    parser.add_argument("--target", type=float, default=0.75, help="test accuracy to reach, a fraction")
    parser.add_argument("--epochs", type=int, default=60, help="most epochs towards the target (the schedule's length)")
    parser.add_argument("--batch", type=int, default=256, help="images per step, training and throughput")
    parser.add_argument("--steps", type=int, default=50, help="timed throughput steps per model and mode")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (the first compiles)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models to time")
    parser.add_argument("--no-compile", action="store_true", help="time eager steps only")
    parser.add_argument("--skip-train", action="store_true", help="skip the time-to-accuracy run (no subset needed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.make_subset:
        try:
            path = data.write_subset(args.subset, args.train_size, args.test_size, args.seed)
        except (FileExistsError, FileNotFoundError, ValueError, TypeError) as err:
            print(f"gpu.py: {err}", file=sys.stderr)
            return 1
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.train_size:,} training and "
              f"{args.test_size:,} test images); carry it to the GPU machine")
        return 0
    device = cuda_device()
    if device is None:
        print(NO_GPU)
        return 0

    subset = None
    if not args.skip_train:  # read first: a missing file is reported before minutes of work
        try:
            subset = data.read_subset(args.subset)
        except (FileNotFoundError, data.CorruptDataError) as err:
            print(f"gpu.py: {err}; make it with `VITLAB_DATA=<folder with cifar10/> python benchmarks/gpu.py "
                  "--make-subset` and carry it, or pass --skip-train", file=sys.stderr)
            return 1
    gpu = torch.cuda.get_device_name(device)
    measured = matmul_flops(device)
    peak, source = nominal_peak(gpu), "nominal dense"
    if peak is None:
        peak, source = measured, "measured"
    print(f"GPU: {gpu}; bf16 peak {peak / 1e12:.0f} TFLOP/s ({source}); measured 8192^3 bf16 matmul "
          f"{measured / 1e12:.0f} TFLOP/s", flush=True)

    convergence = None
    if subset is not None:
        print(f"\ntraining vit_tiny_c10 to {args.target:.0%} on {len(subset[0]):,} training images, "
              f"batch {args.batch}, at most {args.epochs} epochs", flush=True)
        convergence = time_to_accuracy(subset, args.target, args.epochs, args.batch, device, seed=args.seed)
        print(f"time to accuracy: {convergence.summary()}", flush=True)

    speeds = []
    for name in filter(None, args.models.split(",")):
        for compiled in (False,) if args.no_compile else (False, True):
            s = measure_throughput(name, args.batch, args.steps, args.warmup, device, compiled)
            speeds.append(s)
            print(f"{name} batch {args.batch} bf16 {'compiled' if compiled else 'eager'}: {s.images_per_second:,.0f} "
                  f"images/s, MFU {s.mfu(peak):.1%} (first step {s.first_step_seconds:.1f} s)", flush=True)
            if compiled:
                torch._dynamo.reset()  # drop the compiled graphs before the next model
            torch.cuda.empty_cache()
    print_summary(gpu, peak, source, convergence, speeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
