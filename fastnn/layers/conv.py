"""Convolution and pooling layers, the book's and Keras's, computed in NCHW layout.

Arrays are ``(N, C, H, W)`` by default: batch, channels, height, width (PyTorch's and the book's
layout), so a Keras-style first layer takes ``input_shape=(C, H, W)``. The Keras layers also take
``data_format="channels_last"`` (``(N, H, W, C)``, Keras's default; ``fastnn.layers.layout``): they
move such data to NCHW and back around the same computation, and keep their weights' layout.

A convolution is the book's ``im2col`` into one GEMM, with the patches stored transposed
(``ops.im2col_t``): the filters ``W: (FN, C, FH, FW)`` seen as ``(FN, C*FH*FW)`` times
``colT: (C*FH*FW, N*OH*OW)`` (the book's ``col.T``) gives the channel-major ``(FN, N*OH*OW)``;
``ops.conv_bias_act`` adds the bias, applies the activation and writes NCHW in one pass. Backward
is ``ops.conv_act_backward`` (NCHW back to channel-major, with the bias gradient),
``dW = dz @ colT.T``, ``dcolT = W.T @ dz`` and ``col2im_t``: no transpose is materialised. (Each
row segment of ``colT`` is a shifted copy of an input row, which made im2col + col2im 4x faster
than the book's ``(N*OH*OW, C*FH*FW)`` layout on the Numba backend; the GEMMs take either.)
In a model's training step every array is a workspace kept per batch shape.
"""
from __future__ import annotations

import warnings

import numpy

from fastnn import regularizers
from fastnn.functions import check_flag
from fastnn.kernels import NEEDS_Z
from fastnn.kernels.geometry import conv_geometry, pool_geometry
from fastnn.layers.base import _auto_name, check_book_bias, shape_str, step_context, train_flag
from fastnn.layers.core import SOFTMAX, activation_code
from fastnn.layers.layout import CHANNELS_FIRST, SpatialLayer

__all__ = ["Conv2D", "Convolution", "MaxPooling2D", "Pooling", "AveragePooling2D"]

_NCHW_HINT = ("layout is NCHW (channels on axis 1); channels-last (NHWC) data needs "
              "x.transpose(0, 3, 1, 2) first, or the layer's data_format='channels_last'")


def _pair(owner, name, value):
    """An int or a pair of ints as ``(a, b)``, each >= 1."""
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or any(isinstance(v, bool) for v in value):
            raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value!r}")
    return pair


def _check_padding(owner, padding, allowed=("valid", "same")):
    key = padding.lower() if isinstance(padding, str) else padding
    if key not in allowed:
        raise ValueError(f"{owner}: padding must be one of {', '.join(repr(a) for a in allowed)}, got {padding!r}")
    return key


def same_padding(size, window, stride):
    """Keras/TensorFlow ``"same"``: ``(before, after)`` zeros so that ``out = ceil(size / stride)``;
    the odd one goes after (bottom/right), as TensorFlow does."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def check_nchw(layer, x, channels=None):
    """Raise the layer's ``ValueError`` unless ``x`` is 4-D NCHW with ``channels`` channels."""
    c = "C" if channels is None else channels
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        hint = _NCHW_HINT
        if x.ndim == 3 and channels == 1:
            hint += "; single-channel images of shape (N, H, W) need a channel axis: x[:, None]"
        raise ValueError(f"{layer.name} ({type(layer).__name__}): expected x of shape (N, {c}, H, W), got "
                         f"{tuple(x.shape)}; {hint}")


def _scratch(layer, ops, shapes, dtype):
    """The layer's scratch arrays ``{name: array}``, kept per (backend, shape, dtype) in ``layer._ws``
    (which a model clears when it moves device or runs out of memory)."""
    ws = {}
    for name, shape in shapes.items():
        key = ("scratch", ops.name, getattr(ops, "device", None), name, tuple(shape), numpy.dtype(dtype).str)
        buf = layer._ws.get(key)
        if buf is None:
            buf = layer._ws[key] = ops.xp.empty(shape, dtype=dtype)
        ws[name] = buf
    return ws


