"""The CIFAR-scale architectures vitlab trains, as frozen records that build timm models.

An architecture is a plain dataclass of its shape only (nanoGPT's ``GPTConfig``); its
``build()`` returns an untrained timm model. :data:`ARCHITECTURES` names the ones the zoo
and ``python -m vitlab train --model`` use; :func:`architecture` rebuilds one from the
record a saved file stores, so old files stay loadable when the registry changes.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

from timm.layers import HybridEmbed
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn


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
        return _transformer(self, patch_size=self.patch_size)


def _transformer(arch: CifarViT | CifarHybrid, **embedding: Any) -> VisionTransformer:
    """The class-token VisionTransformer of ``arch``'s shape; ``embedding`` says how tokens are made."""
    return VisionTransformer(
        img_size=arch.img_size,
        num_classes=arch.num_classes,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        global_pool="token",
        dynamic_img_size=True,  # lets analysis run on other sizes and non-square inputs
        **embedding,
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


@dataclass(frozen=True, kw_only=True)
class CifarHybrid:
    """A hybrid ViT (paper section 3.1): a small ResNet's feature map cut into 1x1 patches.

    The CNN is a ResNet stem (3x3 convolution, stride 1, then a stride-2 max-pool, as in the
    paper's R50 stem) and stages of basic blocks (the first at stride 1, each later one at
    stride 2): with two stages a 32x32 image becomes an 8x8 map, the grid of a patch-4 ViT.
    timm's ``HybridEmbed`` projects each map position into the transformer.
    """

    description: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0
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
        """The CNN alone: (B, 3, H, W) images to (B, channels[-1], H / stride, W / stride) maps.

        timm's ResNet builds the stages; its forward assumes four of them, so its modules
        run in order as a Sequential that keeps their names (``conv1``, ``layer2.0.conv1``).
        """
        net = ResNet(block=BasicBlock, layers=self.layers, channels=self.channels, stem_type="deep",
                     stem_width=self.channels[0] // 2)  # a deep stem of width w feeds 2w channels onwards
        stem = dict(conv1=nn.Conv2d(3, self.channels[0], kernel_size=3, stride=1, padding=1, bias=False),
                    bn1=net.bn1, act1=net.act1, maxpool=net.maxpool)
        stages = {f"layer{i + 1}": getattr(net, f"layer{i + 1}") for i in range(len(self.layers))}
        return nn.Sequential(OrderedDict({**stem, **stages}))

    def build(self) -> nn.Module:
        return _transformer(self, patch_size=1, embed_layer=partial(HybridEmbed, backbone=self.backbone()))


Architecture = CifarViT | CifarResNet | CifarHybrid

#: The CIFAR-10 architectures vitlab builds, by name (zoo entries name one of them).
ARCHITECTURES: dict[str, Architecture] = {
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
    "hybrid_tiny_c10": CifarHybrid(
        description="Hybrid: ResNet stem and 2 stages (widths 32, 64; 8x8 map), 1x1 patches, width 128, "
                    "5 blocks, 4 heads",
        embed_dim=128, depth=5, num_heads=4,
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
    "hybrid_micro_c10": CifarHybrid(
        description="Hybrid: ResNet stem and 3 stages (widths 8-32; 4x4 map), 1x1 patches, width 32, 2 blocks, "
                    "2 heads (quick runs)",
        embed_dim=32, depth=2, num_heads=2, channels=(8, 16, 32), layers=(1, 1, 1),
    ),
}


def architecture(name: str, config: dict[str, Any] | None = None) -> Architecture:
    """The architecture ``name`` of the registry, or the one a stored ``config`` describes.

    Args:
        name: a key of :data:`ARCHITECTURES` (used when ``config`` is None).
        config: the fields of a saved architecture (``dataclasses.asdict`` of one, read back
            from JSON, so tuples arrive as lists).

    Raises:
        ValueError: ``name`` is not registered (with the closest names), or ``config`` does
            not describe a CifarViT or CifarResNet (naming the fields that are wrong).
    """
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
    for key in ("channels", "layers"):
        if key in config:
            config[key] = tuple(config[key])
    return cls(**config)
