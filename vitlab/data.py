"""CIFAR-10 and the shipped sample images, as uint8 tensors.

``cifar10(split)`` finds CIFAR-10 under ``settings.data_root()`` in either of the two
common layouts (torchvision's ``cifar-10-batches-py`` or an ImageFolder of JPEGs),
downloads it through torchvision when neither is there and the machine is online,
and decodes it once into an ``.npz`` cache so later loads take a fraction of a second.

The cache is checked on every load, cheaply: it holds a key made from the list of source
files with their sizes and modification times (what ``make`` and ``rsync`` compare), and it
must read back whole (the zip's CRC-32 of each array) with the shapes and count the source
implies. A stale or unreadable cache is rebuilt with a warning; a broken source file (a
truncated JPEG, a torn batch file) stops the decode with an error that names it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from . import settings
from .io import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel mean and std of the CIFAR-10 training set, in [0, 1] units.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SPLITS = ("train", "test")
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SAMPLES_DIR = settings.PROJECT_ROOT / "data" / "samples"
#: Bumped when the cache's content or key changes, so older caches are rebuilt.
_CACHE_VERSION = 2


class DataNotFoundError(FileNotFoundError):
    """No dataset copy was found and none could be downloaded."""


#: One image of an ImageFolder split: (path below the split folder, label, size in bytes, mtime in ns).
_Entry = tuple[str, int, int, int]


class CorruptDataError(ValueError):
    """A file of the dataset copy cannot be used: a truncated image, a wrong size, a torn batch file."""


@dataclass(frozen=True)
class Source:
    """A located copy of CIFAR-10: ``kind`` is ``"batches"`` or ``"imagefolder"``."""

    kind: str
    path: Path


def find_cifar10(root: str | os.PathLike | None = None) -> Source | None:
    """Look for CIFAR-10 in ``root`` (default ``settings.data_root()``); None if absent.

    Checked in order: ``root/cifar-10-batches-py``, ``root/cifar10/cifar-10-batches-py``,
    ``root/cifar10/{train,test}/<class>/`` and ``root/{train,test}/<class>/``.
    """
    root = Path(root) if root is not None else settings.data_root()
    for batches in (root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"):
        if (batches / "test_batch").is_file():
            return Source("batches", batches)
    for folder in (root / "cifar10", root):
        if all((folder / split).is_dir() for split in SPLITS):
            return Source("imagefolder", folder)
    return None


def cifar10(
    split: str = "train", root: str | os.PathLike | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        root: folder to search; default ``VITLAB_DATA`` or ``<project>/data``.
        download: when no copy is found, download through torchvision into ``root``.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,), labels indexing
        :data:`CLASSES` (the standard CIFAR-10 order).

    Raises:
        DataNotFoundError: no copy (and no download), or a class folder missing or empty.
        CorruptDataError: a source file that cannot be decoded or is not 32x32, named.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root) if root is not None else settings.data_root()
    if root.exists() and not root.is_dir():
        raise DataNotFoundError(f"the CIFAR-10 folder {root} is a file, not a folder: pass root= (or set "
                                "VITLAB_DATA to) the folder that holds cifar10/ or cifar-10-batches-py/")
    source = find_cifar10(root)
    if source is None:
        if download:
            source = _download_or_explain(root)
        else:
            raise DataNotFoundError(_not_found_message(root, reason="download=False"))
    folder = source.path / split
    files = _list_imagefolder(folder) if source.kind == "imagefolder" else None
    key = _source_key(source, split, files)
    cache = _cache_file(source, split)
    cached = _read_cache(cache, key, None if files is None else len(files))
    if cached is not None:
        return torch.from_numpy(cached[0]), torch.from_numpy(cached[1])
    if source.kind == "batches":
        images, labels = _read_batches(source.path, split)
    else:
        images, labels = _read_imagefolder(folder, files)
    _write_cache(cache, images, labels, key)
    return torch.from_numpy(images), torch.from_numpy(labels)


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-stratified random subset of ``size`` items, sorted.

    Each class gets ``size // C`` items, and ``size % C`` classes (chosen by ``seed``)
    one more. For a fixed seed, subsets are nested: the subset of size n is contained
    in the subset of every larger size, so a data-size sweep only ever adds images.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    size = _image_count(size, len(labels))
    classes = torch.unique(labels)
    gen = torch.Generator().manual_seed(seed)
    extra_rank = torch.randperm(len(classes), generator=gen)
    base, extra = divmod(size, len(classes))
    picked = []
    for rank, cls in zip(extra_rank.tolist(), classes.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        want = base + (rank < extra)
        if want > len(members):
            raise ValueError(
                f"class {cls} has {len(members)} items, a stratified subset of {size} needs {want}: "
                "ask for a smaller subset"
            )
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed * 1009 + cls))
        picked.append(members[order[:want]])
    return torch.sort(torch.cat(picked)).values


def _image_count(size, available: int) -> int:
    """``size`` as an int in 1..``available``: integers of any kind (numpy, 0-d torch), not floats or bools."""
    is_bool = isinstance(size, (bool, np.bool_)) or (isinstance(size, torch.Tensor) and size.dtype == torch.bool)
    try:
        if is_bool:
            raise TypeError
        count = operator.index(size)
    except TypeError:
        hint = ""
        if isinstance(size, float) and size.is_integer():
            hint = f"; pass {int(size)}"
        elif isinstance(size, float) and 0 < size < 1:
            hint = f"; for a fraction of the {available:,} labels pass round({size} * {available})"
        raise TypeError(f"subset size must be an integer count of images, got {size!r} "
                        f"({type(size).__name__}){hint}") from None
    if not 0 < count <= available:
        raise ValueError(f"subset size must be in 1..{available} (the number of labels), got {count}")
    return count


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a batch (N, C, H, W) to ``size`` (height, width): vitlab's one resize path.

    Antialiased ``interpolation`` (``"bicubic"`` or ``"bilinear"``, as a model's
    ``pretrained_cfg`` names it). uint8 images come back as uint8 (rounded and clamped to
    0..255); float images are taken to be in [0, 1] and come back clamped to [0, 1]. A batch
    already of that size is returned as it is.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    out = F.interpolate(images.float(), size=size, mode=mode, align_corners=False, antialias=True)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0, 1).to(images.dtype)


def stratified_order(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A permutation of ``labels`` whose every prefix is class-balanced.

    Items are dealt class by class in seeded random order (round r holds the r-th item of
    each class, classes shuffled per round), so the first k items hold k // C or k // C + 1
    of each class while a class has items left. "The first 128 test images" then means 12-13
    per class, not 128 airplanes from a folder sorted by class.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes.tolist()]
    members = [m[torch.randperm(len(m), generator=gen)] for m in members]
    rank = torch.empty(len(labels), dtype=torch.float64)  # (N,) round + position within the round
    for m in members:
        rank[m] = torch.arange(len(m), dtype=torch.float64)
    rank += torch.rand(len(labels), generator=gen, dtype=torch.float64) * 0.5  # shuffle classes within a round
    return torch.argsort(rank)


def describe_images(n: int, source: str, labels: torch.Tensor | None = None) -> str:
    """What a figure was computed on, in words, e.g. "128 CIFAR-10 test images, 12-13 per class".

    Args:
        n: number of images used (the first ``n`` of :func:`analysis_images`).
        source: where they came from, as :func:`analysis_images` names it.
        labels: labels of the images, to count classes; without them the counts of a prefix
            of :func:`stratified_order` over the ten classes are stated (n // 10 to ceil(n / 10)).
    """
    if not source.startswith("CIFAR-10"):
        return f"{n:,} sample images"
    if labels is not None:
        counts = torch.bincount(torch.as_tensor(labels)[:n], minlength=len(CLASSES))
        low, high = int(counts.min()), int(counts.max())
    else:
        low, high = n // len(CLASSES), -(-n // len(CLASSES))
    return f"{n:,} CIFAR-10 test images, {low if low == high else f'{low}-{high}'} per class"


def samples(size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """The real sample images shipped in ``data/samples``, resized to ``size`` x ``size``.

    Returns ``(images, names)``: uint8 (N, 3, size, size) and one descriptive name per
    image (see ``data/samples/README.md`` for where each image comes from).
    """
    index = json.loads((SAMPLES_DIR / "samples.json").read_text())
    images = []
    for entry in index:
        with Image.open(SAMPLES_DIR / entry["file"]) as im:
            images.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1))
    # Sample files differ in size: resize each (one at a time) through the one resize path.
    return torch.cat([resize(im[None], (size, size)) for im in images]), [entry["name"] for entry in index]


def _test_names(labels: torch.Tensor, indices: torch.Tensor) -> list[str]:
    return [f"CIFAR-10 test #{i} ({CLASSES[labels[i]]})" for i in indices.tolist()]


def analysis_images() -> tuple[torch.Tensor, list[str], str]:
    """Images for the analysis notebooks: the CIFAR-10 test set when present, else the samples.

    The test set comes in :func:`stratified_order` (seed 0), so any prefix ``images[:n]`` is
    class-balanced (the shared copy is stored class by class). Returns ``(images uint8
    (N, 3, 32, 32), names, source)``; never downloads. Names keep the test-set index.
    """
    if find_cifar10() is not None:
        images, labels = cifar10("test", download=False)
        order = stratified_order(labels, seed=0)
        return images[order], _test_names(labels, order), "CIFAR-10 test set"
    images, names = samples(32)
    return images, names, "data/samples"


def gallery(size: int = 32, cifar: int = 20) -> tuple[torch.Tensor, list[str]]:
    """The sample images plus ``cifar`` class-balanced CIFAR-10 test images (when present), at ``size``.

    The CIFAR-10 images are the first ``cifar`` of :func:`stratified_order` (two per class
    for 20). Returns ``(images uint8 (N, 3, size, size), names)``, for picking images in notebooks.
    """
    images, names = samples(size)
    if cifar and find_cifar10() is not None:
        test, labels = cifar10("test", download=False)
        pick = stratified_order(labels, seed=0)[:cifar]
        images = torch.cat([images, resize(test[pick], (size, size))])
        names += _test_names(labels, pick)
    return images, names


#: File name of the default subset file of :func:`write_subset`, in ``settings.cache_dir()`` (ignored by git).
SUBSET_FILE = "cifar10-subset.npz"


def write_subset(path: str | os.PathLike | None = None, train_size: int = 10_000, test_size: int = 2_000,
                 seed: int = 0) -> Path:
    """Write a class-stratified uint8 subset of CIFAR-10 to one ``.npz``, to carry where the dataset is not.

    The file holds ``train_x`` (N, 3, 32, 32) uint8 and ``train_y`` (N,) int64, and ``test_x`` and
    ``test_y`` alike: 10,000 + 2,000 images take 37 MB. They are the data of ``TrainConfig(
    subset_size=train_size, seed=seed, eval_size=test_size)``: ``stratified_subset`` of the training
    labels with ``seed`` and of the test labels with seed 0. Written atomically; never replaces a file.

    Args:
        path: where to write; default ``settings.cache_dir() / SUBSET_FILE``.
        train_size: training images, a multiple of 10 for equal classes.
        test_size: test images, likewise.
        seed: seeds the training subset.

    Returns:
        The path written.
    """
    path = Path(path) if path is not None else settings.cache_dir() / SUBSET_FILE
    if path.exists():
        raise FileExistsError(f"{path} already exists: delete it to write it again, or pass another path")
    arrays = {}
    for split, size, subset_seed in (("train", train_size, seed), ("test", test_size, 0)):
        images, labels = cifar10(split)
        pick = stratified_subset(labels, size, subset_seed)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images[pick].numpy(), labels[pick].numpy()

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)

    return atomic_write(path, save)


def read_subset(
    path: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read a file of :func:`write_subset` (default path likewise), checking every array.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 (N, 3, 32, 32) and int64 (N,) tensors.

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptDataError: a file that is not such a subset, with one line saying why.
    """
    path = Path(path) if path is not None else settings.cache_dir() / SUBSET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no CIFAR-10 subset file at {path}: write one with vitlab.data.write_subset() "
                                "on a machine that has CIFAR-10 (VITLAB_DATA)")
    names = ("train_x", "train_y", "test_x", "test_y")
    arrays, why = _load_npz(path)
    loaded = [arrays[name] for name in names if name in arrays]
    if why is None and len(loaded) < len(names):
        why = f"it lacks {[name for name in names if name not in arrays]}"
    if why is None:
        problems = [f"{split}: {problem}" for split, pair in (("train", loaded[:2]), ("test", loaded[2:]))
                    if (problem := _cache_problem(*pair, None))]
        why = problems[0] if problems else None
    if why:
        raise CorruptDataError(f"{path} is not a CIFAR-10 subset file: {why}; delete it and write it again "
                               "with vitlab.data.write_subset()")
    return tuple(torch.from_numpy(array) for array in loaded)


