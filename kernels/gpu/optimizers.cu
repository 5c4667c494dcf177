// fastnn optimizer kernels: one launch per step over the whole flat parameter buffer.
//
// Arithmetic mirrors Ops.*_step in fastnn/backend/ops.py operation for operation (the loader
// compiles with --fmad=false, so nothing is fused into an FMA that NumPy rounds twice), with the
// scalars computed on the host in the same precision as the reference. State values whose
// magnitude is below the dtype's smallest normal number are flushed to zero after the update,
// as the reference does (CuPy's -ftz=true only covers float32 arithmetic, not the stored state
// of float64 buffers).
//
// The gradient used by every rule: g' = g * scale (when use_scale), clipped to [-clip, clip] (when
// use_clip: Keras's clipvalue), + wd * p (when use_wd; AdaGrad, RMSprop, Nadam and Adamax follow Keras
// and decay p itself instead: p *= 1 - lr*wd). Every kernel's scalars end with clip, use_clip.
//
// Each update rule's per-element arithmetic lives once, in a __device__ __forceinline__
// fastnn_<rule>_elem shared by two kernels: fastnn_<rule>_step takes its scalars by value (the
// eager path), fastnn_<rule>_step_dev reads the same scalars, in the same order, from a device
// array of doubles s (T-typed scalars as (T)s[i], int flags as (int)s[i]), so a CUDA graph that
// captured it picks up each step's learning rate and Adam step count from memory. The host stores
// the double of each already-T-rounded scalar, which converts back exactly: both kernels compute
// bit-identical results for the same scalars.

// Shared helpers (common.cuh): FMath, fastnn_block_sum and FASTNN_BLOCK, the launcher's block size
// for fastnn_sq_norm / fastnn_sum_finish.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T fastnn_flush(T s) {
    return FMath<T>::abs(s) < FMath<T>::tiny() ? T(0) : s;
}

// max(a, b) as numpy.maximum: NaN when either is NaN (fmax would drop it).
template <typename T>
__device__ __forceinline__ T fastnn_max(T a, T b) {
    return (a > b || a != a) ? a : b;
}

// Comparisons, not fmin/fmax, for the clip: a NaN gradient stays NaN, as numpy.clip leaves it.
template <typename T>
__device__ __forceinline__ T fastnn_grad(T p, T g, T wd, T scale, T clip, int use_wd, int use_scale, int use_clip) {
    if (use_scale) g = g * scale;
    if (use_clip) g = g > clip ? clip : (g < -clip ? -clip : g);
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
__device__ __forceinline__ void fastnn_sgd_elem(T* __restrict__ p, const T* __restrict__ g, long long i, T lr, T wd,
                                                T scale, int use_wd, int use_scale, T clip, int use_clip) {
    const T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], wd, scale, clip, use_wd, use_scale, use_clip);
    p[i] = pi - lr * gi;
}

template <typename T>
__global__ void fastnn_sgd_step(T* __restrict__ p, const T* __restrict__ g, long long n, T lr, T wd, T scale,
                                int use_wd, int use_scale, T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_sgd_elem(p, g, i, lr, wd, scale, use_wd, use_scale, clip, use_clip);
}

// s = [lr, wd, scale, use_wd, use_scale, clip, use_clip]
template <typename T>
__global__ void fastnn_sgd_step_dev(T* __restrict__ p, const T* __restrict__ g, long long n,
                                    const double* __restrict__ s) {
    const T lr = (T)s[0], wd = (T)s[1], scale = (T)s[2], clip = (T)s[5];
    const int use_wd = (int)s[3], use_scale = (int)s[4], use_clip = (int)s[6];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_sgd_elem(p, g, i, lr, wd, scale, use_wd, use_scale, clip, use_clip);
}

// Momentum (the book's): v = m*v - lr*g'; p += v.  Nesterov (torch): v = m*v + g'; p -= lr*(g' + m*v).
template <typename T>
__device__ __forceinline__ void fastnn_momentum_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v,
                                                     long long i, T lr, T momentum, T wd, T scale, int use_wd,
                                                     int use_scale, int nesterov, T clip, int use_clip) {
    const T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], wd, scale, clip, use_wd, use_scale, use_clip);
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

template <typename T>
__global__ void fastnn_momentum_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n,
                                     T lr, T momentum, T wd, T scale, int use_wd, int use_scale, int nesterov,
                                     T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_momentum_elem(p, g, v, i, lr, momentum, wd, scale, use_wd, use_scale, nesterov, clip, use_clip);
}

