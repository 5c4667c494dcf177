"""Data-parallel training on existing engines: MPI through ``mpi4py`` (CPU backends), NCCL through CuPy (GPU).

Launch the same script on every rank::

    mpiexec -n 4 python -m mpi4py train.py

``fit`` calls ``init()`` itself when it runs under MPI with more than one rank. Every rank holds a
full model; rank 0 broadcasts the initial parameters, optimizer state and seeds, and every rank
checks a checksum of them. Each global batch (``batch_size`` is the global batch) is split into
contiguous shards, one per rank (uneven shards are handled exactly); gradients are scaled by each
shard's share of the batch and summed with one in-place all-reduce of the flat gradient buffer, so
every rank applies the same update as one process training on the whole batch. The learning rate
is never rescaled. Metrics and validation are reduced across ranks; only rank 0 prints progress
and writes checkpoints. ``BatchNormalization`` computes its batch statistics per shard, so a model
with it does not train exactly as one process would (every other layer does).

On GPUs (``init("auto")`` picks NCCL when the active backend is CuPy) call ``init()`` yourself before
building the model: it selects the rank's GPU by local rank and makes it the default backend::

    fastnn.use("cuda")
    comm = fastnn.distributed.init()    # NCCL; this rank's GPU is comm.device

mpi4py is imported only by ``init("mpi")``/``init("nccl")``, or by ``init()`` under a multi-rank
launcher, never by ``import fastnn``. Each rank caps its BLAS/Numba threads to its share of the node's
cores unless ``FASTNN_NUM_THREADS`` is set. The communicators live in ``fastnn.communicators`` (one
process, MPI) and, being CuPy-specific, ``fastnn.backend.nccl`` (NCCL); this module makes them and
re-exports their public names.

Failures (``collective`` wraps ``fit``): ranks must call ``fit`` alike. Its first collective, ``agree``,
gathers from every rank the model's signature, the fit settings that decide which collectives follow
(sample count, batch size, epochs, initial epoch, shuffle, validation set, checkpointing, sampled digests
of the data), or the exception the rank raised before getting there; when any differ, or any rank failed,
``fit`` raises on every rank with a message naming each rank's value, and the job goes on (a ``try``
around ``fit`` works). An exception that leaves ``fit`` after that point on some ranks only would leave
the others waiting forever in their next collective: the failing rank waits up to ``FAILURE_GRACE_S``
for every other rank to fail too (a non-blocking barrier on a communicator of its own; then ``fit``
raises on every rank as usual), else prints its traceback and calls ``MPI_Abort``, which ends every
rank within seconds, as ``python -m mpi4py`` does for uncaught exceptions (a ``try`` around ``fit``
cannot keep that job alive: its peers are stuck inside MPI). Outside ``fit`` an excepthook aborts
the job on any uncaught exception.
"""
from __future__ import annotations

import functools
import hashlib
import sys
import threading
import traceback

import numpy

from fastnn import backend as _backend
from fastnn.communicators import (  # noqa: F401  (re-exported: fastnn.distributed is where users find them)
    Communicator, MPIComm, SingleProcess, launched_under_mpi, local_rank_from_env, threads_per_rank,
)
from fastnn.errors import BackendUnavailableError

__all__ = ["Communicator", "SingleProcess", "MPIComm", "NCCLComm", "init", "get", "shard", "launched_under_mpi",
           "BackendUnavailableError", "RankFailedError", "collective", "agree", "FAILURE_GRACE_S"]

_current = None


