//! Convolution throughput on CIFAR-10 CNN layer shapes: the CPU paths (im2col + GEMM on all cores,
//! and side by side Winograd and the direct 3x3 kernels where they apply) and, when a CUDA device is present, the implicit-GEMM kernels. Throughput is reported in
//! elements/s where one element is one floating-point operation, so `Gelem/s` reads as GFLOP/s.
//!
//! `cargo bench --bench conv -- cpu` or `-- gpu` picks one side. `-- cpu_peak` measures the
//! ceiling the CPU numbers are read against: this CPU's fused multiply-add throughput (nothing
//! but independent FMAs in registers), 256- and 512-bit, on one thread and on every rayon thread.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evenclass::conv::{cpu, cuda as conv_cuda, Conv2dOpts, Conv2dShape, ConvAlgo};

mod common;

/// (name, input channels, output channels, input size, filter size, stride, pad)
const LAYERS: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("16to16_32x32", 16, 16, 32, 3, 1, 1),
    ("32to32_16x16", 32, 32, 16, 3, 1, 1),
    ("3to64_32x32", 3, 64, 32, 3, 1, 1),
    ("64to64_32x32", 64, 64, 32, 3, 1, 1),
    ("128to128_16x16", 128, 128, 16, 3, 1, 1),
    ("128to256_16x16_s2", 128, 256, 16, 3, 2, 1),
    ("256to256_8x8", 256, 256, 8, 3, 1, 1),
    ("512to512_4x4", 512, 512, 4, 3, 1, 1),
    ("1x1_64to128_32x32_s2", 64, 128, 32, 1, 2, 0),
];

fn shape(batch: usize, layer: (&str, usize, usize, usize, usize, usize, usize)) -> Conv2dShape {
    let (_, c, k, hw, f, stride, pad) = layer;
    Conv2dShape::new([batch, c, hw, hw], [k, c, f, f], Conv2dOpts::square(stride, pad)).expect("valid layer")
}

/// Deterministic values in [-1, 1) without pulling an rng into the bench.
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

const CPU_BATCH: usize = 16;

/// The convolutions of the trainer's CPU network (depth 1; `src/train/model.rs`) at its batch, so
/// `cargo bench --bench conv -- cpu_net` times what a training step runs: width 16 (the default),
/// or `EVENCLASS_BENCH_WIDTH` (e.g. 64: the layers 3->64 .. 256->512 of the capacity runs).
fn net_layers() -> Vec<(String, usize, usize, usize, usize, usize, usize)> {
    let width = match std::env::var("EVENCLASS_BENCH_WIDTH") {
        Err(_) => 16,
        Ok(v) => v.trim().parse().ok().filter(|&w| w > 0).unwrap_or_else(|| {
            eprintln!("EVENCLASS_BENCH_WIDTH={v:?} is not a positive width; using 16");
            16
        }),
    };
    let stage = |c: usize, hw: usize| (format!("net_{c}to{}_{hw}x{hw}", 2 * c), c, 2 * c, hw, 3, 1, 1);
    vec![
        (format!("net_stem_3to{width}_32x32"), 3, width, 32, 3, 1, 1),
        stage(width, 32),
        stage(2 * width, 16),
        stage(4 * width, 8),
    ]
}
const NET_BATCH: usize = 256;
const GPU_BATCH: usize = 128;

fn bench_cpu(c: &mut Criterion) {
    bench_cpu_layers(c, "cpu", LAYERS, CPU_BATCH);
    let net = net_layers();
    let net: Vec<_> = net.iter().map(|(n, c, k, hw, f, st, p)| (n.as_str(), *c, *k, *hw, *f, *st, *p)).collect();
    bench_cpu_layers(c, "cpu_net", &net, NET_BATCH);
}

