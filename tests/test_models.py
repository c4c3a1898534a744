import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import vitlab
from vitlab import data, models
from vitlab.models import loading
from vitlab.models import hub, sidecar
from vitlab.training import zoo
from vitlab.models.weights import WeightsFileError


def _export_google_npz(model: VisionTransformer, path) -> None:
    """Write a timm ViT in the original Google ViT .npz layout (the inverse of timm's loader)."""
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),  # (P, P, C, D)
        "embedding/bias": model.patch_embed.proj.bias,
        "cls": model.cls_token,
        "Transformer/posembed_input/pos_embedding": model.pos_embed,
        "Transformer/encoder_norm/scale": model.norm.weight,
        "Transformer/encoder_norm/bias": model.norm.bias,
        "head/kernel": model.head.weight.T,
        "head/bias": model.head.bias,
    }
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            w[f"{p}MultiHeadDotProductAttention_1/{name}/kernel"] = weight.T.reshape(d, heads, -1)
            w[f"{p}MultiHeadDotProductAttention_1/{name}/bias"] = bias.reshape(heads, -1)
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = block.attn.proj.weight.reshape(d, heads, -1).permute(1, 2, 0)
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = block.attn.proj.bias
        w[f"{p}LayerNorm_0/scale"], w[f"{p}LayerNorm_0/bias"] = block.norm1.weight, block.norm1.bias
        w[f"{p}LayerNorm_2/scale"], w[f"{p}LayerNorm_2/bias"] = block.norm2.weight, block.norm2.bias
        w[f"{p}MlpBlock_3/Dense_0/kernel"], w[f"{p}MlpBlock_3/Dense_0/bias"] = block.mlp.fc1.weight.T, block.mlp.fc1.bias
        w[f"{p}MlpBlock_3/Dense_1/kernel"], w[f"{p}MlpBlock_3/Dense_1/bias"] = block.mlp.fc2.weight.T, block.mlp.fc2.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in w.items()})


def _logits(model, seed=0):
    size = timm.data.resolve_model_data_config(model)["input_size"][1:]
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def _empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_trained_models_are_offered_first_and_untrained_ones_last(tmp_path, monkeypatch):
    """Only the architecture registered last has a checkpoint: the order cannot come from the registry."""
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path)
    _empty_hub_cache(tmp_path, monkeypatch)
    last = list(zoo.ENTRIES)[-1]
    models.save_model(models.build_model({"zoo": zoo.ENTRIES[last].architecture}), tmp_path / f"{last}.safetensors")
    # Untrained entries are offered where they load (as random weights): named after their architecture.
    untrained = [n for n in zoo.ENTRIES if n != last and n in models.ARCHITECTURES]
    assert vitlab.available() == [last, *untrained]
    family = zoo.ENTRIES[last].family
    assert vitlab.available(family) == [last, *(n for n in untrained if zoo.ENTRIES[n].family == family)]
    attention = [n for n in untrained if zoo.ENTRIES[n].family in ("vit", "hybrid")]
    assert {zoo.ENTRIES[n].family for n in attention} == {"vit", "hybrid"}
    assert vitlab.available(("vit", "hybrid")) == [last, *attention]
    assert vitlab.available(trained_only=True) == [last]
    assert zoo.label(last) == last and zoo.label(untrained[0]) == f"{untrained[0]} (untrained)"
    assert zoo.label("vit_small_patch16_224") == "vit_small_patch16_224"


def test_a_zoo_checkpoint_may_be_named_apart_from_its_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path)
    model = models.build_model({"zoo": "vit_micro_c10"})
    models.save_model(model, tmp_path / "vit_micro_c10_cutmix.safetensors")
    loaded = vitlab.load_model("vit_micro_c10_cutmix", device="cpu")
    torch.testing.assert_close(_logits(loaded), _logits(model.eval()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="Did you mean.*vit_micro_c10_cutmix"):
        vitlab.load_model("vit_micro_c10_cutmx")


def test_untrained_zoo_model_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "ZOO_DIR", tmp_path)
    with pytest.warns(UserWarning, match="no trained checkpoint"):
        vitlab.load_model("resnet_tiny_c10", device="cpu")


def test_safetensors_roundtrip_with_sidecar(tmp_path):
    model = vitlab.load_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              reg_tokens=4, num_classes=7, device="cpu")
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 32, 32)  # not timm's 224
    path = models.save_model(model, tmp_path / "m.safetensors", metadata={"note": "hi"})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["architecture"]["timm"] == "vit_small_patch16_224" and sidecar["note"] == "hi"
    loaded = vitlab.load_model(path, device="cpu")
    assert loaded.num_prefix_tokens == 5
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)
    assert timm.data.resolve_model_data_config(loaded) == timm.data.resolve_model_data_config(model)


