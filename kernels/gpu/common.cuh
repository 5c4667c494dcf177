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
#define FASTNN_SELU 7
#define FASTNN_GELU 8
#define FASTNN_GELU_TANH 9
#define FASTNN_SWISH 10

// The launcher's block sizes (kernels/gpu/_loader.py: BLOCK and COL_BLOCK; a test checks they agree).
#define FASTNN_BLOCK 256  // threads per block of fastnn_block_sum's callers (1-D reductions)
#define FASTNN_COLS 32    // column reductions: blocks of FASTNN_COLS columns by FASTNN_ROWS rows
#define FASTNN_ROWS 8

// Math functions by type: FMath<T>::f calls the float (expf, ...) or double (::exp, ...) built-in.
template <typename T> struct FMath;
template <> struct FMath<float> {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float expm1(float x) { return expm1f(x); }
    static __device__ __forceinline__ float erfc(float x) { return erfcf(x); }
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
    static __device__ __forceinline__ double erfc(double x) { return ::erfc(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
    static __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
    static __device__ __forceinline__ double abs(double x) { return ::fabs(x); }
    static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
    static __device__ __forceinline__ double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
    static __device__ __forceinline__ double tiny() { return 2.2250738585072013830902e-308; }  // DBL_MIN
};

// Constants of selu and gelu (kernels/__init__.py: SELU_SCALE, SELU_ALPHA, GELU_TANH_C, GELU_CLIP;
// fastnn/backend/ops.py: the derived ones), rounded to T where they are used.
#define FASTNN_SELU_SCALE 1.0507009873554804934193349852946
#define FASTNN_SELU_SA 1.7580993408473766           // SELU_SCALE * SELU_ALPHA
#define FASTNN_SQRT1_2 0.70710678118654752440       // 1 / sqrt(2)
#define FASTNN_INV_SQRT_2PI 0.39894228040143267794  // 1 / sqrt(2 pi)
#define FASTNN_GELU_TANH_K2 1.5957691216057307117   // 2 sqrt(2 / pi)
#define FASTNN_GELU_TANH_C 0.044715
#define FASTNN_GELU_TANH_C3 0.134145                // 3 * 0.044715
#define FASTNN_GELU_CLIP 40.0

// sigmoid(v) = v >= 0 ? p : e p, with e = exp(-|v|), p = 1 / (1 + e); s (1 - s) = e p^2. Accurate in
// both tails, finite for any v (as Ops._sigmoid_parts).
template <typename T>
__device__ __forceinline__ T fastnn_sigmoid_parts(T v, T& e, T& p) {
    e = FMath<T>::exp(-FMath<T>::abs(v));
    p = T(1) / (T(1) + e);
    return v >= T(0) ? p : e * p;
}

// z clipped to +-40, where gelu's exponentials are 0 in float and double alike (so no result
// changes, but z^2 and z^3 cannot overflow), as Ops._gelu_clip.
template <typename T>
__device__ __forceinline__ T fastnn_gelu_clip(T z) {
    const T lim = T(FASTNN_GELU_CLIP);
    return z < -lim ? -lim : (z > lim ? lim : z);
}

// gelu's tanh form: w = fastnn_gelu_clip(z) and v = 2 sqrt(2/pi) (w + 0.044715 w^3) (as Ops._gelu_tanh_v).
template <typename T>
__device__ __forceinline__ T fastnn_gelu_tanh_v(T z, T& w) {
    w = fastnn_gelu_clip(z);
    return T(FASTNN_GELU_TANH_K2) * (w + T(FASTNN_GELU_TANH_C) * (w * w * w));
}

// act(z), as Ops._act. NaN stays NaN for every code (comparisons are written so it falls through).
template <typename T>
__device__ __forceinline__ T fastnn_act(T z, int act, T alpha) {
    typedef FMath<T> M;
    const T zero = T(0), half = T(0.5);
    T e, p, w;
    switch (act) {
    case FASTNN_RELU: return z < zero ? zero : z;
    case FASTNN_SIGMOID: return half * M::tanh(half * z) + half;  // never overflows
    case FASTNN_TANH: return M::tanh(z);
    case FASTNN_LEAKY_RELU: return z > zero ? z : alpha * z;
    case FASTNN_ELU: return z > zero ? z : alpha * M::expm1(z < zero ? z : zero);
    case FASTNN_SOFTPLUS:  // max(z, 0) + log1p(exp(-|z|)), finite for any z
        return (z < zero ? zero : z) + M::log1p(M::exp(-M::abs(z)));
    case FASTNN_SELU:  // scale * elu(z, alpha), Keras's constants (alpha is not read)
        return z > zero ? T(FASTNN_SELU_SCALE) * z : T(FASTNN_SELU_SA) * M::expm1(z < zero ? z : zero);
    case FASTNN_GELU:  // z Phi(z), Phi(z) = erfc(-z / sqrt 2) / 2 (no cancellation in the negative tail)
        return z * (half * M::erfc(-z * T(FASTNN_SQRT1_2)));
    case FASTNN_GELU_TANH:  // 0.5 z (1 + tanh(u)) = z sigmoid(2u)
        return z * fastnn_sigmoid_parts(fastnn_gelu_tanh_v(z, w), e, p);
    case FASTNN_SWISH: return z * fastnn_sigmoid_parts(z, e, p);
    default: return z;  // LINEAR (the launchers reject unknown codes)
    }
}

// act'(z) written from the output y, as Ops._act_grad; NaN for the codes whose derivative is no
// function of y (gelu, gelu_tanh, swish: fastnn_act_grad_z, which the launchers route them to).
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
    case FASTNN_SELU: return y > zero ? T(FASTNN_SELU_SCALE) : y + T(FASTNN_SELU_SA);
    case FASTNN_GELU: case FASTNN_GELU_TANH: case FASTNN_SWISH: return FMath<T>::nan();
    default: return one;  // LINEAR
    }
}

// act'(z) from the pre-activation z, for gelu, gelu_tanh and swish (as Ops._act_grad_z).
template <typename T>
__device__ __forceinline__ T fastnn_act_grad_z(T z, int act) {
    typedef FMath<T> M;
    const T half = T(0.5), one = T(1);
    T e, p, w, s;
    switch (act) {
    case FASTNN_GELU:  // Phi(z) + z phi(z)
        w = fastnn_gelu_clip(z);
        return half * M::erfc(-z * T(FASTNN_SQRT1_2)) + z * (T(FASTNN_INV_SQRT_2PI) * M::exp(-half * w * w));
    case FASTNN_GELU_TANH:  // s + z s (1 - s) dv/dz
        s = fastnn_sigmoid_parts(fastnn_gelu_tanh_v(z, w), e, p);
        return s + z * (e * p * p) * (T(FASTNN_GELU_TANH_K2) * (one + T(FASTNN_GELU_TANH_C3) * (w * w)));
    case FASTNN_SWISH:
        s = fastnn_sigmoid_parts(z, e, p);
        return s + z * (e * p * p);
    default: return M::nan();  // not one of these codes (the launchers never send one)
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

// Row tiles of the column reductions on a 2-D grid (blockIdx.y is a tile of `tile` rows): this
// block's rows [r0, r1) of n.
#define FASTNN_TILE_ROWS(tile, n) \
    const long long r0 = (long long)blockIdx.y * (tile); \
    const long long r1 = r0 + (tile) < (n) ? r0 + (tile) : (n);

#endif  // FASTNN_COMMON_CUH