// s = [lr, momentum, wd, scale, use_wd, use_scale, nesterov, clip, use_clip]
template <typename T>
__global__ void fastnn_momentum_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, long long n,
                                         const double* __restrict__ s) {
    const T lr = (T)s[0], momentum = (T)s[1], wd = (T)s[2], scale = (T)s[3], clip = (T)s[7];
    const int use_wd = (int)s[4], use_scale = (int)s[5], nesterov = (int)s[6], use_clip = (int)s[8];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_momentum_elem(p, g, v, i, lr, momentum, wd, scale, use_wd, use_scale, nesterov, clip, use_clip);
}

// AdaGrad, as Keras 3: p *= decay (when use_decay; decay = 1 - lr*wd, Keras's decoupled weight decay),
// h += g'^2; p -= lr*g' / sqrt(h + eps).
template <typename T>
__device__ __forceinline__ void fastnn_adagrad_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h,
                                                    long long i, T lr, T eps, T decay, T scale, int use_decay,
                                                    int use_scale, T clip, int use_clip) {
    T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], T(0), scale, clip, 0, use_scale, use_clip);
    if (use_decay) pi = pi * decay;
    const T hi = h[i] + gi * gi;
    p[i] = pi - (lr * gi) / FMath<T>::sqrt(hi + eps);
    h[i] = fastnn_flush(hi);
}

template <typename T>
__global__ void fastnn_adagrad_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                    T lr, T eps, T decay, T scale, int use_decay, int use_scale, T clip,
                                    int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adagrad_elem(p, g, h, i, lr, eps, decay, scale, use_decay, use_scale, clip, use_clip);
}

// s = [lr, eps, decay, scale, use_decay, use_scale, clip, use_clip]
template <typename T>
__global__ void fastnn_adagrad_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                        const double* __restrict__ s) {
    const T lr = (T)s[0], eps = (T)s[1], decay = (T)s[2], scale = (T)s[3], clip = (T)s[6];
    const int use_decay = (int)s[4], use_scale = (int)s[5], use_clip = (int)s[7];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adagrad_elem(p, g, h, i, lr, eps, decay, scale, use_decay, use_scale, clip, use_clip);
}

// RMSprop, as Keras 3: p *= decay (when use_decay), h = rho*h + (1-rho)*g'^2; p -= lr*g' / sqrt(h + eps).
template <typename T>
__device__ __forceinline__ void fastnn_rmsprop_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h,
                                                    long long i, T lr, T rho, T one_minus_rho, T eps, T decay,
                                                    T scale, int use_decay, int use_scale, T clip, int use_clip) {
    T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], T(0), scale, clip, 0, use_scale, use_clip);
    if (use_decay) pi = pi * decay;
    const T hi = h[i] * rho + (one_minus_rho * gi) * gi;
    p[i] = pi - (lr * gi) / FMath<T>::sqrt(hi + eps);
    h[i] = fastnn_flush(hi);
}

template <typename T>
__global__ void fastnn_rmsprop_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                    T lr, T rho, T one_minus_rho, T eps, T decay, T scale, int use_decay,
                                    int use_scale, T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_rmsprop_elem(p, g, h, i, lr, rho, one_minus_rho, eps, decay, scale, use_decay, use_scale, clip,
                            use_clip);
}

// s = [lr, rho, one_minus_rho, eps, decay, scale, use_decay, use_scale, clip, use_clip]
template <typename T>
__global__ void fastnn_rmsprop_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ h, long long n,
                                        const double* __restrict__ s) {
    const T lr = (T)s[0], rho = (T)s[1], one_minus_rho = (T)s[2], eps = (T)s[3], decay = (T)s[4], scale = (T)s[5];
    const T clip = (T)s[8];
    const int use_decay = (int)s[6], use_scale = (int)s[7], use_clip = (int)s[9];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_rmsprop_elem(p, g, h, i, lr, rho, one_minus_rho, eps, decay, scale, use_decay, use_scale, clip,
                            use_clip);
}

