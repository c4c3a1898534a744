"""Capture a ViT's attention maps and hidden tokens in one forward pass.

timm computes attention with fused ``scaled_dot_product_attention`` by default, which
never materialises the attention probabilities, so plain hooks on the softmax see
nothing. vitlab reads them in one of two ways, per block:

* timm's standard ``Attention`` (ViT, DeiT, registers): hooks record the queries and
  keys (after ``q_norm``/``k_norm``) while the forward stays fused and untouched, and
  ``softmax(q k^T * scale)`` is computed when a map is first read. The forward costs
  what a plain one does, and maps nobody reads cost nothing.
* any other attention module with timm's ``fused_attn`` switch and an ``attn_drop``
  module: that module alone runs its explicit path and a hook on ``attn_drop`` records
  the probabilities (never timm's global switch).

On exit every flag, hook and train/eval mode is put back as it was.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import Attention
from torch import nn

from . import metrics
from .models import preprocess


class AttentionMaps(Mapping):
    """Block index -> post-softmax attention (B, heads, N, N), computed on first access."""

    def __init__(self):
        self._maps: dict[int, torch.Tensor] = {}
        self._qk: dict[int, tuple[torch.Tensor | None, torch.Tensor | None, float]] = {}

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self._maps:
            q, k, scale = self._qk.pop(layer)  # (B, heads, N, head_dim) each
            self._maps[layer] = torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)), dim=-1)
        return self._maps[layer]

    def __iter__(self):
        return iter(sorted(self._maps.keys() | self._qk.keys()))

    def __len__(self) -> int:
        return len(self._maps.keys() | self._qk.keys())


@dataclass
class Capture:
    """What one forward pass recorded.

    Attributes:
        attn: block index -> post-softmax attention (B, heads, N, N), N = prefix + patches.
        tokens: block index -> the block's output tokens (B, N, D).
        logits: the model's output (B, classes).
        grid: (rows, cols) of patches for this input size.
        patch_size: (height, width) of a patch in pixels.
        num_prefix_tokens: class, register and distillation tokens before the patches.
    """

    attn: AttentionMaps = field(default_factory=AttentionMaps)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    grid: tuple[int, int] = (0, 0)
    patch_size: tuple[int, int] = (0, 0)
    num_prefix_tokens: int = 0


def _standard(attn: nn.Module) -> bool:
    # Only timm's own forward is known to apply nothing (e.g. rotary embeddings) between
    # q_norm/k_norm and the attention product.
    return type(attn).forward is Attention.forward


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and all(
        _standard(getattr(b, "attn", None))
        or (hasattr(getattr(b, "attn", None), "fused_attn") and isinstance(getattr(b.attn, "attn_drop", None), nn.Module))
        for b in blocks
    )
    if not ok or getattr(model, "patch_embed", None) is None:
        raise ValueError(
            f"cannot read attention from {type(model).__name__}: vitlab.capture needs a timm "
            "VisionTransformer-style model (model.blocks[i].attn with fused_attn and attn_drop, and "
            "model.patch_embed), e.g. a zoo ViT or vit_small_patch16_224"
        )
    return blocks


def _layers(blocks: Sequence[nn.Module], layers: Sequence[int] | None) -> list[int]:
    depth = len(blocks)
    if layers is None:
        return list(range(depth))
    chosen = sorted({i % depth if -depth <= i < depth else i for i in layers})
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {depth} blocks (0..{depth - 1})")
    return chosen


_MISSING = object()


@contextlib.contextmanager
def hooks(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[Capture]:
    """Record attention and tokens of ``layers`` (block indices, default all) while open.

    Every forward inside the ``with`` block overwrites the returned :class:`Capture`.
    The model runs in eval mode inside; flags, hooks and modes are restored on exit.
    """
    blocks = _blocks(model)
    chosen = _layers(blocks, layers)
    cache = Capture(num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
                    patch_size=tuple(int(p) for p in model.patch_embed.patch_size))
    modes = {m: m.training for m in model.modules()}
    fused: dict[int, object] = {}
    handles = []

    def keep(store: dict, key):
        def hook(module, args, output):
            store[key] = output.detach()
        return hook

    def keep_qk(i: int, slot: int, scale: float):
        def hook(module, args, output):
            entry = list(cache.attn._qk.get(i, (None, None, scale)))
            entry[slot] = output.detach()
            cache.attn._qk[i] = tuple(entry)
            cache.attn._maps.pop(i, None)
        return hook

    def no_mask(module, args, kwargs):
        mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
        if mask is not None or kwargs.get("is_causal", False):
            raise ValueError("vitlab.capture does not support attention masks")

    try:
        model.eval()
        for i in chosen:
            attn = blocks[i].attn
            if _standard(attn):
                handles.append(attn.register_forward_pre_hook(no_mask, with_kwargs=True))
                handles.append(attn.q_norm.register_forward_hook(keep_qk(i, 0, attn.scale)))
                handles.append(attn.k_norm.register_forward_hook(keep_qk(i, 1, attn.scale)))
            else:
                fused[i] = attn.__dict__.get("fused_attn", _MISSING)
                attn.fused_attn = False
                handles.append(attn.attn_drop.register_forward_hook(keep(cache.attn._maps, i)))
            handles.append(blocks[i].register_forward_hook(keep(cache.tokens, i)))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
        for i, value in fused.items():
            if value is _MISSING:
                del blocks[i].attn.fused_attn
            else:
                blocks[i].attn.fused_attn = value
        for module, mode in modes.items():
            module.training = mode


@torch.no_grad()
def capture(model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None) -> Capture:
    """One forward pass recording attention maps and tokens of ``layers`` (default all).

    Args:
        model: a timm VisionTransformer-style model (zoo ViTs, timm ViTs, DeiT, registers).
        images: uint8 images (B, 3, H, W), preprocessed with :func:`vitlab.preprocess`, or
            an already normalised float batch. Sizes other than the model's work for models
            built with ``dynamic_img_size=True`` (zoo ViTs are).
        layers: block indices; negative indices count from the end.

    Returns:
        A :class:`Capture`; ``logits`` equal a plain forward's.
    """
    dynamic = bool(getattr(model, "dynamic_img_size", False))  # such models take any size as is
    x = preprocess(model, images, resize=not dynamic) if images.dtype == torch.uint8 else images
    with hooks(model, layers) as cache:
        cache.logits = model(x)
    ph, pw = cache.patch_size
    cache.grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    if cache.tokens:
        n = next(iter(cache.tokens.values())).shape[1] - cache.num_prefix_tokens
        if n != cache.grid[0] * cache.grid[1]:
            raise ValueError(f"attention covers {n} patches, but a {tuple(x.shape[-2:])} input gives a "
                             f"{cache.grid} grid of {cache.patch_size} patches")
    return cache


def head_statistics(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64,
                    layers: Sequence[int] | None = None, renormalize: bool = True,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-layer, per-head mean attention distance and entropy, streamed over ``images``.

    Args:
        images: uint8 images (N, 3, H, W), cut into batches of ``batch_size``, or any
            iterable of uint8 batches (e.g. read from disk), so N can be the whole test set.
        renormalize: rescale each query's attention over patch keys to sum to 1.

    Returns:
        ``{"distance": (layers, heads) pixels, "entropy": (layers, heads) nats,
        "layers": (layers,) block indices}``; memory does not grow with N.
    """
    from tqdm.auto import tqdm

    if isinstance(images, torch.Tensor):
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        total = -(-len(images) // batch_size)
    else:
        batches, total = iter(images), None
    stats = metrics.HeadStats(renormalize=renormalize)
    for batch in tqdm(batches, total=total, desc="attention statistics", disable=not progress, leave=False):
        cap = capture(model, batch, layers)
        stats.update(cap.attn, cap.grid, cap.patch_size, cap.num_prefix_tokens)
        del cap  # drop this batch's maps before the next forward
    return dict(stats.result(), layers=torch.tensor(sorted(stats.distance)))


# --- layer representations (ViT blocks and ResNet stages alike) ----------------------------


def representation_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are ``model``'s layer-wise representations.

    Read from timm's ``feature_info`` (``blocks.0``, ``blocks.1``, ... for a ViT;
    ``act1`` (the stem), ``layer1`` ... ``layer4`` for a ResNet), not guessed from names.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info listing its layers; vitlab reads "
                         "representations from timm models (zoo models, timm ViTs and ResNets)")
    return [f["module"] for f in info]


