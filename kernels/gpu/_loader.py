"""Build and cache the CUDA modules of ``fastnn.kernels.gpu``, and shared launcher helpers.

Each ``<family>.cu`` next to this file becomes one ``cupy.RawModule``, compiled by NVRTC at
first use on each device, with every ``fastnn_<name><T>`` template instantiated for ``float``
and ``double`` through ``name_expressions``; CuPy's disk cache (``CUPY_CACHE_DIR``) serves later
processes (CuPy >= 14.2 caches templated modules). Nothing here imports CuPy at module level, so
the launcher modules import on machines without CuPy or a GPU.

Shared device helpers (``FMath``, the activation functions, warp/block/column sums) live once in
``common.cuh``; each ``.cu`` pulls them in with the single line ``#include "common.cuh"``. The
loader does not let NVRTC resolve that include (no ``-I``): CuPy's disk cache keys on the source
string given to ``RawModule`` plus the options, not on the contents of included headers, so an
edited header behind an unchanged ``.cu`` would keep serving stale binaries. Instead ``source()``
pastes the header's text in place of that line (between ``// begin common.cuh`` and
``// end common.cuh``, with ``#line`` directives so compiler messages still name the right file
and line), and ``module()`` compiles that expanded text: any change to ``common.cuh`` changes the
cache key. Any other quoted ``#include`` in a ``.cu`` (or one inside the header) is a
``ValueError``, since it would reintroduce exactly that staleness. nvcc (``tests/test_cuda_compile.py``)
compiles the ``.cu`` files as they are, resolving the include next to them.

Launch sizes come from the device's properties: grid-stride kernels get at most
``BLOCKS_PER_SM`` blocks per multiprocessor, so any grid is correct and the size is only tuning.
"""
from __future__ import annotations

import functools
import inspect
import re
import sys
import threading
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
HEADER = "common.cuh"  # the shared device helpers, pasted into every source by source()
_INCLUDE_LINE = f'#include "{HEADER}"'
_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s*"')  # any quoted include, however spaced
CTYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
# --fmad=false: products and sums round separately, as NumPy's do, so the kernels reproduce the
# reference's arithmetic. (CuPy adds -ftz=true and -arch itself; GPU-NOTES §2.)
COMPILE_OPTIONS = ("--fmad=false",)
BLOCK = 256          # threads per block of the elementwise and 1-D reduction kernels
COL_BLOCK = (32, 8)  # (columns, rows) per block of the column-reduction kernels
BLOCKS_PER_SM = 8    # grid-stride loops: at most this many blocks per multiprocessor
NARROW_LIMIT = 2**31 - 2**26  # below it, a launch's indices (plus a grid's worth of threads) fit in int32
COL_TILE_MIN_ROWS = 64  # column reductions: a row tile has at least this many rows (8 per thread)
COL_TILE_FROM_ROWS = 1024  # ... and fewer rows stay one tile: the extra launch would cost more (H200:
                           # 2 tiles at 128 rows took 36 us a call against 23 us for one)
COL_BLOCKS_PER_SM = 4   # column reductions: row tiles are added until this many blocks per SM

_lock = threading.Lock()
_modules: dict = {}    # (family, device id) -> cupy.RawModule
_functions: dict = {}  # (family, kernel, dtype, device id) -> cupy.RawKernel
_sm_counts: dict = {}  # device id -> multiprocessor count
_partials: dict = {}   # (device id, stream pointer, thread) -> float64 buffers of per-tile column sums
_tilings: dict = {}    # (n, d, device id) -> (tiles, rows per tile)
_grids: dict = {}      # (n, block, device id) -> blocks of grid_1d
_launches: dict = {}   # (family, kernel, dtype, n, block, device id) -> (kernel, (blocks,)) of kernel_1d
_launch_owner: list = [None, None]  # the function and grid_1d that _launches was filled through


def source_path(family: str) -> Path:
    """The ``.cu`` file of a kernel family (shipped as package data)."""
    return HERE / f"{family}.cu"


