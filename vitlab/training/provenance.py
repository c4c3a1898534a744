"""Where a run ran: the code version and hardware its records carry, and the warnings when a resumed run meets
other code or other data than it was checkpointed with."""
from __future__ import annotations

import functools
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import settings


@functools.cache
def code_version() -> str:
    """The short git commit of the vitlab checkout, ``"vitlab <version>"`` when installed (git there would name the
    commit of whatever repository holds the environment), or ``"unknown"`` (asked once per process)."""
    if not settings.in_checkout():
        return f"vitlab {settings.version()}"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=settings.PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """A short description of ``device`` for run records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def code_history(previous: list[str]) -> list[str]:
    """The code versions a run went through: ``previous`` (its checkpoint's, in order) and this process's, unless it
    is the last one already."""
    return previous if previous[-1:] == [code_version()] else [*previous, code_version()]


def warn_changes(out: Path, state: dict[str, Any], data: dict[str, Any]) -> None:
    """Warn, a line each, when a run resumed from checkpoint ``state`` (:func:`load_checkpoint`) runs other code than
    it was checkpointed with, or trains on data whose content hash (``data["train_sha256"]``) differs from its own."""
    last = state["code_versions"][-1:]
    if last and last != [code_version()]:
        warnings.warn(f"{out}: resuming a run checkpointed by code version {last[0]} with version {code_version()}; "
                      f"its sidecar will list every version (code_versions)", stacklevel=3)
    saved, now = state["data"].get("train_sha256"), data.get("train_sha256")
    if saved is not None and saved != now:
        warnings.warn(f"{out}: resuming a run on other training data (content sha256 {str(saved)[:12]}... in the "
                      f"checkpoint, {str(now)[:12]}... now): the data changed; pass the same data, or choose "
                      "another --out to start over", stacklevel=3)
