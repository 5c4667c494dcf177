"""A strict stand-in for CuPy's streams, CUDA graphs and private memory pools, and for fastnn's
direct cuBLAS handle, on NumPy: what ``tests/test_graphs_plumbing.py`` runs ``fit(cuda_graph=True)``
(``fastnn.backend.graphs``) against on a machine without a GPU, with or without CuPy installed.

What a real capture does, and how this copies it
------------------------------------------------
- A kernel launched on a capturing stream does not run; it becomes a node of the graph, which
  keeps the kernel's arguments *as they were at the launch*: a pointer argument keeps pointing at
  the same memory (a replay reads and writes whatever that memory holds then), a by-value argument
  (a Python or NumPy scalar, a shape, a flag) keeps its value for ever. Here every launch made on
  a capturing stream is recorded as a ``_Node``: the callable, each array argument as a pointer
  (``_Ptr``: the owning allocation, weakly, the byte offset, shape, strides and dtype) and every
  other argument copied; a replay calls it again with those pointers re-read and those values.
  An array a launch *returned* at capture is written at replay: the node copies its new result
  into the recorded one, so whoever kept the returned array (``StepGraphs`` keeps the step's
  statistics) reads this replay's values.
- What counts as a launch: each ``FakeGpuOps`` primitive (the NumPy reference bodies of ``Ops``
  behind CuPy's backend name, one kernel each, as ``CupyOps``' fused kernels are), each ufunc
  call, NumPy function or array method on a ``DevArray`` (the stand-in for ``cupy.ndarray``: an
  ``ndarray`` subclass whose ``__array_ufunc__``/``__array_function__``/methods record), item
  assignment, array creations that fill memory (``zeros``, ``asarray`` with a new dtype, ...), and
  the GEMMs of the stand-in ``libcublas`` (``FakeCublas``: fastnn's own ``Cublas.gemm`` code, with
  its operand swap and leading dimensions, calling a column-major GEMM on raw pointers).
  Operations *inside* a primitive are part of that one kernel and are not recorded separately.
- The stand-in executes each launch at capture too (so that shapes and dtypes flow on), then, at
  ``end_capture``, undoes it: every array that existed before the capture is put back as it was,
  and every array made during the capture is filled with NaN (its values are garbage until a
  replay writes them). So a value computed at capture and never recomputed at replay shows.
- A host read of a device value during capture (``float()``, ``int()``, ``bool()``, ``.item()``,
  ``.get()``, ``cupy.asnumpy``, a boolean-mask index, ``synchronize()``) and a host-to-device copy
  from pageable memory raise ``CaptureError`` and invalidate the capture (``end_capture`` raises
  too), as CUDA does. CuPy's own GEMM path (``FakeGpuOps.gemm`` without fastnn's recorder,
  ``cupy_matmul``) raises CuPy's ``NotImplementedError``: CuPy refuses cuBLAS during capture.
- Memory: a graph holds raw addresses, not arrays. Arrays allocated during a capture under
  ``cupy.cuda.using_allocator(pool.malloc)`` are kept alive by that ``MemoryPool`` (as CuPy's pool
  keeps its blocks); any other allocation a node points at must be kept alive by its owner. A
  replay whose buffer was freed raises (on a GPU it would read or corrupt reused memory).

What it cannot show: anything about CuPy's or the driver's real behaviour (which kernels a
capture accepts, the cuBLAS algorithms, TF32 rounding, timing). The ``gpu`` tests and
``bench/probes/graph_capture.py`` do that on a device. Nor can it see past NumPy itself: a
``DevArray`` turned into a plain array by ``numpy.asarray`` (CuPy would refuse that) and computed
on is neither recorded nor refused, until the plain result reaches a launch (then it raises as a
host array passed to a kernel).
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import types
import weakref

import numpy

from fastnn import feeding
from fastnn.backend.ops import HOT_PRIMITIVES, Ops
from fastnn.kernels.gpu import cublas as _cublas


class CaptureError(RuntimeError):
    """What CUDA reports for an operation a stream capture cannot hold."""


class _State:
    depth = 0     # > 0 while a kernel body (at capture or replay) runs: what it does inside is that kernel
    pool = None   # the MemoryPool of the active ``cupy.cuda.using_allocator``


_state = _State()


def _tape():
    """The current stream's capture tape, unless a kernel body is running (or nothing captures)."""
    if _state.depth:
        return None
    stream = Stream.current
    return None if stream is None else stream.tape


