//! Softmax and log-softmax over rows, forward and backward: the CPU reference (f32) and, when a
//! CUDA device is present, the kernels in f32, f16 and bf16. Throughput is the bytes the op must
//! move: forward reads `x` and writes `y` (`2 N C sizeof(T)`), backward reads `y` and `dy` and
//! writes `dx` (`3 N C sizeof(T)`). The CPU backward allocates its output per call (it has no
//! `_into` form); the CPU forward writes into a preallocated buffer.
//!
//! GPU timings are kernel time from CUDA events over back-to-back launches on device-resident
//! buffers. `cargo bench --bench softmax -- cpu` or `-- gpu` picks one side.
mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use cudarc::driver::{CudaStream, ValidAsZeroBits};
use evenclass::cuda::Dtype;
use evenclass::softmax::{cpu, cuda, Kind};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView2};

/// (rows, columns), as the cross-entropy benchmark.
const SHAPES: [(usize, usize); 5] = [(256, 10), (4096, 10), (65536, 10), (4096, 1000), (512, 32768)];

const KINDS: [(Kind, &str); 2] = [(Kind::Softmax, "softmax"), (Kind::LogSoftmax, "log_softmax")];

fn bench_cpu(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("softmax_cpu");
    g.sample_size(10);
    for (n, c) in SHAPES {
        let xs = common::uniform(1, n * c, -4.0, 4.0);
        let dys = common::uniform(2, n * c, -1.0, 1.0);
        let x = ArrayView2::from_shape((n, c), &xs).unwrap();
        let dy = ArrayView2::from_shape((n, c), &dys).unwrap();
        for (kind, name) in KINDS {
            let mut y = Array2::<f32>::zeros((n, c));
            g.throughput(Throughput::Bytes((2 * n * c * size_of::<f32>()) as u64));
            g.bench_function(BenchmarkId::new(format!("{name}_fwd_f32"), common::nxc(n, c)), |b| {
                b.iter(|| cpu::forward_into(black_box(x), y.view_mut(), kind).unwrap())
            });
            // The backward takes the forward's output.
            cpu::forward_into(x, y.view_mut(), kind).unwrap();
            g.throughput(Throughput::Bytes((3 * n * c * size_of::<f32>()) as u64));
            g.bench_function(BenchmarkId::new(format!("{name}_bwd_f32"), common::nxc(n, c)), |b| {
                b.iter(|| cpu::backward(black_box(y.view()), dy, kind).unwrap())
            });
        }
    }
    g.finish();
}

fn bench_gpu(cr: &mut Criterion) {
    let Some(stream) = common::gpu_stream("softmax_gpu") else { return };
    let mut g = cr.benchmark_group("softmax_gpu");
    for (n, c) in SHAPES {
        let xs = common::uniform(1, n * c, -4.0, 4.0);
        let dys = common::uniform(2, n * c, -1.0, 1.0);
        gpu_case::<f32>(&mut g, &stream, &xs, &dys, n, c);
        gpu_case::<f16>(&mut g, &stream, &xs, &dys, n, c);
        gpu_case::<bf16>(&mut g, &stream, &xs, &dys, n, c);
    }
    g.finish();
}

fn gpu_case<T: Dtype + ValidAsZeroBits>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    stream: &Arc<CudaStream>,
    xs: &[f32],
    dys: &[f32],
    n: usize,
    c: usize,
) {
    let to_t = |v: &[f32]| v.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
    let x = stream.clone_htod(&to_t(xs)).unwrap();
    let dy = stream.clone_htod(&to_t(dys)).unwrap();
    let mut y = stream.alloc_zeros::<T>(n * c).unwrap();
    let mut dx = stream.alloc_zeros::<T>(n * c).unwrap();
    let sfx = T::SUFFIX;
    for (kind, name) in KINDS {
        g.throughput(Throughput::Bytes((2 * n * c * size_of::<T>()) as u64));
        g.bench_function(BenchmarkId::new(format!("{name}_fwd_{sfx}"), common::nxc(n, c)), |b| {
            common::gpu_iter(b, stream, || cuda::forward(stream, &x, &mut y, n, c, kind).unwrap())
        });
        // The backward takes the forward's output (left in `y` by the last launch).
        cuda::forward(stream, &x, &mut y, n, c, kind).unwrap();
        g.throughput(Throughput::Bytes((3 * n * c * size_of::<T>()) as u64));
        g.bench_function(BenchmarkId::new(format!("{name}_bwd_{sfx}"), common::nxc(n, c)), |b| {
            common::gpu_iter(b, stream, || cuda::backward(stream, &y, &dy, &mut dx, n, c, kind).unwrap())
        });
    }
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
