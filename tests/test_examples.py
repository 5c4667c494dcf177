"""Every example script runs in a fresh process with ``--quick`` and writes PNGs that decode."""
import os
import subprocess
import sys

import pytest

from fastnn.testing import assert_plot_png

pytest.importorskip("matplotlib.image", reason="the examples need matplotlib (the plot extra)")

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

# script -> the PNG files it must write
EXPECTED = {
    "activation_functions.py": ["activation_functions.png"],
    "gradient_field.py": ["gradient_field.png"],
    "optimizer_paths.py": ["optimizer_paths.png"],
    "overfitting.py": ["overfitting.png"],
    "learning_rates.py": ["learning_rates.png"],
}


def test_every_example_is_run_by_some_test():
    """Each examples/*.py is named by a test module that runs it (this one, or another family's)."""
    scripts = {f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_")}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    text = ""
    for name in os.listdir(tests_dir):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(tests_dir, name), encoding="utf-8") as f:
                text += f.read()
    assert set(EXPECTED) <= scripts
    assert [s for s in sorted(scripts) if f'"{s}"' not in text] == []


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_and_writes_png(script, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script} printed no summary line"
    for name in EXPECTED[script]:
        path = tmp_path / name
        assert path.is_file(), f"{script} did not write {name}; wrote {sorted(os.listdir(tmp_path))}"
        assert_plot_png(path, min_side=200)
