"""benchmarks/interventions.py and inside_views.py run end to end and print the figures the docs quote."""
import re

import torch

from vitlab import models

from conftest import benchmark_script


def test_the_interventions_benchmark_times_the_matrix_and_checks_it_against_the_full_analysis(
        fake_cifar, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp_path / "micro.safetensors")
    monkeypatch.setattr("sys.argv", ["interventions.py", "--model", str(path), "--images", "20", "--pairs", "4",
                                     "--min-gap=-1e9"])  # an untrained model: keep every pair
    with benchmark_script("interventions.py") as bench:
        bench.main()
    out = capsys.readouterr().out
    assert "(2 layers x 2 heads)" in out and "20 test images" in out
    assert re.search(r"head-ablation matrix .*: [\d.]+ s \(target under 120 s\); naive .* ratio [\d.]+", out), out
    assert "the matrix agrees with the full analysis: True" in out


def test_the_inside_views_benchmark_times_views_with_and_without_interventions(fake_cifar, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["inside_views.py", "--model", "vit_micro_c10", "--batch", "16", "--steps", "1",
                                     "--repeats", "1"])
    with benchmark_script("inside_views.py") as bench:
        bench.main()
    out = capsys.readouterr().out
    assert re.search(r"^inside view on 100 probe images: [\d.]+ s .*ratio to the epoch", out, re.M), out
    assert re.search(r"^inside view with interventions on 100 probe images: [\d.]+ s", out, re.M), out
