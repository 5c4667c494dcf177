"""Activation kernels: ``bias_act``, ``act_backward``, ``bias_grad``, ``act_backward_bias_grad``,
``softmax`` and ``mul``, on C-contiguous 2-D arrays (``NumbaOps`` reshapes and copies as needed),
and the variants for activations whose derivative needs the pre-activation ``z`` (``NEEDS_Z``:
gelu, gelu_tanh, swish): ``bias_act_z`` also writes ``z``, ``act_backward_z`` and
``act_backward_z_bias_grad`` read it. The plain kernels keep their signatures and loops.

Scalars arrive cast to the arrays' dtype (``one`` is ``x.dtype.type(1)``): Python float literals
are float64 in Numba and would promote float32 arithmetic. Other constants derive from ``one``
exactly (``one - one``, ``one / (one + one)``), or are rounded to its dtype by ``_const`` (the
irrational constants of selu and gelu), as ``x.dtype.type(c)`` rounds them for the reference.
"""
import math

import numpy as np
from numba import njit
from numba.extending import overload

from fastnn.kernels import (
    ELU, GELU, GELU_CLIP, GELU_TANH, GELU_TANH_C, LEAKY_RELU, LINEAR, RELU, SELU, SELU_ALPHA, SELU_SCALE,
    SIGMOID, SOFTPLUS, SWISH, TANH,
)

SQRT1_2 = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_K2 = 2.0 * math.sqrt(2.0 / math.pi)
GELU_TANH_C3 = 3.0 * GELU_TANH_C
SELU_SA = SELU_SCALE * SELU_ALPHA


def _const(like, c):
    """``c`` rounded to the type of the scalar ``like`` (in Numba: a cast LLVM folds to a constant)."""
    return type(like)(c)


@overload(_const)
def _const_numba(like, c):
    ty = like

    def impl(like, c):
        return ty(c)

    return impl


@njit(cache=True, error_model="numpy")
def _sigmoid_parts(v, one):
    """``(s, e, p)``: ``s = sigmoid(v)``, ``e = e^-|v|``, ``p = 1 / (1 + e)`` (as ``Ops._sigmoid_parts``)."""
    e = np.exp(-abs(v))
    p = one / (one + e)
    return (p if v >= one - one else e * p), e, p


@njit(cache=True, error_model="numpy")
def _gelu_clip(z):
    """``z`` clipped to +-GELU_CLIP, where gelu's exponentials are 0 in either dtype."""
    lim = _const(z, GELU_CLIP)
    return -lim if z < -lim else (lim if z > lim else z)


@njit(cache=True, error_model="numpy")
def _gelu_tanh_v(z):
    """``(w, v)``: ``w = _gelu_clip(z)`` and ``v = 2 sqrt(2/pi) (w + c w^3)``."""
    w = _gelu_clip(z)
    return w, _const(z, GELU_TANH_K2) * (w + _const(z, GELU_TANH_C) * (w * w * w))


@njit(cache=True, error_model="numpy")
def _act(z, act, alpha, zero, half):
    """The activation of ``z`` (same formulas as ``Ops._act``)."""
    if act == RELU:
        return zero if z < zero else z
    if act == SIGMOID:
        # 0.5 * tanh(0.5 z) + 0.5 never overflows, unlike 1 / (1 + exp(-z))
        return half * np.tanh(half * z) + half
    if act == TANH:
        return np.tanh(z)
    if act == LEAKY_RELU:
        return z if z > zero else alpha * z
    if act == ELU:
        return z if z > zero else alpha * np.expm1(z)
    if act == SOFTPLUS:
        return (z if z > zero else zero) + np.log1p(np.exp(-abs(z)))
    if act == SELU:
        return _const(z, SELU_SCALE) * z if z > zero else _const(z, SELU_SA) * np.expm1(z)
    if act == GELU:
        return z * (half * math.erfc(-z * _const(z, SQRT1_2)))
    if act == GELU_TANH:
        return z * _sigmoid_parts(_gelu_tanh_v(z)[1], half + half)[0]
    if act == SWISH:
        return z * _sigmoid_parts(z, half + half)[0]
    return z  # LINEAR


