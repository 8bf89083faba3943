//! Small durable-file helpers shared by every file the engine writes whole: topic
//! config, offset-store snapshots. The pattern is the classic one: write a temporary
//! file, fsync it, rename it over the target, fsync the directory. A crash at any point
//! leaves either the old or the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).ctx(|| format!("opening directory {}", dir.display()))?;
    handle
        .sync_all()
        .ctx(|| format!("fsyncing directory {}", dir.display()))
}

/// The temporary name used while `path` is being replaced.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `contents` atomically and durably.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        file.write_all(contents)
            .ctx(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .ctx(|| format!("fsyncing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(parent_dir(path))
}

/// Reads a small file whole, refusing one larger than `max_bytes` (its size came from
/// disk and is untrusted). Returns `Ok(None)` when it does not exist.
pub fn read_small_file(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let mut contents = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut contents)
        .ctx(|| format!("reading {}", path.display()))?;
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

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn small_file_reader_refuses_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).unwrap();
        assert!(matches!(
            read_small_file(&path, 99),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(read_small_file(&path, 100).unwrap().unwrap().len(), 100);
        assert!(
            read_small_file(&dir.path().join("missing"), 10)
                .unwrap()
                .is_none()
        );
    }
}
