"""Kill-and-resume: training killed with SIGKILL at a random step and resumed from its last backup
ends with weights (and optimizer state) bit-identical to an uninterrupted run, on CPU backends."""
import os
import random
import signal
import subprocess
import sys
import zlib

import numpy
import pytest

from fastnn.testing import has_numba

WORKER = os.path.join(os.path.dirname(__file__), "helpers", "resume_worker.py")
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
TOTAL_STEPS = 6 * 9  # 6 epochs of 9 batches (270 training samples, batch 32)


def run_worker(folder, backend, opt, dropout, freq, out, kill_at=None):
    """Run the worker; with ``kill_at``, SIGKILL it once it reports that optimizer step. Returns the exit code."""
    cmd = [sys.executable, WORKER, str(folder), backend, opt, dropout, str(freq), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    if kill_at is not None:
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1]) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
    _, err = proc.communicate(timeout=120)
    if kill_at is None and proc.returncode != 0:
        raise AssertionError(f"worker failed:\n{err}")
    return proc.returncode


def kill_and_resume(tmp_path, backend, opt, dropout, freq, seed):
    ref = tmp_path / "ref.npz"
    run_worker(tmp_path / "ref", backend, opt, dropout, freq, ref)
    rng = random.Random(seed)
    folder, out = tmp_path / "killed", tmp_path / "killed.npz"
    kills = []
    for _ in range(2):  # killed twice at random steps, then left to finish
        kill_at = rng.randint(2, TOTAL_STEPS - 2)
        if run_worker(folder, backend, opt, dropout, freq, out, kill_at=kill_at) == -signal.SIGKILL:
            kills.append(kill_at)
    run_worker(folder, backend, opt, dropout, freq, out)
    a, b = numpy.load(ref), numpy.load(out)
    assert a.files == b.files
    for key in a.files:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=f"{opt}: array {key} after kills at {kills}")
    return kills


CI_CASES = [("numba" if has_numba() else "numpy", opt, "1", 5) for opt in OPTIMIZERS] + [
    ("numpy", "adam", "0", "epoch"), ("numpy", "sgd", "1", 4), ("numpy", "momentum", "1", "epoch")]


@pytest.mark.parametrize("backend,opt,dropout,freq", CI_CASES)
def test_killed_training_resumes_bit_identically(tmp_path, backend, opt, dropout, freq):
    kills = kill_and_resume(tmp_path, backend, opt, dropout, freq, seed=zlib.crc32(f"{opt}{dropout}{freq}".encode()))
    assert kills, "the worker finished before it could be killed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not has_numba(), reason="needs numba"))])
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("dropout", ["0", "1"])
@pytest.mark.parametrize("freq", [1, 7, "epoch"])
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_training_resumes_bit_identically_full_matrix(tmp_path, backend, opt, dropout, freq, seed):
    kill_and_resume(tmp_path, backend, opt, dropout, freq, seed)


def test_resumed_epoch_logs_are_bit_identical(tmp_path):
    """The interrupted epoch's running sums come back in the model's dtype, so the resumed run's
    History equals the uninterrupted one exactly (they used to continue in float64: ~1e-7 off)."""
    from fastnn.callbacks import Callback
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    class Stop(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.model._step == 22:   # epoch 1, batch 2: sixteen more batches to add to the restored sums
                raise KeyboardInterrupt

    def make():
        m = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dropout(0.2), Dense(3, activation="softmax")],
                       seed=2)
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m
    rng = numpy.random.default_rng(0)
    x, y = rng.standard_normal((600, 6)).astype(numpy.float32), rng.integers(0, 3, 600)
    ref = make()
    h_ref = ref.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=4, checkpoint_dir=tmp_path / "a", save_freq=1)
    model = make()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=4, checkpoint_dir=tmp_path / "b", save_freq=1,
                  callbacks=[Stop()])
    h = make().fit(x, y, batch_size=32, epochs=3, verbose=0, seed=4, checkpoint_dir=tmp_path / "b", save_freq=1)
    assert h.history == h_ref.history
