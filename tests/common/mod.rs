//! Helpers shared by the integration tests: seeded random inputs, a poison value for outputs, a
//! tolerance check, and the GPU stream for the `#[ignore = "needs a CUDA device"]` tests.
#![allow(dead_code)]
use std::sync::Arc;

use cudarc::driver::CudaStream;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

/// Written into outputs before a launch: an element the kernel fails to write stays at this value
/// and fails the comparison with the reference.
pub const POISON: f32 = -7.77e30;

pub fn rng(seed: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut Pcg64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `n` class indices in `[0, classes)`.
pub fn labels(rng: &mut Pcg64, n: usize, classes: usize) -> Vec<i32> {
    (0..n).map(|_| rng.random_range(0..classes as i32)).collect()
}

/// The default stream of device 0. Only called from GPU tests, which must fail (not pass) when
/// there is no device, so this panics with the reason.
pub fn gpu() -> Arc<CudaStream> {
    let ctx = evenclass::cuda::open(0).unwrap_or_else(|e| panic!("GPU test without a usable device: {e}"));
    ctx.default_stream()
}

/// Asserts `|a - b| <= atol + rtol * |b|` elementwise (NaN must match NaN), naming the first miss.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() { g.is_nan() } else { (g - w).abs() <= atol + rtol * w.abs() };
        assert!(ok, "{what}[{i}]: got {g}, want {w} (atol {atol}, rtol {rtol})");
    }
}

/// Every path under `root`, relative to it, sorted (links are listed, not followed).
pub fn tree(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `v` rounded to bf16 (nearest even) and widened back: exactly the values a bf16 tensor holds.
pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// `v` as bf16 (nearest even), for uploading as a bf16 activation tensor.
pub fn to_bf16(v: &[f32]) -> Vec<half::bf16> {
    v.iter().map(|&x| half::bf16::from_f32(x)).collect()
}

/// A bf16 tensor widened to f32 (exact).
pub fn from_bf16(v: &[half::bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}
