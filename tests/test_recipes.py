"""Recipe comparisons: collecting runs, reading them back, the readout, the figures and the explorer."""
import dataclasses
import json
import re

import pytest
import torch

from vitlab import settings
from vitlab.analysis.distance import head_statistics
from vitlab.training import inside
from vitlab.training import run_folder
from vitlab.views import recipe_readouts
from vitlab.training import recipes
from vitlab.training import loop
from vitlab.training.config import ConfigError, TrainConfig
from vitlab.models import load_model
from vitlab.records import InsideView, RecipeRun, Recipes
from vitlab.result_files import ResultsFileError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four finished micro-ViT runs on fake data: two arms (plain, CutMix) of two seeds, 2 epochs each."""
    from conftest import make_batches

    root = tmp_path_factory.mktemp("recipes")
    make_batches(root / "data", per_batch=64, test_size=60)  # 320 training images
    folders = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITLAB_DATA", str(root / "data"))
        mp.setenv("VITLAB_CACHE", str(root / "cache"))
        for arm, cutmix in (("plain", 0.0), ("CutMix", 1.0)):
            for seed in (0, 1):
                out = root / f"{arm.lower()}-s{seed}"
                config = TrainConfig(model="vit_micro_c10", epochs=2, batch_size=32, seed=seed, cutmix=cutmix,
                                           eval_size=50)
                loop.train(config, out, progress=False)
                folders.setdefault(arm, []).append(out)
        yield root, folders, mp


@pytest.fixture(scope="module")
def collected(trained):
    root, folders, mp = trained
    return recipes.collect(folders, root / "comparison", commands=["collect it"]), root / "comparison"


def test_collect_copies_the_records_and_reads_them_back(trained, collected):
    root, folders, _ = trained
    comparison, out = collected
    assert list(comparison.arms) == ["plain", "CutMix"]
    assert comparison.differs_in == {"cutmix": {"plain": 0.0, "CutMix": 1.0}}  # computed from the configs
    for run, folder in zip(comparison.runs, [f for fs in folders.values() for f in fs]):
        for name in recipes.RUN_FILES:
            assert (out / folder.name / name).read_bytes() == (folder / name).read_bytes()
        assert not (out / folder.name / "model.safetensors").exists()  # weights stay out: small enough to commit
        assert run.views == run_folder.read_inside(folder) and run.epochs == [1, 2]
        assert run.metrics == run_folder.read_metrics(folder)
        assert run.seed == json.loads((folder / "model.json").read_text())["config"]["seed"]
    assert comparison.commands[-1] == "collect it" and all("--seed" in c for c in comparison.commands[:-1])
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_final_spread_brackets_the_trainers_last_view(trained, collected):
    """The per-image recompute of the final model and the view the trainer recorded agree."""
    root, folders, mp = trained
    comparison, _ = collected
    for run, folder in zip(comparison.runs, [f for fs in folders.values() for f in fs]):
        stats = head_statistics(load_model(folder / "model.safetensors", device="cpu"), inside.probe_images())
        per_image = stats["distance_per_image"][:, 0]  # (images, heads): the lowest layer
        head = int(per_image.mean(0).argmin())
        assert run.views[-1].lowest_local == pytest.approx(float(per_image.mean(0)[head]), abs=1e-4)
        assert run.lowest_std == pytest.approx(float(per_image[:, head].std()), rel=1e-4)
        assert run.lowest_low < run.views[-1].lowest_local < run.lowest_high


def test_collect_refuses_before_writing(trained, collected, tmp_path):
    root, folders, _ = trained
    _, out = collected
    with pytest.raises(FileExistsError, match="exists; choose another --out, or pass --force"):
        recipes.collect(folders, out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks metrics.jsonl, inside.jsonl, inside.safetensors, model"):
        recipes.collect({"a": folders["plain"], "b": [broken]}, tmp_path / "new")
    with pytest.raises(ConfigError, match="at least two arms"):
        recipes.collect({"a": folders["plain"]}, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_zoo_entry_published_with_its_inside_views_is_an_arm(trained, tmp_path):
    from vitlab.models import loading

    _, folders, _ = trained
    out = tmp_path / "with-zoo"
    with pytest.raises(FileNotFoundError, match="^vit_tiny_c10 lacks inside.jsonl, inside.safetensors: .* zoo entries"):
        recipes.collect({"zoo": ["vit_tiny_c10"], "plain": folders["plain"][:1]}, out)  # published without them
    assert not out.exists()
    comparison = recipes.collect({"zoo": ["vit_tiny_c10_e40"], "plain": folders["plain"][:1]}, out)
    zoo_dir, inside_dir = loading.ZOO_DIR, loading.ZOO_DIR / "vit_tiny_c10_e40.inside"
    copied = out / "vit_tiny_c10_e40"
    assert (copied / "model.json").read_bytes() == (zoo_dir / "vit_tiny_c10_e40.json").read_bytes()
    assert (copied / "metrics.jsonl").read_bytes() == (zoo_dir / "vit_tiny_c10_e40.metrics.jsonl").read_bytes()
    assert (copied / "inside.safetensors").read_bytes() == (inside_dir / "inside.safetensors").read_bytes()
    run = comparison.arms["zoo"][0]
    assert run.views == run_folder.read_inside(inside_dir) and len(run.metrics) == 40
    sidecar = json.loads((zoo_dir / "vit_tiny_c10_e40.json").read_text())
    assert comparison.commands[0] == sidecar["command"]  # as trained, not rebuilt with a staging --out
    assert comparison.differs_in["epochs"] == {"zoo": 40, "plain": 2}


def test_runs_of_one_arm_may_differ_only_in_their_seed():
    base = dataclasses.asdict(TrainConfig())
    same = recipes.differences({"a": [base, dict(base, seed=1)], "b": [dict(base, cutmix=1.0, mix_prob=0.5)]})
    assert same == {"cutmix": {"a": 0.0, "b": 1.0}, "mix_prob": {"a": 1.0, "b": 0.5}}
    with pytest.raises(ConfigError, match="arm 'a' differ in lr, not only in their seed"):
        recipes.differences({"a": [base, dict(base, lr=0.5)], "b": [base]})


def test_a_setting_a_run_predates_counts_as_its_default(trained, tmp_path):
    """Runs trained before --cutmix existed recorded no such field: they are not an arm of their own."""
    import shutil

    root, folders, _ = trained
    old = tmp_path / "old-s0"
    shutil.copytree(folders["plain"][0], old)
    record = json.loads((old / "model.json").read_text())
    for field in ("mixup", "cutmix", "mix_prob", "mix_switch_prob"):
        del record["config"][field]
    (old / "model.json").write_text(json.dumps(record))
    comparison = recipes.collect({"old": [old], "CutMix": folders["CutMix"][:1]}, tmp_path / "c")
    assert comparison.differs_in == {"cutmix": {"old": 0.0, "CutMix": 1.0}}
    assert comparison.runs[0].config["cutmix"] == 0.0


def test_force_replaces_a_comparison_whole(trained, tmp_path):
    root, folders, _ = trained
    out = tmp_path / "c"
    recipes.collect(folders, out)
    recipes.collect({"first": folders["plain"][:1], "second": folders["CutMix"][:1]}, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([recipes.EXPERIMENT, "plain-s0", "cutmix-s0"])
    assert list(recipes.read(out).arms) == ["first", "second"]


def _checksums(folder):
    """sha256 of every file below ``folder``, by its path relative to it."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_never_replaces_a_run_being_compared(trained, tmp_path):
    """``--arm a R1 --arm b R2 --out R1 --force``: R1's weights and checkpoints stay, refused before any work."""
    import shutil

    from vitlab.__main__ import main

    _, folders, _ = trained
    run = tmp_path / "r1"
    shutil.copytree(folders["plain"][0], run)
    before = _checksums(run)
    assert {"model.safetensors", "checkpoint.json"} <= before.keys()
    for out in (run, tmp_path):  # the run itself, or a folder holding it
        message = f"--out {re.escape(str(out))} holds a run being compared .*{re.escape(str(run))}.*choose another"
        with pytest.raises(SystemExit, match=message):
            main(["recipes", "--arm", "a", str(run), "--arm", "b", str(folders["CutMix"][0]), "--out", str(out),
                  "--force"])
    assert _checksums(run) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["r1"]  # no temporary left


