"""The one training loop and its two batch samplers.

``Sequential.fit`` and the book's ``Trainer.train`` both run ``run_loop``: ``fit`` with
``ShuffleSampler`` (a fresh permutation each epoch, as Keras), the book's ``Trainer`` with
``ReplacementSampler`` (``numpy.random.choice(train_size, batch_size)`` each step, as the book's
code). Losses and metrics are summed on the device and come back once per epoch.
"""
from __future__ import annotations

import collections.abc

import numpy

from fastnn import distributed
from fastnn.callbacks import CallbackList, History, ProgressBar
from fastnn.random import make_rng

__all__ = ["ShuffleSampler", "ReplacementSampler", "LoopState", "BatchLogs", "EvalLogs", "run_loop",
           "progress_callbacks", "restore_sums"]


class ShuffleSampler:
    """Index batches covering every sample once per epoch, shuffled per epoch when ``shuffle``."""

    def __init__(self, n, batch_size, shuffle=True, rng=None):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.rng = rng if rng is not None else make_rng()

    def epoch(self, epoch):
        order = self.rng.permutation(self.n) if self.shuffle else numpy.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size]


class ReplacementSampler:
    """``steps_per_epoch`` batches per epoch, each drawn with replacement (the book's ``Trainer``)."""

    def __init__(self, n, batch_size, steps_per_epoch, rng=None):
        self.n, self.batch_size, self._steps = n, batch_size, steps_per_epoch
        self.rng = rng if rng is not None else make_rng()

    def epoch(self, epoch):
        for _ in range(self._steps):
            yield self.rng.choice(self.n, self.batch_size)


def finalizers(model):
    """``{name: metric.result}`` of the model's metrics whose batch values are counts, not sums to
    average (``fastnn.metrics.Precision``, ``AUC``, ...)."""
    return {m.name: m.result for m in getattr(model, "metrics", ()) if getattr(m, "size", None)}


def host_values(ops, sums, names):
    """The device sums ``sums[name]`` (0-d, or 1-d counts) as host float64 values, in one transfer:
    ``[float or 1-d array]`` in the order of ``names``."""
    if not names:
        return []
    xp = ops.xp
    flat = ops.asnumpy(xp.concatenate([xp.reshape(sums[k], (-1,)).astype(xp.float64) for k in names]))
    return split_values(flat, [int(sums[k].size) if sums[k].ndim else None for k in names])


def split_values(flat, sizes):
    """``flat`` cut into a float per ``None`` in ``sizes`` and an array per count."""
    out, i = [], 0
    for size in sizes:
        out.append(float(flat[i]) if size is None else numpy.array(flat[i:i + size]))
        i += 1 if size is None else size
    return out


def means(names, values, count, finals):
    """The logs: each value over ``count``, or the metric's own ``result`` for counts."""
    return {k: finals[k](v, count) if k in finals else float(v) / count for k, v in zip(names, values)}


class _Sums:
    """Per-epoch sums kept on the device: ``{name: 0-d array or 1-d counts}`` plus the sample count;
    with a communicator, ``result`` sums them over the ranks. ``finals``: see ``finalizers``."""

    def __init__(self, ops, comm=None, finals=None):
        self.ops = ops
        self.comm = comm
        self.finals = finals or {}
        self.sums = {}
        self.count = 0
        self.last = None

    def add(self, stats, size):
        """Add a batch's sums; ``size`` is the (global) batch size, of which this rank counts its shard."""
        self.last = (stats, size)
        if self.comm is not None and self.comm.size > 1:  # host_sums adds the ranks' counts up
            lo, hi = distributed.shard(size, self.comm.rank, self.comm.size)
            size = hi - lo
        sums = self.sums
        for k, v in stats.items():
            total = sums.get(k)
            if total is None:  # a copy: a captured step's statistics are its graph's buffers, rewritten next step
                sums[k] = v.copy() if hasattr(v, "copy") else v
            elif getattr(total, "shape", None) == getattr(v, "shape", ()) and getattr(total, "dtype", None) == getattr(
                    v, "dtype", None) and hasattr(total, "__iadd__") and getattr(total, "ndim", None) is not None:
                total += v         # in place: no new array per batch (same dtype and shape, so the same sum)
            else:
                sums[k] = total + v
        self.count += size

    def host_sums(self, local=False):
        """``(names, host float64 values, count)`` (a float per sum, an array per metric's counts),
        summed over ranks under data parallelism unless ``local`` (a collective must be called by
        every rank; per-batch logs stay local)."""
        names = list(self.sums)
        values = host_values(self.ops, self.sums, names)
        count = self.count
        if not local and self.comm is not None and self.comm.size > 1:
            flat = numpy.concatenate([numpy.ravel(v) for v in values] + [[count]])
            reduced = self.comm.allreduce_host(flat)
            values = split_values(reduced[:-1], [None if numpy.ndim(v) == 0 else len(v) for v in values])
            count = int(reduced[-1])
        return names, values, count

    def result(self, local=False):
        names, values, count = self.host_sums(local)
        if not count or not names:
            return {}
        return means(names, values, count, self.finals)


