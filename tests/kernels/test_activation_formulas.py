"""Keras 3's selu, gelu (exact and tanh form) and swish/silu: every backend's primitives against the
formulas, written out again here from Keras's definitions (``keras/src/activations/activations.py``
and ``keras/src/backend/numpy/nn.py``) in float64 with Python's ``math``, independently of
``fastnn``'s own arithmetic.

Each check runs the primitive on every backend (the NumPy reference, numba, and cupy where there is
a GPU or the CPU emulator), in float32 and float64, on odd shapes, with the random draw's first
entries replaced by large magnitudes (+-80, +-30, ...). The derivatives of gelu and swish come from
the pre-activation ``z`` (``z_out=`` forward, ``z=`` backward); selu's from the output ``y``.
"""
import math

import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.kernels import (
    ACTIVATIONS, GELU, GELU_CLIP, GELU_TANH, NEEDS_Z, SELU, SELU_ALPHA, SELU_SCALE, SWISH,
)
from fastnn.testing import host

NEW = ["selu", "gelu", "gelu_tanh", "swish", "silu"]
SHAPES = [(1, 1), (3, 7), (129, 65), (2, 3, 5)]
EXTREMES = [-80.0, 80.0, -30.0, 30.0, -12.0, 12.0, -5.0, 5.0, -1e-3, 1e-3, 0.0, -0.5]
# float32 results against float64 formulas: one float32 rounding of each input and step
TOL = {numpy.dtype(numpy.float32): (2e-5, 2e-6), numpy.dtype(numpy.float64): (1e-12, 1e-13)}

# ---------------------------------------------------------------------------- the formulas, from Keras
K_SELU_ALPHA = 1.6732632423543772848170429916717   # keras.src.backend.*.nn.selu's defaults
K_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def _phi_cdf(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _u(x):
    return math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)


FORWARD = {
    "selu": lambda x: K_SELU_SCALE * (x if x >= 0 else K_SELU_ALPHA * (math.exp(x) - 1.0)),
    "gelu": lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),                  # approximate=False
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + math.tanh(_u(x))),                         # approximate=True
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
}
DERIVATIVE = {
    "selu": lambda x: K_SELU_SCALE if x > 0 else K_SELU_SCALE * K_SELU_ALPHA * math.exp(x),
    "gelu": lambda x: _phi_cdf(x) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi),
    "gelu_tanh": lambda x: (0.5 * (1.0 + math.tanh(_u(x)))
                            + 0.5 * x * (1.0 - math.tanh(_u(x)) ** 2) * math.sqrt(2.0 / math.pi)
                            * (1.0 + 3 * 0.044715 * x * x)),
    "swish": lambda x: _sigmoid(x) + x * _sigmoid(x) * (1.0 - _sigmoid(x)),
    "silu": lambda x: _sigmoid(x) + x * _sigmoid(x) * (1.0 - _sigmoid(x)),
}


def formula(table, name, z):
    return numpy.vectorize(table[name], otypes=[numpy.float64])(numpy.asarray(z, numpy.float64))


def data(shape, dtype, seed, scale=4.0):
    """Random values with the first entries replaced by large magnitudes and points near the kink."""
    a = numpy.random.default_rng(seed).standard_normal(shape).ravel() * scale
    k = min(a.size, len(EXTREMES))
    a[:k] = EXTREMES[:k]
    return a.reshape(shape).astype(dtype)


def check_sum(got, terms, dtype, what):
    """Row sums of ``terms: (D, M)``: each term within ``check``'s tolerance, plus 10 roundings of ``sum |terms|``."""
    got, exact = host(got).astype(numpy.float64), terms.sum(1)
    rtol, atol = TOL[numpy.dtype(dtype)]
    bound = (rtol + 10 * numpy.finfo(dtype).eps) * numpy.abs(terms).sum(1) + atol * terms.shape[1]
    assert (numpy.abs(got - exact) <= bound).all(), f"{what}: {got} vs {exact}"


def check(got, want, dtype, what):
    got = host(got)
    assert got.dtype == dtype, f"{what}: got dtype {got.dtype}, expected {dtype}"
    assert numpy.isfinite(got).all(), f"{what}: not finite"
    rtol, atol = TOL[numpy.dtype(dtype)]
    numpy.testing.assert_allclose(got.astype(numpy.float64), want, rtol=rtol, atol=atol, err_msg=what)


# ---------------------------------------------------------------------------- the names
def test_keras_names_constants_and_codes():
    assert ACTIVATIONS["swish"] == ACTIVATIONS["silu"] == SWISH
    assert (ACTIVATIONS["selu"], ACTIVATIONS["gelu"], ACTIVATIONS["gelu_tanh"]) == (SELU, GELU, GELU_TANH)
    assert NEEDS_Z == {GELU, GELU_TANH, SWISH}
    assert (SELU_ALPHA, SELU_SCALE) == (K_SELU_ALPHA, K_SELU_SCALE)


