"""Symbolic tensors: what ``Input(shape)`` gives and what a layer called on symbolic tensors
returns (``fastnn.functional.Model`` takes the graph they record). They hold shapes, never values."""
from __future__ import annotations

import itertools

import numpy

__all__ = ["KerasTensor", "Input", "is_symbolic", "connect"]


def _shape_str(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


_input_names = itertools.count(1)


class KerasTensor:
    """A symbolic tensor: what ``Input`` gives and what a layer called on symbolic tensors returns.

    ``shape`` has ``None`` for the batch axis; ``layer`` is the layer that computes it (None for an
    input) and ``inputs`` the symbolic tensors that layer was called on."""

    __slots__ = ("shape", "layer", "inputs", "name", "dtype")

    def __init__(self, shape, layer=None, inputs=(), name=None, dtype=None):
        self.shape = (None,) + tuple(int(d) for d in shape[1:])
        self.layer, self.inputs, self.name, self.dtype = layer, tuple(inputs), name, dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        where = "input" if self.layer is None else f"output of {self.layer.name}"
        return f"<KerasTensor shape={_shape_str(self.shape)}, {where}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic (it holds no values): call a Model built from it on arrays")


def is_symbolic(x):
    """True for a ``KerasTensor`` or a list/tuple holding one."""
    if isinstance(x, (list, tuple)):
        return any(isinstance(t, KerasTensor) for t in x)
    return isinstance(x, KerasTensor)


def Input(shape=None, batch_size=None, name=None, dtype=None, batch_shape=None, **kwargs):  # noqa: N802 (Keras's name)
    """Keras's ``Input``: a symbolic input of per-sample ``shape`` (e.g. ``(784,)`` or ``(28, 28, 1)``),
    or ``batch_shape=(None, ...)``. Every axis but the batch must be a fixed positive size."""
    unknown = sorted(k for k in kwargs if k not in ("sparse", "ragged", "tensor"))
    if unknown:
        raise TypeError(f"Input: unexpected argument(s) {unknown}")
    if kwargs.get("sparse") or kwargs.get("ragged") or kwargs.get("tensor") is not None:
        raise ValueError("Input: sparse, ragged and tensor= inputs are not supported by fastnn")
    if (shape is None) == (batch_shape is None):
        raise ValueError(f"Input: give exactly one of shape= and batch_shape=, got shape={shape!r}, "
                         f"batch_shape={batch_shape!r}")
    if batch_shape is not None:
        batch_shape = tuple(batch_shape) if isinstance(batch_shape, (list, tuple)) else batch_shape
        if not isinstance(batch_shape, tuple) or not batch_shape:
            raise ValueError(f"Input: batch_shape must be a tuple with the batch axis first, got {batch_shape!r}")
        shape = batch_shape[1:]
    if isinstance(shape, (int, numpy.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (list, tuple)) or not shape or any(
            isinstance(d, bool) or not isinstance(d, (int, numpy.integer)) or d < 1 for d in shape):
        raise ValueError(f"Input: shape must be the shape of one sample, a tuple of positive integers such as "
                         f"(784,) or (28, 28, 1) (fastnn needs every axis but the batch fixed), got {shape!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"Input: name must be a string, got {name!r}")
    if dtype is not None:
        given = dtype
        try:
            dtype = numpy.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in "biuf":
            raise TypeError(f"Input: dtype must be a real numeric dtype such as 'float32' or 'int32', got {given!r}")
    return KerasTensor((None,) + tuple(shape), name=name or f"input_layer_{next(_input_names)}", dtype=dtype)


def connect(layer, x):
    """``layer`` called on symbolic ``x``: checks the shapes and returns the output's ``KerasTensor``."""
    takes_list = getattr(layer, "takes_list", False)
    many = isinstance(x, (list, tuple))
    tensors = tuple(x) if many else (x,)
    if not all(isinstance(t, KerasTensor) for t in tensors):
        kinds = ", ".join(type(t).__name__ for t in tensors)
        raise TypeError(f"{layer.name} ({type(layer).__name__}): called on a mix of symbolic tensors and arrays "
                        f"({kinds}); in a functional model every input comes from Input(...) or a layer")
    if many and not takes_list:
        raise ValueError(f"{layer.name} ({type(layer).__name__}): takes one input, got a list of {len(tensors)}; "
                         f"join them first, e.g. with Concatenate()")
    if takes_list and not many:
        raise ValueError(f"{layer.name} ({type(layer).__name__}): takes a list of inputs, e.g. "
                         f"{type(layer).__name__}()([a, b]); got one tensor")
    shapes = [t.shape for t in tensors]
    try:
        out = layer.compute_output_shape(shapes if takes_list else shapes[0])
    except (ValueError, TypeError, IndexError) as exc:
        got = ", ".join(_shape_str(s) for s in shapes)
        why = str(exc)
        for prefix in (f"{layer.name} ({type(layer).__name__}): ", f"{layer.name}: "):
            why = why[len(prefix):] if why.startswith(prefix) else why
        raise ValueError(f"{layer.name} ({type(layer).__name__}): cannot take input of shape {got}: {why}") from None
    return KerasTensor(out, layer, tensors)
