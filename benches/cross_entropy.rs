//! Fused weighted cross-entropy forward+backward (the training step's loss): the CPU reference
//! (f32) and, when a CUDA device is present, the kernels in f32, f16 and bf16. Class weights and
//! label smoothing 0.1 are on, reduction is the mean. Throughput is the bytes of logits read plus
//! gradient written (`2 N C sizeof(T)`); the CPU reference also allocates its outputs per call.
//!
//! GPU timings are kernel time from CUDA events over back-to-back launches on device-resident
//! buffers (the workspace is `deferred`, so no call waits to check the targets).
//! `cargo bench --bench cross_entropy -- cpu` or `-- gpu` picks one side.
mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use cudarc::driver::{CudaStream, ValidAsZeroBits};
use evenclass::cross_entropy::{cpu, cuda, Options, Reduction};
use evenclass::cuda::Dtype;
use half::{bf16, f16};
use ndarray::{ArrayView1, ArrayView2};

/// (samples, classes)
const SHAPES: [(usize, usize); 5] = [(256, 10), (4096, 10), (65536, 10), (4096, 1000), (512, 32768)];

const OPTS: Options = Options { ignore_index: Some(-100), label_smoothing: 0.1, reduction: Reduction::Mean };

struct Inputs {
    logits: Vec<f32>,
    targets: Vec<i32>,
    weight: Vec<f32>,
}

fn inputs(n: usize, c: usize) -> Inputs {
    Inputs {
        logits: common::uniform(1, n * c, -4.0, 4.0),
        targets: common::labels(2, n, c),
        weight: common::uniform(3, c, 0.5, 2.0),
    }
}

fn bench_cpu(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("cross_entropy_cpu");
    g.sample_size(10);
    for (n, c) in SHAPES {
        let inp = inputs(n, c);
        let x = ArrayView2::from_shape((n, c), &inp.logits).unwrap();
        let t = ArrayView1::from(&inp.targets);
        let w = ArrayView1::from(&inp.weight);
        g.throughput(Throughput::Bytes((2 * n * c * size_of::<f32>()) as u64));
        g.bench_function(BenchmarkId::new("fwd_bwd_f32", common::nxc(n, c)), |b| {
            b.iter(|| cpu::forward_backward(black_box(x), t, Some(w), &OPTS).unwrap())
        });
    }
    g.finish();
}

fn bench_gpu(cr: &mut Criterion) {
    let Some(stream) = common::gpu_stream("cross_entropy_gpu") else { return };
    let mut g = cr.benchmark_group("cross_entropy_gpu");
    for (n, c) in SHAPES {
        let inp = inputs(n, c);
        gpu_case::<f32>(&mut g, &stream, &inp, n, c);
        gpu_case::<f16>(&mut g, &stream, &inp, n, c);
        gpu_case::<bf16>(&mut g, &stream, &inp, n, c);
    }
    g.finish();
}

fn gpu_case<T: Dtype + ValidAsZeroBits>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    stream: &Arc<CudaStream>,
    inp: &Inputs,
    n: usize,
    c: usize,
) {
    let host: Vec<T> = inp.logits.iter().map(|&v| T::from_f32(v)).collect();
    let x = stream.clone_htod(&host).unwrap();
    let t = stream.clone_htod(&inp.targets).unwrap();
    let w = stream.clone_htod(&inp.weight).unwrap();
    let mut loss = stream.alloc_zeros::<f32>(OPTS.loss_len(n)).unwrap();
    let mut grad = stream.alloc_zeros::<T>(n * c).unwrap();
    let mut ws = cuda::Workspace::new(stream).unwrap().deferred(true);
    let (xv, tv, wv) = (x.as_view(), t.as_view(), w.as_view());
    g.throughput(Throughput::Bytes((2 * n * c * size_of::<T>()) as u64));
    g.bench_function(BenchmarkId::new(format!("fwd_bwd_{}", T::SUFFIX), common::nxc(n, c)), |b| {
        common::gpu_iter(b, stream, || {
            cuda::forward_backward(stream, &mut ws, &xv, &tv, Some(&wv), c, &OPTS, &mut loss, &mut grad).unwrap()
        })
    });
    // Deferred calls never waited: make sure no target was flagged while timing.
    ws.check_targets(stream, &tv, c).expect("targets are in range");
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
