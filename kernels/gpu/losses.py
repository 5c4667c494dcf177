"""CuPy launchers of ``losses.cu``: softmax cross-entropy (forward, backward), sigmoid binary
cross-entropy and squared error.

Each loss is summed on the device: one launch writes a partial sum per block (and ``y``/``dx``
when asked), a second one-block launch adds the partials and applies the final division, into a
0-d array of the logits' dtype. No host synchronisation. The partials buffer holds one value per
block (a few hundred), never anything of the data's size; it is the kept per-(device, stream,
thread) buffer of ``_loader.column_partials``, so a step allocates only the 0-d result.
"""
import numpy

from fastnn.kernels.gpu import _loader as L

FAMILY = "losses"
KERNELS = ("fastnn_loss_finish", "fastnn_softmax_xent", "fastnn_softmax_xent_backward",
           "fastnn_sigmoid_bce", "fastnn_mse")


def _fn(name, dtype, dev=None):
    return L.function(FAMILY, KERNELS, name, dtype, dev)


def _finish(partials, grid, factor, divide, dtype, dev=None):
    loss = L.empty((), dtype)
    _fn("fastnn_loss_finish", dtype, dev)(
        (1,), (L.BLOCK,), (partials, numpy.int64(grid), factor, numpy.int32(divide), loss))
    return loss


def _targets(primitive, t, shape, dtype):
    """``(dense, t_dense_or_x, idx)``: dense targets of ``shape`` in ``dtype``, or int64 class indices."""
    n, c = shape
    if t.ndim == 2:
        if tuple(t.shape) != (n, c):
            raise ValueError(f"{primitive}: one-hot t must have shape {(n, c)}, got {tuple(t.shape)}")
        if numpy.dtype(t.dtype) != numpy.dtype(dtype):
            t = t.astype(dtype)  # as the reference's t.astype(x.dtype); pass t in x's dtype to avoid it
        return 1, L.contiguous(t), None
    if t.ndim == 1:
        if t.shape[0] != n:
            raise ValueError(f"{primitive}: class indices t must have shape ({n},), got {tuple(t.shape)}")
        if numpy.dtype(t.dtype).kind not in "iuf":
            raise TypeError(f"{primitive}: class indices t must be integers (or whole-number floats), got {t.dtype}")
        idx = t if numpy.dtype(t.dtype) == numpy.int64 else t.astype(numpy.int64)
        return 0, None, L.contiguous(idx)
    raise ValueError(f"{primitive}: t must be one-hot (N, C) or class indices (N,), got shape {tuple(t.shape)}")


@L.writes('y', 'dx')
def softmax_xent(x, t, *, y=None, dx=None):
    """Mean softmax cross-entropy of logits ``x: (N, C)`` against one-hot ``t: (N, C)`` or indices ``t: (N,)``.

    Returns a 0-d device array of ``x``'s dtype; writes the probabilities into ``y`` and
    ``(softmax(x) - t) / N`` into ``dx`` when given. One warp per row.
    """
    dtype = L.check_dtype("softmax_xent", x)
    if x.ndim != 2:
        raise ValueError(f"softmax_xent: expected logits x of shape (N, C), got {tuple(x.shape)}")
    n, c = x.shape
    if c == 0:
        raise ValueError("softmax_xent: logits x have no classes (C == 0)")
    x = L.contiguous(x)
    dense, t_dense, idx = _targets("softmax_xent", t, (n, c), dtype)
    L.check_out("softmax_xent", "y", y, (n, c), dtype)
    L.check_out("softmax_xent", "dx", dx, (n, c), dtype)
    fn, (grid,), dev = L.kernel_rows(FAMILY, KERNELS, "fastnn_softmax_xent", dtype, n)
    partials = L.column_partials(grid, dev, dtype)  # the per-block sums: a kept buffer, read by _finish next
    dt = dtype.type
    fn((grid,), (L.BLOCK,),
       (x, x if t_dense is None else t_dense, idx if idx is not None else L.unused(numpy.int64, dev), numpy.int32(dense),
        x if y is None else y, numpy.int32(y is not None), x if dx is None else dx, numpy.int32(dx is not None),
        partials, numpy.int64(n), numpy.int64(c), dt(n)))
    return _finish(partials, grid, dt(n), True, dtype, dev)


