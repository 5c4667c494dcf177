"""``fit``'s compiled step: a model described in plain values for the backend (``Ops.train_plan``),
and the plan it returns run on the model's counters.

``describe(model)`` is the translation that needs the classes of layers, losses, metrics and
optimizers (which layers are Dense, Dropout, Activation, with which activation and weights; the
loss and whether it takes logits; the metric; the optimizer's rule and settings), or a sentence
saying why a model has no such description. The backend then needs none of those classes: it
says what its kernel cannot run, builds its tables from the description and trains on the
buffers it names. ``TrainPlan`` keeps what belongs to the model: its step counters, the
optimizer's learning-rate schedule, and whether a callback changed what the tables describe.
"""
from __future__ import annotations

import numpy

from fastnn import losses as L
from fastnn import metrics as M
from fastnn import optimizers as O
from fastnn.kernels import LINEAR
from fastnn.layers.core import Activation, Dense, Dropout, Flatten

__all__ = ["train_plan", "describe", "TrainPlan"]

_LOSSES = {L.SparseCategoricalCrossentropy: "xent_index", L.CategoricalCrossentropy: "xent_onehot",
           L.BinaryCrossentropy: "bce", L.MeanSquaredError: "mse"}


def train_plan(model, batch_size):
    """``(TrainPlan, None)`` when the model's backend trains it in one compiled call per batch;
    ``(None, why not)`` when the backend has such a step but not for this model; ``(None, None)``
    when the backend has none (see ``Ops.train_plan``)."""
    spec = describe(model)
    plan, why = model.ops.train_plan(spec, batch_size)
    return (None, why) if plan is None else (TrainPlan(model, plan, spec), None)


def _metric(metric):
    """The accuracy a metric computes, in ``Ops.train_plan``'s words ("argmax", "binary"), or None."""
    fn = getattr(metric, "fn", None)
    return "argmax" if fn is M._argmax_accuracy else "binary" if fn is M._binary_accuracy else None


def _optimizer(opt):
    """``(rule, settings)`` of the optimizers whose update is one rule of ``Ops.train_plan``'s, else None."""
    if opt is None or getattr(opt, "clipvalue", None) is not None:  # clipvalue: no fused form yet
        return None
    t = type(opt)
    if t in (O.SGD, O.Momentum, O.Nesterov):
        return opt.rule, {"momentum": opt.momentum, "nesterov": opt.nesterov}
    if t is O.AdaGrad:
        return "adagrad", {"eps": opt.eps}
    if t is O.RMSprop:
        return "rmsprop", {"rho": opt.rho, "eps": opt.eps}
    if t in (O.Adam, O.AdamW) and opt.rule == "adam":  # not amsgrad (a third slot)
        return "adam", {"beta1": opt.beta1, "beta2": opt.beta2, "eps": opt.eps, "decoupled": opt.decoupled}
    return None


def _layer(layer, act):
    """The description of one layer that computes (``act``: its activation in a training step), or
    a sentence saying why it has none."""
    if "forward" in vars(layer) or "backward" in vars(layer):
        return f"{layer.name}: forward/backward replaced on the layer object"
    if type(layer) is Dense:
        out = {"kind": "dense", "name": layer.name, "units": layer.units, "act": act, "alpha": layer.alpha}
    elif isinstance(layer, Activation) and type(layer).forward is Activation.forward \
            and type(layer).backward is Activation.backward:
        out = {"kind": "activation", "name": layer.name, "act": act, "alpha": layer.alpha}
    elif type(layer) is Dropout:
        out = {"kind": "dropout", "name": layer.name, "rate": layer.rate, "seed": layer.seed}
    elif type(layer) is not Flatten:
        return f"{type(layer).__name__} layers have no fused step"
    else:
        out = None
    if any(info.get("regularizer") is not None for info in layer._weights.values()):
        return f"{layer.name}: weight regularizers add a penalty per step"
    return out