def capturing():
    """True while the current stream captures (whatever runs now is a launch to record)."""
    return _tape() is not None


def _host_read(what):
    """``what`` needs a device value on the host: refused during a capture, which it invalidates."""
    tape = _tape()
    if tape is not None:
        tape.invalid = tape.invalid or what
        raise CaptureError(f"cudaErrorStreamCaptureUnsupported: {what} reads device memory on the host while "
                           f"the stream captures (a host sync); the capture is invalidated")


class _Kernel:
    """``with _KERNEL:`` marks a kernel body: what runs inside is not a launch of its own."""

    def __enter__(self):
        _state.depth += 1

    def __exit__(self, *exc):
        _state.depth -= 1


_KERNEL = _Kernel()


# ------------------------------------------------------------------ arrays
def _addr(a):
    return a.__array_interface__["data"][0]


def _root(a):
    """The array that owns ``a``'s memory (the allocation)."""
    while isinstance(a.base, numpy.ndarray):
        a = a.base
    return a


def _raw(x, back=None):
    """``x`` with every ``DevArray`` in it viewed as a plain ``ndarray`` (so NumPy does not dispatch
    again); ``back`` maps each view's id to the ``DevArray`` it views."""
    if isinstance(x, DevArray):
        r = x.view(numpy.ndarray)
        if back is not None:
            back[id(r)] = x
        return r
    if type(x) in (tuple, list):
        return type(x)(_raw(v, back) for v in x)
    return x


def _wrap(r, back=None):
    """NumPy's result as the stand-in's: arrays as ``DevArray`` (the caller's own ``out`` array
    where NumPy returned it), NumPy scalars as 0-d arrays (CuPy returns 0-d arrays)."""
    if isinstance(r, numpy.ndarray):
        if back is not None and id(r) in back:
            return back[id(r)]
        return r if isinstance(r, DevArray) else r.view(DevArray)
    if isinstance(r, numpy.generic):
        return numpy.asarray(r).view(DevArray)
    if type(r) in (tuple, list):
        return type(r)(_wrap(v, back) for v in r)
    return r


def _call_raw(fn, args, kwargs):
    back = {}
    result = fn(*_raw(args, back), **{k: _raw(v, back) for k, v in kwargs.items()})
    return _wrap(result, back)


def _ufunc(ufunc, method, *inputs, **kwargs):
    return _call_raw(getattr(ufunc, method), inputs, kwargs)


def _function(func, *args, **kwargs):
    return _call_raw(func, args, kwargs)


def _method(base, self, *args, **kwargs):
    return _call_raw(base, (self,) + args, kwargs)


def _setitem(a, key, value):
    back = {}
    _raw(a).__setitem__(_raw(key, back), _raw(value, back))


def _is_view(result, of):
    return isinstance(result, numpy.ndarray) and _root(result) is _root(of)


def _has_bool_array(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, numpy.ndarray) and k.dtype == numpy.bool_ for k in keys)


def _recording_method(name):
    base = getattr(numpy.ndarray, name)

    def method(self, *args, **kwargs):
        tape = _tape()
        if tape is not None:
            return tape.launch(f"ndarray.{name}", functools.partial(_method, base), (self,) + args, kwargs)
        return _method(base, self, *args, **kwargs)
    method.__name__ = name
    return method


