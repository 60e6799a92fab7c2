// BatchNorm2d over NCHW (per channel), training and eval forward, backward, optionally fused with
// a ReLU on the output. Activations (x, y, dy, dx) are f32, or bf16 in mixed precision; the
// statistics, parameters and all math are f32. x is n x c x hw, contiguous.
//
//   training forward:  mean, var (biased) over (n, hw) of each channel; invstd = 1 / sqrt(var + eps)
//                      y = x * scale + shift, scale = gamma * invstd, shift = beta - mean * scale
//                      running_mean = (1 - momentum) * running_mean + momentum * mean
//                      running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
//   eval forward:      the same affine map with invstd = 1 / sqrt(running_var + eps), mean = running_mean
//   backward:          g = dy (fused ReLU: g = 0 where the saved output y <= 0)
//                      dbeta = sum g, dgamma = invstd * sum g * (x - mean)
//                      dx = (g - dbeta / m - (x - mean) * dgamma * invstd / m) * gamma * invstd
//
// Every kernel runs a 2-D grid: blockIdx.x is the channel, blockIdx.y the split. A channel's
// m = n * hw values, taken in (image, position) order, are cut into `splits` contiguous slices of
// `chunk` values (the last one shorter), one block each, so a 64-channel layer still fills the
// GPU (the host picks splits from the shape: src/batchnorm/cuda.rs).
//
//   batchnorm_stats_f32       each block: (mean, M2) of its slice in one pass, per-thread
//                             Welford over float4 groups, merged with Chan's formula in a fixed
//                             tree; written to partial[ch][split]
//   batchnorm_train_apply_f32 each block: merges its channel's partials in a fixed tree (every
//                             block computes the same bits), then y = x * scale + shift on its
//                             slice; split 0 writes save_mean/save_invstd and the running stats
//   batchnorm_bwd_reduce_f32  each block: (sum g, sum g * (x - mean)) of its slice to partial
//   batchnorm_bwd_dx_f32      each block: merges the partials (fixed tree), then dx on its slice;
//                             split 0 writes dgamma and dbeta
//   batchnorm_apply_f32       eval: y from the running statistics, same grid
//
// No float atomics anywhere and every reduction order is fixed by the shape, so the results are
// the same bits from run to run. The merge is folded into the kernel that needs its result, so a
// training forward or backward is still two launches. Loads and stores are float4 when
// p.vec is set (the host checks hw % 4 == 0 and 16-byte aligned pointers, and makes chunk a
// multiple of 4, so a group of 4 never crosses an image), scalar otherwise.
//
// Entry points per activation type (EC_FOR_EACH_ACT): `batchnorm_stats_f32` for f32 activations,
// `batchnorm_stats_f32_abf16` for bf16 ones (a group of 4 is then 8 bytes, aligned to 8).
#include "common.cuh"

// Mirrors `BnParams` in src/batchnorm/cuda.rs. The host guarantees n * c * hw <= INT32_MAX - 1024
// (so a loop index plus one block stride cannot overflow), 1 <= splits <= BN_MAX_SPLITS and
// (splits - 1) * chunk < n * hw <= splits * chunk: every slice holds at least one value.
struct BnParams {
    int32_t n, c, hw;  // x is n x c x hw
    float eps;
    float momentum;
    int32_t relu;      // fused ReLU: forward clamps the output, backward masks dy by y > 0
    int32_t splits;    // slices per channel (gridDim.y)
    int32_t chunk;     // values per slice (a multiple of 4 when vec)
    int32_t vec;       // float4 loads and stores
};
EC_CHECK_PARAMS(BnParams);

// Every kernel runs BN_THREADS threads; a channel's partials fit one warp (one lane a split).
// Both mirror constants of src/batchnorm/cuda.rs (THREADS, MAX_SPLITS).
#define BN_THREADS 256
#define BN_MAX_SPLITS 32
static_assert(BN_MAX_SPLITS == 32, "the merges give each split one lane of warp 0");
static_assert(BN_THREADS % 32 == 0 && BN_THREADS / 32 <= 32, "block_merge merges one value a warp in warp 0");

// ReLU as PyTorch: NaN passes through, -0 and negatives become 0.
__device__ __forceinline__ float relu(float v) { return v <= 0.0f ? 0.0f : v; }

// ---- slices -------------------------------------------------------------------------------------

// Values [j0, j1) of this block's channel (blockIdx.x) in (image, position) order.
struct Slice {
    int j0, j1;
};

__device__ __forceinline__ Slice block_slice(const BnParams& p) {
    const int m = p.n * p.hw;
    const int j0 = (int)blockIdx.y * p.chunk;  // < m by the host's guarantee
    return {j0, j0 + min(p.chunk, m - j0)};
}

