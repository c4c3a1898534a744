import math

import numpy as np
import pytest
import torch
from conftest import sklearn_probe, timm_intermediates

from vitlab import data
from vitlab.analysis import representations
from vitlab.analysis.representations import cka_matrix, fewshot_probes
from vitlab.analysis.features import representation_layers
from vitlab.models import build_model, preprocess
from vitlab.records import ProbeRecord, group_spread


def _cifar_split(test_size=50):
    """The fake CIFAR-10's training set and a class-stratified ``test_size`` test subset."""
    train_x, train_y = data.cifar10("train")
    test_x, test_y = data.cifar10("test")
    test_idx = data.stratified_subset(test_y, test_size, 0)
    return train_x, train_y, test_x[test_idx], test_y[test_idx]


def _brute_force_accuracy(represent, r, split, l2=2.0):
    """Accuracy of scikit-learn's ridge probe on ``represent(images)`` for record ``r``'s draw of the shots."""
    train_x, train_y, test_x, test_y = split
    idx = data.stratified_subset(train_y, r.shots * 10, r.seed)
    assert torch.bincount(train_y[idx], minlength=10).tolist() == [r.shots] * 10
    _, pred = sklearn_probe(represent(train_x[idx]), train_y[idx], represent(test_x), l2, 10)
    return float((torch.from_numpy(pred) == test_y).double().mean())


def test_fewshot_probes_match_a_brute_force_probe(fake_cifar):
    torch.manual_seed(0)
    model = build_model({"zoo": "vit_micro_c10"}).eval()
    split = _cifar_split()
    records = fewshot_probes(model, *split, shots=(1, 5), seeds=(0, 1), l2=2.0, name="micro")
    layers = representation_layers(model)
    assert len(records) == len(layers) * 2 * 2 * 2  # layers x (cls, mean) x shots x seeds
    assert all(isinstance(r, ProbeRecord) and r.model == "micro" and r.family == "vit" for r in records)
    assert {(r.layer, r.depth) for r in records} == set(zip(layers, range(len(layers))))
    for r in [r for r in records if r.layer == layers[-1] and r.pooling == "cls"]:
        expected = _brute_force_accuracy(lambda x: timm_intermediates(model, x)[-1][:, 0], r, split)
        assert r.accuracy == pytest.approx(expected)
    summary = group_spread(records, key=lambda r: (r.layer, r.pooling, r.shots), value=lambda r: r.accuracy)
    assert len(summary) == len(layers) * 2 * 2 and all(s.n == 2 for s in summary.values())
    with pytest.raises(ValueError, match="shots"):
        fewshot_probes(model, *split, shots=(0,))


def _head_input(model):
    """What timm's own head reads: forward_head(forward_features(x), pre_logits=True)."""
    def represent(images):
        with torch.no_grad():
            return model.forward_head(model.forward_features(preprocess(model, images)), pre_logits=True)
    return represent


@pytest.mark.parametrize("name, family", [("vit_micro_c10", "vit"), ("resnet_micro_c10", "resnet"),
                                          ("hybrid_micro_c10", "hybrid")])
def test_pre_logits_and_negative_layers(fake_cifar, name, family):
    torch.manual_seed(0)
    model = build_model({"zoo": name}).eval()
    split = _cifar_split()
    layers = representation_layers(model)
    records = fewshot_probes(model, *split, shots=(2,), seeds=(0, 1), l2=2.0, layers=[-1, "pre_logits"])
    assert {(r.layer, r.depth) for r in records} == {(layers[-1], len(layers) - 1), ("pre_logits", len(layers))}
    assert all(r.family == family for r in records)
    if family != "resnet":  # a hybrid's layers are its transformer blocks: class-token and mean-token probes
        assert layers == [f"blocks.{i}" for i in range(len(model.blocks))]
        assert {r.pooling for r in records if r.layer == layers[-1]} == {"cls", "mean"}
    head = [r for r in records if r.layer == "pre_logits"]
    assert len(head) == 2 and all(r.pooling == "head" for r in head)
    for r in head:
        assert r.accuracy == pytest.approx(_brute_force_accuracy(_head_input(model), r, split))
    last = [r for r in records if r.layer == layers[-1]]
    same = fewshot_probes(model, *split, shots=(2,), seeds=(0, 1), l2=2.0, layers=[len(layers) - 1])
    assert [(r.pooling, r.accuracy) for r in last] == [(r.pooling, r.accuracy) for r in same]
    assert {r.family for r in fewshot_probes(model, *split, shots=(1,), seeds=(0,), family="other",
                                             layers=["pre_logits"])} == {"other"}
    with pytest.raises(ValueError, match="pre_logits"):
        fewshot_probes(model, *split, shots=(1,), layers=["head"])
    with pytest.raises(ValueError, match="out of range"):
        fewshot_probes(model, *split, shots=(1,), layers=[len(layers)])


