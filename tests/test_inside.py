"""Inside views across training: the records, the run folder's files, resume and the explorer."""
import dataclasses
import math
import shutil

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from vitlab import data, models
from vitlab.training import inside
from vitlab.training import run_folder
from vitlab.analysis import metrics
from vitlab.training import loop
from vitlab.training.config import TrainConfig
from vitlab.analysis.capture import capture
from vitlab.records import InsideView

MICRO = dict(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50, warmup_epochs=1)


@pytest.fixture
def micro_vit():
    torch.manual_seed(0)
    return models.build_model({"zoo": "vit_micro_c10"}).eval()


def _brute_distance(attn: torch.Tensor, grid, patch, prefix) -> torch.Tensor:
    """Per-head mean attention distance by explicit loops over queries and keys (paper's convention)."""
    b, heads = attn.shape[:2]
    rows, cols = grid
    out = torch.zeros(heads, dtype=torch.float64)
    for q in range(rows * cols):
        for k in range(rows * cols):
            dy = (q // cols - k // cols) * patch[0]
            dx = (q % cols - k % cols) * patch[1]
            out += attn[:, :, prefix + q, prefix + k].double().sum(0) * math.hypot(dy, dx)
    return out / (b * rows * cols)


@pytest.mark.parametrize("epochs, expected", [(1, [1]), (5, [1, 2, 3, 4, 5]), (30, list(range(1, 31)))])
def test_every_epoch_is_recorded_up_to_thirty(epochs, expected):
    assert inside.recorded_epochs(epochs) == expected


@pytest.mark.parametrize("epochs", [31, 40, 100, 301])
def test_longer_runs_record_thirty_evenly_spaced_epochs_ending_with_the_last(epochs):
    chosen = inside.recorded_epochs(epochs)
    assert len(chosen) == 30 and len(set(chosen)) == 30 and chosen[-1] == epochs and chosen == sorted(chosen)
    gaps = [b - a for a, b in zip([0] + chosen, chosen)]
    assert max(gaps) - min(gaps) <= 1  # as even as whole epochs allow
    if epochs == 40:
        assert chosen[:6] == [2, 3, 4, 6, 7, 8]


def test_inside_view_equals_a_brute_force_recomputation(micro_vit):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    view = inside.inside_view(micro_vit, images, epoch=3, step=30)
    cap = capture(micro_vit, images)
    grid, patch, prefix = cap.grid, cap.patch_size, cap.num_prefix_tokens
    assert (view.epoch, view.step, view.images, view.grid, view.patch_size) == (3, 30, 6, grid, patch)
    for layer, row in enumerate(view.distance):
        assert row == pytest.approx(_brute_distance(cap.attn[layer], grid, patch, prefix).tolist(), abs=1e-4)
        a = cap.attn[layer][..., prefix:, prefix:].double()
        a = a / a.sum(-1, keepdim=True)
        entropy = -(a * a.log()).sum(-1).mean((0, 2))
        assert view.entropy[layer] == pytest.approx(entropy.tolist(), abs=1e-4)
    n = grid[0] * grid[1]
    pairs = torch.cdist(*(2 * [torch.tensor([[(i // grid[1] + .5) * patch[0], (i % grid[1] + .5) * patch[1]]
                                             for i in range(n)], dtype=torch.float64)]))
    assert view.uniform == pytest.approx(float(pairs.mean()) * n / (n + prefix))
    pos = F.normalize(micro_vit.pos_embed[0, -n:].double(), dim=-1)  # (n, D)
    sim = pos @ pos.T
    assert view.position_distance == pytest.approx(metrics.position_structure(sim, grid).closeness)
    assert view.mirror == pytest.approx(metrics.mirror_score(sim, grid).mirror)
    flat = micro_vit.patch_embed.proj.weight.detach().double().flatten(1)
    s = torch.linalg.svdvals(flat - flat.mean(0))
    assert view.filter_variance_first == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-5)
    assert view.filter_variance_k == pytest.approx(float((s[: view.filter_k] ** 2).sum() / (s**2).sum()), rel=1e-5)


def test_a_resnet_gets_no_inside_view():
    resnet = models.build_model({"zoo": "resnet_micro_c10"}).eval()
    assert inside.inside_view(resnet, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 1, 1) is None


def test_probe_images_are_a_class_balanced_prefix_and_leave_the_random_state(fake_cifar):
    before = torch.get_rng_state()
    probe = inside.probe_images(20)
    assert torch.equal(torch.get_rng_state(), before)
    images, labels = data.cifar10("test")
    order = data.stratified_order(labels, 0)[:20]
    assert torch.equal(probe, images[order])
    assert torch.bincount(labels[order], minlength=10).tolist() == [2] * 10


def test_training_records_views_that_match_the_final_model(tmp_path, fake_cifar):
    result = loop.train(TrainConfig(**MICRO), tmp_path / "run", progress=False)
    views = run_folder.read_inside(tmp_path / "run")
    assert [v.epoch for v in views] == [1, 2] and views[-1].step == result.record["step"]
    final = models.load_model(tmp_path / "run" / "model.safetensors", device="cpu")
    again = inside.inside_view(final, inside.probe_images(), epoch=2, step=views[-1].step)
    assert again.images == 100  # the fake test set holds 100 images
    for field in ("distance", "entropy"):
        assert torch.allclose(torch.tensor(getattr(again, field)), torch.tensor(getattr(views[-1], field)), atol=1e-4)
    assert again.position_distance == pytest.approx(views[-1].position_distance, abs=1e-6)
    assert again.filter_variance_first == pytest.approx(views[-1].filter_variance_first, abs=1e-6)
    stored = safetensors.torch.load_file(tmp_path / "run" / "inside.safetensors")
    assert sorted(stored) == ["filters.1", "filters.2", "pos_embed.1", "pos_embed.2"]
    assert torch.equal(stored["pos_embed.2"], final.pos_embed.detach())
    assert torch.equal(stored["filters.2"], final.patch_embed.proj.weight.detach())
    assert not torch.equal(stored["pos_embed.1"], stored["pos_embed.2"])


def _brute_head_drop(model, images, labels, reference, layer, head):
    """Accuracy drop of mean-ablating one head, by whole forwards with a hook written here (not vitlab's)."""
    proj, hd = model.blocks[layer].attn.proj, model.blocks[layer].attn.head_dim
    cut = slice(head * hd, (head + 1) * hd)
    seen = []
    handle = proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0][..., cut].sum(0)))
    with torch.no_grad():
        model(models.preprocess(model, reference))
    handle.remove()
    mean = seen[0] / len(reference)  # (tokens, head_dim)

    def put_mean(_m, args):
        z = args[0].clone()
        z[..., cut] = mean
        return (z,)
    with torch.no_grad():
        clean = model(models.preprocess(model, images)).argmax(-1)
        handle = proj.register_forward_pre_hook(put_mean)
        ablated = model(models.preprocess(model, images)).argmax(-1)
        handle.remove()
    return ((clean == labels).double().mean() - (ablated == labels).double().mean()).item()


