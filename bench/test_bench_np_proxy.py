"""pytest-benchmark: what ``from fastnn import np`` costs against ``import numpy as np``.

Two groups, each timed with plain ``numpy``, with ``fastnn.np`` on the numpy backend set by
``fastnn.use("numpy")`` (the drop-in case), and inside ``with fastnn.using("numpy"):``:

- ``np attribute access``: 4,000 lookups (``np.exp``, ``np.zeros``, ``np.sum``, ``np.float64``)
  and nothing else, the proxy's own cost (issue 19: "within ~2x of numpy's own").
- ``np book loop``: the book's ch04 numerical gradient (``np.nditer`` over every parameter, two
  loss evaluations each) of a small two-layer sigmoid network, written as the book writes it;
  the drop-in target is "within 1.1x of plain NumPy".

``pytest bench/test_bench_np_proxy.py --benchmark-only`` times them; with ``--benchmark-disable``
(the default in pytest.ini) each runs once and the assertions check that every variant computes
the same thing, so the file doubles as a smoke test.
"""
import numpy
import pytest

import fastnn
from fastnn import np as fastnn_np

VARIANTS = ("numpy", "fastnn.np", "fastnn.np-using")


@pytest.fixture(params=VARIANTS)
def xp(request):
    """The array module a book script would see under ``np``."""
    if request.param == "numpy":
        yield numpy
        return
    before = fastnn.current()
    fastnn.use("numpy")
    try:
        if request.param == "fastnn.np-using":
            with fastnn.using("numpy"):
                yield fastnn_np
        else:
            yield fastnn_np
    finally:
        fastnn.use(before)


def access(np, n=1000):
    for _ in range(n):
        np.exp
        np.zeros
        np.sum
        np.float64
    return np.exp


def test_attribute_access(benchmark, xp):
    benchmark.group = "np attribute access (4000 lookups)"
    assert benchmark(access, xp) is numpy.exp


# ---- the book's ch04 code, with ``np`` passed in so one body runs on each variant ----
def sigmoid(np, x):
    return 1 / (1 + np.exp(-x))


def softmax(np, x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def cross_entropy_error(np, y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def loss(np, params, x, t):
    z1 = sigmoid(np, np.dot(x, params["W1"]) + params["b1"])
    y = softmax(np, np.dot(z1, params["W2"]) + params["b2"])
    return cross_entropy_error(np, y, t)


def numerical_gradient(np, f, x):
    h = 1e-4
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


def book_gradient(np, sizes=(10, 8, 3), batch=4):
    rng = numpy.random.default_rng(0)
    n_in, n_hidden, n_out = sizes
    params = {"W1": 0.01 * rng.standard_normal((n_in, n_hidden)), "b1": np.zeros(n_hidden),
              "W2": 0.01 * rng.standard_normal((n_hidden, n_out)), "b2": np.zeros(n_out)}
    x = rng.standard_normal((batch, n_in))
    t = np.eye(n_out)[rng.integers(0, n_out, batch)]
    return {k: numerical_gradient(np, lambda _: loss(np, params, x, t), params[k]) for k in params}


def test_book_loop(benchmark, xp):
    benchmark.group = "np book loop (ch04 numerical gradient)"
    got = benchmark(book_gradient, xp)
    expected = book_gradient(numpy)
    for k in expected:
        assert type(got[k]) is numpy.ndarray
        numpy.testing.assert_array_equal(got[k], expected[k])  # bit-identical to NumPy
