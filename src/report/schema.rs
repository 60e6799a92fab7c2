//! The report's types: `report.json` is [`Report`] serialized.
use serde::{Deserialize, Serialize};

use super::ReportError;
use crate::confusion::Metrics;
use crate::train::EpochLog;

/// Version of `report.json`'s layout, written in [`Report::format`]; [`read_report`](super::read_report)
/// refuses a file of another version, naming both.
pub const REPORT_FORMAT: u32 = 2;

/// One trained model: its class weights, epoch log and final metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Shown in the chart legend and the table, e.g. `"stage 1: uniform"`.
    pub name: String,
    /// The loss weight of each class used in this stage.
    #[serde(deserialize_with = "crate::json::nan::vec_f64_or_nan")]
    pub class_weights: Vec<f64>,
    /// Wall-clock training time of the stage.
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub seconds: f64,
    pub epochs: Vec<EpochLog>,
    pub test: Metrics,
    pub train: Metrics,
    /// Metrics on the validation split held out of the training set (absent when there was
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<Metrics>,
    /// The seed of this training (initialization, order, augmentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// In [`Report::methods`]: the method's key (e.g. `"bias"`); entries with the same key are
    /// the same method on other seeds. A former name is read as the current one
    /// ([`Method::canonical_key`](crate::methods::Method::canonical_key): `online-eg` is
    /// `online-dro`), so that old reports merge with new ones.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "method_key")]
    pub method: Option<String>,
    /// In [`Report::methods`]: the key of the trained model the method evaluates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A per-class logit bias applied at prediction (`argmax_c(logit_c + bias[c])`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<Vec<f64>>,
}

/// A method key as written, under its current name.
fn method_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let key: Option<String> = Option::deserialize(d)?;
    Ok(key.map(|k| crate::methods::Method::canonical_key(&k)))
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
        check_metrics(&self.test, classes, &format!("{what}: test"))?;
        check_metrics(&self.train, classes, &format!("{what}: train"))?;
        match &self.val {
            Some(v) => check_metrics(v, classes, &format!("{what}: val")),
            None => Ok(()),
        }
    }
}

/// The whole experiment. `report.json` is this struct serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The layout version, [`REPORT_FORMAT`] when written by this build.
    pub format: u32,
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
    /// Creation time, RFC 3339 in UTC (see [`utc_now_rfc3339`](super::utc_now_rfc3339)).
    pub created_utc: String,
    /// The run's id (see [`run_dir`](super::run_dir)); also in the CSV and the charts' metadata.
    pub run_id: String,
    /// Whether the data were the synthetic stand-in, not CIFAR-10 (also said in the chart's
    /// title, the CSV's `dataset` column and `dataset`).
    pub synthetic: bool,
    /// The methods compared (`--compare`): one entry per method and seed, each in the stage
    /// schema (metrics on test, train and validation), grouped and summarized by
    /// [`summarize_methods`](super::summarize_methods). Empty for a plain run.
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
        if self.format != REPORT_FORMAT {
            return Err(ReportError::Invalid(format!("format {}, expected {REPORT_FORMAT}", self.format)));
        }
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

/// Every per-class vector of `m` has `classes` entries and its confusion matrix is
/// `classes x classes`.
fn check_metrics(m: &Metrics, classes: usize, what: &str) -> Result<(), ReportError> {
    let lens = [
        ("recall", m.recall.len()),
        ("precision", m.precision.len()),
        ("f1", m.f1.len()),
        ("support", m.support.len()),
        ("confusion", m.confusion.len()),
    ];
    for (name, len) in lens {
        if len != classes {
            return Err(ReportError::Invalid(format!("{what}.{name} has {len} entries, expected {classes}")));
        }
    }
    if let Some((t, row)) = m.confusion.iter().enumerate().find(|(_, row)| row.len() != classes) {
        return Err(ReportError::Invalid(format!(
            "{what}.confusion row {t} has {} entries, expected {classes}",
            row.len()
        )));
    }
    Ok(())
}
