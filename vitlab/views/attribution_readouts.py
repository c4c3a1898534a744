"""Readouts of the attribution results (issue 32): which method's map is most faithful on this model under which
removal, whether rollout beats the random floor, which maps survive the model's re-initialisation, how well maps
find the asked quadrant of a mosaic; every number with its 95% bootstrap interval, beside the literature. Verdicts
compare intervals: where two overlap, the readout says "no better than". Importing this module registers the
readouts with :func:`vitlab.views.readouts.readout`."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ..analysis.faithfulness import FaithfulnessResult
from ..analysis.map_checks import FLAG_SPEARMAN, TILE, FocusResult, SanityResult
from ..analysis.saliency import MapsResult
from ..analysis.scoreboard import ScoreboardResult
from ..records import AttributionScore
from .intervention_readouts import Readouts, zoo_compute
from .readouts import Readout, readout

PAPER_MAPS = ("Abnar and Zuidema (2020) roll attention out through the layers; Chefer, Gur and Wolf (ICCV 2021) weight "
              "it by the gradient of the target class; integrated gradients (Sundararajan et al., 2017) sum to f(x) "
              "- f(baseline), and the convergence delta says how far 64 steps are from that.")
PAPER_FAITHFULNESS = ("Petsiuk et al. (RISE, 2018) score a map by deleting its most relevant patches first (lower AUC "
                      "is better) and inserting them into an emptied image (higher is better); Chefer, Gur and Wolf "
                      "(ICCV 2021) found gradient-weighted rollout more faithful than raw attention and rollout on "
                      "ImageNet ViTs; Tomsett et al. (AAAI 2020) and Rong et al. (ICML 2022) found such rankings "
                      "depend on how the patches are removed.")
PAPER_SANITY = ("Adebayo et al. (NeurIPS 2018) re-initialise a model's layers from the top down: a map that barely "
                "changes does not explain what the model learnt (they found guided backpropagation and guided "
                "Grad-CAM fail, plain gradients and Grad-CAM pass).")
PAPER_FOCUS = ("The Focus score (Arias-Duart et al., 2022) is the share of a map's positive mass on the quadrant of "
               "the asked class in a mosaic of four images of different classes: 0.25 is chance; it reads a map "
               "only where the model recognises the asked class.")

#: How each removal reads in text.
REMOVAL_NAMES = {"drop": "token drop", "mean": "mean fill", "blur": "blur"}
#: Chance for the Focus score: a map spread evenly over the four quadrants.
FOCUS_CHANCE = 0.25
#: A model "mostly fails" on the mosaics when the upper end of its accuracy interval lies under this.
LOW_MOSAIC_ACCURACY = 0.5

Verdict = Literal["better", "worse", "mixed", "no better"]
_VERDICT_TEXT = {"better": "better than", "worse": "worse than", "no better": "no better than",
                 "mixed": "the two curves disagree against"}


class Cell(NamedTuple):
    """A score's mean and 95% interval."""
    mean: float
    low: float
    high: float


#: (score, measure, method, removal) -> Cell: one model's scores, from a result or from committed rows.
Cells = Mapping[tuple[str, str, str, str], Cell]


def _iv(cell: Cell, digits: int = 3) -> str:
    """ "0.123 (95% interval 0.100 to 0.150)"."""
    return f"{cell.mean:.{digits}f} (95% interval {cell.low:.{digits}f} to {cell.high:.{digits}f})"


def faithfulness_cells(result: FaithfulnessResult) -> dict[tuple[str, str, str, str], Cell]:
    """A faithfulness result's AUCs (and Chefer's scores, as ``chefer_positive``/``chefer_negative`` under mean fill)
    keyed as the scoreboard's rows are."""
    cells = {key: Cell(s.mean, s.low, s.high) for key, s in result.auc.items()}
    cells |= {(f"chefer_{sign}", "accuracy", method, "mean"): Cell(s.mean, s.low, s.high)
              for (sign, method), s in result.chefer.items()}
    return cells


def row_cells(rows: Iterable[AttributionScore]) -> dict[tuple[str, str, str, str], Cell]:
    """Scoreboard rows of one model keyed (score, measure, method, removal)."""
    return {(r.score, r.measure, r.method, r.removal): Cell(r.mean, r.low, r.high) for r in rows}