def header_path() -> Path:
    """``common.cuh``, the shared device helpers (shipped as package data next to the ``.cu`` files)."""
    return HERE / HEADER


def source(family: str) -> str:
    """The text of ``<family>.cu`` with ``#include "common.cuh"`` replaced by the header's text.

    Only a line that is exactly ``#include "common.cuh"`` (surrounding whitespace aside) is
    expanded; any other quoted include, in the ``.cu`` or in the header, raises ``ValueError``
    naming the file and line. Angle-bracket includes are left to NVRTC. See the module docstring
    for why the expansion happens here rather than through an include path.
    """
    path, hdr = source_path(family), header_path()
    header = hdr.read_text(encoding="utf-8")
    for no, line in enumerate(header.splitlines(), 1):
        if _QUOTED_INCLUDE.match(line):
            raise ValueError(f"{hdr.name}:{no}: quoted #include in the shared header is not supported "
                             f"(the loader expands only {_INCLUDE_LINE!r} in the .cu files): {line.strip()!r}")
    if not header.endswith("\n"):
        header += "\n"
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
        if line.strip() == _INCLUDE_LINE:
            out.append(f"// begin {HEADER}\n#line 1 \"{HEADER}\"\n{header}"
                       f"// end {HEADER}\n#line {no + 1} \"{path.name}\"\n")
        elif _QUOTED_INCLUDE.match(line):
            raise ValueError(f"{path.name}:{no}: only {_INCLUDE_LINE!r} may be included with quotes "
                             f"(the loader pastes it in; other headers would escape CuPy's cache key): "
                             f"{line.strip()!r}")
        else:
            out.append(line)
    return "".join(out)


def name_expressions(kernels) -> list:
    """``['fastnn_x<float>', 'fastnn_x<double>', ...]`` for every kernel name."""
    return [f"{k}<{c}>" for k in kernels for c in CTYPES.values()]


def _cupy():
    import cupy

    return cupy


_get_device = [None, None, None]  # [the _cupy and sys.modules["cupy"] it was read through, getDevice]


def _device_id() -> int:
    """The current CUDA device (``cudaGetDevice`` on every call: a ``with Device(n)`` block changes it);
    only the lookup of CuPy's function is cached, made again when ``_cupy`` or the module is replaced."""
    src, mod, get = _get_device
    if src is not _cupy or mod is not sys.modules.get("cupy"):
        get = _cupy().cuda.runtime.getDevice
        _get_device[:] = (_cupy, sys.modules.get("cupy"), get)
    return get()


def module(family: str, kernels):
    """The compiled ``RawModule`` of ``family`` on the current device (built once per device)."""
    key = (family, _device_id())
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                cupy = _cupy()
                mod = cupy.RawModule(code=source(family),
                                     options=COMPILE_OPTIONS, name_expressions=name_expressions(kernels))
                _modules[key] = mod
    return mod


def function(family: str, kernels, name: str, dtype, dev: int | None = None):
    """The ``name<T>`` kernel of ``family`` for ``dtype`` (float32 -> float, float64 -> double), on
    device ``dev`` (the current device when None; a launcher that already read it passes it on)."""
    if dev is None:
        dev = _device_id()
    fn = _functions.get((family, name, dtype, dev))  # dtype as given: a dtype or a scalar type both hash
    if fn is None:
        dtype = numpy.dtype(dtype)
        key = (family, name, dtype, dev)
        fn = _functions.get(key)
        if fn is None:
            fn = module(family, kernels).get_function(f"{name}<{CTYPES[dtype]}>")
            _functions[key] = fn
        _functions[(family, name, dtype.type, dev)] = fn
    return fn


