//! Loader for CIFAR-10's official binary layout.
//!
//! Each of `data_batch_1.bin` … `data_batch_5.bin` (training) and `test_batch.bin` (test) is a
//! sequence of 3,073-byte records: one label byte (0-9), then 1,024 red, 1,024 green and 1,024
//! blue bytes (each plane 32 x 32, row-major). The official files hold 10,000 records each; any
//! whole number of records is accepted here (reduced copies may hold fewer), and
//! [`nonstandard_counts`] names the files that differ, so that such data are never mistaken for
//! the official set. `batches.meta.txt`, when present, gives the class names, one a line, in
//! label order.
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{
    DataError, Dataset, Result, CIFAR10_CLASS_NAMES, IMAGE_BYTES, META_FILE, NUM_CLASSES, RECORDS_PER_FILE,
    RECORD_BYTES, TEST_FILE, TRAIN_FILES,
};

/// What to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Load only the first `n` training records (in file order); the files past them are checked
    /// but not read. `None`: all.
    pub train_limit: Option<usize>,
    /// Load only the first `n` test records. `None`: all.
    pub test_limit: Option<usize>,
}

/// Loads the whole training and test sets from `dir`.
pub fn load_cifar10(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    load_cifar10_with(dir, &LoadOptions::default())
}

/// Loads the training and test sets from `dir`, as limited by `opts`.
///
/// All six files must exist with a non-empty whole number of records (checked before anything is
/// read); every label read is checked to be below 10. Errors name the file and record.
pub fn load_cifar10_with(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let class_names = read_class_names(dir)?;
    let mut train_counts = Vec::with_capacity(TRAIN_FILES.len());
    for f in TRAIN_FILES {
        train_counts.push(record_count(&dir.join(f))?);
    }
    let test_count = record_count(&dir.join(TEST_FILE))?;

    let train_total: usize = train_counts.iter().sum();
    let mut remaining = opts.train_limit.map_or(train_total, |n| n.min(train_total));
    let mut images = Vec::with_capacity(remaining * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(remaining);
    for (f, &count) in TRAIN_FILES.iter().zip(&train_counts) {
        if remaining == 0 {
            break;
        }
        let take = count.min(remaining);
        read_records(&dir.join(f), take, &mut images, &mut labels)?;
        remaining -= take;
    }
    let train = Dataset { images, labels, class_names: class_names.clone(), name: "CIFAR-10 train".into() };

    let take = opts.test_limit.map_or(test_count, |n| n.min(test_count));
    let mut images = Vec::with_capacity(take * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(take);
    if take > 0 {
        read_records(&dir.join(TEST_FILE), take, &mut images, &mut labels)?;
    }
    let test = Dataset { images, labels, class_names, name: "CIFAR-10 test".into() };
    Ok((train, test))
}

/// A batch file whose record count is not the official archive's ([`RECORDS_PER_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NonStandardCount {
    /// The file's name, e.g. `test_batch.bin`.
    pub file: String,
    /// The records it holds.
    pub records: usize,
    /// The records the official file holds.
    pub expected: usize,
}

/// `test_batch.bin: 5000 records, 10000 expected`.
impl fmt::Display for NonStandardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} records, {} expected", self.file, self.records, self.expected)
    }
}

/// The batch files of `dir`, in order, whose record count differs from the official archive's
/// ([`RECORDS_PER_FILE`] records, 30,730,000 bytes each); empty for the official files. The
/// files must hold a whole number of records, as for loading.
pub fn nonstandard_counts(dir: &Path) -> Result<Vec<NonStandardCount>> {
    let mut out = Vec::new();
    for f in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let records = record_count(&dir.join(f))?;
        if records != RECORDS_PER_FILE {
            out.push(NonStandardCount { file: f.to_string(), records, expected: RECORDS_PER_FILE });
        }
    }
    Ok(out)
}

