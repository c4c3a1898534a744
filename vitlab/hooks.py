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

Everything captured is keyed by block index, negative indices counting from the model's
last block, as in TransformerLens: ``cap.attn[-1]``, ``cap["tokens", 2]``. On exit every
flag, hook and train/eval mode is put back as it was (:func:`restoring`).

What goes into the model is checked before the forward (:func:`check_images`,
:func:`check_input`), so a wrong batch fails with one line saying what to pass instead of
a timm assertion or, worse, silently: float images left in 0..255, NaN, an empty batch,
wrong channels, or a size the patches cannot tile.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import timm
import torch
from timm.layers import Attention
from torch import nn

from . import metrics
from .models import preprocess

_MISSING = object()

# Every per-module hook table of nn.Module that a forward or backward pass consults.
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def restoring(model: nn.Module, flags: Sequence[str] = ("fused_attn",)) -> Iterator[nn.Module]:
    """Put ``model`` back as it was on exit, also when the body raises.

    Restores every submodule's train/eval mode, its forward and backward hooks (hooks
    added inside are dropped, hooks removed inside come back) and the instance
    attributes named in ``flags`` (an attribute set inside that the module did not have
    is deleted again, so a class-level default shows through).
    """
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
    """Sorted, non-negative indices of ``layers`` among ``count`` (default all of them).

    Negative indices count from the end; anything outside ``-count..count-1`` raises ValueError.
    """
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
    """Layer (block) index -> tensor, for the layers captured; negative indices count from the model's end.

    ``depth`` is the model's number of layers. Iterating yields the captured indices in
    order (non-negative), ``values()`` the tensors.
    """

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
    """What one forward pass recorded, keyed by block index (negative from the model's end).

    Attributes:
        attn: block -> post-softmax attention (B, heads, N, N), N = prefix + patches.
        tokens: block -> the block's output tokens (B, N, D).
        layers: the captured block indices, ascending.
        logits: the model's output (B, classes).
        grid: (rows, cols) of patches for this input size.
        patch_size: (height, width) of a patch in pixels.
        num_prefix_tokens: class, register and distillation tokens before the patches.

    ``cap["attn", -1]`` is ``cap.attn[-1]``; ``cap["tokens", 0]`` is ``cap.tokens[0]``.
    """

    KINDS = ("attn", "tokens")

    def __init__(self, depth: int, layers: Sequence[int], patch_size: tuple[int, int] = (0, 0),
                 num_prefix_tokens: int = 0):
        self.attn = AttentionMaps(depth)
        self.tokens = LayerMap(depth)
        self.layers = list(layers)
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
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

    def record_output(self, logits: torch.Tensor, input_size: tuple[int, int]) -> None:
        """The model's output for an input of ``input_size`` (H, W) pixels; sets ``grid``."""
        self.logits = logits
        self.grid = (input_size[0] // self.patch_size[0], input_size[1] // self.patch_size[1])
        if self.tokens:
            n = next(iter(self.tokens.values())).shape[1] - self.num_prefix_tokens
            if n != self.grid[0] * self.grid[1]:
                raise ValueError(f"attention covers {n} patches, but a {tuple(input_size)} input gives a "
                                 f"{self.grid} grid of {self.patch_size} patches")


# --- what may go into a model ---------------------------------------------------------

#: How far outside [0, 1] a pixel may stray before its normalised value counts as far
#: outside the model's range: resizing and augmentation overshoot by a little, a float
#: image left in 0..255 by about 250, and Gaussian-noise test inputs stay inside.
PIXEL_SLACK = 2.0


def normalised_range(model: nn.Module, slack: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per channel, the lowest and highest values of a normalised input of ``model``: (C,), (C,).

    Pixels in ``[-slack, 1 + slack]`` normalised as :func:`vitlab.preprocess` does, with
    the mean and std of the model's ``pretrained_cfg``; None when those are not usable
    numbers (then nothing can be said about the range).
    """
    try:
        cfg = timm.data.resolve_model_data_config(model)
        mean = torch.tensor(cfg["mean"], dtype=torch.float64).flatten()
        std = torch.tensor(cfg["std"], dtype=torch.float64).flatten()
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None
    if mean.shape != std.shape or not len(mean) or not bool((std > 0).all() and mean.isfinite().all()):
        return None
    return (-slack - mean) / std, (1 + slack - mean) / std


def _in_channels(model: nn.Module) -> int | None:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)  # patch embedding or stem
    return None if first is None else first.in_channels


def _check_batch(model: nn.Module, images: object, what: str) -> None:
    """A batch (B, C, H, W) of uint8 or float images with the model's C and at least one image."""
    if not isinstance(images, torch.Tensor):
        hint = ": convert with torch.from_numpy(images)" if type(images).__module__ == "numpy" else ""
        raise TypeError(f"{what} must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}{hint}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{what} are {images.dtype}: pass uint8 images (0..255) or a normalised float batch "
                        "from vitlab.preprocess(model, images)")
    if images.ndim != 4:
        hint = ": for one image pass images[None]" if images.ndim == 3 else ""
        raise ValueError(f"{what} must be a batch (B, C, H, W), got shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {tuple(images.shape)}): pass at least one image")
    channels = _in_channels(model)
    if channels is not None and images.shape[1] != channels:
        hint = ": repeat a grayscale channel with images.expand(-1, 3, -1, -1)" if images.shape[1] == 1 else ""
        got = f"{images.shape[1]} channel" + "s" * (images.shape[1] != 1)
        raise ValueError(f"{what} have {got}, but the model takes {channels} "
                         f"(shape {tuple(images.shape)}){hint}")


def _input_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) that :func:`vitlab.preprocess` resizes to."""
    try:
        return tuple(timm.data.resolve_model_data_config(model)["input_size"][1:])
    except (KeyError, TypeError, ValueError, RuntimeError):  # a broken pretrained_cfg: the built size
        return tuple(model.patch_embed.img_size)


def _check_size(model: nn.Module, size: tuple[int, int], what: str) -> None:
    """``size`` (H, W) is one the model's patch embedding accepts (timm would assert)."""
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "img_size", None) is None or getattr(embed, "dynamic_img_pad", False):
        return
    (h, w), (ph, pw) = size, embed.patch_size
    target = "x".join(str(int(v)) for v in _input_size(model))
    if getattr(embed, "strict_img_size", True):
        if (h, w) != tuple(embed.img_size):
            raise ValueError(f"{what} are {h}x{w} pixels, but the model takes {embed.img_size[0]}x{embed.img_size[1]}: "
                             f"pass uint8 images (vitlab.preprocess(model, images) resizes them to {target})")
    elif h % ph or w % pw:
        raise ValueError(f"{what} are {h}x{w} pixels, not a multiple of the model's {ph}x{pw} patch size: crop "
                         f"them, or pass uint8 images to vitlab.preprocess(model, images), which resizes to {target}")


