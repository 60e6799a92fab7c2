//! Embedding the loss kernel in your own cudarc program: your context, your stream, your buffers.
//!
//! `cargo run --release --example embed_loss` (needs a CUDA device; says so and exits otherwise).
//!
//! The program keeps a tiny linear classifier's logits on the device, and for a few steps computes
//! the class-weighted cross-entropy and its gradient with one fused launch on *its own* stream,
//! then takes a gradient step on the logits with a cudarc copy round trip (to keep the example
//! free of other kernels), and finally counts the per-class confusion matrix on the device.
//! Nothing is copied to the host by the loss call itself beyond the 4-byte target check.
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaContext;
use evenclass::confusion::{self, ConfusionMatrix};
use evenclass::cross_entropy::{cuda as ce, Options, Reduction};

fn main() -> Result<()> {
    if let Err(e) = evenclass::cuda::device_count() {
        bail!("this example needs a CUDA device: {e}");
    }
    // Your own cudarc setup: any context and stream work.
    let ctx = CudaContext::new(0).context("opening device 0")?;
    let stream = ctx.new_stream().context("creating a stream")?;
    println!("device: {}", ctx.name()?);

    let (n, c) = (6usize, 4usize);
    let mut logits: Vec<f32> = (0..n * c).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
    let targets: Vec<i32> = vec![0, 1, 2, 3, -100, 1];
    let weight: Vec<f32> = vec![1.0, 2.0, 0.5, 1.5];

    let d_targets = stream.clone_htod(&targets)?;
    let d_weight = stream.clone_htod(&weight)?;
    let mut d_loss = stream.alloc_zeros::<f32>(1)?;
    let mut d_grad = stream.alloc_zeros::<f32>(n * c)?;
    // The workspace holds the kernel's scratch memory; keep it across steps.
    let mut ws = ce::Workspace::new(&stream)?;
    let opts = Options { ignore_index: Some(-100), label_smoothing: 0.05, reduction: Reduction::Mean };

    for step in 0..5 {
        let d_logits = stream.clone_htod(&logits)?;
        let w = d_weight.as_view();
        ce::forward_backward(
            &stream,
            &mut ws,
            &d_logits.as_view(),
            &d_targets.as_view(),
            Some(&w),
            c,
            &opts,
            &mut d_loss,
            &mut d_grad,
        )?;
        let loss = stream.clone_dtoh(&d_loss)?[0];
        let grad = stream.clone_dtoh(&d_grad)?;
        println!("step {step}: weighted cross-entropy {loss:.5}");
        for (x, g) in logits.iter_mut().zip(&grad) {
            *x -= 2.0 * g;
        }
    }

    // Per-class confusion counts of the final logits, argmax fused, into a device matrix of yours.
    let d_logits = stream.clone_htod(&logits)?;
    let mut d_counts = stream.alloc_zeros::<u64>(c * c)?;
    confusion::cuda::count_logits(&stream, &d_logits, &d_targets.as_view(), &mut d_counts, c, Some(-100))?;
    let m = ConfusionMatrix::from_counts(c, stream.clone_dtoh(&d_counts)?)?;
    println!("recall per class: {:?}", m.recall());
    Ok(())
}
