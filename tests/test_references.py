import math

import pytest
import torch

from vitlab import models
from vitlab.analysis.references import INIT_SEEDS, bootstrap_interval, random_init, random_inits


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_images():
    gen = torch.Generator().manual_seed(1)
    few, many = torch.randn(20, generator=gen), torch.randn(2000, generator=gen)
    widths = []
    for values in (few, many):
        low, high = bootstrap_interval(values)
        assert float(low) <= float(values.double().mean()) <= float(high)
        widths.append(float(high - low))
    assert widths[1] < widths[0] / 4  # ~ 1/sqrt(n): 10x narrower expected
    # Reproducible under its seed, and the caller's random state is untouched.
    state = torch.random.get_rng_state()
    assert bootstrap_interval(few) == bootstrap_interval(few)
    assert torch.equal(state, torch.random.get_rng_state())
    # Near the normal approximation's 1.96 standard errors.
    assert widths[1] == pytest.approx(2 * 1.96 * float(many.std()) / math.sqrt(2000), rel=0.15)


def test_bootstrap_interval_of_each_column_resamples_the_same_images():
    values = torch.rand(30, 2, 3, generator=torch.Generator().manual_seed(0))
    low, high = bootstrap_interval(values)
    assert low.shape == high.shape == (2, 3) and bool((low <= high).all())
    one_low, one_high = bootstrap_interval(values[:, 1:, 2:])  # one column alone: the same resamples
    assert float(one_low) == pytest.approx(float(low[1, 2]), rel=1e-12)
    assert float(one_high) == pytest.approx(float(high[1, 2]), rel=1e-12)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, level=1.0)


def test_random_inits_rebuild_the_architecture_under_each_seed_and_nothing_without_a_record(tiny_vit):
    trained = models.build_model({"zoo": "vit_micro_c10"})
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3)  # not what any seed gives
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    built = list(random_inits(trained, seeds=(0, 2)))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    for model, seed in zip(built, (0, 2)):
        torch.manual_seed(seed)
        expected = models.build_model(trained.vitlab_arch)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
        assert not model.training
    assert len(list(random_inits(trained))) == len(INIT_SEEDS) == 3
    assert not torch.equal(random_init(trained, 0).blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
    assert list(random_inits(tiny_vit)) == []  # a timm model: no vitlab_arch, no reference
    with pytest.raises(ValueError, match="vitlab_arch"):
        random_init(tiny_vit, 0)
