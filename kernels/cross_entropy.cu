// Weighted cross-entropy over class-index targets, fused with log-softmax, with the semantics of
// PyTorch's nn.CrossEntropyLoss(weight, ignore_index, reduction, label_smoothing):
//
//   logp_c = x_c - logsumexp(x)
//   l_i    = (1 - eps) * w[t_i] * (-logp_{t_i})  +  (eps / C) * sum_c w[c] * (-logp_c)
//   l_i    = 0 for samples whose target is ignore_index
//   none: l_i    sum: sum_i l_i    mean: sum_i l_i / sum_{i not ignored} w[t_i]
//
// and the gradient of that loss (times the upstream gradient g) with respect to the logits:
//
//   dx_ic = g_i * ((1 - eps) * w[t_i] * (p_c - [c == t_i])  +  (eps / C) * (W * p_c - w[c])),
//   W = sum_c w[c],  g_i = grad_output[i] (none) or grad_output / total_weight (mean).
//
// Logit adjustment (optional, per class): the loss above is taken on u_c = s_c * x_c + o_c, and
// the gradient with respect to x_c is s_c times the one above with u in place of x. `scale` and
// `offset` are null when absent; has_scale/has_offset select a template instance, so the plain
// path has no extra loads or arithmetic.
//
// Three launches, only the second reads the logits (one pass for loss and gradient together):
//   1. cross_entropy_prepare: validates targets (first bad sample -> *first_bad), and computes
//      stats[0] = total target weight of non-ignored samples, stats[1] = W. One block, so the
//      sums are deterministic.
//   2. cross_entropy_fwd_bwd_<dtype> (cross_entropy_fwd_bwd_adjusted_<dtype> with a logit scale or
//      offset): a warp (C <= 1024) or a block per row: per-row loss and,
//      when `grad` is non-null, the gradient row.
//   3. cross_entropy_reduce: for sum/mean, one block sums the per-row losses (deterministic order).
// When every sample is ignored under mean reduction, PyTorch returns 0/0 = NaN; we return loss 0
// and gradient 0 instead (documented in src/cross_entropy/mod.rs), so a batch without a valid
// target does not poison training.
#include "common.cuh"
#include "row_reduce.cuh"

// Mirrors `CeParams` in src/cross_entropy/cuda.rs.
struct CeParams {
    int64_t rows;
    int32_t cols;
    int32_t warp_per_row;
    int32_t ignore_index;     // compared only when has_ignore
    int32_t has_ignore;
    int32_t has_weight;       // 0: every class weight is 1
    int32_t reduction;        // 0 none, 1 sum, 2 mean
    float label_smoothing;    // eps in [0, 1]
    int32_t grad_output_len;  // 0: upstream gradient 1; 1: a scalar; rows: one per sample
    int32_t has_scale;        // 1: scale[c] multiplies logit c (VS-loss, temperature)
    int32_t has_offset;       // 1: offset[c] is added to the scaled logit c (logit adjustment)
};
EC_CHECK_PARAMS(CeParams);

enum { RED_NONE = 0, RED_SUM = 1, RED_MEAN = 2 };

__device__ __forceinline__ bool is_ignored(int t, const CeParams& p) { return p.has_ignore && t == p.ignore_index; }
__device__ __forceinline__ float class_weight(const float* w, int c, const CeParams& p) { return p.has_weight ? w[c] : 1.0f; }

extern "C" __global__ void EC_BOUNDS_MAX_BLOCK
    cross_entropy_prepare(const int32_t* __restrict__ targets, const float* __restrict__ weight, CeParams p,
                          int* first_bad, float* stats) {
    __shared__ float scratch[32];
    float tw = 0.0f;
    for (int64_t i = threadIdx.x; i < p.rows; i += blockDim.x) {
        const int t = targets[i];
        if (is_ignored(t, p)) continue;
        if (t < 0 || t >= p.cols) {
            flag_bad(first_bad, i);
            continue;
        }
        tw += class_weight(weight, t, p);
    }
    float ws = 0.0f;
    for (int c = threadIdx.x; c < p.cols; c += blockDim.x) ws += class_weight(weight, c, p);
    tw = block_sum(tw, scratch);
    ws = block_sum(ws, scratch);
    if (threadIdx.x == 0) {
        stats[0] = tw;
        stats[1] = ws;
    }
}

// Logit c of a row after the optional adjustment: s_c * x_c + o_c.
template <bool SCALE, bool OFFSET>
__device__ __forceinline__ float adjusted(float x, int c, const float* __restrict__ scale,
                                          const float* __restrict__ offset) {
    if (SCALE) x *= scale[c];
    if (OFFSET) x += offset[c];
    return x;
}

