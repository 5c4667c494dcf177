"""``fastnn-bench`` (also ``python -m fastnn.bench``): hardware, primitive and training benchmarks.

Sections (positional, default: all of them):

``hardware``
    GEMM GFLOP/s (float32/float64 at 2048^3, 1024^3 with ``--quick``, and float32 at every GEMM
    the benchmark models run), memory-copy GB/s (``numpy.copyto`` of a large array, counted as
    bytes read + bytes written, as STREAM does), and the BLAS library, kernel and threads
    (threadpoolctl). With the cupy backend: device-to-device copy and cuBLAS f32/TF32/f64.
``ops``
    Each fused primitive at model B512's shapes per backend against the NumPy reference: median
    microseconds per call and the speed-up over NumPy; the optimizer steps run over B512's
    669,706 parameters, and Adam's effective bandwidth (p, g, m, v read; p, m, v written) is
    given as a fraction of the measured copy bandwidth.
``train``
    Models A, B512, B64 (see ``MODELS``) on synthetic MNIST-shaped float32 data (fixed seed),
    one epoch per repeat per implementation, interleaved (numpy, numba, ..., torch, GEMM floor,
    then again), through ``Sequential.train_on_batch`` over pre-sliced batches; PyTorch eager
    (same architecture, same initial weights, same batches) when ``import torch`` works. Reports
    samples/s (median, min, max), the ratios to NumPy and to PyTorch, and epoch time over the
    GEMM floor (the same matmuls alone; the first layer's input gradient excluded).
``coldstart``
    ``python -c "import fastnn; build B512 on numba; one train step"`` timed end to end in a
    fresh process, first with an empty Numba cache (``NUMBA_CACHE_DIR`` pointed at a new
    folder), then again with that cache warm.

Timing: ``time.perf_counter`` on CPUs, CUDA events on GPUs (CuPy's, or PyTorch's for PyTorch
CUDA); everything is warmed up first (Numba compilation excluded), implementations are
interleaved within each repeat, and medians are reported. Thread counts and BLAS settings are
never changed here: the machine line says what ran.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy

SECTIONS = ("hardware", "ops", "train", "coldstart", "distributed")
DEFAULT_SECTIONS = ("hardware", "ops", "train", "coldstart")  # distributed launches mpiexec: ask for it
SCHEMA = 1
F32 = numpy.dtype(numpy.float32)

# --------------------------------------------------------------------------------------- models
# name -> hidden widths, dropout after each hidden layer, optimizer (name, lr), batch size
MODELS = {
    "A": {"hidden": (100,), "dropout": 0.0, "optimizer": ("sgd", 0.1), "batch": 100},
    "B512": {"hidden": (512, 512), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
    "B64": {"hidden": (64, 64), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
    # for the GPU issue (not run by default): a GEMM-bound model
    "wide": {"hidden": (4096, 4096), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
}
DEFAULT_MODELS = ("A", "B512", "B64")
IN_FEATURES, CLASSES = 784, 10
DATA_SEED = 0
MODEL_SEED = 0


def layer_dims(spec):
    """``[784, h1, ..., 10]``."""
    return [IN_FEATURES, *spec["hidden"], CLASSES]


def param_count(spec):
    dims = layer_dims(spec)
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def synthetic_mnist(n, seed=DATA_SEED, dtype=F32):
    """``n`` MNIST-shaped samples: pixels uniform in [0, 1) as ``dtype``, labels uniform in 0..9 (int64)."""
    rng = numpy.random.default_rng(seed)
    x = rng.random((n, IN_FEATURES), dtype=numpy.float64).astype(dtype)
    y = rng.integers(0, CLASSES, n).astype(numpy.int64)
    return x, y


def build_model(name_or_spec, backend, dtype=F32, seed=MODEL_SEED, batch=None):
    """A compiled and built fastnn ``Sequential`` for a ``MODELS`` entry on ``backend``."""
    from fastnn import optimizers
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    spec = MODELS[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    layers = []
    for i, h in enumerate(spec["hidden"]):
        layers.append(Dense(h, "relu", input_shape=(IN_FEATURES,) if i == 0 else None))
        if spec["dropout"]:
            layers.append(Dropout(spec["dropout"]))
    layers.append(Dense(CLASSES, "softmax"))
    model = Sequential(layers, dtype=dtype, seed=seed, backend=backend)
    opt_name, lr = spec["optimizer"]
    opt = optimizers.SGD(lr) if opt_name == "sgd" else optimizers.Adam(lr)
    model.compile(opt, "sparse_categorical_crossentropy")
    model.build()
    return model


def model_gemms(spec, batch):
    """The GEMMs of one training step as ``(label, m, k, n, layout)``.

    ``layout``: ``"nn"`` forward ``x @ W``; ``"tn"`` weight gradient ``x.T @ dz``; ``"nt"`` input
    gradient ``dz @ W.T`` (every layer but the first, whose input gradient nobody needs).
    """
    dims = layer_dims(spec)
    out = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out.append((f"fwd {batch}x{a}@{a}x{b}", batch, a, b, "nn"))
        out.append((f"dW  {a}x{batch}@{batch}x{b}", a, batch, b, "tn"))
        if i > 0:
            out.append((f"dx  {batch}x{b}@{b}x{a}", batch, b, a, "nt"))
    return out


# --------------------------------------------------------------------------------------- timing
class Clock:
    """Seconds per call of ``fn``: ``time.perf_counter`` on the host, CUDA events on a GPU.

    ``kind``: ``"cpu"``, ``"cupy"`` (CuPy events on the current stream) or ``"torch-cuda"``.
    """

    def __init__(self, kind="cpu"):
        self.kind = kind

    def time(self, fn, n=1):
        if self.kind == "cpu":
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n
        if self.kind == "cupy":
            import cupy

            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end) / 1e3 / n
        if self.kind == "torch-cuda":
            import torch

            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        raise ValueError(f"unknown clock {self.kind!r}")


def clock_for(ops):
    return Clock("cupy" if ops.name == "cupy" else "cpu")


def stats(samples):
    """Median, min, max and quartiles of a list of numbers."""
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q1, "q3": q3, "n": len(s)}


class QuietPolicy:
    """Which timed rounds to keep on a shared machine.

    A round (every implementation timed once, interleaved) is measured together with the CPU time
    other processes used meanwhile (``/proc/stat``). Rounds are repeated, up to ``factor`` times
    the number asked for, until ``repeats`` rounds ran with other processes under ``max_load`` of
    the CPUs; then the ``repeats`` quietest rounds are kept. ``max_load=None`` keeps every round.
    """

    def __init__(self, max_load=0.15, factor=2, pause_s=0.5):
        self.max_load, self.factor, self.pause_s = max_load, factor, pause_s
        self.rounds = 0
        self.rejected = 0

    def run(self, repeats, round_fn):
        """Call ``round_fn()`` (returns ``{key: seconds}``) until enough quiet rounds; returns
        ``({key: [seconds per kept round]}, [other-process load of each kept round])``."""
        done = []
        quiet = 0
        while quiet < repeats:
            before = cpu_snapshot()
            result = round_fn()
            load = foreign_load(before, cpu_snapshot())
            done.append((load, result))
            self.rounds += 1
            if self.max_load is None or load is None or load <= self.max_load:
                quiet += 1
            else:
                self.rejected += 1
                if len(done) >= self.factor * repeats:
                    break
                time.sleep(self.pause_s)
        if self.max_load is not None:
            done.sort(key=lambda lr: lr[0] or 0.0)
        kept = done[:repeats]
        keys = kept[0][1].keys()
        return {k: [r[k] for _, r in kept] for k in keys}, [load for load, _ in kept]


POLICY = QuietPolicy()


def interleaved(cases, repeats, min_block_s, warmup=2):
    """Time each ``(key, clock, fn)`` ``repeats`` times, interleaved (A B C A B C ...).

    Each case is warmed up ``warmup`` times, then calibrated (fastest of three single calls) so one
    timed block of ``inner`` calls lasts about ``min_block_s``; rounds are kept or redone by
    ``POLICY``. Returns ``{key: (per-call seconds list, inner)}``.
    """
    inner = {}
    for key, clock, fn in cases:
        for _ in range(warmup):
            fn()
        t = min(clock.time(fn, 1) for _ in range(3))
        inner[key] = max(1, min(200_000, math.ceil(min_block_s / max(t, 1e-7))))

    def one_round():
        return {key: clock.time(fn, inner[key]) for key, clock, fn in cases}

    samples, _ = POLICY.run(repeats, one_round)
    return {key: (samples[key], inner[key]) for key in samples}


# --------------------------------------------------------------------------------------- settings
class Settings:
    """Sizes and repeat counts for a full, ``--quick`` or (hidden) ``--smoke`` run."""

    def __init__(self, mode="full", repeats=None):
        self.mode = mode
        full, quick, smoke = mode == "full", mode == "quick", mode == "smoke"
        self.repeats = repeats or (5 if full else 3 if quick else 2)
        self.gemm_n = 2048 if full else 1024 if quick else 256
        self.gpu_gemm_n = 8192 if full else 4096 if quick else 512
        self.copy_bytes = (256 if full else 64 if quick else 8) << 20
        self.min_block_s = 0.05 if full else 0.02 if quick else 0.002
        # train: samples per timed epoch (full batches only), warm-up steps per implementation
        self.train_samples = 6000 if full else 1536 if quick else 256
        self.warmup_steps = 3 if not smoke else 1
        self.coldstart_runs = 1


# --------------------------------------------------------------------------------------- machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores():
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None."""
    try:
        pairs, phys = set(), None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    pairs.add((phys, line.split(":", 1)[1].strip()))
        return len(pairs) or None
    except OSError:
        return None


