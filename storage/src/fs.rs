//! The file-operations seam: every filesystem call the engine makes goes through a
//! [`FileSystem`] (operations on paths) or an [`FsFile`] (operations on an open file),
//! so a test can slide a fault-injecting filesystem, `FaultyFs` (behind the `testing`
//! cargo feature), under the whole
//! engine: lose what was not fsynced at a simulated power cut, tear the last write,
//! fail the Nth fsync with EIO, run out of space, return short writes.
//!
//! The trait has exactly the operations the engine performs: open (read, write, create
//! new, create or open, create or truncate), positional write (of one buffer, or of
//! several in one `pwritev`) and read, `fdatasync`,
//! `fsync`, `set_len`, whole-file reads, metadata, directory listing, directory creation,
//! rename, remove, directory fsync and read-only mapping.
//!
//! # Cost on the production path
//!
//! [`OsFs`] is a zero-sized type whose methods are the std calls, and [`OsFile`] wraps a
//! `std::fs::File`. The engine holds `Arc<dyn FileSystem>` and `Arc<dyn FsFile>`, so each
//! system call costs one extra indirect call: nanoseconds against the microseconds of a
//! `pwrite` and the milliseconds of an `fdatasync`. Making the engine generic over the
//! filesystem would save that call but put a type parameter on `Store`, `Partition`,
//! `Segment`, `OffsetStore` and every crate that names them; not worth it. Reads do not
//! go through the trait at all once a segment is mapped: they slice the mapping.
//!
//! # Contract
//!
//! An implementation behaves like POSIX on a local disk: data written is visible to
//! reads at once, survives a crash only once `sync_data`/`sync_all` returned `Ok`, and a
//! directory entry created, renamed or removed survives only once `sync_dir` of its
//! directory returned `Ok`. A failed sync may have lost what it covered (the engine
//! never retries one). `write_at` and `write_vectored_at` may write fewer bytes than
//! asked: [`FsFile::write_all_at`] and [`FsFile::write_all_vectored_at`] loop.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, IoSlice, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

#[cfg(any(test, feature = "testing"))]
mod faulty;

#[cfg(any(test, feature = "testing"))]
mod refusing;
#[cfg(any(test, feature = "testing"))]
pub use faulty::{CrashOptions, FaultStats, FaultyFs, SeededRng, SyncFault, SyncKind, Unsynced};
#[cfg(any(test, feature = "testing"))]
pub use refusing::{RefusedOp, RefusingFs};

/// The most buffers one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A write that failed part-way ([`FsFile::write_all_vectored_at`]).
#[derive(Debug)]
pub struct PartialWrite {
    /// Bytes written, from the start, before the error.
    pub written: u64,
    pub error: io::Error,
}

/// Why [`FileSystem::sync_dir`] failed. The two are different things to the engine:
/// a directory that could not be opened (out of file descriptors, say) was not fsynced
/// and nothing is in doubt, so the fsync can be tried again; a failed fsync may have
/// lost what it covered and is never retried.
#[derive(Debug)]
pub enum SyncDirError {
    /// Opening the directory failed; no fsync ran.
    Open(io::Error),
    /// The fsync failed.
    Sync(io::Error),
}

impl fmt::Display for SyncDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncDirError::Open(error) => write!(f, "opening the directory: {error}"),
            SyncDirError::Sync(error) => write!(f, "fsync: {error}"),
        }
    }
}

impl std::error::Error for SyncDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncDirError::Open(error) | SyncDirError::Sync(error) => Some(error),
        }
    }
}

/// How [`FileSystem::open`] opens a file. Every mode but `Read` opens for reading and
/// writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read-only.
    Read,
    /// An existing file, for writing.
    Write,
    /// A new file; fails with `AlreadyExists` if there is one.
    CreateNew,
    /// Creates the file if it is missing, keeps its contents if not.
    Create,
    /// Creates the file if it is missing, empties it if not.
    Truncate,
}

