"""Analysis metrics: pure tensor functions, no I/O and no plotting."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the patch grid the model was built for, read from ``patch_embed``."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or getattr(embed, "grid_size", None) is None:
        raise ValueError(f"{type(model).__name__} has no patch embedding with a grid_size; this needs a "
                         "timm VisionTransformer (e.g. a zoo ViT or vit_small_patch16_224)")
    rows, cols = embed.grid_size
    return int(rows), int(cols)


def is_hybrid(model: nn.Module) -> bool:
    """Whether ``model``'s patch embedding cuts a CNN's feature map into patches (timm's ``HybridEmbed``)."""
    return isinstance(getattr(getattr(model, "patch_embed", None), "backbone", None), nn.Module)


def pixel_patch_size(model: nn.Module) -> tuple[int, int]:
    """(height, width) in input pixels between neighbouring tokens (a hybrid's: backbone stride x patch size)."""
    patch_grid(model)  # the same refusal for a model without a patch embedding
    embed = model.patch_embed
    if hasattr(embed, "feat_ratio"):
        return tuple(int(p) for p in embed.feat_ratio(as_scalar=False))
    return tuple(int(p) for p in embed.patch_size)


def position_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity (rows, cols, rows, cols) float32 of every two patches' position embeddings (Fig. 7 center)."""
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no learned position embeddings (pos_embed); "
                         "position similarity needs a ViT with absolute position embeddings")
    rows, cols = patch_grid(model)
    patches = rows * cols
    stored_prefix = pos.shape[1] - patches  # 0 when the model adds no position to prefix tokens
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if stored_prefix not in (0, prefix):
        raise ValueError(f"pos_embed holds {pos.shape[1]} positions, which matches neither {patches} patches "
                         f"nor {patches} patches + {prefix} prefix tokens")
    emb = F.normalize(pos.detach()[0, stored_prefix:].float(), dim=-1)  # (patches, D)
    return (emb @ emb.T).reshape(rows, cols, rows, cols)


