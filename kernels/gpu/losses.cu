// fastnn loss kernels: softmax cross-entropy forward and backward, sigmoid binary cross-entropy,
// mean squared error.
//
// Losses are summed on the device without atomics, so they are deterministic: each block writes
// one partial sum, then fastnn_loss_finish (one block) adds the partials and applies the final
// division or scale, writing a 0-d array. No host synchronisation anywhere.
// Formulas mirror fastnn/backend/ops.py. Shared helpers (FMath, warp and block sums, FASTNN_BLOCK):
// common.cuh.

#include "common.cuh"

// out[0] = sum(partials) / divisor (divide != 0) or sum(partials) * factor (divide == 0).
// One block of FASTNN_BLOCK threads.
template <typename T>
__global__ void fastnn_loss_finish(const T* __restrict__ partials, long long m, T factor, int divide,
                                   T* __restrict__ out) {
    T acc = T(0);
    for (long long i = threadIdx.x; i < m; i += blockDim.x) acc += partials[i];
    acc = fastnn_block_sum(acc);
    if (threadIdx.x == 0) out[0] = divide ? acc / factor : acc * factor;
}

// Softmax cross-entropy of logits x: (n, c), one warp per row. Targets: dense t: (n, c) when
// dense != 0, else class indices idx: (n,) (negative counts from the end, as NumPy indexing;
// out of range gives a NaN loss). Per row: loss_r = lse * sum_j t_rj - sum_j t_rj x_rj.
// Writes probabilities into y when write_y, (softmax - t) / n_t into dx when write_dx
// (n_t = n in x's dtype), and one partial loss sum per block into partials[blockIdx.x].
template <typename T>
__global__ void fastnn_softmax_xent(const T* __restrict__ x, const T* __restrict__ t,
                                    const long long* __restrict__ idx, int dense,
                                    T* __restrict__ y, int write_y, T* __restrict__ dx, int write_dx,
                                    T* __restrict__ partials, long long n, long long c, T n_t) {
    const int lane = threadIdx.x & 31;
    const long long warps = ((long long)blockDim.x * gridDim.x) >> 5;
    T block_acc = T(0);  // meaningful in lane 0 of each warp
    for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < n; r += warps) {
        const T* xr = x + r * c;
        T m, s;
        fastnn_row_max_sumexp(xr, c, lane, m, s);
        const T lse = m + FMath<T>::log(s);
        long long k = -1;
        T row_loss;
        if (dense) {
            const T* tr = t + r * c;
            T tsum = T(0), tx = T(0);
            for (long long j = lane; j < c; j += 32) {
                tsum += tr[j];
                tx += tr[j] * xr[j];
            }
            tsum = fastnn_warp_sum(tsum);
            tx = fastnn_warp_sum(tx);
            row_loss = lse * tsum - tx;
        } else {
            k = idx[r];
            if (k < 0) k += c;
            row_loss = (k >= 0 && k < c) ? lse - xr[k] : FMath<T>::nan();
        }
        block_acc += row_loss;
        if (write_y || write_dx) {
            for (long long j = lane; j < c; j += 32) {
                const T p = FMath<T>::exp(xr[j] - m) / s;
                if (write_y) y[r * c + j] = p;
                if (write_dx) {
                    const T tj = dense ? t[r * c + j] : (j == k ? T(1) : T(0));
                    dx[r * c + j] = (p - tj) / n_t;
                }
            }
        }
    }
    // Lane 0 of every warp holds its rows' sum (all lanes hold it, after the shuffles).
    __shared__ T warp_sums[FASTNN_BLOCK / 32];
    if (lane == 0) warp_sums[threadIdx.x >> 5] = block_acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        T v = threadIdx.x < (FASTNN_BLOCK / 32) ? warp_sums[threadIdx.x] : T(0);
        v = fastnn_warp_sum(v);
        if (threadIdx.x == 0) partials[blockIdx.x] = v;
    }
}

// dx = (y - t) * scale over y: (n, c), scale = dout / n computed by the launcher in T.
template <typename T>
__global__ void fastnn_softmax_xent_backward(const T* __restrict__ y, const T* __restrict__ t,
                                             const long long* __restrict__ idx, int dense,
                                             T* __restrict__ dx, long long n, long long c, T scale) {
    const long long total = n * c, stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        T tj;
        if (dense) {
            tj = t[i];
        } else {
            long long k = idx[i / c];
            if (k < 0) k += c;
            tj = (i % c) == k ? T(1) : T(0);
        }
        dx[i] = (y[i] - tj) * scale;
    }
}

// Binary cross-entropy of logits x against targets t (same size): partial sums of
// max(x, 0) - x t + log1p(exp(-|x|)); y = sigmoid(x) when write_y; dx = (sigmoid(x) - t) / size_t.
template <typename T>
__global__ void fastnn_sigmoid_bce(const T* __restrict__ x, const T* __restrict__ t,
                                   T* __restrict__ y, int write_y, T* __restrict__ dx, int write_dx,
                                   T* __restrict__ partials, long long n, T size_t_) {
    typedef FMath<T> M;
    const T zero = T(0), half = T(0.5);
    const long long stride = (long long)blockDim.x * gridDim.x;
    T acc = zero;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T xi = x[i], ti = t[i];
        acc += ((xi < zero ? zero : xi) - xi * ti) + M::log1p(M::exp(-M::abs(xi)));
        if (write_y || write_dx) {
            const T p = half * M::tanh(half * xi) + half;
            if (write_y) y[i] = p;
            if (write_dx) dx[i] = (p - ti) / size_t_;
        }
    }
    acc = fastnn_block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Squared error: partial sums of (y - t)^2; dx = two_scale * (y - t) when write_dx.
template <typename T>
__global__ void fastnn_mse(const T* __restrict__ y, const T* __restrict__ t, T* __restrict__ dx, int write_dx,
                           T* __restrict__ partials, long long n, T two_scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    T acc = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T diff = y[i] - t[i];
        acc += diff * diff;
        if (write_dx) dx[i] = two_scale * diff;
    }
    acc = fastnn_block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
