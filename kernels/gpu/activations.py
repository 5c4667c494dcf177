"""CuPy launchers of ``activations.cu``: bias + activation, activation backward, bias gradient,
their fused backward pair, row-wise softmax and the elementwise product.

The codes in ``NEEDS_Z`` (gelu, gelu_tanh, swish) take their derivative from the pre-activation
``z`` (``z=``), which ``bias_act`` writes when given ``z_out=``: their ``*_z`` kernels. Every other
code runs the same kernels as before, and ignores ``z``.

Same names, arguments and results as the ``Ops`` reference (``fastnn/backend/ops.py``). Every
launcher checks dtypes (float32/float64, one dtype), sizes and ``out=`` buffers before launching
(CuPy checks nothing), copies non-contiguous inputs, and allocates nothing of the data's size
when given its output buffers.
"""
import numpy

from fastnn.kernels import ACTIVATION_NAMES, NEEDS_Z
from fastnn.kernels.gpu import _loader as L

FAMILY = "activations"
KERNELS = ("fastnn_bias_act", "fastnn_act_backward", "fastnn_bias_grad", "fastnn_act_backward_bias_grad",
           "fastnn_softmax", "fastnn_mul", "fastnn_bias_act_z", "fastnn_act_backward_z",
           "fastnn_act_backward_z_bias_grad", "fastnn_col_finish")


def _fn(name, dtype, dev=None):
    return L.function(FAMILY, KERNELS, name, dtype, dev)


def _k1d(name, dtype, n):
    """``(kernel, grid)`` of a grid-stride launch over ``n`` items."""
    fn, grid, _ = L.kernel_1d(FAMILY, KERNELS, name, dtype, n)
    return fn, grid


_CODES = {code: numpy.int32(code) for code in ACTIVATION_NAMES}  # the kernels' int32 argument, made once


def _act_code(primitive, act):
    code = _CODES.get(act)
    if code is None:
        raise ValueError(f"{primitive}: unknown activation code {act!r}; "
                         f"expected one of {sorted(ACTIVATION_NAMES)} (fastnn.kernels)")
    return code


def need_z(primitive, act, z):
    """``z`` for a ``NEEDS_Z`` code (a ``ValueError`` when it is missing), None for the others."""
    if act not in NEEDS_Z:
        return None
    if z is None:
        raise ValueError(f"{primitive}: the derivative of {ACTIVATION_NAMES[act]} is written from the "
                         f"pre-activation z, not from the output y: pass z= (what bias_act wrote into z_out=)")
    return z


def _rows_cols(primitive, name, a):
    if a.ndim != 2:
        raise ValueError(f"{primitive}: expected {name} of shape (N, D), got {tuple(a.shape)}")
    return a.shape


def _same_shape(primitive, names, *arrays):
    shape = tuple(arrays[0].shape)
    for name, a in zip(names[1:], arrays[1:]):
        if tuple(a.shape) != shape:
            raise ValueError(f"{primitive}: {name} must have the shape of {names[0]} {shape}, got {tuple(a.shape)}")


@L.writes('out', 'z_out')
def bias_act(x, b, act, alpha=0.0, *, out=None, z_out=None):
    """``out = act(x + b)``, ``b: (D,)`` broadcast over the rows of ``x: (..., D)``; ``b=None``: no bias.
    ``z_out`` (x's shape), when given, also receives ``x + b``; it may be ``x`` itself."""
    dtype = L.check_dtype("bias_act", x, b, z_out)
    code = _act_code("bias_act", act)
    if b is not None and (b.ndim != 1 or x.ndim == 0 or b.shape[0] != x.shape[-1]):
        raise ValueError(f"bias_act: expected b of shape ({x.shape[-1] if x.ndim else '?'},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(b.shape)}")
    zbuf = L.check_out("bias_act", "z_out", z_out, x.shape, dtype)
    x, b = L.contiguous(x), L.contiguous(b)
    y = L.output("bias_act", "out", out, x.shape, dtype)
    n = x.size
    if n:
        d = b.shape[0] if b is not None else 1
        args = (numpy.int64(n), numpy.int64(max(d, 1)), numpy.int32(b is not None), code, L.dtype_scalar(dtype, alpha),
                L.narrow(n))
        if zbuf is None:
            fn, grid = _k1d("fastnn_bias_act", dtype, n)
            fn(grid, (L.BLOCK,), (x, x if b is None else b, y, *args))
        else:
            fn, grid = _k1d("fastnn_bias_act_z", dtype, n)
            fn(grid, (L.BLOCK,), (x, x if b is None else b, y, zbuf, *args))
    return y


@L.writes('out')
def act_backward(dout, y, act, alpha=0.0, *, out=None, z=None):
    """``out = dout * act'(z)``, with ``act'`` computed from the forward output ``y``, or for the
    ``NEEDS_Z`` codes from the pre-activation ``z`` (required; ``y`` is not read); ``dout`` is not written."""
    z = need_z("act_backward", act, z)
    g = y if z is None else z  # what act' reads
    dtype = L.check_dtype("act_backward", dout, g)
    code = _act_code("act_backward", act)
    _same_shape("act_backward", ("dout", "y" if z is None else "z"), dout, g)
    dout, g = L.contiguous(dout), L.contiguous(g)
    dz = L.output("act_backward", "out", out, g.shape, dtype)
    n = g.size
    if n:
        if z is None:
            fn, grid = _k1d("fastnn_act_backward", dtype, n)
            fn(grid, (L.BLOCK,), (dout, g, dz, numpy.int64(n), code, L.dtype_scalar(dtype, alpha)))
        else:
            fn, grid = _k1d("fastnn_act_backward_z", dtype, n)
            fn(grid, (L.BLOCK,), (dout, g, dz, numpy.int64(n), code))
    return dz