/// What the engine needs to know about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub len: u64,
    pub is_dir: bool,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub is_dir: bool,
}

/// An open file.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Writes some prefix of `buf` at `offset` (`pwrite`); returns how many bytes.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// Writes some prefix of the concatenation of `bufs` at `offset` (`pwritev`);
    /// returns how many bytes. The default writes the first non-empty buffer alone,
    /// which the contract allows (a short write).
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        match bufs.iter().find(|buf| !buf.is_empty()) {
            Some(buf) => self.write_at(buf, offset),
            None => Ok(0),
        }
    }

    /// Reads into `buf` from `offset` (`pread`); returns how many bytes, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// `fdatasync`: the file's data (and its size) are durable when this returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync`: data and metadata are durable when this returns `Ok`.
    fn sync_all(&self) -> io::Result<()>;

    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's current size in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Takes an exclusive advisory lock without blocking: `Ok(false)` if another
    /// process holds it. Released when the file is closed.
    fn try_lock(&self) -> io::Result<bool>;

    /// Writes all of `buf` at `offset`, looping over short writes. On an error some
    /// prefix of `buf` may have been written.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file accepted no more bytes",
                    ));
                }
                Ok(written) => {
                    let Some(rest) = buf.get(written..) else {
                        return Err(io::Error::other(
                            "write_at reported more bytes than it was given",
                        ));
                    };
                    buf = rest;
                    offset += written as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `bufs`, one after the other, at `offset`: one system call for
    /// all of them unless the file takes fewer bytes. Loops over short writes; on an
    /// error, says how many bytes were written before it.
    fn write_all_vectored_at(
        &self,
        mut bufs: &mut [IoSlice<'_>],
        mut offset: u64,
    ) -> Result<(), PartialWrite> {
        let mut written_total = 0;
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let failed = |error| PartialWrite {
                written: written_total,
                error,
            };
            match self.write_vectored_at(bufs, offset) {
                Ok(0) => {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file accepted no more bytes",
                    )));
                }
                Ok(written) => {
                    let left: usize = bufs.iter().map(|buf| buf.len()).sum();
                    if written > left {
                        return Err(failed(io::Error::other(
                            "write_vectored_at reported more bytes than it was given",
                        )));
                    }
                    IoSlice::advance_slices(&mut bufs, written);
                    offset += written as u64;
                    written_total += written as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(())
    }

    /// Fills `buf` from `offset`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the bytes asked for",
                    ));
                }
                Ok(read) => {
                    let Some(rest) = buf.get_mut(read..) else {
                        return Err(io::Error::other(
                            "read_at reported more bytes than it was given room for",
                        ));
                    };
                    buf = rest;
                    offset += read as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A file that was never opened: every operation fails. The writer of a partition
/// that recovery refused to open holds one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Unopened;

impl FsFile for Unopened {
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(Unopened::error())
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
        Err(Unopened::error())
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(Unopened::error())
    }
    fn sync_all(&self) -> io::Result<()> {
        Err(Unopened::error())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(Unopened::error())
    }
    fn size(&self) -> io::Result<u64> {
        Err(Unopened::error())
    }
    fn try_lock(&self) -> io::Result<bool> {
        Err(Unopened::error())
    }
}

impl Unopened {
    fn error() -> io::Error {
        io::Error::other("the partition was not opened")
    }
}

