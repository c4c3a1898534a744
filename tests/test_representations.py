import pytest
import torch
from conftest import sklearn_probe, timm_intermediates

from vitlab import data
from vitlab.analysis import metrics
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
