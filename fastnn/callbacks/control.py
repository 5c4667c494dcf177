"""Callbacks that steer or record a run: ``EarlyStopping``, ``LearningRateScheduler``,
``ReduceLROnPlateau``, ``TerminateOnNaN``, ``CSVLogger``, ``LambdaCallback``."""
from __future__ import annotations

import csv
import io
import math
import numbers
import os
import sys

from fastnn.callbacks.base import HOOKS, Callback, is_chief

__all__ = ["EarlyStopping", "LearningRateScheduler", "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger",
           "LambdaCallback"]


def monitor_mode(mode, monitor, owner=None):
    where = f"{owner}: " if owner else ""
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"{where}monitor must be the name of a logged value such as 'val_loss', got {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{where}mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


def _number(owner, arg, v, low=None):
    """A finite real number (not a bool or a string), ``>= low``, as a float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or (low is not None and v < low):
        what = "a finite number" + ("" if low is None else f" >= {low:g}")
        raise ValueError(f"{owner}: {arg} must be {what}, got {v!r}")
    return float(v)


def _count(owner, arg, v):
    """A non-negative whole number (an int, or a float holding one), as an int."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"{owner}: {arg} must be a non-negative integer, got {v!r}")
    return int(v)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights=True`` the weights of the best epoch are restored at the end of
    training, whether or not training was stopped early.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.mode = monitor_mode(mode, monitor, "EarlyStopping")
        self.min_delta = abs(_number("EarlyStopping", "min_delta", min_delta))
        self.patience = _count("EarlyStopping", "patience", patience)
        self.verbose = verbose
        self.baseline = None if baseline is None else _number("EarlyStopping", "baseline", baseline)
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = _count("EarlyStopping", "start_from_epoch", start_from_epoch)

    def _improved(self, value, reference):
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"EarlyStopping: monitor {self.monitor!r} is not in the logs; available: {sorted(logs or {})}")
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1}", file=sys.stdout)
        if self.stopped_epoch and self.verbose:
            print(f"EarlyStopping: stopped at epoch {self.stopped_epoch + 1}", file=sys.stdout)


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at each epoch's start: ``schedule(epoch, lr) -> new lr``
    (a one-argument ``schedule(epoch)`` or a ``fastnn.optimizers`` schedule object works too)."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def _takes_lr(self):
        import inspect

        try:
            params = [p for p in inspect.signature(self.schedule).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        except (TypeError, ValueError):  # a callable without a signature: Keras's two-argument form
            return True
        return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = self.schedule(epoch, opt.lr) if self._takes_lr() else self.schedule(epoch)
        if isinstance(lr, (bool, str, bytes)) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"LearningRateScheduler: schedule returned lr={lr!r} for epoch {epoch + 1}; a learning "
                             f"rate must be a finite non-negative number")
        opt.lr = float(lr)
        if self.verbose:
            print(f"LearningRateScheduler: epoch {epoch + 1}: lr = {opt.lr:.6g}", file=sys.stdout)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.model.optimizer.lr


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        owner = "ReduceLROnPlateau"
        self.mode = monitor_mode(mode, monitor, owner)
        if not 0 < _number(owner, "factor", factor) < 1:
            raise ValueError(f"{owner}: factor must be in (0, 1), got {factor!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), _count(owner, "patience", patience)
        self.verbose = verbose
        self.min_delta, self.cooldown = _number(owner, "min_delta", min_delta), _count(owner, "cooldown", cooldown)
        self.min_lr = _number(owner, "min_lr", min_lr, low=0)

    def on_train_begin(self, logs=None):
        self.wait = self.cooldown_counter = 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not in the logs; available: {sorted(logs or {})}")
        opt = self.model.optimizer
        if logs is not None:
            logs["lr"] = opt.lr
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience and opt.lr > self.min_lr:
            opt.lr = max(opt.lr * self.factor, self.min_lr)
            self.cooldown_counter, self.wait = self.cooldown, 0
            if self.verbose:
                print(f"ReduceLROnPlateau: epoch {epoch + 1}: lr reduced to {opt.lr:.6g}", file=sys.stdout)


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss is NaN or infinite (one device sync per batch);
    with ``raise_error=True`` raise ``FloatingPointError`` naming the epoch and batch instead."""

    def __init__(self, raise_error=False):
        super().__init__()
        self.raise_error = raise_error
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("batch_loss")
        if loss is None or math.isfinite(loss):
            return
        message = f"TerminateOnNaN: loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}"
        if self.raise_error:
            raise FloatingPointError(message)
        print(message + "; training stopped", file=sys.stdout)
        self.model.stop_training = True


class CSVLogger(Callback):
    """Append each epoch's logs as a CSV row (``epoch`` first) to ``filename``."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self.keys = None

    def on_train_begin(self, logs=None):
        self.keys = None
        if self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0:
            with open(self.filename, newline="") as f:
                self.keys = next(csv.reader(f, delimiter=self.separator))[1:]
        elif not self.append:
            open(self.filename, "w").close()

    def on_epoch_end(self, epoch, logs=None):
        if not is_chief(self.model):
            return
        logs = logs or {}
        write_header = self.keys is None
        if write_header:
            self.keys = sorted(logs)
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self.separator)
        if write_header:
            writer.writerow(["epoch"] + self.keys)
        writer.writerow([epoch] + [logs.get(k, "") for k in self.keys])
        with open(self.filename, "a", newline="") as f:
            f.write(buf.getvalue())


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``; any hook
    name of ``Callback`` is accepted (``on_train_batch_end``, ``on_test_batch_end``, ...)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_batch_begin=None, on_batch_end=None,
                 on_train_begin=None, on_train_end=None, **hooks):
        super().__init__()
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {unknown}; valid names: {', '.join(HOOKS)}")
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_batch_begin=on_batch_begin,
                     on_batch_end=on_batch_end, on_train_begin=on_train_begin, on_train_end=on_train_end, **hooks)
        for name, fn in given.items():
            if fn is not None:
                setattr(self, name, fn)
