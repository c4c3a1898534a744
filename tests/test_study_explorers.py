import numpy as np
import pytest
import torch

from vitlab import data, models
from vitlab.views import study_explorers
from vitlab.views import controls
from vitlab.records import ProbeRecord, RunRecord


def _run(**fields):
    base = dict(model="vit_micro_c10", family="vit", subset_size=200, seed=0, epochs=5, test_accuracy=0.3,
                train_flops=2e12, wall_seconds=30.0)
    return RunRecord(**{**base, **fields})


def test_sweep_explorer_adds_runs_and_switches_axis():
    view = study_explorers.SweepExplorer([], title="live")
    assert len(view.figure.data) == 0
    view.add(_run())
    view.add(_run(model="resnet_micro_c10", family="resnet", test_accuracy=0.4, train_flops=5e12))
    assert [t.name for t in view.figure.data] == ["vit_micro_c10 (vit)", "resnet_micro_c10 (resnet)"]
    assert view.models.value == ("resnet_micro_c10", "vit_micro_c10")
    view.axis.value = "training FLOPs"
    assert list(view.figure.data[1].x) == [5e12] and "compute" in view.figure.layout.title.text
    view.models.value = ("vit_micro_c10",)
    assert [t.name for t in view.figure.data] == ["vit_micro_c10 (vit)"]
    assert list(view.table.data[0].cells.values[0]) == ["vit_micro_c10"]
    assert list(view.table.data[0].cells.values[6]) == ["30\xa0s"]  # seconds, not "0.5" minutes
    # A run fine-tuned from pre-trained weights is a series of its own, chosen on its own.
    view.add(_run(init="mpp:enc", test_accuracy=0.5, images_seen_total=5000, train_flops_total=9e12))
    assert "vit_micro_c10 ← mpp:enc" in view.models.value
    assert {t.name: list(t.y) for t in view.figure.data} == {"vit_micro_c10 (vit)": [0.3],
                                                             "vit_micro_c10 ← mpp:enc (vit)": [0.5]}
    assert [t.marker.symbol for t in view.figure.data] == ["circle", "diamond"]
    assert [list(t.x) for t in view.figure.data] == [[2e12], [9e12]]  # the FLOPs axis counts pre-training
    view.models.value = ("vit_micro_c10 ← mpp:enc",)
    assert [t.replace("<br>", " ").replace("\xa0", " ") for t in view.table.data[0].cells.values[0]] == [
        "vit_micro_c10 ← mpp:enc"]
    probed = study_explorers.SweepExplorer([_run(fewshot={10: 0.25}), _run(seed=1, fewshot={10: 0.35})])
    assert probed.metric.options == (("test accuracy", "test"), ("10-shot probe", 10))
    probed.metric.value = 10
    np.testing.assert_allclose(probed.figure.data[0].y, [0.3])
    assert probed.figure.layout.title.text.startswith("10-shot probe vs")



def test_sweep_explorer_table_shows_the_y_axis_metric():
    """Switched to a probe, the table's accuracy column is the probe's, as the figure's y axis (notebook 05)."""
    runs = [_run(fewshot={10: 0.25}), _run(seed=1, fewshot={10: 0.45}), _run(model="resnet_micro_c10",
                                                                            family="resnet", test_accuracy=0.6)]
    view = study_explorers.SweepExplorer(runs)
    header, cells = view.table.data[0].header.values, view.table.data[0].cells.values
    assert header[4] == "test\xa0accuracy" and list(cells[4]) == ["60.0%", "30.0%\xa0±\xa00.0%"]
    view.metric.value = 10
    header, cells = view.table.data[0].header.values, view.table.data[0].cells.values
    assert header[4].replace("<br>", " ").replace("\xa0", " ") == "10-shot probe accuracy"
    mean, std = np.mean([0.25, 0.45]), np.std([0.25, 0.45], ddof=1)
    assert list(cells[0]) == ["vit_micro_c10"]  # the ResNet run has no probe, as in the figure
    assert cells[4][0].replace("\xa0", " ") == f"{mean:.1%} ± {std:.1%}"
    np.testing.assert_allclose(view.figure.data[0].y, [mean])
    view.metric.value = "test"
    assert view.table.data[0].cells.values[4][1].startswith("30.0%")


@pytest.fixture
def zoo_pair(tmp_path):
    paths = []
    for name in ("vit_micro_c10", "resnet_micro_c10"):
        torch.manual_seed(0)
        paths.append(str(models.save_model(models.build_model({"zoo": name}), tmp_path / f"{name}.safetensors")))
    return paths


