//! Golden run: a fixed-seed small experiment gives the report numbers stored in
//! `tests/golden/experiment.json` (per stage and method: the confusion matrices of the test,
//! training and validation splits, the class weights, the epoch losses and per-class losses, and
//! the fitted biases).
//!
//! What it proves: the planner (which trainings, in which order, from which earlier stage's
//! recall) and the runner (weights from recall, iterated composition, the online hook, the
//! post-hoc bias fit, the report's assembly) compute what they computed when the file was made.
//!
//! Where the numbers can depend on the machine, and what the test does about it:
//! - the CPU thread count: the im2col convolution sums one weight-gradient partial per group of
//!   images, one group per thread. The runs execute in a rayon pool of [`THREADS`] threads.
//! - the direct 3x3 convolution kernels take AVX-512 where the CPU has it, in another summation
//!   order than AVX2: the test caps them at AVX2 (`EVENCLASS_CPU_SIMD=avx2`).
//! - the `gemm` crate (im2col convolutions) picks AVX-512 kernels at run time where the CPU has
//!   them, and nothing caps that. On a CPU whose AVX-512 support differs from the one recorded in
//!   the golden file the arithmetic differs by rounding, which training amplifies and which can
//!   flip a few argmax decisions; there the test compares with the tolerances of [`Tolerance`]
//!   (stated with their reason) instead of exactly.
//! - the `matrixmultiply` crate (linear layer) takes its AVX2 + FMA kernel on both kinds of
//!   CPU, and `exp` / `ln` come from the platform's libm: neither depends on AVX-512.
//!
//! On a CPU like the recording one (x86-64 with AVX2 + FMA, without AVX-512) every number must
//! be equal bit for bit. `EVENCLASS_WRITE_GOLDEN=1` rewrites the file instead of comparing.

mod experiment_flags;

use std::path::Path;

use evenclass::experiment::{self, RunOptions, RunOutcome};
use evenclass::report::{read_report, Metrics, Report, StageReport};
use evenclass::train::CpuBackend;
use serde::{Deserialize, Serialize};

/// The rayon pool size of the runs (results depend on it, see the module docs).
const THREADS: usize = 2;
const GOLDEN: &str = "tests/golden/experiment.json";

/// The runs: a method comparison (a reweighting, iterated reweighting, an online rule and both
/// post-hoc biases, over two seeds) and a plain two-stage run. Tiny: seconds on one core.
const COMPARE: &[&str] = &[
    "--synthetic",
    "--compare",
    "--seeds",
    "2",
    "--methods",
    "reweight,iterated,online-dro,bias,bias-budget",
    "--rounds",
    "2",
    "--eg-step",
    "1",
];
const TWO_STAGE: &[&str] = &["--synthetic", "--seed", "3", "--exponent", "2"];
const TINY: &[&str] = &[
    "--train-subset",
    "256",
    "--val-size",
    "40",
    "--test-subset",
    "100",
    "--epochs",
    "2",
    "--width",
    "2",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--quiet",
];

/// The numbers of one stage or method entry that the golden file keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    name: String,
    method: Option<String>,
    seed: Option<u64>,
    class_weights: Vec<f64>,
    bias: Option<Vec<f64>>,
    train_loss: Vec<f64>,
    /// Per epoch, the per-class training loss.
    class_loss: Vec<Vec<f64>>,
    /// Per epoch, the class weights in effect (the online rules change them).
    epoch_weights: Vec<Vec<f64>>,
    test: Vec<Vec<u64>>,
    train: Vec<Vec<u64>>,
    val: Option<Vec<Vec<u64>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run {
    flags: Vec<String>,
    stages: Vec<Entry>,
    methods: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Golden {
    /// Whether the recording CPU had AVX-512 (the `gemm` crate's kernels depend on it).
    avx512f: bool,
    threads: usize,
    runs: Vec<Run>,
}

fn entry(s: &StageReport) -> Entry {
    let m = |x: &Metrics| x.confusion.clone();
    Entry {
        name: s.name.clone(),
        method: s.method.clone(),
        seed: s.seed,
        class_weights: s.class_weights.clone(),
        bias: s.bias.clone(),
        train_loss: s.epochs.iter().map(|e| e.train_loss).collect(),
        class_loss: s.epochs.iter().map(|e| e.class_loss.clone()).collect(),
        epoch_weights: s.epochs.iter().map(|e| e.class_weights.clone()).collect(),
        test: m(&s.test),
        train: m(&s.train),
        val: s.val.as_ref().map(m),
    }
}

fn flags(run: &[&str]) -> Vec<String> {
    run.iter().chain(TINY).map(|s| s.to_string()).collect()
}

/// Runs the experiment with `flags` into `out` and reads its report back.
fn run_experiment(out: &Path, flags: &[String]) -> Report {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let spec = experiment_flags::spec_of_flags(out, &flags);
    let opts = RunOptions { quiet: true, ..Default::default() };
    match experiment::run(&CpuBackend::new(), &spec, &opts).expect("the run") {
        RunOutcome::Finished { report, .. } => {
            assert_eq!(report.run_id, read_report(out.join("report.json")).unwrap().run_id)
        }
        RunOutcome::Stopped { .. } => panic!("stopped without a stop request"),
    }
    read_report(out.join("report.json")).unwrap()
}

fn record() -> Golden {
    let t = tempfile::tempdir().unwrap();
    let runs = [COMPARE, TWO_STAGE]
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let flags = flags(run);
            let r = run_experiment(&t.path().join(format!("run{i}")), &flags);
            Run { flags, stages: r.stages.iter().map(entry).collect(), methods: r.methods.iter().map(entry).collect() }
        })
        .collect();
    Golden { avx512f: has_avx512f(), threads: THREADS, runs }
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Tolerances where the arithmetic differs from the recording CPU's (other `gemm` kernels).
/// Rounding differences of about 1e-7 grow over two epochs of SGD but stay far below 1e-2 in
/// the losses and weights of these tiny runs; a changed model would move them by more. A model
/// whose logits moved by rounding can flip the argmax of a sample near a decision boundary: at
/// most [`Tolerance::FLIPS`] samples per confusion matrix may move.
struct Tolerance;

