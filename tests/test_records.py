import csv
import dataclasses
import json
import math
import statistics

import pytest

from vitlab import result_files
from vitlab.records import ProbeRecord, RunProbe, RunRecord, Spread, group_spread, spread

SUFFIXES = (".json", ".csv", "-fewshot.json", "-fewshot.csv")


def test_committed_results_are_rewritten_byte_for_byte(tmp_path):
    runs = result_files.read_runs(result_files.RESULTS)
    probes, probe_commands = result_files.read_run_probes(result_files.RESULTS)
    count = {f: sum(r.family == f for r in runs) for f in ("vit", "hybrid", "resnet")}
    assert count == {"vit": 16, "hybrid": 6, "resnet": 16} and len(probes) == len(runs) == 38
    insides, inside_commands = result_files.read_run_insides(result_files.RESULTS)
    assert [v.model for v in insides] == ["hybrid_tiny_c10"] * 6  # the hybrid's runs: ViTs' are in INSIDE_RESULTS
    out = tmp_path / "copy"
    result_files.write_runs(out, runs, result_files.read_commands(result_files.RESULTS))
    result_files.write_run_probes(out, probes, probe_commands)
    result_files.write_run_insides(out, insides, inside_commands)
    for suffix in (*SUFFIXES, "-inside.json", "-inside.csv"):
        assert (tmp_path / f"copy{suffix}").read_bytes() == result_files.RESULTS.with_name(
            result_files.RESULTS.name + suffix).read_bytes(), suffix


def test_committed_runs_carry_their_probes_and_family():
    runs = result_files.read_runs(result_files.RESULTS)
    raw = json.loads(result_files.RESULTS.with_name(result_files.RESULTS.name + "-fewshot.json").read_text())["runs"]
    for r in runs:
        assert isinstance(r, RunRecord) and r.family in ("vit", "hybrid", "resnet") and r.model.startswith(r.family)
        (row,) = [p for p in raw if (p["model"], p["subset_size"], p["seed"], p["epochs"]) ==
                  (r.model, r.subset_size, r.seed, r.epochs)]
        assert r.fewshot == {k: row[f"fewshot_{k}"] for k in (1, 5, 10, 25)}
        assert r.key == (r.model, r.subset_size, r.seed, r.epochs, 128, "")
    assert result_files.read_commands(result_files.RESULTS)[0].startswith("python -m vitlab sweep")
    assert result_files.read_commands(result_files.RESULTS, "-fewshot") == result_files.read_run_probes(result_files.RESULTS)[1]


def _run(model, family, size, seed, acc):
    return RunRecord(model=model, family=family, subset_size=size, seed=seed, epochs=2, test_accuracy=acc,
                     train_flops=1e12, params=1000, wall_seconds=1.5, hardware="CPU", images_seen=256,
                     flops_per_image=4e9, optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=128,
                     code_version="abc1234")


def test_compute_totals_round_trip_and_old_files_without_them_still_read(tmp_path):
    scratch = _run("vit_b", "vit", 500, 0, 0.3)
    tuned = dataclasses.replace(scratch, init="mpp:enc", images_seen_total=256 + 1000, train_flops_total=1e12 + 5e14)
    assert (scratch.images_seen_total, scratch.train_flops_total) == (256, 1e12)  # from scratch: its own training
    results = tmp_path / "sweep"
    result_files.write_runs(results, [tuned, scratch], ["cmd"])
    assert result_files.read_runs(results) == [scratch, tuned]
    with open(tmp_path / "sweep.csv") as f:
        assert [row["images_seen_total"] for row in csv.DictReader(f)] == ["256", "1256"]
    stored = json.loads((tmp_path / "sweep.json").read_text())
    for row in stored["runs"]:  # as a file written before the totals existed
        del row["images_seen_total"], row["train_flops_total"]
    (tmp_path / "sweep.json").write_text(json.dumps(stored))
    with pytest.raises(result_files.ResultsFileError, match="predates images_seen_total .* fine-tuned from mpp:enc"):
        result_files.read_runs(results)
    assert result_files.read_runs(results, history={"mpp:enc": (1000, 5e14)}.get) == [scratch, tuned]
    # Written back, as the error says: the totals are added to the stored rows, no run recorded two ways.
    result_files.write_runs(results, result_files.read_runs(results, history={"mpp:enc": (1000, 5e14)}.get), ["cmd"])
    assert result_files.read_runs(results) == [scratch, tuned]
    with pytest.raises(TypeError, match="needs images_seen_total and train_flops_total"):
        RunRecord(model="vit_b", family="vit", subset_size=500, seed=0, epochs=2, test_accuracy=0.3, init="mpp:enc")


