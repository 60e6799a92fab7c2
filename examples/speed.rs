//! Images per second of the CPU trainer, for one model size and thread count, as one JSON line
//! (the Rust side of `scripts/compare-pytorch-cpu.sh`, which sets the same up in PyTorch).
//!
//! `cargo run --release --example speed -- --width 16 --threads 1`
//!
//! Training step, exactly as `train_with` runs it: the random crop/flip plan drawn from a seeded
//! RNG, `build_batch` (u8 images -> cropped, flipped, normalized floats), forward in training mode,
//! class-weighted cross-entropy (loss read back), confusion counting, backward, SGD with Nesterov
//! momentum and weight decay. Evaluation: the library's `evaluate` (build the batch without
//! augmentation, forward in eval mode, confusion counting), `batch` images per forward.
//!
//! Inputs are the built-in synthetic set (the speed does not depend on the pixels). Each repeat
//! times `--steps` steps (or forwards) together; the median repeat is reported, all are listed.
//! The threads are a rayon pool of `--threads` installed around everything; `MATMUL_NUM_THREADS`
//! (the linear layer's sgemm pool) is set to the same number unless already set.
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use evenclass::data::synthetic;
use evenclass::train::{
    evaluate, Backend, BatchPlan, CpuBackend, DeviceData, Model, ModelConfig, SgdStep, WeightedLoss, CIFAR10_NORMALIZE,
};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

const CLASSES: usize = 10;
const PAD: usize = 4;

#[derive(Parser, Debug)]
#[command(about = "Images/s of the CPU training step and evaluation (one JSON line)")]
struct Args {
    /// Channels of the stem (stages use 2x, 4x, 8x).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Convolutions per stage.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Threads of the rayon pool the backend runs in.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Untimed training steps (and evaluation forwards) before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed training steps per repeat.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Timed evaluation forwards per repeat [default: --steps].
    #[arg(long)]
    eval_steps: Option<usize>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

/// Median of the values (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The trainer's augmentation plan (`augment_plan` in src/train/trainer.rs): per image a crop
/// offset in `[0, 2 * PAD]` squared and a coin-flip horizontal flip.
fn plan(rng: &mut Pcg64, idx: &[i32]) -> BatchPlan {
    let mut p = BatchPlan { indices: idx.to_vec(), offsets: Vec::with_capacity(idx.len()), flips: Vec::new() };
    for _ in idx {
        let dy = rng.random_range(0..=2 * PAD as u8);
        let dx = rng.random_range(0..=2 * PAD as u8);
        p.offsets.push((dy, dx));
        p.flips.push(rng.random_bool(0.5));
    }
    p
}

fn run(args: &Args) -> Result<serde_json::Value> {
    let be = CpuBackend::new();
    let config = ModelConfig { width: args.width, depth: args.depth, classes: CLASSES };
    let batch = args.batch;
    let eval_steps = args.eval_steps.unwrap_or(args.steps);
    let images = (4096 / batch).max(1).max(eval_steps) * batch;
    let data = synthetic::generate(0, 0, images);
    let train = DeviceData::new(&be, &data.images, &data.labels)?;
    let eval_set = DeviceData::new(&be, &data.images[..eval_steps * batch * 3072], &data.labels[..eval_steps * batch])?;
    let warm_set = DeviceData::new(&be, &data.images[..batch * 3072], &data.labels[..batch])?;
    let mut model = Model::new(&be, config, batch, 0)?;
    // Class weights as stage 2 of the experiment uses them (values do not change the cost).
    let weights: Vec<f32> = (0..CLASSES).map(|c| 0.5 + 0.15 * c as f32).collect();
    let weight = be.upload(&weights)?;
    let mut dlogits = be.zeros(batch * CLASSES)?;
    let mut counts = evenclass::confusion::ConfusionMatrix::new(CLASSES)?;
    let mut rng = Pcg64::seed_from_u64(1);
    let batches = train.len() / batch;
    // The trainer's default peak learning rate, small enough that the timed steps stay finite.
    let step_cfg = SgdStep { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let mut next = 0usize;
    let mut last_loss = 0.0f32;
    let mut step = |model: &mut Model<CpuBackend>| -> Result<()> {
        let lo = (next % batches) * batch;
        next += 1;
        let idx: Vec<i32> = (lo as i32..(lo + batch) as i32).collect();
        let p = plan(&mut rng, &idx);
        let labels: Vec<i32> = idx.iter().map(|&i| train.labels[i as usize] as i32).collect();
        be.build_batch(&train.images, &p, PAD, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(&be, batch, true)?;
        let dl = be.labels(&labels)?;
        last_loss = be.cross_entropy(
            batch,
            CLASSES,
            model.logits(),
            &dl,
            &WeightedLoss { weight: &weight, label_smoothing: 0.0 },
            &mut dlogits,
        )?;
        be.confusion(batch, model.logits(), &dl, None, &mut counts)?;
        model.backward(&be, batch, &dlogits)?;
        model.sgd_step(&be, &step_cfg)?;
        Ok(())
    };

    for _ in 0..args.warmup {
        step(&mut model)?;
    }
    let mut train_ips = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let t = Instant::now();
        for _ in 0..args.steps {
            step(&mut model)?;
        }
        train_ips.push((args.steps * batch) as f64 / t.elapsed().as_secs_f64());
    }
    for _ in 0..args.warmup {
        evaluate(&be, &mut model, &warm_set, batch, false)?;
    }
    let mut eval_ips = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let t = Instant::now();
        let c = evaluate(&be, &mut model, &eval_set, batch, false)?;
        eval_ips.push(c.total() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({
        "side": "evenclass",
        "backend": be.describe(),
        "width": args.width,
        "depth": args.depth,
        "batch": batch,
        "threads": rayon::current_num_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "eval_steps": eval_steps,
        "repeats": args.repeats,
        "train_images_per_s": median(&train_ips),
        "eval_images_per_s": median(&eval_ips),
        "train_repeats": train_ips,
        "eval_repeats": eval_ips,
        "forward_macs_per_image": model.forward_macs(),
        "parameters": model.parameter_count(),
        "last_loss": last_loss,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.threads >= 1 && args.batch >= 1 && args.steps >= 1 && args.repeats >= 1, "all counts >= 1");
    anyhow::ensure!(args.eval_steps != Some(0), "--eval-steps >= 1");
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // Before any thread exists (and before matrixmultiply reads it, once).
        std::env::set_var("MATMUL_NUM_THREADS", args.threads.to_string());
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().context("building the thread pool")?;
    let out = pool.install(|| run(&args))?;
    println!("{out}");
    Ok(())
}