fn bench_cpu_layers(
    c: &mut Criterion,
    group: &str,
    layers: &[(&str, usize, usize, usize, usize, usize, usize)],
    batch: usize,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    eprintln!("{group}: batch {batch}, {} rayon threads", rayon::current_num_threads());
    for &layer in layers {
        let sh = shape(batch, layer);
        let (x, w, b, dy) =
            (values(sh.input_len(), 1), values(sh.filter_len(), 2), values(sh.k(), 3), values(sh.output_len(), 4));
        let mut y = vec![0.0; sh.output_len()];
        let mut dx = vec![0.0; sh.input_len()];
        let mut dw = vec![0.0; sh.filter_len()];
        g.throughput(Throughput::Elements(sh.flops() as u64));
        g.bench_function(BenchmarkId::new("forward", layer.0), |bn| {
            bn.iter(|| cpu::forward_into(&sh, &x, &w, Some(&b), &mut y).unwrap())
        });
        g.bench_function(BenchmarkId::new("backward_data", layer.0), |bn| {
            bn.iter(|| cpu::backward_data_into(&sh, &dy, &w, &mut dx).unwrap())
        });
        if layer.4 == 3 && layer.5 == 1 {
            // Winograd F(2x2, 3x3); throughput still counted as direct-convolution FLOPs.
            g.bench_function(BenchmarkId::new("forward_winograd", layer.0), |bn| {
                bn.iter(|| cpu::forward_into_with(cpu::CpuAlgo::Winograd, &sh, &x, &w, Some(&b), &mut y).unwrap())
            });
            g.bench_function(BenchmarkId::new("backward_data_winograd", layer.0), |bn| {
                bn.iter(|| cpu::backward_data_into_with(cpu::CpuAlgo::Winograd, &sh, &dy, &w, &mut dx).unwrap())
            });
            g.bench_function(BenchmarkId::new("backward_weight_winograd", layer.0), |bn| {
                bn.iter(|| cpu::backward_weight_into_with(cpu::CpuAlgo::Winograd, &sh, &x, &dy, &mut dw, 0.0).unwrap())
            });
        }
        g.bench_function(BenchmarkId::new("backward_weight", layer.0), |bn| {
            bn.iter(|| cpu::backward_weight_into(&sh, &x, &dy, &mut dw, 0.0).unwrap())
        });
        // The direct 3x3 path (the trainer's), where it runs on this CPU.
        let direct = cpu::CpuAlgo::Direct;
        if direct.resolve(&sh, cpu::Pass::Forward) == direct {
            g.bench_function(BenchmarkId::new("forward_direct", layer.0), |bn| {
                bn.iter(|| cpu::forward_into_with(direct, &sh, &x, &w, Some(&b), &mut y).unwrap())
            });
            g.bench_function(BenchmarkId::new("backward_weight_direct", layer.0), |bn| {
                bn.iter(|| cpu::backward_weight_into_with(direct, &sh, &x, &dy, &mut dw, 0.0).unwrap())
            });
        }
        if direct.resolve(&sh, cpu::Pass::BackwardData) == direct {
            g.bench_function(BenchmarkId::new("backward_data_direct", layer.0), |bn| {
                bn.iter(|| cpu::backward_data_into_with(direct, &sh, &dy, &w, &mut dx).unwrap())
            });
        }
    }
    g.finish();
}

fn bench_cpu_peak(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        const ITERS: usize = 1 << 20;
        let mut g = c.benchmark_group("cpu_peak");
        g.sample_size(10);
        let all = rayon::current_num_threads();
        type Kernel = fn(usize, f32) -> f32;
        let mut kernels: Vec<(&str, u64, Kernel)> = Vec::new();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            kernels.push(("fma256", 2 * 8 * common::peak::CHAINS_256 as u64, |n, s| unsafe {
                common::peak::fma256(n, s)
            }));
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            kernels.push(("fma512", 2 * 16 * common::peak::CHAINS_512 as u64, |n, s| unsafe {
                common::peak::fma512(n, s)
            }));
        }
        for (name, flop_per_iter, f) in kernels {
            // One id per thread count (criterion refuses a repeated id).
            let counts = if all > 1 { vec![1, all] } else { vec![1] };
            for threads in counts {
                g.throughput(Throughput::Elements(flop_per_iter * ITERS as u64 * threads as u64));
                g.bench_function(BenchmarkId::new(name, format!("{threads}_threads")), |bn| {
                    bn.iter(|| {
                        (0..threads).into_par_iter().map(|t| f(std::hint::black_box(ITERS), t as f32)).sum::<f32>()
                    })
                });
            }
        }
        g.finish();
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

