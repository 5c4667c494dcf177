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
    AveragePooling2D, Conv2D, Convolution, MaxPooling2D, Pooling,
)
from fastnn.layers.conv1d import AveragePooling1D, Conv1D, MaxPooling1D
from fastnn.layers.embedding import Embedding
from fastnn.layers.layout import image_data_format, set_image_data_format
from fastnn.layers.merge import (
    Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, add, average, concatenate, maximum, minimum,
    multiply, subtract,
)
from fastnn.layers.normalization import BatchNormalization
from fastnn.layers.recurrent import GRU, LSTM, SimpleRNN
from fastnn.layers.pooling import GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D
from fastnn.layers.reshaping import Reshape
from fastnn.layers.symbolic import Input, KerasTensor
from fastnn.losses import MeanSquaredLoss, SigmoidWithLoss, SoftmaxWithLoss

__all__ = [
    "Layer", "Dense", "Affine", "Activation", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "Elu",
    "Softplus", "Selu", "Gelu", "Swish", "Softmax", "Dropout", "Flatten", "BatchNormalization",
    "SoftmaxWithLoss", "SigmoidWithLoss", "MeanSquaredLoss", "ACTIVATION_NAMES",
    "Conv2D", "Convolution", "MaxPooling2D", "Pooling", "AveragePooling2D", "GlobalAveragePooling2D",
    "Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Embedding", "Reshape", "image_data_format", "set_image_data_format",
    "SimpleRNN", "LSTM", "GRU", "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum", "Input", "KerasTensor",
]
