import math

import pytest
import timm
import torch

import vitlab
from vitlab import models
from vitlab.analysis import metrics
from vitlab.analysis.capture import Capture, capture, hooks
from vitlab.analysis.distance import (DistanceResult, attention_distance, distance_analysis, head_statistics,
                                      lowest_head, random_init_statistics, uniform_distance)
from test_capture import _brute_distance

GRID, PATCH = (8, 8), (4, 4)


def _attention(kernel: torch.Tensor, images: int = 6, heads: int = 3, prefix: int = 1) -> torch.Tensor:
    """(images, heads, prefix + n, prefix + n) attention whose patch queries attend by ``kernel`` (n, n), no prefix."""
    n = kernel.shape[0]
    a = torch.zeros(images, heads, prefix + n, prefix + n)
    a[..., :prefix, :] = 1.0 / (prefix + n)
    a[..., prefix:, prefix:] = kernel / kernel.sum(-1, keepdim=True)
    return a


def _per_image(attn: torch.Tensor, layers: int = 2) -> torch.Tensor:
    """(images, layers, heads): metrics.mean_attention_distance of each image alone, the same map in every layer."""
    d = torch.stack([metrics.mean_attention_distance(attn[i : i + 1], GRID, PATCH) for i in range(len(attn))])
    return d[:, None].expand(-1, layers, -1).clone()


# --- streamed statistics and the distance of a Capture -----------------------------------------


def test_head_statistics_keeps_each_images_distance_and_entropy(tiny_vit):
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    stats = head_statistics(tiny_vit, images, batch_size=3)
    assert stats["distance_per_image"].shape == (7, 2, 3) and stats["entropy_per_image"].shape == (7, 2, 3)
    for i in range(7):  # each image alone, through the metric itself
        cap = capture(tiny_vit, images[i : i + 1])
        for layer in range(2):
            d = metrics.mean_attention_distance(cap.attn[layer], cap.grid, cap.patch_size, cap.num_prefix_tokens)
            e = metrics.attention_entropy(cap.attn[layer], cap.grid, cap.num_prefix_tokens)
            torch.testing.assert_close(stats["distance_per_image"][i, layer], d, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(stats["entropy_per_image"][i, layer], e, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(stats["distance_per_image"].mean(0), stats["distance"], atol=1e-5, rtol=1e-5)


def test_head_statistics_stream_equals_one_big_batch(tiny_vit):
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    streamed = head_statistics(tiny_vit, images, batch_size=3)
    cap = capture(tiny_vit, images)
    for layer in (0, 1):
        expected = vitlab.analysis.metrics.mean_attention_distance(cap.attn[layer], cap.grid, cap.patch_size)
        torch.testing.assert_close(streamed["distance"][layer], expected, rtol=1e-5, atol=1e-5)
    assert streamed["distance"].shape == streamed["entropy"].shape == (2, 3)
    batches = (images[i : i + 4] for i in range(0, 10, 4))  # any iterable of batches works too
    torch.testing.assert_close(head_statistics(tiny_vit, batches)["distance"], streamed["distance"])


@pytest.mark.parametrize("renormalize", [True, False])
def test_attention_distance_uses_the_captures_grid_on_a_non_square_input(renormalize):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 64), patch_size=8,
                              embed_dim=24, depth=2, num_heads=3, reg_tokens=2).eval()  # 3 prefix tokens
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(40)  # peaked attention: near-uniform maps hide a transposed grid
    cap = capture(model, torch.randn(2, 3, 32, 64).clamp(-3, 3))
    assert (cap.grid, cap.patch_size, cap.num_prefix_tokens) == ((4, 8), (8, 8), 3)
    for layer in (0, 1, -1):
        ours = attention_distance(cap, layer, renormalize)
        attn = cap.attn[layer]
        right = metrics.mean_attention_distance(attn, (4, 8), (8, 8), 3, renormalize)
        torch.testing.assert_close(ours, right)
        torch.testing.assert_close(ours.double(), _brute_distance(attn, 4, 8, 8, 3, renormalize), rtol=1e-5, atol=1e-4)
        transposed = metrics.mean_attention_distance(attn, (8, 4), (8, 8), 3, renormalize)  # accepted, but wrong
        assert (ours - transposed).abs().max() > 0.5  # pixels
    every = attention_distance(cap, renormalize=renormalize)
    assert every.shape == (2, 3)
    torch.testing.assert_close(every[1], attention_distance(cap, 1, renormalize))
    with hooks(model) as live:  # the grid of a forward run by hand inside hooks
        model(torch.randn(2, 3, 32, 64).clamp(-3, 3))
        assert live.grid == (4, 8)
        torch.testing.assert_close(attention_distance(live, 0, renormalize),
                                   metrics.mean_attention_distance(live.attn[0], (4, 8), (8, 8), 3, renormalize))


