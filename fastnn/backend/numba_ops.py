"""``NumbaOps``: NumPy arrays, with hot primitives from the Numba kernels in ``fastnn.kernels.cpu``.

GEMMs stay on BLAS through NumPy (already multi-threaded); the fused elementwise, reduction and
optimizer kernels are serial ``@njit(cache=True, error_model="numpy")`` functions. Each method
here is a thin wrapper: it casts scalars to the arrays' dtype, hands the kernel C-contiguous views
(copying only inputs that are not contiguous), and writes straight into the caller's buffers.
Cases the kernels do not cover (other dtypes, mixed dtypes, broadcasting, empty arrays) go to
the ``Ops`` reference, so every call still meets the contract. Under ``FASTNN_STRICT_KERNELS=1``
(set by the test suite) such a fallback raises ``KernelFallbackError`` unless the test declares it
(``fastnn.testing.allow_fallback()`` or ``@pytest.mark.allow_fallback``), so a kernel that is never
reached fails its test.
"""
from __future__ import annotations

import math

import numpy

from fastnn.backend.numba_args import (
    _FLOATS, _NO_BIAS, _NONE2D, _2d, _adam_args, _c, _check_act, _clip_arg, _decay_args, _fast, _finish,
    _flush_args, _inplace, _step_args, _target, _write_back,
)
from fastnn.backend.ops import Ops, _limit_in, conv_geometry, pool_geometry, require_z
from fastnn.backend.ops_optim import nadam_coefficients
from fastnn.kernels import LINEAR, NEEDS_Z, SIGMOID, TANH, dropout_base
from fastnn.kernels.cpu import activations as _ka
from fastnn.kernels.cpu import checks as _kk
from fastnn.kernels.cpu import conv as _kc
from fastnn.kernels.cpu import dropout as _kd
from fastnn.kernels.cpu import losses as _kl
from fastnn.kernels.cpu import normalization as _kn
from fastnn.kernels.cpu import optimizers as _ko


def _tanh_family(x, b, act, out):
    """``out = tanh(x + b)`` or ``sigmoid(x + b)`` (as ``0.5 tanh(0.5 z) + 0.5``, the reference's formula,
    bit for bit) through NumPy's vectorised ``tanh``: on x86 its SIMD loop is 10-40x faster than a
    compiled loop calling the C library's scalar ``tanh`` (float32, 1024x512: 0.24 ms against 9.5 ms).
    ``LINEAR`` is the add (or copy) alone: one SIMD pass, without a kernel call's argument checks
    (about 2 us, as long as the whole add for a book-sized batch)."""
    if b is None:
        numpy.copyto(out, x)
    else:
        numpy.add(x, b, out=out)
    if act == LINEAR:
        return
    if act == SIGMOID:
        half = out.dtype.type(0.5)
        out *= half
        numpy.tanh(out, out=out)
        out *= half
        out += half
    else:
        numpy.tanh(out, out=out)


