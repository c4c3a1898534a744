"""The attribution scoreboard of one model: every method that applies, on the same test images, scored by deletion
and insertion under three removals, Chefer et al.'s positive and negative perturbation, the parameter-randomisation
sanity check and the Focus score; each part one analysis, run once, and flattened into
:class:`~vitlab.records.AttributionScore` rows for the results file, the table and the readout."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..records import AttributionScore
from .faithfulness import REMOVALS, FaithfulnessResult, faithfulness_analysis
from .map_checks import FocusResult, SanityResult, focus_analysis, sanity_analysis
from .references import bootstrap_interval
from .saliency import MapsResult, applicable_methods, maps_analysis

#: Images of the sanity check and mosaics of the Focus score in a full scoreboard (the issue's protocol).
SANITY_IMAGES, FOCUS_MOSAICS = 100, 100


@dataclass(frozen=True, kw_only=True)
class ScoreboardResult:
    """Every part of one model's scoreboard (:func:`scoreboard_analysis`) and how long each took."""
    model_name: str
    maps: MapsResult
    faithfulness: FaithfulnessResult
    sanity: SanityResult | None  # None when no sanity images were asked for
    focus: FocusResult | None
    seconds: dict[str, float]  # part -> wall seconds

    @property
    def accuracy(self) -> tuple[float, float, float]:
        """The model's accuracy on the scored images (prediction == label) and its 95% bootstrap interval."""
        hits = (self.maps.predictions == self.maps.labels).double()
        low, high = bootstrap_interval(hits)
        return float(hits.mean()), float(low), float(high)

    def rows(self) -> list[AttributionScore]:
        """The scoreboard as flat rows: one per (method, score, removal, measure)."""
        name, n = self.model_name, self.faithfulness.images
        rows = [AttributionScore(model=name, method="model", score="accuracy", removal="", measure="accuracy",
                                 mean=self.accuracy[0], low=self.accuracy[1], high=self.accuracy[2], images=n)]
        for (curve, measure, method, removal), s in self.faithfulness.auc.items():
            rows.append(AttributionScore(model=name, method=method, score=curve, removal=removal, measure=measure,
                                         mean=s.mean, low=s.low, high=s.high, images=n))
        for (sign, method), s in self.faithfulness.chefer.items():
            rows.append(AttributionScore(model=name, method=method, score=f"chefer_{sign}", removal="mean",
                                         measure="accuracy", mean=s.mean, low=s.low, high=s.high, images=n))
        if self.sanity is not None:
            for method in self.sanity.methods:
                last = self.sanity.spearman[method][-1]  # (images,) with every layer re-initialised
                rows.append(AttributionScore(model=name, method=method, score="sanity", removal="",
                                             measure="spearman", mean=float(last.double().mean()),
                                             low=float(self.sanity.low[method][-1]),
                                             high=float(self.sanity.high[method][-1]), images=self.sanity.images))
        if self.focus is not None:
            mosaics = len(self.focus.targets)
            rows.append(AttributionScore(model=name, method="model", score="focus", removal="", measure="accuracy",
                                         mean=self.focus.accuracy, low=self.focus.accuracy_low,
                                         high=self.focus.accuracy_high, images=mosaics))
            for method in self.focus.methods:
                rows.append(AttributionScore(model=name, method=method, score="focus", removal="", measure="share",
                                             mean=self.focus.mean[method], low=self.focus.low[method],
                                             high=self.focus.high[method], images=mosaics))
        return rows


def scoreboard_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                        methods: tuple[str, ...] | None = None, removals: tuple[str, ...] | None = None,
                        steps: int = 16, sanity_images: int = SANITY_IMAGES, focus_mosaics: int = FOCUS_MOSAICS,
                        batch_size: int = 64, progress: bool = True, model_name: str = "",
                        described: str = "") -> ScoreboardResult:
    """Every part of the scoreboard of ``model`` on uint8 ``images`` (N, 3, H, W) with their true ``labels``: the maps
    of ``methods`` (default every one that applies) for the prediction, scored by deletion and insertion under
    ``removals`` (default those that apply: no token dropping without patch tokens) and Chefer's protocol; the sanity
    check on the first ``sanity_images`` images and the Focus score on ``focus_mosaics`` mosaics (0 skips either)."""
    if methods is None:
        methods = applicable_methods(model)
    if removals is None:
        removals = tuple(r for r in REMOVALS if r != "drop" or hasattr(model, "patch_drop"))
    if sanity_images and not 2 <= sanity_images <= len(images):
        raise ValueError(f"sanity_images must be 2 to {len(images)} (the images given), or 0 to skip the check; "
                         f"got {sanity_images}")
    seconds, start = {}, time.perf_counter()
    maps = maps_analysis(model, images, methods, labels=labels, batch_size=batch_size, model_name=model_name,
                         described=described)
    seconds["maps"] = time.perf_counter() - start
    start = time.perf_counter()
    faith = faithfulness_analysis(model, images, maps, removals=removals, steps=steps, progress=progress)
    seconds["faithfulness"] = time.perf_counter() - start
    start = time.perf_counter()
    sanity = sanity_analysis(model, images[:sanity_images], methods, batch_size=batch_size, model_name=model_name,
                             described=described) if sanity_images else None
    seconds["sanity"] = time.perf_counter() - start
    start = time.perf_counter()
    focus = focus_analysis(model, images, labels, methods, count=focus_mosaics, batch_size=batch_size,
                           model_name=model_name, described=described) if focus_mosaics else None
    seconds["focus"] = time.perf_counter() - start
    return ScoreboardResult(model_name=model_name, maps=maps, faithfulness=faith, sanity=sanity, focus=focus,
                            seconds=seconds)
