"""Batch normalization kernels over ``x: (N, D)``, per column, in the reference's arithmetic order.

Column sums run row after row (as NumPy's axis-0 reductions of C-contiguous arrays do). Scalars
arrive cast to the data's dtype (``nf = dtype(N)``). ``mu``/``var``/``coef`` are (D,) workspaces.
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _column_stats(x, mu, var, nf, zero):
    """Batch mean and biased variance of each column."""
    n, d = x.shape
    for j in range(d):
        mu[j] = zero
        var[j] = zero
    for i in range(n):
        for j in range(d):
            mu[j] += x[i, j]
    for j in range(d):
        mu[j] = mu[j] / nf
    for i in range(n):
        for j in range(d):
            c = x[i, j] - mu[j]
            var[j] += c * c
    for j in range(d):
        var[j] = var[j] / nf


@njit(cache=True, error_model="numpy")
def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, one_m_momentum, eps,
                      train, nf, one, mu, var, out, xhat, inv_std):
    """``out = gamma * xhat + beta``, ``xhat = (x - mean) * inv_std``, ``inv_std = 1/sqrt(var + eps)``.

    Training uses the batch statistics (into ``mu``, ``var``) and updates the running ones in
    place; inference reads the running statistics.
    """
    n, d = x.shape
    if train:
        _column_stats(x, mu, var, nf, one - one)
        for j in range(d):
            running_mean[j] = momentum * running_mean[j] + one_m_momentum * mu[j]
            running_var[j] = momentum * running_var[j] + one_m_momentum * var[j]
        center = mu
        spread = var
    else:
        center = running_mean
        spread = running_var
    for j in range(d):
        inv_std[j] = one / np.sqrt(spread[j] + eps)
    for i in range(n):
        for j in range(d):
            xh = (x[i, j] - center[j]) * inv_std[j]
            xhat[i, j] = xh
            out[i, j] = gamma[j] * xh + beta[j]


@njit(cache=True, error_model="numpy")
def batchnorm_backward(dout, xhat, inv_std, gamma, nf, zero, s1, s2, coef, dx, dgamma, dbeta):
    """``dx = inv_std / N * (N dxhat - sum(dxhat) - xhat sum(dxhat xhat))``, ``dxhat = dout * gamma``;
    ``dgamma = sum(dout xhat)``, ``dbeta = sum(dout)``. ``s1``, ``s2``, ``coef`` are workspaces."""
    n, d = dout.shape
    for j in range(d):
        dgamma[j] = zero
        dbeta[j] = zero
        s1[j] = zero
        s2[j] = zero
    for i in range(n):
        for j in range(d):
            g = dout[i, j]
            dbeta[j] += g
            dgamma[j] += g * xhat[i, j]
            dxh = g * gamma[j]
            s1[j] += dxh
            s2[j] += dxh * xhat[i, j]
    for j in range(d):
        coef[j] = inv_std[j] / nf
    for i in range(n):
        for j in range(d):
            dxh = dout[i, j] * gamma[j]
            dx[i, j] = coef[j] * ((nf * dxh - s1[j]) - xhat[i, j] * s2[j])
