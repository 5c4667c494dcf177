"""``fastnn.warmup()``: compile (or load from Numba's cache) every fused kernel ahead of time.

Numba compiles a kernel at its first call for each combination of argument types. Training calls
them in its first step, which then takes a second or two on a cold cache; ``warmup()`` moves that
cost to a moment of your choosing (and, with ``cache=True``, fills the on-disk cache for later
processes). On the NumPy backend it does nothing worth measuring; on CuPy it compiles the CUDA modules.
"""
from __future__ import annotations

import time

import numpy

from fastnn.kernels import ACTIVATIONS, NEEDS_Z


def _calls(ops, dtype):
    """One small call of every hot primitive in ``dtype``."""
    rng = numpy.random.default_rng(0)
    dt = numpy.dtype(dtype)

    def arr(*shape):
        return ops.asarray((rng.standard_normal(shape) + 0.1).astype(dt))

    x, b = arr(4, 3), arr(3)
    idx = ops.asarray(numpy.array([0, 2, 1, 1]))
    onehot = ops.asarray(numpy.eye(3, dtype=dt)[[0, 2, 1, 1]])
    for code in ACTIVATIONS.values():  # gelu and swish keep the pre-activation z for backward
        z = ops.xp.empty_like(x) if code in NEEDS_Z else None
        y = ops.bias_act(x, b, code, 0.1, out=ops.xp.empty_like(x), z_out=z)
        ops.bias_act(x, None, code, 0.1)
        ops.act_backward(x, y, code, 0.1, out=ops.xp.empty_like(x), z=z)
        ops.act_backward_bias_grad(x, y, code, 0.1, out=ops.xp.empty_like(x), db=ops.xp.empty_like(b), z=z)
    ops.bias_grad(x, out=ops.xp.empty_like(b))
    ops.softmax(x, out=ops.xp.empty_like(x))
    for t in (idx, onehot):
        probs = ops.xp.empty_like(x)
        ops.softmax_xent(x, t, y=probs, dx=ops.xp.empty_like(x))
        ops.softmax_xent(x, t)
        ops.softmax_xent_backward(probs, t, 1.0, out=ops.xp.empty_like(x))
    ops.sigmoid_bce(x, ops.asarray(rng.random((4, 3)).astype(dt)), y=ops.xp.empty_like(x), dx=ops.xp.empty_like(x))
    ops.mse(x, arr(4, 3), 0.5, dx=ops.xp.empty_like(x))
    mask = ops.dropout_mask((4, 3), 0.5, 1, 2, 0, dtype=dt, out=ops.xp.empty_like(x))
    ops.mul(x, mask, out=ops.xp.empty_like(x))
    gamma, beta, rm, rv = arr(3), arr(3), ops.alloc((3,), dt), ops.alloc((3,), dt) + 1
    for train in (True, False):
        y, xhat, inv_std = ops.batchnorm_forward(x, gamma, beta, rm, rv, 0.9, 1e-5, train, out=ops.xp.empty_like(x))
    ops.batchnorm_backward(x, xhat, inv_std, gamma, dx=ops.xp.empty_like(x), dgamma=ops.xp.empty_like(b),
                           dbeta=ops.xp.empty_like(b))
    p, g = arr(10), arr(10)
    ops.sq_norm(g)
    ops.sgd_step(p, g, 0.1, 0.01, 1.0)
    for nesterov in (False, True):
        ops.momentum_step(p, g, ops.alloc((10,), dt), 0.1, 0.9, 0.01, 1.0, nesterov)
    ops.adagrad_step(p, g, ops.alloc((10,), dt), 0.1, 1e-7, 0.0, 1.0)
    ops.rmsprop_step(p, g, ops.alloc((10,), dt), 0.1, 0.9, 1e-7, 0.0, 1.0)
    for decoupled in (False, True):
        ops.adam_step(p, g, ops.alloc((10,), dt), ops.alloc((10,), dt), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0, decoupled)
    slot = lambda: ops.alloc((10,), dt)  # noqa: E731
    for decoupled in (False, True):
        ops.amsgrad_step(p, g, slot(), slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0, decoupled)
    ops.nadam_step(p, g, slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.9, 0.01, 1.0)
    ops.adamax_step(p, g, slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0)
    clip = 0.5  # clipvalue: the kernels' variants that clip each gradient element
    ops.sgd_step(p, g, 0.1, 0.01, 1.0, clip)
    for nesterov in (False, True):
        ops.momentum_step(p, g, slot(), 0.1, 0.9, 0.01, 1.0, nesterov, clip)
    ops.adagrad_step(p, g, slot(), 0.1, 1e-7, 0.0, 1.0, clip)
    ops.rmsprop_step(p, g, slot(), 0.1, 0.9, 1e-7, 0.0, 1.0, clip)
    for decoupled in (False, True):
        ops.adam_step(p, g, slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0, decoupled, clip)
        ops.amsgrad_step(p, g, slot(), slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0, decoupled, clip)
    ops.nadam_step(p, g, slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.9, 0.01, 1.0, clip)
    ops.adamax_step(p, g, slot(), slot(), 0.1, 0.9, 0.999, 1e-7, 1, 0.01, 1.0, clip)
    img = arr(2, 3, 5, 5)
    col = ops.im2col(img, 3, 3, 1, 1)
    ops.col2im(col, img.shape, 3, 3, 1, 1)
    colT = ops.im2col_t(img, 3, 3, 1, 1)
    ops.col2im_t(colT, img.shape, 3, 3, 1, 1)
    pooled, argmax = ops.maxpool_forward(img, 2, 2, 2, 0)
    ops.maxpool_backward(pooled, argmax, img.shape)
    cb, z = arr(3), arr(3, 2, 5, 5)  # the convolution's GEMM result is channel-major (C, N, H, W)
    for code in ACTIVATIONS.values():  # its fused bias+activation into NCHW, and the way back
        zb = ops.xp.empty_like(z) if code in NEEDS_Z else None
        for bias in (cb, None):
            y = ops.conv_bias_act(z, bias, code, 0.1, out=ops.xp.empty_like(img), z_out=zb)
            ops.conv_act_backward(y, y, code, 0.1, out=ops.xp.empty_like(z), db=ops.xp.empty_like(cb), z=zb)
        ops.conv_bias_act(z, cb, code, 0.1)
        ops.conv_act_backward(y, y, code, 0.1, z=zb)


def warmup(backend=None, dtypes=("float32", "float64")):
    """Compile every fused kernel of ``backend`` (default: the active one) for ``dtypes``.

    Returns the seconds it took. Safe to call more than once (later calls are fast).
    """
    from fastnn.backend import current, get_ops

    ops = current() if backend is None else get_ops(backend)
    start = time.perf_counter()
    for dtype in dtypes:
        _calls(ops, dtype)
        _compiled_step(ops, dtype)
    ops.synchronize()
    return time.perf_counter() - start


def _compiled_step(ops, dtype):
    """A tiny ``fit`` through the backend's compiled training step (``Ops.train_plan``), where it has
    one: that compiles the step itself and the kernel variants it calls."""
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential
    from fastnn.training.fused_plan import train_plan

    rng = numpy.random.default_rng(0)
    model = Sequential([Dense(4, activation="relu", input_shape=(5,)), Dropout(0.5), Dense(3, activation="softmax")],
                       dtype=dtype, seed=0, backend=ops.name)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build()
    if train_plan(model, 4)[0] is not None:
        model.fit(rng.random((6, 5)).astype(dtype), numpy.arange(6) % 3, batch_size=4, epochs=1, verbose=0)
