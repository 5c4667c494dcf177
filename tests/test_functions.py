"""fastnn.functions: the book's functions, on every backend, against closed forms."""
import numpy
import pytest

import fastnn
from fastnn import functions as F
from fastnn.testing import assert_close, host


@pytest.fixture
def xp_ops(backend):
    with fastnn.using(backend) as ops:
        yield ops


def rand(ops, shape, dtype=numpy.float64, seed=0, scale=3.0):
    return ops.asarray((numpy.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (129, 65)])
def test_activations_match_closed_forms(xp_ops, dtype, shape):
    x = rand(xp_ops, shape, dtype)
    h = host(x).astype(numpy.float64)
    cases = {
        "sigmoid": (F.sigmoid(x), 1 / (1 + numpy.exp(-h))),
        "relu": (F.relu(x), numpy.maximum(h, 0)),
        "tanh": (F.tanh(x), numpy.tanh(h)),
        "leaky_relu": (F.leaky_relu(x, 0.1), numpy.where(h > 0, h, 0.1 * h)),
        "elu": (F.elu(x, 0.5), numpy.where(h > 0, h, 0.5 * (numpy.exp(h) - 1))),
        "softplus": (F.softplus(x), numpy.log1p(numpy.exp(h))),
        "step": (F.step_function(x), (h > 0).astype(numpy.float64)),
    }
    tol = 2e-6 if dtype == numpy.float32 else 1e-12
    for name, (got, want) in cases.items():
        assert host(got).dtype == dtype, name
        assert_close(got, want.astype(dtype), rtol=tol, atol=tol, err_msg=name)


def test_softmax_rows_sum_to_one_and_stay_finite_for_large_inputs(xp_ops, dtype):
    x = xp_ops.asarray(numpy.array([[1000.0, 1001.0, 999.0], [0.3, -2.0, 5.0]], dtype=dtype))
    y = host(F.softmax(x))
    assert numpy.all(numpy.isfinite(y))
    e = numpy.exp(host(x).astype(numpy.float64) - host(x).max(1, keepdims=True))
    assert_close(y, (e / e.sum(1, keepdims=True)).astype(dtype))
    one = F.softmax(xp_ops.asarray(numpy.array([1010.0, 1000.0, 990.0], dtype=dtype)))
    assert host(one).shape == (3,) and abs(float(host(one).sum()) - 1) < 1e-6


def test_mean_squared_error_is_the_books_half_sum(xp_ops):
    y = xp_ops.asarray(numpy.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0]))
    t = xp_ops.asarray(numpy.eye(10)[2])
    assert float(F.mean_squared_error(y, t)) == pytest.approx(0.097500000000000031)
    batch_y, batch_t = xp_ops.asarray(numpy.tile(host(y), (3, 1))), xp_ops.asarray(numpy.tile(host(t), (3, 1)))
    assert float(F.mean_squared_error(batch_y, batch_t)) == pytest.approx(3 * 0.0975)


def test_cross_entropy_one_hot_and_index_labels_agree(xp_ops, dtype):
    rng = numpy.random.default_rng(1)
    p = rng.random((5, 4)) + 0.1
    p = (p / p.sum(1, keepdims=True)).astype(dtype)
    labels = numpy.array([0, 3, 1, 1, 2])
    y = xp_ops.asarray(p)
    a = float(F.cross_entropy_error(y, xp_ops.asarray(labels)))
    b = float(F.cross_entropy_error(y, xp_ops.asarray(numpy.eye(4)[labels])))
    expected = -numpy.log(p[numpy.arange(5), labels] + 1e-7).mean()
    assert a == pytest.approx(expected, rel=1e-6) and b == pytest.approx(expected, rel=1e-6)
    single = float(F.cross_entropy_error(xp_ops.asarray(p[1]), xp_ops.asarray(numpy.eye(4)[3])))
    assert single == pytest.approx(-numpy.log(p[1, 3] + 1e-7), rel=1e-6)


def test_cross_entropy_rejects_labels_out_of_range(xp_ops):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*max 3"):
        F.cross_entropy_error(xp_ops.asarray(numpy.full((2, 3), 1 / 3)), xp_ops.asarray(numpy.array([0, 3])))


def test_numerical_gradient_of_a_sum_of_squares(xp_ops):
    x = xp_ops.asarray(numpy.array([3.0, 4.0]))
    g = F.numerical_gradient(lambda v: (v ** 2).sum(), x)
    assert_close(g, numpy.array([6.0, 8.0]), rtol=1e-7, atol=1e-7)
    assert_close(x, numpy.array([3.0, 4.0]), rtol=0, atol=0)  # restored exactly


def test_numerical_gradient_perturbs_in_place_so_held_references_see_it(xp_ops):
    W = xp_ops.asarray(numpy.array([[1.0, -2.0], [0.5, 3.0]]))
    holder = {"W": W}  # like a layer holding the array by reference

    def loss(_):
        return (holder["W"] ** 3).sum()

    g = F.numerical_gradient(loss, W)
    assert_close(g, 3 * host(W) ** 2, rtol=1e-6, atol=1e-6)


def test_numerical_gradient_batched_rows(xp_ops):
    x = xp_ops.asarray(numpy.array([[1.0, 2.0], [-3.0, 0.5], [0.0, -1.0]]))
    g = F.numerical_gradient(lambda v: (v ** 2).sum(axis=1), x)
    assert_close(g, 2 * host(x), rtol=1e-7, atol=1e-7)


def test_numerical_gradient_any_shape(xp_ops):
    x = rand(xp_ops, (2, 3, 2), seed=5)
    g = F.numerical_gradient(lambda v: (xp_ops.xp.sin(v)).sum(), x)
    assert_close(g, numpy.cos(host(x)), rtol=1e-6, atol=1e-7)


def test_gradient_descent_returns_x_and_history(xp_ops):
    init = xp_ops.asarray(numpy.array([-3.0, 4.0]))
    x, history = F.gradient_descent(lambda v: v[0] ** 2 + v[1] ** 2, init, lr=0.1, step_num=100)
    assert host(history).shape == (100, 2)
    assert_close(history[0], numpy.array([-3.0, 4.0]), rtol=0, atol=0)
    assert numpy.abs(host(x)).max() < 1e-8
    assert_close(init, numpy.array([-3.0, 4.0]), rtol=0, atol=0)  # not modified
    # each step is x <- (1 - 2 lr) x for this function
    assert_close(history[1], 0.8 * numpy.array([-3.0, 4.0]), rtol=1e-7, atol=1e-9)
