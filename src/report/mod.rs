//! The output side of a multi-stage training experiment (feature `trainer`).
//!
//! A run trains one model per *stage* (e.g. stage 1 with uniform class weights, stage 2 with
//! weights derived from stage 1's per-class recall) and records, per stage, the class weights, the
//! epoch log and the metrics on the test and train splits. [`write_all`] turns a [`Report`] into
//!
//! - `report.json`: the whole report, pretty-printed (read back with [`read_report`]);
//! - `per_class.csv`: one row per stage × split × class (with the run id and the dataset);
//! - `recall.svg` / `recall.png`: grouped bar chart of test-set recall per class, one bar per
//!   stage (stage 1 blue, stage 2 orange, then the other matplotlib "tab10" colours);
//!
//! and [`terminal_table`] renders the same numbers as plain text. Every file is written to a
//! temporary file in the output directory and renamed into place, so a crash never leaves a
//! truncated file behind. Text is rendered with DejaVu Sans embedded in the binary, so charts
//! need no system fonts.

mod chart;
mod compare;
mod diff;
pub mod run_dir;
mod table;

use crate::confusion::ConfusionMatrix;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use chart::{chart_class_labels, CHART_HEIGHT, CHART_TITLE, CHART_WIDTH, STAGE_COLORS};
pub use compare::{
    comparison_markdown, merge_comparisons, merged_markdown, paired_effect, paired_entries, paired_markdown,
    summarize_entries, summarize_methods, ComparisonRun, MergedComparison, MethodSummary, PairedEffect, Stat,
};
pub use diff::{describe_diffs, diff_fields, FieldDiff};
pub use table::terminal_table;

/// Errors while validating, writing or reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report is inconsistent (lengths that do not match the number of classes, no stages...).
    #[error("invalid report: {0}")]
    Invalid(String),

    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `report.json` could not be encoded or parsed.
    #[error("JSON error in {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The CSV writer failed.
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),

    /// Another live run holds the output folder's lock.
    #[error(
        "{} is in use by another run ({}; lock {}): wait for it to finish, or choose another --out",
        out.display(),
        if holder.is_empty() { "holder unknown" } else { holder.as_str() },
        lock.display()
    )]
    Locked { out: PathBuf, lock: PathBuf, holder: String },

    /// Reports that cannot be merged or paired: not a comparison, another configuration, other
    /// data, or a (method, seed) pair that two of them hold differently.
    #[error("{}: {reason}", path.display())]
    Incompatible { path: PathBuf, reason: String },

    /// No seed has both methods of a pair.
    #[error("no seed has both {base:?} and {other:?}")]
    NoPairedSeeds { base: String, other: String },

    /// Drawing the chart failed.
    #[error("chart error: {0}")]
    Chart(String),

    /// Encoding the PNG failed.
    #[error("PNG encoding error: {0}")]
    Png(#[from] png::EncodingError),
}

impl ReportError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ReportError::Io { action, path: path.to_path_buf(), source }
    }
}

