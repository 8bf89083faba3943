//! [`StateLog`]: open and replay, group commit, compaction, poisoning. The protocol and
//! its crash analysis are in the docs of [`crate::statelog`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::clock::Clock;
use crate::condition::Condition;
use crate::error::{Error, IoContext, Result};
use crate::fs::{FileSystem, FsFile, OpenMode};
use crate::fsutil::{parent_dir, sync_dir, temp_path};
use crate::limits::STATE_READ_CHUNK_BYTES;

use super::record::{LogOp, OPS_BYTES_MAX, assemble_record, check_ops_fit};
use super::scan::{ScanEnd, scan_file};
use super::snapshot::SnapshotWriter;
use super::{StateLogOptions, StateLogStats, StateMachine};

/// A durable state machine: every change is an operation appended to a log file and
/// made durable (one `fdatasync` shared by every append that queued meanwhile) before
/// it is applied and acknowledged. All methods take `&self`; share it in an `Arc`.
pub struct StateLog<M: StateMachine> {
    /// Every file operation goes through this.
    fs: Arc<dyn FileSystem>,
    /// The log's directory; fsynced after the log file is created or replaced.
    dir: PathBuf,
    /// The log file.
    path: PathBuf,
    /// Timestamps of records (informational).
    clock: Arc<dyn Clock>,
    /// When to compact on its own.
    options: StateLogOptions,
    /// The state: holds only durable operations. Readers share it; only the thread
    /// holding the writer role changes it. Locked after `shared`, never before.
    machine: RwLock<M>,
    /// Queue of waiting appends, their outcomes and the writer role.
    shared: Mutex<Shared<M>>,
    /// Signalled when a flush or compaction finishes, so waiters look for their outcome
    /// or take the writer role.
    changed: Condition,
    /// The open log. Locked only by the thread holding the writer role, so never
    /// contended and never held with `shared`.
    log: Mutex<LogFile>,
}

impl<M: StateMachine> fmt::Debug for StateLog<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateLog")
            .field("machine", &M::NAME)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct LogFile {
    /// Opened for writing; records are written at `len`.
    file: Arc<dyn FsFile>,
    /// Bytes in the file, all of them valid records.
    len: u64,
}

/// An append queued by [`StateLog::submit`], to be waited for with [`StateLog::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a submitted append is written only when someone waits for it"]
pub struct Ticket(u64);

struct Shared<M: StateMachine> {
    /// Bytes in the log file (mirrors `LogFile::len` for the compaction trigger).
    log_bytes: u64,
    /// Appends waiting for the next flush, oldest first.
    queue: VecDeque<Queued<M::Op>>,
    next_ticket: u64,
    /// Outcomes of flushed appends that their callers have not collected yet.
    outcomes: HashMap<u64, Result<Vec<M::Outcome>>>,
    /// Some thread is writing the log (a flush or a compaction). At most one at a time.
    writer_busy: bool,
    /// Set when an fsync failed or the log handle is no longer trustworthy: every
    /// append is refused until the log is reopened.
    poisoned: Option<String>,
    stats: StateLogStats,
}

/// One append call waiting for a flush: its operations, encoded and as values.
struct Queued<O> {
    ticket: u64,
    ops: Vec<O>,
    encoded: Vec<u8>,
}

/// A failed write to the log, and whether it leaves the log unable to write again.
struct WriteFailure {
    error: Error,
    poisons: bool,
}

impl WriteFailure {
    fn recoverable(error: Error) -> Self {
        WriteFailure {
            error,
            poisons: false,
        }
    }

    fn fatal(error: Error) -> Self {
        WriteFailure {
            error,
            poisons: true,
        }
    }
}

