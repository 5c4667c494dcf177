"""CuPy launchers of ``normalization.cu``: batch normalization forward and backward over the
columns of ``x: (N, D)``, one block per group of 32 columns; with many rows (``L.column_tiles``)
also split into row tiles, the column sums then added by finish kernels (as ``bias_grad``)."""
import numpy

from fastnn.kernels.gpu import _loader as L

FAMILY = "normalization"
KERNELS = ("fastnn_batchnorm_forward", "fastnn_batchnorm_backward", "fastnn_bn_col_sums", "fastnn_bn_stat_finish",
           "fastnn_bn_backward_sums", "fastnn_bn_backward_finish", "fastnn_bn_backward_dx")


def _fn(name, dtype):
    return L.function(FAMILY, KERNELS, name, dtype)


def _check_vectors(primitive, d, dtype, **vectors):
    for name, v in vectors.items():
        if v is None:
            raise ValueError(f"{primitive}: {name} is required")
        if tuple(v.shape) != (d,):
            raise ValueError(f"{primitive}: expected {name} of shape ({d},), got {tuple(v.shape)}")
        if numpy.dtype(v.dtype) != dtype:
            raise TypeError(f"{primitive}: {name} must have the dtype of x, {dtype}; got {v.dtype}")


@L.writes('running_mean', 'running_var', 'out')
def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, train, *, out=None):
    """Batch normalization of ``x: (N, D)`` per column; returns ``(y, xhat, inv_std)``.

    Training: batch mean and biased variance, and ``running = momentum * running + (1 - momentum)
    * batch`` in place. Inference: the running statistics. ``xhat`` and ``inv_std`` are always
    allocated (the signature has no buffers for them); ``y`` is written into ``out`` when given.
    """
    dtype = L.check_dtype("batchnorm_forward", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_forward: expected x of shape (N, D), got {tuple(x.shape)}")
    n, d = x.shape
    if train and n == 0:
        raise ValueError("batchnorm_forward: training needs at least one row (the batch mean of 0 rows is undefined)")
    _check_vectors("batchnorm_forward", d, dtype, gamma=gamma, beta=beta)
    L.check_inplace("batchnorm_forward", "running_mean", running_mean, (d,), dtype)
    L.check_inplace("batchnorm_forward", "running_var", running_var, (d,), dtype)
    x, gamma, beta = L.contiguous(x), L.contiguous(gamma), L.contiguous(beta)
    y = L.output("batchnorm_forward", "out", out, (n, d), dtype)
    xhat = L.empty((n, d), dtype)
    inv_std = L.empty((d,), dtype)
    dt = dtype.type
    if d:
        dev = L._device_id()
        tiles, rows = L.column_tiles(n, d, dev)
        mom, keep = dt(momentum), dt(1 - momentum)
        stat_mean, stat_var, mode = running_mean, running_var, numpy.int32(bool(train))
        if train and tiles > 1:  # the batch statistics by row tiles, then normalize as inference does
            stat_mean, stat_var, mode = _batch_stats(x, running_mean, running_var, n, d, tiles, rows, mom, keep,
                                                     dtype, dev)
        grid = (L.grid_cols(d), tiles) if tiles > 1 and not mode else (L.grid_cols(d),)
        _fn("fastnn_batchnorm_forward", dtype)(
            grid, L.COL_BLOCK,
            (x, gamma, beta, stat_mean, stat_var, y, xhat, inv_std, numpy.int64(n), numpy.int64(d),
             mom, keep, dt(eps), mode, numpy.int64(rows if len(grid) == 2 else max(n, 1))))
    return y, xhat, inv_std


def _batch_stats(x, running_mean, running_var, n, d, tiles, rows, mom, keep, dtype, dev):
    """The batch mean and variance of ``x`` on the 2-D grid (the running statistics updated as the
    one-tile kernel does); returns ``(mean, var, 0)``: the arguments of the normalizing launch."""
    partial = L.column_partials(tiles * d, dev)
    stats = L.column_partials(2 * d, dev, dtype)
    mean, var = stats[:d], stats[d:2 * d]
    grid, fin = (L.grid_cols(d), tiles), (L.grid_1d(d),)
    args = (numpy.int64(n), numpy.int64(d), numpy.int64(rows))
    _fn("fastnn_bn_col_sums", dtype)(grid, L.COL_BLOCK, (x, x, partial, *args, numpy.int32(0)))
    _fn("fastnn_bn_stat_finish", dtype)(
        fin, (L.BLOCK,), (partial, numpy.int64(tiles), numpy.int64(d), numpy.int64(n), mean, running_mean, mom, keep))
    _fn("fastnn_bn_col_sums", dtype)(grid, L.COL_BLOCK, (x, mean, partial, *args, numpy.int32(1)))
    _fn("fastnn_bn_stat_finish", dtype)(
        fin, (L.BLOCK,), (partial, numpy.int64(tiles), numpy.int64(d), numpy.int64(n), var, running_var, mom, keep))
    return mean, var, numpy.int32(0)


@L.writes('dx', 'dgamma', 'dbeta')
def batchnorm_backward(dout, xhat, inv_std, gamma, *, dx=None, dgamma=None, dbeta=None):
    """Training-mode gradients: returns ``dx: (N, D)`` and writes ``dgamma``, ``dbeta`` (``(D,)``) when given."""
    dtype = L.check_dtype("batchnorm_backward", dout, xhat)
    if dout.ndim != 2:
        raise ValueError(f"batchnorm_backward: expected dout of shape (N, D), got {tuple(dout.shape)}")
    n, d = dout.shape
    if tuple(xhat.shape) != (n, d):
        raise ValueError(f"batchnorm_backward: xhat must have the shape of dout {(n, d)}, got {tuple(xhat.shape)}")
    _check_vectors("batchnorm_backward", d, dtype, inv_std=inv_std, gamma=gamma)
    dout, xhat = L.contiguous(dout), L.contiguous(xhat)
    inv_std, gamma = L.contiguous(inv_std), L.contiguous(gamma)
    L.check_out("batchnorm_backward", "dgamma", dgamma, (d,), dtype)
    L.check_out("batchnorm_backward", "dbeta", dbeta, (d,), dtype)
    dx_ = L.output("batchnorm_backward", "dx", dx, (n, d), dtype)
    if not d:
        return dx_
    dev = L._device_id()
    tiles, rows = L.column_tiles(n, d, dev)
    dg, db = dout if dgamma is None else dgamma, dout if dbeta is None else dbeta
    flags = (numpy.int32(dgamma is not None), numpy.int32(dbeta is not None))
    if tiles == 1:
        _fn("fastnn_batchnorm_backward", dtype)(
            (L.grid_cols(d),), L.COL_BLOCK, (dout, xhat, inv_std, gamma, dx_, dg, db, numpy.int64(n), numpy.int64(d),
                                            *flags))
        return dx_
    partial = L.column_partials(4 * tiles * d, dev)
    sums = L.column_partials(2 * d, dev, dtype)
    grid, size = (L.grid_cols(d), tiles), (numpy.int64(n), numpy.int64(d), numpy.int64(rows))
    _fn("fastnn_bn_backward_sums", dtype)(grid, L.COL_BLOCK, (dout, xhat, gamma, partial, *size))
    _fn("fastnn_bn_backward_finish", dtype)(
        (L.grid_1d(d),), (L.BLOCK,), (partial, numpy.int64(tiles), numpy.int64(d), dg, db, sums, *flags))
    _fn("fastnn_bn_backward_dx", dtype)(grid, L.COL_BLOCK, (dout, xhat, inv_std, gamma, sums, dx_, *size))
    return dx_
