"""Weight regularizers, as Keras's: each adds a penalty to the loss and its gradient to ``dW``.

``l2(c)``: ``c * sum(W^2)`` (gradient ``2 c W``); ``l1(c)``: ``c * sum(|W|)`` (gradient ``c sign(W)``);
``l1_l2(l1, l2)``: both. (The book networks' ``weight_decay_lambda`` is the book's ``0.5 * lambda * sum(W^2)``.)
"""
from __future__ import annotations

import math
import numbers

__all__ = ["Regularizer", "l1", "l2", "l1_l2", "get"]


class Regularizer:
    def __init__(self, l1=0.0, l2=0.0):
        for name, value in (("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"Regularizer: {name} factor must be a finite non-negative number, got {value!r}")
        self.l1, self.l2 = float(l1), float(l2)

    def penalty(self, ops, w):
        """The loss term for weight ``w`` (a 0-d array on the backend)."""
        xp = ops.xp
        total = xp.zeros((), dtype=w.dtype)
        if self.l1:
            total = total + w.dtype.type(self.l1) * xp.abs(w).sum()
        if self.l2:
            total = total + w.dtype.type(self.l2) * (w * w).sum()
        return total

    def add_grad(self, ops, w, dw):
        """``dw += d penalty / dw``, in place."""
        if self.l1:
            dw += w.dtype.type(self.l1) * ops.xp.sign(w)
        if self.l2:
            dw += w.dtype.type(2 * self.l2) * w

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


def l1(l1=0.01):
    return Regularizer(l1=l1)


def l2(l2=0.01):
    return Regularizer(l2=l2)


def l1_l2(l1=0.01, l2=0.01):
    return Regularizer(l1=l1, l2=l2)


def get(reg):
    """A regularizer from ``None``, an instance, a name (``"l1"``, ``"l2"``, ``"l1_l2"``) or a config dict."""
    if reg is None or isinstance(reg, Regularizer):
        return reg
    if isinstance(reg, str):
        table = {"l1": l1, "l2": l2, "l1_l2": l1_l2}
        if reg not in table:
            raise ValueError(f"unknown regularizer {reg!r}; valid names: l1, l2, l1_l2")
        return table[reg]()
    if isinstance(reg, dict):
        return Regularizer(**reg)
    raise TypeError(f"regularizer must be None, a name or a Regularizer, got {type(reg).__name__}")
