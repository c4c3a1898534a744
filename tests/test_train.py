import json
import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab import __main__ as cli
from vitlab import data, train
from conftest import needs_cifar


def test_augment_is_a_padded_crop_then_flip():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = train.augment(images, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for b in range(len(images)):  # some crop offset (and maybe a flip) must reproduce each output
        candidates = [
            crop.flip(-1) if flip else crop
            for dy in range(5) for dx in range(5) for flip in (False, True)
            for crop in [padded[b, :, dy:dy + 8, dx:dx + 8]]
        ]
        assert any(torch.equal(out[b], c) for c in candidates)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_augment_without_padding_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(train.augment(images, 0, False, torch.Generator()), images)


def test_lr_schedule_warmup_then_cosine():
    peak, total, warmup = 0.1, 100, 10
    assert train.lr_at(0, total, warmup, peak) == pytest.approx(peak / warmup)
    assert train.lr_at(9, total, warmup, peak) == pytest.approx(peak)
    assert train.lr_at(55, total, warmup, peak) == pytest.approx(0.5 * peak * (1 + math.cos(math.pi * 0.5)))
    assert train.lr_at(100, total, warmup, peak) == pytest.approx(0.0)


def test_cli_flags_map_onto_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "train", lambda config: seen.setdefault("config", config) and {})
    cli.main(["train", "--model", "vit_small_c10", "--subset-size", "1000", "--no-flip", "--lr", "0.002"])
    assert seen["config"] == train.TrainConfig(model="vit_small_c10", subset_size=1000, flip=False, lr=0.002)


def test_unknown_model_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo model"):
        train.train(train.TrainConfig(model="vit_huge_c10", out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


@needs_cifar
def test_tiny_training_run_saves_a_loadable_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")
    config = train.TrainConfig(model="vit_tiny_c10", subset_size=640, epochs=2, batch_size=64, eval_size=500,
                               out=str(tmp_path / "run"))
    final = train.train(config, device="cpu")
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["step"] == 20
    assert log[1]["loss"] < log[0]["loss"]
    model = vitlab.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, 500, 0)
    assert train.evaluate(model, images[idx], labels[idx]) == pytest.approx(final["test_accuracy"])
    assert final["test_accuracy"] > 0.15  # better than chance after 20 steps
