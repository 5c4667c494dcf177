"""One model's training step: forward, loss, backward, all-reduce, regularizers, one fused
optimizer update; the out-of-memory retry; and the captured CUDA-graph step when ``fit`` asks for it.

A ``TrainStep`` belongs to one model (``TrainStep.of(model)``) and owns what a step needs between
steps: the loss gradient's buffer per output shape and the captured graph (``fastnn.backend.graphs``),
which later ``fit`` calls replay while what it was captured from is unchanged. The model says what
the network computes (``Sequential.forward_pass``/``backward_pass``/``batch_stats``); this module
says how a step runs it. Per-step layer settings travel in one ``fastnn.layers.base.StepContext``.
"""
from __future__ import annotations

import logging
import math
import warnings

from fastnn import distributed
from fastnn.backend import get_matmul_precision
from fastnn.errors import OutOfMemoryError
from fastnn.feeding import Inputs
from fastnn.layers.base import StepContext
from fastnn.layers.core import Dropout
from fastnn.training.fused_plan import train_plan

__all__ = ["TrainStep"]

log = logging.getLogger("fastnn")


def graphs_mod():
    """``fastnn.backend.graphs`` (imported when first needed: it is only for the CuPy backend)."""
    from fastnn.backend import graphs

    return graphs


class TrainStep:
    """The training step of ``model``: ``step(xb, tb)`` trains on one batch and returns its sums."""

    def __init__(self, model):
        self.model = model
        self.dx = {}  # the loss gradient's buffer per output shape
        self.graphs = None  # fastnn.backend.graphs.StepGraphs of the last fit that made one
        self._graph_owners = self._graph_key = None
        self._retry = False  # the step runs again after an out-of-memory error (StepContext.retry)

    @staticmethod
    def of(model):
        """The model's ``TrainStep`` (made on first use; ``compile`` and ``to`` let it go)."""
        step = model._train_step
        if step is None or step.model is not model:
            step = model._train_step = TrainStep(model)
        return step

    # ------------------------------------------------------------------ one step
    def step(self, xb, tb, n_global=None, row0=0, comm=None, weights=None):
        """One optimizer step. Under data parallelism ``xb`` is this rank's shard (rows ``row0`` onward
        of a global batch of ``n_global``): its gradient is scaled by its share before the all-reduce,
        so the summed gradient is the whole batch's mean. ``weights``: the samples' weights ``(n,)``
        on the device (Keras's ``sample_weight``), or None."""
        model = self.model
        n = xb.shape[0]
        n_global = n if n_global is None else n_global
        with StepContext(model._step, row0, retry=self._retry):  # activations are internal: workspaces
            if n:
                stats = self.grad(xb, tb, n, n_global, weights)
            else:  # more ranks than samples in this batch: contribute nothing, but take part
                model.flat.g[...] = 0
                stats = {k: model.ops.xp.zeros((), dtype=model.dtype) for k in model.stat_names()}
            stats = self.apply(stats, n, comm)
        model._step += 1  # only once the step went through: an out-of-memory retry redraws the same masks
        return stats

    def grad(self, xb, tb, n, n_global, weights=None):
        """Forward, loss, metrics and backward of one batch: the gradients land in ``flat.g``.

        Everything here runs on the device without a host sync or a value that changes from step
        to step, so it is what ``fit(cuda_graph=True)`` captures (``fastnn.backend.graphs``)."""
        model = self.model
        out = model.forward_pass(xb, True)
        dx = self.dx.get(out.shape)
        if dx is None or dx.dtype != out.dtype:
            dx = self.dx[out.shape] = model.ops.xp.empty_like(out)
        if weights is None:
            loss = model.loss.compute(model.ops, out, tb, dx)
        else:
            loss = model.loss.compute_weighted(model.ops, out, tb, dx, weights)
        if n != n_global:
            dx *= dx.dtype.type(n / n_global)
        model.backward_pass(dx)
        return model.batch_stats(out, tb, loss, n)

    def apply(self, stats, n, comm):
        """The rest of a step, run eagerly: all-reduce, regularizers, one fused optimizer update."""
        model = self.model
        if comm is not None and comm.size > 1:
            comm.allreduce_sum_(model.flat.g)
        penalty = model.regularize()  # after the all-reduce: added once
        if penalty is not None:
            stats["loss"] = stats["loss"] + penalty * model.dtype.type(n)
        model.optimizer.step_flat(model.flat)
        return stats

    # ------------------------------------------------------------------ one compiled call per batch
    def plan_for(self, batch_size, x, y):
        """The backend's compiled step for ``fit`` (``Ops.train_plan``) with the data prepared for it,
        as ``(plan, prepared)``; ``(None, None)`` where the model trains primitive by primitive. Says
        once per fit, at info level, why a backend that has such a step cannot use it."""
        model = self.model
        plan, why = train_plan(model, batch_size)
        if plan is None:
            if why is not None:
                log.info("%s: fit runs the step primitive by primitive: %s", model.name, why)
            return None, None
        return plan, plan.prepare(x, y)

    # ------------------------------------------------------------------ out of memory
    def guarded(self, fn, batch_size):
        """Run a step; when the device runs out of memory, free the caches once and retry, then raise
        ``fastnn.OutOfMemoryError`` with the sizes involved. Never switches device by itself."""
        ops = self.model.ops
        try:
            return fn()
        except MemoryError as exc:
            if not ops.is_out_of_memory(exc):
                raise
        self.free_buffers()
        if self.graphs is not None:
            self.graphs.reset()  # its graph kept the cleared workspaces: capture again later
        ops.free_memory()
        self._retry = True
        try:
            return fn()
        except MemoryError as exc:
            if not ops.is_out_of_memory(exc):
                raise
            raise OutOfMemoryError(self.oom_message(batch_size)) from exc
        finally:
            self._retry = False

    def free_buffers(self):
        for layer in self.model.layers:
            layer.free_workspaces()
        self.dx.clear()

    def oom_message(self, batch_size):
        model = self.model
        item = model.dtype.itemsize
        params = model.flat.size * item
        slots = len(model.optimizer.slots) * params if model.optimizer is not None else 0
        units = sum(math.prod(out[1:]) for _, _, out in model.layer_shapes())
        activations = 3 * units * batch_size * item  # outputs, gradients and workspaces
        usage = model.ops.memory_usage()
        pool = "" if usage is None else f"; memory pool: {usage[0]:,} bytes in use of {usage[1]:,} held"
        return (f"{model.name}: out of memory on {model.ops.device} training batches of {batch_size}: parameters "
                f"{params:,} bytes, gradients {params:,}, optimizer state {slots:,}, activations about "
                f"{activations:,} bytes per batch{pool}. Use a smaller batch_size (e.g. {max(1, batch_size // 2)}) "
                f"or train on the CPU with backend='cpu'; fastnn never switches device by itself.")

    # ------------------------------------------------------------------ captured steps
    def graphs_for(self, cuda_graph, batch_size, comm, x, y, weighted=False, steps=None):
        """``fastnn.backend.graphs.StepGraphs`` for a ``fit`` whose full-size steps are captured; None
        when they run eagerly. ``cuda_graph``: True (capture, in "split" mode if need be, and warn
        when it cannot), False, or "auto" (capture in "full" mode where that works, else say why once
        at INFO level); ``steps``: the fit's full-size steps, for "auto"."""
        model = self.model
        auto = isinstance(cuda_graph, str)
        if not cuda_graph:
            return None
        if auto and not model.ops.captures_graphs:
            return None  # a CPU backend: nothing to capture, nothing to say
        if isinstance(x, Inputs):
            what = "models with several inputs"
            if auto:
                graphs_mod().say_once(self, f"{what} are not captured yet")
                return None
            warnings.warn(f"{model.name}: fit(cuda_graph=True) does not capture {what} yet; its steps run eagerly",
                          RuntimeWarning, stacklevel=4)
            return None
        if not model.ops.captures_graphs:
            warnings.warn(f"{model.name}: fit(cuda_graph=True) needs the CuPy backend, and this model runs on "
                          f"{model.ops.name} ({model.ops.device}); its steps run eagerly", RuntimeWarning,
                          stacklevel=4)
            return None
        if auto:
            why = self._auto_refusal(comm, steps)
            if why is not None:
                graphs_mod().say_once(self, why)
                return None
        from fastnn.backend.graphs import StepGraphs

        lo, hi = distributed.shard(batch_size, comm.rank, comm.size)
        x_spec = (tuple(x.shape[1:]), model.dtype)
        y_spec = (tuple(y.shape[1:]), model.ops.asarray(y[:1]).dtype)
        # A captured step stays valid across fit() calls while what it was captured from is the
        # same: the flat buffers, the loss and metrics objects, the shapes and the precision.
        opt = model.optimizer
        owners = (model.flat, model.flat.p, model.flat.g, model.loss, opt, *(opt.flat_slots or ()), *model.metrics)
        rates = tuple(layer.rate for layer in model.layers if isinstance(layer, Dropout))
        pieces = tuple((a, b) for a, b, _ in opt._pieces(model.flat))
        key = (model.head, hi - lo, batch_size, x_spec, y_spec, bool(weighted), get_matmul_precision(), rates,
               comm.size > 1, opt.graph_kind(), opt.graph_capturable(), pieces)
        cached = self.graphs
        same = (cached is not None and len(self._graph_owners) == len(owners) and self._graph_key == key
                and all(a is b for a, b in zip(self._graph_owners, owners)))
        if same and cached.disabled is None and not (auto and cached.mode == "split"):
            cached.auto = auto  # this fit's mode says how a failure is reported
            return cached
        if auto and same and cached.auto and cached.disabled is not None and not cached.transient:
            return None  # "auto" gave this very step up before (and said why): eager, without trying again
        graphs = StepGraphs(self, hi - lo, x_spec, y_spec, distributed=comm.size > 1, auto=auto,
                            weighted=bool(weighted))
        self.graphs, self._graph_owners, self._graph_key = graphs, owners, key
        if auto:
            why = graphs.full_mode_refusal()
            if why is not None:
                graphs._give_up(why, quiet=True)
                return None
        return graphs

    def _auto_refusal(self, comm, steps):
        """Why ``cuda_graph="auto"`` does not capture this fit (before trying), or None."""
        if comm.size > 1:
            return "data-parallel runs capture only with cuda_graph=True"
        if steps is not None and steps < graphs_mod().AUTO_MIN_STEPS:
            return (f"{steps} full-size step(s) in this fit; a graph pays off from "
                    f"{graphs_mod().AUTO_MIN_STEPS}")
        return graphs_mod().capture_refusal(self.model.ops)

    def fill_slots(self, x, y, w, local, feeder, slots, index=None):
        """Write the batch ``local`` into a captured step's input slots ``(x, y, weights or None)``
        (on the current stream); ``index``: ``local`` already on the device; ``w``: the samples'
        weights (on the host with a feeder, else on the device) or None."""
        x_slot, y_slot, w_slot = slots
        ops = self.model.ops
        if feeder is not None:
            xb, yb = feeder.get(local)
            x_slot[...] = xb
            y_slot[...] = yb
            if w_slot is not None:
                w_slot[...] = ops.asarray(w[local])
            return
        idx = ops.asarray(local) if index is None else index
        ops.xp.take(x, idx, axis=0, out=x_slot)
        ops.xp.take(y, idx, axis=0, out=y_slot)
        if w_slot is not None:
            ops.xp.take(w, idx, axis=0, out=w_slot)
