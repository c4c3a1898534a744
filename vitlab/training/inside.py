"""Inside views across training: the paper's Fig. 7 numbers of a ViT on fixed probe images, once per epoch."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .. import data
from ..analysis import metrics, residual
from ..analysis.ablation import head_effects
from ..analysis.lens import logit_lens_analysis
from . import run_folder
from ..analysis.distance import head_statistics, uniform_distance
from ..analysis.filters import filters_analysis
from ..analysis.positions import position_analysis
from ..models import load_model
from ..records import InsideView

PROBE_IMAGES, PROBE_SEED = 256, 0  #: probe images per inside view, and the seed of their class-balanced order
_MOST = 30  #: inside views per run at most: every epoch up to _MOST epochs, evenly spaced beyond
_FILTER_K = 28  #: principal components of the filters whose explained variance is recorded together


def probe_images(count: int = PROBE_IMAGES, seed: int = PROBE_SEED) -> torch.Tensor:
    """The first ``count`` CIFAR-10 test images, class-balanced, uint8 (count, 3, 32, 32); torch RNG untouched."""
    return probe_set(count, seed)[0]


def probe_set(count: int = PROBE_IMAGES, seed: int = PROBE_SEED,
              split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of :func:`probe_images` (``split="train"``: the same order of training images, the mean
    ablation's reference)."""
    images, labels = data.cifar10(split)
    order = data.stratified_order(labels, seed)[:count]
    return images[order], labels[order]


def interventions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  reference: torch.Tensor) -> dict[str, list] | None:
    """The inside view's intervention fields of ``model`` on ``images`` with ``labels``: each head's mean-ablation drop
    (means over ``reference``) and the logit lens's top-1 accuracy per layer (the model's own reading); None for a
    model interventions cannot take apart (:func:`vitlab.analysis.residual.stream`)."""
    try:
        residual.stream(model)
    except ValueError:
        return None
    effects = head_effects(model, images, labels, reference)
    lens = logit_lens_analysis(model, images, labels)
    return dict(head_ablation=effects["accuracy"].tolist(), head_ablation_logit=effects["logit"].tolist(),
                lens_accuracy=lens.mean("correct")[0].tolist())


