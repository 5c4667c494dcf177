"""Numba CPU kernels (``@njit(cache=True, error_model="numpy")``), one module per family."""
