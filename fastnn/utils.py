"""Keras's ``keras.utils`` names that fastnn has: ``to_categorical``."""
from fastnn.datasets import to_categorical

__all__ = ["to_categorical"]
