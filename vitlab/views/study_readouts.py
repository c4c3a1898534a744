"""Readouts of studies: what records of runs hold, next to what the paper (or a later paper) claims."""
from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..records import FAMILY_ORDER, InsideView, RunInside, RunRecord, check_one_grid
from .readouts import LOCAL_FRACTION, Readout
from .style import number, px

if TYPE_CHECKING:
    from ..training.config import TrainConfig
    from ..training.loop import TrainResult

#: The paper's (or a later paper's) claim beside each readout.
PAPER_DATA_SIZE = ("with enough pre-training data (JFT-300M) some lower-layer heads attend locally; Raghu et al. "
                   "(2021) found that ViTs trained on less data (ImageNet) do not learn this local attention in "
                   "their lower layers.")
PAPER_MPP = ("masked patch prediction (50% of patch embeddings corrupted, 3-bit mean colour predicted) pre-trains "
             "ViT-B/16 on JFT-300M to 79.9% ImageNet top-1 after fine-tuning: 2% above training from scratch, 4% "
             "below supervised pre-training (section 4.6, appendix B.1.2).")
PAPER_FAMILIES = ("Fig. 5 (pre-trained on JFT-300M, transfer accuracy against pre-training compute): ViTs dominate "
                  "ResNets on the performance/compute trade-off, needing 2-4x less compute for the same accuracy; "
                  "hybrids slightly outperform ViTs at small computational budgets, and the difference vanishes "
                  "for larger models.")


@dataclass(frozen=True, kw_only=True)
class DataSizeReadout(Readout):
    """The lowest layer's most local head across training-set sizes (:func:`data_size`); one entry per run."""
    sizes: list[int]  # training images of each run, ascending
    lowest: list[float]  # the lowest layer's most local head of each run, pixels
    low: list[float]  # its 95% interval over the probe images, pixels
    high: list[float]
    uniform: float  # distance under uniform attention (the same for every run), pixels
    local: list[bool]  # that head's interval lies below LOCAL_FRACTION of the uniform distance


def data_size(runs: Sequence[RunInside]) -> DataSizeReadout:
    """Readout of the inside views of sweep runs (:func:`vitlab.training.sweep.inside_runs`) against their data size."""
    if not runs:
        raise ValueError("no inside views of sweep runs: run `python -m vitlab sweep` on ViTs first")
    runs = sorted(runs, key=lambda r: (r.subset_size, r.seed))
    first, last, uniform = runs[0], runs[-1], runs[0].view.uniform
    local = [r.lowest_high < LOCAL_FRACTION * uniform for r in runs]
    def said(r: RunInside) -> str:
        return (f"{r.subset_size:,} images: {px(r.view.lowest_local)} (95% interval {r.lowest_low:.1f} to "
                f"{r.lowest_high:.1f}, std {r.lowest_std:.1f} across {r.view.images} images; test accuracy "
                f"{r.test_accuracy:.1%})")
    verdict = ("no run has a local head in its lowest layer" if not any(local)
               else f"{sum(local)} of {len(runs)} runs have a local head in their lowest layer")
    text = (f"Lowest layer's most local head, {said(first)}; {said(last)}; uniform attention: {px(uniform)}. "
            f"Across {len(runs)} runs ({first.model}), {verdict}.")
    return DataSizeReadout(
        figure="Fig. 7 (right) against data size", text=text, paper=PAPER_DATA_SIZE,
        sizes=[r.subset_size for r in runs], lowest=[r.view.lowest_local for r in runs],
        low=[r.lowest_low for r in runs], high=[r.lowest_high for r in runs], uniform=uniform, local=local)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _check_compute(runs: Sequence[RunRecord]) -> None:
    """Refuse runs without recorded training compute: the arms' compute ratio would divide by zero."""
    if missing := sorted({r.label for r in runs if not r.train_flops_total or not r.images_seen_total}):
        raise ValueError(f"runs of {missing} record no training compute (images_seen, train_flops): compare runs "
                         "as python -m vitlab sweep records them")