def _maybe_view_method(name):
    """``reshape``/``ravel``: a view (no launch) when the layout allows, else a copy kernel."""
    base = getattr(numpy.ndarray, name)

    def method(self, *args, **kwargs):
        result = _method(base, self, *args, **kwargs)
        tape = _tape()
        if tape is None or _is_view(result, self):
            return result
        return tape.launch(f"ndarray.{name}", functools.partial(_method, base), (self,) + args, kwargs)
    method.__name__ = name
    return method


def _host_read_method(name, what):
    base = getattr(numpy.ndarray, name)

    def method(self, *args, **kwargs):
        _host_read(what)
        return base(self, *args, **kwargs)
    method.__name__ = name
    return method


class DevArray(numpy.ndarray):
    """The stand-in for ``cupy.ndarray``: a NumPy array whose operations are kernel launches,
    recorded while the current stream captures; a host read then raises."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        tape = _tape()
        if tape is not None:
            return tape.launch(f"{ufunc.__name__}.{method}", functools.partial(_ufunc, ufunc, method), inputs, kwargs)
        return _ufunc(ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        if func in _NO_LAUNCH:
            return super().__array_function__(func, types_, _raw(args), _raw(kwargs))
        tape = _tape()
        if tape is not None:
            return tape.launch(func.__name__, functools.partial(_function, func), args, kwargs)
        return _function(func, *args, **kwargs)

    def __getitem__(self, key):
        if _has_bool_array(key):
            _host_read("boolean-mask indexing")  # CuPy syncs for the size of the result
        result = _wrap(_raw(self)[_raw(key)])
        tape = _tape()
        if tape is None or _is_view(result, self):
            return result
        return tape.launch("ndarray.__getitem__", functools.partial(_method, numpy.ndarray.__getitem__),
                           (self, key), {})

    def __setitem__(self, key, value):
        tape = _tape()
        if tape is not None:
            return tape.launch("ndarray.__setitem__", _setitem, (self, key, value), {})
        _setitem(self, key, value)

    @property
    def data(self):
        """CuPy's ``MemoryPointer`` in brief: ``.ptr`` is the address of the first element."""
        return types.SimpleNamespace(ptr=_addr(self))

    def get(self):
        """CuPy's device-to-host copy."""
        _host_read("ndarray.get()")
        return numpy.array(self.view(numpy.ndarray))

    def __repr__(self):
        _host_read("repr()")
        return "DevArray(" + repr(self.view(numpy.ndarray)) + ")"

    def __str__(self):
        _host_read("str()")
        return str(self.view(numpy.ndarray))

    def __format__(self, spec):
        _host_read("format()")
        return format(self.view(numpy.ndarray), spec)


for _name in ("copy", "astype", "fill", "flatten", "take", "put", "argmax", "argmin", "argsort", "sort",
              "nonzero", "repeat", "dot", "round", "cumsum", "cumprod", "searchsorted", "choose", "compress",
              "trace", "__copy__", "__deepcopy__"):
    setattr(DevArray, _name, _recording_method(_name))
for _name in ("reshape", "ravel"):
    setattr(DevArray, _name, _maybe_view_method(_name))
for _name, _what in (("__float__", "float()"), ("__int__", "int()"), ("__index__", "an index or size"),
                     ("__bool__", "bool()"), ("__complex__", "complex()"), ("item", "ndarray.item()"),
                     ("tolist", "ndarray.tolist()"), ("tobytes", "ndarray.tobytes()")):
    setattr(DevArray, _name, _host_read_method(_name, _what))

# NumPy functions that read only shapes and dtypes: no kernel behind them.
_NO_LAUNCH = {numpy.shape, numpy.ndim, numpy.size, numpy.result_type, numpy.can_cast, numpy.min_scalar_type,
              numpy.may_share_memory, numpy.shares_memory, numpy.iscomplexobj, numpy.isrealobj}


