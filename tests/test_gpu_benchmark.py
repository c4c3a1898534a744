"""benchmarks/gpu.py and the CIFAR-10 subset file it trains on (vitlab.data.write_subset / read_subset)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlab import data, settings
from vitlab.models import ARCHITECTURES

from conftest import benchmark_script, make_batches

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one thread is as fast, and a busy machine does not stall its spinning peers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("gpu.py") as module:
        yield module


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A fake CIFAR-10 (640 training images, 64 per class; 100 test, 10 per class) that VITLAB_DATA points at."""
    root = tmp_path / "fake-data"
    expected = make_batches(root, per_batch=128, test_size=100)
    monkeypatch.setenv("VITLAB_DATA", str(root))
    return expected


def _labels_by_image(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    return {image.tobytes(): int(label) for image, label in zip(images, labels)}


def test_subset_round_trip_is_stratified_and_drawn_from_the_source(source, tmp_path):
    path = data.write_subset(tmp_path / "subset.npz", train_size=50, test_size=20, seed=3)
    assert path == tmp_path / "subset.npz"
    train_x, train_y, test_x, test_y = data.read_subset(path)
    assert (train_x.dtype, train_y.dtype, test_x.dtype, test_y.dtype) == (torch.uint8, torch.int64) * 2
    assert train_x.shape == (50, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    assert torch.bincount(train_y, minlength=10).tolist() == [5] * 10
    assert torch.bincount(test_y, minlength=10).tolist() == [2] * 10
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        known = _labels_by_image(*source[split])  # every image is a source image, with its own label, once
        assert [known[image.tobytes()] for image in x.numpy()] == y.tolist()
        assert len({image.tobytes() for image in x.numpy()}) == len(x)
    # The trainer's data for TrainConfig(subset_size=50, seed=3, eval_size=20), in the same order.
    images, labels = data.cifar10("train")
    assert torch.equal(train_x, images[data.stratified_subset(labels, 50, 3)])


def test_subset_default_path_is_in_the_cache_folder(source):
    path = data.write_subset(train_size=10, test_size=10)
    assert path == settings.cache_dir() / data.SUBSET_FILE
    assert len(data.read_subset()[0]) == 10


def test_subset_refuses_to_overwrite(source, tmp_path):
    path = data.write_subset(tmp_path / "subset.npz", train_size=20, test_size=10)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists: delete it") as err:
        data.write_subset(path, train_size=30, test_size=10)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".subset")] == []  # no temporary left


def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return dict(train_x=rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), train_y=np.arange(20) % 10,
                test_x=rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8), test_y=np.arange(10))


@pytest.mark.parametrize("change, why", [
    (lambda a: a.pop("test_y"), r"it lacks \['test_y'\]"),
    (lambda a: a.update(train_x=a["train_x"].astype(np.float32)), "train: it holds float32 images"),
    (lambda a: a.update(train_x=a["train_x"][:, :, :16]), r"train: .*expected uint8 \(20, 3, 32, 32\)"),
    (lambda a: a.update(test_y=a["test_y"] + 5), r"test: its labels span 5\.\.14"),
    (lambda a: a.update(test_y=a["test_y"][:9]), r"test: .*expected uint8 \(9, 3, 32, 32\)"),
])
def test_subset_reader_refuses_a_malformed_file(tmp_path, change, why):
    arrays = _good_arrays()
    np.savez(tmp_path / "good.npz", **arrays)
    assert len(data.read_subset(tmp_path / "good.npz")[0]) == 20
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(data.CorruptDataError, match=f"bad.npz is not a CIFAR-10 subset file: {why}") as err:
        data.read_subset(tmp_path / "bad.npz")
    assert "\n" not in str(err.value)


