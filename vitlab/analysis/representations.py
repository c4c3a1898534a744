"""Compare what models learn, layer by layer: few-shot linear probes (big_vision's closed-form ridge probe, paper Fig.
4) and minibatch linear CKA between every pair of layers of two models (Raghu et al. 2021)."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .. import data
from . import metrics
from .features import layer_features, layer_hooks, pool, pre_logits, representation_layers
from .capture import LayerMap, resolve_layers
from ..models import preprocess
from ..records import FAMILY_ORDER, ProbeRecord

#: The model families vitlab tells apart (:func:`model_family`).
FAMILIES = tuple(FAMILY_ORDER)


def _check_features(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must be (n, features), got shape {tuple(x.shape)}")
    if x.shape[0] < 4:
        raise ValueError(f"CKA needs at least 4 samples, {name} has {x.shape[0]}")
    x = x.detach().double()
    if not bool(x.isfinite().all()):
        counts = {"NaN": int(x.isnan().sum()), "inf": int(x.isinf().sum())}
        kinds = " and ".join(f"{k} ({n} of {x.numel()} values)" for k, n in counts.items() if n)
        raise ValueError(f"{name} contains {kinds}, so its CKA is undefined: check the images and model "
                         "that gave these features")
    if torch.all(x.std(0) == 0):
        raise ValueError(f"{name} is constant across samples, so its CKA is undefined (0/0)")
    return x


def _check_same_rows(x: torch.Tensor, y: torch.Tensor, x_name: str = "x", y_name: str = "y") -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} and {y_name} must hold the same examples: {x.shape[0]} vs {y.shape[0]} rows")


def _gram(features: torch.Tensor) -> torch.Tensor:
    return (features @ features.T).cpu()


def _hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC of two (n, n) Gram matrices; biased (Gretton 2005) or unbiased (Song 2012)."""
    n = k.shape[0]
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
        return torch.sum((h @ k @ h) * l) / (n - 1) ** 2
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    kl = k @ l
    value = torch.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)
    return value / (n * (n - 3))


def cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of x (n, p) and y (n, q); ``unbiased``: Nguyen et al.'s HSIC estimator."""
    x, y = _check_features(x, "x"), _check_features(y, "y")
    _check_same_rows(x, y)
    k, l = x @ x.T, y @ y.T
    denom = torch.sqrt(_hsic(k, k, unbiased) * _hsic(l, l, unbiased))
    if not denom > 0:
        raise ValueError("CKA is undefined here: a representation has zero (estimated) self-similarity")
    return float(_hsic(k, l, unbiased) / denom)


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) of every pair of two layer lists, HSICs summed over minibatches."""

    def __init__(self, num_x: int, num_y: int):
        self.xy = torch.zeros(num_x, num_y, dtype=torch.float64)
        self.xx = torch.zeros(num_x, dtype=torch.float64)
        self.yy = torch.zeros(num_y, dtype=torch.float64)
        self.batches = 0

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        """Add one minibatch: per layer a (b, features) tensor, the same b examples throughout."""
        if len(xs) != len(self.xx) or len(ys) != len(self.yy):
            raise ValueError(f"expected {len(self.xx)} x-layers and {len(self.yy)} y-layers, got {len(xs)}, {len(ys)}")
        xs = [_check_features(x.flatten(1), f"xs[{i}]") for i, x in enumerate(xs)]
        ys = [_check_features(y.flatten(1), f"ys[{j}]") for j, y in enumerate(ys)]
        for name, z in [*((f"xs[{i}]", x) for i, x in enumerate(xs)), *((f"ys[{j}]", y) for j, y in enumerate(ys))]:
            _check_same_rows(xs[0], z, "xs[0]", name)
        gx = [_gram(x) for x in xs]  # (b, b) each
        gy = [_gram(y) for y in ys]
        for i, k in enumerate(gx):
            self.xx[i] += _hsic(k, k, True)
            for j, l in enumerate(gy):
                self.xy[i, j] += _hsic(k, l, True)
        for j, l in enumerate(gy):
            self.yy[j] += _hsic(l, l, True)
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """(num_x, num_y) CKA over all minibatches seen so far."""
        if not self.batches:
            raise ValueError("no minibatch was added")
        return (self.xy / torch.sqrt(self.xx[:, None] * self.yy[None, :])).float()


# Weight of the constant feature that stands for the bias: large, so the ridge penalty barely touches it (big_vision).
_FEWSHOT_BIAS = 100.0
#: big_vision's default ridge strength for few-shot evaluation.
FEWSHOT_L2 = 2.0**10


def _ridge_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                      l2: float = FEWSHOT_L2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """big_vision's float64 ridge of standardised (n, d) onto +-1 targets: ``(weights (d + 1, C), mean, std)``."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    x = x.detach().double().cpu()
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-5
    a = torch.cat([(x - mean) / std, torch.full((len(x), 1), _FEWSHOT_BIAS, dtype=x.dtype)], 1)  # (n, d+1)
    targets = 2.0 * F.one_hot(y.long().cpu(), num_classes).double() - 1.0  # (n, C)
    n, d = a.shape
    if n >= d:
        w = torch.linalg.solve(a.T @ a + l2 * torch.eye(d, dtype=a.dtype), a.T @ targets)
    else:
        w = a.T @ torch.linalg.solve(a @ a.T + l2 * torch.eye(n, dtype=a.dtype), targets)
    return w, mean, std


