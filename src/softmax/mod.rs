//! Softmax and log-softmax over the last dimension of an N x C matrix, forward and backward.
//!
//! - kernel: `kernels/softmax.cu` (`softmax_fwd_*`, `log_softmax_fwd_*`, `softmax_bwd_*`, `log_softmax_bwd_*`)
//! - CUDA wrapper: [`cuda`]; CPU reference: [`cpu`]; tests: `tests/softmax.rs`
//!
//! Both are numerically stable (each row is shifted by its maximum) and propagate NaN. The backward
//! takes the forward *output* `y` (not the input), as PyTorch's `_softmax_backward_data` does:
//! softmax `dx = y * (dy - sum(dy * y))`, log-softmax `dx = dy - exp(y) * sum(dy)`.
pub mod cpu;
pub mod cuda;

/// Which of the two functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Softmax,
    LogSoftmax,
}