def test_attention_distance_needs_a_forward_pass():
    with pytest.raises(ValueError, match="no forward pass"):
        attention_distance(Capture(2, [0, 1], patch_size=(8, 8), num_prefix_tokens=1), 0)
    with pytest.raises(TypeError, match="must be a Capture"):
        attention_distance({0: torch.zeros(1, 1, 17, 17)}, 0)


def test_the_papers_convention_is_the_default(tiny_vit):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    cap = capture(tiny_vit, images)
    for layer in (0, 1):
        paper = _brute_distance(cap.attn[layer], 4, 4, 8, 1, renormalize=False)
        torch.testing.assert_close(attention_distance(cap, layer).double(), paper, rtol=1e-5, atol=1e-5)
    stats = head_statistics(tiny_vit, images)
    torch.testing.assert_close(stats["distance"], attention_distance(cap), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stats["distance"], head_statistics(tiny_vit, images, renormalize=True)["distance"])


# --- the analysis: per-image distances, their spread and the references ------------------------


def test_uniform_attention_is_the_uniform_distance_in_every_head():
    n = GRID[0] * GRID[1]
    attn = torch.full((4, 3, n + 1, n + 1), 1.0 / (n + 1))  # uniform over every token
    uniform = metrics.uniform_attention_distance(GRID, PATCH)
    r = DistanceResult.from_per_image(_per_image(attn), uniform)
    assert r.layer_min[0] == pytest.approx(uniform, abs=1e-4) and r.layer_max[0] == pytest.approx(uniform, abs=1e-4)
    assert r.uniform == uniform and r.images == 4 and r.band == [] and r.layers == [0, 1] and r.depth == 2
    assert r.lowest.std == pytest.approx(0, abs=1e-5) and r.lowest.low == pytest.approx(uniform, abs=1e-4)


def test_one_hot_diagonal_is_zero_pixels():
    n = GRID[0] * GRID[1]
    r = DistanceResult.from_per_image(_per_image(_attention(torch.eye(n))), metrics.uniform_attention_distance(GRID, PATCH))
    assert r.lowest.mean == 0 and r.lowest.high == 0 and float(r.high.max()) == 0


def test_gaussian_local_attention_gives_its_distance_and_the_band_per_layer():
    d = metrics._patch_distances(GRID, PATCH).float()  # (n, n) pixels
    kernel = torch.exp(-(d**2) / (2 * 3.0**2))  # width 3 px: mostly the patch itself and its neighbours
    expected = float((kernel / kernel.sum(-1, keepdim=True) * d).sum(-1).mean())  # no weight on prefix keys
    band = torch.full((3, 2, 3), 16.0)  # random-init heads near uniform
    band[1, 1, 2] = 18.0
    r = DistanceResult.from_per_image(_per_image(_attention(kernel)), 16.5, band)
    assert r.lowest.mean == pytest.approx(expected, rel=1e-4)
    assert r.band == [(16.0, 16.0), (16.0, 18.0)]
    with pytest.raises(ValueError, match="random_init"):
        DistanceResult.from_per_image(_per_image(_attention(kernel)), 16.5, torch.zeros(3, 5, 3))


def test_the_spread_over_images_is_the_sample_std_and_a_bootstrap_interval_of_the_mean():
    gen = torch.Generator().manual_seed(2)
    per_image = torch.rand(12, 2, 3, generator=gen) * 20  # (images, layers, heads)
    r = DistanceResult.from_per_image(per_image, 16.0, layers=[1, 3])
    for layer in range(2):
        for head in range(3):
            values = per_image[:, layer, head].double().tolist()
            mean = sum(values) / 12
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / 11)
            assert float(r.mean[layer, head]) == pytest.approx(mean, rel=1e-6)
            assert float(r.std[layer, head]) == pytest.approx(std, rel=1e-5)
            assert float(r.low[layer, head]) <= mean <= float(r.high[layer, head])
    head = min(range(3), key=lambda h: float(per_image[:, 0, h].double().mean()))
    assert r.lowest.head == head and r.lowest == lowest_head(per_image)  # the sweeps' numbers are the analysis's
    assert r.layer_means == pytest.approx([float(per_image[:, i].double().mean()) for i in range(2)])
    assert r.layers == [1, 3] and r.depth == 4


