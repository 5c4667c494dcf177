"""Loss layers: ``forward(y, t)`` returns the loss, ``backward(dout=1)`` the gradient of the input.

Each computes stably (log-sum-exp for softmax, the logits form for sigmoid) and validates its
labels on every call, as book layers do.
"""
from __future__ import annotations

import numpy

from fastnn.backend import follow, is_device_array

__all__ = [
    "SoftmaxWithLoss", "SigmoidWithLoss", "MeanSquaredLoss", "check_labels", "Loss", "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy", "BinaryCrossentropy", "MeanSquaredError", "get", "LOSS_NAMES",
]


def _host_min_max(xp, t):
    return float(t.min()), float(t.max())


def check_labels(owner, t, n, classes, xp):
    """Validate targets for ``n`` rows of ``classes`` outputs; returns ``t`` as int64 indices or float one-hot.

    Index labels are integers, or floats holding whole numbers, in ``[0, classes)``. One-hot
    targets are floats of shape ``(n, classes)``.
    """
    if t.ndim == 2 and t.shape[1] == 1 and classes != 1:
        t = t.reshape(-1)
    if t.ndim == 1:
        if t.shape[0] != n:
            raise ValueError(f"{owner}: x has {n} rows but t has {t.shape[0]} labels")
        if t.dtype.kind not in "iuf" and t.dtype != numpy.bool_:
            raise TypeError(f"{owner}: labels t must be integers, got dtype {t.dtype}")
        if n:
            lo, hi = _host_min_max(xp, t)
            if numpy.isnan(lo) or numpy.isnan(hi):
                raise ValueError(f"{owner}: labels t contain NaN")
            if t.dtype.kind == "f" and not bool(xp.all(t == xp.floor(t))):
                raise ValueError(f"{owner}: class-index labels t must be whole numbers, got non-integer floats")
            if lo < 0 or hi >= classes:
                raise ValueError(f"{owner}: labels t must be in [0, {classes - 1}] for {classes} classes, "
                                 f"got min {lo:g}, max {hi:g}")
        return t.astype(numpy.int64, copy=False)
    if t.ndim == 2:
        if t.shape != (n, classes):
            raise ValueError(f"{owner}: one-hot t must have shape ({n}, {classes}) to match x, got {tuple(t.shape)}")
        return t
    raise ValueError(f"{owner}: t must be class indices (N,) or one-hot (N, C), got shape {tuple(t.shape)}")


class _LossLayer:
    def __init__(self, name=None):
        self.name = name or type(self).__name__
        self.loss = None
        self.y = None
        self.t = None

    def _prepare(self, x, t):
        ops = follow(x, t)
        if not ops.owns(x):
            if is_device_array(x):
                raise ValueError(f"{self.name}: x lives on the GPU but the current backend is {ops.name}; "
                                 f"use fastnn.asnumpy(x)")
            x = ops.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(numpy.float64)
        if not ops.owns(t):
            t = ops.asarray(t)
        if x.ndim != 2:
            raise ValueError(f"{self.name}: expected x of shape (N, C), got {tuple(x.shape)}; "
                             f"a single sample needs a batch axis: x.reshape(1, -1)")
        return ops, x, t

    def _check_backward(self):
        if self.y is None:
            raise ValueError(f"{self.name}: backward() was called before forward()")


class SoftmaxWithLoss(_LossLayer):
    """Softmax followed by cross-entropy, fused: ``forward(x, t)`` takes the scores ``x: (N, C)``
    and one-hot ``t: (N, C)`` or class indices ``t: (N,)``, and returns the mean loss, computed
    stably as ``logsumexp(x) - x[t]``. ``backward(dout=1)`` returns ``dout * (y - t) / N`` where
    ``y`` is the softmax output (kept as ``self.y``)."""

    def forward(self, x, t):
        ops, x, t = self._prepare(x, t)
        self.t = check_labels(self.name, t, x.shape[0], x.shape[1], ops.xp)
        if self.t.ndim == 2 and self.t.dtype != x.dtype:
            self.t = self.t.astype(x.dtype)
        self.ops = ops
        self.y = ops.xp.empty_like(x)
        self.loss = ops.softmax_xent(x, self.t, y=self.y)  # one pass: the loss and the probabilities
        return self.loss[()]

    def backward(self, dout=1):
        self._check_backward()
        return self.ops.softmax_xent_backward(self.y, self.t, dout)


