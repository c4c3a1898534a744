"""Analysis metrics: pure tensor functions, no I/O and no plotting."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def is_hybrid(model: nn.Module) -> bool:
    """Whether ``model``'s patch embedding cuts a CNN's feature map into patches (timm's ``HybridEmbed``)."""
    return isinstance(getattr(getattr(model, "patch_embed", None), "backbone", None), nn.Module)


def pixel_patch_size(model: nn.Module) -> tuple[int, int]:
    """(height, width) in input pixels between neighbouring tokens of the patch grid.

    For a plain ViT this is ``patch_embed.patch_size``. A hybrid's embedding cuts the
    backbone's feature map into patches, so a token spans the backbone's total stride times
    the embedding's patch size (16 px for ``vit_base_r50_s16_224``: stride 16, 1x1 patches),
    which timm's ``feat_ratio`` reports for both kinds of embedding.
    """
    patch_grid(model)  # the same refusal for a model without a patch embedding
    embed = model.patch_embed
    if hasattr(embed, "feat_ratio"):
        return tuple(int(p) for p in embed.feat_ratio(as_scalar=False))
    return tuple(int(p) for p in embed.patch_size)


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


def embedding_filters(model: nn.Module, k: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-embedding filters (paper Fig. 7, left).

    Each of the D filters (C, P, P) is flattened to C*P*P values and the D vectors are
    centred; the components are the top right-singular vectors.

    Returns:
        ``(filters, explained_variance_ratio)``: (k, C, P, P) unit-norm components (sign
        fixed so each has a non-negative sum) and (k,) fractions of the total variance.
    """
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


def rank(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of the values of a 1-D tensor, ties sharing their average rank (float64).

    The same as ``scipy.stats.rankdata(x)`` (method "average").
    """
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of the last copy of each distinct value
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (as ``scipy.stats.spearmanr``); NaN if one is constant."""
    rx, ry = rank(x) - (x.numel() + 1) / 2, rank(y) - (y.numel() + 1) / 2  # centred: ranks average (n+1)/2
    scale = float(rx.norm() * ry.norm())
    return float(rx @ ry) / scale if scale > 0 else math.nan


def _patch_matrix(sim: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``sim`` as an (n, n) float64 matrix over the patches of ``grid`` in row-major order."""
    rows, cols = grid
    n = rows * cols
    if sim.numel() != n * n:
        raise ValueError(f"similarity of shape {tuple(sim.shape)} does not cover a {rows}x{cols} grid of patches")
    return sim.detach().reshape(n, n).double()


def _grid_pairs(sim: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity, row offset and column offset of every pair of distinct patches i < j (row-major)."""
    s = _patch_matrix(sim, grid)  # (n, n)
    i, j = torch.triu_indices(len(s), len(s), offset=1)  # (2, n(n-1)/2)
    cols = grid[1]
    return s[i, j], i // cols - j // cols, i % cols - j % cols


@dataclass(frozen=True)
class PositionStructure:
    """How much of the 2-D image grid a position-embedding similarity holds (:func:`position_structure`).

    Attributes:
        closeness: Spearman correlation between similarity and *closeness* (minus grid
            distance) over all pairs of distinct patches: +1 when similarity falls
            monotonically with distance ("nearby patches are more similar"), about 0 for
            random embeddings, negative when far patches are the more similar.
        row_column: partial Spearman correlation between similarity and sharing a row or
            column, given grid distance: above 0 when patches in the same row or column are
            more similar than distance alone predicts (the paper's row-column structure),
            about 0 for random embeddings, 0 when similarity is a decreasing function of
            distance alone. NaN on a grid of one row or column.
    """

    closeness: float
    row_column: float


def position_structure(sim: torch.Tensor, grid: tuple[int, int]) -> PositionStructure:
    """Structure scores of a position-embedding similarity (paper Fig. 7, center).

    Args:
        sim: (rows, cols, rows, cols) or (n, n) similarity of patches in row-major order,
            e.g. from :func:`position_similarity`.
        grid: (rows, cols) of patches.
    """
    pairs, dr, dc = _grid_pairs(sim, grid)  # (pairs,) each
    closeness = -(dr**2 + dc**2)  # squared: ranks as distance, with exact ties
    line = ((dr == 0) | (dc == 0)).double()
    sd, sl, ld = spearman(pairs, closeness), spearman(pairs, line), spearman(line, closeness)
    # Partial correlation of similarity and line given closeness, on ranks.
    scale = math.sqrt(max((1 - sd**2) * (1 - ld**2), 0.0))
    row_column = (sl - sd * ld) / scale if scale > 0 else math.nan
    return PositionStructure(closeness=sd, row_column=row_column)


@dataclass(frozen=True)
class MirrorScore:
    """Left-right mirror symmetry of a position-embedding similarity (:func:`mirror_score`).

    Attributes:
        mirror: mean similarity of a patch to its mirror position (row r, column C-1-c),
            over patches off the middle column.
        neighbour: mean, over patches, of a patch's mean similarity to its immediate
            neighbours (up, down, left, right).
    """

    mirror: float
    neighbour: float

    @property
    def excess(self) -> float:
        """``mirror - neighbour``: about 0 when a patch is as similar to its mirror position as to
        its neighbours (what horizontal-flip augmentation teaches), clearly below 0 when the
        embedding tells left from right, 1 - ``neighbour`` for an exactly mirror-symmetric one."""
        return self.mirror - self.neighbour


def mirror_score(sim: torch.Tensor, grid: tuple[int, int]) -> MirrorScore:
    """Similarity of each patch to its left-right mirror position, against its neighbours'.

    Args:
        sim: (rows, cols, rows, cols) or (n, n) similarity of patches in row-major order.
        grid: (rows, cols) of patches. NaN where no patch has a mirror (one column) or a neighbour.
    """
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


def patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """Pixel distance between the centres of every pair of patches: (rows*cols, rows*cols)."""
    rows, cols = grid
    ph, pw = patch_size
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    centres = torch.stack([(r.flatten() + 0.5) * ph, (c.flatten() + 0.5) * pw], -1)  # (n, 2) pixels
    return torch.cdist(centres, centres)


def _patch_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int,
                     renormalize: bool) -> torch.Tensor:
    """Attention of patch queries over patch keys, (B, heads, n, n), float32."""
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be (B, heads, N, N), got {tuple(attn.shape)}")
    n = grid[0] * grid[1]
    if attn.shape[-1] != n + num_prefix_tokens:
        raise ValueError(f"attn has {attn.shape[-1]} tokens; a {grid} grid with {num_prefix_tokens} prefix "
                         f"tokens needs {n + num_prefix_tokens}")
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:].float()
    if renormalize:
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return a


def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch_size: tuple[int, int],
                            num_prefix_tokens: int = 1, renormalize: bool = False) -> torch.Tensor:
    """Attention-weighted distance in pixels between query and key patches, per head (Fig. 7 right).

    Only patch queries and patch keys count. Two conventions:

    * ``renormalize=False`` (default, the paper's): the raw weights of patch queries over
      patch keys, so attention given to prefix tokens contributes no distance. This is
      the code that produced Fig. 7 (right), posted by the paper's author in
      google-research/vision_transformer issue #162 (``w = attn[block][example, head, 1:, 1:]``,
      a weighted sum of pixel distances averaged over queries and images); probing-vits
      computes the same.
    * ``renormalize=True``: each query's attention over patch keys is rescaled to sum to 1,
      a true weighted mean over patches (larger where prefix tokens take much attention).

    Args:
        attn: post-softmax attention (B, heads, N, N).
        grid: (rows, cols) of patches. patch_size: (height, width) in pixels.
        num_prefix_tokens: leading non-patch tokens (class token, registers).
        renormalize: which convention (above).

    Returns:
        (heads,) mean distance in pixels, averaged over query patches and the batch.
    """
    a = _patch_attention(attn, grid, num_prefix_tokens, renormalize)  # (B, H, n, n)
    dist = patch_distances(grid, patch_size).to(a.device, a.dtype)  # (n, n)
    return torch.einsum("bhqk,qk->h", a, dist).double().div(a.shape[0] * a.shape[2]).float()  # (H,)


def uniform_attention_distance(grid: tuple[int, int], patch_size: tuple[int, int], num_prefix_tokens: int = 1,
                               renormalize: bool = False) -> float:
    """Mean attention distance in pixels under uniform attention: the reference for Fig. 7 (right).

    With ``renormalize=True`` (or no prefix tokens) it is the mean distance between patch
    centres over all (query, key) pairs, e.g. 16.5 px for an 8x8 grid of 4-pixel patches.
    Under the paper's convention (``renormalize=False``) uniform attention over all
    n + prefix tokens gives prefix tokens their share and them no distance, so the value
    is that mean times n / (n + ``num_prefix_tokens``). Equals
    :func:`mean_attention_distance` of a uniform attention tensor under the same convention.
    """
    n = grid[0] * grid[1]
    mean = float(patch_distances(grid, patch_size).mean())  # over all n*n pairs, self included
    return mean if renormalize else mean * n / (n + num_prefix_tokens)


def attention_entropy(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Entropy in nats of each patch query's attention over patch keys, per head: (heads,)."""
    a = _patch_attention(attn, grid, num_prefix_tokens, renormalize=True)
    return -torch.special.xlogy(a, a).sum(-1).double().mean(dim=(0, 2)).float()


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
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) as used for the paper's Fig. 6.

    Per layer the heads are fused (``"mean"``, ``"max"`` or ``"min"``); optionally the
    weakest ``discard_ratio`` of each sample's weights are zeroed, never an entry whose
    query or key is the class token (token 0); the identity is added as 0.5*A + 0.5*I,
    rows are renormalised, and the layers are multiplied from first to last.

    ``discard_ratio`` differs from vit-explain (jacobgildenblat/vit-explain) by design:
    vit-explain protects only the class-to-class entry from discarding and divides entry
    (i, j) by row j's sum (the wrong axis, by broadcasting), so its rows do not sum to 1;
    here the class token's whole row and column are protected and each row is renormalised.

    Args:
        attns: per-layer attention (B, heads, N, N), in network order, or a mapping of
            layer index -> such a tensor (a Capture's ``attn``), taken in index order.

    Returns:
        (B, patches): the class token's rolled-out attention over the patch tokens (not rescaled).
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
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
    protected[0, :] = protected[:, 0] = True
    result = eye.expand(b, n, n)
    for attn in attns:
        a = attn.double()
        fused = a.mean(1) if head_fusion == "mean" else a.amax(1) if head_fusion == "max" else a.amin(1)  # (B, N, N)
        if discard_ratio > 0:
            drop = min(int(n * n * discard_ratio), (n - 1) ** 2)  # protected entries never count
            scores = fused.masked_fill(protected, float("inf")).flatten(1)  # (B, N*N)
            weakest = scores.topk(drop, dim=-1, largest=False).indices
            fused = fused.flatten(1).scatter(1, weakest, 0.0).view(b, n, n)
        a = 0.5 * fused + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result[:, 0, num_prefix_tokens:].float()


# --- representation similarity ---------------------------------------------------------


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
    """Linear CKA (Kornblith et al. 2019) between representations x (n, p) and y (n, q), in float64.

    ``unbiased=True`` uses the unbiased HSIC estimator (Nguyen et al. 2021), which is
    not biased upwards for few samples. Rows must be the same n examples.
    """
    x, y = _check_features(x, "x"), _check_features(y, "y")
    _check_same_rows(x, y)
    k, l = x @ x.T, y @ y.T
    denom = torch.sqrt(_hsic(k, k, unbiased) * _hsic(l, l, unbiased))
    if not denom > 0:
        raise ValueError("CKA is undefined here: a representation has zero (estimated) self-similarity")
    return float(_hsic(k, l, unbiased) / denom)


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) between every pair of two layer lists.

    For each minibatch the unbiased HSIC of every (x-layer, y-layer) pair and of each
    layer with itself is added up; CKA is their ratio over all minibatches. Memory is
    one Gram matrix per layer for one minibatch, whatever the dataset's size.
    """

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


# --- few-shot linear probes --------------------------------------------------------------

#: Weight of the constant feature that stands for the bias: large, so the ridge penalty
#: barely touches the bias (the choice of big_vision's few-shot evaluator).
FEWSHOT_BIAS = 100.0
#: big_vision's default ridge strength for few-shot evaluation.
FEWSHOT_L2 = 2.0**10


def ridge_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                     l2: float = FEWSHOT_L2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression of features onto +-1 one-hot targets (big_vision few-shot).

    Features are standardised with the training set's mean and std (+1e-5), a constant
    column of ``FEWSHOT_BIAS`` is appended, and ``W = (X^T X + l2 I)^-1 X^T Y`` is solved
    in float64, in its dual form ``X^T (X X^T + l2 I)^-1 Y`` when there are fewer examples
    than features (the usual few-shot case).

    Args:
        x: (n, d) training features; y: (n,) integer labels in ``0..num_classes-1``.

    Returns:
        ``(weights (d + 1, C), mean (d,), std (d,))`` for :func:`ridge_predict`.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    x = x.detach().double().cpu()
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-5
    a = torch.cat([(x - mean) / std, torch.full((len(x), 1), FEWSHOT_BIAS, dtype=x.dtype)], 1)  # (n, d+1)
    targets = 2.0 * F.one_hot(y.long().cpu(), num_classes).double() - 1.0  # (n, C)
    n, d = a.shape
    if n >= d:
        w = torch.linalg.solve(a.T @ a + l2 * torch.eye(d, dtype=a.dtype), a.T @ targets)
    else:
        w = a.T @ torch.linalg.solve(a @ a.T + l2 * torch.eye(n, dtype=a.dtype), targets)
    return w, mean, std


def ridge_predict(model: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Class predictions (n,) of a :func:`ridge_classifier` for features ``x`` (n, d)."""
    w, mean, std = model
    a = torch.cat([(x.detach().double().cpu() - mean) / std, torch.full((len(x), 1), FEWSHOT_BIAS, dtype=w.dtype)], 1)
    return (a @ w).argmax(1)


def fewshot_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     num_classes: int, l2: float = FEWSHOT_L2) -> float:
    """Test accuracy (a fraction) of the ridge probe fitted on ``train_x``/``train_y``."""
    probe = ridge_classifier(train_x, train_y, num_classes, l2)
    return float((ridge_predict(probe, test_x) == test_y.cpu()).double().mean())


# --- streaming per-head statistics ------------------------------------------------------


class HeadStats:
    """Per-layer, per-head attention statistics accumulated batch by batch.

    Keeps running sums of mean attention distance (pixels) and attention entropy (nats)
    over images, and each image's own per-head values (the spread over images, for
    bootstrap intervals: images x layers x heads floats, 2 MB for 10,000 images of a
    12-layer, 4-head model). ``renormalize`` picks the distance convention of
    :func:`mean_attention_distance` (default the paper's, False).
    """

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
            dist = patch_distances(grid, patch_size).to(p.device, p.dtype)  # (n, n)
            d = torch.einsum("bhqk,qk->bh", p, dist).double().div(p.shape[2]).cpu()  # (B, H)
            q = _patch_attention(a, grid, num_prefix_tokens, renormalize=True)
            e = (-torch.special.xlogy(q, q).sum(-1)).double().mean(2).cpu()  # (B, H)
            self.distance[layer] = self.distance.get(layer, 0) + d.sum(0)
            self.entropy[layer] = self.entropy.get(layer, 0) + e.sum(0)
            self.per_image_distance.setdefault(layer, []).append(d.float())
            self.per_image_entropy.setdefault(layer, []).append(e.float())
        self.images += batch or 0

    def result(self) -> dict[str, torch.Tensor]:
        """Averages over images and each image's values.

        ``{"distance": (layers, heads), "entropy": (layers, heads), "distance_per_image":
        (images, layers, heads), "entropy_per_image": (images, layers, heads)}``, layers in
        ascending block order; pixels and nats.
        """
        if not self.images:
            raise ValueError("no batch was added")
        layers = sorted(self.distance)
        return {
            "distance": torch.stack([self.distance[i] for i in layers]).float() / self.images,
            "entropy": torch.stack([self.entropy[i] for i in layers]).float() / self.images,
            "distance_per_image": torch.stack([torch.cat(self.per_image_distance[i]) for i in layers], 1),
            "entropy_per_image": torch.stack([torch.cat(self.per_image_entropy[i]) for i in layers], 1),
        }


def receptive_fields(model: nn.Module) -> list[tuple[str, float]]:
    """Theoretical receptive field in pixels after each block of a CNN, in forward order.

    Walks the convolutions and poolings on the main path (shortcut ``downsample``
    branches do not widen it) with r += (k - 1) * dilation * jump, jump *= stride.
    Returns ``[(block name, pixels), ...]``, e.g. ``("layer2.1", 27.0)``.
    """
    r, jump, out = 1.0, 1.0, {}
    for name, m in model.named_modules():
        if "downsample" in name or not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        d = getattr(m, "dilation", 1)
        d = d if isinstance(d, int) else d[0]
        r += (k - 1) * d * jump
        jump *= s
        out[name.rsplit(".", 1)[0] if "." in name else name] = r
    if not out:
        raise ValueError(f"{type(model).__name__} has no convolutions or poolings")
    return list(out.items())


def token_receptive_field(model: nn.Module) -> float:
    """Pixels across the input window one patch token of a ViT is computed from, before any attention.

    A plain ViT's token sees its own patch (``patch_size``); a hybrid's sees the receptive
    field of its CNN and projection (:func:`receptive_fields` of ``patch_embed``: 25 px for
    ``hybrid_tiny_c10``, whose tokens are 4 px apart). Square windows: the larger side.
    """
    if is_hybrid(model):
        return receptive_fields(model.patch_embed)[-1][1]
    patch_grid(model)
    return float(max(model.patch_embed.patch_size))


# --- one image's attention, for display -------------------------------------------------


def _check_image_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> None:
    n = grid[0] * grid[1] + num_prefix_tokens
    if attn.ndim != 3 or tuple(attn.shape[-2:]) != (n, n):
        hint = ": for image i of a batch pass attn[i]" if attn.ndim == 4 else ""
        raise ValueError(f"attention must be one image's (heads, {n}, {n}) for a {grid} grid with "
                         f"{num_prefix_tokens} prefix tokens, got {tuple(attn.shape)}{hint}")


def query_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int, query: tuple[int, int],
                    head: int | None = None) -> torch.Tensor:
    """Where one query patch attends: its attention over the patch keys, as a map.

    Args:
        attn: one image's post-softmax attention (heads, N, N), N = prefix + patches.
        grid: (rows, cols) of patches. query: (row, col) of the query patch, 0-based.
        head: a head index, or None for the mean over heads.

    Returns:
        (rows, cols) float32: the attention the query gives each patch (prefix keys left out).
    """
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


def class_token_attention(attns: Sequence[torch.Tensor], grid: tuple[int, int],
                          num_prefix_tokens: int) -> torch.Tensor:
    """The class token's attention over the patches, for every layer and head.

    Args:
        attns: per layer, one image's post-softmax attention (heads, N, N); token 0 is
            the class token.

    Returns:
        (layers, heads, rows, cols) float32.
    """
    if num_prefix_tokens < 1:
        raise ValueError("the model has no prefix tokens, so no class token to read attention from")
    if isinstance(attns, Mapping):
        raise TypeError("attns must be a list of one image's attention (heads, N, N) per layer; from a Capture "
                        "pass [a[i] for a in cap.attn.values()] for image i")
    for a in attns:
        _check_image_attention(a, grid, num_prefix_tokens)
    maps = torch.stack([a[:, 0, num_prefix_tokens:].float() for a in attns])  # (L, H, patches)
    return maps.reshape(len(attns), maps.shape[1], *grid)


def scale_to_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (rows, cols) map of ``maps`` (..., rows, cols) divided by its own maximum (maps of zeros stay 0)."""
    peak = maps.flatten(-2).amax(-1).clamp_min(1e-12)  # (...)
    return maps / peak[..., None, None]