def describe(model):
    """The plain-values description of a compiled, built ``model`` that ``Ops.train_plan`` reads (a
    dict), or a sentence (str) saying why the model has none. Builds the optimizer's flat state
    when it has none yet, as its first update would."""
    opt, head = model.optimizer, model.head
    rule = _optimizer(opt)
    if rule is None:
        return f"optimizer {type(opt).__name__} has no fused update"
    layers, last = [], len(model.layers) - 1
    offsets = {(e.layer.name, e.name): e.offset for e in model.flat.entries}
    for i, layer in enumerate(model.layers):
        fused_head = i == last and head is not None  # its activation is computed by the loss, on logits
        out = _layer(layer, LINEAR if fused_head and type(layer) is Dense else getattr(layer, "act", None))
        if isinstance(out, str):
            return out
        if out is None or (fused_head and out["kind"] != "dense") or (out["kind"] == "dropout" and out["rate"] == 0):
            continue  # no work in a training step: Flatten, Dropout(0), the output activation fused into the loss
        if out["kind"] == "dense":
            out["w"] = offsets[(layer.name, "W")]
            out["b"] = offsets[(layer.name, "b")] if layer.use_bias else -1
        layers.append(out)
    loss = model.loss
    kind = _LOSSES.get(type(loss))
    logits = kind is not None and (head is not None or loss.from_logits)
    if not (kind in ("xent_index", "xent_onehot") and logits and head in (None, "softmax")
            or kind == "bce" and logits and head in (None, "sigmoid")
            or kind == "mse" and head is None and not loss.from_logits):
        return f"loss {getattr(loss, 'name', type(loss).__name__)!r} (fused head: {head}) has no fused kernel"
    if len(model.metrics) > 1 or any(_metric(m) is None for m in model.metrics):
        return f"metrics {[m.name for m in model.metrics]}: only one accuracy metric is fused"
    if opt.flat_slots is None:
        opt.build(model.flat)
    return {"name": model.name, "dtype": model.dtype, "input_shape": tuple(model.input_shape),
            "layers": tuple(layers), "loss": kind, "metric": _metric(model.metrics[0]) if model.metrics else None,
            "logits": logits, "optimizer": rule[0], "hyper": rule[1], "clipnorm": opt.clipnorm,
            "pieces": tuple(opt._pieces(model.flat)), "runs": tuple((a, b) for a, b, _ in model.flat.runs()),
            "params": model.flat.p, "grads": model.flat.g, "slots": tuple(opt.flat_slots)}


class TrainPlan:
    """The backend's compiled step (``plan``, from ``Ops.train_plan``) run on ``model``: each call
    trains a run of batches and advances ``optimizer.iterations`` and the model's step counter as
    ``fit``'s eager step does."""

    def __init__(self, model, plan, spec):
        self.model, self.plan = model, plan
        self.pieces, self.buffers = spec["pieces"], (spec["params"], spec["grads"], *spec["slots"])

    def scalars(self, steps):
        """The optimizer's arguments for the next ``steps`` updates (a schedule read at each)."""
        opt = self.model.optimizer
        it0, lr = opt.iterations, opt._lr
        lrs = [O.scheduled_lr(opt, lr, it) for it in range(it0, it0 + steps)] if callable(lr) else [lr] * steps
        top = float(numpy.finfo(self.model.dtype).max)
        if any(rate > top for rate in lrs):  # as Optimizer.rate_for: inf in the model's dtype
            bad = next(i for i, rate in enumerate(lrs) if rate > top)
            raise ValueError(f"{type(opt).__name__}: lr={lrs[bad]!r} at step {it0 + bad} is beyond "
                             f"{numpy.dtype(self.model.dtype)}'s range; it would become inf in the parameters' dtype")
        return self.plan.scalars(lrs, it0)

    def _advance(self, stats):
        self.model.optimizer.iterations += stats.shape[0]
        self.model._step += stats.shape[0]
        return stats

    def run(self, x, t, order, check=True):
        """Train on the batches of ``order`` (indices into ``x``, one step per ``batch_size``); returns
        ``(K, 2)`` per-step ``(loss * n, metric sum)`` in the model's dtype (``x``, ``t``: see the
        backend's plan: C-contiguous in the model's dtype; checked unless ``check=False``)."""
        sc = self.scalars(self.plan.steps(len(order)))
        return self._advance(self.plan.run(x, t, order, sc, self.model._step, check=check))

    def prepare(self, x, t):
        """The data for ``step``, checked once per ``fit`` call."""
        return self.plan.prepare(x, t)

    def step(self, prepared, idx, names):
        """Train the batches of ``idx`` (fit's sampler's row indices) in one call; each step's sums as
        ``fit``'s eager step gives them: ``[{names[0]: loss * n, names[1]: metric sum}]``."""
        sc = self.scalars(self.plan.steps(len(idx)))
        stats = self._advance(self.plan.step(prepared, idx, sc, self.model._step))
        return [{name: row[i] for i, name in enumerate(names)} for row in stats]

    def still_valid(self):
        """Whether the tables still describe the model (a callback may freeze a layer or change the
        weight decay exclusions mid-fit): the optimizer's pieces and the flat buffers are unchanged."""
        flat, opt = self.model.flat, self.model.optimizer
        buffers = (flat.p, flat.g, *(opt.flat_slots or ()))
        return (tuple(opt._pieces(flat)) == self.pieces and len(buffers) == len(self.buffers)
                and all(a is b for a, b in zip(buffers, self.buffers)))
