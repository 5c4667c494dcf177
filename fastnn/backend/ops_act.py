"""The NumPy reference of the activation primitives (``bias_act``, ``act_backward``, ``bias_grad`` and
their fused pair ``act_backward_bias_grad``), part of ``Ops``."""
from __future__ import annotations

import math

import numpy

from fastnn.kernels import (
    ACTIVATION_NAMES, ELU, GELU, GELU_CLIP, GELU_TANH, GELU_TANH_C, LEAKY_RELU, LINEAR, NEEDS_Z, RELU, SELU,
    SELU_ALPHA, SELU_SCALE, SIGMOID, SOFTPLUS, SWISH, TANH,
)

__all__ = ["ActivationReference", "require_z"]

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


class ActivationReference:
    """``Ops``' activation primitives, written against ``self.xp`` only."""

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
