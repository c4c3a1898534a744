"""Your own model and images in the explorers of notebooks 01-04: model objects of every token layout timm has, names
typed into the model box, weights files, uploads and folders; each figure checked against the analysis run here on
the same model and images."""
from __future__ import annotations

import datetime
import html
import json

import numpy as np
import plotly
import pytest
import timm
import torch
from torch import nn

from vitlab import data, models
from vitlab.analysis import attention_maps, metrics
from vitlab.analysis.capture import capture
from vitlab.analysis.distance import head_statistics
from vitlab.views import controls, explorers

KINDS = data.SAMPLES_DIR / "kinds"
NOW = datetime.datetime.now(datetime.timezone.utc)
SMALL = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5)


def _timm(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **dict(SMALL, **kw)).eval()


#: The token layouts of timm ViTs: class token, global pooling without one, registers, a distillation token, a
#: non-square grid (hybrids: tests/test_explorers.py).
LAYOUTS = {
    "class token": lambda: _timm("vit_tiny_patch16_224"),
    "pooled": lambda: _timm("vit_tiny_patch16_224", class_token=False, global_pool="avg"),
    "registers": lambda: _timm("vit_tiny_patch16_224", reg_tokens=2),
    "distilled": lambda: _timm("deit_tiny_distilled_patch16_224"),
    "non-square": lambda: _timm("vit_tiny_patch16_224", img_size=(32, 48)),
}


def _json(value) -> str:
    return json.dumps(value, cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)


def _head(fig, h):
    return next(t for t in fig.data if t.name == f"head {h + 1}")


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_explorers_take_a_model_object_of_every_token_layout(layout, images):
    model = LAYOUTS[layout]()
    positions = explorers.PositionEmbeddingExplorer(["vit_tiny_c10"], model=model)
    size = tuple(model.patch_embed.img_size)  # what it was built for (timm's cfg keeps its default's 224)
    assert tuple(model.pretrained_cfg["input_size"][1:]) == size  # the explorer said so, as load_model does
    cap = capture(model, data.resize(images[:1], size))
    rows, cols = cap.grid
    assert positions.model.value.model is model and positions.result.sim.shape == (rows, cols, rows, cols)
    torch.testing.assert_close(positions.result.sim, metrics.position_similarity(model))
    assert str(positions.model.value) in positions.mosaic.layout.title.text
    maps = explorers.AttentionMapsExplorer(["vit_tiny_c10"], images, ["a", "b", "c"], model=model)
    pool = "avg" if not cap.class_token or cap.pool == "avg" else "token"
    rollout = attention_maps.attention_rollout(list(cap.attn.values()), cap.num_prefix_tokens, pool=pool)[0]
    np.testing.assert_allclose(np.asarray(maps.rollout.data[-1].z), rollout.reshape(rows, cols).numpy(), rtol=1e-5)
    distance = explorers.AttentionDistanceExplorer(["vit_tiny_c10"], images, default=3, model=model)
    expected = head_statistics(model, data.resize(images, size))["distance"]
    np.testing.assert_allclose(_head(distance.figure, 0).y, expected[:, 0].numpy(), rtol=1e-5)
    filters = explorers.EmbeddingFiltersExplorer(["vit_tiny_c10"], k=4, model=model)
    torch.testing.assert_close(filters.result.filters, metrics.embedding_filters(model, k=4)[0])
    assert "no random-init reference" in positions.status.value  # timm's own models cannot be rebuilt


def test_filters_of_a_hybrid_do_not_apply_and_the_status_line_says_so():
    view = explorers.EmbeddingFiltersExplorer(["vit_micro_c10"], k=4)
    shown = view.result
    view.show_model(models.build_model({"zoo": "hybrid_tiny_c10"}))
    assert "a hybrid has no patch-embedding filters to show" in view.status.value
    assert view.model.value == "vit_micro_c10" and view.result is shown  # the menu names the model drawn


def test_a_model_object_that_is_not_a_vit_is_refused_in_the_status_line():
    view = explorers.PositionEmbeddingExplorer(["vit_micro_c10"], model=nn.Linear(2, 2))
    assert "not a ViT, hybrid or ResNet" in view.status.value and "\n" not in view.status.value
    assert view.model.value == "vit_micro_c10" and view.result is not None  # the default model is shown


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-vitlab-test-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-vitlab-test-cache")


def test_a_typed_timm_name_without_weights_offers_random_weights(offline, monkeypatch):
    monkeypatch.setattr(explorers.PositionEmbeddingExplorer, "SEEDS", (0,))
    view = explorers.PositionEmbeddingExplorer(["vit_micro_c10"])
    shown = view.mosaic.data[0].z
    view.typed.value = "test_vit"  # timm's smallest ViT: it has pretrained weights (r160_in1k), not cached here
    assert "test_vit: its pretrained weights are not cached here" in view.status.value
    assert view.model.value == "vit_micro_c10" == view.shown  # back on the model the figure shows
    assert "test_vit" not in [v for _, v in view.model.options]
    assert view.mosaic.data[0].z == shown and view.offer.layout.display == ""
    view.offer.click()
    assert view.model.value == controls.RandomWeights("test_vit")
    expected = metrics.position_similarity(timm.create_model("test_vit", pretrained=False))
    assert view.result.sim.shape == expected.shape == (10, 10, 10, 10)
    assert "random weights" in view.status.value and view.offer.layout.display == "none"


