"""Bad-input rows of run folders and training settings (``runs-``): the train and publish commands.

``before`` is what the same input did on main before issue 12 (reproduced with a fake
CIFAR-10 where the error came only after loading data).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from test_bad_inputs import Bad, cli

from vitlab import checkpoints, models
from vitlab.train import TrainConfig


def _train(*flags: str):
    """A CLI row: ``python -m vitlab train *flags --out <tmp>/run``."""
    return lambda tmp: cli("train", *flags, "--out", str(tmp / "run"))


def _finished(tmp: Path, model: str = "vit_micro_c10", **settings) -> Path:
    """A run folder as a finished run leaves it (model, sidecar with settings), made without training."""
    run = tmp / "run"
    config = dataclasses.asdict(TrainConfig(model=model, **settings))
    models.save_model(models.build_model({"zoo": model}), run / "model.safetensors",
                      metadata=dict(config=config, metrics=dict(epoch=1, step=10, test_accuracy=0.1)))
    return run


def _other_settings(tmp: Path) -> None:
    _finished(tmp, epochs=1)
    cli("train", "--model", "vit_micro_c10", "--epochs", "2", "--out", str(tmp / "run"))


def _foreign_model(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "model.safetensors").write_bytes(b"weights of another tool")
    cli("train", "--out", str(tmp / "run"))


def _in_use(tmp: Path) -> None:
    (tmp / "run").mkdir()
    with checkpoints.lock_run(tmp / "run"):  # as another process training there holds it
        cli("train", "--out", str(tmp / "run"))


def _unreadable_checkpoint(tmp: Path) -> None:
    run = tmp / "run"
    run.mkdir()
    model = models.build_model({"zoo": "vit_micro_c10"})
    checkpoints.save_checkpoint(run, step=5, epoch=0.5, wall_seconds=1.0, model=model,
                                optimizer=torch.optim.AdamW(model.parameters()), generator=torch.Generator(),
                                config=TrainConfig(model="vit_micro_c10"), data={})
    weights = run / "checkpoint-00000005.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cli("train", "--model", "vit_micro_c10", "--out", str(run))


def _publish_onto_shipped(tmp: Path) -> None:
    # The shipped entry's checkpoint exists, so the refusal comes first and nothing in data/zoo is touched.
    assert models.zoo_weights("vit_tiny_c10").is_file(), "this row needs the shipped vit_tiny_c10 checkpoint"
    cli("publish", str(_finished(tmp, model="vit_tiny_c10")), "vit_tiny_c10")


_AFTER_DATA = "after loading the data, a traceback: "

ROWS: dict[str, Bad] = {
    "runs-subset-size-0": Bad(
        _train("--subset-size", "0"), SystemExit, "--subset-size 0: must be 1..50000 training images",
        before="ConfigError 'batch size 128 exceeds the subset of 0 images' (blamed the batch size)"),
    "runs-subset-size-negative": Bad(
        _train("--subset-size", "-5"), SystemExit, "--subset-size -5: must be 1..50000",
        before="ConfigError 'batch size 128 exceeds the subset of -5 images'"),
    "runs-subset-size-too-large": Bad(
        _train("--subset-size", "60000"), SystemExit, "--subset-size 60000: must be 1..50000",
        before=_AFTER_DATA + "ValueError 'subset size must be in 1..50000 (the number of labels), got 60000'"),
    "runs-batch-size-0": Bad(
        _train("--batch-size", "0"), SystemExit, "--batch-size 0: must be at least 1",
        before="ConfigError 'epochs and batch size must be at least 1' (neither flag nor value named)"),
    "runs-epochs-0": Bad(
        _train("--epochs", "0"), SystemExit, "--epochs 0: must be at least 1",
        before="ConfigError 'epochs and batch size must be at least 1' (neither flag nor value named)"),
    "runs-batch-exceeds-subset": Bad(
        _train("--subset-size", "100", "--batch-size", "128"), SystemExit, "lower --batch-size or raise --subset-size",
        before="the same one-line ConfigError (already behaved)"),
    "runs-lr-negative": Bad(
        _train("--lr", "-1"), SystemExit, "--lr -1.0: must be 0 or more",
        before=_AFTER_DATA + "torch ValueError 'Invalid learning rate: -1.0'"),
    "runs-lr-nan": Bad(
        _train("--lr", "nan"), SystemExit, "--lr nan: must be 0 or more",
        before=_AFTER_DATA + "torch ValueError 'Invalid learning rate: nan'"),
    "runs-weight-decay-negative": Bad(
        _train("--weight-decay", "-1"), SystemExit, "--weight-decay -1.0: must be 0 or more",
        before="trained without complaint (a negative decay grows the weights)"),
    "runs-warmup-over-epochs": Bad(
        _train("--epochs", "2", "--warmup-epochs", "3"), SystemExit, "--warmup-epochs 3.0: must be 0..2",
        before="trained without complaint; the learning rate never reached --lr"),
    "runs-warmup-negative": Bad(
        _train("--warmup-epochs", "-1"), SystemExit, "--warmup-epochs -1.0: must be 0..30",
        before="trained without complaint, with no warmup"),
    "runs-label-smoothing-2": Bad(
        _train("--label-smoothing", "2"), SystemExit, "--label-smoothing 2.0: must be at least 0 and below 1",
        before=_AFTER_DATA + "RuntimeError 'label_smoothing must be between 0.0 and 1.0. Got: 2' at the first step"),
    "runs-label-smoothing-negative": Bad(
        _train("--label-smoothing", "-0.1"), SystemExit, "--label-smoothing -0.1: must be at least 0",
        before="trained without complaint"),
    "runs-crop-padding-40": Bad(
        _train("--crop-padding", "40"), SystemExit, "--crop-padding 40: must be 0..31 pixels",
        before=_AFTER_DATA + "RuntimeError 'Padding size should be less than the corresponding input dimension' "
                             "at the first step"),
    "runs-crop-padding-negative": Bad(
        _train("--crop-padding", "-1"), SystemExit, "--crop-padding -1: must be 0..31 pixels",
        before=_AFTER_DATA + "RuntimeError \"random_ expects 'from' to be less than 'to'\" at the first step"),
    "runs-img-size-30": Bad(
        _train("--img-size", "30"), SystemExit, "--img-size 30: must be a positive multiple of 4, the patch size",
        before=_AFTER_DATA + "timm AssertionError 'Input height (30) should be divisible by patch size (4)' "
                             "at the first step"),
    "runs-img-size-0-resnet": Bad(
        _train("--model", "resnet_micro_c10", "--img-size", "0"), SystemExit, "--img-size 0: must be at least 1 pixel",
        before=_AFTER_DATA + "RuntimeError 'Input and output sizes should be greater than 0' at the first step"),
    "runs-eval-size-0": Bad(
        _train("--eval-size", "0"), SystemExit, "--eval-size 0: must be 1..10000 test images",
        before=_AFTER_DATA + "ValueError 'subset size must be in 1..10000 (the number of labels), got 0'"),
    "runs-eval-size-too-large": Bad(
        _train("--eval-size", "20000"), SystemExit, "--eval-size 20000: must be 1..10000",
        before=_AFTER_DATA + "ValueError 'subset size must be in 1..10000 (the number of labels), got 20000'"),
    "runs-checkpoint-every-negative": Bad(
        _train("--checkpoint-every", "-1"), SystemExit, "--checkpoint-every -1: must be 0",
        before="the same kind of line from the CLI; train(checkpoint_every=-1) checkpointed after every step"),
    "runs-finished-other-settings": Bad(
        _other_settings, SystemExit, "finished run with other settings (epochs 1 in the finished run, 2 now)",
        before="trained from the start and silently replaced model.safetensors, model.json and metrics.jsonl "
               "(refused only while checkpoint.json was there)"),
    "runs-foreign-model": Bad(
        _foreign_model, SystemExit, "model.safetensors was not written by a vitlab training run",
        before="trained and silently replaced the model.safetensors"),
    "runs-folder-in-use": Bad(
        _in_use, SystemExit, "is in use: another vitlab process (PID",
        before="both processes trained into the folder at once and exited 0; metrics.jsonl logged epoch 3 twice"),
    "runs-unreadable-checkpoint": Bad(
        _unreadable_checkpoint, SystemExit, "checkpoint-00000005.safetensors does not match the sha256",
        before=_AFTER_DATA + "SafetensorError 'Error while deserializing header: invalid header length', no path"),
    "runs-publish-existing": Bad(
        _publish_onto_shipped, SystemExit, "zoo entry vit_tiny_c10 has a checkpoint already",
        before="evaluated the run and silently replaced data/zoo/<name>.safetensors, .json and .metrics.jsonl"),
}
