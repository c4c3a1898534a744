import dataclasses
import math

import pytest
import torch

from vitlab import models
from vitlab.analysis import metrics
from vitlab.views import readouts
from vitlab.analysis.capture import INIT_SEEDS, attention_distance, capture, head_statistics, random_init, random_init_statistics

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


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_images():
    gen = torch.Generator().manual_seed(1)
    few, many = torch.randn(20, generator=gen), torch.randn(2000, generator=gen)
    widths = []
    for values in (few, many):
        low, high = readouts.bootstrap_interval(values)
        assert float(low) <= float(values.double().mean()) <= float(high)
        widths.append(float(high - low))
    assert widths[1] < widths[0] / 4  # ~ 1/sqrt(n): 10x narrower expected
    # Reproducible under its seed, and the caller's random state is untouched.
    state = torch.random.get_rng_state()
    assert readouts.bootstrap_interval(few) == readouts.bootstrap_interval(few)
    assert torch.equal(state, torch.random.get_rng_state())
    # Near the normal approximation's 1.96 standard errors.
    assert widths[1] == pytest.approx(2 * 1.96 * float(many.std()) / math.sqrt(2000), rel=0.15)


def test_uniform_attention_reads_as_uniform_with_no_local_head():
    n = GRID[0] * GRID[1]
    attn = torch.full((4, 3, n + 1, n + 1), 1.0 / (n + 1))  # uniform over every token
    r = readouts.attention_distance(_per_image(attn), metrics.uniform_attention_distance(GRID, PATCH))
    uniform = metrics.uniform_attention_distance(GRID, PATCH)
    assert r.layer_min[0] == pytest.approx(uniform, abs=1e-4) and r.layer_max[0] == pytest.approx(uniform, abs=1e-4)
    assert not bool(r.local.any()) and "no local heads" in r.text
    assert f"{uniform:.1f} px" in r.text


def test_one_hot_diagonal_is_zero_pixels_and_local():
    n = GRID[0] * GRID[1]
    attn = _attention(torch.eye(n))
    r = readouts.attention_distance(_per_image(attn), metrics.uniform_attention_distance(GRID, PATCH))
    assert r.head_mean == 0 and r.head_high == 0 and bool(r.local.all())
    assert "3 of 3 heads local" in r.text


def test_gaussian_local_attention_gives_its_distance_and_is_local():
    d = metrics.patch_distances(GRID, PATCH).float()  # (n, n) pixels
    kernel = torch.exp(-(d**2) / (2 * 3.0**2))  # width 3 px: mostly the patch itself and its neighbours
    attn = _attention(kernel)
    expected = float((kernel / kernel.sum(-1, keepdim=True) * d).sum(-1).mean())  # no weight on prefix keys
    band = torch.full((3, 2, 3), 16.0)  # random-init heads near uniform
    r = readouts.attention_distance(_per_image(attn), metrics.uniform_attention_distance(GRID, PATCH), band)
    assert r.head_mean == pytest.approx(expected, rel=1e-4)
    assert bool(r.local.all()) and r.band == [(16.0, 16.0)] * 2
    # A band below the heads: not local, however short the distance.
    r = readouts.attention_distance(_per_image(attn), metrics.uniform_attention_distance(GRID, PATCH), band * 0)
    assert not bool(r.local.any()) and "no local heads" in r.text


