"""Building, loading and saving models (timm names, local files, zoo checkpoints); each carries ``pretrained_cfg``
and ``vitlab_arch``, a JSON-able record that rebuilds it (:func:`save_model` writes it into the sidecar)."""
from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import safetensors.torch
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .. import data, settings
from ..io import atomic_path, sha256
from .architectures import ARCHITECTURES, LIMITS, MAX_IMG_SIZE, architecture, check_arguments
from .hub import WeightsUnavailableError, load_timm, match_input_size, pretrained_tags
from .sidecar import Sidecar, files_problem, jsonable, read_sidecar, short_repr, sidecar_path, write_sidecar
from .weights import (GOOGLE_VIT_CFG, SUFFIXES, WeightsFileError, check_shapes, check_weights_file, fit_head,
                      google_vit_args, load_google_npz, load_state, read_state_dict)

ZOO_DIR = settings.shipped_dir("zoo")


def _set_cfg(model: nn.Module, pretrained_cfg: dict[str, Any]) -> None:
    model.pretrained_cfg = dict(pretrained_cfg)
    model.default_cfg = model.pretrained_cfg  # older timm helpers read default_cfg


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a ``vitlab_arch`` record: ``{"zoo": name, "config": {...}}``,
    ``{"timm": name, "kwargs": {...}}`` or ``{"google_vit": {...}}`` (ValueError if it is none of them)."""
    _check_record(arch)
    if "zoo" in arch:
        config = architecture(arch["zoo"], arch.get("config"))
        model = config.build()
        _set_cfg(model, dict(architecture=arch["zoo"], tag="cifar10", input_size=(3, config.img_size, config.img_size),
                             mean=data.MEAN, std=data.STD, interpolation="bicubic", crop_pct=1.0, crop_mode="center",
                             num_classes=config.num_classes, classifier="fc" if config.family == "resnet" else "head"))
        model.vitlab_arch = {"zoo": arch["zoo"], "config": dataclasses.asdict(config)}
        return model
    if "timm" in arch:
        kwargs = dict(arch.get("kwargs", {}))
        model = timm.create_model(arch["timm"], pretrained=False, **kwargs)
        match_input_size(model)
        model.vitlab_arch = {"timm": arch["timm"], "kwargs": kwargs}
        return model
    kwargs = dict(arch["google_vit"])
    model = VisionTransformer(**kwargs)
    size = kwargs["img_size"]
    _set_cfg(model, dict(GOOGLE_VIT_CFG, input_size=(3, size, size), num_classes=kwargs["num_classes"]))
    model.vitlab_arch = {"google_vit": kwargs}
    return model


class _WeightsPlan(NamedTuple):
    """A checked weights file and how to build the model it fits."""
    path: Path
    record: dict[str, Any] | None  # the architecture record to build; None: infer it from the .npz
    pretrained_cfg: dict[str, Any] | None  # the sidecar's preprocessing
    fit_head: bool  # arch= was given: size the head like the file's


def load_model(spec: str | os.PathLike, num_classes: int | None = None, *, device: str | torch.device | None = None,
               arch: str | None = None, **kw: Any) -> nn.Module:
    """Load a model by zoo name, timm name or local file, in eval mode; a bad spec fails in one line, early.

    Args:
        spec: a zoo name (its ``data/zoo/<name>.safetensors``, else random weights with a warning), a timm name
            with optional pretrained tag (``"vit_small_patch16_224.augreg_in21k"``), or a ``.safetensors``,
            ``.pt``/``.pth`` (a state dict) or Google ``.npz`` ViT file.
        num_classes: replace the classifier head with one for this many classes (0 removes it, as in timm).
        arch: architecture (timm or zoo name) of a weights file that has no sidecar.
        **kw: passed to ``timm.create_model`` for timm names and ``arch=`` timm architectures.
    """
    device = _device(device)
    _check_num_classes(num_classes)
    kind, target = _resolve(spec, arch, kw)
    if kind == "file":
        model = _load_file(target)
    elif kind == "zoo":
        warnings.warn(f"zoo model {target!r} has no trained checkpoint in {ZOO_DIR}; returning random weights "
                      f"(train one with: python -m vitlab train --model {target})", stacklevel=2)
        model = build_model({"zoo": target})
    else:
        model = load_timm(target, num_classes=num_classes, **kw)
    if num_classes is not None and model.num_classes != num_classes:
        model.reset_classifier(num_classes)
        _set_cfg(model, dict(model.pretrained_cfg, num_classes=num_classes))
        _update_arch(model, num_classes=num_classes)
    return model.to(device).eval()


def check_spec(spec: str | os.PathLike, *, arch: str | None = None, **kw: Any) -> str:
    """Raise ``load_model``'s error for a bad spec without loading; else return ``"file"``, ``"zoo"`` or ``"timm"``."""
    return _resolve(spec, arch, kw)[0]


