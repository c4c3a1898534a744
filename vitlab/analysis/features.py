"""Layer-wise representations of ViTs and CNNs alike, for probes and CKA, addressed by index into
:func:`representation_layers` (negative from the last: ``feats["cls", -1]``)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .capture import LayerMap, resolve_layers, restoring
from ..models.inputs import check_images, check_input
from ..models import preprocess


def representation_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are ``model``'s layer-wise representations, from timm's ``feature_info``."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info listing its layers; vitlab reads "
                         "representations from timm models (zoo models, timm ViTs and ResNets)")
    return [f["module"] for f in info]


def pool(output: torch.Tensor, num_prefix_tokens: int) -> dict[str, torch.Tensor]:
    """One layer's output reduced to vectors per image, as in the paper's linear probes: ``"cls"`` (if there is a
    prefix token) and ``"mean"`` (of the patch tokens) of tokens (B, N, D), ``"gap"`` of maps (B, C, H, W)."""
    if output.ndim == 3:  # (B, D) each
        return ({"cls": output[:, 0]} if num_prefix_tokens else {}) | {"mean": output[:, num_prefix_tokens:].mean(1)}
    if output.ndim == 4:
        return {"gap": output.mean((2, 3))}  # (B, C)
    raise ValueError(f"cannot pool a layer output of shape {tuple(output.shape)}: expected (B, N, D) or (B, C, H, W)")


@contextlib.contextmanager
def layer_hooks(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[LayerMap]:
    """Record the outputs of ``layers`` (indices into :func:`representation_layers`, default all) of every forward
    (in eval mode, input checked) inside the ``with`` block into the returned layer map."""
    names = representation_layers(model)
    chosen = resolve_layers(len(names), layers, what="layers")
    modules = dict(model.named_modules())
    missing = [names[i] for i in chosen if names[i] not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no modules {missing}, though its feature_info lists them")
    outputs = LayerMap(len(names))
    with restoring(model):
        model.eval()
        model.register_forward_pre_hook(lambda _m, a, kw: check_input(model, a[0] if a else kw.get("x")),
                                        with_kwargs=True)
        for i in chosen:
            modules[names[i]].register_forward_hook(lambda _m, _a, out, i=i: outputs.record(i, out.detach()))
        yield outputs


class Features(Mapping):
    """Pooled layer representations keyed ``(pooling, layer)``, each (N, features) fp32 on the CPU; ``layer``
    indexes ``names`` (negative from the last), ``layers`` lists those held, ascending."""

    def __init__(self, names: Sequence[str], vectors: Mapping[tuple[str, int], torch.Tensor]):
        self.names = list(names)
        self._vectors = dict(sorted(vectors.items(), key=lambda kv: kv[0][1]))  # stable: poolings keep their order
        self.layers = sorted({layer for _, layer in self._vectors})

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        pooling, layer = key
        count = len(self.names)
        if not isinstance(layer, int) or not -count <= layer < count:
            raise KeyError(f"layer {layer!r} is outside the model's {count} layers {self.names}")
        if (pooling, layer % count) not in self._vectors:
            raise KeyError(f"no {pooling!r} features of layer {layer}; have {list(self._vectors)}")
        return self._vectors[pooling, layer % count]

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)


def _batches(model: nn.Module, images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``images`` cut into batches, checked first: a bad argument fails before any forward."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be uint8 (N, 3, H, W) with values 0..255, got {got}: features are read "
                        "from raw images, which vitlab.preprocess scales and normalises")
    check_images(model, images)
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size))


@torch.no_grad()
def layer_features(model: nn.Module, images: torch.Tensor, batch_size: int = 250,
                   layers: Sequence[int] | None = None) -> Features:
    """Pooled representations (:func:`pool`) of ``layers`` (default all) for uint8 ``images`` (N, 3, H, W)."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    batches = _batches(model, images, batch_size)
    parts: dict[tuple[str, int], list[torch.Tensor]] = {}
    with layer_hooks(model, layers) as outputs:
        for batch in batches:
            model(preprocess(model, batch))
            for layer, out in outputs.items():
                for how, vec in pool(out, prefix).items():
                    parts.setdefault((how, layer), []).append(vec.float().cpu())  # (B, features)
    return Features(representation_layers(model), {key: torch.cat(chunks) for key, chunks in parts.items()})


@torch.no_grad()
def pre_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """What the head reads (``forward_head(..., pre_logits=True)``) of uint8 ``images``: (N, features) fp32, CPU."""
    if not hasattr(model, "forward_head") or not hasattr(model, "forward_features"):
        raise ValueError(f"{type(model).__name__} has no forward_features/forward_head: vitlab reads the "
                         "pre-logits representation from timm models")
    batches = _batches(model, images, batch_size)
    parts = []
    with restoring(model):
        model.eval()
        for batch in batches:
            x = preprocess(model, batch)
            parts.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())  # (B, D)
    return torch.cat(parts)
