import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab import data, records, result_files
from vitlab.training import run_folder, zoo
from vitlab.training import sweep as sweep_mod
from vitlab.models import ARCHITECTURES, build_model, load_model
from vitlab.training.mpp import MaskedPatchPrediction
from vitlab.training.sweep import SweepConfig, init_history, sweep, train_flops_per_image
from vitlab.training.objectives import evaluate

ROOT = Path(__file__).resolve().parent.parent


def test_budget_rule_gives_at_least_epochs_and_min_samples():
    config = SweepConfig(epochs=3, min_samples=10_000)
    for size in (100, 1000, 3333, 5000, 50_000):
        epochs = config.epochs_for(size)
        assert epochs >= 3 and epochs * size >= 10_000
        assert epochs == 3 or (epochs - 1) * size < 10_000  # the smallest such count
    runs = SweepConfig(models=("a", "b"), sizes=(500, 100), seeds=(1, 0)).runs()
    assert [(r.seed, r.subset_size, r.model) for r in runs][:3] == [(1, 100, "a"), (1, 100, "b"), (1, 500, "a")]
    assert len(runs) == 8


def test_warmup_is_a_share_of_each_run_or_the_same_epochs_in_every_run():
    assert SweepConfig().warmup_for(50) == 0.1 * 50  # neither set: a tenth, as sweeps always had
    assert SweepConfig(warmup_fraction=0.25).warmup_for(8) == 2.0
    assert SweepConfig(warmup_epochs=2.0).warmup_for(1164) == SweepConfig(warmup_epochs=2.0).warmup_for(25) == 2.0