def test_a_classifier_records_head_ablation_and_logit_lens_each_epoch(tmp_path, fake_cifar):
    loop.train(TrainConfig(**MICRO), tmp_path / "run", progress=False)
    views = run_folder.read_inside(tmp_path / "run")
    final = models.load_model(tmp_path / "run" / "model.safetensors", device="cpu").eval()
    images, labels = inside.probe_set()
    reference = inside.probe_set(split="train")[0]
    assert len(reference) == 256 and all(v.head_ablation is not None for v in views)
    assert len(views[-1].head_ablation) == 2 and len(views[-1].head_ablation[0]) == 2  # (layers, heads)
    for layer, head in ((0, 1), (1, 0)):
        assert views[-1].head_ablation[layer][head] == pytest.approx(
            _brute_head_drop(final, images, labels, reference, layer, head), abs=1e-9)
    with torch.no_grad():  # the lens's last row is the model's own accuracy on the probe images
        accuracy = (final(models.preprocess(final, images)).argmax(-1) == labels).double().mean().item()
    assert views[-1].lens_accuracy[-1] == pytest.approx(accuracy, abs=1e-9) and len(views[-1].lens_accuracy) == 3
    # Filled afterwards from kept weights, a view gets the numbers the loop recorded.
    bare = [dataclasses.replace(v, head_ablation=None, head_ablation_logit=None, lens_accuracy=None) for v in views]
    run_folder.write_inside(tmp_path / "run", bare, run_folder.read_inside_tensors(tmp_path / "run"))
    assert run_folder.read_inside(tmp_path / "run")[-1].head_ablation is None
    filled = inside.record_interventions(tmp_path / "run", {2: tmp_path / "run" / "model.safetensors"}, images,
                                         labels, reference)
    assert filled[0].head_ablation is None and filled[1] == views[1]
    assert run_folder.read_inside(tmp_path / "run") == filled


