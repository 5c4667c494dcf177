// fastnn convolution and pooling kernels over NCHW arrays: im2col, col2im, their transposed
// im2col_t, col2im_t, max pooling forward (with argmax) and backward.
//
// Templates over T (float, double), instantiated through CuPy's name_expressions; grid-stride
// loops, so any grid is correct. Shared helpers: common.cuh. Geometry arrives checked and
// normalised by the launcher (fastnn/backend/ops.py, conv_geometry): strides sh, sw, top/left
// padding pt, pl and the output size oh, ow. col is (N*OH*OW, C*FH*FW): row (n, oy, ox),
// column (c, ky, kx). colT, im2col_t's output, is col transposed: (C*FH*FW, N*OH*OW).
// col2im and col2im_t gather (one thread per input element) instead of scattering, so they need no
// atomics and every element sums its terms in one fixed order; maxpool_backward scatters with atomicAdd.

#include "common.cuh"

// x[b, ch, oy*sh + ky - pt, ox*sw + kx - pl], 0 outside x, for window row r = (b, oy, ox) and
// column j = (ch, ky, kx): one element of the im2col matrix, in either layout.
template <typename T, typename I>
__device__ __forceinline__ T fastnn_window_value(const T* __restrict__ x, I r, I j, I c,
                                                 I h, I w, I fh, I fw, I sh,
                                                 I sw, I pt, I pl, I oh, I ow) {
    const I ox = r % ow, oy = (r / ow) % oh, b = r / (ow * oh);
    const I kx = j % fw, ky = (j / fw) % fh, ch = j / (fw * fh);
    const I iy = oy * sh + ky - pt, ix = ox * sw + kx - pl;
    return (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((b * c + ch) * h + iy) * w + ix] : T(0);
}

// dx element i = (b, ch, iy, ix): the sum, in (ky, kx) order, over the windows (b, oy, ox) that hold
// it (oy = (iy + pt - ky) / sh exact and in range, the same for x) of the matrix element at window
// row r = (b, oy, ox), column j = (ch, ky, kx): col[r * ld + j], or colT[j * ld + r] when TRANSPOSED.
template <typename T, typename I, bool TRANSPOSED>
__device__ __forceinline__ T fastnn_window_sum(const T* __restrict__ col, I i, I ld, I c,
                                               I h, I w, I fh, I fw, I sh,
                                               I sw, I pt, I pl, I oh, I ow) {
    const I ix = i % w, iy = (i / w) % h, ch = (i / (w * h)) % c, b = i / (w * h * c);
    T sum = T(0);
    for (I ky = 0; ky < fh; ++ky) {
        const I ty = iy + pt - ky;
        if (ty < 0 || ty % sh != 0 || ty / sh >= oh) continue;
        const I oy = ty / sh;
        for (I kx = 0; kx < fw; ++kx) {
            const I tx = ix + pl - kx;
            if (tx < 0 || tx % sw != 0 || tx / sw >= ow) continue;
            const I ox = tx / sw;
            const I r = (b * oh + oy) * ow + ox, j = (ch * fh + ky) * fw + kx;
            sum += TRANSPOSED ? col[j * ld + r] : col[r * ld + j];
        }
    }
    return sum;
}

