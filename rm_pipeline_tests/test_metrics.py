"""The light helpers every stage, the training child and the benchmarks share: pair credit and peak memory."""

import subprocess
import sys

import numpy as np

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE, pair_credit
from rm_pipeline_tests.conftest import REPO_ROOT


def test_pair_credit_counts_a_tie_half_right():
    margins = np.array([1.0, -1.0, 0.0, TIE_TOLERANCE / 2, -TIE_TOLERANCE / 2, 10 * TIE_TOLERANCE])
    assert pair_credit(margins).tolist() == [1.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    # A model that gives every answer the same reward scores chance, not zero.
    assert pair_credit(np.zeros(4)).mean() == 0.5


def test_peak_memory_grows_by_what_the_process_allocates():
    # A fresh process, so the pytest process's own earlier peak cannot hide the growth.
    script = (
        "import numpy as np; from rm_pipeline.lib.hardware import peak_memory_mb; "
        "before = peak_memory_mb('cpu'); block = np.ones(200 * 2**20, dtype=np.uint8); "
        "print(before, peak_memory_mb('cpu'))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    before, after = map(float, done.stdout.split())
    assert before > 0
    assert 180 <= after - before <= 260  # megabytes: neither KiB nor bytes read as MB


def test_the_training_child_imports_no_dagster():
    # The child process needs dagster_pipes only; all of Dagster costs seconds and memory in every run.
    script = (
        "import sys, rm_pipeline.training_worker; "
        "print(sorted(name for name in sys.modules if name == 'dagster' or name.startswith('dagster.')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert done.stdout.strip() == "[]"
