"""Loss kernels: ``softmax_xent`` (index and one-hot labels), ``softmax_xent_backward``,
``sigmoid_bce`` and ``mse``, on C-contiguous arrays.

Scalars arrive cast to the data's dtype (``one``, ``nf = dtype(N)``). Whole-array sums go block by
block (``_BLOCK`` elements per partial sum) so float32 sums stay close to NumPy's pairwise ones.
"""
import numpy as np
from numba import njit

_BLOCK = 256


@njit(cache=True, error_model="numpy")
def _row_exp(x, i, buf, store, zero):
    """Max of row ``i`` and the sum of ``exp(x - max)``; the exps go into ``buf[i]`` when ``store``."""
    d = x.shape[1]
    m = x[i, 0]
    for j in range(1, d):
        if x[i, j] > m:
            m = x[i, j]
    s = zero
    for j in range(d):
        e = np.exp(x[i, j] - m)
        if store:
            buf[i, j] = e
        s += e
    return m, s


@njit(cache=True, error_model="numpy")
def softmax_xent_index(x, t, y, dx, write_y, write_dx, one, nf):
    """Mean cross-entropy of ``softmax(x)`` against class indices ``t: (N,)``, one pass per row.

    Writes the probabilities into ``y`` when ``write_y`` and ``(p - onehot(t)) / N`` into ``dx``
    when ``write_dx``; returns the loss.
    """
    n, d = x.shape
    zero = one - one
    store = write_y or write_dx
    buf = y if write_y else dx
    loss = zero
    for i in range(n):
        m, s = _row_exp(x, i, buf, store, zero)
        k = t[i]
        if k < 0:
            k += d
        loss += (m + np.log(s)) - x[i, k]
        if store:
            inv = one / s
            for j in range(d):
                p = buf[i, j] * inv
                if write_y:
                    y[i, j] = p
                if write_dx:
                    dx[i, j] = ((p - one) if j == k else p) / nf
    return loss / nf


@njit(cache=True, error_model="numpy")
def softmax_xent_onehot(x, t, y, dx, write_y, write_dx, one, nf):
    """``softmax_xent_index`` for dense targets ``t: (N, C)``: ``lse_i * sum_j t_ij - sum_j t_ij x_ij``."""
    n, d = x.shape
    zero = one - one
    store = write_y or write_dx
    buf = y if write_y else dx
    loss = zero
    for i in range(n):
        m, s = _row_exp(x, i, buf, store, zero)
        tsum = zero
        tx = zero
        for j in range(d):
            tsum += t[i, j]
            tx += t[i, j] * x[i, j]
        loss += (m + np.log(s)) * tsum - tx
        if store:
            inv = one / s
            for j in range(d):
                p = buf[i, j] * inv
                if write_y:
                    y[i, j] = p
                if write_dx:
                    dx[i, j] = (p - t[i, j]) / nf
    return loss / nf


@njit(cache=True, error_model="numpy")
def softmax_xent_backward_index(y, t, s, one, out):
    """``out = (y - onehot(t)) * s``."""
    n, d = y.shape
    for i in range(n):
        k = t[i]
        if k < 0:
            k += d
        for j in range(d):
            out[i, j] = y[i, j] * s
        out[i, k] = (y[i, k] - one) * s


@njit(cache=True, error_model="numpy")
def softmax_xent_backward_onehot(y, t, s, out):
    """``out = (y - t) * s``."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = (y[i, j] - t[i, j]) * s


@njit(cache=True, error_model="numpy")
def sigmoid_bce(x, t, y, dx, write_y, write_dx, one, nf):
    """Mean of ``max(x, 0) - x t + log1p(e^-|x|)`` over flat arrays; writes ``sigmoid(x)`` into ``y``
    and ``(sigmoid(x) - t) / size`` into ``dx`` when asked. Returns the loss."""
    n = x.shape[0]
    zero = one - one
    half = one / (one + one)
    total = zero
    for start in range(0, n, _BLOCK):
        part = zero
        for i in range(start, min(start + _BLOCK, n)):
            z = x[i]
            part += ((z if z > zero else zero) - z * t[i]) + np.log1p(np.exp(-abs(z)))
            if write_y or write_dx:
                p = half * np.tanh(half * z) + half
                if write_y:
                    y[i] = p
                if write_dx:
                    dx[i] = (p - t[i]) / nf
        total += part
    return total / nf


@njit(cache=True, error_model="numpy")
def mse(y, t, s, two_s, zero, dx, write_dx):
    """``scale * sum((y - t)^2)`` over flat arrays; writes ``dx = 2 scale (y - t)`` when asked."""
    n = y.shape[0]
    total = zero
    for start in range(0, n, _BLOCK):
        part = zero
        for i in range(start, min(start + _BLOCK, n)):
            diff = y[i] - t[i]
            if write_dx:
                dx[i] = two_s * diff
            part += diff * diff
        total += part
    return total * s