def test_cka_matrix_of_one_batch_equals_unbiased_cka():
    torch.manual_seed(0)
    vit, resnet = build_model({"zoo": "vit_micro_c10"}).eval(), build_model({"zoo": "resnet_micro_c10"}).eval()
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    cka, names_v, names_r = cka_matrix(vit, resnet, images, batch_size=12)
    assert cka.shape == (len(names_v), len(names_r))
    outs_v, outs_r = timm_intermediates(vit, images), timm_intermediates(resnet, images)
    for i, a in enumerate(outs_v):
        for j, b in enumerate(outs_r):
            assert cka[i, j].item() == pytest.approx(representations.cka(a.flatten(1), b.flatten(1), unbiased=True), abs=1e-5)
    pooled, _, _ = cka_matrix(vit, resnet, images, batch_size=12, representation="pooled")
    expected = representations.cka(outs_v[0][:, 1:].mean(1), outs_r[-1].mean((2, 3)), unbiased=True)
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


# --- CKA ------------------------------------------------------------------------------------


def _brute_linear_cka(x, y):
    """Feature-space formula: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((y.T @ x).pow(2).sum() / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()))


def _brute_unbiased_hsic(k, l):
    """Song et al. (2012) U-statistic over all ordered quadruples of distinct indices."""
    import itertools

    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return float(total) / (n * (n - 1) * (n - 2) * (n - 3))


def test_cka_matches_brute_force_and_analytic_properties():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 7, generator=gen, dtype=torch.float64), torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = y + x[:, :5]
    assert representations.cka(x, y) == pytest.approx(_brute_linear_cka(x, y), rel=1e-9)
    assert representations.cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=torch.float64))
    for unbiased in (False, True):
        base = representations.cka(x, y, unbiased=unbiased)
        assert representations.cka(x @ q, y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
        assert representations.cka(x * 3.7, y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)


def test_unbiased_cka_matches_u_statistic():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(7, 3, generator=gen).double(), torch.randn(7, 2, generator=gen).double()
    k, l = x @ x.T, y @ y.T
    expected = _brute_unbiased_hsic(k, l) / math.sqrt(_brute_unbiased_hsic(k, k) * _brute_unbiased_hsic(l, l))
    assert representations.cka(x, y, unbiased=True) == pytest.approx(expected, rel=1e-9)


def test_cka_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 4 samples"):
        representations.cka(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="constant"):
        representations.cka(torch.ones(10, 3), torch.randn(10, 2))
    with pytest.raises(ValueError, match="same examples"):
        representations.cka(torch.randn(10, 3), torch.randn(11, 2))


def test_minibatch_cka_row_mismatch_says_what_cka_says():
    x, y = torch.randn(10, 3), torch.randn(8, 2)
    with pytest.raises(ValueError) as single:
        representations.cka(x, y)
    with pytest.raises(ValueError) as batched:
        representations.MinibatchCKA(1, 1).update([x], [y])
    assert str(batched.value) == str(single.value).replace("x and y", "xs[0] and ys[0]")
    with pytest.raises(ValueError, match=r"xs\[0\] and xs\[1\] must hold the same examples: 10 vs 8 rows"):
        representations.MinibatchCKA(2, 1).update([x, torch.randn(8, 3)], [torch.randn(10, 2)])


def test_minibatch_cka_sums_unbiased_hsic_over_batches():
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(18, 4, generator=gen) for _ in range(2)]
    ys = [xs[0][:, :2] + 0.5 * torch.randn(18, 2, generator=gen)]
    acc = representations.MinibatchCKA(2, 1)
    for start in range(0, 18, 6):
        acc.update([x[start:start + 6] for x in xs], [y[start:start + 6] for y in ys])
    got = acc.compute()
    assert got.shape == (2, 1)
    for i, x in enumerate(xs):
        parts = [(x[s:s + 6].double(), ys[0][s:s + 6].double()) for s in range(0, 18, 6)]
        xy = sum(_brute_unbiased_hsic(a @ a.T, b @ b.T) for a, b in parts)
        xx = sum(_brute_unbiased_hsic(a @ a.T, a @ a.T) for a, _ in parts)
        yy = sum(_brute_unbiased_hsic(b @ b.T, b @ b.T) for _, b in parts)
        assert float(got[i, 0]) == pytest.approx(xy / math.sqrt(xx * yy), rel=1e-5)
    one = representations.MinibatchCKA(1, 1)
    one.update([xs[0]], [ys[0]])
    assert float(one.compute()) == pytest.approx(representations.cka(xs[0], ys[0], unbiased=True), rel=1e-6)


@pytest.mark.parametrize("n, d", [(40, 8), (12, 30)])  # primal (n >= d) and dual (n < d) forms
def test_ridge_probe_matches_scikit_learn(n, d):
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, d, generator=gen), torch.arange(n) % 4
    x_test = torch.randn(25, d, generator=gen)
    expected_w, expected_pred = sklearn_probe(x, y, x_test, 3.0, 4)
    probe = representations._ridge_classifier(x, y, 4, l2=3.0)
    np.testing.assert_allclose(probe[0].numpy(), expected_w, rtol=1e-7, atol=1e-9)
    assert representations._ridge_predict(probe, x_test).tolist() == expected_pred.tolist()


def test_ridge_probe_separates_separable_classes():
    # Class k sits at 10 * e_k plus small noise: any sensible probe is perfect.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = 10 * torch.eye(5)[y] + 0.1 * torch.randn(60, 5, generator=gen)
    y_test = torch.arange(30) % 3
    x_test = 10 * torch.eye(5)[y_test] + 0.1 * torch.randn(30, 5, generator=gen)
    assert representations._fewshot_accuracy(x, y, x_test, y_test, 3, l2=1.0) == 1.0
    with pytest.raises(ValueError, match="l2 must be positive"):
        representations._ridge_classifier(x, y, 3, l2=0)


def _torchvision_vit():
    """torchvision's VisionTransformer (not timm's), small: vit_b_16's class with one 8-wide block."""
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                                                hidden_dim=8, mlp_dim=8)


