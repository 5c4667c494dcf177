"""CuPy launcher of ``dropout.cu``: the inverted-dropout scale mask, bit for bit the reference's."""
import numpy

from fastnn.kernels import dropout_base
from fastnn.kernels.gpu import _loader as L

FAMILY = "dropout"
KERNELS = ("fastnn_dropout_mask",)


def dropout_mask(shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
    """The mask of ``shape = (N, D)``: ``1 / (1 - rate)`` where kept, else 0 (see ``Ops.dropout_mask``).

    Element ``(i, j)`` draws output ``(row0 + i) * D + j`` of the splitmix64 stream started at
    ``dropout_base(seed, step)``, so a batch split across workers gets the same mask.
    """
    try:
        n, d = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"dropout_mask: expected shape (N, D), got {shape!r}") from None
    if n < 0 or d < 0 or int(row0) < 0:
        raise ValueError(f"dropout_mask: shape and row0 must be non-negative, got shape {(n, d)}, row0 {row0}")
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout_mask: rate must be in [0, 1), got {rate}")
    dtype = numpy.dtype(dtype)
    if dtype not in L.CTYPES:
        raise TypeError(f"dropout_mask: the CUDA kernels take float32 or float64 masks, got {dtype}")
    mask = L.check_out("dropout_mask", "out", out, (n, d), dtype)
    if mask is None:
        mask = L.empty((n, d), dtype)
    total = n * d
    if total:
        first = (int(row0) * d) & ((1 << 64) - 1)  # uint64 arithmetic wraps, as in the reference
        scale = dtype.type(1.0 / (1.0 - rate))  # exactly the reference's expression
        L.function(FAMILY, KERNELS, "fastnn_dropout_mask", dtype)(
            (L.grid_1d(total),), (L.BLOCK,),
            (mask, numpy.int64(total), numpy.uint64(dropout_base(seed, step)), numpy.uint64(first),
             numpy.float64(rate), scale))
    return mask