def _vit_flops(cfg, classes=10):
    """Training FLOPs per image of a zoo ViT, counted by hand (2 FLOPs per multiply-add)."""
    d, n_patches = cfg.embed_dim, (cfg.img_size // cfg.patch_size) ** 2
    n, hidden = n_patches + 1, int(d * cfg.mlp_ratio)
    linear = n * (d * 3 * d + d * d + d * hidden + hidden * d) * 2  # qkv, proj, fc1, fc2
    attention = 2 * (2 * n * n * d)  # q k^T and attn v, summed over heads
    patch_embed = 2 * n_patches * (3 * cfg.patch_size**2) * d
    head = 2 * d * classes  # class token only
    # Backward costs twice the forward (input and weight gradients), except that the
    # patch embedding needs no gradient for its input images.
    return 3 * (cfg.depth * (linear + attention) + head) + 2 * patch_embed


def _resnet_flops(model, img=32):
    """Conv and linear training FLOPs of a ResNet, from a shape-tracing forward."""
    convs, shapes = [], {}
    hooks = [m.register_forward_hook(lambda m, a, out: shapes.__setitem__(m, out.shape))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(torch.zeros(1, 3, img, img))
    for h in hooks:
        h.remove()
    for m, shape in shapes.items():
        per = 2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups * shape[2] * shape[3]
        convs.append(per * (2 if m is model.conv1 else 3))
    fc = model.fc
    return sum(convs) + 3 * 2 * fc.in_features * fc.out_features


@pytest.mark.parametrize("name", ["vit_micro_c10", "vit_tiny_c10"])
def test_vit_flops_match_a_hand_count_including_attention(name):
    # The CPU's fused attention kernel is invisible to the flop counter; the count must still include it.
    assert train_flops_per_image(build_model({"zoo": name})) == _vit_flops(ARCHITECTURES[name])


def _mpp_flops(cfg, classes=10):
    """The masked-patch-prediction wrapper's: the ViT's hand count without its class head, plus the colour head
    (a linear layer to 8**3 colours on every patch token; forward, input and weight gradients)."""
    d, n_patches = cfg.embed_dim, (cfg.img_size // cfg.patch_size) ** 2
    return _vit_flops(cfg, classes) - 3 * 2 * d * classes + 3 * 2 * n_patches * d * 8**3


def test_mpp_wrapper_flops_exceed_the_encoders_by_its_colour_head():
    encoder = build_model({"zoo": "vit_micro_c10"})
    assert train_flops_per_image(MaskedPatchPrediction(encoder)) == _mpp_flops(ARCHITECTURES["vit_micro_c10"])


def test_init_history_adds_each_inits_own_training_from_its_sidecar(tmp_path):
    # first: classifier, 5 steps of 4 images; second: pre-trained from first by mpp, 10 steps of 8 images
    first = vitlab.save_model(build_model({"zoo": "vit_micro_c10"}), tmp_path / "first.safetensors",
                              dict(config=dict(model="vit_micro_c10", batch_size=4), metrics=dict(step=5)))
    second = vitlab.save_model(build_model({"zoo": "vit_micro_c10"}), tmp_path / "second.safetensors", dict(
        config=dict(model="vit_micro_c10", objective="mpp", label_smoothing=0.0, batch_size=8, init=str(first)),
        metrics=dict(step=10)))
    cfg = ARCHITECTURES["vit_micro_c10"]
    assert init_history(f"mpp:{second}") == (80 + 20, 80 * _mpp_flops(cfg) + 20 * _vit_flops(cfg))
    assert init_history(str(first)) == (20, 20 * _vit_flops(cfg))
    with pytest.raises(FileNotFoundError, match="init no_such_encoder: no weights file .* put them back"):
        init_history("mpp:no_such_encoder")
    bare = vitlab.save_model(build_model({"zoo": "vit_micro_c10"}), tmp_path / "bare.safetensors")  # no training
    with pytest.raises(vitlab.training.config.ConfigError, match="bare.json does not say how its weights were trained"):
        init_history(f"classify:{bare}")


def test_committed_fine_tuned_runs_count_the_encoders_pre_training():
    runs = result_files.read_runs(result_files.MPP_RESULTS)
    pre = 7800 * 128  # the mpp encoder's steps x batch size (data/zoo/vit_tiny_c10_mpp.json)
    assert len(runs) == 14 and all(r.init == "mpp:vit_tiny_c10_mpp" for r in runs)
    for r in runs:
        assert r.images_seen_total == r.images_seen + pre
        assert r.train_flops_total == pytest.approx(r.train_flops + pre * _mpp_flops(ARCHITECTURES["vit_tiny_c10"]))


@pytest.mark.parametrize("name", ["resnet_micro_c10", "resnet_tiny_c10"])
def test_resnet_flops_match_a_hand_count(name):
    model = build_model({"zoo": name})
    assert train_flops_per_image(model) == _resnet_flops(model)


def _tiny(tmp_path, **kw):
    return SweepConfig(**dict(dict(models=("vit_micro_c10", "resnet_micro_c10"), sizes=(100, 200), seeds=(0,),
                                   epochs=1, min_samples=200, batch_size=50, monitor_size=50,
                                   out=str(tmp_path / "runs"), results=str(tmp_path / "results" / "sweep")), **kw))


def test_sweep_records_every_run_and_skips_done_ones(fake_cifar, tmp_path, monkeypatch, capsys):
    config = _tiny(tmp_path)
    runs = sweep(config)
    assert len(runs) == 4
    test_x, test_y = data.cifar10("test")
    for r in runs:
        assert r.family == zoo.ENTRIES[r.model].family
        assert r.epochs == config.epochs_for(r.subset_size)  # 2 epochs on 100 images, 1 on 200
        steps = r.subset_size // config.batch_size * r.epochs
        assert r.images_seen == steps * config.batch_size
        assert r.train_flops == r.flops_per_image * r.images_seen
        assert (r.images_seen_total, r.train_flops_total) == (r.images_seen, r.train_flops)  # from scratch
        assert r.params == sum(p.numel() for p in build_model({"zoo": r.model}).parameters())
        recipe = zoo.train_config(r.model)  # the zoo entry's recipe, written once
        assert (r.optimizer, r.lr, r.weight_decay) == (recipe.optimizer, recipe.lr, recipe.weight_decay)
        run = tmp_path / "runs" / f"{r.model}-n{r.subset_size}-s0-e{r.epochs}"
        meta = json.loads((run / "model.json").read_text())
        assert meta["data"]["train_images"] == r.subset_size
        # The recorded accuracy is over the whole test set, recomputed from the saved weights.
        assert r.test_accuracy == evaluate(load_model(run / "model.safetensors", device="cpu"), test_x, test_y)
    with open(tmp_path / "results" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["model"], int(row["subset_size"]), float(row["test_accuracy"])) for row in rows] == \
        [(r.model, r.subset_size, r.test_accuracy) for r in runs]
    saved = json.loads((tmp_path / "results" / "sweep.json").read_text())
    assert saved["runs"] == [{k: v for k, v in dataclasses.asdict(r).items() if k not in ("fewshot", "init")} for r in runs]
    assert saved["commands"] == [config.command()]
    shown = capsys.readouterr()
    assert shown.out == ""  # no printed records: a progress bar over the runs instead
    assert "sweep: 100%" in shown.err and "4/4" in shown.err

    trained = []
    real_train = sweep_mod.train
    monkeypatch.setattr(sweep_mod, "train", lambda cfg, out, **kw: trained.append(cfg.model) or real_train(cfg, out, **kw))
    assert sweep(config) == runs and trained == []  # everything done: nothing retrained
    more = sweep(_tiny(tmp_path, seeds=(0, 1), sizes=(100,)))
    assert len(more) == 6 and sorted(trained) == ["resnet_micro_c10", "vit_micro_c10"]
    assert {(r.seed, r.subset_size) for r in more} == {(0, 100), (0, 200), (1, 100)}


def test_every_vit_run_gets_the_inside_view_of_its_final_model(fake_cifar, tmp_path, monkeypatch):
    from vitlab.training import inside

    config = _tiny(tmp_path)
    runs = sweep(config)
    views, commands = result_files.read_run_insides(config.results)
    assert commands == [config.command()]
    assert sorted(v.key for v in views) == sorted(r.key for r in runs if r.family == "vit")  # ResNets: none
    images = inside.probe_images()
    for v in views:
        folder = tmp_path / "runs" / f"{v.model}-n{v.subset_size}-s0-e{v.epochs}"
        model = load_model(folder / "model.safetensors", device="cpu")
        again = inside.inside_view(model, images, epoch=v.epochs, step=v.view.step)
        assert v.view == again  # the same view, recomputed independently from the saved weights
        # The spread: each probe image's distance for the lowest layer's most local head, by hand.
        head = min(range(len(v.view.distance[0])), key=lambda h: v.view.distance[0][h])
        per_image = torch.stack([vitlab.analysis.metrics.mean_attention_distance(
            vitlab.capture(model, images[i : i + 1]).attn[0], v.view.grid, v.view.patch_size)[head]
            for i in range(len(images))])
        assert v.lowest_std == pytest.approx(float(per_image.double().std()), rel=1e-4)
        assert v.lowest_low <= v.view.lowest_local <= v.lowest_high
        assert v.test_accuracy == next(r.test_accuracy for r in runs if r.key == v.key)
    with open(tmp_path / "results" / "sweep-inside.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lowest_local"]) for r in rows] == pytest.approx([v.view.lowest_local for v in views])
    computed = []
    monkeypatch.setattr(inside, "inside_view", lambda *a, **k: computed.append(a) or None)
    sweep(config)
    assert computed == []  # views of done runs are kept, not recomputed


