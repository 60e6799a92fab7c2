//! The command line of `evenclass::experiment` (the practitioner's reweighting experiment on CIFAR-10): flags into
//! an `ExperimentSpec`, the device, Ctrl-C, exit status. `cargo run --release --example cifar10 -- --help`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use clap::builder::PossibleValue;
use clap::{Parser, ValueEnum};
use evenclass::cuda::ActDtype;
use evenclass::experiment::{self, CompareSpec, DataSpec, ExperimentError, ExperimentSpec, RunOptions, RunOutcome};
use evenclass::methods::{Method, RecallSplit};
use evenclass::train::{CpuBackend, CudaBackend};

/// A method on the command line: the library's names and help.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct MethodArg(Method);

impl ValueEnum for MethodArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: OnceLock<Vec<MethodArg>> = OnceLock::new();
        ALL.get_or_init(|| Method::ALL.map(MethodArg).to_vec())
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()).help(self.0.help()).aliases(self.0.aliases().iter().copied()))
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "Two-stage class-reweighting experiment on CIFAR-10 (evenclass)",
    long_about = experiment::LONG_HELP,
    max_term_width = 80
)]
struct Args {
    /// CIFAR-10 binary folder (must exist) [default: $CIFAR10_DIR, else data/cifar-10-batches-bin, downloaded when
    /// missing (170 MB), else the built-in synthetic set (announced loudly)].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Output folder; it always holds one complete run.
    #[arg(long, value_name = "DIR", default_value = "out/cifar10")]
    out: PathBuf,
    /// Replace the finished run in --out (or discard an interrupted one).
    #[arg(long)]
    overwrite: bool,
    /// Continue the interrupted run of --out from its last checkpoint (same flags as before).
    #[arg(long, conflicts_with = "stage2_only")]
    resume: bool,
    /// Where to train: auto (a usable GPU, else the CPU), cpu (all cores) or cuda (GPU 0; an error if unusable).
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// CUDA convolutions: fp32 (default, as the published runs), tf32, bf16, auto (tf32 on sm_80+)
    #[arg(long, value_name = "P", default_value = "fp32", value_parser = ["fp32", "tf32", "bf16", "auto"])]
    conv_precision: String,
    /// Activations between layers: f32 (default), or bf16 (mixed precision: f32 weights, loss and
    /// arithmetic; GPU only, the CPU path is f32)
    #[arg(long, value_name = "P", default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
    /// Epochs per stage, 1 to 10000 [default: 8 on the CPU, 30 on a GPU].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Training batch size, 1 to 8192, at most the training images [default: 256 on the CPU, 512 on a GPU].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Peak learning rate, finite and in (0, 100] [default: 0.2 x batch size / 256].
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Channels of the stem, 1 to 1024; the three stages use 2x, 4x, 8x [default: 16 on the CPU, 64 on a GPU].
    #[arg(long, value_name = "N")]
    width: Option<usize>,
    /// Convolutions per stage, 1 to 16 [default: 1 on the CPU, 2 on a GPU].
    #[arg(long, value_name = "N")]
    depth: Option<usize>,
    /// Exponent p of the stage-2 weights w_c = (mean(r) / r_c)^p, in [-8, 8] (negative: --exponent -3).
    #[arg(long, value_name = "P", default_value_t = 4.0, allow_negative_numbers = true)]
    exponent: f64,
    /// Seed of initialization, shuffling, augmentation and synthetic set (same seed and CPU threads: same run).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only (quick runs), N >= 1.
    #[arg(long, value_name = "N")]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only (quick runs), N >= 1.
    #[arg(long, value_name = "N")]
    test_subset: Option<usize>,
    /// Use the built-in synthetic dataset (shapes and textures, NOT CIFAR-10) instead of CIFAR-10.
    #[arg(long, conflicts_with = "data_dir")]
    synthetic: bool,
    /// Never download CIFAR-10; at the default location fall back to the synthetic set.
    #[arg(long)]
    no_download: bool,
    /// Train without augmentation (no random crop, no flip), e.g. to let a network fit its training set.
    #[arg(long)]
    no_augment: bool,
    /// Reuse stage 1 of the finished run in --out (same data and flags, checked) and run stage 2 again (another -p).
    #[arg(long)]
    stage2_only: bool,
    /// No progress bars (the plan and the per-epoch summaries still print).
    #[arg(long)]
    quiet: bool,
    /// Images held out of the training set (stratified, --split-seed) to fit per-class weights and biases on; 0 for
    /// none (then only --weights-from test works) [default: a tenth of the training images, at most 5000].
    #[arg(long, value_name = "N")]
    val_size: Option<usize>,
    /// Seed of the validation split [default: --seed]; fix it to compare runs of other seeds on the same split.
    #[arg(long, value_name = "N")]
    split_seed: Option<u64>,
    /// Where stage 2's weights come from: validation recall, or TEST recall (the practitioner's original recipe).
    #[arg(long, value_name = "SPLIT", default_value = "val", value_parser = ["val", "test"])]
    weights_from: String,
    /// Compare the methods of --methods over --seeds seeds (comparison.md, comparison.csv, methods.svg/.png too).
    #[arg(long, conflicts_with = "stage2_only")]
    compare: bool,
    /// With --compare: the methods (comma-separated; the uniform baseline is always included) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    methods: Vec<MethodArg>,
    /// Seeds per method with --compare: --seed, --seed + 1, ... [default: 3 with --compare, else 1].
    #[arg(long, value_name = "N")]
    seeds: Option<usize>,
    /// With --compare: rounds of iterated reweighting (round 1 is the practitioner's recipe), 2 to 10 [default: 3].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// With --compare: step eta of online-dro, w_c *= exp(eta * val. loss_c) after each epoch [default: 0.3].
    #[arg(long, value_name = "ETA")]
    eg_step: Option<f64>,
    /// With --compare: exponent tau of the online difficulty weights (1 - validation recall)^tau [default: 1].
    #[arg(long, value_name = "TAU")]
    tau: Option<f64>,
    /// With --compare: online-difficulty with CDB's dynamic tau = 2 sigmoid(max r / (min r + 0.01) - 1), not --tau.
    #[arg(long, conflicts_with = "tau")]
    cdb_dynamic: bool,
    /// With --compare: epochs K that drw trains reweighted (its last K), 1 to epochs - 1 [default: ceil(epochs / 5)].
    #[arg(long, value_name = "K")]
    drw_epochs: Option<usize>,
    /// With --compare: vs-loss's gamma, logit scale (val. recall_c / max)^gamma, 0 to 4 [default: 0.15].
    #[arg(long, value_name = "GAMMA")]
    vs_gamma: Option<f64>,
    /// With --compare: vs-loss's tau, logit offset tau ln(val. recall_c / sum), 0 to 4 [default: 1.25].
    #[arg(long, value_name = "TAU")]
    vs_tau: Option<f64>,
    /// With --compare: cdt's gamma, temperature (max / val. recall_c)^gamma, 0 to 4 [default: 0.2].
    #[arg(long, value_name = "GAMMA")]
    cdt_gamma: Option<f64>,
    /// With --compare: weight decay of reweight-wd and uniform-wd [default: 5e-3; the usual one is 5e-4].
    #[arg(long, value_name = "WD")]
    strong_wd: Option<f64>,
    /// With --compare: also reweight with these exponents (comma-separated, each in [-8, 8]): the exponent sweep.
    #[arg(long, value_name = "LIST", value_delimiter = ',', allow_negative_numbers = true)]
    sweep: Vec<f64>,
    /// With --compare: accuracy budget of bias-budget and bias-f1-budget, in points of validation accuracy [default: 1].
    #[arg(long, value_name = "POINTS")]
    bias_budget: Option<f64>,
    /// With --compare: also train uniform, reweight (and reweight-wd, uniform-wd if chosen) for N epochs (fit regime).
    #[arg(long, value_name = "N")]
    long_epochs: Option<usize>,
    /// With --compare: epochs of crt's last-layer retraining on frozen features, 1 to 1000 [default: 10].
    #[arg(long, value_name = "N")]
    crt_epochs: Option<usize>,
}

