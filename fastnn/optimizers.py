"""Optimizers, in the order learners meet them: SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW,
and Keras's Nadam and Adamax.

Two entry points share one arithmetic (the backend's ``*_step`` primitive):

1. the book's ``opt.update(params, grads)`` with dicts of arrays, updating ``params`` in place
   (any keys, any shapes, state kept per key);
2. ``opt.step_flat(flat)``, used by models: one fused primitive call over the model's flat
   parameter and gradient buffers (``fastnn.params.FlatParams``) per run of equal flags.

Each optimizer follows the library its docstring names, formula and defaults: SGD, Momentum,
Nesterov, Adam and AdamW follow ``torch.optim``; AdaGrad, RMSprop, Nadam and Adamax follow Keras 3.
Every optimizer takes every audience's spelling: ``lr``/``learning_rate``, ``beta1``/``beta_1``,
``beta2``/``beta_2``, ``eps``/``epsilon``, ``rho``/``decay_rate``. Common options: ``weight_decay``, on
every trainable parameter, as its library applies it (``torch.optim``: L2 added to the gradient,
``g += wd * p``, AdamW decoupled, ``p *= 1 - lr*wd``; Keras: decoupled, ``p -= lr*wd*p`` before the
update); ``clipnorm`` (the global gradient norm is clipped to it, as ``torch.nn.utils.clip_grad_norm_``
and Keras's ``global_clipnorm``: the gradient is scaled by ``min(1, clipnorm / (norm + 1e-6))``); and
``clipvalue`` (Keras's: each gradient element clipped to ``[-clipvalue, clipvalue]``, before any L2
term; at most one of ``clipnorm`` and ``clipvalue``, as Keras allows one). ``lr`` may be a number or a
schedule (``fastnn.optimizers.schedules``, Keras's ``keras.optimizers.schedules``; evaluated at the
optimizer's step count).
"""
from __future__ import annotations

import math
import sys

import numpy

from fastnn import registry, schedules
from fastnn.backend import follow
from fastnn.functions import check_flag
from fastnn.schedules import (CosineDecay, CosineDecayRestarts, ExponentialDecay, InverseTimeDecay,
                              LearningRateSchedule, PiecewiseConstantDecay, PolynomialDecay, Schedule, StepDecay,
                              _check_fraction, _check_positive)

_FLOAT_MAX: dict = {}  # dtype -> float(numpy.finfo(dtype).max), read by rate_for every step

__all__ = [
    "Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "AdamW", "Nadam", "Adamax", "get",
    "schedules", "LearningRateSchedule", "StepDecay", "ExponentialDecay", "PiecewiseConstantDecay",
    "PolynomialDecay", "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "OPTIMIZER_NAMES",
]

# ``fastnn.optimizers.schedules`` is Keras's spelling of ``fastnn.schedules``; registered as a submodule
# so ``from fastnn.optimizers.schedules import PolynomialDecay`` works too.
sys.modules[__name__ + ".schedules"] = schedules


def _alias(owner, value, default, **synonyms):
    """One value from a parameter and its synonyms; giving two different values is an error."""
    given = {k: v for k, v in synonyms.items() if v is not None}
    if len({repr(v) for v in given.values()}) > 1:
        raise ValueError(f"{owner}: {' and '.join(given)} are synonyms; got different values {given}")
    if given:
        return next(iter(given.values()))
    return default if value is None else value


def scheduled_lr(opt, schedule, step):
    """``schedule(step)`` as a float, refused by name unless it is a finite non-negative real number (a
    user's function returning NaN, a negative or complex number or a string, or a growing schedule that
    overflows), so no update runs with it."""
    try:
        value = schedule(step)
    except OverflowError:
        value = math.inf
    rate = None
    if not isinstance(value, (bool, str, bytes)) and not numpy.iscomplexobj(value):
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = None
    if rate is None or not math.isfinite(rate) or rate < 0:
        name = getattr(schedule, "__name__", type(schedule).__name__)
        raise ValueError(f"{type(opt).__name__}: lr={name} gave {value!r} at step {step}; a learning rate must be a "
                         f"finite non-negative number")
    return rate


