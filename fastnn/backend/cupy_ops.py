"""``CupyOps``: CuPy arrays on one CUDA device, cuBLAS GEMMs, and (as they land) fused CUDA kernels.

The reference bodies of ``Ops`` already run on CuPy arrays because they use only ``self.xp``.
Each hot primitive (``HOT_PRIMITIVES``) is one line calling its launcher in ``fastnn.kernels.gpu``,
with the base signature exactly; the launchers import CuPy only when they run.
"""
import functools
import math

import numpy

from fastnn.backend import ops as _ops
from fastnn.backend.ops import HOT_PRIMITIVES, Ops
from fastnn.backend.precision import get_matmul_precision
from fastnn.kernels.gpu import _loader as _L
from fastnn.kernels.gpu import activations as _act
from fastnn.kernels.gpu import conv as _conv
from fastnn.kernels.gpu import dropout as _drop
from fastnn.kernels.gpu import losses as _loss
from fastnn.kernels.gpu import normalization as _norm
from fastnn.kernels.gpu import optimizers as _opt


class CupyOps(Ops):
    name = "cupy"
    device_arrays = True
    captures_graphs = True
    communicator = "nccl"
    # FASTNN_STRICT_KERNELS=1 (the test suite): a hot primitive that this class does not define (or
    # that calls super()) raises KernelFallbackError instead of running the reference on CuPy arrays,
    # and so does one whose launcher returns without launching a fastnn kernel (see the end of this file).
    reference_is_fallback = True

    def __init__(self, device_id=0):
        import cupy

        self.xp = cupy
        self.device_id = int(device_id)
        self.device = f"cuda:{self.device_id}"
        self._cupy = cupy
        # While ``fastnn.backend.graphs`` captures a training step, GEMMs go to its recorder (CuPy's own
        # cuBLAS calls are refused during a capture); None otherwise.
        self.capture = None

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

    def is_out_of_memory(self, exc):
        return isinstance(exc, (MemoryError, self._cupy.cuda.memory.OutOfMemoryError))

    def free_memory(self):
        with self._cupy.cuda.Device(self.device_id):
            self._cupy.get_default_memory_pool().free_all_blocks()
            self._cupy.get_default_pinned_memory_pool().free_all_blocks()

    def memory_usage(self):
        with self._cupy.cuda.Device(self.device_id):
            pool = self._cupy.get_default_memory_pool()
            return pool.used_bytes(), pool.total_bytes()

    def available_memory(self):
        """The driver's free bytes plus those CuPy's pool holds unused (they are ours to reuse)."""
        with self._cupy.cuda.Device(self.device_id):
            return self._cupy.cuda.runtime.memGetInfo()[0] + self._cupy.get_default_memory_pool().free_bytes()

    def make_transfer(self):
        """Pinned staging buffers and a non-blocking copy stream on this device (``CupyTransfer``)."""
        from fastnn.backend.transfer import CupyTransfer

        return CupyTransfer(self)

    # ------------------------------------------------------------------ GEMM (cuBLAS)
    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        """``out = op(a) @ op(b)`` through cuBLAS; float32 uses TF32 tensor cores only when
        ``fastnn.set_matmul_precision("tf32")`` asked for it (exact float32 otherwise, even when
        ``CUPY_TF32=1`` is set for the rest of the program)."""
        if self.capture is not None:
            return self.capture.gemm(a, b, trans_a, trans_b, out)
        return cupy_matmul(self._cupy, a.T if trans_a else a, b.T if trans_b else b, out)

    # ------------------------------------------------------------------ fused CUDA kernels
    # Kernels launch on the current CUDA device and index flat memory of the arrays they get;
    # a model's arrays live on this backend's device, which the caller makes current.
    def bias_act(self, x, b, act, alpha=0.0, *, out=None, z_out=None):
        return _act.bias_act(x, b, act, alpha, out=out, z_out=z_out)

    def act_backward(self, dout, y, act, alpha=0.0, *, out=None, z=None):
        return _act.act_backward(dout, y, act, alpha, out=out, z=z)

    def bias_grad(self, dz, *, out=None):
        return _act.bias_grad(dz, out=out)

    def act_backward_bias_grad(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        return _act.act_backward_bias_grad(dout, y, act, alpha, out=out, db=db, z=z)

    def dropout_mask(self, shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
        # no array argument says where to launch: this backend's device, made current unless it is
        # already (entering a Device costs more than the launch's own Python)
        if self._cupy.cuda.runtime.getDevice() == self.device_id:
            return _drop.dropout_mask(shape, rate, seed, step, row0, dtype=dtype, out=out)
        with self._cupy.cuda.Device(self.device_id):
            return _drop.dropout_mask(shape, rate, seed, step, row0, dtype=dtype, out=out)

    def mul(self, x, y, *, out=None):
        return _act.mul(x, y, out=out)

    def softmax(self, x, *, out=None):
        return _act.softmax(x, out=out)

    def softmax_xent(self, x, t, *, y=None, dx=None):
        return _loss.softmax_xent(x, t, y=y, dx=dx)

    def softmax_xent_backward(self, y, t, dout=1.0, *, out=None):
        return _loss.softmax_xent_backward(y, t, dout, out=out)

    def sigmoid_bce(self, x, t, *, y=None, dx=None):
        return _loss.sigmoid_bce(x, t, y=y, dx=dx)

    def mse(self, y, t, scale, *, dx=None):
        return _loss.mse(y, t, scale, dx=dx)

    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, train,
                          *, out=None):
        return _norm.batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, train,
                                       out=out)

    def batchnorm_backward(self, dout, xhat, inv_std, gamma, *, dx=None, dgamma=None, dbeta=None):
        return _norm.batchnorm_backward(dout, xhat, inv_std, gamma, dx=dx, dgamma=dgamma, dbeta=dbeta)

    def im2col(self, x, fh, fw, stride=1, pad=0, *, out=None):
        return _conv.im2col(x, fh, fw, stride, pad, out=out)

    def col2im(self, col, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        return _conv.col2im(col, x_shape, fh, fw, stride, pad, out=out)

    def im2col_t(self, x, fh, fw, stride=1, pad=0, *, out=None):
        return _conv.im2col_t(x, fh, fw, stride, pad, out=out)

    def col2im_t(self, colT, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        return _conv.col2im_t(colT, x_shape, fh, fw, stride, pad, out=out)

    def maxpool_forward(self, x, ph, pw, stride=1, pad=0, *, out=None, argmax=None):
        return _conv.maxpool_forward(x, ph, pw, stride, pad, out=out, argmax=argmax)

    def maxpool_backward(self, dout, argmax, x_shape, *, out=None):
        return _conv.maxpool_backward(dout, argmax, x_shape, out=out)

    def conv_bias_act(self, z, b, act, alpha=0.0, *, out=None, z_out=None):
        return _conv.conv_bias_act(z, b, act, alpha, out=out, z_out=z_out)

    def conv_act_backward(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        return _conv.conv_act_backward(dout, y, act, alpha, out=out, db=db, z=z)

    def sq_norm(self, x):
        return _opt.sq_norm(x)

    def sgd_step(self, p, g, lr, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        return _opt.sgd_step(p, g, lr, weight_decay, scale, clipvalue)

    def momentum_step(self, p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=math.inf):
        return _opt.momentum_step(p, g, v, lr, momentum, weight_decay, scale, nesterov, clipvalue)

    def adagrad_step(self, p, g, h, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        return _opt.adagrad_step(p, g, h, lr, eps, weight_decay, scale, clipvalue)

    def rmsprop_step(self, p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        return _opt.rmsprop_step(p, g, h, lr, rho, eps, weight_decay, scale, clipvalue)

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                  decoupled=False, clipvalue=math.inf):
        return _opt.adam_step(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue)

    def amsgrad_step(self, p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                     decoupled=False, clipvalue=math.inf):
        return _opt.amsgrad_step(p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled,
                                 clipvalue)

    def nadam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0,
                   clipvalue=math.inf):
        return _opt.nadam_step(p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay, scale, clipvalue)

    def adamax_step(self, p, g, m, u, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        return _opt.adamax_step(p, g, m, u, lr, beta1, beta2, eps, t, weight_decay, scale, clipvalue)

    # ------------------------------------------------------------------ graph-capture variants
    # A CUDA graph freezes by-value kernel arguments, so what changes per step is read from device
    # memory: the dropout stream start (a one-element uint64 array holding dropout_base(seed,
    # step)) and each optimizer's scalars (a float64 array; step_scalars(rule, ...) computes them on the
    # host, as <rule>_step does, for the caller to copy to the device before each replay). Results
    # are bitwise equal to the by-value primitives. Not hot primitives: fastnn.backend.graphs calls them.
    def dropout_mask_dev(self, shape, rate, base, row0=0, *, dtype=numpy.float32, out=None):
        with self._cupy.cuda.Device(self.device_id):
            return _drop.dropout_mask_dev(shape, rate, base, row0, dtype=dtype, out=out)

    def step_scalars(self, rule, dtype, *args):
        self._step_rule(rule, args)
        return getattr(_opt, rule + "_scalars")(dtype, *args)

    def step_dev(self, rule, p, g, slots, s):
        self._step_rule(rule)
        return getattr(_opt, rule + "_step_dev")(p, g, *slots, s)


# ---------------------------------------------------------------------------- strict kernels
# The launchers have no fallback branch, but nothing stops one from computing a result another way
# (a generic CuPy operation, an early return) and never reaching its CUDA kernel. So with strict
# kernels on (FASTNN_STRICT_KERNELS=1, as in the test suite) every launch through
# ``fastnn.kernels.gpu._loader.function`` is counted, and a hot primitive of CupyOps whose array
# arguments are all non-empty (or, with none, whose result is) must launch at least one fastnn
# kernel, else it raises KernelFallbackError, unless the test allows it
# (fastnn.testing.allow_fallback). Off (the default), the methods above and ``_loader.function``
# are the plain ones: nothing is wrapped or counted.
_PLAIN = {name: vars(CupyOps)[name] for name in HOT_PRIMITIVES}
_PLAIN_FUNCTION = _L.function
_launches = 0


class _CountedKernel:
    """A ``RawKernel`` whose launches are counted (attributes pass through)."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, *args, **kwargs):
        global _launches
        _launches += 1
        return self.kernel(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


@functools.wraps(_PLAIN_FUNCTION)
def _counting_function(*args, **kwargs):
    return _CountedKernel(_PLAIN_FUNCTION(*args, **kwargs))


def _needs_launch(arrays, result):
    if arrays:
        return all(a.size for _, a in arrays)
    results = result if isinstance(result, tuple) else (result,)
    return any(_ops._is_array(r) and r.size for r in results)


def _launch_checked(name, fn):
    @functools.wraps(fn)
    def primitive(self, *args, **kwargs):
        before = _launches
        result = fn(self, *args, **kwargs)
        if _launches == before and not _ops.fallback_allowed():
            arrays = _ops.call_arrays(fn, args, kwargs)
            if _needs_launch(arrays, result):
                raise _ops.KernelFallbackError(
                    f"CupyOps.{name} (backend 'cupy') returned without launching a fastnn CUDA kernel, and "
                    f"strict kernels are on (FASTNN_STRICT_KERNELS=1): its launcher computed the result another "
                    f"way (a generic CuPy operation, an early return). Arguments: "
                    f"{_ops.describe_arrays(self, arrays)}. {_ops.STRICT_HINT}")
        return result

    return primitive


def _strict_kernels(on):
    for name, fn in _PLAIN.items():
        setattr(CupyOps, name, _launch_checked(name, fn) if on else fn)
    _L.function = _counting_function if on else _PLAIN_FUNCTION  # kernel_1d's memo follows it


_ops.on_strict_kernels(_strict_kernels)


_F32 = numpy.dtype(numpy.float32)
_LINALG: dict = {}  # cupy module -> its cupy._core._routines_linalg (an import statement per GEMM costs)


def cupy_matmul(cupy, a, b, out=None, precision=None):
    """``cupy.matmul(a, b, out=out)`` with CuPy's float32 compute type set to fastnn's matmul
    precision for this call and restored after it (CuPy keeps one process-wide setting)."""
    if a.dtype is not _F32 and a.dtype != numpy.float32:  # the identity test first: dtypes are singletons
        return cupy.matmul(a, b, out=out)
    la = _LINALG.get(cupy)
    if la is None:
        from cupy._core import _routines_linalg as la

        _LINALG[cupy] = la

    want = la.COMPUTE_TYPE_TF32 if (precision or get_matmul_precision()) == "tf32" \
        else la.COMPUTE_TYPE_DEFAULT
    before = la.get_compute_type(numpy.float32)
    if before == want:
        return cupy.matmul(a, b, out=out)
    la.set_compute_type(numpy.float32, want)
    try:
        return cupy.matmul(a, b, out=out)
    finally:
        la.set_compute_type(numpy.float32, before)
