"""The attribution scoreboard: one model's maps, faithfulness, sanity and Focus parts run once and flattened into rows;
its results file; the command line that writes the committed ones."""
import json

import pytest
import torch

from vitlab import models, result_files
from vitlab.__main__ import main
from vitlab.analysis import faithfulness, saliency
from vitlab.analysis.scoreboard import scoreboard_analysis
from vitlab.records import AttributionScore


@pytest.fixture(scope="module")
def board():
    torch.manual_seed(3)  # not random_init's seed 0: the sanity stages must differ from the model
    model = models.build_model({"zoo": "vit_micro_c10"}).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(8) % 4
    result = scoreboard_analysis(model, images, labels, sanity_images=3, focus_mosaics=4, progress=False,
                                 model_name="micro")
    return model, images, labels, result


def test_rows_hold_every_part_of_the_result(board):
    model, images, labels, result = board
    methods = tuple(m for m in saliency.METHODS if saliency.applicable(model, m) is None)
    assert result.maps.methods == result.faithfulness.methods == result.sanity.methods == methods
    assert result.faithfulness.removals == faithfulness.REMOVALS  # a ViT with patch tokens: token dropping too
    rows = result.rows()
    with torch.no_grad():
        predictions = model(models.preprocess(model, images)).argmax(1)
    accuracy = next(r for r in rows if r.score == "accuracy")
    assert accuracy.mean == pytest.approx(float((predictions == labels).double().mean()))
    assert accuracy.low <= accuracy.mean <= accuracy.high
    for curve in ("deletion", "insertion"):  # each AUC is the trapezoid of its own curve, averaged over images
        for removal in faithfulness.REMOVALS:
            for method in methods:
                values = result.faithfulness.deletion if curve == "deletion" else result.faithfulness.insertion
                expected = torch.trapezoid(values[method, removal]["probability"].double(),
                                           torch.linspace(0, 1, 17, dtype=torch.float64)).mean()
                row, = [r for r in rows if (r.score, r.removal, r.method, r.measure) ==
                        (curve, removal, method, "probability")]
                assert row.mean == pytest.approx(float(expected)) and row.images == len(images)
    for method in methods:
        sanity, = [r for r in rows if r.score == "sanity" and r.method == method]
        assert sanity.mean == pytest.approx(float(result.sanity.spearman[method][-1].double().mean()))
        assert sanity.images == 3
        focus, = [r for r in rows if r.score == "focus" and r.method == method]
        assert focus.mean == pytest.approx(float(result.focus.focus[method].double().mean())) and focus.images == 4
    signs = {r.score for r in rows if r.score.startswith("chefer")}
    assert signs == {"chefer_positive", "chefer_negative"}
    per_method = 2 * 2 * len(faithfulness.REMOVALS) + 2 + 1 + 1  # curves x measures x removals, Chefer, sanity, focus
    assert len(rows) == len(methods) * per_method + 2  # and the model's accuracy on the images and on the mosaics


def test_a_resnet_gets_the_methods_and_removals_that_apply():
    torch.manual_seed(3)
    model = models.build_model({"zoo": "resnet_micro_c10"}).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    result = scoreboard_analysis(model, images, torch.arange(4), methods=("random", "grad_cam"), sanity_images=0,
                                 focus_mosaics=0, progress=False, model_name="resnet")
    assert result.faithfulness.removals == ("mean", "blur")  # no tokens to drop
    assert result.sanity is None and result.focus is None
    assert {r.method for r in result.rows()} == {"model", "random", "grad_cam"}


def test_the_results_file_round_trips_and_is_never_overwritten(board, tmp_path):
    rows = board[3].rows()
    path = result_files.write_scoreboard(tmp_path, rows, "python -m vitlab scoreboard micro", {"images": 8})
    read, about = result_files.read_scoreboards(tmp_path)
    assert read == rows and about["micro"]["command"] == "python -m vitlab scoreboard micro"
    assert path.with_suffix(".csv").read_text().count("\n") == len(rows) + 1
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="pass --force"):
        result_files.write_scoreboard(tmp_path, rows[:3], "again", {})
    assert path.read_bytes() == before
    result_files.write_scoreboard(tmp_path, rows[:3], "again", {}, force=True)
    assert len(result_files.read_scoreboards(tmp_path)[0]) == 3
    with pytest.raises(ValueError, match="one model's rows"):
        result_files.write_scoreboard(tmp_path, [*rows[:1], AttributionScore(**{**rows[0].__dict__, "model": "b"})],
                                      "x", {})


def test_a_broken_scoreboard_file_is_an_error_not_an_empty_board(tmp_path):
    (tmp_path / "cut.json").write_text('{"rows": [{"model": "a"')
    with pytest.raises(result_files.ResultsFileError, match="cut.json is not a complete results file .* scoreboard"):
        result_files.read_scoreboards(tmp_path)
    (tmp_path / "cut.json").write_text(json.dumps({"rows": [{"model": "a", "method": "random", "score": "focus",
                                                            "removal": "", "measure": "share", "mean": "high",
                                                            "low": 0.0, "high": 1.0, "images": 4}]}))
    with pytest.raises(result_files.ResultsFileError, match="field mean"):
        result_files.read_scoreboards(tmp_path)


def test_the_command_line_writes_each_model_and_keeps_finished_ones(fake_cifar, tmp_path, capsys):
    out = tmp_path / "boards"
    argv = ["scoreboard", "resnet_micro_c10", "--images", "4", "--sanity-images", "0", "--mosaics", "0",
            "--out", str(out)]  # the parts themselves are tested above
    assert main(argv) == 0
    rows, about = result_files.read_scoreboards(out)
    assert {r.model for r in rows} == {"resnet_micro_c10"} and about["resnet_micro_c10"]["images"] == 4
    assert about["resnet_micro_c10"]["command"] == ("python -m vitlab scoreboard resnet_micro_c10 --images 4 "
                                                   "--sanity-images 0 --mosaics 0")
    written = (out / "resnet_micro_c10.json").read_bytes()
    assert main(argv) == 0  # a second run keeps what is there
    assert "kept" in capsys.readouterr().out and (out / "resnet_micro_c10.json").read_bytes() == written


@pytest.mark.parametrize("argv, phrase", [
    (["scoreboard", "vit_huge"], "not in the zoo: vit_huge"),
    (["scoreboard", "vit_micro_c10", "--images", "10", "--sanity-images", "20"], "--sanity-images 0 to --images"),
])
def test_bad_command_lines_fail_in_one_line_before_any_work(argv, phrase, fake_cifar, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "b")])
    assert phrase in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "b").exists()
