"""The book's ``common/layers.py``: ``Relu``, ``Sigmoid``, ``Affine``, ``SoftmaxWithLoss``, ``Dropout``,
``BatchNormalization``, ``Convolution``, ``Pooling``, with the book's signatures, defaults and
conventions, computing through fastnn's primitives (fused kernels on numba and CUDA).

Every layer has ``forward(x, train_flg=True)`` (Keras's ``training=`` too; layers without a
training mode ignore it) and ``backward(dout)``, which never writes into ``dout`` (the book's
``Relu.backward`` zeroes ``dout`` in place). Layers compute in the dtype of the arrays they hold
(``W``, ``gamma``) or are given, and on the backend of their inputs (CuPy arrays on the GPU).

Where this module keeps the book's behaviour and ``fastnn.layers`` follows Keras/PyTorch:

============================  ====================================  ===================================
                              ``fastnn.book.layers`` (the book)     ``fastnn.layers``
============================  ====================================  ===================================
``Dropout``                   non-inverted: ``x * mask`` in         inverted: ``x * mask / (1 - rate)``
                              training, ``x * (1 - ratio)`` at      in training, ``x`` at inference
                              inference
``Pooling`` default stride    2 (``Pooling(pool_h, pool_w,          1 (``MaxPooling2D``: pool size)
                              stride=2, pad=0)``)
``BatchNormalization``        a 1-sample batch in training (the     refused for the book's form
                              output is ``beta``, ``dx`` is 0)
``Convolution`` bias          a scalar (``Convolution(w, 0)``) is   shape ``(FN,)`` only
                              broadcast to ``(FN,)``
``SoftmaxWithLoss`` loss      ``-log(y + 1e-7)`` (the book's        ``logsumexp(x) - x[t]`` (exact)
                              ``cross_entropy_error``); exact with
                              ``SoftmaxWithLoss(exact=True)``
============================  ====================================  ===================================

Every ``forward`` and ``backward`` checks its arrays' dtype (a kind check, no scan of the values):
float, int and bool arrays (and lists of numbers) are accepted; complex, object and string arrays
are a ``TypeError`` naming the class, the layer, the call, the argument, the dtype and the shape.
An empty batch (N = 0) passes through every layer but a training-mode ``BatchNormalization``
(whose batch mean divides by N) and ``SoftmaxWithLoss`` (a mean over the batch): those refuse it
with a ``ValueError``.

Numerically, two places differ from the book's code on purpose: ``Pooling`` with ``pad > 0`` pads
with ``-inf`` (padding never wins, as ``torch.nn.functional.max_pool2d``; the book pads with zeros
and its ``forward`` then fails on a shape mismatch), and ``Sigmoid`` never overflows.
"""
from __future__ import annotations

import numbers

import numpy

from fastnn import functions as _functions
from fastnn.backend import follow
from fastnn.functions import check_number, check_real
from fastnn.book._engine import book_rng, draw_seed
from fastnn.book.functions import *  # noqa: F401,F403  the book's layers module sees these names too
from fastnn.book.util import col2im, im2col  # noqa: F401
from fastnn.layers import Affine as _Affine
from fastnn.layers import BatchNormalization as _BatchNormalization
from fastnn.layers import Convolution as _Convolution
from fastnn.layers import Dropout as _Dropout
from fastnn.layers import Pooling as _Pooling
from fastnn.layers import Relu as _Relu
from fastnn.layers import Sigmoid as _Sigmoid
from fastnn.layers.base import step_context, train_flag
from fastnn.losses import SoftmaxWithLoss as _SoftmaxWithLoss
from fastnn.losses import check_labels

__all__ = ["Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout", "BatchNormalization", "Convolution",
           "Pooling", "im2col", "col2im"]


def _who(layer, method):
    """``Relu 'relu_3'.forward``: the class, the layer's name (when it is not the class's) and the call."""
    cls = type(layer).__name__
    return f"{cls}.{method}" if layer.name == cls else f"{cls} {layer.name!r}.{method}"


def _real(layer, method, arg, a):
    """``a`` when it holds real numbers (float, int or bool), else ``check_real``'s ``TypeError`` naming
    the layer, the argument, the dtype and the shape; a list of numbers becomes an array. A dtype-kind
    check, no scan of the values: book layers validate on each call, so it must cost next to nothing."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and dtype.kind in "fiub":
        return a
    return check_real(_who(layer, method), arg, a)


def _real_weight(layer, arg, a):
    if getattr(a, "dtype", None) is not None and a.dtype.kind not in "fiub":
        cls = type(layer).__name__
        raise TypeError(f"{cls} {layer.name!r}: {arg} must hold real numbers, got dtype {a.dtype} of shape "
                        f"{tuple(a.shape)}")


class _Checked:
    """``forward(x)`` and ``backward(dout)`` refuse complex, object and string arrays by name (DESIGN:
    book layers validate on each call)."""

    def forward(self, x, train_flg=True, training=None):
        return super().forward(_real(self, "forward", "x", x), train_flg, training)

    def backward(self, dout):
        return super().backward(_real(self, "backward", "dout", dout))


class Relu(_Checked, _Relu):
    """``out = max(0, x)``; ``backward`` passes ``dout`` where ``x > 0``. ``mask`` is the book's
    ``x <= 0`` of the last ``forward``."""

    @property
    def mask(self):
        return None if self.y is None else self.y <= 0


class Sigmoid(_Checked, _Sigmoid):
    """``out = 1 / (1 + exp(-x))`` (never overflows); ``backward`` is ``dout * (1 - out) * out``.
    ``out`` is the last ``forward``'s output."""

    @property
    def out(self):
        return self.y