# --- locating, downloading, caching ---------------------------------------------------


def _not_found_message(root: Path, reason: str) -> str:
    return (  # one line (the command line prints it as it is), with the three ways to provide the data
        f"CIFAR-10 was not found under {root} and could not be downloaded ({reason}); provide it in one of "
        f"three ways: 1. torchvision layout: put the extracted 'cifar-10-batches-py' folder in {root}; "
        f"2. ImageFolder layout: {root}/cifar10/train/<class>/*.jpg and .../test/<class>/*.jpg; "
        "3. download: run once on a machine that is online (vitlab downloads through torchvision); "
        "set VITLAB_DATA to the folder that holds it (e.g. VITLAB_DATA=../shared/data)"
    )


def _download_or_explain(root: Path) -> Source:
    try:
        _download_cifar10(root)
    except Exception as err:  # any network or disk failure gets the same guidance
        raise DataNotFoundError(_not_found_message(root, f"{type(err).__name__}: {err}")) from err
    source = find_cifar10(root)
    if source is None:
        raise DataNotFoundError(_not_found_message(root, "the download left no readable copy"))
    return source


def _download_cifar10(root: Path) -> None:
    """Download and extract CIFAR-10 with torchvision (checks the archive's MD5)."""
    from torchvision.datasets.utils import download_and_extract_archive

    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    download_and_extract_archive(url, str(root), md5="c58f30108f718f92721af3b95e74349a")


