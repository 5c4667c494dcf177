"""The dropout mask kernel: the splitmix64 stream of ``fastnn.kernels``, bit for bit.

Element ``(i, j)`` hashes its global index ``(row0 + i) * D + j`` from the stream start ``base``
(``dropout_base(seed, step)``, computed on the host); all arithmetic is uint64 and wraps, as in
NumPy. The unit is kept when the top 24 bits ``k`` satisfy ``k * 2^-24 >= rate``, i.e.
``k >= keep_from`` with ``keep_from = ceil(rate * 2^24)`` computed on the host.
"""
import numpy as np
from numba import njit

from fastnn.kernels import HASH_GOLDEN, MIX_M1, MIX_M2

# Globals are compile-time constants in Numba; typed uint64 so no arithmetic leaves uint64.
_GOLDEN = np.uint64(HASH_GOLDEN)
_M1 = np.uint64(MIX_M1)
_M2 = np.uint64(MIX_M2)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S40 = np.uint64(40)


@njit(cache=True, error_model="numpy")
def _mix(z):
    """splitmix64's finaliser."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, error_model="numpy")
def dropout_mask(row0, base, keep_from, scale, zero, out):
    """``out[i, j] = scale`` where unit ``(row0 + i, j)`` is kept, else ``zero``; ``out: (N, D)``."""
    n, d = out.shape
    ud = np.uint64(d)
    for i in range(n):
        start = np.uint64(row0 + i) * ud
        for j in range(d):
            z = _mix(base + (start + np.uint64(j)) * _GOLDEN)
            out[i, j] = scale if (z >> _S40) >= keep_from else zero
