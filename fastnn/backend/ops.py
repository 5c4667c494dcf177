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
import math

import numpy

from fastnn import config
from fastnn.kernels import (
    ACTIVATION_NAMES, ELU, GELU, GELU_CLIP, GELU_TANH, GELU_TANH_C, HASH_GOLDEN, LEAKY_RELU, LINEAR,
    MIX_M1, MIX_M2, NEEDS_Z, RELU, SELU, SELU_ALPHA, SELU_SCALE, SIGMOID, SOFTPLUS, SWISH, TANH,
    dropout_base,
)

Array = "numpy.ndarray | cupy.ndarray"

# gelu: Phi(z) = erfc(-z / sqrt 2) / 2 and phi(z) = e^(-z^2 / 2) / sqrt(2 pi); gelu's tanh form
# computes sigmoid(v) with v = 2 sqrt(2/pi) (w + c w^3), so dv/dz = 2 sqrt(2/pi) (1 + 3c w^2).
SQRT1_2 = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_K2 = 2.0 * math.sqrt(2.0 / math.pi)
GELU_TANH_C3 = 3.0 * GELU_TANH_C
SELU_SA = SELU_SCALE * SELU_ALPHA  # selu tends to -SELU_SA at -inf; its slope at 0 from the left


def require_z(primitive, act, z):
    """``z`` itself, or a ``ValueError``: the derivative of a ``NEEDS_Z`` code needs the pre-activation."""
    if z is None:
        raise ValueError(f"{primitive}: the derivative of {ACTIVATION_NAMES.get(act, act)} is written from the "
                         f"pre-activation z, not from the output y: pass z= (what bias_act wrote into z_out=)")
    return z


from fastnn.backend.ops_conv import ConvReference
from fastnn.backend.ops_optim import OptimizerReference
from fastnn.kernels.geometry import conv_geometry, pool_geometry  # noqa: F401  (re-exported)