/// Metrics of one model on one split (test or train), per class and overall.
///
/// All per-class vectors have one entry per class; `confusion[t][p]` counts samples of true class
/// `t` predicted as `p`. Ratios are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub accuracy: f64,
    /// Mean of the per-class recalls (over classes that occur in the split).
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub balanced_accuracy: f64,
    /// True-positive rate per class: `confusion[c][c] / support[c]`.
    #[serde(deserialize_with = "de::vec_f64_or_nan")]
    pub recall: Vec<f64>,
    /// `confusion[c][c] / (column sum c)`.
    #[serde(deserialize_with = "de::vec_f64_or_nan")]
    pub precision: Vec<f64>,
    #[serde(deserialize_with = "de::vec_f64_or_nan")]
    pub f1: Vec<f64>,
    /// Samples per true class (row sums of `confusion`).
    pub support: Vec<u64>,
    /// `C × C`, row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl SplitMetrics {
    /// Derive every metric from a `C × C` confusion matrix (row = true class, column = predicted),
    /// with [`ConfusionMatrix::metrics`]: divisions by zero give 0 (scikit-learn's
    /// `zero_division=0`), balanced accuracy averages recall over the classes that occur.
    pub fn from_confusion(confusion: Vec<Vec<u64>>) -> Result<Self, ReportError> {
        let c = confusion.len();
        if let Some((t, row)) = confusion.iter().enumerate().find(|(_, row)| row.len() != c) {
            return Err(ReportError::Invalid(format!(
                "confusion matrix is not square: row {t} has {} entries, expected {c}",
                row.len()
            )));
        }
        let m = ConfusionMatrix::from_counts(c, confusion.concat())
            .map_err(|e| ReportError::Invalid(format!("confusion matrix: {e}")))?;
        Ok(Self::from_matrix(&m))
    }

    /// Every metric of a [`ConfusionMatrix`].
    pub fn from_matrix(m: &ConfusionMatrix) -> Self {
        let metrics = m.metrics();
        SplitMetrics {
            accuracy: metrics.accuracy,
            balanced_accuracy: metrics.balanced_accuracy,
            recall: metrics.recall,
            precision: metrics.precision,
            f1: metrics.f1,
            support: metrics.support,
            confusion: m.counts().chunks(m.classes()).map(<[u64]>::to_vec).collect(),
        }
    }

    /// Number of classes (length of the per-class vectors).
    pub fn classes(&self) -> usize {
        self.recall.len()
    }

    /// The lowest per-class recall (NaN entries ignored; NaN if there is none).
    pub fn worst_recall(&self) -> f64 {
        self.worst_class().map_or(f64::NAN, |k| self.recall[k])
    }

    /// The class with the lowest recall (first one on ties; NaN entries ignored).
    pub fn worst_class(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (k, &r) in self.recall.iter().enumerate() {
            if !r.is_nan() && best.is_none_or(|b| r < self.recall[b]) {
                best = Some(k);
            }
        }
        best
    }

    /// Highest minus lowest per-class recall (NaN entries ignored; NaN if there is none).
    pub fn recall_spread(&self) -> f64 {
        let finite = self.recall.iter().copied().filter(|r| !r.is_nan());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| (lo.min(r), hi.max(r)));
        if lo <= hi {
            hi - lo
        } else {
            f64::NAN
        }
    }

    /// Unweighted mean of the per-class recalls (NaN entries ignored; NaN if there is none).
    pub fn mean_recall(&self) -> f64 {
        mean_ignoring_nan(&self.recall)
    }

    fn check(&self, classes: usize, what: &str) -> Result<(), ReportError> {
        let lens = [
            ("recall", self.recall.len()),
            ("precision", self.precision.len()),
            ("f1", self.f1.len()),
            ("support", self.support.len()),
            ("confusion", self.confusion.len()),
        ];
        for (name, len) in lens {
            if len != classes {
                return Err(ReportError::Invalid(format!("{what}.{name} has {len} entries, expected {classes}")));
            }
        }
        if let Some((t, row)) = self.confusion.iter().enumerate().find(|(_, row)| row.len() != classes) {
            return Err(ReportError::Invalid(format!(
                "{what}.confusion row {t} has {} entries, expected {classes}",
                row.len()
            )));
        }
        Ok(())
    }
}

/// One training epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 0-based or 1-based, as the trainer counts; written as given.
    pub epoch: usize,
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub lr: f64,
    /// May be NaN if training diverged (written as `null`, read back as NaN).
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub train_loss: f64,
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub train_accuracy: f64,
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub seconds: f64,
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub images_per_second: f64,
    /// Present on epochs where the test set was evaluated (runs monitored on the test set: those
    /// without a validation split, and logs written before the validation split was monitored).
    pub test_accuracy: Option<f64>,
    /// Present on epochs where the validation split was evaluated.
    #[serde(default)]
    pub val_accuracy: Option<f64>,
    /// The class weights of the loss during this epoch (they change between epochs under an
    /// online rule). Empty in logs written before they were recorded.
    #[serde(default, deserialize_with = "de::vec_f64_or_nan")]
    pub class_weights: Vec<f64>,
    /// Per class: mean (unweighted) cross-entropy of its training samples over the epoch, as
    /// the network saw them (augmented, train-mode batch norm). Empty in older logs.
    #[serde(default, deserialize_with = "de::vec_f64_or_nan")]
    pub class_loss: Vec<f64>,
    /// Per class: its share of the summed gradient norm at the logits, `sum_i ||p_i - y_i||`
    /// over its samples, with every class weighted 1 (what a uniform loss would push). Sums to 1.
    #[serde(default, deserialize_with = "de::vec_f64_or_nan")]
    pub grad_share_uniform: Vec<f64>,
    /// The same share with each sample scaled by its class weight (what this epoch's weighted
    /// loss actually pushed). Equal to `grad_share_uniform` when the weights are uniform.
    #[serde(default, deserialize_with = "de::vec_f64_or_nan")]
    pub grad_share_weighted: Vec<f64>,
}

