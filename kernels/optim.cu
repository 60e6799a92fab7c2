// SGD with momentum (optionally Nesterov) and weight decay over a flat f32 parameter buffer, with
// exactly the arithmetic of torch.optim.SGD (dampening 0):
//
//   d = grad + weight_decay * p                    (skipped when weight_decay == 0)
//   buf = momentum * buf + d                       (skipped when momentum == 0)
//   d = nesterov ? d + momentum * buf : buf        (when momentum != 0)
//   p = p - lr * d
//
// PyTorch sets buf = d on the first step; the host zero-fills buf before it, and momentum * 0 + d
// is exactly d, so every step (the first too) is the same kernel. The __fmul_rn/__fadd_rn
// intrinsics forbid fused multiply-adds, so each product and sum is rounded as in PyTorch and as in
// the CPU version (src/optim/cpu.rs): the two agree bit for bit.
#include "common.cuh"

// Mirrors `SgdParams` in src/optim/cuda.rs.
struct SgdParams {
    int64_t n;
    float lr;
    float momentum;
    float weight_decay;
    int32_t nesterov;
};
EC_CHECK_PARAMS(SgdParams);

extern "C" __global__ void sgd_step_f32(float* __restrict__ param, const float* __restrict__ grad,
                                        float* __restrict__ buf, SgdParams q) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < q.n; i += (int64_t)gridDim.x * blockDim.x) {
        const float p = param[i];
        float d = grad[i];
        if (q.weight_decay != 0.0f) d = __fadd_rn(d, __fmul_rn(q.weight_decay, p));
        if (q.momentum != 0.0f) {
            const float b = __fadd_rn(__fmul_rn(q.momentum, buf[i]), d);
            buf[i] = b;
            d = q.nesterov ? __fadd_rn(d, __fmul_rn(q.momentum, b)) : b;
        }
        param[i] = __fsub_rn(p, __fmul_rn(q.lr, d));
    }
}
