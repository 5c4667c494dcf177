"""The public ``Layer`` base class: what built-in and user layers share.

A layer makes its parameters in ``build(input_shape)`` with ``add_weight(name, shape, initializer)``;
each weight is an attribute (``self.W``) with its gradient beside it (``self.dW``). A model packs
every layer's weights into its flat buffer and rebinds the attributes to views into it, so the
layer code never changes. ``forward(x, train_flg=True)`` and ``backward(dout)`` are the book's
protocol; ``backward`` never writes into ``dout``.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
import re
import threading

import numpy

from fastnn import initializers
from fastnn.layers import symbolic
from fastnn.backend import current, follow, is_device_array
from fastnn.params import _check_fits
from fastnn.random import make_rng

_counters: dict = {}

# How ``add_weight`` makes a weight: None, from its initializer; "empty", without running the
# initializer (the loader overwrites every weight: an 8000x8000 layer costs no random draws);
# "shapes", as a zero-memory placeholder of the right shape (the loader's dry pass, which learns
# from a file's config how many bytes its arrays must hold before anything is allocated).
_WEIGHT_MODE = contextvars.ContextVar("fastnn_weight_mode", default=None)


_STEP = threading.local()


class StepContext:
    """What one training step tells the layers it runs through, for the length of a ``with`` block.

    A model's (or a book network's) training step runs its layers inside one: ``step`` numbers
    the dropout masks (a counter-based hash of seed, step, sample and unit), ``row0`` is the
    global index of the batch's first sample (a data-parallel shard), ``reuse_buffers`` lets
    training outputs go to workspaces kept per shape (the step consumes them before the next), and
    ``premade_masks`` makes ``Dropout`` use the mask already in its workspace (a captured CUDA
    graph fills it before each replay). ``retry`` marks a step run again after an out-of-memory
    error: a layer that already folded this step's batch into running statistics (batch
    normalization) does not fold it in twice. Outside any such block a layer allocates fresh outputs
    and a ``Dropout`` counts its own calls. Per thread; blocks nest.
    """

    __slots__ = ("step", "row0", "reuse_buffers", "premade_masks", "retry", "_outer")

    def __init__(self, step, row0=0, reuse_buffers=True, premade_masks=False, retry=False):
        self.step, self.row0 = step, row0
        self.reuse_buffers, self.premade_masks, self.retry = reuse_buffers, premade_masks, retry

    def __enter__(self):
        self._outer = getattr(_STEP, "ctx", None)
        _STEP.ctx = self
        return self

    def __exit__(self, *exc):
        _STEP.ctx = self._outer
        return False


def step_context():
    """The innermost ``StepContext`` of this thread, or None outside a training step."""
    return getattr(_STEP, "ctx", None)


@contextlib.contextmanager
def weights_without_initializers(mode="empty"):
    """Within this block ``add_weight`` skips initializers (``mode="empty"``) or only records shapes
    (``mode="shapes"``). Used by ``fastnn.saving`` when loading."""
    token = _WEIGHT_MODE.set(mode)
    try:
        yield
    finally:
        _WEIGHT_MODE.reset(token)


def _auto_name(cls_name):
    """Keras's automatic layer name: ``Dense`` -> ``"dense_1"``, ``MaxPooling2D`` -> ``"max_pooling2d_1"``,
    ``SimpleRNN`` -> ``"simple_rnn_1"``, ``LSTM`` -> ``"lstm_1"``."""
    snake = re.sub(r"([a-z])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", cls_name)).lower()
    counter = _counters.setdefault(snake, itertools.count(1))
    return f"{snake}_{next(counter)}"


def train_flag(train_flg, training):
    """The book's ``train_flg`` with Keras's ``training=`` accepted as a synonym (it wins when given)."""
    return bool(train_flg if training is None else training)


def check_book_bias(layer, W, b, units):
    """A book layer's given arrays: ``b`` of shape ``(units,)`` to match ``W``, and ``W`` floats."""
    b_shape = getattr(b, "shape", None)
    if b_shape is None or tuple(b_shape) != (units,):
        raise ValueError(f"{layer.name}: b must have shape ({units},) to match W of shape {tuple(W.shape)}, "
                         f"got {b_shape}")
    if W.dtype.kind != "f":
        raise TypeError(f"{layer.name}: W must be a float array, got dtype {W.dtype}")


def shape_str(shape):
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


