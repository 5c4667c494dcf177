"""The book's ``common/util.py``: ``smooth_curve``, ``shuffle_dataset``, ``conv_output_size``,
``im2col`` and ``col2im``.

``im2col``/``col2im`` run the backend's primitives (``ops.im2col``/``ops.col2im``: fused kernels on
numba and CUDA) on the arrays' backend, in their float dtype (integer input becomes float64, as
the book's ``np.zeros`` buffer is). ``col2im`` returns a contiguous array (the book's is a slice of
its padded buffer).
"""
from __future__ import annotations

import numpy

from fastnn.backend import follow
from fastnn.book._engine import host
from fastnn.functions import check_real

__all__ = ["smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im"]


def smooth_curve(x):
    """``x`` (a loss curve) smoothed by an 11-point Kaiser window (beta 2), edges mirrored; same length.

    A host NumPy array for plotting: device arrays are copied to the host.
    """
    x = numpy.asarray([float(host(v)) for v in x]) if isinstance(x, (list, tuple)) else host(x)
    window_len = 11
    s = numpy.r_[x[window_len - 1:0:-1], x, x[-1:-window_len:-1]]
    w = numpy.kaiser(window_len, 2)
    y = numpy.convolve(w / w.sum(), s, mode="valid")
    return y[5:len(y) - 5]


def shuffle_dataset(x, t):
    """``(x, t)`` with their samples (first axis) in one random order, from NumPy's global generator
    as in the book (``np.random.seed(n)`` makes it repeatable). Returns new arrays."""
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"shuffle_dataset: x has {x.shape[0]} samples but t has {t.shape[0]}")
    permutation = numpy.random.permutation(x.shape[0])
    if not isinstance(x, numpy.ndarray):  # a device array: index with a device array
        permutation = follow(x).asarray(permutation)
    return x[permutation], t[permutation]


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """``(input_size + 2*pad - filter_size) / stride + 1`` (true division, as the book)."""
    return (input_size + 2 * pad - filter_size) / stride + 1


def _float(ops, a, owner, arg):
    a = check_real(owner, arg, a)
    if not ops.owns(a):
        a = ops.asarray(a)
    return a if a.dtype.kind == "f" else a.astype(numpy.float64)


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Patches of ``input_data: (N, C, H, W)`` as rows ``(N*OH*OW, C*FH*FW)``, ``OH = (H + 2*pad - FH)//stride + 1``.

    Row ``(n, oy, ox)``, column ``(c, ky, kx)`` holds ``x[n, c, oy*stride + ky - pad, ox*stride + kx - pad]``
    (zero outside ``x``).
    """
    ops = follow(input_data)
    return ops.im2col(_float(ops, input_data, "im2col", "input_data"), filter_h, filter_w, stride, pad)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """The adjoint of ``im2col``: an array of ``input_shape`` where each element sums the ``col``
    entries ``im2col`` copied it to (entries on the padding are dropped)."""
    ops = follow(col)
    return ops.col2im(_float(ops, col, "col2im", "col"), tuple(int(s) for s in input_shape), filter_h, filter_w,
                      stride, pad)
