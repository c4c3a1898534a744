import numpy as np
import pytest
import torch

from vitlab import metrics, models, widgets
from vitlab.capture import capture, head_statistics


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


def test_embedding_filters_explorer_follows_model_and_components(two_models):
    view = widgets.EmbeddingFiltersExplorer(two_models, k=5)
    before = np.asarray(view.filters.data[0].z).copy()
    view.components.value = 8
    assert len(view.variance.data[0].y) == 8
    view.model.value = two_models[1]
    assert not np.array_equal(before, np.asarray(view.filters.data[0].z))
    _, ratio = metrics.embedding_filters(models.load_model(two_models[1], device="cpu"), k=8)
    np.testing.assert_allclose(view.variance.data[0].y, ratio.numpy(), rtol=1e-5)


def test_attention_distance_explorer_streams_the_chosen_images(two_models):
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    view = widgets.AttentionDistanceExplorer(two_models, images, default=16, reference="resnet_tiny_c10")
    assert view.images.value == 16 and view.status.value == "16 images"
    expected = head_statistics(models.load_model(two_models[0], device="cpu"), images[:16])["distance"]
    for head in range(expected.shape[1]):
        np.testing.assert_allclose(view.figure.data[head].y, expected[:, head].numpy(), rtol=1e-5)
    assert view.figure.data[-1].name == "resnet_tiny_c10 receptive field"
    view.convention.value = "keep class-token share"
    view.compute()
    raw = head_statistics(models.load_model(two_models[0], device="cpu"), images[:16],
                                  renormalize=False)["distance"]
    np.testing.assert_allclose(view.figure.data[0].y, raw[:, 0].numpy(), rtol=1e-5)


def test_attention_maps_explorer_click_layer_and_discard(two_models):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    view = widgets.AttentionMapsExplorer(two_models, images, ["a", "b", "c"])
    view.select(2, 5)
    view.layer.value, view.head.value = 3, 1
    cap = capture(models.load_model(two_models[0], device="cpu"), images[:1])
    expected = cap.attn[2][0, 1, 1 + 2 * 8 + 5, 1:].reshape(8, 8)
    np.testing.assert_allclose(np.asarray(view.patch.data[1].z), expected.numpy(), rtol=1e-5)
    before = np.asarray(view.rollout.data[1].z).copy()
    view.discard.value = 0.5
    expected = metrics.attention_rollout(list(cap.attn.values()), 1, "mean", 0.5)[0].reshape(8, 8)
    np.testing.assert_allclose(np.asarray(view.rollout.data[1].z), expected.numpy(), rtol=1e-5)
    assert not np.allclose(before, expected.numpy())
    view.image.value = 2
    assert view.heads.layout.title.text.endswith(", c")


def test_training_monitor_appends_epochs():
    monitor = widgets.TrainingMonitor()
    monitor.update({"epoch": 1, "loss": 2.0, "train_accuracy": 0.2, "test_accuracy": 0.25})
    monitor.update({"epoch": 2, "loss": 1.0, "train_accuracy": 0.4, "test_accuracy": 0.45})
    assert list(monitor.figure.data[0].y) == [2.0, 1.0] and list(monitor.figure.data[2].x) == [1, 2]


def test_sweep_explorer_adds_runs_and_switches_axis():
    view = widgets.SweepExplorer([], title="live")
    assert len(view.figure.data) == 0
    record = dict(model="vit_micro_c10", family="vit", subset_size=200, seed=0, epochs=5, test_accuracy=0.3,
                  train_flops=2e12, wall_seconds=30.0)
    view.add(record)
    view.add(dict(record, model="resnet_micro_c10", family="resnet", test_accuracy=0.4, train_flops=5e12))
    assert [t.name for t in view.figure.data] == ["vit_micro_c10 (vit)", "resnet_micro_c10 (resnet)"]
    assert view.models.value == ("resnet_micro_c10", "vit_micro_c10")
    view.axis.value = "training FLOPs"
    assert list(view.figure.data[1].x) == [5e12] and "compute" in view.figure.layout.title.text
    view.models.value = ("vit_micro_c10",)
    assert [t.name for t in view.figure.data] == ["vit_micro_c10 (vit)"]
    assert list(view.table.data[0].cells.values[0]) == ["vit_micro_c10"]
    probed = widgets.SweepExplorer([dict(record, fewshot_10=0.25), dict(record, seed=1, fewshot_10=0.35)])
    assert probed.metric.options == (("test accuracy", "test_accuracy"), ("10-shot probe", "fewshot_10"))
    probed.metric.value = "fewshot_10"
    np.testing.assert_allclose(probed.figure.data[0].y, [0.3])
    assert probed.figure.layout.title.text.startswith("10-shot probe vs")


@pytest.fixture
def zoo_pair(tmp_path):
    paths = []
    for name in ("vit_micro_c10", "resnet_micro_c10"):
        torch.manual_seed(0)
        paths.append(str(models.save_model(models.build_model({"zoo": name}), tmp_path / f"{name}.safetensors")))
    return paths


def test_probe_explorer_shows_the_chosen_shots_and_layers(fake_cifar, zoo_pair):
    from vitlab.compare import fewshot_probes

    view = widgets.ProbeExplorer(zoo_pair, shots=(1, 5), seeds=(0,), test_size=50)
    assert [t.name for t in view.curve.data] == [f"{zoo_pair[0]} · blocks.1 · cls", f"{zoo_pair[0]} · blocks.1 · mean",
                                                 f"{zoo_pair[1]} · layer4 · gap"]  # last layers by default
    view.shots.value = 1
    expected = fewshot_probes(models.load_model(zoo_pair[1], device="cpu"), (1,), (0,), 50)
    resnet = next(t for t in view.depth.data if t.name.endswith("gap"))
    np.testing.assert_allclose(resnet.y, [r["accuracy"] for r in expected])
    view.models.value = (zoo_pair[1],)
    assert [t.name for t in view.depth.data] == [f"{zoo_pair[1]} · gap"]
    view.layers.value = ((zoo_pair[0], "blocks.0", "mean"),)
    assert [t.name for t in view.curve.data] == [f"{zoo_pair[0]} · blocks.0 · mean"]


def test_cka_explorer_computes_both_heatmaps_and_caches(zoo_pair):
    from vitlab.compare import cka_matrix

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    view = widgets.CKAExplorer(zoo_pair, images, batch_size=8)
    vit, resnet = (models.load_model(p, device="cpu") for p in zoo_pair)
    expected, names_v, names_r = cka_matrix(vit, resnet, images, batch_size=8)
    np.testing.assert_allclose(np.asarray(view.cross.data[0].z), expected.numpy(), rtol=1e-5)
    assert list(view.cross.data[0].x) == names_r and list(view.self_similarity.data[0].x) == names_v
    np.testing.assert_allclose(np.diag(np.asarray(view.self_similarity.data[0].z, dtype=float)), 1.0, rtol=1e-5)
    view.representation.value = "pooled"
    pooled = cka_matrix(vit, resnet, images, batch_size=8, representation="pooled")[0]
    np.testing.assert_allclose(np.asarray(view.cross.data[0].z), pooled.numpy(), rtol=1e-5)
    assert len(view._cache) == 4 and view.status.value == "16 images"
