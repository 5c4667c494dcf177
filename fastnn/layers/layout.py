"""Where the channels are: ``data_format`` for the convolution and pooling layers.

Every window (convolution, pooling) is computed on NCHW arrays by the backend's primitives. A
layer made with ``data_format="channels_last"`` takes Keras's layout, ``(N, H, W, C)`` for images
and ``(N, steps, C)`` for sequences: it moves its input to NCHW (one transposed copy, into a
workspace inside a training step), computes there, and moves its output back, so a following
``Flatten`` flattens in ``(H, W, C)`` order exactly as Keras's does. The weights keep fastnn's
layout whatever the data format: a ``Conv2D`` kernel is ``W: (filters, C, kh, kw)`` (Keras's
``(kh, kw, C, filters)`` is ``W.transpose(2, 3, 1, 0)``).

The 2-D layers default to ``image_data_format()``: ``"channels_first"``, fastnn's layout, unless
``set_image_data_format("channels_last")`` (Keras's ``keras.config.set_image_data_format``) was
called before they were made. The 1-D layers (``Conv1D``, ``MaxPooling1D``, ...) default to
``"channels_last"``, as in Keras and as ``Embedding`` gives them their input. A layer's config
records the format it was made with, so a saved model loads the same whatever the default.
"""
from __future__ import annotations


import numpy

from fastnn.layers.base import Layer, shape_str, train_flag

CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
_FORMATS = (CHANNELS_FIRST, CHANNELS_LAST)
_default = {"image": CHANNELS_FIRST}

# (spatial rank, data format) -> the names of the axes of one sample, batch axis first
_AXES = {(2, CHANNELS_FIRST): ("N", "C", "H", "W"), (2, CHANNELS_LAST): ("N", "H", "W", "C"),
         (1, CHANNELS_FIRST): ("N", "C", "steps"), (1, CHANNELS_LAST): ("N", "steps", "C")}


def image_data_format():
    """The ``data_format`` of 2-D layers made without one: ``"channels_first"`` unless set."""
    return _default["image"]


def set_image_data_format(data_format):
    """Set the ``data_format`` of the 2-D layers made from now on (``"channels_first"`` or
    ``"channels_last"``); layers already made keep theirs."""
    _default["image"] = check_data_format("set_image_data_format", data_format)


