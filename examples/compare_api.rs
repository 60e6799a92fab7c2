//! A method comparison from your own code: the uniform baseline, the practitioner's reweighting,
//! an online rule and the post-hoc bias over two seeds, then the comparison table. On the
//! built-in synthetic set by default (seconds); pass a CIFAR-10 binary folder to use it instead:
//! `cargo run --release --example compare_api [-- DIR]`.
use std::process::ExitCode;

use evenclass::experiment::{self, DataSpec, ExperimentSpec, RunOptions, RunOutcome};
use evenclass::methods::Method;
use evenclass::train::CpuBackend;

fn main() -> ExitCode {
    let data = match std::env::args().nth(1) {
        Some(dir) => DataSpec { dir: Some(dir.into()), download: false, ..DataSpec::default() },
        None => DataSpec::synthetic(),
    };
    let out = std::env::temp_dir().join(format!("evenclass-compare-api-{}", std::process::id()));
    let mut spec = ExperimentSpec {
        data: DataSpec { train_subset: Some(1000), test_subset: Some(500), ..data },
        out: out.clone(),
        epochs: Some(2),
        width: Some(4),
        batch_size: Some(100),
        compare: true,
        ..ExperimentSpec::default()
    };
    spec.comparison.methods = Some(vec![Method::Reweight, Method::OnlineDro, Method::Bias]);
    spec.comparison.seeds = Some(2);
    // Our own output: the run prints nothing; we print the table.
    let opts = RunOptions { silent: true, ..RunOptions::default() };
    let result = experiment::run(&CpuBackend::new(), &spec, &opts);
    let _ = std::fs::remove_dir_all(&out);
    match result {
        Ok(RunOutcome::Finished { report, .. }) => {
            print!("{}", experiment::comparison_text(&report));
            let key = Method::Reweight.to_string();
            if let Some(m) = report.methods.iter().find(|m| m.method.as_deref() == Some(key.as_str())) {
                println!("\n{key}, seed {}: class weights {:.2?}", m.seed.unwrap_or(0), m.class_weights);
            }
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Stopped { .. }) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
