"""CuPy launchers of ``optimizers.cu``: one kernel launch per optimizer step over a flat buffer.

``p`` and the state arrays are updated in place, so they must be C-contiguous (``ValueError``
otherwise: a copy would update the copy); ``g`` is copied if it is not. Scalars reach the kernel
as NumPy scalars of the buffer's dtype, computed with the reference's expressions.
"""
import numpy

from fastnn.kernels.gpu import _loader as L

FAMILY = "optimizers"
KERNELS = ("fastnn_sq_norm", "fastnn_sum_finish", "fastnn_sgd_step", "fastnn_momentum_step",
           "fastnn_adagrad_step", "fastnn_rmsprop_step", "fastnn_adam_step")


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


def sq_norm(x):
    """``sum(x^2)`` as a 0-d device array of ``x``'s dtype (for global-norm clipping)."""
    dtype = L.check_dtype("sq_norm", x)
    x = L.contiguous(x)
    n = x.size
    grid = L.grid_1d(n)
    partials = L.empty((grid,), dtype)
    _fn("fastnn_sq_norm", dtype)((grid,), (L.BLOCK,), (x, partials, numpy.int64(n)))
    total = L.empty((), dtype)
    _fn("fastnn_sum_finish", dtype)((1,), (L.BLOCK,), (partials, numpy.int64(grid), total))
    return total


def sgd_step(p, g, lr, weight_decay=0.0, scale=1.0):
    """SGD: ``g' = scale*g + wd*p; p -= lr*g'``, in place."""
    dtype, g, n, grid = _prepare("sgd_step", p, g)
    if n:
        _fn("fastnn_sgd_step", dtype)(
            (grid,), (L.BLOCK,), (p, g, numpy.int64(n), dtype.type(lr), *_grad_args(dtype, weight_decay, scale)))


def momentum_step(p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False):
    """Momentum ``v = m*v - lr*g'; p += v`` (Nesterov: ``v = m*v + g'; p -= lr*(g' + m*v)``), in place."""
    dtype, g, n, grid = _prepare("momentum_step", p, g, v=v)
    if n:
        dt = dtype.type
        wd, sc, use_wd, use_scale = _grad_args(dtype, weight_decay, scale)
        _fn("fastnn_momentum_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, v, numpy.int64(n), dt(lr), dt(momentum), wd, sc, use_wd, use_scale, numpy.int32(bool(nesterov))))


def adagrad_step(p, g, h, lr, eps, weight_decay=0.0, scale=1.0):
    """AdaGrad: ``h += g'^2; p -= lr*g' / (sqrt(h) + eps)``, in place."""
    dtype, g, n, grid = _prepare("adagrad_step", p, g, h=h)
    if n:
        dt = dtype.type
        _fn("fastnn_adagrad_step", dtype)(
            (grid,), (L.BLOCK,), (p, g, h, numpy.int64(n), dt(lr), dt(eps), *_grad_args(dtype, weight_decay, scale)))


def rmsprop_step(p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0):
    """RMSprop: ``h = rho*h + (1-rho)*g'^2; p -= lr*g' / (sqrt(h) + eps)``, in place."""
    dtype, g, n, grid = _prepare("rmsprop_step", p, g, h=h)
    if n:
        dt = dtype.type
        _fn("fastnn_rmsprop_step", dtype)(
            (grid,), (L.BLOCK,),
            (p, g, h, numpy.int64(n), dt(lr), dt(rho), dt(1 - rho), dt(eps), *_grad_args(dtype, weight_decay, scale)))


def adam_step(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, decoupled=False):
    """Adam (AdamW when ``decoupled``) with bias correction for step ``t >= 1``, in place."""
    if t < 1:
        raise ValueError(f"adam_step: the step number t counts from 1, got {t}")
    dtype, g, n, grid = _prepare("adam_step", p, g, m=m, v=v)
    if not n:
        return
    dt = dtype.type
    # The reference's expressions, evaluated on the host in double and then cast, as it does.
    step_size = dt(lr / (1.0 - beta1 ** t))
    inv_sqrt_bc2 = dt(1.0 / numpy.sqrt(1.0 - beta2 ** t))
    if decoupled:
        wd, sc, use_wd, use_scale = _grad_args(dtype, 0.0, scale)
        use_decay = numpy.int32(bool(weight_decay))
        decay_factor = dt(1.0 - lr * weight_decay)
    else:
        wd, sc, use_wd, use_scale = _grad_args(dtype, weight_decay, scale)
        use_decay, decay_factor = numpy.int32(0), dt(1)
    _fn("fastnn_adam_step", dtype)(
        (grid,), (L.BLOCK,),
        (p, g, m, v, numpy.int64(n), dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps),
         step_size, inv_sqrt_bc2, wd, sc, decay_factor, use_wd, use_scale, use_decay))
