"""Building, loading and saving models: timm names, local files and vitlab's zoo.

Every model vitlab returns carries

* ``model.pretrained_cfg``: its preprocessing in timm's convention (``input_size``,
  ``mean``, ``std``, ...), so ``timm.data.resolve_model_data_config(model)`` works;
* ``model.vitlab_arch``: a JSON-able record that rebuilds the architecture, written
  into the sidecar by :func:`save_model` so saved files load without extra arguments.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import socket
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import data, settings
from .io import atomic_path, write_json

ZOO_DIR = settings.PROJECT_ROOT / "data" / "zoo"
SIDECAR_FORMAT = 1
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
#: Preprocessing of the original Google ViT checkpoints (inputs scaled to [-1, 1]).
_GOOGLE_VIT_CFG = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


# --- the zoo: CIFAR-scale architectures --------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CifarViT:
    """A ViT for 32x32 inputs; patch 4 gives an 8x8 grid of patches."""

    description: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0
    patch_size: int = 4
    img_size: int = 32
    num_classes: int = 10
    family: str = "vit"

    def build(self) -> nn.Module:
        return VisionTransformer(
            img_size=self.img_size,
            patch_size=self.patch_size,
            num_classes=self.num_classes,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            global_pool="token",
            dynamic_img_size=True,  # lets analysis run on other sizes and non-square inputs
        )


@dataclass(frozen=True, kw_only=True)
class CifarResNet:
    """A ResNet of basic blocks with a CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    description: str
    channels: tuple[int, ...] = (64, 128, 256, 512)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    img_size: int = 32
    num_classes: int = 10
    family: str = "resnet"

    def build(self) -> nn.Module:
        model = ResNet(
            block=BasicBlock,
            layers=self.layers,
            channels=self.channels,
            stem_type="deep",  # a deep stem of width w feeds 2w channels to the first stage
            stem_width=self.channels[0] // 2,
            num_classes=self.num_classes,
        )
        # ImageNet's stride-4 stem would shrink a 32x32 image to 8x8 before the first stage.
        model.conv1 = nn.Conv2d(3, self.channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        for info in model.feature_info:
            info["reduction"] = max(1, info["reduction"] // 4)
        return model


ZooConfig = CifarViT | CifarResNet

#: Registered CIFAR-10 architectures, by zoo name.
ZOO: dict[str, ZooConfig] = {
    "vit_tiny_c10": CifarViT(
        description="ViT, patch 4 (8x8 grid), width 128, 6 blocks, 4 heads",
        embed_dim=128, depth=6, num_heads=4,
    ),
    "vit_small_c10": CifarViT(
        description="ViT, patch 4 (8x8 grid), width 192, 9 blocks, 6 heads",
        embed_dim=192, depth=9, num_heads=6,
    ),
    "resnet_tiny_c10": CifarResNet(
        description="ResNet-18 of basic blocks, widths 16-128, CIFAR stem",
        channels=(16, 32, 64, 128), layers=(2, 2, 2, 2),
    ),
    "resnet_small_c10": CifarResNet(
        description="ResNet-18 of basic blocks, widths 32-256, CIFAR stem",
        channels=(32, 64, 128, 256), layers=(2, 2, 2, 2),
    ),
    # Minute-scale models for quick-mode sweeps and tests of the whole pipeline.
    "vit_micro_c10": CifarViT(
        description="ViT, patch 8 (4x4 grid), width 32, 2 blocks, 2 heads (quick runs)",
        embed_dim=32, depth=2, num_heads=2, patch_size=8,
    ),
    "resnet_micro_c10": CifarResNet(
        description="ResNet of basic blocks, one per stage, widths 8-64, CIFAR stem (quick runs)",
        channels=(8, 16, 32, 64), layers=(1, 1, 1, 1),
    ),
}


def _cifar_cfg(name: str, config: ZooConfig) -> dict[str, Any]:
    return dict(
        architecture=name,
        tag="cifar10",
        input_size=(3, config.img_size, config.img_size),
        mean=data.MEAN,
        std=data.STD,
        interpolation="bicubic",
        crop_pct=1.0,
        crop_mode="center",
        num_classes=config.num_classes,
        classifier="head" if config.family == "vit" else "fc",
    )


def zoo() -> dict[str, dict[str, Any]]:
    """Every zoo name with its family, description, parameter count and training record.

    ``test_accuracy`` (a fraction) and ``checkpoint`` are ``None`` for architectures
    that have no trained checkpoint in ``data/zoo`` yet.
    """
    out = {}
    for name, config in ZOO.items():
        weights, sidecar = ZOO_DIR / f"{name}.safetensors", ZOO_DIR / f"{name}.json"
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        params = sum(p.numel() for p in config.build().parameters())
        out[name] = dict(
            family=config.family,
            description=config.description,
            params=params,
            checkpoint=str(weights) if weights.is_file() else None,
            test_accuracy=record.get("metrics", {}).get("test_accuracy"),
        )
    return out


def available(family: str | None = None) -> list[str]:
    """Model specs that load offline: zoo names, then timm weights in the Hugging Face cache.

    Args:
        family: keep only zoo models of this family (``"vit"`` or ``"resnet"``); cached
            hub models are listed whatever their family (only their name is known).
    """
    names = [n for n, c in ZOO.items() if family in (None, c.family)]
    names.sort(key=lambda n: not (ZOO_DIR / f"{n}.safetensors").is_file())  # trained first
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    if cache.is_dir():
        for repo in sorted(cache.glob("models--timm--*")):
            if any(repo.glob("snapshots/*/model.safetensors")) or any(repo.glob("snapshots/*/pytorch_model.bin")):
                names.append(repo.name.removeprefix("models--timm--"))
    return names


# --- building from an architecture record --------------------------------------------


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a ``vitlab_arch`` record (as saved in sidecars).

    ``{"zoo": name, "config": {...}}`` rebuilds a zoo architecture from the stored
    config (so old files stay loadable when the registry changes);
    ``{"timm": name, "kwargs": {...}}`` calls ``timm.create_model(name, **kwargs)``;
    ``{"google_vit": {...}}`` builds a VisionTransformer with these arguments.
    """
    if "zoo" in arch:
        config = arch.get("config")
        if config is None:
            config = ZOO[arch["zoo"]]
        else:
            config = dict(config)
            cls = CifarViT if config.get("family") == "vit" else CifarResNet
            for key in ("channels", "layers"):
                if key in config:
                    config[key] = tuple(config[key])
            config = cls(**config)
        model = config.build()
        _attach(model, _cifar_cfg(arch["zoo"], config), {"zoo": arch["zoo"], "config": dataclasses.asdict(config)})
        return model
    if "timm" in arch:
        kwargs = dict(arch.get("kwargs", {}))
        model = timm.create_model(arch["timm"], pretrained=False, **kwargs)
        _match_input_size(model)
        model.vitlab_arch = {"timm": arch["timm"], "kwargs": kwargs}
        return model
    if "google_vit" in arch:
        kwargs = dict(arch["google_vit"])
        model = VisionTransformer(**kwargs)
        size = kwargs["img_size"]
        cfg = dict(_GOOGLE_VIT_CFG, input_size=(3, size, size), num_classes=kwargs["num_classes"])
        _attach(model, cfg, {"google_vit": kwargs})
        return model
    raise ValueError(f"unknown architecture record {arch!r}: expected a 'zoo', 'timm' or 'google_vit' key")


def _match_input_size(model: nn.Module) -> None:
    """Make ``pretrained_cfg['input_size']`` agree with the size the ViT was built for.

    timm keeps the default cfg's size (e.g. 224) when ``img_size=`` builds a model for
    another one, and preprocessing would then resize to the wrong size.
    """
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if img_size is None or "input_size" not in cfg:
        return
    if tuple(cfg["input_size"][1:]) != tuple(img_size):
        model.pretrained_cfg = dict(cfg, input_size=(cfg["input_size"][0], *img_size))
        model.default_cfg = model.pretrained_cfg


def _attach(model: nn.Module, pretrained_cfg: dict[str, Any], arch: dict[str, Any]) -> None:
    model.pretrained_cfg = dict(pretrained_cfg)
    model.default_cfg = model.pretrained_cfg  # older timm helpers read default_cfg
    model.vitlab_arch = arch


# --- loading -----------------------------------------------------------------------


def load_model(
    spec: str | os.PathLike,
    num_classes: int | None = None,
    *,
    device: str | torch.device | None = None,
    arch: str | None = None,
    **kw: Any,
) -> nn.Module:
    """Load a model by zoo name, timm name or local file, in eval mode.

    Args:
        spec: one of
            * a zoo name (see :func:`zoo`), loading its checkpoint from ``data/zoo``;
            * a timm name with optional pretrained tag, e.g.
              ``"vit_small_patch16_224.augreg_in21k"``: weights from the Hugging Face
              cache, downloaded when online (``pretrained=False`` for random weights);
            * a path to ``.safetensors``, ``.pt``/``.pth`` (a state dict, read with
              ``weights_only=True``) or a Google ``.npz`` ViT checkpoint.
        num_classes: replace the classifier head with one for this many classes.
        device: where to put the model; default CUDA when available, else CPU.
        arch: architecture (timm or zoo name) of a weights file that has no sidecar.
        **kw: passed to ``timm.create_model`` for timm names and architectures.

    Returns:
        The model, with ``pretrained_cfg`` describing its preprocessing.
    """
    device = torch.device(device) if device is not None else settings.default_device()
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if text.lower().endswith(_WEIGHT_SUFFIXES) or path.is_file():
        model = _load_file(path, arch=arch, **kw)
    elif text in ZOO:
        if kw:
            raise TypeError(f"zoo models take no extra arguments, got {sorted(kw)}")
        model = _load_zoo(text)
    elif timm.is_model(text.split(".", 1)[0]):
        model = _load_timm(text, num_classes=num_classes, **kw)
    else:
        raise ValueError(_unknown_spec_message(text))
    if num_classes is not None and model.num_classes != num_classes:
        _replace_head(model, num_classes)
    return model.to(device).eval()


def describe_load(spec: str) -> str:
    """Load ``spec`` and describe it in one line, or say why it cannot be loaded here."""
    try:
        model = load_model(spec, device="cpu")
    except (WeightsUnavailableError, ValueError, FileNotFoundError) as err:
        return f"{spec}: not available here. {err}"
    params = sum(p.numel() for p in model.parameters())
    return f"{spec}: {type(model).__name__}, {params:,} parameters, input {model.pretrained_cfg['input_size']}"


def _unknown_spec_message(text: str) -> str:
    names = list(ZOO) + timm.list_models()
    close = difflib.get_close_matches(text, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"{text!r} is neither a file, a zoo name ({', '.join(ZOO)}) nor a timm model name.{hint} "
        "List timm names with timm.list_models('vit_*')."
    )


def _load_zoo(name: str) -> nn.Module:
    model = build_model({"zoo": name})
    weights = ZOO_DIR / f"{name}.safetensors"
    if weights.is_file():
        _load_state(model, safetensors.torch.load_file(weights), weights)
    else:
        warnings.warn(
            f"zoo model {name!r} has no trained checkpoint in {ZOO_DIR}; returning random weights "
            f"(train one with: python -m vitlab train --model {name})",
            stacklevel=3,
        )
    return model


def _load_timm(spec: str, num_classes: int | None, pretrained: bool = True, **kw: Any) -> nn.Module:
    kwargs = dict(kw)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = _create_cache_first(spec, pretrained, kwargs)
    except OSError as err:  # hub: not cached and no connection (or offline mode)
        raise WeightsUnavailableError(
            f"pretrained weights for {spec!r} are not in the Hugging Face cache and could not be "
            f"downloaded ({type(err).__name__}). To get them: run once on a machine that is online "
            f"(they are cached in ~/.cache/huggingface, or HF_HOME); or download the model's "
            f"model.safetensors from https://huggingface.co/timm/{spec} and call "
            f"load_model('path/to/model.safetensors', arch={spec.split('.', 1)[0]!r}); or pass "
            f"pretrained=False for random weights."
        ) from None
    _match_input_size(model)
    # Rebuilding needs the bare architecture name: the pretrained tag only names weights.
    kwargs.setdefault("num_classes", model.num_classes)
    model.vitlab_arch = {"timm": spec.split(".", 1)[0], "kwargs": kwargs}
    return model


def _create_cache_first(spec: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``, trying the Hugging Face cache before the network.

    Cached weights then load with no network round trip, and an offline machine fails
    at once instead of after the hub's retries.
    """
    if not pretrained:
        return timm.create_model(spec, pretrained=False, **kwargs)
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(spec, pretrained=True, **kwargs)
    except OSError:
        if offline:
            raise
    finally:
        constants.HF_HUB_OFFLINE = offline
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    try:  # the hub's client would retry an unreachable host for most of a minute
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach {host}: {err}") from None
    return timm.create_model(spec, pretrained=True, **kwargs)


def _load_file(path: Path, arch: str | None, **kw: Any) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    suffix = path.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unsupported weights format {suffix!r}; use one of {_WEIGHT_SUFFIXES}")
    sidecar = path.with_suffix(".json")
    if arch is not None:
        record = {"zoo": arch} if arch in ZOO else {"timm": arch, "kwargs": kw}
        model, pretrained_cfg = build_model(record), None
    elif sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        model, pretrained_cfg = build_model(meta["architecture"]), meta.get("pretrained_cfg")
    elif suffix == ".npz":
        model, pretrained_cfg = build_model({"google_vit": _google_vit_args(path)}), None
    else:
        raise ValueError(
            f"{path} has no sidecar {sidecar.name} describing its architecture; pass arch=<timm "
            f"or zoo name>, e.g. load_model({str(path)!r}, arch='vit_small_patch16_224')"
        )
    if suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise ValueError(f"{path}: .npz checkpoints load only into timm VisionTransformer models")
        if model.num_classes != (classes := _google_vit_args(path)["num_classes"]):
            model.reset_classifier(classes)
        model.load_pretrained(str(path))
    else:
        state = safetensors.torch.load_file(path) if suffix == ".safetensors" else _read_torch_state(path)
        if arch is not None:
            _fit_head(model, state)
        _load_state(model, state, path)
    if pretrained_cfg:  # JSON turned timm's tuples into lists
        model.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained_cfg.items()}
        model.default_cfg = model.pretrained_cfg
    return model


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


def _fit_head(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Size the classifier like the checkpoint's, so ``arch=`` needs no ``num_classes``."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((n for n, m in model.named_modules() if m is head), None)
    weight = state.get(f"{name}.weight") if name else None
    if isinstance(head, nn.Linear) and weight is not None and weight.shape[0] != head.out_features:
        model.reset_classifier(weight.shape[0])


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
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


def _google_vit_args(path: Path) -> dict[str, Any]:
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


def _replace_head(model: nn.Module, num_classes: int) -> None:
    model.reset_classifier(num_classes)
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=num_classes)
    model.default_cfg = model.pretrained_cfg
    _update_arch(model, num_classes=num_classes)


def set_input_size(model: nn.Module, img_size: int) -> nn.Module:
    """Adapt ``model`` to ``img_size`` x ``img_size`` inputs, in place (for fine-tuning).

    A ViT's position embeddings are resampled in 2-D (bicubic, as timm does) to the new
    patch grid; a ResNet needs no change. ``pretrained_cfg`` and the architecture record
    follow, so preprocessing and saved sidecars use the new size.
    """
    if hasattr(model, "set_input_size"):
        model.set_input_size(img_size=(img_size, img_size))
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, img_size, img_size))
    model.default_cfg = model.pretrained_cfg
    _update_arch(model, img_size=img_size)
    return model


