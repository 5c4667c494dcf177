"""``Sequential``: Keras's model API (``compile``, ``fit``, ``evaluate``, ``predict``) on fastnn's layers.

The model captures its backend when it is built, owns its parameters in one flat buffer
(``fastnn.params.FlatParams``) whose views the layers hold, and trains with one fused optimizer
primitive per step. Inputs move to the backend's device once per call; batches are gathered there.
``predict``, ``evaluate``, ``get_weights`` and the ``History`` give host NumPy values, as Keras does.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import warnings

import numpy

from fastnn import distributed, feeding, validation
from fastnn import losses as _losses
from fastnn import metrics as _metrics
from fastnn import optimizers as _optimizers
from fastnn.backend import current, get_matmul_precision, get_ops
from fastnn.callbacks import BackupAndRestore, CallbackList
from fastnn.errors import OutOfMemoryError
from fastnn.graphs import StepGraphs
from fastnn.layers.base import Layer, shape_str
from fastnn.layers.core import SOFTMAX, Activation, Dense, Dropout
from fastnn.kernels import SIGMOID
from fastnn.params import FlatParams
from fastnn.random import draw_seed, make_rng
from fastnn.training import EvalLogs, ShuffleSampler, progress_callbacks, run_loop

__all__ = ["Sequential", "load_model"]

log = logging.getLogger("fastnn")


def load_model(path, backend=None):
    """Rebuild a model written by ``model.save(path)``, on ``backend`` (default: the active one).

    Nothing in the file is executed; any problem raises ``fastnn.FormatError``.
    """
    from fastnn import io

    return io.load_model(path, backend=backend)


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _seed_record(seed):
    """What a run fingerprint records of a model's ``seed=``: the integer, or ``fastnn.set_seed``'s."""
    if isinstance(seed, (int, numpy.integer)) and not isinstance(seed, bool):
        return int(seed)
    if seed is None:
        from fastnn.random import global_seed

        g = global_seed()
        return None if g is None else ["set_seed", g]
    return type(seed).__name__


class Sequential:
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
    dtype : "float32" (default) or "float64"
        Every weight and every computation; inputs are cast to it.
    seed : int, optional
        Seeds the model's generator, which draws the initial weights, dropout seeds and (unless
        ``fit(seed=...)``) the batch order. Else ``fastnn.set_seed``, else fresh entropy.
    backend : str, optional
        Where the model computes; default: the active backend when the model is built.
    """

    def __init__(self, layers=None, dtype="float32", name=None, seed=None, backend=None):
        self.dtype = numpy.dtype(dtype)
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"Sequential: dtype must be float32 or float64, got {dtype!r}")
        self.name = name or "sequential"
        self.rng = make_rng(seed)
        self._seed = _seed_record(seed)  # for checkpoints' run fingerprints
        self._backend = backend
        self.layers = []
        self.ops = None
        self.flat = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.input_shape = None
        self.output_shape = None
        self.stop_training = False
        self.stop_evaluating = False
        self.stop_predicting = False
        self._step = 0
        self._head = None
        self._fit_params = {}
        self._dx_buffer = {}
        self._graphs = None  # (owners, key, fastnn.graphs.StepGraphs) of the last fit(cuda_graph=True)
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ structure
    def add(self, layer):
        """Append a layer (before the model is built)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a fastnn Layer, got {type(layer).__name__}")
        if self.built:
            raise ValueError(f"{self.name}: cannot add {layer.name} after the model is built")
        self.layers.append(layer)

    def build(self, input_shape=None):
        """Make every layer's weights for per-sample ``input_shape`` (default: the first layer's
        ``input_shape=``) and pack them into the flat buffer on the model's backend."""
        if self.built:
            return
        if not self.layers:
            raise ValueError(f"{self.name}: the model has no layers")
        if input_shape is None:
            input_shape = self.layers[0].input_shape
        if input_shape is None:
            raise ValueError(f"{self.name}: the input shape is unknown; give the first layer input_shape=(...) "
                             f"or call fit/build with data first")
        if isinstance(input_shape, (int, numpy.integer)) and not isinstance(input_shape, bool):
            input_shape = (input_shape,)
        try:
            input_shape = tuple(input_shape)
        except TypeError:
            raise ValueError(f"{self.name}: build() takes the shape of one sample, e.g. (784,) or (None, 784), "
                             f"got {input_shape!r}") from None
        if input_shape and input_shape[0] is None:  # Keras's build((None, 784)): a batch axis first
            input_shape = input_shape[1:]
        if not input_shape or any(isinstance(s, bool) or not isinstance(s, (int, numpy.integer)) or s < 1
                                  for s in input_shape):
            raise ValueError(f"{self.name}: build() takes the shape of one sample, e.g. (784,) or (None, 784), "
                             f"got {input_shape!r}")
        self.ops = get_ops(self._backend) if self._backend is not None else current()
        self.input_shape = tuple(int(s) for s in input_shape)
        shape = (None,) + self.input_shape
        for layer in self.layers:
            layer._ops = self.ops
            if not layer.built:
                layer.dtype = self.dtype
                layer.rng = self.rng
                layer.build(shape)  # the public signature; built-in layers draw from layer.rng
            shape = layer.compute_output_shape(shape)
        self.output_shape = shape
        self.flat = FlatParams(self.layers, self.ops, self.dtype)
        self.layers[0].skip_input_grad = True
        self.built = True
        if self.optimizer is not None:
            self.optimizer.build(self.flat)

    def _require_built(self, what):
        if not self.built and self.layers and self.layers[0].input_shape is not None:
            self.build()  # Keras builds a model whose first layer knows its input shape
        if not self.built:
            raise ValueError(f"{self.name}: {what} needs a built model; give the first layer input_shape=(...) "
                             f"or call fit() first")

    def count_params(self):
        self._require_built("count_params()")
        return int(self.flat.size)

    def summary(self, print_fn=None):
        """Print a table of layers, output shapes and parameter counts."""
        self._require_built("summary()")
        print_fn = print_fn or print
        rows = []
        shape = (None,) + self.input_shape
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            rows.append((f"{layer.name} ({type(layer).__name__})", shape_str(shape).replace("N", "None"),
                         layer.count_params()))
        w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2
        w1 = max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2
        line = "-" * (w0 + w1 + 12)
        out = [f'Model: "{self.name}" (backend {self.ops.name}, {self.dtype})', line,
               f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>10}", "=" * len(line)]
        out += [f"{a:<{w0}}{b:<{w1}}{c:>10,}" for a, b, c in rows]
        trainable = sum(e.size for e in self.flat.entries if e.trainable)
        out += ["=" * len(line), f"Total params: {self.flat.size:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {self.flat.size - trainable:,}", line]
        print_fn("\n".join(out))

    def get_weights(self):
        """Every weight as a host NumPy array, in layer order."""
        self._require_built("get_weights()")
        return self.flat.get_host()

    def set_weights(self, weights):
        """Set every weight from host arrays in ``get_weights()`` order (shapes checked first)."""
        self._require_built("set_weights()")
        self.flat.set_host(weights)

    def to(self, backend):
        """Move the parameters and the optimizer state to another backend (``"numba"``, ``"cupy"``, ...)."""
        self._require_built("to()")
        ops = get_ops(backend)
        old = self.flat
        slots = [old.ops.asnumpy(s) for s in (self.optimizer.flat_slots or ())] if self.optimizer else []
        for layer in self.layers:
            layer._ops = ops
            layer._ws.clear()  # workspaces live on the old device
        self._dx_buffer.clear()
        self._graphs = None  # captured on the old device
        self.ops = ops
        self.flat = FlatParams(self.layers, ops, self.dtype)  # copies each weight from its old view
        if self.optimizer is not None and slots:
            self.optimizer.flat_slots = tuple(ops.asarray(s) for s in slots)
        self._backend = backend
        return self

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, loss and metrics.

        ``optimizer``: a name (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw) or an
        instance. ``loss``: ``"categorical_crossentropy"`` (one-hot), ``"sparse_categorical_crossentropy"``
        (indices), ``"binary_crossentropy"``, ``"mse"``, a ``fastnn.losses.Loss``, or an object with
        ``forward(y, t)``/``backward()``. A final softmax (sigmoid) with a cross-entropy loss is
        fused into one stable kernel on the logits. ``metrics``: e.g. ``["accuracy"]``.
        """
        if loss is None:
            raise ValueError(f"{self.name}.compile: loss is required; valid names: {', '.join(_losses.LOSS_NAMES)}")
        opt, loss = _optimizers.get(optimizer), _losses.get(loss)
        self._graphs = None  # a captured step of the old loss/optimizer: let its memory go
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = [_metrics.get(m, loss) for m in (metrics or [])]
        self.optimizer, self.loss, self.metrics = opt, loss, metrics
        last = self.layers[-1] if self.layers else None
        head = None
        if isinstance(last, (Dense, Activation)):
            head = "softmax" if last.act == SOFTMAX else ("sigmoid" if last.act == SIGMOID else None)
        self._head = head if self.loss.fuse(head) else None
        if isinstance(last, Dense):
            last.logits_only = self._head is not None
        if self.built and not (opt.flat_slots is not None and all(s.shape == (self.flat.size,) for s in opt.flat_slots)
                               and len(opt.flat_slots) == len(opt.slots)):
            self.optimizer.build(self.flat)  # a new optimizer; one compiled before keeps its state (as Keras)

    def _require_compiled(self, what):
        if self.optimizer is None or self.loss is None:
            raise ValueError(f"{self.name}: call compile(optimizer=..., loss=...) before {what}")

    # ------------------------------------------------------------------ data
    def _prepare(self, x, y=None, what=("x", "y"), move=True):
        """Validate once on the host, build if needed, and move to the device once.

        ``move=False`` leaves the arrays where they are; ``move="auto"`` (evaluation, prediction)
        leaves host arrays on the host when they would not fit on the GPU (``fastnn.feeding``): the
        batch loops then move one batch at a time."""
        x = validation.check_x(self.name, x, what[0], self.ops, self.dtype)
        if not self.built:
            first = self.layers[0].input_shape if self.layers else None
            self.build(first if first is not None else tuple(x.shape[1:]))
        validation.check_input_shape(self, x, what[0])
        if y is not None:
            y = validation.check_targets(self, y, x.shape[0], what[1])
        if not move:
            return x, y
        if move == "auto" and self.ops.device_arrays and not self.ops.owns(x):
            nbytes = x.size * self.dtype.itemsize + (0 if y is None or self.ops.owns(y) else y.size * y.dtype.itemsize)
            if feeding.feeds_from_host(self.ops, nbytes):
                return x, y
        x = x if self.ops.owns(x) and x.dtype == self.dtype else self.ops.asarray(x, dtype=self.dtype)
        if y is not None and not self.ops.owns(y):
            y = self.ops.asarray(y)
        return x, y

    # ------------------------------------------------------------------ steps
    def _forward(self, x, train):
        out = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and self._head is not None and isinstance(layer, Activation):
                break  # fused into the loss
            out = layer.forward(out, train_flg=train)
        return out

    def _backward(self, dout):
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            if i == last and self._head is not None and isinstance(layer, Activation):
                continue
            if i == 0 and not layer.weight_info():
                break  # nothing needs the input gradient of a parameter-free first layer
            dout = layer.backward(dout)
            self.flat.adopt(layer)

    def _regularized(self):
        """``[(layer, weight name, regularizer)]`` (looked up once per step, cheaply)."""
        return [(layer, name, info["regularizer"]) for layer in self.layers
                for name, info in layer._weights.items() if info.get("regularizer") is not None]

    def _regularize(self):
        """Add every weight regularizer's gradient to its weight's gradient; return the penalty (or None)."""
        total = None
        for layer, name, reg in self._regularized():
            w = getattr(layer, name)
            reg.add_grad(self.ops, w, getattr(layer, "d" + name))
            p = reg.penalty(self.ops, w)
            total = p if total is None else total + p
        return total

    def _batch_stats(self, out, t, loss, n):
        stats = {"loss": loss * out.dtype.type(n)}
        logits = self._head is not None or self.loss.from_logits
        probs = None
        for m in self.metrics:
            if logits and not m.on_logits:  # mse/mae read probabilities, not the fused head's logits
                if probs is None:
                    probs = self._apply_head(out) if self._head is not None else out
                stats[m.name] = m(self.ops, probs, t, False)
            else:
                stats[m.name] = m(self.ops, out, t, logits)
        return stats

    def _apply_head(self, out):
        """The fused head's activation (softmax or sigmoid) of logits ``out``; ``out`` itself without one."""
        if self._head == "softmax":
            return self.ops.softmax(out)
        if self._head == "sigmoid":
            return self.ops.bias_act(out, None, SIGMOID)
        return out

    def _train_batch(self, xb, tb, n_global=None, row0=0, comm=None):
        """One optimizer step. Under data parallelism ``xb`` is this rank's shard (rows ``row0`` onward
        of a global batch of ``n_global``): its gradient is scaled by its share before the all-reduce,
        so the summed gradient is the whole batch's mean."""
        n = xb.shape[0]
        n_global = n if n_global is None else n_global
        for layer in self.layers:
            layer.reuse_buffers = True  # this step's activations are internal: workspaces, no allocation
            if isinstance(layer, Dropout):
                layer.step, layer.row0 = self._step, row0
        try:
            stats = self._step_on(xb, tb, n, n_global, comm)
            self._step += 1  # only once the step went through: an out-of-memory retry redraws the same masks
            return stats
        finally:
            for layer in self.layers:
                layer.reuse_buffers = False

    def _step_on(self, xb, tb, n, n_global, comm):
        if n:
            stats = self._grad_step(xb, tb, n, n_global)
        else:  # more ranks than samples in this batch: contribute nothing, but take part
            self.flat.g[...] = 0
            stats = {k: self.ops.xp.zeros((), dtype=self.dtype) for k in ["loss"] + [m.name for m in self.metrics]}
        return self._apply_step(stats, n, comm)

    def _grad_step(self, xb, tb, n, n_global):
        """Forward, loss, metrics and backward of one batch: the gradients land in ``flat.g``.

        Everything here runs on the device without a host sync or a value that changes from step
        to step, so it is what ``fit(cuda_graph=True)`` captures (``fastnn.graphs``)."""
        out = self._forward(xb, True)
        dx = self._dx_buffer.get(out.shape)
        if dx is None or dx.dtype != out.dtype:
            dx = self._dx_buffer[out.shape] = self.ops.xp.empty_like(out)
        loss = self.loss.compute(self.ops, out, tb, dx)
        if n != n_global:
            dx *= dx.dtype.type(n / n_global)
        self._backward(dx)
        return self._batch_stats(out, tb, loss, n)

    def _apply_step(self, stats, n, comm):
        """The rest of a step, run eagerly: all-reduce, regularizers, one fused optimizer update."""
        if comm is not None and comm.size > 1:
            comm.allreduce_sum_(self.flat.g)
        penalty = self._regularize()  # after the all-reduce: added once
        if penalty is not None:
            stats["loss"] = stats["loss"] + penalty * self.dtype.type(n)
        self.optimizer.step_flat(self.flat)
        return stats

    def _gather(self, a, idx):
        return a[self.ops.asarray(idx) if self.ops.device_arrays else idx]

    # ------------------------------------------------------------------ public training API
    @distributed.collective("fit")  # under MPI: ranks that disagree or fail never leave the others hanging
    def fit(self, x, y, batch_size=32, epochs=1, verbose="auto", validation_data=None, validation_split=0.0,
            shuffle=True, callbacks=None, initial_epoch=0, seed=None, checkpoint_dir=None, resume=True, keep=3,
            save_freq="epoch", cuda_graph=False):
        """Train for ``epochs`` epochs of mini-batches; returns a ``History``.

        ``validation_split`` holds out the last fraction of ``x``/``y`` (before shuffling, as Keras);
        ``validation_data=(x_val, y_val)`` gives a set explicitly. ``seed`` fixes the batch order
        (default: the model's generator). ``checkpoint_dir`` is the short form of
        ``callbacks=[BackupAndRestore(checkpoint_dir, save_freq, keep)]``: the training state is
        backed up there and, with ``resume=True``, an interrupted run continues from its newest
        backup exactly.

        On the CuPy backend the training set moves to the GPU once when it fits (half the free
        device memory; ``FASTNN_DEVICE_DATA`` and ``FASTNN_DEVICE_DATA_FRACTION`` change that);
        otherwise batches are gathered on the host into pinned buffers and copied asynchronously
        (``fastnn.feeding``). ``cuda_graph=True`` replays each full-size step as a captured CUDA
        graph (``fastnn.graphs``: the ragged last batch runs eagerly; on a CPU backend it warns and
        runs eagerly).
        """
        self._require_compiled("fit()")
        batch_size = _positive_int(self.name, "batch_size", 32 if batch_size is None else batch_size)  # Keras
        if not isinstance(cuda_graph, (bool, numpy.bool_)):
            raise TypeError(f"{self.name}: cuda_graph must be True or False, got {cuda_graph!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, numpy.integer)) or epochs < 0:
            raise ValueError(f"{self.name}: epochs must be a non-negative integer, got {epochs!r}")
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"{self.name}: validation_split must be in [0, 1), got {validation_split!r}")
        x, y = self._prepare(x, y, move=False)
        val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError(f"{self.name}: validation_data must be (x_val, y_val)")
            val = self._prepare(*validation_data, what=("validation x", "validation y"), move="auto")
        elif validation_split:
            n_val = int(x.shape[0] * validation_split)
            if n_val == 0 or n_val == x.shape[0]:
                raise ValueError(f"{self.name}: validation_split={validation_split} of {x.shape[0]} samples leaves "
                                 f"{n_val} for validation and {x.shape[0] - n_val} for training")
            x, y, val = x[:-n_val], y[:-n_val], self._prepare(x[-n_val:], y[-n_val:], move="auto")
        x, y, feeder = self._place_training_data(x, y, batch_size)
        n = x.shape[0]
        rng = make_rng(seed) if seed is not None else self.rng
        if seed is not None:  # fit(seed=n) fixes every stream fit draws: the batch order and dropout's
            streams = numpy.random.default_rng(  # its own stream ("drop"): the batch order is as without
                seed.bit_generator.seed_seq.spawn(1)[0] if isinstance(seed, numpy.random.Generator)  # dropout
                else [int(seed), 0x64726F70])
            for layer in self.layers:
                if isinstance(layer, Dropout) and layer.seed_drawn:
                    layer.seed = draw_seed(streams)
        sampler = ShuffleSampler(n, batch_size, shuffle, rng)
        comm = distributed.get()
        if comm.size > 1:
            settings = {"training samples": n, "batch_size": batch_size, "epochs": epochs,
                        "initial_epoch": initial_epoch, "shuffle": shuffle, "cuda_graph": cuda_graph,
                        "validation samples": None if val is None else val[0].shape[0],
                        "checkpoint_dir": "given" if checkpoint_dir is not None else None,
                        "resume": resume if checkpoint_dir is not None else None,
                        "BackupAndRestore callbacks": sum(isinstance(cb, BackupAndRestore) for cb in callbacks or ()),
                        "training data (digest of sampled rows)": (distributed.sample_digest(self.ops, x),
                                                                   distributed.sample_digest(self.ops, y)),
                        "validation data (digest of sampled rows)": None if val is None else (
                            distributed.sample_digest(self.ops, val[0]), distributed.sample_digest(self.ops, val[1]))}
            self._sync_replicas(comm, rng, {k: repr(v.item() if isinstance(v, numpy.generic) else v)
                                            for k, v in settings.items()})
            if comm.rank != 0:
                verbose = 0
        callbacks = list(callbacks or [])
        restorers = [cb for cb in callbacks if isinstance(cb, BackupAndRestore)]  # Keras: always restore
        if checkpoint_dir is not None:
            callbacks.append(BackupAndRestore(checkpoint_dir, save_freq=save_freq, keep=keep))
            if resume:
                restorers.append(callbacks[-1])
        history, cbs = progress_callbacks(callbacks, verbose, epochs, n, self, steps=-(-n // batch_size))
        cbs = CallbackList(cbs, self)  # one list: the loop's hooks and the validation's on_test_* hooks
        # what a checkpoint's run fingerprint records of this fit (fastnn.io.run_fingerprint)
        self._run_info = {"samples": int(n), "batch_size": int(batch_size), "shuffle": shuffle if isinstance(
            shuffle, (bool, str)) else bool(shuffle), "seed": self._seed if seed is None else (
            int(seed) if isinstance(seed, (int, numpy.integer)) else type(seed).__name__)}
        backups = [cb for cb in callbacks if isinstance(cb, BackupAndRestore)]
        restored = None
        try:
            for cb in restorers:
                restored = cb.restore(self) or restored
        except BaseException:
            for cb in backups:
                cb.release()  # the folder's lock: a failed restore must not keep it
            raise
        if restored is not None and restored.get("history"):
            history.history = {k: list(v) for k, v in restored["history"]["history"].items()}
            history.epoch = list(restored["history"]["epoch"])

        graphs = self._step_graphs(cuda_graph, batch_size, comm, x, y)

        def step(idx):
            if comm.size == 1:
                local, lo = idx, 0
            else:
                lo, hi = distributed.shard(len(idx), comm.rank, comm.size)
                local = idx[lo:hi]
            if graphs is not None and len(idx) == batch_size and len(local):
                stats = graphs.step(functools.partial(self._fill_slots, x, y, local, feeder), len(idx), lo,
                                    comm if comm.size > 1 else None)
                if stats is not None:
                    return stats
            if feeder is not None:
                xb, yb = feeder.get(local)
            else:
                xb, yb = self._gather(x, local), self._gather(y, local)
            if comm.size == 1:
                return self._train_batch(xb, yb)
            return self._train_batch(xb, yb, len(idx), lo, comm)

        def train_step(idx):
            return self._guard_memory(lambda: step(idx), len(idx))

        def epoch_end(epoch, logs):
            if val is not None:
                for k, v in self._evaluate_arrays(val[0], val[1], batch_size, comm, cbs).items():
                    logs["val_" + k] = v

        with contextlib.ExitStack() as stack:
            for cb in backups:
                stack.callback(cb.release)  # the checkpoint folder's lock, even when training raises
            if graphs is not None:
                stack.enter_context(graphs.ordered())  # the whole fit on the capture stream
            if feeder is not None:
                stack.enter_context(feeder)
            run_loop(self, sampler, train_step, epochs=epochs, initial_epoch=initial_epoch, callbacks=cbs,
                     epoch_end=epoch_end, resume=restored, history=history, comm=comm)
        return history

    def _place_training_data(self, x, y, batch_size):
        """``(x, y, feeder)``: on the device when the set fits (or already lives there), else left on
        the host with a ``HostBatches`` feeder of pinned, double-buffered, asynchronous copies.
        ``FASTNN_DEVICE_DATA=host`` asks for the feeder on any backend (on a CPU backend it only
        copies batches, which is how its path through ``fit`` is tested without a GPU)."""
        gpu = self.ops.device_arrays
        resident = gpu and self.ops.owns(x)  # the caller's device data stays put (its labels follow it)
        if not resident and (gpu or feeding.data_placement() == "host"):
            nbytes = x.size * self.dtype.itemsize + y.size * y.dtype.itemsize
            if feeding.feeds_from_host(self.ops, nbytes):
                x, y = self.ops.asnumpy(x), self.ops.asnumpy(y)
                return x, y, self._host_batches(x, y, batch_size)
        x = x if self.ops.owns(x) and x.dtype == self.dtype else self.ops.asarray(x, dtype=self.dtype)
        if not self.ops.owns(y):
            y = self.ops.asarray(y)
        return x, y, None

    def _host_batches(self, x, y, batch_size):
        log.info("%s: the training set (%s) stays on the host; batches are copied from pinned memory",
                 self.name, shape_str(x.shape))
        rows = max(1, min(batch_size, x.shape[0]))  # pinned buffers for no more rows than there are
        return feeding.HostBatches(x, y, self.dtype, rows, feeding.make_transfer(self.ops))

    def _step_graphs(self, cuda_graph, batch_size, comm, x, y):
        """``fastnn.graphs.StepGraphs`` for ``fit(cuda_graph=True)`` on CuPy; None otherwise."""
        if not cuda_graph:
            return None
        if not self.ops.captures_graphs:
            warnings.warn(f"{self.name}: fit(cuda_graph=True) needs the CuPy backend, and this model runs on "
                          f"{self.ops.name} ({self.ops.device}); its steps run eagerly", RuntimeWarning, stacklevel=3)
            return None
        lo, hi = distributed.shard(batch_size, comm.rank, comm.size)
        x_spec = (tuple(x.shape[1:]), self.dtype)
        y_spec = (tuple(y.shape[1:]), self.ops.asarray(y[:1]).dtype)
        # A captured step stays valid across fit() calls while what it was captured from is the
        # same: the flat buffers, the loss and metrics objects, the shapes and the precision.
        opt = self.optimizer
        owners = (self.flat, self.flat.p, self.flat.g, self.loss, self.optimizer, *(opt.flat_slots or ()),
                  *self.metrics)
        rates = tuple(layer.rate for layer in self.layers if isinstance(layer, Dropout))
        pieces = tuple((a, b) for a, b, _ in opt._pieces(self.flat))
        plain = (self._head, hi - lo, batch_size, x_spec, y_spec, get_matmul_precision(), rates, comm.size > 1,
                 opt.graph_kind(), opt.graph_capturable(), pieces)
        cached = getattr(self, "_graphs", None)
        if (cached is not None and len(cached[0]) == len(owners) and all(a is b for a, b in zip(cached[0], owners))
                and cached[1] == plain and cached[2].disabled is None):
            return cached[2]
        graphs = StepGraphs(self, hi - lo, x_spec, y_spec, distributed=comm.size > 1)
        self._graphs = (owners, plain, graphs)
        return graphs

    def _fill_slots(self, x, y, local, feeder, x_slot, y_slot):
        """Write the batch ``local`` into a captured step's input slots (on the current stream)."""
        if feeder is not None:
            xb, yb = feeder.get(local)
            x_slot[...] = xb
            y_slot[...] = yb
            return
        idx = self.ops.asarray(local)
        self.ops.xp.take(x, idx, axis=0, out=x_slot)
        self.ops.xp.take(y, idx, axis=0, out=y_slot)

    def _guard_memory(self, fn, batch_size):
        """Run a step; when the device runs out of memory, free the caches once and retry, then raise
        ``fastnn.OutOfMemoryError`` with the sizes involved. Never switches device by itself."""
        try:
            return fn()
        except MemoryError as exc:
            if not self.ops.is_out_of_memory(exc):
                raise
        for layer in self.layers:
            layer._ws.clear()
        self._dx_buffer.clear()
        cached = getattr(self, "_graphs", None)
        if cached is not None:
            cached[2].reset()  # its graph kept the cleared workspaces: capture again later
        self.ops.free_memory()
        try:
            return fn()
        except MemoryError as exc:
            if not self.ops.is_out_of_memory(exc):
                raise
            raise OutOfMemoryError(self._oom_message(batch_size)) from exc

    def _oom_message(self, batch_size):
        item = self.dtype.itemsize
        params = self.flat.size * item
        slots = len(self.optimizer.slots) * params if self.optimizer is not None else 0
        shape, units = (None,) + self.input_shape, 0
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            units += math.prod(shape[1:])
        activations = 3 * units * batch_size * item  # outputs, gradients and workspaces
        usage = self.ops.memory_usage()
        pool = "" if usage is None else f"; memory pool: {usage[0]:,} bytes in use of {usage[1]:,} held"
        return (f"{self.name}: out of memory on {self.ops.device} training batches of {batch_size}: parameters "
                f"{params:,} bytes, gradients {params:,}, optimizer state {slots:,}, activations about "
                f"{activations:,} bytes per batch{pool}. Use a smaller batch_size (e.g. {max(1, batch_size // 2)}) "
                f"or train on the CPU with backend='cpu'; fastnn never switches device by itself.")

    def _sync_replicas(self, comm, rng, settings=None):
        """Make every rank start from rank 0's parameters, optimizer state and seeds, and check it.

        The architecture, compile settings and ``fit``'s ``settings`` are compared first, in one
        gather (``distributed.agree``: a rank with another model or other settings fails clearly on
        every rank instead of hanging in a collective of the wrong size), then everything is
        broadcast and checksummed.
        """
        opt = self.optimizer
        model = {"dtype": str(self.dtype), "layers": repr([type(layer).__name__ for layer in self.layers]),
                 "weights": repr([(e.key.split("/")[1], e.shape) for e in self.flat.entries]),
                 "optimizer": f"{type(opt).__name__}({opt.get_config() if hasattr(opt, 'get_config') else ''})",
                 "loss": repr(getattr(self.loss, "name", type(self.loss).__name__)),
                 "metrics": repr([m.name for m in self.metrics])}
        distributed.agree(comm, self.name, model, settings or {},
                          hint="Run the same fit() call on every rank, with the whole data set on each: fit shards "
                               "every global batch (batch_size) across the ranks itself.")
        if self.optimizer.flat_slots is None:
            self.optimizer.build(self.flat)
        comm.bcast_(self.flat.p)
        for slot in self.optimizer.flat_slots:
            comm.bcast_(slot)
        self.optimizer.iterations, self._step, state, seeds = comm.bcast_obj(
            (self.optimizer.iterations, self._step, rng.bit_generator.state,
             [layer.seed for layer in self.layers if isinstance(layer, Dropout)]))
        rng.bit_generator.state = state
        for layer, seed in zip([layer for layer in self.layers if isinstance(layer, Dropout)], seeds):
            layer.seed = seed
        digest = distributed.checksum(self.ops.asnumpy(self.flat.p),
                                      *(self.ops.asnumpy(s) for s in self.optimizer.flat_slots),
                                      numpy.array([self.optimizer.iterations, self._step]),
                                      numpy.frombuffer(repr((state, seeds)).encode(), dtype=numpy.uint8))
        digests = comm.allgather_obj(digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"{self.name}: replicas disagree after the broadcast from rank 0 (checksums {digests})")

    def _evaluate_arrays(self, x, y, batch_size, comm=None, cbs=None):
        """``{loss, *metrics}`` means over ``(x, y)``; with a ``CallbackList`` ``cbs``, its ``on_test_*``
        hooks are called as Keras's ``evaluate`` calls them (batch hooks only where overridden)."""
        if comm is not None and comm.size > 1:  # each rank evaluates its contiguous share
            lo, hi = distributed.shard(x.shape[0], comm.rank, comm.size)
            x, y = x[lo:hi], y[lo:hi]
        begin_hooks = end_hooks = ()
        if cbs is not None:
            begin_hooks, end_hooks = cbs.hooks("on_test_batch_begin"), cbs.hooks("on_test_batch_end")
            self.stop_evaluating = False
            cbs.on_test_begin({})
        sums, count = {}, 0
        for batch, start in enumerate(range(0, x.shape[0], batch_size)):
            if begin_hooks:
                begin_logs = {"size": min(batch_size, x.shape[0] - start)}
                for hook in begin_hooks:
                    hook(batch, begin_logs)
            xb, tb = self._on_device(x[start:start + batch_size]), self._on_device(y[start:start + batch_size], None)
            out = self._forward(xb, False)
            loss = self.loss.compute(self.ops, out, tb, None)
            penalty = self._penalty()
            if penalty is not None:
                loss = loss + penalty
            for k, v in self._batch_stats(out, tb, loss, xb.shape[0]).items():
                sums[k] = v if k not in sums else sums[k] + v
            count += xb.shape[0]
            if end_hooks:
                end_logs = EvalLogs(self.ops, sums, count)
                for hook in end_hooks:
                    hook(batch, end_logs)
            if cbs is not None and self.stop_evaluating:
                break
        keys = ["loss"] + [m.name for m in self.metrics]
        host = self.ops.asnumpy(self.ops.xp.stack([sums[k] for k in keys])).astype(numpy.float64) if count else \
            numpy.zeros(len(keys))
        if comm is not None and comm.size > 1:
            reduced = comm.allreduce_host(numpy.append(host, count))
            host, count = reduced[:-1], reduced[-1]
        logs = {k: float(v) / count for k, v in zip(keys, host)}
        if cbs is not None:
            cbs.on_test_end(logs)
        return logs

    def _penalty(self):
        total = None
        for layer, name, reg in self._regularized():
            p = reg.penalty(self.ops, getattr(layer, name))
            total = p if total is None else total + p
        return total

    def get_layer(self, name=None, index=None):
        """A layer by ``name`` or by ``index``, as Keras's ``get_layer``."""
        if (name is None) == (index is None):
            raise ValueError(f"{self.name}.get_layer: give exactly one of name and index")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, numpy.integer)) or \
                    not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"{self.name}.get_layer: index {index!r} is out of range for "
                                 f"{len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"{self.name}.get_layer: no layer named {name!r}; layers: "
                         f"{', '.join(layer.name for layer in self.layers)}")

    def evaluate(self, x, y, batch_size=32, verbose="auto", return_dict=False, callbacks=None):
        """``[loss, *metrics]`` on ``(x, y)`` (just the loss when there are no metrics), as host floats.

        ``callbacks``: their ``on_test_begin``, ``on_test_batch_begin/end`` and ``on_test_end`` hooks
        are called, as in Keras."""
        self._require_compiled("evaluate()")
        batch_size = _positive_int(self.name, "batch_size", 32 if batch_size is None else batch_size)  # Keras
        x, y = self._prepare(x, y, move="auto")
        cbs = CallbackList(callbacks, self) if callbacks else None
        logs = self._evaluate_arrays(x, y, batch_size, cbs=cbs)
        if verbose not in (0, "auto", False) and verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), file=sys.stdout, flush=True)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=32, verbose=0, callbacks=None):
        """Outputs for ``x`` as a host NumPy array (probabilities when the model ends in softmax/sigmoid).

        ``callbacks``: their ``on_predict_begin``, ``on_predict_batch_begin``,
        ``on_predict_batch_end(batch, {"outputs": host array})`` and ``on_predict_end`` hooks are
        called, as in Keras; ``model.stop_predicting = True`` stops after the current batch."""
        batch_size = _positive_int(self.name, "batch_size", 32 if batch_size is None else batch_size)  # Keras
        x, _ = self._prepare(x, move="auto")
        cbs = CallbackList(callbacks, self) if callbacks else None
        begin_hooks = end_hooks = ()
        if cbs is not None:
            begin_hooks, end_hooks = cbs.hooks("on_predict_batch_begin"), cbs.hooks("on_predict_batch_end")
            self.stop_predicting = False
            cbs.on_predict_begin({})
        outs = []
        for batch, start in enumerate(range(0, x.shape[0], batch_size)):
            if begin_hooks:
                begin_logs = {"size": min(batch_size, x.shape[0] - start)}
                for hook in begin_hooks:
                    hook(batch, begin_logs)
            outs.append(self._apply_head(self._forward(self._on_device(x[start:start + batch_size]), False)))
            if end_hooks:
                end_logs = {"outputs": self.ops.asnumpy(outs[-1])}
                for hook in end_hooks:
                    hook(batch, end_logs)
            if cbs is not None and self.stop_predicting:
                break
        result = self.ops.asnumpy(self.ops.xp.concatenate(outs))
        if cbs is not None:
            cbs.on_predict_end({})
        return result

    def _on_device(self, a, dtype="model"):
        """One batch on the model's device (a no-op for arrays already there): the inference loops'
        per-batch copy when ``_prepare(move="auto")`` left a too-large set on the host."""
        if self.ops.owns(a):
            return a
        return self.ops.asarray(a, dtype=self.dtype if dtype == "model" else dtype)

    def train_on_batch(self, x, y):
        """One optimizer step on ``(x, y)``; returns ``[loss, *metrics]`` for that batch."""
        self._require_compiled("train_on_batch()")
        x, y = self._prepare(x, y)
        stats = self._train_batch(x, y)
        host = self.ops.asnumpy(self.ops.xp.stack(list(stats.values())))
        values = [float(v) / x.shape[0] for v in host]
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x, y):
        """``[loss, *metrics]`` on one batch without training."""
        self._require_compiled("test_on_batch()")
        x, y = self._prepare(x, y)
        values = list(self._evaluate_arrays(x, y, x.shape[0]).values())
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------------ saving
    def save(self, path, include_optimizer=True):
        """Write architecture, compile settings, weights and optimizer state to one ``.fastnn`` zip, atomically."""
        from fastnn import io

        self._require_built("save()")
        io.save_model(self, path, include_optimizer)

    def save_weights(self, path):
        """The weights alone, as ``.npz``."""
        from fastnn import io

        self._require_built("save_weights()")
        io.save_weights(self, path)

    def load_weights(self, path):
        """Load weights written by ``save_weights`` (shapes must match this model)."""
        from fastnn import io

        io.load_weights(self, path)

    def __call__(self, x):
        return self.predict(x)

    def __repr__(self):
        return f"Sequential(name={self.name!r}, layers={[layer.name for layer in self.layers]})"
