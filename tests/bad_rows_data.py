"""Bad-input rows for the dataset copy, subsets and sweep result files (merged into test_bad_inputs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from test_bad_inputs import Bad

from vitlab import data, records
from vitlab.sweep import SweepConfig, sweep


def _imagefolder(tmp: Path, suffix: str = ".png") -> Path:
    """A one-image-per-class ImageFolder copy in ``tmp``; returns the root to pass as ``root=``."""
    for split in data.SPLITS:
        for label, cls in enumerate(data.CLASSES):
            folder = tmp / "cifar10" / split / cls
            folder.mkdir(parents=True)
            pixels = np.random.default_rng(label).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"0000{suffix}")
    return tmp


def _broken_image(tmp: Path, content: bytes | None = None, suffix: str = ".jpg") -> None:
    """Decode the test split of a copy whose ``test/dog/0000`` image is cut to ``content`` (half when None)."""
    root = _imagefolder(tmp, suffix)
    path = root / "cifar10" / "test" / "dog" / f"0000{suffix}"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    data.cifar10("test", root=root, download=False)


def _wrong_size(tmp: Path) -> None:
    root = _imagefolder(tmp)
    Image.new("RGB", (64, 48)).save(root / "cifar10" / "test" / "dog" / "0000.png")
    data.cifar10("test", root=root, download=False)


def _class_folder(tmp: Path, empty: bool) -> None:
    root = _imagefolder(tmp)
    truck = root / "cifar10" / "test" / "truck"
    (truck / "0000.png").unlink()
    if not empty:
        truck.rmdir()
    data.cifar10("test", root=root, download=False)


def _root_is_a_file(tmp: Path) -> None:
    (tmp / "cifar10.zip").write_bytes(b"PK")
    data.cifar10("train", root=tmp / "cifar10.zip")


def _torn_batch(tmp: Path) -> None:
    from conftest import make_batches

    make_batches(tmp)
    batch = tmp / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    data.cifar10("test", root=tmp, download=False)


def _subset(size) -> None:
    data.stratified_subset(torch.arange(10).repeat_interleave(50), size)


def _results(tmp: Path, tag: str = "") -> Path:
    """A results file of one run (and its probe) in ``tmp``; returns ``<results><tag>.json``."""
    results = tmp / "results" / "sweep"
    run = records.RunRecord(model="vit_micro_c10", family="vit", subset_size=100, seed=0, epochs=2,
                            test_accuracy=0.3, batch_size=50)
    records.write_runs(results, [run], ["python -m vitlab sweep"])
    probe = records.RunProbe(model=run.model, family="vit", subset_size=100, seed=0, epochs=2, batch_size=50,
                             layer="pre_logits", pooling="head", fewshot={1: 0.2}, probe_setting={})
    records.write_run_probes(results, [probe], ["python -m vitlab sweep"])
    return Path(f"{results}{tag}.json")


def _torn_results(tmp: Path, tag: str = "", text: str | None = None) -> Path:
    path = _results(tmp, tag)
    path.write_text(path.read_text()[:120] if text is None else text)
    return path.parent / "sweep"


def _csv_without_json(tmp: Path) -> None:
    _results(tmp).unlink()
    records.read_runs(tmp / "results" / "sweep")


def _sweep_torn_results(tmp: Path) -> None:
    results = _torn_results(tmp)
    sweep(SweepConfig(models=("vit_micro_c10",), sizes=(100,), seeds=(0,), epochs=1, min_samples=100,
                      batch_size=50, monitor_size=50, out=str(tmp / "runs"), results=str(results)))


ROWS = {
    "data-truncated-jpeg": Bad(
        call=lambda tmp: _broken_image(tmp), error=data.CorruptDataError, phrase="dog/0000.jpg is not a readable image",
        before="OSError: 'Truncated File Read' (no path; with PIL's LOAD_TRUNCATED_IMAGES set: grey pixels, no error)"),
    "data-image-not-an-image": Bad(
        call=lambda tmp: _broken_image(tmp, b"<html>404 not found</html>"), error=data.CorruptDataError,
        phrase="replace it with a good copy or delete it",
        before="PIL.UnidentifiedImageError: cannot identify image file '<path>' (no advice)"),
    "data-image-empty-file": Bad(
        call=lambda tmp: _broken_image(tmp, b""), error=data.CorruptDataError, phrase="dog/0000.jpg",
        before="PIL.UnidentifiedImageError: cannot identify image file '<path>' (no advice)"),
    "data-image-wrong-size": Bad(
        call=_wrong_size, error=data.CorruptDataError, phrase="is 64x48; CIFAR-10 images are 32x32: resize it",
        before="ValueError: '<path> is 64x48; CIFAR-10 images are 32x32' (no advice)"),
    "data-class-folder-missing": Bad(
        call=lambda tmp: _class_folder(tmp, empty=False), error=data.DataNotFoundError, phrase="missing ['truck']",
        before="DataNotFoundError: '<folder> must hold exactly the 10 CIFAR-10 class folders [...]; found [nine "
               "names]' (which one was missing left to the reader)"),
    "data-class-folder-empty": Bad(
        call=lambda tmp: _class_folder(tmp, empty=True), error=data.DataNotFoundError, phrase="truck holds no images",
        before="no error: a test split of 9 classes, silently"),
    "data-root-is-a-file": Bad(
        call=_root_is_a_file, error=data.DataNotFoundError, phrase="cifar10.zip is a file, not a folder",
        before="DataNotFoundError after a download attempt (FileExistsError: File exists), a 6-line message"),
    "data-torn-batch-file": Bad(
        call=_torn_batch, error=data.CorruptDataError, phrase="test_batch is not a readable CIFAR-10 batch",
        before="_pickle.UnpicklingError: 'pickle data was truncated' (no path)"),
    "data-subset-float": Bad(
        call=lambda tmp: _subset(100.0), error=TypeError, phrase="must be an integer count of images, got 100.0",
        before="TypeError: 'slice indices must be integers or None or have an __index__ method'"),
    "data-subset-fraction": Bad(
        call=lambda tmp: _subset(0.5), error=TypeError, phrase="for a fraction of the 500 labels pass round(0.5 * 500)",
        before="TypeError: 'slice indices must be integers or None or have an __index__ method'"),
    "data-subset-bool": Bad(
        call=lambda tmp: _subset(True), error=TypeError, phrase="must be an integer count of images, got True",
        before="no error: a subset of 1 image"),
    "data-subset-zero": Bad(
        call=lambda tmp: _subset(0), error=ValueError, phrase="subset size must be in 1..500",
        before="ValueError: 'subset size must be in 1..500, got 0' (already clear)"),
    "data-subset-negative": Bad(
        call=lambda tmp: _subset(-5), error=ValueError, phrase="got -5",
        before="ValueError: 'subset size must be in 1..500, got -5' (already clear)"),
    "data-subset-too-large": Bad(
        call=lambda tmp: _subset(501), error=ValueError, phrase="1..500 (the number of labels), got 501",
        before="ValueError: 'subset size must be in 1..500, got 501' (already clear)"),
    "data-results-torn-json": Bad(
        call=lambda tmp: records.read_runs(_torn_results(tmp)), error=records.ResultsFileError,
        phrase="sweep.json is not a complete results file",
        before="json.JSONDecodeError: 'Unterminated string starting at: line 10 column 3 (char 113)' (no path)"),
    "data-results-torn-fewshot-json": Bad(
        call=lambda tmp: records.read_run_probes(_torn_results(tmp, records.FEWSHOT_TAG)),
        error=records.ResultsFileError, phrase="sweep-fewshot.json is not a complete results file",
        before="json.JSONDecodeError: 'Unterminated string starting at: line 10 column 3 (char 113)' (no path)"),
    "data-results-empty-json": Bad(
        call=lambda tmp: records.read_commands(_torn_results(tmp, text="")), error=records.ResultsFileError,
        phrase="restore it (from git or a backup)",
        before="json.JSONDecodeError: 'Expecting value: line 1 column 1 (char 0)' (no path)"),
    "data-results-not-records": Bad(
        call=lambda tmp: records.read_runs(_torn_results(tmp, text=json.dumps([{"model": "m"}]))),
        error=records.ResultsFileError, phrase='not an object with a "runs" list',
        before="TypeError: 'list indices must be integers or slices, not str'"),
    "data-results-run-lacks-fields": Bad(
        call=lambda tmp: records.read_runs(_torn_results(tmp, text=json.dumps({"runs": [{"model": "m"}]}))),
        error=records.ResultsFileError, phrase="run 0: RunRecord.__init__() missing",
        before="TypeError: 'RunRecord.__init__() missing 5 required keyword-only arguments: ...' (no path)"),
    "data-results-csv-without-json": Bad(
        call=_csv_without_json, error=records.ResultsFileError, phrase="sweep.csv holds results but sweep.json",
        before="no error: read as no runs, so a sweep retrains everything and overwrites the .csv"),
    "data-sweep-torn-results": Bad(
        call=_sweep_torn_results, error=records.ResultsFileError, phrase="sweep.json is not a complete results file",
        before="DataNotFoundError here (the data were loaded first); with data: json.JSONDecodeError, no path"),
}