def test_state_dict_file_needs_arch_and_loads_with_weights_only(tmp_path, tiny_vit):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_vit.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="pass arch="):
        vitlab.load_model(path)
    kw = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3)
    loaded = vitlab.load_model(path, arch="vit_tiny_patch16_224", device="cpu", **kw)
    assert loaded.num_classes == 5  # the head is sized from the checkpoint
    torch.testing.assert_close(_logits(loaded), _logits(tiny_vit), rtol=0, atol=0)


class _Touch:
    """Unpickling this object opens ``marker`` for writing, so the file shows whether it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    control, marker = tmp_path / "control", tmp_path / "marker"
    torch.save({"weights": _Touch(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # what an unpickling loader would do
    assert control.exists(), "the payload does not work, so the test below would prove nothing"
    path = tmp_path / "evil.pt"
    torch.save({"weights": _Touch(marker)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        vitlab.load_model(path, arch="vit_tiny_c10", device="cpu")
    assert not marker.exists()


def test_mismatched_checkpoint_is_explained(tmp_path, tiny_vit):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(tiny_vit.state_dict(), path)
    with pytest.raises(ValueError, match="does not match the architecture") as info:
        vitlab.load_model(path, arch="vit_tiny_c10")
    assert "shape" in str(info.value)


def test_google_npz_checkpoint_infers_architecture(tmp_path, tiny_vit):
    path = tmp_path / "ViT-tiny.npz"
    _export_google_npz(tiny_vit, path)
    loaded = vitlab.load_model(path, device="cpu")
    assert (loaded.patch_embed.patch_size, loaded.embed_dim, len(loaded.blocks)) == ((8, 8), 24, 2)
    assert loaded.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    torch.testing.assert_close(_logits(loaded), _logits(tiny_vit), rtol=1e-5, atol=1e-5)
    # an explicit architecture works too, and the head can be replaced for fine-tuning
    kw = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3)
    again = vitlab.load_model(path, arch="vit_tiny_patch16_224", num_classes=3, device="cpu", **kw)
    assert again.head.out_features == 3
    torch.testing.assert_close(again.pos_embed, tiny_vit.pos_embed)


def test_num_classes_replaces_head_and_survives_save(tmp_path):
    model = vitlab.load_model("vit_tiny_c10", num_classes=4, device="cpu")
    assert _logits(model).shape == (2, 4)
    loaded = vitlab.load_model(models.save_model(model, tmp_path / "ft.safetensors"), device="cpu")
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_unknown_spec_suggests_names():
    with pytest.raises(ValueError, match="Did you mean.*vit_tiny_c10"):
        vitlab.load_model("vit_tiny_c1O")


def _run_offline(code: str, hf_home, **env_changes) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", **env_changes}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_hub_weights_load_from_cache_offline(tmp_path):
    snapshot = tmp_path / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123456789abcdef")
    weights = snapshot / "snapshots" / "0123456789abcdef" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False)
    safetensors.torch.save_file(source.state_dict(), weights)
    done = _run_offline(f"""
        import safetensors.torch, torch, vitlab
        model = vitlab.load_model("vit_tiny_patch16_224.augreg_in21k", device="cpu")
        expected = safetensors.torch.load_file({str(weights)!r})
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
        names = vitlab.available()  # trained zoo entries, cached hub models, untrained zoo entries
        after = names[names.index("vit_tiny_patch16_224.augreg_in21k") + 1:]
        assert after == [n for n in vitlab.training.zoo.ENTRIES if not vitlab.training.zoo.trained(n) and n in vitlab.models.ARCHITECTURES], names
        print("loaded from cache")
    """, tmp_path)
    assert "loaded from cache" in done.stdout, done.stderr


def test_offline_without_cache_gives_clear_error(tmp_path):
    done = _run_offline("""
        import vitlab
        vitlab.load_model("vit_small_patch16_224.augreg_in21k")
    """, tmp_path)
    assert done.returncode != 0
    assert "vitlab.models.hub.WeightsUnavailableError" in done.stderr
    assert "pretrained=False" in done.stderr and "online" in done.stderr
    assert "huggingface_hub" not in done.stderr  # no stack of hub internals


def test_unreachable_hub_fails_fast_with_the_same_advice(tmp_path):
    done = _run_offline("""
        import vitlab
        vitlab.load_model("vit_small_patch16_224.augreg_in21k")
    """, tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9
    assert "Retrying" not in done.stderr  # the hub client alone retries for most of a minute
    assert "WeightsUnavailableError" in done.stderr
    assert "could not be downloaded (ConnectionError)" in done.stderr


def test_describe_load_explains_instead_of_raising(tmp_path):
    done = _run_offline("""
        import vitlab
        print(vitlab.models.describe_load("vit_small_patch16_224.augreg_in21k"))
        print(vitlab.models.describe_load("vit_tiny_c10"))
    """, tmp_path)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("vit_small_patch16_224.augreg_in21k: not available here.") and "online" in lines[0]
    params = sum(p.numel() for p in models.build_model({"zoo": "vit_tiny_c10"}).parameters())
    assert lines[-1].startswith(f"vit_tiny_c10: VisionTransformer, {params:,} parameters")


def test_preprocess_matches_manual_normalisation(tiny_vit):
    model = vitlab.load_model("vit_tiny_c10", device="cpu")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = vitlab.preprocess(model, images)
    for c in range(3):
        expected = (images[:, c].double() / 255 - vitlab.data.MEAN[c]) / vitlab.data.STD[c]
        torch.testing.assert_close(out[:, c].double(), expected, rtol=0, atol=1e-6)
    # timm's ImageNet ViT expects 224x224 in [-1, 1]: images are resized, then normalised
    vit = vitlab.load_model("vit_tiny_patch16_224", pretrained=False, device="cpu")
    flat = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    big = vitlab.preprocess(vit, flat)
    assert big.shape == (1, 3, 224, 224)
    torch.testing.assert_close(big, torch.ones_like(big))  # (1 - 0.5) / 0.5


@pytest.mark.parametrize("bad, error", [(torch.zeros(2, 3, 32, 32), TypeError),
                                        (torch.zeros(3, 32, 32, dtype=torch.uint8), ValueError),
                                        (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), ValueError)])
def test_preprocess_rejects_bad_input(bad, error):
    with pytest.raises(error, match=r"\(N, 3, H, W\)"):
        vitlab.preprocess(vitlab.load_model("vit_tiny_c10", device="cpu"), bad)


def _refuse(*args, **kwargs):
    raise AssertionError("reached work that a bad spec must never reach")


def test_bad_pretrained_tag_is_refused_before_any_network_access(monkeypatch):
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, _refuse)
    monkeypatch.setattr(timm, "create_model", _refuse)
    monkeypatch.setattr(hub, "_create_cache_first", _refuse)
    with pytest.raises(ValueError) as info:
        vitlab.load_model("vit_tiny_patch16_224.nonexistent_tag", device="cpu")
    message = str(info.value)
    # timm's own list, read independently of vitlab's parsing of it
    expected = sorted(n.split(".", 1)[1] for n in timm.list_pretrained("vit_tiny_patch16_224*")
                      if n.split(".", 1)[0] == "vit_tiny_patch16_224")
    assert expected and sorted(models.pretrained_tags("vit_tiny_patch16_224.whatever")) == expected
    assert "'nonexistent_tag'" in message and all(tag in message for tag in expected)
    assert models.check_spec("vit_tiny_patch16_224.augreg_in21k") == "timm"  # a real tag passes the check


def test_describe_load_explains_a_bad_tag_in_one_line():
    line = models.describe_load("vit_tiny_patch16_224.nonexistent_tag")
    assert line.startswith("vit_tiny_patch16_224.nonexistent_tag: cannot be loaded.")
    assert "augreg_in21k_ft_in1k" in line and "\n" not in line


def test_describe_load_explains_a_broken_file(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"")
    line = models.describe_load(str(tmp_path / "m.safetensors"))
    assert line.startswith(f"{tmp_path / 'm.safetensors'}: cannot be loaded.") and "empty" in line


def _micro_file(tmp_path):
    model = models.build_model({"zoo": "vit_micro_c10"})
    return model, models.save_model(model, tmp_path / "m.safetensors")


@pytest.mark.parametrize("cut", [0, 4, 8, 100, -1])
def test_a_cut_safetensors_file_fails_before_a_model_is_built(tmp_path, monkeypatch, cut):
    _, path = _micro_file(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    monkeypatch.setattr(loading, "build_model", _refuse)
    monkeypatch.setattr(loading, "read_state_dict", _refuse)
    with pytest.raises(WeightsFileError, match="is (empty|truncated)") as info:
        vitlab.load_model(path, device="cpu")
    assert str(path) in str(info.value)


def test_check_spec_reads_headers_only(tmp_path, monkeypatch):
    model, path = _micro_file(tmp_path)
    monkeypatch.setattr(loading, "build_model", _refuse)
    monkeypatch.setattr(loading, "read_state_dict", _refuse)
    assert models.check_spec(path) == "file"
    assert models.check_spec("vit_small_c10") in ("zoo", "file")
    assert models.check_spec("vit_tiny_patch16_224") == "timm"
    path.with_suffix(".json").write_text("{")
    with pytest.raises(WeightsFileError, match="m.json is not valid JSON"):
        models.check_spec(path)


def test_zeroed_safetensors_header_is_named(tmp_path):
    _, path = _micro_file(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[8:40] = b"\0" * 32  # same size, header destroyed
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsFileError, match=f"{path.name} is truncated or corrupt"):
        vitlab.load_model(path, device="cpu")


def test_legacy_pt_files_still_load(tmp_path, tiny_vit):
    path = tmp_path / "legacy.pt"
    torch.save(tiny_vit.state_dict(), path, _use_new_zipfile_serialization=False)
    kw = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3)
    loaded = vitlab.load_model(path, arch="vit_tiny_patch16_224", device="cpu", **kw)
    torch.testing.assert_close(_logits(loaded), _logits(tiny_vit), rtol=0, atol=0)


def test_a_folder_points_at_the_weights_inside(tmp_path):
    (tmp_path / "run").mkdir()
    _micro_file(tmp_path / "run")
    with pytest.raises(FileNotFoundError) as info:
        vitlab.load_model(tmp_path / "run", device="cpu")
    assert str(tmp_path / "run" / "m.safetensors") in str(info.value)


@pytest.mark.parametrize("cfg", [
    dict(mean=[0, 0, 0], std=[1, 1, 1]),  # integers are numbers
    dict(input_size=[3, 64, 48], interpolation="bilinear"),
    dict(interpolation="lanczos"),
])
def test_sane_pretrained_cfg_is_accepted(tmp_path, cfg):
    _, path = _micro_file(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["pretrained_cfg"].update(cfg)
    path.with_suffix(".json").write_text(json.dumps(meta))
    loaded = vitlab.load_model(path, device="cpu")
    assert all(loaded.pretrained_cfg[k] == (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items())


@pytest.mark.parametrize("key, value", [
    ("mean", [0.5, 0.5, 0.5, 0.5]), ("mean", [0.5, "0.5", 0.5]), ("mean", [0.5, float("nan"), 0.5]),
    ("mean", [True, 0.5, 0.5]), ("mean", 0.5), ("std", [0.2, -0.2, 0.2]), ("std", None),
    ("input_size", [3, 32]), ("input_size", [3, 32.0, 32]), ("input_size", [0, 32, 32]),
    ("interpolation", "BICUBIC"), ("interpolation", 3),
])
def test_nonsense_pretrained_cfg_names_the_sidecar_and_key(tmp_path, key, value):
    _, path = _micro_file(tmp_path)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["pretrained_cfg"][key] = value
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(WeightsFileError, match=f"{sidecar.name}: key 'pretrained_cfg' '{key}' must be"):
        vitlab.load_model(path, device="cpu")


def test_every_timm_pretrained_cfg_passes_the_sidecar_check():
    """The check refuses nonsense, not any preprocessing timm itself ships."""
    from timm.models import get_pretrained_cfg

    names = timm.list_pretrained()
    assert len(names) > 1000
    refused = [n for n in names if sidecar._pretrained_cfg_problem(sidecar.jsonable(get_pretrained_cfg(n).to_dict()))]
    assert refused == []


def test_a_sidecar_without_preprocessing_keys_takes_the_architectures(tmp_path):
    _, path = _micro_file(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["pretrained_cfg"]["mean"], meta["pretrained_cfg"]["std"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    cfg = timm.data.resolve_model_data_config(vitlab.load_model(path, device="cpu"))
    assert cfg["mean"] == data.MEAN and cfg["std"] == data.STD  # CIFAR-10's, not timm's ImageNet default


def test_num_classes_zero_removes_the_head_as_in_timm(tmp_path):
    model = vitlab.load_model("vit_micro_c10", num_classes=0, device="cpu")
    assert _logits(model).shape == (2, 32)  # the pooled features (embed_dim 32)
    loaded = vitlab.load_model(models.save_model(model, tmp_path / "features.safetensors"), device="cpu")
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_device_check_follows_the_gpus_present(monkeypatch):
    """On a (pretended) one-GPU machine cuda and cuda:0 pass the check, cuda:1 does not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert loading._device("cuda") == torch.device("cuda") and loading._device("cuda:0") == torch.device("cuda:0")
    assert loading._device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device='cuda:1' but this machine has 1 CUDA device"):
        loading._device("cuda:1")


