"""Metrics for ``compile(metrics=[...])``, by name or as Keras's metric objects.

A metric returns, per batch, a sum over the batch on the device (a 0-d array), so an epoch's value
is one division after one sync. Metrics that are not a mean over samples (``Precision``,
``Recall``, ``AUC``) return a vector of counts instead (``size`` of them, summed over batches and
ranks like the rest) and turn the epoch's counts into the value in ``result``.
"""
from __future__ import annotations

import numpy

from fastnn.functions import check_flag

__all__ = ["get", "METRIC_NAMES", "Metric", "BinaryAccuracy", "CategoricalAccuracy",
           "SparseCategoricalAccuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanSquaredError",
           "MeanAbsoluteError", "Precision", "Recall", "AUC"]

METRIC_NAMES = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy",
                "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "mse", "mae", "precision",
                "recall", "auc")


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


def _difference(out, t, name):
    """``out - t`` for a metric that compares outputs with dense targets of the same shape."""
    if t.size != out.size:
        raise ValueError(f"{name}: needs targets of the output's shape {tuple(out.shape)}, got {tuple(t.shape)} (class "
                         f"indices? use an accuracy metric, or one-hot targets)")
    return out - t.reshape(out.shape).astype(out.dtype, copy=False)


def _mse(ops, out, t, logits):
    d = _difference(out, t, "mean_squared_error")
    return (d * d).reshape(out.shape[0], -1).mean(axis=1).sum()


def _mae(ops, out, t, logits):
    d = _difference(out, t, "mean_absolute_error")
    return ops.xp.abs(d).reshape(out.shape[0], -1).mean(axis=1).sum()


def _dense_targets(ops, out, t):
    """``t`` as 0/1 floats of ``out``'s shape: class indices become one-hot rows."""
    if t.ndim == 1 and out.ndim == 2 and out.shape[1] > 1:
        return ops._targets(t, out.shape, out.dtype)
    return t.reshape(out.shape).astype(out.dtype, copy=False)


class Metric:
    """A named metric: ``metric(ops, out, t, logits)`` gives the batch's sum (or ``size`` counts).

    ``on_logits``: it can read the logits of a fused softmax/sigmoid head (arg-max and thresholds at
    0 do); otherwise the model hands it the probabilities. Subclasses are Keras's metric classes;
    ``Metric(name, fn)`` wraps a function of ``(ops, out, t, logits)``."""

    size = None  # None: one sum per batch, the value its mean; else that many counts, read by result()

    def __init__(self, name, fn=None, on_logits=True):
        self.name, self.on_logits = name, on_logits
        if fn is not None:
            self.fn = fn

    def __call__(self, ops, out, t, logits):
        return self.fn(ops, out, t, logits)

    def result(self, sums, count):
        """The epoch's value from its summed batch values and the sample count."""
        return float(sums) / count

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _check_name(owner, name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"{owner}: name must be a non-empty string, got {name!r}")
    return name


class CategoricalAccuracy(Metric):
    """The arg-max of the output equals the arg-max of one-hot targets (or the class index)."""

    def __init__(self, name="categorical_accuracy"):
        super().__init__(_check_name(type(self).__name__, name), _argmax_accuracy)


