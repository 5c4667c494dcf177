"""Keras's merge layers: ``Concatenate``, ``Add``, ``Subtract``, ``Multiply``, ``Average``,
``Maximum``, ``Minimum``, and their function forms (``concatenate([a, b])``, ``add([a, b])``, ...).

A merge layer takes a list of arrays (or, in a functional model, of symbolic tensors) and its
``backward(dout)`` returns one gradient per input, in order. Shapes must agree exactly (no
broadcasting), except along ``Concatenate``'s axis.
"""
from __future__ import annotations

from fastnn.layers.base import Layer, shape_str

__all__ = ["Merge", "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
           "concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum"]


class Merge(Layer):
    """Base class of layers that combine several inputs of one shape into one output."""

    takes_list = True  # forward takes a list of inputs; backward returns a list of gradients
    min_inputs, max_inputs = 2, None

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._count = None

    def _check_count(self, n):
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.max_inputs == self.min_inputs
                    else f"at least {self.min_inputs}")
            raise ValueError(f"{self.name} ({type(self).__name__}): takes {want} inputs, got {n}")

    def _shapes(self, input_shapes):
        if not isinstance(input_shapes, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in input_shapes):
            raise ValueError(f"{self.name} ({type(self).__name__}): takes a list of inputs, e.g. "
                             f"{type(self).__name__}()([a, b]); got one input of shape {input_shapes}")
        self._check_count(len(input_shapes))
        return [tuple(s) for s in input_shapes]

    def compute_output_shape(self, input_shapes):
        shapes = self._shapes(input_shapes)
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(f"{self.name} ({type(self).__name__}): every input must have the same shape, got "
                             + ", ".join(shape_str(s) for s in shapes))
        return shapes[0]

    def _inputs(self, xs):
        if not isinstance(xs, (list, tuple)):
            raise TypeError(f"{self.name} ({type(self).__name__}): forward takes a list of arrays, got "
                            f"{type(xs).__name__}")
        self._check_count(len(xs))
        ops = self._ops_for(*xs)
        xs = [self._input(ops, x, None if self._ops is None else self.dtype) for x in xs]
        dtype = xs[0].dtype
        xs = [x if x.dtype == dtype else x.astype(dtype) for x in xs]
        self.compute_output_shape([tuple(x.shape) for x in xs])  # the checks, with these shapes
        self._count = len(xs)
        return ops, xs

    def forward(self, xs, train_flg=True, training=None):
        ops, xs = self._inputs(xs)
        return self._merge(ops, xs)

    def backward(self, dout):
        if self._count is None:
            raise ValueError(f"{self.name}: backward() was called before forward()")
        return self._split(dout)

    def __call__(self, xs, training=False):
        return super().__call__(list(xs) if isinstance(xs, tuple) else xs, training)


class Concatenate(Merge):
    """Joins the inputs along ``axis`` (default -1, the features); the other axes must agree."""

    def __init__(self, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"{self.name} (Concatenate): axis must be an integer, got {axis!r}")
        self.axis = axis
        self._sizes = None

    def _axis(self, ndim):
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 1 <= axis < ndim:
            raise ValueError(f"{self.name} (Concatenate): axis={self.axis} is not a feature axis of inputs with "
                             f"{ndim} dimensions (axis 0 is the batch)")
        return axis

    def compute_output_shape(self, input_shapes):
        shapes = self._shapes(input_shapes)
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"{self.name} (Concatenate): inputs must have the same rank, got "
                             + ", ".join(shape_str(s) for s in shapes))
        axis = self._axis(len(shapes[0]))
        rest = {s[:axis] + s[axis + 1:] for s in [tuple(None if i == 0 else d for i, d in enumerate(s))
                                                 for s in shapes]}
        if len(rest) != 1:
            raise ValueError(f"{self.name} (Concatenate): inputs must agree on every axis but {self.axis}, got "
                             + ", ".join(shape_str(s) for s in shapes))
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def _merge(self, ops, xs):
        axis = self._axis(xs[0].ndim)
        self._sizes = [x.shape[axis] for x in xs]
        return ops.xp.concatenate(xs, axis=axis)

    def _split(self, dout):
        axis = self._axis(dout.ndim)
        grads, start = [], 0
        for size in self._sizes:
            index = [slice(None)] * dout.ndim
            index[axis] = slice(start, start + size)
            grads.append(dout[tuple(index)])
            start += size
        return grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Add(Merge):
    """The element-wise sum of the inputs."""

    def _merge(self, ops, xs):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        return out

    def _split(self, dout):
        return [dout] * self._count


class Subtract(Merge):
    """``a - b`` of exactly two inputs."""

    max_inputs = 2

    def _merge(self, ops, xs):
        return xs[0] - xs[1]

    def _split(self, dout):
        return [dout, -dout]


class Average(Merge):
    """The element-wise mean of the inputs."""

    def _merge(self, ops, xs):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        out *= out.dtype.type(1.0 / len(xs))
        return out

    def _split(self, dout):
        g = dout * dout.dtype.type(1.0 / self._count)
        return [g] * self._count


class Multiply(Merge):
    """The element-wise product of the inputs."""

    def _merge(self, ops, xs):
        self._xs = xs
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out = out * x
        return out

    def _split(self, dout):
        grads = []
        for i in range(len(self._xs)):
            g = dout
            for j, x in enumerate(self._xs):
                if j != i:
                    g = g * x
            grads.append(g if g is not dout else dout.copy())
        return grads


class Maximum(Merge):
    """The element-wise maximum of the inputs; on ties the gradient goes to the first input that
    holds the maximum."""

    _pick = "maximum"

    def _merge(self, ops, xs):
        xp = ops.xp
        stack = xp.stack(xs)
        if self._pick == "maximum":
            self._which = xp.argmax(stack, axis=0)
            return stack.max(axis=0)
        self._which = xp.argmin(stack, axis=0)
        return stack.min(axis=0)

    def _split(self, dout):
        return [dout * (self._which == i).astype(dout.dtype) for i in range(self._count)]


class Minimum(Maximum):
    """The element-wise minimum of the inputs; on ties the gradient goes to the first input that
    holds the minimum."""

    _pick = "minimum"


def _function(cls, doc):
    def merge(inputs, **kwargs):
        return cls(**kwargs)(inputs)

    merge.__name__ = cls.__name__.lower()
    merge.__doc__ = doc
    return merge


concatenate = _function(Concatenate, "Keras's ``concatenate(inputs, axis=-1)``: ``Concatenate(axis)(inputs)``.")
add = _function(Add, "Keras's ``add(inputs)``: ``Add()(inputs)``.")
subtract = _function(Subtract, "Keras's ``subtract([a, b])``: ``Subtract()([a, b])``.")
multiply = _function(Multiply, "Keras's ``multiply(inputs)``: ``Multiply()(inputs)``.")
average = _function(Average, "Keras's ``average(inputs)``: ``Average()(inputs)``.")
maximum = _function(Maximum, "Keras's ``maximum(inputs)``: ``Maximum()(inputs)``.")
minimum = _function(Minimum, "Keras's ``minimum(inputs)``: ``Minimum()(inputs)``.")