def test_round_trip_orders_runs_and_merges_probes(tmp_path):
    runs = [_run("vit_b", "vit", 500, 1, 0.3), _run("resnet_a", "resnet", 1000, 0, 0.5),
            _run("vit_b", "vit", 500, 0, 0.25)]
    results = tmp_path / "results" / "sweep"
    assert result_files.read_runs(results) == [] and result_files.read_commands(results) == []
    assert result_files.read_run_probes(results) == ([], [])
    result_files.write_runs(results, runs, ["cmd one"])
    back = result_files.read_runs(str(results) + ".json")  # a .json/.csv ending on the name is dropped
    assert back == sorted(runs, key=lambda r: (r.family, r.model, r.subset_size, r.seed, r.epochs))
    assert all(r.fewshot == {} for r in back)
    probe = RunProbe(model="vit_b", family="vit", subset_size=500, seed=1, epochs=2, batch_size=128,
                     layer="pre_logits", pooling="head", fewshot={10: 0.4, 1: 0.2},
                     probe_setting=dict(shots=[1, 10], seeds=2, test=50))
    result_files.write_run_probes(results, [probe], ["cmd two"])
    assert result_files.read_run_probes(results) == ([probe], ["cmd two"])
    merged = {r.key: r.fewshot for r in result_files.read_runs(results)}
    assert merged[probe.key] == {1: 0.2, 10: 0.4} and sum(bool(f) for f in merged.values()) == 1
    with open(f"{results}-fewshot.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "family", "subset_size", "seed", "epochs", "layer", "pooling",
                             "fewshot_1", "fewshot_10"]
    assert rows[0]["fewshot_10"] == "0.4"
    with open(f"{results}.csv") as f:
        header = next(csv.reader(f))
    assert tuple(header) == tuple(f for f in result_files.RUN_FIELDS if f != "init") and "fewshot" not in header
    assert json.loads((tmp_path / "results" / "sweep.json").read_text())["commands"] == ["cmd one"]


def test_runs_fine_tuned_from_pretrained_weights_are_told_apart_by_their_init(tmp_path):
    scratch = _run("vit_b", "vit", 500, 0, 0.25)
    tuned = dataclasses.replace(scratch, init="mpp:vit_b_mpp", test_accuracy=0.3)
    assert tuned.key != scratch.key and tuned.label == "vit_b ← mpp:vit_b_mpp" and scratch.label == "vit_b"
    results = tmp_path / "sweep"
    result_files.write_runs(results, [tuned, scratch], ["cmd"])
    assert result_files.read_runs(results) == [scratch, tuned]  # from scratch first, then by init
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert "init" not in stored["runs"][0] and stored["runs"][1]["init"] == "mpp:vit_b_mpp"
    with open(f"{results}.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == result_files.RUN_FIELDS and [r["init"] for r in rows] == ["", "mpp:vit_b_mpp"]
    probe = RunProbe(model="vit_b", family="vit", subset_size=500, seed=0, epochs=2, batch_size=128,
                     init="mpp:vit_b_mpp", layer="pre_logits", pooling="head", fewshot={1: 0.5},
                     probe_setting=dict(shots=[1], seeds=1, test=50))
    result_files.write_run_probes(results, [probe], ["cmd"])
    merged = {r.key: r.fewshot for r in result_files.read_runs(results)}
    assert merged == {scratch.key: {}, tuned.key: {1: 0.5}}


def test_a_failed_write_leaves_the_old_file(tmp_path):
    results = tmp_path / "sweep"
    result_files.write_runs(results, [_run("vit_b", "vit", 500, 0, 0.3)], [])
    before = (tmp_path / "sweep.json").read_bytes()
    with pytest.raises(TypeError):
        result_files.write_runs(results, [_run("vit_b", "vit", 500, 0, object())], [])  # not JSON serialisable
    assert (tmp_path / "sweep.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.json"]  # no temporary left


def test_spread_is_mean_and_sample_std():
    values = [0.2, 0.3, 0.45]
    s = spread(values)
    assert s == Spread(pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values)), 3)
    assert spread([0.7]) == Spread(0.7, 0.0, 1)  # one value: no spread
    mean, std, n = spread(iter([1.0, 3.0]))
    assert (mean, std, n) == (2.0, pytest.approx(2 ** 0.5), 2)
    with pytest.raises(ValueError):
        spread([])


