"""Callbacks: one protocol, Keras 3's hooks and signatures.

``on_train_begin(logs)``, ``on_train_end(logs)``, ``on_epoch_begin(epoch, logs)``,
``on_epoch_end(epoch, logs)``, ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)``
(whose defaults call the older names ``on_batch_begin``/``on_batch_end``, as in Keras), and for
``evaluate`` (also the validation at each epoch's end) and ``predict``: ``on_test_begin(logs)``,
``on_test_batch_begin(batch, logs)``, ``on_test_batch_end(batch, logs)``, ``on_test_end(logs)``,
``on_predict_begin``, ``on_predict_batch_begin``, ``on_predict_batch_end(batch, {"outputs": ...})``,
``on_predict_end``. ``self.model`` is the model being trained; setting ``model.stop_training = True``
(in any hook) ends training after the current batch; ``model.stop_evaluating`` and
``model.stop_predicting`` do the same for ``evaluate`` and ``predict``. Batch logs are computed
lazily: reading ``logs["loss"]`` in ``on_train_batch_end`` costs one device sync, and callbacks
that do not read them cost none. A batch hook that no callback overrides costs nothing per batch.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import sys
import time
import warnings

import numpy

from fastnn.errors import CheckpointMismatchError, FolderInUseError, FormatError

__all__ = [
    "Callback", "CallbackList", "History", "ProgressBar", "EarlyStopping", "LearningRateScheduler",
    "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger", "LambdaCallback", "PlotCurves", "plot_history",
    "BackupAndRestore", "ModelCheckpoint",
]


class Callback:
    """Base class: override the hooks you need."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        """Keras's ``params`` of the run: ``verbose``, ``epochs``, ``steps`` (batches per epoch)."""
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass

    # Keras 3: the train batch hooks' defaults call the older names, so either may be overridden.
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin",
         "on_test_batch_end", "on_predict_begin", "on_predict_end", "on_predict_batch_begin",
         "on_predict_batch_end")
_OLD_NAMES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _inherited(fn, name):
    """Whether the bound hook ``fn`` is ``Callback``'s own (does nothing, or only forwards)."""
    return getattr(fn, "__func__", None) is getattr(Callback, name, None)


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not hasattr(cb, "on_epoch_end"):
                raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
            cb.set_model(model) if hasattr(cb, "set_model") else setattr(cb, "model", model)

    def hooks(self, name):
        """The functions to call for the batch hook ``name``, looked up once per loop: only callbacks
        that override it (for the train batch hooks, it or its older name ``on_batch_*``), so the
        loop does no per-batch work for a hook nobody overrides."""
        old = _OLD_NAMES.get(name)
        found = []
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            fallback = getattr(cb, old, None) if old else None
            if fn is None or _inherited(fn, name):
                fn = fallback  # Callback's default only forwards to the older name
            if fn is not None and not _inherited(fn, old or name):
                found.append(fn)
        return found

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
    """Progress on stdout, as Keras's: ``python train.py > train.log`` keeps every epoch line.

    ``verbose=1``: when the stream is a terminal, a live line per epoch (a bar, samples done,
    elapsed time and the running loss and metrics) ending in the epoch's full line with the
    validation metrics; otherwise one line per epoch (no ``\r`` noise in log files).
    ``verbose=2``: one line per epoch; ``0``: silent. The bar, not the metrics, gives way to the
    terminal's width: it shrinks, then goes; the epoch's last line always holds every metric.
    """

    bar_width = 30

    def __init__(self, verbose=1, stream=None, refresh_seconds=0.5):
        super().__init__()
        self.verbose = verbose
        self.stream = stream
        self.refresh_seconds = refresh_seconds
        self._live_line = False
        self._shown = 0

    @property
    def _out(self):
        return self.stream if self.stream is not None else sys.stdout  # looked up now: capture-friendly

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
        self._epoch = epoch
        self._live_line = self._live()
        self._shown = 0

    def on_batch_end(self, batch, logs=None):
        size = (logs or {}).get("size", 0)
        self._seen += size
        if self._live_line:
            now = time.perf_counter()
            if now - self._last_refresh >= self.refresh_seconds:
                self._last_refresh = now
                shown = {k: v for k, v in logs.items() if k not in ("size", "batch", "batch_loss")}
                self._write_live(self.line(shown, now - self._start, final=False))

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        if self._live_line:
            self._write_live(self.line(logs or {}, elapsed, final=True), end="\n")
            self._live_line = False
        elif self.verbose in (1, 2):
            rate = f"{self._seen / elapsed:,.0f} samples/s" if elapsed > 0 and self._seen else ""
            print(f"epoch {self._epoch + 1}/{self.epochs} - {elapsed:.2f}s {rate} - {_fmt_logs(logs or {})}",
                  file=self._out, flush=True)

    def _write_live(self, text, end=""):
        out = self._out
        out.write("\r" + text.ljust(self._shown) + end)  # spaces blank what a longer refresh left
        out.flush()
        self._shown = 0 if end else len(text)

    def line(self, logs, elapsed, final, columns=None):
        """The live line: ``epoch 2/5 [=====>....] 960/1500 - 1.2s - loss: ... - accuracy: ...``.

        The bar takes what the terminal's width (``columns``, default: the current one) leaves
        after the counts and every metric, at most ``bar_width``; with too little room it is left
        out. A refresh during the epoch that still does not fit is cut at the width (a longer
        line would wrap, and ``\r`` could not overwrite it); the ``final`` line never is."""
        if columns is None:
            columns = shutil.get_terminal_size((80, 24)).columns
        total = self.samples or self._seen or 1
        head = f"epoch {self._epoch + 1}/{self.epochs}"
        rate = f" {self._seen / elapsed:,.0f} samples/s" if final and elapsed > 0 and self._seen else ""
        tail = f"{self._seen}/{total} - {elapsed:.1f}s{rate}" + (f" - {_fmt_logs(logs)}" if logs else "")
        room = columns - 1 - len(head) - len(tail) - 4  # "\r" never counts; keep the last column free
        width = min(self.bar_width, room)
        if width < 5:
            text = f"{head} {tail}"
            return text if final or len(text) < columns else text[:columns - 1]
        done = min(width, int(width * self._seen / total))
        bar = "=" * done + (">" if done < width else "") + "." * max(0, width - done - 1)
        return f"{head} [{bar}] {tail}"


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


