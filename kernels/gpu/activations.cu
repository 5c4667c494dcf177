// fastnn activation kernels: bias + activation forward, activation backward, bias gradient,
// the fused backward + bias gradient, row-wise softmax and the elementwise product.
//
// Templates over T (float, double), instantiated through CuPy's name_expressions. Compiled by
// NVRTC with no headers: only CUDA built-ins (math functions, __shfl_xor_sync) are used.
// Formulas mirror fastnn/backend/ops.py (the NumPy reference) operation for operation; the
// loader compiles with --fmad=false so products and sums round as NumPy's do.
// Activation codes: kernels/__init__.py (append-only).

#define FASTNN_LINEAR 0
#define FASTNN_RELU 1
#define FASTNN_SIGMOID 2
#define FASTNN_TANH 3
#define FASTNN_LEAKY_RELU 4
#define FASTNN_ELU 5
#define FASTNN_SOFTPLUS 6

// Column reductions use blocks of FASTNN_COLS columns by FASTNN_ROWS rows (the launcher's block).
#define FASTNN_COLS 32
#define FASTNN_ROWS 8

template <typename T> struct FMath;
template <> struct FMath<float> {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float expm1(float x) { return expm1f(x); }
    static __device__ __forceinline__ float log1p(float x) { return log1pf(x); }
    static __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
    static __device__ __forceinline__ float abs(float x) { return fabsf(x); }
};
template <> struct FMath<double> {
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
    static __device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
    static __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
    static __device__ __forceinline__ double abs(double x) { return ::fabs(x); }
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
    default: return z;  // LINEAR (the launcher rejects unknown codes)
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
    default: return one;
    }
}

// y = act(x + b); b broadcast over rows of width d (has_bias == 0: no bias, b is not read).
template <typename T>
__global__ void fastnn_bias_act(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                                long long n, long long d, int has_bias, int act, T alpha) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T z = has_bias ? x[i] + b[i % d] : x[i];
        y[i] = fastnn_act(z, act, alpha);
    }
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

// Sum the FASTNN_ROWS partial sums of each column held in shared memory; thread row 0 gets the total.
template <typename T>
__device__ __forceinline__ T fastnn_column_total(T (*part)[FASTNN_COLS + 1], T acc) {
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = FASTNN_ROWS / 2; s > 0; s >>= 1) {
        if (threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    T total = part[0][threadIdx.x];
    __syncthreads();  // part may be reused by the caller's next column group
    return total;
}

// db[j] = sum_i dz[i, j]. Block (FASTNN_COLS, FASTNN_ROWS): threadIdx.x walks a column group
// (coalesced), threadIdx.y strides over rows; grid-stride over column groups.
template <typename T>
__global__ void fastnn_bias_grad(const T* __restrict__ dz, T* __restrict__ db, long long n, long long d) {
    __shared__ T part[FASTNN_ROWS][FASTNN_COLS + 1];
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        T acc = T(0);
        if (j < d) {
            for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) acc += dz[i * d + j];
        }
        T total = fastnn_column_total<T>(part, acc);
        if (threadIdx.y == 0 && j < d) db[j] = total;
    }
}

// dz = dout * act'(y) and db = dz.sum(0) in one pass over the (n, d) arrays.
template <typename T>
__global__ void fastnn_act_backward_bias_grad(const T* __restrict__ dout, const T* __restrict__ y,
                                              T* __restrict__ dz, T* __restrict__ db,
                                              long long n, long long d, int act, T alpha) {
    __shared__ T part[FASTNN_ROWS][FASTNN_COLS + 1];
    for (long long c0 = (long long)blockIdx.x * FASTNN_COLS; c0 < d; c0 += (long long)gridDim.x * FASTNN_COLS) {
        const long long j = c0 + threadIdx.x;
        T acc = T(0);
        if (j < d) {
            for (long long i = threadIdx.y; i < n; i += FASTNN_ROWS) {
                const long long k = i * d + j;
                const T g = dout[k] * fastnn_act_grad(y[k], act, alpha);
                dz[k] = g;
                acc += g;
            }
        }
        T total = fastnn_column_total<T>(part, acc);
        if (threadIdx.y == 0 && j < d) db[j] = total;
    }
}

template <typename T>
__device__ __forceinline__ T fastnn_warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

template <typename T>
__device__ __forceinline__ T fastnn_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Row-wise softmax of x: (n, c), one warp per row (grid-stride over rows), max-subtracted:
// y = exp(x - max) / sum(exp(x - max)).
template <typename T>
__global__ void fastnn_softmax(const T* __restrict__ x, T* __restrict__ y, long long n, long long c) {
    const int lane = threadIdx.x & 31;
    const long long warps = ((long long)blockDim.x * gridDim.x) >> 5;
    for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < n; r += warps) {
        const T* xr = x + r * c;
        T m = xr[0];
        for (long long j = lane; j < c; j += 32) m = xr[j] > m ? xr[j] : m;
        m = fastnn_warp_max(m);
        T s = T(0);
        for (long long j = lane; j < c; j += 32) s += FMath<T>::exp(xr[j] - m);
        s = fastnn_warp_sum(s);
        for (long long j = lane; j < c; j += 32) y[r * c + j] = FMath<T>::exp(xr[j] - m) / s;
    }
}

// out = a * b elementwise.
template <typename T>
__global__ void fastnn_mul(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, long long n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = a[i] * b[i];
}
