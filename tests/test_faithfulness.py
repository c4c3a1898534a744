"""Deletion, insertion and Chefer perturbation (vitlab.analysis.faithfulness) against independent computations:
attention masks for token dropping, hand-made images for mean fill and blur, a loop over steps for the curves,
a model whose answer is known for the scores, and Quantus's RegionPerturbation."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from vitlab.analysis import faithfulness as F
from vitlab.models import preprocess


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _keep(n: int, rows: int, cols: int, kept: int, seed: int = 0) -> torch.Tensor:
    """(n, rows, cols) bool with ``kept`` random cells True in each image."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(rows * cols, generator=gen) for _ in range(n)])
    return (order < kept).reshape(n, rows, cols)


def _normalise(model, pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] (N, 3, H, W) normalised by the model's data config, by hand."""
    cfg = model.pretrained_cfg
    return (pixels - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)


def _fill(pixels: torch.Tensor, canvas: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``pixels`` with each cell where ``keep`` is False taken from ``canvas``, one cell at a time."""
    out = pixels.clone()
    n, rows, cols = keep.shape
    ch, cw = pixels.shape[2] // rows, pixels.shape[3] // cols
    for i in range(n):
        for r in range(rows):
            for c in range(cols):
                if not keep[i, r, c]:
                    out[i, :, r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = canvas[i, :, r * ch:(r + 1) * ch,
                                                                                 c * cw:(c + 1) * cw]
    return out


def _hand_input(model, images, keep, removal):
    """The model's input with the removed cells mean-filled (the data mean as pixels) or blurred, built by hand."""
    pixels = images.float() / 255
    if removal == "mean":
        canvas = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1).expand_as(pixels)
    else:
        canvas = gaussian_blur(pixels, [13, 13], [2.0, 2.0])
    return _normalise(model, _fill(pixels, canvas, keep))


def test_drop_equals_masking_attention_to_the_dropped_keys(tiny_vit):
    for block in tiny_vit.blocks:
        block.attn.fused_attn = False
    images, keep = _images(3), _keep(3, 4, 4, kept=7)
    got = F.removed(tiny_vit, images, keep, "drop")
    x = preprocess(tiny_vit, images)
    visible = torch.cat([torch.ones(3, tiny_vit.num_prefix_tokens, dtype=torch.bool), keep.reshape(3, -1)], 1)
    mask = visible[:, None, None, :].expand(-1, 1, visible.shape[1], -1)  # (B, 1, queries, keys): no query sees them
    with torch.no_grad():
        expected = tiny_vit.forward_head(tiny_vit.forward_features(x, attn_mask=mask))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert (got - tiny_vit(x)).abs().max() > 1e-3  # dropping changed the answer
    assert not tiny_vit.patch_drop._forward_hooks and all(not b.attn.fused_attn for b in tiny_vit.blocks)