def _check_values(model: nn.Module, x: torch.Tensor, what: str) -> None:
    """A float batch is finite, of the model's dtype, and near the model's normalised range."""
    weights = next(model.parameters(), None)
    if weights is not None and x.dtype != weights.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{what} are {x.dtype}, but the model computes in {weights.dtype}: "
                        f"pass images.to({weights.dtype})")
    lo, hi = x.amin(dim=(0, 2, 3)).double().cpu(), x.amax(dim=(0, 2, 3)).double().cpu()  # (C,): NaN propagates
    if not bool(lo.isfinite().all() and hi.isfinite().all()):
        counts = {"NaN": int(x.isnan().sum()), "inf": int(x.isinf().sum())}
        kinds = " and ".join(f"{k} ({n} of {x.numel()} values)" for k, n in counts.items() if n)
        raise ValueError(f"{what} contain {kinds}: drop or repair those images before the forward pass")
    bounds = normalised_range(model, PIXEL_SLACK)
    if bounds is None or len(bounds[0]) != len(lo):
        return
    if bool((lo < bounds[0]).any() or (hi > bounds[1]).any()):
        low, high = normalised_range(model)
        raise ValueError(f"{what} hold values from {lo.min():.4g} to {hi.max():.4g}, far outside the model's "
                         f"normalised range (about {low.min():.2f}..{high.max():.2f} for its pretrained_cfg mean "
                         "and std): pass uint8 images (0..255) or call vitlab.preprocess(model, images) first")


