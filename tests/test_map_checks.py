"""Map checks (vitlab.analysis.map_checks): Spearman against a brute-force loop, the randomisation cascade's stages and
flags, mosaics and the Focus score on constructed maps."""
import pytest
import torch

from vitlab.analysis import map_checks as checks
from vitlab.models import build_model


def _brute_spearman(a: list[float], b: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1  # ties share the mean of positions i..j (1-based)
            i = j + 1
        return out
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def test_spearman_matches_a_brute_force_loop_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 3, 4), generator=gen).float()  # few values: many ties
    b = torch.randn(5, 3, 4, generator=gen)
    b[:, 0, :2] = 0.5
    got = checks.spearman(a, b)
    expected = [_brute_spearman(a[i].flatten().tolist(), b[i].flatten().tolist()) for i in range(5)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(checks.spearman(b, b), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(checks.spearman(b, -b), -torch.ones(5, dtype=torch.float64))
    const = torch.ones(2, 3, 4)
    assert checks.spearman(const, const).tolist() == [1.0, 1.0] and checks.spearman(const, b[:2]).tolist() == [0, 0]


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(11)  # not random_init's seed 0: the cascade must replace different weights
    return build_model({"zoo": "vit_micro_c10"}).eval()


def test_randomisation_stages_cover_the_model_top_down(micro):
    stages = checks.randomisation_stages(micro)
    assert [n for n, _ in stages] == ["head", "block 1", "block 0", "embedding"]
    keys = [k for _, ks in stages for k in ks]
    assert sorted(keys) == sorted(micro.state_dict()) and len(keys) == len(set(keys))
    assert "head.weight" in stages[0][1] and "cls_token" in stages[-1][1] and "pos_embed" in stages[-1][1]
    resnet = build_model({"zoo": "resnet_micro_c10"})
    assert [n for n, _ in checks.randomisation_stages(resnet)] == ["head", "layer4", "layer3", "layer2", "layer1",
                                                                   "stem"]


def test_sanity_flags_a_map_that_ignores_the_weights(micro):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in micro.state_dict().items()}
    result = checks.sanity_analysis(micro, images, ["random", "attention", "grad_rollout"])
    assert result.stages == ("head", "block 1", "block 0", "embedding") and result.images == 4
    assert result.spearman["random"].shape == (4, 4)
    torch.testing.assert_close(result.spearman["random"], torch.ones(4, 4, dtype=torch.float64))
    # the last block's attention does not read the head: a new head leaves it exactly as it was
    torch.testing.assert_close(result.spearman["attention"][0], torch.ones(4, dtype=torch.float64))
    assert result.flagged == ("random",)
    assert float(result.spearman["grad_rollout"][-1].mean()) < checks.FLAG_SPEARMAN
    low, high = result.low["grad_rollout"], result.high["grad_rollout"]
    mean = result.spearman["grad_rollout"].mean(1)
    assert low.shape == (4,) and bool((low <= mean + 1e-12).all() and (mean <= high + 1e-12).all())
    assert all(torch.equal(v, before[k]) for k, v in micro.state_dict().items())  # only copies were re-initialised


def test_mosaics_hold_four_images_of_four_classes():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(12) % 6
    mosaics, targets, quadrants = checks.make_mosaics(images, labels, 5, seed=1)
    assert mosaics.shape == (5, 3, 64, 64) and mosaics.dtype == torch.uint8
    for mosaic, target, quadrant in zip(mosaics, targets, quadrants):
        tiles = [mosaic[:, r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] for r in range(2) for c in range(2)]
        found = [[i for i in range(12) if torch.equal(images[i], t)] for t in tiles]
        assert all(len(f) == 1 for f in found)  # each quadrant is one of the images, untouched
        classes = [int(labels[f[0]]) for f in found]
        assert len(set(classes)) == 4 and classes[int(quadrant)] == int(target)
    small, _, _ = checks.make_mosaics(images, labels, 5, seed=1, size=32)
    assert small.shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 4 different classes"):
        checks.make_mosaics(images, labels % 3, 2)


def test_focus_of_constructed_maps():
    quadrants = torch.tensor([0, 1, 2, 3])
    on_target = torch.zeros(4, 4, 4)
    for i, q in enumerate(quadrants.tolist()):
        r, c = divmod(q, 2)
        on_target[i, r * 2 : r * 2 + 2, c * 2 : c * 2 + 2] = torch.rand(2, 2) + 0.1
    on_target[:, 0, 0] -= 5 * (quadrants != 0)  # negative evidence elsewhere does not count
    torch.testing.assert_close(checks.focus_scores(on_target, quadrants), torch.ones(4, dtype=torch.float64))
    uniform = torch.ones(4, 4, 4)
    torch.testing.assert_close(checks.focus_scores(uniform, quadrants), torch.full((4,), 0.25, dtype=torch.float64))
    half = torch.zeros(1, 4, 4)
    half[0, :2, :] = 1.0  # quadrants 0 and 1 hold the mass equally
    assert checks.focus_scores(half, torch.tensor([1])).tolist() == [0.5]


def test_focus_analysis_on_a_tiny_vit(micro):
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(8) % 4
    result = checks.focus_analysis(micro, images, labels, ["random", "attention"], count=6)
    assert result.mosaics.shape == (6, 3, 32, 32)  # resized to the model's input
    assert result.focus["random"].shape == (6,) and bool(((result.focus["attention"] >= 0)
                                                          & (result.focus["attention"] <= 1)).all())
    assert result.low["random"] <= result.mean["random"] <= result.high["random"]
    predicted = micro(__import__("vitlab").preprocess(micro, result.mosaics)).argmax(-1)
    assert result.accuracy == pytest.approx(float((predicted == result.targets).double().mean()))
