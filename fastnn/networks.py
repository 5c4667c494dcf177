"""The book's network classes: ``TwoLayerNet``, ``MultiLayerNet``, ``MultiLayerNetExtend``.

Same constructor arguments and members as the classes "from scratch" learners write (``params``,
``layers``, ``last_layer``, ``predict``, ``loss``, ``accuracy``, ``numerical_gradient``,
``gradient``), built from ``fastnn.layers`` so the fused kernels run underneath, on any backend.
``params`` entries and the layers' arrays are the same arrays: views into the network's flat
buffer, so ``opt.update(net.params, grads)`` trains the layers.

Dropout masks depend on a step counter: ``gradient``, ``numerical_gradient`` and a training-mode
``loss`` given the *same batch object* use the same step (so a gradient check sees one mask in
both orders); a new batch object starts a new step. ``Trainer`` sets the step explicitly.

Constructor arguments are checked before any weight is drawn: sizes are positive integers (Python
or NumPy; never bools, floats or strings), ``weight_init_std`` a finite number >= 0 or one of the
book's names, ``weight_decay_lambda`` a finite number >= 0 and a dropout ratio in [0, 1); anything
else is a ``ValueError`` naming the class, the argument and the value.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy

from fastnn import functions
from fastnn.backend import current, get_ops
from fastnn.book._engine import check_decay, check_init_std, check_ratio, check_size_list, init_scale
from fastnn.layers import Affine, BatchNormalization, Dropout, Relu, Sigmoid, SoftmaxWithLoss
from fastnn.layers.base import StepContext, step_context
from fastnn.params import FlatParams
from fastnn.random import draw_seed, make_rng

__all__ = ["TwoLayerNet", "MultiLayerNet", "MultiLayerNetExtend"]

_ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}


def _check_args(owner, input_size, hidden, output_size, activation="relu", weight_init_std=0.01,
                weight_decay_lambda=0):
    """Every constructor argument, before a weight is drawn; ``hidden`` is ``("hidden_size", n)`` or
    ``("hidden_size_list", [n, ...])``. Each message names ``owner``, the argument and the value."""
    functions.check_int(owner, "input_size", input_size)
    name, value = hidden
    if name == "hidden_size":
        functions.check_int(owner, name, value)
    else:
        check_size_list(owner, name, value)
    functions.check_int(owner, "output_size", output_size)
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    check_init_std(owner, weight_init_std)
    check_decay(owner, weight_decay_lambda)


class _BookNet:
    """Shared machinery: flat buffer, predict/loss/accuracy/gradients, dropout steps."""

    def _setup(self, sizes, activation, weight_init_std, weight_decay_lambda, seed, dtype, backend,
               use_dropout=False, dropout_ratio=0.5, use_batchnorm=False):
        owner = type(self).__name__
        self.ops = get_ops(backend) if backend is not None else current()
        self.dtype = numpy.dtype(dtype)
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"{owner}: dtype must be float32 or float64, got {dtype!r}")
        self.seed = seed if isinstance(seed, (int, numpy.integer)) and not isinstance(seed, bool) else None
        self.rng = make_rng(seed)
        self.weight_decay_lambda = float(weight_decay_lambda)
        self.layers = OrderedDict()
        n_hidden = len(sizes) - 2
        for i in range(1, len(sizes)):
            std = init_scale(owner, weight_init_std, sizes[i - 1])
            W = (std * self.rng.standard_normal((sizes[i - 1], sizes[i]))).astype(self.dtype)
            self.layers[f"Affine{i}"] = Affine(W, numpy.zeros(sizes[i], self.dtype), name=f"Affine{i}")
            if i > n_hidden:
                break
            if use_batchnorm:
                self.layers[f"BatchNorm{i}"] = BatchNormalization(
                    numpy.ones(sizes[i], self.dtype), numpy.zeros(sizes[i], self.dtype), name=f"BatchNorm{i}")
            self.layers[f"{activation.capitalize()}{i}"] = _ACTIVATIONS[activation](name=f"{activation.capitalize()}{i}")
            if use_dropout:
                self.layers[f"Dropout{i}"] = Dropout(dropout_ratio, seed=draw_seed(self.rng), name=f"Dropout{i}")
        self.last_layer = SoftmaxWithLoss()
        for layer in self.layers.values():
            layer._ops = self.ops
        self.flat = FlatParams(list(self.layers.values()), self.ops, self.dtype)
        for layer in self.layers.values():  # running statistics live beside the buffer, on the device
            if isinstance(layer, BatchNormalization):
                layer.running_mean = self.ops.alloc(layer.gamma.shape, self.dtype)
                layer.running_var = self.ops.alloc(layer.gamma.shape, self.dtype)
        self.layers["Affine1"].skip_input_grad = True
        self.params = {}
        self._grad_keys = {}
        for lname, layer in self.layers.items():
            idx = "".join(ch for ch in lname if ch.isdigit())
            for wname in layer.weight_info():
                key = f"{wname}{idx}"
                self.params[key] = getattr(layer, wname)
                self._grad_keys[key] = (layer, wname)
        by_owner = {(id(e.layer), e.name): e for e in self.flat.entries}
        self._grad_entries = [by_owner[(id(layer), w)] for layer, w in self._grad_keys.values()]
        self.step = 0
        self._last_batch = None

    # ------------------------------------------------------------------ steps and forward
    def _advance(self, x):
        """A new batch object starts a new dropout step; the same object keeps it."""
        if x is not self._last_batch:
            self.step += 1
            self._last_batch = x

    def predict(self, x, train_flg=False):
        """Scores (before softmax) for ``x``."""
        for layer in self.layers.values():
            x = layer.forward(x, train_flg)
        return x

    def _weight_penalty(self):
        if not self.weight_decay_lambda:
            return 0.0
        total = 0.0
        for key, w in self.params.items():
            if key.startswith("W"):
                total += float(self.ops.xp.vdot(w.reshape(-1), w.reshape(-1)))
        return 0.5 * self.weight_decay_lambda * total

    def loss(self, x, t, train_flg=False):
        """Mean cross-entropy of the softmax of ``predict(x)`` against ``t``, plus ``0.5 λ ΣW²``."""
        if not train_flg:
            return self.last_layer.forward(self.predict(x, False), t) + self._weight_penalty()
        self._advance(x)
        outer = step_context()  # gradient()'s, which lets this pass reuse workspaces
        with StepContext(self.step, reuse_buffers=outer is not None and outer.reuse_buffers):
            y = self.predict(x, True)
            return self.last_layer.forward(y, t) + self._weight_penalty()

    def accuracy(self, x, t):
        """Fraction of rows whose arg-max score is the label (``t`` one-hot or class indices)."""
        y = self.predict(x, train_flg=False)
        pred = y.argmax(axis=1)
        if getattr(t, "ndim", 1) != 1:
            t = t.argmax(axis=1)
        t = t if self.ops.owns(t) else self.ops.asarray(t)
        return float((pred == t).sum()) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        """Central-difference gradients of ``loss(x, t, train_flg=True)`` for every key of ``params``."""
        self._advance(x)

        def f(_):
            return self.loss(x, t, train_flg=True)

        return {key: functions.numerical_gradient(f, w) for key, w in self.params.items()}

    def gradient(self, x, t):
        """Back-propagated gradients, same keys as ``params`` (a fresh copy each call)."""
        layers = list(self.layers.values())
        with StepContext(self.step, reuse_buffers=True):  # this pass's activations are internal: reuse workspaces
            self.loss(x, t, train_flg=True)
            dout = self.last_layer.backward(1)
            for layer in reversed(layers):
                dout = layer.backward(dout)
        if self.weight_decay_lambda:
            lam = self.dtype.type(self.weight_decay_lambda)
            for key, (layer, wname) in self._grad_keys.items():
                if key.startswith("W"):
                    layer.dW += lam * layer.W
        g = self.flat.g.copy()
        return {key: g[e.offset:e.offset + e.size].reshape(e.shape)
                for key, e in zip(self._grad_keys, self._grad_entries)}


class TwoLayerNet(_BookNet):
    """``Affine → ReLU → Affine → SoftmaxWithLoss`` with weights ``weight_init_std * randn``."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *, seed=None,
                 dtype="float64", backend=None):
        _check_args("TwoLayerNet", input_size, ("hidden_size", hidden_size), output_size,
                    weight_init_std=weight_init_std)
        self._setup([input_size, hidden_size, output_size], "relu", weight_init_std, 0.0, seed, dtype, backend)


