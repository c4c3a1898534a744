"""analysis.residual: the residual stream taken apart, against a forward computed by hand (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import hand_logits, hand_states, small_timm_vit, uint8_images
from vitlab.analysis import residual
from vitlab.models import build_model, preprocess


@pytest.fixture(scope="module")
def micro():
    """A float64 random ``vit_micro_c10`` (2 blocks, 2 heads of 16 channels) and 5 images."""
    torch.manual_seed(0)
    return build_model({"zoo": "vit_micro_c10"}).double(), uint8_images(5, seed=10)


def test_stream_states_the_models_facts():
    s = residual.stream(small_timm_vit(reg_tokens=2))
    assert (s.depth, s.heads, s.head_dim, s.width, s.prefix, s.pool, s.class_token) == (2, 3, 16, 48, 3, "token",
                                                                                         True)
    s = residual.stream(small_timm_vit(global_pool="avg", class_token=False))
    assert (s.prefix, s.pool, s.class_token) == (0, "avg", False)


def test_check_head_makes_negative_indices_positive():
    s = residual.stream(build_model({"zoo": "vit_micro_c10"}))
    assert residual.check_head(s, -1, -2) == (1, 0)
    assert residual.check_head(s, 0) == (0, None)


def test_block_inputs_and_readout_match_a_hand_forward_and_the_model(micro):
    model, images = micro
    x = preprocess(model, images)
    with torch.no_grad():
        got, want = residual.block_inputs(model, residual.model_input(model, images)), hand_states(model, x)
        assert len(got) == len(model.blocks) + 1
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-12, rtol=0)
        assert torch.allclose(residual.readout(model, got[-1]), model(x), atol=1e-12, rtol=0)
        assert torch.allclose(residual.readout(model, got[1], "avg"), hand_logits(model, want[1], "avg"), atol=1e-12,
                              rtol=0)
        assert torch.allclose(residual.run_blocks(model, got[1], 1), want[2], atol=1e-12, rtol=0)


def test_edited_heads_and_branches_match_hand_edited_blocks(micro):
    model, images = micro
    x = preprocess(model, images)
    d = model.blocks[0].attn.head_dim
    mean = torch.randn(17, 32, dtype=torch.float64)  # (T, D): a stand-in for per-position means
    edits = {(0, "head"): residual.replace_heads([1], d, mean), (1, "mlp"): residual.replace_all(mean),
             (1, "attn"): residual.replace_all(0.0)}

    def z0(z):
        z = z.clone()
        z[..., d:2 * d] = mean[:, d:2 * d]
        return z
    hand = {(0, "z"): z0, (1, "mlp"): lambda m: torch.zeros_like(m) + mean, (1, "attn"): torch.zeros_like}
    with torch.no_grad():
        with residual.edited(model, edits):
            got = model(x)
        assert torch.allclose(got, hand_logits(model, hand_states(model, x, hand)[-1]), atol=1e-12, rtol=0)
        assert not torch.allclose(got, model(x), atol=1e-3)  # the edit did something
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_site_means_are_per_position_means_over_the_reference(micro):
    model, images = micro
    x = preprocess(model, images)
    seen = {"z": [], "attn": [], "mlp": []}

    def record(site, layer):
        def f(t):
            seen[site].append((layer, t))
            return t
        return f
    with torch.no_grad():
        hand_states(model, x, {(i, s): record(s, i) for i in range(2) for s in seen})
        means = residual.site_means(model, images, batch_size=2)  # batches of 2, 2 and 1
    for site, name in (("z", "head"), ("attn", "attn"), ("mlp", "mlp")):
        want = torch.stack([t.mean(0) for _, t in sorted(seen[site], key=lambda lt: lt[0])])  # (L, T, C)
        assert means[name].shape == want.shape
        assert torch.allclose(means[name], want, atol=1e-12, rtol=0), site


def test_edited_refuses_an_unknown_site_and_leaves_no_hook(micro):
    model, _ = micro
    with pytest.raises(ValueError, match="site 'heads' is not one of"):
        with residual.edited(model, {(0, "head"): residual.replace_all(), (1, "heads"): residual.replace_all()}):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
