//! The practitioner's two-stage reweighting experiment on CIFAR-10, on our own kernels.
//!
//! 1. Train with uniform class weights; measure per-class recall, precision, F1 and the confusion
//!    matrix on the test set (and the training set).
//! 2. Turn stage-1 test recall into class weights `w_c = (mean(r) / r_c)^p` (`--exponent`).
//! 3. Retrain from scratch with the weighted cross-entropy; measure the same.
//!
//! Writes `report.json`, `per_class.csv`, `recall.png`, `recall.svg`, the stage-1 model and
//! metrics to `--out`, and prints a table. `cargo run --release --example cifar10 -- --help`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use evenclass::cross_entropy::weights_from_recall;
use evenclass::data::{self, DataSource};
use evenclass::report::{self, Report, SplitMetrics, StageReport};
use evenclass::train::{self, Backend, CpuBackend, DeviceData, Model, ModelConfig, Progress, TrainConfig};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// The GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Parser, Debug)]
#[command(about = "Two-stage class-reweighting experiment on CIFAR-10 (evenclass)")]
struct Args {
    /// CIFAR-10 binary folder (default: $CIFAR10_DIR, else ./data/cifar-10-batches-bin).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "out/cifar10")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Epochs per stage [default: 8 on the CPU, 30 on a GPU].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size [default: 256 on the CPU, 512 on a GPU].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 0.2 x batch/256... see TrainConfig].
    #[arg(long)]
    lr: Option<f32>,
    /// Channels of the stem; stages use 2x, 4x, 8x [default: 16 on the CPU, 64 on a GPU].
    #[arg(long)]
    width: Option<usize>,
    /// Convolutions per stage [default: 1 on the CPU, 2 on a GPU].
    #[arg(long)]
    depth: Option<usize>,
    /// Exponent p of the practitioner's weights w_c = (mean(r) / r_c)^p.
    #[arg(long, default_value_t = 4.0)]
    exponent: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only (quick runs).
    #[arg(long)]
    test_subset: Option<usize>,
    /// Use the built-in synthetic dataset instead of CIFAR-10.
    #[arg(long)]
    synthetic: bool,
    /// Never download CIFAR-10; fall back to the synthetic set when it is missing.
    #[arg(long)]
    no_download: bool,
    /// Reuse the stage-1 results saved in --out and run stage 2 only.
    #[arg(long)]
    stage2_only: bool,
    /// No progress bars (summaries still print).
    #[arg(long)]
    quiet: bool,
}

struct Plan {
    model: ModelConfig,
    train: TrainConfig,
}

