"""What every training step is made of: augmentation, schedule, decay groups, precision (pure functions)."""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.capture import restoring


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflection padding, and random horizontal flip, of ``images`` (B, C, H, W), batched."""
    (b, c, h, w), dev = images.shape, images.device
    if padding:
        padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=dev)[:, None, None, None]
        chans = torch.arange(c, device=dev)[None, :, None, None]
        images = padded[batch, chans, rows, cols]  # (B, C, H, W)
    if flip:
        mirror = torch.rand(b, generator=generator, device=dev) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def randaugment(images: torch.Tensor, ops: int, magnitude: int, seed: int, step: int) -> torch.Tensor:
    """torchvision's RandAugment on each uint8 image of ``images`` (B, C, H, W) with its own ops, drawn from a
    stream seeded by ``(seed, step)`` alone (as the mixing is), so a resumed run draws the same; global RNG kept."""
    if not ops:
        return images
    from torchvision.transforms import v2  # only runs that ask pay for the import

    transform = v2.RandAugment(num_ops=ops, magnitude=magnitude)
    with torch.random.fork_rng(devices=[]):  # v2 draws from torch's global CPU stream
        torch.manual_seed(seed * 1_000_003 + step + 7)
        return torch.stack([transform(image) for image in images])  # (B, C, H, W): each image its own ops


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups: weights decay; the model's ``no_weight_decay()`` names and 1-D parameters do not (timm)."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, rest = [], []
    for name, param in model.named_parameters():
        (rest if param.ndim <= 1 or name in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The order (n,) in which an epoch visits the ``n`` training images, seeded by ``(seed, epoch)`` alone."""
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen, device=device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, None for fp32; ``"auto"`` is bf16 on GPUs only."""
    if precision == "bf16" or (precision != "fp32" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def cpu_bf16_attention(model: nn.Module, amp: torch.dtype | None, device: torch.device):
    """Under bf16 autocast on a CPU, timm's unfused attention until exit (docs/performance.md: fused is slow)."""
    if amp is not torch.bfloat16 or device.type != "cpu":
        yield
        return
    with restoring(model):
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        yield
