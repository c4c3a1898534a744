"""Evaluators: one ``run(model)`` each, checked against measurements written out here."""
import math

import pytest
import torch
from conftest import sklearn_probe

from vitlab import data
from vitlab.analysis import representations
from vitlab.analysis.capture import capture
from vitlab.models import build_model, preprocess
from vitlab.training import inside
from vitlab.training.evaluators import CKAEvaluator, CKAResult, FewshotEvaluator, InsideViewEvaluator


@pytest.fixture
def micro_vit():
    torch.manual_seed(0)
    return build_model({"zoo": "vit_micro_c10"}).eval()


def test_the_inside_view_evaluator_measures_on_the_probe_images(fake_cifar, micro_vit):
    evaluator = InsideViewEvaluator()
    assert torch.equal(evaluator.images, inside.probe_images())  # the images every recorded view uses
    view = evaluator.run(micro_vit, epoch=4, step=40)
    cap = capture(micro_vit, evaluator.images)
    (rows, cols), (ph, pw), prefix = cap.grid, cap.patch_size, cap.num_prefix_tokens
    centres = torch.tensor([[(i // cols) * ph, (i % cols) * pw] for i in range(rows * cols)], dtype=torch.float64)
    apart = torch.cdist(centres, centres)  # (patches, patches) pixels between query and key patches
    for layer, row in enumerate(view.distance):
        attn = cap.attn[layer][:, :, prefix:, prefix:].double()  # (B, heads, patches, patches), raw weights
        expected = (attn * apart).sum(-1).mean((0, 2))  # the paper's convention: no renormalisation
        assert row == pytest.approx(expected.tolist(), abs=1e-4)
    assert (view.epoch, view.step, view.images) == (4, 40, len(evaluator.images))
    assert InsideViewEvaluator(evaluator.images).run(build_model({"zoo": "resnet_micro_c10"})) is None


def test_the_fewshot_evaluator_matches_a_brute_force_probe(fake_cifar):
    torch.manual_seed(0)
    model = build_model({"zoo": "resnet_micro_c10"}).eval()
    train_x, train_y = data.cifar10("train")
    test_x, test_y = data.cifar10("test")
    evaluator = FewshotEvaluator(train_x, train_y, test_x, test_y, shots=(2,), seeds=(0, 1), l2=2.0,
                                 layers=["pre_logits"])
    records = evaluator.run(model, name="micro")
    assert [(r.model, r.family, r.layer, r.shots, r.seed) for r in records] == [
        ("micro", "resnet", "pre_logits", 2, 0), ("micro", "resnet", "pre_logits", 2, 1)]
    with torch.no_grad():
        represent = lambda x: model.forward_head(model.forward_features(preprocess(model, x)), pre_logits=True)  # noqa: E731
        for r in records:
            idx = data.stratified_subset(train_y, 2 * 10, r.seed)
            _, predicted = sklearn_probe(represent(train_x[idx]), train_y[idx], represent(test_x), 2.0, 10)
            assert r.accuracy == pytest.approx(float((torch.from_numpy(predicted) == test_y).double().mean()))


def test_the_cka_evaluator_compares_every_layer_with_the_reference(micro_vit):
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    result = CKAEvaluator(images, batch_size=12).run(micro_vit)  # no reference: the model against itself
    assert isinstance(result, CKAResult) and result.layers == result.reference_layers
    torch.testing.assert_close(result.cka.diagonal(), torch.ones(len(result.layers)))
    resnet = build_model({"zoo": "resnet_micro_c10"}).eval()
    cross = CKAEvaluator(images, reference=resnet, batch_size=12).run(micro_vit)
    cap = capture(micro_vit, images)
    with torch.no_grad():
        stages = resnet.forward_intermediates(preprocess(resnet, images), intermediates_only=True)
    first, last = cap.tokens[0].flatten(1).double(), stages[-1].flatten(1).double()  # (B, features) each
    expected = representations.cka(first, last, unbiased=True)
    assert cross.cka.shape == (len(result.layers), len(stages)) and cross.layers == result.layers
    assert cross.cka[0, -1].item() == pytest.approx(expected, abs=1e-5) and not math.isnan(expected)
