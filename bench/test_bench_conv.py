"""pytest-benchmark: one ``Conv2D`` (3x3, valid, ReLU) forward + backward at MNIST-like shapes,
batch 128, 1x28x28 inputs, 32 and 64 filters, float32, on each backend and on PyTorch's CPU
``conv2d`` where torch imports (the same work: output, dW, db and dx).

``pytest bench/test_bench_conv.py --benchmark-only`` times them; with ``--benchmark-disable`` (the
default) each runs once and the assertions compare every backend's output and gradients with the
NumPy reference layer (and PyTorch's with the loop-free NumPy result) on the same weights.
"""
import numpy
import pytest

import fastnn
from fastnn.layers import Conv2D
from fastnn.testing import host

BATCH, SHAPE, KERNEL = 128, (1, 28, 28), 3
FILTERS = [32, 64]


def _close(got, want):
    """float32 sums of up to 128*26*26 terms: compare relative to the largest entry."""
    numpy.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-5 * float(numpy.abs(want).max()))


def _data(filters):
    rng = numpy.random.default_rng(filters)
    x = rng.standard_normal((BATCH,) + SHAPE).astype(numpy.float32)
    W = (rng.standard_normal((filters, SHAPE[0], KERNEL, KERNEL)) * 0.3).astype(numpy.float32)
    b = (rng.standard_normal(filters) * 0.1).astype(numpy.float32)
    oh = SHAPE[1] - KERNEL + 1
    dout = rng.standard_normal((BATCH, filters, oh, oh)).astype(numpy.float32)
    return x, W, b, dout


def _layer(backend, W, b):
    with fastnn.using(backend) as ops:
        layer = Conv2D(W.shape[0], KERNEL, activation="relu", dtype="float32")
        layer.build((None,) + SHAPE)
        layer.W[...] = ops.asarray(W)
        layer.b[...] = ops.asarray(b)
    return layer


def _step(layer, x, dout, backend):
    with fastnn.using(backend):   # the layer's backend, whichever is the default on this machine
        y = layer.forward(x)
        return y, layer.backward(dout)


_REF = {}


def _reference(filters):
    """The NumPy backend's output and gradients (cached per filter count)."""
    if filters not in _REF:
        x, W, b, dout = _data(filters)
        layer = _layer("numpy", W, b)
        y, dx = _step(layer, x, dout, "numpy")
        _REF[filters] = (y, dx, layer.dW.copy(), layer.db.copy())
    return _REF[filters]


@pytest.mark.parametrize("filters", FILTERS)
def test_conv2d_forward_backward(benchmark, ops, timed, filters):
    x, W, b, dout = _data(filters)
    layer = _layer(ops.name, W, b)
    xd, dd = ops.asarray(x), ops.asarray(dout)
    benchmark.group = f"conv2d 3x3 fwd+bwd B{BATCH} 1x28x28 -> {filters}"
    y, dx = benchmark(timed(lambda: _step(layer, xd, dd, ops.name)))
    for got, want in zip((y, dx, layer.dW, layer.db), _reference(filters)):
        _close(host(got), want)


@pytest.mark.parametrize("filters", FILTERS)
def test_torch_cpu_conv2d_forward_backward(benchmark, filters):
    torch = pytest.importorskip("torch")
    x, W, b, dout = _data(filters)
    tx = torch.tensor(x, requires_grad=True)
    tW, tb = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
    td = torch.tensor(dout)

    def step():
        for t in (tx, tW, tb):
            t.grad = None
        y = torch.relu(torch.nn.functional.conv2d(tx, tW, tb))
        y.backward(td)
        return y

    benchmark.group = f"conv2d 3x3 fwd+bwd B{BATCH} 1x28x28 -> {filters}"
    y = benchmark(step)
    for got, want in zip((y, tx.grad, tW.grad, tb.grad), _reference(filters)):
        _close(got.detach().numpy(), want)