def _cache_file(source: Source, split: str) -> Path:
    """One cache file per copy and split; what it was decoded from is checked by :func:`_source_key`.

    The name does not change with the source files, so a stale cache is found (and replaced)
    rather than left beside a new one.
    """
    where = json.dumps([str(source.path.resolve()), source.kind, split, _CACHE_VERSION])
    return settings.cache_dir() / f"cifar10-{split}-{hashlib.sha1(where.encode()).hexdigest()[:16]}.npz"


def _source_key(source: Source, split: str, files: list[_Entry] | None) -> str:
    """A digest of the source files' names, sizes and modification times (no content is read).

    Catches a file added, removed or replaced in place (a new size or a new mtime), as ``make``
    and ``rsync`` do. Names are relative, so the same copy reached by another path keeps its key.
    """
    if files is None:  # the batch files of the torchvision layout
        stats = [(name, (source.path / name).stat()) for name in _BATCHES[split] if (source.path / name).is_file()]
        files = [(name, -1, st.st_size, st.st_mtime_ns) for name, st in stats]
    text = "".join(f"{name}\0{label}\0{size}\0{mtime}\n" for name, label, size, mtime in files)
    return hashlib.sha1(f"{source.kind} {split} {_CACHE_VERSION}\n{text}".encode()).hexdigest()


