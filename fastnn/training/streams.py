"""``fit``, ``evaluate`` and ``predict`` on batches that arrive one by one, as Keras takes them: a
generator, any iterable of batches (a list of tuples, ``fastnn.datasets.DataLoader``), or a
Keras-``PyDataset``-like object with ``__len__`` and ``__getitem__``.

A batch is ``(x, y)`` or ``(x, y, sample_weight)`` (``x`` alone for ``predict``; ``x`` may be a list
of arrays for a model with several inputs). Each batch is validated as it arrives (the data is not
known in advance). An epoch is one pass over a re-iterable source, or ``steps_per_epoch`` batches;
with ``steps_per_epoch`` the source is read on across epochs (restarted where it can be, as
Keras does). A one-shot generator that runs out ends training with a warning, as in Keras.
"""
from __future__ import annotations

import itertools
import warnings

import numpy

from fastnn import distributed, feeding
from fastnn.callbacks import CallbackList
from fastnn.random import make_rng
from fastnn.training import weights as _weights
from fastnn.training.fit import dropout_streams, positive_int, validation_end, with_backup
from fastnn.training.inference import eval_batch
from fastnn.training.loop import finalizers, host_values, means, progress_callbacks, run_loop
from fastnn.training.step import TrainStep

__all__ = ["is_stream", "length", "fit_stream", "evaluate_stream", "predict_stream", "Stream"]


def is_stream(x, y=None):
    """True for batches to read one by one: a generator, an iterator, an iterable that is not an
    array, a list of arrays (several inputs) or a dict, or an object with ``__len__`` and
    ``__getitem__`` that is not array-like; only when no ``y`` is given."""
    if y is not None or x is None or isinstance(x, (dict, str, bytes, feeding.Inputs)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__") or hasattr(x, "shape"):
        return False
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(b, (tuple, list, dict)) for b in x)
    return hasattr(x, "__iter__") or hasattr(x, "__next__") or (hasattr(x, "__len__") and hasattr(x, "__getitem__"))


def length(source):
    """``len(source)``, or None for a generator."""
    try:
        return len(source)
    except TypeError:
        return None


class Stream:
    """Batches of ``source`` for the loop: ``epoch(e)`` yields up to ``steps`` batches (default: one
    pass). ``rng`` exists for the loop's bookkeeping (a stream draws nothing)."""

    def __init__(self, source, steps=None, owner="fit"):
        self.source, self.steps, self.owner = source, steps, owner
        self.rng = make_rng(0)
        self._it = None
        self._peeked = False
        self.ran_out = False

    def peek(self):
        """The first batch, read now and still given by the first epoch (to build a model from)."""
        self._it = self._fresh()
        raw = next(self._it, _END)
        if raw is _END:
            raise ValueError(f"{self.owner}: the generator or iterable gave no batches")
        self._it, self._peeked = itertools.chain([raw], self._it), True
        return Batch(raw, self.owner)

    def _fresh(self):
        src = self.source
        if hasattr(src, "__getitem__") and hasattr(src, "__len__") and not hasattr(src, "__iter__"):
            return (src[i] for i in range(len(src)))  # a Keras PyDataset/Sequence
        return iter(src)

    def _restartable(self):
        return not hasattr(self.source, "__next__")  # an iterator or generator is read once

    def epoch(self, epoch):
        if self._it is None or (self.steps is None and not self._peeked):
            self._it = self._fresh()
        self._peeked = False
        taken = 0
        while self.steps is None or taken < self.steps:
            batch = next(self._it, _END)
            if batch is _END:
                if self.steps is None or not self._restartable():
                    break
                self._it = self._fresh()  # read on across epochs: start the source again
                batch = next(self._it, _END)
                if batch is _END:
                    break
            taken += 1
            yield Batch(batch, self.owner)
        self.ran_out = taken == 0 or (self.steps is not None and taken < self.steps)
        end = getattr(self.source, "on_epoch_end", None)
        if callable(end):
            end()


_END = object()


class Batch:
    """One batch read from a stream: ``x``, ``y``, ``w`` (None when absent); ``len`` is its sample count."""

    def __init__(self, batch, owner):
        if not isinstance(batch, (tuple, list)):
            batch = (batch,)  # x alone (predict)
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{owner}: each batch must be a tuple (x, y) or (x, y, sample_weight), got "
                             f"{type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (
                                 tuple, list)) else ""))
        self.x = batch[0]
        self.y = batch[1] if len(batch) > 1 else None
        self.w = batch[2] if len(batch) > 2 else None
        first = self.x[0] if isinstance(self.x, (list, tuple)) else (
            next(iter(self.x.values())) if isinstance(self.x, dict) else self.x)
        self.n = int(numpy.shape(first)[0]) if numpy.ndim(first) else 0

    def __len__(self):
        return self.n


def _prepared(model, batch, class_weight, what=("x", "y")):
    """``(x, y, w)`` of one batch, checked and on the model's device."""
    if batch.y is None:
        raise ValueError(f"{model.name}: a training or evaluation batch needs targets: (x, y) or (x, y, "
                         f"sample_weight), got x alone")
    x, y = model.prepare(batch.x, batch.y, what=what)
    n = x.shape[0]
    w = _weights.sample_weights(model, model.ops.asnumpy(y), n, batch.w, class_weight)
    return x, y, None if w is None else model.ops.asarray(w, dtype=model.dtype)


def _steps(owner, name, value):
    return None if value is None else positive_int(owner, name, value)


