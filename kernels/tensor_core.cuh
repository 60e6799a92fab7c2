// Tensor-core and asynchronous-copy instructions, one device function each: the warp-level matrix
// multiply-accumulate (`mma.sync`), the shared-memory matrix load (`ldmatrix`) and the
// global-to-shared asynchronous copy (`cp.async` with its commit and wait groups).
//
// Under nvcc's device pass (`__CUDA_ARCH__`) each body is the instruction itself as inline PTX
// (sm_80 or newer). Compiled by the emulated CUDA driver's host build (tests/emulator/cuda_shim.h,
// which defines EC_EMULATED_CUDA), each calls its emulated twin (tests/emulator/tensor_core.cpp),
// which follows the PTX ISA's definition: the same fragment layouts, the same warp-wide
// participation rule, the same completion rule for asynchronous copies. nvcc's host pass sees
// declarations only: no host code calls these.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k8 / m16n8k16"), with
//   g = lane >> 2 (groupID) and t = lane & 3 (threadID_in_group):
//
// mma_m16n8k8_tf32, A (16x8, row-major), B (8x8, column-major), C/D (16x8):
//   a[0] = A[g][t]       a[1] = A[g+8][t]     a[2] = A[g][t+4]     a[3] = A[g+8][t+4]
//   b[0] = B[t][g]       b[1] = B[t+4][g]
//   c[0] = C[g][2t]      c[1] = C[g][2t+1]    c[2] = C[g+8][2t]    c[3] = C[g+8][2t+1]
//   Each a/b register holds the bits of an f32; the tensor core reads only its TF32 part (sign,
//   8 exponent bits, the top 10 mantissa bits): the low 13 bits are ignored (truncation) unless
//   the value was rounded with f32_to_tf32 (round to nearest, ties away from zero).
//
// mma_m16n8k16_bf16 / _f16, A (16x16, row-major), B (16x8, column-major), C/D as above; each
// register holds two 16-bit elements, the lower-indexed one in the low half:
//   a[0] = A[g][2t..2t+1]      a[1] = A[g+8][2t..2t+1]
//   a[2] = A[g][2t+8..2t+9]    a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]      b[1] = B[2t+8..2t+9][g]
//
// ldmatrix_xN (N = 1, 2, 4 matrices of 8x8 16-bit elements, each row 16 bytes in shared memory):
// lanes 8i..8i+7 pass the addresses of rows 0..7 of matrix i (the other lanes' addresses are
// ignored, but every lane of the warp must call); every row address 16-byte aligned. Lane l
// receives in r[i] row l>>2, elements 2(l&3) and 2(l&3)+1 of matrix i (the lower-indexed element
// in the low half); with _trans the transpose: elements [2(l&3)][l>>2] and [2(l&3)+1][l>>2].
// Matrix i loaded this way is exactly an A or B fragment register above (e.g. x4 of the four
// 8x8 quarters of a 16x16 A tile, in the order of a[0..3], gives its fragment).
//
// cp.async: each thread's copies are queued; cp_async_commit closes the thread's open group;
// cp_async_wait<N> returns when all but the newest N committed groups have landed;
// cp_async_wait_all when every copy of the thread has (including an uncommitted one). A copy's
// destination must not be read before the wait that covers it (and a __syncthreads, for other
// threads to see it). Sizes 4/8/16 bytes with .ca (cached in L1), 16 with .cg (L2 only);
// destination in shared memory, source in global memory, both aligned to the size. The _zfill
// variant copies src_bytes (0..16) and fills the rest of the 16 bytes with zeros: src_bytes 0
// reads nothing (a padding row) and only zero-fills.
#pragma once

#include <stdint.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/tensor_core.cuh needs sm_80 or newer (mma m16n8k8.tf32, m16n8k16.bf16, cp.async)"
#endif

#if defined(__CUDA_ARCH__)

// ---- the real instructions --------------------------------------------------------------------

__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ uint32_t f32_to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ uint32_t ec_smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ec_smem_addr(smem_row))
                 : "memory");
}