impl Args {
    fn spec(&self) -> ExperimentSpec {
        ExperimentSpec {
            data: DataSpec {
                dir: self.data_dir.clone(),
                synthetic: self.synthetic,
                download: !self.no_download,
                train_subset: self.train_subset,
                test_subset: self.test_subset,
            },
            out: self.out.clone(),
            overwrite: self.overwrite,
            resume: self.resume,
            stage2_only: self.stage2_only,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            width: self.width,
            depth: self.depth,
            exponent: self.exponent,
            seed: self.seed,
            no_augment: self.no_augment,
            val_size: self.val_size,
            split_seed: self.split_seed,
            weights_from: if self.weights_from == "test" { RecallSplit::Test } else { RecallSplit::Val },
            compare: self.compare,
            comparison: CompareSpec {
                methods: (!self.methods.is_empty()).then(|| self.methods.iter().map(|m| m.0).collect()),
                seeds: self.seeds,
                rounds: self.rounds,
                eg_step: self.eg_step,
                tau: self.tau,
                cdb_dynamic: self.cdb_dynamic,
                drw_epochs: self.drw_epochs,
                strong_wd: self.strong_wd,
                vs_gamma: self.vs_gamma,
                vs_tau: self.vs_tau,
                cdt_gamma: self.cdt_gamma,
                sweep: self.sweep.clone(),
                bias_budget: self.bias_budget,
                long_epochs: self.long_epochs,
                crt_epochs: self.crt_epochs,
            },
        }
    }
}