def record_interventions(out: str | os.PathLike, weights: dict[int, str | os.PathLike], images: torch.Tensor,
                         labels: torch.Tensor, reference: torch.Tensor) -> list[InsideView]:
    """Fill the intervention fields of the views recorded in run folder ``out`` from weight files kept per epoch
    (``weights[epoch]``: a checkpoint's safetensors, for a run recorded before the fields existed); rewritten
    atomically, views without weights left as they are. Returns the views."""
    out = Path(out)
    views, tensors = run_folder.read_inside(out), run_folder.read_inside_tensors(out)
    if not views:
        raise ValueError(f"{out} holds no inside views (inside.jsonl): nothing to add interventions to")
    if not (out / run_folder.MODEL).is_file():
        raise ValueError(f"{out} has no final model.safetensors to take the architecture from")
    model = load_model(out / run_folder.MODEL, device="cpu")
    filled = []
    for view in views:
        if view.epoch in weights:
            model.load_state_dict(safetensors.torch.load_file(str(weights[view.epoch])))
            view = dataclasses.replace(view, **(interventions(model.eval(), images, labels, reference) or {}))
        filled.append(view)
    run_folder.write_inside(out, filled, tensors)
    return filled


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` has what an inside view measures: blocks, position embeddings and a patch embedding."""
    return (hasattr(model, "blocks") and isinstance(getattr(model, "pos_embed", None), torch.Tensor)
            and isinstance(getattr(getattr(model, "patch_embed", None), "proj", None), nn.Conv2d))


def recorded_epochs(epochs: int, most: int = _MOST) -> list[int]:
    """The epochs (1-based) a run of ``epochs`` records: all up to ``most``, else ceil(i * epochs / most)."""
    if epochs <= most:
        return list(range(1, epochs + 1))
    return [-(-i * epochs // most) for i in range(1, most + 1)]


@torch.no_grad()
def inside_view(model: nn.Module, images: torch.Tensor, epoch: int, step: int, batch_size: int = 128,
                stats: dict[str, torch.Tensor] | None = None) -> InsideView | None:
    """The :class:`~vitlab.records.InsideView` of ``model`` on uint8 ``images`` (N, 3, H, W); None for a non-ViT."""
    if not is_vit(model):
        return None
    size = tuple(model.pretrained_cfg["input_size"][1:])
    if tuple(images.shape[-2:]) != size:
        images = data.resize(images, size)
    if stats is None:  # callers that need the per-image values too pass the statistics they computed
        stats = head_statistics(model, images, batch_size=batch_size)  # (layers, heads) each
    position = position_analysis(model, seeds=())
    if metrics.is_hybrid(model):  # no pixel filters: the CNN sees the pixels
        k, first, first_k = 0, math.nan, math.nan
    else:
        filters = filters_analysis(model, k=_FILTER_K, seeds=())
        k, first, first_k = filters.k, filters.first, filters.first_k
    return InsideView(
        epoch=epoch, step=step, images=len(images), grid=metrics.patch_grid(model),
        patch_size=metrics.pixel_patch_size(model), num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        distance=stats["distance"].double().tolist(), entropy=stats["entropy"].double().tolist(),
        uniform=uniform_distance(model), position_distance=position.structure.closeness,
        position_row_column=position.structure.row_column, mirror=position.mirror.mirror,
        mirror_neighbour=position.mirror.neighbour, filter_variance_first=first, filter_variance_k=first_k, filter_k=k)


def inside_tensors(model: nn.Module, epoch: int) -> dict[str, torch.Tensor]:
    """``{"pos_embed.<epoch>": (1, tokens, D), "filters.<epoch>": (D, C, P, P)}`` on the CPU (a hybrid: no filters)."""
    tensors = {f"pos_embed.{epoch}": model.pos_embed.detach().float().cpu().contiguous().clone()}
    if not metrics.is_hybrid(model):
        tensors[f"filters.{epoch}"] = model.patch_embed.proj.weight.detach().float().cpu().contiguous().clone()
    return tensors


def load(out: str | os.PathLike) -> tuple[list[InsideView], dict[str, torch.Tensor], bool]:
    """``(views, tensors, recorded)`` of the run in ``out``; without recorded views, its final model's (not written)."""
    out = Path(out)
    views = run_folder.read_inside(out)
    if views or not (out / run_folder.MODEL).is_file() or not (out / run_folder.SIDECAR).is_file():
        return views, run_folder.read_inside_tensors(out), bool(views)
    final = run_folder.run_sidecar(out).metrics  # the finished run's last epoch
    model = load_model(out / run_folder.MODEL, device="cpu")
    epoch, step = int(final.get("epoch", 0)), int(final.get("step", 0))
    view = inside_view(model, probe_images(), epoch, step)
    return ([], {}, False) if view is None else ([view], inside_tensors(model, epoch), False)


def stored_model(view: InsideView, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A stand-in module with what the Fig. 7 analyses read of a ViT, from one epoch's stored tensors."""
    pos = tensors[f"pos_embed.{view.epoch}"]  # (1, T, D)
    stand_in = nn.Module()
    stand_in.pos_embed = nn.Parameter(pos.clone(), requires_grad=False)
    stand_in.num_prefix_tokens = view.num_prefix_tokens
    stand_in.patch_embed = nn.Module()
    stand_in.patch_embed.grid_size = tuple(view.grid)
    stand_in.patch_embed.patch_size = tuple(view.patch_size)
    filters = tensors.get(f"filters.{view.epoch}")  # (D, C, P, P)
    if filters is not None:
        proj = nn.Conv2d(filters.shape[1], filters.shape[0], filters.shape[2:], stride=filters.shape[2:], bias=False)
        proj.weight = nn.Parameter(filters.clone(), requires_grad=False)
        stand_in.patch_embed.proj = proj
    return stand_in


def summary(views: list[InsideView]) -> str:
    """One sentence on how the attention distances moved between the first and last recorded epochs."""
    if not views:
        return "no inside views recorded"
    a, b = views[0], views[-1]
    means = ", ".join(f"{x:.1f}" for x in b.layer_means)
    return (f"epoch {a.epoch} to {b.epoch}: the lowest layer's most local head went from {a.lowest_local:.1f} to "
            f"{b.lowest_local:.1f} px (uniform attention: {b.uniform:.1f} px); mean distance per layer at epoch "
            f"{b.epoch}: {means} px; position structure ρ {a.position_distance:.2f} to {b.position_distance:.2f}"
            + (f"; first filter component {100 * a.filter_variance_first:.1f}% to {100 * b.filter_variance_first:.1f}% "
               "of the variance" if b.filter_k else " (a hybrid: no pixel filters)"))
