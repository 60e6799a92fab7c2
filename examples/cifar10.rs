//! The practitioner's two-stage reweighting experiment on CIFAR-10, on our own kernels.
//!
//! 1. Train with uniform class weights; measure per-class recall, precision, F1 and the confusion
//!    matrix on the test set (and the training set).
//! 2. Turn stage-1 test recall into class weights `w_c = (mean(r) / r_c)^p` (`--exponent`).
//! 3. Retrain from scratch with the weighted cross-entropy; measure the same.
//!
//! A run is a list of stages ([`StageSpec`]); each stage's weights are uniform or derived from an
//! earlier stage's recall. Every run gets an id and is written into `.OUT.partial/` beside the
//! output folder, with a checkpoint per epoch; only when it is complete does it replace `--out` in
//! one step (see `evenclass::report::run_dir`), so `--out` always holds one whole run. Ctrl-C
//! finishes the current step, writes a checkpoint and says how to `--resume`; a second Ctrl-C
//! exits at once. `cargo run --release --example cifar10 -- --help`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use evenclass::cross_entropy::weights_from_recall;
use evenclass::data::{self, DataFingerprint, DataSource};
use evenclass::report::run_dir::{OutState, RunDir, RunManifest};
use evenclass::report::{self, describe_diffs, diff_fields, Report, SplitMetrics, StageReport};
use evenclass::train::{
    self, Backend, Checkpoint, CpuBackend, DeviceData, MemoryEstimate, Model, ModelConfig, Progress, TrainConfig,
    TrainControl, TrainOutcome,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The GPU when one is usable (a CUDA device and kernels compiled into this build), else the CPU.
    Auto,
    /// The CPU (the Rust reference implementations, all cores).
    Cpu,
    /// GPU 0; an error if there is none or the kernels were not compiled.
    Cuda,
}

#[derive(Parser, Debug)]
#[command(
    about = "Two-stage class-reweighting experiment on CIFAR-10 (evenclass)",
    long_about = "Two-stage class-reweighting experiment on CIFAR-10 (evenclass).\n\n\
        Stage 1 trains with uniform class weights; stage 2 retrains from scratch with weights \
        w_c = (mean(r) / r_c)^p from stage 1's per-class test recall. Writes report.json, \
        per_class.csv, recall.png/.svg and the models to --out, which always holds one complete \
        run: a run in progress lives in .OUT.partial beside it (checkpointed every epoch) and \
        replaces --out only when finished.\n\n\
        Ctrl-C finishes the current step, writes a checkpoint and exits (status 130); rerun with \
        the same flags plus --resume to continue. A second Ctrl-C exits at once.\n\n\
        Invalid flags exit with status 2, other errors with 1."
)]
pub struct Args {
    /// CIFAR-10 binary folder (the one holding data_batch_1.bin ... test_batch.bin). Must exist
    /// when given. Without it: $CIFAR10_DIR (must exist too), else ./data/cifar-10-batches-bin,
    /// which alone is downloaded when missing (170 MB, MD5-checked) and, if that fails or
    /// --no-download is given, replaced by the built-in synthetic set (announced loudly).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output folder; it always holds one complete run.
    #[arg(long, value_name = "DIR", default_value = "out/cifar10")]
    pub out: PathBuf,
    /// Replace the finished run in --out (or discard an interrupted one).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue the interrupted run of --out from its last checkpoint (same flags as before).
    #[arg(long, conflicts_with = "stage2_only")]
    pub resume: bool,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Epochs per stage, 1 to 10000 [default: 8 on the CPU, 30 on a GPU].
    #[arg(long, value_name = "N", value_parser = int_in(1, 10_000))]
    pub epochs: Option<usize>,
    /// Training batch size, 1 to 8192, at most the training images [default: 256 on the CPU, 512
    /// on a GPU].
    #[arg(long, value_name = "N", value_parser = int_in(1, 8192))]
    pub batch_size: Option<usize>,
    /// Peak learning rate, finite and in (0, 100] [default: 0.2 x batch size / 256].
    #[arg(long, value_name = "LR", allow_negative_numbers = true, value_parser = lr_value)]
    pub lr: Option<f32>,
    /// Channels of the stem, 1 to 1024; the three stages use 2x, 4x, 8x [default: 16 on the CPU,
    /// 64 on a GPU].
    #[arg(long, value_name = "N", value_parser = int_in(1, 1024))]
    pub width: Option<usize>,
    /// Convolutions per stage, 1 to 16 [default: 1 on the CPU, 2 on a GPU].
    #[arg(long, value_name = "N", value_parser = int_in(1, 16))]
    pub depth: Option<usize>,
    /// Exponent p of the stage-2 weights w_c = (mean(r) / r_c)^p, in [-8, 8]; negative values
    /// work as written (--exponent -3).
    #[arg(long, value_name = "P", default_value_t = 4.0, allow_negative_numbers = true, value_parser = exponent_value)]
    pub exponent: f64,
    /// Seed of the initialization, shuffling and augmentation (and of the synthetic set); the
    /// same seed on the same CPU thread count gives the same run.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only (quick runs), N >= 1.
    #[arg(long, value_name = "N", value_parser = int_in(1, usize::MAX))]
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only (quick runs), N >= 1.
    #[arg(long, value_name = "N", value_parser = int_in(1, usize::MAX))]
    pub test_subset: Option<usize>,
    /// Use the built-in synthetic dataset (shapes and textures, NOT CIFAR-10) instead of CIFAR-10.
    #[arg(long, conflicts_with = "data_dir")]
    pub synthetic: bool,
    /// Never download CIFAR-10; at the default location fall back to the synthetic set.
    #[arg(long)]
    pub no_download: bool,
    /// Reuse stage 1 of the finished run in --out (same data and stage-1 flags, checked) and run
    /// stage 2 again, e.g. with another --exponent; the result replaces that run.
    #[arg(long)]
    pub stage2_only: bool,
    /// No progress bars (the per-epoch summaries still print).
    #[arg(long)]
    pub quiet: bool,
}

