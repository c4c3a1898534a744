"""Bad input gets one clear line before any work: one table, input -> exception and a phrase.

Each row does one bad thing in a fresh folder and names the exception it must raise and a
phrase its message must hold (the input named, or what to do). ``before`` says what the
same input did before issue 12, for the record. CIFAR-10 is pointed at an empty folder and
downloads fail, so a row whose error came only after loading data would fail with
``DataNotFoundError`` instead: the errors are raised before any data is read.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitlab
from vitlab import data, models, records, result_files
from vitlab.training import run_folder
from vitlab.analysis import (ablation, attention_maps, faithfulness, lens, map_checks, metrics, patching,
                             representations, residual, saliency)
from vitlab.analysis.features import layer_features, layer_hooks, pre_logits
from vitlab.analysis.capture import capture, hooks
from vitlab.analysis.distance import head_statistics
from vitlab.training.sweep import SweepConfig, sweep
from vitlab.training.config import ConfigError, TrainConfig
from vitlab.models.weights import WeightsFileError


@dataclass(frozen=True)
class Bad:
    """One row: ``call(tmp_path)`` must raise ``error`` whose one-line message holds ``phrase``."""

    call: Callable[[Path], Any]
    error: type[BaseException]
    phrase: str
    before: str


def cli(*argv: str) -> None:
    """``python -m vitlab *argv`` in-process; a bad input ends in SystemExit with the line."""
    from vitlab.__main__ import main

    main(list(argv))


# ================================================================================================
# Run folders and training settings: the train and publish commands (runs-)
#
# ``before`` is what the same input did on main before issue 12 (reproduced with a fake
# CIFAR-10 where the error came only after loading data).


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
    with run_folder.lock_run(tmp / "run"):  # as another process training there holds it
        cli("train", "--out", str(tmp / "run"))


def _unreadable_checkpoint(tmp: Path) -> None:
    run = tmp / "run"
    run.mkdir()
    model = models.build_model({"zoo": "vit_micro_c10"})
    run_folder.save_checkpoint(run, step=5, epoch=0.5, wall_seconds=1.0, model=model,
                                optimizer=torch.optim.AdamW(model.parameters()), generator=torch.Generator(),
                                config=TrainConfig(model="vit_micro_c10"), data={})
    weights = run / "checkpoint-00000005.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cli("train", "--model", "vit_micro_c10", "--out", str(run))


def _publish_onto_shipped(tmp: Path) -> None:
    # The shipped entry's checkpoint exists, so the refusal comes first and nothing in data/zoo is touched.
    assert models.zoo_weights("vit_tiny_c10").is_file(), "this row needs the shipped vit_tiny_c10 checkpoint"
    cli("publish", str(_finished(tmp, model="vit_tiny_c10")), "vit_tiny_c10")


def _publish_installed(tmp: Path) -> None:
    # vitlab installed from a wheel: its zoo is package data in site-packages, which is no user's to write.
    from vitlab import settings
    from vitlab.models import loading

    package = tmp / "site-packages" / "vitlab"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "PROJECT_ROOT", package.parent)
        patch.setattr(settings, "PACKAGE_DATA", package / "_data")
        patch.setattr(loading, "ZOO_DIR", package / "_data" / "zoo")
        cli("publish", str(tmp / "run"), "vit_tiny_c10")


def _notebooks_into(tmp: Path) -> None:
    (tmp / "02_position_embeddings.ipynb").write_text("{}")
    cli("notebooks", str(tmp))


def _settings_file(tmp: Path, **settings) -> None:
    """``python -m vitlab train --config <tmp>/run.json`` with ``settings`` in the file."""
    (tmp / "run.json").write_text(json.dumps(settings))
    cli("train", "--config", str(tmp / "run.json"), "--out", str(tmp / "run"))


def _out_is(kind: str):
    """A CLI row: ``python -m vitlab train --out <tmp>/run``, where run is a file or a link to a missing folder."""
    def call(tmp: Path) -> None:
        if kind == "file":
            (tmp / "run").write_text("a user's notes")
        else:
            (tmp / "run").symlink_to(tmp / "missing")
        cli("train", "--out", str(tmp / "run"))
    return call


def _sweep(*flags: str):
    """A CLI row: ``python -m vitlab sweep *flags`` with its folders in the row's tmp."""
    return lambda tmp: cli("sweep", *flags, "--out", str(tmp / "runs"), "--results", str(tmp / "results"))


_AFTER_DATA = "after loading the data, a traceback: "

RUNS_ROWS: dict[str, Bad] = {
    "runs-out-is-a-file": Bad(
        _out_is("file"), SystemExit, "run is a file: pass a folder",
        before="PermissionError 'output folder <tmp>/run is not writable (File exists); choose another --out'"),
    "runs-out-is-a-dangling-symlink": Bad(
        _out_is("link"), SystemExit, "run is a dangling symlink to ",
        before="PermissionError 'output folder <tmp>/run is not writable (File exists); choose another --out'"),
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
        _train("--lr", "nan"), SystemExit, "--lr nan: must be a finite number",
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
    "runs-cutmix-odd-batch": Bad(
        _train("--cutmix", "1.0", "--batch-size", "127"), SystemExit, "--batch-size 127: must be even when --mixup",
        before="(new flag) timm's AssertionError 'Batch size should be even when using this' at the first step"),
    "runs-mix-prob-above-one": Bad(
        _train("--mixup", "0.8", "--mix-prob", "1.5"), SystemExit, "--mix-prob 1.5: must be a probability",
        before="(new flag) timm mixed every batch without a word"),
    "runs-checkpoint-every-negative": Bad(
        _train("--checkpoint-every", "-1"), SystemExit, "--checkpoint-every -1: must be 0",
        before="the same kind of line from the CLI; train(checkpoint_every=-1) checkpointed after every step"),
    "runs-eval-every-0": Bad(
        _train("--eval-every", "0"), SystemExit, "--eval-every 0: must be a whole number of epochs, 1 or more",
        before="(new flag)"),
    "runs-eval-every-negative": Bad(
        _train("--eval-every", "-3"), SystemExit, "--eval-every -3: must be a whole number of epochs",
        before="(new flag)"),
    "runs-eval-every-fraction-in-a-file": Bad(
        lambda tmp: _settings_file(tmp, eval_every=2.5), SystemExit, "--eval-every 2.5: must be a whole number",
        before="(new setting)"),
    "runs-sweep-eval-every-0": Bad(
        _sweep("--eval-every", "0"), SystemExit, "--eval-every 0: must be a whole number of epochs, 1 or more",
        before="(new flag)"),
    "runs-sweep-two-warmups": Bad(
        _sweep("--warmup-fraction", "0.1", "--warmup-epochs", "2"), SystemExit,
        "--warmup-fraction 0.1 and --warmup-epochs 2.0: give one", before="(new flag)"),
    "runs-sweep-warmup-over-the-shortest-run": Bad(
        _sweep("--sizes", "1000", "50000", "--warmup-epochs", "6"), SystemExit,
        "--warmup-epochs 6.0: must be 0..5 (the shortest run's epochs)", before="(new flag)"),
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
    "runs-publish-installed": Bad(
        _publish_installed, SystemExit, "package data of an installed vitlab; load your run by its path",
        before="(new in issue 30: no installed vitlab before)"),
    "runs-notebooks-existing": Bad(
        _notebooks_into, SystemExit, "holds 02_position_embeddings.ipynb already; copy into a new folder",
        before="(new in issue 30)"),
}


# ================================================================================================
# Model specs and weight files: load_model and friends (model-)
#
# Each file row builds its bad file in the row's fresh folder from a saved ``vit_micro_c10``
# (a few hundred kB), so the rows need no data, no zoo checkpoint and no network.


def _saved(tmp: Path) -> Path:
    """A complete ``model.safetensors`` with its sidecar ``model.json``."""
    return models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp / "model.safetensors")


def _load(path: Path, **kw) -> None:
    vitlab.load_model(path, device="cpu", **kw)


def _truncated_safetensors(tmp: Path) -> None:
    path = _saved(tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _load(path)


def _empty(tmp: Path, name: str, **kw) -> None:
    (tmp / name).write_bytes(b"")
    _load(tmp / name, **kw)


def _truncated_npz(tmp: Path) -> None:
    path = tmp / "ViT-micro.npz"
    np.savez(path, **{"embedding/kernel": np.zeros((8, 8, 3, 32), np.float32), "cls": np.zeros((1, 1, 32))})
    path.write_bytes(path.read_bytes()[:-100])  # an interrupted download
    _load(path)


def _npz_wrong_width(tmp: Path) -> None:
    """A Google ViT .npz whose ``embedding/kernel`` is twice as wide as every other array."""
    from test_models import _export_google_npz
    from timm.models.vision_transformer import VisionTransformer

    path = tmp / "ViT-micro.npz"
    _export_google_npz(VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=3), path)
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["embedding/kernel"] = np.zeros((8, 8, 3, 48), np.float32)
    np.savez(path, **arrays)
    _load(path)


def _deflated_pt(tmp: Path) -> None:
    """A state dict saved by torch.save, then zipped again with every member deflated."""
    import zipfile

    path = _state_dict_file(tmp)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    _load(path, arch="vit_micro_c10")


