"""Every ``FASTNN_*`` environment variable, read once at import.

| variable | meaning |
|---|---|
| ``FASTNN_BACKEND`` | process default backend: ``auto`` (default), ``cpu``, ``numpy``, ``numba``, ``cupy``, ``cuda``, ``cuda:N`` |
| ``FASTNN_NUM_THREADS`` | caps BLAS (through threadpoolctl) and Numba threads together |
| ``FASTNN_DEVICE_DATA``, ``FASTNN_DEVICE_DATA_FRACTION`` | where ``fit`` keeps a training set on a GPU; read at each ``fit`` by ``fastnn.feeding`` |
| ``FASTNN_MATMUL_PRECISION`` | ``float32`` (default: exact float32 GEMMs) or ``tf32`` (CUDA float32 GEMMs on TF32 tensor cores) |
| ``FASTNN_STRICT_KERNELS`` | ``1`` (the test suite sets it): a fast backend (numba, cupy) that would run the NumPy reference of a hot primitive instead of its kernel raises ``KernelFallbackError``; ``0`` or unset (default): it falls back silently |

Numba's own knobs (``NUMBA_NUM_THREADS``, ``NUMBA_CACHE_DIR``, ``NUMBA_DISABLE_JIT``) are Numba's and
are documented, not wrapped.
"""
import os

BACKEND = os.environ.get("FASTNN_BACKEND", "").strip() or None


def _int_or_none(name):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


NUM_THREADS = _int_or_none("FASTNN_NUM_THREADS")


def _flag(name):
    """A yes/no variable: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/unset (any case)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {os.environ[name]!r}")


# Read once here; fastnn.backend.ops applies it at import (fastnn.testing.strict_kernels switches it later).
STRICT_KERNELS = _flag("FASTNN_STRICT_KERNELS")


MATMUL_PRECISIONS = ("float32", "tf32")


def check_precision(value, name="precision"):
    """``value`` (any case) as one of ``MATMUL_PRECISIONS``, else ``ValueError`` naming ``name``."""
    canonical = value.lower() if isinstance(value, str) else value
    if canonical not in MATMUL_PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MATMUL_PRECISIONS))}, got {value!r}")
    return canonical


MATMUL_PRECISION = check_precision(os.environ.get("FASTNN_MATMUL_PRECISION", "").strip() or "float32",
                                   "FASTNN_MATMUL_PRECISION")
