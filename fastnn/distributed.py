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
and writes checkpoints.
"""
from __future__ import annotations

import hashlib
import os

import numpy

__all__ = ["Communicator", "SingleProcess", "init", "get", "shard", "launched_under_mpi"]

_current = None


def shard(n, rank, size):
    """``(lo, hi)``: rank ``rank``'s contiguous share of ``n`` items (the first ``n % size`` ranks get one more)."""
    base, extra = divmod(int(n), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class Communicator:
    """What the training loop needs from a communicator. ``rank``, ``size``, ``kind``."""

    rank = 0
    size = 1
    kind = "single"

    def allreduce_sum_(self, array):
        """Sum ``array`` over ranks, in place (host arrays; device arrays on NCCL)."""
        raise NotImplementedError

    def allreduce_host(self, values):
        """Sum a small host float64 vector over ranks and return it."""
        raise NotImplementedError

    def bcast_(self, array, root=0):
        """Overwrite ``array`` on every rank with root's, in place."""
        raise NotImplementedError

    def bcast_obj(self, obj, root=0):
        raise NotImplementedError

    def allgather_obj(self, obj):
        raise NotImplementedError

    def barrier(self):
        pass

    def abort(self, code=1):
        os._exit(code)


class SingleProcess(Communicator):
    """One process: every collective is the identity."""

    def allreduce_sum_(self, array):
        return array

    def allreduce_host(self, values):
        return numpy.asarray(values, dtype=numpy.float64)

    def bcast_(self, array, root=0):
        return array

    def bcast_obj(self, obj, root=0):
        return obj

    def allgather_obj(self, obj):
        return [obj]

    def abort(self, code=1):
        raise SystemExit(code)


def launched_under_mpi():
    """True when an MPI launcher started this process with more than one rank (read from its environment)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) > 1:
            return True
    return False


def init(kind="auto"):
    """The communicator for this process: ``"single"``, ``"mpi"``, ``"nccl"`` or ``"auto"`` (MPI when
    launched under MPI with more than one rank, else single-process). Called by ``fit`` itself."""
    global _current
    if kind == "auto":
        kind = "mpi" if launched_under_mpi() else "single"
    if kind == "single":
        _current = SingleProcess()
    else:
        _current = _make(kind)
    return _current


def _make(kind):
    raise NotImplementedError(f"communicator {kind!r} is not available in this build")


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