def test_the_hook_goes_also_when_the_model_fails(tiny_vit):
    def fail(*_):
        raise RuntimeError("boom")
    handle = tiny_vit.blocks[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        F.faithfulness_analysis(tiny_vit, _images(2), {"a": torch.rand(2, 4, 4)}, progress=False)
    handle.remove()
    assert not tiny_vit.patch_drop._forward_hooks and not tiny_vit.training


@pytest.mark.parametrize("removal", ["mean", "blur"])
def test_mean_and_blur_match_hand_made_images(tiny_vit, removal):
    images, keep = _images(3), _keep(3, 4, 4, kept=5)
    keep[0] = True  # one image untouched, one fully removed
    keep[1] = False
    with torch.no_grad():
        expected = tiny_vit(_hand_input(tiny_vit, images, keep, removal))
    torch.testing.assert_close(F.removed(tiny_vit, images, keep, removal), expected, atol=1e-4, rtol=0)


def _brute_curves(model, images, maps, targets, labels, removal, steps):
    """Deletion and insertion by a loop over steps: each masked input built anew and run alone."""
    n, rows, cols = maps.shape
    cells = rows * cols
    out = {curve: {m: torch.zeros(n, steps + 1) for m in F.MEASURES} for curve in ("deletion", "insertion")}
    for i in range(n):
        values = maps[i].flatten().tolist()
        order = sorted(range(cells), key=lambda j: (-values[j], j))  # most relevant first, ties by index
        for curve in out:
            for k in range(steps + 1):
                top = set(order[:k * cells // steps])
                keep = torch.tensor([(j not in top) if curve == "deletion" else (j in top) for j in range(cells)])
                keep = keep.reshape(1, rows, cols)
                if removal == "drop":
                    logits = F.removed(model, images[i:i + 1], keep, "drop")
                else:
                    with torch.no_grad():
                        logits = model(_hand_input(model, images[i:i + 1], keep, removal))
                out[curve]["probability"][i, k] = logits.softmax(-1)[0, targets[i]]
                out[curve]["accuracy"][i, k] = float(logits.argmax(-1)[0] == labels[i])
    return out["deletion"], out["insertion"]


@pytest.mark.parametrize("removal", F.REMOVALS)
def test_curves_match_a_loop_over_steps(tiny_vit, removal):
    images = _images(3, seed=1)
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    maps[0, 0, :2] = maps[0, 1, :2] = 0.5  # ties: broken by cell index
    targets, labels = torch.tensor([0, 3, 4]), torch.tensor([0, 1, 4])
    got = F.curves(tiny_vit, images, maps, targets, labels, removal, steps=4, batch_size=5)
    expected = _brute_curves(tiny_vit, images, maps, targets, labels, removal, steps=4)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g["probability"], e["probability"], atol=1e-5, rtol=0)
        torch.testing.assert_close(g["accuracy"], e["accuracy"])


KNOWN = [(2, 5), (3, 1), (6, 6), (7, 0)]  # the cells of the 8x8 grid the constructed model reads


class Known(nn.Module):
    """Class 1's logit is 5 x (mean normalised pixel of the KNOWN cells - 1), class 0's is 0: the answer depends on
    those cells only."""
    pretrained_cfg = dict(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          interpolation="bilinear")
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, x):
        s = torch.stack([x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].mean((1, 2, 3)) for r, c in KNOWN]).mean(0)
        return torch.stack([torch.zeros_like(s), self.scale * (s - 1)], 1)


@pytest.fixture(scope="module")
def known():
    """The constructed model, 24 images whose KNOWN cells are white on a dark ground, the true and a random map."""
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 100, (24, 3, 32, 32), dtype=torch.uint8, generator=gen)
    true = torch.zeros(24, 8, 8)
    for r, c in KNOWN:
        images[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 255
        true[:, r, c] = 1
    maps = {"true": true, "random": torch.rand(24, 8, 8, generator=gen)}
    labels = torch.ones(24, dtype=torch.long)
    result = F.faithfulness_analysis(Known(), images, maps, labels=labels, removals=("mean", "blur"), progress=False)
    return result


@pytest.mark.parametrize("removal", ["mean", "blur"])
def test_the_true_map_wins_and_a_random_map_scores_the_floor(known, removal):
    auc = {(curve, m): known.auc[curve, "probability", m, removal].mean
           for curve in ("deletion", "insertion") for m in known.methods}
    assert known.ranking[removal] == ("true", "random")
    # The true map removes all four cells in the first step: deletion falls at once, insertion rises at once.
    assert auc["deletion", "true"] < 0.1 and auc["insertion", "true"] > 0.85
    # A random order meets the four cells evenly: deletion and insertion cross near the middle (the floor: no gap).
    assert abs(auc["insertion", "random"] - auc["deletion", "random"]) < 0.15
    assert auc["deletion", "random"] > auc["deletion", "true"] + 0.25
    assert auc["insertion", "random"] < auc["insertion", "true"] - 0.25
    fractions = known.fractions.double()
    for curve, table in (("deletion", known.deletion), ("insertion", known.insertion)):
        values = table["true", removal]["probability"].double()
        assert known.auc[curve, "probability", "true", removal].mean == pytest.approx(
            float(np.mean([np.trapezoid(v, fractions) for v in values.numpy()])))


def test_chefer_positive_and_negative_on_the_known_model(known):
    # 10% of 64 cells (6) removed most relevant first takes all four known cells: accuracy 0 at every point;
    # least relevant first never reaches them (90% = 57 cells): accuracy 1 over 10%..90%, an area of 0.8.
    assert known.chefer["positive", "true"].mean == 0
    assert known.chefer["negative", "true"].mean == pytest.approx(0.8)
    assert 0.1 < known.chefer["positive", "random"].mean < 0.7
    assert known.chefer["negative", "random"].mean < 0.7
    low, high = known.chefer["positive", "random"].low, known.chefer["positive", "random"].high
    assert low < known.chefer["positive", "random"].mean < high


def test_mean_fill_deletion_matches_quantus_region_perturbation(tiny_vit):
    quantus = pytest.importorskip("quantus")
    images = _images(4, seed=3)
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(3))  # no ties: Quantus's argsort is unstable
    deletion, _ = F.curves(tiny_vit, images, maps, removal="mean", steps=16)
    x = preprocess(tiny_vit, images)
    with torch.no_grad():
        targets = tiny_vit(x).argmax(-1)
    pixels = maps.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None]  # (N, 1, 32, 32): one value per cell
    metric = quantus.RegionPerturbation(patch_size=8, order="morf", regions_evaluation=16, normalise=False, abs=False,
                                        perturb_baseline=0.0, disable_warnings=True)  # 0 = the mean once normalised
    drops = np.asarray(metric(model=tiny_vit, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=pixels.numpy(),
                              channel_first=True, softmax=True, device="cpu"))  # (N, 16): p(x) - p(x perturbed)
    expected = deletion["probability"][:, :1] - deletion["probability"][:, 1:]
    np.testing.assert_allclose(drops, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("removals", [("drop", "mean", "blur"), ("blur",)])
def test_forwards_per_image_counts_the_model_s_inputs(tiny_vit, removals):
    seen = []
    handle = tiny_vit.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    maps = {m: torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(i)) for i, m in enumerate("abc")}
    result = F.faithfulness_analysis(tiny_vit, _images(3), maps, removals=removals, steps=8, batch_size=4,
                                     progress=False)
    handle.remove()
    assert sum(seen) == 3 * F.forwards_per_image(3, removals, 8, 16)
    assert max(seen) <= 4 and set(result.chefer) == {(s, m) for s in ("positive", "negative") for m in "abc"}


