"""``fastnn-bench host``: fastnn's own host (Python) time per training step on the ``cupy`` backend.

Models A and B512 (``MODELS``) train through ``Sequential.fit`` on the ``cupy`` backend in a child
process whose ``cupy`` is the stub of ``host_stub.py``: NumPy-backed arrays on which every CUDA kernel launch,
GEMM, ``take``/fancy index and host/device copy does no work (its result is a zero-filled array of
the right shape and dtype) and is counted; device-to-device copies (``copy``, ``a[...] = b``) are done,
none is in an eager step; NumPy ufuncs (elementwise, reductions) are computed on the host
memory, because fastnn validates inputs by value, and counted as other CuPy operations. What is left to time is fastnn's
own Python on the host, with CuPy's own per-call cost (its Cython argument handling, the driver)
excluded: the floor an eager step on a real GPU cannot beat while it is launch-bound.

Per model: microseconds per eager step, the median over repeats of ``(T(2) - T(1)) / S`` where
``T(e)`` is one ``fit`` of ``e`` epochs of ``S`` steps on the same device-resident data (so per-``fit``
costs cancel, including ``fit``'s input validation, which scales with the data and which the stub
computes on the host where a GPU would not),
and per step: fastnn kernel launches, GEMMs, ``take``s, other CuPy operations (fills, elementwise,
reductions), host-to-device and device-to-host copies, and ``cudaGetDevice`` calls (the same
marginal difference of counts, rounded: the remainder, ``per_epoch``, is once per epoch).

The graph-replay step (``fit(cuda_graph=True)``), per model, measured the same way on a second
model: the stub captures (``Stream.begin_capture``/``end_capture`` give a stub ``Graph`` whose
operations are recorded as nodes, "captured", and whose ``launch`` is one counted no-op), and
``fastnn.kernels.gpu.cublas.Cublas`` is replaced (in the worker only) by the stub handle, so the
step is captured in "full" mode: one graph per step, GEMMs inside. The warm-up ``fit`` holds the
eager warm step, the capture and the two checked replays (fastnn's own replay-against-eager check,
which passes because no-op kernels leave the same values in both runs and the stub's device copies
are real); the timed ``fit`` calls replay only. Per replay step: graph launches, the launches and
copies around it, CUDA event records/waits (``events``), host waits (``syncs``), ``with Device``
entries, and the mode; per capture: the graph's nodes. A host read or synchronous copy on the
capturing stream raises, as CUDA refuses it.

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

from fastnn.bench.host_stub import COUNTERS, _counts, _ops_by_name, install, install_cublas

HOST_MODELS = ("A", "B512")


# ------------------------------------------------------------------------------ the worker
def _fit_once(model, x, y, batch, graph=False, epochs=1):
    for k in _counts:
        _counts[k] = 0
    _ops_by_name.clear()
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True, cuda_graph=graph)
    return time.perf_counter() - t0, dict(_counts), dict(_ops_by_name)


def _launches(c):
    return c["kernels"] + c["gemms"] + c["takes"] + c["ops"]


def measure(name, steps, repeats, profile=None, graph=False):
    """One model's row: µs per eager (or, ``graph``, replayed) step and counts per step (see the
    module docstring)."""
    import fastnn
    from fastnn.bench.models import MODELS, build_model, synthetic_mnist

    spec = MODELS[name]
    batch = spec["batch"]
    model = build_model(name, "cupy")
    ops = model.ops
    x, y = synthetic_mnist(steps * batch)
    xd, yd = ops.asarray(x), ops.asarray(y)
    _, warm, _ = _fit_once(model, xd, yd, batch, graph)  # warm-up: caches, workspaces (graph: capture, checks)
    row = {"model": name, "batch": batch, "steps": steps, "repeats": repeats, "fastnn": fastnn.__version__}
    if graph:
        from fastnn.training.step import TrainStep

        g = TrainStep.of(model).graphs
        cap = g.captured if g is not None else None
        if g is None or g.disabled is not None or cap is None:
            raise RuntimeError(f"fastnn-bench host: {name}: fit(cuda_graph=True) did not capture: "
                               f"{getattr(g, 'disabled', None) or 'no StepGraphs'}")
        graphs = [item for item in cap.program if not callable(item)]
        row.update(mode=g.mode, graphs=len(graphs), eager_pieces=len(cap.program) - len(graphs),
                   nodes=[len(item.nodes) for item in graphs], checks_left=cap.checks_left)
    one, two, per = [], [], []
    for _ in range(repeats):
        t1, c1, o1 = _fit_once(model, xd, yd, batch, graph)
        t2, c2, o2 = _fit_once(model, xd, yd, batch, graph, epochs=2)
        one.append(t1)
        two.append(t2)
        per.append((t2 - t1) / steps)
    # per step: the nearest integer; what is left is once per epoch (the epoch's logs, the first step)
    counts = {k: round((c2[k] - c1[k]) / steps) for k in COUNTERS}
    ops_diff = {k: o2.get(k, 0) - o1.get(k, 0) for k in sorted(set(o1) | set(o2))}
    ops_per_step = {k: round(v / steps) for k, v in ops_diff.items()}
    row.update({"us_per_step": 1e6 * float(numpy.median(per)),
                "us_per_step_min": 1e6 * float(numpy.min(per)),
                "us_per_step_fit": 1e6 * float(numpy.median(two)) / (2 * steps),
                "fit_overhead_us": 1e6 * float(numpy.median(one) - numpy.median(per) * steps),
                "per_step": counts, "other_ops": {k: v for k, v in ops_per_step.items() if v},
                "other_ops_per_epoch": {k: d for k, v in ops_diff.items() if (d := v - steps * ops_per_step[k])},
                "per_epoch": {k: v for k in COUNTERS if (v := c2[k] - c1[k] - steps * counts[k])},
                "per_fit": {k: 2 * c1[k] - c2[k] for k in COUNTERS},
                "launches_per_step": _launches(counts)})
    if graph:
        row["warmup_fit"] = {k: v for k, v in warm.items() if v}
    if profile:
        _profile(model, xd, yd, batch, graph, steps, repeats, profile, f"{name} {'replay' if graph else 'eager'}")
    return row


def _profile(model, x, y, batch, graph, steps, repeats, sort, title, top=30):
    """cProfile the two-epoch fits to stderr (``sort``), then a per-step table by the same marginal
    method as the timing: each function's time in the two-epoch fits less its time in the one-epoch
    ones, over the steps between them, so per-fit costs (input validation, callbacks) cancel."""
    import cProfile
    import pstats

    def stats(epochs):
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(max(1, repeats)):
            _fit_once(model, x, y, batch, graph, epochs)
        pr.disable()
        return pstats.Stats(pr, stream=sys.stderr)

    s1, s2 = stats(1), stats(2)
    s2.sort_stats(sort).print_stats(40)
    n = max(1, repeats) * steps
    z = (0, 0, 0.0, 0.0)
    rows = []
    for key, (_, nc, tt, ct, _) in s2.stats.items():
        _, nc1, tt1, ct1, _ = s1.stats.get(key, z + (None,))
        where = f"{os.path.relpath(key[0]) if key[0].startswith('/') else key[0]}:{key[1]}({key[2]})"
        rows.append((1e6 * (tt - tt1) / n, 1e6 * (ct - ct1) / n, (nc - nc1) / n, where))
    rows.sort(key=lambda r: -r[1] if sort == "cumulative" else -r[0])
    print(f"== {title}: per step (2-epoch fits less 1-epoch fits, {n} steps): own us, cumulative us, calls",
          file=sys.stderr)
    for own, cum, calls, where in rows[:top]:
        print(f"{own:8.2f} {cum:8.2f} {calls:6.2f}  {where}", file=sys.stderr)


def _worker(argv):
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastnn.bench.host")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--models", default=",".join(HOST_MODELS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--kinds", default="eager,graph", help="eager, graph (replay) or both, comma-separated")
    p.add_argument("--profile", default=None, metavar="SORT",
                   help="cProfile the fits to stderr (tottime, cumulative, ...), and a per-step table")
    args = p.parse_args(argv)
    install()
    install_cublas()  # fit(cuda_graph=True) in "full" mode: the stub's direct cuBLAS handle
    import warnings

    warnings.simplefilter("ignore")
    kinds = args.kinds.split(",")
    models = [m for m in args.models.split(",") if m]
    rows = [measure(m, args.steps, args.repeats, args.profile) for m in models if "eager" in kinds]
    graph_rows = [measure(m, args.steps, args.repeats, args.profile, graph=True) for m in models if "graph" in kinds]
    print(json.dumps({"rows": rows, "graph_rows": graph_rows}))


def run_host(settings, models=HOST_MODELS):
    """The section: one child process per run, its eager rows and its graph-replay rows."""
    steps, repeats = {"smoke": (10, 2), "quick": (40, 3)}.get(settings.mode, (200, settings.repeats or 7))
    models = [m for m in models if m in HOST_MODELS] or list(HOST_MODELS)
    env = dict(os.environ, FASTNN_BACKEND="cupy")
    env.pop("FASTNN_STRICT_KERNELS", None)
    cmd = [sys.executable, "-m", "fastnn.bench.host", "--worker", "--models", ",".join(models),
           "--steps", str(steps), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"fastnn-bench host: the worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rows": out["rows"], "graph_rows": out["graph_rows"], "steps": steps, "repeats": repeats}


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
    head = (f"{'model':<6} {'us/step':>8} {'min':>7} {'mode':>5} {'graph':>6} {'launch':>7} {'take':>5} {'other':>6} "
            f"{'h2d':>4} {'d2h':>4} {'events':>7} {'syncs':>6} {'Device':>7} {'nodes':>6}")
    lines += ["", "host: the same per graph-replay step (fit(cuda_graph=True)); graph: graph launches; launch: other "
              "launches; events: records and waits; syncs: host waits; Device: `with Device` entries; nodes: per graph",
              head, "-" * len(head)]
    for r in res.get("graph_rows", []):
        c = r["per_step"]
        lines.append(f"{r['model']:<6} {r['us_per_step']:>8.1f} {r['us_per_step_min']:>7.1f} {r['mode']:>5} "
                     f"{c['graph_launches']:>6g} {r['launches_per_step']:>7g} {c['takes']:>5g} {c['ops']:>6g} "
                     f"{c['h2d']:>4g} {c['d2h']:>4g} {c['events']:>7g} {c['syncs']:>6g} {c['device_enter']:>7g} "
                     f"{'+'.join(map(str, r['nodes'])):>6}")
        if r["other_ops"]:
            lines.append(f"       other ops per step: {', '.join(f'{k} {v:g}' for k, v in r['other_ops'].items())}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    _worker(sys.argv[1:])
