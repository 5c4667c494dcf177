// fastnn optimizer kernels: one launch per step over the whole flat parameter buffer.
//
// Arithmetic mirrors Ops.*_step in fastnn/backend/ops.py operation for operation (the loader
// compiles with --fmad=false, so nothing is fused into an FMA that NumPy rounds twice), with the
// scalars computed on the host in the same precision as the reference. State values whose
// magnitude is below the dtype's smallest normal number are flushed to zero after the update,
// as the reference does (CuPy's -ftz=true only covers float32 arithmetic, not the stored state
// of float64 buffers).
//
// The gradient used by every rule: g' = g * scale (when use_scale) + wd * p (when use_wd).

// Shared helpers (common.cuh): FMath, fastnn_block_sum and FASTNN_BLOCK, the launcher's block size
// for fastnn_sq_norm / fastnn_sum_finish.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T fastnn_flush(T s) {
    return FMath<T>::abs(s) < FMath<T>::tiny() ? T(0) : s;
}

template <typename T>
__device__ __forceinline__ T fastnn_grad(T p, T g, T wd, T scale, int use_wd, int use_scale) {
    if (use_scale) g = g * scale;
    if (use_wd) g = g + wd * p;
    return g;
}

// partials[blockIdx.x] = sum over this block's share of x[i]^2.
template <typename T>
__global__ void fastnn_sq_norm(const T* __restrict__ x, T* __restrict__ partials, long long n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    T acc = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc += x[i] * x[i];
    acc = fastnn_block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// out[0] = sum(partials); one block of FASTNN_BLOCK threads.
template <typename T>
__global__ void fastnn_sum_finish(const T* __restrict__ partials, long long m, T* __restrict__ out) {
    T acc = T(0);
    for (long long i = threadIdx.x; i < m; i += blockDim.x) acc += partials[i];
    acc = fastnn_block_sum(acc);
    if (threadIdx.x == 0) out[0] = acc;
}

// SGD: p -= lr * g'.
template <typename T>
__global__ void fastnn_sgd_step(T* __restrict__ p, const T* __restrict__ g, long long n, T lr, T wd, T scale,
                                int use_wd, int use_scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gi = fastnn_grad(pi, g[i], wd, scale, use_wd, use_scale);
        p[i] = pi - lr * gi;
    }
}

// Momentum (the book's): v = m*v - lr*g'; p += v.  Nesterov (torch): v = m*v + g'; p -= lr*(g' + m*v).
template <typename T>
__global__ void fastnn_momentum_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n,
                                     T lr, T momentum, T wd, T scale, int use_wd, int use_scale, int nesterov) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gi = fastnn_grad(pi, g[i], wd, scale, use_wd, use_scale);
        T vi = v[i] * momentum;
        if (nesterov) {
            vi = vi + gi;
            p[i] = pi - lr * (gi + momentum * vi);
        } else {
            vi = vi - lr * gi;
            p[i] = pi + vi;
        }
        v[i] = fastnn_flush(vi);
    }
}

// AdaGrad: h += g'^2; p -= lr*g' / (sqrt(h) + eps).
template <typename T>
__global__ void fastnn_adagrad_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                    T lr, T eps, T wd, T scale, int use_wd, int use_scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gi = fastnn_grad(pi, g[i], wd, scale, use_wd, use_scale);
        const T hi = h[i] + gi * gi;
        p[i] = pi - (lr * gi) / (FMath<T>::sqrt(hi) + eps);
        h[i] = fastnn_flush(hi);
    }
}

// RMSprop: h = rho*h + (1-rho)*g'^2; p -= lr*g' / (sqrt(h) + eps).
template <typename T>
__global__ void fastnn_rmsprop_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                    T lr, T rho, T one_minus_rho, T eps, T wd, T scale, int use_wd, int use_scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T pi = p[i];
        const T gi = fastnn_grad(pi, g[i], wd, scale, use_wd, use_scale);
        const T hi = h[i] * rho + (one_minus_rho * gi) * gi;
        p[i] = pi - (lr * gi) / (FMath<T>::sqrt(hi) + eps);
        h[i] = fastnn_flush(hi);
    }
}

// Adam / AdamW: decay (AdamW, when use_decay) p *= decay_factor first, then
// m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2; p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps).
// For AdamW the launcher passes use_wd = 0 (g' is not decayed), use_decay = 1.
template <typename T>
__global__ void fastnn_adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                                 long long n, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                 T step_size, T inv_sqrt_bc2, T wd, T scale, T decay_factor,
                                 int use_wd, int use_scale, int use_decay) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T pi = p[i];
        const T gi = fastnn_grad(pi, g[i], wd, scale, use_wd, use_scale);
        if (use_decay) pi = pi * decay_factor;
        const T mi = m[i] * beta1 + one_minus_beta1 * gi;
        const T vi = v[i] * beta2 + (one_minus_beta2 * gi) * gi;
        p[i] = pi - (step_size * mi) / (FMath<T>::sqrt(vi) * inv_sqrt_bc2 + eps);
        m[i] = fastnn_flush(mi);
        v[i] = fastnn_flush(vi);
    }
}
