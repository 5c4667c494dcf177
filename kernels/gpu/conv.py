"""CuPy launchers of ``conv.cu``: im2col/col2im and the transposed im2col_t/col2im_t, max pooling
(forward with argmax, backward) over NCHW arrays, and bias + activation between NCHW and the
``(C, N, H, W)`` layout of the conv GEMMs.

Same names, arguments and results as the ``Ops`` reference (``fastnn/backend/ops.py``); the
geometry (stride, padding, output size) is checked and normalised by the same
``conv_geometry``/``pool_geometry`` the reference uses. Every launcher checks dtypes
(float32/float64; ``argmax`` int64) and ``out=`` buffers before launching, copies non-contiguous
inputs, and allocates nothing of the data's size when given its output buffers. ``col2im`` and
``col2im_t`` gather per input element (no atomics, one summation order); ``maxpool_backward``
scatters with ``atomicAdd``.
"""
import numpy

from fastnn.kernels.geometry import conv_geometry, pool_geometry
from fastnn.kernels import ACTIVATION_NAMES
from fastnn.kernels.gpu import _loader as L
from fastnn.kernels.gpu.activations import need_z

FAMILY = "conv"
KERNELS = ("fastnn_im2col", "fastnn_col2im", "fastnn_im2col_t", "fastnn_col2im_t", "fastnn_maxpool_forward",
           "fastnn_maxpool_backward", "fastnn_conv_bias_act", "fastnn_conv_act_backward", "fastnn_conv_bias_grad",
           "fastnn_conv_bias_act_z", "fastnn_conv_act_backward_z")
_I64 = numpy.dtype(numpy.int64)


def _fn(name, dtype):
    return L.function(FAMILY, KERNELS, name, dtype)


def _i64(*values):
    return tuple(numpy.int64(v) for v in values)


def _x_shape(primitive, x_shape):
    if len(x_shape) != 4:
        raise ValueError(f"{primitive}: expected x_shape (N, C, H, W) (layout NCHW), got {tuple(x_shape)}")
    return tuple(int(s) for s in x_shape)


def _im2col(primitive, x, fh, fw, stride, pad, out, transposed):
    """``im2col`` (rows ``(n, oy, ox)``) or, when ``transposed``, ``im2col_t`` (rows ``(c, ky, kx)``)."""
    dtype = L.check_dtype(primitive, x)
    oh, ow, sh, sw, pt, _, pl, _ = conv_geometry(x.shape, fh, fw, stride, pad, primitive)
    n, c, h, w = (int(s) for s in x.shape)
    fh, fw = int(fh), int(fw)
    x = L.contiguous(x)
    shape = (n * oh * ow, c * fh * fw)
    shape = shape[::-1] if transposed else shape
    col = L.output(primitive, "out", out, shape, dtype)
    total = shape[0] * shape[1]
    if total:
        _fn(f"fastnn_{primitive}", dtype)((L.grid_1d(total),), (L.BLOCK,),
                                          (x, col, *_i64(n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow),
                                           L.narrow(total, x.size)))
    return col


def _col2im(primitive, col, x_shape, fh, fw, stride, pad, out, transposed):
    """The adjoint of ``_im2col`` with the same ``transposed``: ``out: x_shape``."""
    name = "colT" if transposed else "col"
    dtype = L.check_dtype(primitive, col)
    x_shape = _x_shape(primitive, x_shape)
    oh, ow, sh, sw, pt, _, pl, _ = conv_geometry(x_shape, fh, fw, stride, pad, primitive)
    n, c, h, w = x_shape
    fh, fw = int(fh), int(fw)
    expected = (c * fh * fw, n * oh * ow) if transposed else (n * oh * ow, c * fh * fw)
    if tuple(col.shape) != expected:
        raise ValueError(f"{primitive}: expected {name} of shape {expected} for x of shape "
                         f"{x_shape}, got {tuple(col.shape)}")
    col = L.contiguous(col)
    dx = L.output(primitive, "out", out, x_shape, dtype)
    total = n * c * h * w
    if total:
        _fn(f"fastnn_{primitive}", dtype)((L.grid_1d(total),), (L.BLOCK,),
                                          (col, dx, *_i64(n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow),
                                           L.narrow(total, col.size)))
    return dx


