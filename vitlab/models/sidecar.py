"""The sidecar ``<weights>.json``: the record beside a weights file that rebuilds its model and says how it was made."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import parse_json, read_json, sha256, write_json
from .architectures import MAX_IMG_SIZE
from .weights import WeightsFileError

#: The sidecar format this vitlab writes, and the newest it reads.
FORMAT = 1
#: Resampling modes timm's transforms accept (``timm.data.transforms.str_to_interp_mode``).
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: Keys that hold a JSON object when present.
_OBJECTS = ("config", "metrics", "data")
_FIX = "fix the sidecar, or delete it and pass arch=<timm or zoo name> to load_model"


def sidecar_path(weights: str | os.PathLike) -> Path:
    """Where the sidecar of the weights file ``weights`` is: the same path ending in ``.json``."""
    return Path(weights).with_suffix(".json")


@dataclass(frozen=True, kw_only=True)
class Sidecar:
    """The record beside a weights file. Keys a file leaves out read as empty (``{}`` or None)."""
    architecture: dict[str, Any]  # the vitlab_arch record that rebuilds the model
    pretrained_cfg: dict[str, Any] | None = None  # preprocessing (timm's convention); None: the architecture's
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of the run that trained it
    metrics: dict[str, Any] = field(default_factory=dict)  # that run's final record
    data: dict[str, Any] = field(default_factory=dict)  # dataset, train_images, subset_seed, test_images
    code_version: str | None = None  # git commit of vitlab that trained it (the last, when a resume changed it)
    code_versions: list[str] | None = None  # every commit the run went through, in order (None: not recorded)
    command: str | None = None  # the command that did
    others: dict[str, Any] = field(default_factory=dict)  # every other key as stored (e.g. pretraining)

    @property
    def objective(self) -> str:
        """How the weights were trained: ``"mpp"`` (masked patch prediction, no labels) or ``"classify"``."""
        return self.config.get("objective") or "classify"

    @property
    def train_images(self) -> int | None:
        """Training images of the run that made it (None when it records none)."""
        return self.data.get("train_images")

    def to_json(self) -> dict[str, Any]:
        """The JSON object :func:`write_sidecar` stores: empty keys left out, ``format`` added."""
        named = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "others"}
        kept = {k: v for k, v in named.items() if v is not None and not (k in _OBJECTS and not v)}
        return dict(self.others, **kept, format=FORMAT)

    @classmethod
    def from_json(cls, stored: Any, where: str = "the sidecar") -> Sidecar:
        """The sidecar of a parsed JSON object; :class:`~vitlab.models.weights.WeightsFileError` naming ``where``."""
        if not isinstance(stored, dict):
            raise WeightsFileError(f"{where} holds a JSON {type(stored).__name__}, not an object; {_FIX}")
        version = stored.get("format", FORMAT)
        if not isinstance(version, int) or version > FORMAT:
            raise WeightsFileError(f"{where} has format {version!r}, but this vitlab reads format {FORMAT} "
                                   "or older; upgrade vitlab, or fix the sidecar")
        if "architecture" not in stored:
            raise WeightsFileError(f"{where} has no 'architecture' key (the record save_model writes, e.g. "
                                   '{"zoo": "vit_tiny_c10"}); add it, or pass arch=<timm or zoo name> to load_model')
        cfg = stored.get("pretrained_cfg")
        problem = _pretrained_cfg_problem(cfg) if cfg is not None else None
        if problem:
            raise WeightsFileError(f"{where}: key 'pretrained_cfg' {problem}; fix it, or delete 'pretrained_cfg' "
                                   "to use the architecture's defaults")
        for key in _OBJECTS:
            if not isinstance(stored.get(key, {}), dict):
                raise WeightsFileError(f"{where}: key {key!r} must be a JSON object, got {short_repr(stored[key])}; "
                                       f"{_FIX}")
        versions = stored.get("code_versions")
        if versions is not None and not (isinstance(versions, list) and all(isinstance(v, str) for v in versions)):
            raise WeightsFileError(f"{where}: key 'code_versions' must be a list of commits, got "
                                   f"{short_repr(versions)}; {_FIX}")
        names = {f.name for f in dataclasses.fields(cls)} - {"others"}
        others = {k: v for k, v in stored.items() if k not in names and k != "format"}
        return cls(**{k: v for k, v in stored.items() if k in names}, others=others)


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """The checked :class:`Sidecar` at ``path``; FileNotFoundError, or a one-line :class:`WeightsFileError`."""
    path = Path(path)
    try:
        stored = read_json(path)
    except ValueError as err:  # bad JSON, nested too deeply, or not UTF-8
        raise WeightsFileError(f"{path} is not valid JSON ({err}); {_FIX}") from None
    return Sidecar.from_json(stored, where=str(path))


def write_sidecar(path: str | os.PathLike, sidecar: Sidecar) -> Path:
    """Write ``sidecar`` to ``path`` atomically, as :func:`read_sidecar` reads it back."""
    return write_json(path, sidecar.to_json())


def files_problem(weights: str | os.PathLike, sidecar: Sidecar, present: tuple[Path, ...] = ()) -> str | None:
    """Why the files of ``weights`` (it and ``present``, beside or below it) are not those whose sha256 its
    ``sidecar`` lists under ``files``, or None; a sidecar listing none (written before it did) is trusted."""
    listed = sidecar.others.get("files")
    if listed is None:
        return None
    folder = Path(weights).parent
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        return f"its sidecar's 'files' is not an object of sha256 strings, got {short_repr(listed)}"
    for name in sorted({Path(p).relative_to(folder).as_posix() for p in (weights, *present)} - listed.keys()):
        return f"{name} is not in its sidecar"
    for name, digest in sorted(listed.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:  # a hostile sidecar names files elsewhere
            return f"its sidecar lists {name!r}, outside {folder}"
        if not path.is_file():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} does not match the sha256 in its sidecar"
    return None


def _pretrained_cfg_problem(cfg: Any) -> str | None:
    """What makes ``cfg`` unusable for preprocessing (a phrase starting with the key), or None."""
    if not isinstance(cfg, dict):
        return f"must be a JSON object, got {short_repr(cfg)}"
    for key in ("mean", "std"):
        value = cfg.get(key, (1, 1, 1))
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            return f"{key!r} must be three numbers (one per RGB channel), got {short_repr(value)}"
    if min(cfg.get("std", (1,))) <= 0:
        return f"'std' must be > 0 (inputs are divided by it), got {cfg['std']}"
    size = cfg.get("input_size", (3, 1, 1))
    if not (isinstance(size, (list, tuple)) and len(size) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMG_SIZE for v in size)):
        return (f"'input_size' must be three positive integers (channels, height, width) of at most {MAX_IMG_SIZE}, "
                f"got {short_repr(size)}")
    if cfg.get("interpolation", "bicubic") not in _INTERPOLATIONS:
        return f"'interpolation' must be one of {', '.join(_INTERPOLATIONS)}, got {short_repr(cfg['interpolation'])}"
    return None


def jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as JSON stores it: tuples become lists, anything else JSON lacks its text."""
    return parse_json(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
