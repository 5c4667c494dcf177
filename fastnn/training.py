"""The one training loop, its two batch samplers, and the book's ``Trainer``.

``Sequential.fit`` and ``Trainer.train`` both run ``run_loop``: ``fit`` with ``ShuffleSampler``
(a fresh permutation each epoch, as Keras), the book's ``Trainer`` with ``ReplacementSampler``
(``numpy.random.choice(train_size, batch_size)`` each step, as the book's code). Losses and
metrics are summed on the device and come back once per epoch.
"""
from __future__ import annotations

import collections.abc

import numpy

from fastnn import distributed
from fastnn.callbacks import CallbackList, History, ProgressBar
from fastnn.random import make_rng

__all__ = ["ShuffleSampler", "ReplacementSampler", "run_loop", "Trainer"]


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


class _Sums:
    """Per-epoch sums kept on the device: ``{name: 0-d array}`` plus the sample count; with a
    communicator, ``result`` sums them over the ranks."""

    def __init__(self, ops, comm=None):
        self.ops = ops
        self.comm = comm
        self.sums = {}
        self.count = 0
        self.last = None

    def add(self, stats, size):
        """Add a batch's sums; ``size`` is the (global) batch size, of which this rank counts its shard."""
        self.last = (stats, size)
        if self.comm is not None and self.comm.size > 1:  # host_sums adds the ranks' counts up
            lo, hi = distributed.shard(size, self.comm.rank, self.comm.size)
            size = hi - lo
        for k, v in stats.items():
            self.sums[k] = v if k not in self.sums else self.sums[k] + v
        self.count += size

    def host_sums(self, local=False):
        """``(names, host float64 sums, count)``, summed over ranks under data parallelism unless
        ``local`` (a collective must be called by every rank; per-batch logs stay local)."""
        names = list(self.sums)
        host = (self.ops.asnumpy(self.ops.xp.stack(list(self.sums.values()))).astype(numpy.float64)
                if names else numpy.zeros(0))
        count = self.count
        if not local and self.comm is not None and self.comm.size > 1:
            reduced = self.comm.allreduce_host(numpy.append(host, count))
            host, count = reduced[:-1], int(reduced[-1])
        return names, host, count

    def result(self, local=False):
        names, host, count = self.host_sums(local)
        if not count or not names:
            return {}
        return {k: float(v) / count for k, v in zip(names, host)}


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

    def __init__(self, sums, batch):
        self._sums, self._batch = sums, batch

    def _read(self):
        values = self._sums.result(local=True)  # this rank's running means: no collective per batch
        stats, size = self._sums.last
        if "loss" in stats:
            values["batch_loss"] = float(self._sums.ops.asnumpy(stats["loss"])) / size
        values["size"] = size
        values["batch"] = self._batch
        return values

    def __getitem__(self, key):
        if key == "size":
            return self._sums.last[1]
        return self._compute()[key]

    def get(self, key, default=None):
        if key == "size":
            return self._sums.last[1]
        return self._compute().get(key, default)


class EvalLogs(_LazyLogs):
    """Logs for ``on_test_batch_end``: the running means of ``evaluate`` so far (``loss`` and metrics,
    as Keras), computed only when read (one device sync on first access)."""

    def __init__(self, ops, sums, count):
        self._ops, self._sums, self._count = ops, dict(sums), count

    def _read(self):
        names = list(self._sums)
        host = self._ops.asnumpy(self._ops.xp.stack([self._sums[k] for k in names])).astype(numpy.float64)
        return {k: float(v) / self._count for k, v in zip(names, host)}