template <typename T, bool WARP, bool SCALE, bool OFFSET>
__device__ void ce_rows(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                        const float* __restrict__ weight, const float* __restrict__ scale,
                        const float* __restrict__ offset, const float* __restrict__ stats,
                        const float* __restrict__ grad_output, float* __restrict__ row_loss, T* __restrict__ grad,
                        CeParams p) {
    __shared__ float scratch[32];
    RowWalker<WARP> w;
    const float eps = p.label_smoothing;
    const float eps_c = eps / (float)p.cols;
    const float total_weight = stats[0], weight_sum = stats[1];
    for (int64_t row = w.first_row(); row < p.rows; row += w.row_stride()) {
        const T* x = logits + row * p.cols;
        const int t = targets[row];
        // Ignored and invalid rows (the latter already flagged) contribute nothing; the logits
        // are not read, so NaN there does not leak, as in PyTorch.
        if (is_ignored(t, p) || t < 0 || t >= p.cols) {
            if (row_loss && w.lane() == 0) row_loss[row] = 0.0f;
            if (grad)
                for (int c = w.lane(); c < p.cols; c += w.width()) grad[row * p.cols + c] = from_f32<T>(0.0f);
            continue;
        }
        float m = -INFINITY;
        for (int c = w.lane(); c < p.cols; c += w.width())
            m = nan_max(m, adjusted<SCALE, OFFSET>(to_f32(x[c]), c, scale, offset));
        m = w.max(m, scratch);
        // One pass for the normalizer and, with smoothing, sum_c w_c * (x_c - m).
        float s = 0.0f, wx = 0.0f;
        for (int c = w.lane(); c < p.cols; c += w.width()) {
            const float v = adjusted<SCALE, OFFSET>(to_f32(x[c]), c, scale, offset) - m;
            s += expf(v);
            if (eps > 0.0f) wx += class_weight(weight, c, p) * v;
        }
        s = w.sum(s, scratch);
        if (eps > 0.0f) wx = w.sum(wx, scratch);
        const float lse = logf(s);  // logsumexp(x) - m
        const float wt = class_weight(weight, t, p);
        const float nll = -(adjusted<SCALE, OFFSET>(to_f32(x[t]), t, scale, offset) - m - lse);
        // sum_c w_c * (-logp_c) = W * lse - sum_c w_c (x_c - m)
        const float smooth = eps > 0.0f ? weight_sum * lse - wx : 0.0f;
        if (row_loss && w.lane() == 0) row_loss[row] = (1.0f - eps) * wt * nll + eps_c * smooth;
        if (!grad) continue;
        float g = p.grad_output_len == 0 ? 1.0f : grad_output[p.grad_output_len == 1 ? 0 : row];
        if (p.reduction == RED_MEAN) g = total_weight != 0.0f ? g / total_weight : 0.0f;
        const float inv_s = 1.0f / s;
        const float a = g * (1.0f - eps) * wt;  // coefficient of the one-hot term
        const float b = g * eps_c;              // coefficient of the smoothing term
        for (int c = w.lane(); c < p.cols; c += w.width()) {
            const float pc = expf(adjusted<SCALE, OFFSET>(to_f32(x[c]), c, scale, offset) - m) * inv_s;
            float d = a * (pc - (c == t ? 1.0f : 0.0f));
            if (eps > 0.0f) d += b * (weight_sum * pc - class_weight(weight, c, p));
            if (SCALE) d *= scale[c];  // chain rule through u_c = s_c * x_c + o_c
            grad[row * p.cols + c] = from_f32<T>(d);
        }
    }
}

// Picks the instance for the row walker (warp or block per row) and the adjustment present. The
// plain loss and the adjusted one are separate entry points: in one, the plain path would be
// compiled with the registers the adjusted instances need (64 instead of 48 on sm_90, 50% instead
// of 62% occupancy), though almost every call is plain.
template <typename T, bool ADJUSTED>
__device__ void ce_dispatch(const T* logits, const int32_t* targets, const float* weight, const float* scale,
                            const float* offset, const float* stats, const float* grad_output, float* row_loss,
                            T* grad, const CeParams& p) {
#define CE_ROWS(W, S, O) ce_rows<T, W, S, O>(logits, targets, weight, scale, offset, stats, grad_output, row_loss, grad, p)
    if constexpr (!ADJUSTED) {
        if (p.warp_per_row) CE_ROWS(true, false, false);
        else CE_ROWS(false, false, false);
    } else {
        // The host launches this entry only with a scale, an offset or both.
        const int adj = (p.has_scale ? 1 : 0) | (p.has_offset ? 2 : 0);
        if (p.warp_per_row) {
            switch (adj) {
                case 1: CE_ROWS(true, true, false); break;
                case 2: CE_ROWS(true, false, true); break;
                default: CE_ROWS(true, true, true); break;
            }
        } else {
            switch (adj) {
                case 1: CE_ROWS(false, true, false); break;
                case 2: CE_ROWS(false, false, true); break;
                default: CE_ROWS(false, true, true); break;
            }
        }
    }
#undef CE_ROWS
}

