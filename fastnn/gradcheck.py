"""Gradient checks against central differences (h = 1e-4, float64), for tests and for users.

For a layer, ``f(x) = sum(layer.forward(x) * dout)`` with a random ``dout`` has gradient
``layer.backward(dout)`` with respect to ``x``, and ``layer.d<name>`` with respect to each weight.
"""
from __future__ import annotations

import numpy

from fastnn.backend import follow, is_device_array
from fastnn.functions import check_finite, check_number, check_real, numerical_gradient
from fastnn.layers.base import StepContext


class GradientCheckError(AssertionError):
    pass


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def _compare(label, analytic, numeric, rtol, atol):
    a, n = _host(analytic).astype(numpy.float64), _host(numeric).astype(numpy.float64)
    if a.shape != n.shape or not numpy.allclose(a, n, rtol=rtol, atol=atol):
        err = numpy.max(numpy.abs(a - n)) if a.shape == n.shape else float("nan")
        raise GradientCheckError(
            f"gradient of {label} differs from central differences: shapes {a.shape} vs {n.shape}, "
            f"max abs error {err:.3g}\n  backward: {a.ravel()[:5]}\n  numerical: {n.ravel()[:5]}")


def _check_args(owner, x, h, rtol, atol):
    """The input is a finite float array (perturbed in place, so never copied or cast) and the step and
    tolerances are numbers: a NaN tolerance would fail every check with a misleading report."""
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"{owner}: x must be a float array (float64 for a gradient check; it is perturbed in "
                        f"place), got {type(x).__name__} of dtype {getattr(x, 'dtype', None)}")
    check_finite(owner, "x", x)
    check_number(owner, "h", h, low=0, strict=True)
    check_number(owner, "rtol", rtol, low=0)
    check_number(owner, "atol", atol, low=0)


def check_layer(layer, x, *, dout=None, seed=0, h=1e-4, rtol=1e-5, atol=1e-7, train_flg=True):
    """Check ``layer.backward`` against numerical gradients for ``x`` and every weight.

    ``x`` must be a finite float64 array the layer reads (it is perturbed in place); ``dout``, when
    given, real numbers of the forward output's shape. Dropout layers have their step pinned (one
    ``StepContext``) so every evaluation sees one mask. Returns the numerical gradients.
    """
    _check_args("check_layer", x, h, rtol, atol)
    if dout is not None:
        dout = check_real("check_layer", "dout", dout)
    with StepContext(0, reuse_buffers=False):
        return _check_layer(layer, x, dout, seed, h, rtol, atol, train_flg)


def _check_layer(layer, x, dout, seed, h, rtol, atol, train_flg):
    y = layer.forward(x, train_flg=train_flg)
    if dout is None:
        dout = numpy.random.default_rng(seed).standard_normal(y.shape)
        if is_device_array(y):
            dout = follow(y).asarray(dout)
    elif tuple(dout.shape) != tuple(y.shape):
        raise ValueError(f"check_layer: dout must have the forward output's shape {tuple(y.shape)}, "
                         f"got {tuple(dout.shape)}")
    else:
        check_finite("check_layer", "dout", dout)
    dx = layer.backward(dout)
    analytic = {"x": None if dx is None else dx.copy()}
    analytic.update({name: g.copy() for name, g in layer.grads.items() if g is not None})

    def f(_):
        return float((layer.forward(x, train_flg=train_flg) * dout).sum())

    numeric = {}
    if dx is not None:
        numeric["x"] = numerical_gradient(f, x, h)
        _compare(f"{getattr(layer, 'name', layer)} input x", analytic["x"], numeric["x"], rtol, atol)
    for name, w in layer.params.items():
        if layer.weight_info().get(name, {}).get("trainable", True) is False:
            continue
        numeric[name] = numerical_gradient(f, w, h)
        _compare(f"{layer.name} weight {name}", analytic[name], numeric[name], rtol, atol)
    return numeric


def check_loss(loss_layer, x, t, *, h=1e-4, rtol=1e-5, atol=1e-7):
    """Check a loss layer's ``backward()`` against numerical gradients of ``forward(x, t)`` (``x`` a
    finite float64 array, perturbed in place)."""
    _check_args("check_loss", x, h, rtol, atol)
    loss_layer.forward(x, t)
    dx = loss_layer.backward().copy()
    numeric = numerical_gradient(lambda _: float(loss_layer.forward(x, t)), x, h)
    _compare(f"{loss_layer.name} input x", dx, numeric, rtol, atol)
    return numeric
