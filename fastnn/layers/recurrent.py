"""Recurrent layers as Keras 3's: ``SimpleRNN``, ``LSTM``, ``GRU`` over inputs ``x: (N, T, F)``.

The weights are laid out as Keras lays them out, so weights copied from Keras give Keras's outputs:
``kernel: (F, k*units)``, ``recurrent_kernel: (units, k*units)`` and ``bias``, with the ``k`` gate
blocks in Keras's order along the columns (LSTM: i, f, c, o; GRU: z, r, h), and ``get_weights()``
in Keras's order (kernel, recurrent_kernel, bias).

One GEMM projects the whole input sequence up front (``x @ kernel + bias`` for every step at
once); each time step then costs one GEMM on the recurrent state (two for ``GRU(reset_after=False)``)
and its gate activations through ``ops.bias_act``. ``backward`` back-propagates through time and
finishes with one GEMM per weight over all steps. The loops run time-major: step ``t`` works on
block ``t`` of contiguous ``(T, N, ...)`` stacks, kept for ``backward``.
"""
from __future__ import annotations


import numpy

from fastnn import initializers, regularizers
from fastnn.functions import check_flag
from fastnn.kernels import LINEAR, NEEDS_Z
from fastnn.layers.base import Layer, _auto_name, shape_str, train_flag
from fastnn.layers.core import SOFTMAX, activation_code

__all__ = ["SimpleRNN", "LSTM", "GRU"]



class _ForgetBias:
    """LSTM's ``unit_forget_bias``: ``bias_initializer`` for the i, c, o blocks and ones for f (as Keras)."""

    def __init__(self, init, units):
        self.init, self.units = init, units

    def __call__(self, shape, rng, dtype=numpy.float32):
        init, u = initializers.get(self.init), self.units
        parts = (init((u,), rng, dtype), numpy.ones(u, dtype), init((2 * u,), rng, dtype))
        return numpy.concatenate([numpy.asarray(p, dtype=dtype) for p in parts])


