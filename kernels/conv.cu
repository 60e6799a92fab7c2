// 2-D convolution, NCHW activations, KCRS filters, f32 accumulation. Filters, bias and the
// weight gradient (and its split-K workspace) are f32; the activations (x, y) and their gradients
// (dy, dx) are f32 or bf16 (mixed-precision training).
//
// Entry-point names: every kernel's name says its arithmetic (`_f32` FFMA, `_tf32`/`_bf16` tensor-core
// input precision), and a kernel whose activations are bf16 appends `_abf16`: `conv2d_fwd_f32` and
// `conv2d_fwd_f32_abf16`, `conv2d_fwd_tf32` and `conv2d_fwd_tf32_abf16`, ... (CONV_FOR_EACH_ACT makes
// both from one template; src/cuda's ActDtype::ACT_SUFFIX is the same suffix). bf16 elements are
// converted to f32 exactly on load and rounded to nearest even on store (common.cuh's to_f32 and
// from_f32); nothing else changes, so the f32 instantiations compile to what they did before. The
// naive kernels, the split sum and the bias gradient exist for f32 activations only.
//
// Two variants of each pass sit side by side and are checked against the same CPU reference:
//   - `*_naive_f32`: one thread per output element, direct loops. Simple and slow.
//   - the tiled ones: implicit GEMM (no im2col buffer), 64x64 output tiles, reduction tiles of 16,
//     256 threads each computing a 4x4 micro-tile, double-buffered shared memory with the next
//     tile's global loads in flight during the current tile's FMAs.
//
// The three GEMMs (the reduction index is ordered (r, s, then channel), so the filter tap is fixed
// within a tile and the gather needs no division per element):
//   forward      y[k][npq]  = sum_{rs,c} w[k][c][rs] * x[n][c][ih(p,r)][iw(q,s)]       (+ bias[k])
//   bwd-data     dx[c][nhw] = sum_{rs,k} w[k][c][rs] * dy[n][k][p][q]  (p, q: the outputs that
//                read (h, w) through tap (r, s); zero where the stride skips it)
//   bwd-weight   dw[k][c][rs] = sum_{npq} dy[n][k][pq] * x[n][c][ih(p,r)][iw(q,s)]  (a block per
//                (k tile, c tile, tap, split of npq); splits go to a workspace summed in a fixed
//                order by conv2d_sum_splits_f32, so the result is deterministic)
//
// Indexing is 32-bit: the host guarantees every tensor, GEMM dimension and the split workspace
// stays at most 2^31 - 1025 (MAX_INDEX in src/cuda), so indices formed up to a tile (64) or a block
// stride (256) past the end cannot overflow. Elements outside the image read as zero; nothing is read or written out of bounds.
#include "common.cuh"

// Entry points per activation type: (T, name suffix). An empty suffix for f32 keeps the names the
// kernels had before bf16 activations existed.
#define CONV_FOR_EACH_ACT(M) \
    M(float, )               \
    M(__nv_bfloat16, _abf16)

// Mirrors `Conv2dParams` in src/conv/cuda.rs.
struct Conv2dParams {
    int32_t n, c, h, w;
    int32_t k, r, s;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;
    int32_t dil_h, dil_w;
    int32_t oh, ow;
};
EC_CHECK_PARAMS(Conv2dParams);

namespace conv {
constexpr int BM = 64;        // tile rows (the GEMM's M: filters, or channels for bwd-data)
constexpr int BN = 64;        // tile columns
constexpr int BK = 16;        // reduction depth per tile
constexpr int THREADS = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int LDS = BM + 4;   // padded shared row: fewer bank conflicts on the transposing stores

// Shared tiles, [buffer][reduction row][column], the column padded to LDS (16-byte aligned rows).
struct Tiles {
    float a[2][BK][LDS];
    float b[2][BK][LDS];
};

// acc[i][j] += sum_kk a[kk][ty*4 + i] * b[kk][tx + 16*j]
__device__ __forceinline__ void mma_tile(const float (*a)[LDS], const float (*b)[LDS], float acc[4][4], int tx,
                                         int ty) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        const float4 av = *reinterpret_cast<const float4*>(&a[kk][ty * 4]);
        float bv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = b[kk][tx + 16 * j];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            acc[0][j] = fmaf(av.x, bv[j], acc[0][j]);
            acc[1][j] = fmaf(av.y, bv[j], acc[1][j]);
            acc[2][j] = fmaf(av.z, bv[j], acc[2][j]);
            acc[3][j] = fmaf(av.w, bv[j], acc[3][j]);
        }
    }
}

// The shared pipeline: `load(t, ra, rb)` fetches tile t into registers (4 + 4 values per thread),
// `store(buf, ra, rb)` writes them into shared buffer `buf`. One barrier per tile: a buffer is
// rewritten two tiles later, after every thread has passed the barrier that follows its last read.
template <class Load, class Store>
__device__ __forceinline__ void run_tiles(int ntiles, Tiles& sm, float acc[4][4], Load load, Store store) {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float ra[4], rb[4];
    if (ntiles > 0) load(0, ra, rb);
    for (int t = 0; t < ntiles; ++t) {
        const int buf = t & 1;
        store(sm.a[buf], sm.b[buf], ra, rb);
        __syncthreads();
        if (t + 1 < ntiles) load(t + 1, ra, rb);
        mma_tile(sm.a[buf], sm.b[buf], acc, tx, ty);
    }
}
}  // namespace conv

using namespace conv;

