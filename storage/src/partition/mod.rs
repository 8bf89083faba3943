//! One partition's log: the segments, the append path, group commit, recovery,
//! reads, time lookup and retention.
//!
//! Locks, in the order they may be taken: `flush` (one flush at a time), `writer`
//! (the append path and segment roll), `segments` (the list readers search), then a
//! segment's own state and the progress watch. Readers never take `writer`: they
//! snapshot the visible end and the segment list and read from mappings.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{self, EncodeOptions, NewRecord};
use crate::checkpoint::CheckpointFile;
use crate::client_batch::CheckedBatch;
use crate::clock::Clock;
use crate::config::{FsyncPolicy, TopicConfig};
use crate::error::{Error, IoContext, Result};
use crate::flusher::{Flush, FlushQueue};
use crate::fs::{FileSystem, FsFile, OpenMode, PartialWrite};
use crate::fsutil::{self, SyncFailure};
use crate::idindex::{self, SplitIds};
use crate::index::SegmentSummary;
use crate::limits::{ID_INDEX_ENTRIES_MAX, SEGMENT_FILE_BYTES_MAX};
use crate::progress::{LogEnd, Progress, WaitDurable, WaitForData};
use crate::recovery;
use crate::segment::{self, LOG_SUFFIX, MappedSegments, ResumePoints, Segment, SegmentState};
use crate::topic_id::TopicId;

/// A checkpoint is written at most this often (and at every segment roll and clean
/// close); recovery after a crash scans what was written since.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// The most sealed segments a partition keeps waiting for their fsync (each holds its
/// file open until then). A roll past it fsyncs the oldest itself, holding the append
/// lock: segments rolled faster than the flusher syncs them slow that partition's
/// writers instead of taking a descriptor each without bound (the flusher may hold as
/// many again while it syncs them).
pub const SEALED_BACKLOG_MAX: usize = 4;

/// A flush that failed before any fsync ran (see [`SyncFailure`]) is tried again after
/// this, doubled at each failure in a row up to [`FLUSH_RETRY_MAX`].
const FLUSH_RETRY_FIRST: Duration = Duration::from_millis(50);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(2);

/// Mapping length of every segment: a segment can grow up to the largest allowed
/// segment size plus one batch, and is mapped once at that length.
const SEGMENT_MAP_BYTES: usize = SEGMENT_FILE_BYTES_MAX as usize;

/// Created in the partition directory when the partition is poisoned (never fsynced:
/// it only has to outlive the process, not the machine). While it exists, recovery
/// writes the bytes it scans again before fsyncing them, because after a failed
/// fdatasync Linux keeps the pages it could not write but marks them clean
/// ("fsyncgate"): a plain fsync would leave them off the disk while they are served.
pub const FSYNC_FAILED_MARKER: &str = "fsync-failed";

mod read;

pub use read::{BatchReadResult, ReadResult};

/// Offsets assigned to one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// A partition as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start: u64,
    /// Next offset readers can see (durable-only on `fsync = always` topics).
    pub end_offset: u64,
    /// Next offset to be assigned.
    pub written_offset: u64,
    /// Offsets below this are on disk for sure (fsynced).
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub segment_count: u32,
    pub poisoned: Option<String>,
    /// Why recovery refused to open it, if it did: every call fails until an operator
    /// repairs it. Its offsets, size and segment count are then unknown (shown as 0
    /// here): a caller shows the partition as unavailable, never these numbers.
    pub unavailable: Option<String>,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: u32,
    /// Of `segments_deleted`, why each went: every record past its TTL (nothing
    /// readable was lost), then older than `retention_ms`, then over `retention_bytes`;
    /// a segment that qualifies for several counts under the first.
    pub segments_expired: u32,
    pub segments_too_old: u32,
    pub segments_over_size: u32,
    pub bytes_deleted: u64,
    /// Records in the deleted segments (including any already expired).
    pub records_deleted: u64,
    pub log_start: u64,
}

/// Told about every group commit (for metrics).
pub trait FlushObserver: Send + Sync + std::fmt::Debug {
    /// One fdatasync took `duration` and made `appends` appends of `bytes` durable.
    fn on_flush(&self, duration: Duration, appends: u64, bytes: u64);
}

#[derive(Debug)]
struct SealedSegment {
    segment: Arc<Segment>,
    file: Arc<dyn FsFile>,
    state: SegmentState,
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    file: Arc<dyn FsFile>,
    state: SegmentState,
    /// When the active segment was created (for `segment_ms`).
    created_ms: i64,
    /// At least as many as the message ids in the active segment: exact for a segment
    /// created since the partition opened; for the one it opened with, its record
    /// count stands in for the ids written before. The segment rolls before this would
    /// pass `ID_INDEX_ENTRIES_MAX`.
    ids_bound: u64,
    /// Sealed segments whose file and index still need an fsync (at most
    /// [`SEALED_BACKLOG_MAX`]).
    sealed: Vec<SealedSegment>,
    /// A segment was sealed since the last flush (the flush writes a checkpoint).
    rolled: bool,
    /// A file was created in the partition directory since the last flush.
    dir_dirty: bool,
    appends_since_flush: u64,
    bytes_since_flush: u64,
    poisoned: Option<String>,
    closed: bool,
}

impl Writer {
    fn new(
        active: Arc<Segment>,
        file: Arc<dyn FsFile>,
        state: SegmentState,
        created_ms: i64,
        closed: bool,
    ) -> Self {
        let ids_bound = state.summary.next_offset - state.summary.base_offset;
        Writer {
            active,
            file,
            state,
            created_ms,
            ids_bound,
            sealed: Vec::new(),
            rolled: false,
            dir_dirty: false,
            appends_since_flush: 0,
            bytes_since_flush: 0,
            poisoned: None,
            closed,
        }
    }
}

#[derive(Debug)]
struct FlushState {
    checkpoint: CheckpointFile,
    last_checkpoint: Instant,
    /// The last checkpoint could not be written (before its fsync): the next flush
    /// tries again.
    checkpoint_pending: bool,
}

