import json
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from conftest import make_batches, needs_cifar
from PIL import Image

from vitlab import data


def _random_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)


def make_imagefolder(root, per_class=(3, 2)):
    """ImageFolder of lossless PNGs; returns the expected (images, labels) per split."""
    expected = {}
    for split, n in zip(data.SPLITS, per_class):
        images, labels = [], []
        for label, cls in enumerate(data.CLASSES):
            folder = root / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i, img in enumerate(_random_images(n, seed=label * 100 + n)):
                Image.fromarray(img).save(folder / f"{i:04d}.png")
                images.append(img.transpose(2, 0, 1))
                labels.append(label)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


@pytest.mark.parametrize("layout", ["imagefolder", "batches"])
def test_cifar10_reads_layout_exactly(tmp_path, layout):
    expected = make_imagefolder(tmp_path) if layout == "imagefolder" else make_batches(tmp_path)
    assert data.find_cifar10(tmp_path).kind == layout
    for split in data.SPLITS:
        images, labels = data.cifar10(split, root=tmp_path, download=False)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(expected[split][1]), 3, 32, 32)
        np.testing.assert_array_equal(images.numpy(), expected[split][0])
        np.testing.assert_array_equal(labels.numpy(), expected[split][1])


def test_cifar10_reads_from_VITLAB_DATA(tmp_path, monkeypatch):
    expected = make_imagefolder(tmp_path)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    images, _ = data.cifar10("test")
    np.testing.assert_array_equal(images.numpy(), expected["test"][0])


def test_second_load_comes_from_cache(tmp_path, monkeypatch):
    expected = make_imagefolder(tmp_path)
    data.cifar10("train", root=tmp_path, download=False)

    def no_decoding(*_):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data, "_read_imagefolder", no_decoding)
    images, labels = data.cifar10("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(labels.numpy(), expected["train"][1])


def test_cache_is_rebuilt_when_the_dataset_changes(tmp_path):
    make_imagefolder(tmp_path)
    n = len(data.cifar10("test", root=tmp_path, download=False)[1])
    Image.fromarray(_random_images(1, 7)[0]).save(tmp_path / "cifar10" / "test" / "cat" / "extra.png")
    assert len(data.cifar10("test", root=tmp_path, download=False)[1]) == n + 1


def test_batches_refuse_pickled_code(tmp_path):
    make_batches(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="not a genuine CIFAR-10 batch"):
        data.cifar10("test", root=tmp_path, download=False)
    assert not marker.exists()


def test_download_used_when_nothing_is_found(tmp_path, monkeypatch):
    calls = []

    def fake_download(root):  # stands in for torchvision's download into root
        calls.append(root)
        make_batches(root)

    monkeypatch.setattr(data, "_download_cifar10", fake_download)
    images, _ = data.cifar10("test", root=tmp_path)
    assert calls == [tmp_path] and images.shape == (4, 3, 32, 32)


def test_offline_with_nothing_found_names_three_options(tmp_path, monkeypatch):
    def offline(root):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data, "_download_cifar10", offline)
    with pytest.raises(data.DataNotFoundError) as info:
        data.cifar10("train", root=tmp_path)
    message = str(info.value)
    for option in ("cifar-10-batches-py", "ImageFolder", "download", "VITLAB_DATA"):
        assert option in message


def test_bad_split_and_wrong_class_folders(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        data.cifar10("validation", root=tmp_path)
    for split in data.SPLITS:
        (tmp_path / "cifar10" / split / "kitten").mkdir(parents=True)
    with pytest.raises(data.DataNotFoundError, match="exactly the 10 CIFAR-10 class folders"):
        data.cifar10("test", root=tmp_path, download=False)


def test_stratified_subset_counts_nesting_and_seed():
    labels = torch.arange(10).repeat_interleave(50)  # 50 per class
    for size in (10, 25, 137, 500):
        idx = data.stratified_subset(labels, size, seed=3)
        counts = torch.bincount(labels[idx], minlength=10)
        assert len(idx) == len(set(idx.tolist())) == size
        assert counts.max() - counts.min() <= (0 if size % 10 == 0 else 1)
    small, large = (set(data.stratified_subset(labels, n, seed=1).tolist()) for n in (37, 211))
    assert small <= large
    assert torch.equal(data.stratified_subset(labels, 100, 5), data.stratified_subset(labels, 100, 5))
    assert not torch.equal(data.stratified_subset(labels, 100, 5), data.stratified_subset(labels, 100, 6))
    with pytest.raises(ValueError, match="subset size"):
        data.stratified_subset(labels, 501)


def test_samples_are_real_small_and_documented():
    index = json.loads((data.SAMPLES_DIR / "samples.json").read_text())
    images, names = data.samples(size=48)
    assert images.shape == (len(index), 3, 48, 48) and images.dtype == torch.uint8
    assert names == [e["name"] for e in index] and all(e["source"] and e["credit"] for e in index)
    assert images.float().std() > 20  # real pictures, not blank
    assert sum(p.stat().st_size for p in data.SAMPLES_DIR.iterdir()) < 1_000_000


@needs_cifar
def test_real_cifar10_loads_and_is_cached(monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")  # share the decoded cache across runs
    sizes = {}
    for split in data.SPLITS:
        images, labels = data.cifar10(split)
        sizes[split] = len(labels)
        assert images.shape == (len(labels), 3, 32, 32)
        assert torch.bincount(labels).tolist() == [len(labels) // 10] * 10
    assert sizes == {"train": 50_000, "test": 10_000}

    def no_decoding(*_):
        raise AssertionError("decoded 50,000 JPEGs again instead of reading the cache")

    monkeypatch.setattr(data, "_read_imagefolder", no_decoding)
    again, _ = data.cifar10("train")  # served from the .npz cache (timed in benchmarks/data_cache.py)
    assert again.shape == (50_000, 3, 32, 32)


def test_analysis_images_prefer_cifar_and_fall_back_to_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "nothing"))
    images, names, source = data.analysis_images()
    assert source == "data/samples" and images.shape[1:] == (3, 32, 32) and len(names) == len(images)
    make_batches(tmp_path / "c", per_batch=4)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "c"))
    images, names, source = data.analysis_images()
    assert source == "CIFAR-10 test set" and len(images) == 4 and names[0].startswith("CIFAR-10 test #0 (")


def test_gallery_adds_cifar_test_images(tmp_path, monkeypatch):
    expected = make_batches(tmp_path, per_batch=4)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    samples, _ = data.samples(32)
    images, names = data.gallery(32, cifar=3)
    assert len(images) == len(samples) + 3 and names[-3].startswith("CIFAR-10 test #0")
    np.testing.assert_array_equal(images[-3:].numpy(), expected["test"][0][:3])  # 32 px: unchanged
    big, _ = data.gallery(64, cifar=3)
    assert big.shape[1:] == (3, 64, 64)
