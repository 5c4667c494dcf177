"""Models: ``Sequential`` (a stack of layers) and ``Model`` (Keras's functional API: the graph
between ``Input`` tensors and an output, or a subclass with ``call``).

A model describes the network: its layers, its build on one backend with its parameters in one
flat buffer (``fastnn.params.FlatParams``) whose views the layers hold, its compile settings, the
forward and backward passes and what a batch reports, and its ``state()``. How it trains lives in
``fastnn.training`` (``fit``, the step, the loop, the evaluation and prediction loops); files in
``fastnn.saving`` and ``fastnn.checkpoint``. ``predict``, ``evaluate``, ``get_weights`` and the
``History`` give host NumPy values, as Keras does.
"""
from __future__ import annotations

from fastnn import registry, saving
from fastnn.layers.symbolic import Input, KerasTensor
from fastnn.models.functional import Model
from fastnn.models.sequential import Sequential

registry.register_model(Sequential)
registry.register_model(Model)

__all__ = ["Sequential", "Model", "Input", "KerasTensor", "load_model", "model_from_json", "clone_model"]


def model_from_json(text):
    """Keras's ``model_from_json``: the model ``to_json()`` describes, with fresh weights."""
    import json

    try:
        spec = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model_from_json: not JSON ({exc})") from None
    return saving.model_from_config(spec, Sequential)


def clone_model(model):
    """Keras's ``clone_model``: a new model of the same architecture with freshly drawn weights (not
    compiled; copy weights with ``clone.set_weights(model.get_weights())``)."""
    return Sequential.from_config(model.get_config())


def load_model(path, backend=None):
    """Rebuild a model written by ``model.save(path)``, on ``backend`` (default: the active one).

    Nothing in the file is executed; any problem raises ``fastnn.FormatError``.
    """
    return saving.load_model(path, backend=backend)