class Conv2D(SpatialLayer):
    """2-D convolution ``y = act(conv(x, W) + b)``, as Keras's ``Conv2D``.

    Layout NCHW by default: ``x: (N, C, H, W)`` gives ``y: (N, filters, OH, OW)``; the first layer
    of a model takes ``input_shape=(C, H, W)``. With ``data_format="channels_last"``: ``x: (N, H,
    W, C)``, ``y: (N, OH, OW, filters)``, ``input_shape=(H, W, C)``. The kernel is always
    ``W: (filters, C, kh, kw)`` (PyTorch's and the book's layout; Keras's ``(kh, kw, C, filters)``
    is ``W.transpose(2, 3, 1, 0)``), the bias ``b: (filters,)``. The result equals
    ``torch.nn.functional.conv2d`` (a cross-correlation) plus the activation.

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size : int or (int, int)
        Window ``(kh, kw)``.
    strides : int or (int, int)
    padding : "valid" or "same"
        ``"valid"``: no padding, ``OH = (H - kh) // sh + 1``. ``"same"``: as Keras/TensorFlow,
        ``OH = ceil(H / sh)``, with zeros split evenly and the odd one at the bottom/right (so even
        kernels and strides > 1 pad asymmetrically, unlike PyTorch's ``padding="same"``).
    activation : str, optional
        relu, sigmoid, tanh, leaky_relu, elu, softplus, selu, gelu, gelu_tanh, swish (silu) or
        linear, fused with the bias add. gelu, gelu_tanh and swish keep the pre-activation for
        backward, in the GEMM's own workspace (no extra memory).
    input_shape : (C, H, W) or, channels last, (H, W, C); optional
    kernel_initializer, bias_initializer : str or callable
        Glorot's fans for a kernel are ``C*kh*kw`` and ``filters*kh*kw``.
    kernel_regularizer, bias_regularizer : optional ``fastnn.regularizers`` objects.
    use_bias : bool
    data_format : "channels_first" or "channels_last", optional
        Default: ``fastnn.layers.image_data_format()`` ("channels_first" unless set).
    dilation_rate : 1
        Only 1 (no dilation) is supported; anything else is refused.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, input_shape=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, use_bias=True, name=None, dtype=None, trainable=True, data_format=None,
                 dilation_rate=1):
        name = name or _auto_name(type(self).__name__)
        super().__init__(name=name, trainable=trainable, dtype=dtype, input_shape=input_shape, data_format=data_format)
        if isinstance(filters, bool) or not isinstance(filters, (int, numpy.integer)) or filters <= 0:
            raise ValueError(f"{self.name}: filters must be a positive integer, got {filters!r}")
        if set(numpy.ravel(dilation_rate).tolist()) != {1}:
            raise ValueError(f"{self.name}: dilation_rate={dilation_rate!r} is not supported (only 1)")
        self.filters = int(filters)
        self.kernel_size = _pair(self.name, "kernel_size", kernel_size)
        self.strides = _pair(self.name, "strides", strides)
        self.padding = _check_padding(self.name, padding)
        self.activation = activation
        self.act, self.alpha = activation_code(activation)
        if self.act == SOFTMAX:
            raise ValueError(f"{self.name}: softmax over a convolution's channels is not supported; flatten or pool "
                             f"to (N, C) and use Dense(..., activation='softmax') or Activation('softmax')")
        self.kernel_initializer = self._check_initializer("kernel_initializer", kernel_initializer)
        self.bias_initializer = self._check_initializer("bias_initializer", bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.use_bias = check_flag(f"{self.name} ({type(self).__name__})", "use_bias", use_bias)
        self.W = self.b = self.dW = self.db = None
        self.x_shape = self.colT = self.y = None
        self._z = None  # the pre-activation (filters, N, OH, OW), kept only for an activation in NEEDS_Z
        self._pad = None
        self._train = False

    # ------------------------------------------------------------------ shapes
    @property
    def col(self):
        """The book's ``col: (N*OH*OW, C*FH*FW)`` of the last forward, a view of ``colT.T``."""
        return None if self.colT is None else self.colT.T

    @property
    def in_channels(self):
        return None if self.W is None else int(self.W.shape[1])

    def _padding_for(self, h, w):
        """``(top, bottom, left, right)`` zeros for an ``h x w`` input."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        return same_padding(h, self.kernel_size[0], self.strides[0]) + same_padding(w, self.kernel_size[1],
                                                                                    self.strides[1])

    def _out_hw(self, h, w):
        kh, kw = self.kernel_size
        shape = (1, 1, h, w)
        oh, ow = conv_geometry(shape, kh, kw, self.strides, self._padding_for(h, w), self.name)[:2]
        return oh, ow

    def _build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected inputs of shape (N, C, H, W) (layout NCHW; input_shape=(C, H, W)), "
                             f"got {shape_str(input_shape)}")
        c, h, w = (int(v) for v in input_shape[1:])
        if self._direct and w in (1, 3, 4) and c > w and h > w:  # (C, H, W) = (28, 28, 3) looks channels-last
            warnings.warn(f"{self.name}: input shape {shape_str(input_shape)} looks channels-last (NHWC); "
                          f"fastnn is NCHW: input_shape=(C, H, W) and x.transpose(0, 3, 1, 2), or "
                          f"data_format='channels_last'", stacklevel=4)
        self.add_weight("W", self._kernel_shape(c), self.kernel_initializer, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("b", (self.filters,), self.bias_initializer, regularizer=self.bias_regularizer)
        self.built = True

    def _kernel_shape(self, channels):
        return (self.filters, channels) + self.kernel_size

    def _output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected inputs of shape (N, C, H, W) (layout NCHW), got "
                             f"{shape_str(input_shape)}")
        try:
            oh, ow = self._out_hw(int(input_shape[2]), int(input_shape[3]))
        except ValueError as exc:
            raise ValueError(f"{exc} (input shape {shape_str(input_shape)}; {_NCHW_HINT})") from None
        return (input_shape[0], self.filters, oh, ow)

    # ------------------------------------------------------------------ compute
    def _forward(self, x, train_flg=True, training=None):
        """``y: (N, filters, OH, OW)`` from ``x: (N, C, H, W)`` (layout NCHW)."""
        if not hasattr(x, "ndim"):
            x = numpy.asarray(x)
        if x.ndim != 4:
            check_nchw(self, x, self.in_channels)
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, self.W.dtype)
        check_nchw(self, x, self.in_channels)
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        fn = self.filters
        pad = self._padding_for(h, w)
        oh, ow = conv_geometry(x.shape, kh, kw, self.strides, pad, self.name)[:2]
        m, k = n * oh * ow, c * kh * kw
        train = train_flag(train_flg, training)
        # scratch kept only for a model's training steps; inference and standalone use get fresh
        # arrays (nothing retained per input shape, and a kept layer.col is never overwritten)
        ctx = step_context()
        keep = train and ctx is not None and ctx.reuse_buffers
        ws = _scratch(self, ops, {"colT": (k, m), "z": (fn, m), "dz": (fn, m), "dcolT": (k, m)}, x.dtype) if keep else {}
        colT = ops.im2col_t(x, kh, kw, self.strides, pad, out=ws.get("colT"))
        # z = W @ colT: (filters, N*OH*OW), channel-major, so that bias + activation + the move to
        # NCHW is one pass (conv_bias_act) and no transpose is materialised
        z = ops.gemm(self.W.reshape(fn, k), colT, out=ws.get("z")).reshape(fn, n, oh, ow)
        # gelu/swish: backward reads z + b, which conv_bias_act writes back into z (in place)
        self._z = z if self.act in NEEDS_Z else None
        self.y = ops.conv_bias_act(z, self.b if self.use_bias else None, self.act, self.alpha, z_out=self._z,
                                   out=self._buffer(ops, "y", (n, fn, oh, ow), x.dtype, train))
        self.colT, self.x_shape, self._pad, self._train = colT, tuple(x.shape), pad, train
        self._dz, self._dcolT = ws.get("dz"), ws.get("dcolT")
        return self.y

    def _backward(self, dout):
        """Fills ``dW``, ``db`` and returns ``dx: (N, C, H, W)``; ``dout: (N, filters, OH, OW)`` is not written."""
        y = self._require_forward("y")
        n, c = self.x_shape[:2]
        fn, (kh, kw) = self.filters, self.kernel_size
        if tuple(dout.shape) != tuple(y.shape):
            raise ValueError(f"{self.name}: backward expected dout of shape (N, {fn}, OH, OW) like the forward "
                             f"output {tuple(y.shape)}, got {tuple(dout.shape)}")
        ops = self._ops_for(y)
        self._grad_buffers(ops)
        dout = self._input(ops, dout, y.dtype)
        # dz: (filters, N*OH*OW), the layout of z; db summed in the same pass
        dz_out = None if self._dz is None else self._dz.reshape(y.shape[1], n, *y.shape[2:])
        dz = ops.conv_act_backward(dout, y, self.act, self.alpha, out=dz_out, z=self._z,
                                   db=self.db if self.use_bias else None).reshape(fn, -1)
        ops.gemm(dz, self.colT, trans_b=True, out=self.dW.reshape(fn, -1))
        if self.skip_input_grad:
            return None
        dcolT = ops.gemm(self.W.reshape(fn, -1), dz, trans_a=True, out=self._dcolT)
        return ops.col2im_t(dcolT, self.x_shape, kh, kw, self.strides, self._pad,
                            out=self._buffer(ops, "dx", self.x_shape, y.dtype, self._train))

    def _grad_buffers(self, ops):
        """``dW``/``db`` exist from ``add_weight`` (views into a model's flat buffer once owned)."""

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
                   activation=self.activation, use_bias=self.use_bias, input_shape=self.input_shape)
        for key in ("kernel_initializer", "bias_initializer"):
            if isinstance(getattr(self, key, None), str):  # a callable initializer is not saved; weights are
                cfg[key] = getattr(self, key)
        for key in ("kernel_regularizer", "bias_regularizer"):
            if getattr(self, key, None) is not None:
                cfg[key] = getattr(self, key).get_config()
        return cfg


