"""The attribution figures draw the numbers they are given: maps as computed, curves as the result holds them, one
table row per method with honest empty cells, the sanity cascade and Focus bars with their reference lines."""
import numpy as np
import pytest
import torch

from vitlab.analysis.faithfulness import faithfulness_analysis
from vitlab.analysis.map_checks import FocusResult, SanityResult
from vitlab.analysis.saliency import METHODS, maps_analysis
from vitlab.records import AttributionScore
from vitlab.views import attribution_figures as F

from conftest import small_timm_vit, uint8_images


@pytest.fixture(scope="module")
def scored():
    model = small_timm_vit(seed=1)
    images = uint8_images(5, seed=2)
    maps = maps_analysis(model, images, ("random", "rollout", "occlusion"), labels=torch.arange(5))
    faith = faithfulness_analysis(model, images, maps, removals=("drop", "mean"), steps=4, chefer=False,
                                  progress=False)
    return maps, faith


def test_maps_figure_holds_each_methods_maps_with_one_scale_per_row(scored):
    maps, _ = scored
    fig = F.maps_figure(maps, [0, 2, 3])
    assert [t.type for t in fig.data[:3]] == ["image"] * 3
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), maps.images[2].permute(1, 2, 0).numpy())
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 3 * 3 and len(fig.data) == 3 + 9
    for trace in heat:
        method, image = trace.meta["method"], trace.meta["image"]
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), maps.maps[method][image].double().numpy(),
                                   rtol=1e-6)
    for method in maps.methods:
        row = [t for t in heat if t.meta["method"] == method]
        assert len({(t.zmin, t.zmax) for t in row}) == 1  # one colour scale along the row
        assert row[0].zmax == pytest.approx(float(maps.maps[method][[0, 2, 3]].abs().max()), rel=1e-6)
    assert next(t for t in heat if t.meta["method"] == "occlusion").zmid == 0  # a signed map: centred on 0
    names = [f"class {k}" for k in range(10)]
    titles = [a.text for a in F.maps_figure(maps, [0, 2], classes=names).layout.annotations][:2]
    assert titles == [f"image {i + 1}<br>target class {int(maps.targets[i])}" for i in (0, 2)]


def test_curves_figure_draws_the_result_mean_and_one_image(scored):
    _, faith = scored
    fig = F.curves_figure(faith)
    lines = [t for t in fig.data if t.meta and not t.meta.get("band")]
    assert len(lines) == 2 * 2 * 3 and len(fig.data) == 2 * len(lines)  # a band under every line
    for t in lines:
        table = faith.deletion if t.meta["curve"] == "deletion" else faith.insertion
        values = table[t.meta["method"], t.meta["removal"]]["probability"]
        np.testing.assert_allclose(t.y, values.double().mean(0).numpy(), rtol=1e-6)
        assert (t.line.dash == "dash") == (t.meta["method"] == "random")
    band = next(t for t in fig.data if t.meta.get("band"))
    line = next(t for t in lines if {**t.meta, "band": True} == band.meta)
    upper, lower = np.asarray(band.y[:5]), np.asarray(band.y[5:])[::-1]
    assert (upper >= np.asarray(line.y) - 1e-9).all() and (lower <= np.asarray(line.y) + 1e-9).all()
    one = F.curves_figure(faith, "mean", "accuracy", image=3, highlight="rollout")
    assert len(one.data) == 2 * 3 and not any(t.meta.get("band") for t in one.data)
    for t in one.data:
        table = faith.deletion if t.meta["curve"] == "deletion" else faith.insertion
        np.testing.assert_array_equal(t.y, table[t.meta["method"], "mean"]["accuracy"][3].double().numpy())
        assert t.line.width == (4 if t.meta["method"] == "rollout" else 2)


def _row(model, method, score, removal, measure, mean):
    return AttributionScore(model=model, method=method, score=score, removal=removal, measure=measure, mean=mean,
                            low=mean - 0.01, high=mean + 0.02, images=50)


