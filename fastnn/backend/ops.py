"""``Ops``: the NumPy reference for every primitive, and the contract every backend meets.

Every method is written against ``self.xp`` only, so the same body runs on NumPy arrays (the
``numpy`` backend) and on CuPy arrays (the generic path of the ``cupy`` backend). ``NumbaOps`` and
``CupyOps`` override the hot primitives with fused kernels of the same name and signature; the
tests compare each override with the body here on random data.

Conventions
-----------
- ``x: (N, D)`` is a batch of rows; ``b: (D,)`` a bias broadcast over rows.
- ``out=`` (and other keyword buffers) name arrays the primitive writes; given them, a fused
  override allocates nothing. The reference may allocate temporaries: it is written to be read.
- Scalars are cast to the arrays' dtype, so float32 stays float32 end to end.
- Optimizer ``*_step`` primitives update their arrays in place over a flat 1-D buffer and flush
  state values below the smallest normal number to zero (subnormals are slow on x86 CPUs).
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import numpy

from fastnn import config
from fastnn.backend.ops_act import ActivationReference, require_z  # noqa: F401  (require_z re-exported)
from fastnn.backend.ops_conv import ConvReference
from fastnn.backend.ops_optim import OptimizerReference
from fastnn.kernels import HASH_GOLDEN, MIX_M1, MIX_M2, SIGMOID, dropout_base
from fastnn.kernels.geometry import conv_geometry, pool_geometry  # noqa: F401  (re-exported)

Array = "numpy.ndarray | cupy.ndarray"


def _limit_in(dtype, limit):
    """``limit`` as a scalar of the float ``dtype``, at most its largest finite value."""
    return dtype.type(min(float(limit), float(numpy.finfo(dtype).max)))


class Ops(ActivationReference, ConvReference, OptimizerReference):
    """The NumPy reference backend. ``name``, ``xp`` (the array module) and ``device`` describe it."""

    name = "numpy"
    xp = numpy
    device = "cpu"
    # What the model and layers ask of a backend instead of testing its name:
    device_arrays = False    # arrays live on an accelerator: host data and index arrays move to it
    captures_graphs = False  # fit(cuda_graph=True) can capture a training step as a CUDA graph
    communicator = "mpi"     # what all-reduces its arrays under a multi-rank launcher (fastnn.distributed.init)
    # True on a backend with its own kernels (NumbaOps, CupyOps): with strict kernels on
    # (FASTNN_STRICT_KERNELS=1, as in the test suite) a hot primitive's body here then raises
    # KernelFallbackError instead of standing in for a kernel that was not reached.
    reference_is_fallback = False

    def train_plan(self, spec, batch_size):
        """``(plan, None)`` when this backend trains the model ``spec`` describes in one compiled call
        per batch of ``batch_size``; ``(None, why not)`` when it has such a step but not for this model;
        ``(None, None)`` when it has none (this reference). ``fastnn.training.fused_plan`` asks it and
        runs the plan: ``prepare(x, t)`` once, then ``step(prepared, idx, sc, step0)`` per run of batches
        (``steps(n)`` of them; ``sc = scalars(lrs, iteration0)``: the optimizer's arguments at learning
        rates ``lrs``; ``step0``: the dropout masks' step), each returning ``(steps, 2)`` per-step
        ``(loss * n, metric sum)``; the caller advances its counters.

        ``spec`` is a sentence (str) when the model has no description (why it trains eagerly), else
        a dict of plain values, so that no backend needs the classes above it:

        - ``name`` (for messages), ``dtype``, ``input_shape`` (one sample's);
        - ``layers``: the layers that compute, in order, as dicts: ``kind="dense"`` with ``name``,
          ``units``, ``act``, ``alpha``, ``w`` and ``b`` (offsets into ``params``; ``b`` -1 without a
          bias); ``kind="dropout"`` (inverted, ``dropout_mask``'s masks) with ``name``, ``rate``,
          ``seed``; ``kind="activation"`` with ``name``, ``act``, ``alpha``. ``act`` is an activation
          code of ``fastnn.kernels`` or ``"softmax"``; an output activation fused into the loss is
          left out (a Dense then gives logits: ``LINEAR``);
        - ``loss``: ``"xent_index"``/``"xent_onehot"`` (softmax cross-entropy on logits against class
          indices/one-hot rows), ``"bce"`` (sigmoid cross-entropy on logits) or ``"mse"``;
          ``metric``: None, ``"argmax"`` or ``"binary"`` accuracy; ``logits``: the outputs are logits;
        - ``optimizer``: its primitive's rule (``"sgd"``, ``"momentum"``, ``"adagrad"``, ``"rmsprop"``,
          ``"adam"``), ``hyper``: its settings (``momentum``, ``nesterov``, ``eps``, ``rho``, ``beta1``,
          ``beta2``, ``decoupled``: those the rule reads), ``clipnorm`` (or None), ``pieces``:
          ``(start, stop, weight decay)`` ranges updated by one call each, ``runs``: ``(start, stop)``
          ranges of trainable parameters;
        - ``params``, ``grads``, ``slots``: the flat parameter and gradient buffers, the optimizer's
          flat state arrays (trained in place).
        """
        return None, None

    # ------------------------------------------------------------------ arrays and devices
    def asarray(self, x, dtype=None):
        """``x`` as an array of this backend (a host array becomes a device array on GPUs)."""
        return self.xp.asarray(x, dtype=dtype)

    def asnumpy(self, x):
        """A host ``numpy.ndarray`` holding ``x``'s values."""
        return numpy.asarray(x)

    def owns(self, x) -> bool:
        """True when ``x`` is an array that lives where this backend computes."""
        return isinstance(x, numpy.ndarray)

    def alloc(self, shape, dtype):
        """A zero-filled array of this backend."""
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued work (a no-op on CPUs)."""

    def is_out_of_memory(self, exc) -> bool:
        """True when ``exc`` means this backend's memory is exhausted."""
        return isinstance(exc, MemoryError)

    def free_memory(self):
        """Return cached memory to the system (CuPy's pools); nothing to do for NumPy."""

    def memory_usage(self):
        """``(bytes in use, bytes held)`` by this backend's allocator, or ``None`` when it has no pool."""
        return None

    def available_memory(self):
        """Bytes of device memory this backend could still allocate, or ``None`` on a host backend
        (host memory is its device: ``fastnn.feeding`` then never keeps training data off it)."""
        return None

    def make_transfer(self):
        """The copy protocol ``fastnn.feeding.HostBatches`` and captured steps stage host data through
        (``fastnn.backend.transfer``): plain NumPy copies here."""
        from fastnn.backend.transfer import NumpyTransfer

        return NumpyTransfer(self)

    def first_beyond(self, a, limit):
        """Input validation on host data: the flat (C-order) index of the first element of the float
        NumPy array ``a`` whose magnitude is not ``<= limit`` (NaN, +-inf, or finite beyond ``limit``),
        or -1. With ``a``'s largest finite value as ``limit`` this is the first non-finite element (a
        larger ``limit`` counts as that value: inf always fails)."""
        bad = ~(numpy.abs(a) <= _limit_in(a.dtype, limit))
        return int(numpy.argmax(bad.reshape(-1))) if bad.any() else -1

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} device={self.device!r}>"

    # ------------------------------------------------------------------ GEMM
    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        """``out = op(a) @ op(b)``, where ``op`` transposes when asked. Returns ``out``."""
        return self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
        """The inverted-dropout scale mask of ``shape = (N, D)``: ``1 / (1 - rate)`` where kept, else 0.

        Element ``(i, j)`` is kept when ``u >= rate``, ``u`` being the top 24 bits of output
        ``(row0 + i) * D + j`` of the splitmix64 stream started at ``dropout_base(seed, step)``
        (see ``fastnn.kernels``): a pure function of (seed, step, global row, unit), the same on
        every backend and unchanged when a batch is split across workers.
        """
        return self._dropout_mask_at(shape, rate, dropout_base(seed, step), row0, dtype, out)

    def _dropout_mask_at(self, shape, rate, base, row0, dtype, out):
        """``dropout_mask`` for the stream start ``base = dropout_base(seed, step)``."""
        xp = self.xp
        n, d = shape
        base = xp.uint64(base)
        rows = xp.arange(row0, row0 + n, dtype=xp.uint64)[:, None]
        cols = xp.arange(d, dtype=xp.uint64)[None, :]
        z = base + (rows * xp.uint64(d) + cols) * xp.uint64(HASH_GOLDEN)
        z = (z ^ (z >> xp.uint64(30))) * xp.uint64(MIX_M1)
        z = (z ^ (z >> xp.uint64(27))) * xp.uint64(MIX_M2)
        z = z ^ (z >> xp.uint64(31))
        u = (z >> xp.uint64(40)).astype(numpy.float64) * (1.0 / (1 << 24))
        dtype = numpy.dtype(dtype)
        scale = dtype.type(1.0 / (1.0 - rate))
        mask = xp.where(u >= rate, scale, dtype.type(0)).astype(dtype)
        if out is None:
            return mask
        out[...] = mask
        return out

    def mul(self, x, y, *, out=None):
        """``out = x * y`` elementwise (dropout forward and backward with a scale mask)."""
        return self.xp.multiply(x, y, out=out)

    # ------------------------------------------------------------------ softmax and losses
    def softmax(self, x, *, out=None):
        """Row-wise softmax of ``x: (N, C)``, max-subtracted so large inputs stay finite."""
        xp = self.xp
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        y = e / e.sum(axis=-1, keepdims=True)
        if out is None:
            return y
        out[...] = y
        return out

    def _targets(self, t, shape, dtype):
        """Dense targets of ``shape`` from one-hot ``t: (N, C)`` or class indices ``t: (N,)``."""
        if t.ndim == 2:
            return t.astype(dtype, copy=False)
        dense = self.xp.zeros(shape, dtype=dtype)
        dense[self.xp.arange(shape[0]), t.astype(self.xp.int64)] = 1
        return dense

    def softmax_xent(self, x, t, *, y=None, dx=None):
        """Mean softmax cross-entropy of logits ``x: (N, C)`` against one-hot ``t: (N, C)`` or indices ``t: (N,)``.

        Returns the loss as a 0-d array of ``x``'s dtype (kept on the device), computed stably as
        ``mean_i (logsumexp(x_i) - sum_j t_ij x_ij)``. Writes the probabilities into ``y`` and,
        when given, the gradient ``(softmax(x) - t) / N`` into ``dx``.
        """
        xp = self.xp
        n = x.shape[0]
        m = x.max(axis=1, keepdims=True)
        lse = m[:, 0] + xp.log(xp.exp(x - m).sum(axis=1))
        dense = self._targets(t, x.shape, x.dtype)
        loss = (lse * dense.sum(axis=1) - (dense * x).sum(axis=1)).sum() / x.dtype.type(n)
        probs = self.softmax(x, out=y)
        if dx is not None:
            dx[...] = (probs - dense) / x.dtype.type(n)
        return xp.asarray(loss, dtype=x.dtype)

    def softmax_xent_backward(self, y, t, dout=1.0, *, out=None):
        """``out = dout * (y - t) / N`` from the probabilities ``y: (N, C)`` and one-hot or index ``t``."""
        dense = self._targets(t, y.shape, y.dtype)
        dx = (y - dense) * (y.dtype.type(dout) / y.dtype.type(y.shape[0]))
        if out is None:
            return dx
        out[...] = dx
        return out

    def sigmoid_bce(self, x, t, *, y=None, dx=None):
        """Mean binary cross-entropy of logits ``x`` against targets ``t`` in [0, 1] (same shape).

        ``loss = mean(max(x, 0) - x t + log1p(e^-|x|))``, stable for any ``x``. Writes the
        probabilities into ``y`` and, when given, ``(sigmoid(x) - t) / x.size`` into ``dx``.
        """
        xp = self.xp
        t = t.astype(x.dtype, copy=False)
        loss = (xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))).sum() / x.dtype.type(x.size)
        probs = self.bias_act(x, None, SIGMOID, out=y)
        if dx is not None:
            dx[...] = (probs - t) / x.dtype.type(x.size)
        return xp.asarray(loss, dtype=x.dtype)

    def mse(self, y, t, scale, *, dx=None):
        """``loss = scale * sum((y - t)^2)``; writes ``dx = 2 * scale * (y - t)`` when given.

        Keras's ``"mse"`` is ``scale = 1 / y.size``; the book's per-sample ``0.5 * sum`` is ``scale = 0.5 / N``.
        """
        xp = self.xp
        diff = y - t.astype(y.dtype, copy=False)
        s = y.dtype.type(scale)
        if dx is not None:
            dx[...] = (2 * s) * diff
        return xp.asarray((diff * diff).sum() * s, dtype=y.dtype)

    # ------------------------------------------------------------------ batch normalization
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, train,
                          *, out=None):
        """Batch normalization of ``x: (N, D)`` per column.

        Training: normalise with the batch mean and (biased) variance, and update the running
        statistics in place: ``running = momentum * running + (1 - momentum) * batch``.
        Inference: normalise with the running statistics. Returns ``(y, xhat, inv_std)``.
        """
        xp = self.xp
        dt = x.dtype.type
        if train:
            mu = x.mean(axis=0)
            xc = x - mu
            var = (xc * xc).mean(axis=0)
            running_mean[...] = dt(momentum) * running_mean + dt(1 - momentum) * mu
            running_var[...] = dt(momentum) * running_var + dt(1 - momentum) * var
        else:
            xc = x - running_mean
            var = running_var
        inv_std = dt(1) / xp.sqrt(var + dt(eps))
        xhat = xc * inv_std
        y = gamma * xhat + beta
        if out is not None:
            out[...] = y
            y = out
        return y, xhat, inv_std

    def batchnorm_backward(self, dout, xhat, inv_std, gamma, *, dx=None, dgamma=None, dbeta=None):
        """Gradients of training-mode batch normalization: returns ``dx`` and writes ``dgamma``, ``dbeta``."""
        n = dout.shape[0]
        dbeta_ = dout.sum(axis=0)
        dgamma_ = (dout * xhat).sum(axis=0)
        dxhat = dout * gamma
        dx_ = inv_std / dout.dtype.type(n) * (
            dout.dtype.type(n) * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
        for buf, val in ((dgamma, dgamma_), (dbeta, dbeta_)):
            if buf is not None:
                buf[...] = val
        if dx is None:
            return dx_
        dx[...] = dx_
        return dx

# The fused primitives a fast backend must define itself (the structure tests check this list).
HOT_PRIMITIVES = (
    "bias_act", "act_backward", "bias_grad", "act_backward_bias_grad", "dropout_mask", "mul",
    "softmax", "softmax_xent", "softmax_xent_backward", "sigmoid_bce", "mse",
    "batchnorm_forward", "batchnorm_backward", "sq_norm",
    "sgd_step", "momentum_step", "adagrad_step", "rmsprop_step", "adam_step", "amsgrad_step", "nadam_step",
    "adamax_step",
    "im2col", "col2im", "im2col_t", "col2im_t", "maxpool_forward", "maxpool_backward",
    "conv_bias_act", "conv_act_backward",
)


# ---------------------------------------------------------------------------- strict kernels
# With strict kernels on (FASTNN_STRICT_KERNELS=1, which tests/conftest.py sets) each hot primitive
# of ``Ops`` is wrapped so that it refuses to run for a backend whose ``reference_is_fallback`` is
# True: a NumbaOps method that falls back (``super().<name>(...)``) or a hot primitive CupyOps
# does not define raises ``KernelFallbackError`` naming the primitive, the backend and the
# arguments, so a kernel that is never reached fails its test instead of passing on the reference.
# Tests that exercise a fallback on purpose (other dtypes, mixed dtypes, broadcasting, empty
# arrays) say so with ``allow_fallback()`` (``fastnn.testing.allow_fallback``) or the
# ``allow_fallback`` pytest marker. Off (the default), ``Ops``'s methods are the plain functions
# above: nothing is wrapped, nothing is checked, nothing costs.

class KernelFallbackError(RuntimeError):
    """A fast backend ran the NumPy reference of a hot primitive while strict kernels are on."""


_REFERENCE = {name: getattr(Ops, name) for name in HOT_PRIMITIVES}  # the plain functions, before any wrapping
_strict = False
_allowed = 0  # depth of allow_fallback() blocks (process-wide: threads a test starts are covered)


def _is_array(v):
    return (not isinstance(v, (type, numpy.generic)) and hasattr(v, "dtype") and hasattr(v, "shape")
            and hasattr(v, "ndim"))


def call_arrays(fn, args, kwargs):
    """``[(name, array)]`` of a call ``fn(self, *args, **kwargs)``'s array arguments, by parameter name."""
    try:
        items = list(inspect.signature(fn).bind(None, *args, **kwargs).arguments.items())[1:]
    except TypeError:
        items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(k, v) for k, v in items if _is_array(v)]


