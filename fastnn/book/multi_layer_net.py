"""The book's ``common/multi_layer_net.py``: ``MultiLayerNet``."""
from __future__ import annotations

from collections import OrderedDict

import numpy

from fastnn.book import layers as L
from fastnn.book._engine import check_decay, check_init_std, check_size_list, init_scale
from fastnn.book._net import InferenceNet
from fastnn.functions import check_int

__all__ = ["MultiLayerNet"]

_ACTIVATIONS = {"sigmoid": L.Sigmoid, "relu": L.Relu}


def check_args(owner, input_size, hidden_size_list, output_size, activation, weight_init_std, weight_decay_lambda):
    """Every constructor argument, before a weight is drawn (each message names ``owner`` and the argument)."""
    check_int(owner, "input_size", input_size)
    check_size_list(owner, "hidden_size_list", hidden_size_list)
    check_int(owner, "output_size", output_size)
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be 'relu' or 'sigmoid', got {activation!r}")
    check_init_std(owner, weight_init_std)
    check_decay(owner, weight_decay_lambda)


def build_layers(net, activation, weight_init_std, use_batchnorm=False, use_dropout=False, dropout_ratio=0.5):
    """The book's ``Affine -> [BatchNorm] -> activation -> [Dropout]`` stack, ``params`` in book order."""
    owner = type(net).__name__
    sizes = [net.input_size] + list(net.hidden_size_list) + [net.output_size]
    net.layers = OrderedDict()
    owners = []
    for idx in range(1, len(sizes)):
        W = net._randn(init_scale(owner, weight_init_std, sizes[idx - 1]), sizes[idx - 1], sizes[idx])
        affine = net.layers[f"Affine{idx}"] = L.Affine(W, numpy.zeros(sizes[idx], net.dtype), name=f"Affine{idx}")
        owners += [(f"W{idx}", affine, "W"), (f"b{idx}", affine, "b")]
        if idx == len(sizes) - 1:
            break
        if use_batchnorm:
            bn = net.layers[f"BatchNorm{idx}"] = L.BatchNormalization(numpy.ones(sizes[idx], net.dtype),
                                                                      numpy.zeros(sizes[idx], net.dtype),
                                                                      name=f"BatchNorm{idx}")
            owners += [(f"gamma{idx}", bn, "gamma"), (f"beta{idx}", bn, "beta")]
        net.layers[f"Activation_function{idx}"] = _ACTIVATIONS[activation](name=f"Activation_function{idx}")
        if use_dropout:
            net.layers[f"Dropout{idx}"] = net._dropout(dropout_ratio)
    net.last_layer = L.SoftmaxWithLoss()
    order = {key: i for i, key in enumerate(
        [f"{k}{i}" for i in range(1, len(sizes)) for k in ("W", "b")]
        + [f"{k}{i}" for i in range(1, len(sizes) - 1) for k in ("gamma", "beta")])}
    net._bind(sorted(owners, key=lambda o: order[o[0]]))


class MultiLayerNet(InferenceNet):
    """A fully connected network: ``(Affine -> activation) x len(hidden_size_list) -> Affine -> SoftmaxWithLoss``.

    Parameters
    ----------
    input_size, output_size : int
    hidden_size_list : list of int
        Width of each hidden layer, e.g. ``[100, 100, 100]`` (``[]``: no hidden layer).
    activation : 'relu' or 'sigmoid'
    weight_init_std : float or str
        Standard deviation of the initial weights, or ``'relu'``/``'he'`` (He: ``sqrt(2 / fan_in)``)
        or ``'sigmoid'``/``'xavier'`` (Xavier: ``sqrt(1 / fan_in)``).
    weight_decay_lambda : float
        Strength of the L2 term ``0.5 * lambda * sum(W^2)`` added to the loss (weights only).
    seed, dtype, backend : keyword-only fastnn extras
        ``seed=None`` draws from NumPy's global generator as the book does; ``dtype`` float64.

    Sizes are positive integers (Python or NumPy, never bools, floats or strings), the scales finite
    and >= 0; anything else is a ``ValueError`` naming the class, the argument and the value, raised
    before any weight is drawn.
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu", weight_init_std="relu",
                 weight_decay_lambda=0, *, seed=None, dtype="float64", backend=None):
        check_args(type(self).__name__, input_size, hidden_size_list, output_size, activation, weight_init_std,
                   weight_decay_lambda)
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = hidden_size_list
        self.hidden_layer_num = len(hidden_size_list)
        self.weight_decay_lambda = weight_decay_lambda
        self._start(seed, dtype, backend)
        build_layers(self, activation, weight_init_std)
