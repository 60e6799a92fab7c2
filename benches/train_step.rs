//! One full training step of `evenclass::train::Model`, the trainer's own `TrainStep`: draw the
//! batch plan (crop offsets and flips from the run's RNG), build the augmented batch, forward
//! (training mode), class-weighted cross-entropy with label smoothing, backward, SGD on every
//! parameter. Two variants: `step` is the step exactly as the trainer runs it
//! (`TrainStep::run_deferred`: the loss and the per-class tally its epoch log needs stay on the
//! backend, read after the timing); `step_no_tally` is `TrainStep::run` without the tally, which
//! reads the loss back every step. The progress bar is not timed. Throughput is images per second
//! (elements = batch).
//!
//! CPU: `CpuBackend`, width 16, depth 1, batch 256 (the trainer's default model). GPU, when a CUDA
//! device is present: `CudaBackend`, width 64, depth 2, batch 512, timed as wall time per step
//! ending with a stream synchronize (`step` itself does not wait for the GPU).
//! `cargo bench --bench train_step -- cpu` or `-- gpu` picks one side.
mod common;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use evenclass::train::{
    Backend, CpuBackend, CudaBackend, DeviceData, EpochStats, Model, ModelConfig, StepOutcome, TrainConfig, TrainStep,
    INPUT,
};
use rand_pcg::Pcg64;

const CLASSES: usize = 10;
/// Images in the resident dataset the batches are drawn from.
const DATASET: usize = 4096;
/// Distinct batches of dataset indices cycled through (drawn before timing).
const BATCHES: usize = 8;

/// The per-step state: model, data, the step, its losses and tally, and the batches to cycle.
struct Setup<B: Backend> {
    model: Model<B>,
    data: DeviceData<B>,
    step: TrainStep<B>,
    stats: EpochStats<B>,
    rng: Pcg64,
    lr: f32,
    batches: Vec<Vec<i32>>,
    next: usize,
}

fn setup<B: Backend>(be: &B, config: ModelConfig, batch: usize) -> Setup<B> {
    let images = common::bytes(1, DATASET * INPUT.len());
    let labels: Vec<u8> = common::labels(2, DATASET, CLASSES).iter().map(|&l| l as u8).collect();
    let model = Model::new(be, config, batch, 3).unwrap();
    let data = DeviceData::new(be, &images, &labels).unwrap();
    // The trainer's defaults with label smoothing and a small learning rate (finite losses).
    let cfg = TrainConfig { batch_size: batch, lr: 0.01, label_smoothing: 0.1, ..TrainConfig::default() };
    let step = TrainStep::new(be, &model, &cfg, &common::uniform(4, CLASSES, 0.5, 2.0)).unwrap();
    let batches = (0..BATCHES as u64).map(|k| common::labels(100 + k, batch, DATASET)).collect();
    let stats = EpochStats::new(be, CLASSES, batch, BATCHES).unwrap();
    Setup { model, data, step, stats, rng: common::rng(5), lr: cfg.lr, batches, next: 0 }
}

impl<B: Backend> Setup<B> {
    /// One training step on the next batch: the trainer's (`deferred`: its loss goes to the
    /// step's slot of `stats`, NaN returned) or `TrainStep::run` without a tally (its loss).
    fn step(&mut self, be: &B, deferred: bool) -> f32 {
        let at = self.next;
        self.next = (self.next + 1) % self.batches.len();
        let plan = self.step.plan(&mut self.rng, &self.batches[at]);
        if deferred {
            let (model, data) = (&mut self.model, &self.data);
            self.step.run_deferred(be, model, data, &plan, self.lr, &mut self.stats, at).unwrap();
            return f32::NAN;
        }
        match self.step.run(be, &mut self.model, &self.data, &plan, self.lr, None).unwrap() {
            StepOutcome::Updated { loss } | StepOutcome::NonFiniteLoss { loss } => loss,
        }
    }

    /// The latest deferred losses' first non-finite one, if any (waits for the device).
    fn deferred_non_finite(&self, be: &B) -> Option<f32> {
        self.stats.read(be, BATCHES).unwrap().0.into_iter().find(|l| !l.is_finite())
    }
}

fn bench_model<B: Backend>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    be: &B,
    config: ModelConfig,
    batch: usize,
    sync: impl Fn(),
) {
    let mut s = setup(be, config, batch);
    let id = format!("w{}_d{}_b{batch}", config.width, config.depth);
    eprintln!("{}: {id}, {} parameters", be.describe(), s.model.parameter_count());
    g.throughput(Throughput::Elements(batch as u64));
    for (name, tally) in [("step", true), ("step_no_tally", false)] {
        let mut last = 0.0;
        g.bench_function(BenchmarkId::new(name, &id), |bn| {
            bn.iter(|| {
                last = s.step(be, tally);
                sync();
            })
        });
        if tally {
            last = s.deferred_non_finite(be).unwrap_or(0.0);
        }
        if !last.is_finite() {
            eprintln!("warning: the loss became {last} while timing {name} {id}; timings may not be representative");
        }
    }
}

fn bench_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step_cpu");
    g.sample_size(10);
    let be = CpuBackend::new();
    bench_model(&mut g, &be, ModelConfig { width: 16, depth: 1, classes: CLASSES }, 256, || {});
    g.finish();
}

fn bench_gpu(c: &mut Criterion) {
    if common::gpu_stream("train_step_gpu").is_none() {
        return;
    }
    let be = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            println!("train_step_gpu: cannot open the CUDA backend ({e}), skipping the GPU benchmark");
            return;
        }
    };
    let mut g = c.benchmark_group("train_step_gpu");
    g.sample_size(20);
    let stream = be.stream().clone();
    bench_model(&mut g, &be, ModelConfig { width: 64, depth: 2, classes: CLASSES }, 512, || {
        stream.synchronize().unwrap()
    });
    g.finish();
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