/// One partition of a topic.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    /// The durable identity of the topic this partition belongs to.
    topic_id: TopicId,
    id: u32,
    name: String,
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    config: RwLock<Arc<TopicConfig>>,
    clock: Arc<dyn Clock>,
    writer: Mutex<Writer>,
    segments: RwLock<Vec<Arc<Segment>>>,
    progress: Arc<Progress>,
    flush: Mutex<FlushState>,
    flush_queued: AtomicBool,
    /// `writer.sealed.len()`, readable without waiting for the append lock.
    sealed_backlog: AtomicUsize,
    /// Flushes in a row that failed before any fsync ran (they are tried again).
    flush_failures: AtomicU32,
    /// A failed flush waits in a flusher thread's retries (one at a time).
    flush_retry_queued: AtomicBool,
    /// Milliseconds since `opened_at` of the last completed flush (interval policy).
    last_flush_ms: AtomicU64,
    opened_at: Instant,
    flusher: FlushQueue,
    observer: Option<Arc<dyn FlushObserver>>,
    /// The store-wide bound on mapped segments.
    mapped: Arc<MappedSegments>,
    /// Where message reads stopped inside a batch, so the next read from there goes on
    /// from that record ([`Segment::read`]).
    resume: ResumePoints,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `open` needs besides the directory.
#[derive(Debug, Clone)]
pub(crate) struct PartitionContext {
    pub fs: Arc<dyn FileSystem>,
    pub clock: Arc<dyn Clock>,
    pub flusher: FlushQueue,
    pub observer: Option<Arc<dyn FlushObserver>>,
    pub mapped: Arc<MappedSegments>,
    /// Gives broker-assigned message ids (one per store, so they are ordered store-wide).
    pub ids: Arc<crate::msgid::IdGenerator>,
    /// [`crate::store::StoreOptions::max_timestamp_ahead_ms`], for the topics.
    pub max_timestamp_ahead_ms: Option<u64>,
}

/// A batch's bytes as an append takes them.
enum BatchBytes {
    /// Its own buffer: the base offset is written into it.
    Owned(Vec<u8>),
    /// A slice of a larger buffer (the request it came in), not copied: written as a
    /// copy of its first [`batch::TIMES_END`] bytes with the base offset (and, for a
    /// batch moved to the append time, the CRC and times) written in, then the rest as
    /// it is.
    Shared {
        head: [u8; batch::TIMES_END],
        bytes: Bytes,
    },
}

impl BatchBytes {
    fn len(&self) -> usize {
        match self {
            BatchBytes::Owned(bytes) => bytes.len(),
            BatchBytes::Shared { bytes, .. } => bytes.len(),
        }
    }

    /// Writes `header`'s CRC and times over the client's ([`CheckedBatch::moved`]).
    fn set_times(&mut self, header: &batch::BatchHeader) {
        match self {
            BatchBytes::Owned(bytes) => batch::set_times(bytes, header),
            BatchBytes::Shared { head, .. } => batch::set_times(head, header),
        }
    }

    fn set_base_offset(&mut self, base_offset: u64) {
        match self {
            BatchBytes::Owned(bytes) => batch::set_base_offset(bytes, base_offset),
            BatchBytes::Shared { head, .. } => batch::set_base_offset(head, base_offset),
        }
    }

    /// The buffers to write, in order.
    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        let (first, rest) = match self {
            BatchBytes::Owned(bytes) => (&bytes[..], &[][..]),
            BatchBytes::Shared { head, bytes } => (&head[..], &bytes[batch::TIMES_END..]),
        };
        [IoSlice::new(first), IoSlice::new(rest)]
            .into_iter()
            .filter(|slice| !slice.is_empty())
    }
}

/// One batch of a run (see [`Partition::append_checked_run`]): its bytes, its header
/// (whose base offset the append fills in) and its ids.
pub(crate) struct RunBatch<'a> {
    bytes: BatchBytes,
    header: batch::BatchHeader,
    ids: &'a SplitIds,
}

impl<'a> RunBatch<'a> {
    /// A batch a client built, checked by [`crate::client_batch::validate_batch`]
    /// (`checked` is its verdict on `bytes`). A batch moved to the append time gets
    /// the checked header's CRC and times in its head, as it gets its base offset.
    pub(crate) fn checked(bytes: Bytes, checked: &CheckedBatch, ids: &'a SplitIds) -> Self {
        let mut bytes = match bytes
            .get(..batch::TIMES_END)
            .map(<[u8; batch::TIMES_END]>::try_from)
        {
            Some(Ok(head)) => BatchBytes::Shared { head, bytes },
            // A checked batch is longer than its header; this is not reached.
            _ => BatchBytes::Owned(Vec::from(bytes)),
        };
        if checked.moved {
            bytes.set_times(&checked.header);
        }
        RunBatch {
            bytes,
            header: checked.header,
            ids,
        }
    }
}

