//! Helpers shared by the kernel benchmarks: seeded inputs, the GPU stream (or a note and `None`
//! without a device), and timing of kernel launches with CUDA events.
#![allow(dead_code)]
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::Bencher;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

pub fn rng(seed: u64) -> Pcg64 {
    Pcg64::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

/// `n` class indices in `[0, classes)`.
pub fn labels(seed: u64, n: usize, classes: usize) -> Vec<i32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(0..classes as i32)).collect()
}

/// `n` random bytes (uint8 images).
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random::<u8>()).collect()
}

/// The default stream of device 0, or `None` (after a one-line note naming `what`) when there is no
/// usable device or the kernels were not compiled into this build: benchmarks never fail for lack
/// of a GPU.
pub fn gpu_stream(what: &str) -> Option<Arc<CudaStream>> {
    if let Some(why) = evenclass::cuda::kernels_not_compiled() {
        println!("{what}: kernels not compiled ({why}), skipping the GPU benchmarks");
        return None;
    }
    if !evenclass::cuda::is_available() {
        println!("{what}: no CUDA device, skipping the GPU benchmarks");
        return None;
    }
    match evenclass::cuda::open(0) {
        Ok(ctx) => Some(ctx.default_stream()),
        Err(e) => {
            println!("{what}: cannot open device 0 ({e}), skipping the GPU benchmarks");
            None
        }
    }
}

/// Times `launch` (which only enqueues work on `stream`) with CUDA events: the inputs are already
/// on the device, `iters` launches go back to back between a start and an end event, and the time
/// is the GPU time between the two. No host copy and no per-launch synchronization is counted; a
/// launch the host cannot enqueue as fast as the GPU runs it shows up as the gap it leaves.
pub fn gpu_iter(b: &mut Bencher<'_, WallTime>, stream: &Arc<CudaStream>, mut launch: impl FnMut()) {
    let ctx = stream.context();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("creating a timing event");
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).expect("creating a timing event");
    b.iter_custom(|iters| {
        start.record(stream).expect("recording the start event");
        for _ in 0..iters {
            launch();
        }
        end.record(stream).expect("recording the end event");
        end.synchronize().expect("waiting for the end event");
        let ms = start.elapsed_ms(&end).expect("reading the event timer");
        Duration::from_secs_f64(f64::from(ms) * 1e-3)
    });
}

/// `BenchmarkId` parameter for an `n x c` matrix.
pub fn nxc(n: usize, c: usize) -> String {
    format!("{n}x{c}")
}

/// Independent FMA chains in registers: enough to cover the FMA latency (4 cycles) times the units
/// (up to 2, or 3 on some cores), and within the register file (16 with AVX2, 32 with AVX-512).
#[cfg(target_arch = "x86_64")]
pub mod peak {
    use std::arch::x86_64::*;

    pub const CHAINS_256: usize = 12;
    pub const CHAINS_512: usize = 24;

    /// `iters` rounds of `CHAINS_256` FMAs on 8 lanes: `2 * 8 * CHAINS_256 * iters` FLOP.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize, seed: f32) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(seed * 1e-3));
        let mut acc = [_mm256_set1_ps(seed); CHAINS_256];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let s = acc.iter().fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// `iters` rounds of `CHAINS_512` FMAs on 16 lanes: `2 * 16 * CHAINS_512 * iters` FLOP.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize, seed: f32) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(seed * 1e-3));
        let mut acc = [_mm512_set1_ps(seed); CHAINS_512];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x)))
    }
}
