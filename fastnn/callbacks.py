"""Callbacks: one protocol, Keras's hooks and signatures.

``on_train_begin(logs)``, ``on_train_end(logs)``, ``on_epoch_begin(epoch, logs)``,
``on_epoch_end(epoch, logs)``, ``on_batch_begin(batch, logs)``, ``on_batch_end(batch, logs)``.
``self.model`` is the model being trained; setting ``model.stop_training = True`` ends training
after the current batch. Batch logs are computed lazily: reading ``logs["loss"]`` in
``on_batch_end`` costs one device sync, and callbacks that do not read them cost none.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import time

import numpy

__all__ = [
    "Callback", "CallbackList", "History", "ProgressBar", "EarlyStopping", "LearningRateScheduler",
    "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger", "LambdaCallback", "PlotCurves", "plot_history",
    "BackupAndRestore", "ModelCheckpoint",
]


class Callback:
    """Base class: override the hooks you need."""

    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass
    on_train_batch_begin = on_batch_begin
    on_train_batch_end = on_batch_end


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not hasattr(cb, "on_epoch_end"):
                raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
            cb.set_model(model) if hasattr(cb, "set_model") else setattr(cb, "model", model)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for cb in self.callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(*args)
        return call


# ---------------------------------------------------------------- history and plots
def plot_history(history, path, title=None):
    """Write a PNG of loss and accuracy per epoch (train and validation) to ``path``.

    Uses matplotlib's object API (no pyplot state, no backend switching); matplotlib is the
    ``plot`` extra.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "fastnn-engine[plot]"') from None
    hist = history.history if hasattr(history, "history") else history
    epochs = numpy.arange(1, len(next(iter(hist.values()), [])) + 1)
    metrics = [k for k in hist if not k.startswith("val_") and k != "lr"]
    fig = Figure(figsize=(5 * max(1, len(metrics)), 4))
    FigureCanvasAgg(fig)
    for i, key in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ax.plot(epochs, hist[key], marker="o", ms=3, label=f"train {key}")
        if f"val_{key}" in hist:
            ax.plot(epochs, hist[f"val_{key}"], marker="s", ms=3, label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


class History(Callback):
    """Records each epoch's logs: ``history.history["loss"]``, ``["val_accuracy"]``, ... and ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def plot(self, path, title=None):
        """PNG of the loss and metric curves (train and validation) at ``path``."""
        return plot_history(self, path, title)


class PlotCurves(Callback):
    """Rewrites a PNG of the training curves at ``path`` after every epoch."""

    def __init__(self, path, title=None):
        super().__init__()
        self.path, self.title = path, title
        self._history = History()

    def on_epoch_end(self, epoch, logs=None):
        self._history.on_epoch_end(epoch, logs)
        if _is_chief(self.model):
            plot_history(self._history, self.path, self.title)


# ---------------------------------------------------------------- progress
def _fmt_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in logs.items())


class ProgressBar(Callback):
    """Progress on stderr. ``verbose=1``: a live tqdm bar (ETA, samples/s, loss) when stderr is a
    terminal, one line per epoch otherwise (no ``\\r`` noise in log files); ``verbose=2``: one line
    per epoch; ``0``: silent."""

    def __init__(self, verbose=1, stream=None, refresh_seconds=0.5):
        super().__init__()
        self.verbose = verbose
        self.stream = stream
        self.refresh_seconds = refresh_seconds
        self._bar = None

    @property
    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def _live(self):
        out = self._out
        return self.verbose == 1 and hasattr(out, "isatty") and out.isatty()

    def on_train_begin(self, logs=None):
        self.epochs = self.model._fit_params.get("epochs")
        self.samples = self.model._fit_params.get("samples")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._seen = 0
        self._last_refresh = 0.0
        if self._live():
            from tqdm import tqdm

            self._bar = tqdm(total=self.samples, file=self._out, unit="sample", unit_scale=True, leave=True,
                             desc=f"epoch {epoch + 1}/{self.epochs}", dynamic_ncols=True)

    def on_batch_end(self, batch, logs=None):
        size = (logs or {}).get("size", 0)
        self._seen += size
        if self._bar is not None:
            self._bar.update(size)
            now = time.perf_counter()
            if now - self._last_refresh >= self.refresh_seconds:
                self._last_refresh = now
                self._bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k not in ("size", "batch")},
                                      refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=True)
            self._bar.close()
            self._bar = None
            return
        if self.verbose in (1, 2):
            rate = f"{self._seen / elapsed:,.0f} samples/s" if elapsed > 0 and self._seen else ""
            print(f"epoch {epoch + 1}/{self.epochs} - {elapsed:.2f}s {rate} - {_fmt_logs(logs or {})}",
                  file=self._out, flush=True)


# ---------------------------------------------------------------- early stopping and learning rate
def _better(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights=True`` the weights of the best epoch are restored at the end of
    training, whether or not training was stopped early.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = _better(mode, monitor)
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = int(start_from_epoch)

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
                print(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1}", file=sys.stderr)
        if self.stopped_epoch and self.verbose:
            print(f"EarlyStopping: stopped at epoch {self.stopped_epoch + 1}", file=sys.stderr)


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
        opt.lr = float(lr)
        if self.verbose:
            print(f"LearningRateScheduler: epoch {epoch + 1}: lr = {opt.lr:.6g}", file=sys.stderr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.model.optimizer.lr


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.mode = verbose, _better(mode, monitor)
        self.min_delta, self.cooldown, self.min_lr = float(min_delta), int(cooldown), float(min_lr)

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
                print(f"ReduceLROnPlateau: epoch {epoch + 1}: lr reduced to {opt.lr:.6g}", file=sys.stderr)


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
        print(message + "; training stopped", file=sys.stderr)
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
        if not _is_chief(self.model):
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
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_batch_begin=None, on_batch_end=None,
                 on_train_begin=None, on_train_end=None):
        super().__init__()
        for name, fn in locals().items():
            if name.startswith("on_") and fn is not None:
                setattr(self, name, fn)


# ---------------------------------------------------------------- checkpoints
def _is_chief(model):
    """Only rank 0 writes files under data parallelism."""
    from fastnn import distributed

    return distributed.get().rank == 0


def _require_sequential(callback, model):
    if not hasattr(model, "flat") or not hasattr(model, "save"):
        raise TypeError(f"{type(callback).__name__} saves a fastnn.models.Sequential; it cannot back up a "
                        f"{type(model).__name__} (the book's Trainer: save net.params yourself, e.g. with numpy.savez)")


def _checkpoint_files(folder):
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("ckpt-") and n.endswith(".fastnn"))
    except FileNotFoundError:
        return []
    return [os.path.join(folder, n) for n in names]


class BackupAndRestore(Callback):
    """Back up the whole training state so a crashed or killed run continues exactly where it was.

    Every epoch (``save_freq="epoch"``) or every ``save_freq`` optimizer steps, the model, its
    optimizer slots and step count, the dropout step, the data order (the sampler's state at the
    epoch's start and the next batch) and the epoch's partial sums are written atomically to
    ``backup_dir/ckpt-e<epoch>-b<batch>.fastnn``; the newest ``keep`` are kept. ``fit`` restores the
    newest at the start, so running the same script again resumes it, bit for bit on CPU
    backends. A state with non-finite weights is never written: the last good backup stays.
    When training finishes, a final backup marked as completed is written (or, with
    ``delete_checkpoint=True``, every backup is removed); a later ``fit`` does not resume from a
    completed run but removes its backups and starts anew. (Other callbacks' own state, such as
    ``EarlyStopping``'s patience, is not backed up.)
    """

    def __init__(self, backup_dir, save_freq="epoch", keep=3, delete_checkpoint=False):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive integer, got {save_freq!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0:
            raise ValueError(f"BackupAndRestore: keep must be a positive integer, got {keep!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.keep, self.delete_checkpoint = save_freq, keep, delete_checkpoint

    def set_model(self, model):
        _require_sequential(self, model)
        super().set_model(model)

    def latest(self):
        files = _checkpoint_files(self.backup_dir)
        return files[-1] if files else None

    def restore(self, model):
        """Load the newest backup into ``model`` and return its loop state; None when there is none,
        or when the newest marks a finished run (its backups are then removed: a new run starts)."""
        from fastnn import distributed, io

        comm = distributed.get()
        path = completed = None
        if comm.rank == 0:  # one rank cleans and decides; every rank then reads the same file
            io.clean_stale_temporaries(self.backup_dir)
            path = self.latest()
            completed = path is not None and bool(io.read_training_state(path).get("completed"))
            if completed:
                for old in _checkpoint_files(self.backup_dir):
                    os.unlink(old)
        if comm.size > 1:
            path, completed = comm.bcast_obj((path, completed))
        if path is None or completed:
            return None
        return io.restore_checkpoint(model, path)

    def _save(self, completed=False):
        from fastnn import io

        state = self.model._loop.snapshot()  # every rank: the partial sums are reduced
        if not _is_chief(self.model):
            return
        state["completed"] = completed
        name = f"ckpt-e{state['epoch']:05d}-b{state['batch']:07d}.fastnn"
        if io.write_checkpoint(self.model, os.path.join(self.backup_dir, name), state):
            for old in _checkpoint_files(self.backup_dir)[:-self.keep]:
                try:
                    os.unlink(old)
                except OSError:
                    pass

    def on_train_begin(self, logs=None):
        if _is_chief(self.model):
            os.makedirs(self.backup_dir, exist_ok=True)

    def on_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save()

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint:
            self._save(completed=True)
        elif _is_chief(self.model):
            for path in _checkpoint_files(self.backup_dir):
                os.unlink(path)


class ModelCheckpoint(Callback):
    """Save the model (``model.save``, or ``save_weights`` with ``save_weights_only``) to ``filepath``,
    which may hold fields such as ``{epoch:03d}`` and ``{val_loss:.4f}``; with ``save_best_only``
    only when ``monitor`` improves. ``save_freq``: ``"epoch"`` or every N optimizer steps. Writes
    are atomic."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch"):
        super().__init__()
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.mode = _better(mode, monitor)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive integer, got {save_freq!r}")
        self.save_freq = save_freq
        self.best = math.inf if self.mode == "min" else -math.inf
        self._epoch = 0

    def set_model(self, model):
        _require_sequential(self, model)
        super().set_model(model)

    def _write(self, epoch, logs):
        if not _is_chief(self.model):
            return
        path = self.filepath.format(epoch=epoch + 1, **{k: v for k, v in (logs or {}).items() if isinstance(v, float)})
        if self.save_best_only:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise KeyError(f"ModelCheckpoint: monitor {self.monitor!r} is not in the logs; available: {sorted(logs or {})}")
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"ModelCheckpoint: saved {path}", file=sys.stderr)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._write(self._epoch, {k: logs[k] for k in logs if k not in ("size", "batch")} if self.save_best_only else {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._write(epoch, logs)