def test_scoreboard_table_one_row_per_method_and_honest_empty_cells():
    rows = [_row("vit", "model", "accuracy", "", "accuracy", 0.8)]
    rows += [_row("vit", m, c, r, "probability", 0.1 * k + (c == "insertion") * 0.3)
             for k, m in enumerate(("random", "rollout", "occlusion")) for c in ("deletion", "insertion")
             for r in ("drop", "mean")]
    rows += [_row("vit", "rollout", "sanity", "", "spearman", 0.7)]
    rows += [_row("resnet", m, c, "mean", "probability", 0.2) for m in ("random", "grad_cam")
             for c in ("deletion", "insertion")]
    fig = F.scoreboard_figure(rows)
    header, columns = fig.data[0].header.values, fig.data[0].cells.values
    cols = [h.replace("<br>", " ").replace("\u00a0", " ") for h in header]
    text = [[c.replace("<br>", " ").replace("\u00a0", " ") for c in col] for col in columns]
    assert len(columns[0]) == 2 * len(METHODS)  # one row per method of each model
    assert len(cols) == 2 + 4 + 1  # deletion and insertion under drop and mean, sanity; no Chefer, no Focus
    method_col = [c for c in text[1]]
    vit_rollout, resnet_rollout = method_col.index("rollout"), len(METHODS) + method_col.index("rollout")
    del_drop = next(i for i, h in enumerate(cols) if h.startswith("deletion") and "token drop" in h)
    assert text[del_drop][vit_rollout] == "0.100 [0.090, 0.120]"
    assert all(text[i][resnet_rollout] == "does not apply to this model" for i in range(2, len(cols)))
    resnet_cam = len(METHODS) + METHODS.index("grad_cam")
    assert text[del_drop][resnet_cam] == "not scored"  # grad_cam ran on the ResNet, token drop did not
    sanity = next(i for i, h in enumerate(cols) if h.startswith("sanity"))
    assert text[sanity][vit_rollout] == "0.700 [0.690, 0.720]" and text[sanity][method_col.index("occlusion")] == (
        "not scored")
    assert text[0][0].startswith("vit (accuracy 0.800") and text[0][-1] == "resnet"
    with pytest.raises(ValueError, match="no scoreboard rows"):
        F.scoreboard_figure([])


def test_sanity_and_focus_figures_draw_the_result():
    spearman = {"rollout": torch.tensor([[0.9, 0.8, 1.0], [0.6, 0.7, 0.5]]).double(),
                "occlusion": torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.0, -0.1]]).double()}
    low = {m: s.mean(1) - 0.1 for m, s in spearman.items()}
    high = {m: s.mean(1) + 0.1 for m, s in spearman.items()}
    sanity = SanityResult(methods=("rollout", "occlusion"), stages=("head", "embedding"), spearman=spearman, low=low,
                          high=high, flagged=("rollout",), images=3)
    fig = F.sanity_figure(sanity)
    lines = [t for t in fig.data if not t.meta.get("band")]
    for t in lines:
        np.testing.assert_allclose(t.y, spearman[t.meta["method"]].mean(1).numpy())
    assert lines[0].name == "rollout (flagged)" and fig.layout.shapes[0].y0 == 0.5
    focus = FocusResult(methods=("rollout", "occlusion"), focus={}, mean={"rollout": 0.3, "occlusion": 0.45},
                        low={"rollout": 0.2, "occlusion": 0.4}, high={"rollout": 0.35, "occlusion": 0.5},
                        accuracy=0.2, accuracy_low=0.1, accuracy_high=0.3,
                        mosaics=torch.zeros(4, 3, 32, 32, dtype=torch.uint8), targets=torch.zeros(4),
                        quadrants=torch.zeros(4))
    fig = F.focus_figure(focus)
    bars, accuracy = fig.data
    np.testing.assert_allclose(bars.y, [0.3, 0.45])
    np.testing.assert_allclose(bars.error_y.array, [0.05, 0.05])
    np.testing.assert_allclose(bars.error_y.arrayminus, [0.1, 0.05])
    assert accuracy.y == (0.2,) and fig.layout.shapes[0].y0 == 0.25
