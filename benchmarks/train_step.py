"""Training throughput against the machine's matmul peak, and where a training step's time goes.

One run prints:

* the matmul peak: GFLOP/s of a 2048x2048 matmul in fp32 and in bf16 (median of 5);
* vitlab's loop against a bare hand-written loop on the same model, same batch size,
  optimiser and device, alternating ``--repeats`` times (medians compared; target: vitlab
  at least 0.95x the bare loop). The bare loop reuses one pre-normalised batch and does
  nothing else, so it is an upper bound. On a GPU also the model-FLOPs utilisation against
  the GPU's nominal bf16 peak. Needs CIFAR-10 (``VITLAB_DATA``); ``--no-vitlab-loop`` skips it;
* the bare training step (forward, backward, AdamW step) in fp32 and in each of
  ``--variants`` (default bf16, bf16+eager-attn, fused, batch256), alternating
  ``--repeats`` times: images/s, achieved GFLOP/s (FLOPs of forward and backward counted
  by ``torch.utils.flop_counter``, the CPU's fused attention included), the fraction of
  the matmul peak of its precision, the ratio to fp32, the loss of the last step
  (variants of one batch size start from the same weights and batch, so bf16's may be
  compared with fp32's), and the cores busy (process CPU seconds per wall second: below
  the thread count, another process took the CPU and the figures are low);
* a conclusion line computed from these numbers.

A variant joins with ``+`` any of ``bf16`` (autocast), ``fused`` or ``foreach`` (AdamW
implementations; without them, the one vitlab's trainer builds), ``eager-attn`` (timm's
unfused attention: q @ k^T, softmax, @ v) and ``batch<N>``.

``--profile`` replaces the timings with ``torch.profiler`` over ``--steps`` steps of the
bare step in fp32 and in each of ``--variants`` (default bf16, bf16+eager-attn): per
variant the top 12 ops by self CPU time, each op's time the median over the steps, and
the shares of the step in matmuls, fused attention, dtype casts, softmax/layer_norm/gelu,
the optimiser and the rest; then a conclusion line per variant against fp32. While
another process loads the cores, ``--threads 1`` keeps the figures meaningful: with two,
every parallel op waits for the second thread to be scheduled.

    python benchmarks/train_step.py --model vit_tiny_c10 --batch 128 --steps 40
    python benchmarks/train_step.py --no-vitlab-loop --variants bf16,fused,bf16+fused,batch256
    python benchmarks/train_step.py --profile --steps 5 --threads 1
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vitlab import data, settings
from vitlab.models import ARCHITECTURES, build_model, preprocess
from vitlab.training.config import TrainConfig
from vitlab.training.loop import train
from vitlab.training.provenance import hardware
from vitlab.training.steps import autocast_dtype, param_groups

#: Dense bf16 peak of known GPUs, FLOP/s, for utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

#: Untimed steps before each measurement (allocator, oneDNN kernel selection, optimiser state).
WARMUP = 3


# --- the step -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to run the training step.

    Attributes:
        name: as given on the command line, e.g. ``"bf16+fused"``.
        amp: autocast dtype; None: plain fp32.
        optim: ``"vitlab"`` (fused AdamW on CUDA, PyTorch's default elsewhere, as the
            trainer builds it), ``"fused"`` or ``"foreach"``.
        batch: images per step; None: ``--batch``.
        fused_attn: timm's fused attention (``F.scaled_dot_product_attention``); False: its
            eager path (q @ k^T, softmax, @ v).
    """

    name: str
    amp: torch.dtype | None = None
    optim: str = "vitlab"
    batch: int | None = None
    fused_attn: bool = True


def parse_variant(text: str) -> Variant:
    """The variant ``text`` names: ``+``-joined fp32, bf16, fused, foreach, eager-attn, batch<N>."""
    fields: dict = {}
    for token in text.split("+"):
        if token in ("fp32", "bf16"):
            fields["amp"] = torch.bfloat16 if token == "bf16" else None
        elif token in ("fused", "foreach"):
            fields["optim"] = token
        elif token == "eager-attn":
            fields["fused_attn"] = False
        elif re.fullmatch(r"batch[1-9]\d*", token):
            fields["batch"] = int(token[5:])
        else:
            raise ValueError(f"variant {text!r}: unknown part {token!r}; join with '+' any of fp32, bf16, "
                             "fused, foreach, eager-attn, batch<N> (e.g. bf16+fused)")
    return Variant(name=text, **fields)


