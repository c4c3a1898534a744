import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.serializers import _py_to_js

from vitlab.analysis import metrics
from vitlab.analysis.distance import DistanceResult
from vitlab.analysis.filters import FiltersResult
from vitlab.analysis.positions import PositionResult
from vitlab.views import figures
from vitlab.views import style


def _strict_json(fig):
    """The figure as a FigureWidget sends it to the browser: strict JSON, so no NaN or inf."""
    return json.dumps(_py_to_js(go.FigureWidget(fig)._widget_data, None), allow_nan=False)


def _text(values):
    """Table texts as read (non-breaking spaces inside a line, ``<br>`` where a long text wraps)."""
    return [str(v).replace("<br>", " ").replace("\xa0", " ") for v in values]


def _random_sim(rows, cols):
    return torch.rand(rows, cols, rows, cols, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _distances(mean: torch.Tensor, random_init: torch.Tensor | None = None, layers=None, **context) -> DistanceResult:
    """A distance result whose every image has the per-head distances ``mean`` (layers, heads)."""
    return DistanceResult.from_per_image(mean[None].expand(3, -1, -1).clone(), context.pop("uniform", 16.0),
                                         random_init, layers, **context)


def test_mosaic_places_each_tile_and_hover_labels():
    rows, cols = 3, 5
    sim = _random_sim(rows, cols)
    z, custom = figures._tile_mosaic(sim)
    assert z.shape == (rows * rows + rows - 1, cols * cols + cols - 1)
    covered = np.zeros(z.shape, dtype=bool)
    for i in range(rows):
        for j in range(cols):
            for k in range(rows):
                for l in range(cols):
                    y, x = i * (rows + 1) + k, j * (cols + 1) + l
                    assert z[y, x] == np.float32(sim[i, j, k, l])
                    assert tuple(custom[y, x]) == (i + 1, j + 1, k + 1, l + 1)
                    assert figures.mosaic_tile(sim.shape, x, y) == (i, j)
                    covered[y, x] = True
    assert np.isnan(z[~covered]).all()  # the gaps between tiles stay empty
    gaps = np.argwhere(~covered)
    assert all(figures.mosaic_tile(sim.shape, x, y) is None for y, x in gaps)


def test_position_similarity_figure_is_readable():
    fig = figures.position_similarity_figure(PositionResult.from_similarity(_random_sim(4, 4)), title="demo")
    heat = fig.data[0]
    assert (heat.zmin, heat.zmax) == (-1, 1)
    assert fig.layout.xaxis.title.text == "Input patch column" and fig.layout.yaxis.title.text == "Input patch row"
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.scaleanchor == "x"
    assert list(fig.layout.xaxis.ticktext) == ["1", "2", "3", "4"]
    assert fig.layout.title.text == "demo"
    assert fig.layout.title.xanchor == "left"  # clear of the mode bar at the top right
    assert np.isnan(np.asarray(heat.z, dtype=float)[4, 0])  # the gaps stay empty ...
    _strict_json(fig)  # ... and serialise


def test_position_similarity_figure_prints_the_scores_and_their_random_init_reference():
    sim = _random_sim(4, 5)
    structure, mirror = metrics.position_structure(sim, (4, 5)), metrics.mirror_score(sim, (4, 5))
    numbers = lambda fig: re.findall(r"-?\d+\.\d+", fig.layout.annotations[0].text)  # noqa: E731
    alone = figures.position_similarity_figure(PositionResult.from_similarity(sim))
    assert numbers(alone) == [f"{x:.2f}" for x in (structure.closeness, structure.row_column, mirror.mirror,
                                                    mirror.neighbour)]
    assert alone.layout.annotations[0].text.count("<br>") == 2  # one line per score
    reference = [(metrics.PositionStructure(d, rc), metrics.MirrorScore(m, n))
                 for d, rc, m, n in ((0.1, -0.2, 0.3, 0.5), (0.3, 0.0, 0.1, 0.4), (-0.1, 0.05, 0.2, 0.6))]
    shown = numbers(figures.position_similarity_figure(PositionResult.from_similarity(sim, reference)))
    # each score, then its random-init mean [min, max] over the three seeds
    assert shown == [f"{structure.closeness:.2f}", "0.10", "-0.10", "0.30", f"{structure.row_column:.2f}", "-0.05",
                     "-0.20", "0.05", f"{mirror.mirror:.2f}", f"{mirror.neighbour:.2f}", "0.20", "0.10", "0.30",
                     "0.50", "0.40", "0.60"]


def test_explained_variance_figure_draws_the_random_init_reference():
    ratio = torch.tensor([0.5, 0.2, 0.1])
    reference = torch.tensor([[0.2, 0.2, 0.2], [0.3, 0.2, 0.1], [0.1, 0.1, 0.1]])  # (seeds, k)
    fig = figures.explained_variance_figure(FiltersResult.from_ratios(ratio, reference, k=3))
    np.testing.assert_allclose(fig.data[1].y, [0.5, 0.7, 0.8])  # the model's cumulative curve
    band, mean = fig.data[2], fig.data[3]
    np.testing.assert_allclose(mean.y, [0.2, 1.1 / 3, 0.5])  # mean of the cumulative sums
    np.testing.assert_allclose(band.y, [0.3, 0.5, 0.6, 0.3, 0.2, 0.1])  # max forward, min back
    assert "first 3 hold 80.0%<br>" in fig.layout.title.text
    assert "<br>(random init 50.0% [30.0, 60.0] over seeds)" in fig.layout.title.text
    assert len(figures.explained_variance_figure(FiltersResult.from_ratios(ratio)).data) == 2
    two = figures.explained_variance_figure(FiltersResult.from_ratios(ratio, reference, k=2))  # the first k only
    np.testing.assert_allclose(two.data[3].y, [0.2, 1.1 / 3])
    _strict_json(fig)


def test_patch_similarity_figure_shows_that_patch():
    sim = _random_sim(3, 4)
    fig = figures.patch_similarity_figure(PositionResult.from_similarity(sim), 2, 1)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), sim[2, 1].numpy())
    assert (fig.data[1].x[0], fig.data[1].y[0]) == (2, 3)  # 1-based marker on the patch
    assert fig.layout.xaxis.dtick == 1 and fig.layout.yaxis.dtick == 1  # no half-step ticks on a small grid