def _column_reduce(kernel, dtype, n, d, db, args):
    """Launch a column-reduction ``kernel`` (arguments ``args``, then the tile size and the partial
    sums) on the 2-D grid of ``L.column_tiles``; with several row tiles, ``fastnn_col_finish`` then
    adds their partial sums into ``db`` in tile order."""
    dev = L._device_id()
    tiles, rows = L.column_tiles(n, d, dev)
    partial = L.column_partials(tiles * d, dev) if tiles > 1 else L.unused(numpy.float64, dev)
    grid = (L.grid_cols(d, dev), tiles) if tiles > 1 else (L.grid_cols(d, dev),)
    _fn(kernel, dtype, dev)(grid, L.COL_BLOCK, (*args, numpy.int64(rows), partial))
    if tiles > 1:
        _fn("fastnn_col_finish", dtype, dev)(
            (L.grid_1d(d, L.BLOCK, dev),), (L.BLOCK,), (partial, db, numpy.int64(tiles), numpy.int64(d)))


@L.writes('out')
def bias_grad(dz, *, out=None):
    """``out = dz.sum(axis=0)``: the bias gradient of ``dz: (N, D)``."""
    dtype = L.check_dtype("bias_grad", dz)
    n, d = _rows_cols("bias_grad", "dz", dz)
    dz = L.contiguous(dz)
    db = L.output("bias_grad", "out", out, (d,), dtype)
    if d:
        _column_reduce("fastnn_bias_grad", dtype, n, d, db, (dz, db, numpy.int64(n), numpy.int64(d)))
    return db


@L.writes('out', 'db')
def act_backward_bias_grad(dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
    """``act_backward`` then ``bias_grad`` in one pass: returns ``dz: (N, D)`` and writes ``db = dz.sum(0)``.

    ``db=None`` computes only ``dz`` (as the reference, which then discards the sum). ``z``: as
    ``act_backward``.
    """
    if db is None:
        return act_backward(dout, y, act, alpha, out=out, z=z)
    z = need_z("act_backward_bias_grad", act, z)
    g = y if z is None else z
    name = "y" if z is None else "z"
    dtype = L.check_dtype("act_backward_bias_grad", dout, g)
    code = _act_code("act_backward_bias_grad", act)
    n, d = _rows_cols("act_backward_bias_grad", name, g)
    _same_shape("act_backward_bias_grad", ("dout", name), dout, g)
    dout, g = L.contiguous(dout), L.contiguous(g)
    dz = L.check_out("act_backward_bias_grad", "out", out, (n, d), dtype)
    L.check_out("act_backward_bias_grad", "db", db, (d,), dtype)
    if dz is None:
        dz = L.empty((n, d), dtype)
    if d:
        if z is None:
            _column_reduce("fastnn_act_backward_bias_grad", dtype, n, d, db,
                           (dout, g, dz, db, numpy.int64(n), numpy.int64(d), code, L.dtype_scalar(dtype, alpha)))
        else:
            _column_reduce("fastnn_act_backward_z_bias_grad", dtype, n, d, db,
                           (dout, g, dz, db, numpy.int64(n), numpy.int64(d), code))
    return dz


@L.writes('out')
def softmax(x, *, out=None):
    """Row-wise softmax of ``x: (N, C)``, max-subtracted; one warp per row."""
    dtype = L.check_dtype("softmax", x)
    n, c = _rows_cols("softmax", "x", x)
    x = L.contiguous(x)
    y = L.output("softmax", "out", out, (n, c), dtype)
    if n and c:
        fn, grid, _ = L.kernel_rows(FAMILY, KERNELS, "fastnn_softmax", dtype, n)
        fn(grid, (L.BLOCK,), (x, y, numpy.int64(n), numpy.int64(c)))
    return y


@L.writes('out')
def mul(x, y, *, out=None):
    """``out = x * y`` elementwise, ``x`` and ``y`` broadcast against each other as NumPy does."""
    dtype = L.check_dtype("mul", x, y)
    if tuple(x.shape) != tuple(y.shape):
        try:
            shape = numpy.broadcast_shapes(tuple(x.shape), tuple(y.shape))
        except ValueError:
            raise ValueError(f"mul: x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)} do not "
                             f"broadcast together") from None
        cupy = L._cupy()
        x, y = cupy.broadcast_to(x, shape), cupy.broadcast_to(y, shape)  # made contiguous below
    x, y = L.contiguous(x), L.contiguous(y)
    z = L.output("mul", "out", out, x.shape, dtype)
    n = x.size
    if n:
        fn, grid = _k1d("fastnn_mul", dtype, n)
        fn(grid, (L.BLOCK,), (x, y, z, numpy.int64(n)))
    return z