// ---- forward: y = conv(x, w) + bias ---------------------------------------------------------------
// Grid (ceil(N*OH*OW / 64), ceil(K / 64)). `bias` may be null. T: the activation type (x, y).
namespace conv {
template <typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ bias, T* __restrict__ y, const Conv2dParams& p,
                                    Tiles& sm) {
    const int tid = threadIdx.x;
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ, HW = p.h * p.w, RS = p.r * p.s, CRS = p.c * RS;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;

    // B (gathered input): this thread always loads column bj, rows bk + 4i.
    const int bj = tid & 63, bk = tid >> 6;
    const int col = n0 + bj;
    const bool col_ok = col < NPQ;
    int xbase = 0, ih0 = 0, iw0 = 0;
    if (col_ok) {
        const int img = col / PQ, pq = col - img * PQ, op = pq / p.ow, oq = pq - op * p.ow;
        xbase = img * p.c * HW;
        ih0 = op * p.stride_h - p.pad_h;
        iw0 = oq * p.stride_w - p.pad_w;
    }
    // A (filters): this thread loads reduction column ak of rows am + 16i.
    const int ak = tid & 15, am = tid >> 4;
    const int ctiles = (p.c + BK - 1) / BK;

    auto load = [&](int t, float ra[4], float rb[4]) {
        const int rs = t / ctiles, c0 = (t - rs * ctiles) * BK;
        const int fr = rs / p.s, fs = rs - fr * p.s;
        const int ih = ih0 + fr * p.dil_h, iw = iw0 + fs * p.dil_w;
        const bool ok = col_ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w;
        const int off = ok ? xbase + ih * p.w + iw : 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = c0 + bk + 4 * i;
            rb[i] = (ok && c < p.c) ? to_f32(x[off + c * HW]) : 0.0f;
        }
        const int c = c0 + ak;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + am + 16 * i;
            ra[i] = (m < p.k && c < p.c) ? w[m * CRS + c * RS + rs] : 0.0f;
        }
    };
    auto store = [&](float (*a)[LDS], float (*b)[LDS], const float ra[4], const float rb[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            b[bk + 4 * i][bj] = rb[i];
            a[ak][am + 16 * i] = ra[i];
        }
    };

    float acc[4][4] = {};
    run_tiles(RS * ctiles, sm, acc, load, store);

    const int tx = tid & 15, ty = tid >> 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int cj = n0 + tx + 16 * j;
        if (cj >= NPQ) continue;
        const int img = cj / PQ, pq = cj - img * PQ;
        T* yb = y + img * p.k * PQ + pq;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + ty * 4 + i;
            if (m < p.k) yb[m * PQ] = from_f32<T>(acc[i][j] + (bias != nullptr ? bias[m] : 0.0f));
        }
    }
}

// ---- backward-data: dx = conv^T(dy, w) --------------------------------------------------------------
// Grid (ceil(N*H*W / 64), ceil(C / 64)). Gather form: each input pixel collects, per tap, the one
// output (if any) that read it. With stride > 1 most taps hit nothing and load zeros. T: the
// activation-gradient type (dy, dx).
template <typename T>
__device__ __forceinline__ void bwd_data(const T* __restrict__ dy, const float* __restrict__ w, T* __restrict__ dx,
                                         const Conv2dParams& p, Tiles& sm) {
    const int tid = threadIdx.x;
    const int PQ = p.oh * p.ow, HW = p.h * p.w, NHW = p.n * HW, RS = p.r * p.s, CRS = p.c * RS;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;

    // B (gathered output gradient): column bj, rows bk + 4i.
    const int bj = tid & 63, bk = tid >> 6;
    const int col = n0 + bj;
    const bool col_ok = col < NHW;
    int dybase = 0, th0 = 0, tw0 = 0;
    if (col_ok) {
        const int img = col / HW, hw = col - img * HW, ih = hw / p.w, iw = hw - ih * p.w;
        dybase = img * p.k * PQ;
        th0 = ih + p.pad_h;
        tw0 = iw + p.pad_w;
    }
    // A (filters, transposed): row am (a channel), reduction rows ak + 4i (filters).
    const int am = tid & 63, ak = tid >> 6;
    const int ktiles = (p.k + BK - 1) / BK;

    auto load = [&](int t, float ra[4], float rb[4]) {
        const int rs = t / ktiles, k0 = (t - rs * ktiles) * BK;
        const int fr = rs / p.s, fs = rs - fr * p.s;
        // Output (op, oq) reads this pixel through tap (fr, fs) iff op*sh = th and oq*sw = tw.
        const int th = th0 - fr * p.dil_h, tw = tw0 - fs * p.dil_w;
        bool ok = col_ok && th >= 0 && tw >= 0;
        int op = 0, oq = 0;
        if (ok) {
            op = th / p.stride_h;
            oq = tw / p.stride_w;
            ok = op * p.stride_h == th && oq * p.stride_w == tw && op < p.oh && oq < p.ow;
        }
        const int off = ok ? dybase + op * p.ow + oq : 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + bk + 4 * i;
            rb[i] = (ok && k < p.k) ? to_f32(dy[off + k * PQ]) : 0.0f;
        }
        const int c = m0 + am;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + ak + 4 * i;
            ra[i] = (c < p.c && k < p.k) ? w[k * CRS + c * RS + rs] : 0.0f;
        }
    };
    auto store = [&](float (*a)[LDS], float (*b)[LDS], const float ra[4], const float rb[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            b[bk + 4 * i][bj] = rb[i];
            a[ak + 4 * i][am] = ra[i];
        }
    };

    float acc[4][4] = {};
    run_tiles(RS * ktiles, sm, acc, load, store);

    const int tx = tid & 15, ty = tid >> 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int cj = n0 + tx + 16 * j;
        if (cj >= NHW) continue;
        const int img = cj / HW, hw = cj - img * HW;
        T* xb = dx + img * p.c * HW + hw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = m0 + ty * 4 + i;
            if (c < p.c) xb[c * HW] = from_f32<T>(acc[i][j]);
        }
    }
}

