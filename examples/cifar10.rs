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
use evenclass::confusion::bias::{fit_recall_bias, FitOptions};
use evenclass::confusion::ConfusionMatrix;
use evenclass::cross_entropy::weights::{difficulty_weights, eg_update};
use evenclass::cross_entropy::weights_from_recall;
use evenclass::data::{self, DataFingerprint, DataSource};
use evenclass::report::run_dir::{OutState, RunDir, RunManifest};
use evenclass::report::{self, describe_diffs, diff_fields, Report, SplitMetrics, StageReport};
use evenclass::train::{
    self, Backend, Checkpoint, CpuBackend, DeviceData, EpochEnd, EpochHook, EvalOptions, MemoryEstimate, Model,
    ModelConfig, Monitor, Progress, TrainConfig, TrainControl, TrainOutcome,
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
        w_c = (mean(r) / r_c)^p from stage 1's per-class recall on a validation split held out of \
        the training set (--val-size; --weights-from test gives the practitioner's original \
        variant). With --compare, trains and compares the methods of --methods over --seeds \
        seeds instead (comparison.md, comparison.csv, methods.svg/.png). Writes report.json, \
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
    /// Train without augmentation (no random crop, no flip), e.g. to let a network fit its
    /// training set (the fitted regime of --long-epochs).
    #[arg(long)]
    pub no_augment: bool,
    /// Reuse stage 1 of the finished run in --out (same data and stage-1 flags, checked) and run
    /// stage 2 again, e.g. with another --exponent; the result replaces that run.
    #[arg(long)]
    pub stage2_only: bool,
    /// No progress bars (the per-epoch summaries still print).
    #[arg(long)]
    pub quiet: bool,
    /// Images held out of the training set, stratified and seeded (--split-seed), on which every
    /// per-class quantity (weights, biases) is fitted; 0 for none (then only --weights-from test
    /// works). At most the training images minus one per class.
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = int_in(0, usize::MAX))]
    pub val_size: usize,
    /// Seed of the validation split [default: --seed]; fix it to compare runs of other seeds on
    /// the same split.
    #[arg(long, value_name = "N")]
    pub split_seed: Option<u64>,
    /// Where stage 2's weights come from: the validation split's recall, or (the practitioner's
    /// original recipe, labelled as such) the TEST set's recall.
    #[arg(long, value_enum, default_value_t = RecallSplit::Val)]
    pub weights_from: RecallSplit,
    /// Run the comparison of methods (--methods) over --seeds seeds and write one table and chart
    /// (comparison.md, comparison.csv, methods.svg/.png) besides the usual files.
    #[arg(long, conflicts_with = "stage2_only")]
    pub compare: bool,
    /// Methods to compare (comma-separated; the uniform baseline is always included).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST", default_values_t = Method::ALL.to_vec())]
    pub methods: Vec<Method>,
    /// Seeds per method with --compare: --seed, --seed + 1, ... [default: 3 with --compare, else 1].
    #[arg(long, value_name = "N", value_parser = int_in(1, 100))]
    pub seeds: Option<usize>,
    /// Rounds of iterated reweighting (round 1 is the practitioner's recipe), 2 to 10.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = int_in(2, 10))]
    pub rounds: usize,
    /// Step of the online exponentiated-gradient weights (per epoch, on validation loss).
    #[arg(long, value_name = "ETA", default_value_t = 0.3, value_parser = nonneg_value)]
    pub eg_step: f64,
    /// Exponent tau of the online difficulty weights (1 - validation recall)^tau.
    #[arg(long, value_name = "TAU", default_value_t = 1.0, value_parser = nonneg_value)]
    pub tau: f64,
    /// Weight decay of the strongly regularized methods (reweight-wd, uniform-wd) [the usual
    /// one is 5e-4].
    #[arg(long, value_name = "WD", default_value_t = 5e-3, value_parser = nonneg_value)]
    pub strong_wd: f64,
    /// With --compare: also reweight with these exponents (comma-separated, each in [-8, 8]),
    /// the exponent sweep of the diagnostics.
    #[arg(long, value_name = "LIST", value_delimiter = ',', allow_negative_numbers = true, value_parser = exponent_value)]
    pub sweep: Vec<f64>,
    /// Accuracy budget of the bias-budget method, in percentage points of validation accuracy.
    #[arg(long, value_name = "POINTS", default_value_t = 1.0, value_parser = nonneg_value)]
    pub bias_budget: f64,
    /// With --compare: also train uniform and reweighted models for N epochs (fit regime), and
    /// the N-epoch form of reweight-wd and uniform-wd when those are among --methods.
    #[arg(long, value_name = "N", value_parser = int_in(1, 10_000))]
    pub long_epochs: Option<usize>,
}

/// The split whose recall gives stage 2's weights.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecallSplit {
    /// The validation split held out of the training set.
    Val,
    /// The test set (the practitioner's variant: the test set is then no longer unseen).
    Test,
}

