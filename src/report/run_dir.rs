//! The output folder of a run: one consistent run at a time, never a mix of two.
//!
//! A run never writes into its output folder `OUT` directly. Beside it, in the same parent
//! folder (so on the same file system), it uses:
//!
//! - `.OUT.lock`: locked (an OS advisory lock, `flock` on Unix) for as long as a [`RunDir`] lives.
//!   A second run on the same `OUT` is refused with [`ReportError::Locked`]. The lock dies with
//!   the process (Ctrl-C, kill, power cut), so a stale lock file never blocks anyone. When a
//!   [`RunDir`] is dropped it deletes the file while still holding the lock; a process that had
//!   opened the file before the deletion and locks it afterwards holds a lock on a file no longer
//!   at that path, so [`RunDir::lock`] checks after locking that the path still names the locked
//!   file (same device and inode) and starts over when it does not. (Elsewhere than Unix the file
//!   stays: only its name, not its identity, can be checked there.)
//! - `.OUT.partial/`: the run in progress. Every file (stage results, models, checkpoints, the
//!   report and charts) is written here, each atomically. Its manifest `run.json` names the run id
//!   and says `"complete": false`. An interrupted run stays here, for `--resume`.
//! - `.OUT.previous/`: only for a moment during [`RunDir::publish`].
//!
//! **Publication.** When every file of a run is in `.OUT.partial/`, [`RunDir::publish`] writes
//! the manifest last (`"complete": true`, the run id, the list of files), flushes it, then renames
//! `OUT` to `.OUT.previous` and `.OUT.partial` to `OUT`, and deletes `.OUT.previous`. Renaming a
//! folder is atomic, so at every instant `OUT` is either the previous run's complete folder, absent
//! (between the two renames), or the new run's complete folder: a reader never sees files of two
//! runs together, and files of an unfinished run never appear in `OUT`. Every published file also
//! carries the run id (`report.json`, the CSV's `run_id` column, the charts' metadata), so a reader
//! that opened one file before a swap and another after it can tell.
//!
//! **Crash recovery.** If a process dies between the two renames, `OUT` is absent and
//! [`RunDir::lock`] repairs it on the next start: a complete `.OUT.partial` is published,
//! otherwise `.OUT.previous` is put back.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ReportError;

/// The manifest's file name, in `.OUT.partial/` and in a published `OUT`.
pub const MANIFEST: &str = "run.json";

/// Version of the manifest's layout, written in [`RunManifest::format`]; [`read_manifest`]
/// refuses another version, naming both.
pub const MANIFEST_FORMAT: u32 = 2;

/// What a run folder holds: written when the run starts (`complete: false`) and last of all when
/// it is published (`complete: true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// The layout version, [`MANIFEST_FORMAT`] when written by this build.
    pub format: u32,
    /// Unique id of the run ([`new_run_id`]).
    pub run_id: String,
    /// Whether every file of the run was written (set by [`RunDir::publish`]).
    pub complete: bool,
    pub started_utc: String,
    pub finished_utc: Option<String>,
    /// The run's files (relative to its folder), listed at publication.
    pub files: Vec<String>,
    /// The caller's description of the run: configuration, data fingerprint, stages...
    pub meta: serde_json::Value,
    /// MD5 (hex) of each file the run may read back (relative path), recorded by
    /// [`RunDir::record`] when the file is written and for every file at publication; checked by
    /// [`RunDir::verify`] before a file is used again. Empty in runs of older builds.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checksums: std::collections::BTreeMap<String, String>,
    /// MD5 (hex) of the manifest itself (its JSON with this field absent): set in the file when
    /// it is written, checked and cleared by [`read_manifest`]; absent in runs of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl RunManifest {
    /// MD5 of the manifest's JSON without its own checksum.
    fn own_checksum(&self) -> Result<String, serde_json::Error> {
        let bare = RunManifest { checksum: None, ..self.clone() };
        Ok(md5_hex(&serde_json::to_vec(&bare)?))
    }
}

impl RunManifest {
    /// A new, incomplete manifest with a fresh run id.
    pub fn new(meta: serde_json::Value) -> Self {
        RunManifest {
            format: MANIFEST_FORMAT,
            run_id: new_run_id(),
            complete: false,
            started_utc: super::utc_now_rfc3339(),
            finished_utc: None,
            files: Vec::new(),
            meta,
            checksums: Default::default(),
            checksum: None,
        }
    }
}

