"""fastnn: neural networks "from scratch", fast, on NumPy, Numba (CPU) or CuPy (NVIDIA GPU).

The backend is chosen at first use, never at import: ``fastnn.use("numba")``,
``with fastnn.using("numpy"): ...`` or ``FASTNN_BACKEND``; ``auto`` (the default) takes the
fastest that runs here and says so on the ``fastnn`` logger.
"""
import logging as _logging

from fastnn._version import __version__
from fastnn.backend import (available, current, describe, get_matmul_precision, get_ops, set_matmul_precision, use,
                            using)
from fastnn.errors import (BackendUnavailableError, CheckpointMismatchError, FolderInUseError, FormatError,
                           OutOfMemoryError)
from fastnn.functions import get_array_module
from fastnn.random import set_seed
from fastnn.registry import register
from fastnn import np  # noqa: E402  the active backend's array module
xp = np

_logging.getLogger("fastnn").addHandler(_logging.NullHandler())


def warmup(backend=None, dtypes=("float32", "float64")):
    """Compile every fused kernel ahead of time (see ``fastnn._warmup``); returns the seconds taken."""
    from fastnn._warmup import warmup as _warmup

    return _warmup(backend, dtypes)


def asnumpy(x):
    """A host ``numpy.ndarray`` copy of ``x`` (a CuPy array is copied from the device)."""
    import numpy

    if hasattr(x, "get") and get_array_module(x) is not numpy:
        return x.get()
    return numpy.asarray(x)


def asarray(x, dtype=None):
    """``x`` as an array of the current backend (moved onto its device)."""
    return current().asarray(x, dtype=dtype)


_LAZY = {"Sequential": "fastnn.models", "Model": "fastnn.models", "Input": "fastnn.layers.symbolic"}


def __getattr__(name):
    """``fastnn.Sequential``, ``fastnn.Model`` and ``fastnn.Input`` (Keras's top-level names), imported on
    first use so that ``import fastnn`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


__all__ = [
    "__version__", "Sequential", "Model", "Input", "use", "using", "current", "get_ops", "available", "describe", "set_seed",
    "get_array_module", "asnumpy", "asarray", "np", "xp", "register", "warmup", "BackendUnavailableError", "FormatError",
    "FolderInUseError", "CheckpointMismatchError",
    "OutOfMemoryError", "set_matmul_precision", "get_matmul_precision",
]
