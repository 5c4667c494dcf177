#!/usr/bin/env python3
"""CPU probe (issue 20): today's ``Sequential.fit`` on numba against the fused training call
(``fastnn.kernels.cpu.fused.train_steps``) and the GEMM floor, in one process.

For models A (784-100-10, SGD, batch 100), B64 (784-64-64-10, Dropout 0.2, Adam, batch 128) and B512
(784-512-512-10, Dropout 0.2, Adam, batch 128), one epoch of synthetic MNIST-shaped float32 data
(``fastnn.bench.models.synthetic_mnist``, 60,000 x 784 by default) per implementation, interleaved
rounds (fit, fused K=1, fused K=all, GEMM floor, with 0.3 s pauses), medians:

- ``fit``: ``model.fit(x, y, batch_size, epochs=1, shuffle=False, verbose=0)``, what users run;
- ``fused-k1``: one ``train_steps`` call per batch from a Python loop (what ``fit`` would do when a
  callback needs every batch), after one bounds check and the epoch's optimizer scalars;
- ``fused-epoch``: ``TrainPlan.run`` over the whole epoch, one call;
- ``gemm-floor``: only the step's matrix products with numpy (``fastnn.bench.peers.GemmFloor``; full
  batches only).

Also: the per-call dispatch cost of ``train_steps`` (an empty call, K = 0), the per-step cost above
the floor, the per-round CPU load of other processes (a shared machine makes this noisy), and the
kernel's compile time cold (an empty ``NUMBA_CACHE_DIR``) and warm (the normal cache), each in a
fresh process. Run with ``FASTNN_NUM_THREADS=2``. Prints one JSON record on stdout (a table on
stderr) and writes ``$OUT/fused_step.json`` when ``OUT`` is set.

Usage: ``FASTNN_NUM_THREADS=2 python3 bench/probes/fused_step.py [--models A,B64,B512] [--rounds 5]
[--samples 60000] [--no-compile]``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy

from _probe import Probe  # noqa: E402  (this folder is on sys.path when run as a script)

NAME = "fused_step"
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
log = PROBE.log
PAUSE_S = 0.3


# ------------------------------------------------------------------------------ implementations
class Fit:
    name = "fit"

    def __init__(self, spec, x, y):
        from fastnn.bench.models import build_model

        self.model = build_model(spec, "numba")
        self.x, self.y, self.bs = x, y, spec["batch"]

    def epoch(self):
        self.model.fit(self.x, self.y, batch_size=self.bs, epochs=1, shuffle=False, verbose=0)


class FusedEpoch:
    """The whole epoch in one ``train_steps`` call (``TrainPlan.run``: checks, scalars, the call)."""

    name = "fused-epoch"

    def __init__(self, spec, x, y):
        from fastnn.bench.models import build_model
        from fastnn.training.fused_plan import train_plan

        self.model = build_model(spec, "numba")
        self.plan = train_plan(self.model, spec["batch"])[0]
        self.x, self.y = x, y
        self.order = numpy.arange(len(x), dtype=numpy.int64)

    def epoch(self):
        return self.plan.run(self.x, self.y, self.order)


class FusedK1(FusedEpoch):
    """One ``train_steps`` call per batch from a Python loop, the scalars made once per epoch."""

    name = "fused-k1"

    def epoch(self):
        from fastnn.kernels.cpu import fused

        plan, model = self.plan.plan, self.model  # the backend's tables
        bs, n = plan.batch_size, len(self.order)
        steps = -(-n // bs)
        t_idx, t_dense = plan.targets(self.y)
        plan.check(self.x, t_idx, self.order)
        sc = self.plan.scalars(steps)
        stats = numpy.empty((steps, 2), plan.dtype)
        cfg, p, g = plan.cfg, model.flat.p, model.flat.g
        step0 = model._step
        for k in range(steps):
            cfg[fused.C_STEP0] = step0 + k
            fused.train_steps(self.x, t_idx, t_dense, self.order[k * bs:(k + 1) * bs], plan.net, plan.netf, cfg,
                              plan.clipnorm, plan.pieces, plan.runs, sc[k:k + 1], p, g, plan.s1, plan.s2, plan.ws,
                              plan.ti, stats[k:k + 1])
        model.optimizer.iterations += steps
        model._step += steps
        return stats


class Floor:
    name = "gemm-floor"

    def __init__(self, spec, n):
        from fastnn.bench.peers import GemmFloor

        self.n_batches = n // spec["batch"]
        self.floor = GemmFloor("gemm-floor", spec, spec["batch"], self.n_batches)

    def epoch(self):
        self.floor.epoch()


# ------------------------------------------------------------------------------ measurements
def dispatch_cost(x, y, spec, reps=20000):
    """Microseconds per ``train_steps`` call that runs no step (K = 0), and per ``TrainPlan.run`` call
    of no step (its checks on an empty order, scalars, bookkeeping), and per 1-argument njit call."""
    from numba import njit

    from fastnn.bench.models import build_model
    from fastnn.kernels.cpu import fused
    from fastnn.training.fused_plan import train_plan

    model = build_model(spec, "numba")
    step = train_plan(model, spec["batch"])[0]
    plan = step.plan  # the backend's tables
    t_idx, t_dense = plan.targets(y)
    args = (x, t_idx, t_dense, numpy.arange(0, dtype=numpy.int64), plan.net, plan.netf, plan.cfg, plan.clipnorm,
            plan.pieces, plan.runs, step.scalars(1), model.flat.p, model.flat.g, plan.s1, plan.s2, plan.ws,
            plan.ti, numpy.empty((0, 2), plan.dtype))

    @njit
    def noop(a):
        return 0

    def per_call(fn, n):
        fn()
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best.append((time.perf_counter() - t0) / n * 1e6)
        return min(best)

    small_x = x[:256]
    empty = numpy.arange(0, dtype=numpy.int64)
    return {"train_steps_empty_us": per_call(lambda: fused.train_steps(*args), reps),
            "args": len(args),
            "njit_1arg_noop_us": per_call(lambda: noop(x), reps),
            "plan_run_empty_us": per_call(lambda: step.run(small_x, y[:256], empty), reps // 10)}


COMPILE_SNIPPET = r"""
import json, time
t0 = time.perf_counter()
import numpy
from fastnn.bench.models import build_model, synthetic_mnist
t1 = time.perf_counter()
from fastnn.kernels.cpu import fused
from fastnn.training.fused_plan import train_plan
t2 = time.perf_counter()
m = build_model("B64", "numba")
x, y = synthetic_mnist(256)
plan = train_plan(m, 128)[0]
t3 = time.perf_counter()
plan.run(x, y, numpy.arange(128, dtype=numpy.int64))
t4 = time.perf_counter()
plan.run(x, y, numpy.arange(128, dtype=numpy.int64))
t5 = time.perf_counter()
print(json.dumps({"import_fastnn_s": t1 - t0, "import_fused_s": t2 - t1, "first_call_s": t4 - t3,
                  "second_call_s": t5 - t4, "process_to_first_step_s": t4 - t0, "gemm": fused.GEMM_BACKEND}))