class Convolution(Conv2D):
    """The book's ``Convolution(W, b, stride=1, pad=0)`` on the very arrays it is given.

    ``W: (FN, C, FH, FW)``, ``b: (FN,)``; ``x: (N, C, H, W)`` (layout NCHW) gives
    ``(N, FN, OH, OW)`` with ``OH = (H + 2*pad - FH) // stride + 1``. ``stride`` and ``pad`` may
    also be pairs ``(h, w)``. The layer keeps ``W`` and ``b`` by reference (on a CuPy backend host
    arrays move to the device once, and ``layer.W`` is the moved array), computes in ``W``'s
    dtype, and after ``backward`` holds the gradients in ``dW`` and ``db``. Like the book's it
    goes through ``im2col`` (``self.col``, a view of the transposed ``self.colT`` it stores) and one GEMM.
    """

    def __init__(self, W, b, stride=1, pad=0, name=None):
        W_shape = getattr(W, "shape", None)
        if W_shape is None or len(W_shape) != 4:
            raise ValueError(f"Convolution: W must be a 4-D array (FN, C, FH, FW), got {type(W).__name__} of "
                             f"shape {W_shape}")
        super().__init__(int(W_shape[0]), tuple(W_shape[2:]), strides=stride, name=name, dtype=W.dtype,
                         data_format=CHANNELS_FIRST)
        check_book_bias(self, W, b, W_shape[0])
        self.stride = stride
        self.pad = pad
        ph, pw = (pad, pad) if isinstance(pad, (int, numpy.integer)) else tuple(pad)
        if min(int(ph), int(pw)) < 0:
            raise ValueError(f"{self.name}: pad must be >= 0, got {pad!r}")
        self._explicit_pad = (int(ph), int(ph), int(pw), int(pw))
        self.W, self.b = W, b
        self._weights = {"W": {"trainable": True, "regularizer": None, "decay": True},
                         "b": {"trainable": True, "regularizer": None, "decay": True}}
        self.built = True

    def _padding_for(self, h, w):
        return self._explicit_pad

    @property
    def col_W(self):
        """The book's ``col_W``: the filters as ``(C*FH*FW, FN)``."""
        return self.W.reshape(self.filters, -1).T

    def _grad_buffers(self, ops):
        if self.dW is None or self.dW.shape != self.W.shape or not ops.owns(self.dW):
            self.dW = ops.alloc(self.W.shape, self.W.dtype)
            self.db = ops.alloc(self.b.shape, self.b.dtype)

    def get_config(self):
        raise TypeError(f"{self.name}: Convolution holds the arrays it was given; use Conv2D to save a model")


