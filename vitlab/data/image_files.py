"""Your own images as uint8 batches at a model's input size: a folder, a file, a list of files or uploaded bytes,
in any size and mode, EXIF orientation applied, resized and centre-cropped as timm's eval transform does; and
:func:`resize`, vitlab's one resize path."""
from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import CorruptDataError, _strict_decoding, to_rgb

#: Images whose shorter side is below this many pixels are refused: a 1x1 image is one colour, and any smaller
#: than a few patches holds no structure an analysis could read; enlarged to the model's size it is a flat blur.
MIN_SIDE = 8
#: An image of more pixels is shrunk by a whole factor while it is decoded (JPEG's DCT scaling, else PIL's
#: ``reduce``), never below the size it is resized to: a 10,000-pixel-wide photo costs tens of MB, not GBs.
DECODE_PIXELS = 2**22
#: Warn when the images' shorter side is this many times the model's input side or more (or this many times less).
FAR_FACTOR = 4


class ImageInputError(CorruptDataError):
    """An image given to :func:`images` cannot be used: none found, not an image, unreadable, too small."""


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a batch (N, C, H, W) to ``size`` (height, width), antialiased: vitlab's one resize path.
    uint8 stays uint8 (rounded, clamped); float images in [0, 1] come back clamped to [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    out = F.interpolate(images.float(), size=size, mode=mode, align_corners=False, antialias=True)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0, 1).to(images.dtype)