impl Tolerance {
    const RELATIVE: f64 = 1e-2;
    const FLIPS: u64 = 3;
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= Tolerance::RELATIVE * a.abs().max(b.abs()).max(1e-3)
}

fn compare_vec(what: &str, a: &[f64], b: &[f64], exact: bool, errors: &mut Vec<String>) {
    let same = a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| if exact { x == y } else { close(x, y) });
    if !same {
        errors.push(format!("{what}: golden {a:?}, now {b:?}"));
    }
}

fn compare_matrix(what: &str, a: &[Vec<u64>], b: &[Vec<u64>], exact: bool, errors: &mut Vec<String>) {
    let shape = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
    // Each flipped sample leaves one cell and enters another: half the L1 distance.
    let moved: u64 = a.iter().flatten().zip(b.iter().flatten()).map(|(&x, &y)| x.abs_diff(y)).sum::<u64>() / 2;
    let rows_same = a.iter().zip(b).all(|(x, y)| x.iter().sum::<u64>() == y.iter().sum::<u64>());
    if !shape || !rows_same || moved > if exact { 0 } else { Tolerance::FLIPS } {
        errors.push(format!("{what}: golden {a:?}, now {b:?}"));
    }
}

fn compare_entry(what: &str, a: &Entry, b: &Entry, exact: bool, errors: &mut Vec<String>) {
    if (&a.name, &a.method, a.seed) != (&b.name, &b.method, b.seed) {
        errors.push(format!(
            "{what}: golden {:?}, now {:?}",
            (&a.name, &a.method, a.seed),
            (&b.name, &b.method, b.seed)
        ));
        return;
    }
    let w = |f: &str| format!("{what} ({}) {f}", a.name);
    compare_vec(&w("class_weights"), &a.class_weights, &b.class_weights, exact, errors);
    match (&a.bias, &b.bias) {
        (Some(x), Some(y)) => compare_vec(&w("bias"), x, y, exact, errors),
        (None, None) => {}
        _ => errors.push(w("bias: present in one only")),
    }
    compare_vec(&w("train_loss"), &a.train_loss, &b.train_loss, exact, errors);
    if a.class_loss.len() != b.class_loss.len() || a.epoch_weights.len() != b.epoch_weights.len() {
        errors.push(w("epoch count"));
        return;
    }
    for (e, (x, y)) in a.class_loss.iter().zip(&b.class_loss).enumerate() {
        compare_vec(&w(&format!("epoch {e} class_loss")), x, y, exact, errors);
    }
    for (e, (x, y)) in a.epoch_weights.iter().zip(&b.epoch_weights).enumerate() {
        compare_vec(&w(&format!("epoch {e} class_weights")), x, y, exact, errors);
    }
    compare_matrix(&w("test confusion"), &a.test, &b.test, exact, errors);
    compare_matrix(&w("train confusion"), &a.train, &b.train, exact, errors);
    match (&a.val, &b.val) {
        (Some(x), Some(y)) => compare_matrix(&w("val confusion"), x, y, exact, errors),
        (None, None) => {}
        _ => errors.push(w("val: present in one only")),
    }
}

#[test]
fn a_fixed_seed_run_gives_the_golden_numbers() {
    // Before any convolution runs (the cap is read once per process).
    std::env::set_var("EVENCLASS_CPU_SIMD", "avx2");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().unwrap();
    let now = pool.install(record);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("EVENCLASS_WRITE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = serde_json::to_vec_pretty(&now).unwrap();
        bytes.push(b'\n');
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let golden: Golden = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let exact = golden.avx512f == now.avx512f;
    let mut errors = Vec::new();
    assert_eq!(golden.runs.len(), now.runs.len());
    for (a, b) in golden.runs.iter().zip(&now.runs) {
        assert_eq!(a.flags, b.flags);
        let run = a.flags.join(" ");
        assert_eq!(a.stages.len(), b.stages.len(), "{run}: stages");
        assert_eq!(a.methods.len(), b.methods.len(), "{run}: methods");
        for (i, (x, y)) in a.stages.iter().zip(&b.stages).enumerate() {
            compare_entry(&format!("stage {i}"), x, y, exact, &mut errors);
        }
        for (i, (x, y)) in a.methods.iter().zip(&b.methods).enumerate() {
            compare_entry(&format!("method {i}"), x, y, exact, &mut errors);
        }
    }
    assert!(
        errors.is_empty(),
        "{} differences ({}):\n{}",
        errors.len(),
        if exact { "exact comparison" } else { "other AVX-512 support: with tolerance" },
        errors.join("\n")
    );
}
