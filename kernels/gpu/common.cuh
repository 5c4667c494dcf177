// fastnn device helpers shared by the kernel families in kernels/gpu/*.cu: the FMath<T> math
// wrappers, the activation codes with their forward and gradient functions, warp and block sums
// and the shared-memory column reduction. Device functions and macros only: no __global__ kernel
// lives here (each family's kernels stay in its own .cu).
//
// Each .cu includes this file with the one line  #include "common.cuh"  (no other quoted include).
// At run time the loader (_loader.source) pastes this text in place of that line before handing
// the source to NVRTC, so CuPy's kernel cache, keyed on the source string, sees every change to
// this header; nvcc (tests/test_cuda_compile.py) resolves the include next to the .cu instead.
// Only CUDA built-ins are used (math functions, __shfl_xor_sync): no system headers.

#ifndef FASTNN_COMMON_CUH
#define FASTNN_COMMON_CUH

// Activation codes: kernels/__init__.py (append-only). Used by activations.cu and conv.cu.
#define FASTNN_LINEAR 0
#define FASTNN_RELU 1
#define FASTNN_SIGMOID 2
#define FASTNN_TANH 3
#define FASTNN_LEAKY_RELU 4
#define FASTNN_ELU 5
#define FASTNN_SOFTPLUS 6

// The launcher's block sizes (kernels/gpu/_loader.py: BLOCK and COL_BLOCK; a test checks they agree).
#define FASTNN_BLOCK 256  // threads per block of fastnn_block_sum's callers (1-D reductions)
#define FASTNN_COLS 32    // column reductions: blocks of FASTNN_COLS columns by FASTNN_ROWS rows
#define FASTNN_ROWS 8

// Math functions by type: FMath<T>::f calls the float (expf, ...) or double (::exp, ...) built-in.
template <typename T> struct FMath;
template <> struct FMath<float> {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float expm1(float x) { return expm1f(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ float log1p(float x) { return log1pf(x); }
    static __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
    static __device__ __forceinline__ float abs(float x) { return fabsf(x); }
    static __device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
    static __device__ __forceinline__ float nan() { return __int_as_float(0x7fc00000); }
    static __device__ __forceinline__ float tiny() { return 1.17549435082228750797e-38f; }  // FLT_MIN
};
template <> struct FMath<double> {
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
    static __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
    static __device__ __forceinline__ double abs(double x) { return ::fabs(x); }
    static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
    static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
    static __device__ __forceinline__ double tiny() { return 2.2250738585072013830902e-308; }  // DBL_MIN
};

// act(z), as Ops._act. NaN stays NaN for every code (comparisons are written so it falls through).
template <typename T>
__device__ __forceinline__ T fastnn_act(T z, int act, T alpha) {
    typedef FMath<T> M;
    const T zero = T(0), half = T(0.5);
    switch (act) {
    case FASTNN_RELU: return z < zero ? zero : z;
    case FASTNN_SIGMOID: return half * M::tanh(half * z) + half;  // never overflows
    case FASTNN_TANH: return M::tanh(z);
    case FASTNN_LEAKY_RELU: return z > zero ? z : alpha * z;
    case FASTNN_ELU: return z > zero ? z : alpha * M::expm1(z < zero ? z : zero);
    case FASTNN_SOFTPLUS:  // max(z, 0) + log1p(exp(-|z|)), finite for any z
        return (z < zero ? zero : z) + M::log1p(M::exp(-M::abs(z)));
    default: return z;  // LINEAR (the launchers reject unknown codes)
    }
}

// act'(z) written from the output y, as Ops._act_grad.
template <typename T>
__device__ __forceinline__ T fastnn_act_grad(T y, int act, T alpha) {
    const T zero = T(0), one = T(1);
    switch (act) {
    case FASTNN_RELU: return y > zero ? one : zero;
    case FASTNN_SIGMOID: return y * (one - y);
    case FASTNN_TANH: return one - y * y;
    case FASTNN_LEAKY_RELU: return y > zero ? one : alpha;
    case FASTNN_ELU: return y > zero ? one : y + alpha;  // z <= 0: dy/dz = alpha e^z = y + alpha
    case FASTNN_SOFTPLUS: return -FMath<T>::expm1(-y);    // sigmoid(z) = 1 - e^-y
    default: return one;  // LINEAR
    }
}

// Maximum of v over the warp (all 32 lanes active); every lane gets it.
template <typename T>
__device__ __forceinline__ T fastnn_warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Sum of v over the warp (all 32 lanes active), in a fixed butterfly order; every lane gets it.
template <typename T>
__device__ __forceinline__ T fastnn_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp's pass over a row xr[0..c) (lane = this thread's lane): its maximum m and
// s = sum(exp(xr - m)), both in every lane, as the softmax and softmax-cross-entropy kernels need.
template <typename T>
__device__ __forceinline__ void fastnn_row_max_sumexp(const T* __restrict__ xr, long long c, int lane, T& m, T& s) {
    m = xr[0];
    for (long long j = lane; j < c; j += 32) m = xr[j] > m ? xr[j] : m;
    m = fastnn_warp_max(m);
    s = T(0);
    for (long long j = lane; j < c; j += 32) s += FMath<T>::exp(xr[j] - m);
    s = fastnn_warp_sum(s);
}

// Sum of v over the block (blockDim.x == FASTNN_BLOCK); the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T fastnn_block_sum(T v) {
    __shared__ T warp_sums[FASTNN_BLOCK / 32];
    v = fastnn_warp_sum(v);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (FASTNN_BLOCK / 32) ? warp_sums[threadIdx.x] : T(0);
        v = fastnn_warp_sum(v);
    }
    return v;
}

// Column sums accumulate in double for float and double alike: each thread's strided partial sum
// and the FASTNN_ROWS partials are doubles, so a float32 column sum is off by one final rounding
// plus about 2^-53 * n * sum|x|, never the float32 error of 8 long sequential sums (which grew
// like 2^-24 * sum|x| and failed the tests' bound on cancelling columns).
typedef double fastnn_acc;

// Block (FASTNN_COLS, FASTNN_ROWS): sum the FASTNN_ROWS partial sums of each column in shared
// memory; every thread of the column gets the total. Every thread of the block must call it.
__device__ __forceinline__ fastnn_acc fastnn_column_total(fastnn_acc (*part)[FASTNN_COLS + 1], fastnn_acc acc) {
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = FASTNN_ROWS / 2; s > 0; s >>= 1) {
        if (threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    fastnn_acc total = part[0][threadIdx.x];
    __syncthreads();  // part may be reused by the caller's next reduction or column group
    return total;
}

#endif  // FASTNN_COMMON_CUH
