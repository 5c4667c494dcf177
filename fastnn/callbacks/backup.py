"""Callbacks that write files: ``BackupAndRestore`` (resume an interrupted run exactly) and
``ModelCheckpoint``. The files themselves are ``fastnn.checkpoint``'s and ``fastnn.saving``'s."""
from __future__ import annotations

import math
import os
import sys

from fastnn import checkpoint, distributed
from fastnn.functions import check_flag
from fastnn.callbacks.base import Callback, is_chief
from fastnn.callbacks.control import monitor_mode

__all__ = ["BackupAndRestore", "ModelCheckpoint"]


def _require_sequential(callback, model):
    if not hasattr(model, "state") or not hasattr(model, "save"):
        raise TypeError(f"{type(callback).__name__} saves a fastnn.models.Sequential; it cannot back up a "
                        f"{type(model).__name__} (the book's Trainer: save net.params yourself, e.g. with numpy.savez)")


class BackupAndRestore(Callback):
    """Back up the whole training state so a crashed or killed run continues exactly where it was.

    Every epoch (``save_freq="epoch"``) or every ``save_freq`` optimizer steps, the model, its
    optimizer slots and step count, the dropout step, the data order (the sampler's state at the
    epoch's start and the next batch) and the epoch's partial sums are written atomically to
    ``backup_dir/ckpt-e<epoch>-b<batch>.fastnn``; the newest ``keep`` are kept. At the start of training
    (``on_train_begin``) it restores the newest, so running the same script again resumes it, bit for bit on CPU
    backends. A state with non-finite weights is never written: the last good backup stays.
    When training finishes, a final backup marked as completed is written (or, with
    ``delete_checkpoint=True``, every backup is removed); a later ``fit`` does not resume from a
    completed run but removes its backups and starts anew. (Other callbacks' own state, such as
    ``EarlyStopping``'s patience, is not backed up.)

    One folder, one run: from the restore (or the start of training) to the end of ``fit`` the
    folder is locked (``fastnn.checkpoint.BackupFolder``, ``fastnn.io.FolderLock``: ``flock`` on ``backup_dir/.fastnn-lock``, dropped
    by the kernel if the process dies; no lock where ``fcntl`` is missing, with a warning), and a
    second run gets ``FolderInUseError`` naming the holder's PID. Only temporaries that provably
    belong to no live writer are deleted. Each backup stores the run's fingerprint (architecture,
    optimizer and its settings, loss, training-set length, batch size, shuffle, seed); resuming
    one whose fingerprint differs raises ``CheckpointMismatchError`` saying how to start fresh. A
    newest backup that cannot be read is skipped with a warning for the next older good one; every
    backup is read and checked in full before any weight of the model is overwritten.
    """

    def __init__(self, backup_dir, save_freq="epoch", keep=3, delete_checkpoint=False, resume=True):
        super().__init__()
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive integer, got {save_freq!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0:
            raise ValueError(f"BackupAndRestore: keep must be a positive integer, got {keep!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.keep, self.delete_checkpoint = save_freq, keep, delete_checkpoint
        # False (fit(resume=False)): start anew, replacing the folder's backups
        self.resume = check_flag("BackupAndRestore", "resume", resume)
        self._folder = checkpoint.BackupFolder(self.backup_dir, keep)

    def set_model(self, model):
        _require_sequential(self, model)
        super().set_model(model)

    def latest(self):
        """The newest backup's path, or None."""
        return self._folder.latest()

    def release(self):
        """Give the folder's lock back (the end of ``fit`` does; safe to call twice)."""
        self._folder.release()

    def restore(self, model):
        """Load the newest good backup into ``model`` and return its loop state; None when there is
        none, or when the newest marks a finished run (its backups are then removed). Under data
        parallelism rank 0 decides and every rank learns the outcome, errors included."""
        loop = getattr(model, "training_loop", None)
        return checkpoint.restore_from(self._folder, model, distributed.get(), loop and loop.run_info)

    def on_train_begin(self, logs=None):
        loop = self.model.training_loop
        if self.resume:
            resumed = self.restore(self.model)
            if resumed is not None and loop is not None:
                loop.resume_from(resumed)
        elif is_chief(self.model):  # this run starts anew: older backups here are not its own
            self._folder.begin(self.model, loop and loop.run_info)
            self._folder.clear()

    def _save(self, completed=False):
        """Write a backup (rank 0 writes; every rank takes part). Under data parallelism a write that
        fails on rank 0 (a full disk, a read-only folder) raises the same error on every rank, so all
        of them leave ``fit`` alike instead of rank 0 failing alone after the others finished."""
        state = self.model.training_loop.snapshot()  # every rank: the partial sums are reduced
        comm = distributed.get()
        error = None
        if is_chief(self.model):
            try:
                self._folder.write(self.model, state, completed)
            except OSError as exc:
                error = exc
        if comm.size > 1:
            message = comm.bcast_obj(None if error is None else f"{type(error).__name__}: {error}")
            if message is not None and error is None:
                error = OSError(f"rank 0 could not write the backup in {self.backup_dir}: {message}")
        if error is not None:
            raise error

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
            elif is_chief(self.model):
                self._folder.clear()
        finally:
            self.release()

    def on_train_abort(self, exception):
        self.release()  # the folder's lock, whatever ended the run


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
        self.mode = monitor_mode(mode, monitor, "ModelCheckpoint")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive integer, got {save_freq!r}")
        self.save_freq = save_freq
        self.best = math.inf if self.mode == "min" else -math.inf
        self._epoch = 0

    def set_model(self, model):
        _require_sequential(self, model)
        super().set_model(model)

    def _write(self, epoch, logs):
        if not is_chief(self.model):
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
