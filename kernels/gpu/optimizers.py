"""CuPy launchers of ``optimizers.cu``: one kernel launch per optimizer step over a flat buffer.

``p`` and the state arrays are updated in place, so they must be C-contiguous (``ValueError``
otherwise: a copy would update the copy); ``g`` is copied if it is not. Scalars reach the kernel
as NumPy scalars of the buffer's dtype, computed with the reference's expressions.

Graph-capture variants: a CUDA graph freezes arguments passed by value, so ``<rule>_step_dev``
launches ``fastnn_<rule>_step_dev``, which reads the same scalars, in the same order, from a
float64 device array ``s``. ``<rule>_scalars(dtype, ...)`` computes them on the host exactly as
``<rule>_step`` does (``_<rule>_scalars``, shared by both) and returns them as a float64 NumPy
array: each is a dtype-rounded value (or a 0/1 flag), which float64 holds exactly, so the dev
kernel converts it back to the very scalar the by-value kernel gets and the results are bitwise
equal. Layouts (``s[i]``, in the by-value kernel's parameter order after ``n``):

- sgd:      lr, wd, scale, use_wd, use_scale, clip, use_clip
- momentum: lr, momentum, wd, scale, use_wd, use_scale, nesterov, clip, use_clip
- adagrad:  lr, eps, decay, scale, use_decay, use_scale, clip, use_clip  (decay = 1 - lr*wd: Keras's
            decoupled decay)
- rmsprop:  lr, rho, 1-rho, eps, decay, scale, use_decay, use_scale, clip, use_clip
- adam:     beta1, 1-beta1, beta2, 1-beta2, eps, step_size, inv_sqrt_bc2, wd, scale, decay_factor,
            use_wd, use_scale, use_decay, clip, use_clip  (amsgrad: the same, v_hat its third slot)
- nadam:    c_m, c_g, beta1, 1-beta1, beta2, 1-beta2, eps, inv_sqrt_bc2, decay, scale, use_decay,
            use_scale, clip, use_clip
- adamax:   step_size, beta1, 1-beta1, beta2, eps, decay, scale, use_decay, use_scale, clip, use_clip

Every layout ends with ``clip, use_clip``: Keras's ``clipvalue`` (``use_clip`` when it is finite; the
clip itself is then 0).

The ``*_scalars`` functions are pure host code (no CuPy import).
"""
import math
import struct

import numpy

from fastnn.kernels.gpu import _loader as L

INF = math.inf

FAMILY = "optimizers"
RULES = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "amsgrad", "nadam", "adamax")
KERNELS = ("fastnn_sq_norm", "fastnn_sum_finish") + tuple(f"fastnn_{r}_step" for r in RULES) + \
    tuple(f"fastnn_{r}_step_dev" for r in RULES)

# Length of each rule's scalar array ``s`` (see the module docstring for the layouts).
SCALAR_COUNTS = {"sgd": 7, "momentum": 9, "adagrad": 8, "rmsprop": 10, "adam": 15, "amsgrad": 15, "nadam": 14,
                 "adamax": 11}


def _fn(name, dtype):
    return L.function(FAMILY, KERNELS, name, dtype)


def _prepare(primitive, p, g, **state):
    """Check ``p``, ``g`` and the state arrays; returns ``(dtype, g, n, grid)``."""
    dtype = L.check_dtype(primitive, p, g, *state.values())
    L.check_inplace(primitive, "p", p, p.shape, dtype)
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{primitive}: g must have the shape of p {tuple(p.shape)}, got {tuple(g.shape)}")
    for name, s in state.items():
        L.check_inplace(primitive, name, s, p.shape, dtype)
    n = p.size
    return dtype, L.contiguous(g), n, L.grid_1d(n)


def _grad_args(dtype, weight_decay, scale):
    """``(wd, scale, use_wd, use_scale)`` as the reference's ``_grad`` decides them."""
    dt = dtype.type
    return dt(weight_decay), dt(scale), numpy.int32(bool(weight_decay)), numpy.int32(scale != 1.0)


def _clip_args(dtype, clipvalue):
    """``(clip, use_clip)``: the reference clips when ``clipvalue < inf`` (not for inf or NaN)."""
    use = clipvalue < INF
    return dtype.type(clipvalue if use else 0.0), numpy.int32(use)


