"""Fused MLP training steps for the numba backend: ``train_steps`` runs K whole
steps (gather, forward, loss, metric, backward, optimizer) in one compiled call, no Python between
kernels.

One ``@njit(cache=True)`` function serves every architecture: the model is data, not code. It
arrives as small tables (``net``: one int64 row per layer; ``netf``: that layer's dtype scalars;
``cfg``: loss, metric, optimizer and workspace offsets) plus offsets into the model's flat parameter
and gradient buffers, so a warm kernel cache means no compile for a new model. Every elementwise
piece is the existing kernel (``activations``, ``dropout``, ``losses``, ``optimizers``) called from
here, with the same arguments ``NumbaOps`` passes, so results match the eager path bit for bit.

GEMMs: numpy's own CBLAS (the ``scipy_cblas_*64_`` symbols of the OpenBLAS that numpy's wheels
bundle), registered with LLVM under fixed names at import, and called with the same routine,
layout and leading dimensions that ``numpy.matmul`` picks for that shape (gemm, gemv, dot, or its
plain loop when the inner dimension is 1). That gives bit-identical products with the eager path
at any thread count, and keeps one BLAS thread pool in the process. Where those symbols are not
found (another numpy build), ``np.dot`` is used instead: Numba's, on SciPy's BLAS, which agrees
with numpy's only to rounding (``GEMM_BACKEND`` says which one is live).

The host side (``fastnn.backend.numba_fused.FusedPlan``) turns a model's plain description
(``fastnn.training.fused_plan.describe``) into the tables, or says why it cannot; ``fit`` uses it on
the numba backend.

Numba keys this file's on-disk cache on this file alone, while the kernels it inlines live in the
other files of ``kernels/cpu/``: a hash of all their sources, kept beside the cache, flushes this
file's cache when any of them changed, so an edited kernel is never replaced
by a stale inlined copy (``fastnn.kernels.cpu.flush_if_stale``).
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from numba import njit, types

from fastnn.kernels import HASH_K_SEED, HASH_K_STEP, LINEAR
from fastnn.kernels.cpu import activations as _ka
from fastnn.kernels.cpu import flush_if_stale
from fastnn.kernels.cpu import dropout as _kd
from fastnn.kernels.cpu import losses as _kl
from fastnn.kernels.cpu import optimizers as _ko

# ---------------------------------------------------------------------------------------- table layout
# net[i, :]: one row per layer that runs
DENSE, DROPOUT, ACT = 1, 2, 3
K_KIND, K_DIN, K_DOUT, K_W, K_B, K_ACT, K_Y, K_DZ, K_DX, K_MASK, K_KEEP, K_SEED = range(12)
NCOL = 12
# netf[i, :]: that layer's scalars, in the model's dtype
F_ALPHA, F_SCALE = 0, 1
# cfg[:]: the run's settings
C_LOSS, C_METRIC, C_OPT, C_NESTEROV, C_DECOUPLED, C_XB, C_TB, C_DL, C_BATCH, C_STEP0, C_ROW0, C_NB, C_NXB = range(13)
NCFG = 13
LOSS_XENT_INDEX, LOSS_XENT_ONEHOT, LOSS_BCE, LOSS_MSE = 0, 1, 2, 3
METRIC_NONE, METRIC_ARGMAX, METRIC_BINARY_LOGITS, METRIC_BINARY_PROBS = 0, 1, 2, 3
OPT_SGD, OPT_MOMENTUM, OPT_ADAGRAD, OPT_RMSPROP, OPT_ADAM = 0, 1, 2, 3, 4
NSCALARS = 9  # columns of the per-(step, piece) optimizer table ``sc`` (``optimizer_scalars``)

_ROW_MAJOR, _COL_MAJOR, _NO_TRANS, _TRANS = 101, 102, 111, 112


# ---------------------------------------------------------------------------------------- numpy's BLAS
def _numpy_blas_symbols():
    """``{name: address}`` of numpy's bundled ILP64 OpenBLAS CBLAS routines, or None (another build)."""
    root = os.path.dirname(os.path.abspath(np.__file__))
    candidates = glob.glob(os.path.join(root + ".libs", "*openblas64_*")) + \
        glob.glob(os.path.join(root, ".dylibs", "*openblas64_*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle, the same thread pool
        except OSError:
            continue
        for prefix in ("scipy_cblas_", "cblas_"):  # numpy >= 2 wheels; numpy 1.26's openblas64_
            try:
                return {name: ctypes.cast(getattr(lib, f"{prefix}{name}64_"), ctypes.c_void_p).value
                        for name in ("sgemm", "dgemm", "sgemv", "dgemv", "sdot", "ddot")}
            except AttributeError:
                continue
    return None


_I32, _I64, _VP = types.int32, types.int64, types.voidptr
_SIGS = {
    "sgemm": types.void(_I32, _I32, _I32, _I64, _I64, _I64, types.float32, _VP, _I64, _VP, _I64,
                        types.float32, _VP, _I64),
    "dgemm": types.void(_I32, _I32, _I32, _I64, _I64, _I64, types.float64, _VP, _I64, _VP, _I64,
                        types.float64, _VP, _I64),
    "sgemv": types.void(_I32, _I32, _I64, _I64, types.float32, _VP, _I64, _VP, _I64, types.float32, _VP, _I64),
    "dgemv": types.void(_I32, _I32, _I64, _I64, types.float64, _VP, _I64, _VP, _I64, types.float64, _VP, _I64),
    "sdot": types.float32(_I64, _VP, _I64, _VP, _I64),
    "ddot": types.float64(_I64, _VP, _I64, _VP, _I64),
}


def _gemm_stub(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    return None


def _gemv_stub(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy):
    return None


def _dot_stub(n, x, incx, y, incy):
    return 0.0


def _register_blas():
    """Give LLVM an address for each ``fastnn_cblas_*`` symbol, before any cached code links: numpy's
    routines, or never-called stubs when they are not found (``train_steps`` then runs with
    ``cfg[C_NB] = 0``). Returns the GEMM backend's name."""
    import llvmlite.binding as ll

    found = _numpy_blas_symbols()
    name = "numpy-openblas (cblas, as numpy.matmul calls it)"
    if found is None:
        from numba import cfunc

        stubs = {"gemm": _gemm_stub, "gemv": _gemv_stub, "dot": _dot_stub}
        found = {key: cfunc(sig)(stubs[key[1:]]).address for key, sig in _SIGS.items()}
        name = "numba np.dot (scipy's BLAS)"
    for key, addr in found.items():
        ll.add_symbol(f"fastnn_cblas_{key}", addr)
    return name


GEMM_BACKEND = _register_blas()
NUMPY_BLAS = GEMM_BACKEND.startswith("numpy")
_sgemm = types.ExternalFunction("fastnn_cblas_sgemm", _SIGS["sgemm"])
_dgemm = types.ExternalFunction("fastnn_cblas_dgemm", _SIGS["dgemm"])
_sgemv = types.ExternalFunction("fastnn_cblas_sgemv", _SIGS["sgemv"])
_dgemv = types.ExternalFunction("fastnn_cblas_dgemv", _SIGS["dgemv"])
_sdot = types.ExternalFunction("fastnn_cblas_sdot", _SIGS["sdot"])
_ddot = types.ExternalFunction("fastnn_cblas_ddot", _SIGS["ddot"])


@njit(cache=True, error_model="numpy")
def _blas_gemm(order, ta, tb, m, n, k, A, lda, B, ldb, C, ldc):
    if C.itemsize == 4:
        _sgemm(order, ta, tb, m, n, k, np.float32(1.0), A.ctypes, lda, B.ctypes, ldb, np.float32(0.0),
               C.ctypes, ldc)
    else:
        _dgemm(order, ta, tb, m, n, k, 1.0, A.ctypes, lda, B.ctypes, ldb, 0.0, C.ctypes, ldc)


@njit(cache=True, error_model="numpy")
def _blas_gemv(order, rows, cols, A, lda, x, incx, y, incy):
    if y.itemsize == 4:
        _sgemv(order, _TRANS, rows, cols, np.float32(1.0), A.ctypes, lda, x.ctypes, incx, np.float32(0.0),
               y.ctypes, incy)
    else:
        _dgemv(order, _TRANS, rows, cols, 1.0, A.ctypes, lda, x.ctypes, incx, 0.0, y.ctypes, incy)


@njit(cache=True, error_model="numpy")
def _blas_dot(k, a, inca, b, incb, out):
    if out.itemsize == 4:
        out[0, 0] = _sdot(k, a.ctypes, inca, b.ctypes, incb)
    else:
        out[0, 0] = _ddot(k, a.ctypes, inca, b.ctypes, incb)


@njit(cache=True, error_model="numpy")
def _outer_loop(a, ta, b, tb, out):
    """numpy's no-BLAS loop for an inner dimension of 1: ``out[i, j] = 0 + A[i, 0] * B[0, j]``
    (the ``0 +`` turns a product of -0.0 into +0.0, as numpy's loop and BLAS do)."""
    m, n = out.shape
    zero = out.dtype.type(0)
    for i in range(m):
        ai = a[0, i] if ta else a[i, 0]
        for j in range(n):
            bj = b[j, 0] if tb else b[0, j]
            acc = zero
            acc += ai * bj
            out[i, j] = acc


@njit(cache=True, error_model="numpy")
def _gemm(a, ta, b, tb, out, nb):
    """``out = op(a) @ op(b)`` (``op`` transposes when ``ta``/``tb``) on C-contiguous ``a``, ``b``,
    ``out``, through the routine ``numpy.matmul`` picks for the same shapes and strides (``nb``:
    numpy's CBLAS; else Numba's ``np.dot``)."""
    m, n = out.shape
    k = a.shape[0] if ta else a.shape[1]
    if not nb:
        if ta and tb:
            np.dot(a.T, b.T, out)
        elif ta:
            np.dot(a.T, b, out)
        elif tb:
            np.dot(a, b.T, out)
        else:
            np.dot(a, b, out)
        return
    # strides in elements of A = op(a) (m, k) and B = op(b) (k, n), as numpy's matmul sees them
    s1_m, s1_n = (1, m) if ta else (k, 1)
    s2_n, s2_p = (1, k) if tb else (n, 1)
    if m == 1 and n == 1:  # row @ column: numpy's FLOAT_dot (one cblas_sdot chunk)
        _blas_dot(k, a, s1_n, b, s2_n, out)
    elif k == 1:  # column @ row: numpy's plain loop
        _outer_loop(a, ta, b, tb, out)
    elif m == 1:  # vector @ matrix: gemv on B with the roles switched
        if s2_n == 1:  # B's rows are contiguous in memory as columns (B = b.T)
            _blas_gemv(_COL_MAJOR, k, n, b, s2_p, a, s1_n, out, 1)
        else:
            _blas_gemv(_ROW_MAJOR, k, n, b, s2_n, a, s1_n, out, 1)
    elif n == 1:  # matrix @ vector
        if s1_n == 1:
            _blas_gemv(_COL_MAJOR, k, m, a, s1_m, b, s2_n, out, n)
        else:
            _blas_gemv(_ROW_MAJOR, k, m, a, s1_n, b, s2_n, out, n)
    else:
        _blas_gemm(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, m, n, k,
                   a, s1_n if ta else s1_m, b, s2_p if tb else s2_n, out, n)


# ---------------------------------------------------------------------------------------- one step's parts
# dropout_base(seed, step) = mix64(seed * HASH_K_SEED + step * HASH_K_STEP), in wrapping uint64
_K_SEED = np.uint64(HASH_K_SEED)
_K_STEP = np.uint64(HASH_K_STEP)


@njit(cache=True, error_model="numpy")
def _view(buf, off, n, d):
    """Rows ``n`` x ``d`` of a flat buffer from ``off``: a C-contiguous 2-D view."""
    return buf[off:off + n * d].reshape((n, d))


@njit(cache=True, error_model="numpy")
def _copy_rows(x, order, lo, n, ws, base):
    """Rows ``order[lo:lo + n]`` of ``x`` into ``ws[base:]``, one after another. Row views copied four
    at a time: the loop vectorises and four rows' cache misses are in flight at once (a 128-row
    MNIST batch: 36 us against 97 us element by element, on a 2-core EPYC)."""
    d = x.shape[1]
    r = 0
    while r + 4 <= n:
        a0, a1, a2, a3 = x[order[lo + r]], x[order[lo + r + 1]], x[order[lo + r + 2]], x[order[lo + r + 3]]
        at = base + r * d
        b0, b1, b2, b3 = ws[at:at + d], ws[at + d:at + 2 * d], ws[at + 2 * d:at + 3 * d], ws[at + 3 * d:at + 4 * d]
        for j in range(d):
            b0[j] = a0[j]
            b1[j] = a1[j]
            b2[j] = a2[j]
            b3[j] = a3[j]
        r += 4
    while r < n:
        a0 = x[order[lo + r]]
        at = base + r * d
        b0 = ws[at:at + d]
        for j in range(d):
            b0[j] = a0[j]
        r += 1


@njit(cache=True, error_model="numpy")
def _consecutive(order, lo, n):
    """Whether ``order[lo:lo + n]`` are consecutive rows (an unshuffled epoch's batches)."""
    first = order[lo]
    for r in range(1, n):
        if order[lo + r] != first + r:
            return False
    return True


@njit(cache=True, error_model="numpy")
def _gather_targets(t_idx, t_dense, order, lo, n, loss, ws, tb, ti):
    """The batch's labels: into ``ti`` (class indices) or ``ws[tb:]`` (dense targets)."""
    if loss == LOSS_XENT_INDEX:
        for r in range(n):
            ti[r] = t_idx[order[lo + r]]
    else:
        _copy_rows(t_dense, order, lo, n, ws, tb)


@njit(cache=True, error_model="numpy")
def _input(net, ws, src, so, i, n):
    """Layer ``i``'s input, ``n`` x ``K_DIN``: the batch at ``src[so:]`` for the first layer, else the
    previous layer's output in ``ws``."""
    return _view(src, so, n, net[i, K_DIN]) if i == 0 else _view(ws, net[i - 1, K_Y], n, net[i, K_DIN])


@njit(cache=True, error_model="numpy")
def _forward(net, netf, cfg, src, so, p, ws, n, step, one, nb):
    """Every layer on the batch's ``n`` rows (the input at ``src[so:]``), each writing its output into
    ``ws[net[i, K_Y]:]``."""
    zero = one - one
    for i in range(net.shape[0]):
        kind, din, dout = net[i, K_KIND], net[i, K_DIN], net[i, K_DOUT]
        yo = net[i, K_Y]
        x, y = _input(net, ws, src, so, i, n), _view(ws, yo, n, dout)
        if kind == DENSE:
            _gemm(x, False, _view(p, net[i, K_W], din, dout), False, y, nb)
            bo = net[i, K_B]
            b = p[bo:bo + dout] if bo >= 0 else p[0:1]
            _ka.bias_act(y, b, bo >= 0, net[i, K_ACT], netf[i, F_ALPHA], one, y)  # in place, as Dense
        elif kind == DROPOUT:
            base = _kd._mix(np.uint64(net[i, K_SEED]) * _K_SEED + np.uint64(step) * _K_STEP)
            mo = net[i, K_MASK]
            _kd.dropout_mask(cfg[C_ROW0], base, np.uint64(net[i, K_KEEP]), netf[i, F_SCALE], zero,
                             _view(ws, mo, n, dout))
            _ka.mul(x.reshape(n * din), ws[mo:mo + n * dout], ws[yo:yo + n * dout])
        else:  # ACT
            _ka.bias_act(x, p[0:1], False, net[i, K_ACT], netf[i, F_ALPHA], one, y)


@njit(cache=True, error_model="numpy")
def _loss(cfg, out, ws, ti, n, one):
    """The loss of the batch's outputs ``out`` (its mean, as the loss primitive returns it), with
    its gradient written into ``ws[cfg[C_DL]:]``."""
    c = out.shape[1]
    dl = _view(ws, cfg[C_DL], n, c)
    kind = cfg[C_LOSS]
    if kind == LOSS_XENT_INDEX:
        return _kl.softmax_xent_index(out, ti[:n], dl, dl, False, True, one, out.dtype.type(n))
    tb = _view(ws, cfg[C_TB], n, c)
    if kind == LOSS_XENT_ONEHOT:
        return _kl.softmax_xent_onehot(out, tb, dl, dl, False, True, one, out.dtype.type(n))
    flat_out, flat_t, flat_dl = out.reshape(-1), tb.reshape(-1), dl.reshape(-1)
    if kind == LOSS_BCE:
        return _kl.sigmoid_bce(flat_out, flat_t, flat_dl, flat_dl, False, True, one, out.dtype.type(n * c))
    s = out.dtype.type(1.0 / (n * c))  # Keras's mse: the mean over every element
    return _kl.mse(flat_out, flat_t, s, s + s, one - one, flat_dl, True)


@njit(cache=True, error_model="numpy")
def _argmax(row):
    """numpy's ``argmax`` of a row: the first maximum, or the first NaN."""
    best = 0
    m = row[0]
    if m != m:
        return 0
    for j in range(1, row.shape[0]):
        v = row[j]
        if v != v:
            return j
        if v > m:
            m, best = v, j
    return best


@njit(cache=True, error_model="numpy")
def _metric(cfg, out, ws, ti, n):
    """The accuracy metric's sum over the batch (``fastnn.metrics``' value), in the output's dtype."""
    kind = cfg[C_METRIC]
    c = out.shape[1]
    if kind == METRIC_ARGMAX:
        hits = 0
        tb = _view(ws, cfg[C_TB], n, c)
        for r in range(n):
            label = ti[r] if cfg[C_LOSS] == LOSS_XENT_INDEX else _argmax(tb[r])
            if _argmax(out[r]) == label:
                hits += 1
        return out.dtype.type(hits)
    if kind == METRIC_BINARY_LOGITS or kind == METRIC_BINARY_PROBS:
        thr = out.dtype.type(0.0 if kind == METRIC_BINARY_LOGITS else 0.5)
        half = out.dtype.type(0.5)
        tb = _view(ws, cfg[C_TB], n, c)
        total = 0.0  # numpy: the row means in float64, summed, then cast
        for r in range(n):
            hits = 0
            for j in range(c):
                if (out[r, j] > thr) == (tb[r, j] > half):
                    hits += 1
            total += hits / c
        return out.dtype.type(total)
    return out.dtype.type(0)


@njit(cache=True, error_model="numpy")
def _backward(net, netf, cfg, src, so, p, g, ws, n, one, nb):
    """Gradients of every layer from the loss gradient at ``ws[cfg[C_DL]:]``, into ``g``; a layer's
    input gradient only where an earlier layer has weights (``net[i, K_DX] >= 0``)."""
    go = cfg[C_DL]
    for i in range(net.shape[0] - 1, -1, -1):
        kind, din, dout, act = net[i, K_KIND], net[i, K_DIN], net[i, K_DOUT], net[i, K_ACT]
        dxo = net[i, K_DX]
        dy, y = _view(ws, go, n, dout), _view(ws, net[i, K_Y], n, dout)
        alpha = netf[i, F_ALPHA]
        if kind == DENSE:
            bo = net[i, K_B]
            if act == LINEAR:
                dz = dy
                if bo >= 0:
                    _ka.bias_grad(dz, g[bo:bo + dout])
            else:
                dz = _view(ws, net[i, K_DZ], n, dout)
                if bo >= 0:
                    _ka.act_backward_bias_grad(dy, y, act, alpha, one, dz, g[bo:bo + dout])
                else:
                    _ka.act_backward(dy, y, act, alpha, one, dz)
            x = _input(net, ws, src, so, i, n)
            _gemm(x, True, dz, False, _view(g, net[i, K_W], din, dout), nb)
            if dxo >= 0:
                _gemm(dz, False, _view(p, net[i, K_W], din, dout), True, _view(ws, dxo, n, din), nb)
        elif dxo >= 0:
            if kind == DROPOUT:
                mo = net[i, K_MASK]
                _ka.mul(ws[go:go + n * dout], ws[mo:mo + n * dout], ws[dxo:dxo + n * din])
            else:
                _ka.act_backward(dy, y, act, alpha, one, _view(ws, dxo, n, din))
        if dxo < 0:
            return
        go = dxo


@njit(cache=True, error_model="numpy")
def _clip_scale(g, runs, clipnorm, zero):
    """``optimizers.Optimizer._clip_scale``: ``min(1, clipnorm / (norm + 1e-6))``, the norm summed in
    float64 over the trainable runs' ``sq_norm``s."""
    if clipnorm <= 0.0:
        return 1.0
    total = 0.0
    for r in range(runs.shape[0]):
        total += np.float64(_ko.sq_norm(g[runs[r, 0]:runs[r, 1]], zero))
    q = clipnorm / (np.sqrt(total) + 1e-6)
    return q if q < 1.0 else 1.0  # Python's min(1.0, q), NaN included


@njit(cache=True, error_model="numpy")
def _update(cfg, pieces, sc, p, g, s1, s2, scale64, tiny, zero):
    """One optimizer update, one kernel call per piece, with ``NumbaOps``' arguments."""
    kind = cfg[C_OPT]
    use_scale = scale64 != 1.0
    scale = p.dtype.type(scale64)
    for j in range(pieces.shape[0]):
        a, b, use_wd = pieces[j, 0], pieces[j, 1], pieces[j, 2] != 0
        r = sc[j]
        if kind == OPT_SGD:
            _ko.sgd_step(p[a:b], g[a:b], r[0], r[1], scale, use_wd, use_scale)
        elif kind == OPT_MOMENTUM:
            _ko.momentum_step(p[a:b], g[a:b], s1[a:b], r[0], r[1], r[2], scale, use_wd, use_scale,
                              cfg[C_NESTEROV] != 0, tiny, zero)
        elif kind == OPT_ADAGRAD:
            _ko.adagrad_step(p[a:b], g[a:b], s1[a:b], r[0], r[1], r[2], scale, use_wd, use_scale, tiny, zero)
        elif kind == OPT_RMSPROP:
            _ko.rmsprop_step(p[a:b], g[a:b], s1[a:b], r[0], r[1], r[2], r[3], r[4], scale, use_wd, use_scale,
                             tiny, zero)
        else:
            _ko.adam_step(p[a:b], g[a:b], s1[a:b], s2[a:b], r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                          scale, r[8], use_wd, use_scale, cfg[C_DECOUPLED] != 0, tiny, zero)


# ---------------------------------------------------------------------------------------- the fused call
@njit(cache=True, error_model="numpy", nogil=True)
def train_steps(x, t_idx, t_dense, order, net, netf, cfg, clipnorm, pieces, runs, sc, p, g, s1, s2, ws, ti,
                stats):
    """``stats.shape[0]`` training steps; step ``k`` trains on rows ``order[k*B:(k+1)*B]`` of ``x``
    (``B = cfg[C_BATCH]``; the last batch may be short) and writes ``stats[k] = (loss * n, metric sum)``.
    A batch of consecutive rows (every batch of an unshuffled epoch) is read in place; any other is
    gathered into a workspace buffer first. The products are the same either way, bit for bit.

    x: (N, D) data; t_idx: (N,) int64 class indices or t_dense: (N, C) targets (the other one a
    placeholder); net/netf/cfg/pieces/runs: the plan's tables (``FusedPlan``); clipnorm: float, <= 0
    for none; sc: (K, pieces, NSCALARS) optimizer scalars per step; p, g: the flat parameter and
    gradient buffers; s1, s2: the optimizer's flat slots (or placeholders); ws, ti: workspaces.
    """
    one = p.dtype.type(1)
    zero = one - one
    tiny = p.dtype.type(np.finfo(p.dtype).tiny)
    nb = cfg[C_NB] != 0
    last = net.shape[0] - 1
    c = net[last, K_DOUT]
    bs, m, d = cfg[C_BATCH], order.shape[0], x.shape[1]
    xflat = x.reshape(x.shape[0] * d)
    for k in range(stats.shape[0]):
        lo = k * bs
        n = min(bs, m - lo)
        if _consecutive(order, lo, n):
            # an unshuffled batch is a block of x already: the GEMMs read it in place, no copy
            src, so = xflat, order[lo] * d
        else:
            # the batch goes to the least recently used of cfg[C_NXB] input buffers: the last step's
            # GEMMs read its buffer on every BLAS thread, and writing lines still held in another
            # core's cache waits for each to be invalidated there (B64: 68 -> 42 us per gather with 4)
            src, so = ws, cfg[C_XB] + (k % cfg[C_NXB]) * bs * d
            _copy_rows(x, order, lo, n, ws, so)
        _gather_targets(t_idx, t_dense, order, lo, n, cfg[C_LOSS], ws, cfg[C_TB], ti)
        _forward(net, netf, cfg, src, so, p, ws, n, cfg[C_STEP0] + k, one, nb)
        out = _view(ws, net[last, K_Y], n, c)
        stats[k, 0] = _loss(cfg, out, ws, ti, n, one) * p.dtype.type(n)
        stats[k, 1] = _metric(cfg, out, ws, ti, n)
        _backward(net, netf, cfg, src, so, p, g, ws, n, one, nb)
        _update(cfg, pieces, sc[k], p, g, s1, s2, _clip_scale(g, runs, clipnorm, zero), tiny, zero)


flush_if_stale(__name__, _ka, _kd, _kl, _ko)