// ---- backward-weight: dw = beta * dw + sum_npq dy (x) x -------------------------------------------
// Grid (ceil(C / 64), ceil(K / 64), R*S * splits). Block z = split * RS + tap reduces npq in
// [split * chunk, min((split + 1) * chunk, N*OH*OW)) (chunk a multiple of 16) into
// out + split * split_stride. The host passes either (out = dw, split_stride = 0, beta) when there is
// one split, or (out = workspace, split_stride = K*C*R*S, beta = 0). beta == 0 never reads out.
// T: the activation type (x, dy); out is f32 whatever T.
template <typename T>
__device__ __forceinline__ void bwd_weight(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ out,
                                           const Conv2dParams& p, int chunk, int split_stride, float beta,
                                           Tiles& sm) {
    const int tid = threadIdx.x;
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ, HW = p.h * p.w, RS = p.r * p.s, CRS = p.c * RS;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int rs = blockIdx.z % RS, split = blockIdx.z / RS;
    const int fr = rs / p.s, fs = rs - fr * p.s;
    const int begin = split * chunk;
    const int end = (int)min((int64_t)begin + chunk, (int64_t)NPQ);  // begin < NPQ: no split is empty
    const int ntiles = (end - begin + BK - 1) / BK;

    // Both loaders: reduction row lk (one npq per tile), tile rows/columns lr + 16i.
    const int lk = tid & 15, lr = tid >> 4;

    auto load = [&](int t, float ra[4], float rb[4]) {
        const int npq = begin + t * BK + lk;
        bool row_ok = npq < end, x_ok = false;
        int dyoff = 0, xoff = 0;
        if (row_ok) {
            const int img = npq / PQ, pq = npq - img * PQ, op = pq / p.ow, oq = pq - op * p.ow;
            const int ih = op * p.stride_h - p.pad_h + fr * p.dil_h;
            const int iw = oq * p.stride_w - p.pad_w + fs * p.dil_w;
            dyoff = img * p.k * PQ + pq;
            x_ok = ih >= 0 && ih < p.h && iw >= 0 && iw < p.w;
            xoff = x_ok ? img * p.c * HW + ih * p.w + iw : 0;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + lr + 16 * i;
            ra[i] = (row_ok && m < p.k) ? to_f32(dy[dyoff + m * PQ]) : 0.0f;
            const int c = n0 + lr + 16 * i;
            rb[i] = (x_ok && c < p.c) ? to_f32(x[xoff + c * HW]) : 0.0f;
        }
    };
    auto store = [&](float (*a)[LDS], float (*b)[LDS], const float ra[4], const float rb[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a[lk][lr + 16 * i] = ra[i];
            b[lk][lr + 16 * i] = rb[i];
        }
    };

    float acc[4][4] = {};
    run_tiles(ntiles, sm, acc, load, store);

    const int tx = tid & 15, ty = tid >> 4;
    float* o = out + split * split_stride;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int c = n0 + tx + 16 * j;
        if (c >= p.c) continue;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + ty * 4 + i;
            if (m >= p.k) continue;
            const int idx = m * CRS + c * RS + rs;
            o[idx] = beta != 0.0f ? fmaf(beta, o[idx], acc[i][j]) : acc[i][j];
        }
    }
}
}  // namespace conv

// The FP32 entry points, one per activation type (CONV_FOR_EACH_ACT). `sm` is declared by each
// kernel itself: a __shared__ static of a template function is not one per kernel under the
// emulated driver.
#define CONV_FP32(T, SUF)                                                                                         \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                         \
        conv2d_fwd_f32##SUF(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, \
                            T* __restrict__ y, Conv2dParams p) {                                                  \
        __shared__ __align__(16) Tiles sm;                                                                        \
        conv::fwd<T>(x, w, bias, y, p, sm);                                                                       \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                         \
        conv2d_bwd_data_f32##SUF(const T* __restrict__ dy, const float* __restrict__ w, T* __restrict__ dx,      \
                                 Conv2dParams p) {                                                                \
        __shared__ __align__(16) Tiles sm;                                                                        \
        conv::bwd_data<T>(dy, w, dx, p, sm);                                                                      \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                         \
        conv2d_bwd_weight_f32##SUF(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ out,   \
                                   Conv2dParams p, int chunk, int split_stride, float beta) {                    \
        __shared__ __align__(16) Tiles sm;                                                                        \
        conv::bwd_weight<T>(x, dy, out, p, chunk, split_stride, beta, sm);                                       \
    }
CONV_FOR_EACH_ACT(CONV_FP32)
#undef CONV_FP32

// out[i] = sum_{s < splits} ws[s * len + i] (in order) + beta * out[i]; beta == 0 never reads out.
extern "C" __global__ void conv2d_sum_splits_f32(const float* __restrict__ ws, float* __restrict__ out, int len,
                                                 int splits, float beta) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int sp = 0; sp < splits; ++sp) s += ws[(int64_t)sp * len + i];
        out[i] = beta != 0.0f ? fmaf(beta, out[i], s) : s;
    }
}

// ---- bias gradient: db[k] = beta * db[k] + sum_{n,p,q} dy[n][k][p][q] -----------------------------
// A block per filter (grid-stride over k), blockDim a multiple of 32; fixed-order, deterministic.
extern "C" __global__ void conv2d_bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, Conv2dParams p,
                                                float beta) {
    __shared__ float scratch[32];
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ;
    for (int k = blockIdx.x; k < p.k; k += gridDim.x) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < NPQ; i += blockDim.x) {
            const int img = i / PQ, pq = i - img * PQ;
            s += dy[(img * p.k + k) * PQ + pq];
        }
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) db[k] = beta != 0.0f ? fmaf(beta, db[k], s) : s;
    }
}