def test_inside_views_leave_the_weights_unchanged_and_resume_redoes_later_lines(tmp_path, fake_cifar):
    config = TrainConfig(**MICRO)
    loop.train(config, tmp_path / "on", progress=False)
    loop.train(config, tmp_path / "off", progress=False, inside=False)
    on, off = (safetensors.torch.load_file(tmp_path / r / "model.safetensors") for r in ("on", "off"))
    assert all(torch.equal(on[k], off[k]) for k in on)
    assert not (tmp_path / "off" / "inside.jsonl").exists()
    # A finished run without views shows its final model's view, computed and not written.
    before = sorted(p.name for p in (tmp_path / "off").iterdir())
    views, tensors, recorded = inside.load(tmp_path / "off")
    assert not recorded and len(views) == 1 and views[0].epoch == 2
    assert torch.allclose(torch.tensor(views[0].distance), torch.tensor(run_folder.read_inside(tmp_path / "on")[-1].distance))
    assert torch.equal(tensors["pos_embed.2"], off["pos_embed"])
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == before
    # Take the run back to its epoch-1 checkpoint, as if it had been killed during epoch 2.
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "on", run)
    first_step = run_folder.read_inside(run)[0].step
    for path in list(run.glob("checkpoint*")) + [run / "model.safetensors", run / "model.json"]:
        if f"{first_step:08d}" not in path.name:
            path.unlink()
    run_folder.trim_inside(run, first_step)
    assert [v.epoch for v in run_folder.read_inside(run)] == [1]
    assert sorted(run_folder.read_inside_tensors(run)) == ["filters.1", "pos_embed.1"]
    loop.train(config, run, progress=False)
    assert run_folder.read_inside(run) == run_folder.read_inside(tmp_path / "on")
    redone = safetensors.torch.load_file(run / "model.safetensors")
    assert all(torch.equal(on[k], redone[k]) for k in on)


def test_a_resnet_run_records_no_inside_views(tmp_path, fake_cifar):
    loop.train(TrainConfig(**dict(MICRO, model="resnet_micro_c10", epochs=1)), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "inside.jsonl").exists() and not (tmp_path / "r" / "inside.safetensors").exists()


def test_the_explorer_redraws_every_panel_for_the_chosen_epoch(tmp_path, micro_vit):
    from vitlab.views import study_explorers

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    stored = {}
    for epoch in (1, 2, 3):
        with torch.no_grad():
            micro_vit.pos_embed.add_(torch.randn_like(micro_vit.pos_embed))  # each epoch's embeddings differ
        view = inside.inside_view(micro_vit, images, epoch, 10 * epoch)
        stored[epoch] = (view, micro_vit.pos_embed.detach().clone())
        run_folder.record_inside(tmp_path, view, inside.inside_tensors(micro_vit, epoch))
    explorer = study_explorers.InsideViewsExplorer(tmp_path)
    assert explorer.epoch.value == 3 and explorer.epoch.options == (1, 2, 3)
    explorer.epoch.value = 2
    view, pos = stored[2]
    assert explorer.view == view
    heads = [t for t in explorer.distance.data if (t.name or "").startswith("head")]
    for h, trace in enumerate(heads):
        assert list(trace.y) == pytest.approx([row[h] for row in view.distance])
    n = view.grid[0] * view.grid[1]
    emb = F.normalize(pos[0, -n:].float(), dim=-1)
    assert torch.allclose(explorer.sim.reshape(n, n), emb @ emb.T, atol=1e-6)
    z = explorer.positions.data[0].z
    assert z[0][1] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)  # tile (1, 1), key patch (1, 2)
    most_local = [t for t in explorer.timeline.data if t.name == "layer 1, most local head"][0]
    assert list(most_local.y) == pytest.approx([min(stored[e][0].distance[0]) for e in (1, 2, 3)])
    assert explorer.timeline.layout.shapes[0].x0 == 2  # the epoch shown is marked
    assert list(explorer.ratio) == pytest.approx(metrics.embedding_filters(micro_vit, k=28)[1].tolist(), abs=1e-6)


