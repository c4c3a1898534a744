"""What a model can take as input: :func:`preprocess` makes the batch it expects from its ``pretrained_cfg``;
:func:`check_images` and :func:`check_input` turn a wrong batch into one line saying what to pass instead."""
from __future__ import annotations

import timm
import torch
from torch import nn

from .. import data

#: How far outside [0, 1] a pixel may stray before its normalised value counts as far outside the model's range:
#: resizing and augmentation overshoot by a little, a float image left in 0..255 by about 250.
PIXEL_SLACK = 2.0


def _normalised_range(model: nn.Module, slack: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(C,), (C,): the lowest and highest normalised values of pixels in [-slack, 1 + slack]; None if unknown."""
    try:
        cfg = timm.data.resolve_model_data_config(model)
        mean = torch.tensor(cfg["mean"], dtype=torch.float64).flatten()
        std = torch.tensor(cfg["std"], dtype=torch.float64).flatten()
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None
    if mean.shape != std.shape or not len(mean) or not bool((std > 0).all() and mean.isfinite().all()):
        return None
    return (-slack - mean) / std, (1 + slack - mean) / std


def _check_batch(model: nn.Module, images: object, what: str) -> None:
    """A batch (B, C, H, W) of uint8 or float images with the model's C and at least one image."""
    if not isinstance(images, torch.Tensor):
        hint = ": convert with torch.from_numpy(images)" if type(images).__module__ == "numpy" else ""
        raise TypeError(f"{what} must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}{hint}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{what} are {images.dtype}: pass uint8 images (0..255) or a normalised float batch "
                        "from vitlab.preprocess(model, images)")
    if images.ndim != 4:
        hint = ": for one image pass images[None]" if images.ndim == 3 else ""
        raise ValueError(f"{what} must be a batch (B, C, H, W), got shape {tuple(images.shape)}{hint}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {tuple(images.shape)}): pass at least one image")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)  # patch embedding or stem
    if first is not None and images.shape[1] != first.in_channels:
        hint = ": repeat a grayscale channel with images.expand(-1, 3, -1, -1)" if images.shape[1] == 1 else ""
        got = f"{images.shape[1]} channel" + "s" * (images.shape[1] != 1)
        raise ValueError(f"{what} have {got}, but the model takes {first.in_channels} "
                         f"(shape {tuple(images.shape)}){hint}")


def _check_size(model: nn.Module, size: tuple[int, int], what: str) -> None:
    """``size`` (H, W) pixels is one the model's patch embedding accepts (timm would assert)."""
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "img_size", None) is None or getattr(embed, "dynamic_img_pad", False):
        return
    pixels = embed.feat_ratio(as_scalar=False) if hasattr(embed, "feat_ratio") else embed.patch_size  # hybrids: stride
    (h, w), (ph, pw) = size, pixels
    try:  # (H, W) that vitlab.preprocess resizes to
        target = timm.data.resolve_model_data_config(model)["input_size"][1:]
    except (KeyError, TypeError, ValueError, RuntimeError):  # a broken pretrained_cfg: the built size
        target = model.patch_embed.img_size
    target = "x".join(str(int(v)) for v in target)
    if getattr(embed, "strict_img_size", True):
        if (h, w) != tuple(embed.img_size):
            raise ValueError(f"{what} are {h}x{w} pixels, but the model takes {embed.img_size[0]}x{embed.img_size[1]}: "
                             f"pass uint8 images (vitlab.preprocess(model, images) resizes them to {target})")
    elif h % ph or w % pw:
        raise ValueError(f"{what} are {h}x{w} pixels, not a multiple of the model's {ph}x{pw} patch size: crop "
                         f"them, or pass uint8 images to vitlab.preprocess(model, images), which resizes to {target}")


def _check_values(model: nn.Module, x: torch.Tensor, what: str) -> None:
    """A float batch is finite, of the model's dtype, and near the model's normalised range."""
    weights = next(model.parameters(), None)
    if weights is not None and x.dtype != weights.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{what} are {x.dtype}, but the model computes in {weights.dtype}: "
                        f"pass images.to({weights.dtype})")
    lo, hi = x.amin(dim=(0, 2, 3)).double().cpu(), x.amax(dim=(0, 2, 3)).double().cpu()  # (C,): NaN propagates
    if not bool(lo.isfinite().all() and hi.isfinite().all()):
        counts = {"NaN": int(x.isnan().sum()), "inf": int(x.isinf().sum())}
        kinds = " and ".join(f"{k} ({n} of {x.numel()} values)" for k, n in counts.items() if n)
        raise ValueError(f"{what} contain {kinds}: drop or repair those images before the forward pass")
    bounds = _normalised_range(model, PIXEL_SLACK)
    if bounds is None or len(bounds[0]) != len(lo):
        return
    if bool((lo < bounds[0]).any() or (hi > bounds[1]).any()):
        low, high = _normalised_range(model)
        raise ValueError(f"{what} hold values from {lo.min():.4g} to {hi.max():.4g}, far outside the model's "
                         f"normalised range (about {low.min():.2f}..{high.max():.2f} for its pretrained_cfg mean "
                         "and std): pass uint8 images (0..255) or call vitlab.preprocess(model, images) first")


def input_size(model: nn.Module) -> tuple[int, int]:
    """The (height, width) in pixels the model takes, from its data config (``pretrained_cfg``)."""
    size = timm.data.resolve_model_data_config(model)["input_size"][1:]
    return int(size[0]), int(size[1])


def check_input(model: nn.Module, x: object, what: str = "images given to model(...)") -> None:
    """Raise a one-line error unless ``x`` is a float batch (B, C, H, W) as :func:`vitlab.preprocess` returns."""
    _check_batch(model, x, what)
    if x.dtype == torch.uint8:
        raise TypeError(f"{what} are uint8: call vitlab.preprocess(model, images) first, which scales and "
                        "normalises them as the model expects")
    _check_size(model, tuple(x.shape[-2:]), what)
    _check_values(model, x, what)


def check_images(model: nn.Module, images: object, what: str = "images") -> None:
    """Raise a one-line error unless ``images`` are uint8 (B, C, H, W) or pass :func:`check_input`."""
    _check_batch(model, images, what)
    if images.dtype != torch.uint8:
        check_input(model, images, what)
    elif getattr(model, "dynamic_img_size", False):
        _check_size(model, tuple(images.shape[-2:]), what)


def preprocess(model: nn.Module, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
    """Turn uint8 images (N, 3, H, W) into the batch ``model`` expects: resized, normalised, on its device and in its
    parameters' dtype (a half or bf16 model gets half or bf16; the scaling itself runs in fp32)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 tensor (N, 3, H, W) with values 0..255")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    cfg = timm.data.resolve_model_data_config(model)
    weights = next(model.parameters())
    device, dtype = weights.device, weights.dtype if weights.is_floating_point() else torch.float32
    x = images.to(device).float() / 255.0  # (N, 3, H, W) in [0, 1]
    if resize:
        x = data.resize(x, tuple(cfg["input_size"][1:]), cfg.get("interpolation", "bicubic"))  # (N, 3, h, w)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)
