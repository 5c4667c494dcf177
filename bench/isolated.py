"""A training-row implementation built and timed in a worker process of its own (``Isolated``).

PyTorch's OpenMP pool and XLA's thread pool keep spinning after their work, and in the process that
times fastnn they took the cores from it: on a 2-core EPYC, B64 on numba measured 151,000 samples/s
with PyTorch and JAX rows in the same process and 320,000/s without them, and every row's spread
widened (numpy's 122,000-170,000/s). ``train`` therefore builds the CPU peers (``torch``,
``torch-compile``, ``jax-step``, ``jax-epoch``) in workers: each worker builds its implementation from
the same weights and batches, runs the warm-up steps it is asked for, and times its own epochs with
its own clock; the parent keeps the interleaved rounds, so every row is still timed side by side in
one run, one implementation at a time.

Before it answers, a worker waits until its own threads have stopped (a spinning pool winds down in
up to a few hundred milliseconds): the next row in the round starts on idle cores, and the time
spent waiting is in no row's timing. The workers' CPU time counts as this run's in the section's
``other_cpu_load`` (``workers_cpu_s``), not as another process's.

The proxy looks like an implementation to ``train``: ``name``, ``clock`` (whose ``time(fn, n)``
asks the worker to time ``n`` epochs and returns its seconds per epoch, ``fn`` unused), ``batches``
(batch numbers: ``step(i, _)`` runs the worker's batch ``i``), ``step``, ``epoch``, ``prepare``
(forwarded when the implementation has one) and ``first_loss``. An exception in the worker comes back
as ``IsolatedError`` with its type and message, so an optional peer that fails is reported as
before.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import time
import traceback

_LIVE: set = set()  # process ids of the running workers (their CPU time is this run's, not "other load")


class IsolatedError(RuntimeError):
    """The worker's implementation raised: its type and message."""


def _settle(limit_s=2.0, window_s=0.02, idle=0.05):
    """Return once this process used under ``idle`` of one CPU over a ``window_s`` window (its
    thread pools stopped spinning), or after ``limit_s``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        cpu = time.process_time()
        time.sleep(window_s)
        if time.process_time() - cpu < idle * window_s:
            return


def workers_cpu_s() -> float:
    """CPU seconds (user + system) used so far by the running workers, from ``/proc`` (0 elsewhere)."""
    total = 0
    for pid in list(_LIVE):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 first
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK") if total else 0.0


def _serve(conn, prelude, module, cls, args, kwargs):
    """The worker: call ``fastnn.bench.machine.<prelude>()`` (the peer's import with the run's thread
    settings), build ``module.cls(*args, **kwargs)``, then answer requests until ``close``."""
    try:
        if prelude:
            getattr(importlib.import_module("fastnn.bench.machine"), prelude)()
        impl = getattr(importlib.import_module(module), cls)(*args, **kwargs)
        conn.send(("ok", hasattr(impl, "prepare")))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    while True:
        what, arg = conn.recv()
        if what == "close":
            return
        try:
            if what == "step":
                xb, yb = impl.batches[arg]
                result = float(impl.step(xb, yb))
            elif what == "prepare":
                result = impl.prepare()
            elif what == "time":
                result = impl.clock.time(impl.epoch, arg)
            else:
                raise ValueError(f"unknown request {what!r}")
            _settle()
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class _WorkerClock:
    def __init__(self, owner):
        self.owner = owner
        self.kind = "cpu"

    def time(self, fn, n=1):
        return self.owner._ask("time", n)


class Isolated:
    """``module.cls(name, spec, weights, batches, **kwargs)`` in a worker process (spawned: nothing
    inherited but the environment), after ``fastnn.bench.machine.<prelude>()`` there."""

    def __init__(self, prelude, module, cls, name, spec, weights, batches, **kwargs):
        self.name = name
        self.first_loss = None
        self.clock = _WorkerClock(self)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, daemon=True,
                                 args=(child, prelude, module, cls, (name, spec, weights, batches), kwargs))
        self._proc.start()
        _LIVE.add(self._proc.pid)
        child.close()
        has_prepare = self._answer()
        self.batches = [(i, None) for i in range(len(batches))]
        if has_prepare:
            self.prepare = lambda: self._ask("prepare", None)

    def _answer(self):
        try:
            reply = self._conn.recv()
        except EOFError:
            raise IsolatedError(f"{self.name}: the worker process ended (exit code {self._proc.exitcode})") from None
        if reply[0] == "error":
            raise IsolatedError(f"{self.name}: {reply[1]}")
        return reply[1]

    def _ask(self, what, arg):
        self._conn.send((what, arg))
        return self._answer()

    def step(self, i, _unused=None):
        return self._ask("step", i)

    def epoch(self):
        self._ask("time", 1)

    def close(self):
        _LIVE.discard(self._proc.pid)
        if self._proc.is_alive():
            try:
                self._conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()