@dataclass(frozen=True, kw_only=True)
class PretrainingReadout(Readout):
    """What pre-training by masked patch prediction reached (:func:`pretraining`)."""
    epochs: int
    images_seen: int
    minutes: float  # training time
    accuracy: float  # share of corrupted test patches whose 3-bit colour the model predicts (final epoch)
    first: float  # the same after the first epoch
    baselines: dict[str, float]  # name -> accuracy of a guess that needs no model


def pretraining(log: Sequence[dict], baselines: dict[str, float], batch_size: int) -> PretrainingReadout:
    """Readout of a pre-training run's metrics log against ``baselines`` (:func:`vitlab.training.mpp.baselines`)."""
    if not log:
        raise ValueError("no epochs in this pre-training log: pre-train first (python -m vitlab pretrain)")
    last = log[-1]
    best_guess = max(baselines.items(), key=lambda kv: kv[1]) if baselines else ("none", 0.0)
    ratio = last["test_accuracy"] / best_guess[1] if best_guess[1] else float("inf")
    guesses = ", ".join(f"{k} {v:.1%}" for k, v in baselines.items())
    seen, minutes = last["step"] * batch_size, last["wall_seconds"] / 60
    text = (f"After {last['epoch']} epochs ({seen:,} images seen, no labels, {minutes:.0f} min) the encoder predicts "
            f"the 3-bit colour of {last['test_accuracy']:.1%} of the corrupted test patches "
            f"({log[0]['test_accuracy']:.1%} after the first epoch). Guesses without a model, on the same patches: "
            f"{guesses}. ")
    text += (f"The encoder gets {ratio:.1f}x the best guess ({best_guess[0]}): it reads the visible patches around "
             "each corrupted one, not only the image's overall colour." if ratio > 1.05 else
             f"That is no better than the best guess ({best_guess[0]}).")
    return PretrainingReadout(figure="masked patch prediction (paper 4.6)", text=text, paper=PAPER_MPP,
                              epochs=last["epoch"], images_seen=seen, minutes=minutes, accuracy=last["test_accuracy"],
                              first=log[0]["test_accuracy"], baselines=dict(baselines))


#: A run from scratch matches the fine-tuned arm's compute when its images seen are within this fraction of the arm's.
MATCHED = 0.05


@dataclass(frozen=True, kw_only=True)
class FinetuneReadout(Readout):
    """Fine-tuned from pre-trained weights against from scratch, per number of labelled images (:func:`fine_tuning`)."""
    model: str  # the architecture's zoo name
    init: str  # what the fine-tuned runs started from
    sizes: list[int]  # labelled training images, ascending
    scratch: dict[int, list[float]]  # per size, each seed's test accuracy from scratch at the fine-tuning budget
    tuned: dict[int, list[float]]
    gain: dict[int, float]  # per size, mean fine-tuned minus mean from scratch (fractions)
    scratch_images: dict[int, int]  # per size, images seen by a run from scratch (mean over seeds)
    tuned_images: dict[int, int]  # ... by a fine-tuned run, its init's training included (images_seen_total)
    scratch_flops: dict[int, float]  # per size, training FLOPs (forward + backward) of a run from scratch
    tuned_flops: dict[int, float]  # ... of a fine-tuned run, its init's training included (train_flops_total)
    images_ratio: dict[int, float]  # tuned_images / scratch_images
    flops_ratio: dict[int, float]  # tuned_flops / scratch_flops
    matched: dict[int, list[float]]  # sizes with runs from scratch at the tuned arm's images seen -> accuracies
    matched_gain: dict[int, float]  # ... -> mean fine-tuned minus mean matched (fractions)
    matched_images: dict[int, int]  # ... -> images seen by a matched run (mean over seeds)
    matched_flops: dict[int, float]  # ... -> its training FLOPs


