"""A cuBLAS handle of our own, through ``ctypes`` on the ``libcublas`` of the ``nvidia-cublas`` wheel:
found, created before any capture, bound to a stream and a fixed workspace, every status checked."""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys

import numpy

from fastnn.kernels.gpu.cublas import loaded_libcublas

from graph_capture_parts.common import F32

WORKSPACE_BYTES = 32 << 20     # PyTorch's cuBLAS workspace on Hopper (GPU-NOTES §1)

# cuBLAS constants (cublas_api.h, library_types.h)
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 77
CUBLAS_GEMM_DEFAULT = -1


def find_libcublas():
    """``(path, how, notes)`` of the libcublas to load; ``path`` is ``None`` when none is found."""
    notes = []
    try:
        from cuda import pathfinder

        loaded = pathfinder.load_nvidia_dynamic_lib("cublas")
        notes.append(f"cuda.pathfinder: abs_path={loaded.abs_path} found_via={getattr(loaded, 'found_via', '?')} "
                     f"already_loaded={getattr(loaded, 'was_already_loaded_from_elsewhere', '?')}")
        if loaded.abs_path:
            return loaded.abs_path, "cuda.pathfinder", notes
    except Exception as exc:
        notes.append(f"cuda.pathfinder: {type(exc).__name__}: {exc}")
    mapped = loaded_libcublas()
    if mapped:
        return mapped[0], "/proc/self/maps (already loaded, by CuPy)", notes
    roots = []
    try:
        roots += site.getsitepackages()
    except Exception:
        pass
    roots += [p for p in sys.path if p and "site-packages" in p]
    for root in dict.fromkeys(roots):
        for pat in ("nvidia/*/lib/libcublas.so*", "nvidia/cublas/lib/libcublas.so*", "nvidia/cu*/lib/libcublas.so*"):
            hits = sorted(h for h in glob.glob(os.path.join(root, pat)) if "Lt" not in os.path.basename(h))
            if hits:
                return hits[-1], f"glob {root}/{pat}", notes
    notes.append("no libcublas.so* under site-packages/nvidia")
    return None, None, notes