def _truncated_pt(tmp: Path) -> None:
    path = tmp / "weights.pt"
    torch.save(models.build_model({"zoo": "vit_micro_c10"}).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    _load(path, arch="vit_micro_c10")


def _folder(tmp: Path, name: str, with_run: bool = False) -> None:
    folder = tmp / name
    folder.mkdir()
    if with_run:
        _saved(folder)
    vitlab.load_model(str(folder), device="cpu")


def _sidecar(tmp: Path, edit) -> None:
    """Rewrite the sidecar of a good file with ``edit(meta)`` (or the text it returns), then load."""
    path = _saved(tmp)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    out = edit(meta)
    sidecar.write_text(out if isinstance(out, str) else json.dumps(meta))
    _load(path)


def _set(mapping: dict, **changes) -> None:
    for key, value in changes.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value


class _Touch:
    """Unpickling this object opens ``marker`` for writing: the file appears if anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled_pt(tmp: Path) -> None:
    """A .pt whose pickled object would create a marker file: refused, and the marker never appears."""
    marker = tmp / "unpickled-marker"
    path = tmp / "evil.pt"
    torch.save({"weight": _Touch(marker)}, path)
    try:
        _load(path, arch="vit_micro_c10")
    finally:
        if marker.exists():
            raise AssertionError(f"load_model unpickled {path}: {marker} appeared")


def _state_dict_file(tmp: Path) -> Path:
    path = tmp / "weights.pt"
    torch.save(models.build_model({"zoo": "vit_micro_c10"}).state_dict(), path)
    return path


MODELS_ROWS: dict[str, Bad] = {
    "model-safetensors-truncated": Bad(
        call=_truncated_safetensors, error=WeightsFileError, phrase="model.safetensors is truncated",
        before="SafetensorError: Error while deserializing header: incomplete metadata, file not fully "
               "covered (no path)"),
    "model-safetensors-empty": Bad(
        call=lambda tmp: _empty(tmp, "model.safetensors", arch="vit_micro_c10"), error=WeightsFileError,
        phrase="model.safetensors is empty (0 bytes)",
        before="SafetensorError: Error while deserializing header: header too small (no path)"),
    "model-npz-empty": Bad(
        call=lambda tmp: _empty(tmp, "ViT-B_16.npz"), error=WeightsFileError, phrase="ViT-B_16.npz is empty",
        before="EOFError: No data left in file (no path)"),
    "model-npz-truncated": Bad(
        call=_truncated_npz, error=WeightsFileError, phrase="ViT-micro.npz is truncated",
        before="zipfile.BadZipFile: File is not a zip file (no path)"),
    "model-npz-arrays-disagree": Bad(
        call=_npz_wrong_width, error=WeightsFileError,
        phrase="ViT-micro.npz: its arrays do not fit one ViT of width 48, 3 heads, MLP 96 and depth 1: embedding/bias",
        before="RuntimeError from timm's loader after building a model of width 48: 'The size of tensor a (48) must "
               "match the size of tensor b (24)' (no path); a crafted width inflates the array and builds first"),
    "model-pt-compressed-members": Bad(
        call=_deflated_pt, error=WeightsFileError,
        phrase="weights.pt has compressed members (weights/data.pkl, weights/.format_version",
        before="no error: every member inflated, however large it claims to be (a 1 MB file, 1 GiB of RSS)"),
    "model-pt-truncated": Bad(
        call=_truncated_pt, error=WeightsFileError, phrase="weights.pt is truncated",
        before="ValueError: <path> could not be read as a plain state dict with weights_only=True "
               "(RuntimeError); vitlab never unpickles arbitrary objects (blames pickling, not truncation)"),
    "model-folder-named-safetensors": Bad(
        call=lambda tmp: _folder(tmp, "x.safetensors"), error=FileNotFoundError,
        phrase="x.safetensors is a folder, not a weights file",
        before="FileNotFoundError: no weights file at <path> (though the path exists)"),
    "model-folder-plain": Bad(
        call=lambda tmp: _folder(tmp, "weights"), error=FileNotFoundError, phrase="is a folder, not a weights file",
        before="ValueError: '<path>' is neither a file, a zoo name (...) nor a timm model name"),
    "model-folder-of-a-run": Bad(
        call=lambda tmp: _folder(tmp, "run", with_run=True), error=FileNotFoundError,
        phrase="pass a weights file in it:",
        before="ValueError: '<path>' is neither a file, a zoo name (...) nor a timm model name"),
    "model-missing-file": Bad(
        call=lambda tmp: _load(tmp / "missing.safetensors"), error=FileNotFoundError,
        phrase="no weights file at",
        before="FileNotFoundError: no weights file at <path> (already clear)"),
    "model-unsupported-suffix": Bad(
        call=lambda tmp: ((tmp / "w.bin").write_bytes(b"x"), _load(tmp / "w.bin")), error=ValueError,
        phrase="unsupported weights format '.bin'",
        before="ValueError: <path>: unsupported weights format '.bin'; use one of (...) (already clear)"),
    "model-pretrained-tag-unknown": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_patch16_224.nonexistent_tag", device="cpu"),
        error=ValueError, phrase="vit_tiny_patch16_224 has no pretrained tag 'nonexistent_tag'; its tags are",
        before="RuntimeError: Invalid pretrained tag (nonexistent_tag) for vit_tiny_patch16_224. (from timm; "
               "describe_load raised it too)"),
    "model-sidecar-invalid-json": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: "{not json"), error=WeightsFileError,
        phrase="model.json is not valid JSON",
        before="json.JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
               "(no path)"),
    "model-sidecar-not-an-object": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: "[1, 2]"), error=WeightsFileError,
        phrase="model.json holds a JSON list, not an object",
        before="TypeError: list indices must be integers or slices, not str"),
    "model-sidecar-without-architecture": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta, architecture=None)), error=WeightsFileError,
        phrase="model.json has no 'architecture' key",
        before="KeyError: 'architecture'"),
    "model-sidecar-unknown-zoo-architecture": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta, architecture={"zoo": "vit_nope_c10"})),
        error=WeightsFileError, phrase="key 'architecture': unknown zoo architecture 'vit_nope_c10'",
        before="KeyError: 'vit_nope_c10'"),
    "model-sidecar-unknown-timm-model": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta, architecture={"timm": "vit_nope", "kwargs": {}})),
        error=WeightsFileError, phrase="key 'architecture': 'vit_nope' is not a zoo or timm model name",
        before="RuntimeError: Unknown model (vit_nope) (from timm, no path)"),
    "model-sidecar-zoo-config-wrong-fields": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: meta["architecture"]["config"].update(width=3)),
        error=WeightsFileError, phrase="is not a CifarViT: unknown fields width",
        before="TypeError: CifarViT.__init__() got an unexpected keyword argument 'width' (no path)"),
    "model-sidecar-newer-format": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta, format=99)), error=WeightsFileError,
        phrase="upgrade vitlab",
        before="loaded without a word about the unknown format"),
    "model-sidecar-cfg-mean-two-numbers": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], mean=[0.5, 0.5])),
        error=WeightsFileError, phrase="key 'pretrained_cfg' 'mean' must be three numbers",
        before="loaded; preprocess then raised RuntimeError: shape '[1, 3, 1, 1]' is invalid for input of size 2"),
    "model-sidecar-cfg-std-zero": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], std=[0.2, 0, 0.2])),
        error=WeightsFileError, phrase="'std' must be > 0",
        before="loaded; preprocess then returned non-finite pixels (divided by 0)"),
    "model-sidecar-cfg-std-text": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], std="0.2")),
        error=WeightsFileError, phrase="'std' must be three numbers",
        before="loaded; preprocess then raised TypeError: new(): invalid data type 'str'"),
    "model-sidecar-cfg-input-size": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], input_size=[3, -32, 32])),
        error=WeightsFileError, phrase="'input_size' must be three positive integers",
        before="loaded; preprocess then raised RuntimeError: Input and output sizes should be greater than 0"),
    "model-sidecar-cfg-interpolation": Bad(
        call=lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], interpolation="cubicish")),
        error=WeightsFileError, phrase="'interpolation' must be one of",
        before="loaded; preprocess silently used bicubic, timm.data.create_transform raised KeyError: 'cubicish'"),
    "model-zoo-name-typo": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c1", device="cpu"), error=ValueError,
        phrase="Did you mean vit_tiny_c10",
        before="ValueError: ... Did you mean vit_tiny_c10, ...? (already behaved)"),
    "model-pt-pickled-object-never-unpickled": Bad(
        call=_pickled_pt, error=ValueError, phrase="vitlab never unpickles",
        before="ValueError: ... could not be read as a plain state dict with weights_only=True (already "
               "behaved; the marker file never appeared)"),
    "model-arch-unknown": Bad(
        call=lambda tmp: _load(_state_dict_file(tmp), arch="vit_nope_c10"), error=ValueError,
        phrase="arch='vit_nope_c10' is not a zoo or timm model name",
        before="RuntimeError: Unknown model (vit_nope_c10) (from timm)"),
    "model-arch-bad-tag": Bad(
        call=lambda tmp: _load(_state_dict_file(tmp), arch="vit_tiny_patch16_224.nope"), error=ValueError,
        phrase="has no pretrained tag 'nope'",
        before="RuntimeError: Invalid pretrained tag (nope) for vit_tiny_patch16_224. (from timm)"),
    "model-arch-zoo-with-timm-arguments": Bad(
        call=lambda tmp: _load(_state_dict_file(tmp), arch="vit_micro_c10", img_size=64), error=TypeError,
        phrase="zoo architecture and takes no extra arguments",
        before="loaded at 32x32, img_size=64 silently ignored"),
    "model-file-with-extra-arguments": Bad(
        call=lambda tmp: _load(_saved(tmp), img_size=64), error=TypeError, phrase="are used only with arch=",
        before="loaded at 32x32, img_size=64 silently ignored"),
    "model-arch-with-a-name-spec": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", arch="vit_small_c10", device="cpu"), error=TypeError,
        phrase="names the architecture of a weights file",
        before="loaded vit_tiny_c10, arch= silently ignored"),
    "model-zoo-with-extra-arguments": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", pretrained=False, device="cpu"), error=TypeError,
        phrase="for random weights use vitlab.models.build_model",
        before="TypeError: zoo models take no extra arguments, got ['pretrained'] (no name, no way out)"),
    "model-num-classes-negative": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", num_classes=-1, device="cpu"), error=ValueError,
        phrase="num_classes must be 0 or more",
        before="loaded with no head (timm treats -1 as 0) and num_classes=-1 recorded"),
    "model-num-classes-float": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", num_classes=2.5, device="cpu"), error=TypeError,
        phrase="num_classes must be a whole number",
        before="TypeError: empty(): argument 'size' ... must be tuple of ints, but found element of type float"),
    "model-device-unknown": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", device="gpu"), error=ValueError,
        phrase="device='gpu' is not a torch device",
        before="RuntimeError: Expected one of cpu, cuda, ipu, xpu, ... device type at start of device string: gpu"),
    "model-device-absent-gpu": Bad(
        call=lambda tmp: vitlab.load_model("vit_tiny_c10", device="cuda:99"), error=ValueError,
        phrase="device='cuda:99' but this machine has",
        before="model built and loaded, then .to('cuda:99') raised RuntimeError: Found no NVIDIA driver on your "
               "system (CPU machine)"),
    "model-spec-empty": Bad(
        call=lambda tmp: vitlab.load_model("", device="cpu"), error=ValueError, phrase="spec is empty",
        before="ValueError: '' is neither a file, a zoo name (...) nor a timm model name"),
    "model-spec-none": Bad(
        call=lambda tmp: vitlab.load_model(None, device="cpu"), error=TypeError,
        phrase="spec must be a zoo name, timm name or file path",
        before="TypeError: expected str, bytes or os.PathLike object, not NoneType"),
    "model-record-unknown-zoo": Bad(
        call=lambda tmp: models.build_model({"zoo": "vit_tiny_c1"}), error=ValueError,
        phrase="unknown zoo architecture 'vit_tiny_c1'. Did you mean vit_tiny_c10",
        before="KeyError: 'vit_tiny_c1'"),
}


# ================================================================================================
# Images fed to models, capture and metrics (input-)
#
# Each row builds a tiny random-weight timm ViT (as the ``tiny_vit`` fixture does) and feeds
# it, or a metric, one bad thing. ``before`` is what the same call did on the code before
# issue 12.


def _vit(**kw) -> torch.nn.Module:
    """A 2-block ViT on 32x32 inputs with 8-pixel patches (4x4 grid), 3 heads; its cfg's mean/std are 0.5."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                              depth=2, num_heads=3, num_classes=5, **kw).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    return model


def _floats_0_255(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size)).float()


