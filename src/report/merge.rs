//! Comparisons run as several commands (merged into one table), and effects paired by seed.
//!
//! NaN is handled as in [`super::compare`]: a NaN metric of one seed is left out of the mean and
//! standard deviation over seeds ([`Stat::of`]), and a statistic with no value left prints as `-`.
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::compare::{summarize_entries, MethodSummary, Stat, METRICS};
use super::{Report, ReportError, StageReport};
use crate::methods::Method;

/// One `--compare` run read from disk: its report and what identifies its data.
#[derive(Clone, Debug)]
pub struct ComparisonRun {
    /// The report file it was read from.
    pub path: PathBuf,
    pub report: Report,
    /// The run's data fingerprint: `meta.data` of the run folder's manifest (`run.json` beside
    /// the report: source, subsets, sizes, MD5 of the records) without the folder's name (two
    /// spellings of one path must not differ), else the report's `dataset` line.
    pub data: serde_json::Value,
}

impl ComparisonRun {
    /// Reads `report.json` (or the `report.json` of a run folder) and the manifest beside it.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ReportError> {
        let path = path.as_ref();
        let path = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
        let report = super::read_report(&path)?;
        let manifest = path.with_file_name(super::run_dir::MANIFEST);
        let mut data = serde_json::Value::Null;
        if manifest.exists() {
            let bytes = std::fs::read(&manifest).map_err(|e| ReportError::io("read", &manifest, e))?;
            let meta: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|source| ReportError::Json { path: manifest.clone(), source })?;
            if let Some(fields) = meta.pointer("/meta/data").and_then(serde_json::Value::as_object) {
                let mut fields = fields.clone();
                fields.remove("dir");
                if !fields.is_empty() {
                    data = fields.into();
                }
            }
        }
        if data.is_null() {
            data = report.dataset.clone().into();
        }
        Ok(ComparisonRun { path, report, data })
    }

    fn incompatible(&self, reason: String) -> ReportError {
        ReportError::Incompatible { path: self.path.clone(), reason }
    }
}

/// The configuration fields two runs of one comparison share: all but the method list and the
/// seed. A configuration without `split_seed` split its validation set with the training seed.
fn comparable_config(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(fields) = c.as_object_mut() {
        fields.remove("compare");
        let train_seed = fields.get("train").and_then(|t| t.get("seed")).cloned().unwrap_or_default();
        fields.entry("split_seed").or_insert(train_seed);
        if let Some(train) = fields.get_mut("train").and_then(serde_json::Value::as_object_mut) {
            train.remove("seed");
        }
    }
    c
}

/// Several `--compare` runs of one experiment merged: every (method, seed) pair once.
#[derive(Clone, Debug)]
pub struct MergedComparison {
    /// The report files, in the order given.
    pub sources: Vec<PathBuf>,
    pub class_names: Vec<String>,
    /// Grouped by method key in order of first appearance, each method's seeds in ascending
    /// order.
    pub methods: Vec<StageReport>,
}

impl MergedComparison {
    /// Each method summarized over its seeds (see [`summarize_entries`]).
    pub fn summaries(&self) -> Vec<MethodSummary> {
        summarize_entries(&self.methods, self.class_names.len())
    }
}

/// Merges the methods of several `--compare` runs (e.g. more seeds run later). Refused with
/// [`ReportError::Incompatible`]: a report without methods; another configuration than the first
/// run's (every field but the method list and the seed); other data (class names and
/// [`ComparisonRun::data`]); a (method, seed) pair in two runs with different test results (the
/// CPU trainer is deterministic for a seed and thread count, so they must agree, NaN equal to
/// NaN). A pair in several runs counts once, from the first.
pub fn merge_comparisons(runs: &[ComparisonRun]) -> Result<MergedComparison, ReportError> {
    let base = runs.first().ok_or_else(|| ReportError::Invalid("no reports to merge".into()))?;
    let base_config = comparable_config(&base.report.config);
    let mut keys: Vec<&str> = Vec::new();
    let mut seen: Vec<(&StageReport, &ComparisonRun)> = Vec::new();
    for run in runs {
        let r = &run.report;
        if r.methods.is_empty() {
            return Err(run.incompatible("not a --compare run (no methods)".into()));
        }
        if comparable_config(&r.config) != base_config {
            return Err(run.incompatible(format!("another configuration than {}", base.path.display())));
        }
        if r.class_names != base.report.class_names || run.data != base.data {
            return Err(run.incompatible(format!("other data than {}", base.path.display())));
        }
        for m in &r.methods {
            let key = m.method.as_deref().unwrap_or("");
            if !keys.contains(&key) {
                keys.push(key);
            }
            match seen.iter().find(|(s, _)| s.method == m.method && s.seed == m.seed) {
                Some((first, from)) => {
                    if serde_json::to_value(&first.test).ok() != serde_json::to_value(&m.test).ok() {
                        return Err(run.incompatible(format!(
                            "method {key} seed {} differs from {}",
                            seed_label(m.seed),
                            from.path.display()
                        )));
                    }
                }
                None => seen.push((m, run)),
            }
        }
    }
    let mut methods = Vec::with_capacity(seen.len());
    for key in keys {
        let mut entries: Vec<&StageReport> =
            seen.iter().map(|(m, _)| *m).filter(|m| m.method.as_deref().unwrap_or("") == key).collect();
        entries.sort_by_key(|m| m.seed);
        methods.extend(entries.into_iter().cloned());
    }
    Ok(MergedComparison {
        sources: runs.iter().map(|r| r.path.clone()).collect(),
        class_names: base.report.class_names.clone(),
        methods,
    })
}

