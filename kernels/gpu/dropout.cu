// fastnn dropout mask: the counter-based splitmix64 hash of kernels/__init__.py, bit for bit the
// same mask as the NumPy reference (Ops.dropout_mask) and the Numba kernel.
//
// Element e of the (n, d) mask (row r = e / d, unit j = e % d) is global element
// i = (row0 + r) * d + j = row0 * d + e; it draws h = mix64(base + i * GOLDEN) (uint64 arithmetic
// wraps as NumPy's does), u = (h >> 40) * 2^-24 in double, and is kept when u >= rate.
// base = dropout_base(seed, step) is computed on the host: fastnn_dropout_mask takes it by value,
// fastnn_dropout_mask_dev reads it from base[0] in device memory (a captured CUDA graph replays
// with each step's base written there). Both draw through fastnn_dropout_u, so their masks are
// bitwise equal for the same base.

#include "common.cuh"

// u in [0, 1) for global element i of the stream started at base: the top 24 bits of
// mix64(base + i * GOLDEN), scaled by 2^-24 in double.
__device__ __forceinline__ double fastnn_dropout_u(unsigned long long base, unsigned long long i) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ULL;
    unsigned long long z = base + i * golden;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (double)(z >> 40) * (1.0 / 16777216.0);
}

template <typename T>
__global__ void fastnn_dropout_mask(T* __restrict__ out, long long n, unsigned long long base,
                                    unsigned long long first, double rate, T scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride)
        out[e] = fastnn_dropout_u(base, first + (unsigned long long)e) >= rate ? scale : T(0);
}

// The same mask with the stream start read from device memory (base[0]) instead of by value.
template <typename T>
__global__ void fastnn_dropout_mask_dev(T* __restrict__ out, long long n, const unsigned long long* __restrict__ base,
                                        unsigned long long first, double rate, T scale) {
    const unsigned long long b = base[0];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride)
        out[e] = fastnn_dropout_u(b, first + (unsigned long long)e) >= rate ? scale : T(0);
}
