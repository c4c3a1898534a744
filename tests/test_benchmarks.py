"""benchmarks/train_step.py: its FLOP count, its variants and where its profile puts the time."""
from types import SimpleNamespace

import pytest
import torch

from vitlab.models import ARCHITECTURES

from conftest import benchmark_script

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("train_step.py") as module:
        yield module


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a second one waits on the scheduler whenever another process loads the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vit_multiply_adds(name: str) -> tuple[int, int]:
    """(multiply-adds of one image's forward pass, those of them in the patch embedding), by hand."""
    a = ARCHITECTURES[name]
    patches = (a.img_size // a.patch_size) ** 2
    tokens, dim, hidden = patches + 1, a.embed_dim, int(a.embed_dim * a.mlp_ratio)
    linears = tokens * (dim * 3 * dim + dim * dim + dim * hidden + hidden * dim)  # qkv, proj, fc1, fc2
    attention = 2 * tokens * tokens * dim  # q @ k^T and attn @ v, over all heads
    patch_embed = patches * 3 * a.patch_size**2 * dim
    return a.depth * (linears + attention) + patch_embed + dim * a.num_classes, patch_embed


@pytest.mark.parametrize("name", ["vit_micro_c10", "vit_tiny_c10"])
def test_flops_per_image_counts_every_matmul_and_the_attention(bench, name):
    macs, patch_embed = vit_multiply_adds(name)
    # Backward costs twice the forward, except the patch embedding: its input needs no gradient.
    expected = 2 * macs + 2 * 2 * (macs - patch_embed) + 2 * patch_embed
    assert bench.flops_per_image(name, CPU) == expected
    if name == "vit_tiny_c10":
        assert round(expected / 1e6) == 347  # the figure


def test_parse_variant(bench):
    v = bench.parse_variant("bf16+fused+batch64")
    assert (v.amp, v.optim, v.batch, v.fused_attn) == (torch.bfloat16, "fused", 64, True)
    v = bench.parse_variant("fp32+eager-attn")
    assert (v.amp, v.optim, v.batch, v.fused_attn) == (None, "vitlab", None, False)
    with pytest.raises(ValueError, match="unknown part 'fp16'"):
        bench.parse_variant("fp16")
    with pytest.raises(ValueError):
        bench.parse_variant("batch0")


def test_variants_start_from_the_same_weights_and_batch(bench):
    losses = {name: bench.make_step("vit_micro_c10", 4, CPU, bench.parse_variant(name))().item()
              for name in ("fp32", "eager-attn", "fused", "bf16")}
    for name in ("eager-attn", "fused"):
        assert losses[name] == pytest.approx(losses["fp32"], abs=1e-5)
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)
    # ...and the step trains: the loss on the fixed batch falls.
    step = bench.make_step("vit_micro_c10", 4, CPU, bench.parse_variant("fused"))
    first = step().item()
    for _ in range(3):
        last = step().item()
    assert last < first


def _chain(*names):
    """A stand-in profiler event at the end of a call chain (outermost first)."""
    event = None
    for name in names:
        event = SimpleNamespace(name=name, cpu_parent=event)
    return event


@pytest.mark.parametrize("chain, share", [
    (("aten::linear", "aten::to", "aten::_to_copy", "aten::copy_"), "casts"),
    (("aten::linear", "aten::addmm", "aten::copy_"), "matmul"),
    (("AddmmBackward0", "aten::mm"), "matmul"),
    (("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu"), "attention"),
    (("NativeLayerNormBackward0", "aten::native_layer_norm_backward"), "softmax/norm/gelu"),
    (("Optimizer.step#AdamW.step", "aten::to", "aten::_to_copy"), "optimizer"),
    (("aten::clone", "aten::copy_"), "other"),
])
def test_category_takes_the_innermost_matching_op(bench, chain, share):
    assert bench.category(_chain("train_step", *chain)) == share


def test_profile_counts_ops_per_step_and_finds_the_casts(bench):
    a = ARCHITECTURES["vit_micro_c10"]
    profiles = {name: bench.profile_steps(bench.make_step("vit_micro_c10", 4, CPU, bench.parse_variant(name)), 2,
                                       warmup=1)
                for name in ("fp32", "bf16")}
    for prof in profiles.values():
        assert prof.ops["aten::addmm"][1] == 4 * a.depth + 1  # qkv, proj, fc1, fc2 per block, and the head
        assert prof.ops["aten::mm"][1] == 2 * (4 * a.depth + 1)  # their input and weight gradients
        assert prof.seconds["matmul"] > 0 and prof.seconds["optimizer"] > 0
        assert sum(prof.share(name) for name in bench.SHARES) == pytest.approx(1)
    assert profiles["fp32"].share("casts") < 0.01
    assert profiles["bf16"].seconds["casts"] > 10 * profiles["fp32"].seconds["casts"]


def test_suite_time_sums_each_groups_phases_and_scales_to_the_wall(capsys, tmp_path):
    log = tmp_path / "ci.log"
    log.write_text("\n".join([
        "============================= slowest durations =============================",
        "30.00s call     tests/test_browser.py::test_static_path[01_embedding_filters.ipynb]",
        "10.00s call     tests/test_saliency.py::test_x",
        "5.00s setup    tests/test_saliency.py::test_x",
        "2.50s teardown tests/test_browser.py::test_static_path[01_embedding_filters.ipynb]",
        "2.50s call     tests/test_data.py::test_y",
        "=========== 3 passed, 4 skipped, 6 warnings in 25.00s (0:00:25) ============"]))
    with benchmark_script("suite_time.py") as module:
        seconds, wall = module.read(log.read_text())
        assert seconds == {"tests/test_browser.py::test_static_path[01_embedding_filters.ipynb]": 32.5,
                           "tests/test_saliency.py::test_x": 15.0, "tests/test_data.py::test_y": 2.5}
        assert wall == 25.0
        # a node id counts in its first matching group only
        assert module.shares(seconds, [("maps", "saliency|static"), ("static", "static_path")]) == {
            "maps": 47.5, "static": 0.0, "other": 2.5}
        module.main([str(log), "--group", "static=static_path", "--group", "maps=saliency"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 tests, 50 worker seconds, pytest's wall time 25 s"
    assert out[1] == "  static: 32 worker seconds (65.0%), about 16 s of the wall time"  # 32.5 / 50 of 25 s
    assert out[2] == "  maps: 15 worker seconds (30.0%), about 8 s of the wall time"
    assert out[3] == "  other: 2 worker seconds (5.0%), about 1 s of the wall time"
