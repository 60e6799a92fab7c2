//! Where the trainer's data come from ([`resolve`]): the data directory, else a download, else
//! the synthetic stand-in; and the fingerprint a run records of them.
use std::fmt;
use std::path::{Path, PathBuf};

use super::cifar::{cifar10_name, load_cifar10_with, nonstandard_counts, LoadOptions, NonStandardCount};
use super::download::{download_cifar10, DownloadSpec, ARCHIVE_DIR};
use super::{
    resolve_data_dir, synthetic, DataError, Dataset, DirSource, Result, DATA_DIR_ENV, DEFAULT_DATA_DIR, SYNTHETIC_TEST,
    SYNTHETIC_TRAIN, TEST_FILE, TRAIN_FILES,
};

/// Where the data of a [`LoadedData`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// CIFAR-10's format, loaded from `dir` (possibly just downloaded there): the official set
    /// when `nonstandard` is empty, else files with other record counts (a reduced or altered
    /// copy), which must not be reported as CIFAR-10.
    Cifar10 { dir: PathBuf, downloaded: bool, nonstandard: Vec<NonStandardCount> },
    /// The synthetic stand-in, and why it was used.
    Synthetic { reason: String },
}

impl DataSource {
    /// Whether the data are the synthetic stand-in (results are not CIFAR-10 numbers).
    pub fn is_synthetic(&self) -> bool {
        matches!(self, DataSource::Synthetic { .. })
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Cifar10 { dir, downloaded, nonstandard } => {
                let how = if *downloaded { "downloaded to" } else { "from" };
                write!(f, "{} {how} {}", cifar10_name(nonstandard), dir.display())
            }
            DataSource::Synthetic { reason } => write!(f, "{} ({reason})", synthetic::NAME),
        }
    }
}

/// Training and test sets, and their source.
#[derive(Clone, Debug)]
pub struct LoadedData {
    pub train: Dataset,
    pub test: Dataset,
    pub source: DataSource,
}

/// Whether `dir` holds all six batch files (only their presence is checked).
pub fn cifar10_present(dir: &Path) -> bool {
    missing_files(dir).is_empty()
}

fn missing_files(dir: &Path) -> Vec<String> {
    TRAIN_FILES.iter().chain([&TEST_FILE]).filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect()
}

/// The trainer's data, in this order:
///
/// 1. `synthetic` asked for: the synthetic set (`train_subset` or 50,000 training images, 10,000
///    test images, generated from `seed`).
/// 2. The data directory ([`resolve_data_dir`] of `data_dir`) holds the six batch files: load
///    them (the first `train_subset` training records only, if given). Corrupt files are an error.
/// 3. A directory named by the user (`--data-dir` or `$CIFAR10_DIR`) without the files is an
///    error ([`DataError::NotFound`], with a hint when the files are in its
///    `cifar-10-batches-bin` subfolder): a typo never turns into a download or synthetic data.
/// 4. Only the default directory falls back: when it does not exist (or is empty) and
///    `allow_download`, CIFAR-10 is downloaded there ([`DownloadSpec::default`]) and loaded;
///    otherwise (download not allowed, or it failed, e.g. offline) the synthetic set, with the
///    reason in [`DataSource::Synthetic`], so the caller can say loudly that the numbers are not
///    CIFAR-10's. A failed download leaves no folder behind.
///
/// A directory that exists with only some of the files is an error ([`DataError::Incomplete`]),
/// not a reason to fall back.
pub fn resolve(
    data_dir: Option<PathBuf>,
    synthetic: bool,
    allow_download: bool,
    train_subset: Option<usize>,
    seed: u64,
) -> Result<LoadedData> {
    let (dir, from) = resolve_data_dir(data_dir);
    resolve_with(&dir, from, synthetic, allow_download, &DownloadSpec::default(), train_subset, seed)
}