def _uint8(n: int = 2, size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def _with(value: float) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32).clamp(-1, 1)
    x[1, 2, 5, 7] = value
    return x


def _forward_inside_hooks(x: torch.Tensor) -> None:
    model = _vit()
    with hooks(model):
        model(x)


def _forward_inside_layer_hooks(x: torch.Tensor) -> None:
    model = _vit()
    with layer_hooks(model):
        model(x)


def _attn(batch: int = 2) -> torch.Tensor:
    """Random post-softmax attention (B, 3 heads, 17, 17): a 4x4 grid with a class token."""
    return torch.softmax(torch.randn(batch, 3, 17, 17), -1)


def _torchvision_vit() -> torch.nn.Module:
    """torchvision's VisionTransformer (vit_b_16's class), one 8-wide block."""
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                                                hidden_dim=8, mlp_dim=8)


def _features(bad: float | None = None, rows: int = 10) -> torch.Tensor:
    x = torch.randn(rows, 5)
    if bad is not None:
        x[2, 1] = bad
    return x


INPUTS_ROWS: dict[str, Bad] = {
    # --- images into capture / hooks / head_statistics ---------------------------------
    "input-capture-float-0-255": Bad(
        call=lambda tmp: capture(_vit(), _floats_0_255()), error=ValueError,
        phrase="pass uint8 images (0..255) or call vitlab.preprocess(model, images)",
        before="no error: the forward ran on 0..255 floats and returned meaningless attention and logits"),
    "input-hooks-float-0-255": Bad(
        call=lambda tmp: _forward_inside_hooks(_floats_0_255()), error=ValueError, phrase="vitlab.preprocess",
        before="no error: the forward ran on 0..255 floats inside vitlab.analysis.capture"),
    "input-head-statistics-float-0-255": Bad(
        call=lambda tmp: head_statistics(_vit(), _floats_0_255(5), batch_size=2), error=ValueError,
        phrase="far outside the model's normalised range",
        before="no error: returned distance/entropy statistics of 0..255 floats"),
    "input-layer-hooks-float-0-255": Bad(
        call=lambda tmp: _forward_inside_layer_hooks(_floats_0_255()), error=ValueError,
        phrase="vitlab.preprocess",
        before="no error: the forward ran on 0..255 floats inside vitlab.analysis.features.layer_hooks"),
    "input-capture-nan": Bad(
        call=lambda tmp: capture(_vit(), _with(float("nan"))), error=ValueError, phrase="images contain NaN",
        before="no error: a Capture whose attention and logits were NaN"),
    "input-capture-inf": Bad(
        call=lambda tmp: capture(_vit(), _with(float("inf"))), error=ValueError, phrase="images contain inf",
        before="no error: a Capture whose attention and logits were NaN"),
    "input-capture-empty-batch": Bad(
        call=lambda tmp: capture(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="no error: a Capture of 0 images (logits (0, 5))"),
    "input-head-statistics-empty-batch": Bad(
        call=lambda tmp: head_statistics(_vit(), _uint8(n=0)), error=ValueError, phrase="empty batch",
        before="ValueError: no batch was added"),
    "input-head-statistics-no-batches": Bad(
        call=lambda tmp: head_statistics(_vit(), iter([])), error=ValueError, phrase="images gave no batches",
        before="ValueError: no batch was added"),
    "input-head-statistics-batch-size-0": Bad(
        call=lambda tmp: head_statistics(_vit(), _uint8(), batch_size=0), error=ValueError,
        phrase="batch_size must be a positive integer",
        before="ValueError: range() arg 3 must not be zero"),
    "input-capture-fixed-size-model-wrong-size": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 40, 40).clamp(-1, 1)), error=ValueError,
        phrase="images are 40x40 pixels, but the model takes 32x32",
        before="AssertionError: Input height (40) doesn't match model (32). (timm)"),
    "input-capture-size-not-multiple-of-patch": Bad(
        call=lambda tmp: capture(_vit(dynamic_img_size=True), torch.randn(1, 3, 30, 30).clamp(-1, 1)),
        error=ValueError, phrase="30x30 pixels, not a multiple of the model's 8x8 patch size",
        before="AssertionError: Input height (30) should be divisible by patch size (8). (timm)"),
    "input-capture-uint8-size-not-multiple-of-patch": Bad(
        call=lambda tmp: capture(_vit(dynamic_img_size=True), _uint8(size=30)), error=ValueError,
        phrase="resizes to 32x32",
        before="AssertionError: Input height (30) should be divisible by patch size (8). (timm; a dynamic-size "
               "model keeps uint8 images at their size)"),
    "input-capture-grayscale-float": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(2, 1, 32, 32).clamp(-1, 1)), error=ValueError,
        phrase="images have 1 channel, but the model takes 3",
        before="RuntimeError: Given groups=1, weight of size [24, 3, 8, 8], expected input[2, 1, 32, 32] to have 3 "
               "channels, but got 1 channels instead"),
    "input-capture-grayscale-uint8": Bad(
        call=lambda tmp: capture(_vit(), _uint8(channels=1)), error=ValueError, phrase="images.expand(-1, 3, -1, -1)",
        before="ValueError: images must have shape (N, 3, H, W), got (2, 1, 32, 32) (from preprocess)"),
    "input-capture-one-image-3d": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(3, 32, 32).clamp(-1, 1)), error=ValueError,
        phrase="for one image pass images[None]",
        before="ValueError: not enough values to unpack (expected 4, got 3)"),
    "input-capture-numpy-array": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 32, 32).numpy()), error=TypeError,
        phrase="torch.from_numpy",
        before="TypeError: conv2d() received an invalid combination of arguments - got (numpy.ndarray, ...) "
               "(a multi-line message)"),
    "input-capture-int64-images": Bad(
        call=lambda tmp: capture(_vit(), torch.randint(0, 256, (1, 3, 32, 32))), error=TypeError,
        phrase="pass uint8 images",
        before="RuntimeError: Input type (long int) and bias type (float) should be the same"),
    "input-capture-float64-images": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 32, 32, dtype=torch.float64).clamp(-1, 1)),
        error=TypeError, phrase="pass images.to(torch.float32)",
        before="RuntimeError: Input type (double) and bias type (float) should be the same"),
    "input-capture-layers-int": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=-1), error=TypeError, phrase="pass [-1]",
        before="TypeError: 'int' object is not iterable"),
    "input-capture-layer-out-of-range": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=[5]), error=ValueError,
        phrase="layers [5] out of range: the model has 2 blocks",
        before="ValueError: layers [5] out of range: the model has 2 blocks (0..1, or negative) (already clear)"),
    "input-capture-layer-not-captured": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=[-1]).attn[0], error=KeyError,
        phrase="layer 0 was not captured",
        before="KeyError: layer 0 was not captured; captured: [1] (already clear)"),
    # --- features ------------------------------------------------------------------------
    "input-layer-features-empty-batch": Bad(
        call=lambda tmp: layer_features(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="no error: a Features holding no vectors"),
    "input-pre-logits-empty-batch": Bad(
        call=lambda tmp: pre_logits(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="RuntimeError: torch.cat(): expected a non-empty list of Tensors"),
    "input-layer-features-batch-size-0": Bad(
        call=lambda tmp: layer_features(_vit(), _uint8(), batch_size=0), error=ValueError,
        phrase="batch_size must be a positive integer",
        before="ValueError: range() arg 3 must not be zero"),
    "input-layer-features-float": Bad(
        call=lambda tmp: layer_features(_vit(), _floats_0_255()), error=TypeError, phrase="images must be uint8",
        before="TypeError: images must be a uint8 tensor (N, 3, H, W) with values 0..255 (already clear)"),
    # --- attention metrics ----------------------------------------------------------------
    "input-rollout-one-tensor": Bad(
        call=lambda tmp: attention_maps.attention_rollout(_attn()), error=TypeError, phrase="pass [attn] or cap.attn",
        before="RuntimeError: Boolean value of Tensor with more than one value is ambiguous"),
    "input-rollout-one-image-maps": Bad(
        call=lambda tmp: attention_maps.attention_rollout([_attn()[0], _attn()[0]]), error=ValueError,
        phrase="pass [a[None] for a in maps]",
        before="ValueError: not enough values to unpack (expected 4, got 3)"),
    "input-mean-attention-distance-wrong-token-count": Bad(
        call=lambda tmp: metrics.mean_attention_distance(_attn(), (4, 4), (8, 8), 0), error=ValueError,
        phrase="attn has 17 tokens",
        before="ValueError: attn has 17 tokens; a (4, 4) grid with 0 prefix tokens needs 16 (already clear; a "
               "grid of the right product but wrong shape is undetectable: use vitlab.analysis.capture.attention_distance)"),
    "input-query-head-out-of-range": Bad(
        call=lambda tmp: attention_maps.query_attention(_attn()[0], (4, 4), 1, (0, 0), head=7), error=ValueError,
        phrase="head 7 is out of range: the attention has 3 heads",
        before="IndexError: index 7 is out of bounds for dimension 0 with size 3"),
    "input-query-patch-outside-grid": Bad(
        call=lambda tmp: attention_maps.query_attention(_attn()[0], (4, 4), 1, (4, 0)), error=ValueError,
        phrase="query patch (4, 0) is outside the 4x4 grid",
        before="ValueError: query patch (4, 0) is outside the 4x4 grid (already clear)"),
    "input-query-batch-attention": Bad(
        call=lambda tmp: attention_maps.query_attention(_attn(), (4, 4), 1, (0, 0)), error=ValueError,
        phrase="pass attn[i]",
        before="ValueError: attention must be one image's (heads, 17, 17) ..., got (2, 3, 17, 17) (no hint what "
               "to pass)"),
    "input-class-token-attention-mapping": Bad(
        call=lambda tmp: attention_maps.class_token_attention({0: _attn()[0], 1: _attn()[0]}, (4, 4), 1), error=TypeError,
        phrase="cap.attn.values()",
        before="AttributeError: 'int' object has no attribute 'ndim'"),
    # --- model families ------------------------------------------------------------------
    "input-model-family-torchvision-vit": Bad(
        call=lambda tmp: representations.model_family(_torchvision_vit()), error=ValueError,
        phrase="cannot tell the family of VisionTransformer (torchvision.models.vision_transformer): vitlab knows "
               "'vit' and 'hybrid'",
        before='no error: "resnet" (any model without .blocks was called a ResNet)'),
    "input-model-family-plain-cnn": Bad(
        call=lambda tmp: representations.model_family(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))), error=ValueError,
        phrase="pass family= to name it",
        before='no error: "resnet"'),
    # --- CKA ----------------------------------------------------------------------------
    "input-cka-nan-x": Bad(
        call=lambda tmp: representations.cka(_features(float("nan")), _features()), error=ValueError,
        phrase="x contains NaN",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-nan-y": Bad(
        call=lambda tmp: representations.cka(_features(), _features(float("nan"))), error=ValueError,
        phrase="y contains NaN",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-inf": Bad(
        call=lambda tmp: representations.cka(_features(float("inf")), _features(), unbiased=True), error=ValueError,
        phrase="x contains inf",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-rows": Bad(
        call=lambda tmp: representations.cka(_features(), _features(rows=8)), error=ValueError,
        phrase="x and y must hold the same examples: 10 vs 8 rows",
        before="ValueError: x and y must hold the same examples: 10 vs 8 rows (already clear)"),
    "input-minibatch-cka-rows": Bad(
        call=lambda tmp: representations.MinibatchCKA(1, 1).update([_features()], [_features(rows=8)]), error=ValueError,
        phrase="xs[0] and ys[0] must hold the same examples: 10 vs 8 rows",
        before="RuntimeError: mat1 and mat2 shapes cannot be multiplied (10x10 and 8x8)"),
    "input-minibatch-cka-nan": Bad(
        call=lambda tmp: representations.MinibatchCKA(1, 2).update([_features()], [_features(), _features(float("nan"))]),
        error=ValueError, phrase="ys[1] contains NaN",
        before="no error: NaN added to the running sums, so compute() gave NaN"),
}


