import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from conftest import make_batches, needs_cifar
from PIL import Image, ImageFile

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


def _no_decoding(*_):
    raise AssertionError("decoded again instead of reading the cache")


def _count_decodes(monkeypatch):
    """Wrap both decoders; returns the list each decode appends to."""
    calls = []
    for name in ("_read_imagefolder", "_read_batches"):
        real = getattr(data.files, name)
        monkeypatch.setattr(data.files, name, lambda *a, real=real: calls.append(1) or real(*a))
    return calls


def test_second_load_comes_from_cache(tmp_path, monkeypatch):
    expected = make_imagefolder(tmp_path)
    data.cifar10("train", root=tmp_path, download=False)
    monkeypatch.setattr(data.files, "_read_imagefolder", _no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unchanged copy and a good cache: nothing to warn about
        images, labels = data.cifar10("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(labels.numpy(), expected["train"][1])


def _png(path, pixels, mtime_ns):
    Image.fromarray(pixels).save(path)  # rewritten in place: the same file count and folder mtime
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.mark.parametrize("change", ["new pixels and mtime", "same bytes, new mtime", "new size, same mtime"])
def test_an_image_replaced_in_place_rebuilds_the_cache(tmp_path, monkeypatch, change):
    expected = make_imagefolder(tmp_path)
    data.cifar10("test", root=tmp_path, download=False)
    path = tmp_path / "cifar10" / "test" / "cat" / "0001.png"  # image 7 of the test split (2 per class)
    old = path.stat()
    pixels = expected["test"][0][7].transpose(1, 2, 0)
    if change == "new pixels and mtime":
        pixels = _random_images(1, 99)[0]
        _png(path, pixels, old.st_mtime_ns + 10**9)
    elif change == "same bytes, new mtime":
        os.utime(path, ns=(old.st_mtime_ns + 10**9,) * 2)
    else:
        pixels = np.full_like(pixels, 7)  # one colour deflates to far fewer bytes than noise: a new size
        _png(path, pixels, old.st_mtime_ns)
        assert path.stat().st_size != old.st_size and path.stat().st_mtime_ns == old.st_mtime_ns
    decodes = _count_decodes(monkeypatch)
    changed = r"rebuilding the CIFAR-10 cache .*cifar10-test-\w+\.npz: the source files changed"
    with pytest.warns(UserWarning, match=changed):
        images, _ = data.cifar10("test", root=tmp_path, download=False)
    assert decodes == [1]
    np.testing.assert_array_equal(images[7].numpy(), pixels.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.delete(images.numpy(), 7, 0), np.delete(expected["test"][0], 7, 0))
    assert len(list((tmp_path / "cache").glob("cifar10-test-*"))) == 1  # replaced, not left beside the new one
    monkeypatch.setattr(data.files, "_read_imagefolder", _no_decoding)
    assert torch.equal(data.cifar10("test", root=tmp_path, download=False)[0], images)


def _cache_file(tmp_path):
    (cache,) = (tmp_path / "cache").glob("cifar10-test-*.npz")
    return cache


def _zero_middle(raw):
    middle = len(raw) // 2
    return raw[:middle] + bytes(64) + raw[middle + 64:]


def _one_image_short(cache):
    with np.load(cache) as arrays:
        key, images, labels = arrays["key"], arrays["images"], arrays["labels"]
    with open(cache, "wb") as f:  # the right key, but an image missing
        np.savez(f, images=images[:-1], labels=labels[:-1], key=key)


@pytest.mark.parametrize("damage, why", [
    (lambda c: c.write_bytes(c.read_bytes()[: c.stat().st_size // 2]), "cannot be read (BadZipFile"),
    (lambda c: c.write_bytes(b"not a cache " * 50), "cannot be read"),
    (lambda c: c.write_bytes(b""), "cannot be read (EOFError"),
    (lambda c: c.write_bytes(_zero_middle(c.read_bytes())), "Bad CRC-32"),  # silent corruption: zip's own CRC
    (_one_image_short, "holds 19 images but the source has 20"),
    (lambda c: c.unlink() or c.mkdir(), "cannot be read"),
], ids=["truncated", "garbage", "empty", "zeroed bytes", "an image short", "a folder"])
@pytest.mark.filterwarnings("ignore:could not write the CIFAR-10 cache")  # where a folder blocks the cache
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, damage, why):
    expected = make_imagefolder(tmp_path)
    data.cifar10("test", root=tmp_path, download=False)
    cache = _cache_file(tmp_path)
    damage(cache)
    with pytest.warns(UserWarning, match=re.escape(f"rebuilding the CIFAR-10 cache {cache}: ") + ".*" + re.escape(why)):
        images, labels = data.cifar10("test", root=tmp_path, download=False)
    np.testing.assert_array_equal(images.numpy(), expected["test"][0])
    np.testing.assert_array_equal(labels.numpy(), expected["test"][1])
    if cache.is_dir():  # never deleted or written over: vitlab did not write a folder
        return
    monkeypatch.setattr(data.files, "_read_imagefolder", _no_decoding)  # the rebuilt cache is whole again
    assert torch.equal(data.cifar10("test", root=tmp_path, download=False)[0], images)


def test_a_replaced_batch_file_rebuilds_the_cache(tmp_path, monkeypatch):
    make_batches(tmp_path)
    data.cifar10("train", root=tmp_path, download=False)
    new = make_batches(tmp_path / "other", seed=5)["train"]
    batch = "cifar-10-batches-py/data_batch_3"
    (tmp_path / "other" / batch).replace(tmp_path / batch)  # a new file of the same name and size
    with pytest.warns(UserWarning, match="the source files changed"):
        images, _ = data.cifar10("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(images[8:12].numpy(), new[0][8:12])  # batch 3 of 4 images each


def test_an_unwritable_cache_folder_costs_speed_not_the_load(tmp_path, monkeypatch):
    expected = make_imagefolder(tmp_path)

    def read_only(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data.files, "atomic_write", read_only)
    with pytest.warns(UserWarning, match="could not write the CIFAR-10 cache .*set VITLAB_CACHE"):
        images, _ = data.cifar10("test", root=tmp_path, download=False)
    np.testing.assert_array_equal(images.numpy(), expected["test"][0])


def test_a_truncated_jpeg_is_named_even_where_pil_would_pad_it(tmp_path, monkeypatch):
    make_imagefolder(tmp_path)
    bad = tmp_path / "cifar10" / "train" / "frog" / "0002.jpg"
    Image.fromarray(_random_images(1, 3)[0]).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:-40])  # the last scan lines and the end marker are gone
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a common "fix" that pads with grey
    with pytest.raises(data.CorruptDataError) as info:
        data.cifar10("train", root=tmp_path, download=False)
    message = str(info.value)
    assert message.startswith(f"{bad} is not a readable image") and "replace it" in message and "delete it" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
    assert not list((tmp_path / "cache").glob("cifar10-train-*"))  # nothing cached


def test_cache_is_rebuilt_when_the_dataset_changes(tmp_path):
    make_imagefolder(tmp_path)
    n = len(data.cifar10("test", root=tmp_path, download=False)[1])
    Image.fromarray(_random_images(1, 7)[0]).save(tmp_path / "cifar10" / "test" / "cat" / "extra.png")
    with pytest.warns(UserWarning, match="the source files changed"):
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


def test_refused_batch_is_one_line_from_the_command_line(tmp_path):
    """A batch file the array-only unpickler refuses ends ``python -m vitlab train`` with one line naming it."""
    make_batches(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": _Evil(tmp_path / "pwned"), "labels": []}, f)
    env = {**os.environ, "VITLAB_DATA": str(tmp_path), "VITLAB_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(data.SAMPLES_DIR.parent.parent), os.environ.get("PYTHONPATH"))
                                         if p)}
    done = subprocess.run([sys.executable, "-m", "vitlab", "train", "--model", "vit_micro_c10", "--epochs", "1",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{batch}: a CIFAR-10 batch file holds only arrays" in done.stderr
    assert "delete it" in done.stderr and "ImageFolder" in done.stderr
    assert not (tmp_path / "pwned").exists()


class _Evil:
    """Unpickling this opens ``marker`` for writing."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, monkeypatch):
    make_imagefolder(tmp_path)
    values = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    values[0, :4] = (0, 257, 60000, 65535)
    path = tmp_path / "cifar10" / "test" / "cat" / "0000.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # the file really holds 16-bit pixels
    with monkeypatch.context() as old:  # a cache an older vitlab wrote, with the 16-bit pixels clipped
        old.setattr(data.files, "_IMAGEFOLDER_DECODE", 1)
        old.setattr(data.files, "to_rgb", lambda im: np.asarray(im.convert("RGB")))
        data.cifar10("test", root=tmp_path, download=False)
    with pytest.warns(UserWarning, match="rebuilding the CIFAR-10 cache"):
        images, labels = data.cifar10("test", root=tmp_path, download=False)
    got = images[int(np.flatnonzero(labels.numpy() == data.CLASSES.index("cat"))[0])].numpy()  # (3, 32, 32)
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5)  # no ties: 65535 / 255 = 257 is odd
    for channel in got:
        np.testing.assert_array_equal(channel, expected)
    assert tuple(channel[0, :4]) == (0, 1, 233, 255)


def _split_linked_to_train(root):
    shutil.rmtree(root / "cifar10" / "test")
    (root / "cifar10" / "test").symlink_to("train")


def _file_linked_to_train(root):
    test = root / "cifar10" / "test" / "dog" / "0001.png"
    test.unlink()
    os.link(root / "cifar10" / "train" / "dog" / "0002.png", test)


@pytest.mark.parametrize("link", [_split_linked_to_train, _file_linked_to_train])
def test_splits_sharing_files_warn(tmp_path, link):
    make_imagefolder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # separate copies: no warning
        data.cifar10("test", root=tmp_path, download=False)
    link(tmp_path)
    shared = "30 of its 30" if link is _split_linked_to_train else "1 of its 20"
    with pytest.warns(UserWarning, match=f"test split .* shares {shared} image files with the train split") as got:
        data.cifar10("test", root=tmp_path, download=False)
    assert all("\n" not in str(w.message) for w in got)


def test_download_used_when_nothing_is_found(tmp_path, monkeypatch):
    calls = []

    def fake_download(root):  # stands in for torchvision's download into root
        calls.append(root)
        make_batches(root)

    monkeypatch.setattr(data.files, "_download_cifar10", fake_download)
    images, _ = data.cifar10("test", root=tmp_path)
    assert calls == [tmp_path] and images.shape == (4, 3, 32, 32)


def test_offline_with_nothing_found_names_three_options(tmp_path, monkeypatch):
    def offline(root):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.files, "_download_cifar10", offline)
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
    for same in (np.int64(137), torch.tensor(137)):  # integers of any kind count
        assert torch.equal(data.stratified_subset(labels, same, 2), data.stratified_subset(labels, 137, 2))
    for bad in (137.0, 0.3, np.float32(137), torch.tensor(137.0), True, np.True_, "137", None):
        with pytest.raises(TypeError, match="subset size must be an integer count of images"):
            data.stratified_subset(labels, bad)


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

    monkeypatch.setattr(data.files, "_read_imagefolder", no_decoding)
    again, _ = data.cifar10("train")  # served from the .npz cache (timed in benchmarks/data_cache.py)
    assert again.shape == (50_000, 3, 32, 32)


def test_analysis_images_prefer_cifar_and_fall_back_to_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "nothing"))
    images, names, source = data.analysis_images()
    assert source == "data/samples" and images.shape[1:] == (3, 32, 32) and len(names) == len(images)
    assert data.describe_images(5, source) == "5 sample images"
    expected = make_batches(tmp_path / "c", per_batch=4, test_size=40)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "c"))
    images, names, source = data.analysis_images()
    assert source == "CIFAR-10 test set" and len(images) == 40
    test_images, test_labels = expected["test"]
    for image, name in zip(images, names):  # each name says which test image it is, and its class
        index = int(name.split("#")[1].split(" ")[0])
        np.testing.assert_array_equal(image.numpy(), test_images[index])
        assert name.endswith(f"({data.CLASSES[test_labels[index]]})")
    first = [n.split("(")[1].rstrip(")") for n in names[:10]]
    assert sorted(first) == sorted(data.CLASSES)  # the first ten are one per class


def _prefix_counts_balanced(labels, order):
    """Brute force: for every prefix, class counts differ by at most one while no class has run out."""
    total = {c: int((labels == c).sum()) for c in labels.unique().tolist()}
    counts = {c: 0 for c in total}
    for i in order.tolist():
        counts[int(labels[i])] += 1
        live = [counts[c] for c in total if counts[c] < total[c]]
        if live and max(live) - min(live) > 1:
            return False
        if live and max(counts[c] for c in total) - min(live) > 1:
            return False
    return True


def test_stratified_order_balances_every_prefix():
    labels = torch.arange(10).repeat_interleave(30)  # sorted by class, as the shared copy is
    order = data.stratified_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert _prefix_counts_balanced(labels, order)
    uneven = torch.tensor([0] * 7 + [1] * 3 + [2] * 12)
    assert _prefix_counts_balanced(uneven, data.stratified_order(uneven, seed=4))
    assert torch.equal(data.stratified_order(labels, 3), data.stratified_order(labels, 3))
    assert not torch.equal(data.stratified_order(labels, 3), data.stratified_order(labels, 4))


def test_describe_images_counts_classes():
    labels = torch.arange(10).repeat_interleave(100)[data.stratified_order(torch.arange(10).repeat_interleave(100))]
    assert data.describe_images(128, "CIFAR-10 test set", labels) == "128 CIFAR-10 test images, 12-13 per class"
    assert data.describe_images(128, "CIFAR-10 test set") == "128 CIFAR-10 test images, 12-13 per class"
    assert data.describe_images(1000, "CIFAR-10 test set") == "1,000 CIFAR-10 test images, 100 per class"


def test_resize_matches_torch_and_keeps_dtype():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert data.resize(images, (8, 8)) is images
    up = data.resize(images, (16, 12), "bilinear")
    direct = torch.nn.functional.interpolate(images.float(), size=(16, 12), mode="bilinear", antialias=True)
    assert up.dtype == torch.uint8 and up.shape == (2, 3, 16, 12)
    assert torch.equal(up, direct.round().clamp(0, 255).byte())
    floats = data.resize(images.float() / 255, (4, 4))
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    with pytest.raises(ValueError, match="N, C, H, W"):
        data.resize(images[0], (4, 4))


def test_gallery_adds_class_balanced_cifar_test_images(tmp_path, monkeypatch):
    expected = make_batches(tmp_path, per_batch=4, test_size=40)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    samples, _ = data.samples(32)
    images, names = data.gallery(32, cifar=10)
    assert len(images) == len(samples) + 10
    classes = [n.split("(")[1].rstrip(")") for n in names[-10:]]
    assert sorted(classes) == sorted(data.CLASSES)  # one per class, not the first ten of a sorted folder
    for image, name in zip(images[-10:], names[-10:]):  # 32 px: unchanged pixels
        np.testing.assert_array_equal(image.numpy(), expected["test"][0][int(name.split("#")[1].split(" ")[0])])
    big, _ = data.gallery(64, cifar=3)
    assert big.shape[1:] == (3, 64, 64)
    described = f"the {len(samples)} shipped sample images and 10 CIFAR-10 test images, 1 per class"
    assert data.describe_gallery(cifar=10) == described  # which images, as readouts say it
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "none"))
    assert data.describe_gallery(cifar=10) == f"the {len(samples)} shipped sample images"  # no CIFAR-10: samples only


def test_notebooks_that_read_cifar10_are_marked():
    """``-m "not cifar"`` must deselect every notebook that cannot run on the sample images."""
    from conftest import NOTEBOOKS_NEEDING_CIFAR

    root = data.SAMPLES_DIR.parent.parent / "notebooks"
    reading = {p.name for p in root.glob("*.ipynb")
               if any(call in p.read_text() for call in ("data.cifar10(", "sweep.sweep(", "train_with_curves("))}
    assert reading and reading <= NOTEBOOKS_NEEDING_CIFAR
