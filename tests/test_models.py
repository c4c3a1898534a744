import json
import os
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
from vitlab import models, zoo


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
    monkeypatch.setattr(models, "ZOO_DIR", tmp_path)
    _empty_hub_cache(tmp_path, monkeypatch)
    last = list(zoo.ENTRIES)[-1]
    models.save_model(models.build_model({"zoo": zoo.ENTRIES[last].architecture}), tmp_path / f"{last}.safetensors")
    untrained = [n for n in zoo.ENTRIES if n != last]
    assert vitlab.available() == [last, *untrained]
    family = zoo.ENTRIES[last].family
    assert vitlab.available(family) == [last, *(n for n in untrained if zoo.ENTRIES[n].family == family)]
    assert vitlab.available(trained_only=True) == [last]
    assert zoo.label(last) == last and zoo.label(untrained[0]) == f"{untrained[0]} (untrained)"
    assert zoo.label("vit_small_patch16_224") == "vit_small_patch16_224"


def test_a_zoo_checkpoint_may_be_named_apart_from_its_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ZOO_DIR", tmp_path)
    model = models.build_model({"zoo": "vit_micro_c10"})
    models.save_model(model, tmp_path / "vit_micro_c10_cutmix.safetensors")
    loaded = vitlab.load_model("vit_micro_c10_cutmix", device="cpu")
    torch.testing.assert_close(_logits(loaded), _logits(model.eval()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="Did you mean.*vit_micro_c10_cutmix"):
        vitlab.load_model("vit_micro_c10_cutmx")


def test_untrained_zoo_model_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ZOO_DIR", tmp_path)
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


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        vitlab.load_model(path, arch="vit_tiny_c10")


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
        assert after == [n for n in vitlab.zoo.ENTRIES if not vitlab.zoo.trained(n)], names
        print("loaded from cache")
    """, tmp_path)
    assert "loaded from cache" in done.stdout, done.stderr


def test_offline_without_cache_gives_clear_error(tmp_path):
    done = _run_offline("""
        import vitlab
        vitlab.load_model("vit_small_patch16_224.augreg_in21k")
    """, tmp_path)
    assert done.returncode != 0
    assert "vitlab.models.WeightsUnavailableError" in done.stderr
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
