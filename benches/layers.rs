//! The trainer's other layers at its shapes: batch-norm+ReLU (training forward and backward), 2x2
//! max-pool (forward and backward), the linear head (forward and backward), one SGD step over all
//! of a model's parameters, and building an augmented training batch.
//!
//! Shapes are those of `evenclass::train::Model` (stem at 32x32, three stages that double the
//! channels and pool): `b256_w16` is the trainer's default (batch 256, width 16, depth 1), on the
//! CPU references and the kernels; `b512_w64` (batch 512, width 64, depth 2 for the SGD parameter
//! count) is a GPU-sized one, on the kernels only.
//!
//! Throughput: bytes each op must move at least (reads + writes, each tensor once), except the
//! linear layer, in elements = floating-point operations (`Gelem/s` reads as GFLOP/s). GPU timings
//! are kernel time from CUDA events over back-to-back launches on device-resident buffers, except
//! the augmentation, whose wrapper waits for the stream to check the sample indices (so its time
//! is wall time per call, flag read included). `cargo bench --bench layers -- cpu` or `-- gpu`
//! picks one side; `-- bn_relu` one op.
mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use cudarc::driver::CudaStream;
use evenclass::augment::{self, AugmentSpec};
use evenclass::batchnorm::{self, BnConfig, BnShape};
use evenclass::linear::{self, LinearShape};
use evenclass::optim::{self, SgdConfig};
use evenclass::pool::{self, PoolShape};

const F32: usize = size_of::<f32>();

/// A model and batch size whose layer shapes are benchmarked.
#[derive(Clone, Copy)]
struct Net {
    name: &'static str,
    batch: usize,
    width: usize,
    depth: usize,
}

const TRAINER: Net = Net { name: "b256_w16", batch: 256, width: 16, depth: 1 };
const LARGE: Net = Net { name: "b512_w64", batch: 512, width: 64, depth: 2 };
const CLASSES: usize = 10;
/// Images in the dataset the augmentation gathers from (random indices into it).
const DATASET: usize = 10_000;

impl Net {
    /// Batch-norm inputs `(channels, side)`: the stem, then each stage after its pool.
    fn bn_layers(&self) -> [(usize, usize); 4] {
        let w = self.width;
        [(w, 32), (2 * w, 16), (4 * w, 8), (8 * w, 4)]
    }

    /// Max-pool inputs `(channels, side)`: each stage's first convolution output.
    fn pool_layers(&self) -> [(usize, usize); 3] {
        let w = self.width;
        [(2 * w, 32), (4 * w, 16), (8 * w, 8)]
    }

    fn linear(&self) -> LinearShape {
        LinearShape { batch: self.batch, in_features: 8 * self.width, out_features: CLASSES }
    }

    /// Trainable scalars of the model (as `Model::parameter_count`).
    fn parameter_count(&self) -> usize {
        let w = self.width;
        let mut total = 3 * 9 * w + 2 * w;
        for c in [w, 2 * w, 4 * w] {
            total += c * 2 * c * 9 + 2 * (2 * c);
            total += (self.depth - 1) * (2 * c * 2 * c * 9 + 2 * (2 * c));
        }
        total + 8 * w * CLASSES + CLASSES
    }

    fn id(&self, what: impl std::fmt::Display) -> String {
        format!("{}_{what}", self.name)
    }
}

const BN: BnConfig = BnConfig { eps: 1e-5, momentum: 0.1 };
const SGD: SgdConfig = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
const LR: f32 = 0.01;

fn bn_shape(net: &Net, c: usize, side: usize) -> BnShape {
    BnShape { n: net.batch, c, hw: side * side }
}

fn pool_shape(net: &Net, c: usize, side: usize) -> PoolShape {
    PoolShape { n: net.batch, c, h: side, w: side }
}

fn linear_flops(s: LinearShape) -> (u64, u64) {
    let mac = (s.batch * s.in_features * s.out_features) as u64;
    // forward: x W^T (+ b); backward: dy W and dy^T x (+ the bias column sums).
    (2 * mac, 4 * mac + (s.batch * s.out_features) as u64)
}

