"""Which heads matter: each head's output replaced (zero ablation, or its mean per token position over reference
images) one at a time, each whole attention layer and MLP too, and the k most important heads together; the drop in
accuracy and in the true-class logit, per image, so every number has a bootstrap interval over images. Each ablation
runs from the cached input of the ablated block (:mod:`~vitlab.analysis.residual`), not a whole forward."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import residual
from .capture import restoring
from .lens import check_labels
from .references import bootstrap_interval

KINDS = ("mean", "zero")  #: what an ablated output is replaced by
TOP_K = 8  #: how many of the most important heads are ablated together, 1 to TOP_K


@dataclass(frozen=True, kw_only=True)
class AblationResult:
    """Ablation effects (:func:`ablation_analysis`): drops are clean minus ablated, per image, so > 0 means the
    model needs the part. Accuracy drops are in {-1, 0, 1} per image (a fraction once averaged)."""
    kind: str  # "mean" or "zero"
    reference_images: int  # images the mean ablation's means are over (0: zero ablation)
    labels: torch.Tensor  # (images,)
    clean_correct: torch.Tensor  # (images,) 1.0 where the unablated model is right
    clean_logit: torch.Tensor  # (images,) its true-class logit
    head_accuracy: torch.Tensor  # (images, depth, heads) accuracy drop when that head alone is ablated
    head_logit: torch.Tensor  # (images, depth, heads) true-class logit drop
    attn_accuracy: torch.Tensor  # (images, depth) the whole attention branch of a block ablated
    attn_logit: torch.Tensor
    mlp_accuracy: torch.Tensor  # (images, depth) the whole MLP ablated
    mlp_logit: torch.Tensor
    top_heads: list[tuple[int, int]]  # (layer, head), most important first (accuracy drop, then logit drop)
    top_accuracy: torch.Tensor  # (images, k) accuracy drop when the first k + 1 of top_heads are ablated together
    top_logit: torch.Tensor
    seconds: float  # wall time of the whole analysis

    @property
    def images(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        """The unablated model's accuracy on the images (a fraction)."""
        return float(self.clean_correct.mean())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.head_accuracy.shape[1:])

    def mean(self, name: str = "head_accuracy") -> torch.Tensor:
        """Mean over images of a per-image field, e.g. (depth, heads) for "head_accuracy", float64."""
        return getattr(self, name).double().mean(0)

    def interval(self, name: str = "head_accuracy") -> tuple[torch.Tensor, torch.Tensor]:
        """95% bootstrap interval over images of :meth:`mean`."""
        return bootstrap_interval(getattr(self, name))


def _check(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str,
           reference: torch.Tensor | None) -> tuple[residual.Stream, torch.Tensor]:
    s = residual.stream(model)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "mean" and (reference is None or len(reference) < 2):
        raise ValueError("mean ablation needs reference images (e.g. 256 training images) to average each head's "
                         "output over: pass reference=, or kind='zero'")
    return s, check_labels(images, labels, classes=model.head.out_features)


def _scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (B,), true-class logit (B,)) on the CPU in float64."""
    logits = logits.double().cpu()
    return (logits.argmax(-1) == y).double(), logits.gather(1, y[:, None])[:, 0]


class _Ablator:
    """Ablations of one model: the values an ablated site gets, and runs from a block's cached input."""

    def __init__(self, model: nn.Module, s: residual.Stream, kind: str, means: dict[str, torch.Tensor] | None):
        self.model, self.s, self.kind, self.means = model, s, kind, means

    def value(self, site: str, layer: int) -> torch.Tensor | float:
        return 0.0 if self.means is None else self.means[site][layer]

    def edit(self, layer: int, site: str, heads: Sequence[int] = ()) -> residual.Edit:
        if site == "head":
            return residual.replace_heads(heads, self.s.head_dim, self.value("head", layer))
        return residual.replace_all(self.value(site, layer))

    def run(self, states: list[torch.Tensor], edits: dict[tuple[int, str], residual.Edit]) -> torch.Tensor:
        """Logits with ``edits`` applied, from the input of the first edited block."""
        start = min(layer for layer, _ in edits)
        with residual.edited(self.model, edits):
            return residual.readout(self.model, residual.run_blocks(self.model, states[start], start))


