import pytest
import torch
from conftest import sklearn_probe, timm_intermediates

from vitlab import data, metrics
from vitlab.capture import representation_layers
from vitlab.compare import cka_matrix, fewshot_probes, mean_over_seeds
from vitlab.models import build_model


def test_fewshot_probes_match_a_brute_force_probe(fake_cifar):
    torch.manual_seed(0)
    model = build_model({"zoo": "vit_micro_c10"}).eval()
    records = fewshot_probes(model, shots=(1, 5), seeds=(0, 1), test_size=50, l2=2.0, name="micro")
    layers = representation_layers(model)
    assert len(records) == len(layers) * 2 * 2 * 2  # layers x (cls, mean) x shots x seeds
    train_x, train_y = data.cifar10("train")
    test_x, test_y = data.cifar10("test")
    test_idx = data.stratified_subset(test_y, 50, 0)
    for r in [r for r in records if r["layer"] == layers[-1] and r["pooling"] == "cls"]:
        idx = data.stratified_subset(train_y, r["shots"] * 10, r["seed"])
        assert torch.bincount(train_y[idx], minlength=10).tolist() == [r["shots"]] * 10
        tr = timm_intermediates(model, train_x[idx])[-1][:, 0]
        te = timm_intermediates(model, test_x[test_idx])[-1][:, 0]
        _, pred = sklearn_probe(tr, train_y[idx], te, 2.0, 10)
        assert r["accuracy"] == pytest.approx(float((torch.from_numpy(pred) == test_y[test_idx]).double().mean()))
    summary = mean_over_seeds(records, ["layer", "pooling", "shots"], "accuracy")
    assert len(summary) == len(layers) * 2 * 2 and all(s["n"] == 2 for s in summary)
    with pytest.raises(ValueError, match="shots"):
        fewshot_probes(model, shots=(0,), test_size=50)


def test_cka_matrix_of_one_batch_equals_unbiased_cka():
    torch.manual_seed(0)
    vit, resnet = build_model({"zoo": "vit_micro_c10"}).eval(), build_model({"zoo": "resnet_micro_c10"}).eval()
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    cka, names_v, names_r = cka_matrix(vit, resnet, images, batch_size=12)
    assert cka.shape == (len(names_v), len(names_r))
    outs_v, outs_r = timm_intermediates(vit, images), timm_intermediates(resnet, images)
    for i, a in enumerate(outs_v):
        for j, b in enumerate(outs_r):
            assert cka[i, j].item() == pytest.approx(metrics.cka(a.flatten(1), b.flatten(1), unbiased=True), abs=1e-5)
    pooled, _, _ = cka_matrix(vit, resnet, images, batch_size=12, representation="pooled")
    expected = metrics.cka(outs_v[0][:, 1:].mean(1), outs_r[-1].mean((2, 3)), unbiased=True)
    assert pooled[0, -1].item() == pytest.approx(expected, abs=1e-5)


def test_self_cka_is_symmetric_with_unit_diagonal_and_drops_the_remainder():
    torch.manual_seed(0)
    vit = build_model({"zoo": "vit_micro_c10"}).eval()
    images = torch.randint(0, 256, (14, 3, 32, 32), dtype=torch.uint8)
    cka, names, same = cka_matrix(vit, vit, images, batch_size=6)
    assert names == same
    torch.testing.assert_close(cka, cka.T)
    torch.testing.assert_close(cka.diagonal(), torch.ones(len(names)))
    # Two batches of 6; the last 2 images are dropped, so they cannot change the result.
    changed = images.clone()
    changed[12:] = 255 - changed[12:]
    torch.testing.assert_close(cka_matrix(vit, vit, changed, batch_size=6)[0], cka)
    with pytest.raises(ValueError, match="batch_size"):
        cka_matrix(vit, vit, images, batch_size=3)
    with pytest.raises(ValueError, match="representation"):
        cka_matrix(vit, vit, images, representation="cls")