def embedding_filters(model: nn.Module, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the centred patch-embedding filters (Fig. 7, left): ``(filters, variance_ratio)``,
    (k, C, P, P) unit-norm components with non-negative sums and (k,) fractions of the total variance."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if is_hybrid(model):
        rows, cols = proj.kernel_size if isinstance(proj, nn.Conv2d) else ("?", "?")
        raise ValueError(f"{type(model).__name__} is a hybrid ViT: its embedding projects {rows}x{cols} patches of a "
                         "CNN's feature map, not of pixels, so it has no image filters to show; its first filters "
                         "are the CNN's (patch_embed.backbone)")
    if not isinstance(proj, nn.Conv2d):
        raise ValueError(f"{type(model).__name__} has no convolutional patch embedding (patch_embed.proj)")
    w = proj.weight.detach().float()  # (D, C, P, P)
    flat = w.flatten(1)  # (D, C*P*P)
    if not 1 <= k <= min(flat.shape):
        raise ValueError(f"k must be in 1..{min(flat.shape)} for {flat.shape[0]} filters of {flat.shape[1]} values")
    centred = flat - flat.mean(0, keepdim=True)
    _, s, vt = torch.linalg.svd(centred.double(), full_matrices=False)
    var = s**2
    comps = vt[:k]  # (k, C*P*P)
    comps = comps * torch.where(comps.sum(1, keepdim=True) < 0, -1.0, 1.0)
    return comps.float().reshape(k, *w.shape[1:]), (var[:k] / var.sum()).float()


def _rank(x: torch.Tensor) -> torch.Tensor:
    """1-based float64 ranks of a 1-D tensor, ties sharing their average rank (``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of the last copy of each distinct value
    return (last - (counts.double() - 1) / 2)[inverse]


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (as ``scipy.stats.spearmanr``); NaN if one is constant."""
    rx, ry = _rank(x) - (x.numel() + 1) / 2, _rank(y) - (y.numel() + 1) / 2  # centred: ranks average (n+1)/2
    scale = float(rx.norm() * ry.norm())
    return float(rx @ ry) / scale if scale > 0 else math.nan


def _patch_matrix(sim: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``sim`` as an (n, n) float64 matrix over the patches of ``grid`` in row-major order."""
    rows, cols = grid
    n = rows * cols
    if sim.numel() != n * n:
        raise ValueError(f"similarity of shape {tuple(sim.shape)} does not cover a {rows}x{cols} grid of patches")
    return sim.detach().reshape(n, n).double()


@dataclass(frozen=True)
class PositionStructure:
    """How much of the 2-D image grid a position-embedding similarity holds (:func:`position_structure`)."""
    # Spearman correlation of similarity and minus grid distance over pairs of patches: +1 when similarity falls
    # with distance, about 0 for random embeddings.
    closeness: float
    # Partial Spearman correlation of similarity and sharing a row or column, given distance: above 0 for the
    # paper's row-column structure; NaN on a grid of one row or column.
    row_column: float


def position_structure(sim: torch.Tensor, grid: tuple[int, int]) -> PositionStructure:
    """Structure scores of a (rows, cols, rows, cols) or row-major (n, n) patch similarity (Fig. 7, center)."""
    s = _patch_matrix(sim, grid)  # (n, n)
    i, j = torch.triu_indices(len(s), len(s), offset=1)  # every pair of distinct patches i < j
    pairs, dr, dc = s[i, j], i // grid[1] - j // grid[1], i % grid[1] - j % grid[1]  # (pairs,) each
    closeness = -(dr**2 + dc**2)  # squared: ranks as distance, with exact ties
    line = ((dr == 0) | (dc == 0)).double()
    sd, sl, ld = _spearman(pairs, closeness), _spearman(pairs, line), _spearman(line, closeness)
    # Partial correlation of similarity and line given closeness, on ranks.
    scale = math.sqrt(max((1 - sd**2) * (1 - ld**2), 0.0))
    row_column = (sl - sd * ld) / scale if scale > 0 else math.nan
    return PositionStructure(closeness=sd, row_column=row_column)


@dataclass(frozen=True)
class MirrorScore:
    """Left-right mirror symmetry of a position-embedding similarity (:func:`mirror_score`)."""
    mirror: float  # mean similarity of a patch to its mirror position (row r, column C-1-c), off the middle column
    neighbour: float  # mean over patches of a patch's mean similarity to its 4 immediate neighbours

    @property
    def excess(self) -> float:
        """``mirror - neighbour``: about 0 after horizontal-flip augmentation, below 0 when left and right differ."""
        return self.mirror - self.neighbour


def mirror_score(sim: torch.Tensor, grid: tuple[int, int]) -> MirrorScore:
    """Similarity of each patch to its left-right mirror position, against its neighbours' (NaN where none)."""
    rows, cols = grid
    s = _patch_matrix(sim, grid).reshape(rows, cols, rows, cols)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")  # (rows, cols) each
    off_middle = c != cols - 1 - c
    mirror = s[r, c, r, cols - 1 - c][off_middle]  # (patches off the middle column,)
    total, count = torch.zeros(rows, cols, dtype=torch.float64), torch.zeros(rows, cols)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
        total[inside] += s[r[inside], c[inside], rr[inside], cc[inside]]
        count += inside
    neighbour = total[count > 0] / count[count > 0]  # (patches with a neighbour,)
    return MirrorScore(mirror=float(mirror.mean()) if mirror.numel() else math.nan,
                       neighbour=float(neighbour.mean()) if neighbour.numel() else math.nan)


def _patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """Pixel distance between the centres of every pair of patches: (rows*cols, rows*cols)."""
    rows, cols = grid
    ph, pw = patch_size
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    centres = torch.stack([(r.flatten() + 0.5) * ph, (c.flatten() + 0.5) * pw], -1)  # (n, 2) pixels
    return torch.cdist(centres, centres)


def _patch_attention(attn: torch.Tensor, grid: tuple[int, int], prefix: int, renormalize: bool) -> torch.Tensor:
    """Attention of patch queries over patch keys, (B, heads, n, n), float32."""
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be (B, heads, N, N), got {tuple(attn.shape)}")
    n = grid[0] * grid[1]
    if attn.shape[-1] != n + prefix:
        raise ValueError(f"attn has {attn.shape[-1]} tokens; a {grid} grid with {prefix} prefix tokens needs "
                         f"{n + prefix}")
    a = attn[..., prefix:, prefix:].float()
    if renormalize:
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return a


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: tuple[int, int],
                            num_prefix_tokens: int = 1, renormalize: bool = False) -> torch.Tensor:
    """Attention-weighted patch query-key distance of ``attn`` (B, heads, N, N) in pixels: (heads,), Fig. 7 (right).
    ``renormalize=False`` (the paper's, google-research/vision_transformer #162) keeps the raw weights, so prefix tokens
    add no distance; True rescales each query's patch attention to sum to 1. ``patch_size``: (height, width) pixels."""
    a = _patch_attention(attn, grid, num_prefix_tokens, renormalize)  # (B, H, n, n)
    dist = _patch_distances(grid, patch_size).to(a.device, a.dtype)  # (n, n)
    return torch.einsum("bhqk,qk->h", a, dist).double().div(a.shape[0] * a.shape[2]).float()  # (H,)


def uniform_attention_distance(grid: tuple[int, int], patch_size: tuple[int, int], num_prefix_tokens: int = 1,
                               renormalize: bool = False) -> float:
    """:func:`mean_attention_distance` of uniform attention in pixels, the reference line of Fig. 7 (right): the mean
    distance between patch centres, times n / (n + ``num_prefix_tokens``) under the paper's convention."""
    n = grid[0] * grid[1]
    mean = float(_patch_distances(grid, patch_size).mean())  # over all n*n pairs, self included
    return mean if renormalize else mean * n / (n + num_prefix_tokens)


def attention_entropy(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Entropy in nats of each patch query's attention over patch keys, per head: (heads,)."""
    a = _patch_attention(attn, grid, num_prefix_tokens, renormalize=True)
    return -torch.special.xlogy(a, a).sum(-1).double().mean(dim=(0, 2)).float()


class HeadStats:
    """Per-layer, per-head mean attention distance (pixels) and entropy (nats), over images and per image."""

    def __init__(self, renormalize: bool = False):
        self.renormalize = renormalize
        self.distance: dict[int, torch.Tensor] = {}
        self.entropy: dict[int, torch.Tensor] = {}
        self.per_image_distance: dict[int, list[torch.Tensor]] = {}  # layer -> [(B, heads), ...] pixels
        self.per_image_entropy: dict[int, list[torch.Tensor]] = {}  # layer -> [(B, heads), ...] nats
        self.images = 0

    def update(self, attn: dict[int, torch.Tensor], grid: tuple[int, int], patch_size: tuple[int, int],
               num_prefix_tokens: int) -> None:
        """Add a batch: ``attn`` maps layer index -> (B, heads, N, N), as in a Capture."""
        batch = None
        for layer, a in attn.items():
            batch = a.shape[0]
            # Per image: mean_attention_distance and attention_entropy of attn[i:i+1].
            p = _patch_attention(a, grid, num_prefix_tokens, self.renormalize)  # (B, H, n, n)
            dist = _patch_distances(grid, patch_size).to(p.device, p.dtype)  # (n, n)
            d = torch.einsum("bhqk,qk->bh", p, dist).double().div(p.shape[2]).cpu()  # (B, H)
            q = _patch_attention(a, grid, num_prefix_tokens, renormalize=True)
            e = (-torch.special.xlogy(q, q).sum(-1)).double().mean(2).cpu()  # (B, H)
            self.distance[layer] = self.distance.get(layer, 0) + d.sum(0)
            self.entropy[layer] = self.entropy.get(layer, 0) + e.sum(0)
            self.per_image_distance.setdefault(layer, []).append(d.float())
            self.per_image_entropy.setdefault(layer, []).append(e.float())
        self.images += batch or 0

    def result(self) -> dict[str, torch.Tensor]:
        """Means ``"distance"``, ``"entropy"`` (layers, heads) and ``"distance_per_image"``, ``"entropy_per_image"``."""
        if not self.images:
            raise ValueError("no batch was added")
        layers = sorted(self.distance)
        return {"distance": torch.stack([self.distance[i] for i in layers]).float() / self.images,
                "entropy": torch.stack([self.entropy[i] for i in layers]).float() / self.images,
                "distance_per_image": torch.stack([torch.cat(self.per_image_distance[i]) for i in layers], 1),
                "entropy_per_image": torch.stack([torch.cat(self.per_image_entropy[i]) for i in layers], 1)}


def receptive_fields(model: nn.Module) -> list[tuple[str, float]]:
    """Theoretical receptive field in pixels after each block of a CNN's main path: ``[(block name, pixels), ...]``."""
    r, jump, out = 1.0, 1.0, {}
    for name, m in model.named_modules():
        if "downsample" in name or not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k, s, d = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, getattr(m, "dilation", 1)))
        r += (k - 1) * d * jump
        jump *= s
        out[name.rsplit(".", 1)[0] if "." in name else name] = r
    if not out:
        raise ValueError(f"{type(model).__name__} has no convolutions or poolings")
    return list(out.items())


def token_receptive_field(model: nn.Module) -> float:
    """Pixels across the input window one patch token sees before any attention: its patch, or a hybrid's CNN field."""
    if is_hybrid(model):
        return receptive_fields(model.patch_embed)[-1][1]
    patch_grid(model)
    return float(max(model.patch_embed.patch_size))
