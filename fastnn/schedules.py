"""Learning-rate schedules, Keras 3's ``keras.optimizers.schedules`` (also reachable as
``fastnn.optimizers.schedules``): a schedule is a function of the optimizer's step count (0 for the
first update) that an optimizer takes as its ``lr``.

Formulas, argument names, order and defaults follow Keras 3
(``keras/src/optimizers/schedules/learning_rate_schedule.py``); ``StepDecay`` is fastnn's own.
Arguments are checked when the schedule is made, so a bad one fails there, not steps into training.
``get_config()`` gives the constructor's arguments: ``serialize``/``deserialize`` and saved models use it.
"""
from __future__ import annotations

import bisect
import math
import numbers

from fastnn import registry
from fastnn.functions import check_flag

__all__ = [
    "LearningRateSchedule", "Schedule", "StepDecay", "ExponentialDecay", "PiecewiseConstantDecay",
    "PolynomialDecay", "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize",
    "SCHEDULES",
]


def _is_real(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _check_fraction(owner, name, value, *, allow_zero=True, allow_one=True):
    """A real number in [0, 1] (ends as the flags say): a schedule's decay rate or floor."""
    if not _is_real(value) or value < 0 or value > 1 or (value == 0 and not allow_zero) or \
            (value == 1 and not allow_one):
        lo, hi = "[" if allow_zero else "(", "]" if allow_one else ")"
        raise ValueError(f"{owner}: {name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)


def _check_count(owner, name, value):
    """A non-negative whole number of steps."""
    if not _is_real(value) or value < 0 or value != int(value):
        raise ValueError(f"{owner}: {name} must be a non-negative whole number, got {value!r}")
    return int(value)


def _check_positive(owner, name, value, allow_zero=False):
    if not _is_real(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}: {name} must be a {'non-negative' if allow_zero else 'positive'} number, "
                         f"got {value!r}")
    return float(value)


def _check_name(owner, name):
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{owner}: name must be a string, got {type(name).__name__}")
    return name


class Schedule:
    """A learning rate as a function of the optimizer's step count (0 for the first update).
    Subclass it (as Keras's ``LearningRateSchedule``) with ``__call__(step)`` and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))

    @classmethod
    def from_config(cls, config):
        return cls(**config)


LearningRateSchedule = Schedule  # Keras's name


@registry.register_schedule
class StepDecay(Schedule):
    """``lr = initial_learning_rate * decay_rate ** floor(step / decay_steps)`` (fastnn's; Keras spells
    it ``ExponentialDecay(..., staircase=True)``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate=0.1):
        self.initial_learning_rate = _check_positive("StepDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = int(_check_positive("StepDecay", "decay_steps", decay_steps))
        self.decay_rate = _check_fraction("StepDecay", "decay_rate", decay_rate, allow_zero=False)

    def __call__(self, step):
        return self.initial_learning_rate * self.decay_rate ** (step // self.decay_steps)


@registry.register_schedule
class ExponentialDecay(Schedule):
    """``lr = initial_learning_rate * decay_rate ** (step / decay_steps)`` (integer division when
    ``staircase``), as Keras's ``ExponentialDecay``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        self.initial_learning_rate = _check_positive("ExponentialDecay", "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _check_positive("ExponentialDecay", "decay_steps", decay_steps)
        # Keras allows a rate above 1 (a growing learning rate); it must be a positive finite number.
        self.decay_rate = _check_positive("ExponentialDecay", "decay_rate", decay_rate)
        self.staircase = check_flag("ExponentialDecay", "staircase", staircase)
        self.name = _check_name("ExponentialDecay", name)

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** (math.floor(p) if self.staircase else p)


@registry.register_schedule
class PiecewiseConstantDecay(Schedule):
    """Keras's ``PiecewiseConstantDecay``: ``values[0]`` while ``step <= boundaries[0]``, ``values[i]``
    while ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after ``boundaries[-1]``.

    ``boundaries``: strictly increasing numbers (at least one); ``values``: one more learning rate than
    boundaries, each a non-negative number.
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        try:
            boundaries, values = list(boundaries), list(values)
        except TypeError:
            raise TypeError(f"{owner}: boundaries and values must be lists of numbers, got "
                            f"{type(boundaries).__name__} and {type(values).__name__}") from None
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"{owner}: values must have one more element than boundaries, got "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        if not boundaries:
            raise ValueError(f"{owner}: needs at least one boundary (for a constant rate pass a number as lr)")
        for b in boundaries:
            if not _is_real(b):
                raise ValueError(f"{owner}: boundaries must be finite numbers, got {b!r}")
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"{owner}: boundaries must be strictly increasing, got {boundaries}")
        self.boundaries = [b if isinstance(b, int) else float(b) for b in boundaries]
        self.values = [_check_positive(owner, "each value", v, allow_zero=True) for v in values]
        self.name = _check_name(owner, name)

    def __call__(self, step):
        return self.values[bisect.bisect_left(self.boundaries, step)]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


@registry.register_schedule
class PolynomialDecay(Schedule):
    """Keras's ``PolynomialDecay``::

        s = min(step, decay_steps)        (cycle: decay_steps * ceil(step / decay_steps) replaces
                                           decay_steps, 1 at step 0, and s = step)
        lr = (initial_learning_rate - end_learning_rate) * (1 - s / decay_steps) ** power + end_learning_rate
    """

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0, cycle=False,
                 name="PolynomialDecay"):
        owner = "PolynomialDecay"
        self.initial_learning_rate = _check_positive(owner, "initial_learning_rate", initial_learning_rate, True)
        self.decay_steps = _check_positive(owner, "decay_steps", decay_steps)
        self.end_learning_rate = _check_positive(owner, "end_learning_rate", end_learning_rate, True)
        self.power = _check_positive(owner, "power", power, True)
        self.cycle = check_flag(owner, "cycle", cycle)
        self.name = _check_name(owner, name)

    def __call__(self, step):
        decay_steps = self.decay_steps
        if self.cycle:
            decay_steps *= 1.0 if step == 0 else math.ceil(step / decay_steps)
        else:
            step = min(step, decay_steps)
        frac = 1.0 - step / decay_steps
        return (self.initial_learning_rate - self.end_learning_rate) * frac ** self.power + self.end_learning_rate


@registry.register_schedule
class InverseTimeDecay(Schedule):
    """Keras's ``InverseTimeDecay``: ``lr = initial_learning_rate / (1 + decay_rate * step / decay_steps)``
    (``floor(step / decay_steps)`` when ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        owner = "InverseTimeDecay"
        self.initial_learning_rate = _check_positive(owner, "initial_learning_rate", initial_learning_rate, True)
        self.decay_steps = _check_positive(owner, "decay_steps", decay_steps)
        # A negative rate would divide by zero (and then flip the sign) a finite number of steps in.
        self.decay_rate = _check_positive(owner, "decay_rate", decay_rate, True)
        self.staircase = check_flag(owner, "staircase", staircase)
        self.name = _check_name(owner, name)

    def __call__(self, step):
        p = step / self.decay_steps
        return self.initial_learning_rate / (1.0 + self.decay_rate * (math.floor(p) if self.staircase else p))


@registry.register_schedule
class CosineDecay(Schedule):
    """Cosine decay with an optional linear warmup, as Keras's ``CosineDecay``.

    Without ``warmup_target`` there is no warmup (Keras ignores ``warmup_steps`` then)::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)

    With it: linear from ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``, then the
    decay above from ``warmup_target`` with ``step - warmup_steps`` in place of ``step``.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        self.initial_learning_rate = _check_positive("CosineDecay", "initial_learning_rate", initial_learning_rate,
                                                     True)
        self.decay_steps = int(_check_positive("CosineDecay", "decay_steps", decay_steps))
        self.alpha = _check_fraction("CosineDecay", "alpha", alpha)
        self.name = _check_name("CosineDecay", name)
        self.warmup_target = None if warmup_target is None else \
            _check_positive("CosineDecay", "warmup_target", warmup_target, True)
        self.warmup_steps = _check_count("CosineDecay", "warmup_steps", warmup_steps)

    def __call__(self, step):
        if self.warmup_target is None:
            target, s = self.initial_learning_rate, min(step, self.decay_steps)
        elif step < self.warmup_steps:
            return self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) * step / \
                self.warmup_steps
        else:
            target, s = self.warmup_target, min(step - self.warmup_steps, self.decay_steps)
        return target * ((1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * s / self.decay_steps)) + self.alpha)


