"""How ``NumbaOps`` hands arrays and scalars to the Numba kernels: which arrays the kernels take, C-contiguous
views (copying only inputs that are not contiguous), the buffers a kernel writes and their copy back into the
caller's, and each optimizer kernel's scalar arguments cast to the arrays' dtype."""
from __future__ import annotations

import math

import numpy

from fastnn.kernels import ACTIVATION_NAMES

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_NO_BIAS = {dt: numpy.zeros(1, dt) for dt in _FLOATS}  # never read (has_b=False)
_NONE2D = {dt: numpy.zeros((0, 0), dt) for dt in _FLOATS}  # stands in for an absent buffer


def _fast(*arrays):
    """True when the kernels handle these arrays: non-empty NumPy arrays of one float dtype."""
    first = arrays[0]
    if not isinstance(first, numpy.ndarray):
        return False
    dt = first.dtype
    if dt not in _FLOATS:
        return False
    for a in arrays:  # a plain loop: this runs on every primitive call
        if not isinstance(a, numpy.ndarray) or a.dtype != dt or a.size == 0:
            return False
    return True


def _c(a):
    """``a`` itself when C-contiguous, else a contiguous copy (inputs only)."""
    return a if a.flags.c_contiguous else numpy.ascontiguousarray(a)


def _2d(a):
    """A 2-D view of a C-contiguous array: rows of its last axis."""
    if a.ndim == 2:
        return a
    if a.ndim < 2:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def _target(out, shape, dtype):
    """The C-contiguous array a kernel writes, and the caller's ``out`` to copy it into (or None).

    ``out`` itself when it has the result's shape and dtype and is C-contiguous; otherwise a new
    array (then ``out[...] = result`` casts or broadcasts as the reference's assignment does).
    """
    if out is None:
        return numpy.empty(shape, dtype), None
    if (isinstance(out, numpy.ndarray) and out.shape == tuple(shape) and out.dtype == dtype
            and out.flags.c_contiguous):
        return out, None
    return numpy.empty(shape, dtype), out


def _finish(buf, back):
    if back is None:
        return buf
    back[...] = buf
    return back


def _inplace(a):
    """A flat C-contiguous view of an array updated in place, and the array to copy it back into."""
    if a.flags.c_contiguous:
        return a.reshape(-1), None
    return numpy.ascontiguousarray(a).reshape(-1), a


def _write_back(flat, back):
    if back is not None:
        back[...] = flat.reshape(back.shape)


def _check_act(act):
    if act not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation code {act!r}")
    return int(act)


# ------------------------------------------------------------------ optimizer kernels' scalars
def _step_args(p, weight_decay, scale):
    """``(weight_decay, scale, use_decay, use_scale)`` for the L2 term added to the gradient."""
    dt = p.dtype.type
    return dt(weight_decay), dt(scale), bool(weight_decay), scale != 1.0


def _decay_args(p, lr, weight_decay, scale):
    """``(decay, scale, use_decay, use_scale)`` for the Keras-style decoupled decay ``p *= 1 - lr*wd``."""
    dt = p.dtype.type
    return dt(1.0 - lr * weight_decay), dt(scale), bool(weight_decay), scale != 1.0


def _flush_args(p):
    return p.dtype.type(numpy.finfo(p.dtype).tiny), p.dtype.type(0)


def _clip_arg(p, clipvalue):
    """The kernels' trailing ``clip``: absent (the compiled kernel has no clipping branch) unless
    ``clipvalue`` is finite, as the reference decides (``clipvalue < inf``)."""
    return (p.dtype.type(clipvalue),) if clipvalue < math.inf else ()


def _adam_args(p, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue):
    """The scalars of ``_ko.adam_step``/``amsgrad_step`` after the arrays."""
    dt = p.dtype.type
    # bias corrections on the host in float64, then cast (as the reference)
    step_size = dt(lr / (1.0 - beta1 ** t))
    inv_sqrt_bc2 = dt(1.0 / numpy.sqrt(1.0 - beta2 ** t))
    wd, sc, use_wd, use_scale = _step_args(p, weight_decay, scale)
    return (dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), step_size, inv_sqrt_bc2,
            wd, sc, dt(1.0 - lr * weight_decay), use_wd, use_scale, bool(decoupled), *_flush_args(p),
            *_clip_arg(p, clipvalue))
