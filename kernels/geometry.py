"""The geometry of 2-D windows (convolution and pooling, NCHW), checked once for every backend
and kernel: output sizes, strides and padding from a window and an input shape."""
from __future__ import annotations

import numpy

__all__ = ["conv_geometry", "pool_geometry"]


def _ints(primitive, name, value, n):
    """``value`` (an int or a sequence of ``n`` ints) as a tuple of ``n`` Python ints."""
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    try:
        vals = tuple(int(v) for v in value)
    except TypeError:
        vals = ()
    if len(vals) != n or any(isinstance(v, bool) for v in value):
        raise ValueError(f"{primitive}: {name} must be an int or {n} ints, got {value!r}")
    return vals


def conv_geometry(x_shape, fh, fw, stride=1, pad=0, primitive="im2col"):
    """Output size and padding of a 2-D window of ``fh x fw`` sliding over ``x: (N, C, H, W)``.

    ``stride`` is an int or ``(sh, sw)``; ``pad`` an int, ``(ph, pw)`` or ``(top, bottom, left,
    right)`` (zeros added around each plane; asymmetric padding is what Keras's ``"same"`` needs
    for even windows or strides > 1). Returns ``(oh, ow, sh, sw, pt, pb, pl, pr)`` with
    ``oh = (H + pt + pb - fh) // sh + 1`` (likewise ``ow``), as ``torch.nn.functional.conv2d``.
    """
    if len(x_shape) != 4:
        raise ValueError(f"{primitive}: expected x of shape (N, C, H, W) (layout NCHW), got {tuple(x_shape)}")
    fh, fw = _ints(primitive, "the window size", (fh, fw), 2)
    sh, sw = _ints(primitive, "stride", stride, 2)
    if not (hasattr(pad, "__len__") and len(pad) == 4):
        ph, pw = _ints(primitive, "pad", pad, 2)
        pt, pb, pl, pr = ph, ph, pw, pw
    else:
        pt, pb, pl, pr = _ints(primitive, "pad", pad, 4)
    if min(fh, fw, sh, sw) < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{primitive}: window {fh}x{fw} and stride ({sh}, {sw}) must be >= 1 and pad "
                         f"({pt}, {pb}, {pl}, {pr}) >= 0")
    h, w = int(x_shape[2]) + pt + pb, int(x_shape[3]) + pl + pr
    if h < fh or w < fw:
        raise ValueError(f"{primitive}: a {fh}x{fw} window does not fit in the padded {h}x{w} plane of x "
                         f"with shape {tuple(x_shape)}")
    return (h - fh) // sh + 1, (w - fw) // sw + 1, sh, sw, pt, pb, pl, pr


def pool_geometry(x_shape, ph, pw, stride=1, pad=0, primitive="maxpool_forward"):
    """``conv_geometry`` for pooling, which also needs each pad at most half the window (as
    PyTorch), so that every window holds at least one element of ``x``."""
    g = conv_geometry(x_shape, ph, pw, stride, pad, primitive)
    pt, pb, pl, pr = g[4:]
    if 2 * max(pt, pb) > ph or 2 * max(pl, pr) > pw:
        raise ValueError(f"{primitive}: pad ({pt}, {pb}, {pl}, {pr}) must be at most half the "
                         f"{ph}x{pw} window")
    return g