def test_sweep_resumes_a_run_that_was_interrupted(fake_cifar, tmp_path, monkeypatch):
    from vitlab.training import objectives

    config = _tiny(tmp_path, models=("vit_micro_c10",), sizes=(100,), min_samples=300)  # 3 epochs
    real_evaluate, calls = objectives.evaluate, []

    def dies_in_epoch_two(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(objectives, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        sweep(config)
    run = tmp_path / "runs" / "vit_micro_c10-n100-s0-e3"
    first = (run / "metrics.jsonl").read_text().splitlines()
    assert len(first) == 1 and not (tmp_path / "results" / "sweep.json").exists()
    monkeypatch.setattr(objectives, "evaluate", real_evaluate)
    (record,) = sweep(config)
    log = (run / "metrics.jsonl").read_text().splitlines()
    assert log[0] == first[0]  # epoch 1 was not trained again
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3] and record.epochs == 3
    assert record.images_seen == 3 * 2 * config.batch_size


#: Imports vitlab once, then forks a ``python -m vitlab`` per argument list in argv[1] (JSON), all at once, and
#: exits with how many failed: the children are real processes racing for one results file, without paying for
#: a cold torch import each (tests/test_faults.py's zygote does the same).
_AT_ONCE = """
import json, os, sys, traceback
from vitlab.__main__ import main

children = []
for argv in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main(argv)
        except SystemExit as err:
            print(err.code, flush=True)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    children.append(pid)
sys.exit(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children))
"""


def test_two_sweeps_writing_one_results_file_at_once_keep_both_runs(fake_cifar, tmp_path):
    """Each sweep reads the file when it starts and writes after its run: both runs and both commands stay."""
    import os
    import subprocess
    import sys

    results = tmp_path / "results" / "sweep"
    sweeps = [["sweep", "--models", model, "--sizes", "200", "--epochs", "1", "--min-samples", "0", "--batch-size",
               "50", "--monitor-size", "50", "--fewshot", "1", "--fewshot-seeds", "1", "--fewshot-test", "50",
               "--out", str(tmp_path / "runs"), "--results", str(results)]
              for model in ("vit_micro_c10", "resnet_micro_c10")]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    ended = subprocess.run([sys.executable, "-c", _AT_ONCE, json.dumps(sweeps)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    runs = result_files.read_runs(results)
    assert sorted(r.model for r in runs) == ["resnet_micro_c10", "vit_micro_c10"]
    with open(f"{results}.csv") as f:
        assert sorted(row["model"] for row in csv.DictReader(f)) == ["resnet_micro_c10", "vit_micro_c10"]
    commands = result_files.read_commands(results)
    assert len(commands) == 2 and {c.split("--models ")[1].split()[0] for c in commands} == {m[2] for m in sweeps}
    assert [v.model for v in result_files.read_run_insides(results)[0]] == ["vit_micro_c10"]  # ResNets have none
    probes, probe_commands = result_files.read_run_probes(results)
    assert sorted(p.model for p in probes) == ["resnet_micro_c10", "vit_micro_c10"] and len(probe_commands) == 2
    assert sorted(p.name for p in results.parent.iterdir()) == sorted(
        f"sweep{tag}{ext}" for tag in ("", "-fewshot", "-inside") for ext in (".csv", ".json"))  # no lock left


def _done_records(config):
    """A finished record of every run of ``config``, as a sweep would have stored them."""
    return [records.RunRecord(model=r.model, family=zoo.ENTRIES[r.model].family, subset_size=r.subset_size,
                              seed=r.seed, epochs=r.epochs, test_accuracy=0.1 * (i + 1), batch_size=r.batch_size)
            for i, r in enumerate(config.runs())]


def test_a_torn_results_file_stops_the_sweep_before_data_and_keeps_it(tmp_path, monkeypatch):
    config = _tiny(tmp_path)
    result_files.write_runs(config.results, _done_records(config)[:2], ["cmd"])
    path = Path(config.results + ".json")
    path.write_text(path.read_text()[:-30])  # torn: the finished runs are still in the bytes
    torn = path.read_bytes()
    monkeypatch.setattr(data, "cifar10", lambda *a, **kw: pytest.fail("loaded data before reading the results"))
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **kw: pytest.fail("trained despite a torn results file"))
    for run in (sweep, sweep_mod.fewshot_runs):
        with pytest.raises(result_files.ResultsFileError, match=f"{path} is not a complete results file"):
            run(config)
    assert path.read_bytes() == torn and not (tmp_path / "runs").exists()


def test_a_torn_csv_is_rewritten_from_the_json(fake_cifar, tmp_path, monkeypatch):
    config = _tiny(tmp_path)
    done = _done_records(config)
    result_files.write_runs(config.results, done, [config.command()])
    table = Path(config.results + ".csv")
    whole = table.read_bytes()
    table.write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **kw: pytest.fail("retrained a finished run"))
    assert sweep(config) == sorted(done, key=lambda r: (r.family, r.model, r.subset_size, r.seed, r.epochs))
    assert table.read_bytes() == whole


def test_each_run_gets_the_sweeps_warmup_epochs_and_cadence_which_is_not_part_of_its_identity(
        fake_cifar, tmp_path, monkeypatch):
    config = _tiny(tmp_path, models=("vit_micro_c10",), min_samples=600, warmup_epochs=2.0, eval_every=2)
    trained, real_train = [], sweep_mod.train
    monkeypatch.setattr(sweep_mod, "train", lambda cfg, out, **kw: trained.append(cfg) or real_train(cfg, out, **kw))
    runs = sweep(config)
    assert [(c.subset_size, c.epochs, c.warmup_epochs, c.eval_every) for c in trained] == [(100, 6, 2.0, 2),
                                                                                          (200, 3, 2.0, 2)]
    for run, evaluated in zip(runs, ([2, 4, 6], [2, 3])):  # every second epoch and the last
        folder = tmp_path / "runs" / f"vit_micro_c10-n{run.subset_size}-s0-e{run.epochs}"
        assert [r["epoch"] for r in run_folder.read_metrics(folder)] == evaluated
    # The cadence changes when runs evaluate, not their weights: the same runs under another are done already.
    assert sweep(dataclasses.replace(config, eval_every=1)) == runs and len(trained) == 2


@pytest.mark.parametrize("change, message", [
    (dict(models=("vit_huge_c10",)), "unknown zoo models"),
    (dict(sizes=(100, 10**6)), "outside"),
    (dict(sizes=(20,)), "smaller than the batch"),
    (dict(seeds=()), "at least one"),
])
def test_bad_sweeps_fail_before_training(fake_cifar, tmp_path, monkeypatch, change, message):
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **kw: pytest.fail("trained despite a bad config"))
    with pytest.raises(ValueError, match=message):
        sweep(_tiny(tmp_path, **change))
    assert not (tmp_path / "runs").exists()