@registry.register_schedule
class CosineDecayRestarts(Schedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2017), as Keras's ``CosineDecayRestarts``.

    Period ``i`` (from 0) lasts ``first_decay_steps * t_mul**i`` steps and peaks at
    ``initial_learning_rate * m_mul**i``; within it, at fraction ``f`` of the period::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * m_mul**i * (1 + cos(pi * f)) + alpha)

    ``t_mul`` must be at least 1: with shorter and shorter periods the schedule would end after a
    finite number of steps (Keras then returns NaN).
    """

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0, name="SGDRDecay"):
        owner = "CosineDecayRestarts"
        self.initial_learning_rate = _check_positive(owner, "initial_learning_rate", initial_learning_rate, True)
        self.first_decay_steps = _check_positive(owner, "first_decay_steps", first_decay_steps)
        self.t_mul = _check_positive(owner, "t_mul", t_mul)
        if self.t_mul < 1:
            raise ValueError(f"{owner}: t_mul must be at least 1 (each period as long as the one before or "
                             f"longer), got {t_mul!r}")
        self.m_mul = _check_positive(owner, "m_mul", m_mul, True)
        self.alpha = _check_fraction(owner, "alpha", alpha)
        self.name = _check_name(owner, name)

    def __call__(self, step):
        f = step / self.first_decay_steps
        if self.t_mul == 1.0:
            i = math.floor(f)
            f -= i
        else:
            i = math.floor(math.log(1.0 - f * (1.0 - self.t_mul)) / math.log(self.t_mul))
            f = (f - (1.0 - self.t_mul ** i) / (1.0 - self.t_mul)) / self.t_mul ** i
        cosine = 0.5 * self.m_mul ** i * (1.0 + math.cos(math.pi * f))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)


SCHEDULES = (StepDecay, ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay, InverseTimeDecay, CosineDecay,
             CosineDecayRestarts)


def serialize(schedule):
    """``{"class_name", "config"}`` of a schedule, as Keras's ``keras.optimizers.schedules.serialize``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"serialize: expected a learning-rate schedule, got {type(schedule).__name__}")
    return {"module": "fastnn.optimizers.schedules", "class_name": type(schedule).__name__,
            "config": schedule.get_config(), "registered_name": None}


def deserialize(config):
    """A schedule from ``serialize``'s dict (or Keras's: ``{"class_name", "config"}``), by class name
    from fastnn's fixed table (nothing is imported)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"deserialize: expected {{'class_name': ..., 'config': {{...}}}}, got {config!r}")
    return registry.schedule_class(config.get("class_name"))(**config["config"])
