"""timm's models and their pretrained weights: the Hugging Face cache first, the network only when online."""
from __future__ import annotations

import socket
import urllib.parse
from typing import Any

import timm
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def pretrained_tags(name: str) -> list[str]:
    """The pretrained tags timm has weights for under the architecture ``name``, e.g. ``augreg_in21k``."""
    base = timm.models.split_model_name_tag(name)[0]
    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]


def match_input_size(model: nn.Module) -> None:
    """Make ``pretrained_cfg['input_size']`` agree with the size the ViT was built for (timm keeps the default's)."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if img_size is not None and "input_size" in cfg and tuple(cfg["input_size"][1:]) != tuple(img_size):
        model.pretrained_cfg = dict(cfg, input_size=(cfg["input_size"][0], *img_size))
        model.default_cfg = model.pretrained_cfg


def load_timm(spec: str, num_classes: int | None, pretrained: bool = True, **kw: Any) -> nn.Module:
    """``timm.create_model(spec)`` with weights from the Hugging Face cache or online, else WeightsUnavailableError."""
    kwargs = dict(kw) if num_classes is None else dict(kw, num_classes=num_classes)
    try:
        model = _create_cache_first(spec, pretrained, kwargs)
    except OSError as err:  # hub: not cached and no connection (or offline mode)
        raise WeightsUnavailableError(
            f"pretrained weights for {spec!r} are not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}). To get them: run once on a machine that is online (they are cached in "
            f"~/.cache/huggingface, or HF_HOME); or download the model's model.safetensors from "
            f"https://huggingface.co/timm/{spec} and call load_model('path/to/model.safetensors', "
            f"arch={spec.split('.', 1)[0]!r}); or pass pretrained=False for random weights.") from None
    match_input_size(model)
    # Rebuilding needs the bare architecture name: the pretrained tag only names weights.
    kwargs.setdefault("num_classes", model.num_classes)
    model.vitlab_arch = {"timm": spec.split(".", 1)[0], "kwargs": kwargs}
    return model


def _create_cache_first(spec: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``, trying the Hugging Face cache before the network (whose retries take a minute)."""
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
