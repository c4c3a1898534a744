"""Building, loading and saving models: timm names, local files and zoo checkpoints.

Every model vitlab returns carries

* ``model.pretrained_cfg``: its preprocessing in timm's convention (``input_size``,
  ``mean``, ``std``, ...), so ``timm.data.resolve_model_data_config(model)`` works;
* ``model.vitlab_arch``: a JSON-able record that rebuilds the architecture, written
  into the sidecar by :func:`save_model` so saved files load without extra arguments.

The CIFAR architectures are defined in :mod:`vitlab.architectures` and the weight-file
readers in :mod:`vitlab.weights`; this module decides what a spec names and puts it together.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import socket
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import data, settings
# The architectures are re-exported: models.ARCHITECTURES, models.CifarViT, ... keep working.
from .architectures import ARCHITECTURES, Architecture, CifarResNet, CifarViT, architecture  # noqa: F401
from .io import atomic_path, write_json
from .weights import GOOGLE_VIT_CFG, SUFFIXES, fit_head, google_vit_args, load_google_npz, load_state, read_state_dict

ZOO_DIR = settings.PROJECT_ROOT / "data" / "zoo"
SIDECAR_FORMAT = 1


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def _cifar_cfg(name: str, config: Architecture) -> dict[str, Any]:
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


# --- building from an architecture record --------------------------------------------


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a ``vitlab_arch`` record (as saved in sidecars).

    ``{"zoo": name, "config": {...}}`` rebuilds a zoo architecture from the stored
    config (so old files stay loadable when the registry changes);
    ``{"timm": name, "kwargs": {...}}`` calls ``timm.create_model(name, **kwargs)``;
    ``{"google_vit": {...}}`` builds a VisionTransformer with these arguments.
    """
    if "zoo" in arch:
        config = architecture(arch["zoo"], arch.get("config"))
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
        cfg = dict(GOOGLE_VIT_CFG, input_size=(3, size, size), num_classes=kwargs["num_classes"])
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
            * a zoo name (see :func:`vitlab.zoo.zoo`): its checkpoint ``data/zoo/<name>.safetensors``
              (architecture from its sidecar), or random weights of the architecture of
              that name with a warning when there is no checkpoint;
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
    if text.lower().endswith(SUFFIXES) or path.is_file():
        model = _load_file(path, arch=arch, **kw)
    elif text in ARCHITECTURES or ("/" not in text and zoo_weights(text).is_file()):
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
    zoo = sorted({*ARCHITECTURES, *(p.stem for p in ZOO_DIR.glob("*.safetensors"))})
    close = difflib.get_close_matches(text, zoo + timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"{text!r} is neither a file, a zoo name ({', '.join(zoo)}) nor a timm model name.{hint} "
        "List timm names with timm.list_models('vit_*')."
    )


def zoo_weights(name: str) -> Path:
    """Where the zoo checkpoint called ``name`` lives (it may not exist)."""
    return ZOO_DIR / f"{name}.safetensors"


def _load_zoo(name: str) -> nn.Module:
    weights = zoo_weights(name)
    if weights.is_file():
        # The sidecar names the architecture, so a checkpoint may be named apart from it.
        fallback = name if name in ARCHITECTURES and not weights.with_suffix(".json").is_file() else None
        return _load_file(weights, arch=fallback)
    warnings.warn(
        f"zoo model {name!r} has no trained checkpoint in {ZOO_DIR}; returning random weights "
        f"(train one with: python -m vitlab train --model {name})",
        stacklevel=3,
    )
    return build_model({"zoo": name})


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
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported weights format {suffix!r}; use one of {SUFFIXES}")
    sidecar = path.with_suffix(".json")
    if arch is not None:
        record = {"zoo": arch} if arch in ARCHITECTURES else {"timm": arch, "kwargs": kw}
        model, pretrained_cfg = build_model(record), None
    elif sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        model, pretrained_cfg = build_model(meta["architecture"]), meta.get("pretrained_cfg")
    elif suffix == ".npz":
        model, pretrained_cfg = build_model({"google_vit": google_vit_args(path)}), None
    else:
        raise ValueError(
            f"{path} has no sidecar {sidecar.name} describing its architecture; pass arch=<timm "
            f"or zoo name>, e.g. load_model({str(path)!r}, arch='vit_small_patch16_224')"
        )
    if suffix == ".npz":
        load_google_npz(model, path)
    else:
        state = read_state_dict(path)
        if arch is not None:
            fit_head(model, state)
        load_state(model, state, path)
    if pretrained_cfg:  # JSON turned timm's tuples into lists
        model.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained_cfg.items()}
        model.default_cfg = model.pretrained_cfg
    return model


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
        record["config"] = dict(record.get("config") or dataclasses.asdict(ARCHITECTURES[record["zoo"]]), **changes)
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
    x = images.to(device).float() / 255.0  # (N, 3, H, W) in [0, 1]
    if resize:
        x = data.resize(x, tuple(cfg["input_size"][1:]), cfg.get("interpolation", "bicubic"))  # (N, 3, h, w)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std
