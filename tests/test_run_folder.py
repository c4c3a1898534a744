"""The run folder: checkpoints and the metrics log (written atomically, resumed bit-exactly, refused on changed
settings), the inside-view files and the finished run's model and sidecar."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from vitlab import data, models
from vitlab.training import inside, run_folder
from vitlab.training import config
from vitlab.training import loop
from vitlab.__main__ import main
from vitlab.training.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
    a: int = 1
    b: str = "x"
    c: bool = True


def test_metrics_log_appends_reads_and_trims(tmp_path):
    assert run_folder.read_metrics(tmp_path) == []
    records = [dict(epoch=e, step=10 * e, loss=1.0 / e) for e in (1, 2, 3)]
    for record in records:
        run_folder.append_metrics(tmp_path, record)
    assert run_folder.read_metrics(tmp_path) == records
    run_folder.trim_metrics(tmp_path, 20)
    assert run_folder.read_metrics(tmp_path) == records[:2]
    run_folder.trim_metrics(tmp_path, 0)
    assert run_folder.read_metrics(tmp_path) == [] and (tmp_path / "metrics.jsonl").read_text() == ""


def test_changes_name_each_differing_setting_and_skip_keys_that_are_no_setting():
    saved = {"a": 2, "b": "x", "out": "/somewhere", "progress": False}  # c predates the checkpoint
    assert run_folder.changes(saved, _Settings()) == ["a 2 in the checkpoint, 1 now"]
    assert run_folder.changes(saved, _Settings(a=2, c=False)) == ["c True in the checkpoint, False now"]
    assert run_folder.changes(dataclasses.asdict(_Settings()), _Settings()) == []


def test_the_cadence_is_no_change_of_settings():
    saved = dataclasses.asdict(TrainConfig())
    del saved["eval_every"]  # a checkpoint or sidecar of an earlier version
    assert run_folder.changes(saved, TrainConfig()) == run_folder.changes(saved, TrainConfig(eval_every=5)) == []
    assert run_folder.changes(saved, TrainConfig(epochs=5, eval_every=5)) == ["epochs 30 in the checkpoint, 5 now"]


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
    run_folder.save_checkpoint(tmp_path, step=7, epoch=0.5, wall_seconds=3.0, model=model, optimizer=opt,
                                generator=gen, config=_Settings(), data={"dataset": "toy"})
    expected_gen, expected_torch = torch.rand(3, generator=gen), torch.rand(3)  # what a resumed run must draw next
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (meta["step"], meta["epoch"], meta["wall_seconds"]) == (7, 0.5, 3.0)
    assert meta["config"] == {"a": 1, "b": "x", "c": True} and meta["data"] == {"dataset": "toy"}
    assert meta["architecture"] == {"note": "toy"} and meta["metrics"] == []
    assert set(meta["sha256"]) == {"weights", "state"}

    fresh, fresh_opt = _model_and_optimizer(1)
    fresh_gen = torch.Generator().manual_seed(99)
    state = run_folder.load_checkpoint(tmp_path, _Settings(), fresh)
    assert run_folder.restore(state, fresh_opt, fresh_gen) == (7, 3.0)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    saved, restored = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == restored.keys() and all(
        torch.equal(saved[k][name], restored[k][name]) for k in saved for name in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(torch.rand(3, generator=fresh_gen), expected_gen)
    assert torch.equal(torch.rand(3), expected_torch)


def _save(out, step, seed=0, **kw):
    """A toy checkpoint at ``step`` whose weights depend on ``seed``; returns those weights."""
    model, opt = _model_and_optimizer(seed)
    run_folder.save_checkpoint(out, step=step, epoch=1.0, wall_seconds=float(step), model=model, optimizer=opt,
                                generator=torch.Generator(), config=kw.pop("config", _Settings()), data={}, **kw)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_last_two_checkpoints_are_kept_and_only_files_vitlab_wrote_are_deleted(tmp_path):
    foreign = ["checkpoint-notes.txt", "checkpoint-best.pt", "checkpoint-1.safetensors", "checkpoint-00000003.ckpt"]
    for name in foreign:
        (tmp_path / name).write_text("mine")
    leftover = tmp_path / ".checkpoint-00000005.safetensors.k3j_x9a1.tmp"  # an atomic write a kill interrupted
    leftover.write_text("half")
    for step in (7, 9, 11):
        _save(tmp_path, step)
    ours = [f"checkpoint-{s:08d}.{ext}" for s in (9, 11) for ext in ("json", "safetensors", "state.pt")]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == sorted(ours + foreign)
    assert all((tmp_path / name).read_text() == "mine" for name in foreign) and not leftover.exists()


def test_each_checkpoint_records_the_sha256_of_its_files(tmp_path):
    _save(tmp_path, 7)
    record = json.loads((tmp_path / "checkpoint-00000007.json").read_text())
    assert record == json.loads((tmp_path / "checkpoint.json").read_text())
    for key, name in [("weights", "checkpoint-00000007.safetensors"), ("state", "checkpoint-00000007.state.pt")]:
        assert record[key] == name
        assert record["sha256"][key] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_other_settings_are_refused_naming_each_change(tmp_path):
    model, _ = _model_and_optimizer(0)
    _save(tmp_path, 7)
    assert run_folder.load_checkpoint(tmp_path / "elsewhere", _Settings(), model) is None
    with pytest.raises(ConfigError, match="other settings \\(a 1 in the checkpoint, 2 now\\)"):
        run_folder.load_checkpoint(tmp_path, _Settings(a=2), model)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero(path):
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # same size, same header: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, culprit, resumed", [
    (lambda d: _truncate(d / "checkpoint-00000009.safetensors"), "checkpoint-00000009.safetensors", 7),
    (lambda d: _truncate(d / "checkpoint-00000009.state.pt"), "checkpoint-00000009.state.pt", 7),
    (lambda d: _zero(d / "checkpoint-00000009.safetensors"), "checkpoint-00000009.safetensors", 7),
    (lambda d: (d / "checkpoint-00000009.state.pt").unlink(), "checkpoint-00000009.state.pt", 7),
    (lambda d: (d / "checkpoint-00000009.json").write_text('{"step": 9, "wei'), "checkpoint-00000009.json", 9),
    (lambda d: (d / "checkpoint.json").write_text("not json"), "checkpoint.json", 9),
])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one_with_a_warning(tmp_path, damage, culprit, resumed):
    saved = {7: _save(tmp_path, 7, seed=7), 9: _save(tmp_path, 9, seed=9)}
    damage(tmp_path)
    model, _ = _model_and_optimizer(0)
    with pytest.warns(UserWarning, match=f"{culprit}.*resumed from .*\\(step {resumed}\\)"):
        state = run_folder.load_checkpoint(tmp_path, _Settings(), model)
    assert state["step"] == resumed and state["wall_seconds"] == float(resumed)
    assert all(torch.equal(v, saved[resumed][k]) for k, v in model.state_dict().items())


def test_no_readable_checkpoint_is_one_line_naming_the_files_and_what_to_do(tmp_path):
    for step in (7, 9):
        _save(tmp_path, step)
        _truncate(tmp_path / f"checkpoint-{step:08d}.safetensors")
    model, _ = _model_and_optimizer(0)
    with pytest.raises(run_folder.RunFolderError) as info:
        run_folder.load_checkpoint(tmp_path, _Settings(), model)
    message = str(info.value)
    assert "\n" not in message
    assert "checkpoint-00000007.safetensors" in message and "checkpoint-00000009.safetensors" in message
    assert "to start the run over, or choose another --out" in message


def test_a_record_ahead_of_the_pointer_and_files_without_a_record(tmp_path):
    """Killed between a checkpoint's record and the pointer, or before its record: both are normal crashes."""
    model, _ = _model_and_optimizer(0)
    (tmp_path / "checkpoint-00000003.safetensors").write_bytes(b"")  # the first checkpoint, cut short
    assert run_folder.load_checkpoint(tmp_path, _Settings(), model) is None
    _save(tmp_path, 7)
    newer = _save(tmp_path, 9, seed=9)
    pointer = json.loads((tmp_path / "checkpoint-00000007.json").read_text())
    (tmp_path / "checkpoint.json").write_text(json.dumps(pointer))  # as if the pointer never moved to 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_folder.load_checkpoint(tmp_path, _Settings(), model)["step"] == 9
    assert all(torch.equal(v, newer[k]) for k, v in model.state_dict().items())


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    records = [dict(epoch=e, step=10 * e) for e in (1, 2)]
    for record in records:
        run_folder.append_metrics(tmp_path, record)
    log = tmp_path / "metrics.jsonl"
    log.write_text(log.read_text() + '{"epoch": 3, "st')  # killed while appending
    with pytest.warns(UserWarning, match=f"{log}: dropped its last line"):
        assert run_folder.read_metrics(tmp_path) == records
    with pytest.warns(UserWarning):
        run_folder.trim_metrics(tmp_path, 20)
    assert log.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')  # damage inside the log is not a crash: refused
    with pytest.raises(run_folder.RunFolderError, match="metrics.jsonl line 2 is not a JSON record"):
        run_folder.read_metrics(tmp_path)