class MultiLayerNet(_BookNet):
    """A fully connected network with ``hidden_size_list`` hidden layers, ReLU or sigmoid, and the
    book's L2 term ``0.5 * weight_decay_lambda * ΣW²`` in the loss."""

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu", weight_init_std="relu",
                 weight_decay_lambda=0, *, seed=None, dtype="float64", backend=None):
        _check_args("MultiLayerNet", input_size, ("hidden_size_list", hidden_size_list), output_size, activation,
                    weight_init_std, weight_decay_lambda)
        self.hidden_size_list = list(hidden_size_list)
        self._setup([input_size, *self.hidden_size_list, output_size], activation, weight_init_std,
                    weight_decay_lambda, seed, dtype, backend)


class MultiLayerNetExtend(_BookNet):
    """``MultiLayerNet`` with optional Dropout (``use_dropout``, ``dropout_ration``) and batch
    normalization (``use_batchnorm``; ``params`` gain ``gamma1, beta1, ...``). The book's spellings
    work, as do ``dropout_ratio`` and ``use_batchNorm``. Dropout is inverted (see ``Dropout``)."""

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu", weight_init_std="relu",
                 weight_decay_lambda=0, use_dropout=False, dropout_ration=0.5, use_batchnorm=False, *,
                 dropout_ratio=None, use_batchNorm=None, seed=None, dtype="float64", backend=None):
        _check_args("MultiLayerNetExtend", input_size, ("hidden_size_list", hidden_size_list), output_size,
                    activation, weight_init_std, weight_decay_lambda)
        check_ratio("MultiLayerNetExtend", "dropout_ration" if dropout_ratio is None else "dropout_ratio",
                    dropout_ration if dropout_ratio is None else dropout_ratio)
        self.hidden_size_list = list(hidden_size_list)
        self.use_dropout = use_dropout
        self.use_batchnorm = use_batchnorm if use_batchNorm is None else use_batchNorm
        ratio = dropout_ration if dropout_ratio is None else dropout_ratio
        self._setup([input_size, *self.hidden_size_list, output_size], activation, weight_init_std,
                    weight_decay_lambda, seed, dtype, backend, use_dropout=use_dropout, dropout_ratio=ratio,
                    use_batchnorm=self.use_batchnorm)
