import numpy as np
import pytest
import torch

import vitlab
from vitlab import models
from vitlab.analysis import attention_maps, metrics
from vitlab.analysis.capture import capture
from vitlab.analysis.references import INIT_SEEDS
from vitlab.analysis.rollout import RolloutResult, _central_region, _rollout_maps, rollout_analysis
from test_capture import _manual_attention


def test_uniform_rollout_is_one_and_central_mass_is_four():
    uniform = torch.ones(5, 8, 8)
    r = RolloutResult.from_maps(uniform)
    assert r.ratio == pytest.approx(1.0) and r.area == 0.25 and r.low == pytest.approx(1.0) and r.images == 5
    centre = torch.zeros(5, 8, 8)
    centre[:, 2:6, 2:6] = 1.0
    r = RolloutResult.from_maps(centre, reference=[uniform])
    assert r.ratio == pytest.approx(4.0) and r.reference == [pytest.approx(1.0)] and r.std == 0
    mask = _central_region((8, 8))
    assert int(mask.sum()) == 16 and bool(mask[2:6, 2:6].all())


def test_rollout_analysis_equals_the_metric_image_by_image(tiny_vit):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    r = rollout_analysis(tiny_vit, images, batch_size=2)
    ratios = []
    for i in range(5):  # brute force: each image alone, masses summed patch by patch
        cap = capture(tiny_vit, images[i : i + 1])
        roll = attention_maps.attention_rollout(list(cap.attn.values()), 1)[0].reshape(4, 4)
        torch.testing.assert_close(r.maps[i], roll, rtol=1e-5, atol=1e-6)
        inside = sum(float(roll[a, b]) for a in (1, 2) for b in (1, 2))
        ratios.append(inside / float(roll.sum()) / (4 / 16))
    mean = sum(ratios) / 5
    assert r.ratio == pytest.approx(mean, rel=1e-5) and r.low <= r.ratio <= r.high and r.images == 5
    assert r.std == pytest.approx(float(torch.tensor(ratios).std()), rel=1e-4)
    assert r.ratios.tolist() == pytest.approx(ratios, rel=1e-5)
    assert r.reference == [] and (r.head_fusion, r.discard_ratio) == ("mean", 0.0)  # a timm model: no reference


def test_rollout_analysis_against_random_init_models_with_its_settings():
    torch.manual_seed(0)
    model = models.build_model({"zoo": "vit_micro_c10"})
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    r = rollout_analysis(model, images, "max", 0.5, seeds=(0, 1))
    expected = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        maps = _rollout_maps(models.build_model(model.vitlab_arch), images, "max", 0.5)
        expected.append(float(RolloutResult.from_maps(maps).ratio))
    assert r.reference == pytest.approx(expected) and (r.head_fusion, r.discard_ratio) == ("max", 0.5)
    assert len(rollout_analysis(model, images).reference) == len(INIT_SEEDS)


def test_rollout_overlays_and_position_similarity_on_a_timm_hybrid():
    from vitlab.views import figures

    torch.manual_seed(0)
    model = vitlab.models.build_model({"timm": "vit_tiny_r_s16_p8_224", "kwargs": dict(img_size=128, depth=2)}).eval()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    maps = _rollout_maps(model, images)
    x = vitlab.preprocess(model, images)
    manual = _manual_attention(model, x)
    expected = attention_maps.attention_rollout([manual[0], manual[1]], 1)  # (2, 16)
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps, expected.reshape(2, 4, 4), rtol=1e-5, atol=1e-6)
    overlay = figures.attention_overlay_figure(images[0], maps[0], scale="rollout")
    heat = overlay.data[-1]  # one cell per token, each spanning its 32-pixel stride of the image
    assert np.asarray(heat.z).shape == (4, 4) and (heat.dx, heat.dy, heat.x0) == (32, 32, 15.5)
    sim = metrics.position_similarity(model)
    pos = torch.nn.functional.normalize(model.pos_embed[0, 1:].detach(), dim=-1)  # (16, D)
    assert sim.shape == (4, 4, 4, 4)
    torch.testing.assert_close(sim.reshape(16, 16), pos @ pos.T)


def _pooling_vit(**kw):
    """A 2-block timm ViT on 32x32 inputs, 8-pixel patches (4x4 grid), its prediction the mean of its patch tokens."""
    torch.manual_seed(1)
    return vitlab.models.build_model({"timm": "vit_tiny_patch16_224", "kwargs": dict(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5, global_pool="avg", **kw)}).eval()


def _pooled_by_hand(cap, prefix):
    """Rollout by a loop over the captured layers, its output row the mean of the patch rows (the prediction pools)."""
    maps = []
    for i in range(cap.attn[0].shape[0]):
        n = cap.attn[0].shape[-1]
        rollout = torch.eye(n, dtype=torch.float64)
        for layer in sorted(cap.attn):
            a = 0.5 * cap.attn[layer][i].double().mean(0) + 0.5 * torch.eye(n, dtype=torch.float64)
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        rows = [rollout[r, prefix:] for r in range(prefix, n)]
        maps.append((sum(rows) / len(rows)).reshape(cap.grid))
    return torch.stack(maps).float()


@pytest.mark.parametrize("class_token", [False, True])
def test_rollout_of_a_pooling_vit_reads_the_mean_of_the_patch_rows(class_token):
    from vitlab.views import readouts

    model = _pooling_vit(class_token=class_token)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    r = rollout_analysis(model, images, seeds=())
    expected = _pooled_by_hand(capture(model, images), prefix=int(class_token))
    torch.testing.assert_close(r.maps, expected, rtol=1e-5, atol=1e-6)
    assert (r.pool, r.class_token) == ("avg", class_token)
    text = readouts.readout(r).text
    said = "it has no class token" if not class_token else "its class token is not read"
    assert "from the mean of the patch rows: this model pools" in text and said in text


def test_rollout_of_a_max_pooling_vit_is_refused_before_any_forward(monkeypatch):
    model = _pooling_vit(class_token=False)
    model.global_pool = "max"
    monkeypatch.setattr("vitlab.analysis.rollout.capture", lambda *a, **k: pytest.fail("ran a forward"))
    with pytest.raises(ValueError, match="global_pool 'max'") as info:
        rollout_analysis(model, torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8), seeds=())
    assert "\n" not in str(info.value)