fn plan(args: &Args, gpu: bool, classes: usize) -> Plan {
    let batch = args.batch_size.unwrap_or(if gpu { 512 } else { 256 });
    let train = TrainConfig {
        epochs: args.epochs.unwrap_or(if gpu { 30 } else { 8 }),
        batch_size: batch,
        lr: args.lr.unwrap_or(0.2 * batch as f32 / 256.0),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let model = ModelConfig {
        width: args.width.unwrap_or(if gpu { 64 } else { 16 }),
        depth: args.depth.unwrap_or(if gpu { 2 } else { 1 }),
        classes,
    };
    Plan { model, train }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let want_gpu = match args.device {
        DeviceArg::Cpu => false,
        DeviceArg::Cuda => true,
        DeviceArg::Auto => match evenclass::cuda::device_count() {
            Ok(n) if n > 0 && evenclass::cuda::kernels_not_compiled().is_none() => true,
            Ok(_) => {
                eprintln!("device auto: no CUDA device found, using the CPU");
                false
            }
            Err(e) => {
                eprintln!("device auto: {e}; using the CPU");
                false
            }
        },
    };
    if want_gpu {
        #[cfg(feature = "trainer")]
        {
            let be = train::CudaBackend::new(0).context("opening the GPU (try --device cpu)")?;
            return run(&args, &be, true);
        }
    }
    let be = CpuBackend::new();
    run(&args, &be, false)
}

fn run<B: Backend>(args: &Args, be: &B, gpu: bool) -> Result<()> {
    let started = Instant::now();
    let (dir, dir_source) = data::resolve_data_dir(args.data_dir.clone());
    let loaded = data::resolve(Some(dir.clone()), args.synthetic, !args.no_download, args.train_subset, args.seed)
        .with_context(|| format!("loading data from {} ({dir_source})", dir.display()))?;
    let (mut train_set, mut test_set) = (loaded.train, loaded.test);
    if let Some(n) = args.test_subset {
        test_set = test_set.first(n);
    }
    if let Some(n) = args.train_subset {
        train_set = train_set.first(n);
    }
    let dataset = match &loaded.source {
        DataSource::Cifar10 { dir, .. } => format!("CIFAR-10 ({})", dir.display()),
        DataSource::Synthetic { reason } => {
            eprintln!("==================================================================");
            eprintln!(" SYNTHETIC DATA: the numbers below are NOT CIFAR-10.");
            eprintln!(" reason: {reason}");
            eprintln!("==================================================================");
            "synthetic (not CIFAR-10)".to_string()
        }
    };
    let classes = train_set.num_classes();
    let plan = plan(args, gpu, classes);
    println!("device: {}", be.describe());
    println!("data: {dataset}: {} training and {} test images, {classes} classes", train_set.len(), test_set.len());
    let train_data = DeviceData::new(be, &train_set.images, &train_set.labels)?;
    let test_data = DeviceData::new(be, &test_set.images, &test_set.labels)?;
    let config = serde_json::json!({
        "model": plan.model,
        "train": plan.train,
        "exponent": args.exponent,
        "train_images": train_set.len(),
        "test_images": test_set.len(),
    });
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let progress = Progress { bars: !args.quiet, summaries: true };

    // ---- stage 1 ----
    let stage1_path = args.out.join("stage1.json");
    let config_path = args.out.join("stage1.config.json");
    let stage1 = if args.stage2_only {
        let s: StageReport = serde_json::from_slice(
            &std::fs::read(&stage1_path).with_context(|| format!("--stage2-only needs {}", stage1_path.display()))?,
        )
        .with_context(|| format!("reading {}", stage1_path.display()))?;
        if s.class_weights.len() != classes {
            bail!("{} has {} classes, the data {classes}", stage1_path.display(), s.class_weights.len());
        }
        let saved: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path)
                .with_context(|| format!("--stage2-only needs {} (written with stage 1)", config_path.display()))?,
        )?;
        // The exponent only shapes stage 2: rerunning stage 2 with another p is the point.
        let stage1_keys =
            |v: &serde_json::Value| ["model", "train", "train_images", "test_images"].map(|k| v.get(k).cloned());
        if stage1_keys(&saved) != stage1_keys(&config) {
            bail!(
                "stage 1 in {} was run with another configuration:\n  saved: {saved}\n  now:   {config}\n\
                 use the same flags (or run both stages)",
                args.out.display()
            );
        }
        println!("stage 1: reusing {}", stage1_path.display());
        s
    } else {
        let s = run_stage(
            be,
            "stage 1 (uniform weights)",
            &vec![1.0; classes],
            &plan,
            &train_data,
            &test_data,
            progress,
            &args.out.join("stage1.safetensors"),
        )?;
        write_json(&stage1_path, &s)?;
        write_json(&config_path, &config)?;
        s
    };

    // ---- weights from stage-1 test recall ----
    let per_class = stage1.test.support.iter().copied().max().unwrap_or(1).max(1);
    let weights = weights_from_recall(&stage1.test.recall, args.exponent, 1.0 / per_class as f64)?;
    println!(
        "class weights (p = {}): {}",
        args.exponent,
        weights.iter().map(|w| format!("{w:.3}")).collect::<Vec<_>>().join(" ")
    );
    let wf: Vec<f32> = weights.iter().map(|&w| w as f32).collect();

    // ---- stage 2 ----
    let name2 = format!("stage 2 (weights from stage-1 recall, p = {})", args.exponent);
    let stage2 =
        run_stage(be, &name2, &wf, &plan, &train_data, &test_data, progress, &args.out.join("stage2.safetensors"))?;

    let report = Report {
        dataset,
        device: be.describe(),
        config,
        class_names: train_set.class_names.clone(),
        stages: vec![stage1, stage2],
        command: std::env::args().collect::<Vec<_>>().join(" "),
        created_utc: report::utc_now_rfc3339(),
    };
    let files = report::write_all(&report, &args.out)?;
    println!("\n{}", report::terminal_table(&report));
    for f in [&files.json, &files.csv, &files.svg, &files.png] {
        println!("wrote {}", f.display());
    }
    println!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_stage<B: Backend>(
    be: &B,
    name: &str,
    weights: &[f32],
    plan: &Plan,
    train_data: &DeviceData<B>,
    test_data: &DeviceData<B>,
    progress: Progress,
    model_path: &Path,
) -> Result<StageReport> {
    let t0 = Instant::now();
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    // Same seed in both stages: stage 2 differs from stage 1 only in the loss weights.
    let mut model = Model::new(be, plan.model, max_batch, plan.train.seed)?;
    println!(
        "{name}: {} parameters, {:.1} M multiply-adds per image, {} epochs of batch {}",
        model.parameter_count(),
        model.forward_macs() as f64 / 1e6,
        plan.train.epochs,
        plan.train.batch_size
    );
    let epochs = train::train(be, &mut model, train_data, Some(test_data), weights, &plan.train, name, progress)?;
    let test = SplitMetrics::from_matrix(&train::evaluate(
        be,
        &mut model,
        test_data,
        plan.train.eval_batch_size,
        progress.bars,
    )?);
    let train_m = SplitMetrics::from_matrix(&train::evaluate(
        be,
        &mut model,
        train_data,
        plan.train.eval_batch_size,
        progress.bars,
    )?);
    train::save_model(model_path, &model, be)?;
    let seconds = t0.elapsed().as_secs_f64();
    println!(
        "{name}: test accuracy {:.2}%, balanced {:.2}%, worst-class recall {:.2}%, train accuracy {:.2}% ({seconds:.1} s)",
        100.0 * test.accuracy,
        100.0 * test.balanced_accuracy,
        100.0 * test.worst_recall(),
        100.0 * train_m.accuracy
    );
    Ok(StageReport {
        name: name.to_string(),
        class_weights: weights.iter().map(|&w| w as f64).collect(),
        seconds,
        epochs,
        test,
        train: train_m,
    })
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
