"""Probes for each backend: can it run here, and if not, exactly why and what to install.

Probes run at first use, never at import, and each runs once per process. The CuPy probe imports
CuPy and then makes a real allocation on the device: an installed CuPy whose CUDA libraries or
driver are missing counts as "no device", not as a crash.
"""
from __future__ import annotations

import functools

CUPY_DISTS = ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy")
CUPY_HINT = 'pip install "fastnn-engine[cuda12]" (CUDA 12) or "fastnn-engine[cuda13]" (CUDA 13); only one CuPy may be installed'
NUMBA_HINT = 'pip install numba (a core dependency of fastnn-engine: reinstall with pip install "fastnn-engine")'


class Probe:
    """The outcome of probing one backend: ``ok``, a one-line ``reason``, and whether the package is ``installed``."""

    def __init__(self, ok, reason, installed=True, detail=None):
        self.ok = ok
        self.reason = reason
        self.installed = installed
        self.detail = detail or {}

    def __repr__(self):
        return f"Probe(ok={self.ok}, reason={self.reason!r})"


def probe_numpy():
    import numpy

    return Probe(True, f"NumPy {numpy.__version__} (the reference backend) is always available")


@functools.lru_cache(maxsize=None)
def probe_numba():
    try:
        import numba
    except ImportError as exc:
        return Probe(False, f"Numba is not installed ({exc}); {NUMBA_HINT}", installed=False)
    except Exception as exc:  # a broken llvmlite raises OSError and friends
        return Probe(False, f"Numba failed to import: {type(exc).__name__}: {exc}; {NUMBA_HINT}")
    return Probe(True, f"Numba {numba.__version__} imports", detail={"version": numba.__version__})


def cupy_distribution():
    """The installed CuPy distribution's name and version, or ``None`` (without importing CuPy)."""
    import importlib.metadata  # here, not at module level: it is most of fastnn's own import time

    for dist in CUPY_DISTS:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=None)
def probe_cupy(device_id=0):
    try:
        import cupy
    except ImportError as exc:
        dist = cupy_distribution()
        if dist is None:
            return Probe(False, f"CuPy is not installed; {CUPY_HINT}", installed=False)
        return Probe(False, f"{dist[0]} {dist[1]} is installed but does not import ({exc})")
    except Exception as exc:
        return Probe(False, f"CuPy is installed but failed to import: {type(exc).__name__}: {exc}")
    try:
        with cupy.cuda.Device(device_id):
            a = cupy.arange(4, dtype=cupy.float32)
            a += 1
            total = float(a.sum().get())
        if total != 10.0:
            raise RuntimeError(f"a test computation on the device gave {total}, expected 10")
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return Probe(False, f"CuPy {cupy.__version__} is installed but no CUDA device answers: "
                            f"{type(exc).__name__}: {exc}".strip())
    return Probe(True, f"CuPy {cupy.__version__} on cuda:{device_id} ({name})",
                 detail={"device_name": name, "version": cupy.__version__})


def cuda_versions():
    """``(runtime, driver)``: the CUDA runtime and driver versions CuPy reports (after a successful ``probe_cupy``)."""
    import cupy

    rt = cupy.cuda.runtime
    return rt.runtimeGetVersion(), rt.driverGetVersion()


def clear_cache():
    """Forget every probe result (tests use this to re-probe in one process)."""
    probe_numba.cache_clear()
    probe_cupy.cache_clear()
