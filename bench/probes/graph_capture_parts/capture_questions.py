"""Parts 1-3 of the graph-capture probe: does ``cupy.matmul`` raise inside a capture, can cuBLAS be called
directly through ``ctypes`` inside one, and do fastnn's own launchers replay bit for bit."""
from __future__ import annotations

import traceback

import numpy

from fastnn.kernels import RELU
from fastnn.kernels.gpu.cublas import loaded_libcublas

from graph_capture_parts.common import F32, capture, dot_summary, host, max_abs_diff, rel_err
from graph_capture_parts.cublas import make_cublas

GEMM_ALGOS = ("sgemm", "gemm_ex", "gemm_ex_tf32")


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
        rec["eager"] = eager = eager_layouts(cb, s, d, C)
        rec["eager_all_ok"] = all(v.get("ok") for v in eager.values())
        # capture each algorithm in its own graph, replay onto a poisoned output
        captured = {algo: captured_gemm(cb, s, d, rng, replays, algo) for algo in GEMM_ALGOS}
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


def eager_layouts(cb, s, d, C):
    """Every layout the training step uses (nn, tn, nt), each algorithm, eagerly into ``C`` against ``cupy.matmul``."""
    import cupy

    layouts = {"nn": (d["A"], d["B"], False, False, lambda: cupy.matmul(d["A"], d["B"])),
               "tn": (d["At"], d["B"], True, False, lambda: cupy.matmul(d["At"].T, d["B"])),
               "nt": (d["A"], d["Bt"], False, True, lambda: cupy.matmul(d["A"], d["Bt"].T))}
    eager = {}
    for name, (A, B, ta, tb, ref_fn) in layouts.items():
        for algo in GEMM_ALGOS:
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
    return eager


def captured_gemm(cb, s, d, rng, replays, algo):
    """``d["A"] @ d["B"]`` by ``algo`` captured in its own graph, replayed onto a NaN-poisoned output, then
    replayed once more after ``d["A"]`` changes in place (the graph must read the live inputs)."""
    import cupy

    r = {}
    try:
        with s:
            A, B = d["A"], d["B"]
            m, k = A.shape
            out = cupy.empty((m, B.shape[1]), F32)
        graph, fn_err, end_err = capture(s, lambda: cb.gemm(A, B, out, algo=algo, quiet=False))
        r.update({"call_in_capture_error": fn_err, "end_capture_error": end_err, "captured": graph is not None
                  and fn_err is None})
        if graph is None or fn_err is not None:
            return r
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
    return r


