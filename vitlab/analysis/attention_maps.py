"""Attention maps of images, for Fig. 6: rollout, one query patch's attention, the class token's (or the pooled
patches') per head. Pure tensor functions over captured attention (:func:`vitlab.capture`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def _layer_list(attns: object, what: str = "attns") -> list[torch.Tensor]:
    """Per-layer attention in network order, from a sequence or a layer -> tensor mapping (a Capture's attn)."""
    if isinstance(attns, torch.Tensor):
        raise TypeError(f"{what} must be a list of per-layer attention tensors (B, heads, N, N) or a Capture's "
                        f"attn mapping, got one tensor of shape {tuple(attns.shape)}: pass [attn] or cap.attn")
    if isinstance(attns, Mapping):
        keys = list(attns)
        return [attns[k] for k in (sorted(keys) if all(isinstance(k, int) for k in keys) else keys)]
    if not isinstance(attns, Sequence):
        raise TypeError(f"{what} must be a list of per-layer attention tensors or a Capture's attn mapping, "
                        f"got {type(attns).__name__}")
    return list(attns)


def attention_rollout(attns: Sequence[torch.Tensor] | Mapping[int, torch.Tensor], num_prefix_tokens: int = 1,
                      head_fusion: str = "mean", discard_ratio: float = 0.0, pool: str = "token") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of Fig. 6: (B, patches), from per-layer ``attns`` (B, heads, N, N) or a
    Capture's ``attn``: heads fused, the weakest ``discard_ratio`` zeroed, 0.5*A + 0.5*I renormalised per row, layers
    multiplied first to last. ``pool`` is what the prediction reads (timm's ``global_pool``): ``"token"``, the class
    token's row (its row and column never discarded, unlike vit-explain); ``"avg"``, the mean of the patch rows."""
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if pool not in ("token", "avg"):
        raise ValueError(f"pool must be 'token' or 'avg' (what the prediction reads), got {pool!r}")
    if pool == "token" and num_prefix_tokens < 1:
        raise ValueError("with no prefix token there is no class token whose rollout to read: pass pool='avg' for a "
                         "model that averages its patch tokens")
    attns = _layer_list(attns)
    if not attns:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    for i, a in enumerate(attns):
        if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"attns[{i}] must be attention (B, heads, N, N), got {got}; for one image's "
                             "(heads, N, N) maps pass [a[None] for a in maps]")
        if (a.shape[0], a.shape[-1]) != (attns[0].shape[0], attns[0].shape[-1]):
            raise ValueError(f"attns[{i}] has shape {tuple(a.shape)}, but attns[0] {tuple(attns[0].shape)}: every "
                             "layer must hold the same images and tokens")
    b, _, n, _ = attns[0].shape
    eye = torch.eye(n, dtype=torch.float64, device=attns[0].device)
    protected = torch.zeros(n, n, dtype=torch.bool, device=eye.device)
    if pool == "token":
        protected[0, :] = protected[:, 0] = True
    unprotected = int((~protected).sum())
    result = eye.expand(b, n, n)
    for attn in attns:
        a = attn.double()
        fused = a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)  # (B, N, N)
        if discard_ratio > 0:
            drop = min(int(n * n * discard_ratio), unprotected)  # protected entries never count
            scores = fused.masked_fill(protected, float("inf")).flatten(1)  # (B, N*N)
            weakest = scores.topk(drop, dim=-1, largest=False).indices
            fused = fused.flatten(1).scatter(1, weakest, 0.0).view(b, n, n)
        a = 0.5 * fused + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    if pool == "avg":  # the prediction is the mean of the patch tokens, so its row is the mean of their rows
        return result[:, num_prefix_tokens:, num_prefix_tokens:].mean(1).float()
    return result[:, 0, num_prefix_tokens:].float()


def _check_image_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> None:
    n = grid[0] * grid[1] + num_prefix_tokens
    if attn.ndim != 3 or tuple(attn.shape[-2:]) != (n, n):
        hint = ": for image i of a batch pass attn[i]" if attn.ndim == 4 else ""
        raise ValueError(f"attention must be one image's (heads, {n}, {n}) for a {grid} grid with "
                         f"{num_prefix_tokens} prefix tokens, got {tuple(attn.shape)}{hint}")


def query_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, query: tuple[int, int],
                    head: int | None = None) -> torch.Tensor:
    """Where query patch (row, col) attends in one image's (heads, N, N): (rows, cols), ``head`` or (None) the mean."""
    _check_image_attention(attn, grid, num_prefix_tokens)
    rows, cols = grid
    row, col = query
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"query patch {query} is outside the {rows}x{cols} grid")
    heads = attn.shape[0]
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not -heads <= head < heads):
        raise ValueError(f"head {head!r} is out of range: the attention has {heads} heads (0..{heads - 1}, or "
                         "negative; None for their mean)")
    a = attn.float().mean(0) if head is None else attn[head].float()  # (N, N)
    return a[num_prefix_tokens + row * cols + col, num_prefix_tokens:].reshape(rows, cols)


def _per_layer(attns: Sequence[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int) -> None:
    if isinstance(attns, Mapping):
        raise TypeError("attns must be a list of one image's attention (heads, N, N) per layer; from a Capture "
                        "pass [a[i] for a in cap.attn.values()] for image i")
    for a in attns:
        _check_image_attention(a, grid, num_prefix_tokens)


def class_token_attention(attns: Sequence[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int,
                          class_token: bool = True) -> torch.Tensor:
    """The class token's attention over patches (layers, heads, rows, cols) from one image's (heads, N, N) per layer;
    ``class_token``: whether the model has one (``Capture.class_token``; register tokens alone are prefix tokens too)."""
    if num_prefix_tokens < 1 or not class_token:
        raise ValueError(f"the model has {num_prefix_tokens or 'no'} prefix tokens but no class token to read "
                         "attention from: use pooled_attention for a model that averages its patch tokens")
    _per_layer(attns, grid, num_prefix_tokens)
    maps = torch.stack([a[:, 0, num_prefix_tokens:].float() for a in attns])  # (L, H, patches)
    return maps.reshape(len(attns), maps.shape[1], *grid)


def pooled_attention(attns: Sequence[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """The mean over patch queries of their attention over patches (layers, heads, rows, cols), from one image's
    (heads, N, N) per layer: what a model whose prediction averages its patch tokens reads, as
    :func:`class_token_attention` is for a class token."""
    _per_layer(attns, grid, num_prefix_tokens)
    maps = torch.stack([a[:, num_prefix_tokens:, num_prefix_tokens:].float().mean(1) for a in attns])  # (L, H, patches)
    return maps.reshape(len(attns), maps.shape[1], *grid)


def scale_to_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (rows, cols) map of ``maps`` (..., rows, cols) divided by its own maximum (maps of zeros stay 0)."""
    peak = maps.flatten(-2).amax(-1).clamp_min(1e-12)  # (...)
    return maps / peak[..., None, None]
