"""Collectives on CuPy arrays through NCCL (``cupy.cuda.nccl``): ``NCCLComm``, the communicator
``fastnn.distributed.init("nccl")`` makes (``init()`` under a multi-rank launcher when the active
backend is CuPy). CuPy-specific, so it lives behind the backend; ``fastnn.distributed`` imports it
when it makes one and re-exports ``NCCLComm`` and ``nccl_device``. Importing this module imports
neither CuPy nor mpi4py.
"""
from __future__ import annotations

import logging

import numpy

from fastnn import backend
from fastnn.communicators import Communicator, MPIComm
from fastnn.errors import BackendUnavailableError

__all__ = ["NCCLComm", "nccl_device"]

log = logging.getLogger("fastnn")


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
        if not backend.is_device_array(array):
            return self.host.allreduce_sum_(array)
        with self._cupy.cuda.Device(self.device_id):
            dtype, stream = self._buffer(array, "the all-reduced array")
            self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, self._nccl.NCCL_SUM, stream)
        return array

    def bcast_(self, array, root=0):
        if not backend.is_device_array(array):
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
