"""Analysis metrics: pure tensor functions, no I/O and no plotting."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the patch grid the model was built for, read from ``patch_embed``."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or getattr(embed, "grid_size", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no patch embedding with a grid_size; this needs a "
            "timm VisionTransformer (e.g. a zoo ViT or vit_small_patch16_224)"
        )
    rows, cols = embed.grid_size
    return int(rows), int(cols)


def position_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between the position embeddings of every pair of patches.

    Prefix tokens (class token, registers, distillation token) are excluded whether or
    not the model stores position embeddings for them, as in the paper's Fig. 7 center.

    Returns:
        float32 tensor (rows, cols, rows, cols): entry [i, j, k, l] is the similarity
        between the patch at row i, column j and the patch at row k, column l.
    """
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, torch.Tensor):
        raise ValueError(
            f"{type(model).__name__} has no learned position embeddings (pos_embed); "
            "position similarity needs a ViT with absolute position embeddings"
        )
    rows, cols = patch_grid(model)
    patches = rows * cols
    stored_prefix = pos.shape[1] - patches  # 0 when the model adds no position to prefix tokens
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if stored_prefix not in (0, prefix):
        raise ValueError(
            f"pos_embed holds {pos.shape[1]} positions, which matches neither {patches} patches "
            f"nor {patches} patches + {prefix} prefix tokens"
        )
    emb = F.normalize(pos.detach()[0, stored_prefix:].float(), dim=-1)  # (patches, D)
    return (emb @ emb.T).reshape(rows, cols, rows, cols)