def _arms(mine: Sequence[RunRecord], init: str, n: int) -> tuple[list[RunRecord], list[RunRecord], list[RunRecord]]:
    """At ``n`` labels: runs from scratch at the fine-tuned runs' own budget, at their total images seen; fine-tuned."""
    if not (tuned := [r for r in mine if r.init == init and r.subset_size == n]):
        return [], [], []
    def near(images: float) -> list[RunRecord]:
        return [r for r in mine if not r.init and r.subset_size == n
                and abs(r.images_seen_total / images - 1) <= MATCHED]
    budget = near(_mean([r.images_seen for r in tuned]))
    return budget, [r for r in near(_mean([r.images_seen_total for r in tuned])) if r not in budget], tuned


def _pm(accuracies: Sequence[float]) -> str:
    """Mean accuracy over seeds, ± their standard deviation in points where there are several: "48.7% ± 0.3"."""
    return f"{_mean(accuracies):.1%}" + (f" ± {100 * statistics.stdev(accuracies):.1f}" if len(accuracies) > 1 else "")


def _at_equal_compute(tuned: dict[int, list[RunRecord]], matched: dict[int, list[RunRecord]]) -> str:
    """The readout's sentence on the sizes with runs from scratch at the fine-tuned arm's compute."""
    def said(n: int) -> str:
        a, b = ({k: _mean([getattr(r, k) for r in arm[n]]) for k in ("test_accuracy", "images_seen_total",
                                                                      "train_flops_total")} for arm in (tuned, matched))
        gain, one = a["test_accuracy"] - b["test_accuracy"], min(len(tuned[n]), len(matched[n])) == 1
        accuracy = ([r.test_accuracy for r in arm[n]] for arm in (tuned, matched))
        return (f"{n:,} labels: {' vs '.join(map(_pm, accuracy))} ({len(tuned[n])} vs "
                f"{len(matched[n])} seeds{', provisional' if one else ''}) with {round(a['images_seen_total']):,} vs "
                f"{round(b['images_seen_total']):,} images seen and "
                f"{a['train_flops_total'] / b['train_flops_total']:.2f}x the FLOPs: the objective "
                f"{'wins' if gain > 0 else 'loses'} by {100 * abs(gain):.1f} points")
    return (f" At equal compute (fine-tuned vs a run from scratch with as many images seen, within {MATCHED:.0%}; run "
            f"at {len(matched)} of the sizes): " + "; ".join(said(n) for n in sorted(matched)) + ".") if matched else ""


