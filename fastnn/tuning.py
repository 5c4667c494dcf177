"""Random hyper-parameter search: ``random_search(train_fn, space, trials, seed=None)``.

The book's recipe (sample learning rate and weight decay log-uniformly, train briefly, keep the
ranges that score well on a validation split carved from the training data) as one small loop,
so users do not rewrite it. Scoring is the caller's ``train_fn``: it trains on training data and
returns a validation score. The test set has no place here; touch it once, after the search.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy

__all__ = ["random_search"]

_RANGE_KINDS = ("log", "uniform", "int")
_FORMS = "('log', lo, hi), ('uniform', lo, hi), ('int', lo, hi) or a list of choices"


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _range_sampler(where, kind, lo, hi):
    """A function ``rng -> value`` for one ``(kind, lo, hi)`` entry, after checking it."""
    if kind == "int":
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (lo, hi)):
            raise ValueError(f"{where}: ('int', lo, hi) needs integer bounds, got lo={lo!r}, hi={hi!r}")
        lo, hi = int(lo), int(hi)
    elif not (_is_real(lo) and _is_real(hi) and math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{where}: ({kind!r}, lo, hi) needs finite numbers, got lo={lo!r}, hi={hi!r}")
    if lo >= hi:
        raise ValueError(f"{where}: lo must be below hi, got lo={lo!r} >= hi={hi!r}")
    if kind == "log":
        if lo <= 0:
            raise ValueError(f"{where}: ('log', lo, hi) samples log-uniformly and needs 0 < lo < hi, got lo={lo!r}; "
                             f"use ('uniform', lo, hi) for a range that reaches zero or below")
        log_lo, log_hi = math.log(lo), math.log(hi)
        # exp(log(hi)) can round a hair past hi; clip so the bounds hold exactly
        return lambda rng: min(max(math.exp(rng.uniform(log_lo, log_hi)), float(lo)), float(hi))
    if kind == "uniform":
        return lambda rng: float(rng.uniform(lo, hi))
    return lambda rng: int(rng.integers(lo, hi, endpoint=True))


def _sampler(name, spec):
    """Check one entry of ``space`` and return its sampler; errors name the entry."""
    where = f"random_search: space[{name!r}]"
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: the list of choices is empty; give at least one value")
        choices = list(spec)
        return lambda rng: choices[int(rng.integers(len(choices)))]
    if isinstance(spec, tuple):
        if len(spec) != 3 or not isinstance(spec[0], str):
            raise ValueError(f"{where}: expected {_FORMS}, got {spec!r}")
        if spec[0] not in _RANGE_KINDS:
            raise ValueError(f"{where}: unknown kind {spec[0]!r}; expected one of {', '.join(map(repr, _RANGE_KINDS))} "
                             f"(or a list of choices)")
        return _range_sampler(where, *spec)
    raise TypeError(f"{where}: expected {_FORMS}, got {type(spec).__name__} {spec!r}")


def _check_trials(trials):
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral):
        raise TypeError(f"random_search: trials must be a positive integer, got {type(trials).__name__} {trials!r}")
    if trials <= 0:
        raise ValueError(f"random_search: trials must be a positive integer, got {trials}")
    return int(trials)


def _score(value, params):
    """``train_fn``'s return value as a Python float (a 0-d device array is fine)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"random_search: train_fn must return one number (the validation score), got "
                        f"{type(value).__name__} {value!r} for params {params}") from None


def _rank(score):
    """Sort key: best (highest) first, NaN after everything else."""
    return (math.isnan(score), -score if not math.isnan(score) else 0.0)


def random_search(train_fn: Callable[..., float], space: Mapping[str, Any], trials: int,
                  seed: int | numpy.random.Generator | None = None) -> list[dict]:
    """Random search over ``space``: call ``train_fn(**params)`` ``trials`` times, best score first.

    Parameters
    ----------
    train_fn : callable
        ``train_fn(**params) -> float``: trains with these hyper-parameters and returns a
        validation score, higher is better (return ``-loss`` to minimise a loss). Score it on a
        validation split carved from the training data, never on the test set.
    space : mapping of str to spec
        One entry per keyword of ``train_fn``. A spec is

        - ``("log", lo, hi)``: log-uniform in ``[lo, hi]`` with ``0 < lo < hi`` (learning rates,
          weight decay: every decade is sampled equally often);
        - ``("uniform", lo, hi)``: uniform in ``[lo, hi]``;
        - ``("int", lo, hi)``: an integer in ``lo..hi``, both ends included;
        - a list of choices, each equally likely (``[50, 100, 200]``, ``["relu", "sigmoid"]``).
    trials : int
        How many parameter sets to sample and train (> 0).
    seed : int, numpy.random.Generator or None
        Seeds the search's own ``numpy.random.Generator`` (global random state is neither read
        nor changed): the same seed samples the same parameters in the same order. ``None``
        draws fresh entropy.

    Returns
    -------
    list of dict
        One ``{"params": {...}, "score": float}`` per trial, sorted by score, best first; ties
        keep trial order and NaN scores (a diverged run) come last. Values are Python ``float``,
        ``int`` or the chosen list item.

    Raises
    ------
    ValueError
        An entry of ``space`` has an unknown kind, ``lo >= hi``, ``lo <= 0`` for ``"log"``,
        non-integer bounds for ``"int"`` or an empty list of choices (the message names the
        entry); ``space`` is empty; ``trials <= 0``.
    TypeError
        ``train_fn`` is not callable, ``space`` is not a mapping, a spec is neither a tuple nor
        a list, or ``train_fn`` returns something that is not one number.

    Examples
    --------
    >>> import math
    >>> from fastnn.tuning import random_search
    >>> def train_fn(lr, weight_decay, hidden):
    ...     # stands in for "train a network, return its validation accuracy"
    ...     return 1.0 - abs(math.log10(lr) + 2) / 10 - weight_decay - hidden / 10_000
    >>> space = {"lr": ("log", 1e-4, 1e-1), "weight_decay": ("log", 1e-8, 1e-4),
    ...          "hidden": [50, 100, 200]}
    >>> results = random_search(train_fn, space, trials=20, seed=0)
    >>> len(results), sorted(results[0]["params"])
    (20, ['hidden', 'lr', 'weight_decay'])
    >>> results[0]["score"] >= results[-1]["score"]
    True
    """
    if not callable(train_fn):
        raise TypeError(f"random_search: train_fn must be callable, got {type(train_fn).__name__}")
    if not isinstance(space, Mapping):
        raise TypeError(f"random_search: space must be a mapping of name -> spec ({_FORMS}), "
                        f"got {type(space).__name__}")
    if not space:
        raise ValueError("random_search: space is empty; give at least one hyper-parameter to sample")
    for name in space:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"random_search: space keys become keyword arguments of train_fn and must be "
                             f"identifiers, got {name!r}")
    samplers = {name: _sampler(name, spec) for name, spec in space.items()}
    n = _check_trials(trials)
    if isinstance(seed, bool) or not (seed is None or isinstance(seed, (numbers.Integral, numpy.random.Generator))):
        raise TypeError(f"random_search: seed must be an integer, a numpy.random.Generator or None, got {seed!r}")
    rng = seed if isinstance(seed, numpy.random.Generator) else numpy.random.default_rng(seed)

    results = []
    for _ in range(n):
        params = {name: sample(rng) for name, sample in samplers.items()}
        score = _score(train_fn(**dict(params)), params)
        results.append({"params": params, "score": score})
    return sorted(results, key=lambda r: _rank(r["score"]))
