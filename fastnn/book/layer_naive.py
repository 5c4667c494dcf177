"""The book's ``ch05/layer_naive.py``: ``MulLayer`` and ``AddLayer``, the two-input layers of
chapter 5's shopping example (``buy_apple.py``, ``buy_apple_orange.py``), with the book's names and
protocol: ``forward(x, y)`` and ``backward(dout) -> (dx, dy)``.

They take Python numbers (the book's prices and counts) or arrays of any backend, as the book's
do; complex, object and string values are a ``TypeError`` naming the layer, the call and the
argument, and ``backward`` before ``forward`` is a ``ValueError`` (the book's ``MulLayer`` would
multiply by ``None``).
"""
from __future__ import annotations

import numbers

from fastnn.functions import check_real

__all__ = ["MulLayer", "AddLayer"]


def _value(owner, arg, v):
    """``v`` itself when it is a real Python number (the book's scalars stay scalars), else checked as
    an array of real numbers."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return v
    if isinstance(v, (bool, complex, str, bytes)) or v is None:
        raise TypeError(f"{owner}: {arg} must be a real number or an array of real numbers, got {v!r}")
    return check_real(owner, arg, v)


class MulLayer:
    """``out = x * y``; ``backward(dout) = (dout * y, dout * x)`` (the inputs swapped)."""

    def __init__(self):
        self.x = None
        self.y = None

    def forward(self, x, y):
        self.x = _value("MulLayer.forward", "x", x)
        self.y = _value("MulLayer.forward", "y", y)
        return self.x * self.y

    def backward(self, dout):
        if self.x is None:
            raise ValueError("MulLayer.backward: called before forward()")
        dout = _value("MulLayer.backward", "dout", dout)
        return dout * self.y, dout * self.x


class AddLayer:
    """``out = x + y``; ``backward(dout) = (dout, dout)`` (each input's gradient is ``dout * 1``)."""

    def forward(self, x, y):
        return _value("AddLayer.forward", "x", x) + _value("AddLayer.forward", "y", y)

    def backward(self, dout):
        dout = _value("AddLayer.backward", "dout", dout)
        return dout * 1, dout * 1
