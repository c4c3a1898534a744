"""Training objectives: each one's loss and hits against a direct computation, its checks, state and accuracy; mixing."""
import pytest
import timm
import torch
import torch.nn.functional as F

from vitlab import models
from vitlab.training import mpp, objectives
from vitlab.training.config import ConfigError, TrainConfig
from vitlab.training.objectives import Classification, MaskedPatches, objective_for


def test_the_config_chooses_the_objective():
    assert type(objective_for(TrainConfig())) is Classification
    assert type(objective_for(TrainConfig(objective="mpp", label_smoothing=0.0))) is MaskedPatches
    assert (Classification.uses_labels, MaskedPatches.uses_labels) == (True, False)


def test_classification_loss_is_smoothed_cross_entropy_and_counts_top1_hits():
    objective = objective_for(TrainConfig(label_smoothing=0.1))
    logits = torch.randn(6, 10)
    labels = torch.tensor([0, 3, 3, 9, 1, 2])
    loss, hits, scored = objective.loss(lambda x: logits, torch.zeros(6, 3, 32, 32), labels)
    log_p = logits.log_softmax(-1)
    expected = -(0.9 * log_p[torch.arange(6), labels] + 0.1 * log_p.mean(-1)).mean()  # smoothing spelled out
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (hits.item(), scored) == (sum(int(logits[i].argmax() == labels[i]) for i in range(6)), 6)
    soft = torch.softmax(torch.randn(6, 10), -1)  # mixed targets: cross-entropy against them, hits on the dominant label
    loss, hits, _ = objective.loss(lambda x: logits, torch.zeros(6, 3, 32, 32), soft)
    assert loss.item() == pytest.approx(-(soft * log_p).sum(-1).mean().item(), rel=1e-6)
    assert hits.item() == sum(int(logits[i].argmax() == soft[i].argmax()) for i in range(6))
    assert objective.accuracy_of() == {} and objective.remark == ""
    mixed = objective_for(TrainConfig(cutmix=1.0))
    assert mixed.accuracy_of() == {"train_accuracy_of": "dominant label"} and "dominant label" in mixed.remark


def test_masked_patches_score_the_corrupted_patches_only():
    config = TrainConfig(model="vit_micro_c10", objective="mpp", label_smoothing=0.0)
    objective = objective_for(config)
    torch.manual_seed(0)
    trained = objective.prepare(models.build_model({"zoo": "vit_micro_c10"}))
    assert objective.encoder(trained) is trained.encoder
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x, y = objective.inputs(trained, images, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(1), 0)
    targets, kind, source = y.unbind(-1)  # (4, 16) each: colour class, corruption kind, source patch
    assert torch.equal(targets, mpp.colour_targets(images, 8))
    assert ((kind != mpp.KEPT).sum(1) == 8).all()  # half of a micro ViT's 16 patches
    loss, hits, scored = objective.loss(trained, x, y)
    logits = trained(x, mpp.Corruption(kind=kind, source=source))  # (4, 16, 512)
    terms = [(-logits[n, p].log_softmax(-1)[targets[n, p]], logits[n, p].argmax() == targets[n, p])
             for n in range(4) for p in range(16) if kind[n, p] != mpp.KEPT]
    assert loss.item() == pytest.approx(torch.stack([t for t, _ in terms]).mean().item(), rel=1e-5)
    assert (hits.item(), scored) == (sum(int(h) for _, h in terms), 4 * 8)
    assert objective.accuracy_of() == {"accuracy_of": objectives.MPP_ACCURACY}
    assert set(objective.extra_state(trained)) == {"mpp.mask_token", "mpp.colour_head.weight", "mpp.colour_head.bias"}


def test_masked_patches_check_their_architecture_and_settings():
    with pytest.raises(ConfigError, match="pre-trains a ViT, and resnet_micro_c10 is a resnet"):
        objective_for(TrainConfig(model="resnet_micro_c10", objective="mpp", label_smoothing=0.0)).check()
    objective_for(TrainConfig(model="vit_micro_c10", objective="mpp", label_smoothing=0.0)).check()
    broken = {name for name, _, ok, _ in objective_for(TrainConfig(objective="mpp", cutmix=1.0, img_size=64)).rules()
              if not ok}
    assert broken == {"label_smoothing", "img_size", "cutmix"}
    assert objective_for(TrainConfig(cutmix=1.0, img_size=64)).rules() == []  # classification restricts nothing more