fn seed_label(seed: Option<u64>) -> String {
    seed.map_or_else(|| "-".into(), |s| s.to_string())
}

/// The merged comparison as Markdown: the files it came from, the summary table (mean ± sample
/// sd over seeds, percentages, spreads in points; the seeds listed) and the mean per-class test
/// recall of each method.
pub fn merged_markdown(merged: &MergedComparison) -> String {
    let sums = merged.summaries();
    let mut out = String::new();
    let sources: Vec<String> = merged.sources.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(out, "Merged from: {}\n", sources.join(", "));
    let _ = writeln!(out, "| method | seeds | {} |", METRICS.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(METRICS.len()));
    for s in &sums {
        let seeds: Vec<String> = merged
            .methods
            .iter()
            .filter(|m| m.method.as_deref().unwrap_or("") == s.key)
            .map(|m| seed_label(m.seed))
            .collect();
        let cells: Vec<String> = s.metrics.iter().map(Stat::pct).collect();
        let _ = writeln!(out, "| {} | {} | {} |", s.name, seeds.join(","), cells.join(" | "));
    }
    let _ = writeln!(out, "\nMean test recall per class (%):\n");
    let _ = writeln!(out, "| method | {} |", merged.class_names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(merged.class_names.len()));
    for s in &sums {
        let cells: Vec<String> =
            s.recall.iter().map(|r| if r.is_finite() { format!("{:.1}", 100.0 * r) } else { "-".into() }).collect();
        let _ = writeln!(out, "| {} | {} |", s.name, cells.join(" | "));
    }
    out
}

/// How one method moves the test results against another on the same seeds: OTHER minus BASE,
/// one difference per seed, summarized over the seeds ([`Stat::of`]). Changes and accuracies are
/// in percentage points.
#[derive(Clone, Debug, Serialize)]
pub struct PairedEffect {
    /// The method keys.
    pub base: String,
    pub other: String,
    /// The seeds that have both methods, ascending.
    pub seeds: Vec<u64>,
    /// Smallest and largest over the seeds of OTHER's largest class weight over its smallest.
    pub weight_ratio: (f64, f64),
    /// The mean over classes of the absolute change of a class's recall.
    pub mean_abs_recall_change: Stat,
    /// The change of the recall of the class asked for.
    pub class_recall_change: Stat,
    pub accuracy_change: Stat,
    /// Training-set accuracy of BASE and of OTHER.
    pub train_accuracy: [Stat; 2],
    /// The last epoch's mean (weighted) training loss of BASE and of OTHER (not in points).
    pub last_train_loss: [Stat; 2],
}

/// The method entries of several `--compare` reports of one experiment (e.g. other seeds run
/// later), for [`paired_effect`]: refused with [`ReportError::Incompatible`] when a report has
/// no methods, other class names than the first, or a (method, seed) pair another report has.
pub fn paired_entries(runs: &[ComparisonRun]) -> Result<Vec<StageReport>, ReportError> {
    let Some(first) = runs.first() else { return Err(ReportError::Invalid("no reports to pair".into())) };
    let mut entries: Vec<StageReport> = Vec::new();
    for run in runs {
        if run.report.methods.is_empty() {
            return Err(run.incompatible("not a --compare report (no methods)".into()));
        }
        if run.report.class_names != first.report.class_names {
            return Err(run.incompatible(format!("other classes than {}", first.path.display())));
        }
        for m in &run.report.methods {
            if entries.iter().any(|e| e.method == m.method && e.seed == m.seed) {
                return Err(run.incompatible(format!(
                    "method {} seed {} is in two reports",
                    m.method.as_deref().unwrap_or(""),
                    seed_label(m.seed)
                )));
            }
            entries.push(m.clone());
        }
    }
    Ok(entries)
}