class KernelStep:
    """Part 3's launches (``bias_act``, ``adam_step``, ``dropout_mask``, ``sq_norm``) on one stream: the
    inputs, the eager references (``t`` frozen at 1, as the graph has it, and advancing 1..N, as a real
    run has it) and the buffers the captured graph writes."""

    n_rows, d, n_par = 128, 512, 100_003
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    seed, drop_step, rate = 11, 7, 0.2

    def __init__(self, ops, s, replays):
        import cupy

        self.ops = ops
        rng = numpy.random.default_rng(3)
        n_rows, d, n_par = self.n_rows, self.d, self.n_par
        with s:
            self.x = cupy.asarray(rng.standard_normal((n_rows, d)).astype(F32))
            self.b = cupy.asarray(rng.standard_normal(d).astype(F32))
            self.g = cupy.asarray(rng.standard_normal(n_par).astype(F32))
            p0 = cupy.asarray(rng.standard_normal(n_par).astype(F32))
            m0 = cupy.asarray((rng.standard_normal(n_par) * 0.1).astype(F32))
            v0 = cupy.asarray(rng.random(n_par).astype(F32) * 0.01)
            self.y_e, self.mask_e = cupy.empty((n_rows, d), F32), cupy.empty((n_rows, d), F32)
            self.p_e, self.m_e, self.v_e = p0.copy(), m0.copy(), v0.copy()
            for _ in range(replays):
                self.launch(self.y_e, self.mask_e, self.p_e, self.m_e, self.v_e)
            self.norm_e = ops.sq_norm(self.g)
            self.p_t, m_t, v_t = p0.copy(), m0.copy(), v0.copy()
            for t in range(1, replays + 1):
                ops.adam_step(self.p_t, self.g, m_t, v_t, self.lr, self.b1, self.b2, self.eps, t)
            self.y_g, self.mask_g = cupy.empty((n_rows, d), F32), cupy.empty((n_rows, d), F32)
            self.p_g, self.m_g, self.v_g = p0.copy(), m0.copy(), v0.copy()
        s.synchronize()

    def launch(self, y, mask, p, m, v):
        """``bias_act``, then ``adam_step`` with ``t`` = 1, then ``dropout_mask``, into the given buffers."""
        ops = self.ops
        ops.bias_act(self.x, self.b, RELU, out=y)
        ops.adam_step(p, self.g, m, v, self.lr, self.b1, self.b2, self.eps, 1)
        ops.dropout_mask((self.n_rows, self.d), self.rate, self.seed, self.drop_step, out=mask)

    def compare(self, norm_g):
        """The replayed graph's buffers against the eager run (``norm_g``: ``sq_norm``'s graph output)."""
        cmp = {
            "bias_act_max_abs_diff": max_abs_diff(self.y_g, self.y_e),
            "adam_p_max_abs_diff": max_abs_diff(self.p_g, self.p_e),
            "adam_m_max_abs_diff": max_abs_diff(self.m_g, self.m_e),
            "adam_v_max_abs_diff": max_abs_diff(self.v_g, self.v_e),
            "dropout_mask_equal": bool((self.mask_g == self.mask_e).all()),
            "sq_norm_graph": float(host(norm_g)), "sq_norm_eager": float(host(self.norm_e)),
        }
        cmp["all_bitwise_equal"] = bool(cmp["bias_act_max_abs_diff"] == 0 and cmp["adam_p_max_abs_diff"] == 0
                                        and cmp["adam_m_max_abs_diff"] == 0 and cmp["adam_v_max_abs_diff"] == 0
                                        and cmp["dropout_mask_equal"] and cmp["sq_norm_graph"] == cmp["sq_norm_eager"])
        return cmp


def part_fastnn_kernels(rec, replays):
    import cupy

    from fastnn.backend.cupy_ops import CupyOps

    ops = CupyOps(0)
    s = cupy.cuda.Stream(non_blocking=True)
    k = KernelStep(ops, s, replays)
    holder = {}
    private_pool = cupy.cuda.MemoryPool()

    def step():
        k.launch(k.y_g, k.mask_g, k.p_g, k.m_g, k.v_g)
        with cupy.cuda.using_allocator(private_pool.malloc):   # sq_norm allocates: keep it off the shared pool
            holder["norm"] = ops.sq_norm(k.g)

    graph, fn_err, end_err = capture(s, step)
    rec.update({"call_in_capture_error": fn_err, "end_capture_error": end_err})
    if graph is None or fn_err is not None:
        rec["captured"] = False
        return
    rec["captured"] = True
    rec["graph"] = dot_summary(graph, 400)
    with s:
        k.y_g.fill(numpy.nan)
        k.mask_g.fill(numpy.nan)
        holder["norm"].fill(numpy.nan)
        for _ in range(replays):
            graph.launch(s)
    s.synchronize()
    cmp = k.compare(holder["norm"])
    rec["replays"] = replays
    rec["compare_with_eager"] = cmp
    rec["frozen_scalars"] = {
        "adam_p_max_abs_diff_vs_eager_with_advancing_t": max_abs_diff(k.p_g, k.p_t),
        # frozen = the replay equals eager-with-t=1 exactly and differs from eager with advancing t
        "t_frozen_confirmed": bool(cmp["adam_p_max_abs_diff"] == 0 and max_abs_diff(k.p_g, k.p_t) > 0),
        "note": "lr, t (bias correction) and the dropout step are kernel arguments, baked in at capture; "
                "a graph-replayed optimizer needs them in a device buffer that a kernel in the graph updates",
    }
    rec["private_pool_bytes"] = private_pool.total_bytes()