class _Ptr:
    """A pointer argument of a captured launch: the address of an allocation's memory, not an array
    object. The allocation is referenced weakly, as a graph does not keep memory alive."""

    __slots__ = ("root", "addr", "shape", "strides", "dtype")

    def __init__(self, a):
        self.root = weakref.ref(_root(a))
        self.addr, self.shape, self.strides, self.dtype = _addr(a), a.shape, a.strides, a.dtype

    def deref(self):
        root = self.root()
        if root is None:
            raise CaptureError("cudaErrorIllegalAddress: a replayed kernel's buffer was freed after the capture "
                               "(nothing kept the array alive, and its memory may have been handed out again)")
        mem = types.SimpleNamespace(owner=root, __array_interface__={
            "data": (self.addr, False), "shape": self.shape, "strides": self.strides, "typestr": self.dtype.str,
            "version": 3})
        return numpy.asarray(mem).view(DevArray)


def _immutable(x):
    return isinstance(x, (int, float, complex, str, bytes, type(None), slice, type(Ellipsis), numpy.generic,
                          numpy.dtype, type))


class _Node:
    """One captured launch."""

    __slots__ = ("name", "fn", "args", "kwargs", "results", "touches")

    def __init__(self, name, fn, args, kwargs, results, touches):
        self.name, self.fn, self.args, self.kwargs = name, fn, args, kwargs
        self.results = results    # [(path in the result, _Ptr)]: the arrays the launch made at capture
        self.touches = touches    # [_Ptr]: raw-pointer operands (cuBLAS), checked alive at replay

    def replay(self):
        for ptr in self.touches:
            ptr.deref()
        args, kwargs = _thaw(self.args), _thaw(self.kwargs)
        with _KERNEL:
            result = self.fn(*args, **kwargs)
            for path, ptr in self.results:
                src = result
                for key in path:
                    src = src[key]
                ptr.deref().view(numpy.ndarray)[...] = _raw(src)

    def __repr__(self):
        return f"<node {self.name}>"


def _thaw(x):
    if isinstance(x, _Ptr):
        return x.deref()
    if type(x) in (tuple, list):
        return type(x)(_thaw(v) for v in x)
    if type(x) is dict:
        return {k: _thaw(v) for k, v in x.items()}
    return x


def _leaves(x, path=()):
    if isinstance(x, numpy.ndarray) or _immutable(x):
        yield path, x
    elif type(x) in (tuple, list):
        for i, v in enumerate(x):
            yield from _leaves(v, path + (i,))
    elif type(x) is dict:
        for k, v in x.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, x


class _Tape:
    """What one ``begin_capture() ... end_capture()`` records."""

    def __init__(self):
        self.nodes = []
        self.invalid = None     # why the capture is invalidated (a host read), if it is
        self.saved = {}         # id(root) -> (root, copy): arrays from before the capture, as they were
        self.made = {}          # id(root) -> root: allocations made during the capture

    def _freeze(self, x, arrays):
        """``x`` as a launch keeps it: arrays as pointers, everything else copied (by value)."""
        if isinstance(x, DevArray):
            arrays.append(x)
            return _Ptr(x)
        if isinstance(x, numpy.ndarray):
            self.invalid = self.invalid or "a host array passed to a kernel"
            raise CaptureError(f"a host numpy array {x.shape} passed to a kernel during capture (CuPy refuses host "
                               f"arrays; a host-to-device copy from pageable memory cannot be captured)")
        if type(x) in (tuple, list):
            return type(x)(self._freeze(v, arrays) for v in x)
        if type(x) is dict:
            return {k: self._freeze(v, arrays) for k, v in x.items()}
        if _immutable(x):
            return x
        raise TypeError(f"the capture stand-in does not know how a kernel takes a {type(x).__name__} argument")

    def _see(self, a):
        root = _root(a)
        key = id(root)
        if key not in self.made and key not in self.saved:
            self.saved[key] = (root, root.view(numpy.ndarray).copy())

    def made_now(self, a):
        """``a`` was allocated during this capture: from the private pool when one is active."""
        root = _root(a)
        self.made[id(root)] = root
        if _state.pool is not None:
            _state.pool.blocks.append(root)

    def launch(self, name, fn, args, kwargs, touches=()):
        """Record the launch ``fn(*args, **kwargs)`` and run it now (undone at ``end_capture``)."""
        arrays = list(touches)
        frozen_args, frozen_kwargs = self._freeze(args, arrays), self._freeze(kwargs, arrays)
        for a in arrays:
            self._see(a)
        with _KERNEL, numpy.errstate(all="ignore"):  # garbage in (split mode: GEMMs not run at capture)
            result = fn(*args, **kwargs)
        roots = {id(_root(a)) for a in arrays}
        results = []
        for path, leaf in _leaves(result):
            if isinstance(leaf, numpy.ndarray):
                if id(_root(leaf)) not in roots:   # a new array: written again by every replay
                    results.append((path, _Ptr(leaf)))
                    self.made_now(leaf)
            elif leaf is not None and not isinstance(leaf, (str, numpy.dtype, type)):
                raise CaptureError(f"{name} returned a host value ({type(leaf).__name__}) during capture")
        self.nodes.append(_Node(name, fn, frozen_args, frozen_kwargs, results, [_Ptr(a) for a in touches]))
        return result

    def close(self):
        """Undo what running the launches at capture did: nothing runs at a real capture."""
        for root, before in self.saved.values():
            root.view(numpy.ndarray)[...] = before
        for root in self.made.values():
            if root.dtype.kind in "fc":
                root.view(numpy.ndarray).fill(numpy.nan)
        self.saved, self.made = {}, {}


