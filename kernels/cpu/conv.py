"""Convolution and pooling kernels over NCHW arrays: im2col/col2im and their transposed layout
im2col_t/col2im_t, max pooling with argmax, and bias + activation between NCHW and the
``(C, N, H, W)`` layout of the convolution GEMMs.

Serial loops (BLAS runs the GEMM between im2col and col2im on every core). Geometry arrives
already checked and normalised by ``fastnn.backend.ops.conv_geometry``: strides ``sh, sw``, the
top/left padding ``pt, pl`` and the output size ``oh, ow`` (the bottom/right padding is implied).
Scalars of the data's type (``neg_inf``) arrive cast to its dtype.
"""
from numba import njit
from numba import uint64 as u64

from fastnn.kernels import LINEAR, RELU
from fastnn.kernels.cpu import activations as _ka
from fastnn.kernels.cpu import flush_if_stale
from fastnn.kernels.cpu.activations import _act, _act_grad, _act_grad_z


@njit(cache=True, error_model="numpy")
def im2col(x, fh, fw, sh, sw, pt, pl, oh, ow, col):
    """``col[(n, oy, ox), (c, ky, kx)] = x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``, 0 outside ``x``.

    One output row ``(n, oy)`` at a time, column after column: reads run along a row of ``x``, and
    the ``OW`` rows of ``col`` being written stay in L1 (measured 1.1-1.9x faster than row by row)."""
    n, c, h, w = x.shape
    zero = x.dtype.type(0)
    for i in range(n):
        for oy in range(oh):
            r0 = (i * oh + oy) * ow
            j = 0
            for ch in range(c):
                for ky in range(fh):
                    iy = oy * sh + ky - pt
                    for kx in range(fw):
                        if iy < 0 or iy >= h:
                            for ox in range(ow):
                                col[r0 + ox, j] = zero
                        else:
                            lo = 0  # the first ox whose column lies in x
                            while lo < ow and lo * sw + kx - pl < 0:
                                col[r0 + lo, j] = zero
                                lo += 1
                            hi = ow  # one past the last
                            while hi > lo and (hi - 1) * sw + kx - pl >= w:
                                hi -= 1
                                col[r0 + hi, j] = zero
                            for ox in range(lo, hi):
                                col[r0 + ox, j] = x[i, ch, iy, ox * sw + kx - pl]
                        j += 1


@njit(cache=True, error_model="numpy")
def col2im(col, fh, fw, sh, sw, pt, pl, oh, ow, dx):
    """``dx`` (zeroed here) accumulates every ``col`` entry at the element ``im2col`` read it from."""
    n, c, h, w = dx.shape
    zero = dx.dtype.type(0)
    for i in range(n):
        for ch in range(c):
            for iy in range(h):
                for ix in range(w):
                    dx[i, ch, iy, ix] = zero
    r = 0
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                x0 = ox * sw - pl
                inside_x = x0 >= 0 and x0 + fw <= w
                j = 0
                for ch in range(c):
                    for ky in range(fh):
                        iy = oy * sh + ky - pt
                        if iy >= 0 and iy < h:
                            if inside_x:
                                for kx in range(fw):
                                    dx[i, ch, iy, x0 + kx] += col[r, j + kx]
                            else:
                                for kx in range(fw):
                                    ix = x0 + kx
                                    if ix >= 0 and ix < w:
                                        dx[i, ch, iy, ix] += col[r, j + kx]
                        j += fw
                r += 1


@njit(cache=True, error_model="numpy")
def _inside(o, s, k, p, size):
    """``(lo, hi)``: the outputs ``lo <= o' < hi`` (of ``o``) whose input ``o'*s + k - p`` lies in ``[0, size)``."""
    lo = 0
    while lo < o and lo * s + k - p < 0:
        lo += 1
    hi = o
    while hi > lo and (hi - 1) * s + k - p >= size:
        hi -= 1
    return lo, hi


