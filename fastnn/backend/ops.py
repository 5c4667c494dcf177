"""``Ops``: the NumPy reference for every primitive, and the contract every backend meets.

Every method is written against ``self.xp`` only, so the same body runs on NumPy arrays (the
``numpy`` backend) and on CuPy arrays (the generic path of the ``cupy`` backend). ``NumbaOps`` and
``CupyOps`` override the hot primitives with fused kernels of the same name and signature; the
tests compare each override with the body here on random data.

Conventions
-----------
- ``x: (N, D)`` is a batch of rows; ``b: (D,)`` a bias broadcast over rows.
- ``out=`` (and other keyword buffers) name arrays the primitive writes; given them, a fused
  override allocates nothing. The reference may allocate temporaries: it is written to be read.
- Scalars are cast to the arrays' dtype, so float32 stays float32 end to end.
- Optimizer ``*_step`` primitives update their arrays in place over a flat 1-D buffer and flush
  state values below the smallest normal number to zero (subnormals are slow on x86 CPUs).
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import numpy

from fastnn import config
from fastnn.kernels import (
    ELU, HASH_GOLDEN, LEAKY_RELU, LINEAR, MIX_M1, MIX_M2, RELU, SIGMOID, SOFTPLUS, TANH,
    dropout_base,
)

Array = "numpy.ndarray | cupy.ndarray"


def _ints(primitive, name, value, n):
    """``value`` (an int or a sequence of ``n`` ints) as a tuple of ``n`` Python ints."""
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    try:
        vals = tuple(int(v) for v in value)
    except TypeError:
        vals = ()
    if len(vals) != n or any(isinstance(v, bool) for v in value):
        raise ValueError(f"{primitive}: {name} must be an int or {n} ints, got {value!r}")
    return vals


def conv_geometry(x_shape, fh, fw, stride=1, pad=0, primitive="im2col"):
    """Output size and padding of a 2-D window of ``fh x fw`` sliding over ``x: (N, C, H, W)``.

    ``stride`` is an int or ``(sh, sw)``; ``pad`` an int, ``(ph, pw)`` or ``(top, bottom, left,
    right)`` (zeros added around each plane; asymmetric padding is what Keras's ``"same"`` needs
    for even windows or strides > 1). Returns ``(oh, ow, sh, sw, pt, pb, pl, pr)`` with
    ``oh = (H + pt + pb - fh) // sh + 1`` (likewise ``ow``), as ``torch.nn.functional.conv2d``.
    """
    if len(x_shape) != 4:
        raise ValueError(f"{primitive}: expected x of shape (N, C, H, W) (layout NCHW), got {tuple(x_shape)}")
    fh, fw = _ints(primitive, "the window size", (fh, fw), 2)
    sh, sw = _ints(primitive, "stride", stride, 2)
    if not (hasattr(pad, "__len__") and len(pad) == 4):
        ph, pw = _ints(primitive, "pad", pad, 2)
        pt, pb, pl, pr = ph, ph, pw, pw
    else:
        pt, pb, pl, pr = _ints(primitive, "pad", pad, 4)
    if min(fh, fw, sh, sw) < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{primitive}: window {fh}x{fw} and stride ({sh}, {sw}) must be >= 1 and pad "
                         f"({pt}, {pb}, {pl}, {pr}) >= 0")
    h, w = int(x_shape[2]) + pt + pb, int(x_shape[3]) + pl + pr
    if h < fh or w < fw:
        raise ValueError(f"{primitive}: a {fh}x{fw} window does not fit in the padded {h}x{w} plane of x "
                         f"with shape {tuple(x_shape)}")
    return (h - fh) // sh + 1, (w - fw) // sw + 1, sh, sw, pt, pb, pl, pr


def pool_geometry(x_shape, ph, pw, stride=1, pad=0, primitive="maxpool_forward"):
    """``conv_geometry`` for pooling, which also needs each pad at most half the window (as
    PyTorch), so that every window holds at least one element of ``x``."""
    g = conv_geometry(x_shape, ph, pw, stride, pad, primitive)
    pt, pb, pl, pr = g[4:]
    if 2 * max(pt, pb) > ph or 2 * max(pl, pr) > pw:
        raise ValueError(f"{primitive}: pad ({pt}, {pb}, {pl}, {pr}) must be at most half the "
                         f"{ph}x{pw} window")
    return g



class Ops:
    """The NumPy reference backend. ``name``, ``xp`` (the array module) and ``device`` describe it."""

    name = "numpy"
    xp = numpy
    device = "cpu"
    # What the model and layers ask of a backend instead of testing its name:
    device_arrays = False    # arrays live on an accelerator: host data and index arrays move to it
    captures_graphs = False  # fit(cuda_graph=True) can capture a training step as a CUDA graph
    # True on a backend with its own kernels (NumbaOps, CupyOps): with strict kernels on
    # (FASTNN_STRICT_KERNELS=1, as in the test suite) a hot primitive's body here then raises
    # KernelFallbackError instead of standing in for a kernel that was not reached.
    reference_is_fallback = False

    # ------------------------------------------------------------------ arrays and devices
    def asarray(self, x, dtype=None):
        """``x`` as an array of this backend (a host array becomes a device array on GPUs)."""
        return self.xp.asarray(x, dtype=dtype)

    def asnumpy(self, x):
        """A host ``numpy.ndarray`` holding ``x``'s values."""
        return numpy.asarray(x)

    def owns(self, x) -> bool:
        """True when ``x`` is an array that lives where this backend computes."""
        return isinstance(x, numpy.ndarray)

    def alloc(self, shape, dtype):
        """A zero-filled array of this backend."""
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued work (a no-op on CPUs)."""

    def is_out_of_memory(self, exc) -> bool:
        """True when ``exc`` means this backend's memory is exhausted."""
        return isinstance(exc, MemoryError)

    def free_memory(self):
        """Return cached memory to the system (CuPy's pools); nothing to do for NumPy."""

    def memory_usage(self):
        """``(bytes in use, bytes held)`` by this backend's allocator, or ``None`` when it has no pool."""
        return None

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} device={self.device!r}>"

    # ------------------------------------------------------------------ GEMM
    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        """``out = op(a) @ op(b)``, where ``op`` transposes when asked. Returns ``out``."""
        return self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    # ------------------------------------------------------------------ activations
    def _act(self, z, act, alpha):
        xp = self.xp
        if act == LINEAR:
            return z.copy()
        if act == RELU:
            return xp.maximum(z, 0)
        if act == SIGMOID:
            # 0.5 * tanh(0.5 z) + 0.5 never overflows, unlike 1 / (1 + exp(-z))
            half = z.dtype.type(0.5)
            return half * xp.tanh(half * z) + half
        if act == TANH:
            return xp.tanh(z)
        if act == LEAKY_RELU:
            return xp.where(z > 0, z, z.dtype.type(alpha) * z)
        if act == ELU:
            return xp.where(z > 0, z, z.dtype.type(alpha) * xp.expm1(xp.minimum(z, 0)))
        if act == SOFTPLUS:
            # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), finite for any z
            return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
        raise ValueError(f"unknown activation code {act!r}")

    def bias_act(self, x, b, act, alpha=0.0, *, out=None):
        """``out = act(x + b)``, ``b: (D,)`` broadcast over the rows of ``x: (N, D)`` (``b=None``: no bias).

        ``alpha`` is LeakyReLU's slope or ELU's scale. ``x`` is not written.
        """
        z = x if b is None else x + b
        y = self._act(z, act, alpha)
        if out is None:
            return y
        out[...] = y
        return out

    def _act_grad(self, y, act, alpha):
        """The activation's derivative written in terms of its output ``y`` (so layers keep only ``y``)."""
        xp = self.xp
        one = y.dtype.type(1)
        if act == LINEAR:
            return xp.ones_like(y)
        if act == RELU:
            return (y > 0).astype(y.dtype)
        if act == SIGMOID:
            return y * (one - y)
        if act == TANH:
            return one - y * y
        if act == LEAKY_RELU:
            # y > 0 exactly where z > 0 when alpha > 0; with alpha == 0 this is ReLU's rule
            return xp.where(y > 0, one, y.dtype.type(alpha))
        if act == ELU:
            # z <= 0: y = alpha (e^z - 1), so dy/dz = alpha e^z = y + alpha
            return xp.where(y > 0, one, y + y.dtype.type(alpha))
        if act == SOFTPLUS:
            # dy/dz = sigmoid(z) = 1 - e^-y
            return -xp.expm1(-y)
        raise ValueError(f"unknown activation code {act!r}")

    def act_backward(self, dout, y, act, alpha=0.0, *, out=None):
        """``out = dout * act'(z)``, with ``act'`` computed from the forward output ``y``. ``dout`` is not written."""
        dz = dout * self._act_grad(y, act, alpha)
        if out is None:
            return dz
        out[...] = dz
        return out

    def bias_grad(self, dz, *, out=None):
        """``out = dz.sum(axis=0)``: the bias gradient of ``dz: (N, D)``."""
        return self.xp.sum(dz, axis=0, out=out)

    def act_backward_bias_grad(self, dout, y, act, alpha=0.0, *, out=None, db=None):
        """``act_backward`` then ``bias_grad`` in one pass: returns ``dz`` and writes ``db = dz.sum(0)``."""
        dz = self.act_backward(dout, y, act, alpha, out=out)
        self.bias_grad(dz, out=db)
        return dz

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
        """The inverted-dropout scale mask of ``shape = (N, D)``: ``1 / (1 - rate)`` where kept, else 0.

        Element ``(i, j)`` is kept when ``u >= rate``, ``u`` being the top 24 bits of output
        ``(row0 + i) * D + j`` of the splitmix64 stream started at ``dropout_base(seed, step)``
        (see ``fastnn.kernels``): a pure function of (seed, step, global row, unit), the same on
        every backend and unchanged when a batch is split across workers.
        """
        return self._dropout_mask_at(shape, rate, dropout_base(seed, step), row0, dtype, out)

    def _dropout_mask_at(self, shape, rate, base, row0, dtype, out):
        """``dropout_mask`` for the stream start ``base = dropout_base(seed, step)``."""
        xp = self.xp
        n, d = shape
        base = xp.uint64(base)
        rows = xp.arange(row0, row0 + n, dtype=xp.uint64)[:, None]
        cols = xp.arange(d, dtype=xp.uint64)[None, :]
        z = base + (rows * xp.uint64(d) + cols) * xp.uint64(HASH_GOLDEN)
        z = (z ^ (z >> xp.uint64(30))) * xp.uint64(MIX_M1)
        z = (z ^ (z >> xp.uint64(27))) * xp.uint64(MIX_M2)
        z = z ^ (z >> xp.uint64(31))
        u = (z >> xp.uint64(40)).astype(numpy.float64) * (1.0 / (1 << 24))
        dtype = numpy.dtype(dtype)
        scale = dtype.type(1.0 / (1.0 - rate))
        mask = xp.where(u >= rate, scale, dtype.type(0)).astype(dtype)
        if out is None:
            return mask
        out[...] = mask
        return out

    def mul(self, x, y, *, out=None):
        """``out = x * y`` elementwise (dropout forward and backward with a scale mask)."""
        return self.xp.multiply(x, y, out=out)

    # ------------------------------------------------------------------ softmax and losses
    def softmax(self, x, *, out=None):
        """Row-wise softmax of ``x: (N, C)``, max-subtracted so large inputs stay finite."""
        xp = self.xp
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        y = e / e.sum(axis=-1, keepdims=True)
        if out is None:
            return y
        out[...] = y
        return out

    def _targets(self, t, shape, dtype):
        """Dense targets of ``shape`` from one-hot ``t: (N, C)`` or class indices ``t: (N,)``."""
        if t.ndim == 2:
            return t.astype(dtype, copy=False)
        dense = self.xp.zeros(shape, dtype=dtype)
        dense[self.xp.arange(shape[0]), t.astype(self.xp.int64)] = 1
        return dense

    def softmax_xent(self, x, t, *, y=None, dx=None):
        """Mean softmax cross-entropy of logits ``x: (N, C)`` against one-hot ``t: (N, C)`` or indices ``t: (N,)``.

        Returns the loss as a 0-d array of ``x``'s dtype (kept on the device), computed stably as
        ``mean_i (logsumexp(x_i) - sum_j t_ij x_ij)``. Writes the probabilities into ``y`` and,
        when given, the gradient ``(softmax(x) - t) / N`` into ``dx``.
        """
        xp = self.xp
        n = x.shape[0]
        m = x.max(axis=1, keepdims=True)
        lse = m[:, 0] + xp.log(xp.exp(x - m).sum(axis=1))
        dense = self._targets(t, x.shape, x.dtype)
        loss = (lse * dense.sum(axis=1) - (dense * x).sum(axis=1)).sum() / x.dtype.type(n)
        probs = self.softmax(x, out=y)
        if dx is not None:
            dx[...] = (probs - dense) / x.dtype.type(n)
        return xp.asarray(loss, dtype=x.dtype)

    def softmax_xent_backward(self, y, t, dout=1.0, *, out=None):
        """``out = dout * (y - t) / N`` from the probabilities ``y: (N, C)`` and one-hot or index ``t``."""
        dense = self._targets(t, y.shape, y.dtype)
        dx = (y - dense) * (y.dtype.type(dout) / y.dtype.type(y.shape[0]))
        if out is None:
            return dx
        out[...] = dx
        return out

    def sigmoid_bce(self, x, t, *, y=None, dx=None):
        """Mean binary cross-entropy of logits ``x`` against targets ``t`` in [0, 1] (same shape).

        ``loss = mean(max(x, 0) - x t + log1p(e^-|x|))``, stable for any ``x``. Writes the
        probabilities into ``y`` and, when given, ``(sigmoid(x) - t) / x.size`` into ``dx``.
        """
        xp = self.xp
        t = t.astype(x.dtype, copy=False)
        loss = (xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))).sum() / x.dtype.type(x.size)
        probs = self.bias_act(x, None, SIGMOID, out=y)
        if dx is not None:
            dx[...] = (probs - t) / x.dtype.type(x.size)
        return xp.asarray(loss, dtype=x.dtype)

    def mse(self, y, t, scale, *, dx=None):
        """``loss = scale * sum((y - t)^2)``; writes ``dx = 2 * scale * (y - t)`` when given.

        Keras's ``"mse"`` is ``scale = 1 / y.size``; the book's per-sample ``0.5 * sum`` is ``scale = 0.5 / N``.
        """
        xp = self.xp
        diff = y - t.astype(y.dtype, copy=False)
        s = y.dtype.type(scale)
        if dx is not None:
            dx[...] = (2 * s) * diff
        return xp.asarray((diff * diff).sum() * s, dtype=y.dtype)

    # ------------------------------------------------------------------ batch normalization
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, train,
                          *, out=None):
        """Batch normalization of ``x: (N, D)`` per column.

        Training: normalise with the batch mean and (biased) variance, and update the running
        statistics in place: ``running = momentum * running + (1 - momentum) * batch``.
        Inference: normalise with the running statistics. Returns ``(y, xhat, inv_std)``.
        """
        xp = self.xp
        dt = x.dtype.type
        if train:
            mu = x.mean(axis=0)
            xc = x - mu
            var = (xc * xc).mean(axis=0)
            running_mean[...] = dt(momentum) * running_mean + dt(1 - momentum) * mu
            running_var[...] = dt(momentum) * running_var + dt(1 - momentum) * var
        else:
            xc = x - running_mean
            var = running_var
        inv_std = dt(1) / xp.sqrt(var + dt(eps))
        xhat = xc * inv_std
        y = gamma * xhat + beta
        if out is not None:
            out[...] = y
            y = out
        return y, xhat, inv_std

    def batchnorm_backward(self, dout, xhat, inv_std, gamma, *, dx=None, dgamma=None, dbeta=None):
        """Gradients of training-mode batch normalization: returns ``dx`` and writes ``dgamma``, ``dbeta``."""
        n = dout.shape[0]
        dbeta_ = dout.sum(axis=0)
        dgamma_ = (dout * xhat).sum(axis=0)
        dxhat = dout * gamma
        dx_ = inv_std / dout.dtype.type(n) * (
            dout.dtype.type(n) * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
        for buf, val in ((dgamma, dgamma_), (dbeta, dbeta_)):
            if buf is not None:
                buf[...] = val
        if dx is None:
            return dx_
        dx[...] = dx_
        return dx

    # ------------------------------------------------------------------ convolution and pooling (NCHW)
    def im2col(self, x, fh, fw, stride=1, pad=0, *, out=None):
        """Patches of ``x: (N, C, H, W)`` as rows: ``out: (N*OH*OW, C*FH*FW)``, the book's ``im2col``.

        Row ``(n, oy, ox)``, column ``(c, ky, kx)`` holds ``x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``,
        zero outside ``x``. ``stride``, ``pad`` and the output size as ``conv_geometry``.
        """
        xp = self.xp
        n, c = x.shape[:2]
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x.shape, fh, fw, stride, pad, "im2col")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
        col = xp.empty((n, c, fh, fw, oh, ow), dtype=x.dtype)
        for ky in range(fh):
            for kx in range(fw):
                col[:, :, ky, kx] = img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
        col = col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * fh * fw)
        if out is None:
            return col
        out[...] = col
        return out

    def col2im(self, col, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        """The adjoint of ``im2col``: ``out: x_shape`` where each element sums the ``col: (N*OH*OW,
        C*FH*FW)`` entries ``im2col`` copied it to (entries that fell on the padding are dropped).
        ``col`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x_shape, fh, fw, stride, pad, "col2im")
        if tuple(col.shape) != (n * oh * ow, c * fh * fw):
            raise ValueError(f"col2im: expected col of shape {(n * oh * ow, c * fh * fw)} for x of shape "
                             f"{tuple(x_shape)}, got {tuple(col.shape)}")
        col6 = col.reshape(n, oh, ow, c, fh, fw).transpose(0, 3, 4, 5, 1, 2)
        img = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=col.dtype)
        for ky in range(fh):
            for kx in range(fw):
                img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += col6[:, :, ky, kx]
        dx = img[:, :, pt:pt + h, pl:pl + w]
        if out is None:
            return xp.ascontiguousarray(dx)
        out[...] = dx
        return out

    def im2col_t(self, x, fh, fw, stride=1, pad=0, *, out=None):
        """``im2col`` transposed: ``out: (C*FH*FW, N*OH*OW)`` equals ``im2col(x, ...).T``.

        Row ``(c, ky, kx)``, column ``(n, oy, ox)`` holds ``x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``,
        zero outside ``x``; ``W.reshape(FN, -1) @ out`` is the channel-major ``(FN, N*OH*OW)``.
        ``stride``, ``pad`` and the output size as ``conv_geometry``.
        """
        xp = self.xp
        n, c = x.shape[:2]
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x.shape, fh, fw, stride, pad, "im2col_t")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
        col = xp.empty((c, fh, fw, n, oh, ow), dtype=x.dtype)
        for ky in range(fh):
            for kx in range(fw):
                col[:, ky, kx] = img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw].transpose(1, 0, 2, 3)
        col = col.reshape(c * fh * fw, n * oh * ow)
        if out is None:
            return col
        out[...] = col
        return out

    def col2im_t(self, colT, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        """The adjoint of ``im2col_t`` (``col2im`` of ``colT.T``): ``out: x_shape`` where each element
        sums the ``colT: (C*FH*FW, N*OH*OW)`` entries ``im2col_t`` copied it to (entries that fell on
        the padding are dropped). ``colT`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x_shape, fh, fw, stride, pad, "col2im_t")
        if tuple(colT.shape) != (c * fh * fw, n * oh * ow):
            raise ValueError(f"col2im_t: expected colT of shape {(c * fh * fw, n * oh * ow)} for x of shape "
                             f"{tuple(x_shape)}, got {tuple(colT.shape)}")
        col6 = colT.reshape(c, fh, fw, n, oh, ow)
        img = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=colT.dtype)
        for ky in range(fh):
            for kx in range(fw):
                img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += col6[:, ky, kx].transpose(1, 0, 2, 3)
        dx = img[:, :, pt:pt + h, pl:pl + w]
        if out is None:
            return xp.ascontiguousarray(dx)
        out[...] = dx
        return out

    def maxpool_forward(self, x, ph, pw, stride=1, pad=0, *, out=None, argmax=None):
        """Max pooling of ``x: (N, C, H, W)`` over ``ph x pw`` windows, as ``torch.nn.functional.max_pool2d``.

        Padding never wins (it counts as -inf; each pad is at most half the window). Returns
        ``(out, argmax)``: ``out: (N, C, OH, OW)`` and ``argmax`` (int64, same shape), the index
        ``iy * W + ix`` of each maximum in its input plane (the first one on ties; a NaN wins; a window
        of only -inf points at its first cell inside the plane).
        """
        xp = self.xp
        n, c, h, w = x.shape
        oh, ow, sh, sw, pt, pb, pl, pr = pool_geometry(x.shape, ph, pw, stride, pad, "maxpool_forward")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=-numpy.inf)
        win = xp.stack([img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
                        for ky in range(ph) for kx in range(pw)])
        k = win.argmax(axis=0)
        y = xp.take_along_axis(win, k[None], axis=0)[0]
        iy = xp.arange(oh).reshape(oh, 1) * sh - pt + k // pw
        ix = xp.arange(ow).reshape(1, ow) * sw - pl + k % pw
        idx = (iy * w + ix).astype(xp.int64)
        # a window whose cells are all -inf: its first cell inside the plane (never a padding cell)
        first = (xp.maximum(xp.arange(oh) * sh - pt, 0).reshape(oh, 1) * w
                 + xp.maximum(xp.arange(ow) * sw - pl, 0).reshape(1, ow)).astype(xp.int64)
        idx = xp.where(y == -numpy.inf, first, idx)
        for buf, val in ((out, y), (argmax, idx)):
            if buf is not None:
                buf[...] = val
        return (y if out is None else out), (idx if argmax is None else argmax)

    def maxpool_backward(self, dout, argmax, x_shape, *, out=None):
        """Gradient of max pooling: ``out: x_shape``, zero except ``dout`` added at each window's
        ``argmax`` (``maxpool_forward``'s); overlapping windows (stride < window) add up. ``dout``
        and ``argmax`` are ``(N, C, OH, OW)``; ``dout`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        if tuple(dout.shape) != tuple(argmax.shape) or dout.ndim != 4 or tuple(dout.shape[:2]) != (n, c):
            raise ValueError(f"maxpool_backward: dout {tuple(dout.shape)} and argmax {tuple(argmax.shape)} must "
                             f"both be (N, C, OH, OW) with (N, C) = {(n, c)}")
        dx = xp.zeros((n * c, h * w), dtype=dout.dtype)
        rows = xp.arange(n * c).reshape(-1, 1)
        idx = argmax.reshape(n * c, -1)
        xp.add.at(dx, (xp.broadcast_to(rows, idx.shape), idx), dout.reshape(n * c, -1))
        dx = dx.reshape(n, c, h, w)
        if out is None:
            return dx
        out[...] = dx
        return out

    def conv_bias_act(self, z, b, act, alpha=0.0, *, out=None):
        """``out = act(z.transpose(1, 0, 2, 3) + b)``: a convolution's GEMM result ``z: (C, N, H, W)``
        (channel-major) to NCHW ``out: (N, C, H, W)``, ``b: (C,)`` per channel (``None``: no bias).
        ``z`` is not written."""
        y = z.transpose(1, 0, 2, 3)
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        y = self.xp.ascontiguousarray(self._act(y, act, alpha))
        if out is None:
            return y
        out[...] = y
        return out

    def conv_act_backward(self, dout, y, act, alpha=0.0, *, out=None, db=None):
        """``out = (dout * act'(y)).transpose(1, 0, 2, 3)``: NCHW ``dout, y: (N, C, H, W)`` to the
        ``(C, N, H, W)`` layout of the convolution's GEMMs; writes ``db = out.sum((1, 2, 3))`` when
        given. ``dout`` is not written."""
        dz = self.xp.ascontiguousarray((dout * self._act_grad(y, act, alpha)).transpose(1, 0, 2, 3))
        if db is not None:
            db[...] = dz.reshape(dz.shape[0], -1).sum(axis=1)
        if out is None:
            return dz
        out[...] = dz
        return out

    # ------------------------------------------------------------------ optimizers (flat buffers)
    def _flush(self, s):
        """Set state values below the smallest normal number to zero, in place."""
        s[self.xp.abs(s) < numpy.finfo(s.dtype).tiny] = 0

    def _grad(self, p, g, weight_decay, scale):
        dt = p.dtype.type
        g = g * dt(scale) if scale != 1.0 else g
        return g + dt(weight_decay) * p if weight_decay else g

    def sq_norm(self, x):
        """``sum(x^2)`` as a 0-d array of ``x``'s dtype (for global-norm clipping)."""
        return self.xp.asarray(self.xp.vdot(x, x), dtype=x.dtype)

    def sgd_step(self, p, g, lr, weight_decay=0.0, scale=1.0):
        """SGD: ``g' = scale*g + wd*p; p -= lr*g'``. Updates ``p`` in place."""
        g = self._grad(p, g, weight_decay, scale)
        p -= p.dtype.type(lr) * g

    def momentum_step(self, p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False):
        """Momentum, the book's form: ``v = m*v - lr*g'; p += v``.

        Nesterov (``nesterov=True``) follows ``torch.optim.SGD``: ``v = m*v + g'; p -= lr*(g' + m*v)``.
        ``g' = scale*g + wd*p``. Updates ``p`` and ``v`` in place.
        """
        dt = p.dtype.type
        g = self._grad(p, g, weight_decay, scale)
        if nesterov:
            v *= dt(momentum)
            v += g
            p -= dt(lr) * (g + dt(momentum) * v)
        else:
            v *= dt(momentum)
            v -= dt(lr) * g
            p += v
        self._flush(v)

    def _decay(self, p, lr, weight_decay):
        """Keras's decoupled weight decay, ``p -= lr*wd*p``, as ``p *= 1 - lr*wd`` (AdamW's form), in place."""
        if weight_decay:
            p *= p.dtype.type(1.0 - lr * weight_decay)

    def adagrad_step(self, p, g, h, lr, eps, weight_decay=0.0, scale=1.0):
        """AdaGrad (Duchi et al. 2011) as Keras 3's ``Adagrad`` (``eps`` inside the root; the caller
        starts ``h`` at ``initial_accumulator_value``)::

            p *= 1 - lr*wd;  g' = scale*g;  h += g'^2;  p -= lr*g' / sqrt(h + eps)

        Updates ``p`` and ``h`` in place."""
        dt = p.dtype.type
        g = self._grad(p, g, 0.0, scale)
        self._decay(p, lr, weight_decay)
        h += g * g
        p -= dt(lr) * g / self.xp.sqrt(h + dt(eps))
        self._flush(h)

    def rmsprop_step(self, p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0):
        """RMSprop (Tieleman & Hinton 2012) as Keras 3's ``RMSprop`` (``eps`` inside the root)::

            p *= 1 - lr*wd;  g' = scale*g;  h = rho*h + (1-rho)*g'^2;  p -= lr*g' / sqrt(h + eps)

        Updates ``p`` and ``h`` in place."""
        dt = p.dtype.type
        g = self._grad(p, g, 0.0, scale)
        self._decay(p, lr, weight_decay)
        h *= dt(rho)
        h += dt(1 - rho) * g * g
        p -= dt(lr) * g / self.xp.sqrt(h + dt(eps))
        self._flush(h)

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                  decoupled=False):
        """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, step number ``t >= 1``::

            g' = scale*g (+ wd*p unless decoupled);  decoupled (AdamW): p *= 1 - lr*wd
            m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2
            p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

        Updates ``p``, ``m`` and ``v`` in place.
        """
        dt = p.dtype.type
        if decoupled:
            g = self._grad(p, g, 0.0, scale)
            if weight_decay:
                p *= dt(1.0 - lr * weight_decay)
        else:
            g = self._grad(p, g, weight_decay, scale)
        m *= dt(beta1)
        m += dt(1 - beta1) * g
        v *= dt(beta2)
        v += dt(1 - beta2) * g * g
        step_size = dt(lr / (1.0 - beta1 ** t))
        inv_sqrt_bc2 = dt(1.0 / numpy.sqrt(1.0 - beta2 ** t))
        p -= step_size * m / (self.xp.sqrt(v) * inv_sqrt_bc2 + dt(eps))
        self._flush(m)
        self._flush(v)

    # ------------------------------------------------------------------ graph-capture variants
    # ``fit(cuda_graph=True)`` (fastnn.graphs) replays a captured step, and a captured kernel's
    # scalar arguments are frozen at capture. So the values that change every step travel in a
    # small device buffer instead: ``s = ops.step_scalars(rule, dtype, ...)`` on the host, copied to
    # the device before each replay, and the captured ``ops.step_dev(rule, p, g, slots, s)`` does
    # exactly what ``ops.<rule>_step(p, g, *slots, ...)`` does. Each backend packs ``s`` its own way (here: the
    # arguments themselves; the CUDA kernels: their derived, dtype-rounded scalars), so only the
    # pairing within one backend is defined. Dropout's per-step value is the stream start
    # ``dropout_base(seed, step)``, a 1-element uint64 device array.
    def dropout_mask_dev(self, shape, rate, base, row0=0, *, dtype=numpy.float32, out=None):
        """``dropout_mask`` with ``dropout_base(seed, step)`` read from ``base`` (1 element, uint64)."""
        if out is None:
            raise ValueError("dropout_mask_dev: out is required (a captured mask is a fixed buffer)")
        return self._dropout_mask_at(shape, rate, int(numpy.asarray(self.asnumpy(base)).reshape(-1)[0]), row0,
                                     dtype, out)

    # The optimizer primitives' arguments after their slots, by kind: f float, i int, b bool.
    STEP_ARGS = {"sgd": "fff", "momentum": "ffffb", "adagrad": "ffff", "rmsprop": "fffff", "adam": "ffffiffb"}

    def _step_rule(self, rule, args=None):
        kinds = self.STEP_ARGS.get(rule)
        if kinds is None:
            raise ValueError(f"unknown optimizer primitive {rule!r}; known: {', '.join(self.STEP_ARGS)}")
        if args is not None:
            if len(args) != len(kinds):
                raise ValueError(f"{rule}_step takes {len(kinds)} arguments after its slots, got {len(args)}")
            if rule == "adam" and args[4] < 1:
                raise ValueError(f"adam_scalars: the step number t counts from 1, got {args[4]}")
        return kinds

    def step_scalars(self, rule, dtype, *args):
        """The per-step values of ``<rule>_step``'s arguments after its slots (``args``, in that
        primitive's order), packed into a float64 host array for ``step_dev``."""
        self._step_rule(rule, args)
        return numpy.array([float(v) for v in args], dtype=numpy.float64)

    def step_dev(self, rule, p, g, slots, s):
        """``<rule>_step(p, g, *slots, ...)`` with its arguments read from ``s`` (``step_scalars``'s
        array, on the device)."""
        kinds = self._step_rule(rule)
        values = [float(v) for v in numpy.asarray(self.asnumpy(s), dtype=numpy.float64).reshape(-1)]
        if len(values) != len(kinds):
            raise ValueError(f"{rule} step_dev: expected {len(kinds)} scalars, got {len(values)}")
        typed = [int(v) if k == "i" else bool(v) if k == "b" else v for k, v in zip(kinds, values)]
        getattr(self, rule + "_step")(p, g, *slots, *typed)