#define CE_ENTRY(T, SUF)                                                                                  \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK                                                        \
        cross_entropy_fwd_bwd_##SUF(const T* logits, const int32_t* targets, const float* weight,         \
                                    const float* scale, const float* offset, const float* stats,          \
                                    const float* grad_output, float* row_loss, T* grad, CeParams p) {     \
        ce_dispatch<T, false>(logits, targets, weight, scale, offset, stats, grad_output, row_loss, grad, p); \
    }                                                                                                     \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK                                                        \
        cross_entropy_fwd_bwd_adjusted_##SUF(const T* logits, const int32_t* targets, const float* weight, \
                                             const float* scale, const float* offset, const float* stats, \
                                             const float* grad_output, float* row_loss, T* grad, CeParams p) { \
        ce_dispatch<T, true>(logits, targets, weight, scale, offset, stats, grad_output, row_loss, grad, p); \
    }

EC_FOR_EACH_FLOAT(CE_ENTRY)

extern "C" __global__ void EC_BOUNDS_MAX_BLOCK
    cross_entropy_reduce(const float* __restrict__ row_loss, const float* __restrict__ stats, float* out,
                         CeParams p) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < p.rows; i += blockDim.x) s += row_loss[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        if (p.reduction == RED_MEAN) out[0] = stats[0] != 0.0f ? s / stats[0] : 0.0f;
        else out[0] = s;
    }
}

// Per-class statistics of a batch for the training log (not part of the loss or its gradient):
// for each row whose target t is in [0, C), its unweighted label-smoothed cross-entropy on the
// plain logits, -sum_c q_c logp_c with q_c = eps / C + (1 - eps) [c == t], and the norm
// ||softmax(x) - q||_2, both in double, added to sums[t] and sums[C + t], and 1 to sums[2 C + t]
// (sums: 3 x C doubles, accumulated across calls). Rows with another target are skipped. Two
// launches, so that the sums are deterministic and added in row order as the CPU reference does:
//   1. cross_entropy_row_stats_<dtype>: a thread per row (grid-stride) writes row_stats[2 i] and
//      row_stats[2 i + 1] (0 and 0 for a skipped row);
//   2. cross_entropy_class_sums: one block, a thread per class, adds its rows in row order.
template <typename T>
__device__ void ce_row_stats(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                             double* __restrict__ row_stats, int rows, int cols, float smoothing) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += stride) {
        const int t = targets[i];
        double loss = 0.0, g2 = 0.0;
        if (t >= 0 && t < cols) {
            const T* x = logits + i * (int64_t)cols;
            float top = -INFINITY;
            for (int c = 0; c < cols; ++c) top = fmaxf(top, to_f32(x[c]));
            double z = 0.0;
            for (int c = 0; c < cols; ++c) z += exp((double)to_f32(x[c]) - (double)top);
            const double log_z = log(z), eps = (double)smoothing;
            for (int c = 0; c < cols; ++c) {
                const double logp = (double)to_f32(x[c]) - (double)top - log_z;
                const double q = eps / cols + (c == t ? 1.0 - eps : 0.0);
                loss -= q * logp;
                const double g = exp(logp) - q;
                g2 += g * g;
            }
            g2 = sqrt(g2);
        }
        row_stats[2 * i] = loss;
        row_stats[2 * i + 1] = g2;
    }
}

#define CE_ROW_STATS_ENTRY(T, SUF)                                                                       \
    extern "C" __global__ void EC_BOUNDS_MAX_BLOCK cross_entropy_row_stats_##SUF(                        \
        const T* logits, const int32_t* targets, double* row_stats, int rows, int cols, float smoothing) { \
        ce_row_stats<T>(logits, targets, row_stats, rows, cols, smoothing);                              \
    }

EC_FOR_EACH_FLOAT(CE_ROW_STATS_ENTRY)

extern "C" __global__ void EC_BOUNDS_MAX_BLOCK
    cross_entropy_class_sums(const double* __restrict__ row_stats, const int32_t* __restrict__ targets,
                             double* __restrict__ sums, int rows, int cols) {
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        double loss = sums[k], gnorm = sums[cols + k], count = sums[2 * cols + k];
        for (int i = 0; i < rows; ++i) {
            if (targets[i] != k) continue;
            loss += row_stats[2 * i];
            gnorm += row_stats[2 * i + 1];
            count += 1.0;
        }
        sums[k] = loss;
        sums[cols + k] = gnorm;
        sums[2 * cols + k] = count;
    }
}