class _LazyLogs(collections.abc.Mapping):
    """A batch hook's logs, computed on first read (one device sync) and kept: ``_read()`` makes them."""

    _values = None

    def _compute(self):
        if self._values is None:
            self._values = self._read()
        return self._values

    def __getitem__(self, key):
        return self._compute()[key]

    def __iter__(self):
        return iter(self._compute())

    def __len__(self):
        return len(self._compute())


class BatchLogs(_LazyLogs):
    """Logs for ``on_batch_end``, computed only when read (one device sync on first access).

    ``loss`` and metrics are running means over the epoch so far, as in Keras (over this rank's
    shards under data parallelism); ``batch_loss`` is the last batch's; ``size`` is the batch's
    sample count.
    """

    def __init__(self, sums, batch, size=None):
        self._sums, self._batch = sums, batch
        self._size = size  # a run of batches trained in one call: their total (else the last batch's)

    def _samples(self):
        return self._sums.last[1] if self._size is None else self._size

    def _read(self):
        values = self._sums.result(local=True)  # this rank's running means: no collective per batch
        stats, size = self._sums.last
        if "loss" in stats:
            values["batch_loss"] = float(self._sums.ops.asnumpy(stats["loss"])) / size
        values["size"] = self._samples()
        values["batch"] = self._batch
        return values

    def __getitem__(self, key):
        if key == "size":
            return self._samples()
        return self._compute()[key]

    def get(self, key, default=None):
        if key == "size":
            return self._samples()
        return self._compute().get(key, default)


class EvalLogs(_LazyLogs):
    """Logs for ``on_test_batch_end``: the running means of ``evaluate`` so far (``loss`` and metrics,
    as Keras), computed only when read (one device sync on first access)."""

    def __init__(self, ops, sums, count, finals=None):
        self._ops, self._sums, self._count, self._finals = ops, dict(sums), count, finals or {}

    def _read(self):
        names = list(self._sums)
        return means(names, host_values(self._ops, self._sums, names), self._count, self._finals)


class LoopState:
    """Where the running loop is (``model.training_loop`` during ``fit``): the epoch, the next batch,
    the sampler's state at the epoch's start and the epoch's partial sums; everything a checkpoint
    needs to continue as if nothing had happened. ``run_info`` says what the run trains on
    (samples, batch size, shuffle, seed: a checkpoint's run fingerprint records it)."""

    def __init__(self, model, sampler, history=None, run_info=None):
        self.model, self.sampler = model, sampler
        self.epoch = 0
        self.batch = 0
        self.epoch_start_state = None
        self.sums = None
        self.history = history
        self.run_info = run_info
        self.resume = None  # a snapshot to continue from, given by resume_from before the first batch
        self.finished = None  # (epoch, logs) of the last finished epoch, before History records it

    def snapshot(self):
        """A JSON-able record (one device sync for the partial sums; a collective under data
        parallelism, so every rank calls it)."""
        sums = self.sums
        host, count = {}, 0
        if sums is not None:
            names, values, count = sums.host_sums()
            host = {k: v if numpy.ndim(v) == 0 else v.tolist() for k, v in zip(names, values)}
        history = None
        if self.history is not None:
            history = {"history": {k: list(v) for k, v in self.history.history.items()},
                       "epoch": list(self.history.epoch)}
            if self.finished is not None and self.finished[0] not in history["epoch"]:
                history["epoch"].append(self.finished[0])
                for k, v in self.finished[1].items():
                    history["history"].setdefault(k, []).append(v)
        step = self.model.state(weights=False)["step"] if hasattr(self.model, "state") else 0
        return {"epoch": self.epoch, "batch": self.batch, "sampler_state": self.epoch_start_state,
                "sums": host, "count": count, "model_step": step, "history": history}

    def resume_from(self, snapshot):
        """Continue from ``snapshot`` (a checkpoint's loop state): called from ``on_train_begin``
        (``BackupAndRestore``), before the first batch."""
        self.resume = snapshot