_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_folder_in_use_by_another_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / run_folder.LOCK)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(run_folder.RunFolderError, match=f"in use: another vitlab process \\(PID {holder.pid},"):
            with run_folder.lock_run(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_folder.lock_run(tmp_path):  # the kernel released the killed holder's lock
        assert (tmp_path / run_folder.LOCK).read_text() == f"{os.getpid()}\n"
        with pytest.raises(run_folder.RunFolderError, match=f"PID {os.getpid()}"):  # a second open is refused too
            with run_folder.lock_run(tmp_path):
                pass
    assert (tmp_path / run_folder.LOCK).exists()  # never deleted: another process may be opening it


def _cli_train(out, env_root, extra=()):
    env = dict(os.environ, VITLAB_DATA=str(env_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vitlab", "train", "--model", "vit_micro_c10", "--epochs", "3", "--batch-size", "32",
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
    assert [r["epoch"] for r in run_folder.read_metrics(tmp_path / "killed")] == [1, 2, 3]


def test_a_changed_config_is_refused_naming_every_change(tmp_path, fake_cifar):
    config = TrainConfig(model="vit_micro_c10", epochs=1, batch_size=64, eval_size=50)
    loop.train(config, tmp_path / "run", progress=False)
    changed = dataclasses.replace(config, lr=0.5, flip=False)
    with pytest.raises(ValueError, match="finished run with other settings \\(lr 0.001 in the finished run, 0.5 now; "
                                         "flip True in the finished run, False now\\)"):
        loop.train(changed, tmp_path / "run", progress=False)
    # Where the run lives and how it reports are not settings: another spelling of the
    # folder, a bar, or checkpoints every step give the finished run back.
    again = loop.train(config, tmp_path / "run" / ".." / "run", progress=True, checkpoint_every=1)
    assert again.record["step"] == 10


def _stop_in_epoch_two(record):
    if record["epoch"] == 2:
        raise KeyboardInterrupt


def test_checkpoints_of_earlier_versions_still_resume(tmp_path, fake_cifar, capsys):
    """Earlier versions wrote checkpoint.json alone, without checksums, with out, progress and checkpoint_every."""
    config = TrainConfig(model="vit_micro_c10", epochs=2, batch_size=64, eval_size=50)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, tmp_path / "run", progress=False, on_epoch=_stop_in_epoch_two)
    (tmp_path / "run" / "checkpoint-00000010.json").unlink()
    pointer = tmp_path / "run" / "checkpoint.json"
    meta = json.loads(pointer.read_text())
    meta["config"].update(out=str(tmp_path / "run"), progress=False, checkpoint_every=0)
    del meta["config"]["compile"], meta["sha256"]  # a setting added later counts as its default
    pointer.write_text(json.dumps(meta))
    result = loop.train(config, tmp_path / "run", progress=True)
    assert "resuming at step 10" in capsys.readouterr().out
    assert [r["epoch"] for r in run_folder.read_metrics(tmp_path / "run")] == [1, 2] and result.record["step"] == 20


def test_resume_does_not_depend_on_how_out_is_spelled(tmp_path, fake_cifar, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--model", "vit_micro_c10", "--epochs", "2", "--batch-size", "64", "--eval-size", "50"]
    with pytest.raises(KeyboardInterrupt):
        loop.train(config.from_args(TrainConfig, dict(model="vit_micro_c10", epochs=2, batch_size=64,
                                                               eval_size=50)), "ok", on_epoch=_stop_in_epoch_two)
    capsys.readouterr()
    main(["train", *flags, "--out", "./ok/"])
    assert "resuming at step 10" in capsys.readouterr().out
    weights = (tmp_path / "ok" / "model.safetensors").read_bytes()
    main(["train", *flags, "--out", str(tmp_path / "ok")])
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="lr 0.001 in the finished run, 0.5 now"):
        main(["train", *flags, "--lr", "0.5", "--out", "ok"])
    assert (tmp_path / "ok" / "model.safetensors").read_bytes() == weights


# --- inside views and the finished run's files ----------------------------------------------


def test_a_torn_inside_line_is_dropped_and_a_later_record_replaces_it(tmp_path):
    torch.manual_seed(0)
    micro_vit = models.build_model({"zoo": "vit_micro_c10"}).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for epoch in (1, 2):
        run_folder.record_inside(tmp_path, inside.inside_view(micro_vit, images, epoch, 10 * epoch),
                                 inside.inside_tensors(micro_vit, epoch))
    line = inside.inside_view(micro_vit, images, 3, 30).to_json()
    with open(tmp_path / run_folder.INSIDE_LOG, "a") as f:
        f.write(line[: len(line) // 2])
    with pytest.warns(UserWarning, match="dropped its last line"):
        assert [v.epoch for v in run_folder.read_inside(tmp_path)] == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_folder.record_inside(tmp_path, inside.inside_view(micro_vit, images, 2, 20),
                                 inside.inside_tensors(micro_vit, 2))
    assert [v.epoch for v in run_folder.read_inside(tmp_path)] == [1, 2]  # epoch 2 redone, not doubled
    assert sorted(run_folder.read_inside_tensors(tmp_path)) == ["filters.1", "filters.2", "pos_embed.1", "pos_embed.2"]
    run_folder.trim_inside(tmp_path, 10)
    assert [v.epoch for v in run_folder.read_inside(tmp_path)] == [1]
    assert sorted(run_folder.read_inside_tensors(tmp_path)) == ["filters.1", "pos_embed.1"]


def test_the_final_model_and_its_sidecar_read_back_as_the_finished_run(tmp_path):
    config = TrainConfig(model="vit_micro_c10", epochs=3, lr=0.002)
    model = models.build_model({"zoo": "vit_micro_c10"})
    metrics = {"epoch": 3, "test_accuracy": 0.25}
    data = {"dataset": "cifar10", "train_images": 640, "subset_seed": 0, "test_images": 100}
    assert run_folder.finished_run(tmp_path, config) is None  # nothing finished yet
    path = run_folder.save_final(tmp_path, model, config=config, metrics=metrics, data=data)
    assert path == tmp_path / run_folder.MODEL and (tmp_path / run_folder.SIDECAR).is_file()
    stored = json.loads((tmp_path / run_folder.SIDECAR).read_text())  # the file itself, read without vitlab
    assert stored["config"] == dataclasses.asdict(config) and stored["metrics"] == metrics and stored["data"] == data
    assert stored["code_version"] == run_folder.code_version() and stored["architecture"] == model.vitlab_arch
    record = run_folder.finished_run(tmp_path, config)
    assert (record.config, record.metrics, record.data) == (stored["config"], metrics, data)
    assert record == run_folder.run_sidecar(tmp_path)
    with pytest.raises(ConfigError, match="other settings \\(lr 0.002 in the finished run, 0.001 now\\)"):
        run_folder.finished_run(tmp_path, dataclasses.replace(config, lr=0.001))


def test_a_deleted_metrics_log_is_refused_in_one_line_not_resumed_without_its_epochs(tmp_path):
    """A run killed after a checkpoint whose metrics log was then deleted would end with no record of its epochs
    (a sweep then failed with KeyError: 'step' on every rerun): one line names the log and what to delete."""
    run_folder.append_metrics(tmp_path, dict(epoch=1, step=5, test_accuracy=0.1))
    _save(tmp_path, 5)
    (tmp_path / run_folder.METRICS_LOG).unlink()
    with pytest.raises(run_folder.RunFolderError) as err:
        run_folder.load_checkpoint(tmp_path, _Settings(), _model_and_optimizer(0)[0])
    assert "\n" not in str(err.value) and str(err.value) == (
        f"{tmp_path / 'metrics.jsonl'} lacks the line of step 5 that checkpoint.json was taken after (was it "
        "deleted?); put it back, or delete checkpoint-00000005.json, checkpoint-00000005.safetensors, "
        "checkpoint-00000005.state.pt, checkpoint.json to start the run over")
    (tmp_path / run_folder.METRICS_LOG).write_text(json.dumps(dict(epoch=1, loss=2.0)) + "\n")  # a line without step
    with pytest.raises(run_folder.RunFolderError, match="metrics.jsonl line 1 has no step; delete that line"):
        run_folder.trim_metrics(tmp_path, 5)


def test_a_deleted_inside_log_is_refused_naming_both_files_and_its_tensors_kept(tmp_path):
    torch.manual_seed(0)
    micro_vit = models.build_model({"zoo": "vit_micro_c10"}).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for epoch in (1, 2):
        run_folder.record_inside(tmp_path, inside.inside_view(micro_vit, images, epoch, 10 * epoch),
                                 inside.inside_tensors(micro_vit, epoch))
    (tmp_path / run_folder.INSIDE_LOG).unlink()
    tensors = hashlib.sha256((tmp_path / run_folder.INSIDE_TENSORS).read_bytes()).hexdigest()
    message = (f"{tmp_path / 'inside.jsonl'} and {tmp_path / 'inside.safetensors'} disagree: epochs [1, 2] are in "
               "only one of them")
    for write in (lambda: run_folder.trim_inside(tmp_path, 20),
                  lambda: run_folder.record_inside(tmp_path, inside.inside_view(micro_vit, images, 3, 30),
                                                   inside.inside_tensors(micro_vit, 3))):
        with pytest.raises(run_folder.RunFolderError) as err:
            write()
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
        assert hashlib.sha256((tmp_path / run_folder.INSIDE_TENSORS).read_bytes()).hexdigest() == tensors
        assert not (tmp_path / run_folder.INSIDE_LOG).exists()


# --- what a resumed run says about changed code or data (issue 28, item 12) ------------------------------


def _stopped_mid_epoch(out, monkeypatch, config):
    """Train ``config`` into ``out`` and stop it right after its mid-epoch checkpoint at step 3."""
    save = loop.save_checkpoint

    def save_then_stop(folder, **kw):
        save(folder, **kw)
        if kw["step"] == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            loop.train(config, out, progress=False, checkpoint_every=3, inside=False)


def _edit_checkpoint(out, change):
    for path in (out / "checkpoint.json", out / "checkpoint-00000003.json"):
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))


def test_a_resume_warns_of_other_code_and_the_sidecar_lists_every_version(tmp_path, fake_cifar, monkeypatch):
    config = TrainConfig(model="vit_micro_c10", subset_size=320, epochs=1, batch_size=64, eval_size=50)
    out = tmp_path / "run"
    _stopped_mid_epoch(out, monkeypatch, config)
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["code_versions"] == [run_folder.code_version()] and len(record["data"]["train_sha256"]) == 64
    _edit_checkpoint(out, lambda r: r.update(code_version="0000000", code_versions=["1111111", "0000000"]))
    with pytest.warns(UserWarning) as caught:
        loop.train(config, out, progress=False, checkpoint_every=3, inside=False)
    lines = [str(w.message) for w in caught if "resuming a run" in str(w.message)]
    assert lines == [f"{out}: resuming a run checkpointed by code version 0000000 with version "
                     f"{run_folder.code_version()}; its sidecar will list every version (code_versions)"]
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["code_versions"] == ["1111111", "0000000", run_folder.code_version()]
    assert sidecar["code_version"] == run_folder.code_version()  # as it was: the last
    assert sidecar["data"]["train_sha256"] == record["data"]["train_sha256"]


def test_a_resume_warns_when_the_training_data_changed(tmp_path, fake_cifar, monkeypatch):
    config = TrainConfig(model="vit_micro_c10", subset_size=320, epochs=1, batch_size=64, eval_size=50)
    out = tmp_path / "run"
    _stopped_mid_epoch(out, monkeypatch, config)
    _edit_checkpoint(out, lambda r: r["data"].update(train_sha256="ab" * 32))
    with pytest.warns(UserWarning) as caught:
        loop.train(config, out, progress=False, checkpoint_every=3, inside=False)
    lines = [str(w.message) for w in caught if "resuming a run" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"{out}: resuming a run on other training data (content sha256 abababababab... in the "
                               "checkpoint, ")
    assert not [w for w in caught if "code version" in str(w.message)]  # the same code: no word of it


def test_the_content_hash_of_the_data_tells_any_changed_byte_or_order():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(6)
    digest = data.content_sha256(images, labels)
    assert digest == data.content_sha256(images.clone(), labels.clone()) and len(digest) == 64
    changed = images.clone()
    changed[5, 2, 31, 31] ^= 1
    assert len({digest, data.content_sha256(changed, labels), data.content_sha256(images, labels.flip(0)),
                data.content_sha256(images[:5], labels[:5])}) == 4


# --- where a run may be written (issue 28, item 16) ----------------------------------------------


@pytest.mark.parametrize("inside_zoo", [False, True])
def test_out_in_the_zoo_is_refused_before_any_write(tmp_path, monkeypatch, inside_zoo):
    """Checkpoints written into data/zoo would become zoo names: only publish writes there."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "vit_micro_c10.safetensors").write_bytes(b"published weights")
    monkeypatch.setattr(models.loading, "ZOO_DIR", zoo)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "no-data"))  # refused before the data: none is needed
    monkeypatch.setattr(data.files, "_download_cifar10", lambda root: pytest.fail("the refusal came after the data"))
    out = zoo / "runs" / "a" if inside_zoo else tmp_path / "." / "zoo"
    with pytest.raises(SystemExit) as err:
        main(["train", "--model", "vit_micro_c10", "--out", str(out)])
    message = str(err.value.code)
    assert "\n" not in message and f"--out {out} is in the zoo folder {zoo}, which only publish writes" in message
    assert sorted(p.name for p in zoo.rglob("*")) == ["vit_micro_c10.safetensors"]