def shard(n, rank, size):
    """``(lo, hi)``: rank ``rank``'s contiguous share of ``n`` items (the first ``n % size`` ranks get one more)."""
    base, extra = divmod(int(n), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def choose_kind(kind, launched, backend):
    """The communicator kind ``init(kind)`` makes: ``"auto"`` is, under a multi-rank launcher, the
    one the active backend all-reduces through (``backend``: its ``Ops`` or name; ``"nccl"`` for
    CuPy, ``"mpi"`` otherwise: ``fastnn.backend.communicator_kind``), and ``"single"`` without one."""
    if kind not in KINDS:
        raise ValueError(f"fastnn.distributed: unknown communicator kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    if not launched:
        return "single"
    return _backend.communicator_kind(backend)


KINDS = ("auto", "single", "mpi", "nccl")


def init(kind="auto"):
    """The communicator for this process: ``"single"``, ``"mpi"``, ``"nccl"`` or ``"auto"``.

    ``auto``: without a multi-rank MPI launcher, single-process; under one, NCCL when the active
    backend is CuPy and MPI otherwise. Called by ``fit`` itself; call it yourself first thing in a
    GPU script, so that the rank's GPU (``comm.device``) becomes the default backend before the model
    is built. Calling it again with the kind already made returns the same communicator.
    """
    global _current
    if kind == "auto":
        launched = launched_under_mpi()
        kind = choose_kind(kind, launched, _backend.current() if launched else None)
    else:
        choose_kind(kind, False, None)  # validates the name
    if _current is not None and _current.kind == kind:
        return _current
    if kind == "single":
        _current = SingleProcess()
    else:
        _current = _make(kind)
    return _current


def _make(kind):
    if kind == "mpi":
        return MPIComm()
    if kind == "nccl":
        from fastnn.backend.nccl import NCCLComm

        return NCCLComm()
    raise ValueError(f"fastnn.distributed: unknown communicator kind {kind!r}; valid kinds: {', '.join(KINDS)}")


_NCCL_NAMES = ("NCCLComm", "nccl_device")


def __getattr__(name):
    """``NCCLComm`` and ``nccl_device``, which live behind the backend (``fastnn.backend.nccl``), on first use."""
    if name in _NCCL_NAMES:
        from fastnn.backend import nccl

        return getattr(nccl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_NCCL_NAMES])


def get():
    """The communicator ``init`` made (initialising it on first use)."""
    return _current if _current is not None else init()


def checksum(*arrays):
    """A short digest of host copies of ``arrays`` (to check that ranks agree)."""
    h = hashlib.sha256()
    for a in arrays:
        a = numpy.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ failures across ranks
FAILURE_GRACE_S = 2.0  # how long a rank that failed mid-fit waits for the others to fail too before aborting


class RankFailedError(RuntimeError):
    """Raised by ``fit`` on the ranks that did not fail when another rank failed before training began
    (``rank``: the first failing rank, ``remote``: its exception, as text)."""

    def __init__(self, message, rank=None, remote=None):
        super().__init__(message)
        self.rank, self.remote = rank, remote


class _Guard:
    """One collective call (``fit``) on one rank: whether it has passed ``agree`` yet."""

    def __init__(self, comm, what):
        self.comm, self.what, self.agreed = comm, what, False
        self.everywhere = False  # the exception leaving now is raised by agree, so on every rank alike


_guards = threading.local()


def _guard_stack():
    stack = getattr(_guards, "stack", None)
    if stack is None:
        stack = _guards.stack = []
    return stack


def collective(what):
    """Decorate a method every rank must call alike (``fit``) so that an exception on one rank never
    leaves the others waiting forever (see the module docstring). One rank: the method as it is."""

    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            comm = get()
            if comm.size == 1:
                return method(self, *args, **kwargs)
            guard = _Guard(comm, f"{getattr(self, 'name', type(self).__name__)}.{what}()")
            stack = _guard_stack()
            stack.append(guard)
            try:
                return method(self, *args, **kwargs)
            except BaseException as exc:
                _failed(guard, exc)
                raise
            finally:
                stack.remove(guard)

        return run

    return wrap


def raising_everywhere(comm):
    """Mark the guarded call on ``comm`` as failing on every rank alike: each rank raises the same error
    right after one collective, so none waits for the others or aborts the job."""
    stack = _guard_stack()
    if stack and stack[-1].comm is comm:
        stack[-1].everywhere = True


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def _failed(guard, exc):
    """An exception is leaving the guarded call on this rank. Before ``agree``: tell the other ranks
    through the same gather (they raise ``RankFailedError``) and re-raise. After it: re-raise when
    every rank fails within ``FAILURE_GRACE_S``, else print the traceback and abort the job."""
    comm = guard.comm
    if guard.everywhere:
        return
    if not guard.agreed:
        guard.agreed = True
        try:
            comm.allgather_obj({"error": _describe(exc)})
        except BaseException as gather_exc:  # the gather itself broke: nothing but an abort is safe
            _abort(guard, exc, f"telling the other ranks failed ({_describe(gather_exc)})")
        return
    mpi_error = type(exc).__module__.split(".")[0] == "mpi4py"  # the communicator may be out of step
    if not mpi_error and comm.all_failed(FAILURE_GRACE_S):
        return
    why = ("it is an MPI error" if mpi_error else
           f"the other ranks did not fail within {FAILURE_GRACE_S:g} s and wait in a collective")
    _abort(guard, exc, why)


def _abort(guard, exc, why):
    comm = guard.comm
    try:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.write(f"fastnn.distributed: rank {comm.rank} of {comm.size} raised {type(exc).__name__} in "
                         f"{guard.what} and {why}; aborting every rank (a try/except around fit cannot keep "
                         "this job alive)\n")
        sys.stderr.flush()
    finally:
        comm.abort(1)


def _group(values):
    """``"10 on ranks 0, 2; 12 on rank 1"``: each distinct value with the ranks that hold it."""
    ranks = {}
    for r, v in enumerate(values):
        ranks.setdefault(v, []).append(r)
    parts = []
    for v, rs in ranks.items():
        shown = ", ".join(map(str, rs[:16])) + (f", ... ({len(rs)} ranks)" if len(rs) > 16 else "")
        parts.append(f"{v} on rank{'s' if len(rs) > 1 else ''} {shown}")
    return "; ".join(parts)


def agree(comm, name, model, settings, hint=""):
    """The first collective of a guarded call: one ``allgather`` of this rank's ``model`` signature and
    ``settings`` (dicts of name -> text). Raises on every rank, naming each rank's value, when a rank
    failed before getting here (``RankFailedError``), when the models differ (``RuntimeError``) or when
    the settings differ (``ValueError``)."""
    stack = _guard_stack()
    guard = stack[-1] if stack and stack[-1].comm is comm else None
    entries = comm.allgather_obj({"error": None, "model": model, "settings": settings})
    if guard is not None:
        guard.agreed = guard.everywhere = True  # every rank holds the same entries: raises below are everywhere
    failed = [(r, e["error"]) for r, e in enumerate(entries) if e["error"] is not None]
    if failed:
        lines = "\n".join(f"  rank {r}: {err}" for r, err in failed)
        raise RankFailedError(f"{name}: rank{'s' if len(failed) > 1 else ''} {', '.join(str(r) for r, _ in failed)} "
                              f"of {comm.size} failed before training began, so every rank stops:\n{lines}",
                              rank=failed[0][0], remote=failed[0][1])
    for key in model:
        values = [e["model"].get(key) for e in entries]
        if len(set(values)) > 1:
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise RuntimeError(f"{name}: ranks {differ} define a different model or optimizer than rank 0 ({key}):\n"
                               f"  rank 0: {values[0]}\n  rank {differ[0]}: {values[differ[0]]}")
    differ = []
    for key in settings:
        values = [e["settings"].get(key) for e in entries]
        if len(set(values)) > 1:
            differ.append(f"  {key}: {_group(values)}")
    if differ:
        raise ValueError(f"{name}: the ranks called fit() with different settings or data (each rank must make "
                         "the same call, or their collectives fall out of step):\n" + "\n".join(differ)
                         + (f"\n{hint}" if hint else ""))
    if guard is not None:
        guard.everywhere = False


def sample_digest(ops, a, rows=32, dtype=numpy.float64):
    """A digest of up to ``rows`` evenly spaced rows of ``a`` (host or ``ops``'s device) and its shape:
    cheap, and enough to tell ranks given different data sets apart."""
    n = int(a.shape[0])
    idx = numpy.unique(numpy.linspace(0, n - 1, min(n, rows)).astype(numpy.int64)) if n else numpy.zeros(0, numpy.int64)
    part = a[ops.asarray(idx)] if ops.owns(a) else numpy.asarray(a)[idx]
    return checksum(numpy.asarray(ops.asnumpy(part), dtype=dtype), numpy.array(a.shape, dtype=numpy.int64))
