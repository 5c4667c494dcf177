"""Keras's training entry points of a model (``fit``, ``evaluate``, ``predict``, ``train_on_batch``,
``test_on_batch``): argument handling and dispatch to ``fastnn.training`` (arrays) or
``fastnn.training.streams`` (generators and iterables of batches). Mixed into ``Sequential``."""
from __future__ import annotations

from fastnn import distributed
from fastnn.callbacks import CallbackList
from fastnn.callbacks.progress import StepProgress
from fastnn.training import fit as _fit
from fastnn.training import streams
from fastnn.training import weights as _weights
from fastnn.training.inference import evaluate_arrays, predict_arrays
from fastnn.training.loop import finalizers, host_values, means
from fastnn.training.step import TrainStep

__all__ = ["TrainingAPI"]


def _batch_size(owner, batch_size):
    return _fit.positive_int(owner, "batch_size", 32 if batch_size is None else batch_size)  # Keras's default


def _one_or_list(values):
    values = list(values)
    return values[0] if len(values) == 1 else values


class TrainingAPI:
    """``fit``/``evaluate``/``predict`` and the per-batch forms, on whatever the model describes
    (``prepare``, ``forward_pass``, ``loss``, ...)."""

    @distributed.collective("fit")  # under MPI: ranks that disagree or fail never leave the others hanging
    def fit(self, x, y=None, batch_size=None, epochs=1, verbose="auto", validation_data=None, validation_split=0.0,
            shuffle=True, callbacks=None, initial_epoch=0, seed=None, checkpoint_dir=None, resume=True, keep=3,
            save_freq="epoch", cuda_graph="auto", sample_weight=None, class_weight=None, steps_per_epoch=None,
            validation_steps=None):
        """Train for ``epochs`` epochs of mini-batches; returns a ``History``.

        ``x``, ``y``: arrays (``x`` a list of arrays, or a dict by input name, for a model with several
        inputs), or ``x`` alone as a generator or iterable of ``(x, y)`` / ``(x, y, sample_weight)``
        batches (a list of tuples, ``fastnn.datasets.DataLoader``, an object with ``__len__`` and
        ``__getitem__``); ``steps_per_epoch`` batches make an epoch (default: one pass).
        ``batch_size``: Keras's default 32 for arrays. ``validation_split`` holds out the last fraction
        of ``x``/``y`` (before shuffling, as Keras); ``validation_data=(x_val, y_val[, weights])`` or an
        iterable of batches (``validation_steps`` of them) gives a set explicitly. ``sample_weight``
        (one weight per sample) and ``class_weight`` (``{class: weight}``) weigh the loss as Keras's
        do. ``seed`` fixes the batch order (default: the model's generator). ``checkpoint_dir`` is the
        short form of ``callbacks=[BackupAndRestore(checkpoint_dir, save_freq, keep)]``: the training
        state is backed up there and, with ``resume=True``, an interrupted run continues from its
        newest backup exactly.

        On the CuPy backend the training set moves to the GPU once when it fits (half the free
        device memory; ``FASTNN_DEVICE_DATA`` and ``FASTNN_DEVICE_DATA_FRACTION`` change that);
        otherwise batches are gathered on the host into pinned buffers and copied asynchronously
        (``fastnn.feeding``). There each full-size step is replayed as a captured CUDA graph by default
        (``cuda_graph="auto"``, ``fastnn.backend.graphs``; the ragged last batch runs eagerly) wherever
        the whole step can be captured; where it cannot, the ``fastnn`` logger says why once at INFO
        level and the steps run eagerly. ``cuda_graph=False`` never captures; ``cuda_graph=True`` also
        captures around eager GEMMs when fastnn's cuBLAS handle is unusable, and warns where it cannot
        capture (on a CPU backend, say).
        """
        if streams.is_stream(x, y):
            self.require_compiled("fit()")
            return streams.fit_stream(self, x, batch_size, epochs, verbose, validation_data, validation_split,
                                      callbacks, initial_epoch, seed, checkpoint_dir, resume, keep, save_freq,
                                      cuda_graph, sample_weight, class_weight, steps_per_epoch, validation_steps)
        if validation_steps is not None and not streams.is_stream(validation_data):
            raise ValueError(f"{self.name}: validation_steps is for validation_data given as a generator or iterable")
        return _fit.fit(self, x, y, batch_size, epochs, verbose, validation_data, validation_split, shuffle, callbacks,
                        initial_epoch, seed, checkpoint_dir, resume, keep, save_freq, cuda_graph, sample_weight,
                        class_weight, steps_per_epoch)

    def evaluate_arrays(self, x, y, batch_size, comm=None, cbs=None, weights=None):
        """``{loss, *metrics}`` means over prepared arrays (``fastnn.training.inference``)."""
        return evaluate_arrays(self, x, y, batch_size, comm, cbs, weights)

    def evaluate(self, x, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None, callbacks=None,
                 return_dict=False):
        """``[loss, *metrics]`` on ``(x, y)`` (just the loss when there are no metrics), as host floats;
        ``return_dict=True`` gives ``{name: value}``. ``x`` alone may be a generator or iterable of
        batches (``steps`` of them). ``sample_weight`` weighs the loss as in ``fit``.

        ``verbose``: as Keras's, on stdout (``"auto"``/1: a live line on a terminal and the final
        ``steps/steps - time - loss: ... - accuracy: ...`` line; 2: that line only; 0: silent).
        ``callbacks``: their ``on_test_begin``, ``on_test_batch_begin/end`` and ``on_test_end`` hooks
        are called, as in Keras."""
        self.require_compiled("evaluate()")
        cbs = CallbackList(callbacks, self) if callbacks else None
        stream, steps, batch_size = self._source("evaluate", x, y, steps, batch_size=batch_size,
                                                 sample_weight=sample_weight)
        if stream:
            progress = StepProgress(verbose, steps or streams.length(x))
            logs = streams.evaluate_stream(self, x, steps, cbs, progress)
        else:
            x, y = self.prepare(x, y, move="auto")
            w = _weights.sample_weights(self, self.ops.asnumpy(y), x.shape[0], sample_weight, None)
            if w is not None:
                w = self.ops.asarray(w, dtype=self.dtype) if self.ops.owns(y) else w.astype(self.dtype)
            progress = StepProgress(verbose, -(-x.shape[0] // batch_size))
            logs = evaluate_arrays(self, x, y, batch_size, cbs=cbs, weights=w, progress=progress)
        progress.finish(logs)
        return logs if return_dict else _one_or_list(logs.values())

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Outputs for ``x`` as a host NumPy array (probabilities when the model ends in softmax/sigmoid);
        ``x`` may be a generator or iterable of batches (``steps`` of them). ``verbose`` as
        ``evaluate``'s (Keras's default ``"auto"`` prints the final ``steps/steps - time`` line).

        ``callbacks``: their ``on_predict_begin``, ``on_predict_batch_begin``,
        ``on_predict_batch_end(batch, {"outputs": host array})`` and ``on_predict_end`` hooks are
        called, as in Keras; ``model.stop_predicting = True`` stops after the current batch."""
        cbs = CallbackList(callbacks, self) if callbacks else None
        stream, steps, batch_size = self._source("predict", x, None, steps, batch_size=batch_size)
        if stream:
            progress = StepProgress(verbose, steps or streams.length(x))
            result = streams.predict_stream(self, x, steps, cbs, progress)
        else:
            x, _ = self.prepare(x, move="auto")
            progress = StepProgress(verbose, -(-x.shape[0] // batch_size))
            result = predict_arrays(self, x, batch_size, cbs, progress)
        progress.finish()
        return result

    def _source(self, what, x, y, steps, **batch_args):
        """``(is a stream, steps, batch size)`` of an ``evaluate``/``predict`` call, its arguments checked:
        a stream carries its batch size and weights; ``steps`` is for streams only."""
        if streams.is_stream(x, y):
            given = [k for k, v in batch_args.items() if v is not None]
            if given:
                raise ValueError(f"{self.name}.{what}: do not give {' or '.join(given)} with a generator or iterable "
                                 f"of batches: the batches carry them")
            return True, None if steps is None else _fit.positive_int(self.name, "steps", steps), None
        if steps is not None:
            raise ValueError(f"{self.name}.{what}: steps is for a generator or iterable of batches")
        return False, None, _batch_size(self.name, batch_args["batch_size"])

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One optimizer step on ``(x, y)``; returns ``[loss, *metrics]`` for that batch."""
        self.require_compiled("train_on_batch()")
        x, y = self.prepare(x, y)
        w = _weights.sample_weights(self, self.ops.asnumpy(y), x.shape[0], sample_weight, class_weight)
        stats = TrainStep.of(self).step(x, y, weights=None if w is None else self.ops.asarray(w, dtype=self.dtype))
        names = self.stat_names()
        return _one_or_list(means(names, host_values(self.ops, stats, names), x.shape[0], finalizers(self)).values())

    def test_on_batch(self, x, y, sample_weight=None):
        """``[loss, *metrics]`` on one batch without training."""
        self.require_compiled("test_on_batch()")
        x, y = self.prepare(x, y)
        w = _weights.sample_weights(self, self.ops.asnumpy(y), x.shape[0], sample_weight, None)
        w = None if w is None else self.ops.asarray(w, dtype=self.dtype)
        return _one_or_list(evaluate_arrays(self, x, y, x.shape[0], weights=w).values())