@njit(cache=True, error_model="numpy")
def im2col_t(x, fh, fw, sh, sw, pt, pl, oh, ow, colT):
    """``colT[(c, ky, kx), (n, oy, ox)] = x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``, 0 outside ``x``.

    Each ``(row, n, oy)`` segment of ``OW`` is a shifted copy of part of one input row (strided when
    ``sw > 1``); one input plane ``(n, c)`` at a time, so it stays in L1 while its ``FH*FW`` rows of
    ``colT`` are written."""
    n, c, h, w = x.shape
    xf, cf = x.reshape(-1), colT.reshape(-1)
    m = colT.shape[1]
    zero = x.dtype.type(0)
    p = oh * ow
    # NOTE: flat arrays indexed by uint64: a signed index gets Numba's wraparound (a select per
    # element), which stops LLVM vectorising these copies (measured 3-4x slower). Every index is >= 0.
    for ch in range(c):
        for i in range(n):
            xb = (i * c + ch) * h * w
            for ky in range(fh):
                for kx in range(fw):
                    lo, hi = _inside(ow, sw, kx, pl, w)
                    rj = ((ch * fh + ky) * fw + kx) * m + i * p
                    for oy in range(oh):
                        r0 = rj + oy * ow
                        iy = oy * sh + ky - pt
                        if iy < 0 or iy >= h:
                            for ox in range(ow):
                                cf[u64(r0 + ox)] = zero
                            continue
                        for ox in range(lo):
                            cf[u64(r0 + ox)] = zero
                        s0 = xb + iy * w + kx - pl
                        if sw == 1:
                            for ox in range(lo, hi):
                                cf[u64(r0 + ox)] = xf[u64(s0 + ox)]
                        else:
                            for ox in range(lo, hi):
                                cf[u64(r0 + ox)] = xf[u64(s0 + ox * sw)]
                        for ox in range(hi, ow):
                            cf[u64(r0 + ox)] = zero


@njit(cache=True, error_model="numpy")
def col2im_t(colT, fh, fw, sh, sw, pt, pl, oh, ow, dx):
    """``dx`` (zeroed here) accumulates every ``colT`` entry at the element ``im2col_t`` read it from:
    one plane ``(n, c)`` at a time, adding its ``FH*FW`` rows of ``colT`` in ``(ky, kx)`` order."""
    n, c, h, w = dx.shape
    df, cf = dx.reshape(-1), colT.reshape(-1)
    m = colT.shape[1]
    zero = dx.dtype.type(0)
    p = oh * ow
    for ch in range(c):  # uint64 indices, as in im2col_t
        for i in range(n):
            xb = (i * c + ch) * h * w
            for k in range(h * w):
                df[u64(xb + k)] = zero
            for ky in range(fh):
                for kx in range(fw):
                    lo, hi = _inside(ow, sw, kx, pl, w)
                    rj = ((ch * fh + ky) * fw + kx) * m + i * p
                    for oy in range(oh):
                        iy = oy * sh + ky - pt
                        if iy < 0 or iy >= h:
                            continue
                        r0 = rj + oy * ow
                        s0 = xb + iy * w + kx - pl
                        if sw == 1:
                            for ox in range(lo, hi):
                                df[u64(s0 + ox)] += cf[u64(r0 + ox)]
                        else:
                            for ox in range(lo, hi):
                                df[u64(s0 + ox * sw)] += cf[u64(r0 + ox)]


@njit(cache=True, error_model="numpy")
def maxpool_forward(x, ph, pw, sh, sw, pt, pl, oh, ow, neg_inf, y, argmax):
    """``y`` = the maximum of each window (padding counts as ``neg_inf``), ``argmax`` = its index
    ``iy * W + ix`` in the input plane; the first maximum wins ties, the first NaN wins outright."""
    n, c, h, w = x.shape
    for i in range(n):
        for ch in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    m = neg_inf
                    # when every cell is -inf: the window's first cell inside the plane (as PyTorch)
                    best = max(oy * sh - pt, 0) * w + max(ox * sw - pl, 0)
                    for ky in range(ph):
                        iy = oy * sh + ky - pt
                        for kx in range(pw):
                            ix = ox * sw + kx - pl
                            if iy < 0 or iy >= h or ix < 0 or ix >= w:
                                continue
                            v = x[i, ch, iy, ix]
                            if v > m or (v != v and m == m):
                                m = v
                                best = iy * w + ix
                    y[i, ch, oy, ox] = m
                    argmax[i, ch, oy, ox] = best


