"""Capture a ViT's attention maps and hidden tokens in one forward pass, keyed by block (negative from the end). timm's
standard ``Attention`` stays fused: hooks record q and k, and ``softmax(q k^T * scale)`` is computed when a map is first
read. Other attention modules with ``fused_attn`` run their explicit path, hooked at ``attn_drop``."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from timm.layers import Attention
from torch import nn

from . import metrics
from ..models.inputs import check_images, check_input
from ..models import preprocess

_MISSING = object()

# Every per-module hook table of nn.Module that a forward or backward pass consults.
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def restoring(model: nn.Module, flags: Sequence[str] = ("fused_attn",)) -> Iterator[nn.Module]:
    """Put ``model`` back as it was on exit, also when the body raises: every submodule's train/eval mode,
    forward and backward hooks, and the instance attributes named in ``flags`` (deleted again if new)."""
    saved = [_snapshot(m, flags) for m in model.modules()]
    try:
        yield model
    finally:
        for module, mode, tables, values in saved:
            module.training = mode
            _restore(module, tables, values)


def _snapshot(module: nn.Module, flags: Sequence[str]) -> tuple[nn.Module, bool, dict, dict]:
    # Only non-empty hook tables are copied: capture runs per batch, and most tables are empty.
    d = module.__dict__
    return (module, module.training, {name: dict(t) for name in _HOOK_TABLES if (t := d.get(name))},
            {f: d.get(f, _MISSING) for f in flags})


def _restore(module: nn.Module, tables: dict[str, dict], values: dict[str, object]) -> None:
    d = module.__dict__
    for name in _HOOK_TABLES:
        table = d.get(name)
        if table or name in tables:  # refill the same dict object: live handles point at it
            table.clear()
            table.update(tables.get(name, {}))
    for flag, value in values.items():
        if value is _MISSING:
            d.pop(flag, None)
        else:
            setattr(module, flag, value)


def resolve_layers(count: int, layers: Iterable[int] | None, what: str = "blocks") -> list[int]:
    """Sorted, non-negative indices of ``layers`` (negative from the end) among ``count``; default all."""
    if layers is None:
        return list(range(count))
    if isinstance(layers, (int, str)):
        raise TypeError(f"layers must be a list of indices, got {layers!r}: pass [{layers!r}]")
    layers = list(layers)
    bad = [i for i in layers if not isinstance(i, int) or not -count <= i < count]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {count} {what} (0..{count - 1}, or negative)")
    return sorted({i % count for i in layers})


class LayerMap(Mapping):
    """Layer index -> tensor for the captured layers of a ``depth``-layer model; negative indices count from the end."""

    def __init__(self, depth: int):
        self.depth = depth
        self._store: dict[int, torch.Tensor] = {}

    def index(self, layer: int) -> int:
        """``layer`` as a non-negative index (KeyError when outside the model)."""
        if not isinstance(layer, int) or not -self.depth <= layer < self.depth:
            raise KeyError(f"layer {layer!r} is outside the model's {self.depth} layers (0..{self.depth - 1}, "
                           "or negative)")
        return layer % self.depth

    def record(self, layer: int, value: torch.Tensor) -> None:
        """Store ``value`` for layer ``layer``, replacing what an earlier forward left."""
        self._store[self.index(layer)] = value

    def _keys(self) -> set[int]:
        return set(self._store)

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, int) and -self.depth <= layer < self.depth and layer % self.depth in self._keys()

    def __getitem__(self, layer: int) -> torch.Tensor:
        i = self.index(layer)
        if i not in self._keys():
            raise KeyError(f"layer {layer} was not captured; captured: {sorted(self._keys())}")
        return self._store[i]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._keys()))

    def __len__(self) -> int:
        return len(self._keys())


class AttentionMaps(LayerMap):
    """Block index -> post-softmax attention (B, heads, N, N), computed on first access."""

    def __init__(self, depth: int):
        super().__init__(depth)
        self._qk: dict[int, dict[str, torch.Tensor | float]] = {}

    def record_qk(self, layer: int, *, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
                  scale: float | None = None) -> None:
        """Store block ``layer``'s queries and/or keys (B, heads, N, head_dim); the map follows on read."""
        i = self.index(layer)
        entry = self._qk.setdefault(i, {})
        entry.update({name: v for name, v in (("q", q), ("k", k), ("scale", scale)) if v is not None})
        self._store.pop(i, None)  # a new forward: the map of the last one is stale

    def _keys(self) -> set[int]:
        return set(self._store) | set(self._qk)

    def __getitem__(self, layer: int) -> torch.Tensor:
        i = self.index(layer)
        if i not in self._store and i in self._qk:
            qk = self._qk.pop(i)
            q, k = qk["q"] * qk["scale"], qk["k"]  # (B, heads, N, head_dim) each
            self._store[i] = torch.softmax(q @ k.transpose(-2, -1), dim=-1)  # (B, heads, N, N)
        return super().__getitem__(layer)


