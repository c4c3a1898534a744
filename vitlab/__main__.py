"""Command line: ``python -m vitlab {zoo,data,train,publish,sweep}``.

``train`` maps one flag onto each field of :class:`vitlab.train.TrainConfig`; ``--config``
names a JSON or TOML file of the same fields, and flags given beside it win. ``sweep``
maps its flags onto :class:`vitlab.sweep.SweepConfig` the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import typing
from pathlib import Path

from . import data, models
from .sweep import SweepConfig, sweep
from .train import TrainConfig, publish, train


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
            continue
        kind = next((t for t in (int, float, str) if t is hint or t in typing.get_args(hint)), str)
        parser.add_argument(flag, type=kind, default=field.default, help=f"default: {field.default}")


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(SweepConfig)
    for field in dataclasses.fields(SweepConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        if typing.get_origin(hint) is tuple:
            kind = typing.get_args(hint)[0]
            parser.add_argument(flag, type=kind, nargs="+", default=list(field.default), help=f"default: {field.default}")
        else:
            parser.add_argument(flag, type=hint, default=field.default, help=f"default: {field.default}")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                        help="a progress bar per epoch")


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text()
    values = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"{path}: unknown training settings {unknown}; known: {sorted(known)}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("zoo", help="list the zoo's models as JSON")
    sub.add_parser("data", help="decode CIFAR-10 once into the cache and print its size")
    train_parser = sub.add_parser("train", help="train a zoo model on CIFAR-10")
    train_parser.add_argument("--config", help="JSON or TOML file of TrainConfig fields (flags override it)")
    _add_config_flags(train_parser)
    pub = sub.add_parser("publish", help="copy a finished run into data/zoo under a zoo name")
    pub.add_argument("run", help="the run's --out folder")
    pub.add_argument("name", choices=sorted(models.ZOO), help="zoo name it is a checkpoint of")
    pub.add_argument("--code-version", default=None, help="commit the run was trained with, if not recorded")
    sweep_parser = sub.add_parser("sweep", help="train ViT and ResNet on growing CIFAR-10 subsets")
    _add_sweep_flags(sweep_parser)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        train_parser.set_defaults(**_read_config_file(args.config))
        args = parser.parse_args(argv)
    if args.command == "zoo":
        print(json.dumps(models.zoo(), indent=2))
    elif args.command == "data":
        for split in data.SPLITS:
            images, labels = data.cifar10(split)
            print(f"{split}: {tuple(images.shape)} images, {len(labels.unique())} classes")
    elif args.command == "sweep":
        fields = {f.name for f in dataclasses.fields(SweepConfig)}
        config = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields})
        records = sweep(config, progress=args.progress)
        print(f"{len(records)} runs in {config.results}.csv")
    elif args.command == "publish":
        print(publish(args.run, args.name, args.code_version))
    else:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        print(json.dumps(train(config).record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
