"""Keras's functional API: ``Input``, ``Model(inputs, outputs)`` and subclassed ``Model`` with ``call``.

``Input(shape)`` gives a symbolic tensor; calling a layer on symbolic tensors records the call and
gives the layer's output as another symbolic tensor; ``Model(inputs, outputs)`` takes the graph
between them. A subclassed ``Model`` whose ``call(x)`` calls its layers is traced once, when the
model is built, into the same graph. The model then trains, evaluates, predicts, saves and loads
like a ``Sequential``: its layers (in the order the graph runs them) share one flat parameter
buffer, and ``forward_pass``/``backward_pass`` run the graph, adding the gradients of a tensor that
feeds several layers.

What the graph may hold: any fastnn layer, the merge layers of ``fastnn.layers.merge``
(``Concatenate``, ``Add``, ...), several inputs (``x`` is then a list of arrays, in the order of
``inputs``, or a dict by input name) and one output. Each layer is called once per model
(shared layers, a model used as a layer and several outputs are refused with a clear error).
A subclassed model's ``call`` runs once, on symbolic tensors: Python code in it that looks at
values (``if x.sum() > 0``) cannot be traced, and ``training`` is passed as ``True`` while tracing
(every layer a training branch uses is kept; ``Dropout`` itself does nothing at inference).
"""
from __future__ import annotations

import inspect
import re

import numpy

from fastnn import validation
from fastnn.feeding import Inputs
from fastnn.layers.base import Layer, shape_str
from fastnn.layers.core import Activation
from fastnn.layers.symbolic import Input, KerasTensor, is_symbolic
from fastnn.models.sequential import Sequential

__all__ = ["KerasTensor", "Input", "Model", "Inputs", "is_symbolic"]

_RESERVED = frozenset(("layers", "ops", "flat", "built", "optimizer", "loss", "metrics", "input_shape",
                       "output_shape", "head", "rng", "dtype", "name", "inputs", "outputs"))


