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
    // `create_new` (O_CREAT | O_EXCL) never follows a symlink planted at the temporary name.
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
    };
    let result = (|| {
        let mut file = match create() {
            // Left by a process of the same id that crashed mid-write (in a container the node
            // is often pid 1 every time): remove it (a link itself, never its target) and retry.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp).map_err(step("remove stale", &tmp))?;
                create()
            }
            other => other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_temporary_file_or_planted_symlink_does_not_block_or_redirect_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("book.json");
        let tmp = dir
            .path()
            .join(format!("book.json.tmp{}", std::process::id()));
        // A crash of a process with our pid left its temporary file.
        fs::write(&tmp, b"half a book").expect("stale");
        write_atomically(&path, b"new", 0o600).expect("write over a stale temporary file");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert!(!tmp.exists());
        // Someone planted a symlink at the temporary name: the target is not written.
        let target = dir.path().join("victim");
        fs::write(&target, b"untouched").expect("victim");
        std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
        write_atomically(&path, b"newer", 0o600).expect("write past a planted symlink");
        assert_eq!(fs::read(&path).expect("read"), b"newer");
        assert_eq!(fs::read(&target).expect("read"), b"untouched");
    }
}
