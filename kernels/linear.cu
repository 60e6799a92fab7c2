// Fully connected layer, f32: y = x W^T + b (x: n x in, W: out x in, b: out), backward
// dx = dy W, dW = dy^T x, db = column sums of dy. All three products go through one tiled SGEMM:
//
//   C[i, j] = sum_k A(i, k) * B(k, j)  (+ bias[j])      i < m, j < n, k < K
//   A(i, k) = a[i * a_rs + k * a_cs],  B(k, j) = b[k * b_rs + j * b_cs],  C row-major with ldc
//
// so transposes are just strides. A 256-thread block computes a 64 x 64 tile of C, staging 64 x 16
// panels of A and B in shared memory; each thread keeps a 4 x 4 register micro-tile (rows ty + 16 r,
// columns tx + 16 s, so the shared-memory reads are bank-conflict free). Out-of-range elements are
// loaded as 0, so any m, n, K (K = 0 writes bias or zeros). Every C element is one thread's
// sequential fmaf chain over k in order: deterministic, no atomics. C is written, never read.
#include "common.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16
#define GEMM_THREADS 256

// Mirrors `GemmParams` in src/linear/cuda.rs. Strides and sizes fit i32 (checked by the host).
struct GemmParams {
    int32_t m, n, k;
    int32_t a_rs, a_cs;
    int32_t b_rs, b_cs;
    int32_t ldc;
    int32_t has_bias;  // bias (length n) is read only when set
};
EC_CHECK_PARAMS(GemmParams);

// grid: (ceil(n / 64), ceil(m / 64)), block: 256.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    linear_sgemm_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
              const float* __restrict__ bias, GemmParams p) {
    __shared__ float As[GEMM_BK][GEMM_BM + 4];  // As[k][i]
    __shared__ float Bs[GEMM_BK][GEMM_BN + 4];  // Bs[k][j]
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    // Load order: walk the contiguous dimension of each operand with consecutive threads (coalesced).
    const bool a_k_contig = p.a_cs == 1;
    const bool b_j_contig = p.b_cs == 1;

    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) acc[r][s] = 0.0f;

    for (int k0 = 0; k0 < p.k; k0 += GEMM_BK) {
#pragma unroll
        for (int e = tid; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
            int ii, kk;
            if (a_k_contig) { kk = e % GEMM_BK; ii = e / GEMM_BK; }
            else { ii = e % GEMM_BM; kk = e / GEMM_BM; }
            const int gi = m0 + ii, gk = k0 + kk;
            As[kk][ii] = (gi < p.m && gk < p.k) ? a[(int64_t)gi * p.a_rs + (int64_t)gk * p.a_cs] : 0.0f;
        }
#pragma unroll
        for (int e = tid; e < GEMM_BN * GEMM_BK; e += GEMM_THREADS) {
            int jj, kk;
            if (b_j_contig) { jj = e % GEMM_BN; kk = e / GEMM_BN; }
            else { kk = e % GEMM_BK; jj = e / GEMM_BK; }
            const int gj = n0 + jj, gk = k0 + kk;
            Bs[kk][jj] = (gj < p.n && gk < p.k) ? b[(int64_t)gk * p.b_rs + (int64_t)gj * p.b_cs] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            float ar[4], br[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) ar[r] = As[kk][ty + 16 * r];
#pragma unroll
            for (int s = 0; s < 4; ++s) br[s] = Bs[kk][tx + 16 * s];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int s = 0; s < 4; ++s) acc[r][s] = fmaf(ar[r], br[s], acc[r][s]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int gi = m0 + ty + 16 * r;
        if (gi >= p.m) continue;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const int gj = n0 + tx + 16 * s;
            if (gj >= p.n) continue;
            float v = acc[r][s];
            if (p.has_bias) v += bias[gj];
            c[(int64_t)gi * p.ldc + gj] = v;
        }
    }
}

// out[j] = sum_r x[r * cols + j] for j < cols: a thread per column, rows in order (deterministic;
// consecutive threads read consecutive addresses).
extern "C" __global__ void linear_col_sum_f32(const float* __restrict__ x, float* __restrict__ out, int32_t rows,
                                       int32_t cols) {
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < rows; ++r) s += x[(int64_t)r * cols + j];
        out[j] = s;
    }
}