class LoopState:
    """Where the loop is: the epoch, the next batch, the sampler's state at the epoch's start and the
    epoch's partial sums; everything a checkpoint needs to continue as if nothing had happened."""

    def __init__(self, model, sampler):
        self.model, self.sampler = model, sampler
        self.epoch = 0
        self.batch = 0
        self.epoch_start_state = None
        self.sums = None
        self.history = None
        self.finished = None  # (epoch, logs) of the last finished epoch, before History records it

    def snapshot(self):
        """A JSON-able record (one device sync for the partial sums; a collective under data
        parallelism, so every rank calls it)."""
        sums = self.sums
        host, count = {}, 0
        if sums is not None:
            names, values, count = sums.host_sums()
            host = {k: float(v) for k, v in zip(names, values)}
        history = None
        if self.history is not None:
            history = {"history": {k: list(v) for k, v in self.history.history.items()},
                       "epoch": list(self.history.epoch)}
            if self.finished is not None and self.finished[0] not in history["epoch"]:
                history["epoch"].append(self.finished[0])
                for k, v in self.finished[1].items():
                    history["history"].setdefault(k, []).append(v)
        return {"epoch": self.epoch, "batch": self.batch, "sampler_state": self.epoch_start_state,
                "sums": host, "count": count,
                "model_step": getattr(self.model, "_step", 0), "history": history}


def _restore_sums(ops, saved, comm=None, dtype=numpy.float64):
    """The interrupted epoch's running sums. In one process they were sums in the model's dtype,
    saved exactly as float64: restored in that dtype, the epoch's logs continue bit for bit. Under
    data parallelism they are sums over the ranks, kept in float64."""
    sums = _Sums(ops, comm)
    if comm is not None and comm.size > 1:
        dtype = numpy.float64
    for k, v in (saved.get("sums") or {}).items():
        sums.sums[k] = ops.xp.asarray(v, dtype=dtype)
    sums.count = int(saved.get("count", 0))
    return sums


def run_loop(model, sampler, train_step, *, epochs, initial_epoch=0, callbacks=(), epoch_end=None, resume=None,
             history=None, comm=None):
    """The training loop shared by ``Sequential.fit`` and ``Trainer``.

    ``train_step(idx)`` trains on the samples ``idx`` (host int array) and returns
    ``{name: 0-d device array}`` holding sums over the batch; ``epoch_end(epoch, logs)`` may add
    validation results to ``logs``. ``resume`` (a ``LoopState.snapshot()``) continues an
    interrupted run exactly: the epoch's batch order is regenerated from the sampler state saved at
    the epoch's start and the batches already trained are skipped. Returns the last epoch's logs.
    """
    cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks, model)
    state = model._loop = LoopState(model, sampler)
    state.history = history
    model.stop_training = False
    logs = {}
    start_epoch, skip = initial_epoch, 0
    if resume is not None:
        start_epoch, skip = int(resume["epoch"]), int(resume["batch"])
        if resume.get("sampler_state") is not None:
            sampler.rng.bit_generator.state = resume["sampler_state"]
    cbs.on_train_begin({})
    begin_hooks, end_hooks = cbs.hooks("on_train_batch_begin"), cbs.hooks("on_train_batch_end")
    for epoch in range(start_epoch, epochs):
        state.epoch, state.batch = epoch, 0
        state.epoch_start_state = sampler.rng.bit_generator.state
        cbs.on_epoch_begin(epoch, {})
        sums = state.sums = _Sums(model.ops, comm)
        if skip and (comm is None or comm.rank == 0):  # saved sums are global: one rank carries them
            sums = state.sums = _restore_sums(model.ops, resume, comm, getattr(model, "dtype", numpy.float64))
        for batch, idx in enumerate(sampler.epoch(epoch)):
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
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return logs


def progress_callbacks(callbacks, verbose, epochs, samples, model, steps=None):
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
        cbs.append(ProgressBar(int(verbose)))
    cbs.append(history)
    model._fit_params = {"epochs": epochs, "samples": samples, "verbose": verbose}
    params = {"verbose": int(verbose), "epochs": epochs, "steps": steps}
    for cb in cbs:
        if hasattr(cb, "set_params"):
            cb.set_params(dict(params))
    return history, cbs