def fine_tuning(runs: Sequence[RunRecord], model: str, init: str, pretrained_on: int | None = None) -> FinetuneReadout:
    """Readout of runs of ``model`` fine-tuned from ``init`` (pre-trained on ``pretrained_on`` images) vs scratch.

    Runs from scratch are compared at the fine-tuning budget (as many images seen as the fine-tuning alone) and, where
    one ran, at matched compute (as many as pre-training plus fine-tuning); other runs from scratch are left out."""
    mine = [r for r in runs if r.model == model]
    _check_compute([r for r in mine if r.init in ("", init) and any(t.init == init and t.subset_size == r.subset_size
                                                                     for t in mine)])
    arms = {n: _arms(mine, init, n) for n in sorted({r.subset_size for r in mine})}
    sizes = [n for n, (budget, _, tuned) in arms.items() if budget and tuned]
    if not sizes:
        raise ValueError(f"no size has runs of {model} both from scratch and fine-tuned from {init}")
    runs_of = {arm: {n: arms[n][i] for n in sizes if arms[n][i]} for i, arm in enumerate(("", "matched", init))}
    scratch, matched, tuned = ({n: [r.test_accuracy for r in rs] for n, rs in runs_of[a].items()} for a in runs_of)
    gain = {n: _mean(tuned[n]) - _mean(scratch[n]) for n in sizes}
    def total(arm: str, name: str) -> dict[int, float]:
        return {n: _mean([getattr(r, name) for r in rs]) for n, rs in runs_of[arm].items()}
    images = {arm: {n: round(v) for n, v in total(arm, "images_seen_total").items()} for arm in runs_of}
    flops = {arm: total(arm, "train_flops_total") for arm in runs_of}
    images_ratio = {n: images[init][n] / images[""][n] for n in sizes}
    flops_ratio = {n: flops[init][n] / flops[""][n] for n in sizes}
    def said(n: int) -> str:
        return (f"{n:,} labels: {_pm(tuned[n])} vs {_pm(scratch[n])} ({100 * gain[n]:+.1f} points) with "
                f"{images_ratio[n]:.1f}x the images seen ({images[init][n]:,} vs {images[''][n]:,}) and "
                f"{flops_ratio[n]:.1f}x the FLOPs ({flops[init][n]:.2e} vs {flops[''][n]:.2e})")
    helped = [n for n in sizes if gain[n] > 0]
    verdict = ("pre-training helps at every size" if len(helped) == len(sizes) else
               f"pre-training helps at {len(helped)} of {len(sizes)} sizes" if helped else
               "pre-training helps at no size")
    most, least = max(sizes, key=gain.get), min(sizes, key=gain.get)
    low, high = min(flops_ratio.values()), max(flops_ratio.values())
    text = (f"Fine-tuned from {init} vs {model} from scratch, same recipe and fine-tuning budget (mean over seeds ± "
            "std; compute counts the pre-training): " + "; ".join(said(n) for n in sizes) + f". {verdict.capitalize()}"
            + (f"; the gain is largest at {most:,} labels ({100 * gain[most]:+.1f} points) and smallest at "
               f"{least:,} ({100 * gain[least]:+.1f})." if len(sizes) > 1 else ".")
            + (f" The fine-tuned arm had {number(low, 1)}-{number(high, 1)}x the training FLOPs of the arm from "
               "scratch: these gains are not at equal compute." if low > 1.05 else "")
            + _at_equal_compute(runs_of[init], runs_of["matched"])
            + (f" The encoder was pre-trained without labels on {pretrained_on:,} CIFAR-10 training images, those the "
               "labelled subsets are drawn from: this tests the objective, not more data." if pretrained_on else ""))
    return FinetuneReadout(figure="masked patch prediction, then fine-tuning (paper 4.6)", text=text, paper=PAPER_MPP,
                           model=model, init=init, sizes=sizes, scratch=scratch, tuned=tuned, gain=gain,
                           scratch_images=images[""], tuned_images=images[init], scratch_flops=flops[""],
                           tuned_flops=flops[init], images_ratio=images_ratio, flops_ratio=flops_ratio, matched=matched,
                           matched_gain={n: _mean(tuned[n]) - _mean(matched[n]) for n in matched},
                           matched_images=images["matched"], matched_flops=flops["matched"])


@dataclass(frozen=True, kw_only=True)
class FamiliesReadout(Readout):
    """Each model trained from scratch in one sweep, per training-set size (:func:`families`)."""
    models: dict[str, str]  # model name -> family, ViTs first, then hybrids, then ResNets
    sizes: list[int]  # the training-set sizes every model ran, ascending
    accuracy: dict[str, dict[int, list[float]]]  # model -> size -> each seed's test accuracy (fractions)
    flops_per_image: dict[str, float]  # model -> training FLOPs of one image (forward and backward)
    train_flops: dict[str, dict[int, float]]  # model -> size -> training FLOPs of a run (train_flops_total, mean)
    best: dict[int, str]  # size -> the model with the highest mean test accuracy
    gaps: dict[tuple[str, str], dict[int, float]]  # (a, b) -> size -> mean accuracy of a minus b, each pair in order
    ahead: dict[tuple[str, str], str]  # (a, b) -> the one of the two ahead at more sizes (a on a tie)


