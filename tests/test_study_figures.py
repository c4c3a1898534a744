import dataclasses
import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.serializers import _py_to_js

from vitlab.views import study_figures
from vitlab.views import style
from vitlab.records import ProbeRecord, RunRecord


def _strict_json(fig):
    """The figure as a FigureWidget sends it to the browser: strict JSON, so no NaN or inf."""
    return json.dumps(_py_to_js(go.FigureWidget(fig)._widget_data, None), allow_nan=False)


def _text(values):
    """Table texts as read (non-breaking spaces inside a line, ``<br>`` where a long text wraps)."""
    return [str(v).replace("<br>", " ").replace("\xa0", " ") for v in values]


def _sweep_records():
    """Two models, two sizes; the small size has three seeds with known accuracies."""
    records = []
    for model, family, flops in (("vit_a", "vit", 10.0), ("resnet_b", "resnet", 4.0)):
        for size, accs in ((100, [0.2, 0.3, 0.4]), (1000, [0.6])):
            for seed, acc in enumerate(accs):
                records.append(RunRecord(model=model, family=family, subset_size=size, seed=seed, epochs=1000 // size,
                                         test_accuracy=acc + (0.1 if family == "resnet" else 0.0),
                                         train_flops=flops * 1000, wall_seconds=60.0 * (seed + 1)))
    return records


def test_sweep_figure_means_and_error_bars_over_seeds():
    fig = study_figures.sweep_figure(_sweep_records())
    assert [t.name for t in fig.data] == ["vit_a (vit)", "resnet_b (resnet)"]  # ViTs first
    vit = fig.data[0]
    assert list(vit.x) == [100, 1000]
    np.testing.assert_allclose(vit.y, [0.3, 0.6])
    np.testing.assert_allclose(vit.error_y.array, [0.1, 0.0])  # sample std of 0.2, 0.3, 0.4; one seed: 0
    assert [list(c[:3]) for c in vit.customdata] == [[3, 10, 100], [1, 1, 1000]]
    assert vit.customdata[0][3] == pytest.approx(2.0)  # mean of 1, 2 and 3 minutes
    assert fig.layout.xaxis.type == "log"
    flops = study_figures.sweep_figure(_sweep_records(), x="train_flops_total", models=["resnet_b"])
    assert len(flops.data) == 1 and list(flops.data[0].x) == [4000.0, 4000.0]
    np.testing.assert_allclose(flops.data[0].y, [0.4, 0.7])
    with pytest.raises(ValueError, match="x must be"):
        study_figures.sweep_figure(_sweep_records(), x="params")
    probed = [dataclasses.replace(r, fewshot={5: r.test_accuracy / 2}) for r in _sweep_records() if r.model == "vit_a"]
    fig = study_figures.sweep_figure(probed + _sweep_records(), shots=5)
    assert [t.name for t in fig.data] == ["vit_a (vit)"]  # runs without probes are left out
    np.testing.assert_allclose(fig.data[0].y, [0.15, 0.3])
    assert fig.layout.yaxis.title.text == "5-shot linear probe accuracy"
    assert fig.data[0].line.color == style.family_color("vit", 0)


def test_sweep_figures_flops_axis_is_total_compute_pre_training_included():
    scratch = _sweep_records()[:3]  # vit_a at 100 images, three seeds: 10,000 FLOPs each
    tuned = [dataclasses.replace(r, init="mpp:enc", images_seen_total=r.images_seen + 900,
                                 train_flops_total=r.train_flops + 9e5) for r in scratch]
    fig = study_figures.sweep_figure(scratch + tuned, x="train_flops_total")
    assert {t.name: list(t.x) for t in fig.data} == {"vit_a (vit)": [1e4], "vit_a ← mpp:enc (vit)": [1e4 + 9e5]}
    assert "pre-training included" in fig.layout.xaxis.title.text
    table = study_figures.sweep_table(scratch + tuned).data[0].cells.values
    assert list(table[5]) == [f"{1e4:.2e}", f"{1e4 + 9e5:.2e}"]


