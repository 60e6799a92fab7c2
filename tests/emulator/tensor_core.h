// The emulated twins of kernels/tensor_core.cuh (implemented in tensor_core.cpp): warp-level
// matrix multiply-accumulate, ldmatrix and cp.async as the PTX ISA defines them. Included by
// cuda_shim.h into every kernel translation unit of the emulated CUDA driver; test-only.
#pragma once

#include <stdint.h>

namespace ec_emu {

enum class MmaKind : int { Tf32, Bf16, F16 };

// mma.sync.aligned.m16n8k8 (TF32) / m16n8k16 (BF16, F16), row.col, F32 accumulate: a collective
// of the full warp; every lane passes its fragments and receives its part of D. site_file and
// site_line name the kernel's call site: lanes at different sites fail the launch.
void tc_mma(MmaKind kind, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
            const char* site_file, int site_line);
// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits (low 13 bits 0).
uint32_t tc_f32_to_tf32(float x);
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: a collective of the full warp.
void tc_ldmatrix(uint32_t* r, int matrices, bool trans, const void* smem_row, const char* site_file, int site_line);
// cp.async of `size` bytes (4, 8 or 16), of which the first `src_bytes` come from `src` and the
// rest are zeros; commit_group; wait_group N; wait_all.
void tc_cp_async(void* dst, const void* src, int size, int src_bytes, const char* what);
void tc_cp_async_commit();
void tc_cp_async_wait(int newest_pending_allowed);
void tc_cp_async_wait_all();

}  // namespace ec_emu
