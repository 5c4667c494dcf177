"""``keras.initializers``: fastnn's initializers, by name (``"glorot_uniform"``, ``"he_normal"``,
``"orthogonal"``, ...) wherever Keras takes one, or as these functions."""
from fastnn.initializers import (get, glorot_normal, glorot_uniform, he_normal, he_uniform, normal, ones,
                                 orthogonal, zeros)

__all__ = ["get", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "normal", "ones", "orthogonal",
           "zeros"]