@njit(cache=True, error_model="numpy")
def _act_grad(y, act, alpha, zero, one):
    """The activation's derivative written from its output ``y`` (as ``Ops._act_grad``); NaN for
    the ``NEEDS_Z`` codes, whose derivative is no function of ``y`` (``_act_grad_z``)."""
    if act == RELU:
        return one if y > zero else zero
    if act == SIGMOID:
        return y * (one - y)
    if act == TANH:
        return one - y * y
    if act == LEAKY_RELU:
        return one if y > zero else alpha
    if act == ELU:
        # z <= 0: y = alpha (e^z - 1), so dy/dz = alpha e^z = y + alpha
        return one if y > zero else y + alpha
    if act == SOFTPLUS:
        return -np.expm1(-y)
    if act == SELU:
        # z <= 0: y = scale alpha (e^z - 1), so dy/dz = y + scale alpha
        return _const(y, SELU_SCALE) if y > zero else y + _const(y, SELU_SA)
    if act == GELU or act == GELU_TANH or act == SWISH:
        return zero / zero
    return one  # LINEAR


@njit(cache=True, error_model="numpy")
def _act_grad_z(z, act, zero, one):
    """The derivative of a ``NEEDS_Z`` code from the pre-activation ``z`` (as ``Ops._act_grad_z``)."""
    half = one / (one + one)
    if act == GELU:
        w = _gelu_clip(z)
        return half * math.erfc(-z * _const(z, SQRT1_2)) + z * (_const(z, INV_SQRT_2PI) * np.exp(-half * w * w))
    if act == GELU_TANH:
        w, v = _gelu_tanh_v(z)
        s, e, p = _sigmoid_parts(v, one)
        return s + z * (e * p * p) * (_const(z, GELU_TANH_K2) * (one + _const(z, GELU_TANH_C3) * (w * w)))
    if act == SWISH:
        s, e, p = _sigmoid_parts(z, one)
        return s + z * (e * p * p)
    return zero / zero  # not a NEEDS_Z code: the wrappers never send one here


@njit(cache=True, error_model="numpy")
def bias_act(x, b, has_b, act, alpha, one, out):
    """``out = act(x + b)`` (``b`` ignored unless ``has_b``)."""
    zero = one - one
    half = one / (one + one)
    n, d = x.shape
    # The hot cases get loops of their own, which LLVM vectorises: relu with and without a bias (the
    # book's separate Relu layer has none) and linear (every book Affine). Through the generic loop
    # below, which tests ``act`` per element, they ran 3-16x slower than NumPy.
    if act == RELU:
        if has_b:
            for i in range(n):
                for j in range(d):
                    z = x[i, j] + b[j]
                    out[i, j] = zero if z < zero else z
        else:
            for i in range(n):
                for j in range(d):
                    z = x[i, j]
                    out[i, j] = zero if z < zero else z
        return
    if act == LINEAR:
        if has_b:
            for i in range(n):
                for j in range(d):
                    out[i, j] = x[i, j] + b[j]
        else:
            for i in range(n):
                for j in range(d):
                    out[i, j] = x[i, j]
        return
    for i in range(n):
        if has_b:
            for j in range(d):
                out[i, j] = _act(x[i, j] + b[j], act, alpha, zero, half)
        else:
            for j in range(d):
                out[i, j] = _act(x[i, j], act, alpha, zero, half)