class Capture:
    """What one forward pass recorded by block index (``cap["attn", -1]``): ``attn`` (B, heads, N, N) post-softmax,
    ``tokens`` (B, N, D); ``grid``: (rows, cols) of patches; ``patch_size``: (height, width) pixels between patches;
    ``class_token``: whether token 0 is one; ``pool``: what the prediction reads (:func:`pooling`)."""
    KINDS = ("attn", "tokens")

    def __init__(self, depth: int, layers: Sequence[int], patch_size: tuple[int, int] = (0, 0),
                 num_prefix_tokens: int = 0, class_token: bool | None = None, pool: str | None = None):
        self.attn = AttentionMaps(depth)
        self.tokens = LayerMap(depth)
        self.layers = list(layers)
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        # token 0 is the class token (registers alone are prefix tokens too); pool: see :func:`pooling`
        self.class_token = num_prefix_tokens > 0 if class_token is None else class_token
        self.pool = pool
        self.logits: torch.Tensor | None = None
        self.grid: tuple[int, int] = (0, 0)

    def __getitem__(self, key: tuple[str, int]) -> torch.Tensor:
        kind, layer = key
        if kind not in self.KINDS:
            raise KeyError(f"unknown kind {kind!r}; a Capture holds {self.KINDS}")
        return getattr(self, kind)[layer]

    def record_qk(self, layer: int, *, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
                  scale: float | None = None) -> None:
        """Block ``layer``'s queries and/or keys (B, heads, N, head_dim) and the attention scale."""
        self.attn.record_qk(layer, q=q, k=k, scale=scale)

    def record_attn(self, layer: int, attn: torch.Tensor) -> None:
        """Block ``layer``'s attention probabilities (B, heads, N, N)."""
        self.attn.record(layer, attn)

    def record_tokens(self, layer: int, tokens: torch.Tensor) -> None:
        """Block ``layer``'s output tokens (B, N, D)."""
        self.tokens.record(layer, tokens)

    def record_output(self, logits: torch.Tensor, input_size: tuple[int, int],
                      grid: tuple[int, int] | None = None) -> None:
        """The model's output for an input of ``input_size`` (H, W) pixels; sets ``grid`` (default size / patch)."""
        self.logits = logits
        self.grid = tuple(grid) if grid is not None else (input_size[0] // self.patch_size[0],
                                                           input_size[1] // self.patch_size[1])
        if self.tokens:
            n = next(iter(self.tokens.values())).shape[1] - self.num_prefix_tokens
            if n != self.grid[0] * self.grid[1]:
                raise ValueError(f"attention covers {n} patches, but a {tuple(input_size)} input gives a "
                                 f"{self.grid} grid of {self.patch_size} patches")


def has_class_token(model: nn.Module) -> bool:
    """Whether ``model``'s token 0 is a class token (timm's ``has_class_token``, else a ``cls_token`` parameter)."""
    flag = getattr(model, "has_class_token", None)
    return bool(flag) if flag is not None else getattr(model, "cls_token", None) is not None


def pooling(model: nn.Module) -> str | None:
    """What ``model``'s prediction reads of its last tokens, in timm's ``global_pool`` words: ``"token"`` (the class
    token) or ``"avg"`` (the mean of the patch tokens); None for anything else (max, attention pooling, prefix
    tokens in the mean, or a model that does not say)."""
    pool = getattr(model, "global_pool", None)
    if pool is None and has_class_token(model):  # not a timm VisionTransformer: ViTs of this kind read the class token
        return "token"
    if pool == "avg" and (getattr(model, "pool_include_prefix", False) or getattr(model, "attn_pool", None)):
        return None
    return pool if pool in ("token", "avg") else None


def check_pooling(model: nn.Module) -> str:
    """:func:`pooling` of ``model``, or a one-line ValueError saying what it reads instead."""
    pool = pooling(model)
    if pool is None:
        said = getattr(model, "global_pool", None)
        said = f"global_pool {said!r}" if isinstance(said, str) else "no global_pool"
        raise ValueError(f"{type(model).__name__} has {said}: rollout reads what the prediction reads, the class token "
                         "(global_pool='token') or the mean of the patch tokens ('avg'), so it is refused here")
    return pool


def _standard(attn: nn.Module) -> bool:
    # Only timm's own forward is known to apply nothing (e.g. rotary embeddings) between q_norm/k_norm and q @ k.
    return getattr(type(attn), "forward", None) is Attention.forward


def _readable(attn: nn.Module | None) -> bool:
    return _standard(attn) or (hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module))


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and all(_readable(getattr(b, "attn", None)) for b in blocks)
    if not ok or getattr(model, "patch_embed", None) is None:
        raise ValueError(f"cannot read attention from {type(model).__name__}: vitlab.capture needs a timm "
                         "VisionTransformer-style model (model.blocks[i].attn with fused_attn and attn_drop, and "
                         "model.patch_embed), e.g. a zoo ViT or vit_small_patch16_224")
    return blocks


