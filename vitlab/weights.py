"""Reading weight files: state dicts (``.safetensors``, ``.pt``/``.pth``) and Google ViT ``.npz``.

The readers never unpickle arbitrary objects (``torch.load(weights_only=True)``) and explain
a file that does not fit its architecture key by key. :mod:`vitlab.models` decides which
architecture a file holds and calls these.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

#: The weight files vitlab reads.
SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
#: Preprocessing of the original Google ViT checkpoints (inputs scaled to [-1, 1]).
GOOGLE_VIT_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or the state dict in a ``.pt``/``.pth`` file."""
    return safetensors.torch.load_file(path) if path.suffix.lower() == ".safetensors" else _read_torch_state(path)


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} could not be read as a plain state dict with weights_only=True "
            f"({type(err).__name__}); vitlab never unpickles arbitrary objects. Save the "
            "weights with torch.save(model.state_dict(), path) or as .safetensors."
        ) from None
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


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` strictly, explaining any mismatch with the architecture."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        lines = [f"{source} does not match the architecture:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                lines.append(f"  {label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        lines.append("Pass the arch= this file was trained with, or fix its sidecar JSON.")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def load_google_npz(model: nn.Module, path: Path) -> None:
    """Load an original Google ViT ``.npz`` into a timm VisionTransformer, sizing its head to the file's."""
    if not hasattr(model, "load_pretrained"):
        raise ValueError(f"{path}: .npz checkpoints load only into timm VisionTransformer models")
    if model.num_classes != (classes := google_vit_args(path)["num_classes"]):
        model.reset_classifier(classes)
    model.load_pretrained(str(path))


def google_vit_args(path: Path) -> dict[str, Any]:
    """Infer VisionTransformer arguments from the shapes in an original Google ViT .npz."""
    with np.load(path, allow_pickle=False) as w:
        keys = set(w.files)
        prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in keys), None)
        if prefix is None:
            raise ValueError(f"{path} is not a Google ViT checkpoint: it has no 'embedding/kernel' array")
        patch, _, in_chans, dim = w[f"{prefix}embedding/kernel"].shape  # (P, P, C, D)
        depth = sum(1 for k in keys if k.startswith(f"{prefix}Transformer/encoderblock_") and k.endswith("LayerNorm_0/scale"))
        block = f"{prefix}Transformer/encoderblock_0/"
        heads = w[f"{block}MultiHeadDotProductAttention_1/query/kernel"].shape[1]  # (D, heads, head_dim)
        mlp_dim = w[f"{block}MlpBlock_3/Dense_0/kernel"].shape[1]  # (D, mlp)
        has_cls = f"{prefix}cls" in keys
        tokens = w[f"{prefix}Transformer/posembed_input/pos_embedding"].shape[1] - int(has_cls)
        num_classes = w[f"{prefix}head/kernel"].shape[1] if f"{prefix}head/kernel" in keys else 0
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise ValueError(f"{path}: {tokens} position embeddings do not form a square grid")
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_dim / dim,
        num_classes=num_classes,
        class_token=has_cls,
        global_pool="token" if has_cls else "avg",
    )