def test_group_spread_groups_in_first_seen_order():
    probes = [ProbeRecord(model="m", family="vit", layer=layer, depth=d, pooling="cls", shots=k, seed=seed,
                          accuracy=0.1 * d + 0.01 * k + 0.02 * seed)
              for seed in (0, 1, 2) for d, layer in ((1, "blocks.1"), (0, "blocks.0")) for k in (5, 1)]
    groups = group_spread(probes, key=lambda p: (p.layer, p.shots), value=lambda p: p.accuracy)
    assert list(groups) == [("blocks.1", 5), ("blocks.1", 1), ("blocks.0", 5), ("blocks.0", 1)]
    for (layer, k), s in groups.items():
        expected = [p.accuracy for p in probes if (p.layer, p.shots) == (layer, k)]
        assert s.n == 3 and s.mean == pytest.approx(statistics.mean(expected))
        assert s.std == pytest.approx(statistics.stdev(expected))


def test_a_crash_between_the_json_and_the_csv_is_repaired_by_the_next_write(tmp_path, monkeypatch):
    results = tmp_path / "sweep"
    one, two = _run("vit_b", "vit", 500, 0, 0.3), _run("vit_b", "vit", 1000, 0, 0.4)
    result_files.write_runs(results, [one], ["cmd"])
    old_csv = (tmp_path / "sweep.csv").read_bytes()
    real = result_files.atomic_write

    def dies_on_the_csv(path, write):
        if str(path).endswith(".csv"):
            raise KeyboardInterrupt  # killed after the .json was replaced
        return real(path, write)

    monkeypatch.setattr(result_files, "atomic_write", dies_on_the_csv)
    with pytest.raises(KeyboardInterrupt):
        result_files.write_runs(results, [one, two], ["cmd"])
    assert result_files.read_runs(results) == [one, two]  # the record is whole
    assert (tmp_path / "sweep.csv").read_bytes() == old_csv  # the copy is one run behind, not torn
    monkeypatch.setattr(result_files, "atomic_write", real)
    result_files.write_runs(results, result_files.read_runs(results), ["cmd"])
    result_files.write_runs(tmp_path / "fresh", [one, two], ["cmd"])
    assert (tmp_path / "sweep.csv").read_bytes() == (tmp_path / "fresh.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.csv", "fresh.json", "sweep.csv", "sweep.json"]


