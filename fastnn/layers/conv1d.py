"""1-D convolution and pooling over sequences, as Keras's ``Conv1D``, ``MaxPooling1D``, ``AveragePooling1D``.

A sequence batch is ``(N, steps, C)`` (``data_format="channels_last"``, the default here as in
Keras, and what ``Embedding`` gives) or ``(N, C, steps)`` (``"channels_first"``, PyTorch's). Each
layer is its 2-D counterpart on the sequence seen as an image of height 1, ``(N, C, 1, steps)``
(``fastnn.layers.layout``), so it runs on the same fused im2col/GEMM/bias-activation and
max-pooling primitives on every backend.
"""
from __future__ import annotations

import numpy

from fastnn.layers.conv import AveragePooling2D, Conv2D, MaxPooling2D, _check_padding
from fastnn.layers.base import _auto_name

__all__ = ["Conv1D", "MaxPooling1D", "AveragePooling1D"]


def _single(owner, name, value):
    """An int or a one-int sequence (Keras's ``(3,)``) as an int >= 1."""
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool):
        seq = list(value) if isinstance(value, (list, tuple)) else None
        if seq is None or len(seq) != 1:
            raise ValueError(f"{owner}: {name} must be an int or a sequence of one int, got {value!r}")
        value = seq[0]
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _one(owner, name, value):
    """Refuse an unsupported option (``dilation_rate``, ``groups``) unless it is 1 (or ``(1,)``)."""
    if _single(owner, name, value) != 1:
        raise ValueError(f"{owner}: {name}={value!r} is not supported (only 1)")


class Conv1D(Conv2D):
    """1-D convolution ``y = act(conv(x, W) + b)`` over sequences, as Keras's ``Conv1D``.

    ``x: (N, steps, C)`` gives ``y: (N, out_steps, filters)`` (``data_format="channels_first"``:
    ``(N, C, steps)`` gives ``(N, filters, out_steps)``); a first layer takes ``input_shape=(steps,
    C)``. The kernel is ``W: (filters, C, kernel_size)`` (PyTorch's ``Conv1d`` layout; Keras's
    ``(kernel_size, C, filters)`` is ``W.transpose(2, 1, 0)``), the bias ``b: (filters,)``; the
    result equals ``torch.nn.functional.conv1d`` plus the activation.

    Parameters
    ----------
    filters : int
    kernel_size, strides : int or (int,)
    padding : "valid", "same" or "causal"
        ``"valid"``: ``out_steps = (steps - kernel_size) // strides + 1``; ``"same"``:
        ``ceil(steps / strides)``, zeros split as TensorFlow (the odd one at the end); ``"causal"``:
        ``kernel_size - 1`` zeros before the first step, so ``y[t]`` sees only ``x[:t+1]``.
    data_format : "channels_last" (default) or "channels_first"
    dilation_rate, groups : 1
        Only 1 is supported; anything else is refused.
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        As ``Conv2D``'s (Glorot's fans are ``C*kernel_size`` and ``filters*kernel_size``).
    """

    rank = 1

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, input_shape=None,
                 name=None, dtype=None, trainable=True):
        name = name or _auto_name(type(self).__name__)
        _one(name, "dilation_rate", dilation_rate)
        _one(name, "groups", groups)
        causal = _check_padding(name, padding, ("valid", "same", "causal")) == "causal"
        super().__init__(filters, (1, _single(name, "kernel_size", kernel_size)),
                         strides=(1, _single(name, "strides", strides)), padding="valid" if causal else padding,
                         activation=activation, input_shape=input_shape, kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer, use_bias=use_bias, name=name, dtype=dtype,
                         trainable=trainable, data_format=data_format)
        if causal:
            self.padding = "causal"

    def _kernel_shape(self, channels):
        return (self.filters, channels, self.kernel_size[1])

    def _padding_for(self, h, w):
        if self.padding == "causal":
            return (0, 0, self.kernel_size[1] - 1, 0)
        return super()._padding_for(h, w)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(kernel_size=self.kernel_size[1:], strides=self.strides[1:])
        return cfg


class _Pooling1D:
    """A 1-D pooling layer's arguments (``pool_size``, ``strides``: ints) mapped onto its 2-D parent's."""

    rank = 1

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, name=None, **kwargs):
        name = name or _auto_name(type(self).__name__)
        size = _single(name, "pool_size", pool_size)
        step = size if strides is None else _single(name, "strides", strides)
        super().__init__((1, size), (1, step), padding, name=name, data_format=data_format, **kwargs)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size[1:], strides=self.strides[1:])
        return cfg


class MaxPooling1D(_Pooling1D, MaxPooling2D):
    """Max pooling over sequences, as Keras's ``MaxPooling1D`` (``padding="valid"``).

    ``(N, steps, C)`` gives ``(N, (steps - pool_size) // strides + 1, C)``
    (``data_format="channels_first"``: ``(N, C, steps)`` in and out); ``strides`` defaults to
    ``pool_size``. Backward sends each gradient to its window's first maximum.
    """


class AveragePooling1D(_Pooling1D, AveragePooling2D):
    """Average pooling over sequences, as Keras's ``AveragePooling1D`` (``padding="valid"``):
    ``(N, steps, C)`` gives ``(N, (steps - pool_size) // strides + 1, C)``, each the mean of a window
    (``data_format="channels_first"``: ``(N, C, steps)``); ``strides`` defaults to ``pool_size``."""
