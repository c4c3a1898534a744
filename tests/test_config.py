import argparse
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from vitlab import __main__ as cli
from vitlab.training import config
from vitlab.training import sweep
from vitlab.training.config import TrainConfig
from vitlab.training.loop import TrainResult
from vitlab.training import zoo
from vitlab.training.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Toy:
    """A config with one field of every kind.

    Attributes:
        name: a plain string.
        size: may be None
            (a second line of help).
        rate: a float.
        sizes: several ints.
        mode: one of two.
        fast: a switch.
    """

    name: str = "a"
    size: int | None = 4
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    mode: Literal["x", "y"] = "x"
    fast: bool = False


def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    config.add_flags(parser, cls)
    return config.from_args(cls, parser.parse_args(argv))


def test_flags_map_every_kind_of_field():
    got = _parse(Toy, ["--name", "b c", "--size", "none", "--rate", "0.25", "--sizes", "5", "6", "7",
                       "--mode", "y", "--fast"])
    assert got == Toy(name="b c", size=None, rate=0.25, sizes=(5, 6, 7), mode="y", fast=True)
    assert _parse(Toy, []) == Toy()
    assert _parse(Toy, ["--no-fast", "--size", "9"]) == Toy(fast=False, size=9)


@pytest.mark.parametrize("argv", [["--mode", "z"], ["--size", "x"], ["--sizes"]])
def test_bad_flags_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(Toy, argv)
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("value", [Toy(), Toy(name="two words", size=None, sizes=(3,), mode="y", fast=True),
                                   Toy(rate=1e-7, size=0)])
def test_command_line_round_trips(value):
    command = config.command_line("prog", value)
    assert command.startswith("prog --name ")
    import shlex

    assert _parse(Toy, shlex.split(command)[1:]) == value


def test_command_line_spells_out_defaults_and_leaves_out_default_nones():
    command = config.command_line("python -m vitlab train", TrainConfig(model="resnet_tiny_c10",
                                                                              optimizer="sgd", lr=0.1, flip=False))
    assert command.startswith("python -m vitlab train --model resnet_tiny_c10 ")
    assert " --optimizer sgd " in command and " --lr 0.1 " in command and " --no-flip " in command
    assert " --epochs 30 " in command  # defaults are spelled out too
    assert "--init" not in command and "--subset-size" not in command  # None is their default


def test_help_comes_from_the_docstring():
    assert config.field_help(Toy)["size"] == "may be None (a second line of help)."
    assert set(config.field_help(TrainConfig)) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(config.field_help(sweep.SweepConfig)) == {f.name for f in dataclasses.fields(sweep.SweepConfig)}