def test_sweep_figure_draws_the_three_families_in_order_each_in_its_colour_and_marker():
    hybrid = [dataclasses.replace(r, model="hybrid_c", family="hybrid") for r in _sweep_records() if r.model == "vit_a"]
    fig = study_figures.sweep_figure(_sweep_records() + hybrid)
    assert [t.name for t in fig.data] == ["vit_a (vit)", "hybrid_c (hybrid)", "resnet_b (resnet)"]
    assert [t.marker.symbol for t in fig.data] == ["circle", "triangle-up", "square"]
    assert [t.line.color for t in fig.data] == [style.family_color(f, 0) for f in ("vit", "hybrid", "resnet")]
    assert len(set(style._FAMILY_COLORS["hybrid"]) & set(style._FAMILY_COLORS["vit"] +
                                                           style._FAMILY_COLORS["resnet"])) == 0


def test_sweep_table_lists_every_model_and_size():
    table = study_figures.sweep_table(_sweep_records()).data[0]
    cells = table.cells.values
    assert _text(cells[0]) == ["resnet_b", "resnet_b", "vit_a", "vit_a"]
    assert _text(cells[1]) == ["100", "1,000"] * 2 and _text(cells[3]) == ["3", "1", "3", "1"]
    assert _text(cells[4])[2] == "30.0% ± 10.0%" and cells[4][3] == "60.0%"
    assert _text(cells[6]) == ["2.0 min", "1.0 min"] * 2  # mean of 1, 2 and 3 minutes; one seed
    assert len(table.header.values) == 7
    # No text holds a plain space: plotly wraps such text by measuring it in the page, and a
    # table drawn off screen then shows empty cells (notebook 05 after Run All).
    assert not any(" " in str(v) for v in [*table.header.values, *(v for c in cells for v in c)])


def _probe_records():
    records = []
    for seed in (0, 1):
        for depth, layer in enumerate(["blocks.0", "blocks.1", "blocks.2"]):
            for pooling in ("cls", "mean"):
                for shots in (1, 5):
                    records.append(ProbeRecord(
                        model="vit", family="vit", layer=layer, depth=depth, pooling=pooling, shots=shots, seed=seed,
                        accuracy=0.1 * depth + 0.01 * shots + 0.02 * seed + (pooling == "cls") * 0.05))
        for depth, layer in enumerate(["stem", "layer1"]):
            for shots in (1, 5):
                records.append(ProbeRecord(model="resnet", family="resnet", layer=layer, depth=depth, pooling="gap",
                                           shots=shots, seed=seed, accuracy=0.3 * depth + 0.01 * shots))
    return records


def test_probe_depth_figure_puts_models_on_a_relative_depth_axis():
    fig = study_figures.probe_depth_figure(_probe_records(), shots=5)
    assert [t.name for t in fig.data] == ["vit · cls", "vit · mean", "resnet · gap"]
    np.testing.assert_allclose(fig.data[0].x, [0, 0.5, 1])
    np.testing.assert_allclose(fig.data[2].x, [0, 1])
    assert [c[0] for c in fig.data[0].customdata] == ["layer 1", "layer 2", "layer 3"]  # blocks.0-2 in the hover
    np.testing.assert_allclose(fig.data[0].y, [0.05 + 0.05 + 0.01, 0.15 + 0.05 + 0.01, 0.25 + 0.05 + 0.01])
    np.testing.assert_allclose(fig.data[0].error_y.array, [np.std([0, 0.02], ddof=1)] * 3, atol=1e-12)
    assert fig.data[2].line.color == style.family_color("resnet", 0)  # colour from the record's family
    head = [dataclasses.replace(r, pooling="head") for r in _probe_records() if r.model == "vit"]
    pooled_by_head = study_figures.probe_depth_figure(head, shots=5)
    assert pooled_by_head.data[0].line.color == style.family_color("vit", 0)  # not guessed from the pooling
    with pytest.raises(ValueError, match="no probe records with 25 shots"):
        study_figures.probe_depth_figure(_probe_records(), shots=25)


def test_probe_shots_figure_follows_the_chosen_layers():
    fig = study_figures.probe_shots_figure(_probe_records(), [("resnet", "layer1", "gap"), ("vit", "blocks.0", "mean")])
    assert list(fig.data[0].x) == [1, 5]
    assert [t.name for t in fig.data] == ["resnet · stage 1 · gap", "vit · layer 1 · mean"]  # layers from 1
    np.testing.assert_allclose(fig.data[0].y, [0.31, 0.35])
    np.testing.assert_allclose(fig.data[1].y, [0.02, 0.06])
    with pytest.raises(ValueError, match="no probe records"):
        study_figures.probe_shots_figure(_probe_records(), [("vit", "blocks.9", "cls")])