// Adam / AdamW: decay (AdamW, when use_decay) p *= decay_factor first, then
// m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2; p -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps).
// For AdamW the launcher passes use_wd = 0 (g' is not decayed), use_decay = 1.
// AMSGrad (amsgrad = 1, vhat the third slot): vhat = max(vhat, v) replaces v in the denominator. One
// body for both (Adam passes vhat = nullptr, amsgrad = 0: the branch folds away when inlined).
template <typename T>
__device__ __forceinline__ void fastnn_adam_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                                 T* __restrict__ v, T* __restrict__ vhat, int amsgrad, long long i,
                                                 T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                                 T step_size, T inv_sqrt_bc2, T wd, T scale, T decay_factor,
                                                 int use_wd, int use_scale, int use_decay, T clip, int use_clip) {
    T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], wd, scale, clip, use_wd, use_scale, use_clip);
    if (use_decay) pi = pi * decay_factor;
    const T mi = m[i] * beta1 + one_minus_beta1 * gi;
    const T vi = v[i] * beta2 + (one_minus_beta2 * gi) * gi;
    T vd = vi;
    if (amsgrad) {
        vd = fastnn_max(vhat[i], vi);
        vhat[i] = fastnn_flush(vd);
    }
    p[i] = pi - (step_size * mi) / (FMath<T>::sqrt(vd) * inv_sqrt_bc2 + eps);
    m[i] = fastnn_flush(mi);
    v[i] = fastnn_flush(vi);
}

template <typename T>
__global__ void fastnn_adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                                 long long n, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                 T step_size, T inv_sqrt_bc2, T wd, T scale, T decay_factor,
                                 int use_wd, int use_scale, int use_decay, T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adam_elem(p, g, m, v, (T*)nullptr, 0, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                         step_size, inv_sqrt_bc2, wd, scale, decay_factor, use_wd, use_scale, use_decay, clip,
                         use_clip);
}

// s = [beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inv_sqrt_bc2, wd, scale,
//      decay_factor, use_wd, use_scale, use_decay, clip, use_clip] (amsgrad: the same)
template <typename T>
__global__ void fastnn_adam_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                     T* __restrict__ v, long long n, const double* __restrict__ s) {
    const T beta1 = (T)s[0], one_minus_beta1 = (T)s[1], beta2 = (T)s[2], one_minus_beta2 = (T)s[3], eps = (T)s[4];
    const T step_size = (T)s[5], inv_sqrt_bc2 = (T)s[6], wd = (T)s[7], scale = (T)s[8], decay_factor = (T)s[9];
    const T clip = (T)s[13];
    const int use_wd = (int)s[10], use_scale = (int)s[11], use_decay = (int)s[12], use_clip = (int)s[14];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adam_elem(p, g, m, v, (T*)nullptr, 0, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                         step_size, inv_sqrt_bc2, wd, scale, decay_factor, use_wd, use_scale, use_decay, clip,
                         use_clip);
}

template <typename T>
__global__ void fastnn_amsgrad_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                    T* __restrict__ v, T* __restrict__ vhat, long long n, T beta1,
                                    T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T step_size,
                                    T inv_sqrt_bc2, T wd, T scale, T decay_factor, int use_wd, int use_scale,
                                    int use_decay, T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adam_elem(p, g, m, v, vhat, 1, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                         inv_sqrt_bc2, wd, scale, decay_factor, use_wd, use_scale, use_decay, clip, use_clip);
}

template <typename T>
__global__ void fastnn_amsgrad_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                        T* __restrict__ v, T* __restrict__ vhat, long long n,
                                        const double* __restrict__ s) {
    const T beta1 = (T)s[0], one_minus_beta1 = (T)s[1], beta2 = (T)s[2], one_minus_beta2 = (T)s[3], eps = (T)s[4];
    const T step_size = (T)s[5], inv_sqrt_bc2 = (T)s[6], wd = (T)s[7], scale = (T)s[8], decay_factor = (T)s[9];
    const T clip = (T)s[13];
    const int use_wd = (int)s[10], use_scale = (int)s[11], use_decay = (int)s[12], use_clip = (int)s[14];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adam_elem(p, g, m, v, vhat, 1, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                         inv_sqrt_bc2, wd, scale, decay_factor, use_wd, use_scale, use_decay, clip, use_clip);
}

