"""The images an explorer shows: a batch resized for each model, or your own files and uploads read as the model
evaluates them."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import torch
from torch import nn

from .. import data
from .controls import Recent


class ImageSource:
    """The images an explorer shows: a uint8 batch (N, 3, H, W) resized for each model, or image files (a folder, a
    file, a list, an upload's ``{name: bytes}``) read for each model as timm evaluates it (short side, centre crop).
    Files' headers are checked (and named) when given, so a bad file fails before any explorer draws."""
    def __init__(self, images: Any, names: Sequence[str] | None = None, described: str | None = None):
        if isinstance(images, torch.Tensor):
            self.batch, self.files = images, None
            self.names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
            self.shorts = [min(images.shape[-2:])] * len(images)
        else:
            self.files, self.batch = images, None
            headers = data.image_files.short_sides(images)  # every header read: bad files fail here, in one line
            self.names = list(names) if names is not None else [name for name, _ in headers]
            self.shorts = [short for _, short in headers]
        self.described = described or f"the {len(self.names)} images given"
        self._read = Recent(4)

    def __len__(self) -> int:
        return len(self.names)

    def for_model(self, model: nn.Module, count: int | None = None, resized: bool = True) -> torch.Tensor:
        """The first ``count`` images (all: None) as ``model`` takes them; ``resized=False`` leaves a batch's images
        at their size (the analysis resizes them batch by batch)."""
        if self.files is None:
            images = self.batch[:count]
            return data.resize(images, model.pretrained_cfg["input_size"][1:]) if resized else images
        cfg = model.pretrained_cfg
        key = (tuple(cfg["input_size"]), cfg.get("crop_pct"), cfg.get("interpolation"), cfg.get("crop_mode"))

        def read() -> torch.Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # :meth:`note` says it
                return data.images(self.files, model)[0]
        return self._read.keep(key, read)[:count]

    def note(self, model: nn.Module, count: int | None = None) -> str:
        """A warning when the first ``count`` images (all: None) are far from ``model``'s input size (a CIFAR model
        shown a photograph)."""
        return data.far_note(self.shorts[:count], self.names[:count], model.pretrained_cfg["input_size"][1:]) or ""


def upload_box() -> W.FileUpload:
    """An upload button for image files (several at once)."""
    return W.FileUpload(accept="image/*", multiple=True, description="your images", layout=W.Layout(width="auto"))


def uploaded(value: Sequence[dict]) -> dict[str, bytes]:
    """An upload widget's files as ``{name: bytes}`` (ipywidgets 8: a tuple of dicts with name and content)."""
    return {item["name"]: bytes(item["content"]) for item in value}