impl Partition {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The durable identity of the partition's topic ([`crate::Topic::id`]).
    pub fn topic_id(&self) -> TopicId {
        self.topic_id
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a new config. A switch to `fsync = always` changes what readers see
    /// without taking anything back: what they saw (the written end) stays visible,
    /// and only what is appended after it waits for its fsync to show. A flush of it
    /// is asked for; the offset it must reach is returned (`Some(end)`: wait with
    /// [`Partition::wait_durable_blocking`] for `end - 1`) unless it is durable already
    /// or the partition is poisoned (nothing can be fsynced until a restart, whose
    /// recovery makes it durable; until then it stays visible, as it was).
    pub(crate) fn set_config(self: &Arc<Self>, config: Arc<TopicConfig>) -> Option<u64> {
        let durable_only = config.fsync == FsyncPolicy::Always;
        let (visible, poisoned) = {
            // Under the append lock: an append sees the old policy and visibility or
            // the new ones, never a mix (one that read the old config before taking
            // the lock sees the new one after it, see `append_run`).
            let _writer = lock(&self.writer);
            *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
            let visible = self.progress.set_durable_only(durable_only);
            let state = self.progress.lock();
            let behind = durable_only && visible.offset > state.durable.offset;
            (behind.then_some(visible.offset), state.poisoned.is_some())
        };
        let visible = visible.filter(|_| !poisoned)?;
        self.request_flush();
        Some(visible)
    }

    fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens (creating if needed) the partition in `dir` and recovers it: segments
    /// before the checkpoint are trusted, everything after it is validated batch by
    /// batch; a torn tail is moved to a side file and cut off.
    pub(crate) fn open(
        topic: &str,
        topic_id: TopicId,
        id: u32,
        dir: &Path,
        config: Arc<TopicConfig>,
        context: PartitionContext,
    ) -> Result<Arc<Partition>> {
        let name = format!("{topic}/{id}");
        let fs = context.fs.clone();
        if !fs
            .try_exists(dir)
            .ctx(|| format!("looking for {}", dir.display()))?
        {
            fs.create_dir_all(dir)
                .ctx(|| format!("creating {}", dir.display()))?;
            fsutil::sync_dir(&*fs, fsutil::parent_dir(dir))?;
        }
        let mut checkpoint = CheckpointFile::open(fs.clone(), dir)?;
        let marker = dir.join(FSYNC_FAILED_MARKER);
        let after_failed_fsync = fs
            .try_exists(&marker)
            .ctx(|| format!("looking for {}", marker.display()))?;
        if after_failed_fsync {
            tracing::warn!(partition = %name, "an fsync failed before this restart: recovery writes the unchecked tail again before fsyncing it");
        }
        let observation =
            recovery::observe(&*fs, dir, checkpoint.last(), recovery::Depth::Needed, None)?;
        let plan = recovery::plan(
            observation,
            recovery::PlanOptions {
                force: false,
                after_failed_fsync,
            },
        );
        for verdict in &plan.segments {
            for corrupt in &verdict.corrupt {
                tracing::error!(
                    file = %verdict.path.display(),
                    position = corrupt.position,
                    offsets = ?(corrupt.base_offset..corrupt.next_offset),
                    reason = %corrupt.reason,
                    "corrupt batch in the log: reads of these offsets fail until it is repaired"
                );
            }
        }
        let recovered = match &plan.outcome {
            recovery::Outcome::Open(recovered) => recovered.clone(),
            recovery::Outcome::Refused(refusal) => return Err(refusal.to_error()),
        };
        recovery::execute(&*fs, &plan, recovery::Removal::Delete, &mut checkpoint)?;
        if after_failed_fsync {
            fs.remove_file(&marker)
                .ctx(|| format!("removing {}", marker.display()))?;
        }
        let end = recovered.end;
        let active_state = match recovered.active {
            Some(state) => state,
            None => recovery::rescan(&*fs, dir, end.segment_base)?,
        };
        let sealed: Vec<Arc<Segment>> = recovered
            .sealed
            .into_iter()
            .map(|kept| {
                Arc::new(match kept {
                    recovery::Kept::Summary(summary) => Segment::sealed(fs.clone(), dir, summary),
                    recovery::Kept::State(state) => {
                        let map_len = state.summary.log_bytes as usize;
                        Segment::with_state(fs.clone(), dir, state, map_len)
                    }
                })
            })
            .collect();
        let log_path = segment::segment_path(dir, end.segment_base, LOG_SUFFIX);
        let file = fs
            .open(&log_path, OpenMode::Write)
            .ctx(|| format!("opening {} for appends", log_path.display()))?;

        // The ids of what the active segment holds are read when first needed.
        let active = Arc::new(
            Segment::with_state(fs.clone(), dir, active_state.clone(), SEGMENT_MAP_BYTES)
                .with_open_ids(end.position),
        );
        let mut segments = sealed;
        segments.push(active.clone());
        let log_start = segments[0].base_offset;
        let durable_only = config.fsync == FsyncPolicy::Always;
        let progress = Progress::new(name, end, log_start, durable_only);
        let writer = Writer::new(active, file, active_state, context.clock.now_ms(), false);
        Ok(Partition::assemble(
            topic, topic_id, id, dir, config, context, progress, writer, segments, checkpoint,
        ))
    }

    /// A partition that recovery refused to open (`error` says why): it touches no
    /// file, and every call fails with [`Error::PartitionUnavailable`] while the rest
    /// of the store serves.
    pub(crate) fn open_unavailable(
        topic: &str,
        topic_id: TopicId,
        id: u32,
        dir: &Path,
        config: Arc<TopicConfig>,
        context: PartitionContext,
        error: &Error,
    ) -> Result<Arc<Partition>> {
        let name = format!("{topic}/{id}");
        tracing::error!(partition = %name, %error, "recovery refused to open the partition: it is served as unavailable until it is repaired");
        let fs = context.fs.clone();
        let state = SegmentState::new(0);
        let active = Arc::new(Segment::with_state(fs.clone(), dir, state.clone(), 0));
        let progress = Progress::new(name.clone(), LogEnd::default(), 0, false);
        progress.set_unavailable(Error::PartitionUnavailable {
            partition: name.clone(),
            dir: dir.display().to_string(),
            reason: error.to_string(),
        });
        let checkpoint = CheckpointFile::open(fs, dir)?;
        let writer = Writer::new(
            active.clone(),
            Arc::new(crate::fs::Unopened),
            state,
            0,
            true,
        );
        Ok(Partition::assemble(
            topic,
            topic_id,
            id,
            dir,
            config,
            context,
            progress,
            writer,
            vec![active],
            checkpoint,
        ))
    }

    /// Puts a partition together from what `open` or `open_unavailable` prepared.
    #[allow(
        clippy::too_many_arguments,
        reason = "one private constructor for the two ways a partition opens"
    )]
    #[allow(clippy::too_many_arguments)] // reason: each is one part of the partition
    fn assemble(
        topic: &str,
        topic_id: TopicId,
        id: u32,
        dir: &Path,
        config: Arc<TopicConfig>,
        context: PartitionContext,
        progress: Arc<Progress>,
        writer: Writer,
        segments: Vec<Arc<Segment>>,
        checkpoint: CheckpointFile,
    ) -> Arc<Partition> {
        Arc::new(Partition {
            topic: topic.to_string(),
            topic_id,
            id,
            name: format!("{topic}/{id}"),
            progress,
            dir: dir.to_path_buf(),
            fs: context.fs,
            config: RwLock::new(config),
            clock: context.clock,
            writer: Mutex::new(writer),
            segments: RwLock::new(segments),
            flush: Mutex::new(FlushState {
                checkpoint,
                last_checkpoint: Instant::now(),
                checkpoint_pending: false,
            }),
            flush_queued: AtomicBool::new(false),
            sealed_backlog: AtomicUsize::new(0),
            flush_failures: AtomicU32::new(0),
            flush_retry_queued: AtomicBool::new(false),
            last_flush_ms: AtomicU64::new(0),
            opened_at: Instant::now(),
            flusher: context.flusher,
            observer: context.observer,
            mapped: context.mapped,
            resume: ResumePoints::new(),
        })
    }

    /// Appends `records` as one batch and returns their offsets once written to the
    /// operating system. Durability is a separate wait: [`Partition::wait_durable`].
    pub fn append(self: &Arc<Self>, records: &[NewRecord]) -> Result<Appended> {
        self.append_split(records, split_record_ids(records))
    }

    /// [`Partition::append`] with the records' ids already split
    /// ([`split_record_ids`]), so a caller that needed them first (the dedup window)
    /// does not split and hash them twice.
    pub(crate) fn append_split(
        self: &Arc<Self>,
        records: &[NewRecord],
        ids: SplitIds,
    ) -> Result<Appended> {
        self.append_split_allowing(records, ids, 0)
    }

    /// [`Partition::append_durable`] for the broker's own copies of messages a log
    /// already accepted (a queue's dead letters): each record may pass the topic's
    /// `max_message_bytes` by up to `allowance_bytes`, the bounded bytes the broker
    /// added to it. No client publish comes this way.
    pub(crate) fn append_durable_allowing(
        self: &Arc<Self>,
        records: &[NewRecord],
        allowance_bytes: u64,
    ) -> Result<Appended> {
        let appended =
            self.append_split_allowing(records, split_record_ids(records), allowance_bytes)?;
        self.wait_durable_blocking(appended.last_offset)?;
        Ok(appended)
    }

    fn append_split_allowing(
        self: &Arc<Self>,
        records: &[NewRecord],
        ids: SplitIds,
        allowance_bytes: u64,
    ) -> Result<Appended> {
        debug_assert_eq!(ids, split_record_ids(records));
        let config = self.config();
        let options = EncodeOptions {
            now_ms: self.clock.now_ms(),
            default_ttl_ms: config.default_ttl_ms,
            compression: config.compression,
            max_message_bytes: config.max_message_bytes.saturating_add(allowance_bytes),
            priority_levels: config.priority_levels,
        };
        // Encoding, compression, the CRC and the ids' hashes happen outside the lock.
        let encoded = batch::encode_batch(records, &options)?;
        let batch = RunBatch {
            bytes: BatchBytes::Owned(encoded.bytes),
            header: encoded.header,
            ids: &ids,
        };
        one(self.append_run(vec![batch], options.now_ms, &config))
    }

    /// Appends a batch a client built, checked by
    /// [`crate::client_batch::validate_batch`] (`checked` is its verdict on `bytes`):
    /// the bytes go to the log as they came, with the log's base offset written in.
    /// The caller validated against this partition's topic config and the append time.
    ///
    /// The batch is not copied: it is written as its first bytes, with the base offset
    /// written in, and the rest as it is, in one `pwritev`.
    pub fn append_checked(
        self: &Arc<Self>,
        bytes: Bytes,
        checked: &CheckedBatch,
        now_ms: i64,
    ) -> Result<Appended> {
        let ids = checked.split_ids(&bytes);
        self.append_checked_split(bytes, checked, &ids, now_ms)
    }

    /// [`Partition::append_checked`] with the batch's ids already split
    /// ([`CheckedBatch::split_ids`]) by a caller that needed them first (the dedup
    /// window).
    pub(crate) fn append_checked_split(
        self: &Arc<Self>,
        bytes: Bytes,
        checked: &CheckedBatch,
        ids: &SplitIds,
        now_ms: i64,
    ) -> Result<Appended> {
        let batch = RunBatch::checked(bytes, checked, ids);
        one(self.append_checked_run(vec![batch], now_ms))
    }

    /// Appends a run of checked batches ([`RunBatch::checked`]) in order, as one
    /// `pwritev` unless the active segment rolls between them: a write of several
    /// hundred KB costs the page cache less a byte than the same bytes written a batch
    /// at a time (BENCHMARKS.md). One result a batch, in order. When a batch cannot be
    /// appended, neither can any after it: each gets that error.
    pub(crate) fn append_checked_run(
        self: &Arc<Self>,
        run: Vec<RunBatch<'_>>,
        now_ms: i64,
    ) -> Vec<Result<Appended>> {
        let config = self.config();
        self.append_run(run, now_ms, &config)
    }

    /// The locked part of an append: for each batch, roll if due and assign the base
    /// offset; write the batches between rolls together.
    fn append_run(
        self: &Arc<Self>,
        run: Vec<RunBatch<'_>>,
        now_ms: i64,
        config: &TopicConfig,
    ) -> Vec<Result<Appended>> {
        let count = run.len();
        let mut results = Vec::with_capacity(count);
        let mut writer = lock(&self.writer);
        let failed = (|| -> Result<()> {
            self.check_writable(&writer)?;
            let mut group: Vec<RunBatch<'_>> = Vec::with_capacity(count);
            // The bytes and ids of `group`, not yet written.
            let (mut grouped_bytes, mut grouped_ids) = (0u64, 0u64);
            for mut batch in run {
                let size = writer.state.summary.log_bytes + grouped_bytes;
                let too_big = size + batch.bytes.len() as u64 > config.segment_bytes
                    || writer.ids_bound + grouped_ids + batch.ids.ids() as u64
                        > u64::from(ID_INDEX_ENTRIES_MAX);
                let too_old = config
                    .segment_ms
                    .is_some_and(|ms| now_ms.saturating_sub(writer.created_ms) >= ms as i64);
                if size > 0 && (too_big || too_old) {
                    // What is grouped belongs to the segment being sealed.
                    self.write_group(&mut writer, &mut group, &mut results)?;
                    (grouped_bytes, grouped_ids) = (0, 0);
                    self.roll(&mut writer)?;
                }
                let base_offset = group
                    .last()
                    .map_or(writer.state.summary.next_offset, |b| b.header.next_offset());
                batch.header.base_offset = base_offset;
                batch.bytes.set_base_offset(base_offset);
                grouped_bytes += batch.bytes.len() as u64;
                grouped_ids += batch.ids.ids() as u64;
                group.push(batch);
            }
            self.write_group(&mut writer, &mut group, &mut results)
        })();
        drop(writer);
        if let Err(error) = failed {
            results.resize(count, Err(error));
        }
        // `config` was read before the append lock: a switch to `always` since then
        // (`set_config`) shows here, so what this wrote gets the flush it now needs
        // to be visible.
        if config.fsync == FsyncPolicy::Always
            || self.config.read().unwrap_or_else(|e| e.into_inner()).fsync == FsyncPolicy::Always
        {
            self.request_flush();
        }
        results
    }

    /// Writes `group` (base offsets assigned) at the end of the active segment in one
    /// `pwritev`, then records each batch written whole as appended, in `results`, and
    /// publishes the new end once. A write that fails part-way leaves the batches it
    /// wrote whole appended and cuts the file back to their end, so the tail stays
    /// valid; the batch it tore and the rest of the group are not appended: the error.
    fn write_group(
        &self,
        writer: &mut Writer,
        group: &mut Vec<RunBatch<'_>>,
        results: &mut Vec<Result<Appended>>,
    ) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let start = writer.state.summary.log_bytes;
        let mut slices: Vec<IoSlice<'_>> = group.iter().flat_map(|b| b.bytes.slices()).collect();
        let (written, failure) = match writer.file.write_all_vectored_at(&mut slices, start) {
            Ok(()) => (u64::MAX, None),
            Err(PartialWrite { written, error }) => (written, Some(error)),
        };
        drop(slices);
        let recorded = results.len();
        for batch in group.drain(..) {
            let position = writer.state.summary.log_bytes;
            let length = batch.bytes.len() as u64;
            if position - start + length > written {
                break;
            }
            let header = batch.header;
            writer.state.observe(position, &header);
            writer.active.observe_append(&writer.state);
            let relative_base = (header.base_offset - writer.active.base_offset) as u32;
            writer.active.add_ids(position, relative_base, batch.ids);
            writer.ids_bound += batch.ids.ids() as u64;
            writer.appends_since_flush += 1;
            writer.bytes_since_flush += length;
            results.push(Ok(Appended {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            }));
        }
        if results.len() > recorded {
            self.progress.set_written(LogEnd {
                offset: writer.state.summary.next_offset,
                segment_base: writer.active.base_offset,
                position: writer.state.summary.log_bytes,
            });
        }
        let Some(error) = failure else {
            return Ok(());
        };
        // Take back the torn part, so the tail stays valid; if even that fails the file
        // is in an unknown state.
        if let Err(rollback) = writer.file.set_len(writer.state.summary.log_bytes) {
            let cause = format!("write failed ({error}) and could not be undone ({rollback})");
            self.poison_locked(writer, cause);
        }
        Err(Error::io(
            format!("appending to {}", writer.active.log_path().display()),
            error,
        ))
    }

    /// Appends and blocks until the append is durable: a convenience for threads.
    pub fn append_durable(self: &Arc<Self>, records: &[NewRecord]) -> Result<Appended> {
        let appended = self.append(records)?;
        self.wait_durable_blocking(appended.last_offset)?;
        Ok(appended)
    }

    fn check_writable(&self, writer: &Writer) -> Result<()> {
        if let Some(cause) = &writer.poisoned {
            return Err(Error::Poisoned {
                partition: self.name.clone(),
                cause: cause.clone(),
            });
        }
        if writer.closed {
            return Err(self.progress.closed_error());
        }
        Ok(())
    }

    fn poison_locked(&self, writer: &mut Writer, cause: String) {
        tracing::error!(partition = %self.name, %cause, "partition poisoned: refusing writes until restart");
        if writer.poisoned.is_none() {
            self.leave_fsync_failed_marker();
        }
        writer.poisoned.get_or_insert(cause.clone());
        self.progress.poison(cause);
    }

    /// Creates the [`FSYNC_FAILED_MARKER`] unless it is there. Done when the partition
    /// is poisoned, and again when it closes in case the first try could not open the
    /// file (out of file descriptors, say).
    fn leave_fsync_failed_marker(&self) {
        let marker = self.dir.join(FSYNC_FAILED_MARKER);
        if self.fs.try_exists(&marker).unwrap_or(false) {
            return;
        }
        if let Err(error) = self.fs.open(&marker, OpenMode::Create) {
            tracing::error!(partition = %self.name, %error, "could not leave the fsync-failed marker (tried again when the partition closes): after a restart without a reboot, recovery may trust pages the kernel never wrote");
        }
    }

    /// Seals the active segment and starts a new one at the next offset. The sealed
    /// file is fsynced and its index written by the flusher, whatever the policy.
    fn roll(self: &Arc<Self>, writer: &mut Writer) -> Result<()> {
        let base = writer.state.summary.next_offset;
        let path = segment::segment_path(&self.dir, base, LOG_SUFFIX);
        let file = self
            .fs
            .open(&path, OpenMode::CreateNew)
            .ctx(|| format!("creating segment {}", path.display()))?;
        let state = SegmentState::new(base);
        let segment = Arc::new(
            Segment::with_state(self.fs.clone(), &self.dir, state.clone(), SEGMENT_MAP_BYTES)
                .with_open_ids(0),
        );
        // About as many ids as the old segment held.
        segment.reserve_ids(writer.active.open_ids_len());
        let old_segment = std::mem::replace(&mut writer.active, segment.clone());
        let old_file = std::mem::replace(&mut writer.file, file);
        let old_state = std::mem::replace(&mut writer.state, state);
        writer.sealed.push(SealedSegment {
            segment: old_segment,
            file: old_file,
            state: old_state,
        });
        writer.created_ms = self.clock.now_ms();
        writer.ids_bound = 0;
        writer.dir_dirty = true;
        writer.rolled = true;
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment);
        // Past the bound, this writer syncs the oldest sealed segments itself (the
        // flusher has not caught up): their descriptors close, and this partition's
        // appends wait meanwhile. Their directory entries ride on the next flush's
        // directory fsync, before anything after them is durable.
        while writer.sealed.len() > SEALED_BACKLOG_MAX {
            let oldest = writer.sealed.remove(0);
            self.sealed_backlog
                .store(writer.sealed.len(), Ordering::Relaxed);
            if let Err(error) = self.sync_sealed(&oldest) {
                self.poison_locked(writer, error.to_string());
                return Err(error);
            }
        }
        self.sealed_backlog
            .store(writer.sealed.len(), Ordering::Relaxed);
        self.request_flush();
        Ok(())
    }

    /// fdatasyncs a sealed segment and writes its index files (derived data: a failure
    /// to write them is logged, not returned). An error is a failed fsync.
    fn sync_sealed(&self, sealed: &SealedSegment) -> Result<()> {
        let path = sealed.segment.log_path();
        sealed
            .file
            .sync_data()
            .ctx(|| format!("fsyncing {}", path.display()))?;
        // The index is derived data, checked when loaded and rebuilt by a scan when
        // missing: failing to write it (a full disk, say) must not take the partition
        // down. Its directory entry rides on the flush's directory fsync.
        if let Err(error) = sealed.segment.replace_index_files(&sealed.state) {
            tracing::warn!(partition = %self.name, segment = sealed.segment.base_offset, %error, "could not write a sealed segment's index; it will be rebuilt from the log when needed");
        }
        // The id index too; lookups keep the ids in memory if it fails.
        if let Err(error) = sealed.segment.write_id_index(&sealed.state.summary, true) {
            tracing::warn!(partition = %self.name, segment = sealed.segment.base_offset, %error, "could not write a sealed segment's id index; its ids stay in memory and recovery writes it");
        }
        Ok(())
    }

    /// How many sealed segments wait for their fsync (and hold their file open), not
    /// counting those a flush is syncing now. At most [`SEALED_BACKLOG_MAX`].
    pub fn sealed_backlog(&self) -> usize {
        self.sealed_backlog.load(Ordering::Relaxed)
    }

    /// Queues this partition for the flusher unless it is queued already.
    pub(crate) fn request_flush(self: &Arc<Self>) {
        if !self.flush_queued.swap(true, Ordering::AcqRel) {
            self.flusher.enqueue(self.clone());
        }
    }

    /// One group commit: fsyncs everything written so far (sealed segments first,
    /// then the directory, then the active segment) and marks it durable. Called by
    /// the flusher threads only. An fsync failure poisons the partition: what it
    /// covered is never acknowledged and never retried. A failure before any fsync ran
    /// (the directory could not be opened: out of file descriptors, say) does not:
    /// the waiters for what it was to cover fail with it, as appends do on a full
    /// disk, and the flush is tried again ([`Flush::flush_now`]).
    pub(crate) fn flush(&self) -> Result<()> {
        self.flush_queued.store(false, Ordering::Release);
        let mut flush = lock(&self.flush);
        let (sealed, dir_dirty, rolled, file, written, appends, bytes) = {
            let mut writer = lock(&self.writer);
            self.check_writable(&writer)?;
            let written = self.progress.lock().written;
            let appends = std::mem::take(&mut writer.appends_since_flush);
            let bytes = std::mem::take(&mut writer.bytes_since_flush);
            self.sealed_backlog.store(0, Ordering::Relaxed);
            (
                std::mem::take(&mut writer.sealed),
                std::mem::take(&mut writer.dir_dirty),
                std::mem::take(&mut writer.rolled),
                writer.file.clone(),
                written,
                appends,
                bytes,
            )
        };
        if written.offset == self.progress.lock().durable.offset
            && sealed.is_empty()
            && !dir_dirty
            && !rolled
            && !flush.checkpoint_pending
        {
            return Ok(());
        }
        let started = Instant::now();
        let synced = (|| -> Result<(), SyncFailure> {
            for sealed in &sealed {
                self.sync_sealed(sealed).map_err(SyncFailure::Fsync)?;
            }
            if dir_dirty || !sealed.is_empty() {
                fsutil::try_sync_dir(&*self.fs, &self.dir)?;
            }
            file.sync_data()
                .ctx(|| format!("fsyncing the active segment of {}", self.name))
                .map_err(SyncFailure::Fsync)
        })();
        match synced {
            Ok(()) => {}
            Err(SyncFailure::Fsync(error)) => {
                self.poison_locked(&mut lock(&self.writer), error.to_string());
                return Err(error);
            }
            Err(SyncFailure::BeforeSync(error)) => {
                // The sealed segments taken were fsynced (only the directory's open
                // comes after them) and their files close here; the directory fsync
                // and the rest are owed to the next flush.
                let mut writer = lock(&self.writer);
                writer.dir_dirty = true;
                writer.rolled |= rolled;
                writer.appends_since_flush += appends;
                writer.bytes_since_flush += bytes;
                drop(writer);
                self.progress.fail_flush(written.offset, error.clone());
                return Err(error);
            }
        }
        if let Some(observer) = &self.observer {
            observer.on_flush(started.elapsed(), appends, bytes);
        }
        self.progress.set_durable(written);
        self.last_flush_ms.store(
            self.opened_at.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        if rolled
            || !sealed.is_empty()
            || flush.checkpoint_pending
            || flush.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            match flush
                .checkpoint
                .try_write(written.segment_base, written.position, written.offset)
            {
                Ok(()) => {
                    flush.last_checkpoint = Instant::now();
                    flush.checkpoint_pending = false;
                }
                Err(SyncFailure::Fsync(error)) => {
                    self.poison_locked(&mut lock(&self.writer), error.to_string());
                    return Err(error);
                }
                // What this flush covered is durable; only the shortcut for recovery
                // is stale, as after a crash just before it (recovery scans more).
                Err(SyncFailure::BeforeSync(error)) => {
                    flush.checkpoint_pending = true;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// True when an interval-policy flush is due (written data older than `interval`).
    pub(crate) fn interval_flush_due(&self, interval_ms: u64) -> bool {
        let state = self.progress.lock();
        if state.written.offset == state.durable.offset {
            return false;
        }
        drop(state);
        let now = self.opened_at.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_flush_ms.load(Ordering::Relaxed)) >= interval_ms
    }

    /// A future that resolves once `offset` is durable. On topics whose policy is
    /// not `always` it asks for a flush, so a durable ack means the same everywhere.
    pub fn wait_durable(self: &Arc<Self>, offset: u64) -> WaitDurable {
        if self.config().fsync != FsyncPolicy::Always {
            self.request_flush();
        }
        WaitDurable {
            progress: self.progress.clone(),
            offset,
        }
    }

    /// Blocks until `offset` is durable.
    pub fn wait_durable_blocking(self: &Arc<Self>, offset: u64) -> Result<()> {
        if self.config().fsync != FsyncPolicy::Always {
            self.request_flush();
        }
        self.progress.wait_durable_blocking(offset)
    }

    /// A future that resolves once a record at `offset` is visible (or the partition
    /// is closed or poisoned). For long polls: no spinning.
    pub fn wait_for_data(&self, offset: u64) -> WaitForData {
        WaitForData {
            progress: self.progress.clone(),
            offset,
        }
    }

    /// Blocks until a record at `offset` is visible or `timeout` passes.
    pub fn wait_for_data_blocking(&self, offset: u64, timeout: Duration) -> bool {
        self.progress.wait_for_data_blocking(offset, timeout)
    }

    /// Why the partition refuses writes, if a failed fsync or write poisoned it.
    /// Cheap: readers waiting on a poisoned partition use it to stop waiting.
    pub fn poisoned(&self) -> Option<String> {
        self.progress.lock().poisoned.clone()
    }

    /// First offset still in the log. Fails with [`Error::PartitionUnavailable`] for a
    /// partition recovery refused to open: it has no positions to act on (see
    /// [`Partition::bounds`]).
    pub fn log_start(&self) -> Result<u64> {
        self.bounds().map(|(log_start, _)| log_start)
    }

    /// Next offset readers can see. Fails as [`Partition::log_start`] does.
    pub fn end_offset(&self) -> Result<u64> {
        self.bounds().map(|(_, end)| end)
    }

    /// The log start as the progress holds it, for the partition's own reads that
    /// checked it is available when they began (retention may move it under them).
    fn log_start_now(&self) -> u64 {
        self.progress.lock().log_start
    }

    /// The log start and the end readers see, taken together: the offsets a caller
    /// may take a position from (a reset, a commit, a queue's start, a lag). A
    /// partition recovery refused to open fails with [`Error::PartitionUnavailable`]:
    /// what it holds is unknown until an operator repairs it, and acting as if it were
    /// empty at offset 0 would move positions back over messages it still has.
    pub fn bounds(&self) -> Result<(u64, u64)> {
        let state = self.progress.lock();
        if let Some(error) = &state.unavailable {
            return Err(error.clone());
        }
        Ok((state.log_start, state.visible().offset))
    }

    /// Deletes whole segments, oldest first, that are past `retention_ms`, push the
    /// partition over `retention_bytes`, or whose every record has expired. An active
    /// segment that qualifies is rolled first so it can go too.
    pub fn enforce_retention(self: &Arc<Self>) -> Result<RetentionOutcome> {
        let config = self.config();
        let now_ms = self.clock.now_ms();
        // A reader that stopped inside a batch and went away leaves its place (and a
        // zstd batch's decompressed records) behind: this pass forgets idle ones.
        self.resume.forget_idle(now_ms);
        let too_old = |summary: &SegmentSummary| {
            config
                .retention_ms
                .is_some_and(|ms| summary.max_timestamp_ms < now_ms.saturating_sub(ms as i64))
        };
        let mut writer = lock(&self.writer);
        if writer.poisoned.is_some() || writer.closed {
            return Ok(RetentionOutcome {
                log_start: self.progress.lock().log_start,
                ..RetentionOutcome::default()
            });
        }
        let active = writer.state.summary;
        let fully_visible = self.progress.lock().visible().offset == active.next_offset;
        if active.log_bytes > 0 && fully_visible && (active.all_expired(now_ms) || too_old(&active))
        {
            self.roll(&mut writer)?;
        }
        let mut outcome = RetentionOutcome::default();
        let mut deleted = Vec::new();
        let mut deleted_segments = Vec::new();
        // Only what readers can see goes: a segment with offsets past the visible end
        // (written, not yet durable on an `always` topic) would put the log start
        // above the end, where no offset can be read.
        let visible = self.progress.lock().visible().offset;
        {
            let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
            let mut total: u64 = segments.iter().map(|s| s.summary().log_bytes).sum();
            let sealed_count = segments.len() - 1;
            for segment in &segments[..sealed_count] {
                let summary = segment.summary();
                if summary.next_offset > visible {
                    break;
                }
                let over_size = config
                    .retention_bytes
                    .is_some_and(|limit| total - summary.log_bytes >= limit);
                let reason = if summary.all_expired(now_ms) {
                    &mut outcome.segments_expired
                } else if too_old(&summary) {
                    &mut outcome.segments_too_old
                } else if over_size {
                    &mut outcome.segments_over_size
                } else {
                    break;
                };
                *reason += 1;
                total -= summary.log_bytes;
                deleted.push(summary);
            }
            deleted_segments.extend(segments.drain(..deleted.len()));
        }
        // A segment sealed but not flushed yet needs no fsync once deleted.
        writer.sealed.retain(|s| {
            !deleted
                .iter()
                .any(|d| d.base_offset == s.segment.base_offset)
        });
        self.sealed_backlog
            .store(writer.sealed.len(), Ordering::Relaxed);
        let log_start = self.segments()[0].base_offset;
        self.progress.set_log_start(log_start);
        drop(writer);

        outcome.log_start = log_start;
        for segment in &deleted_segments {
            segment.mark_removed();
        }
        for summary in &deleted {
            segment::remove_files(&*self.fs, &self.dir, summary.base_offset)?;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += summary.log_bytes;
            outcome.records_deleted += summary.next_offset - summary.base_offset;
        }
        if !deleted.is_empty() {
            // The same fsync makes the partition's new files durable too: a failure
            // is fatal here as in a flush, never retried. A directory that could not
            // be opened for it (out of file descriptors) was not fsynced: the next
            // flush does it.
            match fsutil::try_sync_dir(&*self.fs, &self.dir) {
                Ok(()) => {}
                Err(SyncFailure::Fsync(error)) => {
                    self.poison_locked(&mut lock(&self.writer), error.to_string());
                    return Err(error);
                }
                Err(SyncFailure::BeforeSync(error)) => {
                    tracing::warn!(partition = %self.name, %error, "could not fsync the directory after retention deleted segments; the next flush does");
                    lock(&self.writer).dir_dirty = true;
                    self.request_flush();
                }
            }
            tracing::info!(partition = %self.name, segments = deleted.len(), log_start, "retention deleted segments");
        }
        Ok(outcome)
    }

    /// Records message reads have walked in this partition so far, returned or passed
    /// over: about one per record read, however the reads divide a batch (for tests and
    /// diagnosis).
    #[cfg(any(test, feature = "testing"))]
    pub fn records_walked(&self) -> u64 {
        self.resume.walked()
    }

    /// Places inside a batch where message reads stopped that the next read from there
    /// would go on from (at most [`crate::limits::READ_RESUME_POINTS_MAX`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn resume_places(&self) -> usize {
        self.resume.len()
    }

    /// Describes the partition.
    pub fn info(&self) -> PartitionInfo {
        let segments = self.segments();
        let state = self.progress.lock();
        PartitionInfo {
            partition: self.id,
            log_start: state.log_start,
            end_offset: state.visible().offset,
            written_offset: state.written.offset,
            durable_offset: state.durable.offset,
            size_bytes: segments.iter().map(|s| s.summary().log_bytes).sum(),
            segment_count: segments.len() as u32,
            poisoned: state.poisoned.clone(),
            unavailable: state.unavailable.as_ref().map(Error::to_string),
        }
    }

    /// Whether recovery refused to open it.
    pub fn unavailable(&self) -> Option<Error> {
        self.progress.lock().unavailable.clone()
    }

    /// Flushes, writes the active segment's index and a final checkpoint, and refuses
    /// further appends. Reopening after this scans nothing (unless the index could not
    /// be written: then it scans the active segment).
    pub(crate) fn close(&self) -> Result<()> {
        let flushed = self.flush();
        let mut flush = lock(&self.flush);
        let mut writer = lock(&self.writer);
        if writer.closed {
            return Ok(());
        }
        writer.closed = true;
        self.progress.close();
        if writer.poisoned.is_some() {
            self.leave_fsync_failed_marker();
        }
        flushed?;
        // Derived data, like the index files, but not needed to open without a scan:
        // a failure costs a rebuild when the segment is next looked up or sealed.
        if let Err(error) = writer.active.write_id_index(&writer.state.summary, false) {
            tracing::warn!(partition = %self.name, %error, "could not write the active segment's id index at close");
        }
        // The same for the index files: a failure (a full disk) costs the next open a
        // scan of the active segment; the final checkpoint still goes out.
        if let Err(error) = writer.active.write_index_files(&writer.state) {
            tracing::warn!(partition = %self.name, %error, "could not write the active segment's index at close; the next start rebuilds it from the log");
        }
        let end = self.progress.lock().durable;
        flush
            .checkpoint
            .write(end.segment_base, end.position, end.offset)
    }

    /// Closes without flushing, as a killed process would ([`crate::Store::simulate_crash`]).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn abandon(&self) {
        lock(&self.writer).closed = true;
        self.progress.close();
    }

    /// Stops the partition because its topic is being deleted: pending and later calls
    /// fail with [`Error::TopicDeleted`].
    pub(crate) fn abandon_deleted(&self) {
        lock(&self.writer).closed = true;
        self.progress.close_deleted();
    }
}