def compare(cells: Cells, method: str, other: str, removal: str, measure: str = "probability") -> Verdict:
    """Whether ``method``'s maps are more faithful than ``other``'s under ``removal``, from the 95% intervals of both
    deletion AUCs (lower is better) and both insertion AUCs (higher is better): "better" when one pair of intervals
    separates in ``method``'s favour and none against it, "worse" the other way round, "mixed" when one pair separates
    each way (say, deletion in its favour and insertion against it), else "no better"."""
    d, i = cells[("deletion", measure, method, removal)], cells[("insertion", measure, method, removal)]
    od, oi = cells[("deletion", measure, other, removal)], cells[("insertion", measure, other, removal)]
    ahead = d.high < od.low or i.low > oi.high
    behind = d.low > od.high or i.high < oi.low
    return "mixed" if ahead and behind else "better" if ahead else "worse" if behind else "no better"


def ranking(cells: Cells, removal: str, measure: str = "probability") -> tuple[str, ...]:
    """Methods scored under ``removal``, most faithful first: insertion minus deletion AUC, ties by name."""
    methods = sorted({k[2] for k in cells if k[0] == "deletion" and k[3] == removal and k[1] == measure})
    gap = {m: cells[("insertion", measure, m, removal)].mean - cells[("deletion", measure, m, removal)].mean
           for m in methods}
    return tuple(sorted(methods, key=lambda m: (-gap[m], m)))


def _removals(cells: Cells) -> list[str]:
    found = {k[3] for k in cells if k[0] == "deletion"}
    return [r for r in REMOVAL_NAMES if r in found]


def _faithful_text(cells: Cells, rankings: Mapping[str, tuple[str, ...]]) -> tuple[str, dict[str, str], bool,
                                                                                   dict[str, Verdict]]:
    """The faithfulness sentences of one model: (text, best method per removal, whether the first place changes with
    the removal, rollout against the random floor per removal)."""
    parts, best, floor = [], {}, {}
    for removal, order in rankings.items():
        first = best[removal] = order[0]
        said = (f"under {REMOVAL_NAMES[removal]}, {first} ranks first (deletion AUC "
                f"{_iv(cells[('deletion', 'probability', first, removal)])}, insertion AUC "
                f"{_iv(cells[('insertion', 'probability', first, removal)])})")
        if len(order) > 1:
            verdict = compare(cells, first, order[1], removal)
            said += (f", ahead of {order[1]}" if verdict == "better" else
                     f", but deletion and insertion disagree on it against {order[1]}" if verdict == "mixed" else
                     f", but no better than {order[1]} (their intervals overlap)")
        parts.append(said + f"; order: {', '.join(order)}")
    changes = len(set(best.values())) > 1
    text = "On the target-class probability: " + "; ".join(parts) + "."
    if changes:
        text += (" The most faithful method changes with the removal: "
                 + ", ".join(f"{m} under {REMOVAL_NAMES[r]}" for r, m in best.items()) + ".")
    elif len(best) > 1:
        text += f" {next(iter(best.values()))} ranks first under every removal."
    if all(m in rankings[r] for r in rankings for m in ("rollout", "random")):
        for removal in rankings:
            floor[removal] = compare(cells, "rollout", "random", removal)
        text += " Rollout against the random floor: " + "; ".join(
            f"{_VERDICT_TEXT[v]} random under {REMOVAL_NAMES[r]} (deletion "
            f"{_iv(cells[('deletion', 'probability', 'rollout', r)])} against "
            f"{_iv(cells[('deletion', 'probability', 'random', r)])}"
            + (f"; insertion {_iv(cells[('insertion', 'probability', 'rollout', r)])} against "
               f"{_iv(cells[('insertion', 'probability', 'random', r)])}" if v == "mixed" else "") + ")"
            for r, v in floor.items()) + "."
    return text, best, changes, floor


def _chefer_text(cells: Cells) -> str:
    positive = {k[2]: c for k, c in cells.items() if k[0] == "chefer_positive"}
    if not positive:
        return ""
    first = min(positive, key=lambda m: (positive[m].mean, m))
    negative = cells.get(("chefer_negative", "accuracy", first, "mean"))
    return (f" Chefer et al.'s positive perturbation (accuracy AUC, 10% to 90% removed, lower is better): {first} "
            f"lowest, {_iv(positive[first])}" + (f"; its negative perturbation {_iv(negative)}." if negative else "."))


@dataclass(frozen=True, kw_only=True)
class FaithfulnessReadout(Readout):
    """``best``: removal -> the first-ranked method; ``ranking_changes``: the first place differs between removals;
    ``rollout``: removal -> rollout against the random floor (empty when either was not scored)."""
    best: dict[str, str]
    ranking_changes: bool
    rollout: dict[str, Verdict]


