"""Batch normalization: the book's layer and Keras's, one class."""
from __future__ import annotations

import numpy

from fastnn.layers.base import Layer, step_context, train_flag


class BatchNormalization(Layer):
    """Batch normalization (Ioffe & Szegedy 2015): ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

    Two ways to make one:

    - the book's: ``BatchNormalization(gamma, beta, momentum=0.9)`` with arrays. Statistics are per
      feature of the flattened sample when ``gamma`` has ``C*H*W`` entries, per channel when it has
      ``C`` (inputs in NCHW layout); ``eps = 1e-6`` as in the book's code.
    - Keras's: ``BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3)`` without arrays; the
      parameters are made at build, per feature for 2-D inputs and per channel (axis 1, NCHW)
      for 4-D inputs.

    Running statistics are updated in training mode as ``running = momentum * running +
    (1 - momentum) * batch`` and used at inference.
    """

    def __init__(self, gamma=None, beta=None, momentum=None, running_mean=None, running_var=None,
                 axis=None, epsilon=None, eps=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.book = gamma is not None or beta is not None
        if self.book and (gamma is None or beta is None):
            raise ValueError(f"{self.name}: give both gamma and beta arrays (the book's form), or neither (Keras's)")
        if epsilon is not None and eps is not None and epsilon != eps:
            raise ValueError(f"{self.name}: give either epsilon or eps, got {epsilon} and {eps}")
        eps = epsilon if epsilon is not None else eps
        momentum = momentum if momentum is not None else (0.9 if self.book else 0.99)
        eps = eps if eps is not None else (1e-6 if self.book else 1e-3)
        for arg, value in (("momentum", momentum), ("epsilon", eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float, numpy.integer, numpy.floating)) \
                    or not numpy.isfinite(value):
                raise ValueError(f"{self.name} (BatchNormalization): {arg} must be a finite number, got {value!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"{self.name} (BatchNormalization): momentum must be in [0, 1), got {self.momentum}")
        if not self.eps > 0:
            raise ValueError(f"{self.name} (BatchNormalization): epsilon must be > 0, got {self.eps}")
        self.axis = axis
        self.gamma = self.beta = self.dgamma = self.dbeta = None
        self.running_mean = self.running_var = None
        self._stats_step = None  # the training step whose batch the running statistics last took in
        if self.book:
            if getattr(gamma, "shape", None) is None or gamma.shape != beta.shape or gamma.ndim != 1:
                raise ValueError(f"{self.name}: gamma and beta must be 1-D arrays of one shape, got "
                                 f"{getattr(gamma, 'shape', None)} and {getattr(beta, 'shape', None)}")
            self.dtype = gamma.dtype
            self.gamma, self.beta = gamma, beta
            self._weights = {"gamma": {"trainable": True, "regularizer": None, "decay": True},
                             "beta": {"trainable": True, "regularizer": None, "decay": True}}
            self.running_mean, self.running_var = running_mean, running_var
            self.built = True
        self.cache = None
        self.x_shape = None

    def build(self, input_shape, rng=None):
        if rng is not None:
            self.rng = rng
        if len(input_shape) == 4:
            features = input_shape[1]
        elif len(input_shape) == 2:
            features = input_shape[-1]
        else:
            raise ValueError(f"{self.name}: expected 2-D (N, D) or 4-D (N, C, H, W) inputs, got shape {input_shape}")
        allowed = (None, 1, -1) if len(input_shape) == 2 else (None, 1, -3)
        if self.axis not in allowed:
            raise ValueError(f"{self.name}: axis={self.axis} is not supported for inputs of shape {tuple(input_shape)}; "
                             f"statistics are per feature for (N, D) inputs and per channel (axis 1, layout NCHW) "
                             f"for (N, C, H, W) inputs: transpose channels-last data with x.transpose(0, 3, 1, 2)")
        self.add_weight("gamma", (features,), "ones")
        self.add_weight("beta", (features,), "zeros")
        self.add_weight("running_mean", (features,), "zeros", trainable=False)
        self.add_weight("running_var", (features,), "ones", trainable=False)
        self.built = True

    def _to_2d(self, x):
        """``(rows, features)`` view of ``x`` and how to undo it."""
        size = self.gamma.shape[0]
        if x.ndim == 2:
            if x.shape[1] != size:
                raise ValueError(f"{self.name}: expected x of shape (N, {size}), got {tuple(x.shape)}")
            return x, None
        if x.ndim == 4 and x.shape[1] == size and not (self.book and int(numpy.prod(x.shape[1:])) == size):
            n, c, h, w = x.shape
            return x.transpose(0, 2, 3, 1).reshape(-1, c), ("channels", x.shape)
        if x.ndim >= 2 and int(numpy.prod(x.shape[1:])) == size:
            return x.reshape(x.shape[0], -1), ("flat", x.shape)
        raise ValueError(f"{self.name}: x of shape {tuple(x.shape)} matches neither {size} features nor "
                         f"{size} channels (layout NCHW: channels on axis 1)")

    @staticmethod
    def _from_2d(y, how):
        if how is None:
            return y
        kind, shape = how
        if kind == "flat":
            return y.reshape(shape)
        n, c, h, w = shape
        return y.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    # fastnn.book's layer trains on a 1-sample batch, as the book's gradient check does (xhat = 0).
    single_sample_batches = False

    def _running_stats(self, ops, dtype):
        """Make the running statistics on first use (zeros, as the book's)."""
        if self.running_mean is None:
            self.running_mean = ops.alloc(self.gamma.shape, dtype)
            self.running_var = ops.alloc(self.gamma.shape, dtype)

    def forward(self, x, train_flg=True, training=None):
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, self.gamma.dtype)
        x2, how = self._to_2d(x)
        self._running_stats(ops, x.dtype)
        train = train_flag(train_flg, training)
        # Keras's layer takes fit's 1-sample last batch (xhat = 0); the book-style one here refuses it
        if train and x2.shape[0] < 2 and self.book and not self.single_sample_batches:
            raise ValueError(f"{self.name}: training-mode batch normalization needs at least 2 values per feature, "
                             f"got a batch of shape {tuple(x.shape)}")
        momentum = self.momentum
        ctx = step_context()
        if train and ctx is not None:
            if ctx.retry and self._stats_step == ctx.step:
                momentum = 1.0  # the failed attempt of this step already took this batch in: keep the statistics
            self._stats_step = ctx.step
        y, xhat, inv_std = ops.batchnorm_forward(x2, self.gamma, self.beta, self.running_mean, self.running_var,
                                                 momentum, self.eps, train)
        self.cache = (xhat, inv_std, how) if train else None
        return self._from_2d(y, how)

    def backward(self, dout):
        if self.cache is None:
            raise ValueError(f"{self.name}: backward() needs a training-mode forward() first")
        xhat, inv_std, how = self.cache
        ops = self._ops_for(xhat)
        if self.dgamma is None or not ops.owns(self.dgamma):
            self.dgamma = ops.alloc(self.gamma.shape, self.gamma.dtype)
            self.dbeta = ops.alloc(self.beta.shape, self.beta.dtype)
        dout = self._input(ops, dout, xhat.dtype)
        d2, _ = self._to_2d(dout)
        if d2.shape != xhat.shape:
            raise ValueError(f"{self.name}: backward expected dout like the forward input, got shape {tuple(dout.shape)}")
        dx = ops.batchnorm_backward(d2, xhat, inv_std, self.gamma, dgamma=self.dgamma, dbeta=self.dbeta)
        return self._from_2d(dx, how)

    def get_config(self):
        if self.book:
            raise TypeError(f"{self.name}: the book's BatchNormalization(gamma, beta) holds the arrays it was "
                            f"given; use BatchNormalization() to save a model")
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, epsilon=self.eps, axis=self.axis)
        return cfg
