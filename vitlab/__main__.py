"""Command line: ``python -m vitlab {zoo,data,train,pretrain,publish,sweep,recipes,scoreboard,notebooks}`` and
``--version``.

``train`` has one flag per field of :class:`vitlab.training.config.TrainConfig` (mapped by
:mod:`vitlab.training.config`) besides ``--out``, ``--progress`` and ``--checkpoint-every``;
``pretrain`` is the same trainer without labels (``--objective mpp``, the paper's masked
patch prediction), with the flags that concern labels left out;
``--config`` names a JSON or TOML file of the same settings, and flags given beside it
win. ``sweep`` maps its flags onto :class:`vitlab.training.sweep.SweepConfig` the same way. Bad
input ends in a one-line error before any work starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
from pathlib import Path

from . import data, settings
from .training import zoo
from .training.config import ConfigError, TrainConfig, add_flags, from_args, read_file
from .models import WeightsUnavailableError
from .result_files import ResultsFileError
from .training.sweep import SweepConfig, sweep
from .training.loop import train
from .models.weights import WeightsFileError
from .io import DiskFullError
from .training.run_folder import Interrupted

_PROG = "python -m vitlab"
#: Errors that report bad input (or a full disk) in one line: printed as they are, without a traceback.
_INPUT_ERRORS = (ConfigError, PermissionError, FileNotFoundError, FileExistsError, data.CorruptDataError,
                WeightsFileError, WeightsUnavailableError, ResultsFileError, DiskFullError)
#: Flags of ``train`` that say where and how a run reports, not what it is, and the type a settings file gives each.
RUN_FLAGS = {"out": str | None, "progress": bool, "checkpoint_every": int, "inside": bool}
#: Settings of ``train`` that act on labels; ``pretrain`` has no flags for them and fixes them off.
LABEL_FLAGS = ("label_smoothing", "mixup", "cutmix", "mix_prob", "mix_switch_prob")
_PRETRAIN_DEFAULTS = TrainConfig(objective="mpp", label_smoothing=0.0)


def build_parser(train_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The parser of every command; ``train_defaults`` (e.g. from ``--config``) replace flag defaults."""
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vitlab {settings.version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("zoo", help="list the zoo's models as JSON")
    sub.add_parser("data", help="decode CIFAR-10 once into the cache and print its size")
    train_parser = sub.add_parser("train", help="train a zoo architecture on CIFAR-10")
    train_parser.add_argument("--config", help="JSON or TOML file of these settings (flags override it)")
    add_flags(train_parser, TrainConfig)
    _run_flags(train_parser)
    train_parser.set_defaults(**(train_defaults or {}))
    pre = sub.add_parser("pretrain", help="pre-train a zoo ViT on CIFAR-10's images without their labels")
    add_flags(pre, TrainConfig, exclude=LABEL_FLAGS)
    _run_flags(pre)
    pre.set_defaults(objective="mpp", **{name: getattr(_PRETRAIN_DEFAULTS, name) for name in LABEL_FLAGS})
    objective = next(a for a in pre._actions if a.dest == "objective")  # its help names train's default
    objective.help = "the self-supervised objective: mpp, the paper's masked patch prediction (default: mpp)"
    pub = sub.add_parser("publish", help="copy a finished run into data/zoo under a zoo name")
    pub.add_argument("run", help="the run's --out folder")
    pub.add_argument("name", choices=sorted(zoo.ENTRIES), help="zoo entry it is a checkpoint of")
    pub.add_argument("--code-version", default=None, help="commit the run was trained with, if not recorded")
    pub.add_argument("--force", action="store_true", help="replace the entry's checkpoint if it has one already")
    sweep_parser = sub.add_parser("sweep", help="train ViT and ResNet on growing CIFAR-10 subsets")
    add_flags(sweep_parser, SweepConfig)
    sweep_parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                              help="a progress bar per epoch")
    rec = sub.add_parser("recipes", help="collect finished runs into one comparison of training recipes")
    rec.add_argument("--arm", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"),
                     help="an arm's label and its seeds' run folders or zoo entries with inside views (--arm per arm)")
    rec.add_argument("--out", required=True, help="new folder of the comparison (e.g. data/results/locality)")
    rec.add_argument("--force", action="store_true",
                     help="replace --out if it is a comparison vitlab wrote (never a run or a folder with other files)")
    rec.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    board = sub.add_parser("scoreboard", help="score every attribution method of zoo models on CIFAR-10 test images")
    board.add_argument("models", nargs="+", help="zoo names (a model whose scoreboard is in --out already is kept)")
    board.add_argument("--images", type=int, default=500, help="class-stratified CIFAR-10 test images (default 500)")
    board.add_argument("--sanity-images", type=int, default=100, help="images of the sanity check (0 skips it)")
    board.add_argument("--mosaics", type=int, default=100, help="mosaics of the Focus score (0 skips it)")
    board.add_argument("--out", default=None, help="folder of the <model>.json scoreboards "
                       "(default data/results/attributions)")
    board.add_argument("--force", action="store_true", help="compute and replace a scoreboard that is there already")
    board.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    nbs = sub.add_parser("notebooks", help="copy the notebooks into a folder of your own (refuses to overwrite one)")
    nbs.add_argument("dir", help="the folder to copy them into (created if missing)")
    return parser


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``train`` and ``pretrain`` that say where and how a run reports (:data:`RUN_FLAGS`)."""
    parser.add_argument("--out", help="folder of the run: checkpoints, log, final model (default: runs/<model>, "
                        "runs/<model>-<objective> when pre-training); a run started again in it resumes")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress bar per epoch; without it, one JSON line per epoch")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                        help="also checkpoint every this many steps (default: 0, at epoch ends only)")
    parser.add_argument("--inside", action=argparse.BooleanOptionalAction, default=True,
                        help="record a ViT's inside views (inside.jsonl, inside.safetensors) each epoch")


def _run(args: argparse.Namespace) -> None:
    """Do what ``args.command`` says and print its result."""
    if args.command == "zoo":
        print(json.dumps(zoo.zoo(), indent=2))
    elif args.command == "data":
        for split in data.SPLITS:
            images, labels = data.cifar10(split)
            print(f"{split}: {tuple(images.shape)} images, {len(labels.unique())} classes")
    elif args.command in ("train", "pretrain"):
        _train(args)
    elif args.command == "publish":
        print(zoo.publish(args.run, args.name, args.code_version, force=args.force))
    elif args.command == "notebooks":
        settings.copy_notebooks(dest=Path(args.dir), exist_ok=False)
        print(f"copied {len(list(settings.NOTEBOOKS_DIR.glob('*.ipynb')))} notebooks into {args.dir}; open them with "
              f"jupyter lab {shlex.quote(args.dir)} (pip install 'vitlab[notebooks]' installs JupyterLab)")
    elif args.command == "scoreboard":
        _scoreboard(args)
    elif args.command == "sweep":
        config = from_args(SweepConfig, args)
        print(f"{len(sweep(config, progress=args.progress))} runs in {config.results}.csv")
    else:
        _recipes(args)


def _train(args: argparse.Namespace) -> None:
    config = from_args(TrainConfig, args)
    if args.command == "pretrain" and config.objective == "classify":
        raise ConfigError("pretrain trains without labels: --objective must be mpp (masked patch prediction); "
                          "use python -m vitlab train to classify")
    default = f"runs/{config.model}-{config.objective}" if args.command == "pretrain" else f"runs/{config.model}"
    out = args.out or default
    result = train(config, out, progress=args.progress, checkpoint_every=args.checkpoint_every, inside=args.inside)
    print(json.dumps(result.record, indent=2))


def _scoreboard(args: argparse.Namespace) -> None:
    """Each model's scoreboard on the same images, written as soon as it is done (a rerun keeps finished ones)."""
    import platform
    import time

    import torch

    from . import models, result_files
    from .analysis.scoreboard import scoreboard_analysis
    from .training.provenance import code_version, hardware
    out = Path(args.out) if args.out else result_files.SCOREBOARDS
    unknown = [m for m in args.models if m not in zoo.ENTRIES]
    if unknown:
        raise ConfigError(f"not in the zoo: {', '.join(unknown)}; python -m vitlab zoo lists its names")
    if not 2 <= args.images or args.sanity_images > args.images or min(args.sanity_images, args.mosaics) < 0:
        raise ConfigError("--images must be 2 or more, --sanity-images 0 to --images, --mosaics 0 or more")
    images, labels = data.cifar10("test", download=False)
    pick = data.stratified_subset(labels, args.images, seed=0)
    images, labels = images[pick], labels[pick]
    described = data.describe_images(len(pick), "CIFAR-10 test", labels)
    command = shlex.join(["python", "-m", "vitlab", "scoreboard", *args.models, "--images", str(args.images),
                          "--sanity-images", str(args.sanity_images), "--mosaics", str(args.mosaics)])
    for name in args.models:
        if result_files.scoreboard_file(out, name).exists() and not args.force:
            print(f"{name}: kept {result_files.scoreboard_file(out, name)} (--force computes it again)")
            continue
        start = time.perf_counter()
        model = models.load_model(name, device="cpu")
        result = scoreboard_analysis(model, images, labels, sanity_images=args.sanity_images,
                                     focus_mosaics=args.mosaics, progress=args.progress, model_name=name,
                                     described=described)
        about = {"model": name, "images": len(pick), "described": described, "seconds": result.seconds,
                 "total_seconds": time.perf_counter() - start, "hardware": hardware(torch.device("cpu")),
                 "threads": torch.get_num_threads(), "code_version": code_version(),
                 "python": platform.python_version()}
        path = result_files.write_scoreboard(out, result.rows(), command, about, force=args.force)
        parts = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in result.seconds.items())
        print(f"{name}: {path} in {about['total_seconds']:.0f} s ({parts})", flush=True)


