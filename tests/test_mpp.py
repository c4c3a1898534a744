"""Masked patch prediction (the ViT paper's self-supervised objective): corruption, colour targets, loss."""
import math
import pickle
import re

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import vitlab
from vitlab import data
from vitlab.training import mpp
from vitlab.training import loop, objectives, run_folder
from vitlab.training.config import TrainConfig
from vitlab.models import build_model, preprocess


def test_colour_targets_match_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 12, 8), generator=g, dtype=torch.uint8)
    got = mpp.colour_targets(images, patch_size=4)  # a 3x2 grid of patches
    for n in range(3):
        for row in range(3):
            for col in range(2):
                levels = []
                for c in range(3):
                    total = 0
                    for y in range(4 * row, 4 * row + 4):
                        for x in range(4 * col, 4 * col + 4):
                            total += int(images[n, c, y, x])
                    levels.append(min(7, int(total / 16 * 8 // 256)))
                assert got[n, row * 2 + col] == levels[0] * 64 + levels[1] * 8 + levels[2]


def test_colour_targets_of_known_patches():
    image = torch.zeros(1, 3, 4, 12, dtype=torch.uint8)  # three 4x4 patches in a row
    image[0, 0, :, 0:4] = 255  # pure red: r level 7
    image[0, :, :, 4:8] = 255  # white: every level 7
    image[0, 1, :, 8:12] = 31  # g mean 31: level 0 (31 * 8 / 256 = 0.97)
    image[0, 2, :, 8:12] = 32  # b mean 32: level 1
    assert mpp.colour_targets(image, 4).tolist() == [[7 * 64, 511, 1]]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        mpp.colour_targets(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), 4)


def test_corruption_proportions_over_many_draws():
    batch, patches = 400, 64
    c = mpp.draw_corruption(batch, patches, torch.Generator().manual_seed(1))
    assert (c.corrupted.sum(1) == patches // 2).all()  # exactly half of every image
    corrupted = batch * patches // 2
    for kind, share in ((mpp.MASKED, 0.8), (mpp.SWAPPED, 0.1), (mpp.UNCHANGED, 0.1)):
        count = int((c.kind == kind).sum())
        sd = math.sqrt(corrupted * share * (1 - share))
        assert abs(count - corrupted * share) < 5 * sd, (kind, count)
    # Every patch is corrupted about equally often: no position is favoured.
    per_position = c.corrupted.float().mean(0)
    assert (per_position - 0.5).abs().max() < 5 * math.sqrt(0.25 / batch)
    # A swapped patch takes another patch of its image, drawn uniformly over the others.
    own = torch.arange(patches).expand(batch, patches)
    swapped = c.kind == mpp.SWAPPED
    assert (c.source[swapped] != own[swapped]).all() and (c.source[~swapped] == own[~swapped]).all()
    offsets = (c.source[swapped] - own[swapped]) % patches  # 1..patches-1, uniform
    assert offsets.min() >= 1 and torch.bincount(offsets, minlength=patches)[1:].min() > 0


def test_corrupt_replaces_what_the_draw_says_and_nothing_else():
    tokens = torch.randn(8, 16, 5)
    mask = torch.randn(5)
    c = mpp.draw_corruption(8, 16, torch.Generator().manual_seed(2))
    out = mpp.corrupt(tokens, c, mask)
    for n in range(8):
        for p in range(16):
            kind = int(c.kind[n, p])
            expected = {mpp.KEPT: tokens[n, p], mpp.UNCHANGED: tokens[n, p], mpp.MASKED: mask,
                        mpp.SWAPPED: tokens[n, int(c.source[n, p])]}[kind]
            assert torch.equal(out[n, p], expected)


def test_loss_is_the_cross_entropy_over_corrupted_patches_only():
    torch.manual_seed(0)
    encoder = build_model({"zoo": "vit_micro_c10"})
    model = mpp.MaskedPatchPrediction(encoder)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    loss, correct, count = model.loss(images, torch.Generator().manual_seed(3))
    # The same draw, recomputed by hand.
    targets = mpp.colour_targets(images, 8)  # vit_micro_c10: 8-pixel patches, a 4x4 grid
    c = mpp.draw_corruption(4, 16, torch.Generator().manual_seed(3))
    logits = model(preprocess(encoder, images, resize=False), c)
    assert logits.shape == (4, 16, mpp.COLOURS)
    expected = F.cross_entropy(logits[c.corrupted], targets[c.corrupted])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert count.item() == 4 * 8 and correct.item() == (logits[c.corrupted].argmax(-1) == targets[c.corrupted]).sum()
    loss.backward()  # the mask embedding is learned
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_encoder_keys_stay_those_of_a_plain_vit():
    encoder = build_model({"zoo": "vit_micro_c10"})
    model = mpp.MaskedPatchPrediction(encoder)
    keys = set(model.state_dict())
    assert {k.removeprefix("encoder.") for k in keys if k.startswith("encoder.")} == set(encoder.state_dict())
    assert keys - {f"encoder.{k}" for k in encoder.state_dict()} == {"mask_token", "colour_head.weight",
                                                                      "colour_head.bias"}
    with pytest.raises(TypeError, match="VisionTransformer"):
        mpp.MaskedPatchPrediction(build_model({"zoo": "resnet_micro_c10"}))


STEPS = 150  # one colour per image: accuracy 1.0 at 150 steps (seed 0), where the test asks 0.9


def test_masked_colours_are_learned_from_the_other_patches():
    """Images of one colour: a masked patch's colour is readable only from the uncorrupted others."""
    torch.manual_seed(0)
    model = mpp.MaskedPatchPrediction(build_model({"zoo": "vit_micro_c10"}))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)

    def batch(n=64):
        colours = torch.randint(0, 2, (n, 3, 1, 1), generator=g) * 224 + 16  # channels 16 or 240: 8 colours
        return colours.expand(n, 3, 32, 32).to(torch.uint8)

    for _ in range(STEPS):
        loss, _, _ = model.loss(batch(), g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        images = batch(256)
        c = mpp.draw_corruption(256, 16, g)
        logits = model(preprocess(model.encoder, images, resize=False), c)
        masked = c.kind == mpp.MASKED
        accuracy = (logits[masked].argmax(-1) == mpp.colour_targets(images, 8)[masked]).float().mean()
    assert accuracy > 0.9  # knowing only which 8 colours occur gives 1/8


# --- pre-training over the trainer, its files and fine-tuning from them ---------------------

PRETRAIN = dict(model="vit_micro_c10", objective="mpp", label_smoothing=0.0, epochs=2, batch_size=64, eval_size=50)


def _relabel(root, shift):
    """Rewrite a fake CIFAR-10's labels (images untouched), as another labelling of the same images."""
    for path in (root / "cifar-10-batches-py").iterdir():
        with open(path, "rb") as f:
            batch = pickle.load(f)
        batch["labels"] = [(y + shift) % 10 for y in batch["labels"]]
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_pretraining_reads_no_labels_and_saves_the_encoder_as_a_plain_vit(tmp_path, fake_cifar, monkeypatch):
    result = loop.train(TrainConfig(**PRETRAIN), tmp_path / "a", progress=False)
    images, labels = data.cifar10("test")
    scored = images[data.stratified_subset(labels, 50, 0)]  # the test images the run was scored on
    # Same images, other labels: a run that read no label ends with exactly the same weights.
    _relabel(fake_cifar, shift=3)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "other-cache"))
    loop.train(TrainConfig(**PRETRAIN), tmp_path / "b", progress=False)
    a, b = (safetensors.torch.load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The file: the plain ViT's keys, and the objective's under mpp.*
    encoder = vitlab.load_model(tmp_path / "a" / "model.safetensors", device="cpu")
    assert type(encoder).__name__ == "VisionTransformer"
    assert set(a) - set(encoder.state_dict()) == {"mpp.mask_token", "mpp.colour_head.weight", "mpp.colour_head.bias"}
    assert all(torch.equal(encoder.state_dict()[k], a[k]) for k in encoder.state_dict())
    assert all(torch.equal(v, result.model.state_dict()[f"encoder.{k}"]) for k, v in encoder.state_dict().items())
    # The colour head comes back with it, and scores what the run logged on the same test images.
    reloaded = mpp.load_pretrainer(tmp_path / "a" / "model.safetensors", device="cpu")
    assert torch.equal(reloaded.colour_head.weight, result.model.colour_head.weight)
    logged = run_folder.read_metrics(tmp_path / "a")
    assert [r["epoch"] for r in logged] == [1, 2]
    assert mpp.masked_accuracy(reloaded, scored) == logged[-1]["test_accuracy"]
    assert result.record["accuracy_of"] == objectives.MPP_ACCURACY
    # A finished pre-training run is given back as such, not retrained.
    again = loop.train(TrainConfig(**PRETRAIN), tmp_path / "a", progress=False)
    assert isinstance(again.model, mpp.MaskedPatchPrediction)
    with pytest.raises(ValueError, match="no masked-patch-prediction parameters"):
        loop.train(TrainConfig(**dict(PRETRAIN, objective="classify", label_smoothing=0.1)),
                    tmp_path / "c", progress=False)
        mpp.load_pretrainer(tmp_path / "c" / "model.safetensors")


def test_fine_tuning_a_pretrained_encoder_keeps_it_and_starts_a_new_head(tmp_path, fake_cifar):
    loop.train(TrainConfig(**PRETRAIN), tmp_path / "pre", progress=False)
    source = tmp_path / "pre" / "model.safetensors"
    assert objectives.init_objective(str(source)) == "mpp" and objectives.init_objective(None) == ""
    tuned = loop.train(TrainConfig(model="vit_micro_c10", init=str(source), epochs=1, batch_size=64, lr=0.0,
                                          eval_size=50), tmp_path / "tuned", progress=False).model
    pre = safetensors.torch.load_file(source)
    body = {k: v for k, v in tuned.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(v, pre[k]) for k, v in body.items())  # lr 0: the encoder as pre-trained
    assert not torch.equal(tuned.head.weight, pre["head.weight"])  # a new head, not the untrained one saved
    assert objectives.init_objective(str(tmp_path / "tuned" / "model.safetensors")) == "classify"


@pytest.mark.parametrize("argv, error", [
    (["pretrain", "--objective", "classify"], "--objective must be mpp"),
    (["pretrain", "--model", "resnet_micro_c10"], "pre-trains a ViT, and resnet_micro_c10 is a resnet"),
    (["pretrain", "--img-size", "64"], "--img-size 64: must be none with --objective mpp"),
    (["train", "--objective", "mpp", "--label-smoothing", "0", "--mixup", "0.8"], "--mixup 0.8: must be 0 with"),
    (["train", "--objective", "mpp", "--label-smoothing", "0", "--cutmix", "1.0"], "--cutmix 1.0: must be 0 with"),
    (["train", "--objective", "mpp"], "--label-smoothing 0.1: must be 0 with --objective mpp"),
])
def test_pretraining_settings_are_refused_in_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys,
                                                                               argv, error):
    from vitlab.__main__ import main

    monkeypatch.setattr(data, "cifar10", lambda split: pytest.fail("read data before checking the flags"))
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "run")])
    message = str(exit_.value.code)
    assert re.search(error, message) and "\n" not in message, message
    assert not (tmp_path / "run").exists()