/// A method of the comparison.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Stage 1: uniform class weights (the baseline).
    Uniform,
    /// The practitioner's recipe: weights (mean(r)/r_c)^p from stage 1's validation recall.
    Reweight,
    /// The same with stage 1's TEST recall (the practitioner's exact variant; leaks the test set).
    ReweightTest,
    /// Iterated reweighting: each round multiplies the weights by (mean(r)/r_c)^p of the previous
    /// round's validation recall.
    Iterated,
    /// Online exponentiated-gradient weights from per-class validation loss, every epoch.
    OnlineEg,
    /// Online difficulty weights (1 - validation recall_c)^tau, every epoch.
    OnlineDifficulty,
    /// Post-hoc per-class logit bias fitted on validation logits of stage 1 (no retraining), for
    /// the highest worst-class recall.
    Bias,
    /// The same bias, for the highest worst-class recall that costs at most --bias-budget points
    /// of validation accuracy.
    BiasBudget,
    /// Reweighting with strong weight decay (--strong-wd).
    ReweightWd,
    /// Uniform weights with the same strong weight decay (the control of reweight-wd).
    UniformWd,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Uniform,
        Method::Reweight,
        Method::ReweightTest,
        Method::Iterated,
        Method::OnlineEg,
        Method::OnlineDifficulty,
        Method::Bias,
        Method::BiasBudget,
        Method::ReweightWd,
        Method::UniformWd,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Method::Uniform => "uniform",
            Method::Reweight => "reweight",
            Method::ReweightTest => "reweight-test",
            Method::Iterated => "iterated",
            Method::OnlineEg => "online-eg",
            Method::OnlineDifficulty => "online-difficulty",
            Method::Bias => "bias",
            Method::BiasBudget => "bias-budget",
            Method::ReweightWd => "reweight-wd",
            Method::UniformWd => "uniform-wd",
        }
    }
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

fn nonneg_value(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err("must be a finite number in [0, 100]".into()),
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
    let train = if args.no_augment { TrainConfig { crop_pad: 0, flip: false, ..train } } else { train };
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
    /// `(mean(r) / r_c)^exponent` from the recall of stage `of` (an earlier stage) on `split`;
    /// with `compose`, multiplied by that stage's own weights (iterated reweighting) and
    /// renormalized to mean 1.
    FromRecall {
        of: usize,
        exponent: f64,
        split: RecallSplit,
        compose: bool,
    },
    /// Uniform at first, then updated after every epoch from the validation split.
    Online(Online),
}

/// An online reweighting rule (see `evenclass::cross_entropy::weights`).
#[derive(Clone, Copy, Debug)]
pub enum Online {
    /// `w_c <- w_c exp(step * validation loss_c)`, mean 1 (group-DRO's exponentiated gradient).
    Eg { step: f64 },
    /// `w_c ∝ (1 - validation recall_c)^tau`.
    Difficulty { tau: f64 },
}

/// One training of a run: a file-name key, a display name, its weights, seed and overrides.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub key: String,
    pub name: String,
    pub weights: Weights,
    pub seed: u64,
    /// Other than the run's epochs (the fit-regime diagnostic).
    pub epochs: Option<usize>,
    /// Other than the usual weight decay.
    pub weight_decay: Option<f32>,
    /// Post-hoc logit biases to fit on the validation split and evaluate with.
    pub fit_bias: Vec<BiasKind>,
}

/// One row of the comparison: a method on one seed, read from stage `stage` (with its fitted
/// bias when `bias`).
#[derive(Clone, Debug)]
pub struct MethodSpec {
    pub key: String,
    pub name: String,
    pub seed: u64,
    pub stage: usize,
    /// Read the stage's model with this fitted bias ([`BiasKind::file`]).
    pub bias: Option<&'static str>,
}

/// How a post-hoc bias is fitted (see `evenclass::confusion::bias`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasKind {
    /// The highest worst-class recall, whatever it costs.
    MaxMin,
    /// The highest worst-class recall that costs at most this much validation accuracy
    /// (a fraction).
    Budget(f64),
}

impl BiasKind {
    /// The method's key, and the file-name suffix of its results (`KEY.bias.json`, ...).
    pub fn file(self) -> &'static str {
        match self {
            BiasKind::MaxMin => "bias",
            BiasKind::Budget(_) => "bias-budget",
        }
    }
}

