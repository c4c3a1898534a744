"""What every training step is made of, apart from the run: augmentation, schedule, decay groups, precision.

Pure functions of their arguments (random draws come from the generator passed in), so the loop
(:mod:`vitlab.training.loop`), the benchmarks and the tests share them: :func:`augment` (batched
random crop and flip on the device), :func:`lr_at` (linear warmup, cosine decay), :func:`param_groups`
(weight decay as the model exempts it), :func:`epoch_order`, and the precision a step runs in
(:func:`autocast_dtype`, :func:`cpu_bf16_attention`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.capture import restoring


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after reflection padding, and random horizontal flip, batched.

    ``images`` is (B, C, H, W) of any dtype; returns the same shape. Offsets and flips
    are drawn from ``generator`` (on the images' device) so runs are reproducible.
    """
    b, c, h, w = images.shape
    dev = images.device
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


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups: weights decay; what the model exempts and 1-D parameters do not.

    The exemptions are read from the model, as timm does: the names its
    ``no_weight_decay()`` returns (a ViT's ``cls_token`` and ``pos_embed``) and every
    parameter with at most one dimension (biases, norm scales and shifts).
    """
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, rest = [], []
    for name, param in model.named_parameters():
        (rest if param.ndim <= 1 or name in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The order (n,) in which an epoch visits the ``n`` training images.

    Seeded by ``(seed, epoch)`` alone, so a resumed run sees exactly the same batches.
    """
    gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen, device=device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``"auto"`` uses bf16 only on GPUs that support it. On a CPU bf16 pays only where the
    CPU has native bf16 matmuls; on this project's (4.25x the fp32 matmul peak) ``"bf16"``
    trains ``vit_tiny_c10`` 2.39x faster than fp32, with the unfused attention of
    :func:`cpu_bf16_attention` (``benchmarks/train_step.py``), so ask for it by name.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def cpu_bf16_attention(model: nn.Module, amp: torch.dtype | None, device: torch.device):
    """While training under bf16 autocast on a CPU, timm's unfused attention; put back on exit.

    PyTorch's fused CPU attention is slow backwards in bf16: 194 ms against 44 ms in fp32
    per ``vit_tiny_c10`` step of 128 images, while the unfused path (matmuls, softmax)
    made the whole bf16 step 2.54x faster than fp32 (``benchmarks/train_step.py --profile``,
    2 threads, ``data/results/locality/train_step_profile.log``). Other devices and
    precisions are left alone.
    """
    if amp is not torch.bfloat16 or device.type != "cpu":
        yield
        return
    with restoring(model):
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
        yield
