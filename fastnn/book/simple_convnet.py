"""The book's chapter-7 ``SimpleConvNet`` (``ch07/simple_convnet.py``):
``Convolution -> Relu -> Pooling -> Affine -> Relu -> Affine -> SoftmaxWithLoss``."""
from __future__ import annotations

from collections import OrderedDict

import numpy

from fastnn.book import layers as L
from fastnn.book._engine import check_conv_param, check_init_std, check_input_dim, conv_pool_shape
from fastnn.book._net import InferenceNet
from fastnn.functions import check_int

__all__ = ["SimpleConvNet"]

_CONV_PARAM = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}


class SimpleConvNet(InferenceNet):
    """A simple convolutional network over NCHW images.

    Parameters
    ----------
    input_dim : (C, H, W)
        Shape of one input image, ``(1, 28, 28)`` for MNIST.
    conv_param : dict
        ``filter_num``, ``filter_size``, ``pad``, ``stride`` of the convolution.
    hidden_size, output_size : int
    weight_init_std : float
        Standard deviation of every initial weight (biases zero).
    seed, dtype, backend : keyword-only fastnn extras (``seed=None``: NumPy's global generator; float64).

    Layers ``Conv1, Relu1, Pool1 (2x2, stride 2), Affine1, Relu2, Affine2``; ``params`` ``W1, b1``
    (the filters ``(filter_num, C, filter_size, filter_size)``), ``W2, b2``, ``W3, b3``.

    ``Affine1`` takes the pooled feature map's true size, ``filter_num * (OH // 2) * (OW // 2)``:
    the book's ``filter_num * (OH / 2)**2`` for square inputs with an even ``OH``, and the size the
    layers really give otherwise (where the book's float formula builds a network whose first
    ``forward`` fails). Sizes are positive integers, ``pad`` >= 0, ``weight_init_std`` a finite
    number >= 0, and the filter must fit the input; anything else is a ``ValueError`` naming the argument.
    """

    def __init__(self, input_dim=(1, 28, 28), conv_param=None, hidden_size=100, output_size=10,
                 weight_init_std=0.01, *, seed=None, dtype="float64", backend=None):
        owner = "SimpleConvNet"
        input_dim = check_input_dim(owner, input_dim)
        conv_param = check_conv_param(owner, "conv_param", _CONV_PARAM if conv_param is None else conv_param)
        check_int(owner, "hidden_size", hidden_size)
        check_int(owner, "output_size", output_size)
        check_init_std(owner, weight_init_std, names=False)
        filter_num, filter_size = conv_param["filter_num"], conv_param["filter_size"]
        filter_pad, filter_stride = conv_param["pad"], conv_param["stride"]
        pool_h, pool_w = conv_pool_shape(owner, input_dim[1:], conv_param, f"input_dim {input_dim}", pool=True)
        pool_output_size = filter_num * pool_h * pool_w
        self._start(seed, dtype, backend)
        W1 = self._randn(weight_init_std, filter_num, input_dim[0], filter_size, filter_size)
        W2 = self._randn(weight_init_std, pool_output_size, hidden_size)
        W3 = self._randn(weight_init_std, hidden_size, output_size)
        zeros = lambda n: numpy.zeros(n, self.dtype)  # noqa: E731
        self.layers = OrderedDict()
        self.layers["Conv1"] = L.Convolution(W1, zeros(filter_num), filter_stride, filter_pad, name="Conv1")
        self.layers["Relu1"] = L.Relu(name="Relu1")
        self.layers["Pool1"] = L.Pooling(pool_h=2, pool_w=2, stride=2, name="Pool1")
        self.layers["Affine1"] = L.Affine(W2, zeros(hidden_size), name="Affine1")
        self.layers["Relu2"] = L.Relu(name="Relu2")
        self.layers["Affine2"] = L.Affine(W3, zeros(output_size), name="Affine2")
        self.last_layer = L.SoftmaxWithLoss()
        owners = []
        for i, key in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
            owners += [(f"W{i}", self.layers[key], "W"), (f"b{i}", self.layers[key], "b")]
        self._bind(owners)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of ``x`` classified as ``t``, predicted ``batch_size`` images at a time.

        Every sample counts, the last partial batch too (the book's loop skips it but still divides
        by ``x.shape[0]``, which lowers its figure when ``batch_size`` does not divide ``N``).
        """
        return _batched_accuracy(self, x, t, batch_size)


def _batched_accuracy(net, x, t, batch_size):
    if getattr(t, "ndim", 1) != 1:
        t = t.argmax(axis=1)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += net._accuracy(x[i:i + batch_size], t[i:i + batch_size])
    return correct / x.shape[0]
