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
                                         int train) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
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
        if (threadIdx.y == 0) inv_std[j] = is;
        const T g = gamma[j], b = beta[j];
        for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) {
            const long long k = i * d + j;
            const T xh = (x[k] - mu) * is;
            xhat[k] = xh;
            y[k] = g * xh + b;
        }
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
        if (col) {
            for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) {
                const long long k = i * d + j;
                const T dy = dout[k], xh = xhat[k];
                const T dxh = dy * g;
                a_dout += dy;
                a_dout_xhat += fastnn_acc(dy) * fastnn_acc(xh);
                a_dxhat += dxh;
                a_dxhat_xhat += fastnn_acc(dxh) * fastnn_acc(xh);
            }
        }
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
