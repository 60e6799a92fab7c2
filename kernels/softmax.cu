// Softmax and log-softmax over the last dimension of a row-major N x C matrix, forward and backward.
//
// Numerically stable: every row is shifted by its maximum before exp. Two layouts of work, picked
// by the host per launch: a warp per row when C <= 1024 (rows are short, a block would idle), a
// block per row otherwise (any C, the block loops over the row). Storage f32/f16/bf16, math f32.
//
//   softmax:      y = exp(x - max) / sum(exp(x - max))
//   log_softmax:  y = (x - max) - log(sum(exp(x - max)))
//   softmax bwd:      dx = y * (dy - sum(dy * y))
//   log_softmax bwd:  dx = dy - exp(y) * sum(dy)
#include "common.cuh"
#include "row_reduce.cuh"

// Mirrors `SoftmaxParams` in src/softmax/cuda.rs.
struct SoftmaxParams {
    int64_t rows;
    int32_t cols;
    int32_t warp_per_row;  // 1: a warp per row, 0: a block per row
};
EC_CHECK_PARAMS(SoftmaxParams);

template <typename T, bool LOG, bool WARP>
__device__ void softmax_fwd_rows(const T* __restrict__ x, T* __restrict__ y, SoftmaxParams p) {
    __shared__ float scratch[32];
    RowWalker<WARP> w;
    for (int64_t row = w.first_row(); row < p.rows; row += w.row_stride()) {
        const T* xr = x + row * p.cols;
        T* yr = y + row * p.cols;
        float m = -INFINITY;
        for (int c = w.lane(); c < p.cols; c += w.width()) m = nan_max(m, to_f32(xr[c]));
        m = w.max(m, scratch);
        float s = 0.0f;
        for (int c = w.lane(); c < p.cols; c += w.width()) s += expf(to_f32(xr[c]) - m);
        s = w.sum(s, scratch);
        if (LOG) {
            const float log_s = logf(s);
            for (int c = w.lane(); c < p.cols; c += w.width()) yr[c] = from_f32<T>(to_f32(xr[c]) - m - log_s);
        } else {
            const float inv = 1.0f / s;
            for (int c = w.lane(); c < p.cols; c += w.width()) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - m) * inv);
        }
    }
}

template <typename T, bool LOG, bool WARP>
__device__ void softmax_bwd_rows(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                 SoftmaxParams p) {
    __shared__ float scratch[32];
    RowWalker<WARP> w;
    for (int64_t row = w.first_row(); row < p.rows; row += w.row_stride()) {
        const int64_t off = row * p.cols;
        float s = 0.0f;
        for (int c = w.lane(); c < p.cols; c += w.width())
            s += LOG ? to_f32(dy[off + c]) : to_f32(dy[off + c]) * to_f32(y[off + c]);
        s = w.sum(s, scratch);
        for (int c = w.lane(); c < p.cols; c += w.width()) {
            const float yc = to_f32(y[off + c]), dyc = to_f32(dy[off + c]);
            dx[off + c] = from_f32<T>(LOG ? dyc - expf(yc) * s : yc * (dyc - s));
        }
    }
}

// Launched with up to 1024 threads a block (a block per row): EC_BOUNDS_MAX_BLOCK.
#define SOFTMAX_ENTRY(T, SUF)                                                                                 \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK softmax_fwd_##SUF(const T* x, T* y, SoftmaxParams p) {     \
        if (p.warp_per_row) softmax_fwd_rows<T, false, true>(x, y, p);                                        \
        else softmax_fwd_rows<T, false, false>(x, y, p);                                                      \
    }                                                                                                         \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK log_softmax_fwd_##SUF(const T* x, T* y, SoftmaxParams p) { \
        if (p.warp_per_row) softmax_fwd_rows<T, true, true>(x, y, p);                                         \
        else softmax_fwd_rows<T, true, false>(x, y, p);                                                       \
    }                                                                                                         \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK softmax_bwd_##SUF(const T* y, const T* dy, T* dx,          \
                                                                     SoftmaxParams p) {                       \
        if (p.warp_per_row) softmax_bwd_rows<T, false, true>(y, dy, dx, p);                                   \
        else softmax_bwd_rows<T, false, false>(y, dy, dx, p);                                                 \
    }                                                                                                         \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK log_softmax_bwd_##SUF(const T* y, const T* dy, T* dx,      \
                                                                         SoftmaxParams p) {                   \
        if (p.warp_per_row) softmax_bwd_rows<T, true, true>(y, dy, dx, p);                                    \
        else softmax_bwd_rows<T, true, false>(y, dy, dx, p);                                                  \
    }

EC_FOR_EACH_FLOAT(SOFTMAX_ENTRY)
