//! Images per second of the trainer, for one model size and thread count (CPU) or convolution
//! precision (GPU), as one JSON line: the Rust side of `scripts/compare-pytorch-cpu.sh` and of the
//! prepared GPU run's training-step part (`scripts/run-gpu.sh`), which set the same up in PyTorch.
//!
//! `cargo run --release --example speed -- --width 16 --threads 1`
//! `cargo run --release --example speed -- --device cuda --width 64 --depth 2 --batch 512 --conv-precision bf16`
//!
//! Training step: the trainer's own step (`TrainStep::run_deferred`: the random crop/flip plan
//! drawn from a seeded RNG, `build_batch`, forward in training mode, class-weighted cross-entropy,
//! the per-class tally of the epoch log, backward, SGD with Nesterov momentum and weight decay),
//! the losses and tally read once at the end of each repeat, as the trainer reads them once an
//! epoch (on a GPU that read is the repeat's only wait for the device, so the time covers the
//! work, not only its queueing). `--no-tally` times `TrainStep::run` without the tally instead
//! (the loss read back every step); the JSON's `class_tally` says which. Evaluation: the
//! library's `evaluate` (build the batch without augmentation, forward in eval mode, confusion
//! counting), `batch` images per forward.
//!
//! Inputs are the built-in synthetic set (the speed does not depend on the pixels). Each repeat
//! times `--steps` steps (or forwards) together; the median repeat is reported, all are listed.
//! The threads are a rayon pool of `--threads` installed around everything; `MATMUL_NUM_THREADS`
//! (the linear layer's sgemm pool) is set to the same number unless already set.
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use evenclass::conv::ConvAlgo;
use evenclass::data::synthetic;
use evenclass::train::{
    evaluate, Backend, ClassTally, CpuBackend, CudaBackend, DeviceData, EpochStats, Model, ModelConfig, StepOutcome,
    TrainConfig, TrainStep,
};
use rand::SeedableRng;
use rand_pcg::Pcg64;

const CLASSES: usize = 10;

#[derive(Parser, Debug)]
#[command(about = "Images/s of the training step and evaluation (one JSON line)")]
struct Args {
    /// cpu, or cuda (device 0).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The GPU's convolution arithmetic: fp32, tf32, bf16 or auto (the CPU has fp32 only).
    #[arg(long, default_value = "fp32")]
    conv_precision: String,
    /// Activations between layers on the GPU: f32, or bf16 (mixed precision; the CPU has f32 only).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
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
    /// Time `TrainStep::run` without the epoch log's per-class tally, the loss read every step.
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

fn run<B: Backend>(be: B, args: &Args) -> Result<serde_json::Value> {
    let be = &be;
    let config = ModelConfig { width: args.width, depth: args.depth, classes: CLASSES };
    let batch = args.batch;
    let eval_steps = args.eval_steps.unwrap_or(args.steps);
    let images = (4096 / batch).max(1).max(eval_steps) * batch;
    let data = synthetic::generate(0, 0, images);
    let train = DeviceData::new(be, &data.images, &data.labels)?;
    let eval_set = DeviceData::new(be, &data.images[..eval_steps * batch * 3072], &data.labels[..eval_steps * batch])?;
    let warm_set = DeviceData::new(be, &data.images[..batch * 3072], &data.labels[..batch])?;
    let mut model = Model::new(be, config, batch, 0)?;
    // Class weights as stage 2 of the experiment uses them (values do not change the cost).
    let weights: Vec<f32> = (0..CLASSES).map(|c| 0.5 + 0.15 * c as f32).collect();
    // The trainer's defaults (crop padding 4, flips, momentum 0.9 with Nesterov, weight decay
    // 5e-4) at a learning rate small enough that the timed steps stay finite.
    let cfg = TrainConfig { batch_size: batch, lr: 0.05, ..TrainConfig::default() };
    let mut train_step = TrainStep::new(be, &model, &cfg, &weights)?;
    let mut stats = EpochStats::new(be, CLASSES, batch, args.steps.max(args.warmup))?;
    let mut rng = Pcg64::seed_from_u64(1);
    let batches = train.len() / batch;
    let mut next = 0usize;
    let mut last_loss = 0.0f32;
    // `count` steps, then the wait for their losses (and tally): one repeat.
    let mut steps = |model: &mut Model<B>, count: usize| -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        stats.start(be, &ClassTally::new(CLASSES)?)?;
        for at in 0..count {
            let lo = (next % batches) * batch;
            next += 1;
            let idx: Vec<i32> = (lo as i32..(lo + batch) as i32).collect();
            let plan = train_step.plan(&mut rng, &idx);
            if args.no_tally {
                match train_step.run(be, model, &train, &plan, cfg.lr, None)? {
                    StepOutcome::Updated { loss } => last_loss = loss,
                    StepOutcome::NonFiniteLoss { loss } => anyhow::bail!("the loss became {loss}"),
                }
            } else {
                train_step.run_deferred(be, model, &train, &plan, cfg.lr, &mut stats, at)?;
            }
        }
        if !args.no_tally {
            let (losses, _tally) = stats.read(be, count)?;
            last_loss = *losses.last().expect("count >= 1");
            anyhow::ensure!(losses.iter().all(|l| l.is_finite()), "the loss became {last_loss}");
        }
        Ok(())
    };

    steps(&mut model, args.warmup)?;
    let mut train_ips = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let t = Instant::now();
        steps(&mut model, args.steps)?;
        train_ips.push((args.steps * batch) as f64 / t.elapsed().as_secs_f64());
    }
    for _ in 0..args.warmup {
        evaluate(be, &mut model, &warm_set, batch, false)?;
    }
    let mut eval_ips = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let t = Instant::now();
        let c = evaluate(be, &mut model, &eval_set, batch, false)?;
        eval_ips.push(c.total() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({
        "side": "evenclass",
        "device": args.device,
        "backend": be.describe(),
        "conv_precision": args.conv_precision,
        "precision": args.precision,
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
    let out = pool.install(|| -> Result<serde_json::Value> {
        let algo: ConvAlgo = args.conv_precision.parse().map_err(|e| anyhow::anyhow!("--conv-precision: {e}"))?;
        match args.device.as_str() {
            "cpu" => {
                anyhow::ensure!(
                    algo == ConvAlgo::Fp32 && args.precision == "f32",
                    "--conv-precision {} --precision {}: the CPU runs fp32 only",
                    args.conv_precision,
                    args.precision
                );
                run(CpuBackend::new(), &args)
            }
            "cuda" if args.precision == "bf16" => run(CudaBackend::<half::bf16>::open(0)?.with_conv_algo(algo)?, &args),
            "cuda" => run(CudaBackend::new(0)?.with_conv_algo(algo)?, &args),
            other => anyhow::bail!("--device {other}: expected cpu or cuda"),
        }
    })?;
    println!("{out}");
    Ok(())
}
