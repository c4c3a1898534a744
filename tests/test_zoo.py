"""The zoo's entries, listing and publishing; every shipped checkpoint reproduces its recorded accuracy."""
import json

import pytest
import torch

import vitlab
from vitlab import models
from vitlab.models import loading
from vitlab.training import config
from vitlab.training import mpp
from vitlab.training import loop, objectives, run_folder
from vitlab.training.config import TrainConfig
from vitlab.training import zoo
from vitlab.__main__ import main

#: Entries that declare a checkpoint shipped in data/zoo (read from the entries, not the folder,
#: so an empty or half-copied data/zoo fails instead of passing with nothing to check).
SHIPPED = [name for name, entry in zoo.ENTRIES.items() if entry.shipped]


def test_the_zoo_ships_a_vit_a_hybrid_and_a_resnet():
    assert {zoo.ENTRIES[n].family for n in SHIPPED} == {"vit", "hybrid", "resnet"}
    on_disk = sorted(p.stem for p in loading.ZOO_DIR.glob("*.safetensors"))
    assert on_disk == sorted(SHIPPED)  # no undeclared checkpoint either
    # At least one shipped ViT carries its inside views over training (notebook 03 shows them).
    assert any(vitlab.training.run_folder.read_inside(zoo.inside_folder(n)) for n in SHIPPED if zoo.ENTRIES[n].family == "vit")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_are_small_and_documented(name):
    assert (loading.ZOO_DIR / f"{name}.safetensors").stat().st_size <= 10 * 2**20
    record = json.loads((loading.ZOO_DIR / f"{name}.json").read_text())
    assert record["command"].startswith("python -m vitlab train --model " + zoo.ENTRIES[name].architecture)
    assert record["metrics"]["hardware"] and record["metrics"]["wall_seconds"] > 0
    assert (loading.ZOO_DIR / f"{name}.metrics.jsonl").is_file()
    listing = zoo.zoo()[name]
    assert listing["trained"] and listing["test_accuracy"] == record["metrics"]["test_accuracy"]
    # Sidecars written before the zoo module (with out/progress in their config) still load.
    assert config.from_args(TrainConfig, record["config"]) == zoo.train_config(name)
    assert vitlab.load_model(name, device="cpu").vitlab_arch["zoo"] == zoo.ENTRIES[name].architecture
    views = vitlab.training.run_folder.read_inside(zoo.inside_folder(name))  # entries trained before inside views have none
    if views:  # every epoch the trainer records, up to the last, from the run's own final model
        assert [v.epoch for v in views] == vitlab.training.inside.recorded_epochs(record["config"]["epochs"])
        assert all(p.stat().st_size <= 10 * 2**20 for p in zoo.inside_folder(name).iterdir())


@pytest.mark.cifar
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_recorded_accuracy(name, monkeypatch):
    monkeypatch.delenv("VITLAB_CACHE")
    record = json.loads((loading.ZOO_DIR / f"{name}.json").read_text())["metrics"]
    accuracy = zoo.check_accuracy(name)  # a pre-trained encoder: its masked-colour accuracy
    assert accuracy == pytest.approx(record[f"test_accuracy_{zoo.CHECK_SIZE}"], abs=0.002)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=0.04)  # 1,000 images vs all 10,000


