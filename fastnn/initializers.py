"""Weight initializers. Each is ``init(shape, rng, dtype) -> numpy.ndarray`` drawn on the host.

Fans: a 2-D weight ``W: (fan_in, fan_out)``; a convolution kernel ``(out_ch, in_ch, kh, kw)`` has
``fan_in = in_ch*kh*kw`` and ``fan_out = out_ch*kh*kw``. Weights are drawn on the host from the
model's generator, so every backend starts from the same numbers.
"""
from __future__ import annotations

import math

import numpy


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape, rng, dtype=numpy.float32):
    """N(0, 2 / fan_in) (He et al. 2015), for ReLU networks."""
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def he_uniform(shape, rng, dtype=numpy.float32):
    """U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))."""
    fan_in, _ = _fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_normal(shape, rng, dtype=numpy.float32):
    """N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010; "Xavier"). Untruncated, unlike Keras's."""
    fan_in, fan_out = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def glorot_uniform(shape, rng, dtype=numpy.float32):
    """U(-sqrt(6 / (fan_in + fan_out)), +...): ``Dense``'s default, as in Keras."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def xavier_normal_book(shape, rng, dtype=numpy.float32):
    """The book's "Xavier": N(0, 1 / fan_in)."""
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)).astype(dtype)


class normal:
    """N(0, std^2); ``normal(std=0.01)`` is the book's ``weight_init_std * randn``."""

    def __init__(self, std=0.01, mean=0.0):
        self.std = float(std)
        self.mean = float(mean)

    def __call__(self, shape, rng, dtype=numpy.float32):
        return (self.mean + rng.standard_normal(shape) * self.std).astype(dtype)

    def get_config(self):
        return {"std": self.std, "mean": self.mean}


def zeros(shape, rng=None, dtype=numpy.float32):
    """All zeros (biases, BatchNorm's beta)."""
    return numpy.zeros(shape, dtype=dtype)


def ones(shape, rng=None, dtype=numpy.float32):
    """All ones (BatchNorm's gamma)."""
    return numpy.ones(shape, dtype=dtype)


def orthogonal(shape, rng, dtype=numpy.float32, gain=1.0):
    """Keras's ``Orthogonal`` initializer: Q of the QR decomposition of a normal matrix, its signs
    fixed by R's diagonal, so the rows (or the columns, whichever are fewer) are orthonormal. The recurrent
    layers' default ``recurrent_initializer``."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    q, r = numpy.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * numpy.where(numpy.diag(r) < 0, -1.0, 1.0)
    return (gain * (q.T if rows < cols else q)).reshape(shape).astype(dtype)


_NAMED = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "normal": normal(),
    "zeros": zeros,
    "ones": ones,
    "orthogonal": orthogonal,
}


def check(init):
    """Refuse what ``get`` cannot make an initializer of (without making or running one)."""
    if callable(init):
        return init
    if isinstance(init, str):
        if init.lower() not in _NAMED:
            raise ValueError(f"unknown initializer {init!r}; valid names: {', '.join(sorted(_NAMED))}")
        return init
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return init
    raise TypeError(f"initializer must be a name, a callable or a number, got {type(init).__name__}")


def get(init):
    """An initializer from a name, a callable ``(shape, rng, dtype)``, or a number (a constant)."""
    check(init)
    if callable(init):
        return init
    if isinstance(init, str):
        return _NAMED[init.lower()]
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        value = float(init)
        return lambda shape, rng=None, dtype=numpy.float32: numpy.full(shape, value, dtype=dtype)
    raise TypeError(f"initializer must be a name, a callable or a number, got {type(init).__name__}")
