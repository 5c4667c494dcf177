"""``keras.losses``: fastnn's named losses."""
from fastnn.losses import (BinaryCrossentropy, CategoricalCrossentropy, Huber, Loss, MeanAbsoluteError,
                           MeanSquaredError, SparseCategoricalCrossentropy)

__all__ = ["Loss", "BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy",
           "MeanSquaredError", "MeanAbsoluteError", "Huber"]
