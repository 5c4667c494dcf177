"""The stub CuPy of ``fastnn-bench host`` (``host.py``): NumPy-backed arrays on which every CUDA kernel
launch, GEMM, ``take``/fancy index and copy does no work and is counted, so that a child process can
time fastnn's own host code on the ``cupy`` backend on any machine. ``install()`` puts it in
``sys.modules`` as ``cupy`` before fastnn imports CuPy.

Graph capture: ``Stream.begin_capture`` makes the stream's work (kernels, GEMMs, takes, ops, copies)
nodes of a stub ``Graph`` (counted as "captured", not launched) until ``end_capture`` returns it; a
graph's ``launch``/``upload`` is one counted no-op. A device-to-host read, a synchronous copy or a
synchronize on the capturing stream raises, as CUDA refuses it. ``install_cublas()`` puts the stub
``Cublas`` in ``fastnn.kernels.gpu.cublas`` so that ``fit(cuda_graph=True)`` captures in "full" mode.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

import numpy

COUNTERS = ("kernels", "gemms", "takes", "ops", "h2d", "d2h", "get_device", "graph_launches", "events", "syncs",
            "device_enter", "captured")
_counts = dict.fromkeys(COUNTERS, 0)
_ops_by_name: dict = {}  # "other op" name -> count (what the stub saw besides kernels and GEMMs)
_capturing: list = []    # [(stream, Graph)] while a stream captures (one at a time)


def _captured(kind):
    """True when the current stream is capturing: the operation becomes a node of its graph (counted
    as "captured", not as a launch). Cheap when nothing captures."""
    if not _capturing:
        return False
    stream, graph = _capturing[0]
    if (_streams[-1] if _streams else Stream.null) is not stream:
        return False
    graph.nodes.append(kind)
    _counts["captured"] += 1
    return True


def _no_capture(what):
    """A host-synchronous operation on a capturing stream: CUDA refuses it and invalidates the capture."""
    if _capturing and (_streams[-1] if _streams else Stream.null) is _capturing[0][0]:
        raise RuntimeError(f"fastnn-bench host stub: {what} while the stream is capturing "
                           f"(cudaErrorStreamCaptureUnsupported)")


def _op(name):
    if _captured(name):
        return
    _counts["ops"] += 1
    _ops_by_name[name] = _ops_by_name.get(name, 0) + 1


# ------------------------------------------------------------------------------ the stub cupy
class ndarray(numpy.ndarray):
    """A "device" array: NumPy memory that no stubbed operation writes."""

    def __array_finalize__(self, obj):
        pass

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        # Computed (on host memory): input validation and metrics read values. Counted as a CuPy op;
        # the per-step ones act on loss-sized arrays (see "other ops" in the table).
        _op(f"{ufunc.__name__}.{method}")
        host = [_host(a) for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(_host(a) for a in out)
        result = getattr(ufunc, method)(*host, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _dev(result)

    def __getitem__(self, key):
        if isinstance(key, numpy.ndarray) and key.dtype.kind in "iu":
            _count("takes")
            return _empty(key.shape + self.shape[1:], self.dtype)
        return super().__getitem__(key)

    def __setitem__(self, key, value):  # a fill or a device-to-device copy: done (see copy)
        _op("setitem")
        self.view(numpy.ndarray)[key] = _host(value)

    def get(self, stream=None, order="C", out=None):
        _no_capture("a device-to-host copy")
        _counts["d2h"] += 1
        host = numpy.array(self.view(numpy.ndarray), order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr, stream=None):
        _count("h2d")

    def copy(self, order="C"):
        # Done, on host memory: fastnn's replay check compares copies taken before and after a step
        # with the arrays themselves (a zero "copy" would fail it). No eager step copies.
        _op("copy")
        return numpy.array(self.view(numpy.ndarray), order=order, copy=True).view(ndarray)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and numpy.dtype(dtype) == self.dtype:
            return self
        _op("astype")
        return _empty(self.shape, dtype)

    def fill(self, value):
        _op("fill")

    def take(self, indices, axis=None, out=None):
        _count("takes")
        return out if out is not None else _empty(indices.shape + self.shape[1:], self.dtype)

    @property
    def device(self):
        return Device(0)

    @property
    def _c_contiguous(self):  # CuPy's ndarray keeps the flag as an attribute (no flags object made)
        return self.flags.c_contiguous

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def __float__(self):
        _no_capture("a device-to-host read")
        _counts["d2h"] += 1
        return float(self.view(numpy.ndarray))

    def __int__(self):
        _no_capture("a device-to-host read")
        _counts["d2h"] += 1
        return int(self.view(numpy.ndarray))

    def item(self, *args):
        _no_capture("a device-to-host read")
        _counts["d2h"] += 1
        return self.view(numpy.ndarray).item(*args)


ndarray.__module__ = "cupy"


def _count(kind):
    if not _captured(kind):
        _counts[kind] += 1


def _empty(shape, dtype):
    return numpy.zeros(shape, dtype).view(ndarray)  # zeros: deterministic values, calloc'd when large


def _dev(x):
    if isinstance(x, ndarray):
        return x
    if isinstance(x, numpy.ndarray):
        return x.view(ndarray)
    if isinstance(x, numpy.generic):
        return numpy.asarray(x).view(ndarray)
    if isinstance(x, (tuple, list)):
        return type(x)(_dev(v) for v in x)
    return x


def _host(a):
    return a.view(numpy.ndarray) if isinstance(a, ndarray) else a


class RawKernel:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, grid, block, args, **kwargs):
        _count("kernels")

    attributes = {"max_threads_per_block": 1024}


class RawModule:
    def __init__(self, code=None, path=None, options=(), name_expressions=None, **kwargs):
        self.names = set(name_expressions or ())

    def get_function(self, name):
        return RawKernel()


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def __enter__(self):  # CuPy: cudaGetDevice, and cudaSetDevice when it differs
        _counts["device_enter"] += 1
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        pass

    def synchronize(self):
        _no_capture("a device synchronize")
        _counts["syncs"] += 1

    compute_capability = "90"
    attributes = {"MultiProcessorCount": 132, "MaxThreadsPerBlock": 1024, "WarpSize": 32}


class _Runtime(types.ModuleType):
    class CUDARuntimeError(RuntimeError):
        pass

    def getDevice(self):
        _counts["get_device"] += 1
        return 0

    def getDeviceCount(self):
        return 1

    def getDeviceProperties(self, device):
        return {"name": b"fastnn host-time stub (no GPU)", "multiProcessorCount": 132, "major": 9, "minor": 0,
                "totalGlobalMem": 141 << 30}

    def memGetInfo(self):
        return (140 << 30, 141 << 30)

    def deviceSynchronize(self):
        pass

    def runtimeGetVersion(self):
        return 13000

    def driverGetVersion(self):
        return 13000


class Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        _counts["events"] += 1

    def synchronize(self):
        _counts["syncs"] += 1

    done = True


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        _streams.append(self)
        return self

    def __exit__(self, *exc):
        _streams.pop()
        return False

    def use(self):
        return self

    def synchronize(self):
        _no_capture("a stream synchronize")
        _counts["syncs"] += 1

    def record(self, event=None):
        _counts["events"] += 1
        return event or Event()

    def wait_event(self, event):
        _counts["events"] += 1

    def is_capturing(self):
        return bool(_capturing) and _capturing[0][0] is self

    def begin_capture(self, mode=None):
        if _capturing:
            raise RuntimeError("fastnn-bench host stub: a stream is already capturing")
        _capturing.append((self, Graph()))

    def end_capture(self):
        if not self.is_capturing():
            raise RuntimeError("fastnn-bench host stub: end_capture on a stream that is not capturing")
        return _capturing.pop()[1]


Stream.null = Stream(null=True)
_streams: list = []


class _Pool:
    def __init__(self, *args, **kwargs):
        pass

    def malloc(self, nbytes):
        raise NotImplementedError("fastnn-bench host: the stub CuPy has no device memory")

    def used_bytes(self):
        return 0

    total_bytes = free_bytes = used_bytes

    def free_all_blocks(self, stream=None):
        pass

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


class OutOfMemoryError(MemoryError):
    pass


class Graph:
    """A captured graph: the kinds of its nodes; a launch (or upload) is one counted no-op."""

    def __init__(self):
        self.nodes = []

    def launch(self, stream=None):
        _no_capture("a graph launch")
        _counts["graph_launches"] += 1

    upload = launch

    def debug_dot_str(self):
        return "digraph dot {\n" + "".join(f"node{i} [label=\"{k}\"]\n" for i, k in enumerate(self.nodes)) + "}\n"


class Cublas:
    """The stub of ``fastnn.kernels.gpu.cublas.Cublas`` (fastnn's direct cuBLAS handle), which
    ``install_cublas`` puts in that module: under capture a GEMM is a graph node; eagerly (the
    handle's own check against NumPy, and the rehearsal before capture: once per capture) it computes
    the product on host memory, since that check compares values."""

    def __init__(self, stream, path=None):
        self.stream, self.path = stream, "fastnn-bench host stub"

    def gemm(self, a, b, out, trans_a=False, trans_b=False, precision="float32"):
        if _captured("gemms"):
            return out
        _counts["gemms"] += 1
        a, b = _host(a), _host(b)
        numpy.matmul(a.T if trans_a else a, b.T if trans_b else b, out=_host(out))
        return out

    def close(self):
        pass


def install_cublas():
    """Put ``Cublas`` (the stub handle) in ``fastnn.kernels.gpu.cublas``, so that ``fit(cuda_graph=True)``
    captures in "full" mode (one graph per step, GEMMs inside)."""
    from fastnn.kernels.gpu import cublas

    cublas.Cublas = Cublas


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _matmul(a, b, out=None, **kwargs):
    _count("gemms")
    if out is not None:
        return out
    return _empty(a.shape[:-1] + b.shape[-1:], numpy.result_type(a.dtype, b.dtype))


def _take(a, indices, axis=None, out=None, **kwargs):
    return a.take(indices, axis=axis, out=out)


def _asarray(a, dtype=None, order=None, **kwargs):
    if isinstance(a, ndarray):
        if dtype is None or a.dtype == numpy.dtype(dtype):
            return a
        return a.astype(dtype)
    _no_capture("a host-to-device copy from pageable memory")
    _counts["h2d"] += 1
    return numpy.array(a, dtype=dtype, copy=True).view(ndarray)


def _fill(name, value):
    def make(shape, dtype=float, order="C"):
        _op(name)
        return _empty(shape, dtype)
    return make


def _like(name):
    def make(a, dtype=None, order="K", subok=None, shape=None):
        if name != "empty_like":
            _op(name)
        return _empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)
    return make


def _generic(name, fn):
    def call(*args, **kwargs):
        _op(name)
        return _dev(fn(*(_host(a) for a in args), **{k: _host(v) for k, v in kwargs.items()}))
    call.__name__ = name
    return call


def make_stub():
    """The stub as a module named ``cupy``, with the submodules fastnn imports, as ``{name: module}``."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0+hoststub"
    _compute: dict = {}
    linalg_r = _module("cupy._core._routines_linalg", COMPUTE_TYPE_DEFAULT=0, COMPUTE_TYPE_TF32=4,
                       get_compute_type=lambda dt: _compute.get(numpy.dtype(dt), 0),
                       set_compute_type=lambda dt, v: _compute.__setitem__(numpy.dtype(dt), v))
    runtime = _Runtime("cupy.cuda.runtime")
    memory = _module("cupy.cuda.memory", OutOfMemoryError=OutOfMemoryError, MemoryPool=_Pool, PinnedMemoryPool=_Pool)
    nccl = _module("cupy.cuda.nccl", available=False)
    pool, pinned = _Pool(), _Pool()
    cuda = _module("cupy.cuda", Device=Device, runtime=runtime, Stream=Stream, Event=Event, Graph=Graph,
                   get_current_stream=lambda device_id=None: _streams[-1] if _streams else Stream.null,
                   MemoryPool=_Pool, PinnedMemoryPool=_Pool, memory=memory, nccl=nccl,
                   using_allocator=lambda allocator=None: contextlib.nullcontext(),
                   is_available=lambda: True, get_device_id=lambda: 0)
    core = _module("cupy._core", _routines_linalg=linalg_r, ndarray=ndarray)
    cupyx = _module("cupyx", empty_pinned=lambda shape, dtype=numpy.float64, order="C": numpy.empty(shape, dtype),
                    scatter_add=_generic("scatter_add", numpy.add.at))
    own = dict(ndarray=ndarray, RawKernel=RawKernel, RawModule=RawModule, cuda=cuda, _core=core,
               matmul=_matmul, dot=_matmul, take=_take, asarray=_asarray, array=_asarray,
               ascontiguousarray=lambda a, dtype=None: a if a.flags.c_contiguous and dtype is None else a.copy(),
               asnumpy=lambda a, stream=None, order="C", out=None: a.get(out=out) if isinstance(a, ndarray) else
               numpy.asarray(a), empty=lambda shape, dtype=float, order="C": _empty(shape, dtype),
               zeros=_fill("zeros", 0), ones=_fill("ones", 1), empty_like=_like("empty_like"),
               zeros_like=_like("zeros_like"), ones_like=_like("ones_like"),
               get_default_memory_pool=lambda: pool, get_default_pinned_memory_pool=lambda: pinned,
               get_array_module=lambda *a: cupy if any(isinstance(x, ndarray) for x in a) else numpy,
               fuse=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f),
               linalg=_module("cupy.linalg", norm=_generic("linalg.norm", numpy.linalg.norm)),
               random=_module("cupy.random"))
    cupy.__dict__.update(own)

    def getattr_(name):
        obj = getattr(numpy, name)  # AttributeError as a module's
        if isinstance(obj, type) or not callable(obj):
            return obj
        if isinstance(obj, numpy.ufunc):
            return obj   # dispatches to ndarray.__array_ufunc__ (stubbed) on device arrays
        wrapped = _generic(name, obj)
        setattr(cupy, name, wrapped)
        return wrapped
    cupy.__getattr__ = getattr_
    return {"cupy": cupy, "cupyx": cupyx, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime,
            "cupy.cuda.memory": memory, "cupy.cuda.nccl": nccl, "cupy._core": core,
            "cupy._core._routines_linalg": linalg_r, "cupy.linalg": cupy.linalg, "cupy.random": cupy.random}


def install():
    """Make the stub ``cupy`` for this process (before fastnn imports it); refuses once CuPy is imported."""
    if "cupy" in sys.modules and not getattr(sys.modules["cupy"], "__version__", "").endswith("+hoststub"):
        raise RuntimeError("fastnn-bench host: CuPy is already imported in this process; run the worker fresh")
    sys.modules.update(make_stub())
    os.environ.setdefault("FASTNN_DEVICE_DATA", "device")
    import functools

    from fastnn.backend import select  # its probe computes on the device, which the stub does not

    select.probe_cupy = functools.lru_cache(maxsize=None)(lambda device_id=0: select.Probe(
        True, "CuPy stub (fastnn-bench host: no GPU, launches stubbed)", detail={"device_name": "stub"}))
