import contextlib
import importlib.util
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import timm
import torch
from sklearn.linear_model import Ridge

from notebook_runs import make_scheduler, serve_from_browser_runs, summary_lines
from vitlab import data
from vitlab.models import preprocess


def pytest_configure(config):
    """Under pytest-xdist, one torch thread per worker and per process it starts: the workers already share the cores."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the kernels nbmake starts (two threads each would spin)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache; real-CIFAR tests opt back into the shared one."""
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_vit():
    """A random-weight 2-block timm ViT on 32x32 inputs with 8-pixel patches (4x4 grid)."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24, depth=2,
        num_heads=3, num_classes=5,
    ).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    return model


class HalfMicro(NamedTuple):
    """``vit_micro_c10`` in fp32 and a copy in a 16-bit ``dtype``, uint8 ``images`` for both, and ``close`` (see
    :func:`half_micro`)."""
    fp32: torch.nn.Module
    half: torch.nn.Module
    dtype: torch.dtype
    images: torch.Tensor
    close: Callable[[torch.Tensor, torch.Tensor], None]


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def half_micro(request) -> HalfMicro:
    """A random-weight ``vit_micro_c10``, its copy cast to bf16 or fp16, and 6 uint8 images; ``close(got, expected)``
    asserts a 16-bit result matches the fp32 one within 8 of that dtype's epsilons of the largest expected value."""
    from vitlab.models import build_model

    torch.manual_seed(4)
    fp32 = build_model({"zoo": "vit_micro_c10"}).eval()
    half = build_model({"zoo": "vit_micro_c10"}).eval()
    half.load_state_dict(fp32.state_dict())
    half.to(request.param)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    eps = torch.finfo(request.param).eps

    def close(got: torch.Tensor, expected: torch.Tensor) -> None:
        assert got.shape == expected.shape
        scale = float(expected.abs().max())
        torch.testing.assert_close(got.double(), expected.double(), rtol=8 * eps, atol=8 * eps * scale)

    return HalfMicro(fp32, half, request.param, images, close)


@contextlib.contextmanager
def benchmark_script(filename: str):
    """The script ``benchmarks/<filename>`` imported as a module, for its tests; unregistered on exit."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / filename
    spec = importlib.util.spec_from_file_location(f"{path.stem}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def cifar_available() -> bool:
    return data.find_cifar10() is not None


#: Marks a test that reads the real CIFAR-10 copy: skipped without one, deselected by -m "not cifar".
needs_cifar = pytest.mark.cifar


#: Notebooks that read CIFAR-10 itself (the others fall back to the shipped sample images).
NOTEBOOKS_NEEDING_CIFAR = {"05_vit_vs_resnet.ipynb", "06_train.ipynb", "07_pretraining.ipynb", "08_interventions.ipynb",
                           "09_attributions.ipynb"}


def pytest_collection_modifyitems(config, items):
    """Skip ``cifar`` tests without a CIFAR-10 copy and ``gpu`` tests without CUDA, saying why; run the
    notebooks last, each checked from its browser test's run when there is one (tests/notebook_runs.py)."""
    no_cifar = pytest.mark.skip(reason="no CIFAR-10 copy found (set VITLAB_DATA)")
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    have_cifar, have_gpu = cifar_available(), torch.cuda.is_available()
    for item in items:
        if item.path.suffix == ".ipynb" and item.path.name in NOTEBOOKS_NEEDING_CIFAR:
            item.add_marker(pytest.mark.cifar)
        if "cifar" in item.keywords and not have_cifar:
            item.add_marker(no_cifar)
        if "gpu" in item.keywords and not have_gpu:
            item.add_marker(no_gpu)
    serve_from_browser_runs(items)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (pytest -n 2)
def pytest_xdist_make_scheduler(config, log):
    """Each notebook's browser test and nbmake check on one worker, in order (tests/notebook_runs.py)."""
    return make_scheduler(config, log)


def pytest_terminal_summary(terminalreporter, config):
    """Say which notebooks nbmake checked from a browser test's Run All instead of running them again."""
    lines = summary_lines(terminalreporter.stats)
    if lines:
        terminalreporter.write_sep("-", "notebooks executed once, by their browser tests")
        for line in lines:
            terminalreporter.write_line(line)


def make_batches(root, per_batch=4, test_size=None, seed=0):
    """Write CIFAR-10 in torchvision's cifar-10-batches-py layout, pickled as the originals are.

    Five training batches of ``per_batch`` random images and a test batch of ``test_size``
    (default ``per_batch``); labels cycle through the ten classes. Returns the expected
    ``{split: (images (N, 3, 32, 32), labels (N,))}``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected = {"train": ([], []), "test": ([], [])}
    names = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for k, (split, name) in enumerate(names):
        n = per_batch if split == "train" else (test_size or per_batch)
        imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [(k + i) % 10 for i in range(n)]
        batch = {"batch_label": name, "labels": labels, "data": imgs.reshape(n, -1),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        expected[split][0].append(imgs)
        expected[split][1].extend(labels)
    return {s: (np.concatenate(x), np.array(y)) for s, (x, y) in expected.items()}


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A small random CIFAR-10 (640 train, 100 test images) that VITLAB_DATA points at."""
    root = tmp_path / "fake-data"
    make_batches(root, per_batch=128, test_size=100)
    monkeypatch.setenv("VITLAB_DATA", str(root))
    return root


