"""Capture a ViT's attention maps and hidden tokens in one forward pass.

timm computes attention with fused ``scaled_dot_product_attention`` by default, which
never materialises the attention probabilities, so plain hooks see nothing. Inside
:func:`hooks`, each chosen block's attention module runs its explicit path
(``fused_attn = False`` on that module only, never timm's global switch) and a forward
hook on its ``attn_drop`` records the post-softmax probabilities. On exit every flag,
hook and train/eval mode is put back as it was.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import metrics
from .models import preprocess


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

    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    grid: tuple[int, int] = (0, 0)
    patch_size: tuple[int, int] = (0, 0)
    num_prefix_tokens: int = 0


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and all(
        hasattr(getattr(b, "attn", None), "fused_attn") and isinstance(getattr(b.attn, "attn_drop", None), nn.Module)
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
    fused = {i: blocks[i].attn.__dict__.get("fused_attn", _MISSING) for i in chosen}
    handles = []

    def keep(store: dict, i: int):
        def hook(module, args, output):
            store[i] = output.detach()
        return hook

    try:
        model.eval()
        for i in chosen:
            blocks[i].attn.fused_attn = False
            handles.append(blocks[i].attn.attn_drop.register_forward_hook(keep(cache.attn, i)))
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


_MISSING = object()


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
    if cache.attn:
        n = next(iter(cache.attn.values())).shape[-1] - cache.num_prefix_tokens
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