# The fused primitives a fast backend must define itself (the structure tests check this list).
HOT_PRIMITIVES = (
    "bias_act", "act_backward", "bias_grad", "act_backward_bias_grad", "dropout_mask", "mul",
    "softmax", "softmax_xent", "softmax_xent_backward", "sigmoid_bce", "mse",
    "batchnorm_forward", "batchnorm_backward", "sq_norm",
    "sgd_step", "momentum_step", "adagrad_step", "rmsprop_step", "adam_step",
    "im2col", "col2im", "im2col_t", "col2im_t", "maxpool_forward", "maxpool_backward",
    "conv_bias_act", "conv_act_backward",
)


# ---------------------------------------------------------------------------- strict kernels
# With strict kernels on (FASTNN_STRICT_KERNELS=1, which tests/conftest.py sets) each hot primitive
# of ``Ops`` is wrapped so that it refuses to run for a backend whose ``reference_is_fallback`` is
# True: a NumbaOps method that falls back (``super().<name>(...)``) or a hot primitive CupyOps
# does not define raises ``KernelFallbackError`` naming the primitive, the backend and the
# arguments, so a kernel that is never reached fails its test instead of passing on the reference.
# Tests that exercise a fallback on purpose (other dtypes, mixed dtypes, broadcasting, empty
# arrays) say so with ``allow_fallback()`` (``fastnn.testing.allow_fallback``) or the
# ``allow_fallback`` pytest marker. Off (the default), ``Ops``'s methods are the plain functions
# above: nothing is wrapped, nothing is checked, nothing costs.