def _rate(who, arg, value):
    """A dropout rate given to a recurrent layer: only 0 is implemented, and anything else says so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{who}: {arg} must be a number in [0, 1), got {value!r}")
    if value:
        raise NotImplementedError(f"{who}: {arg}={value} is not implemented: fastnn's recurrent layers have no "
                                  f"dropout inside the recurrence yet; leave {arg}=0 (a Dropout layer after the "
                                  f"recurrent layer regularises its output)")
    return 0.0


class _Recurrent(Layer):
    """What ``SimpleRNN``, ``LSTM`` and ``GRU`` share: arguments, weights, the input projection, the
    output, and the weight and input gradients once a subclass's loop has filled ``dxw``, the
    gradient of the projected input ``x @ kernel + bias`` at every step."""

    gates = 1  # blocks of ``units`` columns in kernel and recurrent_kernel

    def __init__(self, units, activation="tanh", use_bias=True, *, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False, unroll=False,
                 name=None, trainable=True, dtype=None, input_shape=None, input_dim=None):
        name = name or _auto_name(type(self).__name__)
        super().__init__(name=name, trainable=trainable, dtype=dtype, input_shape=input_shape, input_dim=input_dim)
        who = self._who()
        if isinstance(units, bool) or not isinstance(units, (int, numpy.integer)) or units <= 0:
            raise ValueError(f"{who}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activation
        self.act, self.alpha = self._activation("activation", activation)
        self.use_bias = check_flag(who, "use_bias", use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        for arg in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            self._check_initializer(arg, getattr(self, arg))
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dropout = _rate(who, "dropout", dropout)
        self.recurrent_dropout = _rate(who, "recurrent_dropout", recurrent_dropout)
        if return_state:
            raise NotImplementedError(f"{who}: return_state=True is not supported: a fastnn layer hands one array "
                                      f"to the next (a Sequential has no multi-output layers); use "
                                      f"return_sequences=True to get every step's output")
        if stateful:
            raise NotImplementedError(f"{who}: stateful=True is not supported: every batch starts from zero states")
        self.return_sequences = check_flag(who, "return_sequences", return_sequences)
        self.go_backwards = check_flag(who, "go_backwards", go_backwards)
        self.unroll = check_flag(who, "unroll", unroll)  # Keras's compile-time choice; the same computation here
        self.kernel = self.recurrent_kernel = self.bias = None
        self.dkernel = self.drecurrent_kernel = self.dbias = None
        self.xt = self.hs = self.y = None
        self._train = False

    def _who(self):
        return f"{self.name} ({type(self).__name__})"

    def _activation(self, arg, name):
        code, alpha = activation_code(name)
        if code == SOFTMAX or code in NEEDS_Z:
            raise ValueError(f"{self._who()}: {arg}={name!r} is not supported in a recurrent layer (softmax, "
                             f"gelu, gelu_tanh and swish are not); use tanh, sigmoid, relu, elu, selu, softplus, "
                             f"leaky_relu or linear")
        return code, alpha

    # ------------------------------------------------------------------ weights and shapes
    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_initializer(self):
        return self.bias_initializer

    @staticmethod
    def _input_bias(b):
        """The part of ``bias`` (or of its gradient) added to the projected input."""
        return b

    def build(self, input_shape, rng=None):
        if len(input_shape) != 3:
            raise ValueError(f"{self._who()}: expects inputs of shape (N, timesteps, features), got input shape "
                             f"{shape_str(input_shape)}; give input_shape=(timesteps, features)")
        if rng is not None:
            self.rng = rng
        k = self.gates * self.units
        self.add_weight("kernel", (int(input_shape[-1]), k), self.kernel_initializer,
                        regularizer=self.kernel_regularizer)
        self.add_weight("recurrent_kernel", (self.units, k), self.recurrent_initializer,
                        regularizer=self.recurrent_regularizer)
        if self.use_bias:
            self.add_weight("bias", self._bias_shape(), self._bias_initializer(), regularizer=self.bias_regularizer)
        self.built = True

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def _check_input(self, x):
        shape = tuple(getattr(x, "shape", ()))
        features = None if self.kernel is None else int(self.kernel.shape[0])
        if len(shape) != 3 or (features is not None and shape[2] != features) or 0 in shape[1:]:
            want = f"(N, T, {'F' if features is None else features})"
            raise ValueError(f"{self._who()}: expected x of shape {want} (samples, timesteps, features), got "
                             f"{shape}" + ("; a single sequence needs a batch axis: x[None]" if len(shape) == 2
                                           else ""))

    def _work(self, ops, name, shape, dtype, train):
        """A workspace inside a training step, else a new array."""
        buf = self._buffer(ops, name, shape, dtype, train)
        return ops.xp.empty(shape, dtype=dtype) if buf is None else buf

    # ------------------------------------------------------------------ forward
    def forward(self, x, train_flg=True, training=None):
        """``x: (N, T, F)`` -> every step's output ``(N, T, units)`` with ``return_sequences``, else the
        last step's ``(N, units)``; with ``go_backwards`` the steps run from the last input to the first,
        and the returned sequence is in that order (as Keras)."""
        self._check_input(x)  # before a build from x's shape; once built, against the kernel's features too
        self._ensure_built(x.shape)
        ops = self._ops_for(x)
        x = self._input(ops, x, self.kernel.dtype)
        train = self._train = train_flag(train_flg, training)
        n, steps, features = x.shape
        dt, u, k = x.dtype, self.units, self.gates * self.units
        xt = self.xt = self._work(ops, "xt", (steps, n, features), dt, train)
        xt[...] = (x[:, ::-1] if self.go_backwards else x).transpose(1, 0, 2)
        xw = self._work(ops, "xw", (steps * n, k), dt, train)
        ops.gemm(xt.reshape(steps * n, features), self.kernel, out=xw)
        if self.use_bias:
            ops.bias_act(xw, self._input_bias(self.bias), LINEAR, out=xw)
        hs = self.hs = self._work(ops, "hs", (steps + 1, n, u), dt, train)
        hs[0] = 0
        self._run(ops, xw.reshape(steps, n, k), hs, train)
        if self.return_sequences:
            y = self._work(ops, "y", (n, steps, u), dt, train)
            y[...] = hs[1:].transpose(1, 0, 2)
        else:
            y = self._work(ops, "y", (n, u), dt, train)
            y[...] = hs[steps]
        self.y = y
        return y

    def _run(self, ops, xw, hs, train):
        """The time loop: ``hs[t + 1]`` from ``hs[t]`` and ``xw[t]`` (projected input, bias added)."""
        raise NotImplementedError

    def _act(self, ops, z, out, recurrent=False):
        """``out = act(z)``, or the recurrent activation."""
        act, alpha = (self.ract, self.ralpha) if recurrent else (self.act, self.alpha)
        return ops.bias_act(z, None, act, alpha, out=out)

    def _act_grad(self, ops, dout, y, out=None, recurrent=False):
        """``out = dout * act'`` from the activation's output ``y`` (or the recurrent activation's)."""
        act, alpha = (self.ract, self.ralpha) if recurrent else (self.act, self.alpha)
        return ops.act_backward(dout, y, act, alpha, out=out)

    # ------------------------------------------------------------------ backward
    def backward(self, dout):
        """Fills ``dkernel``, ``drecurrent_kernel``, ``dbias``; returns ``dx`` of the input's shape."""
        y = self._require_forward("y", dout)
        ops = self._ops_for(y)
        dout = self._input(ops, dout, y.dtype)
        steps, n, features = self.xt.shape
        k = self.gates * self.units
        dxw = self._work(ops, "dxw", (steps, n, k), y.dtype, self._train)
        self._bptt(ops, dout, dxw)
        flat = dxw.reshape(steps * n, k)
        ops.gemm(self.xt.reshape(steps * n, features), flat, trans_a=True, out=self.dkernel)
        if self.use_bias:
            ops.bias_grad(flat, out=self._input_bias(self.dbias))
        if self.skip_input_grad:
            return None
        dxt = ops.gemm(flat, self.kernel, trans_b=True).reshape(steps, n, features)
        dx = self._work(ops, "dx", (n, steps, features), y.dtype, self._train)
        dx[...] = dxt.transpose(1, 0, 2)[:, ::-1] if self.go_backwards else dxt.transpose(1, 0, 2)
        return dx

    def _bptt(self, ops, dout, dxw):
        """Back-propagation through time: fills ``dxw[t]`` for every step and ``drecurrent_kernel``
        (and the recurrent part of ``dbias``)."""
        raise NotImplementedError

    def _dh(self, dout, t, dh):
        """The gradient reaching ``h`` at step ``t``: ``dh`` from step ``t + 1``, plus the output's."""
        if self.return_sequences:
            return dh + dout[:, t]
        return dh + dout if t == self.xt.shape[0] - 1 else dh

    def _zeros(self, ops):
        return ops.xp.zeros(self.hs.shape[1:], dtype=self.hs.dtype)

    def _recurrent_grad(self, ops, h, d, out):
        """``out = sum_t h[t]^T @ d[t]``: one GEMM over all steps."""
        ops.gemm(h.reshape(-1, h.shape[-1]), d.reshape(-1, d.shape[-1]), trans_a=True, out=out)

    # ------------------------------------------------------------------ config
    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   return_sequences=self.return_sequences, go_backwards=self.go_backwards,
                   input_shape=list(self.input_shape) if self.input_shape else None)
        if self.unroll:
            cfg["unroll"] = True
        for key in ("kernel_initializer", "recurrent_initializer", "bias_initializer"):
            if isinstance(getattr(self, key), (str, int, float)):  # a callable is not saved; the weights are
                cfg[key] = getattr(self, key)
        for key in ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key).get_config()
        return cfg


