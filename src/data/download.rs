//! Download of CIFAR-10's binary archive, checked and extracted atomically.
//!
//! [`download_cifar10`] fetches the archive into a temporary file beside the target (with a
//! progress bar on stderr), checks its length and MD5, extracts only the expected regular files
//! of `cifar-10-batches-bin/` into a temporary directory beside the target, checks that the six
//! batch files are there with their sizes, and only then renames that directory to the target.
//! Any failure removes the temporaries, so no directory that looks complete is ever left behind.
//!
//! The archive's paths never choose where a file is written: an entry is written only if its path
//! is `cifar-10-batches-bin/<name>` with `<name>` one of [`ARCHIVE_FILES`], and then to the
//! fixed `<name>` inside the temporary directory. Absolute paths, `..`, links and device files
//! make the whole archive be rejected; other entries (directories, unknown files) are skipped.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::{DataError, Result, META_FILE, RECORDS_PER_FILE, RECORD_BYTES, TEST_FILE, TRAIN_FILES};

/// The official archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// MD5 of the official archive, as published on the CIFAR-10 page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Size in bytes of the official archive.
pub const CIFAR10_ARCHIVE_BYTES: u64 = 170_052_171;
/// The directory inside the archive that holds the files.
pub const ARCHIVE_DIR: &str = "cifar-10-batches-bin";
/// The files extracted from [`ARCHIVE_DIR`]; anything else in the archive is skipped.
pub const ARCHIVE_FILES: [&str; 8] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "batches.meta.txt",
    "readme.html",
];
/// Largest accepted size of the small text files (`batches.meta.txt`, `readme.html`).
const MAX_TEXT_BYTES: u64 = 1 << 20;

/// What to download and how to check it. [`Default`] is the official archive; tests point `url`
/// at a local server and set the checksum and record counts of a small archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadSpec {
    /// `http://` or `https://` URL of a `.tar.gz` holding `cifar-10-batches-bin/`.
    pub url: String,
    /// Expected MD5 of the archive, lowercase or uppercase hex.
    pub md5: String,
    /// Expected archive size in bytes, if known (checked against `Content-Length` before the
    /// transfer and against the bytes received after it).
    pub size: Option<u64>,
    /// Records expected in `data_batch_1.bin` … `data_batch_5.bin`, then `test_batch.bin`; each
    /// file must be exactly `count * 3073` bytes.
    pub expected_record_counts: [usize; 6],
    /// Show a progress bar on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
}

impl Default for DownloadSpec {
    fn default() -> Self {
        DownloadSpec {
            url: CIFAR10_URL.into(),
            md5: CIFAR10_MD5.into(),
            size: Some(CIFAR10_ARCHIVE_BYTES),
            expected_record_counts: [RECORDS_PER_FILE; 6],
            progress: true,
        }
    }
}

/// Downloads, checks and extracts the archive of `spec` so that `target` becomes a directory
/// holding the batch files (as `./data/cifar-10-batches-bin` would).
///
/// `target` must not exist (an empty directory is allowed and replaced). On error nothing is left
/// at `target` and the temporary file and directory are removed.
pub fn download_cifar10(target: &Path, spec: &DownloadSpec) -> Result<()> {
    if target.exists() && !is_empty_dir(target) {
        return Err(DataError::TargetExists { path: target.to_path_buf() });
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The parent folders this call creates (deepest first), removed again on failure, so that a
    // failed download leaves no empty `data/` behind.
    let created: Vec<PathBuf> =
        parent.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
    std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let result = download_into(target, &parent, spec);
    if result.is_err() {
        for dir in &created {
            let _ = std::fs::remove_dir(dir); // only succeeds while empty
        }
    }
    result
}

fn download_into(target: &Path, parent: &Path, spec: &DownloadSpec) -> Result<()> {
    let stem = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| ARCHIVE_DIR.into());

    // Both temporaries are removed when dropped, i.e. on every early return below.
    let mut archive = tempfile::Builder::new()
        .prefix(&format!(".{stem}.download-"))
        .suffix(".tar.gz")
        .tempfile_in(parent)
        .map_err(|e| DataError::io(parent, e))?;
    let archive_path = archive.path().to_path_buf();
    fetch(spec, archive.as_file_mut(), &archive_path)?;

    let staging = tempfile::Builder::new()
        .prefix(&format!(".{stem}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| DataError::io(parent, e))?;
    archive.as_file_mut().seek(SeekFrom::Start(0)).map_err(|e| DataError::io(&archive_path, e))?;
    extract(archive.as_file(), &spec.url, staging.path(), spec)?;
    verify_extracted(staging.path(), spec)?;
    drop(archive);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile makes the directory private (0700); give it the usual permissions.
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| DataError::io(staging.path(), e))?;
    }
    if target.exists() {
        if !is_empty_dir(target) {
            return Err(DataError::TargetExists { path: target.to_path_buf() });
        }
        std::fs::remove_dir(target).map_err(|e| DataError::io(target, e))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, target).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        DataError::io(target, e)
    })
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false)
}

