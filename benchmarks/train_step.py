"""Training throughput: vitlab's loop against a bare hand-written loop on the same model.

Both train the same timm model (built by vitlab) with the same batch size, optimiser and
device; the bare loop reuses one pre-normalised batch and does nothing else, so it is an
upper bound. The two alternate ``--repeats`` times in one run and the medians are
compared. Target: vitlab at least 0.95x the bare loop's images/s. On a GPU it also
prints model-FLOPs utilisation, with FLOPs counted by ``torch.utils.flop_counter``.

    python benchmarks/train_step.py --model vit_tiny_c10 --batch 128 --steps 40
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vitlab import data, settings
from vitlab.models import build_model, preprocess
from vitlab.train import TrainConfig, autocast_dtype, hardware, param_groups, train

#: Dense bf16 peak of known GPUs, FLOP/s, for utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def bare_loop(model_name: str, batch: int, steps: int, device: torch.device, amp) -> float:
    """Images/s of a minimal AdamW loop on one fixed, already normalised batch."""
    torch.manual_seed(0)
    model = build_model({"zoo": model_name}).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=device.type == "cuda" or None)
    x = preprocess(model, torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8))
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step().item()  # the vitlab loop reads the loss every step too
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def vitlab_loop(model_name: str, batch: int, steps: int, device: torch.device) -> float:
    """Images/s that ``vitlab.train`` reports for one epoch of ``steps`` steps."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_name, subset_size=batch * steps, epochs=1, batch_size=batch, eval_size=100)
        return train(config, out, device=device, progress=False).record["images_per_second"]


def flops_per_image(model_name: str, device: torch.device) -> float:
    model = build_model({"zoo": model_name}).to(device)
    x = torch.randn(8, 3, 32, 32, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_c10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = settings.default_device()
    amp = autocast_dtype("auto", device)
    data.cifar10("train"), data.cifar10("test")  # decode once, outside the timings
    ours, bare = [], []
    for _ in range(args.repeats):
        ours.append(vitlab_loop(args.model, args.batch, args.steps, device))
        bare.append(bare_loop(args.model, args.batch, args.steps, device, amp))
    ours_med, bare_med = statistics.median(ours), statistics.median(bare)
    print(f"device: {hardware(device)}; model {args.model}, batch {args.batch}, {args.steps} steps x {args.repeats}")
    print(f"vitlab loop: {ours_med:8.1f} images/s   (runs: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"bare loop:   {bare_med:8.1f} images/s   (runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"ratio vitlab/bare: {ours_med / bare_med:.3f}  (target >= 0.95)")
    if device.type == "cuda":
        flops = flops_per_image(args.model, device)
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name(device)), None)
        achieved = flops * ours_med
        print(f"model FLOPs: {flops / 1e9:.3f} GFLOP/image (fwd+bwd); achieved {achieved / 1e12:.1f} TFLOP/s"
              + (f"; MFU {achieved / peak:.1%} of bf16 peak" if peak else ""))


if __name__ == "__main__":
    main()
