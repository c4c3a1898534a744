"""The attribution readouts follow the intervals of constructed results: rollout beats the random floor only where the
intervals separate, a ranking that changes with the removal is reported, flags and Focus verdicts follow the
numbers, and the committed rows' readout agrees with the result's."""
import math

import pytest
import torch

from vitlab.analysis.faithfulness import FaithfulnessResult, Score
from vitlab.analysis.map_checks import FocusResult, SanityResult
from vitlab.analysis.saliency import MapsResult
from vitlab.records import AttributionScore
from vitlab.views import attribution_readouts as R
from vitlab.views import readouts


def _faith(values: dict, removals=("drop", "mean")) -> FaithfulnessResult:
    """A result whose probability AUCs are ``values[(method, removal)] = (deletion (mean, low, high), insertion)``,
    ranked by insertion minus deletion as faithfulness_analysis ranks them."""
    methods = tuple(dict.fromkeys(m for m, _ in values))
    auc = {}
    for (method, removal), (dele, ins) in values.items():
        auc["deletion", "probability", method, removal] = Score(mean=dele[0], low=dele[1], high=dele[2])
        auc["insertion", "probability", method, removal] = Score(mean=ins[0], low=ins[1], high=ins[2])
    ranking = {r: tuple(sorted(methods, key=lambda m: values[m, r][0][0] - values[m, r][1][0])) for r in removals}
    return FaithfulnessResult(methods=methods, removals=tuple(removals), steps=4, fractions=torch.linspace(0, 1, 5),
                              deletion={}, insertion={}, auc=auc, chefer={}, ranking=ranking, images=20)


def _rows(result: FaithfulnessResult, model: str) -> list[AttributionScore]:
    return [AttributionScore(model=model, method=m, score=c, removal=r, measure=k, mean=s.mean, low=s.low, high=s.high,
                             images=result.images) for (c, k, m, r), s in result.auc.items()]


def _two(rollout, random_, removals=("drop",)):
    return _faith({**{("rollout", r): rollout for r in removals}, **{("random", r): random_ for r in removals}},
                  removals)


def test_rollout_does_not_beat_random_when_the_intervals_overlap():
    overlapping = _two(((0.30, 0.25, 0.35), (0.50, 0.45, 0.55)), ((0.33, 0.28, 0.38), (0.47, 0.42, 0.52)))
    out = readouts.readout(overlapping)
    assert isinstance(out, R.FaithfulnessReadout) and out.rollout == {"drop": "no better"}
    assert "no better than random under token drop" in out.text and "better than random" not in out.text.replace(
        "no better than random", "")
    apart = _two(((0.20, 0.18, 0.22), (0.50, 0.45, 0.55)), ((0.33, 0.28, 0.38), (0.47, 0.42, 0.52)))
    assert readouts.readout(apart).rollout == {"drop": "better"}
    assert "better than random under token drop (deletion 0.200 (95% interval 0.180 to 0.220) against 0.330" in (
        readouts.readout(apart).text)
    worse = _two(((0.45, 0.40, 0.50), (0.30, 0.25, 0.35)), ((0.33, 0.28, 0.38), (0.47, 0.42, 0.52)))
    assert readouts.readout(worse).rollout == {"drop": "worse"}
    mixed = _two(((0.20, 0.18, 0.22), (0.30, 0.25, 0.35)), ((0.33, 0.28, 0.38), (0.47, 0.42, 0.52)))
    out = readouts.readout(mixed)  # ahead on deletion, behind on insertion: neither "better" nor "no better"
    assert out.rollout == {"drop": "mixed"}
    assert ("the two curves disagree against random under token drop (deletion 0.200 (95% interval 0.180 to 0.220) "
            "against 0.330 (95% interval 0.280 to 0.380); insertion 0.300 (95% interval 0.250 to 0.350) against 0.470"
            in out.text)


def test_a_ranking_that_changes_with_the_removal_is_reported():
    good, poor = ((0.1, 0.08, 0.12), (0.6, 0.55, 0.65)), ((0.3, 0.28, 0.32), (0.4, 0.35, 0.45))
    changing = _faith({("occlusion", "drop"): poor, ("grad_rollout", "drop"): good,
                       ("occlusion", "mean"): good, ("grad_rollout", "mean"): poor})
    out = readouts.readout(changing)
    assert out.best == {"drop": "grad_rollout", "mean": "occlusion"} and out.ranking_changes
    assert "changes with the removal: grad_rollout under token drop, occlusion under mean fill" in out.text
    assert "ahead of occlusion" in out.text and not out.rollout  # no rollout or random scored: no verdict
    steady = _faith({("occlusion", "drop"): good, ("grad_rollout", "drop"): poor,
                     ("occlusion", "mean"): good, ("grad_rollout", "mean"): poor})
    out = readouts.readout(steady)
    assert not out.ranking_changes and "occlusion ranks first under every removal" in out.text


def test_a_first_place_within_the_second_ones_interval_is_not_called_ahead():
    close = _faith({("occlusion", "drop"): ((0.20, 0.15, 0.25), (0.5, 0.45, 0.55)),
                    ("attn_grad", "drop"): ((0.21, 0.16, 0.26), (0.5, 0.45, 0.55))}, ("drop",))
    text = readouts.readout(close).text
    assert "occlusion ranks first" in text and "but no better than attn_grad (their intervals overlap)" in text


