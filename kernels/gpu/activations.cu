// fastnn activation kernels: bias + activation forward, activation backward, bias gradient,
// the fused backward + bias gradient, row-wise softmax and the elementwise product.
//
// Templates over T (float, double), instantiated through CuPy's name_expressions. The shared
// helpers (FMath, fastnn_act / fastnn_act_grad and the activation codes, warp sums, the column
// reduction) are in common.cuh. Formulas mirror fastnn/backend/ops.py (the NumPy reference)
// operation for operation; the loader compiles with --fmad=false so products and sums round as
// NumPy's do. Activation codes: kernels/__init__.py (append-only).

#include "common.cuh"

// y = act(x + b); b broadcast over rows of width d (has_bias == 0: no bias, b is not read).
template <typename T, typename I>
__device__ __forceinline__ void fastnn_bias_act_body(const T* __restrict__ x, const T* __restrict__ b,
                                                     T* __restrict__ y, I n, I d, int has_bias, int act, T alpha) {
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T z = has_bias ? x[i] + b[i % d] : x[i];
        y[i] = fastnn_act(z, act, alpha);
    }
}

template <typename T>
__global__ void fastnn_bias_act(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y, long long n,
                                long long d, int has_bias, int act, T alpha, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_bias_act_body<T, int>(x, b, y, (int)n, (int)d, has_bias, act, alpha);
    else
        fastnn_bias_act_body<T, long long>(x, b, y, n, d, has_bias, act, alpha);
}

// dz = dout * act'(y).
template <typename T>
__global__ void fastnn_act_backward(const T* __restrict__ dout, const T* __restrict__ y, T* __restrict__ dz,
                                    long long n, int act, T alpha) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dz[i] = dout[i] * fastnn_act_grad(y[i], act, alpha);
    }
}

// Column reductions on a 2-D grid: blockIdx.x walks column groups of FASTNN_COLS (grid-stride),
// blockIdx.y is a tile of `tile` rows. Block (FASTNN_COLS, FASTNN_ROWS): threadIdx.x walks the
// columns (coalesced), threadIdx.y strides over the tile's rows; sums accumulate in double
// (fastnn_acc). One tile (gridDim.y == 1): the block writes db[j]. Several: it writes its partial
// sum to partial[blockIdx.y * d + j], and fastnn_col_finish adds the tiles in tile order into db
// (no atomics: the result does not depend on the blocks' timing). The launcher picks the tiling
// (kernels/gpu/_loader.py: column_tiles) so that enough blocks keep every SM busy.

// A column total: into db (one tile) or into the tile's row of partial.
template <typename T>
__device__ __forceinline__ void fastnn_col_store(T* __restrict__ db, fastnn_acc* __restrict__ partial,
                                                 long long d, long long j, fastnn_acc total) {
    if (threadIdx.y != 0 || j >= d) return;
    if (gridDim.y == 1) db[j] = T(total);
    else partial[(long long)blockIdx.y * d + j] = total;
}

// db[j] = the sum over t < tiles of partial[t * d + j], in order of t.
template <typename T>
__global__ void fastnn_col_finish(const fastnn_acc* __restrict__ partial, T* __restrict__ db,
                                  long long tiles, long long d) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < d; j += stride) {
        fastnn_acc acc = 0;
        for (long long t = 0; t < tiles; ++t) acc += partial[t * d + j];
        db[j] = T(acc);
    }
}

// db[j] = sum_i dz[i, j].
template <typename T>
__global__ void fastnn_bias_grad(const T* __restrict__ dz, T* __restrict__ db, long long n, long long d,
                                 long long tile, fastnn_acc* __restrict__ partial) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        fastnn_acc acc = 0;
        if (j < d) {
            for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) acc += dz[i * d + j];
        }
        fastnn_col_store(db, partial, d, j, fastnn_column_total(part, acc));
    }
}

