"""``fastnn.warmup()`` compiles every Numba kernel up front, so the first training step compiles nothing."""
import os
import subprocess
import sys

import pytest

import fastnn
from fastnn.testing import has_numba

CODE = r"""
import json, sys, time, numpy
import fastnn
from fastnn.kernels.cpu import activations, dropout, losses, normalization, optimizers, conv
modules = [activations, dropout, losses, normalization, optimizers, conv]
def kernels():
    return {f"{m.__name__}.{n}": len(getattr(m, n).signatures) for m in modules for n in dir(m)
            if hasattr(getattr(m, n), "signatures")}
seconds = fastnn.warmup("numba")
after = kernels()
from fastnn.models import Sequential
from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
m = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dropout(0.2), Dense(3, activation="softmax")], seed=0)
m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
m.fit(numpy.random.rand(16, 5).astype("float32"), numpy.arange(16) % 3, epochs=1, verbose=0)
c = Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 6, 6)), MaxPooling2D(2),
                Flatten(), Dense(3, activation="softmax")], seed=0)
c.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
c.fit(numpy.random.rand(8, 1, 6, 6).astype("float32"), numpy.arange(8) % 3, epochs=1, verbose=0)
print(json.dumps({"seconds": seconds, "after": after, "after_fit": kernels()}))
"""


@pytest.mark.skipif(not has_numba(), reason="needs numba")
def test_warmup_compiles_everything_training_needs(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    import json

    record = json.loads(proc.stdout.strip().splitlines()[-1])
    compiled = {k: v for k, v in record["after"].items() if v}
    assert len(compiled) >= 15, record["after"]
    assert record["after_fit"] == record["after"], "training compiled kernels that warmup() missed"


def test_warmup_runs_on_every_backend(backend):
    assert fastnn.warmup(backend, dtypes=("float32",)) >= 0
