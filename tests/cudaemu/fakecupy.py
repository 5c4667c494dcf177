"""An emulated ``cupy`` for the CPU: NumPy arrays under CuPy's names, ``RawModule``/``RawKernel``
running the real CUDA C through ``build.py``, and the ``cuda`` pieces fastnn touches.

Device arrays are ``ndarray`` (a NumPy subclass whose ``__module__`` is ``"cupy"``): operations on
them stay device arrays, full reductions give 0-d arrays (as CuPy's do), ``asarray`` of a host
array copies, ``asnumpy``/``.get()`` copy back, and mixing a host NumPy array into a device
operation raises ``TypeError`` as CuPy does. One device, ``FASTNN_CUDAEMU_SMS`` multiprocessors
(default 2, so the launchers' grid-stride loops wrap). Streams run eagerly; CUDA graphs, NCCL and
cuBLAS handles are not emulated (asking for them raises).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import types

import numpy

from . import build

__version__ = "14.2.0+cudaemu"
SMS = int(os.environ.get("FASTNN_CUDAEMU_SMS", "2"))
DEVICE_NAME = "fastnn CUDA emulator (CPU)"


class ndarray(numpy.ndarray):
    """A "device" array: NumPy memory, CuPy's type name."""

    def __array_finalize__(self, obj):
        pass

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # CuPy gives 0-d arrays where NumPy gives scalars.
        return arr.view(ndarray) if isinstance(arr, numpy.ndarray) else numpy.asarray(arr).view(ndarray)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for a in inputs + (out or ()):
            if type(a) is numpy.ndarray:
                raise TypeError(f"Unsupported type {type(a)} (a host NumPy array in a device operation "
                                f"{ufunc.__name__}.{method}; CuPy refuses it)")
        inputs = tuple(a.view(numpy.ndarray) if isinstance(a, ndarray) else a for a in inputs)
        if out is not None:
            kwargs["out"] = tuple(a.view(numpy.ndarray) if isinstance(a, ndarray) else a for a in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _dev(result)

    def get(self, stream=None, order="C", out=None):
        host = numpy.array(self.view(numpy.ndarray), order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr, stream=None):
        self.view(numpy.ndarray)[...] = arr

    @property
    def device(self):
        return Device(0)

    @property
    def data(self):
        return MemoryPointer(self.ctypes.data)

    def __float__(self):
        return float(self.view(numpy.ndarray))

    def __int__(self):
        return int(self.view(numpy.ndarray))


ndarray.__module__ = "cupy"


class MemoryPointer:
    def __init__(self, ptr):
        self.ptr = ptr


def _dev(x):
    """Results of NumPy on device arrays, as device arrays (tuples element by element)."""
    if isinstance(x, ndarray):
        return x
    if isinstance(x, numpy.ndarray):
        return x.view(ndarray)
    if isinstance(x, numpy.generic):
        return numpy.asarray(x).view(ndarray)
    if isinstance(x, tuple):
        return tuple(_dev(v) for v in x)
    if isinstance(x, list):
        return [_dev(v) for v in x]
    return x


def _host_args(args):
    return [a.view(numpy.ndarray) if isinstance(a, ndarray) else a for a in args]


def _wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        for a in list(args) + list(kwargs.values()):
            if type(a) is numpy.ndarray and a.ndim:
                raise TypeError(f"cupy.{fn.__name__}: a host NumPy array argument; CuPy needs device arrays "
                                f"(cupy.asarray first)")
        return _dev(fn(*args, **kwargs))
    return call


def asarray(a, dtype=None, order=None, **kwargs):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == numpy.dtype(dtype) else a.astype(dtype)
    return numpy.array(a, dtype=dtype, order=order or "K", copy=True).view(ndarray)  # host -> device copies


def array(a, dtype=None, copy=True, order="K", ndmin=0, **kwargs):
    base = a.view(numpy.ndarray) if isinstance(a, ndarray) else a
    return numpy.array(base, dtype=dtype, copy=True, order=order, ndmin=ndmin).view(ndarray)


def ascontiguousarray(a, dtype=None):
    return numpy.ascontiguousarray(a.view(numpy.ndarray) if isinstance(a, ndarray) else a, dtype=dtype).view(ndarray)


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else numpy


# ------------------------------------------------------------------------------- kernels
class RawModule:
    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("cudaemu: RawModule(path=) (a cubin) cannot be emulated")
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        self._lib = build.library(code, self.name_expressions)

    def get_function(self, name):
        if name not in self.name_expressions:
            raise build.EmulatorError(f"get_function({name!r}): not among the module's name_expressions")
        return RawKernel._from(self._lib.kernel(name))


class RawKernel:
    def __init__(self, code, name, options=(), **kwargs):
        self._k = build.library(code, [name]).kernel(name)

    @classmethod
    def _from(cls, k):
        self = cls.__new__(cls)
        self._k = k
        return self

    def __call__(self, grid, block, args, *, shared_mem=0, **kwargs):
        self._k(grid, block, args, shared_mem=shared_mem, device_array=ndarray)

    @property
    def attributes(self):
        return {"max_threads_per_block": 1024}


# ------------------------------------------------------------------------------- cuda
class Device:
    def __init__(self, device=None):
        device = 0 if device is None else int(device)
        if device != 0:
            raise runtime.CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device} "
                                           f"(the emulator has one device)")
        self.id = device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        pass

    def synchronize(self):
        pass

    @property
    def compute_capability(self):
        return "90"

    @property
    def attributes(self):
        return {"MultiProcessorCount": SMS, "MaxThreadsPerBlock": 1024, "WarpSize": 32}

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id} (emulated)>"