// dz = dout * act'(y) and db = dz.sum(0) in one pass over the (n, d) arrays.
template <typename T>
__global__ void fastnn_act_backward_bias_grad(const T* __restrict__ dout, const T* __restrict__ y,
                                              T* __restrict__ dz, T* __restrict__ db,
                                              long long n, long long d, int act, T alpha,
                                              long long tile, fastnn_acc* __restrict__ partial) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        fastnn_acc acc = 0;
        if (j < d) {
            for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
                const long long k = i * d + j;
                const T g = dout[k] * fastnn_act_grad(y[k], act, alpha);
                dz[k] = g;
                acc += g;
            }
        }
        fastnn_col_store(db, partial, d, j, fastnn_column_total(part, acc));
    }
}

// ---- Activations whose derivative needs the pre-activation z (gelu, gelu_tanh, swish: NEEDS_Z).

// y = act(x + b) and z = x + b (has_bias == 0: z = x). z may be x itself (a layer keeps its GEMM
// output as z), so neither is __restrict__.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_bias_act_z_body(const T* x, const T* __restrict__ b, T* __restrict__ y,
                                                       T* z, I n, I d, int has_bias, int act, T alpha) {
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = has_bias ? x[i] + b[i % d] : x[i];
        z[i] = v;
        y[i] = fastnn_act(v, act, alpha);
    }
}

template <typename T>
__global__ void fastnn_bias_act_z(const T* x, const T* __restrict__ b, T* __restrict__ y, T* z, long long n,
                                  long long d, int has_bias, int act, T alpha, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_bias_act_z_body<T, int>(x, b, y, z, (int)n, (int)d, has_bias, act, alpha);
    else
        fastnn_bias_act_z_body<T, long long>(x, b, y, z, n, d, has_bias, act, alpha);
}

// dz = dout * act'(z), from the pre-activation z.
template <typename T>
__global__ void fastnn_act_backward_z(const T* __restrict__ dout, const T* __restrict__ z, T* __restrict__ dz,
                                      long long n, int act) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dz[i] = dout[i] * fastnn_act_grad_z(z[i], act);
    }
}

// dz = dout * act'(z) and db = dz.sum(0) in one pass, from the pre-activation z (as
// fastnn_act_backward_bias_grad).
template <typename T>
__global__ void fastnn_act_backward_z_bias_grad(const T* __restrict__ dout, const T* __restrict__ z,
                                                T* __restrict__ dz, T* __restrict__ db,
                                                long long n, long long d, int act,
                                                long long tile, fastnn_acc* __restrict__ partial) {
    __shared__ fastnn_acc part[FASTNN_ROWS][FASTNN_COLS + 1];
    FASTNN_TILE_ROWS(tile, n)
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        fastnn_acc acc = 0;
        if (j < d) {
            for (long long i = r0 + threadIdx.y; i < r1; i += FASTNN_ROWS) {
                const long long k = i * d + j;
                const T g = dout[k] * fastnn_act_grad_z(z[k], act);
                dz[k] = g;
                acc += g;
            }
        }
        fastnn_col_store(db, partial, d, j, fastnn_column_total(part, acc));
    }
}

// Row-wise softmax of x: (n, c), one warp per row (grid-stride over rows), max-subtracted:
// y = exp(x - max) / sum(exp(x - max)).
template <typename T>
__global__ void fastnn_softmax(const T* __restrict__ x, T* __restrict__ y, long long n, long long c) {
    const int lane = threadIdx.x & 31;
    const long long warps = ((long long)blockDim.x * gridDim.x) >> 5;
    for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < n; r += warps) {
        const T* xr = x + r * c;
        T m, s;
        fastnn_row_max_sumexp(xr, c, lane, m, s);
        for (long long j = lane; j < c; j += 32) y[r * c + j] = FMath<T>::exp(xr[j] - m) / s;
    }
}

// out = a * b elementwise.
template <typename T>
__global__ void fastnn_mul(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, long long n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = a[i] * b[i];
}
