"""``examples/cnn_digits.py --quick`` runs in a fresh process, prints both accuracies and writes PNGs that decode."""
import os
import re
import subprocess
import sys

import pytest

matplotlib_image = pytest.importorskip("matplotlib.image", reason="the examples need matplotlib (the plot extra)")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "cnn_digits.py")


def test_cnn_example_runs_quick_and_writes_curves(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # tiny GEMMs: one BLAS thread is fastest
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(tmp_path), "--backend", "numpy"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"test accuracy CNN (\d\.\d+) .* vs MLP (\d\.\d+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) > 0.5 and float(match.group(2)) > 0.5, proc.stdout
    for name in ("cnn_digits.png", "cnn_digits_cnn_history.png", "cnn_digits_mlp_history.png"):
        image = matplotlib_image.imread(str(tmp_path / name))
        assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 200 and image.std() > 0.01, name