def test_zoo_listing_reports_params_and_records(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path)
    model = models.build_model({"zoo": "vit_tiny_c10"})
    models.save_model(model, tmp_path / "vit_tiny_c10.safetensors", metadata={"metrics": {"test_accuracy": 0.5}})
    listing = zoo.zoo()
    assert set(listing) == set(zoo.ENTRIES)
    assert listing["vit_tiny_c10"]["params"] == sum(p.numel() for p in model.parameters())
    assert listing["vit_tiny_c10"]["test_accuracy"] == 0.5 and listing["vit_tiny_c10"]["trained"]
    small = listing["vit_small_c10"]
    assert small["test_accuracy"] is None and small["checkpoint"] is None and not small["trained"]
    loaded = vitlab.load_model("vit_tiny_c10", device="cpu")
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_train_config_is_the_recipe_with_overrides():
    vit, resnet = zoo.train_config("vit_tiny_c10"), zoo.train_config("resnet_tiny_c10", epochs=3, lr=0.05)
    assert (vit.model, vit.optimizer, vit.lr, vit.weight_decay) == ("vit_tiny_c10", "adamw", 1e-3, 0.05)
    assert (resnet.optimizer, resnet.lr, resnet.weight_decay, resnet.epochs) == ("sgd", 0.05, 5e-4, 3)
    with pytest.raises(ValueError, match="unknown zoo model 'vit_huge_c10'"):
        zoo.train_config("vit_huge_c10")
    with pytest.raises(TypeError):  # entries share their recipe: nobody changes it for the others
        zoo.ENTRIES["vit_small_c10"].recipe["lr"] = 1.0
    assert zoo.train_config("vit_tiny_c10").lr == 1e-3


def _train_and_publish(name, tmp_path, monkeypatch):
    """A one-epoch run of zoo entry ``name`` on the fake CIFAR-10, published into a zoo under ``tmp_path``."""
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CHECK_SIZE", 50)  # the fake test split holds 100 images
    settings = zoo.train_config(name, epochs=1, batch_size=64, eval_size=50)
    result = loop.train(settings, tmp_path / "run", progress=False)
    return settings, result, zoo.publish(tmp_path / "run", name, code_version="abc1234")


def test_publish_copies_a_run_with_its_record_and_command(fake_cifar, tmp_path, monkeypatch):
    settings, result, target = _train_and_publish("vit_micro_c10", tmp_path, monkeypatch)
    assert target == tmp_path / "zoo" / "vit_micro_c10.safetensors" and zoo.trained("vit_micro_c10")
    record = json.loads(target.with_suffix(".json").read_text())
    images, labels = vitlab.data.cifar10("test")
    assert record["metrics"]["test_accuracy"] == objectives.evaluate(result.model, images, labels)
    idx = vitlab.data.stratified_subset(labels, 50, seed=0)
    assert record["metrics"]["test_accuracy_50"] == objectives.evaluate(result.model, images[idx], labels[idx])
    assert record["command"] == f"{config.command_line('python -m vitlab train', settings)} --out {tmp_path / 'run'}"
    assert record["code_version"] == "abc1234"
    assert (tmp_path / "zoo" / "vit_micro_c10.metrics.jsonl").read_text() == (tmp_path / "run" / "metrics.jsonl").read_text()
    # The inside views over training travel with it, and read back as the run's own.
    assert zoo.inside_folder("vit_micro_c10") == tmp_path / "zoo" / "vit_micro_c10.inside"
    for file in ("inside.jsonl", "inside.safetensors"):
        assert (zoo.inside_folder("vit_micro_c10") / file).read_bytes() == (tmp_path / "run" / file).read_bytes()
    views = vitlab.training.run_folder.read_inside(zoo.inside_folder("vit_micro_c10"))
    assert [v.epoch for v in views] == [1] and views == vitlab.training.run_folder.read_inside(tmp_path / "run")
    with pytest.raises(ValueError, match="trained a vit_micro_c10, but zoo entry resnet_micro_c10"):
        zoo.publish(tmp_path / "run", "resnet_micro_c10")


def test_publish_of_a_hybrid_keeps_its_cnn_and_its_views_without_filters(fake_cifar, tmp_path, monkeypatch):
    _, result, target = _train_and_publish("hybrid_micro_c10", tmp_path, monkeypatch)
    loaded = vitlab.load_model("hybrid_micro_c10", device="cpu")
    assert vitlab.analysis.metrics.is_hybrid(loaded) and zoo.zoo()["hybrid_micro_c10"]["family"] == "hybrid"
    state = result.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())  # the CNN's weights included
    assert any(k.startswith("patch_embed.backbone.layer2") for k in state)
    images, labels = vitlab.data.cifar10("test")
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["metrics"]["test_accuracy"] == objectives.evaluate(loaded, images, labels)
    views = vitlab.training.run_folder.read_inside(zoo.inside_folder("hybrid_micro_c10"))
    assert [v.filter_k for v in views] == [0]


