"""Chapter 4's ``TwoLayerNet`` (``ch04/two_layer_net.py``): a sigmoid network without layers.

``predict`` returns the softmax *probabilities* (chapter 5's returns scores), ``loss`` is the
book's ``cross_entropy_error`` of them, ``numerical_gradient`` differentiates it by central
differences, and ``gradient`` is the chapter's hand-written backward pass. Chapter 5's ReLU network
of the same name is ``fastnn.book.two_layer_net.TwoLayerNet`` (``fastnn.book.ch05``).

Computes with the backend's primitives (``gemm``, ``bias_act`` with the sigmoid, ``softmax``,
``act_backward``, ``bias_grad``); ``params`` are views into one flat buffer.
"""
from __future__ import annotations

import numpy

from fastnn.book._engine import book_rng, check_init_std, flat_views, net_ops
from fastnn.book.functions import cross_entropy_error
from fastnn.book.gradient import numerical_gradient
from fastnn.functions import check_int
from fastnn.kernels import LINEAR, SIGMOID

__all__ = ["TwoLayerNet"]


class TwoLayerNet:
    """``softmax(sigmoid(x @ W1 + b1) @ W2 + b2)`` with weights ``weight_init_std * randn``, biases zero.

    ``seed``, ``dtype`` (float64) and ``backend`` are keyword-only fastnn extras; ``seed=None``
    draws from NumPy's global generator, as the book does. Sizes must be positive integers and
    ``weight_init_std`` a finite number >= 0 (a ``ValueError`` naming the argument otherwise).
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *, seed=None,
                 dtype="float64", backend=None):
        for arg, size in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
            check_int("TwoLayerNet", arg, size)
        check_init_std("TwoLayerNet", weight_init_std, names=False)
        self.ops = net_ops(backend)
        self.dtype = numpy.dtype(dtype)
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"TwoLayerNet: dtype must be float32 or float64, got {dtype!r}")
        rng = book_rng(seed)
        host = {
            "W1": weight_init_std * rng.standard_normal((input_size, hidden_size)),
            "b1": numpy.zeros(hidden_size),
            "W2": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b2": numpy.zeros(output_size),
        }
        self.flat, self.params = flat_views(self.ops, self.dtype, host)

    def _x(self, x):
        x = x if self.ops.owns(x) else self.ops.asarray(x)
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _forward(self, x):
        ops, p = self.ops, self.params
        z1 = ops.bias_act(ops.gemm(x, p["W1"]), p["b1"], SIGMOID)
        y = ops.softmax(ops.bias_act(ops.gemm(z1, p["W2"]), p["b2"], LINEAR))
        return z1, y

    def predict(self, x):
        """Softmax probabilities ``(N, output_size)`` of ``x: (N, input_size)``."""
        return self._forward(self._x(x))[1]

    def loss(self, x, t):
        """``cross_entropy_error(predict(x), t)`` (the book's, ``1e-7`` inside the log)."""
        return cross_entropy_error(self.predict(x), t)

    def accuracy(self, x, t):
        """Fraction of rows whose most probable class is the label (``t`` one-hot, or class indices)."""
        y = self.predict(x).argmax(axis=1)
        if getattr(t, "ndim", 1) != 1:
            t = t.argmax(axis=1)
        t = t if self.ops.owns(t) else self.ops.asarray(t)
        return int((y == t).sum()) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        """Central-difference gradients of ``loss(x, t)``: ``{'W1', 'b1', 'W2', 'b2'}``."""
        def loss_W(W):
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key]) for key in ("W1", "b1", "W2", "b2")}

    def gradient(self, x, t):
        """The chapter's backward pass: ``dy = (y - t) / N``; ``da1 = sigmoid'(a1) * (dy @ W2.T)``."""
        ops, p = self.ops, self.params
        x = self._x(x)
        z1, y = self._forward(x)
        t = t if ops.owns(t) else ops.asarray(t)
        dy = ops.softmax_xent_backward(y, t)  # (y - t) / N, t one-hot or class indices
        grads = {"W2": ops.gemm(z1, dy, trans_a=True), "b2": ops.bias_grad(dy)}
        da1 = ops.act_backward(ops.gemm(dy, p["W2"], trans_b=True), z1, SIGMOID)  # z1 * (1 - z1) * dz1
        grads["W1"] = ops.gemm(x, da1, trans_a=True)
        grads["b1"] = ops.bias_grad(da1)
        return {key: grads[key] for key in ("W1", "b1", "W2", "b2")}
