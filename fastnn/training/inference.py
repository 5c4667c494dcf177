"""The batch loops of ``evaluate`` (also ``fit``'s validation) and ``predict``, with Keras's
``on_test_*``/``on_predict_*`` hooks; results come back to the host once per call."""
from __future__ import annotations

import numpy

from fastnn import distributed
from fastnn.training.loop import EvalLogs, finalizers, host_values, means, split_values

__all__ = ["evaluate_arrays", "predict_arrays"]


def _begin(cbs, model, kind):
    """The per-batch hooks of ``on_<kind>_batch_begin/end`` that some callback overrides."""
    if cbs is None:
        return (), ()
    setattr(model, "stop_evaluating" if kind == "test" else "stop_predicting", False)
    getattr(cbs, f"on_{kind}_begin")({})
    return cbs.hooks(f"on_{kind}_batch_begin"), cbs.hooks(f"on_{kind}_batch_end")


def _call(hooks, batch, logs):
    for hook in hooks:
        hook(batch, logs)


def _sizes(model, keys):
    """Each stat's count-vector length (None for a plain sum), from the compiled metrics."""
    sizes = {m.name: getattr(m, "size", None) for m in getattr(model, "metrics", ())}
    return [sizes.get(k) for k in keys]


def eval_batch(model, xb, tb, wb, sums):
    """Add one batch's ``{loss, *metrics}`` sums (arrays on the device) into ``sums``."""
    out = model.forward_pass(xb, False)
    if wb is None:
        loss = model.loss.compute(model.ops, out, tb, None)
    else:
        loss = model.loss.compute_weighted(model.ops, out, tb, None, wb)
    penalty = model.penalty()
    if penalty is not None:
        loss = loss + penalty
    for k, v in model.batch_stats(out, tb, loss, xb.shape[0]).items():
        sums[k] = v if k not in sums else sums[k] + v


def evaluate_arrays(model, x, y, batch_size, comm=None, cbs=None, weights=None, progress=None):
    """``{loss, *metrics}`` means over ``(x, y)`` (the loss weighted by ``weights`` when given); with a
    ``CallbackList`` ``cbs``, its ``on_test_*`` hooks are called as Keras's ``evaluate`` calls them
    (batch hooks only where overridden)."""
    if comm is not None and comm.size > 1:  # each rank evaluates its contiguous share
        lo, hi = distributed.shard(x.shape[0], comm.rank, comm.size)
        x, y = x[lo:hi], y[lo:hi]
        weights = None if weights is None else weights[lo:hi]
    begin_hooks, end_hooks = _begin(cbs, model, "test")
    ops = model.ops
    sums, count = {}, 0
    for batch, start in enumerate(range(0, x.shape[0], batch_size)):
        if begin_hooks:
            _call(begin_hooks, batch, {"size": min(batch_size, x.shape[0] - start)})
        rows = slice(start, start + batch_size)
        xb, tb = model.on_device(x[rows]), model.on_device(y[rows], None)
        eval_batch(model, xb, tb, None if weights is None else model.on_device(weights[rows]), sums)
        count += xb.shape[0]
        if progress is not None:
            progress(batch + 1, xb.shape[0])
        if end_hooks:
            _call(end_hooks, batch, EvalLogs(ops, sums, count, finalizers(model)))
        if cbs is not None and model.stop_evaluating:
            break
    keys = model.stat_names()
    sizes = _sizes(model, keys)
    values = host_values(ops, sums, keys) if count else [0.0 if m is None else numpy.zeros(m) for m in sizes]
    if comm is not None and comm.size > 1:
        reduced = comm.allreduce_host(numpy.concatenate([numpy.ravel(v) for v in values] + [[count]]))
        values, count = split_values(reduced[:-1], sizes), reduced[-1]
    logs = means(keys, values, count, finalizers(model))
    if cbs is not None:
        cbs.on_test_end(logs)
    return logs


def predict_arrays(model, x, batch_size, cbs=None, progress=None):
    """The model's outputs for ``x`` (probabilities after a fused head) as one host array; with a
    ``CallbackList`` ``cbs``, its ``on_predict_*`` hooks are called as Keras's ``predict`` calls them."""
    begin_hooks, end_hooks = _begin(cbs, model, "predict")
    ops = model.ops
    outs = []
    for batch, start in enumerate(range(0, x.shape[0], batch_size)):
        if begin_hooks:
            _call(begin_hooks, batch, {"size": min(batch_size, x.shape[0] - start)})
        outs.append(model.apply_head(model.forward_pass(model.on_device(x[start:start + batch_size]), False)))
        if progress is not None:
            progress(batch + 1)
        if end_hooks:
            _call(end_hooks, batch, {"outputs": ops.asnumpy(outs[-1])})
        if cbs is not None and model.stop_predicting:
            break
    result = ops.asnumpy(ops.xp.concatenate(outs))
    if cbs is not None:
        cbs.on_predict_end({})
    return result
