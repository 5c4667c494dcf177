"""The ``ops`` section: each fused primitive at model B512's shapes per backend against NumPy, and Adam's
effective bandwidth as a fraction of the measured copy bandwidth."""
from __future__ import annotations

import statistics

import numpy

from fastnn.bench.hardware import measure_copy
from fastnn.bench.models import F32, MODELS, param_count
from fastnn.bench.timing import clock_for, interleaved, stats


def op_cases(ops, dtype=F32, n=128, d=512, classes=10, params=None, seed=3):
    """``{name: fn}``: each primitive at model B512's shapes, writing into preallocated buffers.

    The arrays are made on the host from one seed (identical across backends), then moved.
    """
    from fastnn.kernels import RELU

    dtype = numpy.dtype(dtype)
    params = params or param_count(MODELS["B512"])
    rng = numpy.random.default_rng(seed)
    A = ops.asarray

    def r(*shape, lo=-1.0, hi=1.0):
        return A(rng.uniform(lo, hi, shape).astype(dtype))

    x, b, out = r(n, d), r(d), A(numpy.empty((n, d), dtype))
    dout, y = r(n, d), A(numpy.maximum(rng.uniform(-1, 1, (n, d)), 0).astype(dtype))
    dz, db = A(numpy.empty((n, d), dtype)), A(numpy.empty(d, dtype))
    logits, labels = r(n, classes, lo=-3, hi=3), A(rng.integers(0, classes, n).astype(numpy.int64))
    probs, dlogits = A(numpy.empty((n, classes), dtype)), A(numpy.empty((n, classes), dtype))
    mask = A(numpy.empty((n, d), dtype))
    p, g = r(params, lo=-0.1, hi=0.1), r(params, lo=-1e-2, hi=1e-2)
    s1, s2 = A(numpy.zeros(params, dtype)), A(numpy.full(params, 1e-4, dtype))
    step = [0]

    def dropout():
        step[0] += 1
        return ops.dropout_mask((n, d), 0.2, 1234, step[0], dtype=dtype, out=mask)

    return {
        f"bias_act relu {n}x{d}": lambda: ops.bias_act(x, b, RELU, out=out),
        f"act_backward_bias_grad relu {n}x{d}": lambda: ops.act_backward_bias_grad(dout, y, RELU, out=dz, db=db),
        f"softmax_xent {n}x{classes} (index labels)": lambda: ops.softmax_xent(logits, labels, y=probs, dx=dlogits),
        f"dropout_mask {n}x{d} rate 0.2": dropout,
        f"mul {n}x{d}": lambda: ops.mul(x, mask, out=out),
        f"sgd_step {params}": lambda: ops.sgd_step(p, g, 1e-3),
        f"momentum_step {params}": lambda: ops.momentum_step(p, g, s1, 1e-3, 0.9),
        f"rmsprop_step {params}": lambda: ops.rmsprop_step(p, g, s2, 1e-3, 0.9, 1e-7),
        f"adam_step {params}": lambda: ops.adam_step(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-7, 10),
    }


def run_ops(settings, backends, ctx):
    from fastnn import get_ops

    if "copy_gbs" not in ctx:
        ctx["copy_gbs"] = measure_copy(settings)["gbs"]
    params = param_count(MODELS["B512"])
    adam_bytes = 7 * params * F32.itemsize
    # a copy touching as many bytes as one Adam step (same cache level), for comparison
    ctx.setdefault("copy_same_bytes_gbs", measure_copy(settings, adam_bytes // 2)["gbs"])
    per_backend = {name: op_cases(get_ops(name), params=params) for name in backends}
    names = list(per_backend[backends[0]])
    rows = []
    for op in names:
        cases = [(be, clock_for(get_ops(be)), per_backend[be][op]) for be in backends]
        timed = interleaved(cases, settings.repeats, settings.min_block_s)
        ref = statistics.median(timed["numpy"][0]) if "numpy" in timed else None
        for be in backends:
            st = stats([t * 1e6 for t in timed[be][0]])
            row = {"op": op, "backend": be, "us": st, "calls_per_block": timed[be][1],
                   "speedup_vs_numpy": (ref * 1e6 / st["median"]) if ref else None}
            if op.startswith("adam_step"):
                gbs = adam_bytes / (st["median"] / 1e6) / 1e9
                copy = ctx["gpu_copy_gbs"] if be == "cupy" and "gpu_copy_gbs" in ctx else ctx["copy_gbs"]
                row.update(bytes=adam_bytes, gbs=gbs, copy_gbs=copy, fraction_of_copy=gbs / copy)
                if be != "cupy":
                    row["fraction_of_same_size_copy"] = gbs / ctx["copy_same_bytes_gbs"]
            rows.append(row)
    return {"dtype": "float32", "params": params, "copy_gbs": ctx["copy_gbs"],
            "copy_same_bytes_gbs": ctx["copy_same_bytes_gbs"], "rows": rows}

