//! Training-batch construction from uint8 images: gather by index, random crop with zero padding,
//! horizontal flip, normalization to f32. Also the eval variant (gather + normalize).
//!
//! - kernel: `kernels/augment.cu` (`augment_train_f32`, `augment_eval_f32`)
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path): [`cpu`]; tests: `tests/augment.rs`
//!
//! The dataset is `count x c x h x w` bytes (CHW planes per image, as CIFAR-10's binary files);
//! the batch is `n x c x h x w` f32, `n = indices.len()`. The random choices are made by the caller
//! (from its seeded RNG) and passed in, so the CPU and the GPU build the very same batch:
//! - `indices[b]`: the dataset image of batch position `b`, in `[0, count)` (else
//!   [`Error::InvalidSample`](crate::Error::InvalidSample); the kernel never reads through it);
//! - `crops[2 b], crops[2 b + 1]`: the crop offsets `(dy, dx)`, each in `[0, 2 pad]`, of the `h x w`
//!   window taken from the image zero-padded by `pad` on every side (`(pad, pad)` = no shift);
//! - `flips[b]`: nonzero = mirror the crop left-right (torchvision's RandomCrop then
//!   RandomHorizontalFlip).
//!
//! `out[b, ch, y, x] = (img[ch, sy, sx] / 255 - mean[ch]) / std[ch]` with `sy = y + dy - pad`,
//! `sx = (flip ? w - 1 - x : x) + dx - pad` (torchvision's ToTensor then Normalize), and
//! **exactly 0 where `(sy, sx)` is in the padding**: the pad value is 0 in normalized space (the
//! data mean), not torchvision's raw-pixel 0 (which would normalize to `-mean / std`).
//! CPU and GPU compute each value with the same correctly rounded operations, so they agree bit for
//! bit.
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

/// Most channels an image may have (the per-channel constants travel in the kernel's parameters).
pub const MAX_CHANNELS: usize = 4;

/// Image geometry, padding and normalization constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    /// Channels (1..=4).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Zero padding on every side for the random crop (crop offsets lie in `[0, 2 pad]`, so
    /// `pad <= 127`).
    pub pad: usize,
    /// Per-channel mean of the `[0, 1]`-scaled data (entries past `c` unused).
    pub mean: [f32; MAX_CHANNELS],
    /// Per-channel standard deviation (entries past `c` unused; the first `c` nonzero, finite).
    pub std: [f32; MAX_CHANNELS],
}

impl AugmentSpec {
    /// CIFAR-10: 3 x 32 x 32, pad 4, and the training set's per-channel mean and standard deviation.
    pub fn cifar10() -> Self {
        Self { c: 3, h: 32, w: 32, pad: 4, mean: [0.4914, 0.4822, 0.4465, 0.0], std: [0.2470, 0.2435, 0.2616, 1.0] }
    }

    /// Bytes (and output values) per image: `c h w`.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Checks the spec and the dataset length; returns the number of images in the dataset.
    pub(crate) fn check(&self, op: &'static str, data_len: usize) -> Result<usize> {
        if self.c == 0 || self.c > MAX_CHANNELS {
            return Err(Error::shape(op, format!("{} channels; 1..={MAX_CHANNELS} are supported", self.c)));
        }
        if self.h == 0 || self.w == 0 {
            return Err(Error::shape(op, format!("empty image {} x {}", self.h, self.w)));
        }
        if self.pad > 127 {
            return Err(Error::shape(op, format!("pad {} exceeds 127 (crop offsets are bytes)", self.pad)));
        }
        if let Some(bad) = self.std[..self.c].iter().chain(&self.mean[..self.c]).find(|v| !v.is_finite()) {
            return Err(Error::shape(op, format!("non-finite normalization constant {bad}")));
        }
        if self.std[..self.c].contains(&0.0) {
            return Err(Error::shape(op, "a normalization std is zero"));
        }
        let image = self.c.checked_mul(self.h).and_then(|v| v.checked_mul(self.w));
        let image = image.ok_or_else(|| Error::TooLarge { op, msg: format!("{self:?} overflows usize") })?;
        if !data_len.is_multiple_of(image) {
            return Err(Error::shape(
                op,
                format!("dataset of {data_len} bytes is not a whole number of {image}-byte images"),
            ));
        }
        Ok(data_len / image)
    }
}