def _heads_by_layer(heads: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    layers: dict[int, list[int]] = {}
    for layer, head in heads:
        layers.setdefault(layer, []).append(head)
    return layers


def _together(ablator: _Ablator, states: list[torch.Tensor], top: Sequence[tuple[int, int]],
              clean: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy drops, logit drops), each (B, len(top)): column k - 1 with the first k of ``top`` ablated together."""
    runs = []
    for k in range(1, len(top) + 1):
        edits = {(i, "head"): ablator.edit(i, "head", hs) for i, hs in _heads_by_layer(top[:k]).items()}
        runs.append(_scores(ablator.run(states, edits), y))
    return torch.stack([clean[0] - a for a, _ in runs], 1), torch.stack([clean[1] - b for _, b in runs], 1)


@torch.no_grad()
def ablation_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, kind: str = "mean",
                      reference: torch.Tensor | None = None, top_k: int = TOP_K, branches: bool = True,
                      batch_size: int = 250) -> AblationResult:
    """Ablate each head of ``model`` alone (and each block's attention and MLP when ``branches``, and the ``top_k``
    most important heads together) on uint8 ``images`` with ``labels``.

    Args:
        kind: "mean" replaces an output by its mean per token position over ``reference`` (uint8 images, e.g.
            256 training images); "zero" by zeros (a head's projection bias stays: it is no head's).
    """
    s, labels = _check(model, images, labels, kind, reference)
    started = time.perf_counter()
    with restoring(model):
        model.eval()
        ablator = _Ablator(model, s, kind, None if kind == "zero" else residual.site_means(model, reference))
        rows: dict[str, list] = {}

        batches = []
        for start in range(0, len(images), batch_size):
            y = labels[start:start + batch_size]
            states = residual.block_inputs(model, residual.model_input(model, images[start:start + batch_size]))
            clean = _scores(residual.readout(model, states[-1]), y)
            rows.setdefault("clean_correct", []).append(clean[0])
            rows.setdefault("clean_logit", []).append(clean[1])
            per_head = [[_scores(ablator.run(states, {(i, "head"): ablator.edit(i, "head", [h])}), y)
                         for h in range(s.heads)] for i in range(s.depth)]
            rows.setdefault("head_accuracy", []).append(
                torch.stack([torch.stack([clean[0] - a for a, _ in row], 1) for row in per_head], 1))
            rows.setdefault("head_logit", []).append(
                torch.stack([torch.stack([clean[1] - b for _, b in row], 1) for row in per_head], 1))
            if branches:
                for site in ("attn", "mlp"):
                    drops = [_scores(ablator.run(states, {(i, site): ablator.edit(i, site)}), y)
                             for i in range(s.depth)]
                    rows.setdefault(f"{site}_accuracy", []).append(torch.stack([clean[0] - a for a, _ in drops], 1))
                    rows.setdefault(f"{site}_logit", []).append(torch.stack([clean[1] - b for _, b in drops], 1))
            batches.append((start, clean))
        head_acc, head_logit = torch.cat(rows["head_accuracy"]), torch.cat(rows["head_logit"])
        order = sorted(((i, h) for i in range(s.depth) for h in range(s.heads)),
                       key=lambda ih: (-float(head_acc[:, ih[0], ih[1]].mean()),
                                       -float(head_logit[:, ih[0], ih[1]].mean())))
        top = order[:max(0, min(top_k, len(order)))]
        top_rows: dict[str, list] = {"accuracy": [], "logit": []}
        for start, clean in batches if top else []:
            y = labels[start:start + batch_size]
            states = residual.block_inputs(model, residual.model_input(model, images[start:start + batch_size]))
            for name, drops in zip(("accuracy", "logit"), _together(ablator, states, top, clean, y)):
                top_rows[name].append(drops)
    n = len(images)
    empty = torch.zeros(n, s.depth, dtype=torch.float64)
    cat = lambda name: torch.cat(rows[name]) if name in rows else empty  # noqa: E731
    return AblationResult(
        kind=kind, reference_images=0 if kind == "zero" else len(reference), labels=labels,
        clean_correct=cat("clean_correct"), clean_logit=cat("clean_logit"), head_accuracy=head_acc,
        head_logit=head_logit, attn_accuracy=cat("attn_accuracy"), attn_logit=cat("attn_logit"),
        mlp_accuracy=cat("mlp_accuracy"), mlp_logit=cat("mlp_logit"), top_heads=top,
        top_accuracy=torch.cat(top_rows["accuracy"]) if top else torch.zeros(n, 0, dtype=torch.float64),
        top_logit=torch.cat(top_rows["logit"]) if top else torch.zeros(n, 0, dtype=torch.float64),
        seconds=time.perf_counter() - started)


@torch.no_grad()
def head_effects(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
                 batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The over-training measurement: every head's mean-ablation drop in accuracy and true-class logit, (depth,
    heads) each, float64 means over ``images``: :func:`ablation_analysis` without branches or top heads."""
    result = ablation_analysis(model, images, labels, kind="mean", reference=reference, top_k=0, branches=False,
                               batch_size=batch_size)
    return {"accuracy": result.mean("head_accuracy"), "logit": result.mean("head_logit")}


@dataclass(frozen=True, kw_only=True)
class LinkResult:
    """Attention distance (paper Fig. 7) against ablation effect, one point per head (:func:`link_analysis`)."""
    distance: torch.Tensor  # (depth, heads) mean attention distance, pixels
    effect: torch.Tensor  # (depth, heads) mean ablation drop of ``measure``
    measure: str  # "accuracy" (a fraction) or "logit"
    kind: str  # the ablation's kind
    spearman: float  # rank correlation of distance and effect over heads
    spearman_low: float  # 95% bootstrap interval over images (distances and effects resampled together)
    spearman_high: float
    split: float  # heads below this distance (the heads' median) are "local", the rest "global"
    local: float  # mean effect of the local heads
    global_: float  # ... of the global heads
    difference: float  # local minus global
    difference_low: float
    difference_high: float
    top_k: list[tuple[int, float, float, float]]  # (k, accuracy drop, low, high) of the k top heads together
    accuracy: float  # the unablated model's accuracy on the images
    images: int


def _spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of the last dimension, batched: ranks (average for ties) then Pearson."""
    def rank(v: torch.Tensor) -> torch.Tensor:
        order = v.argsort(-1)
        r = torch.empty_like(v).scatter_(-1, order, torch.arange(v.shape[-1], dtype=v.dtype).expand_as(v).clone())
        # ties: the mean rank of equal values
        same = (v[..., :, None] == v[..., None, :]).to(v.dtype)
        return (same * r[..., None, :]).sum(-1) / same.sum(-1)
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / ((rx * rx).sum(-1) * (ry * ry).sum(-1)).sqrt().clamp_min(1e-300)


def link_analysis(distances: torch.Tensor, ablation: AblationResult, measure: str = "accuracy",
                  resamples: int = 1000, seed: int = 0) -> LinkResult:
    """Whether the heads a model needs are its local or its global ones: per-image head ``distances`` (images, depth,
    heads) (a :class:`~vitlab.analysis.distance.DistanceResult`'s ``per_image``) against ``ablation`` on the same
    images, in order. Heads are split at the median distance; intervals resample images for both together."""
    per_image = getattr(ablation, f"head_{measure}", None)
    if measure not in ("accuracy", "logit"):
        raise ValueError(f"measure must be 'accuracy' or 'logit', got {measure!r}")
    if tuple(distances.shape) != tuple(per_image.shape):
        raise ValueError(f"distances {tuple(distances.shape)} and ablation effects {tuple(per_image.shape)} must "
                         "be of the same images and heads: compute both on the same images")
    d, e = distances.double().cpu(), per_image.double().cpu()
    n, heads = len(d), d.shape[1] * d.shape[2]
    dist, eff = d.mean(0), e.mean(0)
    # the median halfway between the middle two (torch's median() takes the lower one: 11 local heads of 24)
    split = float(dist.flatten().quantile(0.5))
    local = dist < split if bool((dist < split).any()) else dist <= split
    per_image_diff = e[:, local].mean(1) - e[:, ~local].mean(1) if bool((~local).any()) else e[:, local].mean(1)
    low, high = bootstrap_interval(per_image_diff)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (resamples, n), generator=gen)
    rho = torch.cat([_spearman(d[p].mean(1).reshape(len(p), heads), e[p].mean(1).reshape(len(p), heads))
                     for p in picks.split(100)])
    lo, hi = torch.quantile(rho, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    top = []
    if ablation.top_accuracy.shape[1]:
        t_low, t_high = bootstrap_interval(ablation.top_accuracy)
        top = [(k + 1, float(ablation.top_accuracy[:, k].mean()), float(t_low[k]), float(t_high[k]))
               for k in range(ablation.top_accuracy.shape[1])]
    return LinkResult(distance=dist, effect=eff, measure=measure, kind=ablation.kind,
                      spearman=float(_spearman(dist.flatten()[None], eff.flatten()[None])[0]), spearman_low=lo,
                      spearman_high=hi, split=split, local=float(eff[local].mean()),
                      global_=float(eff[~local].mean()) if bool((~local).any()) else float("nan"),
                      difference=float(per_image_diff.mean()), difference_low=float(low),
                      difference_high=float(high), top_k=top, accuracy=ablation.accuracy, images=n)