// Values in slice `s` of a channel, for the merge (the same formula as block_slice).
__device__ __forceinline__ float slice_count(int s, const BnParams& p) {
    const int m = p.n * p.hw;
    return (float)min(p.chunk, m - s * p.chunk);
}

// Calls f(i, w) for every group of this block's slice: i the index in x of its first value, w
// its width (4 on the float4 path, whose groups never cross an image; else 1). Threads take
// groups round-robin, so a warp's loads are contiguous within an image.
template <class F>
__device__ __forceinline__ void for_each_group(const BnParams& p, Slice s, F f) {
    const int ch = blockIdx.x;
    const int w = p.vec ? 4 : 1;
    for (int j = s.j0 + w * (int)threadIdx.x; j < s.j1; j += w * BN_THREADS) {
        const int img = j / p.hw;
        f((img * p.c + ch) * p.hw + (j - img * p.hw), w);
    }
}


// ---- moments: (count, mean, M2 = sum of squared deviations), merged with Chan's formula ---------

struct Moments {
    float n, mean, m2;
};

// Chan, Golub and LeVeque's pairwise update: exact for the count, and the deviations it squares
// are differences of means, so a large common offset does not cancel the variance away (the sum
// of squares minus the squared sum would). Not symmetric in rounding: callers fix the order.
__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float wb = b.n / n;
    const float d = b.mean - a.mean;
    return {n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

// Lane 0 gets lanes 0..31 merged in a fixed tree (lane l takes lane l + off); other lanes' results
// are partial and unused.
__device__ __forceinline__ Moments warp_merge(Moments v) {
    for (int off = 16; off > 0; off >>= 1) {
        const Moments o = {__shfl_down_sync(0xffffffffu, v.n, off), __shfl_down_sync(0xffffffffu, v.mean, off),
                           __shfl_down_sync(0xffffffffu, v.m2, off)};
        v = merge(v, o);
    }
    return v;
}

// Thread 0 gets the block's moments, warps merged in order. `scratch` holds BN_THREADS / 32.
__device__ __forceinline__ Moments block_merge(Moments v, Moments* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_merge(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < BN_THREADS / 32 ? scratch[lane] : Moments{0.0f, 0.0f, 0.0f};
        v = warp_merge(v);
    }
    return v;
}

// Moments of the four values of a group, two-pass (exact mean of 4, then deviations).
__device__ __forceinline__ Moments moments4(float4 v) {
    const float mu = ((v.x + v.y) + (v.z + v.w)) * 0.25f;
    const float a = v.x - mu, b = v.y - mu, c = v.z - mu, d = v.w - mu;
    return {4.0f, mu, (a * a + b * b) + (c * c + d * d)};
}

// The merged moments of channel blockIdx.x's partials (p.splits <= BN_MAX_SPLITS: lane s holds
// split s), called by all of warp 0; lane 0's value is the result. Every block of the channel
// computes the same bits.
__device__ __forceinline__ Moments channel_moments(const float* __restrict__ partial, const BnParams& p) {
    const int lane = threadIdx.x & 31;
    Moments v = {0.0f, 0.0f, 0.0f};
    if (lane < p.splits) {
        const float* q = partial + ((size_t)blockIdx.x * p.splits + lane) * 2;
        v = {slice_count(lane, p), q[0], q[1]};
    }
    return warp_merge(v);
}

// ---- training forward ---------------------------------------------------------------------------

// Moments of this block's slice to partial[(ch * splits + split) * 2 + {0: mean, 1: M2}].
template <typename T>
__device__ __forceinline__ void stats(const T* __restrict__ x, float* __restrict__ partial, const BnParams& p,
                                      Moments* scratch) {
    const Slice s = block_slice(p);
    Moments t = {0.0f, 0.0f, 0.0f};
    for_each_group(p, s, [&](int i, int w) {
        t = merge(t, w == 4 ? moments4(ld_act4(x, i)) : Moments{1.0f, ld_act(x, i), 0.0f});
    });
    t = block_merge(t, scratch);
    if (threadIdx.x == 0) {
        float* q = partial + ((size_t)blockIdx.x * p.splits + blockIdx.y) * 2;
        q[0] = t.mean;
        q[1] = t.m2;
    }
}

// y = x * scale + shift (then ReLU when fused) on this block's slice, from the merged partials.
// Split 0 writes save_mean, save_invstd and updates the running statistics.
template <typename T>
__device__ __forceinline__ void train_apply(const T* __restrict__ x, const float* __restrict__ partial,
                                            const float* __restrict__ gamma, const float* __restrict__ beta,
                                            float* __restrict__ running_mean, float* __restrict__ running_var,
                                            float* __restrict__ save_mean, float* __restrict__ save_invstd,
                                            T* __restrict__ y, const BnParams& p, float* coef) {
    const int ch = blockIdx.x;
    if (threadIdx.x < 32) {
        const Moments t = channel_moments(partial, p);
        if (threadIdx.x == 0) {
            const float m = (float)(p.n * p.hw);
            const float invstd = 1.0f / sqrtf(t.m2 / m + p.eps);
            const float scale = gamma[ch] * invstd;
            coef[0] = scale;
            coef[1] = beta[ch] - t.mean * scale;
            if (blockIdx.y == 0) {
                const float unbiased = t.m2 / (m - 1.0f);  // host guarantees m >= 2
                save_mean[ch] = t.mean;
                save_invstd[ch] = invstd;
                running_mean[ch] = (1.0f - p.momentum) * running_mean[ch] + p.momentum * t.mean;
                running_var[ch] = (1.0f - p.momentum) * running_var[ch] + p.momentum * unbiased;
            }
        }
    }
    __syncthreads();
    const float scale = coef[0], shift = coef[1];
    const bool fuse = p.relu;
    for_each_group(p, block_slice(p), [&](int i, int w) {
        if (w == 4) {
            float4 v = ld_act4(x, i);
            v = {v.x * scale + shift, v.y * scale + shift, v.z * scale + shift, v.w * scale + shift};
            if (fuse) v = {relu(v.x), relu(v.y), relu(v.z), relu(v.w)};
            st_act4(y, i, v);
        } else {
            const float v = ld_act(x, i) * scale + shift;
            st_act(y, i, fuse ? relu(v) : v);
        }
    });
}

// Eval forward: the same map with mean = running_mean, invstd = 1 / sqrt(running_var + eps).
template <typename T>
__device__ __forceinline__ void apply(const T* __restrict__ x, const float* __restrict__ running_mean,
                                      const float* __restrict__ running_var, const float* __restrict__ gamma,
                                      const float* __restrict__ beta, T* __restrict__ y, const BnParams& p) {
    const int ch = blockIdx.x;
    const float scale = gamma[ch] * (1.0f / sqrtf(running_var[ch] + p.eps));
    const float shift = beta[ch] - running_mean[ch] * scale;
    const bool fuse = p.relu;
    for_each_group(p, block_slice(p), [&](int i, int w) {
        if (w == 4) {
            float4 v = ld_act4(x, i);
            v = {v.x * scale + shift, v.y * scale + shift, v.z * scale + shift, v.w * scale + shift};
            if (fuse) v = {relu(v.x), relu(v.y), relu(v.z), relu(v.w)};
            st_act4(y, i, v);
        } else {
            const float v = ld_act(x, i) * scale + shift;
            st_act(y, i, fuse ? relu(v) : v);
        }
    });
}

// ---- backward -----------------------------------------------------------------------------------

// g = dy, zeroed where y <= 0 when the ReLU is fused (a NaN y passes dy, as the CPU reference).
__device__ __forceinline__ float masked(float g, float y, bool fuse) { return (fuse && y <= 0.0f) ? 0.0f : g; }

// (sum g, sum g * (x - mean)) of this block's slice to partial[(ch * splits + split) * 2 + {0, 1}].
// `y` (the saved forward output) is read only when p.relu is set.
template <typename T>
__device__ __forceinline__ void bwd_reduce(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                           const float* __restrict__ mean, float* __restrict__ partial,
                                           const BnParams& p, float* scratch) {
    const float mu = mean[blockIdx.x];
    const bool fuse = p.relu;
    float sg = 0.0f, sgx = 0.0f;
    for_each_group(p, block_slice(p), [&](int i, int w) {
        if (w == 4) {
            const float4 xv = ld_act4(x, i);
            float4 g = ld_act4(dy, i);
            if (fuse) {
                const float4 yv = ld_act4(y, i);
                g = {masked(g.x, yv.x, true), masked(g.y, yv.y, true), masked(g.z, yv.z, true),
                     masked(g.w, yv.w, true)};
            }
            sg += (g.x + g.y) + (g.z + g.w);
            sgx += (g.x * (xv.x - mu) + g.y * (xv.y - mu)) + (g.z * (xv.z - mu) + g.w * (xv.w - mu));
        } else {
            const float g = masked(ld_act(dy, i), fuse ? ld_act(y, i) : 1.0f, fuse);
            sg += g;
            sgx += g * (ld_act(x, i) - mu);
        }
    });
    sg = block_sum(sg, scratch);
    sgx = block_sum(sgx, scratch);
    if (threadIdx.x == 0) {
        float* q = partial + ((size_t)blockIdx.x * p.splits + blockIdx.y) * 2;
        q[0] = sg;
        q[1] = sgx;
    }
}

// dx on this block's slice from the merged partials; split 0 writes dgamma and dbeta.
template <typename T>
__device__ __forceinline__ void bwd_dx(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                                       const float* __restrict__ mean, const float* __restrict__ invstd,
                                       const float* __restrict__ gamma, const float* __restrict__ partial,
                                       float* __restrict__ dgamma, float* __restrict__ dbeta, T* __restrict__ dx,
                                       const BnParams& p, float* coef) {
    const int ch = blockIdx.x;
    if (threadIdx.x < 32) {
        // Lane s holds split s; warp_sum's butterfly gives every lane the same bits (a + b = b + a).
        const int lane = threadIdx.x;
        float sg = 0.0f, sgx = 0.0f;
        if (lane < p.splits) {
            const float* q = partial + ((size_t)ch * p.splits + lane) * 2;
            sg = q[0];
            sgx = q[1];
        }
        sg = warp_sum(sg);
        sgx = warp_sum(sgx);
        if (lane == 0) {
            const float is = invstd[ch];
            const float inv_m = 1.0f / (float)(p.n * p.hw);
            const float dg = sgx * is;
            coef[0] = gamma[ch] * is;  // k
            coef[1] = sg * inv_m;      // mean of g
            coef[2] = dg * is * inv_m; // projection on x - mean
            if (blockIdx.y == 0) {
                dbeta[ch] = sg;
                dgamma[ch] = dg;
            }
        }
    }
    __syncthreads();
    const float k = coef[0], mean_g = coef[1], proj = coef[2], mu = mean[ch];
    const bool fuse = p.relu;
    for_each_group(p, block_slice(p), [&](int i, int w) {
        if (w == 4) {
            const float4 xv = ld_act4(x, i);
            float4 g = ld_act4(dy, i);
            if (fuse) {
                const float4 yv = ld_act4(y, i);
                g = {masked(g.x, yv.x, true), masked(g.y, yv.y, true), masked(g.z, yv.z, true),
                     masked(g.w, yv.w, true)};
            }
            st_act4(dx, i,
                   {(g.x - mean_g - (xv.x - mu) * proj) * k, (g.y - mean_g - (xv.y - mu) * proj) * k,
                    (g.z - mean_g - (xv.z - mu) * proj) * k, (g.w - mean_g - (xv.w - mu) * proj) * k});
        } else {
            const float g = masked(ld_act(dy, i), fuse ? ld_act(y, i) : 1.0f, fuse);
            st_act(dx, i, (g - mean_g - (ld_act(x, i) - mu) * proj) * k);
        }
    });
}

// The shared scratch of each body above (BN_THREADS / 32 moments, 32 floats, or 2-3
// coefficients) is declared by its entry point: a __shared__ static inside a template function is
// not one per kernel under the emulated driver (see kernels/conv.cu's note on Smem).
#define BN_ENTRY(T, ACT)                                                                                              \
    extern "C" __global__ void __launch_bounds__(BN_THREADS)                                                          \
        batchnorm_stats_f32##ACT(const T* __restrict__ x, float* __restrict__ partial, BnParams p) {                  \
        __shared__ Moments scratch[BN_THREADS / 32];                                                                  \
        stats(x, partial, p, scratch);                                                                                \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) batchnorm_train_apply_f32##ACT(                          \
        const T* __restrict__ x, const float* __restrict__ partial, const float* __restrict__ gamma,                  \
        const float* __restrict__ beta, float* __restrict__ running_mean, float* __restrict__ running_var,            \
        float* __restrict__ save_mean, float* __restrict__ save_invstd, T* __restrict__ y, BnParams p) {              \
        __shared__ float coef[2];                                                                                     \
        train_apply(x, partial, gamma, beta, running_mean, running_var, save_mean, save_invstd, y, p, coef);          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) batchnorm_apply_f32##ACT(                                \
        const T* __restrict__ x, const float* __restrict__ running_mean, const float* __restrict__ running_var,       \
        const float* __restrict__ gamma, const float* __restrict__ beta, T* __restrict__ y, BnParams p) {             \
        apply(x, running_mean, running_var, gamma, beta, y, p);                                                       \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) batchnorm_bwd_reduce_f32##ACT(                           \
        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy, const float* __restrict__ mean,   \
        float* __restrict__ partial, BnParams p) {                                                                    \
        __shared__ float scratch[32];                                                                                 \
        bwd_reduce(x, y, dy, mean, partial, p, scratch);                                                              \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BN_THREADS) batchnorm_bwd_dx_f32##ACT(                               \
        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy, const float* __restrict__ mean,   \
        const float* __restrict__ invstd, const float* __restrict__ gamma, const float* __restrict__ partial,         \
        float* __restrict__ dgamma, float* __restrict__ dbeta, T* __restrict__ dx, BnParams p) {                      \
        __shared__ float coef[3];                                                                                     \
        bwd_dx(x, y, dy, mean, invstd, gamma, partial, dgamma, dbeta, dx, p, coef);                                   \
    }
EC_FOR_EACH_ACT(BN_ENTRY)
