"""``keras.layers``: fastnn's layers under Keras's names, the 2-D image layers channels-last by default."""
from __future__ import annotations

from fastnn import layers as _layers
from fastnn.layers import (  # noqa: F401  re-exported as they are
    GRU, LSTM, Activation, Add, Average, AveragePooling1D, BatchNormalization, Concatenate, Conv1D, Dense,
    Dropout, Embedding, Flatten, GlobalAveragePooling1D, GlobalMaxPooling1D, Input, Layer, Maximum, MaxPooling1D,
    Minimum, Multiply, Reshape, SimpleRNN, Softmax, Subtract, add, average, concatenate, maximum, minimum, multiply,
    subtract,
)


def _channels_last(cls):
    """``cls`` with Keras's ``data_format=None`` meaning channels-last (the same class name, so configs
    and saved models name fastnn's class, with the format recorded)."""

    def __init__(self, *args, data_format=None, **kwargs):
        cls.__init__(self, *args, data_format=data_format or "channels_last", **kwargs)

    doc = (f"``fastnn.layers.{cls.__name__}`` with Keras's default layout: ``data_format=None`` is "
           f"``\"channels_last\"`` (``(N, H, W, C)``).\n\n" + (cls.__doc__ or ""))
    return type(cls.__name__, (cls,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


Conv2D = _channels_last(_layers.Conv2D)
MaxPooling2D = _channels_last(_layers.MaxPooling2D)
AveragePooling2D = _channels_last(_layers.AveragePooling2D)
GlobalAveragePooling2D = _channels_last(_layers.GlobalAveragePooling2D)
GlobalMaxPooling2D = _channels_last(_layers.GlobalMaxPooling2D)
MaxPool2D, AvgPool2D, Convolution2D = MaxPooling2D, AveragePooling2D, Conv2D


class ReLU(_layers.Relu):
    """Keras's ``ReLU()`` (``max(x, 0)``); ``max_value``, ``negative_slope`` and ``threshold`` other than
    their defaults are refused."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, name=None, **kwargs):
        if max_value is not None or negative_slope or threshold:
            raise ValueError("ReLU: max_value, negative_slope and threshold are not supported (use LeakyReLU for "
                             "a slope)")
        super().__init__(name=name, **kwargs)


class LeakyReLU(_layers.LeakyRelu):
    """Keras 3's ``LeakyReLU(negative_slope=0.3)`` (Keras 2's ``alpha=`` accepted)."""

    def __init__(self, negative_slope=0.3, name=None, alpha=None, **kwargs):
        super().__init__(alpha=negative_slope if alpha is None else alpha, name=name, **kwargs)


class ELU(_layers.Elu):
    """Keras's ``ELU(alpha=1.0)``."""


class PReLU(_layers.PRelu):
    """Keras's ``PReLU``: a learnable slope per unit (``alpha_initializer``: 0.25)."""


__all__ = sorted(n for n in dir() if not n.startswith("_") and n != "annotations")