// ---- naive direct kernels: one thread per output element ----------------------------------------
extern "C" __global__ void conv2d_fwd_naive_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                const float* __restrict__ bias, float* __restrict__ y,
                                                Conv2dParams p) {
    const int64_t total = (int64_t)p.n * p.k * p.oh * p.ow;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int oq = (int)(i % p.ow), op = (int)(i / p.ow % p.oh), k = (int)(i / ((int64_t)p.ow * p.oh) % p.k);
        const int img = (int)(i / ((int64_t)p.ow * p.oh * p.k));
        float acc = bias != nullptr ? bias[k] : 0.0f;
        for (int c = 0; c < p.c; ++c)
            for (int r = 0; r < p.r; ++r) {
                const int ih = op * p.stride_h - p.pad_h + r * p.dil_h;
                if (ih < 0 || ih >= p.h) continue;
                for (int s = 0; s < p.s; ++s) {
                    const int iw = oq * p.stride_w - p.pad_w + s * p.dil_w;
                    if (iw < 0 || iw >= p.w) continue;
                    acc = fmaf(x[((img * p.c + c) * p.h + ih) * p.w + iw], w[((k * p.c + c) * p.r + r) * p.s + s], acc);
                }
            }
        y[i] = acc;
    }
}

extern "C" __global__ void conv2d_bwd_data_naive_f32(const float* __restrict__ dy, const float* __restrict__ w,
                                                     float* __restrict__ dx, Conv2dParams p) {
    const int64_t total = (int64_t)p.n * p.c * p.h * p.w;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int iw = (int)(i % p.w), ih = (int)(i / p.w % p.h), c = (int)(i / ((int64_t)p.w * p.h) % p.c);
        const int img = (int)(i / ((int64_t)p.w * p.h * p.c));
        float acc = 0.0f;
        for (int k = 0; k < p.k; ++k)
            for (int r = 0; r < p.r; ++r) {
                const int th = ih + p.pad_h - r * p.dil_h;
                if (th < 0 || th % p.stride_h != 0 || th / p.stride_h >= p.oh) continue;
                for (int s = 0; s < p.s; ++s) {
                    const int tw = iw + p.pad_w - s * p.dil_w;
                    if (tw < 0 || tw % p.stride_w != 0 || tw / p.stride_w >= p.ow) continue;
                    acc = fmaf(dy[((img * p.k + k) * p.oh + th / p.stride_h) * p.ow + tw / p.stride_w],
                               w[((k * p.c + c) * p.r + r) * p.s + s], acc);
                }
            }
        dx[i] = acc;
    }
}

extern "C" __global__ void conv2d_bwd_weight_naive_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                                       float* __restrict__ dw, Conv2dParams p, float beta) {
    const int64_t total = (int64_t)p.k * p.c * p.r * p.s;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int s = (int)(i % p.s), r = (int)(i / p.s % p.r), c = (int)(i / ((int64_t)p.s * p.r) % p.c);
        const int k = (int)(i / ((int64_t)p.s * p.r * p.c));
        float acc = 0.0f;
        for (int img = 0; img < p.n; ++img)
            for (int op = 0; op < p.oh; ++op) {
                const int ih = op * p.stride_h - p.pad_h + r * p.dil_h;
                if (ih < 0 || ih >= p.h) continue;
                for (int oq = 0; oq < p.ow; ++oq) {
                    const int iw = oq * p.stride_w - p.pad_w + s * p.dil_w;
                    if (iw < 0 || iw >= p.w) continue;
                    acc = fmaf(dy[((img * p.k + k) * p.oh + op) * p.ow + oq],
                               x[((img * p.c + c) * p.h + ih) * p.w + iw], acc);
                }
            }
        dw[i] = beta != 0.0f ? fmaf(beta, dw[i], acc) : acc;
    }
}

// ---- tensor cores: the forward pass as an implicit GEMM on TF32 or BF16 ---------------------------
// GEMM: rows = output pixels (N*OH*OW), columns = filters (K), reduction = (tap r*S + s, channel),
// F32 accumulation. A block computes 64 pixels x 64 filters with 4 warps (2 x 2, each 32 x 32 =
// 2 m16 x 4 n8 fragments), reduction tiles of 16 channels of one tap, a 3-stage cp.async pipeline.
//
// Shared memory holds f32 (the filters are f32 in global memory, the activations f32 or bf16,
// and cp.async copies bytes, it cannot convert), both operands k-contiguous: a[pixel][k], b[filter][k], rows of
// 20 floats (80 bytes: 16-byte aligned, and 8 consecutive rows start in 8 distinct 4-bank groups,
// so ldmatrix reads them without conflicts).
//   - TF32: a 32-bit element is two 16-bit halves, so ldmatrix of an 8 x (4 f32) block gives lane l
//     element [l/4][l%4], exactly the m16n8k8.tf32 fragment: x4 for A, x2 for B; then each register
//     is rounded to TF32 (cvt.rna) rather than truncated by the tensor core.
//   - BF16: the fragments hold bf16 pairs, converted (round to nearest even) from f32 pairs read
//     with 8-byte shared loads: ldmatrix would copy the f32 bits unconverted.
// The gather (im2col) is a cp.async of 4 bytes per element (NCHW: consecutive channels are HW
// apart, not contiguous), or for bf16 activations a converting register load (`gather`); taps outside the image and channels or filters past the end are stored
// as zeros instead. Each thread's pixel (image offset, first input row and column) is computed once
// before the main loop, which walks (channel tile, tap) by increments: no division in it.
// Compiled for sm_80 and newer only (the host picks the FP32 kernels on older devices).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#include "tensor_core.cuh"