def test_methods_that_agree_share_their_forward_passes(tiny_vit):
    seen = []
    handle = tiny_vit.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    same = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5))
    result = F.faithfulness_analysis(tiny_vit, _images(3), {"a": same, "b": same.clone()}, steps=4, progress=False)
    handle.remove()
    assert sum(seen) == 3 * F.forwards_per_image(1, F.REMOVALS, 4, 16)  # as if there were one method
    for table in (result.deletion, result.insertion):
        for removal in F.REMOVALS:
            torch.testing.assert_close(table["a", removal], table["b", removal])


def test_the_benchmark_prints_its_projection(tmp_path, monkeypatch, capsys):
    import re

    from conftest import benchmark_script
    from vitlab import models

    torch.manual_seed(0)
    path = models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp_path / "micro.safetensors")
    monkeypatch.setattr("sys.argv", ["faithfulness.py", "--model", str(path), "--images", "2"])
    with benchmark_script("faithfulness.py") as bench:
        bench.main()
    out = capsys.readouterr().out
    per_image = F.forwards_per_image(9, F.REMOVALS, 16, 16)
    assert re.search(rf"scoreboard with Chefer's protocol: {per_image} forwards per image, [\d.]+ s, [\d.]+ images/s "
                     r".*projected for 500 images: \d+ s \(target under 600 s\)", out), out
    assert re.search(r"process CPU time [\d.]+ s .*CPU seconds for 500 images", out), out


@pytest.mark.parametrize("removal", F.REMOVALS)
def test_deleting_in_reverse_order_is_inserting_backwards(tiny_vit, removal):
    # Deleting k/steps of the cells least relevant first keeps the (steps - k)/steps most relevant: insertion's
    # step steps - k. Chefer's positive perturbation of the reversed map is likewise its negative one.
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(6))  # no ties
    result = F.faithfulness_analysis(tiny_vit, _images(3), {"map": maps, "reversed": -maps}, removals=(removal,),
                                     progress=False)
    for measure in F.MEASURES:
        torch.testing.assert_close(result.deletion["reversed", removal][measure],
                                   result.insertion["map", removal][measure].flip(1))
    assert result.chefer["positive", "reversed"] == result.chefer["negative", "map"]
