import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import vitlab
from torch import nn

from vitlab import data, models, train

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("change, error", [
    (dict(model="vit_huge_c10"), "unknown zoo model"),
    (dict(subset_size=100, batch_size=128), "exceeds the subset"),
    (dict(optimizer="lamb"), "optimizer must be one of 'adamw', 'sgd'; got 'lamb'"),
    (dict(precision="fp8"), "precision must be"),
])
def test_bad_config_fails_before_any_work(tmp_path, change, error):
    with pytest.raises(ValueError, match=error):
        train.train(train.TrainConfig(**change), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unwritable_output_folder_is_explained(tmp_path, fake_cifar):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        train.train(train.TrainConfig(), blocker / "run")


def test_missing_dataset_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "_download_cifar10", lambda root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(data.DataNotFoundError, match="three ways|ImageFolder"):
        train.train(train.TrainConfig(), tmp_path / "run")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path, fake_cifar):
    env = dict(os.environ, VITLAB_DATA=str(fake_cifar), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path / "ddp")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [safetensors.torch.load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    # Same global batch, same augmentation stream: one process reaches the same weights.
    single = train.train(train.TrainConfig(model="vit_tiny_c10", epochs=1, batch_size=32, eval_size=50),
                         tmp_path / "single", progress=False).model.state_dict()
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-3, atol=1e-4)


def test_fine_tune_at_higher_resolution_resamples_position_embeddings(tmp_path, fake_cifar):
    base = train.train(train.TrainConfig(epochs=1, batch_size=64, eval_size=50), tmp_path / "base", progress=False)
    source = tmp_path / "base" / "model.safetensors"
    tuned = train.train(train.TrainConfig(init=str(source), img_size=48, epochs=1, batch_size=64, lr=0.0,
                                          eval_size=50), tmp_path / "tuned", progress=False).model
    assert tuple(tuned.patch_embed.grid_size) == (12, 12)
    expected = timm.layers.resample_abs_pos_embed(base.model.pos_embed, new_size=(12, 12), old_size=(8, 8),
                                                  num_prefix_tokens=1)
    torch.testing.assert_close(tuned.pos_embed, expected)  # lr 0: still the resampled start
    reloaded = vitlab.load_model(tmp_path / "tuned" / "model.safetensors", device="cpu")
    assert timm.data.resolve_model_data_config(reloaded)["input_size"] == (3, 48, 48)


def test_init_from_another_architecture_is_refused(tmp_path, fake_cifar):
    with pytest.raises(ValueError, match="holds a ResNet"):
        train.train(train.TrainConfig(init="resnet_tiny_c10"), tmp_path / "run")


@pytest.mark.cifar
def test_tiny_training_run_saves_a_loadable_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")
    config = train.TrainConfig(model="vit_tiny_c10", subset_size=640, epochs=2, batch_size=64, eval_size=500)
    final = train.train(config, tmp_path / "run", device="cpu").record
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["step"] == 20
    assert log[1]["loss"] < log[0]["loss"]
    model = vitlab.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, 500, 0)
    assert train.evaluate(model, images[idx], labels[idx]) == pytest.approx(final["test_accuracy"])
    assert final["test_accuracy"] > 0.15  # better than chance after 20 steps


@pytest.mark.parametrize("name", ["vit_micro_c10", "resnet_micro_c10"])
def test_weight_decay_applies_to_conv_and_linear_weights_only(name):
    model = models.build_model({"zoo": name})
    decay, rest = train.param_groups(model, 0.05)
    assert (decay["weight_decay"], rest["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    # Independent of how the exemptions are found: the weights of convolutions and linear layers.
    weights = {f"{m}.weight" for m, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}
    assert {names[id(p)] for p in decay["params"]} == weights
    assert {names[id(p)] for p in rest["params"]} == set(names.values()) - weights
    if name.startswith("vit"):
        exempt = {names[id(p)] for p in rest["params"]}
        assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "norm.weight"} <= exempt


@pytest.mark.gpu
def test_training_on_a_gpu_runs_in_bf16_and_saves_a_cpu_loadable_model(tmp_path, fake_cifar):
    config = train.TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50)
    result = train.train(config, tmp_path / "run", device="cuda", progress=False)
    assert result.record["precision"] == "torch.bfloat16" and "cuda" not in str(next(result.model.parameters()).device)
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, 50, 0)
    model = vitlab.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    assert train.evaluate(model, images[idx], labels[idx]) == pytest.approx(result.record["test_accuracy"], abs=0.04)