def describe_load(spec: str) -> str:
    """Load ``spec`` and describe it in one line, or say why it cannot be loaded here."""
    try:
        model = load_model(spec, device="cpu")
    except WeightsUnavailableError as err:
        return f"{spec}: not available here. {err}"
    except (ValueError, TypeError, OSError) as err:
        return f"{spec}: cannot be loaded. {err}"
    params = sum(p.numel() for p in model.parameters())
    return f"{spec}: {type(model).__name__}, {params:,} parameters, input {model.pretrained_cfg['input_size']}"


def _resolve(spec: str | os.PathLike, arch: str | None, kw: dict[str, Any]) -> tuple[str, Any]:
    """What ``spec`` names, checked: ("file", plan), ("zoo", name) without a checkpoint, or ("timm", name)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a zoo name, timm name or file path (str or Path), got {spec!r}")
    text = os.fspath(spec)
    if not text.strip():
        raise ValueError("spec is empty; pass a zoo name (e.g. 'vit_tiny_c10'), a timm name or a weights file path")
    path = Path(text).expanduser()
    if text.lower().endswith(SUFFIXES) or path.is_file():
        return "file", _plan_file(path, arch, kw)
    if arch is not None:
        if path.is_dir():
            check_weights_file(path)  # says it is a folder and which weights files it holds
        raise TypeError(f"arch={arch!r} names the architecture of a weights file, but {text!r} is not a file "
                        "path; drop arch=")
    if text in ARCHITECTURES or ("/" not in text and zoo_weights(text).is_file()):
        if kw:
            raise TypeError(f"zoo model {text!r} takes no extra arguments, got {sorted(kw)}; for random weights "
                            f"use vitlab.models.build_model({{'zoo': {text!r}}})")
        weights = zoo_weights(text)
        if not weights.is_file():
            return "zoo", text
        if problem := zoo_problem(text):
            raise WeightsFileError(problem)
        # The sidecar names the architecture, so a checkpoint may be named apart from it.
        return "file", _plan_file(weights, None, {})
    if timm.is_model(timm.models.split_model_name_tag(text)[0]):
        _check_timm_name(text)
        return "timm", text
    if path.is_dir():
        check_weights_file(path)  # says it is a folder and which weights files it holds
    raise ValueError(f"{text!r} is neither a file, a zoo name ({', '.join(_zoo_names())}) nor a timm model name."
                     f"{_did_you_mean(text)} List timm names with timm.list_models('vit_*').")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return settings.default_device()
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; pass 'cpu', 'cuda' or 'cuda:1', "
                         "or leave it unset for CUDA when available") from None
    if found.type == "cuda" and (not torch.cuda.is_available() or (found.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         "pass device='cpu', or leave it unset for CUDA when available")
    return found


def _check_num_classes(num_classes: Any) -> None:
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be a whole number of classes (0 for no head), got {num_classes!r}")
    most = LIMITS["num_classes"][1]
    if not 0 <= num_classes <= most:
        raise ValueError(f"num_classes must be 0 or more (0 removes the head, as in timm) and at most {most:,}, "
                         f"got {num_classes}")


def _check_timm_name(name: str, what: str = "") -> None:
    """Refuse an unknown timm architecture or pretrained tag before timm (or the hub) sees it."""
    base, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(base):
        raise ValueError(f"{what}{name!r} is not a zoo or timm model name (timm {timm.__version__})."
                         f"{_did_you_mean(base)} List timm names with timm.list_models('vit_*').")
    tags = pretrained_tags(base) if tag else []
    if tag and tag not in tags:
        known = f"its tags are {', '.join(tags)}" if tags else f"timm {timm.__version__} has no weights for it"
        raise ValueError(f"{what}{name!r}: {base} has no pretrained tag {tag!r}; {known} "
                         f"(timm.list_pretrained('{base}.*')). Use {base!r} alone for its default weights.")


def _zoo_names() -> list[str]:
    return sorted({*ARCHITECTURES, *(p.stem for p in ZOO_DIR.glob("*.safetensors"))})


def _did_you_mean(text: str) -> str:
    close = difflib.get_close_matches(text, _zoo_names() + timm.list_models(), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def zoo_weights(name: str) -> Path:
    """Where the zoo checkpoint called ``name`` lives (it may not exist)."""
    return ZOO_DIR / f"{name}.safetensors"


def zoo_problem(name: str, present: tuple[Path, ...] = ()) -> str | None:
    """Why zoo checkpoint ``name`` (with its files ``present`` beside it: logs, inside views) is half-written, in one
    line saying how to repair it, or None (intact, or absent). Only publish writes there, sidecar last."""
    weights = zoo_weights(name)
    sidecar = sidecar_path(weights)
    if not weights.is_file() and not sidecar.is_file() and not present:
        return None
    if not weights.is_file() or not sidecar.is_file():
        problem = f"{(sidecar if weights.is_file() else weights).name} is missing"
    else:
        problem = files_problem(weights, read_sidecar(sidecar), present)
    if problem is None:
        return None
    return (f"zoo entry {name} is half-written ({problem}): a publish was stopped midway; publish it again with "
            f"python -m vitlab publish <run> {name} --force")


def weights_file(spec: str | os.PathLike) -> Path | None:
    """The local file ``load_model(spec)`` reads weights from (a path, or a zoo checkpoint), if any."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    checkpoint = zoo_weights(os.fspath(spec))
    return checkpoint if checkpoint.is_file() else None


