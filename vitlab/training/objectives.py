"""Training objectives: what a run learns from a batch, so that the loop never asks which one it runs (nanoGPT)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .. import data
from . import mpp
from .config import IMAGE_SIZE, ConfigError, TrainConfig
from ..models import ARCHITECTURES, build_model, load_model, preprocess, weights_file
from ..models.sidecar import read_sidecar, sidecar_path
from ..models.weights import WeightsFileError

_Rule = tuple[str, Any, bool, str]  #: (setting, its value, whether it is in range, what it must be)
#: What the accuracies of a masked-patch-prediction run count.
MPP_ACCURACY = "corrupted patches whose 3-bit mean colour (512 classes) is predicted right"


class Objective:
    """What a run learns: one interface for the loop, the zoo and the sweeps. Subclasses fill it in."""
    name = ""  # the TrainConfig.objective it is chosen by
    uses_labels = True  # False: a head trained without labels starts anew when fine-tuned
    what = "training"  # how a run's start line names what it does
    remark = ""  # what the start line adds (e.g. how the train accuracy is counted)

    def __init__(self, config: TrainConfig):
        self.config = config

    def check(self) -> None:
        """Raise :class:`~vitlab.training.config.ConfigError` when it cannot train ``config.model``."""

    def rules(self) -> list[_Rule]:
        """Range rules of the settings this objective restricts, after the general ones."""
        return []

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module that trains: ``model`` itself, or ``model`` wrapped with the objective's own parameters."""
        return model

    def encoder(self, trained: nn.Module) -> nn.Module:
        """The model inside what :meth:`prepare` returned: the one analysed, saved and fine-tuned later."""
        return trained

    def inputs(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs (B, 3, H, W) of augmented uint8 ``images``, targets (B, ...); draws from ``generator``."""
        raise NotImplementedError

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(loss, hits, scored)`` of ``net`` on ``(x, y)`` from :meth:`inputs`; loss and hits are device tensors."""
        raise NotImplementedError

    def test_accuracy(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        """The accuracy (a fraction) of ``trained`` on uint8 test ``images`` (N, 3, H, W) and their ``labels``."""
        raise NotImplementedError

    def accuracy_of(self) -> dict[str, str]:
        """What the run's accuracies count, as keys of its final record; empty for top-1."""
        return {}

    def extra_state(self, trained: nn.Module) -> dict[str, torch.Tensor] | None:
        """Tensors saved beside the encoder's weights in the final file (None: none)."""
        return None

    def load_trained(self, weights: str | os.PathLike) -> nn.Module:
        """The module that trained, as :meth:`prepare` made it, from a finished run's ``weights`` (on the CPU)."""
        return load_model(weights, device="cpu")

    def published(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Keys a zoo checkpoint's sidecar gains beside its run's ``metrics`` (none by default)."""
        return {}


class Classification(Objective):
    """Supervised: label-smoothed cross-entropy, maybe mixed (soft targets; a hit is the dominant label)."""
    name = "classify"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.mixup = mixer(config, len(data.CLASSES))
        if self.mixup is not None:
            self.remark = "; images mixed (timm Mixup/CutMix): train accuracy counts each image's dominant label"

    def inputs(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = preprocess(trained, images)  # (B, 3, H, W)
        if self.mixup is None:
            return x, labels
        return mix(self.mixup, x, labels, self.config.seed, step)  # soft targets (B, classes)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        logits = net(x)  # (B, classes)
        if y.ndim == 2:  # soft targets; the label smoothing is in them
            loss = SoftTargetCrossEntropy()(logits, y)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        return loss, (logits.argmax(-1) == (y.argmax(-1) if y.ndim == 2 else y)).sum(), len(x)

    def test_accuracy(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        return evaluate(trained, images, labels)

    def accuracy_of(self) -> dict[str, str]:
        return {} if self.mixup is None else {"train_accuracy_of": "dominant label"}


class MaskedPatches(Objective):
    """Masked patch prediction (:mod:`vitlab.training.mpp`); targets (B, patches, 3): colour, kind, source."""
    name = "mpp"
    uses_labels = False
    what = "pre-training (masked patch prediction, no labels)"

    def check(self) -> None:
        if (family := ARCHITECTURES[self.config.model].family) != "vit":
            raise ConfigError(f"--objective mpp (masked patch prediction) pre-trains a ViT, and {self.config.model} "
                              f"is a {family}; choose a ViT architecture")

    def rules(self) -> list[_Rule]:
        c = self.config  # masked patch prediction reads no labels: smoothing and mixing have nothing to act on
        return [
            ("label_smoothing", c.label_smoothing, c.label_smoothing == 0,
             "0 with --objective mpp (pre-training uses no labels)"),
            ("img_size", c.img_size, c.img_size in (None, IMAGE_SIZE),
             f"none with --objective mpp (colour targets are taken at CIFAR's {IMAGE_SIZE} pixels)"),
            ("mixup", c.mixup, c.mixup == 0, "0 with --objective mpp (no labels to mix)"),
            ("cutmix", c.cutmix, c.cutmix == 0, "0 with --objective mpp (no labels to mix)"),
        ]

    def prepare(self, model: nn.Module) -> nn.Module:
        return mpp.MaskedPatchPrediction(model)

    def encoder(self, trained: nn.Module) -> nn.Module:
        return trained.encoder

    def inputs(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
               step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = preprocess(trained.encoder, images)  # (B, 3, H, W)
        targets, corruption = mpp.draw_batch(images, trained.patch_size, generator)  # (B, patches) each
        return x, torch.stack([targets, corruption.kind.long(), corruption.source], dim=-1)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        targets, corruption = y[..., 0], mpp.Corruption(kind=y[..., 1], source=y[..., 2])
        loss, hits, _ = mpp.score(net(x, corruption), targets, corruption)  # logits (B, patches, 512)
        return loss, hits, len(x) * mpp.corrupted_per_image(targets.shape[1])

    def test_accuracy(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        return mpp.masked_accuracy(trained, images)

    def accuracy_of(self) -> dict[str, str]:
        return {"accuracy_of": MPP_ACCURACY}

    def extra_state(self, trained: nn.Module) -> dict[str, torch.Tensor] | None:
        return mpp.objective_state(trained)

    def load_trained(self, weights: str | os.PathLike) -> nn.Module:
        return mpp.load_pretrainer(weights, device="cpu")

    def published(self, metrics: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        return {"pretraining": dict(objective=c.objective, epochs=c.epochs, images_seen=metrics["step"] * c.batch_size,
                                    wall_seconds=metrics["wall_seconds"],
                                    masked_colour_accuracy=metrics["test_accuracy"], labels_used=False)}


_OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (Classification, MaskedPatches)}


def objective_for(config: TrainConfig) -> Objective:
    """The objective ``config`` trains with."""
    return _OBJECTIVES[config.objective](config)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) of ``model`` on uint8 ``images`` (N, 3, H, W)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    for i in range(0, len(images), batch_size):
        logits = model(preprocess(model, images[i : i + batch_size]))  # (B, classes)
        correct = correct.to(logits.device) + (logits.argmax(-1) == labels[i : i + batch_size].to(logits.device)).sum()
    return correct.item() / len(images)  # one read-back for the whole set


def mixing(config: TrainConfig) -> bool:
    """Whether ``config`` mixes images (mixup or CutMix on)."""
    return config.mixup > 0 or config.cutmix > 0


def mixer(config: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's :class:`~timm.data.Mixup` for ``config`` in batch mode (one draw per batch); None when off."""
    if not mixing(config):
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mix_prob,
                 switch_prob=config.mix_switch_prob, mode="batch", label_smoothing=config.label_smoothing,
                 num_classes=num_classes)


def mix(mixup: Mixup, x: torch.Tensor, y: torch.Tensor, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix ``x`` (B, C, H, W) in place; it and its soft targets (B, classes). NumPy's state is seeded, then put back."""
    saved = np.random.get_state()
    np.random.seed((seed * 1_000_003 + step) % 2**32)
    try:
        return mixup(x, y)
    finally:
        np.random.set_state(saved)


def init_objective(spec: str | os.PathLike | None) -> str:
    """How the weights ``spec`` were trained: ``"mpp"``, ``"classify"`` (also with no sidecar), or ``""`` for None."""
    if spec is None:
        return ""
    path = weights_file(spec)
    try:
        return read_sidecar(sidecar_path(path)).objective if path is not None else "classify"
    except (OSError, WeightsFileError):  # no sidecar, or one that is not vitlab's
        return "classify"


def init_model(config: TrainConfig) -> nn.Module:
    """The weights ``config.init`` as a ``config.model`` on the CPU; a head never trained on labels starts anew."""
    model = load_model(config.init, num_classes=len(data.CLASSES), device="cpu")
    wanted = build_model({"zoo": config.model})
    if type(model) is not type(wanted):
        raise ConfigError(f"--init {config.init} holds a {type(model).__name__}, but --model "
                          f"{config.model} is a {type(wanted).__name__}")
    if not _OBJECTIVES[init_objective(config.init)].uses_labels:
        model.reset_classifier(len(data.CLASSES))
    return model
