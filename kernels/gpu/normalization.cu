// fastnn batch normalization over the columns of x: (n, d).
//
// Block (FASTNN_COLS, FASTNN_ROWS): threadIdx.x walks a group of 32 columns (coalesced reads of a
// row), threadIdx.y strides over rows; column sums meet in shared memory. Grid-stride over
// column groups. Formulas mirror Ops.batchnorm_forward / batchnorm_backward (two-pass variance).
// FASTNN_COLS, FASTNN_ROWS, fastnn_column_total and FMath: common.cuh.

#include "common.cuh"

// train != 0: mu, var = batch mean and biased variance; running = mom * running + one_minus_mom * batch.
// train == 0: mu, var = running statistics. Then inv_std = 1 / sqrt(var + eps),
// xhat = (x - mu) * inv_std, y = gamma * xhat + beta.
template <typename T>
__global__ void fastnn_batchnorm_forward(const T* __restrict__ x, const T* __restrict__ gamma,
                                         const T* __restrict__ beta, T* __restrict__ running_mean,
                                         T* __restrict__ running_var, T* __restrict__ y,
                                         T* __restrict__ xhat, T* __restrict__ inv_std,
                                         long long n, long long d, T mom, T one_minus_mom, T eps,
                                         int train, long long tile) {
    // train != 0 needs every row in the block's reductions: the launcher then gives one row tile.
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        const bool col = j < d;
        T mu, var;
        if (train) {
            fastnn_acc acc = 0;
            if (col) for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) acc += x[i * d + j];
            mu = T(fastnn_column_total(part, acc) / fastnn_acc(n));
            acc = 0;
            if (col) {
                for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) {
                    const fastnn_acc xc = fastnn_acc(x[i * d + j]) - fastnn_acc(mu);
                    acc += xc * xc;
                }
            }
            var = T(fastnn_column_total(part, acc) / fastnn_acc(n));
            if (col && threadIdx.y == 0) {
                running_mean[j] = mom * running_mean[j] + one_minus_mom * mu;
                running_var[j] = mom * running_var[j] + one_minus_mom * var;
            }
        } else {
            mu = col ? running_mean[j] : T(0);
            var = col ? running_var[j] : T(1);
        }
        if (!col) continue;  // no __syncthreads below this point
        const T is = T(1) / FMath<T>::sqrt(var + eps);
        if (threadIdx.y == 0 && blockIdx.y == 0) inv_std[j] = is;
        const T g = gamma[j], b = beta[j];
        for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
            const long long k = i * d + j;
            const T xh = (x[k] - mu) * is;
            xhat[k] = xh;
            y[k] = g * xh + b;
        }
    }
}

// The backward pass's four column sums of column j over rows [r0, r1), this thread's rows only
// (threadIdx.y, then every FASTNN_ROWS-th): dout, dout * xhat, dxhat = dout * gamma, dxhat * xhat.
template <typename T>
__device__ __forceinline__ void fastnn_bn_backward_terms(const T* __restrict__ dout, const T* __restrict__ xhat,
                                                         T g, long long d, long long j, long long r0, long long r1,
                                                         fastnn_acc& a_dout, fastnn_acc& a_dout_xhat,
                                                         fastnn_acc& a_dxhat, fastnn_acc& a_dxhat_xhat) {
    for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
        const long long k = i * d + j;
        const T dy = dout[k], xh = xhat[k];
        const T dxh = dy * g;
        a_dout += dy;
        a_dout_xhat += fastnn_acc(dy) * fastnn_acc(xh);
        a_dxhat += dxh;
        a_dxhat_xhat += fastnn_acc(dxh) * fastnn_acc(xh);
    }
}

// Training-mode gradients: dbeta = sum(dout), dgamma = sum(dout * xhat), dxhat = dout * gamma,
// dx = inv_std / n * (n * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), per column.
template <typename T>
__global__ void fastnn_batchnorm_backward(const T* __restrict__ dout, const T* __restrict__ xhat,
                                          const T* __restrict__ inv_std, const T* __restrict__ gamma,
                                          T* __restrict__ dx, T* __restrict__ dgamma, T* __restrict__ dbeta,
                                          long long n, long long d, int write_dgamma, int write_dbeta) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    const T n_t = T(n);
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        const bool col = j < d;
        const T g = col ? gamma[j] : T(0);
        fastnn_acc a_dout = 0, a_dout_xhat = 0, a_dxhat = 0, a_dxhat_xhat = 0;
        if (col) fastnn_bn_backward_terms(dout, xhat, g, d, j, 0, n, a_dout, a_dout_xhat, a_dxhat, a_dxhat_xhat);
        const T s_dout = T(fastnn_column_total(part, a_dout));
        const T s_dout_xhat = T(fastnn_column_total(part, a_dout_xhat));
        const T s_dxhat = T(fastnn_column_total(part, a_dxhat));
        const T s_dxhat_xhat = T(fastnn_column_total(part, a_dxhat_xhat));
        if (!col) continue;  // no __syncthreads below this point
        if (threadIdx.y == 0) {
            if (write_dbeta) dbeta[j] = s_dout;
            if (write_dgamma) dgamma[j] = s_dout_xhat;
        }
        const T k0 = inv_std[j] / n_t;
        for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) {
            const long long k = i * d + j;
            const T dxh = dout[k] * g;
            dx[k] = k0 * ((n_t * dxh - s_dxhat) - xhat[k] * s_dxhat_xhat);
        }
    }
}

