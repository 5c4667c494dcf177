"""Dense/Affine, activations, Dropout and Flatten: the book's layers and Keras's, one class each."""
from __future__ import annotations

import numpy

from fastnn import regularizers
from fastnn.functions import check_number
from fastnn.kernels import ACTIVATIONS, ELU, GELU_TANH, LEAKY_RELU, LINEAR, NEEDS_Z
from fastnn.layers.base import Layer, check_book_bias, shape_str, step_context, train_flag
from fastnn.random import draw_seed, make_rng

SOFTMAX = "softmax"
ACTIVATION_NAMES = tuple(ACTIVATIONS) + (SOFTMAX,)
_DEFAULT_ALPHA = {LEAKY_RELU: 0.01, ELU: 1.0}


def activation_code(name):
    """``(code, alpha)`` for an activation name (``None`` means linear); ``code`` is ``"softmax"`` for softmax."""
    if name is None:
        return LINEAR, 0.0
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name, got {type(name).__name__}; valid names: {', '.join(ACTIVATION_NAMES)}")
    key = name.lower()
    if key == SOFTMAX:
        return SOFTMAX, 0.0
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATION_NAMES)}")
    code = ACTIVATIONS[key]
    return code, _DEFAULT_ALPHA.get(code, 0.0)


def _apply(ops, z, b, act, alpha, out=None):
    """act(z + b) for any activation code, softmax included (``out`` may be ``z`` itself)."""
    if act == SOFTMAX:
        return ops.softmax(z if b is None else ops.bias_act(z, b, LINEAR))
    return ops.bias_act(z, b, act, alpha, out=out)


def _apply_backward(ops, dout, y, act, alpha):
    if act == SOFTMAX:
        # dz = y * (dout - sum(dout * y)) per row: the softmax Jacobian-vector product
        s = (dout * y).sum(axis=1, keepdims=True)
        return y * (dout - s)
    return ops.act_backward(dout, y, act, alpha)


def _gelu_code(activation, approximate):
    """Keras's ``gelu(x, approximate=...)`` as a name: ``approximate=True`` selects the tanh form."""
    if approximate is None:
        return activation
    if not isinstance(activation, str) or activation.lower() not in ("gelu", "gelu_tanh"):
        raise ValueError(f"approximate= applies to gelu only, got activation {activation!r}")
    return "gelu_tanh" if approximate else "gelu"