/// GETs `spec.url` into `out`, checking its length and MD5.
fn fetch(spec: &DownloadSpec, out: &mut File, out_path: &Path) -> Result<()> {
    let url = &spec.url;
    let http_err = |e: ureq::Error| DataError::Http { url: url.clone(), source: Box::new(e) };
    let config = ureq::Agent::config_builder()
        .timeout_resolve(Some(Duration::from_secs(30)))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = agent.get(url).call().map_err(http_err)?;
    let body = response.body_mut();
    let length = body.content_length();
    if let (Some(expected), Some(got)) = (spec.size, length) {
        if expected != got {
            return Err(DataError::DownloadSize { url: url.clone(), got, expected });
        }
    }
    let bar = if spec.progress {
        let bar = match length.or(spec.size) {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{wide_bar}] {bytes:>10}/{total_bytes:10} eta {eta:4}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("CIFAR-10");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut reader = body.as_reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon_with_message("download failed");
                return Err(DataError::Http { url: url.clone(), source: Box::new(ureq::Error::Io(e)) });
            }
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            bar.abandon_with_message("download failed");
            return Err(DataError::io(out_path, e));
        }
        hasher.update(&buf[..n]);
        got += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all().map_err(|e| DataError::io(out_path, e))?;
    if let Some(expected) = spec.size.or(length) {
        if got != expected {
            return Err(DataError::DownloadSize { url: url.clone(), got, expected });
        }
    }
    let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !actual.eq_ignore_ascii_case(spec.md5.trim()) {
        return Err(DataError::Checksum { url: url.clone(), expected: spec.md5.clone(), actual });
    }
    Ok(())
}

/// Extracts the archive at `archive` (a `.tar.gz` as published, not checked against an MD5) into
/// the existing empty folder `dir` and checks the result, with the rules of the module
/// documentation: only the expected regular files, never a path outside `dir`. For archives
/// obtained by hand, and for tests of the extraction itself.
pub fn extract_archive(archive: &Path, dir: &Path, spec: &DownloadSpec) -> Result<()> {
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    extract(&file, &archive.display().to_string(), dir, spec)?;
    verify_extracted(dir, spec)
}

/// Expected size of an extracted file, by name (text files: an upper bound).
fn expected_size(name: &str, spec: &DownloadSpec) -> (u64, bool) {
    let files = TRAIN_FILES.iter().chain([&TEST_FILE]);
    match files.zip(spec.expected_record_counts).find(|(f, _)| **f == name) {
        Some((_, count)) => ((count * RECORD_BYTES) as u64, true),
        None => (MAX_TEXT_BYTES, false),
    }
}

/// Writes the expected files of the archive read from `src` into `dir` (see the module doc).
/// `url` only names the archive in errors.
fn extract(src: &File, url: &str, dir: &Path, spec: &DownloadSpec) -> Result<()> {
    let arch_err = |source: std::io::Error| DataError::Archive { archive: url.to_string(), source };
    let reject = |entry: &str, reason: &str| DataError::UnsafeEntry {
        archive: url.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(src)));
    let mut written: Vec<&'static str> = Vec::new();
    for entry in archive.entries().map_err(arch_err)? {
        let mut entry = entry.map_err(arch_err)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if raw.starts_with(b"/") || raw.starts_with(b"\\") {
            return Err(reject(&shown, "absolute path"));
        }
        let parts: Vec<&[u8]> =
            raw.split(|&b| b == b'/' || b == b'\\').filter(|c| !c.is_empty() && *c != b".").collect();
        if parts.iter().any(|c| *c == b"..") {
            return Err(reject(&shown, "path contains .."));
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        if matches!(kind, T::Symlink | T::Link | T::Char | T::Block | T::Fifo) {
            return Err(reject(&shown, &format!("{kind:?} entries are not allowed")));
        }
        let name = match parts.as_slice() {
            [d, f] if *d == ARCHIVE_DIR.as_bytes() => ARCHIVE_FILES.iter().find(|n| n.as_bytes() == *f).copied(),
            _ => None,
        };
        let Some(name) = name else { continue }; // directories and files we do not need
        if !kind.is_file() {
            return Err(reject(&shown, &format!("{kind:?} entry where a regular file was expected")));
        }
        if written.contains(&name) {
            return Err(reject(&shown, "file appears twice"));
        }
        let (limit, exact) = expected_size(name, spec);
        let size = entry.header().size().map_err(arch_err)?;
        if size > limit || (exact && size != limit) {
            return Err(reject(
                &shown,
                &format!("{size} bytes, expected {}{limit}", if exact { "" } else { "at most " }),
            ));
        }
        let path = dir.join(name);
        let mut out = File::create_new(&path).map_err(|e| DataError::io(&path, e))?;
        let copied = std::io::copy(&mut (&mut entry).take(limit), &mut out).map_err(arch_err)?;
        if copied != size {
            return Err(arch_err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("entry {shown:?}: {copied} of {size} bytes"),
            )));
        }
        out.sync_all().map_err(|e| DataError::io(&path, e))?;
        written.push(name);
    }
    Ok(())
}

/// Checks that the six batch files exist in `dir` with their expected sizes, and the meta file
/// (when extracted) is readable.
fn verify_extracted(dir: &Path, spec: &DownloadSpec) -> Result<()> {
    let missing: Vec<String> =
        TRAIN_FILES.iter().chain([&TEST_FILE]).filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect();
    if !missing.is_empty() {
        return Err(DataError::ArchiveIncomplete { url: spec.url.clone(), missing });
    }
    for (f, count) in TRAIN_FILES.iter().chain([&TEST_FILE]).zip(spec.expected_record_counts) {
        let path = dir.join(f);
        let size = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?.len();
        let expected = (count * RECORD_BYTES) as u64;
        if size != expected {
            return Err(DataError::WrongSize { path, size, expected: format!("{expected} ({count} records)") });
        }
    }
    if dir.join(META_FILE).is_file() {
        super::cifar::read_class_names(dir)?;
    }
    Ok(())
}
