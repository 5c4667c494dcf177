"""How ``fastnn-bench`` times: a clock per device, interleaved rounds, the quiet-round policy, summary
statistics, and the sizes and repeat counts of a full, ``--quick`` or ``--smoke`` run (``Settings``)."""
from __future__ import annotations

import math
import statistics
import time

from fastnn.bench.machine import cpu_snapshot, foreign_load


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


POLICY = QuietPolicy()  # which rounds to keep; ``fastnn-bench`` replaces it from --max-other-load and the mode


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