class SimpleRNN(_Recurrent):
    """Keras's ``SimpleRNN``: ``h_t = act(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)``, ``h_0 = 0``.

    Parameters
    ----------
    units : int
        Width of the state ``h`` and of the output.
    activation : str
        ``"tanh"`` (default) or any fastnn activation whose derivative is a function of its output
        (not gelu, swish or softmax); ``None`` is linear.
    use_bias : bool
    kernel_initializer, recurrent_initializer, bias_initializer : str, number or callable
        Defaults ``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``, as Keras.
    kernel_regularizer, recurrent_regularizer, bias_regularizer : optional ``fastnn.regularizers``
    return_sequences : bool
        Every step's output ``(N, T, units)`` instead of the last one ``(N, units)``.
    go_backwards : bool
        Run from the last time step to the first (a returned sequence is in that order).
    dropout, recurrent_dropout : float
        Only 0 (refused otherwise); ``return_state`` and ``stateful`` only False; ``unroll`` has no effect.
    """

    gates = 1

    def _run(self, ops, xw, hs, train):
        for t in range(xw.shape[0]):
            pre = ops.gemm(hs[t], self.recurrent_kernel, out=hs[t + 1])
            pre += xw[t]
            self._act(ops, pre, pre)

    def _bptt(self, ops, dout, dxw):
        hs, dh = self.hs, self._zeros(ops)
        for t in reversed(range(dxw.shape[0])):
            self._act_grad(ops, self._dh(dout, t, dh), hs[t + 1], out=dxw[t])
            dh = ops.gemm(dxw[t], self.recurrent_kernel, trans_b=True)
        self._recurrent_grad(ops, hs[:-1], dxw, self.drecurrent_kernel)


