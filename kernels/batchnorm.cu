// BatchNorm2d over NCHW (per channel), training and eval forward, backward, optionally fused with
// a ReLU on the output. f32 storage and math. x is n x c x hw, contiguous.
//
//   training forward:  mean, var (biased) over (n, hw) of each channel; invstd = 1 / sqrt(var + eps)
//                      y = x * scale + shift, scale = gamma * invstd, shift = beta - mean * scale
//                      running_mean = (1 - momentum) * running_mean + momentum * mean
//                      running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
//   eval forward:      the same affine map with invstd = 1 / sqrt(running_var + eps), mean = running_mean
//   backward:          g = dy (fused ReLU: g = 0 where the saved output y <= 0)
//                      dbeta = sum g, dgamma = invstd * sum g * (x - mean)
//                      dx = (g - dbeta / m - (x - mean) * dgamma * invstd / m) * gamma * invstd
//
// Statistics and the backward sums use a block per channel (grid-stride over channels) and a fixed
// reduction order, so every result is deterministic (no float atomics). Two passes for the
// variance (mean first, then squared deviations). The elementwise kernels are grid-stride loops.
#include "common.cuh"

// Mirrors `BnParams` in src/batchnorm/cuda.rs. The host guarantees n * c * hw <= INT32_MAX.
struct BnParams {
    int32_t n, c, hw;  // x is n x c x hw
    float eps;
    float momentum;
    int32_t relu;      // fused ReLU: forward clamps the output, backward masks dy by y > 0
    int32_t from_var;  // apply: `stat` holds a variance (eval) rather than an inverse std (train)
};
EC_CHECK_PARAMS(BnParams);

// The per-channel reductions run 256 or 512 threads a block (src/batchnorm/cuda.rs).
#define BN_MAX_BLOCK 512

// Index in x of the j-th element (j < n * hw) of channel ch.
__device__ __forceinline__ int chan_index(int j, int ch, const BnParams& p) {
    const int img = j / p.hw;
    return (img * p.c + ch) * p.hw + (j - img * p.hw);
}

// ReLU as PyTorch: NaN passes through, -0 and negatives become 0.
__device__ __forceinline__ float relu(float v) { return v <= 0.0f ? 0.0f : v; }

// Batch statistics of every channel: save_mean, save_invstd, and the running statistics update.
extern "C" __global__ void __launch_bounds__(BN_MAX_BLOCK)
    batchnorm_stats_f32(const float* __restrict__ x, float* __restrict__ running_mean,
                                               float* __restrict__ running_var, float* __restrict__ save_mean,
                                               float* __restrict__ save_invstd, BnParams p) {
    __shared__ float scratch[32];
    const int m = p.n * p.hw;
    for (int ch = blockIdx.x; ch < p.c; ch += gridDim.x) {  // block-uniform loop: barriers are safe
        float s = 0.0f;
        for (int j = threadIdx.x; j < m; j += blockDim.x) s += x[chan_index(j, ch, p)];
        const float mean = block_sum(s, scratch) / (float)m;
        float q = 0.0f;
        for (int j = threadIdx.x; j < m; j += blockDim.x) {
            const float d = x[chan_index(j, ch, p)] - mean;
            q += d * d;
        }
        q = block_sum(q, scratch);
        if (threadIdx.x == 0) {
            const float var = q / (float)m;
            const float unbiased = q / (float)(m - 1);  // host guarantees m >= 2
            save_mean[ch] = mean;
            save_invstd[ch] = 1.0f / sqrtf(var + p.eps);
            running_mean[ch] = (1.0f - p.momentum) * running_mean[ch] + p.momentum * mean;
            running_var[ch] = (1.0f - p.momentum) * running_var[ch] + p.momentum * unbiased;
        }
    }
}

// y = x * scale + shift per channel (then ReLU when fused). `stat` is the inverse std (train) or
// the running variance (eval, from_var = 1).
extern "C" __global__ void batchnorm_apply_f32(const float* __restrict__ x, const float* __restrict__ mean,
                                               const float* __restrict__ stat, const float* __restrict__ gamma,
                                               const float* __restrict__ beta, float* __restrict__ y, BnParams p) {
    const int64_t total = (int64_t)p.n * p.c * p.hw;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int ch = ((int)i / p.hw) % p.c;  // i < total <= INT32_MAX
        const float invstd = p.from_var ? 1.0f / sqrtf(stat[ch] + p.eps) : stat[ch];
        const float scale = gamma[ch] * invstd;
        const float shift = beta[ch] - mean[ch] * scale;
        const float v = x[i] * scale + shift;
        y[i] = p.relu ? relu(v) : v;
    }
}

// dbeta = sum g, dgamma = invstd * sum g * (x - mean) per channel (written, not accumulated).
// `y` (the saved forward output) is read only when p.relu is set.
extern "C" __global__ void __launch_bounds__(BN_MAX_BLOCK)
    batchnorm_bwd_reduce_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                    const float* __restrict__ dy, const float* __restrict__ mean,
                                                    const float* __restrict__ invstd, float* __restrict__ dgamma,
                                                    float* __restrict__ dbeta, BnParams p) {
    __shared__ float scratch[32];
    const int m = p.n * p.hw;
    for (int ch = blockIdx.x; ch < p.c; ch += gridDim.x) {
        const float mu = mean[ch];
        float sg = 0.0f, sgx = 0.0f;
        for (int j = threadIdx.x; j < m; j += blockDim.x) {
            const int k = chan_index(j, ch, p);
            float g = dy[k];
            if (p.relu && y[k] <= 0.0f) g = 0.0f;
            sg += g;
            sgx += g * (x[k] - mu);
        }
        sg = block_sum(sg, scratch);
        sgx = block_sum(sgx, scratch);
        if (threadIdx.x == 0) {
            dbeta[ch] = sg;
            dgamma[ch] = sgx * invstd[ch];
        }
    }
}

// dx from the per-channel sums of batchnorm_bwd_reduce.
extern "C" __global__ void batchnorm_bwd_dx_f32(const float* __restrict__ x, const float* __restrict__ y,
                                                const float* __restrict__ dy, const float* __restrict__ mean,
                                                const float* __restrict__ invstd, const float* __restrict__ gamma,
                                                const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                                                float* __restrict__ dx, BnParams p) {
    const int64_t total = (int64_t)p.n * p.c * p.hw;
    const float inv_m = 1.0f / (float)(p.n * p.hw);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int ch = ((int)i / p.hw) % p.c;  // i < total <= INT32_MAX
        const float is = invstd[ch];
        const float k = gamma[ch] * is;
        const float mean_g = dbeta[ch] * inv_m;
        const float proj = dgamma[ch] * is * inv_m;
        float g = dy[i];
        if (p.relu && y[i] <= 0.0f) g = 0.0f;
        dx[i] = (g - mean_g - (x[i] - mean[ch]) * proj) * k;
    }
}