def _split(test_size=50):
    train_x, train_y = data.cifar10("train")
    test_x, test_y = data.cifar10("test")
    test_idx = data.stratified_subset(test_y, test_size, 0)
    return train_x, train_y, test_x[test_idx], test_y[test_idx]


def _watch_progress(monkeypatch):
    """Record what a slow explorer shows while it computes: the early display and each step."""
    seen = {"shown": [], "steps": []}
    monkeypatch.setattr(controls, "_display_now", lambda widget: seen["shown"].append(widget))
    real_step = controls.Explorer.step

    def step(self, text, done, total):
        seen["steps"].append((text, done, total))
        real_step(self, text, done, total)

    monkeypatch.setattr(controls.Explorer, "step", step)
    return seen


def test_probe_explorer_shows_the_chosen_shots_and_layers(fake_cifar, zoo_pair, monkeypatch):
    from vitlab.analysis.representations import fewshot_probes

    split = _split()
    progress = _watch_progress(monkeypatch)
    view = study_explorers.ProbeExplorer(zoo_pair, *split, shots=(1, 5), seeds=(0,))
    assert len(progress["shown"]) == 1  # status and progress bar shown in the cell before the first compute
    assert [(done, total) for _, done, total in progress["steps"]] == [(0, 2), (1, 2)]
    assert zoo_pair[1] in progress["steps"][1][0]
    assert all(isinstance(r, ProbeRecord) for r in view.records)
    last = {m: max(r.depth for r in view.records if r.model == m) for m in zoo_pair}
    assert {r.layer for r in view.records if r.depth == last[r.model]} == {"blocks.1", "layer4"}
    label = {"blocks.1": "layer 2", "layer4": "stage 4"}  # the micro ViT's last block, the micro ResNet's last stage
    deepest = list(dict.fromkeys(f"{r.model} · {label[r.layer]} · {r.pooling}" for r in view.records
                                 if r.depth == last[r.model]))
    assert [t.name for t in view.curve.data] == deepest  # last layers by default
    view.shots.value = 1
    expected = fewshot_probes(models.load_model(zoo_pair[1], device="cpu"), *split, shots=(1,), seeds=(0,))
    resnet = next(t for t in view.depth.data if t.name.endswith("gap"))
    np.testing.assert_allclose(resnet.y, [r.accuracy for r in sorted(expected, key=lambda r: r.depth)
                                          if r.pooling == "gap"])
    view.models.value = (zoo_pair[1],)
    assert all(t.name.startswith(zoo_pair[1]) for t in view.depth.data)
    view.layers.value = ((zoo_pair[0], "blocks.0", "mean"),)
    assert [t.name for t in view.curve.data] == [f"{zoo_pair[0]} · layer 1 · mean"]  # blocks.0, numbered from 1
    assert view.status.value.startswith("probes scored on 50 CIFAR-10 test images, 5 per class")


def test_cka_explorer_computes_both_heatmaps_and_caches(zoo_pair, monkeypatch):
    from vitlab.analysis.representations import cka_matrix

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    progress = _watch_progress(monkeypatch)
    view = study_explorers.CKAExplorer(zoo_pair, images, batch_size=8)
    assert len(progress["shown"]) == 1 and [s[1:] for s in progress["steps"]] == [(0, 2), (1, 2)]
    vit, resnet = (models.load_model(p, device="cpu") for p in zoo_pair)
    expected, names_v, names_r = cka_matrix(vit, resnet, images, batch_size=8)
    np.testing.assert_allclose(np.asarray(view.cross.data[0].z), expected.numpy(), rtol=1e-5)
    assert names_r == ["act1", "layer1", "layer2", "layer3", "layer4"] and names_v == ["blocks.0", "blocks.1"]
    assert list(view.cross.data[0].x) == ["stem", "stage 1", "stage 2", "stage 3", "stage 4"]  # numbered from 1
    assert list(view.self_similarity.data[0].x) == ["layer 1", "layer 2"]
    np.testing.assert_allclose(np.diag(np.asarray(view.self_similarity.data[0].z, dtype=float)), 1.0, rtol=1e-5)
    view.representation.value = "pooled"
    pooled = cka_matrix(vit, resnet, images, batch_size=8, representation="pooled")[0]
    np.testing.assert_allclose(np.asarray(view.cross.data[0].z), pooled.numpy(), rtol=1e-5)
    assert len(view._cache) == 4 and view.status.value == data.describe_images(16, "CIFAR-10 test set")
    progress["steps"].clear()
    view.model_b.value = zoo_pair[0]  # A x A on both sides: computed already, and once
    assert progress["steps"] == []
    np.testing.assert_array_equal(np.asarray(view.cross.data[0].z), np.asarray(view.self_similarity.data[0].z))
