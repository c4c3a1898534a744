"""The intervention figures draw exactly the results they are given: heatmap values are the results' means, hover and
error bars their intervals, one point per head."""
import numpy as np
import pytest
import torch

from vitlab import models
from vitlab.analysis import ablation, lens, patching
from vitlab.records import InsideView
from vitlab.views import intervention_figures as F


@pytest.fixture(scope="module")
def results():
    """The four analyses of a random-weight micro ViT (2 blocks, 2 heads, 4x4 grid) on 12 random images."""
    torch.manual_seed(0)
    model = models.build_model({"zoo": "vit_micro_c10"}).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(12) % 10
    abl = ablation.ablation_analysis(model, images, labels, kind="zero", top_k=3)
    distances = torch.rand(12, *abl.shape, generator=gen, dtype=torch.float64) * 20
    return dict(
        lens=lens.logit_lens_analysis(model, images, labels), dla=lens.attribution_analysis(model, images, labels),
        ablation=abl, link=ablation.link_analysis(distances, abl, resamples=50),
        resid=patching.patching_analysis(model, images[:4], labels[:4], min_gap=-1e9),
        head=patching.patching_analysis(model, images[:4], labels[:4], what="head", min_gap=-1e9))


def test_lens_figure_draws_each_reading_of_the_result(results):
    result = results["lens"]
    fig = F.lens_figure(result)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 3 * len(result.readings)  # accuracy, agreement, KL per reading
    for r in range(len(result.readings)):
        acc, agree, kl = lines[3 * r: 3 * r + 3]
        np.testing.assert_allclose(acc.y, result.mean("correct")[r].numpy())
        np.testing.assert_allclose(agree.y, result.mean("agree")[r].numpy())
        np.testing.assert_allclose(kl.y, result.mean("kl")[r].numpy())
    band = next(t for t in fig.data if t.fill == "toself")  # the first reading's accuracy interval
    low, high = result.interval("correct")
    depth = result.depth + 1
    np.testing.assert_allclose(band.y[:depth], high[0].numpy())
    np.testing.assert_allclose(band.y[depth:], low[0].numpy()[::-1])


def test_ablation_matrix_is_the_mean_with_the_interval_on_hover(results):
    result = results["ablation"]
    fig = F.ablation_matrix_figure(result, selected=(1, 0))
    heat = fig.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), result.mean("head_accuracy").numpy())
    low, high = result.interval("head_accuracy")
    np.testing.assert_allclose(np.asarray(heat.customdata)[..., 0], low.numpy())
    np.testing.assert_allclose(np.asarray(heat.customdata)[..., 1], high.numpy())
    assert (fig.data[1].x[0], fig.data[1].y[0]) == (1, 2)  # the selected head outlined, numbered from 1
    logit = F.ablation_matrix_figure(result, "logit").data[0]
    np.testing.assert_allclose(np.asarray(logit.z), result.mean("head_logit").numpy())


def test_branches_figure_draws_whole_branches_and_the_top_heads(results):
    result = results["ablation"]
    fig = F.ablation_branches_figure(result, "logit")
    bars = [t for t in fig.data if t.type == "bar"]
    np.testing.assert_allclose(bars[0].y, result.mean("attn_logit").numpy())
    np.testing.assert_allclose(bars[1].y, result.mean("mlp_logit").numpy())
    low, _ = result.interval("mlp_logit")
    np.testing.assert_allclose(bars[1].error_y.arrayminus, (result.mean("mlp_logit") - low).numpy())
    top = fig.data[-1]
    np.testing.assert_allclose(top.y, result.mean("top_logit").numpy())
    assert list(top.x) == [1, 2, 3]
    assert top.customdata[0] == f"+ layer {result.top_heads[0][0] + 1} head {result.top_heads[0][1] + 1}"


def test_attribution_figure_draws_head_means_and_the_other_parts(results):
    result = results["dla"]
    fig = F.attribution_figure(result)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), result.head_true.double().mean(0).numpy())
    np.testing.assert_allclose(np.asarray(fig.data[1].z), result.head_margin.double().mean(0).numpy())
    bar = fig.data[2]
    parts = ["embed", "L0 attn bias", "L0 mlp", "L1 attn bias", "L1 mlp"]
    assert list(bar.x) == ["embedding", "attn bias 1", "MLP 1", "attn bias 2", "MLP 2"]
    np.testing.assert_allclose(bar.y, result.true[:, [result.parts.index(p) for p in parts]].double().mean(0))


