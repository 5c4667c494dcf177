#!/usr/bin/env python3
"""GPU probe: the column reductions (``bias_grad``, ``act_backward_bias_grad``) on their 2-D grid
of column groups x row tiles against the same kernels on one row tile (the grid before issue 15:
ceil(D/32) blocks), at the layer shapes of models A, B512 and the wide model, batch 128 and 8192.

For each shape and float32: the tiling the launcher picks (``column_tiles``), GPU time per call
(CUDA events around a block of 50 back-to-back calls, median of 7 blocks, after 5 warm-ups), the
effective bandwidth (bytes read + written / time) and both results checked against the float64 sum
of the same array (``|got - exact| <= 4 eps sum|terms|``). Prints one JSON record and writes
``$OUT/column_reduce.json`` when ``OUT`` is set; without a GPU it exits 0 with ``"skipped"``.
Usage: ``python3 bench/probes/column_reduce.py``
"""
from __future__ import annotations

import statistics
import traceback

import numpy

from _probe import Probe  # noqa: E402  (this folder is on sys.path when run as a script)

NAME = "column_reduce"
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
SHAPES = [(100, 100), (100, 10), (128, 512), (128, 10), (8192, 512), (8192, 10), (8192, 4096), (128, 4096)]
BLOCK, SAMPLES, WARMUP = 50, 7, 5


def gpu_seconds(cupy, fn):
    """Median seconds per call: events around BLOCK back-to-back calls, SAMPLES times."""
    for _ in range(WARMUP):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
    out = []
    for _ in range(SAMPLES):
        e0.record()
        for _ in range(BLOCK):
            fn()
        e1.record()
        e1.synchronize()
        out.append(cupy.cuda.get_elapsed_time(e0, e1) / 1e3 / BLOCK)
    return statistics.median(out)


def within_bound(got, terms):
    exact = terms.astype(numpy.float64).sum(0)
    bound = 4 * numpy.finfo(terms.dtype).eps * numpy.abs(terms.astype(numpy.float64)).sum(0)
    return bool(numpy.all(numpy.abs(got.astype(numpy.float64) - exact) <= bound + 1e-30))


def one_tile(n, d, dev=None):
    """The stand-in for ``_loader.column_tiles`` (same arguments) that keeps every reduction on one tile."""
    return (1, max(n, 1))


def measure(cupy, L, act, n, d):
    from fastnn.kernels import RELU

    rng = numpy.random.default_rng(n * 7 + d)
    dout_h = rng.standard_normal((n, d)).astype(numpy.float32)
    y_h = rng.standard_normal((n, d)).astype(numpy.float32)
    dout, y = cupy.asarray(dout_h), cupy.asarray(y_h)
    dz, db = cupy.empty_like(dout), cupy.empty(d, dtype=numpy.float32)
    row = {"n": n, "d": d, "tiling": list(L.column_tiles(n, d))}
    saved = L.column_tiles
    for variant in ("tiled", "one_tile"):
        if variant == "one_tile":
            L.column_tiles = one_tile
        try:
            t_bg = gpu_seconds(cupy, lambda: act.bias_grad(dout, out=db))
            ok_bg = within_bound(cupy.asnumpy(db), dout_h)
            t_abg = gpu_seconds(cupy, lambda: act.act_backward_bias_grad(dout, y, RELU, out=dz, db=db))
            ok_abg = within_bound(cupy.asnumpy(db), cupy.asnumpy(dz))
        finally:
            L.column_tiles = saved
        row[variant] = {"bias_grad_us": t_bg * 1e6, "bias_grad_gbs": n * d * 4 / t_bg / 1e9,
                        "act_backward_bias_grad_us": t_abg * 1e6,
                        "act_backward_bias_grad_gbs": 3 * n * d * 4 / t_abg / 1e9,
                        "correct": ok_bg and ok_abg}
    row["speedup_bias_grad"] = row["one_tile"]["bias_grad_us"] / row["tiled"]["bias_grad_us"]
    row["speedup_act_backward_bias_grad"] = (row["one_tile"]["act_backward_bias_grad_us"]
                                            / row["tiled"]["act_backward_bias_grad_us"])
    return row


def main():
    PROBE.gpu_or_skip()
    import cupy

    from fastnn.kernels.gpu import _loader as L
    from fastnn.kernels.gpu import activations as act

    RECORD["sm_count"] = L.sm_count()
    RECORD["rows"] = rows = []
    for n, d in SHAPES:
        try:
            rows.append(measure(cupy, L, act, n, d))
        except Exception as exc:  # one shape's failure must not lose the others
            rows.append({"n": n, "d": d, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-1500:]})
        PROBE.log(f"{n}x{d}: {rows[-1]}")
    RECORD["all_correct"] = all(r.get("tiled", {}).get("correct") and r.get("one_tile", {}).get("correct")
                                for r in rows)
    print(PROBE.save())
    for r in rows:
        if "error" in r:
            print(f"{r['n']}x{r['d']}: ERROR {r['error']}")
        else:
            print(f"{r['n']:>5}x{r['d']:<5} tiles {r['tiling']}: bias_grad {r['one_tile']['bias_grad_us']:.1f} -> "
                  f"{r['tiled']['bias_grad_us']:.1f} us ({r['speedup_bias_grad']:.2f}x), act_backward_bias_grad "
                  f"{r['one_tile']['act_backward_bias_grad_us']:.1f} -> {r['tiled']['act_backward_bias_grad_us']:.1f} "
                  f"us ({r['speedup_act_backward_bias_grad']:.2f}x, {r['tiled']['act_backward_bias_grad_gbs']:.0f} "
                  f"GB/s), correct {r['tiled']['correct']}/{r['one_tile']['correct']}")


if __name__ == "__main__":
    main()
