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
    (same architecture, same initial weights, same batches) when ``import torch`` works, and
    ``torch.compile``; JAX with the step jitted and with the whole epoch in one jitted ``lax.scan``
    when ``import jax`` works (a row says "not installed" otherwise). Reports samples/s (median, min,
    max), the ratios to NumPy, PyTorch and JAX's epoch, and epoch time over the GEMM floor (the same
    matmuls alone; the first layer's input gradient excluded), itself a row with its samples/s.
``coldstart``
    ``python -c "import fastnn; build B512 on numba; one train step"`` timed end to end in a
    fresh process, first with an empty Numba cache (``NUMBA_CACHE_DIR`` pointed at a new
    folder), then again with that cache warm.
``host`` (only when asked)
    fastnn's own host time and launches per eager ``cupy`` step of A and B512, CuPy stubbed (``host.py``).

Timing: ``time.perf_counter`` on CPUs, CUDA events on GPUs (CuPy's, or PyTorch's for PyTorch
CUDA); everything is warmed up first (Numba compilation excluded), implementations are
interleaved within each repeat, and medians are reported. Thread counts and BLAS settings are
never changed here, except that ``FASTNN_NUM_THREADS``, when set, holds PyTorch
(``torch.set_num_threads``) and XLA (``PJRT_NPROC``) to the same count as BLAS and Numba: the
machine line says what ran.