/// One trained model: its class weights, epoch log and final metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Shown in the chart legend and the table, e.g. `"stage 1: uniform"`.
    pub name: String,
    /// The loss weight of each class used in this stage.
    #[serde(deserialize_with = "de::vec_f64_or_nan")]
    pub class_weights: Vec<f64>,
    /// Wall-clock training time of the stage.
    #[serde(deserialize_with = "de::f64_or_nan")]
    pub seconds: f64,
    pub epochs: Vec<EpochLog>,
    pub test: SplitMetrics,
    pub train: SplitMetrics,
    /// Metrics on the validation split held out of the training set (absent when there was
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<SplitMetrics>,
    /// The seed of this training (initialization, order, augmentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// In [`Report::methods`]: the method's key (e.g. `"bias"`); entries with the same key are
    /// the same method on other seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// In [`Report::methods`]: the key of the trained model the method evaluates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A per-class logit bias applied at prediction (`argmax_c(logit_c + bias[c])`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<Vec<f64>>,
}

impl StageReport {
    /// Every per-class vector has `classes` entries (weights, bias, each split's metrics).
    fn check(&self, classes: usize, what: &str) -> Result<(), ReportError> {
        let lens = [("class_weights", Some(self.class_weights.len())), ("bias", self.bias.as_ref().map(Vec::len))];
        for (name, len) in lens {
            if let Some(len) = len.filter(|&l| l != classes) {
                return Err(ReportError::Invalid(format!("{what}: {name} has {len} entries, expected {classes}")));
            }
        }
        self.test.check(classes, &format!("{what}: test"))?;
        self.train.check(classes, &format!("{what}: train"))?;
        match &self.val {
            Some(v) => v.check(classes, &format!("{what}: val")),
            None => Ok(()),
        }
    }
}

/// The whole experiment. `report.json` is this struct serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// E.g. `"cifar10"`.
    pub dataset: String,
    /// E.g. `"NVIDIA H200 (CUDA 13.0, bf16)"`.
    pub device: String,
    /// The trainer's configuration (hyper-parameters, seeds, exponent `p`...), free-form.
    pub config: serde_json::Value,
    pub class_names: Vec<String>,
    pub stages: Vec<StageReport>,
    /// The command line that produced the report.
    pub command: String,
    /// Creation time, RFC 3339 in UTC (see [`utc_now_rfc3339`]).
    pub created_utc: String,
    /// The run's id (see [`run_dir`]); also in the CSV and the charts' metadata. Empty in
    /// reports written before run ids existed.
    #[serde(default)]
    pub run_id: String,
    /// Whether the data were the synthetic stand-in, not CIFAR-10 (also said in the chart's
    /// title, the CSV's `dataset` column and `dataset`).
    #[serde(default)]
    pub synthetic: bool,
    /// The methods compared (`--compare`): one entry per method and seed, each in the stage
    /// schema (metrics on test, train and validation), grouped and summarized by
    /// [`summarize_methods`]. Empty for a plain run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<StageReport>,
    /// Diagnostics of a comparison (free-form; see the trainer's documentation).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub diagnostics: serde_json::Value,
}

impl Report {
    /// Check that the report has at least one class and one stage and that every per-class
    /// vector has one entry per class name (and every confusion matrix is `C × C`).
    pub fn validate(&self) -> Result<(), ReportError> {
        let c = self.class_names.len();
        if c == 0 {
            return Err(ReportError::Invalid("no class names".into()));
        }
        if self.stages.is_empty() {
            return Err(ReportError::Invalid("no stages".into()));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            stage.check(c, &format!("stage {i} ({:?})", stage.name))?;
        }
        for (i, m) in self.methods.iter().enumerate() {
            let what = format!("method {i} ({:?})", m.name);
            if m.method.as_deref().is_none_or(str::is_empty) {
                return Err(ReportError::Invalid(format!("{what}: no method key")));
            }
            m.check(c, &what)?;
        }
        Ok(())
    }