def restore_sums(ops, saved, comm=None, dtype=numpy.float64, finals=None):
    """The interrupted epoch's running sums. In one process they were sums in the model's dtype,
    saved exactly as float64: restored in that dtype, the epoch's logs continue bit for bit. Under
    data parallelism they are sums over the ranks, kept in float64."""
    sums = _Sums(ops, comm, finals)
    if comm is not None and comm.size > 1:
        dtype = numpy.float64
    for k, v in (saved.get("sums") or {}).items():
        sums.sums[k] = ops.xp.asarray(v, dtype=dtype)
    sums.count = int(saved.get("count", 0))
    return sums


def run_loop(model, sampler, train_step, *, epochs, initial_epoch=0, callbacks=(), epoch_end=None, history=None,
             comm=None, run_info=None):
    """The training loop shared by ``Sequential.fit`` and ``Trainer``.

    ``train_step(idx)`` trains on the samples ``idx`` (host int array) and returns
    ``{name: 0-d device array}`` holding sums over the batch; ``epoch_end(epoch, logs)`` may add
    validation results to ``logs``. A callback's ``on_train_begin`` may hand the running loop
    (``model.training_loop``) a ``LoopState.snapshot()`` through ``resume_from``, which continues an
    interrupted run exactly: the epoch's batch order is regenerated from the sampler state saved at
    the epoch's start and the batches already trained are skipped. When anything raises, every
    callback's ``on_train_abort(exception)`` runs before the exception leaves. Returns the last
    epoch's logs.
    """
    cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks, model)
    state = model.training_loop = LoopState(model, sampler, history, run_info)
    model.stop_training = False
    try:
        return _run(model, sampler, train_step, cbs, state, epochs, initial_epoch, epoch_end, comm)
    except BaseException as exc:
        for cb in cbs.callbacks:
            try:
                getattr(cb, "on_train_abort", lambda e: None)(exc)
            except Exception:  # the run's own exception is the one to report
                pass
        raise
    finally:
        model.training_loop = None


def _run(model, sampler, train_step, cbs, state, epochs, initial_epoch, epoch_end, comm):
    logs = {}
    cbs.on_train_begin({})
    start_epoch, skip = initial_epoch, 0
    resume = state.resume
    if resume is not None:
        start_epoch, skip = int(resume["epoch"]), int(resume["batch"])
        if resume.get("sampler_state") is not None:
            sampler.rng.bit_generator.state = resume["sampler_state"]
        if state.history is not None and resume.get("history"):
            state.history.history = {k: list(v) for k, v in resume["history"]["history"].items()}
            state.history.epoch = list(resume["history"]["epoch"])
    begin_hooks, end_hooks = cbs.hooks("on_train_batch_begin"), cbs.hooks("on_train_batch_end")
    # several batches per call where the step can (train_step.many) and no callback needs each batch
    runs = getattr(train_step, "many", None) if not cbs.every_batch() else None
    for epoch in range(start_epoch, epochs):
        state.epoch, state.batch = epoch, 0
        state.epoch_start_state = sampler.rng.bit_generator.state
        cbs.on_epoch_begin(epoch, {})
        _agree_lr(model, comm, epoch)
        sums = state.sums = _Sums(model.ops, comm, finalizers(model))
        if skip and (comm is None or comm.rank == 0):  # saved sums are global: one rank carries them
            sums = state.sums = restore_sums(model.ops, resume, comm, getattr(model, "dtype", numpy.float64),
                                             finalizers(model))
        if runs:
            _train_runs(model, state, sampler.epoch(epoch), skip, runs, sums, end_hooks)
        for batch, idx in enumerate(() if runs else sampler.epoch(epoch)):
            if batch < skip:
                continue  # trained before the interruption; drawing it keeps the sampler in step
            if begin_hooks:
                begin_logs = {"size": len(idx)}
                for hook in begin_hooks:
                    hook(batch, begin_logs)
            sums.add(train_step(idx), len(idx))
            state.batch = batch + 1
            if end_hooks:
                end_logs = BatchLogs(sums, batch)
                for hook in end_hooks:
                    hook(batch, end_logs)
            if begin_hooks or end_hooks:
                _agree_stop(model, comm)
            if model.stop_training:  # set by any hook: stop after this batch, as Keras
                break
        skip = 0
        logs = sums.result()
        if epoch_end is not None:
            epoch_end(epoch, logs)
        state.epoch, state.batch, state.sums = epoch + 1, 0, None
        state.epoch_start_state = sampler.rng.bit_generator.state
        state.finished = (epoch, dict(logs))
        cbs.on_epoch_end(epoch, logs)
        _agree_stop(model, comm)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return logs


