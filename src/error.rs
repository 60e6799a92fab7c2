//! The library's error type. Every fallible call returns [`Result`]; nothing panics on bad input.
use cudarc::driver::DriverError;

/// Errors from the kernels, their CPU references and the CUDA plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shape, length or parameter does not fit the operation.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A target (class index) is outside `[0, C)` and is not `ignore_index`.
    #[error("{op}: target {value} of sample {index} is outside [0, {classes}) and is not ignore_index")]
    InvalidTarget { op: &'static str, index: usize, value: i64, classes: usize },

    /// A predicted label is outside `[0, C)`.
    #[error("{op}: predicted label {value} of sample {index} is outside [0, {classes})")]
    InvalidPrediction { op: &'static str, index: usize, value: i64, classes: usize },

    /// A sample (dataset image) index is outside `[0, count)`.
    #[error("{op}: sample index {value} at batch position {index} is outside the dataset's [0, {count})")]
    InvalidSample { op: &'static str, index: usize, value: i64, count: usize },

    /// A size exceeds what a kernel supports.
    #[error("{op}: {msg}")]
    TooLarge { op: &'static str, msg: String },

    /// A device buffer lives on another device than the stream it was passed with.
    #[error("{op}: {what} lives on device {buffer}, but the stream is on device {stream}")]
    WrongDevice { op: &'static str, what: String, buffer: usize, stream: usize },

    /// No usable CUDA driver or device.
    #[error("CUDA is not available: {0}")]
    NoCuda(String),

    /// build.rs found no nvcc (or was told not to compile), so there is nothing to launch.
    #[error("kernels were not compiled: install nvcc or set NVCC (build said: {0})")]
    KernelsNotCompiled(String),

    /// A kernel failed while it ran (reported by its own launch when
    /// [`sync_launches`](crate::cuda::sync_launches) is on).
    #[error("{op}: kernel {kernel} failed: {source}")]
    KernelFailed {
        op: &'static str,
        kernel: String,
        #[source]
        source: DriverError,
    },

    /// The driver cannot load the embedded kernels: they were built by a newer CUDA than it supports.
    // The code is printed from the enum itself: DriverError's own Display and Debug ask the driver
    // library for the text.
    #[error(
        "the CUDA driver cannot load the kernels ({:?}): they were built with CUDA {built}, and this \
         driver supports CUDA {driver}. Update the NVIDIA driver (CUDA 13.0 needs 580.65.06 or newer \
         on Linux), or rebuild with an nvcc no newer than the driver (NVCC=...)",
        .source.0
    )]
    DriverTooOld {
        built: String,
        driver: String,
        #[source]
        source: DriverError,
    },

    /// Training produced a non-finite loss or parameter. Names where it happened and the last
    /// checkpoint written before it (which is left untouched).
    #[error(
        "{stage}: training diverged at epoch {epoch}, step {step}: {what}; {}",
        match last_good {
            Some(p) => format!("last good checkpoint: {}", p.display()),
            None => "no checkpoint was written before it".to_string(),
        }
    )]
    Diverged { stage: String, epoch: usize, step: usize, what: String, last_good: Option<std::path::PathBuf> },

    /// A file operation failed (read, write, rename, flush).
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file's content is not what it should be: torn, foreign, or inconsistent (`what` names
    /// the kind of file, e.g. "checkpoint").
    #[error("{what} {}: {msg}", path.display())]
    InvalidFile { what: &'static str, path: std::path::PathBuf, msg: String },

    /// A file was written in another format version than this build reads (`found` is `None`
    /// when the file carries no version at all, as files from before versioning).
    #[error(
        "{what} {} has format {}, this build reads format {expected} only: \
         rerun what produced it with this build",
        path.display(),
        match found { Some(v) => v.to_string(), None => "(none: written before format versions)".to_string() }
    )]
    FormatVersion { what: &'static str, path: std::path::PathBuf, found: Option<u32>, expected: u32 },

    /// An error reported by the CUDA driver.
    #[error("CUDA driver error in {op}: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },

    /// The GPU failed ([`Error::Driver`] or [`Error::KernelFailed`], in `source`) during a
    /// training or an evaluation. `stage` names the training ("stage 1 (uniform weights)", a
    /// method's, "warm-up", or "data" for the upload of the data sets); `place` where in it:
    /// "setup", "epoch 2, step 3 of 4", "evaluation after epoch 2", "checkpoint after epoch 2",
    /// "final evaluation", ... The checkpoints written before it are left untouched.
    #[error("{stage}, {place}: the GPU failed: {source}")]
    Device { stage: String, place: String, source: Box<Error> },
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }

    /// A GPU failure ([`Error::Driver`], [`Error::KernelFailed`]) becomes [`Error::Device`] at
    /// `stage`, `place`; every other error, and one already located, is returned as it is (the
    /// innermost place is the most precise).
    pub(crate) fn at(self, stage: &str, place: impl FnOnce() -> String) -> Self {
        match self {
            e @ (Error::Driver { .. } | Error::KernelFailed { .. }) => {
                Error::Device { stage: stage.to_string(), place: place(), source: Box::new(e) }
            }
            e => e,
        }
    }
}

/// Names where a GPU failure happened (see [`Error::at`]), on results of every error type that
/// can carry one.
pub(crate) trait Located: Sized {
    fn at(self, stage: &str, place: impl FnOnce() -> String) -> Self;
}

impl<T> Located for Result<T> {
    fn at(self, stage: &str, place: impl FnOnce() -> String) -> Self {
        self.map_err(|e| e.at(stage, place))
    }
}

/// Attach the operation's name to a driver error.
pub(crate) trait DriverContext<T> {
    fn during(self, op: &'static str) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn during(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Driver { op, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    // Display is not checked: DriverError's asks the driver library for the text.
    #[test]
    fn only_gpu_failures_are_located_and_only_once() {
        let driver = || Error::Driver { op: "conv2d", source: DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED) };
        let e = driver().at("stage 1", || "epoch 1, step 2 of 3".into());
        let Error::Device { stage, place, source } = &e else { panic!("not located: {e:?}") };
        assert_eq!((stage.as_str(), place.as_str()), ("stage 1", "epoch 1, step 2 of 3"));
        assert!(matches!(**source, Error::Driver { op: "conv2d", .. }));
        // The outer place does not replace the inner, more precise one.
        let again = e.at("stage 1", || "final evaluation".into());
        assert!(matches!(&again, Error::Device { place, .. } if place == "epoch 1, step 2 of 3"));
        let shape = Error::shape("train", "batch size 0").at("stage 1", || unreachable!("not a GPU failure"));
        assert!(matches!(shape, Error::Shape { .. }));
    }
}
