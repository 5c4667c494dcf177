"""The fixed table of names a saved model may mention: layers, optimizers, schedules, losses, metrics.

Loading maps every class name in a file through these tables; nothing in a file is ever imported
or executed. ``fastnn.register(cls)`` adds a user's ``Layer`` subclass (or a ``Loss``) by its class
name, so a model that uses it can be loaded in a process that registered it. fastnn's own models,
optimizers and schedules register themselves where they are defined (``register_model``,
``register_optimizer``, ``register_schedule``), so this module imports none of them.
"""
from __future__ import annotations

_LAYERS: dict = {}
_LOSSES: dict = {}
_MODELS: dict = {}
_OPTIMIZERS: dict = {}
_SCHEDULES: dict = {}


def register(cls):
    """Make a user ``Layer`` (or ``fastnn.losses.Loss``) subclass loadable by name; usable as a decorator."""
    from fastnn.layers.base import Layer
    from fastnn.losses import Loss

    if not isinstance(cls, type) or not issubclass(cls, (Layer, Loss)):
        raise TypeError(f"register: expected a Layer or Loss subclass, got {cls!r}")
    table = _LAYERS if issubclass(cls, Layer) else _LOSSES
    existing = table.get(cls.__name__)
    if existing is not None and existing is not cls:
        raise ValueError(f"register: another class named {cls.__name__!r} is already registered ({existing!r})")
    table[cls.__name__] = cls
    return cls


def layer_class(name):
    import fastnn.layers as layers

    builtin = {n: getattr(layers, n) for n in layers.__all__
               if isinstance(getattr(layers, n), type) and issubclass(getattr(layers, n), layers.Layer)}
    cls = builtin.get(name) or _LAYERS.get(name)
    if cls is None:
        raise KeyError(f"unknown layer class {name!r}; known: {', '.join(sorted(set(builtin) | set(_LAYERS)))}")
    return cls


def register_model(cls):
    """Called by ``fastnn.models`` for its model classes (``Sequential``, ``Model``): the names a file's
    ``config.json`` may give its model, without this table importing the models."""
    _MODELS[cls.__name__] = cls
    return cls


def model_class(name):
    """The model class a file's ``config.json`` names (``Sequential`` or ``Model``)."""
    if name not in _MODELS:
        known = ", ".join(sorted(_MODELS)) or "none: import fastnn.models first"
        raise KeyError(f"unknown model class {name!r}; known: {known}")
    return _MODELS[name]


def register_optimizer(cls):
    """Called by ``fastnn.optimizers`` for its optimizer classes: the names a file may give its optimizer."""
    _OPTIMIZERS[cls.__name__] = cls
    return cls


def optimizer_class(name):
    """The optimizer class a file names (``SGD``, ``Adam``, ...)."""
    return _builtin(_OPTIMIZERS, "optimizer", name, "fastnn.optimizers")


def register_schedule(cls):
    """Called by ``fastnn.schedules`` for its learning-rate schedules: the names a file may give a schedule."""
    _SCHEDULES[cls.__name__] = cls
    return cls


def schedule_class(name):
    """The learning-rate schedule class a file names (``ExponentialDecay``, ...)."""
    return _builtin(_SCHEDULES, "schedule", name, "fastnn.schedules")


def _builtin(table, what, name, module):
    if name not in table:
        known = ", ".join(sorted(table)) or f"none: import {module} first"
        raise KeyError(f"unknown {what} class {name!r}; known: {known}")
    return table[name]


def loss_class(name):
    from fastnn import losses

    table = {c.name: c for c in (losses.CategoricalCrossentropy, losses.SparseCategoricalCrossentropy,
                                 losses.BinaryCrossentropy, losses.MeanSquaredError, losses.MeanAbsoluteError,
                                 losses.Huber)}
    table.update(_LOSSES)
    if name not in table:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def metric_class(name):
    """The metric class a file names (``AUC``, ``Precision``, ...): ``fastnn.metrics``' own classes only."""
    from fastnn import metrics

    table = {n: getattr(metrics, n) for n in metrics.__all__ if isinstance(getattr(metrics, n), type)
             and issubclass(getattr(metrics, n), metrics.Metric) and getattr(metrics, n) is not metrics.Metric}
    if name not in table:
        raise KeyError(f"unknown metric class {name!r}; known: {', '.join(sorted(table))}")
    return table[name]
