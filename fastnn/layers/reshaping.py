"""``Reshape``, as Keras's: each sample to a new shape, the batch axis kept."""
from __future__ import annotations

import math

import numpy

from fastnn.layers.base import Layer, shape_str

__all__ = ["Reshape"]


class Reshape(Layer):
    """Keras's ``Reshape(target_shape)``: ``x: (N, *s)`` gives ``(N, *target_shape)``.

    ``target_shape`` is the shape of one sample (no batch axis) with as many values as the input's
    sample; one entry may be ``-1``, inferred from the others. ``backward`` gives ``dout`` back
    the input's shape. Both are views where the array is contiguous (no copy).
    """

    def __init__(self, target_shape, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        shape = (target_shape,) if isinstance(target_shape, (int, numpy.integer)) else target_shape
        try:
            shape = tuple(shape)
        except TypeError:
            shape = None
        if (not shape or any(isinstance(d, bool) or not isinstance(d, (int, numpy.integer)) or (d < 1 and d != -1)
                             for d in shape) or shape.count(-1) > 1):
            raise ValueError(f"{self.name} (Reshape): target_shape must be a tuple of positive integers (one of "
                             f"them may be -1), the shape of one sample without the batch axis; got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in shape)
        self.x_shape = None

    def _target(self, sample_shape):
        """``target_shape`` with its -1 resolved for samples of ``sample_shape``."""
        size = math.prod(int(d) for d in sample_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape and size % known == 0:
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if size != known or -1 in self.target_shape:
            what = f"a multiple of {known}" if -1 in self.target_shape else f"{known}"
            raise ValueError(f"{self.name} (Reshape): cannot reshape samples of shape {shape_str(sample_shape)} "
                             f"({size} values) to target_shape {self.target_shape} ({what} values)")
        return self.target_shape

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._target(input_shape[1:])

    def forward(self, x, train_flg=True, training=None):
        if not hasattr(x, "reshape"):
            x = numpy.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"{self.name} (Reshape): x needs a batch axis, got a scalar")
        target = (x.shape[0],) + self._target(x.shape[1:])
        self.x_shape = tuple(x.shape)
        return x.reshape(target)

    def backward(self, dout):
        shape = self._require_forward("x_shape")
        want = (shape[0],) + self._target(shape[1:])
        if tuple(dout.shape) != want:
            raise ValueError(f"{self.name}: backward expected dout of shape {want} (the forward output's), got "
                             f"{tuple(dout.shape)}")
        return dout.reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(target_shape=list(self.target_shape),
                   input_shape=list(self.input_shape) if self.input_shape else None)
        return cfg
