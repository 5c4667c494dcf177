#!/usr/bin/env python3
"""GPU probe: first-use compile time of every fastnn CUDA module, cold and from CuPy's disk cache.

Runs the same child twice, each in a fresh process with ``CUPY_CACHE_DIR`` pointed at one new
temporary folder (``CUPY_CACHE_IN_MEMORY`` unset): the first compiles every ``RawModule`` of
``fastnn.kernels.gpu`` (each family's ``.cu``, all kernels instantiated for ``float`` and
``double`` through ``name_expressions``), the second should load them from the disk cache
(CuPy >= 14.2 caches templated modules; GPU-NOTES §2). Per family: seconds to build the
``RawModule`` and seconds to fetch every ``<float>``/``<double>`` function, then whether the
cache folder grew during the second run (it should not). CUDA context creation and ``import
cupy`` are timed separately so they are not charged to the first family. Compile errors are
recorded with CuPy's log (our kernels had never been compiled by NVRTC before this probe).

Prints one JSON record on stdout and writes ``$OUT/kernel_cache.json`` when ``OUT`` is set.
Without a GPU it exits 0 with ``"skipped": "no GPU: <reason>"``.
Usage: ``python3 bench/probes/kernel_cache.py [--child-timeout S]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _probe import Probe, _default, run_subprocess  # noqa: E402  (this folder is on sys.path when run as a script)

NAME = "kernel_cache"
FAMILIES = ("activations", "conv", "dropout", "losses", "normalization", "optimizers")
PROBE = Probe(NAME)
RECORD: dict = PROBE.record
save, log, gpu_or_skip = PROBE.save, PROBE.log, PROBE.gpu_or_skip


def cache_listing(folder):
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "names": sorted(p.name for p in files)[:40]}


# ------------------------------------------------------------------------------ child
def start_cupy(rec):
    """Import CuPy and create the CUDA context, each timed into ``rec``, with NVRTC's and CuPy's versions."""
    t0 = time.perf_counter()
    import cupy

    rec["import_cupy_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cupy.cuda.Device(0).use()
    float(cupy.arange(4, dtype=cupy.float32).sum().get())
    rec["context_and_first_kernel_s"] = time.perf_counter() - t0
    try:
        from cupy.cuda import nvrtc

        rec["nvrtc_version"] = nvrtc.getVersion()
    except Exception as exc:
        rec["nvrtc_version"] = f"{type(exc).__name__}: {exc}"
    rec["cupy"] = cupy.__version__
    return cupy


def time_family(cupy, L, fam):
    """Build one family's ``RawModule`` and fetch its float and double functions: seconds, or the error."""
    import importlib

    import numpy

    r = {}
    try:
        mod = importlib.import_module(f"fastnn.kernels.gpu.{fam}")
        r["kernels"] = len(mod.KERNELS)
        t0 = time.perf_counter()
        L.module(mod.FAMILY, mod.KERNELS)
        t1 = time.perf_counter()
        for k in mod.KERNELS:
            for dt in (numpy.float32, numpy.float64):
                L.function(mod.FAMILY, mod.KERNELS, k, dt)
        cupy.cuda.Device(0).synchronize()
        t2 = time.perf_counter()
        r.update({"module_s": t1 - t0, "get_functions_s": t2 - t1, "total_s": t2 - t0,
                  "functions": 2 * len(mod.KERNELS), "ok": True})
    except Exception as exc:
        r["ok"] = False
        r["error"] = f"{type(exc).__name__}: {exc}"[:8000]
        r["traceback"] = traceback.format_exc()[-2000:]
    return r


def child():
    """Time import, context creation and each family's module; print the record as the last line."""
    rec = {"pid": os.getpid(), "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR")}
    cupy = start_cupy(rec)
    from fastnn.kernels.gpu import _loader as L

    rec["compile_options"] = list(L.COMPILE_OPTIONS)
    fams = {fam: time_family(cupy, L, fam) for fam in FAMILIES}
    rec["families"] = fams
    rec["all_families_s"] = sum((r["total_s"] for r in fams.values() if r.get("ok")), 0.0)
    rec["all_ok"] = all(r.get("ok") for r in fams.values())
    print(json.dumps(rec, default=_default))


# ------------------------------------------------------------------------------ driver
def run_phase(label, cache_dir, timeout):
    env = dict(os.environ)
    env["CUPY_CACHE_DIR"] = str(cache_dir)
    env.pop("CUPY_CACHE_IN_MEMORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    before = cache_listing(cache_dir)
    t0 = time.perf_counter()
    rec, rc = run_subprocess([sys.executable, os.path.abspath(__file__), "--child"], timeout, env)
    wall = time.perf_counter() - t0
    rec.update({"returncode": rc, "process_wall_s": wall, "cache_before": before, "cache_after": cache_listing(cache_dir)})
    RECORD[label] = rec
    log(f"{label}: rc={rc} wall={wall:.2f}s families={rec.get('all_families_s')}")
    save()
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-timeout", type=float, default=100.0, help="seconds per fresh process (default 100)")
    ap.add_argument("--keep-cache", action="store_true", help="keep the temporary cache folder (its path is recorded)")
    args = ap.parse_args(argv)
    if args.child:
        try:
            child()
        except Exception as exc:   # still one record on stdout for the driver
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-2000:]}))
            return 1
        return 0
    pr = gpu_or_skip()
    RECORD["probe_cupy"] = pr.reason
    cache_dir = Path(tempfile.mkdtemp(prefix="fastnn-cupy-cache-"))
    RECORD["cache_dir"] = str(cache_dir)
    try:
        cold = run_phase("cold", cache_dir, args.child_timeout)
        warm = run_phase("warm", cache_dir, args.child_timeout)
        summary = {"families": {}}
        for fam in FAMILIES:
            c = (cold.get("families") or {}).get(fam, {})
            w = (warm.get("families") or {}).get(fam, {})
            summary["families"][fam] = {"cold_s": c.get("total_s"), "warm_s": w.get("total_s"),
                                        "ok": bool(c.get("ok") and w.get("ok"))}
        summary["cold_all_s"] = cold.get("all_families_s")
        summary["warm_all_s"] = warm.get("all_families_s")
        ca, wa = cold.get("cache_after", {}), warm.get("cache_after", {})
        summary["cache_files_after_cold"] = ca.get("files")
        summary["cache_files_after_warm"] = wa.get("files")
        summary["warm_run_added_no_cache_files"] = ca.get("files") == wa.get("files") and bool(ca.get("files"))
        if summary["cold_all_s"] and summary["warm_all_s"]:
            summary["cold_over_warm"] = summary["cold_all_s"] / summary["warm_all_s"]
        summary["all_compiled"] = bool(cold.get("all_ok"))
        RECORD["summary"] = summary
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
