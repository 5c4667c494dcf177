"""``fastnn info``: versions, backends and their reasons, device, BLAS and threads."""
from __future__ import annotations

import platform
import sys

import numpy

from fastnn import __version__
from fastnn.backend import available, select


def _blas():
    try:
        import threadpoolctl
    except ImportError:
        return ["BLAS: unknown (threadpoolctl is not installed)"]
    lines = []
    for pool in threadpoolctl.threadpool_info():
        if pool.get("user_api") == "blas":
            lines.append(f"BLAS: {pool.get('internal_api')} {pool.get('version')} "
                         f"(kernel {pool.get('architecture')}), {pool.get('num_threads')} threads, "
                         f"{pool.get('filepath')}")
    return lines or ["BLAS: none found by threadpoolctl"]


def _numba():
    probe = select.probe_numba()
    if not probe.ok:
        return [f"Numba: {probe.reason}"]
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = f"not yet chosen (setting: {numba.config.THREADING_LAYER})"
    return [f"Numba: {numba.__version__}, threading layer {layer}, {numba.get_num_threads()} threads"]


def _cupy():
    dist = select.cupy_distribution()
    if dist is None:
        return ["CuPy: not installed"]
    lines = [f"CuPy: {dist[0]} {dist[1]}"]
    probe = select.probe_cupy(0)
    if probe.ok:
        runtime, driver = select.cuda_versions()
        lines.append(f"CUDA runtime {runtime}, driver {driver}, device: {probe.detail.get('device_name')}")
    return lines


def report() -> str:
    from fastnn.backend import describe

    lines = [
        f"fastnn {__version__}",
        f"Python {sys.version.split()[0]} ({platform.platform()})",
        f"NumPy {numpy.__version__}",
    ]
    lines += _numba() + _cupy() + _blas()
    lines.append("backends:")
    for name, (ok, reason) in available().items():
        lines.append(f"  {name:7s} {'available' if ok else 'unavailable'}: {reason}")
    lines.append(f"auto: {describe('auto')}")
    return "\n".join(lines)