def test_literal_fields_are_checked_in_one_place():
    with pytest.raises(ConfigError, match="mode must be one of 'x', 'y'; got 'z'"):
        config.check_choices(Toy(mode="z"))
    with pytest.raises(ConfigError, match="optimizer must be one of 'adamw', 'sgd'; got 'lamb'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ConfigError, match="precision must be one of 'auto', 'bf16', 'fp32'; got 'fp8'"):
        sweep.SweepConfig(precision="fp8")
    assert config.from_args(Toy, {"sizes": [3, 4], "unrelated": 1}) == Toy(sizes=(3, 4))


# --- the command line --------------------------------------------------------------


def _capture_train(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "train", lambda c, out, **kw: seen.append((c, out, kw)) or TrainResult(None, {}))
    return seen


def test_train_flags_map_onto_the_config(monkeypatch):
    seen = _capture_train(monkeypatch)
    cli.main(["train", "--model", "vit_small_c10", "--subset-size", "1000", "--no-flip", "--lr", "0.002",
              "--checkpoint-every", "5", "--no-progress", "--no-inside"])
    assert seen == [(TrainConfig(model="vit_small_c10", subset_size=1000, flip=False, lr=0.002),
                     "runs/vit_small_c10", dict(progress=False, checkpoint_every=5, inside=False))]


@pytest.mark.parametrize("name", list(zoo.ENTRIES))
def test_the_recorded_train_command_rebuilds_the_config(monkeypatch, name):
    seen = _capture_train(monkeypatch)
    settings = zoo.train_config(name, subset_size=500, img_size=48, flip=False)
    command = config.command_line("python -m vitlab train", settings) + " --out runs/x"
    cli.main(command.split()[3:])
    assert seen[0][:2] == (settings, "runs/x")


def test_the_recorded_sweep_command_rebuilds_the_config(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "sweep", lambda c, progress: seen.append(c) or [])
    cli.main(["sweep", "--models", "vit_micro_c10", "--sizes", "100", "200", "--seeds", "3",
              "--min-samples", "400", "--results", str(tmp_path / "r")])
    assert seen[0] == sweep.SweepConfig(models=("vit_micro_c10",), sizes=(100, 200), seeds=(3,), min_samples=400,
                                        results=str(tmp_path / "r"))
    assert "--fewshot " not in seen[0].command()  # an empty list is left out, not written as a bare flag
    again = dataclasses.replace(seen[0], fewshot=(1, 5), precision="fp32")
    cli.main(again.command().split()[3:])
    assert seen[1] == again


def test_committed_commands_still_parse_and_are_written_the_same(monkeypatch):
    """The commands recorded in data/results and data/zoo by earlier versions."""
    seen = []
    monkeypatch.setattr(cli, "sweep", lambda c, progress: seen.append(c) or [])
    commands = json.loads((ROOT / "data/results/vit_vs_resnet.json").read_text())["commands"]
    for command in commands:
        cli.main(command.split()[3:])
        cli.main(seen[-1].command().split()[3:])
        assert seen[-1] == seen[-2]
        # Written as before, with flags added since then spelled out.
        assert seen[-1].command() == command or set(command.split()) < set(seen[-1].command().split())
    assert seen[-1].command() == commands[-1]
    trained = _capture_train(monkeypatch)
    for name in [n for n, e in zoo.ENTRIES.items() if e.shipped]:
        command = json.loads((ROOT / "data/zoo" / f"{name}.json").read_text())["command"]
        cli.main(command.split()[3:])
        settings, out, _ = trained[-1]
        assert settings == zoo.train_config(name)  # the recipe is the one the checkpoint was trained with
        written = f"{config.command_line('python -m vitlab train', settings)} --out {out}"
        assert written == command or set(command.split()) < set(written.split())  # later flags spelled out


def test_the_cadence_flags_map_onto_train_and_sweep_and_are_written_only_when_set(monkeypatch, tmp_path, capsys):
    seen = _capture_train(monkeypatch)
    with pytest.raises(SystemExit):
        cli.main(["train", "--eval-every", "2.5"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("argument --eval-every: invalid int value: '2.5'")
    cli.main(["train", "--model", "vit_micro_c10", "--eval-every", "12"])
    assert seen[0][0] == TrainConfig(model="vit_micro_c10", eval_every=12)
    assert " --eval-every 12 " in config.command_line("python -m vitlab train", seen[0][0]) + " "
    # At its default the flag is left out, so commands recorded before it existed are written as they were.
    assert "--eval-every" not in config.command_line("python -m vitlab train", TrainConfig())
    swept = []
    monkeypatch.setattr(cli, "sweep", lambda c, progress: swept.append(c) or [])
    cli.main(["sweep", "--sizes", "1000", "--warmup-epochs", "2", "--eval-every", "12", "--results", str(tmp_path)])
    assert swept[0] == sweep.SweepConfig(sizes=(1000,), warmup_epochs=2.0, eval_every=12, results=str(tmp_path))
    command = swept[0].command()
    assert "--warmup-fraction" not in command and " --warmup-epochs 2.0 " in command
    cli.main(command.split()[3:])
    assert swept[1] == swept[0]


def test_settings_saved_before_the_cadence_existed_read_as_every_epoch(tmp_path):
    saved = dataclasses.asdict(TrainConfig(model="vit_micro_c10", epochs=4))
    del saved["eval_every"]  # a sidecar or checkpoint of an earlier version
    assert config.from_args(TrainConfig, saved).eval_every == 1
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(saved))
    assert config.from_args(TrainConfig, config.read_file(path, TrainConfig)) == TrainConfig(model="vit_micro_c10",
                                                                                          epochs=4)


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"model": "vit_small_c10", "lr": 0.5, "flip": false, "out": "runs/from-file"}'),
    (".toml", 'model = "vit_small_c10"\nlr = 0.5\nflip = false\nout = "runs/from-file"\n'),
])
def test_config_file_sets_defaults_and_flags_win(monkeypatch, tmp_path, suffix, text):
    seen = _capture_train(monkeypatch)
    path = tmp_path / f"settings{suffix}"
    path.write_text(text)
    cli.main(["train", "--config", str(path), "--lr", "0.25"])
    assert seen[0][:2] == (TrainConfig(model="vit_small_c10", lr=0.25, flip=False), "runs/from-file")


