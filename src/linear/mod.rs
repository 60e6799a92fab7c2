//! Fully connected layer `y = x W^T + b` (PyTorch's `nn.Linear`), forward and backward, f32, and
//! the general SGEMM it is built on.
//!
//! - kernel: `kernels/linear.cu` (`linear_sgemm_f32`: tiled, shared-memory panels and 4x4 register
//!   micro-tiles, transposes as strides; `linear_col_sum_f32` for the bias gradient)
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path, on `matrixmultiply::sgemm`):
//!   [`cpu`]; tests: `tests/linear.rs`
//!
//! Row-major buffers: `x` is `batch x in`, `W` is `out x in`, `b` is `out`, `y` is `batch x out`.
//! Backward: `dx = dy W` (`batch x in`), `dW = dy^T x` (`out x in`), `db = sum over the batch of dy`.
//! Gradients are written, not accumulated. The GPU products are deterministic: each output element
//! is one thread's ordered sum, and `db` a per-column ordered sum (no atomics).
pub mod cpu;
pub mod cuda;

/// Sizes of a linear layer applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
}

/// One matrix product `C = op(A) op(B)` with `C` row-major `m x n` and `op(A)` `m x k`,
/// `op(B)` `k x n`. `A` is stored row-major as `m x k`, or as `k x m` when `trans_a` (so `op(A) =
/// A^T`); `B` as `k x n`, or as `n x k` when `trans_b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Gemm {
    /// `(row stride, column stride)` of `op(A)` inside A's storage.
    pub(crate) fn a_strides(&self) -> (usize, usize) {
        if self.trans_a {
            (1, self.m)
        } else {
            (self.k, 1)
        }
    }

    /// `(row stride, column stride)` of `op(B)` inside B's storage.
    pub(crate) fn b_strides(&self) -> (usize, usize) {
        if self.trans_b {
            (1, self.k)
        } else {
            (self.n, 1)
        }
    }

    /// Element counts of A, B and C, `None` on overflow.
    pub(crate) fn lens(&self) -> Option<(usize, usize, usize)> {
        Some((self.m.checked_mul(self.k)?, self.k.checked_mul(self.n)?, self.m.checked_mul(self.n)?))
    }
}

/// Gradients from the allocating backward ([`cpu::backward`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    /// `batch x in`.
    pub dx: Vec<f32>,
    /// `out x in`.
    pub dw: Vec<f32>,
    /// `out`.
    pub db: Vec<f32>,
}

impl LinearShape {
    /// The forward product `y = x W^T`.
    pub(crate) fn forward_gemm(&self) -> Gemm {
        Gemm { m: self.batch, n: self.out_features, k: self.in_features, trans_a: false, trans_b: true }
    }

    /// `dx = dy W`.
    pub(crate) fn data_gemm(&self) -> Gemm {
        Gemm { m: self.batch, n: self.in_features, k: self.out_features, trans_a: false, trans_b: false }
    }

    /// `dW = dy^T x`.
    pub(crate) fn weight_gemm(&self) -> Gemm {
        Gemm { m: self.out_features, n: self.in_features, k: self.batch, trans_a: true, trans_b: false }
    }

    /// `(x, W, y)` element counts, `None` on overflow.
    pub(crate) fn lens(&self) -> Option<(usize, usize, usize)> {
        Some((
            self.batch.checked_mul(self.in_features)?,
            self.out_features.checked_mul(self.in_features)?,
            self.batch.checked_mul(self.out_features)?,
        ))
    }
}