# ---------------------------------------------------------------------------- pooling
class MaxPooling2D(SpatialLayer):
    """Max pooling, as Keras's ``MaxPooling2D`` (``padding="valid"``).

    Layout NCHW by default: ``x: (N, C, H, W)`` gives ``(N, C, OH, OW)`` with ``OH = (H - ph) //
    sh + 1``; ``data_format="channels_last"``: ``(N, H, W, C)`` gives ``(N, OH, OW, C)``.
    ``pool_size`` and ``strides`` are ints or pairs; ``strides`` defaults to ``pool_size``.
    Equals ``torch.nn.functional.max_pool2d``; ``backward`` sends each gradient to the first
    maximum of its window (``self.arg_max``, indices into each input plane).
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None, **kwargs):
        name = name or _auto_name(type(self).__name__)
        super().__init__(name=name, **kwargs)
        self.pool_size = _pair(self.name, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(self.name, "strides", strides)
        self.padding = _check_padding(self.name, padding, ("valid",))
        self._explicit_pad = (0, 0, 0, 0)
        self.x_shape = self.arg_max = None
        self._train = False

    def _geometry(self, shape):
        ph, pw = self.pool_size
        return pool_geometry(shape, ph, pw, self.strides, self._explicit_pad, self.name)

    def _output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected inputs of shape (N, C, H, W) (layout NCHW), got "
                             f"{shape_str(input_shape)}")
        oh, ow = self._geometry((1, 1, int(input_shape[2]), int(input_shape[3])))[:2]
        return (input_shape[0], input_shape[1], oh, ow)

    def _forward(self, x, train_flg=True, training=None):
        """``(N, C, OH, OW)``: the maximum of each window of ``x: (N, C, H, W)`` (layout NCHW)."""
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if getattr(x, "dtype", None) is not None and x.dtype.kind == "f" else None)
        check_nchw(self, x)
        ph, pw = self.pool_size
        train = self._train = train_flag(train_flg, training)
        shape = self._output_shape(x.shape)
        y, self.arg_max = ops.maxpool_forward(x, ph, pw, self.strides, self._explicit_pad,
                                              out=self._buffer(ops, "y", shape, x.dtype, train),
                                              argmax=self._buffer(ops, "argmax", shape, numpy.int64, train))
        self.x_shape = tuple(x.shape)
        return y

    def _backward(self, dout):
        """``dx: (N, C, H, W)``: ``dout`` at each window's maximum, zero elsewhere; ``dout`` is not written."""
        arg_max = self._require_forward("arg_max", dout)
        ops = self._ops_for(arg_max)
        dout = self._input(ops, dout, dout.dtype if dout.dtype.kind == "f" else None)
        return ops.maxpool_backward(dout, arg_max, self.x_shape,
                                    out=self._buffer(ops, "dx", self.x_shape, dout.dtype, self._train))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return cfg