class NumbaOps(Ops):
    name = "numba"
    # FASTNN_STRICT_KERNELS=1 (the test suite): a fallback below (super().<name>) raises instead
    # of running, unless the test allows it (fastnn.testing.allow_fallback); see fastnn.backend.ops.
    reference_is_fallback = True

    def train_plan(self, spec, batch_size):
        from fastnn.backend.numba_fused import FusedPlan, unsupported_reason

        reason = unsupported_reason(spec)
        return (None, reason) if reason is not None else (FusedPlan(spec, batch_size), None)

    # ------------------------------------------------------------------ activations
    # A NEEDS_Z code (gelu, gelu_tanh, swish) takes its derivative from the pre-activation z: the
    # *_z kernels. Every other code runs the plain kernels exactly as before (z_out=/z= unused).
    def first_beyond(self, a, limit):
        # one vectorised pass over C-contiguous float data, no temporary bool array (kernels/cpu/checks.py)
        if a.dtype in _FLOATS and a.flags.c_contiguous:
            return int(_kk.first_beyond(a.reshape(-1), _limit_in(a.dtype, limit)))
        return super().first_beyond(a, limit)

    def bias_act(self, x, b, act, alpha=0.0, *, out=None, z_out=None):
        if not ((_fast(x) if b is None else _fast(x, b) and b.ndim == 1 and x.ndim >= 1
                 and b.shape[0] == x.shape[-1]) and (z_out is None or _fast(x, z_out) and z_out.shape == x.shape)):
            return super().bias_act(x, b, act, alpha, out=out, z_out=z_out)
        act = _check_act(act)
        dt = x.dtype.type
        buf, back = _target(out, x.shape, x.dtype)
        bias = _NO_BIAS[x.dtype] if b is None else _c(b)
        if z_out is None and act in (TANH, SIGMOID, LINEAR):
            _tanh_family(x, b, act, buf)
        elif z_out is None:
            _ka.bias_act(_2d(_c(x)), bias, b is not None, act, dt(alpha), dt(1), _2d(buf))
        else:
            zbuf, zback = _target(z_out, x.shape, x.dtype)
            _ka.bias_act_z(_2d(_c(x)), bias, b is not None, act, dt(alpha), dt(1), _2d(buf), _2d(zbuf))
            _finish(zbuf, zback)
        return _finish(buf, back)

    def act_backward(self, dout, y, act, alpha=0.0, *, out=None, z=None):
        if act in NEEDS_Z:
            z = require_z("act_backward", act, z)
            if not (_fast(dout, z) and dout.shape == z.shape):
                return super().act_backward(dout, y, act, alpha, out=out, z=z)
            buf, back = _target(out, z.shape, z.dtype)
            _ka.act_backward_z(_2d(_c(dout)), _2d(_c(z)), int(act), z.dtype.type(1), _2d(buf))
            return _finish(buf, back)
        if not (_fast(dout, y) and dout.shape == y.shape):
            return super().act_backward(dout, y, act, alpha, out=out, z=z)
        act = _check_act(act)
        dt = y.dtype.type
        buf, back = _target(out, y.shape, y.dtype)
        _ka.act_backward(_2d(_c(dout)), _2d(_c(y)), act, dt(alpha), dt(1), _2d(buf))
        return _finish(buf, back)

    def bias_grad(self, dz, *, out=None):
        if not (_fast(dz) and dz.ndim == 2):
            return super().bias_grad(dz, out=out)
        buf, back = _target(out, dz.shape[1:], dz.dtype)
        _ka.bias_grad(_c(dz), buf)
        return _finish(buf, back)

    def act_backward_bias_grad(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        g = require_z("act_backward_bias_grad", act, z) if act in NEEDS_Z else y  # what act' reads
        if not (_fast(dout, g) and dout.shape == g.shape and g.ndim == 2):
            return super().act_backward_bias_grad(dout, y, act, alpha, out=out, db=db, z=z)
        act = _check_act(act)
        dt = g.dtype.type
        buf, back = _target(out, g.shape, g.dtype)
        dbuf, dback = _target(db, g.shape[1:], g.dtype)
        if g is y:
            _ka.act_backward_bias_grad(_c(dout), _c(y), act, dt(alpha), dt(1), buf, dbuf)
        else:
            _ka.act_backward_z_bias_grad(_c(dout), _c(g), act, dt(1), buf, dbuf)
        _finish(dbuf, dback)
        return _finish(buf, back)

    # ------------------------------------------------------------------ dropout
    def dropout_mask(self, shape, rate, seed, step, row0=0, *, dtype=numpy.float32, out=None):
        n, d = shape
        dtype = numpy.dtype(dtype)
        if dtype not in _FLOATS or n * d == 0 or (out is not None and not isinstance(out, numpy.ndarray)):
            return super().dropout_mask(shape, rate, seed, step, row0, dtype=dtype, out=out)
        scale = dtype.type(1.0 / (1.0 - rate))  # as the reference (raises for rate == 1)
        rate = float(rate)
        # u = k * 2^-24 >= rate  <=>  k >= ceil(rate * 2^24): the same test on the integer k
        if rate != rate or rate > 1.0:
            keep_from = 1 << 25  # nothing is kept
        else:
            keep_from = max(0, math.ceil(rate * (1 << 24)))
        buf, back = _target(out, (n, d), dtype)
        _kd.dropout_mask(int(row0), numpy.uint64(dropout_base(seed, step)), numpy.uint64(keep_from),
                         scale, dtype.type(0), buf)
        return _finish(buf, back)

    def mul(self, x, y, *, out=None):
        if not (_fast(x, y) and x.shape == y.shape):
            return super().mul(x, y, out=out)
        buf, back = _target(out, x.shape, x.dtype)
        _ka.mul(_c(x).reshape(-1), _c(y).reshape(-1), buf.reshape(-1))
        return _finish(buf, back)

    # ------------------------------------------------------------------ softmax and losses
    def softmax(self, x, *, out=None):
        if not _fast(x):
            return super().softmax(x, out=out)
        buf, back = _target(out, x.shape, x.dtype)
        _ka.softmax(_2d(_c(x)), x.dtype.type(1), _2d(buf))
        return _finish(buf, back)

    def softmax_xent(self, x, t, *, y=None, dx=None):
        if not (_fast(x) and x.ndim == 2 and isinstance(t, numpy.ndarray)
                and (t.shape == x.shape or t.shape == x.shape[:1])):
            return super().softmax_xent(x, t, y=y, dx=dx)
        dt = x.dtype.type
        none = _NONE2D[x.dtype]
        ybuf, yback = _target(y, x.shape, x.dtype) if y is not None else (none, None)
        dbuf, dback = _target(dx, x.shape, x.dtype) if dx is not None else (none, None)
        if t.ndim == 1:
            kernel, t = _kl.softmax_xent_index, _c(t.astype(numpy.int64, copy=False))
        else:
            kernel, t = _kl.softmax_xent_onehot, _c(t.astype(x.dtype, copy=False))
        loss = kernel(_c(x), t, ybuf, dbuf, y is not None, dx is not None, dt(1), dt(x.shape[0]))
        _finish(ybuf, yback)
        _finish(dbuf, dback)
        return numpy.asarray(loss, dtype=x.dtype)

    def softmax_xent_backward(self, y, t, dout=1.0, *, out=None):
        if not (_fast(y) and y.ndim == 2 and isinstance(t, numpy.ndarray)
                and (t.shape == y.shape or t.shape == y.shape[:1])):
            return super().softmax_xent_backward(y, t, dout, out=out)
        dt = y.dtype.type
        s = dt(dout) / dt(y.shape[0])
        buf, back = _target(out, y.shape, y.dtype)
        if t.ndim == 1:
            _kl.softmax_xent_backward_index(_c(y), _c(t.astype(numpy.int64, copy=False)), s, dt(1), buf)
        else:
            _kl.softmax_xent_backward_onehot(_c(y), _c(t.astype(y.dtype, copy=False)), s, buf)
        return _finish(buf, back)

    def sigmoid_bce(self, x, t, *, y=None, dx=None):
        if not (_fast(x) and isinstance(t, numpy.ndarray) and t.shape == x.shape):
            return super().sigmoid_bce(x, t, y=y, dx=dx)
        dt = x.dtype.type
        none = _NONE2D[x.dtype].reshape(-1)
        ybuf, yback = _target(y, x.shape, x.dtype) if y is not None else (none, None)
        dbuf, dback = _target(dx, x.shape, x.dtype) if dx is not None else (none, None)
        loss = _kl.sigmoid_bce(_c(x).reshape(-1), _c(t.astype(x.dtype, copy=False)).reshape(-1),
                               ybuf.reshape(-1), dbuf.reshape(-1), y is not None, dx is not None,
                               dt(1), dt(x.size))
        _finish(ybuf, yback)
        _finish(dbuf, dback)
        return numpy.asarray(loss, dtype=x.dtype)

    def mse(self, y, t, scale, *, dx=None):
        if not (_fast(y) and isinstance(t, numpy.ndarray) and t.shape == y.shape):
            return super().mse(y, t, scale, dx=dx)
        s = y.dtype.type(scale)
        none = _NONE2D[y.dtype].reshape(-1)
        dbuf, dback = _target(dx, y.shape, y.dtype) if dx is not None else (none, None)
        loss = _kl.mse(_c(y).reshape(-1), _c(t.astype(y.dtype, copy=False)).reshape(-1), s, 2 * s,
                       y.dtype.type(0), dbuf.reshape(-1), dx is not None)
        _finish(dbuf, dback)
        return numpy.asarray(loss, dtype=y.dtype)

    # ------------------------------------------------------------------ batch normalization
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps, train,
                          *, out=None):
        if not (_fast(x, gamma, beta, running_mean, running_var) and x.ndim == 2
                and gamma.shape == beta.shape == running_mean.shape == running_var.shape
                == x.shape[1:]):
            return super().batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum,
                                             eps, train, out=out)
        dt = x.dtype.type
        n, d = x.shape
        buf, back = _target(out, x.shape, x.dtype)
        xhat = numpy.empty(x.shape, x.dtype)
        inv_std = numpy.empty(d, x.dtype)
        mu = numpy.empty(d, x.dtype)
        var = numpy.empty(d, x.dtype)
        rmean, rmean_back = _inplace(running_mean)
        rvar, rvar_back = _inplace(running_var)
        _kn.batchnorm_forward(_c(x), _c(gamma), _c(beta), rmean, rvar, dt(momentum), dt(1 - momentum),
                              dt(eps), bool(train), dt(n), dt(1), mu, var, buf, xhat, inv_std)
        if train:
            _write_back(rmean, rmean_back)
            _write_back(rvar, rvar_back)
        return _finish(buf, back), xhat, inv_std

    def batchnorm_backward(self, dout, xhat, inv_std, gamma, *, dx=None, dgamma=None, dbeta=None):
        if not (_fast(dout, xhat, inv_std, gamma) and dout.ndim == 2 and xhat.shape == dout.shape
                and inv_std.shape == gamma.shape == dout.shape[1:]):
            return super().batchnorm_backward(dout, xhat, inv_std, gamma, dx=dx, dgamma=dgamma,
                                              dbeta=dbeta)
        dt = dout.dtype.type
        n, d = dout.shape
        buf, back = _target(dx, dout.shape, dout.dtype)
        gbuf, gback = _target(dgamma, (d,), dout.dtype)
        bbuf, bback = _target(dbeta, (d,), dout.dtype)
        work = numpy.empty((3, d), dout.dtype)
        _kn.batchnorm_backward(_c(dout), _c(xhat), _c(inv_std), _c(gamma), dt(n), dt(0),
                               work[0], work[1], work[2], buf, gbuf, bbuf)
        if dgamma is not None:
            _finish(gbuf, gback)
        if dbeta is not None:
            _finish(bbuf, bback)
        return _finish(buf, back)

    # ------------------------------------------------------------------ convolution and pooling (NCHW)
    def im2col(self, x, fh, fw, stride=1, pad=0, *, out=None):
        return self._im2col("im2col", x, fh, fw, stride, pad, out, transposed=False)

    def col2im(self, col, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        return self._col2im("col2im", col, x_shape, fh, fw, stride, pad, out, transposed=False)

    def im2col_t(self, x, fh, fw, stride=1, pad=0, *, out=None):
        return self._im2col("im2col_t", x, fh, fw, stride, pad, out, transposed=True)

    def col2im_t(self, colT, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        return self._col2im("col2im_t", colT, x_shape, fh, fw, stride, pad, out, transposed=True)

    def _im2col(self, name, x, fh, fw, stride, pad, out, transposed):
        """``im2col`` (rows ``(n, oy, ox)``) or, when ``transposed``, ``im2col_t`` (rows ``(c, ky, kx)``)."""
        if not (_fast(x) and x.ndim == 4):
            return getattr(super(), name)(x, fh, fw, stride, pad, out=out)
        oh, ow, sh, sw, pt, _, pl, _ = conv_geometry(x.shape, fh, fw, stride, pad, name)
        n, c = x.shape[:2]
        shape = (n * oh * ow, c * int(fh) * int(fw))
        buf, back = _target(out, shape[::-1] if transposed else shape, x.dtype)
        getattr(_kc, name)(_c(x), int(fh), int(fw), sh, sw, pt, pl, oh, ow, buf)
        return _finish(buf, back)

    def _col2im(self, name, col, x_shape, fh, fw, stride, pad, out, transposed):
        """The adjoint of ``_im2col`` with the same ``transposed``."""
        if not (_fast(col) and col.ndim == 2 and len(x_shape) == 4):
            return getattr(super(), name)(col, x_shape, fh, fw, stride, pad, out=out)
        x_shape = tuple(int(s) for s in x_shape)
        oh, ow, sh, sw, pt, _, pl, _ = conv_geometry(x_shape, fh, fw, stride, pad, name)
        n, c = x_shape[:2]
        expected = (n * oh * ow, c * int(fh) * int(fw))
        expected = expected[::-1] if transposed else expected
        if col.shape != expected:
            raise ValueError(f"{name}: expected {'colT' if transposed else 'col'} of shape {expected} for x of "
                             f"shape {x_shape}, got {tuple(col.shape)}")
        buf, back = _target(out, x_shape, col.dtype)
        getattr(_kc, name)(_c(col), int(fh), int(fw), sh, sw, pt, pl, oh, ow, buf)
        return _finish(buf, back)

    def maxpool_forward(self, x, ph, pw, stride=1, pad=0, *, out=None, argmax=None):
        if not (_fast(x) and x.ndim == 4):
            return super().maxpool_forward(x, ph, pw, stride, pad, out=out, argmax=argmax)
        oh, ow, sh, sw, pt, _, pl, _ = pool_geometry(x.shape, ph, pw, stride, pad, "maxpool_forward")
        shape = x.shape[:2] + (oh, ow)
        buf, back = _target(out, shape, x.dtype)
        ibuf, iback = _target(argmax, shape, numpy.dtype(numpy.int64))
        _kc.maxpool_forward(_c(x), int(ph), int(pw), sh, sw, pt, pl, oh, ow, x.dtype.type(-numpy.inf), buf, ibuf)
        return _finish(buf, back), _finish(ibuf, iback)

    def maxpool_backward(self, dout, argmax, x_shape, *, out=None):
        if not (_fast(dout) and dout.ndim == 4 and isinstance(argmax, numpy.ndarray)
                and argmax.shape == dout.shape and argmax.dtype.kind in "iu" and len(x_shape) == 4
                and tuple(dout.shape[:2]) == tuple(int(s) for s in x_shape[:2])):
            return super().maxpool_backward(dout, argmax, x_shape, out=out)
        n, c, h, w = (int(s) for s in x_shape)
        buf, back = _target(out, (n, c, h, w), dout.dtype)
        bad = _kc.maxpool_backward(_c(dout).reshape(n * c, -1),
                                   _c(argmax.astype(numpy.int64, copy=False)).reshape(n * c, -1),
                                   buf.reshape(n * c, h * w))
        if bad:
            raise IndexError(f"maxpool_backward: {bad} argmax entries lie outside the {h}x{w} input plane; "
                             f"pass the argmax maxpool_forward returned")
        return _finish(buf, back)

    def conv_bias_act(self, z, b, act, alpha=0.0, *, out=None, z_out=None):
        if not ((_fast(z) if b is None else _fast(z, b) and b.shape == (z.shape[0],)) and z.ndim == 4
                and (z_out is None or _fast(z, z_out) and z_out.shape == z.shape)):
            return super().conv_bias_act(z, b, act, alpha, out=out, z_out=z_out)
        act = _check_act(act)
        dt = z.dtype.type
        c, n, h, w = z.shape
        buf, back = _target(out, (n, c, h, w), z.dtype)
        bias = _NO_BIAS[z.dtype] if b is None else _c(b)
        if z_out is None:
            _kc.conv_bias_act(_c(z).reshape(c, n, h * w), bias, b is not None, act, dt(alpha), dt(1),
                              buf.reshape(n, c, h * w))
        else:
            zbuf, zback = _target(z_out, z.shape, z.dtype)
            _kc.conv_bias_act_z(_c(z).reshape(c, n, h * w), bias, b is not None, act, dt(alpha), dt(1),
                                buf.reshape(n, c, h * w), zbuf.reshape(c, n, h * w))
            _finish(zbuf, zback)
        return _finish(buf, back)

    def conv_act_backward(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        needs_z = act in NEEDS_Z
        if needs_z:
            z = require_z("conv_act_backward", act, z)
        if not (_fast(dout, y) and dout.shape == y.shape and y.ndim == 4
                and (not needs_z or _fast(y, z) and z.shape == (y.shape[1], y.shape[0]) + y.shape[2:])):
            return super().conv_act_backward(dout, y, act, alpha, out=out, db=db, z=z)
        act = _check_act(act)
        dt = y.dtype.type
        n, c, h, w = y.shape
        buf, back = _target(out, (c, n, h, w), y.dtype)
        dbuf, dback = _target(db, (c,), y.dtype) if db is not None else (_NO_BIAS[y.dtype], None)
        if needs_z:
            _kc.conv_act_backward_z(_c(dout).reshape(n, c, h * w), _c(z).reshape(c, n, h * w), act, dt(1),
                                    buf.reshape(c, n, h * w), db is not None, dbuf)
        else:
            _kc.conv_act_backward(_c(dout).reshape(n, c, h * w), _c(y).reshape(n, c, h * w), act, dt(alpha),
                                  dt(1), buf.reshape(c, n, h * w), db is not None, dbuf)
        if db is not None:
            _finish(dbuf, dback)
        return _finish(buf, back)

    # ------------------------------------------------------------------ optimizers (flat buffers)
    def sq_norm(self, x):
        if not _fast(x):
            return super().sq_norm(x)
        return numpy.asarray(_ko.sq_norm(_c(x).reshape(-1), x.dtype.type(0)), dtype=x.dtype)

    def sgd_step(self, p, g, lr, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        if not (_fast(p, g) and p.shape == g.shape):
            return super().sgd_step(p, g, lr, weight_decay, scale, clipvalue)
        pf, pb = _inplace(p)
        _ko.sgd_step(pf, _c(g).reshape(-1), p.dtype.type(lr), *_step_args(p, weight_decay, scale),
                     *_clip_arg(p, clipvalue))
        _write_back(pf, pb)

    def momentum_step(self, p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=math.inf):
        if not (_fast(p, g, v) and p.shape == g.shape == v.shape):
            return super().momentum_step(p, g, v, lr, momentum, weight_decay, scale, nesterov, clipvalue)
        dt = p.dtype.type
        (pf, pb), (vf, vb) = _inplace(p), _inplace(v)
        _ko.momentum_step(pf, _c(g).reshape(-1), vf, dt(lr), dt(momentum),
                          *_step_args(p, weight_decay, scale), bool(nesterov),
                          *_flush_args(p), *_clip_arg(p, clipvalue))
        _write_back(pf, pb)
        _write_back(vf, vb)

    def adagrad_step(self, p, g, h, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        if not (_fast(p, g, h) and p.shape == g.shape == h.shape):
            return super().adagrad_step(p, g, h, lr, eps, weight_decay, scale, clipvalue)
        dt = p.dtype.type
        (pf, pb), (hf, hb) = _inplace(p), _inplace(h)
        _ko.adagrad_step(pf, _c(g).reshape(-1), hf, dt(lr), dt(eps),
                         *_decay_args(p, lr, weight_decay, scale), *_flush_args(p),
                         *_clip_arg(p, clipvalue))
        _write_back(pf, pb)
        _write_back(hf, hb)

    def rmsprop_step(self, p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        if not (_fast(p, g, h) and p.shape == g.shape == h.shape):
            return super().rmsprop_step(p, g, h, lr, rho, eps, weight_decay, scale, clipvalue)
        dt = p.dtype.type
        (pf, pb), (hf, hb) = _inplace(p), _inplace(h)
        _ko.rmsprop_step(pf, _c(g).reshape(-1), hf, dt(lr), dt(rho), dt(1 - rho), dt(eps),
                         *_decay_args(p, lr, weight_decay, scale), *_flush_args(p),
                         *_clip_arg(p, clipvalue))
        _write_back(pf, pb)
        _write_back(hf, hb)

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                  decoupled=False, clipvalue=math.inf):
        if not (_fast(p, g, m, v) and p.shape == g.shape == m.shape == v.shape):
            return super().adam_step(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, scale,
                                     decoupled, clipvalue)
        (pf, pb), (mf, mb), (vf, vb) = _inplace(p), _inplace(m), _inplace(v)
        _ko.adam_step(pf, _c(g).reshape(-1), mf, vf,
                      *_adam_args(p, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue))
        _write_back(pf, pb)
        _write_back(mf, mb)
        _write_back(vf, vb)

    def amsgrad_step(self, p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                     decoupled=False, clipvalue=math.inf):
        if not (_fast(p, g, m, v, v_hat) and p.shape == g.shape == m.shape == v.shape == v_hat.shape):
            return super().amsgrad_step(p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay, scale,
                                        decoupled, clipvalue)
        (pf, pb), (mf, mb), (vf, vb), (hf, hb) = _inplace(p), _inplace(m), _inplace(v), _inplace(v_hat)
        _ko.amsgrad_step(pf, _c(g).reshape(-1), mf, vf, hf,
                         *_adam_args(p, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue))
        for flat, back in ((pf, pb), (mf, mb), (vf, vb), (hf, hb)):
            _write_back(flat, back)

    def nadam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0,
                   clipvalue=math.inf):
        if not (_fast(p, g, m, v) and p.shape == g.shape == m.shape == v.shape):
            return super().nadam_step(p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay, scale,
                                      clipvalue)
        dt = p.dtype.type
        c_m, c_g, inv_sqrt_bc2 = nadam_coefficients(lr, beta1, beta2, t, mu_product)
        (pf, pb), (mf, mb), (vf, vb) = _inplace(p), _inplace(m), _inplace(v)
        _ko.nadam_step(pf, _c(g).reshape(-1), mf, vf, dt(c_m), dt(c_g), dt(beta1), dt(1 - beta1), dt(beta2),
                       dt(1 - beta2), dt(eps), dt(inv_sqrt_bc2), *_decay_args(p, lr, weight_decay, scale),
                       *_flush_args(p), *_clip_arg(p, clipvalue))
        for flat, back in ((pf, pb), (mf, mb), (vf, vb)):
            _write_back(flat, back)

    def adamax_step(self, p, g, m, u, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=math.inf):
        if not (_fast(p, g, m, u) and p.shape == g.shape == m.shape == u.shape):
            return super().adamax_step(p, g, m, u, lr, beta1, beta2, eps, t, weight_decay, scale, clipvalue)
        dt = p.dtype.type
        (pf, pb), (mf, mb), (uf, ub) = _inplace(p), _inplace(m), _inplace(u)
        _ko.adamax_step(pf, _c(g).reshape(-1), mf, uf, dt(lr / (1.0 - beta1 ** t)), dt(beta1), dt(1 - beta1),
                        dt(beta2), dt(eps), *_decay_args(p, lr, weight_decay, scale), *_flush_args(p),
                        *_clip_arg(p, clipvalue))
        for flat, back in ((pf, pb), (mf, mb), (uf, ub)):
            _write_back(flat, back)
