"""Keras's ``sample_weight`` and ``class_weight``: one weight per sample, checked once per call.

The weighted loss is Keras's ``sum_i w_i l_i / N`` over a batch of ``N`` (``Loss.compute_weighted``);
metrics stay unweighted, as Keras's ``metrics=`` are. A class missing from ``class_weight`` weighs
1, as in Keras; with both arguments the weights multiply.
"""
from __future__ import annotations

import numpy

from fastnn.backend import to_host
from fastnn.losses import Loss
from fastnn.validation import as_array, check_in_range

__all__ = ["sample_weights", "class_weights"]


def _check_weights(owner, w, n, what):
    w = to_host(as_array(owner, w, what))
    if w.dtype == object or w.dtype.kind not in "biuf":
        raise TypeError(f"{owner}: {what} must hold numbers, got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{owner}: {what} must have shape ({n},), one weight per sample, got {tuple(w.shape)}")
    w = w.astype(numpy.float64)
    bad = numpy.flatnonzero(~numpy.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"{owner}: {what} must be finite and non-negative; sample {int(bad[0])} has "
                         f"{float(w[bad[0]])!r}")
    return w


def class_weights(owner, y, class_weight, loss, dtype=None):
    """``(N,)`` weights from a ``{class: weight}`` dict and the targets ``y`` (class indices, one-hot
    rows, or one 0/1 column for a binary output)."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise TypeError(f"{owner}: class_weight must be a non-empty dict {{class index: weight}}, got "
                        f"{type(class_weight).__name__}")
    table = {}
    for k, v in class_weight.items():
        if isinstance(k, bool) or not isinstance(k, (int, numpy.integer)) or k < 0:
            raise ValueError(f"{owner}: class_weight keys must be class indices (non-negative integers), got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float, numpy.number)) or not numpy.isfinite(v) or v < 0:
            raise ValueError(f"{owner}: class_weight[{k}] must be a finite non-negative number, got {v!r}")
        if dtype is not None and abs(float(v)) > float(numpy.finfo(dtype).max):
            raise ValueError(f"{owner}: class_weight[{k}] = {v!r} is beyond {numpy.dtype(dtype)}'s range; it would "
                             f"become inf in the model's dtype {numpy.dtype(dtype)}")
        table[int(k)] = float(v)
    y = to_host(y)
    if loss.labels == "dense" and loss.name != "binary_crossentropy":
        raise ValueError(f"{owner}: class_weight needs class targets, but loss {loss.name!r} takes dense targets; "
                         f"use sample_weight")
    if y.ndim == 2 and y.shape[1] > 1:
        classes = y.argmax(axis=1)
    else:
        classes = numpy.rint(y.reshape(y.shape[0], -1)[:, 0]).astype(numpy.int64)
    lookup = numpy.ones(max(int(classes.max()) + 1, max(table) + 1))
    for k, v in table.items():
        lookup[k] = v
    return lookup[classes]


def sample_weights(model, y, n, sample_weight, class_weight):
    """The ``(N,)`` host float64 weights of a call (None without either argument), checked."""
    if sample_weight is None and class_weight is None:
        return None
    if type(model.loss).per_sample is Loss.per_sample:
        raise ValueError(f"{model.name}: loss {model.loss.name!r} has no per-sample form, so sample_weight and "
                         f"class_weight cannot weigh it; use one of fastnn's named losses")
    w = None if sample_weight is None else _check_weights(model.name, sample_weight, n, "sample_weight")
    if w is not None:  # checked in float64: a weight of 1e39 would become inf in a float32 model
        check_in_range(model.name, w, "sample_weight", model.dtype)
    if class_weight is not None:
        cw = class_weights(model.name, y, class_weight, model.loss, model.dtype)
        if w is not None:
            w = w * cw
            check_in_range(model.name, w, "sample_weight * class_weight", model.dtype)
        else:
            w = cw
    return w