class Affine(_Checked, _Affine):
    """``out = x @ W + b`` on the arrays ``W: (D, H)``, ``b: (H,)`` it is given (kept by reference).

    Inputs of more than two dimensions are flattened per sample (``original_x_shape``), and
    ``backward`` returns ``dx`` in their shape and fills ``dW``, ``db``. Computes in ``W``'s dtype.
    An empty batch gives an empty output (and zero ``dW``, ``db``).
    """

    def __init__(self, W, b, name=None):
        super().__init__(W, b, name=name)
        _real_weight(self, "b", b)

    def _flat_input(self, x):
        if x.ndim >= 2 and x.shape[0] == 0:  # reshape(0, -1) is ambiguous: give the width
            features = int(numpy.prod(x.shape[1:]))
            if features != self.in_features:
                raise ValueError(f"{self.name} {self._label()}: expected x of shape (N, {self.in_features}), "
                                 f"got {tuple(x.shape)} ({features} features)")
            return x.reshape(0, features)
        return super()._flat_input(x)

    @property
    def original_x_shape(self):
        return self.x_shape


class SoftmaxWithLoss(_SoftmaxWithLoss):
    """Softmax then cross-entropy: ``forward(x, t)`` returns the mean loss over the batch of scores
    ``x: (N, C)`` against one-hot ``t: (N, C)`` or class indices ``t: (N,)``.

    The loss is the book's ``cross_entropy_error(softmax(x), t)``, ``1e-7`` inside the log
    included (the book's results); ``exact=True`` computes ``logsumexp(x) - x[t]`` instead, which
    differs by about ``1e-7 / y[t]`` and has no cap at ``-log(1e-7)``. ``backward(dout=1)`` returns
    ``dout * (y - t) / N`` (the book's is ``(y - t) / N``, with ``dout`` unused). Keeps ``loss``,
    ``y`` (the softmax output) and ``t``.
    """

    def __init__(self, exact=False, name=None):
        super().__init__(name=name)
        self.exact = bool(exact)

    def forward(self, x, t):
        x = _real(self, "forward", "x", x)
        t = _real(self, "forward", "t", t)
        if x.ndim == 2 and x.shape[0] == 0:
            raise ValueError(f"{_who(self, 'forward')}: x has no rows (N=0, shape {tuple(x.shape)}); the loss is "
                             f"a mean over the batch and divides by N")
        if self.exact:
            return super().forward(x, t)
        ops, x, t = self._prepare(x, t)
        self.t = check_labels(self.name, t, x.shape[0], x.shape[1], ops.xp)
        if self.t.ndim == 2 and self.t.dtype != x.dtype:
            self.t = self.t.astype(x.dtype)
        self.ops = ops
        self.y = ops.softmax(x)
        self.loss = _functions.cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        if isinstance(dout, bool) or not isinstance(dout, numbers.Real):
            kind = getattr(getattr(dout, "dtype", None), "kind", None)
            if kind is None or kind not in "fiu":
                got = f"dtype {dout.dtype} of shape {tuple(dout.shape)}" if kind is not None else repr(dout)
                raise TypeError(f"{_who(self, 'backward')}: dout must be a real number (or array), got {got}")
        return super().backward(dout)


class Dropout(_Dropout):
    """The book's (non-inverted) dropout (Srivastava et al. 2014; arXiv:1207.0580).

    Training: ``out = x * mask`` with ``mask`` 1 for kept units (each with probability
    ``1 - dropout_ratio``) and 0 for dropped ones; inference: ``out = x * (1 - dropout_ratio)``.
    ``backward`` is ``dout * mask``. Weights trained this way give the book's outputs (the inverted
    ``fastnn.layers.Dropout`` would not).

    Masks come from the backend's counter-based ``dropout_mask`` primitive (the same on every
    backend), seeded from NumPy's global generator (so ``np.random.seed(n)`` repeats them) unless
    ``seed=`` is given; a new mask at each training-mode ``forward`` (a network pins one per batch).
    """

    def __init__(self, dropout_ratio=0.5, *, seed=None, name=None):
        if seed is None:
            seed = draw_seed(book_rng())
        super().__init__(dropout_ratio=dropout_ratio, seed=seed, name=name)

    def forward(self, x, train_flg=True, training=None):
        x = _real(self, "forward", "x", x)
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if x.dtype.kind == "f" else None)
        if not train_flag(train_flg, training):
            return x * x.dtype.type(1.0 - self.rate)
        step, row0 = self._step_and_row(step_context())
        shape = (x.shape[0], int(numpy.prod(x.shape[1:])))
        scaled = ops.dropout_mask(shape, self.rate, self.seed, step, row0, dtype=x.dtype)
        self.mask = (scaled != 0).astype(x.dtype).reshape(x.shape)  # 1 kept, 0 dropped: no 1/(1-ratio)
        return ops.mul(x, self.mask)

    def backward(self, dout):
        dout = _real(self, "backward", "dout", dout)
        mask = self._require_forward("mask", dout)
        ops = self._ops_for(mask)
        return ops.mul(self._input(ops, dout, mask.dtype), mask)


