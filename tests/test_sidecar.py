"""The sidecar's one reader and writer: round trips, committed files read back whole, bad files refused in one line."""
import json
import re

import pytest

from vitlab import models
from vitlab.models import loading
from vitlab.models.sidecar import FORMAT, Sidecar, read_sidecar, sidecar_path, write_sidecar
from vitlab.models.weights import WeightsFileError

ARCH = {"zoo": "vit_micro_c10"}


def test_a_sidecar_round_trips_through_its_file(tmp_path):
    written = Sidecar(architecture=ARCH, pretrained_cfg={"mean": [0.5, 0.5, 0.5]}, config={"lr": 0.001, "seed": 3},
                      metrics={"test_accuracy": 0.25}, data={"train_images": 640}, code_version="abc1234",
                      command="python -m vitlab train", others={"pretraining": {"labels_used": False}})
    path = write_sidecar(tmp_path / "m.json", written)
    assert read_sidecar(path) == written
    stored = json.loads(path.read_text())  # the file is the plain JSON object, keys sorted, format stamped
    assert stored == dict(architecture=ARCH, pretrained_cfg={"mean": [0.5, 0.5, 0.5]}, config={"lr": 0.001, "seed": 3},
                          metrics={"test_accuracy": 0.25}, data={"train_images": 640}, code_version="abc1234",
                          command="python -m vitlab train", pretraining={"labels_used": False}, format=FORMAT)
    assert path.read_text() == json.dumps(stored, indent=2, sort_keys=True) + "\n"
    assert (written.objective, written.train_images) == ("classify", 640)


def test_keys_a_file_leaves_out_stay_out(tmp_path):
    path = write_sidecar(tmp_path / "m.json", Sidecar(architecture=ARCH, metrics={"test_accuracy": 0.5}))
    assert json.loads(path.read_text()) == {"architecture": ARCH, "metrics": {"test_accuracy": 0.5}, "format": FORMAT}
    back = read_sidecar(path)
    assert (back.config, back.data, back.pretrained_cfg, back.code_version, back.train_images) == ({}, {}, None, None, None)


@pytest.mark.parametrize("sidecar", sorted(loading.ZOO_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_committed_sidecar_reads_back_to_its_own_object(sidecar):
    stored = json.loads(sidecar.read_text())
    read = read_sidecar(sidecar)
    assert read.to_json() == stored and read.config == stored["config"] and read.metrics == stored["metrics"]
    assert read.objective == stored["config"].get("objective", "classify")


@pytest.mark.parametrize("text, phrase", [
    ("{not json", "m.json is not valid JSON"),
    ("[1, 2]", "m.json holds a JSON list, not an object"),
    ('{"format": 1}', "m.json has no 'architecture' key"),
    ('{"architecture": {}, "format": 2}', "m.json has format 2, but this vitlab reads format 1"),
    ('{"architecture": {}, "config": [1]}', "m.json: key 'config' must be a JSON object, got [1]"),
    ('{"architecture": {}, "pretrained_cfg": {"std": [1, 0, 1]}}', "m.json: key 'pretrained_cfg' 'std' must be > 0"),
])
def test_a_malformed_sidecar_is_refused_in_one_line(tmp_path, text, phrase):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(WeightsFileError, match=re.escape(phrase)) as info:
        read_sidecar(path)
    assert "\n" not in str(info.value)


def test_save_model_refuses_bad_metadata_before_writing_anything(tmp_path):
    model = models.build_model(ARCH)
    with pytest.raises(WeightsFileError, match="key 'metrics' must be a JSON object"):
        models.save_model(model, tmp_path / "m.safetensors", metadata={"metrics": 0.5})
    assert list(tmp_path.iterdir()) == []
    path = models.save_model(model, tmp_path / "m.safetensors", metadata={"format": 7, "note": "kept"})
    assert read_sidecar(sidecar_path(path)).others == {"note": "kept"}  # the writer stamps its own format