# ------------------------------------------------------------------ cupy.cuda
class Event:
    pass


class Stream:
    """``cupy.cuda.Stream``: ``with stream:`` makes it current; it captures between
    ``begin_capture`` and ``end_capture``."""

    current = None
    null = None
    _by_ptr = weakref.WeakValueDictionary()
    _ptrs = itertools.count(0x1000)

    def __init__(self, non_blocking=False):
        self.non_blocking = non_blocking
        self.tape, self.captures = None, 0
        self._outer = []
        self.ptr = next(Stream._ptrs)
        Stream._by_ptr[self.ptr] = self

    @property
    def capturing(self):
        return self.tape is not None

    def __enter__(self):
        self._outer.append(Stream.current)
        Stream.current = self
        return self

    def __exit__(self, *exc):
        Stream.current = self._outer.pop()

    def begin_capture(self):
        if not self.non_blocking:
            raise RuntimeError("the legacy default stream cannot capture (CuPy: use a non_blocking stream)")
        if self.tape is not None:
            raise RuntimeError("begin_capture while capturing")
        self.tape = _Tape()
        self.captures += 1

    def end_capture(self):
        if self.tape is None:
            raise RuntimeError("end_capture without begin_capture")
        tape, self.tape = self.tape, None
        tape.close()
        if tape.invalid:
            raise CaptureError(f"cudaErrorStreamCaptureInvalidated ({tape.invalid})")
        return Graph(tape.nodes)

    def is_capturing(self):
        return self.capturing

    def record(self, event=None):
        return Event()

    def wait_event(self, event):
        assert isinstance(event, Event)

    def synchronize(self):
        _host_read("Stream.synchronize()")


Stream.null = Stream()


class Graph:
    """``cupy.cuda.Graph``: ``launch`` replays the recorded nodes in order."""

    launches = 0

    def __init__(self, nodes):
        self.nodes = nodes

    def launch(self, stream=None):
        if _tape() is not None:
            raise RuntimeError("the stand-in does not capture a graph launch into another graph")
        Graph.launches += 1
        for node in self.nodes:
            node.replay()

    def upload(self, stream=None):
        pass

    def debug_dot_str(self):
        return "digraph {%s}" % "".join(f" node_{i}" for i in range(len(self.nodes)))


class MemoryPool:
    """``cupy.cuda.MemoryPool`` as a private graph pool: it keeps what was allocated from it."""

    def __init__(self):
        self.blocks = []

    def malloc(self, nbytes):
        raise AssertionError("the stand-in allocates through FakeCupy, never through malloc")

    def free_all_blocks(self):
        pass