def sq_norm(x):
    """``sum(x^2)`` as a 0-d device array of ``x``'s dtype (for global-norm clipping)."""
    dtype = L.check_dtype("sq_norm", x)
    x = L.contiguous(x)
    n = x.size
    fn, (grid,), dev = L.kernel_1d(FAMILY, KERNELS, "fastnn_sq_norm", dtype, n)
    partials = L.column_partials(grid, dev, dtype)  # the per-block sums: a kept buffer
    fn((grid,), (L.BLOCK,), (x, partials, numpy.int64(n)))
    total = L.empty((), dtype)
    L.function(FAMILY, KERNELS, "fastnn_sum_finish", dtype, dev)((1,), (L.BLOCK,), (partials, numpy.int64(grid), total))
    return total


# ---------------------------------------------------------------------------- typed scalars
# The by-value kernels' scalar arguments (after n), as NumPy scalars of ``dtype`` (int32 flags).
# ``dtype`` is a numpy.dtype of float32 or float64.
def _sgd_scalars(dtype, lr, weight_decay=0.0, scale=1.0, clipvalue=INF):
    return (dtype.type(lr), *_grad_args(dtype, weight_decay, scale), *_clip_args(dtype, clipvalue))


def _momentum_scalars(dtype, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=INF):
    dt = dtype.type
    return (dt(lr), dt(momentum), *_grad_args(dtype, weight_decay, scale), numpy.int32(bool(nesterov)),
            *_clip_args(dtype, clipvalue))


def _decay_args(dtype, lr, weight_decay, scale):
    """``(decay, scale, use_decay, use_scale)``: Keras's decoupled decay ``p *= 1 - lr*wd`` as the
    reference's ``_decay`` computes it (in double, then cast), and the gradient's scale."""
    dt = dtype.type
    return dt(1.0 - lr * weight_decay), dt(scale), numpy.int32(bool(weight_decay)), numpy.int32(scale != 1.0)


def _adagrad_scalars(dtype, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    dt = dtype.type
    return (dt(lr), dt(eps), *_decay_args(dtype, lr, weight_decay, scale), *_clip_args(dtype, clipvalue))


def _rmsprop_scalars(dtype, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    dt = dtype.type
    return (dt(lr), dt(rho), dt(1 - rho), dt(eps), *_decay_args(dtype, lr, weight_decay, scale),
            *_clip_args(dtype, clipvalue))


def _check_step_number(primitive, t):
    if t < 1:
        raise ValueError(f"{primitive}: the step number t counts from 1, got {t}")


def _adam_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False, clipvalue=INF,
                  primitive="adam_step"):
    _check_step_number(primitive, t)
    dt = dtype.type
    # The reference's expressions, evaluated on the host in double and then cast, as it does
    # (math.sqrt and numpy.sqrt both round the double square root correctly: the same bits).
    step_size = dt(lr / (1.0 - beta1 ** t))
    bc2 = 1.0 - beta2 ** t
    inv_sqrt_bc2 = dt(1.0 / (math.sqrt(bc2) if bc2 >= 0.0 else numpy.sqrt(bc2)))
    # The scalars that do not depend on the step, made once per setting (every step, eagerly). The
    # setting is keyed by its values' bits: 0.0 and -0.0 are equal dict keys but not the same scalar.
    key = (dtype, bool(decoupled), struct.pack("<7d", lr, beta1, beta2, eps, weight_decay, scale, clipvalue))
    fixed = _ADAM_FIXED.get(key)
    if fixed is None:
        if decoupled:
            wd, sc, use_wd, use_scale = _grad_args(dtype, 0.0, scale)
            use_decay = numpy.int32(bool(weight_decay))
            decay_factor = dt(1.0 - lr * weight_decay)
        else:
            wd, sc, use_wd, use_scale = _grad_args(dtype, weight_decay, scale)
            use_decay, decay_factor = numpy.int32(0), dt(1)
        fixed = ((dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps)),
                 (wd, sc, decay_factor, use_wd, use_scale, use_decay, *_clip_args(dtype, clipvalue)))
        if len(_ADAM_FIXED) > 256:  # a schedule gives a new rate every step: bounded
            _ADAM_FIXED.clear()
        _ADAM_FIXED[key] = fixed
    return (*fixed[0], step_size, inv_sqrt_bc2, *fixed[1])


_ADAM_FIXED: dict = {}  # _adam_scalars' step-independent scalars per setting


def _amsgrad_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False, clipvalue=INF,
                     primitive="amsgrad_step"):
    return _adam_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue, primitive)


def _nadam_mu(beta1, t):
    return beta1 * (1.0 - 0.5 * 0.96 ** t)


