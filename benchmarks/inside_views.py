"""Cost of the inside views: one inside view on the probe set against one full-data training epoch.

The trainer records an inside view (:mod:`vitlab.training.inside`) at the end of each epoch; it
should cost at most 5% of a full-data epoch, with a classifier's interventions (each head
mean-ablated, the logit lens) included. This times ``--repeats`` inside views, without and with
interventions, of
``--model`` on the probe set (256 class-balanced test images), and ``--steps`` training
steps (vitlab's own step, batch ``--batch``), and estimates the epoch of 50,000 images from
those steps' images/s. Prints both and the ratio.

    VITLAB_DATA=/path/to/data python benchmarks/inside_views.py --model vit_tiny_c10
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vitlab.training import inside
from vitlab.training.evaluators import InsideViewEvaluator
from vitlab.training.config import TRAIN_IMAGES, TrainConfig
from vitlab.training.loop import _setup, _step, batch
from vitlab.training.provenance import hardware


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_c10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="inside views timed (median)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(model=args.model, batch_size=args.batch)
    torch.manual_seed(0)
    from vitlab.models import build_model

    model = build_model({"zoo": args.model})
    run = _setup(config, Path(tempfile.mkdtemp()), model, device, 0, 1, steps_per_epoch=TRAIN_IMAGES // args.batch)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    run.net.train()
    for i in range(2 + args.steps):
        if i == 2:
            started = time.perf_counter()
        _step(run, *batch(run, x, y))  # as the loop does: augmented, then the objective's inputs
    per_second = args.steps * args.batch / (time.perf_counter() - started)
    epoch = TRAIN_IMAGES / per_second
    images, labels = inside.probe_set()
    reference = inside.probe_set(split="train")[0].to(device)
    plain = InsideViewEvaluator(images.to(device))  # a run that records no interventions (pre-training)
    full = InsideViewEvaluator(images.to(device), labels=labels, reference=reference)  # what a classifier's run does
    print(f"{args.model} on {hardware(device)}: training {per_second:.0f} images/s, full-data epoch "
          f"({TRAIN_IMAGES} images) about {epoch:.0f} s")
    for name, evaluator in (("inside view", plain), ("inside view with interventions", full)):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            evaluator.run(model, epoch=1, step=0)
            inside.inside_tensors(model, 1)
            times.append(time.perf_counter() - started)
        view = statistics.median(times)
        print(f"{name} on {len(images)} probe images: {view:.2f} s (median of {args.repeats}: "
              f"{', '.join(f'{t:.2f}' for t in times)}); ratio to the epoch {view / epoch:.4f} "
              f"({100 * view / epoch:.2f}%, target at most 5%)")

if __name__ == "__main__":
    main()