def test_a_settings_file_builds_the_config_its_flags_do(monkeypatch, tmp_path):
    seen = _capture_train(monkeypatch)
    path = tmp_path / "settings.toml"
    path.write_text("lr = 1\nwarmup_epochs = 0\nepochs = 3\ncheckpoint_every = 4\n")
    cli.main(["train", "--config", str(path)])
    cli.main(["train", "--lr", "1", "--warmup-epochs", "0", "--epochs", "3", "--checkpoint-every", "4"])
    (from_file, _, file_kw), (from_flags, _, flag_kw) = seen
    assert (from_file, file_kw) == (from_flags, flag_kw)
    assert [type(getattr(from_file, name)) for name in ("lr", "warmup_epochs", "epochs")] == [float, float, int]
    assert config.command_line("p", from_file) == config.command_line("p", from_flags)


@pytest.mark.parametrize("value, problem", [
    (3, None), (3.0, "--n 3.0: must be a whole number, not a float"),
    (True, "--n True: must be a whole number, not a bool"),
    ("3", "--n '3': must be a whole number, not a str"), (None, "--n None: must be a whole number, not none"),
])
def test_value_problem_takes_only_real_ints_for_int_fields(value, problem):
    assert config.value_problem("n", value, int) == problem
    assert config.value_problem("n", value, int | None) == (None if value is None else problem)


@pytest.mark.parametrize("value, problem", [
    (0.5, None), (2, None), (float("inf"), "--rate inf: must be a finite number"),
    (float("nan"), "--rate nan: must be a finite number"),
    (False, "--rate False: must be a number, not a bool"),
])
def test_value_problem_takes_finite_numbers_for_float_fields(value, problem):
    assert config.value_problem("rate", value, float) == problem


def test_value_problem_names_the_bad_item_of_a_list():
    assert (config.value_problem("sizes", (1, 2.5), tuple[int, ...])
            == "--sizes 2.5: must be a whole number, not a float")
    assert config.value_problem("sizes", 5, tuple[int, ...]) == "--sizes 5: must be a list, not an int"


def test_config_file_with_unknown_keys_is_refused(monkeypatch, tmp_path):
    _capture_train(monkeypatch)
    path = tmp_path / "settings.json"
    path.write_text('{"lr": 0.5, "learning_rate": 0.1}')
    with pytest.raises(SystemExit, match=r"unknown settings \['learning_rate'\]"):
        cli.main(["train", "--config", str(path)])


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "vit_huge_c10"], "unknown zoo model 'vit_huge_c10'"),
    (["train", "--optimizer", "lamb"], "invalid choice: 'lamb'"),
    (["sweep", "--models", "vit_huge_c10"], "unknown zoo models"),
    (["train", "--lr", "-1"], "--lr -1.0: must be 0 or more"),
    (["train", "--img-size", "30"], "--img-size 30: must be a positive multiple of 4"),
    (["train", "--subset-size", "0"], "--subset-size 0: must be 1..50000"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, monkeypatch, capsys, argv, message):
    """In this process (``main`` exits as the command would); one row also runs as its own process, below."""
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "nothing"))
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--out", str(tmp_path / "out")])
    code, stderr = exited.value.code, capsys.readouterr().err
    said = code if isinstance(code, str) else stderr  # sys.exit(line) prints the line; argparse prints, then exits 2
    assert code not in (0, None) and "Traceback" not in said + stderr
    assert message in said.splitlines()[-1]
    assert not (tmp_path / "out" / "checkpoint.json").exists()


def test_bad_input_is_one_line_from_the_command_line_process(tmp_path):
    env = dict(os.environ, VITLAB_DATA=str(tmp_path / "nothing"))
    done = subprocess.run([sys.executable, "-m", "vitlab", "train", "--lr", "-1", "--out", str(tmp_path / "out")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("python -m vitlab train: error: --lr -1.0: must be 0 or more")
    assert not (tmp_path / "out" / "checkpoint.json").exists()
