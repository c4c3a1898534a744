"""CIFAR-10 loading: first decode of the JPEGs into the cache vs later loads from it.

Decodes into a fresh temporary cache, then loads again from it; prints both times and
their ratio (target: a cached load of the 50,000 training images well under a second).

    VITLAB_DATA=../shared/data python benchmarks/data_cache.py
"""
import os
import tempfile
import time

from vitlab import data

with tempfile.TemporaryDirectory() as cache:
    os.environ["VITLAB_CACHE"] = cache
    for split in data.SPLITS:
        start = time.perf_counter()
        images, _ = data.cifar10(split)
        first = time.perf_counter() - start
        start = time.perf_counter()
        data.cifar10(split)
        cached = time.perf_counter() - start
        print(f"{split:5s} ({len(images):,} images): first load {first:6.2f} s, cached {cached:5.3f} s, "
              f"ratio {first / cached:.0f}x")
