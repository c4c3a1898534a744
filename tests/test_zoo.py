"""Every checkpoint shipped in data/zoo reproduces its recorded accuracy."""
import json

import pytest
from conftest import needs_cifar

import vitlab
from vitlab import models, train

SHIPPED = sorted(p.stem for p in models.ZOO_DIR.glob("*.safetensors"))


def test_shipped_checkpoints_are_small_and_documented():
    for name in SHIPPED:
        assert name in models.ZOO
        assert (models.ZOO_DIR / f"{name}.safetensors").stat().st_size <= 10 * 2**20
        record = json.loads((models.ZOO_DIR / f"{name}.json").read_text())
        assert record["command"].startswith("python -m vitlab train --model " + name)
        assert record["metrics"]["hardware"] and record["metrics"]["wall_seconds"] > 0
        assert (models.ZOO_DIR / f"{name}.metrics.jsonl").is_file()
        assert vitlab.zoo()[name]["test_accuracy"] == record["metrics"]["test_accuracy"]


@needs_cifar
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_recorded_accuracy(name, monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")
    record = json.loads((models.ZOO_DIR / f"{name}.json").read_text())["metrics"]
    accuracy = train.zoo_check_accuracy(vitlab.load_model(name, device="cpu"))
    assert accuracy == pytest.approx(record[f"test_accuracy_{train.ZOO_CHECK_SIZE}"], abs=0.002)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=0.04)  # 1,000 images vs all 10,000


def test_command_for_reproduces_the_config(monkeypatch):
    config = train.TrainConfig(model="resnet_tiny_c10", optimizer="sgd", lr=0.1, flip=False, out="runs/r")
    command = train.command_for(config)
    assert command.startswith("python -m vitlab train --model resnet_tiny_c10 ")
    assert " --optimizer sgd " in command and " --lr 0.1 " in command and " --no-flip " in command
    assert " --epochs 30 " in command  # defaults are spelled out too
    from vitlab import __main__ as cli

    seen = []
    monkeypatch.setattr(cli, "train", lambda c: seen.append(c) or train.TrainResult(None, {}))
    cli.main(command.split()[3:])
    assert seen == [config]