def _recipes(args: argparse.Namespace) -> None:
    from .views import recipe_readouts
    from .training import recipes
    arms = {}
    for label, *runs in args.arm:
        if not runs or label in arms:
            raise ConfigError(f"--arm {label}: give each arm once, as a label followed by its run folders")
        arms[label] = runs
    command = "python -m vitlab recipes " + " ".join(
        shlex.join(["--arm", *arm]) for arm in args.arm) + f" --out {shlex.quote(args.out)}"
    comparison = recipes.collect(arms, args.out, commands=[command], force=args.force, progress=args.progress)
    print(recipe_readouts.recipes(comparison))


def main(argv: list[str] | None = None) -> int:
    """Run one command; settings that cannot work exit with a one-line error, no traceback.

    Ctrl-C (SIGINT) and SIGTERM stop a command with one line on stderr saying where it stopped and what the same
    command does next; the exit status is 128 + the signal (130, 143).
    """
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if getattr(args, "config", None):
            args = build_parser(read_file(args.config, TrainConfig, extra=RUN_FLAGS)).parse_args(argv)
        _run(args)
    except _INPUT_ERRORS as err:
        sys.exit(f"{_PROG} {args.command}: error: {err}")
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        line = str(err) if isinstance(err, Interrupted) and str(err) else (
            f"interrupted ({signal.Signals(signum).name}) before it finished; every file it wrote is whole: run the "
            "same command again")
        print(f"{_PROG} {args.command}: {line}", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops a command as Ctrl-C does: the interrupt unwinds it, and atomic writes leave no half file."""
    raise Interrupted("", signum)


if __name__ == "__main__":
    # Print what runs report without a progress bar (vitlab.training.loop.log), as lines.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("vitlab").addHandler(handler)
    logging.getLogger("vitlab").setLevel(logging.INFO)
    sys.exit(main())