class using_allocator:
    """``cupy.cuda.using_allocator(pool.malloc)``: allocations in the block come from ``pool``."""

    def __init__(self, malloc):
        self.pool = getattr(malloc, "__self__", None)

    def __enter__(self):
        self._outer, _state.pool = _state.pool, self.pool
        return self

    def __exit__(self, *exc):
        _state.pool = self._outer


class Device:
    def __init__(self, device_id=0):
        self.id = device_id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def synchronize(self):
        _host_read("Device.synchronize()")


# ------------------------------------------------------------------ the cupy module
_EMPTY = {"empty", "empty_like"}                       # allocation only
_FILLED = {"zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "linspace", "eye",
           "identity"}                                 # allocation and a fill kernel
_CONVERT = {"asarray", "asanyarray", "array", "ascontiguousarray"}


def _create(func, *args, **kwargs):
    return _wrap(func(*_raw(args), **_raw(kwargs)))


class FakeCupy(types.ModuleType):
    """NumPy under CuPy's name: arrays are ``DevArray``; ``cuda`` holds the stand-ins above."""

    def __init__(self):
        super().__init__("fakecupy")
        self.ndarray = DevArray
        self.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, Graph=Graph, MemoryPool=MemoryPool,
                                          using_allocator=using_allocator, Device=Device)

    def __getattr__(self, name):
        value = getattr(numpy, name)
        if name in _EMPTY:
            return functools.partial(self._empty, value)
        if name in _FILLED:
            return functools.partial(self._filled, name, value)
        if name in _CONVERT:
            return functools.partial(self._convert, name)
        return value

    @staticmethod
    def _empty(func, *args, **kwargs):
        a = _create(func, *args, **kwargs)
        tape = _tape()
        if tape is not None:
            tape.made_now(a)
        return a

    @staticmethod
    def _filled(name, func, *args, **kwargs):
        tape = _tape()
        if tape is not None:
            return tape.launch(name, functools.partial(_create, func), args, kwargs)
        return _create(func, *args, **kwargs)

    @staticmethod
    def _convert(name, obj, dtype=None, *args, **kwargs):
        if isinstance(obj, DevArray):
            same = dtype is None or numpy.dtype(dtype) == obj.dtype
            if same and name != "array" and (name != "ascontiguousarray" or obj.flags.c_contiguous):
                return obj
            tape = _tape()
            fn = functools.partial(_create, getattr(numpy, "array" if name == "array" else "ascontiguousarray"))
            if tape is not None:
                return tape.launch(name, fn, (obj,), {"dtype": dtype})
            return fn(obj, dtype=dtype)
        if _tape() is not None:
            _host_read(f"cupy.{name} of host data (a copy from pageable host memory)")
        return _create(numpy.ascontiguousarray if name == "ascontiguousarray" else numpy.array, obj, dtype,
                       *args, **kwargs)

    @staticmethod
    def asnumpy(a, stream=None):
        if isinstance(a, DevArray):
            _host_read("cupy.asnumpy")
            return numpy.array(a.view(numpy.ndarray))
        return numpy.asarray(a)


# ------------------------------------------------------------------ the backend
def _primitive(name):
    base = getattr(Ops, name)

    @functools.wraps(base)
    def kernel(self, *args, **kwargs):
        tape = _tape()
        if tape is not None:
            return tape.launch(f"ops.{name}", functools.partial(base, self), args, kwargs)
        with _KERNEL:
            return base(self, *args, **kwargs)
    return kernel


CUBLAS_REFUSED = "calling cuBLAS API during stream capture is currently unsupported"


