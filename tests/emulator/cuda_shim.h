// Forced first include (g++ -include) of every kernels/*.cu compiled for the emulated CUDA driver:
// maps the CUDA C++ dialect the kernels use onto host C++ and the emulator's runtime (emu.h).
// Test-only; the kernel sources stay the single source of truth.
//
// - __global__/__device__ functions become ordinary functions; every CUDA thread of a block runs
//   them on a fiber of its own (runtime.cpp), so threadIdx & co. read the running fiber's state.
// - __shared__ variables become statics in the `ec_shared` section, which the runtime fills with
//   0xFF bytes (NaN, -1) before every block, so a read before a write (a missing barrier) sees
//   garbage. Blocks run one after another and launches are serialized, so one copy suffices. A
//   guard variable precedes each; a write past a variable fails the launch (shared_guard.h).
// - Dynamic shared memory: EC_DYNAMIC_SHARED (see kernels/common.cuh) is a view of the launch's
//   buffer, with guard zones in the plain build, malloc'ed with exactly the requested size under
//   AddressSanitizer (which then sees an overrun).
// - __syncthreads and the warp collectives are real synchronization points (runtime.cpp).
// - Atomics are plain read-modify-writes: fibers switch only at barriers and collectives, so no
//   other CUDA thread can run in between.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "emu.h"
#include "tensor_core.h"

// kernels/tensor_core.cuh picks the emulated twins of the tensor-core instructions with this.
#define EC_EMULATED_CUDA 1

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __align__
#undef __shared__
#undef __constant__
#undef __managed__

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
// Enforced from the real compiler's output instead (.maxntid in the PTX, see gen_registry.py).
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Each __shared__ variable is preceded by a 16-byte guard variable in the same section; the
// runtime checks the bytes between variables at every barrier and block end (shared_guard.h).
#define EC_CAT2(a, b) a##b
#define EC_CAT(a, b) EC_CAT2(a, b)
#define __shared__                                                                                      \
    static char EC_CAT(ec_shared_guard_, __COUNTER__)[16] __attribute__((section("ec_shared"), used, aligned(16))); \
    static __attribute__((section("ec_shared")))
#define __constant__ static
#define __managed__ static

#define EC_DYNAMIC_SHARED(T, name) static const ::ec_emu::DynamicShared<T> name {}

namespace ec_emu {
template <class T> struct DynamicShared {
    template <class I> T& operator[](I i) const { return static_cast<T*>(cur.dyn_smem)[i]; }
};

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collective on a type over 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
}  // namespace ec_emu

#define threadIdx (::ec_emu::cur.thread_idx)
#define blockIdx (::ec_emu::cur.block_idx)
#define blockDim (::ec_emu::cur.block_dim)
#define gridDim (::ec_emu::cur.grid_dim)
#define warpSize 32

// ---- barriers and warp collectives ----------------------------------------------------------------
// The call site travels with the barrier: threads at two different __syncthreads never release
// each other (divergent barriers are undefined behaviour on the GPU; runtime.cpp fails them).
inline void __syncthreads(const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()) {
    ::ec_emu::syncthreads("__syncthreads", site_file, site_line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::ec_emu::warp_collective(::ec_emu::Coll::Syncwarp, mask, 0, 0, 32, "__syncwarp");
}
#define EC_SHFL(NAME, KIND)                                                                              \
    template <class T> inline T NAME(unsigned mask, T var, int arg, int width = 32) {                   \
        return ::ec_emu::from_bits<T>(                                                                   \
            ::ec_emu::warp_collective(::ec_emu::Coll::KIND, mask, ::ec_emu::to_bits(var), arg, width, #NAME)); \
    }
EC_SHFL(__shfl_sync, ShflIdx)
EC_SHFL(__shfl_up_sync, ShflUp)
EC_SHFL(__shfl_down_sync, ShflDown)
EC_SHFL(__shfl_xor_sync, ShflXor)
#undef EC_SHFL
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)::ec_emu::warp_collective(::ec_emu::Coll::Ballot, mask, pred != 0, 0, 32, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int pred) {
    return (int)::ec_emu::warp_collective(::ec_emu::Coll::Any, mask, pred != 0, 0, 32, "__any_sync");
}
inline int __all_sync(unsigned mask, int pred) {
    return (int)::ec_emu::warp_collective(::ec_emu::Coll::All, mask, pred != 0, 0, 32, "__all_sync");
}
inline void __trap() { ::ec_emu::kernel_trap("__trap()"); }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- atomics (see the note at the top) -----------------------------------------------------------
template <class T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }
template <class T> inline T atomicMin(T* p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <class T> inline T atomicMax(T* p, T v) { T o = *p; *p = v > o ? v : o; return o; }
template <class T> inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <class T> inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
template <class T> inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
template <class T> inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <class T> inline T atomicXor(T* p, T v) { T o = *p; *p = o ^ v; return o; }

// ---- arithmetic intrinsics ------------------------------------------------------------------------
// Kernel translation units are compiled with -ffp-contract=off, so a * b + c is never fused here;
// the _rn intrinsics are single IEEE operations in round-to-nearest, as on the GPU.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline float __saturatef(float a) { return a != a ? 0.0f : a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }
inline int __float_as_int(float a) { return ::ec_emu::from_bits<int>(::ec_emu::to_bits(a)); }
inline unsigned __float_as_uint(float a) { return ::ec_emu::from_bits<unsigned>(::ec_emu::to_bits(a)); }
inline float __int_as_float(int a) { return ::ec_emu::from_bits<float>(::ec_emu::to_bits(a)); }
inline float __uint_as_float(unsigned a) { return ::ec_emu::from_bits<float>(::ec_emu::to_bits(a)); }
inline int __popc(unsigned a) { return __builtin_popcount(a); }
inline int __popcll(unsigned long long a) { return __builtin_popcountll(a); }
inline int __clz(int a) { return a == 0 ? 32 : __builtin_clz((unsigned)a); }
inline int __ffs(int a) { return __builtin_ffs(a); }
template <class T> inline T __ldg(const T* p) { return *p; }

// CUDA's global min/max overloads (the kernels call e.g. min(int64_t, int64_t)).
#define EC_MINMAX(T)                                      \
    inline T min(T a, T b) { return b < a ? b : a; }      \
    inline T max(T a, T b) { return a < b ? b : a; }
EC_MINMAX(int)
EC_MINMAX(unsigned int)
EC_MINMAX(long)
EC_MINMAX(unsigned long)
EC_MINMAX(long long)
EC_MINMAX(unsigned long long)
#undef EC_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