def _files(folder):
    """Every file in ``folder`` with its bytes and modification time, but the lock (each run takes it)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.name != "vitlab.lock"}


def test_a_finished_run_is_given_back_without_training_or_writing(tmp_path, fake_cifar, capsys):
    config = train.TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    first = train.train(config, tmp_path / "run", progress=False)
    for path in (tmp_path / "run").glob("checkpoint*"):  # the sidecar alone says the run finished
        path.unlink()
    before = _files(tmp_path / "run")
    again = train.train(config, tmp_path / "run")
    assert "already finished" in capsys.readouterr().out
    assert _files(tmp_path / "run") == before
    assert again.record == first.record and not again.model.training
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()))


def test_a_finished_run_with_other_settings_is_refused_even_without_checkpoints(tmp_path, fake_cifar):
    config = train.TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    train.train(config, tmp_path / "run", progress=False)
    for path in (tmp_path / "run").glob("checkpoint*"):
        path.unlink()
    before = _files(tmp_path / "run")
    with pytest.raises(ValueError, match="finished run with other settings \\(epochs 1 in the finished run, 2 now\\)"):
        train.train(train.TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50), tmp_path / "run")
    assert _files(tmp_path / "run") == before


@pytest.mark.parametrize("sidecar", [None, "not json", json.dumps({"format": 1, "architecture": {}})])
def test_a_model_vitlab_did_not_train_is_never_overwritten(tmp_path, fake_cifar, sidecar):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"someone's weights")
    if sidecar is not None:
        (run / "model.json").write_text(sidecar)
    before = _files(run)
    with pytest.raises(ValueError, match="model.safetensors was not written by a vitlab training run"):
        train.train(train.TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64), run)
    assert _files(run) == before


@pytest.mark.parametrize("change", [
    dict(lr=0.0), dict(crop_padding=0), dict(crop_padding=31), dict(label_smoothing=0.0), dict(label_smoothing=0.99),
    dict(epochs=3, warmup_epochs=3.0), dict(epochs=1), dict(warmup_epochs=0.0), dict(weight_decay=0.0),
    dict(img_size=48), dict(model="vit_micro_c10", img_size=40), dict(model="resnet_micro_c10", img_size=30),
    dict(subset_size=50_000), dict(subset_size=128), dict(eval_size=1), dict(eval_size=10_000),
])
def test_settings_at_the_edges_of_their_ranges_are_accepted(tmp_path, change):
    train.check(train.TrainConfig(**change), tmp_path / "run", checkpoint_every=0)


def test_training_flags_are_checked_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "cifar10", lambda split: pytest.fail("read data before checking the flags"))
    with pytest.raises(ValueError, match=r"^--img-size 30: must be a positive multiple of 4, the patch size of "
                                         r"vit_tiny_c10$"):
        train.train(train.TrainConfig(img_size=30), tmp_path / "run")
    with pytest.raises(ValueError, match=r"^--img-size 44: must be a positive multiple of 8"):
        train.train(train.TrainConfig(model="vit_micro_c10", img_size=44), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_inside_views_are_a_run_flag_on_by_default():
    from vitlab.__main__ import RUN_FLAGS, build_parser

    parse = build_parser().parse_args
    assert parse(["train"]).inside is True and parse(["train", "--no-inside"]).inside is False
    assert "inside" in RUN_FLAGS  # not a setting: resuming with the other choice keeps the same weights
    assert "inside" not in {f.name for f in dataclasses.fields(train.TrainConfig)}