def _no_mask(module, args, kwargs) -> None:
    mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
    if mask is not None or kwargs.get("is_causal", False):
        raise ValueError("vitlab.capture does not support attention masks")


def _hook_block(cache: Capture, i: int, block: nn.Module) -> None:
    """Register the hooks that record block ``i`` into ``cache`` (removed by :func:`restoring`)."""
    attn = block.attn
    if _standard(attn):
        attn.register_forward_pre_hook(_no_mask, with_kwargs=True)
        attn.q_norm.register_forward_hook(lambda _m, _a, out: cache.record_qk(i, q=out.detach(), scale=attn.scale))
        attn.k_norm.register_forward_hook(lambda _m, _a, out: cache.record_qk(i, k=out.detach()))
    else:
        attn.fused_attn = False  # this module only; restored on exit
        attn.attn_drop.register_forward_hook(lambda _m, _a, out: cache.record_attn(i, out.detach()))
    block.register_forward_hook(lambda _m, _a, out: cache.record_tokens(i, out.detach()))


def _grid(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of patches the model's patch embedding makes of a (H, W) input."""
    embed = model.patch_embed
    if hasattr(embed, "dynamic_feat_size"):  # timm's own rule, padding included
        return tuple(int(v) for v in embed.dynamic_feat_size(tuple(size)))
    ph, pw = metrics.pixel_patch_size(model)
    return size[0] // ph, size[1] // pw


@contextlib.contextmanager
def _open(model: nn.Module, layers: Sequence[int] | None, check: bool) -> Iterator[Capture]:
    blocks = _blocks(model)
    chosen = resolve_layers(len(blocks), layers)
    cache = Capture(len(blocks), chosen, patch_size=metrics.pixel_patch_size(model),
                    num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)), class_token=has_class_token(model),
                    pool=pooling(model))

    def before_forward(_module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("x")
        if check:
            check_input(model, x)
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            cache.grid = _grid(model, tuple(x.shape[-2:]))

    with restoring(model):
        model.eval()
        model.register_forward_pre_hook(before_forward, with_kwargs=True)
        for i in chosen:
            _hook_block(cache, i, blocks[i])
        yield cache


def hooks(model: nn.Module, layers: Sequence[int] | None = None) -> contextlib.AbstractContextManager[Capture]:
    """Record attention and tokens of ``layers`` (block indices, default all) of every forward (in eval mode,
    of a normalised float batch) inside the ``with`` block into the returned :class:`Capture`."""
    return _open(model, layers, check=True)


@torch.no_grad()
def capture(model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None) -> Capture:
    """One forward pass of a timm ViT-style model recording attention maps and tokens of ``layers`` (default all);
    ``images``: uint8 (B, 3, H, W) (preprocessed here) or a normalised float batch; ``logits`` as a plain forward's."""
    check_images(model, images)
    dynamic = bool(getattr(model, "dynamic_img_size", False))  # such models take any size as is
    if images.dtype == torch.uint8:
        x = preprocess(model, images, resize=not dynamic)
    else:
        x = images.to(next(model.parameters()).device)  # where preprocess puts uint8 images too
    with _open(model, layers, check=False) as cache:
        logits = model(x)
    cache.record_output(logits, tuple(x.shape[-2:]), cache.grid)  # the grid the pre-forward hook read from the model
    return cache