def test_fewshot_probes_of_each_run_match_a_brute_force_probe(fake_cifar, tmp_path, monkeypatch):
    from conftest import sklearn_probe, timm_intermediates

    config = _tiny(tmp_path, fewshot=(1, 5), fewshot_seeds=2, fewshot_test=50)
    runs = sweep(config)
    assert all(set(r.fewshot) == {1, 5} for r in runs)
    train_x, train_y = data.cifar10("train")
    test_x, test_y = data.cifar10("test")
    test_idx = data.stratified_subset(test_y, 50, 0)
    for r in runs:
        model = load_model(tmp_path / "runs" / f"{r.model}-n{r.subset_size}-s0-e{r.epochs}" / "model.safetensors",
                           device="cpu")

        def head_input(images):
            """What the classifier reads: the final norm's class token, or the ResNet's pooled last stage."""
            last = timm_intermediates(model, images)[-1]
            with torch.no_grad():
                return model.norm(last)[:, 0] if r.family == "vit" else last.mean((2, 3))

        test_feats = head_input(test_x[test_idx])
        for k in (1, 5):
            accs = []
            for seed in (0, 1):
                idx = data.stratified_subset(train_y, 10 * k, seed)
                _, pred = sklearn_probe(head_input(train_x[idx]), train_y[idx], test_feats, 2.0**10, 10)
                accs.append(float((torch.from_numpy(pred) == test_y[test_idx]).double().mean()))
            assert r.fewshot[k] == pytest.approx(sum(accs) / 2)
    with open(tmp_path / "results" / "sweep-fewshot.csv") as f:
        assert next(csv.reader(f)) == ["model", "family", "subset_size", "seed", "epochs", "layer", "pooling",
                                       "fewshot_1", "fewshot_5"]
    probes, _ = result_files.read_run_probes(config.results)
    assert {(p.layer, p.pooling) for p in probes} == {("pre_logits", "head")}
    import vitlab.analysis.representations

    monkeypatch.setattr(vitlab.analysis.representations, "fewshot_probes", lambda *a, **kw: pytest.fail("probed twice"))
    assert sweep(config) == runs
    with pytest.raises(ValueError, match="few-shot probes need"):
        sweep(_tiny(tmp_path, fewshot=(20,)))  # 20 per class: more than the 100-image subset holds


