"""``Sequential.fit``: checks its arguments, places the data, fixes the run's random streams, agrees
with the other ranks, and runs the one loop (``fastnn.training.loop.run_loop``) over
``TrainStep`` steps. Callbacks are plug-ins: ``fit`` treats them all alike (``checkpoint_dir`` only
appends a ``BackupAndRestore``)."""
from __future__ import annotations

import contextlib
import functools
import logging

import numpy

from fastnn import distributed, feeding
from fastnn.callbacks import BackupAndRestore, CallbackList
from fastnn.layers.base import shape_str
from fastnn.layers.core import Dropout
from fastnn.random import draw_seed, make_rng
from fastnn.training.loop import ShuffleSampler, progress_callbacks, run_loop
from fastnn.training.replicas import sync_replicas
from fastnn.training import weights
from fastnn.training.step import TrainStep

__all__ = ["fit", "positive_int", "place_training_data", "with_backup", "validation_end", "dropout_streams"]

log = logging.getLogger("fastnn")


def positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_args(model, x, y, batch_size, epochs, validation_split, shuffle, initial_epoch, cuda_graph):
    name = model.name
    if y is None:
        raise ValueError(f"{name}.fit: y is required (the targets of x, {len(x) if hasattr(x, '__len__') else '?'} "
                         f"samples); fastnn's fit takes arrays x and y")
    batch_size = positive_int(name, "batch_size", 32 if batch_size is None else batch_size)  # Keras's default
    if not (isinstance(cuda_graph, (bool, numpy.bool_)) or (isinstance(cuda_graph, str) and cuda_graph == "auto")):
        raise TypeError(f"{name}: cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, numpy.integer)) or epochs < 0:
        raise ValueError(f"{name}: epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, numpy.integer)) or initial_epoch < 0:
        raise ValueError(f"{name}: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
    if not isinstance(shuffle, (bool, numpy.bool_)):
        raise TypeError(f"{name}: shuffle must be True or False, got {shuffle!r}")
    if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise ValueError(f"{name}: validation_split must be in [0, 1), got {validation_split!r}")
    return batch_size


def _split(model, x, y, validation_data, validation_split, sample_weight=None, class_weight=None):
    """``(x, y, w, val)``: the training arrays (checked, on the host or where given), their weights
    (host, or None) and the validation set ``(x, y, w)``."""
    x, y = model.prepare(x, y, move=False)
    w = weights.sample_weights(model, y, x.shape[0], sample_weight, class_weight)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError(f"{model.name}: validation_data must be (x_val, y_val) or (x_val, y_val, "
                             f"sample_weight_val)")
        xv, yv = model.prepare(*validation_data[:2], what=("validation x", "validation y"), move="auto")
        wv = None
        if len(validation_data) == 3 and validation_data[2] is not None:
            wv = weights.sample_weights(model, yv, xv.shape[0], validation_data[2], None)
        val = (xv, yv, _device_weights(model, xv, wv))
    elif validation_split:
        n_val = int(x.shape[0] * validation_split)
        if n_val == 0 or n_val == x.shape[0]:
            raise ValueError(f"{model.name}: validation_split={validation_split} of {x.shape[0]} samples leaves "
                             f"{n_val} for validation and {x.shape[0] - n_val} for training")
        xv, yv = model.prepare(x[-n_val:], y[-n_val:], move="auto")
        val = (xv, yv, None if w is None else _device_weights(model, xv, w[-n_val:]))
        x, y, w = x[:-n_val], y[:-n_val], None if w is None else w[:-n_val]
    return x, y, w, val


def _device_weights(model, x, w):
    """Evaluation weights beside ``x``: on the device when ``x`` is, else host arrays of the model's dtype."""
    if w is None:
        return None
    rows = x.arrays[0] if isinstance(x, feeding.Inputs) else x
    return model.ops.asarray(w, dtype=model.dtype) if model.ops.owns(rows) else w.astype(model.dtype)


def place_training_data(model, x, y, batch_size):
    """``(x, y, feeder)``: on the device when the set fits (or already lives there), else left on
    the host with a ``HostBatches`` feeder of pinned, double-buffered, asynchronous copies.
    ``FASTNN_DEVICE_DATA=host`` asks for the feeder on any backend (on a CPU backend it only
    copies batches, which is how its path through ``fit`` is tested without a GPU)."""
    ops, dtype = model.ops, model.dtype
    if isinstance(x, feeding.Inputs):  # a model with several inputs: each array moves once, no feeder
        x = x.map(lambda a: a if ops.owns(a) and a.dtype == dtype else ops.asarray(a, dtype=dtype))
        return x, (y if ops.owns(y) else ops.asarray(y)), None
    gpu = ops.device_arrays
    resident = gpu and ops.owns(x)  # the caller's device data stays put (its labels follow it)
    if not resident and (gpu or feeding.data_placement() == "host"):
        nbytes = x.size * dtype.itemsize + y.size * y.dtype.itemsize
        if feeding.feeds_from_host(ops, nbytes):
            x, y = ops.asnumpy(x), ops.asnumpy(y)
            log.info("%s: the training set (%s) stays on the host; batches are copied from pinned memory",
                             model.name, shape_str(x.shape))
            rows = max(1, min(batch_size, x.shape[0]))  # pinned buffers for no more rows than there are
            return x, y, feeding.HostBatches(x, y, dtype, rows, feeding.make_transfer(ops))
    x = x if ops.owns(x) and x.dtype == dtype else ops.asarray(x, dtype=dtype)
    if not ops.owns(y):
        y = ops.asarray(y)
    return x, y, None


def dropout_streams(model, seed):
    """``fit(seed=n)`` fixes every stream fit draws: the batch order and dropout's. Dropout gets its
    own stream ("drop"), so the batch order is the same as without dropout."""
    streams = numpy.random.default_rng(seed.bit_generator.seed_seq.spawn(1)[0] if isinstance(
        seed, numpy.random.Generator) else [int(seed), 0x64726F70])
    for layer in model.layers:
        if isinstance(layer, Dropout) and layer.seed_drawn:
            layer.seed = draw_seed(streams)


def _digests(ops, x, y):
    arrays = x.arrays if isinstance(x, feeding.Inputs) else (x,)
    return tuple(distributed.sample_digest(ops, a) for a in (*arrays, y))


def _agree(model, comm, rng, x, y, val, callbacks, w=None, **settings):
    """Under data parallelism: every rank runs the same fit on the same data (checked), from rank
    0's parameters, optimizer state and seeds."""
    ops = model.ops
    settings.update({
        "training samples": x.shape[0], "validation samples": None if val is None else val[0].shape[0],
        # BackupAndRestore's writes are collectives: its save_freq must agree too
        "callbacks": [type(cb).__name__ + (f"(save_freq={cb.save_freq!r})" if isinstance(cb, BackupAndRestore)
                                           else "") for cb in callbacks],
        "training data (digest of sampled rows)": _digests(ops, x, y),
        "validation data (digest of sampled rows)": None if val is None else _digests(ops, val[0], val[1]),
        "sample weights (digest)": None if w is None else distributed.checksum(numpy.asarray(ops.asnumpy(w)))})
    sync_replicas(model, comm, rng, {k: repr(v.item() if isinstance(v, numpy.generic) else v)
                                                 for k, v in settings.items()})


def fit(model, x, y, batch_size=None, epochs=1, verbose="auto", validation_data=None, validation_split=0.0,
        shuffle=True, callbacks=None, initial_epoch=0, seed=None, checkpoint_dir=None, resume=True, keep=3,
        save_freq="epoch", cuda_graph="auto", sample_weight=None, class_weight=None, steps_per_epoch=None):
    """``Sequential.fit`` on arrays (see its docstring; ``fastnn.training.streams`` takes generators);
    returns the ``History``."""
    model.require_compiled("fit()")
    if steps_per_epoch is not None:
        raise ValueError(f"{model.name}: steps_per_epoch is for a generator or iterable of batches; with arrays an "
                         f"epoch is one pass over x (fastnn.datasets.DataLoader(x, y) is an iterable)")
    batch_size = _check_args(model, x, y, batch_size, epochs, validation_split, shuffle, initial_epoch, cuda_graph)
    x, y, w, val = _split(model, x, y, validation_data, validation_split, sample_weight, class_weight)
    x, y, feeder = place_training_data(model, x, y, batch_size)
    if w is not None:
        w = w.astype(model.dtype) if feeder is not None else model.ops.asarray(w, dtype=model.dtype)
    n = x.shape[0]
    rng = make_rng(seed) if seed is not None else model.rng
    if seed is not None:
        dropout_streams(model, seed)
    callbacks = with_backup(callbacks, checkpoint_dir, save_freq, keep, resume)
    comm = distributed.get()
    if comm.size > 1:
        _agree(model, comm, rng, x, y, val, callbacks, w, batch_size=batch_size, epochs=epochs,
               initial_epoch=initial_epoch, shuffle=shuffle, cuda_graph=cuda_graph, weighted=w is not None)
        if comm.rank != 0:
            verbose = 0
    history, cbs = progress_callbacks(callbacks, verbose, epochs, n, steps=-(-n // batch_size))
    cbs = CallbackList(cbs, model)  # one list: the loop's hooks and the validation's on_test_* hooks
    # what a checkpoint's run fingerprint records of this fit (fastnn.checkpoint.run_fingerprint)
    run_info = {"samples": int(n), "batch_size": int(batch_size), "shuffle": bool(shuffle), "seed": model.seed_record(
        seed)}
    trainer = TrainStep.of(model)
    graphs = trainer.graphs_for(cuda_graph, batch_size, comm, x, y, weighted=w is not None,
                                steps=max(epochs - initial_epoch, 0) * (n // batch_size))
    plan = None
    if comm.size == 1 and graphs is None and feeder is None and w is None and not isinstance(x, feeding.Inputs):
        plan, prepared = trainer.plan_for(batch_size, x, y)  # one compiled call per batch, where the backend has one
    if plan is not None:
        step = CompiledSteps(trainer, plan, prepared, model.stat_names(), batch_size, x, y)
    else:
        step = functools.partial(_step, trainer, graphs, comm, Batches(x, y, w, feeder), batch_size)
    with contextlib.ExitStack() as stack:
        if graphs is not None:
            stack.enter_context(graphs.ordered())  # the whole fit on the capture stream
        if feeder is not None:
            stack.enter_context(feeder)
        run_loop(model, ShuffleSampler(n, batch_size, shuffle, rng), step, epochs=epochs, initial_epoch=initial_epoch,
                 callbacks=cbs, epoch_end=validation_end(model, val, batch_size, comm, cbs), history=history,
                 comm=comm, run_info=run_info)
    return history


def with_backup(callbacks, checkpoint_dir, save_freq, keep, resume):
    """The user's callbacks, plus ``BackupAndRestore`` for ``checkpoint_dir``."""
    callbacks = list(callbacks or [])
    if checkpoint_dir is not None:
        callbacks.append(BackupAndRestore(checkpoint_dir, save_freq=save_freq, keep=keep, resume=resume))
    return callbacks


def validation_end(model, val, batch_size, comm, cbs):
    """The loop's ``epoch_end``: ``val_*`` logs from the validation arrays ``(x, y, w)`` (or none)."""
    def epoch_end(epoch, logs):
        if val is not None:
            for k, v in model.evaluate_arrays(val[0], val[1], batch_size, comm, cbs, weights=val[2]).items():
                logs["val_" + k] = v
    return epoch_end


class CompiledSteps:
    """``fit``'s step through the backend's compiled call (``Ops.train_plan``): one batch per call, or
    a run of batches in one call (``many``: the loop uses it when no callback needs each batch). A
    callback that changed what the plan's tables describe (froze a layer, excluded a weight from
    decay) gets a new plan, or the eager step if none fits any more."""

    def __init__(self, trainer, plan, prepared, names, batch_size, x, y):
        self.trainer, self.plan, self.prepared, self.names = trainer, plan, prepared, names
        self.batch_size, self.x, self.y = batch_size, x, y

    def _current(self):
        if self.plan is None or not self.plan.still_valid():
            self.plan, self.prepared = self.trainer.plan_for(self.batch_size, self.x, self.y)
        return self.plan

    def __call__(self, idx):
        return self.many([idx])[0]

    def many(self, batches):
        """Each batch's sums, ``batches`` (fit's sampler's index arrays, all but the last full) in order."""
        plan = self._current()
        if plan is None:
            return [self.trainer.step(*_gather(self.trainer.model.ops, self.x, self.y, idx)) for idx in batches]
        if len(batches) == 1:
            return plan.step(self.prepared, batches[0], self.names)
        return plan.step(self.prepared, numpy.concatenate(batches), self.names)


def _gather(ops, x, y, idx):
    sel = ops.asarray(idx) if ops.device_arrays else idx
    return x[sel], y[sel]


class Batches:
    """The training arrays of an eager ``fit``: ``get(rows)`` gives ``(x, y, weights or None)`` of
    those rows on the device (from the device arrays, or through the host feeder).

    From device arrays the rows are gathered with ``take`` into buffers kept per batch size (one
    index upload per step, no new arrays in the steady state): a step consumes its batch before
    the next one is gathered, in stream order. Host arrays are indexed as they are."""

    def __init__(self, x, y, w, feeder):
        self.x, self.y, self.w, self.feeder = x, y, w, feeder
        self._bufs = {}  # (which, rows) -> the gathered batch's buffer

    def get(self, ops, rows):
        if self.feeder is not None:
            xb, yb = self.feeder.get(rows)
            wb = None if self.w is None else ops.asarray(self.w[rows])
            return xb, yb, wb
        if not ops.device_arrays:  # host arrays: NumPy's fancy indexing (its take into out= is slower)
            return self.x[rows], self.y[rows], None if self.w is None else self.w[rows]
        sel = ops.asarray(rows)
        n = len(rows)
        xb, yb = self._take(0, self.x, sel, n), self._take(1, self.y, sel, n)
        wb = None if self.w is None else self._take(2, self.w, sel, n)
        return xb, yb, wb

    def _take(self, which, a, sel, n):
        buf = self._bufs.get((which, n))
        if buf is None:
            buf = self._bufs[(which, n)] = a[sel]  # the first batch of this size: its own gather
            return buf
        return a.take(sel, axis=0, out=buf)


def _step(trainer, graphs, comm, data, batch_size, idx):
    """One batch of ``fit``: this rank's shard of ``idx``, through the captured graph when there is
    one for its shape, else eagerly; retried once after freeing memory on an out-of-memory error."""
    return trainer.guarded(lambda: _shard_step(trainer, graphs, comm, data, batch_size, idx), len(idx))


def _shard_step(trainer, graphs, comm, data, batch_size, idx):
    if comm.size == 1:
        local, lo = idx, 0
    else:
        lo, hi = distributed.shard(len(idx), comm.rank, comm.size)
        local = idx[lo:hi]
    if graphs is not None and len(idx) == batch_size and len(local):
        fill = functools.partial(trainer.fill_slots, data.x, data.y, data.w, local, data.feeder)
        stats = graphs.step(fill, len(idx), lo, comm if comm.size > 1 else None,
                            index=local if data.feeder is None else None)
        if stats is not None:
            return stats
    xb, yb, wb = data.get(trainer.model.ops, local)
    if comm.size == 1:
        return trainer.step(xb, yb, weights=wb)
    return trainer.step(xb, yb, len(idx), lo, comm, weights=wb)