__device__ __forceinline__ void cp_async_ca_4(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(ec_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_ca_8(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(ec_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_ca_16(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(ec_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_cg_16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(ec_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_cg_16_zfill(void* smem, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ec_smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7 here (the pipelines use few stages)");
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

#elif defined(EC_EMULATED_CUDA)

// ---- the emulated twins (tests/emulator/tensor_core.cpp) ----------------------------------------
// mma and ldmatrix are .aligned: every lane of the warp must execute the same instruction. The
// twins take the caller's source location as default arguments (evaluated where the kernel calls
// them), so the emulator can fail a warp whose lanes meet at two different call sites.
#define EC_TC_CALL_SITE const char *ec_site_file = __builtin_FILE(), int ec_site_line = __builtin_LINE()

__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4],
                                                 EC_TC_CALL_SITE) {
    ::ec_emu::tc_mma(::ec_emu::MmaKind::Tf32, d, a, b, c, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4],
                                                  EC_TC_CALL_SITE) {
    ::ec_emu::tc_mma(::ec_emu::MmaKind::Bf16, d, a, b, c, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4],
                                                 EC_TC_CALL_SITE) {
    ::ec_emu::tc_mma(::ec_emu::MmaKind::F16, d, a, b, c, ec_site_file, ec_site_line);
}
__device__ __forceinline__ uint32_t f32_to_tf32(float x) { return ::ec_emu::tc_f32_to_tf32(x); }

__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 1, false, smem_row, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 2, false, smem_row, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 4, false, smem_row, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 1, true, smem_row, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 2, true, smem_row, ec_site_file, ec_site_line);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row, EC_TC_CALL_SITE) {
    ::ec_emu::tc_ldmatrix(r, 4, true, smem_row, ec_site_file, ec_site_line);
}

#undef EC_TC_CALL_SITE

__device__ __forceinline__ void cp_async_ca_4(void* smem, const void* gmem) {
    ::ec_emu::tc_cp_async(smem, gmem, 4, 4, "cp.async.ca (4 bytes)");
}
__device__ __forceinline__ void cp_async_ca_8(void* smem, const void* gmem) {
    ::ec_emu::tc_cp_async(smem, gmem, 8, 8, "cp.async.ca (8 bytes)");
}
__device__ __forceinline__ void cp_async_ca_16(void* smem, const void* gmem) {
    ::ec_emu::tc_cp_async(smem, gmem, 16, 16, "cp.async.ca (16 bytes)");
}
__device__ __forceinline__ void cp_async_cg_16(void* smem, const void* gmem) {
    ::ec_emu::tc_cp_async(smem, gmem, 16, 16, "cp.async.cg (16 bytes)");
}
__device__ __forceinline__ void cp_async_cg_16_zfill(void* smem, const void* gmem, int src_bytes) {
    ::ec_emu::tc_cp_async(smem, gmem, 16, src_bytes, "cp.async.cg (16 bytes, zero-fill)");
}
__device__ __forceinline__ void cp_async_commit() { ::ec_emu::tc_cp_async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7 here (the pipelines use few stages)");
    ::ec_emu::tc_cp_async_wait(N);
}
__device__ __forceinline__ void cp_async_wait_all() { ::ec_emu::tc_cp_async_wait_all(); }

#else

// ---- nvcc's host pass: declarations only (device code is never called from the host) ------------

__device__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
__device__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
__device__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
__device__ uint32_t f32_to_tf32(float x);
__device__ void ldmatrix_x1(uint32_t r[1], const void* smem_row);
__device__ void ldmatrix_x2(uint32_t r[2], const void* smem_row);
__device__ void ldmatrix_x4(uint32_t r[4], const void* smem_row);
__device__ void ldmatrix_x1_trans(uint32_t r[1], const void* smem_row);
__device__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row);
__device__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row);
__device__ void cp_async_ca_4(void* smem, const void* gmem);
__device__ void cp_async_ca_8(void* smem, const void* gmem);
__device__ void cp_async_ca_16(void* smem, const void* gmem);
__device__ void cp_async_cg_16(void* smem, const void* gmem);
__device__ void cp_async_cg_16_zfill(void* smem, const void* gmem, int src_bytes);
__device__ void cp_async_commit();
template <int N> __device__ void cp_async_wait() {}
__device__ void cp_async_wait_all();

#endif