class KernelFallbackError(RuntimeError):
    """A fast backend ran the NumPy reference of a hot primitive while strict kernels are on."""


_REFERENCE = {name: vars(Ops)[name] for name in HOT_PRIMITIVES}
_strict = False
_allowed = 0  # depth of allow_fallback() blocks (process-wide: threads a test starts are covered)


def _is_array(v):
    return (not isinstance(v, (type, numpy.generic)) and hasattr(v, "dtype") and hasattr(v, "shape")
            and hasattr(v, "ndim"))


def call_arrays(fn, args, kwargs):
    """``[(name, array)]`` of a call ``fn(self, *args, **kwargs)``'s array arguments, by parameter name."""
    try:
        items = list(inspect.signature(fn).bind(None, *args, **kwargs).arguments.items())[1:]
    except TypeError:
        items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(k, v) for k, v in items if _is_array(v)]


def describe_arrays(ops, arrays):
    """``"x: float32 (3, 4), t: int64 (3,)"``; arrays that are not ``ops``'s own are named by type."""
    return ", ".join(
        f"{k}: {'' if ops.owns(v) else type(v).__module__ + '.' + type(v).__name__ + ' '}{v.dtype} "
        f"{tuple(v.shape)}{'' if getattr(getattr(v, 'flags', None), 'c_contiguous', True) else ' strided'}"
        for k, v in arrays) or "no arrays"