@njit(cache=True, error_model="numpy")
def maxpool_backward(dout, argmax, dx):
    """``dx: (N*C, H*W)`` (zeroed here) gets ``dout: (N*C, OH*OW)`` added at each ``argmax``;
    returns how many indices fell outside the plane (skipped: the caller raises)."""
    rows, hw = dx.shape
    for r in range(rows):
        for k in range(hw):
            dx[r, k] = 0
    bad = 0
    for r in range(rows):
        for k in range(dout.shape[1]):
            idx = argmax[r, k]
            if idx < 0 or idx >= hw:
                bad += 1
            else:
                dx[r, idx] += dout[r, k]
    return bad


# ---------------------------------------------------------------------------- bias + activation, NCHW <-> (C, N, H, W)
# The scalar activation functions are ``kernels/cpu/activations.py``'s; this file's cache is flushed
# when that file changes (``flush_if_stale`` at the end), since Numba compiles them into it.


@njit(cache=True, error_model="numpy")
def conv_bias_act(z, b, has_b, act, alpha, one, out):
    """``out[n, c, p] = act(z[c, n, p] + b[c])``: ``z: (C, N, P)`` to ``out: (N, C, P)``, one
    contiguous plane of ``P = H*W`` at a time (``b`` ignored unless ``has_b``)."""
    c, n, p = z.shape
    zero = one - one
    half = one / (one + one)
    for ch in range(c):
        bc = b[ch] if has_b else zero
        for i in range(n):
            if act == RELU:  # the hot cases get loops of their own, which LLVM vectorises
                for k in range(p):
                    v = z[ch, i, k] + bc
                    out[i, ch, k] = zero if v < zero else v
            elif act == LINEAR:  # the book's Convolution (its Relu is a layer of its own)
                for k in range(p):
                    out[i, ch, k] = z[ch, i, k] + bc
            else:
                for k in range(p):
                    out[i, ch, k] = _act(z[ch, i, k] + bc, act, alpha, zero, half)


@njit(cache=True, error_model="numpy")
def conv_bias_act_z(z, b, has_b, act, alpha, one, out, zb):
    """``conv_bias_act`` that also writes the pre-activation ``zb[c, n, p] = z[c, n, p] + b[c]``
    (``zb: (C, N, P)``, which may be ``z`` itself)."""
    c, n, p = z.shape
    zero = one - one
    half = one / (one + one)
    for ch in range(c):
        bc = b[ch] if has_b else zero
        for i in range(n):
            for k in range(p):
                v = z[ch, i, k] + bc
                zb[ch, i, k] = v
                out[i, ch, k] = _act(v, act, alpha, zero, half)


@njit(cache=True, error_model="numpy")
def conv_act_backward(dout, y, act, alpha, one, out, has_db, db):
    """``out[c, n, p] = dout[n, c, p] * act'(y[n, c, p])``: ``(N, C, P)`` to ``out: (C, N, P)``;
    ``db[c]`` = its sum over ``n, p`` (plane by plane) when ``has_db``."""
    n, c, p = y.shape
    zero = one - one
    if has_db:
        for ch in range(c):
            db[ch] = zero
    for i in range(n):
        for ch in range(c):
            s = zero
            if act == RELU:
                for k in range(p):
                    d = dout[i, ch, k] * (one if y[i, ch, k] > zero else zero)
                    out[ch, i, k] = d
                    s += d
            elif act == LINEAR:
                for k in range(p):
                    d = dout[i, ch, k] * one
                    out[ch, i, k] = d
                    s += d
            else:
                for k in range(p):
                    d = dout[i, ch, k] * _act_grad(y[i, ch, k], act, alpha, zero, one)
                    out[ch, i, k] = d
                    s += d
            if has_db:
                db[ch] += s


@njit(cache=True, error_model="numpy")
def conv_act_backward_z(dout, zb, act, one, out, has_db, db):
    """``out[c, n, p] = dout[n, c, p] * act'(zb[c, n, p])`` from the pre-activation ``zb: (C, N, P)``
    (a ``NEEDS_Z`` code); ``db[c]`` = its sum over ``n, p`` (plane by plane) when ``has_db``."""
    n, c, p = dout.shape
    zero = one - one
    if has_db:
        for ch in range(c):
            db[ch] = zero
    for i in range(n):
        for ch in range(c):
            s = zero
            for k in range(p):
                d = dout[i, ch, k] * _act_grad_z(zb[ch, i, k], act, zero, one)
                out[ch, i, k] = d
                s += d
            if has_db:
                db[ch] += s


flush_if_stale(__name__, _ka)
