"""The ``coldstart`` section: ``import fastnn``, build B512 on numba and one train step, timed end to end in
a fresh process, with an empty and then a warm Numba cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


COLDSTART_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import numpy
import fastnn
from fastnn import optimizers
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential
t1 = time.perf_counter()
model = Sequential([Dense(512, "relu", input_shape=(784,)), Dropout(0.2), Dense(512, "relu"), Dropout(0.2),
                    Dense(10, "softmax")], seed=0, backend="numba")
model.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
model.build()
rng = numpy.random.default_rng(0)
x = rng.random((128, 784), dtype=numpy.float32)
y = rng.integers(0, 10, 128)
t2 = time.perf_counter()
loss = model.train_on_batch(x, y)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_step_s": t3 - t2, "loss": loss}))
"""


def _run_timed(code, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"coldstart subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    inner = json.loads(lines[-1]) if lines else {}
    return {"wall_s": wall, **inner}


def run_coldstart(settings, backends):
    from fastnn.backend import select

    if not select.probe_numba().ok:
        return {"skipped": "numba is not available: " + select.probe_numba().reason}
    env = dict(os.environ)
    env.pop("FASTNN_BACKEND", None)
    with tempfile.TemporaryDirectory(prefix="fastnn-bench-numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        baseline = _run_timed("import numpy", env)
        cold = _run_timed(COLDSTART_SCRIPT, env)
        warm = _run_timed(COLDSTART_SCRIPT, env)
    return {"what": "python -c 'import fastnn; build B512 on numba; one train_on_batch of 128'",
            "numba_cache": "NUMBA_CACHE_DIR set to a new empty folder for the cold run, reused by the warm run",
            "python_import_numpy_s": baseline["wall_s"], "cold": cold, "warm": warm}

