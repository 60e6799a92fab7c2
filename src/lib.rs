//! # evenclass
//!
//! Hand-written CUDA kernels for training classifiers with a per-class weighted loss, each with a
//! CPU reference in Rust:
//!
//! | family | kernels | Rust (CUDA / CPU) |
//! |---|---|---|
//! | 2-D convolution (fwd, bwd-data, bwd-weight, bias) | `kernels/conv.cu` | [`conv::cuda`] / [`conv::cpu`] |
//! | softmax | `kernels/softmax.cu` | [`softmax::cuda`] / [`softmax::cpu`] |
//! | weighted cross-entropy | `kernels/cross_entropy.cu` | [`cross_entropy::cuda`] / [`cross_entropy::cpu`] |
//! | confusion counting | `kernels/confusion.cu` | [`confusion::cuda`] / [`confusion::cpu`] |
//!
//! The CUDA side launches on the caller's `cudarc` stream and device buffers; the CPU side takes
//! `ndarray` views. See `README.md` for the project and `examples/embed_loss.rs` for embedding.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod conv;
pub mod cuda;
pub mod error;
pub mod softmax;

pub use error::{Error, Result};