/// A run id: UTC start time, process id and a random part, e.g. `20261202T044512Z-1234-9f3a2c`.
pub fn new_run_id() -> String {
    let now = super::utc_now_rfc3339(); // 2026-12-02T04:45:12Z
    let compact: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let salt = (nanos as u64 ^ ((std::process::id() as u64) << 20)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    format!("{compact}-{}-{salt:06x}", std::process::id())
}

/// What the published output folder holds.
#[derive(Clone, Debug, PartialEq)]
pub enum OutState {
    /// Nothing there yet.
    Absent,
    /// An empty folder.
    Empty,
    /// A published run with its manifest.
    Run(RunManifest),
    /// A folder with other files, a manifest-less run among them (`names`: a few of them):
    /// never replaced.
    Foreign { names: Vec<String> },
}

/// An output folder, locked for this process (see the module documentation).
#[derive(Debug)]
pub struct RunDir {
    out: PathBuf,
    staging: PathBuf,
    previous: PathBuf,
    lock_path: PathBuf,
    lock_file: File,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ReportError + 'a {
    move |e| ReportError::io(action, path, e)
}

impl RunDir {
    /// Takes the lock of output folder `out` (creating its parent folders), then repairs a
    /// publication cut short by a crash. Another live run on the same folder is
    /// [`ReportError::Locked`], naming it.
    pub fn lock(out: &Path) -> Result<RunDir, ReportError> {
        let out = absolute(out)?;
        let (parent, name) = match (out.parent(), out.file_name()) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().into_owned()),
            _ => return Err(ReportError::Invalid(format!("{} cannot be an output folder", out.display()))),
        };
        fs::create_dir_all(&parent).map_err(io("create directory", &parent))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let mut lock = take_lock(&out, &lock_path)?;
        if let Ok(dup) = lock.try_clone() {
            held().push((lock_path.clone(), dup));
        }
        let _ = lock.set_len(0);
        let _ = lock.seek(SeekFrom::Start(0));
        let _ = write!(lock, "pid {}\nsince {}\n", std::process::id(), super::utc_now_rfc3339());
        let _ = lock.sync_all();
        let dir = RunDir {
            staging: parent.join(format!(".{name}.partial")),
            previous: parent.join(format!(".{name}.previous")),
            out,
            lock_path,
            lock_file: lock,
        };
        dir.recover()?;
        Ok(dir)
    }

    /// The published output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The folder of the run in progress (`.OUT.partial`).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// What the published folder holds.
    pub fn published(&self) -> Result<OutState, ReportError> {
        let entries = match fs::read_dir(&self.out) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OutState::Absent),
            Err(e) => return Err(ReportError::io("read", &self.out, e)),
        };
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        if names.is_empty() {
            return Ok(OutState::Empty);
        }
        if names.iter().any(|n| n == MANIFEST) {
            return Ok(OutState::Run(read_manifest(&self.out.join(MANIFEST))?));
        }
        names.truncate(5);
        Ok(OutState::Foreign { names })
    }

    /// The manifest of the run in progress in `.OUT.partial`, if there is one.
    pub fn in_progress(&self) -> Result<Option<RunManifest>, ReportError> {
        let path = self.staging.join(MANIFEST);
        if !path.exists() {
            return Ok(None);
        }
        read_manifest(&path).map(Some)
    }

    /// Starts a new run in `.OUT.partial` (an earlier one there is deleted: the caller decides
    /// whether that is allowed) and writes its incomplete manifest.
    pub fn start(&self, manifest: &RunManifest) -> Result<(), ReportError> {
        self.discard_in_progress()?;
        fs::create_dir(&self.staging).map_err(io("create directory", &self.staging))?;
        // A folder without its manifest is no run: leave nothing behind that `--resume` would
        // find and refuse (a full disk fails here first).
        self.write_manifest(manifest).inspect_err(|_| {
            let _ = fs::remove_dir_all(&self.staging);
        })
    }

    /// Rewrites the manifest of the run in progress.
    pub fn write_manifest(&self, manifest: &RunManifest) -> Result<(), ReportError> {
        let path = self.staging.join(MANIFEST);
        let err = |source| ReportError::Json { path: path.clone(), source };
        let sealed = RunManifest { checksum: Some(manifest.own_checksum().map_err(err)?), ..manifest.clone() };
        let mut json = serde_json::to_vec_pretty(&sealed).map_err(err)?;
        json.push(b'\n');
        crate::fs::write_atomic(&path, &json).map_err(ReportError::from)
    }

    /// Records the checksums of `files` (relative to the run in progress, each just written) in
    /// `manifest` and rewrites it. Written after the files, so a crash in between leaves files
    /// without a checksum, which [`RunDir::verify`] reports as [`Checked::NotRecorded`] (redo
    /// them), never as corrupted.
    pub fn record(&self, manifest: &mut RunManifest, files: &[String]) -> Result<(), ReportError> {
        for f in files {
            manifest.checksums.insert(f.clone(), file_md5(&self.staging.join(f))?);
        }
        self.write_manifest(manifest)
    }

    /// Checks the file `rel` of the run in `folder` (the run in progress or a published one)
    /// against the checksum `manifest` recorded for it.
    pub fn verify(folder: &Path, manifest: &RunManifest, rel: &str) -> Result<Checked, ReportError> {
        let Some(expected) = manifest.checksums.get(rel) else { return Ok(Checked::NotRecorded) };
        let path = folder.join(rel);
        let found = file_md5(&path)?;
        if found.eq_ignore_ascii_case(expected) {
            Ok(Checked::Intact)
        } else {
            Err(ReportError::Corrupted { path, manifest: folder.join(MANIFEST), expected: expected.clone(), found })
        }
    }

    /// Deletes the run in progress, if any.
    pub fn discard_in_progress(&self) -> Result<(), ReportError> {
        match fs::remove_dir_all(&self.staging) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ReportError::io("remove", &self.staging, e)),
        }
    }

    /// Publishes the run in progress as `OUT`, replacing what is there (see the module
    /// documentation); the manifest is completed (file list, finish time) and written last.
    /// The caller checks beforehand that replacing `OUT` is allowed.
    pub fn publish(&self, manifest: &mut RunManifest) -> Result<(), ReportError> {
        let mut files = Vec::new();
        list_files(&self.staging, Path::new(""), &mut files).map_err(io("read", &self.staging))?;
        files.retain(|f| f != MANIFEST);
        files.sort();
        for f in &files {
            manifest.checksums.insert(f.clone(), file_md5(&self.staging.join(f))?);
        }
        manifest.files = files;
        manifest.complete = true;
        manifest.finished_utc = Some(super::utc_now_rfc3339());
        self.write_manifest(manifest)?;
        crate::fs::sync_dir(&self.staging);
        self.swap_in()
    }

    /// `OUT` -> `.OUT.previous`, `.OUT.partial` -> `OUT`, delete `.OUT.previous`.
    fn swap_in(&self) -> Result<(), ReportError> {
        if self.previous.exists() {
            fs::remove_dir_all(&self.previous).map_err(io("remove", &self.previous))?;
        }
        let had_out = match fs::symlink_metadata(&self.out) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ReportError::io("inspect", &self.out, e)),
        };
        if had_out {
            fs::rename(&self.out, &self.previous).map_err(io("move aside", &self.out))?;
        }
        if let Err(e) = fs::rename(&self.staging, &self.out) {
            if had_out {
                let _ = fs::rename(&self.previous, &self.out);
            }
            return Err(ReportError::io("publish", &self.out, e));
        }
        if let Some(parent) = self.out.parent() {
            crate::fs::sync_dir(parent);
        }
        if had_out {
            fs::remove_dir_all(&self.previous).map_err(io("remove", &self.previous))?;
        }
        Ok(())
    }

    /// Finishes or undoes a publication that a crash cut short (`OUT` absent).
    fn recover(&self) -> Result<(), ReportError> {
        if self.out.exists() || !self.previous.exists() {
            if self.out.exists() && self.previous.exists() {
                // Crashed after the swap, before the old run was deleted.
                fs::remove_dir_all(&self.previous).map_err(io("remove", &self.previous))?;
            }
            return Ok(());
        }
        match self.in_progress() {
            Ok(Some(m)) if m.complete => self.swap_in(),
            _ => fs::rename(&self.previous, &self.out).map_err(io("restore", &self.out)),
        }
    }
}