class SparseCategoricalAccuracy(CategoricalAccuracy):
    """The arg-max of the output equals the class index."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)


class BinaryAccuracy(Metric):
    """The fraction of outputs on the right side of ``threshold`` (probabilities; 0.5 by default)."""

    def __init__(self, name="binary_accuracy", threshold=0.5):
        super().__init__(_check_name("BinaryAccuracy", name))
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"BinaryAccuracy: threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        if self.threshold == 0.5:
            self.fn = _binary_accuracy
        else:
            self.on_logits = False

    def fn(self, ops, out, t, logits):
        hit = (out > out.dtype.type(self.threshold)) == (t.reshape(out.shape) > 0.5)
        return (hit.mean(axis=tuple(range(1, out.ndim))) if out.ndim > 1 else hit).sum().astype(out.dtype)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


class TopKCategoricalAccuracy(Metric):
    """The target class is among the ``k`` largest outputs (one-hot targets, or class indices)."""

    def __init__(self, k=5, name="top_k_categorical_accuracy"):
        super().__init__(_check_name(type(self).__name__, name))
        if isinstance(k, bool) or not isinstance(k, (int, numpy.integer)) or k < 1:
            raise ValueError(f"{type(self).__name__}: k must be a positive integer, got {k!r}")
        self.k = int(k)

    def fn(self, ops, out, t, logits):
        if out.ndim != 2:
            raise ValueError(f"{self.name}: needs outputs of shape (N, classes), got {tuple(out.shape)}")
        xp = ops.xp
        labels = t if t.ndim == 1 else t.argmax(axis=1)
        true = xp.take_along_axis(out, labels.reshape(-1, 1).astype(numpy.int64), axis=1)
        above = (out > true).sum(axis=1)  # how many classes score higher than the target's
        return (above < self.k).sum().astype(out.dtype)

    def get_config(self):
        return {"name": self.name, "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """The target class index is among the ``k`` largest outputs."""

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy"):
        super().__init__(k, name)


class MeanSquaredError(Metric):
    def __init__(self, name="mean_squared_error"):
        super().__init__(_check_name("MeanSquaredError", name), _mse, on_logits=False)


class MeanAbsoluteError(Metric):
    def __init__(self, name="mean_absolute_error"):
        super().__init__(_check_name("MeanAbsoluteError", name), _mae, on_logits=False)


class _Confusion(Metric):
    """Precision and recall: counts of true positives, predicted positives and actual positives of
    the thresholded probabilities (each element of a one-hot or multi-label output counts, as in
    Keras; class indices count as one-hot rows). ``top_k``: the ``k`` largest outputs of a row
    are the predicted positives; ``class_id``: only that column counts."""

    size = 3

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None):
        owner = type(self).__name__
        super().__init__(_check_name(owner, name or owner.lower()), on_logits=False)
        if thresholds is None:
            thresholds = 0.5
        if isinstance(thresholds, bool) or not isinstance(thresholds, (int, float)) or not 0 <= thresholds <= 1:
            raise ValueError(f"{owner}: thresholds must be one number in [0, 1] (a list of thresholds is not "
                             f"supported), got {thresholds!r}")
        for arg, value in (("top_k", top_k), ("class_id", class_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, numpy.integer))
                                      or value < (1 if arg == "top_k" else 0)):
                raise ValueError(f"{owner}: {arg} must be a {'positive' if arg == 'top_k' else 'non-negative'} "
                                 f"integer or None, got {value!r}")
        self.thresholds, self.top_k, self.class_id = float(thresholds), top_k, class_id

    def fn(self, ops, out, t, logits):
        xp = ops.xp
        actual = _dense_targets(ops, out, t) > 0.5
        if self.top_k is not None and out.ndim == 2 and out.shape[1] > 1:
            k = min(self.top_k, out.shape[1])
            kth = xp.partition(out, out.shape[1] - k, axis=1)[:, out.shape[1] - k:out.shape[1] - k + 1]
            pred = out >= kth
        else:
            pred = out > out.dtype.type(self.thresholds)
        if self.class_id is not None:
            if out.ndim != 2 or self.class_id >= out.shape[1]:
                raise ValueError(f"{self.name}: class_id {self.class_id} is not a column of outputs of shape "
                                 f"{tuple(out.shape)}")
            pred, actual = pred[:, self.class_id], actual[:, self.class_id]
        return xp.stack([(pred & actual).sum(), pred.sum(), actual.sum()]).astype(out.dtype)

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds, "top_k": self.top_k, "class_id": self.class_id}


class Precision(_Confusion):
    """Keras's ``Precision``: true positives / predicted positives (0 when nothing is predicted)."""

    def result(self, sums, count):
        return float(sums[0] / sums[1]) if sums[1] else 0.0


class Recall(_Confusion):
    """Keras's ``Recall``: true positives / actual positives (0 when there are none)."""

    def result(self, sums, count):
        return float(sums[0] / sums[2]) if sums[2] else 0.0


MAX_THRESHOLDS = 1_000_000  # AUC's counts: 2 per threshold, per batch, on the device