def test_distance_analysis_equals_the_metric_image_by_image(tiny_vit):
    images = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    r = distance_analysis(tiny_vit, images)  # timm model: no vitlab_arch, no random-init reference
    per_image = torch.stack([attention_distance(capture(tiny_vit, images[i : i + 1])) for i in range(9)])
    torch.testing.assert_close(r.per_image, per_image, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r.mean, per_image.mean(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r.std, per_image.std(0), atol=1e-4, rtol=1e-4)
    assert r.layer_min == pytest.approx(per_image.mean(0).min(1).values.tolist(), abs=1e-4)
    assert r.lowest.head == int(per_image.mean(0)[0].argmin()) and r.lowest.low <= r.lowest.mean <= r.lowest.high
    assert r.random_init is None and r.band == [] and r.images == 9 and r.token_field is None
    assert r.uniform == pytest.approx(metrics.uniform_attention_distance((4, 4), (8, 8)))
    assert r.depth == 2 and r.diagonal == pytest.approx(32 * 2**0.5) and r.cnn_fields == []


def test_distance_analysis_measures_random_init_models_on_the_first_images():
    torch.manual_seed(1)
    model = models.build_model({"zoo": "vit_micro_c10"})
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    r = distance_analysis(model, images, seeds=(0, 2), reference_images=4, renormalize=True,
                          cnn=models.build_model({"zoo": "resnet_micro_c10"}))
    expected = []
    for seed in (0, 2):  # rebuilt here from the architecture record
        torch.manual_seed(seed)
        expected.append(head_statistics(models.build_model(model.vitlab_arch), images[:4], renormalize=True)["distance"])
    torch.testing.assert_close(r.random_init, torch.stack(expected))
    assert r.random_images == 4 and r.images == 6 and r.renormalize
    assert r.uniform == pytest.approx(uniform_distance(model, renormalize=True))
    assert r.cnn_fields == metrics.receptive_fields(models.build_model({"zoo": "resnet_micro_c10"}))
    assert distance_analysis(model, images, seeds=()).random_init is None


def test_a_hybrids_result_carries_its_stem_window():
    torch.manual_seed(0)
    hybrid = models.build_model({"zoo": "hybrid_tiny_c10"})
    r = distance_analysis(hybrid, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), seeds=())
    # by hand: conv k3 (3), max-pool k3 s2 (5), layer1 two k3 (13), layer2 k3 s2 (17), k3 at jump 4 (25)
    assert r.token_field == 25.0 and r.depth == 5


# --- references: uniform attention and random-initialised models ------------------------------


def test_uniform_distance_reads_the_models_grid():
    model = vitlab.models.build_model({"timm": "vit_tiny_patch16_224", "kwargs": dict(
        img_size=(32, 48), patch_size=8, embed_dim=24, depth=1, num_heads=2, reg_tokens=2)})  # 3 prefix tokens
    centres = [((r + 0.5) * 8, (c + 0.5) * 8) for r in range(4) for c in range(6)]
    mean = sum(math.dist(a, b) for a in centres for b in centres) / 24**2
    assert uniform_distance(model, renormalize=True) == pytest.approx(mean, rel=1e-9)
    assert uniform_distance(model) == pytest.approx(mean * 24 / 27, rel=1e-9)


def test_random_init_statistics_are_seeded_untrained_models_of_the_same_architecture():
    trained = vitlab.models.build_model({"zoo": "vit_tiny_c10"})
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3)  # not what any seed gives
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    got = random_init_statistics(trained, images, seeds=(0, 2), batch_size=2, layers=[0, -1])
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    for i, seed in enumerate((0, 2)):
        torch.manual_seed(seed)
        fresh = vitlab.models.build_model(trained.vitlab_arch)
        expected = head_statistics(fresh, images, layers=[0, -1])
        torch.testing.assert_close(got["distance"][i], expected["distance"])
        torch.testing.assert_close(got["entropy"][i], expected["entropy"])
    assert got["distance"].shape == (2, 2, 4) and got["layers"].tolist() == [0, 5]
    assert not torch.equal(got["distance"][0], got["distance"][1])
    assert random_init_statistics(trained, images, seeds=()) is None  # no seeds: no reference
    del trained.vitlab_arch
    assert random_init_statistics(trained, images) is None  # no architecture record: no reference


def test_head_statistics_of_a_16_bit_model_on_uint8_images_match_the_fp32_models(half_micro):
    m = half_micro
    got, expected = head_statistics(m.half, m.images, batch_size=4), head_statistics(m.fp32, m.images, batch_size=4)
    for key in ("distance", "entropy", "distance_per_image", "entropy_per_image"):
        m.close(got[key], expected[key])
