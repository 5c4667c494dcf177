"""The machine a benchmark ran on (CPU, cores, BLAS, versions, the one-line summary) and the CPU load
other processes put on it meanwhile."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy


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


def peer_threads():
    """The thread count every implementation is held to: ``FASTNN_NUM_THREADS``, or None (each library's
    own default, which is every core for BLAS, Numba, PyTorch and XLA alike)."""
    from fastnn import config

    return config.NUM_THREADS


def torch_module():
    """``torch`` when it imports, else None (torch is never a dependency of fastnn); held to
    ``FASTNN_NUM_THREADS`` intra-op threads when that is set, like BLAS and Numba."""
    try:
        import torch  # noqa: F401
    except Exception:
        return None
    n = peer_threads()
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch


def jax_module():
    """``jax`` when it imports, else None (never a dependency of fastnn), float32 by default.

    With ``FASTNN_NUM_THREADS=N``, XLA's CPU client gets ``PJRT_NPROC=N`` (set before jax is imported;
    the client sizes its intra-op thread pool from it when it starts). The older recipe
    ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N`` does not cap the
    threads of XLA's current CPU runtime: measured with jax 0.10, a jitted matmul loop still kept two
    threads busy under it, and one under ``PJRT_NPROC=1``. A ``PJRT_NPROC`` already set is kept.
    On a GPU, JAX would take 75% of the device's memory at its first use, leaving CuPy and PyTorch in
    the same process short: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set) makes it allocate
    as it goes.
    """
    n = peer_threads()
    if "jax" not in sys.modules:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if n is not None and "jax" not in sys.modules:
        os.environ.setdefault("PJRT_NPROC", str(n))
    try:
        import jax
    except Exception:
        return None
    jax.config.update("jax_enable_x64", False)
    return jax


def jax_threads():
    """XLA's CPU intra-op threads: ``PJRT_NPROC`` (or ``NPROC``) when set, else the CPUs this process may use."""
    for var in ("PJRT_NPROC", "NPROC"):
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def why_missing(module):
    """``"not installed"`` with the import error, for a peer row that cannot run."""
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means the row cannot run
        return f"not installed ({type(exc).__name__}: {exc})"
    return None


def versions(with_torch=True, with_jax=False):
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
    jax = jax_module() if with_jax else None
    v["jax"] = jax.__version__ if jax is not None else None
    if jax is not None:
        import jaxlib

        v["jaxlib"] = jaxlib.__version__
    from fastnn.backend import select

    dist = select.cupy_distribution()
    v["cupy"] = f"{dist[0]} {dist[1]}" if dist else None
    return v


def machine(with_torch=True, with_jax=False):
    vers = versions(with_torch, with_jax)  # first: importing the peers applies FASTNN_NUM_THREADS to them
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_", "FASTNN_", "GOTO", "BLIS_", "XLA_", "PJRT_"))}
    m = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
         "platform": platform.platform(), "versions": vers, "blas": blas_info(),
         "env": env}
    torch = torch_module() if with_torch else None
    if torch is not None:
        m["torch_threads"] = torch.get_num_threads()
    if vers.get("jax"):
        m["jax_threads"] = jax_threads()
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
    if v.get("jax"):
        parts.insert(-1, f"jax {v['jax']}" + (f" ({m['jax_threads']} threads)" if m.get("jax_threads") else ""))
    if v.get("cupy"):
        parts.append(v["cupy"])
    blas_env = [f"{k}={val}" for k, val in m["env"].items() if k.startswith("OPENBLAS_")]
    if blas_env:
        parts.append(" ".join(blas_env))
    return "machine: " + " | ".join(parts)


def cpu_snapshot():
    """(busy jiffies of the whole machine, this process's CPU seconds with its children and live peer
    workers, wall time)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        busy = sum(vals) - vals[3] - vals[4]  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = None
    from fastnn.bench.isolated import workers_cpu_s  # the train section's peer workers: this run's

    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system + workers_cpu_s(), time.perf_counter()


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



def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None
