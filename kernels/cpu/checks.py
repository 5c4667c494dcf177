"""Input checks on host data (``fit``/``evaluate``/``predict`` validate once per call): one pass,
no temporary array. ``numpy.isfinite(x).all()`` writes a bool array as large as ``x`` and reads it
back; on a 6000 x 784 float32 set that is 0.69 ms against 0.29 ms here (2-core EPYC), paid on every
``fit`` call.
"""
import numpy as np
from numba import njit

_CHUNK = 2048  # elements tested per vectorised pass before the loop looks at the verdict


@njit(cache=True, nogil=True, error_model="numpy")
def first_beyond(flat, limit):
    """Index of the first element of the 1-D float array ``flat`` whose magnitude is not ``<= limit``
    (NaN, +-inf, or a finite value beyond ``limit``), or -1. ``limit`` in ``flat``'s dtype; with
    its largest finite value the test is ``isfinite``."""
    n = flat.shape[0]
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        seg = flat[lo:hi]
        ok = np.int32(0)
        for j in range(seg.shape[0]):  # a count, not a branch: the loop vectorises
            ok += np.int32(abs(seg[j]) <= limit)
        if ok != hi - lo:
            for j in range(seg.shape[0]):
                if not (abs(seg[j]) <= limit):
                    return lo + j
    return -1