def test_model_family_reads_the_model_and_refuses_what_it_does_not_know():
    import timm
    from vitlab.training.mpp import MaskedPatchPrediction

    vit = dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=3)
    known = {
        "vit": [build_model({"zoo": "vit_micro_c10"}), build_model({"timm": "vit_tiny_patch16_224", "kwargs": vit}),
                MaskedPatchPrediction(build_model({"zoo": "vit_micro_c10"}))],  # pre-training: its encoder's
        "hybrid": [build_model({"zoo": "hybrid_micro_c10"}),
                   build_model({"timm": "vit_tiny_r_s16_p8_224", "kwargs": dict(img_size=64, depth=1)})],
        "resnet": [build_model({"zoo": "resnet_micro_c10"}), timm.create_model("resnet10t", pretrained=False)],
    }
    for family, models in known.items():
        assert [representations.model_family(m) for m in models] == [family] * len(models)
    for model, name in [(_torchvision_vit(), "VisionTransformer"), (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)),
                                                                     "Sequential")]:
        with pytest.raises(ValueError, match=f"family of {name}") as info:
            representations.model_family(model)
        message = str(info.value)
        assert "\n" not in message and all(f"'{f}'" in message for f in ("vit", "hybrid", "resnet"))


def test_fewshot_probes_refuse_a_model_of_unknown_family_before_any_forward(monkeypatch):
    import timm

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)  # feature_info, but no known family
    monkeypatch.setattr(representations, "_representations", lambda *a, **k: pytest.fail("computed features"))
    images, labels = torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10
    with pytest.raises(ValueError, match="family of ConvNeXt"):
        fewshot_probes(model, images, labels, images, labels, shots=(1,), seeds=(0,))
    monkeypatch.undo()  # named by the caller, the family is not asked of the model
    assert {r.family for r in fewshot_probes(model, images, labels, images, labels, shots=(1,), seeds=(0,),
                                             family="convnext", layers=[-1])} == {"convnext"}
