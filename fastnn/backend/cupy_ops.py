"""``CupyOps``: CuPy arrays on one CUDA device, cuBLAS GEMMs, and (as they land) fused CUDA kernels.

The reference bodies of ``Ops`` already run on CuPy arrays because they use only ``self.xp``.
"""
import numpy

from fastnn.backend.ops import Ops


class CupyOps(Ops):
    name = "cupy"

    def __init__(self, device_id=0):
        import cupy

        self.xp = cupy
        self.device_id = int(device_id)
        self.device = f"cuda:{self.device_id}"
        self._cupy = cupy

    def asarray(self, x, dtype=None):
        with self._cupy.cuda.Device(self.device_id):
            return self._cupy.asarray(x, dtype=dtype)

    def asnumpy(self, x):
        return self._cupy.asnumpy(x) if isinstance(x, self._cupy.ndarray) else numpy.asarray(x)

    def owns(self, x):
        return isinstance(x, self._cupy.ndarray) and x.device.id == self.device_id

    def alloc(self, shape, dtype):
        with self._cupy.cuda.Device(self.device_id):
            return self._cupy.zeros(shape, dtype=dtype)

    def synchronize(self):
        self._cupy.cuda.Device(self.device_id).synchronize()