// Nadam, as Keras 3: p *= decay (when use_decay); m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
// p -= (c_m*m + c_g*g') / (sqrt(v) * inv_sqrt_bc2 + eps), with the momentum-schedule coefficients
// c_m = lr*mu_{t+1}/(1 - mu_product*mu_{t+1}) and c_g = lr*(1 - mu_t)/(1 - mu_product) from the host.
template <typename T>
__device__ __forceinline__ void fastnn_nadam_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                                  T* __restrict__ v, long long i, T c_m, T c_g, T beta1,
                                                  T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                                  T inv_sqrt_bc2, T decay, T scale, int use_decay, int use_scale,
                                                  T clip, int use_clip) {
    T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], T(0), scale, clip, 0, use_scale, use_clip);
    if (use_decay) pi = pi * decay;
    const T mi = m[i] * beta1 + one_minus_beta1 * gi;
    const T vi = v[i] * beta2 + (one_minus_beta2 * gi) * gi;
    p[i] = pi - (c_m * mi + c_g * gi) / (FMath<T>::sqrt(vi) * inv_sqrt_bc2 + eps);
    m[i] = fastnn_flush(mi);
    v[i] = fastnn_flush(vi);
}

template <typename T>
__global__ void fastnn_nadam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                                  long long n, T c_m, T c_g, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,
                                  T eps, T inv_sqrt_bc2, T decay, T scale, int use_decay, int use_scale, T clip,
                                  int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_nadam_elem(p, g, m, v, i, c_m, c_g, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                          inv_sqrt_bc2, decay, scale, use_decay, use_scale, clip, use_clip);
}

// s = [c_m, c_g, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_sqrt_bc2, decay, scale,
//      use_decay, use_scale, clip, use_clip]
template <typename T>
__global__ void fastnn_nadam_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                      T* __restrict__ v, long long n, const double* __restrict__ s) {
    const T c_m = (T)s[0], c_g = (T)s[1], beta1 = (T)s[2], one_minus_beta1 = (T)s[3], beta2 = (T)s[4];
    const T one_minus_beta2 = (T)s[5], eps = (T)s[6], inv_sqrt_bc2 = (T)s[7], decay = (T)s[8], scale = (T)s[9];
    const T clip = (T)s[12];
    const int use_decay = (int)s[10], use_scale = (int)s[11], use_clip = (int)s[13];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_nadam_elem(p, g, m, v, i, c_m, c_g, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                          inv_sqrt_bc2, decay, scale, use_decay, use_scale, clip, use_clip);
}

// Adamax, as Keras 3: p *= decay (when use_decay); m = b1*m + (1-b1)*g'; u = max(b2*u, |g'|);
// p -= step_size * m / (u + eps), step_size = lr / (1 - b1^t).
template <typename T>
__device__ __forceinline__ void fastnn_adamax_elem(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                                   T* __restrict__ u, long long i, T step_size, T beta1,
                                                   T one_minus_beta1, T beta2, T eps, T decay, T scale,
                                                   int use_decay, int use_scale, T clip, int use_clip) {
    T pi = p[i];
    const T gi = fastnn_grad(pi, g[i], T(0), scale, clip, 0, use_scale, use_clip);
    if (use_decay) pi = pi * decay;
    const T mi = m[i] * beta1 + one_minus_beta1 * gi;
    const T ui = fastnn_max(u[i] * beta2, FMath<T>::abs(gi));
    p[i] = pi - (step_size * mi) / (ui + eps);
    m[i] = fastnn_flush(mi);
    u[i] = fastnn_flush(ui);
}

template <typename T>
__global__ void fastnn_adamax_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ u,
                                   long long n, T step_size, T beta1, T one_minus_beta1, T beta2, T eps, T decay,
                                   T scale, int use_decay, int use_scale, T clip, int use_clip) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adamax_elem(p, g, m, u, i, step_size, beta1, one_minus_beta1, beta2, eps, decay, scale, use_decay,
                           use_scale, clip, use_clip);
}

// s = [step_size, beta1, one_minus_beta1, beta2, eps, decay, scale, use_decay, use_scale, clip, use_clip]
template <typename T>
__global__ void fastnn_adamax_step_dev(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                                       T* __restrict__ u, long long n, const double* __restrict__ s) {
    const T step_size = (T)s[0], beta1 = (T)s[1], one_minus_beta1 = (T)s[2], beta2 = (T)s[3], eps = (T)s[4];
    const T decay = (T)s[5], scale = (T)s[6], clip = (T)s[9];
    const int use_decay = (int)s[7], use_scale = (int)s[8], use_clip = (int)s[10];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        fastnn_adamax_elem(p, g, m, u, i, step_size, beta1, one_minus_beta1, beta2, eps, decay, scale, use_decay,
                           use_scale, clip, use_clip);
}
