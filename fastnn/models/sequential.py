"""``Sequential``: Keras's model API (``compile``, ``fit``, ``evaluate``, ``predict``) on fastnn's layers.

The package docstring (``fastnn.models``) says what a model is and where its training lives.
"""
from __future__ import annotations

import numpy

from fastnn import feeding, saving, validation
from fastnn import losses as _losses
from fastnn import metrics as _metrics
from fastnn import optimizers as _optimizers
from fastnn.backend import current, get_ops
from fastnn.kernels import SIGMOID
from fastnn.layers.base import Layer, shape_str
from fastnn.layers.core import SOFTMAX, Activation, Dense, Dropout
from fastnn.layers.symbolic import KerasTensor
from fastnn.models.training_api import TrainingAPI
from fastnn.params import FlatParams
from fastnn.random import make_rng

__all__ = ["Sequential"]



def _seed_record(seed):
    """What a run fingerprint records of a model's ``seed=``: the integer, or ``fastnn.set_seed``'s."""
    if isinstance(seed, (int, numpy.integer)) and not isinstance(seed, bool):
        return int(seed)
    if seed is None:
        from fastnn.random import global_seed

        g = global_seed()
        return None if g is None else ["set_seed", g]
    return type(seed).__name__


class Sequential(TrainingAPI):
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
    dtype : "float32" (default) or "float64"
        Every weight and every computation; inputs are cast to it.
    seed : int, optional
        Seeds the model's generator, which draws the initial weights, dropout seeds and (unless
        ``fit(seed=...)``) the batch order. Else ``fastnn.set_seed``, else fresh entropy.
    backend : str, optional
        Where the model computes; default: the active backend when the model is built.
    """

    def __init__(self, layers=None, dtype="float32", name=None, seed=None, backend=None):
        self.dtype = numpy.dtype(dtype)
        if self.dtype not in (numpy.float32, numpy.float64):
            raise ValueError(f"Sequential: dtype must be float32 or float64, got {dtype!r}")
        self.name = name or "sequential"
        self.rng = make_rng(seed)
        self._seed = _seed_record(seed)  # for checkpoints' run fingerprints
        self._backend = backend
        self.layers = []
        self.ops = None
        self.flat = None
        self.built = False
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.input_shape = None
        self.output_shape = None
        self.stop_training = False
        self.stop_evaluating = False
        self.stop_predicting = False
        self._step = 0  # training steps taken: numbers the dropout masks (fastnn.layers.base.StepContext)
        self.head = None  # "softmax"/"sigmoid": the last activation, fused into the loss
        self.training_loop = None  # the running fit's fastnn.training.LoopState (None outside fit)
        self._train_step = None  # fastnn.training.TrainStep: per-step buffers, captured graphs
        self._declared_input = None  # the shape of a leading fastnn.Input(shape) (Keras's Sequential form)
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ structure
    def add(self, layer):
        """Append a layer (before the model is built). A first ``fastnn.Input(shape)`` declares the
        input shape, as in Keras."""
        if isinstance(layer, KerasTensor) and layer.layer is None and not self.layers and not self.built:
            self._declared_input = layer.shape[1:]
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a fastnn Layer, got {type(layer).__name__}")
        if self.built:
            raise ValueError(f"{self.name}: cannot add {layer.name} after the model is built")
        self.layers.append(layer)

    def build(self, input_shape=None):
        """Make every layer's weights for per-sample ``input_shape`` (default: the first layer's
        ``input_shape=``) and pack them into the flat buffer on the model's backend."""
        if self.built:
            return
        if not self.layers:
            raise ValueError(f"{self.name}: the model has no layers")
        if input_shape is None:
            input_shape = self._declared_input or self.layers[0].input_shape
        if input_shape is None:
            raise ValueError(f"{self.name}: the input shape is unknown; give the first layer input_shape=(...) "
                             f"or call fit/build with data first")
        if isinstance(input_shape, (int, numpy.integer)) and not isinstance(input_shape, bool):
            input_shape = (input_shape,)
        try:
            input_shape = tuple(input_shape)
        except TypeError:
            raise ValueError(f"{self.name}: build() takes the shape of one sample, e.g. (784,) or (None, 784), "
                             f"got {input_shape!r}") from None
        if input_shape and input_shape[0] is None:  # Keras's build((None, 784)): a batch axis first
            input_shape = input_shape[1:]
        if not input_shape or any(isinstance(s, bool) or not isinstance(s, (int, numpy.integer)) or s < 1
                                  for s in input_shape):
            raise ValueError(f"{self.name}: build() takes the shape of one sample, e.g. (784,) or (None, 784), "
                             f"got {input_shape!r}")
        self.ops = get_ops(self._backend) if self._backend is not None else current()
        self.input_shape = tuple(int(s) for s in input_shape)

        def make(layer, shape):
            layer._ops = self.ops
            if not layer.built:
                layer.dtype = self.dtype
                layer.rng = self.rng
                layer.build(shape)  # the public signature; built-in layers draw from layer.rng

        self.output_shape = self.layer_shapes(make)[-1][2]
        self.flat = FlatParams(self.layers, self.ops, self.dtype)
        self.layers[0].skip_input_grad = True
        self.built = True
        if self.optimizer is not None:
            self.optimizer.build(self.flat)

    def layer_shapes(self, build=None):
        """``[(layer, input shape, output shape)]`` (batch axis ``None``) in the order the layers run,
        from the model's input shape; ``build(layer, input shape)`` is called on each layer first."""
        shape, rows = (None,) + self.input_shape, []
        for layer in self.layers:
            if build is not None:
                build(layer, shape)
            out = layer.compute_output_shape(shape)
            rows.append((layer, shape, out))
            shape = out
        return rows

    def _require_built(self, what):
        if not self.built and self.layers and (self._declared_input or self.layers[0].input_shape) is not None:
            self.build()  # Keras builds a model whose first layer knows its input shape
        if not self.built:
            raise ValueError(f"{self.name}: {what} needs a built model; give the first layer input_shape=(...) "
                             f"or call fit() first")

    def weight_shapes(self):
        """``[(name, shape)]`` of every weight, in ``get_weights`` order."""
        self._require_built("weight_shapes()")
        return [(e.name, tuple(e.shape)) for e in self.flat.ordered_entries()]

    def count_params(self):
        self._require_built("count_params()")
        return int(self.flat.size)

    def summary(self, print_fn=None):
        """Print a table of layers, output shapes and parameter counts."""
        self._require_built("summary()")
        self._print_table([(f"{layer.name} ({type(layer).__name__})", out, layer.count_params(), None)
                           for layer, _, out in self.layer_shapes()], print_fn)

    def _print_table(self, rows, print_fn=None, connected=False):
        """``rows`` of (layer, output shape, parameter count, what it is connected to) as Keras prints them."""
        print_fn = print_fn or print
        rows = [(a, shape_str(b).replace("N", "None"), c, d or "") for a, b, c, d in rows]
        w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows)) + 2
        w1 = max(len("Output Shape"), *(len(r[1]) for r in rows)) + 2
        w3 = max(len("Connected to"), *(len(r[3]) for r in rows)) + 2 if connected else 0
        line = "-" * (w0 + w1 + 12 + w3)
        head = f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>10}" + (f"  {'Connected to':<{w3}}" if w3 else "")
        out = [f'Model: "{self.name}" (backend {self.ops.name}, {self.dtype})', line, head.rstrip(), "=" * len(line)]
        out += [(f"{a:<{w0}}{b:<{w1}}{c:>10,}" + (f"  {d:<{w3}}" if w3 else "")).rstrip() for a, b, c, d in rows]
        trainable = sum(e.size for e in self.flat.entries if e.trainable)
        out += ["=" * len(line), f"Total params: {self.flat.size:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {self.flat.size - trainable:,}", line]
        print_fn("\n".join(out))

    def get_weights(self):
        """Every weight as a host NumPy array, in layer order."""
        self._require_built("get_weights()")
        return self.flat.get_host()

    def set_weights(self, weights):
        """Set every weight from host arrays in ``get_weights()`` order (shapes checked first)."""
        self._require_built("set_weights()")
        self.flat.set_host(weights)

    @property
    def weights(self):
        """Keras's ``model.weights``: every weight array in ``get_weights`` order (live views into the
        flat buffer, on the backend's device)."""
        self._require_built("weights")
        return [w for layer in self.layers for w in layer.weights]

    # ------------------------------------------------------------------ configs (Keras)
    def get_config(self):
        """Keras's ``get_config()``: the architecture (name, dtype, input shape, each layer's class
        and constructor config), without weights or compile settings."""
        return saving.model_config(self)["config"]

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt-or-built model from ``get_config()``'s dict (layer classes by name through
        ``fastnn.registry``; fresh weights)."""
        return saving.model_from_config({"class_name": cls.__name__, "config": config}, cls)

    def to_json(self, **kwargs):
        """Keras's ``to_json()``: ``{"class_name": "Sequential", "config": get_config()}`` as JSON."""
        import json

        return json.dumps({"class_name": type(self).__name__, "config": self.get_config()}, **kwargs)

    def to(self, backend):
        """Move the parameters and the optimizer state to another backend (``"numba"``, ``"cupy"``, ...)."""
        self._require_built("to()")
        ops = get_ops(backend)
        old = self.flat
        slots = [old.ops.asnumpy(s) for s in (self.optimizer.flat_slots or ())] if self.optimizer else []
        for layer in self.layers:
            layer._ops = ops
            layer.free_workspaces()  # workspaces live on the old device
        self._train_step = None  # buffers and captured graphs of the old device
        self.ops = ops
        self.flat = FlatParams(self.layers, ops, self.dtype)  # copies each weight from its old view
        if self.optimizer is not None and slots:
            self.optimizer.flat_slots = tuple(ops.asarray(s) for s in slots)
        self._backend = backend
        return self

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, loss and metrics.

        ``optimizer``: a name (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw) or an
        instance. ``loss``: ``"categorical_crossentropy"`` (one-hot), ``"sparse_categorical_crossentropy"``
        (indices), ``"binary_crossentropy"``, ``"mse"``, a ``fastnn.losses.Loss``, or an object with
        ``forward(y, t)``/``backward()``. A final softmax (sigmoid) with a cross-entropy loss is
        fused into one stable kernel on the logits. ``metrics``: e.g. ``["accuracy"]``.
        """
        if loss is None:
            raise ValueError(f"{self.name}.compile: loss is required; valid names: {', '.join(_losses.LOSS_NAMES)}")
        opt, loss = _optimizers.get(optimizer), _losses.get(loss)
        self._train_step = None  # a captured step of the old loss/optimizer: let its memory go
        if isinstance(metrics, str):
            metrics = [metrics]
        metrics = [_metrics.get(m, loss) for m in (metrics or [])]
        names = [m.name for m in metrics]
        clash = sorted({n for n in names if names.count(n) > 1} | ({"loss"} & set(names)))
        if clash:
            raise ValueError(f"{self.name}.compile: more than one metric (or the loss) is named {clash[0]!r}; "
                             f"give the metric objects distinct name= values")
        self.optimizer, self.loss, self.metrics = opt, loss, metrics
        last = self.layers[-1] if self.layers else None
        head = None
        if isinstance(last, (Dense, Activation)):
            head = "softmax" if last.act == SOFTMAX else ("sigmoid" if last.act == SIGMOID else None)
        self.head = head if self.loss.fuse(head) else None
        if self.built and not (opt.flat_slots is not None and all(s.shape == (self.flat.size,) for s in opt.flat_slots)
                               and len(opt.flat_slots) == len(opt.slots)):
            self.optimizer.build(self.flat)  # a new optimizer; one compiled before keeps its state (as Keras)

    def require_compiled(self, what):
        if self.optimizer is None or self.loss is None:
            raise ValueError(f"{self.name}: call compile(optimizer=..., loss=...) before {what}")

    # ------------------------------------------------------------------ data
    def prepare(self, x, y=None, what=("x", "y"), move=True):
        """Validate once on the host, build if needed, and move to the device once.

        ``move=False`` leaves the arrays where they are; ``move="auto"`` (evaluation, prediction)
        leaves host arrays on the host when they would not fit on the GPU (``fastnn.feeding``): the
        batch loops then move one batch at a time."""
        x = validation.check_x(self.name, x, what[0], self.ops, self.dtype)
        if not self.built:
            first = self.layers[0].input_shape if self.layers else None
            self.build(first if first is not None else tuple(x.shape[1:]))
        validation.check_input_shape(self, x, what[0])
        check = getattr(self.layers[0], "check_input", None)  # e.g. Embedding's index range, once per call
        if check is not None:
            check(x, what[0])
        if y is not None:
            y = validation.check_targets(self, y, x.shape[0], what[1])
        if not move:
            return x, y
        if move == "auto" and self.ops.device_arrays and not self.ops.owns(x):
            nbytes = x.size * self.dtype.itemsize + (0 if y is None or self.ops.owns(y) else y.size * y.dtype.itemsize)
            if feeding.feeds_from_host(self.ops, nbytes):
                return x, y
        x = x if self.ops.owns(x) and x.dtype == self.dtype else self.ops.asarray(x, dtype=self.dtype)
        if y is not None and not self.ops.owns(y):
            y = self.ops.asarray(y)
        return x, y

    # ------------------------------------------------------------------ what the network computes
    def forward_pass(self, x, train):
        """The layers' outputs for ``x``; logits where the last activation is fused into the loss."""
        out = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and self.head is not None:
                if isinstance(layer, Activation):
                    break  # fused into the loss
                return layer.forward(out, train_flg=train, logits=True)
            out = layer.forward(out, train_flg=train)
        return out

    def backward_pass(self, dout):
        """Back-propagate ``dout`` (the loss gradient of ``forward_pass``'s output): every weight's
        gradient lands in the flat buffer."""
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            if i == last and self.head is not None and isinstance(layer, Activation):
                continue
            if i == 0 and not layer.weight_info():
                break  # nothing needs the input gradient of a parameter-free first layer
            dout = layer.backward(dout)
            self.flat.adopt(layer)

    def _regularized(self):
        """``[(layer, weight name, regularizer)]`` (looked up once per step, cheaply)."""
        return [(layer, name, info["regularizer"]) for layer in self.layers
                for name, info in layer._weights.items() if info.get("regularizer") is not None]

    def regularize(self):
        """Add every weight regularizer's gradient to its weight's gradient; return the penalty (or None)."""
        total = None
        for layer, name, reg in self._regularized():
            w = getattr(layer, name)
            reg.add_grad(self.ops, w, getattr(layer, "d" + name))
            p = reg.penalty(self.ops, w)
            total = p if total is None else total + p
        return total

    def stat_names(self):
        """The names of a batch's sums: ``loss``, then each metric's."""
        return ["loss"] + [m.name for m in self.metrics]

    def penalty(self):
        """The regularizers' penalty on the current weights (None without regularizers)."""
        total = None
        for layer, name, reg in self._regularized():
            p = reg.penalty(self.ops, getattr(layer, name))
            total = p if total is None else total + p
        return total

    def batch_stats(self, out, t, loss, n):
        stats = {"loss": loss * out.dtype.type(n)}
        logits = self.head is not None or self.loss.from_logits
        probs = None
        for m in self.metrics:
            if logits and not m.on_logits:  # mse/mae read probabilities, not the fused head's logits
                if probs is None:
                    probs = self.apply_head(out) if self.head is not None else out
                stats[m.name] = m(self.ops, probs, t, False)
            else:
                stats[m.name] = m(self.ops, out, t, logits)
        return stats

    def apply_head(self, out):
        """The fused head's activation (softmax or sigmoid) of logits ``out``; ``out`` itself without one."""
        if self.head == "softmax":
            return self.ops.softmax(out)
        if self.head == "sigmoid":
            return self.ops.bias_act(out, None, SIGMOID)
        return out

    def seed_record(self, seed=None):
        """What a run fingerprint records of the seed: ``fit(seed=)``'s, else the model's."""
        if seed is None:
            return self._seed
        return int(seed) if isinstance(seed, (int, numpy.integer)) else type(seed).__name__

    # ------------------------------------------------------------------ state
    def state(self, weights=True):
        """Everything training changes, as host values: ``weights`` (``get_weights()`` order),
        ``optimizer`` (``{"iterations", "slots": {name: array}}``, or None), ``step`` (the dropout
        step count) and ``seeds`` (each layer's dropout seed, or None). ``weights=False`` leaves the
        arrays out (cheap)."""
        opt = self.optimizer
        out = {"step": int(self._step), "seeds": [getattr(layer, "seed", None) if isinstance(layer, Dropout) else None
                                                for layer in self.layers]}
        if not weights:
            return out
        self._require_built("state()")
        out["weights"] = self.get_weights()
        out["optimizer"] = None if opt is None else {
            "iterations": int(opt.iterations),
            "slots": {name: self.ops.asnumpy(s) for name, s in zip(opt.slots, opt.flat_slots or ())}}
        return out

    def load_state(self, state):
        """Restore what ``state()`` gave (any subset of its keys, plus ``lr``: the optimizer's learning
        rate). Shapes are checked before anything changes; optimizer slots are written in place (a
        captured training step keeps their addresses)."""
        self._require_built("load_state()")
        weights, opt_state = state.get("weights"), state.get("optimizer")
        opt = self.optimizer
        if weights is not None:
            self.flat.check_host(weights)
        if opt_state is not None:
            if opt is None:
                raise ValueError(f"{self.name}.load_state: the state has optimizer slots but the model is not compiled")
            slots = opt_state["slots"]
            bad = [k for k in opt.slots if k not in slots or tuple(slots[k].shape) != (self.flat.size,)]
            if bad:
                raise ValueError(f"{self.name}.load_state: optimizer slot(s) {bad} missing or not of shape "
                                 f"({self.flat.size},); {type(opt).__name__} has {list(opt.slots)}")
        if weights is not None:
            self.flat.set_host(weights)
        if opt_state is not None:
            opt.iterations = int(opt_state["iterations"])
            if not opt.flat_slots or len(opt.flat_slots) != len(opt.slots) or any(
                    s.shape != (self.flat.size,) or s.dtype != self.dtype for s in opt.flat_slots):
                opt.build(self.flat)
            for slot, name in zip(opt.flat_slots, opt.slots):
                slot[...] = self.ops.asarray(numpy.asarray(opt_state["slots"][name]).astype(self.dtype, copy=False))
        for layer, seed in zip(self.layers, state.get("seeds") or ()):
            if seed is not None:
                layer.seed = seed  # dropout masks continue as they were
        if state.get("lr") is not None:
            opt.lr = state["lr"]  # a callback may have changed it
        if state.get("step") is not None:
            self._step = int(state["step"])

    # ------------------------------------------------------------------ evaluation and prediction
    def get_layer(self, name=None, index=None):
        """A layer by ``name`` or by ``index``, as Keras's ``get_layer``."""
        if (name is None) == (index is None):
            raise ValueError(f"{self.name}.get_layer: give exactly one of name and index")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, numpy.integer)) or \
                    not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"{self.name}.get_layer: index {index!r} is out of range for "
                                 f"{len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"{self.name}.get_layer: no layer named {name!r}; layers: "
                         f"{', '.join(layer.name for layer in self.layers)}")

    def on_device(self, a, dtype="model"):
        """One batch on the model's device (a no-op for arrays already there): the inference loops'
        per-batch copy when ``_prepare(move="auto")`` left a too-large set on the host."""
        if self.ops.owns(a):
            return a
        return self.ops.asarray(a, dtype=self.dtype if dtype == "model" else dtype)

    # ------------------------------------------------------------------ saving
    def save(self, path, include_optimizer=True):
        """Write architecture, compile settings, weights and optimizer state to one ``.fastnn`` zip, atomically."""
        self._require_built("save()")
        saving.save_model(self, path, include_optimizer)

    def save_weights(self, path):
        """The weights alone, as ``.npz``."""
        self._require_built("save_weights()")
        saving.save_weights(self, path)

    def load_weights(self, path):
        """Load weights written by ``save_weights`` (shapes must match this model)."""
        self._require_built("load_weights()")
        saving.load_weights(self, path)

    def __call__(self, x):
        if isinstance(x, KerasTensor) or (isinstance(x, (list, tuple)) and any(isinstance(t, KerasTensor) for t in x)):
            raise TypeError(f"{self.name}: a model used as a layer is not supported by fastnn yet")
        return self.predict(x, verbose=0)

    def __repr__(self):
        return f"Sequential(name={self.name!r}, layers={[layer.name for layer in self.layers]})"