# Zip bombs: weights files whose members inflate far beyond their size on disk (issue 28, item 6).

_BOMB_BYTES = 512 * 2**20  # what the bombs' one member inflates to; the files are about 2.3 MB each


def _zip_with_zeros(path, members: dict[str, bytes], name: str, head: bytes, zeros: int) -> None:
    """Write ``members`` stored, then ``name`` deflated: ``head`` followed by ``zeros`` zero bytes, streamed in
    1 MiB chunks so this process never holds them."""
    import zipfile

    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for member, content in members.items():
            archive.writestr(member, content, compress_type=zipfile.ZIP_STORED)
        with archive.open(name, "w", force_zip64=True) as f:
            f.write(head)
            for start in range(0, zeros, len(chunk)):
                f.write(chunk[: min(len(chunk), zeros - start)])


def _npz_bomb(path) -> None:
    """A micro Google ViT .npz whose ``embedding/kernel`` claims a width of 699,050: 512 MiB of deflated zeros."""
    import io
    import zipfile

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=3, num_classes=10)
    buffer = io.BytesIO()
    _export_google_npz(model, buffer)
    with zipfile.ZipFile(buffer) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != "embedding/kernel.npy"}
    width = _BOMB_BYTES // (8 * 8 * 3 * 4)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (8, 8, 3, width)})
    _zip_with_zeros(path, members, "embedding/kernel.npy", head.getvalue(), 8 * 8 * 3 * 4 * width)