class Dense(Layer):
    """Fully connected layer ``y = act(x @ W + b)`` with ``W: (D, units)``, ``b: (units,)``.

    Parameters
    ----------
    units : int
        Output width.
    activation : str, optional
        One of relu, sigmoid, tanh, leaky_relu, elu, softplus, selu, gelu (Keras's exact form),
        gelu_tanh (its tanh approximation), swish (or silu), softmax, linear (default: none).
        The activation is fused with the bias add, and its backward with the bias gradient.
        gelu, gelu_tanh and swish keep the pre-activation ``z`` for backward (their derivative is
        no function of the output), which costs one more ``(N, units)`` array; the others keep
        only the output, as before.
    input_shape : tuple, optional
        Per-sample input shape, e.g. ``(784,)``; inputs of more than 2 dimensions are flattened.
    kernel_initializer, bias_initializer : str or callable
    kernel_regularizer, bias_regularizer : optional ``fastnn.regularizers`` objects.
    use_bias : bool
    """

    def __init__(self, units, activation=None, input_shape=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, use_bias=True,
                 name=None, dtype=None, trainable=True, input_dim=None):
        super().__init__(name=name, trainable=trainable, dtype=dtype, input_shape=input_shape, input_dim=input_dim)
        if isinstance(units, bool) or not isinstance(units, (int, numpy.integer)) or units <= 0:
            raise ValueError(f"{self.name}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activation
        self.act, self.alpha = activation_code(activation)
        self.kernel_initializer = self._check_initializer("kernel_initializer", kernel_initializer)
        self.bias_initializer = self._check_initializer("bias_initializer", bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.use_bias = use_bias
        self.W = self.b = self.dW = self.db = None
        self.x = self.y = None
        self.z = None  # the pre-activation x @ W + b, kept only for an activation in NEEDS_Z
        self.x_shape = None
        self._train = False
        self._act_now = self.act  # the activation the last forward applied (LINEAR: it gave logits)

    @property
    def in_features(self):
        return None if self.W is None else int(self.W.shape[0])

    def build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        features = int(numpy.prod(input_shape[1:]))
        self.add_weight("W", (features, self.units), self.kernel_initializer, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("b", (self.units,), self.bias_initializer, regularizer=self.bias_regularizer)
        self.built = True

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def _label(self):
        return f"{type(self).__name__}({self.in_features} -> {self.units})"

    def _flat_input(self, x):
        if x.ndim < 2:
            raise ValueError(f"{self.name} {self._label()}: expected x of shape (N, {self.in_features}), got "
                             f"{tuple(x.shape)}; a single sample needs a batch axis: x.reshape(1, -1)")
        x2 = x if x.ndim == 2 else x.reshape(x.shape[0], -1)  # 2-D as it is: no new view each step
        if x2.shape[1] != self.in_features:
            hint = "; flatten the input first" if x.ndim > 2 else ""
            raise ValueError(f"{self.name} {self._label()}: expected x of shape (N, {self.in_features}), "
                             f"got {tuple(x.shape)} ({x2.shape[1]} features){hint}")
        return x2

    def forward(self, x, train_flg=True, training=None, logits=False):
        """``y = act(x @ W + b)``; inputs with more than 2 dimensions are flattened per sample.
        ``logits=True`` leaves the activation out (a model whose loss applies it, fused)."""
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, self.W.dtype)
        self.x_shape = x.shape
        self.x = self._flat_input(x)
        train = train_flag(train_flg, training)
        self._train = train
        self._act_now = LINEAR if logits else self.act
        z = ops.gemm(self.x, self.W, out=self._buffer(ops, "z", (x.shape[0], self.units), self.W.dtype, train))
        if self._act_now in NEEDS_Z:  # backward reads z + b: bias added in place, y in its own array
            self.z = z
            self.y = ops.bias_act(z, self.b, self._act_now, self.alpha, z_out=z,
                                  out=self._buffer(ops, "y", z.shape, z.dtype, train))
        else:
            self.z = None
            self.y = _apply(ops, z, self.b, self._act_now, self.alpha, out=z)  # in place: z is ours
        return self.y

    def backward(self, dout):
        """Fills ``dW``, ``db`` and returns ``dx`` in the shape of the forward input."""
        y = self._require_forward("y", dout)
        ops = self._ops_for(y)
        dout = self._input(ops, dout, y.dtype)
        act = self._act_now
        if act == SOFTMAX:
            dz = _apply_backward(ops, dout, y, act, self.alpha)
            if self.use_bias:
                ops.bias_grad(dz, out=self.db)
        elif act == LINEAR:
            dz = dout
            if self.use_bias:
                ops.bias_grad(dz, out=self.db)
        elif self.use_bias:
            dz = ops.act_backward_bias_grad(dout, y, act, self.alpha, db=self.db, z=self.z,
                                            out=self._buffer(ops, "dz", y.shape, y.dtype, self._train))
        else:
            dz = ops.act_backward(dout, y, act, self.alpha, z=self.z,
                                  out=self._buffer(ops, "dz", y.shape, y.dtype, self._train))
        ops.gemm(self.x, dz, trans_a=True, out=self.dW)
        if self.skip_input_grad:
            return None
        dx = ops.gemm(dz, self.W, trans_b=True, out=self._buffer(ops, "dx", self.x.shape, y.dtype, self._train))
        return dx if len(self.x_shape) == 2 else dx.reshape(self.x_shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   input_shape=list(self.input_shape) if self.input_shape else None)
        for key in ("kernel_initializer", "bias_initializer"):
            if isinstance(getattr(self, key), str):  # a callable initializer is not saved; weights are
                cfg[key] = getattr(self, key)
        for key in ("kernel_regularizer", "bias_regularizer"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key).get_config()
        return cfg


class Affine(Dense):
    """The book's ``Affine(W, b)``: ``out = x @ W + b`` on the very arrays it is given.

    The layer keeps ``W`` and ``b`` by reference, so ``params["W1"] -= lr * grads["W1"]`` trains
    it; on a CuPy backend host arrays are moved to the device once and ``layer.W`` is the moved
    array. After ``backward`` the gradients are in ``dW``, ``db``. Inputs with more than two
    dimensions are flattened, and ``dx`` comes back in their shape. The computation runs in the
    dtype of ``W`` (inputs are cast to it).
    """

    def __init__(self, W, b, name=None):
        W_shape = getattr(W, "shape", None)
        if W_shape is None or len(W_shape) != 2:
            raise ValueError(f"Affine: W must be a 2-D array (D, H), got {type(W).__name__} of shape {W_shape}")
        super().__init__(int(W_shape[1]), name=name, dtype=W.dtype)
        check_book_bias(self, W, b, W_shape[1])
        self.W, self.b = W, b
        self._weights = {"W": {"trainable": True, "regularizer": None, "decay": True},
                         "b": {"trainable": True, "regularizer": None, "decay": True}}
        self.dW = self.db = None
        self.built = True

    def backward(self, dout):
        ops = self._ops_for(self._require_forward("y", dout))
        if self.dW is None or self.dW.shape != self.W.shape or not ops.owns(self.dW):
            self.dW = ops.alloc(self.W.shape, self.W.dtype)
            self.db = ops.alloc(self.b.shape, self.b.dtype)
        return super().backward(dout)

    def get_config(self):
        raise TypeError(f"{self.name}: Affine holds the arrays it was given; use Dense to save a model")


class Activation(Layer):
    """An activation as a layer: ``Activation("relu")``, ``Activation("gelu", approximate=True)``.

    Backward uses only the forward output ``y``, except for gelu, gelu_tanh and swish, whose
    derivative needs the input: the layer then keeps a reference to it (no copy).
    """

    def __init__(self, activation, name=None, alpha=None, approximate=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.activation = _gelu_code(activation, approximate)
        self.act, default_alpha = activation_code(self.activation)
        self.alpha = default_alpha if alpha is None else float(check_number(f"{self.name} ({type(self).__name__})",
                                                                             "alpha", alpha))
        self.y = self.x = None
        self._train = False

    def forward(self, x, train_flg=True, training=None):
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if getattr(x, "dtype", None) is not None and x.dtype.kind == "f" else None)
        if self.act == SOFTMAX and x.ndim != 2:
            raise ValueError(f"{self.name}: softmax expects x of shape (N, C), got {tuple(x.shape)}")
        self._train = train_flag(train_flg, training)
        self.x = x if self.act in NEEDS_Z else None  # the pre-activation, for backward
        self.y = _apply(ops, x, None, self.act, self.alpha, out=self._buffer(ops, "y", x.shape, x.dtype, self._train))
        return self.y

    def backward(self, dout):
        y = self._require_forward("y", dout)
        ops = self._ops_for(y)
        dout = self._input(ops, dout, y.dtype)
        if self.act == SOFTMAX:
            return _apply_backward(ops, dout, y, self.act, self.alpha)
        return ops.act_backward(dout, y, self.act, self.alpha, z=self.x,
                                out=self._buffer(ops, "dx", y.shape, y.dtype, self._train))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(activation=self.activation, alpha=self.alpha)
        return cfg


class _Named(Activation):
    """An activation class with its name fixed: its config is its name (and alpha where it has one)."""

    def get_config(self):
        cfg = super().get_config()
        del cfg["activation"]
        if self.act not in (LEAKY_RELU, ELU):
            del cfg["alpha"]
        return cfg


class Relu(_Named):
    """``max(0, x)``; ``backward`` passes ``dout`` where the output is positive (``dout`` is not written)."""

    def __init__(self, name=None, **kwargs):
        super().__init__("relu", name=name, **kwargs)


class Sigmoid(_Named):
    """``1 / (1 + e^-x)``; ``backward`` is ``dout * y * (1 - y)``."""

    def __init__(self, name=None, **kwargs):
        super().__init__("sigmoid", name=name, **kwargs)


class Tanh(_Named):
    """``tanh(x)``; ``backward`` is ``dout * (1 - y^2)``."""

    def __init__(self, name=None, **kwargs):
        super().__init__("tanh", name=name, **kwargs)


class LeakyRelu(_Named):
    """``x`` where positive, ``alpha * x`` elsewhere (``alpha > 0``)."""

    def __init__(self, alpha=0.01, name=None, **kwargs):
        check_number("LeakyRelu", "alpha", alpha, low=0, strict=True)
        super().__init__("leaky_relu", name=name, alpha=alpha, **kwargs)


class Elu(_Named):
    """``x`` where positive, ``alpha * (e^x - 1)`` elsewhere."""

    def __init__(self, alpha=1.0, name=None, **kwargs):
        check_number("Elu", "alpha", alpha, low=0, strict=True)
        super().__init__("elu", name=name, alpha=alpha, **kwargs)


class Softplus(_Named):
    """``log(1 + e^x)``, computed stably."""

    def __init__(self, name=None, **kwargs):
        super().__init__("softplus", name=name, **kwargs)


class Selu(_Named):
    """Keras's ``selu``: ``scale * x`` where positive, ``scale * alpha * (e^x - 1)`` elsewhere, with
    ``alpha = 1.6732632423543772``, ``scale = 1.0507009873554805`` (Klambauer et al. 2017)."""

    def __init__(self, name=None, **kwargs):
        super().__init__("selu", name=name, **kwargs)


class Gelu(_Named):
    """Keras's ``gelu``: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`` (Hendrycks & Gimpel 2016);
    ``approximate=True``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. Keeps its input for backward."""

    def __init__(self, approximate=False, name=None, **kwargs):
        super().__init__("gelu", name=name, approximate=bool(approximate), **kwargs)

    @property
    def approximate(self):
        return self.act == GELU_TANH

    def get_config(self):
        cfg = super().get_config()
        cfg["approximate"] = self.approximate
        return cfg


class Swish(_Named):
    """Keras's ``swish`` (also named ``silu``): ``x * sigmoid(x)`` (Ramachandran et al. 2017). Keeps
    its input for backward."""

    def __init__(self, name=None, **kwargs):
        super().__init__("swish", name=name, **kwargs)


class Softmax(_Named):
    """Row-wise softmax of ``x: (N, C)``. With a cross-entropy loss use ``SoftmaxWithLoss`` instead:
    it is fused and numerically stable."""

    def __init__(self, name=None, **kwargs):
        super().__init__("softmax", name=name, **kwargs)


class PRelu(Layer):
    """Parametric ReLU (He et al. 2015): ``x`` where positive, ``alpha * x`` elsewhere, with a
    learnable slope per unit (``alpha`` has the per-sample input shape, initialised to
    ``alpha_initializer``). ``backward`` fills ``dalpha``."""

    def __init__(self, alpha_initializer=0.25, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha_initializer = alpha_initializer
        self.alpha = self.dalpha = None
        self.x = None

    def build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        self.add_weight("alpha", tuple(input_shape[1:]), self.alpha_initializer, decay=False)
        self.built = True

    def forward(self, x, train_flg=True, training=None):
        if self.dtype is None and getattr(x, "dtype", None) is not None and x.dtype.kind == "f":
            self.dtype = x.dtype
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, self.alpha.dtype)
        if tuple(x.shape[1:]) != tuple(self.alpha.shape):
            raise ValueError(f"{self.name}: expected x of shape {shape_str((None,) + self.alpha.shape)}, got {tuple(x.shape)}")
        self.x = x
        return ops.xp.where(x > 0, x, self.alpha * x)

    def backward(self, dout):
        x = self._require_forward("x", dout)
        ops = self._ops_for(x)
        dout = self._input(ops, dout, x.dtype)
        neg = x <= 0
        ops.xp.sum(ops.xp.where(neg, x * dout, 0), axis=0, out=self.dalpha)
        return ops.xp.where(neg, self.alpha * dout, dout)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(alpha_initializer=self.alpha_initializer)
        return cfg


class Dropout(Layer):
    """Inverted dropout, as in Keras and PyTorch.

    Training: ``y = x * mask / (1 - rate)`` with ``mask`` drawn per unit; inference: ``y = x``.
    The book's ``Dropout`` is the non-inverted form (it scales by ``1 - ratio`` at inference
    instead); both give the same expected activations, but weights trained with one are not
    interchangeable with the other.

    ``Dropout(0.5)``, ``Dropout(rate=0.5)`` and ``Dropout(dropout_ratio=0.5)`` are the same. Masks
    are a counter-based hash of (seed, step, sample, unit), identical on every backend; a model's
    training loop advances ``step`` once per batch, and a layer used on its own draws a new mask
    at each training-mode ``forward``.
    """

    def __init__(self, rate=None, *, dropout_ratio=None, seed=None, seed_drawn=False, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if rate is not None and dropout_ratio is not None and rate != dropout_ratio:
            raise ValueError(f"{self.name}: give either rate or dropout_ratio, got {rate} and {dropout_ratio}")
        rate = 0.5 if rate is None and dropout_ratio is None else (rate if rate is not None else dropout_ratio)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"{self.name}: rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer))
                                 or not 0 <= seed < 2**63):
            raise ValueError(f"{self.name} (Dropout): seed must be an integer in [0, 2**63) or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.seed_drawn = bool(seed_drawn) and seed is not None  # drawn at build, not given: fit(seed=) redraws it
        self._calls = 0  # outside a training step (fastnn.layers.base.StepContext): masks by call count
        self.mask = None

    @property
    def dropout_ratio(self):
        return self.rate

    def build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        if self.seed is None:
            self.seed = draw_seed(self.rng if self.rng is not None else make_rng())
            self.seed_drawn = True   # not given by the user: fit(seed=...) may redraw it
        self.built = True

    def forward(self, x, train_flg=True, training=None):
        if not train_flag(train_flg, training) or self.rate == 0:
            self.mask = None
            return x
        if self.seed is None:
            self.build(None)
        ops = self._ops_for(x)
        x = self._input(ops, x, x.dtype if x.dtype.kind == "f" else None)
        ctx = step_context()
        flat = x if x.ndim == 2 else x.reshape(x.shape[0], -1)
        if ctx is not None and ctx.premade_masks:  # a captured step: the graph filled it before the replay
            self.mask = self._buffer(ops, "mask", flat.shape, x.dtype)
        else:
            self.mask = self.fill_mask(ops, flat.shape, x.dtype, ctx)
        y = ops.mul(flat, self.mask, out=self._buffer(ops, "y", flat.shape, x.dtype))
        return y if flat is x else y.reshape(x.shape)

    def _step_and_row(self, ctx):
        """``(step, row0)`` of this call: the training step's, or this layer's own call count."""
        if ctx is not None:
            return ctx.step, ctx.row0
        self._calls += 1
        return self._calls - 1, 0

    def fill_mask(self, ops, shape, dtype, ctx=None):
        """This step's mask ``(rows, units)``, scaled by ``1 / (1 - rate)``, in the layer's workspace."""
        step, row0 = self._step_and_row(ctx)
        return ops.dropout_mask(shape, self.rate, self.seed, step, row0, dtype=dtype,
                                out=self._buffer(ops, "mask", shape, dtype))

    def backward(self, dout):
        if self.mask is None:
            return dout
        ops = self._ops_for(self.mask)
        dout = self._input(ops, dout, self.mask.dtype)
        flat = dout if dout.ndim == 2 else dout.reshape(dout.shape[0], -1)
        if flat.shape != self.mask.shape:
            raise ValueError(f"{self.name}: backward expected dout with {self.mask.shape[1]} units per sample "
                             f"and {self.mask.shape[0]} rows, got shape {tuple(dout.shape)}")
        dx = ops.mul(flat, self.mask, out=self._buffer(ops, "dx", flat.shape, flat.dtype))
        return dx if flat is dout else dx.reshape(dout.shape)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate, seed=self.seed)
        if self.seed_drawn:
            cfg["seed_drawn"] = True
        return cfg


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)``; backward restores the shape."""

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.x_shape = None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(numpy.prod(input_shape[1:])))

    def forward(self, x, train_flg=True, training=None):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        shape = self._require_forward("x_shape")
        return dout.reshape(shape)