def check_data_format(owner, data_format, default=None):
    """``data_format`` checked and lower-cased; ``None`` gives ``default`` (else ``image_data_format()``)."""
    if data_format is None:
        return default or image_data_format()
    key = data_format.lower() if isinstance(data_format, str) else data_format
    if key not in _FORMATS:
        raise ValueError(f"{owner}: data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
    return key


def layout_str(rank, data_format, channels=None, batch=True):
    """``"(N, H, W, C)"`` and the like, with ``channels`` in place of ``C`` when known."""
    names = [str(channels) if a == "C" and channels is not None else a for a in _AXES[rank, data_format]]
    return "(" + ", ".join(names if batch else names[1:]) + ")"


def _perm(rank, data_format, inverse=False):
    """Axis order taking a layout's array to NCHW (``inverse``: NCHW back), 1-D data seen as height 1."""
    if data_format == CHANNELS_FIRST:
        return None
    if rank == 2:
        return (0, 2, 3, 1) if inverse else (0, 3, 1, 2)
    return (0, 2, 1)


def nchw_shape(shape, rank, data_format):
    """The NCHW shape of an input of ``shape`` in the layout; ``(N, C)`` shapes stay as they are."""
    shape = tuple(shape)
    if len(shape) == 2:
        return shape
    perm = _perm(rank, data_format)
    if perm is not None:
        shape = tuple(shape[i] for i in perm)
    return shape if rank == 2 else (shape[0], shape[1], 1, shape[2])


def layout_shape(shape, rank, data_format):
    """The inverse of ``nchw_shape``: an NCHW shape in the layout."""
    shape = tuple(shape)
    if len(shape) == 2:
        return shape
    if rank == 1:
        shape = (shape[0], shape[1], shape[3])
    perm = _perm(rank, data_format, inverse=True)
    return shape if perm is None else tuple(shape[i] for i in perm)


def to_nchw(a, rank, data_format):
    """A view of array ``a`` in NCHW (``(N, C)`` arrays, global pooling outputs, stay as they are)."""
    if a.ndim == 2:
        return a
    perm = _perm(rank, data_format)
    a = a if perm is None else a.transpose(perm)
    return a if rank == 2 else a[:, :, None, :]


def from_nchw(a, rank, data_format):
    """The inverse of ``to_nchw``: a view of an NCHW array in the layout."""
    if a.ndim == 2:
        return a
    a = a if rank == 2 else a[:, :, 0, :]
    perm = _perm(rank, data_format, inverse=True)
    return a if perm is None else a.transpose(perm)


class SpatialLayer(Layer):
    """A layer over images (``rank = 2``) or sequences (``rank = 1``) in either data format.

    Subclasses compute on NCHW arrays in ``_build``, ``_output_shape``, ``_forward`` and
    ``_backward``; this class moves inputs, outputs and gradients between the layer's
    ``data_format`` and NCHW around them (2-D channels-first data goes straight through, untouched).
    """

    rank = 2

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        default = CHANNELS_LAST if self.rank == 1 else None
        self.data_format = check_data_format(f"{self.name} ({type(self).__name__})", data_format, default)
        if self.input_shape is not None and len(self.input_shape) != self.rank + 1:
            raise ValueError(f"{self.name}: input_shape must be {self._layout(batch=False)} (data_format="
                             f"{self.data_format!r}), got {self.input_shape}")
        self._y_shape = None  # the last forward output's shape, in the layout
        self._train_io = False

    @property
    def _direct(self):
        return self.rank == 2 and self.data_format == CHANNELS_FIRST

    def _layout(self, channels=None, batch=True):
        return layout_str(self.rank, self.data_format, channels, batch)

    def _check_shape(self, shape, what="x"):
        """Raise unless ``shape`` has this layout's rank and, once the layer knows them, its channels."""
        c = getattr(self, "in_channels", None)
        axis = 1 if self.data_format == CHANNELS_FIRST else -1
        if len(shape) == self.rank + 2 and (c is None or shape[axis] == c):
            return
        hint = ""
        if len(shape) == self.rank + 1:
            hint = "; data with one channel needs a channel axis: " + (
                "x[:, None]" if self.data_format == CHANNELS_FIRST else "x[..., None]")
        elif len(shape) == self.rank + 2 and c is not None and shape[-1 if axis == 1 else 1] == c:
            other = CHANNELS_LAST if axis == 1 else CHANNELS_FIRST
            hint = f"; it looks like {other} data: give the layer data_format={other!r}"
        raise ValueError(f"{self.name} ({type(self).__name__}): expected {what} of shape {self._layout(c)} "
                         f"(data_format={self.data_format!r}), got {shape_str(shape)}{hint}")

    def _contiguous(self, ops, a, name, train):
        """``a`` as a C-contiguous array: itself, a workspace copy (training step) or a fresh copy."""
        if a.flags.c_contiguous:
            return a
        buf = self._buffer(ops, name, a.shape, a.dtype, train)
        if buf is None:
            return ops.xp.ascontiguousarray(a)
        buf[...] = a
        return buf

    # ------------------------------------------------------------------ the layout around NCHW
    def build(self, input_shape, rng=None):
        if not self._direct:
            self._check_shape(tuple(input_shape), "inputs")
            input_shape = nchw_shape(input_shape, self.rank, self.data_format)
        self._build(input_shape, rng)

    def _build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        self.built = True

    def compute_output_shape(self, input_shape):
        if self._direct:
            return self._output_shape(tuple(input_shape))
        self._check_shape(tuple(input_shape), "inputs")
        shape = self._output_shape(nchw_shape(input_shape, self.rank, self.data_format))
        return layout_shape(shape, self.rank, self.data_format)

    def forward(self, x, train_flg=True, training=None):
        """The output for ``x`` in the layer's ``data_format`` (see the class docstring)."""
        if self._direct:
            return self._forward(x, train_flg, training)
        if not hasattr(x, "ndim"):
            x = numpy.asarray(x)
        self._check_shape(tuple(x.shape))
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if x.dtype.kind == "f" else None)
        train = self._train_io = train_flag(train_flg, training)
        y = self._forward(self._contiguous(ops, to_nchw(x, self.rank, self.data_format), "x_nchw", train), train)
        y = self._contiguous(ops, from_nchw(y, self.rank, self.data_format), "y_layout", train)
        self._y_shape = tuple(y.shape)
        return y

    def backward(self, dout):
        """``dx`` in the layer's ``data_format`` for ``dout`` in it; ``dout`` is not written."""
        if self._direct:
            return self._backward(dout)
        if self._y_shape is None:
            raise ValueError(f"{self.name}: backward() was called before forward()")
        if tuple(dout.shape) != self._y_shape:
            raise ValueError(f"{self.name}: backward expected dout of shape {self._y_shape} (the forward "
                             f"output's), got {tuple(dout.shape)}")
        ops = self._ops_for(dout)
        dout = self._input(ops, dout, dout.dtype if dout.dtype.kind == "f" else None)
        train = self._train_io
        dx = self._backward(self._contiguous(ops, to_nchw(dout, self.rank, self.data_format), "dout_nchw", train))
        return None if dx is None else self._contiguous(ops, from_nchw(dx, self.rank, self.data_format),
                                                        "dx_layout", train)

    def get_config(self):
        cfg = super().get_config()
        cfg["data_format"] = self.data_format
        return cfg
