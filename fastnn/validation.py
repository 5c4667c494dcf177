"""Input validation for models: once per ``fit``/``evaluate``/``predict`` call, on the host (or with one
device reduction for device arrays), before any kernel runs. Every error names the model, the
argument and the shapes or values involved."""
from __future__ import annotations

import math

import numpy

from fastnn import losses
from fastnn.backend import current, get_ops, is_device_array
from fastnn.layers.base import shape_str
from fastnn.layers.core import Dense
from fastnn.functions import get_array_module


def as_array(owner, a, what, ops=None):
    """``a`` as an array: NumPy, a CuPy array, or anything with ``__dlpack__``/``__cuda_array_interface__``."""
    if isinstance(a, numpy.ndarray) or is_device_array(a):
        return a
    if hasattr(a, "__cuda_array_interface__") or (hasattr(a, "__dlpack__") and not hasattr(a, "__array__")):
        ops = ops or current()
        try:
            if hasattr(a, "__dlpack_device__") and a.__dlpack_device__()[0] == 1:  # kDLCPU: host memory
                return numpy.from_dlpack(a)
            return ops.xp.from_dlpack(a) if hasattr(a, "__dlpack__") else ops.asarray(a)
        except Exception as exc:
            raise TypeError(f"{owner}: could not import {what} ({type(a).__name__}) on the {ops.name} "
                            f"backend: {exc}") from None
    try:
        return numpy.asarray(a)
    except Exception as exc:
        raise TypeError(f"{owner}: {what} must be an array, got {type(a).__name__} ({exc})") from None


def _wider(a, dtype):
    """Whether float data ``a`` can hold values beyond the float ``dtype``'s range."""
    dtype = numpy.dtype(dtype)
    return a.dtype.kind == "f" and dtype.kind == "f" and numpy.finfo(a.dtype).max > numpy.finfo(dtype).max


def _beyond_range(owner, what, dtype, value, index):
    return ValueError(f"{owner}: {what} has values beyond {numpy.dtype(dtype)}'s range (first at index {index}: "
                      f"{value!r}); they would become inf in the model's dtype {numpy.dtype(dtype)}")


def check_in_range(owner, a, what, dtype):
    """Every value of the float array ``a`` fits ``dtype`` (float64 data of 1e39 would become inf in a
    float32 model and silently turn the weights into NaN); the first value beyond it is named."""
    if not _wider(a, dtype):
        return
    limit = float(numpy.finfo(dtype).max)
    if bool((get_array_module(a).abs(a) > limit).any()):
        host = a.get() if is_device_array(a) else a
        bad = tuple(int(i) for i in numpy.argwhere(numpy.abs(host) > limit)[0])
        raise _beyond_range(owner, what, dtype, float(host[bad]), bad)


def check_x(owner, x, what="x", ops=None, dtype=None):
    """Numbers, a batch axis, at least one sample, no NaN or inf (the first bad index is named), and,
    given the model's ``dtype``, no value that becomes inf when cast to it."""
    x = as_array(owner, x, what, ops)
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise TypeError(f"{owner}: {what} must hold numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{owner}: {what} must have a batch axis, shape (N, ...); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{owner}: {what} is empty (0 samples)")
    if x.dtype.kind != "f":
        return x
    if is_device_array(x):  # one device reduction
        if not bool(get_array_module(x).isfinite(x).all()):
            bad = numpy.argwhere(~numpy.isfinite(x.get()))[0]
            raise _not_finite(owner, what, tuple(int(i) for i in bad))
        if dtype is not None:
            check_in_range(owner, x, what, dtype)
        return x
    # host data: one pass without temporaries per test (the backend's kernel where it has one)
    finder = ops if ops is not None else get_ops("numpy")
    i = finder.first_beyond(x, numpy.finfo(x.dtype).max)
    if i >= 0:
        raise _not_finite(owner, what, tuple(int(j) for j in numpy.unravel_index(i, x.shape)))
    if dtype is not None and _wider(x, dtype):
        i = finder.first_beyond(x, numpy.finfo(dtype).max)
        if i >= 0:
            bad = tuple(int(j) for j in numpy.unravel_index(i, x.shape))
            raise _beyond_range(owner, what, dtype, float(x[bad]), bad)
    return x


