"""Every example script runs in a fresh process with ``--quick`` and writes PNGs that decode."""
import os

import pytest

from fastnn.testing import assert_plot_png, run_example, scripts_no_test_names

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
    assert set(EXPECTED) <= {f for f in os.listdir(EXAMPLES) if f.endswith(".py")}
    assert scripts_no_test_names(EXAMPLES, os.path.dirname(os.path.abspath(__file__))) == []


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_and_writes_png(script, tmp_path):
    proc = run_example(os.path.join(EXAMPLES, script), tmp_path, timeout=120)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script} printed no summary line"
    for name in EXPECTED[script]:
        path = tmp_path / name
        assert path.is_file(), f"{script} did not write {name}; wrote {sorted(os.listdir(tmp_path))}"
        assert_plot_png(path, min_side=200)
