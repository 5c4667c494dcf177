"""Keras's names and defaults over fastnn's engine: ``from fastnn import keras`` (or ``import
fastnn.keras as keras``) and a Keras 3 program's ``keras.Sequential``, ``keras.Input``,
``keras.layers.Conv2D``, ``keras.optimizers.Adagrad``, ``keras.utils.to_categorical`` ... run on
fastnn's layers, optimizers and kernels.

What differs from ``fastnn.layers``/``fastnn.optimizers`` is only what Keras's users expect by
default: images are channels-last (``(N, H, W, C)``, ``data_format="channels_last"`` on the 2-D
layers made here), Keras's spellings (``Adagrad``, ``LeakyReLU``, ``PReLU``, ``ReLU``, ``ELU``) and
Keras's defaults where fastnn's differ (``LeakyReLU(negative_slope=0.3)``,
``AdamW(weight_decay=0.004)``). The models are fastnn's ``Sequential`` and ``Model``; a model built
here saves and loads like any other (each layer's config records its data format).
"""
from fastnn.keras import callbacks, initializers, layers, losses, metrics, models, optimizers, regularizers, utils
from fastnn.layers.symbolic import Input, KerasTensor
from fastnn.models import Model, Sequential

__all__ = ["Sequential", "Model", "Input", "KerasTensor", "layers", "models", "optimizers", "losses", "metrics",
           "callbacks", "utils", "regularizers", "initializers"]
