"""Global pooling, as Keras's: the mean or the maximum over every position of each channel.

``GlobalAveragePooling2D``/``GlobalMaxPooling2D`` reduce images (``(N, C, H, W)``, or ``(N, H, W,
C)`` with ``data_format="channels_last"``), ``GlobalAveragePooling1D``/``GlobalMaxPooling1D``
sequences (``(N, steps, C)`` by default, as Keras, or ``(N, C, steps)``), to ``(N, C)``;
``keepdims=True`` keeps the reduced axes with size 1, as Keras 3 does. Each is computed on NCHW
(``fastnn.layers.layout``): the mean with ``xp``, the maximum with the max-pooling primitives over
one window the size of the whole plane (so ties and NaN behave as in ``MaxPooling2D``: the gradient
goes to the first maximum).
"""
from __future__ import annotations

import numpy

from fastnn.functions import check_flag
from fastnn.layers.base import shape_str, train_flag
from fastnn.layers.conv import check_nchw
from fastnn.layers.base import _auto_name
from fastnn.layers.layout import SpatialLayer

__all__ = ["GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D", "GlobalMaxPooling1D"]


class _GlobalPooling(SpatialLayer):
    """What the global poolings share: arguments, shapes, input checks (subclasses: ``_reduce``, ``_spread``)."""

    def __init__(self, data_format=None, keepdims=False, name=None, **kwargs):
        super().__init__(name=name or _auto_name(type(self).__name__), data_format=data_format, **kwargs)
        self.keepdims = check_flag(f"{self.name} ({type(self).__name__})", "keepdims", keepdims)
        self.x_shape = None
        self._train = False

    def _output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected inputs of shape (N, C, H, W) (layout NCHW), got "
                             f"{shape_str(input_shape)}")
        n, c = input_shape[:2]
        return (n, c, 1, 1) if self.keepdims else (n, c)

    def _forward(self, x, train_flg=True, training=None):
        """``(N, C)`` (``keepdims``: ``(N, C, 1, 1)``) from ``x: (N, C, H, W)`` (layout NCHW)."""
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if getattr(x, "dtype", None) is not None and x.dtype.kind == "f" else None)
        check_nchw(self, x)
        self.x_shape = tuple(x.shape)
        self._train = train_flag(train_flg, training)
        return self._reduce(ops, x)

    def _backward(self, dout):
        """``dx: (N, C, H, W)`` for ``dout`` of the forward output's shape; ``dout`` is not written."""
        shape = self._require_forward("x_shape")
        want = self._output_shape(shape)
        if tuple(dout.shape) != want:
            raise ValueError(f"{self.name}: backward expected dout of shape {want}, got {tuple(dout.shape)}")
        ops = self._ops_for(dout)
        dout = self._input(ops, dout, dout.dtype if dout.dtype.kind == "f" else None)
        return self._spread(ops, dout.reshape(shape[0], shape[1], 1, 1), shape)

    def get_config(self):
        cfg = super().get_config()
        cfg["keepdims"] = self.keepdims
        return cfg


class GlobalAveragePooling2D(_GlobalPooling):
    """The mean over each channel's plane: ``(N, C, H, W)`` (``channels_last``: ``(N, H, W, C)``)
    gives ``(N, C)``."""

    def _reduce(self, ops, x):
        return x.mean(axis=(2, 3), keepdims=self.keepdims)

    def _spread(self, ops, dout, shape):
        """``dout / (H*W)`` spread over each plane."""
        share = dout * dout.dtype.type(1.0 / (shape[2] * shape[3]))
        return ops.xp.ascontiguousarray(ops.xp.broadcast_to(share, shape))


class GlobalMaxPooling2D(_GlobalPooling):
    """The maximum over each channel's plane: ``(N, C, H, W)`` (``channels_last``: ``(N, H, W, C)``)
    gives ``(N, C)``. ``arg_max`` holds each maximum's index in its plane; backward sends the
    gradient there (the first maximum on ties)."""

    def __init__(self, data_format=None, keepdims=False, name=None, **kwargs):
        super().__init__(data_format=data_format, keepdims=keepdims, name=name, **kwargs)
        self.arg_max = None

    def _reduce(self, ops, x):
        n, c, h, w = x.shape
        y, self.arg_max = ops.maxpool_forward(x, h, w, 1, 0,
                                              out=self._buffer(ops, "y", (n, c, 1, 1), x.dtype, self._train),
                                              argmax=self._buffer(ops, "argmax", (n, c, 1, 1), numpy.int64,
                                                                  self._train))
        return y if self.keepdims else y.reshape(n, c)

    def _spread(self, ops, dout, shape):
        return ops.maxpool_backward(dout, self.arg_max, shape,
                                    out=self._buffer(ops, "dx", shape, dout.dtype, self._train))


class GlobalAveragePooling1D(GlobalAveragePooling2D):
    """The mean over the steps of each channel: ``(N, steps, C)`` (``channels_first``: ``(N, C,
    steps)``) gives ``(N, C)``. Keras's ``mask`` argument is not supported."""

    rank = 1


class GlobalMaxPooling1D(GlobalMaxPooling2D):
    """The maximum over the steps of each channel: ``(N, steps, C)`` (``channels_first``: ``(N, C,
    steps)``) gives ``(N, C)``; backward sends each gradient to the first maximum."""

    rank = 1