class Layer:
    """Base class of every layer.

    Parameters
    ----------
    name : str, optional
        Used in summaries and error messages; made unique automatically when omitted.
    trainable : bool
        ``False`` freezes the layer's weights (the optimizer skips them at no cost).
    dtype : str or numpy.dtype, optional
        The dtype of the weights this layer makes; a model sets it to its own.
    input_shape : tuple, optional
        Per-sample input shape (no batch axis) of the first layer of a model.
    input_dim : int, optional
        Keras's short form of ``input_shape=(input_dim,)``.
    """

    def __init__(self, name=None, trainable=True, dtype=None, input_shape=None, input_dim=None):
        self.name = name or _auto_name(type(self).__name__)
        if input_dim is not None:
            if isinstance(input_dim, bool) or not isinstance(input_dim, (int, numpy.integer)) or input_dim < 1:
                raise ValueError(f"{self.name}: input_dim must be a positive integer, got {input_dim!r}")
            if input_shape is not None and tuple(input_shape) != (int(input_dim),):
                raise ValueError(f"{self.name}: input_dim={input_dim} and input_shape={tuple(input_shape)} disagree; "
                                 f"give one of them")
            input_shape = (int(input_dim),)
        self.trainable = trainable
        self.dtype = numpy.dtype(dtype) if dtype is not None else None
        if input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, (int, numpy.integer)) else input_shape  # Keras: 784
            try:
                shape = None if isinstance(shape, str) else tuple(shape)
            except TypeError:
                shape = None
            if not shape or any(isinstance(d, bool) or not isinstance(d, (int, numpy.integer)) or d < 1 for d in shape):
                raise ValueError(f"{self.name} ({type(self).__name__}): input_shape must be the shape of one sample, "
                                 f"a tuple of positive integers such as (784,) or (1, 28, 28), got {input_shape!r}")
            input_shape = tuple(int(d) for d in shape)
        self.input_shape = input_shape
        self.built = False
        self.skip_input_grad = False  # the first layer's dx is not computed when nothing uses it
        self.rng = None
        self._ops = None  # fixed by a model at build; None: follow the inputs
        self._weights = {}  # name -> {"trainable", "regularizer", "decay"}
        self._ws = {}  # workspaces per (output, shape, dtype), used inside a StepContext

    # ------------------------------------------------------------------ backend
    @property
    def ops(self):
        """The backend this layer computes on: the owning model's, else the current one."""
        return self._ops if self._ops is not None else current()

    def _ops_for(self, *arrays):
        """The backend for a call: the model's if owned, else where the inputs live; moves this
        layer's weights there once if they live elsewhere."""
        if self._ops is not None:  # owned by a model or network: its weights live in the flat buffer there
            return self._ops
        ops = follow(*arrays, *self.params.values())
        for name in self._weights:
            w = getattr(self, name)
            if w is not None and not ops.owns(w):
                setattr(self, name, ops.asarray(w))
                g = getattr(self, "d" + name, None)
                setattr(self, "d" + name, None if g is None else ops.asarray(g))
        return ops

    def _buffer(self, ops, name, shape, dtype, train=True):
        """A workspace for output ``name``, or None (the primitive then allocates).

        Only inside a training step's ``StepContext(reuse_buffers=True)``, and only in training mode:
        the step consumes each output before the next, so after the first step of each batch shape
        nothing is allocated. Outputs a user can keep (inference, a layer used on its own) are
        always fresh arrays.
        """
        if not train:
            return None
        ctx = getattr(_STEP, "ctx", None)
        if ctx is None or not ctx.reuse_buffers:
            return None
        key = (name, shape if type(shape) is tuple else tuple(shape), dtype)
        buf = self._ws.get(key)
        if buf is None:
            buf = self._ws[key] = ops.xp.empty(shape, dtype=dtype)
        return buf

    def _check_initializer(self, arg, value):
        """Refuse an unknown initializer at construction, naming the layer and argument."""
        try:
            initializers.check(value)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self.name} ({type(self).__name__}): {arg}: {exc}") from None
        return value

    def free_workspaces(self):
        """Drop the workspaces (after an out-of-memory error, or when the model moves device)."""
        self._ws.clear()

    def _input(self, ops, x, dtype=None):
        """``x`` on ``ops``'s device as a float array of ``dtype`` (the weights' dtype by default)."""
        dtype = dtype or self.dtype
        if not ops.owns(x):
            if is_device_array(x) and not ops.device_arrays:
                raise ValueError(
                    f"{self.name}: x lives on the GPU ({x.device}) but this layer runs on the "
                    f"{ops.name} backend; move it with fastnn.asnumpy(x)")
            x = ops.asarray(x)
        if dtype is not None and x.dtype != dtype:
            if x.dtype.kind == "f" and x.dtype.itemsize > numpy.dtype(dtype).itemsize:
                from fastnn.validation import check_in_range  # here: fastnn.validation imports the layers

                check_in_range(self.name, x, "x", dtype)  # float64 1e39 would become inf in float32 weights' dtype
            x = x.astype(dtype)
        elif x.dtype.kind not in "fc":
            x = x.astype(numpy.float64)
        return x

    # ------------------------------------------------------------------ weights
    def build(self, input_shape, rng=None):
        """Make the parameters for inputs of ``input_shape`` (batch axis first, ``None``)."""
        self.built = True

    def _ensure_built(self, x_shape):
        if not self.built:
            self.build((None,) + tuple(x_shape[1:]))

    def add_weight(self, name, shape, initializer="zeros", trainable=True, regularizer=None, decay=True):
        """Make weight ``self.<name>`` (and its gradient ``self.d<name>``) from ``initializer``.

        ``regularizer`` (e.g. ``fastnn.regularizers.l2(1e-4)``) adds its penalty to the loss and
        gradient; ``decay=False`` excludes the weight from an optimizer's ``weight_decay``.
        """
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{self.name}: weight name must be an identifier, got {name!r}")
        dtype = self.dtype or numpy.dtype(numpy.float32)
        mode = _WEIGHT_MODE.get()
        if mode is not None:  # loading: the file's values replace it; no initializer, no random draw
            # a writable zero-stride placeholder: no memory whatever the shape, and a build that
            # writes into its weights still runs (the values are replaced)
            host = numpy.lib.stride_tricks.as_strided(numpy.zeros(1, dtype), tuple(int(s) for s in shape),
                                                      (0,) * len(shape), writeable=True)
            if mode == "shapes":
                setattr(self, name, host)
                setattr(self, "d" + name, host)
                self._weights[name] = {"trainable": trainable, "regularizer": regularizer, "decay": decay}
                return host
        else:
            if self.rng is None:
                self.rng = make_rng()
            host = numpy.asarray(initializers.get(initializer)(tuple(shape), self.rng, dtype), dtype=dtype)
        ops = self.ops
        value = ops.asarray(host)
        setattr(self, name, value)
        # while loading, the model's flat buffer gives the gradient its memory: nothing to allocate here
        setattr(self, "d" + name, value if mode is not None else ops.alloc(value.shape, value.dtype))
        self._weights[name] = {"trainable": trainable, "regularizer": regularizer, "decay": decay}
        return value

    @property
    def params(self):
        """``{name: array}`` of this layer's weights (views into the model's flat buffer when owned)."""
        return {name: getattr(self, name) for name in self._weights}

    @property
    def grads(self):
        """``{name: gradient}``, filled by ``backward``."""
        return {name: getattr(self, "d" + name) for name in self._weights}

    def weight_info(self):
        return dict(self._weights)

    def count_params(self):
        return int(sum(int(numpy.prod(w.shape)) for w in self.params.values()))

    @property
    def weights(self):
        """Keras's ``layer.weights``: this layer's weight arrays (live, on the backend's device)."""
        return [w for w in self.params.values() if w is not None]

    def get_weights(self):
        """Keras's ``layer.get_weights()``: copies of this layer's weights as host NumPy arrays."""
        return [numpy.array(self.ops.asnumpy(w)) for w in self.weights]

    def set_weights(self, weights):
        """Keras's ``layer.set_weights(list)``: write host arrays into this layer's weights, in
        ``get_weights`` order, in place (shapes checked first, nothing written on a mismatch)."""
        mine = self.weights
        weights = list(weights)
        if len(weights) != len(mine):
            raise ValueError(f"{self.name}.set_weights: the layer has {len(mine)} weight arrays, got {len(weights)}")
        for name, w, new in zip(self._weights, mine, weights):
            if tuple(numpy.shape(new)) != tuple(w.shape):
                raise ValueError(f"{self.name}.set_weights: {name} has shape {tuple(w.shape)}, got an array of "
                                 f"shape {tuple(numpy.shape(new))}")
            _check_fits(f"{self.name}.set_weights: {name}", numpy.asarray(new), w.dtype)
        for w, new in zip(mine, weights):
            w[...] = self.ops.asarray(numpy.asarray(new, dtype=w.dtype))

    # ------------------------------------------------------------------ protocol
    def forward(self, x, train_flg=True, training=None):
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, train_flg=True)")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} must define backward(dout)")

    def __call__(self, x, training=False):
        """``forward(x, train_flg=training)`` on arrays; on symbolic tensors (``fastnn.Input`` and the
        layers called on it) it records the call for a functional ``Model`` and returns the output's
        symbolic tensor."""
        if symbolic.is_symbolic(x):
            return symbolic.connect(self, x)
        return self.forward(x, train_flg=training)

    def compute_output_shape(self, input_shape):
        """Output shape for ``input_shape`` (batch axis first); the identity by default."""
        return tuple(input_shape)

    def get_config(self):
        """The constructor arguments that rebuild this layer (weights excluded)."""
        return {"name": self.name, "trainable": self.trainable}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"

    def _require_forward(self, attr, dout=None):
        value = getattr(self, attr, None)
        if value is None:
            raise ValueError(f"{self.name}: backward() was called before forward()")
        if dout is not None:
            shape = getattr(value, "shape", None)
            if shape is not None and tuple(dout.shape) != tuple(shape):
                raise ValueError(f"{self.name}: backward expected dout of shape {tuple(shape)} "
                                 f"(the forward output's), got {tuple(dout.shape)}")
        return value
