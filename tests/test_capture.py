import contextlib
import math

import pytest
import timm
import torch
from timm.layers import Attention
from timm.utils import AttentionExtract

import vitlab
from vitlab.analysis import attention_maps
from vitlab.analysis.capture import Capture, capture, hooks, restoring
from vitlab.analysis.distance import attention_distance, uniform_distance


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
    assert list(cap.attn) == [1] and list(cap.tokens) == [1] and cap.layers == [1]
    with pytest.raises(ValueError, match="out of range"):
        capture(tiny_vit, torch.randn(1, 3, 32, 32), layers=[5])
    with pytest.raises(KeyError, match="not captured"):
        cap.attn[0]
    assert 0 not in cap.attn and -1 in cap.attn and -2 not in cap.tokens and 2 not in cap.tokens


def test_negative_indices_and_named_keys_equal_the_int_keys(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    cap = capture(tiny_vit, x)
    depth = len(tiny_vit.blocks)
    assert list(cap.attn) == list(cap.tokens) == cap.layers == list(range(depth))  # iteration: block indices
    assert [a.shape for a in cap.attn.values()] == [(2, 3, 17, 17)] * depth
    for i in range(depth):
        for key in (i, i - depth):
            assert cap.attn[key] is cap.attn[i] and cap.tokens[key] is cap.tokens[i]
            assert cap["attn", key] is cap.attn[i] and cap["tokens", key] is cap.tokens[i]
    # Block -1 is the model's last block: its tokens are what the final norm reads.
    torch.testing.assert_close(tiny_vit.norm(cap["tokens", -1]), tiny_vit.forward_features(x), atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="outside"):
        cap.attn[depth]
    with pytest.raises(KeyError, match="kind"):
        cap["mlp", 0]


def test_every_forward_inside_hooks_overwrites_the_capture(tiny_vit):
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with hooks(tiny_vit, layers=[0]) as cap:
        tiny_vit(a)
        first = cap.attn[0]
        tiny_vit(b)
    torch.testing.assert_close(first, capture(tiny_vit, a, layers=[0]).attn[0])
    torch.testing.assert_close(cap.attn[0], capture(tiny_vit, b, layers=[0]).attn[0])


def test_capture_records_through_its_methods():
    cap = Capture(3, [0, 2], patch_size=(8, 8), num_prefix_tokens=1)
    q, k = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)  # (B, heads, N, head_dim)
    cap.record_qk(-1, q=q, scale=0.5)
    cap.record_qk(2, k=k)
    cap.record_attn(0, torch.full((2, 4, 5, 5), 0.2))
    cap.record_tokens(0, torch.zeros(2, 5, 6))
    assert list(cap.attn) == [0, 2] and list(cap.tokens) == [0]
    expected = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.5, dim=-1)
    torch.testing.assert_close(cap["attn", 2], expected)
    cap.record_output(torch.zeros(2, 10), (16, 16))
    assert cap.grid == (2, 2)
    with pytest.raises(ValueError, match="patches"):
        cap.record_output(torch.zeros(2, 10), (32, 32))  # 4 patch tokens, but a 4x4 grid


def _state(model):
    return ([m.training for m in model.modules()],
            [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
            [m.__dict__.get("fused_attn", "absent") for m in model.modules()])


@pytest.mark.parametrize("raises", [False, True])
def test_restoring_puts_hooks_flags_and_modes_back(tiny_vit, raises):
    seen = []
    tiny_vit.blocks[1].register_forward_hook(lambda m, a, out: seen.append(out.shape))  # the user's own hook
    tiny_vit.blocks[0].train()
    tiny_vit.blocks[1].attn.fused_attn = False
    before = _state(tiny_vit)
    with contextlib.suppress(RuntimeError), restoring(tiny_vit):
        tiny_vit.eval()
        tiny_vit.blocks[1]._forward_hooks.clear()  # even a removed hook comes back
        for b in tiny_vit.blocks:
            b.attn.fused_attn = True
            b.mlp.fused_attn = True  # a module without the flag must not keep one
            b.register_forward_hook(lambda m, a, out: None)
            b.attn.register_forward_pre_hook(lambda m, a: None)
        if raises:
            raise RuntimeError("the body failed")
    assert _state(tiny_vit) == before
    tiny_vit(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 17, 24)]  # the user's hook still runs, once


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


# --- what may go into the model ------------------------------------------------------------


def test_hooks_check_the_input_and_record_the_grid(tiny_vit):
    x = torch.randn(2, 3, 32, 32).clamp(-3, 3)
    with hooks(tiny_vit, layers=[-1]) as cap:
        assert cap.grid == (0, 0)
        tiny_vit(x)
        assert cap.grid == (4, 4)
        with pytest.raises(ValueError, match="images given to model"):
            tiny_vit(x * 255)
        with pytest.raises(TypeError, match="uint8"):
            tiny_vit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert not any(m._forward_pre_hooks for m in tiny_vit.modules())


@pytest.mark.gpu
def test_float_images_are_moved_to_the_models_device(tiny_vit):
    x = torch.randn(2, 3, 32, 32).clamp(-3, 3)  # on the CPU, as uint8 images may be too
    cap = capture(tiny_vit.cuda(), x)
    assert cap.logits.device.type == "cuda"
    torch.testing.assert_close(cap.logits.cpu(), capture(tiny_vit.cpu(), x).logits, rtol=1e-3, atol=1e-3)