"""


def compile_times():
    """The float32 kernel's first call in a fresh process: with an empty Numba cache (cold: it compiles),
    then with that cache (warm: it loads)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="fastnn-fused-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, capture_output=True, text=True,
                                  timeout=900)
            if proc.returncode != 0:
                out[label] = {"error": proc.stderr[-2000:]}
                continue
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run_model(name, x_all, y_all, rounds):
    from fastnn.bench.models import MODELS
    from fastnn.bench.timing import QuietPolicy

    spec = MODELS[name]
    n = len(x_all)
    impls = [Fit(spec, x_all, y_all), FusedK1(spec, x_all, y_all), FusedEpoch(spec, x_all, y_all), Floor(spec, n)]
    for impl in impls:  # warm-up: compile, workspaces, first-touch of the buffers
        impl.epoch()
    done = []

    def one_round():
        times = {}
        for impl in impls:
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            impl.epoch()
            times[impl.name] = time.perf_counter() - t0
        done.append(times)
        log(f"{name} round {len(done)}: " + ", ".join(f"{k} {v:.3f}s" for k, v in times.items()))
        return times

    # a shared machine: rounds while other processes used more than 15% of the CPUs are redone (up
    # to 3x the rounds asked for), then the quietest ones are kept (fastnn.bench.timing.QuietPolicy)
    samples, loads = QuietPolicy(max_load=0.15, factor=3, pause_s=0.5).run(rounds, one_round)
    bs = spec["batch"]
    steps = -(-n // bs)
    floor_samples = impls[-1].n_batches * bs
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = {}
    for impl in impls:
        k = impl.name
        count = floor_samples if k == "gemm-floor" else n
        sps = [count / t for t in samples[k]]
        floor_per_sample = [f / floor_samples for f in samples["gemm-floor"]]
        rows[k] = {
            "samples_per_s": statistics.median(sps),
            "epoch_s": {"median": med[k], "min": min(samples[k]), "max": max(samples[k])},
            # per-round ratios, then their median (robust to a slow round hitting every implementation)
            "over_gemm_floor": statistics.median(t / n / f for t, f in zip(samples[k], floor_per_sample))
            if k != "gemm-floor" else 1.0,
            "vs_fit": statistics.median(f / t for t, f in zip(samples[k], samples["fit"])),
            "ms_per_step_above_floor": (med[k] / (count / bs) - med["gemm-floor"] / impls[-1].n_batches) * 1e3,
        }
    return {"layers": [784, *spec["hidden"], 10], "dropout": spec["dropout"], "optimizer": list(spec["optimizer"]),
            "batch": bs, "steps_per_epoch": steps, "samples": n, "impls": rows, "raw_epoch_s": samples,
            "other_cpu_load_per_kept_round": loads, "rounds_run": len(done)}


def table(models):
    lines = ["| model | fit samples/s | fused K=1 | fused K=epoch | GEMM floor | K=1 / fit | K=epoch / fit | "
             "K=epoch / floor time | ms/step above floor: fit, K=1, K=epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, m in models.items():
        r = m["impls"]
        lines.append(f"| {name} | {r['fit']['samples_per_s']:,.0f} | {r['fused-k1']['samples_per_s']:,.0f} | "
                     f"{r['fused-epoch']['samples_per_s']:,.0f} | {r['gemm-floor']['samples_per_s']:,.0f} | "
                     f"{r['fused-k1']['vs_fit']:.2f}x | {r['fused-epoch']['vs_fit']:.2f}x | "
                     f"{r['fused-epoch']['over_gemm_floor']:.2f} | "
                     + ", ".join(f"{r[k]['ms_per_step_above_floor']:.3f}" for k in ("fit", "fused-k1", "fused-epoch"))
                     + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="A,B64,B512")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--no-compile", action="store_true", help="skip the cold/warm compile-time subprocesses")
    args = ap.parse_args()
    RECORD.update({"ok": True, "rounds": args.rounds, "pause_s": PAUSE_S})
    try:
        from fastnn.bench.machine import machine, machine_line
        from fastnn.bench.models import MODELS, synthetic_mnist
        from fastnn.kernels.cpu import fused

        m = machine(with_torch=False)
        RECORD["machine"] = m
        RECORD["machine_line"] = machine_line(m)
        RECORD["gemm_backend"] = fused.GEMM_BACKEND
        log(RECORD["machine_line"])
        if not args.no_compile:
            RECORD["compile"] = compile_times()
            log(f"compile: {RECORD['compile']}")
        x_all, y_all = synthetic_mnist(args.samples)
        RECORD["dispatch"] = dispatch_cost(x_all, y_all, MODELS["B64"])
        log(f"dispatch: {RECORD['dispatch']}")
        RECORD["models"] = {}
        for name in args.models.split(","):
            RECORD["models"][name] = run_model(name, x_all, y_all, args.rounds)
        RECORD["table"] = table(RECORD["models"])
        log("\n" + RECORD["table"])
    except Exception as exc:  # noqa: BLE001 - the record says what failed
        RECORD["ok"] = False
        RECORD["error"] = f"{type(exc).__name__}: {exc}"
        RECORD["traceback"] = traceback.format_exc()[-3000:]
    print(PROBE.save())
    return 0 if RECORD["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