namespace convtc {
constexpr int BM = 64;        // pixels per block
constexpr int BN = 64;        // filters per block
constexpr int BK = 16;        // channels per reduction tile (one tap)
constexpr int LDK = BK + 4;   // shared row pitch in floats (80 bytes)
constexpr int STAGES = 3;     // cp.async pipeline depth
constexpr int THREADS = 128;  // 4 warps
constexpr int MI = 2, NI = 4; // m16 and n8 fragments per warp (a 32 x 32 warp tile)
constexpr int LOADS = BM * BK / THREADS;  // elements each thread gathers per operand per tile
static_assert(BM == BN && LOADS * THREADS == BM * BK && THREADS == 2 * BM, "loader mapping");

struct Smem {
    float a[STAGES][BM][LDK];  // gathered input, [pixel][channel]
    float b[STAGES][BN][LDK];  // filters, [filter][channel]
};

// bf16 bits of f32 `f`, rounded to nearest even; a NaN stays a (quiet) NaN.
__device__ __forceinline__ uint32_t bf16_bits(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ uint32_t bf16x2(float2 v) { return bf16_bits(v.x) | (bf16_bits(v.y) << 16); }

// Gathers one activation into the f32 shared tile. f32: an asynchronous 4-byte cp.async, waited
// for by the pipeline. bf16: cp.async copies only 4, 8 or 16 bytes (a strided 2-byte element
// cannot be its source) and never converts, so a register load, converted to f32 exactly, and a
// plain shared store. That is the simplest correct choice: the tile, the fragment loads and the
// pipeline stay the f32 path's, and the store is published like the zero fills of out-of-image
// taps (the barrier at the top of a later iteration of `gemm` precedes every read of the stage).
// It costs the overlap of that load with the tensor-core work; a bf16 shared tile would keep it
// (8-byte cp.async of bf16 pairs are not possible either: NCHW neighbours in the reduction are
// HW apart) but needs a second fragment path.
__device__ __forceinline__ void gather(float* dst, const float* src) { cp_async_ca_4(dst, src); }
__device__ __forceinline__ void gather(float* dst, const __nv_bfloat16* src) { *dst = to_f32(*src); }

template <bool BF16>
__device__ __forceinline__ void mma_tile(const float (*a)[LDK], const float (*b)[LDK], float acc[MI][NI][4],
                                         int lane, int wm, int wn) {
    if constexpr (BF16) {
        const int g = lane >> 2, t = lane & 3;
        uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
            const float* r0 = a[wm + mi * 16 + g];
            const float* r1 = a[wm + mi * 16 + g + 8];
            af[mi][0] = bf16x2(*reinterpret_cast<const float2*>(r0 + 2 * t));
            af[mi][1] = bf16x2(*reinterpret_cast<const float2*>(r1 + 2 * t));
            af[mi][2] = bf16x2(*reinterpret_cast<const float2*>(r0 + 2 * t + 8));
            af[mi][3] = bf16x2(*reinterpret_cast<const float2*>(r1 + 2 * t + 8));
        }
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const float* r = b[wn + ni * 8 + g];
            bfr[ni][0] = bf16x2(*reinterpret_cast<const float2*>(r + 2 * t));
            bfr[ni][1] = bf16x2(*reinterpret_cast<const float2*>(r + 2 * t + 8));
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) mma_m16n8k16_bf16(acc[mi][ni], af[mi], bfr[ni], acc[mi][ni]);
    } else {
        // ldmatrix row addresses: lanes 8i..8i+7 give the rows of matrix i; A's four matrices are
        // (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7, k 4-7), (rows 8-15, k 4-7), B's two
        // (filters 0-7, k 0-3), (filters 0-7, k 4-7).
        const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lk = (lane >> 4) * 4;
        const int brow = lane & 7, bk = ((lane >> 3) & 1) * 4;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 8) {
            uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                ldmatrix_x4(af[mi], &a[wm + mi * 16 + lrow][ks + lk]);
#pragma unroll
                for (int j = 0; j < 4; ++j) af[mi][j] = f32_to_tf32(__uint_as_float(af[mi][j]));
            }
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                ldmatrix_x2(bfr[ni], &b[wn + ni * 8 + brow][ks + bk]);
#pragma unroll
                for (int j = 0; j < 2; ++j) bfr[ni][j] = f32_to_tf32(__uint_as_float(bfr[ni][j]));
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) mma_m16n8k8_tf32(acc[mi][ni], af[mi], bfr[ni], acc[mi][ni]);
        }
    }
}

// acc += sum over `ntiles` reduction tiles of a[row][k] * b[col][k], the warp's 32 x 32 part at
// (wm, wn); `load(stage)` gathers the next tile (tiles are fetched in order) into `stage`.
template <bool BF16, class Load>
__device__ __forceinline__ void gemm(Smem& sm, int ntiles, Load& load, float acc[MI][NI][4], int lane, int wm,
                                     int wn) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) load(s);
        cp_async_commit();
    }
    int rd = 0, wr = STAGES - 1;
    for (int t = 0; t < ntiles; ++t) {
        // Tile t's copies have landed (only the newer STAGES - 2 groups may be in flight), and after
        // the barrier every thread sees them and has finished reading stage `wr` (tile t - 1).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < ntiles) load(wr);
        cp_async_commit();
        mma_tile<BF16>(sm.a[rd], sm.b[rd], acc, lane, wm, wn);
        rd = rd + 1 == STAGES ? 0 : rd + 1;
        wr = wr + 1 == STAGES ? 0 : wr + 1;
    }
    cp_async_wait_all();  // only empty groups remain; no copy outlives the block
}