class Pooling(MaxPooling2D):
    """Book-style ``Pooling(pool_h, pool_w, stride=1, pad=0)``: max pooling, NCHW layout.

    ``x: (N, C, H, W)`` gives ``(N, C, OH, OW)`` with ``OH = (H + 2*pad - pool_h) // stride + 1``.
    The default here is ``stride=1``; the book's current ``common/layers.py`` defaults to
    ``stride=2``, and so does ``fastnn.book.layers.Pooling``, which follows the book exactly
    (Keras's ``MaxPooling2D`` defaults to the pool size).
    Padding follows ``torch.nn.functional.max_pool2d``: padded cells never win (the book's
    ``im2col`` pads with zeros, which win over negative inputs), and ``pad`` is at most half the
    window. ``arg_max`` holds, per window, the index of its maximum in the input plane.
    """

    def __init__(self, pool_h, pool_w, stride=1, pad=0, name=None):
        super().__init__((pool_h, pool_w), stride, name=name, data_format=CHANNELS_FIRST)
        self.pool_h, self.pool_w = self.pool_size
        self.stride, self.pad = stride, pad
        ph, pw = (pad, pad) if isinstance(pad, (int, numpy.integer)) else tuple(pad)
        self._explicit_pad = (int(ph), int(ph), int(pw), int(pw))
        pool_geometry((1, 1, self.pool_h, self.pool_w), self.pool_h, self.pool_w, stride, self._explicit_pad,
                      self.name)  # checks stride and pad now, not at the first forward

    def get_config(self):
        return {"name": self.name, "pool_h": self.pool_h, "pool_w": self.pool_w, "stride": self.stride,
                "pad": self.pad}


