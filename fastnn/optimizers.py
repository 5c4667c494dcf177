"""Optimizers, in the order learners meet them: SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW.

Two entry points share one arithmetic (the backend's ``*_step`` primitive):

1. the book's ``opt.update(params, grads)`` with dicts of arrays, updating ``params`` in place
   (any keys, any shapes, state kept per key);
2. ``opt.step_flat(flat)``, used by models: one fused primitive call over the model's flat
   parameter and gradient buffers (``fastnn.params.FlatParams``) per run of equal flags.

Each optimizer follows the library its docstring names, formula and defaults: SGD, Momentum,
Nesterov, Adam and AdamW follow ``torch.optim``; AdaGrad and RMSprop follow Keras 3. Every optimizer
takes every audience's spelling: ``lr``/``learning_rate``, ``beta1``/``beta_1``, ``beta2``/``beta_2``,
``eps``/``epsilon``, ``rho``/``decay_rate``. Common options: ``weight_decay``, on every trainable
parameter, as its library applies it (``torch.optim``: L2 added to the gradient, ``g += wd * p``,
AdamW decoupled, ``p *= 1 - lr*wd``; Keras: decoupled, ``p -= lr*wd*p`` before the update) and ``clipnorm``
(the global gradient norm is clipped to it, as ``torch.nn.utils.clip_grad_norm_``: the gradient is
scaled by ``min(1, clipnorm / (norm + 1e-6))``). ``lr`` may be a number or a schedule from this
module (evaluated at the optimizer's step count).
"""
from __future__ import annotations

import math
import numbers

import numpy

from fastnn.backend import follow

__all__ = [
    "Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "AdamW", "get",
    "StepDecay", "ExponentialDecay", "CosineDecay", "OPTIMIZER_NAMES",
]


def _alias(owner, value, default, **synonyms):
    """One value from a parameter and its synonyms; giving two different values is an error."""
    given = {k: v for k, v in synonyms.items() if v is not None}
    if len({repr(v) for v in given.values()}) > 1:
        raise ValueError(f"{owner}: {' and '.join(given)} are synonyms; got different values {given}")
    if given:
        return next(iter(given.values()))
    return default if value is None else value


def _check_fraction(owner, name, value, *, allow_zero=True, allow_one=True):
    """A real number in [0, 1] (ends as the flags say): a schedule's decay rate or floor."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value < 0 or value > 1 or (value == 0 and not allow_zero) or (value == 1 and not allow_one):
        lo, hi = "[" if allow_zero else "(", "]" if allow_one else ")"
        raise ValueError(f"{owner}: {name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)


def _check_count(owner, name, value):
    """A non-negative whole number of steps."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value < 0 or value != int(value):
        raise ValueError(f"{owner}: {name} must be a non-negative whole number, got {value!r}")
    return int(value)


def _check_positive(owner, name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}: {name} must be a {'non-negative' if allow_zero else 'positive'} number, "
                         f"got {value!r}")
    return float(value)


# ---------------------------------------------------------------- learning-rate schedules
class Schedule:
    """A learning rate as a function of the optimizer's step count (0 for the first update)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))


class StepDecay(Schedule):
    """``lr = initial_learning_rate * decay_rate ** floor(step / decay_steps)``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate=0.1):
        self.initial_learning_rate = _check_positive("StepDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = int(_check_positive("StepDecay", "decay_steps", decay_steps))
        self.decay_rate = _check_fraction("StepDecay", "decay_rate", decay_rate, allow_zero=False)

    def __call__(self, step):
        return self.initial_learning_rate * self.decay_rate ** (step // self.decay_steps)


class ExponentialDecay(Schedule):
    """``lr = initial_learning_rate * decay_rate ** (step / decay_steps)`` (integer division when ``staircase``), as in Keras."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        self.initial_learning_rate = _check_positive("ExponentialDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _check_positive("ExponentialDecay", "decay_steps", decay_steps)
        # Keras allows a rate above 1 (a growing learning rate); it must be a positive finite number.
        self.decay_rate = _check_positive("ExponentialDecay", "decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase else p)


class CosineDecay(Schedule):
    """Linear warmup then cosine decay, as Keras's ``CosineDecay``.

    For ``step < warmup_steps``: linear from ``initial_learning_rate`` to ``warmup_target``. Then
    ``target * ((1 - alpha) * 0.5 * (1 + cos(pi * min(s, decay_steps) / decay_steps)) + alpha)``
    with ``s = step - warmup_steps`` and ``target = warmup_target`` (or ``initial_learning_rate``
    without warmup).
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, warmup_steps=0, warmup_target=None):
        self.initial_learning_rate = _check_positive("CosineDecay", "initial_learning_rate", initial_learning_rate, True)
        self.decay_steps = int(_check_positive("CosineDecay", "decay_steps", decay_steps))
        self.alpha = _check_fraction("CosineDecay", "alpha", alpha)
        self.warmup_steps = _check_count("CosineDecay", "warmup_steps", warmup_steps)
        self.warmup_target = None if warmup_target is None else \
            _check_positive("CosineDecay", "warmup_target", warmup_target, True)

    def __call__(self, step):
        target = self.initial_learning_rate if self.warmup_target is None else float(self.warmup_target)
        if step < self.warmup_steps:
            return self.initial_learning_rate + (target - self.initial_learning_rate) * step / self.warmup_steps
        s = min(step - self.warmup_steps, self.decay_steps)
        return target * ((1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * s / self.decay_steps)) + self.alpha)


