import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from plotly.serializers import _py_to_js

from vitlab import data, models
from vitlab.analysis import attention_maps, distance, metrics, references
from vitlab.analysis.capture import capture
from vitlab.analysis.distance import head_statistics, random_init_statistics
from vitlab.analysis.filters import filters_analysis
import ipywidgets
import plotly.graph_objects as go

from vitlab.views import explorers, readouts, study_explorers
from vitlab.views.controls import StaticFigure, show_figure
from vitlab.views.style import number, spread_text
from vitlab.training import zoo


@pytest.fixture
def two_models(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = models.build_model({"zoo": "vit_tiny_c10"})
        paths.append(str(models.save_model(model, tmp_path / f"m{seed}.safetensors")))
    return paths


def _strict_json(widget):
    """What the widget sends to the browser, as strict JSON (NaN would fail here, as in the browser)."""
    return json.dumps(_py_to_js(widget._widget_data, None), allow_nan=False)


def test_explorer_updates_figures_in_place(two_models):
    view = explorers.position_embedding_explorer(two_models)
    mosaic, detail = view.mosaic, view.detail
    before = np.array(mosaic.data[0].z, dtype=float)
    view.model.value = two_models[1]
    after = np.array(view.mosaic.data[0].z, dtype=float)
    assert view.mosaic is mosaic and view.detail is detail  # same widgets, new data
    expected = metrics.position_similarity(models.load_model(two_models[1], device="cpu"))
    assert after[0, 0] == pytest.approx(float(expected[0, 0, 0, 0]), abs=1e-6)
    assert not np.allclose(before, after, equal_nan=True)
    assert mosaic.layout.title.text == Path(two_models[1]).name and view.status.value == ""  # a file's name
    assert np.isnan(after[8, 0])  # a gap between tiles, sent as null
    _strict_json(view.mosaic)


def test_explorer_click_shows_that_patch(two_models):
    view = explorers.position_embedding_explorer(two_models)

    class Points:  # what plotly passes to a click handler
        xs, ys = [9 * 2 + 3], [9 * 5 + 1]  # tile (row 5, col 2) of an 8x8 mosaic

    view._clicked(view.mosaic.data[0], Points(), None)
    np.testing.assert_allclose(np.asarray(view.detail.data[0].z), view.sim[5, 2].numpy())
    assert view.detail.layout.title.text == "Patch (row 6, col 3)"


def test_explorer_shows_load_errors_without_losing_the_figure(two_models):
    view = explorers.position_embedding_explorer([*two_models, "resnet_tiny_c10"])
    z = np.array(view.mosaic.data[0].z, dtype=float)
    view.model.value = "resnet_tiny_c10"
    assert "resnet_tiny_c10: position similarity needs a ViT or hybrid" in view.status.value
    np.testing.assert_array_equal(np.array(view.mosaic.data[0].z, dtype=float), z)
    assert view.model.value == two_models[0] == view.shown  # the menu names the model the figure shows


def test_untrained_model_says_so_in_the_status_not_on_stderr(capfd):
    untrained = [n for n in zoo.available(family="vit") if not zoo.trained(n)]
    if not untrained:
        pytest.skip("every zoo ViT has a checkpoint")
    view = explorers.position_embedding_explorer(untrained[:1])
    assert "random weights" in view.status.value
    assert "random weights" not in capfd.readouterr().err


def _random_inits(spec, seeds):
    """Random-initialised models of ``spec``'s architecture, rebuilt here from its record under each seed."""
    record = models.load_model(spec, device="cpu").vitlab_arch
    built = []
    for seed in seeds:
        torch.manual_seed(seed)
        built.append(models.build_model(record))
    return built


def test_position_explorer_prints_scores_against_random_init(two_models, monkeypatch):
    view = explorers.position_embedding_explorer(two_models)
    assert view.SEEDS == (0, 1, 2)
    expected = []
    for model in _random_inits(two_models[0], view.SEEDS):
        sim = metrics.position_similarity(model)
        expected.append((metrics.position_structure(sim, (8, 8)), metrics.mirror_score(sim, (8, 8))))
    assert view.result.reference == expected  # the same numbers, exactly
    assert all(abs(s.closeness) < 0.1 and abs(s.row_column) < 0.1 for s, _ in expected)  # random init: no structure
    own, mirror = metrics.position_structure(view.sim, (8, 8)), metrics.mirror_score(view.sim, (8, 8))
    shown = re.findall(r"-?\d+\.\d+", view.mosaic.layout.annotations[0].text)  # the numbers under the mosaic
    def spread(values):
        return [number(sum(values) / 3, 2), number(min(values), 2), number(max(values), 2)]
    assert shown == [number(own.closeness, 2), *spread([s.closeness for s, _ in expected]),
                     number(own.row_column, 2), *spread([s.row_column for s, _ in expected]),
                     number(mirror.mirror, 2), number(mirror.neighbour, 2), *spread([m.mirror for _, m in expected]),
                     *spread([m.neighbour for _, m in expected])]
    # Kept per model: switching away and back builds no model again.
    built = []
    monkeypatch.setattr(references, "random_init",
                        lambda *a: built.append(a) or models.build_model(a[0].vitlab_arch))
    view.model.value = two_models[1]
    assert len(built) == 3
    view.model.value = two_models[0]
    assert len(built) == 3 and view.result.reference == expected


def test_embedding_filters_explorer_draws_random_init_reference(two_models):
    view = explorers.EmbeddingFiltersExplorer(two_models, k=6)
    ratios = torch.stack([metrics.embedding_filters(m, k=48)[1] for m in _random_inits(two_models[0], view.SEEDS)])
    torch.testing.assert_close(view.result.reference, ratios, rtol=0, atol=0)
    cumulative = ratios[:, :6].double().cumsum(1)  # (seeds, k)
    np.testing.assert_allclose(view.variance.data[3].y, cumulative.mean(0).numpy(), rtol=1e-12)
    assert spread_text(100 * cumulative[:, -1].numpy(), 1, "%") in view.variance.layout.title.text
    view.components.value = 10
    assert view.result.k == 10
    assert len(view.variance.data[3].y) == 10


def test_embedding_filters_explorer_follows_model_and_components(two_models):
    view = explorers.EmbeddingFiltersExplorer(two_models, k=5)
    before = np.asarray(view.filters.data[0].z).copy()
    view.components.value = 8
    assert len(view.variance.data[0].y) == 8
    view.model.value = two_models[1]
    assert not np.array_equal(before, np.asarray(view.filters.data[0].z))
    _, ratio = metrics.embedding_filters(models.load_model(two_models[1], device="cpu"), k=8)
    np.testing.assert_allclose(view.variance.data[0].y, ratio.numpy(), rtol=1e-5)
    assert view.components.style.description_width == "initial"  # not "compone..."


def test_attention_distance_explorer_streams_the_chosen_images(two_models):
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    view = explorers.AttentionDistanceExplorer(two_models, images, default=16, reference="resnet_tiny_c10",
                                             source="CIFAR-10 test set")
    described = data.describe_images(16, "CIFAR-10 test set")
    assert view.images.value == 16 and view.status.value == described
    assert described in view.figure.layout.title.text.replace("<br>", " ")
    assert view.convention.value.startswith("paper's")  # the paper's convention by default
    expected = head_statistics(models.load_model(two_models[0], device="cpu"), images[:16])["distance"]
    for head in range(expected.shape[1]):
        np.testing.assert_allclose(_head(view.figure, head).y, expected[:, head].numpy(), rtol=1e-5)
    reference = view.figure.data[-1]
    assert reference.name == "resnet_tiny_c10 receptive field"
    assert tuple(view.figure.layout.xaxis.range) == (0.5, 6.5)  # the 6-block ViT's depth
    top = view.figure.layout.yaxis.range[1]
    assert top == pytest.approx(32 * 2**0.5) and max(reference.y) <= top  # clipped to the image diagonal
    assert any("beyond" in a.text for a in view.figure.layout.annotations)
    view.convention.value = "renormalised over patches"
    assert "press Compute" in view.status.value  # the figure is stale until Compute
    view.run.click()
    renormalised = head_statistics(models.load_model(two_models[0], device="cpu"), images[:16],
                                   renormalize=True)["distance"]
    np.testing.assert_allclose(_head(view.figure, 0).y, renormalised[:, 0].numpy(), rtol=1e-5)
    assert view.status.value == described


def _head(fig, h):
    return next(t for t in fig.data if t.name == f"head {h + 1}")


def _trace(fig, start):
    return next(t for t in fig.data if t.name.startswith(start))


def test_attention_distance_explorer_draws_uniform_and_random_init_references(two_models, monkeypatch):
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    calls = []
    counted = lambda *a, **k: calls.append(k["renormalize"]) or random_init_statistics(*a, **k)  # noqa: E731
    monkeypatch.setattr(distance, "random_init_statistics", counted)
    view = explorers.AttentionDistanceExplorer(two_models, images, default=16)
    # independent recomputation: the same architecture record, built under seeds 0, 1, 2
    record = models.load_model(two_models[0], device="cpu").vitlab_arch
    expected = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        expected.append(head_statistics(models.build_model(record), images[:16])["distance"])
    expected = torch.stack(expected)  # (seeds, layers, heads)
    torch.testing.assert_close(view.result.random_init, expected)
    band = _trace(view.figure, "random init")
    assert band.name == "random init (3 seeds)"
    low, high = expected.amin((0, 2)).tolist(), expected.amax((0, 2)).tolist()
    np.testing.assert_allclose(band.y, high + low[::-1], rtol=1e-6)
    centres = [(r, c) for r in range(8) for c in range(8)]  # vit_tiny_c10: 8x8 grid of 4-pixel patches
    mean = sum(math.hypot(4 * (a - c), 4 * (b - d)) for a, b in centres for c, d in centres) / 64**2
    line = _trace(view.figure, "uniform attention")
    assert list(line.y) == pytest.approx([mean * 64 / 65] * 2)  # the class token's share carries no distance
    title = view.figure.layout.title.text.replace("<br>", " ")
    assert f"uniform {mean * 64 / 65:.1f} px" in title and f"random init {expected.min():.1f}-" in title
    assert calls == [False]
    view.convention.value = "renormalised over patches"
    view.run.click()
    assert list(_trace(view.figure, "uniform attention").y) == pytest.approx([mean] * 2)
    assert f"uniform {mean:.1f} px" in view.figure.layout.title.text.replace("<br>", " ")
    view.convention.value = "paper's: raw weights over patches"
    view.run.click()  # back to a convention already computed: the analysis comes from the cache
    assert calls == [False, True]
    torch.testing.assert_close(view.result.random_init, expected)


def test_attention_maps_explorer_click_layer_and_discard(two_models):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    view = explorers.AttentionMapsExplorer(two_models, images, ["a", "b", "c"])
    view.select(2, 5)
    view.layer.value, view.head.value = 3, 1
    cap = capture(models.load_model(two_models[0], device="cpu"), images[:1])
    expected = cap.attn[2][0, 1, 1 + 2 * 8 + 5, 1:].reshape(8, 8)
    np.testing.assert_allclose(np.asarray(view.patch.data[-1].z), expected.numpy(), rtol=1e-5)
    before = np.asarray(view.rollout.data[-1].z).copy()
    view.discard.value = 0.5
    expected = attention_maps.attention_rollout(list(cap.attn.values()), 1, "mean", 0.5)[0].reshape(8, 8)
    np.testing.assert_allclose(np.asarray(view.rollout.data[-1].z), expected.numpy(), rtol=1e-5)
    assert not np.allclose(before, expected.numpy())
    assert view.rollout.data[-1].showscale is not False  # a colour bar

    class Points:
        point_inds = [[4, 1]]

    view.rollout.data[-1]._click_callbacks[0](view.rollout.data[-1], Points(), None)  # still attached after redraws
    assert view.selected == (4, 1) and view.patch.layout.title.text.startswith("patch (5, 2) attends")
    view.image.value = 2
    assert view.heads.layout.title.text.endswith(", c")
    _strict_json(view.heads)


def test_attention_maps_explorer_of_a_pooling_vit_shows_the_mean_patch_rows(tmp_path):
    torch.manual_seed(2)
    model = models.build_model({"timm": "vit_tiny_patch16_224", "kwargs": dict(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5, class_token=False,
        global_pool="avg")})
    path = str(models.save_model(model, tmp_path / "pooling.safetensors"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    view = explorers.AttentionMapsExplorer([path], images, ["a", "b"])
    cap = capture(models.load_model(path, device="cpu"), images[:1])
    rollout = attention_maps.attention_rollout(list(cap.attn.values()), 0, pool="avg")[0].reshape(4, 4)
    np.testing.assert_allclose(np.asarray(view.rollout.data[-1].z), rollout.numpy(), rtol=1e-5)
    assert view.heads.layout.title.text.replace("<br>", " ").startswith("mean patch-token attention per layer and head")
    assert "this model pools, it has no class token" in view.readout.value


def test_training_monitor_appends_epochs():
    monitor = explorers.TrainingMonitor()
    monitor.update({"epoch": 1, "loss": 2.0, "train_accuracy": 0.2, "test_accuracy": 0.25})
    monitor.update({"epoch": 2, "loss": 1.0, "train_accuracy": 0.4, "test_accuracy": 0.45})
    assert list(monitor.figure.data[0].y) == [2.0, 1.0] and list(monitor.figure.data[2].x) == [1, 2]


def test_training_monitor_of_a_pretraining_run_says_what_its_accuracy_counts():
    monitor = explorers.TrainingMonitor(objective="mpp")
    monitor.update({"epoch": 1, "loss": 4.0, "train_accuracy": 0.2, "test_accuracy": 0.25})
    assert [t.name for t in monitor.figure.data] == ["train loss", "train images' corrupted patches",
                                                     "test images' corrupted patches"]
    assert "masked-patch colour accuracy" in [a.text for a in monitor.figure.layout.annotations]


def test_training_monitor_starts_from_recorded_epochs_and_replaces_redone_ones():
    recorded = [{"epoch": e, "loss": 3.0 - e, "train_accuracy": 0.1 * e, "test_accuracy": 0.1 * e} for e in (1, 2, 3)]
    monitor = explorers.TrainingMonitor(records=recorded)
    assert list(monitor.figure.data[0].x) == [1, 2, 3]  # a resumed or finished run shows its log at once
    monitor.update({"epoch": 3, "loss": 0.5, "train_accuracy": 0.9, "test_accuracy": 0.8})  # redone after a resume
    assert list(monitor.figure.data[0].x) == [1, 2, 3] and list(monitor.figure.data[0].y) == [2.0, 1.0, 0.5]


def test_widgets_send_strict_json_everywhere(two_models):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    views = [explorers.position_embedding_explorer(two_models), explorers.EmbeddingFiltersExplorer(two_models, k=4),
             explorers.AttentionMapsExplorer(two_models, images, ["a", "b"])]
    for view in views:
        for plot in view.plots:
            _strict_json(plot)


@pytest.fixture
def hybrid_file(tmp_path):
    torch.manual_seed(0)
    return str(models.save_model(models.build_model({"zoo": "hybrid_tiny_c10"}), tmp_path / "hybrid.safetensors"))


def test_the_explorers_of_notebooks_02_to_04_take_a_hybrid(hybrid_file):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    net = models.load_model(hybrid_file, device="cpu")
    view = explorers.AttentionDistanceExplorer([hybrid_file], images, default=4, reference="resnet_tiny_c10")
    expected = head_statistics(net, images)["distance"]
    np.testing.assert_allclose(_head(view.figure, 0).y, expected[:, 0].numpy(), rtol=1e-5)
    stem = _trace(view.figure, f"{Path(hybrid_file).name}'s CNN stem receptive field")  # figures name a file by name
    # by hand: conv k3 (3), max-pool k3 s2 (5), layer1 two k3 (13), layer2 k3 s2 (17), k3 at jump 4 (25)
    assert stem.name.endswith("(25 px)") and list(stem.y) == [25.0, 25.0] and list(stem.x) == [1, 5]
    assert _trace(view.figure, "resnet_tiny_c10 receptive field")  # the CNN contrast stays
    figure, readout = explorers.attention_distance_view(hybrid_file, images)
    assert list(_trace(figure, f"{Path(hybrid_file).name}'s CNN stem").y) == [25.0, 25.0]
    assert view.result.token_field == 25.0 and readout.paper == readouts.PAPER_HYBRID_DISTANCE
    assert view.readout.value == readouts.readout(view.result).html()
    as_vit = readouts.readout(dataclasses.replace(view.result, token_field=None))  # the same numbers, as a ViT's
    assert as_vit.paper == readouts.PAPER_DISTANCE and torch.equal(as_vit.local, readout.local)
    maps = explorers.AttentionMapsExplorer([hybrid_file], images, ["a", "b", "c", "d"])
    maps.select(2, 5)
    maps.layer.value, maps.head.value = 3, 1
    cap = capture(net, images[:1])
    assert cap.grid == (8, 8)
    np.testing.assert_allclose(np.asarray(maps.patch.data[-1].z),
                               cap.attn[2][0, 1, 1 + 2 * 8 + 5, 1:].reshape(8, 8).numpy(), rtol=1e-5)
    rollout = attention_maps.attention_rollout(list(cap.attn.values()), 1, "mean", 0.0)[0].reshape(8, 8)
    np.testing.assert_allclose(np.asarray(maps.rollout.data[-1].z), rollout.numpy(), rtol=1e-5)
    positions = explorers.position_embedding_explorer([hybrid_file])
    torch.testing.assert_close(positions.result.sim, metrics.position_similarity(net))
    with pytest.raises(ValueError, match="hybrid ViT"):
        filters_analysis(net)


def test_a_training_cell_interrupted_prints_where_it_stopped_in_one_line_and_returns_none(tmp_path, fake_cifar,
                                                                                         monkeypatch, capsys):
    """Notebook 06 trains in a cell: the kernel's interrupt (a KeyboardInterrupt) ends it as Ctrl-C ends
    ``python -m vitlab train``, with one line instead of a traceback."""
    from vitlab.training import loop
    from vitlab.training.config import TrainConfig

    step = loop._step

    def interrupted(run, x, y):
        result = step(run, x, y)
        if run.step == 3:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(loop, "_step", interrupted)
    config = TrainConfig(model="vit_micro_c10", subset_size=100, epochs=1, batch_size=20, eval_size=20)
    try:
        result = explorers.train_with_curves(config, tmp_path / "run")
    except KeyboardInterrupt as err:  # not left to stop the test session
        pytest.fail(f"the interrupt escaped the cell, which shows its traceback: {err!r}")
    assert result is None
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted (SIGINT) at step 3 of 5; no checkpoint was saved yet: the "
                                            f"same command starts the run over in {tmp_path / 'run'}")


def _drawn(plot) -> dict:
    """A figure as drawn, on either path (a FigureWidget, or the static path's figure), without trace ids."""
    fig = json.loads(plot.figure.to_json() if hasattr(plot, "figure") else go.Figure(plot).to_json())
    for trace in fig["data"]:
        trace.pop("uid", None)
    fig["layout"].pop("template", None)
    return fig


def test_static_explorers_draw_what_the_widget_path_draws(two_models):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    for make in (lambda static: explorers.EmbeddingFiltersExplorer(two_models, k=8, static=static),
                 lambda static: explorers.PositionEmbeddingExplorer(two_models, static=static),
                 lambda static: explorers.AttentionMapsExplorer(two_models, images, ["a", "b", "c"], static=static)):
        plain, widget = make(True), make(False)
        assert all(isinstance(p, StaticFigure) for p in plain.plots)
        assert all(isinstance(p, go.FigureWidget) for p in widget.plots)
        assert [_drawn(p) for p in plain.plots] == [_drawn(p) for p in widget.plots]
        assert plain.status.value == widget.status.value and plain.readout.value == widget.readout.value
        plain.model.value = widget.model.value = two_models[1]  # a control redraws the static figures whole
        assert [_drawn(p) for p in plain.plots] == [_drawn(p) for p in widget.plots]
        assert all(len(p.outputs) == 1 for p in plain.plots)


def test_figure_widgets_send_plotlys_front_end_once_per_kernel(two_models):
    """plotly's FigureWidget carries its front end (megabytes) in every figure's state; the explorers' figures carry a
    small loader naming one shared widget that holds plotly's front end unchanged (the browser tests draw with it)."""
    import hashlib

    plotly_front_end = go.FigureWidget().get_state()["_esm"]
    first = explorers.EmbeddingFiltersExplorer(two_models, k=8, static=False)
    second = explorers.PositionEmbeddingExplorer(two_models, static=False)
    states = [p.get_state() for p in first.plots + second.plots]
    shared = first.plots[0]._front_end
    assert {s["_front_end"] for s in states} == {f"IPY_MODEL_{shared.model_id}"}
    assert len(plotly_front_end) > 1_000_000 and all(len(s["_esm"]) < 10_000 for s in states)
    assert shared.source == plotly_front_end and shared.key == hashlib.sha1(plotly_front_end.encode()).hexdigest()
    shared.close()  # e.g. Widget.close_all(): the next figure sends a new one
    again = explorers.EmbeddingFiltersExplorer(two_models, k=8, static=False).plots[0]._front_end
    assert again is not shared and again.comm is not None and again.source == plotly_front_end


def test_static_figure_shows_plotlys_mime_type_and_html_for_hosts_without_it():
    fig = go.Figure(go.Heatmap(z=[[1.0, float("nan")], [3.0, 4.0]]), layout=dict(title="t"))
    view = StaticFigure()
    show_figure(view, fig)
    (output,) = view.outputs
    assert output["output_type"] == "display_data"
    sent = output["data"]["application/vnd.plotly.v1+json"]
    assert sent["data"] == json.loads(fig.to_json())["data"] and sent["layout"]["title"]["text"] == "t"
    json.dumps(sent, allow_nan=False)  # strict JSON, as the front end parses it
    page = output["data"]["text/html"]
    assert re.search(r'<script [^>]*src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', page) and '"type":"heatmap"' in page
    assert view.get_state()["layout"].startswith("IPY_MODEL_")  # the Output keeps its own widget layout


def test_static_patch_pickers_show_what_a_click_shows(two_models):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    plain, widget = (explorers.PositionEmbeddingExplorer(two_models, static=s) for s in (True, False))
    assert (plain.picker.row.max, plain.picker.col.max) == (8, 8) and widget.picker is None
    plain.picker.row.value, plain.picker.col.value = 6, 3
    widget.show_patch(5, 2)
    assert plain.selected == (5, 2) and _drawn(plain.detail) == _drawn(widget.detail)
    hints = [c.value for c in plain.children if isinstance(c, ipywidgets.HTML) and c.value.startswith("<i>")]
    assert hints == ["<i>Pick a patch's row and column to see its similarity map large.</i>"]
    maps, clicked = (explorers.AttentionMapsExplorer(two_models, images, ["a", "b", "c"], static=s)
                     for s in (True, False))
    maps.picker.col.value, maps.picker.row.value = 2, 5
    clicked.select(4, 1)
    assert maps.selected == (4, 1) and [_drawn(p) for p in maps.plots] == [_drawn(p) for p in clicked.plots]
    assert not maps.plots[0].data[-1]._click_callbacks  # nothing listens on the static path


def test_static_mode_is_read_by_the_views_alone():
    """The static path changes only what explorers draw: outside ``vitlab.views`` no module and no notebook reads
    ``static_mode`` or ``VITLAB_STATIC`` (test_static_path reruns a notebook from its first widget on, relying on it)."""
    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("vitlab/**/*.py"), *root.glob("notebooks/*.ipynb")]
    readers = sorted(p.relative_to(root).as_posix() for p in files if re.search(r"static_mode|VITLAB_STATIC", p.read_text()))
    assert readers and all(r.startswith("vitlab/views/") for r in readers if r != "vitlab/settings.py"), readers


def test_static_mode_reaches_every_view(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_STATIC", "1")
    monitor = explorers.TrainingMonitor()
    monitor.update({"epoch": 1, "loss": 2.0, "train_accuracy": 0.2, "test_accuracy": 0.25})
    assert isinstance(monitor.figure, StaticFigure) and list(monitor.figure.data[0].y) == [2.0]
    recipes = study_explorers.RecipesExplorer()
    widget = study_explorers.RecipesExplorer(static=False)
    assert isinstance(recipes.distance, StaticFigure) and _drawn(recipes.distance) == _drawn(widget.distance)
    recipes.show_epoch(recipes.comparison.epochs[0])
    widget.show_epoch(widget.comparison.epochs[0])
    assert _drawn(recipes.timeline) == _drawn(widget.timeline)
    saved = recipes.save(tmp_path / "recipes.html")  # export reads the static figures too
    assert saved and recipes.distance.figure.layout.title.text in saved[0].read_text()