def families(runs: Sequence[RunRecord]) -> FamiliesReadout:
    """Readout of a sweep's models trained from scratch against each other, at the sizes all ran (Fig. 5)."""
    scratch = [r for r in runs if not r.init]
    found = {r.model: r.family for r in scratch}
    models = dict(sorted(found.items(), key=lambda kv: (FAMILY_ORDER.get(kv[1], len(FAMILY_ORDER)), kv[0])))
    if len(models) < 2:
        raise ValueError("comparing families needs runs of at least two models trained from scratch, "
                         f"got {list(models)}")
    sizes = sorted(set.intersection(*({r.subset_size for r in scratch if r.model == m} for m in models)))
    if not sizes:
        raise ValueError(f"no training-set size was run for every model of {list(models)}")
    acc = {m: {n: [r.test_accuracy for r in scratch if r.model == m and r.subset_size == n] for n in sizes}
           for m in models}
    mean = {m: {n: _mean(acc[m][n]) for n in sizes} for m in models}
    best = {n: max(models, key=lambda m: mean[m][n]) for n in sizes}
    gaps = {(a, b): {n: mean[a][n] - mean[b][n] for n in sizes} for a, b in itertools.combinations(models, 2)}
    flops = {m: next(r.flops_per_image for r in scratch if r.model == m) for m in models}
    _check_compute([r for r in scratch if r.model in models and r.subset_size in sizes])
    total = {m: {n: _mean([r.train_flops_total for r in scratch if r.model == m and r.subset_size == n]) for n in sizes}
             for m in models}
    ahead = {(a, b): b if sum(v < 0 for v in g.values()) > sum(v > 0 for v in g.values()) else a
             for (a, b), g in gaps.items()}
    def at(n: int) -> str:
        ranked = sorted(models, key=lambda m: -mean[m][n])
        seeds = {m: f" ({len(acc[m][n])} seeds)" if len(acc[m][n]) > 1 else "" for m in models}
        return f"{n:,} images: " + " > ".join(f"{m} {mean[m][n]:.1%}{seeds[m]}" for m in ranked)
    def pair(a: str, b: str) -> str:
        lead, other = (a, b) if ahead[a, b] == a else (b, a)
        g = {n: v if lead == a else -v for n, v in gaps[a, b].items()}  # lead minus other
        def by(n: int) -> str:
            return f"{'ahead' if g[n] >= 0 else 'behind'} by {abs(100 * g[n]):.1f} points at {n:,} images"
        ratios = sorted({number(total[lead][n] / total[other][n], 1) for n in sizes}, key=float)
        span = ratios[0] if len(ratios) == 1 else f"{ratios[0]}-{ratios[-1]}"
        return (f"{lead} is ahead of {other} at {sum(v > 0 for v in g.values())} of {len(sizes)} sizes "
                f"({by(sizes[0])}, {by(sizes[-1])}), with {span}x its training FLOPs")
    text = ("Test accuracy on the 10,000 test images (mean over the seeds run, one where not said): "
            + "; ".join(at(n) for n in sizes) + ". Pairwise: " + "; ".join(pair(a, b) for a, b in gaps)
            + ". Training FLOPs per image: " + ", ".join(f"{m} {flops[m] / 1e6:.0f} M" for m in models)
            + f"; per run at {sizes[0]:,} and {sizes[-1]:,} images (all epochs): "
            + ", ".join(f"{m} {total[m][sizes[0]]:.2e} and {total[m][sizes[-1]]:.2e}" for m in models) + ".")
    return FamiliesReadout(figure="Fig. 5, small scale", text=text, paper=PAPER_FAMILIES, models=models, sizes=sizes,
                           accuracy=acc, flops_per_image=flops, train_flops=total, best=best, gaps=gaps, ahead=ahead)


@dataclass(frozen=True, kw_only=True)
class InsideComparisonReadout(Readout):
    """Fig. 7 numbers of several models of one architecture side by side (:func:`inside_comparison`)."""
    names: list[str]  # the models' labels
    lowest: dict[str, float]  # the lowest layer's most local head (pixels)
    most_local: dict[str, tuple[float, int]]  # the most local head anywhere (pixels) and its layer (1-based)
    structure: dict[str, float]  # position-embedding structure score
    uniform: float  # uniform attention (pixels)


