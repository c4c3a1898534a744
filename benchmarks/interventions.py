"""Cost of the intervention analyses on one model: the head-ablation matrix and the others.

Target: the full head-ablation matrix of ``vit_tiny_c10`` (6 x 4 heads, mean ablation, 1,000
test images) in under 2 minutes on 2 CPU cores. Each head's ablation runs from the cached input
of its block; this prints that time against the naive cost (one whole forward per head, timed
here on the same images), then the other analyses' costs. Needs CIFAR-10 (``VITLAB_DATA``).

    VITLAB_DATA=/path/to/data python benchmarks/interventions.py --model vit_tiny_c10_e40
"""
from __future__ import annotations

import argparse
import time

import torch

from vitlab import load_model
from vitlab.analysis import ablation, lens, patching, residual
from vitlab.training import inside
from vitlab.training.provenance import hardware


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_c10_e40", help="any load_model spec")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=32, help="images for activation patching")
    parser.add_argument("--min-gap", type=float, default=patching.MIN_GAP, help="patching's min_gap (logits)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=device).eval()
    images, labels = inside.probe_set(args.images)
    reference = inside.probe_set(256, split="train")[0]
    s = residual.stream(model)
    print(f"{args.model} ({s.depth} layers x {s.heads} heads) on {hardware(device)}, {len(images)} test images")
    started = time.perf_counter()
    matrix = ablation.ablation_analysis(model, images, labels, reference=reference, top_k=0, branches=False)
    cached = time.perf_counter() - started
    with torch.no_grad():  # the naive way, for the ratio: a whole forward for one head
        started = time.perf_counter()
        with residual.edited(model, {(0, "head"): residual.replace_heads([0], s.head_dim)}):
            for start in range(0, len(images), 250):
                model(residual.model_input(model, images[start:start + 250]))
        per_head = time.perf_counter() - started
    naive = per_head * s.depth * s.heads
    print(f"head-ablation matrix (mean ablation, means over {len(reference)} training images): {cached:.1f} s "
          f"(target under 120 s); naive whole forwards would take about {naive:.1f} s: ratio {cached / naive:.2f}")
    full = ablation.ablation_analysis(model, images, labels, reference=reference)
    print(f"with whole attention and MLP branches and the top {ablation.TOP_K} heads together: {full.seconds:.1f} s")
    few, gap = (images[:args.pairs], labels[:args.pairs]), args.min_gap
    for name, result in (("logit lens", lens.logit_lens_analysis(model, images, labels)),
                         ("direct logit attribution", lens.attribution_analysis(model, images, labels)),
                         (f"patching the residual stream ({args.pairs} images)",
                          patching.patching_analysis(model, *few, min_gap=gap)),
                         (f"patching each head ({args.pairs} images)",
                          patching.patching_analysis(model, *few, what="head", min_gap=gap))):
        print(f"{name}: {result.seconds:.1f} s")
    print(f"accuracy on these images {matrix.accuracy:.3f}; the matrix agrees with the full analysis: "
          f"{bool(torch.equal(matrix.head_accuracy, full.head_accuracy))}")


if __name__ == "__main__":
    main()
