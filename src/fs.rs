//! File writes that a crash cannot tear: [`write_atomic`] is the one way checkpoints, models and
//! reports reach the disk.
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// mix: the bytes go to a temporary file in the same folder (so the rename stays on one file
/// system), which is flushed to disk (fsync) and renamed over `path`; then the folder itself is
/// flushed where the OS allows it (Unix), so the rename survives a power cut. A failure is
/// [`Error::Io`] naming `path`, and leaves no temporary file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    // Through the File itself: NamedTempFile's own Write adds the temporary file's name to
    // every error, which the user never sees and need not.
    tmp.as_file_mut().write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Reads the whole file at `path`; a failure is [`Error::Io`] naming it.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Flushes a folder's entries (a rename into it) to disk. Only Unix can open a folder for that;
/// elsewhere, and when it fails, the rename is still atomic, only perhaps not yet durable.
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}
