"""One-off migration (issue 27): give the runs of results files older than the compute totals their
``images_seen_total`` and ``train_flops_total`` (a fine-tuned run's init's training counted from its sidecar).

    PYTHONPATH=. python .ci/add_compute_totals.py data/results/vit_vs_resnet data/results/mpp_finetune
"""
import sys

from vitlab import result_files
from vitlab.training.sweep import init_history

for results in sys.argv[1:]:
    result_files.write_runs(results, result_files.read_runs(results, init_history), result_files.read_commands(results))