@pytest.mark.parametrize("foreign, named", [("notes.txt", "notes.txt"), ("plain-s0/notes.txt", "plain-s0/notes.txt"),
                                            ("unlisted/model.json", "unlisted"), ("vitlab.lock", "vitlab.lock")])
def test_force_never_replaces_a_folder_holding_what_vitlab_did_not_write(trained, tmp_path, foreign, named):
    """A user's file in a comparison (or a folder that is none) stays: refused in one line naming it."""
    _, folders, _ = trained
    out = tmp_path / "c"
    recipes.collect(folders, out)
    (out / foreign).parent.mkdir(exist_ok=True)
    (out / foreign).write_text("mine")
    before = _checksums(out)
    message = f"^--out {re.escape(str(out))} is not a comparison vitlab wrote .*{re.escape(named)}"
    with pytest.raises(FileExistsError, match=message) as err:
        recipes.collect({"first": folders["plain"][:1], "second": folders["CutMix"][:1]}, out, force=True)
    assert "\n" not in str(err.value) and "move it away or choose another --out" in str(err.value)
    assert _checksums(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["c"]
    bare = tmp_path / "bare"  # no comparison at all
    bare.mkdir()
    (bare / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"holds no {recipes.EXPERIMENT}"):
        recipes.collect({"first": folders["plain"][:1], "second": folders["CutMix"][:1]}, bare, force=True)
    assert (bare / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["{", json.dumps({"format": 1}), json.dumps({"format": 9, "arms": {}})])
def test_a_damaged_comparison_is_named_in_one_line(collected, tmp_path, damage):
    import shutil

    _, out = collected
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / recipes.EXPERIMENT).write_text(damage)
    with pytest.raises(ResultsFileError, match=str(copy / recipes.EXPERIMENT)) as err:
        recipes.read(copy)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="python -m vitlab recipes"):
        recipes.read(tmp_path / "nothing")