class AUC(Metric):
    """Keras's ``AUC``: the area under the ROC (``curve="ROC"``) or precision-recall (``"PR"``) curve,
    from confusion counts at ``num_thresholds`` evenly spaced thresholds in [0, 1] (Keras's
    thresholds, the first just below 0 and the last just above 1), summed with Keras's
    ``summation_method="interpolation"`` (trapezoids for ROC; Davis and Goadrich's interpolation for
    PR). Every element of the output counts (Keras's ``multi_label=False``); class indices count as
    one-hot rows. ``from_logits=True`` applies a sigmoid first."""

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name="auc",
                 multi_label=False, from_logits=False):
        super().__init__(_check_name("AUC", name), on_logits=False)
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, numpy.integer)) or \
                not 2 <= num_thresholds <= MAX_THRESHOLDS:
            raise ValueError(f"AUC: num_thresholds must be an integer from 2 to {MAX_THRESHOLDS} (its counts are "
                             f"summed every batch), got {num_thresholds!r}")
        if str(curve).upper() not in ("ROC", "PR"):
            raise ValueError(f"AUC: curve must be 'ROC' or 'PR', got {curve!r}")
        if summation_method != "interpolation":
            raise ValueError(f"AUC: only summation_method='interpolation' (Keras's default) is supported, got "
                             f"{summation_method!r}")
        if multi_label:
            raise ValueError("AUC: multi_label=True is not supported; every output element counts as one "
                             "prediction (Keras's multi_label=False)")
        self.num_thresholds, self.curve = int(num_thresholds), str(curve).upper()
        self.from_logits = check_flag("AUC", "from_logits", from_logits)
        eps = 1e-7
        inner = numpy.arange(1, self.num_thresholds - 1) / (self.num_thresholds - 1)
        self.thresholds = numpy.concatenate([[-eps], inner, [1 + eps]])
        self.size = 2 * self.num_thresholds + 2

    def fn(self, ops, out, t, logits):
        xp = ops.xp
        p = out.reshape(-1)
        if self.from_logits:
            p = 1 / (1 + xp.exp(-p))
        actual = _dense_targets(ops, out, t).reshape(-1) > 0.5
        thresholds = xp.asarray(self.thresholds, dtype=p.dtype)
        above = xp.searchsorted(thresholds, p, side="left")  # thresholds i < above are below the score
        n = self.num_thresholds + 1
        pos = xp.bincount(above[actual], minlength=n)
        neg = xp.bincount(above[~actual], minlength=n)
        tp = xp.cumsum(pos[::-1])[::-1][1:]  # positives scoring above threshold i
        fp = xp.cumsum(neg[::-1])[::-1][1:]
        return xp.concatenate([tp, fp, xp.stack([actual.sum(), (~actual).sum()])]).astype(out.dtype)

    def result(self, sums, count):
        t = self.num_thresholds
        tp, fp = sums[:t], sums[t:2 * t]
        fn, tn = sums[2 * t] - tp, sums[2 * t + 1] - fp
        with numpy.errstate(divide="ignore", invalid="ignore"):
            if self.curve == "ROC":
                tpr = numpy.where(tp + fn > 0, tp / (tp + fn), 0.0)
                fpr = numpy.where(fp + tn > 0, fp / (fp + tn), 0.0)
                return float(numpy.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))
            dtp = tp[:-1] - tp[1:]
            p = tp + fp
            dp = numpy.maximum(p[:-1] - p[1:], 0)
            slope = numpy.where(dp > 0, dtp / dp, 0.0)
            intercept = tp[1:] - slope * p[1:]
            ratio = numpy.where((p[:-1] > 0) & (p[1:] > 0), p[:-1] / numpy.maximum(p[1:], 1e-300), 1.0)
            denom = numpy.maximum(tp[1:] + fn[1:], 0)
            step = numpy.where(denom > 0, slope * (dtp + intercept * numpy.log(ratio)) / denom, 0.0)
        return float(numpy.sum(step))

    def get_config(self):
        return {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                "from_logits": self.from_logits}


_BY_NAME = {"categorical_accuracy": CategoricalAccuracy, "sparse_categorical_accuracy": SparseCategoricalAccuracy,
            "binary_accuracy": BinaryAccuracy, "top_k_categorical_accuracy": TopKCategoricalAccuracy,
            "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy, "mse": MeanSquaredError,
            "mae": MeanAbsoluteError, "precision": Precision, "recall": Recall, "auc": AUC}


def get(name, loss):
    """A metric by name or a ``Metric`` object; ``"accuracy"`` picks categorical, sparse or binary
    accuracy from the loss."""
    if isinstance(name, Metric):
        return name
    if not isinstance(name, str):
        raise TypeError(f"metrics must be names or fastnn.metrics objects, got {type(name).__name__}; valid "
                        f"names: {', '.join(METRIC_NAMES)}")
    key = name.lower()
    if key in ("accuracy", "acc"):
        fn = _binary_accuracy if loss.name == "binary_crossentropy" else _argmax_accuracy
        return Metric("accuracy", fn)
    if key not in _BY_NAME:
        raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(METRIC_NAMES)}")
    metric = _BY_NAME[key]()
    metric.name = key
    return metric