def _update_arch(model: nn.Module, **changes: Any) -> None:
    """Record architecture changes made after building, so a saved sidecar rebuilds them."""
    record = model.vitlab_arch
    if "zoo" in record:
        record["config"] = dict(record.get("config") or dataclasses.asdict(ZOO[record["zoo"]]), **changes)
    elif "timm" in record:
        record["kwargs"] = dict(record["kwargs"], **changes)
    else:
        record["google_vit"] = dict(record["google_vit"], **changes)


# --- saving ------------------------------------------------------------------------


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save weights as ``.safetensors`` with a JSON sidecar that rebuilds the architecture.

    Both files are written atomically. ``metadata`` (e.g. training config and metrics)
    is stored in the sidecar beside the architecture record and ``pretrained_cfg``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save to a .safetensors path, got {path}")
    arch = getattr(model, "vitlab_arch", None)
    if arch is None:
        raise ValueError(
            "this model was not built by vitlab, so its architecture is unknown; create it with "
            "vitlab.load_model(...) (e.g. load_model('vit_small_patch16_224', pretrained=False))"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp))
    meta = dict(metadata or {})
    meta.update(format=SIDECAR_FORMAT, architecture=arch, pretrained_cfg=_jsonable(model.pretrained_cfg))
    write_json(path.with_suffix(".json"), meta)
    return path


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# --- preprocessing -----------------------------------------------------------------


def preprocess(model: nn.Module, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
    """Turn uint8 images (N, 3, H, W) into the normalised float batch ``model`` expects.

    Images are resized to the model's ``input_size`` when their size differs and
    ``resize`` is true (with the interpolation its ``pretrained_cfg`` names), scaled to
    [0, 1], normalised with its mean and std, and moved to the model's device.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 tensor (N, 3, H, W) with values 0..255")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    cfg = timm.data.resolve_model_data_config(model)
    device = next(model.parameters()).device
    x = images.to(device).float() / 255.0  # (N, 3, H, W)
    size = tuple(cfg["input_size"][1:])
    if resize and x.shape[-2:] != size:
        mode = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp_(0, 1)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std
