#!/usr/bin/env python3
"""GPU probe: device-to-device copy bandwidth, and fastnn's optimizer kernels as a fraction of it.

1. ``copy``: a 1 GiB float32 buffer copied device to device, by ``cudaMemcpyAsync``
   (``dst.data.copy_from_device_async``) and by CuPy's elementwise copy (``cupy.copyto``);
   each copy timed alone with CUDA events, median of 20 after 3 warm-ups; GB/s counts bytes
   read + bytes written (2 x size), the STREAM convention that ``fastnn-bench`` also uses.
2. ``optimizers``: ``sgd_step``, ``momentum_step``, ``rmsprop_step``, ``adam_step`` (and
   ``adagrad_step``) of ``CupyOps`` over 669,706 (model B512) and 20,000,000 float32 parameters.
   Bytes touched per step: read p, g and the state, write p and the state, i.e. 3, 5, 5, 7 (and 5)
   x 4 x n. Two timings: eager (events around a block of back-to-back Python calls: includes the
   launchers' host cost when that is the bottleneck) and graph (the same block captured once as a
   CUDA graph and replayed: GPU time only). Each as GB/s and as a fraction of the memcpy copy
   bandwidth, and of a same-size copy (``bytes touched / 2`` copied, so it runs from the same cache
   level: B512's state fits in the 50 MB L2, which can put it above 100% of the DRAM copy).
   One step of each kernel is first checked against the NumPy reference ``Ops``.

Prints one JSON record on stdout and writes ``$OUT/optimizer_bandwidth.json`` when ``OUT`` is set.
Without a GPU it exits 0 with ``"skipped": "no GPU: <reason>"``.
Usage: ``python3 bench/probes/optimizer_bandwidth.py [--sizes 669706,20000000] [--copy-mib 1024]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import numpy

from _probe import Probe  # noqa: E402  (this folder is on sys.path when run as a script)

NAME = "optimizer_bandwidth"
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
save, log, gpu_or_skip = PROBE.save, PROBE.log, PROBE.gpu_or_skip
F32 = numpy.float32
B512_PARAMS = 669_706
# name -> (state arrays, bytes touched per parameter: reads + writes, 4 bytes each)
OPTIMIZERS = {
    "sgd": ((), 3 * 4),
    "momentum": (("v",), 5 * 4),
    "adagrad": (("h",), 5 * 4),
    "rmsprop": (("h",), 5 * 4),
    "adam": (("m", "v"), 7 * 4),
}


def record_error(rec, exc):
    rec["ok"] = False
    rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["traceback"] = traceback.format_exc()[-2000:]


def summary_stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ------------------------------------------------------------------------------ timing
def time_each(cupy, stream, fn, reps, warmup=3):
    """Seconds of each of ``reps`` calls of ``fn``, each between its own pair of events."""
    with stream:
        for _ in range(warmup):
            fn()
    stream.synchronize()
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    out = []
    for _ in range(reps):
        with stream:
            e0.record(stream)
            fn()
            e1.record(stream)
        e1.synchronize()
        out.append(cupy.cuda.get_elapsed_time(e0, e1) / 1e3)
    return out


def time_blocks(cupy, stream, fn, block, samples):
    """Seconds per call: events around ``block`` back-to-back calls, one value per sample."""
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    out = []
    for _ in range(samples):
        with stream:
            e0.record(stream)
            for _ in range(block):
                fn()
            e1.record(stream)
        e1.synchronize()
        out.append(cupy.cuda.get_elapsed_time(e0, e1) / 1e3 / block)
    return out


def copy_gbs(cupy, stream, nbytes, reps=20, block=1):
    """Median GB/s (read + write) of a device-to-device memcpy of ``nbytes``; ``block`` > 1 times back-to-back copies."""
    n = max(1, nbytes // 4)
    with stream:
        src = cupy.arange(n, dtype=cupy.float32)   # not zeros (METHOD.md)
        dst = cupy.empty_like(src)

    def memcpy():
        dst.data.copy_from_device_async(src.data, src.nbytes, stream)

    if block == 1:
        ts = time_each(cupy, stream, memcpy, reps)
    else:
        with stream:
            for _ in range(3):
                memcpy()
        ts = time_blocks(cupy, stream, memcpy, block, reps)
    ok = bool((dst[:1024] == src[:1024]).all()) and bool((dst[-1024:] == src[-1024:]).all())
    return 2 * src.nbytes / statistics.median(ts) / 1e9, ts, ok


# ------------------------------------------------------------------------------ parts
def part_copy(rec, copy_mib, s):
    import cupy

    nbytes = copy_mib << 20
    gbs, ts, ok = copy_gbs(cupy, s, nbytes)
    rec["bytes"] = nbytes
    rec["memcpy_gbs"] = gbs
    rec["memcpy_ms"] = summary_stats([t * 1e3 for t in ts])
    rec["memcpy_verified"] = ok
    n = nbytes // 4
    with s:
        src = cupy.arange(n, dtype=cupy.float32)
        src *= cupy.float32(1.5)
        dst = cupy.empty_like(src)
    ts2 = time_each(cupy, s, lambda: cupy.copyto(dst, src), 20)
    rec["copyto_gbs"] = 2 * nbytes / statistics.median(ts2) / 1e9
    rec["copyto_ms"] = summary_stats([t * 1e3 for t in ts2])
    rec["reference_gbs"] = gbs
    rec["note"] = "GB/s = (bytes read + bytes written) / median time; reference_gbs (memcpy) is what fractions use"


def make_state(cupy, s, n, names, seed):
    """Random host arrays ``p``, ``g`` and the state (never zeros; ``v``/``h`` non-negative) and their device copies."""
    rng = numpy.random.default_rng(seed)
    host = {"p": rng.standard_normal(n).astype(F32), "g": rng.standard_normal(n).astype(F32)}
    for k in names:
        if k in ("v", "h"):
            host[k] = rng.random(n).astype(F32) * F32(0.01)
        else:
            host[k] = (rng.standard_normal(n) * 0.01).astype(F32)
    with s:
        dev = {k: cupy.asarray(v) for k, v in host.items()}
    return host, dev


def call(ops, name, a):
    if name == "sgd":
        ops.sgd_step(a["p"], a["g"], 0.01)
    elif name == "momentum":
        ops.momentum_step(a["p"], a["g"], a["v"], 0.01, 0.9)
    elif name == "adagrad":
        ops.adagrad_step(a["p"], a["g"], a["h"], 0.01, 1e-7)
    elif name == "rmsprop":
        ops.rmsprop_step(a["p"], a["g"], a["h"], 0.001, 0.9, 1e-7)
    elif name == "adam":
        ops.adam_step(a["p"], a["g"], a["m"], a["v"], 1e-3, 0.9, 0.999, 1e-7, 1)
    else:
        raise ValueError(name)


def check_once(ops, ref, cupy, s, name, n, seed):
    """One step on the GPU against the NumPy reference; max abs diff of every updated array."""
    names, _ = OPTIMIZERS[name]
    host, dev = make_state(cupy, s, n, names, seed)
    with s:
        call(ops, name, dev)
    s.synchronize()
    h = {k: v.copy() for k, v in host.items()}
    call(ref, name, h)
    diffs = {k: float(numpy.max(numpy.abs(dev[k].get().astype(numpy.float64) - h[k]))) for k in ("p", *names)}
    ok = all(numpy.allclose(dev[k].get(), h[k], rtol=1e-5, atol=1e-6) for k in ("p", *names))
    return {"max_abs_diff": diffs, "allclose": bool(ok)}


def time_graph(cupy, s, fn, block):
    """Seconds per call of ``fn``: ``block`` calls captured once as a CUDA graph and replayed (GPU time only)."""
    with s:
        s.begin_capture()
        try:
            for _ in range(block):
                fn()
        finally:
            graph = s.end_capture()
        graph.upload(s)
        graph.launch(s)
    s.synchronize()
    ts = time_blocks(cupy, s, lambda: graph.launch(s), 1, 7)
    return [t / block for t in ts]


def measure(ops, cupy, s, name, n, ref_gbs):
    """One optimizer over ``n`` parameters: eager and graph timings, as GB/s and as fractions of the copies."""
    names, bpp = OPTIMIZERS[name]
    r = {"params": n, "bytes_per_step": bpp * n}
    try:
        _, dev = make_state(cupy, s, n, names, 20)
        block = 200 if n < 5_000_000 else 20
        with s:
            for _ in range(5):
                call(ops, name, dev)
        s.synchronize()
        eager = time_blocks(cupy, s, lambda: call(ops, name, dev), block, 7)
        r["eager_us"] = summary_stats([t * 1e6 for t in eager])
        r["eager_gbs"] = bpp * n / statistics.median(eager) / 1e9
        # the same block captured as one graph: GPU time without the Python launch cost
        try:
            graph_t = time_graph(cupy, s, lambda: call(ops, name, dev), block)
            r["graph_us"] = summary_stats([t * 1e6 for t in graph_t])
            r["graph_gbs"] = bpp * n / statistics.median(graph_t) / 1e9
        except Exception as exc:
            r["graph_error"] = f"{type(exc).__name__}: {exc}"
        finite = bool(cupy.isfinite(dev["p"]).all())
        r["p_finite_after"] = finite
        same, _, _ = copy_gbs(cupy, s, bpp * n // 2, reps=7, block=block)
        r["same_size_copy_gbs"] = same
        best = r.get("graph_gbs", r["eager_gbs"])
        r["fraction_of_copy"] = best / ref_gbs if ref_gbs else None
        r["fraction_of_same_size_copy"] = best / same
        r["eager_fraction_of_copy"] = r["eager_gbs"] / ref_gbs if ref_gbs else None
    except Exception as exc:
        record_error(r, exc)
    return r


def part_optimizers(rec, sizes, ref_gbs, s):
    import cupy

    from fastnn.backend.cupy_ops import CupyOps
    from fastnn.backend.ops import Ops

    ops, ref = CupyOps(0), Ops()
    rec["sizes"] = list(sizes)
    out = rec["results"] = {}
    for name in OPTIMIZERS:
        out[name] = {}
        try:
            out[name]["check_vs_numpy"] = check_once(ops, ref, cupy, s, name, min(sizes), 10)
        except Exception as exc:
            out[name]["check_vs_numpy"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        for n in sizes:
            out[name][str(n)] = measure(ops, cupy, s, name, n, ref_gbs)
            save()
        log(f"{name}: " + ", ".join(f"{n}: {out[name].get(str(n), {}).get('fraction_of_copy')}" for n in sizes))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=f"{B512_PARAMS},20000000", help="comma-separated parameter counts")
    ap.add_argument("--copy-mib", type=int, default=1024, help="size of the copied buffer in MiB (default 1024)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    pr = gpu_or_skip()
    RECORD["probe_cupy"] = pr.reason
    import cupy

    RECORD["env"] = {"cupy": cupy.__version__, "device": pr.detail.get("device_name"), "numpy": numpy.__version__}
    s = cupy.cuda.Stream(non_blocking=True)
    rec = RECORD["copy"] = {}
    t0 = time.perf_counter()
    try:
        part_copy(rec, args.copy_mib, s)
        rec["ok"] = True
    except Exception as exc:
        record_error(rec, exc)
    rec["seconds"] = time.perf_counter() - t0
    save()
    log(f"copy: memcpy {rec.get('memcpy_gbs')} GB/s, copyto {rec.get('copyto_gbs')} GB/s")
    rec = RECORD["optimizers"] = {}
    t0 = time.perf_counter()
    try:
        part_optimizers(rec, sizes, RECORD["copy"].get("reference_gbs"), s)
        rec["ok"] = True
    except Exception as exc:
        record_error(rec, exc)
    rec["seconds"] = time.perf_counter() - t0
    RECORD["summary"] = {
        "copy_gbs": RECORD["copy"].get("reference_gbs"),
        "note": "fraction_of_copy uses the graph timing (GPU time) where capture worked, else eager",
        "fraction_of_copy": {name: {n: v.get("fraction_of_copy") for n, v in r.items() if n != "check_vs_numpy"}
                             for name, r in (rec.get("results") or {}).items()},
        "eager_fraction_of_copy": {name: {n: v.get("eager_fraction_of_copy") for n, v in r.items()
                                          if n != "check_vs_numpy"}
                                   for name, r in (rec.get("results") or {}).items()},
        "checks_allclose": {name: r.get("check_vs_numpy", {}).get("allclose")
                            for name, r in (rec.get("results") or {}).items()},
        "target": "issue 5: optimizer step >= 80% of the device-to-device copy bandwidth",
    }
    print(save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