def sklearn_probe(x_train, y_train, x_test, l2, classes):
    """big_vision's recipe spelled out with scikit-learn: standardise, bias column of 100, +-1 targets."""
    x_train, x_test = x_train.double().numpy(), x_test.double().numpy()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    aug = lambda x: np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])  # noqa: E731
    targets = 2.0 * np.eye(classes)[y_train.numpy()] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(aug(x_train), targets)
    return ridge.coef_.T, ridge.predict(aug(x_test)).argmax(1)


def timm_intermediates(model, images):
    """Every layer's output through timm's own forward_intermediates (independent of vitlab hooks)."""
    x = preprocess(model, images)
    with torch.no_grad():
        if hasattr(model, "blocks"):
            outs = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=True,
                                               output_fmt="NLC", norm=False)
            return [torch.cat([prefix, tokens], 1) for tokens, prefix in outs]  # (B, 1 + patches, D)
        return model.forward_intermediates(x, intermediates_only=True)  # (B, C, H, W) per stage


# ------------------------------------------------------------------------------------------------------------------
# A ViT run by hand, for the intervention tests (analysis.residual, lens, ablation, patching): attention is computed
# from the qkv weights, never through timm's Attention.forward or vitlab's hooks, so it checks both.

def hand_attention(attn, h: torch.Tensor) -> torch.Tensor:
    """The heads' outputs (B, T, heads x head_dim) of timm ``attn`` on normed tokens ``h``: softmax(q k^T / sqrt(d)) v
    per head, heads side by side as the output projection reads them."""
    b, t, _ = h.shape
    heads, d = attn.num_heads, attn.head_dim
    qkv = h @ attn.qkv.weight.T + (0 if attn.qkv.bias is None else attn.qkv.bias)  # (B, T, 3 x heads x d)
    q, k, v = (u.transpose(1, 2) for u in qkv.reshape(b, t, 3, heads, d).unbind(2))  # (B, heads, T, d) each
    q, k = attn.q_norm(q), attn.k_norm(k)  # identities unless the model normalises queries and keys
    a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1)  # (B, heads, T, T)
    return (a @ v).transpose(1, 2).reshape(b, t, heads * d)


def _scale(ls) -> torch.Tensor | float:
    return ls.gamma if isinstance(ls, timm.layers.LayerScale) else 1.0


def hand_block(block, x: torch.Tensor, z=None, attn=None, mlp=None) -> torch.Tensor:
    """One timm Block by hand; ``z``, ``attn``, ``mlp`` (functions of a tensor) edit the heads' outputs (B, T,
    heads x head_dim), the attention branch's output or the MLP's output (B, T, D) before its layer scale."""
    zs = hand_attention(block.attn, block.norm1(x))
    zs = zs if z is None else z(zs)
    out = zs @ block.attn.proj.weight.T + (0 if block.attn.proj.bias is None else block.attn.proj.bias)
    x = x + _scale(block.ls1) * (out if attn is None else attn(out))
    h = block.norm2(x)
    m = block.mlp.fc2(block.mlp.act(block.mlp.fc1(h)))
    return x + _scale(block.ls2) * (m if mlp is None else mlp(m))


def hand_states(model, x: torch.Tensor, edits=None, start: int = 0, first: torch.Tensor | None = None):
    """The residual stream entering each block and after the last (depth + 1 tensors) of normalised input ``x`` (or
    from ``first``, block ``start``'s input), with ``edits[(layer, "z" | "attn" | "mlp")]`` applied."""
    edits = edits or {}
    states = [model.norm_pre(model._pos_embed(model.patch_embed(x)))] if first is None else [first]
    for i, block in enumerate(model.blocks):
        if i >= start:
            states.append(hand_block(block, states[-1], **{s: edits.get((i, s)) for s in ("z", "attn", "mlp")}))
    return states


def hand_logits(model, final: torch.Tensor, how: str | None = None) -> torch.Tensor:
    """Logits of a last residual stream (B, T, D) through timm's own norm and head; ``how`` reads the class token
    ("token") or the mean patch token ("avg") instead of the model's own pooling."""
    x = model.norm(final)
    if how is None:
        return model.forward_head(x)
    x = x[:, 0] if how == "token" else x[:, model.num_prefix_tokens:].mean(1)
    return model.head(model.fc_norm(x))


def small_timm_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random 2-block timm ViT on 32x32 images, 8-pixel patches, 3 heads of 16 channels, 10 classes, with random
    norm scales and biases (so a wrong beta or gamma shows); ``kwargs`` go to timm (pooling, layer scale...)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                              depth=2, num_heads=3, num_classes=10, **kwargs).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("gamma") or name in ("cls_token", "reg_token", "pos_embed"):
                p.copy_(p + 0.3 * torch.randn_like(p))
            if name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return model


def uint8_images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """``n`` random uint8 images (n, 3, size, size)."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