# --- mean attention distance, checked by brute force (also in test_distance) ---------------------


def _brute_distance(attn, rows, cols, patch, prefix, renormalize=True):
    """Per head, the attention-weighted distance between patch centres, by explicit loops."""
    b, h = attn.shape[:2]
    n = rows * cols
    out = torch.zeros(h, dtype=torch.float64)
    for head in range(h):
        for s in range(b):
            for q in range(n):
                weights = attn[s, head, prefix + q, prefix:].double()
                total = float(weights.sum()) if renormalize else 1.0
                qy, qx = (q // cols + 0.5) * patch, (q % cols + 0.5) * patch
                for k in range(n):
                    ky, kx = (k // cols + 0.5) * patch, (k % cols + 0.5) * patch
                    out[head] += float(weights[k]) / total * math.hypot(qy - ky, qx - kx)
    return out / (b * n)


# --- rollout over a Capture's maps ----------------------------------------------------------


def test_attention_rollout_takes_a_captures_attention_mapping(tiny_vit):
    x = torch.randn(2, 3, 32, 32).clamp(-3, 3)
    cap = capture(tiny_vit, x)
    for fusion, discard in (("mean", 0.0), ("max", 0.5)):
        as_list = attention_maps.attention_rollout([cap.attn[0], cap.attn[1]], 1, fusion, discard)
        torch.testing.assert_close(attention_maps.attention_rollout(cap.attn, 1, fusion, discard), as_list, rtol=0, atol=0)
    last = capture(tiny_vit, x, layers=[-1])
    torch.testing.assert_close(attention_maps.attention_rollout(last.attn), attention_maps.attention_rollout([cap.attn[1]]))


# --- hybrid ViTs: the grid is the backbone's feature map ---------------------------------------


def _timm_hybrid(name: str, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


@pytest.mark.parametrize("name, kw, grid, pixels", [
    ("vit_tiny_r_s16_p8_224", dict(img_size=128, depth=2), (4, 4), (32, 32)),  # stem stride 4 x 8x8 patches
    ("vit_base_r50_s16_224", dict(img_size=64, depth=1, embed_dim=48, num_heads=2), (4, 4), (16, 16)),
])
def test_capture_on_timm_hybrids_matches_attention_recomputed_from_the_blocks_inputs(name, kw, grid, pixels):
    model = _timm_hybrid(name, **kw)
    size = kw["img_size"]
    x = torch.randn(2, 3, size, size).clamp(-3, 3)
    with torch.no_grad():  # the backbone's own map, measured: the stride is the image over the map
        fmap = model.patch_embed.backbone(x)
    stride = size // fmap.shape[-1]
    patch = model.patch_embed.patch_size
    assert (stride * patch[0], stride * patch[1]) == pixels
    cap = capture(model, x)
    assert (cap.grid, cap.patch_size, cap.num_prefix_tokens) == (grid, pixels, 1)
    manual = _manual_attention(model, x)
    for i in manual:
        torch.testing.assert_close(cap.attn[i], manual[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attention_distance(cap, i).double(),
                                   _brute_distance(cap.attn[i], *grid, pixels[0], 1, renormalize=False),
                                   rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(cap.logits, model(x), rtol=0, atol=1e-5)
    centres = [((r + 0.5) * pixels[0], (c + 0.5) * pixels[1]) for r in range(grid[0]) for c in range(grid[1])]
    n = len(centres)
    pairs = sum(math.dist(a, b) for a in centres for b in centres) / n**2
    assert uniform_distance(model) == pytest.approx(pairs * n / (n + 1), rel=1e-9)


def test_the_zoo_hybrid_takes_non_square_inputs_on_its_8x8_grid_of_4_pixel_tokens():
    torch.manual_seed(0)
    model = vitlab.models.build_model({"zoo": "hybrid_micro_c10"}).eval()  # stride 8: a 4x4 grid at 32x32
    cap = capture(model, torch.randn(2, 3, 32, 48).clamp(-3, 3))
    assert (cap.grid, cap.patch_size) == ((4, 6), (8, 8))
    assert cap.attn[0].shape == (2, 2, 25, 25)
    torch.testing.assert_close(attention_distance(cap, 0).double(),
                               _brute_distance(cap.attn[0], 4, 6, 8, 1, renormalize=False), rtol=1e-5, atol=1e-4)
    tiny = vitlab.models.build_model({"zoo": "hybrid_tiny_c10"}).eval()
    cap = capture(tiny, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert (cap.grid, cap.patch_size, len(cap.attn)) == ((8, 8), (4, 4), 5)


def test_a_16_bit_model_captures_uint8_images_as_the_fp32_model_does(half_micro):
    m = half_micro
    got, expected = capture(m.half, m.images), capture(m.fp32, m.images)
    assert got.logits.dtype == m.dtype
    m.close(got.logits, expected.logits)
    for layer in expected.attn:
        m.close(got.attn[layer], expected.attn[layer])
        m.close(got.tokens[layer], expected.tokens[layer])
