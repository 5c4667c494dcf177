"""The five Keras programs in ``examples/keras/`` (only their imports and ``load_data`` lines changed)
run in a fresh process on the small data sets (``FASTNN_EXAMPLES_QUICK=1``) and reach their results.

The programs draw no seed (as Keras's do not), so each run differs: every bar sits below the
minimum over 10 runs (noted at each bar)."""
import os
import re
import subprocess
import sys

import pytest

KERAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "keras")

# program -> (pattern of its final line, the bar its number must clear: "min" or "max")
PROGRAMS = {
    "mnist_mlp.py": (r"Test accuracy: ([0-9.]+)", "min", 0.7),           # 10 runs: 0.80-0.97
    "mnist_convnet.py": (r"Test accuracy: ([0-9.]+)", "min", 0.8),       # 10 runs: 0.88-0.93
    "imdb.py": (r"results: \[[0-9.e+-]+, ([0-9.]+)\]", "min", 0.85),   # 16 runs: 0.92-0.97
    "reuters.py": (r"results: \[[0-9.e+-]+, ([0-9.]+)\]", "min", 0.6),  # 10 runs: 0.74-0.82
    "boston_housing.py": (r"test MAE: ([0-9.]+)", "max", 3.5),           # 10 runs: 2.45-2.92
}


def test_every_keras_program_is_run_here():
    scripts = {f for f in os.listdir(KERAS) if f.endswith(".py")}
    assert scripts - {"keras_data.py"} == set(PROGRAMS)


def test_the_programs_keep_keras_code_apart_from_imports_and_loading():
    """Every ``fastnn`` mention is an import line or names ``keras_data`` (the ``load_data`` stand-in)."""
    for name in PROGRAMS:
        with open(os.path.join(KERAS, name), encoding="utf-8") as f:
            code = f.read().split('"""', 2)[-1]  # after the docstring
        for line in code.splitlines():
            if "fastnn" in line or "keras_data" in line:
                assert line.startswith(("import ", "from ")), f"{name}: {line!r}"


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_keras_program_runs_and_reaches_its_result(program):
    env = dict(os.environ, FASTNN_EXAMPLES_QUICK="1")
    env.setdefault("FASTNN_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, os.path.join(KERAS, program)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=KERAS)
    assert proc.returncode == 0, f"{program} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    pattern, kind, bar = PROGRAMS[program]
    found = re.findall(pattern, proc.stdout)
    assert found, f"{program} printed no result line\n{proc.stdout[-2000:]}"
    value = float(found[-1])
    assert (value >= bar) if kind == "min" else (value <= bar), f"{program}: {value} against the bar {bar}"
    assert "epoch" in proc.stdout or "fold" in proc.stdout  # Keras's progress output went to stdout
