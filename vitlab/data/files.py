"""CIFAR-10 on disk: find a copy (torchvision batches or an ImageFolder), download it, decode it once into an
``.npz`` cache checked on every load (a stale or unreadable one is rebuilt with a warning)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
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
from PIL import Image, ImageFile

from .. import settings
from ..io import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: Bumped when the cache's content or key changes, so older caches are rebuilt.
_CACHE_VERSION = 2
#: Bumped when ImageFolder images decode differently (2: 16-bit PNGs scaled, not clipped), so their caches are rebuilt.
_IMAGEFOLDER_DECODE = 2


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
    """Look for CIFAR-10 (batches or class folders) in ``root`` (default ``settings.data_root()``); None if absent."""
    root = Path(root) if root is not None else settings.data_root()
    for batches in (root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"):
        if (batches / "test_batch").is_file():
            return Source("batches", batches)
    for folder in (root / "cifar10", root):
        for split in SPLITS:
            _refuse_loop(folder / split)  # is_dir() reads a link loop as absent: a download would follow
        if all((folder / split).is_dir() for split in SPLITS):
            return Source("imagefolder", folder)
    return None


def cifar10(split: str = "train", root: str | os.PathLike | None = None,
            download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split (``"train"`` or ``"test"``): uint8 images (N, 3, 32, 32), int64 labels (N,).
    ``root``: default ``VITLAB_DATA`` or ``<project>/data``; with ``download``, torchvision fetches a missing copy."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root) if root is not None else settings.data_root()
    if root.exists() and not root.is_dir():
        raise DataNotFoundError(f"the CIFAR-10 folder {root} is a file, not a folder: pass root= (or set "
                                "VITLAB_DATA to) the folder that holds cifar10/ or cifar-10-batches-py/")
    source = find_cifar10(root)
    if source is None and not download:
        raise DataNotFoundError(_not_found_message(root, reason="download=False"))
    source = source or _download_or_explain(root)
    folder = source.path / split
    files = _list_imagefolder(folder) if source.kind == "imagefolder" else None
    if files is not None:
        _warn_shared_files(source.path)
    key = _source_key(source, split, files)
    cache = _cache_file(source, split)
    cached = _read_cache(cache, key, None if files is None else len(files))
    if cached is not None:
        return torch.from_numpy(cached[0]), torch.from_numpy(cached[1])
    images, labels = _read_batches(source.path, split) if source.kind == "batches" else _read_imagefolder(folder, files)
    _write_cache(cache, images, labels, key)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _not_found_message(root: Path, reason: str) -> str:
    return (  # one line (the command line prints it as it is), with the three ways to provide the data
        f"CIFAR-10 was not found under {root} and could not be downloaded ({reason}); provide it in one of "
        f"three ways: 1. torchvision layout: put the extracted 'cifar-10-batches-py' folder in {root}; "
        f"2. ImageFolder layout: {root}/cifar10/train/<class>/*.jpg and .../test/<class>/*.jpg; "
        "3. download: run once on a machine that is online (vitlab downloads through torchvision); "
        "set VITLAB_DATA to the folder that holds it (e.g. VITLAB_DATA=../shared/data)")


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
    download_and_extract_archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(root),
                                 md5="c58f30108f718f92721af3b95e74349a")


def _cache_file(source: Source, split: str) -> Path:
    """One cache file per copy and split, named independently of the source files so a stale one is replaced."""
    where = json.dumps([str(source.path.resolve()), source.kind, split, _CACHE_VERSION])
    return settings.cache_dir() / f"cifar10-{split}-{hashlib.sha1(where.encode()).hexdigest()[:16]}.npz"


def _source_key(source: Source, split: str, files: list[_Entry] | None) -> str:
    """A digest of the source files' relative names, sizes and modification times (no content is read)."""
    version = f"{_CACHE_VERSION}.{_IMAGEFOLDER_DECODE}" if files is not None else _CACHE_VERSION
    if files is None:  # the batch files of the torchvision layout
        stats = [(name, (source.path / name).stat()) for name in _BATCHES[split] if (source.path / name).is_file()]
        files = [(name, -1, st.st_size, st.st_mtime_ns) for name, st in stats]
    text = "".join(f"{name}\0{label}\0{size}\0{mtime}\n" for name, label, size, mtime in files)
    return hashlib.sha1(f"{source.kind} {split} {version}\n{text}".encode()).hexdigest()


def cache_problem(images: np.ndarray, labels: np.ndarray, count: int | None) -> str | None:
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


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """``(arrays, None)``: every array of the ``.npz`` at ``path``, each read whole (CRC-checked); or ``({}, why)``."""
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            return {}, "it is not an .npz archive"
        with arrays:
            return {name: arrays[name] for name in arrays.files}, None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        return {}, f"it cannot be read ({type(err).__name__}: {err})"