impl Flush for Partition {
    fn flush_now(&self, retry: bool) -> Option<Duration> {
        if retry {
            self.flush_retry_queued.store(false, Ordering::Release);
        }
        // A fsync failure has poisoned the partition and woken its waiters with the
        // error: nothing more to do. Any other failure ran no fsync and is tried
        // again, one retry at a time, backing off while it goes on.
        match self.flush() {
            Ok(()) => {
                if self.flush_failures.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!(partition = %self.name, "flushing works again");
                }
                None
            }
            Err(error) => {
                if self.poisoned().is_some() || self.progress.lock().closed {
                    return None;
                }
                let failures = self.flush_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // The first failure, then about every half minute while it goes on.
                if failures == 1 || failures.is_multiple_of(16) {
                    tracing::warn!(partition = %self.name, %error, failures, "a flush failed before any fsync ran; not poisoned: the publishes it was to make durable failed, and it is tried again");
                }
                if self.flush_retry_queued.swap(true, Ordering::AcqRel) {
                    return None;
                }
                let delay = FLUSH_RETRY_FIRST
                    .saturating_mul(1 << failures.min(16).saturating_sub(1))
                    .min(FLUSH_RETRY_MAX);
                Some(delay)
            }
        }
    }
}

/// The records' ids split into runs and hashed singles ([`idindex::split_ids`]): what
/// the active segment's id index takes.
pub(crate) fn split_record_ids(records: &[NewRecord]) -> SplitIds {
    idindex::split_ids(
        records
            .iter()
            .enumerate()
            .filter_map(|(index, record)| Some((index as u32, &record.id.as_ref()?[..]))),
    )
}

/// The one result of a run of one batch.
fn one(results: Vec<Result<Appended>>) -> Result<Appended> {
    results
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(Error::invalid("an append of one batch returned no result")))
}
