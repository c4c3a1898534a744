"""Compare what models learn, layer by layer: few-shot linear probes and CKA.

* :func:`fewshot_probes` fits big_vision's closed-form ridge probe (paper Fig. 4 and
  Appendix D.2) on frozen features of chosen layers: class token and mean of patch tokens
  for ViT blocks, global-average-pooled maps for ResNet stages, and what the classifier
  head reads (``"pre_logits"``). Images and labels are arguments: compare loads no data.
* :func:`cka_matrix` measures linear CKA between every pair of layers of two models
  (Raghu et al. 2021, "Do Vision Transformers See Like Convolutional Neural Networks?"),
  accumulated over minibatches so thousands of images fit in memory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .. import data
from . import metrics
from .features import layer_features, layer_hooks, pool, pre_logits, representation_layers
from .capture import LayerMap, resolve_layers
from ..models import preprocess
from ..records import ProbeRecord

#: Shots per class of the paper's few-shot evaluations that fit CIFAR-10.
SHOTS = (1, 5, 10, 25)

#: The ``layers`` entry of :func:`fewshot_probes` for what the classifier head reads.
PRE_LOGITS = "pre_logits"

# (layer name, depth, pooling) -> (N, features)
_Reps = dict[tuple[str, int, str], torch.Tensor]


def model_family(model: nn.Module) -> str:
    """``"hybrid"`` for a ViT embedding a CNN's feature map, ``"vit"`` for other models with transformer
    ``blocks``, else ``"resnet"``."""
    if not hasattr(model, "blocks"):
        return "resnet"
    return "hybrid" if metrics.is_hybrid(model) else "vit"


def _split_layers(model: nn.Module, layers: Sequence[int | str] | None) -> tuple[list[int], bool]:
    """``layers`` as sorted representation-layer indices, and whether ``"pre_logits"`` is among them."""
    count = len(representation_layers(model))  # fails early for models without layer information
    if layers is None:
        return list(range(count)), False
    bad = [x for x in layers if isinstance(x, str) and x != PRE_LOGITS]
    if bad:
        raise ValueError(f"layers are indices into representation_layers or {PRE_LOGITS!r}, got {bad}")
    return resolve_layers(count, [x for x in layers if x != PRE_LOGITS], what="layers"), PRE_LOGITS in layers


def _representations(model: nn.Module, images: torch.Tensor, batch_size: int, indices: Sequence[int],
                     head: bool) -> _Reps:
    """Pooled features of the layers ``indices`` (and of ``pre_logits`` if ``head``) for ``images``."""
    reps: _Reps = {}
    if indices:
        feats = layer_features(model, images, batch_size, indices)
        reps.update({(feats.names[i], i, how): v for (how, i), v in feats.items()})
    if head:
        depth = len(representation_layers(model))  # after the last layer
        reps[PRE_LOGITS, depth, "head"] = pre_logits(model, images, batch_size)
    return reps


def _check_probe_args(train_labels: torch.Tensor, classes: int, shots: Sequence[int], seeds: Sequence[int]) -> None:
    if not shots or min(shots) < 1 or max(shots) * classes > len(train_labels):
        raise ValueError(f"shots must be between 1 and {len(train_labels) // classes} per class, got {list(shots)}")
    if not seeds:
        raise ValueError("give at least one seed")


def fewshot_probes(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                   test_images: torch.Tensor, test_labels: torch.Tensor, shots: Sequence[int] = SHOTS,
                   seeds: Sequence[int] = (0, 1, 2), l2: float = metrics.FEWSHOT_L2, name: str = "",
                   family: str | None = None, batch_size: int = 250,
                   layers: Sequence[int | str] | None = None) -> list[ProbeRecord]:
    """Few-shot accuracy of a ridge probe on layers of ``model``.

    For each seed, ``k`` training images per class are drawn from ``train_images`` for
    every ``k`` in ``shots`` (:func:`vitlab.data.stratified_subset`, nested: the 5-shot set
    holds the 1-shot set, as in big_vision); every probe is scored on all ``test_images``.

    Args:
        train_images, test_images: uint8 images (N, 3, H, W); labels (N,) in 0..classes-1.
        name: the ``model`` of the records; family: their ``family`` (default :func:`model_family`).
        layers: indices into :func:`~vitlab.analysis.features.representation_layers` (negative from
            the last) and/or ``"pre_logits"`` (what the classifier head reads); default every layer.

    Returns:
        One :class:`~vitlab.records.ProbeRecord` per (layer, pooling, shots, seed).
    """
    classes = int(train_labels.max()) + 1
    _check_probe_args(train_labels, classes, shots, seeds)
    indices, head = _split_layers(model, layers)
    picks = {(s, k): data.stratified_subset(train_labels, k * classes, s) for s in seeds for k in shots}
    needed = torch.unique(torch.cat(list(picks.values())))  # sorted; every image needed, once
    where = torch.full((len(train_labels),), -1, dtype=torch.long)
    where[needed] = torch.arange(len(needed))
    train_reps = _representations(model, train_images[needed], batch_size, indices, head)
    test_reps = _representations(model, test_images, batch_size, indices, head)
    family = family or model_family(model)
    records = []
    for (layer, depth, how), feats in train_reps.items():
        for (seed, k), idx in picks.items():
            acc = metrics.fewshot_accuracy(feats[where[idx]], train_labels[idx], test_reps[layer, depth, how],
                                           test_labels, classes, l2)
            records.append(ProbeRecord(model=name, family=family, layer=layer, depth=depth, pooling=how,
                                       shots=k, seed=seed, accuracy=acc))
    return records


def _flatten(outputs: LayerMap, prefix: int, representation: str) -> list[torch.Tensor]:
    if representation == "full":
        return [out.flatten(1).float() for out in outputs.values()]  # (B, tokens x D) or (B, C x H x W)
    # Pooled: mean of patch tokens for ViTs, which compares like for like with a CNN's GAP.
    pooled = [pool(out, prefix) for out in outputs.values()]
    return [(p["mean"] if "mean" in p else p["gap"]).float() for p in pooled]  # (B, D) or (B, C)


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
    same = model_b is model_a
    with layer_hooks(model_a) as out_a, contextlib.nullcontext(out_a) if same else layer_hooks(model_b) as out_b:
        for i in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[i : i + batch_size]
            model_a(preprocess(model_a, batch))
            if not same:
                model_b(preprocess(model_b, batch))
            acc.update(_flatten(out_a, prefix_a, representation), _flatten(out_b, prefix_b, representation))
    return acc.compute(), names_a, names_b