@readout.register(FaithfulnessResult)
def _faithfulness(result: FaithfulnessResult) -> FaithfulnessReadout:
    cells = faithfulness_cells(result)
    text, best, changes, floor = _faithful_text(cells, {r: result.ranking[r] for r in result.removals})
    over = result.described or f"{result.images} images"
    return FaithfulnessReadout(figure="deletion and insertion", text=f"Over {over}: {text}{_chefer_text(cells)}",
                               paper=PAPER_FAITHFULNESS, best=best, ranking_changes=changes, rollout=floor)


@dataclass(frozen=True, kw_only=True)
class MapsReadout(Readout):
    """``ig_converged``: integrated gradients' worst convergence delta is within 1% (None: not run)."""
    ig_converged: bool | None


@readout.register(MapsResult)
def _maps(result: MapsResult) -> MapsReadout:
    n = len(result.targets)
    explained = ("the model's prediction" if bool((result.targets == result.predictions).all()) else
                 "the classes given")
    text = f"Maps of {len(result.methods)} methods ({', '.join(result.methods)}) for {result.described or n} images, "
    text += f"each explaining {explained}"
    if result.labels is not None:
        right = int((result.predictions == result.labels).sum())
        text += f"; the model is right on {right} of {n}"
    converged = None
    if result.ig_delta == result.ig_delta:  # not nan: integrated gradients ran
        converged = result.ig_delta <= 0.01
        text += (f". Integrated gradients' worst convergence delta is {result.ig_delta:.1e} of f(x) - f(baseline), "
                 + ("within 1%" if converged else "beyond 1%: its attributions do not add up; use more steps"))
    return MapsReadout(figure="attribution maps", text=text + ".", paper=PAPER_MAPS, ig_converged=converged)


def _sanity_verdicts(last: Mapping[str, Cell]) -> tuple[str, tuple[str, ...]]:
    flagged = tuple(m for m, c in last.items() if c.mean >= FLAG_SPEARMAN)
    said = "; ".join(f"{m} {_iv(c, 2)}" for m, c in last.items())
    text = f"Mean Spearman of each method's maps with every layer re-initialised against the trained model's: {said}. "
    text += (f"Flagged (mean {FLAG_SPEARMAN} or more: the map barely depends on what the model learnt): "
             f"{', '.join(flagged)}." if flagged else f"No method keeps a mean Spearman of {FLAG_SPEARMAN} or more.")
    unsure = [m for m, c in last.items() if c.low < FLAG_SPEARMAN <= c.high]
    if unsure:
        text += f" Not resolved from {FLAG_SPEARMAN} (the interval spans it): {', '.join(unsure)}."
    if "random" in last:
        text += " The random floor ignores the model by design, so it stays the same whatever is re-initialised."
    return text, flagged


@dataclass(frozen=True, kw_only=True)
class SanityReadout(Readout):
    """``flagged``: methods whose mean Spearman stays at or above 0.5 with every layer re-initialised."""
    flagged: tuple[str, ...]


@readout.register(SanityResult)
def _sanity(result: SanityResult) -> SanityReadout:
    last = {m: Cell(float(result.spearman[m][-1].double().mean()), float(result.low[m][-1]),
                    float(result.high[m][-1])) for m in result.methods}
    text, flagged = _sanity_verdicts(last)
    stages = f"re-initialised from the top: {', '.join(result.stages)}; {result.images} images"
    return SanityReadout(figure="sanity check", text=f"{text} ({stages})", paper=PAPER_SANITY, flagged=flagged)


def _focus_text(shares: Mapping[str, Cell], accuracy: Cell, size: int | None, mosaics: int) -> tuple[str, tuple, bool]:
    sides = {m: "above" if c.low > FOCUS_CHANCE else "below" if c.high < FOCUS_CHANCE else "no better than"
             for m, c in shares.items()}
    said = "; ".join(f"{m} {_iv(c, 2)}, {sides[m]} chance" for m, c in shares.items())
    text = f"Focus on {mosaics} mosaics (chance {FOCUS_CHANCE}): {said}. "
    text += f"The model names the asked quadrant's class on {_iv(accuracy, 2)} of the mosaics"
    low = accuracy.high < LOW_MOSAIC_ACCURACY
    if low:
        shrunk = ("each mosaic is shrunk to the model's input size" if size is None else
                  f"each mosaic is shown at the model's {size}x{size} pixels, so each image in it is "
                  f"{size // 2}x{size // 2}" + (f" (shrunk from {2 * TILE})" if size < 2 * TILE else ""))
        text += (f": low, since {shrunk}; where the model does not recognise the asked class, a map cannot point at "
                 "it, so the Focus scores say little")
    return text + ".", tuple(m for m, s in sides.items() if s == "above"), low