class BatchNormalization(_Checked, _BatchNormalization):
    """The book's ``BatchNormalization(gamma, beta, momentum=0.9, running_mean=None, running_var=None)``
    (Ioffe & Szegedy 2015), ``eps = 1e-6`` (the book's ``10e-7``).

    Training: ``out = gamma * (x - mu) / sqrt(var + eps) + beta`` with the batch's mean and biased
    variance per feature (4-D inputs per feature of the flattened sample when ``gamma`` has
    ``C*H*W`` entries), and ``running = momentum * running + (1 - momentum) * batch``; inference
    uses the running statistics (zeros until the first training step, as the book's). A 1-sample
    batch is accepted as in the book: ``x - mu`` is 0, so ``out = beta`` and ``dx = 0``. An empty
    batch passes through in inference mode and is refused in training (its mean divides by N = 0).
    """

    single_sample_batches = True

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None, *, name=None):
        super().__init__(gamma, beta, momentum=momentum, running_mean=running_mean, running_var=running_var,
                         name=name)
        for arg, value in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                           ("running_var", running_var)):
            _real_weight(self, arg, value)

    def forward(self, x, train_flg=True, training=None):
        x = _real(self, "forward", "x", x)
        if x.ndim >= 2 and x.shape[0] == 0 and train_flag(train_flg, training):
            raise ValueError(f"{_who(self, 'forward')}: a training-mode batch needs at least one sample, got x of "
                             f"shape {tuple(x.shape)} (N=0): the batch mean divides by N; inference mode "
                             f"(train_flg=False) passes an empty batch through")
        return _BatchNormalization.forward(self, x, train_flg, training)

    def _running_stats(self, ops, dtype):
        """As the book's: given running statistics follow the input's backend and dtype."""
        super()._running_stats(ops, dtype)
        for name in ("running_mean", "running_var"):
            value = getattr(self, name)
            if not ops.owns(value) or value.dtype != dtype:
                setattr(self, name, ops.asarray(value).astype(dtype))


class Convolution(_Checked, _Convolution):
    """The book's ``Convolution(W, b, stride=1, pad=0)``: ``W: (FN, C, FH, FW)``, ``b: (FN,)`` or a
    scalar (broadcast to every filter, as ``np.dot(col, col_W) + b`` does in the book).

    ``x: (N, C, H, W)`` gives ``(N, FN, OH, OW)``, ``OH = (H + 2*pad - FH) // stride + 1``;
    ``backward`` fills ``dW``, ``db`` (shape ``(FN,)``) and returns ``dx``. Computes in ``W``'s dtype.
    """

    def __init__(self, W, b, stride=1, pad=0, *, name=None):
        if getattr(b, "shape", None) in (None, ()) and getattr(W, "shape", None) is not None and len(W.shape) == 4:
            xp = follow(W).xp if not isinstance(W, numpy.ndarray) else numpy
            value = b.item() if getattr(b, "shape", None) == () else b
            b = xp.full((W.shape[0],), float(check_number("Convolution", "b", value)), dtype=W.dtype)
        super().__init__(W, b, stride=stride, pad=pad, name=name)
        _real_weight(self, "b", b)


class Pooling(_Checked, _Pooling):
    """The book's ``Pooling(pool_h, pool_w, stride=2, pad=0)``: max pooling over NCHW inputs.

    ``x: (N, C, H, W)`` gives ``(N, C, OH, OW)``, ``OH = (H + 2*pad - pool_h) // stride + 1``;
    ``backward`` sends each gradient to its window's (first) maximum, ``arg_max``.
    """

    def __init__(self, pool_h, pool_w, stride=2, pad=0, *, name=None):
        super().__init__(pool_h, pool_w, stride=stride, pad=pad, name=name)

    def backward(self, dout):
        dout = _real(self, "backward", "dout", dout)
        if getattr(self, "x_shape", None) is not None and self.x_shape[0] == 0 and tuple(dout.shape)[:1] == (0,):
            dtype = dout.dtype if dout.dtype.kind == "f" else numpy.float64
            return self._ops_for(dout).xp.zeros(self.x_shape, dtype=dtype)  # an empty batch: no windows
        return _Pooling.backward(self, dout)
