"""Checkpoints and the metrics log: written atomically, resumed bit-exactly, refused on changed settings."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from vitlab import checkpoints, train
from vitlab.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
    a: int = 1
    b: str = "x"
    c: bool = True


def test_metrics_log_appends_reads_and_trims(tmp_path):
    assert checkpoints.read_metrics(tmp_path) == []
    records = [dict(epoch=e, step=10 * e, loss=1.0 / e) for e in (1, 2, 3)]
    for record in records:
        checkpoints.append_metrics(tmp_path, record)
    assert checkpoints.read_metrics(tmp_path) == records
    checkpoints.trim_metrics(tmp_path, 20)
    assert checkpoints.read_metrics(tmp_path) == records[:2]
    checkpoints.trim_metrics(tmp_path, 0)
    assert checkpoints.read_metrics(tmp_path) == [] and (tmp_path / "metrics.jsonl").read_text() == ""


def test_changes_name_each_differing_setting_and_skip_keys_that_are_no_setting():
    saved = {"a": 2, "b": "x", "out": "/somewhere", "progress": False}  # c predates the checkpoint
    assert checkpoints.changes(saved, _Settings()) == ["a 2 in the checkpoint, 1 now"]
    assert checkpoints.changes(saved, _Settings(a=2, c=False)) == ["c True in the checkpoint, False now"]
    assert checkpoints.changes(dataclasses.asdict(_Settings()), _Settings()) == []


def _model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    model.vitlab_arch = {"note": "toy"}
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def test_checkpoint_roundtrip_restores_weights_optimizer_and_random_streams(tmp_path):
    model, opt = _model_and_optimizer(0)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    torch.rand(7, generator=gen)  # advance the stream: the saved state is not the seed's
    checkpoints.save_checkpoint(tmp_path, step=7, epoch=0.5, wall_seconds=3.0, model=model, optimizer=opt,
                                generator=gen, config=_Settings(), data={"dataset": "toy"})
    expected_gen, expected_torch = torch.rand(3, generator=gen), torch.rand(3)  # what a resumed run must draw next
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (meta["step"], meta["epoch"], meta["wall_seconds"]) == (7, 0.5, 3.0)
    assert meta["config"] == {"a": 1, "b": "x", "c": True} and meta["data"] == {"dataset": "toy"}
    assert meta["architecture"] == {"note": "toy"} and meta["metrics"] == []

    fresh, fresh_opt = _model_and_optimizer(1)
    fresh_gen = torch.Generator().manual_seed(99)
    state = checkpoints.load_checkpoint(tmp_path, _Settings(), fresh)
    assert checkpoints.restore(state, fresh_opt, fresh_gen) == (7, 3.0)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    saved, restored = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == restored.keys() and all(
        torch.equal(saved[k][name], restored[k][name]) for k in saved for name in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(torch.rand(3, generator=fresh_gen), expected_gen)
    assert torch.equal(torch.rand(3), expected_torch)


def test_a_new_checkpoint_replaces_the_old_one_and_other_settings_are_refused(tmp_path):
    model, opt = _model_and_optimizer(0)
    for step in (7, 9):
        checkpoints.save_checkpoint(tmp_path, step=step, epoch=1.0, wall_seconds=1.0, model=model, optimizer=opt,
                                    generator=torch.Generator(), config=_Settings(), data={})
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-00000009.safetensors", "checkpoint-00000009.state.pt"]
    assert checkpoints.load_checkpoint(tmp_path / "elsewhere", _Settings(), model) is None
    with pytest.raises(ConfigError, match="other settings \\(a 1 in the checkpoint, 2 now\\)"):
        checkpoints.load_checkpoint(tmp_path, _Settings(a=2), model)


def test_train_still_offers_the_run_file_helpers():
    """Notebooks and widgets call train.read_metrics; sweep and benchmarks import these from train."""
    assert train.read_metrics is checkpoints.read_metrics
    assert train.code_version is checkpoints.code_version and train.hardware is checkpoints.hardware


def _cli_train(out, env_root, extra=()):
    env = dict(os.environ, VITLAB_DATA=str(env_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vitlab", "train", "--model", "vit_tiny_c10", "--epochs", "3", "--batch-size", "32",
           "--warmup-epochs", "0.5", "--checkpoint-every", "3", "--no-progress", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _checkpoint_step(out):
    try:
        return json.loads((out / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_weights(tmp_path, fake_cifar):
    full = _cli_train(tmp_path / "full", fake_cifar)
    assert full.wait(timeout=300) == 0, full.stdout.read()
    killed = _cli_train(tmp_path / "killed", fake_cifar)
    deadline = time.monotonic() + 120
    while _checkpoint_step(tmp_path / "killed") < 24 and time.monotonic() < deadline:  # mid-epoch 2 of 20-step epochs
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run ended before it could be killed"
    resumed = _cli_train(tmp_path / "killed", fake_cifar)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resuming at step" in output
    a = safetensors.torch.load_file(tmp_path / "full" / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in checkpoints.read_metrics(tmp_path / "killed")] == [1, 2, 3]


def test_resume_refuses_a_changed_config_naming_every_change(tmp_path, fake_cifar):
    config = train.TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    train.train(config, tmp_path / "run", progress=False)
    changed = dataclasses.replace(config, lr=0.5, flip=False)
    with pytest.raises(ValueError, match="other settings \\(lr 0.001 in the checkpoint, 0.5 now; "
                                         "flip True in the checkpoint, False now\\)"):
        train.train(changed, tmp_path / "run", progress=False)
    # Where the run lives and how it reports are not settings: another folder, a bar, or
    # checkpoints every step do not stop it from resuming.
    again = train.train(config, tmp_path / "run", progress=True, checkpoint_every=1)
    assert again.record["step"] == 10


def test_checkpoints_of_earlier_versions_still_resume(tmp_path, fake_cifar, capsys):
    """Before runtime knobs left TrainConfig, checkpoint.json recorded out, progress and checkpoint_every."""
    config = train.TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50)

    def stop_in_epoch_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(config, tmp_path / "run", progress=False, on_epoch=stop_in_epoch_two)
    pointer = tmp_path / "run" / "checkpoint.json"
    meta = json.loads(pointer.read_text())
    meta["config"].update(out=str(tmp_path / "run"), progress=False, checkpoint_every=0)
    del meta["config"]["compile"]  # a setting added later counts as its default
    pointer.write_text(json.dumps(meta))
    result = train.train(config, tmp_path / "run", progress=True)
    assert "resuming at step 10" in capsys.readouterr().out
    assert [r["epoch"] for r in checkpoints.read_metrics(tmp_path / "run")] == [1, 2] and result.record["step"] == 20