@L.writes('out')
def im2col(x, fh, fw, stride=1, pad=0, *, out=None):
    """Patches of ``x: (N, C, H, W)`` as rows: ``out: (N*OH*OW, C*FH*FW)``, row ``(n, oy, ox)``,
    column ``(c, ky, kx)``; zeros where a window covers the padding."""
    return _im2col("im2col", x, fh, fw, stride, pad, out, transposed=False)


@L.writes('out')
def col2im(col, x_shape, fh, fw, stride=1, pad=0, *, out=None):
    """The adjoint of ``im2col``: ``out: x_shape`` sums the ``col`` entries copied from each element."""
    return _col2im("col2im", col, x_shape, fh, fw, stride, pad, out, transposed=False)


@L.writes('out')
def im2col_t(x, fh, fw, stride=1, pad=0, *, out=None):
    """``im2col`` transposed: ``out: (C*FH*FW, N*OH*OW)``, row ``(c, ky, kx)``, column ``(n, oy, ox)``;
    zeros where a window covers the padding."""
    return _im2col("im2col_t", x, fh, fw, stride, pad, out, transposed=True)


@L.writes('out')
def col2im_t(colT, x_shape, fh, fw, stride=1, pad=0, *, out=None):
    """The adjoint of ``im2col_t``: ``out: x_shape`` sums the ``colT`` entries copied from each element."""
    return _col2im("col2im_t", colT, x_shape, fh, fw, stride, pad, out, transposed=True)


@L.writes('out', 'argmax')
def maxpool_forward(x, ph, pw, stride=1, pad=0, *, out=None, argmax=None):
    """Max pooling of ``x: (N, C, H, W)``; returns ``(out, argmax)``, both ``(N, C, OH, OW)``, argmax
    int64 holding ``iy * W + ix`` of each window's maximum in its input plane."""
    dtype = L.check_dtype("maxpool_forward", x)
    oh, ow, sh, sw, pt, _, pl, _ = pool_geometry(x.shape, ph, pw, stride, pad, "maxpool_forward")
    n, c, h, w = (int(s) for s in x.shape)
    x = L.contiguous(x)
    shape = (n, c, oh, ow)
    y = L.check_out("maxpool_forward", "out", out, shape, dtype)
    idx = L.check_out("maxpool_forward", "argmax", argmax, shape, _I64)
    if y is None:
        y = L.empty(shape, dtype)
    if idx is None:
        idx = L.empty(shape, _I64)
    total = n * c * oh * ow
    if total:
        _fn("fastnn_maxpool_forward", dtype)(
            (L.grid_1d(total),), (L.BLOCK,),
            (x, y, idx, *_i64(n * c, h, w, ph, pw, sh, sw, pt, pl, oh, ow), L.dtype_scalar(dtype, -numpy.inf),
             L.narrow(total, x.size)))
    return y, idx


@L.writes('out')
def maxpool_backward(dout, argmax, x_shape, *, out=None):
    """``out: x_shape``, zero except ``dout`` added at each window's ``argmax``; ``dout`` and
    ``argmax`` are ``(N, C, OH, OW)``. Overlapping windows add with ``atomicAdd`` (their order, and
    so the last bits of such sums, may vary from run to run); indices outside the input plane
    (not from ``maxpool_forward``) are skipped, where the CPU backends raise ``IndexError``."""
    dtype = L.check_dtype("maxpool_backward", dout)
    x_shape = _x_shape("maxpool_backward", x_shape)
    n, c, h, w = x_shape
    if dout.ndim != 4 or tuple(argmax.shape) != tuple(dout.shape) or tuple(dout.shape[:2]) != (n, c):
        raise ValueError(f"maxpool_backward: dout {tuple(dout.shape)} and argmax {tuple(argmax.shape)} must both "
                         f"be (N, C, OH, OW) with (N, C) = {(n, c)}")
    if numpy.dtype(argmax.dtype) != _I64:
        raise TypeError(f"maxpool_backward: argmax must be int64 (as maxpool_forward returns it), got {argmax.dtype}")
    dout, argmax = L.contiguous(dout), L.contiguous(argmax)
    dx = L.output("maxpool_backward", "out", out, x_shape, dtype)
    dx.fill(0)
    total = int(dout.size)
    if total and h * w:
        _fn("fastnn_maxpool_backward", dtype)(
            (L.grid_1d(total),), (L.BLOCK,),
            (dout, argmax, dx, *_i64(n * c, h * w, int(dout.shape[2]) * int(dout.shape[3]))))
    return dx