class Model(Sequential):
    """Keras's ``Model``: ``Model(inputs, outputs)`` over the graph of layer calls between them, or a
    subclass that makes its layers in ``__init__`` and calls them in ``call(x)`` (traced once at
    build). Everything else (``compile``, ``fit``, ``evaluate``, ``predict``, ``save``,
    ``get_weights``, ``summary``) is ``Sequential``'s. Several inputs take ``x`` as a list of arrays
    in the order of ``inputs`` (or a dict by input name)."""

    def __init__(self, inputs=None, outputs=None, name=None, dtype="float32", seed=None, backend=None, **kwargs):
        if kwargs:
            raise TypeError(f"Model: unexpected argument(s) {sorted(kwargs)}")
        traced = type(self).call is not Model.call
        if (inputs is None) != (outputs is None):
            raise ValueError("Model: give both inputs= and outputs= (or neither, in a subclass that defines call)")
        if inputs is None and not traced:
            raise TypeError("Model() needs inputs= and outputs= (the functional API), or a subclass of Model that "
                            "defines call(self, x)")
        default = "functional" if inputs is not None else re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        super().__init__(None, dtype=dtype, name=name or default, seed=seed, backend=backend)
        self._input_tensors, self._nodes = (), ()
        if inputs is not None:
            self._take_graph(inputs, outputs)

    @classmethod
    def from_graph(cls, layers, graph, **kwargs):
        """The functional model whose ``graph_config()`` is ``graph``, over ``layers`` (in its order)."""
        if not isinstance(graph, dict) or not isinstance(graph.get("inputs"), list) or not isinstance(
                graph.get("inbound"), list) or len(graph["inbound"]) != len(layers) or not graph["inputs"]:
            raise ValueError(f"a functional model's graph must be {{'inputs': [{{'name', 'shape'}}], 'inbound': "
                             f"[[slot, ...] per layer]}} with one entry per layer ({len(layers)}), got "
                             f"{str(graph)[:120]!r}")
        tensors = []
        for spec in graph["inputs"]:
            if not isinstance(spec, dict):
                raise ValueError(f"graph inputs must be {{'name', 'shape'}} objects, got {spec!r}")
            tensors.append(Input(shape=tuple(spec.get("shape") or ()), name=spec.get("name")))
        k = len(tensors)
        for i, (layer, slots) in enumerate(zip(layers, graph["inbound"])):
            if not isinstance(slots, list) or not slots or not all(
                    isinstance(p, int) and not isinstance(p, bool) and 0 <= p < k + i for p in slots):
                raise ValueError(f"graph: layer {i} ({layer.name}) must be fed by earlier slots (0..{k + i - 1}), "
                                 f"got {slots!r}")
            args = [tensors[p] for p in slots]
            tensors.append(layer(args if getattr(layer, "takes_list", False) else args[0]))
        return cls(tensors[:k], tensors[-1], **kwargs)

    def graph_config(self):
        """The graph as plain data: ``{"inputs": [{"name", "shape"}], "inbound": [[slot, ...]]}``, where
        slot ``j`` is input ``j`` for ``j < len(inputs)`` and otherwise the output of layer
        ``j - len(inputs)`` (in ``layers`` order)."""
        self._require_built("get_config()")
        return {"inputs": [{"name": t.name, "shape": list(t.shape[1:])} for t in self._input_tensors],
                "inbound": [list(parents) for _, parents in self._nodes]}

    def call(self, inputs, training=None):
        """A subclass's computation, on symbolic tensors while the model is traced."""
        raise NotImplementedError

    def __setattr__(self, key, value):
        if isinstance(value, Layer) and key in _RESERVED:
            raise AttributeError(f"{type(self).__name__}: attribute {key!r} is used by fastnn's Model; give the "
                                 f"layer {value.name} another attribute name")
        object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ the graph
    def _take_graph(self, inputs, outputs):
        ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{self.name}: a model with {len(outputs)} outputs is not supported by fastnn yet; "
                                 f"join them into one output (e.g. with Concatenate)")
            outputs = outputs[0]
        for t in ins + [outputs]:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"{self.name}: inputs and outputs must be symbolic tensors from Input(...) and layer "
                                f"calls, got {type(t).__name__}")
        bad = [t for t in ins if t.layer is not None]
        if bad:
            raise ValueError(f"{self.name}: inputs must come from Input(...); {bad[0]!r} is a layer's output")
        if len({id(t) for t in ins}) != len(ins):
            raise ValueError(f"{self.name}: the same Input is listed twice in inputs")
        order, seen = [], {}

        def visit(t, path):
            if t.layer is None:
                if not any(t is i for i in ins):
                    raise ValueError(f"{self.name}: the output depends on input {t.name!r}, which is not in inputs")
                return
            if id(t) in seen:
                return
            if id(t) in path:
                raise ValueError(f"{self.name}: the graph has a cycle through {t.layer.name}")
            path.add(id(t))
            for parent in t.inputs:
                visit(parent, path)
            path.discard(id(t))
            seen[id(t)] = len(order)
            order.append(t)

        visit(outputs, set())
        if not order:
            raise ValueError(f"{self.name}: the output is an input; the model has no layers")
        layers = [t.layer for t in order]
        names = {}
        for layer in layers:
            if any(layer is other for other in names.values()):
                raise ValueError(f"{self.name}: layer {layer.name} is called more than once; shared layers are not "
                                 f"supported by fastnn yet (make one layer per call)")
            if layer.name in names:
                raise ValueError(f"{self.name}: two layers are named {layer.name!r}; layer names must be unique")
            names[layer.name] = layer
        used = {id(p) for t in order for p in t.inputs}
        unused = [t.name for t in ins if id(t) not in used]
        if unused:
            raise ValueError(f"{self.name}: input(s) {unused} are not used to compute the output")
        slot = {id(t): i for i, t in enumerate(ins)}
        slot.update({id(t): len(ins) + i for i, t in enumerate(order)})
        self._input_tensors = tuple(ins)
        self._nodes = tuple((t.layer, tuple(slot[id(p)] for p in t.inputs)) for t in order)
        self.layers = layers
        self._output_tensor = outputs

    def _trace(self, shape):
        """Run a subclass's ``call`` once on a symbolic input of per-sample ``shape``."""
        x = Input(shape=shape, name="input_layer")
        params = inspect.signature(self.call).parameters
        out = self.call(x, training=True) if "training" in params else self.call(x)
        if not isinstance(out, KerasTensor) and not (isinstance(out, (list, tuple)) and out):
            raise TypeError(f"{self.name}: call() must return the output of a layer called on its input, got "
                            f"{type(out).__name__}")
        self._take_graph(x, out)

    @property
    def inputs(self):
        return list(self._input_tensors)

    @property
    def outputs(self):
        return [self._output_tensor] if self._nodes else []

    def add(self, layer):
        raise TypeError(f"{self.name}: add() is Sequential's; a functional model's layers come from its graph")

    def build(self, input_shape=None):
        """Build every layer for the graph's input shapes (a subclass first traces ``call`` on inputs of
        per-sample ``input_shape``)."""
        if self.built:
            return
        if not self._nodes:  # a subclass: trace call() on inputs of the given shape
            if input_shape is None:
                raise ValueError(f"{self.name}: the input shape is unknown; call build((None, ...)) or fit with data")
            shape = tuple(input_shape)
            self._trace(shape[1:] if shape and shape[0] is None else shape)
        super().build(self._input_tensors[0].shape[1:])
        self.input_shapes = [t.shape[1:] for t in self._input_tensors]
        k = len(self._input_tensors)
        for layer, parents in self._nodes:  # a layer fed only by inputs does not compute their gradient
            layer.skip_input_grad = not getattr(layer, "takes_list", False) and all(p < k for p in parents)

    def layer_shapes(self, build=None):
        """``[(layer, input shape(s), output shape)]`` in the order the graph runs them; ``build(layer,
        input shape(s))`` is called on each layer first."""
        values = [t.shape for t in self._input_tensors]
        rows = []
        for layer, parents in self._nodes:
            arg = [values[p] for p in parents]
            arg = arg if getattr(layer, "takes_list", False) else arg[0]
            if build is not None:
                build(layer, arg)
            out = layer.compute_output_shape(arg)
            values.append(out)
            rows.append((layer, arg, out))
        return rows

    def _require_built(self, what):
        if not self.built and self._nodes:
            self.build()
        super()._require_built(what)

    # ------------------------------------------------------------------ data
    def _split_inputs(self, x, what):
        """The input arrays of ``x`` in the order of ``inputs``: a list/tuple, a dict by input name, or
        one array for a one-input model."""
        ins = self._input_tensors
        if isinstance(x, Inputs):
            return list(x.arrays)
        if isinstance(x, dict):
            missing = [t.name for t in ins if t.name not in x]
            extra = sorted(set(x) - {t.name for t in ins})
            if missing or extra:
                raise ValueError(f"{self.name}: {what} by input name must have exactly the keys "
                                 f"{[t.name for t in ins]}; missing {missing}, unknown {extra}")
            return [x[t.name] for t in ins]
        if isinstance(x, (list, tuple)) and len(ins) > 1:
            if len(x) != len(ins):
                raise ValueError(f"{self.name}: the model has {len(ins)} inputs "
                                 f"({', '.join(t.name for t in ins)}) but {what} holds {len(x)} arrays")
            return list(x)
        if len(ins) > 1:
            raise ValueError(f"{self.name}: the model has {len(ins)} inputs ({', '.join(t.name for t in ins)}); give "
                             f"{what} as a list of {len(ins)} arrays or a dict by input name")
        if isinstance(x, (list, tuple)) and len(x) == 1 and not numpy.isscalar(x[0]) and numpy.ndim(x[0]) >= 2:
            return [x[0]]
        return [x]

    def prepare(self, x, y=None, what=("x", "y"), move=True):
        if not self.built and not self._nodes:  # a subclass, traced on the data's shape
            if isinstance(x, (dict, Inputs)) or (isinstance(x, (list, tuple)) and len(x) == 1):
                raise ValueError(f"{self.name}: a subclassed model takes one input array")
            first = validation.check_x(self.name, x, what[0])
            self.build(tuple(first.shape[1:]))
        self._require_built(f"{what[0]}")
        arrays = self._split_inputs(x, what[0])
        if len(arrays) == 1:
            return super().prepare(arrays[0], y, what, move)
        checked = []
        for t, a in zip(self._input_tensors, arrays):
            label = f"{what[0]} input {t.name!r}"
            a = validation.check_x(self.name, a, label, self.ops, self.dtype)
            if tuple(a.shape[1:]) != t.shape[1:]:
                raise ValueError(f"{self.name}: {label} must have shape {shape_str(t.shape)}, got {tuple(a.shape)}")
            checked.append(a)
        n = checked[0].shape[0]
        counts = [a.shape[0] for a in checked]
        if any(c != n for c in counts):
            raise ValueError(f"{self.name}: the inputs of {what[0]} hold different sample counts: "
                             + ", ".join(f"{t.name} {c}" for t, c in zip(self._input_tensors, counts)))
        if y is not None:
            y = validation.check_targets(self, y, n, what[1])
        rows = Inputs(checked)
        if not move:
            return rows, y
        rows = rows.map(lambda a: a if self.ops.owns(a) and a.dtype == self.dtype else
                        self.ops.asarray(a, dtype=self.dtype))
        if y is not None and not self.ops.owns(y):
            y = self.ops.asarray(y)
        return rows, y

    def on_device(self, a, dtype="model"):
        if isinstance(a, Inputs):
            return a.map(lambda arr: super(Model, self).on_device(arr, dtype))
        return super().on_device(a, dtype)

    # ------------------------------------------------------------------ what the network computes
    def forward_pass(self, x, train):
        values = list(x.arrays) if isinstance(x, Inputs) else [x]
        last = len(self._nodes) - 1
        for i, (layer, parents) in enumerate(self._nodes):
            arg = [values[p] for p in parents]
            arg = arg if getattr(layer, "takes_list", False) else arg[0]
            if i == last and self.head is not None:
                if isinstance(layer, Activation):
                    return arg  # fused into the loss
                return layer.forward(arg, train_flg=train, logits=True)
            values.append(layer.forward(arg, train_flg=train))
        return values[-1]

    def backward_pass(self, dout):
        k = len(self._input_tensors)
        last = len(self._nodes) - 1
        grads = {k + last: dout}
        for i in range(last, -1, -1):
            layer, parents = self._nodes[i]
            g = grads.pop(k + i)
            if i == last and self.head is not None and isinstance(layer, Activation):
                dx = g
            elif all(p < k for p in parents) and not layer.weight_info():
                continue  # nothing needs the input gradient of a parameter-free layer fed by inputs
            else:
                dx = layer.backward(g)
                self.flat.adopt(layer)
            for p, d in zip(parents, dx if getattr(layer, "takes_list", False) else [dx]):
                if p >= k:
                    grads[p] = d if p not in grads else grads[p] + d

    def summary(self, print_fn=None):
        self._require_built("summary()")
        rows = [(f"{t.name} (InputLayer)", t.shape, 0, "") for t in self._input_tensors]
        names = [t.name for t in self._input_tensors] + [layer.name for layer in self.layers]
        for (layer, _, out), (_, parents) in zip(self.layer_shapes(), self._nodes):
            rows.append((f"{layer.name} ({type(layer).__name__})", out, layer.count_params(),
                         ", ".join(names[p] for p in parents)))
        self._print_table(rows, print_fn, connected=True)

    def __call__(self, x):
        if is_symbolic(x):
            raise TypeError(f"{self.name}: a model used as a layer is not supported by fastnn yet")
        return self.predict(x, verbose=0)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, layers={[layer.name for layer in self.layers]})"
