import dataclasses

import pytest

from vitlab.views import study_readouts


def test_data_size_readout_states_each_run_and_applies_the_local_rule():
    from test_records import _run_inside

    runs = [_run_inside(1000, 3.9, 4.0), _run_inside(100, 1.5, 1.9), _run_inside(500, 2.0, 2.2)]
    out = study_readouts.data_size(runs)
    assert out.sizes == [100, 500, 1000] and out.lowest == [1.5, 2.0, 3.9] and out.uniform == 4.2
    # Local: the whole interval below half the uniform distance (2.1 px).
    assert out.local == [True, False, False]
    assert "100 images: 1.5 px (95% interval 1.4 to 1.9" in out.text and "1,000 images: 3.9 px" in out.text
    assert "1 of 3 runs have a local head" in out.text and "uniform attention: 4.2 px" in out.text
    none = study_readouts.data_size([_run_inside(100, 3.0, 3.5)])
    assert none.local == [False] and "no run has a local head" in none.text
    with pytest.raises(ValueError, match="run `python -m vitlab sweep`"):
        study_readouts.data_size([])


# --- pre-training by masked patch prediction ----------------------------------------------------


def _fine_tune_runs():
    from vitlab.records import RunRecord

    def run(size, seed, acc, init=""):
        # 2 images seen per labelled image at 100 FLOPs each; a fine-tuned run's init saw 10,000 at 300 FLOPs
        before = dict(images_seen_total=2 * size + 10_000, train_flops_total=200 * size + 3e6) if init else {}
        return RunRecord(model="vit_t", family="vit", subset_size=size, seed=seed, epochs=5, test_accuracy=acc,
                         init=init, images_seen=2 * size, train_flops=200 * size, **before)

    return [run(1000, 0, 0.40), run(1000, 1, 0.44), run(1000, 0, 0.47, "mpp:enc"), run(1000, 1, 0.49, "mpp:enc"),
            run(5000, 0, 0.60), run(5000, 0, 0.59, "mpp:enc"), run(25000, 0, 0.70),  # 25,000: no fine-tuned run
            run(1000, 0, 0.9, "mpp:other")]


def test_fine_tuning_gain_is_the_difference_of_seed_means_at_sizes_with_both():
    r = study_readouts.fine_tuning(_fine_tune_runs(), "vit_t", "mpp:enc", pretrained_on=50_000)
    assert r.sizes == [1000, 5000]
    assert r.gain[1000] == pytest.approx((0.47 + 0.49) / 2 - (0.40 + 0.44) / 2)
    assert r.gain[5000] == pytest.approx(-0.01)
    assert "pre-training helps at 1 of 2 sizes" in r.text.lower() and "50,000" in r.text
    assert "largest at 1,000 labels (+6.0 points) and smallest at 5,000 (-1.0)" in r.text
    assert "+6.0 points" in r.text and "-1.0 points" in r.text
    # 1,000 labels: 2,000 images and 2e5 FLOPs from scratch; 12,000 and 3.2e6 fine-tuned, the init's included
    assert (r.scratch_images, r.tuned_images) == ({1000: 2000, 5000: 10_000}, {1000: 12_000, 5000: 20_000})
    assert (r.scratch_flops, r.tuned_flops) == ({1000: 2e5, 5000: 1e6}, {1000: 3.2e6, 5000: 4e6})
    assert r.images_ratio == {1000: 6.0, 5000: 2.0} and r.flops_ratio == {1000: 16.0, 5000: 4.0}
    assert "6.0x the images seen (12,000 vs 2,000) and 16.0x the FLOPs (3.20e+06 vs 2.00e+05)" in r.text
    assert "4.0-16.0x the training FLOPs" in r.text and "not at equal compute" in r.text
    with pytest.raises(ValueError, match="no size has runs"):
        study_readouts.fine_tuning(_fine_tune_runs(), "vit_t", "mpp:missing")
    no_compute = [dataclasses.replace(r, images_seen_total=0) if not r.init else r for r in _fine_tune_runs()]
    with pytest.raises(ValueError, match=r"runs of \['vit_t'\] record no training compute"):
        study_readouts.fine_tuning(no_compute, "vit_t", "mpp:enc")