def inside_comparison(views: dict[str, InsideView]) -> InsideComparisonReadout:
    """Readout of models' inside views (e.g. pre-trained without labels, trained from scratch, random init)."""
    check_one_grid(views)
    uniform = next(iter(views.values())).uniform
    lowest = {k: v.lowest_local for k, v in views.items()}
    # the most local head anywhere and its layer (1-based; the lowest such layer)
    most_local = {k: min((min(row), i + 1) for i, row in enumerate(v.distance)) for k, v in views.items()}
    structure = {k: v.position_distance for k, v in views.items()}
    local = [k for k, (d, _) in most_local.items() if d < LOCAL_FRACTION * uniform]
    text = ("; ".join(f"{k}: lowest layer's most local head {px(lowest[k])}, most local head anywhere "
                      f"{px(most_local[k][0])} (layer {most_local[k][1]}), position structure ρ "
                      f"{number(structure[k], 2)}" for k in views)
            + f". Uniform attention: {px(uniform)}; "
            + (f"local heads (below {LOCAL_FRACTION:.0%} of uniform) in: {', '.join(local)}." if local else
               f"no model has a head below {LOCAL_FRACTION:.0%} of uniform attention."))
    return InsideComparisonReadout(figure="Fig. 7 (right), by initialisation", text=text, paper=PAPER_DATA_SIZE,
                                   names=list(views), lowest=lowest, most_local=most_local, structure=structure,
                                   uniform=uniform)


#: The paper's reading of a ViT against a ResNet trained on little data, beside :func:`head_to_head`.
PAPER_FEW_IMAGES = ("(Fig. 3, 4) with less pre-training data, ViTs do worse than ResNets of comparable compute: "
                    "the convolutions' locality and translation equivariance are inductive biases a ViT has to "
                    "learn from data.")


@dataclass(frozen=True, kw_only=True)
class HeadToHeadReadout(Readout):
    """Runs side by side: ``leader`` most accurate, ``lead`` its margin (fraction), ``as_paper``: a ResNet leads."""
    accuracy: dict[str, float]  # test accuracy on ``test_images`` images, per run
    family: dict[str, str]
    images_seen: dict[str, int]  # steps x batch size
    train_flops: dict[str, float]  # FLOPs of all training steps (forward + backward)
    test_images: dict[str, int]
    leader: str
    lead: float
    as_paper: bool


def head_to_head(runs: dict[str, tuple[TrainConfig, TrainResult]]) -> HeadToHeadReadout:
    """Readout of runs trained here, ``{name: (config, result of vitlab.training.train)}``, at least two."""
    from ..analysis.representations import model_family
    from ..training.config import TEST_IMAGES, TRAIN_IMAGES
    from ..training.sweep import train_flops_per_image
    if len(runs) < 2:
        raise ValueError(f"head_to_head compares at least two runs, got {len(runs)}")
    accuracy = {k: float(r.record["test_accuracy"]) for k, (_, r) in runs.items()}
    family = {k: model_family(r.model) for k, (_, r) in runs.items()}
    seen = {k: int(r.record["step"]) * c.batch_size for k, (c, r) in runs.items()}
    flops = {k: train_flops_per_image(r.model) * seen[k] for k, (_, r) in runs.items()}
    tested = {k: c.eval_size or TEST_IMAGES for k, (c, _) in runs.items()}
    leader, second = sorted(accuracy, key=accuracy.__getitem__, reverse=True)[:2]
    lead = accuracy[leader] - accuracy[second]
    as_paper = family[leader] == "resnet" and lead > 0
    said = ("a tie" if lead == 0 else f"{leader} ahead by {100 * lead:.1f} points, "
            + ("as the paper finds on little data" if as_paper else "not the paper's finding on little data"))
    epochs = {k: f"{r.record['epoch']} epoch{'s' * (r.record['epoch'] != 1)}" for k, (_, r) in runs.items()}
    text = ("; ".join(f"{k} ({c.model}, {epochs[k]} on {c.subset_size or TRAIN_IMAGES:,} training images): "
                      f"{accuracy[k]:.1%} of {tested[k]:,} test images, {seen[k]:,} images seen, "
                      f"{flops[k]:.2e} training FLOPs" for k, (c, r) in runs.items())
            + f". {said[0].upper()}{said[1:]}.")
    return HeadToHeadReadout(figure="Fig. 3-4, small scale", text=text, paper=PAPER_FEW_IMAGES, accuracy=accuracy,
                             family=family, images_seen=seen, train_flops=flops, test_images=tested, leader=leader,
                             lead=lead, as_paper=as_paper)
