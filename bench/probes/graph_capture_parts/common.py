"""What every part of the graph-capture probe shares: recording a part, comparing arrays, capturing a
function on a stream and summarising the captured graph."""
from __future__ import annotations

import os
import re
import sys
import time
import traceback

import numpy

F32 = numpy.float32


class Part:
    """``with Part(rec): ...`` records ``ok``, ``seconds`` and any exception in ``rec``, and swallows it."""

    def __init__(self, rec):
        self.rec = rec

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self.rec

    def __exit__(self, et, ev, tb):
        self.rec["seconds"] = round(time.perf_counter() - self.t0, 3)
        if et is not None:
            self.rec["ok"] = False
            self.rec["error"] = f"{et.__name__}: {ev}"
            self.rec["traceback"] = "".join(traceback.format_exception(et, ev, tb))[-3000:]
        else:
            self.rec.setdefault("ok", True)
        return True


def env_info():
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"]
    return {"device": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": cupy.cuda.Device(0).compute_capability,
            "cupy": cupy.__version__, "cuda_runtime": rt.runtimeGetVersion(), "cuda_driver": rt.driverGetVersion(),
            "numpy": numpy.__version__, "python": sys.version.split()[0],
            "CUPY_TF32": os.environ.get("CUPY_TF32"), "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR")}


def rel_err(actual, expected):
    """``||actual - expected|| / ||expected||`` in float64 (host arrays or CuPy arrays)."""
    a = numpy.asarray(actual.get() if hasattr(actual, "get") else actual, dtype=numpy.float64)
    e = numpy.asarray(expected.get() if hasattr(expected, "get") else expected, dtype=numpy.float64)
    if not numpy.all(numpy.isfinite(a)):
        return float("inf")
    den = numpy.linalg.norm(e)
    return float(numpy.linalg.norm(a - e) / (den if den else 1.0))


def host(x):
    """A NumPy copy of a CuPy (or NumPy) array."""
    return x.get() if hasattr(x, "get") else numpy.asarray(x)


def max_abs_diff(a, b):
    a = numpy.asarray(a.get() if hasattr(a, "get") else a, dtype=numpy.float64)
    b = numpy.asarray(b.get() if hasattr(b, "get") else b, dtype=numpy.float64)
    return float(numpy.max(numpy.abs(a - b))) if a.size else 0.0


def end_capture(stream):
    """``(graph, None)`` or ``(None, "error")``: always leaves the stream out of capture mode."""
    try:
        return stream.end_capture(), None
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"
        try:
            if stream.is_capturing():
                err += " (stream still capturing)"
        except Exception as exc2:
            err += f" (is_capturing raised {type(exc2).__name__}: {exc2})"
        return None, err


def capture(stream, fn):
    """Capture ``fn()`` on ``stream``: ``(graph or None, error in fn or None, error in end_capture or None)``."""
    with stream:
        stream.begin_capture()
        fn_err = None
        try:
            fn()
        except Exception as exc:
            fn_err = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        graph, end_err = end_capture(stream)
    return graph, fn_err, end_err


def dot_summary(graph, limit=1500):
    """Node count and kernel names of a graph (``cudaGraphDebugDotPrint``), best effort."""
    try:
        dot = graph.debug_dot_str()
        dot = dot.decode() if isinstance(dot, bytes) else str(dot)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    names = sorted(set(re.findall(r"(?:fastnn_\w+|\w*gemm\w*|\w*Kernel\w*|cutlass\w*|sm90\w*)", dot)))[:20]
    return {"kernel_nodes": dot.count("KERNEL"), "memset_nodes": dot.count("MEMSET"),
            "memcpy_nodes": dot.count("MEMCPY"), "names": names, "dot_chars": len(dot), "dot_head": dot[:limit]}

