"""Compile CUDA C source text (what CuPy's ``RawModule`` would hand to NVRTC) into a host shared
library with ``cudaemu.h``, and launch its kernels by name with checked argument types.

The source is compiled as given, after one mechanical step: every ``__shared__`` array
declaration is followed by ``fastnn_emu::poison_shared(name, sizeof name);`` (see ``cudaemu.h``).
For each name expression ``fastnn_x<float>`` the library exports a launcher and the kernel's
parameter list, read from the instantiated C++ type (never parsed from the text). Libraries are
cached by a hash of the header, the source, the names, the compiler and its flags, in
``$FASTNN_CUDAEMU_CACHE`` (default ``~/.cache/fastnn-cudaemu``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cudaemu.h"
CXX = os.environ.get("CXX", "g++")
# -ffp-contract=off: no FMA contraction (the loader compiles with --fmad=false); no fast-math.
CXXFLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-w")
NAME_EXPR = re.compile(r"^\s*(\w+)\s*<\s*(float|double)\s*>\s*$")
SHARED_DECL = re.compile(r"(__shared__\s+[^;{}()]*?\b(\w+)\s*(?:\[[^\]]*\]\s*)+;)")

_lock = threading.Lock()
_libs: dict = {}

# C names of argument types, as the kernel signatures in the library spell them.
DTYPE_NAMES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double",
               numpy.dtype(numpy.int32): "int32", numpy.dtype(numpy.uint32): "uint32",
               numpy.dtype(numpy.int64): "int64", numpy.dtype(numpy.uint64): "uint64",
               numpy.dtype(numpy.bool_): "bool"}
CTYPES = {"float": ctypes.c_float, "double": ctypes.c_double, "int32": ctypes.c_int32,
          "uint32": ctypes.c_uint32, "int64": ctypes.c_int64, "uint64": ctypes.c_uint64, "bool": ctypes.c_bool}


class EmulatorError(RuntimeError):
    """A kernel broke a rule the GPU would not tell you about (barrier divergence, a shuffle in a
    partial warp, a wrong argument type, a non-contiguous array, an invalid launch)."""


def cache_dir() -> Path:
    d = Path(os.environ.get("FASTNN_CUDAEMU_CACHE") or Path.home() / ".cache" / "fastnn-cudaemu")
    d.mkdir(parents=True, exist_ok=True)
    return d


def instrument(code: str) -> str:
    """``code`` with each ``__shared__`` array declaration followed by its poisoning call."""
    return SHARED_DECL.sub(lambda m: f"{m.group(1)} fastnn_emu::poison_shared({m.group(2)}, sizeof {m.group(2)});",
                           code)


def _compiler_id() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        raise EmulatorError(f"the CUDA emulator needs a C++17 compiler ({CXX!r}, set CXX): {exc}") from exc


def library(code: str, name_expressions) -> "Library":
    """The compiled library of ``code`` exporting every name expression (built once, cached on disk)."""
    names = []
    for expr in name_expressions:
        m = NAME_EXPR.match(expr)
        if not m:
            raise EmulatorError(f"name expression {expr!r}: the emulator takes kernel<float> or kernel<double>")
        names.append(m.group(1))
    names = sorted(set(names))
    text = (f'#include "{HEADER}"\n' + instrument(code) + "\n\n// exports\n"
            + "".join(f"FASTNN_EMU_EXPORT({n})\n" for n in names))
    key = hashlib.sha256("\0".join([HEADER.read_text(), text, " ".join(CXXFLAGS), _compiler_id()]).encode())
    key = key.hexdigest()[:24]
    with _lock:
        lib = _libs.get(key)
        if lib is None:
            path = cache_dir() / f"emu-{key}.so"
            if not path.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    src = Path(tmp) / "module.cpp"
                    src.write_text(text, encoding="utf-8")
                    out = Path(tmp) / "module.so"
                    proc = subprocess.run([CXX, *CXXFLAGS, str(src), "-o", str(out)], capture_output=True,
                                          text=True, timeout=600)
                    if proc.returncode:
                        raise EmulatorError(f"the host compiler rejected the CUDA source:\n{proc.stderr[-6000:]}")
                    os.replace(out, path)  # atomic: a concurrent build of the same key is harmless
            lib = _libs[key] = Library(ctypes.CDLL(str(path)))
    return lib


class Library:
    def __init__(self, dll):
        self.dll = dll
        self.dll.emu_error.restype = ctypes.c_char_p
        self.dll.emu_switches.restype = ctypes.c_longlong

    def kernel(self, expr: str) -> "Kernel":
        m = NAME_EXPR.match(expr)
        if not m:
            raise EmulatorError(f"get_function({expr!r}): expected kernel<float> or kernel<double>")
        name, ctype = m.groups()
        try:
            fn = getattr(self.dll, f"emu_launch_{name}__{ctype}")
            sig = getattr(self.dll, f"emu_signature_{name}__{ctype}")
        except AttributeError:
            raise EmulatorError(f"get_function({expr!r}): not among the module's name_expressions") from None
        sig.restype = ctypes.c_char_p
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p),
                       ctypes.c_ulonglong, ctypes.c_int]
        return Kernel(self, expr, fn, sig().decode().split(","))


def _dims(what, v):
    if isinstance(v, (int, numpy.integer)):
        v = (int(v),)
    if not isinstance(v, tuple) or not 1 <= len(v) <= 3 or not all(isinstance(d, (int, numpy.integer)) for d in v):
        raise EmulatorError(f"{what} must be an int or a tuple of 1-3 ints, got {v!r}")
    v = tuple(int(d) for d in v) + (1,) * (3 - len(v))
    if min(v) < 1:
        raise EmulatorError(f"{what} {v} has a dimension below 1")
    return (ctypes.c_uint * 3)(*v)


class Kernel:
    """One instantiated kernel. ``kernel(grid, block, args)`` as ``cupy.RawKernel.__call__``, with
    every argument's C type checked against the kernel's parameter list (CuPy checks none)."""

    mode = 0       # thread order: 0 index order, 1 reverse, 2 random (see cudaemu.h)
    seed = 0
    launches = 0

    def __init__(self, lib, expr, fn, params):
        self.lib, self.name, self.fn, self.params = lib, expr, fn, params

    def _arg(self, i, a, device_array):
        want = self.params[i]
        if isinstance(a, device_array):
            got = DTYPE_NAMES.get(a.dtype, str(a.dtype)) + "*"
            if got != want:
                raise EmulatorError(f"{self.name}: argument {i} is an array of {a.dtype} ({got}) but parameter "
                                    f"{i} is {want} (signature: {', '.join(self.params)})")
            if not a.flags.c_contiguous:
                raise EmulatorError(f"{self.name}: argument {i} is a non-contiguous array of shape {a.shape} "
                                    f"strides {a.strides}; the kernel indexes flat memory")
            return ctypes.c_void_p(a.ctypes.data)
        if isinstance(a, numpy.ndarray):
            raise EmulatorError(f"{self.name}: argument {i} is a host NumPy array; CuPy refuses it (move it to the "
                                f"device)")
        if isinstance(a, bool):
            got = "bool"
        elif isinstance(a, int):
            got = "int64"   # CuPy passes a Python int as a 64-bit integer
        elif isinstance(a, float):
            got = "double"  # and a Python float as a double
        elif isinstance(a, numpy.generic):
            got = DTYPE_NAMES.get(a.dtype, str(a.dtype))
        else:
            raise EmulatorError(f"{self.name}: argument {i} has unsupported type {type(a).__name__}")
        if got != want:
            raise EmulatorError(f"{self.name}: argument {i} is {got} ({type(a).__name__} {a!r}) but parameter {i} "
                                f"is {want} (signature: {', '.join(self.params)})")
        if want.endswith("*"):
            raise EmulatorError(f"{self.name}: argument {i} is a scalar but parameter {i} is a pointer {want}")
        return CTYPES[want](a)

    def __call__(self, grid, block, args, *, shared_mem=0, device_array=numpy.ndarray, **kwargs):
        if not isinstance(args, tuple):
            raise EmulatorError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise EmulatorError(f"{self.name}: {len(args)} arguments given, the kernel takes {len(self.params)} "
                                f"({', '.join(self.params)})")
        if shared_mem:
            raise EmulatorError(f"{self.name}: dynamic shared memory is not emulated")
        g, b = _dims("grid", grid), _dims("block", block)
        values = [self._arg(i, a, device_array) for i, a in enumerate(args)]
        ptrs = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
                                                          for v in values])
        Kernel.launches += 1
        rc = self.fn(g, b, ptrs, ctypes.c_ulonglong(Kernel.seed + Kernel.launches), Kernel.mode)
        if rc:
            raise EmulatorError(f"{self.name} grid {tuple(g)} block {tuple(b)}: "
                                f"{self.lib.dll.emu_error().decode(errors='replace')}")