# ---------------------------------------------------------------- optimizers
class Optimizer:
    """Base class. A subclass describes its update once: its state ``slots``, the backend primitive
    that applies one step (``rule``: ``ops.<rule>_step(p, g, *slots, *args)``) and that primitive's
    arguments after the slots (``step_args``). Every way of running it derives from that: by value
    (the book's dict path and the flat path), and from a device buffer of per-step scalars
    (``ops.step_scalars``/``ops.step_dev``: a captured CUDA graph). Every primitive's last argument,
    ``clipvalue``, is the base class's: ``step_args`` gives the ones before it."""

    slots: tuple = ()
    default_lr = 0.01
    rule = None

    def __init__(self, lr=None, *, learning_rate=None, weight_decay=0.0, clipnorm=None, clipvalue=None, name=None):
        owner = type(self).__name__
        lr = _alias(owner, None, self.default_lr, lr=lr, learning_rate=learning_rate)
        if not isinstance(lr, Schedule) and not callable(lr):
            lr = _check_positive(owner, "lr", lr, allow_zero=True)
        self._lr = lr
        self.weight_decay = _check_positive(owner, "weight_decay", weight_decay, allow_zero=True)
        self.clipnorm = None if clipnorm is None else _check_positive(owner, "clipnorm", clipnorm)
        self.clipvalue = None if clipvalue is None else _check_positive(owner, "clipvalue", clipvalue)
        if self.clipnorm is not None and self.clipvalue is not None:
            raise ValueError(f"{owner}: only one of clipnorm and clipvalue can be set (as in Keras), got "
                             f"clipnorm={clipnorm!r} and clipvalue={clipvalue!r}")
        self.name = name or owner
        self.iterations = 0  # updates applied so far; Adam's step t is iterations after the increment
        self.state = {}  # book path: key -> tuple of slot arrays
        self.flat_slots = None  # fast path: tuple of flat slot arrays
        self._views = None  # _piece_views' last answer, with what it was made from
        self._decay_excluded = set()

    # -- learning rate
    @property
    def lr(self):
        """The learning rate of the next update (a schedule is evaluated at the step count)."""
        return scheduled_lr(self, self._lr, self.iterations) if callable(self._lr) else self._lr

    @lr.setter
    def lr(self, value):
        self._lr = value if callable(value) else _check_positive(type(self).__name__, "lr", value, allow_zero=True)

    learning_rate = lr

    def rate_for(self, dtypes):
        """This step's learning rate, refused when a parameter's dtype cannot hold it (a rate of 1e39,
        given or grown by a schedule, becomes inf in float32 and turns the weights into NaN)."""
        lr = self.lr
        for dtype in dtypes:
            top = _FLOAT_MAX.get(dtype)
            if top is None:
                top = _FLOAT_MAX[dtype] = float(numpy.finfo(dtype).max)
            if lr > top:
                raise ValueError(f"{type(self).__name__}: lr={lr!r} at step {self.iterations} is beyond "
                                 f"{numpy.dtype(dtype)}'s range; it would become inf in the parameters' dtype")
        return lr

    def exclude_from_weight_decay(self, var_names=()):
        """Keys (book path) or ``"layer/name"`` keys whose parameters get no ``weight_decay``."""
        self._decay_excluded.update(var_names)

    # -- the arithmetic: one primitive call
    def step_args(self, lr, weight_decay, scale, t):
        """The arguments of ``ops.<rule>_step`` after ``p, g`` and the slots, in its order."""
        raise NotImplementedError

    def _args(self, lr, weight_decay, scale, t):
        """All of the primitive's arguments after the slots: ``step_args``, then ``clipvalue``."""
        return (*self.step_args(lr, weight_decay, scale, t), math.inf if self.clipvalue is None else self.clipvalue)

    def _apply(self, ops, p, g, state, lr, weight_decay, scale, t):
        getattr(ops, self.rule + "_step")(p, g, *state, *self._args(lr, weight_decay, scale, t))

    def _clip_scale(self, ops, sq_norms):
        if self.clipnorm is None:
            return 1.0
        norm = math.sqrt(sum(float(ops.asnumpy(s)) for s in sq_norms))
        return min(1.0, self.clipnorm / (norm + 1e-6))

    # -- book path
    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (dicts with the same keys)."""
        missing = [k for k in params if k not in grads]
        if missing:
            raise KeyError(f"{self.name}.update: grads has no entry for {missing} (params keys: {list(params)})")
        for key in params:  # every key is checked before any parameter changes
            p, g = params[key], grads[key]
            if not hasattr(p, "dtype") or not hasattr(p, "shape"):
                raise TypeError(f"{self.name}.update: params[{key!r}] must be an array updated in place, got "
                                f"{type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"{self.name}.update: params[{key!r}] has dtype {p.dtype}; only float arrays can "
                                f"be trained (cast it with .astype(float) first)")
            if not getattr(p.flags, "writeable", True):
                raise ValueError(f"{self.name}.update: params[{key!r}] is read-only; pass a writeable array")
            g_kind = getattr(getattr(g, "dtype", None), "kind", None)
            if g_kind not in ("f", "i", "u", "b"):
                raise TypeError(f"{self.name}.update: grads[{key!r}] must be a real numeric array, got "
                                f"{type(g).__name__} of dtype {getattr(g, 'dtype', None)} (complex gradients "
                                f"would lose their imaginary part)")
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(f"{self.name}.update: params[{key!r}] has shape {tuple(p.shape)} but "
                                 f"grads[{key!r}] has {tuple(g.shape)}")
        ops = follow(*params.values())
        scale = 1.0
        if self.clipnorm is not None:
            scale = self._clip_scale(ops, [ops.sq_norm(grads[k].reshape(-1)) for k in params])
        lr = self.rate_for(p.dtype for p in params.values())
        self.iterations += 1
        for key, p in params.items():
            g = grads[key]
            if not ops.owns(g):
                g = ops.asarray(g)
            if g.dtype != p.dtype:
                g = g.astype(p.dtype)
            flat_p = p.reshape(-1)
            writes_back = not p.flags.c_contiguous
            if writes_back:
                flat_p = flat_p.copy()
            state = self.state.get(key)
            if state is None or (state and state[0].shape != flat_p.shape):
                state = self.state[key] = self._new_slots(ops, flat_p.shape, p.dtype)
            wd = 0.0 if key in self._decay_excluded else self.weight_decay
            self._apply(ops, flat_p, g.reshape(-1), state, lr, wd, scale, self.iterations)
            if writes_back:
                p[...] = flat_p.reshape(p.shape)

    def _new_slots(self, ops, shape, dtype):
        """Fresh state arrays, one per slot (zeros; AdaGrad starts its accumulator elsewhere)."""
        return tuple(ops.alloc(shape, dtype) for _ in self.slots)

    # -- fast path
    def build(self, flat):
        """Make the flat state slots for a model's ``FlatParams`` (called at ``compile``); the
        configuration at that point is kept as ``initial_config`` (a run's checkpoints identify the
        optimizer by it, whatever a learning-rate callback does later)."""
        self.flat_slots = self._new_slots(flat.ops, (flat.size,), flat.dtype)
        if getattr(self, "initial_config", None) is None:
            self.initial_config = self.get_config()

    def step_flat(self, flat):
        """One update of the model's flat buffers: one primitive call per run of equal flags."""
        if self.flat_slots is None or (self.flat_slots and self.flat_slots[0].shape != (flat.size,)):
            self.build(flat)
        ops = flat.ops
        scale = 1.0
        if self.clipnorm is not None:
            scale = self._clip_scale(ops, [ops.sq_norm(flat.g[a:b]) for a, b, _ in flat.runs()])
        lr = self.rate_for((flat.dtype,))
        self.iterations += 1
        for piece_wd, p, g, slots in self._piece_views(flat):
            self._apply(ops, p, g, slots, lr, piece_wd, scale, self.iterations)

    def _piece_views(self, flat):
        """``[(weight decay, p, g, slots)]`` of each piece (``_pieces``): views of the flat buffers, the
        buffers themselves for a piece that covers them all; made again only when the runs, the
        buffers or the decay change."""
        runs, slots = flat.runs(), self.flat_slots
        cached = self._views
        if (cached is not None and cached[0] is runs and cached[1] is flat.p and cached[2] is flat.g
                and cached[3] is slots and cached[4] == self.weight_decay and not self._decay_excluded):
            return cached[5]

        def part(x, a, b):
            return x if a == 0 and b == x.shape[0] else x[a:b]

        views = [(wd, part(flat.p, a, b), part(flat.g, a, b), tuple(part(s, a, b) for s in slots))
                 for a, b, wd in self._pieces(flat)]
        self._views = (runs, flat.p, flat.g, slots, self.weight_decay, views)
        return views

    def _pieces(self, flat):
        """``[(start, stop, weight decay)]``: the flat ranges updated by one primitive call each."""
        pieces = []
        excluded = self._decay_excluded
        for start, stop, decay in flat.runs():
            wd = self.weight_decay if decay else 0.0
            if excluded and wd:  # rare: per-key exclusions split the run into its weights
                pieces += [(e.offset, e.offset + e.size, 0.0 if e.key in excluded else wd)
                           for e in flat.entries if start <= e.offset < stop]
            else:
                pieces.append((start, stop, wd))
        return pieces

    # -- captured path (fit(cuda_graph=True); see fastnn.backend.graphs and Ops' graph-capture variants)
    def graph_capturable(self):
        """Whether a CUDA graph can hold this optimizer's update: not with ``clipnorm``, whose scale
        is a host value computed from the gradient's norm every step."""
        return self.clipnorm is None

    def graph_kind(self):
        """What decides which primitive a captured update launches (part of the graph's identity)."""
        return self.rule

    def graph_scalars(self, flat, pieces):
        """This step's per-piece scalar rows (host float64, one row per piece), as ``step_flat``
        would compute them now; the caller advances ``iterations`` once the step has run."""
        lr, t = self.lr, self.iterations + 1
        rows = [flat.ops.step_scalars(self.rule, flat.dtype, *self._args(lr, wd, 1.0, t)) for _, _, wd in pieces]
        if len(rows) == 1:  # the common case, every step of a captured fit: no stacking
            return rows[0][None]
        return numpy.stack(rows) if rows else numpy.zeros((0, 0))

    def step_flat_dev(self, flat, pieces, rows):
        """``step_flat``'s update with its scalars read from the device rows ``rows[i]`` (captured)."""
        ops = flat.ops
        for (a, b, _), s in zip(pieces, rows):
            ops.step_dev(self.rule, flat.p[a:b], flat.g[a:b], tuple(slot[a:b] for slot in self.flat_slots), s)

    # -- state
    def get_config(self):
        lr = self._lr
        cfg = {"lr": lr.get_config() | {"class_name": type(lr).__name__} if isinstance(lr, Schedule) else lr,
               "weight_decay": self.weight_decay, "clipnorm": self.clipnorm, "clipvalue": self.clipvalue}
        cfg.update(self._hyper())
        return cfg

    def _hyper(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@registry.register_optimizer
class SGD(Optimizer):
    """Stochastic gradient descent: ``p -= lr * g``.

    With ``momentum > 0`` it is ``Momentum`` (``v = m*v - lr*g; p += v``, the book's form) and with
    ``nesterov=True`` it is ``Nesterov`` (``torch.optim.SGD``'s: ``v = m*v + g; p -= lr*(g + m*v)``).
    """

    default_lr = 0.01

    def __init__(self, lr=None, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(lr, **kwargs)
        self.momentum = _check_positive(type(self).__name__, "momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1), got {momentum}")
        self.nesterov = check_flag(type(self).__name__, "nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError(f"{type(self).__name__}: nesterov=True needs momentum > 0")
        self.slots = ("v",) if self.momentum > 0 else ()
        self.rule = "momentum" if self.momentum > 0 else "sgd"

    def step_args(self, lr, weight_decay, scale, t):
        if self.momentum > 0:
            return lr, self.momentum, weight_decay, scale, self.nesterov
        return lr, weight_decay, scale

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


@registry.register_optimizer
class Momentum(SGD):
    """Momentum SGD, the book's form: ``v = momentum*v - lr*g; p += v`` (Polyak 1964)."""

    def __init__(self, lr=None, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=False, **kwargs)

    def _hyper(self):
        return {"momentum": self.momentum}


@registry.register_optimizer
class Nesterov(SGD):
    """Nesterov momentum as ``torch.optim.SGD(nesterov=True)`` (Sutskever et al. 2013):
    ``v = momentum*v + g; p -= lr*(g + momentum*v)``."""

    def __init__(self, lr=None, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=True, **kwargs)

    def _hyper(self):
        return {"momentum": self.momentum}


@registry.register_optimizer
class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011), as Keras 3's ``keras.optimizers.Adagrad``, formula and defaults::

        h starts at initial_accumulator_value (0.1);  h += g^2;  p -= lr * g / sqrt(h + eps)

    ``lr=0.001``, ``eps=1e-7`` (``epsilon=``), inside the root. ``weight_decay`` is Keras's,
    decoupled: ``p -= lr * weight_decay * p`` before the update. The book's AdaGrad (``lr=0.01``,
    ``h`` from 0, ``1e-7`` added to ``sqrt(h)``) is ``fastnn.book``'s.
    """

    slots = ("h",)
    default_lr = 0.001
    rule = "adagrad"

    def __init__(self, lr=None, eps=None, *, epsilon=None, initial_accumulator_value=0.1, **kwargs):
        super().__init__(lr, **kwargs)
        self.eps = _check_positive("AdaGrad", "eps", _alias("AdaGrad", None, 1e-7, eps=eps, epsilon=epsilon))
        self.initial_accumulator_value = _check_positive("AdaGrad", "initial_accumulator_value",
                                                         initial_accumulator_value, allow_zero=True)

    def _new_slots(self, ops, shape, dtype):
        (h,) = super()._new_slots(ops, shape, dtype)
        h[...] = self.initial_accumulator_value
        return (h,)

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.eps, weight_decay, scale

    def _hyper(self):
        return {"eps": self.eps, "initial_accumulator_value": self.initial_accumulator_value}


@registry.register_optimizer
class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012), as Keras 3's ``keras.optimizers.RMSprop``, formula and defaults::

        h = rho*h + (1 - rho)*g^2;  p -= lr * g / sqrt(h + eps)

    ``lr=0.001``, ``rho=0.9`` (``decay_rate=``), ``eps=1e-7`` (``epsilon=``), inside the root.
    ``weight_decay`` is Keras's, decoupled: ``p -= lr * weight_decay * p`` before the update.
    (``torch.optim.RMSprop`` adds ``eps`` outside the root; so does the book's, with ``lr=0.01``,
    ``rho=0.99``: that one is ``fastnn.book``'s.)
    """

    slots = ("h",)
    default_lr = 0.001
    rule = "rmsprop"

    def __init__(self, lr=None, rho=None, eps=None, *, decay_rate=None, epsilon=None, **kwargs):
        super().__init__(lr, **kwargs)
        self.rho = _check_fraction("RMSprop", "rho", _alias("RMSprop", None, 0.9, rho=rho, decay_rate=decay_rate),
                                   allow_one=False)
        self.eps = _check_positive("RMSprop", "eps", _alias("RMSprop", None, 1e-7, eps=eps, epsilon=epsilon))

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.rho, self.eps, weight_decay, scale

    def _hyper(self):
        return {"rho": self.rho, "eps": self.eps}


class _Moments(Optimizer):
    """The Adam family's arguments: ``beta1``/``beta_1`` (0.9), ``beta2``/``beta_2`` (0.999), each in
    [0, 1), ``eps``/``epsilon`` (1e-7), ``lr`` 0.001 (Keras's defaults, which ``torch.optim.Adam``'s
    match but for its ``eps=1e-8``)."""

    slots = ("m", "v")
    default_lr = 0.001

    def __init__(self, lr=None, beta1=None, beta2=None, eps=None, *, beta_1=None, beta_2=None, epsilon=None,
                 **kwargs):
        super().__init__(lr, **kwargs)
        owner = type(self).__name__
        self.beta1 = _check_fraction(owner, "beta1", _alias(owner, None, 0.9, beta1=beta1, beta_1=beta_1),
                                     allow_one=False)
        self.beta2 = _check_fraction(owner, "beta2", _alias(owner, None, 0.999, beta2=beta2, beta_2=beta_2),
                                     allow_one=False)
        self.eps = _check_positive(owner, "eps", _alias(owner, None, 1e-7, eps=eps, epsilon=epsilon))

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


@registry.register_optimizer
class Adam(_Moments):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam``::

        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``eps`` is added after the bias correction of ``sqrt(v)``, as PyTorch does. Keras adds it to
    the uncorrected ``sqrt(v)`` (``p -= lr*sqrt(1-beta2^t)/(1-beta1^t) * m/(sqrt(v) + eps)``), which
    amounts to a larger effective epsilon early in training; with the same ``eps`` the two agree
    once ``sqrt(v)`` dwarfs ``eps``. The step count ``t`` is one per optimizer.

    ``amsgrad=True`` (AMSGrad, Reddi et al. 2018; Keras's and PyTorch's flag, same place in the
    arguments as Keras's) keeps a third slot ``v_hat = max(v_hat, v)``, the running maximum of the
    uncorrected ``v``, and divides by ``sqrt(v_hat)`` instead of ``sqrt(v)``: as both libraries do,
    with ``eps`` placed as above.
    """

    decoupled = False
    rule = "adam"

    def __init__(self, lr=None, beta1=None, beta2=None, eps=None, amsgrad=False, **kwargs):
        super().__init__(lr, beta1, beta2, eps, **kwargs)
        if not isinstance(amsgrad, (bool, numpy.bool_)):
            raise TypeError(f"{type(self).__name__}: amsgrad must be True or False, got {amsgrad!r}")
        self.amsgrad = bool(amsgrad)
        if self.amsgrad:  # a third slot, and the primitive that keeps it
            self.slots, self.rule = ("m", "v", "v_hat"), "amsgrad"

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.beta1, self.beta2, self.eps, t, weight_decay, scale, self.decoupled

    def _hyper(self):
        return super()._hyper() | {"amsgrad": self.amsgrad}


@registry.register_optimizer
class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``: ``p *= 1 - lr*weight_decay``, then
    the Adam update without the decay term in the gradient. ``weight_decay`` defaults to 0.01;
    ``amsgrad=True`` as in ``Adam``."""

    decoupled = True

    def __init__(self, lr=None, weight_decay=0.01, **kwargs):
        super().__init__(lr, weight_decay=weight_decay, **kwargs)


@registry.register_optimizer
class Nadam(_Moments):
    """Nadam (Dozat 2016), Adam with Nesterov momentum, as Keras 3's ``keras.optimizers.Nadam``,
    formula and defaults (``lr=0.001``, ``beta1=0.9``, ``beta2=0.999``, ``eps=1e-7``)::

        mu_t = beta1 * (1 - 0.5 * 0.96^t);  P_t = mu_1 * ... * mu_t
        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g^2
        m_hat = mu_{t+1} * m / (1 - P_{t+1}) + (1 - mu_t) * g / (1 - P_t)
        p -= lr * m_hat / (sqrt(v / (1 - beta2^t)) + eps)

    ``weight_decay`` is Keras's, decoupled: ``p -= lr * weight_decay * p`` before the update. The
    product ``P_t`` (Keras's ``u_product`` variable) is a function of the step count alone, so it is
    not saved: it is recomputed from ``iterations`` (kept incrementally, in float64 on the host) and
    reaches the primitive as an argument.
    """

    rule = "nadam"

    def __init__(self, lr=None, beta1=None, beta2=None, eps=None, **kwargs):
        super().__init__(lr, beta1, beta2, eps, **kwargs)
        self._mu = (self.beta1, 0, 1.0)  # (beta1, t, P_t): the last product computed

    def mu_product(self, t):
        """``P_t = mu_1 * ... * mu_t`` (1 for ``t = 0``), from the last one computed when it can."""
        beta1, k, product = self._mu
        if beta1 != self.beta1 or k > t:
            k, product = 0, 1.0
        while k < t:
            k += 1
            product *= self.beta1 * (1.0 - 0.5 * 0.96 ** k)
        self._mu = (self.beta1, k, product)
        return product

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.beta1, self.beta2, self.eps, t, self.mu_product(t), weight_decay, scale


@registry.register_optimizer
class Adamax(_Moments):
    """Adamax (Kingma & Ba 2015, section 7.1: Adam with the infinity norm), as Keras 3's
    ``keras.optimizers.Adamax``, formula and defaults (``lr=0.001``, ``beta1=0.9``, ``beta2=0.999``,
    ``eps=1e-7``)::

        m = beta1*m + (1 - beta1)*g;  u = max(beta2*u, |g|)
        p -= lr / (1 - beta1^t) * m / (u + eps)

    ``weight_decay`` is Keras's, decoupled: ``p -= lr * weight_decay * p`` before the update.
    """

    slots = ("m", "u")
    rule = "adamax"

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.beta1, self.beta2, self.eps, t, weight_decay, scale


_NAMED = {
    "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad, "rmsprop": RMSprop,
    "adam": Adam, "adamw": AdamW, "nadam": Nadam, "adamax": Adamax,
}
OPTIMIZER_NAMES = tuple(_NAMED)


def get(optimizer, **kwargs):
    """An optimizer from a name (``"adam"``, the book's ``"SGD"``, ...) and arguments, or an instance."""
    if isinstance(optimizer, Optimizer):
        if kwargs:
            raise TypeError("optimizer arguments can only be given with an optimizer name")
        return optimizer
    if isinstance(optimizer, str):
        cls = _NAMED.get(optimizer.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid names: {', '.join(OPTIMIZER_NAMES)}")
        return cls(**kwargs)
    raise TypeError(f"optimizer must be a name or an Optimizer instance, got {type(optimizer).__name__}")

