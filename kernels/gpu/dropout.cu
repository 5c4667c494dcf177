// fastnn dropout mask: the counter-based splitmix64 hash of kernels/__init__.py, bit for bit the
// same mask as the NumPy reference (Ops.dropout_mask) and the Numba kernel.
//
// Element e of the (n, d) mask (row r = e / d, unit j = e % d) is global element
// i = (row0 + r) * d + j = row0 * d + e; it draws h = mix64(base + i * GOLDEN) (uint64 arithmetic
// wraps as NumPy's does), u = (h >> 40) * 2^-24 in double, and is kept when u >= rate.
// base = dropout_base(seed, step) is computed on the host.
// Uses no shared helper yet; includes common.cuh like every family.

#include "common.cuh"

template <typename T>
__global__ void fastnn_dropout_mask(T* __restrict__ out, long long n, unsigned long long base,
                                    unsigned long long first, double rate, T scale) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ULL;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        unsigned long long z = base + (first + (unsigned long long)e) * golden;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z = z ^ (z >> 31);
        const double u = (double)(z >> 40) * (1.0 / 16777216.0);
        out[e] = u >= rate ? scale : T(0);
    }
}