This module is the command line (arguments, the record's head, one section after another); the
package holds the rest, one module per concern: ``models`` (the benchmark models, their data and
GEMMs), ``timing`` (clocks, interleaved quiet rounds, statistics, run sizes), ``machine`` (CPU,
BLAS, versions, other processes' load), ``report`` (the tables and the JSON record), one module per
section (``hardware``, ``ops``, ``train``, ``coldstart``, ``distributed``) and ``peers`` (what the
train rows are timed against: PyTorch, the book's network, plain NumPy, the GEMM floor).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings

from fastnn.bench import distributed as bench_distributed
from fastnn.bench import timing
from fastnn.bench.coldstart import run_coldstart
from fastnn.bench.hardware import run_hardware
from fastnn.bench.host import print_host, run_host
from fastnn.bench.machine import cpu_snapshot, foreign_load, loadavg, machine, machine_line, torch_module, wait_quiet
from fastnn.bench.models import DEFAULT_MODELS, MODELS, build_model, model_gemms, param_count, synthetic_mnist
from fastnn.bench.ops import run_ops
from fastnn.bench.peers import TorchImpl as _TorchImpl
from fastnn.bench.report import print_coldstart, print_hardware, print_ops, print_train, write_json
from fastnn.bench.timing import QuietPolicy, Settings
from fastnn.bench.train import run_train

# The names tests and the benchmark suite import from here (``fastnn.bench.cli``), besides main:
__all__ = ["main", "parse_args", "choose_backends", "MODELS", "build_model", "model_gemms", "param_count",
           "synthetic_mnist", "torch_module", "print_train", "_TorchImpl"]

SECTIONS = ("hardware", "ops", "train", "coldstart", "distributed", "host")
DEFAULT_SECTIONS = ("hardware", "ops", "train", "coldstart")  # distributed launches mpiexec, host a stub CuPy: ask
SCHEMA = 1


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
    p.add_argument("--no-torch-compile", action="store_true",
                   help="train: no torch.compile row (its first compilation takes a minute or more per model)")
    p.add_argument("--no-jax", action="store_true", help="train: do not compare with JAX even when it imports")
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
    p, args = parse_args(argv)
    sections = args.sections or list(DEFAULT_SECTIONS)
    backends = choose_backends(p, args.backends)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = Settings(mode, args.repeats)
    if args.train_samples:
        settings.train_samples = args.train_samples
    if args.gpu_only and "cupy" not in backends:
        p.error("--gpu-only needs the cupy backend, which is not available here")
    # the optional peers of the train section (each row says why when it does not run)
    peers = {"torch": not args.no_torch, "torch_compile": not (args.no_torch or args.no_torch_compile),
             "jax": not args.no_jax}
    if args.wait_quiet > 0:
        waited, load = wait_quiet(args.wait_quiet)
        print(f"waited {waited:.0f} s for a quiet machine (other processes' CPU use now {100 * load:.0f}%)"
              if load is not None else "cannot measure the machine's load here", flush=True)
    # --quick must stay under a minute: it records the load but never redoes a round
    timing.POLICY = QuietPolicy(None if args.max_other_load >= 1 else args.max_other_load,
                                factor=1 if mode != "full" else 2)
    t_start = time.perf_counter()
    record = start_record(argv, args, sections, backends, settings, peers)
    ctx = {}
    for section in SECTIONS:
        if section in sections:
            record["sections"][section] = run_section(section, args, settings, backends, ctx, peers)
    record["total_s"] = time.perf_counter() - t_start
    record["loadavg_end"] = loadavg()
    print(f"\n(total {record['total_s']:.1f} s)")
    if args.json:
        write_json(args.json, record)
    return 0


def start_record(argv, args, sections, backends, settings, peers):
    """Print the machine line and the plan; the record's head: command, machine, ``fastnn info``, settings."""
    from fastnn.backend import get_matmul_precision
    from fastnn.info import report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = report()
    m = machine(with_torch=peers["torch"] and "train" in sections, with_jax=peers["jax"] and "train" in sections)
    line = machine_line(m)
    print(line, flush=True)
    print(f"backends: {', '.join(backends)}; mode {settings.mode}, {settings.repeats} repeats; "
          f"sections: {' '.join(sections)}", flush=True)
    return {"schema": SCHEMA, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["fastnn-bench", *(argv if argv is not None else sys.argv[1:])]),
            "machine_line": line, "machine": m, "versions": m["versions"], "blas": m["blas"],
            "info": info, "info_warnings": [str(w.message) for w in caught], "backends": backends,
            "loadavg_start": loadavg(),
            "settings": {"mode": settings.mode, "repeats": settings.repeats, "gemm_n": settings.gemm_n,
                         "copy_bytes": settings.copy_bytes, "min_block_s": settings.min_block_s,
                         "train_samples": settings.train_samples, "warmup_steps": settings.warmup_steps,
                         "max_other_load": args.max_other_load,
                         "models": args.models, "batch_size": args.batch_size, "torch": peers["torch"],
                         "torch_compile": peers["torch_compile"], "jax": peers["jax"],
                         "gpu_only": args.gpu_only, "matmul_precision": get_matmul_precision()},
            "sections": {}}


def run_section(section, args, settings, backends, ctx, peers):
    """Run one section, print its table and the load other processes put on the machine meanwhile."""
    runs = {
        "hardware": lambda: run_hardware(settings, backends, ctx, args.models),
        "ops": lambda: run_ops(settings, backends, ctx),
        "train": lambda: run_train(settings, backends, ctx, args.models, peers["torch"], args.batch_size, args.gpu_only,
                                   with_jax=peers["jax"], with_compile=peers["torch_compile"]),
        "distributed": lambda: bench_distributed.run(quick=settings.mode != "full"),
        "coldstart": lambda: run_coldstart(settings, backends),
        "host": lambda: run_host(settings, args.models),
    }
    printers = {"hardware": print_hardware, "ops": print_ops, "train": print_train, "coldstart": print_coldstart,
                "distributed": bench_distributed.format_table, "host": print_host}
    t0, snap = time.perf_counter(), cpu_snapshot()
    res = runs[section]()
    res["section_s"] = time.perf_counter() - t0
    res["other_cpu_load"] = foreign_load(snap, cpu_snapshot())
    policy = timing.POLICY
    res["rounds_timed"], res["rounds_rejected"] = policy.rounds, policy.rejected
    policy.rounds = policy.rejected = 0
    print(printers[section](res), flush=True)
    if res["other_cpu_load"] is not None:
        print(f"({section}: {res['section_s']:.1f} s; other processes used {100 * res['other_cpu_load']:.0f}% "
              f"of the machine's CPU meanwhile; {res['rounds_rejected']} of {res['rounds_timed']} timed rounds "
              f"over the --max-other-load limit)", flush=True)
    return res


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