/// A clap value parser for an integer in `[lo, hi]` (the error names the range).
fn int_in(lo: usize, hi: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let range = if hi == usize::MAX { format!("at least {lo}") } else { format!("from {lo} to {hi}") };
        match s.trim().parse::<usize>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!("must be a whole number {range}")),
        }
    }
}

fn lr_value(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err("must be a finite number in (0, 100]".into()),
    }
}

fn exponent_value(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (-8.0..=8.0).contains(&v) => Ok(v),
        _ => Err("must be a finite number in [-8, 8]".into()),
    }
}

/// A bad combination of flags found after parsing: reported like clap's errors (exit status 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How a run ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Finished,
    /// Stopped by Ctrl-C after writing a checkpoint.
    Stopped,
}

/// Ctrl-C presses so far (the handler counts; the trainer reads [`STOP`]).
static PRESSES: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

pub struct Plan {
    pub model: ModelConfig,
    pub train: TrainConfig,
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

/// How a stage's class weights are chosen.
#[derive(Clone, Debug)]
pub enum Weights {
    Uniform,
    /// `(mean(r) / r_c)^exponent` from the test recall of stage `of` (an earlier stage).
    FromRecall {
        of: usize,
        exponent: f64,
    },
}

/// One stage of a run: a file-name key, a display name and its weights.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub key: String,
    pub name: String,
    pub weights: Weights,
}

/// The practitioner's experiment: uniform, then weights from stage-1 recall.
fn stages(args: &Args) -> Vec<StageSpec> {
    vec![
        StageSpec { key: "stage1".into(), name: "stage 1 (uniform weights)".into(), weights: Weights::Uniform },
        StageSpec {
            key: "stage2".into(),
            name: format!("stage 2 (weights from stage-1 recall, p = {})", args.exponent),
            weights: Weights::FromRecall { of: 0, exponent: args.exponent },
        },
    ]
}

