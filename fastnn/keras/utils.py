"""``keras.utils``: ``to_categorical``."""
from fastnn.datasets import to_categorical

__all__ = ["to_categorical"]
