"""Cost of the faithfulness scoreboard: deletion and insertion for every method under the three removals.

Target (issue 32): the full scoreboard of one model on 500 images (9 methods, deletion and insertion
with drop, mean and blur: about 800 forwards per image, plus Chefer's positive and negative
perturbation) in under 10 minutes on 2 CPU cores. This times
:func:`vitlab.analysis.faithfulness.faithfulness_analysis` on ``--images`` images with random maps
(the cost does not depend on the maps), with Chefer's protocol unless ``--no-chefer``, and projects
it to 500 images. Needs no data: the images are random.

    OMP_NUM_THREADS=2 python benchmarks/faithfulness.py --model vit_tiny_c10_e40 --images 256
"""
from __future__ import annotations

import argparse
import time

import torch

from vitlab import load_model
from vitlab.analysis import faithfulness
from vitlab.models.inputs import input_size
from vitlab.training.provenance import hardware

METHODS = 9  #: the issue's nine methods (random floor included)
TARGET_IMAGES, TARGET_SECONDS = 500, 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_c10_e40", help="any load_model spec")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--removals", default=",".join(faithfulness.REMOVALS), help="comma-separated")
    parser.add_argument("--no-chefer", action="store_true", help="deletion and insertion only")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=device).eval()
    removals = tuple(args.removals.split(","))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    size = input_size(model)
    images = torch.nn.functional.interpolate(images.float(), size=size).round().to(torch.uint8)
    grid = tuple(model.patch_embed.grid_size) if hasattr(model, "patch_embed") else (8, 8)
    maps = {f"method {i}": torch.rand(args.images, *grid, generator=gen) for i in range(METHODS)}
    cells = grid[0] * grid[1]
    print(f"{args.model} on {hardware(device)}, {args.images} random images, "
          f"{METHODS} methods x {len(removals)} removals, 16 steps, batch {args.batch_size}")
    chefer = not args.no_chefer
    per_image = faithfulness.forwards_per_image(METHODS, removals, 16, cells, chefer=chefer)
    started, cpu = time.perf_counter(), time.process_time()
    faithfulness.faithfulness_analysis(model, images, maps, removals=removals, batch_size=args.batch_size,
                                       chefer=chefer, progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rate = args.images / seconds
    what = "scoreboard with Chefer's protocol" if chefer else "deletion + insertion only"
    print(f"{what}: {per_image} forwards per image, {seconds:.1f} s, {rate:.2f} images/s "
          f"({rate * per_image:.0f} forwards/s); projected for {TARGET_IMAGES} images: "
          f"{TARGET_IMAGES / rate:.0f} s (target under {TARGET_SECONDS} s)")
    # CPU seconds show what a busy machine hides: on an idle one, wall time is about CPU time / threads used.
    print(f"process CPU time {cpu:.1f} s ({cpu / seconds:.2f} cores busy on average): "
          f"{TARGET_IMAGES * cpu / args.images:.0f} CPU seconds for {TARGET_IMAGES} images")

if __name__ == "__main__":
    main()
