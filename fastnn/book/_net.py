"""What the book's layer-based networks share: the flat buffer, dropout steps, predict/loss/gradients.

``params`` entries and the layers' arrays are the same arrays, views into the network's flat
buffer (``fastnn.params.FlatParams``), so ``optimizer.update(net.params, grads)`` trains the layers
and ``load_params`` copies into them. A network computes on the backend it was built on
(``backend=``, else the current one) in ``dtype`` (float64, as the book).
"""
from __future__ import annotations

import numpy

from fastnn.book import layers as L
from fastnn.book._engine import assign_params, book_rng, draw_seed, load_params_file, net_ops, save_params_file
from fastnn.book.gradient import numerical_gradient
from fastnn.layers.base import StepContext, step_context
from fastnn.params import FlatParams


class BookNet:
    """Base of the book's networks made of layers."""

    def _start(self, seed, dtype, backend):
        self.ops = net_ops(backend)
        self.dtype = numpy.dtype(dtype)
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"{type(self).__name__}: dtype must be float32 or float64, got {dtype!r}")
        self.rng = book_rng(seed)

    def _randn(self, scale, *shape):
        return (scale * self.rng.standard_normal(shape)).astype(self.dtype)

    def _dropout(self, ratio):
        return L.Dropout(ratio, seed=draw_seed(self.rng))

    def _bind(self, owners):
        """Pack the layers' weights into one flat buffer; ``owners``: ``[(key, layer, weight name)]``."""
        self._layer_list = list(self.layers.values()) if isinstance(self.layers, dict) else list(self.layers)
        for layer in self._layer_list:
            layer._ops = self.ops
        self.flat = FlatParams(self._layer_list, self.ops, self.dtype)
        for layer in self._layer_list:  # running statistics live beside the buffer, on the device
            if isinstance(layer, L.BatchNormalization):
                layer.running_mean = self.ops.alloc(layer.gamma.shape, self.dtype)
                layer.running_var = self.ops.alloc(layer.gamma.shape, self.dtype)
        self._layer_list[0].skip_input_grad = True  # nothing uses the input's gradient
        self._owners = list(owners)
        self.params = {key: getattr(layer, name) for key, layer, name in self._owners}
        by_owner = {(id(e.layer), e.name): e for e in self.flat.entries}
        self._grad_entries = [by_owner[(id(layer), name)] for _, layer, name in self._owners]
        self.step = 0
        self._last_batch = None

    def _advance(self, x):
        """A new batch object starts a new dropout step; the same object keeps it (so ``gradient`` and
        ``numerical_gradient`` of one batch see one mask)."""
        if x is not self._last_batch:
            self.step += 1
            self._last_batch = x

    def _predict(self, x, train_flg):
        for layer in self._layer_list:
            x = layer.forward(x, train_flg)
        return x

    def _decay(self):
        lam = getattr(self, "weight_decay_lambda", 0)
        if not lam:
            return 0.0
        xp = self.ops.xp
        return sum(0.5 * lam * float(xp.vdot(w.reshape(-1), w.reshape(-1)))
                   for key, w in self.params.items() if key.startswith("W"))

    def _loss(self, x, t, train_flg):
        if not train_flg:
            return self.last_layer.forward(self._predict(x, False), t) + self._decay()
        self._advance(x)
        outer = step_context()  # _gradient's, which lets this pass reuse workspaces
        with StepContext(self.step, reuse_buffers=outer is not None and outer.reuse_buffers):
            return self.last_layer.forward(self._predict(x, True), t) + self._decay()

    def _accuracy(self, x, t, train_flg=False):
        y = self._predict(x, train_flg).argmax(axis=1)
        if getattr(t, "ndim", 1) != 1:
            t = t.argmax(axis=1)
        t = t if self.ops.owns(t) else self.ops.asarray(t)
        return int((y == t).sum())

    def accuracy(self, x, t):
        """Fraction of rows of ``x`` whose highest score is the label (``t`` one-hot or class indices)."""
        return self._accuracy(x, t) / float(x.shape[0])

    def _numerical_gradient(self, x, t, keys, train_flg):
        """Central-difference gradients of the loss for ``keys`` of ``params``."""
        if train_flg:
            self._advance(x)

        def loss_W(W):
            return self._loss(x, t, train_flg)

        return {key: numerical_gradient(loss_W, self.params[key]) for key in keys}

    def _gradient(self, x, t, train_flg):
        """Back-propagated gradients for every key of ``params`` (a fresh copy each call)."""
        with StepContext(self.step, reuse_buffers=True):  # this pass's activations are internal: reuse workspaces
            self._loss(x, t, train_flg)
            dout = self.last_layer.backward(1)
            for layer in reversed(self._layer_list):
                dout = layer.backward(dout)
        g = self.flat.g.copy()
        grads = {key: g[e.offset:e.offset + e.size].reshape(e.shape)
                 for (key, _, _), e in zip(self._owners, self._grad_entries)}
        lam = getattr(self, "weight_decay_lambda", 0)
        if lam:
            for key in grads:
                if key.startswith("W"):
                    grads[key] += self.dtype.type(lam) * self.params[key]
        return grads

    def save_params(self, file_name="params.pkl"):
        """Pickle ``params`` as a dict of host NumPy arrays (the book's file format)."""
        save_params_file(self.params, file_name)

    def load_params(self, file_name="params.pkl"):
        """Load a book-style parameter file (a pickled dict of arrays) into ``params``, in place.

        Only dicts, NumPy arrays, dtypes and scalars are unpickled; any other object in the file
        (which could run code) raises ``pickle.UnpicklingError``. Shapes must match this network's.
        """
        assign_params(type(self).__name__, self.ops, self.params, load_params_file(file_name))


class InferenceNet(BookNet):
    """A network whose ``predict``, ``loss`` and gradients always run in inference mode (no
    ``train_flg``): ``TwoLayerNet``, ``MultiLayerNet``, ``SimpleConvNet``, as in the book."""

    def predict(self, x):
        """Scores (before softmax) of ``x``."""
        return self._predict(x, False)

    def loss(self, x, t):
        """Mean cross-entropy of ``softmax(predict(x))`` against ``t`` (one-hot or class indices),
        plus the network's weight decay term when it has one."""
        return self._loss(x, t, False)

    def numerical_gradient(self, x, t):
        """Central-difference gradients of ``loss(x, t)``, one per key of ``params``."""
        return self._numerical_gradient(x, t, list(self.params), False)

    def gradient(self, x, t):
        """Back-propagated gradients of ``loss(x, t)``, one per key of ``params``."""
        return self._gradient(x, t, False)
