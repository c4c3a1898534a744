"""Masked patch prediction, the ViT paper's self-supervised objective (4.6, B.1.2): corrupted patches' mean colour."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import load_model, preprocess, weights_file
from ..models.weights import OBJECTIVE_PREFIX, read_state_dict

#: Fraction of each image's patches that are corrupted; of those, the shares replaced by ``[mask]`` and by another.
CORRUPT_FRACTION, MASK_SHARE, RANDOM_SHARE = 0.5, 0.8, 0.1
LEVELS = 8  #: quantisation levels per colour channel (3 bits)
COLOURS = LEVELS**3  #: classes of the mean colour
KEPT, MASKED, SWAPPED, UNCHANGED = 0, 1, 2, 3  #: how a patch was corrupted, in :attr:`Corruption.kind`


def colour_targets(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The 3-bit mean colour of every patch of uint8 ``images``, (N, patches) row-major: ``r * 64 + g * 8 + b``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if images.shape[-1] % patch_size or images.shape[-2] % patch_size:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {patch_size}")
    means = F.avg_pool2d(images.float(), patch_size)  # (N, 3, rows, cols), 0..255
    return _colour_class(means).flatten(1)


def _colour_class(rgb: torch.Tensor) -> torch.Tensor:
    """The 3-bit colour class (0..511) of mean colours ``rgb`` (N, 3, ...) on a 0..255 scale: (N, ...)."""
    r, g, b = (rgb * LEVELS / 256).floor().clamp_(0, LEVELS - 1).long().unbind(1)
    return r * LEVELS**2 + g * LEVELS + b


@dataclass(frozen=True)
class Corruption:
    """Which patches of a batch were corrupted, and how."""
    kind: torch.Tensor  # (N, patches): KEPT, MASKED, SWAPPED (took patch ``source``) or UNCHANGED (corrupted, kept)
    source: torch.Tensor  # (N, patches) long: the patch a SWAPPED one took, its own index otherwise

    @property
    def corrupted(self) -> torch.Tensor:
        """(N, patches) bool: the patches the loss is computed on."""
        return self.kind != KEPT


def corrupted_per_image(patches: int) -> int:
    """How many of an image's ``patches`` are corrupted (and scored)."""
    return round(CORRUPT_FRACTION * patches)


