"""Reading weight files: state dicts (``.safetensors``, ``.pt``/``.pth``) and Google ViT ``.npz``, never unpickling
arbitrary objects, and explaining a file that does not fit its architecture key by key."""
from __future__ import annotations

import math
import zipfile
import zlib
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
#: The most bytes of tensors a ``.pt``/``.pth``/``.npz`` file may declare (ViT-G/14, the largest Google ViT, holds
#: 7.4 GB of float32): sizes are read from the zip directory and npy headers, so a small file that inflates to
#: more (a zip bomb) is refused before anything is read. Raise it for a genuine larger file.
MAX_WEIGHTS_BYTES = 8 * 2**30


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
    if suffix == ".npz":
        npz_shapes(path)  # headers and sizes, before any array is inflated
    elif suffix != ".safetensors":
        _check_torch_zip(path)


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


def _too_large(path: Path, declared: int) -> WeightsFileError:
    return WeightsFileError(f"{path} declares {declared / 2**30:.1f} GiB of tensors, more than vitlab reads "
                            f"({MAX_WEIGHTS_BYTES / 2**30:.0f} GiB, vitlab.models.weights.MAX_WEIGHTS_BYTES): a "
                            "small file that inflates this much is a zip bomb; raise the limit only for a genuine file")


def _check_torch_zip(path: Path) -> None:
    """Refuse a ``torch.save`` zip with a compressed member (torch writes every member stored, so the file size bounds
    what loading reads) or declaring more than :data:`MAX_WEIGHTS_BYTES`; a legacy pickle stream is bounded by its
    size on disk."""
    if not zipfile.is_zipfile(path):
        declared = path.stat().st_size
    else:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
        compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if compressed:
            raise WeightsFileError(f"{path} has compressed members ({', '.join(compressed[:3])}), which torch.save "
                                   "never writes: it may be a zip bomb, so vitlab does not inflate it; save the "
                                   "weights again with torch.save(model.state_dict(), path) or vitlab.save_model")
        declared = sum(m.file_size for m in members)
    if declared > MAX_WEIGHTS_BYTES:
        raise _too_large(path, declared)


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every array of an ``.npz``, from each member's npy header alone: no array is inflated.
    WeightsFileError if a header does not match its member's size, or the arrays exceed :data:`MAX_WEIGHTS_BYTES`."""
    shapes, total = {}, 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in read:
                        raise ValueError(f"npy format version {version} in {member.filename}")
                    shape, _, dtype = read[version](f)
                    start = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"{member.filename} holds pickled Python objects, not numbers")
                size = math.prod(shape) * dtype.itemsize
                if start + size != member.file_size:
                    raise ValueError(f"{member.filename}'s header ({dtype}, shape {shape}) does not match its "
                                     f"{member.file_size:,} bytes")
                shapes[member.filename.removesuffix(".npy")] = shape
                total += size
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise WeightsFileError(f"{path} could not be read as an .npz archive ({err}); {_REDO}") from None
    if total > MAX_WEIGHTS_BYTES:
        raise _too_large(path, total)
    return shapes


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or the state dict in a ``.pt``/``.pth`` file."""
    if path.suffix.lower() == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except Exception as err:  # SafetensorError names neither the file nor what to do
            raise WeightsFileError(f"{path} could not be read as safetensors ({err}); {_REDO}") from None
    _check_torch_zip(path)
    try:  # mapped, not read: only the tensors a model takes are paged in (a legacy pickle stream cannot be mapped)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
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
    """Infer VisionTransformer arguments from the shapes in an original Google ViT .npz, read from its npy headers
    (:func:`npz_shapes`); every array the model takes must have the size they imply, so the model built costs no
    more memory than the file declares (a crafted file whose one array claims a huge width is refused unread)."""
    shapes = npz_shapes(path)
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise ValueError(f"{path} is not a Google ViT checkpoint: it has no 'embedding/kernel' array")
    try:
        patch, _, in_chans, dim = shapes[f"{prefix}embedding/kernel"]  # (P, P, C, D)
        blocks = f"{prefix}Transformer/encoderblock_"
        depth = sum(1 for k in shapes if k.startswith(blocks) and k.endswith("LayerNorm_0/scale"))
        block = f"{blocks}0/"
        heads = shapes[f"{block}MultiHeadDotProductAttention_1/query/kernel"][1]  # (D, heads, head_dim)
        mlp_dim = shapes[f"{block}MlpBlock_3/Dense_0/kernel"][1]  # (D, mlp)
        has_cls = f"{prefix}cls" in shapes
        tokens = shapes[f"{prefix}Transformer/posembed_input/pos_embedding"][1] - int(has_cls)
        num_classes = shapes[f"{prefix}head/kernel"][1] if f"{prefix}head/kernel" in shapes else 0
    except (KeyError, ValueError, IndexError) as err:
        raise ValueError(f"{path} is not a Google ViT checkpoint: {type(err).__name__} {err} reading its "
                         "shapes") from None
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise ValueError(f"{path}: {tokens} position embeddings do not form a square grid")
    sizes = _google_vit_sizes(prefix, depth, patch * patch * in_chans, dim, heads, mlp_dim, tokens + has_cls,
                              num_classes, has_cls)
    wrong = [f"{k} {shapes.get(k, 'missing')} (expected {n:,} numbers)" for k, n in sizes.items()
             if k not in shapes or math.prod(shapes[k]) != n]
    if wrong:
        raise WeightsFileError(f"{path}: its arrays do not fit one ViT of width {dim}, {heads} heads, MLP {mlp_dim} "
                               f"and depth {depth}: {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}; {_REDO}")
    return dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_ratio=mlp_dim / dim, num_classes=num_classes, class_token=has_cls,
                global_pool="token" if has_cls else "avg")


def _google_vit_sizes(prefix: str, depth: int, patch_pixels: int, dim: int, heads: int, mlp: int, tokens: int,
                      classes: int, has_cls: bool) -> dict[str, int]:
    """How many numbers each array of a Google ViT .npz holds for these sizes (timm's ``_load_weights`` reshapes)."""
    sizes = {"embedding/kernel": patch_pixels * dim, "embedding/bias": dim,
             "Transformer/posembed_input/pos_embedding": tokens * dim,
             "Transformer/encoder_norm/scale": dim, "Transformer/encoder_norm/bias": dim}
    if has_cls:
        sizes["cls"] = dim
    if classes:
        sizes.update({"head/kernel": dim * classes, "head/bias": classes})
    for i in range(depth):
        block = f"Transformer/encoderblock_{i}/"
        attention = f"{block}MultiHeadDotProductAttention_1/"
        sizes.update({f"{block}{norm}/{part}": dim for norm in ("LayerNorm_0", "LayerNorm_2")
                      for part in ("scale", "bias")})
        sizes.update({f"{attention}{name}/{part}": dim * dim if part == "kernel" else dim
                      for name in ("query", "key", "value", "out") for part in ("kernel", "bias")})
        sizes.update({f"{block}MlpBlock_3/Dense_0/kernel": dim * mlp, f"{block}MlpBlock_3/Dense_0/bias": mlp,
                      f"{block}MlpBlock_3/Dense_1/kernel": mlp * dim, f"{block}MlpBlock_3/Dense_1/bias": dim})
    return {prefix + k: n for k, n in sizes.items()}
