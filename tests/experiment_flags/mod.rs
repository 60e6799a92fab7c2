//! The experiment's command-line flags as an [`ExperimentSpec`], the way `examples/cifar10.rs`
//! maps them (the tests describe their runs with the flags a user would type).
use std::path::Path;

use evenclass::experiment::ExperimentSpec;
use evenclass::methods::{Method, RecallSplit};

/// The spec of the command line `--out OUT FLAGS...` (`--device cpu` and `--quiet` are options
/// of the run, not of the spec, and are skipped).
pub fn spec_of_flags(out: &Path, flags: &[&str]) -> ExperimentSpec {
    let mut s = ExperimentSpec { out: out.to_path_buf(), ..Default::default() };
    let mut it = flags.iter().copied();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let c = &mut s.comparison;
        match flag {
            "--quiet" => {}
            "--device" => assert_eq!(value(), "cpu", "the tests run on the CPU"),
            "--synthetic" => s.data.synthetic = true,
            "--data-dir" => s.data.dir = Some(value().into()),
            "--train-subset" => s.data.train_subset = Some(value().parse().unwrap()),
            "--test-subset" => s.data.test_subset = Some(value().parse().unwrap()),
            "--overwrite" => s.overwrite = true,
            "--resume" => s.resume = true,
            "--stage2-only" => s.stage2_only = true,
            "--no-augment" => s.no_augment = true,
            "--compare" => s.compare = true,
            "--epochs" => s.epochs = Some(value().parse().unwrap()),
            "--width" => s.width = Some(value().parse().unwrap()),
            "--depth" => s.depth = Some(value().parse().unwrap()),
            "--batch-size" => s.batch_size = Some(value().parse().unwrap()),
            "--lr" => s.lr = Some(value().parse().unwrap()),
            "--exponent" => s.exponent = value().parse().unwrap(),
            "--seed" => s.seed = value().parse().unwrap(),
            "--val-size" => s.val_size = Some(value().parse().unwrap()),
            "--weights-from" => s.weights_from = if value() == "test" { RecallSplit::Test } else { RecallSplit::Val },
            "--methods" => c.methods = Some(value().split(',').map(|m| m.parse::<Method>().unwrap()).collect()),
            "--seeds" => c.seeds = Some(value().parse().unwrap()),
            "--rounds" => c.rounds = Some(value().parse().unwrap()),
            "--sweep" => c.sweep = value().split(',').map(|p| p.parse().unwrap()).collect(),
            "--long-epochs" => c.long_epochs = Some(value().parse().unwrap()),
            "--eg-step" => c.eg_step = Some(value().parse().unwrap()),
            "--tau" => c.tau = Some(value().parse().unwrap()),
            "--cdb-dynamic" => c.cdb_dynamic = true,
            "--drw-epochs" => c.drw_epochs = Some(value().parse().unwrap()),
            "--vs-gamma" => c.vs_gamma = Some(value().parse().unwrap()),
            "--vs-tau" => c.vs_tau = Some(value().parse().unwrap()),
            "--cdt-gamma" => c.cdt_gamma = Some(value().parse().unwrap()),
            "--strong-wd" => c.strong_wd = Some(value().parse().unwrap()),
            "--bias-budget" => c.bias_budget = Some(value().parse().unwrap()),
            "--crt-epochs" => c.crt_epochs = Some(value().parse().unwrap()),
            other => panic!("flag {other} is not mapped"),
        }
    }
    s
}
