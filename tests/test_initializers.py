"""Initializers and regularizers: scales, determinism, names, and the penalty and its gradient."""
import math

import numpy
import pytest

from fastnn import initializers as I
from fastnn import regularizers as R
from fastnn.functions import numerical_gradient


@pytest.mark.parametrize("name,shape,std", [
    ("he_normal", (400, 300), math.sqrt(2 / 400)),
    ("he_uniform", (400, 300), math.sqrt(6 / 400) / math.sqrt(3)),
    ("glorot_normal", (400, 300), math.sqrt(2 / 700)),
    ("glorot_uniform", (400, 300), math.sqrt(6 / 700) / math.sqrt(3)),
    ("he_normal", (64, 3, 5, 5), math.sqrt(2 / 75)),  # conv kernel: fan_in = C*kh*kw
])
def test_scales_follow_the_fans(name, shape, std):
    w = I.get(name)(shape, numpy.random.default_rng(0), numpy.float32)
    assert w.shape == shape and w.dtype == numpy.float32
    assert abs(w.mean()) < 0.05 * std * 10 and w.std() == pytest.approx(std, rel=0.03)


def test_books_normal_zeros_ones_constants_and_determinism():
    w = I.normal(std=0.01)((500, 200), numpy.random.default_rng(1), numpy.float64)
    assert w.std() == pytest.approx(0.01, rel=0.02) and w.dtype == numpy.float64
    a = I.get("glorot_uniform")((5, 4), numpy.random.default_rng(7))
    b = I.get("glorot_uniform")((5, 4), numpy.random.default_rng(7))
    numpy.testing.assert_array_equal(a, b)
    assert not I.get("zeros")((3,)).any() and I.get("ones")((3,)).all()
    numpy.testing.assert_array_equal(I.get(0.5)((2,)), [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown initializer 'lecun'; valid names"):
        I.get("lecun")


@pytest.mark.parametrize("reg", [R.l1(0.01), R.l2(0.02), R.l1_l2(0.01, 0.03)], ids=["l1", "l2", "l1_l2"])
def test_regularizer_penalty_and_gradient(ops, reg):
    rng = numpy.random.default_rng(0)
    w_host = rng.standard_normal((4, 3))
    w_host[numpy.abs(w_host) < 1e-2] = 0.5  # away from |w|'s kink
    w = ops.asarray(w_host)
    expected = reg.l1 * numpy.abs(w_host).sum() + reg.l2 * (w_host ** 2).sum()
    assert float(reg.penalty(ops, w)) == pytest.approx(expected)
    grad = ops.alloc(w.shape, w.dtype)
    reg.add_grad(ops, w, grad)
    numeric = numerical_gradient(lambda v: float(reg.penalty(ops, v)), w)
    numpy.testing.assert_allclose(ops.asnumpy(grad), ops.asnumpy(numeric), rtol=1e-6, atol=1e-8)
    assert R.get(reg.get_config()).l2 == reg.l2
    with pytest.raises(ValueError, match="non-negative"):
        R.l2(-1.0)