def parse_variants(text: str) -> list[Variant]:
    """The comma-separated variants of ``--variants``; an unknown one is an argparse error."""
    try:
        return [parse_variant(v) for v in text.split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def make_step(model_name: str, batch: int, device: torch.device, variant: Variant) -> Callable[[], torch.Tensor]:
    """A training step (forward, loss, backward, AdamW step) of a fresh model on one fixed batch.

    The weights (seed 0) and the batch (seed 1) depend on the batch size only, so variants
    of one batch size start alike. The step returns the loss as a device tensor.
    """
    torch.manual_seed(0)
    model = build_model({"zoo": model_name}).to(device).train()
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm's attention blocks state which path they take
            module.fused_attn = variant.fused_attn
    optim = {"vitlab": {"fused": device.type == "cuda" or None}, "fused": {"fused": True},
             "foreach": {"foreach": True}}[variant.optim]
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, **optim)
    gen = torch.Generator().manual_seed(1)
    size = model.pretrained_cfg["input_size"][1:]
    x = preprocess(model, torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=gen))
    y = torch.randint(0, model.num_classes, (batch,), generator=gen).to(device)
    amp = variant.amp

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


@dataclass(frozen=True)
class Timing:
    """One timed run of ``steps`` steps."""

    images_per_second: float
    cores_busy: float  # process CPU seconds per wall second
    loss: float  # after the last step


def time_steps(step: Callable[[], torch.Tensor], batch: int, steps: int, device: torch.device) -> Timing:
    """Time ``steps`` calls of ``step`` after :data:`WARMUP` untimed ones."""
    for _ in range(WARMUP):
        step()
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    final = loss.item()  # the only read-back, as vitlab's loop reads its losses once per epoch
    _sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Timing(steps * batch / wall, cpu / wall, final)


def bare_loop(model_name: str, batch: int, steps: int, device: torch.device, amp: torch.dtype | None) -> float:
    """Images/s of a minimal AdamW loop on one fixed, already normalised batch."""
    return time_steps(make_step(model_name, batch, device, Variant("bare", amp=amp)), batch, steps,
                      device).images_per_second


def vitlab_loop(model_name: str, batch: int, steps: int, device: torch.device) -> float:
    """Images/s that ``vitlab.training.loop`` reports for one epoch of ``steps`` steps."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_name, subset_size=batch * steps, epochs=1, batch_size=batch, eval_size=100)
        return train(config, out, device=device, progress=False).record["images_per_second"]


# --- FLOPs and the peak ---------------------------------------------------------------


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # The gradients of q @ k^T and attn @ v: twice the forward, as model FLOPs count them. (torch
    # also counts the kernel's recomputation of q @ k^T for GPU kernels: 2% more for vit_tiny_c10.)
    return 2 * flop_counter.sdpa_flop_count(query, key, value)


#: The CPU's fused attention kernels, which ``FlopCounterMode`` does not count by itself (it
#: would miss 11% of ``vit_tiny_c10``'s FLOPs on a CPU).
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def flops_per_image(model_name: str, device: torch.device) -> float:
    """FLOPs of forward and backward per image (multiply-add = 2), counted on a batch of 8."""
    model = build_model({"zoo": model_name}).to(device)
    x = torch.randn(8, 3, *model.pretrained_cfg["input_size"][1:], device=device)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n`` x ``n`` matmul in ``dtype``: the median of ``repeats`` timings."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    inner = 20 if device.type == "cuda" else 1  # a CPU matmul of this size already takes ~0.1 s
    a @ b  # first call: oneDNN / cuBLAS set-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - start) / inner)
    return 2 * n**3 / statistics.median(times) / 1e9


# --- the profile ----------------------------------------------------------------------

#: Where an op's self time goes, by the innermost op of its call stack that matches; the
#: optimiser takes everything under its step.
CATEGORIES = {
    "matmul": re.compile(r"aten::(addmm|mm|bmm|baddbmm|matmul|linear|\w*convolution\w*)"),
    "attention": re.compile(r"aten::_?scaled_dot_product\w*"),  # fused: its matmuls and softmax
    "casts": re.compile(r"aten::(to|_to_copy)"),
    "softmax/norm/gelu": re.compile(r"aten::\w*(softmax|layer_norm|gelu)\w*"),
}
SHARES = (*CATEGORIES, "optimizer", "other")


@dataclass
class Profile:
    """A profiled run: seconds per step by share (:data:`SHARES`) and the top ops.

    Every step runs the same ops in the same order, so each op's self time is the median
    over the steps of that op at that place in the step: a step in which another process
    took the CPU from one op does not inflate it (``mean_step`` keeps the plain mean).
    """

    seconds: dict[str, float]  # per step
    ops: dict[str, tuple[float, int]]  # op: (self seconds per step, calls per step)
    mean_step: float  # seconds, wall, mean over the profiled steps
    cores_busy: float  # process CPU seconds per wall second while profiling

    @property
    def step(self) -> float:
        return sum(self.seconds.values())

    def share(self, name: str) -> float:
        return self.seconds[name] / self.step

    def top(self, n: int) -> list[tuple[str, float, int]]:
        """The ``n`` ops of most self time: (op, self seconds per step, calls per step)."""
        return [(name, *self.ops[name]) for name in sorted(self.ops, key=lambda k: -self.ops[k][0])[:n]]


def category(event) -> str:
    """The share of :data:`SHARES` that a profiler event's self time belongs to."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    if any(name.startswith("Optimizer.") for name in names):
        return "optimizer"
    for name in names:  # innermost first: a copy_ inside _to_copy is a cast, inside addmm a matmul
        for share, pattern in CATEGORIES.items():
            if pattern.fullmatch(name):
                return share
    return "other"