/// OTHER minus BASE on every seed that has both methods among `entries` (entries without a seed
/// are not paired), for the class at index `class`. No such seed is
/// [`ReportError::NoPairedSeeds`]. A former method name is taken for the current one (the
/// entries were read under the current names).
pub fn paired_effect(
    entries: &[StageReport],
    base: &str,
    other: &str,
    class: usize,
) -> Result<PairedEffect, ReportError> {
    let (base, other) = (Method::canonical_key(base), Method::canonical_key(other));
    let (base, other) = (base.as_str(), other.as_str());
    let find = |key: &str, seed: u64| entries.iter().find(|m| m.method.as_deref() == Some(key) && m.seed == Some(seed));
    let mut seeds: Vec<u64> = entries
        .iter()
        .filter(|m| m.method.as_deref() == Some(other))
        .filter_map(|m| m.seed)
        .filter(|&s| find(base, s).is_some())
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    if seeds.is_empty() {
        return Err(ReportError::NoPairedSeeds { base: base.into(), other: other.into() });
    }
    let (mut ratio, mut mean_abs, mut class_change, mut accuracy) = (vec![], vec![], vec![], vec![]);
    let (mut train_acc, mut loss) = ([vec![], vec![]], [vec![], vec![]]);
    for &seed in &seeds {
        let (b, o) = (find(base, seed).expect("paired seed"), find(other, seed).expect("paired seed"));
        let (lo, hi) =
            o.class_weights.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        ratio.push(hi / lo);
        let change: Vec<f64> = o.test.recall.iter().zip(&b.test.recall).map(|(x, y)| 100.0 * (x - y)).collect();
        mean_abs.push(change.iter().map(|d| d.abs()).sum::<f64>() / change.len() as f64);
        class_change.push(change.get(class).copied().unwrap_or(f64::NAN));
        accuracy.push(100.0 * (o.test.accuracy - b.test.accuracy));
        for (k, run) in [b, o].into_iter().enumerate() {
            train_acc[k].push(100.0 * run.train.accuracy);
            loss[k].push(run.epochs.last().map_or(f64::NAN, |e| e.train_loss));
        }
    }
    let finite = ratio.iter().copied().filter(|r| !r.is_nan());
    let weight_ratio = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| (lo.min(r), hi.max(r)));
    Ok(PairedEffect {
        base: base.into(),
        other: other.into(),
        seeds,
        weight_ratio,
        mean_abs_recall_change: Stat::of(&mean_abs),
        class_recall_change: Stat::of(&class_change),
        accuracy_change: Stat::of(&accuracy),
        train_accuracy: train_acc.map(|v| Stat::of(&v)),
        last_train_loss: loss.map(|v| Stat::of(&v)),
    })
}

impl Stat {
    /// `mean ± sd` with `digits` decimals (the mean alone for one value, `-` for none); with
    /// `signed`, the mean carries its sign (`+2.5 ± 1.5`).
    pub fn fixed(&self, digits: usize, signed: bool) -> String {
        let mean = match (self.mean.is_nan(), signed) {
            (true, _) => return "-".into(),
            (false, true) => format!("{:+.*}", digits, self.mean),
            (false, false) => format!("{:.*}", digits, self.mean),
        };
        if self.sd.is_nan() {
            mean
        } else {
            format!("{mean} ± {:.*}", digits, self.sd)
        }
    }
}

/// Paired effects as a Markdown table, one row per pair; `class_name` names the class of
/// [`PairedEffect::class_recall_change`]. Points with one decimal, losses with three.
pub fn paired_markdown(effects: &[PairedEffect], class_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| base → other | seeds | weight ratio max/min | mean abs. change of a class's recall | {class_name}'s recall \
         | accuracy | train acc. base / other | last-epoch train loss base / other |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|");
    for e in effects {
        let pair = |s: &[Stat; 2], digits| format!("{} / {}", s[0].fixed(digits, false), s[1].fixed(digits, false));
        let _ = writeln!(
            out,
            "| {} → {} | {} | {:.1} to {:.1} | {} | {} | {} | {} | {} |",
            e.base,
            e.other,
            e.seeds.len(),
            e.weight_ratio.0,
            e.weight_ratio.1,
            e.mean_abs_recall_change.fixed(1, false),
            e.class_recall_change.fixed(1, true),
            e.accuracy_change.fixed(1, true),
            pair(&e.train_accuracy, 1),
            pair(&e.last_train_loss, 3),
        );
    }
    out
}