def test_publish_of_a_pretrained_encoder_keeps_its_colour_head_and_records_its_pretraining(fake_cifar, tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CHECK_SIZE", 50)
    settings = zoo.train_config("vit_micro_c10_mpp", epochs=1, batch_size=64, eval_size=50)
    assert settings.objective == "mpp" and zoo.ENTRIES["vit_micro_c10_mpp"].objective == "mpp"
    result = loop.train(settings, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="trained with objective mpp, but zoo entry vit_micro_c10 is classify"):
        zoo.publish(tmp_path / "run", "vit_micro_c10")
    target = zoo.publish(tmp_path / "run", "vit_micro_c10_mpp")
    record = json.loads(target.with_suffix(".json").read_text())
    images, labels = vitlab.data.cifar10("test")
    assert record["metrics"]["test_accuracy"] == mpp.masked_accuracy(result.model, images)
    assert record["pretraining"] == dict(objective="mpp", epochs=1, images_seen=640 // 64 * 64, labels_used=False,
                                         wall_seconds=record["metrics"]["wall_seconds"],
                                         masked_colour_accuracy=record["metrics"]["test_accuracy"])
    assert zoo.check_accuracy("vit_micro_c10_mpp") == record["metrics"]["test_accuracy_50"]
    assert zoo.zoo()["vit_micro_c10_mpp"]["objective"] == "mpp"
    # Loaded by name for analysis it is the plain ViT; fine-tuning from it by name starts a new head.
    assert type(vitlab.load_model("vit_micro_c10_mpp", device="cpu")).__name__ == "VisionTransformer"
    assert objectives.init_objective("vit_micro_c10_mpp") == "mpp"
    # Its training record, by zoo name or from the run folder, is the run's own.
    for spec in ("vit_micro_c10_mpp", tmp_path / "run" / "model.safetensors"):
        record = zoo.training_record(spec)
        assert record.log == run_folder.read_metrics(tmp_path / "run") and record.config.objective == "mpp"
        assert vitlab.training.run_folder.read_inside(record.inside) == vitlab.training.run_folder.read_inside(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="neither a trained zoo entry"):
        zoo.training_record("vit_small_c10")


def test_publish_refuses_to_replace_a_zoo_checkpoint_without_force(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path / "zoo")
    monkeypatch.setattr(zoo, "CHECK_SIZE", 50)
    for name, lr, inside in [("first", 1e-3, True), ("second", 2e-3, False)]:
        loop.train(zoo.train_config("vit_micro_c10", epochs=1, batch_size=64, eval_size=50, lr=lr), tmp_path / name,
                    progress=False, inside=inside)
    target = zoo.publish(tmp_path / "first", "vit_micro_c10")
    published = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "zoo").rglob("*") if p.is_file()}
    measured = objectives.Classification.test_accuracy
    monkeypatch.setattr(objectives.Classification, "test_accuracy", lambda *args: pytest.fail("evaluated before refusing"))
    with pytest.raises(FileExistsError, match=f"zoo entry vit_micro_c10 has a checkpoint already \\({target}\\); "
                                              "pass --force"):
        zoo.publish(tmp_path / "second", "vit_micro_c10")
    with pytest.raises(SystemExit, match="publish: error: zoo entry vit_micro_c10 has a checkpoint already"):
        main(["publish", str(tmp_path / "second"), "vit_micro_c10"])
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "zoo").rglob("*") if p.is_file()} == published
    monkeypatch.setattr(objectives.Classification, "test_accuracy", measured)
    main(["publish", str(tmp_path / "second"), "vit_micro_c10", "--force"])
    assert json.loads(target.with_suffix(".json").read_text())["config"]["lr"] == 2e-3
    assert vitlab.training.run_folder.read_inside(zoo.inside_folder("vit_micro_c10")) == []  # the first run's views went with it
