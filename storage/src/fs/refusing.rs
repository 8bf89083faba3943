//! [`RefusingFs`]: the real file system, but chosen renames and removals fail, for
//! tests of what a delete does when its files cannot be moved or removed.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{DirEntry, FileSystem, FsFile, Metadata, OpenMode, OsFs, SyncDirError};

/// What [`RefusingFs`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedOp {
    Rename,
    RemoveDirAll,
}

/// The real filesystem, but renames or removals of paths that contain a text fail
/// with an OS error, while set.
#[derive(Debug, Default)]
pub struct RefusingFs {
    refused: Mutex<Vec<(RefusedOp, &'static str, i32)>>,
}

impl RefusingFs {
    /// Fails `op` on every path containing `part` with OS error `errno` from now on.
    pub fn refuse(&self, op: RefusedOp, part: &'static str, errno: i32) {
        self.refused.lock().unwrap().push((op, part, errno));
    }

    /// Refuses nothing any more.
    pub fn allow_all(&self) {
        self.refused.lock().unwrap().clear();
    }

    fn check(&self, op: RefusedOp, path: &Path) -> io::Result<()> {
        let path = path.to_string_lossy();
        for &(refused, part, errno) in self.refused.lock().unwrap().iter() {
            if refused == op && path.contains(part) {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }
}

impl FileSystem for RefusingFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        OsFs.open(path, mode)
    }
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        OsFs.read_file(path, limit)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        OsFs.metadata(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        OsFs.read_dir(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(RefusedOp::Rename, from)?;
        OsFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(RefusedOp::RemoveDirAll, path)?;
        OsFs.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError> {
        OsFs.sync_dir(path)
    }
    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes> {
        OsFs.map(path, len)
    }
}