def test_subset_reader_refuses_other_files_and_names_a_missing_one(tmp_path):
    (tmp_path / "text.npz").write_text("not numpy\n")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(data.CorruptDataError, match="cannot be read"):
        data.read_subset(tmp_path / "text.npz")
    with pytest.raises(data.CorruptDataError, match="not an .npz archive"):
        data.read_subset(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 subset file at .*write_subset"):
        data.read_subset(tmp_path / "absent.npz")


def test_make_subset_flag_writes_once(bench, source, tmp_path, capsys):
    path = tmp_path / "s.npz"
    args = ["--make-subset", "--subset", str(path), "--train-size", "20", "--test-size", "10"]
    assert bench.main(args) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    assert bench.main(args) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_without_a_gpu_it_says_so_and_exits_0(bench):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == bench.NO_GPU + "\n"
    assert done.stdout.startswith("no CUDA GPU here")


def test_time_to_accuracy_stops_at_the_target_or_reports_the_best(bench):
    gen = torch.Generator().manual_seed(0)
    subset = (torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(40) % 10,
              torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(20) % 10)
    reached = bench.time_to_accuracy(subset, 0.0, 3, 8, CPU, model_name="vit_micro_c10", verbose=False)
    assert (reached.reached, len(reached.accuracies)) == (1, 1)  # stopped at once
    assert "0% reached at epoch 1" in reached.summary()
    missed = bench.time_to_accuracy(subset, 1.01, 2, 8, CPU, model_name="vit_micro_c10", verbose=False)
    assert missed.reached is None and len(missed.accuracies) == 2
    assert all(acc in {k / 20 for k in range(21)} for acc in missed.accuracies)  # fractions of 20 test images
    assert missed.seconds[0] < missed.seconds[1] and missed.images_per_second > 0
    assert f"best {missed.accuracies[missed.best - 1]:.1%} at epoch {missed.best}" in missed.summary()
    with pytest.raises(ValueError, match="exceeds the subset's 40 training images"):
        bench.time_to_accuracy(subset, 0.5, 1, 64, CPU, model_name="vit_micro_c10")


@pytest.mark.parametrize("name", ["vit_micro_c10", "vit_tiny_c10"])
def test_flops_per_image_are_model_flops(bench, name):
    a = ARCHITECTURES[name]
    patches = (a.img_size // a.patch_size) ** 2
    tokens, dim, hidden = patches + 1, a.embed_dim, int(a.embed_dim * a.mlp_ratio)
    block = tokens * (4 * dim * dim + 2 * dim * hidden) + 2 * tokens * tokens * dim  # qkv, proj, fc1, fc2; attention
    patch_embed = patches * 3 * a.patch_size**2 * dim
    macs = a.depth * block + patch_embed + dim * a.num_classes  # multiply-adds of one image's forward
    # Backward is twice the forward (attention too: no recomputation), except the patch embedding,
    # whose input needs no gradient.
    expected = 2 * macs + 2 * 2 * (macs - patch_embed) + 2 * patch_embed
    model = bench.make_model(name)
    assert bench.flops_per_image(model, (32, 32), CPU) == expected
    assert all(p.grad is None for p in model.parameters())
    if name == "vit_tiny_c10":
        assert round(expected / 1e6) == 347  # the figure in docs/performance.md


def test_throughput_step_on_the_cpu(bench):
    t = bench.measure_throughput("vit_micro_c10", batch=4, steps=2, warmup=1, device=CPU, compile=False)
    assert (t.input_size, t.batch, t.compiled) == ((32, 32), 4, False)
    assert t.flops_per_image == bench.flops_per_image(bench.make_model("vit_micro_c10"), (32, 32), CPU)
    assert t.images_per_second > 0 and math.isfinite(t.final_loss)
    assert t.mfu(t.images_per_second * t.flops_per_image) == pytest.approx(1.0)


def test_main_on_a_pretend_gpu_trains_times_and_prints_the_summary(bench, source, tmp_path, monkeypatch, capsys):
    """The CUDA flow of main, wired end to end: training runs small on the CPU, step timings are stand-ins."""
    subset = data.write_subset(tmp_path / "s.npz", train_size=40, test_size=20)
    train = bench.time_to_accuracy
    calls = []
    monkeypatch.setattr(bench, "cuda_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(bench.torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench, "matmul_flops", lambda device: 7e14)
    monkeypatch.setattr(bench, "time_to_accuracy", lambda subset, target, epochs, batch, device, seed: train(
        subset, target, epochs, batch, CPU, model_name="vit_micro_c10", seed=seed))
    monkeypatch.setattr(bench, "measure_throughput", lambda name, batch, steps, warmup, device, compiled: (
        calls.append((name, batch, steps, warmup, device.type, compiled))
        or bench.Throughput(model=name, input_size=(32, 32), batch=batch, compiled=compiled,
                            images_per_second=1e5, flops_per_image=2e9, first_step_seconds=1.0, final_loss=2.3)))
    args = ["--subset", str(subset), "--epochs", "2", "--batch", "8", "--target", "1.01", "--steps", "7"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("GPU: NVIDIA H100 80GB HBM3; bf16 peak 989 TFLOP/s (nominal dense); measured")
    assert "time to accuracy: 101% not reached in 2 epochs; best" in out
    assert [c[:5] for c in calls] == [(m, 8, 7, 10, "cuda") for m in bench.MODELS for _ in "ab"]
    assert [c[5] for c in calls] == [False, True, False, True]
    summary = out[out.index("summary on NVIDIA H100 80GB HBM3"):].splitlines()
    assert "40 training images, batch 8, 20 test images" in summary[1]
    assert len(summary) == 3 + 4  # title, training, table head, 2 models x (eager, compiled)
    # 1e5 images/s x 2 GFLOP = 200 TFLOP/s, 20.2% of 989
    assert summary[-1].split() == ["vit_small_patch16_224", "32x32", "8", "yes", "100,000", "2.00", "200.0", "20.2%",
                                   "1.0"]


def test_main_without_the_subset_says_how_to_make_it(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "cuda_device", lambda: torch.device("cuda"))
    assert bench.main(["--subset", str(tmp_path / "absent.npz")]) == 1
    err = capsys.readouterr().err
    assert "no CIFAR-10 subset file at" in err and "--make-subset" in err and err.count("\n") == 1


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
                                        ("Tesla T4", None)])
def test_nominal_peak(bench, name, peak):
    assert bench.nominal_peak(name) == peak


@pytest.mark.gpu
def test_on_cuda_compiled_step_and_training(bench):
    cuda = torch.device("cuda")
    eager = bench.measure_throughput("vit_micro_c10", batch=32, steps=3, warmup=2, device=cuda, compile=False)
    compiled = bench.measure_throughput("vit_micro_c10", batch=32, steps=3, warmup=2, device=cuda, compile=True)
    assert compiled.flops_per_image == eager.flops_per_image > 0
    assert math.isfinite(compiled.final_loss) and compiled.images_per_second > 0
    gen = torch.Generator().manual_seed(0)
    subset = (torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(64) % 10,
              torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(20) % 10)
    result = bench.time_to_accuracy(subset, 1.01, 2, 16, cuda, model_name="vit_micro_c10", verbose=False)
    assert len(result.accuracies) == 2 and result.images_per_second > 0
