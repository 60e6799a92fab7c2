//! Tables from the `report.json` files of `--compare` runs, as Markdown (for the docs).
//!
//! `merge RUN...`: the methods of several runs of one comparison (e.g. more seeds run later) in
//! one table, as `comparison.md` has them but with the seeds listed: mean ± sample sd over seeds.
//! Refuses runs of other data or another configuration (every field but the seed and the method
//! list), and a (method, seed) pair that two runs hold with different test results.
//!
//! `paired REPORT... BASE:OTHER... [--class cat]`: how method OTHER moves each class's test recall
//! against method BASE, paired by seed (OTHER minus BASE on the same seed), over the seeds that
//! have both in the given reports: the weight ratio, the mean absolute change of a class's
//! recall, the change of one class's recall and of accuracy, and both methods' training accuracy
//! and last-epoch training loss.
//!
//! `intervals RUN... [--base uniform]`: every method's difference from BASE on the same seed over
//! the merged runs (as `merge` merges them), with its paired 95% confidence interval (Student t,
//! n - 1 degrees of freedom) for each headline metric.
//!
//! A RUN or REPORT is a run folder or its `report.json`. A NaN metric of one seed is left out of
//! the mean and sd over seeds; a cell with no value left reads `-`.
//!
//! ```sh
//! cargo run --release --example results -- merge docs/results/2026-12-02-compare-seed0-a786a9d out/online12
//! cargo run --release --example results -- paired out/long/report.json \
//!     uniform:reweight uniform-long:reweight-long --class cat
//! ```
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use evenclass::report::{
    differences, differences_markdown, merge_comparisons, merged_markdown, paired_effect, paired_entries,
    paired_markdown, ComparisonRun,
};

#[derive(Parser, Debug)]
#[command(about = "Markdown tables from the report.json files of --compare runs")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Merge the methods of several runs of one comparison into one table.
    Merge {
        /// Run folders or their report.json files.
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Every method's paired difference from a baseline, with 95% confidence intervals.
    Intervals {
        /// Run folders or their report.json files.
        #[arg(required = true)]
        runs: Vec<String>,
        /// The method every other is compared with, seed by seed.
        #[arg(long, default_value = "uniform")]
        base: String,
    },
    /// Effects of one method against another, paired by seed.
    Paired {
        /// Reports (run folders or report.json files), then pairs of method keys BASE:OTHER.
        #[arg(required = true)]
        args: Vec<String>,
        /// The class whose recall change gets its own column.
        #[arg(long, default_value = "cat")]
        class: String,
    },
}

fn read(path: &str) -> Result<ComparisonRun> {
    ComparisonRun::read(path).with_context(|| format!("reading {path}"))
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Merge { runs } => {
            let runs = runs.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            print!("{}", merged_markdown(&merge_comparisons(&runs)?));
        }
        Command::Intervals { runs, base } => {
            let runs = runs.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            let merged = merge_comparisons(&runs)?;
            if !merged.methods.iter().any(|m| m.method.as_deref() == Some(base.as_str())) {
                bail!("no method {base:?} in these runs");
            }
            print!("{}", differences_markdown(&differences(&merged.methods, &base), &base));
        }
        Command::Paired { args, class } => {
            // An argument that names a file or folder is a report; any other is a pair.
            let (mut runs, mut pairs) = (Vec::new(), Vec::new());
            for a in &args {
                if Path::new(a).exists() {
                    runs.push(read(a)?);
                } else if let Some((base, other)) = a.split_once(':') {
                    pairs.push((base, other));
                } else {
                    bail!("{a}: no such report (file or folder), nor a pair BASE:OTHER of method keys");
                }
            }
            if runs.is_empty() || pairs.is_empty() {
                bail!("give at least one report and one pair BASE:OTHER");
            }
            let entries = paired_entries(&runs)?;
            let names = &runs[0].report.class_names;
            let Some(c) = names.iter().position(|n| *n == class) else {
                bail!("no class {class:?}; the classes are {}", names.join(", "));
            };
            let effects = pairs.iter().map(|(b, o)| paired_effect(&entries, b, o, c)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", paired_markdown(&effects, &class));
        }
    }
    Ok(())
}
