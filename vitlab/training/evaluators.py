"""Evaluators (big_vision): built once with what they measure on, ``run(model)`` gives one model's typed record."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from . import inside
from ..analysis.representations import FEWSHOT_L2, SHOTS, cka_matrix, fewshot_probes
from ..records import InsideView, ProbeRecord


class InsideViewEvaluator:
    """The inside view (:func:`~vitlab.training.inside.inside_view`) on uint8 ``images``, default the probe images.
    Given their ``labels`` and ``reference`` images (e.g. :func:`~vitlab.training.inside.probe_set` of the training
    split), it records interventions too: each head's mean-ablation drop and the logit lens's accuracy per layer."""

    def __init__(self, images: torch.Tensor | None = None, batch_size: int = 128, *,
                 labels: torch.Tensor | None = None, reference: torch.Tensor | None = None):
        self.images = inside.probe_images() if images is None else images
        self.batch_size = batch_size
        if (labels is None) != (reference is None):
            raise ValueError("interventions need both the images' labels and reference images (for the means of "
                             "mean ablation): pass both, or neither")
        if labels is not None and len(labels) != len(self.images):
            raise ValueError(f"labels must be one per image: {len(self.images)} images, {len(labels)} labels")
        self.labels, self.reference = labels, reference

    def run(self, model: nn.Module, *, epoch: int = 0, step: int = 0,
            stats: dict[str, torch.Tensor] | None = None) -> InsideView | None:
        """The :class:`~vitlab.records.InsideView` of ``model``; None for a model without attention."""
        view = inside.inside_view(model, self.images, epoch, step, self.batch_size, stats)
        if view is None or self.labels is None:
            return view
        extra = inside.interventions(model, self.images, self.labels, self.reference)  # resized as the model reads
        return view if extra is None else dataclasses.replace(view, **extra)


class FewshotEvaluator:
    """Few-shot ridge probes (:func:`~vitlab.analysis.representations.fewshot_probes`, paper Fig. 4) of a model."""

    def __init__(self, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, *, shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2),
                 l2: float = FEWSHOT_L2, batch_size: int = 250, layers: Sequence[int | str] | None = None):
        self.data = (train_images, train_labels, test_images, test_labels)
        self.settings = dict(shots=shots, seeds=seeds, l2=l2, batch_size=batch_size, layers=layers)

    def run(self, model: nn.Module, *, name: str = "", family: str | None = None) -> list[ProbeRecord]:
        """One :class:`~vitlab.records.ProbeRecord` per (layer, pooling, shots, seed) of ``model``."""
        return fewshot_probes(model, *self.data, name=name, family=family, **self.settings)


class CKAResult(NamedTuple):
    """Linear CKA between the layers of a model and of its reference, with both lists of layer names."""
    cka: torch.Tensor  # (layers, reference layers)
    layers: list[str]
    reference_layers: list[str]


class CKAEvaluator:
    """Linear CKA (:func:`~vitlab.analysis.representations.cka_matrix`) of a model's layers against a reference's."""

    def __init__(self, images: torch.Tensor, *, reference: nn.Module | None = None, batch_size: int = 250,
                 representation: str = "full"):
        self.images, self.reference = images, reference
        self.batch_size, self.representation = batch_size, representation

    def run(self, model: nn.Module) -> CKAResult:
        """CKA of every layer of ``model`` (rows) against every layer of the reference (columns)."""
        reference = model if self.reference is None else self.reference
        return CKAResult(*cka_matrix(model, reference, self.images, self.batch_size, self.representation))
