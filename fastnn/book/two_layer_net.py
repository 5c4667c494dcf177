"""The book's chapter-5 ``TwoLayerNet`` (``ch05/two_layer_net.py``): ``Affine -> Relu -> Affine -> SoftmaxWithLoss``
trained by backpropagation.

Two networks in the book share the name ``TwoLayerNet``; pick by the book's file layout:

- ``from fastnn.book.two_layer_net import TwoLayerNet`` (or ``fastnn.book.ch05``): chapter 5's,
  this one, built from layers (ReLU; ``gradient`` by backpropagation).
- ``from fastnn.book.ch04 import TwoLayerNet``: chapter 4's, a sigmoid network without layers whose
  ``predict`` returns probabilities and whose ``gradient`` is written out by hand.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy

from fastnn.book import layers as L
from fastnn.book._engine import check_init_std
from fastnn.book._net import InferenceNet
from fastnn.functions import check_int

__all__ = ["TwoLayerNet"]


class TwoLayerNet(InferenceNet):
    """``Affine1 -> Relu1 -> Affine2`` with ``lastLayer = SoftmaxWithLoss()`` (the book's names).

    Weights are ``weight_init_std * randn``, biases zero. ``seed``, ``dtype`` (float64) and
    ``backend`` are keyword-only fastnn extras; ``seed=None`` draws from NumPy's global generator.
    Sizes must be positive integers and ``weight_init_std`` a finite number >= 0 (a ``ValueError``
    naming the argument otherwise, before any weight is drawn).
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *, seed=None,
                 dtype="float64", backend=None):
        for arg, size in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
            check_int("TwoLayerNet", arg, size)
        check_init_std("TwoLayerNet", weight_init_std, names=False)
        self._start(seed, dtype, backend)
        W1 = self._randn(weight_init_std, input_size, hidden_size)
        b1 = numpy.zeros(hidden_size, self.dtype)
        W2 = self._randn(weight_init_std, hidden_size, output_size)
        b2 = numpy.zeros(output_size, self.dtype)
        self.layers = OrderedDict()
        self.layers["Affine1"] = L.Affine(W1, b1, name="Affine1")
        self.layers["Relu1"] = L.Relu(name="Relu1")
        self.layers["Affine2"] = L.Affine(W2, b2, name="Affine2")
        self.lastLayer = L.SoftmaxWithLoss()
        a1, a2 = self.layers["Affine1"], self.layers["Affine2"]
        self._bind([("W1", a1, "W"), ("b1", a1, "b"), ("W2", a2, "W"), ("b2", a2, "b")])

    @property
    def last_layer(self):
        return self.lastLayer
