"""Attribution maps of a model's prediction on the patch grid, one interface for every method (issue 32): the last
block's class-token attention, attention rollout, gradient-weighted rollout (Chefer, Gur and Wolf, ICCV 2021),
attention x gradient, patch occlusion, integrated gradients and input x gradient (captum), Grad-CAM for a ResNet's
``layer4``, and a seeded random map as the floor. Larger values are more evidence for the target class. The model is
put back as it was: weights, hooks, ``fused_attn`` flags, train/eval mode
(:func:`~vitlab.analysis.capture.restoring`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_maps
from .capture import _blocks, capture, has_class_token, pooling, restoring
from .lens import check_labels
from ..models.inputs import check_images, input_size, preprocess

METHODS = ("random", "attention", "rollout", "grad_rollout", "attn_grad", "occlusion",
           "integrated_gradients", "input_x_gradient", "grad_cam")
#: Methods that read a ViT's attention (they need a class token); the others take any classifier.
ATTENTION_METHODS = ("attention", "rollout", "grad_rollout", "attn_grad")
#: Methods whose attributions have pixel resolution (kept in :class:`MapsResult`'s ``pixels``).
PIXEL_METHODS = ("integrated_gradients", "input_x_gradient", "grad_cam")
#: Methods that cost many forwards per image (occlusion: one per cell; integrated gradients: IG_STEPS, each with a
#: backward); the others take one forward and at most one backward.
SLOW_METHODS = ("occlusion", "integrated_gradients")
#: Integrated gradients' path steps (Gauss-Legendre, captum's default rule).
IG_STEPS = 64
#: Cells per side of the grid a model without patches (a ResNet) is scored on.
CNN_GRID = 8


def _check_method(method: object) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose from {', '.join(METHODS)}")


def applicable(model: nn.Module, method: str) -> str | None:
    """None if ``method`` applies to ``model``, else the one-line reason it does not (ValueError if unknown)."""
    _check_method(method)
    name = type(model).__name__
    if method in ATTENTION_METHODS:
        try:
            _blocks(model)
        except ValueError:
            return (f"{method} reads a ViT's attention, and {name} has none (no model.blocks[i].attn): use "
                    "occlusion, integrated_gradients, input_x_gradient or grad_cam")
        if not has_class_token(model) or pooling(model) != "token":
            return (f"{method} reads the class token's attention, but {name} pools its patch tokens "
                    f"(global_pool={getattr(model, 'global_pool', None)!r}): use occlusion or integrated_gradients")
    if method == "grad_cam" and not isinstance(getattr(model, "layer4", None), nn.Module):
        return (f"grad_cam reads a ResNet's layer4, and {name} has none: for a ViT use grad_rollout or attn_grad")
    return None


def applicable_methods(model: nn.Module, slow: bool = True) -> tuple[str, ...]:
    """The methods that apply to ``model``, in :data:`METHODS` order; ``slow=False`` leaves out
    :data:`SLOW_METHODS`."""
    return tuple(m for m in METHODS if applicable(model, m) is None and (slow or m not in SLOW_METHODS))


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the grid maps live on: a ViT's ``patch_embed.grid_size``; a CNN's 8x8 cells of its input."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "grid_size", None) is not None:
        return tuple(int(v) for v in embed.grid_size)
    h, w = input_size(model)
    if h % CNN_GRID or w % CNN_GRID:
        raise ValueError(f"{type(model).__name__} takes {h}x{w} pixels, which do not divide into a {CNN_GRID}x"
                         f"{CNN_GRID} grid of cells: give its pretrained_cfg an input_size divisible by {CNN_GRID}")
    return CNN_GRID, CNN_GRID


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and classes > 0:
        return classes
    with torch.no_grad(), restoring(model):
        model.eval()
        return int(model(x[:1]).shape[-1])


def _inputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's normalised float batch from uint8 images (resized) or from an already normalised batch."""
    if images.dtype == torch.uint8:
        return preprocess(model, images)
    return images.to(next(model.parameters()).device)


