"""Direct cuBLAS GEMMs through ``ctypes``, for GEMMs inside a CUDA-graph capture.

CuPy (up to 14.2 at least) refuses every cuBLAS call while a stream is capturing: its wrappers
call ``cublasSetStream`` first, and that guard raises ``NotImplementedError`` (GPU-NOTES §1,
cupy/cupy#6290). The guard is CuPy's, not cuBLAS's, so fastnn keeps its own handle on the
``libcublas`` that CuPy already loaded and calls ``cublasSgemm_v2`` / ``cublasDgemm_v2`` /
``cublasGemmEx`` itself. The rules from PyTorch's history (GPU-NOTES §1) shape this module:

- the handle is created, and a first GEMM run, before any capture (handle creation inside a
  capture fails);
- the handle is bound to the capture stream, *then* given a fixed 32 MiB workspace (setting
  the stream resets the workspace), and the workspace lives as long as the handle and so as long
  as every graph captured with it;
- alpha and beta are host scalars (pointer mode host): their values are baked into the graph,
  which is what a GEMM ``C = A @ B`` wants.

Row-major arrays are column-major transposes, so ``C = op(A) @ op(B)`` is issued as the
column-major ``C^T = op(B)^T @ op(A)^T``: operands swapped, ``n, m`` for ``m, n``, and each
leading dimension is the row-major column count.

Nothing here imports CuPy at module level; ``find_libcublas`` and ``Cublas`` need a GPU to do
anything useful. This path is exercised by ``bench/probes/graph_capture.py`` and by the ``gpu``
tests; it has not been verified on a GPU yet where those have not run.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import site
import sys
from pathlib import Path

import numpy

WORKSPACE_BYTES = 32 << 20  # PyTorch's cuBLAS workspace on Hopper (GPU-NOTES §1)
OP_N, OP_T = 0, 1
CUDA_R_32F = 0
COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77
GEMM_DEFAULT = -1
PRECISIONS = ("float32", "tf32")


class CublasError(RuntimeError):
    """A cuBLAS call returned a non-zero status (the message names the call and the status)."""


def loaded_libcublas() -> list:
    """Paths of the libcublas (not cublasLt) already mapped into this process (CuPy loads it)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps.splitlines() if re.search(r"/libcublas\.so[.\d]*$", line)})


def find_libcublas() -> str | None:
    """The libcublas to load: the one CuPy mapped, else ``cuda.pathfinder``'s, else a wheel's."""
    mapped = loaded_libcublas()
    if mapped:
        return mapped[0]
    try:
        from cuda import pathfinder

        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
        if path:
            return path
    except Exception:  # noqa: BLE001 - any failure here just means "look elsewhere"
        pass
    roots = []
    try:
        roots += site.getsitepackages()
    except AttributeError:
        pass
    roots += [p for p in sys.path if p and "site-packages" in p]
    for root in dict.fromkeys(roots):
        hits = sorted(h for h in glob.glob(os.path.join(root, "nvidia", "*", "lib", "libcublas.so*"))
                      if "Lt" not in os.path.basename(h))
        if hits:
            return hits[-1]
    return None


class Cublas:
    """One fastnn-owned cuBLAS handle bound to one stream with a fixed workspace."""

    def __init__(self, stream, path=None):
        import cupy

        path = path or find_libcublas()
        if path is None:
            raise CublasError("no libcublas found (neither mapped by CuPy, nor through cuda.pathfinder, nor in "
                              "site-packages/nvidia/*/lib)")
        self.path = path
        self.lib = lib = ctypes.CDLL(path)
        P, I = ctypes.c_void_p, ctypes.c_int
        signatures = {
            "cublasCreate_v2": [ctypes.POINTER(ctypes.c_void_p)],
            "cublasDestroy_v2": [P],
            "cublasSetStream_v2": [P, P],
            "cublasSetWorkspace_v2": [P, P, ctypes.c_size_t],
            "cublasSgemm_v2": [P, I, I, I, I, I, P, P, I, P, I, P, P, I],
            "cublasDgemm_v2": [P, I, I, I, I, I, P, P, I, P, I, P, P, I],
            "cublasGemmEx": [P, I, I, I, I, I, P, P, I, I, P, I, I, P, P, I, I, I, I],
        }
        for name, args in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        self.handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", lib.cublasCreate_v2(ctypes.byref(self.handle)))
        self.stream = stream
        self._check("cublasSetStream_v2", lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)))
        with stream:
            self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=numpy.uint8)
        self._check("cublasSetWorkspace_v2", lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.workspace.data.ptr), WORKSPACE_BYTES))
        self._one = {numpy.dtype(numpy.float32): ctypes.c_float(1.0), numpy.dtype(numpy.float64): ctypes.c_double(1.0)}
        self._zero = {numpy.dtype(numpy.float32): ctypes.c_float(0.0), numpy.dtype(numpy.float64): ctypes.c_double(0.0)}

    def _check(self, call, status):
        if status:
            raise CublasError(f"{call} returned cuBLAS status {status}")

    def gemm(self, a, b, out, trans_a=False, trans_b=False, precision="float32"):
        """Row-major ``out = op(a) @ op(b)`` for C-contiguous float32/float64 CuPy arrays.

        The shapes, dtypes and contiguity are checked here (a wrong leading dimension would read
        out of bounds on the device, with no error). ``precision="tf32"`` uses TF32 tensor cores
        for float32 (``cublasGemmEx`` with ``CUBLAS_COMPUTE_32F_FAST_TF32``).
        """
        m, n = out.shape
        am, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        bk, bn = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if (am, bk, bn) != (m, k, n):
            raise ValueError(f"gemm: op(a) is {am}x{k}, op(b) {bk}x{bn}, out {m}x{n}: the shapes do not chain")
        dtype = numpy.dtype(out.dtype)
        for name, arr in (("a", a), ("b", b), ("out", out)):
            if numpy.dtype(arr.dtype) != dtype or dtype not in self._one or not arr.flags.c_contiguous:
                raise ValueError(f"gemm: {name} must be a C-contiguous {dtype} array (float32 or float64), got "
                                 f"{arr.dtype} (C-contiguous: {arr.flags.c_contiguous})")
        if not (m and n):
            return out
        if not k:
            out.fill(0)
            return out
        opa, opb = (OP_T if trans_a else OP_N), (OP_T if trans_b else OP_N)
        lda, ldb = a.shape[1], b.shape[1]
        one, zero = ctypes.byref(self._one[dtype]), ctypes.byref(self._zero[dtype])
        A, B, C = (ctypes.c_void_p(arr.data.ptr) for arr in (a, b, out))
        if dtype == numpy.float64:
            status = self.lib.cublasDgemm_v2(self.handle, opb, opa, n, m, k, one, B, ldb, A, lda, zero, C, n)
            call = "cublasDgemm_v2"
        elif precision == "tf32":
            status = self.lib.cublasGemmEx(self.handle, opb, opa, n, m, k, one, B, CUDA_R_32F, ldb, A, CUDA_R_32F,
                                           lda, zero, C, CUDA_R_32F, n, COMPUTE_32F_FAST_TF32, GEMM_DEFAULT)
            call = "cublasGemmEx(TF32)"
        else:
            status = self.lib.cublasSgemm_v2(self.handle, opb, opa, n, m, k, one, B, ldb, A, lda, zero, C, n)
            call = "cublasSgemm_v2"
        self._check(call, status)
        return out

    def close(self):
        if self.handle.value:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may be gone
            pass
