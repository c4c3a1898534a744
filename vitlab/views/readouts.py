"""Measured readouts: :func:`readout` of a Fig. 6/7 result says what the model shows, beside the paper's claim."""
from __future__ import annotations

import functools
import html
import math
from dataclasses import dataclass

import torch

from ..analysis.distance import DistanceResult
from ..analysis.filters import FiltersResult
from ..analysis.positions import PositionResult
from ..analysis.rollout import RolloutResult
from .style import px, spread_text

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


@dataclass(frozen=True, kw_only=True)
class DistanceReadout(Readout):
    """Fig. 7 (right): ``local`` (layers, heads) marks heads whose 95% interval lies below LOCAL_FRACTION of uniform
    attention and, with a random-init reference, below that layer's lowest random-init head."""
    local: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class PositionReadout(Readout):
    """Fig. 7 (center): ``grid_structure``: the structure score reaches 0.3 and beats every random-init seed's;
    ``mirror_symmetric``: mirror similarity >= 0.3 and about that to neighbours (excess >= -0.05)."""
    grid_structure: bool
    mirror_symmetric: bool


@dataclass(frozen=True, kw_only=True)
class FiltersReadout(Readout):
    """Fig. 7 (left): ``verdict``, the first component's share against random init's: >= 2x its mean "clearly more",
    > 1.1x its max "a little more", else "no more" ("" without a random-init reference)."""
    verdict: str


@functools.singledispatch
def readout(result: object) -> Readout:
    """The readout of an analysis result (a :class:`Readout` subclass; a plain one for a rollout)."""
    raise TypeError(f"no readout for {type(result).__name__}: pass the result of distance_analysis, "
                    "filters_analysis, position_analysis or rollout_analysis (vitlab.analysis)")


@readout.register(DistanceResult)
def _distance(result: DistanceResult) -> DistanceReadout:
    high, band, layers, head = result.high.double(), result.band, result.layers, result.lowest
    local = high < LOCAL_FRACTION * result.uniform
    if band:
        local &= high < torch.tensor([b[0] for b in band], dtype=torch.float64)[:, None]
    n_local = int(local[0].sum())
    verdict = "no local heads" if n_local == 0 else f"{n_local} of {local.shape[1]} heads local"
    refs = f"uniform attention: {px(result.uniform)}" + (f"; random init: {band[0][0]:.1f} to {px(band[0][1])}"
                                                         if band else "")
    per_layer = result.layer_means
    deepest = max(range(len(per_layer)), key=per_layer.__getitem__)
    text = (f"Lowest layer ({layers[0] + 1}): heads attend {result.layer_min[0]:.1f} to {px(result.layer_max[0])} "
            f"({refs}): {verdict}; its most local head {head.head + 1} attends {px(head.mean)} (95% interval "
            f"{head.low:.1f} to {head.high:.1f}, std {head.std:.1f} across {result.images} images). "
            f"Mean over heads: {px(per_layer[0])} in layer {layers[0] + 1}, {px(per_layer[-1])} in "
            f"layer {layers[-1] + 1}, largest in layer {layers[deepest] + 1}.")
    hybrid = result.token_field is not None
    if hybrid:
        text += (f" A hybrid: before any attention, each token already sees a {result.token_field:.0f}-pixel window "
                 "of the image through its CNN.")
    paper = PAPER_HYBRID_DISTANCE if hybrid else PAPER_DISTANCE
    return DistanceReadout(figure="Fig. 7 (right)", text=text, paper=paper, local=local)


@readout.register(PositionResult)
def _position(result: PositionResult) -> PositionReadout:
    structure, mirror, reference = result.structure, result.mirror, result.reference
    init_max = max((r.closeness for r, _ in reference), default=-math.inf)
    grid = structure.closeness >= _STRUCTURE_THRESHOLD and structure.closeness > init_max
    symmetric = mirror.excess >= -0.05 and mirror.mirror >= 0.3
    init = (f" (random init, {len(reference)} seeds: {spread_text([r.closeness for r, _ in reference])})"
            if reference else "")
    strength = "strong" if structure.closeness >= 0.7 else "partial"
    first = (f"Nearby patches are more similar: structure score {structure.closeness:.2f}{init}, a {strength} "
             f"grid structure; row/column excess {structure.row_column:.2f}." if grid else
             f"No grid structure: structure score {structure.closeness:.2f}{init}; row/column excess "
             f"{structure.row_column:.2f}.")
    second = (f" Mirror-symmetric left to right, as horizontal-flip augmentation teaches: similarity to the mirror "
              f"position {mirror.mirror:.2f}, to neighbours {mirror.neighbour:.2f}." if symmetric else
              f" Not mirror-symmetric: similarity to the mirror position {mirror.mirror:.2f}, to neighbours "
              f"{mirror.neighbour:.2f}.")
    return PositionReadout(figure="Fig. 7 (center)", text=first + second, paper=PAPER_POSITION, grid_structure=grid,
                           mirror_symmetric=symmetric)


@readout.register(FiltersResult)
def _filters(result: FiltersResult) -> FiltersReadout:
    first, first_k, k, ref_first, ref_k = (result.first, result.first_k, result.k, result.reference_first,
                                           result.reference_first_k)
    if ref_first:
        verdict = ("clearly more" if first >= 2 * sum(ref_first) / len(ref_first) else
                   "a little more" if first > 1.1 * max(ref_first) else "no more")
        text = (f"The first component holds {100 * first:.1f}% of the variance (random init, {len(ref_first)} seeds: "
                f"{spread_text(ref_first, 1, '%', 100)}), the first {k} hold {100 * first_k:.1f}% "
                f"({spread_text(ref_k, 1, '%', 100)}): {verdict} structure than random init.")
    else:
        verdict = ""
        text = (f"The first component holds {100 * first:.1f}% of the variance, the first {k} hold "
                f"{100 * first_k:.1f}% (no random-init reference for this model).")
    return FiltersReadout(figure="Fig. 7 (left)", text=text, paper=PAPER_FILTERS, verdict=verdict)


@readout.register(RolloutResult)
def _rollout(result: RolloutResult) -> Readout:
    init = f"; random init ({len(result.reference)} seeds): {spread_text(result.reference)}" if result.reference else ""
    text = (f"Over {result.images} images the central {100 * result.area:.0f}% of the image gets {result.ratio:.2f} "
            f"times its share of the rollout (95% interval {result.low:.2f} to {result.high:.2f}, std "
            f"{result.std:.2f} across images; 1 = no preference{init}). This measures a preference for the centre, "
            "where CIFAR-10 objects mostly are, not whether the mass lies on the object (no segmentation masks).")
    return Readout(figure="Fig. 6", text=text, paper=PAPER_ROLLOUT)
