//! The comparison of methods (`Report::methods`): entries grouped by method key, each metric
//! summarized over seeds as mean and sample standard deviation, rendered as a Markdown table
//! (`comparison.md`, also printed), a CSV (`comparison.csv`) and a chart of mean per-class recall
//! (`methods.svg` / `methods.png`).
use std::fmt::Write;

use serde::Serialize;

use super::intervals::{differences, differences_markdown, HEADLINE};
use super::metric::{mean_sd, metric};
use super::{Report, ReportError, StageReport};

/// Mean and sample standard deviation (n - 1) of one metric over seeds; `sd` is NaN for one seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let (_, mean, sd) = mean_sd(values);
        Stat { mean, sd }
    }

    /// As percentage points: `78.8 ± 0.4`, or `78.8` for one seed.
    pub(super) fn pct(&self) -> String {
        self.pct_with(" ± ")
    }

    /// As percentage points with `sep` between mean and sd (`"±"` for narrow columns): `78.8±0.4`,
    /// `78.8` for one seed, `-` for none.
    pub fn pct_with(&self, sep: &str) -> String {
        if !self.mean.is_finite() {
            "-".into()
        } else if self.sd.is_finite() {
            format!("{:.1}{sep}{:.1}", 100.0 * self.mean, 100.0 * self.sd)
        } else {
            format!("{:.1}", 100.0 * self.mean)
        }
    }
}

/// The metrics of the comparison, in table order: key, column title.
pub const METRICS: [(&str, &str); 8] = [
    ("accuracy", "test acc."),
    ("balanced_accuracy", "balanced acc."),
    ("worst_recall", "worst recall"),
    ("recall_spread", "recall spread"),
    ("recall_sd", "recall sd"),
    ("macro_f1", "macro F1"),
    ("precision_spread", "precision spread"),
    ("f1_spread", "F1 spread"),
];

/// A method summarized over its seeds (test split).
#[derive(Clone, Debug, Serialize)]
pub struct MethodSummary {
    pub key: String,
    pub name: String,
    pub seeds: Vec<u64>,
    /// One [`Stat`] per column of the comparison table, in its order.
    pub metrics: Vec<Stat>,
    /// Mean test recall per class over the seeds.
    pub recall: Vec<f64>,
}

impl MethodSummary {
    pub fn get(&self, key: &str) -> Option<Stat> {
        METRICS.iter().position(|(k, _)| *k == key).map(|i| self.metrics[i])
    }
}

/// The methods of `report`, in order of first appearance, each summarized over its seeds.
pub fn summarize_methods(report: &Report) -> Vec<MethodSummary> {
    summarize_entries(&report.methods, report.class_names.len())
}

/// Method entries (one per method and seed, as in [`Report::methods`]) of `c` classes grouped
/// by method key in order of first appearance, each summarized over its seeds in the order given.
pub fn summarize_entries(methods: &[StageReport], c: usize) -> Vec<MethodSummary> {
    let mut keys: Vec<&str> = Vec::new();
    for m in methods {
        let k = m.method.as_deref().unwrap_or("");
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|key| {
            let runs: Vec<&StageReport> = methods.iter().filter(|m| m.method.as_deref().unwrap_or("") == key).collect();
            let metrics = METRICS
                .iter()
                .map(|(k, _)| Stat::of(&runs.iter().map(|r| metric(&r.test, k)).collect::<Vec<_>>()))
                .collect();
            let recall = (0..c)
                .map(|k| {
                    Stat::of(
                        &runs.iter().map(|r| r.test.recall.get(k).copied().unwrap_or(f64::NAN)).collect::<Vec<_>>(),
                    )
                    .mean
                })
                .collect();
            MethodSummary {
                key: key.to_string(),
                name: runs[0].name.clone(),
                seeds: runs.iter().filter_map(|r| r.seed).collect(),
                metrics,
                recall,
            }
        })
        .collect()
}

