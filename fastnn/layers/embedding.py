"""``Embedding``, as Keras's: a learned vector per integer index (a word, a category)."""
from __future__ import annotations

import numpy

from fastnn import regularizers
from fastnn.backend import is_device_array
from fastnn.functions import get_array_module
from fastnn.layers.base import Layer, train_flag
from fastnn.params import _check_fits

__all__ = ["Embedding"]


def _keras_uniform(shape, rng, dtype=numpy.float32):
    """Keras's ``"uniform"`` (``RandomUniform()``): U(-0.05, 0.05), Embedding's default."""
    return rng.uniform(-0.05, 0.05, shape).astype(dtype)


_INITIALIZERS = {"uniform": _keras_uniform, "random_uniform": _keras_uniform}


class Embedding(Layer):
    """Keras's ``Embedding``: ``y[..., :] = W[x[...]]``, one row of ``W`` per index.

    ``x: (N, ...)`` of indices in ``[0, input_dim)`` gives ``y: (N, ..., output_dim)`` in the
    weights' dtype; ``W: (input_dim, output_dim)`` is Keras's ``embeddings`` (also
    ``layer.embeddings``). ``backward`` scatter-adds the rows of ``dout`` into ``dW`` at their
    indices (an index that occurs k times gets the sum of its k gradients) and returns ``None``:
    indices have no gradient, so an ``Embedding`` is a model's first layer.

    Indices may have any integer dtype, or be floats holding whole numbers: a ``Sequential`` model
    casts its inputs to its float dtype (float32 by default), which holds every integer exactly up
    to 2**24 = 16,777,216 (float64: 2**53), so a larger ``input_dim`` with float32 indices is
    refused. Each ``forward`` checks the indices with one reduction (on a GPU, one small transfer)
    and refuses a negative, too large or fractional index, naming it, its position and the layer.

    Parameters
    ----------
    input_dim : int
        Number of indices (vocabulary size); the largest index is ``input_dim - 1``.
    output_dim : int
        Size of each vector.
    embeddings_initializer : str or callable
        ``"uniform"`` (default, Keras's: U(-0.05, 0.05)) or any ``fastnn.initializers`` name.
    embeddings_regularizer : optional ``fastnn.regularizers`` object.
    weights : array (input_dim, output_dim), or a list holding one, optional
        Initial values (pretrained vectors, Keras's ``weights=``); not part of ``get_config``.
    mask_zero : False
        Masks are not supported: ``True`` is refused.
    input_length : int, optional
        Keras 2's sequence length: the same as ``input_shape=(input_length,)``.
    input_shape : tuple, optional
        Per-sample shape of the indices, e.g. ``(steps,)``.
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 embeddings_constraint=None, mask_zero=False, weights=None, input_length=None, input_shape=None,
                 lora_rank=None, name=None, dtype=None, trainable=True):
        if input_length is not None:
            if input_shape is not None and tuple(input_shape) != (input_length,):
                raise ValueError(f"Embedding: input_length={input_length!r} and input_shape={input_shape!r} "
                                 f"disagree; give one of them")
            input_shape = (input_length,)
        super().__init__(name=name, trainable=trainable, dtype=dtype, input_shape=input_shape)
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
                raise ValueError(f"{self.name} (Embedding): {arg} must be a positive integer, got {value!r}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        if mask_zero:
            raise ValueError(f"{self.name} (Embedding): mask_zero=True is not supported (fastnn layers have no "
                             f"masks); pad with index 0 and let the model learn it, or leave the padding out")
        for arg, value in (("embeddings_constraint", embeddings_constraint), ("lora_rank", lora_rank)):
            if value is not None:
                raise ValueError(f"{self.name} (Embedding): {arg} is not supported, got {value!r}")
        if isinstance(embeddings_initializer, str) and embeddings_initializer.lower() in _INITIALIZERS:
            self.embeddings_initializer = embeddings_initializer
        else:
            self.embeddings_initializer = self._check_initializer("embeddings_initializer", embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self._initial = self._check_weights(weights)
        self.W = self.dW = None
        self.idx = None
        self._train = False

    def _check_weights(self, weights):
        if weights is None:
            return None
        if isinstance(weights, (list, tuple)) and len(weights) == 1:
            weights = weights[0]
        host = numpy.asarray(weights)
        if host.shape != (self.input_dim, self.output_dim) or host.dtype.kind not in "iuf":
            raise ValueError(f"{self.name} (Embedding): weights must be one array of shape ({self.input_dim}, "
                             f"{self.output_dim}) (input_dim, output_dim), got {host.dtype} of shape {host.shape}")
        return host

    def _pretrained(self, shape, rng=None, dtype=numpy.float32):
        """The ``weights=`` given, in the layer's dtype (a value beyond its range is refused, not made inf)."""
        _check_fits(f"{self.name} (Embedding): weights", self._initial, dtype)
        return self._initial.astype(dtype)

    @property
    def embeddings(self):
        """Keras's name for ``W``."""
        return self.W

    def build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        init = self.embeddings_initializer
        if self._initial is not None:
            init = self._pretrained
        elif isinstance(init, str) and init.lower() in _INITIALIZERS:
            init = _INITIALIZERS[init.lower()]
        self.add_weight("W", (self.input_dim, self.output_dim), init, regularizer=self.embeddings_regularizer)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def check_input(self, x, what="x"):
        """Raise unless ``x`` (host or device array) holds valid indices: integers, or floats holding
        whole numbers exactly, in ``[0, input_dim)``. One reduction (on a GPU, one small transfer);
        the error names the layer, the first bad value and its position. ``forward`` calls it on
        every batch; a model may call it once on its whole input instead."""
        kind = x.dtype.kind
        if kind not in "biuf":
            raise TypeError(f"{self.name} (Embedding): {what} must hold integer indices, got dtype {x.dtype}")
        if kind == "f" and self.input_dim > 2 ** (numpy.finfo(x.dtype).nmant + 1):
            raise ValueError(f"{self.name} (Embedding): {x.dtype} indices are exact only up to "
                             f"{2 ** (numpy.finfo(x.dtype).nmant + 1)}, and input_dim is {self.input_dim}; give "
                             f"int indices, or build the model with dtype='float64'")
        bad = (x < 0) | (x >= self.input_dim)
        if kind == "f":
            bad |= x != get_array_module(x).floor(x)  # NaN too
        if x.size and bool(bad.any()):
            host = (lambda a: a.get() if is_device_array(a) else numpy.asarray(a))  # noqa: E731
            where = tuple(int(i) for i in numpy.argwhere(host(bad))[0])
            value = host(x)[where].item()
            value = int(value) if float(value).is_integer() else value  # 12, not the model's cast 12.0
            raise ValueError(f"{self.name} (Embedding): indices must be integers in [0, {self.input_dim - 1}] "
                             f"(input_dim={self.input_dim}), got {value!r} at index {where} of {what} with shape "
                             f"{tuple(x.shape)}")

    def _indices(self, ops, x, train):
        """``x`` checked and as int64 indices (a workspace in a training step)."""
        self.check_input(x)
        idx = self._buffer(ops, "idx", x.shape, numpy.int64, train)
        if idx is None:
            return x if x.dtype == numpy.int64 else x.astype(numpy.int64)
        idx[...] = x
        return idx

    def forward(self, x, train_flg=True, training=None):
        """``y: (N, ..., output_dim)``: the rows of ``W`` at the indices ``x: (N, ...)``."""
        if not hasattr(x, "ndim"):
            x = numpy.asarray(x)
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        train = self._train = train_flag(train_flg, training)
        if not ops.owns(x):  # moved as it is: Layer._input would make integer indices floats
            if is_device_array(x) and not ops.device_arrays:
                raise ValueError(f"{self.name}: x lives on the GPU but this layer runs on the {ops.name} backend; "
                                 f"move it with fastnn.asnumpy(x)")
            x = ops.asarray(x)
        self.idx = self._indices(ops, x, train)
        out = self._buffer(ops, "y", self.idx.shape + (self.output_dim,), self.W.dtype, train)
        return ops.xp.take(self.W, self.idx, axis=0, out=out)

    def backward(self, dout):
        """Fills ``dW`` (zero except at the forward's indices, where the rows of ``dout`` add up) and
        returns ``None`` (no gradient for indices); ``dout: (N, ..., output_dim)`` is not written."""
        idx = self._require_forward("idx")
        want = tuple(idx.shape) + (self.output_dim,)
        if tuple(dout.shape) != want:
            raise ValueError(f"{self.name}: backward expected dout of shape {want} (the forward output's), got "
                             f"{tuple(dout.shape)}")
        ops = self._ops_for(self.W)
        dout = self._input(ops, dout, self.W.dtype)
        # the scatter over single elements (row * output_dim + column): NumPy's add.at takes its fast
        # path for 1-D operands, 3x faster than over rows; the sums keep the same order
        d = self.output_dim
        pos = self._buffer(ops, "pos", (idx.size, d), numpy.int64, self._train)
        pos = ops.xp.add(idx.reshape(-1, 1) * d, ops.xp.arange(d), out=pos)
        self.dW[...] = 0
        ops.xp.add.at(self.dW.reshape(-1), pos.reshape(-1), dout.reshape(-1))
        return None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim, mask_zero=False,
                   input_shape=list(self.input_shape) if self.input_shape else None)
        if isinstance(self.embeddings_initializer, str):  # a callable initializer is not saved; weights are
            cfg["embeddings_initializer"] = self.embeddings_initializer
        if self.embeddings_regularizer is not None:
            cfg["embeddings_regularizer"] = self.embeddings_regularizer.get_config()
        return cfg