def _plan_file(path: Path, arch: str | None, kw: dict[str, Any]) -> _WeightsPlan:
    """Check ``path`` and the architecture it will be built as (arch=, sidecar or .npz shapes)."""
    check_weights_file(path)
    sidecar = sidecar_path(path)
    if arch is not None:
        if arch in ARCHITECTURES:
            if kw:
                raise TypeError(f"arch={arch!r} is a zoo architecture and takes no extra arguments, got {sorted(kw)}; "
                                "drop them, or name a timm architecture")
            return _WeightsPlan(path, {"zoo": arch}, None, fit_head=True)
        _check_timm_name(arch, what="arch=")
        return _WeightsPlan(path, {"timm": arch, "kwargs": kw}, None, fit_head=True)
    if kw:
        raise TypeError(f"extra arguments {sorted(kw)} for {path} are used only with arch=; its sidecar or "
                        "shapes fix the architecture (set_input_size changes the input size)")
    if sidecar.is_file():
        meta = read_sidecar(sidecar)
        try:
            _check_record(meta.architecture)
        except ValueError as err:
            raise WeightsFileError(f"{sidecar}: key 'architecture': {str(err).rstrip('.')}; fix the sidecar, or pass "
                                   "arch=<timm or zoo name> to load_model") from None
        return _WeightsPlan(path, meta.architecture, meta.pretrained_cfg, fit_head=False)
    if path.suffix.lower() == ".npz":
        return _WeightsPlan(path, None, None, fit_head=False)
    raise ValueError(f"{path} has no sidecar {sidecar.name} describing its architecture; pass arch=<timm "
                     f"or zoo name>, e.g. load_model({str(path)!r}, arch='vit_small_patch16_224')")


def _check_record(record: Any) -> None:
    kinds = ("zoo", "timm", "google_vit")
    if not isinstance(record, dict) or sum(k in record for k in kinds) != 1:
        raise ValueError("expected a record with one of the keys 'zoo', 'timm' or 'google_vit', "
                         f"got {short_repr(record)}")
    if "zoo" in record:
        architecture(record["zoo"], record.get("config"))  # raises ValueError naming the problem
    elif "timm" in record:
        if not isinstance(record["timm"], str) or not isinstance(record.get("kwargs", {}), dict):
            raise ValueError(f"a timm record needs a name and a 'kwargs' mapping, got {short_repr(record)}")
        _check_timm_name(record["timm"])
        check_arguments(record.get("kwargs", {}))
    elif not isinstance(record["google_vit"], dict) or not {"img_size", "num_classes"} <= record["google_vit"].keys():
        raise ValueError(f"a google_vit record needs VisionTransformer arguments with img_size and "
                         f"num_classes, got {short_repr(record)}")
    else:
        check_arguments(record["google_vit"])