impl Drop for RunDir {
    /// Deletes the lock file while the lock is still held (see the module documentation), if
    /// the path still names it.
    fn drop(&mut self) {
        // Before the lock is released: the registry's duplicate handle would keep it held.
        held().retain(|(path, _)| *path != self.lock_path);
        #[cfg(unix)]
        if same_file(&self.lock_file, &self.lock_path) {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// The lock files of the [`RunDir`]s alive in this process, each with a duplicate handle of the
/// locked file (to check that the path still names it), for [`remove_held_lock_files`].
static HELD: std::sync::Mutex<Vec<(PathBuf, File)>> = std::sync::Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<(PathBuf, File)>> {
    HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Deletes the lock file of every [`RunDir`] alive in this process, as their `Drop` would, for a
/// process about to exit without returning (a second Ctrl-C): without it the `.OUT.lock` file
/// stays beside `OUT`. The locks themselves are released when the process exits, and what the
/// module documentation says of a deleted lock file holds: it excludes nobody once gone, and a
/// run that opened it before holds no lock on `OUT`.
pub fn remove_held_lock_files() {
    for (path, file) in held().iter() {
        #[cfg(unix)]
        if same_file(file, path) {
            let _ = fs::remove_file(path);
        }
        #[cfg(not(unix))]
        let _ = (path, file);
    }
}

/// What [`RunDir::verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The file matches its recorded checksum.
    Intact,
    /// The manifest has no checksum for it: written by an older build, or the run stopped between
    /// writing the file and recording it.
    NotRecorded,
}

/// MD5 (hex) of a file's bytes: it detects truncation, bit flips and another run's file; it is
/// not meant to resist tampering.
fn file_md5(path: &Path) -> Result<String, ReportError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    Ok(md5_hex(&bytes))
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// How often [`take_lock`] starts over when the lock file it locked was deleted or replaced
/// meanwhile (each time another run released the lock in between).
const LOCK_ATTEMPTS: usize = 100;

/// Opens (creating it if need be) and locks `lock_path`, making sure the file locked is the one
/// the path names once the lock is held: a releasing run deletes the file, and a lock taken on a
/// deleted file excludes nobody.
fn take_lock(out: &Path, lock_path: &Path) -> Result<File, ReportError> {
    for _ in 0..LOCK_ATTEMPTS {
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .map_err(io("open", lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                return Err(ReportError::Locked {
                    out: out.to_path_buf(),
                    lock: lock_path.to_path_buf(),
                    holder: holder.trim().replace('\n', ", "),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ReportError::io("lock", lock_path, e)),
        }
        if same_file(&lock, lock_path) {
            return Ok(lock);
        }
        // Locked a file that its holder deleted on release: drop it and open the path again.
    }
    Err(ReportError::io(
        "lock",
        lock_path,
        std::io::Error::other(format!("the lock file was replaced {LOCK_ATTEMPTS} times while being locked")),
    ))
}

/// Whether `path` names the open file `file` (same device and inode). Elsewhere than Unix, only
/// whether the path exists.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// Reads and parses a manifest. One of another format version (or none, from before versions)
/// is [`ReportError::FormatVersion`], naming both.
pub fn read_manifest(path: &Path) -> Result<RunManifest, ReportError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    let json = |source| ReportError::Json { path: path.to_path_buf(), source };
    // The version first, so that an old file gets this error rather than a missing field.
    #[derive(Deserialize)]
    struct Version {
        format: Option<u32>,
    }
    let version: Version = serde_json::from_slice(&bytes).map_err(json)?;
    if version.format != Some(MANIFEST_FORMAT) {
        return Err(ReportError::FormatVersion {
            path: path.to_path_buf(),
            found: version.format,
            expected: MANIFEST_FORMAT,
        });
    }
    let mut manifest: RunManifest = serde_json::from_slice(&bytes).map_err(json)?;
    // The checksum belongs to the file, not to what it says: checked, then dropped, so that a
    // manifest read back equals the one written.
    if let Some(expected) = manifest.checksum.take() {
        let found = manifest.own_checksum().map_err(json)?;
        if found != expected {
            let path = path.to_path_buf();
            return Err(ReportError::Corrupted { manifest: path.clone(), path, expected, found });
        }
    }
    Ok(manifest)
}

fn absolute(p: &Path) -> Result<PathBuf, ReportError> {
    if let Ok(c) = fs::canonicalize(p) {
        return Ok(c);
    }
    let abs = std::path::absolute(p).map_err(io("resolve", p))?;
    // Resolve `..` and `.` lexically for a folder that does not exist yet.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

fn list_files(root: &Path, rel: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in fs::read_dir(root.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            list_files(root, &r, out)?;
        } else {
            out.push(r.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}