def test_fine_tuning_names_a_compute_matched_arm_only_where_one_ran():
    from vitlab.records import RunRecord

    def scratch(size, seed, acc, images):  # 100 FLOPs per image, as in _fine_tune_runs
        return RunRecord(model="vit_t", family="vit", subset_size=size, seed=seed, epochs=50, test_accuracy=acc,
                         images_seen=images, train_flops=100 * images)

    # 1,000 labels: the fine-tuned arm saw 12,000 images in all; 12,300 is within 5% of that, 13,000 (8%) is not,
    # and 6,000 is neither the fine-tuning budget (2,000) nor the fine-tuned arm's total. 5,000 labels: no matched run.
    extra = [scratch(1000, 0, 0.50, 12_300), scratch(1000, 1, 0.01, 13_000), scratch(1000, 2, 0.99, 6000),
             scratch(5000, 1, 0.02, 40_000)]
    base = study_readouts.fine_tuning(_fine_tune_runs(), "vit_t", "mpp:enc", pretrained_on=50_000)
    r = study_readouts.fine_tuning(_fine_tune_runs() + extra, "vit_t", "mpp:enc", pretrained_on=50_000)
    assert r.matched == {1000: [0.50]} and r.matched_gain == pytest.approx({1000: (0.47 + 0.49) / 2 - 0.50})
    assert (r.matched_images, r.matched_flops) == ({1000: 12_300}, {1000: 1.23e6})
    # The budget arm keeps only the runs at the fine-tuning budget: neither the matched run nor the others join it.
    assert r.scratch == base.scratch == {1000: [0.40, 0.44], 5000: [0.60]} and r.gain == base.gain
    assert (r.scratch_images, r.images_ratio) == (base.scratch_images, base.images_ratio)
    sentence = r.text[r.text.index(" At equal compute"):r.text.index(" The encoder was")]
    # 47% and 49%: sample std sqrt(2 x 1^2 / 1) = 1.4 points over the fine-tuned seeds; one matched seed has none.
    assert "1,000 labels: 48.0% ± 1.4 vs 50.0% (2 vs 1 seeds, provisional) with 12,000 vs 12,300 images seen" in sentence
    assert "the objective loses by 2.0 points" in sentence and "5,000" not in sentence
    assert r.text.replace(sentence, "") == base.text and "At equal compute" not in base.text
    assert base.matched == base.matched_gain == base.matched_images == base.matched_flops == {}
    two = study_readouts.fine_tuning(_fine_tune_runs() + extra + [scratch(1000, 3, 0.40, 11_500)], "vit_t", "mpp:enc")
    assert two.matched_gain == pytest.approx({1000: 0.48 - 0.45}) and "(2 vs 2 seeds) with" in two.text
    assert "the objective wins by 3.0 points" in two.text

def test_pretraining_readout_compares_the_last_epoch_with_the_best_guess():
    log = [dict(epoch=1, step=10, test_accuracy=0.2, wall_seconds=60.0), dict(epoch=2, step=20, test_accuracy=0.5,
                                                                             wall_seconds=120.0)]
    r = study_readouts.pretraining(log, {"neighbours' mean": 0.25, "most frequent": 0.05}, batch_size=8)
    assert (r.accuracy, r.first, r.images_seen, r.minutes) == (0.5, 0.2, 160, 2.0)
    assert "2.0x the best guess (neighbours' mean)" in r.text
    weak = study_readouts.pretraining(log, {"neighbours' mean": 0.6}, batch_size=8)
    assert "no better than the best guess" in weak.text


def test_head_to_head_names_the_leader_and_whether_the_paper_s_finding_holds():
    from vitlab.models import build_model
    from vitlab.training.loop import TrainResult
    from vitlab.training.zoo import train_config

    def run(name, accuracy, step):
        config = train_config(name, subset_size=500, epochs=1, batch_size=50, eval_size=200)
        return config, TrainResult(build_model({"zoo": name}), dict(test_accuracy=accuracy, step=step, epoch=1))

    def readout(vit, resnet):  # (accuracy, steps) of each
        return study_readouts.head_to_head({"ViT": run("vit_micro_c10", *vit),
                                            "ResNet": run("resnet_micro_c10", *resnet)})

    r = readout((0.224, 10), (0.082, 10))
    assert (r.leader, r.as_paper, r.family) == ("ViT", False, {"ViT": "vit", "ResNet": "resnet"})
    assert r.lead == pytest.approx(0.142) and r.images_seen == {"ViT": 500, "ResNet": 500}  # 10 steps of 50
    assert r.test_images == {"ViT": 200, "ResNet": 200} and all(f > 0 for f in r.train_flops.values())
    r = readout((0.30, 10), (0.41, 9))
    assert (r.leader, r.as_paper, r.images_seen["ResNet"]) == ("ResNet", True, 450)
    assert r.lead == pytest.approx(0.11)
    tie = readout((0.3, 10), (0.3, 10))
    assert tie.lead == 0 and not tie.as_paper  # a tie is not a ResNet ahead
    with pytest.raises(ValueError, match="at least two runs"):
        study_readouts.head_to_head({"ViT": run("vit_micro_c10", 0.3, 10)})


