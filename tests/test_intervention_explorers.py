"""The interventions explorer: figures of the model picked, a click on the ablation matrix shows that head, models
without heads refused in one line, unlabelled images said; the inside-views explorer shows the intervention fields."""
import numpy as np
import pytest
import torch

from vitlab import models
from vitlab.analysis import ablation, attention_maps
from vitlab.analysis.capture import capture
from vitlab.training import inside
from vitlab.views import intervention_explorers, study_explorers

from test_intervention_figures import _view


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory):
    torch.manual_seed(0)
    model = models.build_model({"zoo": "vit_micro_c10"})
    return str(models.save_model(model, tmp_path_factory.mktemp("m") / "micro.safetensors"))


@pytest.fixture(scope="module")
def explorer(micro_file):
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    reference = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen)
    view = intervention_explorers.InterventionsExplorer([micro_file, "resnet_tiny_c10"], images, torch.arange(8),
                                                        reference=reference, counts=(8,), default=8)
    return view, images, reference


class Points:  # what plotly passes to a click handler on a heatmap
    def __init__(self, x, y):
        self.xs, self.ys, self.point_inds = [x], [y], [(y - 1, x - 1)]


def test_matrix_is_the_models_ablation(explorer, micro_file):
    view, images, reference = explorer
    model = models.load_model(micro_file, device="cpu")
    expected = ablation.ablation_analysis(model, images, torch.arange(8), kind="mean", reference=reference)
    np.testing.assert_allclose(np.asarray(view.matrix.data[0].z), expected.mean("head_accuracy").numpy())
    assert "Measured (head ablation)" in view.readout.value and "Measured (logit lens)" in view.readout.value
    assert "stand in" not in view.status.value  # labelled images


def test_click_shows_the_clicked_head(explorer, micro_file):
    view, images, _ = explorer
    view._clicked(view.matrix.data[0], Points(x=2, y=1), None)  # head 2 of layer 1
    assert view.selected == (0, 1) and (view.layer.value, view.head.value) == (1, 2)
    assert view.detail.layout.title.text.startswith("Layer 1, head 2")
    model = models.load_model(micro_file, device="cpu")
    cap = capture(model, images[:1])
    maps = attention_maps.class_token_attention([a[0] for a in cap.attn.values()], cap.grid, cap.num_prefix_tokens)
    first = [t for t in view.detail.data if t.type == "heatmap"][0]
    expected = maps[0, 1] / maps[0, 1].max()
    np.testing.assert_allclose(np.asarray(first.z, dtype=float), expected.numpy(), rtol=1e-5, atol=1e-6)
    mean = float(view.result.ablation.head_accuracy[:, 0, 1].double().mean())
    bar = next(t for t in view.detail.data if t.type == "bar")
    assert bar.y[0] == pytest.approx(mean)
    outline = view.matrix.data[1]
    assert (outline.x[0], outline.y[0]) == (2, 1)
    view.head.value = 1  # the pickers redraw too
    assert view.detail.layout.title.text.startswith("Layer 1, head 1")
    with pytest.raises(ValueError, match="outside this model's 2 layers x 2 heads"):
        view.select(5, 0)


def test_a_resnet_is_refused_in_one_line(explorer, micro_file):
    view, *_ = explorer
    view.model.value = "resnet_tiny_c10"
    view.refresh()  # not live: Compute
    assert "interventions needs a ViT or hybrid" in view.status.value and "\n" not in view.status.value
    assert view.shown == micro_file  # the menu goes back to the model shown
    view.model.value = micro_file


def test_unlabelled_images_use_the_predictions_and_say_so(micro_file):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    view = intervention_explorers.InterventionsExplorer([micro_file], images, counts=(4,), default=4, reference=images)
    assert "predictions stand in" in view.status.value
    model = models.load_model(micro_file, device="cpu")
    assert torch.equal(view.result.ablation.labels, capture(model, images).logits.argmax(-1))
    assert view.result.ablation.accuracy == 1.0  # agreement with itself


def test_inside_views_explorer_shows_interventions_only_when_recorded(tmp_path, monkeypatch):
    with_fields = [_view(e, [[0.01 * e, 0.0], [-0.01, 0.02]], [0.1, 0.2, 0.3 + 0.1 * e]) for e in (1, 2)]
    for views, shown in ((with_fields, True), ([_view(1), _view(2)], False)):
        monkeypatch.setattr(inside, "load", lambda folder, views=views: (views, None, True))
        monkeypatch.setattr(study_explorers.InsideViewsExplorer, "_fig7", lambda self, epoch: None)
        view = study_explorers.InsideViewsExplorer(tmp_path)
        assert view.intervened is shown and (view.ablation in getattr(view.children[-1], "children", ())) is shown
        if shown:
            np.testing.assert_allclose(np.asarray(view.ablation.data[0].z), with_fields[1].head_ablation)
            view.show_epoch(1)
            np.testing.assert_allclose(np.asarray(view.ablation.data[0].z), with_fields[0].head_ablation)
            assert view.lens_timeline.layout.shapes[0].x0 == 1  # the epoch marked