// Calls put(row, col, value) for each of the thread's accumulators (row < rows, col < cols only):
// acc[mi][ni] holds C[g (+8)][2t (+1)] of fragment (mi, ni).
template <class Put>
__device__ __forceinline__ void epilogue(const float acc[MI][NI][4], int m0, int n0, int rows, int cols, int lane,
                                         int wm, int wn, Put put) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = m0 + wm + mi * 16 + g + half * 8;
            if (r >= rows) continue;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int c = n0 + wn + ni * 8 + 2 * t4 + e;
                    if (c < cols) put(r, c, acc[mi][ni][half * 2 + e]);
                }
        }
}

// Grid (ceil(N*OH*OW / 64), ceil(K / 64)), 128 threads. `bias` may be null. `sm` is declared by
// the kernel itself (a __shared__ static of a template function is not one per kernel under the
// emulated driver, which places __shared__ variables by their section).
// T: the activation type (x, y).
template <bool BF16, typename T>
__device__ __forceinline__ void fwd(const T* __restrict__ x, const float* __restrict__ w,
                                    const float* __restrict__ bias, T* __restrict__ y, const Conv2dParams& p,
                                    Smem& sm) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ, HW = p.h * p.w, RS = p.r * p.s, CRS = p.c * RS;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    // Loader: this thread gathers pixel (and filter) `row`, channels kr + 2i of each tile.
    const int row = tid % BM, kr = tid / BM;
    const int pix = m0 + row;
    const bool pix_ok = pix < NPQ;
    int xbase = 0, ih0 = 0, iw0 = 0;
    if (pix_ok) {
        const int img = pix / PQ, pq = pix - img * PQ, op = pq / p.ow, oq = pq - op * p.ow;
        xbase = img * p.c * HW;
        ih0 = op * p.stride_h - p.pad_h;
        iw0 = oq * p.stride_w - p.pad_w;
    }
    const int filt = n0 + row;
    const float* wrow = w + (filt < p.k ? filt : 0) * CRS;
    // The tile the loader fetches next: channels c0.., tap (fr, fs) = rs.
    int c0 = 0, fr = 0, fs = 0, rs = 0;
    auto load = [&](int stage) {
        const int ih = ih0 + fr * p.dil_h, iw = iw0 + fs * p.dil_w;
        const bool in = pix_ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w;
        const int xoff = in ? xbase + ih * p.w + iw : 0;
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int kk = kr + 2 * i, c = c0 + kk;
            float* da = &sm.a[stage][row][kk];
            if (in && c < p.c)
                gather(da, x + xoff + c * HW);
            else
                *da = 0.0f;
            float* db = &sm.b[stage][row][kk];
            if (filt < p.k && c < p.c)
                cp_async_ca_4(db, wrow + c * RS + rs);
            else
                *db = 0.0f;
        }
        c0 += BK;
        if (c0 >= p.c) {
            c0 = 0;
            ++rs;
            if (++fs == p.s) {
                fs = 0;
                ++fr;
            }
        }
    };

    const int ntiles = RS * ((p.c + BK - 1) / BK);
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    float acc[MI][NI][4] = {};
    gemm<BF16>(sm, ntiles, load, acc, lane, wm, wn);

    // Epilogue: acc[mi][ni] = C[g (+8)][2t (+1)] of fragment (mi, ni).
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int pr = m0 + wm + mi * 16 + g + half * 8;
            if (pr >= NPQ) continue;
            const int img = pr / PQ, pq = pr - img * PQ;
            T* yb = y + img * p.k * PQ + pq;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int f = n0 + wn + ni * 8 + 2 * t4 + e;
                    if (f < p.k)
                        yb[f * PQ] = from_f32<T>(acc[mi][ni][half * 2 + e] + (bias != nullptr ? bias[f] : 0.0f));
                }
        }
}

// Backward-data, gather form: rows = input pixels (N*H*W), columns = channels (C), reduction =
// (tap, filter). Input pixel (ih, iw) receives through tap (r, s) the output (op, oq) with
// op * stride_h = ih + pad_h - r * dil_h (and the same for the width), if that divides. The
// quotient and remainder of the first tap are computed once; each later tap subtracts dil's
// quotient and remainder with a borrow, so the main loop divides nothing.
// Grid (ceil(N*H*W / 64), ceil(C / 64)), 128 threads. T: the activation-gradient type (dy, dx).
template <bool BF16, typename T>
__device__ __forceinline__ void bwd_data(const T* __restrict__ dy, const float* __restrict__ w,
                                         T* __restrict__ dx, const Conv2dParams& p, Smem& sm) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int PQ = p.oh * p.ow, HW = p.h * p.w, NHW = p.n * HW, RS = p.r * p.s, CRS = p.c * RS;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int row = tid % BM, kr = tid / BM;
    const int pix = m0 + row;
    const bool pix_ok = pix < NHW;
    int dybase = 0, qh0 = 0, rh0 = 0, qw0 = 0, rw0 = 0;
    if (pix_ok) {
        const int img = pix / HW, hw = pix - img * HW, ih = hw / p.w, iw = hw - ih * p.w;
        dybase = img * p.k * PQ;
        qh0 = (ih + p.pad_h) / p.stride_h;
        rh0 = (ih + p.pad_h) - qh0 * p.stride_h;
        qw0 = (iw + p.pad_w) / p.stride_w;
        rw0 = (iw + p.pad_w) - qw0 * p.stride_w;
    }
    const int dqh = p.dil_h / p.stride_h, drh = p.dil_h - dqh * p.stride_h;
    const int dqw = p.dil_w / p.stride_w, drw = p.dil_w - dqw * p.stride_w;
    const int chan = n0 + row;
    const float* wcol = w + (chan < p.c ? chan : 0) * RS;
    // Next tile: filters k0.., tap (fr, fs) = rs, whose output row is qh (remainder rh) and column
    // qw (remainder rw).
    int k0 = 0, fs = 0, rs = 0, qh = qh0, rh = rh0, qw = qw0, rw = rw0;
    auto load = [&](int stage) {
        const bool in = pix_ok && rh == 0 && rw == 0 && qh >= 0 && qh < p.oh && qw >= 0 && qw < p.ow;
        const int off = in ? dybase + qh * p.ow + qw : 0;
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int kk = kr + 2 * i, k = k0 + kk;
            float* da = &sm.a[stage][row][kk];
            if (in && k < p.k)
                gather(da, dy + off + k * PQ);
            else
                *da = 0.0f;
            float* db = &sm.b[stage][row][kk];
            if (chan < p.c && k < p.k)
                cp_async_ca_4(db, wcol + k * CRS + rs);
            else
                *db = 0.0f;
        }
        k0 += BK;
        if (k0 >= p.k) {
            k0 = 0;
            ++rs;
            qw -= dqw;
            rw -= drw;
            if (rw < 0) {
                rw += p.stride_w;
                --qw;
            }
            if (++fs == p.s) {
                fs = 0;
                qw = qw0;
                rw = rw0;
                qh -= dqh;
                rh -= drh;
                if (rh < 0) {
                    rh += p.stride_h;
                    --qh;
                }
            }
        }
    };

    const int ntiles = RS * ((p.k + BK - 1) / BK);
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    float acc[MI][NI][4] = {};
    gemm<BF16>(sm, ntiles, load, acc, lane, wm, wn);
    epilogue(acc, m0, n0, NHW, p.c, lane, wm, wn, [&](int r, int c, float v) {
        const int img = r / HW, hw = r - img * HW;
        dx[(img * p.c + c) * HW + hw] = from_f32<T>(v);
    });
}

