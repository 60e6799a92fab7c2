// Builds a normalized batch from uint8 images (dataset: count x c x h x w, CHW planes), as f32
// or, in mixed precision, bf16 (normalized in f32, then rounded; entry points `augment_train_f32`
// and `augment_train_f32_abf16`), applying per-image choices made on the host (so the CPU version
// builds the very same batch):
//
//   train: random crop of the image zero-padded by `pad` on every side, at offset (dy, dx) in
//          [0, 2 pad], then a horizontal flip of the crop when flip != 0
//          out[b, ch, y, x] = norm(img[sy, sx]) with sy = y + dy - pad,
//                             sx = (flip ? w - 1 - x : x) + dx - pad,
//          and 0 where (sy, sx) falls in the padding.
//   eval:  no crop, no flip: out[b] = norm(img) (gather + normalize).
//   norm(v) = (v / 255 - mean[ch]) / std[ch]    (torchvision ToTensor then Normalize)
//
// The padding is 0 *after* normalization (torchvision pads raw pixels with 0, which normalizes to
// -mean/std; here a padded pixel is exactly 0, the mean of the data).
// An image index outside [0, count) or a crop offset above 2 pad is never read through: its output
// image is zeroed and its batch position recorded in *first_bad (see flag_bad), which the host
// turns into an error.
#include "common.cuh"

#define AUG_MAX_CHANNELS 4

// Mirrors `AugmentParams` in src/augment/cuda.rs. The host guarantees n * c * h * w <= INT32_MAX
// and that count * c * h * w fits the dataset buffer.
struct AugmentParams {
    int32_t n, c, h, w;
    int32_t pad;
    int32_t count;  // images in the dataset
    float mean[AUG_MAX_CHANNELS];
    float std[AUG_MAX_CHANNELS];
};
EC_CHECK_PARAMS(AugmentParams);

template <bool TRAIN, typename T>
__device__ void augment_batch(const uint8_t* __restrict__ data, const int32_t* __restrict__ index,
                              const uint8_t* __restrict__ crop, const uint8_t* __restrict__ flip,
                              T* __restrict__ out, int* first_bad, const AugmentParams& p) {
    const int total = p.n * p.c * p.h * p.w;
    const int64_t image = (int64_t)p.c * p.h * p.w;
    for (int64_t ii = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; ii < total; ii += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)ii;
        const int x = i % p.w;
        int t = i / p.w;
        const int y = t % p.h;
        t /= p.h;
        const int ch = t % p.c;
        const int b = t / p.c;
        const int src = index[b];
        int dy = p.pad, dx = p.pad;
        bool mirror = false;
        if (TRAIN) {
            dy = crop[2 * b];
            dx = crop[2 * b + 1];
            mirror = flip[b] != 0;
        }
        if (src < 0 || src >= p.count || dy > 2 * p.pad || dx > 2 * p.pad) {
            flag_bad(first_bad, b);
            st_act(out, i, 0.0f);
            continue;
        }
        const int sy = y + dy - p.pad;
        const int sx = (mirror ? p.w - 1 - x : x) + dx - p.pad;
        float v = 0.0f;
        if (sy >= 0 && sy < p.h && sx >= 0 && sx < p.w) {
            const float u = (float)data[src * image + ((int64_t)ch * p.h + sy) * p.w + sx];
            v = (u / 255.0f - p.mean[ch]) / p.std[ch];
        }
        st_act(out, i, v);
    }
}

#define AUGMENT_ENTRY(T, ACT)                                                                                 \
    extern "C" __global__ void augment_train_f32##ACT(const uint8_t* data, const int32_t* index,               \
                                                       const uint8_t* crop, const uint8_t* flip, T* out,        \
                                                       int* first_bad, AugmentParams p) {                       \
        augment_batch<true>(data, index, crop, flip, out, first_bad, p);                                       \
    }                                                                                                           \
    extern "C" __global__ void augment_eval_f32##ACT(const uint8_t* data, const int32_t* index, T* out,        \
                                                      int* first_bad, AugmentParams p) {                        \
        augment_batch<false>(data, index, (const uint8_t*)nullptr, (const uint8_t*)nullptr, out, first_bad, p); \
    }
EC_FOR_EACH_ACT(AUGMENT_ENTRY)