// ---- Training on a 2-D grid (the launcher's choice for many rows: kernels/gpu/normalization.py).
// Column groups x row tiles as fastnn_bias_grad (activations.cu); each tile's sums go to `partial`
// (float64), the finish kernels add them in tile order, and the forward kernel above then
// normalizes with train == 0, reading the batch statistics where the running ones would be.

// partial[blockIdx.y * d + j] = sum over the tile's rows of x[i, j] (centered == 0) or of
// (x[i, j] - mu[j])^2 in double (centered != 0; mu as T, as the one-tile kernel subtracts it).
template <typename T>
__global__ void fastnn_bn_col_sums(const T* __restrict__ x, const T* __restrict__ mu,
                                   fastnn_acc* __restrict__ partial, long long n, long long d, long long tile,
                                   int centered) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        fastnn_acc acc = 0;
        if (j < d) {
            const fastnn_acc m = centered ? fastnn_acc(mu[j]) : fastnn_acc(0);
            for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
                const fastnn_acc v = fastnn_acc(x[i * d + j]) - m;
                acc += centered ? v * v : v;
            }
        }
        const fastnn_acc total = fastnn_column_total(part, acc);
        if (threadIdx.y == 0 && j < d) partial[(long long)blockIdx.y * d + j] = total;
    }
}

// stat[j] = T(sum over tiles of partial[t * d + j] / n), in tile order, and
// running[j] = mom * running[j] + one_minus_mom * stat[j] (the one-tile kernel's expressions).
template <typename T>
__global__ void fastnn_bn_stat_finish(const fastnn_acc* __restrict__ partial, long long tiles, long long d,
                                      long long n, T* __restrict__ stat, T* __restrict__ running, T mom,
                                      T one_minus_mom) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < d; j += stride) {
        fastnn_acc acc = 0;
        for (long long t = 0; t < tiles; ++t) acc += partial[t * d + j];
        const T s = T(acc / fastnn_acc(n));
        stat[j] = s;
        running[j] = mom * running[j] + one_minus_mom * s;
    }
}

// The backward pass's four column sums per tile: partial[(q * gridDim.y + blockIdx.y) * d + j] for
// q = 0..3: sum(dout), sum(dout * xhat), sum(dout * gamma), sum(dout * gamma * xhat).
template <typename T>
__global__ void fastnn_bn_backward_sums(const T* __restrict__ dout, const T* __restrict__ xhat,
                                        const T* __restrict__ gamma, fastnn_acc* __restrict__ partial,
                                        long long n, long long d, long long tile) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    const long long plane = (long long)gridDim.y * d;
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        const bool col = j < d;
        const T g = col ? gamma[j] : T(0);
        fastnn_acc a_dout = 0, a_dout_xhat = 0, a_dxhat = 0, a_dxhat_xhat = 0;
        if (col) fastnn_bn_backward_terms(dout, xhat, g, d, j, r0, r1, a_dout, a_dout_xhat, a_dxhat, a_dxhat_xhat);
        const fastnn_acc s0 = fastnn_column_total(part, a_dout);
        const fastnn_acc s1 = fastnn_column_total(part, a_dout_xhat);
        const fastnn_acc s2 = fastnn_column_total(part, a_dxhat);
        const fastnn_acc s3 = fastnn_column_total(part, a_dxhat_xhat);
        if (threadIdx.y == 0 && col) {
            const long long o = (long long)blockIdx.y * d + j;
            partial[o] = s0;
            partial[plane + o] = s1;
            partial[2 * plane + o] = s2;
            partial[3 * plane + o] = s3;
        }
    }
}

// The four sums over the tiles, in tile order, as T: dbeta = sum(dout), dgamma = sum(dout * xhat)
// (each when its flag is set), and sums[j] = sum(dxhat), sums[d + j] = sum(dxhat * xhat) for dx.
template <typename T>
__global__ void fastnn_bn_backward_finish(const fastnn_acc* __restrict__ partial, long long tiles, long long d,
                                          T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ sums,
                                          int write_dgamma, int write_dbeta) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long plane = tiles * d;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < d; j += stride) {
        fastnn_acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (long long t = 0; t < tiles; ++t) {
            const long long o = t * d + j;
            s0 += partial[o];
            s1 += partial[plane + o];
            s2 += partial[2 * plane + o];
            s3 += partial[3 * plane + o];
        }
        if (write_dbeta) dbeta[j] = T(s0);
        if (write_dgamma) dgamma[j] = T(s1);
        sums[j] = T(s2);
        sums[d + j] = T(s3);
    }
}

// dx = inv_std / n * (n * dout * gamma - sum(dxhat) - xhat * sum(dxhat * xhat)), elementwise on the
// 2-D grid, with the sums of fastnn_bn_backward_finish (the one-tile kernel's expression).
template <typename T>
__global__ void fastnn_bn_backward_dx(const T* __restrict__ dout, const T* __restrict__ xhat,
                                      const T* __restrict__ inv_std, const T* __restrict__ gamma,
                                      const T* __restrict__ sums, T* __restrict__ dx, long long n, long long d,
                                      long long tile) {
    FASTNN_TILE_ROWS(tile, n)
    const T n_t = T(n);
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        if (j >= d) continue;
        const T g = gamma[j], s_dxhat = sums[j], s_dxhat_xhat = sums[d + j];
        const T k0 = inv_std[j] / n_t;
        for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
            const long long k = i * d + j;
            const T dxh = dout[k] * g;
            dx[k] = k0 * ((n_t * dxh - s_dxhat) - xhat[k] * s_dxhat_xhat);
        }
    }
}