def fit_stream(model, source, batch_size, epochs, verbose, validation_data, validation_split, callbacks,
               initial_epoch, seed, checkpoint_dir, resume, keep, save_freq, cuda_graph, sample_weight, class_weight,
               steps_per_epoch, validation_steps):
    """``fit`` on a stream of batches."""
    name = model.name
    for arg, value in (("batch_size", batch_size), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(f"{name}: do not give {arg} with a generator or iterable of batches: the batches carry "
                             f"it (batch size: their length; weights: a third item)")
    if validation_split:
        raise ValueError(f"{name}: validation_split needs arrays; with a generator or iterable give validation_data")
    if cuda_graph is True or cuda_graph is numpy.True_:   # "auto" says nothing: streams are simply eager
        warnings.warn(f"{name}: fit(cuda_graph=True) needs arrays; batches from a generator run eagerly",
                      RuntimeWarning, stacklevel=3)
    comm = distributed.get()
    if comm.size > 1:
        raise ValueError(f"{name}: fit on a generator or iterable is not supported under data parallelism; give "
                         f"each rank the same arrays (fastnn shards every batch)")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, numpy.integer)) or epochs < 0:
        raise ValueError(f"{name}: epochs must be a non-negative integer, got {epochs!r}")
    steps = _steps(name, "steps_per_epoch", steps_per_epoch)
    stream = Stream(source, steps, name)
    if not model.built:
        first = stream.peek()
        model.prepare(first.x, first.y, move=False)  # builds the model from the first batch's shapes
    if seed is not None:
        dropout_streams(model, seed)
    history, cbs = progress_callbacks(with_backup(callbacks, checkpoint_dir, save_freq, keep, resume), verbose,
                                      epochs, None, steps=steps or length(source))
    cbs = CallbackList(cbs, model)
    trainer = TrainStep.of(model)

    def step(batch):
        xb, yb, wb = _prepared(model, batch, class_weight)
        return trainer.guarded(lambda: trainer.step(xb, yb, weights=wb), len(batch))

    val_end = _validation(model, validation_data, validation_steps, cbs)

    def epoch_end(epoch, logs):
        if stream.ran_out and not logs:
            warnings.warn(f"{name}: the input ran out of data at epoch {epoch + 1}; training stops (give "
                          f"steps_per_epoch * epochs batches, or a source that can be iterated again)",
                          UserWarning, stacklevel=2)
            model.stop_training = True
            return
        val_end(epoch, logs)

    run_loop(model, stream, step, epochs=epochs, initial_epoch=initial_epoch, callbacks=cbs, epoch_end=epoch_end,
             history=history, comm=None, run_info={"samples": None, "batch_size": None, "shuffle": False,
                                                   "seed": model.seed_record(seed)})
    return history


def _validation(model, validation_data, validation_steps, cbs):
    """The loop's ``epoch_end`` for ``validation_data`` given as arrays or as a stream."""
    if validation_data is None or not is_stream(validation_data):
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError(f"{model.name}: validation_data must be (x_val, y_val[, sample_weight]) or a "
                                 f"generator or iterable of batches")
            xv, yv = model.prepare(*validation_data[:2], what=("validation x", "validation y"), move="auto")
            wv = None if len(validation_data) < 3 or validation_data[2] is None else model.ops.asarray(
                _weights.sample_weights(model, model.ops.asnumpy(yv), xv.shape[0], validation_data[2], None),
                dtype=model.dtype)
            val = (xv, yv, wv)
        return validation_end(model, val, 32, None, cbs)
    steps = _steps(model.name, "validation_steps", validation_steps)

    def epoch_end(epoch, logs):
        for k, v in evaluate_stream(model, validation_data, steps, cbs).items():
            logs["val_" + k] = v
    return epoch_end


def evaluate_stream(model, source, steps=None, cbs=None, progress=None):
    """``{loss, *metrics}`` over the batches of ``source`` (up to ``steps``)."""
    if cbs is not None:
        model.stop_evaluating = False
        cbs.on_test_begin({})
    sums, count = {}, 0
    for i, batch in enumerate(Stream(source, steps, f"{model.name}.evaluate").epoch(0)):
        if cbs is not None:
            cbs.on_test_batch_begin(i, {"size": len(batch)})
        xb, yb, wb = _prepared(model, batch, None)
        eval_batch(model, xb, yb, wb, sums)
        count += len(batch)
        if progress is not None:
            progress(i + 1, len(batch))
        if cbs is not None:
            cbs.on_test_batch_end(i, {"size": len(batch)})
            if model.stop_evaluating:
                break
    if not count:
        raise ValueError(f"{model.name}.evaluate: the generator or iterable gave no batches")
    keys = model.stat_names()
    logs = means(keys, host_values(model.ops, sums, keys), count, finalizers(model))
    if cbs is not None:
        cbs.on_test_end(logs)
    return logs


def predict_stream(model, source, steps=None, cbs=None, progress=None):
    """The outputs for the batches of ``source`` (each ``x`` or a tuple starting with ``x``), one host array."""
    ops, outs = model.ops, []
    if cbs is not None:
        model.stop_predicting = False
        cbs.on_predict_begin({})
    for i, batch in enumerate(Stream(source, steps, f"{model.name}.predict").epoch(0)):
        if cbs is not None:
            cbs.on_predict_batch_begin(i, {"size": len(batch)})
        x, _ = model.prepare(batch.x)
        outs.append(model.apply_head(model.forward_pass(x, False)))
        if progress is not None:
            progress(i + 1, len(batch))
        if cbs is not None:
            cbs.on_predict_batch_end(i, {"outputs": ops.asnumpy(outs[-1])})
            if model.stop_predicting:
                break
    if not outs:
        raise ValueError(f"{model.name}.predict: the generator or iterable gave no batches")
    result = ops.asnumpy(ops.xp.concatenate(outs))
    if cbs is not None:
        cbs.on_predict_end({})
    return result

