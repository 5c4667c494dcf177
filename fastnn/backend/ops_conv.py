"""The NumPy reference of the convolution and pooling primitives (NCHW), part of ``Ops``."""
from __future__ import annotations

import numpy

from fastnn.kernels.geometry import conv_geometry, pool_geometry

__all__ = ["ConvReference"]


class ConvReference:
    """``Ops``' convolution and pooling primitives, written against ``self.xp`` only."""

    # ------------------------------------------------------------------ convolution and pooling (NCHW)
    def im2col(self, x, fh, fw, stride=1, pad=0, *, out=None):
        """Patches of ``x: (N, C, H, W)`` as rows: ``out: (N*OH*OW, C*FH*FW)``, the book's ``im2col``.

        Row ``(n, oy, ox)``, column ``(c, ky, kx)`` holds ``x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``,
        zero outside ``x``. ``stride``, ``pad`` and the output size as ``conv_geometry``.
        """
        xp = self.xp
        n, c = x.shape[:2]
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x.shape, fh, fw, stride, pad, "im2col")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
        col = xp.empty((n, c, fh, fw, oh, ow), dtype=x.dtype)
        for ky in range(fh):
            for kx in range(fw):
                col[:, :, ky, kx] = img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
        col = col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * fh * fw)
        if out is None:
            return col
        out[...] = col
        return out

    def col2im(self, col, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        """The adjoint of ``im2col``: ``out: x_shape`` where each element sums the ``col: (N*OH*OW,
        C*FH*FW)`` entries ``im2col`` copied it to (entries that fell on the padding are dropped).
        ``col`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x_shape, fh, fw, stride, pad, "col2im")
        if tuple(col.shape) != (n * oh * ow, c * fh * fw):
            raise ValueError(f"col2im: expected col of shape {(n * oh * ow, c * fh * fw)} for x of shape "
                             f"{tuple(x_shape)}, got {tuple(col.shape)}")
        col6 = col.reshape(n, oh, ow, c, fh, fw).transpose(0, 3, 4, 5, 1, 2)
        img = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=col.dtype)
        for ky in range(fh):
            for kx in range(fw):
                img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += col6[:, :, ky, kx]
        dx = img[:, :, pt:pt + h, pl:pl + w]
        if out is None:
            return xp.ascontiguousarray(dx)
        out[...] = dx
        return out

    def im2col_t(self, x, fh, fw, stride=1, pad=0, *, out=None):
        """``im2col`` transposed: ``out: (C*FH*FW, N*OH*OW)`` equals ``im2col(x, ...).T``.

        Row ``(c, ky, kx)``, column ``(n, oy, ox)`` holds ``x[n, c, oy*sh + ky - pt, ox*sw + kx - pl]``,
        zero outside ``x``; ``W.reshape(FN, -1) @ out`` is the channel-major ``(FN, N*OH*OW)``.
        ``stride``, ``pad`` and the output size as ``conv_geometry``.
        """
        xp = self.xp
        n, c = x.shape[:2]
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x.shape, fh, fw, stride, pad, "im2col_t")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
        col = xp.empty((c, fh, fw, n, oh, ow), dtype=x.dtype)
        for ky in range(fh):
            for kx in range(fw):
                col[:, ky, kx] = img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw].transpose(1, 0, 2, 3)
        col = col.reshape(c * fh * fw, n * oh * ow)
        if out is None:
            return col
        out[...] = col
        return out

    def col2im_t(self, colT, x_shape, fh, fw, stride=1, pad=0, *, out=None):
        """The adjoint of ``im2col_t`` (``col2im`` of ``colT.T``): ``out: x_shape`` where each element
        sums the ``colT: (C*FH*FW, N*OH*OW)`` entries ``im2col_t`` copied it to (entries that fell on
        the padding are dropped). ``colT`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        oh, ow, sh, sw, pt, pb, pl, pr = conv_geometry(x_shape, fh, fw, stride, pad, "col2im_t")
        if tuple(colT.shape) != (c * fh * fw, n * oh * ow):
            raise ValueError(f"col2im_t: expected colT of shape {(c * fh * fw, n * oh * ow)} for x of shape "
                             f"{tuple(x_shape)}, got {tuple(colT.shape)}")
        col6 = colT.reshape(c, fh, fw, n, oh, ow)
        img = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=colT.dtype)
        for ky in range(fh):
            for kx in range(fw):
                img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw] += col6[:, ky, kx].transpose(1, 0, 2, 3)
        dx = img[:, :, pt:pt + h, pl:pl + w]
        if out is None:
            return xp.ascontiguousarray(dx)
        out[...] = dx
        return out

    def maxpool_forward(self, x, ph, pw, stride=1, pad=0, *, out=None, argmax=None):
        """Max pooling of ``x: (N, C, H, W)`` over ``ph x pw`` windows, as ``torch.nn.functional.max_pool2d``.

        Padding never wins (it counts as -inf; each pad is at most half the window). Returns
        ``(out, argmax)``: ``out: (N, C, OH, OW)`` and ``argmax`` (int64, same shape), the index
        ``iy * W + ix`` of each maximum in its input plane (the first one on ties; a NaN wins; a window
        of only -inf points at its first cell inside the plane).
        """
        xp = self.xp
        n, c, h, w = x.shape
        oh, ow, sh, sw, pt, pb, pl, pr = pool_geometry(x.shape, ph, pw, stride, pad, "maxpool_forward")
        img = xp.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=-numpy.inf)
        win = xp.stack([img[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
                        for ky in range(ph) for kx in range(pw)])
        k = win.argmax(axis=0)
        y = xp.take_along_axis(win, k[None], axis=0)[0]
        iy = xp.arange(oh).reshape(oh, 1) * sh - pt + k // pw
        ix = xp.arange(ow).reshape(1, ow) * sw - pl + k % pw
        idx = (iy * w + ix).astype(xp.int64)
        # a window whose cells are all -inf: its first cell inside the plane (never a padding cell)
        first = (xp.maximum(xp.arange(oh) * sh - pt, 0).reshape(oh, 1) * w
                 + xp.maximum(xp.arange(ow) * sw - pl, 0).reshape(1, ow)).astype(xp.int64)
        idx = xp.where(y == -numpy.inf, first, idx)
        for buf, val in ((out, y), (argmax, idx)):
            if buf is not None:
                buf[...] = val
        return (y if out is None else out), (idx if argmax is None else argmax)

    def maxpool_backward(self, dout, argmax, x_shape, *, out=None):
        """Gradient of max pooling: ``out: x_shape``, zero except ``dout`` added at each window's
        ``argmax`` (``maxpool_forward``'s); overlapping windows (stride < window) add up. ``dout``
        and ``argmax`` are ``(N, C, OH, OW)``; ``dout`` is not written."""
        xp = self.xp
        n, c, h, w = (int(s) for s in x_shape)
        if tuple(dout.shape) != tuple(argmax.shape) or dout.ndim != 4 or tuple(dout.shape[:2]) != (n, c):
            raise ValueError(f"maxpool_backward: dout {tuple(dout.shape)} and argmax {tuple(argmax.shape)} must "
                             f"both be (N, C, OH, OW) with (N, C) = {(n, c)}")
        dx = xp.zeros((n * c, h * w), dtype=dout.dtype)
        rows = xp.arange(n * c).reshape(-1, 1)
        idx = argmax.reshape(n * c, -1)
        xp.add.at(dx, (xp.broadcast_to(rows, idx.shape), idx), dout.reshape(n * c, -1))
        dx = dx.reshape(n, c, h, w)
        if out is None:
            return dx
        out[...] = dx
        return out

    def conv_bias_act(self, z, b, act, alpha=0.0, *, out=None, z_out=None):
        """``out = act(z.transpose(1, 0, 2, 3) + b)``: a convolution's GEMM result ``z: (C, N, H, W)``
        (channel-major) to NCHW ``out: (N, C, H, W)``, ``b: (C,)`` per channel (``None``: no bias).
        ``z_out: (C, N, H, W)``, when given, receives the pre-activation ``z + b`` in ``z``'s layout (it
        may be ``z`` itself: no memory beyond the GEMM's), which ``conv_act_backward`` needs for the
        codes in ``NEEDS_Z``. ``z`` is not written (unless it is ``z_out``)."""
        pre = z if b is None else z + b.reshape(-1, 1, 1, 1)
        y = self.xp.ascontiguousarray(self._act(pre.transpose(1, 0, 2, 3), act, alpha))
        if z_out is not None:
            z_out[...] = pre
        if out is None:
            return y
        out[...] = y
        return out

    def conv_act_backward(self, dout, y, act, alpha=0.0, *, out=None, db=None, z=None):
        """``out = (dout * act'(y)).transpose(1, 0, 2, 3)``: NCHW ``dout, y: (N, C, H, W)`` to the
        ``(C, N, H, W)`` layout of the convolution's GEMMs; writes ``db = out.sum((1, 2, 3))`` when
        given. For the codes in ``NEEDS_Z`` the derivative comes from the pre-activation ``z: (C, N,
        H, W)`` (``conv_bias_act``'s ``z_out``), which they require; other codes ignore ``z``.
        ``dout`` is not written."""
        zt = None if z is None else z.transpose(1, 0, 2, 3)
        dz = self.xp.ascontiguousarray((dout * self._act_grad(y, act, alpha, zt)).transpose(1, 0, 2, 3))
        if db is not None:
            db[...] = dz.reshape(dz.shape[0], -1).sum(axis=1)
        if out is None:
            return dz
        out[...] = dz
        return out
