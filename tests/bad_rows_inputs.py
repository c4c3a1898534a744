"""Bad-input rows for images fed to models, capture and metrics (merged into test_bad_inputs).

Each row builds a tiny random-weight timm ViT (as the ``tiny_vit`` fixture does) and feeds
it, or a metric, one bad thing. ``before`` is what the same call did on the code before
issue 12.
"""
from __future__ import annotations

import timm
import torch
from test_bad_inputs import Bad

from vitlab import metrics
from vitlab.features import layer_features, layer_hooks, pre_logits
from vitlab.hooks import capture, head_statistics, hooks


def _vit(**kw) -> torch.nn.Module:
    """A 2-block ViT on 32x32 inputs with 8-pixel patches (4x4 grid), 3 heads; its cfg's mean/std are 0.5."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                              depth=2, num_heads=3, num_classes=5, **kw).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    return model


def _floats_0_255(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size)).float()


def _uint8(n: int = 2, size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def _with(value: float) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32).clamp(-1, 1)
    x[1, 2, 5, 7] = value
    return x


def _forward_inside_hooks(x: torch.Tensor) -> None:
    model = _vit()
    with hooks(model):
        model(x)


def _forward_inside_layer_hooks(x: torch.Tensor) -> None:
    model = _vit()
    with layer_hooks(model):
        model(x)


def _attn(batch: int = 2) -> torch.Tensor:
    """Random post-softmax attention (B, 3 heads, 17, 17): a 4x4 grid with a class token."""
    return torch.softmax(torch.randn(batch, 3, 17, 17), -1)


def _features(bad: float | None = None, rows: int = 10) -> torch.Tensor:
    x = torch.randn(rows, 5)
    if bad is not None:
        x[2, 1] = bad
    return x


ROWS = {
    # --- images into capture / hooks / head_statistics ---------------------------------
    "input-capture-float-0-255": Bad(
        call=lambda tmp: capture(_vit(), _floats_0_255()), error=ValueError,
        phrase="pass uint8 images (0..255) or call vitlab.preprocess(model, images)",
        before="no error: the forward ran on 0..255 floats and returned meaningless attention and logits"),
    "input-hooks-float-0-255": Bad(
        call=lambda tmp: _forward_inside_hooks(_floats_0_255()), error=ValueError, phrase="vitlab.preprocess",
        before="no error: the forward ran on 0..255 floats inside vitlab.hooks"),
    "input-head-statistics-float-0-255": Bad(
        call=lambda tmp: head_statistics(_vit(), _floats_0_255(5), batch_size=2), error=ValueError,
        phrase="far outside the model's normalised range",
        before="no error: returned distance/entropy statistics of 0..255 floats"),
    "input-layer-hooks-float-0-255": Bad(
        call=lambda tmp: _forward_inside_layer_hooks(_floats_0_255()), error=ValueError,
        phrase="vitlab.preprocess",
        before="no error: the forward ran on 0..255 floats inside vitlab.features.layer_hooks"),
    "input-capture-nan": Bad(
        call=lambda tmp: capture(_vit(), _with(float("nan"))), error=ValueError, phrase="images contain NaN",
        before="no error: a Capture whose attention and logits were NaN"),
    "input-capture-inf": Bad(
        call=lambda tmp: capture(_vit(), _with(float("inf"))), error=ValueError, phrase="images contain inf",
        before="no error: a Capture whose attention and logits were NaN"),
    "input-capture-empty-batch": Bad(
        call=lambda tmp: capture(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="no error: a Capture of 0 images (logits (0, 5))"),
    "input-head-statistics-empty-batch": Bad(
        call=lambda tmp: head_statistics(_vit(), _uint8(n=0)), error=ValueError, phrase="empty batch",
        before="ValueError: no batch was added"),
    "input-head-statistics-no-batches": Bad(
        call=lambda tmp: head_statistics(_vit(), iter([])), error=ValueError, phrase="images gave no batches",
        before="ValueError: no batch was added"),
    "input-head-statistics-batch-size-0": Bad(
        call=lambda tmp: head_statistics(_vit(), _uint8(), batch_size=0), error=ValueError,
        phrase="batch_size must be a positive integer",
        before="ValueError: range() arg 3 must not be zero"),
    "input-capture-fixed-size-model-wrong-size": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 40, 40).clamp(-1, 1)), error=ValueError,
        phrase="images are 40x40 pixels, but the model takes 32x32",
        before="AssertionError: Input height (40) doesn't match model (32). (timm)"),
    "input-capture-size-not-multiple-of-patch": Bad(
        call=lambda tmp: capture(_vit(dynamic_img_size=True), torch.randn(1, 3, 30, 30).clamp(-1, 1)),
        error=ValueError, phrase="30x30 pixels, not a multiple of the model's 8x8 patch size",
        before="AssertionError: Input height (30) should be divisible by patch size (8). (timm)"),
    "input-capture-uint8-size-not-multiple-of-patch": Bad(
        call=lambda tmp: capture(_vit(dynamic_img_size=True), _uint8(size=30)), error=ValueError,
        phrase="resizes to 32x32",
        before="AssertionError: Input height (30) should be divisible by patch size (8). (timm; a dynamic-size "
               "model keeps uint8 images at their size)"),
    "input-capture-grayscale-float": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(2, 1, 32, 32).clamp(-1, 1)), error=ValueError,
        phrase="images have 1 channel, but the model takes 3",
        before="RuntimeError: Given groups=1, weight of size [24, 3, 8, 8], expected input[2, 1, 32, 32] to have 3 "
               "channels, but got 1 channels instead"),
    "input-capture-grayscale-uint8": Bad(
        call=lambda tmp: capture(_vit(), _uint8(channels=1)), error=ValueError, phrase="images.expand(-1, 3, -1, -1)",
        before="ValueError: images must have shape (N, 3, H, W), got (2, 1, 32, 32) (from preprocess)"),
    "input-capture-one-image-3d": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(3, 32, 32).clamp(-1, 1)), error=ValueError,
        phrase="for one image pass images[None]",
        before="ValueError: not enough values to unpack (expected 4, got 3)"),
    "input-capture-numpy-array": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 32, 32).numpy()), error=TypeError,
        phrase="torch.from_numpy",
        before="TypeError: conv2d() received an invalid combination of arguments - got (numpy.ndarray, ...) "
               "(a multi-line message)"),
    "input-capture-int64-images": Bad(
        call=lambda tmp: capture(_vit(), torch.randint(0, 256, (1, 3, 32, 32))), error=TypeError,
        phrase="pass uint8 images",
        before="RuntimeError: Input type (long int) and bias type (float) should be the same"),
    "input-capture-float64-images": Bad(
        call=lambda tmp: capture(_vit(), torch.randn(1, 3, 32, 32, dtype=torch.float64).clamp(-1, 1)),
        error=TypeError, phrase="pass images.to(torch.float32)",
        before="RuntimeError: Input type (double) and bias type (float) should be the same"),
    "input-capture-layers-int": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=-1), error=TypeError, phrase="pass [-1]",
        before="TypeError: 'int' object is not iterable"),
    "input-capture-layer-out-of-range": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=[5]), error=ValueError,
        phrase="layers [5] out of range: the model has 2 blocks",
        before="ValueError: layers [5] out of range: the model has 2 blocks (0..1, or negative) (already clear)"),
    "input-capture-layer-not-captured": Bad(
        call=lambda tmp: capture(_vit(), _uint8(), layers=[-1]).attn[0], error=KeyError,
        phrase="layer 0 was not captured",
        before="KeyError: layer 0 was not captured; captured: [1] (already clear)"),
    # --- features ------------------------------------------------------------------------
    "input-layer-features-empty-batch": Bad(
        call=lambda tmp: layer_features(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="no error: a Features holding no vectors"),
    "input-pre-logits-empty-batch": Bad(
        call=lambda tmp: pre_logits(_vit(), _uint8(n=0)), error=ValueError, phrase="images is an empty batch",
        before="RuntimeError: torch.cat(): expected a non-empty list of Tensors"),
    "input-layer-features-batch-size-0": Bad(
        call=lambda tmp: layer_features(_vit(), _uint8(), batch_size=0), error=ValueError,
        phrase="batch_size must be a positive integer",
        before="ValueError: range() arg 3 must not be zero"),
    "input-layer-features-float": Bad(
        call=lambda tmp: layer_features(_vit(), _floats_0_255()), error=TypeError, phrase="images must be uint8",
        before="TypeError: images must be a uint8 tensor (N, 3, H, W) with values 0..255 (already clear)"),
    # --- attention metrics ----------------------------------------------------------------
    "input-rollout-one-tensor": Bad(
        call=lambda tmp: metrics.attention_rollout(_attn()), error=TypeError, phrase="pass [attn] or cap.attn",
        before="RuntimeError: Boolean value of Tensor with more than one value is ambiguous"),
    "input-rollout-one-image-maps": Bad(
        call=lambda tmp: metrics.attention_rollout([_attn()[0], _attn()[0]]), error=ValueError,
        phrase="pass [a[None] for a in maps]",
        before="ValueError: not enough values to unpack (expected 4, got 3)"),
    "input-mean-attention-distance-wrong-token-count": Bad(
        call=lambda tmp: metrics.mean_attention_distance(_attn(), (4, 4), (8, 8), 0), error=ValueError,
        phrase="attn has 17 tokens",
        before="ValueError: attn has 17 tokens; a (4, 4) grid with 0 prefix tokens needs 16 (already clear; a "
               "grid of the right product but wrong shape is undetectable: use vitlab.hooks.attention_distance)"),
    "input-query-head-out-of-range": Bad(
        call=lambda tmp: metrics.query_attention(_attn()[0], (4, 4), 1, (0, 0), head=7), error=ValueError,
        phrase="head 7 is out of range: the attention has 3 heads",
        before="IndexError: index 7 is out of bounds for dimension 0 with size 3"),
    "input-query-patch-outside-grid": Bad(
        call=lambda tmp: metrics.query_attention(_attn()[0], (4, 4), 1, (4, 0)), error=ValueError,
        phrase="query patch (4, 0) is outside the 4x4 grid",
        before="ValueError: query patch (4, 0) is outside the 4x4 grid (already clear)"),
    "input-query-batch-attention": Bad(
        call=lambda tmp: metrics.query_attention(_attn(), (4, 4), 1, (0, 0)), error=ValueError,
        phrase="pass attn[i]",
        before="ValueError: attention must be one image's (heads, 17, 17) ..., got (2, 3, 17, 17) (no hint what "
               "to pass)"),
    "input-class-token-attention-mapping": Bad(
        call=lambda tmp: metrics.class_token_attention({0: _attn()[0], 1: _attn()[0]}, (4, 4), 1), error=TypeError,
        phrase="cap.attn.values()",
        before="AttributeError: 'int' object has no attribute 'ndim'"),
    # --- CKA ----------------------------------------------------------------------------
    "input-cka-nan-x": Bad(
        call=lambda tmp: metrics.cka(_features(float("nan")), _features()), error=ValueError,
        phrase="x contains NaN",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-nan-y": Bad(
        call=lambda tmp: metrics.cka(_features(), _features(float("nan"))), error=ValueError,
        phrase="y contains NaN",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-inf": Bad(
        call=lambda tmp: metrics.cka(_features(float("inf")), _features(), unbiased=True), error=ValueError,
        phrase="x contains inf",
        before="ValueError: CKA is undefined here: a representation has zero (estimated) self-similarity"),
    "input-cka-rows": Bad(
        call=lambda tmp: metrics.cka(_features(), _features(rows=8)), error=ValueError,
        phrase="x and y must hold the same examples: 10 vs 8 rows",
        before="ValueError: x and y must hold the same examples: 10 vs 8 rows (already clear)"),
    "input-minibatch-cka-rows": Bad(
        call=lambda tmp: metrics.MinibatchCKA(1, 1).update([_features()], [_features(rows=8)]), error=ValueError,
        phrase="xs[0] and ys[0] must hold the same examples: 10 vs 8 rows",
        before="RuntimeError: mat1 and mat2 shapes cannot be multiplied (10x10 and 8x8)"),
    "input-minibatch-cka-nan": Bad(
        call=lambda tmp: metrics.MinibatchCKA(1, 2).update([_features()], [_features(), _features(float("nan"))]),
        error=ValueError, phrase="ys[1] contains NaN",
        before="no error: NaN added to the running sums, so compute() gave NaN"),
}
