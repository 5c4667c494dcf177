#!/usr/bin/env python3
"""GPU probe: what can one CUDA graph capture of a fastnn training step hold under CuPy 14?

Four questions, each answered in its own subprocess (a wrong ``ctypes`` signature segfaults, an
illegal address poisons the CUDA context: neither may hide the other answers):

1. ``cupy_matmul_in_capture``: does ``cupy.matmul`` inside ``Stream.begin_capture()`` raise?
   (GPU-NOTES §1 expects ``NotImplementedError`` from ``cublas.setStream``.) The exception's type
   and exact message are recorded; if it does not raise, the captured graph is replayed and checked.
2. ``ctypes_cublas_in_capture``: cuBLAS called directly through ``ctypes`` on the ``libcublas`` of
   the ``nvidia-cublas`` wheel (``cuda.pathfinder``, else ``/proc/self/maps``, else a site-packages
   glob): own handle created before capture, ``cublasSetStream_v2`` to the capture stream, then
   ``cublasSetWorkspace_v2`` with a fixed 32 MiB CuPy buffer, an eager check of every layout
   (nn/tn/nt, odd sizes) against ``cupy.matmul``, then ``cublasSgemm_v2`` (and ``cublasGemmEx``
   in FP32 and TF32) inside a capture; the graph is replayed N times onto a NaN-poisoned output
   and compared with ``cupy.matmul`` outside capture; then the inputs are changed in place and one
   more replay must follow them. Every cuBLAS status is recorded.
3. ``fastnn_kernels_in_capture``: fastnn's own launchers (``CupyOps.bias_act``, ``adam_step``,
   ``dropout_mask``, and ``sq_norm``, which allocates during capture, under a private pool)
   captured, replayed N times and compared bit for bit with the same calls made eagerly. Scalar
   arguments (lr, Adam's ``t``, the dropout step) are frozen at capture: the record shows the
   replayed Adam differs from an eager run whose ``t`` advances.
4. ``replay_cost``: one "training-like" step (forward GEMM, ``bias_act``, fused
   ``act_backward_bias_grad``, weight-gradient GEMM, input-gradient GEMM, ``adam_step`` over the flat
   parameters) at B512's, B64's and the wide model's first-layer shapes: 100 steps eager with
   ``cupy.matmul``, eager with the ctypes handle, and as 100 graph replays; CUDA events (GPU time)
   and the host's loop time, median of 5 interleaved rounds; plus a correctness check of the three.
5. ``fit_modes``: ``Sequential.fit(cuda_graph=True)`` in both capture modes, "full" (GEMMs captured
   through fastnn's own cuBLAS handle: one graph per step) and "split" (forced, as when that handle
   is unusable: eager GEMMs between graphs), against eager ``fit``, for models B512 and B64
   (784-512-512-10 and 784-64-64-10, Dropout 0.2, Adam, batch 128): the mode each run ended in,
   whether it gave up (``disabled``, with the warning), the graphs and eager GEMMs per replay, the
   weights' relative difference from eager after the same fits, and µs per step (CUDA events around
   whole ``fit`` epochs over data already on the device, median of 3 after a warm-up epoch that
   captures).

Prints one JSON record on stdout and writes ``$OUT/graph_capture.json`` when ``OUT`` is set.
Without a GPU it exits 0 with ``"skipped": "no GPU: <reason>"``.
Usage: ``python3 bench/probes/graph_capture.py [--parts NAME,NAME] [--replays N]`` (``--part NAME``
runs one part in this process: what the driver's children do).
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import re
import site
import statistics
import sys
import time
import traceback

import numpy

from _probe import Probe, _default, run_subprocess  # noqa: E402  (this folder is on sys.path when run as a script)
from fastnn.kernels.gpu.cublas import loaded_libcublas  # noqa: E402

NAME = "graph_capture"
PARTS = ("cupy_matmul_in_capture", "ctypes_cublas_in_capture", "fastnn_kernels_in_capture", "replay_cost",
         "fit_modes")
PART_TIMEOUT_S = {"cupy_matmul_in_capture": 60, "ctypes_cublas_in_capture": 90,
                  "fastnn_kernels_in_capture": 60, "replay_cost": 150, "fit_modes": 120}
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
save, log, gpu_or_skip = PROBE.save, PROBE.log, PROBE.gpu_or_skip
F32 = numpy.float32
WORKSPACE_BYTES = 32 << 20     # PyTorch's cuBLAS workspace on Hopper (GPU-NOTES §1)

# cuBLAS constants (cublas_api.h, library_types.h)
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 77
CUBLAS_GEMM_DEFAULT = -1


# ------------------------------------------------------------------------------ record helpers


class Part:
    """``with Part(rec): ...`` records ``ok``, ``seconds`` and any exception in ``rec``, and swallows it."""

    def __init__(self, rec):
        self.rec = rec

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self.rec

    def __exit__(self, et, ev, tb):
        self.rec["seconds"] = round(time.perf_counter() - self.t0, 3)
        if et is not None:
            self.rec["ok"] = False
            self.rec["error"] = f"{et.__name__}: {ev}"
            self.rec["traceback"] = "".join(traceback.format_exception(et, ev, tb))[-3000:]
        else:
            self.rec.setdefault("ok", True)
        return True


def env_info():
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"]
    return {"device": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": cupy.cuda.Device(0).compute_capability,
            "cupy": cupy.__version__, "cuda_runtime": rt.runtimeGetVersion(), "cuda_driver": rt.driverGetVersion(),
            "numpy": numpy.__version__, "python": sys.version.split()[0],
            "CUPY_TF32": os.environ.get("CUPY_TF32"), "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR")}


def rel_err(actual, expected):
    """``||actual - expected|| / ||expected||`` in float64 (host arrays or CuPy arrays)."""
    a = numpy.asarray(actual.get() if hasattr(actual, "get") else actual, dtype=numpy.float64)
    e = numpy.asarray(expected.get() if hasattr(expected, "get") else expected, dtype=numpy.float64)
    if not numpy.all(numpy.isfinite(a)):
        return float("inf")
    den = numpy.linalg.norm(e)
    return float(numpy.linalg.norm(a - e) / (den if den else 1.0))


def host(x):
    """A NumPy copy of a CuPy (or NumPy) array."""
    return x.get() if hasattr(x, "get") else numpy.asarray(x)


def max_abs_diff(a, b):
    a = numpy.asarray(a.get() if hasattr(a, "get") else a, dtype=numpy.float64)
    b = numpy.asarray(b.get() if hasattr(b, "get") else b, dtype=numpy.float64)
    return float(numpy.max(numpy.abs(a - b))) if a.size else 0.0


def end_capture(stream):
    """``(graph, None)`` or ``(None, "error")``: always leaves the stream out of capture mode."""
    try:
        return stream.end_capture(), None
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"
        try:
            if stream.is_capturing():
                err += " (stream still capturing)"
        except Exception as exc2:
            err += f" (is_capturing raised {type(exc2).__name__}: {exc2})"
        return None, err


def capture(stream, fn):
    """Capture ``fn()`` on ``stream``: ``(graph or None, error in fn or None, error in end_capture or None)``."""
    with stream:
        stream.begin_capture()
        fn_err = None
        try:
            fn()
        except Exception as exc:
            fn_err = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        graph, end_err = end_capture(stream)
    return graph, fn_err, end_err


def dot_summary(graph, limit=1500):
    """Node count and kernel names of a graph (``cudaGraphDebugDotPrint``), best effort."""
    try:
        dot = graph.debug_dot_str()
        dot = dot.decode() if isinstance(dot, bytes) else str(dot)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    names = sorted(set(re.findall(r"(?:fastnn_\w+|\w*gemm\w*|\w*Kernel\w*|cutlass\w*|sm90\w*)", dot)))[:20]
    return {"kernel_nodes": dot.count("KERNEL"), "memset_nodes": dot.count("MEMSET"),
            "memcpy_nodes": dot.count("MEMCPY"), "names": names, "dot_chars": len(dot), "dot_head": dot[:limit]}


# ------------------------------------------------------------------------------ ctypes cuBLAS
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


# ------------------------------------------------------------------------------ the four parts
def part_cupy_matmul(rec, replays):
    import cupy

    s = cupy.cuda.Stream(non_blocking=True)
    rng = numpy.random.default_rng(1)
    with s:
        a = cupy.asarray(rng.standard_normal((129, 257)).astype(F32))
        b = cupy.asarray(rng.standard_normal((257, 65)).astype(F32))
        c = cupy.empty((129, 65), F32)
        cupy.matmul(a, b, out=c)   # eager first: handle created, kernels loaded
        ref = c.copy()
    s.synchronize()
    graph, fn_err, end_err = capture(s, lambda: cupy.matmul(a, b, out=c))
    rec["raised"] = fn_err is not None
    rec["exception"] = fn_err
    rec["end_capture_error"] = end_err
    rec["matches_notes"] = bool(fn_err and fn_err.startswith(("builtins.NotImplementedError", "NotImplementedError"))
                                and "stream capture" in fn_err)
    if graph is not None:
        rec["graph"] = dot_summary(graph, 600)
    if fn_err is None and graph is not None:   # CuPy let it through: does the replay compute a @ b?
        with s:
            c.fill(numpy.nan)
            for _ in range(replays):
                graph.launch(s)
        s.synchronize()
        rec["replay_rel_err"] = rel_err(c, ref)
        rec["replay_correct"] = rec["replay_rel_err"] < 1e-5
    with s:
        d = a.sum()
    s.synchronize()
    rec["stream_usable_after"] = bool(numpy.isfinite(float(host(d))))


def part_ctypes_cublas(rec, replays):
    import cupy

    s = cupy.cuda.Stream(non_blocking=True)
    rng = numpy.random.default_rng(2)
    with s:   # CuPy's own cuBLAS first, so its library is loaded and /proc/self/maps shows it
        cupy.matmul(cupy.ones((2, 2), F32), cupy.ones((2, 2), F32))
    s.synchronize()
    rec["cupy_libcublas_mapped"] = loaded_libcublas()
    cb = make_cublas(s, rec)
    try:
        m, k, n = 129, 257, 65     # distinct odd sizes: a swapped dimension or ld shows up
        inputs = {"A": rng.standard_normal((m, k)), "B": rng.standard_normal((k, n)),
                  "At": rng.standard_normal((k, m)), "Bt": rng.standard_normal((n, k))}
        with s:
            d = {key: cupy.asarray(v.astype(F32)) for key, v in inputs.items()}
            C = cupy.empty((m, n), F32)
        # eager, every layout the training step uses, against cupy.matmul
        layouts = {"nn": (d["A"], d["B"], False, False, lambda: cupy.matmul(d["A"], d["B"])),
                   "tn": (d["At"], d["B"], True, False, lambda: cupy.matmul(d["At"].T, d["B"])),
                   "nt": (d["A"], d["Bt"], False, True, lambda: cupy.matmul(d["A"], d["Bt"].T))}
        eager = {}
        for name, (A, B, ta, tb, ref_fn) in layouts.items():
            for algo in ("sgemm", "gemm_ex", "gemm_ex_tf32"):
                key = f"{name}/{algo}"
                try:
                    with s:
                        C.fill(numpy.nan)
                        cb.gemm(A, B, C, ta, tb, algo=algo, quiet=False)
                        ref = ref_fn()
                    s.synchronize()
                    err = rel_err(C, ref)
                    tol = 5e-3 if algo.endswith("tf32") else 1e-5
                    eager[key] = {"rel_err": err, "ok": err < tol}
                except Exception as exc:
                    eager[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        rec["eager"] = eager
        rec["eager_all_ok"] = all(v.get("ok") for v in eager.values())

        # capture each algorithm in its own graph, replay onto a poisoned output
        captured = {}
        for algo in ("sgemm", "gemm_ex", "gemm_ex_tf32"):
            r = captured[algo] = {}
            try:
                with s:
                    A, B = d["A"], d["B"]
                    out = cupy.empty((m, n), F32)
                graph, fn_err, end_err = capture(s, lambda: cb.gemm(A, B, out, algo=algo, quiet=False))
                r.update({"call_in_capture_error": fn_err, "end_capture_error": end_err, "captured": graph is not None
                          and fn_err is None})
                if graph is None or fn_err is not None:
                    continue
                r["graph"] = dot_summary(graph, 800 if algo == "sgemm" else 300)
                tol = 5e-3 if algo.endswith("tf32") else 1e-5
                with s:
                    out.fill(numpy.nan)
                    graph.upload(s)
                    for _ in range(replays):
                        graph.launch(s)
                    ref = cupy.matmul(A, B)
                s.synchronize()
                r["replays"] = replays
                r["replay_rel_err"] = rel_err(out, ref)
                r["replay_allclose"] = bool(numpy.allclose(host(out), host(ref), rtol=1e-4 if tol < 1e-4 else 1e-2,
                                                           atol=1e-4 if tol < 1e-4 else 5e-2))
                # the graph must read the live inputs, not a copy taken at capture
                with s:
                    A[...] = cupy.asarray(rng.standard_normal((m, k)).astype(F32))
                    out.fill(numpy.nan)
                    graph.launch(s)
                    ref2 = cupy.matmul(A, B)
                s.synchronize()
                r["after_input_change_rel_err"] = rel_err(out, ref2)
                r["correct"] = bool(r["replay_rel_err"] < tol and r["after_input_change_rel_err"] < tol)
            except Exception as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"
                r["traceback"] = traceback.format_exc()[-1500:]
        rec["captured"] = captured
        rec["answer"] = {"sgemm_capturable_and_correct": bool(captured.get("sgemm", {}).get("correct")),
                         "gemm_ex_fp32": bool(captured.get("gemm_ex", {}).get("correct")),
                         "gemm_ex_tf32": bool(captured.get("gemm_ex_tf32", {}).get("correct"))}
    finally:
        rec["cublas_calls_nonquiet"] = cb.calls[-40:]
        try:
            s.synchronize()
            cb.destroy()
        except Exception as exc:
            rec["destroy_error"] = f"{type(exc).__name__}: {exc}"


def part_fastnn_kernels(rec, replays):
    import cupy

    from fastnn.backend.cupy_ops import CupyOps
    from fastnn.kernels import RELU

    ops = CupyOps(0)
    s = cupy.cuda.Stream(non_blocking=True)
    rng = numpy.random.default_rng(3)
    n_rows, d, n_par = 128, 512, 100_003
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    seed, drop_step, rate = 11, 7, 0.2
    with s:
        x = cupy.asarray(rng.standard_normal((n_rows, d)).astype(F32))
        b = cupy.asarray(rng.standard_normal(d).astype(F32))
        g = cupy.asarray(rng.standard_normal(n_par).astype(F32))
        p0 = cupy.asarray(rng.standard_normal(n_par).astype(F32))
        m0 = cupy.asarray((rng.standard_normal(n_par) * 0.1).astype(F32))
        v0 = cupy.asarray(rng.random(n_par).astype(F32) * 0.01)
        # eager reference: the same calls, t frozen at 1 as the graph will have it
        y_e, mask_e = cupy.empty((n_rows, d), F32), cupy.empty((n_rows, d), F32)
        p_e, m_e, v_e = p0.copy(), m0.copy(), v0.copy()
        for _ in range(replays):
            ops.bias_act(x, b, RELU, out=y_e)
            ops.adam_step(p_e, g, m_e, v_e, lr, b1, b2, eps, 1)
            ops.dropout_mask((n_rows, d), rate, seed, drop_step, out=mask_e)
        norm_e = ops.sq_norm(g)
        # eager with t advancing 1..N: what a real run does, and what the graph cannot
        p_t, m_t, v_t = p0.copy(), m0.copy(), v0.copy()
        for t in range(1, replays + 1):
            ops.adam_step(p_t, g, m_t, v_t, lr, b1, b2, eps, t)
        # graph buffers
        y_g, mask_g = cupy.empty((n_rows, d), F32), cupy.empty((n_rows, d), F32)
        p_g, m_g, v_g = p0.copy(), m0.copy(), v0.copy()
    s.synchronize()

    holder = {}
    private_pool = cupy.cuda.MemoryPool()

    def step():
        ops.bias_act(x, b, RELU, out=y_g)
        ops.adam_step(p_g, g, m_g, v_g, lr, b1, b2, eps, 1)
        ops.dropout_mask((n_rows, d), rate, seed, drop_step, out=mask_g)
        with cupy.cuda.using_allocator(private_pool.malloc):   # sq_norm allocates: keep it off the shared pool
            holder["norm"] = ops.sq_norm(g)

    graph, fn_err, end_err = capture(s, step)
    rec.update({"call_in_capture_error": fn_err, "end_capture_error": end_err})
    if graph is None or fn_err is not None:
        rec["captured"] = False
        return
    rec["captured"] = True
    rec["graph"] = dot_summary(graph, 400)
    with s:
        y_g.fill(numpy.nan)
        mask_g.fill(numpy.nan)
        holder["norm"].fill(numpy.nan)
        for _ in range(replays):
            graph.launch(s)
    s.synchronize()
    cmp = {
        "bias_act_max_abs_diff": max_abs_diff(y_g, y_e),
        "adam_p_max_abs_diff": max_abs_diff(p_g, p_e),
        "adam_m_max_abs_diff": max_abs_diff(m_g, m_e),
        "adam_v_max_abs_diff": max_abs_diff(v_g, v_e),
        "dropout_mask_equal": bool((mask_g == mask_e).all()),
        "sq_norm_graph": float(host(holder["norm"])), "sq_norm_eager": float(host(norm_e)),
    }
    cmp["all_bitwise_equal"] = bool(cmp["bias_act_max_abs_diff"] == 0 and cmp["adam_p_max_abs_diff"] == 0
                                    and cmp["adam_m_max_abs_diff"] == 0 and cmp["adam_v_max_abs_diff"] == 0
                                    and cmp["dropout_mask_equal"] and cmp["sq_norm_graph"] == cmp["sq_norm_eager"])
    rec["replays"] = replays
    rec["compare_with_eager"] = cmp
    rec["frozen_scalars"] = {
        "adam_p_max_abs_diff_vs_eager_with_advancing_t": max_abs_diff(p_g, p_t),
        # frozen = the replay equals eager-with-t=1 exactly and differs from eager with advancing t
        "t_frozen_confirmed": bool(cmp["adam_p_max_abs_diff"] == 0 and max_abs_diff(p_g, p_t) > 0),
        "note": "lr, t (bias correction) and the dropout step are kernel arguments, baked in at capture; "
                "a graph-replayed optimizer needs them in a device buffer that a kernel in the graph updates",
    }
    rec["private_pool_bytes"] = private_pool.total_bytes()


def part_replay_cost(rec, replays):
    import cupy

    from fastnn.backend.cupy_ops import CupyOps
    from fastnn.kernels import RELU

    ops = CupyOps(0)
    s = cupy.cuda.Stream(non_blocking=True)
    try:
        cb = make_cublas(s, rec)
    except Exception as exc:   # without direct cuBLAS the graph would hold no GEMMs: say so, time nothing
        rec["error"] = f"direct cuBLAS unavailable ({type(exc).__name__}: {exc}); no GEMM can be captured"
        rec["ok"] = False
        return
    rng = numpy.random.default_rng(4)
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    configs = [("B512-layer1", 128, 784, 512), ("B64-layer1", 128, 784, 64), ("wide-layer2", 128, 4096, 4096)]
    results = {}
    for label, batch, fin, fout in configs:
        r = results[label] = {"batch": batch, "in": fin, "out": fout}
        try:
            npar = fin * fout + fout
            with s:
                p = cupy.asarray((rng.standard_normal(npar) * 0.05).astype(F32))
                g = cupy.zeros(npar, F32)
                m, v = cupy.zeros(npar, F32), cupy.zeros(npar, F32)
                W, bias = p[:fin * fout].reshape(fin, fout), p[fin * fout:]
                dW, db = g[:fin * fout].reshape(fin, fout), g[fin * fout:]
                x = cupy.asarray(rng.random((batch, fin)).astype(F32))
                dh = cupy.asarray((rng.standard_normal((batch, fout)) * 0.01).astype(F32))
                z, h, dz = (cupy.empty((batch, fout), F32) for _ in range(3))
                dx = cupy.empty((batch, fin), F32)
                state0 = (p.copy(), m.copy(), v.copy())

            def tail():
                ops.bias_act(z, bias, RELU, out=h)
                ops.act_backward_bias_grad(dh, h, RELU, out=dz, db=db)

            def step_cupy():
                cupy.matmul(x, W, out=z)
                tail()
                cupy.matmul(x.T, dz, out=dW)
                cupy.matmul(dz, W.T, out=dx)
                ops.adam_step(p, g, m, v, lr, b1, b2, eps, 1)

            def step_ctypes():
                cb.gemm(x, W, z)
                tail()
                cb.gemm(x, dz, dW, trans_a=True)
                cb.gemm(dz, W, dx, trans_b=True)
                ops.adam_step(p, g, m, v, lr, b1, b2, eps, 1)

            def reset():
                for dst, src in zip((p, m, v), state0):
                    dst[...] = src

            # correctness: 3 steps each from the same state
            finals = {}
            with s:
                for name, fn in (("eager_cupy", step_cupy), ("eager_ctypes", step_ctypes)):
                    reset()
                    for _ in range(3):
                        fn()
                    finals[name] = p.copy()
                reset()
            s.synchronize()
            graph, fn_err, end_err = capture(s, step_ctypes)
            r.update({"call_in_capture_error": fn_err, "end_capture_error": end_err})
            if graph is not None and fn_err is None:
                r["graph"] = dot_summary(graph, 0)
                with s:
                    graph.upload(s)
                    for _ in range(3):
                        graph.launch(s)
                    finals["graph"] = p.copy()
                s.synchronize()
                r["rel_err_ctypes_vs_cupy"] = rel_err(finals["eager_ctypes"], finals["eager_cupy"])
                r["rel_err_graph_vs_ctypes"] = rel_err(finals["graph"], finals["eager_ctypes"])
                r["graph_correct"] = r["rel_err_graph_vs_ctypes"] < 1e-6 and r["rel_err_ctypes_vs_cupy"] < 1e-4
            else:
                graph = None
            # timing: interleaved rounds of `replays` steps each
            variants = {"eager_cupy": step_cupy, "eager_ctypes": step_ctypes}
            if graph is not None:
                variants["graph"] = lambda: graph.launch(s)
            samples = {k: {"gpu_us": [], "host_us": []} for k in variants}
            with s:
                for fn in variants.values():   # warm-up
                    for _ in range(5):
                        fn()
            s.synchronize()
            e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
            for _ in range(5):
                for name, fn in variants.items():
                    with s:
                        e0.record(s)
                        h0 = time.perf_counter()
                        for _ in range(replays):
                            fn()
                        h1 = time.perf_counter()
                        e1.record(s)
                    e1.synchronize()
                    samples[name]["gpu_us"].append(cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / replays)
                    samples[name]["host_us"].append((h1 - h0) * 1e6 / replays)
            timing = {}
            for name, sm in samples.items():
                timing[name] = {"gpu_us_per_step_median": statistics.median(sm["gpu_us"]),
                                "gpu_us_min": min(sm["gpu_us"]), "gpu_us_max": max(sm["gpu_us"]),
                                "host_us_per_step_median": statistics.median(sm["host_us"])}
            r["timing"] = timing
            r["steps_per_sample"], r["samples"] = replays, 5
            if "graph" in timing:
                gg = timing["graph"]["gpu_us_per_step_median"]
                r["speedup_graph_vs_eager_cupy"] = timing["eager_cupy"]["gpu_us_per_step_median"] / gg
                r["speedup_graph_vs_eager_ctypes"] = timing["eager_ctypes"]["gpu_us_per_step_median"] / gg
            flops = 3 * 2 * batch * fin * fout
            r["gemm_gflop_per_step"] = flops / 1e9
            r["adam_bytes_per_step"] = 28 * npar
        except Exception as exc:
            r["ok"] = False
            r["error"] = f"{type(exc).__name__}: {exc}"
            r["traceback"] = traceback.format_exc()[-1500:]
        finally:
            try:
                s.synchronize()
            except Exception:
                pass
    rec["configs"] = results
    rec["note"] = ("GPU time: CUDA events around `steps_per_sample` back-to-back steps on one stream, median of the "
                   "interleaved samples; host time: the Python loop that submitted them. The graph holds the three "
                   "GEMMs through the ctypes handle, bias_act, act_backward_bias_grad and adam_step (t frozen).")
    try:
        cb.destroy()
    except Exception as exc:
        rec["destroy_error"] = f"{type(exc).__name__}: {exc}"


def part_fit_modes(rec, replays):
    """``fit(cuda_graph=True)`` in "full" and forced "split" mode against eager ``fit`` (module docstring, 5)."""
    import warnings

    import cupy

    from fastnn import optimizers
    from fastnn.graphs import StepGraphs
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    batch, n_batches, timed = 128, 40, 3
    rng = numpy.random.default_rng(5)
    # on the device already, as fastnn-bench's rows have them: no host-to-device copy inside the timings
    x = cupy.asarray(rng.random((batch * n_batches, 784), dtype=F32))
    y = cupy.asarray(rng.integers(0, 10, batch * n_batches))
    models = {"B512": (512, 512), "B64": (64, 64)}

    def build(hidden):
        layers = [Dense(hidden[0], "relu", input_shape=(784,)), Dropout(0.2)]
        for h in hidden[1:]:
            layers += [Dense(h, "relu"), Dropout(0.2)]
        model = Sequential(layers + [Dense(10, "softmax")], seed=0, backend="cupy")
        model.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        return model

    def no_handle(self, *args, **kwargs):   # what StepGraphs._handle does when fastnn's cuBLAS handle is unusable
        self.mode, self._cublas = "split", None
        return None

    original_handle = StepGraphs._handle
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    out = {}
    for name, hidden in models.items():
        res = out[name] = {}
        weights = {}
        for variant in ("eager", "full", "split"):
            r = res[variant] = {}
            try:
                if variant == "split":
                    StepGraphs._handle = no_handle
                model = build(hidden)
                graph = variant != "eager"
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t0 = time.perf_counter()
                    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, seed=7, cuda_graph=graph)
                    cupy.cuda.Device(0).synchronize()
                    r["first_epoch_s"] = time.perf_counter() - t0   # kernels load; with graphs: warm step, capture, checks
                    gpu_us, host_us = [], []
                    for i in range(timed):
                        e0.record()
                        h0 = time.perf_counter()
                        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, seed=8 + i,
                                  cuda_graph=graph)
                        e1.record()
                        e1.synchronize()
                        gpu_us.append(cupy.cuda.get_elapsed_time(e0, e1) * 1e3 / n_batches)
                        host_us.append((time.perf_counter() - h0) * 1e6 / n_batches)
                r["warnings"] = [str(w.message)[:400] for w in caught]
                r["us_per_step_median"] = statistics.median(gpu_us)
                r["us_per_step"] = gpu_us
                r["host_us_per_step_median"] = statistics.median(host_us)
                weights[variant] = [numpy.asarray(w, dtype=numpy.float64) for w in model.get_weights()]
                if graph:
                    graphs = model._graphs[2] if getattr(model, "_graphs", None) else None
                    r["mode"] = getattr(graphs, "mode", None)
                    r["disabled"] = getattr(graphs, "disabled", "no StepGraphs on the model")
                    cap = getattr(graphs, "captured", None)
                    if cap is not None:
                        r["graphs_per_step"] = sum(1 for item in cap.program if not callable(item))
                        r["eager_calls_per_step"] = sum(1 for item in cap.program if callable(item))
                        r["optimizer_captured"] = cap.pieces is not None
                        r["checks_left"] = cap.checks_left
                r["ok"] = True
            except Exception as exc:
                r["ok"] = False
                r["error"] = f"{type(exc).__name__}: {exc}"
                r["traceback"] = traceback.format_exc()[-1500:]
            finally:
                StepGraphs._handle = original_handle
        for variant in ("full", "split"):
            r = res[variant]
            if variant in weights and "eager" in weights:
                num = sum(float(numpy.sum((a - b) ** 2)) for a, b in zip(weights[variant], weights["eager"]))
                den = sum(float(numpy.sum(b ** 2)) for b in weights["eager"])
                r["weights_rel_err_vs_eager"] = (num / den) ** 0.5 if den else None
                if res["eager"].get("us_per_step_median") and r.get("us_per_step_median"):
                    r["speedup_vs_eager"] = res["eager"]["us_per_step_median"] / r["us_per_step_median"]
            r["correct"] = bool(r.get("ok") and r.get("mode") == variant and r.get("disabled") is None
                                and (r.get("weights_rel_err_vs_eager") or 1.0) < 1e-3)
    rec["models"] = out
    rec["setup"] = {"batch": batch, "steps_per_epoch": n_batches, "timed_epochs": timed, "optimizer": "adam 1e-3",
                    "dropout": 0.2, "dtype": "float32"}
    rec["all_correct"] = all(out[m][v].get("correct") for m in out for v in ("full", "split"))


PART_FUNCS = {"cupy_matmul_in_capture": part_cupy_matmul, "ctypes_cublas_in_capture": part_ctypes_cublas,
              "fastnn_kernels_in_capture": part_fastnn_kernels, "replay_cost": part_replay_cost,
              "fit_modes": part_fit_modes}


# ------------------------------------------------------------------------------ driver
def run_child(part, replays):
    """One part in this process: prints its record as the last stdout line."""
    rec = {}
    with Part(rec):
        PART_FUNCS[part](rec, replays)
    print(json.dumps(rec, default=_default))


def summarize():
    def get(*keys):
        cur = RECORD
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    summary = {
        "q1_cupy_matmul_raises_in_capture": get("cupy_matmul_in_capture", "raised"),
        "q1_exception": get("cupy_matmul_in_capture", "exception"),
        "q2_ctypes_sgemm_captured_and_correct": get("ctypes_cublas_in_capture", "answer", "sgemm_capturable_and_correct"),
        "q2_gemm_ex_fp32_tf32": [get("ctypes_cublas_in_capture", "answer", "gemm_ex_fp32"),
                                 get("ctypes_cublas_in_capture", "answer", "gemm_ex_tf32")],
        "q3_fastnn_kernels_replay_bitwise_equal": get("fastnn_kernels_in_capture", "compare_with_eager",
                                                      "all_bitwise_equal"),
        "q3_t_frozen_confirmed": get("fastnn_kernels_in_capture", "frozen_scalars", "t_frozen_confirmed"),
        "q4_us_per_step": {},
    }
    for label, r in (get("replay_cost", "configs") or {}).items():
        t = r.get("timing", {})
        summary["q4_us_per_step"][label] = {k: round(v["gpu_us_per_step_median"], 2) for k, v in t.items()}
    summary["q5_fit_modes_all_correct"] = get("fit_modes", "all_correct")
    summary["q5_fit_us_per_step"] = {}
    for model, variants in (get("fit_modes", "models") or {}).items():
        summary["q5_fit_us_per_step"][model] = {
            v: {k: (round(r[k], 6) if isinstance(r.get(k), float) else r.get(k))
                for k in ("us_per_step_median", "mode", "disabled", "weights_rel_err_vs_eager", "correct") if k in r}
            for v, r in variants.items()}
    summary["parts_ok"] = {p: bool(get(p, "ok")) for p in PARTS if p in RECORD}
    RECORD["summary"] = summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=PARTS, help="run one part in this process (the driver's children)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to run, each in its own process (default: all: {','.join(PARTS)})")
    ap.add_argument("--replays", type=int, default=None, help="graph replays (default 10; replay_cost: 100)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    if args.part:
        default = 100 if args.part == "replay_cost" else 10
        run_child(args.part, args.replays or default)
        return 0
    pr = gpu_or_skip()
    RECORD["probe_cupy"] = pr.reason
    try:
        RECORD["env"] = env_info()
    except Exception as exc:
        RECORD["env"] = {"error": f"{type(exc).__name__}: {exc}"}
    save()
    RECORD["parts_run"] = parts
    for part in parts:
        log(f"part {part} ...")
        t0 = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), "--part", part]
        if args.replays:
            cmd += ["--replays", str(args.replays)]
        rec, rc = run_subprocess(cmd, PART_TIMEOUT_S[part])
        rec["returncode"] = rc
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        RECORD[part] = rec
        log(f"part {part}: rc={rc} ok={rec.get('ok')} {rec.get('error', '')}")
        save()
    summarize()
    print(save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
