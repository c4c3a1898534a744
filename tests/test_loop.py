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

import vitlab

from vitlab import data, models
from vitlab.training import inside, loop, objectives, run_folder, steps
from vitlab.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("change, error", [
    (dict(model="vit_huge_c10"), "unknown zoo model"),
    (dict(subset_size=100, batch_size=128), "exceeds the subset"),
    (dict(optimizer="lamb"), "optimizer must be one of 'adamw', 'sgd'; got 'lamb'"),
    (dict(precision="fp8"), "precision must be"),
])
def test_bad_config_fails_before_any_work(tmp_path, change, error):
    with pytest.raises(ValueError, match=error):
        loop.train(TrainConfig(**change), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unwritable_output_folder_is_explained(tmp_path, fake_cifar):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        loop.train(TrainConfig(), blocker / "run")


def test_missing_dataset_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(data.files, "_download_cifar10", lambda root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(data.DataNotFoundError, match="three ways|ImageFolder"):
        loop.train(TrainConfig(), tmp_path / "run")


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
    single = loop.train(TrainConfig(model="vit_micro_c10", epochs=1, batch_size=32, eval_size=50),
                         tmp_path / "single", progress=False).model.state_dict()
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-3, atol=1e-4)


def test_fine_tune_at_higher_resolution_resamples_position_embeddings(tmp_path, fake_cifar):
    # The micro ViT (patch 8): resampling depends on the grids, not on the width or depth around them.
    small = dict(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    base = loop.train(TrainConfig(**small), tmp_path / "base", progress=False)
    source = tmp_path / "base" / "model.safetensors"
    tuned = loop.train(TrainConfig(**small, init=str(source), img_size=48, lr=0.0), tmp_path / "tuned",
                       progress=False).model
    assert tuple(tuned.patch_embed.grid_size) == (6, 6)
    expected = timm.layers.resample_abs_pos_embed(base.model.pos_embed, new_size=(6, 6), old_size=(4, 4),
                                                  num_prefix_tokens=1)
    torch.testing.assert_close(tuned.pos_embed, expected)  # lr 0: still the resampled start
    reloaded = vitlab.load_model(tmp_path / "tuned" / "model.safetensors", device="cpu")
    assert timm.data.resolve_model_data_config(reloaded)["input_size"] == (3, 48, 48)


def test_init_from_another_architecture_is_refused(tmp_path, fake_cifar):
    with pytest.raises(ValueError, match="holds a ResNet"):
        loop.train(TrainConfig(init="resnet_tiny_c10"), tmp_path / "run")


@pytest.mark.cifar
def test_tiny_training_run_saves_a_loadable_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")
    # The micro ViT: saving, reloading and scoring a run do not depend on the model's size.
    config = TrainConfig(model="vit_micro_c10", subset_size=640, epochs=2, batch_size=64, eval_size=500)
    final = loop.train(config, tmp_path / "run", device="cpu").record
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[-1]["step"] == 20
    assert log[1]["loss"] < log[0]["loss"]
    model = vitlab.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, 500, 0)
    assert objectives.evaluate(model, images[idx], labels[idx]) == pytest.approx(final["test_accuracy"])
    assert final["test_accuracy"] > 0.15  # better than chance after 20 steps


@pytest.mark.gpu
def test_training_on_a_gpu_runs_in_bf16_and_saves_a_cpu_loadable_model(tmp_path, fake_cifar):
    config = TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50)
    result = loop.train(config, tmp_path / "run", device="cuda", progress=False)
    assert result.record["precision"] == "torch.bfloat16" and "cuda" not in str(next(result.model.parameters()).device)
    images, labels = data.cifar10("test")
    idx = data.stratified_subset(labels, 50, 0)
    model = vitlab.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    assert objectives.evaluate(model, images[idx], labels[idx]) == pytest.approx(result.record["test_accuracy"], abs=0.04)