def _ridge_predict(model: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Class predictions (n,) of a :func:`_ridge_classifier` for features ``x`` (n, d)."""
    w, mean, std = model
    a = torch.cat([(x.detach().double().cpu() - mean) / std, torch.full((len(x), 1), _FEWSHOT_BIAS, dtype=w.dtype)], 1)
    return (a @ w).argmax(1)


def _fewshot_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                      num_classes: int, l2: float = FEWSHOT_L2) -> float:
    """Test accuracy (a fraction) of the ridge probe fitted on ``train_x``/``train_y``."""
    probe = _ridge_classifier(train_x, train_y, num_classes, l2)
    return float((_ridge_predict(probe, test_x) == test_y.cpu()).double().mean())


#: Shots per class of the paper's few-shot evaluations that fit CIFAR-10.
SHOTS = (1, 5, 10, 25)

#: The ``layers`` entry of :func:`fewshot_probes` for what the classifier head reads.
PRE_LOGITS = "pre_logits"

# (layer name, depth, pooling) -> (N, features)
_Reps = dict[tuple[str, int, str], torch.Tensor]


def model_family(model: nn.Module) -> str:
    """``model``'s family from what it states: a vitlab architecture's record (``vitlab_arch``), else its class: timm's
    ``VisionTransformer`` is ``"hybrid"`` when its patch embedding runs a CNN, else ``"vit"``; timm's ``ResNet`` and
    ``ResNetV2`` are ``"resnet"``. Any other model is refused in one line, not guessed."""
    record = getattr(model, "vitlab_arch", None)
    config = record.get("config") if isinstance(record, dict) and "zoo" in record else None
    if isinstance(config, dict) and config.get("family") in FAMILIES:
        return config["family"]
    if isinstance(model, VisionTransformer):
        return "hybrid" if metrics.is_hybrid(model) else "vit"
    if isinstance(model, (ResNet, ResNetV2)):
        return "resnet"
    raise ValueError(f"cannot tell the family of {type(model).__name__} ({type(model).__module__}): vitlab knows "
                     "'vit' and 'hybrid' (timm's VisionTransformer, a hybrid's patch embedding running a CNN) and "
                     "'resnet' (timm's ResNet, ResNetV2); pass family= to name it")


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


def fewshot_probes(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
                   test_images: torch.Tensor, test_labels: torch.Tensor, shots: Sequence[int] = SHOTS,
                   seeds: Sequence[int] = (0, 1, 2), l2: float = FEWSHOT_L2, name: str = "",
                   family: str | None = None, batch_size: int = 250,
                   layers: Sequence[int | str] | None = None) -> list[ProbeRecord]:
    """Few-shot accuracy of a ridge probe on ``layers`` (:func:`representation_layers` indices, ``"pre_logits"``): a
    :class:`~vitlab.records.ProbeRecord` per (layer, pooling, shots, seed), ``k`` stratified train images per class."""
    classes = int(train_labels.max()) + 1
    if not shots or min(shots) < 1 or max(shots) * classes > len(train_labels):
        raise ValueError(f"shots must be between 1 and {len(train_labels) // classes} per class, got {list(shots)}")
    if not seeds:
        raise ValueError("give at least one seed")
    indices, head = _split_layers(model, layers)
    family = family or model_family(model)  # a model of unknown family is refused before any forward
    picks = {(s, k): data.stratified_subset(train_labels, k * classes, s) for s in seeds for k in shots}
    needed = torch.unique(torch.cat(list(picks.values())))  # sorted; every image needed, once
    where = torch.full((len(train_labels),), -1, dtype=torch.long)
    where[needed] = torch.arange(len(needed))
    train_reps = _representations(model, train_images[needed], batch_size, indices, head)
    test_reps = _representations(model, test_images, batch_size, indices, head)
    records = []
    for (layer, depth, how), feats in train_reps.items():
        for (seed, k), idx in picks.items():
            acc = _fewshot_accuracy(feats[where[idx]], train_labels[idx], test_reps[layer, depth, how], test_labels,
                                    classes, l2)
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
    """Minibatch linear CKA between every layer of ``model_a`` and ``model_b`` over uint8 ``images`` (N, 3, H, W), a
    remainder dropped: ``(cka (layers_a, layers_b), names_a, names_b)``. ``representation``: ``"full"`` layer outputs
    (Raghu et al.) or ``"pooled"`` (mean patch tokens of ViT blocks, averaged maps of ResNet stages)."""
    if representation not in ("full", "pooled"):
        raise ValueError(f"representation must be 'full' or 'pooled', got {representation!r}")
    if not 4 <= batch_size <= len(images):
        raise ValueError(f"batch_size must be in 4..{len(images)} (the number of images), got {batch_size}")
    names_a, names_b = representation_layers(model_a), representation_layers(model_b)
    prefix_a, prefix_b = (int(getattr(m, "num_prefix_tokens", 0)) for m in (model_a, model_b))
    acc = MinibatchCKA(len(names_a), len(names_b))
    same = model_b is model_a
    with layer_hooks(model_a) as out_a, contextlib.nullcontext(out_a) if same else layer_hooks(model_b) as out_b:
        for i in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[i : i + batch_size]
            model_a(preprocess(model_a, batch))
            if not same:
                model_b(preprocess(model_b, batch))
            acc.update(_flatten(out_a, prefix_a, representation), _flatten(out_b, prefix_b, representation))
    return acc.compute(), names_a, names_b