# --- mixing: timm's mixup and CutMix ------------------------------------------------------


def _smoothed(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """(1 - s) one-hot + s / classes, written out element by element."""
    out = torch.empty(len(labels), classes)
    for i, label in enumerate(labels.tolist()):
        for k in range(classes):
            out[i, k] = smoothing / classes + (1 - smoothing) * (k == label)
    return out


def test_cutmix_targets_are_the_pasted_pixel_fractions_and_sum_to_one():
    config = TrainConfig(cutmix=1.0, label_smoothing=0.1)
    mixup = objectives.mixer(config, num_classes=10)
    b = 8
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, 16, 16).clone()  # image i is all i
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    smooth = _smoothed(y, 10, 0.1)
    boxes = 0
    for step in range(20):
        mixed, target = objectives.mix(mixup, x.clone(), y, seed=0, step=step)
        assert target.shape == (b, 10)
        torch.testing.assert_close(target.sum(-1), torch.ones(b))
        for i in range(b):
            own = (mixed[i] == i).float().mean().item()  # fraction of image i still its own
            pasted = (mixed[i] == b - 1 - i).float().mean().item()  # CutMix pastes from the mirror image
            assert own + pasted == pytest.approx(1.0)
            torch.testing.assert_close(target[i], own * smooth[i] + pasted * smooth[b - 1 - i])
        boxes += pasted > 0
    assert boxes >= 15  # alpha 1 draws a box almost every time


def test_mixup_targets_follow_the_pixel_weights():
    mixup = objectives.mixer(TrainConfig(mixup=0.8, label_smoothing=0.0), num_classes=10)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([3, 1, 4, 1])
    mixed, target = objectives.mix(mixup, x.clone(), y, seed=1, step=5)
    lam = target[0, 3].item() if y[0] != y[-1] else None  # the weight of image 0's own label
    assert lam is not None
    torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[-1])
    torch.testing.assert_close(target.sum(-1), torch.ones(4))


def test_a_batch_with_mix_probability_zero_is_unchanged_and_matches_plain_smoothed_loss():
    config = TrainConfig(mixup=0.8, cutmix=1.0, mix_prob=0.0, label_smoothing=0.1)
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 9])
    for step in range(10):
        mixed, target = objectives.mix(objectives.mixer(config, 10), x.clone(), y, seed=0, step=step)
        assert torch.equal(mixed, x)
        torch.testing.assert_close(target, _smoothed(y, 10, 0.1))
    logits = torch.randn(6, 10)
    soft = timm.loss.SoftTargetCrossEntropy()(logits, target)
    torch.testing.assert_close(soft, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_mixing_is_a_function_of_seed_and_step_and_leaves_numpy_alone():
    import numpy as np

    mixup = objectives.mixer(TrainConfig(mixup=0.8, cutmix=1.0), 10)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = objectives.mix(mixup, x.clone(), y, seed=0, step=7)
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.rand(10)  # whatever the caller's stream did in between
    b = objectives.mix(mixup, x.clone(), y, seed=0, step=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    draws = {tuple(objectives.mix(mixup, x.clone(), y, seed=0, step=s)[1][0].tolist()) for s in range(8)}
    assert len(draws) > 4  # other steps draw other mixes


def test_mixing_flags_are_timms_and_off_by_default():
    from vitlab.__main__ import build_parser

    args = build_parser().parse_args(["train", "--mixup", "0.8", "--cutmix", "1.0", "--mix-prob", "0.5",
                                      "--mix-switch-prob", "0.3"])
    assert (args.mixup, args.cutmix, args.mix_prob, args.mix_switch_prob) == (0.8, 1.0, 0.5, 0.3)
    config = TrainConfig()
    assert not objectives.mixing(config) and objectives.mixer(config, 10) is None
    mixup = objectives.mixer(TrainConfig(mixup=0.8, cutmix=1.0, mix_prob=0.5, mix_switch_prob=0.3), 10)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob, mixup.mode) == (
        0.8, 1.0, 0.5, 0.3, "batch")