def _nadam_scalars(dtype, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0, clipvalue=INF,
                   primitive="nadam_step"):
    _check_step_number(primitive, t)
    dt = dtype.type
    # The reference's nadam_coefficients, in double, then cast.
    mu_t, mu_next = _nadam_mu(beta1, t), _nadam_mu(beta1, t + 1)
    c_m = dt(lr * mu_next / (1.0 - mu_product * mu_next))
    c_g = dt(lr * (1.0 - mu_t) / (1.0 - mu_product))
    inv_sqrt_bc2 = dt(1.0 / math.sqrt(1.0 - beta2 ** t))
    return (c_m, c_g, dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), inv_sqrt_bc2,
            *_decay_args(dtype, lr, weight_decay, scale), *_clip_args(dtype, clipvalue))


def _adamax_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=INF,
                    primitive="adamax_step"):
    _check_step_number(primitive, t)
    dt = dtype.type
    return (dt(lr / (1.0 - beta1 ** t)), dt(beta1), dt(1 - beta1), dt(beta2), dt(eps),
            *_decay_args(dtype, lr, weight_decay, scale), *_clip_args(dtype, clipvalue))


# ---------------------------------------------------------------------------- by-value launchers
@L.writes('p')
def sgd_step(p, g, lr, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """SGD: ``g' = clip(scale*g) + wd*p; p -= lr*g'``, in place."""
    dtype, g, n, grid = _prepare("sgd_step", p, g)
    if n:
        _fn("fastnn_sgd_step", dtype)(
            (grid,), (L.BLOCK,), (p, g, numpy.int64(n), *_sgd_scalars(dtype, lr, weight_decay, scale, clipvalue)))


@L.writes('p', 'v')
def momentum_step(p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=INF):
    """Momentum ``v = m*v - lr*g'; p += v`` (Nesterov: ``v = m*v + g'; p -= lr*(g' + m*v)``), in place."""
    dtype, g, n, grid = _prepare("momentum_step", p, g, v=v)
    if n:
        _fn("fastnn_momentum_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, v, numpy.int64(n),
             *_momentum_scalars(dtype, lr, momentum, weight_decay, scale, nesterov, clipvalue)))


@L.writes('p', 'h')
def adagrad_step(p, g, h, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """AdaGrad (Keras): ``p *= 1 - lr*wd; h += g'^2; p -= lr*g' / sqrt(h + eps)``, in place."""
    dtype, g, n, grid = _prepare("adagrad_step", p, g, h=h)
    if n:
        _fn("fastnn_adagrad_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, h, numpy.int64(n), *_adagrad_scalars(dtype, lr, eps, weight_decay, scale, clipvalue)))


@L.writes('p', 'h')
def rmsprop_step(p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """RMSprop (Keras): ``p *= 1 - lr*wd; h = rho*h + (1-rho)*g'^2; p -= lr*g' / sqrt(h + eps)``, in place."""
    dtype, g, n, grid = _prepare("rmsprop_step", p, g, h=h)
    if n:
        _fn("fastnn_rmsprop_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, h, numpy.int64(n), *_rmsprop_scalars(dtype, lr, rho, eps, weight_decay, scale, clipvalue)))


@L.writes('p', 'm', 'v')
def adam_step(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False, clipvalue=INF):
    """Adam (AdamW when ``decoupled``) with bias correction for step ``t >= 1``, in place."""
    _check_step_number("adam_step", t)
    dtype, g, n, grid = _prepare("adam_step", p, g, m=m, v=v)
    if not n:
        return
    _fn("fastnn_adam_step", dtype)(
        (grid,), (L.BLOCK,),
        (p, g, m, v, numpy.int64(n),
         *_adam_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue)))


@L.writes('p', 'm', 'v', 'v_hat')
def amsgrad_step(p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False,
                 clipvalue=INF):
    """``adam_step`` with AMSGrad (``v_hat = max(v_hat, v)`` in the denominator), in place."""
    _check_step_number("amsgrad_step", t)
    dtype, g, n, grid = _prepare("amsgrad_step", p, g, m=m, v=v, v_hat=v_hat)
    if n:
        _fn("fastnn_amsgrad_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, m, v, v_hat, numpy.int64(n),
             *_amsgrad_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue)))


@L.writes('p', 'm', 'v')
def nadam_step(p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """Nadam (Keras) for step ``t >= 1`` with ``mu_product`` = the momentum schedule's product, in place."""
    _check_step_number("nadam_step", t)
    dtype, g, n, grid = _prepare("nadam_step", p, g, m=m, v=v)
    if n:
        _fn("fastnn_nadam_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, m, v, numpy.int64(n),
             *_nadam_scalars(dtype, lr, beta1, beta2, eps, t, mu_product, weight_decay, scale, clipvalue)))


@L.writes('p', 'm', 'u')
def adamax_step(p, g, m, u, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """Adamax (Keras): ``m = b1*m + (1-b1)*g'; u = max(b2*u, |g'|); p -= lr/(1-b1^t) * m/(u + eps)``, in place."""
    _check_step_number("adamax_step", t)
    dtype, g, n, grid = _prepare("adamax_step", p, g, m=m, u=u)
    if n:
        _fn("fastnn_adamax_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, m, u, numpy.int64(n),
             *_adamax_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, clipvalue)))