// Backward-weight, split-K: rows = filters (K), columns = channels (C), one tap per block,
// reduction over output pixels npq in [split * chunk, min((split + 1) * chunk, N*OH*OW)) (chunk a
// multiple of 16), into out + split * split_stride (the host sums the splits in a fixed order with
// conv2d_sum_splits_f32, so the result is the same bit for bit on every run). Each thread gathers
// one npq of a tile (lane kk) for 8 filters and 8 channels; its (image, row, column) advances by
// 16 pixels a tile with carries, no division. beta == 0 never reads out.
// Grid (ceil(K / 64), ceil(C / 64), R*S * splits), 128 threads. T: the activation type (x, dy);
// out is f32 whatever T.
template <bool BF16, typename T>
__device__ __forceinline__ void bwd_weight(const T* __restrict__ x, const T* __restrict__ dy,
                                           float* __restrict__ out, const Conv2dParams& p, int chunk,
                                           int split_stride, float beta, Smem& sm) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ, HW = p.h * p.w, RS = p.r * p.s, CRS = p.c * RS;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int rs = blockIdx.z % RS, split = blockIdx.z / RS;
    const int fr = rs / p.s, fs = rs - fr * p.s;
    const int begin = split * chunk;
    const int end = (int)min((int64_t)begin + chunk, (int64_t)NPQ);  // begin < NPQ: no split is empty

    const int kk = tid % BK, r0 = tid / BK;  // npq lane, first row (rows r0 + 8i)
    constexpr int ROW_STEP = THREADS / BK;
    int npq = begin + kk;
    int img = 0, op = 0, oq = 0;
    if (npq < end) {
        img = npq / PQ;
        const int pq = npq - img * PQ;
        op = pq / p.ow;
        oq = pq - op * p.ow;
    }
    auto load = [&](int stage) {
        const bool ok = npq < end;
        const int ih = op * p.stride_h - p.pad_h + fr * p.dil_h, iw = oq * p.stride_w - p.pad_w + fs * p.dil_w;
        const bool in = ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w;
        const int dyoff = ok ? img * p.k * PQ + op * p.ow + oq : 0;
        const int xoff = in ? img * p.c * HW + ih * p.w + iw : 0;
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int rr = r0 + ROW_STEP * i, m = m0 + rr, c = n0 + rr;
            float* da = &sm.a[stage][rr][kk];
            if (ok && m < p.k)
                gather(da, dy + dyoff + m * PQ);
            else
                *da = 0.0f;
            float* db = &sm.b[stage][rr][kk];
            if (in && c < p.c)
                gather(db, x + xoff + c * HW);
            else
                *db = 0.0f;
        }
        npq += BK;
        if (npq < end) {
            oq += BK;
            while (oq >= p.ow) {
                oq -= p.ow;
                if (++op == p.oh) {
                    op = 0;
                    ++img;
                }
            }
        }
    };

    const int ntiles = (end - begin + BK - 1) / BK;
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    float acc[MI][NI][4] = {};
    gemm<BF16>(sm, ntiles, load, acc, lane, wm, wn);
    float* o = out + split * split_stride;
    epilogue(acc, m0, n0, p.k, p.c, lane, wm, wn, [&](int m, int c, float v) {
        const int idx = m * CRS + c * RS + rs;
        o[idx] = beta != 0.0f ? fmaf(beta, o[idx], v) : v;
    });
}

// The stem (few input channels, C < 16): a reduction tile of 16 channels of one tap would be mostly
// zeros (C = 3: 13 of 16), so the reduction runs over the flattened (c, r, s) instead, the filters'
// own KCRS order: tiles of 16 consecutive (c, r, s), ceil(C*R*S / 16) of them (2 for 3x3x3 instead
// of 9). The gather offsets of every (c, r, s) (the channel's plane plus the tap's row and column
// offset) are computed once per block into a shared table, so the main loop divides nothing.
constexpr int STEM_MAX_CRS = 256;  // the host takes this path only for C < 16 and C*R*S <= 256
struct StemTable {
    int off[STEM_MAX_CRS];  // c*H*W + r*dil_h*W + s*dil_w
    int dh[STEM_MAX_CRS];   // r*dil_h
    int dw[STEM_MAX_CRS];   // s*dil_w
};

