//! Pooling over NCHW f32: max-pool 2x2 stride 2, and global average pooling `n x c x h x w -> n x c`.
//!
//! - kernel: `kernels/pool.cu` (`max_pool_fwd_f32`, `max_pool_bwd_f32`, `global_avg_pool_fwd_f32`,
//!   `global_avg_pool_bwd_f32`)
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path): [`cpu`]; tests: `tests/pool.rs`
//!
//! Max-pool is PyTorch's `MaxPool2d(2)` (floor mode: `oh = h / 2`, `ow = w / 2`, an odd last row or
//! column is dropped and gets zero gradient). The forward also writes, per output, the position of
//! the maximum in its window as a `u8` in `0..4` (`2 * row + column`); the backward takes that byte
//! instead of recomputing from `x` (a quarter of the memory of `x`, and no tie ambiguity). Ties go to
//! the first element in row-major order and NaN wins, as in PyTorch. A byte outside `0..4` (garbage)
//! routes no gradient anywhere; it is never used as an index.
//!
//! Global average pooling: `y[i, c] = mean(x[i, c, :, :])`, backward `dx[i, c, :, :] = dy[i, c] / (h w)`.
pub mod cpu;
pub mod cuda;

/// Shape of the NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl PoolShape {
    /// Elements of the input (`n c h w`), `None` on overflow.
    pub fn checked_len(&self) -> Option<usize> {
        self.n.checked_mul(self.c)?.checked_mul(self.h)?.checked_mul(self.w)
    }

    /// Elements of the input (`n c h w`).
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// True when the input has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Output height of the 2x2 max-pool (`h / 2`).
    pub fn pooled_h(&self) -> usize {
        self.h / 2
    }

    /// Output width of the 2x2 max-pool (`w / 2`).
    pub fn pooled_w(&self) -> usize {
        self.w / 2
    }

    /// Elements of the max-pool output (and of its argmax): `n c (h/2) (w/2)`.
    pub fn pooled_len(&self) -> usize {
        self.n * self.c * self.pooled_h() * self.pooled_w()
    }

    /// Planes `n c`: the length of the global-average-pool output.
    pub fn planes(&self) -> usize {
        self.n * self.c
    }
}
