"""A timm ViT's residual stream, taken apart for interventions: the embedding, each block's input, each head's slice of
the attention output projection, and the readout (final norm, pooling, head). Models whose head or blocks cannot be
taken apart exactly (attention pooling, a tanh pre-logits layer, scale-norm, attention gates, other block types) are
refused in one line. Every edit is a hook inside :func:`~vitlab.analysis.capture.restoring`: the model comes back as
it was, fused attention included."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from timm.layers import Attention, LayerScale
from timm.layers import LayerNorm as TimmLayerNorm
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .capture import has_class_token, pooling, restoring
from ..models import preprocess
from ..models.inputs import check_images

#: Which part of a block an ablation or a patch replaces: one head's slice of the attention output projection's
#: input, the whole attention branch, or the whole MLP branch.
SITES = ("head", "attn", "mlp")


@dataclass(frozen=True)
class Stream:
    """Facts about a model's residual stream that interventions read (:func:`stream`)."""
    depth: int  # blocks
    heads: int  # attention heads per block
    head_dim: int  # channels of one head in the output projection's input
    width: int  # residual stream channels
    prefix: int  # prefix tokens (class and register tokens) before the patch tokens
    pool: str  # what the head reads: "token" (the class token) or "avg" (the mean of the patch tokens)
    class_token: bool


def _norm_ok(norm: nn.Module) -> bool:
    # timm's LayerNorm subclass computes the same F.layer_norm; other subclasses may not
    return isinstance(norm, nn.Identity) or type(norm) in (nn.LayerNorm, TimmLayerNorm)


def _problem(model: nn.Module) -> str | None:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks) or not hasattr(model, "patch_embed"):
        return "has no transformer blocks with attention heads (a ResNet?): interventions need a ViT or a hybrid"
    if isinstance(model, VisionTransformer):  # a subclass (distilled: two heads averaged) that reads its own way
        own = [f for f in ("forward_features", "forward_head") if getattr(type(model), f) is not
               getattr(VisionTransformer, f)]
        if own:
            return f"reads or makes its tokens its own way (its own {own[0]}): its prediction is not the readout here"
    if getattr(model, "attn_pool", None) is not None:
        return "reads an attention-pool head: its prediction is not a sum over the residual stream"
    if pooling(model) is None:
        return f"pools its tokens as {getattr(model, 'global_pool', None)!r}, not the class token or the mean"
    if not isinstance(getattr(model, "pre_logits", nn.Identity()), nn.Identity):
        return "has a pre-logits layer (a tanh): its prediction is not linear in the residual stream"
    if not isinstance(getattr(model, "head", None), nn.Linear):
        return "has no linear classifier head (model.head)"
    for name in ("norm", "fc_norm"):
        if not _norm_ok(getattr(model, name, nn.Identity())):
            return f"has a {type(getattr(model, name)).__name__} as {name}, not a LayerNorm"
    if not isinstance(getattr(model, "norm", nn.Identity()), nn.Identity) and \
            not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        return "normalises its tokens twice (norm and fc_norm)"
    for i, block in enumerate(blocks):
        if type(block).forward is not Block.forward:
            return f"has {type(block).__name__} blocks (block {i}), not timm's Block"
        attn = block.attn
        if getattr(type(attn), "forward", None) is not Attention.forward:
            return f"has {type(attn).__name__} attention (block {i}), not timm's Attention"
        if getattr(attn, "gate", None) is not None:
            return f"has attention gates (block {i}): a head's output is not its slice of the projection"
        if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            return f"normalises the heads' output (scale-norm, block {i}) before the projection"
        for ls in (block.ls1, block.ls2):
            if not isinstance(ls, (nn.Identity, LayerScale)):
                return f"has a {type(ls).__name__} layer scale (block {i})"
    return None


def stream(model: nn.Module) -> Stream:
    """The :class:`Stream` of ``model``, or a one-line ValueError saying why it cannot be taken apart."""
    if (problem := _problem(model)) is not None:
        raise ValueError(f"{type(model).__name__} {problem}; interventions (logit lens, attribution, ablation, "
                         "patching) take timm VisionTransformers with a class-token or mean-pooled linear head")
    attn = model.blocks[0].attn
    return Stream(depth=len(model.blocks), heads=int(attn.num_heads), head_dim=int(attn.head_dim),
                  width=int(model.head.in_features), prefix=int(getattr(model, "num_prefix_tokens", 0)),
                  pool=pooling(model), class_token=has_class_token(model))


def check_head(s: Stream, layer: int, head: int | None = None) -> tuple[int, int | None]:
    """``(layer, head)`` made non-negative, or a one-line IndexError naming the valid range."""
    if not isinstance(layer, int) or not -s.depth <= layer < s.depth:
        raise IndexError(f"layer {layer!r} is out of range: the model has {s.depth} blocks (0 to {s.depth - 1})")
    if head is not None and (not isinstance(head, int) or not -s.heads <= head < s.heads):
        raise IndexError(f"head {head!r} is out of range: each block has {s.heads} heads (0 to {s.heads - 1})")
    return layer % s.depth, None if head is None else head % s.heads


