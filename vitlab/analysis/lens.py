"""Reading the residual stream through the model's own head: the logit lens (Vilas et al., NeurIPS 2023, for ViTs)
and direct logit attribution, the final logit split exactly into the embedding, each head, each projection bias and
each MLP (:mod:`~vitlab.analysis.residual` takes the model apart)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from . import residual
from .capture import restoring
from .references import bootstrap_interval

#: The logit lens's readings of a block's tokens: the model's own pooling, and for a class-token model the mean
#: patch token too.
READINGS = {"token": "class token", "avg": "mean patch token"}


def check_labels(images: torch.Tensor, labels: torch.Tensor | None, least: int = 2,
                 classes: int | None = None) -> torch.Tensor | None:
    """``labels`` as a long tensor on the CPU, or a one-line ValueError (too few images, lengths differ, a label
    outside ``0 .. classes - 1``)."""
    if len(images) < least:
        raise ValueError(f"give at least {least} images (got {len(images)}): the intervals are over images")
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long().cpu()
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be one class per image: {len(images)} images, labels shaped "
                         f"{tuple(labels.shape)}")
    if classes is not None and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise ValueError(f"labels must be classes 0 to {classes - 1} of the model's head, got {bad}")
    return labels


@dataclass(frozen=True, kw_only=True)
class LensResult:
    """The logit lens of one model on labelled images (:func:`logit_lens_analysis`). Row 0 is the embedding, row i
    the output of block i - 1; the last row is the model's own prediction (for its own reading)."""
    readings: list[str]  # what was read of the tokens: "token" (class token) and/or "avg" (mean patch token)
    pool: str  # the model's own reading
    correct: torch.Tensor  # (images, readings, depth + 1) 1.0 where the lens's top class is the label
    agree: torch.Tensor  # ... where it is the model's final prediction
    rank: torch.Tensor  # ... rank of the true class among the lens's logits (0: top)
    kl: torch.Tensor  # ... KL(final || lens) in nats
    seconds: float

    @property
    def depth(self) -> int:
        return self.correct.shape[2] - 1

    @property
    def images(self) -> int:
        return len(self.correct)

    def mean(self, name: str = "correct") -> torch.Tensor:
        """(readings, depth + 1) mean over images of ``name`` ("correct", "agree", "rank" or "kl")."""
        return getattr(self, name).double().mean(0)

    def interval(self, name: str = "correct") -> tuple[torch.Tensor, torch.Tensor]:
        """95% bootstrap interval over images of :meth:`mean`."""
        return bootstrap_interval(getattr(self, name))

    def first_layer(self, fraction: float = 0.5, reading: str | None = None) -> int | None:
        """The first row whose top-1 accuracy reaches ``fraction`` of the final row's (None if none does)."""
        r = self.readings.index(reading or self.pool)
        acc = self.mean("correct")[r]
        return next((i for i, a in enumerate(acc.tolist()) if a >= fraction * float(acc[-1])), None)


@torch.no_grad()
def logit_lens_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 250) -> LensResult:
    """Each block's tokens through the model's final norm, pooling and head, on uint8 ``images`` with ``labels``."""
    s = residual.stream(model)
    labels = check_labels(images, labels, classes=model.head.out_features)
    readings = [s.pool] + (["avg"] if s.pool == "token" else [])
    started = time.perf_counter()
    rows: dict[str, list] = {k: [] for k in ("correct", "agree", "rank", "kl")}
    with restoring(model):
        model.eval()
        for start in range(0, len(images), batch_size):
            y = labels[start:start + batch_size]
            states = residual.block_inputs(model, residual.model_input(model, images[start:start + batch_size]))
            final = residual.readout(model, states[-1]).double().cpu().log_softmax(-1)  # (B, C)
            lens = torch.stack([torch.stack([residual.readout(model, x, how).double().cpu() for x in states])
                                for how in readings], 1).log_softmax(-1)  # (depth + 1, readings, B, C)
            lens = lens.permute(2, 1, 0, 3)  # (B, readings, depth + 1, C)
            top = lens.argmax(-1)
            true = lens.gather(-1, y[:, None, None, None].expand(*lens.shape[:3], 1))
            rows["correct"].append((top == y[:, None, None]).float())
            rows["agree"].append((top == final.argmax(-1)[:, None, None]).float())
            rows["rank"].append((lens > true).sum(-1).float())
            p = final.exp()[:, None, None]
            rows["kl"].append((p * (final[:, None, None] - lens)).sum(-1).float())
    return LensResult(readings=readings, pool=s.pool, seconds=time.perf_counter() - started,
                      **{k: torch.cat(v) for k, v in rows.items()})


@dataclass(frozen=True, kw_only=True)
class AttributionResult:
    """Direct logit attribution (:func:`attribution_analysis`): one class's logit per image split into parts.

    Convention: the final norm's scale sigma (eps included) is held at its value for that image and token, and part
    p contributes ``W_c . (gamma * (p - mean(p)) / sigma)``, so the parts sum to the logit minus ``constant`` (the
    head's bias and ``W_c . beta``, the final norm's bias through the head)."""
    parts: list[str]  # "embed", then per block "L<l>H<h>" for each head, "L<l> attn bias", "L<l> mlp"
    depth: int
    heads: int
    classes: torch.Tensor  # (images,) the class attributed: the label, or the prediction without labels
    logit: torch.Tensor  # (images,) the model's logit of that class
    constant: torch.Tensor  # (images,) head bias + W_c . beta: what no part carries
    true: torch.Tensor  # (images, parts) contribution to the class's logit
    margin: torch.Tensor  # (images, parts) contribution to that logit minus the mean of the other logits
    seconds: float

    def index(self, layer: int, head: int | None = None, what: str = "head") -> int:
        """Column of a part: head ``head`` of block ``layer``, or its "attn bias" or "mlp"."""
        return self.parts.index(f"L{layer}H{head}" if what == "head" else f"L{layer} {what}")

    def heads_of(self, values: torch.Tensor) -> torch.Tensor:
        """The head columns of ``values`` (images, parts) as (images, depth, heads)."""
        cols = [self.index(layer, h) for layer in range(self.depth) for h in range(self.heads)]
        return values[:, cols].reshape(len(values), self.depth, self.heads)

    @property
    def head_true(self) -> torch.Tensor:
        """(images, depth, heads) each head's contribution to the class logit."""
        return self.heads_of(self.true)

    @property
    def head_margin(self) -> torch.Tensor:
        """(images, depth, heads) each head's contribution to the logit minus the mean of the others."""
        return self.heads_of(self.margin)


