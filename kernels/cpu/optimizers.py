"""Optimizer kernels: one pass over a flat 1-D buffer, updating parameters and state in place.

Each follows its ``Ops`` reference operation by operation (same order, same roundings), so results
match bit for bit. ``g' = scale*g`` (only when ``use_scale``), clipped to ``[-clip, clip]`` (only
when ``clip`` is given: without it, the default ``None``, Numba compiles the kernel without the
clipping branch), ``+ wd*p`` (only when ``use_wd``). State values below ``tiny`` (the smallest normal
number) are flushed to zero after the update: subnormals are slow on x86 CPUs. Scalars arrive cast
to the buffer's dtype.
"""
import numpy as np
from numba import njit

_BLOCK = 256


@njit(cache=True, error_model="numpy")
def _flushed(s, tiny, zero):
    return zero if abs(s) < tiny else s


@njit(cache=True, error_model="numpy")
def _max(a, b):
    """``numpy.maximum(a, b)``: NaN if either is NaN."""
    return a if (a > b) | (a != a) else b


@njit(cache=True, error_model="numpy")
def _grad(g, p, wd, scale, use_wd, use_scale, clip=None):
    if use_scale:
        g = g * scale
    if clip is not None:  # comparisons, not min/max: a NaN gradient stays NaN, as numpy.clip leaves it
        if g > clip:
            g = clip
        elif g < -clip:
            g = -clip
    if use_wd:
        g = g + wd * p
    return g


@njit(cache=True, error_model="numpy")
def sq_norm(x, zero):
    """``sum(x^2)``, block by block (``_BLOCK`` elements per partial sum)."""
    n = x.shape[0]
    total = zero
    for start in range(0, n, _BLOCK):
        part = zero
        for i in range(start, min(start + _BLOCK, n)):
            part += x[i] * x[i]
        total += part
    return total


@njit(cache=True, error_model="numpy")
def sgd_step(p, g, lr, wd, scale, use_wd, use_scale, clip=None):
    """``p -= lr * g'``."""
    for i in range(p.shape[0]):
        gi = _grad(g[i], p[i], wd, scale, use_wd, use_scale, clip)
        p[i] = p[i] - lr * gi


@njit(cache=True, error_model="numpy")
def momentum_step(p, g, v, lr, momentum, wd, scale, use_wd, use_scale, nesterov, tiny, zero, clip=None):
    """Book form ``v = m*v - lr*g'; p += v``, or Nesterov ``v = m*v + g'; p -= lr*(g' + m*v)``."""
    for i in range(p.shape[0]):
        gi = _grad(g[i], p[i], wd, scale, use_wd, use_scale, clip)
        vi = v[i] * momentum
        if nesterov:
            vi = vi + gi
            p[i] = p[i] - lr * (gi + momentum * vi)
        else:
            vi = vi - lr * gi
            p[i] = p[i] + vi
        v[i] = _flushed(vi, tiny, zero)


@njit(cache=True, error_model="numpy")
def adagrad_step(p, g, h, lr, eps, decay, scale, use_decay, use_scale, tiny, zero, clip=None):
    """Keras's AdaGrad: ``p *= decay`` (when ``use_decay``); ``h += g'^2; p -= lr*g' / sqrt(h + eps)``."""
    for i in range(p.shape[0]):
        pi = p[i]
        gi = _grad(g[i], pi, zero, scale, False, use_scale, clip)
        if use_decay:
            pi = pi * decay
        hi = h[i] + gi * gi
        p[i] = pi - lr * gi / np.sqrt(hi + eps)
        h[i] = _flushed(hi, tiny, zero)


@njit(cache=True, error_model="numpy")
def rmsprop_step(p, g, h, lr, rho, one_m_rho, eps, decay, scale, use_decay, use_scale, tiny, zero, clip=None):
    """Keras's RMSprop: ``p *= decay`` (when ``use_decay``); ``h = rho*h + (1-rho)*g'^2;
    p -= lr*g' / sqrt(h + eps)``."""
    for i in range(p.shape[0]):
        pi = p[i]
        gi = _grad(g[i], pi, zero, scale, False, use_scale, clip)
        if use_decay:
            pi = pi * decay
        hi = h[i] * rho
        hi = hi + one_m_rho * gi * gi
        p[i] = pi - lr * gi / np.sqrt(hi + eps)
        h[i] = _flushed(hi, tiny, zero)


