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
//! and [`terminal_table`] renders the same numbers as plain text. Every file is written with
//! [`crate::fs::write_atomic`], so a crash never leaves a truncated file behind. Text is rendered
//! with DejaVu Sans embedded in the binary, so charts need no system fonts.
//!
//! Layout: `schema.rs` holds the report's types (what `report.json` is), `files.rs` reads and
//! writes the files, `chart.rs`, `compare.rs`, `intervals.rs` (paired confidence intervals) and
//! `table.rs` render; this file only names them
//! and holds the error type, so no file of the module imports one that imports it back.

mod chart;
mod compare;
mod files;
mod intervals;
mod merge;
mod metric;
pub mod run_dir;
mod schema;
mod table;

use std::path::{Path, PathBuf};

pub use crate::confusion::Metrics;
pub use crate::json::{describe_diffs, diff_fields, FieldDiff};
pub use crate::train::EpochLog;
pub use chart::{chart_class_labels, CHART_HEIGHT, CHART_TITLE, CHART_WIDTH, STAGE_COLORS};
pub use compare::{comparison_markdown, summarize_entries, summarize_methods, MethodSummary, Stat, BASELINE};
pub use files::{read_report, write_all, WrittenFiles};
pub use intervals::{differences, differences_markdown, t_975, Interval, MethodDifferences, HEADLINE};
pub use merge::{
    merge_comparisons, merged_markdown, paired_effect, paired_entries, paired_markdown, ComparisonRun,
    MergedComparison, PairedEffect,
};
pub use metric::metric;
pub use schema::{Report, StageReport, REPORT_FORMAT};
pub use table::{short_labels, terminal_table};

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

    /// A file of a run does not match the checksum its manifest recorded when it was written:
    /// it was changed, truncated or replaced since.
    #[error(
        "{} is corrupted: its MD5 is {found}, but {} recorded {expected} when the run wrote it \
         (truncated, changed or replaced since); run it again from the start (--overwrite, without \
         --resume or --stage2-only)",
        path.display(),
        manifest.display()
    )]
    Corrupted { path: PathBuf, manifest: PathBuf, expected: String, found: String },

    /// A file was written in another format version than this build reads (`found` is `None`
    /// when it carries no version, as files from before versioning).
    #[error(
        "{} has format {}, this build reads format {expected} only: rerun what produced it with \
         this build",
        path.display(),
        match found { Some(v) => v.to_string(), None => "(none: written before format versions)".to_string() }
    )]
    FormatVersion { path: PathBuf, found: Option<u32>, expected: u32 },

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
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ReportError::Io { action, path: path.to_path_buf(), source }
    }
}

impl From<crate::Error> for ReportError {
    /// [`crate::fs`] failures keep their path; anything else is an invalid report.
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Io { path, source } => ReportError::Io { action: "write", path, source },
            e => ReportError::Invalid(e.to_string()),
        }
    }
}

/// The current time as RFC 3339 in UTC with whole seconds, e.g. `2025-01-31T12:00:00Z`.
pub fn utc_now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
