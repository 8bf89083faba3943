//! [`QueueHistory`]: one queue's history directory: the files, the one being appended
//! to (a [`StateLog`] that is never compacted), rolling, pruning by age, and reading a
//! file's durable events. See [`super`] for the design.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::Clock;
use crate::error::{Error, IoContext, Result};
use crate::fs::{FileSystem, OpenMode};
use crate::fsutil::sync_dir;
use crate::statelog::{
    ScanEnd, SnapshotWriter, StateLog, StateLogOptions, StateMachine, Ticket, scan_file_prefix,
};

use super::event::HistoryEvent;

/// A history file is rolled (a new one begun) once it holds this many bytes (readers
/// stream a file in 1 MiB chunks, so its size bounds time, not memory; larger files
/// keep the directory small: a queue writing 1 MB/s of history makes ~225 files an
/// hour)...
pub const HISTORY_FILE_BYTES_ROLL: u64 = 16 * 1024 * 1024;
/// ...or once it was begun this long ago (so age pruning frees space in steps of an hour
/// at most).
pub const HISTORY_FILE_SPAN_MS: i64 = 3600 * 1000;
/// How often an append looks for files past the queue's retention.
pub const HISTORY_PRUNE_INTERVAL_MS: i64 = 60 * 1000;
/// The extension of a history file; its stem is the 20-digit time (ms) it was begun.
pub const HISTORY_FILE_EXTENSION: &str = "history";
/// [`HISTORY_FILE_EXTENSION`] with its dot.
pub const HISTORY_FILE_SUFFIX: &str = ".history";

/// The in-memory side of the file being appended to: a summary, never the events (they
/// stay on disk). Its log is never compacted, so [`StateMachine::snapshot`] is never
/// called.
#[derive(Debug, Default)]
pub struct HistoryFileSummary {
    /// Events in the file.
    pub events: u64,
    /// The newest event's time.
    pub last_ms: i64,
}

impl StateMachine for HistoryFileSummary {
    type Op = HistoryEvent;
    type Outcome = ();
    const NAME: &'static str = "queue delivery history";

    fn apply(&mut self, op: HistoryEvent) {
        self.events += 1;
        self.last_ms = self.last_ms.max(op.at_ms);
    }

    fn snapshot(&self, _: &mut SnapshotWriter<'_>) -> Result<()> {
        Err(Error::invalid(
            "a delivery history file is never compacted: it is deleted whole once it is older than the queue's history_retention",
        ))
    }

    fn snapshot_bytes(&self) -> u64 {
        0
    }
}

/// Options that keep the history log from ever compacting on its own.
fn never_compact() -> StateLogOptions {
    StateLogOptions {
        compact_min_bytes: u64::MAX,
        compact_live_ratio: 1,
    }
}

/// One history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    /// When it was begun (its name); every event in it was recorded at or after this
    /// and before the next file's start.
    pub start_ms: i64,
    pub path: PathBuf,
}

#[derive(Debug)]
struct Active {
    start_ms: i64,
    log: Arc<StateLog<HistoryFileSummary>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The file appends go to (opened at the first append).
    active: Option<Active>,
    /// Set by a failed fsync (or a failure that leaves the log unable to write): every
    /// later append fails with it, until the broker restarts.
    poisoned: Option<Error>,
    /// The queue was deleted ([`QueueHistory::close`]): appends record nothing and
    /// nothing prunes, for good (its directory is moved away, and a queue created
    /// later under the same name gets a history of its own).
    closed: bool,
    /// The last time an append pruned.
    last_prune_ms: i64,
    /// Events whose append failed ([`QueueHistory::failed`]), since the broker started.
    failed_events: u64,
    /// When a failure was last logged (at most one line per
    /// [`FAILURE_LOG_INTERVAL_MS`]).
    failure_logged_ms: Option<i64>,
}

/// A history that keeps failing (a poisoned file, a full disk) logs at most this often.
const FAILURE_LOG_INTERVAL_MS: i64 = 10_000;

