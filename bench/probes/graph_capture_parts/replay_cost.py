"""Part 4 of the graph-capture probe: what a replayed training-like step costs against the same step run
eagerly (GEMMs by ``cupy.matmul`` or through the ctypes handle), on the GPU and on the host."""
from __future__ import annotations

import statistics
import time
import traceback

import numpy

from fastnn.kernels import RELU

from graph_capture_parts.common import F32, capture, dot_summary, rel_err
from graph_capture_parts.cublas import make_cublas

CONFIGS = [("B512-layer1", 128, 784, 512), ("B64-layer1", 128, 784, 64), ("wide-layer2", 128, 4096, 4096)]
ADAM = (1e-3, 0.9, 0.999, 1e-7)   # lr, beta1, beta2, eps
ROUNDS = 5


def part_replay_cost(rec, replays):
    import cupy

    from fastnn.backend.cupy_ops import CupyOps

    ops = CupyOps(0)
    s = cupy.cuda.Stream(non_blocking=True)
    try:
        cb = make_cublas(s, rec)
    except Exception as exc:   # without direct cuBLAS the graph would hold no GEMMs: say so, time nothing
        rec["error"] = f"direct cuBLAS unavailable ({type(exc).__name__}: {exc}); no GEMM can be captured"
        rec["ok"] = False
        return
    rng = numpy.random.default_rng(4)
    rec["configs"] = {label: replay_config(ops, cb, s, rng, replays, batch, fin, fout)
                      for label, batch, fin, fout in CONFIGS}
    rec["note"] = ("GPU time: CUDA events around `steps_per_sample` back-to-back steps on one stream, median of the "
                   "interleaved samples; host time: the Python loop that submitted them. The graph holds the three "
                   "GEMMs through the ctypes handle, bias_act, act_backward_bias_grad and adam_step (t frozen).")
    try:
        cb.destroy()
    except Exception as exc:
        rec["destroy_error"] = f"{type(exc).__name__}: {exc}"


def replay_config(ops, cb, s, rng, replays, batch, fin, fout):
    """One layer shape: the three variants checked over 3 steps, then timed in interleaved rounds."""
    r = {"batch": batch, "in": fin, "out": fout}
    try:
        npar = fin * fout + fout
        b = layer_buffers(s, rng, batch, fin, fout)
        step_cupy, step_ctypes, reset = layer_steps(ops, cb, b)
        graph = check_three_steps(r, s, b["p"], step_cupy, step_ctypes, reset)
        variants = {"eager_cupy": step_cupy, "eager_ctypes": step_ctypes}
        if graph is not None:
            variants["graph"] = lambda: graph.launch(s)
        timing = time_variants(s, variants, replays)
        r["timing"] = timing
        r["steps_per_sample"], r["samples"] = replays, ROUNDS
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
    return r


def layer_buffers(s, rng, batch, fin, fout):
    """One layer's flat parameters, gradients and Adam state (W and bias are views into them), its input,
    the upstream gradient and the activations, allocated on ``s``."""
    import cupy

    npar = fin * fout + fout
    with s:
        p = cupy.asarray((rng.standard_normal(npar) * 0.05).astype(F32))
        g = cupy.zeros(npar, F32)
        m, v = cupy.zeros(npar, F32), cupy.zeros(npar, F32)
        b = {"p": p, "g": g, "m": m, "v": v,
             "W": p[:fin * fout].reshape(fin, fout), "bias": p[fin * fout:],
             "dW": g[:fin * fout].reshape(fin, fout), "db": g[fin * fout:],
             "x": cupy.asarray(rng.random((batch, fin)).astype(F32)),
             "dh": cupy.asarray((rng.standard_normal((batch, fout)) * 0.01).astype(F32))}
        b["z"], b["h"], b["dz"] = (cupy.empty((batch, fout), F32) for _ in range(3))
        b["dx"] = cupy.empty((batch, fin), F32)
        b["state0"] = (p.copy(), m.copy(), v.copy())
    return b


def layer_steps(ops, cb, b):
    """``(step_cupy, step_ctypes, reset)``: the step with its GEMMs by ``cupy.matmul`` or through the ctypes
    handle (forward, bias_act, act_backward_bias_grad, dW, dx, adam_step with ``t`` = 1), and the reset of
    the parameters and Adam state."""
    import cupy

    p, g, m, v, W, bias, dW, db = (b[k] for k in ("p", "g", "m", "v", "W", "bias", "dW", "db"))
    x, dh, z, h, dz, dx, state0 = (b[k] for k in ("x", "dh", "z", "h", "dz", "dx", "state0"))
    lr, b1, b2, eps = ADAM

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

    return step_cupy, step_ctypes, reset


def check_three_steps(r, s, p, step_cupy, step_ctypes, reset):
    """3 steps of each variant from the same state, compared; captures ``step_ctypes`` and returns the
    graph (``None`` when the capture failed)."""
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
    if graph is None or fn_err is not None:
        return None
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
    return graph


def time_variants(s, variants, replays):
    """GPU µs (CUDA events) and host µs per step of each variant: ``ROUNDS`` interleaved rounds of
    ``replays`` steps each, after 5 warm-up steps."""
    import cupy

    samples = {k: {"gpu_us": [], "host_us": []} for k in variants}
    with s:
        for fn in variants.values():   # warm-up
            for _ in range(5):
                fn()
    s.synchronize()
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(ROUNDS):
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
    return timing