def _baseline(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The dataset mean as the model sees it: ``pretrained_cfg["mean"]`` normalised, a constant image like ``x``."""
    return torch.zeros_like(x)  # (B, 3, H, W): preprocessing maps the mean to 0


def _cells(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sum of per-pixel values (B, H, W) over each cell of ``grid``: (B, rows, cols)."""
    b, h, w = pixels.shape
    rows, cols = grid
    if h % rows or w % cols:
        raise ValueError(f"a {h}x{w} map does not divide into the {rows}x{cols} grid")
    return pixels.reshape(b, rows, h // rows, cols, w // cols).sum((2, 4))


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad(), restoring(model):
        model.eval()
        return torch.cat([model(x[i : i + batch_size]).argmax(-1).cpu() for i in range(0, len(x), batch_size)])


def _target_logit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets.to(logits.device)[:, None]).sum()


def _class_attention(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    cap = capture(model, x, layers=[-1])
    a = cap.attn[-1].float().mean(1)  # (B, N, N)
    return a[:, 0, cap.num_prefix_tokens:].reshape(len(x), *grid)


def _rollout(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    cap = capture(model, x)
    return attention_maps.attention_rollout(cap.attn, cap.num_prefix_tokens).reshape(len(x), *grid)


def _attention_with_grads(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[list, tuple]:
    """Every block's attention (B, heads, N, N) in the autograd graph and the target logit's gradient on it. Runs
    timm's explicit attention path (``fused_attn`` off), whose ``attn_drop`` sees the softmax; flags restored."""
    blocks = _blocks(model)
    attns: dict[int, torch.Tensor] = {}
    with restoring(model), torch.enable_grad():
        model.eval()
        for i, block in enumerate(blocks):
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(lambda _m, _a, out, i=i: attns.__setitem__(i, out))
        x = x.detach().requires_grad_(True)  # puts the attention in the graph even when no weight needs a gradient
        score = _target_logit(model(x), targets)
        ordered = [attns[i] for i in range(len(blocks))]
        grads = torch.autograd.grad(score, ordered)
    return [a.detach() for a in ordered], grads


def _grad_rollout(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Chefer et al. 2021: R = I; per block R += mean_heads((grad * A)^+) @ R; the class token's row over patches."""
    attns, grads = _attention_with_grads(model, x, targets)
    n = attns[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float64, device=x.device).expand(len(x), n, n)  # (B, N, N)
    for a, g in zip(attns, grads):
        weighted = (g.double() * a.double()).clamp_min(0).mean(1)  # (B, N, N)
        relevance = relevance + weighted @ relevance
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return relevance[:, 0, prefix:].float().reshape(len(x), *grid)


def _attn_grad(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The last block's mean over heads of (A * grad)^+, the class token's row over patches."""
    attns, grads = _attention_with_grads(model, x, targets)
    weighted = (grads[-1] * attns[-1]).clamp_min(0).mean(1)  # (B, N, N)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return weighted[:, 0, prefix:].float().reshape(len(x), *grid)


def _occlusion(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """captum's Occlusion, one cell per window (stride = window): each cell's target-logit drop when it holds the
    dataset mean."""
    from captum.attr import Occlusion

    ph, pw = x.shape[-2] // grid[0], x.shape[-1] // grid[1]
    with restoring(model), torch.no_grad():
        model.eval()
        attr = Occlusion(model).attribute(x, sliding_window_shapes=(3, ph, pw), strides=(3, ph, pw),
                                          baselines=_baseline(model, x), target=targets.to(x.device),
                                          perturbations_per_eval=16)  # (B, 3, H, W): the drop on each pixel
    return attr[:, 0].reshape(len(x), grid[0], ph, grid[1], pw).mean((2, 4)).float()


def _input_x_gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import InputXGradient

    with restoring(model), torch.enable_grad():
        model.eval()
        attr = InputXGradient(model).attribute(x.detach().requires_grad_(True), target=targets.to(x.device))
    return attr.detach().sum(1).float()  # (B, H, W)


def _grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum's LayerGradCam on ``layer4`` (ReLU of the gradient-weighted channels), bilinearly upsampled to pixels."""
    from captum.attr import LayerAttribution, LayerGradCam

    with restoring(model), torch.enable_grad():
        model.eval()
        cam = LayerGradCam(model, model.layer4).attribute(x.detach().requires_grad_(True),
                                                            target=targets.to(x.device), relu_attributions=True)
    up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].float()  # (B, H, W)


def _integrated_gradients(model64: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                          batch_size: int) -> tuple[torch.Tensor, float]:
    """captum's IntegratedGradients, in the copy ``model64``'s dtype, from the mean image: per-pixel sums over
    channels (B, H, W) and the worst |convergence delta| / |f(x) - f(baseline)|."""
    from captum.attr import IntegratedGradients

    x64 = x.detach().to(next(model64.parameters()).dtype)
    base = _baseline(model64, x64)
    t = targets.to(x.device)
    with torch.enable_grad():
        attr, delta = IntegratedGradients(model64).attribute(x64, baselines=base, target=t, n_steps=IG_STEPS,
                                                             internal_batch_size=max(batch_size, IG_STEPS),
                                                             return_convergence_delta=True)
    with torch.no_grad():
        gap = (model64(x64) - model64(base)).gather(1, t[:, None])[:, 0]  # (B,)
    relative = (delta.abs() / gap.abs().clamp_min(1e-12)).max()
    return attr.detach().sum(1).float(), float(relative)


_GRID_METHODS = {"attention": _class_attention, "rollout": _rollout, "grad_rollout": _grad_rollout,
                 "attn_grad": _attn_grad, "occlusion": _occlusion}
_PIXEL_FUNCTIONS = {"input_x_gradient": _input_x_gradient, "grad_cam": _grad_cam}


def _ig_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A ``dtype`` copy of ``model`` in eval mode whose weights need no gradient (the user's model is never cast, and
    gets no ``.grad``)."""
    copied = copy.deepcopy(model).to(dtype).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def _check_request(model: nn.Module, images: torch.Tensor, methods: tuple[str, ...],
                   targets: torch.Tensor | None) -> torch.Tensor | None:
    """Every check of a saliency call, before any work: images, methods (known and applicable), targets."""
    check_images(model, images)
    for method in methods:
        reason = applicable(model, method)
        if reason is not None:
            raise ValueError(reason)
    if targets is None:
        return None
    targets = torch.as_tensor(targets)
    if targets.is_floating_point() or targets.ndim != 1 or len(targets) != len(images):
        raise ValueError(f"targets must be one class index per image: {len(images)} images, targets shaped "
                         f"{tuple(targets.shape)} ({targets.dtype})")
    return targets.long().cpu()


def _check_targets(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    classes = _classes(model, x)
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < classes:
        bad = int(targets.min()) if int(targets.min()) < 0 else int(targets.max())
        raise ValueError(f"target class {bad} is out of range: the model has {classes} classes (0..{classes - 1})")


def _random(count: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.rand(count, *grid, generator=torch.Generator().manual_seed(seed))  # (N, rows, cols) uniform


def _method_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str, grid: tuple[int, int],
                 batch_size: int, seed: int, ig_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One method over a preprocessed batch ``x``: grid maps (N, rows, cols), pixel maps (N, H, W) or None, and
    integrated gradients' worst relative delta (nan for the others)."""
    if method == "random":
        return _random(len(x), grid, seed), None, float("nan")
    model64 = _ig_copy(model, ig_dtype) if method == "integrated_gradients" else None
    grids, pixels, delta = [], [], float("nan")
    for i in range(0, len(x), batch_size):
        xb, tb = x[i : i + batch_size], targets[i : i + batch_size]
        if method in _GRID_METHODS:
            grids.append(_GRID_METHODS[method](model, xb, tb, grid).detach().cpu())
            continue
        if method == "integrated_gradients":
            pix, d = _integrated_gradients(model64, xb, tb, batch_size)
            delta = d if delta != delta else max(delta, d)
        else:
            pix = _PIXEL_FUNCTIONS[method](model, xb, tb)
        pixels.append(pix.cpu())
        grids.append(_cells(pixels[-1], grid))
    return torch.cat(grids), (torch.cat(pixels) if pixels else None), delta


def saliency(model: nn.Module, images: torch.Tensor, method: str, targets: torch.Tensor | None = None, *,
             batch_size: int = 64, seed: int = 0, ig_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``method``'s map of why ``model`` gives each image its target class, on :func:`patch_grid`.

    Args:
        model: a timm classifier (a ViT with a class token for the attention methods, a ResNet's ``layer4`` for
            ``grad_cam``); left as it was.
        images: uint8 (N, 3, H, W) (preprocessed here) or the model's normalised float batch.
        method: one of :data:`METHODS`.
        targets: (N,) class indices the maps explain; default the model's prediction.
        batch_size: images per forward (occlusion runs 16 cells of each at once; integrated gradients 64 steps).
        seed: the random map's seed.
        ig_dtype: the dtype integrated gradients run in, on a copy of the model. float32 is 13x faster than float64
            on a CPU, and its convergence delta on ``vit_tiny_c10_e40`` was as small (under 1e-6 of f(x) - f(baseline),
            16 test images); tests check completeness against float64 forwards.

    Returns:
        (N, rows, cols) float32 on the CPU, larger = more evidence for the target; pixel methods summed over
        channels and over each cell's pixels.
    """
    return _run(model, images, (method,), targets, batch_size, seed, ig_dtype)[0][method]


def _run(model: nn.Module, images: torch.Tensor, methods: tuple[str, ...], targets: torch.Tensor | None,
         batch_size: int, seed: int, ig_dtype: torch.dtype = torch.float32):
    """Check everything, then the maps of ``methods``: (maps, pixels, targets, predictions, worst IG delta)."""
    for method in methods:
        _check_method(method)
    targets = _check_request(model, images, methods, targets)
    grid = patch_grid(model)
    x = _inputs(model, images)
    if targets is not None:
        _check_targets(model, x, targets)
    predictions = _predict(model, x, batch_size)
    targets = predictions if targets is None else targets
    maps, pixels, delta = {}, {}, float("nan")
    for method in methods:
        maps[method], pix, d = _method_maps(model, x, targets, method, grid, batch_size, seed, ig_dtype)
        if pix is not None:
            pixels[method] = pix
        delta = d if method == "integrated_gradients" else delta
    return maps, pixels, targets, predictions, delta


@dataclass(frozen=True, kw_only=True)
class MapsResult:
    """Every chosen method's maps of the same images and targets (:func:`maps_analysis`)."""
    methods: tuple[str, ...]
    maps: dict[str, torch.Tensor]  # method -> (N, rows, cols) float32
    pixels: dict[str, torch.Tensor]  # method -> (N, H, W) float32, only methods with pixel resolution
    images: torch.Tensor  # (N, 3, H, W) uint8, as explained
    targets: torch.Tensor  # (N,) long, the class each map explains
    predictions: torch.Tensor  # (N,) long
    labels: torch.Tensor | None  # (N,) long or None
    ig_delta: float  # integrated gradients' worst |delta| / |f(x) - f(baseline)| (nan if not run)
    model_name: str = ""
    described: str = ""


def maps_analysis(model: nn.Module, images: torch.Tensor, methods: tuple[str, ...] | None = None,
                  targets: torch.Tensor | None = None, labels: torch.Tensor | None = None, *, batch_size: int = 64,
                  described: str = "", model_name: str = "", seed: int = 0,
                  ig_dtype: torch.dtype = torch.float32) -> MapsResult:
    """The maps of ``methods`` (default every one that applies to ``model``) for uint8 ``images`` (N, 3, H, W),
    explaining ``targets`` (default the prediction); ``labels``: the true classes, kept for readouts; ``described``:
    which images; ``ig_dtype``: as :func:`saliency`. Checks every input (methods, targets, labels) before the first
    forward."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 tensor (N, 3, H, W): maps_analysis keeps them for its figures")
    if methods is None:
        methods = applicable_methods(model)
    elif isinstance(methods, str):
        raise TypeError(f"methods must be a list of method names, got {methods!r}: pass [{methods!r}]")
    methods = tuple(methods)
    labels = check_labels(images, labels, least=1, classes=getattr(model, "num_classes", None))
    maps, pixels, targets, predictions, delta = _run(model, images, methods, targets, batch_size, seed, ig_dtype)
    return MapsResult(methods=methods, maps=maps, pixels=pixels, images=images.cpu(), targets=targets,
                      predictions=predictions, labels=labels, ig_delta=delta, model_name=model_name,
                      described=described)