def blas_info():
    """BLAS pools seen by threadpoolctl (library, version, kernel, threads)."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    return [{"library": p.get("internal_api"), "version": p.get("version"),
             "kernel": p.get("architecture"), "threads": p.get("num_threads"),
             "prefix": p.get("prefix"), "filepath": p.get("filepath")}
            for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]


def torch_module():
    """``torch`` when it imports, else None (torch is never a dependency of fastnn)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return None
    return torch


def versions(with_torch=True):
    import fastnn

    v = {"python": platform.python_version(), "fastnn": fastnn.__version__, "numpy": numpy.__version__}
    try:
        import numba

        v["numba"] = numba.__version__
    except Exception:
        v["numba"] = None
    try:
        import threadpoolctl

        v["threadpoolctl"] = threadpoolctl.__version__
    except Exception:
        v["threadpoolctl"] = None
    torch = torch_module() if with_torch else None
    v["torch"] = torch.__version__ if torch is not None else None
    from fastnn.backend import select

    dist = select.cupy_distribution()
    v["cupy"] = f"{dist[0]} {dist[1]}" if dist else None
    return v


def machine(with_torch=True):
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_", "FASTNN_", "GOTO", "BLIS_"))}
    m = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
         "platform": platform.platform(), "versions": versions(with_torch), "blas": blas_info(),
         "env": env}
    torch = torch_module() if with_torch else None
    if torch is not None:
        m["torch_threads"] = torch.get_num_threads()
    try:
        import numba

        m["numba_threads"] = numba.get_num_threads()
    except Exception:
        pass
    return m


