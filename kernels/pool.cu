// Pooling over NCHW activations (f32, or bf16 in mixed precision; math in f32): max-pool 2x2
// stride 2 (floor mode: oh = h / 2, ow = w / 2; an odd last
// row/column is dropped, as PyTorch's MaxPool2d(2)), and global average pooling n x c x h x w -> n x c.
//
// Max-pool forward also writes, per output, the position of the maximum inside its 2x2 window as a
// u8 in 0..4 (2 * row + column). Ties go to the first in row-major order; NaN wins (and a later NaN
// over an earlier one), as PyTorch. The backward uses that byte and never indexes with it: every
// input element asks whether it is its window's argmax, so dx is fully written (zeros elsewhere,
// also in a dropped odd row/column) with no atomics.
//
// Entry points per activation type (EC_FOR_EACH_ACT): `max_pool_fwd_f32` for f32 activations and
// `max_pool_fwd_f32_abf16` for bf16 ones; the global average's pooled output (n x c, the linear
// layer's input) and its gradient stay f32 in both.
#include "common.cuh"

// Mirrors `PoolParams` in src/pool/cuda.rs. The host guarantees n * c * h * w <= INT32_MAX.
struct PoolParams {
    int32_t planes;  // n * c
    int32_t h, w;
};
EC_CHECK_PARAMS(PoolParams);

template <typename T>
__device__ __forceinline__ void max_pool_fwd(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ argmax,
                                             const PoolParams& p) {
    const int oh = p.h >> 1, ow = p.w >> 1;
    const int total = p.planes * oh * ow;
    for (int64_t ii = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ii < total; ii += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)ii;  // < total <= INT32_MAX
        const int ox = i % ow;
        const int t = i / ow;
        const int oy = t % oh;
        const int plane = t / oh;
        const T* src = x + ((int64_t)plane * p.h + 2 * oy) * p.w + 2 * ox;
        const float c[4] = {ld_act(src, 0), ld_act(src, 1), ld_act(src, p.w), ld_act(src, p.w + 1)};
        float m = c[0];
        int k = 0;
#pragma unroll
        for (int q = 1; q < 4; ++q) {
            if (c[q] > m || isnan(c[q])) {
                m = c[q];
                k = q;
            }
        }
        st_act(y, i, m);  // m is one of the inputs: exact in either type
        argmax[i] = (uint8_t)k;
    }
}

template <typename T>
__device__ __forceinline__ void max_pool_bwd(const T* __restrict__ dy, const uint8_t* __restrict__ argmax,
                                             T* __restrict__ dx, const PoolParams& p) {
    const int oh = p.h >> 1, ow = p.w >> 1;
    const int total = p.planes * p.h * p.w;
    for (int64_t ii = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ii < total; ii += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)ii;  // < total <= INT32_MAX
        const int xx = i % p.w;
        const int t = i / p.w;
        const int yy = t % p.h;
        const int plane = t / p.h;
        const int ox = xx >> 1, oy = yy >> 1;
        float g = 0.0f;
        if (ox < ow && oy < oh) {
            const int o = (plane * oh + oy) * ow + ox;
            if (argmax[o] == ((yy & 1) << 1 | (xx & 1))) g = ld_act(dy, o);
        }
        st_act(dx, i, g);
    }
}

// A warp per plane: y[plane] = sum(x[plane, :]) / hw.
template <typename T>
__device__ __forceinline__ void global_avg_pool_fwd(const T* __restrict__ x, float* __restrict__ y,
                                                    const PoolParams& p) {
    const int hw = p.h * p.w;
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    for (int64_t pl = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); pl < p.planes; pl += (int64_t)gridDim.x * warps) {
        const int plane = (int)pl;
        const T* src = x + (int64_t)plane * hw;
        float s = 0.0f;
        for (int k = lane; k < hw; k += 32) s += ld_act(src, k);
        s = warp_sum(s);
        if (lane == 0) y[plane] = s / (float)hw;
    }
}

// dx[plane, k] = dy[plane] / hw.
template <typename T>
__device__ __forceinline__ void global_avg_pool_bwd(const float* __restrict__ dy, T* __restrict__ dx,
                                                    const PoolParams& p) {
    const int hw = p.h * p.w;
    const int total = p.planes * hw;
    const float hwf = (float)hw;
    for (int64_t ii = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ii < total; ii += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)ii;  // < total <= INT32_MAX
        st_act(dx, i, dy[i / hw] / hwf);
    }
}

#define POOL_ENTRY(T, ACT)                                                                                    \
    extern "C" __global__ void max_pool_fwd_f32##ACT(const T* __restrict__ x, T* __restrict__ y,              \
                                                      uint8_t* __restrict__ argmax, PoolParams p) {           \
        max_pool_fwd(x, y, argmax, p);                                                                        \
    }                                                                                                         \
    extern "C" __global__ void max_pool_bwd_f32##ACT(const T* __restrict__ dy, const uint8_t* __restrict__ a, \
                                                      T* __restrict__ dx, PoolParams p) {                     \
        max_pool_bwd(dy, a, dx, p);                                                                           \
    }                                                                                                         \
    extern "C" __global__ void global_avg_pool_fwd_f32##ACT(const T* __restrict__ x, float* __restrict__ y,   \
                                                             PoolParams p) {                                  \
        global_avg_pool_fwd(x, y, p);                                                                         \
    }                                                                                                         \
    extern "C" __global__ void global_avg_pool_bwd_f32##ACT(const float* __restrict__ dy, T* __restrict__ dx,  \
                                                             PoolParams p) {                                  \
        global_avg_pool_bwd(dy, dx, p);                                                                       \
    }
EC_FOR_EACH_ACT(POOL_ENTRY)
