//! The class-reweighting experiment as library code (feature `trainer`): describe a run with an
//! [`ExperimentSpec`], run it with [`run`] on any [`Backend`](crate::train::Backend).
//!
//! A run is a list of trainings planned by [`stages`]: the two-stage run (stage 1 with uniform
//! class weights, stage 2 with weights `w_c = (mean(r) / r_c)^p` from stage 1's per-class
//! recall), or, with [`ExperimentSpec::compare`], every method of [`crate::methods`] over
//! several seeds. Every run gets an id and is written into `.OUT.partial/` beside the output
//! folder, with a checkpoint per epoch; only when it is complete does it replace the output
//! folder in one step (see [`crate::report::run_dir`]), so the folder always holds one whole
//! run. A stop request ([`RunOptions::stop`]) finishes the current step, writes a checkpoint and
//! returns [`RunOutcome::Stopped`]; the same spec with `resume` continues it.
//!
//! ```no_run
//! use evenclass::experiment::{run, DataSpec, ExperimentSpec, RunOptions};
//! use evenclass::methods::Method;
//! use evenclass::train::CpuBackend;
//!
//! let mut spec = ExperimentSpec { data: DataSpec::synthetic(), compare: true, ..Default::default() };
//! spec.comparison.methods = Some(vec![Method::Reweight, Method::Bias]);
//! let outcome = run(&CpuBackend::new(), &spec, &RunOptions::default())?;
//! # Ok::<(), evenclass::experiment::ExperimentError>(())
//! ```
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

mod diagnostics;
mod plan;
mod runner;
mod spec;
mod text;

pub use diagnostics::{diagnostics, Diagnostics, FitRow, GradientRow, RegimeRow, SplitFit, SweepPoint};
pub use plan::{null_seed, plan, stages, CrtSpec, MethodSpec, Plan, StageSpec};
pub use runner::run;
pub use spec::{
    default_val_size, CompareSpec, DataSpec, ExperimentSpec, DEFAULT_CDT_GAMMA, DEFAULT_CRT_EPOCHS, DEFAULT_SEEDS,
    DEFAULT_VS_GAMMA, DEFAULT_VS_TAU, MAX_DEFAULT_VAL_SIZE, MAX_LOGIT_PARAM,
};
pub use text::{comparison_text, diagnostics_text, format_duration, resume_command, LONG_HELP};

use crate::report::Report;

/// How [`run`] runs: output, stop requests, what it records as the command.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step, with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
    /// No progress bars (the per-epoch summaries and the plan still print).
    pub quiet: bool,
    /// Print nothing at all (a library caller that shows its own output).
    pub silent: bool,
    /// The command line recorded in report.json (empty: none).
    pub command: String,
}

/// How a run ended without an error.
#[derive(Debug)]
pub enum RunOutcome {
    /// Published in `out`.
    Finished { report: Box<Report>, diagnostics: Option<Diagnostics>, out: PathBuf },
    /// Stopped on request after writing a checkpoint of training `stage` at `checkpoint`; the
    /// same spec with `resume` continues it.
    Stopped { stage: String, checkpoint: PathBuf },
}

/// Why a run failed. [`ExperimentError::is_usage`] tells a bad spec or bad flags (refused before
/// any work) from a failure of the data, the files or the computation.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The spec (or the state of the output folder) does not allow the run; nothing was done.
    #[error("{0}")]
    Usage(String),
    /// Loading the data failed.
    #[error("loading the data: {0}")]
    Data(#[from] crate::data::DataError),
    /// Writing or reading the run's files failed.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// A file of the run could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the run could not be parsed.
    #[error("reading {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The training, the evaluation or a file write failed.
    #[error(transparent)]
    Compute(#[from] crate::Error),
    /// The run cannot go on (a folder of other files, not enough memory, ...).
    #[error("{0}")]
    Refused(String),
    /// A file of the output folder that the run reads back (a manifest, a checkpoint) is damaged:
    /// unreadable, truncated, of another format version. `error` names the file, `hint` says what
    /// to do. Nothing was written.
    #[error("{error}\n  {hint}")]
    Damaged { error: Box<ExperimentError>, hint: String },
}

impl ExperimentError {
    /// Whether the spec or the flags were at fault (exit status 2 on the command line).
    pub fn is_usage(&self) -> bool {
        matches!(self, ExperimentError::Usage(_))
    }

    fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| ExperimentError::Io { action, path, source }
    }
}

fn usage(msg: impl Into<String>) -> ExperimentError {
    ExperimentError::Usage(msg.into())
}

impl<T> crate::error::Located for std::result::Result<T, ExperimentError> {
    fn at(self, stage: &str, place: impl FnOnce() -> String) -> Self {
        self.map_err(|e| match e {
            ExperimentError::Compute(e) => ExperimentError::Compute(e.at(stage, place)),
            e => e,
        })
    }
}
