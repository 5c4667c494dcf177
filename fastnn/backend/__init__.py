"""The backend shim: which array module and which kernels compute.

Names: ``"auto"`` (default), ``"cpu"`` (numba, else numpy), ``"numpy"``, ``"numba"``, ``"cupy"`` /
``"cuda"`` / ``"cuda:N"``. Precedence: an explicit argument > ``with using(...)`` > ``use(...)`` >
``FASTNN_BACKEND`` > ``auto``. ``auto`` picks CuPy when it imports and a real allocation on a CUDA
device succeeds, else Numba, else NumPy, and says once on the ``fastnn`` logger what it chose and
why it skipped the others (with a warning when CuPy is installed but no device answers).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import types
import warnings

import numpy

from fastnn import config
from fastnn.backend import select
from fastnn.backend.ops import HOT_PRIMITIVES, Ops
from fastnn.backend.precision import get_matmul_precision, set_matmul_precision
from fastnn.errors import BackendUnavailableError

__all__ = [
    "Ops", "HOT_PRIMITIVES", "use", "using", "current", "get_ops", "available", "describe",
    "follow", "is_device_array", "array_module", "to_host", "scatter_add", "communicator_kind", "BACKEND_NAMES",
    "set_matmul_precision", "get_matmul_precision",
]

log = logging.getLogger("fastnn")

BACKEND_NAMES = ("auto", "cpu", "numpy", "numba", "cupy", "cuda", "cuda:N")

_default: str | None = None  # set by use()
_scoped: contextvars.ContextVar = contextvars.ContextVar("fastnn_backend", default=None)
_instances: dict = {}
_lock = threading.RLock()
_choice_reason: dict = {}  # canonical request -> the sentence explaining what it resolved to
# Called, without arguments, before a backend whose array module is not NumPy becomes active (by
# use() or using()), and when code writes ``_default`` directly: ``fastnn.np`` then leaves its
# fastest path, which holds only while every backend ever active computes with NumPy.
_on_foreign: list = []


def _activate(ops):
    """``ops``, after telling ``_on_foreign`` when its array module is not NumPy (see above)."""
    if ops.xp is not numpy:
        for hook in _on_foreign:
            hook()
    return ops


def _canonical(name) -> str:
    """Validate a backend name and return its canonical key (``numpy``, ``numba``, ``cupy:N``, ``auto``, ``cpu``)."""
    if isinstance(name, Ops):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    if key in ("auto", "cpu", "numpy", "numba"):
        return key
    if key in ("cupy", "cuda", "gpu"):
        return "cupy:0"
    for prefix in ("cuda:", "cupy:"):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return f"cupy:{int(key[len(prefix):])}"
    raise ValueError(f"unknown backend {name!r}; valid names: {', '.join(BACKEND_NAMES)}")


def _make(key: str) -> Ops:
    """Build the Ops object for a concrete key, or raise BackendUnavailableError saying why not."""
    if key == "numpy":
        _apply_thread_limit()
        return Ops()
    if key == "numba":
        probe = select.probe_numba()
        if not probe.ok:
            raise BackendUnavailableError(f'backend "numba" was requested but {probe.reason}')
        _apply_thread_limit()
        from fastnn.backend.numba_ops import NumbaOps

        return NumbaOps()
    device_id = int(key.split(":")[1])
    probe = select.probe_cupy(device_id)
    if not probe.ok:
        raise BackendUnavailableError(f'backend "cuda:{device_id}" was requested but {probe.reason}')
    from fastnn.backend.cupy_ops import CupyOps

    return CupyOps(device_id)


def _resolve(key: str) -> str:
    """Turn ``auto``/``cpu`` into a concrete key, logging the choice and its reasons once."""
    if key not in ("auto", "cpu"):
        return key
    skipped = []
    if key == "auto":
        cupy_probe = select.probe_cupy(0)
        if cupy_probe.ok:
            return _announce(key, "cupy:0", cupy_probe.reason, skipped)
        skipped.append(f"cupy: {cupy_probe.reason}")
        if cupy_probe.installed and key not in _choice_reason:
            warnings.warn(f"fastnn: falling back to CPU: {cupy_probe.reason}", RuntimeWarning, stacklevel=4)
    numba_probe = select.probe_numba()
    if numba_probe.ok:
        return _announce(key, "numba", numba_probe.reason, skipped)
    skipped.append(f"numba: {numba_probe.reason}")
    return _announce(key, "numpy", "NumPy is always available", skipped)


def _announce(request, chosen, why, skipped):
    if request not in _choice_reason:
        label = chosen.replace("cupy:", "cuda:") if chosen.startswith("cupy:") else chosen
        sentence = f'backend "{request}" chose "{label}": {why}'
        if skipped:
            sentence += "; skipped " + "; ".join(skipped)
        _choice_reason[request] = sentence
        log.info("fastnn: %s", sentence)
    return chosen


def get_ops(name="auto") -> Ops:
    """The ``Ops`` object for a backend name (one instance per backend and device)."""
    if isinstance(name, Ops):
        return name
    with _lock:
        key = _resolve(_canonical(name))
        ops = _instances.get(key)
        if ops is None:
            ops = _instances[key] = _make(key)
        return ops


def use(name, precision=None) -> Ops:
    """Set the process-wide default backend (checked now: an unavailable backend raises here).

    ``precision="tf32"`` also sets ``set_matmul_precision("tf32")``: float32 GEMMs on CUDA run on
    TF32 tensor cores. The default, ``"float32"``, keeps them exact."""
    global _default
    if precision is not None:
        config.check_precision(precision)  # checked before anything changes
    ops = _activate(get_ops(name))
    if precision is not None:
        set_matmul_precision(precision)
    _default = _canonical(name) if not isinstance(name, Ops) else name
    return ops


@contextlib.contextmanager
def using(name):
    """``with using("numpy"): ...`` runs the block on that backend; restored on exit, errors included.

    The scope is a ``contextvars.ContextVar``, so it never leaks into other threads.
    """
    token = _scoped.set(_activate(get_ops(name)))
    try:
        yield _scoped.get()
    finally:
        _scoped.reset(token)


def current() -> Ops:
    """The active backend: ``using`` > ``use`` > ``FASTNN_BACKEND`` > ``auto``."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _default is not None:
        return get_ops(_default)
    if config.BACKEND:
        return get_ops(config.BACKEND)
    return get_ops("auto")