class FakeGpuOps(Ops):
    """The NumPy reference kernels behind a CuPy-shaped backend (``name == "cupy"``): each primitive
    is one kernel launch; GEMMs go to ``fastnn.backend.graphs``' recorder while it captures (``capture``),
    as ``CupyOps.gemm`` does, and CuPy's own cuBLAS path is refused during a capture."""

    name = "cupy"
    device_arrays = True
    captures_graphs = True
    device = "cuda:0"
    device_id = 0

    def __init__(self):
        self.xp = FakeCupy()
        self.capture = None

    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def asnumpy(self, x):
        return self.xp.asnumpy(x)

    def owns(self, x):
        return isinstance(x, DevArray)

    def alloc(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        _host_read("synchronize()")

    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        if self.capture is not None:
            return self.capture.gemm(a, b, trans_a, trans_b, out)
        if _tape() is not None:
            raise NotImplementedError(CUBLAS_REFUSED)
        with _KERNEL:
            return super().gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out)


for _name in HOT_PRIMITIVES + ("dropout_mask_dev", "step_dev"):
    setattr(FakeGpuOps, _name, _primitive(_name))


def cupy_matmul(cupy, a, b, out=None, precision=None):
    """Stands for ``fastnn.backend.cupy_ops.cupy_matmul`` (CuPy's GEMM with fastnn's precision),
    which ``fastnn.backend.graphs`` runs between the graphs in "split" mode."""
    assert isinstance(cupy, FakeCupy) and precision in (None, "float32", "tf32")
    if _tape() is not None:
        raise NotImplementedError(CUBLAS_REFUSED)
    return cupy.matmul(a, b, out=out)


class Transfer(feeding.NumpyTransfer):
    """``fastnn.feeding``'s transfer protocol with device buffers on the stand-in."""

    def __init__(self, ops):
        super().__init__(ops)
        self.ops = ops

    def device_empty(self, shape, dtype):
        return self.ops.xp.empty(shape, dtype=dtype)


# ------------------------------------------------------------------ cuBLAS
_CUDA_R_32F, _COMPUTE_32F = _cublas.CUDA_R_32F, 68


def _span_view(ptr, dtype, rows, cols, ld):
    """The column-major ``rows x cols`` matrix with leading dimension ``ld`` at address ``ptr``."""
    isz = numpy.dtype(dtype).itemsize
    mem = types.SimpleNamespace(__array_interface__={
        "data": (ptr, False), "shape": (rows, cols), "strides": (isz, ld * isz), "typestr": numpy.dtype(dtype).str,
        "version": 3})
    return numpy.asarray(mem)


