"""``NumbaOps``: NumPy arrays, with hot primitives from the Numba kernels in ``fastnn.kernels.cpu``.

GEMMs stay on BLAS through NumPy (already multi-threaded); the fused elementwise, reduction and
optimizer kernels are serial ``@njit(cache=True, error_model="numpy")`` functions. Until a
primitive has its kernel it inherits the NumPy reference from ``Ops``.
"""
from fastnn.backend.ops import Ops


class NumbaOps(Ops):
    name = "numba"
