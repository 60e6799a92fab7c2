//! ReLU forward and backward, elementwise over flat f32 buffers (any shape).
//!
//! - kernel: `kernels/activation.cu` (`relu_fwd_f32`, `relu_bwd_f32`)
//! - CUDA wrapper: [`cuda`]; CPU version (also the trainer's CPU path): [`cpu`]; tests: `tests/activation.rs`
//!
//! As PyTorch: `y = x <= 0 ? 0 : x` (NaN passes through), and the backward masks with the forward
//! *output*: `dx = y <= 0 ? 0 : dy`, so the input need not be kept. In-place forms overwrite the
//! input (forward) or the incoming gradient (backward).
pub mod cpu;
pub mod cuda;