    /// The stage with this name, if any.
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// The current time as RFC 3339 in UTC with whole seconds, e.g. `2025-01-31T12:00:00Z`.
pub fn utc_now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The files written by [`write_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFiles {
    pub json: PathBuf,
    pub csv: PathBuf,
    pub svg: PathBuf,
    pub png: PathBuf,
}

/// Validate `report`, create `out_dir` (and its parents) and write `report.json`,
/// `per_class.csv`, `recall.svg` and `recall.png` into it, each atomically (temporary file in
/// `out_dir`, flushed to disk, then renamed over the target). The files are written in that
/// order, so if the chart fails the JSON and CSV are already in place.
pub fn write_all(report: &Report, out_dir: &Path) -> Result<WrittenFiles, ReportError> {
    report.validate()?;
    fs::create_dir_all(out_dir).map_err(|e| ReportError::io("create directory", out_dir, e))?;
    let files = WrittenFiles {
        json: out_dir.join("report.json"),
        csv: out_dir.join("per_class.csv"),
        svg: out_dir.join("recall.svg"),
        png: out_dir.join("recall.png"),
    };

    let mut json =
        serde_json::to_vec_pretty(report).map_err(|source| ReportError::Json { path: files.json.clone(), source })?;
    json.push(b'\n');
    write_atomic(&files.json, &json)?;

    write_atomic(&files.csv, &per_class_csv(report)?)?;
    write_atomic(&files.svg, chart::render_svg(report)?.as_bytes())?;
    write_atomic(&files.png, &chart::render_png(report)?)?;
    if !report.methods.is_empty() {
        write_atomic(&out_dir.join("comparison.md"), comparison_markdown(report).as_bytes())?;
        write_atomic(&out_dir.join("comparison.csv"), &compare::comparison_csv(report)?)?;
        let chart = compare::methods_chart_report(report);
        write_atomic(&out_dir.join("methods.svg"), chart::render_svg(&chart)?.as_bytes())?;
        write_atomic(&out_dir.join("methods.png"), &chart::render_png(&chart)?)?;
    }
    Ok(files)
}

/// Read a `report.json` written by [`write_all`] and validate it.
pub fn read_report(path: impl AsRef<Path>) -> Result<Report, ReportError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| ReportError::io("read", path, e))?;
    let report: Report =
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Json { path: path.to_path_buf(), source })?;
    report.validate()?;
    Ok(report)
}

/// The CSV text of `per_class.csv`: header, then one row per stage × split (test, train, and
/// val when there is one) × class, then the same for every method entry (its `stage` column
/// reads `method: NAME (seed S)`).
fn per_class_csv(report: &Report) -> Result<Vec<u8>, ReportError> {
    #[derive(Serialize)]
    struct Row<'a> {
        run_id: &'a str,
        dataset: &'a str,
        stage: &'a str,
        split: &'a str,
        class_index: usize,
        class_name: &'a str,
        support: u64,
        recall: f64,
        precision: f64,
        f1: f64,
        class_weight: f64,
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let method_names: Vec<String> = report
        .methods
        .iter()
        .map(|m| match m.seed {
            Some(seed) => format!("method: {} (seed {seed})", m.name),
            None => format!("method: {}", m.name),
        })
        .collect();
    let rows = report
        .stages
        .iter()
        .map(|s| (s, s.name.as_str()))
        .chain(report.methods.iter().zip(&method_names).map(|(m, n)| (m, n.as_str())));
    for (stage, stage_name) in rows {
        let splits = [("test", Some(&stage.test)), ("train", Some(&stage.train)), ("val", stage.val.as_ref())];
        for (split, m) in splits.into_iter().filter_map(|(n, m)| m.map(|m| (n, m))) {
            for (k, class_name) in report.class_names.iter().enumerate() {
                w.serialize(Row {
                    run_id: &report.run_id,
                    dataset: &report.dataset,
                    stage: stage_name,
                    split,
                    class_index: k,
                    class_name,
                    support: m.support[k],
                    recall: m.recall[k],
                    precision: m.precision[k],
                    f1: m.f1[k],
                    class_weight: stage.class_weights[k],
                })?;
            }
        }
    }
    w.into_inner().map_err(|e| ReportError::Csv(e.into_error().into()))
}

/// Write `bytes` to a temporary file next to `path`, flush it to disk and rename it to `path`
/// (the same atomic write as the trainer's checkpoints).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::train::write_atomic(path, bytes).map_err(|e| ReportError::io("write (atomically)", path, e))
}

fn mean_ignoring_nan(values: &[f64]) -> f64 {
    let (sum, n) = values.iter().filter(|v| !v.is_nan()).fold((0.0, 0usize), |(s, n), &v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// serde_json writes non-finite floats as `null`; read `null` back as NaN instead of failing.
mod de {
    use serde::{Deserialize, Deserializer};

    pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    pub fn vec_f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}
