import pytest
import timm
import torch
from conftest import timm_intermediates

from vitlab.analysis.features import layer_features, layer_hooks, pool, pre_logits, representation_layers
from vitlab.models import build_model, preprocess


@pytest.fixture(params=["vit_micro_c10", "resnet_micro_c10"])
def micro(request):
    """A random-weight zoo micro model (2-block ViT or 4-stage ResNet), in eval mode."""
    torch.manual_seed(0)
    return build_model({"zoo": request.param}).eval()


def test_layer_features_match_timm_intermediates(micro):
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    feats = layer_features(micro, images, batch_size=3)
    outs = timm_intermediates(micro, images)
    layers = representation_layers(micro)
    assert len(layers) == len(outs) and feats.names == layers and feats.layers == list(range(len(layers)))
    for i, out in enumerate(outs):
        if out.ndim == 3:
            torch.testing.assert_close(feats["cls", i], out[:, 0])
            torch.testing.assert_close(feats["mean", i], out[:, 1:].mean(1))
        else:
            torch.testing.assert_close(feats["gap", i], out.mean((2, 3)))
    assert [layer for _, layer in feats] == sorted(layer for _, layer in feats)  # iterated in layer order
    assert micro.training is False
    micro.train()
    with layer_hooks(micro):
        pass
    assert micro.training and all(not m._forward_hooks for m in micro.modules())


def test_negative_layer_indices_equal_the_int_keys(micro):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    feats = layer_features(micro, images)
    depth = len(feats.names)
    for pooling, layer in feats:
        assert feats[pooling, layer - depth] is feats[pooling, layer]
        assert (pooling, layer - depth) in feats
    last = layer_features(micro, images, layers=[-1])
    assert last.layers == [depth - 1] and last.names == feats.names
    assert {p for p, _ in last} == {p for p, _ in feats}
    for pooling, _ in last:
        torch.testing.assert_close(last[pooling, -1], feats[pooling, depth - 1])
    with pytest.raises(KeyError, match="no"):
        last[pooling, 0]  # not computed
    with pytest.raises(KeyError, match="outside"):
        feats[pooling, depth]
    with pytest.raises(ValueError, match="out of range"):
        layer_features(micro, images, layers=[depth])


def test_layer_hooks_map_is_overwritten_by_each_forward(micro):
    a, b = (torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8) for _ in range(2))
    with torch.no_grad(), layer_hooks(micro, layers=[0, -1]) as outputs:
        micro(preprocess(micro, a))
        micro(preprocess(micro, b))
    expected = timm_intermediates(micro, b)
    assert list(outputs) == [0, len(expected) - 1]
    torch.testing.assert_close(outputs[-1], expected[-1])
    torch.testing.assert_close(outputs[0], expected[0])


def test_pre_logits_is_what_the_head_reads(micro):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    micro.train()  # pre_logits runs in eval mode and leaves the model's mode alone
    feats = pre_logits(micro, images, batch_size=2)
    assert micro.training
    micro.eval()
    with torch.no_grad():
        logits = micro(preprocess(micro, images))
    assert feats.shape == (5, micro.num_features) and feats.dtype == torch.float32
    torch.testing.assert_close(micro.get_classifier()(feats), logits, atol=1e-5, rtol=1e-5)
    last = timm_intermediates(micro, images)[-1]
    if last.ndim == 4:  # ResNet: the globally pooled last stage
        torch.testing.assert_close(feats, last.mean((2, 3)), atol=1e-5, rtol=1e-5)
    else:  # token-pooled ViT: the class token after the final norm (not the last block's raw output)
        torch.testing.assert_close(feats, micro.norm(last)[:, 0], atol=1e-5, rtol=1e-5)


def test_pre_logits_of_a_mean_pooled_timm_vit_is_the_normed_mean_patch_token():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                              depth=2, num_heads=3, num_classes=5, global_pool="avg").eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        tokens = model.forward_features(preprocess(model, images))  # (B, 1 + patches, D)
        expected = model.fc_norm(tokens[:, 1:].mean(1))
    torch.testing.assert_close(pre_logits(model, images), expected)


def test_pool_shapes_and_errors():
    tokens = torch.randn(2, 5, 3)
    pooled = pool(tokens, num_prefix_tokens=1)
    assert list(pooled) == ["cls", "mean"]
    torch.testing.assert_close(pooled["mean"], tokens[:, 1:].sum(1) / 4)
    assert list(pool(tokens, 0)) == ["mean"]
    torch.testing.assert_close(pool(torch.ones(2, 3, 4, 4), 0)["gap"], torch.ones(2, 3))
    with pytest.raises(ValueError, match="cannot pool"):
        pool(torch.randn(2, 3), 0)
    with pytest.raises(ValueError, match="feature_info"):
        representation_layers(torch.nn.Linear(2, 2))


def test_a_16_bit_model_gives_the_fp32_models_features_of_uint8_images(half_micro):
    m = half_micro
    got, expected = layer_features(m.half, m.images, batch_size=4), layer_features(m.fp32, m.images, batch_size=4)
    assert list(got) == list(expected)
    for key in expected:
        m.close(got[key], expected[key])
    m.close(pre_logits(m.half, m.images, batch_size=4), pre_logits(m.fp32, m.images, batch_size=4))