def describe_arrays(ops, arrays):
    """``"x: float32 (3, 4), t: int64 (3,)"``; arrays that are not ``ops``'s own are named by type."""
    return ", ".join(
        f"{k}: {'' if ops.owns(v) else type(v).__module__ + '.' + type(v).__name__ + ' '}{v.dtype} "
        f"{tuple(v.shape)}{'' if getattr(getattr(v, 'flags', None), 'c_contiguous', True) else ' strided'}"
        for k, v in arrays) or "no arrays"


STRICT_HINT = ("A test that exercises this fallback on purpose wraps the call in fastnn.testing.allow_fallback() "
               "or is marked @pytest.mark.allow_fallback.")


def _fallback_message(ops, name, fn, args, kwargs):
    cls = type(ops).__name__
    head = (f"{cls}.{name} (backend {ops.name!r}) ran the NumPy reference Ops.{name} instead of its "
            f"kernel, and strict kernels are on (FASTNN_STRICT_KERNELS=1)")
    if getattr(type(ops), name) is getattr(Ops, name):
        return f"{head}: {cls} does not define {name}, so it inherits the reference. {STRICT_HINT}"
    arrays = call_arrays(fn, args, kwargs)
    floats = {numpy.dtype(v.dtype) for _, v in arrays if numpy.dtype(v.dtype).kind in "fc"}
    why = []
    foreign = [k for k, v in arrays if not ops.owns(v)]
    if foreign:
        why.append(f"{', '.join(foreign)} not {ops.name}'s arrays")
    other = sorted({str(v.dtype) for k, v in arrays if k not in ("t", "argmax") and numpy.dtype(v.dtype)
                    not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))})
    if other:
        why.append(f"dtype {', '.join(other)} (the kernels take float32 and float64)")
    if len(floats) > 1:
        why.append(f"mixed dtypes {', '.join(sorted(map(str, floats)))}")
    empty = [k for k, v in arrays if v.size == 0]
    if empty:
        why.append(f"{', '.join(empty)} empty")
    if why:
        why = "the kernel does not cover " + "; ".join(why)
    else:
        why = ("these look like arguments its kernel covers (one float dtype, non-empty): either their "
               "shapes are outside what the kernel handles, or the override reaches the reference on a "
               "path its kernel should take (an unconditional super() call, a check that is too strict)")
    return f"{head}. Arguments: {describe_arrays(ops, arrays)}; {why}. {STRICT_HINT}"