class SigmoidWithLoss(_LossLayer):
    """Sigmoid followed by binary cross-entropy, fused: ``forward(x, t)`` with targets in [0, 1] of
    ``x``'s shape returns the mean over all elements; ``backward(dout=1)`` returns
    ``dout * (sigmoid(x) - t) / x.size``."""

    def forward(self, x, t):
        ops, x, t = self._prepare(x, t)
        if t.shape != x.shape:
            t = t.reshape(x.shape) if t.size == x.size else t
        if t.shape != x.shape:
            raise ValueError(f"{self.name}: t must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        self.ops = ops
        self.t = t.astype(x.dtype, copy=False)
        self.dx = ops.xp.empty_like(x)
        self.y = ops.xp.empty_like(x)
        self.loss = ops.sigmoid_bce(x, self.t, y=self.y, dx=self.dx)
        return self.loss[()]

    def backward(self, dout=1):
        self._check_backward()
        return self.dx * self.dx.dtype.type(dout)


class MeanSquaredLoss(_LossLayer):
    """``forward(y, t)`` returns ``0.5 * sum((y - t)^2) / N`` (the book's ``mean_squared_error`` per
    sample, averaged over the batch); ``backward(dout=1)`` returns ``dout * (y - t) / N``.
    (``compile(loss="mse")`` is Keras's mean over every element instead.)"""

    def forward(self, y, t):
        ops, y, t = self._prepare(y, t)
        if t.shape != y.shape:
            raise ValueError(f"{self.name}: t must have y's shape {tuple(y.shape)}, got {tuple(t.shape)}")
        self.ops = ops
        self.y = y
        self.dx = ops.xp.empty_like(y)
        self.loss = ops.mse(y, t, 0.5 / y.shape[0], dx=self.dx)
        return self.loss[()]

    def backward(self, dout=1):
        self._check_backward()
        return self.dx * self.dx.dtype.type(dout)


# ---------------------------------------------------------------- Keras-named losses for compile()
class Loss:
    """A loss for ``compile``: ``compute(ops, out, t, dx)`` returns the mean loss (0-d, on the device)
    and writes the gradient with respect to ``out`` into ``dx``.

    ``fuse(last_activation)`` tells whether the model may hand it the logits of a final softmax
    (or sigmoid) instead of the probabilities: the pair is then computed as one stable kernel,
    and ``predict`` applies the activation itself.
    """

    name = "loss"
    labels = "dense"  # "index" (sparse), "one_hot" or "dense"
    target_range = None  # (low, high): the targets fit/evaluate accept, checked once per call

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)
        self.fused = False

    def fuse(self, last_activation):
        return False

    def compute(self, ops, out, t, dx):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class CategoricalCrossentropy(Loss):
    """Cross-entropy against one-hot targets ``(N, C)``; mean over the batch."""

    name = "categorical_crossentropy"
    labels = "one_hot"

    def fuse(self, last_activation):
        self.fused = last_activation == "softmax"
        return self.fused

    def compute(self, ops, out, t, dx):
        if self.fused or self.from_logits:
            return ops.softmax_xent(out, t, dx=dx)
        # probabilities from an unfused model: clip as Keras does
        xp = ops.xp
        eps = out.dtype.type(1e-7)
        p = xp.clip(out, eps, out.dtype.type(1) - eps)
        dense = ops._targets(t, out.shape, out.dtype)
        n = out.dtype.type(out.shape[0])
        if dx is not None:
            dx[...] = -dense / p / n
        return xp.asarray(-(dense * xp.log(p)).sum() / n, dtype=out.dtype)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Cross-entropy against class indices ``(N,)``; mean over the batch."""

    name = "sparse_categorical_crossentropy"
    labels = "index"


class BinaryCrossentropy(Loss):
    """Binary cross-entropy against targets in [0, 1] of the output's shape; mean over all elements.
    ``fit``/``evaluate`` refuse targets outside [0, 1] (class indices 0..9, say), which would train
    to a meaningless, even negative, loss."""

    name = "binary_crossentropy"
    target_range = (0.0, 1.0)

    def fuse(self, last_activation):
        self.fused = last_activation == "sigmoid"
        return self.fused

    def compute(self, ops, out, t, dx):
        if self.fused or self.from_logits:
            return ops.sigmoid_bce(out, t, dx=dx)
        xp = ops.xp
        eps = out.dtype.type(1e-7)
        p = xp.clip(out, eps, out.dtype.type(1) - eps)
        t = t.astype(out.dtype, copy=False)
        size = out.dtype.type(out.size)
        if dx is not None:
            dx[...] = (p - t) / (p * (1 - p)) / size
        return xp.asarray(-(t * xp.log(p) + (1 - t) * xp.log1p(-p)).sum() / size, dtype=out.dtype)


class MeanSquaredError(Loss):
    """Keras's ``"mse"``: the mean of ``(y - t)^2`` over every element (no 0.5)."""

    name = "mse"

    def compute(self, ops, out, t, dx):
        return ops.mse(out, t, 1.0 / out.size, dx=dx)


