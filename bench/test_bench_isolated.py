"""``fastnn.bench.isolated``: a training row built and timed in a worker process of its own (the CPU
peers of ``fastnn-bench train``). Checked with ``ScratchImpl`` (NumPy only, so it runs wherever the
tests do): the worker trains as the same class does in this process, times its own epochs, counts as
this run's CPU time while it lives, reports its errors by name, and ends on ``close``."""
import time

import numpy
import pytest

from fastnn.bench import isolated, machine
from fastnn.bench.isolated import Isolated, IsolatedError
from fastnn.bench.models import MODELS, build_model, synthetic_mnist
from fastnn.bench.peers import ScratchImpl
from fastnn.bench.train import _Failed, _peer, epoch_batches


def _setup(name="A", n=400):
    spec = dict(MODELS[name])
    x, y = synthetic_mnist(n)
    return spec, build_model(spec, "numpy").get_weights(), epoch_batches(x, y, spec["batch"], n)


def test_worker_trains_as_the_same_class_here_and_times_its_epochs():
    spec, weights, batches = _setup()
    here = ScratchImpl("numpy-scratch", spec, weights, batches)
    there = Isolated(None, "fastnn.bench.peers", "ScratchImpl", "numpy-scratch", spec, weights, batches)
    try:
        assert there.name == "numpy-scratch" and len(there.batches) == len(batches) == 4
        assert not hasattr(there, "prepare")  # ScratchImpl has none: warm_up must not call one
        losses_here = [here.step(*here.batches[i]) for i in range(len(batches))]
        losses_there = [there.step(*there.batches[i]) for i in range(len(batches))]
        assert numpy.isfinite(losses_there).all() and losses_there[0] > losses_there[-1] * 0.5
        numpy.testing.assert_array_equal(losses_there, losses_here)  # same class, same data: same bits
        t = there.clock.time(lambda: pytest.fail("the parent's fn must not run"), 2)
        assert 0 < t < 5
        assert isolated.workers_cpu_s() > 0  # its CPU time is this run's, not another process's
        before = machine.cpu_snapshot()
        there.epoch()
        after = machine.cpu_snapshot()
        assert after[1] - before[1] > 0
    finally:
        there.close()
    assert not there._proc.is_alive() and there._proc.pid not in isolated._LIVE
    assert isolated.workers_cpu_s() == 0


def test_errors_come_back_named():
    spec, weights, batches = _setup()
    with pytest.raises(IsolatedError, match="torch-x: .*NoSuchImpl"):
        Isolated(None, "fastnn.bench.peers", "NoSuchImpl", "torch-x", spec, weights, batches)
    there = Isolated(None, "fastnn.bench.peers", "ScratchImpl", "numpy-scratch", spec, weights, batches)
    try:
        with pytest.raises(IsolatedError, match="numpy-scratch: IndexError"):
            there.step(99)  # no batch 99
        assert numpy.isfinite(there.step(0))  # the worker goes on after an error
    finally:
        there.close()


def test_a_peer_that_cannot_be_built_becomes_a_failing_row():
    spec, weights, batches = _setup()
    row = _peer(None, "NoSuchImpl", "torch", spec, weights, batches)
    assert isinstance(row, _Failed) and row.name == "torch"
    with pytest.raises(IsolatedError, match="NoSuchImpl"):
        row.step(*row.batches[0])


def test_settle_returns_once_the_process_is_idle():
    t0 = time.perf_counter()
    isolated._settle(limit_s=1.0)
    assert time.perf_counter() - t0 < 0.5  # this test process is idle between calls