// One thread per col element: col[r, j], col is (N*OH*OW, C*FH*FW).
template <typename T, typename I>
__device__ __forceinline__ void fastnn_im2col_body(const T* __restrict__ x, T* __restrict__ col, I n, I c, I h,
                                                   I w, I fh, I fw, I sh, I sw, I pt, I pl, I oh, I ow) {
    const I k = c * fh * fw;
    const I total = n * oh * ow * k;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
        col[i] = fastnn_window_value(x, i / k, i % k, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

template <typename T>
__global__ void fastnn_im2col(const T* __restrict__ x, T* __restrict__ col, long long n, long long c, long long h,
                              long long w, long long fh, long long fw, long long sh, long long sw, long long pt,
                              long long pl, long long oh, long long ow, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_im2col_body<T, int>(x, col, (int)n, (int)c, (int)h, (int)w, (int)fh, (int)fw, (int)sh, (int)sw,
                                    (int)pt, (int)pl, (int)oh, (int)ow);
    else
        fastnn_im2col_body<T, long long>(x, col, n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

// The adjoint of im2col, one thread per dx element (a gather: no atomics, a fixed sum order).
template <typename T, typename I>
__device__ __forceinline__ void fastnn_col2im_body(const T* __restrict__ col, T* __restrict__ dx, I n, I c, I h,
                                                   I w, I fh, I fw, I sh, I sw, I pt, I pl, I oh, I ow) {
    const I k = c * fh * fw;
    const I total = n * c * h * w;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
        dx[i] = fastnn_window_sum<T, I, false>(col, i, k, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

template <typename T>
__global__ void fastnn_col2im(const T* __restrict__ col, T* __restrict__ dx, long long n, long long c, long long h,
                              long long w, long long fh, long long fw, long long sh, long long sw, long long pt,
                              long long pl, long long oh, long long ow, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_col2im_body<T, int>(col, dx, (int)n, (int)c, (int)h, (int)w, (int)fh, (int)fw, (int)sh, (int)sw,
                                    (int)pt, (int)pl, (int)oh, (int)ow);
    else
        fastnn_col2im_body<T, long long>(col, dx, n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

// im2col transposed, one thread per colT element: colT[j, r], colT is (C*FH*FW, N*OH*OW). Neighbouring
// threads write neighbouring r and read along a row of x.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_im2col_t_body(const T* __restrict__ x, T* __restrict__ colT, I n, I c, I h,
                                                     I w, I fh, I fw, I sh, I sw, I pt, I pl, I oh, I ow) {
    const I m = n * oh * ow;
    const I total = c * fh * fw * m;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
        colT[i] = fastnn_window_value(x, i % m, i / m, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

template <typename T>
__global__ void fastnn_im2col_t(const T* __restrict__ x, T* __restrict__ colT, long long n, long long c,
                                long long h, long long w, long long fh, long long fw, long long sh, long long sw,
                                long long pt, long long pl, long long oh, long long ow, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_im2col_t_body<T, int>(x, colT, (int)n, (int)c, (int)h, (int)w, (int)fh, (int)fw, (int)sh, (int)sw,
                                      (int)pt, (int)pl, (int)oh, (int)ow);
    else
        fastnn_im2col_t_body<T, long long>(x, colT, n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

// The adjoint of im2col_t, gathering like col2im.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_col2im_t_body(const T* __restrict__ colT, T* __restrict__ dx, I n, I c, I h,
                                                     I w, I fh, I fw, I sh, I sw, I pt, I pl, I oh, I ow) {
    const I m = n * oh * ow;
    const I total = n * c * h * w;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
        dx[i] = fastnn_window_sum<T, I, true>(colT, i, m, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

template <typename T>
__global__ void fastnn_col2im_t(const T* __restrict__ colT, T* __restrict__ dx, long long n, long long c,
                                long long h, long long w, long long fh, long long fw, long long sh, long long sw,
                                long long pt, long long pl, long long oh, long long ow, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_col2im_t_body<T, int>(colT, dx, (int)n, (int)c, (int)h, (int)w, (int)fh, (int)fw, (int)sh,
                                      (int)sw, (int)pt, (int)pl, (int)oh,
                                      (int)ow);
    else
        fastnn_col2im_t_body<T, long long>(colT, dx, n, c, h, w, fh, fw, sh, sw, pt, pl, oh, ow);
}

// One thread per output element: the window's maximum (padding counts as -inf) and its index
// iy * W + ix in the input plane; the first maximum wins ties and the first NaN wins outright.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_maxpool_forward_body(const T* __restrict__ x, T* __restrict__ y,
                                                            long long* __restrict__ argmax, I nc, I h, I w, I ph,
                                                            I pw, I sh, I sw, I pt, I pl, I oh, I ow, T neg_inf) {
    const I total = nc * oh * ow;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const I ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
        const T* xp = x + plane * h * w;
        T m = neg_inf;
        // when every cell is -inf: the window's first cell inside the plane (as PyTorch)
        I best = max(oy * sh - pt, I(0)) * w + max(ox * sw - pl, I(0));
        for (I ky = 0; ky < ph; ++ky) {
            const I iy = oy * sh + ky - pt;
            if (iy < 0 || iy >= h) continue;
            for (I kx = 0; kx < pw; ++kx) {
                const I ix = ox * sw + kx - pl;
                if (ix < 0 || ix >= w) continue;
                const T v = xp[iy * w + ix];
                if (v > m || (v != v && m == m)) {
                    m = v;
                    best = iy * w + ix;
                }
            }
        }
        y[i] = m;
        argmax[i] = best;
    }
}

template <typename T>
__global__ void fastnn_maxpool_forward(const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ argmax,
                                       long long nc, long long h, long long w, long long ph, long long pw,
                                       long long sh, long long sw, long long pt, long long pl, long long oh,
                                       long long ow, T neg_inf, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_maxpool_forward_body<T, int>(x, y, argmax, (int)nc, (int)h, (int)w, (int)ph, (int)pw, (int)sh,
                                             (int)sw, (int)pt,
                                             (int)pl, (int)oh,
                                             (int)ow, neg_inf);
    else
        fastnn_maxpool_forward_body<T, long long>(x, y, argmax, nc, h, w, ph, pw, sh, sw, pt, pl, oh, ow, neg_inf);
}

// One thread per output element: dout added at its argmax in the (zeroed) input plane. Windows
// overlap when the stride is smaller than the window, hence atomicAdd (float and double). Indices
// outside the plane (not from maxpool_forward) are skipped rather than written out of bounds.
template <typename T>
__global__ void fastnn_maxpool_backward(const T* __restrict__ dout, const long long* __restrict__ argmax,
                                        T* __restrict__ dx, long long nc, long long hw, long long ohw) {
    const long long total = nc * ohw;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long k = argmax[i];
        if (k >= 0 && k < hw) atomicAdd(dx + (i / ohw) * hw + k, dout[i]);
    }
}

// ---- bias + activation between NCHW and the (C, N, H, W) layout of the convolution GEMMs.
// Activation codes and fastnn_act / fastnn_act_grad: common.cuh (shared with activations.cu).

// One thread per output element out[b, ch, k] = act(z[ch, b, k] + bias[ch]), k over the H*W plane.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_conv_bias_act_body(const T* __restrict__ z, const T* __restrict__ bias,
                                                          T* __restrict__ out, I n, I c, I p, int has_b, int act,
                                                          T alpha) {
    const I total = n * c * p;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const I k = i % p, ch = (i / p) % c, b = i / (p * c);
        const T v = z[(ch * n + b) * p + k];
        out[i] = fastnn_act(has_b ? v + bias[ch] : v, act, alpha);
    }
}

template <typename T>
__global__ void fastnn_conv_bias_act(const T* __restrict__ z, const T* __restrict__ bias, T* __restrict__ out,
                                     long long n, long long c, long long p, int has_b, int act, T alpha,
                                     int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_conv_bias_act_body<T, int>(z, bias, out, (int)n, (int)c, (int)p, has_b, act, alpha);
    else
        fastnn_conv_bias_act_body<T, long long>(z, bias, out, n, c, p, has_b, act, alpha);
}

// One thread per output element out[ch, b, k] = dout[b, ch, k] * act'(y[b, ch, k]); the bias
// gradient is a separate reduction (fastnn_conv_bias_grad) over out's contiguous channel rows.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_conv_act_backward_body(const T* __restrict__ dout, const T* __restrict__ y,
                                                              T* __restrict__ out, I n, I c, I p, int act,
                                                              T alpha) {
    const I total = n * c * p;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const I k = i % p, b = (i / p) % n, ch = i / (p * n);
        const I src = (b * c + ch) * p + k;
        out[i] = dout[src] * fastnn_act_grad(y[src], act, alpha);
    }
}

template <typename T>
__global__ void fastnn_conv_act_backward(const T* __restrict__ dout, const T* __restrict__ y, T* __restrict__ out,
                                         long long n, long long c, long long p, int act, T alpha, int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_conv_act_backward_body<T, int>(dout, y, out, (int)n, (int)c, (int)p, act, alpha);
    else
        fastnn_conv_act_backward_body<T, long long>(dout, y, out, n, c, p, act, alpha);
}

// conv_bias_act that also writes the pre-activation zb[ch, b, k] = z[ch, b, k] + bias[ch] in z's
// (C, N, P) layout; zb may be z itself (the layer's GEMM output), so neither is __restrict__.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_conv_bias_act_z_body(const T* z, const T* __restrict__ bias,
                                                            T* __restrict__ out, T* zb, I n, I c, I p, int has_b,
                                                            int act, T alpha) {
    const I total = n * c * p;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const I k = i % p, ch = (i / p) % c, b = i / (p * c);
        const I src = (ch * n + b) * p + k;
        const T v = has_b ? z[src] + bias[ch] : z[src];
        zb[src] = v;
        out[i] = fastnn_act(v, act, alpha);
    }
}

template <typename T>
__global__ void fastnn_conv_bias_act_z(const T* z, const T* __restrict__ bias, T* __restrict__ out, T* zb,
                                       long long n, long long c, long long p, int has_b, int act, T alpha,
                                       int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_conv_bias_act_z_body<T, int>(z, bias, out, zb, (int)n, (int)c, (int)p, has_b, act, alpha);
    else
        fastnn_conv_bias_act_z_body<T, long long>(z, bias, out, zb, n, c, p, has_b, act, alpha);
}

// out[ch, b, k] = dout[b, ch, k] * act'(zb[ch, b, k]), from the pre-activation zb: (C, N, P)
// (gelu, gelu_tanh, swish); the bias gradient is fastnn_conv_bias_grad's, as for the others.
template <typename T, typename I>
__device__ __forceinline__ void fastnn_conv_act_backward_z_body(const T* __restrict__ dout,
                                                                const T* __restrict__ zb, T* __restrict__ out, I n,
                                                                I c, I p, int act) {
    const I total = n * c * p;
    const I stride = (I)blockDim.x * gridDim.x;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const I k = i % p, b = (i / p) % n, ch = i / (p * n);
        out[i] = dout[(b * c + ch) * p + k] * fastnn_act_grad_z(zb[i], act);
    }
}

template <typename T>
__global__ void fastnn_conv_act_backward_z(const T* __restrict__ dout, const T* __restrict__ zb,
                                           T* __restrict__ out, long long n, long long c, long long p, int act,
                                           int narrow) {
    if (narrow)  // every index of the launch below 2^31: 32-bit division and modulo
        fastnn_conv_act_backward_z_body<T, int>(dout, zb, out, (int)n, (int)c, (int)p, act);
    else
        fastnn_conv_act_backward_z_body<T, long long>(dout, zb, out, n, c, p, act);
}

// One block per channel: db[ch] = the sum of row ch of dz: (C, M), in a fixed order per block size.
template <typename T>
__global__ void fastnn_conv_bias_grad(const T* __restrict__ dz, T* __restrict__ db, long long c, long long m) {
    __shared__ T part[256];
    for (long long ch = blockIdx.x; ch < c; ch += gridDim.x) {
        T s = T(0);
        for (long long j = threadIdx.x; j < m; j += blockDim.x) s += dz[ch * m + j];
        part[threadIdx.x] = s;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half /= 2) {
            if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) db[ch] = part[0];
        __syncthreads();
    }
}