def kernel_1d(family: str, kernels, name: str, dtype, n: int, block: int = BLOCK):
    """``(kernel, (grid,), dev)`` for a grid-stride launch of ``name<T>`` over ``n`` items on the
    current device ``dev``: what ``function`` and ``grid_1d`` give, looked up once per
    (kernel, dtype, size, device) and then served from one dict read."""
    if _launch_owner[0] is not function or _launch_owner[1] is not grid_1d:
        # ``function``/``grid_1d`` replaced (the strict-kernel switch counts launches, tests record
        # them): what was looked up through the old ones is forgotten
        _launches.clear()
        _launch_owner[:] = (function, grid_1d)
    dev = _device_id()
    key = (family, name, dtype, n, block, dev)
    hit = _launches.get(key)
    if hit is None:
        hit = (function(family, kernels, name, dtype, dev), (grid_1d(n, block, dev),))
        if len(_launches) > 4096:   # sizes seen by a long-lived process: bounded
            _launches.clear()
        _launches[key] = hit
    return hit[0], hit[1], dev


def kernel_rows(family: str, kernels, name: str, dtype, n_rows: int):
    """``kernel_1d`` for a warp-per-row kernel: ``BLOCK // 32`` rows per block, capped by the device."""
    return kernel_1d(family, kernels, name, dtype, n_rows, BLOCK // 32)


def clear_caches():
    """Forget the per-device lookups (modules, kernels, launch sizes, SM counts, tilings), for tests
    that swap the CuPy underneath. Buffers (``unused``, ``column_partials``) are kept: a captured
    CUDA graph may hold their addresses."""
    for cache in (_modules, _functions, _sm_counts, _tilings, _grids, _launches):
        cache.clear()


def sm_count() -> int:
    """Multiprocessors of the current device (read once per device)."""
    dev = _device_id()
    count = _sm_counts.get(dev)
    if count is None:
        count = int(_cupy().cuda.Device(dev).attributes["MultiProcessorCount"])
        _sm_counts[dev] = count
    return count


def grid_1d(n: int, block: int = BLOCK, dev: int | None = None) -> int:
    """Blocks for a grid-stride loop over ``n`` items: enough to cover them, capped by device ``dev``
    (the current one when None)."""
    if dev is None:
        dev = _device_id()
    key = (n, block, dev)
    blocks = _grids.get(key)
    if blocks is None or dev not in _sm_counts:  # a cleared _sm_counts (tests) recomputes
        blocks = max(1, min(-(-n // block), sm_count() * BLOCKS_PER_SM))
        if len(_grids) > 4096:   # sizes seen by a long-lived process: bounded
            _grids.clear()
        _grids[key] = blocks
    return blocks


def grid_cols(n_cols: int, dev: int | None = None) -> int:
    """Blocks for column-reduction kernels: one per group of ``COL_BLOCK[0]`` columns, capped."""
    return grid_1d(n_cols, COL_BLOCK[0], dev)


def narrow(*sizes) -> numpy.int32:
    """The ``narrow`` argument of the kernels that divide indices: 1 (32-bit division and modulo,
    several times cheaper on a GPU than 64-bit) when every size of the launch (its element count and
    the arrays it indexes) is below ``NARROW_LIMIT``, else 0."""
    return _NARROW[max(sizes, default=0) < NARROW_LIMIT]


_NARROW = (numpy.int32(0), numpy.int32(1))  # narrow()'s answers, made once (NumPy scalars are immutable)


def column_tiles(n: int, d: int, dev: int | None = None):
    """``(tiles, rows per tile)`` for a column reduction of an ``(n, d)`` array on a 2-D grid.

    Column groups of ``COL_BLOCK[0]`` alone give ceil(d / 32) blocks: 16 of an H200's 132 SMs at
    d = 512, one at d = 10. Row tiles multiply that until the grid has ``COL_BLOCKS_PER_SM``
    blocks per SM, each tile at least ``COL_TILE_MIN_ROWS`` rows (a multiple of ``COL_BLOCK[1]``);
    one tile when the columns alone fill the device or there are under ``COL_TILE_FROM_ROWS`` rows.
    Measured on an H200 (bench/results/2026-12-04-h200.md): at 8192 x 512 the fused backward and
    bias gradient took 46 us on 32 tiles against 415 us on one.
    """
    key = (n, d, _device_id() if dev is None else dev)
    tiling = _tilings.get(key)
    if tiling is None:
        groups = -(-d // COL_BLOCK[0])
        target = sm_count() * COL_BLOCKS_PER_SM
        tiles = min(-(-target // groups), n // COL_TILE_MIN_ROWS) if groups < target and n >= COL_TILE_FROM_ROWS else 1
        if tiles <= 1:
            tiling = (1, max(n, 1))
        else:
            rows = -(-n // tiles)
            rows = -(-rows // COL_BLOCK[1]) * COL_BLOCK[1]
            tiling = (-(-n // rows), rows)
        if len(_tilings) > 4096:   # shapes seen by a long-lived process: bounded
            _tilings.clear()
        _tilings[key] = tiling
    return tiling


def column_partials(size: int, dev: int | None = None, dtype=numpy.float64):
    """A float64 device buffer of at least ``size`` elements for the per-tile sums of a column
    reduction, one per (device, stream, thread). Buffers only grow and are never freed: a CUDA graph
    keeps the address it captured (GPU-NOTES §1), so a smaller one outgrown stays alive. One
    thread's calls on one stream run in order, so they can share it; two threads launching on the
    same stream could interleave one call's tile kernel and finish with the other's, hence the
    thread in the key. ``dtype``: another element type, its own buffers (batch normalization keeps its
    batch statistics there between its kernels)."""
    cupy = _cupy()
    key = (_device_id() if dev is None else dev, cupy.cuda.get_current_stream().ptr, threading.get_ident(), dtype)
    bufs = _partials.setdefault(key, [])
    if not bufs or bufs[-1].size < size:
        with _lock:
            if not bufs or bufs[-1].size < size:
                bufs.append(cupy.empty(max(size, 2 * bufs[-1].size if bufs else 4096), dtype=dtype))
    return bufs[-1]


# ---------------------------------------------------------------------------- argument checks
def check_dtype(primitive: str, *arrays):
    """The common float dtype of ``arrays`` (``None`` entries skipped); ``TypeError`` otherwise."""
    dtype = None
    for a in arrays:
        if a is None:
            continue
        dt = a.dtype
        if dt is dtype:  # the common case: the same (singleton) dtype object as the first array's
            continue
        dt = numpy.dtype(dt)
        if dt not in CTYPES:
            raise TypeError(f"{primitive}: the CUDA kernels take float32 or float64 arrays, got {dt}")
        if dtype is None:
            dtype = dt
        elif dt != dtype:
            raise TypeError(f"{primitive}: arrays must share one dtype, got {dtype} and {dt}; "
                            f"cast them first (nothing is promoted silently)")
    return dtype


def contiguous(a):
    """``a`` itself when C-contiguous, else a C-contiguous copy (kernels index flat memory)."""
    if a is None or _contiguous(a):
        return a
    return _cupy().ascontiguousarray(a)


def check_out(primitive: str, name: str, buf, shape, dtype):
    """Check a caller-given output buffer: C-contiguous, of ``shape`` and ``dtype``."""
    if buf is None:
        return None
    if buf.shape != shape and tuple(buf.shape) != tuple(shape):  # the first test passes for equal tuples
        raise ValueError(f"{primitive}: {name} must have shape {tuple(shape)}, got {tuple(buf.shape)}")
    if buf.dtype is not dtype and numpy.dtype(buf.dtype) != numpy.dtype(dtype):
        raise TypeError(f"{primitive}: {name} must have dtype {numpy.dtype(dtype)}, got {buf.dtype}")
    if not _contiguous(buf):
        raise ValueError(f"{primitive}: {name} must be C-contiguous (the kernel writes flat memory); "
                         f"pass a contiguous buffer")
    return buf


def output(primitive: str, name: str, buf, shape, dtype):
    """The output array: ``buf`` checked as ``check_out`` does, or a new one when ``buf`` is None."""
    buf = check_out(primitive, name, buf, shape, dtype)
    return empty(shape, dtype) if buf is None else buf


def _strided(a) -> bool:
    """True for an array (NumPy or CuPy) that is not C-contiguous."""
    return getattr(getattr(a, "flags", None), "c_contiguous", True) is False


_FLAGLESS = frozenset({int, float, bool, str, type(None), tuple})  # argument types without array flags


def _contiguous(a) -> bool:
    """``not _strided(a)``, without the attribute lookups on plain Python values."""
    if type(a) in _FLAGLESS:
        return True
    c = getattr(a, "_c_contiguous", None)  # CuPy's ndarray: the flag itself, no flags object made
    if c is None:
        c = getattr(getattr(a, "flags", None), "c_contiguous", True)
    return c is not False


def _named_positions(signature, names):
    """``(name, position)`` of each named parameter: its index among the positional parameters, or
    None for a keyword-only one."""
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple((name, positional.index(name) if name in positional else None) for name in names)


def writes(*names):
    """Launcher decorator: the named arguments (outputs and in-place state) may be non-contiguous views.

    The kernels index flat memory, so such a view is replaced by a contiguous copy of itself (its
    values copied in, for state updated in place), the launcher runs on the copy, and the result is
    copied back into the caller's view, which is what the launcher then returns in the copy's place:
    the contract NumbaOps and the reference keep (``out=arr.T``, optimizer state ``[::2]``). When
    every named argument is contiguous (the hot path) the launcher is called directly: only they are
    looked at, since the launchers copy strided inputs themselves (``contiguous``).
    """
    def decorate(launcher):
        signature = inspect.signature(launcher)
        where = _named_positions(signature, names)

        @functools.wraps(launcher)
        def call(*args, **kwargs):
            for name, i in where:
                a = args[i] if i is not None and i < len(args) else kwargs.get(name)
                if a is None:
                    continue
                c = getattr(a, "_c_contiguous", None)  # a CuPy array: the flag itself (the hot path)
                if c is False or (c is None and not _contiguous(a)):
                    break
            else:
                return launcher(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            swaps = []
            for name in names:
                a = bound.arguments.get(name)
                if _strided(a):
                    tmp = _cupy().ascontiguousarray(a)
                    bound.arguments[name] = tmp
                    swaps.append((a, tmp))
            result = launcher(*bound.args, **bound.kwargs)
            for view, tmp in swaps:
                view[...] = tmp
            back = {id(tmp): view for view, tmp in swaps}
            if isinstance(result, tuple):
                return tuple(back.get(id(r), r) for r in result)
            return back.get(id(result), result)
        return call
    return decorate


def check_inplace(primitive: str, name: str, buf, shape, dtype):
    """Check an array the primitive updates in place (optimizer state, running statistics)."""
    if buf is None:
        raise ValueError(f"{primitive}: {name} is required")
    return check_out(primitive, name, buf, shape, dtype)


def is_host_array(a) -> bool:
    """True for a host NumPy array (not for a CuPy array, whatever its class derives from); never
    imports CuPy."""
    return isinstance(a, numpy.ndarray) and type(a).__module__.split(".")[0] != "cupy"


_unused: dict = {}  # (device id, dtype) -> a one-element array standing in for a buffer a kernel will not read


def unused(dtype, dev: int | None = None):
    """A device ``dtype[1]`` passed where a kernel takes a pointer it will not use (an index buffer
    with dense targets: int64; the partial sums of a one-tile column reduction: float64), one per
    device and dtype: the argument keeps the parameter's C type."""
    key = (_device_id() if dev is None else dev, dtype)
    a = _unused.get(key)
    if a is None:
        a = _unused[key] = _cupy().zeros(1, dtype=dtype)
    return a


def empty(shape, dtype):
    return _cupy().empty(shape, dtype=dtype)


def dtype_scalar(dtype, value):
    """``value`` as a NumPy scalar of ``dtype``: CuPy passes a Python float as double (GPU-NOTES)."""
    t = getattr(dtype, "type", None)  # a numpy.dtype (what the launchers hold): its scalar type
    return (t if t is not None else numpy.dtype(dtype).type)(value)