/// The name of CIFAR-format data with these counts: `CIFAR-10` for the official counts, else
/// e.g. `CIFAR-10 format with non-standard counts (test_batch.bin: 5000 records, 10000
/// expected)`; training files in a row with the same count are named together
/// (`data_batch_1.bin to data_batch_5.bin: 60 records each`).
pub fn cifar10_name(nonstandard: &[NonStandardCount]) -> String {
    if nonstandard.is_empty() {
        return "CIFAR-10".into();
    }
    // Training files in a row with the same count form one group; the test file its own.
    let is_train = |c: &NonStandardCount| TRAIN_FILES.contains(&c.file.as_str());
    let mut groups: Vec<&[NonStandardCount]> = Vec::new();
    let mut rest = nonstandard;
    while let Some(first) = rest.first() {
        let same = |c: &&NonStandardCount| {
            is_train(first) && is_train(c) && c.records == first.records && c.expected == first.expected
        };
        let n = rest.iter().take_while(same).count().max(1);
        groups.push(&rest[..n]);
        rest = &rest[n..];
    }
    let describe = |g: &[NonStandardCount]| match g {
        [one] => format!("{}: {} records", one.file, one.records),
        [first, .., last] => format!("{} to {}: {} records each", first.file, last.file, first.records),
        [] => String::new(),
    };
    let expected = nonstandard[0].expected;
    let same_expected = nonstandard.iter().all(|c| c.expected == expected);
    let text = match (groups.as_slice(), same_expected) {
        ([one], _) => format!("{}, {expected} expected", describe(one)),
        (_, true) => format!(
            "{}; {expected} expected in each",
            groups.iter().map(|g| describe(g)).collect::<Vec<_>>().join("; ")
        ),
        (_, false) => nonstandard.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; "),
    };
    format!("CIFAR-10 format with non-standard counts ({text})")
}

/// Number of records in a batch file, from its size: it must exist and hold a non-empty whole
/// number of records.
pub fn record_count(path: &Path) -> Result<usize> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::MissingFile { path: path.to_path_buf() })
        }
        Err(e) => return Err(DataError::io(path, e)),
    };
    if !meta.is_file() {
        return Err(DataError::io(path, std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let rec = RECORD_BYTES as u64;
    if size % rec != 0 {
        return Err(DataError::Truncated { path: path.to_path_buf(), size, record: size / rec });
    }
    if size == 0 {
        return Err(DataError::WrongSize {
            path: path.to_path_buf(),
            size,
            expected: format!("a positive multiple of {RECORD_BYTES}"),
        });
    }
    usize::try_from(size / rec).map_err(|_| DataError::io(path, std::io::Error::other("file too large")))
}

/// Reads the first `n` records of `path`, appending their images and (checked) labels.
pub fn read_records(path: &Path, n: usize, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    // Read in chunks so that the raw records never need a second full-size buffer.
    const CHUNK: usize = 1024;
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = vec![0u8; CHUNK.min(n.max(1)) * RECORD_BYTES];
    let mut done = 0;
    while done < n {
        let k = CHUNK.min(n - done);
        let chunk = &mut buf[..k * RECORD_BYTES];
        file.read_exact(chunk).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                // The file shrank after its size was checked.
                DataError::Truncated {
                    path: path.to_path_buf(),
                    size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                    record: done as u64,
                }
            } else {
                DataError::io(path, e)
            }
        })?;
        for (j, rec) in chunk.chunks_exact(RECORD_BYTES).enumerate() {
            let label = rec[0];
            if label as usize >= NUM_CLASSES {
                return Err(DataError::BadLabel { path: path.to_path_buf(), record: done + j, label });
            }
            labels.push(label);
            images.extend_from_slice(&rec[1..]);
        }
        done += k;
    }
    Ok(())
}

/// Class names from `dir/batches.meta.txt` (non-empty lines, trimmed; there must be exactly ten),
/// or CIFAR-10's standard names if the file is absent.
pub fn read_class_names(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(META_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CIFAR10_CLASS_NAMES.iter().map(|s| s.to_string()).collect())
        }
        Err(e) => return Err(DataError::io(&path, e)),
    };
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadMeta {
        path: path.clone(),
        msg: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != NUM_CLASSES {
        return Err(DataError::BadMeta {
            path,
            msg: format!("{} class names, expected {NUM_CLASSES} (one a line)", names.len()),
        });
    }
    Ok(names)
}
