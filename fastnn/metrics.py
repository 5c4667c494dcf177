"""Metrics for ``compile(metrics=[...])``: each returns a sum over the batch (a 0-d device array),
so an epoch's value is one division after one sync."""
from __future__ import annotations

__all__ = ["get", "METRIC_NAMES"]

METRIC_NAMES = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy",
                "mse", "mae")


def _argmax_accuracy(ops, out, t, logits):
    if out.ndim == 2 and out.shape[1] == 1:  # one output column: argmax is always 0 (Keras picks binary too)
        return _binary_accuracy(ops, out, t, logits)
    pred = out.argmax(axis=1)
    labels = t if t.ndim == 1 else t.argmax(axis=1)
    return (pred == labels).sum().astype(out.dtype)


def _binary_accuracy(ops, out, t, logits):
    pred = out > 0 if logits else out > out.dtype.type(0.5)
    hit = pred == (t.reshape(out.shape) > 0.5)
    return (hit.mean(axis=tuple(range(1, out.ndim))) if out.ndim > 1 else hit).sum().astype(out.dtype)


def _mse(ops, out, t, logits):
    d = out - t.reshape(out.shape).astype(out.dtype, copy=False)
    return (d * d).reshape(out.shape[0], -1).mean(axis=1).sum()


def _mae(ops, out, t, logits):
    d = out - t.reshape(out.shape).astype(out.dtype, copy=False)
    return ops.xp.abs(d).reshape(out.shape[0], -1).mean(axis=1).sum()


class Metric:
    """A named metric. ``on_logits``: it can read the logits of a fused softmax/sigmoid head (arg-max and
    thresholds do); otherwise the model hands it the probabilities."""

    def __init__(self, name, fn, on_logits=True):
        self.name, self.fn, self.on_logits = name, fn, on_logits

    def __call__(self, ops, out, t, logits):
        return self.fn(ops, out, t, logits)


def get(name, loss):
    """A metric by name; ``"accuracy"`` picks categorical, sparse or binary accuracy from the loss."""
    if not isinstance(name, str):
        raise TypeError(f"metrics must be names, got {type(name).__name__}; valid names: {', '.join(METRIC_NAMES)}")
    key = name.lower()
    if key in ("accuracy", "acc"):
        fn = _binary_accuracy if loss.name == "binary_crossentropy" else _argmax_accuracy
        return Metric("accuracy", fn)
    table = {"categorical_accuracy": _argmax_accuracy, "sparse_categorical_accuracy": _argmax_accuracy,
             "binary_accuracy": _binary_accuracy, "mse": _mse, "mae": _mae}
    if key not in table:
        raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(METRIC_NAMES)}")
    return Metric(key, table[key], on_logits=key not in ("mse", "mae"))
