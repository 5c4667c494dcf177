"""The machine a benchmark ran on (CPU, cores, BLAS, versions, the one-line summary) and the CPU load
other processes put on it meanwhile."""
from __future__ import annotations

import os
import platform
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



def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None
