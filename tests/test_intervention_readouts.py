"""The intervention readouts say what the results hold, with their intervals; the verdicts follow the intervals."""
import dataclasses

import pytest
import torch

from vitlab import models
from vitlab.analysis import ablation, lens, patching
from vitlab.analysis.references import bootstrap_interval
from vitlab.views import intervention_readouts as R
from vitlab.views import readouts


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    model = models.build_model({"zoo": "vit_micro_c10"}).eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    return model, images, torch.arange(10) % 10


@pytest.fixture(scope="module")
def zero_ablation(micro):
    return ablation.ablation_analysis(*micro, kind="zero", top_k=2)


def _link(**fields) -> ablation.LinkResult:
    base = dict(distance=torch.zeros(2, 2), effect=torch.zeros(2, 2), measure="accuracy", kind="mean", spearman=0.1,
                spearman_low=-0.2, spearman_high=0.4, split=10.0, local=0.05, global_=0.01, difference=0.04,
                difference_low=0.01, difference_high=0.07, top_k=[(1, 0.1, 0.05, 0.15), (2, 0.3, 0.2, 0.4)],
                accuracy=0.8, images=100)
    return ablation.LinkResult(**{**base, **fields})


@pytest.mark.parametrize("low, high, verdict, said", [
    (0.01, 0.07, "more on local", "relies more on its local heads"),
    (-0.07, -0.01, "more on global", "relies more on its global heads"),
    (-0.01, 0.07, "no difference resolved", "No difference between its local and global heads is resolved"),
])
def test_link_verdict_follows_the_difference_interval(low, high, verdict, said):
    out = R.readout(_link(difference_low=low, difference_high=high))
    assert out.reliance == verdict and said in out.text
    assert f"local minus global 0.040 (95% interval {low:.3f} to {high:.3f})" in out.text
    assert "The 2 most important heads ablated together cost 0.300 (95% interval 0.200 to 0.400)" in out.text
    assert "does not ask which heads" in out.paper


def test_readouts_register_with_the_one_readout_function(micro, zero_ablation):
    assert isinstance(readouts.readout(zero_ablation), R.AblationReadout)  # the same singledispatch


def test_ablation_readout_names_the_heads_whose_interval_lies_above_zero(micro, zero_ablation):
    result = zero_ablation
    low, _ = result.interval("head_accuracy")
    out = R.readout(result)
    assert out.needed == tuple((i + 1, h + 1) for i, h in (low > 0).nonzero().tolist())
    # plant a head that every image needs: the readout names it, with its interval
    planted = result.head_accuracy.clone()
    planted[:, 1, 0] = 1.0
    out = R.readout(dataclasses.replace(result, head_accuracy=planted, top_heads=[(1, 0)]))
    assert (2, 1) in out.needed and "L2H1" in out.text
    assert "layer 2 head 1: accuracy drop 1.000 (95% interval 1.000 to 1.000)" in out.text
    assert "Michel et al. (2019)" in out.paper and "does not ablate heads" in out.paper


def test_lens_readout_gives_the_first_and_last_rows_with_intervals(micro):
    result = lens.logit_lens_analysis(*micro)
    out = R.readout(result)
    mean, (low, high) = result.mean("correct"), result.interval("correct")
    d = result.depth
    assert ("after the last block" in out.text and
            f"{float(mean[0, d]):.3f} (95% interval {float(low[0, d]):.3f} to {float(high[0, d]):.3f})" in out.text)
    assert out.first_layer == result.first_layer() and "Vilas et al." in out.paper


def test_attribution_readout_reports_the_decomposition_exact(micro):
    result = lens.attribution_analysis(*micro)
    out = R.readout(result)
    assert out.residual < 1e-4
    top = result.head_true.double().mean(0)
    layer, head = out.top_heads[0]
    assert float(top[layer - 1, head - 1]) == pytest.approx(float(top.max()))
    low, high = bootstrap_interval(result.head_true.double().sum((1, 2)))
    assert f"All heads together {float(result.head_true.double().sum((1, 2)).mean()):.2f} (95% interval " \
           f"{float(low):.2f} to {float(high):.2f})" in out.text


def test_patching_readout_says_when_the_class_token_carries_the_decision(micro):
    model, images, labels = micro
    result = patching.patching_analysis(model, images[:3], labels[:3], min_gap=-1e9)
    recovered = result.recovered.clone()
    recovered[:, :, 0] = torch.tensor([0.1, 0.9, 1.0])  # the class token recovers from layer 2 on (then the readout)
    out = R.readout(dataclasses.replace(result, recovered=recovered))
    assert out.class_layer == 2 and "reaches the class token by layer 2" in out.text
    recovered[:, :, 0] = torch.tensor([0.2, 0.2, 1.0])  # only where the head reads it
    out = R.readout(dataclasses.replace(result, recovered=recovered))
    assert out.class_layer is None and "has not reached it" in out.text
    assert f"{result.pairs} pairs kept, {result.dropped} dropped" in out.text
