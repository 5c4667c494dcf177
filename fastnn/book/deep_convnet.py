"""The book's chapter-8 ``DeepConvNet`` (``ch08/deep_convnet.py``), which loads the book's trained
``deep_convnet_params.pkl`` and then gives the book's outputs (its Dropout is non-inverted)."""
from __future__ import annotations

import numpy

from fastnn.book import layers as L
from fastnn.book._engine import check_conv_param, check_input_dim, conv_pool_shape
from fastnn.book._net import BookNet
from fastnn.book.simple_convnet import _batched_accuracy
from fastnn.functions import check_int

__all__ = ["DeepConvNet"]

_DEFAULTS = [
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
    {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
]
_WEIGHT_LAYERS = (0, 2, 5, 7, 10, 12, 15, 18)  # indices in ``layers`` of W1..W8's layers


def _check_layout(input_dim, conv_params):
    """The convolutions fit ``input_dim`` and leave the ``64*4*4`` features the book's ``Affine7`` takes."""
    hw = input_dim[1:]
    for idx, cp in enumerate(conv_params, start=1):
        hw = conv_pool_shape("DeepConvNet", hw, cp, f"the {hw[0]}x{hw[1]} input of Conv{idx}", pool=idx % 2 == 0)
    channels = conv_params[-1]["filter_num"]
    features = channels * hw[0] * hw[1]
    if features != 64 * 4 * 4:
        raise ValueError(f"DeepConvNet: input_dim {input_dim} gives {channels}x{hw[0]}x{hw[1]} = {features} features "
                         f"before Affine7, but the book's layout fixes Affine7's input at 64*4*4 = 1024 (28x28 or "
                         f"32x32 images with the default conv_params)")


class DeepConvNet(BookNet):
    """``(conv - relu - conv - relu - pool) x 3 - affine - relu - dropout - affine - dropout - softmax``.

    The book's fan-in list for He's initial weights (``sqrt(2 / fan_in)`` with fan-ins
    ``1*3*3, 16*3*3, 16*3*3, 32*3*3, 32*3*3, 64*3*3, 64*4*4, hidden_size``) is kept, so the layout
    is the book's for 28x28 single-channel input. ``layers`` is a list, as in the book;
    ``loss`` runs Dropout in training mode. ``seed``, ``dtype`` (float64) and ``backend`` are
    keyword-only fastnn extras.

    Arguments are checked before any weight is drawn: sizes positive integers, each ``conv_param_k``
    a dict of ``filter_num``, ``filter_size``, ``stride`` (positive) and ``pad`` (>= 0), and the
    feature map reaching ``Affine7`` must have the book's ``64*4*4`` values (28x28 or 32x32 images
    with the default convolutions); anything else is a ``ValueError`` naming the argument.
    """

    def __init__(self, input_dim=(1, 28, 28), conv_param_1=None, conv_param_2=None, conv_param_3=None,
                 conv_param_4=None, conv_param_5=None, conv_param_6=None, hidden_size=50, output_size=10, *,
                 seed=None, dtype="float64", backend=None):
        given = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6)
        conv_params = [check_conv_param("DeepConvNet", f"conv_param_{i}", d if p is None else p)
                       for i, (p, d) in enumerate(zip(given, _DEFAULTS), start=1)]
        _check_layout(check_input_dim("DeepConvNet", input_dim), conv_params)
        check_int("DeepConvNet", "hidden_size", hidden_size)
        check_int("DeepConvNet", "output_size", output_size)
        self._start(seed, dtype, backend)
        pre_node_nums = numpy.array([1 * 3 * 3, 16 * 3 * 3, 16 * 3 * 3, 32 * 3 * 3, 32 * 3 * 3, 64 * 3 * 3,
                                     64 * 4 * 4, hidden_size])
        scales = numpy.sqrt(2.0 / pre_node_nums)
        zeros = lambda n: numpy.zeros(n, self.dtype)  # noqa: E731
        convs, pre_channel_num = [], input_dim[0]
        for idx, cp in enumerate(conv_params):
            W = self._randn(scales[idx], cp["filter_num"], pre_channel_num, cp["filter_size"], cp["filter_size"])
            convs.append(L.Convolution(W, zeros(cp["filter_num"]), cp["stride"], cp["pad"], name=f"Conv{idx + 1}"))
            pre_channel_num = cp["filter_num"]
        W7 = self._randn(scales[6], 64 * 4 * 4, hidden_size)
        W8 = self._randn(scales[7], hidden_size, output_size)
        self.layers = []
        for i in range(3):
            self.layers += [convs[2 * i], L.Relu(), convs[2 * i + 1], L.Relu(), L.Pooling(pool_h=2, pool_w=2, stride=2)]
        self.layers += [L.Affine(W7, zeros(hidden_size), name="Affine7"), L.Relu(), self._dropout(0.5),
                        L.Affine(W8, zeros(output_size), name="Affine8"), self._dropout(0.5)]
        self.last_layer = L.SoftmaxWithLoss()
        owners = []
        for i, layer_idx in enumerate(_WEIGHT_LAYERS, start=1):
            owners += [(f"W{i}", self.layers[layer_idx], "W"), (f"b{i}", self.layers[layer_idx], "b")]
        self._bind(owners)

    def predict(self, x, train_flg=False):
        """Scores (before softmax) of ``x: (N, C, H, W)``; ``train_flg=True`` drops units."""
        return self._predict(x, train_flg)

    def loss(self, x, t):
        """Mean cross-entropy of ``softmax(predict(x, train_flg=True))`` against ``t`` (Dropout on, as the book)."""
        return self._loss(x, t, True)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of ``x`` classified as ``t`` (inference mode), ``batch_size`` images at a time;
        the last partial batch counts too (see ``SimpleConvNet.accuracy``)."""
        return _batched_accuracy(self, x, t, batch_size)

    def gradient(self, x, t):
        """Back-propagated gradients of ``loss(x, t)``: ``{'W1', 'b1', ..., 'W8', 'b8'}``."""
        return self._gradient(x, t, True)
