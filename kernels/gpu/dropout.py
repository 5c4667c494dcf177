"""CuPy launcher of ``dropout.cu``: the inverted-dropout scale mask, bit for bit the reference's.

``dropout_mask_dev`` is the graph-capture variant: it reads the stream start
``dropout_base(seed, step)`` from a one-element uint64 device array instead of taking it by value,
so a captured CUDA graph draws each replayed step's mask from the base the host wrote there.
"""
import numpy

from fastnn.kernels import dropout_base
from fastnn.kernels.gpu import _loader as L

FAMILY = "dropout"
KERNELS = ("fastnn_dropout_mask", "fastnn_dropout_mask_dev")


def _check_mask_args(primitive, shape, rate, row0, dtype):
    """The checks both launchers share; returns ``(n, d, dtype)``."""
    try:
        n, d = shape
        n, d = int(n), int(d)
    except (TypeError, ValueError):
        raise ValueError(f"{primitive}: expected shape (N, D), got {shape!r}") from None
    if n < 0 or d < 0 or int(row0) < 0:
        raise ValueError(f"{primitive}: shape and row0 must be non-negative, got shape {(n, d)}, row0 {row0}")
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{primitive}: rate must be in [0, 1), got {rate}")
    if not isinstance(dtype, numpy.dtype):  # a dtype object already: as it is
        dtype = numpy.dtype(dtype)
    if dtype not in L.CTYPES:
        raise TypeError(f"{primitive}: the CUDA kernels take float32 or float64 masks, got {dtype}")
    return n, d, dtype


def _stream_args(d, row0, rate, dtype):
    """``(first, rate, scale)`` as the kernels take them."""
    first = (int(row0) * d) & ((1 << 64) - 1)  # uint64 arithmetic wraps, as in the reference
    scale = dtype.type(1.0 / (1.0 - rate))  # exactly the reference's expression
    return numpy.uint64(first), numpy.float64(rate), scale


@L.writes('out')
def dropout_mask(shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
    """The mask of ``shape = (N, D)``: ``1 / (1 - rate)`` where kept, else 0 (see ``Ops.dropout_mask``).

    Element ``(i, j)`` draws output ``(row0 + i) * D + j`` of the splitmix64 stream started at
    ``dropout_base(seed, step)``, so a batch split across workers gets the same mask.
    """
    n, d, dtype = _check_mask_args("dropout_mask", shape, rate, row0, dtype)
    mask = L.output("dropout_mask", "out", out, (n, d), dtype)
    total = n * d
    if total:
        fn, grid, _ = L.kernel_1d(FAMILY, KERNELS, "fastnn_dropout_mask", dtype, total)
        fn(grid, (L.BLOCK,),
            (mask, numpy.int64(total), numpy.uint64(dropout_base(seed, step)), *_stream_args(d, row0, rate, dtype)))
    return mask


def dropout_mask_dev(shape, rate, base, row0=0, *, dtype=numpy.float32, out=None):
    """``dropout_mask`` with the stream start read from the device: ``base`` is a one-element uint64
    device array (a view is fine) holding ``dropout_base(seed, step)``. ``out`` is required (a
    captured mask must be a fixed buffer); returns it.
    """
    n, d, dtype = _check_mask_args("dropout_mask_dev", shape, rate, row0, dtype)
    if out is None:
        raise ValueError("dropout_mask_dev: out is required (a captured mask must be written into a fixed buffer)")
    mask = L.check_out("dropout_mask_dev", "out", out, (n, d), dtype)
    if not all(hasattr(base, a) for a in ("dtype", "size")):
        raise TypeError(f"dropout_mask_dev: base must be a one-element uint64 device array, got {type(base).__name__}")
    if numpy.dtype(base.dtype) != numpy.uint64:
        raise TypeError(f"dropout_mask_dev: base must have dtype uint64, got {base.dtype}")
    if base.size != 1:
        raise ValueError(f"dropout_mask_dev: base must hold exactly one element (dropout_base(seed, step)), "
                         f"got {base.size}")
    if L.is_host_array(base):
        raise TypeError("dropout_mask_dev: base must be a device (CuPy) array, got a host numpy.ndarray")
    total = n * d
    if total:
        L.function(FAMILY, KERNELS, "fastnn_dropout_mask_dev", dtype)(
            (L.grid_1d(total),), (L.BLOCK,),
            (mask, numpy.int64(total), base, *_stream_args(d, row0, rate, dtype)))
    return mask