def _agree_lr(model, comm, epoch):
    """Under data parallelism every rank must step with the same learning rate: a callback that sets it
    differently on one rank (a ``LearningRateScheduler`` whose function reads the rank) would let the
    replicas drift apart silently. One small gather per epoch, after ``on_epoch_begin``; when the rates
    differ, every rank raises the same error before the epoch trains, and the job goes on."""
    opt = getattr(model, "optimizer", None)
    if comm is None or comm.size <= 1 or opt is None or not hasattr(opt, "lr"):
        return
    rates = comm.allgather_obj(float(opt.lr))
    if len(set(rates)) > 1:
        distributed.raising_everywhere(comm)
        raise ValueError(f"{model.name}: the ranks would train epoch {epoch + 1} with different learning rates "
                         f"({distributed._group(rates)}); a callback that sets the learning rate must set the same "
                         f"value on every rank, or the replicas drift apart")


def _agree_stop(model, comm):
    """Under data parallelism a callback may stop training on one rank only (its own logs, a file, a
    signal): every rank stops when any rank does, after the same batch, instead of the others
    waiting forever in the next step's all-reduce. One tiny all-reduce, only where hooks ran."""
    if comm is not None and comm.size > 1:
        flag = comm.allreduce_host(numpy.array([1.0 if model.stop_training else 0.0]))
        model.stop_training = bool(flag[0] > 0)


def _train_runs(model, state, batches, skip, many, sums, end_hooks):
    """One epoch's batches (from ``skip`` on) in runs, each trained by one ``many`` call: the whole
    epoch at once without batch hooks, else about a twentieth of it between two calls of the
    (coalescing) ``on_train_batch_end`` hooks, whose ``logs["size"]`` counts the run's samples."""
    todo = list(batches)[skip:]  # the sampler draws its permutation whole either way
    per = len(todo) if not end_hooks else max(1, -(-len(todo) // 20))
    for start in range(0, len(todo), per):
        run = todo[start:start + per] if not model.stop_training else todo[start:start + 1]
        for idx, stats in zip(run, many(run)):
            sums.add(stats, len(idx))  # one by one, in order: the epoch's sums as the batch loop makes them
        state.batch = skip + start + len(run)
        if end_hooks:
            logs = BatchLogs(sums, state.batch - 1, size=sum(len(idx) for idx in run))
            for hook in end_hooks:
                hook(state.batch - 1, logs)
        if model.stop_training:
            break


def progress_callbacks(callbacks, verbose, epochs, samples, steps=None):
    """The user's callbacks, then a ``ProgressBar`` for ``verbose``, then the ``History`` (last, as in
    Keras, so it records what earlier callbacks add to the logs, such as ``lr``). Each callback gets
    Keras's ``params`` (``verbose``, ``epochs``, ``steps`` per epoch) through ``set_params``."""
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2, True, False):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    history = History()
    cbs = list(callbacks or [])
    if verbose:
        cbs.append(ProgressBar(int(verbose), samples=samples))
    cbs.append(history)
    params = {"verbose": int(verbose), "epochs": epochs, "steps": steps}
    for cb in cbs:
        if hasattr(cb, "set_params"):
            cb.set_params(dict(params))
    return history, cbs
