"""Layers: the book's (``Affine``, ``Relu``, ``SoftmaxWithLoss``, ...) and Keras's (``Dense``, ...).

Every layer has ``forward(x, train_flg=True)`` (Keras's ``training=`` works too) and
``backward(dout)``, computes only through the active backend's primitives, and runs unchanged on
NumPy, Numba and CuPy.
"""
from fastnn.layers.base import Layer
from fastnn.layers.core import (
    ACTIVATION_NAMES, Activation, Affine, Dense, Dropout, Elu, Flatten, Gelu, LeakyRelu, PRelu, Relu,
    Selu, Sigmoid, Softmax, Softplus, Swish, Tanh,
)
from fastnn.layers.conv import (
    AveragePooling2D, Conv2D, Convolution, GlobalAveragePooling2D, MaxPooling2D, Pooling,
)
from fastnn.layers.normalization import BatchNormalization
from fastnn.losses import MeanSquaredLoss, SigmoidWithLoss, SoftmaxWithLoss

__all__ = [
    "Layer", "Dense", "Affine", "Activation", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Elu",
    "Softplus", "Selu", "Gelu", "Swish", "Softmax", "Dropout", "Flatten", "BatchNormalization",
    "SoftmaxWithLoss", "SigmoidWithLoss", "MeanSquaredLoss", "ACTIVATION_NAMES",
    "Conv2D", "Convolution", "MaxPooling2D", "Pooling", "AveragePooling2D", "GlobalAveragePooling2D",
]