def _act_code(primitive, act):
    if act not in ACTIVATION_NAMES:
        raise ValueError(f"{primitive}: unknown activation code {act!r}; "
                         f"expected one of {sorted(ACTIVATION_NAMES)} (fastnn.kernels)")
    return numpy.int32(act)


@L.writes('out', 'z_out')
def conv_bias_act(z, b, act, alpha=0.0, *, out=None, z_out=None):
    """``out = act(z.transpose(1, 0, 2, 3) + b)``: ``z: (C, N, H, W)`` to NCHW ``out: (N, C, H, W)``,
    ``b: (C,)`` per channel (``None``: no bias). ``z_out: (C, N, H, W)``, when given, also receives
    ``z + b`` in ``z``'s layout; it may be ``z`` itself."""
    dtype = L.check_dtype("conv_bias_act", z, b, z_out)
    code = _act_code("conv_bias_act", act)
    if z.ndim != 4:
        raise ValueError(f"conv_bias_act: expected z of shape (C, N, H, W), got {tuple(z.shape)}")
    c, n, h, w = (int(s) for s in z.shape)
    if b is not None and tuple(b.shape) != (c,):
        raise ValueError(f"conv_bias_act: expected b of shape ({c},) for z of shape {tuple(z.shape)}, got "
                         f"{tuple(b.shape)}")
    zbuf = L.check_out("conv_bias_act", "z_out", z_out, z.shape, dtype)
    z, b = L.contiguous(z), L.contiguous(b)
    y = L.output("conv_bias_act", "out", out, (n, c, h, w), dtype)
    total = n * c * h * w
    if total:
        args = (*_i64(n, c, h * w), numpy.int32(b is not None), code, L.dtype_scalar(dtype, alpha), L.narrow(total))
        if zbuf is None:
            _fn("fastnn_conv_bias_act", dtype)((L.grid_1d(total),), (L.BLOCK,), (z, z if b is None else b, y, *args))
        else:
            _fn("fastnn_conv_bias_act_z", dtype)(
                (L.grid_1d(total),), (L.BLOCK,), (z, z if b is None else b, y, zbuf, *args))
    return y


@L.writes('out', 'db')
def conv_act_backward(dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
    """``out = (dout * act'(y)).transpose(1, 0, 2, 3)``: NCHW ``dout, y`` to ``(C, N, H, W)``;
    ``db = out.sum((1, 2, 3))`` when given. The ``NEEDS_Z`` codes read the pre-activation ``z: (C, N,
    H, W)`` (``conv_bias_act``'s ``z_out``) instead of ``y``, and require it."""
    z = need_z("conv_act_backward", act, z)
    dtype = L.check_dtype("conv_act_backward", dout, y, z)
    code = _act_code("conv_act_backward", act)
    if y.ndim != 4 or tuple(dout.shape) != tuple(y.shape):
        raise ValueError(f"conv_act_backward: dout {tuple(dout.shape)} and y {tuple(y.shape)} must both be "
                         f"(N, C, H, W)")
    n, c, h, w = (int(s) for s in y.shape)
    if z is not None and tuple(z.shape) != (c, n, h, w):
        raise ValueError(f"conv_act_backward: expected z of shape {(c, n, h, w)} (C, N, H, W) for y of shape "
                         f"{tuple(y.shape)}, got {tuple(z.shape)}")
    dout, g = L.contiguous(dout), L.contiguous(y if z is None else z)  # what act' reads
    dz = L.output("conv_act_backward", "out", out, (c, n, h, w), dtype)
    dbuf = L.check_out("conv_act_backward", "db", db, (c,), dtype)
    total = n * c * h * w
    if total:
        if z is None:
            _fn("fastnn_conv_act_backward", dtype)(
                (L.grid_1d(total),), (L.BLOCK,),
                (dout, g, dz, *_i64(n, c, h * w), code, L.dtype_scalar(dtype, alpha), L.narrow(total)))
        else:
            _fn("fastnn_conv_act_backward_z", dtype)(
                (L.grid_1d(total),), (L.BLOCK,), (dout, g, dz, *_i64(n, c, h * w), code, L.narrow(total)))
    if dbuf is not None:
        if total:
            _fn("fastnn_conv_bias_grad", dtype)((L.grid_1d(c * L.BLOCK),), (L.BLOCK,), (dz, dbuf, *_i64(c, n * h * w)))
        else:
            dbuf.fill(0)
    return dz