def pool(output: torch.Tensor, num_prefix_tokens: int) -> dict[str, torch.Tensor]:
    """One layer's output reduced to vectors per image, as in the paper's linear probes.

    Token outputs (B, N, D) give ``"cls"`` (the first prefix token, if any) and ``"mean"``
    (mean of the patch tokens); feature maps (B, C, H, W) give ``"gap"`` (global average).
    """
    if output.ndim == 3:
        pooled = {"mean": output[:, num_prefix_tokens:].mean(1)}  # (B, D)
        if num_prefix_tokens:
            pooled = {"cls": output[:, 0], **pooled}
        return pooled
    if output.ndim == 4:
        return {"gap": output.mean((2, 3))}  # (B, C)
    raise ValueError(f"cannot pool a layer output of shape {tuple(output.shape)}: expected (B, N, D) or (B, C, H, W)")


@contextlib.contextmanager
def layer_hooks(model: nn.Module, layers: Sequence[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` (default :func:`representation_layers`) while open.

    Each forward inside the ``with`` block overwrites the returned dict (layer name ->
    output tensor). Hooks are removed and train/eval modes restored on exit.
    """
    names = list(layers) if layers is not None else representation_layers(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no modules {missing}; its layers are {representation_layers(model)}")
    outputs: dict[str, torch.Tensor] = {}
    modes = {m: m.training for m in model.modules()}
    handles = [modules[n].register_forward_hook(lambda _m, _a, out, n=n: outputs.__setitem__(n, out.detach()))
               for n in names]
    model.eval()
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode


@torch.no_grad()
def layer_features(model: nn.Module, images: torch.Tensor, batch_size: int = 250,
                   layers: Sequence[str] | None = None) -> dict[tuple[str, str], torch.Tensor]:
    """Pooled representations of every layer for uint8 ``images`` (N, 3, H, W).

    Returns ``{(layer, pooling): (N, features)}`` in layer order, with the poolings of
    :func:`pool` (``cls`` and ``mean`` for ViT blocks, ``gap`` for ResNet stages), in fp32 on the CPU.
    """
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    parts: dict[tuple[str, str], list[torch.Tensor]] = {}
    with layer_hooks(model, layers) as outputs:
        for i in range(0, len(images), batch_size):
            model(preprocess(model, images[i : i + batch_size]))
            for name, out in outputs.items():
                for how, vec in pool(out, prefix).items():
                    parts.setdefault((name, how), []).append(vec.float().cpu())
    return {key: torch.cat(chunks) for key, chunks in parts.items()}