def _in_call_order(event) -> list:
    """``event`` and all the events under it, in the order they started."""
    events = [event]
    for child in sorted(event.cpu_children, key=lambda e: e.time_range.start):
        events.extend(_in_call_order(child))
    return events


def profile_steps(step: Callable[[], torch.Tensor], steps: int, warmup: int = WARMUP) -> Profile:
    """Profile ``steps`` calls of ``step`` after ``warmup`` unprofiled ones, on the CPU side."""
    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("train_step"):
                loss = step()
        loss.item()
    busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    roots = sorted((e for e in prof.events() if e.name == "train_step"), key=lambda e: e.time_range.start)
    runs = [_in_call_order(root) for root in roots]  # the step's Python between its ops is the root's self time
    names = [e.name for e in runs[0]]
    if all([e.name for e in run] == names for run in runs):
        selfs = [statistics.median(run[i].self_cpu_time_total for run in runs) / 1e6 for i in range(len(names))]
    else:  # the steps differ (they should not): plain means
        selfs = [sum(run[i].self_cpu_time_total for run in runs if i < len(run)) / len(runs) / 1e6
                 for i in range(len(names))]
    seconds = dict.fromkeys(SHARES, 0.0)
    by_op: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for event, secs in zip(runs[0], selfs):
        seconds[category(event)] += secs
        if event.name != "train_step":
            by_op[event.name][0] += secs
            by_op[event.name][1] += 1
    mean_step = sum(root.cpu_time_total for root in roots) / len(roots) / 1e6
    return Profile(seconds, {name: (secs, calls) for name, (secs, calls) in by_op.items()}, mean_step, busy)


def print_profile(label: str, prof: Profile, batch: int) -> None:
    print(f"\n{label}: {prof.step * 1e3:.1f} ms/step under the profiler, op by op the median over steps "
          f"({batch / prof.step:.0f} images/s; mean step {prof.mean_step * 1e3:.1f} ms; "
          f"cores busy {prof.cores_busy:.2f})")
    print(f"  {'op':<58} {'self ms/step':>12} {'of step':>8} {'calls/step':>10}")
    for name, secs, calls in prof.top(12):
        print(f"  {name[:58]:<58} {secs * 1e3:12.2f} {secs / prof.step:8.1%} {calls:10d}")
    print("  shares: " + " | ".join(f"{name} {prof.share(name):.0%} ({_ms(prof.seconds[name])})" for name in SHARES)
          + f"; matmul-like (matmul + attention) {prof.share('matmul') + prof.share('attention'):.0%}")


# --- the command line -----------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_profile(args: argparse.Namespace, device: torch.device, peaks: dict[str, float]) -> None:
    chosen = args.variants if args.variants is not None else parse_variants("bf16,bf16+eager-attn")
    variants = [parse_variant("fp32"), *chosen]
    profiles = {}
    for v in variants:
        batch = v.batch or args.batch
        profiles[v.name] = profile_steps(make_step(args.model, batch, device, v), args.steps)
        print_profile(f"{v.name} step of {args.model}, batch {batch}", profiles[v.name], batch)
    fp32 = profiles["fp32"]
    print(f"\nconclusion for {args.model} under the profiler (matmul peaks: bf16 {peaks['bf16'] / peaks['fp32']:.1f}x "
          f"fp32); fp32 step {_ms(fp32.step)}, of which matmuls {_ms(fp32.seconds['matmul'])}, attention "
          f"{_ms(fp32.seconds['attention'])}, the optimiser {_ms(fp32.seconds['optimizer'])}:")
    for v in variants[1:]:
        prof = profiles[v.name]
        speed = fp32.step / args.batch / (prof.step / (v.batch or args.batch))
        line = f"  {v.name}: {speed:.2f}x fp32 in images/s"
        if v.batch is None:  # per-op comparisons need the same batch
            change = {op: prof.ops[op][0] - fp32.ops.get(op, (0.0, 0))[0] for op in prof.ops}
            op = max(change, key=lambda k: abs(change[k]))
            line += (f"; matmuls {_ms(prof.seconds['matmul'])}, attention {_ms(prof.seconds['attention'])}, casts "
                     f"{_ms(prof.seconds['casts'])} ({prof.share('casts'):.0%} of its step), softmax/norm/gelu "
                     f"{_ms(prof.seconds['softmax/norm/gelu'])} (fp32: {_ms(fp32.seconds['softmax/norm/gelu'])}), "
                     f"the optimiser {_ms(prof.seconds['optimizer'])}; the largest change: {op} "
                     f"{'+' if change[op] > 0 else ''}{_ms(change[op])}")
        print(line)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if abs(ms) >= 100 else f"{ms:.2f} ms"