/// [`resolve`] for a directory already resolved (`from` says where it came from, which decides
/// whether it may fall back) and a given download (tests point it at a local server).
pub fn resolve_with(
    dir: &Path,
    from: DirSource,
    synthetic: bool,
    allow_download: bool,
    spec: &DownloadSpec,
    train_subset: Option<usize>,
    seed: u64,
) -> Result<LoadedData> {
    let make_synthetic = |reason: String| {
        let (train, test) = synthetic::synthetic(seed, train_subset.unwrap_or(SYNTHETIC_TRAIN), SYNTHETIC_TEST);
        LoadedData { train, test, source: DataSource::Synthetic { reason } }
    };
    if synthetic {
        return Ok(make_synthetic("asked for with --synthetic".into()));
    }
    let dir = dir.to_path_buf();
    if let Some(file) = file_in_place_of_folder(&dir) {
        return Err(DataError::NotAFolder { dir, file, from });
    }
    let load = |dir: PathBuf, downloaded: bool| {
        let opts = LoadOptions { train_limit: train_subset, test_limit: None };
        let (train, test) = load_cifar10_with(&dir, &opts)?;
        let nonstandard = nonstandard_counts(&dir)?;
        Ok(LoadedData { train, test, source: DataSource::Cifar10 { dir, downloaded, nonstandard } })
    };
    if cifar10_present(&dir) {
        return load(dir, false);
    }
    let empty_or_absent = match std::fs::read_dir(&dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(DataError::io(&dir, e)),
    };
    if from != DirSource::Default {
        let sub = dir.join(ARCHIVE_DIR);
        let hint = if cifar10_present(&sub) {
            format!("the files are in its subfolder: use {}", sub.display())
        } else if empty_or_absent {
            format!(
                "only the default location ({DEFAULT_DATA_DIR}, when neither --data-dir nor ${DATA_DIR_ENV} is \
                 given) is downloaded to or replaced by synthetic data"
            )
        } else {
            return Err(DataError::Incomplete { missing: missing_files(&dir), dir });
        };
        return Err(DataError::NotFound { dir, from, hint });
    }
    if !empty_or_absent {
        return Err(DataError::Incomplete { missing: missing_files(&dir), dir });
    }
    if !allow_download {
        return Ok(make_synthetic(format!(
            "no CIFAR-10 at the default location {} and --no-download was given",
            dir.display()
        )));
    }
    match download_cifar10(&dir, spec) {
        Ok(()) => load(dir, true),
        Err(e) => Ok(make_synthetic(format!(
            "no CIFAR-10 at the default location {} and the download failed: {e}",
            dir.display()
        ))),
    }
}

/// The file that stands where folder `path` is expected: `path` itself, or the nearest of its
/// ancestors that exists, when that is not a folder. `None` when the path is (or can become) a
/// folder.
pub(crate) fn file_in_place_of_folder(path: &Path) -> Option<PathBuf> {
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(meta) = std::fs::metadata(p) {
            return (!meta.is_dir()).then(|| p.to_path_buf());
        }
    }
    None
}

/// What a run trained and tested on, recorded with its results so that results are never
/// combined with those of other data (`--stage2-only`, `--resume`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFingerprint {
    /// `"cifar10"` or `"synthetic"`.
    pub source: String,
    /// The CIFAR-10 folder (absolute) it was loaded from; informational, not compared (the
    /// content hashes decide, so a moved copy of the same files is the same data).
    pub dir: Option<String>,
    /// Seed of the synthetic generator (synthetic data only).
    pub synthetic_seed: Option<u64>,
    pub train_images: usize,
    pub test_images: usize,
    /// `--train-subset` / `--test-subset` as given.
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub class_names: Vec<String>,
    /// The batch files whose record count is not the official set's (CIFAR-format data only;
    /// absent for the official files and the synthetic set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nonstandard_counts: Vec<NonStandardCount>,
    /// MD5 (hex) of the labels, then the images, of the training records used.
    pub train_md5: String,
    /// The same of the test records used.
    pub test_md5: String,
}

impl DataFingerprint {
    /// The fingerprint of `train` and `test` (the records actually used, after any subset).
    pub fn new(
        source: &DataSource,
        train: &Dataset,
        test: &Dataset,
        train_subset: Option<usize>,
        test_subset: Option<usize>,
        seed: u64,
    ) -> Self {
        let md5 = |d: &Dataset| {
            use md5::{Digest, Md5};
            let mut h = Md5::new();
            h.update(&d.labels);
            h.update(&d.images);
            h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let (name, dir, synthetic_seed, nonstandard) = match source {
            DataSource::Cifar10 { dir, nonstandard, .. } => {
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                ("cifar10", Some(abs.display().to_string()), None, nonstandard.clone())
            }
            DataSource::Synthetic { .. } => ("synthetic", None, Some(seed), Vec::new()),
        };
        DataFingerprint {
            source: name.into(),
            dir,
            synthetic_seed,
            train_images: train.len(),
            test_images: test.len(),
            train_subset,
            test_subset,
            class_names: train.class_names.clone(),
            nonstandard_counts: nonstandard,
            train_md5: md5(train),
            test_md5: md5(test),
        }
    }

    /// The fields (all but `dir`) in which `self` (saved) and `now` differ; empty when the data
    /// are the same.
    pub fn diff(&self, now: &DataFingerprint) -> Vec<crate::json::FieldDiff> {
        let value = |f: &DataFingerprint| {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("dir");
            }
            v
        };
        crate::json::diff_fields(&value(self), &value(now))
    }
}