/// The trainings of a run, in dependency order, and the methods read from them.
pub fn stages(args: &Args) -> (Vec<StageSpec>, Vec<MethodSpec>) {
    let p = args.exponent;
    let spec = |key: String, name: String, weights: Weights, seed: u64| StageSpec {
        key,
        name,
        weights,
        seed,
        epochs: None,
        weight_decay: None,
        fit_bias: Vec::new(),
    };
    if !args.compare {
        let (split, what) = match args.weights_from {
            RecallSplit::Val => (RecallSplit::Val, "validation"),
            RecallSplit::Test => (RecallSplit::Test, "TEST (practitioner's variant)"),
        };
        let specs = vec![
            spec("stage1".into(), "stage 1 (uniform weights)".into(), Weights::Uniform, args.seed),
            spec(
                "stage2".into(),
                format!("stage 2 (weights from stage-1 {what} recall, p = {p})"),
                Weights::FromRecall { of: 0, exponent: p, split, compose: false },
                args.seed,
            ),
        ];
        return (specs, Vec::new());
    }
    let want = |m: Method| m == Method::Uniform || args.methods.contains(&m);
    let mut biases = Vec::new();
    if want(Method::Bias) {
        biases.push(BiasKind::MaxMin);
    }
    if want(Method::BiasBudget) {
        biases.push(BiasKind::Budget(args.bias_budget / 100.0));
    }
    let wd = args.strong_wd as f32;
    let mut specs: Vec<StageSpec> = Vec::new();
    let mut methods: Vec<MethodSpec> = Vec::new();
    for k in 0..args.seeds.unwrap_or(3) as u64 {
        let seed = args.seed.wrapping_add(k);
        let add = |specs: &mut Vec<StageSpec>, st: StageSpec| {
            specs.push(st);
            specs.len() - 1
        };
        let method =
            |methods: &mut Vec<MethodSpec>, m: &str, name: String, stage: usize, bias: Option<&'static str>| {
                methods.push(MethodSpec { key: m.into(), name, seed, stage, bias })
            };
        let u =
            add(&mut specs, spec(format!("s{seed}-uniform"), format!("uniform, seed {seed}"), Weights::Uniform, seed));
        specs[u].fit_bias = biases.clone();
        method(&mut methods, "uniform", "uniform (stage 1)".into(), u, None);
        let from = |of, split, compose| Weights::FromRecall { of, exponent: p, split, compose };
        // Reweighting with strong weight decay (weights from `base`'s validation recall) and its
        // uniform control, for the run's epochs or `long` of them.
        let wd_pair = |specs: &mut Vec<StageSpec>, methods: &mut Vec<MethodSpec>, base, long: Option<usize>| {
            let (key, ep, label, control) = match long {
                Some(n) => ("-long", format!(" {n} ep"), format!(", {n} epochs"), ""),
                None => ("", String::new(), String::new(), " (control)"),
            };
            let mut stage = |k: &str, name: String, weights: Weights, label: String| {
                let mut st = spec(format!("s{seed}-{k}{key}"), format!("{name}{ep}, seed {seed}"), weights, seed);
                (st.epochs, st.weight_decay) = (long, Some(wd));
                let r = add(specs, st);
                method(methods, &format!("{k}{key}"), label, r, None);
            };
            if want(Method::ReweightWd) {
                let w = from(base, RecallSplit::Val, false);
                stage(
                    "reweight-wd",
                    format!("reweight p={p} + wd {wd}"),
                    w,
                    format!("reweight p={p} + weight decay {wd}{label}"),
                );
            }
            if want(Method::UniformWd) {
                let name = format!("uniform + weight decay {wd}{label}{control}");
                stage("uniform-wd", format!("uniform + wd {wd}"), Weights::Uniform, name);
            }
        };
        let mut reweight = None;
        if want(Method::Reweight) || want(Method::Iterated) {
            let r = add(
                &mut specs,
                spec(
                    format!("s{seed}-reweight"),
                    format!("reweight p={p}, seed {seed}"),
                    from(u, RecallSplit::Val, false),
                    seed,
                ),
            );
            reweight = Some(r);
            if want(Method::Reweight) {
                method(&mut methods, "reweight", format!("reweight p={p} (val recall)"), r, None);
            }
        }
        if want(Method::ReweightTest) {
            let r = add(
                &mut specs,
                spec(
                    format!("s{seed}-reweight-test"),
                    format!("reweight p={p} from TEST recall, seed {seed}"),
                    from(u, RecallSplit::Test, false),
                    seed,
                ),
            );
            method(
                &mut methods,
                "reweight-test",
                format!("reweight p={p} (TEST recall, practitioner's variant)"),
                r,
                None,
            );
        }
        if let (true, Some(mut prev)) = (want(Method::Iterated), reweight) {
            for round in 2..=args.rounds {
                prev = add(
                    &mut specs,
                    spec(
                        format!("s{seed}-iterated-{round}"),
                        format!("iterated reweight round {round}, seed {seed}"),
                        from(prev, RecallSplit::Val, true),
                        seed,
                    ),
                );
            }
            method(&mut methods, "iterated", format!("iterated reweight, {} rounds", args.rounds), prev, None);
        }
        if want(Method::OnlineEg) {
            let r = add(
                &mut specs,
                spec(
                    format!("s{seed}-online-eg"),
                    format!("online EG, seed {seed}"),
                    Weights::Online(Online::Eg { step: args.eg_step }),
                    seed,
                ),
            );
            method(&mut methods, "online-eg", format!("online EG (val loss, step {})", args.eg_step), r, None);
        }
        if want(Method::OnlineDifficulty) {
            let r = add(
                &mut specs,
                spec(
                    format!("s{seed}-online-difficulty"),
                    format!("online difficulty, seed {seed}"),
                    Weights::Online(Online::Difficulty { tau: args.tau }),
                    seed,
                ),
            );
            method(&mut methods, "online-difficulty", format!("online (1 - val recall)^{}", args.tau), r, None);
        }
        if want(Method::Bias) {
            method(&mut methods, "bias", "post-hoc logit bias (val) on uniform".into(), u, Some("bias"));
        }
        if want(Method::BiasBudget) {
            let name = format!("post-hoc logit bias (val), budget {} pt, on uniform", args.bias_budget);
            method(&mut methods, "bias-budget", name, u, Some("bias-budget"));
        }
        wd_pair(&mut specs, &mut methods, u, None);
        for &q in &args.sweep {
            if q == 0.0 || q == p {
                continue; // p = 0 is uniform, p = --exponent is reweight
            }
            let w = Weights::FromRecall { of: u, exponent: q, split: RecallSplit::Val, compose: false };
            let r =
                add(&mut specs, spec(format!("s{seed}-sweep-p{q}"), format!("reweight p={q}, seed {seed}"), w, seed));
            method(&mut methods, &format!("sweep-p{q}"), format!("reweight p={q} (sweep)"), r, None);
        }
        if let Some(n) = args.long_epochs {
            let mut st =
                spec(format!("s{seed}-uniform-long"), format!("uniform {n} ep, seed {seed}"), Weights::Uniform, seed);
            st.epochs = Some(n);
            st.fit_bias = biases.clone();
            let ul = add(&mut specs, st);
            method(&mut methods, "uniform-long", format!("uniform, {n} epochs"), ul, None);
            let mut st = spec(
                format!("s{seed}-reweight-long"),
                format!("reweight p={p} {n} ep, seed {seed}"),
                from(ul, RecallSplit::Val, false),
                seed,
            );
            st.epochs = Some(n);
            let rl = add(&mut specs, st);
            method(&mut methods, "reweight-long", format!("reweight p={p}, {n} epochs"), rl, None);
            // Strong weight decay in the fitted regime: the condition under which the literature
            // says weights keep their effect. Weights from the long uniform run, as reweight-long.
            wd_pair(&mut specs, &mut methods, ul, Some(n));
            if want(Method::Bias) {
                method(
                    &mut methods,
                    "bias-long",
                    format!("post-hoc logit bias on uniform, {n} epochs"),
                    ul,
                    Some("bias"),
                );
            }
            if want(Method::BiasBudget) {
                let name = format!("post-hoc logit bias, budget {} pt, on uniform, {n} epochs", args.bias_budget);
                method(&mut methods, "bias-budget-long", name, ul, Some("bias-budget"));
            }
        }
    }
    (specs, methods)
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
    check_flags(args)?;

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
    // The validation split: before any training, so a bad size is an error at once.
    let val_set = if args.val_size > 0 {
        let split_seed = args.split_seed.unwrap_or(args.seed);
        let split = data::stratified_split(&train_set.labels, classes, args.val_size, split_seed)
            .map_err(|e| usage(format!("--val-size {}: {e}; choose another --val-size", args.val_size)))?;
        let val = train_set.select(&split.val, "validation")?;
        train_set = train_set.select(&split.train, "training")?;
        Some(val)
    } else {
        None
    };
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
        "val_images": val_set.as_ref().map_or(0, |v| v.len()),
        "split_seed": args.split_seed.unwrap_or(args.seed),
        "weights_from": if args.compare { None } else { Some(args.weights_from) },
        "compare": args.compare.then(|| serde_json::json!({
            "methods": args.methods,
            "seeds": args.seeds.unwrap_or(3),
            "rounds": args.rounds,
            "eg_step": args.eg_step,
            "tau": args.tau,
            "strong_wd": args.strong_wd,
            "bias_budget": args.bias_budget,
            "sweep": args.sweep,
            "long_epochs": args.long_epochs,
        })),
    });
    println!("device: {}", be.describe());
    println!(
        "data: {dataset}: {} training, {} validation and {} test images, {classes} classes",
        train_set.len(),
        val_set.as_ref().map_or(0, |v| v.len()),
        test_set.len()
    );

    // ---- memory, before allocating ----
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    let images = train_set.len() + test_set.len() + val_set.as_ref().map_or(0, |v| v.len());
    let need = MemoryEstimate::new(plan.model, max_batch, images)?;
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
    let (specs, method_specs) = stages(args);
    let meta = serde_json::json!({
        "config": config,
        "data": fingerprint,
        "stages": specs.iter().map(|s| serde_json::json!({"key": s.key, "name": s.name})).collect::<Vec<_>>(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mut reuse: Vec<Option<StageReport>> = vec![None; specs.len()];
    let mut biased: Vec<Vec<(&'static str, StageReport)>> = vec![Vec::new(); specs.len()];
    let mut manifest = if args.resume {
        let m = in_progress.expect("checked above");
        check_same_run(&m.meta, &config, &fingerprint, "the interrupted run", None)?;
        println!("resuming run {} (started {})", m.run_id, m.started_utc);
        m
    } else {
        if let (true, OutState::Run(prev)) = (args.stage2_only, &published) {
            // The exponent only shapes stage 2: rerunning stage 2 with another p is the point.
            check_same_run(&prev.meta, &config, &fingerprint, "stage 1", Some(&["exponent", "weights_from"]))?;
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
    let val_data = val_set.as_ref().map(|v| DeviceData::new(be, &v.images, &v.labels)).transpose()?;
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
            for kind in &spec.fit_bias {
                // Written before the stage's own file, so a finished stage always has them.
                let path = dir.staging().join(format!("{}.{}.json", spec.key, kind.file()));
                let b: StageReport = serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("reading {}", path.display()))?;
                biased[i].push((kind.file(), b));
            }
        }
    }

    let mut done: Vec<StageReport> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Some(s) = reuse[i].take() {
            done.push(s);
            continue;
        }
        let weights: Vec<f32> = match spec.weights {
            Weights::Uniform | Weights::Online(_) => vec![1.0; classes],
            Weights::FromRecall { of, exponent, split, compose } => {
                let base = &done[of];
                let m = match split {
                    RecallSplit::Test => &base.test,
                    RecallSplit::Val => {
                        base.val.as_ref().context("weights from validation recall need --val-size > 0")?
                    }
                };
                let per_class = m.support.iter().copied().max().unwrap_or(1).max(1);
                let mut w = weights_from_recall(&m.recall, exponent, 1.0 / per_class as f64)?;
                if compose {
                    w.iter_mut().zip(&base.class_weights).for_each(|(w, b)| *w *= b);
                    let mean = w.iter().sum::<f64>() / w.len() as f64;
                    w.iter_mut().for_each(|w| *w /= mean);
                }
                println!(
                    "{}: class weights (p = {exponent}, from {} recall of {}): {}",
                    spec.name,
                    if split == RecallSplit::Test { "TEST" } else { "validation" },
                    specs[of].name,
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
        let mut train_cfg = TrainConfig { seed: spec.seed, ..plan.train.clone() };
        if let Some(e) = spec.epochs {
            train_cfg.epochs = e;
        }
        if let Some(wd) = spec.weight_decay {
            train_cfg.weight_decay = wd;
        }
        let stage = StageRun {
            name: &spec.name,
            weights: &weights,
            model_cfg: plan.model,
            train_cfg: &train_cfg,
            online: match spec.weights {
                Weights::Online(o) => Some(o),
                _ => None,
            },
            fit_bias: &spec.fit_bias,
            train_data: &train_data,
            test_data: &test_data,
            val_data: val_data.as_ref(),
            progress,
            model_path: &dir.staging().join(format!("{}.safetensors", spec.key)),
            checkpoint: &ck_path,
            resume: resume_from.as_ref(),
            stop,
        };
        match run_stage(be, &stage)? {
            Some((mut s, b)) => {
                s.seed = Some(spec.seed);
                for (file, b) in b {
                    write_json(&dir.staging().join(format!("{}.{file}.json", spec.key)), &b)?;
                    biased[i].push((file, b));
                }
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

    let methods: Vec<StageReport> = method_specs
        .iter()
        .map(|m| {
            let from = if let Some(file) = m.bias {
                biased[m.stage]
                    .iter()
                    .find(|(f, _)| *f == file)
                    .map(|(_, b)| b.clone())
                    .context("a post-hoc bias that was not fitted")?
            } else {
                done[m.stage].clone()
            };
            Ok(StageReport {
                name: m.name.clone(),
                method: Some(m.key.clone()),
                model: Some(specs[m.stage].key.clone()),
                seed: Some(m.seed),
                ..from
            })
        })
        .collect::<Result<_>>()?;
    let diagnostics = if methods.is_empty() { serde_json::Value::Null } else { diagnostics(&specs, &methods) };
    let report = Report {
        dataset,
        device: be.describe(),
        config,
        class_names: train_set.class_names.clone(),
        stages: done,
        methods,
        diagnostics,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        created_utc: report::utc_now_rfc3339(),
        run_id: manifest.run_id.clone(),
        synthetic,
    };
    report::write_all(&report, dir.staging())?;
    let _ = std::fs::remove_dir_all(&ck_dir);
    dir.publish(&mut manifest)?;
    println!("\n{}", report::terminal_table(&report));
    if !report.methods.is_empty() {
        println!("{}", report::comparison_markdown(&report));
        println!("{}", diagnostics_text(&report));
    }
    println!("run {} published in {}:", manifest.run_id, dir.out().display());
    for f in ["report.json", "per_class.csv", "recall.svg", "recall.png"] {
        println!("wrote {}", dir.out().join(f).display());
    }
    if !report.methods.is_empty() {
        for f in ["comparison.md", "comparison.csv", "methods.svg", "methods.png"] {
            println!("wrote {}", dir.out().join(f).display());
        }
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
    model_cfg: ModelConfig,
    train_cfg: &'a TrainConfig,
    online: Option<Online>,
    fit_bias: &'a [BiasKind],
    train_data: &'a DeviceData<B>,
    test_data: &'a DeviceData<B>,
    val_data: Option<&'a DeviceData<B>>,
    progress: Progress,
    model_path: &'a Path,
    checkpoint: &'a Path,
    resume: Option<&'a Checkpoint>,
    stop: &'a AtomicBool,
}

/// Metrics of `model` on `data` (with a logit bias when given).
fn metrics<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &DeviceData<B>,
    cfg: &TrainConfig,
    bars: bool,
    bias: Option<&[f32]>,
) -> Result<SplitMetrics> {
    let opts = EvalOptions { batch_size: cfg.eval_batch_size, show_bar: bars, bias, keep_logits: false };
    Ok(SplitMetrics::from_matrix(&train::evaluate_with(be, model, data, &opts)?.confusion))
}

/// The online rule's new weights after an epoch, from the model on the validation split.
/// `val_counts`: the trainer's evaluation of that split at this epoch's end (the monitor), which
/// the difficulty rule reuses; the EG rule needs the logits and evaluates again.
fn online_weights<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    val: &DeviceData<B>,
    val_counts: Option<&ConfusionMatrix>,
    rule: Online,
    now: &[f32],
    eval_batch: usize,
) -> evenclass::Result<Vec<f32>> {
    let classes = model.config.classes;
    let eval = |be: &B, model: &mut Model<B>, keep_logits: bool| {
        train::evaluate_with(be, model, val, &EvalOptions { batch_size: eval_batch, keep_logits, ..Default::default() })
    };
    let w = match rule {
        Online::Eg { step } => {
            let ev = eval(be, model, true)?;
            let labels: Vec<i32> = val.labels.iter().map(|&l| l as i32).collect();
            let loss = train::per_class_loss(&ev.logits, &labels, classes)?;
            let now: Vec<f64> = now.iter().map(|&w| f64::from(w)).collect();
            eg_update(&now, &loss, step)?
        }
        Online::Difficulty { tau } => {
            let recall = match val_counts {
                Some(c) => c.metrics().recall,
                None => eval(be, model, false)?.confusion.metrics().recall,
            };
            difficulty_weights(&recall, tau, 0.01)?
        }
    };
    Ok(w.into_iter().map(|w| w as f32).collect())
}

/// Trains one stage (checkpointing every epoch); `None` when stopped by Ctrl-C. With `fit_bias`,
/// also the stage's model with a post-hoc logit bias fitted on the validation split.
type Biased = Vec<(&'static str, StageReport)>;

fn run_stage<B: Backend>(be: &B, st: &StageRun<'_, B>) -> Result<Option<(StageReport, Biased)>> {
    let t0 = Instant::now();
    let cfg = st.train_cfg;
    let max_batch = cfg.batch_size.max(cfg.eval_batch_size);
    // Same seed in every stage of a seed: they differ only in what the stage changes.
    let mut model = Model::new(be, st.model_cfg, max_batch, cfg.seed)?;
    println!(
        "{}: {} parameters, {:.1} M multiply-adds per image, {} epochs of batch {}",
        st.name,
        model.parameter_count(),
        model.forward_macs() as f64 / 1e6,
        cfg.epochs,
        cfg.batch_size
    );
    let hook = |be: &B, model: &mut Model<B>, end: &EpochEnd<'_>| -> evenclass::Result<Option<Vec<f32>>> {
        match (st.online, st.val_data) {
            // The trainer monitors the validation split here (see `monitor` below).
            (Some(rule), Some(val)) => {
                online_weights(be, model, val, end.monitor, rule, end.weights, cfg.eval_batch_size).map(Some)
            }
            _ => Ok(None),
        }
    };
    if st.online.is_some() && st.val_data.is_none() {
        bail!("{}: online weights need a validation split (--val-size > 0)", st.name);
    }
    let control = TrainControl {
        checkpoint: Some(st.checkpoint),
        resume: st.resume,
        stop: Some(st.stop),
        on_epoch: st.online.is_some().then_some(&hook as EpochHook<'_, B>),
    };
    // Epochs are monitored on the validation split when there is one: the test set is only
    // evaluated once, for the report.
    let monitor = match st.val_data {
        Some(v) => Monitor::Val(v),
        None => Monitor::Test(st.test_data),
    };
    let outcome = train::train_with(
        be,
        &mut model,
        st.train_data,
        Some(monitor),
        st.weights,
        cfg,
        st.name,
        st.progress,
        control,
    )?;
    let (epochs, last) = match outcome {
        TrainOutcome::Finished { logs, monitor } => (logs, monitor),
        TrainOutcome::Stopped { .. } => return Ok(None),
    };
    let bars = st.progress.bars;
    // The last epoch's evaluation of the monitored split is of the final model: reuse it.
    let (last_val, last_test) = match monitor {
        Monitor::Val(_) => (last, None),
        Monitor::Test(_) => (None, last),
    };
    let test = match last_test {
        Some(c) => SplitMetrics::from_matrix(&c),
        None => metrics(be, &mut model, st.test_data, cfg, bars, None)?,
    };
    let train_m = metrics(be, &mut model, st.train_data, cfg, bars, None)?;
    let val = match (st.val_data, last_val) {
        (Some(_), Some(c)) => Some(SplitMetrics::from_matrix(&c)),
        (Some(v), None) => Some(metrics(be, &mut model, v, cfg, bars, None)?),
        (None, _) => None,
    };
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
    let report = StageReport {
        name: st.name.to_string(),
        class_weights: epochs.last().map_or_else(
            || st.weights.iter().map(|&w| w as f64).collect(),
            |l| {
                if l.class_weights.is_empty() {
                    st.weights.iter().map(|&w| w as f64).collect()
                } else {
                    l.class_weights.clone()
                }
            },
        ),
        seconds,
        epochs,
        test,
        train: train_m,
        val,
        seed: Some(cfg.seed),
        method: None,
        model: None,
        bias: None,
    };
    let mut biased = Vec::new();
    for &kind in st.fit_bias {
        let val = st.val_data.with_context(|| format!("{}: a post-hoc bias needs a validation split", st.name))?;
        biased.push((kind.file(), fit_bias(be, &mut model, val, st, &report, kind)?));
    }
    Ok(Some((report, biased)))
}

/// Fits a per-class logit bias on the validation logits (highest worst-class recall) and
/// evaluates the model with it on every split.
fn fit_bias<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    val: &DeviceData<B>,
    st: &StageRun<'_, B>,
    plain: &StageReport,
    kind: BiasKind,
) -> Result<StageReport> {
    let classes = model.config.classes;
    let cfg = st.train_cfg;
    let ev = train::evaluate_with(
        be,
        model,
        val,
        &EvalOptions { batch_size: cfg.eval_batch_size, keep_logits: true, ..Default::default() },
    )?;
    let logits = ndarray::ArrayView2::from_shape((val.len(), classes), &ev.logits)?;
    let labels: Vec<i32> = val.labels.iter().map(|&l| l as i32).collect();
    let max_accuracy_drop = match kind {
        BiasKind::MaxMin => None,
        BiasKind::Budget(b) => Some(b),
    };
    let fit = fit_recall_bias(logits, &labels, &FitOptions { max_accuracy_drop, ..Default::default() })?;
    println!(
        "{}: post-hoc bias ({}) fitted on {} validation images in {} steps: validation worst-class recall {:.1}% -> {:.1}%",
        st.name,
        kind.file(),
        val.len(),
        fit.steps,
        100.0 * fit.worst_recall_before(),
        100.0 * fit.worst_recall()
    );
    let bias = Some(fit.bias.as_slice());
    let bars = st.progress.bars;
    let test = metrics(be, model, st.test_data, cfg, bars, bias)?;
    let train_m = metrics(be, model, st.train_data, cfg, bars, bias)?;
    let val_m = metrics(be, model, val, cfg, bars, bias)?;
    println!(
        "{} + {}: test accuracy {:.2}%, worst-class recall {:.2}%, recall spread {:.1} points",
        st.name,
        kind.file(),
        100.0 * test.accuracy,
        100.0 * test.worst_recall(),
        100.0 * test.recall_spread()
    );
    Ok(StageReport {
        name: format!("{} + post-hoc {}", st.name, kind.file()),
        test,
        train: train_m,
        val: Some(val_m),
        bias: Some(fit.bias.iter().map(|&b| b as f64).collect()),
        epochs: Vec::new(),
        ..plain.clone()
    })
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    train::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// Flag combinations that clap cannot express; usage errors (exit status 2) before any work.
fn check_flags(args: &Args) -> Result<()> {
    if !args.compare {
        for (set, flag) in [
            (args.seeds.is_some_and(|n| n > 1), "--seeds"),
            (!args.sweep.is_empty(), "--sweep"),
            (args.long_epochs.is_some(), "--long-epochs"),
        ] {
            if set {
                return Err(usage(format!("{flag} only applies with --compare")));
            }
        }
        if args.val_size == 0 && args.weights_from == RecallSplit::Val {
            return Err(usage(
                "--val-size 0 leaves no validation split for stage 2's weights: use --weights-from test (the \
                 practitioner's variant) or a validation split",
            ));
        }
    } else if args.val_size == 0 {
        return Err(usage("--compare fits every per-class quantity on a validation split: --val-size must be > 0"));
    }
    Ok(())
}

/// Mean over seeds of a per-class vector, element by element.
fn mean_vec<'a>(vs: impl Iterator<Item = &'a Vec<f64>>) -> Vec<f64> {
    let vs: Vec<&Vec<f64>> = vs.filter(|v| !v.is_empty()).collect();
    let n = vs.first().map_or(0, |v| v.len());
    (0..n).map(|k| vs.iter().map(|v| v.get(k).copied().unwrap_or(f64::NAN)).sum::<f64>() / vs.len() as f64).collect()
}

fn runs_of<'a>(methods: &'a [StageReport], key: &'a str) -> impl Iterator<Item = &'a StageReport> + 'a {
    methods.iter().filter(move |m| m.method.as_deref() == Some(key))
}

/// The comparison's diagnostics (means over seeds): per method the fit on train, validation and
/// test; per class, the training loss and gradient share in the first and last epoch; the
/// exponent sweep; short versus long training.
fn diagnostics(specs: &[StageSpec], methods: &[StageReport]) -> serde_json::Value {
    use evenclass::report::Stat;
    let mut keys: Vec<&str> = Vec::new();
    for m in methods {
        let k = m.method.as_deref().unwrap_or("");
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let stat = |key: &str, f: &dyn Fn(&StageReport) -> f64| {
        let v: Vec<f64> = runs_of(methods, key).map(f).collect();
        Stat::of(&v)
    };
    let fit: Vec<serde_json::Value> = keys
        .iter()
        .map(|&k| {
            let split = |s: &'static str| {
                move |r: &StageReport| -> Option<SplitMetrics> {
                    match s {
                        "train" => Some(r.train.clone()),
                        "val" => r.val.clone(),
                        _ => Some(r.test.clone()),
                    }
                }
            };
            let mut o = serde_json::Map::new();
            o.insert("method".into(), k.into());
            for s in ["train", "val", "test"] {
                let get = split(s);
                let recall =
                    mean_vec(runs_of(methods, k).filter_map(|r| get(r).map(|m| m.recall)).collect::<Vec<_>>().iter());
                o.insert(
                    s.into(),
                    serde_json::json!({
                        "accuracy": stat(k, &|r| get(r).map_or(f64::NAN, |m| m.accuracy)),
                        "worst_recall": stat(k, &|r| get(r).map_or(f64::NAN, |m| m.worst_recall())),
                        "recall_spread": stat(k, &|r| get(r).map_or(f64::NAN, |m| m.recall_spread())),
                        "recall": recall,
                    }),
                );
            }
            serde_json::Value::Object(o)
        })
        .collect();
    let gradient: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| !k.starts_with("bias"))
        .map(|&k| {
            let at = |pick: &dyn Fn(&[evenclass::report::EpochLog]) -> Option<&evenclass::report::EpochLog>| {
                let logs: Vec<&evenclass::report::EpochLog> =
                    runs_of(methods, k).filter_map(|r| pick(&r.epochs)).collect();
                serde_json::json!({
                    "epoch": logs.first().map(|l| l.epoch),
                    "class_weights": mean_vec(logs.iter().map(|l| &l.class_weights)),
                    "class_loss": mean_vec(logs.iter().map(|l| &l.class_loss)),
                    "grad_share_uniform": mean_vec(logs.iter().map(|l| &l.grad_share_uniform)),
                    "grad_share_weighted": mean_vec(logs.iter().map(|l| &l.grad_share_weighted)),
                })
            };
            serde_json::json!({"method": k, "first_epoch": at(&|e| e.first()), "last_epoch": at(&|e| e.last())})
        })
        .collect();
    // The sweep: p = 0 is uniform, p = --exponent is reweight.
    let mut sweep: Vec<(f64, &str)> = Vec::new();
    for sp in specs {
        let key = methods
            .iter()
            .find(|m| m.model.as_deref() == Some(&sp.key) && m.bias.is_none())
            .and_then(|m| m.method.as_deref());
        match (&sp.weights, key) {
            (Weights::Uniform, Some("uniform")) => sweep.push((0.0, "uniform")),
            (Weights::FromRecall { exponent, compose: false, split: RecallSplit::Val, .. }, Some(k))
                if k == "reweight" || k.starts_with("sweep-p") =>
            {
                sweep.push((*exponent, k))
            }
            _ => {}
        }
    }
    sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
    sweep.dedup();
    let sweep: Vec<serde_json::Value> = sweep
        .iter()
        .map(|&(p, k)| {
            serde_json::json!({
                "exponent": p,
                "method": k,
                "accuracy": stat(k, &|r| r.test.accuracy),
                "worst_recall": stat(k, &|r| r.test.worst_recall()),
                "recall_spread": stat(k, &|r| r.test.recall_spread()),
                "train_accuracy": stat(k, &|r| r.train.accuracy),
            })
        })
        .collect();
    let regime: Vec<serde_json::Value> = [
        ("short", "uniform", "reweight"),
        ("long", "uniform-long", "reweight-long"),
        ("short-wd", "uniform-wd", "reweight-wd"),
        ("long-wd", "uniform-wd-long", "reweight-wd-long"),
    ]
    .iter()
    .filter(|(_, u, r)| keys.contains(u) && keys.contains(r))
    .map(|&(name, u, r)| {
        serde_json::json!({
            "regime": name,
            "epochs": runs_of(methods, u).next().map(|m| m.epochs.len()),
            "uniform_train_accuracy": stat(u, &|m| m.train.accuracy),
            "uniform_test_spread": stat(u, &|m| m.test.recall_spread()),
            "reweight_train_accuracy": stat(r, &|m| m.train.accuracy),
            "reweight_test_spread": stat(r, &|m| m.test.recall_spread()),
            "uniform_train_spread": stat(u, &|m| m.train.recall_spread()),
            "reweight_train_spread": stat(r, &|m| m.train.recall_spread()),
            "uniform_test_accuracy": stat(u, &|m| m.test.accuracy),
            "reweight_test_accuracy": stat(r, &|m| m.test.accuracy),
        })
    })
    .collect();
    serde_json::json!({"fit": fit, "gradient": gradient, "exponent_sweep": sweep, "regime": regime})
}

/// The diagnostics as plain text (printed after the comparison).
fn diagnostics_text(report: &Report) -> String {
    use std::fmt::Write;
    let d = &report.diagnostics;
    let names = &report.class_names;
    let mut out = String::new();
    let pct = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{:.1}", 100.0 * x));
    let stat = |v: &serde_json::Value| {
        let (m, s) = (v["mean"].as_f64(), v["sd"].as_f64());
        match (m, s) {
            (Some(m), Some(s)) => format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s),
            (Some(m), None) => format!("{:.1}", 100.0 * m),
            _ => "-".into(),
        }
    };
    let _ =
        writeln!(out, "Fit per method (mean over seeds): accuracy and recall spread on train / validation / test (%)");
    let _ = writeln!(out, "| method | train acc. | val acc. | test acc. | train spread | val spread | test spread |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for f in d["fit"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f["method"].as_str().unwrap_or("?"),
            stat(&f["train"]["accuracy"]),
            stat(&f["val"]["accuracy"]),
            stat(&f["test"]["accuracy"]),
            stat(&f["train"]["recall_spread"]),
            stat(&f["val"]["recall_spread"]),
            stat(&f["test"]["recall_spread"])
        );
    }
    for key in ["uniform", "reweight"] {
        let Some(f) = d["fit"].as_array().into_iter().flatten().find(|f| f["method"] == key) else { continue };
        let _ = writeln!(out, "\nPer-class recall of {key} (mean over seeds, %): train / val / test");
        let _ = writeln!(out, "| class | train | val | test |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (k, n) in names.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} |",
                pct(&f["train"]["recall"][k]),
                pct(&f["val"]["recall"][k]),
                pct(&f["test"]["recall"][k])
            );
        }
    }
    for key in ["uniform", "reweight"] {
        let Some(g) = d["gradient"].as_array().into_iter().flatten().find(|g| g["method"] == key) else { continue };
        let _ = writeln!(
            out,
            "\nTraining loss and share of the loss gradient per class, {key}: first epoch -> last epoch (share in %, \
             uniform = every sample weighted 1, weighted = as trained)"
        );
        let _ = writeln!(out, "| class | weight | loss | share (uniform) | share (weighted) |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let (a, b) = (&g["first_epoch"], &g["last_epoch"]);
        let num =
            |v: &serde_json::Value, digits: usize| v.as_f64().map_or("-".to_string(), |x| format!("{x:.digits$}"));
        for (k, n) in names.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {n} | {} | {} -> {} | {} -> {} | {} -> {} |",
                num(&b["class_weights"][k], 2),
                num(&a["class_loss"][k], 3),
                num(&b["class_loss"][k], 3),
                pct(&a["grad_share_uniform"][k]),
                pct(&b["grad_share_uniform"][k]),
                pct(&a["grad_share_weighted"][k]),
                pct(&b["grad_share_weighted"][k])
            );
        }
    }
    if d["exponent_sweep"].as_array().is_some_and(|s| s.len() > 2) {
        let _ = writeln!(out, "\nExponent sweep (weights from validation recall; test set, %):");
        let _ = writeln!(out, "| p | test acc. | worst recall | recall spread | train acc. |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        for s in d["exponent_sweep"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                s["exponent"],
                stat(&s["accuracy"]),
                stat(&s["worst_recall"]),
                stat(&s["recall_spread"]),
                stat(&s["train_accuracy"])
            );
        }
    }
    if d["regime"].as_array().is_some_and(|r| !r.is_empty()) {
        let _ = writeln!(
            out,
            "\nShort vs long training (%): does reweighting still move the test spread once the training set is fit?"
        );
        let _ = writeln!(out, "| regime | epochs | uniform train acc. | uniform test spread | reweight test spread | uniform test acc. | reweight test acc. |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for r in d["regime"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r["regime"].as_str().unwrap_or("?"),
                r["epochs"],
                stat(&r["uniform_train_accuracy"]),
                stat(&r["uniform_test_spread"]),
                stat(&r["reweight_test_spread"]),
                stat(&r["uniform_test_accuracy"]),
                stat(&r["reweight_test_accuracy"])
            );
        }
    }
    out
}
