"""The attribution explorer: the maps drawn are the model's, only methods and removals that apply are offered (a ViT,
a ResNet), a click on a map tile shows that image's curves, and the static path draws what the widget path draws."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from vitlab import models
from vitlab.analysis.saliency import saliency
from vitlab.views.attribution_explorers import AttributionExplorer, steps_for
from vitlab.views.controls import StaticFigure

from test_explorers import _drawn

METHODS = ("random", "rollout", "occlusion", "grad_cam")


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory):
    torch.manual_seed(0)
    model = models.build_model({"zoo": "vit_micro_c10"})
    return str(models.save_model(model, tmp_path_factory.mktemp("m") / "micro.safetensors"))


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def views(micro_file, images):
    return [AttributionExplorer([micro_file, "resnet_tiny_c10"], images, torch.arange(4), static=static, counts=(4,),
                                default=4, methods=METHODS) for static in (False, True)]


class Points:  # what plotly passes to a click handler on a heatmap
    xs, ys, point_inds = [1], [1], [(1, 1)]


def test_maps_are_the_models_and_only_what_applies_is_offered(views, micro_file, images):
    widget, _ = views
    assert widget.methods.options == ("random", "attention", "rollout", "grad_rollout", "attn_grad", "occlusion",
                                      "integrated_gradients", "input_x_gradient")  # no grad_cam on a ViT
    assert widget.methods.value == ("random", "rollout", "occlusion") and widget.removal.options == ("drop", "mean",
                                                                                                     "blur")
    model = models.load_model(micro_file, device="cpu")
    expected = saliency(model, images, "rollout")
    heat = [t for t in widget.maps.data if t.type == "heatmap" and t.meta["method"] == "rollout"]
    assert len(heat) == 4
    for t in heat:
        np.testing.assert_allclose(np.asarray(t.z, dtype=float), expected[t.meta["image"]].double().numpy(),
                                   rtol=1e-5, atol=1e-7)
    assert "Measured (attribution maps)" in widget.readout.value and "Measured (deletion and insertion)" in (
        widget.readout.value)
    rows = widget.board.data[0].cells.values[1]
    cells = [c.replace("\u00a0", " ").replace("<br>", " ") for c in widget.board.data[0].cells.values[2]]
    assert len(rows) == 9 and cells[rows.index("attention")] == "not picked"  # it applies: not "does not apply"
    assert cells[rows.index("grad_cam")] == "does not apply to this model"


def test_a_click_on_a_map_tile_shows_that_images_curves(views):
    widget, plain = views
    tile = next(t for t in widget.maps.data if t.type == "heatmap" and t.meta == {"method": "occlusion", "image": 2})
    widget._clicked(tile, Points(), None)
    assert (widget.image.value, widget.method.value) == (2, "occlusion")
    faith = widget.result.faithfulness
    for t in widget.detail.data:
        table = faith.deletion if t.meta["curve"] == "deletion" else faith.insertion
        np.testing.assert_allclose(t.y, table[t.meta["method"], "drop"]["probability"][2].double().numpy())
        assert t.line.width == (4 if t.meta["method"] == "occlusion" else 2)
    plain.image.value, plain.method.value = 2, "occlusion"  # the static path's stand-in for the click
    assert _drawn(plain.detail) == _drawn(widget.detail)
    with pytest.raises(ValueError, match="pick one of the 4 images"):
        widget.select(7, "occlusion")


def test_static_path_draws_what_the_widget_path_draws(views):
    widget, plain = views
    assert all(isinstance(p, StaticFigure) for p in plain.plots)
    assert all(isinstance(p, go.FigureWidget) for p in widget.plots)
    assert [_drawn(p) for p in plain.plots] == [_drawn(p) for p in widget.plots]
    assert plain.readout.value == widget.readout.value and plain.status.value == widget.status.value
    for view in views:
        view.removal.value = "blur"
    assert _drawn(plain.curves) == _drawn(widget.curves) and widget.curves.data[0].meta["removal"] == "blur"


def test_a_resnet_is_offered_only_its_methods_and_removals(views):
    widget, _ = views
    widget.model.value = "resnet_tiny_c10"
    widget.refresh()  # not live: Compute
    assert widget.shown == "resnet_tiny_c10" and "Error" not in widget.status.value
    assert widget.methods.options == ("random", "occlusion", "integrated_gradients", "input_x_gradient", "grad_cam")
    assert widget.methods.value == ("random", "occlusion") and widget.removal.options == ("mean", "blur")
    assert {t.meta["method"] for t in widget.maps.data if t.type == "heatmap"} == {"random", "occlusion"}


def test_steps_divide_the_grid():
    assert (steps_for(64), steps_for(196), steps_for(49), steps_for(64, 8)) == (16, 14, 7, 8)
    with pytest.raises(ValueError, match="unknown attribution methods"):
        AttributionExplorer(["resnet_tiny_c10"], methods=["saliency"])


def test_quick_mode_computes_only_the_removal_picked(micro_file, images, monkeypatch):
    monkeypatch.setenv("VITLAB_QUICK", "1")
    view = AttributionExplorer([micro_file], images, torch.arange(4), static=True, counts=(4,), default=4,
                               methods=("random", "rollout"))
    assert view.result.faithfulness.removals == ("drop",) and view.result.faithfulness.steps == 8
    assert not view.result.faithfulness.chefer
    view.removal.value = "mean"  # not computed yet: computes it
    assert view.result.faithfulness.removals == ("mean",) and view.curves.figure.data[0].meta["removal"] == "mean"