fn bench_gpu(c: &mut Criterion) {
    if !evenclass::cuda::is_available() {
        eprintln!("gpu: no CUDA device, skipping the GPU benchmarks");
        return;
    }
    let stream = match evenclass::cuda::open(0) {
        Ok(ctx) => ctx.default_stream(),
        Err(e) => {
            eprintln!("gpu: cannot open device 0 ({e}), skipping the GPU benchmarks");
            return;
        }
    };
    let mut g = c.benchmark_group("gpu");
    eprintln!("gpu: batch {GPU_BATCH}");
    for &layer in LAYERS {
        let sh = shape(GPU_BATCH, layer);
        let up = |v: Vec<f32>| stream.clone_htod(&v).expect("upload");
        let (x, w, b, dy) = (
            up(values(sh.input_len(), 1)),
            up(values(sh.filter_len(), 2)),
            up(values(sh.k(), 3)),
            up(values(sh.output_len(), 4)),
        );
        let mut y = stream.alloc_zeros::<f32>(sh.output_len()).expect("alloc");
        let mut dx = stream.alloc_zeros::<f32>(sh.input_len()).expect("alloc");
        let mut dw = stream.alloc_zeros::<f32>(sh.filter_len()).expect("alloc");
        g.throughput(Throughput::Elements(sh.flops() as u64));
        g.bench_function(BenchmarkId::new("forward", layer.0), |bn| {
            bn.iter(|| {
                conv_cuda::forward(&stream, &sh, &x, &w, Some(&b), &mut y).unwrap();
                stream.synchronize().unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("backward_data", layer.0), |bn| {
            bn.iter(|| {
                conv_cuda::backward_data(&stream, &sh, &dy, &w, &mut dx).unwrap();
                stream.synchronize().unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("backward_weight", layer.0), |bn| {
            bn.iter(|| {
                conv_cuda::backward_weight(&stream, &sh, &x, &dy, &mut dw, 0.0).unwrap();
                stream.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

/// The seven convolutions of the default GPU network (width 64, depth 2; `src/train/model.rs`) at
/// its batch, every pass, per algorithm (FP32 on the CUDA cores, TF32 and BF16 on the tensor
/// cores): `net_gpu/{forward,backward_data,backward_weight}_{fp32,tf32,bf16}/LAYER`.
/// `scripts/compare_pytorch_gpu.py` times the same shapes in PyTorch and reads these ids.
const GPU_NET_LAYERS: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("net_stem_3to64_32x32", 3, 64, 32, 3, 1, 1),
    ("net_64to128_32x32", 64, 128, 32, 3, 1, 1),
    ("net_128to128_16x16", 128, 128, 16, 3, 1, 1),
    ("net_128to256_16x16", 128, 256, 16, 3, 1, 1),
    ("net_256to256_8x8", 256, 256, 8, 3, 1, 1),
    ("net_256to512_8x8", 256, 512, 8, 3, 1, 1),
    ("net_512to512_4x4", 512, 512, 4, 3, 1, 1),
];
const GPU_NET_BATCH: usize = 512;

fn bench_gpu_net(c: &mut Criterion) {
    let Some(stream) = common::gpu_stream("net_gpu") else { return };
    let mut g = c.benchmark_group("net_gpu");
    g.sample_size(10);
    for &layer in GPU_NET_LAYERS {
        let sh = shape(GPU_NET_BATCH, layer);
        let up = |v: Vec<f32>| stream.clone_htod(&v).expect("upload");
        let (x, w, dy) =
            (up(values(sh.input_len(), 1)), up(values(sh.filter_len(), 2)), up(values(sh.output_len(), 4)));
        let mut y = stream.alloc_zeros::<f32>(sh.output_len()).expect("alloc");
        let mut dx = stream.alloc_zeros::<f32>(sh.input_len()).expect("alloc");
        let mut dw = stream.alloc_zeros::<f32>(sh.filter_len()).expect("alloc");
        let none: Option<&cudarc::driver::CudaSlice<f32>> = None;
        g.throughput(Throughput::Elements(sh.flops() as u64));
        for (algo, name) in [(ConvAlgo::Fp32, "fp32"), (ConvAlgo::Tf32, "tf32"), (ConvAlgo::Bf16, "bf16")] {
            g.bench_function(BenchmarkId::new(format!("forward_{name}"), layer.0), |bn| {
                common::gpu_iter(bn, &stream, || {
                    conv_cuda::forward_algo(&stream, algo, &sh, &x, &w, none, &mut y).unwrap()
                })
            });
            if layer.1 > 3 {
                // The stem's input gradient is never needed (the images are not trained).
                g.bench_function(BenchmarkId::new(format!("backward_data_{name}"), layer.0), |bn| {
                    common::gpu_iter(bn, &stream, || {
                        conv_cuda::backward_data_algo(&stream, algo, &sh, &dy, &w, &mut dx).unwrap()
                    })
                });
            }
            g.bench_function(BenchmarkId::new(format!("backward_weight_{name}"), layer.0), |bn| {
                common::gpu_iter(bn, &stream, || {
                    conv_cuda::backward_weight_algo(&stream, algo, &sh, &x, &dy, &mut dw, 0.0).unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_cpu, bench_cpu_peak, bench_gpu, bench_gpu_net);
criterion_main!(benches);