# ---------------------------------------------------------------------------- graph-capture variants
def _float_dtype(primitive, dtype):
    dtype = numpy.dtype(dtype)
    if dtype not in L.CTYPES:
        raise TypeError(f"{primitive}: the CUDA kernels take float32 or float64 arrays, got {dtype}")
    return dtype


def _as_float64(scalars):
    """The typed scalars as a host float64 array (exact: each is a float32/float64 value or a 0/1 flag)."""
    return numpy.array(scalars, dtype=numpy.float64)  # float32/float64/int32 values: each converts exactly


def sgd_scalars(dtype, lr, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """``s`` for ``sgd_step_dev``: ``[lr, wd, scale, use_wd, use_scale, clip, use_clip]`` (host float64 array)."""
    return _as_float64(_sgd_scalars(_float_dtype("sgd_scalars", dtype), lr, weight_decay, scale, clipvalue))


def momentum_scalars(dtype, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=INF):
    """``s`` for ``momentum_step_dev``: ``[lr, momentum, wd, scale, use_wd, use_scale, nesterov, clip, use_clip]``."""
    return _as_float64(_momentum_scalars(_float_dtype("momentum_scalars", dtype), lr, momentum, weight_decay,
                                         scale, nesterov, clipvalue))


def adagrad_scalars(dtype, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """``s`` for ``adagrad_step_dev``: ``[lr, eps, decay, scale, use_decay, use_scale, clip, use_clip]``."""
    return _as_float64(_adagrad_scalars(_float_dtype("adagrad_scalars", dtype), lr, eps, weight_decay, scale,
                                        clipvalue))


def rmsprop_scalars(dtype, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """``s`` for ``rmsprop_step_dev``: ``[lr, rho, 1-rho, eps, decay, scale, use_decay, use_scale, clip,
    use_clip]``."""
    return _as_float64(_rmsprop_scalars(_float_dtype("rmsprop_scalars", dtype), lr, rho, eps, weight_decay, scale,
                                        clipvalue))


def adam_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False, clipvalue=INF):
    """``s`` for ``adam_step_dev`` at step ``t >= 1``: ``[beta1, 1-beta1, beta2, 1-beta2, eps, step_size,
    inv_sqrt_bc2, wd, scale, decay_factor, use_wd, use_scale, use_decay, clip, use_clip]``."""
    dtype = _float_dtype("adam_scalars", dtype)
    return _as_float64(_adam_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue,
                                     primitive="adam_scalars"))


def amsgrad_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False, clipvalue=INF):
    """``s`` for ``amsgrad_step_dev``: ``adam_scalars``' layout."""
    dtype = _float_dtype("amsgrad_scalars", dtype)
    return _as_float64(_amsgrad_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue,
                                        primitive="amsgrad_scalars"))


def nadam_scalars(dtype, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """``s`` for ``nadam_step_dev`` at step ``t >= 1``: ``[c_m, c_g, beta1, 1-beta1, beta2, 1-beta2, eps,
    inv_sqrt_bc2, decay, scale, use_decay, use_scale, clip, use_clip]``."""
    dtype = _float_dtype("nadam_scalars", dtype)
    return _as_float64(_nadam_scalars(dtype, lr, beta1, beta2, eps, t, mu_product, weight_decay, scale, clipvalue,
                                      primitive="nadam_scalars"))


def adamax_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=INF):
    """``s`` for ``adamax_step_dev`` at step ``t >= 1``: ``[step_size, beta1, 1-beta1, beta2, eps, decay,
    scale, use_decay, use_scale, clip, use_clip]``."""
    dtype = _float_dtype("adamax_scalars", dtype)
    return _as_float64(_adamax_scalars(dtype, lr, beta1, beta2, eps, t, weight_decay, scale, clipvalue,
                                       primitive="adamax_scalars"))


