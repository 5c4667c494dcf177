"""How float32 GEMMs compute on CUDA: the process-wide matmul precision.

A module of its own so that ``fastnn.backend`` (which re-exports the two functions) and
``fastnn.backend.cupy_ops`` (which reads the setting at every float32 GEMM) both import it
without importing each other.
"""
from __future__ import annotations

from fastnn import config

__all__ = ["set_matmul_precision", "get_matmul_precision"]

_precision = config.MATMUL_PRECISION


def set_matmul_precision(precision):
    """How float32 GEMMs compute on CUDA: ``"float32"`` (default, exact, as NumPy) or ``"tf32"``
    (TF32 tensor cores: 10-bit mantissa products, float32 accumulation; several times faster on
    large GEMMs). Process-wide, like ``torch.set_float32_matmul_precision``. CPU backends compute
    float32 exactly whatever it says (their BLAS has no TF32); float64 is never affected."""
    global _precision
    _precision = config.check_precision(precision)


def get_matmul_precision() -> str:
    """``"float32"`` or ``"tf32"``: see ``set_matmul_precision`` (``FASTNN_MATMUL_PRECISION`` sets the start value)."""
    return _precision
