"""Measured readouts: :func:`readout` of a Fig. 6/7 result says what the model shows, beside the paper's claim."""
from __future__ import annotations

import functools
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..analysis.distance import DistanceResult
from ..analysis.filters import FiltersResult
from ..analysis.positions import PositionResult
from ..analysis.rollout import RolloutResult
from .style import number, px, spread_text

#: A head is "local" when its whole 95% interval lies below this fraction of the uniform-attention distance.
LOCAL_FRACTION = 0.5
#: Position embeddings "hold the grid" when the Spearman structure score reaches this (and beats random init).
_STRUCTURE_THRESHOLD = 0.3

#: The paper's reading of each figure, beside its readout.
PAPER_DISTANCE = ("in the lowest layers some heads attend locally while others attend across most of the "
                  "image, and attention distance grows with depth.")
PAPER_HYBRID_DISTANCE = ("(section 4.5) the highly localised attention of a ViT's lowest layers is less pronounced in "
                         "hybrid models that apply a ResNet before the Transformer, suggesting that it may serve a "
                         "similar function as early convolutional layers in CNNs.")
PAPER_POSITION = ("nearby patches have similar position embeddings, and a row-column structure appears "
                  "(patches in the same row or column have similar embeddings).")
PAPER_FILTERS = ("the top principal components of the patch-embedding filters resemble plausible basis functions "
                 "for a low-dimensional representation of the fine structure within each patch.")
PAPER_ROLLOUT = "the model attends to image regions that are semantically relevant for classification."


@dataclass(frozen=True, kw_only=True)
class Readout:
    """What one figure shows for this model, measured."""
    figure: str  # the paper's figure, e.g. "Fig. 7 (right)"
    text: str  # one or two plain sentences with the measured numbers
    paper: str  # the paper's claim for that figure, in one sentence

    def _repr_markdown_(self) -> str:
        return f"**Measured ({self.figure}):** {self.text}\n\n*Paper:* {self.paper}"

    def html(self) -> str:
        """The readout as HTML, for a widget under an explorer's figure."""
        return (f"<b>Measured ({html.escape(self.figure)}):</b> {html.escape(self.text)}<br>"
                f"<i>Paper:</i> {html.escape(self.paper)}")

    def __str__(self) -> str:
        return f"{self.text}\nPaper: {self.paper}"


#: Where a model's number lies against the random-init seeds' range (lowest to highest seed).
Versus = Literal["below", "inside", "above"]


def versus(value: float, reference: Sequence[float]) -> Versus | None:
    """Whether ``value`` lies below, inside or above the range of ``reference`` values; None without any."""
    if not reference:
        return None
    return "below" if value < min(reference) else "above" if value > max(reference) else "inside"


def _against(where: Versus, reference: Sequence[float], digits: int = 2, unit: str = "", scale: float = 1.0) -> str:
    """ "above random init's range (3 seeds: 4.7 to 5.2%)" for :func:`versus`'s ``where``."""
    lo, hi = (number(scale * f(reference), digits) for f in (min, max))
    return f"{where} random init's range ({len(reference)} seeds: {lo} to {hi}{unit})"


@dataclass(frozen=True, kw_only=True)
class DistanceReadout(Readout):
    """Fig. 7 (right): ``local`` (layers, heads) marks heads whose 95% interval is below LOCAL_FRACTION of uniform (and
    the layer's lowest random-init head), ``local_heads`` as (layer, head) from 1; ``stem``: a hybrid's heads all
    "below" or "above" the window each token sees through its CNN, else "across" (None for a ViT)."""
    local: torch.Tensor
    local_heads: tuple[tuple[int, int], ...]
    stem: Literal["below", "across", "above"] | None = None


@dataclass(frozen=True, kw_only=True)
class PositionReadout(Readout):
    """Fig. 7 (center): ``structure_vs_init``, the structure score against random init's range; ``grid_structure``:
    it reaches 0.3 and lies above it; ``mirror_symmetric``: mirror similarity >= 0.3 and excess >= -0.05."""
    structure_vs_init: Versus | None
    grid_structure: bool
    mirror_symmetric: bool


