"""The CIFAR-scale architectures vitlab trains (:data:`ARCHITECTURES`), as frozen records of their shape that build
timm models; :func:`architecture` rebuilds one from a saved file's record even when the registry has changed."""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from collections.abc import Mapping
from typing import Any

from timm.layers import HybridEmbed
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

#: The largest image side (pixels) a model is built or resized for: position embeddings and activations grow with its
#: square, so a mistyped size would otherwise try to allocate hundreds of GB.
MAX_IMG_SIZE = 4096
#: The whole-number architecture arguments a stored record may set, and their smallest and largest values: beyond them a
#: record is refused before anything is built (a width or class count of 1e9 would try to allocate hundreds of GB).
LIMITS = dict(img_size=(1, MAX_IMG_SIZE), patch_size=(1, MAX_IMG_SIZE), embed_dim=(1, 8192), depth=(1, 256),
              num_heads=(1, 256), num_classes=(0, 100_000), in_chans=(1, 64), channels=(1, 8192), layers=(1, 64))
MAX_MLP_RATIO = 64  #: the largest ``mlp_ratio`` (hidden width over embed_dim) a record may set
_LISTS = ("img_size", "patch_size", "channels", "layers")  #: arguments that may be lists of whole numbers


@dataclass(frozen=True, kw_only=True)
class _Transformer:
    """The transformer fields a ViT and a hybrid share (each adds ``img_size`` and ``num_classes``)."""
    description: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0

    def _transformer(self, **embedding: Any) -> VisionTransformer:
        """The class-token VisionTransformer of this shape; ``embedding`` says how tokens are made."""
        # dynamic_img_size lets analysis run on other sizes and non-square inputs.
        return VisionTransformer(img_size=self.img_size, num_classes=self.num_classes, embed_dim=self.embed_dim,
                                 depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                                 global_pool="token", dynamic_img_size=True, **embedding)


@dataclass(frozen=True, kw_only=True)
class CifarViT(_Transformer):
    """A ViT for 32x32 inputs; patch 4 gives an 8x8 grid of patches."""
    patch_size: int = 4
    img_size: int = 32
    num_classes: int = 10
    family: str = "vit"

    def build(self) -> nn.Module:
        return self._transformer(patch_size=self.patch_size)


