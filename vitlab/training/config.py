"""A run's settings (:class:`TrainConfig`), and one mapping between config dataclasses, flags and command lines."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..io import field_type as _field_type, parse_json, parse_toml, type_problem

TRAIN_IMAGES, TEST_IMAGES, IMAGE_SIZE = 50_000, 10_000, 32  #: CIFAR-10's, and its image side in pixels
#: Field metadata of a setting for when a run evaluates, not what it trains: a run resumes under another value, and
#: commands leave it out at its default.
CADENCE = {"cadence": True}
#: The largest seed: runs derive further seeds from it (``seed * 1_000_003 + step``), which must stay within torch's
#: 64-bit seeds however long a run is.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A setting that cannot work, found before any work starts."""


def _choices(hint: Any) -> tuple[Any, ...] | None:
    kind, _ = _field_type(hint)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _parse(kind: type, optional: bool) -> Callable[[str], Any]:
    """An argparse ``type`` that reads ``kind``, and ``none`` as None for optional fields."""
    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return kind(text)
    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_help(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` section of ``cls``'s docstring."""
    lines = (cls.__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return {}
    helps: dict[str, str] = {}
    name, indent = None, None
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        head, sep, text = line.strip().partition(": ")
        if depth == indent and sep:
            name = head
            helps[name] = text
        elif depth > indent and name:
            helps[name] += " " + line.strip()
    return {k: v.replace("``", "") for k, v in helps.items()}


def add_flags(parser: argparse.ArgumentParser, cls: type, exclude: Iterable[str] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser``, typed by its annotation, helped by its docstring:
    ``bool``: ``--flip/--no-flip``; ``tuple``: ``nargs='+'``; ``| None``: ``none`` reads None; ``Literal``: choices."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kind, optional = _field_type(hints[field.name])
        default = _default(field)
        text = f"{helps.get(field.name, '').rstrip('.')} (default: {default})".lstrip()
        flag = _flag(field.name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, type=_parse(item, False), nargs="+", default=default, help=text)
        elif (choices := _choices(kind)) is not None:
            parser.add_argument(flag, type=_parse(type(choices[0]), optional), choices=choices, default=default,
                                help=text)
        else:
            parser.add_argument(flag, type=_parse(kind if kind in (int, float) else str, optional),
                                default=default, help=text)


def from_args(cls: type, values: argparse.Namespace | Mapping[str, Any]) -> Any:
    """Build ``cls`` from parsed flags or a mapping, ignoring keys that are not fields; lists become tuples."""
    values = vars(values) if isinstance(values, argparse.Namespace) else dict(values)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in values:
            value = values[field.name]
            if typing.get_origin(_field_type(hints[field.name])[0]) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[field.name] = value
    config = cls(**kwargs)
    check_fields(config)
    return config


def value_problem(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` cannot be the setting ``name`` annotated ``hint``, as a line naming its flag, or None
    (:func:`vitlab.io.type_problem`: whole numbers must be ints, not floats or bools, ...). ``Literal`` values are
    left to :func:`check_choices`."""
    problem = type_problem(value, hint)
    return None if problem is None else f"{_flag(name)} {problem}"


def check_fields(config: Any) -> None:
    """Raise :class:`ConfigError` for a field of the wrong type (:func:`value_problem`) or choice; ints given for
    float fields become floats, so a settings file's ``lr = 1`` makes the config ``--lr 1`` does."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if problem := value_problem(field.name, value, hints[field.name]):
            raise ConfigError(problem)
        if _field_type(hints[field.name])[0] is float and isinstance(value, int):
            object.__setattr__(config, field.name, float(value))  # frozen dataclasses too
    check_choices(config)


def check_choices(config: Any) -> None:
    """Raise :class:`ConfigError` naming the field, value and choices of any ``Literal`` field out of range."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        choices, value = _choices(hints[field.name]), getattr(config, field.name)
        optional = _field_type(hints[field.name])[1]
        if choices is not None and value not in choices and not (optional and value is None):
            raise ConfigError(f"{field.name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def command_line(prog: str, config: Any) -> str:
    """The command, starting with ``prog``, whose flags rebuild ``config`` exactly (defaults too, but CADENCE ones)."""
    parts = [prog]
    for field in dataclasses.fields(config):
        value, default, flag = getattr(config, field.name), _default(field), _flag(field.name)
        if value == default and field.metadata.get("cadence"):
            continue
        if value is None or value == ():
            if value == default:
                continue
            if value == ():
                raise ValueError(f"{field.name}=() cannot be written as a flag (nargs='+')")
            parts.append(f"{flag} none")
        elif isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            parts.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def read_file(path: str | Path, cls: type, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings in a JSON or TOML file (by its suffix), each of its field's type (:func:`value_problem`), or the
    type ``extra`` gives a key that is no field; ConfigError for an unknown key or value, or an unreadable file."""
    path = Path(path)
    try:
        text = path.read_text()
        values = parse_toml(text) if path.suffix == ".toml" else parse_json(text)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read settings from {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds a {type(values).__name__}, not a table of settings such as "
                          '{"epochs": 10}')
    hints = {**typing.get_type_hints(cls), **(extra or {})}
    if unknown := sorted(set(values) - set(hints)):
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(hints)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    # Checked here, not after argparse: argparse would parse string values as if typed, e.g. "5" as 5.
    for key, value in values.items():
        if problem := value_problem(key, value, hints[key]):
            raise ConfigError(f"{path}: {problem}")
    return values


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train and how: the settings of a run. Sizes are in images, ``img_size`` in pixels.

    Attributes:
        model: architecture to build (a key of ``vitlab.models.ARCHITECTURES``).
        init: fine-tune: start from these weights (any load_model spec). Weights pre-trained without labels
            (``objective="mpp"``) get a new classifier head.
        objective: classify (supervised, with labels), or mpp (masked patch prediction without labels, a ViT only:
            ``python -m vitlab pretrain``).
        img_size: fine-tune at this resolution; ViT position embeddings are resampled in 2-D.
        subset_size: class-stratified training subset; None: all 50,000 images.
        seed: seeds the subset, the initial weights, the batch order and the augmentation.
        epochs: passes over the training images.
        batch_size: global batch, split across processes under torchrun.
        optimizer: adamw, or sgd (momentum 0.9, Nesterov).
        lr: peak learning rate, after a linear warmup, before a cosine decay to zero.
        weight_decay: decoupled weight decay of weights (not of biases, norms, embeddings).
        warmup_epochs: epochs of linear learning-rate warmup, at most ``epochs`` (the default 2 is kept in shorter runs,
            whose learning rate then peaks below ``lr``).
        label_smoothing: of the cross-entropy loss (folded into the soft targets under mixing).
        mixup: alpha of mixup's Beta(alpha, alpha) mixing weight; 0: off (timm's ``mixup_alpha``).
        cutmix: alpha of CutMix's Beta(alpha, alpha) box area; 0: off (timm's ``cutmix_alpha``).
        mix_prob: chance that a batch is mixed at all, when mixup or cutmix is on (timm's ``prob``).
        mix_switch_prob: with both on, chance that a mixed batch uses CutMix rather than mixup (timm's ``switch_prob``).
        crop_padding: pixels of reflection padding for random crops.
        flip: random horizontal flips.
        randaugment: RandAugment ops per image after crop and flip (torchvision, each image its own); 0: off.
        randaugment_magnitude: their strength, 0..30 (torchvision's ``magnitude`` of 31 bins).
        precision: auto (bf16 on GPUs, fp32 on CPUs), bf16 or fp32.
        compile: torch.compile the model (GPU).
        eval_size: class-stratified test subset scored at each evaluation; None: all 10,000.
        eval_every: evaluate on the eval_size images, log a metrics row and checkpoint every this many epochs and after
            the last (inside views keep their epochs); when, not what: the weights are the same for every value, and a
            run resumes under another.
    """
    model: str = "vit_tiny_c10"
    init: str | None = None
    objective: Literal["classify", "mpp"] = "classify"
    img_size: int | None = None
    subset_size: int | None = None
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    crop_padding: int = 4
    flip: bool = True
    randaugment: int = 0
    randaugment_magnitude: int = 9
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    eval_size: int | None = None
    eval_every: int = dataclasses.field(default=1, metadata=CADENCE)

    def __post_init__(self) -> None:
        check_fields(self)