class FakeLibcublas:
    """The few ``libcublas`` entry points ``fastnn.kernels.gpu.cublas`` calls, on host memory.

    A GEMM on a handle whose stream captures is recorded (pointers live, ``alpha``/``beta`` read
    from host memory now and frozen: pointer mode host) and run now; otherwise it runs now. Each
    operand's span (from its pointer, size and leading dimension) must lie inside one of the arrays
    ``FakeCublas.gemm`` was given, or the call fails as a device would (out of bounds).
    """

    def __init__(self):
        self.streams = {}
        self.operands = ()
        self.calls = []        # (name, captured) of every GEMM issued
        self._handles = itertools.count(1)

    def cublasCreate_v2(self, handle_ref):
        handle_ref._obj.value = next(self._handles)
        return 0

    def cublasDestroy_v2(self, handle):
        return 0

    def cublasSetStream_v2(self, handle, stream_ptr):
        self.streams[handle.value] = Stream._by_ptr[stream_ptr.value]
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, nbytes):
        return 0

    def cublasSgemm_v2(self, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        return self._gemm("cublasSgemm_v2", numpy.float32, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta,
                          C, ldc)

    def cublasDgemm_v2(self, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        return self._gemm("cublasDgemm_v2", numpy.float64, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta,
                          C, ldc)

    def cublasGemmEx(self, handle, ta, tb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc,
                     compute, algo):
        if (a_type, b_type, c_type) != (_CUDA_R_32F,) * 3 or compute not in (_COMPUTE_32F,
                                                                             _cublas.COMPUTE_32F_FAST_TF32):
            return 7  # CUBLAS_STATUS_INVALID_VALUE
        return self._gemm("cublasGemmEx", numpy.float32, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta,
                          C, ldc)

    def _gemm(self, name, dtype, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        alpha, beta = alpha._obj.value, beta._obj.value   # host scalars, read at the call
        a_rows, a_cols = (m, k) if ta == _cublas.OP_N else (k, m)
        b_rows, b_cols = (k, n) if tb == _cublas.OP_N else (n, k)
        isz = numpy.dtype(dtype).itemsize
        for what, ptr, rows, cols, ld in (("A", A.value, a_rows, a_cols, lda), ("B", B.value, b_rows, b_cols, ldb),
                                          ("C", C.value, m, n, ldc)):
            lo, hi = ptr, ptr + ((cols - 1) * ld + rows) * isz
            if ld < rows or not any(_addr(o) <= lo and hi <= _addr(o) + o.nbytes and o.dtype == dtype
                                    for o in self.operands):
                return 14  # CUBLAS_STATUS_INTERNAL_ERROR: on a device, an out-of-bounds access
        fn = functools.partial(_colmajor_gemm, dtype, ta, tb, m, n, k, alpha, A.value, lda, B.value, ldb, beta,
                               C.value, ldc)
        tape = self.streams[handle.value].tape
        self.calls.append((name, tape is not None))
        if tape is not None:
            tape.launch(name, fn, (), {}, touches=self.operands)
        else:
            fn()
        return 0


def _colmajor_gemm(dtype, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """``C = alpha op(A) op(B) + beta C``, column-major, on raw pointers."""
    a = _span_view(A, dtype, *((m, k) if ta == _cublas.OP_N else (k, m)), lda)
    b = _span_view(B, dtype, *((k, n) if tb == _cublas.OP_N else (n, k)), ldb)
    c = _span_view(C, dtype, m, n, ldc)
    op_a = a if ta == _cublas.OP_N else a.T
    op_b = b if tb == _cublas.OP_N else b.T
    if alpha == 1 and beta == 0:
        # C^T = op(B)^T op(A)^T: fastnn's row-major out = op(a) @ op(b) with the very operand views
        # (shapes and strides) the eager ``Ops.gemm`` multiplies, so the result is bit for bit its own.
        numpy.matmul(op_b.T, op_a.T, out=c.T)
    else:
        c[...] = dtype(alpha) * (op_a @ op_b) + dtype(beta) * c


class FakeCublas(_cublas.Cublas):
    """``fastnn.kernels.gpu.cublas.Cublas`` on ``FakeLibcublas``: its own ``gemm`` code runs."""

    def __init__(self, stream, path=None):
        self.path = "<stand-in libcublas>"
        self.lib = lib = FakeLibcublas()
        self.handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", lib.cublasCreate_v2(ctypes.byref(self.handle)))
        self.stream = stream
        self._check("cublasSetStream_v2", lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)))
        self.workspace = numpy.empty(1 << 10, dtype=numpy.uint8).view(DevArray)
        self._check("cublasSetWorkspace_v2", lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.workspace.data.ptr), self.workspace.nbytes))
        self._one = {numpy.dtype(numpy.float32): ctypes.c_float(1.0), numpy.dtype(numpy.float64): ctypes.c_double(1.0)}
        self._zero = {numpy.dtype(numpy.float32): ctypes.c_float(0.0), numpy.dtype(numpy.float64): ctypes.c_double(0.0)}

    def gemm(self, a, b, out, trans_a=False, trans_b=False, precision="float32"):
        self.lib.operands = tuple(x for x in (a, b, out) if isinstance(x, DevArray))
        try:
            return super().gemm(a, b, out, trans_a, trans_b, precision)
        finally:
            self.lib.operands = ()


class NoCublas(_cublas.Cublas):
    """No usable cuBLAS handle (as without a GPU): ``fastnn.backend.graphs`` takes "split" mode."""

    def __init__(self, stream, path=None):
        raise _cublas.CublasError("no libcublas (the stand-in's split mode)")

    def __del__(self):
        pass
