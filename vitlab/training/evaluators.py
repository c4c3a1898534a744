"""Evaluators: what is measured on a model at the end of an epoch or a run, behind one interface.

As in big_vision, an evaluator is built once with what it measures on (images, labels, settings),
and ``run(model)`` measures one model and returns a typed record:

* :class:`InsideViewEvaluator`: the paper's Fig. 7 numbers of a ViT on the probe images
  (:func:`vitlab.training.inside.inside_view`), an :class:`~vitlab.records.InsideView`; the loop runs it
  at the end of each recorded epoch, the sweep on each run's final model, notebook 07 on three models.
* :class:`FewshotEvaluator`: few-shot linear probes of chosen layers
  (:func:`vitlab.analysis.representations.fewshot_probes`), :class:`~vitlab.records.ProbeRecord` s; the
  sweep probes each run's final representation with it, the probe explorer every layer of a model.
* :class:`CKAEvaluator`: linear CKA between every layer of a model and of a reference
  (:func:`vitlab.analysis.representations.cka_matrix`), a :class:`CKAResult`; the CKA explorer.

The computations stay in :mod:`vitlab.analysis` and :mod:`vitlab.training.inside`; an evaluator holds
their inputs so that every caller measures the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from . import inside
from ..analysis.representations import FEWSHOT_L2, SHOTS, cka_matrix, fewshot_probes
from ..records import InsideView, ProbeRecord


class InsideViewEvaluator:
    """The inside view of a ViT on fixed images: attention distance and entropy per head, position and filter scores.

    Args:
        images: uint8 (N, 3, H, W) on the models' device; default the probe images
            (:func:`vitlab.training.inside.probe_images`, on the CPU), which every recorded view uses.
        batch_size: images per forward pass.
    """

    def __init__(self, images: torch.Tensor | None = None, batch_size: int = 128):
        self.images = inside.probe_images() if images is None else images
        self.batch_size = batch_size

    def run(self, model: nn.Module, *, epoch: int = 0, step: int = 0,
            stats: dict[str, torch.Tensor] | None = None) -> InsideView | None:
        """The :class:`~vitlab.records.InsideView` of ``model`` after ``epoch`` epochs and ``step`` steps; None
        for a model without attention. ``stats``: :func:`~vitlab.analysis.distance.head_statistics` of these
        images, when the caller has them already."""
        return inside.inside_view(model, self.images, epoch, step, self.batch_size, stats)


class FewshotEvaluator:
    """Few-shot accuracy of ridge probes on frozen features of a model's layers (paper Fig. 4).

    Args:
        train_images, train_labels: the pool the shots are drawn from, uint8 (N, 3, H, W) and (N,).
        test_images, test_labels: every probe is scored on all of them.
        shots: training images per class; seeds: draws of them (nested, as in big_vision).
        l2: ridge penalty; batch_size: images per forward pass.
        layers: indices into the model's representation layers and/or ``"pre_logits"``; default every layer.
    """

    def __init__(self, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, *, shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2),
                 l2: float = FEWSHOT_L2, batch_size: int = 250, layers: Sequence[int | str] | None = None):
        self.data = (train_images, train_labels, test_images, test_labels)
        self.settings = dict(shots=shots, seeds=seeds, l2=l2, batch_size=batch_size, layers=layers)

    def run(self, model: nn.Module, *, name: str = "", family: str | None = None) -> list[ProbeRecord]:
        """One :class:`~vitlab.records.ProbeRecord` per (layer, pooling, shots, seed) of ``model``, labelled
        ``name`` and ``family`` (default: the model's family)."""
        return fewshot_probes(model, *self.data, name=name, family=family, **self.settings)


class CKAResult(NamedTuple):
    """Linear CKA between the layers of a model and of its reference, with both lists of layer names."""

    cka: torch.Tensor  # (layers, reference layers)
    layers: list[str]
    reference_layers: list[str]


class CKAEvaluator:
    """Minibatch linear CKA between every layer of a model and every layer of a reference model.

    Args:
        images: uint8 (N, 3, H, W), cut into ``N // batch_size`` batches (a remainder is dropped).
        reference: the model compared against; None: the model itself (its self-similarity).
        representation: ``"full"`` layer outputs (Raghu et al.) or ``"pooled"`` (mean patch token, GAP).
    """

    def __init__(self, images: torch.Tensor, *, reference: nn.Module | None = None, batch_size: int = 250,
                 representation: str = "full"):
        self.images, self.reference = images, reference
        self.batch_size, self.representation = batch_size, representation

    def run(self, model: nn.Module) -> CKAResult:
        """CKA of every layer of ``model`` (rows) against every layer of the reference (columns)."""
        reference = model if self.reference is None else self.reference
        return CKAResult(*cka_matrix(model, reference, self.images, self.batch_size, self.representation))