def _check_scalars(primitive, s, rule):
    """``s`` must be a 1-D C-contiguous float64 device array of the rule's scalar count."""
    count = SCALAR_COUNTS[rule]
    if s is None:
        raise ValueError(f"{primitive}: s (the {count} scalars of {rule}_scalars, on the device) is required")
    if not all(hasattr(s, a) for a in ("dtype", "ndim", "shape", "flags")):
        raise TypeError(f"{primitive}: s must be a float64 device array, got {type(s).__name__}")
    dt = numpy.dtype(s.dtype)
    if dt != numpy.float64:
        raise TypeError(f"{primitive}: s must have dtype float64 (what {rule}_scalars returns), got {dt}")
    if s.ndim != 1:
        raise ValueError(f"{primitive}: s must be 1-D, got shape {tuple(s.shape)}")
    if not s.flags.c_contiguous:
        raise ValueError(f"{primitive}: s must be C-contiguous (the kernel reads s[0..{count - 1}] from flat memory)")
    if s.shape[0] != count:
        raise ValueError(f"{primitive}: s must hold the {count} scalars of {rule}_scalars, got length {s.shape[0]}")
    if L.is_host_array(s):
        raise TypeError(f"{primitive}: s must be a device (CuPy) array; copy {rule}_scalars' host array "
                        f"to the device first")
    return s


def sgd_step_dev(p, g, s):
    """``sgd_step`` with its scalars read from the device array ``s = sgd_scalars(...)`` (graph capture)."""
    _check_scalars("sgd_step_dev", s, "sgd")
    dtype, g, n, grid = _prepare("sgd_step_dev", p, g)
    if n:
        _fn("fastnn_sgd_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, numpy.int64(n), s))


def momentum_step_dev(p, g, v, s):
    """``momentum_step`` with its scalars read from the device array ``s = momentum_scalars(...)``."""
    _check_scalars("momentum_step_dev", s, "momentum")
    dtype, g, n, grid = _prepare("momentum_step_dev", p, g, v=v)
    if n:
        _fn("fastnn_momentum_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, v, numpy.int64(n), s))


def adagrad_step_dev(p, g, h, s):
    """``adagrad_step`` with its scalars read from the device array ``s = adagrad_scalars(...)``."""
    _check_scalars("adagrad_step_dev", s, "adagrad")
    dtype, g, n, grid = _prepare("adagrad_step_dev", p, g, h=h)
    if n:
        _fn("fastnn_adagrad_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, h, numpy.int64(n), s))


def rmsprop_step_dev(p, g, h, s):
    """``rmsprop_step`` with its scalars read from the device array ``s = rmsprop_scalars(...)``."""
    _check_scalars("rmsprop_step_dev", s, "rmsprop")
    dtype, g, n, grid = _prepare("rmsprop_step_dev", p, g, h=h)
    if n:
        _fn("fastnn_rmsprop_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, h, numpy.int64(n), s))


def adam_step_dev(p, g, m, v, s):
    """``adam_step`` with its scalars read from the device array ``s = adam_scalars(...)``."""
    _check_scalars("adam_step_dev", s, "adam")
    dtype, g, n, grid = _prepare("adam_step_dev", p, g, m=m, v=v)
    if n:
        _fn("fastnn_adam_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, m, v, numpy.int64(n), s))


def amsgrad_step_dev(p, g, m, v, v_hat, s):
    """``amsgrad_step`` with its scalars read from the device array ``s = amsgrad_scalars(...)``."""
    _check_scalars("amsgrad_step_dev", s, "amsgrad")
    dtype, g, n, grid = _prepare("amsgrad_step_dev", p, g, m=m, v=v, v_hat=v_hat)
    if n:
        _fn("fastnn_amsgrad_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, m, v, v_hat, numpy.int64(n), s))


def nadam_step_dev(p, g, m, v, s):
    """``nadam_step`` with its scalars read from the device array ``s = nadam_scalars(...)``."""
    _check_scalars("nadam_step_dev", s, "nadam")
    dtype, g, n, grid = _prepare("nadam_step_dev", p, g, m=m, v=v)
    if n:
        _fn("fastnn_nadam_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, m, v, numpy.int64(n), s))


def adamax_step_dev(p, g, m, u, s):
    """``adamax_step`` with its scalars read from the device array ``s = adamax_scalars(...)``."""
    _check_scalars("adamax_step_dev", s, "adamax")
    dtype, g, n, grid = _prepare("adamax_step_dev", p, g, m=m, u=u)
    if n:
        _fn("fastnn_adamax_step_dev", dtype)((grid,), (L.BLOCK,), (p, g, m, u, numpy.int64(n), s))