def test_probe_legends_tell_every_series_apart_two_vits_included():
    """Two ViTs with two poolings each (notebook 07: the mpp encoder, vit_tiny_c10_e40) were four near-identical
    blues: now each model has a colour of its own hue, each of its series a dash of its own."""
    import colorsys

    records = _probe_records() + [dataclasses.replace(r, model="vit_b") for r in _probe_records() if r.model == "vit"]
    chosen = [(m, "blocks.2", p) for m in ("vit", "vit_b") for p in ("cls", "mean")] + [("resnet", "layer1", "gap")]
    for fig in (study_figures.probe_depth_figure(records, shots=5), study_figures.probe_shots_figure(records, chosen)):
        styles = [(t.line.color, t.line.dash) for t in fig.data]
        assert len(set(styles)) == len(styles) == 5, styles
        colours = {}
        for trace in fig.data:
            colours.setdefault(trace.name.split(" · ")[0], set()).add(trace.line.color)
        assert all(len(c) == 1 for c in colours.values()), colours  # one colour per model
        hues = [colorsys.rgb_to_hsv(*(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)))[0] * 360
                for (c,) in colours.values()]
        apart = [min(abs(a - b), 360 - abs(a - b)) for i, a in enumerate(hues) for b in hues[i + 1:]]
        assert min(apart) >= 20, (colours, hues)  # not shades of one hue
        assert colours["resnet"] == {style.family_color("resnet", 0)}  # the only ResNet keeps its family's colour


def test_cka_figure_rows_and_columns():
    cka = torch.tensor([[1.0, 0.5, 0.25], [0.1, 0.2, 0.3]])
    fig = study_figures.cka_figure(cka, ["b0", "b1"], ["s0", "s1", "s2"], "ViT", "ResNet")
    heat = fig.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), cka.numpy())
    assert list(heat.y) == ["b0", "b1"] and list(heat.x) == ["s0", "s1", "s2"] and (heat.zmin, heat.zmax) == (0, 1)
    assert fig.layout.xaxis.title.text == "ResNet" and fig.layout.yaxis.title.text == "ViT"
    with pytest.raises(ValueError, match="does not match"):
        study_figures.cka_figure(cka, ["b0"], ["s0", "s1", "s2"])


def test_inside_by_size_figure_draws_layer_lines_per_size_and_the_lowest_head_against_size():
    from test_records import _run_inside

    runs = [_run_inside(1000, 3.0, 3.2), _run_inside(100, 1.0, 1.2)]
    fig = study_figures.inside_by_size_figure(runs)
    lines = [t for t in fig.data if t.name and t.name.endswith("images")]
    assert [t.name for t in lines] == ["100 images", "1,000 images"]  # smallest first
    assert list(lines[0].y) == pytest.approx([1.5, 7.0])  # mean over heads per layer
    lowest = next(t for t in fig.data if t.name == "lowest layer, most local head")
    assert list(lowest.x) == [100, 1000] and list(lowest.y) == [1.0, 3.0]
    assert list(lowest.error_y.array) == pytest.approx([0.2, 0.2]) and list(lowest.error_y.arrayminus) == \
        pytest.approx([0.1, 0.1])  # the 95% interval over images
    uniform = [t for t in fig.data if t.name.startswith("uniform attention")]
    assert len(uniform) == 2 and all(list(t.y) == [4.2, 4.2] for t in uniform)
    assert fig.layout.xaxis2.type == "log"
    assert lowest.line.color == style.family_color("vit", 2) and lines[0].line.color.startswith("rgba(31, 119, 180,")
    green = study_figures.inside_by_size_figure([dataclasses.replace(r, family="hybrid") for r in runs])
    lowest = next(t for t in green.data if t.name == "lowest layer, most local head")
    assert lowest.line.color == style.family_color("hybrid", 2)
    assert green.data[0].line.color.startswith("rgba(44, 160, 44,")  # #2ca02c, faded by size
    with pytest.raises(ValueError, match="no inside views"):
        study_figures.inside_by_size_figure([])


# --- masked patch prediction ---------------------------------------------------------------------