@njit(cache=True, error_model="numpy")
def act_backward(dout, y, act, alpha, one, out):
    """``out = dout * act'(y)``."""
    zero = one - one
    n, d = y.shape
    # the common codes get loops of their own (the same expressions as ``_act_grad``), vectorised
    if act == RELU:
        for i in range(n):
            for j in range(d):
                out[i, j] = dout[i, j] * (one if y[i, j] > zero else zero)
    elif act == LINEAR:
        for i in range(n):
            for j in range(d):
                out[i, j] = dout[i, j] * one
    elif act == SIGMOID:
        for i in range(n):
            for j in range(d):
                out[i, j] = dout[i, j] * (y[i, j] * (one - y[i, j]))
    elif act == TANH:
        for i in range(n):
            for j in range(d):
                out[i, j] = dout[i, j] * (one - y[i, j] * y[i, j])
    else:
        for i in range(n):
            for j in range(d):
                out[i, j] = dout[i, j] * _act_grad(y[i, j], act, alpha, zero, one)


@njit(cache=True, error_model="numpy")
def bias_grad(dz, db):
    """``db = dz.sum(axis=0)`` for ``n >= 1`` rows, summed row after row from the first, as
    NumPy's axis-0 reduction of a C-contiguous array does."""
    n, d = dz.shape
    for j in range(d):
        db[j] = dz[0, j]
    for i in range(1, n):
        for j in range(d):
            db[j] += dz[i, j]


@njit(cache=True, error_model="numpy")
def act_backward_bias_grad(dout, y, act, alpha, one, out, db):
    """``out = dout * act'(y)`` and ``db = out.sum(axis=0)`` in one pass."""
    zero = one - one
    n, d = y.shape
    for j in range(d):
        db[j] = zero
    if act == RELU:  # the hot case gets its own loop, which LLVM vectorises
        for i in range(n):
            for j in range(d):
                dz = dout[i, j] * (one if y[i, j] > zero else zero)
                out[i, j] = dz
                db[j] += dz
        return
    for i in range(n):
        for j in range(d):
            dz = dout[i, j] * _act_grad(y[i, j], act, alpha, zero, one)
            out[i, j] = dz
            db[j] += dz


@njit(cache=True, error_model="numpy")
def bias_act_z(x, b, has_b, act, alpha, one, out, z):
    """``z = x + b`` and ``out = act(z)`` (``b`` ignored unless ``has_b``); ``z`` may be ``x`` itself."""
    zero = one - one
    half = one / (one + one)
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            v = x[i, j] + b[j] if has_b else x[i, j]
            z[i, j] = v
            out[i, j] = _act(v, act, alpha, zero, half)


@njit(cache=True, error_model="numpy")
def act_backward_z(dout, z, act, one, out):
    """``out = dout * act'(z)`` from the pre-activation ``z`` (a ``NEEDS_Z`` code)."""
    zero = one - one
    n, d = z.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = dout[i, j] * _act_grad_z(z[i, j], act, zero, one)


@njit(cache=True, error_model="numpy")
def act_backward_z_bias_grad(dout, z, act, one, out, db):
    """``out = dout * act'(z)`` and ``db = out.sum(axis=0)`` in one pass (a ``NEEDS_Z`` code)."""
    zero = one - one
    n, d = z.shape
    for j in range(d):
        db[j] = zero
    for i in range(n):
        for j in range(d):
            g = dout[i, j] * _act_grad_z(z[i, j], act, zero, one)
            out[i, j] = g
            db[j] += g


@njit(cache=True, error_model="numpy")
def softmax(x, one, out):
    """Row-wise max-subtracted softmax of ``x`` into ``out``."""
    n, d = x.shape
    for i in range(n):
        m = x[i, 0]
        for j in range(1, d):
            if x[i, j] > m:
                m = x[i, j]
        s = one - one
        for j in range(d):
            e = np.exp(x[i, j] - m)
            out[i, j] = e
            s += e
        inv = one / s
        for j in range(d):
            out[i, j] *= inv


@njit(cache=True, error_model="numpy")
def mul(x, y, out):
    """``out = x * y`` over flat 1-D arrays."""
    for i in range(x.shape[0]):
        out[i] = x[i] * y[i]