def check_input(model: nn.Module, x: object, what: str = "images given to model(...)") -> None:
    """Raise a one-line error when ``x`` cannot be ``model``'s input as it is.

    ``x`` must be a float batch (B, C, H, W) as :func:`vitlab.preprocess` returns: the
    model's channels, dtype and a size its patch embedding takes, finite, and not far
    outside the range its ``pretrained_cfg`` mean and std give pixels in [0, 1] (float
    images left in 0..255 are). Costs one pass over ``x``, nothing next to a forward.
    """
    _check_batch(model, x, what)
    if x.dtype == torch.uint8:
        raise TypeError(f"{what} are uint8: call vitlab.preprocess(model, images) first, which scales and "
                        "normalises them as the model expects")
    _check_size(model, tuple(x.shape[-2:]), what)
    _check_values(model, x, what)


def check_images(model: nn.Module, images: object, what: str = "images") -> None:
    """Raise a one-line error when :func:`capture` cannot take ``images`` for ``model``.

    uint8 images (B, C, H, W) need the model's channels (and, for a model of dynamic size,
    which keeps their size, one its patches tile); float images must pass :func:`check_input`.
    """
    _check_batch(model, images, what)
    if images.dtype != torch.uint8:
        check_input(model, images, what)
    elif getattr(model, "dynamic_img_size", False):
        _check_size(model, tuple(images.shape[-2:]), what)


# --- capture ---------------------------------------------------------------------------


def _standard(attn: nn.Module) -> bool:
    # Only timm's own forward is known to apply nothing (e.g. rotary embeddings) between
    # q_norm/k_norm and the attention product.
    return getattr(type(attn), "forward", None) is Attention.forward


def _readable(attn: nn.Module | None) -> bool:
    return _standard(attn) or (hasattr(attn, "fused_attn") and isinstance(getattr(attn, "attn_drop", None), nn.Module))


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and all(_readable(getattr(b, "attn", None)) for b in blocks)
    if not ok or getattr(model, "patch_embed", None) is None:
        raise ValueError(
            f"cannot read attention from {type(model).__name__}: vitlab.capture needs a timm "
            "VisionTransformer-style model (model.blocks[i].attn with fused_attn and attn_drop, and "
            "model.patch_embed), e.g. a zoo ViT or vit_small_patch16_224"
        )
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
    return size[0] // embed.patch_size[0], size[1] // embed.patch_size[1]


@contextlib.contextmanager
def _open(model: nn.Module, layers: Sequence[int] | None, check: bool) -> Iterator[Capture]:
    blocks = _blocks(model)
    chosen = resolve_layers(len(blocks), layers)
    cache = Capture(len(blocks), chosen, patch_size=tuple(int(p) for p in model.patch_embed.patch_size),
                    num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)))

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