# --- the readout and figures on hand-made comparisons -----------------------------------------


def _view(epoch: int, lowest: float, uniform: float = 16.0, structure: float = 0.3) -> InsideView:
    distance = [[lowest, lowest + 4.0, 18.0], [14.0, 15.0, 16.0]]  # (layers, heads): the lowest head is `lowest`
    return InsideView(epoch=epoch, step=10 * epoch, images=100, grid=(8, 8), patch_size=(4, 4), num_prefix_tokens=1,
                      distance=distance, entropy=[[1.0] * 3] * 2, uniform=uniform, position_distance=structure,
                      position_row_column=0.1, mirror=0.2, mirror_neighbour=0.3, filter_variance_first=0.1,
                      filter_variance_k=0.9, filter_k=28)


def _run(arm: str, seed: int, lowest: list[float], accuracy: list[float], interval=(-0.5, 0.5)) -> RecipeRun:
    views = [_view(e + 1, x) for e, x in enumerate(lowest)]
    metrics = [dict(epoch=e + 1, test_accuracy=a) for e, a in enumerate(accuracy)]
    return RecipeRun(name=f"{arm}-{seed}", arm=arm, seed=seed, config=dict(model="vit_tiny_c10", seed=seed, batch_size=8),
                     code_version="abc", metrics=metrics, views=views, lowest_std=1.0,
                     lowest_low=lowest[-1] + interval[0], lowest_high=lowest[-1] + interval[1])


def _comparison() -> Recipes:
    plain = [_run("plain", 0, [15.0, 14.0], [0.5, 0.6]), _run("plain", 1, [15.5, 14.5], [0.5, 0.62])]
    cutmix = [_run("CutMix", 0, [12.0, 3.0], [0.4, 0.58]), _run("CutMix", 1, [13.0, 9.0], [0.4, 0.6])]
    return Recipes(arms={"plain": plain, "CutMix": cutmix}, differs_in={"cutmix": {"plain": 0.0, "CutMix": 1.0}},
                   commands=[])


