//! Datasets for the trainer: CIFAR-10 in its official binary layout, its download, and a
//! deterministic synthetic stand-in for machines without the data (feature `trainer`).
//!
//! - [`cifar`]: loads `data_batch_{1..5}.bin` / `test_batch.bin` (and `batches.meta.txt`).
//! - [`download`]: fetches and checks `cifar-10-binary.tar.gz`, extracting it atomically.
//! - [`synthetic`](mod@synthetic): ten learnable, balanced classes of shapes and textures in the same shape.
//! - [`resolve`]: what the trainer calls: the data directory, else a download, else synthetic.
//!
//! Images are kept as bytes exactly as in the CIFAR-10 files: per image 3 planes (R, G, B) of
//! 32 x 32 bytes in row-major order, i.e. CHW. Tests: `tests/data.rs`.
use std::ffi::OsString;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

pub mod cifar;
pub mod download;
pub mod split;
pub mod synthetic;

pub use cifar::{load_cifar10, load_cifar10_with, LoadOptions};
pub use download::{download_cifar10, extract_archive, DownloadSpec, ARCHIVE_DIR};
pub use split::{stratified_split, Split};
pub use synthetic::synthetic;

/// Image height and width in pixels.
pub const IMAGE_SIDE: usize = 32;
/// Colour channels (planes) per image: R, G, B.
pub const CHANNELS: usize = 3;
/// Bytes of one image: 3 planes of 32 x 32.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;
/// Bytes of one record in the CIFAR-10 binary files: a label byte, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes (CIFAR-10 and the synthetic set alike).
pub const NUM_CLASSES: usize = 10;
/// CIFAR-10's class names in label order (used when `batches.meta.txt` is absent).
pub const CIFAR10_CLASS_NAMES: [&str; NUM_CLASSES] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// The training files, in order.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-name file (one name a line, in label order).
pub const META_FILE: &str = "batches.meta.txt";
/// Records per file in the official archive.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Directory used when neither `--data-dir` nor `CIFAR10_DIR` is given.
pub const DEFAULT_DATA_DIR: &str = "data/cifar-10-batches-bin";
/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "CIFAR10_DIR";
/// Training-set size of the synthetic fallback when no subset is asked for (as CIFAR-10).
pub const SYNTHETIC_TRAIN: usize = 50_000;
/// Test-set size of the synthetic fallback (as CIFAR-10).
pub const SYNTHETIC_TEST: usize = 10_000;

/// Errors of the dataset module. Each names the file (and record, where there is one) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A data file is absent.
    #[error("{}: file not found", path.display())]
    MissingFile { path: PathBuf },

    /// A batch file's size is not a whole number of 3073-byte records: it is truncated (or not a
    /// CIFAR-10 file). `record` is the index of the incomplete record.
    #[error(
        "{}: {size} bytes is not a multiple of the {RECORD_BYTES}-byte record size; record {record} is \
         incomplete (file truncated?)",
        path.display()
    )]
    Truncated { path: PathBuf, size: u64, record: u64 },

    /// A batch file has a size other than the one expected (an empty file, or a download's file
    /// with the wrong number of records).
    #[error("{}: {size} bytes, expected {expected}", path.display())]
    WrongSize { path: PathBuf, size: u64, expected: String },

    /// A record's label byte is not a class index.
    #[error("{}: record {record} has label {label}, expected 0..={}", path.display(), NUM_CLASSES - 1)]
    BadLabel { path: PathBuf, record: usize, label: u8 },

    /// `batches.meta.txt` does not hold exactly ten class names.
    #[error("{}: {msg}", path.display())]
    BadMeta { path: PathBuf, msg: String },

    /// The data directory exists but lacks some of the files (loading refuses to guess, and a
    /// download would not overwrite it).
    #[error("{}: incomplete CIFAR-10 directory, missing {}", dir.display(), missing.join(", "))]
    Incomplete { dir: PathBuf, missing: Vec<String> },

    /// An HTTP request failed (unreachable host, bad status, connection dropped).
    #[error("download of {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },

    /// The download has the wrong length (connection closed early, or a different file).
    #[error("download of {url}: got {got} bytes, expected {expected}")]
    DownloadSize { url: String, got: u64, expected: u64 },

    /// The download's MD5 differs from the expected one.
    #[error("download of {url}: MD5 {actual}, expected {expected} (corrupt or different file)")]
    Checksum { url: String, expected: String, actual: String },

    /// The archive holds an entry that could write outside the target or is not a plain file
    /// (absolute path, `..`, link, device), or an expected file twice or too large.
    #[error("archive {archive}: entry {entry:?} rejected: {reason}")]
    UnsafeEntry { archive: String, entry: String, reason: String },

    /// The archive could not be decompressed or parsed.
    #[error("archive {archive}: {source}")]
    Archive {
        archive: String,
        #[source]
        source: std::io::Error,
    },

    /// The downloaded archive lacks some of the batch files.
    #[error("archive from {url} lacks {ARCHIVE_DIR}/{{{}}}", missing.join(","))]
    ArchiveIncomplete { url: String, missing: Vec<String> },

    /// The download's target already exists; it is never overwritten.
    #[error("{}: already exists, not overwriting it with a download", path.display())]
    TargetExists { path: PathBuf },

    /// A data directory the user named (`--data-dir`, `$CIFAR10_DIR`) does not hold CIFAR-10.
    #[error("{}: no CIFAR-10 batch files here (from {from}); {hint}", dir.display())]
    NotFound { dir: PathBuf, from: DirSource, hint: String },

    /// Arguments that do not describe a dataset (mismatched lengths, bad range).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}