def describe(name="auto") -> str:
    """A sentence saying what a name resolves to and why (``auto`` and ``cpu`` list what they skipped)."""
    key = _canonical(name)
    concrete = _resolve(key)
    if key in _choice_reason:
        return _choice_reason[key]
    ops = get_ops(concrete)
    return f'backend "{name}" is "{ops.name}" on {ops.device}'


def available() -> dict:
    """Every concrete backend with ``(ok, reason)``: ``{"numpy": (True, ...), "numba": ..., "cuda:0": ...}``."""
    numba_probe = select.probe_numba()
    cupy_probe = select.probe_cupy(0)
    return {
        "numpy": (True, select.probe_numpy().reason),
        "numba": (numba_probe.ok, numba_probe.reason),
        "cuda:0": (cupy_probe.ok, cupy_probe.reason),
    }


def is_device_array(x) -> bool:
    """True for a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def array_module(x):
    """``x``'s array module: ``cupy`` for a CuPy array, else ``numpy`` (CuPy is never imported for host arrays)."""
    if is_device_array(x):
        import cupy

        return cupy
    return numpy


def to_host(x):
    """A host ``numpy.ndarray`` holding ``x``'s values, whatever its backend: a device array is copied
    to the host, anything else goes through ``numpy.asarray`` (no copy for a host array)."""
    return x.get() if is_device_array(x) else numpy.asarray(x)


def scatter_add(a, indices, b):
    """NumPy's ``add.at(a, indices, b)`` (unbuffered scatter-add into ``a``) for any backend's arrays:
    ``cupyx.scatter_add`` on a device array."""
    if is_device_array(a):
        import cupyx

        cupyx.scatter_add(a, indices, b)
    else:
        numpy.add.at(a, indices, b)


def communicator_kind(backend) -> str:
    """The communicator that all-reduces a backend's arrays under a multi-rank launcher (what
    ``fastnn.distributed.init("auto")`` makes there): ``"nccl"`` or ``"mpi"``. ``backend`` is an
    ``Ops`` (its ``communicator``) or a backend name, answered without probing (``auto`` and ``cpu``,
    which resolve only at first use, and ``None`` answer ``"mpi"``)."""
    if isinstance(backend, Ops):
        return backend.communicator
    key = "numpy" if backend is None else _canonical(backend)
    return "nccl" if key.startswith("cupy:") else "mpi"


def follow(*arrays) -> Ops:
    """The backend a book layer runs on for these inputs: CuPy arrays run on CuPy (on their
    device); host arrays on the current backend (a CuPy current backend moves them once)."""
    devices = {}
    for i, a in enumerate(arrays):
        if is_device_array(a):
            devices.setdefault(int(a.device.id), i)
    if len(devices) > 1:
        where = ", ".join(f"argument {i} on cuda:{d}" for d, i in sorted(devices.items(), key=lambda kv: kv[1]))
        raise ValueError(f"arrays on different GPUs in one call ({where}); move them to one device first, e.g. "
                         f"`with cupy.cuda.Device(0): a = cupy.asarray(a)`")
    if devices:
        return get_ops(f"cuda:{next(iter(devices))}")
    return current()


_threads_applied = False


def _apply_thread_limit():
    """Apply ``FASTNN_NUM_THREADS`` to BLAS (threadpoolctl) and Numba together, once."""
    global _threads_applied
    if _threads_applied or config.NUM_THREADS is None:
        return
    _threads_applied = True
    n = config.NUM_THREADS
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        log.warning("fastnn: FASTNN_NUM_THREADS=%d could not cap BLAS: threadpoolctl is not installed", n)
    if select.probe_numba().ok:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


class _BackendModule(types.ModuleType):
    """This module's class: code that writes ``_default`` directly (a test harness restoring it)
    bypasses use(), so what it resolves to is unknown here: ``_on_foreign`` is told, to be safe."""

    def __setattr__(self, name, value):
        if name == "_default":
            for hook in _on_foreign:
                hook()
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _BackendModule