/// The run on GPU 0 with activations of type `A`; `Err` is the exit status when the GPU cannot be
/// opened or the convolution precision is refused (the message printed).
fn run_cuda<A: ActDtype>(args: &Args, opts: &RunOptions) -> Result<Result<RunOutcome, ExperimentError>, ExitCode> {
    let be = match CudaBackend::<A>::open(0) {
        Ok(be) => be,
        Err(e) => {
            eprintln!("error: opening the GPU (try --device cpu): {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    match args.conv_precision.parse().and_then(|a| be.with_conv_algo(a)) {
        Ok(be) => Ok(experiment::run(&be, &args.spec(), opts)),
        Err(e) => {
            eprintln!("error: --conv-precision {}: {e}", args.conv_precision);
            Err(ExitCode::FAILURE)
        }
    }
}

/// Ctrl-C presses so far (the handler counts; the run reads [`STOP`]).
static PRESSES: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse(); // invalid flags: message and exit status 2
    if let Err(e) = ctrlc::set_handler(|| {
        if PRESSES.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("\ninterrupt again: quitting now (the last epoch's checkpoint is kept)");
            evenclass::report::run_dir::remove_held_lock_files();
            std::process::exit(130);
        }
        STOP.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to quit now)");
    }) {
        eprintln!("warning: cannot handle Ctrl-C ({e}); an interrupt will lose the epoch in progress");
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let opts = RunOptions { stop: Some(&STOP), quiet: args.quiet, silent: false, command };
    let gpu = evenclass::cuda::wants_gpu(&args.device);
    if args.precision == "bf16" && !gpu {
        let why = match args.device.as_str() {
            "cpu" => "--device cpu runs on the CPU".to_string(),
            _ => evenclass::cuda::why_not_usable().unwrap_or_else(|| "no usable GPU".to_string()),
        };
        // Two lines: the reason (a driver message) can be long; the first line fits 80 columns.
        eprintln!("error: --precision bf16 is for the GPU; the CPU path is f32 only\n  ({why})");
        return ExitCode::from(2);
    }
    let outcome = if !gpu {
        experiment::run(&CpuBackend::new(), &args.spec(), &opts)
    } else if args.precision == "bf16" {
        match run_cuda::<half::bf16>(&args, &opts) {
            Ok(outcome) => outcome,
            Err(code) => return code,
        }
    } else {
        match run_cuda::<f32>(&args, &opts) {
            Ok(outcome) => outcome,
            Err(code) => return code,
        }
    };
    match outcome {
        Ok(RunOutcome::Finished { .. }) => ExitCode::SUCCESS,
        Ok(RunOutcome::Stopped { stage, checkpoint }) => {
            let cmd = experiment::resume_command("cargo run --release --example cifar10 --", std::env::args().skip(1));
            let ck = checkpoint.display();
            eprintln!("stopped: {stage} is checkpointed in {ck}\nto continue, run:\n  {cmd}");
            ExitCode::from(130)
        }
        // A bad flag or spec: exit status 2, as for clap's errors.
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