def _pt_bomb(path) -> None:
    """A torch.save state dict whose one float tensor is 512 MiB of deflated zeros (torch writes members stored)."""
    import collections
    import io
    import pickle
    import zipfile

    numel = _BOMB_BYTES // 4

    class Storage:  # the storage the pickle names by persistent id, as torch.save writes it
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    torch.save({"blocks.0.mlp.fc1.weight": torch.zeros(4)}, buffer)
    with zipfile.ZipFile(buffer) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.endswith(("data.pkl", "data/0"))}
        prefix = archive.namelist()[0].split("/")[0]
    pickled = io.BytesIO()
    Pickler(pickled, protocol=2).dump({"blocks.0.mlp.fc1.weight": Tensor()})
    _zip_with_zeros(path, {f"{prefix}/data.pkl": pickled.getvalue(), **members}, f"{prefix}/data/0", b"", _BOMB_BYTES)


def test_zip_bombs_are_refused_before_anything_is_inflated(tmp_path):
    """A 2.3 MB .npz or .pt that inflates to 512 MiB is refused in one line; the loading process's peak resident
    memory (ru_maxrss, measured in a child after importing vitlab) grows by less than 300 MB."""
    _npz_bomb(tmp_path / "bomb.npz")
    _pt_bomb(tmp_path / "bomb.pt")
    assert max(p.stat().st_size for p in tmp_path.iterdir()) < 4 * 2**20
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, resource, vitlab
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out = {{}}
        for name, kw in (("bomb.npz", {{}}), ("bomb.pt", {{"arch": "vit_micro_c10"}})):
            try:
                vitlab.load_model({str(tmp_path)!r} + "/" + name, device="cpu", **kw)
                out[name] = "loaded"
            except Exception as err:
                out[name] = f"{{type(err).__name__}}: {{err}}"
        out["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(json.dumps(out))
        """)], capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    width = _BOMB_BYTES // (8 * 8 * 3 * 4)
    assert out["bomb.npz"].startswith("WeightsFileError: ") and f"do not fit one ViT of width {width}" in out["bomb.npz"]
    assert out["bomb.pt"].startswith("WeightsFileError: ") and "has compressed members" in out["bomb.pt"]
    assert all("\n" not in message for message in (out["bomb.npz"], out["bomb.pt"]))
    assert out["grew_mb"] < 300, out


def test_weights_over_the_size_limit_are_refused_naming_it(tmp_path, monkeypatch, tiny_vit):
    from vitlab.models import weights

    _export_google_npz(tiny_vit, tmp_path / "vit.npz")
    torch.save(tiny_vit.state_dict(), tmp_path / "vit.pt")
    monkeypatch.setattr(weights, "MAX_WEIGHTS_BYTES", 10_000)  # the micro model's files hold about 60 KB
    for name, kw in (("vit.npz", {}), ("vit.pt", {"arch": "vit_tiny_patch16_224"})):
        with pytest.raises(WeightsFileError, match=r"more than vitlab reads \(0 GiB, vitlab.models.weights.MAX_WEIG"):
            vitlab.load_model(tmp_path / name, device="cpu", **kw)