@L.writes('out')
def softmax_xent_backward(y, t, dout=1.0, *, out=None):
    """``out = dout * (y - t) / N`` from the probabilities ``y: (N, C)`` and one-hot or index ``t``."""
    dtype = L.check_dtype("softmax_xent_backward", y)
    if y.ndim != 2:
        raise ValueError(f"softmax_xent_backward: expected probabilities y of shape (N, C), got {tuple(y.shape)}")
    n, c = y.shape
    y = L.contiguous(y)
    dense, t_dense, idx = _targets("softmax_xent_backward", t, (n, c), dtype)
    dx = L.output("softmax_xent_backward", "out", out, (n, c), dtype)
    dt = numpy.dtype(dtype).type
    scale = dt(dout) / dt(n) if n else dt(0)  # the reference's y.dtype.type(dout) / y.dtype.type(N)
    if n * c:
        fn, grid, dev = L.kernel_1d(FAMILY, KERNELS, "fastnn_softmax_xent_backward", dtype, n * c)
        fn(grid, (L.BLOCK,),
           (y, y if t_dense is None else t_dense, idx if idx is not None else L.unused(numpy.int64, dev),
            numpy.int32(dense), dx, numpy.int64(n), numpy.int64(c), scale))
    return dx


def _x_and_targets(primitive, name, x, t, dtype):
    """``x`` and targets ``t`` of its shape, ``t`` cast to ``dtype`` as the reference's ``t.astype``,
    both C-contiguous."""
    if tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"{primitive}: targets t must have the shape of {name} {tuple(x.shape)}, got {tuple(t.shape)}")
    if numpy.dtype(t.dtype) != numpy.dtype(dtype):
        t = t.astype(dtype)
    return L.contiguous(x), L.contiguous(t)


@L.writes('y', 'dx')
def sigmoid_bce(x, t, *, y=None, dx=None):
    """Mean binary cross-entropy of logits ``x`` against targets ``t`` (same shape), stable for any ``x``.

    Returns a 0-d device array; writes ``sigmoid(x)`` into ``y`` and ``(sigmoid(x) - t) / x.size`` into ``dx``.
    """
    dtype = L.check_dtype("sigmoid_bce", x)
    x, t = _x_and_targets("sigmoid_bce", "x", x, t, dtype)
    L.check_out("sigmoid_bce", "y", y, x.shape, dtype)
    L.check_out("sigmoid_bce", "dx", dx, x.shape, dtype)
    n = x.size
    fn, (grid,), dev = L.kernel_1d(FAMILY, KERNELS, "fastnn_sigmoid_bce", dtype, n)
    partials = L.column_partials(grid, dev, dtype)
    dt = numpy.dtype(dtype).type
    fn((grid,), (L.BLOCK,),
       (x, t, x if y is None else y, numpy.int32(y is not None), x if dx is None else dx,
        numpy.int32(dx is not None), partials, numpy.int64(n), dt(n)))
    return _finish(partials, grid, dt(n), True, dtype, dev)


@L.writes('dx')
def mse(y, t, scale, *, dx=None):
    """``loss = scale * sum((y - t)^2)`` as a 0-d device array; writes ``dx = 2 * scale * (y - t)`` when given."""
    dtype = L.check_dtype("mse", y)
    y, t = _x_and_targets("mse", "y", y, t, dtype)
    L.check_out("mse", "dx", dx, y.shape, dtype)
    n = y.size
    fn, (grid,), dev = L.kernel_1d(FAMILY, KERNELS, "fastnn_mse", dtype, n)
    partials = L.column_partials(grid, dev, dtype)
    s = numpy.dtype(dtype).type(scale)
    fn((grid,), (L.BLOCK,),
       (y, t, y if dx is None else dx, numpy.int32(dx is not None), partials, numpy.int64(n),
        s * numpy.dtype(dtype).type(2)))
    return _finish(partials, grid, s, False, dtype, dev)