class _Gated(_Recurrent):
    """LSTM's and GRU's shared argument: ``recurrent_activation`` (the gates'; sigmoid by default)."""

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True, **kwargs):
        super().__init__(units, activation, use_bias, **kwargs)
        self.recurrent_activation = recurrent_activation
        self.ract, self.ralpha = self._activation("recurrent_activation", recurrent_activation)

    def _block(self, a, i, j=None):
        """Gate blocks ``i`` to ``j`` (default: ``i`` alone) of ``a``'s last axis."""
        u = self.units
        return a[..., i * u:(i + 1 if j is None else j) * u]

    def get_config(self):
        cfg = super().get_config()
        cfg["recurrent_activation"] = self.recurrent_activation
        return cfg


class LSTM(_Gated):
    """Keras's ``LSTM`` (Hochreiter & Schmidhuber 1997), gates i, f, c, o along the weights' columns::

        i, f, o = ract(z_i), ract(z_f), ract(z_o)     z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias
        c_t = f * c_{t-1} + i * act(z_c)               h_t = o * act(c_t),   h_0 = c_0 = 0

    ``unit_forget_bias=True`` (default, as Keras) starts the forget gate's bias at 1. The other
    arguments are ``SimpleRNN``'s, plus ``recurrent_activation`` (``"sigmoid"``).
    """

    gates = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True, *,
                 unit_forget_bias=True, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, **kwargs)
        self.unit_forget_bias = check_flag(self._who(), "unit_forget_bias", unit_forget_bias)
        self.cs = self.gate_values = self.act_c = None

    def _bias_initializer(self):
        return _ForgetBias(self.bias_initializer, self.units) if self.unit_forget_bias else super()._bias_initializer()

    def _run(self, ops, xw, hs, train):
        steps, n, k = xw.shape
        xp, dt = ops.xp, xw.dtype
        cs = self.cs = self._work(ops, "cs", hs.shape, dt, train)
        cs[0] = 0
        g = self.gate_values = self._work(ops, "gates", xw.shape, dt, train)
        ac = self.act_c = self._work(ops, "act_c", (steps, n, self.units), dt, train)
        pre = self._work(ops, "pre", (n, k), dt, train)
        block = self._block
        for t in range(steps):
            ops.gemm(hs[t], self.recurrent_kernel, out=pre)
            pre += xw[t]
            self._act(ops, block(pre, 0, 2), block(g[t], 0, 2), recurrent=True)
            self._act(ops, block(pre, 2), block(g[t], 2))
            self._act(ops, block(pre, 3), block(g[t], 3), recurrent=True)
            i, f, cc, o = (block(g[t], j) for j in range(4))
            xp.multiply(f, cs[t], out=cs[t + 1])
            cs[t + 1] += i * cc
            self._act(ops, cs[t + 1], ac[t])
            xp.multiply(o, ac[t], out=hs[t + 1])

    def _bptt(self, ops, dout, dxw):
        hs, cs, g, ac, block = self.hs, self.cs, self.gate_values, self.act_c, self._block
        dh, dc = self._zeros(ops), self._zeros(ops)
        for t in reversed(range(dxw.shape[0])):
            dh = self._dh(dout, t, dh)
            i, f, cc, o = (block(g[t], j) for j in range(4))
            dp = dxw[t]
            self._act_grad(ops, dh * ac[t], o, out=block(dp, 3), recurrent=True)
            dc = dc + self._act_grad(ops, dh * o, ac[t])
            self._act_grad(ops, dc * cc, i, out=block(dp, 0), recurrent=True)
            self._act_grad(ops, dc * cs[t], f, out=block(dp, 1), recurrent=True)
            self._act_grad(ops, dc * i, cc, out=block(dp, 2))
            dc = dc * f
            dh = ops.gemm(dp, self.recurrent_kernel, trans_b=True)
        self._recurrent_grad(ops, hs[:-1], dxw, self.drecurrent_kernel)

    def get_config(self):
        cfg = super().get_config()
        cfg["unit_forget_bias"] = self.unit_forget_bias
        return cfg