def machine_line(m):
    v = m["versions"]
    blas = m["blas"][0] if m["blas"] else None
    blas_s = (f"{blas['library']} {blas['version']} kernel {blas['kernel']}, {blas['threads']} threads"
              if blas else "BLAS unknown")
    cores = f"{m['logical_cpus']} logical CPUs" + (f" / {m['physical_cores']} cores" if m.get("physical_cores") else "")
    parts = [m["cpu"], cores, f"Python {v['python']}", f"numpy {v['numpy']}", f"numba {v['numba']}",
             f"torch {v['torch']}" + (f" ({m['torch_threads']} threads)" if m.get("torch_threads") else ""),
             blas_s]
    if v.get("cupy"):
        parts.append(v["cupy"])
    blas_env = [f"{k}={val}" for k, val in m["env"].items() if k.startswith("OPENBLAS_")]
    if blas_env:
        parts.append(" ".join(blas_env))
    return "machine: " + " | ".join(parts)


def cpu_snapshot():
    """(busy jiffies of the whole machine, this process's CPU seconds with children, wall time)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        busy = sum(vals) - vals[3] - vals[4]  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = None
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()


def foreign_load(before, after):
    """Fraction of the machine's CPU time used by *other* processes between two snapshots.

    A benchmark on a shared machine is only as good as this number is small: it is recorded per
    section (``other_cpu_load``) so a noisy run can be recognised afterwards.
    """
    if before[0] is None or after[0] is None:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    wall = after[2] - before[2]
    other = (after[0] - before[0]) / hz - (after[1] - before[1])
    return max(0.0, other) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def wait_quiet(limit_s, threshold=0.1, window_s=2.0):
    """Sleep until other processes use under ``threshold`` of the CPUs over ``window_s`` (at most ``limit_s``)."""
    t0 = time.perf_counter()
    load = None
    while True:
        a = cpu_snapshot()
        time.sleep(window_s)
        load = foreign_load(a, cpu_snapshot())
        if load is None or load < threshold or time.perf_counter() - t0 >= limit_s:
            return time.perf_counter() - t0, load


# --------------------------------------------------------------------------------------- table
def table(headers, rows, title=None):
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [] if title is None else ["", title]
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0 or math.isnan(x):
            return f"{x:g}"
        mag = math.floor(math.log10(abs(x)))
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return str(x)


# --------------------------------------------------------------------------------------- hardware
def _gemm_case(xp, m, k, n, layout, dtype, rng):
    """Operands of one GEMM with the library's layouts, and the call writing into a preallocated out."""
    a = xp.asarray(rng.random((k, m) if layout == "tn" else (m, k)).astype(dtype))
    b = xp.asarray(rng.random((n, k) if layout == "nt" else (k, n)).astype(dtype))
    c = xp.empty((m, n), dtype=dtype)
    aa = a.T if layout == "tn" else a
    bb = b.T if layout == "nt" else b
    return lambda: xp.matmul(aa, bb, out=c)


def run_hardware(settings, backends, ctx, models):
    res = {"blas": blas_info()}
    rng = numpy.random.default_rng(1)
    cpu = Clock("cpu")
    n = settings.gemm_n
    gemm = {}
    for dt in ("float32", "float64"):
        fn = _gemm_case(numpy, n, n, n, "nn", dt, rng)
        (samples, inner), = interleaved([(dt, cpu, fn)], settings.repeats, settings.min_block_s, warmup=1).values()
        t = statistics.median(samples)
        gemm[dt] = {"n": n, "seconds": t, "gflops": 2 * n ** 3 / t / 1e9}
    res["gemm"] = gemm
    shapes = []
    seen = set()
    for name in models:
        spec = MODELS[name]
        for label, m, k, nn, layout in model_gemms(spec, spec["batch"]):
            key = (m, k, nn, layout)
            if key in seen:
                continue
            seen.add(key)
            shapes.append((f"{name} {label}", m, k, nn, layout))
    cases = [(s[0], cpu, _gemm_case(numpy, *s[1:], "float32", rng)) for s in shapes]
    timed = interleaved(cases, settings.repeats, settings.min_block_s)
    res["gemm_models"] = [{"gemm": label, "m": m, "k": k, "n": nn, "layout": layout,
                           "us": statistics.median(timed[label][0]) * 1e6,
                           "gflops": 2 * m * k * nn / statistics.median(timed[label][0]) / 1e9}
                          for label, m, k, nn, layout in shapes]
    res["copy"] = measure_copy(settings)
    ctx["copy_gbs"] = res["copy"]["gbs"]
    if "cupy" in backends:
        res["gpu"] = run_hardware_gpu(settings)
        ctx["gpu_copy_gbs"] = res["gpu"]["copy"]["gbs"]
    return res


def measure_copy(settings, nbytes=None, xp=numpy, clock=None):
    """``copyto(dst, src)`` bandwidth, counting bytes read + bytes written."""
    nbytes = nbytes or settings.copy_bytes
    count = nbytes // 4
    src = xp.ones(count, dtype=xp.float32)
    dst = xp.empty_like(src)
    clock = clock or Clock("cpu")
    (samples, inner), = interleaved([("copy", clock, lambda: xp.copyto(dst, src))], settings.repeats,
                                    settings.min_block_s, warmup=2).values()
    t = statistics.median(samples)
    return {"bytes": int(count * 4), "seconds": t, "gbs": 2 * count * 4 / t / 1e9,
            "how": f"{xp.__name__}.copyto of a float32 array, (read + written) bytes / time"}