def test_attention_distance_readout_equals_the_metric_on_a_model(tiny_vit):
    images = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    r = readouts.attention_distance_of(tiny_vit, images)  # timm model: no vitlab_arch, no band
    per_image = torch.stack([attention_distance(capture(tiny_vit, images[i : i + 1])) for i in range(9)])
    mean = per_image.mean(0)  # (layers, heads)
    torch.testing.assert_close(r.mean, mean, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(r.std, per_image.std(0), atol=1e-4, rtol=1e-4)
    assert r.layer_min == pytest.approx(mean.min(1).values.tolist(), abs=1e-4)
    assert r.head == int(mean[0].argmin()) and r.band == [] and r.images == 9
    assert r.uniform == pytest.approx(metrics.uniform_attention_distance((4, 4), (8, 8)))
    assert r.head_low <= r.head_mean <= r.head_high
    assert f"{r.head_mean:.1f} px" in r.text and "Measured (Fig. 7 (right))" in r._repr_markdown_()


def test_random_position_embeddings_say_no_structure():
    model = models.build_model({"zoo": "vit_micro_c10"})
    r = readouts.position_embeddings_of(model)
    sim = metrics.position_similarity(model)
    grid = metrics.patch_grid(model)
    assert r.structure == metrics.position_structure(sim, grid) and r.mirror == metrics.mirror_score(sim, grid)
    assert abs(r.structure.distance) < 0.2 and not r.grid_structure and "No grid structure" in r.text
    assert len(r.reference) == 3 and all(abs(s.distance) < 0.2 for s, _ in r.reference)
    expected = [metrics.position_structure(metrics.position_similarity(random_init(model, s)), grid)
                for s in INIT_SEEDS]
    assert [s for s, _ in r.reference] == expected


def _sincos(grid: tuple[int, int], dim: int = 64) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine embedding, (rows, cols, dim)."""
    rows, cols = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    parts = [f(x[..., None] * omega) for x in (r, c) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, -1)


def test_sinusoidal_embedding_says_structure_present_and_a_mirrored_one_says_symmetric():
    emb = torch.nn.functional.normalize(_sincos(GRID), dim=-1).reshape(64, -1)
    sim = (emb @ emb.T).reshape(8, 8, 8, 8)
    r = readouts.position_embeddings(sim)
    assert r.structure.distance > 0.8 and r.grid_structure and "Nearby patches are more similar" in r.text
    assert not r.mirror_symmetric and "Not mirror-symmetric" in r.text
    fold = _sincos((8, 4))  # columns c and 7-c share one embedding
    folded = torch.cat([fold, fold.flip(1)], 1)
    folded = torch.nn.functional.normalize(folded, dim=-1).reshape(64, -1)
    r = readouts.position_embeddings((folded @ folded.T).reshape(8, 8, 8, 8))
    assert r.mirror.mirror == pytest.approx(1.0) and r.mirror_symmetric and "Mirror-symmetric" in r.text


def test_filters_readout_equals_the_explained_variance():
    model = models.build_model({"zoo": "vit_micro_c10"})
    r = readouts.embedding_filters_of(model, k=5)
    ratio = metrics.embedding_filters(model, k=32)[1]
    assert r.first == pytest.approx(float(ratio[0])) and r.first_k == pytest.approx(float(ratio[:5].sum()))
    ref = [metrics.embedding_filters(random_init(model, s), k=32)[1] for s in INIT_SEEDS]
    assert r.reference_first == pytest.approx([float(x[0]) for x in ref])
    assert r.reference_first_k == pytest.approx([float(x[:5].sum()) for x in ref])
    assert r.verdict == "no more"  # a random model against random models
    # One dominant direction: clearly more than random init.
    steep = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    assert readouts.embedding_filters(steep, torch.full((3, 5), 0.2), k=2).verdict == "clearly more"
    assert f"{100 * r.first:.1f}%" in r.text


def test_rollout_readout_uniform_is_one_and_central_mass_is_four():
    uniform = torch.ones(5, 8, 8)
    r = readouts.attention_rollout(uniform)
    assert r.ratio == pytest.approx(1.0) and r.area == 0.25 and r.low == pytest.approx(1.0)
    centre = torch.zeros(5, 8, 8)
    centre[:, 2:6, 2:6] = 1.0
    r = readouts.attention_rollout(centre, reference=[uniform])
    assert r.ratio == pytest.approx(4.0) and r.reference == [pytest.approx(1.0)]
    mask = readouts.central_region((8, 8))
    assert int(mask.sum()) == 16 and bool(mask[2:6, 2:6].all())


def test_rollout_readout_equals_the_metric_on_a_model(tiny_vit):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    r = readouts.attention_rollout_of(tiny_vit, images)
    ratios = []
    for i in range(5):  # brute force: each image alone, masses summed patch by patch
        cap = capture(tiny_vit, images[i : i + 1])
        roll = metrics.attention_rollout(list(cap.attn.values()), 1)[0].reshape(4, 4)
        inside = sum(float(roll[a, b]) for a in (1, 2) for b in (1, 2))
        ratios.append(inside / float(roll.sum()) / (4 / 16))
    mean = sum(ratios) / 5
    assert r.ratio == pytest.approx(mean, rel=1e-5) and r.low <= r.ratio <= r.high and r.images == 5
    assert r.std == pytest.approx(float(torch.tensor(ratios).std()), rel=1e-4)


@pytest.fixture
def micro_file(tmp_path):
    torch.manual_seed(3)
    return str(models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp_path / "micro.safetensors"))


def test_explorers_show_the_readout_of_what_they_draw(micro_file):
    from vitlab.views import explorers

    model = models.load_model(micro_file, device="cpu")
    view = explorers.PositionEmbeddingExplorer([micro_file])
    assert view.readout.value == readouts.position_embeddings_of(model).html()
    view = explorers.EmbeddingFiltersExplorer([micro_file], k=5)
    assert view.readout.value == readouts.embedding_filters_of(model, k=5).html()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    view = explorers.AttentionMapsExplorer([micro_file], images, [f"img{i}" for i in range(6)])
    assert view.readout.value == readouts.attention_rollout_of(model, images).html()


def test_attention_distance_view_returns_the_figure_and_its_readout(micro_file):
    from vitlab.views import explorers

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    figure, readout = explorers.attention_distance_view(micro_file, images)
    expected = readouts.attention_distance_of(models.load_model(micro_file, device="cpu"), images)
    assert readout.text == expected.text and len(readout.band) == len(expected.layers)
    heads = [t for t in figure.data if t.name and t.name.startswith("head ")]
    assert [float(y) for y in heads[0].y] == pytest.approx(expected.mean[:, 0].tolist(), abs=1e-4)
    view = explorers.AttentionDistanceExplorer([micro_file], images, default=6)
    stats = head_statistics(models.load_model(micro_file, device="cpu"), images)
    band = random_init_statistics(models.load_model(micro_file, device="cpu"), images)["distance"]
    assert view.readout.value == readouts.attention_distance(stats["distance_per_image"], expected.uniform, band).html()


def test_data_size_readout_states_each_run_and_applies_the_local_rule():
    from test_records import _run_inside

    runs = [_run_inside(1000, 3.9, 4.0), _run_inside(100, 1.5, 1.9), _run_inside(500, 2.0, 2.2)]
    out = readouts.data_size(runs)
    assert out.sizes == [100, 500, 1000] and out.lowest == [1.5, 2.0, 3.9] and out.uniform == 4.2
    # Local: the whole interval below half the uniform distance (2.1 px).
    assert out.local == [True, False, False]
    assert "100 images: 1.5 px (95% interval 1.4 to 1.9" in out.text and "1,000 images: 3.9 px" in out.text
    assert "1 of 3 runs have a local head" in out.text and "uniform attention: 4.2 px" in out.text
    none = readouts.data_size([_run_inside(100, 3.0, 3.5)])
    assert none.local == [False] and "no run has a local head" in none.text
    with pytest.raises(ValueError, match="run `python -m vitlab sweep`"):
        readouts.data_size([])


def test_references_are_random_init_models_rebuilt_under_each_seed(tiny_vit):
    model = models.build_model({"zoo": "vit_micro_c10"})
    rebuilt = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        rebuilt.append(models.build_model(model.vitlab_arch))
    full = min(model.patch_embed.proj.weight.shape[0], model.patch_embed.proj.weight[0].numel())
    expected = torch.stack([metrics.embedding_filters(m, k=full)[1][:5] for m in rebuilt])
    assert torch.allclose(readouts.filters_reference(model, 5, seeds=(0, 1)), expected)
    scores = readouts.position_reference(model, seeds=(0, 1))
    for (structure, mirror), m in zip(scores, rebuilt):
        sim = metrics.position_similarity(m)
        assert structure == metrics.position_structure(sim, tuple(sim.shape[:2]))
        assert mirror == metrics.mirror_score(sim, tuple(sim.shape[:2]))
    assert readouts.filters_reference(tiny_vit) is None and readouts.position_reference(tiny_vit) == []  # no vitlab_arch


def test_numbers_that_round_to_zero_lose_their_minus_sign():
    assert readouts.number(-0.004, 2) == "0.00" and readouts.number(-0.006, 2) == "-0.01"
    assert readouts.spread_text([-0.001, -0.02, 0.0]) == "-0.01 [-0.02, 0.00]"
    assert readouts.spread_text([0.05, 0.052], 1, "%", 100) == "5.1% [5.0, 5.2]"


# --- pre-training by masked patch prediction ----------------------------------------------------


def _fine_tune_runs():
    from vitlab.records import RunRecord

    def run(size, seed, acc, init=""):
        return RunRecord(model="vit_t", family="vit", subset_size=size, seed=seed, epochs=5, test_accuracy=acc, init=init)

    return [run(1000, 0, 0.40), run(1000, 1, 0.44), run(1000, 0, 0.47, "mpp:enc"), run(1000, 1, 0.49, "mpp:enc"),
            run(5000, 0, 0.60), run(5000, 0, 0.59, "mpp:enc"), run(25000, 0, 0.70),  # 25,000: no fine-tuned run
            run(1000, 0, 0.9, "mpp:other")]


def test_fine_tuning_gain_is_the_difference_of_seed_means_at_sizes_with_both():
    r = readouts.fine_tuning(_fine_tune_runs(), "vit_t", "mpp:enc", pretrained_on=50_000)
    assert r.sizes == [1000, 5000]
    assert r.gain[1000] == pytest.approx((0.47 + 0.49) / 2 - (0.40 + 0.44) / 2)
    assert r.gain[5000] == pytest.approx(-0.01)
    assert "pre-training helps at 1 of 2 sizes" in r.text.lower() and "50,000" in r.text
    assert "largest at 1,000 labels (+6.0 points) and smallest at 5,000 (-1.0)" in r.text
    assert "+6.0 points" in r.text and "-1.0 points" in r.text
    with pytest.raises(ValueError, match="no size has runs"):
        readouts.fine_tuning(_fine_tune_runs(), "vit_t", "mpp:missing")


def test_pretraining_readout_compares_the_last_epoch_with_the_best_guess():
    log = [dict(epoch=1, step=10, test_accuracy=0.2, wall_seconds=60.0), dict(epoch=2, step=20, test_accuracy=0.5,
                                                                             wall_seconds=120.0)]
    r = readouts.pretraining(log, {"neighbours' mean": 0.25, "most frequent": 0.05}, batch_size=8)
    assert (r.accuracy, r.first, r.images_seen, r.minutes) == (0.5, 0.2, 160, 2.0)
    assert "2.0x the best guess (neighbours' mean)" in r.text
    weak = readouts.pretraining(log, {"neighbours' mean": 0.6}, batch_size=8)
    assert "no better than the best guess" in weak.text


def test_inside_comparison_finds_each_models_most_local_head_and_refuses_mixed_grids():
    from test_recipes import _view

    views = {"a": _view(1, 3.0), "b": _view(1, 15.0)}  # a: a local head (3 px) in its lowest layer
    r = readouts.inside_comparison(views)
    assert r.lowest == {"a": 3.0, "b": 15.0}  # b: min(15, 19, 18) in its lowest layer; its layer 2 has 14
    assert r.most_local == {"a": (3.0, 1), "b": (14.0, 2)}
    assert "local heads (below 50% of uniform) in: a." in r.text
    other = dataclasses.replace(_view(1, 3.0), grid=(4, 4), patch_size=(8, 8))
    with pytest.raises(ValueError, match="one patch grid"):
        readouts.inside_comparison({"a": views["a"], "c": other})


def test_families_compares_seed_means_size_by_size_at_sizes_every_model_ran():
    from vitlab.records import RunRecord

    def run(model, family, size, seed, acc, init="", flops=1e8):
        return RunRecord(model=model, family=family, subset_size=size, seed=seed, epochs=5, test_accuracy=acc,
                         init=init, flops_per_image=flops)

    runs = [run("r", "resnet", 1000, 0, 0.45), run("r", "resnet", 5000, 0, 0.60),
            run("v", "vit", 1000, 0, 0.40), run("v", "vit", 1000, 1, 0.44), run("v", "vit", 5000, 0, 0.55),
            run("h", "hybrid", 1000, 0, 0.50, flops=3e8), run("h", "hybrid", 5000, 0, 0.58, flops=3e8),
            run("h", "hybrid", 25000, 0, 0.70, flops=3e8),  # 25,000: only the hybrid ran it
            run("v", "vit", 1000, 0, 0.99, init="mpp:enc")]  # fine-tuned: left out
    r = readouts.families(runs)
    assert list(r.models) == ["v", "h", "r"] and r.sizes == [1000, 5000]
    assert r.accuracy["v"][1000] == [0.40, 0.44]
    assert r.best == {1000: "h", 5000: "r"}
    assert r.gaps["v", "h"][1000] == pytest.approx(0.42 - 0.50)
    assert r.gaps["h", "r"][5000] == pytest.approx(-0.02)
    assert list(r.gaps) == [("v", "h"), ("v", "r"), ("h", "r")]
    assert "1,000 images: h 50.0% > r 45.0% > v 42.0% (2 seeds)" in r.text
    assert "h ahead of r at 1 of 2 sizes (+5.0 points at 1,000 images, -2.0 at 5,000)" in r.text
    assert "v 100 M, h 300 M, r 100 M" in r.text and r.flops_per_image["h"] == 3e8
    with pytest.raises(ValueError, match="at least two models"):
        readouts.families([x for x in runs if x.model == "v"])
    with pytest.raises(ValueError, match="no training-set size"):
        readouts.families([run("a", "vit", 1000, 0, 0.4), run("b", "resnet", 5000, 0, 0.5)])
