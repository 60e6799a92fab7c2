//! SGD with momentum (optionally Nesterov) and weight decay: one elementwise step over a flat f32
//! parameter buffer, with `torch.optim.SGD`'s arithmetic (dampening 0).
//!
//! - kernel: `kernels/optim.cu` (`sgd_step_f32`)
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path): [`cpu`]; tests: `tests/optim.rs`
//!
//! Per element, as PyTorch:
//! ```text
//! d   = grad + weight_decay * p              (skipped when weight_decay == 0)
//! buf = momentum * buf + d                   (skipped, buf untouched, when momentum == 0)
//! d   = nesterov ? d + momentum * buf : buf  (when momentum != 0)
//! p   = p - lr * d
//! ```
//! **First step:** PyTorch creates `buf = d` (a clone) on the first step. Here the caller
//! zero-fills `buf` once before training; `momentum * 0 + d` is exactly `d`, so the first step is
//! identical (up to the sign of a zero) and every step runs the same code. Each product and sum is
//! rounded separately (no fused multiply-add, on the GPU by intrinsics), so the CPU and GPU steps
//! agree bit for bit. `lr` is passed per call (schedules live in the caller). Parameters with
//! different settings (say no weight decay for biases and batchnorm) are stepped as separate calls
//! on sub-slices / device views.
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

/// The optimizer's fixed settings (`lr` is passed per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl SgdConfig {
    /// Rejects what PyTorch rejects: negative or non-finite settings, and Nesterov without momentum.
    pub(crate) fn check(&self, op: &'static str, lr: f32) -> Result<()> {
        let ok = |v: f32| v.is_finite() && v >= 0.0;
        if !ok(lr) || !ok(self.momentum) || !ok(self.weight_decay) {
            return Err(Error::shape(
                op,
                format!(
                    "lr ({lr}), momentum ({}) and weight_decay ({}) must be finite and >= 0",
                    self.momentum, self.weight_decay
                ),
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::shape(op, "Nesterov momentum requires a momentum > 0"));
        }
        Ok(())
    }
}
