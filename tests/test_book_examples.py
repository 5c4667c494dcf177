"""The book's chapter experiments (weight init, init schemes and batch norm, hyper-parameter search)
run in a fresh process with ``--quick`` and write PNGs that decode to real pictures."""
import os

import pytest

from fastnn.testing import assert_plot_png, run_example

pytest.importorskip("matplotlib.image", reason="the examples need matplotlib (the plot extra)")

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

# script -> the PNG files it must write
BOOK_EXAMPLES = {
    "weight_init_histograms.py": ["weight_init_histograms.png"],
    "init_and_batchnorm.py": ["init_schemes.png", "batch_norm.png"],
    "hyperparameter_search.py": ["hyperparameter_search.png"],
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Each script run once: ``ran(script) -> (CompletedProcess, out_dir)``."""
    cache = {}

    def get(script):
        if script not in cache:
            out = tmp_path_factory.mktemp(script.replace(".py", ""))
            cache[script] = run_example(os.path.join(EXAMPLES, script), out, timeout=180), out
        return cache[script]

    return get


@pytest.mark.parametrize("script", sorted(BOOK_EXAMPLES))
def test_book_example_runs_and_writes_png(script, ran):
    proc, out = ran(script)
    assert proc.returncode == 0, \
        f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script} printed no summary"
    for name in BOOK_EXAMPLES[script]:
        path = out / name
        assert path.is_file(), f"{script} did not write {name}; wrote {sorted(os.listdir(out))}"
        assert_plot_png(path, min_side=300, min_colours=20)


def test_hyperparameter_search_reports_the_test_set_once_after_the_search(ran):
    proc, _ = ran("hyperparameter_search.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    test_lines = [i for i, line in enumerate(lines) if "test acc" in line.lower()]
    assert len(test_lines) == 1 and test_lines[0] == len(lines) - 1, proc.stdout
    assert any("val acc" in line for line in lines[:test_lines[0]])