@dataclass(frozen=True, kw_only=True)
class FiltersReadout(Readout):
    """Fig. 7 (left): the variance share of the first component (``first_vs_init``) and of the first k
    (``first_k_vs_init``) against the random-init seeds' range; None without a random-init reference."""
    first_vs_init: Versus | None
    first_k_vs_init: Versus | None


@functools.singledispatch
def readout(result: object) -> Readout:
    """The readout of an analysis result (a :class:`Readout` subclass; a plain one for a rollout)."""
    raise TypeError(f"no readout for {type(result).__name__}: pass the result of distance_analysis, "
                    "filters_analysis, position_analysis or rollout_analysis (vitlab.analysis)")


def _where_local(local: torch.Tensor, layers: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The (layer, head) pairs, numbered from 1, of a (layers, heads) mask over block indices ``layers``."""
    return tuple((layers[i] + 1, h + 1) for i, h in local.nonzero().tolist())


def _local_text(heads: tuple[tuple[int, int], ...], total: int, rule: str) -> str:
    if not heads:
        return f"No local head in any layer ({rule})."
    by_layer = {layer: [h for n, h in heads if n == layer] for layer, _ in heads}
    where = "; ".join(f"layer {layer}: head{'s' * (len(h) > 1)} {', '.join(map(str, h))}"
                      for layer, h in by_layer.items())
    return f"Local heads, {len(heads)} of {total} ({rule}): {where}."


def _stem_text(mean: torch.Tensor, field: float) -> tuple[str, str]:
    beyond, total = int((mean > field).sum()), mean.numel()
    stem = "below" if beyond == 0 else "above" if beyond == total else "across"
    said = {"below": "every head's mean distance lies below it, so on average a head attends to tokens whose "
                     "windows overlap the query's own",
            "above": "every head's mean distance lies beyond it, so on average a head attends to tokens whose "
                     "windows do not overlap the query's own",
            "across": f"{beyond} of {total} heads' mean distances lie beyond it, the others below"}[stem]
    return stem, (f" A hybrid: before any attention each token already sees a {field:.0f}-pixel window of the image "
                  f"through its CNN (the stem line); {said} (heads {float(mean.min()):.1f} to "
                  f"{px(float(mean.max()))}).")


@readout.register(DistanceResult)
def _distance(result: DistanceResult) -> DistanceReadout:
    high, band, layers, head = result.high.double(), result.band, result.layers, result.lowest
    local = high < LOCAL_FRACTION * result.uniform
    if band:
        local &= high < torch.tensor([b[0] for b in band], dtype=torch.float64)[:, None]
    heads = _where_local(local, layers)
    rule = (f"whole 95% interval below {px(LOCAL_FRACTION * result.uniform)}, {LOCAL_FRACTION:.0%} of uniform "
            "attention" + (", and below the layer's lowest random-init head" if band else ""))
    refs = f"uniform attention: {px(result.uniform)}" + (f"; random init: {band[0][0]:.1f} to {px(band[0][1])}"
                                                         if band else "")
    per_layer = result.layer_means
    deepest = max(range(len(per_layer)), key=per_layer.__getitem__)
    text = (f"{_local_text(heads, local.numel(), rule)} Lowest layer ({layers[0] + 1}): heads attend "
            f"{result.layer_min[0]:.1f} to {px(result.layer_max[0])} ({refs}); its most local head {head.head + 1} "
            f"attends {px(head.mean)} (95% interval {head.low:.1f} to {head.high:.1f}, std {head.std:.1f} across "
            f"{result.images} images). Mean over heads: {px(per_layer[0])} in layer {layers[0] + 1}, "
            f"{px(per_layer[-1])} in layer {layers[-1] + 1}, largest in layer {layers[deepest] + 1}.")
    stem = None
    if result.token_field is not None:
        stem, said = _stem_text(result.mean.double(), result.token_field)
        text += said
    paper = PAPER_DISTANCE if stem is None else PAPER_HYBRID_DISTANCE
    return DistanceReadout(figure="Fig. 7 (right)", text=text, paper=paper, local=local, local_heads=heads, stem=stem)


@readout.register(PositionResult)
def _position(result: PositionResult) -> PositionReadout:
    structure, mirror = result.structure, result.mirror
    init = [r.closeness for r, _ in result.reference]
    where = versus(structure.closeness, init)
    grid = structure.closeness >= _STRUCTURE_THRESHOLD and where in ("above", None)
    symmetric = mirror.excess >= -0.05 and mirror.mirror >= 0.3
    init = f", {_against(where, init)}" if where else ""
    strength = "strong" if structure.closeness >= 0.7 else "partial"
    first = (f"Nearby patches are more similar: structure score {structure.closeness:.2f}{init}, a {strength} "
             f"grid structure; row/column excess {structure.row_column:.2f}." if grid else
             f"No grid structure: structure score {structure.closeness:.2f}{init}; row/column excess "
             f"{structure.row_column:.2f}.")
    second = (f" Mirror-symmetric left to right, as horizontal-flip augmentation teaches: similarity to the mirror "
              f"position {mirror.mirror:.2f}, to neighbours {mirror.neighbour:.2f}." if symmetric else
              f" Not mirror-symmetric: similarity to the mirror position {mirror.mirror:.2f}, to neighbours "
              f"{mirror.neighbour:.2f}.")
    return PositionReadout(figure="Fig. 7 (center)", text=first + second, paper=PAPER_POSITION,
                           structure_vs_init=where, grid_structure=grid, mirror_symmetric=symmetric)


#: What the filters hold against random init, by where the two shares lie.
_FILTERS_SAID = {("above", "above"): "more structure than random init",
                 ("inside", "inside"): "no more structure than random init",
                 ("below", "below"): "less structure than random init: the variance is spread more evenly"}


@readout.register(FiltersResult)
def _filters(result: FiltersResult) -> FiltersReadout:
    first, first_k, k, ref_first, ref_k = (result.first, result.first_k, result.k, result.reference_first,
                                           result.reference_first_k)
    where = versus(first, ref_first), versus(first_k, ref_k)
    if ref_first:
        said = _FILTERS_SAID.get(where, "no clear difference from random init")
        against = [_against(w, ref, 1, "%", 100) for w, ref in zip(where, (ref_first, ref_k))]
        text = (f"The first component holds {100 * first:.1f}% of the variance, {against[0]}; the first {k} hold "
                f"{100 * first_k:.1f}%, {against[1]}: {said}.")
    else:
        text = (f"The first component holds {100 * first:.1f}% of the variance, the first {k} hold "
                f"{100 * first_k:.1f}% (no random-init reference for this model).")
    return FiltersReadout(figure="Fig. 7 (left)", text=text, paper=PAPER_FILTERS, first_vs_init=where[0],
                          first_k_vs_init=where[1])


@readout.register(RolloutResult)
def _rollout(result: RolloutResult) -> Readout:
    init = f"; random init ({len(result.reference)} seeds): {spread_text(result.reference)}" if result.reference else ""
    if result.pool == "avg":
        row = ("from the mean of the patch rows: this model pools, "
               + ("its class token is not read" if result.class_token else "it has no class token"))
    else:
        row = "from the class token's row"
    text = (f"Over {result.described or f'{result.images} images'}: the central {100 * result.area:.0f}% of the image "
            f"gets {result.ratio:.2f} "
            f"times its share of the rollout ({row}; 95% interval {result.low:.2f} to {result.high:.2f}, std "
            f"{result.std:.2f} across images; 1 = no preference{init}). This measures a preference for the centre"
            + (", where CIFAR-10 objects mostly are" if "CIFAR-10" in result.described else "")
            + ", not whether the mass lies on the object (no segmentation masks).")
    return Readout(figure="Fig. 6", text=text, paper=PAPER_ROLLOUT)