@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, vhat, beta1, one_m_beta1, beta2, one_m_beta2, eps, step_size, inv_sqrt_bc2,
          wd, scale, decay, use_wd, use_scale, decoupled, tiny, zero, clip):
    """Adam's loop; with ``vhat`` (not None) AMSGrad's: ``vhat = max(vhat, v)`` in the denominator."""
    for i in range(p.shape[0]):
        pi = p[i]
        if decoupled:
            gi = _grad(g[i], pi, wd, scale, False, use_scale, clip)
            if use_wd:
                pi = pi * decay
        else:
            gi = _grad(g[i], pi, wd, scale, use_wd, use_scale, clip)
        mi = m[i] * beta1
        mi = mi + one_m_beta1 * gi
        vi = v[i] * beta2
        vi = vi + one_m_beta2 * gi * gi
        if vhat is not None:
            hi = _max(vhat[i], vi)
            p[i] = pi - step_size * mi / (np.sqrt(hi) * inv_sqrt_bc2 + eps)
            vhat[i] = _flushed(hi, tiny, zero)
        else:
            p[i] = pi - step_size * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)
        m[i] = _flushed(mi, tiny, zero)
        v[i] = _flushed(vi, tiny, zero)


@njit(cache=True, error_model="numpy")
def adam_step(p, g, m, v, beta1, one_m_beta1, beta2, one_m_beta2, eps, step_size, inv_sqrt_bc2,
              wd, scale, decay, use_wd, use_scale, decoupled, tiny, zero, clip=None):
    """Adam, or AdamW (``decoupled``: ``p *= decay`` first, no ``wd*p`` in ``g'``)::

        m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2
        p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
    """
    _adam(p, g, m, v, None, beta1, one_m_beta1, beta2, one_m_beta2, eps, step_size, inv_sqrt_bc2,
          wd, scale, decay, use_wd, use_scale, decoupled, tiny, zero, clip)


@njit(cache=True, error_model="numpy")
def amsgrad_step(p, g, m, v, vhat, beta1, one_m_beta1, beta2, one_m_beta2, eps, step_size, inv_sqrt_bc2,
                 wd, scale, decay, use_wd, use_scale, decoupled, tiny, zero, clip=None):
    """``adam_step`` with AMSGrad: ``vhat = max(vhat, v)``, and ``vhat`` in place of ``v`` in the
    denominator."""
    _adam(p, g, m, v, vhat, beta1, one_m_beta1, beta2, one_m_beta2, eps, step_size, inv_sqrt_bc2,
          wd, scale, decay, use_wd, use_scale, decoupled, tiny, zero, clip)


@njit(cache=True, error_model="numpy")
def nadam_step(p, g, m, v, c_m, c_g, beta1, one_m_beta1, beta2, one_m_beta2, eps, inv_sqrt_bc2,
               decay, scale, use_decay, use_scale, tiny, zero, clip=None):
    """Keras's Nadam: ``p *= decay`` (when ``use_decay``); ``m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
    p -= (c_m*m + c_g*g') / (sqrt(v) * inv_sqrt_bc2 + eps)`` (``c_m``, ``c_g``: the host's momentum
    schedule coefficients, learning rate included)."""
    for i in range(p.shape[0]):
        pi = p[i]
        gi = _grad(g[i], pi, zero, scale, False, use_scale, clip)
        if use_decay:
            pi = pi * decay
        mi = m[i] * beta1
        mi = mi + one_m_beta1 * gi
        vi = v[i] * beta2
        vi = vi + one_m_beta2 * gi * gi
        p[i] = pi - (c_m * mi + c_g * gi) / (np.sqrt(vi) * inv_sqrt_bc2 + eps)
        m[i] = _flushed(mi, tiny, zero)
        v[i] = _flushed(vi, tiny, zero)


@njit(cache=True, error_model="numpy")
def adamax_step(p, g, m, u, step_size, beta1, one_m_beta1, beta2, eps, decay, scale, use_decay, use_scale,
                tiny, zero, clip=None):
    """Keras's Adamax: ``p *= decay`` (when ``use_decay``); ``m = b1*m + (1-b1)*g'; u = max(b2*u, |g'|);
    p -= step_size * m / (u + eps)`` with ``step_size = lr / (1 - b1^t)``."""
    for i in range(p.shape[0]):
        pi = p[i]
        gi = _grad(g[i], pi, zero, scale, False, use_scale, clip)
        if use_decay:
            pi = pi * decay
        mi = m[i] * beta1
        mi = mi + one_m_beta1 * gi
        ui = _max(u[i] * beta2, abs(gi))
        p[i] = pi - step_size * mi / (ui + eps)
        m[i] = _flushed(mi, tiny, zero)
        u[i] = _flushed(ui, tiny, zero)