/// Labelled images held in memory, in the CIFAR-10 byte layout.
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * IMAGE_BYTES` bytes: per image the R, G and B planes, each 32 x 32 row-major.
    pub images: Vec<u8>,
    /// One class index (`< class_names.len()`) per image.
    pub labels: Vec<u8>,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// What the data are, e.g. `"CIFAR-10 train"` or [`synthetic::NAME`].
    pub name: String,
}

impl Dataset {
    /// A dataset from its parts, checking that they fit together (image bytes, label range).
    pub fn new(images: Vec<u8>, labels: Vec<u8>, class_names: Vec<String>, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if images.len() != labels.len() * IMAGE_BYTES {
            return Err(DataError::Invalid(format!(
                "dataset {name}: {} image bytes for {} labels, expected {}",
                images.len(),
                labels.len(),
                labels.len() * IMAGE_BYTES
            )));
        }
        if class_names.is_empty() || class_names.len() > 256 {
            return Err(DataError::Invalid(format!("dataset {name}: {} class names", class_names.len())));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= class_names.len()) {
            return Err(DataError::Invalid(format!(
                "dataset {name}: label {l} of image {i} is outside [0, {})",
                class_names.len()
            )));
        }
        Ok(Dataset { images, labels, class_names, name })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The `IMAGE_BYTES` bytes of image `i` (CHW). Panics if `i >= len()`, like slice indexing;
    /// see [`Dataset::get_image`].
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Image `i`, or `None` if `i >= len()`.
    pub fn get_image(&self, i: usize) -> Option<&[u8]> {
        (i < self.len()).then(|| self.image(i))
    }

    /// The images in `range` (any of `a..b`, `a..`, `..b`, `..`), as a new dataset with the same
    /// class names and name. Errors if the range is reversed or reaches past `len()`.
    pub fn subset(&self, range: impl RangeBounds<usize>) -> Result<Dataset> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => Some(self.len()),
        };
        match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= self.len() => Ok(Dataset {
                images: self.images[s * IMAGE_BYTES..e * IMAGE_BYTES].to_vec(),
                labels: self.labels[s..e].to_vec(),
                class_names: self.class_names.clone(),
                name: self.name.clone(),
            }),
            _ => Err(DataError::Invalid(format!(
                "dataset {}: subset {:?}..{:?} does not fit in {} images",
                self.name,
                range.start_bound(),
                range.end_bound(),
                self.len()
            ))),
        }
    }

    /// The first `min(n, len())` images.
    pub fn first(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            class_names: self.class_names.clone(),
            name: self.name.clone(),
        }
    }

    /// Images per class, indexed by label (length `num_classes()`).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            // Labels are checked on construction; a hand-edited `labels` beyond the names is skipped.
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// A summary (name, size, classes), not the bytes.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("image_bytes", &self.images.len())
            .field("class_names", &self.class_names)
            .field("class_counts", &self.class_counts())
            .finish()
    }
}

/// Where [`resolve_data_dir`] found the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirSource {
    /// Given explicitly (`--data-dir`).
    Explicit,
    /// From the environment variable [`DATA_DIR_ENV`].
    Env,
    /// The default [`DEFAULT_DATA_DIR`].
    Default,
}

impl fmt::Display for DirSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirSource::Explicit => "--data-dir",
            DirSource::Env => DATA_DIR_ENV,
            DirSource::Default => "default",
        })
    }
}

/// The data directory: `explicit` if given, else `$CIFAR10_DIR` if set and non-empty, else
/// `./data/cifar-10-batches-bin`; with where it came from.
pub fn resolve_data_dir(explicit: Option<PathBuf>) -> (PathBuf, DirSource) {
    resolve_data_dir_from(explicit, std::env::var_os(DATA_DIR_ENV))
}

/// [`resolve_data_dir`] with the environment variable's value passed in (for tests).
pub fn resolve_data_dir_from(explicit: Option<PathBuf>, env: Option<OsString>) -> (PathBuf, DirSource) {
    match (explicit, env) {
        (Some(p), _) => (p, DirSource::Explicit),
        (None, Some(e)) if !e.is_empty() => (PathBuf::from(e), DirSource::Env),
        _ => (PathBuf::from(DEFAULT_DATA_DIR), DirSource::Default),
    }
}

/// Where the data of a [`LoadedData`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// Real CIFAR-10, loaded from `dir` (possibly just downloaded there).
    Cifar10 { dir: PathBuf, downloaded: bool },
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
            DataSource::Cifar10 { dir, downloaded: false } => write!(f, "CIFAR-10 from {}", dir.display()),
            DataSource::Cifar10 { dir, downloaded: true } => write!(f, "CIFAR-10 downloaded to {}", dir.display()),
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
    let opts = LoadOptions { train_limit: train_subset, test_limit: None };
    if cifar10_present(&dir) {
        let (train, test) = load_cifar10_with(&dir, &opts)?;
        return Ok(LoadedData { train, test, source: DataSource::Cifar10 { dir, downloaded: false } });
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
        Ok(()) => {
            let (train, test) = load_cifar10_with(&dir, &opts)?;
            Ok(LoadedData { train, test, source: DataSource::Cifar10 { dir, downloaded: true } })
        }
        Err(e) => Ok(make_synthetic(format!(
            "no CIFAR-10 at the default location {} and the download failed: {e}",
            dir.display()
        ))),
    }
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
        let (name, dir, synthetic_seed) = match source {
            DataSource::Cifar10 { dir, .. } => {
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                ("cifar10", Some(abs.display().to_string()), None)
            }
            DataSource::Synthetic { .. } => ("synthetic", None, Some(seed)),
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