def test_inside_comparison_finds_each_models_most_local_head_and_refuses_mixed_grids():
    from test_recipes import _view

    views = {"a": _view(1, 3.0), "b": _view(1, 15.0)}  # a: a local head (3 px) in its lowest layer
    r = study_readouts.inside_comparison(views)
    assert r.lowest == {"a": 3.0, "b": 15.0}  # b: min(15, 19, 18) in its lowest layer; its layer 2 has 14
    assert r.most_local == {"a": (3.0, 1), "b": (14.0, 2)}
    assert "local heads (below 50% of uniform) in: a." in r.text
    other = dataclasses.replace(_view(1, 3.0), grid=(4, 4), patch_size=(8, 8))
    with pytest.raises(ValueError, match="one patch grid"):
        study_readouts.inside_comparison({"a": views["a"], "c": other})


def test_families_compares_seed_means_size_by_size_at_sizes_every_model_ran():
    from vitlab.records import RunRecord

    def run(model, family, size, seed, acc, init="", flops=1e8):
        tuned = dict(images_seen_total=10 * size, train_flops_total=1e20) if init else {}
        return RunRecord(model=model, family=family, subset_size=size, seed=seed, epochs=5, test_accuracy=acc,
                         init=init, flops_per_image=flops, images_seen=size, train_flops=flops * size, **tuned)

    runs = [run("r", "resnet", 1000, 0, 0.45), run("r", "resnet", 5000, 0, 0.60),
            run("v", "vit", 1000, 0, 0.40), run("v", "vit", 1000, 1, 0.44), run("v", "vit", 5000, 0, 0.55),
            run("h", "hybrid", 1000, 0, 0.50, flops=3e8), run("h", "hybrid", 5000, 0, 0.58, flops=3e8),
            run("h", "hybrid", 25000, 0, 0.70, flops=3e8),  # 25,000: only the hybrid ran it
            run("v", "vit", 1000, 0, 0.99, init="mpp:enc")]  # fine-tuned: left out
    r = study_readouts.families(runs)
    assert list(r.models) == ["v", "h", "r"] and r.sizes == [1000, 5000]
    assert r.accuracy["v"][1000] == [0.40, 0.44]
    assert r.best == {1000: "h", 5000: "r"}
    assert r.gaps["v", "h"][1000] == pytest.approx(0.42 - 0.50)
    assert r.gaps["h", "r"][5000] == pytest.approx(-0.02)
    assert list(r.gaps) == [("v", "h"), ("v", "r"), ("h", "r")]
    assert "1,000 images: h 50.0% > r 45.0% > v 42.0% (2 seeds)" in r.text
    # Which of a pair is ahead, by how much, in plain words (v trails h at both sizes: h is named first)
    assert r.ahead == {("v", "h"): "h", ("v", "r"): "r", ("h", "r"): "h"}
    assert ("h is ahead of v at 2 of 2 sizes (ahead by 8.0 points at 1,000 images, ahead by 3.0 points at 5,000 "
            "images), with 3.0x its training FLOPs") in r.text
    assert "h is ahead of r at 1 of 2 sizes (ahead by 5.0 points at 1,000 images, behind by 2.0 points" in r.text
    assert r.train_flops["h"] == {1000: 3e11, 5000: 1.5e12} and r.train_flops["v"][1000] == 1e11  # seeds' mean
    assert "v 100 M, h 300 M, r 100 M" in r.text and r.flops_per_image["h"] == 3e8
    with pytest.raises(ValueError, match="at least two models"):
        study_readouts.families([x for x in runs if x.model == "v"])
    with pytest.raises(ValueError, match="no training-set size"):
        study_readouts.families([run("a", "vit", 1000, 0, 0.4), run("b", "resnet", 5000, 0, 0.5)])