def _cache_problem(images: np.ndarray, labels: np.ndarray, count: int | None) -> str | None:
    """Why the arrays of a cache are not a complete decode (None when they are)."""
    n = len(labels)
    if images.dtype != np.uint8 or images.shape != (n, 3, 32, 32):
        return f"it holds {images.dtype} images of shape {images.shape}, expected uint8 ({n}, 3, 32, 32)"
    if labels.dtype != np.int64 or labels.ndim != 1 or n == 0:
        return f"it holds {labels.dtype} labels of shape {labels.shape}, expected int64 (N,) with N > 0"
    if count is not None and n != count:
        return f"it holds {n} images but the source has {count}"
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        return f"its labels span {labels.min()}..{labels.max()}, not 0..{len(CLASSES) - 1}"
    return None


def _load_npz(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """``(arrays, None)``: every array of the ``.npz`` archive at ``path``, each read whole, so its
    CRC-32 (the zip format's own) is checked; or ``({}, why)`` when it cannot be read."""
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            return {}, "it is not an .npz archive"
        with arrays:
            return {name: arrays[name] for name in arrays.files}, None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        return {}, f"it cannot be read ({type(err).__name__}: {err})"


def _read_cache(cache: Path, key: str, count: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(images, labels)`` if ``cache`` is a complete decode of the current source.

    Otherwise None, with a warning naming the file and why when one was there. Reading checks
    each array's CRC-32 (the zip format's own), so zeroed or torn bytes are caught as well.
    """
    if not cache.exists():
        return None
    arrays, why = _load_npz(cache)
    if why is None and "key" not in arrays:
        why = "it was written by an older vitlab (no source key)"
    elif why is None and str(arrays["key"]) != key:
        why = "the source files changed since it was written (a file added, removed or replaced)"
    elif why is None and not {"images", "labels"} <= arrays.keys():
        why = f"it lacks {sorted({'images', 'labels'} - arrays.keys())}"
    elif why is None:
        why = _cache_problem(arrays["images"], arrays["labels"], count)
    if why is None:
        return arrays["images"], arrays["labels"]
    warnings.warn(f"rebuilding the CIFAR-10 cache {cache}: {why}", stacklevel=3)
    return None


def _write_cache(cache: Path, images: np.ndarray, labels: np.ndarray, key: str) -> None:
    """Write the cache atomically; a cache folder that cannot be written costs speed, not the load."""
    try:
        atomic_write(cache, lambda tmp: _save_npz(tmp, images, labels, key))
    except OSError as err:
        warnings.warn(f"could not write the CIFAR-10 cache {cache} ({type(err).__name__}: {err}); the next load "
                      "decodes again: set VITLAB_CACHE to a writable folder", stacklevel=3)


def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray, key: str) -> None:
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez(f, images=images, labels=labels, key=np.array(key))


class _RefusedPickle(pickle.UnpicklingError):
    """A batch file asked to build something other than an array."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that can only build numpy arrays, never run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path  # named in the refusal

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _RefusedPickle(
            f"refusing to load {module}.{name} from {self.path}: a CIFAR-10 batch file holds only arrays, "
            "so this file is not a genuine CIFAR-10 batch; replace it with the official one"
        )


def _read_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in _BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing: the cifar-10-batches-py folder is incomplete")
        try:
            with open(path, "rb") as f:
                batch = _ArrayOnlyUnpickler(f, path, encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except _RefusedPickle:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CorruptDataError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); "
                                   "replace it with the official file (or delete the folder to download again)"
                                   ) from None
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _list_imagefolder(folder: Path) -> list[_Entry]:
    """Every image of one split (``"<class>/<file>"``, label, size, mtime), by class then name.

    Strings rather than Paths: listing the 50,000 training images takes about 0.2 s. Raises
    :class:`DataNotFoundError` naming the folder when a class folder is missing or empty, before
    anything is decoded.
    """
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if sorted(CLASSES) != found:
        missing, extra = sorted(set(CLASSES) - set(found)), sorted(set(found) - set(CLASSES))
        raise DataNotFoundError(
            f"{folder} must hold exactly the 10 CIFAR-10 class folders {list(CLASSES)}; "
            f"missing {missing}, unexpected {extra}: restore or rename them"
        )
    files = []
    for label, cls in enumerate(CLASSES):
        with os.scandir(folder / cls) as entries:
            found = sorted((e.name, e.stat()) for e in entries
                           if os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES and e.is_file())
        if not found:
            raise DataNotFoundError(f"{folder / cls} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))}): "
                                    "restore them, or point VITLAB_DATA at a complete copy")
        files += [(f"{cls}/{name}", label, st.st_size, st.st_mtime_ns) for name, st in found]
    return files


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on a truncated image even where a caller allowed it to pad them with grey."""
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed


def _read_imagefolder(folder: Path, files: list[_Entry]) -> tuple[np.ndarray, np.ndarray]:
    """Decode the listed images of ``folder`` (see :func:`_list_imagefolder`) into uint8 (N, 3, 32, 32) and labels."""
    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
    with _strict_decoding():
        for i, (name, *_) in enumerate(files):
            path = folder / name
            try:
                with Image.open(path) as im:  # reads the header only
                    size, rgb = im.size, None
                    if size == (32, 32):
                        im.load()  # decode now: a truncated file fails here, not as grey pixels
                        rgb = np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for broken or unknown files
                raise CorruptDataError(f"{path} is not a readable image ({type(err).__name__}: "
                                       f"{str(err).replace(str(path), '...')}); replace it with a good copy "
                                       "or delete it") from None
            if rgb is None:
                raise CorruptDataError(f"{path} is {size[0]}x{size[1]}; CIFAR-10 images are 32x32: "
                                       "resize it or delete it")
            images[i] = rgb
    labels = np.asarray([label for _, label, *_ in files], dtype=np.int64)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels
