"""The fixed table of names a saved model may mention: layers, optimizers, schedules, losses.

Loading maps every class name in a file through these tables; nothing in a file is ever imported
or executed. ``fastnn.register(cls)`` adds a user's ``Layer`` subclass (or a ``Loss``) by its class
name, so a model that uses it can be loaded in a process that registered it.
"""
from __future__ import annotations

_LAYERS: dict = {}
_LOSSES: dict = {}


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

    builtin = {n: getattr(layers, n) for n in layers.__all__ if isinstance(getattr(layers, n), type)}
    cls = builtin.get(name) or _LAYERS.get(name)
    if cls is None:
        raise KeyError(f"unknown layer class {name!r}; known: {', '.join(sorted(set(builtin) | set(_LAYERS)))}")
    return cls


def model_class(name):
    """The model class a file's ``config.json`` names (``Sequential``)."""
    from fastnn import models

    table = {"Sequential": models.Sequential}
    if name not in table:
        raise KeyError(f"unknown model class {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def optimizer_class(name):
    from fastnn import optimizers

    table = {c.__name__: c for c in (optimizers.SGD, optimizers.Momentum, optimizers.Nesterov, optimizers.AdaGrad,
                                     optimizers.RMSprop, optimizers.Adam, optimizers.AdamW, optimizers.Nadam,
                                     optimizers.Adamax)}
    if name not in table:
        raise KeyError(f"unknown optimizer class {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def schedule_class(name):
    from fastnn import schedules

    table = {c.__name__: c for c in schedules.SCHEDULES}
    if name not in table:
        raise KeyError(f"unknown schedule class {name!r}; known: {', '.join(sorted(table))}")
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