def run_hardware_gpu(settings):
    import cupy

    clock = Clock("cupy")
    rng = numpy.random.default_rng(2)
    out = {"device": cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode(),
           "copy": measure_copy(settings, settings.copy_bytes * 4, cupy, clock)}
    n = settings.gpu_gemm_n
    gemm = {}
    for label, dt, tf32 in (("float32", "float32", False), ("tf32", "float32", True), ("float64", "float64", False)):
        fn = _gemm_case(cupy, n, n, n, "nn", dt, rng)
        restore = None
        if tf32:
            try:
                from cupy._core import _routines_linalg as rl

                restore = rl.get_compute_type(numpy.float32)
                rl.set_compute_type(numpy.float32, getattr(rl, "COMPUTE_TYPE_TF32", 7))
            except Exception as exc:  # pragma: no cover - depends on the CuPy build
                gemm[label] = {"error": f"could not enable TF32: {exc}"}
                continue
        try:
            (samples, _), = interleaved([(label, clock, fn)], settings.repeats, settings.min_block_s).values()
        finally:
            if restore is not None:
                rl.set_compute_type(numpy.float32, restore)
        t = statistics.median(samples)
        gemm[label] = {"n": n, "seconds": t, "tflops": 2 * n ** 3 / t / 1e12}
    out["gemm"] = gemm
    return out


