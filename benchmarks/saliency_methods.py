"""Cost of each attribution method (vitlab.analysis.saliency) per image on one model.

Maps of the first ``--images`` CIFAR-10 test images (class-balanced order) by every method that applies, one at a time,
explaining the prediction; prints seconds per image and integrated gradients' worst convergence delta. Needs CIFAR-10
(``VITLAB_DATA``).

    VITLAB_DATA=/path/to/data python benchmarks/saliency_methods.py --model vit_tiny_c10_e40 --images 64
"""
from __future__ import annotations

import argparse
import time

import torch

from vitlab import data, load_model
from vitlab.analysis import saliency
from vitlab.training.provenance import hardware


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_c10_e40", help="any load_model spec")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=device).eval()
    images, labels = data.cifar10("test")
    images = images[data.stratified_order(labels)[: args.images]]
    print(f"{args.model} on {hardware(device)} ({torch.get_num_threads()} threads), {len(images)} test images, "
          f"batch {args.batch_size}")
    saliency.maps_analysis(model, images[:2], ["attention"])  # warm-up: first-call costs out of the timings
    for method in saliency.METHODS:
        if saliency.applicable(model, method) is not None:
            continue
        started = time.perf_counter()
        result = saliency.maps_analysis(model, images, [method], batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        extra = f"  worst IG delta {result.ig_delta:.2e}" if method == "integrated_gradients" else ""
        print(f"{method:22s} {1000 * seconds / len(images):8.2f} ms/image  ({seconds:.2f} s){extra}")


if __name__ == "__main__":
    main()
