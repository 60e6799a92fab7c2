// Per-class confusion counts: counts[t * C + p] += 1 for every sample with true class t and
// predicted class p, into a row-major C x C matrix of u64 in device memory. The kernels ADD to the
// matrix (the caller zeroes it once), so batches can be summed across launches.
//
// Two inputs, one sample per index i < n:
//   confusion_logits_{f32,f16,bf16}: p = argmax of row i of the N x C logits, fused (a warp per
//       row), each logit first shifted by a per-class bias when `bias` is not null (f32:
//       to_f32(x[c]) + bias[c]; post-hoc logit adjustment, free at evaluation). torch.argmax
//       semantics: ties go to the lowest index; NaN counts as the maximum and the first NaN of the
//       row wins.
//   confusion_labels: p = preds[i] (i32).
// targets are i32. A sample whose target equals ignore_index (when has_ignore) is skipped; it is
// still checked for a bad prediction (labels input), as torchmetrics validates every prediction.
//
// Bad input is never used to index: a target outside [0, C) that is not ignore_index flags its
// sample in *bad_target, a predicted label outside [0, C) in *bad_pred (flag_bad keeps the
// smallest index), and the sample is not counted. The host turns the flags into errors.
//
// Two histogram strategies, chosen by the host per launch (`privatized`):
//   1: each block counts into a u32 C x C histogram in dynamic shared memory, then adds its
//      non-zero entries to the global u64 matrix. Needs C*C*4 bytes of dynamic shared memory. A
//      block sees at most n <= INT32_MAX samples, so a u32 entry cannot overflow.
//   0: every sample is an atomicAdd on the global u64 matrix (any C).
#include "common.cuh"

// Mirrors `ConfusionParams` in src/confusion/cuda.rs.
struct ConfusionParams {
    int64_t n;             // samples (<= INT32_MAX, checked by the host)
    int32_t classes;       // C >= 1
    int32_t has_ignore;    // 1: skip samples whose target == ignore_index
    int32_t ignore_index;  // compared only when has_ignore
    int32_t privatized;    // 1: shared-memory u32 histogram of C*C (see above), 0: global atomics
};
EC_CHECK_PARAMS(ConfusionParams);

EC_DYNAMIC_SHARED(unsigned int, confusion_hist);

__device__ __forceinline__ bool is_ignored(int t, const ConfusionParams& p) {
    return p.has_ignore && t == p.ignore_index;
}
// 0 <= v < c, as one unsigned comparison (c >= 1).
__device__ __forceinline__ bool in_range(int v, int c) { return (unsigned)v < (unsigned)c; }

// True when candidate (v, i) beats the current best (bv, bi) under torch.argmax's order: any NaN
// beats any number, among NaNs the lower index wins; among numbers the larger value wins, ties
// go to the lower index. This is a strict total order on distinct indices, so a scan in any order
// and a butterfly reduction give the same winner.
__device__ __forceinline__ bool argmax_beats(float v, int i, float bv, int bi) {
    if (isnan(v)) return !isnan(bv) || i < bi;
    if (isnan(bv)) return false;
    return v > bv || (v == bv && i < bi);
}

template <bool PRIV> struct Hist;

// Per-block u32 histogram in dynamic shared memory, flushed into the global u64 matrix.
template <> struct Hist<true> {
    unsigned long long* global;
    int classes;
    // Every thread of the block must call init() and flush() (they contain barriers).
    __device__ void init() const {
        const int cc = classes * classes;
        for (int i = threadIdx.x; i < cc; i += blockDim.x) confusion_hist[i] = 0u;
        __syncthreads();
    }
    __device__ void add(int t, int p) const { atomicAdd(&confusion_hist[t * classes + p], 1u); }
    __device__ void flush() const {
        __syncthreads();
        const int cc = classes * classes;
        for (int i = threadIdx.x; i < cc; i += blockDim.x) {
            const unsigned int v = confusion_hist[i];
            if (v != 0u) atomicAdd(&global[i], (unsigned long long)v);
        }
    }
};

// Straight to the global u64 matrix.
template <> struct Hist<false> {
    unsigned long long* global;
    int classes;
    __device__ void init() const {}
    __device__ void add(int t, int p) const {
        atomicAdd(&global[(int64_t)t * classes + p], 1ull);
    }
    __device__ void flush() const {}
};

// A thread per sample, grid-stride.
template <bool PRIV>
__device__ void count_labels(const int* __restrict__ preds, const int* __restrict__ targets,
                             unsigned long long* counts, int* bad_target, int* bad_pred, ConfusionParams p) {
    const Hist<PRIV> h{counts, p.classes};
    h.init();
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const int t = targets[i], y = preds[i];
        const bool pred_ok = in_range(y, p.classes);
        if (!pred_ok) flag_bad(bad_pred, i);
        if (is_ignored(t, p)) continue;
        if (!in_range(t, p.classes)) {
            flag_bad(bad_target, i);
            continue;
        }
        if (pred_ok) h.add(t, y);
    }
    h.flush();
}

// A warp per row, grid-stride over rows. Every lane of a warp works on the same row, so the loop
// and its branches are warp-uniform and the full-mask shuffles are safe (blockDim.x % 32 == 0).
template <typename T, bool PRIV>
__device__ void count_logits(const T* __restrict__ x, const float* __restrict__ bias, const int* __restrict__ targets,
                             unsigned long long* counts, int* bad_target, ConfusionParams p) {
    const Hist<PRIV> h{counts, p.classes};
    h.init();
    const int lane = threadIdx.x & 31;
    const int64_t warps = blockDim.x >> 5;
    const int64_t stride = (int64_t)gridDim.x * warps;
    for (int64_t row = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); row < p.n; row += stride) {
        const int t = targets[row];
        if (is_ignored(t, p)) continue;  // no need to read its logits
        if (!in_range(t, p.classes)) {
            if (lane == 0) flag_bad(bad_target, row);
            continue;
        }
        const T* xr = x + row * p.classes;
        // Lanes past the end keep (-inf, INT32_MAX), which every real element beats (lane 0 always
        // holds column 0), so the winner is a real column.
        float best = -INFINITY;
        int bi = INT32_MAX;
        for (int c = lane; c < p.classes; c += 32) {
            const float v = bias != nullptr ? to_f32(xr[c]) + bias[c] : to_f32(xr[c]);
            if (argmax_beats(v, c, best, bi)) {
                best = v;
                bi = c;
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, off);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (argmax_beats(ov, oi, best, bi)) {
                best = ov;
                bi = oi;
            }
        }
        if (lane == 0) h.add(t, bi);
    }
    h.flush();
}

extern "C" __global__ void confusion_labels(const int* preds, const int* targets, unsigned long long* counts,
                                            int* bad_target, int* bad_pred, ConfusionParams p) {
    if (p.privatized) count_labels<true>(preds, targets, counts, bad_target, bad_pred, p);
    else count_labels<false>(preds, targets, counts, bad_target, bad_pred, p);
}

// `bias` (C floats) may be null: no shift.
#define CONFUSION_ENTRY(T, SUF)                                                                          \
    extern "C" __global__ void confusion_logits_##SUF(const T* x, const float* bias, const int* targets, \
                                                      unsigned long long* counts, int* bad_target,       \
                                                      ConfusionParams p) {                               \
        if (p.privatized) count_logits<T, true>(x, bias, targets, counts, bad_target, p);                \
        else count_logits<T, false>(x, bias, targets, counts, bad_target, p);                            \
    }

EC_FOR_EACH_FLOAT(CONFUSION_ENTRY)