def run_timings(args: argparse.Namespace, device: torch.device, peaks: dict[str, float]) -> None:
    if not args.no_vitlab_loop:
        amp = autocast_dtype("auto", device)
        data.cifar10("train"), data.cifar10("test")  # decode once, outside the timings
        ours, bare = [], []
        for _ in range(args.repeats):
            ours.append(vitlab_loop(args.model, args.batch, args.steps, device))
            bare.append(bare_loop(args.model, args.batch, args.steps, device, amp))
        ours_med, bare_med = statistics.median(ours), statistics.median(bare)
        print(f"vitlab loop: {ours_med:8.1f} images/s   (runs: {', '.join(f'{v:.0f}' for v in ours)})")
        print(f"bare loop:   {bare_med:8.1f} images/s   (runs: {', '.join(f'{v:.0f}' for v in bare)})")
        print(f"ratio vitlab/bare: {ours_med / bare_med:.3f}  (target >= 0.95)")

    flops = flops_per_image(args.model, device)
    chosen = args.variants if args.variants is not None else parse_variants("bf16,bf16+eager-attn,fused,batch256")
    variants = [parse_variant("fp32"), *chosen]
    steps = {v.name: make_step(args.model, v.batch or args.batch, device, v) for v in variants}
    timings: dict[str, list[Timing]] = defaultdict(list)
    for _ in range(args.repeats):  # alternating, so a slower spell of the machine hits all variants
        for v in variants:
            timings[v.name].append(time_steps(steps[v.name], v.batch or args.batch, args.steps, device))
    speed = {name: statistics.median(t.images_per_second for t in runs) for name, runs in timings.items()}
    print(f"\ntraining step of {args.model}: {flops / 1e6:.1f} MFLOP/image (forward + backward), "
          f"{args.steps} steps x {args.repeats}, medians")
    print(f"  {'variant':<18} {'batch':>5} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'x fp32':>7} "
          f"{'loss':>8} {'cores busy':>10}")
    for v in variants:
        runs = timings[v.name]
        peak = peaks["bf16" if v.amp == torch.bfloat16 else "fp32"]
        busy = statistics.median(t.cores_busy for t in runs)
        print(f"  {v.name:<18} {v.batch or args.batch:5d} {speed[v.name]:9.1f} {speed[v.name] * flops / 1e9:8.1f} "
              f"{speed[v.name] * flops / 1e9 / peak:8.1%} {speed[v.name] / speed['fp32']:7.2f} {runs[-1].loss:8.4f} "
              f"{busy:10.2f}")
    if device.type == "cuda":
        gpu_peak = next((p for k, p in PEAK_BF16.items() if k in torch.cuda.get_device_name(device)), None)
        if gpu_peak:
            print(f"MFU of the fastest variant: {max(speed.values()) * flops / gpu_peak:.1%} of the nominal bf16 peak")
    fastest = max(speed, key=speed.get)
    parts = [f"{name} {speed[name] / speed['fp32']:.2f}x fp32" for name in speed if name != "fp32"]
    if "bf16" in speed:
        parts.append(f"fp32 at {speed['fp32'] * flops / 1e9 / peaks['fp32']:.0%} of its matmul peak, "
                     f"bf16 at {speed['bf16'] * flops / 1e9 / peaks['bf16']:.0%} of its")
    print(f"\nconclusion for {args.model}: " + "; ".join(parts)
          + (f"; fastest: {fastest}" if fastest != "fp32" else "; fp32 stays the fastest"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_c10", choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed (or profiled) steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", type=parse_variants, default=None,
                        help="comma-separated variants measured against fp32 (default: "
                             "bf16,bf16+eager-attn,fused,batch256; with --profile: bf16,bf16+eager-attn)")
    parser.add_argument("--no-vitlab-loop", action="store_true", help="skip vitlab's loop against the bare one")
    parser.add_argument("--profile", action="store_true", help="profile fp32 and bf16 steps instead of timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = settings.default_device()
    peaks = {name: matmul_gflops(dtype, device) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"device: {hardware(device)} (torch uses {torch.get_num_threads()}), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; model {args.model}, batch {args.batch}")
    print(f"matmul peak (2048x2048): fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s "
          f"({peaks['bf16'] / peaks['fp32']:.2f}x)")
    (run_profile if args.profile else run_timings)(args, device, peaks)


if __name__ == "__main__":
    main()