def print_hardware(res):
    g = res["gemm"]
    lines = [table(["GEMM (BLAS, numpy.matmul)", "n", "GFLOP/s"],
                   [[dt, g[dt]["n"], fmt(g[dt]["gflops"])] for dt in g], "== hardware")]
    lines.append(table(["float32 GEMM at the models' shapes", "layout", "us", "GFLOP/s"],
                       [[r["gemm"], r["layout"], fmt(r["us"]), fmt(r["gflops"])] for r in res["gemm_models"]]))
    c = res["copy"]
    lines.append(f"\nmemory copy: {fmt(c['gbs'])} GB/s ({c['bytes'] >> 20} MiB numpy.copyto, read+write bytes)")
    for b in res["blas"]:
        lines.append(f"BLAS: {b['library']} {b['version']}, kernel {b['kernel']}, {b['threads']} threads")
    if "gpu" in res:
        gpu = res["gpu"]
        lines.append(f"GPU {gpu['device']}: device copy {fmt(gpu['copy']['gbs'])} GB/s; GEMM " + ", ".join(
            f"{k} {fmt(v['tflops'])} TFLOP/s" if "tflops" in v else f"{k}: {v['error']}" for k, v in gpu["gemm"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- ops
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


def print_ops(res):
    rows = []
    for r in res["rows"]:
        extra = ""
        if "fraction_of_copy" in r:
            extra = f"{fmt(r['gbs'])} GB/s = {100 * r['fraction_of_copy']:.0f}% of copy"
            if "fraction_of_same_size_copy" in r:
                extra += f" ({100 * r['fraction_of_same_size_copy']:.0f}% of same-size copy)"
        rows.append([r["op"], r["backend"], fmt(r["us"]["median"]), f"{fmt(r['us']['min'])}-{fmt(r['us']['max'])}",
                     fmt(r["speedup_vs_numpy"]) + "x" if r["speedup_vs_numpy"] else "-", extra])
    head = (f"== ops (float32, B512 shapes; optimizer steps over {res['params']:,} parameters; copy "
            f"{fmt(res['copy_gbs'])} GB/s, same-size copy {fmt(res['copy_same_bytes_gbs'])} GB/s)")
    return table(["primitive", "backend", "median us", "min-max us", "vs numpy", "bandwidth"], rows, head)


# --------------------------------------------------------------------------------------- train
class _FastnnImpl:
    def __init__(self, name, spec, backend, weights, batches, cuda_graph=False):
        from fastnn import get_ops

        self.name = name
        self.cuda_graph = cuda_graph
        self.ops = get_ops(backend)
        self.clock = clock_for(self.ops)
        self.model = build_model(spec, backend)
        self.model.set_weights(weights)
        self.batches = [(self.ops.asarray(x), self.ops.asarray(y)) for x, y in batches]
        self.batch = len(batches[0][0])
        self.x_epoch = self.ops.xp.concatenate([x for x, _ in self.batches])
        self.y_epoch = self.ops.xp.concatenate([y for _, y in self.batches])
        self.first_loss = None

    def step(self, x, y):
        return self.model.train_on_batch(x, y)

    def epoch(self):
        # what users run: one fit() call per epoch (inputs validated once, then the fused loop)
        # (with cuda_graph, the step captured in the first call is replayed by the later ones)
        self.model.fit(self.x_epoch, self.y_epoch, batch_size=self.batch, epochs=1, shuffle=False, verbose=0,
                       cuda_graph=self.cuda_graph)


class _BookImpl:
    """The book's ``MultiLayerNetExtend`` (float32) trained with ``opt.update(net.params, net.gradient(x, t))``."""

    def __init__(self, name, spec, backend, weights, batches):
        from fastnn import get_ops, optimizers
        from fastnn.networks import MultiLayerNetExtend

        self.name = name
        self.ops = get_ops(backend)
        self.clock = clock_for(self.ops)
        self.net = MultiLayerNetExtend(IN_FEATURES, list(spec["hidden"]), CLASSES, use_dropout=bool(spec["dropout"]),
                                       dropout_ration=spec["dropout"] or 0.5, dtype="float32", backend=backend)
        for i, (w, b) in enumerate(zip(weights[0::2], weights[1::2]), start=1):
            self.net.params[f"W{i}"][...] = self.ops.asarray(w)
            self.net.params[f"b{i}"][...] = self.ops.asarray(b)
        opt_name, lr = spec["optimizer"]
        self.opt = optimizers.SGD(lr) if opt_name == "sgd" else optimizers.Adam(lr)
        self.batches = [(self.ops.asarray(x), self.ops.asarray(y)) for x, y in batches]
        self.first_loss = None

    def step(self, x, y):
        self.opt.update(self.net.params, self.net.gradient(x, y))
        return self.net.last_layer.loss

    def epoch(self):
        for x, y in self.batches:
            self.opt.update(self.net.params, self.net.gradient(x, y))


class _ScratchImpl:
    """The network as a "from scratch" learner writes it in plain NumPy (the book's Affine, Relu with a
    boolean mask, inverted Dropout, SoftmaxWithLoss and its SGD/Adam over a dict), float32 throughout:
    the baseline that the prototype numbers in the issue were measured against."""

    def __init__(self, name, spec, weights, batches):
        self.name = name
        self.clock = Clock("cpu")
        self.params = {}
        for i, (w, b) in enumerate(zip(weights[0::2], weights[1::2]), start=1):
            self.params[f"W{i}"], self.params[f"b{i}"] = w.copy(), b.copy()
        self.n_layers = len(weights) // 2
        self.rate = spec["dropout"]
        opt_name, self.lr = spec["optimizer"]
        self.adam = opt_name != "sgd"
        self.m = {k: numpy.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: numpy.zeros_like(v) for k, v in self.params.items()}
        self.t = 0
        self.rng = numpy.random.default_rng(0)
        self.batches = batches
        self.first_loss = None

    def step(self, x, y):
        p, n = self.params, x.shape[0]
        cache, out = [], x
        for i in range(1, self.n_layers + 1):
            z = out @ p[f"W{i}"] + p[f"b{i}"]
            if i == self.n_layers:
                cache.append((out, None, None))
                out = z
                break
            mask = z <= 0
            a = z.copy()
            a[mask] = 0
            drop = None
            if self.rate:
                drop = (self.rng.random(a.shape, dtype=numpy.float32) > self.rate) / numpy.float32(1 - self.rate)
                a = a * drop
            cache.append((out, mask, drop))
            out = a
        e = numpy.exp(out - out.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        loss = -numpy.log(prob[numpy.arange(n), y] + 1e-7).mean()
        dout = prob
        dout[numpy.arange(n), y] -= 1
        dout /= n
        grads = {}
        for i in range(self.n_layers, 0, -1):
            inp, mask, drop = cache[i - 1]
            grads[f"W{i}"], grads[f"b{i}"] = inp.T @ dout, dout.sum(axis=0)
            if i == 1:
                break
            dout = dout @ p[f"W{i}"].T
            prev_mask, prev_drop = cache[i - 2][1], cache[i - 2][2]
            if prev_drop is not None:
                dout = dout * prev_drop
            dout[prev_mask] = 0
        if self.adam:  # the book's Adam, array by array
            self.t += 1
            lr_t = self.lr * numpy.sqrt(1.0 - 0.999 ** self.t) / (1.0 - 0.9 ** self.t)
            for k in p:
                self.m[k] += (1 - 0.9) * (grads[k] - self.m[k])
                self.v[k] += (1 - 0.999) * (grads[k] ** 2 - self.v[k])
                p[k] -= numpy.float32(lr_t) * self.m[k] / (numpy.sqrt(self.v[k]) + numpy.float32(1e-7))
        else:
            for k in p:
                p[k] -= numpy.float32(self.lr) * grads[k]
        return loss

    def epoch(self):
        for x, y in self.batches:
            self.step(x, y)


class _TorchImpl:
    """The same network in PyTorch eager mode, from the same initial weights and batches."""

    def __init__(self, name, spec, weights, batches, device="cpu"):
        import torch

        self.name = name
        self.torch = torch
        self.device = device
        self.clock = Clock("torch-cuda" if device != "cpu" else "cpu")
        layers = []
        dims = layer_dims(spec)
        linears = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            lin = torch.nn.Linear(a, b)
            linears.append(lin)
            layers.append(lin)
            if i < len(dims) - 2:
                layers.append(torch.nn.ReLU())
                if spec["dropout"]:
                    layers.append(torch.nn.Dropout(spec["dropout"]))
        with torch.no_grad():
            for lin, (w, b) in zip(linears, zip(weights[0::2], weights[1::2])):
                lin.weight.copy_(torch.from_numpy(numpy.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
        self.model = torch.nn.Sequential(*layers).to(device)
        self.model.train()
        opt_name, lr = spec["optimizer"]
        self.opt = (torch.optim.SGD(self.model.parameters(), lr=lr) if opt_name == "sgd"
                    else torch.optim.Adam(self.model.parameters(), lr=lr, eps=1e-7))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.batches = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in batches]
        self.first_loss = None

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def epoch(self):
        for x, y in self.batches:
            self.step(x, y)


class _TorchGraphImpl(_TorchImpl):
    """PyTorch with the whole training step (forward, backward, optimizer) captured in one CUDA
    graph, as its "whole-network capture" recipe does: static input slots, warm-up iterations on
    a side stream, Adam with ``capturable=True``; each step copies the batch in and replays."""

    def __init__(self, name, spec, weights, batches):
        super().__init__(name, spec, weights, batches, device="cuda")
        torch = self.torch
        opt_name, lr = spec["optimizer"]
        params = list(self.model.parameters())
        self.opt = (torch.optim.SGD(params, lr=lr) if opt_name == "sgd"
                    else torch.optim.Adam(params, lr=lr, eps=1e-7, capturable=True))
        self.static_x = self.batches[0][0].clone()
        self.static_y = self.batches[0][1].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self.loss_fn(self.model(self.static_x), self.static_y).backward()
                self.opt.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self.loss_fn(self.model(self.static_x), self.static_y)
            self.static_loss.backward()
            self.opt.step()

    def step(self, x, y):
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.item()

    def epoch(self):
        for x, y in self.batches:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()


class _GemmFloor:
    """The matmuls of one epoch alone, into preallocated outputs (first layer's dx excluded)."""

    def __init__(self, name, spec, batch, n_batches, xp=numpy, clock=None):
        self.name = name
        self.clock = clock or Clock("cpu")
        rng = numpy.random.default_rng(4)
        self.calls = [_gemm_case(xp, m, k, n, layout, "float32", rng) for _, m, k, n, layout in model_gemms(spec, batch)]
        self.n_batches = n_batches
        self.first_loss = None

    def epoch(self):
        for _ in range(self.n_batches):
            for c in self.calls:
                c()


def run_train(settings, backends, ctx, models, with_torch=True, batch_override=None, gpu_only=False):
    torch = torch_module() if with_torch else None
    out = {"data": None, "models": {}, "torch": torch.__version__ if torch is not None else None}
    x_all, y_all = synthetic_mnist(settings.train_samples)
    out["data"] = {"samples": settings.train_samples, "features": IN_FEATURES, "classes": CLASSES,
                   "seed": DATA_SEED, "dtype": "float32",
                   "how": "pixels uniform in [0, 1), labels uniform in 0..9 (numpy default_rng)"}
    for name in models:
        spec = dict(MODELS[name])
        if batch_override:
            spec["batch"] = batch_override
        bs = spec["batch"]
        n_batches = max(1, settings.train_samples // bs)
        batches = [(x_all[i * bs:(i + 1) * bs], y_all[i * bs:(i + 1) * bs]) for i in range(n_batches)]
        if n_batches * bs > settings.train_samples:  # tiny runs: reuse the data
            reps = math.ceil(bs / settings.train_samples)
            xx, yy = numpy.tile(x_all, (reps, 1))[:bs], numpy.tile(y_all, reps)[:bs]
            batches = [(xx, yy)]
        weights = build_model(spec, "numpy").get_weights()
        cpu = not gpu_only  # --gpu-only: no CPU rows (they would take minutes at GPU sizes)
        impls = [_FastnnImpl(be, spec, be, weights, batches) for be in backends if cpu or be == "cupy"]
        if "cupy" in backends:
            impls.append(_FastnnImpl("cupy-graph", spec, "cupy", weights, batches, cuda_graph=True))
        if cpu:
            impls.append(_ScratchImpl("numpy-scratch", spec, weights, batches))
        if cpu and "numba" in backends:  # the book's network class on the same kernels (issue: within 1.2x)
            impls.append(_BookImpl("numba-book", spec, "numba", weights, batches))
        if torch is not None:
            if cpu:
                impls.append(_TorchImpl("torch", spec, weights, batches))
            if "cupy" in backends and torch.cuda.is_available():
                impls.append(_TorchImpl("torch-cuda", spec, weights, batches, device="cuda"))
                try:
                    impls.append(_TorchGraphImpl("torch-cuda-graph", spec, weights, batches))
                except Exception as exc:  # noqa: BLE001 - a peer that cannot capture is reported, not fatal
                    out.setdefault("skipped", {})[f"{name}/torch-cuda-graph"] = f"{type(exc).__name__}: {exc}"
        floors = [_GemmFloor("gemm-floor", spec, bs, n_batches)] if cpu else []
        if "cupy" in backends:
            import cupy

            floors.append(_GemmFloor("gemm-floor-gpu", spec, bs, n_batches, cupy, Clock("cupy")))
        # warm up: compile, allocate workspaces; record each implementation's first loss
        for impl in impls:
            for i in range(settings.warmup_steps):
                xb, yb = impl.batches[i % len(impl.batches)]
                loss = impl.step(xb, yb)
                if i == 0:
                    impl.first_loss = float(loss)
        for impl in impls:
            if getattr(impl, "cuda_graph", False):
                impl.epoch()  # captures the step (and checks it against eager) outside the timed rounds
        for f in floors:
            f.epoch()
        samples, loads = POLICY.run(settings.repeats, lambda: {
            impl.name: impl.clock.time(impl.epoch, 1) for impl in impls + floors})
        n_samples = n_batches * bs
        floor_cpu = statistics.median(samples["gemm-floor"]) if "gemm-floor" in samples else None
        floor_gpu = statistics.median(samples["gemm-floor-gpu"]) if "gemm-floor-gpu" in samples else None
        gflop = sum(2 * m * k * n for _, m, k, n, _ in model_gemms(spec, bs)) * n_batches / 1e9
        rows = {}
        for impl in impls:
            ts = samples[impl.name]
            sps = [n_samples / t for t in ts]
            gpu = impl.name in ("cupy", "cupy-graph", "torch-cuda", "torch-cuda-graph")
            floor = floor_gpu if gpu else floor_cpu
            rows[impl.name] = {"samples_per_s": stats(sps), "epoch_s": stats(ts), "first_loss": impl.first_loss,
                               "epoch_over_gemm_floor": statistics.median(ts) / floor if floor else None}
        for key, cmp in (("vs_numpy", "numpy"), ("vs_torch", "torch"), ("vs_torch_cuda", "torch-cuda")):
            if cmp in rows:
                for r in rows.values():
                    r[key] = r["samples_per_s"]["median"] / rows[cmp]["samples_per_s"]["median"]
        losses = [r["first_loss"] for r in rows.values() if r["first_loss"] is not None]
        out["models"][name] = {
            "layers": layer_dims(spec), "dropout": spec["dropout"], "optimizer": list(spec["optimizer"]),
            "batch": bs, "batches_per_epoch": n_batches, "samples_per_epoch": n_samples,
            "params": param_count(spec), "gemm_gflop_per_epoch": gflop,
            "gemm_floor_s": floor_cpu, "gemm_floor_gflops": gflop / floor_cpu if floor_cpu else None,
            "gemm_floor_gpu_s": floor_gpu,
            "first_loss_spread": (max(losses) - min(losses)) if losses else None,
            "other_cpu_load_per_round": loads,
            "impls": rows, "raw_epoch_s": samples}
    return out


def print_train(res):
    rows = []
    gpu = any("vs_torch_cuda" in r for m in res["models"].values() for r in m["impls"].values())
    for name, m in res["models"].items():
        for impl, r in m["impls"].items():
            s = r["samples_per_s"]
            row = [name, impl, f"{s['median']:,.0f}", f"{s['min']:,.0f}-{s['max']:,.0f}",
                   fmt(r.get("vs_numpy")) + "x" if r.get("vs_numpy") else "-",
                   fmt(r.get("vs_torch")) + "x" if r.get("vs_torch") else "-"]
            if gpu:
                row.append(fmt(r.get("vs_torch_cuda")) + "x" if r.get("vs_torch_cuda") else "-")
            rows.append(row + [fmt(r["epoch_over_gemm_floor"]) + "x" if r["epoch_over_gemm_floor"] else "-",
                               fmt(r["first_loss"], 6)])
        if m.get("gemm_floor_s"):
            floor = [name, "gemm-floor", "", "", "", ""] + ([""] if gpu else [])
            rows.append(floor + [f"{1e3 * m['gemm_floor_s']:.1f} ms", f"{fmt(m['gemm_floor_gflops'])} GFLOP/s"])
        if m.get("gemm_floor_gpu_s"):
            floor = [name, "gemm-floor-gpu", "", "", "", ""] + ([""] if gpu else [])
            rows.append(floor + [f"{1e3 * m['gemm_floor_gpu_s']:.2f} ms", ""])
    d = res["data"]
    head = (f"== train (synthetic MNIST-shaped float32, {d['samples']} samples, seed {d['seed']}; one epoch of "
            f"full batches per repeat, interleaved; samples/s median and min-max)")
    for what, why in (res.get("skipped") or {}).items():
        head += f"\n   skipped {what}: {why}"
    cols = ["model", "impl", "samples/s", "min-max", "vs numpy", "vs torch"] + (["vs torch-cuda"] if gpu else [])
    return table(cols + ["epoch/GEMM floor", "first loss"], rows, head)


# --------------------------------------------------------------------------------------- coldstart
COLDSTART_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import numpy
import fastnn
from fastnn import optimizers
from fastnn.layers import Dense, Dropout
from fastnn.models import Sequential
t1 = time.perf_counter()
model = Sequential([Dense(512, "relu", input_shape=(784,)), Dropout(0.2), Dense(512, "relu"), Dropout(0.2),
                    Dense(10, "softmax")], seed=0, backend="numba")
model.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
model.build()
rng = numpy.random.default_rng(0)
x = rng.random((128, 784), dtype=numpy.float32)
y = rng.integers(0, 10, 128)
t2 = time.perf_counter()
loss = model.train_on_batch(x, y)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "first_step_s": t3 - t2, "loss": loss}))
"""


def _run_timed(code, env):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"coldstart subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    inner = json.loads(lines[-1]) if lines else {}
    return {"wall_s": wall, **inner}


def run_coldstart(settings, backends):
    from fastnn.backend import select

    if not select.probe_numba().ok:
        return {"skipped": "numba is not available: " + select.probe_numba().reason}
    env = dict(os.environ)
    env.pop("FASTNN_BACKEND", None)
    with tempfile.TemporaryDirectory(prefix="fastnn-bench-numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        baseline = _run_timed("import numpy", env)
        cold = _run_timed(COLDSTART_SCRIPT, env)
        warm = _run_timed(COLDSTART_SCRIPT, env)
    return {"what": "python -c 'import fastnn; build B512 on numba; one train_on_batch of 128'",
            "numba_cache": "NUMBA_CACHE_DIR set to a new empty folder for the cold run, reused by the warm run",
            "python_import_numpy_s": baseline["wall_s"], "cold": cold, "warm": warm}


def print_coldstart(res):
    if "skipped" in res:
        return f"\n== coldstart: skipped ({res['skipped']})"
    rows = [[k, fmt(res[k]["wall_s"]), fmt(res[k]["import_s"]), fmt(res[k]["build_s"]), fmt(res[k]["first_step_s"])]
            for k in ("cold", "warm")]
    return table(["run", "wall s", "import s", "build s", "first step s"], rows,
                 f"== coldstart ({res['what']}; `python -c 'import numpy'` alone: {fmt(res['python_import_numpy_s'])} s)")


# --------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastnn-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sections: " + ", ".join(SECTIONS) + ". See bench/README.md for the columns.")
    p.add_argument("sections", nargs="*", metavar="section", help=f"any of {', '.join(SECTIONS)} (default: all but distributed)")
    p.add_argument("--backends", help="comma-separated: numpy,numba,cupy (default: every available one)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"train models, comma-separated, of {', '.join(MODELS)} (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="override every train model's batch size")
    p.add_argument("--gpu-only", action="store_true",
                   help="train: time only the GPU implementations (cupy, cupy-graph, torch-cuda, torch-cuda-graph)")
    p.add_argument("--train-samples", type=int, default=None,
                   help="samples per timed train epoch (default 6000, quick 1536); e.g. 65536 for batch 8192 on a GPU")
    p.add_argument("--json", metavar="PATH", help="write the full record (with `fastnn info`) as JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes: under a minute")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5, quick 3)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even when it imports")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for other processes to use under 10%% of the CPUs")
    p.add_argument("--max-other-load", type=float, default=0.15, metavar="FRACTION",
                   help="redo timed rounds during which other processes used more than FRACTION of the CPUs "
                        "(up to 3x the repeats; then the quietest are kept); 1 keeps every round (default %(default)s)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, for the tests
    args = p.parse_args(argv)
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(SECTIONS)}")
    if args.train_samples is not None and args.train_samples < 1:
        p.error("--train-samples must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; valid: {', '.join(MODELS)}")
    args.models = models
    return p, args


def choose_backends(p, spec):
    from fastnn.backend import available

    avail = {"numpy": True, "numba": available()["numba"][0], "cupy": available()["cuda:0"][0]}
    reasons = available()
    if spec is None:
        return [b for b, ok in avail.items() if ok]
    wanted = []
    for b in (s.strip().lower() for s in spec.split(",") if s.strip()):
        b = "cupy" if b in ("cuda", "cuda:0", "gpu") else b
        if b not in avail:
            p.error(f"unknown backend {b!r}; valid: numpy, numba, cupy")
        if not avail[b]:
            p.error(f"backend {b} is not available here: {reasons['cuda:0' if b == 'cupy' else b][1]}")
        if b not in wanted:
            wanted.append(b)
    if "numpy" not in wanted:  # the reference every ratio is taken against
        wanted.insert(0, "numpy")
    return wanted


def main(argv=None):
    from fastnn.backend import get_matmul_precision

    p, args = parse_args(argv)
    sections = args.sections or list(DEFAULT_SECTIONS)
    backends = choose_backends(p, args.backends)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = Settings(mode, args.repeats)
    if args.train_samples:
        settings.train_samples = args.train_samples
    if args.gpu_only and "cupy" not in backends:
        p.error("--gpu-only needs the cupy backend, which is not available here")
    with_torch = not args.no_torch
    if args.wait_quiet > 0:
        waited, load = wait_quiet(args.wait_quiet)
        print(f"waited {waited:.0f} s for a quiet machine (other processes' CPU use now {100 * load:.0f}%)"
              if load is not None else "cannot measure the machine's load here", flush=True)
    global POLICY
    # --quick must stay under a minute: it records the load but never redoes a round
    POLICY = QuietPolicy(None if args.max_other_load >= 1 else args.max_other_load,
                         factor=1 if mode != "full" else 2)
    t_start = time.perf_counter()
    from fastnn.info import report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = report()
    m = machine(with_torch=with_torch and "train" in sections)
    line = machine_line(m)
    print(line, flush=True)
    print(f"backends: {', '.join(backends)}; mode {mode}, {settings.repeats} repeats; sections: {' '.join(sections)}",
          flush=True)
    record = {"schema": SCHEMA, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(["fastnn-bench", *(argv if argv is not None else sys.argv[1:])]),
              "machine_line": line, "machine": m, "versions": m["versions"], "blas": m["blas"],
              "info": info, "info_warnings": [str(w.message) for w in caught], "backends": backends,
              "loadavg_start": _loadavg(),
              "settings": {"mode": mode, "repeats": settings.repeats, "gemm_n": settings.gemm_n,
                           "copy_bytes": settings.copy_bytes, "min_block_s": settings.min_block_s,
                           "train_samples": settings.train_samples, "warmup_steps": settings.warmup_steps,
                           "max_other_load": args.max_other_load,
                           "models": args.models, "batch_size": args.batch_size, "torch": with_torch,
                           "gpu_only": args.gpu_only, "matmul_precision": get_matmul_precision()},
              "sections": {}}
    ctx = {}
    from fastnn.bench import distributed as bench_distributed

    printers = {"hardware": print_hardware, "ops": print_ops, "train": print_train, "coldstart": print_coldstart,
                "distributed": bench_distributed.format_table}
    for section in SECTIONS:
        if section not in sections:
            continue
        t0, snap = time.perf_counter(), cpu_snapshot()
        if section == "hardware":
            res = run_hardware(settings, backends, ctx, args.models)
        elif section == "ops":
            res = run_ops(settings, backends, ctx)
        elif section == "train":
            res = run_train(settings, backends, ctx, args.models, with_torch, args.batch_size, args.gpu_only)
        elif section == "distributed":
            res = bench_distributed.run(quick=mode != "full")
        else:
            res = run_coldstart(settings, backends)
        res["section_s"] = time.perf_counter() - t0
        res["other_cpu_load"] = foreign_load(snap, cpu_snapshot())
        res["rounds_timed"], res["rounds_rejected"] = POLICY.rounds, POLICY.rejected
        POLICY.rounds = POLICY.rejected = 0
        record["sections"][section] = res
        print(printers[section](res), flush=True)
        if res["other_cpu_load"] is not None:
            print(f"({section}: {res['section_s']:.1f} s; other processes used {100 * res['other_cpu_load']:.0f}% "
                  f"of the machine's CPU meanwhile; {res['rounds_rejected']} of {res['rounds_timed']} timed rounds "
                  f"over the --max-other-load limit)", flush=True)
    record["total_s"] = time.perf_counter() - t_start
    record["loadavg_end"] = _loadavg()
    print(f"\n(total {record['total_s']:.1f} s)")
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1, default=_json_default)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def _json_default(o):
    if isinstance(o, (numpy.floating, numpy.integer)):
        return o.item()
    if isinstance(o, numpy.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
