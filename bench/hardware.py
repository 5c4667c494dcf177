"""The ``hardware`` section: BLAS GEMM GFLOP/s (square and at the models' shapes), memory-copy GB/s, and
on the cupy backend the device copy and cuBLAS float32/TF32/float64."""
from __future__ import annotations

import statistics

import numpy

from fastnn.bench.machine import blas_info
from fastnn.bench.models import MODELS, model_gemms
from fastnn.bench.timing import Clock, interleaved


def gemm_case(xp, m, k, n, layout, dtype, rng):
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
        fn = gemm_case(numpy, n, n, n, "nn", dt, rng)
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
    cases = [(s[0], cpu, gemm_case(numpy, *s[1:], "float32", rng)) for s in shapes]
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
        fn = gemm_case(cupy, n, n, n, "nn", dt, rng)
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