/// The comparison as Markdown: the summary table (mean ± sd over seeds, percentages; spreads in
/// percentage points) and mean per-class test recall per method.
pub fn comparison_markdown(report: &Report) -> String {
    let sums = summarize_methods(report);
    let mut out = String::new();
    let seeds: Vec<usize> = sums.iter().map(|s| s.seeds.len()).collect();
    let _ = writeln!(
        out,
        "Test set ({}), {} test images; mean ± sample sd over seeds ({} per method); percentages, spreads in points.\n",
        report.dataset,
        report.methods.first().map_or(0, |m| m.test.support.iter().sum::<u64>()),
        seeds.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/")
    );
    let _ = writeln!(out, "| method | seeds | {} |", METRICS.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(METRICS.len()));
    for s in &sums {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            s.name,
            s.seeds.len(),
            s.metrics.iter().map(Stat::pct).collect::<Vec<_>>().join(" | ")
        );
    }
    let diffs = differences(&report.methods, BASELINE);
    if diffs.iter().any(|d| !d.seeds.is_empty()) {
        let _ = writeln!(out, "\n{}", differences_markdown(&diffs, BASELINE));
    }
    let _ = writeln!(out, "\nMean test recall per class (%):\n");
    let _ = writeln!(out, "| method | {} |", report.class_names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(report.class_names.len()));
    for s in &sums {
        let _ = writeln!(
            out,
            "| {} | {} |",
            s.name,
            s.recall
                .iter()
                .map(|r| if r.is_finite() { format!("{:.1}", 100.0 * r) } else { "-".into() })
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    out
}

/// `comparison.csv`: one row per method and metric: mean, sd, seeds, and the value of each seed.
pub(super) fn comparison_csv(report: &Report) -> Result<Vec<u8>, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["run_id", "dataset", "method_key", "method", "metric", "mean", "sd", "seeds", "values"])?;
    for s in summarize_methods(report) {
        let runs: Vec<&StageReport> = report.methods.iter().filter(|m| m.method.as_deref() == Some(&s.key)).collect();
        for ((k, _), stat) in METRICS.iter().zip(&s.metrics) {
            let values: Vec<String> = runs.iter().map(|r| format!("{}", metric(&r.test, k))).collect();
            w.write_record([
                report.run_id.as_str(),
                report.dataset.as_str(),
                s.key.as_str(),
                s.name.as_str(),
                k,
                &stat.mean.to_string(),
                &stat.sd.to_string(),
                &s.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
                &values.join(" "),
            ])?;
        }
    }
    w.into_inner().map_err(|e| ReportError::Csv(e.into_error().into()))
}

/// The method every other is paired with in the intervals.
pub const BASELINE: &str = "uniform";

/// `intervals.csv`: one row per method other than [`BASELINE`] and headline metric: the mean
/// paired difference from the baseline, its 95% confidence interval, and the paired seeds.
pub(super) fn intervals_csv(report: &Report) -> Result<Vec<u8>, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "run_id",
        "dataset",
        "baseline",
        "method_key",
        "method",
        "metric",
        "n",
        "mean",
        "ci_lo",
        "ci_hi",
        "seeds",
    ])?;
    for d in differences(&report.methods, BASELINE) {
        for ((k, ..), i) in HEADLINE.iter().zip(&d.metrics) {
            w.write_record([
                report.run_id.as_str(),
                report.dataset.as_str(),
                BASELINE,
                d.key.as_str(),
                d.name.as_str(),
                k,
                &i.n.to_string(),
                &i.mean.to_string(),
                &i.lo.to_string(),
                &i.hi.to_string(),
                &d.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            ])?;
        }
    }
    w.into_inner().map_err(|e| ReportError::Csv(e.into_error().into()))
}

/// A report whose "stages" are the methods with their mean test recall, to draw with the stage
/// chart (one bar per method).
pub(super) fn methods_chart_report(report: &Report) -> Report {
    let sums = summarize_methods(report);
    let stages = sums
        .iter()
        .map(|s| {
            let first =
                report.methods.iter().find(|m| m.method.as_deref() == Some(&s.key)).expect("a summarized method");
            let mut test = first.test.clone();
            test.recall = s.recall.clone();
            StageReport {
                name: format!("{} (mean of {})", s.name, s.seeds.len().max(1)),
                test,
                val: None,
                ..first.clone()
            }
        })
        .collect();
    Report { stages, methods: Vec::new(), diagnostics: serde_json::Value::Null, ..report.clone() }
}