def _load_file(plan: _WeightsPlan) -> nn.Module:
    path = plan.path
    if path.suffix.lower() == ".npz":
        model = build_model(plan.record or {"google_vit": google_vit_args(path)})
        load_google_npz(model, path)
    else:
        state = read_state_dict(path)  # before building: a corrupt file fails before any other work
        # Shapes first, on the meta device: a record that claims another (or a huge) architecture allocates nothing.
        with torch.device("meta"):
            skeleton = _fitted(plan, state)
        check_shapes(skeleton, state, path)
        model = _fitted(plan, state)
        load_state(model, state, path)
    if plan.pretrained_cfg:  # JSON turned timm's tuples into lists
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in plan.pretrained_cfg.items()}
        _set_cfg(model, dict(model.pretrained_cfg, **cfg))
    return model


def _fitted(plan: _WeightsPlan, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model of ``plan.record``, its head sized like ``state``'s when ``arch=`` was given."""
    model = build_model(plan.record)
    if plan.fit_head:
        fit_head(model, state)
    return model


def set_input_size(model: nn.Module, img_size: int) -> nn.Module:
    """Adapt ``model`` to ``img_size`` x ``img_size`` pixel inputs in place: position embeddings, cfg and record."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or not 1 <= img_size <= MAX_IMG_SIZE:
        raise ValueError(f"img_size must be a whole number of pixels in 1..{MAX_IMG_SIZE}, got {img_size!r}")
    if hasattr(model, "set_input_size"):
        model.set_input_size(img_size=(img_size, img_size))
    _set_cfg(model, dict(model.pretrained_cfg, input_size=(3, img_size, img_size)))
    _update_arch(model, img_size=img_size)
    return model


def _update_arch(model: nn.Module, **changes: Any) -> None:
    """Record architecture changes made after building, so a saved sidecar rebuilds them."""
    record = model.vitlab_arch
    if "zoo" in record:
        record["config"] = dict(record.get("config") or dataclasses.asdict(ARCHITECTURES[record["zoo"]]), **changes)
    elif "timm" in record:
        record["kwargs"] = dict(record["kwargs"], **changes)
    else:
        record["google_vit"] = dict(record["google_vit"], **changes)


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None,
               extra: dict[str, torch.Tensor] | None = None, files: tuple[Path, ...] = ()) -> Path:
    """Save weights (and ``extra`` tensors, keys ``mpp.*``) as ``.safetensors`` and a sidecar with ``metadata``;
    with ``files`` (beside or below ``path``), the sidecar lists the sha256 of each and of the weights, written last,
    so a reader tells a set of files that was half replaced (``zoo_problem``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save to a .safetensors path, got {path}")
    arch = getattr(model, "vitlab_arch", None)
    if arch is None:
        raise ValueError("this model was not built by vitlab, so its architecture is unknown; create it with "
                         "vitlab.load_model(...) (e.g. load_model('vit_small_patch16_224', pretrained=False))")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    clash = sorted(state.keys() & (extra or {}).keys())
    if clash:
        raise ValueError(f"extra tensors {clash} would overwrite the model's own weights; rename them")
    state.update(extra or {})
    meta = {k: v for k, v in (metadata or {}).items() if k != "format"}  # the writer stamps its own
    sidecar = Sidecar.from_json(dict(meta, architecture=arch, pretrained_cfg=jsonable(model.pretrained_cfg)),
                                where=f"the metadata for {path}")  # refused before anything is written
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp))
        digest = sha256(tmp)
    if files:
        listed = {p.relative_to(path.parent).as_posix(): sha256(p) for p in files}
        sidecar = dataclasses.replace(sidecar, others=dict(sidecar.others, files={path.name: digest, **listed}))
    write_sidecar(sidecar_path(path), sidecar)
    return path
