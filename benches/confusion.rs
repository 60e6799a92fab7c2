//! Confusion counting: the CPU reference and, when a CUDA device is present, the kernels.
//! `cargo bench --bench confusion`; each GPU iteration includes the wait for the stream that
//! every call does to read its bad-index flags.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evenclass::confusion::{cpu, cuda, ConfusionMatrix};
use ndarray::ArrayView2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

/// (samples, classes)
const SHAPES: [(usize, usize); 3] = [(50_000, 10), (20_000, 100), (4_000, 1000)];

fn inputs(n: usize, c: usize) -> (Vec<f32>, Vec<i32>, Vec<i32>) {
    let mut rng = Pcg64::seed_from_u64(7);
    let logits = (0..n * c).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let targets = (0..n).map(|_| rng.random_range(0..c as i32)).collect();
    let preds = (0..n).map(|_| rng.random_range(0..c as i32)).collect();
    (logits, targets, preds)
}

fn bench_cpu(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("confusion_cpu");
    g.sample_size(10);
    for (n, c) in SHAPES {
        let (logits, targets, preds) = inputs(n, c);
        let x = ArrayView2::from_shape((n, c), &logits).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("logits_f32", format!("{n}x{c}")), |b| {
            let mut m = ConfusionMatrix::new(c).unwrap();
            b.iter(|| cpu::count_logits(black_box(x), &targets, &mut m, None).unwrap())
        });
        g.bench_function(BenchmarkId::new("labels", format!("{n}x{c}")), |b| {
            let mut m = ConfusionMatrix::new(c).unwrap();
            b.iter(|| cpu::count_labels(black_box(&preds), &targets, &mut m, None).unwrap())
        });
    }
    g.finish();
}

fn bench_gpu(cr: &mut Criterion) {
    if !evenclass::cuda::is_available() {
        println!("confusion_gpu: no CUDA device, skipping the GPU benchmarks");
        return;
    }
    let stream = evenclass::cuda::open(0).unwrap().default_stream();
    let mut g = cr.benchmark_group("confusion_gpu");
    g.sample_size(20);
    for (n, c) in SHAPES {
        let (logits, targets, preds) = inputs(n, c);
        let x = stream.clone_htod(&logits).unwrap();
        let t = stream.clone_htod(&targets).unwrap();
        let y = stream.clone_htod(&preds).unwrap();
        let mut counts = stream.alloc_zeros::<u64>(c * c).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("logits_f32", format!("{n}x{c}")), |b| {
            b.iter(|| cuda::count_logits(&stream, &x, &t.as_view(), &mut counts, c, None).unwrap())
        });
        g.bench_function(BenchmarkId::new("labels", format!("{n}x{c}")), |b| {
            b.iter(|| cuda::count_labels(&stream, &y.as_view(), &t.as_view(), &mut counts, c, None).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
