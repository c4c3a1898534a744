"""Where vitlab reads its environment's settings, and nowhere else: quick mode, data and cache folders, the device."""
from __future__ import annotations

import os
from pathlib import Path

import torch

#: The project checkout (parent of the package folder).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def quick_mode() -> bool:
    """True when ``VITLAB_QUICK`` is 1/true/yes/on: notebooks shrink data and steps to run in a minute or two."""
    return os.environ.get("VITLAB_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def quick_or(full, quick):
    """``quick`` in quick mode, else ``full``: how notebooks size their work."""
    return quick if quick_mode() else full


def data_root() -> Path:
    """The folder searched for datasets: ``VITLAB_DATA`` if set, else ``<project>/data``."""
    env = os.environ.get("VITLAB_DATA")
    return Path(env).expanduser() if env else PROJECT_ROOT / "data"


def cache_dir() -> Path:
    """Folder for derived files (decoded datasets): ``VITLAB_CACHE`` or ``<project>/.cache`` (data may be read-only)."""
    env = os.environ.get("VITLAB_CACHE")
    return Path(env).expanduser() if env else PROJECT_ROOT / ".cache"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
