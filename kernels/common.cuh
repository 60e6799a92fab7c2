// Shared device helpers: dtype conversion, warp/block reductions, the "first bad index" flag.
// Every kernel family includes this; nothing here is a kernel entry point.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

// ---- dtype conversion: all arithmetic is f32, storage may be f16/bf16 --------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---- activation storage: f32, or bf16 in mixed precision (math stays f32) ----------------------
// Element loads and stores, and groups of four for the vectorized paths: a group is 16 bytes of
// f32 or 8 of bf16, aligned to its size (the host checks the pointers).
__device__ __forceinline__ float ld_act(const float* a, int i) { return a[i]; }
__device__ __forceinline__ float ld_act(const __nv_bfloat16* a, int i) { return __bfloat162float(a[i]); }
__device__ __forceinline__ void st_act(float* a, int i, float v) { a[i] = v; }
__device__ __forceinline__ void st_act(__nv_bfloat16* a, int i, float v) { a[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ float4 ld_act4(const float* a, int i) { return *reinterpret_cast<const float4*>(a + i); }
__device__ __forceinline__ float4 ld_act4(const __nv_bfloat16* a, int i) {
    const uint2 u = *reinterpret_cast<const uint2*>(a + i);
    // bf16 -> f32 is exact: the bf16 bits are the f32's high half.
    return {__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
            __uint_as_float(u.y & 0xffff0000u)};
}
__device__ __forceinline__ void st_act4(float* a, int i, float4 v) { *reinterpret_cast<float4*>(a + i) = v; }
__device__ __forceinline__ void st_act4(__nv_bfloat16* a, int i, float4 v) {
    const auto bits = [](float f) { return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(f)); };
    *reinterpret_cast<uint2*>(a + i) = {bits(v.x) | bits(v.y) << 16, bits(v.z) | bits(v.w) << 16};
}

// extern "C" entry points per activation type: NAME (f32 activations) and NAME_abf16.
#define EC_FOR_EACH_ACT(M) \
    M(float, )             \
    M(__nv_bfloat16, _abf16)

// ---- reductions ----------------------------------------------------------------------------------
// fmaxf drops NaN; softmax must propagate it (PyTorch does), so max is NaN-sticky.
__device__ __forceinline__ float nan_max(float a, float b) {
    return (isnan(a) || a > b) ? a : b;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (<= 1024). Every thread gets the result.
// `scratch` is 32 floats of shared memory; the trailing barrier lets callers reuse it at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : -INFINITY;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// ---- input validation ----------------------------------------------------------------------------
// Kernels never read or write through a bad index. They record the smallest offending sample index
// in `*first_bad` (initialised to INT32_MAX by the host) and skip the sample; the host turns it into
// an error naming that sample after the launch.
__device__ __forceinline__ void flag_bad(int* first_bad, int64_t i) {
    atomicMin(first_bad, (int)(i < INT32_MAX ? i : INT32_MAX - 1));
}

// ---- launch bounds -------------------------------------------------------------------------------
// Kernels the host may launch with up to 1024 threads per block say so (EC_BOUNDS_MAX_BLOCK), which
// caps them at 64 registers per thread: 1024 x 64 is a block's whole register file on sm_80/sm_90,
// so such a launch cannot fail for lack of registers. The explicit minimum of one block per SM
// matters: with `__launch_bounds__(1024)` alone ptxas aims at two blocks per SM, caps registers at
// 32 and spills (the cross-entropy kernel: 32 bytes of spill stores; `-Xptxas -v` shows it).
#define EC_MAX_BLOCK 1024
#define EC_BOUNDS_MAX_BLOCK __launch_bounds__(EC_MAX_BLOCK, 1)

// ---- parameter structs: layout checked against kernels/params.def (and so the Rust twins) -----------
#define EC_PARAMS(name, size, align)                 \
    namespace ec_layout {                            \
    constexpr unsigned long name##_size = (size);    \
    constexpr unsigned long name##_align = (align);  \
    }
#include "params.def"
#undef EC_PARAMS
#define EC_CHECK_PARAMS(name)                                                                   \
    static_assert(sizeof(name) == ec_layout::name##_size && alignof(name) == ec_layout::name##_align, \
                  #name " does not match kernels/params.def (and so its Rust twin in src/)")

// Dynamic shared memory (sized per launch). A macro so that the emulated driver's host build
// (tests/emulator/cuda_shim.h) can supply its own definition; nvcc sees the usual declaration.
#ifndef EC_DYNAMIC_SHARED
#define EC_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// extern "C" entry points per dtype, so launch names are predictable: NAME_f32, NAME_f16, NAME_bf16.
#define EC_FOR_EACH_FLOAT(M) \
    M(float, f32)            \
    M(__half, f16)           \
    M(__nv_bfloat16, bf16)
