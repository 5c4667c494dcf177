"""Loss layers: ``forward(y, t)`` returns the loss, ``backward(dout=1)`` the gradient of the input.

Each computes stably (log-sum-exp for softmax, the logits form for sigmoid) and validates its
labels on every call, as book layers do.
"""
from __future__ import annotations

import numpy

from fastnn.backend import array_module, follow, is_device_array
from fastnn.functions import check_flag

__all__ = [
    "SoftmaxWithLoss", "SigmoidWithLoss", "MeanSquaredLoss", "check_labels", "Loss", "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy", "BinaryCrossentropy", "MeanSquaredError", "MeanAbsoluteError", "Huber",
    "FunctionLoss", "get", "LOSS_NAMES", "mean_squared_error", "mean_absolute_error", "mse", "mae", "huber",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
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
        self.from_logits = check_flag(type(self).__name__, "from_logits", from_logits)
        self.fused = False

    def fuse(self, last_activation):
        return False

    def compute(self, ops, out, t, dx):
        raise NotImplementedError

    def per_sample(self, ops, out, t):
        """Each sample's loss ``(N,)`` (whose mean is ``compute``'s value): what sample weights weigh."""
        raise ValueError(f"loss {self.name!r} has no per-sample form, so sample_weight and class_weight cannot "
                         f"weigh it; use one of fastnn's named losses")

    def compute_weighted(self, ops, out, t, dx, w):
        """Keras's weighted loss ``sum_i w_i l_i / N`` (``w``: ``(N,)`` on the device), with its gradient
        in ``dx``: each sample's row of the unweighted gradient scaled by its weight."""
        self.compute(ops, out, t, dx)
        if dx is not None:
            dx *= w.reshape((-1,) + (1,) * (dx.ndim - 1))
        per = self.per_sample(ops, out, t)
        return ops.xp.asarray((per * w).sum() / out.dtype.type(out.shape[0]), dtype=out.dtype)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


def _row_means(a):
    return a.reshape(a.shape[0], -1).mean(axis=1)


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

    def per_sample(self, ops, out, t):
        xp = ops.xp
        dense = ops._targets(t, out.shape, out.dtype)
        if self.fused or self.from_logits:
            m = out.max(axis=1, keepdims=True)
            lse = m[:, 0] + xp.log(xp.exp(out - m).sum(axis=1))
            return lse * dense.sum(axis=1) - (dense * out).sum(axis=1)
        eps = out.dtype.type(1e-7)
        return -(dense * xp.log(xp.clip(out, eps, out.dtype.type(1) - eps))).sum(axis=1)


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

    def per_sample(self, ops, out, t):
        xp = ops.xp
        t = t.reshape(out.shape).astype(out.dtype, copy=False)
        if self.fused or self.from_logits:
            return _row_means(xp.maximum(out, 0) - out * t + xp.log1p(xp.exp(-xp.abs(out))))
        eps = out.dtype.type(1e-7)
        p = xp.clip(out, eps, out.dtype.type(1) - eps)
        return _row_means(-(t * xp.log(p) + (1 - t) * xp.log1p(-p)))


class MeanSquaredError(Loss):
    """Keras's ``"mse"``: the mean of ``(y - t)^2`` over every element (no 0.5)."""

    name = "mse"

    def compute(self, ops, out, t, dx):
        return ops.mse(out, t, 1.0 / out.size, dx=dx)

    def per_sample(self, ops, out, t):
        e = out - t.reshape(out.shape).astype(out.dtype, copy=False)
        return _row_means(e * e)


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

    def per_sample(self, ops, out, t):
        return _row_means(ops.xp.abs(out - t.reshape(out.shape).astype(out.dtype, copy=False)))


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
        size = out.dtype.type(out.size)
        if dx is not None:
            dx[...] = xp.clip(e, -d, d) / size
        return xp.asarray(self._elements(xp, e, d).sum() / size, dtype=out.dtype)

    @staticmethod
    def _elements(xp, e, d):
        a = xp.abs(e)
        return xp.where(a <= d, e.dtype.type(0.5) * e * e, d * (a - e.dtype.type(0.5) * d))

    def per_sample(self, ops, out, t):
        e = out - t.reshape(out.shape).astype(out.dtype, copy=False)
        return _row_means(self._elements(ops.xp, e, out.dtype.type(self.delta)))

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


class FunctionLoss(Loss):
    """A Keras-style loss function ``fn(y_true, y_pred)`` returning each sample's loss (``(N,)``, or
    ``(N, ...)`` averaged per sample); the loss is their mean. It must treat samples independently
    (every Keras loss does).

    fastnn has no automatic differentiation, so the gradient with respect to the outputs comes from
    central differences (the book's ``numerical_gradient``), in float64, one output column at a time
    for the whole batch: two calls of ``fn`` per output column per batch, relative error about 1e-8.
    Fine for a handful of outputs; for wide ones write a ``Loss`` with its own gradient."""

    labels = "any"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def _rows(self, xp, t, y):
        v = xp.asarray(self.fn(t, y), dtype=xp.float64)
        if v.ndim == 0 or v.shape[0] != y.shape[0]:
            raise ValueError(f"loss {self.name}: the function must return each sample's loss, shape ({y.shape[0]},) "
                             f"or ({y.shape[0]}, ...), got shape {tuple(v.shape)}")
        return v.reshape(v.shape[0], -1).mean(axis=1)

    def per_sample(self, ops, out, t):
        return self._rows(ops.xp, t, out.astype(ops.xp.float64)).astype(out.dtype)

    def compute(self, ops, out, t, dx):
        xp = ops.xp
        y = out.astype(xp.float64)
        loss = self._rows(xp, t, y).mean()
        if dx is not None:
            flat, n = y.reshape(y.shape[0], -1), y.shape[0]
            grad = xp.empty_like(flat)
            for j in range(flat.shape[1]):
                col = flat[:, j].copy()
                h = 1e-5 * xp.maximum(1.0, xp.abs(col))
                flat[:, j] = col + h
                up = self._rows(xp, t, y)
                flat[:, j] = col - h
                down = self._rows(xp, t, y)
                flat[:, j] = col
                grad[:, j] = (up - down) / (2 * h) / n
            dx[...] = grad.reshape(out.shape)
        return xp.asarray(loss, dtype=out.dtype)


# ---------------------------------------------------------------- Keras's loss functions
def _module(a):
    """The array module of ``a``: NumPy for host arrays, CuPy for device arrays."""
    return array_module(a)


def _row_mean_last(v):
    return v.mean(axis=-1)


def mean_squared_error(y_true, y_pred):
    """Keras's ``mean_squared_error``: each sample's mean of ``(y_pred - y_true)^2`` over the last axis."""
    d = y_pred - y_true
    return _row_mean_last(d * d)


def mean_absolute_error(y_true, y_pred):
    """Keras's ``mean_absolute_error``: each sample's mean of ``|y_pred - y_true|`` over the last axis."""
    return _row_mean_last(_module(y_pred).abs(y_pred - y_true))


def huber(y_true, y_pred, delta=1.0):
    """Keras's ``huber``: each sample's mean Huber loss over the last axis."""
    xp = _module(y_pred)
    return _row_mean_last(Huber._elements(xp, y_pred - y_true, y_pred.dtype.type(delta)))


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's ``categorical_crossentropy`` of one-hot ``y_true``: each sample's loss."""
    xp = _module(y_pred)
    if from_logits:
        m = y_pred.max(axis=-1, keepdims=True)
        logp = y_pred - m - xp.log(xp.exp(y_pred - m).sum(axis=-1, keepdims=True))
    else:
        eps = y_pred.dtype.type(1e-7)
        p = xp.clip(y_pred / y_pred.sum(axis=-1, keepdims=True), eps, 1 - eps)
        logp = xp.log(p)
    return -(y_true * logp).sum(axis=-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's ``sparse_categorical_crossentropy`` of class indices ``y_true``: each sample's loss."""
    xp = _module(y_pred)
    onehot = xp.zeros(y_pred.shape, dtype=y_pred.dtype)
    onehot[xp.arange(y_pred.shape[0]), xp.asarray(y_true).reshape(-1).astype(xp.int64)] = 1
    return categorical_crossentropy(onehot, y_pred, from_logits)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's ``binary_crossentropy``: each sample's mean over the last axis."""
    xp = _module(y_pred)
    y_true = y_true.reshape(y_pred.shape)
    if from_logits:
        return _row_mean_last(xp.maximum(y_pred, 0) - y_pred * y_true + xp.log1p(xp.exp(-xp.abs(y_pred))))
    eps = y_pred.dtype.type(1e-7)
    p = xp.clip(y_pred, eps, 1 - eps)
    return _row_mean_last(-(y_true * xp.log(p) + (1 - y_true) * xp.log1p(-p)))


mse, mae = mean_squared_error, mean_absolute_error
# the functions compile() maps to its exact losses (own gradients, fused kernels); any other function
# becomes a FunctionLoss
_LOSS_FUNCTIONS = {mean_squared_error: "mse", mean_absolute_error: "mae", huber: "huber",
                   categorical_crossentropy: "categorical_crossentropy",
                   sparse_categorical_crossentropy: "sparse_categorical_crossentropy",
                   binary_crossentropy: "binary_crossentropy"}


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
    if callable(loss):
        name = _LOSS_FUNCTIONS.get(loss)
        return _NAMED_LOSSES[name]() if name is not None else FunctionLoss(loss)
    raise TypeError(f"loss must be a name ({', '.join(LOSS_NAMES)}), a Loss, a function (y_true, y_pred), or an "
                    f"object with forward(y, t) and backward(); got {type(loss).__name__}")