class _Runtime(types.ModuleType):
    class CUDARuntimeError(RuntimeError):
        pass

    def getDevice(self):
        return 0

    def getDeviceCount(self):
        return 1

    def getDeviceProperties(self, device):
        Device(device)
        return {"name": DEVICE_NAME.encode(), "multiProcessorCount": SMS, "major": 9, "minor": 0,
                "totalGlobalMem": 8 << 30}

    def memGetInfo(self):
        return (8 << 30, 8 << 30)

    def deviceSynchronize(self):
        pass

    def runtimeGetVersion(self):
        return 12080

    def driverGetVersion(self):
        return 12080


runtime = _Runtime("cupy.cuda.runtime")


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        _stream_stack.append(self)
        return self

    def __exit__(self, *exc):
        _stream_stack.pop()
        return False

    def use(self):
        return self

    def synchronize(self):
        pass

    def record(self, event=None):
        return event or Event()

    def wait_event(self, event):
        pass

    def is_capturing(self):
        return False

    def begin_capture(self, mode=None):
        raise RuntimeError("cudaemu: CUDA graph capture is not emulated (tests/test_graphs_plumbing.py "
                           "covers graphs with its own stand-in)")


Stream.null = Stream(null=True)
_stream_stack: list = []


def get_current_stream(device_id=None):
    return _stream_stack[-1] if _stream_stack else Stream.null


class OutOfMemoryError(MemoryError):
    pass


class MemoryPool:
    def __init__(self, allocator=None):
        self._limit = 0

    def malloc(self, nbytes):
        raise NotImplementedError("cudaemu: MemoryPool.malloc is not emulated")

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        self._limit = size or 0

    def get_limit(self):
        return self._limit


class PinnedMemoryPool:
    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


_pool, _pinned = MemoryPool(), PinnedMemoryPool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


class Graph:
    def __init__(self, *a, **k):
        raise NotImplementedError("cudaemu: CUDA graphs are not emulated")


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


memory = _module("cupy.cuda.memory", OutOfMemoryError=OutOfMemoryError, MemoryPool=MemoryPool,
                 PinnedMemoryPool=PinnedMemoryPool)
nccl = _module("cupy.cuda.nccl", available=False)
cuda = _module("cupy.cuda", Device=Device, runtime=runtime, Stream=Stream, Event=Event, Graph=Graph,
               get_current_stream=get_current_stream, MemoryPool=MemoryPool, PinnedMemoryPool=PinnedMemoryPool,
               memory=memory, using_allocator=using_allocator, nccl=nccl, is_available=lambda: True,
               get_device_id=lambda: 0)
_routines_linalg = _module("cupy._core._routines_linalg", COMPUTE_TYPE_DEFAULT=0, COMPUTE_TYPE_TF32=4)
_compute = {}


def _get_compute_type(dtype):
    return _compute.get(numpy.dtype(dtype), 0)


def _set_compute_type(dtype, value):
    _compute[numpy.dtype(dtype)] = value


_routines_linalg.get_compute_type = _get_compute_type
_routines_linalg.set_compute_type = _set_compute_type
_core = _module("cupy._core", _routines_linalg=_routines_linalg, ndarray=ndarray)
linalg = _module("cupy.linalg", norm=_wrap(numpy.linalg.norm))
random = _module("cupy.random")


def fuse(*args, **kwargs):
    def deco(fn):
        return fn
    return deco(args[0]) if args and callable(args[0]) else deco


def _scatter_add(a, slices, value):
    if not isinstance(a, ndarray):
        raise TypeError("cupyx.scatter_add: a must be a device array")
    host = lambda v: v.view(numpy.ndarray) if isinstance(v, ndarray) else v   # noqa: E731
    slices = tuple(map(host, slices)) if isinstance(slices, tuple) else host(slices)
    numpy.add.at(a.view(numpy.ndarray), slices, host(value))


def _empty_pinned(shape, dtype=numpy.float64, order="C"):
    return numpy.empty(shape, dtype=dtype, order=order)   # host memory (pinned on a GPU)


cupyx = _module("cupyx", scatter_add=_scatter_add, empty_pinned=_empty_pinned)

SUBMODULES = {"cupyx": cupyx, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.memory": memory,
              "cupy.cuda.nccl": nccl, "cupy._core": _core, "cupy._core._routines_linalg": _routines_linalg,
              "cupy.linalg": linalg, "cupy.random": random}

_SKIP = {"ndarray", "asarray", "array", "ascontiguousarray", "asnumpy"}


def __getattr__(name):
    """Everything else: NumPy's function of that name, returning device arrays."""
    try:
        obj = getattr(numpy, name)
    except AttributeError:
        raise AttributeError(f"module 'cupy' (emulated) has no attribute {name!r}") from None
    if isinstance(obj, type) or not callable(obj):
        return obj       # dtypes (cupy.float32), constants (cupy.nan)
    wrapped = _wrap(obj)
    if isinstance(obj, numpy.ufunc):  # CuPy's ufuncs have at() (cupy.add.at is cupyx.scatter_add)
        wrapped.at = lambda a, indices, b=None: _scatter_add(a, indices, b) if obj is numpy.add else obj.at(
            a.view(numpy.ndarray), indices, *(() if b is None else (b,)))
    globals()[name] = wrapped
    return wrapped