def _guarded(name, fn):
    @functools.wraps(fn)
    def reference(self, *args, **kwargs):
        if self.reference_is_fallback and not _allowed:
            raise KernelFallbackError(_fallback_message(self, name, fn, args, kwargs))
        return fn(self, *args, **kwargs)

    return reference


_strict_hooks = []


def on_strict_kernels(hook):
    """Call ``hook(on)`` now and at every switch (``fastnn.backend.cupy_ops`` checks its launches so)."""
    _strict_hooks.append(hook)
    hook(_strict)


def set_strict_kernels(on=True):
    """Switch strict kernels on or off in this process (``FASTNN_STRICT_KERNELS`` sets it at import);
    returns the previous setting."""
    global _strict
    previous, _strict = _strict, bool(on)
    for name, fn in _REFERENCE.items():
        setattr(Ops, name, _guarded(name, fn) if _strict else fn)
    for hook in _strict_hooks:
        hook(_strict)
    return previous


def strict_kernels_enabled():
    return _strict


def fallback_allowed():
    """True inside ``allow_fallback()``."""
    return _allowed > 0


@contextlib.contextmanager
def allow_fallback():
    """Within this block a fast backend may run the reference of a hot primitive even when
    strict kernels are on: for tests of the cases the kernels leave to the reference on purpose."""
    global _allowed
    _allowed += 1
    try:
        yield
    finally:
        _allowed -= 1


if config.STRICT_KERNELS:
    set_strict_kernels(True)
