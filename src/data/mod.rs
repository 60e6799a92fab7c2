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
//!
//! This file holds what the loaders share (the layout constants, [`Dataset`], [`DataError`]);
//! choosing among them ([`resolve`]) is in `source.rs`, so no file here imports one that
//! imports it back.
use std::ffi::OsString;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;

pub mod cifar;
pub mod download;
mod source;
pub mod split;
pub mod synthetic;

pub use cifar::{cifar10_name, load_cifar10, load_cifar10_with, nonstandard_counts, LoadOptions, NonStandardCount};
pub use download::{download_cifar10, extract_archive, DownloadSpec, ARCHIVE_DIR};
pub(crate) use source::file_in_place_of_folder;
pub use source::{cifar10_present, resolve, resolve_with, DataFingerprint, DataSource, LoadedData};
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

    /// The data directory is a file, or lies under one (`file`): a folder is expected there.
    #[error(
        "{} (from {from}): {}, where a folder is expected; name the folder that holds the CIFAR-10 batch files",
        dir.display(),
        if file == dir { "is a file".to_string() } else { format!("{} is a file", file.display()) }
    )]
    NotAFolder { dir: PathBuf, file: PathBuf, from: DirSource },

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