class GRU(_Gated):
    """Keras's ``GRU`` (Cho et al. 2014), gates z, r, h along the weights' columns::

        z, r = ract(x_z + h_{t-1} @ U_z + b_z), ract(x_r + h_{t-1} @ U_r + b_r)      x = x_t @ kernel + b_in
        hh = act(x_h + r * (h_{t-1} @ U_h + b_rh))            (reset_after=True, Keras 3's default)
        hh = act(x_h + (r * h_{t-1}) @ U_h)                    (reset_after=False)
        h_t = z * h_{t-1} + (1 - z) * hh,   h_0 = 0

    With ``reset_after=True`` the bias has shape ``(2, 3*units)``: row 0 is added to the projected
    input, row 1 to the projected state (Keras's layout); with ``reset_after=False`` it is one
    ``(3*units,)`` vector on the input side. The other arguments are ``LSTM``'s, less ``unit_forget_bias``.
    """

    gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True, *,
                 reset_after=True, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, **kwargs)
        self.reset_after = check_flag(self._who(), "reset_after", reset_after)
        self.gate_values = self.rec_h = None

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _input_bias(self, b):
        return b[0] if self.reset_after else b

    def _run(self, ops, xw, hs, train):
        steps, n, k = xw.shape
        dt, block, u = xw.dtype, self._block, self.units
        g = self.gate_values = self._work(ops, "gates", xw.shape, dt, train)
        # reset_after: h_{t-1} @ U_h + b_rh; else r * h_{t-1}: what the h block's gradients need
        rh = self.rec_h = self._work(ops, "rec_h", (steps, n, u), dt, train)
        U = self.recurrent_kernel
        rec = self._work(ops, "rec", (n, k), dt, train)
        for t in range(steps):
            if self.reset_after:
                ops.gemm(hs[t], U, out=rec)
                if self.use_bias:
                    ops.bias_act(rec, self.bias[1], LINEAR, out=rec)
            else:
                block(rec, 0, 2)[...] = ops.gemm(hs[t], block(U, 0, 2))
            self._act(ops, block(xw[t], 0, 2) + block(rec, 0, 2), block(g[t], 0, 2), recurrent=True)
            z, r, hh = (block(g[t], j) for j in range(3))
            if self.reset_after:
                rh[t] = block(rec, 2)
                pre_h = block(xw[t], 2) + r * rh[t]
            else:
                ops.xp.multiply(r, hs[t], out=rh[t])
                pre_h = block(xw[t], 2) + ops.gemm(rh[t], block(U, 2))
            self._act(ops, pre_h, hh)
            hs[t + 1] = hh + z * (hs[t] - hh)

    def _bptt(self, ops, dout, dxw):
        hs, g, rh, block = self.hs, self.gate_values, self.rec_h, self._block
        U, dU = self.recurrent_kernel, self.drecurrent_kernel
        # the gradient of h_{t-1} @ U (+ b_rh) at every step, where it differs from dxw's
        drec = self._work(ops, "drec", dxw.shape, dxw.dtype, self._train) if self.reset_after else None
        dh = self._zeros(ops)
        for t in reversed(range(dxw.shape[0])):
            dh = self._dh(dout, t, dh)
            z, r, hh = (block(g[t], j) for j in range(3))
            dp = dxw[t]
            self._act_grad(ops, dh * (hs[t] - hh), z, out=block(dp, 0), recurrent=True)
            dpre_h = self._act_grad(ops, dh - dh * z, hh, out=block(dp, 2))
            if self.reset_after:
                self._act_grad(ops, dpre_h * rh[t], r, out=block(dp, 1), recurrent=True)
                block(drec[t], 0, 2)[...] = block(dp, 0, 2)
                ops.xp.multiply(dpre_h, r, out=block(drec[t], 2))
                dh = dh * z + ops.gemm(drec[t], U, trans_b=True)
            else:
                drh = ops.gemm(dpre_h, block(U, 2), trans_b=True)
                self._act_grad(ops, drh * hs[t], r, out=block(dp, 1), recurrent=True)
                dh = dh * z + drh * r + ops.gemm(block(dp, 0, 2), block(U, 0, 2), trans_b=True)
        if self.reset_after:
            self._recurrent_grad(ops, hs[:-1], drec, dU)
            if self.use_bias:
                ops.bias_grad(drec.reshape(-1, drec.shape[-1]), out=self.dbias[1])
        else:
            flat = dxw.reshape(-1, dxw.shape[-1])
            block(dU, 0, 2)[...] = ops.gemm(hs[:-1].reshape(-1, self.units), block(flat, 0, 2), trans_a=True)
            block(dU, 2)[...] = ops.gemm(rh.reshape(-1, self.units), block(flat, 2), trans_a=True)

    def get_config(self):
        cfg = super().get_config()
        cfg["reset_after"] = self.reset_after
        return cfg