impl<M: StateMachine> StateLog<M> {
    /// Opens (creating it and its directories if needed) the log at `path`, replays it
    /// into `machine` (normally empty) and makes what it replayed durable.
    ///
    /// A torn tail is truncated with a warning; damage a crash cannot explain fails with
    /// [`Error::Corrupt`] naming the file and position, and the file is left as it is. A
    /// leftover `<path>.tmp` of an interrupted compaction is deleted.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        path: &Path,
        machine: M,
        clock: Arc<dyn Clock>,
        options: StateLogOptions,
    ) -> Result<StateLog<M>> {
        let dir = parent_dir(path).to_path_buf();
        create_dir_durably(&*fs, &dir)?;

        let tmp_path = temp_path(path);
        match fs.remove_file(&tmp_path) {
            Ok(()) => {
                tracing::info!(
                    file = %tmp_path.display(),
                    "removed the temporary file of an interrupted state-log compaction"
                );
                sync_dir(&*fs, &dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", tmp_path.display()), e)),
        }

        let file = open_log(&*fs, path)?;
        // Always: the log may be new, or renamed in by a compaction whose directory
        // fsync never ran (the process died); either way its entry must be durable
        // before what it holds is served.
        sync_dir(&*fs, &dir)?;

        let mut machine = machine;
        let scan = scan_file::<M::Op>(&*file, |_, record| {
            for op in record.ops {
                machine.apply(op);
            }
        })
        .ctx(|| format!("reading {}", path.display()))?;
        match scan.end {
            ScanEnd::Clean => {}
            ScanEnd::Torn { position, reason } => {
                tracing::warn!(
                    file = %path.display(),
                    state = M::NAME,
                    position,
                    dropped_bytes = scan.file_bytes - position,
                    reason = %reason,
                    "truncating the torn tail of a state log"
                );
                file.set_len(position)
                    .ctx(|| format!("truncating {}", path.display()))?;
            }
            ScanEnd::Corrupt { position, reason } => {
                return Err(Error::corrupt(path, position, reason));
            }
            ScanEnd::Newer { position, reason } => {
                return Err(Error::WrittenByNewer {
                    file: path.to_path_buf(),
                    what: format!("{} state log record at byte {position}: {reason}", M::NAME),
                });
            }
        }
        rewrite_durably(&*file, path, scan.valid_len)?;

        Ok(StateLog {
            fs,
            dir,
            path: path.to_path_buf(),
            clock,
            options,
            machine: RwLock::new(machine),
            shared: Mutex::new(Shared {
                log_bytes: scan.valid_len,
                queue: VecDeque::new(),
                next_ticket: 0,
                outcomes: HashMap::new(),
                writer_busy: false,
                poisoned: None,
                stats: StateLogStats::default(),
            }),
            changed: Condition::default(),
            log: Mutex::new(LogFile {
                file,
                len: scan.valid_len,
            }),
        })
    }

    /// Durably appends `ops` and applies them, in order; returns what applying each one
    /// reported.
    ///
    /// When this returns `Ok`, the operations are on disk and applied: a crash keeps all
    /// of them (one call is one record) or, if this had not returned, possibly none. An
    /// operation its [`LogOp::encode`] refuses fails the whole call before anything is
    /// written; so do operations that together do not fit one record
    /// ([`OPS_BYTES_MAX`]). Empty `ops` write nothing.
    pub fn append(&self, ops: Vec<M::Op>) -> Result<Vec<M::Outcome>> {
        match self.submit(ops)? {
            Some(ticket) => self.wait(ticket),
            None => Ok(Vec::new()),
        }
    }

    /// The first half of [`StateLog::append`]: queues `ops` for the next flush and
    /// returns at once (None for empty `ops`). Nothing is durable, applied or even
    /// written until someone waits: [`StateLog::wait`] for the ticket (every ticket must
    /// be waited for, or its outcome stays in memory). Appends are written in the order
    /// they were submitted, so a caller can submit under its own lock, release it, and
    /// wait: the next caller's append then shares or follows this one's fsync.
    pub fn submit(&self, ops: Vec<M::Op>) -> Result<Option<Ticket>> {
        if ops.is_empty() {
            return Ok(None);
        }
        let mut encoded = Vec::new();
        for op in &ops {
            op.encode(&mut encoded)?;
        }
        check_ops_fit(
            &format!("{} state log record (one append call)", M::NAME),
            encoded.len(),
        )?;

        let mut shared = self.lock_shared();
        self.refuse_if_poisoned(&shared)?;
        let ticket = shared.next_ticket;
        shared.next_ticket += 1;
        shared.queue.push_back(Queued {
            ticket,
            ops,
            encoded,
        });
        Ok(Some(Ticket(ticket)))
    }

    /// The second half of [`StateLog::append`]: returns when the append of `ticket` is
    /// durable and applied (or failed), flushing it (and whatever else is queued) if no
    /// other thread is writing.
    pub fn wait(&self, ticket: Ticket) -> Result<Vec<M::Outcome>> {
        let ticket = ticket.0;
        let mut shared = self.lock_shared();
        loop {
            if let Some(outcome) = shared.outcomes.remove(&ticket) {
                return outcome;
            }
            if !shared.writer_busy {
                if !shared.queue.iter().any(|queued| queued.ticket == ticket) {
                    return Err(Error::invalid(format!(
                        "{} state log: ticket {ticket} was never submitted or was collected already",
                        M::NAME
                    )));
                }
                shared.writer_busy = true;
                shared = self.flush_as_writer(shared);
                shared.writer_busy = false;
                self.changed.notify_all();
                continue;
            }
            shared = self.changed.wait(shared);
        }
    }

    /// Returns once every append submitted so far is written (durable or failed),
    /// leaving their outcomes to their own waiters; an error if the log is poisoned.
    pub fn flush_submitted(&self) -> Result<()> {
        let mut shared = self.lock_shared();
        let last = shared.next_ticket;
        loop {
            let waiting = shared.queue.front().is_some_and(|q| q.ticket < last);
            if !waiting && !shared.writer_busy {
                return self.refuse_if_poisoned(&shared);
            }
            if !shared.writer_busy {
                shared.writer_busy = true;
                shared = self.flush_as_writer(shared);
                shared.writer_busy = false;
                self.changed.notify_all();
                continue;
            }
            shared = self.changed.wait(shared);
        }
    }

    /// [`StateLog::append`] of one operation.
    pub fn append_one(&self, op: M::Op) -> Result<M::Outcome> {
        self.append(vec![op])?
            .pop()
            .ok_or_else(|| Error::invalid("an append of one operation reported no outcome"))
    }

    /// Runs `f` on the state. It holds every acknowledged operation and nothing that is
    /// not durable. Appends proceed meanwhile; keep `f` short, as it delays applying them.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.read_machine())
    }

    /// Runs `f` on the state only if no append is queued or being written (so nothing
    /// begun before this call can change the state after it), else returns `Ok(None)`.
    /// For skipping a write that would change nothing, such as deleting what does not
    /// exist. Fails like an append when the log is poisoned.
    pub fn read_settled<R>(&self, f: impl FnOnce(&M) -> R) -> Result<Option<R>> {
        let shared = self.lock_shared();
        self.refuse_if_poisoned(&shared)?;
        if shared.writer_busy || !shared.queue.is_empty() {
            return Ok(None);
        }
        Ok(Some(f(&self.read_machine())))
    }

    /// Fails with [`Error::Poisoned`] if an earlier failure left the log refusing writes.
    pub fn check_writable(&self) -> Result<()> {
        self.refuse_if_poisoned(&self.lock_shared())
    }

    /// Rewrites the log as a snapshot of the state (see the module docs). Runs on its
    /// own when the log grows past `max(compact_min_bytes, compact_live_ratio x
    /// snapshot size)`.
    pub fn compact(&self) -> Result<()> {
        let shared = self.acquire_writer_role()?;
        let (mut shared, result) = self.compact_as_writer(shared);
        shared.writer_busy = false;
        self.changed.notify_all();
        result
    }

    /// Bytes in the log file now.
    pub fn log_bytes(&self) -> u64 {
        self.lock_shared().log_bytes
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> StateLogStats {
        self.lock_shared().stats
    }

    fn lock_shared(&self) -> MutexGuard<'_, Shared<M>> {
        // A panic while holding the lock is a bug elsewhere; the state is still usable.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_machine(&self) -> RwLockReadGuard<'_, M> {
        self.machine.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_machine(&self) -> RwLockWriteGuard<'_, M> {
        self.machine.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_log(&self) -> MutexGuard<'_, LogFile> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poisoned_error(&self, cause: &str) -> Error {
        Error::Poisoned {
            partition: format!("{} state log {}", M::NAME, self.path.display()),
            cause: cause.to_string(),
        }
    }

    fn refuse_if_poisoned(&self, shared: &Shared<M>) -> Result<()> {
        match &shared.poisoned {
            Some(cause) => Err(self.poisoned_error(cause)),
            None => Ok(()),
        }
    }

    fn poison(&self, shared: &mut Shared<M>, failure: &Error) -> Error {
        let cause = failure.to_string();
        tracing::error!(
            file = %self.path.display(),
            state = M::NAME,
            error = %cause,
            "state log write failed; refusing writes until it is reopened"
        );
        shared.poisoned = Some(cause.clone());
        self.poisoned_error(&cause)
    }

    /// Writes the queued appends (as many whole ones as fit) as one record, fdatasyncs,
    /// applies them and posts their outcomes; then compacts if the log grew past its
    /// bound. The caller holds the writer role.
    fn flush_as_writer<'a>(
        &'a self,
        mut shared: MutexGuard<'a, Shared<M>>,
    ) -> MutexGuard<'a, Shared<M>> {
        debug_assert!(shared.writer_busy);
        if let Some(cause) = shared.poisoned.clone() {
            while let Some(queued) = shared.queue.pop_front() {
                let error = self.poisoned_error(&cause);
                shared.outcomes.insert(queued.ticket, Err(error));
            }
            return shared;
        }

        let mut batch = Vec::new();
        let mut used = 0;
        let mut op_count: u32 = 0;
        while let Some(front) = shared.queue.front() {
            if !batch.is_empty() && used + front.encoded.len() > OPS_BYTES_MAX {
                break;
            }
            used += front.encoded.len();
            if let Some(queued) = shared.queue.pop_front() {
                // At most OPS_BYTES_MAX operations of at least one byte each.
                op_count += queued.ops.len() as u32;
                batch.push(queued);
            }
        }
        if batch.is_empty() {
            return shared;
        }
        drop(shared);

        let record = assemble_record(
            self.clock.now_ms(),
            op_count,
            batch.iter().map(|queued| queued.encoded.as_slice()),
        );
        let written = self.append_durably(&record);

        let mut shared = self.lock_shared();
        match written {
            Ok(()) => {
                shared.log_bytes += record.len() as u64;
                shared.stats.records += 1;
                shared.stats.appends += batch.len() as u64;
                let mut machine = self.write_machine();
                for queued in batch {
                    let outcomes = queued.ops.into_iter().map(|op| machine.apply(op)).collect();
                    shared.outcomes.insert(queued.ticket, Ok(outcomes));
                }
            }
            Err(failure) => {
                let error = if failure.poisons {
                    self.poison(&mut shared, &failure.error)
                } else {
                    failure.error
                };
                for queued in batch {
                    shared.outcomes.insert(queued.ticket, Err(error.clone()));
                }
                return shared;
            }
        }
        // Let the callers this flush covered return before any compaction.
        self.changed.notify_all();

        let live = self.read_machine().snapshot_bytes();
        let threshold = self
            .options
            .compact_min_bytes
            .max(self.options.compact_live_ratio.saturating_mul(live));
        if shared.log_bytes > threshold {
            let (compacted, result) = self.compact_as_writer(shared);
            shared = compacted;
            if let Err(e) = result {
                tracing::warn!(
                    file = %self.path.display(),
                    state = M::NAME,
                    error = %e,
                    "automatic compaction of a state log failed"
                );
            }
        }
        shared
    }

    /// Appends `record` and fdatasyncs it. A failed write is undone (the file is cut
    /// back, so no record ever follows a partial one); a failed fdatasync is fatal.
    fn append_durably(&self, record: &[u8]) -> Result<(), WriteFailure> {
        let mut log = self.lock_log();
        if let Err(e) = log.file.write_all_at(record, log.len) {
            let error = Error::io(format!("appending to {}", self.path.display()), e);
            return match log.file.set_len(log.len) {
                Ok(()) => Err(WriteFailure::recoverable(error)),
                Err(cut) => Err(WriteFailure::fatal(Error::io(
                    format!(
                        "cutting {} back to {} bytes after a failed append ({error})",
                        self.path.display(),
                        log.len
                    ),
                    cut,
                ))),
            };
        }
        log.file
            .sync_data()
            .map_err(|e| Error::io(format!("fdatasyncing {}", self.path.display()), e))
            .map_err(WriteFailure::fatal)?;
        log.len += record.len() as u64;
        Ok(())
    }

    /// Waits for and takes the writer role.
    fn acquire_writer_role(&self) -> Result<MutexGuard<'_, Shared<M>>> {
        let mut shared = self.lock_shared();
        while shared.writer_busy {
            shared = self.changed.wait(shared);
        }
        self.refuse_if_poisoned(&shared)?;
        shared.writer_busy = true;
        Ok(shared)
    }

    /// Replaces the log with a snapshot of the state. The caller holds the writer role,
    /// so the state does not change meanwhile; readers go on reading it.
    fn compact_as_writer<'a>(
        &'a self,
        shared: MutexGuard<'a, Shared<M>>,
    ) -> (MutexGuard<'a, Shared<M>>, Result<()>) {
        debug_assert!(shared.writer_busy);
        let before = shared.log_bytes;
        drop(shared);

        let result = self
            .write_snapshot_tmp()
            .and_then(|(tmp, len)| self.install_snapshot(&tmp, len).map(|()| len));

        let mut shared = self.lock_shared();
        match result {
            Ok(len) => {
                shared.log_bytes = len;
                shared.stats.compactions += 1;
                tracing::info!(
                    file = %self.path.display(),
                    state = M::NAME,
                    before_bytes = before,
                    after_bytes = len,
                    "compacted a state log"
                );
                (shared, Ok(()))
            }
            Err(failure) if failure.poisons => {
                let error = self.poison(&mut shared, &failure.error);
                (shared, Err(error))
            }
            Err(failure) => (shared, Err(failure.error)),
        }
    }

    /// Writes the snapshot to `<path>.tmp`, record by record, and fsyncs it. On failure
    /// the temporary file is removed and the log is untouched.
    fn write_snapshot_tmp(&self) -> Result<(PathBuf, u64), WriteFailure> {
        let tmp = temp_path(&self.path);
        let written = (|| -> Result<u64> {
            let file = self
                .fs
                .open(&tmp, OpenMode::Truncate)
                .ctx(|| format!("creating {}", tmp.display()))?;
            let mut at = 0u64;
            let mut sink = |record: &[u8]| -> Result<()> {
                file.write_all_at(record, at)
                    .ctx(|| format!("writing the compacted log {}", tmp.display()))?;
                at += record.len() as u64;
                Ok(())
            };
            let mut writer = SnapshotWriter::new(self.clock.now_ms(), &mut sink);
            self.read_machine().snapshot(&mut writer)?;
            let len = writer.finish()?;
            file.sync_all()
                .ctx(|| format!("fsyncing {}", tmp.display()))?;
            Ok(len)
        })();
        match written {
            Ok(len) => Ok((tmp, len)),
            Err(error) => {
                let _ = self.fs.remove_file(&tmp);
                Err(WriteFailure::recoverable(error))
            }
        }
    }

    /// Renames the fsynced snapshot over the log, fsyncs the directory and switches the
    /// append handle to the new file.
    fn install_snapshot(&self, tmp: &Path, len: u64) -> Result<(), WriteFailure> {
        let mut log = self.lock_log();
        if let Err(e) = self.fs.rename(tmp, &self.path) {
            let _ = self.fs.remove_file(tmp);
            return Err(WriteFailure::recoverable(Error::io(
                format!("renaming {} to {}", tmp.display(), self.path.display()),
                e,
            )));
        }
        // From here the old handle points at an unlinked file: any failure is fatal.
        sync_dir(&*self.fs, &self.dir).map_err(WriteFailure::fatal)?;
        let file = self.fs.open(&self.path, OpenMode::Write).map_err(|e| {
            WriteFailure::fatal(Error::io(
                format!("reopening {} after compaction", self.path.display()),
                e,
            ))
        })?;
        *log = LogFile { file, len };
        Ok(())
    }

    /// Test hook: a compaction that stops after writing and fsyncing the temporary
    /// file, before the rename (as a crash there would).
    #[cfg(test)]
    pub(crate) fn compact_crash_before_rename(&self) -> Result<PathBuf> {
        let shared = self.acquire_writer_role()?;
        drop(shared);
        let result = self.write_snapshot_tmp();
        let mut shared = self.lock_shared();
        shared.writer_busy = false;
        self.changed.notify_all();
        result.map(|(tmp, _)| tmp).map_err(|failure| failure.error)
    }
}

