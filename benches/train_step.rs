//! One full training step of `evenclass::train::Model`, as the training loop runs it: build the
//! augmented batch, forward (training mode), class-weighted cross-entropy with label smoothing (the
//! loss value read back), backward, SGD on every parameter. The trainer's per-step confusion
//! counting and progress bar are left out. Throughput is images per second (elements = batch).
//!
//! CPU: `CpuBackend`, width 16, depth 1, batch 256 (the trainer's default model). GPU, when a CUDA
//! device is present: `CudaBackend`, width 64, depth 2, batch 512, timed as wall time per step
//! ending with a stream synchronize (the step itself already waits once, for the loss).
//! `cargo bench --bench train_step -- cpu` or `-- gpu` picks one side.
mod common;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use evenclass::train::{
    Backend, BatchPlan, CpuBackend, CudaBackend, DeviceData, Model, ModelConfig, SgdStep, WeightedLoss,
    CIFAR10_NORMALIZE, INPUT,
};

const CLASSES: usize = 10;
/// Images in the resident dataset the batches are drawn from.
const DATASET: usize = 4096;
/// Distinct batch plans cycled through (drawn before timing).
const PLANS: usize = 8;
const PAD: usize = 4;
const LABEL_SMOOTHING: f32 = 0.1;
const STEP: SgdStep = SgdStep { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true };

/// A batch plan and its labels.
struct Batch {
    plan: BatchPlan,
    labels: Vec<i32>,
}

fn batches(n: usize, dataset_labels: &[u8]) -> Vec<Batch> {
    (0..PLANS as u64)
        .map(|k| {
            let indices = common::labels(100 + k, n, DATASET);
            let crops = common::bytes(200 + k, 2 * n);
            let flips = common::bytes(300 + k, n);
            let plan = BatchPlan {
                offsets: crops
                    .chunks_exact(2)
                    .map(|o| (o[0] % (2 * PAD as u8 + 1), o[1] % (2 * PAD as u8 + 1)))
                    .collect(),
                flips: flips.iter().map(|f| f & 1 == 1).collect(),
                indices,
            };
            let labels = plan.indices.iter().map(|&i| dataset_labels[i as usize] as i32).collect();
            Batch { plan, labels }
        })
        .collect()
}

/// The per-step state: model, data, class weights, logits' gradient and the batches to cycle.
struct Setup<B: Backend> {
    model: Model<B>,
    data: DeviceData<B>,
    weight: B::Buf,
    dlogits: B::Buf,
    batches: Vec<Batch>,
    next: usize,
}

fn setup<B: Backend>(be: &B, config: ModelConfig, batch: usize) -> Setup<B> {
    let images = common::bytes(1, DATASET * INPUT.len());
    let labels: Vec<u8> = common::labels(2, DATASET, CLASSES).iter().map(|&l| l as u8).collect();
    let model = Model::new(be, config, batch, 3).unwrap();
    let data = DeviceData::new(be, &images, &labels).unwrap();
    let weight = be.upload(&common::uniform(4, CLASSES, 0.5, 2.0)).unwrap();
    let dlogits = be.zeros(batch * CLASSES).unwrap();
    Setup { model, data, weight, dlogits, batches: batches(batch, &labels), next: 0 }
}

impl<B: Backend> Setup<B> {
    /// One training step on the next batch; returns the loss.
    fn step(&mut self, be: &B) -> f32 {
        let b = &self.batches[self.next];
        self.next = (self.next + 1) % self.batches.len();
        let n = b.plan.len();
        be.build_batch(&self.data.images, &b.plan, PAD, &CIFAR10_NORMALIZE, self.model.input_mut()).unwrap();
        self.model.forward(be, n, true).unwrap();
        let labels = be.labels(&b.labels).unwrap();
        let loss = be
            .cross_entropy(
                n,
                CLASSES,
                self.model.logits(),
                &labels,
                &WeightedLoss { weight: &self.weight, label_smoothing: LABEL_SMOOTHING },
                &mut self.dlogits,
            )
            .unwrap();
        self.model.backward(be, n, &self.dlogits).unwrap();
        self.model.sgd_step(be, &STEP).unwrap();
        loss
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
    let mut last = 0.0;
    g.bench_function(BenchmarkId::new("step", &id), |bn| {
        bn.iter(|| {
            last = s.step(be);
            sync();
        })
    });
    if !last.is_finite() {
        eprintln!("warning: the loss became {last} while timing {id}; timings may not be representative");
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