@dataclass(frozen=True, kw_only=True)
class FocusReadout(Readout):
    """``above_chance``: methods whose Focus interval lies above 0.25; ``low_accuracy``: the model's accuracy on the
    mosaics lies under 0.5 (its interval's upper end)."""
    above_chance: tuple[str, ...]
    low_accuracy: bool


@readout.register(FocusResult)
def _focus(result: FocusResult) -> FocusReadout:
    shares = {m: Cell(result.mean[m], result.low[m], result.high[m]) for m in result.methods}
    accuracy = Cell(result.accuracy, result.accuracy_low, result.accuracy_high)
    text, above, low = _focus_text(shares, accuracy, int(result.mosaics.shape[-1]), len(result.targets))
    return FocusReadout(figure="Focus", text=text, paper=PAPER_FOCUS, above_chance=above, low_accuracy=low)


@dataclass(frozen=True, kw_only=True)
class ScoreboardReadout(Readout):
    """One model's scoreboard: ``best``, ``ranking_changes``, ``rollout`` as :class:`FaithfulnessReadout`;
    ``flagged`` as :class:`SanityReadout`; ``above_chance`` and ``low_accuracy`` as :class:`FocusReadout`."""
    best: dict[str, str]
    ranking_changes: bool
    rollout: dict[str, Verdict]
    flagged: tuple[str, ...]
    above_chance: tuple[str, ...]
    low_accuracy: bool


def board_readout(rows: Iterable[AttributionScore], ig_delta: float | None = None) -> ScoreboardReadout:
    """The readout of one model's scoreboard rows (:meth:`ScoreboardResult.rows`, or a committed file's)."""
    rows = list(rows)
    cells = row_cells(rows)
    accuracy = cells.get(("accuracy", "accuracy", "model", ""))
    text = f"Accuracy on the {rows[0].images} scored images {_iv(accuracy)}. " if accuracy else ""
    said, best, changes, floor = _faithful_text(cells, {r: ranking(cells, r) for r in _removals(cells)})
    text += said + _chefer_text(cells)
    last = {k[2]: c for k, c in cells.items() if k[0] == "sanity"}
    flagged: tuple[str, ...] = ()
    if last:
        sane, flagged = _sanity_verdicts(last)
        text += " " + sane
    shares = {k[2]: c for k, c in cells.items() if k[0] == "focus" and k[2] != "model"}
    above, low = (), False
    if shares:
        mosaics = next(r.images for r in rows if r.score == "focus")
        focus, above, low = _focus_text(shares, cells[("focus", "accuracy", "model", "")], None, mosaics)
        text += " " + focus
    if ig_delta is not None and ig_delta == ig_delta:
        text += f" Integrated gradients' worst convergence delta: {ig_delta:.1e} of f(x) - f(baseline)."
    return ScoreboardReadout(figure="attribution scoreboard", text=text, paper=PAPER_FAITHFULNESS, best=best,
                             ranking_changes=changes, rollout=floor, flagged=flagged, above_chance=above,
                             low_accuracy=low)


@readout.register(ScoreboardResult)
def _scoreboard(result: ScoreboardResult) -> ScoreboardReadout:
    return board_readout(result.rows(), result.maps.ig_delta)


def scoreboard_readout(rows: Iterable[AttributionScore], compute: bool = True) -> Readouts:
    """The scoreboard readout of each model in ``rows`` (e.g. :func:`vitlab.result_files.read_scoreboards`'s), in
    the order they come, each trained zoo model with its test accuracy and images seen (``compute``)."""
    from ..training import zoo
    by_model: dict[str, list[AttributionScore]] = defaultdict(list)
    for row in rows:
        by_model[row.model].append(row)
    if not by_model:
        raise ValueError("no scoreboard rows given: read them with vitlab.result_files.read_scoreboards(folder)")
    return Readouts({name: board_readout(rs) for name, rs in by_model.items()},
                    {n: zoo_compute(n) for n in by_model if compute and zoo.trained(n)})