def _not_finite(owner, what, index):
    return ValueError(f"{owner}: {what} contains NaN or infinite values (first at index {index})")


def check_input_shape(model, x, what="x"):
    """``x``'s per-sample shape is the model's input shape (a ``Dense`` first layer also takes it flattened)."""
    if tuple(x.shape[1:]) != model.input_shape:
        if math.prod(x.shape[1:]) != math.prod(model.input_shape) or not isinstance(model.layers[0], Dense):
            raise ValueError(f"{model.name}: the first layer {model.layers[0].name} expects {what} of shape "
                             f"{shape_str((None,) + model.input_shape)}, got {tuple(x.shape)}")


def check_targets(model, y, n, what="y"):
    """Targets for ``n`` samples as the compiled loss needs them: int64 class indices in range, one-hot
    rows as wide as the output layer, or dense targets of the output's shape (cast to the model's dtype)."""
    owner = model.name
    y = as_array(owner, y, what, model.ops)
    if y.dtype == object or y.dtype.kind not in "biuf":
        raise TypeError(f"{owner}: {what} must hold numbers, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{owner}: x has {n} samples but {what} has {y.shape[0]}")
    units = model.output_shape[-1]
    kind = model.loss.labels
    if kind == "any":  # a custom loss object checks its own targets
        if not bool(get_array_module(y).isfinite(y).all()):
            raise ValueError(f"{owner}: {what} contains NaN or infinite values")
        return y.astype(numpy.int64) if y.ndim == 1 and y.dtype.kind in "iub" else y.astype(model.dtype, copy=False)
    if kind == "one_hot" and y.ndim == 1:
        raise ValueError(f"{owner}: loss {model.loss.name} needs one-hot {what} of shape (N, {units}), got class "
                         f"indices of shape {tuple(y.shape)}; use loss='sparse_categorical_crossentropy' or "
                         f"fastnn.datasets.one_hot({what})")
    if kind == "index":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise ValueError(f"{owner}: loss {model.loss.name} needs class indices {what} of shape (N,), "
                             f"got {tuple(y.shape)}")
        losses.check_labels(owner, y, n, units, get_array_module(y))
        return y.astype(numpy.int64)
    if kind == "one_hot" and (y.ndim != 2 or y.shape[1] != units):
        raise ValueError(f"{owner}: one-hot {what} must have shape (N, {units}) to match the output layer's "
                         f"{units} units, got {tuple(y.shape)}")
    if kind == "dense":
        if y.ndim == 1 and units == 1:
            y = y.reshape(-1, 1)
        if tuple(y.shape[1:]) != tuple(model.output_shape[1:]):
            raise ValueError(f"{owner}: {what} must have shape {shape_str(model.output_shape)} to match the "
                             f"output layer, got {tuple(y.shape)}")
    if not bool(get_array_module(y).isfinite(y).all()):
        raise ValueError(f"{owner}: {what} contains NaN or infinite values")
    check_in_range(owner, y, what, model.dtype)
    bounds = getattr(model.loss, "target_range", None)
    if bounds is not None:
        check_target_range(owner, model.loss.name, y, what, *bounds)
    return y.astype(model.dtype, copy=False)


def check_target_range(owner, loss_name, y, what, lo, hi):
    """Every target in ``[lo, hi]`` (one reduction, one transfer for device arrays); the error names
    the loss and the offending values."""
    extremes = get_array_module(y).stack([y.min(), y.max()])
    low, high = (float(v) for v in (extremes.get() if is_device_array(extremes) else extremes))
    if low >= lo and high <= hi:
        return
    host = y.get() if is_device_array(y) else numpy.asarray(y)
    bad = numpy.unique(host[(host < lo) | (host > hi)])
    shown = ", ".join(f"{v:g}" for v in bad[:6]) + (f", ... ({bad.size} distinct values)" if bad.size > 6 else "")
    hint = ""
    if high > hi and numpy.all(host == numpy.floor(host)):
        classes = int(high) + 1
        hint = (f"; for class indices 0..{classes - 1} use loss='sparse_categorical_crossentropy' with a "
                f"softmax output of {classes} units")
    raise ValueError(f"{owner}: loss {loss_name} needs targets {what} in [{lo:g}, {hi:g}] (0/1 labels or "
                     f"probabilities), got {what} outside that range: {shown}{hint}")