# ================================================================================================
# The dataset copy, subsets and sweep result files (data-)


def _imagefolder(tmp: Path, suffix: str = ".png") -> Path:
    """A one-image-per-class ImageFolder copy in ``tmp``; returns the root to pass as ``root=``."""
    for split in data.SPLITS:
        for label, cls in enumerate(data.CLASSES):
            folder = tmp / "cifar10" / split / cls
            folder.mkdir(parents=True)
            pixels = np.random.default_rng(label).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"0000{suffix}")
    return tmp


def _broken_image(tmp: Path, content: bytes | None = None, suffix: str = ".jpg") -> None:
    """Decode the test split of a copy whose ``test/dog/0000`` image is cut to ``content`` (half when None)."""
    root = _imagefolder(tmp, suffix)
    path = root / "cifar10" / "test" / "dog" / f"0000{suffix}"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    data.cifar10("test", root=root, download=False)


def _wrong_size(tmp: Path) -> None:
    root = _imagefolder(tmp)
    Image.new("RGB", (64, 48)).save(root / "cifar10" / "test" / "dog" / "0000.png")
    data.cifar10("test", root=root, download=False)


def _class_folder(tmp: Path, empty: bool) -> None:
    root = _imagefolder(tmp)
    truck = root / "cifar10" / "test" / "truck"
    (truck / "0000.png").unlink()
    if not empty:
        truck.rmdir()
    data.cifar10("test", root=root, download=False)


def _link_loop(tmp: Path, where: str) -> None:
    """Decode the test split of a copy whose ``cifar10/<where>`` (an image, a class or a split) links to itself."""
    root = _imagefolder(tmp)
    path = root / "cifar10" / where
    if path.is_dir():
        shutil.rmtree(path)
    path.symlink_to(path.name)
    data.cifar10("test", root=root, download=False)


def _root_is_a_file(tmp: Path) -> None:
    (tmp / "cifar10.zip").write_bytes(b"PK")
    data.cifar10("train", root=tmp / "cifar10.zip")


def _torn_batch(tmp: Path) -> None:
    from conftest import make_batches

    make_batches(tmp)
    batch = tmp / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    data.cifar10("test", root=tmp, download=False)


def _subset(size) -> None:
    data.stratified_subset(torch.arange(10).repeat_interleave(50), size)


def _results(tmp: Path, tag: str = "") -> Path:
    """A results file of one run (and its probe) in ``tmp``; returns ``<results><tag>.json``."""
    results = tmp / "results" / "sweep"
    run = records.RunRecord(model="vit_micro_c10", family="vit", subset_size=100, seed=0, epochs=2,
                            test_accuracy=0.3, batch_size=50)
    result_files.write_runs(results, [run], ["python -m vitlab sweep"])
    probe = records.RunProbe(model=run.model, family="vit", subset_size=100, seed=0, epochs=2, batch_size=50,
                             layer="pre_logits", pooling="head", fewshot={1: 0.2}, probe_setting={})
    result_files.write_run_probes(results, [probe], ["python -m vitlab sweep"])
    return Path(f"{results}{tag}.json")


def _torn_results(tmp: Path, tag: str = "", text: str | None = None) -> Path:
    path = _results(tmp, tag)
    path.write_text(path.read_text()[:120] if text is None else text)
    return path.parent / "sweep"


def _csv_without_json(tmp: Path) -> None:
    _results(tmp).unlink()
    result_files.read_runs(tmp / "results" / "sweep")


def _results_with(tmp: Path, **fields) -> Path:
    """A results file whose one run has ``fields`` (e.g. a size that is no number); returns the results path."""
    path = _results(tmp)
    stored = json.loads(path.read_text())
    stored["runs"][0].update(fields)
    path.write_text(json.dumps(stored))
    return path.parent / "sweep"


def _sweep_results_with(tmp: Path, **fields) -> None:
    results = _results_with(tmp, **fields)
    sweep(SweepConfig(models=("vit_micro_c10",), sizes=(100,), seeds=(0,), epochs=1, min_samples=100,
                      batch_size=50, monitor_size=50, out=str(tmp / "runs"), results=str(results)))


def _sweep_torn_results(tmp: Path) -> None:
    results = _torn_results(tmp)
    sweep(SweepConfig(models=("vit_micro_c10",), sizes=(100,), seeds=(0,), epochs=1, min_samples=100,
                      batch_size=50, monitor_size=50, out=str(tmp / "runs"), results=str(results)))