// T: the activation type (x, y).
template <bool BF16, typename T>
__device__ __forceinline__ void fwd_stem(const T* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ bias, T* __restrict__ y, const Conv2dParams& p,
                                         Smem& sm, StemTable& tab) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int PQ = p.oh * p.ow, NPQ = p.n * PQ, HW = p.h * p.w, RS = p.r * p.s, CRS = p.c * RS;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    for (int k = tid; k < CRS; k += THREADS) {
        const int c = k / RS, rs = k - c * RS, fr = rs / p.s, fs = rs - fr * p.s;
        tab.dh[k] = fr * p.dil_h;
        tab.dw[k] = fs * p.dil_w;
        tab.off[k] = c * HW + tab.dh[k] * p.w + tab.dw[k];
    }
    __syncthreads();

    const int row = tid % BM, kr = tid / BM;
    const int pix = m0 + row;
    const bool pix_ok = pix < NPQ;
    int xorg = 0, ih0 = 0, iw0 = 0;  // xorg: x offset of (image, ih0, iw0), possibly outside it
    if (pix_ok) {
        const int img = pix / PQ, pq = pix - img * PQ, op = pq / p.ow, oq = pq - op * p.ow;
        ih0 = op * p.stride_h - p.pad_h;
        iw0 = oq * p.stride_w - p.pad_w;
        xorg = img * p.c * HW + ih0 * p.w + iw0;
    }
    const int filt = n0 + row;
    const float* wrow = w + (filt < p.k ? filt : 0) * CRS;
    int k0 = 0;
    auto load = [&](int stage) {
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int kk = kr + 2 * i, k = k0 + kk;
            const bool k_ok = k < CRS;
            const int ih = k_ok ? ih0 + tab.dh[k] : -1, iw = k_ok ? iw0 + tab.dw[k] : -1;
            float* da = &sm.a[stage][row][kk];
            if (pix_ok && k_ok && ih >= 0 && ih < p.h && iw >= 0 && iw < p.w)
                gather(da, x + xorg + tab.off[k]);
            else
                *da = 0.0f;
            float* db = &sm.b[stage][row][kk];
            if (filt < p.k && k_ok)
                cp_async_ca_4(db, wrow + k);
            else
                *db = 0.0f;
        }
        k0 += BK;
    };

    const int ntiles = (CRS + BK - 1) / BK;
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    float acc[MI][NI][4] = {};
    gemm<BF16>(sm, ntiles, load, acc, lane, wm, wn);
    epilogue(acc, m0, n0, NPQ, p.k, lane, wm, wn, [&](int r, int f, float v) {
        const int img = r / PQ, pq = r - img * PQ;
        y[(img * p.k + f) * PQ + pq] = from_f32<T>(v + (bias != nullptr ? bias[f] : 0.0f));
    });
}
}  // namespace convtc

// Entry points per tensor-core input precision (PREC, BF16) and activation type (T, SUF):
// conv2d_fwd_tf32, conv2d_fwd_tf32_abf16, conv2d_fwd_bf16, conv2d_fwd_bf16_abf16, ...
#define CONV_TC_PREC(T, SUF, PREC, BF16)                                                                          \
    extern "C" __global__ void __launch_bounds__(convtc::THREADS)                                                 \
        conv2d_fwd_##PREC##SUF(const T* __restrict__ x, const float* __restrict__ w,                             \
                               const float* __restrict__ bias, T* __restrict__ y, Conv2dParams p) {              \
        __shared__ __align__(16) convtc::Smem sm;                                                                 \
        convtc::fwd<BF16>(x, w, bias, y, p, sm);                                                                  \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(convtc::THREADS)                                                 \
        conv2d_fwd_stem_##PREC##SUF(const T* __restrict__ x, const float* __restrict__ w,                        \
                                    const float* __restrict__ bias, T* __restrict__ y, Conv2dParams p) {         \
        __shared__ __align__(16) convtc::Smem sm;                                                                 \
        __shared__ convtc::StemTable tab;                                                                         \
        convtc::fwd_stem<BF16>(x, w, bias, y, p, sm, tab);                                                        \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(convtc::THREADS)                                                 \
        conv2d_bwd_data_##PREC##SUF(const T* __restrict__ dy, const float* __restrict__ w, T* __restrict__ dx,   \
                                    Conv2dParams p) {                                                             \
        __shared__ __align__(16) convtc::Smem sm;                                                                 \
        convtc::bwd_data<BF16>(dy, w, dx, p, sm);                                                                 \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(convtc::THREADS)                                                 \
        conv2d_bwd_weight_##PREC##SUF(const T* __restrict__ x, const T* __restrict__ dy,                         \
                                      float* __restrict__ out, Conv2dParams p, int chunk, int split_stride,      \
                                      float beta) {                                                               \
        __shared__ __align__(16) convtc::Smem sm;                                                                 \
        convtc::bwd_weight<BF16>(x, dy, out, p, chunk, split_stride, beta, sm);                                   \
    }
#define CONV_TC(T, SUF)                  \
    CONV_TC_PREC(T, SUF, tf32, false) \
    CONV_TC_PREC(T, SUF, bf16, true)
CONV_FOR_EACH_ACT(CONV_TC)
#undef CONV_TC
#undef CONV_TC_PREC
#endif  // sm_80 and newer
