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
//! | batchnorm (+ fused ReLU) | `kernels/batchnorm.cu` | [`batchnorm::cuda`] / [`batchnorm::cpu`] |
//! | ReLU | `kernels/activation.cu` | [`activation::cuda`] / [`activation::cpu`] |
//! | max-pool 2x2, global average pool | `kernels/pool.cu` | [`pool::cuda`] / [`pool::cpu`] |
//! | linear layer, SGEMM | `kernels/linear.cu` | [`linear::cuda`] / [`linear::cpu`] |
//! | SGD (momentum, Nesterov, weight decay) | `kernels/optim.cu` | [`optim::cuda`] / [`optim::cpu`] |
//! | batch augmentation (crop, flip, normalize) | `kernels/augment.cu` | [`augment::cuda`] / [`augment::cpu`] |
//!
//! The CUDA side launches on the caller's `cudarc` stream and device buffers; the CPU side takes
//! `ndarray` views. With the `trainer` feature (default): [`data`] loads CIFAR-10, [`train`] holds
//! the model, the one training step and the training loop over a CPU or CUDA backend,
//! [`methods`] the ways of evening out the classes, [`experiment`] the whole two-stage experiment
//! and the method comparison (`ExperimentSpec`, `run`), and [`report`] writes and prints the
//! results. See `README.md` for the project and `examples/embed_loss.rs` for embedding.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod activation;
pub mod augment;
pub mod batchnorm;
#[cfg(feature = "candle")]
pub mod candle;
pub mod confusion;
pub mod conv;
pub mod cross_entropy;
pub mod cuda;
#[cfg(feature = "trainer")]
pub mod data;
pub mod error;
#[cfg(feature = "trainer")]
pub mod experiment;
#[cfg(feature = "trainer")]
pub mod fs;
#[cfg(feature = "trainer")]
pub mod json;
pub mod linear;
#[cfg(feature = "trainer")]
pub mod methods;
pub mod optim;
pub mod pool;
#[cfg(feature = "trainer")]
pub mod report;
pub mod softmax;
#[cfg(feature = "trainer")]
pub mod train;

pub use error::{Error, Result};
