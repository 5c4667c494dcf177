"""The book's ``common/functions.py``: the same names and results, on any backend's arrays.

Each function computes with the array module of its input (NumPy or CuPy), in the input's float
dtype. Where the book's formula is numerically fragile, the result here is the exact one and
agrees with the book's wherever the book's is finite:

- ``sigmoid`` is ``0.5 * tanh(0.5 x) + 0.5``: the book's ``1 / (1 + exp(-x))`` overflows (with a
  warning) for ``x < -709``; the values agree to rounding elsewhere.
- ``cross_entropy_error`` keeps the book's ``1e-7`` inside the log (``-log(y + 1e-7)``): the
  book's results, capped at ``-log(1e-7) = 16.1`` per sample. The exact loss of the scores
  (log-sum-exp) is ``fastnn.losses``/``SoftmaxWithLoss(exact=True)``.

Inputs are real numbers (float, int or bool arrays, or lists of them): complex, object and string
arrays are a ``TypeError`` naming the function, the argument, the dtype and the shape (a dtype
check, no scan of the values). The losses refuse an empty batch (N = 0) with a ``ValueError``;
the activations return an empty array for one.
"""
from __future__ import annotations

import numpy

from fastnn import functions as _f
from fastnn.functions import real_array, cross_entropy_error, get_array_module, sigmoid

__all__ = [
    "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu", "relu_grad", "softmax",
    "sum_squared_error", "cross_entropy_error", "softmax_loss",
]


def identity_function(x):
    """``x`` itself."""
    return x


def step_function(x):
    """1 where ``x > 0``, else 0, as an integer array (the book's ``np.array(x > 0, dtype=int)``)."""
    x = real_array("step_function", x)
    return get_array_module(x).asarray(x > 0, dtype=int)


def sigmoid_grad(x):
    """``(1 - sigmoid(x)) * sigmoid(x)``: the derivative of ``sigmoid`` at ``x``."""
    y = sigmoid(real_array("sigmoid_grad", x))
    return (y.dtype.type(1) - y) * y


def relu(x):
    """``max(0, x)``; integer input stays integer, as the book's ``np.maximum(0, x)``."""
    x = real_array("relu", x)
    return get_array_module(x).maximum(x, x.dtype.type(0))


def relu_grad(x):
    """1 where ``x >= 0``, else 0, in ``x``'s dtype (the book counts ``x == 0`` as passing)."""
    x = real_array("relu_grad", x)
    return (x >= 0).astype(x.dtype if x.dtype.kind == "f" else numpy.float64)


def softmax(x):
    """Softmax along the last axis of ``x`` of any rank, max-subtracted (the book's overflow guard)."""
    if getattr(x, "ndim", None) in (1, 2):
        return _f.softmax(x)
    x = real_array("softmax", x)
    xp = get_array_module(x)
    if x.dtype.kind != "f":
        x = x.astype(numpy.float64)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sum_squared_error(y, t):
    """``0.5 * sum((y - t)^2)`` over all elements (the book's name for its "mean squared error")."""
    return _f._squared_error(y, t, "sum_squared_error")


def softmax_loss(X, t):
    """``cross_entropy_error(softmax(X), t)``."""
    return cross_entropy_error(softmax(real_array("softmax_loss", X, "X")), t)