class Trainer:
    """The book's trainer: mini-batch SGD-family training of any network object.

    ``network`` needs ``params`` (a dict of arrays), ``gradient(x, t)`` (same keys),
    ``loss(x, t)`` and ``accuracy(x, t)``. As in the book, each step draws ``mini_batch_size``
    samples with replacement, updates, and records the loss (``train_loss_list``); at the first
    step of each epoch it records train and test accuracy (``train_acc_list``,
    ``test_acc_list``), on ``evaluate_sample_num_per_epoch`` samples when given. One "epoch" is
    ``max(train_size // mini_batch_size, 1)`` steps.
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param=None, evaluate_sample_num_per_epoch=None, verbose=True,
                 seed=None, callbacks=None):
        from fastnn import optimizers
        from fastnn.backend import current

        for name in ("params", "gradient", "loss", "accuracy"):
            if not hasattr(network, name):
                raise TypeError(f"Trainer: network must have params, gradient(x, t), loss(x, t) and accuracy(x, t); "
                                f"{type(network).__name__} has no {name}")
        if len(x_train) != len(t_train) or len(x_test) != len(t_test):
            raise ValueError(f"Trainer: x and t lengths differ: train {len(x_train)} vs {len(t_train)}, "
                             f"test {len(x_test)} vs {len(t_test)}")
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, (int, numpy.integer)) or mini_batch_size <= 0:
            raise ValueError(f"Trainer: mini_batch_size must be a positive integer, got {mini_batch_size!r}")
        self.network = network
        self.verbose = verbose
        self.epochs = int(epochs)
        self.batch_size = int(mini_batch_size)
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.optimizer = optimizers.get(optimizer, **(optimizer_param if optimizer_param is not None else {"lr": 0.01}))
        self.ops = getattr(network, "ops", None) or current()
        self.x_train, self.t_train = self.ops.asarray(x_train), self.ops.asarray(t_train)
        self.x_test, self.t_test = self.ops.asarray(x_test), self.ops.asarray(t_test)
        self.train_size = len(x_train)
        self.iter_per_epoch = max(self.train_size // self.batch_size, 1)
        self.max_iter = self.epochs * self.iter_per_epoch
        if seed is None and getattr(network, "seed", None) is not None:
            # no seed of its own: follow the network's, so a seeded network trains the same twice
            seed = numpy.random.default_rng([int(network.seed), 0x7472616E]).integers(2**63 - 1)
        self.rng = make_rng(seed)
        self.callbacks = list(callbacks or [])
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list, self.train_acc_list, self.test_acc_list = [], [], []
        self.stop_training = False

    def _evaluate(self):
        x_tr, t_tr, x_te, t_te = self.x_train, self.t_train, self.x_test, self.t_test
        k = self.evaluate_sample_num_per_epoch
        if k is not None:
            x_tr, t_tr, x_te, t_te = x_tr[:k], t_tr[:k], x_te[:k], t_te[:k]
        return float(self.network.accuracy(x_tr, t_tr)), float(self.network.accuracy(x_te, t_te))

    def train_step(self, idx):
        idx = self.ops.asarray(idx) if self.ops.device_arrays else idx
        x_batch, t_batch = self.x_train[idx], self.t_train[idx]
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(float(loss))
        if self.verbose:
            print(f"train loss:{float(loss)}")
        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            train_acc, test_acc = self._evaluate()
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(f"=== epoch:{self.current_epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
        self.current_iter += 1
        n = self.ops.xp.asarray(len(idx), dtype=numpy.float64)
        return {"loss": self.ops.xp.asarray(float(loss), dtype=numpy.float64) * n}

    def train(self):
        """Run ``epochs`` epochs; prints and returns the final test accuracy."""
        sampler = ReplacementSampler(self.train_size, self.batch_size, self.iter_per_epoch, self.rng)
        run_loop(self, sampler, self.train_step, epochs=self.epochs, callbacks=self.callbacks)
        test_acc = float(self.network.accuracy(self.x_test, self.t_test))
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print(f"test acc:{test_acc}")
        self.test_acc = test_acc
        return test_acc

    def get_weights(self):
        return [self.ops.asnumpy(p).copy() for p in self.network.params.values()]

    def set_weights(self, weights):
        for p, w in zip(self.network.params.values(), weights):
            p[...] = self.ops.asarray(w)