fn main() -> ExitCode {
    let args = Args::parse(); // invalid flags: message and exit status 2
    if let Err(e) = ctrlc::set_handler(|| {
        if PRESSES.fetch_add(1, Ordering::SeqCst) == 0 {
            STOP.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
        } else {
            eprintln!("\ninterrupt again: quitting now (the last epoch's checkpoint is kept)");
            std::process::exit(130);
        }
    }) {
        eprintln!("warning: cannot handle Ctrl-C ({e}); an interrupt will lose the epoch in progress");
    }
    match run_with_device(&args, &STOP) {
        Ok(Ended::Finished) => ExitCode::SUCCESS,
        Ok(Ended::Stopped) => ExitCode::from(130),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the backend (`--device`) and runs.
pub fn run_with_device(args: &Args, stop: &AtomicBool) -> Result<Ended> {
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
        let be = train::CudaBackend::new(0).context("opening the GPU (try --device cpu)")?;
        return run(args, &be, true, stop);
    }
    run(args, &CpuBackend::new(), false, stop)
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// The command line to continue this run: the same flags plus `--resume` (without
/// `--overwrite`, which would discard the checkpoint).
fn resume_command() -> String {
    let mut parts: Vec<String> =
        std::env::args().skip(1).filter(|a| a != "--overwrite" && a != "--resume").map(|a| shell_word(&a)).collect();
    parts.push("--resume".into());
    format!("cargo run --release --example cifar10 -- {}", parts.join(" "))
}

fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The whole run on backend `be`.
pub fn run<B: Backend>(args: &Args, be: &B, gpu: bool, stop: &AtomicBool) -> Result<Ended> {
    let started = Instant::now();

    // ---- the output folder: lock it, and decide what may be replaced, before any work ----
    let dir = RunDir::lock(&args.out)?;
    let published = dir.published()?;
    let in_progress = dir.in_progress()?;
    if let OutState::Foreign { names } = &published {
        bail!(
            "{} holds other files ({}...), not an evenclass run: choose another --out",
            args.out.display(),
            names.join(", ")
        );
    }
    let finished_id = match &published {
        OutState::Run(m) => Some(m.run_id.clone()),
        OutState::Legacy => Some("(written before run ids)".to_string()),
        _ => None,
    };
    if args.resume {
        if in_progress.is_none() {
            return Err(usage(format!(
                "--resume: there is no interrupted run to continue in {} (nothing in {})",
                args.out.display(),
                dir.staging().display()
            )));
        }
    } else if let Some(m) = &in_progress {
        if !args.overwrite {
            return Err(usage(format!(
                "an interrupted run ({}, started {}) is waiting in {}: add --resume (same flags) to continue \
                 it, or --overwrite to discard it",
                m.run_id,
                m.started_utc,
                dir.staging().display()
            )));
        }
    }
    if args.stage2_only {
        if !matches!(published, OutState::Run(_)) {
            bail!(
                "--stage2-only needs a finished run in {} to take stage 1 from{}",
                args.out.display(),
                if matches!(published, OutState::Legacy) {
                    " (the one there predates data fingerprints: run both stages)"
                } else {
                    ""
                }
            );
        }
    } else if !args.resume && !args.overwrite {
        if let Some(id) = &finished_id {
            return Err(usage(format!(
                "{} holds a finished run ({id}): add --overwrite to replace it, or choose another --out",
                args.out.display()
            )));
        }
    }

    // ---- data ----
    let loaded =
        match data::resolve(args.data_dir.clone(), args.synthetic, !args.no_download, args.train_subset, args.seed) {
            Ok(l) => l,
            // A folder the user named that does not hold the data is a usage error (exit status 2).
            Err(e @ data::DataError::NotFound { .. }) => return Err(usage(e.to_string())),
            Err(e) => return Err(anyhow::Error::new(e).context("loading the data")),
        };
    let (mut train_set, mut test_set) = (loaded.train, loaded.test);
    if let Some(n) = args.test_subset {
        test_set = test_set.first(n);
    }
    if let Some(n) = args.train_subset {
        train_set = train_set.first(n);
    }
    let synthetic = loaded.source.is_synthetic();
    let dataset = match &loaded.source {
        DataSource::Cifar10 { dir, downloaded } => {
            // Where the folder came from: --data-dir, $CIFAR10_DIR or the default location.
            let from = match data::resolve_data_dir(args.data_dir.clone()).1 {
                data::DirSource::Explicit => "from --data-dir",
                data::DirSource::Env => "from $CIFAR10_DIR",
                data::DirSource::Default => "the default location",
            };
            format!("CIFAR-10 ({}, {from}{})", dir.display(), if *downloaded { ", just downloaded" } else { "" })
        }
        DataSource::Synthetic { reason } => {
            eprintln!("==================================================================");
            eprintln!(" SYNTHETIC DATA: the numbers below are NOT CIFAR-10.");
            eprintln!(" reason: {reason}");
            eprintln!("==================================================================");
            "synthetic (not CIFAR-10)".to_string()
        }
    };
    let fingerprint =
        DataFingerprint::new(&loaded.source, &train_set, &test_set, args.train_subset, args.test_subset, args.seed);
    let classes = train_set.num_classes();
    let plan = plan(args, gpu, classes);
    if plan.train.batch_size > train_set.len() {
        return Err(usage(format!(
            "--batch-size {} is larger than the {} training images: use at most {}",
            plan.train.batch_size,
            train_set.len(),
            train_set.len()
        )));
    }
    let config = serde_json::json!({
        "model": plan.model,
        "train": plan.train,
        "exponent": args.exponent,
        "train_images": train_set.len(),
        "test_images": test_set.len(),
    });
    println!("device: {}", be.describe());
    println!("data: {dataset}: {} training and {} test images, {classes} classes", train_set.len(), test_set.len());

    // ---- memory, before allocating ----
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    let need = MemoryEstimate::new(plan.model, max_batch, train_set.len() + test_set.len())?;
    if let Some(free) = be.memory_available() {
        if need.total() > free {
            bail!(
                "this configuration needs about {need}, but only {:.2} GiB is available on {}: use a smaller \
                 --width, --depth or --batch-size",
                free as f64 / (1u64 << 30) as f64,
                be.describe()
            );
        }
    }

    // ---- the run folder ----
    let specs = stages(args);
    let meta = serde_json::json!({
        "config": config,
        "data": fingerprint,
        "stages": specs.iter().map(|s| serde_json::json!({"key": s.key, "name": s.name})).collect::<Vec<_>>(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mut reuse: Vec<Option<StageReport>> = vec![None; specs.len()];
    let mut manifest = if args.resume {
        let m = in_progress.expect("checked above");
        check_same_run(&m.meta, &config, &fingerprint, "the interrupted run", None)?;
        println!("resuming run {} (started {})", m.run_id, m.started_utc);
        m
    } else {
        if let (true, OutState::Run(prev)) = (args.stage2_only, &published) {
            // The exponent only shapes stage 2: rerunning stage 2 with another p is the point.
            check_same_run(&prev.meta, &config, &fingerprint, "stage 1", Some(&["exponent"]))?;
        }
        let m = RunManifest::new(meta);
        dir.start(&m)?;
        if args.stage2_only {
            let OutState::Run(prev) = &published else { unreachable!("checked above") };
            let key = &specs[0].key;
            for ext in ["json", "safetensors"] {
                let (from, to) = (dir.out().join(format!("{key}.{ext}")), dir.staging().join(format!("{key}.{ext}")));
                std::fs::copy(&from, &to).with_context(|| format!("--stage2-only: copying {}", from.display()))?;
            }
            println!(
                "{}: reusing {} of run {}",
                specs[0].name,
                dir.out().join(format!("{key}.json")).display(),
                prev.run_id
            );
        }
        m
    };
    println!("run {} in {}", manifest.run_id, dir.staging().display());

    let train_data = DeviceData::new(be, &train_set.images, &train_set.labels)?;
    let test_data = DeviceData::new(be, &test_set.images, &test_set.labels)?;
    let progress = Progress { bars: !args.quiet, summaries: true };
    let ck_dir = dir.staging().join("checkpoints");
    std::fs::create_dir_all(&ck_dir).with_context(|| format!("creating {}", ck_dir.display()))?;

    // Stages already finished in the run folder (a resumed run, or stage 1 for --stage2-only).
    for (i, spec) in specs.iter().enumerate() {
        let path = dir.staging().join(format!("{}.json", spec.key));
        if path.exists() {
            let s: StageReport = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("reading {}", path.display()))?;
            if s.class_weights.len() != classes {
                bail!("{} has {} classes, the data {classes}", path.display(), s.class_weights.len());
            }
            if args.resume {
                println!("{}: done before the interruption ({})", spec.name, path.display());
            }
            reuse[i] = Some(s);
        }
    }

    let mut done: Vec<StageReport> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Some(s) = reuse[i].take() {
            done.push(s);
            continue;
        }
        let weights: Vec<f32> = match spec.weights {
            Weights::Uniform => vec![1.0; classes],
            Weights::FromRecall { of, exponent } => {
                let base = &done[of];
                let per_class = base.test.support.iter().copied().max().unwrap_or(1).max(1);
                let w = weights_from_recall(&base.test.recall, exponent, 1.0 / per_class as f64)?;
                println!(
                    "class weights (p = {exponent}): {}",
                    w.iter().map(|w| format!("{w:.3}")).collect::<Vec<_>>().join(" ")
                );
                w.iter().map(|&w| w as f32).collect()
            }
        };
        let ck_path = ck_dir.join(format!("{}.ckpt", spec.key));
        let resume_from = if args.resume && ck_path.exists() {
            let ck = Checkpoint::load(&ck_path)?;
            println!(
                "{}: resuming from {} (epoch {}, step {})",
                spec.name,
                ck_path.display(),
                ck.meta.epoch + usize::from(ck.meta.batch > 0),
                ck.meta.step
            );
            Some(ck)
        } else {
            None
        };
        let stage = StageRun {
            name: &spec.name,
            weights: &weights,
            plan: &plan,
            train_data: &train_data,
            test_data: &test_data,
            progress,
            model_path: &dir.staging().join(format!("{}.safetensors", spec.key)),
            checkpoint: &ck_path,
            resume: resume_from.as_ref(),
            stop,
        };
        match run_stage(be, &stage)? {
            Some(s) => {
                write_json(&dir.staging().join(format!("{}.json", spec.key)), &s)?;
                let _ = std::fs::remove_file(&ck_path);
                done.push(s);
            }
            None => {
                eprintln!(
                    "stopped: {} is checkpointed in {}\nto continue, run:\n  {}",
                    spec.name,
                    ck_path.display(),
                    resume_command()
                );
                return Ok(Ended::Stopped);
            }
        }
    }

    let report = Report {
        dataset,
        device: be.describe(),
        config,
        class_names: train_set.class_names.clone(),
        stages: done,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        created_utc: report::utc_now_rfc3339(),
        run_id: manifest.run_id.clone(),
        synthetic,
    };
    report::write_all(&report, dir.staging())?;
    let _ = std::fs::remove_dir_all(&ck_dir);
    dir.publish(&mut manifest)?;
    println!("\n{}", report::terminal_table(&report));
    println!("run {} published in {}:", manifest.run_id, dir.out().display());
    for f in ["report.json", "per_class.csv", "recall.svg", "recall.png"] {
        println!("wrote {}", dir.out().join(f).display());
    }
    println!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    Ok(Ended::Finished)
}

/// Refuses to combine results with a run made on other data or with another configuration,
/// naming each field that differs. `ignore`: configuration keys allowed to differ.
fn check_same_run(
    saved: &serde_json::Value,
    config: &serde_json::Value,
    data: &DataFingerprint,
    what: &str,
    ignore: Option<&[&str]>,
) -> Result<()> {
    let saved_data: DataFingerprint = serde_json::from_value(saved.get("data").cloned().unwrap_or_default())
        .with_context(|| format!("{what} has no readable data fingerprint"))?;
    let diffs = saved_data.diff(data);
    if !diffs.is_empty() {
        return Err(usage(format!(
            "{what} was run on other data; fields that differ:\n{}\nuse the same data (--data-dir, --synthetic, \
             --seed, subsets), or run both stages",
            describe_diffs(&diffs)
        )));
    }
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for k in ignore.unwrap_or(&[]) {
                o.remove(*k);
            }
        }
        v
    };
    let diffs = diff_fields(&strip(saved.get("config").unwrap_or(&serde_json::Value::Null)), &strip(config));
    if !diffs.is_empty() {
        return Err(usage(format!(
            "{what} was run with another configuration; fields that differ:\n{}\nuse the same flags (or run both \
             stages)",
            describe_diffs(&diffs)
        )));
    }
    Ok(())
}

struct StageRun<'a, B: Backend> {
    name: &'a str,
    weights: &'a [f32],
    plan: &'a Plan,
    train_data: &'a DeviceData<B>,
    test_data: &'a DeviceData<B>,
    progress: Progress,
    model_path: &'a Path,
    checkpoint: &'a Path,
    resume: Option<&'a Checkpoint>,
    stop: &'a AtomicBool,
}

