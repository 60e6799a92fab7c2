// Kernels for the emulator's own tests (tests/emulator/selftest.cpp): correct ones that must pass,
// and deliberately broken ones that the emulated driver must catch. Built into the emulated
// libcuda.so as the module "selftest_kernels" by scripts/build-emulator.sh (through nvcc first,
// like every module, for its entry points and register counts); never part of the crate.
#include "common.cuh"

// ---- correct kernels --------------------------------------------------------------------------------

// out[0] = sum of x[0..n) by one block (common.cuh's block_sum: warp shuffles and two barriers).
extern "C" __global__ void selftest_block_sum(const float* x, float* out, int n) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// Each thread publishes x[i] in shared memory and reads its right neighbour's, with the barrier.
extern "C" __global__ void selftest_neighbour_synced(const float* x, float* out) {
    __shared__ float tile[1024];
    const int t = threadIdx.x;
    tile[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = tile[(t + 1) % blockDim.x];
}

// Every warp collective with its edge cases; out holds 10 ints per thread (see selftest.cpp).
extern "C" __global__ void selftest_collectives(int* out) {
    const int t = threadIdx.x, lane = t & 31;
    int* o = out + 10 * t;
    o[0] = __shfl_sync(0xffffffffu, t * 10, (lane * 7) & 31);
    o[1] = __shfl_up_sync(0xffffffffu, t, 3);
    o[2] = __shfl_down_sync(0xffffffffu, t, 5, 16);
    o[3] = __shfl_xor_sync(0xffffffffu, t, 9);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __any_sync(0xffffffffu, lane == 17);
    o[6] = __all_sync(0xffffffffu, lane < 31);
    // A half-warp collective: only lanes 0..15 take part.
    o[7] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, t + 1000, 1) : -1;
    o[8] = __shfl_sync(0xffffffffu, 2.5f * t, 31 - lane) == 2.5f * (t - lane + 31 - lane) ? 1 : 0;
    __syncwarp();
    o[9] = (int)(__shfl_xor_sync(0xffffffffu, (long long)t << 33, 1) >> 33);  // 64-bit operand
}

// Dynamic shared memory sized by the launch: reverses x within the block.
EC_DYNAMIC_SHARED(float, selftest_dyn);
extern "C" __global__ void selftest_dynamic_smem(const float* x, float* out) {
    const int t = threadIdx.x, n = blockDim.x;
    selftest_dyn[t] = x[t];
    __syncthreads();
    out[t] = selftest_dyn[n - 1 - t];
}

// At most 64 threads per block (__launch_bounds__ becomes .maxntid in the PTX).
extern "C" __global__ void __launch_bounds__(64) selftest_bounded(float* out) { out[threadIdx.x] = 1.0f; }

// Keeps many values live at once so that ptxas needs more than 64 registers per thread: 1024
// threads per block do not fit the 65536-register file.
extern "C" __global__ void selftest_many_registers(const float* x, float* out, int stride) {
    float v[80];
#pragma unroll
    for (int i = 0; i < 80; ++i) v[i] = x[threadIdx.x + i * stride];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 80; ++i) s = fmaf(v[i], v[79 - i] + s, s * v[(i * 37) % 80]);
    out[threadIdx.x] = s;
}

// ---- broken kernels: the emulator must catch each ------------------------------------------------

// The neighbour exchange without the barrier: a thread may read its neighbour's slot before the
// neighbour wrote it (shared memory starts as 0xFF poison, a NaN).
extern "C" __global__ void selftest_missing_barrier(const float* x, float* out) {
    __shared__ float tile[1024];
    const int t = threadIdx.x;
    tile[t] = x[blockIdx.x * blockDim.x + t];
    out[blockIdx.x * blockDim.x + t] = tile[(t + 1) % blockDim.x];
}

// common.cuh's block_sum without its trailing barrier, called twice on one scratch array: a warp
// that runs ahead overwrites its slot of the first sum before slower warps have read it.
__device__ float block_sum_racy(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : 0.0f;
    return warp_sum(v);  // the bug: no __syncthreads() before scratch is written again
}
extern "C" __global__ void selftest_missing_trailing_barrier(const float* x, float* out) {
    __shared__ float scratch[32];
    const float a = block_sum_racy(x[threadIdx.x], scratch);
    const float b = block_sum_racy(2.0f * x[threadIdx.x], scratch);
    out[threadIdx.x] = b - 2.0f * a;  // 0 when correct (small integers: exact)
}

// Writes one element per thread into a buffer of n < blockDim.x elements: past its end.
extern "C" __global__ void selftest_oob_write(float* out, int n) {
    (void)n;
    out[threadIdx.x] = 1.0f;  // the bug: no `if (threadIdx.x < n)`
}

// A full-mask warp sum in a block whose size is not a multiple of 32: the last warp is partial,
// so the mask names lanes that do not exist.
extern "C" __global__ void selftest_partial_warp_shuffle(const float* x, float* out) {
    const float s = warp_sum(x[threadIdx.x]);
    if ((threadIdx.x & 31) == 0) out[threadIdx.x >> 5] = s;
}

// Half of each warp returns early, the other half shuffles with the full mask.
extern "C" __global__ void selftest_exited_lane_shuffle(const float* x, float* out) {
    if ((threadIdx.x & 31) >= 16) return;
    out[threadIdx.x] = warp_sum(x[threadIdx.x]);
}

// Lanes 0..15 wait at __syncthreads while lanes 16..31 wait at a full-warp __syncwarp: neither
// can complete.
extern "C" __global__ void selftest_deadlock(float* out) {
    if ((threadIdx.x & 31) < 16) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 0.0f;
}

// Warp 0 publishes its values and waits at one __syncthreads, the other warps wait at another and
// then read warp 0's values. bar.sync on the GPU matches threads by count, not by call site, so
// this may even work there; it is undefined behaviour all the same (divergent barrier).
extern "C" __global__ void selftest_barrier_two_sites(const float* x, float* out) {
    __shared__ float tile[32];
    const int t = threadIdx.x;
    if (t < 32) {
        tile[t] = x[t];
        __syncthreads();
        out[t] = tile[t];
    } else {
        __syncthreads();
        out[t] = tile[t & 31];
    }
}

// Writes one element past a static __shared__ array (`<=` for `<`): the write lands in the next
// variable's bytes, which AddressSanitizer does not see; the guard between them does.
extern "C" __global__ void selftest_shared_oob(const float* x, float* out, int n) {
    __shared__ float below[32];
    __shared__ float tile[32];
    __shared__ float above[32];
    const int t = threadIdx.x;
    below[t & 31] = 1.0f;
    above[t & 31] = 2.0f;
    if (t <= n) tile[t] = x[t];  // the bug: n == 32 writes tile[32]
    __syncthreads();
    out[t] = tile[t & 31] + below[t & 31] + above[t & 31];
}

// Writes one element past the launch's dynamic shared memory (blockDim.x floats).
extern "C" __global__ void selftest_dynamic_smem_oob(const float* x, float* out) {
    const int t = threadIdx.x, n = blockDim.x;
    selftest_dyn[t + 1] = x[t];  // the bug: thread n - 1 writes element n
    __syncthreads();
    out[t] = selftest_dyn[(t + 1) % n];
}

// A float4 load from x + 1: 4-byte aligned, not 16 (the GPU faults: misaligned address).
extern "C" __global__ void selftest_misaligned_float4(const float* x, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(x + 1 + 4 * threadIdx.x);  // the bug: x + 1
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