/// Opens the log for writing, creating it if it is missing.
fn open_log(fs: &dyn FileSystem, path: &Path) -> Result<Arc<dyn FsFile>> {
    match fs.open(path, OpenMode::CreateNew) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs
            .open(path, OpenMode::Write)
            .ctx(|| format!("opening {}", path.display())),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Writes the first `len` bytes of the log again, in chunks, and fsyncs them.
///
/// What was replayed is about to be served, but it may be known to the page cache
/// only: the process before may have died between a write and its fdatasync, or its
/// fdatasync may have failed, after which Linux keeps the pages but marks them clean
/// ("fsyncgate"), so a plain fsync here would write nothing. The log is compacted, so
/// this is small.
fn rewrite_durably(file: &dyn FsFile, path: &Path, len: u64) -> Result<()> {
    let mut buf = vec![0; STATE_READ_CHUNK_BYTES.min(len as usize)];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        let chunk = buf.get_mut(..n).unwrap_or_default();
        file.read_exact_at(chunk, at)
            .and_then(|()| file.write_all_at(chunk, at))
            .ctx(|| format!("rewriting {}", path.display()))?;
        at += n as u64;
    }
    file.sync_all()
        .ctx(|| format!("fsyncing {}", path.display()))
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each one created.
fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match fs.metadata(current) {
            Ok(meta) if meta.is_dir => break,
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "{} exists and is not a directory",
                    current.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(current);
                match current.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => current = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(Error::io(format!("inspecting {}", current.display()), e)),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .ctx(|| format!("creating directory {}", dir.display()))?;
    for created in missing.iter().rev() {
        sync_dir(fs, parent_dir(created))?;
    }
    Ok(())
}
