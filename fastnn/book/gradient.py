"""The book's ``common/gradient.py``: central differences with ``h = 1e-4``.

``f`` is evaluated with one element of ``x`` moved by ``+h`` and ``-h`` in place and then
restored, so ``f`` may ignore its argument and read arrays that a layer holds (the book's
``lambda W: net.loss(x, t)``).
"""
from __future__ import annotations

from fastnn.functions import get_array_module
from fastnn.functions import numerical_gradient as _numerical_gradient

__all__ = ["numerical_gradient", "numerical_gradient_2d"]


def _numerical_gradient_1d(f, x):
    """The gradient of ``f`` at a 1-D ``x``."""
    return _numerical_gradient(f, x)


def numerical_gradient_2d(f, X):
    """``_numerical_gradient_1d(f, X)`` for a 1-D ``X``; for a 2-D ``X``, that of ``f`` at each row."""
    if X.ndim == 1:
        return _numerical_gradient_1d(f, X)
    grad = get_array_module(X).zeros_like(X)
    for idx in range(X.shape[0]):
        grad[idx] = _numerical_gradient_1d(f, X[idx])
    return grad


def numerical_gradient(f, x):
    """The gradient of scalar ``f`` at ``x`` (a float array of any shape, perturbed in place)."""
    return _numerical_gradient(f, x)