@pytest.mark.parametrize("tear", [lambda t: t[: len(t) // 2], lambda t: "", lambda t: t.replace("{", "[", 1)],
                         ids=["half", "empty", "not an object"])
def test_a_torn_results_file_is_named_and_never_read_as_empty(tmp_path, tear):
    results = tmp_path / "sweep"
    result_files.write_runs(results, [_run("vit_b", "vit", 500, 0, 0.3)], ["cmd"])
    path = tmp_path / "sweep.json"
    path.write_text(tear(path.read_text()))
    torn = path.read_bytes()
    for read in (result_files.read_runs, result_files.read_commands):
        with pytest.raises(result_files.ResultsFileError, match=f"^{path} is not a complete results file .*restore it"):
            read(results)
    assert path.read_bytes() == torn


def test_inside_view_round_trips_through_its_json_line_and_reads_its_summaries():
    from vitlab.records import InsideView

    view = InsideView(epoch=3, step=30, images=256, grid=(2, 2), patch_size=(4, 4), num_prefix_tokens=1,
                      distance=[[3.0, 5.0], [6.0, 8.0]], entropy=[[1.0, 1.2], [1.3, 1.4]], uniform=4.5,
                      position_distance=0.5, position_row_column=float("nan"), mirror=0.2, mirror_neighbour=0.3,
                      filter_variance_first=0.1, filter_variance_k=0.9, filter_k=4)
    line = view.to_json()
    assert "\n" not in line and json.loads(line)["distance"] == [[3.0, 5.0], [6.0, 8.0]]
    back = InsideView.from_json(line)
    assert back.grid == (2, 2) and back.distance == view.distance and math.isnan(back.position_row_column)
    assert back.lowest_local == 3.0 and back.layer_means == [4.0, 7.0]
    with pytest.raises(TypeError, match="missing \\['uniform'\\]"):
        InsideView.from_json({k: v for k, v in json.loads(line).items() if k != "uniform"})


def _run_inside(size, lowest, high, seed=0):
    from vitlab.records import InsideView, RunInside

    view = InsideView(epoch=5, step=40, images=256, grid=(2, 2), patch_size=(4, 4), num_prefix_tokens=1,
                      distance=[[lowest, lowest + 1.0], [6.0, 8.0]], entropy=[[1.0, 1.2], [1.3, 1.4]], uniform=4.2,
                      position_distance=0.5, position_row_column=0.1, mirror=0.2, mirror_neighbour=0.3,
                      filter_variance_first=0.1, filter_variance_k=0.9, filter_k=4)
    return RunInside(model="vit_micro_c10", family="vit", subset_size=size, seed=seed, epochs=5, batch_size=50,
                     test_accuracy=0.5, code_version="abc1234", view=view, lowest_std=0.3, lowest_low=lowest - 0.1,
                     lowest_high=high)


def test_run_insides_round_trip_with_a_summary_csv(tmp_path):
    results = tmp_path / "sweep"
    runs = [_run_inside(200, 3.0, 3.1), _run_inside(100, 1.0, 1.2)]
    result_files.write_run_insides(results, runs, ["python -m vitlab sweep --sizes 100 200"])
    back, commands = result_files.read_run_insides(results)
    assert back == sorted(runs, key=lambda r: r.subset_size) and commands == ["python -m vitlab sweep --sizes 100 200"]
    with open(tmp_path / "sweep-inside.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["subset_size"]), float(r["lowest_local"]), float(r["lowest_high"])) for r in rows] == \
        [(100, 1.0, 1.2), (200, 3.0, 3.1)]
    path = tmp_path / "sweep-inside.json"
    path.write_text(path.read_text()[:-40])  # torn
    with pytest.raises(result_files.ResultsFileError, match="sweep-inside.json is not a complete results file"):
        result_files.read_run_insides(results)


# --- two writers of one results file (two sweeps at once) ---------------------------------------


def _probe_of(size, accuracy=0.2):
    return RunProbe(model="vit_b", family="vit", subset_size=size, seed=0, epochs=2, batch_size=128,
                    layer="pre_logits", pooling="head", fewshot={1: accuracy}, probe_setting=dict(shots=[1], seeds=1))


#: kind -> (write, read the records, a run's record of ``size``, the same run recorded otherwise, tag, what differs)
_KINDS = {
    "runs": (result_files.write_runs, result_files.read_runs, lambda n: _run("vit_b", "vit", n, 0, 0.3),
             lambda r: dataclasses.replace(r, test_accuracy=0.31), "", "test_accuracy 0.3 there, 0.31"),
    "probes": (result_files.write_run_probes, lambda res: result_files.read_run_probes(res)[0], _probe_of,
               lambda p: dataclasses.replace(p, fewshot={1: 0.25}), "-fewshot", "fewshot_1 0.2 there, 0.25"),
    "insides": (result_files.write_run_insides, lambda res: result_files.read_run_insides(res)[0],
                lambda n: _run_inside(n, 3.0, 3.1), lambda v: dataclasses.replace(v, lowest_std=0.4), "-inside",
                "lowest_std 0.3 there, 0.4"),
}


@pytest.mark.parametrize("kind", _KINDS)
def test_two_writers_keep_both_runs_and_a_run_recorded_two_ways_is_refused(tmp_path, kind):
    """Each writer passes what it read when it started (nothing) and its own run: the file keeps both."""
    write, read, record, otherwise, tag, differs = _KINDS[kind]
    results = tmp_path / "sweep"
    first, second = record(100), record(200)
    write(results, [first], ["sweep one"])
    write(results, [second], ["sweep two"])
    assert read(results) == [first, second]
    assert result_files.read_commands(results, tag) == ["sweep one", "sweep two"]
    with open(tmp_path / f"sweep{tag}.csv") as f:
        assert [int(row["subset_size"]) for row in csv.DictReader(f)] == [100, 200]
    write(results, [second, first], ["sweep one"])  # the same records again: nothing changes
    assert read(results) == [first, second]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    path = tmp_path / f"sweep{tag}.json"
    with pytest.raises(result_files.ResultsFileError, match=f"^{path} already records {first.model} on 100 images, "
                       f"seed 0, {first.epochs} epochs with {differs} in this write: .*delete one of the two") as err:
        write(results, [otherwise(first), record(300)], ["sweep three"])
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, no lock file left


def test_a_probe_under_another_setting_replaces_the_stored_one_only_when_asked(tmp_path):
    results = tmp_path / "sweep"
    old = _probe_of(100)
    new = dataclasses.replace(old, fewshot={1: 0.3, 5: 0.4}, probe_setting=dict(shots=[1, 5], seeds=1))
    result_files.write_run_probes(results, [old, _probe_of(200)], ["probe one"])
    with pytest.raises(result_files.ResultsFileError, match="already records vit_b on 100 images"):
        result_files.write_run_probes(results, [new], ["probe two"])
    result_files.write_run_probes(results, [new], ["probe two"], replace={old.key})
    assert result_files.read_run_probes(results) == ([new, _probe_of(200)], ["probe one", "probe two"])