def test_the_readout_says_what_each_arm_measured():
    r = recipe_readouts.recipes(_comparison())
    assert r.epoch == 2 and r.arms == ["plain", "CutMix"]
    assert r.lowest == {"plain": [14.0, 14.5], "CutMix": [3.0, 9.0]}
    assert r.accuracy == {"plain": [0.6, 0.62], "CutMix": [0.58, 0.6]}
    assert r.images_seen == {"plain": [160, 160], "CutMix": [160, 160]}  # 20 steps (the view's) x 8 images
    assert "plain: 160 images seen" in r.text
    assert r.high == {"plain": [14.5, 15.0], "CutMix": [3.5, 9.5]}  # the final models' intervals
    # Local: the interval's top below half of uniform attention (8 px): only CutMix seed 0.
    assert r.local == {"plain": [False, False], "CutMix": [True, False]}
    assert "CutMix minus plain: most local head -8.2 px, accuracy -2.0 points" in r.text
    assert "CutMix: 1 of 2 runs with a local head" in r.text and "cutmix (plain: 0.0, CutMix: 1.0)" in r.text
    early = recipe_readouts.recipes(_comparison(), epoch=1)
    assert early.lowest == {"plain": [15.0, 15.5], "CutMix": [12.0, 13.0]} and early.high["plain"] == []
    assert "no run has a local head" in early.text and "its value below 50%" in early.text


def test_the_readout_follows_each_run_across_epochs_and_judges_the_gap_against_the_seed_spread():
    r = recipe_readouts.recipes(_comparison())
    assert r.epochs == [1, 2] and r.by_epoch["CutMix"] == [[12.0, 3.0], [13.0, 9.0]]
    # Seeds of CutMix span 6.0 px at epoch 2 (3 and 9), plain 0.5: the means (14.25, 6.0) are 8.25 px apart.
    assert r.seed_span == 6.0 and r.separated == {"CutMix": True} and not r.provisional
    assert "CutMix separates from plain" in r.text and r.falling == {"plain": [False] * 2, "CutMix": [False] * 2}
    # One seed per arm and five epochs: A falls at each of its last three records, B rose once among them.
    single = Recipes(arms={"A": [_run("A", 0, [16.0, 15.5, 15.2, 14.9, 14.7], [0.5] * 5)],
                           "B": [_run("B", 0, [16.0, 15.0, 15.1, 15.0, 14.9], [0.5] * 5)]},
                     differs_in={}, commands=[])
    r = recipe_readouts.recipes(single)
    assert r.falling == {"A": [True], "B": [False]} and r.provisional
    assert r.seed_span is None and r.separated == {"B": False} and "no seed spread is measured" in r.text
    assert "Still falling at epoch 5 (lower at each of the last 3 records): A (seed 0), so" in r.text
    near = recipe_readouts.recipes(single, seed_span=(0.55, "the 10-epoch seeds"))  # 0.2 px apart
    assert near.separated == {"B": False} and "0.6 px (the 10-epoch seeds)" in near.text
    assert "B does not separate from A (provisional: an arm has one seed)" in near.text
    far = recipe_readouts.recipes(single, seed_span=(0.1, "elsewhere"))
    assert far.separated == {"B": True}
    early = recipe_readouts.recipes(single, epoch=4)  # the record up to epoch 4: A 15.5 > 15.2 > 14.9, falling
    assert early.epochs == [1, 2, 3, 4] and early.falling == {"A": [True], "B": [False]}


def test_the_side_by_side_figure_draws_every_head_of_every_seed():
    from vitlab.views import study_figures

    fig = study_figures.recipes_figure(_comparison(), 1)
    heads = [t for t in fig.data if t.name and t.name.endswith(": heads")]
    assert len(heads) == 4 and {t.xaxis for t in heads} == {"x", "x2"}  # one panel per arm
    cutmix_s0 = next(t for t in heads if t.name == "CutMix, seed 0: heads")
    assert sorted(cutmix_s0.y) == sorted([12.0, 16.0, 18.0, 14.0, 15.0, 16.0])  # epoch 1's distances
    assert any(t.name and t.name.startswith("uniform attention (16.0 px)") for t in fig.data)
    assert len(fig.layout.annotations) == 2  # the arms' panel titles


