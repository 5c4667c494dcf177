"""``fastnn.np``: the book's own NumPy code, with one import changed, on every backend."""
import threading

import numpy
import pytest

import fastnn
from fastnn import np  # the one changed import
from fastnn.testing import has_gpu


# ---- the book's functions, written as learners write them (with np = fastnn.np) ----
def step_function(x):
    return np.array(x > 0, dtype=np.int64)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(0, x)


def softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def numerical_gradient(f, x):
    h = 1e-4
    grad = np.zeros_like(x)
    it = numpy.nditer(np.asnumpy(x), flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = float(x[idx])
        x[idx] = tmp_val + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


def gradient_descent(f, init_x, lr=0.01, step_num=100):
    x = init_x
    for _ in range(step_num):
        x -= lr * numerical_gradient(f, x)
    return x


def run_book(xp_module):
    """Run every book function on data made with ``xp_module`` and return host results."""
    rng = numpy.random.default_rng(0)
    a = np.asarray(rng.standard_normal((4, 5)))
    t = np.asarray(numpy.eye(5)[[0, 2, 4, 1]])
    out = [step_function(a), sigmoid(a), relu(a), softmax(a), cross_entropy_error(softmax(a), t)]
    out.append(numerical_gradient(lambda x: np.sum(x ** 2), np.asarray(numpy.array([3.0, 4.0]))))
    out.append(gradient_descent(lambda x: x[0] ** 2 + x[1] ** 2, np.asarray(numpy.array([-3.0, 4.0])), lr=0.1))
    return [np.asnumpy(o) for o in out]


def test_book_functions_give_numpys_results_on_every_backend(backend):
    with fastnn.using("numpy"):
        expected = run_book(numpy)
    with fastnn.using(backend) as ops:
        assert np.zeros(1).__class__ is ops.xp.ndarray
        got = run_book(ops.xp)
    for g, e in zip(got, expected):
        numpy.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(got[5], [6.0, 8.0], rtol=1e-6)


def test_np_follows_use_and_nested_using():
    assert np is fastnn.xp
    before = fastnn.current()
    try:
        fastnn.use("numpy")
        assert "backend numpy" in repr(np) and np.ndarray is numpy.ndarray
        with fastnn.using("cpu"):
            assert f"backend {fastnn.current().name}" in repr(np)
            with fastnn.using("numpy"):
                assert "backend numpy" in repr(np)
        assert isinstance(np.random.randn(2), np.ndarray)
        assert np.linalg.norm(np.asarray([3.0, 4.0])) == 5.0
        assert np.float32 is numpy.float32 and np.newaxis is None
    finally:
        fastnn.use(before)


def test_np_scope_is_per_thread():
    seen = []
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait()
        seen.append(repr(np))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    outer = fastnn.current().name
    with fastnn.using("numpy" if outer != "numpy" else "cpu"):
        inside.set()
        done.wait(10)
    thread.join()
    assert f"backend {outer}" in seen[0]


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
def test_unavailable_backend_names_the_extra():
    with pytest.raises(fastnn.BackendUnavailableError, match="cuda12|no CUDA device answers"):
        with fastnn.using("cupy"):
            np.zeros(3)


def test_asnumpy_and_asarray_on_every_backend(backend):
    with fastnn.using(backend) as ops:
        d = np.asarray([[1.0, 2.0]])
        assert ops.owns(d)
        h = np.asnumpy(d)
        assert isinstance(h, numpy.ndarray) and h.tolist() == [[1.0, 2.0]]


def test_add_at_scatter_adds_on_every_backend(backend):
    with fastnn.using(backend):
        a = np.zeros(4)
        np.add.at(a, np.asarray(numpy.array([0, 1, 1, 3])), 1.0)
        assert np.asnumpy(a).tolist() == [1.0, 2.0, 0.0, 1.0]