# ---------------------------------------------------------------- checkpoints
def _is_chief(model):
    """Only rank 0 writes files under data parallelism."""
    from fastnn import distributed

    return distributed.get().rank == 0


def _require_sequential(callback, model):
    if not hasattr(model, "flat") or not hasattr(model, "save"):
        raise TypeError(f"{type(callback).__name__} saves a fastnn.models.Sequential; it cannot back up a "
                        f"{type(model).__name__} (the book's Trainer: save net.params yourself, e.g. with numpy.savez)")


# Exactly the names BackupAndRestore writes (ckpt-e<epoch>-b<batch>.fastnn): anything else in the
# folder (a model saved as ckpt-best.fastnn, notes) is never read, pruned or deleted.
_BACKUP_NAME = re.compile(r"ckpt-e\d{5,}-b\d{7,}\.fastnn")


def _checkpoint_files(folder):
    try:
        names = sorted(n for n in os.listdir(folder) if _BACKUP_NAME.fullmatch(n))
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

    One folder, one run: from the restore (or the start of training) to the end of ``fit`` the
    folder is locked (``fastnn.io.FolderLock``: ``flock`` on ``backup_dir/.fastnn-lock``, dropped
    by the kernel if the process dies; no lock where ``fcntl`` is missing, with a warning), and a
    second run gets ``FolderInUseError`` naming the holder's PID. Only temporaries that provably
    belong to no live writer are deleted. Each backup stores the run's fingerprint (architecture,
    optimizer and its settings, loss, training-set length, batch size, shuffle, seed); resuming
    one whose fingerprint differs raises ``CheckpointMismatchError`` saying how to start fresh. A
    newest backup that cannot be read is skipped with a warning for the next older good one; every
    backup is read and checked in full before any weight of the model is overwritten.
    """

    def __init__(self, backup_dir, save_freq="epoch", keep=3, delete_checkpoint=False):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive integer, got {save_freq!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0:
            raise ValueError(f"BackupAndRestore: keep must be a positive integer, got {keep!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.keep, self.delete_checkpoint = save_freq, keep, delete_checkpoint
        self._lock = None
        self._fingerprint = None
        self._restored = False

    def set_model(self, model):
        _require_sequential(self, model)
        super().set_model(model)

    def latest(self):
        files = _checkpoint_files(self.backup_dir)
        return files[-1] if files else None

    def _begin(self, model):
        """On the writing rank: take the folder's lock, remove provably stale temporaries, and fix
        this run's fingerprint (before a restore changes anything it covers, such as the lr)."""
        from fastnn import io

        if self._lock is None or not self._lock.held:
            self._lock = io.FolderLock(self.backup_dir).acquire()
            self._fingerprint = None
            io.clean_stale_temporaries(self.backup_dir, locked_since=self._lock.since)
        if self._fingerprint is None:
            self._fingerprint = io.run_fingerprint(model, getattr(model, "_run_info", None))

    def release(self):
        """Give the folder's lock back (the end of ``fit`` does; safe to call twice)."""
        if self._lock is not None:
            self._lock.release()

    def _choose(self, model):
        """On the writing rank: ``(path, checkpoint)`` to resume (None, None when there is nothing to
        resume), falling back from unreadable backups to the newest good one."""
        from fastnn import io

        files = _checkpoint_files(self.backup_dir)
        bad = []
        for path in reversed(files):
            try:
                ckpt = io.read_checkpoint(model, path)
            except FormatError as exc:
                bad.append(f"{os.path.basename(path)} ({exc})")
                continue
            if bad:
                warnings.warn(f"BackupAndRestore: skipped unreadable newer backup(s) {'; '.join(bad)}; resuming "
                              f"from {path}", RuntimeWarning, stacklevel=4)
            if ckpt.training.get("completed"):  # a finished run: its backups go, a new run starts
                for old in files:
                    os.unlink(old)
                return None, None
            io.check_fingerprint(path, ckpt.training.get("run"), self._fingerprint, self.backup_dir)
            return path, ckpt
        if bad:
            raise FormatError(f"{self.backup_dir}: no backup can be read: {'; '.join(bad)}. Delete the folder "
                              f"(or give fit another checkpoint_dir) to start fresh")
        return None, None

    def restore(self, model):
        """Load the newest good backup into ``model`` and return its loop state; None when there is
        none, or when the newest marks a finished run (its backups are then removed: a new run
        starts). Under data parallelism rank 0 decides and every rank learns the outcome, errors
        included."""
        from fastnn import distributed, io

        comm = distributed.get()
        path = ckpt = error = None
        if comm.rank == 0:  # one rank locks, cleans and decides; every rank then reads the same file
            try:
                self._begin(model)
                path, ckpt = self._choose(model)
            except (FormatError, FolderInUseError, CheckpointMismatchError, OSError) as exc:
                error = exc  # every rank raises it (an OSError on rank 0 alone must not abort the job)
        if comm.size > 1:
            path, message = comm.bcast_obj((path, None if error is None else (type(error).__name__, str(error))))
            if message is not None and error is None:
                error = {"FormatError": FormatError, "FolderInUseError": FolderInUseError,
                         "CheckpointMismatchError": CheckpointMismatchError}.get(message[0], OSError)(message[1])
        self._restored = True
        if error is not None:
            raise error
        if path is None:
            return None
        if ckpt is None:
            ckpt = io.read_checkpoint(model, path)
        return ckpt.apply(model)

    def _save(self, completed=False):
        from fastnn import io

        state = self.model._loop.snapshot()  # every rank: the partial sums are reduced
        if not _is_chief(self.model):
            return
        state["completed"] = completed
        state["run"] = self._fingerprint
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
            fresh = not self._restored
            self._begin(self.model)
            if fresh:  # fit(resume=False): this run starts anew, so older backups here are not its own
                for old in _checkpoint_files(self.backup_dir):
                    os.unlink(old)
        self._restored = False

    def on_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save()

    def on_train_end(self, logs=None):
        try:
            if not self.delete_checkpoint:
                self._save(completed=True)
            elif _is_chief(self.model):
                for path in _checkpoint_files(self.backup_dir):
                    os.unlink(path)
        finally:
            self.release()


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
            print(f"ModelCheckpoint: saved {path}", file=sys.stdout)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._write(self._epoch, {k: logs[k] for k in logs if k not in ("size", "batch")} if self.save_best_only else {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._write(epoch, logs)