def draw_corruption(batch: int, patches: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Corruption:
    """Draw ``round(CORRUPT_FRACTION * patches)`` patches per image to corrupt, and how, from ``generator``."""
    if patches < 2:
        raise ValueError(f"masked patch prediction needs at least 2 patches per image, got {patches}")
    count = corrupted_per_image(patches)
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
    chosen = rand(batch, patches).argsort(dim=1)[:, :count]  # (N, count) patch indices, uniformly drawn
    how = rand(batch, count)
    kinds = torch.where(how < MASK_SHARE, MASKED, torch.where(how < MASK_SHARE + RANDOM_SHARE, SWAPPED, UNCHANGED))
    kind = torch.full((batch, patches), KEPT, device=device).scatter_(1, chosen, kinds)
    # A random other patch: draw from the patches - 1 others and skip over the patch itself.
    own = torch.arange(patches, device=device).expand(batch, patches)
    other = (rand(batch, patches) * (patches - 1)).long().clamp_(max=patches - 2)
    other = other + (other >= own).long()
    source = torch.where(kind == SWAPPED, other, own)
    return Corruption(kind=kind, source=source)


def corrupt(tokens: torch.Tensor, corruption: Corruption, mask_token: torch.Tensor) -> torch.Tensor:
    """Apply ``corruption`` to patch embeddings (N, patches, D): masked ones become ``mask_token`` (D,)."""
    swapped = tokens.gather(1, corruption.source.unsqueeze(-1).expand_as(tokens))  # (N, patches, D)
    masked = (corruption.kind == MASKED).unsqueeze(-1)
    return torch.where(masked, mask_token.to(tokens.dtype).expand_as(tokens), swapped)


class MaskedPatchPrediction(nn.Module):
    """A ViT ``encoder`` with a ``[mask]`` embedding (``mask_token``) and a linear 512-colour head (``colour_head``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if not hasattr(encoder, "patch_embed") or not hasattr(encoder, "_pos_embed"):
            raise TypeError(f"masked patch prediction needs a timm VisionTransformer, got {type(encoder).__name__}")
        self.encoder = encoder
        width = encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # as timm initialises its tokens
        self.colour_head = nn.Linear(width, COLOURS)

    @property
    def vitlab_arch(self) -> dict:
        """The encoder's architecture record (checkpoints of a pre-training run rebuild the encoder)."""
        return self.encoder.vitlab_arch

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor, corruption: Corruption) -> torch.Tensor:
        """Colour logits (N, patches, 512) of normalised images ``x`` whose patch embeddings are corrupted."""
        vit = self.encoder
        tokens = vit.patch_embed(x)  # (N, rows, cols, D) with dynamic image size, else (N, patches, D)
        grid = tokens.shape[1:3] if tokens.ndim == 4 else None
        flat = tokens.flatten(1, 2) if grid is not None else tokens  # (N, patches, D)
        flat = corrupt(flat, corruption, self.mask_token)
        tokens = flat.unflatten(1, grid) if grid is not None else flat
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        h = vit.norm(vit.blocks(h))  # (N, prefix + patches, D)
        return self.colour_head(h[:, vit.num_prefix_tokens:])

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: the encoder's (timm's list) and the mask embedding."""
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | {"mask_token"}

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, correct, count)`` on the corrupted patches of uint8 ``images``, as device tensors (no sync)."""
        targets, corruption = draw_batch(images, self.patch_size, generator)
        return self.scored(preprocess(self.encoder, images, resize=False), targets, corruption)

    def scored(self, x: torch.Tensor, targets: torch.Tensor, corruption: Corruption
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`loss` on normalised images ``x`` with their colour ``targets`` (N, patches) and ``corruption``."""
        return score(self(x, corruption), targets, corruption)


def score(logits: torch.Tensor, targets: torch.Tensor, corruption: Corruption
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, correct, count)`` of colour ``logits`` (N, patches, 512) against ``targets`` on corrupted patches."""
    picked = corruption.corrupted
    chosen, wanted = logits[picked], targets[picked]  # (corrupted, 512), (corrupted,)
    loss = F.cross_entropy(chosen.float(), wanted)
    return loss, (chosen.argmax(-1) == wanted).sum(), wanted.new_tensor(wanted.numel())


def draw_batch(images: torch.Tensor, patch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, Corruption]:
    """The colour targets (N, patches) of uint8 ``images`` and a corruption drawn from ``generator``, on ``device``."""
    device = device or (generator.device if generator is not None else images.device)
    targets = colour_targets(images, patch_size).to(device)  # (N, patches)
    return targets, draw_corruption(*targets.shape, generator=generator, device=device)


@torch.no_grad()
def masked_accuracy(model: MaskedPatchPrediction, images: torch.Tensor, seed: int = 0, batch_size: int = 500) -> float:
    """Share of the corrupted patches of uint8 ``images`` whose colour ``model`` predicts right (the same each call)."""
    model.eval()
    device = model.mask_token.device
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = count = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        targets, corruption = draw_batch(chunk, model.patch_size, generator, device)
        _, hits, n = model.scored(preprocess(model.encoder, chunk, resize=False), targets, corruption)
        correct, count = correct + hits, count + n
    return correct.item() / max(1, count.item())  # one read-back for the whole set


@dataclass(frozen=True)
class MaskedExample:
    """What the objective asks of a few images and what a model answers (:func:`masked_example`)."""
    pixels: torch.Tensor  # (N, H, W, 3) uint8
    seen: torch.Tensor  # (N, H, W, 3) uint8 what the encoder sees: masked patches grey, swapped ones the patch taken
    targets: torch.Tensor  # (N, patches) 3-bit colour classes, row-major
    predicted: torch.Tensor  # (N, patches)
    corrupted: torch.Tensor  # (N, patches) bool: the scored patches
    right: list[float]  # per image, the share of its scored patches predicted right
    grid: tuple[int, int]  # (rows, cols) of patches
    patch: int  # their side in pixels


@torch.no_grad()
def masked_example(model: MaskedPatchPrediction, images: torch.Tensor, seed: int = 0) -> MaskedExample:
    """``model``'s predictions on uint8 ``images`` (N, 3, H, W, a few) under a corruption drawn with ``seed``."""
    model.eval()
    device, patch = model.mask_token.device, model.patch_size
    targets, corruption = draw_batch(images, patch, torch.Generator(device=device).manual_seed(seed), device)
    predicted = model(preprocess(model.encoder, images, resize=False), corruption).argmax(-1).cpu()  # (N, patches)
    targets, kind, source = targets.cpu(), corruption.kind.cpu(), corruption.source.cpu()
    picked = corruption.corrupted.cpu()  # (N, patches)
    (h, w), grid = images.shape[-2:], (images.shape[-2] // patch, images.shape[-1] // patch)
    pixels = images.permute(0, 2, 3, 1).cpu()  # (N, H, W, 3)
    flat = pixels.unfold(1, patch, patch).unfold(2, patch, patch).reshape(len(images), -1, 3, patch, patch)
    seen = torch.stack([flat[n][source[n]] for n in range(len(images))])  # a swapped patch shows the patch it took
    seen[kind == MASKED] = 128
    seen = seen.view(len(images), *grid, 3, patch, patch).permute(0, 1, 4, 2, 5, 3).reshape(len(images), h, w, 3)
    right = [float((predicted[n][picked[n]] == targets[n][picked[n]]).float().mean()) for n in range(len(images))]
    return MaskedExample(pixels, seen, targets, predicted, picked, right, grid, patch)


def baselines(images: torch.Tensor, patch_size: int, seed: int = 0, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of guesses without a model (neighbours' or image mean, most frequent colour) on the scored patches."""
    generator = torch.Generator().manual_seed(seed)
    cross = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    counts = torch.zeros(COLOURS, dtype=torch.long)
    hits, scored = {"neighbours' mean": 0, "image mean": 0}, 0
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        targets, corruption = draw_batch(chunk, patch_size, generator, "cpu")  # (N, patches)
        means = F.avg_pool2d(chunk.float(), patch_size)  # (N, 3, rows, cols), 0..255
        n, _, rows, cols = means.shape
        kept = (corruption.kind == KEPT).float().view(n, 1, rows, cols)
        visible = (means * kept).sum((2, 3)) / kept.sum((2, 3))  # (N, 3): the image's visible mean
        around = F.conv2d((means * kept).reshape(n * 3, 1, rows, cols), cross, padding=1).view(n, 3, rows, cols)
        seen = F.conv2d(kept, cross, padding=1)  # (N, 1, rows, cols): visible neighbours
        local = torch.where(seen > 0, around / seen.clamp(min=1), visible[:, :, None, None])  # (N, 3, rows, cols)
        picked = corruption.corrupted
        for name, colour in (("neighbours' mean", local.flatten(2)), ("image mean", visible[:, :, None])):
            guess = _colour_class(colour).expand_as(targets)  # (N, patches)
            hits[name] += int((guess[picked] == targets[picked]).sum())
        counts += torch.bincount(targets[picked], minlength=COLOURS)
        scored += int(picked.sum())
    return {**{k: v / scored for k, v in hits.items()}, "most frequent": int(counts.max()) / scored}


def objective_state(model: MaskedPatchPrediction) -> dict[str, torch.Tensor]:
    """The mask embedding and colour head under ``mpp.*`` keys (which :func:`vitlab.models.load_model` ignores)."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    return {f"{OBJECTIVE_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in own.items()}


def load_pretrainer(spec: str | os.PathLike, device: str | torch.device | None = None) -> MaskedPatchPrediction:
    """The encoder of pre-trained weights (a path or zoo name) with its mask embedding and colour head."""
    encoder = load_model(spec, device="cpu")
    path = weights_file(spec)  # load_model above found it
    state = {k.removeprefix(OBJECTIVE_PREFIX): v for k, v in read_state_dict(path).items()
             if k.startswith(OBJECTIVE_PREFIX)}
    if not state:
        raise ValueError(f"{path} holds no masked-patch-prediction parameters ({OBJECTIVE_PREFIX}* keys): it was "
                         "not pre-trained with python -m vitlab pretrain --objective mpp")
    model = MaskedPatchPrediction(encoder)
    model.load_state_dict({**{f"encoder.{k}": v for k, v in encoder.state_dict().items()}, **state})
    return model.to(device or next(encoder.parameters()).device).eval()

