"""Readout of a recipe comparison: the lowest layer's most local head of each arm over training, against the seed
spread, beside what the ViT paper and a later paper claim about where local heads come from."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import Recipes
from .readouts import LOCAL_FRACTION, Readout
from .style import number, px

PAPER_RECIPES = ("the ViT paper explains local lower-layer heads by pre-training data (JFT-300M); Santiago Toledo and "
                 "Martinez (2026, arXiv 2605.16390) report that for ViTs trained from scratch on CIFAR-10, CIFAR-100 "
                 "and Tiny-ImageNet CutMix is what makes early heads local (CIFAR-100: minimum normalised mean "
                 "attention distance 0.316 without, 0.008 with), while AutoAugment and label smoothing have no effect.")

@dataclass(frozen=True, kw_only=True)
class RecipesReadout(Readout):
    """Arms of a recipe comparison at one epoch (:func:`recipes`); dicts map an arm to one value per run."""
    epoch: int  # the epoch read (the last one all runs recorded, unless asked)
    arms: list[str]  # arm labels, in the comparison's order
    seeds: dict[str, list[int]]
    accuracy: dict[str, list[float]]  # test accuracy at ``epoch`` (fractions)
    images_seen: dict[str, list[int]]  # training images seen by ``epoch`` (steps x batch size)
    lowest: dict[str, list[float]]  # the lowest layer's most local head at ``epoch`` (pixels)
    low: dict[str, list[float]]  # its 95% interval over the probe images (pixels); empty before the final epoch
    high: dict[str, list[float]]
    structure: dict[str, list[float]]  # position-embedding structure score (Spearman)
    uniform: float  # the uniform-attention distance (pixels)
    local: dict[str, list[bool]]  # the interval (final epoch) or value (before) below LOCAL_FRACTION of uniform
    epochs: list[int]  # the epochs every run recorded
    by_epoch: dict[str, list[list[float]]]  # the lowest layer's most local head at each of ``epochs``, per run
    falling: dict[str, list[bool]]  # still falling when the record ends: lower at each of its last FALLING records
    seed_span: float | None  # the widest spread of one arm's seeds at ``epoch`` (or the reference given), pixels
    spread_from: str  # where ``seed_span`` was measured
    separated: dict[str, bool]  # each later arm's mean is further from the first arm's than ``seed_span``
    provisional: bool  # an arm has a single seed: its own spread is unmeasured

def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


FALLING = 3  #: records in a row that must each be lower for a head to count as still falling


def _separation(lowest: dict[str, list[float]], reference: tuple[float, str] | None
                ) -> tuple[float | None, str, dict[str, bool], bool, str]:
    """The seed spread (``reference`` when given, else the widest of one arm's), whether each later arm's mean
    lies further than it from the first arm's, whether that is provisional, and the sentence saying so."""
    first, *rest = lowest
    spans = {a: max(v) - min(v) for a, v in lowest.items() if len(v) > 1}
    span, where = ((float(reference[0]), reference[1]) if reference is not None else
                   (max(spans.values()), "seeds of " + ", ".join(spans)) if spans else (None, "no arm has two seeds"))
    provisional = any(len(v) < 2 for v in lowest.values())
    separated = {a: span is not None and abs(_mean(lowest[a]) - _mean(lowest[first])) > span for a in rest}
    if span is None:
        return span, where, separated, provisional, "no seed spread is measured, so whether the arms separate is open"
    return span, where, separated, provisional, (
        f"seeds span up to {span:.1f} px ({where}): "
        + "; ".join(f"{a} {'separates from' if separated[a] else 'does not separate from'} {first}" for a in rest)
        + (" (provisional: an arm has one seed)" if provisional else ""))


def _falling(comparison: Recipes, epoch: int) -> tuple[list[int], dict[str, list[list[float]]], dict[str, list[bool]]]:
    """The epochs every run recorded up to ``epoch``, each run's lowest-layer most local head at them, and
    whether it was lower at each of its last FALLING records."""
    shared = [e for e in comparison.epochs if e <= epoch]
    by_epoch = {a: [[r.view_at(e).lowest_local for e in shared] for r in runs] for a, runs in comparison.arms.items()}
    falling = {a: [len(c) > FALLING and all(x < y for x, y in zip(c[-FALLING:], c[-FALLING - 1:-1])) for c in cs]
               for a, cs in by_epoch.items()}
    return shared, by_epoch, falling


def recipes(comparison: Recipes, epoch: int | None = None,
            seed_span: tuple[float, str] | None = None) -> RecipesReadout:
    """Readout of a recipe comparison (:func:`vitlab.training.recipes.read`) at ``epoch`` (default: the last one).

    Args:
        seed_span: (pixels, where measured): the seed-to-seed spread to judge the arms' gap against, for
            comparisons whose arms have one seed each (default: the widest spread of one arm's own seeds).
    """
    epochs = comparison.epochs
    if not epochs:
        raise ValueError("the runs of this comparison share no recorded epoch")
    epoch = epochs[-1] if epoch is None else epoch
    final = all(epoch >= r.epochs[-1] for r in comparison.runs)
    arms = list(comparison.arms)
    views = {a: [r.view_at(epoch) for r in runs] for a, runs in comparison.arms.items()}
    uniform = comparison.runs[0].views[-1].uniform
    lowest = {a: [v.lowest_local for v in vs] for a, vs in views.items()}
    accuracy = {a: [r.accuracy_at(epoch) for r in runs] for a, runs in comparison.arms.items()}
    low = {a: [r.lowest_low for r in runs] if final else [] for a, runs in comparison.arms.items()}
    high = {a: [r.lowest_high for r in runs] if final else [] for a, runs in comparison.arms.items()}
    local = {a: [h < LOCAL_FRACTION * uniform for h in (high[a] or lowest[a])] for a in arms}
    structure = {a: [v.position_distance for v in vs] for a, vs in views.items()}
    seeds = {a: [r.seed for r in runs] for a, runs in comparison.arms.items()}
    seen = {a: [r.view_at(epoch).step * r.config["batch_size"] for r in runs] for a, runs in comparison.arms.items()}
    def arm_text(a: str) -> str:
        runs = ", ".join(
            f"seed {s}: {px(x)}" + (f" (95% interval {lo:.1f} to {hi:.1f} over images)" if final else "")
            for s, x, lo, hi in zip(seeds[a], lowest[a], low[a] or lowest[a], high[a] or lowest[a]))
        layer1 = _mean([v.layer_means[0] for v in views[a]])
        return (f"{a}: {' / '.join(f'{n:,}' for n in dict.fromkeys(seen[a]))} images seen, test accuracy "
                f"{', '.join(f'{x:.1%}' for x in accuracy[a])} (mean {_mean(accuracy[a]):.1%}); "
                f"lowest layer's most local head {runs}; layer-1 mean over heads {px(layer1)}; position structure "
                f"ρ {', '.join(number(x, 2) for x in structure[a])}")
    first, *rest = arms
    gaps = "; ".join(f"{a} minus {first}: most local head {number(_mean(lowest[a]) - _mean(lowest[first]), 1)} px, "
                     f"accuracy {100 * (_mean(accuracy[a]) - _mean(accuracy[first])):+.1f} points" for a in rest)
    span, spread_from, separated, provisional, spread = _separation(lowest, seed_span)
    shared, by_epoch, falling = _falling(comparison, epoch)
    still = [f"{a} (seed {', '.join(str(s) for s, f in zip(seeds[a], falling[a]) if f)})"
             for a in arms if any(falling[a])]
    verdict = ("no run has a local head in its lowest layer" if not any(map(any, local.values())) else
               "; ".join(f"{a}: {sum(local[a])} of {len(local[a])} runs with a local head" for a in arms))
    changed = ", ".join(f"{k} ({', '.join(f'{a}: {v}' for a, v in by_arm.items())})"
                        for k, by_arm in comparison.differs_in.items()) or "nothing"
    text = (f"Epoch {epoch}, arms differing in {changed}. " + ". ".join(arm_text(a) for a in arms)
            + f". {gaps}; {spread}. Uniform attention: {px(uniform)}; {verdict} "
            f"({'its 95% interval' if final else 'its value'} below {LOCAL_FRACTION:.0%} of uniform). "
            + (f"Still falling at epoch {shared[-1]} (lower at each of the last {FALLING} records): "
               f"{'; '.join(still)}, so a longer run may move it further." if still else
               f"No run's most local head was still falling at epoch {shared[-1]}."))
    return RecipesReadout(
        figure="Fig. 7 (right) by training recipe", text=text, paper=PAPER_RECIPES, epoch=epoch, arms=arms, seeds=seeds,
        accuracy=accuracy, images_seen=seen, lowest=lowest, low=low, high=high, structure=structure, uniform=uniform,
        local=local, epochs=shared, by_epoch=by_epoch, falling=falling, seed_span=span, spread_from=spread_from,
        separated=separated, provisional=provisional)
