// ReLU forward and backward, elementwise, f32. As PyTorch: y = (x <= 0) ? 0 : x (NaN passes
// through), and the backward masks with the forward *output*: dx = (y <= 0) ? 0 : dy.
// Both may run in place (y == x, dx == dy), so no pointer is __restrict__.
#include "common.cuh"

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = v <= 0.0f ? 0.0f : v;
    }
}

extern "C" __global__ void relu_bwd_f32(const float* y, const float* dy, float* dx, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        dx[i] = y[i] <= 0.0f ? 0.0f : dy[i];
    }
}
