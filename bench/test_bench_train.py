"""pytest-benchmark: one training step of models A, B512, B64, one group per model.

Every backend (and PyTorch eager CPU when ``import torch`` works, same architecture and initial
weights) trains from the same weights on the same batch. Before timing, each implementation's
first step is checked against the NumPy backend's: fastnn backends must give the same loss
(dropout masks are the same hash on every backend); PyTorch must too for model A, which has no
dropout. ``fastnn-bench train`` is the interleaved whole-epoch comparison; this suite is for
quick per-step numbers and CI smoke runs (``--benchmark-disable``).
"""
import numpy
import pytest

from fastnn.bench.cli import MODELS, _TorchImpl, build_model, synthetic_mnist, torch_module
from fastnn.testing import assert_close, host

MODEL_NAMES = ("A", "B512", "B64")


def _batch(name, dtype=numpy.float32):
    x, y = synthetic_mnist(MODELS[name]["batch"], seed=1, dtype=dtype)
    return x, y


def _reference_first_loss(name, dtype):
    model = build_model(name, "numpy", dtype=dtype)
    return model.train_on_batch(*_batch(name, dtype))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_step(benchmark, ops, backend, dtype, name):
    benchmark.group = f"train step {name}"
    model = build_model(name, backend, dtype=dtype)
    before = [w.copy() for w in model.get_weights()]
    x, y = _batch(name, dtype)
    xd, yd = ops.asarray(x), ops.asarray(y)
    first = model.train_on_batch(xd, yd)  # warm-up: compiles kernels, allocates workspaces
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == numpy.float32 else dict(rtol=1e-9, atol=1e-12)
    assert_close(numpy.float64(first), numpy.float64(_reference_first_loss(name, dtype)), **tol)
    loss = benchmark(model.train_on_batch, xd, yd)
    assert numpy.isfinite(loss)
    after = model.get_weights()
    assert all(a.dtype == dtype for a in after)
    assert any(not numpy.array_equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_step_torch(benchmark, name):
    if torch_module() is None:
        pytest.skip("PyTorch is not installed (it is only a comparison, never a dependency)")
    benchmark.group = f"train step {name}"
    weights = build_model(name, "numpy").get_weights()
    x, y = _batch(name)
    impl = _TorchImpl("torch", MODELS[name], weights, [(x, y)])
    xb, yb = impl.batches[0]
    first = impl.step(xb, yb)
    if MODELS[name]["dropout"] == 0:  # same weights, same data, no randomness: the same loss
        assert abs(first - _reference_first_loss(name, numpy.dtype(numpy.float32))) < 1e-4
    loss = benchmark(impl.step, xb, yb)
    assert numpy.isfinite(loss)
    trained = [host(p.detach()) for p in impl.model.parameters()]
    assert not numpy.array_equal(trained[0], numpy.ascontiguousarray(weights[0].T))
