"""CIFAR-10 and the shipped sample images, as uint8 tensors.

``cifar10(split)`` (:mod:`vitlab.data.files`) finds CIFAR-10 under ``settings.data_root()`` in either of the two
common layouts (torchvision's ``cifar-10-batches-py`` or an ImageFolder of JPEGs),
downloads it through torchvision when neither is there and the machine is online,
and decodes it once into an ``.npz`` cache so later loads take a fraction of a second.
This module adds what is made from it: stratified subsets, resizing, the analysis images,
the shipped samples and a portable subset file.
"""
from __future__ import annotations

import json
import operator
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


from .. import settings
from ..io import atomic_write
from .files import (CLASSES, SPLITS, CorruptDataError, DataNotFoundError, Source, cache_problem, cifar10,  # noqa: F401
                    find_cifar10, load_npz)

#: Per-channel mean and std of the CIFAR-10 training set, in [0, 1] units.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SAMPLES_DIR = settings.PROJECT_ROOT / "data" / "samples"


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
