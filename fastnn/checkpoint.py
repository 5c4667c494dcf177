"""Checkpoints: the resume state of a training run, its serialisation and its restore.

A checkpoint is a ``.fastnn`` file (``fastnn.saving``) with one more member, ``training.json``: the
loop's position (``fastnn.training.LoopState.snapshot``: epoch, next batch, the sampler's state at
the epoch's start, the epoch's partial sums, the history so far) and the run's fingerprint
(architecture, optimizer and its settings, loss, training-set length, batch size, shuffle, seed).
``Checkpoint`` reads and checks one in full before ``apply`` hands it to ``model.load_state``, so a
bad file never leaves a model half-restored. ``BackupFolder`` is one run's folder of backups
(``ckpt-e<epoch>-b<batch>.fastnn``): its lock, stale temporaries, choice of the newest good backup,
writing and pruning. ``fastnn.callbacks.BackupAndRestore`` plugs it into ``fit``.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings

import numpy

from fastnn.errors import CheckpointMismatchError, FolderInUseError, FormatError
from fastnn.io import FolderLock, _Reader, clean_stale_temporaries, write_atomic
from fastnn.saving import architecture, expected_weights, metadata_step, model_zip_bytes, read_optimizer

__all__ = ["Checkpoint", "BackupFolder", "write_checkpoint", "read_checkpoint", "restore_checkpoint",
           "read_training_state", "validate_training", "run_fingerprint", "check_fingerprint"]

def write_checkpoint(model, path, training):
    """Write a checkpoint (model, optimizer state, loop state) atomically. Returns False, writing
    nothing, when a parameter is not finite: the last good checkpoint stays in place."""
    state = model.state()
    if not all(numpy.isfinite(w).all() for w in state["weights"]):
        return False
    write_atomic(path, model_zip_bytes(model, include_optimizer=True, training=training, state=state))
    return True


def read_training_state(path):
    """The loop state of a checkpoint (its ``training.json``, checked), without touching any model."""
    try:
        reader = _Reader(path)
        return validate_training(reader.path, reader.json("training.json"))
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_training(path, training):
    """``training`` (a checkpoint's ``training.json``) with every field the loop reads checked;
    a FormatError names the field otherwise."""
    what = f"{path}: member 'training.json'"
    for key in ("epoch", "batch", "count", "model_step"):
        value = training.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise FormatError(f"{what}: {key} must be a non-negative integer (below 2**63), got {value!r}")
    if not isinstance(training.get("completed", False), bool):
        raise FormatError(f"{what}: completed must be true or false, got {training.get('completed')!r}")
    state = training.get("sampler_state")
    if state is not None:
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if name not in _BIT_GENERATORS:
            raise FormatError(f"{what}: sampler_state must be a NumPy bit generator's state "
                              f"({', '.join(_BIT_GENERATORS)}), got {str(state)[:80]!r}")
        try:
            getattr(numpy.random, name)().state = state  # a throwaway generator: the check, not the use
        except Exception as exc:
            raise FormatError(f"{what}: sampler_state is not a valid {name} state ({type(exc).__name__}: {exc})") from None
    sums = training.get("sums") or {}
    if not isinstance(sums, dict) or not all(isinstance(k, str) and (_is_number(v) or isinstance(v, list) and v and all(
            _is_number(x) for x in v)) for k, v in sums.items()):
        raise FormatError(f"{what}: sums must map metric names to numbers (or, for a metric that counts, such as "
                          f"AUC, lists of numbers), got {str(sums)[:80]!r}")
    history = training.get("history")
    if history is not None:
        ok = (isinstance(history, dict) and isinstance(history.get("history"), dict)
              and isinstance(history.get("epoch"), list)
              and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in history["epoch"])
              and all(isinstance(k, str) and isinstance(v, list) and all(_is_number(x) or x is None for x in v)
                      for k, v in history["history"].items()))
        if not ok:
            raise FormatError(f"{what}: history must be {{'history': {{name: [numbers]}}, 'epoch': [integers]}}")
        long = [k for k, v in history["history"].items() if len(v) > len(history["epoch"])]
        if long:
            raise FormatError(f"{what}: history[{long[0]!r}] has {len(history['history'][long[0]])} values for "
                              f"{len(history['epoch'])} epochs")
    if training.get("run") is not None and not isinstance(training["run"], dict):
        raise FormatError(f"{what}: run must be an object")
    return training


def _check_sums(path, model, training):
    """The saved partial sums fit ``model``'s metrics: a list of counts exactly for a metric that
    counts (``AUC``, ``Precision``, ...), of the size it counts, a number for anything else."""
    sizes = {m.name: getattr(m, "size", None) for m in getattr(model, "metrics", ())}
    if training.get("sums") and hasattr(model, "stat_names"):  # a metric compiled no more is not carried on
        known = set(model.stat_names())
        training["sums"] = {k: v for k, v in training["sums"].items() if k in known}
    for name, value in (training.get("sums") or {}).items():
        want = sizes.get(name)
        got = len(value) if isinstance(value, list) else None
        if got != want:
            raise FormatError(f"{path}: member 'training.json': sums[{name!r}] holds "
                              f"{'a number' if got is None else f'{got} counts'}, but the model's metric {name!r} "
                              f"needs {'a number' if want is None else f'{want} counts'}")


class Checkpoint:
    """A checkpoint read and checked in full, not yet applied: ``apply(model)`` cannot fail on the
    file's account, so a bad checkpoint never leaves a model half-restored."""

    def __init__(self, path, weights, optimizer, seeds, lr, training):
        self.path, self.weights, self.optimizer = path, weights, optimizer
        self.seeds, self.lr, self.training = seeds, lr, training

    def apply(self, model):
        """Restore the model (weights, optimizer slots and step count, dropout seeds and step, the
        learning rate a callback may have changed); returns the loop state."""
        model.load_state({"weights": [self.weights[k] for k in expected_weights(model)],
                          "optimizer": self.optimizer, "seeds": self.seeds, "lr": self.lr,
                          "step": self.training["model_step"]})
        return self.training


def read_checkpoint(model, path):
    """Read and check a checkpoint for ``model`` (same architecture and optimizer) without changing
    the model: sizes against the model's, arrays, seeds, learning rate and ``training.json``."""
    path = os.fspath(path)
    model.build()
    try:
        reader = _Reader(path)
        config, _, _, specs = architecture(reader)
        what = f"{path}: member 'config.json'"
        saved = [spec.get("class_name") for spec in specs]
        mine = [type(layer).__name__ for layer in model.layers]
        if saved != mine:
            raise FormatError(f"{what}: the checkpoint's layers {saved} differ from the model's {mine}")
        opt_spec = (config.get("compile") or {}).get("optimizer") or {}
        opt = model.optimizer
        if opt is not None and opt_spec.get("class_name") != type(opt).__name__:
            raise FormatError(f"{what}: the checkpoint's optimizer {opt_spec.get('class_name')!r} differs from "
                              f"the model's {type(opt).__name__!r}")
        expected = expected_weights(model)
        reader.expect("weights.npz", expected.values(), "the model's weights")
        if opt is not None and reader.has("optimizer.npz"):
            size = sum(math.prod(s) for s in expected.values())
            reader.expect("optimizer.npz", [()] + [(size,)] * len(opt.slots),
                          f"{type(opt).__name__}'s step count and {len(opt.slots)} slot(s)")
        step = metadata_step(reader)
        training = validate_training(path, reader.json("training.json"))
        _check_sums(path, model, training)
        weights = reader.arrays("weights.npz", expected)
        bad = [k for k, w in weights.items() if not numpy.isfinite(w).all()]
        if bad:
            raise FormatError(f"{path}: member 'weights.npz': array {bad[0]!r} holds non-finite values "
                              f"(fastnn never writes such a checkpoint)")
        opt_state = read_optimizer(reader, model, opt)
        seeds = []
        for i, (layer, spec) in enumerate(zip(model.layers, specs)):
            seed = (spec.get("config") or {}).get("seed") if hasattr(layer, "seed") else None
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
                raise FormatError(f"{what}: layer {i}: seed must be an integer in [0, 2**63), got {seed!r}")
            seeds.append(seed)
        lr = (opt_spec.get("config") or {}).get("lr")
        if opt is None or not _is_number(lr):
            lr = None  # a schedule computes its rate from the step count
        elif not math.isfinite(lr) or lr < 0:
            raise FormatError(f"{what}: the optimizer's lr must be a finite non-negative number, got {lr!r}")
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{path}: cannot restore the checkpoint ({type(exc).__name__}: {exc})") from None
    del step  # metadata's step is checked; training.json's model_step is the one a resume uses
    return Checkpoint(path, weights, opt_state, seeds, None if lr is None else float(lr), training)


def restore_checkpoint(model, path):
    """Load a checkpoint written by ``write_checkpoint`` into ``model`` (same architecture and
    optimizer) and return its loop state. Everything is read and checked before any weight of the
    model is overwritten."""
    return read_checkpoint(model, path).apply(model)


# ---------------------------------------------------------------- run fingerprints
def run_fingerprint(model, run=None):
    """What identifies a training run, stored with each of its checkpoints: the architecture (layer
    classes and settings, without names and dropout seeds, which differ between runs of one
    script), dtype and input shape, the optimizer and its settings, the loss, and, from ``fit``
    (``run``), the number of training samples, the batch size, shuffling and the seed."""
    layers = []
    for layer in model.layers:
        cfg = layer.get_config()
        layers.append({"class_name": type(layer).__name__,
                       "config": {k: v for k, v in cfg.items() if k not in ("name", "seed", "seed_drawn")}})
    opt = model.optimizer
    # The optimizer as compiled: callbacks (LearningRateScheduler, ReduceLROnPlateau) change its
    # learning rate during the run, and an interrupted run fitted again must still match its backups.
    opt_config = None if opt is None else (getattr(opt, "initial_config", None) or opt.get_config())
    fp = {"layers": layers, "dtype": str(model.dtype),
          "input_shape": list(model.input_shape) if model.input_shape else None,
          "optimizer": None if opt is None else {"class_name": type(opt).__name__, "config": opt_config},
          "loss": None if model.loss is None else getattr(model.loss, "name", type(model.loss).__name__)}
    for key in ("samples", "batch_size", "shuffle", "seed"):
        if run is not None and key in run:
            fp[key] = run[key]
    return json.loads(json.dumps(fp, default=lambda o: type(o).__name__))


_WHAT = {"layers": "the layers", "dtype": "the dtype", "input_shape": "the input shape", "optimizer": "the optimizer",
         "loss": "the loss", "samples": "the number of training samples", "batch_size": "the batch size",
         "shuffle": "shuffle", "seed": "the seed"}


def check_fingerprint(path, saved, mine, folder):
    """Refuse to resume the checkpoint ``path`` of a different run: a ``CheckpointMismatchError``
    naming what differs and how to start fresh. A checkpoint without a fingerprint (older fastnn)
    and fields this run does not know are not compared."""
    if not isinstance(saved, dict):
        return
    diffs = []
    for key in mine:
        if key in saved and saved[key] != mine[key]:
            there, here = json.dumps(saved[key]), json.dumps(mine[key])
            if len(there) > 120 or len(here) > 120:
                diffs.append(_WHAT.get(key, key))
            else:
                diffs.append(f"{_WHAT.get(key, key)} ({there} there, {here} here)")
    if diffs:
        raise CheckpointMismatchError(
            f"{path}: this checkpoint belongs to a different run: {'; '.join(diffs)} differ. To start fresh, "
            f"delete the folder {folder} (or give fit another checkpoint_dir), or call fit(..., resume=False), "
            f"which starts this run anew and replaces that folder's backups")


def check_position(path, training, run):
    """A backup's place in its epoch fits the run (``run``: its fingerprint, with the number of training
    samples and the batch size when ``fit`` was given arrays): the next batch is one of the epoch's, and
    the partial sums count exactly the samples of the batches before it."""
    samples, batch_size = (run or {}).get("samples"), (run or {}).get("batch_size")
    if not isinstance(samples, int) or not isinstance(batch_size, int) or batch_size <= 0:
        return  # a generator's run: its epochs have no known length
    what = f"{path}: member 'training.json'"
    steps = -(-samples // batch_size)
    if training["batch"] > steps:
        raise FormatError(f"{what}: batch {training['batch']} is past the end of an epoch of {steps} batches "
                          f"({samples} samples, batch size {batch_size})")
    if training["count"] != min(training["batch"] * batch_size, samples):
        raise FormatError(f"{what}: count {training['count']} is not the number of samples in the epoch's first "
                          f"{training['batch']} batches ({min(training['batch'] * batch_size, samples)})")


# ---------------------------------------------------------------- one run's folder of backups
# Exactly the names a BackupFolder writes (ckpt-e<epoch>-b<batch>.fastnn): anything else in the
# folder (a model saved as ckpt-best.fastnn, notes) is never read, pruned or deleted.
_BACKUP_NAME = re.compile(r"ckpt-e\d{5,}-b\d{7,}\.fastnn")


def backup_files(folder):
    """The backups in ``folder``, oldest first."""
    try:
        names = sorted(n for n in os.listdir(folder) if _BACKUP_NAME.fullmatch(n))
    except FileNotFoundError:
        return []
    return [os.path.join(folder, n) for n in names]


class BackupFolder:
    """One run's backups in ``folder``: locked from ``begin`` to ``release`` (``fastnn.io.FolderLock``),
    the newest ``keep`` kept. Only the writing rank (rank 0 under data parallelism) uses one."""

    def __init__(self, folder, keep=3):
        self.folder, self.keep = os.fspath(folder), keep
        self._lock = None
        self.fingerprint = None

    def begin(self, model, run=None):
        """Take the folder's lock, remove provably stale temporaries, and fix this run's fingerprint
        (before a restore changes anything it covers, such as the lr)."""
        os.makedirs(self.folder, exist_ok=True)
        if self._lock is None or not self._lock.held:
            self._lock = FolderLock(self.folder).acquire()
            self.fingerprint = None
            clean_stale_temporaries(self.folder, locked_since=self._lock.since)
        if self.fingerprint is None:
            self.fingerprint = run_fingerprint(model, run)

    def release(self):
        """Give the folder's lock back (safe to call twice)."""
        if self._lock is not None:
            self._lock.release()

    def latest(self):
        files = backup_files(self.folder)
        return files[-1] if files else None

    def choose(self, model):
        """``(path, Checkpoint)`` to resume, or ``(None, None)`` when there is nothing to resume,
        falling back from unreadable backups to the newest good one. A newest backup that marks a
        finished run has its folder's backups removed: a new run starts."""
        files = backup_files(self.folder)
        bad = []
        for path in reversed(files):
            try:
                ckpt = read_checkpoint(model, path)
            except FormatError as exc:
                bad.append(f"{os.path.basename(path)} ({exc})")
                continue
            if not ckpt.training.get("completed"):
                check_fingerprint(path, ckpt.training.get("run"), self.fingerprint, self.folder)
                try:
                    check_position(path, ckpt.training, self.fingerprint)
                except FormatError as exc:
                    bad.append(f"{os.path.basename(path)} ({exc})")
                    continue
            if bad:
                warnings.warn(f"BackupAndRestore: skipped unreadable newer backup(s) {'; '.join(bad)}; resuming "
                              f"from {path}", RuntimeWarning, stacklevel=5)
            if ckpt.training.get("completed"):
                self.clear()
                return None, None
            return path, ckpt
        if bad:
            raise FormatError(f"{self.folder}: no backup can be read: {'; '.join(bad)}. Delete the folder "
                              f"(or give fit another checkpoint_dir) to start fresh")
        return None, None

    def write(self, model, training, completed=False):
        """Write ``ckpt-e<epoch>-b<batch>.fastnn`` for the loop state ``training`` and prune the
        oldest beyond ``keep``; a state with non-finite weights is not written."""
        training = dict(training, completed=completed, run=self.fingerprint)
        name = f"ckpt-e{training['epoch']:05d}-b{training['batch']:07d}.fastnn"
        if write_checkpoint(model, os.path.join(self.folder, name), training):
            for old in backup_files(self.folder)[:-self.keep]:
                try:
                    os.unlink(old)
                except OSError:
                    pass

    def clear(self):
        """Remove every backup of the folder (nothing else in it)."""
        for path in backup_files(self.folder):
            os.unlink(path)


_ERRORS = {cls.__name__: cls for cls in (FormatError, FolderInUseError, CheckpointMismatchError)}


def restore_from(folder, model, comm, run=None):
    """Restore ``model`` from the newest good backup in the ``BackupFolder`` ``folder`` and return its
    loop state, or None when there is nothing to resume. Under data parallelism rank 0 locks,
    cleans and decides (``folder`` is None on the other ranks) and every rank learns the outcome,
    errors included (an OSError on rank 0 alone must not leave the others waiting)."""
    path = ckpt = error = None
    if comm.rank == 0:
        try:
            folder.begin(model, run)
            path, ckpt = folder.choose(model)
        except (FormatError, FolderInUseError, CheckpointMismatchError, OSError) as exc:
            error = exc
    if comm.size > 1:
        path, message = comm.bcast_obj((path, None if error is None else (type(error).__name__, str(error))))
        if message is not None and error is None:
            error = _ERRORS.get(message[0], OSError)(message[1])
    if error is not None:
        raise error
    if path is None:
        return None
    if ckpt is None:  # another rank: every rank reads the same file
        ckpt = read_checkpoint(model, path)
    return ckpt.apply(model)