class MeanAbsoluteError(Loss):
    """Keras's ``"mae"``: the mean of ``|y - t|`` over every element; gradient ``sign(y - t) / size``
    (0 where ``y == t``). Written from array operations: no kernel of its own."""

    name = "mae"

    def compute(self, ops, out, t, dx):
        e = out - t.astype(out.dtype, copy=False)
        size = out.dtype.type(out.size)
        if dx is not None:
            dx[...] = ops.xp.sign(e) / size
        return ops.xp.asarray(ops.xp.abs(e).sum() / size, dtype=out.dtype)


class Huber(Loss):
    """Keras's ``"huber"`` (``delta=1.0``): per element ``0.5 e^2`` where ``|e| <= delta``, else
    ``delta * (|e| - 0.5 delta)``, with ``e = y - t``; mean over every element. Gradient
    ``clip(e, -delta, delta) / size``. Written from array operations."""

    name = "huber"

    def __init__(self, delta=1.0, from_logits=False):
        super().__init__(from_logits)
        if isinstance(delta, bool) or not isinstance(delta, (int, float, numpy.floating)) or not delta > 0 \
                or not numpy.isfinite(delta):
            raise ValueError(f"Huber: delta must be a positive number, got {delta!r}")
        self.delta = float(delta)

    def compute(self, ops, out, t, dx):
        xp = ops.xp
        e = out - t.astype(out.dtype, copy=False)
        d = out.dtype.type(self.delta)
        a = xp.abs(e)
        size = out.dtype.type(out.size)
        if dx is not None:
            dx[...] = xp.clip(e, -d, d) / size
        per = xp.where(a <= d, out.dtype.type(0.5) * e * e, d * (a - out.dtype.type(0.5) * d))
        return xp.asarray(per.sum() / size, dtype=out.dtype)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class CustomLoss(Loss):
    """Wraps a user object with ``forward(y, t)`` and ``backward()`` (like ``SoftmaxWithLoss``); it takes
    whatever targets the object does (class indices or arrays), and validates them itself."""

    labels = "any"

    def __init__(self, obj):
        super().__init__()
        self.obj = obj
        self.name = getattr(obj, "name", type(obj).__name__)

    def compute(self, ops, out, t, dx):
        loss = self.obj.forward(out, t)
        if dx is not None:
            dx[...] = self.obj.backward()
        return ops.xp.asarray(loss, dtype=out.dtype)


_NAMED_LOSSES = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "huber": Huber,
}
LOSS_NAMES = tuple(_NAMED_LOSSES)


def get(loss):
    """A ``Loss`` from a Keras name, a ``Loss`` instance, a layer-like object with ``forward(y, t)`` and
    ``backward()``, or a class of such objects."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        cls = _NAMED_LOSSES.get(loss.lower())
        if cls is None:
            raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(LOSS_NAMES)}")
        return cls()
    if isinstance(loss, type):
        loss = loss()
    if hasattr(loss, "forward") and hasattr(loss, "backward"):
        return CustomLoss(loss)
    raise TypeError(f"loss must be a name ({', '.join(LOSS_NAMES)}), a Loss, or an object with forward(y, t) "
                    f"and backward(); got {type(loss).__name__}")
