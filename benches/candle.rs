//! The cross-entropy through candle's autograd on candle's CPU device, forward + `backward()`:
//! this crate's fused op (`evenclass::candle::cross_entropy`) against candle-nn's own
//! `candle_nn::loss::cross_entropy` (log-softmax, gather, sum, affine: separate ops). Each
//! iteration builds the graph from a `Var` of logits, takes the loss and runs `backward()`, as a
//! training step does. candle-nn has no class weights, ignore_index or label smoothing, so the
//! head-to-head is the plain mean; `evenclass_weighted` adds weights, ignore_index -100 and label
//! smoothing 0.1 to show what they cost. Throughput is the bytes of f32 logits read plus
//! gradient written (`2 N C 4`).
//!
//! `cargo bench --features candle --bench candle -- --warm-up-time 1 --measurement-time 2`
mod common;

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evenclass::candle as ec;
use evenclass::cross_entropy::{Options, Reduction};

/// (samples, classes)
const SHAPES: [(usize, usize); 2] = [(4096, 10), (1024, 1000)];

fn bench(cr: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = cr.benchmark_group("candle_cross_entropy_cpu");
    g.sample_size(10);
    for (n, c) in SHAPES {
        let x = Var::from_vec(common::uniform(1, n * c, -4.0, 4.0), (n, c), &dev).unwrap();
        let labels: Vec<u32> = common::labels(2, n, c).into_iter().map(|t| t as u32).collect();
        let targets = Tensor::from_vec(labels, n, &dev).unwrap();
        let weight = Tensor::from_vec(common::uniform(3, c, 0.5, 2.0), c, &dev).unwrap();
        let id = common::nxc(n, c);
        g.throughput(Throughput::Bytes((2 * n * c * size_of::<f32>()) as u64));

        g.bench_function(BenchmarkId::new("candle_nn", &id), |b| {
            b.iter(|| {
                let loss = candle_nn::loss::cross_entropy(black_box(x.as_tensor()), &targets).unwrap();
                let grads = loss.backward().unwrap();
                black_box(grads.get(x.as_tensor()).unwrap().dims()[0])
            })
        });
        g.bench_function(BenchmarkId::new("evenclass", &id), |b| {
            b.iter(|| {
                let loss = ec::cross_entropy(black_box(x.as_tensor()), &targets, None, &Options::default()).unwrap();
                let grads = loss.backward().unwrap();
                black_box(grads.get(x.as_tensor()).unwrap().dims()[0])
            })
        });
        let full = Options { ignore_index: Some(-100), label_smoothing: 0.1, reduction: Reduction::Mean };
        g.bench_function(BenchmarkId::new("evenclass_weighted", &id), |b| {
            b.iter(|| {
                let loss = ec::cross_entropy(black_box(x.as_tensor()), &targets, Some(&weight), &full).unwrap();
                let grads = loss.backward().unwrap();
                black_box(grads.get(x.as_tensor()).unwrap().dims()[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
