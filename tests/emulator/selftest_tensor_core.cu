// Kernels for the emulator's tensor-core self-tests (tests/emulator/selftest_tensor_core.inc):
// every function of kernels/tensor_core.cuh against a scalar GEMM or its ISA definition, and
// planted bugs the emulated driver must catch. Built like every module (nvcc for sm_90 first, so
// the inline PTX of every function goes through ptxas), never part of the crate.
#include "tensor_core.cuh"

// One 16x8 output tile per warp: tile w = blockIdx.x * (blockDim.x / 32) + warp. A is 16 x K
// row-major, B is K x 8 row-major (B[k][n]), C and D 16 x 8 row-major, each tile after the other.

// TF32 m16n8k8 with fragments loaded straight from global memory by the documented layout.
// round: 1 rounds the operands with f32_to_tf32 (cvt.rna), 0 passes the raw f32 bits (the tensor
// core truncates them). bug: 1 swaps a[1] and a[2] (a wrong fragment index).
extern "C" __global__ void selftest_tc_mma_tf32(const float* A, const float* B, const float* C, float* D, int round,
                                                int bug) {
    const int lane = threadIdx.x & 31, tile = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int g = lane >> 2, t = lane & 3;
    A += tile * 16 * 8;
    B += tile * 8 * 8;
    C += tile * 16 * 8;
    D += tile * 16 * 8;
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    uint32_t a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = round ? f32_to_tf32(av[i]) : __float_as_uint(av[i]);
    for (int i = 0; i < 2; ++i) b[i] = round ? f32_to_tf32(bv[i]) : __float_as_uint(bv[i]);
    if (bug) {
        const uint32_t s = a[1];
        a[1] = a[2];
        a[2] = s;
    }
    float acc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    mma_m16n8k8_tf32(acc, a, b, acc);  // C and D the same registers, as kernels accumulate
    D[g * 8 + 2 * t] = acc[0];
    D[g * 8 + 2 * t + 1] = acc[1];
    D[(g + 8) * 8 + 2 * t] = acc[2];
    D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

// BF16 (f16 = 0) or F16 (f16 = 1) m16n8k16 on 16-bit element bits. mode 0: fragments loaded from
// global memory by the documented layout; mode 1: A (16x16) and B staged in shared memory and
// loaded with ldmatrix: A with x4, B with x2.trans (B stored k-major, as in global) for BF16 and
// with x2 from a transposed copy (n-major) for F16, so both ldmatrix forms meet the mma layout.
extern "C" __global__ void selftest_tc_mma_16(const uint16_t* A, const uint16_t* B, const float* C, float* D, int f16,
                                              int mode) {
    __shared__ __align__(16) uint16_t sa[4][16][16];
    __shared__ __align__(16) uint16_t sb[4][16][8];   // B[k][n]
    __shared__ __align__(16) uint16_t sbt[4][8][16];  // B[k][n] at [n][k]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tile = blockIdx.x * (blockDim.x >> 5) + warp;
    const int g = lane >> 2, t = lane & 3;
    A += tile * 16 * 16;
    B += tile * 16 * 8;
    C += tile * 16 * 8;
    D += tile * 16 * 8;
    uint32_t a[4], b[2];
    if (mode == 0) {
        a[0] = pack2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
        a[1] = pack2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
        a[2] = pack2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
        a[3] = pack2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
        b[0] = pack2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
        b[1] = pack2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    } else {
        for (int i = lane; i < 16 * 16; i += 32) sa[warp][i / 16][i % 16] = A[i];
        for (int i = lane; i < 16 * 8; i += 32) {
            sb[warp][i / 8][i % 8] = B[i];
            sbt[warp][i % 8][i / 8] = B[i];
        }
        __syncwarp();
        // x4: lanes 0-7 rows 0-7 of columns 0-7, 8-15 rows 8-15, 16-23 rows 0-7 of columns 8-15,
        // 24-31 rows 8-15 of columns 8-15: the order of a[0..3].
        ldmatrix_x4(a, &sa[warp][lane & 15][(lane >> 4) * 8]);
        if (!f16) ldmatrix_x2_trans(b, &sb[warp][lane & 15][0]);        // rows k 0-7, then k 8-15
        else ldmatrix_x2(b, &sbt[warp][lane & 7][((lane >> 3) & 1) * 8]);  // rows n, k 0-7 then 8-15
    }
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    if (f16) mma_m16n8k16_f16(d, a, b, c);
    else mma_m16n8k16_bf16(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// Every ldmatrix variant on 32 rows of 8 16-bit elements staged in shared memory: lane l passes
// the address of row perm[l] (a permutation, so the test sees which lane's address each matrix row
// came from) plus `offset_bytes` (16 for a correct call; 8 plants a misaligned row in lane 3, and
// 1 << 30 an address outside shared memory in lane 5). variant: matrices 1, 2 or 4, + 8 for
// .trans. out: 4 registers per lane, only the loaded ones written.
extern "C" __global__ void selftest_tc_ldmatrix(const uint16_t* rows, const int* perm, uint32_t* out, int variant,
                                                int offset_bytes) {
    __shared__ __align__(16) uint16_t s[33][8];
    const int lane = threadIdx.x;
    for (int i = lane; i < 32 * 8; i += 32) s[1 + i / 8][i % 8] = rows[i];
    __syncwarp();
    const char* row = reinterpret_cast<const char*>(&s[0][0]) + perm[lane] * 16 + 16;
    if (lane == 3 && offset_bytes == 8) row += 8;
    if (lane == 5 && offset_bytes == (1 << 30)) row += (1 << 30);
    uint32_t r[4];
    switch (variant) {
    case 1: ldmatrix_x1(r, row); break;
    case 2: ldmatrix_x2(r, row); break;
    case 4: ldmatrix_x4(r, row); break;
    case 9: ldmatrix_x1_trans(r, row); break;
    case 10: ldmatrix_x2_trans(r, row); break;
    case 12: ldmatrix_x4_trans(r, row); break;
    default: return;
    }
    const int loaded = variant & 7;
#pragma unroll
    for (int i = 0; i < 4; ++i)  // unrolled: r stays in registers (no stack frame)
        if (i < loaded) out[lane * 4 + i] = r[i];
}

// cp.async in three groups per thread, read by the thread's neighbour after the waits and a
// barrier. Thread t copies: group 0, src[4t] with .ca 4 bytes; group 1, src[4t..4t+1] with .ca 8;
// group 2, src[4t..4t+3] with .ca 16 and .cg 16, and .cg 16 zero-fill of (t % 17) source bytes.
// out gets 20 floats per thread, what its neighbour t + 1 copied: 1 (.ca 4), 2 (.ca 8), 4 (.ca 16),
// 4 (.cg 16), 4 (zero-fill) at offsets 0, 4, 8, 12, 16; the other 5 are left as they were.
// mode 0: correct. mode 1 (planted bug): the group-2 slots are read after wait_group 1, which
// does not cover group 2 (a wait one stage too shallow); a wait_all follows before the thread
// returns. mode 2 (planted bug): no wait at all for group 2: the thread returns with copies pending.
extern "C" __global__ void selftest_tc_cp_async(const float* src, float* out, int mode) {
    __shared__ __align__(16) float s0[64];
    __shared__ __align__(16) float s1[64][2];
    __shared__ __align__(16) float s2[64][4];
    __shared__ __align__(16) float s3[64][4];
    __shared__ __align__(16) float s4[64][4];
    const int t = threadIdx.x, n = blockDim.x, nb = (t + 1) % n;
    cp_async_ca_4(&s0[t], src + 4 * t);
    cp_async_commit();
    cp_async_ca_8(&s1[t][0], src + 4 * t);
    cp_async_commit();
    cp_async_ca_16(&s2[t][0], src + 4 * t);
    cp_async_cg_16(&s3[t][0], src + 4 * t);
    cp_async_cg_16_zfill(&s4[t][0], src + 4 * t, t % 17);
    cp_async_commit();
    float* o = out + 20 * t;
    cp_async_wait<2>();  // group 0 has landed
    __syncthreads();
    o[0] = s0[nb];
    cp_async_wait<1>();  // group 1 too
    __syncthreads();
    o[4] = s1[nb][0];
    o[5] = s1[nb][1];
    if (mode == 0) cp_async_wait<0>();
    if (mode == 2) {
        __syncthreads();
        return;
    }
    __syncthreads();
    for (int i = 0; i < 4; ++i) {
        o[8 + i] = s2[nb][i];
        o[12 + i] = s3[nb][i];
        o[16 + i] = s4[nb][i];
    }
    __syncthreads();  // every read above happens before any thread's wait_all below lands its copies
    cp_async_wait_all();
}

// A lane that skips the mma: lane 7 of every warp returns before it.
extern "C" __global__ void selftest_tc_mma_skipped_lane(const float* A, float* D) {
    const int lane = threadIdx.x & 31;
    if (lane == 7) return;
    uint32_t a[4] = {f32_to_tf32(A[lane]), 0, 0, 0}, b[2] = {f32_to_tf32(A[lane]), 0};
    float c[4] = {0, 0, 0, 0};
    mma_m16n8k8_tf32(c, a, b, c);
    D[threadIdx.x] = c[0];
}

// Half a warp at one mma, the other half at another (the same instruction in the source twice):
// on the GPU each .aligned mma needs the whole warp, so neither completes.
extern "C" __global__ void selftest_tc_mma_two_sites(const float* A, float* D) {
    const int lane = threadIdx.x & 31;
    uint32_t a[4] = {f32_to_tf32(A[lane]), 0, 0, 0}, b[2] = {f32_to_tf32(A[lane]), 0};
    float c[4] = {0, 0, 0, 0};
    if (lane < 16) mma_m16n8k8_tf32(c, a, b, c);
    else mma_m16n8k8_tf32(c, a, b, c);
    D[threadIdx.x] = c[0];
}
