import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from vitlab import data, metrics
from vitlab.capture import layer_features, layer_hooks, representation_layers
from vitlab.compare import cka_matrix, fewshot_probes, mean_over_seeds
from vitlab.models import build_model, preprocess


def _sklearn_probe(x_train, y_train, x_test, l2, classes):
    """big_vision's recipe spelled out with scikit-learn: standardise, bias column of 100, +-1 targets."""
    x_train, x_test = x_train.double().numpy(), x_test.double().numpy()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    aug = lambda x: np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])  # noqa: E731
    targets = 2.0 * np.eye(classes)[y_train.numpy()] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(aug(x_train), targets)
    return ridge.coef_.T, ridge.predict(aug(x_test)).argmax(1)


@pytest.mark.parametrize("n, d", [(40, 8), (12, 30)])  # primal (n >= d) and dual (n < d) forms
def test_ridge_probe_matches_scikit_learn(n, d):
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, d, generator=gen), torch.arange(n) % 4
    x_test = torch.randn(25, d, generator=gen)
    expected_w, expected_pred = _sklearn_probe(x, y, x_test, 3.0, 4)
    probe = metrics.ridge_classifier(x, y, 4, l2=3.0)
    np.testing.assert_allclose(probe[0].numpy(), expected_w, rtol=1e-7, atol=1e-9)
    assert metrics.ridge_predict(probe, x_test).tolist() == expected_pred.tolist()


def test_ridge_probe_separates_separable_classes():
    # Class k sits at 10 * e_k plus small noise: any sensible probe is perfect.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = 10 * torch.eye(5)[y] + 0.1 * torch.randn(60, 5, generator=gen)
    y_test = torch.arange(30) % 3
    x_test = 10 * torch.eye(5)[y_test] + 0.1 * torch.randn(30, 5, generator=gen)
    assert metrics.fewshot_accuracy(x, y, x_test, y_test, 3, l2=1.0) == 1.0
    with pytest.raises(ValueError, match="l2 must be positive"):
        metrics.ridge_classifier(x, y, 3, l2=0)


def _intermediates(model, images):
    """Every layer's output through timm's own forward_intermediates (independent of vitlab hooks)."""
    x = preprocess(model, images)
    with torch.no_grad():
        if hasattr(model, "blocks"):
            outs = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=True,
                                               output_fmt="NLC", norm=False)
            return [torch.cat([prefix, tokens], 1) for tokens, prefix in outs]  # (B, 1 + patches, D)
        return model.forward_intermediates(x, intermediates_only=True)  # (B, C, H, W) per stage


@pytest.mark.parametrize("name", ["vit_micro_c10", "resnet_micro_c10"])
def test_layer_features_match_timm_intermediates(name):
    torch.manual_seed(0)
    model = build_model({"zoo": name}).eval()
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    feats = layer_features(model, images, batch_size=3)
    outs = _intermediates(model, images)
    layers = representation_layers(model)
    assert len(layers) == len(outs)
    for layer, out in zip(layers, outs):
        if out.ndim == 3:
            torch.testing.assert_close(feats[(layer, "cls")], out[:, 0])
            torch.testing.assert_close(feats[(layer, "mean")], out[:, 1:].mean(1))
        else:
            torch.testing.assert_close(feats[(layer, "gap")], out.mean((2, 3)))
    assert model.training is False
    model.train()
    with layer_hooks(model):
        pass
    assert model.training and all(not m._forward_hooks for m in model.modules())


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
        tr = _intermediates(model, train_x[idx])[-1][:, 0]
        te = _intermediates(model, test_x[test_idx])[-1][:, 0]
        _, pred = _sklearn_probe(tr, train_y[idx], te, 2.0, 10)
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
    outs_v, outs_r = _intermediates(vit, images), _intermediates(resnet, images)
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