def images(source: Any, model: Any = None, size: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Read images into a uint8 batch (N, 3, H, W) and their names, as a model sees them in evaluation.

    Args:
        source: a folder (its files, not subfolders; hidden files skipped), one image file, a list of files, or
            ``{name: bytes}`` (an upload). Any size; RGB, grey, palette, CMYK, 16-bit grey (scaled, not clipped);
            transparent pixels are composited on white. EXIF orientation is applied.
        model: a model carrying timm's ``pretrained_cfg`` (or that dict): the short side is resized to
            ``input_size / crop_pct`` with its interpolation, then the centre ``input_size`` is cropped, as timm's
            ``transforms_imagenet_eval`` does (a cfg without ``crop_pct``, like old zoo sidecars, crops at 1.0).
        size: side in pixels of the square output (instead of the model's input size); without a model or size
            the images keep their size, which must then be the same for all.

    Raises ImageInputError (one line, naming the file) for no images, a non-image, an unreadable or truncated
    file, or an image under ``MIN_SIDE`` pixels; every file's header is checked before any is decoded. Warns when
    the images' short side is ``FAR_FACTOR`` times the model's input side or more (or as many times less)."""
    files = _image_files(source)
    target, crop_pct, interpolation, squash = _preprocessing(model, size)
    shorts = [_header_short_side(name, file) for name, file in files]  # refuse bad files before decoding any
    names = [name for name, _ in files]
    if model is not None:
        _warn_if_far(shorts, names, target)
    scale = None if target is None else _scale_size(target, crop_pct)
    keep = math.inf if scale is None else max(scale)  # shrinking while decoding never goes below this short side
    batch = []
    for name, file in files:
        image = torch.from_numpy(_decode(name, file, keep)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        if target is not None:
            shape = scale if squash else _resized_shape(tuple(image.shape[-2:]), scale)
            image = _centre_crop(resize(image, shape, interpolation), target)
        batch.append(image)
    if target is None and len({tuple(b.shape) for b in batch}) > 1:
        seen = ", ".join(f"{n} {b.shape[-1]}x{b.shape[-2]}" for n, b in list(zip(names, batch))[:3])
        raise ImageInputError(f"the images differ in size ({seen}, ...): pass size= (pixels) or model= to resize "
                              "them to one size")
    return torch.cat(batch), names


def _image_files(source: Any) -> list[tuple[str, Path | bytes]]:
    """(name, path or bytes) of every image ``source`` names, in order; errors for missing or empty sources."""
    if isinstance(source, Mapping):
        files = [(str(name), bytes(content)) for name, content in source.items()]
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = [(p.name, p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
            if not files:
                raise ImageInputError(f"{path} holds no image files (subfolders are not searched): put images in "
                                      "it, or pass an image file or a list of them")
        else:
            files = [(path.name, path)]
    elif isinstance(source, (list, tuple)):
        files = [(Path(p).name, Path(p)) for p in source if isinstance(p, (str, os.PathLike))]
        if len(files) != len(source):
            bad = next(p for p in source if not isinstance(p, (str, os.PathLike)))
            raise TypeError(f"a list of images holds file paths, got a {type(bad).__name__} among them")
    else:
        raise TypeError(f"images() reads a folder, an image file, a list of image files or {{name: bytes}}, got a "
                        f"{type(source).__name__}")
    if not files:
        raise ImageInputError("no images given: pass a folder, an image file or a non-empty list of image files")
    for _, file in files:
        if isinstance(file, Path) and not file.is_file():
            what = "is a folder: pass it alone, not in a list" if file.is_dir() else "does not exist"
            raise FileNotFoundError(f"{file} {what}: pass a folder of images, an image file or a list of image files")
    return files


def _preprocessing(model: Any, size: Any) -> tuple[tuple[int, int] | None, float, str, bool]:
    """(target (H, W) or None, crop_pct, interpolation, squash) from the model's ``pretrained_cfg`` and ``size``."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a whole number of pixels >= 1, got {size!r}")
    if model is None:
        return (None if size is None else (int(size), int(size))), 1.0, "bicubic", False
    cfg = model if isinstance(model, Mapping) else getattr(model, "pretrained_cfg", None)
    try:
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm's cfg keeps its default's
        target = (int(size), int(size)) if size is not None else tuple(int(v) for v in built or cfg["input_size"][1:])
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        assert len(target) == 2 and min(target) >= 1 and crop_pct > 0
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
        raise TypeError(f"model has no usable pretrained_cfg (timm's preprocessing: 'input_size' (3, H, W), "
                        f"'crop_pct'), got {type(model).__name__}: load it with vitlab.load_model, or pass size= "
                        "instead of model=") from None
    return target, crop_pct, str(cfg.get("interpolation") or "bicubic"), cfg.get("crop_mode") == "squash"


def _scale_size(target: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """What the short side is resized to before the crop: ``floor(target / crop_pct)``, never below the target."""
    return tuple(max(t, math.floor(t / crop_pct)) for t in target)


def _resized_shape(shape: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) that keeps the aspect ratio of ``shape`` and covers ``scale``: for a square scale the short side
    becomes ``scale`` and the long one is truncated (torchvision's ``Resize(int)``); otherwise both are rounded
    (timm's ``ResizeKeepRatio``)."""
    (h, w), (sh, sw) = shape, scale
    if sh == sw:
        short, long = min(h, w), max(h, w)
        new_long = int(sh * long / short)
        return (sh, new_long) if h <= w else (new_long, sh)
    ratio = min(h / sh, w / sw)
    return round(h / ratio), round(w / ratio)


def _centre_crop(images: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """The centre ``target`` (H, W) of (N, C, H', W') images, offsets rounded as torchvision's ``center_crop``."""
    h, w = images.shape[-2:]
    top, left = int(round((h - target[0]) / 2.0)), int(round((w - target[1]) / 2.0))
    return images[..., top:top + target[0], left:left + target[1]]  # (N, C, th, tw)


def _open(file: Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(file) if isinstance(file, bytes) else file)


def _unreadable(name: str, err: Exception) -> ImageInputError:
    if isinstance(err, UnidentifiedImageError):
        return ImageInputError(f"{name} is not an image (PIL cannot identify it): leave it out (move it out of the "
                               "folder, or pass a list of the image files)")
    why = str(err).replace(str(name), "...").splitlines()[0] if str(err) else ""
    return ImageInputError(f"{name} is not a readable image ({type(err).__name__}: {why}): replace it with a good "
                           "copy or leave it out")


def short_sides(source: Any) -> list[tuple[str, int]]:
    """(name, shorter side in pixels) of each image ``source`` names (as :func:`images` takes it), from headers only:
    the same one-line errors as :func:`images` for no images, a non-image or one too small, without decoding any."""
    return [(name, _header_short_side(name, file)) for name, file in _image_files(source)]


def _header_short_side(name: str, file: Path | bytes) -> int:
    """The shorter side in pixels, read from the header only; refuses a non-image or one under ``MIN_SIDE``."""
    name = str(file) if isinstance(file, Path) else name
    try:
        with _open(file) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's errors for bad files
        raise _unreadable(name, err) from None
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(f"{name} is {width}x{height} pixels, too small to show anything: images need at least "
                              f"{MIN_SIDE} pixels a side; leave it out or use a larger copy")
    return min(width, height)


def _shrink_factor(size: tuple[int, int], keep: float) -> int:
    """The whole factor that brings an image under ``DECODE_PIXELS`` pixels, with its short side at least ``keep``."""
    width, height = size
    if width * height <= DECODE_PIXELS:
        return 1
    wanted = math.ceil(math.sqrt(width * height / DECODE_PIXELS))
    return max(1, min(wanted, int(min(width, height) // keep) if keep != math.inf else 1))


def _decode(name: str, file: Path | bytes, keep: float) -> np.ndarray:
    """The upright pixels of one image as uint8 (H, W, 3); a large one is shrunk while decoding (see
    :data:`DECODE_PIXELS`), keeping its short side at least ``keep`` pixels."""
    try:
        with _strict_decoding(), _open(file) as im:
            if _shrink_factor(im.size, keep) > 1 and im.format == "JPEG":  # scaled in the DCT: as far as ``keep``
                factor = int(min(im.size) // keep)  # allows; the decoder picks 1/2, 1/4 or 1/8, never below the request
                im.draft(im.mode, (math.ceil(im.size[0] / factor), math.ceil(im.size[1] / factor)))
            im.load()  # a truncated file fails here, not as grey pixels
            factor = _shrink_factor(im.size, keep)
            small = im.reduce(factor) if factor > 1 else im  # keeps the EXIF info exif_transpose reads
            return _rgb(ImageOps.exif_transpose(small)).copy()  # writable, as torch.from_numpy wants
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(str(file) if isinstance(file, Path) else name, err) from None


def _rgb(im: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3): transparency composited on white (what a viewer shows on a white page; dropping alpha
    would reveal whatever colour an editor left under transparent pixels), 16-bit grey scaled by :func:`to_rgb`."""
    if "A" in im.getbands() or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, im.convert("RGBA")).convert("RGB"))
    return to_rgb(im)


def _warn_if_far(shorts: list[int], names: list[str], target: tuple[int, int]) -> None:
    """One warning when images are ``FAR_FACTOR`` times larger or smaller than the model's input (short sides)."""
    note = far_note(shorts, names, target)
    if note:
        warnings.warn(note, stacklevel=3)


def far_note(shorts: list[int], names: list[str], target: tuple[int, int]) -> str | None:
    """What to beware of when images' short sides ``shorts`` are ``FAR_FACTOR`` times the model's input side
    (``target`` (H, W)) or more, or as many times less; None when none is."""
    side = min(target)
    far = [(n, s) for n, s in zip(names, shorts) if s >= FAR_FACTOR * side or s * FAR_FACTOR <= side]
    if not far:
        return None
    low, high = min(s for _, s in far), max(s for _, s in far)
    sides = f"{low}" if low == high else f"{low}-{high}"
    way = "shrunk" if low >= side else "enlarged"
    factor = max(low / side, side / low)
    return (f"{len(far)} of {len(names)} images (e.g. {far[0][0]}) have a short side of {sides} px, far from the "
            f"{side} px images this model takes: it sees them {way} about {factor:.0f}x, unlike the images it was "
            "trained on, so expect its outputs to say less")
