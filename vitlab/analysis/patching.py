"""Activation patching: run a corrupted input, put back one piece of the clean run (the residual stream at one
(layer, token), or one head's output) and measure how much of the clean logit difference comes back, 0 (corrupted)
to 1 (clean). Corrupted inputs are the same image with a region of patches filled with the dataset mean, or an
image of another class."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from . import metrics, residual
from .capture import restoring
from .lens import check_labels
from .references import bootstrap_interval

CORRUPTIONS = ("region", "pairs")  #: a region of patches filled with the mean, or an image of another class
WHAT = ("resid", "head")  #: the residual stream at each (layer, token), or each head's output at every token
MIN_GAP = 1.0  #: pairs whose clean and corrupted logit differences are closer than this (logits) are dropped


def central_region(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The central quarter of a (rows, cols) patch grid: the middle half of the rows and of the columns."""
    rows, cols = grid
    r0, c0 = rows // 4, cols // 4
    return [(r, c) for r in range(r0, r0 + max(1, rows // 2)) for c in range(c0, c0 + max(1, cols // 2))]


@dataclass(frozen=True, kw_only=True)
class PatchingResult:
    """Recovered logit difference per kept pair (:func:`patching_analysis`)."""
    corruption: str  # "region" or "pairs"
    what: str  # "resid": recovered (pairs, depth + 1, tokens), row i entering block i, the last row after the last
    # block (the lens's rows); "head": (pairs, depth, heads)
    recovered: torch.Tensor
    clean_diff: torch.Tensor  # (pairs,) logit[clean class] - logit[other class] on the clean input
    corrupt_diff: torch.Tensor  # ... on the corrupted input
    classes: torch.Tensor  # (pairs, 2): the clean class and the other class of each kept pair
    dropped: int  # pairs left out: clean and corrupted differences closer than min_gap
    min_gap: float
    grid: tuple[int, int]
    prefix: int  # prefix tokens before the patch tokens (class, registers)
    region: list[tuple[int, int]]  # the corrupted patches (region corruption), else []
    seconds: float

    @property
    def pairs(self) -> int:
        return len(self.recovered)

    def mean(self) -> torch.Tensor:
        """(depth + 1, tokens) or (depth, heads) mean recovered fraction over the kept pairs."""
        return self.recovered.double().mean(0)

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """95% bootstrap interval over pairs of :meth:`mean`."""
        return bootstrap_interval(self.recovered)

    def row_name(self, row: int) -> str:
        """What row ``row`` of residual-stream patching is, layers counted from 1: "entering layer 3", or "after
        layer 6" (the last row, what the head reads)."""
        blocks = self.recovered.shape[1] - 1
        return f"entering layer {row + 1}" if row < blocks else f"after layer {blocks}"

    def patch_maps(self) -> torch.Tensor:
        """(depth + 1, rows, cols) mean recovered fraction of each patch token ("resid" only)."""
        if self.what != "resid":
            raise ValueError("patch maps are of residual-stream patching (what='resid')")
        return self.mean()[:, self.prefix:].reshape(-1, *self.grid)


def _corrupt_region(model: nn.Module, x: torch.Tensor, region: list[tuple[int, int]]) -> torch.Tensor:
    """``x`` (normalised) with the pixels of ``region``'s patches set to the normalised dataset mean, 0."""
    ph, pw = metrics.pixel_patch_size(model)
    out = x.clone()
    for r, c in region:
        out[..., r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = 0.0
    return out


def _partners(labels: torch.Tensor) -> torch.Tensor:
    """For each image, the next image (cyclically) of another class; -1 when all share one class."""
    n = len(labels)
    out = torch.full((n,), -1, dtype=torch.long)
    for i in range(n):
        for step in range(1, n):
            j = (i + step) % n
            if labels[j] != labels[i]:
                out[i] = j
                break
    return out


def _diff(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    logits = logits.double().cpu()
    return logits.gather(1, classes[:, :1])[:, 0] - logits.gather(1, classes[:, 1:])[:, 0]


def _capture_z(model: nn.Module, states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each block's projection input (B, T, heads x head_dim) of the run whose block inputs are ``states``."""
    zs = []
    for i, block in enumerate(model.blocks):
        handle = block.attn.proj.register_forward_pre_hook(lambda _m, args: zs.append(args[0]))
        try:
            block(states[i])
        finally:
            handle.remove()
    return zs


def _check_corruption(model: nn.Module, labels: torch.Tensor, corruption: str, what: str,
                      region: list[tuple[int, int]] | None):
    """(grid, region (patches, or [] for pairs), each image's partner (None for a region)), or a one-line
    ValueError."""
    if corruption not in CORRUPTIONS or what not in WHAT:
        raise ValueError(f"corruption must be one of {CORRUPTIONS} and what one of {WHAT}; got {corruption!r}, "
                         f"{what!r}")
    grid = metrics.patch_grid(model)
    if corruption == "pairs":
        partner = _partners(labels)
        if bool((partner < 0).any()):
            raise ValueError("pairs need images of at least two classes")
        return grid, [], partner
    region = central_region(grid) if region is None else [tuple(int(v) for v in p) for p in region]
    if not region or any(not (0 <= r < grid[0] and 0 <= c < grid[1]) for r, c in region):
        raise ValueError(f"region must be (row, col) patches inside the {grid[0]}x{grid[1]} grid, got {region}")
    return grid, region, None


@torch.no_grad()
def patching_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, corruption: str = "region",
                      what: str = "resid", region: list[tuple[int, int]] | None = None, min_gap: float = MIN_GAP,
                      batch_size: int = 16) -> PatchingResult:
    """Patch clean activations into corrupted runs of ``model`` on uint8 ``images`` with ``labels``.

    Args:
        corruption: "region": each image with ``region`` (patch (row, col) pairs; default the central quarter)
            filled with the dataset mean, the other class being the corrupted run's top class besides the label;
            "pairs": each image against the next image of another class, whose class is the other class.
        what: "resid" patches the residual stream entering each block, and after the last, at one token; "head"
            one head's output (its slice of the projection's input) at every token.
        min_gap: pairs whose clean logit difference is not at least this much above the corrupted one are dropped.
    """
    s = residual.stream(model)
    labels = check_labels(images, labels, classes=model.head.out_features)
    grid, region, partner = _check_corruption(model, labels, corruption, what, region)
    started = time.perf_counter()
    rec, clean_d, corrupt_d, kept_classes, dropped = [], [], [], [], 0
    with restoring(model):
        model.eval()
        for start in range(0, len(images), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(images)))
            x = residual.model_input(model, images[idx])
            clean = residual.block_inputs(model, x)
            if partner is None:
                bad = residual.block_inputs(model, _corrupt_region(model, x, region))
                other = residual.readout(model, bad[-1]).double().cpu()
                other[torch.arange(len(idx)), labels[idx]] = -torch.inf
                classes = torch.stack([labels[idx], other.argmax(-1)], 1)
            else:
                bad = residual.block_inputs(model, residual.model_input(model, images[partner[idx]]))
                classes = torch.stack([labels[idx], labels[partner[idx]]], 1)
            dc = _diff(residual.readout(model, clean[-1]), classes)
            dx = _diff(residual.readout(model, bad[-1]), classes)
            keep = dc - dx >= min_gap
            dropped += int((~keep).sum())
            if not keep.any():
                continue
            k = keep.nonzero()[:, 0]
            clean, bad, classes, dc, dx = [t[k] for t in clean], [t[k] for t in bad], classes[k], dc[k], dx[k]
            if what == "resid":
                rec.append(_patch_resid(model, clean, bad, classes, dc, dx))
            else:
                rec.append(_patch_heads(model, s, clean, bad, classes, dc, dx))
            clean_d.append(dc), corrupt_d.append(dx), kept_classes.append(classes)
    if not rec:
        raise ValueError(f"every pair was dropped: no clean and corrupted logit differences {min_gap} apart; "
                         "give more images or a smaller min_gap")
    return PatchingResult(corruption=corruption, what=what, recovered=torch.cat(rec), clean_diff=torch.cat(clean_d),
                          corrupt_diff=torch.cat(corrupt_d), classes=torch.cat(kept_classes), dropped=dropped,
                          min_gap=float(min_gap), grid=tuple(grid), prefix=s.prefix, region=region,
                          seconds=time.perf_counter() - started)


def _patch_resid(model, clean, bad, classes, dc, dx) -> torch.Tensor:
    """(B, depth + 1, tokens): the corrupted run with one token of one block's input (or of the last block's
    output: what the readout reads) taken from the clean run."""
    b, t = clean[0].shape[:2]
    out = torch.empty(b, len(clean), t, dtype=torch.float64)
    for layer in range(len(clean)):
        for i in range(b):
            x = bad[layer][i].expand(t, -1, -1).clone()  # (T variants, T tokens, D)
            pos = torch.arange(t)
            x[pos, pos] = clean[layer][i]  # variant j takes token j from the clean run
            d = _diff(residual.readout(model, residual.run_blocks(model, x, layer)), classes[i].expand(t, -1))
            out[i, layer] = (d - dx[i]) / (dc[i] - dx[i])
    return out


def _patch_heads(model, s, clean, bad, classes, dc, dx) -> torch.Tensor:
    """(B, depth, heads): the corrupted run with one head's output at every token taken from the clean run."""
    z_clean = _capture_z(model, clean)
    out = torch.empty(len(dc), s.depth, s.heads, dtype=torch.float64)
    for layer in range(s.depth):
        for h in range(s.heads):
            edit = residual.replace_heads([h], s.head_dim, z_clean[layer])
            with residual.edited(model, {(layer, "head"): edit}):
                d = _diff(residual.readout(model, residual.run_blocks(model, bad[layer], layer)), classes)
            out[:, layer, h] = (d - dx) / (dc - dx)
    return out
