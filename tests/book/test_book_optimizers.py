"""fastnn.book.optimizer against the book's update formulas, written out by hand here."""
import inspect
import math

import numpy
import pytest

from fastnn.book import optimizer as O
from fastnn.testing import host

STEPS = 6


def grad_of(p):
    """The gradient of f(p) = sum(0.05 p^2 + sin(p)): a smooth, non-trivial field."""
    return 0.1 * p + numpy.cos(p)


def reference(name, kw, p0):
    """The book's formulas, step by step, in plain NumPy."""
    p = numpy.array(p0, dtype=numpy.float64)
    v = numpy.zeros_like(p)
    h = numpy.zeros_like(p)
    m = numpy.zeros_like(p)
    lr = kw["lr"]
    for t in range(1, STEPS + 1):
        g = grad_of(p)
        if name == "SGD":
            p = p - lr * g
        elif name == "Momentum":
            v = kw["momentum"] * v - lr * g
            p = p + v
        elif name == "Nesterov":
            mo = kw["momentum"]
            p = p + mo * mo * v - (1 + mo) * lr * g
            v = mo * v - lr * g
        elif name == "AdaGrad":
            h = h + g * g
            p = p - lr * g / (numpy.sqrt(h) + 1e-7)
        elif name == "RMSprop":
            h = kw["decay_rate"] * h + (1 - kw["decay_rate"]) * g * g
            p = p - lr * g / (numpy.sqrt(h) + 1e-7)
        elif name == "Adam":
            b1, b2 = kw["beta1"], kw["beta2"]
            m = m + (1 - b1) * (g - m)
            v = v + (1 - b2) * (g * g - v)
            lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p = p - lr_t * m / (numpy.sqrt(v) + 1e-7)
    return p


CASES = {
    "SGD": {"lr": 0.3},
    "Momentum": {"lr": 0.1, "momentum": 0.8},
    "Nesterov": {"lr": 0.1, "momentum": 0.8},
    "AdaGrad": {"lr": 0.5},
    "RMSprop": {"lr": 0.01, "decay_rate": 0.99},
    "Adam": {"lr": 0.2, "beta1": 0.9, "beta2": 0.999},
}


@pytest.mark.parametrize("name", list(CASES))
def test_update_matches_the_books_formula(ops, name):
    p0 = numpy.random.default_rng(0).standard_normal((3, 4))
    opt = getattr(O, name)(**CASES[name])
    params = {"W": ops.asarray(p0.copy()), "b": ops.asarray(p0[0].copy())}
    W_id = id(params["W"])
    for _ in range(STEPS):
        grads = {key: ops.asarray(grad_of(host(val))) for key, val in params.items()}
        opt.update(params, grads)
    assert id(params["W"]) == W_id, "arrays are updated in place"
    numpy.testing.assert_allclose(host(params["W"]), reference(name, CASES[name], p0), rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(host(params["b"]), reference(name, CASES[name], p0[0]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(CASES))
def test_python_float_parameters(name):
    """ch06/optimizer_compare_naive: params and grads are plain floats (the issue's
    "'float' object has no attribute 'shape'")."""
    opt = getattr(O, name)(**CASES[name])
    params = {"x": -7.0, "y": 2.0}
    for _ in range(STEPS):
        grads = {key: float(grad_of(numpy.float64(val))) for key, val in params.items()}
        opt.update(params, grads)
    assert isinstance(params["x"], float)
    assert params["x"] == pytest.approx(float(reference(name, CASES[name], -7.0)), rel=1e-12)
    assert params["y"] == pytest.approx(float(reference(name, CASES[name], 2.0)), rel=1e-12)


def test_defaults_are_the_books():
    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()}

    assert defaults(O.SGD) == {"lr": 0.01}
    assert defaults(O.Momentum) == {"lr": 0.01, "momentum": 0.9}
    assert defaults(O.Nesterov) == {"lr": 0.01, "momentum": 0.9}
    assert defaults(O.AdaGrad) == {"lr": 0.01}
    assert defaults(O.RMSprop) == {"lr": 0.01, "decay_rate": 0.99}
    assert defaults(O.Adam) == {"lr": 0.001, "beta1": 0.9, "beta2": 0.999}


def test_state_is_the_books(ops):
    p = {"W": ops.asarray(numpy.ones((2, 3)))}
    g = {"W": ops.asarray(numpy.full((2, 3), 0.5))}
    mom = O.Momentum()
    assert mom.v is None
    mom.update(p, g)
    numpy.testing.assert_allclose(host(mom.v["W"]), -0.01 * 0.5)  # v = 0.9*0 - lr*g
    nes = O.Nesterov(lr=0.1)
    nes.update(p, g)
    numpy.testing.assert_allclose(host(nes.v["W"]), -0.1 * 0.5)
    adam = O.Adam()
    adam.update(p, g)
    adam.update(p, g)
    assert adam.iter == 2 and adam.m["W"].shape == (2, 3)
    rms = O.RMSprop()
    rms.update(p, g)
    numpy.testing.assert_allclose(host(rms.h["W"]), 0.01 * 0.25)


def test_nesterov_lr_change_keeps_the_books_velocity():
    p0 = numpy.array([1.0, -2.0])
    opt = O.Nesterov(lr=0.1, momentum=0.9)
    params = {"x": p0.copy()}
    p, v = p0.copy(), numpy.zeros(2)
    for lr in (0.1, 0.1, 0.05, 0.05):
        opt.lr = lr
        g = grad_of(params["x"])
        opt.update(params, {"x": g})
        p = p + 0.81 * v - 1.9 * lr * g
        v = 0.9 * v - lr * g
    numpy.testing.assert_allclose(params["x"], p, rtol=1e-13)
    numpy.testing.assert_allclose(opt.v["x"], v, rtol=1e-13)
