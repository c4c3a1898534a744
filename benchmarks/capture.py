"""Cost of vitlab.capture (module vitlab.analysis.capture), and memory of streaming attention statistics.

Prints, in one run (targets in brackets):
  1. capture of all layers vs a plain forward with timm's default fused attention,
     ViT-S/16 at 224 px, batch 8  [at most 1.10x]; maps are computed when first read,
     so it also times capture followed by reading all 12 maps;
  2. the same capture vs timm.utils.AttentionExtract on a model built with fused
     attention off (timm's way to get the maps);
  3. peak resident memory (sampled) of streaming mean attention distance over 10,000 CIFAR-10
     test images vs over 1,000, each in a fresh process  [equal within 10%].

    python benchmarks/capture.py
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import threading
import time

import timm
import torch
from timm.utils import AttentionExtract

from vitlab import data, settings
from vitlab.analysis.capture import capture
from vitlab.analysis.distance import head_statistics
from vitlab.models import load_model


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in turn so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def capture_cost(batch: int, repeats: int) -> None:
    device = settings.default_device()
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    timm.layers.set_fused_attn(False)
    try:
        unfused = timm.create_model("vit_small_patch16_224", pretrained=False).to(device).eval()
    finally:
        timm.layers.set_fused_attn(True)
    unfused.load_state_dict(model.state_dict())
    extract = AttentionExtract(unfused, method="fx")
    with torch.no_grad():
        t = _interleaved({"plain": lambda: model(x), "ours": lambda: capture(model, x),
                          "all": lambda: list(capture(model, x).attn.values()),
                          "theirs": lambda: extract(x)}, repeats)
    plain, ours, every, theirs = t["plain"], t["ours"], t["all"], t["theirs"]
    print(f"ViT-S/16, 224 px, batch {batch}, {device}, median of {repeats}:")
    print(f"  plain forward (fused attention): {plain * 1e3:8.1f} ms")
    print(f"  vitlab.capture, all 12 layers:   {ours * 1e3:8.1f} ms   ratio {ours / plain:.3f}  (target <= 1.10)")
    print(f"  ... and reading all 12 maps:     {every * 1e3:8.1f} ms   ratio {every / plain:.3f}")
    print(f"  timm AttentionExtract (unfused): {theirs * 1e3:8.1f} ms   ratio {theirs / plain:.3f}; "
          f"vitlab with all maps / timm {every / theirs:.3f}")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def stream_worker(images: int) -> None:
    """Run in a child process: stream statistics over ``images`` test images and print the
    resident memory before and the peak during streaming (sampled every 2 ms)."""
    x, y = data.cifar10("test")
    x = x[data.stratified_order(y)]  # the test set may be stored sorted by class
    model = load_model("vit_tiny_c10", device="cpu")
    head_statistics(model, x[:128], batch_size=128)  # warm-up: allocator pools, lazy inits
    before, peak, done = _rss_kib(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    head_statistics(model, x[:images], batch_size=128)
    done.set()
    sampler.join()
    print(f"{images} {before} {max(peak[0], _rss_kib())}")


def streaming_memory() -> None:
    data.cifar10("test")  # make sure the decoded cache exists before measuring
    rows = {}
    for n in (1000, 10000):
        out = subprocess.run([sys.executable, __file__, "--stream-worker", str(n)], capture_output=True, text=True,
                             check=True).stdout.split()
        rows[n] = (int(out[1]), int(out[2]))
    print("streaming attention distance + entropy, vit_tiny_c10, batch 128 (resident memory, KiB):")
    for n, (before, peak) in rows.items():
        print(f"  {n:6d} images: peak {peak:9d}, growth while streaming {peak - before:7d}")
    print(f"  peak ratio 10,000 / 1,000 images: {rows[10000][1] / rows[1000][1]:.3f}  (target within 1.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stream-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_worker:
        stream_worker(args.stream_worker)
    else:
        capture_cost(args.batch, args.repeats)
        streaming_memory()
