//! Writing a file so that a crash leaves the old contents or the new, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically, with permission bits `mode` (e.g. 0o600): to a temporary
/// file in the same directory, synced, renamed over `path`, and the directory synced. On error
/// the temporary file is removed and `path` is untouched; the error names the step and file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(file_name) = path.file_name() else {
        return Err(FileError {
            op: "name",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let step = |op: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| FileError { op, path, source }
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(step("create", &tmp))?;
        file.write_all(bytes).map_err(step("write", &tmp))?;
        file.sync_all().map_err(step("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(step("rename", path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(step("fsync", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A file operation that failed: which step, on which file, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FileError {
    /// The step: create, write, fsync, rename.
    pub op: &'static str,
    /// The file it was done on.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}
