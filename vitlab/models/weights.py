"""Reading weight files: state dicts (``.safetensors``, ``.pt``/``.pth``) and Google ViT ``.npz``, never unpickling
arbitrary objects, and explaining a file that does not fit its architecture key by key."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..io import parse_json

#: The weight files vitlab reads.
SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
#: Keys of a pre-training objective's own parameters (``vitlab.training.mpp``), skipped when a model is loaded.
OBJECTIVE_PREFIX = "mpp."
#: Preprocessing of the original Google ViT checkpoints (inputs scaled to [-1, 1]).
GOOGLE_VIT_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)
_REDO = "download it again or save it again (vitlab.save_model)"


class WeightsFileError(ValueError):
    """A weights file or its sidecar exists but cannot be read: empty, truncated, corrupt or invalid."""


def check_weights_file(path: Path) -> None:
    """Refuse a path that is not a complete weights file from its header alone (WeightsFileError if truncated)."""
    if path.is_dir():
        inside = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())[:3]
        hint = f"pass a weights file in it: {', '.join(inside)}" if inside else (
            f"pass the path of a weights file ({', '.join(SUFFIXES)}) instead")
        raise FileNotFoundError(f"{path} is a folder, not a weights file; {hint}")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"no weights file at {path}; check the path{where}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported weights format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    size = path.stat().st_size
    if size == 0:
        raise WeightsFileError(f"{path} is empty (0 bytes), e.g. from an interrupted download or copy; {_REDO}")
    if suffix == ".safetensors":
        problem = _safetensors_problem(path, size)
    elif suffix == ".npz" or _starts_with(path, b"PK"):  # .npz and torch.save files are zip archives
        problem = _zip_problem(path)
    else:
        problem = None  # a legacy torch.save pickle stream: torch.load(weights_only=True) checks it
    if problem:
        raise WeightsFileError(f"{path} is truncated or corrupt ({problem}); {_REDO}")


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _safetensors_problem(path: Path, size: int) -> str | None:
    """Why ``path`` is not a complete safetensors file (8-byte header length, JSON header, data), or None."""
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little")
        if len(head) < 8 or 8 + length > size:
            return f"the file has {size:,} bytes, fewer than its header says ({8 + length:,})"
        try:
            header = parse_json(f.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON"
    if 8 + length + end != size:
        return f"the file has {size:,} bytes, its header says {8 + length + end:,}"
    return None


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in archive.infolist()):
                return "an entry runs past the end of the file"
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a complete zip archive: {err}"
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or the state dict in a ``.pt``/``.pth`` file."""
    if path.suffix.lower() == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except Exception as err:  # SafetensorError names neither the file nor what to do
            raise WeightsFileError(f"{path} could not be read as safetensors ({err}); {_REDO}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} could not be read as a plain state dict with weights_only=True "
                         f"({type(err).__name__}); vitlab never unpickles arbitrary objects. Save the "
                         "weights with torch.save(model.state_dict(), path) or as .safetensors.") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def fit_head(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Size the classifier like the checkpoint's, so ``arch=`` needs no ``num_classes``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((n for n, m in model.named_modules() if m is head), None)
    weight = state.get(f"{name}.weight") if name else None
    if isinstance(head, nn.Linear) and weight is not None and weight.shape[0] != head.out_features:
        model.reset_classifier(weight.shape[0])


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Raise a one-line ValueError explaining every key and shape where ``state`` does not fit ``model``, which may
    live on the meta device (so the check allocates nothing); ``mpp.*`` keys of a pre-training objective are skipped."""
    state = {k: v for k, v in state.items() if not k.startswith(OBJECTIVE_PREFIX)}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise ValueError(f"{source} does not match the architecture: {'; '.join(parts)}. Pass the arch= this file "
                         "was trained with, or fix its sidecar JSON.")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` strictly, explaining any mismatch (:func:`check_shapes`); ``mpp.*`` keys are skipped."""
    check_shapes(model, state, source)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items() if not k.startswith(OBJECTIVE_PREFIX)})


def load_google_npz(model: nn.Module, path: Path) -> None:
    """Load an original Google ViT ``.npz`` into a timm VisionTransformer, sizing its head to the file's."""
    if not hasattr(model, "load_pretrained"):
        raise ValueError(f"{path}: .npz checkpoints load only into timm VisionTransformer models")
    if model.num_classes != (classes := google_vit_args(path)["num_classes"]):
        model.reset_classifier(classes)
    model.load_pretrained(str(path))


def google_vit_args(path: Path) -> dict[str, Any]:
    """Infer VisionTransformer arguments from the shapes in an original Google ViT .npz."""
    try:
        w = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise WeightsFileError(f"{path} could not be read as an .npz archive ({type(err).__name__}); {_REDO}") from None
    with w:
        keys = set(w.files)
        prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in keys), None)
        if prefix is None:
            raise ValueError(f"{path} is not a Google ViT checkpoint: it has no 'embedding/kernel' array")
        patch, _, in_chans, dim = w[f"{prefix}embedding/kernel"].shape  # (P, P, C, D)
        blocks = f"{prefix}Transformer/encoderblock_"
        depth = sum(1 for k in keys if k.startswith(blocks) and k.endswith("LayerNorm_0/scale"))
        block = f"{blocks}0/"
        heads = w[f"{block}MultiHeadDotProductAttention_1/query/kernel"].shape[1]  # (D, heads, head_dim)
        mlp_dim = w[f"{block}MlpBlock_3/Dense_0/kernel"].shape[1]  # (D, mlp)
        has_cls = f"{prefix}cls" in keys
        tokens = w[f"{prefix}Transformer/posembed_input/pos_embedding"].shape[1] - int(has_cls)
        num_classes = w[f"{prefix}head/kernel"].shape[1] if f"{prefix}head/kernel" in keys else 0
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise ValueError(f"{path}: {tokens} position embeddings do not form a square grid")
    return dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_ratio=mlp_dim / dim, num_classes=num_classes, class_token=has_cls,
                global_pool="token" if has_cls else "avg")