def test_the_committed_sweep_still_reads():
    runs = result_files.read_runs(result_files.RESULTS)
    stored = json.loads((ROOT / "data/results/vit_vs_resnet.json").read_text())["runs"]
    assert [(r.model, r.subset_size, r.seed, r.test_accuracy) for r in runs] == \
        [(r["model"], r["subset_size"], r["seed"], r["test_accuracy"]) for r in stored]
    probes = json.loads((ROOT / "data/results/vit_vs_resnet-fewshot.json").read_text())["runs"]
    probed = {(p["model"], p["subset_size"], p["seed"]): p["fewshot_25"] for p in probes}
    assert probed and all(r.fewshot[25] == probed[(r.model, r.subset_size, r.seed)] for r in runs
                          if (r.model, r.subset_size, r.seed) in probed)


def test_the_committed_inside_views_read_and_match_their_runs():
    from vitlab.analysis.metrics import uniform_attention_distance

    views, commands = result_files.read_run_insides(result_files.INSIDE_RESULTS)
    runs = {r.key: r for r in result_files.read_runs(result_files.INSIDE_RESULTS)}
    assert sorted(v.key for v in views) == sorted(runs) and len(views) == 6
    assert commands[-1].endswith("--results data/results/vit_inside")
    cfg = ARCHITECTURES["vit_tiny_c10"]
    grid = (cfg.img_size // cfg.patch_size,) * 2
    for v in views:
        assert v.test_accuracy == runs[v.key].test_accuracy and v.code_version == runs[v.key].code_version
        assert v.view.uniform == pytest.approx(uniform_attention_distance(grid, (cfg.patch_size,) * 2))
        assert len(v.view.distance) == cfg.depth and v.lowest_low <= v.view.lowest_local <= v.lowest_high


def test_a_sweep_from_pretrained_weights_keeps_its_runs_apart_from_runs_from_scratch(fake_cifar, tmp_path):
    from vitlab.training.config import TrainConfig
    from vitlab.training.loop import train

    train(TrainConfig(model="vit_micro_c10", objective="mpp", label_smoothing=0.0, epochs=1, batch_size=64,
                      eval_size=50), tmp_path / "pre", progress=False)
    encoder = tmp_path / "pre" / "model.safetensors"
    with pytest.raises(vitlab.training.config.ConfigError, match=r"holds a vit_micro_c10, which cannot start \['resnet_micro_c10'\]"):
        sweep(_tiny(tmp_path, init=str(encoder)))
    scratch = sweep(_tiny(tmp_path, models=("vit_micro_c10",), sizes=(100,)))
    tuned_config = _tiny(tmp_path, models=("vit_micro_c10",), sizes=(100,), init=str(encoder))
    assert tuned_config.runs()[0].init == "mpp:model"  # the objective from the sidecar, the name from the file
    runs = sweep(tuned_config)
    assert len(runs) == 2 and {r.init for r in runs} == {"", "mpp:model"}  # not skipped as the scratch run
    (tuned,) = [r for r in runs if r.init]
    pre_steps = json.loads(encoder.with_suffix(".json").read_text())["metrics"]["step"]  # of 64 images each
    assert tuned.images_seen_total == tuned.images_seen + 64 * pre_steps
    assert tuned.train_flops_total == tuned.train_flops + 64 * pre_steps * _mpp_flops(ARCHITECTURES["vit_micro_c10"])
    assert next(r for r in runs if not r.init) == scratch[0]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["vit_micro_c10-n100-s0-e2", "vit_micro_c10-n100-s0-e2-from-mpp-model"]
    meta = json.loads((tmp_path / "runs" / folders[1] / "model.json").read_text())
    assert meta["config"]["init"] == str(encoder) and meta["config"]["lr"] == tuned.lr
    # The fine-tuned run started from the encoder: its patch embedding moved from the pre-trained one, not from
    # a fresh initialisation (which is what the run from scratch started from).
    pre = load_model(encoder, device="cpu").patch_embed.proj.weight
    after = load_model(tmp_path / "runs" / folders[1] / "model.safetensors", device="cpu").patch_embed.proj.weight
    fresh = load_model(tmp_path / "runs" / folders[0] / "model.safetensors", device="cpu").patch_embed.proj.weight
    assert (after - pre).norm() < (fresh - pre).norm()
    views, _ = result_files.read_run_insides(tuned_config.results)
    assert sorted(v.init for v in views) == ["", "mpp:model"]
    assert sweep(tuned_config) == runs  # done: nothing retrained


@pytest.mark.parametrize("kw, error", [
    (dict(init="vit_micro_c10"), "names no trained weights here"),
    (dict(init="no-such-file.safetensors"), "--init no-such-file.safetensors"),
])
def test_a_sweep_init_that_cannot_start_its_models_is_refused_up_front(fake_cifar, tmp_path, monkeypatch, kw, error):
    monkeypatch.setattr(data, "cifar10", lambda split: pytest.fail("read data before checking the init"))
    with pytest.raises(vitlab.training.config.ConfigError, match=error):
        sweep(_tiny(tmp_path, **kw))