class Ops(ConvReference, OptimizerReference):
    """The NumPy reference backend. ``name``, ``xp`` (the array module) and ``device`` describe it."""

    name = "numpy"
    xp = numpy
    device = "cpu"
    # What the model and layers ask of a backend instead of testing its name:
    device_arrays = False    # arrays live on an accelerator: host data and index arrays move to it
    captures_graphs = False  # fit(cuda_graph=True) can capture a training step as a CUDA graph
    # True on a backend with its own kernels (NumbaOps, CupyOps): with strict kernels on
    # (FASTNN_STRICT_KERNELS=1, as in the test suite) a hot primitive's body here then raises
    # KernelFallbackError instead of standing in for a kernel that was not reached.
    reference_is_fallback = False

    def train_plan(self, model, batch_size):
        """``(plan, None)`` when this backend trains ``model`` in one compiled call per batch (a plan
        with ``prepare(x, t)`` and ``step(prepared, idx, names)``); ``(None, why not)`` when it has
        such a step but not for this model; ``(None, None)`` when it has none (this reference)."""
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

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} device={self.device!r}>"

    # ------------------------------------------------------------------ GEMM
    def gemm(self, a, b, *, trans_a=False, trans_b=False, out=None):
        """``out = op(a) @ op(b)``, where ``op`` transposes when asked. Returns ``out``."""
        return self.xp.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)

    # ------------------------------------------------------------------ activations
    def _erfc(self, x):
        """``erfc(x)`` elementwise in ``x``'s dtype (NumPy has none: SciPy's on the host, cupyx's on a GPU)."""
        if self.xp is numpy:
            from scipy.special import erfc
        else:
            from cupyx.scipy.special import erfc
        return erfc(x)

    def _sigmoid_parts(self, v):
        """``(s, e, p)`` with ``s = sigmoid(v)``, ``e = e^-|v|``, ``p = 1 / (1 + e)``: ``s`` is ``p`` or ``e p``
        and ``s (1 - s) = e p^2``, accurate in both tails and finite for any ``v``."""
        e = self.xp.exp(-self.xp.abs(v))
        p = v.dtype.type(1) / (v.dtype.type(1) + e)
        return self.xp.where(v >= 0, p, e * p), e, p

    def _gelu_clip(self, z):
        """``z`` clipped to +-GELU_CLIP, where gelu's exponentials are 0 in either dtype."""
        return self.xp.clip(z, z.dtype.type(-GELU_CLIP), z.dtype.type(GELU_CLIP))

    def _gelu_tanh_v(self, z):
        """``(w, v)``: ``w = _gelu_clip(z)``, ``v = 2 sqrt(2/pi) (w + c w^3)``."""
        dt = z.dtype.type
        w = self._gelu_clip(z)
        return w, dt(GELU_TANH_K2) * (w + dt(GELU_TANH_C) * (w * w * w))

    def _act(self, z, act, alpha):
        xp = self.xp
        dt = z.dtype.type
        if act == LINEAR:
            return z.copy()
        if act == RELU:
            return xp.maximum(z, 0)
        if act == SIGMOID:
            # 0.5 * tanh(0.5 z) + 0.5 never overflows, unlike 1 / (1 + exp(-z))
            half = dt(0.5)
            return half * xp.tanh(half * z) + half
        if act == TANH:
            return xp.tanh(z)
        if act == LEAKY_RELU:
            return xp.where(z > 0, z, dt(alpha) * z)
        if act == ELU:
            return xp.where(z > 0, z, dt(alpha) * xp.expm1(xp.minimum(z, 0)))
        if act == SOFTPLUS:
            # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), finite for any z
            return xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
        if act == SELU:
            # scale * elu(z, alpha) with Keras's constants (alpha is not read)
            return xp.where(z > 0, dt(SELU_SCALE) * z, dt(SELU_SA) * xp.expm1(xp.minimum(z, 0)))
        if act == GELU:
            # z Phi(z) = 0.5 z (1 + erf(z / sqrt 2)); erfc keeps the negative tail, where 1 + erf cancels
            return z * (dt(0.5) * self._erfc(-z * dt(SQRT1_2)))
        if act == GELU_TANH:
            # 0.5 z (1 + tanh(u)) = z sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3)
            return z * self._sigmoid_parts(self._gelu_tanh_v(z)[1])[0]
        if act == SWISH:
            return z * self._sigmoid_parts(z)[0]
        raise ValueError(f"unknown activation code {act!r}")

    def bias_act(self, x, b, act, alpha=0.0, *, out=None, z_out=None):
        """``out = act(x + b)``, ``b: (D,)`` broadcast over the rows of ``x: (N, D)`` (``b=None``: no bias).

        ``alpha`` is LeakyReLU's slope or ELU's scale. ``z_out``, when given, also receives the
        pre-activation ``z = x + b`` (it may be ``x`` itself, not ``out``): the backward primitives
        need it for the codes in ``NEEDS_Z``. ``x`` is not written (unless it is ``z_out``).
        """
        z = x if b is None else x + b
        y = self._act(z, act, alpha)
        if z_out is not None:
            z_out[...] = z
        if out is None:
            return y
        out[...] = y
        return out

    def _act_grad(self, y, act, alpha, z=None):
        """The activation's derivative written in terms of its output ``y`` (so layers keep only ``y``),
        or, for the codes in ``NEEDS_Z`` (whose derivative is no function of ``y``), of the pre-activation ``z``."""
        xp = self.xp
        if act in NEEDS_Z:
            return self._act_grad_z(require_z("act_backward", act, z), act)
        one = y.dtype.type(1)
        if act == LINEAR:
            return xp.ones_like(y)
        if act == RELU:
            return (y > 0).astype(y.dtype)
        if act == SIGMOID:
            return y * (one - y)
        if act == TANH:
            return one - y * y
        if act == LEAKY_RELU:
            # y > 0 exactly where z > 0 when alpha > 0; with alpha == 0 this is ReLU's rule
            return xp.where(y > 0, one, y.dtype.type(alpha))
        if act == ELU:
            # z <= 0: y = alpha (e^z - 1), so dy/dz = alpha e^z = y + alpha
            return xp.where(y > 0, one, y + y.dtype.type(alpha))
        if act == SOFTPLUS:
            # dy/dz = sigmoid(z) = 1 - e^-y
            return -xp.expm1(-y)
        if act == SELU:
            # z <= 0: y = scale alpha (e^z - 1), so dy/dz = scale alpha e^z = y + scale alpha
            return xp.where(y > 0, y.dtype.type(SELU_SCALE), y + y.dtype.type(SELU_SA))
        raise ValueError(f"unknown activation code {act!r}")

    def _act_grad_z(self, z, act):
        """The derivative of a ``NEEDS_Z`` code from the pre-activation ``z``."""
        dt = z.dtype.type
        if act == GELU:
            # Phi(z) + z phi(z)
            w = self._gelu_clip(z)
            return dt(0.5) * self._erfc(-z * dt(SQRT1_2)) + z * (dt(INV_SQRT_2PI) * self.xp.exp(-dt(0.5) * w * w))
        if act == GELU_TANH:
            # d/dz z s(v) = s + z s (1 - s) dv/dz, s (1 - s) = e p^2
            w, v = self._gelu_tanh_v(z)
            s, e, p = self._sigmoid_parts(v)
            return s + z * (e * p * p) * (dt(GELU_TANH_K2) * (dt(1) + dt(GELU_TANH_C3) * (w * w)))
        if act == SWISH:
            # sigmoid(z) + z sigmoid(z) (1 - sigmoid(z))
            s, e, p = self._sigmoid_parts(z)
            return s + z * (e * p * p)
        raise ValueError(f"unknown activation code {act!r}")

    def act_backward(self, dout, y, act, alpha=0.0, *, out=None, z=None):
        """``out = dout * act'(z)``, with ``act'`` computed from the forward output ``y``, or for the codes
        in ``NEEDS_Z`` (gelu, gelu_tanh, swish) from the pre-activation ``z`` (``bias_act``'s ``z_out``),
        which they require (``y`` is then not read); other codes ignore ``z``. ``dout`` is not written."""
        dz = dout * self._act_grad(y, act, alpha, z)
        if out is None:
            return dz
        out[...] = dz
        return out

    def bias_grad(self, dz, *, out=None):
        """``out = dz.sum(axis=0)``: the bias gradient of ``dz: (N, D)``."""
        return self.xp.sum(dz, axis=0, out=out)

    def act_backward_bias_grad(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        """``act_backward`` then ``bias_grad`` in one pass: returns ``dz`` and writes ``db = dz.sum(0)``
        (``z``: as ``act_backward``)."""
        dz = self.act_backward(dout, y, act, alpha, out=out, z=z)
        self.bias_grad(dz, out=db)
        return dz

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
