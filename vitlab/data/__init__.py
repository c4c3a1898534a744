"""CIFAR-10 (loaded by :mod:`vitlab.data.files`) and the shipped sample images as uint8 tensors: stratified
subsets, the analysis images and a portable subset file; your own images and the one resize path come from
:mod:`vitlab.data.image_files`."""
from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import settings
from ..io import atomic_write, read_json
from .files import (CLASSES, SPLITS, CorruptDataError, DataNotFoundError, Source, cache_problem, cifar10,  # noqa: F401
                    _save_npz, find_cifar10, load_npz, to_rgb)
from .image_files import ImageInputError, far_note, images, resize  # noqa: F401

#: Per-channel mean and std of the CIFAR-10 training set, in [0, 1] units.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SAMPLES_DIR = settings.shipped_dir("samples")


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-stratified random subset of ``size`` items (``size // C`` per class, seeded
    classes one more); for a fixed seed a larger subset holds every smaller one."""
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
            raise ValueError(f"class {cls} has {len(members)} items, a stratified subset of {size} needs {want}: "
                             "ask for a smaller subset")
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed * 1009 + cls))
        picked.append(members[order[:want]])
    return torch.sort(torch.cat(picked)).values


def content_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The sha256 of a split's content: the shapes, dtypes and bytes of ``images`` and ``labels``, in order (a run
    records it to tell, on resuming, whether it still trains on the same data; 0.2 s for CIFAR-10's 150 MB)."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype} {array.shape}\n".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


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


def stratified_order(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of ``labels`` whose every prefix k holds k // C or k // C + 1 of each of C classes."""
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
    """What a figure was computed on, e.g. "128 CIFAR-10 test images, 12-13 per class", for the first ``n`` of
    :func:`analysis_images` and its ``source``; without ``labels`` a :func:`stratified_order` prefix is assumed."""
    if not source.startswith("CIFAR-10"):
        return f"{n:,} sample images"
    if labels is not None:
        counts = torch.bincount(torch.as_tensor(labels)[:n], minlength=len(CLASSES))
        low, high = int(counts.min()), int(counts.max())
    else:
        low, high = n // len(CLASSES), -(-n // len(CLASSES))
    return f"{n:,} CIFAR-10 test images, {low if low == high else f'{low}-{high}'} per class"


def samples(size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """The sample images shipped in ``data/samples``: uint8 (N, 3, size, size) and one name per image."""
    index = read_json(SAMPLES_DIR / "samples.json")
    images = []
    for entry in index:
        with Image.open(SAMPLES_DIR / entry["file"]) as im:
            images.append(torch.from_numpy(to_rgb(im).copy()).permute(2, 0, 1))
    # Sample files differ in size: resize each (one at a time) through the one resize path.
    return torch.cat([resize(im[None], (size, size)) for im in images]), [entry["name"] for entry in index]


def _test_names(labels: torch.Tensor, indices: torch.Tensor) -> list[str]:
    return [f"CIFAR-10 test #{i} ({CLASSES[labels[i]]})" for i in indices.tolist()]


def analysis_images() -> tuple[torch.Tensor, list[str], str]:
    """Images for the analysis notebooks: ``(images uint8 (N, 3, 32, 32), names, source)``, the CIFAR-10 test set
    in :func:`stratified_order` when present (never downloaded), else the samples."""
    if find_cifar10() is not None:
        images, labels = cifar10("test", download=False)
        order = stratified_order(labels, seed=0)
        return images[order], _test_names(labels, order), "CIFAR-10 test set"
    images, names = samples(32)
    return images, names, "data/samples"


def gallery(size: int = 32, cifar: int = 20) -> tuple[torch.Tensor, list[str]]:
    """:func:`samples` plus the first ``cifar`` CIFAR-10 test images of :func:`stratified_order` (when present)."""
    images, names = samples(size)
    if cifar and find_cifar10() is not None:
        test, labels = cifar10("test", download=False)
        pick = stratified_order(labels, seed=0)[:cifar]
        images = torch.cat([images, resize(test[pick], (size, size))])
        names += _test_names(labels, pick)
    return images, names


def describe_gallery(cifar: int = 20) -> str:
    """Which images :func:`gallery` holds (shipped samples, ``cifar`` CIFAR-10 test images if present), for readouts."""
    shipped = f"the {len(read_json(SAMPLES_DIR / 'samples.json'))} shipped sample images"
    if not cifar or find_cifar10() is None:
        return shipped
    return f"{shipped} and {describe_images(cifar, 'CIFAR-10 test set')}"


#: File name of the default subset file of :func:`write_subset`, in ``settings.cache_dir()`` (ignored by git).
SUBSET_FILE = "cifar10-subset.npz"


def write_subset(path: str | os.PathLike | None = None, train_size: int = 10_000, test_size: int = 2_000,
                 seed: int = 0) -> Path:
    """Write ``train_x``, ``train_y``, ``test_x``, ``test_y``, the data of ``TrainConfig(subset_size=train_size,
    seed=seed, eval_size=test_size)``, to one ``.npz`` (default in ``settings.cache_dir()``); returns its path."""
    path = Path(path) if path is not None else settings.cache_dir() / SUBSET_FILE
    if path.exists():
        raise FileExistsError(f"{path} already exists: delete it to write it again, or pass another path")
    arrays = {}
    for split, size, subset_seed in (("train", train_size, seed), ("test", test_size, 0)):
        images, labels = cifar10(split)
        pick = stratified_subset(labels, size, subset_seed)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images[pick].numpy(), labels[pick].numpy()
    return atomic_write(path, lambda tmp: _save_npz(tmp, **arrays))


def read_subset(path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read and check a file of :func:`write_subset`: ``(train_x, train_y, test_x, test_y)`` tensors."""
    path = Path(path) if path is not None else settings.cache_dir() / SUBSET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no CIFAR-10 subset file at {path}: write one with vitlab.data.write_subset() "
                                "on a machine that has CIFAR-10 (VITLAB_DATA)")
    names = ("train_x", "train_y", "test_x", "test_y")
    arrays, why = load_npz(path)
    loaded = [arrays[name] for name in names if name in arrays]
    if why is None and len(loaded) < len(names):
        why = f"it lacks {[name for name in names if name not in arrays]}"
    if why is None:
        problems = [f"{split}: {problem}" for split, pair in (("train", loaded[:2]), ("test", loaded[2:]))
                    if (problem := cache_problem(*pair, None))]
        why = problems[0] if problems else None
    if why:
        raise CorruptDataError(f"{path} is not a CIFAR-10 subset file: {why}; delete it and write it again "
                               "with vitlab.data.write_subset()")
    return tuple(torch.from_numpy(array) for array in loaded)