/// Events queued by [`QueueHistory::submit`]: wait for them with
/// [`QueueHistory::wait`].
#[derive(Debug)]
#[must_use = "submitted events are written only when someone waits for them"]
pub struct HistorySubmitted {
    log: Arc<StateLog<HistoryFileSummary>>,
    ticket: Ticket,
    now_ms: i64,
    retention_ms: u64,
    events: usize,
}

/// One queue's delivery history on disk. Appends come from the queue's engine (one at
/// a time); readers scan files without blocking it.
#[derive(Debug)]
pub struct QueueHistory {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// Held by an append for its whole length (so a roll never overlaps an append).
    appending: Mutex<()>,
    inner: Mutex<Inner>,
}

impl QueueHistory {
    /// The history in `dir` (created at the first append).
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf, clock: Arc<dyn Clock>) -> QueueHistory {
        QueueHistory {
            fs,
            dir,
            clock,
            appending: Mutex::new(()),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An append of `events` events failed with `error` (the queue engine goes on
    /// without them: history is a record of decisions the queue state already holds).
    /// Counted, and logged at most every 10 s with the count so far.
    pub fn failed(&self, events: usize, error: &Error) {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        inner.failed_events += events as u64;
        let due = inner
            .failure_logged_ms
            .is_none_or(|at| now.saturating_sub(at) >= FAILURE_LOG_INTERVAL_MS);
        if due {
            inner.failure_logged_ms = Some(now);
            tracing::warn!(
                dir = %self.dir.display(),
                %error,
                failed_events = inner.failed_events,
                "a queue's delivery history could not be written; the queue goes on, its history lacks these events (message status and history may miss attempts)"
            );
        }
    }

    /// Events whose append failed since the broker started ([`QueueHistory::failed`]).
    pub fn failed_events(&self) -> u64 {
        self.lock().failed_events
    }

    /// The number of events `submitted` holds.
    pub fn submitted_events(submitted: &HistorySubmitted) -> usize {
        submitted.events
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `events` durably (one record, one fdatasync), rolling to a new file first
    /// when the current one is full or old, and deleting files past `retention_ms` now
    /// and then. `retention_ms == 0` records nothing. When this returns `Ok` the events
    /// survive a crash; a failed fsync fails this call and every later one.
    pub fn append(&self, events: Vec<HistoryEvent>, retention_ms: u64) -> Result<()> {
        match self.submit(events, retention_ms)? {
            Some(submitted) => self.wait(submitted),
            None => Ok(()),
        }
    }

    /// The first half of [`QueueHistory::append`]: queues `events` (in submission
    /// order, after everything submitted before) and returns at once; they are durable
    /// when [`QueueHistory::wait`] of the result returns `Ok` (every result must be
    /// waited for). None when there is nothing to record.
    pub fn submit(
        &self,
        events: Vec<HistoryEvent>,
        retention_ms: u64,
    ) -> Result<Option<HistorySubmitted>> {
        if events.is_empty() || retention_ms == 0 {
            return Ok(None);
        }
        let _appending = self
            .appending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.lock().closed {
            // Decisions of a queue deleted meanwhile: there is no history to keep them.
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let log = self.writable_log(now)?;
        let count = events.len();
        match log.submit(events) {
            Ok(ticket) => Ok(ticket.map(|ticket| HistorySubmitted {
                log,
                ticket,
                now_ms: now,
                retention_ms,
                events: count,
            })),
            Err(error) => {
                if matches!(error, Error::Poisoned { .. }) {
                    self.lock().poisoned = Some(error.clone());
                }
                Err(error)
            }
        }
    }

    /// The second half of [`QueueHistory::append`]: returns when the events of
    /// `submitted` are durable, and prunes now and then.
    pub fn wait(&self, submitted: HistorySubmitted) -> Result<()> {
        if let Err(error) = submitted.log.wait(submitted.ticket) {
            if matches!(error, Error::Poisoned { .. }) {
                self.lock().poisoned = Some(error.clone());
            }
            return Err(error);
        }
        let now = submitted.now_ms;
        let prune = {
            let mut inner = self.lock();
            let due = now.saturating_sub(inner.last_prune_ms) >= HISTORY_PRUNE_INTERVAL_MS;
            if due {
                inner.last_prune_ms = now;
            }
            due
        };
        if prune {
            self.prune(now, submitted.retention_ms)?;
        }
        Ok(())
    }

    /// The log to append to now: the active one, or a new one after a roll.
    fn writable_log(&self, now: i64) -> Result<Arc<StateLog<HistoryFileSummary>>> {
        let mut inner = self.lock();
        if let Some(error) = &inner.poisoned {
            return Err(error.clone());
        }
        if let Some(active) = &inner.active {
            let full = active.log.log_bytes() >= HISTORY_FILE_BYTES_ROLL;
            let old = now.saturating_sub(active.start_ms) >= HISTORY_FILE_SPAN_MS;
            if !full && !old {
                return Ok(active.log.clone());
            }
            // A poisoned log is never left behind for a fresh one; and what was
            // submitted to it is written before the next file takes events, so the
            // files hold the events in order even across a crash.
            active.log.flush_submitted()?;
            active.log.check_writable()?;
        }
        let previous = match &inner.active {
            Some(active) => Some(active.start_ms),
            None => self.files()?.last().map(|f| f.start_ms),
        };
        // After a restart, go on with the newest file if it is young and small enough.
        if inner.active.is_none()
            && let Some(start) = previous
            && now.saturating_sub(start) < HISTORY_FILE_SPAN_MS
        {
            let path = self.file_path(start);
            let size = self.fs.metadata(&path).map(|m| m.len).unwrap_or(u64::MAX);
            if size < HISTORY_FILE_BYTES_ROLL {
                match self.open_log(&path) {
                    Ok(log) => {
                        let log = Arc::new(log);
                        inner.active = Some(Active {
                            start_ms: start,
                            log: log.clone(),
                        });
                        return Ok(log);
                    }
                    Err(error @ Error::Corrupt { .. }) => {
                        // Left as it is for an operator (reads report it); a new file
                        // begins.
                        tracing::warn!(%error, "a delivery history file is damaged; beginning a new one");
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        let start = previous.map_or(now, |p| now.max(p.saturating_add(1)));
        let log = Arc::new(self.open_log(&self.file_path(start))?);
        inner.active = Some(Active {
            start_ms: start,
            log: log.clone(),
        });
        Ok(log)
    }

    fn open_log(&self, path: &Path) -> Result<StateLog<HistoryFileSummary>> {
        StateLog::open(
            self.fs.clone(),
            path,
            HistoryFileSummary::default(),
            self.clock.clone(),
            never_compact(),
        )
    }

    fn file_path(&self, start_ms: i64) -> PathBuf {
        self.dir
            .join(format!("{:020}{HISTORY_FILE_SUFFIX}", start_ms.max(0)))
    }

    /// The history files, oldest first (none when the directory does not exist).
    pub fn files(&self) -> Result<Vec<HistoryFile>> {
        let entries = match self.fs.read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.dir.display()), e)),
        };
        let mut files: Vec<HistoryFile> = entries
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| {
                let name = e.name.to_str()?;
                let stem = name.strip_suffix(HISTORY_FILE_SUFFIX)?;
                if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let start_ms = stem.parse::<i64>().ok()?;
                Some(HistoryFile {
                    start_ms,
                    path: self.dir.join(name),
                })
            })
            .collect();
        files.sort_by_key(|f| f.start_ms);
        Ok(files)
    }

    /// Deletes the files whose every event is older than `now_ms - retention_ms` (those
    /// followed by a file begun before then); the directory is fsynced after. Returns
    /// how many went. The one pruning rule, for the append path (now and then) and the
    /// store's retention passes (every queue, idle or not, at open and every
    /// retention interval).
    ///
    /// Safe beside the queue's appends: it waits for an append in progress (a roll
    /// creates a file and seals the one before, after writing what was submitted to
    /// it), the file being appended to is never deleted, nor the newest (no file
    /// follows it: after a restart it may be the one appends go on with), and a file
    /// followed by another is never written again. Nothing is deleted once the queue
    /// was deleted ([`QueueHistory::close`]: its directory goes, and the name may be a
    /// new queue's by then). Crash-safe: whole files go, oldest first, so a crash
    /// leaves a shorter prefix of old files, which the next prune deletes; a reader
    /// that listed a file deleted meanwhile reads nothing of it.
    pub fn prune(&self, now_ms: i64, retention_ms: u64) -> Result<u64> {
        let _appending = self
            .appending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.lock().closed {
            return Ok(0);
        }
        let cutoff = now_ms.saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
        let files = self.files()?;
        let active = self.lock().active.as_ref().map(|a| a.start_ms);
        let mut removed = 0;
        for pair in files.windows(2) {
            let [file, next] = pair else { continue };
            if next.start_ms > cutoff || Some(file.start_ms) == active {
                break;
            }
            self.fs
                .remove_file(&file.path)
                .ctx(|| format!("removing {}", file.path.display()))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&*self.fs, &self.dir)?;
        }
        Ok(removed)
    }

    /// Calls `on_event(position, index, event)` for every durable event of `file` in
    /// the order they were recorded (`position` is the record's byte position, `index`
    /// the event's place in it). The file being appended to is read up to what was
    /// durable when this began. A torn tail (a crash during the last write) ends the
    /// file quietly; damage a crash cannot explain fails with [`Error::Corrupt`].
    /// Memory: one read chunk (1 MiB) or one record, whatever the file's size.
    pub fn scan(
        &self,
        file: &HistoryFile,
        mut on_event: impl FnMut(u64, u32, HistoryEvent),
    ) -> Result<()> {
        let durable = {
            let inner = self.lock();
            match &inner.active {
                Some(active) if active.start_ms == file.start_ms => Some(active.log.log_bytes()),
                _ => None,
            }
        };
        let handle = match self.fs.open(&file.path, OpenMode::Read) {
            Ok(handle) => handle,
            // Pruned meanwhile: nothing left to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("opening {}", file.path.display()), e)),
        };
        let len = match durable {
            Some(len) => len,
            None => handle
                .size()
                .ctx(|| format!("reading {}", file.path.display()))?,
        };
        let scan = scan_file_prefix::<HistoryEvent>(&*handle, len, |position, record| {
            for (index, event) in record.ops.into_iter().enumerate() {
                on_event(position, index as u32, event);
            }
        })
        .ctx(|| format!("reading {}", file.path.display()))?;
        match scan.end {
            ScanEnd::Clean | ScanEnd::Torn { .. } => Ok(()),
            ScanEnd::Corrupt { position, reason } => {
                Err(Error::corrupt(&file.path, position, reason))
            }
            ScanEnd::Newer { position, reason } => Err(Error::WrittenByNewer {
                file: file.path.clone(),
                what: format!("delivery history record at byte {position}: {reason}"),
            }),
        }
    }

    /// Bytes of history on disk (for metrics and tests).
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for file in self.files()? {
            if let Ok(meta) = self.fs.metadata(&file.path) {
                total += meta.len;
            }
        }
        Ok(total)
    }

    /// The queue was deleted: forgets the open file, and from now on appends record
    /// nothing and nothing prunes, so no file is created or removed in [`Self::dir`]
    /// again through this history. Waits for an append in progress (a roll creates
    /// files); events it submitted are written to the file they went to (its
    /// descriptor is open), wherever the directory is moved.
    pub fn close(&self) {
        let _appending = self
            .appending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        inner.closed = true;
        inner.active = None;
    }

    /// Whether [`QueueHistory::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}