def _resnet(channels: tuple[int, ...], layers: tuple[int, ...], **kw: Any) -> ResNet:
    """timm's ResNet of basic blocks with a CIFAR first convolution (3x3, stride 1)."""
    net = ResNet(block=BasicBlock, layers=layers, channels=channels, stem_type="deep",
                 stem_width=channels[0] // 2, **kw)  # a deep stem of width w feeds 2w channels onwards
    net.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
    return net


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
        model = _resnet(self.channels, self.layers, num_classes=self.num_classes)
        # ImageNet's stride-4 stem would shrink a 32x32 image to 8x8 before the first stage.
        model.maxpool = nn.Identity()
        for info in model.feature_info:
            info["reduction"] = max(1, info["reduction"] // 4)
        return model


@dataclass(frozen=True, kw_only=True)
class CifarHybrid(_Transformer):
    """A hybrid ViT (paper section 3.1): 1x1 patches of a small ResNet's map (the R50 stem's max-pool kept)."""
    channels: tuple[int, ...] = (32, 64)
    layers: tuple[int, ...] = (1, 1)
    img_size: int = 32
    num_classes: int = 10
    family: str = "hybrid"

    @property
    def stride(self) -> int:
        """Pixels between neighbouring positions of the feature map (its tokens): the max-pool's 2, then 2 per stage."""
        return 2 ** len(self.layers)

    def backbone(self) -> nn.Module:
        """The CNN alone: (B, 3, H, W) images to (B, channels[-1], H / stride, W / stride) maps."""
        net = _resnet(self.channels, self.layers)  # its forward assumes four stages: run its modules in order
        stem = dict(conv1=net.conv1, bn1=net.bn1, act1=net.act1, maxpool=net.maxpool)
        stages = {f"layer{i + 1}": getattr(net, f"layer{i + 1}") for i in range(len(self.layers))}
        return nn.Sequential(OrderedDict({**stem, **stages}))

    def build(self) -> nn.Module:
        return self._transformer(patch_size=1, embed_layer=partial(HybridEmbed, backbone=self.backbone()))


Architecture = CifarViT | CifarResNet | CifarHybrid


def _vit(embed_dim: int, depth: int, num_heads: int, patch_size: int = 4, note: str = "") -> CifarViT:
    grid = CifarViT.img_size // patch_size
    return CifarViT(description=f"ViT, patch {patch_size} ({grid}x{grid} grid), width {embed_dim}, {depth} blocks, "
                    f"{num_heads} heads{note}", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                    patch_size=patch_size)


#: The CIFAR-10 architectures vitlab builds, by name (zoo entries name one of them).
ARCHITECTURES: dict[str, Architecture] = {
    "vit_tiny_c10": _vit(128, 6, 4),
    "vit_small_c10": _vit(192, 9, 6),
    "resnet_tiny_c10": CifarResNet(description="ResNet-18 of basic blocks, widths 16-128, CIFAR stem",
                                   channels=(16, 32, 64, 128)),
    "resnet_small_c10": CifarResNet(description="ResNet-18 of basic blocks, widths 32-256, CIFAR stem",
                                    channels=(32, 64, 128, 256)),
    "hybrid_tiny_c10": CifarHybrid(description="Hybrid: ResNet stem and 2 stages (widths 32, 64; 8x8 map), 1x1 "
                                   "patches, width 128, 5 blocks, 4 heads", embed_dim=128, depth=5, num_heads=4),
    # Minute-scale models for quick-mode sweeps and tests of the whole pipeline.
    "vit_micro_c10": _vit(32, 2, 2, patch_size=8, note=" (quick runs)"),
    "resnet_micro_c10": CifarResNet(description="ResNet of basic blocks, one per stage, widths 8-64, CIFAR stem "
                                    "(quick runs)", channels=(8, 16, 32, 64), layers=(1, 1, 1, 1)),
    "hybrid_micro_c10": CifarHybrid(description="Hybrid: ResNet stem and 3 stages (widths 8-32; 4x4 map), 1x1 "
                                    "patches, width 32, 2 blocks, 2 heads (quick runs)", embed_dim=32, depth=2,
                                    num_heads=2, channels=(8, 16, 32), layers=(1, 1, 1)),
}


def architecture(name: str, config: dict[str, Any] | None = None) -> Architecture:
    """The architecture ``name`` of :data:`ARCHITECTURES`, or the one a stored ``config`` (its fields) describes."""
    if config is None:
        if name not in ARCHITECTURES:
            close = difflib.get_close_matches(str(name), ARCHITECTURES, n=1)
            hint = f"Did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown zoo architecture {name!r}. {hint}Known: {', '.join(ARCHITECTURES)}.")
        return ARCHITECTURES[name]
    if not isinstance(config, dict):
        raise ValueError(f"the config of architecture {name!r} must be a mapping of fields, got {config!r}")
    config = dict(config)
    cls = {"vit": CifarViT, "hybrid": CifarHybrid}.get(config.get("family"), CifarResNet)
    fields = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    unknown, missing = sorted(set(config) - fields), sorted(required - set(config))
    if unknown or missing:
        wrong = [f"{label} fields {', '.join(keys)}" for label, keys in (("unknown", unknown), ("missing", missing))
                 if keys]
        raise ValueError(f"the config of architecture {name!r} is not a {cls.__name__}: {'; '.join(wrong)}")
    check_arguments(config)
    config.update({key: tuple(config[key]) for key in ("channels", "layers") if key in config})
    return cls(**config)


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first of ``arguments`` (a zoo config's fields, or timm ``VisionTransformer``
    arguments) that is not a whole number within :data:`LIMITS` (``img_size``, ``patch_size``: or a pair of them;
    ``channels``, ``layers``: a list of them), an ``mlp_ratio`` that is no number in (0, 64], or a shape that
    cannot be built (heads that do not divide the width, a patch larger than the image)."""
    for key, (low, high) in LIMITS.items():
        if key not in arguments:
            continue
        value = arguments[key]
        items = list(value) if isinstance(value, (list, tuple)) and key in _LISTS else [value]
        if not (0 < len(items) <= 8 and all(_whole(v) and low <= v <= high for v in items)):
            what = "a list of whole numbers" if key in ("channels", "layers") else "a whole number"
            raise ValueError(f"field {key!r} must be {what} in {low}..{high}, got {_short(value)}")
    ratio = arguments.get("mlp_ratio", 1.0)
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio)
            and 0 < ratio <= MAX_MLP_RATIO):
        raise ValueError(f"field 'mlp_ratio' must be a number above 0 and at most {MAX_MLP_RATIO}, "
                         f"got {_short(ratio)}")
    dim, heads = arguments.get("embed_dim"), arguments.get("num_heads")
    if dim is not None and heads is not None and dim % heads:
        raise ValueError(f"field 'num_heads' ({heads}) must divide field 'embed_dim' ({dim})")
    size, patch = arguments.get("img_size"), arguments.get("patch_size")
    if _whole(size) and _whole(patch) and patch > size:
        raise ValueError(f"field 'patch_size' ({patch}) must be at most field 'img_size' ({size})")


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