def test_cuda_header_agrees_with_the_codes_and_constants():
    """common.cuh spells the codes and constants again for the CUDA kernels."""
    import re

    from fastnn.kernels.gpu import _loader

    text = _loader.header_path().read_text()
    defines = dict(re.findall(r"^#define\s+(FASTNN_\w+)\s+([-+0-9.eE]+)", text, re.M))
    for name in ("selu", "gelu", "gelu_tanh", "swish"):
        assert int(defines[f"FASTNN_{name.upper()}"]) == ACTIVATIONS[name], name
    assert float(defines["FASTNN_SELU_SCALE"]) == K_SELU_SCALE
    assert float(defines["FASTNN_SELU_SA"]) == K_SELU_SCALE * K_SELU_ALPHA
    assert float(defines["FASTNN_SQRT1_2"]) == math.sqrt(0.5)
    assert float(defines["FASTNN_INV_SQRT_2PI"]) == 1 / math.sqrt(2 * math.pi)
    assert float(defines["FASTNN_GELU_TANH_K2"]) == 2 * math.sqrt(2 / math.pi)
    assert float(defines["FASTNN_GELU_TANH_C"]) == 0.044715
    assert float(defines["FASTNN_GELU_TANH_C3"]) == 3 * 0.044715
    assert float(defines["FASTNN_GELU_CLIP"]) == GELU_CLIP
    # the clip changes nothing: the exponentials it guards are 0 there in float32 and float64
    assert math.exp(-0.5 * GELU_CLIP ** 2) == 0.0 and math.exp(-2 * _u(GELU_CLIP)) == 0.0


def test_values_keras_documents(backend):
    """The float32 outputs TensorFlow/Keras document for gelu(x) and gelu(x, approximate=True)."""
    ops = get_ops(backend)
    x = ops.asarray(numpy.array([[-3.0, -1.0, 0.0, 1.0, 3.0]], numpy.float32))
    exact = [-0.00404951, -0.15865529, 0.0, 0.8413447, 2.9959507]
    approx = [-0.00363752, -0.15880796, 0.0, 0.841192, 2.9963627]
    numpy.testing.assert_allclose(host(ops.bias_act(x, None, GELU))[0], exact, atol=5e-7)
    numpy.testing.assert_allclose(host(ops.bias_act(x, None, GELU_TANH))[0], approx, atol=5e-7)


# ---------------------------------------------------------------------------- bias_act / act_backward
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", NEW)
def test_forward_and_derivative_follow_the_formulas(backend, dtype, shape, name):
    ops = get_ops(backend)
    act = ACTIVATIONS[name]
    hx, hb, hdout = data(shape, dtype, 1), data(shape[-1:], dtype, 2, 0.5), data(shape, dtype, 3, 1.0)
    hz = hx + hb  # the pre-activation, rounded as every backend rounds it
    x, b, dout = ops.asarray(hx), ops.asarray(hb), ops.asarray(hdout)
    z = ops.alloc(shape, dtype)
    y = ops.bias_act(x, b, act, z_out=z)
    check(y, formula(FORWARD, name, hz), dtype, f"{name} forward")
    numpy.testing.assert_array_equal(host(z), hz)
    numpy.testing.assert_array_equal(host(x), hx)          # x is not written
    numpy.testing.assert_array_equal(host(ops.bias_act(x, b, act)), host(y))   # z_out changes nothing
    want = formula(DERIVATIVE, name, hz) * hdout.astype(numpy.float64)
    check(ops.act_backward(dout, y, act, z=z), want, dtype, f"{name} derivative")
    numpy.testing.assert_array_equal(host(dout), hdout)    # dout is not written
    if len(shape) == 2:
        db = ops.alloc(shape[-1:], dtype)
        check(ops.act_backward_bias_grad(dout, y, act, db=db, z=z), want, dtype, f"{name} fused derivative")
        check_sum(db, want.T, dtype, f"{name} db")


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "swish"])
def test_derivative_without_z_is_an_error(backend, name):
    ops = get_ops(backend)
    y, dout = (ops.asarray(numpy.ones((2, 3))) for _ in range(2))
    for call in (lambda: ops.act_backward(dout, y, ACTIVATIONS[name]),
                 lambda: ops.act_backward_bias_grad(dout, y, ACTIVATIONS[name], db=ops.alloc((3,), numpy.float64)),
                 lambda: ops.conv_act_backward(dout.reshape(1, 2, 1, 3), y.reshape(1, 2, 1, 3), ACTIVATIONS[name])):
        with pytest.raises(ValueError, match=f"derivative of {name if name != 'swish' else 'silu'} is written "
                                             f"from the pre-activation z"):
            call()