def test_pretraining_figure_names_colour_accuracy_and_draws_each_guess_at_its_value():
    log = [dict(epoch=1, loss=4.0, train_accuracy=0.2, test_accuracy=0.25), dict(epoch=2, loss=3.0, train_accuracy=0.3,
                                                                                 test_accuracy=0.35)]
    fig = study_figures.pretraining_figure(log, {"neighbours' mean": 0.28, "most frequent": 0.05})
    names = [t.name for t in fig.data]
    assert "test images' corrupted patches" in names and "train images' corrupted patches" in names
    guesses = {t.name: set(t.y) for t in fig.data if t.name.startswith("guess")}
    assert guesses == {"guess: neighbours' mean (28.0%)": {0.28}, "guess: most frequent (5.0%)": {0.05}}
    assert "masked-patch colour accuracy" in [a.text for a in fig.layout.annotations]
    _strict_json(fig)


def test_mpp_example_figure_shows_the_targets_and_scores_each_image_by_hand():
    from vitlab.training import mpp
    from vitlab.models import build_model, preprocess

    torch.manual_seed(0)
    model = mpp.MaskedPatchPrediction(build_model({"zoo": "vit_micro_c10"}))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    example = mpp.masked_example(model, images, seed=3)
    fig = study_figures.mpp_example_figure(example)
    targets, c = mpp.draw_batch(images, 8, torch.Generator().manual_seed(3), "cpu")
    with torch.no_grad():
        predicted = model(preprocess(model.encoder, images, resize=False), c).argmax(-1)
    assert torch.equal(example.predicted, predicted) and torch.equal(example.targets, targets)
    for n in range(2):
        picked = c.corrupted[n]
        right = float((predicted[n][picked] == targets[n][picked]).float().mean())
        assert example.right[n] == right
        titles = [a.text for a in fig.layout.annotations]
        assert titles[3 + n] == f"prediction: {right:.0%} right"  # after the first row's three column titles
        # The target panel: each 8x8 patch drawn in the centre colour of its 3-bit bin.
        target_img = np.asarray(fig.data[4 * n + 2].z)
        for p in range(16):
            r, col = divmod(p, 4)
            k = int(targets[n, p])
            expected = [(k // 64 + 0.5) * 32, (k // 8 % 8 + 0.5) * 32, (k % 8 + 0.5) * 32]
            assert (target_img[8 * r : 8 * r + 8, 8 * col : 8 * col + 8] == expected).all()
        # The prediction panel: predicted colours on the scored patches, flat grey on the others.
        shown = np.asarray(fig.data[4 * n + 3].z)
        for p in range(16):
            r, col = divmod(p, 4)
            k = int(predicted[n, p])
            expected = [(k // 64 + 0.5) * 32, (k // 8 % 8 + 0.5) * 32, (k % 8 + 0.5) * 32] if c.corrupted[n, p] else 225
            assert (shown[8 * r : 8 * r + 8, 8 * col : 8 * col + 8] == expected).all()
        # What the encoder sees: masked patches are grey, the others show the patch they carry.
        seen = np.asarray(fig.data[4 * n + 1].z)
        for p in range(16):
            r, col = divmod(p, 4)
            tile = seen[8 * r : 8 * r + 8, 8 * col : 8 * col + 8]
            if c.kind[n, p] == mpp.MASKED:
                assert (tile == 128).all()
            else:
                sr, sc = divmod(int(c.source[n, p]), 4)
                assert (tile == images[n, :, 8 * sr : 8 * sr + 8, 8 * sc : 8 * sc + 8].permute(1, 2, 0).numpy()).all()
    assert sum(s.type == "rect" for s in fig.layout.shapes) == 2 * int(c.corrupted.sum())  # on input and prediction


def test_inside_comparison_figure_draws_each_models_layer_means_and_most_local_heads():
    from test_recipes import _view

    views = {"pre-trained": _view(1, 3.0), "scratch": _view(1, 12.0)}
    fig = study_figures.inside_comparison_figure(views)
    by_name = {t.name: list(t.y) for t in fig.data}
    assert by_name["pre-trained: mean over heads"] == pytest.approx(views["pre-trained"].layer_means)
    assert by_name["scratch: most local head"] == [12.0, 14.0]
    assert by_name["uniform attention (16.0 px)"] == [16.0, 16.0]
    _strict_json(fig)
    colours = {t.name: t.line.color for t in study_figures.inside_comparison_figure(views, families={"scratch": "hybrid"}).data}
    assert colours["scratch: mean over heads"] == style.family_color("hybrid", 0)  # its family's green
    assert colours["pre-trained: mean over heads"] == "#1f77b4"  # the palette's first colour, unchanged


