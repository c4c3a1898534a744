import pytest
import torch

from vitlab import models
from vitlab.analysis import metrics
from vitlab.analysis.filters import FiltersResult, components, filters_analysis
from vitlab.analysis.references import INIT_SEEDS


def _rebuilt(model, seeds):
    """Random-initialised models of ``model``'s architecture, rebuilt here from its record."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(models.build_model(model.vitlab_arch))
    return out


def test_filters_analysis_is_the_explained_variance_against_random_init():
    model = models.build_model({"zoo": "vit_micro_c10"})
    r = filters_analysis(model, k=5)
    w = model.patch_embed.proj.weight
    assert components(model) == min(w.shape[0], w[0].numel()) == 32
    filters, ratio = metrics.embedding_filters(model, k=32)
    torch.testing.assert_close(r.ratio, ratio, rtol=0, atol=0)
    torch.testing.assert_close(r.filters, filters[:5], rtol=0, atol=0)
    assert r.k == 5 and r.first == pytest.approx(float(ratio[0])) and r.first_k == pytest.approx(float(ratio[:5].sum()))
    ref = [metrics.embedding_filters(m, k=32)[1] for m in _rebuilt(model, INIT_SEEDS)]
    torch.testing.assert_close(r.reference, torch.stack(ref), rtol=0, atol=0)
    assert r.reference_first == pytest.approx([float(x[0]) for x in ref])
    assert r.reference_first_k == pytest.approx([float(x[:5].sum()) for x in ref])
    assert filters_analysis(model, k=100).k == 32  # at most every component
    assert filters_analysis(model, seeds=()).reference is None


def test_by_hand_the_variance_ratio_is_the_centred_filters_singular_values_squared():
    model = models.build_model({"zoo": "vit_micro_c10"})
    flat = model.patch_embed.proj.weight.detach().double().flatten(1)  # (D, C*P*P)
    centred = flat - flat.mean(0)
    var = torch.linalg.svdvals(centred) ** 2
    r = filters_analysis(model, k=3, seeds=())
    torch.testing.assert_close(r.ratio.double(), (var / var.sum())[:32], rtol=1e-5, atol=1e-7)


def test_synthetic_ratios_and_what_has_no_filters(tiny_vit):
    steep = FiltersResult.from_ratios(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1]), torch.full((3, 5), 0.2), k=2)
    assert steep.first == 0.5 and steep.first_k == pytest.approx(0.7) and steep.reference_first_k == [
        pytest.approx(0.4)] * 3
    assert FiltersResult.from_ratios(torch.tensor([0.6, 0.4]), k=28).k == 2
    with pytest.raises(ValueError, match="reference"):
        FiltersResult.from_ratios(torch.tensor([0.6, 0.4]), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="hybrid ViT"):
        filters_analysis(models.build_model({"zoo": "hybrid_micro_c10"}))
    with pytest.raises(ValueError, match="convolutional patch embedding"):
        components(models.build_model({"zoo": "resnet_micro_c10"}))
    with pytest.raises(ValueError, match="positive integer"):
        filters_analysis(tiny_vit, k=0)
    assert filters_analysis(tiny_vit, k=4).reference is None  # a timm model: no random-init reference