DATA_ROWS: dict[str, Bad] = {
    "data-truncated-jpeg": Bad(
        call=lambda tmp: _broken_image(tmp), error=data.CorruptDataError, phrase="dog/0000.jpg is not a readable image",
        before="OSError: 'Truncated File Read' (no path; with PIL's LOAD_TRUNCATED_IMAGES set: grey pixels, no error)"),
    "data-image-not-an-image": Bad(
        call=lambda tmp: _broken_image(tmp, b"<html>404 not found</html>"), error=data.CorruptDataError,
        phrase="replace it with a good copy or delete it",
        before="PIL.UnidentifiedImageError: cannot identify image file '<path>' (no advice)"),
    "data-image-empty-file": Bad(
        call=lambda tmp: _broken_image(tmp, b""), error=data.CorruptDataError, phrase="dog/0000.jpg",
        before="PIL.UnidentifiedImageError: cannot identify image file '<path>' (no advice)"),
    "data-image-wrong-size": Bad(
        call=_wrong_size, error=data.CorruptDataError, phrase="is 64x48; CIFAR-10 images are 32x32: resize it",
        before="ValueError: '<path> is 64x48; CIFAR-10 images are 32x32' (no advice)"),
    "data-class-folder-missing": Bad(
        call=lambda tmp: _class_folder(tmp, empty=False), error=data.DataNotFoundError, phrase="missing ['truck']",
        before="DataNotFoundError: '<folder> must hold exactly the 10 CIFAR-10 class folders [...]; found [nine "
               "names]' (which one was missing left to the reader)"),
    "data-class-folder-empty": Bad(
        call=lambda tmp: _class_folder(tmp, empty=True), error=data.DataNotFoundError, phrase="truck holds no images",
        before="no error: a test split of 9 classes, silently"),
    "data-image-link-loop": Bad(
        call=lambda tmp: _link_loop(tmp, "test/dog/0001.png"), error=data.CorruptDataError,
        phrase="dog/0001.png is a symbolic link loop (it leads back to itself): remove the link",
        before="OSError: '[Errno 40] Too many levels of symbolic links: <path>' (raw ELOOP, a traceback from the CLI)"),
    "data-class-folder-link-loop": Bad(
        call=lambda tmp: _link_loop(tmp, "test/dog"), error=data.CorruptDataError,
        phrase="test/dog is a symbolic link loop",
        before="DataNotFoundError: '... missing ['dog'] ...' (the loop read as an absent class folder)"),
    "data-split-folder-link-loop": Bad(
        call=lambda tmp: _link_loop(tmp, "test"), error=data.CorruptDataError,
        phrase="cifar10/test is a symbolic link loop",
        before="the loop read as no copy at all: CIFAR-10 'not found', and a download started into the folder"),
    "data-root-is-a-file": Bad(
        call=_root_is_a_file, error=data.DataNotFoundError, phrase="cifar10.zip is a file, not a folder",
        before="DataNotFoundError after a download attempt (FileExistsError: File exists), a 6-line message"),
    "data-torn-batch-file": Bad(
        call=_torn_batch, error=data.CorruptDataError, phrase="test_batch is not a readable CIFAR-10 batch",
        before="_pickle.UnpicklingError: 'pickle data was truncated' (no path)"),
    "data-subset-float": Bad(
        call=lambda tmp: _subset(100.0), error=TypeError, phrase="must be an integer count of images, got 100.0",
        before="TypeError: 'slice indices must be integers or None or have an __index__ method'"),
    "data-subset-fraction": Bad(
        call=lambda tmp: _subset(0.5), error=TypeError, phrase="for a fraction of the 500 labels pass round(0.5 * 500)",
        before="TypeError: 'slice indices must be integers or None or have an __index__ method'"),
    "data-subset-bool": Bad(
        call=lambda tmp: _subset(True), error=TypeError, phrase="must be an integer count of images, got True",
        before="no error: a subset of 1 image"),
    "data-subset-zero": Bad(
        call=lambda tmp: _subset(0), error=ValueError, phrase="subset size must be in 1..500",
        before="ValueError: 'subset size must be in 1..500, got 0' (already clear)"),
    "data-subset-negative": Bad(
        call=lambda tmp: _subset(-5), error=ValueError, phrase="got -5",
        before="ValueError: 'subset size must be in 1..500, got -5' (already clear)"),
    "data-subset-too-large": Bad(
        call=lambda tmp: _subset(501), error=ValueError, phrase="1..500 (the number of labels), got 501",
        before="ValueError: 'subset size must be in 1..500, got 501' (already clear)"),
    "data-results-torn-json": Bad(
        call=lambda tmp: result_files.read_runs(_torn_results(tmp)), error=result_files.ResultsFileError,
        phrase="sweep.json is not a complete results file",
        before="json.JSONDecodeError: 'Unterminated string starting at: line 10 column 3 (char 113)' (no path)"),
    "data-results-torn-fewshot-json": Bad(
        call=lambda tmp: result_files.read_run_probes(_torn_results(tmp, result_files.FEWSHOT_TAG)),
        error=result_files.ResultsFileError, phrase="sweep-fewshot.json is not a complete results file",
        before="json.JSONDecodeError: 'Unterminated string starting at: line 10 column 3 (char 113)' (no path)"),
    "data-results-empty-json": Bad(
        call=lambda tmp: result_files.read_commands(_torn_results(tmp, text="")), error=result_files.ResultsFileError,
        phrase="restore it (from git or a backup)",
        before="json.JSONDecodeError: 'Expecting value: line 1 column 1 (char 0)' (no path)"),
    "data-results-not-records": Bad(
        call=lambda tmp: result_files.read_runs(_torn_results(tmp, text=json.dumps([{"model": "m"}]))),
        error=result_files.ResultsFileError, phrase='not an object with a "runs" list',
        before="TypeError: 'list indices must be integers or slices, not str'"),
    "data-results-run-lacks-fields": Bad(
        call=lambda tmp: result_files.read_runs(_torn_results(tmp, text=json.dumps({"runs": [{"model": "m"}]}))),
        error=result_files.ResultsFileError, phrase="run 0: RunRecord.__init__() missing",
        before="TypeError: 'RunRecord.__init__() missing 5 required keyword-only arguments: ...' (no path)"),
    "data-results-csv-without-json": Bad(
        call=_csv_without_json, error=result_files.ResultsFileError, phrase="sweep.csv holds results but sweep.json",
        before="no error: read as no runs, so a sweep retrains everything and overwrites the .csv"),
    "data-results-size-no-number": Bad(
        call=lambda tmp: result_files.read_runs(_results_with(tmp, subset_size="many")),
        error=result_files.ResultsFileError,
        phrase="sweep.json run 0: field subset_size 'many': must be a whole number, not a str; correct it there",
        before="read as a run of 'many' images; a sweep crashed only after training (issue 28)"),
    "data-results-accuracy-no-number": Bad(
        call=lambda tmp: result_files.read_runs(_results_with(tmp, test_accuracy=[0.5])),
        error=result_files.ResultsFileError, phrase="field test_accuracy [0.5]: must be a number, not a list",
        before="read as it was: a list for an accuracy"),
    "data-sweep-results-size-no-number": Bad(
        call=lambda tmp: _sweep_results_with(tmp, subset_size="many"), error=result_files.ResultsFileError,
        phrase="sweep.json run 0: field subset_size 'many'",
        before="accepted; the sweep crashed after training"),
    "data-sweep-torn-results": Bad(
        call=_sweep_torn_results, error=result_files.ResultsFileError, phrase="sweep.json is not a complete results file",
        before="DataNotFoundError here (the data were loaded first); with data: json.JSONDecodeError, no path"),
}


# ================================================================================================
# Your own images: vitlab.data.images (issue 29; images-)
#
# ``before``: vitlab.data.images did not exist; what reading the same file with PIL as a notebook
# did is noted where it differs.


def _photos(tmp: Path, *extra: tuple[str, bytes]) -> Path:
    """A folder of two small photos (from the shipped samples) and the ``extra`` files; returns the folder."""
    folder = tmp / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "rocket.jpg"):
        shutil.copy(data.SAMPLES_DIR / name, folder / name)
    for name, content in extra:
        (folder / name).write_bytes(content)
    return folder


