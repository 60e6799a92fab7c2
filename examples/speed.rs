//! Images per second of the CPU trainer, for one model size and thread count, as one JSON line
//! (the Rust side of `scripts/compare-pytorch-cpu.sh`, which sets the same up in PyTorch).
//!
//! `cargo run --release --example speed -- --width 16 --threads 1`
//!
//! Training step: the trainer's own `TrainStep` (the random crop/flip plan drawn from a seeded
//! RNG, `build_batch`, forward in training mode, class-weighted cross-entropy with the loss read
//! back, backward, SGD with Nesterov momentum and weight decay), with the per-class tally the
//! trainer keeps for its epoch log (confusion counting and the logits downloaded for per-class
//! sums) unless `--no-tally`; the JSON's `class_tally` says which. Evaluation: the library's
//! `evaluate` (build the batch without augmentation, forward in eval mode, confusion counting),
//! `batch` images per forward.
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
    evaluate, Backend, ClassTally, CpuBackend, DeviceData, Model, ModelConfig, StepOutcome, TrainConfig, TrainStep,
};
use rand::SeedableRng;
use rand_pcg::Pcg64;

const CLASSES: usize = 10;

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
    /// Time the step without the trainer's per-class tally (confusion counts, logits download).
    #[arg(long)]
    no_tally: bool,
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
    // The trainer's defaults (crop padding 4, flips, momentum 0.9 with Nesterov, weight decay
    // 5e-4) at a learning rate small enough that the timed steps stay finite.
    let cfg = TrainConfig { batch_size: batch, lr: 0.05, ..TrainConfig::default() };
    let mut train_step = TrainStep::new(&be, &model, &cfg, &weights)?;
    let mut tally = ClassTally::new(CLASSES)?;
    let mut rng = Pcg64::seed_from_u64(1);
    let batches = train.len() / batch;
    let mut next = 0usize;
    let mut last_loss = 0.0f32;
    let mut step = |model: &mut Model<CpuBackend>| -> Result<()> {
        let lo = (next % batches) * batch;
        next += 1;
        let idx: Vec<i32> = (lo as i32..(lo + batch) as i32).collect();
        let plan = train_step.plan(&mut rng, &idx);
        let tally = if args.no_tally { None } else { Some(&mut tally) };
        match train_step.run(&be, model, &train, &plan, cfg.lr, tally)? {
            StepOutcome::Updated { loss } => last_loss = loss,
            StepOutcome::NonFiniteLoss { loss } => anyhow::bail!("the loss became {loss}"),
        }
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
        "class_tally": !args.no_tally,
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
