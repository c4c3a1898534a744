import pytest
import timm
import torch

from vitlab import data


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache; real-CIFAR tests opt back into the shared one."""
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_vit():
    """A random-weight 2-block timm ViT on 32x32 inputs with 8-pixel patches (4x4 grid)."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24, depth=2,
        num_heads=3, num_classes=5,
    ).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    return model


def cifar_available() -> bool:
    return data.find_cifar10() is not None


needs_cifar = pytest.mark.skipif(not cifar_available(), reason="no CIFAR-10 copy found (set VITLAB_DATA)")