def test_committed_rows_read_as_the_result_does():
    result = _faith({("rollout", "drop"): ((0.2, 0.18, 0.22), (0.5, 0.45, 0.55)),
                     ("random", "drop"): ((0.33, 0.28, 0.38), (0.47, 0.42, 0.52)),
                     ("occlusion", "drop"): ((0.1, 0.05, 0.15), (0.7, 0.65, 0.75))}, ("drop",))
    rows = _rows(result, "vit") + _rows(_faith({("random", "mean"): ((0.3, 0.2, 0.4), (0.3, 0.2, 0.4)),
                                                ("grad_cam", "mean"): ((0.1, 0.0, 0.2), (0.5, 0.4, 0.6))}, ("mean",)),
                                         "resnet")
    said = R.scoreboard_readout(rows, compute=False)
    assert list(said.named) == ["vit", "resnet"]
    vit, resnet = said.named["vit"], said.named["resnet"]
    from_result = readouts.readout(result)
    assert (vit.best, vit.rollout) == (from_result.best, from_result.rollout) == ({"drop": "occlusion"},
                                                                                  {"drop": "better"})
    assert resnet.best == {"mean": "grad_cam"} and resnet.rollout == {}  # no rollout on a ResNet: no verdict
    assert "**vit:**" in said._repr_markdown_()
    with pytest.raises(ValueError, match="no scoreboard rows"):
        R.scoreboard_readout([])


def _sanity(last: dict[str, float]) -> SanityResult:
    gen = torch.Generator().manual_seed(0)
    spearman = {m: torch.stack([torch.full((6,), 0.95), v + 0.05 * torch.randn(6, generator=gen)]).double()
                for m, v in last.items()}
    low = {m: s.mean(1) - 0.1 for m, s in spearman.items()}
    high = {m: s.mean(1) + 0.1 for m, s in spearman.items()}
    flagged = tuple(m for m, s in spearman.items() if float(s[-1].mean()) >= 0.5)
    return SanityResult(methods=tuple(last), stages=("head", "embedding"), spearman=spearman, low=low, high=high,
                        flagged=flagged, images=6)


def test_sanity_flags_follow_the_last_stage():
    result = _sanity({"random": 1.0, "rollout": 0.8, "grad_rollout": 0.1})
    out = readouts.readout(result)
    expected = tuple(m for m in result.methods if float(result.spearman[m][-1].mean()) >= 0.5)
    assert out.flagged == expected == ("random", "rollout")
    mean = float(result.spearman["grad_rollout"][-1].mean())
    assert f"grad_rollout {mean:.2f} (95% interval {mean - 0.1:.2f} to {mean + 0.1:.2f})" in out.text
    assert "Flagged (mean 0.5 or more" in out.text and "head, embedding" in out.text
    assert "No method keeps" in readouts.readout(_sanity({"occlusion": 0.0})).text


def _focus(shares: dict[str, tuple[float, float, float]], accuracy: tuple[float, float, float], size: int = 32):
    return FocusResult(methods=tuple(shares), focus={m: torch.full((10,), v[0]) for m, v in shares.items()},
                       mean={m: v[0] for m, v in shares.items()}, low={m: v[1] for m, v in shares.items()},
                       high={m: v[2] for m, v in shares.items()}, accuracy=accuracy[0], accuracy_low=accuracy[1],
                       accuracy_high=accuracy[2], mosaics=torch.zeros(10, 3, size, size, dtype=torch.uint8),
                       targets=torch.zeros(10, dtype=torch.long), quadrants=torch.zeros(10, dtype=torch.long))


def test_focus_against_chance_and_a_low_mosaic_accuracy_said():
    result = _focus({"occlusion": (0.40, 0.35, 0.45), "rollout": (0.27, 0.20, 0.30), "random": (0.15, 0.10, 0.20)},
                    (0.20, 0.10, 0.30))
    out = readouts.readout(result)
    assert out.above_chance == ("occlusion",) and out.low_accuracy
    assert "rollout 0.27 (95% interval 0.20 to 0.30), no better than chance" in out.text
    assert "random 0.15 (95% interval 0.10 to 0.20), below chance" in out.text
    assert "32x32 pixels, so each image in it is 16x16 (shrunk from 64)" in out.text
    fine = readouts.readout(_focus({"occlusion": (0.4, 0.35, 0.45)}, (0.8, 0.7, 0.9), size=224))
    assert not fine.low_accuracy and "low" not in fine.text


def _maps(ig_delta: float) -> MapsResult:
    n = 3
    return MapsResult(methods=("random", "integrated_gradients"), maps={}, pixels={},
                      images=torch.zeros(n, 3, 32, 32, dtype=torch.uint8), targets=torch.tensor([1, 2, 3]),
                      predictions=torch.tensor([1, 2, 3]), labels=torch.tensor([1, 0, 3]), ig_delta=ig_delta)


@pytest.mark.parametrize("delta, converged, said", [(0.002, True, "2.0e-03 of f(x) - f(baseline), within 1%"),
                                                    (0.05, False, "beyond 1%"), (math.nan, None, None)])
def test_maps_readout_says_integrated_gradients_convergence(delta, converged, said):
    out = readouts.readout(_maps(delta))
    assert out.ig_converged is converged and "the model is right on 2 of 3" in out.text
    assert (said in out.text) if said else "convergence" not in out.text
