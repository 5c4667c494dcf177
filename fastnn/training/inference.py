"""The batch loops of ``evaluate`` (also ``fit``'s validation) and ``predict``, with Keras's
``on_test_*``/``on_predict_*`` hooks; results come back to the host once per call."""
from __future__ import annotations

import numpy

from fastnn import distributed
from fastnn.training.loop import EvalLogs

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


def evaluate_arrays(model, x, y, batch_size, comm=None, cbs=None):
    """``{loss, *metrics}`` means over ``(x, y)``; with a ``CallbackList`` ``cbs``, its ``on_test_*``
    hooks are called as Keras's ``evaluate`` calls them (batch hooks only where overridden)."""
    if comm is not None and comm.size > 1:  # each rank evaluates its contiguous share
        lo, hi = distributed.shard(x.shape[0], comm.rank, comm.size)
        x, y = x[lo:hi], y[lo:hi]
    begin_hooks, end_hooks = _begin(cbs, model, "test")
    ops = model.ops
    sums, count = {}, 0
    for batch, start in enumerate(range(0, x.shape[0], batch_size)):
        if begin_hooks:
            _call(begin_hooks, batch, {"size": min(batch_size, x.shape[0] - start)})
        xb, tb = model.on_device(x[start:start + batch_size]), model.on_device(y[start:start + batch_size], None)
        out = model.forward_pass(xb, False)
        loss = model.loss.compute(ops, out, tb, None)
        penalty = model.penalty()
        if penalty is not None:
            loss = loss + penalty
        for k, v in model.batch_stats(out, tb, loss, xb.shape[0]).items():
            sums[k] = v if k not in sums else sums[k] + v
        count += xb.shape[0]
        if end_hooks:
            _call(end_hooks, batch, EvalLogs(ops, sums, count))
        if cbs is not None and model.stop_evaluating:
            break
    keys = model.stat_names()
    host = ops.asnumpy(ops.xp.stack([sums[k] for k in keys])).astype(numpy.float64) if count else numpy.zeros(len(keys))
    if comm is not None and comm.size > 1:
        reduced = comm.allreduce_host(numpy.append(host, count))
        host, count = reduced[:-1], reduced[-1]
    logs = {k: float(v) / count for k, v in zip(keys, host)}
    if cbs is not None:
        cbs.on_test_end(logs)
    return logs


def predict_arrays(model, x, batch_size, cbs=None):
    """The model's outputs for ``x`` (probabilities after a fused head) as one host array; with a
    ``CallbackList`` ``cbs``, its ``on_predict_*`` hooks are called as Keras's ``predict`` calls them."""
    begin_hooks, end_hooks = _begin(cbs, model, "predict")
    ops = model.ops
    outs = []
    for batch, start in enumerate(range(0, x.shape[0], batch_size)):
        if begin_hooks:
            _call(begin_hooks, batch, {"size": min(batch_size, x.shape[0] - start)})
        outs.append(model.apply_head(model.forward_pass(model.on_device(x[start:start + batch_size]), False)))
        if end_hooks:
            _call(end_hooks, batch, {"outputs": ops.asnumpy(outs[-1])})
        if cbs is not None and model.stop_predicting:
            break
    result = ops.asnumpy(ops.xp.concatenate(outs))
    if cbs is not None:
        cbs.on_predict_end({})
    return result