def _affine(norm: nn.LayerNorm, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma, beta) of ``norm``: ones and zeros where it has none."""
    gamma = norm.weight if norm.weight is not None else torch.ones(like.shape[-1], dtype=like.dtype, device=like.device)
    return gamma, norm.bias if norm.bias is not None else torch.zeros_like(gamma)


def _normaliser(model: nn.Module, final: torch.Tensor):
    """A function from a part (B, T, D) to its pooled, centred and scaled vector (B, D), with the final state's
    sigma held; and beta (D,) of the norm that applies (zeros without one)."""
    norm, fc_norm = model.norm, model.fc_norm
    if isinstance(norm, nn.LayerNorm):  # per token, before pooling
        sigma = (final.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()  # (B, T, 1)
        gamma, beta = _affine(norm, final)
        return (lambda p: residual.pool(model, gamma * (p - p.mean(-1, keepdim=True)) / sigma)), beta
    if isinstance(fc_norm, nn.LayerNorm):  # after pooling
        pooled = residual.pool(model, final)
        sigma = (pooled.var(-1, unbiased=False, keepdim=True) + fc_norm.eps).sqrt()  # (B, 1)
        gamma, beta = _affine(fc_norm, final)

        def centred(p: torch.Tensor) -> torch.Tensor:
            q = residual.pool(model, p)
            return gamma * (q - q.mean(-1, keepdim=True)) / sigma
        return centred, beta
    return (lambda p: residual.pool(model, p)), torch.zeros(d, dtype=final.dtype, device=final.device)


def _scale(ls: nn.Module) -> torch.Tensor | float:
    return ls.gamma if hasattr(ls, "gamma") else 1.0


def _block_parts(block: nn.Module, x: torch.Tensor, heads: int, head_dim: int):
    """Yield (name, part (B, T, D)) of one block with input ``x``: each head, the projection bias, the MLP; the
    residual stream after the block is last (not a part)."""
    seen = {}
    handle = block.attn.proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("z", args[0]))
    try:
        attn_out = block.attn(block.norm1(x))
    finally:
        handle.remove()
    z, w, g = seen["z"], block.attn.proj.weight, _scale(block.ls1)  # z: (B, T, heads x head_dim)
    for h in range(heads):
        c = slice(h * head_dim, (h + 1) * head_dim)
        yield f"H{h}", (z[..., c] @ w[:, c].T) * g
    bias = block.attn.proj.bias
    yield " attn bias", (torch.zeros_like(x) if bias is None else torch.zeros_like(x) + bias * g)
    mid = x + block.ls1(attn_out)
    mlp = block.ls2(block.mlp(block.norm2(mid)))
    yield " mlp", mlp
    yield None, mid + mlp


@torch.no_grad()
def attribution_analysis(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                         batch_size: int = 100) -> AttributionResult:
    """Direct logit attribution of the true class (the predicted one without ``labels``) on uint8 ``images``, in the
    model's own dtype (float64 models sum to the logit within 1e-9)."""
    s = residual.stream(model)
    labels = check_labels(images, labels, classes=model.head.out_features)
    started = time.perf_counter()
    names: list[str] = []
    out: dict[str, list] = {k: [] for k in ("classes", "logit", "constant", "true", "margin")}
    with restoring(model):
        model.eval()
        for start in range(0, len(images), batch_size):
            x = residual.model_input(model, images[start:start + batch_size])
            final = residual.run_blocks(model, residual.embed(model, x))
            logits = residual.readout(model, final)  # (B, C)
            c = logits.argmax(-1) if labels is None else labels[start:start + batch_size].to(logits.device)
            w = model.head.weight  # (C, D)
            wc = w[c]  # (B, D)
            w_margin = wc - (w.sum(0) - wc) / (w.shape[0] - 1)
            centred, beta = _normaliser(model, final)
            bias = model.head.bias[c] if model.head.bias is not None else torch.zeros_like(logits[:, 0])
            true, margin, batch_names = [], [], []

            def add(name: str, part: torch.Tensor) -> None:
                q = centred(part)  # (B, D)
                batch_names.append(name)
                true.append((q * wc).sum(-1))
                margin.append((q * w_margin).sum(-1))
            state = residual.embed(model, x)
            add("embed", state)
            for i, block in enumerate(model.blocks):
                for name, part in _block_parts(block, state, s.heads, s.head_dim):
                    if name is None:
                        state = part
                    else:
                        add(f"L{i}{name}", part)
            names = batch_names
            out["classes"].append(c.cpu())
            out["logit"].append(logits.gather(1, c[:, None])[:, 0].cpu())
            out["constant"].append((bias + wc @ beta).cpu())
            out["true"].append(torch.stack(true, 1).cpu())
            out["margin"].append(torch.stack(margin, 1).cpu())
    return AttributionResult(parts=names, depth=s.depth, heads=s.heads, seconds=time.perf_counter() - started,
                             **{k: torch.cat(v) for k, v in out.items()})
