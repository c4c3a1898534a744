"""Bad-input rows for model specs and weight files (``load_model`` and friends): see test_bad_inputs.

Each file row builds its bad file in the row's fresh folder from a saved ``vit_micro_c10``
(a few hundred kB), so the rows need no data, no zoo checkpoint and no network.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from test_bad_inputs import Bad

import vitlab
from vitlab import models
from vitlab.weights import WeightsFileError


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


ROWS = {
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