def test_tile_mosaic_with_rectangular_tiles():
    tiles = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    z, custom = figures._tile_mosaic(tiles)
    assert z.shape == (2 * 5 - 1, 3 * 6 - 1)
    for a in range(2):
        for b in range(3):
            np.testing.assert_array_equal(z[a * 5 : a * 5 + 4, b * 6 : b * 6 + 5], tiles[a, b].numpy())
            assert figures.mosaic_tile(tiles.shape, b * 6 + 4, a * 5 + 3) == (a, b)
            assert tuple(custom[a * 5 + 3, b * 6 + 4]) == (a + 1, b + 1, 4, 5)


def test_embedding_filters_figure_scales_each_component():
    filters = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    fig = figures.embedding_filters_figure(FiltersResult.from_ratios(torch.full((5,), 0.1), k=5, filters=filters),
                                           cols=3)
    img = np.asarray(fig.data[0].z)
    assert img.shape == (2 * 5 - 1, 3 * 5 - 1, 3)
    for i in range(5):
        y, x = (i // 3) * 5, (i % 3) * 5
        f = filters[i]
        expected = ((f - f.min()) / (f.max() - f.min())).permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(img[y : y + 4, x : x + 4], expected, atol=0.51)
    assert "PC 2: 10.0%" in fig.data[0].hovertext[0][5]


@pytest.mark.parametrize("k", [1, 7, 8, 9, 13, 15, 16, 22, 28])
def test_embedding_filters_mosaic_fills_its_rows_evenly(k):
    """No lone tile wrapped onto a last row (8 components: 7 + 1 was the bug): the last row is at least half full."""
    p = 4
    filters = torch.randn(k, 3, p, p, generator=torch.Generator().manual_seed(0))
    fig = figures.embedding_filters_figure(FiltersResult.from_ratios(torch.full((k,), 1 / k), k=k, filters=filters))
    height, width, _ = np.asarray(fig.data[0].z).shape
    rows, cols = (height + 1) // (p + 1), (width + 1) // (p + 1)
    labels = [t for row in fig.data[0].hovertext[::p + 1] for t in row[::p + 1]]  # one text per tile, row by row
    assert rows * cols >= k and cols <= figures.FILTER_COLUMNS and rows == -(-k // figures.FILTER_COLUMNS)
    assert 2 * sum(bool(t) for t in labels[(rows - 1) * cols:]) >= cols, (k, rows, cols)
    assert fig.layout.plot_bgcolor == "white"  # no coloured band where the image does not fill the plot
    if k == 8:
        assert (rows, cols) == (2, 4)


def test_attention_distance_figure_has_a_trace_per_head_and_the_reference():
    d = torch.rand(4, 3) * 20
    fig = figures.attention_distance_figure(_distances(d, cnn_fields=[("a", 3.0), ("b", 7.0)], diagonal=40.0),
                                            cnn="resnet")
    assert len(fig.data) == 5 and fig.data[0].name == "uniform attention (16.0 px)"  # no random init: no band
    assert fig.data[-1].name == "resnet receptive field"
    for h in range(3):
        np.testing.assert_allclose(fig.data[1 + h].y, d[:, h].numpy(), rtol=1e-6)
        assert list(fig.data[1 + h].x) == [1, 2, 3, 4]  # layers shown 1-based
    assert fig.layout.yaxis.range == (0, 40) and "pixels" in fig.layout.yaxis.title.text
    assert fig.layout.xaxis.range == (0.5, 4.5)


def test_attention_distance_figure_draws_uniform_and_random_init_references():
    d = torch.rand(4, 3) * 20
    random = torch.rand(3, 4, 3) * 10 + 25  # (seeds, layers, heads)
    fig = figures.attention_distance_figure(_distances(d, random, uniform=16.5))
    band, line, *heads = fig.data
    assert [h.name for h in heads] == ["head 1", "head 2", "head 3"]
    for h, trace in enumerate(heads):
        np.testing.assert_allclose(trace.y, d[:, h].numpy(), rtol=1e-6)
    assert line.name == "uniform attention (16.5 px)" and list(line.y) == [16.5, 16.5]
    assert list(line.x) == [0.5, 4.5]  # across the whole depth axis
    assert band.name == "random init (3 seeds)" and band.fill == "toself" and band.showlegend is not False
    low = [float(random[:, i].min()) for i in range(4)]
    high = [float(random[:, i].max()) for i in range(4)]
    assert list(band.x) == [1, 2, 3, 4, 4, 3, 2, 1]
    np.testing.assert_allclose(band.y, high + low[::-1], rtol=1e-6)
    assert fig.layout.yaxis.range[1] == pytest.approx(max(high) * 1.1, rel=1e-6)  # the band fits in
    fig = figures.attention_distance_figure(_distances(torch.rand(2, 3), torch.rand(2, 2, 3), layers=[2, 4]))
    assert fig.data[0].name == "random init (2 seeds)" and list(fig.data[0].x) == [3, 5, 5, 3]
    assert fig.layout.xaxis.range == (0.5, 5.5)  # up to the deepest layer shown
    one = figures.attention_distance_figure(_distances(torch.rand(1, 2), torch.tensor([[[4.0, 6.0]]])))
    assert one.data[0].name == "random init (1 seed)"
    assert list(one.data[0].x) == pytest.approx([0.6, 1.4, 1.4, 0.6]) and list(one.data[0].y) == [6, 6, 4, 4]


def test_attention_distance_figure_clips_the_reference_and_follows_depth():
    fields = [("conv1", 3.0), ("layer1.0", 7.0), ("layer2.0", 19.0), ("layer3.0", 51.0), ("layer4.0", 109.0)]
    result = _distances(torch.rand(6, 2) * 20, cnn_fields=fields, diagonal=45.25, depth=6)
    fig = figures.attention_distance_figure(result, cnn="cnn")
    line = fig.data[-1]
    assert line.name == "cnn receptive field"
    assert line.x[0] == 1 and line.x[-1] == 6 and np.allclose(np.diff(line.x), 1.25)  # spread over the depth
    assert list(line.y) == [3.0, 7.0, 19.0, 45.25, 45.25]  # inside the plot ...
    assert [c[1] for c in line.customdata] == [r for _, r in fields]  # ... the hover keeps the true value
    assert fig.layout.xaxis.range == (0.5, 6.5)
    note = fig.layout.annotations[0].text
    assert "layer3.0" in note and "109" in note


def test_long_titles_break_before_the_mode_bar():
    title = "vit_tiny_c10: mean attention distance, 128 CIFAR-10 test images, 12-13 per class"
    fig = figures.attention_distance_figure(_distances(torch.rand(6, 2)), title=title)
    assert fig.layout.title.text == title.replace("distance, ", "distance,<br>")
    assert fig.layout.margin.t == 74 and fig.layout.title.x < 0.1 and fig.layout.title.xanchor == "left"
    assert figures.attention_distance_figure(_distances(torch.rand(6, 2)), title="short").layout.title.text == "short"
    longer = "vit_tiny_c10: mean attention distance (keep class-token share), 16 CIFAR-10 test images, 1-2 per class"
    fig = figures.attention_distance_figure(_distances(torch.rand(6, 2)), title=longer)
    lines = fig.layout.title.text.split("<br>")
    limit = (fig.layout.width - 190) // 9  # characters left of the mode bar
    assert len(lines) == 3 and all(len(line) <= limit for line in lines) and " ".join(lines) == longer
    assert fig.layout.margin.t == 50 + 2 * 24


def test_attention_overlay_aligns_patches_with_pixels():
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    mask = torch.rand(4, 6)
    fig = figures.attention_overlay_figure(image, mask, marker=(1, 2))
    heat = fig.data[-1]
    np.testing.assert_allclose(np.asarray(heat.z), mask.numpy(), rtol=1e-6)
    assert [t.type for t in fig.data] == ["image", "image", "heatmap"]  # the image stays visible beside the map
    assert heat.showscale is not False and heat.colorbar.title.text == "attention" and 0 < heat.opacity < 1
    # centre of patch (r, c) lands on pixel centre ((c + 0.5) * 8 - 0.5, (r + 0.5) * 8 - 0.5)
    assert heat.x0 + 2 * heat.dx == pytest.approx(2.5 * 8 - 0.5) and heat.dy == 8
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (15.5, 23.5, 7.5, 15.5)


def test_head_attention_figure_scales_each_map_to_its_maximum():
    maps = torch.rand(2, 3, 4, 4)
    fig = figures.head_attention_figure(maps)
    z = np.asarray(fig.data[0].z, dtype=float)
    for layer in range(2):
        for head in range(3):
            tile = z[layer * 5 : layer * 5 + 4, head * 5 : head * 5 + 4]
            np.testing.assert_allclose(tile, (maps[layer, head] / maps[layer, head].max()).numpy(), rtol=1e-6)
    _strict_json(fig)


def test_training_curves_and_zoo_table():
    records = [{"epoch": 1, "loss": 2.0, "train_accuracy": 0.3, "test_accuracy": 0.35},
               {"epoch": 2, "loss": 1.5, "train_accuracy": 0.5, "test_accuracy": 0.52}]
    fig = figures.training_curves_figure(records)
    assert list(fig.data[0].y) == [2.0, 1.5] and list(fig.data[2].y) == [0.35, 0.52]
    zoo = {"a": dict(family="vit", description="d", params=1234, test_accuracy=0.75),
           "b": dict(family="resnet", description="e", params=10, test_accuracy=None),
           "c": dict(family="vit", description="f", params=10, test_accuracy=0.4, objective="mpp")}
    table = figures.zoo_table(zoo).data[0]
    cells = table.cells.values
    assert _text(cells[0]) == ["a", "b", "c"] and cells[3][0] == "1,234"
    assert _text(cells[4]) == ["75.0%", "untrained", "no head; masked colours 40.0%"]
    assert table.cells.height >= 28  # room for underscores
    assert figures.training_curves_figure(records[:1]).layout.xaxis.dtick == 1  # no half epochs


def test_training_curves_say_when_train_accuracy_counts_dominant_labels():
    records = [dict(epoch=1, loss=2.0, train_accuracy=0.3, test_accuracy=0.35)]
    plain = {t.name for t in figures.training_curves_figure(records).data}
    mixed = {t.name for t in figures.training_curves_figure(records, mixed=True).data}
    assert "train accuracy" in plain and "train accuracy (dominant label of mixed images)" in mixed


def test_the_clipped_receptive_field_note_sits_above_the_plot_clear_of_the_line():
    """The ResNet line is clipped along the top edge: its note goes above the plot, in room added for it (notebook 03's
    line ran through "beyond 45 px")."""
    fields = [("conv1", 7.0), ("layer1", 20.0), ("layer2", 60.0), ("layer3", 200.0)]
    clipped = figures.attention_distance_figure(_distances(torch.full((4, 2), 10.0), cnn_fields=fields, diagonal=45.0))
    plain = figures.attention_distance_figure(_distances(torch.full((4, 2), 10.0), cnn_fields=fields[:2],
                                                         diagonal=45.0))
    note = next(a for a in clipped.layout.annotations if "beyond 45 px" in a.text)
    top = clipped.layout.yaxis.range[1]
    assert max(y for t in clipped.data for y in t.y) <= top  # every line and marker at or below the top edge
    assert note.yref in (None, "y") and note.y == top and note.yanchor == "bottom" and note.yshift >= 5  # above it
    assert "layer2" in note.text and "ResNet" in note.text
    assert not any("beyond" in a.text for a in plain.layout.annotations)
    assert clipped.layout.margin.t >= plain.layout.margin.t + 16  # room for the note under the title


def test_a_hybrids_stem_line_is_styled_apart_from_a_cnns_receptive_fields():
    result = _distances(torch.full((5, 2), 10.0), cnn_fields=[("conv1", 3.0), ("layer4", 40.0)], token_field=25.0,
                        diagonal=45.0)
    fig = figures.attention_distance_figure(result, name="stem")
    stem = next(t for t in fig.data if t.name == "stem's CNN stem receptive field (25 px)")
    cnn = next(t for t in fig.data if t.name.startswith("ResNet"))
    assert list(stem.x) == [1, 5] and list(stem.y) == [25.0, 25.0]
    assert (stem.line.dash, stem.line.color) == ("dashdot", style.family_color("hybrid", 2))
    assert (cnn.line.dash, cnn.line.color) == ("dot", "gray")
