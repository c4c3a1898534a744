"""Attribution maps (vitlab.analysis.saliency) against independent computations on tiny models: attention, rollout,
gradient-weighted rollout and attention x gradient by explicit per-layer, per-head loops; occlusion by hand-made masked
forwards; integrated gradients' completeness; Grad-CAM from layer4's activations and gradients; the model untouched."""
import pytest
import torch
import torch.nn.functional as F

from vitlab.analysis import saliency as sal
from vitlab.analysis.attention_maps import attention_rollout
from vitlab.models import build_model, preprocess


@pytest.fixture
def images():
    return torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(3)
    return build_model({"zoo": "resnet_micro_c10"}).eval()


def _by_hand(model, x):
    """The tiny ViT's logits with every head's attention computed by hand from the qkv weights: (logits, attention
    per layer as a list of per-head (B, N, N) tensors, all in the autograd graph)."""
    t = model._pos_embed(model.patch_embed(x))  # (B, N, D) class token first
    attns = []
    for block in model.blocks:
        h = block.norm1(t)
        heads, dim = block.attn.num_heads, block.attn.head_dim
        qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)  # (B, N, 3 D)
        outs, per_head = [], []
        for i in range(heads):
            q = qkv[..., i * dim : (i + 1) * dim]
            k = qkv[..., heads * dim + i * dim : heads * dim + (i + 1) * dim]
            v = qkv[..., 2 * heads * dim + i * dim : 2 * heads * dim + (i + 1) * dim]
            a = torch.softmax(q @ k.transpose(1, 2) / dim ** 0.5, dim=-1)  # (B, N, N)
            per_head.append(a)
            outs.append(a @ v)
        attns.append(per_head)
        t = t + block.attn.proj(torch.cat(outs, -1))
        t = t + block.mlp(block.norm2(t))
    return model.head(model.norm(t)[:, 0]), attns


def _hand_grads(model, images, targets):
    x = preprocess(model, images).requires_grad_(True)
    logits, attns = _by_hand(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)  # the loop is the model
    flat = [a for layer in attns for a in layer]
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), flat)
    heads = len(attns[0])
    grads = [list(grads[i * heads : (i + 1) * heads]) for i in range(len(attns))]
    return [[a.detach() for a in layer] for layer in attns], grads


def test_grad_rollout_matches_explicit_loops(tiny_vit, images):
    targets = torch.tensor([0, 3, 4])
    attns, grads = _hand_grads(tiny_vit, images, targets)
    n = attns[0][0].shape[-1]
    expected = torch.zeros(len(images), n - 1, dtype=torch.float64)
    for b in range(len(images)):
        relevance = torch.eye(n, dtype=torch.float64)
        for layer, layer_grads in zip(attns, grads):
            mean = sum((g[b].double() * a[b].double()).clamp(min=0) for a, g in zip(layer, layer_grads)) / len(layer)
            relevance = relevance + mean @ relevance
        expected[b] = relevance[0, 1:]
    got = sal.saliency(tiny_vit, images, "grad_rollout", targets)
    torch.testing.assert_close(got.double(), expected.reshape(len(images), 4, 4), rtol=1e-4, atol=1e-6)


def test_attention_methods_match_a_direct_computation(tiny_vit, images):
    targets = torch.tensor([1, 1, 2])
    attns, grads = _hand_grads(tiny_vit, images, targets)
    last, last_grads = attns[-1], grads[-1]
    attention = torch.stack([sum(a[b, 0, 1:] for a in last) / len(last) for b in range(len(images))])
    attn_grad = torch.stack([sum((a[b, 0, 1:] * g[b, 0, 1:]).clamp(min=0) for a, g in zip(last, last_grads)) / len(last)
                             for b in range(len(images))])
    rollout = attention_rollout([torch.stack(layer, 1) for layer in attns], 1)
    for method, expected in (("attention", attention), ("attn_grad", attn_grad), ("rollout", rollout)):
        got = sal.saliency(tiny_vit, images, method, targets)
        torch.testing.assert_close(got, expected.reshape(len(images), 4, 4).float(), rtol=1e-4, atol=1e-6,
                                   msg=method)


def test_targets_default_to_the_prediction(tiny_vit, images):
    predicted = tiny_vit(preprocess(tiny_vit, images)).argmax(-1)
    default = sal.saliency(tiny_vit, images, "attn_grad")
    torch.testing.assert_close(default, sal.saliency(tiny_vit, images, "attn_grad", predicted))
    other = sal.saliency(tiny_vit, images, "attn_grad", (predicted + 1) % 5)
    assert not torch.allclose(default, other)


