"""Compare what models learn, layer by layer: few-shot linear probes and CKA.

* :func:`fewshot_probes` fits big_vision's closed-form ridge probe (paper Fig. 4 and
  Appendix D.2) on frozen features of every layer: class token and mean of patch tokens
  for ViT blocks, global-average-pooled maps for ResNet stages.
* :func:`cka_matrix` measures linear CKA between every pair of layers of two models
  (Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural Networks?"),
  accumulated over minibatches so thousands of images fit in memory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import data, metrics
from .capture import layer_features, layer_hooks, pool, representation_layers
from .models import preprocess

#: Shots per class of the paper's few-shot evaluations that fit CIFAR-10.
SHOTS = (1, 5, 10, 25)


def fewshot_probes(model: nn.Module, shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2),
                   test_size: int = 2000, l2: float = metrics.FEWSHOT_L2, name: str = "",
                   batch_size: int = 250, layers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Few-shot accuracy of a ridge probe on every layer of ``model``, on CIFAR-10.

    For each seed, ``k`` training images per class are drawn for every ``k`` in
    ``shots`` (nested: the 5-shot set holds the 1-shot set, as in big_vision); probes
    are scored on ``test_size`` class-stratified test images (the same for all).
    ``layers`` restricts the probes to these module names (default: every layer).

    Returns:
        One record per (layer, pooling, shots, seed): ``model`` (``name``), ``layer``
        (module name), ``depth`` (layer index), ``pooling`` (``cls``, ``mean`` or ``gap``),
        ``shots``, ``seed`` and ``accuracy`` (a fraction).
    """
    train_images, train_labels = data.cifar10("train")
    test_images, test_labels = data.cifar10("test")
    classes = len(data.CLASSES)
    if not shots or min(shots) < 1 or max(shots) * classes > len(train_labels):
        raise ValueError(f"shots must be between 1 and {len(train_labels) // classes} per class, got {list(shots)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if not classes <= test_size <= len(test_labels):
        raise ValueError(f"test_size must be in {classes}..{len(test_labels)}, got {test_size}")
    everything = representation_layers(model)  # fails early for models without layer information
    unknown = sorted(set(layers or ()) - set(everything))
    if unknown:
        raise ValueError(f"{type(model).__name__} has no layers {unknown}; its layers are {everything}")
    picks = {(s, k): data.stratified_subset(train_labels, k * classes, s) for s in seeds for k in shots}
    pool_idx = torch.unique(torch.cat(list(picks.values())))  # sorted; every image needed, once
    where = torch.full((len(train_labels),), -1, dtype=torch.long)
    where[pool_idx] = torch.arange(len(pool_idx))
    test_idx = data.stratified_subset(test_labels, test_size, 0)
    train_feats = layer_features(model, train_images[pool_idx], batch_size, layers)
    test_feats = layer_features(model, test_images[test_idx], batch_size, layers)
    y_test = test_labels[test_idx]
    records = []
    for (layer, how), feats in train_feats.items():
        for (seed, k), idx in picks.items():
            acc = metrics.fewshot_accuracy(feats[where[idx]], train_labels[idx], test_feats[(layer, how)],
                                           y_test, classes, l2)
            records.append(dict(model=name, layer=layer, depth=everything.index(layer), pooling=how,
                                shots=k, seed=seed, accuracy=acc))
    return records


def _representations(outputs: dict[str, torch.Tensor], names: Sequence[str], prefix: int,
                     representation: str) -> list[torch.Tensor]:
    if representation == "full":
        return [outputs[n].flatten(1).float() for n in names]  # (B, tokens x D) or (B, C x H x W)
    # Pooled: mean of patch tokens for ViTs, which compares like for like with a CNN's GAP.
    pooled = [pool(outputs[n], prefix) for n in names]
    return [(p["mean"] if "mean" in p else p["gap"]).float() for p in pooled]


@torch.no_grad()
def cka_matrix(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, batch_size: int = 250,
               representation: str = "full") -> tuple[torch.Tensor, list[str], list[str]]:
    """Minibatch linear CKA between every layer of ``model_a`` and every layer of ``model_b``.

    Args:
        images: uint8 images (N, 3, H, W); N is cut into ``N // batch_size`` batches of
            ``batch_size`` (a remainder is dropped, so every batch weighs the same).
        representation: ``"full"`` compares whole layer outputs (all tokens, or whole
            feature maps), as Raghu et al. do; ``"pooled"`` compares mean patch tokens of
            ViT blocks and globally averaged maps of ResNet stages.

    Returns:
        ``(cka (layers_a, layers_b), layer names of a, layer names of b)``. Pass the same
        model twice for its self-similarity (computed with one forward per batch).
    """
    if representation not in ("full", "pooled"):
        raise ValueError(f"representation must be 'full' or 'pooled', got {representation!r}")
    if not 4 <= batch_size <= len(images):
        raise ValueError(f"batch_size must be in 4..{len(images)} (the number of images), got {batch_size}")
    names_a, names_b = representation_layers(model_a), representation_layers(model_b)
    prefix_a = int(getattr(model_a, "num_prefix_tokens", 0))
    prefix_b = int(getattr(model_b, "num_prefix_tokens", 0))
    acc = metrics.MinibatchCKA(len(names_a), len(names_b))
    with layer_hooks(model_a) as out_a, layer_hooks(model_b) if model_b is not model_a else contextlib.nullcontext(out_a) as out_b:
        for i in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[i : i + batch_size]
            model_a(preprocess(model_a, batch))
            if model_b is not model_a:
                model_b(preprocess(model_b, batch))
            acc.update(_representations(out_a, names_a, prefix_a, representation),
                       _representations(out_b, names_b, prefix_b, representation))
    return acc.compute(), names_a, names_b


def mean_over_seeds(records: list[dict[str, Any]], keys: Sequence[str], value: str) -> list[dict[str, Any]]:
    """Group ``records`` by ``keys`` and give each group's mean, standard deviation and count of ``value``."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r[value]))
    out = []
    for key, values in groups.items():
        t = torch.tensor(values, dtype=torch.float64)
        out.append(dict(zip(keys, key), mean=float(t.mean()), std=float(t.std()) if len(t) > 1 else 0.0, n=len(t)))
    return out