/// Trains one stage (checkpointing every epoch); `None` when stopped by Ctrl-C.
fn run_stage<B: Backend>(be: &B, st: &StageRun<'_, B>) -> Result<Option<StageReport>> {
    let t0 = Instant::now();
    let plan = st.plan;
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    // Same seed in both stages: stage 2 differs from stage 1 only in the loss weights.
    let mut model = Model::new(be, plan.model, max_batch, plan.train.seed)?;
    println!(
        "{}: {} parameters, {:.1} M multiply-adds per image, {} epochs of batch {}",
        st.name,
        model.parameter_count(),
        model.forward_macs() as f64 / 1e6,
        plan.train.epochs,
        plan.train.batch_size
    );
    let control = TrainControl { checkpoint: Some(st.checkpoint), resume: st.resume, stop: Some(st.stop) };
    let outcome = train::train_with(
        be,
        &mut model,
        st.train_data,
        Some(st.test_data),
        st.weights,
        &plan.train,
        st.name,
        st.progress,
        control,
    )?;
    let epochs = match outcome {
        TrainOutcome::Finished(logs) => logs,
        TrainOutcome::Stopped { .. } => return Ok(None),
    };
    let test = SplitMetrics::from_matrix(&train::evaluate(
        be,
        &mut model,
        st.test_data,
        plan.train.eval_batch_size,
        st.progress.bars,
    )?);
    let train_m = SplitMetrics::from_matrix(&train::evaluate(
        be,
        &mut model,
        st.train_data,
        plan.train.eval_batch_size,
        st.progress.bars,
    )?);
    train::save_model(st.model_path, &model, be)?;
    // Wall time of this process; a resumed stage adds the epochs' time before the interruption.
    let before: f64 = st.resume.map_or(0.0, |c| c.meta.logs.iter().map(|l| l.seconds).sum::<f64>());
    let seconds = before + t0.elapsed().as_secs_f64();
    println!(
        "{}: test accuracy {:.2}%, balanced {:.2}%, worst-class recall {:.2}%, train accuracy {:.2}% ({seconds:.1} s)",
        st.name,
        100.0 * test.accuracy,
        100.0 * test.balanced_accuracy,
        100.0 * test.worst_recall(),
        100.0 * train_m.accuracy
    );
    Ok(Some(StageReport {
        name: st.name.to_string(),
        class_weights: st.weights.iter().map(|&w| w as f64).collect(),
        seconds,
        epochs,
        test,
        train: train_m,
    }))
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    train::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
