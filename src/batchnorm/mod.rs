//! BatchNorm2d over NCHW (statistics per channel over N, H, W), optionally fused with a ReLU.
//!
//! - kernel: `kernels/batchnorm.cu` (`batchnorm_stats_f32`, `batchnorm_train_apply_f32`,
//!   `batchnorm_apply_f32`, `batchnorm_bwd_reduce_f32`, `batchnorm_bwd_dx_f32`); design and the
//!   bytes each moves: `docs/batchnorm.md`
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path): [`cpu`]; tests: `tests/batchnorm.rs`
//!
//! Semantics are PyTorch's `nn.BatchNorm2d` (f32), with `m = n * h * w` values per channel:
//! - training forward: `mean`, biased `var` over the batch; `invstd = 1 / sqrt(var + eps)`;
//!   `y = x * scale + shift` with `scale = gamma * invstd`, `shift = beta - mean * scale` (PyTorch's
//!   CPU form); `mean` and `invstd` are saved for the backward; the running statistics become
//!   `(1 - momentum) * running + momentum * batch`, with the *unbiased* variance `var * m / (m - 1)`.
//!   Needs `m >= 2` (PyTorch refuses one value per channel too).
//! - eval forward: the same affine map from `running_mean` and `invstd = 1 / sqrt(running_var + eps)`.
//! - backward (training mode): `dbeta = sum dy`, `dgamma = sum dy * xhat`,
//!   `dx = gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)` with `xhat = (x - mean) * invstd`.
//!   `dgamma` and `dbeta` are written, not accumulated.
//! - fused ReLU (`relu_*`): the forward returns `relu(bn(x))`; the backward takes that saved output
//!   `y` and uses `dy` only where `y > 0` (as PyTorch's ReLU backward, NaN passes), saving a pass.
//!
//! The GPU reductions cut each channel into slices (a block each), reduce each in one pass
//! (Welford and Chan's merge for the statistics) and merge the slices in a fixed order:
//! deterministic, no float atomics.
pub mod cpu;
pub mod cuda;

/// Shape of an NCHW tensor as batchnorm sees it: `n` images of `c` channels of `hw = h * w` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnShape {
    /// Elements of the whole tensor.
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel (`n * hw`), the `m` of the formulas.
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }
}

/// The layer's hyper-parameters (PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnConfig {
    pub eps: f32,
    pub momentum: f32,
}

impl Default for BnConfig {
    fn default() -> Self {
        Self { eps: 1e-5, momentum: 0.1 }
    }
}

/// Outputs of the allocating training forward ([`cpu::forward_train`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutput {
    /// The normalized (and, fused, rectified) output, same shape as `x`.
    pub y: Vec<f32>,
    /// Batch mean per channel, for the backward.
    pub save_mean: Vec<f32>,
    /// `1 / sqrt(batch var + eps)` per channel, for the backward.
    pub save_invstd: Vec<f32>,
}

/// Gradients from the allocating backward ([`cpu::backward`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}