class Cublas:
    """A fastnn-owned cuBLAS handle through ``ctypes``; every status is checked and logged in ``calls``."""

    def __init__(self, path):
        self.path = path
        self.lib = lib = ctypes.CDLL(path)
        P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
        sig = {
            "cublasCreate_v2": [ctypes.POINTER(ctypes.c_void_p)],
            "cublasDestroy_v2": [P],
            "cublasGetVersion_v2": [P, ctypes.POINTER(I)],
            "cublasSetStream_v2": [P, P],
            "cublasGetStream_v2": [P, ctypes.POINTER(ctypes.c_void_p)],
            "cublasSetWorkspace_v2": [P, P, ctypes.c_size_t],
            "cublasGetMathMode": [P, ctypes.POINTER(I)],
            "cublasGetPointerMode_v2": [P, ctypes.POINTER(I)],
            "cublasSgemm_v2": [P, I, I, I, I, I, F, P, I, P, I, F, P, I],
            "cublasGemmEx": [P, I, I, I, I, I, F, P, I, I, P, I, I, F, P, I, I, I, I],
        }
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        self.status_string = None
        if hasattr(lib, "cublasGetStatusString"):
            lib.cublasGetStatusString.argtypes = [ctypes.c_int]
            lib.cublasGetStatusString.restype = ctypes.c_char_p
            self.status_string = lib.cublasGetStatusString
        self.calls = []
        self.handle = ctypes.c_void_p()
        self.workspace = None   # the CuPy buffer: kept alive as long as this handle (and its graphs)
        self._alpha, self._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def check(self, name, status, quiet=False):
        entry = {"call": name, "status": int(status)}
        if status and self.status_string is not None:
            entry["text"] = self.status_string(int(status)).decode(errors="replace")
        if not quiet or status:
            self.calls.append(entry)
        if status:
            raise RuntimeError(f"{name} returned cuBLAS status {status} ({entry.get('text', '?')})")
        return status

    def create(self):
        self.check("cublasCreate_v2", self.lib.cublasCreate_v2(ctypes.byref(self.handle)))
        v = ctypes.c_int()
        self.check("cublasGetVersion_v2", self.lib.cublasGetVersion_v2(self.handle, ctypes.byref(v)))
        self.version = v.value
        return self

    def bind(self, stream, workspace):
        """Set the stream, then the workspace (setting the stream resets the workspace: keep this order)."""
        self.check("cublasSetStream_v2", self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)))
        got = ctypes.c_void_p()
        self.check("cublasGetStream_v2", self.lib.cublasGetStream_v2(self.handle, ctypes.byref(got)))
        if (got.value or 0) != stream.ptr:
            raise RuntimeError(f"cublasGetStream_v2 gave {got.value:#x}, expected {stream.ptr:#x}")
        self.workspace = workspace
        self.check("cublasSetWorkspace_v2",
                   self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(workspace.data.ptr), workspace.nbytes))
        mm, pm = ctypes.c_int(), ctypes.c_int()
        self.check("cublasGetMathMode", self.lib.cublasGetMathMode(self.handle, ctypes.byref(mm)))
        self.check("cublasGetPointerMode_v2", self.lib.cublasGetPointerMode_v2(self.handle, ctypes.byref(pm)))
        self.math_mode, self.pointer_mode = mm.value, pm.value

    def gemm(self, A, B, C, trans_a=False, trans_b=False, algo="sgemm", quiet=True):
        """Row-major ``C = op(A) @ op(B)`` (float32, C-contiguous), as column-major ``C^T = op(B)^T op(A)^T``.

        A row-major ``r x c`` array is the column-major ``c x r`` matrix (its transpose) with
        leading dimension ``c``; so the call swaps the operands, passes ``n, m`` for ``m, n``, and
        each operand's leading dimension is its row-major column count.
        """
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        am = A.shape[1] if trans_a else A.shape[0]
        bk, bn = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
        if am != m or bk != k or bn != n:
            raise ValueError(f"gemm shapes: op(A) {am}x{k}, op(B) {bk}x{bn}, C {m}x{n}")
        for name, a in (("A", A), ("B", B), ("C", C)):
            if a.dtype != F32 or not a.flags.c_contiguous:
                raise ValueError(f"gemm: {name} must be C-contiguous float32")
        opa = CUBLAS_OP_T if trans_a else CUBLAS_OP_N
        opb = CUBLAS_OP_T if trans_b else CUBLAS_OP_N
        lda, ldb, ldc = A.shape[1], B.shape[1], n
        alpha, beta = ctypes.byref(self._alpha), ctypes.byref(self._beta)
        Bp, Ap, Cp = ctypes.c_void_p(B.data.ptr), ctypes.c_void_p(A.data.ptr), ctypes.c_void_p(C.data.ptr)
        if algo == "sgemm":
            st = self.lib.cublasSgemm_v2(self.handle, opb, opa, n, m, k, alpha, Bp, ldb, Ap, lda, beta, Cp, ldc)
        else:
            compute = CUBLAS_COMPUTE_32F_FAST_TF32 if algo == "gemm_ex_tf32" else CUBLAS_COMPUTE_32F
            st = self.lib.cublasGemmEx(self.handle, opb, opa, n, m, k, alpha, Bp, CUDA_R_32F, ldb, Ap, CUDA_R_32F, lda,
                                       beta, Cp, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT)
        return self.check("cublasSgemm_v2" if algo == "sgemm" else f"cublasGemmEx[{algo}]", st, quiet=quiet)

    def destroy(self):
        if self.handle.value:
            self.check("cublasDestroy_v2", self.lib.cublasDestroy_v2(self.handle))
            self.handle = ctypes.c_void_p()


def make_cublas(stream, rec):
    """Load libcublas, create a handle (before any capture), bind it to ``stream`` and a 32 MiB workspace."""
    import cupy

    path, how, notes = find_libcublas()
    rec["libcublas"] = {"path": path, "found_by": how, "notes": notes}
    if path is None:
        raise RuntimeError("no libcublas found: " + "; ".join(notes))
    cb = Cublas(path)
    cb.create()
    with stream:
        ws = cupy.empty(WORKSPACE_BYTES, dtype=numpy.uint8)
    cb.bind(stream, ws)
    rec["libcublas"].update({"version": cb.version, "math_mode": cb.math_mode, "pointer_mode": cb.pointer_mode,
                             "mapped_in_process": loaded_libcublas(), "workspace_bytes": WORKSPACE_BYTES})
    return cb

