"""Activation kernels: ``bias_act``, ``act_backward``, ``bias_grad``, ``act_backward_bias_grad``,
``softmax`` and ``mul``, on C-contiguous 2-D arrays (``NumbaOps`` reshapes and copies as needed).

Scalars arrive cast to the arrays' dtype (``one`` is ``x.dtype.type(1)``): Python float literals
are float64 in Numba and would promote float32 arithmetic. Other constants derive from ``one``
exactly (``one - one``, ``one / (one + one)``).
"""
import numpy as np
from numba import njit

from fastnn.kernels import ELU, LEAKY_RELU, RELU, SIGMOID, SOFTPLUS, TANH


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
    return z  # LINEAR


@njit(cache=True, error_model="numpy")
def _act_grad(y, act, alpha, zero, one):
    """The activation's derivative written from its output ``y`` (as ``Ops._act_grad``)."""
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
    return one  # LINEAR


@njit(cache=True, error_model="numpy")
def bias_act(x, b, has_b, act, alpha, one, out):
    """``out = act(x + b)`` (``b`` ignored unless ``has_b``)."""
    zero = one - one
    half = one / (one + one)
    n, d = x.shape
    if has_b and act == RELU:  # the hot case gets its own loop, which LLVM vectorises
        for i in range(n):
            for j in range(d):
                z = x[i, j] + b[j]
                out[i, j] = zero if z < zero else z
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
