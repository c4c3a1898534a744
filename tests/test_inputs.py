"""The input checks: their threshold both ways, and every shipped preprocessing passing them."""
import pytest
import timm
import torch

import vitlab
from vitlab.analysis.capture import capture
from vitlab.analysis.distance import head_statistics
from vitlab.models.inputs import PIXEL_SLACK, check_input
from vitlab.models import build_model
from vitlab.models.weights import GOOGLE_VIT_CFG


def test_normalised_range_threshold_both_ways(tiny_vit):
    mean = torch.tensor(tiny_vit.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(tiny_vit.pretrained_cfg["std"]).view(1, 3, 1, 1)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    normalised = (images / 255.0 - mean) / std  # by hand, as preprocess would
    capture(tiny_vit, normalised)  # a genuinely normalised batch passes
    top = (1 + PIXEL_SLACK - mean) / std  # (1, 3, 1, 1): the highest value allowed per channel
    bottom = (-PIXEL_SLACK - mean) / std
    for edge, step in ((top, 1), (bottom, -1)):
        inside, outside = normalised.clone(), normalised.clone()
        inside[0, :, 0, 0] = (edge - step * 0.01).flatten()
        outside[1, 2, 3, 4] = float(edge.flatten()[2]) + step * 0.01
        capture(tiny_vit, inside)
        with pytest.raises(ValueError, match="far outside the model's normalised range"):
            capture(tiny_vit, outside)
    with pytest.raises(ValueError, match=r"vitlab\.preprocess\(model, images\)"):
        capture(tiny_vit, images.float())  # 0..255 floats
    with pytest.raises(ValueError, match="far outside"):
        head_statistics(tiny_vit, images.float(), batch_size=1)


def _vit_configs():
    """Every zoo ViT architecture as published (random weights, its own pretrained_cfg), the shipped
    ones as loaded, a Google-checkpoint ViT and timm's ImageNet-default ViT."""
    entries = [e for e in vitlab.training.zoo.ENTRIES.values() if e.family == "vit"]
    zoo = [build_model({"zoo": arch}) for arch in dict.fromkeys(e.architecture for e in entries)]
    zoo += [vitlab.load_model(e.name, device="cpu") for e in entries if e.shipped]
    google = build_model({"google_vit": dict(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2,
                                             num_classes=10)})
    assert google.pretrained_cfg["mean"] == GOOGLE_VIT_CFG["mean"]
    imagenet = build_model({"timm": "deit_tiny_patch16_224", "kwargs": dict(img_size=32, depth=1)})
    assert imagenet.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    return [*zoo, google, imagenet]


def test_preprocessed_images_pass_for_every_vit_config():
    size = 32
    extremes = torch.stack([torch.zeros(3, size, size), torch.full((3, size, size), 255.0),
                            (torch.arange(size * size).view(1, size, size) % 2 * 255).expand(3, -1, -1)])
    for model in _vit_configs():
        model.eval()
        images = torch.cat([extremes, torch.randint(0, 256, (2, 3, size, size)).float()]).to(torch.uint8)
        x = vitlab.preprocess(model, images)  # the values a real normalised input can take, extremes included
        check_input(model, x)
        capture(model, x, layers=[0])
        with pytest.raises(ValueError, match="far outside"):
            capture(model, vitlab.data.resize(images, x.shape[-2:]).float(), layers=[0])


def test_preprocess_gives_a_16_bit_model_its_own_dtype(half_micro):
    m = half_micro
    x = vitlab.preprocess(m.half, m.images)
    assert x.dtype == m.dtype
    torch.testing.assert_close(x, vitlab.preprocess(m.fp32, m.images).to(m.dtype), rtol=0, atol=0)
    check_input(m.half, x)  # what capture and the feature hooks check before a forward