def _empty_folder(tmp: Path) -> None:
    (tmp / "photos").mkdir()
    (tmp / "photos" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images
    data.images(tmp / "photos")


def _one_pixel(tmp: Path) -> None:
    Image.new("RGB", (1, 1), (200, 30, 10)).save(tmp / "dot.png")
    data.images([data.SAMPLES_DIR / "cat.jpg", tmp / "dot.png"], size=32)


IMAGES_ROWS: dict[str, Bad] = {
    "images-folder-without-images": Bad(
        call=_empty_folder, error=data.ImageInputError, phrase="photos holds no image files",
        before="no function; an explorer shown no images failed later, inside a plot"),
    "images-non-image-among-images": Bad(
        call=lambda tmp: data.images(_photos(tmp, ("notes.txt", b"taken in May"))), error=data.ImageInputError,
        phrase="notes.txt is not an image (PIL cannot identify it): leave it out",
        before="PIL.UnidentifiedImageError: cannot identify image file '<path>' (no advice)"),
    "images-truncated-jpeg": Bad(
        call=lambda tmp: data.images(_photos(tmp, ("cut.jpg", (data.SAMPLES_DIR / "cat.jpg").read_bytes()[:5000]))),
        error=data.ImageInputError, phrase="cut.jpg is not a readable image",
        before="OSError: 'image file is truncated' (no path); grey pixels where LOAD_TRUNCATED_IMAGES was set"),
    "images-one-pixel": Bad(
        call=_one_pixel, error=data.ImageInputError, phrase="dot.png is 1x1 pixels, too small to show anything",
        before="no function; resized, a 1x1 image became a flat square of one colour"),
    "images-missing-file": Bad(
        call=lambda tmp: data.images([data.SAMPLES_DIR / "cat.jpg", tmp / "dog.jpg"]), error=FileNotFoundError,
        phrase="dog.jpg does not exist", before="no function"),
    "images-sizes-differ-without-size": Bad(
        call=lambda tmp: data.images([data.SAMPLES_DIR / "cat.jpg", data.SAMPLES_DIR / "cifar10_cat.jpg"]),
        error=data.ImageInputError, phrase="the images differ in size (cat.jpg 224x224, cifar10_cat.jpg 32x32",
        before="no function; torch.stack raised 'stack expects each tensor to be equal size'"),
    "images-model-without-cfg": Bad(
        call=lambda tmp: data.images(data.SAMPLES_DIR / "cat.jpg", model=torch.nn.Linear(2, 2)), error=TypeError,
        phrase="model has no usable pretrained_cfg", before="no function"),
    "images-size-zero": Bad(
        call=lambda tmp: data.images(data.SAMPLES_DIR / "cat.jpg", size=0), error=ValueError,
        phrase="size must be a whole number of pixels >= 1, got 0", before="no function"),
}


# ================================================================================================
# Hostile input files: settings files, deeply nested JSON (issue 28; hostile-)
#
# A settings file's values go through the checks the flags do, and JSON (or TOML) nested
# deeper than Python's recursion limit is refused as the file it is in. Each row must also
# be refused quickly: ``_quick`` fails it when the call spends 5 CPU seconds or more.


def _quick(call: Callable[[Path], Any], limit: float = 5.0) -> Callable[[Path], Any]:
    """``call``, failing with AssertionError (not the row's error) when it spends ``limit`` CPU seconds or more.

    CPU time, not wall time: a machine busy with other work must not fail the row; building or allocating the
    model the file describes (what these rows guard against) costs CPU time wherever it runs."""
    def timed(tmp: Path) -> Any:
        start = time.process_time()
        try:
            return call(tmp)
        finally:
            if (spent := time.process_time() - start) >= limit:
                raise AssertionError(f"refused after {spent:.1f} CPU s, not within {limit} s")
    return timed


def _settings_text(name: str, text: str, *flags: str) -> Callable[[Path], Any]:
    """``python -m vitlab train --config <tmp>/<name>`` holding ``text``."""
    def call(tmp: Path) -> None:
        (tmp / name).write_text(text)
        cli("train", "--config", str(tmp / name), *flags, "--out", str(tmp / "run"))
    return call


def _deep(depth: int = 100_000) -> str:
    """A JSON (and TOML) array nested ``depth`` deep: far past Python's recursion limit."""
    return "[" * depth + "]" * depth


def _deep_safetensors(tmp: Path) -> None:
    header = _deep().encode()
    (tmp / "deep.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    _load(tmp / "deep.safetensors", arch="vit_micro_c10")


def _deep_metrics_line(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / run_folder.METRICS_LOG).write_text(_deep() + "\n" + json.dumps({"step": 1}) + "\n")
    run_folder.read_metrics(tmp / "run")


def _deep_checkpoint_record(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "checkpoint.json").write_text(_deep())
    cli("train", "--model", "vit_micro_c10", "--out", str(tmp / "run"))


def _arch_fields(**changes) -> Callable[[Path], Any]:
    """Load a saved ``vit_micro_c10`` whose sidecar's architecture config has ``changes``, within 5 s."""
    return _quick(lambda tmp: _sidecar(tmp, lambda meta: meta["architecture"]["config"].update(changes)))


def _timm_record(**kwargs) -> Callable[[dict], None]:
    return lambda meta: _set(meta, architecture={"timm": "vit_tiny_patch16_224", "kwargs": kwargs})


_FIELD = "model.json: key 'architecture': field"
_SEED = str(2**70)

HOSTILE_ROWS: dict[str, Bad] = {
    # --- settings files: the flags' checks ----------------------------------------------------
    "hostile-config-epochs-inf": Bad(
        _settings_text("run.toml", "epochs = 1e400\n"), SystemExit, "--epochs inf: must be a whole number",
        before="trained 'inf steps' forever (TOML reads 1e400 as float inf)"),
    "hostile-config-epochs-fraction": Bad(
        lambda tmp: _settings_file(tmp, epochs=1.5), SystemExit, "--epochs 1.5: must be a whole number",
        before=_AFTER_DATA + "TypeError from range() after an epoch"),
    "hostile-config-subset-size-float": Bad(
        lambda tmp: _settings_file(tmp, subset_size=256.0), SystemExit, "--subset-size 256.0: must be a whole number",
        before=_AFTER_DATA + "TypeError: subset size must be an integer count of images"),
    "hostile-config-seed-out-of-range": Bad(
        lambda tmp: _settings_file(tmp, seed=2**70), SystemExit, f"--seed {_SEED}: must be 0..4294967295",
        before="ValueError: Overflow when unpacking long long (a traceback from torch.manual_seed)"),
    "hostile-flag-seed-out-of-range": Bad(
        _train("--seed", _SEED), SystemExit, f"--seed {_SEED}: must be 0..4294967295",
        before="ValueError: Overflow when unpacking long long (a traceback from torch.manual_seed)"),
    "hostile-flag-seed-negative": Bad(
        _train("--seed", "-1"), SystemExit, "--seed -1: must be 0..4294967295",
        before="not checked: the run went on to load the data"),
    "hostile-config-lr-text": Bad(
        lambda tmp: _settings_file(tmp, lr="0.001"), SystemExit, "--lr '0.001': must be a number, not a str",
        before="read as 0.001 by argparse, silently"),
    "hostile-config-epochs-text": Bad(
        lambda tmp: _settings_file(tmp, epochs="5"), SystemExit, "--epochs '5': must be a whole number, not a str",
        before="read as 5 by argparse, silently"),
    "hostile-config-flip-number": Bad(
        lambda tmp: _settings_file(tmp, flip=1), SystemExit, "--flip 1: must be true or false",
        before="trained with flips (1 taken as true)"),
    "hostile-config-checkpoint-every-float": Bad(
        lambda tmp: _settings_file(tmp, checkpoint_every=2.5), SystemExit,
        "--checkpoint-every 2.5: must be a whole number", before="never checkpointed mid-epoch (step % 2.5)"),
    "hostile-flag-img-size-huge": Bad(
        _train("--img-size", "100000"), SystemExit, "--img-size 100000: must be a positive multiple of 4",
        before="resampled position embeddings for a 25000x25000 grid (hundreds of GB)"),
    "hostile-api-epochs-bool": Bad(
        lambda tmp: TrainConfig(epochs=True), ConfigError, "--epochs True: must be a whole number, not a bool",
        before="a config of 1 epoch"),
    "hostile-sweep-seed-out-of-range": Bad(
        _sweep("--seeds", "0", _SEED), SystemExit, f"--seeds {_SEED}: must be 0..4294967295",
        before="not checked: the sweep went on to load the data, its runs to fail on the seed"),
    "hostile-sweep-api-epochs-fraction": Bad(
        lambda tmp: SweepConfig(epochs=1.5), ConfigError, "--epochs 1.5: must be a whole number",
        before="a sweep config whose runs crashed after loading data"),
    "hostile-sweep-api-sizes-float": Bad(
        lambda tmp: SweepConfig(sizes=(100.0,)), ConfigError, "--sizes 100.0: must be a whole number",
        before="a sweep config whose runs crashed after loading data"),
    # --- deeply nested JSON -------------------------------------------------------------------
    "hostile-config-deep-json": Bad(
        _quick(_settings_text("run.json", _deep())), SystemExit, "cannot read settings from",
        before="RecursionError: maximum recursion depth exceeded (a traceback)"),
    "hostile-config-deep-toml": Bad(
        _quick(_settings_text("run.toml", "a = " + _deep() + "\n")), SystemExit, "cannot read settings from",
        before="RecursionError: maximum recursion depth exceeded (a traceback)"),
    "hostile-sidecar-deep-json": Bad(
        _quick(lambda tmp: _sidecar(tmp, lambda meta: _deep())), WeightsFileError, "model.json is not valid JSON",
        before="RecursionError: maximum recursion depth exceeded while decoding a JSON array"),
    "hostile-results-deep-json": Bad(
        _quick(lambda tmp: result_files.read_runs(_torn_results(tmp, text=_deep()))), result_files.ResultsFileError,
        phrase="sweep.json is not a complete results file",
        before="RecursionError: maximum recursion depth exceeded while decoding a JSON array"),
    "hostile-safetensors-deep-header": Bad(
        _quick(_deep_safetensors), WeightsFileError, "deep.safetensors is truncated or corrupt",
        before="RecursionError: maximum recursion depth exceeded while decoding a JSON array"),
    "hostile-metrics-deep-line": Bad(
        _quick(_deep_metrics_line), run_folder.RunFolderError, "metrics.jsonl line 1 is not a JSON record",
        before="RecursionError: maximum recursion depth exceeded while decoding a JSON array"),
    "hostile-checkpoint-deep-json": Bad(
        _quick(_deep_checkpoint_record), SystemExit, "checkpoint.json is no checkpoint record",
        before="RecursionError: maximum recursion depth exceeded while decoding a JSON array"),
    # --- architecture records and preprocessing sizes: bounded, and shapes compared before building ----------
    "hostile-arch-embed-dim-huge": Bad(
        _arch_fields(embed_dim=10**9), WeightsFileError, f"{_FIELD} 'embed_dim' must be a whole number in 1..8192",
        before="RuntimeError: DefaultCPUAllocator: can't allocate memory (tried hundreds of GB)"),
    "hostile-arch-num-classes-huge": Bad(
        _arch_fields(num_classes=10**9), WeightsFileError,
        f"{_FIELD} 'num_classes' must be a whole number in 0..100000",
        before="RuntimeError: DefaultCPUAllocator: can't allocate memory (tried hundreds of GB)"),
    "hostile-arch-depth-too-deep": Bad(
        _arch_fields(depth=257), WeightsFileError, f"{_FIELD} 'depth' must be a whole number in 1..256",
        before="built every block (31 s at depth 10,000), then a multi-line shape mismatch"),
    "hostile-arch-depth-negative": Bad(
        _arch_fields(depth=-3), WeightsFileError, f"{_FIELD} 'depth' must be a whole number in 1..256",
        before="RuntimeError: number of steps must be non-negative (torch.linspace inside timm)"),
    "hostile-arch-heads-zero": Bad(
        _arch_fields(num_heads=0), WeightsFileError, f"{_FIELD} 'num_heads' must be a whole number in 1..256",
        before="ZeroDivisionError: integer modulo by zero (timm's Attention)"),
    "hostile-arch-heads-not-dividing": Bad(
        _arch_fields(num_heads=3), WeightsFileError, "field 'num_heads' (3) must divide field 'embed_dim' (32)",
        before="AssertionError: dim should be divisible by num_heads (timm)"),
    "hostile-arch-patch-zero": Bad(
        _arch_fields(patch_size=0), WeightsFileError, f"{_FIELD} 'patch_size' must be a whole number in 1..4096",
        before="ZeroDivisionError: integer division or modulo by zero (timm's PatchEmbed)"),
    "hostile-arch-embed-dim-text": Bad(
        _arch_fields(embed_dim="32"), WeightsFileError,
        f"{_FIELD} 'embed_dim' must be a whole number in 1..8192, got '32'",
        before="TypeError: not all arguments converted during string formatting (timm)"),
    "hostile-arch-mlp-ratio-nan": Bad(
        _arch_fields(mlp_ratio=float("nan")), WeightsFileError, f"{_FIELD} 'mlp_ratio' must be a number above 0",
        before="ValueError: cannot convert float NaN to integer (timm's Mlp)"),
    "hostile-arch-img-size-negative": Bad(
        _arch_fields(img_size=-32), WeightsFileError, f"{_FIELD} 'img_size' must be a whole number in 1..4096",
        before="loaded; failed later, at the first forward pass"),
    "hostile-arch-other-shape-within-bounds": Bad(
        _arch_fields(embed_dim=2048, depth=16, num_heads=16), ValueError,
        "model.safetensors does not match the architecture: ",
        before="built and initialised the 800 MB model first (7.7 s), then a multi-line shape mismatch"),
    "hostile-timm-kwargs-embed-dim-huge": Bad(
        _quick(lambda tmp: _sidecar(tmp, _timm_record(embed_dim=10**9))), WeightsFileError,
        f"{_FIELD} 'embed_dim' must be a whole number in 1..8192",
        before="RuntimeError: DefaultCPUAllocator: can't allocate memory (tried hundreds of GB)"),
    "hostile-cfg-input-size-huge": Bad(
        _quick(lambda tmp: _sidecar(tmp, lambda meta: _set(meta["pretrained_cfg"], input_size=[3, 50_000, 50_000]))),
        WeightsFileError, "'input_size' must be three positive integers (channels, height, width) of at most 4096",
        before="loaded; preprocess then tried to allocate 30 GB"),
    "hostile-load-num-classes-huge": Bad(
        _quick(lambda tmp: vitlab.load_model("vit_micro_c10", num_classes=10**9, device="cpu")), ValueError,
        "num_classes must be 0 or more (0 removes the head, as in timm) and at most 100,000",
        before="RuntimeError: DefaultCPUAllocator: can't allocate memory (a 128 GB head)"),
    "hostile-set-input-size-huge": Bad(
        _quick(lambda tmp: models.set_input_size(models.build_model({"zoo": "vit_micro_c10"}), 100_000)), ValueError,
        "img_size must be a whole number of pixels in 1..4096, got 100000",
        before="resampled the position embeddings to a 12,500x12,500 grid (20 GB)"),
}


# ================================================================================================
# Interventions (issue 31): logit lens, attribution, ablation, patching (interventions-)
#
# Each model is guarded: a forward pass before the refusal fails the row with AssertionError, so every error is
# raised before any work. All are new in issue 31.


def _unrun(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` that fails any forward pass of any of its modules (analyses call blocks one by one): the refusal
    must come first."""
    def refuse(_module, _args):
        raise AssertionError("the model ran before the bad input was refused")
    for module in model.modules():
        module.register_forward_pre_hook(refuse)
    return model


def _micro() -> torch.nn.Module:
    return _unrun(models.build_model({"zoo": "vit_micro_c10"}))


def _timm_vit(**kwargs) -> torch.nn.Module:
    return _unrun(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                                    depth=2, num_heads=3, num_classes=10, **kwargs))


def _tanh_pre_logits() -> torch.nn.Module:
    model = _micro()
    model.pre_logits = torch.nn.Tanh()  # the representation layer of the original ViT
    return model


def _pics(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _few(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % 10


def _ablate(**kwargs):
    return lambda tmp: ablation.ablation_analysis(_micro(), _pics(), _few(), **kwargs)


def _link(distances: torch.Tensor, measure: str = "accuracy"):
    def call(tmp):
        n, z = 4, torch.zeros(4, 2, dtype=torch.float64)
        heads = torch.zeros(n, 2, 2, dtype=torch.float64)
        result = ablation.AblationResult(
            kind="zero", reference_images=0, labels=_few(), clean_correct=z[:, 0], clean_logit=z[:, 0],
            head_accuracy=heads, head_logit=heads, attn_accuracy=z, attn_logit=z, mlp_accuracy=z, mlp_logit=z,
            top_heads=[], top_accuracy=z[:, :0], top_logit=z[:, :0], seconds=0.0)
        return ablation.link_analysis(distances, result, measure=measure)
    return call


_NEW = "(new in issue 31)"
INTERVENTIONS_ROWS: dict[str, Bad] = {
    "interventions-layer-out-of-range": Bad(
        lambda tmp: residual.check_head(residual.stream(_micro()), 2), IndexError,
        "layer 2 is out of range: the model has 2 blocks (0 to 1)", before=_NEW),
    "interventions-head-out-of-range": Bad(
        lambda tmp: residual.check_head(residual.stream(_micro()), -1, 2), IndexError,
        "head 2 is out of range: each block has 2 heads (0 to 1)", before=_NEW),
    "interventions-model-without-heads": Bad(
        lambda tmp: lens.logit_lens_analysis(_unrun(models.build_model({"zoo": "resnet_micro_c10"})), _pics(), _few()),
        ValueError, "has no transformer blocks with attention heads (a ResNet?)", before=_NEW),
    "interventions-attention-pool": Bad(
        lambda tmp: lens.attribution_analysis(_timm_vit(global_pool="map"), _pics(), _few()), ValueError,
        "reads an attention-pool head", before=_NEW),
    "interventions-tanh-pre-logits": Bad(
        lambda tmp: ablation.ablation_analysis(_tanh_pre_logits(), _pics(), _few(), kind="zero"), ValueError,
        "has a pre-logits layer (a tanh)", before=_NEW),
    "interventions-scale-norm": Bad(
        lambda tmp: patching.patching_analysis(_timm_vit(scale_attn_norm=True), _pics(), _few()), ValueError,
        "normalises the heads' output (scale-norm, block 0)", before=_NEW),
    "interventions-distilled-head": Bad(
        lambda tmp: lens.attribution_analysis(_unrun(timm.create_model(
            "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10)),
            _pics(), _few()),
        ValueError, "VisionTransformerDistilled reads or makes its tokens its own way (its own forward_",
        before="no error: the parts added up to the class-token head's logit, not the model's (head + head_dist) / 2"),
    "interventions-batch-of-one": Bad(
        lambda tmp: lens.logit_lens_analysis(_micro(), _pics(1), _few(1)),
        ValueError, "give at least 2 images (got 1)", before=_NEW),
    "interventions-labels-wrong-length": Bad(
        lambda tmp: lens.attribution_analysis(_micro(), _pics(4), _few(3)), ValueError,
        "labels must be one class per image: 4 images, labels shaped (3,)", before=_NEW),
    "interventions-label-above-the-classes": Bad(
        lambda tmp: lens.logit_lens_analysis(_micro(), _pics(3), torch.tensor([0, 1, 10])), ValueError,
        "labels must be classes 0 to 9 of the model's head, got 10", before="RuntimeError: index 10 is out of "
        "bounds for dimension 3 with size 10 (after running the model)"),
    "interventions-negative-label": Bad(
        lambda tmp: lens.attribution_analysis(_micro(), _pics(3), torch.tensor([0, -1, 2])), ValueError,
        "labels must be classes 0 to 9 of the model's head, got -1", before="RuntimeError: index -1 is out of "
        "bounds for dimension 1 with size 10 (after running the model)"),
    "interventions-ablation-label-out-of-range": Bad(
        lambda tmp: ablation.ablation_analysis(_micro(), _pics(3), torch.tensor([0, 1, 10]), kind="zero"),
        ValueError,
        "labels must be classes 0 to 9", before="RuntimeError: index 10 is out of bounds (after running the model)"),
    "interventions-patching-label-out-of-range": Bad(
        lambda tmp: patching.patching_analysis(_micro(), _pics(3), torch.tensor([0, 1, 10])), ValueError,
        "labels must be classes 0 to 9", before="IndexError: index 10 is out of bounds (after running the model)"),
    "interventions-mean-ablation-without-reference": Bad(
        _ablate(kind="mean"), ValueError, "mean ablation needs reference images", before=_NEW),
    "interventions-unknown-ablation-kind": Bad(
        _ablate(kind="noise"), ValueError, "kind must be one of ('mean', 'zero'), got 'noise'", before=_NEW),
    "interventions-unknown-corruption": Bad(
        lambda tmp: patching.patching_analysis(_micro(), _pics(), _few(), corruption="blur"), ValueError,
        "corruption must be one of ('region', 'pairs')", before=_NEW),
    "interventions-region-outside-grid": Bad(
        lambda tmp: patching.patching_analysis(_micro(), _pics(), _few(), region=[(4, 0)]), ValueError,
        "region must be (row, col) patches inside the 4x4 grid", before=_NEW),
    "interventions-pairs-of-one-class": Bad(
        lambda tmp: patching.patching_analysis(_micro(), _pics(), torch.zeros(4), corruption="pairs"), ValueError,
        "pairs need images of at least two classes", before=_NEW),
    "interventions-link-other-images": Bad(
        _link(torch.zeros(5, 2, 2)), ValueError, "must be of the same images and heads", before=_NEW),
    "interventions-link-unknown-measure": Bad(
        _link(torch.zeros(4, 2, 2), "loss"), ValueError, "measure must be 'accuracy' or 'logit', got 'loss'",
        before=_NEW),
}


# ================================================================================================
# Faithfulness of attribution maps (issue 32): deletion, insertion, Chefer perturbation (faithfulness-)
#
# Models are guarded by _unrun: every error comes before a forward pass. All are new in issue 32.


def _faithful(model=None, maps=None, n: int = 4, **kwargs):
    def call(tmp):
        m = _micro() if model is None else model()
        given = {"rollout": torch.rand(n, 4, 4)} if maps is None else maps
        return faithfulness.faithfulness_analysis(m, _pics(n), given, progress=False, **kwargs)
    return call


_ISSUE32 = "(new in issue 32)"
FAITHFULNESS_ROWS: dict[str, Bad] = {
    "faithfulness-steps-do-not-divide-the-grid": Bad(
        _faithful(steps=5), ValueError, "steps must divide the 16 cells of the 4x4 grid", before=_ISSUE32),
    "faithfulness-unknown-removal": Bad(
        _faithful(removals=("noise",)), ValueError, "removal must be one of ('drop', 'mean', 'blur')",
        before=_ISSUE32),
    "faithfulness-drop-on-a-resnet": Bad(
        _faithful(lambda: _unrun(models.build_model({"zoo": "resnet_micro_c10"})), removals=("drop",)), ValueError,
        "has no patch tokens to drop (no patch_embed and patch_drop): use removal 'mean' or 'blur'", before=_ISSUE32),
    "faithfulness-drop-on-a-rope-model": Bad(
        _faithful(lambda: _unrun(timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=32,
                                                   patch_size=8, embed_dim=24, depth=1, num_heads=2,
                                                   num_classes=10))),
        ValueError, "uses rotary position embeddings (RoPE)", before=_ISSUE32),
    "faithfulness-maps-of-other-images": Bad(
        _faithful(maps={"rollout": torch.rand(3, 4, 4)}), ValueError,
        "maps['rollout'] must be one (rows, cols) map per image: 4 images, got (3, 4, 4)", before=_ISSUE32),
    "faithfulness-maps-off-the-patch-grid": Bad(
        _faithful(maps={"rollout": torch.rand(4, 8, 8)}), ValueError,
        "the model's patch grid is (4, 4): drop removes tokens, so give maps on the patch grid", before=_ISSUE32),
    "faithfulness-maps-that-do-not-tile-the-input": Bad(
        _faithful(maps={"rollout": torch.rand(4, 5, 5)}, removals=("mean",)), ValueError,
        "on a 5x5 grid, which does not tile the model's 32x32 input", before=_ISSUE32),
    "faithfulness-maps-with-nan": Bad(
        _faithful(maps={"rollout": torch.full((4, 4, 4), float("nan"))}), ValueError, "give finite maps",
        before=_ISSUE32),
    "faithfulness-target-out-of-range": Bad(
        _faithful(targets=torch.tensor([0, 1, 2, 10])), ValueError, "classes 0 to 9 of the model's head, got 10",
        before=_ISSUE32),
    "faithfulness-float-images": Bad(
        lambda tmp: faithfulness.curves(_micro(), torch.rand(2, 3, 32, 32), torch.rand(2, 4, 4)), TypeError,
        "images must be uint8", before=_ISSUE32),
}


# ================================================================================================
# Figures out: save_figure, save_page, an explorer's save, vitlab.report (export-, report-)


def _taken(tmp: Path, name: str) -> Path:
    """A file of the user's at ``tmp/name``, which an export must not replace."""
    (tmp / name).write_text("a user's file")
    return tmp / name


def _plot():
    import plotly.graph_objects as go
    return go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))


_ISSUE30 = "(new in issue 30)"


def _save(*args, **kwargs):
    from vitlab.views import export
    return export.save_figure(*args, **kwargs)


def _page(*args, **kwargs):
    from vitlab.views import export
    return export.save_page(*args, **kwargs)


EXPORT_ROWS: dict[str, Bad] = {
    "export-unknown-suffix": Bad(
        lambda tmp: _save(_plot(), tmp / "figure.jpg"), ValueError, "end the name in .html, .png, .svg or .pdf",
        before=_ISSUE30),
    "export-existing-file": Bad(
        lambda tmp: _save(_plot(), _taken(tmp, "figure.png")), FileExistsError, "pass overwrite=True",
        before=_ISSUE30),
    "export-not-a-figure": Bad(
        lambda tmp: _save([1, 2, 3], tmp / "figure.html"), TypeError, "expected a plotly figure", before=_ISSUE30),
    "export-zero-width": Bad(
        lambda tmp: _save(_plot(), tmp / "figure.png", width=0), ValueError, "width must be a positive number",
        before=_ISSUE30),
    "export-page-not-html": Bad(
        lambda tmp: _page([_plot()], tmp / "page.png", "t"),
        ValueError, "a page is HTML", before=_ISSUE30),
    "report-not-html": Bad(
        lambda tmp: vitlab.report("vit_micro_c10", path=tmp / "report.pdf"), ValueError,
        "a report is one HTML page", before=_ISSUE30),
    "report-existing-file": Bad(
        lambda tmp: vitlab.report("vit_micro_c10", path=_taken(tmp, "report.html")), FileExistsError,
        "pass overwrite=True", before=_ISSUE30),
    "report-not-a-vit": Bad(
        lambda tmp: vitlab.report(torch.nn.Linear(2, 2), path=tmp / "report.html"), ValueError,
        "not a ViT, hybrid or ResNet", before=_ISSUE30),
    "report-not-a-model": Bad(
        lambda tmp: vitlab.report(3, path=tmp / "report.html"), TypeError, "got int", before=_ISSUE30),
    "report-not-an-image": Bad(
        lambda tmp: vitlab.report("vit_micro_c10", _taken(tmp, "notes.txt"), tmp / "report.html"),
        data.image_files.ImageInputError, "notes.txt", before=_ISSUE30),
}



_ISSUE32 = "(new in issue 32)"


def _maps(call: str, *args, model: str = "vit_micro_c10", **kwargs):
    """A row calling ``vitlab.analysis.saliency.<call>`` or ``map_checks.<call>`` on a random-weight zoo model and
    four uint8 images."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fn = getattr(saliency, call, None) or getattr(map_checks, call)
    return lambda tmp: fn(models.build_model({"zoo": model}), images, *args, **kwargs)


MAPS_ROWS: dict[str, Bad] = {
    "maps-target-out-of-range": Bad(
        _maps("saliency", "attention", torch.tensor([0, 1, 2, 10])), ValueError,
        "target class 10 is out of range: the model has 10 classes", before=_ISSUE32),
    "maps-targets-one-per-image": Bad(
        _maps("saliency", "attention", torch.tensor([0, 1])), ValueError, "one class index per image",
        before=_ISSUE32),
    "maps-unknown-method": Bad(
        _maps("saliency", "gradcam"), ValueError, "unknown attribution method 'gradcam': choose from",
        before=_ISSUE32),
    "maps-attention-method-on-a-resnet": Bad(
        _maps("saliency", "grad_rollout", model="resnet_micro_c10"), ValueError,
        "grad_rollout reads a ViT's attention, and ResNet has none", before=_ISSUE32),
    "maps-grad-cam-on-a-vit": Bad(
        _maps("maps_analysis", ["rollout", "grad_cam"]), ValueError, "grad_cam reads a ResNet's layer4",
        before=_ISSUE32),
    "maps-methods-one-string": Bad(
        _maps("maps_analysis", "rollout"), TypeError, "pass ['rollout']", before=_ISSUE32),
    "focus-too-few-classes": Bad(
        _maps("focus_analysis", torch.tensor([0, 1, 2, 2])), ValueError, "at least 4 different classes",
        before=_ISSUE32),
    "sanity-no-architecture-record": Bad(
        lambda tmp: map_checks.sanity_analysis(timm.create_model("resnet18", pretrained=False, num_classes=3),
                                               torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
        ValueError, "load it with vitlab.load_model", before=_ISSUE32),
}


ROWS: dict[str, Bad] = {**RUNS_ROWS, **MODELS_ROWS, **INPUTS_ROWS, **DATA_ROWS, **IMAGES_ROWS, **HOSTILE_ROWS,
                        **INTERVENTIONS_ROWS, **FAITHFULNESS_ROWS, **EXPORT_ROWS, **MAPS_ROWS}


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """CIFAR-10 nowhere and no download: any row that reads data first fails differently."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("VITLAB_DATA", str(empty))

    def refuse(root):
        raise AssertionError("a bad-input row started a download: its error came too late")

    monkeypatch.setattr(data.files, "_download_cifar10", refuse)


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_fails_with_one_clear_line(name, tmp_path, no_data):
    row = ROWS[name]
    with pytest.raises(row.error) as info:
        row.call(tmp_path)
    message = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
    assert "\n" not in message.strip(), f"{name}: the error spans lines:\n{message}"
    assert row.phrase.lower() in message.lower(), f"{name}: {row.phrase!r} not in {message!r}"