def _files(folder):
    """Every file in ``folder`` with its bytes and modification time, but the lock (each run takes it)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.name != "vitlab.lock"}


def test_a_finished_run_is_given_back_without_training_or_writing(tmp_path, fake_cifar, capsys):
    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    first = loop.train(config, tmp_path / "run", progress=False)
    for path in (tmp_path / "run").glob("checkpoint*"):  # the sidecar alone says the run finished
        path.unlink()
    before = _files(tmp_path / "run")
    again = loop.train(config, tmp_path / "run")
    assert "already finished" in capsys.readouterr().out
    assert _files(tmp_path / "run") == before
    assert again.record == first.record and not again.model.training
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()))


def _read_only(monkeypatch, folder):
    """Make every write under ``folder`` fail with EROFS, as on read-only media (tests run as root: chmod cannot)."""
    import builtins
    import errno
    import io

    root = str(folder.resolve())
    under = lambda path: os.path.abspath(os.fsdecode(path)).startswith(root)  # noqa: E731
    erofs = lambda path: OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))  # noqa: E731
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and under(file) and set(mode) & set("wax+"):
            raise erofs(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise erofs(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if under(path):
            raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path)) if os.path.exists(path) \
                else erofs(path)
        return real_mkdir(path, *args, **kwargs)

    for module, name, guard in ((builtins, "open", guarded_open), (io, "open", guarded_open),
                                (os, "open", guarded_os_open), (os, "mkdir", guarded_mkdir)):
        monkeypatch.setattr(module, name, guard)


def test_a_finished_run_on_read_only_media_is_given_back(tmp_path, fake_cifar, monkeypatch, capsys):
    """Issue 28, item 16: a finished run needs no write (no lock file, no probe) to be given back."""
    from vitlab.__main__ import main

    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    first = loop.train(config, tmp_path / "run", progress=False)
    (tmp_path / "run" / "vitlab.lock").unlink()  # as copied to other media without it
    before = _files(tmp_path / "run")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _read_only(patch, tmp_path / "run")
        main(["train", "--model", "vit_micro_c10", "--epochs", "1", "--batch-size", "64", "--eval-size", "50",
              "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "already finished" in out and json.loads(out[out.index("{"):]) == first.record
    assert _files(tmp_path / "run") == before and not (tmp_path / "run" / "vitlab.lock").exists()


def test_a_finished_run_with_other_settings_is_refused_even_without_checkpoints(tmp_path, fake_cifar):
    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    loop.train(config, tmp_path / "run", progress=False)
    for path in (tmp_path / "run").glob("checkpoint*"):
        path.unlink()
    before = _files(tmp_path / "run")
    with pytest.raises(ValueError, match="finished run with other settings \\(epochs 1 in the finished run, 2 now\\)"):
        loop.train(TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50), tmp_path / "run")
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
        loop.train(TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64), run)
    assert _files(run) == before


@pytest.mark.parametrize("change", [
    dict(lr=0.0), dict(crop_padding=0), dict(crop_padding=31), dict(label_smoothing=0.0), dict(label_smoothing=0.99),
    dict(epochs=3, warmup_epochs=3.0), dict(epochs=1), dict(warmup_epochs=0.0), dict(weight_decay=0.0),
    dict(img_size=48), dict(model="vit_micro_c10", img_size=40), dict(model="resnet_micro_c10", img_size=30),
    dict(subset_size=50_000), dict(subset_size=128), dict(eval_size=1), dict(eval_size=10_000),
])
def test_settings_at_the_edges_of_their_ranges_are_accepted(tmp_path, change):
    loop.check(TrainConfig(**change), tmp_path / "run", checkpoint_every=0)


def test_training_flags_are_checked_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "cifar10", lambda split: pytest.fail("read data before checking the flags"))
    with pytest.raises(ValueError, match=r"^--img-size 30: must be a positive multiple of 4, the patch size of "
                                         r"vit_tiny_c10, and at most 4096 pixels$"):
        loop.train(TrainConfig(img_size=30), tmp_path / "run")
    with pytest.raises(ValueError, match=r"^--img-size 44: must be a positive multiple of 8"):
        loop.train(TrainConfig(model="vit_micro_c10", img_size=44), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_inside_views_are_a_run_flag_on_by_default():
    from vitlab.__main__ import RUN_FLAGS, build_parser

    parse = build_parser().parse_args
    assert parse(["train"]).inside is True and parse(["train", "--no-inside"]).inside is False
    assert "inside" in RUN_FLAGS  # not a setting: resuming with the other choice keeps the same weights
    assert "inside" not in {f.name for f in dataclasses.fields(TrainConfig)}


# --- the sync-free step ----------------------------------------------------------------------------


@pytest.mark.parametrize("change, error", [
    (dict(cutmix=1.0, batch_size=127), r"^--batch-size 127: must be even when --mixup or --cutmix is on"),
    (dict(mixup=-0.2), r"^--mixup -0.2: must be 0 \(off\) or a positive Beta alpha"),
    (dict(cutmix=float("nan")), r"^--cutmix nan: must be a finite number"),  # the type check, before the range
    (dict(mix_prob=1.5), r"^--mix-prob 1.5: must be a probability, 0..1$"),
    (dict(mix_switch_prob=-0.1), r"^--mix-switch-prob -0.1: must be a probability"),
])
def test_mixing_settings_are_checked_up_front(tmp_path, change, error):
    with pytest.raises(ValueError, match=error):
        loop.check(TrainConfig(**change), tmp_path / "run")
    loop.check(TrainConfig(batch_size=127), tmp_path / "run")  # odd batches are fine without mixing


def _micro_run(tmp_path, **change):
    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=16, **change)
    model = loop._initial_model(config)  # a pre-training run wraps the ViT (vitlab.training.mpp)
    return loop._setup(config, tmp_path, model, torch.device("cpu"), rank=0, world=1, steps_per_epoch=6)


@pytest.mark.parametrize("change", [{}, dict(cutmix=1.0, mixup=0.8), dict(objective="mpp", label_smoothing=0.0)])
def test_the_step_returns_device_tensors_and_the_epoch_reads_back_once(tmp_path, monkeypatch, change):
    run = _micro_run(tmp_path, **change)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(96) % 10
    x, y = loop.batch(run, images[:16], labels[:16])
    loss, hits, scored = loop._step(run, x, y)
    # Images, or under masked patch prediction the corrupted patches (half of a micro ViT's 16 per image).
    assert scored == (16 * 8 if change.get("objective") == "mpp" else 16)
    assert isinstance(loss, torch.Tensor) and isinstance(hits, torch.Tensor)
    assert loss.device == hits.device == run.device and loss.ndim == hits.ndim == 0
    assert not loss.requires_grad
    reads = []

    def counted(name, original):
        def read(self, *args):
            caller = sys._getframe(1).f_code.co_filename
            # torch.optim reads its step counters, which it keeps on the host by design: no device sync.
            if f"torch{os.sep}optim" not in caller:
                reads.append((name, Path(caller).name))
            return original(self, *args)
        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    stats = loop.train_one_epoch(run, images, labels, progress=False)
    monkeypatch.undo()
    assert reads == [("item", "loop.py")] * 2, reads  # loss and hits, once, after the epoch's 5 remaining steps
    assert 0 <= stats["train_accuracy"] <= 1 and math.isfinite(stats["loss"])


def test_mixed_training_counts_accuracy_against_the_dominant_label(tmp_path, monkeypatch):
    run = _micro_run(tmp_path, cutmix=1.0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    x, target = loop.batch(run, images, labels)
    lam = target[0, labels[0]].item() - 0.01  # smoothing 0.1 over 10 classes adds 0.01 to each
    dominant = labels if lam >= 0.5 else labels.flip(0)
    logits = torch.nn.functional.one_hot(dominant, 10).float()  # a model that always says the dominant label
    monkeypatch.setattr(run, "net", lambda inputs: logits.requires_grad_())
    monkeypatch.setattr(run.opt, "step", lambda: None)
    _, hits, _ = loop._step(run, x, target)
    assert hits.item() == 16


@pytest.mark.parametrize("precision, eager", [("bf16", True), ("fp32", False)])
def test_cpu_bf16_training_uses_unfused_attention_and_puts_it_back(tmp_path, fake_cifar, monkeypatch, precision, eager):
    seen = []
    step = loop._step

    def spy(run, x, y):
        seen.append({m.fused_attn for m in run.model.modules() if hasattr(m, "fused_attn")})
        return step(run, x, y)

    monkeypatch.setattr(loop, "_step", spy)
    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50, precision=precision)
    model = loop.train(config, tmp_path / "run", device="cpu", progress=False).model
    assert seen and all(flags == {not eager} for flags in seen)
    fresh = models.build_model({"zoo": "vit_micro_c10"})
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == [
        m.fused_attn for m in fresh.modules() if hasattr(m, "fused_attn")]  # back as built


# --- evaluation cadence ---------------------------------------------------------------------

CADENCE = dict(model="vit_micro_c10", subset_size=320, epochs=7, batch_size=64, eval_size=50, warmup_epochs=1.0)
_SAME = ("epoch", "step", "loss", "train_accuracy", "test_accuracy", "lr")  #: a row's fields but its timings


def cadence_run(out, monkeypatch, stop_after=None, **change):
    """Train the 7-epoch micro ViT of 5 steps an epoch into ``out``, or stop it after epoch ``stop_after`` (a
    KeyboardInterrupt once that epoch's inside view is written); its weights, metrics rows, inside-view epochs and
    distances, and the steps it checkpointed at."""
    checkpointed = []
    save, record = loop.save_checkpoint, loop.record_inside

    def record_then_stop(out, view, tensors):
        record(out, view, tensors)
        if view.epoch == stop_after:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", lambda out, **kw: checkpointed.append(kw["step"]) or save(out, **kw))
        patch.setattr(loop, "record_inside", record_then_stop)
        try:
            loop.train(TrainConfig(**CADENCE, **change), out, progress=False)
        except KeyboardInterrupt:  # stopped: the steps it checkpointed at are all there is to say
            return dict(checkpointed=checkpointed)
    views = run_folder.read_inside(out)
    return dict(weights=safetensors.torch.load_file(out / "model.safetensors"),
                rows=[{k: r[k] for k in _SAME} for r in run_folder.read_metrics(out)],
                inside=[(v.epoch, v.step, v.distance) for v in views], checkpointed=checkpointed)


def test_the_cadence_changes_when_a_run_evaluates_and_checkpoints_never_its_weights(tmp_path, fake_cifar,
                                                                                    monkeypatch):
    every_epoch = cadence_run(tmp_path / "every-1", monkeypatch)
    every_third = cadence_run(tmp_path / "every-3", monkeypatch, eval_every=3)
    weights = every_epoch["weights"]
    assert weights.keys() == every_third["weights"].keys()
    assert all(torch.equal(weights[k], every_third["weights"][k]) for k in weights)
    evaluated = [e for e in range(1, 8) if e % 3 == 0 or e == 7]  # every third epoch, and always the last
    assert [r["epoch"] for r in every_epoch["rows"]] == list(range(1, 8))
    assert every_third["rows"] == [r for r in every_epoch["rows"] if r["epoch"] in evaluated]
    assert every_third["checkpointed"] == [5 * e for e in evaluated]
    assert every_epoch["checkpointed"] == [5 * e for e in range(1, 8)]
    # Inside views stay at the usual epochs (all 7 of a 7-epoch run), whatever the cadence.
    assert [v[0] for v in every_third["inside"]] == inside.recorded_epochs(7) == list(range(1, 8))
    assert every_third["inside"] == every_epoch["inside"]


@pytest.mark.parametrize("resumed_every, evaluated", [(3, [3, 6, 7]), (2, [3, 4, 6, 7])])
def test_a_run_stopped_between_checkpoints_resumes_to_the_uninterrupted_weights_and_metrics(
        tmp_path, fake_cifar, monkeypatch, resumed_every, evaluated):
    uninterrupted = cadence_run(tmp_path / "whole", monkeypatch)
    out = tmp_path / "stopped"
    assert cadence_run(out, monkeypatch, stop_after=5, eval_every=3)["checkpointed"] == [15]  # epoch 3's only
    assert [r["epoch"] for r in run_folder.read_metrics(out)] == [3]
    assert [v.epoch for v in run_folder.read_inside(out)] == [1, 2, 3, 4, 5]  # 4 and 5 are redone on resuming
    # Resumed from epoch 3 under the same cadence, or another (when, not what: the run's settings are the same).
    resumed = cadence_run(out, monkeypatch, eval_every=resumed_every)
    assert resumed["checkpointed"] == [5 * e for e in evaluated if e > 3]
    assert all(torch.equal(uninterrupted["weights"][k], resumed["weights"][k]) for k in uninterrupted["weights"])
    assert resumed["rows"] == [r for r in uninterrupted["rows"] if r["epoch"] in evaluated]
    assert resumed["inside"] == uninterrupted["inside"]
    again = loop.train(TrainConfig(**CADENCE, eval_every=4), out, progress=False)  # finished: given back as it is
    assert again.record["step"] == 35 and run_folder.read_metrics(out)[-1]["epoch"] == 7


def test_randaugment_joins_the_batch_after_crop_and_flip_and_depends_on_the_step_alone(tmp_path):
    plain, augmented = _micro_run(tmp_path / "a"), _micro_run(tmp_path / "b", randaugment=2)
    images, labels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 10
    x_plain, _ = loop.batch(plain, images, labels)
    x_aug, _ = loop.batch(augmented, images, labels)
    assert not torch.equal(x_plain, x_aug)
    # The same crops and flips (the run's stream), then RandAugment seeded by (seed, step).
    cropped = steps.augment(images, 4, True, torch.Generator().manual_seed(1))
    expected = steps.randaugment(cropped, 2, 9, seed=0, step=0)
    normalised, _ = augmented.objective.inputs(augmented.model, expected, labels, torch.Generator(), 0)
    assert torch.equal(x_aug, normalised)


def test_a_run_resumed_mid_epoch_logs_that_epoch_over_all_its_steps(tmp_path, fake_cifar, monkeypatch):
    """Issue 28, item 12: the epoch's loss and accuracy count the steps before the checkpoint it resumed from too,
    so they equal an uninterrupted run's (the trainer resumes exactly; 5 steps an epoch, stopped after step 8)."""
    config = TrainConfig(model="vit_micro_c10", subset_size=320, epochs=2, batch_size=64, eval_size=50)
    whole = loop.train(config, tmp_path / "whole", progress=False, checkpoint_every=2, inside=False)
    save = loop.save_checkpoint

    def save_then_stop(out, **kw):
        save(out, **kw)
        if kw["step"] == 8:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            loop.train(config, tmp_path / "stopped", progress=False, checkpoint_every=2, inside=False)
    assert [r["epoch"] for r in run_folder.read_metrics(tmp_path / "stopped")] == [1]
    resumed = loop.train(config, tmp_path / "stopped", progress=False, checkpoint_every=2, inside=False)
    rows = [run_folder.read_metrics(tmp_path / name)[-1] for name in ("whole", "stopped")]
    assert rows[0]["epoch"] == rows[1]["epoch"] == 2 and rows[1]["step"] == 10
    for key in ("loss", "train_accuracy", "test_accuracy"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-6, abs=1e-9), key
    assert resumed.record["loss"] == pytest.approx(whole.record["loss"], rel=1e-6)