@contextlib.contextmanager
def hooks(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[Capture]:
    """Record attention and tokens of ``layers`` (block indices, default all) while open.

    Every forward inside the ``with`` block overwrites the returned :class:`Capture`,
    ``grid`` included. Its input is checked first (:func:`check_input`: a normalised
    float batch, as :func:`vitlab.preprocess` returns). The model runs in eval mode
    inside; flags, hooks and modes are restored on exit.
    """
    with _open(model, layers, check=True) as cache:
        yield cache


@torch.no_grad()
def capture(model: nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None) -> Capture:
    """One forward pass recording attention maps and tokens of ``layers`` (default all).

    Args:
        model: a timm VisionTransformer-style model (zoo ViTs, timm ViTs, DeiT, registers).
        images: uint8 images (B, 3, H, W), preprocessed with :func:`vitlab.preprocess`, or
            an already normalised float batch (checked: :func:`check_images`). Sizes other
            than the model's work for models built with ``dynamic_img_size=True`` (zoo ViTs are).
        layers: block indices; negative indices count from the end.

    Returns:
        A :class:`Capture`; ``logits`` equal a plain forward's.
    """
    check_images(model, images)
    dynamic = bool(getattr(model, "dynamic_img_size", False))  # such models take any size as is
    if images.dtype == torch.uint8:
        x = preprocess(model, images, resize=not dynamic)
    else:
        x = images.to(next(model.parameters()).device)  # where preprocess puts uint8 images too
    with _open(model, layers, check=False) as cache:
        logits = model(x)
    cache.record_output(logits, tuple(x.shape[-2:]))
    return cache


def attention_distance(cap: Capture, layer: int | None = None, renormalize: bool = True) -> torch.Tensor:
    """Mean attention distance in pixels per head, with the capture's own grid, patches and prefix.

    :func:`vitlab.metrics.mean_attention_distance` cannot tell a (4, 8) grid from an
    (8, 4) one (the token count is the same); a :class:`Capture` knows which grid its
    forward pass used, so this cannot mix them up.

    Args:
        cap: what :func:`capture` (or a forward inside :func:`hooks`) recorded.
        layer: a captured block index (negative from the end), or None for every captured block.
        renormalize: rescale each query's attention over patch keys to sum to 1.

    Returns:
        (heads,) for one ``layer``; (layers, heads) in ``cap.layers`` order for None.
    """
    if not isinstance(cap, Capture):
        raise TypeError(f"cap must be a Capture (from vitlab.capture or vitlab.hooks), got {type(cap).__name__}")
    if 0 in cap.grid or 0 in cap.patch_size:
        raise ValueError("cap holds no forward pass yet (its grid is unknown): fill it with vitlab.capture(model, "
                         "images), or run the model inside vitlab.hooks(model)")
    if layer is not None:
        return metrics.mean_attention_distance(cap.attn[layer], cap.grid, cap.patch_size, cap.num_prefix_tokens,
                                               renormalize)
    return torch.stack([attention_distance(cap, i, renormalize) for i in cap.attn])  # (layers, heads)


def head_statistics(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64,
                    layers: Sequence[int] | None = None, renormalize: bool = True,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-layer, per-head mean attention distance and entropy, streamed over ``images``.

    Args:
        images: uint8 images (N, 3, H, W), cut into batches of ``batch_size``, or any
            iterable of uint8 batches (e.g. read from disk), so N can be the whole test set.
        layers: block indices (negative from the end; default all).
        renormalize: rescale each query's attention over patch keys to sum to 1.
        progress: show a progress bar over batches.

    Returns:
        ``{"distance": (layers, heads) pixels, "entropy": (layers, heads) nats,
        "layers": (layers,) block indices}``; memory does not grow with N.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(images, torch.Tensor):
        check_images(model, images)  # all of them, before the first batch's work
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        total = -(-len(images) // batch_size)
    else:
        batches, total = iter(images), None
    stats = metrics.HeadStats(renormalize=renormalize)
    for batch in tqdm(batches, total=total, desc="attention statistics", disable=not progress, leave=False):
        cap = capture(model, batch, layers)
        stats.update(cap.attn, cap.grid, cap.patch_size, cap.num_prefix_tokens)
        del cap  # drop this batch's maps before the next forward
    if not stats.images:
        raise ValueError("images gave no batches: pass a uint8 tensor (N, 3, H, W) or an iterable of such batches")
    return dict(stats.result(), layers=torch.tensor(sorted(stats.distance)))
