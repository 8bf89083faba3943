//! Small durable-file helpers shared by every file the engine writes whole: topic
//! config, offset-store snapshots. The pattern is the classic one: write a temporary
//! file, fsync it, rename it over the target, fsync the directory. A crash at any point
//! leaves either the old or the new file, never a torn one.
//!
//! Each helper takes the [`FileSystem`] to use: the engine passes its own (so tests can
//! inject faults), offline tools pass [`crate::fs::OsFs`].

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fs::{FileSystem, OpenMode, SyncDirError};

/// What stopped a step that ends in an fsync. The engine treats the two apart: only a
/// failed fsync is fatal for what it covered (never retried, never acknowledged); an
/// error before any fsync ran (the file or directory could not be opened: the process
/// is out of file descriptors, say) leaves nothing in doubt, so the step fails, like a
/// write on a full disk, and may be tried again.
#[derive(Debug)]
pub(crate) enum SyncFailure {
    /// No fsync ran.
    BeforeSync(Error),
    /// An fsync failed.
    Fsync(Error),
}

impl SyncFailure {
    pub fn into_error(self) -> Error {
        match self {
            SyncFailure::BeforeSync(error) | SyncFailure::Fsync(error) => error,
        }
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    try_sync_dir(fs, dir).map_err(SyncFailure::into_error)
}

/// [`sync_dir`], saying whether the fsync itself failed or the directory could not be
/// opened for it.
pub(crate) fn try_sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), SyncFailure> {
    match fs.sync_dir(dir) {
        Ok(()) => Ok(()),
        Err(SyncDirError::Open(error)) => Err(SyncFailure::BeforeSync(Error::io(
            format!("opening directory {} to fsync it", dir.display()),
            error,
        ))),
        Err(SyncDirError::Sync(error)) => Err(SyncFailure::Fsync(Error::io(
            format!("fsyncing directory {}", dir.display()),
            error,
        ))),
    }
}

/// The temporary name used while `path` is being replaced.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically and durably.
pub fn write_file_atomically(fs: &dyn FileSystem, path: &Path, contents: &[u8]) -> Result<()> {
    replace_file(fs, path, contents)?;
    sync_dir(fs, parent_dir(path))
}

/// Replaces `path` with `contents` atomically (temporary file, fsync, rename) but does
/// not fsync the directory: the caller does, once for several files. Until it does, a
/// crash may leave the old file. On failure the temporary file is removed (best effort)
/// and `path` is untouched.
pub fn replace_file(fs: &dyn FileSystem, path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| -> Result<()> {
        let file = fs
            .open(&tmp, OpenMode::Truncate)
            .ctx(|| format!("creating {}", tmp.display()))?;
        file.write_all_at(contents, 0)
            .ctx(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .ctx(|| format!("fsyncing {}", tmp.display()))?;
        fs.rename(&tmp, path)
            .ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = fs.remove_file(&tmp);
    }
    written
}

/// Reads a small file whole, refusing one larger than `max_bytes` (its size came from
/// disk and is untrusted). Returns `Ok(None)` when it does not exist.
pub fn read_small_file(
    fs: &dyn FileSystem,
    path: &Path,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>> {
    let contents = match fs.read_file(path, max_bytes.saturating_add(1)) {
        Ok(contents) => contents,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    if contents.len() as u64 > max_bytes {
        return Err(Error::corrupt(
            path,
            max_bytes,
            format!("file is larger than the {max_bytes}-byte limit for this kind of file"),
        ));
    }
    Ok(Some(contents))
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OsFs;
    use std::fs;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        write_file_atomically(&OsFs, &path, b"one").unwrap();
        write_file_atomically(&OsFs, &path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn small_file_reader_refuses_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).unwrap();
        assert!(matches!(
            read_small_file(&OsFs, &path, 99),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(
            read_small_file(&OsFs, &path, 100).unwrap().unwrap().len(),
            100
        );
        assert!(
            read_small_file(&OsFs, &dir.path().join("missing"), 10)
                .unwrap()
                .is_none()
        );
    }
}