def test_pretrain_has_no_label_flags_and_its_own_default_folder(tmp_path, monkeypatch, capsys):
    from vitlab.__main__ import LABEL_FLAGS, build_parser

    args = build_parser().parse_args(["pretrain"])
    assert args.objective == "mpp" and all(getattr(args, f) in (0, 0.0, 1.0, 0.5) for f in LABEL_FLAGS)
    assert args.label_smoothing == 0 and args.mixup == 0 and args.cutmix == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--label-smoothing", "0.1"])
    assert "unrecognized arguments: --label-smoothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--help"])
    assert "masked patch prediction (default: mpp)" in " ".join(capsys.readouterr().out.split())


def test_baselines_guess_on_the_patches_masked_accuracy_scores():
    g = torch.Generator().manual_seed(5)
    # Half the images one flat colour (every guess from visible patches is right), half noise.
    flat = (torch.randint(0, 8, (6, 3, 1, 1), generator=g) * 32 + 16).expand(6, 3, 32, 32)
    noise = torch.randint(0, 256, (6, 3, 32, 32), generator=g)
    images = torch.cat([flat, noise]).to(torch.uint8)
    got = mpp.baselines(images, patch_size=8, seed=0, batch_size=5)
    # By hand, with the same draws: one generator seeded 0, batches of 5 images, a 4x4 grid of patches.
    generator, hits, colours = torch.Generator().manual_seed(0), {"neighbours' mean": 0, "image mean": 0}, []

    def colour(mean):
        level = [min(7, int(m * 8 // 256)) for m in mean]
        return level[0] * 64 + level[1] * 8 + level[2]

    for i in range(0, 12, 5):
        chunk = images[i : i + 5]
        targets, c = mpp.draw_batch(chunk, 8, generator, "cpu")
        for n in range(len(chunk)):
            patch_mean = {p: [float(chunk[n, ch, 8 * (p // 4):8 * (p // 4) + 8, 8 * (p % 4):8 * (p % 4) + 8].float().mean())
                              for ch in range(3)] for p in range(16)}
            kept = [p for p in range(16) if c.kind[n, p] == mpp.KEPT]
            image_mean = [sum(patch_mean[p][ch] for p in kept) / len(kept) for ch in range(3)]
            for p in range(16):
                if not c.corrupted[n, p]:
                    continue
                row, col = divmod(p, 4)
                around = [q for q in (p - 4, p + 4, p - 1 if col else -1, p + 1 if col < 3 else -1)
                          if 0 <= q < 16 and q in kept]
                near = [sum(patch_mean[q][ch] for q in around) / len(around) for ch in range(3)] if around else image_mean
                hits["neighbours' mean"] += int(targets[n, p]) == colour(near)
                hits["image mean"] += int(targets[n, p]) == colour(image_mean)
                colours.append(int(targets[n, p]))
    for name, count in hits.items():
        assert got[name] == pytest.approx(count / len(colours)), name
    assert got["most frequent"] == pytest.approx(max(colours.count(k) for k in set(colours)) / len(colours))
    assert got["image mean"] >= 0.5 and got["neighbours' mean"] >= 0.5  # every patch of a flat image is its colour