/// The operations on paths. See the module docs for the contract.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;

    /// Reads at most `limit` bytes from the start of the file.
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;

    /// Size and kind of `path` (following symlinks).
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;

    /// The entries of a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;

    /// Creates one directory; its parent must exist.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// Creates a directory and any missing ancestors.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Renames a file or directory, atomically replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Unlinks a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes a directory and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// fsyncs a directory, making the entries created, renamed or removed in it durable.
    /// Says which step failed: opening the directory (no fsync ran: EMFILE, say) or
    /// the fsync itself.
    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError>;

    /// Maps `len` bytes of the file read-only (the mapping may run past the file's end;
    /// see `mmap.rs` for the rules that keep that sound).
    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes>;

    /// Whether `path` exists.
    fn try_exists(&self, path: &Path) -> io::Result<bool> {
        match self.metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The real filesystem, through std. The production implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl OsFs {
    /// An `OsFs` ready to put in [`crate::StoreOptions`].
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(OsFs)
    }
}

/// A `std::fs::File` behind [`FsFile`].
#[derive(Debug)]
pub struct OsFile(pub File);

impl FsFile for OsFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(&self.0, buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        // Linux takes at most IOV_MAX (1,024) buffers a call; the rest is a short write.
        let bufs = bufs.get(..IOV_MAX).unwrap_or(bufs);
        Ok(rustix::io::pwritev(&self.0, bufs, offset)?)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn try_lock(&self) -> io::Result<bool> {
        match self.0.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// The std `OpenOptions` for a mode.
pub(crate) fn open_options(mode: OpenMode) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    match mode {
        OpenMode::Read => {}
        OpenMode::Write => {
            options.write(true);
        }
        OpenMode::CreateNew => {
            options.write(true).create_new(true);
        }
        OpenMode::Create => {
            options.write(true).create(true).truncate(false);
        }
        OpenMode::Truncate => {
            options.write(true).create(true).truncate(true);
        }
    }
    options
}

/// Reads up to `limit` bytes of the file at `path` with std.
pub(crate) fn read_file_std(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut contents = Vec::new();
    file.take(limit).read_to_end(&mut contents)?;
    Ok(contents)
}

/// Lists a directory with std.
pub(crate) fn read_dir_std(path: &Path) -> io::Result<Vec<DirEntry>> {
    std::fs::read_dir(path)?
        .map(|entry| {
            let entry = entry?;
            Ok(DirEntry {
                name: entry.file_name(),
                is_dir: entry.file_type()?.is_dir(),
            })
        })
        .collect()
}

impl FileSystem for OsFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(OsFile(open_options(mode).open(path)?)))
    }

    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        read_file_std(path, limit)
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let metadata = std::fs::metadata(path)?;
        Ok(Metadata {
            len: metadata.len(),
            is_dir: metadata.is_dir(),
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        read_dir_std(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError> {
        File::open(path)
            .map_err(SyncDirError::Open)?
            .sync_all()
            .map_err(SyncDirError::Sync)
    }

    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes> {
        crate::mmap::map_read_only(path, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file that accepts at most `chunk` bytes per call, and `left` bytes in all
    /// (then fails with ENOSPC).
    #[derive(Debug)]
    struct Trickle {
        inner: OsFile,
        chunk: usize,
        left: AtomicUsize,
    }

    impl FsFile for Trickle {
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
            let n = buf
                .len()
                .min(self.chunk)
                .min(self.left.load(Ordering::Relaxed));
            if n == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(28));
            }
            let written = self.inner.write_at(&buf[..n], offset)?;
            self.left.fetch_sub(written, Ordering::Relaxed);
            Ok(written)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = buf.len().min(self.chunk);
            self.inner.read_at(&mut buf[..n], offset)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn sync_all(&self) -> io::Result<()> {
            self.inner.sync_all()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn size(&self) -> io::Result<u64> {
            self.inner.size()
        }
        fn try_lock(&self) -> io::Result<bool> {
            self.inner.try_lock()
        }
    }

    #[test]
    fn write_all_and_read_exact_loop_over_short_transfers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OsFs.open(&path, OpenMode::CreateNew).unwrap();
        drop(file);
        let trickle = Trickle {
            inner: OsFile(open_options(OpenMode::Write).open(&path).unwrap()),
            chunk: 3,
            left: AtomicUsize::new(usize::MAX),
        };
        let data: Vec<u8> = (0..100).collect();
        trickle.write_all_at(&data, 10).unwrap();
        let mut back = vec![0; 100];
        trickle.read_exact_at(&mut back, 10).unwrap();
        assert_eq!(back, data);
        let mut past_end = vec![0; 20];
        assert_eq!(
            trickle
                .read_exact_at(&mut past_end, 100)
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn open_modes_create_keep_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(
            OsFs.open(&path, OpenMode::Write).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        OsFs.open(&path, OpenMode::CreateNew)
            .unwrap()
            .write_all_at(b"abc", 0)
            .unwrap();
        assert_eq!(
            OsFs.open(&path, OpenMode::CreateNew).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            OsFs.open(&path, OpenMode::Create).unwrap().size().unwrap(),
            3
        );
        assert_eq!(OsFs.read_file(&path, 2).unwrap(), b"ab");
        assert_eq!(
            OsFs.open(&path, OpenMode::Truncate)
                .unwrap()
                .size()
                .unwrap(),
            0
        );
        assert!(OsFs.try_exists(&path).unwrap());
        OsFs.remove_file(&path).unwrap();
        assert!(!OsFs.try_exists(&path).unwrap());
    }

    /// `count` buffers of random lengths (some empty), numbered bytes throughout.
    fn pieces(count: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = crate::rng::SeededRng::new(seed);
        let mut next = 0u8;
        (0..count)
            .map(|_| {
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(20) as usize,
                    _ => rng.below(5000) as usize,
                };
                (0..len)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_vectored_write_writes_every_buffer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // More buffers than one pwritev takes (IOV_MAX), through the OS's pwritev and
        // through the one-buffer-a-call default, with short writes.
        for (case, count) in [(0, 3), (1, 40), (2, IOV_MAX + 300)] {
            let data = pieces(count, case);
            let whole: Vec<u8> = data.concat();
            let path = dir.path().join(format!("f{case}"));
            let os = OsFs.open(&path, OpenMode::CreateNew).unwrap();
            let mut slices: Vec<IoSlice<'_>> = data.iter().map(|d| IoSlice::new(d)).collect();
            os.write_all_vectored_at(&mut slices, 7).unwrap();
            assert_eq!(OsFs.read_file(&path, u64::MAX).unwrap()[7..], whole[..]);
            let trickle = Trickle {
                inner: OsFile(open_options(OpenMode::Truncate).open(&path).unwrap()),
                chunk: 1 + case as usize * 1000,
                left: AtomicUsize::new(usize::MAX),
            };
            let mut slices: Vec<IoSlice<'_>> = data.iter().map(|d| IoSlice::new(d)).collect();
            trickle.write_all_vectored_at(&mut slices, 0).unwrap();
            assert_eq!(
                OsFs.read_file(&path, u64::MAX).unwrap(),
                whole,
                "case {case}"
            );
        }
    }

    #[test]
    fn a_failed_vectored_write_says_how_much_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let data = pieces(30, 9);
        let whole: Vec<u8> = data.concat();
        for left in [0, 1, 999, whole.len() / 2, whole.len() - 1] {
            let path = dir.path().join(format!("f{left}"));
            drop(OsFs.open(&path, OpenMode::CreateNew).unwrap());
            let trickle = Trickle {
                inner: OsFile(open_options(OpenMode::Write).open(&path).unwrap()),
                chunk: 777,
                left: AtomicUsize::new(left),
            };
            let mut slices: Vec<IoSlice<'_>> = data.iter().map(|d| IoSlice::new(d)).collect();
            let failed = trickle.write_all_vectored_at(&mut slices, 0).unwrap_err();
            assert_eq!(failed.written, left as u64);
            assert_eq!(failed.error.raw_os_error(), Some(28));
            assert_eq!(OsFs.read_file(&path, u64::MAX).unwrap(), whole[..left]);
        }
    }
}