def test_the_explorer_explains_a_folder_without_views(tmp_path):
    from vitlab.views import study_explorers

    with pytest.raises(ValueError, match="holds no inside views"):
        study_explorers.InsideViewsExplorer(tmp_path)


def test_record_round_trip_rejects_unknown_fields(micro_vit):
    view = inside.inside_view(micro_vit, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 1, 1)
    assert isinstance(view, InsideView) and InsideView.from_json(view.to_json()) == view
    with pytest.raises(TypeError, match="unknown"):
        InsideView.from_json(dict(view.__dict__, extra=1))


def test_a_hybrids_view_has_its_grid_of_4_pixel_tokens_and_no_filters(tmp_path):
    from vitlab.views import study_explorers

    torch.manual_seed(0)
    hybrid = models.build_model({"zoo": "hybrid_micro_c10"}).eval()  # an 8-pixel stride: a 4x4 grid
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    view = inside.inside_view(hybrid, images, epoch=1, step=4)
    cap = capture(hybrid, images)
    assert (view.grid, view.patch_size) == ((4, 4), (8, 8))
    for layer, row in enumerate(view.distance):
        assert row == pytest.approx(_brute_distance(cap.attn[layer], (4, 4), (8, 8), 1).tolist(), abs=1e-4)
    assert view.filter_k == 0 and math.isnan(view.filter_variance_first) and math.isnan(view.filter_variance_k)
    assert InsideView.from_json(view.to_json()).filter_k == 0  # NaN survives its JSON line
    tensors = inside.inside_tensors(hybrid, 1)
    assert sorted(tensors) == ["pos_embed.1"]
    run_folder.record_inside(tmp_path, view, tensors)
    assert "no pixel filters" in inside.summary(run_folder.read_inside(tmp_path))
    explorer = study_explorers.InsideViewsExplorer(tmp_path)
    assert explorer.ratio is None and "no patch-embedding filters" in explorer.filters.layout.title.text
    n = 16
    emb = F.normalize(hybrid.pos_embed[0, -n:].detach(), dim=-1)
    assert torch.allclose(explorer.sim.reshape(n, n), emb @ emb.T, atol=1e-6)


def test_a_hybrid_run_records_views_of_its_final_model_without_filters(tmp_path, fake_cifar):
    result = loop.train(TrainConfig(**dict(MICRO, model="hybrid_micro_c10")), tmp_path / "h", progress=False)
    views = run_folder.read_inside(tmp_path / "h")
    assert [v.epoch for v in views] == [1, 2] and all(v.filter_k == 0 for v in views)
    final = models.load_model(tmp_path / "h" / "model.safetensors", device="cpu")
    assert metrics.is_hybrid(final) and final.vitlab_arch["config"]["family"] == "hybrid"
    again = inside.inside_view(final, inside.probe_images(), epoch=2, step=result.record["step"])
    assert torch.allclose(torch.tensor(again.distance), torch.tensor(views[-1].distance), atol=1e-4)
    stored = safetensors.torch.load_file(tmp_path / "h" / "inside.safetensors")
    assert sorted(stored) == ["pos_embed.1", "pos_embed.2"]
    assert torch.equal(stored["pos_embed.2"], final.pos_embed.detach())