def test_occlusion_is_the_logit_drop_of_hand_masked_forwards(tiny_vit, images):
    cfg = tiny_vit.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    fill = (mean - mean) / torch.tensor(cfg["std"]).view(3, 1, 1)  # the dataset mean, normalised
    x = preprocess(tiny_vit, images)
    targets = torch.tensor([2, 0, 1])
    expected = torch.zeros(len(images), 4, 4)
    with torch.no_grad():
        full = tiny_vit(x).gather(1, targets[:, None])[:, 0]
        for r in range(4):
            for c in range(4):
                masked = x.clone()
                masked[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = fill
                expected[:, r, c] = full - tiny_vit(masked).gather(1, targets[:, None])[:, 0]
    got = sal.saliency(tiny_vit, images, "occlusion", targets)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, dtype", [("vit", torch.float32), ("vit", torch.float64), ("resnet", torch.float32)])
def test_integrated_gradients_are_complete(arch, dtype, tiny_vit, resnet, images):
    model = tiny_vit if arch == "vit" else resnet
    result = sal.maps_analysis(model, images, ["integrated_gradients"], ig_dtype=dtype)
    x = preprocess(model, images).double()
    model64 = build_model(model.vitlab_arch) if hasattr(model, "vitlab_arch") else None
    if model64 is None:  # the conftest ViT has no record: copy its weights into a twin
        import copy
        model64 = copy.deepcopy(model)
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    with torch.no_grad():
        gap = (model64(x) - model64(torch.zeros_like(x))).gather(1, result.targets[:, None])[:, 0]  # mean image is 0
    sums = result.maps["integrated_gradients"].double().sum((1, 2))
    assert ((sums - gap).abs() <= 0.01 * gap.abs()).all(), (sums, gap)
    assert 0 <= result.ig_delta < 0.01
    torch.testing.assert_close(result.pixels["integrated_gradients"].sum((1, 2)), sums.float())
    assert next(model.parameters()).dtype == torch.float32  # the user's model was never cast


def test_input_x_gradient_matches_autograd(tiny_vit, images):
    targets = torch.tensor([4, 0, 2])
    x = preprocess(tiny_vit, images).requires_grad_(True)
    (grad,) = torch.autograd.grad(tiny_vit(x).gather(1, targets[:, None]).sum(), x)
    pixels = (x * grad).detach().sum(1)  # (B, 32, 32)
    expected = pixels.reshape(3, 4, 8, 4, 8).sum((2, 4))
    torch.testing.assert_close(sal.saliency(tiny_vit, images, "input_x_gradient", targets), expected,
                               rtol=1e-4, atol=1e-5)


def test_random_is_seeded_uniform_on_the_grid(tiny_vit, images):
    a = sal.saliency(tiny_vit, images, "random", seed=3)
    assert a.shape == (3, 4, 4) and 0 <= float(a.min()) and float(a.max()) < 1
    torch.testing.assert_close(a, sal.saliency(tiny_vit, images, "random", seed=3, batch_size=1))
    assert not torch.equal(a, sal.saliency(tiny_vit, images, "random", seed=4))


def test_grad_cam_matches_layer4_activations_and_gradients(resnet, images):
    targets = torch.tensor([7, 2, 9])
    x = preprocess(resnet, images)
    kept = []
    handle = resnet.layer4.register_forward_hook(lambda _m, _a, out: kept.append(out))
    try:
        logits = resnet(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), kept[0])  # (B, C, h, w)
    cam = (grad.mean((2, 3), keepdim=True) * kept[0]).sum(1, keepdim=True).clamp(min=0).detach()
    up = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    result = sal.maps_analysis(resnet, images, ["grad_cam"], targets)
    torch.testing.assert_close(result.pixels["grad_cam"], up, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.maps["grad_cam"], up.reshape(3, 8, 4, 8, 4).sum((2, 4)), rtol=1e-4, atol=1e-5)


def test_which_methods_apply(tiny_vit, resnet):
    assert [m for m in sal.METHODS if sal.applicable(resnet, m) is None] == [
        "random", "occlusion", "integrated_gradients", "input_x_gradient", "grad_cam"]
    assert [m for m in sal.METHODS if sal.applicable(tiny_vit, m) is None] == list(sal.METHODS[:-1])
    assert sal.applicable_methods(resnet) == ("random", "occlusion", "integrated_gradients", "input_x_gradient",
                                              "grad_cam")
    assert sal.applicable_methods(resnet, slow=False) == ("random", "input_x_gradient", "grad_cam")
    assert sal.applicable_methods(tiny_vit, slow=False) == ("random", "attention", "rollout", "grad_rollout",
                                                            "attn_grad", "input_x_gradient")
    assert sal.patch_grid(resnet) == (8, 8) and sal.patch_grid(tiny_vit) == (4, 4)
    torch.manual_seed(0)
    pooling = build_model({"timm": "vit_tiny_patch16_224", "kwargs": dict(img_size=32, patch_size=8, embed_dim=24,
                           depth=1, num_heads=2, num_classes=3, class_token=False, global_pool="avg")})
    assert "pools its patch tokens" in sal.applicable(pooling, "rollout")


def _state(model):
    hooks = sum(len(getattr(m, t)) for m in model.modules() for t in ("_forward_hooks", "_forward_pre_hooks",
                                                                        "_backward_hooks", "_backward_pre_hooks"))
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(m.training, getattr(m, "fused_attn", None)) for m in model.modules()],
            [(p.requires_grad, p.grad) for p in model.parameters()], hooks)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_the_model_is_untouched(arch, tiny_vit, resnet, images):
    model = tiny_vit if arch == "vit" else resnet
    model.train()  # a mode the methods must not leave changed
    model.patch_embed.proj.weight.requires_grad_(False) if arch == "vit" else model.fc.bias.requires_grad_(False)
    before = _state(model)
    result = sal.maps_analysis(model, images, batch_size=2)
    after = _state(model)
    assert set(result.maps) == {m for m in sal.METHODS if sal.applicable(model, m) is None}
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert all(g is None for _, g in after[2])  # no weight gradient left behind