STRICT_HINT = ("A test that exercises this fallback on purpose wraps the call in fastnn.testing.allow_fallback() "
               "or is marked @pytest.mark.allow_fallback.")


def _fallback_message(ops, name, fn, args, kwargs):
    cls = type(ops).__name__
    head = (f"{cls}.{name} (backend {ops.name!r}) ran the NumPy reference Ops.{name} instead of its "
            f"kernel, and strict kernels are on (FASTNN_STRICT_KERNELS=1)")
    if getattr(type(ops), name) is getattr(Ops, name):
        return f"{head}: {cls} does not define {name}, so it inherits the reference. {STRICT_HINT}"
    arrays = call_arrays(fn, args, kwargs)
    floats = {numpy.dtype(v.dtype) for _, v in arrays if numpy.dtype(v.dtype).kind in "fc"}
    why = []
    foreign = [k for k, v in arrays if not ops.owns(v)]
    if foreign:
        why.append(f"{', '.join(foreign)} not {ops.name}'s arrays")
    other = sorted({str(v.dtype) for k, v in arrays if k not in ("t", "argmax") and numpy.dtype(v.dtype)
                    not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))})
    if other:
        why.append(f"dtype {', '.join(other)} (the kernels take float32 and float64)")
    if len(floats) > 1:
        why.append(f"mixed dtypes {', '.join(sorted(map(str, floats)))}")
    empty = [k for k, v in arrays if v.size == 0]
    if empty:
        why.append(f"{', '.join(empty)} empty")
    if why:
        why = "the kernel does not cover " + "; ".join(why)
    else:
        why = ("these look like arguments its kernel covers (one float dtype, non-empty): either their "
               "shapes are outside what the kernel handles, or the override reaches the reference on a "
               "path its kernel should take (an unconditional super() call, a check that is too strict)")
    return f"{head}. Arguments: {describe_arrays(ops, arrays)}; {why}. {STRICT_HINT}"