class AveragePooling2D(SpatialLayer):
    """Average pooling, as Keras's ``AveragePooling2D`` (``padding="valid"``).

    Layout NCHW by default: ``x: (N, C, H, W)`` gives ``(N, C, OH, OW)``, each the mean of a ``ph x
    pw`` window (``data_format="channels_last"``: ``(N, H, W, C)`` gives ``(N, OH, OW, C)``);
    ``strides`` defaults to ``pool_size``. Equals ``torch.nn.functional.avg_pool2d``.
    Written with ``im2col``/``col2im`` on the ``N*C`` planes (no kernel of its own).
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None, **kwargs):
        super().__init__(name=name or _auto_name(type(self).__name__), **kwargs)
        self.pool_size = _pair(self.name, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(self.name, "strides", strides)
        self.padding = _check_padding(self.name, padding, ("valid",))
        self.x_shape = None

    def _output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expected inputs of shape (N, C, H, W) (layout NCHW), got "
                             f"{shape_str(input_shape)}")
        ph, pw = self.pool_size
        oh, ow = conv_geometry((1, 1, int(input_shape[2]), int(input_shape[3])), ph, pw, self.strides, 0,
                               self.name)[:2]
        return (input_shape[0], input_shape[1], oh, ow)

    def _forward(self, x, train_flg=True, training=None):
        """``(N, C, OH, OW)``: the mean of each window of ``x: (N, C, H, W)`` (layout NCHW)."""
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if getattr(x, "dtype", None) is not None and x.dtype.kind == "f" else None)
        check_nchw(self, x)
        n, c, h, w = x.shape
        ph, pw = self.pool_size
        oh, ow = conv_geometry(x.shape, ph, pw, self.strides, 0, self.name)[:2]
        col = ops.im2col(x.reshape(n * c, 1, h, w), ph, pw, self.strides, 0)
        self.x_shape = tuple(x.shape)
        return col.mean(axis=1).reshape(n, c, oh, ow)

    def _backward(self, dout):
        """``dx: (N, C, H, W)``: each window's gradient shared equally by its cells; ``dout`` is not written."""
        shape = self._require_forward("x_shape")
        n, c, h, w = shape
        ph, pw = self.pool_size
        oh, ow = conv_geometry(shape, ph, pw, self.strides, 0, self.name)[:2]
        if tuple(dout.shape) != (n, c, oh, ow):
            raise ValueError(f"{self.name}: backward expected dout of shape {(n, c, oh, ow)}, got {tuple(dout.shape)}")
        ops = self._ops_for(dout)
        dout = self._input(ops, dout, dout.dtype if dout.dtype.kind == "f" else None)
        share = dout.reshape(-1, 1) * dout.dtype.type(1.0 / (ph * pw))
        dcol = ops.xp.ascontiguousarray(ops.xp.broadcast_to(share, (share.shape[0], ph * pw)))
        return ops.col2im(dcol, (n * c, 1, h, w), ph, pw, self.strides, 0).reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return cfg

