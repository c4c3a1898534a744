import dataclasses
import json
import re

import pytest
import timm
import torch

import vitlab
from vitlab import models
from vitlab.models import architectures


def _logits(model, seed=0):
    size = timm.data.resolve_model_data_config(model)["input_size"][1:]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", list(architectures.ARCHITECTURES))
def test_architectures_build_with_cifar_preprocessing(name):
    model = vitlab.load_model(name, device="cpu")
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == vitlab.data.MEAN and cfg["std"] == vitlab.data.STD
    assert _logits(model).shape == (2, 10)
    if architectures.ARCHITECTURES[name].family == "vit":
        patch = architectures.ARCHITECTURES[name].patch_size
        assert tuple(model.patch_embed.grid_size) == (32 // patch,) * 2 and model.patch_embed.patch_size == (patch, patch)
    if architectures.ARCHITECTURES[name].family == "hybrid":  # the CNN's map, measured, is the grid of 1x1 patches
        stride = architectures.ARCHITECTURES[name].stride
        with torch.no_grad():
            fmap = model.patch_embed.backbone(torch.zeros(1, 3, 32, 32))
        assert fmap.shape[-2:] == (32 // stride,) * 2 == tuple(model.patch_embed.grid_size)
        assert model.patch_embed.patch_size == (1, 1) and model.patch_embed.proj.kernel_size == (1, 1)


def test_the_tiny_hybrid_sits_between_the_tiny_resnet_and_vit_in_parameters_on_the_vits_grid():
    count = {n: sum(p.numel() for p in models.build_model({"zoo": n}).parameters())
             for n in ("resnet_tiny_c10", "hybrid_tiny_c10", "vit_tiny_c10")}
    assert count["resnet_tiny_c10"] < count["hybrid_tiny_c10"] < count["vit_tiny_c10"]
    assert 700_000 <= count["hybrid_tiny_c10"] <= 810_000
    hybrid, vit = models.build_model({"zoo": "hybrid_tiny_c10"}), models.build_model({"zoo": "vit_tiny_c10"})
    assert hybrid.patch_embed.grid_size == vit.patch_embed.grid_size == (8, 8)
    assert (hybrid.embed_dim, hybrid.blocks[0].attn.num_heads) == (vit.embed_dim, vit.blocks[0].attn.num_heads)


@pytest.mark.parametrize("name", list(architectures.ARCHITECTURES))
def test_a_stored_architecture_record_rebuilds_the_same_architecture(name):
    """Sidecars store the fields as JSON (tuples become lists); reading them back gives the registry's entry."""
    stored = json.loads(json.dumps(dataclasses.asdict(architectures.ARCHITECTURES[name])))
    assert architectures.architecture(name, stored) == architectures.ARCHITECTURES[name]
    assert architectures.architecture(name) is architectures.ARCHITECTURES[name]


def test_models_package_offers_the_architectures():
    assert models.ARCHITECTURES is architectures.ARCHITECTURES


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_every_architecture_is_within_the_limits_and_builds_on_the_meta_device(name):
    fields = dataclasses.asdict(models.ARCHITECTURES[name])
    architectures.check_arguments(fields)  # the limits refuse no architecture vitlab ships
    with torch.device("meta"):
        skeleton = models.build_model({"zoo": name, "config": fields})
    real = models.build_model({"zoo": name})
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert all(p.is_meta for p in skeleton.parameters())


@pytest.mark.parametrize("changes, field", [
    (dict(embed_dim=8193), "'embed_dim' must be a whole number in 1..8192"),
    (dict(channels=[8, 0]), "'channels' must be a list of whole numbers in 1..8192"),
    (dict(img_size=[32, 5000]), "'img_size' must be a whole number in 1..4096"),
    (dict(mlp_ratio=0), "'mlp_ratio' must be a number above 0"),
    (dict(patch_size=64, img_size=32), "'patch_size' (64) must be at most field 'img_size' (32)"),
])
def test_check_arguments_names_the_field_out_of_bounds(changes, field):
    with pytest.raises(ValueError, match=re.escape(f"field {field}")):
        architectures.check_arguments({"embed_dim": 32, "num_heads": 2, **changes})
    assert architectures.check_arguments(dict(embed_dim=8192, depth=256, img_size=[32, 4096], mlp_ratio=64)) is None