def _read_cache(cache: Path, key: str, count: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(images, labels)`` if ``cache`` is a complete decode of the source; else None (warning why)."""
    if not cache.exists():
        return None
    arrays, why = load_npz(cache)
    if why is None and "key" not in arrays:
        why = "it was written by an older vitlab (no source key)"
    elif why is None and str(arrays["key"]) != key:
        why = "the source files changed since it was written (a file added, removed or replaced)"
    elif why is None and not {"images", "labels"} <= arrays.keys():
        why = f"it lacks {sorted({'images', 'labels'} - arrays.keys())}"
    elif why is None:
        why = cache_problem(arrays["images"], arrays["labels"], count)
    if why is None:
        return arrays["images"], arrays["labels"]
    warnings.warn(f"rebuilding the CIFAR-10 cache {cache}: {why}", stacklevel=3)
    return None


def _write_cache(cache: Path, images: np.ndarray, labels: np.ndarray, key: str) -> None:
    """Write the cache atomically; a cache folder that cannot be written costs speed, not the load."""
    try:
        atomic_write(cache, lambda tmp: _save_npz(tmp, images=images, labels=labels, key=np.array(key)))
    except OSError as err:
        warnings.warn(f"could not write the CIFAR-10 cache {cache} ({type(err).__name__}: {err}); the next load "
                      "decodes again: set VITLAB_CACHE to a writable folder", stacklevel=3)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez(f, **arrays)


class _RefusedPickle(CorruptDataError, pickle.UnpicklingError):
    """A batch file asked to build something other than an array (a CorruptDataError: the CLI prints one line)."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that can only build numpy arrays, never run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
                ("numpy", "dtype"), ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes

    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path  # named in the refusal

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _RefusedPickle(f"refusing to load {module}.{name} from {self.path}: a CIFAR-10 batch file holds only "
                             "arrays, so this file is not a genuine CIFAR-10 batch; delete it and replace it with the "
                             "official one (delete the cifar-10-batches-py folder to download it again), or use the "
                             "ImageFolder layout")


def _read_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in _BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing: the cifar-10-batches-py folder is incomplete")
        try:
            with open(path, "rb") as f:
                batch = _ArrayOnlyUnpickler(f, path, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except _RefusedPickle:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CorruptDataError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); replace "
                                   "it with the official file (or delete the folder to download again)") from None
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _list_imagefolder(folder: Path) -> list[_Entry]:
    """Every image of one split (``"<class>/<file>"``, label, size, mtime), by class then name; strings for speed."""
    for cls in CLASSES:
        _refuse_loop(folder / cls)  # is_dir() reads a link loop as a missing class
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if sorted(CLASSES) != found:
        missing, extra = sorted(set(CLASSES) - set(found)), sorted(set(found) - set(CLASSES))
        raise DataNotFoundError(f"{folder} must hold exactly the 10 CIFAR-10 class folders {list(CLASSES)}; "
                                f"missing {missing}, unexpected {extra}: restore or rename them")
    files = []
    for label, cls in enumerate(CLASSES):
        found = sorted((e.name, e.stat()) for e in _images_in(folder / cls))
        if not found:
            raise DataNotFoundError(f"{folder / cls} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))}): "
                                    "restore them, or point VITLAB_DATA at a complete copy")
        files += [(f"{cls}/{name}", label, st.st_size, st.st_mtime_ns) for name, st in found]
    return files


def _images_in(folder: Path) -> list[os.DirEntry]:
    """The image files directly in ``folder`` (no recursion, so a link to a parent folder is never walked); a link
    that loops (``x.png -> x.png``) is refused naming it instead of a raw ELOOP."""
    try:
        with os.scandir(folder) as entries:
            images = [e for e in entries if os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES and e.is_file()]
            for e in images:
                e.stat()  # cached on the entry: a loop fails here, inside the try
            return images
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _loop_error(Path(err.filename or folder)) from None
        raise


def _loop_error(path: Path) -> CorruptDataError:
    return CorruptDataError(f"{path} is a symbolic link loop (it leads back to itself): remove the link or point it "
                            "at the real file or folder")


def _refuse_loop(path: Path) -> None:
    """Raise :class:`CorruptDataError` naming ``path`` if it is a symbolic link that loops."""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _loop_error(path) from None


def _warn_shared_files(root: Path) -> None:
    """Warn (one line) when the train and test splits of the ImageFolder in ``root`` share image files: the same
    folder, a link from one to the other, or links (hard or symbolic) to one file, so test accuracy would be
    measured on training images."""
    train, test = (_file_ids(root / split) for split in SPLITS)
    if shared := train & test:
        warnings.warn(f"the test split {root / 'test'} shares {len(shared):,} of its {len(test):,} image files with "
                      f"the train split {root / 'train'} (the same files, through links): test accuracy would be "
                      "measured on training images; give the test split its own images", stacklevel=3)


def _file_ids(folder: Path) -> set[tuple[int, int]]:
    """(device, inode) of every image file in the class folders of one split; only links are stat'ed (the
    directory listing holds the inode of a plain file), so this costs little more than listing the names."""
    ids = set()
    for cls in CLASSES:
        with contextlib.suppress(OSError), os.scandir(folder / cls) as entries:  # a broken split is reported on load
            device = os.stat(folder / cls).st_dev
            for e in entries:
                if os.path.splitext(e.name)[1].lower() not in _IMAGE_SUFFIXES:
                    continue
                if e.is_symlink():
                    with contextlib.suppress(OSError):
                        st = os.stat(e.path)
                        ids.add((st.st_dev, st.st_ino))
                elif e.is_file():
                    ids.add((device, e.inode()))
    return ids


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
                        rgb = to_rgb(im)
            except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for broken or unknown files
                raise CorruptDataError(f"{path} is not a readable image ({type(err).__name__}: "
                                       f"{str(err).replace(str(path), '...')}); replace it with a good copy "
                                       "or delete it") from None
            if rgb is None:
                raise CorruptDataError(f"{path} is {size[0]}x{size[1]}; CIFAR-10 images are 32x32: resize it or "
                                       "delete it")
            images[i] = rgb
    labels = np.asarray([label for _, label, *_ in files], dtype=np.int64)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def to_rgb(im: Image.Image) -> np.ndarray:
    """The pixels of a PIL image as uint8 (H, W, 3); 16-bit grayscale (PNG's mode ``I;16``, or ``I``) is scaled
    from 0..65535 to 0..255 and rounded, where ``convert("RGB")`` would clip every value above 255 to white."""
    if im.mode.startswith("I"):
        gray = np.rint(np.asarray(im, dtype=np.float64) * (255 / 65535)).clip(0, 255).astype(np.uint8)  # (H, W)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))
