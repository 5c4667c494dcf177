"""What a run shows: ``History``, ``PlotCurves``/``plot_history`` and the ``ProgressBar`` line."""
from __future__ import annotations

import shutil
import sys
import time

import numpy

from fastnn.callbacks.base import Callback, is_chief

__all__ = ["History", "PlotCurves", "ProgressBar", "StepProgress", "plot_history"]


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
        if is_chief(self.model):
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

    needs_every_batch = False  # a refresh per run of batches is as good: logs["size"] counts them all

    def __init__(self, verbose=1, stream=None, refresh_seconds=0.5, samples=None):
        super().__init__()
        self.samples = samples  # per epoch: the bar's denominator (fit gives it)
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
        self.epochs = self.params.get("epochs")

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


class StepProgress:
    """``evaluate``'s and ``predict``'s progress on stdout, as Keras prints it:
    ``12/12 - 0.1s 8ms/step - loss: 0.3012 - accuracy: 0.9111``.

    ``verbose=1`` (``"auto"``): on a terminal a live line refreshed as batches finish, ending in the
    full line; elsewhere the full line only. ``verbose=2``: the full line only. ``0``: nothing.
    ``steps``: the batch count when known."""

    def __init__(self, verbose, steps=None, stream=None, refresh_seconds=0.5):
        if verbose == "auto":
            verbose = 1
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        self.verbose, self.steps, self.stream = int(verbose), steps, stream
        self.refresh_seconds = refresh_seconds
        self._start = time.perf_counter()
        self._last = 0.0
        self._done = 0
        out = self._out
        self._live = self.verbose == 1 and hasattr(out, "isatty") and out.isatty()

    @property
    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    def _line(self, logs=None):
        elapsed = time.perf_counter() - self._start
        per = elapsed / self._done * 1000 if self._done else 0.0
        text = f"{self._done}/{self.steps or self._done} - {elapsed:.1f}s {per:.0f}ms/step"
        return text + (f" - {_fmt_logs(logs)}" if logs else "")

    def __call__(self, done, size=None):
        """Batch ``done`` (counting from 1) has finished."""
        self._done = done
        if self._live:
            now = time.perf_counter()
            if now - self._last >= self.refresh_seconds:
                self._last = now
                self._out.write("\r" + self._line())
                self._out.flush()

    def finish(self, logs=None):
        if not self.verbose:
            return
        self._out.write(("\r" if self._live else "") + self._line(logs) + "\n")
        self._out.flush()