# ---------------------------------------------------------------- optimizers
class Optimizer:
    """Base class. A subclass describes its update once: its state ``slots``, the backend primitive
    that applies one step (``rule``: ``ops.<rule>_step(p, g, *slots, *args)``) and that primitive's
    arguments after the slots (``step_args``). Every way of running it derives from that: by value
    (the book's dict path and the flat path), and from a device buffer of per-step scalars
    (``ops.step_scalars``/``ops.step_dev``: a captured CUDA graph)."""

    slots: tuple = ()
    default_lr = 0.01
    rule = None

    def __init__(self, lr=None, *, learning_rate=None, weight_decay=0.0, clipnorm=None, name=None):
        owner = type(self).__name__
        lr = _alias(owner, None, self.default_lr, lr=lr, learning_rate=learning_rate)
        if not isinstance(lr, Schedule) and not callable(lr):
            lr = _check_positive(owner, "lr", lr, allow_zero=True)
        self._lr = lr
        self.weight_decay = _check_positive(owner, "weight_decay", weight_decay, allow_zero=True)
        self.clipnorm = None if clipnorm is None else _check_positive(owner, "clipnorm", clipnorm)
        self.name = name or owner
        self.iterations = 0  # updates applied so far; Adam's step t is iterations after the increment
        self.state = {}  # book path: key -> tuple of slot arrays
        self.flat_slots = None  # fast path: tuple of flat slot arrays
        self._decay_excluded = set()

    # -- learning rate
    @property
    def lr(self):
        """The learning rate of the next update (a schedule is evaluated at the step count)."""
        return float(self._lr(self.iterations)) if callable(self._lr) else self._lr

    @lr.setter
    def lr(self, value):
        self._lr = value if callable(value) else _check_positive(type(self).__name__, "lr", value, allow_zero=True)

    learning_rate = lr

    def exclude_from_weight_decay(self, var_names=()):
        """Keys (book path) or ``"layer/name"`` keys whose parameters get no ``weight_decay``."""
        self._decay_excluded.update(var_names)

    # -- the arithmetic: one primitive call
    def step_args(self, lr, weight_decay, scale, t):
        """The arguments of ``ops.<rule>_step`` after ``p, g`` and the slots, in its order."""
        raise NotImplementedError

    def _apply(self, ops, p, g, state, lr, weight_decay, scale, t):
        getattr(ops, self.rule + "_step")(p, g, *state, *self.step_args(lr, weight_decay, scale, t))

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
        lr = self.lr
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
        lr = self.lr
        self.iterations += 1
        for a, b, piece_wd in self._pieces(flat):
            self._apply(ops, flat.p[a:b], flat.g[a:b], tuple(s[a:b] for s in self.flat_slots), lr, piece_wd,
                        scale, self.iterations)

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

    # -- captured path (fit(cuda_graph=True); see fastnn.graphs and Ops' graph-capture variants)
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
        rows = [flat.ops.step_scalars(self.rule, flat.dtype, *self.step_args(lr, wd, 1.0, t)) for _, _, wd in pieces]
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
               "weight_decay": self.weight_decay, "clipnorm": self.clipnorm}
        cfg.update(self._hyper())
        return cfg

    def _hyper(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


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
        self.nesterov = bool(nesterov)
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


class Momentum(SGD):
    """Momentum SGD, the book's form: ``v = momentum*v - lr*g; p += v`` (Polyak 1964)."""

    def __init__(self, lr=None, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=False, **kwargs)

    def _hyper(self):
        return {"momentum": self.momentum}


class Nesterov(SGD):
    """Nesterov momentum as ``torch.optim.SGD(nesterov=True)`` (Sutskever et al. 2013):
    ``v = momentum*v + g; p -= lr*(g + momentum*v)``."""

    def __init__(self, lr=None, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=True, **kwargs)

    def _hyper(self):
        return {"momentum": self.momentum}


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


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam``::

        m = beta1*m + (1 - beta1)*g;  v = beta2*v + (1 - beta2)*g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``eps`` is added after the bias correction of ``sqrt(v)``, as PyTorch does. Keras adds it to
    the uncorrected ``sqrt(v)`` (``p -= lr*sqrt(1-beta2^t)/(1-beta1^t) * m/(sqrt(v) + eps)``), which
    amounts to a larger effective epsilon early in training; with the same ``eps`` the two agree
    once ``sqrt(v)`` dwarfs ``eps``. The step count ``t`` is one per optimizer.
    """

    slots = ("m", "v")
    default_lr = 0.001
    decoupled = False
    rule = "adam"

    def __init__(self, lr=None, beta1=None, beta2=None, eps=None, *, beta_1=None, beta_2=None, epsilon=None,
                 **kwargs):
        super().__init__(lr, **kwargs)
        owner = type(self).__name__
        self.beta1 = _check_fraction(owner, "beta1", _alias(owner, None, 0.9, beta1=beta1, beta_1=beta_1), allow_one=False)
        self.beta2 = _check_fraction(owner, "beta2", _alias(owner, None, 0.999, beta2=beta2, beta_2=beta_2),
                                     allow_one=False)
        self.eps = _check_positive(owner, "eps", _alias(owner, None, 1e-7, eps=eps, epsilon=epsilon))

    def step_args(self, lr, weight_decay, scale, t):
        return lr, self.beta1, self.beta2, self.eps, t, weight_decay, scale, self.decoupled

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``: ``p *= 1 - lr*weight_decay``, then
    the Adam update without the decay term in the gradient. ``weight_decay`` defaults to 0.01."""

    decoupled = True

    def __init__(self, lr=None, weight_decay=0.01, **kwargs):
        super().__init__(lr, weight_decay=weight_decay, **kwargs)


_NAMED = {
    "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad, "rmsprop": RMSprop,
    "adam": Adam, "adamw": AdamW,
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