def test_the_timeline_has_a_line_per_run_and_the_final_intervals():
    from vitlab.views import study_figures

    fig = study_figures.recipes_timeline_figure(_comparison(), epoch=1)
    lines = [t for t in fig.data if t.xaxis == "x" and t.name and "seed" in t.name]
    assert [list(t.y) for t in lines] == [[15.0, 14.0], [15.5, 14.5], [12.0, 3.0], [13.0, 9.0]]
    assert [list(t.error_y.array) for t in lines][2] == [0.0, 0.5]
    assert fig.layout.yaxis.range[0] == 0  # from zero
    assert len(fig.layout.shapes) == 2  # the epoch shown, marked on both panels


def test_the_explorer_redraws_the_arms_at_the_chosen_epoch(collected):
    from vitlab.views.study_explorers import RecipesExplorer

    _, out = collected
    explorer = RecipesExplorer(out)
    assert list(explorer.epoch.options) == [1, 2] and explorer.measured.epoch == 2
    explorer.epoch.value = 1
    assert explorer.measured.epoch == 1 and "Epoch 1" in explorer.readout.value
    run = explorer.comparison.arms["CutMix"][1]
    trace = next(t for t in explorer.distance.data if t.name == "CutMix, seed 1: heads")
    assert sorted(trace.y) == pytest.approx(sorted(torch.tensor(run.views[0].distance).flatten().tolist()))


def test_the_command_collects_and_prints_the_readout(trained, tmp_path, capsys):
    from vitlab.__main__ import main

    root, folders, _ = trained
    out = tmp_path / "cli"
    main(["recipes", "--arm", "plain", *map(str, folders["plain"]), "--arm", "CutMix", *map(str, folders["CutMix"]),
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "arms differing in cutmix (plain: 0.0, CutMix: 1.0)" in printed
    assert recipes.read(out).commands[-1].startswith("python -m vitlab recipes --arm plain ")
    with pytest.raises(SystemExit, match="--arm solo: give each arm once, as a label followed by its run folders"):
        main(["recipes", "--arm", "solo", "--arm", "x", "y", "--out", str(tmp_path / "no")])


def test_docs_state_what_the_committed_records_measure():
    """The figures docs/results.md states for the CutMix comparison are those the readout computes from data/results/locality."""
    results = (settings.PROJECT_ROOT / "docs" / "results.md").read_text()
    stated = results.split("## What makes a small ViT's heads local?")[1].split("\n## ")[0]
    r = recipe_readouts.recipes(recipes.read())
    plain, cutmix = r.arms
    for arm in r.arms:
        for seed, px in zip(r.seeds[arm], r.lowest[arm]):
            assert f"{px:.1f}" in stated, (arm, seed)
        assert f"{100 * sum(r.accuracy[arm]) / len(r.accuracy[arm]):.1f}%" in stated
    assert f"{r.uniform:.1f} px" in stated
    shift = sum(r.lowest[cutmix]) / 2 - sum(r.lowest[plain]) / 2
    cost = 100 * (sum(r.accuracy[plain]) - sum(r.accuracy[cutmix])) / 2
    assert f"{shift:.1f} px *further* from local" in stated and shift > 0  # the docs' direction is the records'
    assert f"{cost:.1f} points" in stated
    assert not any(any(r.local[arm]) for arm in r.arms) and "did **not** make any head local" in stated


def test_every_code_version_a_run_went_through_is_read_and_older_sidecars_give_their_last(trained, tmp_path):
    """Sidecars list every code version of a run (issue 28, item 12); one written before they did reads as its
    ``code_version`` alone."""
    import shutil

    root, folders, _ = trained
    assert json.loads((folders["plain"][0] / "model.json").read_text())["code_versions"] == [run_folder.code_version()]
    old = tmp_path / "old-s0"
    shutil.copytree(folders["plain"][0], old)
    record = json.loads((old / "model.json").read_text())
    del record["code_versions"]
    (old / "model.json").write_text(json.dumps(dict(record, code_version="abc1234")))
    comparison = recipes.collect({"old": [old], "CutMix": folders["CutMix"][:1]}, tmp_path / "c")
    assert [r.code_versions for r in comparison.runs] == [("abc1234",), (run_folder.code_version(),)]
