"""The functions "from scratch" learners know, by the names they know them.

Each takes arrays of any backend (NumPy or CuPy) and computes with that array's module; scalars
keep the array's dtype. ``mean_squared_error`` and ``cross_entropy_error`` are the book's
definitions (a sum with 0.5; a ``1e-7`` inside the log); the layers and ``compile(loss=...)``
compute their losses stably instead.
"""
from __future__ import annotations

import numpy

from fastnn.backend import is_device_array

__all__ = [
    "step_function", "sigmoid", "relu", "tanh", "leaky_relu", "elu", "softplus", "softmax",
    "mean_squared_error", "cross_entropy_error", "numerical_gradient", "gradient_descent",
    "get_array_module",
]


def get_array_module(x):
    """``cupy`` for a CuPy array, else ``numpy`` (CuPy is never imported for host arrays)."""
    if is_device_array(x):
        import cupy

        return cupy
    return numpy


def _arr(x):
    xp = get_array_module(x)
    x = xp.asarray(x)
    if x.dtype.kind not in "fc":
        x = x.astype(numpy.float64)
    return xp, x


def step_function(x):
    """1 where ``x > 0``, else 0, in ``x``'s float dtype (int for integer input)."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    return (x > 0).astype(x.dtype if x.dtype.kind == "f" else numpy.int64)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed as ``0.5 * tanh(0.5 x) + 0.5`` so it never overflows."""
    xp, x = _arr(x)
    half = x.dtype.type(0.5)
    return half * xp.tanh(half * x) + half


def relu(x):
    """``max(0, x)``."""
    xp, x = _arr(x)
    return xp.maximum(x, x.dtype.type(0))


def tanh(x):
    """Hyperbolic tangent."""
    xp, x = _arr(x)
    return xp.tanh(x)


def leaky_relu(x, alpha=0.01):
    """``x`` where positive, ``alpha * x`` elsewhere."""
    xp, x = _arr(x)
    return xp.where(x > 0, x, x.dtype.type(alpha) * x)


def elu(x, alpha=1.0):
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere."""
    xp, x = _arr(x)
    return xp.where(x > 0, x, x.dtype.type(alpha) * xp.expm1(xp.minimum(x, 0)))


def softplus(x):
    """``log(1 + exp(x))``, as ``max(x, 0) + log1p(exp(-|x|))`` (finite for any x)."""
    xp, x = _arr(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softmax(x):
    """Softmax of a 1-D ``x``, or of each row of a 2-D ``x`` (along the last axis); max-subtracted,
    so inputs around 1000 stay finite."""
    xp, x = _arr(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"softmax: expected a 1-D or 2-D array, got shape {x.shape}")
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_squared_error(y, t):
    """The book's ``0.5 * sum((y - t)^2)`` over all elements (a batch too: no division by N)."""
    xp, y = _arr(y)
    t = xp.asarray(t)
    if y.shape != t.shape:
        raise ValueError(f"mean_squared_error: y and t must have one shape, got y {y.shape} and t {t.shape}")
    d = y - t.astype(y.dtype, copy=False)
    return y.dtype.type(0.5) * xp.sum(d * d)


def cross_entropy_error(y, t):
    """The book's cross-entropy ``-sum(log(y[t] + 1e-7)) / N`` of probabilities ``y``.

    ``y`` is 1-D (one sample) or ``(N, C)``; ``t`` is one-hot (same shape as ``y``) or class
    indices (``(N,)`` or a scalar); both give the same value. The mean is over the batch.
    """
    xp, y = _arr(y)
    t = xp.asarray(t)
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = t.reshape(1, -1) if t.size == y.size else t.reshape(1)
    if t.size == y.size and t.ndim == 2:
        t = t.argmax(axis=1)
    t = t.reshape(-1)
    n, c = y.shape
    if t.shape[0] != n:
        raise ValueError(f"cross_entropy_error: y has {n} rows but t has {t.shape[0]} labels")
    if t.dtype.kind == "f":
        if not bool(xp.all(t == xp.floor(t))):
            raise ValueError("cross_entropy_error: class-index labels t must be whole numbers")
    t = t.astype(numpy.int64)
    if n and (int(t.min()) < 0 or int(t.max()) >= c):
        raise ValueError(f"cross_entropy_error: labels must be in [0, {c - 1}], got min {int(t.min())}, max {int(t.max())}")
    return -xp.sum(xp.log(y[xp.arange(n), t] + y.dtype.type(1e-7))) / y.dtype.type(n)


def _value(v):
    """A host float, or a host array for a per-row result (one host sync per evaluation)."""
    if is_device_array(v):
        v = v.get()
    return numpy.asarray(v, dtype=numpy.float64)


def numerical_gradient(f, x, h=1e-4):
    """Central-difference gradient of ``f`` at ``x``, computed as the book does.

    Each element of ``x`` is perturbed *in place* by ``+h`` and ``-h``, ``f(x)`` evaluated, and
    the element restored; so ``numerical_gradient(lambda W: net.loss(x, t), net.params["W1"])``
    differentiates weights that a layer holds by reference. ``x`` may have any shape and must be
    a float array (its dtype is kept). When ``f`` of a 2-D ``x`` returns one value per row, the
    result is each row's gradient (the batched form used to plot gradient fields).
    """
    xp = get_array_module(x)
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError("numerical_gradient: x must be a float array that f reads (it is perturbed in place), "
                        f"got {type(x).__name__} of dtype {getattr(x, 'dtype', None)}")
    grad = xp.zeros_like(x)
    flat_shape = x.shape
    for idx in numpy.ndindex(*flat_shape):
        saved = x[idx].copy() if hasattr(x[idx], "copy") else x[idx]
        try:
            x[idx] = saved + h
            f_plus = _value(f(x))
            x[idx] = saved - h
            f_minus = _value(f(x))
        finally:  # f may raise (a bad label): x, often a network's weights, is left as it was
            x[idx] = saved
        if f_plus.ndim == 0:
            diff = f_plus - f_minus
        elif x.ndim == 2 and f_plus.shape == (x.shape[0],):
            diff = f_plus[idx[0]] - f_minus[idx[0]]
        else:
            raise ValueError(f"numerical_gradient: f must return a scalar (or one value per row of a 2-D x), "
                             f"got shape {f_plus.shape} for x of shape {x.shape}")
        grad[idx] = diff / (2 * h)
    return grad


def gradient_descent(f, init_x, lr=0.01, step_num=100):
    """Plain gradient descent with numerical gradients: ``x -= lr * numerical_gradient(f, x)``.

    Returns ``(x, history)`` where ``history[i]`` is ``x`` before step ``i``
    (shape ``(step_num, *x.shape)``). ``init_x`` is copied, not modified.
    """
    xp = get_array_module(init_x)
    x = xp.array(init_x, dtype=init_x.dtype if init_x.dtype.kind == "f" else numpy.float64)
    history = xp.empty((step_num,) + x.shape, dtype=x.dtype)
    for i in range(step_num):
        history[i] = x
        x -= x.dtype.type(lr) * numerical_gradient(f, x)
    return x, history