def test_selu_derivative_needs_only_y(backend, dtype):
    ops = get_ops(backend)
    hz = data((5, 9), dtype, 4)
    y = ops.bias_act(ops.asarray(hz), None, SELU)
    check(ops.act_backward(ops.asarray(numpy.ones_like(hz)), y, SELU), formula(DERIVATIVE, "selu", hz), dtype,
          "selu derivative from y")


@pytest.mark.parametrize("name", NEW)
def test_huge_magnitudes_reach_the_asymptotes(backend, dtype, name):
    """Far beyond +-80 nothing overflows: y -> z (selu: scale z) on the right, 0 (selu: -scale alpha) on
    the left, and the derivative -> 1 (selu: scale) and 0."""
    ops = get_ops(backend)
    act = ACTIVATIONS[name]
    big = 1e30 if dtype == numpy.float32 else 1e200
    hz = numpy.array([[1e4, 1e6, big, -1e4, -1e6, -big]], dtype)
    z = ops.alloc(hz.shape, dtype)
    y = host(ops.bias_act(ops.asarray(hz), None, act, z_out=z))
    g = host(ops.act_backward(ops.asarray(numpy.ones_like(hz)), ops.asarray(y), act, z=z))
    scale = K_SELU_SCALE if name == "selu" else 1.0
    left = -K_SELU_SCALE * K_SELU_ALPHA if name == "selu" else 0.0
    assert numpy.isfinite(y).all() and numpy.isfinite(g).all(), (y, g)
    numpy.testing.assert_allclose(y[0, :3], scale * hz[0, :3].astype(numpy.float64), rtol=1e-6)
    numpy.testing.assert_allclose(y[0, 3:], left, rtol=1e-6, atol=1e-30)
    numpy.testing.assert_allclose(g[0], [scale] * 3 + [0.0] * 3, atol=1e-30)


def test_z_out_may_be_x_itself(backend, dtype):
    """A layer keeps its GEMM output as z: bias_act adds the bias into it in place."""
    ops = get_ops(backend)
    hx, hb = data((33, 17), dtype, 5), data((17,), dtype, 6)
    for name in ("gelu", "swish", "relu"):
        x = ops.asarray(hx.copy())
        y = ops.alloc(hx.shape, dtype)
        assert ops.bias_act(x, ops.asarray(hb), ACTIVATIONS[name], z_out=x, out=y) is y
        numpy.testing.assert_array_equal(host(x), hx + hb)
        numpy.testing.assert_array_equal(host(y), host(ops.bias_act(ops.asarray(hx), ops.asarray(hb),
                                                                   ACTIVATIONS[name])))


def test_strided_z_buffers(backend, dtype):
    """z_out= and z= as non-contiguous views are written and read like contiguous ones."""
    ops = get_ops(backend)
    hx = data((20, 15), dtype, 7)
    x = ops.asarray(hx)
    z = ops.alloc((15, 20), dtype).T
    y = ops.bias_act(x, None, GELU, z_out=z)
    numpy.testing.assert_array_equal(host(z), hx)
    dout = ops.asarray(data((15, 20), dtype, 8, 1.0)).T
    check(ops.act_backward(dout, y, GELU, z=z), formula(DERIVATIVE, "gelu", hx) * host(dout), dtype, "strided")


# ---------------------------------------------------------------------------- the convolution's pair
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 5, 7)], ids=["1", "3x2x5x7"])
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("has_b", [True, False], ids=["bias", "nobias"])
def test_conv_pair_follows_the_formulas(backend, dtype, shape, name, has_b):
    """conv_bias_act: (C, N, H, W) GEMM result + bias -> NCHW act, the pre-activation kept in the
    GEMM's layout (here in place); conv_act_backward reads it back."""
    ops = get_ops(backend)
    act = ACTIVATIONS[name]
    hz, hb = data(shape, dtype, 9), data(shape[:1], dtype, 10, 0.5)
    pre = hz + hb.reshape(-1, 1, 1, 1) if has_b else hz
    z = ops.asarray(hz.copy())
    y = ops.conv_bias_act(z, ops.asarray(hb) if has_b else None, act, z_out=z)
    check(y, formula(FORWARD, name, pre.transpose(1, 0, 2, 3)), dtype, f"{name} conv forward")
    numpy.testing.assert_array_equal(host(z), pre)
    hdout = data(host(y).shape, dtype, 11, 1.0)
    db = ops.alloc(shape[:1], dtype)
    dz = ops.conv_act_backward(ops.asarray(hdout), y, act, db=db, z=z)
    want = (formula(DERIVATIVE, name, pre.transpose(1, 0, 2, 3)) * hdout).transpose(1, 0, 2, 3)
    check(dz, want, dtype, f"{name} conv derivative")
    check_sum(db, want.reshape(shape[0], -1), dtype, f"{name} conv db")