def test_patching_figure_maps_each_layer_and_titles_the_class_token(results):
    result = results["resid"]
    fig = F.patching_figure(result)
    maps = result.patch_maps()
    assert len(fig.data) == len(maps)
    for i, trace in enumerate(fig.data):
        np.testing.assert_allclose(np.asarray(trace.z), maps[i].numpy())
    titles = [a.text for a in fig.layout.annotations]
    depth = len(maps) - 1  # rows: entering each block, then after the last
    names = [f"entering layer {i + 1}" for i in range(depth)] + [f"after layer {depth}"]
    assert titles == [f"{n}<br>class token {float(result.mean()[i, 0]):.2f}" for i, n in enumerate(names)]
    assert len(fig.layout.shapes) == len(result.region)  # the corrupted patches outlined
    head = F.patching_figure(results["head"])
    np.testing.assert_allclose(np.asarray(head.data[0].z), results["head"].mean().numpy())


def test_link_figure_has_one_point_per_head_with_interval_bars(results):
    link, result = results["link"], results["ablation"]
    fig = F.link_figure({"a": link, "b": link}, {"a": result, "b": result}, {"a": 17.0, "b": 19.0})
    points = [t for t in fig.data if t.mode == "markers"]
    assert len(points) == 2 * result.shape[0]  # one trace per layer per panel
    xs = np.concatenate([p.x for p in points[: result.shape[0]]])
    ys = np.concatenate([p.y for p in points[: result.shape[0]]])
    np.testing.assert_allclose(xs, link.distance.flatten().numpy())
    np.testing.assert_allclose(ys, link.effect.flatten().numpy())
    _, high = result.interval("head_accuracy")
    np.testing.assert_allclose(points[0].error_y.array, (high[0] - link.effect[0]).numpy())
    lines = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert sorted(s.x0 for s in lines) == [17.0, 19.0]  # the uniform line of each model


def _view(epoch, ablated=None, lens_accuracy=None):
    return InsideView(epoch=epoch, step=10 * epoch, images=64, grid=(4, 4), patch_size=(8, 8), num_prefix_tokens=1,
                      distance=[[5.0, 9.0], [12.0, 14.0]], entropy=[[1.0, 1.0], [1.0, 1.0]], uniform=13.0,
                      position_distance=0.1, position_row_column=0.0, mirror=0.0, mirror_neighbour=0.0,
                      filter_variance_first=0.1, filter_variance_k=0.5, filter_k=4, head_ablation=ablated,
                      lens_accuracy=lens_accuracy)


def test_over_training_figures_draw_the_views():
    views = [_view(e, [[0.01 * e, 0.0], [-0.01, 0.02]], [0.1, 0.2 + 0.1 * e, 0.3 + 0.1 * e]) for e in (1, 2, 3)]
    np.testing.assert_allclose(np.asarray(F.inside_ablation_figure(views[1]).data[0].z), views[1].head_ablation)
    fig = F.inside_lens_figure([_view(0), *views], epoch=2)
    assert [t.name for t in fig.data] == ["embedding", "layer 1", "layer 2"]
    assert list(fig.data[2].x) == [1, 2, 3]  # the view without lens accuracy is left out
    np.testing.assert_allclose(fig.data[2].y, [v.lens_accuracy[2] for v in views])
    with pytest.raises(ValueError, match="holds no head ablation"):
        F.inside_ablation_figure(_view(4))
    with pytest.raises(ValueError, match="no inside view holds logit-lens accuracy"):
        F.inside_lens_figure([_view(4)])


def test_head_effect_figure_shows_the_head_and_its_effect():
    maps = torch.rand(3, 4, 4)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    fig = F.head_effect_figure(maps, images, ["a", "b", "c"], 1, 0, (0.2, 0.1, 0.3))
    heat = [t for t in fig.data if t.type == "heatmap"]
    np.testing.assert_allclose(np.asarray(heat[2].z), (maps[2] / maps[2].max()).numpy(), rtol=1e-6)
    bar = next(t for t in fig.data if t.type == "bar")
    assert bar.y == (0.2,) and bar.error_y.array == pytest.approx((0.1,)) and bar.error_y.arrayminus[0] == \
        pytest.approx(0.1)
    assert fig.layout.title.text.startswith("Layer 2, head 1")