/// The planned augmentation of one batch: random images, crops and flips.
struct Plan {
    indices: Vec<i32>,
    crops: Vec<u8>,
    flips: Vec<u8>,
}

fn plan(n: usize, spec: &AugmentSpec) -> Plan {
    let crops = common::bytes(11, 2 * n).into_iter().map(|v| v % (2 * spec.pad as u8 + 1)).collect();
    Plan { indices: common::labels(12, n, DATASET), crops, flips: common::bytes(13, n).iter().map(|v| v & 1).collect() }
}

fn bench_cpu(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("layers_cpu");
    g.sample_size(10);
    let net = TRAINER;
    for (c, side) in net.bn_layers() {
        let sh = bn_shape(&net, c, side);
        let x = common::uniform(1, sh.len(), -2.0, 2.0);
        let dy = common::uniform(2, sh.len(), -1.0, 1.0);
        let gamma = common::uniform(3, c, 0.5, 1.5);
        let beta = common::uniform(4, c, -0.5, 0.5);
        let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
        let (mut y, mut mean, mut invstd) = (vec![0.0; sh.len()], vec![0.0; c], vec![0.0; c]);
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; sh.len()], vec![0.0; c], vec![0.0; c]);
        let id = net.id(format!("{c}x{side}x{side}"));
        g.throughput(Throughput::Bytes((2 * sh.len() * F32) as u64));
        g.bench_function(BenchmarkId::new("bn_relu_fwd", &id), |b| {
            b.iter(|| {
                batchnorm::cpu::relu_forward_train_into(
                    black_box(&x),
                    &gamma,
                    &beta,
                    &mut rm,
                    &mut rv,
                    &mut y,
                    &mut mean,
                    &mut invstd,
                    sh,
                    BN,
                )
                .unwrap()
            })
        });
        g.throughput(Throughput::Bytes((4 * sh.len() * F32) as u64));
        g.bench_function(BenchmarkId::new("bn_relu_bwd", &id), |b| {
            b.iter(|| {
                batchnorm::cpu::relu_backward_into(
                    black_box(&x),
                    &y,
                    &dy,
                    &gamma,
                    &mean,
                    &invstd,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    sh,
                )
                .unwrap()
            })
        });
    }
    for (c, side) in net.pool_layers() {
        let sh = pool_shape(&net, c, side);
        let x = common::uniform(5, sh.len(), -2.0, 2.0);
        let dy = common::uniform(6, sh.pooled_len(), -1.0, 1.0);
        let (mut y, mut argmax, mut dx) = (vec![0.0; sh.pooled_len()], vec![0u8; sh.pooled_len()], vec![0.0; sh.len()]);
        let id = net.id(format!("{c}x{side}x{side}"));
        g.throughput(Throughput::Bytes((sh.len() * F32 + sh.pooled_len() * (F32 + 1)) as u64));
        g.bench_function(BenchmarkId::new("max_pool_fwd", &id), |b| {
            b.iter(|| pool::cpu::max_pool_forward_into(black_box(&x), &mut y, &mut argmax, sh).unwrap())
        });
        g.bench_function(BenchmarkId::new("max_pool_bwd", &id), |b| {
            b.iter(|| pool::cpu::max_pool_backward_into(black_box(&dy), &argmax, &mut dx, sh).unwrap())
        });
    }
    {
        let s = net.linear();
        let x = common::uniform(7, s.batch * s.in_features, -1.0, 1.0);
        let w = common::uniform(8, s.out_features * s.in_features, -0.1, 0.1);
        let bias = common::uniform(9, s.out_features, -0.1, 0.1);
        let dy = common::uniform(10, s.batch * s.out_features, -1.0, 1.0);
        let mut y = vec![0.0; s.batch * s.out_features];
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.out_features]);
        let id = net.id(format!("{}to{}", s.in_features, s.out_features));
        let (fwd, bwd) = linear_flops(s);
        g.throughput(Throughput::Elements(fwd));
        g.bench_function(BenchmarkId::new("linear_fwd", &id), |b| {
            b.iter(|| linear::cpu::forward_into(black_box(&x), &w, &bias, &mut y, s).unwrap())
        });
        g.throughput(Throughput::Elements(bwd));
        g.bench_function(BenchmarkId::new("linear_bwd", &id), |b| {
            b.iter(|| linear::cpu::backward_into(black_box(&x), &w, &dy, &mut dx, &mut dw, &mut db, s).unwrap())
        });
    }
    {
        let len = net.parameter_count();
        let mut p = common::uniform(14, len, -0.1, 0.1);
        let grads = common::uniform(15, len, -1.0, 1.0);
        let mut buf = vec![0.0; len];
        g.throughput(Throughput::Bytes((5 * len * F32) as u64));
        g.bench_function(BenchmarkId::new("sgd_step", net.id(format!("{len}params"))), |b| {
            b.iter(|| optim::cpu::sgd_step(&mut p, black_box(&grads), &mut buf, &SGD, LR).unwrap())
        });
    }
    {
        let spec = AugmentSpec::cifar10();
        let data = common::bytes(16, DATASET * spec.image_len());
        let pl = plan(net.batch, &spec);
        let mut out = vec![0.0; net.batch * spec.image_len()];
        g.throughput(Throughput::Bytes((net.batch * spec.image_len() * (1 + F32)) as u64));
        g.bench_function(BenchmarkId::new("augment_train", net.id("3x32x32")), |b| {
            b.iter(|| {
                augment::cpu::train_batch_into(black_box(&data), &pl.indices, &pl.crops, &pl.flips, &mut out, &spec)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn bench_gpu(cr: &mut Criterion) {
    let Some(stream) = common::gpu_stream("layers_gpu") else { return };
    let mut g = cr.benchmark_group("layers_gpu");
    for net in [TRAINER, LARGE] {
        gpu_net(&mut g, &stream, &net);
    }
    g.finish();
}

fn gpu_net(g: &mut BenchmarkGroup<'_, WallTime>, stream: &Arc<CudaStream>, net: &Net) {
    let up = |v: &[f32]| stream.clone_htod(v).unwrap();
    let zeros = |n: usize| stream.alloc_zeros::<f32>(n).unwrap();
    for (c, side) in net.bn_layers() {
        let sh = bn_shape(net, c, side);
        let x = up(&common::uniform(1, sh.len(), -2.0, 2.0));
        let dy = up(&common::uniform(2, sh.len(), -1.0, 1.0));
        let gamma = up(&common::uniform(3, c, 0.5, 1.5));
        let beta = up(&common::uniform(4, c, -0.5, 0.5));
        let (mut rm, mut rv) = (zeros(c), up(&vec![1.0; c]));
        let (mut y, mut mean, mut invstd) = (zeros(sh.len()), zeros(c), zeros(c));
        let (mut dx, mut dgamma, mut dbeta) = (zeros(sh.len()), zeros(c), zeros(c));
        let id = net.id(format!("{c}x{side}x{side}"));
        g.throughput(Throughput::Bytes((2 * sh.len() * F32) as u64));
        g.bench_function(BenchmarkId::new("bn_relu_fwd", &id), |b| {
            common::gpu_iter(b, stream, || {
                batchnorm::cuda::relu_forward_train(
                    stream,
                    &x,
                    &gamma,
                    &beta,
                    &mut rm,
                    &mut rv,
                    &mut y,
                    &mut mean,
                    &mut invstd,
                    sh,
                    BN,
                )
                .unwrap()
            })
        });
        g.throughput(Throughput::Bytes((4 * sh.len() * F32) as u64));
        g.bench_function(BenchmarkId::new("bn_relu_bwd", &id), |b| {
            common::gpu_iter(b, stream, || {
                batchnorm::cuda::relu_backward(
                    stream,
                    &x,
                    &y,
                    &dy,
                    &gamma,
                    &mean,
                    &invstd,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    sh,
                )
                .unwrap()
            })
        });
    }
    for (c, side) in net.pool_layers() {
        let sh = pool_shape(net, c, side);
        let x = up(&common::uniform(5, sh.len(), -2.0, 2.0));
        let dy = up(&common::uniform(6, sh.pooled_len(), -1.0, 1.0));
        let (mut y, mut dx) = (zeros(sh.pooled_len()), zeros(sh.len()));
        let mut argmax = stream.alloc_zeros::<u8>(sh.pooled_len()).unwrap();
        let id = net.id(format!("{c}x{side}x{side}"));
        g.throughput(Throughput::Bytes((sh.len() * F32 + sh.pooled_len() * (F32 + 1)) as u64));
        g.bench_function(BenchmarkId::new("max_pool_fwd", &id), |b| {
            common::gpu_iter(b, stream, || pool::cuda::max_pool_forward(stream, &x, &mut y, &mut argmax, sh).unwrap())
        });
        g.bench_function(BenchmarkId::new("max_pool_bwd", &id), |b| {
            common::gpu_iter(b, stream, || pool::cuda::max_pool_backward(stream, &dy, &argmax, &mut dx, sh).unwrap())
        });
    }
    {
        let s = net.linear();
        let x = up(&common::uniform(7, s.batch * s.in_features, -1.0, 1.0));
        let w = up(&common::uniform(8, s.out_features * s.in_features, -0.1, 0.1));
        let bias = up(&common::uniform(9, s.out_features, -0.1, 0.1));
        let dy = up(&common::uniform(10, s.batch * s.out_features, -1.0, 1.0));
        let mut y = zeros(s.batch * s.out_features);
        let (mut dx, mut dw, mut db) = (zeros(x.len()), zeros(w.len()), zeros(s.out_features));
        let id = net.id(format!("{}to{}", s.in_features, s.out_features));
        let (fwd, bwd) = linear_flops(s);
        g.throughput(Throughput::Elements(fwd));
        g.bench_function(BenchmarkId::new("linear_fwd", &id), |b| {
            common::gpu_iter(b, stream, || linear::cuda::forward(stream, &x, &w, &bias, &mut y, s).unwrap())
        });
        g.throughput(Throughput::Elements(bwd));
        g.bench_function(BenchmarkId::new("linear_bwd", &id), |b| {
            common::gpu_iter(b, stream, || {
                linear::cuda::backward(stream, &x, &w, &dy, &mut dx, &mut dw, &mut db, s).unwrap()
            })
        });
    }
    {
        let len = net.parameter_count();
        let mut p = up(&common::uniform(14, len, -0.1, 0.1));
        let grads = up(&common::uniform(15, len, -1.0, 1.0));
        let mut buf = zeros(len);
        g.throughput(Throughput::Bytes((5 * len * F32) as u64));
        g.bench_function(BenchmarkId::new("sgd_step", net.id(format!("{len}params"))), |b| {
            common::gpu_iter(b, stream, || optim::cuda::sgd_step(stream, &mut p, &grads, &mut buf, &SGD, LR).unwrap())
        });
    }
    {
        let spec = AugmentSpec::cifar10();
        let data = stream.clone_htod(&common::bytes(16, DATASET * spec.image_len())).unwrap();
        let pl = plan(net.batch, &spec);
        let (indices, crops, flips) = (
            stream.clone_htod(&pl.indices).unwrap(),
            stream.clone_htod(&pl.crops).unwrap(),
            stream.clone_htod(&pl.flips).unwrap(),
        );
        let mut out = zeros(net.batch * spec.image_len());
        g.throughput(Throughput::Bytes((net.batch * spec.image_len() * (1 + F32)) as u64));
        // The wrapper waits for the stream (to report a bad index), so this is wall time per call.
        g.bench_function(BenchmarkId::new("augment_train", net.id("3x32x32")), |b| {
            b.iter(|| augment::cuda::train_batch(stream, &data, &indices, &crops, &flips, &mut out, &spec).unwrap())
        });
    }
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
