"""Convolution and pooling kernels over NCHW arrays: im2col/col2im and max pooling with argmax.

Serial loops (BLAS runs the GEMM between im2col and col2im on every core). Geometry arrives
already checked and normalised by ``fastnn.backend.ops.conv_geometry``: strides ``sh, sw``, the
top/left padding ``pt, pl`` and the output size ``oh, ow`` (the bottom/right padding is implied).
Scalars of the data's type (``neg_inf``) arrive cast to its dtype.
"""
from numba import njit


@njit(cache=True, error_model="numpy")
def im2col(x, fh, fw, sh, sw, pt, pl, oh, ow, col):
    """``col[(n, oy, ox), (c, ky, kx)] = x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``, 0 outside ``x``."""
    n, c, h, w = x.shape
    r = 0
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                j = 0
                for ch in range(c):
                    for ky in range(fh):
                        iy = oy * sh + ky - pt
                        inside_y = iy >= 0 and iy < h
                        for kx in range(fw):
                            ix = ox * sw + kx - pl
                            if inside_y and ix >= 0 and ix < w:
                                col[r, j] = x[i, ch, iy, ix]
                            else:
                                col[r, j] = 0
                            j += 1
                r += 1


@njit(cache=True, error_model="numpy")
def col2im(col, fh, fw, sh, sw, pt, pl, oh, ow, dx):
    """``dx`` (zeroed here) accumulates every ``col`` entry at the element ``im2col`` read it from."""
    n, c, h, w = dx.shape
    for i in range(n):
        for ch in range(c):
            for iy in range(h):
                for ix in range(w):
                    dx[i, ch, iy, ix] = 0
    r = 0
    for i in range(n):
        for oy in range(oh):
            for ox in range(ow):
                j = 0
                for ch in range(c):
                    for ky in range(fh):
                        iy = oy * sh + ky - pt
                        inside_y = iy >= 0 and iy < h
                        for kx in range(fw):
                            ix = ox * sw + kx - pl
                            if inside_y and ix >= 0 and ix < w:
                                dx[i, ch, iy, ix] += col[r, j]
                            j += 1
                r += 1


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
                    best = -1
                    for ky in range(ph):
                        iy = oy * sh + ky - pt
                        for kx in range(pw):
                            ix = ox * sw + kx - pl
                            if best < 0:
                                best = iy * w + ix  # the window's first cell, as argmax of all -inf
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
