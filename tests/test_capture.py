import pytest
import timm
import torch
from conftest import timm_intermediates
from timm.layers import Attention
from timm.utils import AttentionExtract

import vitlab
from vitlab.capture import (
    capture,
    head_statistics,
    layer_features,
    layer_hooks,
    representation_layers,
)
from vitlab.models import build_model


def _manual_attention(model, x):
    """softmax(q k^T * scale) computed by hand from each block's attention input."""
    inputs = {}
    handles = [b.attn.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
               for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    maps = {}
    for i, block in enumerate(model.blocks):
        a = block.attn
        b, n, _ = inputs[i].shape
        qkv = a.qkv(inputs[i]).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
        maps[i] = torch.softmax(q @ k.transpose(-2, -1) * a.scale, dim=-1)
    return maps


def test_attention_matches_manual_softmax_and_logits_match_plain_forward(tiny_vit):
    x = torch.randn(3, 3, 32, 32)
    assert all(b.attn.fused_attn for b in tiny_vit.blocks)  # timm's default: fused
    cap = capture(tiny_vit, x)
    manual = _manual_attention(tiny_vit, x)
    assert sorted(cap.attn) == [0, 1] and cap.attn[0].shape == (3, 3, 17, 17)
    for i in manual:
        torch.testing.assert_close(cap.attn[i], manual[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cap.attn[i].sum(-1), torch.ones(3, 3, 17))
    with torch.no_grad():
        plain = tiny_vit(x)
    torch.testing.assert_close(cap.logits, plain, rtol=0, atol=1e-5)
    assert cap.tokens[1].shape == (3, 17, 24)
    torch.testing.assert_close(tiny_vit.norm(cap.tokens[1])[:, 0], tiny_vit.forward_features(x)[:, 0], atol=1e-5, rtol=0)
    assert (cap.grid, cap.patch_size, cap.num_prefix_tokens) == ((4, 4), (8, 8), 1)


def test_matches_timm_attention_extract_with_fused_attention_off(tiny_vit):
    timm.layers.set_fused_attn(False)
    try:
        unfused = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                    embed_dim=24, depth=2, num_heads=3, num_classes=5).eval()
    finally:
        timm.layers.set_fused_attn(True)
    unfused.load_state_dict(tiny_vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    theirs = AttentionExtract(unfused, method="hook")(x)
    ours = capture(tiny_vit, x).attn
    assert len(theirs) == len(ours)
    for i, (name, value) in enumerate(sorted(theirs.items())):
        torch.testing.assert_close(ours[i], value, rtol=1e-5, atol=1e-6)


def test_model_is_left_exactly_as_found(tiny_vit):
    tiny_vit.train()
    tiny_vit.blocks[0].attn.fused_attn = False  # a user's own setting must survive too
    flags = [b.attn.fused_attn for b in tiny_vit.blocks]
    modes = [m.training for m in tiny_vit.modules()]
    capture(tiny_vit, torch.randn(1, 3, 32, 32), layers=[-1])
    assert [b.attn.fused_attn for b in tiny_vit.blocks] == flags
    assert [m.training for m in tiny_vit.modules()] == modes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_vit.modules())


def test_layers_subset_and_negative_indices(tiny_vit):
    cap = capture(tiny_vit, torch.randn(1, 3, 32, 32), layers=[-1])
    assert list(cap.attn) == [1] and list(cap.tokens) == [1]
    with pytest.raises(ValueError, match="out of range"):
        capture(tiny_vit, torch.randn(1, 3, 32, 32), layers=[5])


def test_registers_are_prefix_tokens():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2, reg_tokens=4).eval()
    cap = capture(model, torch.randn(2, 3, 32, 32))
    assert cap.num_prefix_tokens == 5 and cap.grid == (2, 2)
    assert cap.attn[0].shape == (2, 6, 9, 9)
    x = torch.randn(2, 3, 32, 32)
    manual = _manual_attention(model, x)
    torch.testing.assert_close(capture(model, x).attn[1], manual[1], rtol=1e-5, atol=1e-6)


def test_non_square_input_on_a_dynamic_size_model():
    model = vitlab.load_model("vit_tiny_c10", device="cpu")
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)  # kept as is, not resized
    cap = capture(model, images)
    assert cap.grid == (8, 12) and cap.attn[0].shape == (2, 4, 97, 97)
    with torch.no_grad():
        plain = model(vitlab.preprocess(model, images, resize=False))
    torch.testing.assert_close(cap.logits, plain, rtol=0, atol=1e-5)


def test_unreadable_model_gets_a_clear_error():
    with pytest.raises(ValueError, match="cannot read attention from ResNet"):
        capture(vitlab.load_model("resnet_tiny_c10", device="cpu"), torch.zeros(1, 3, 32, 32))


def test_head_statistics_stream_equals_one_big_batch(tiny_vit):
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    streamed = head_statistics(tiny_vit, images, batch_size=3)
    cap = capture(tiny_vit, images)
    for layer in (0, 1):
        expected = vitlab.metrics.mean_attention_distance(cap.attn[layer], cap.grid, cap.patch_size)
        torch.testing.assert_close(streamed["distance"][layer], expected, rtol=1e-5, atol=1e-5)
    assert streamed["distance"].shape == streamed["entropy"].shape == (2, 3)
    batches = (images[i : i + 4] for i in range(0, 10, 4))  # any iterable of batches works too
    torch.testing.assert_close(head_statistics(tiny_vit, batches)["distance"], streamed["distance"])


class _WrappedAttention(Attention):
    """An attention class with its own forward: capture must take the explicit-path route."""

    def forward(self, x, attn_mask=None, is_causal=False):
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


def test_other_attention_classes_use_the_explicit_path(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    expected = _manual_attention(tiny_vit, x)
    for block in tiny_vit.blocks:
        block.attn.__class__ = _WrappedAttention
    assert all(b.attn.fused_attn for b in tiny_vit.blocks)
    cap = capture(tiny_vit, x)
    for i in expected:
        torch.testing.assert_close(cap.attn[i], expected[i], rtol=1e-5, atol=1e-6)
    assert all(b.attn.fused_attn for b in tiny_vit.blocks)  # the module's own flag is restored
    assert not any(m._forward_hooks for m in tiny_vit.modules())


@pytest.mark.parametrize("name", ["vit_micro_c10", "resnet_micro_c10"])
def test_layer_features_match_timmtimm_intermediates(name):
    torch.manual_seed(0)
    model = build_model({"zoo": name}).eval()
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    feats = layer_features(model, images, batch_size=3)
    outs = timm_intermediates(model, images)
    layers = representation_layers(model)
    assert len(layers) == len(outs)
    for layer, out in zip(layers, outs):
        if out.ndim == 3:
            torch.testing.assert_close(feats[(layer, "cls")], out[:, 0])
            torch.testing.assert_close(feats[(layer, "mean")], out[:, 1:].mean(1))
        else:
            torch.testing.assert_close(feats[(layer, "gap")], out.mean((2, 3)))
    assert model.training is False
    model.train()
    with layer_hooks(model):
        pass
    assert model.training and all(not m._forward_hooks for m in model.modules())
