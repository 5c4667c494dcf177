"""``fastnn-bench host``: fastnn's own host (Python) time per training step on the ``cupy`` backend.

Models A and B512 (``MODELS``) train through ``Sequential.fit`` on the ``cupy`` backend in a child
process whose ``cupy`` is the stub of ``host_stub.py``: NumPy-backed arrays on which every CUDA kernel launch,
GEMM, ``take``/fancy index and copy does no work (its result is a zero-filled array of the right
shape and dtype) and is counted; NumPy ufuncs (elementwise, reductions) are computed on the host
memory, because fastnn validates inputs by value, and counted as other CuPy operations. What is left to time is fastnn's
own Python on the host, with CuPy's own per-call cost (its Cython argument handling, the driver)
excluded: the floor an eager step on a real GPU cannot beat while it is launch-bound.

Per model: microseconds per eager step, the median over repeats of ``(T(2S) - T(S)) / S`` where
``T(k)`` is one ``fit`` epoch of ``k`` steps on device-resident data (so per-``fit`` costs cancel),
and per step: fastnn kernel launches, GEMMs, ``take``s, other CuPy operations (fills, elementwise,
reductions), host-to-device and device-to-host copies, and ``cudaGetDevice`` calls (the same
marginal difference of counts, an exact integer). The graph-replay step (``fit(cuda_graph=True)``)
is not driven: a stub with no-op kernels cannot pass the replay-against-eager check that
``fastnn.backend.graphs`` runs after capture, nor capture cuBLAS; the row says so.

``python -m fastnn.bench.host --worker`` is the child; ``run_host`` starts it (a fresh process, so
the stub is ``cupy`` before fastnn imports it) and reads its JSON from stdout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy

from fastnn.bench.host_stub import COUNTERS, _counts, _ops_by_name, install

HOST_MODELS = ("A", "B512")


# ------------------------------------------------------------------------------ the worker
def _fit_once(model, x, y, batch):
    for k in _counts:
        _counts[k] = 0
    _ops_by_name.clear()
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    return time.perf_counter() - t0, dict(_counts), dict(_ops_by_name)


def measure(name, steps, repeats, profile=None):
    """One model's row: µs per eager step and counts per step (see the module docstring)."""
    import fastnn
    from fastnn.bench.models import MODELS, build_model, synthetic_mnist

    spec = MODELS[name]
    batch = spec["batch"]
    model = build_model(name, "cupy")
    ops = model.ops
    x, y = synthetic_mnist(2 * steps * batch)
    xd, yd = ops.asarray(x), ops.asarray(y)
    xs, ys = xd[:steps * batch], yd[:steps * batch]
    _fit_once(model, xs, ys, batch)  # warm-up: caches, workspaces
    short, long_, per = [], [], []
    for _ in range(repeats):
        t1, c1, o1 = _fit_once(model, xs, ys, batch)
        t2, c2, o2 = _fit_once(model, xd, yd, batch)
        short.append(t1)
        long_.append(t2)
        per.append((t2 - t1) / steps)
    counts = {k: (c2[k] - c1[k]) / steps for k in COUNTERS}
    ops_per_step = {k: (o2.get(k, 0) - o1.get(k, 0)) / steps for k in sorted(set(o1) | set(o2))}
    row = {"model": name, "batch": batch, "steps": steps, "repeats": repeats,
           "us_per_step": 1e6 * float(numpy.median(per)),
           "us_per_step_min": 1e6 * float(numpy.min(per)),
           "us_per_step_fit": 1e6 * float(numpy.median(long_)) / (2 * steps),
           "fit_overhead_us": 1e6 * float(numpy.median(short) - numpy.median(per) * steps),
           "per_step": counts, "other_ops": {k: v for k, v in ops_per_step.items() if v},
           "per_fit": {k: c1[k] - steps * counts[k] for k in COUNTERS},
           "launches_per_step": counts["kernels"] + counts["gemms"] + counts["takes"] + counts["ops"],
           "fastnn": fastnn.__version__}
    if profile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        for _ in range(max(1, repeats)):
            _fit_once(model, xd, yd, batch)
        pr.disable()
        pstats.Stats(pr, stream=sys.stderr).sort_stats(profile).print_stats(40)
    return row


def _worker(argv):
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastnn.bench.host")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--models", default=",".join(HOST_MODELS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", default=None, metavar="SORT", help="cProfile the long fits to stderr (tottime, ...)")
    args = p.parse_args(argv)
    install()
    import warnings

    warnings.simplefilter("ignore")
    rows = [measure(m, args.steps, args.repeats, args.profile) for m in args.models.split(",") if m]
    print(json.dumps({"rows": rows}))


GRAPH_NOTE = ("graph replay (fit(cuda_graph=True)) not measured: the stub's no-op kernels cannot pass the "
              "replay-against-eager check fastnn.backend.graphs runs after capture")


def run_host(settings, models=HOST_MODELS):
    """The section: one child process per run, its rows, and the graph-replay note."""
    steps, repeats = {"smoke": (10, 2), "quick": (40, 3)}.get(settings.mode, (200, settings.repeats or 7))
    models = [m for m in models if m in HOST_MODELS] or list(HOST_MODELS)
    env = dict(os.environ, FASTNN_BACKEND="cupy")
    env.pop("FASTNN_STRICT_KERNELS", None)
    cmd = [sys.executable, "-m", "fastnn.bench.host", "--worker", "--models", ",".join(models),
           "--steps", str(steps), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fastnn-bench host: the worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    return {"rows": rows, "graph": GRAPH_NOTE, "steps": steps, "repeats": repeats}


def print_host(res):
    head = (f"{'model':<6} {'us/step':>8} {'min':>7} {'launch':>7} {'kernel':>7} {'gemm':>5} {'take':>5} "
            f"{'other':>6} {'h2d':>4} {'d2h':>4} {'getDev':>7}")
    lines = ["", "host: fastnn's own Python per eager step on the cupy backend, every CuPy launch and copy stubbed",
             head, "-" * len(head)]
    for r in res["rows"]:
        c = r["per_step"]
        lines.append(f"{r['model']:<6} {r['us_per_step']:>8.1f} {r['us_per_step_min']:>7.1f} "
                     f"{r['launches_per_step']:>7g} {c['kernels']:>7g} {c['gemms']:>5g} {c['takes']:>5g} "
                     f"{c['ops']:>6g} {c['h2d']:>4g} {c['d2h']:>4g} {c['get_device']:>7g}")
        if r["other_ops"]:
            lines.append(f"       other ops per step: {', '.join(f'{k} {v:g}' for k, v in r['other_ops'].items())}")
    lines.append(f"({res['graph']})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    _worker(sys.argv[1:])