def test_a_typed_unknown_name_is_one_line_and_a_typed_file_loads(tmp_path):
    view = explorers.PositionEmbeddingExplorer(["vit_micro_c10"])
    view.typed.value = "vit_tiny_patch16_2244"
    assert "is not a zoo or timm model name" in view.status.value or "neither a file" in view.status.value
    assert "Did you mean" in view.status.value and view.model.value == "vit_micro_c10"
    torch.manual_seed(3)
    path = models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp_path / "mine.safetensors")
    view.typed.value = str(path)
    assert view.model.value == str(path) == view.shown
    torch.testing.assert_close(view.result.sim, metrics.position_similarity(models.load_model(path, device="cpu")))


def test_uploads_and_folders_are_read_as_the_model_evaluates_them(images):
    model = _timm("vit_tiny_patch16_224")
    view = explorers.AttentionMapsExplorer(["vit_tiny_c10"], images, ["a", "b", "c"], model=model)
    files = sorted(KINDS.iterdir())
    view.upload.value = [{"name": f.name, "content": memoryview(f.read_bytes()), "type": "", "size": 0,
                          "last_modified": NOW} for f in files]
    assert [label for label, _ in view.image.options] == [f.name for f in files]
    view.image.value = 4  # the 320x240 photo: short side resized, centre cropped, not squashed
    expected = data.images(files, model)[0][4]
    assert torch.equal(view.result.image, expected)
    assert "far from the 32 px images this model takes" in view.status.value  # photos shown to a 32 px model
    assert "your 5 uploaded images" in view.readout.value
    view.upload.value = [{"name": "notes.txt", "content": memoryview(b"not an image"), "type": "", "size": 0,
                          "last_modified": NOW}]
    assert "notes.txt" in view.status.value and len(view.image.options) == 5  # the images shown stay
    folder = explorers.AttentionDistanceExplorer(["vit_tiny_c10"], KINDS, model=model)
    expected = head_statistics(model, data.images(KINDS, model)[0])["distance"]
    np.testing.assert_allclose(_head(folder.figure, 0).y, expected[:, 0].numpy(), rtol=1e-5)
    assert "5 of the 5 images given" in folder.figure.layout.title.text


def test_a_cifar_reference_is_not_drawn_beside_a_model_of_another_input_size(images):
    model = _timm("vit_tiny_patch16_224", img_size=64)
    view = explorers.AttentionDistanceExplorer(["vit_tiny_c10"], images, default=3, reference="resnet_tiny_c10",
                                               model=model)
    assert "resnet_tiny_c10's receptive fields are not drawn: it takes 32 px images, this model 64 px" in \
        html.unescape(view.status.value)
    assert not any("receptive field" in (t.name or "") for t in view.figure.data)


def test_figures_keep_the_state_a_reloaded_page_draws_from(images):
    view = explorers.PositionEmbeddingExplorer(["vit_tiny_c10"], model=_timm("vit_tiny_patch16_224"))
    view.model.value = "vit_tiny_c10"
    for plot in view.plots:  # what the page fetches on a reload, not the first (empty) display's
        assert plot._widget_data and _json(plot._widget_data) == _json(plot._data)
        assert _json(plot._widget_layout) == _json(plot._layout_obj._props)


def test_bad_images_are_one_line_in_the_status_line_and_the_default_images_shown(tmp_path):
    from PIL import Image

    empty, mixed = tmp_path / "empty", tmp_path / "mixed"
    empty.mkdir()
    mixed.mkdir()
    (mixed / "cat.jpg").write_bytes((data.SAMPLES_DIR / "cat.jpg").read_bytes())
    (mixed / "notes.txt").write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (10_000, 200), (200, 30, 30)).save(tmp_path / "wide.jpg")
    default = explorers.AttentionMapsExplorer(["vit_micro_c10"])
    for images, phrase in ((empty, "holds no image files"), (mixed, "notes.txt"), (tmp_path / "dot.png", "1x1")):
        view = explorers.AttentionMapsExplorer(["vit_micro_c10"], images=images)
        status = html.unescape(view.status.value)
        assert phrase in status and "showing the default images instead" in status and "\n" not in status
        assert view.names == default.names and view.result is not None
    wide = explorers.AttentionMapsExplorer(["vit_micro_c10"], images=[tmp_path / "wide.jpg"])
    assert wide.names == ["wide.jpg"] and tuple(wide.result.image.shape) == (3, 32, 32)  # shrunk, centre-cropped
    assert "far from the 32 px images" in wide.status.value
