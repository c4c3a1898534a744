import numpy as np
import pytest
import torch

from vitlab import metrics, models, widgets


@pytest.fixture
def two_models(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = models.build_model({"zoo": "vit_tiny_c10"})
        paths.append(str(models.save_model(model, tmp_path / f"m{seed}.safetensors")))
    return paths


def test_explorer_updates_figures_in_place(two_models):
    view = widgets.position_embedding_explorer(two_models)
    mosaic, detail = view.mosaic, view.detail
    before = np.array(mosaic.data[0].z, dtype=float)
    view.model.value = two_models[1]
    after = np.array(view.mosaic.data[0].z, dtype=float)
    assert view.mosaic is mosaic and view.detail is detail  # same widgets, new data
    expected = metrics.position_similarity(models.load_model(two_models[1], device="cpu"))
    assert after[0, 0] == pytest.approx(float(expected[0, 0, 0, 0]), abs=1e-6)
    assert not np.allclose(before, after, equal_nan=True)
    assert mosaic.layout.title.text == two_models[1] and view.status.value == ""


def test_explorer_click_shows_that_patch(two_models):
    view = widgets.position_embedding_explorer(two_models)

    class Points:  # what plotly passes to a click handler
        xs, ys = [9 * 2 + 3], [9 * 5 + 1]  # tile (row 5, col 2) of an 8x8 mosaic

    view._on_click(view.mosaic.data[0], Points(), None)
    np.testing.assert_allclose(np.asarray(view.detail.data[0].z), view.sim[5, 2].numpy())
    assert view.detail.layout.title.text == "Patch (row 6, col 3)"


def test_explorer_shows_load_errors_without_losing_the_figure(two_models):
    view = widgets.position_embedding_explorer([*two_models, "resnet_tiny_c10"])
    z = np.array(view.mosaic.data[0].z, dtype=float)
    view.model.value = "resnet_tiny_c10"
    assert "no learned position embeddings" in view.status.value
    np.testing.assert_array_equal(np.array(view.mosaic.data[0].z, dtype=float), z)