def _guarded(name, fn):
    @functools.wraps(fn)
    def reference(self, *args, **kwargs):
        if self.reference_is_fallback and not _allowed:
            raise KernelFallbackError(_fallback_message(self, name, fn, args, kwargs))
        return fn(self, *args, **kwargs)

    return reference


_strict_hooks = []


def on_strict_kernels(hook):
    """Call ``hook(on)`` now and at every switch (``fastnn.backend.cupy_ops`` checks its launches so)."""
    _strict_hooks.append(hook)
    hook(_strict)


def set_strict_kernels(on=True):
    """Switch strict kernels on or off in this process (``FASTNN_STRICT_KERNELS`` sets it at import);
    returns the previous setting."""
    global _strict
    previous, _strict = _strict, bool(on)
    for name, fn in _REFERENCE.items():
        setattr(Ops, name, _guarded(name, fn) if _strict else fn)
    for hook in _strict_hooks:
        hook(_strict)
    return previous


def strict_kernels_enabled():
    return _strict


def fallback_allowed():
    """True inside ``allow_fallback()``."""
    return _allowed > 0


@contextlib.contextmanager
def allow_fallback():
    """Within this block a fast backend may run the reference of a hot primitive even when
    strict kernels are on: for tests of the cases the kernels leave to the reference on purpose."""
    global _allowed
    _allowed += 1
    try:
        yield
    finally:
        _allowed -= 1


if config.STRICT_KERNELS:
    set_strict_kernels(True)