def model_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` as the model reads them: uint8 (B, 3, H, W) preprocessed, a float batch moved to its device."""
    check_images(model, images)
    if images.dtype == torch.uint8:
        return preprocess(model, images, resize=not getattr(model, "dynamic_img_size", False))
    p = next(model.parameters())
    return images.to(p.device, p.dtype)


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual stream before block 0 (B, tokens, D): patches (or a CNN's map), position and prefix tokens."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def run_blocks(model: nn.Module, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The residual stream after blocks ``start`` to ``stop - 1`` (default: the last) from ``x``, their input."""
    for block in model.blocks[start:stop]:
        x = block(x)
    return x


def pool(model: nn.Module, x: torch.Tensor, how: str | None = None) -> torch.Tensor:
    """What the head reads of tokens ``x`` (B, T, D): the class token ("token") or the patch tokens' mean ("avg");
    ``how`` defaults to the model's own pooling."""
    how = how or pooling(model)
    return x[:, 0] if how == "token" else x[:, int(getattr(model, "num_prefix_tokens", 0)):].mean(1)


def readout(model: nn.Module, x: torch.Tensor, how: str | None = None) -> torch.Tensor:
    """Logits (B, classes) of residual stream ``x`` (B, T, D) through the model's own final norm, pooling, fc_norm
    and head: the model's output when ``x`` is its last block's output and ``how`` its pooling."""
    return model.head(model.fc_norm(pool(model, model.norm(x), how)))


def block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering each block, and after the last: ``depth + 1`` tensors (B, T, D)."""
    states = [embed(model, x)]
    for block in model.blocks:
        states.append(block(states[-1]))
    return states


Edit = Callable[[torch.Tensor], torch.Tensor]  # gets a site's tensor (B, T, C), returns its replacement


@contextlib.contextmanager
def edited(model: nn.Module, edits: Mapping[tuple[int, str], Edit]) -> Iterator[nn.Module]:
    """``model`` with ``edits[(layer, site)]`` applied to each forward, in eval mode, restored on exit.

    Sites (:data:`SITES`): "head" edits the attention output projection's input (B, T, heads x head_dim), where head
    h is channels ``h * head_dim`` to ``(h + 1) * head_dim`` (a pre-hook: fused attention stays on); "attn" and
    "mlp" edit the branch's output (B, T, D) before its layer scale."""
    with restoring(model):
        model.eval()
        for (layer, site), edit in edits.items():
            block = model.blocks[layer]
            if site == "head":
                block.attn.proj.register_forward_pre_hook(lambda _m, args, e=edit: (e(args[0]),))
            elif site in ("attn", "mlp"):
                getattr(block, site).register_forward_hook(lambda _m, _a, out, e=edit: e(out))
            else:
                raise ValueError(f"site {site!r} is not one of {SITES}")
        yield model


def replace_heads(heads: Sequence[int], head_dim: int, value: torch.Tensor | float = 0.0) -> Edit:
    """An edit of the projection's input that puts ``value`` (0, or per-position means (T, heads x head_dim)) into
    the slices of ``heads``."""
    channels = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])

    def edit(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        c = channels.to(z.device)
        # means live on the CPU in float64 (site_means): bring them to the run's device, as CUDA indices can't
        # index a CPU tensor
        z[..., c] = value.to(z.device, z.dtype)[..., c] if isinstance(value, torch.Tensor) else value
        return z
    return edit


def replace_all(value: torch.Tensor | float = 0.0) -> Edit:
    """An edit that replaces a whole branch output by ``value`` (0, or per-position means (T, D))."""
    def edit(out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out) + (value.to(out.device, out.dtype) if isinstance(value, torch.Tensor) else value)
    return edit


@torch.no_grad()
def site_means(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Per token position means over ``images`` (uint8 or float batch) of every block's sites: ``{"head": (L, T,
    heads x head_dim), "attn": (L, T, D), "mlp": (L, T, D)}`` in float64 on the CPU (the mean ablation's values)."""
    s = stream(model)
    sums: dict[str, list] = {site: [0.0] * s.depth for site in SITES}

    def adder(site: str, layer: int) -> Edit:
        def add(t: torch.Tensor) -> torch.Tensor:
            sums[site][layer] = sums[site][layer] + t.detach().double().sum(0).cpu()
            return t
        return add
    edits = {(i, site): adder(site, i) for i in range(s.depth) for site in SITES}
    with edited(model, edits):
        for start in range(0, len(images), batch_size):
            model(model_input(model, images[start:start + batch_size]))
    return {site: torch.stack(v) / len(images) for site, v in sums.items()}
