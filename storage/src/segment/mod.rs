//! A segment: one `.log` file of record batches plus its sparse `.index` and
//! `.timeindex` and its id index `.idindex`, named by the base offset zero-padded to
//! 20 digits.
//!
//! [`scan`] is the one validator of log bytes: recovery, index rebuilds and the
//! offline `verify` command all call it; [`collect_ids`] walks the same batches for
//! the ids in them. [`Segment`] is the read side: a lazily created mapping, the
//! in-memory index, and the message ids (in memory while the segment is active, in its
//! `.idindex` once sealed) that [`Segment::find_by_id`] searches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, Compression, FormatError, RawRecord, Record, RecordIter};
use crate::error::{Error, IoContext, Result};
use crate::filter::{Filter, Filtered, Verdict};
use crate::fs::FileSystem;
use crate::fsutil;
use crate::idindex::{self, IdEntry, IdRun, IdTable, SplitIds};
use crate::index::{self, OffsetEntry, SegmentIndex, SegmentSummary, TimeEntry};
use crate::limits::{
    FILTER_SCAN_BYTES_MAX, FILTER_SCAN_RECORDS_MAX, ID_INDEX_ENTRIES_MAX, ID_INDEX_FILE_BYTES_MAX,
    INDEX_INTERVAL_BYTES,
};

mod batches;
mod ids;
mod resume;

pub use batches::{BatchBudget, StoredBatch};
pub use resume::ResumePoints;

pub use ids::{
    IdLists, IdLookup, IdScan, check_id_index_header, collect_ids, id_index_describes,
    load_id_index, rebuild_id_index,
};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
pub const ID_INDEX_SUFFIX: &str = "idindex";

/// `<dir>/<base offset, 20 digits>.<suffix>`.
pub fn segment_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// The base offset encoded in a segment file name, if it is one of ours.
pub fn parse_segment_name(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Summary and index of a segment as batches are appended or scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentState {
    pub summary: SegmentSummary,
    pub index: SegmentIndex,
    last_indexed_position: u64,
}

impl SegmentState {
    pub fn new(base_offset: u64) -> Self {
        SegmentState {
            summary: SegmentSummary::empty(base_offset),
            index: SegmentIndex::default(),
            last_indexed_position: 0,
        }
    }

    /// Accounts for the batch at `position`: summary, and an index entry when enough
    /// bytes have passed since the last one.
    pub fn observe(&mut self, position: u64, header: &BatchHeader) {
        let summary = &mut self.summary;
        summary.max_timestamp_ms = summary.max_timestamp_ms.max(header.max_timestamp_ms);
        summary.max_expiry_ms = summary.max_expiry_ms.max(header.max_expiry_ms);
        self.observe_framing(position, header);
    }

    /// Accounts for a batch whose CRC fails: its offsets and bytes stay allocated, but
    /// its times are not believed. Its records might never expire, so neither may the
    /// segment by TTL; its timestamp is left out so a damaged one cannot age the
    /// segment into time retention early (size retention still applies).
    pub fn observe_corrupt(&mut self, position: u64, header: &BatchHeader) {
        self.summary.max_expiry_ms = batch::NEVER_EXPIRES;
        self.observe_framing(position, header);
    }

    /// Offsets and bytes of the batch at `position`, and an index entry (stamped with
    /// the time observed so far) when enough bytes have passed since the last one.
    fn observe_framing(&mut self, position: u64, header: &BatchHeader) {
        let summary = &mut self.summary;
        summary.log_bytes = position + u64::from(header.batch_length);
        summary.next_offset = header.next_offset();
        if position > 0 && position - self.last_indexed_position >= INDEX_INTERVAL_BYTES {
            self.last_indexed_position = position;
            let relative_offset = (header.base_offset - summary.base_offset) as u32;
            self.index.offsets.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            self.index.times.push(TimeEntry {
                timestamp_ms: summary.max_timestamp_ms,
                relative_offset,
            });
        }
    }

    /// Keeps only what describes bytes below `position` (used when a scan resumes
    /// from a checkpoint inside a segment whose index was built further).
    fn from_index(summary: SegmentSummary, index: SegmentIndex) -> Self {
        let last_indexed_position = index.offsets.last().map_or(0, |e| u64::from(e.position));
        SegmentState {
            summary,
            index,
            last_indexed_position,
        }
    }
}

/// Why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub position: u64,
    pub reason: String,
}

/// A batch whose framing is intact but whose contents fail the CRC, with a valid batch
/// after it: corruption inside the log, not a torn write. Its offsets stay allocated;
/// reads of them fail with `Corrupt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBatch {
    pub position: u64,
    pub base_offset: u64,
    pub next_offset: u64,
    pub reason: String,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Summary and index of everything valid.
    pub state: SegmentState,
    /// The end of the valid bytes: where a torn tail must be cut.
    pub valid_bytes: u64,
    pub torn_tail: Option<TornTail>,
    pub corrupt_batches: Vec<CorruptBatch>,
    pub batches: u64,
}

/// Validates every batch of `data` from `start` (which must be a batch boundary), where
/// the first batch must have offset `state.summary.next_offset`. Every header is
/// checked, every CRC verified, offsets must follow on from each other. Stops at the
/// first batch that is incomplete or unreadable and reports it as a torn tail; a batch
/// with a bad CRC but intact framing followed by a valid batch is reported as
/// corruption and skipped over.
pub fn scan(data: &[u8], start: u64, state: SegmentState) -> ScanReport {
    scan_durable(data, start, state, 0)
}

/// [`scan`] of a log whose first `durable_end` bytes were fsynced before (the
/// checkpoint says so): a batch that ends within them and fails its CRC is corruption
/// even when nothing valid follows it. It was acknowledged, not torn by a crash, and
/// cutting it would fail the partition's recovery for the sake of one damaged batch.
pub fn scan_durable(
    data: &[u8],
    start: u64,
    mut state: SegmentState,
    durable_end: u64,
) -> ScanReport {
    let mut position = start;
    let mut corrupt_batches = Vec::new();
    let mut batches = 0;
    let end = data.len() as u64;
    let torn_tail = loop {
        if position >= end {
            break None;
        }
        let rest = &data[position as usize..];
        let header = match check_batch_at(rest, state.summary.next_offset) {
            Ok(header) => header,
            Err(BatchProblem::Unframed(reason)) => break Some(TornTail { position, reason }),
            Err(BatchProblem::BadContents(header, reason)) => {
                let after = position + u64::from(header.batch_length);
                let followed_by_valid = after < end
                    && check_batch_at(&data[after as usize..], header.next_offset()).is_ok();
                if !followed_by_valid && after > durable_end {
                    break Some(TornTail { position, reason });
                }
                corrupt_batches.push(CorruptBatch {
                    position,
                    base_offset: header.base_offset,
                    next_offset: header.next_offset(),
                    reason,
                });
                state.observe_corrupt(position, &header);
                position += u64::from(header.batch_length);
                batches += 1;
                continue;
            }
        };
        state.observe(position, &header);
        position += u64::from(header.batch_length);
        batches += 1;
    };
    ScanReport {
        valid_bytes: torn_tail.as_ref().map_or(end, |t| t.position),
        state,
        torn_tail,
        corrupt_batches,
        batches,
    }
}

enum BatchProblem {
    /// The batch cannot be delimited: what follows cannot be found.
    Unframed(String),
    /// The batch is delimited but its bytes are wrong.
    BadContents(BatchHeader, String),
}

/// Checks the batch at the start of `rest`: complete, sane header, expected offset,
/// CRC. Decoding records is left to readers: the CRC vouches for the bytes.
fn check_batch_at(rest: &[u8], expected_offset: u64) -> Result<BatchHeader, BatchProblem> {
    let header = BatchHeader::parse(rest).map_err(|e| BatchProblem::Unframed(e.to_string()))?;
    let length = header.batch_length as usize;
    if rest.len() < length {
        return Err(BatchProblem::Unframed(format!(
            "batch of {length} bytes is cut off after {} bytes",
            rest.len()
        )));
    }
    if header.base_offset != expected_offset {
        return Err(BatchProblem::Unframed(format!(
            "batch base offset {} where {expected_offset} was expected",
            header.base_offset
        )));
    }
    if !batch::verify_crc(&rest[..length], &header) {
        return Err(BatchProblem::BadContents(header, "CRC mismatch".into()));
    }
    Ok(header)
}

/// Limits on one read, shared by every segment it touches.
///
/// The read stops at the first record the budget refuses, and the caller must then
/// report the offset of that record as the next one to read, never the end of the log:
/// [`ReadBudget::exhausted`] says whether the read stopped on the budget.
///
/// With a filter ([`ReadBudget::with_filter`]), records it skips are passed over (the
/// read's next offset moves past them) without counting against the budget, up to
/// [`FILTER_SCAN_RECORDS_MAX`] records or [`FILTER_SCAN_BYTES_MAX`] bytes per read;
/// then the read stops as if the budget had run out, so a filter that skips nearly
/// everything still returns often.
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget<'f> {
    records_left: u32,
    bytes_left: u64,
    /// Whether a record has been returned yet: the first is returned even if it alone
    /// is over `bytes_left`, so a large message cannot stall a consumer.
    returned_any: bool,
    /// The read is over although records or bytes may be left: a record was refused,
    /// the first was over the whole byte budget, or the filter's scan limits ran out.
    refused: bool,
    filter: Option<&'f Filter>,
    /// Records and bytes the filter may still skip in this read.
    skips_left: u32,
    skip_bytes_left: u64,
    filtered: Filtered,
}

impl<'f> ReadBudget<'f> {
    pub fn new(max_records: u32, max_bytes: u64) -> Self {
        ReadBudget {
            records_left: max_records,
            bytes_left: max_bytes,
            returned_any: false,
            refused: false,
            filter: None,
            skips_left: FILTER_SCAN_RECORDS_MAX,
            skip_bytes_left: FILTER_SCAN_BYTES_MAX,
            filtered: Filtered::default(),
        }
    }

    /// Only records `filter` matches are taken (all with `None`).
    pub fn with_filter(mut self, filter: Option<&'f Filter>) -> Self {
        self.filter = filter;
        self
    }

    /// What the filter skipped so far.
    pub fn filtered(&self) -> Filtered {
        self.filtered
    }

    /// Whether the filter keeps the record (true without a filter), judged on its bytes
    /// in place. A skipped record counts against the skip limits; when they are used up
    /// the read is over.
    fn keep(&mut self, record: &RawRecord<'_>, payload_bytes: u64) -> bool {
        let Some(filter) = self.filter else {
            return true;
        };
        let verdict = filter.evaluate_raw(record);
        if verdict == Verdict::Match {
            return true;
        }
        self.filtered.skipped += 1;
        if verdict == Verdict::NotJson {
            self.filtered.not_json += 1;
        }
        self.skips_left = self.skips_left.saturating_sub(1);
        self.skip_bytes_left = self.skip_bytes_left.saturating_sub(payload_bytes);
        if self.skips_left == 0 || self.skip_bytes_left == 0 {
            self.refused = true;
        }
        false
    }

    /// No further record will be taken: the read stopped on the budget, not at the
    /// end of the data. A budget used up exactly still takes empty records: they do
    /// not go over it.
    pub fn exhausted(&self) -> bool {
        self.refused || self.records_left == 0
    }

    /// Takes a record of `payload_bytes` ([`Record::payload_bytes`]) if the budget has
    /// room for it; otherwise marks the budget exhausted and returns `false`. The first
    /// record is always taken; one larger than the whole budget ends the read.
    fn admit(&mut self, payload_bytes: u64) -> bool {
        let fits = !self.exhausted() && (!self.returned_any || payload_bytes <= self.bytes_left);
        if !fits {
            self.refused = true;
            return false;
        }
        self.records_left = self.records_left.saturating_sub(1);
        if payload_bytes > self.bytes_left {
            // Over the budget on its own: nothing more fits, not even an empty record.
            self.refused = true;
        }
        self.bytes_left = self.bytes_left.saturating_sub(payload_bytes);
        self.returned_any = true;
        true
    }
}

/// The read side of one segment.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    /// Unique among the segments of this process (never reused): what a
    /// [`ResumePoints`] place names its segment by.
    id: u64,
    pub dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// Length of the mapping: the segment's capacity, so the active segment can grow
    /// into one mapping instead of being remapped as it grows.
    map_len: usize,
    mapping: Mutex<Option<Bytes>>,
    /// Set when a read created the mapping, until [`MappedSegments`] has counted it.
    newly_mapped: AtomicBool,
    /// The [`MappedSegments`] tick of the last read: eviction takes the oldest.
    last_read: AtomicU64,
    state: RwLock<LoadedState>,
    /// The message ids: in memory while the segment is active, then in `.idindex`.
    ids: Mutex<IdState>,
}

/// A new [`Segment::id`].
fn next_segment_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where a segment's message ids are.
#[derive(Debug)]
struct IdState {
    ids: Ids,
    /// Retention removed the segment's files: its id index is never written again
    /// (it would be left behind without its log).
    removed: bool,
    /// This process read the log and some batch's ids really cannot be read: an
    /// `.idindex` that says so is believed from now on. Until then its incomplete flag
    /// is a claim about the log when it was written (by a build that could not decode
    /// every batch, say), and the first use reads the log again.
    incomplete_confirmed: bool,
}

#[derive(Debug)]
enum Ids {
    /// The active segment (or a sealed one whose index is not written yet): the ids
    /// of its appends in log order. The ids of its first `prefix_bytes` bytes, there
    /// before the partition opened, are not in memory until a lookup or the seal needs
    /// them (from the `.idindex` a clean close wrote, or by decoding the log).
    Open {
        prefix_bytes: u64,
        appended: IdLists,
        /// A batch of the decoded prefix failed its CRC: its ids are unknown.
        incomplete: bool,
    },
    /// Sealed: every id is in the `.idindex`. `table` is its validated mapping once a
    /// lookup loaded it, or the entries in memory when the file could not be written
    /// (`pinned`: kept until the process ends, recovery writes the file then).
    Sealed {
        table: Option<IdTable>,
        pinned: bool,
    },
}

/// Bounds how many segments of a store keep a mapping. Beyond the limit the least
/// recently read segment drops its mapping; readers still holding slices of it keep
/// it alive until they finish, and the next read maps the file again.
#[derive(Debug)]
pub struct MappedSegments {
    limit: usize,
    tick: AtomicU64,
    mapped: Mutex<Vec<Weak<Segment>>>,
}

impl MappedSegments {
    pub fn new(limit: usize) -> Self {
        MappedSegments {
            limit: limit.max(1),
            tick: AtomicU64::new(0),
            mapped: Mutex::new(Vec::new()),
        }
    }

    /// Records a read of `segment`, and evicts mappings over the limit.
    pub fn note_read(&self, segment: &Arc<Segment>) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        segment.last_read.store(tick, Ordering::Relaxed);
        if !segment.newly_mapped.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        mapped.retain(|weak| weak.strong_count() > 0);
        mapped.push(Arc::downgrade(segment));
        while mapped.len() > self.limit {
            let oldest = mapped
                .iter()
                .enumerate()
                .min_by_key(|(_, weak)| {
                    weak.upgrade()
                        .map_or(0, |s| s.last_read.load(Ordering::Relaxed))
                })
                .map(|(index, _)| index);
            let Some(oldest) = oldest else { break };
            if let Some(evicted) = mapped.swap_remove(oldest).upgrade() {
                evicted.release_mapping();
            }
        }
    }

    /// Segments holding a mapping now.
    pub fn count(&self) -> usize {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        mapped.retain(|weak| weak.strong_count() > 0);
        mapped.len()
    }
}

#[derive(Debug)]
struct LoadedState {
    summary: SegmentSummary,
    /// `None` for a sealed segment whose index has not been needed yet.
    index: Option<SegmentIndex>,
}

impl Segment {
    /// A segment whose summary and index are known (active, or freshly scanned), whose
    /// files are reached through `fs`.
    pub fn with_state(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        state: SegmentState,
        map_len: usize,
    ) -> Self {
        Segment {
            base_offset: state.summary.base_offset,
            id: next_segment_id(),
            dir: dir.to_path_buf(),
            fs,
            map_len,
            mapping: Mutex::new(None),
            newly_mapped: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
            state: RwLock::new(LoadedState {
                summary: state.summary,
                index: Some(state.index),
            }),
            ids: Mutex::new(IdState::sealed()),
        }
    }

    /// This segment as the active one: appends add their ids in memory
    /// ([`Segment::add_ids`]); the ids of its first `prefix_bytes` bytes (written before
    /// the partition opened) are read when first needed.
    pub fn with_open_ids(self, prefix_bytes: u64) -> Self {
        *self.ids.lock().unwrap_or_else(|e| e.into_inner()) = IdState {
            ids: Ids::Open {
                prefix_bytes,
                appended: IdLists::default(),
                incomplete: false,
            },
            removed: false,
            incomplete_confirmed: false,
        };
        self
    }

    /// A sealed segment known by its summary; its index loads on first use.
    pub fn sealed(fs: Arc<dyn FileSystem>, dir: &Path, summary: SegmentSummary) -> Self {
        Segment {
            base_offset: summary.base_offset,
            id: next_segment_id(),
            dir: dir.to_path_buf(),
            fs,
            map_len: summary.log_bytes as usize,
            mapping: Mutex::new(None),
            newly_mapped: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
            state: RwLock::new(LoadedState {
                summary,
                index: None,
            }),
            ids: Mutex::new(IdState::sealed()),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        segment_path(&self.dir, self.base_offset, LOG_SUFFIX)
    }

    pub fn summary(&self) -> SegmentSummary {
        self.state.read().unwrap_or_else(|e| e.into_inner()).summary
    }

    /// Records an appended batch (active segment only).
    pub fn observe_append(&self, writer: &SegmentState) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.summary = writer.summary;
        if let Some(index) = state.index.as_mut() {
            // The writer only ever adds entries: copy the new ones.
            let known = index.offsets.len();
            index
                .offsets
                .extend_from_slice(&writer.index.offsets[known..]);
            let known = index.times.len();
            index.times.extend_from_slice(&writer.index.times[known..]);
        }
    }

    /// Writes both index files for the current state (sealing or clean shutdown),
    /// durably.
    pub fn write_index_files(&self, state: &SegmentState) -> Result<()> {
        self.replace_index_files(state)?;
        fsutil::sync_dir(&*self.fs, &self.dir)
    }

    /// Writes both index files (each fsynced and renamed into place) but leaves the
    /// directory fsync to the caller, who does one for several files. Index files are
    /// checked when loaded and rebuilt when missing or stale, so a crash before the
    /// directory fsync costs a scan, never correctness.
    pub fn replace_index_files(&self, state: &SegmentState) -> Result<()> {
        replace_index_files(&*self.fs, &self.dir, state)
    }

    fn mapping(&self) -> Result<Bytes> {
        let mut mapping = self.mapping.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = mapping.as_ref() {
            return Ok(bytes.clone());
        }
        let path = self.log_path();
        let bytes = self
            .fs
            .map(&path, self.map_len)
            .ctx(|| format!("mapping {}", path.display()))?;
        *mapping = Some(bytes.clone());
        self.newly_mapped.store(true, Ordering::Release);
        Ok(bytes)
    }

    /// Drops this segment's own reference to its mapping (see [`MappedSegments`]), and
    /// to its id index's unless that is only in memory.
    fn release_mapping(&self) {
        *self.mapping.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // A lookup or a seal holding the ids keeps the table this time.
        if let Ok(mut ids) = self.ids.try_lock()
            && let Ids::Sealed {
                table,
                pinned: false,
            } = &mut ids.ids
        {
            *table = None;
        }
    }

    /// The segment's bytes up to `end` (a position readers may see).
    fn visible_bytes(&self, end: u64) -> Result<Bytes> {
        let mapping = self.mapping()?;
        if end as usize > mapping.len() {
            return Err(Error::corrupt(
                self.log_path(),
                mapping.len() as u64,
                format!(
                    "segment is shorter ({} bytes) than expected ({end})",
                    mapping.len()
                ),
            ));
        }
        Ok(mapping.slice(..end as usize))
    }

    /// Loads the index of a sealed segment, from its files if they are valid and
    /// describe this log, else by scanning the log (and rewriting the files).
    fn index(&self) -> Result<std::sync::RwLockReadGuard<'_, LoadedState>> {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.index.is_some() {
                return Ok(state);
            }
        }
        let summary = self.summary();
        let index = match load_index_files(
            &*self.fs,
            &self.dir,
            self.base_offset,
            summary.log_bytes,
        ) {
            Some((_, index)) => index,
            None => {
                let data = self.visible_bytes(summary.log_bytes)?;
                let report = scan(&data, 0, SegmentState::new(self.base_offset));
                if let Err(e) = self.write_index_files(&report.state) {
                    tracing::warn!(error = %e, "could not rewrite a rebuilt index; it will be rebuilt again");
                }
                report.state.index
            }
        };
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.index.get_or_insert(index);
        drop(state);
        Ok(self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// About where `offset` lies in this segment's log (the indexed batch at or before
    /// it: within one index interval), for byte estimates.
    pub fn position_near(&self, offset: u64) -> Result<u64> {
        let relative = u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        Ok(self.start_for(relative)?.0)
    }

    /// Where a scan for `relative_offset` starts: the position of the last indexed
    /// batch at or before it, and the base offset that batch must have.
    fn start_for(&self, relative_offset: u32) -> Result<(u64, u64)> {
        let state = self.index()?;
        let entry = state
            .index
            .as_ref()
            .map(|i| i.entry_for(relative_offset))
            .unwrap_or(OffsetEntry {
                relative_offset: 0,
                position: 0,
            });
        Ok((
            u64::from(entry.position),
            self.base_offset + u64::from(entry.relative_offset),
        ))
    }

    /// The walk of stored batches both reads share ([`Segment::read`] and
    /// [`Segment::read_batches`]) from the index entry at or before `from`.
    fn scan(
        &self,
        from: u64,
        end_position: u64,
        end_offset: u64,
        now_ms: i64,
    ) -> Result<BatchScan<'_>> {
        let relative = u32::try_from(from.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        let (position, expected) = self.start_for(relative)?;
        Ok(BatchScan {
            segment: self,
            data: self.visible_bytes(end_position)?,
            position,
            expected,
            end_position,
            from,
            end_offset,
            now_ms,
        })
    }

    /// Parses the header of the batch at `position` (whose bytes start `rest`) and
    /// checks it is whole and carries the `expected` base offset: the base offset is
    /// outside the CRC, so continuity is what vouches for it.
    fn header_at(&self, rest: &[u8], position: u64, expected: u64) -> Result<BatchHeader> {
        let corrupt = |reason: String| Error::corrupt(self.log_path(), position, reason);
        let header = BatchHeader::parse(rest).map_err(|e| corrupt(e.to_string()))?;
        if rest.len() < header.batch_length as usize {
            return Err(corrupt(
                "batch runs past the visible end of the segment".into(),
            ));
        }
        if header.base_offset != expected {
            return Err(corrupt(format!(
                "batch has base offset {} where {expected} was expected",
                header.base_offset
            )));
        }
        Ok(header)
    }

    /// Reads records with offsets in `[from, end_offset)` from bytes `[.., end_position)`
    /// into `out`, skipping expired ones, until the budget is spent. Returns the offset
    /// the next read should start from.
    ///
    /// Damage (a CRC mismatch, a bad header) after records were already returned ends
    /// the read before it: the intact records go out, the budget counts as exhausted,
    /// and the next read, which starts at the damage, fails with [`Error::Corrupt`].
    ///
    /// A read that stops inside a batch leaves its place in `resume`, and a read that
    /// starts where one stopped goes on from there (see [`ResumePoints`]): reading
    /// through a large batch a budget at a time walks each record once, not once per
    /// read. What it returns is the same either way.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &self,
        from: u64,
        end_position: u64,
        end_offset: u64,
        now_ms: i64,
        budget: &mut ReadBudget<'_>,
        resume: &ResumePoints,
        out: &mut Vec<Record>,
    ) -> Result<u64> {
        let mut next = from;
        let mut walked = 0;
        // `next` is kept up to date as the scan goes, so an error leaves it at the first
        // offset not yet read.
        let scanned = (|| -> Result<()> {
            let mut scan = self.scan(from, end_position, end_offset, now_ms)?;
            while !budget.exhausted() {
                let Some(ScannedBatch { at, header, bytes }) = scan.next_batch(&mut next)? else {
                    break;
                };
                let corrupt = |e: FormatError| Error::corrupt(self.log_path(), at, e.to_string());
                // Only the first batch can hold `from` past its first record.
                let place = (from > header.base_offset)
                    .then(|| resume.find(self.id, at, &header, from, now_ms))
                    .flatten();
                let mut records = match place.and_then(|place| {
                    let section = place
                        .section
                        .or_else(|| RecordIter::stored_section(&bytes, &header))?;
                    Some(RecordIter::over_section_at(section, &header, place.mark))
                }) {
                    Some(records) => records,
                    None => RecordIter::new(&bytes, &header).map_err(corrupt)?,
                };
                // What a place in this batch keeps: its decompressed section, if any.
                let kept_section =
                    (header.compression != Compression::None).then(|| records.section().clone());
                let stop_at = |next: u64, mark| {
                    resume.keep(
                        self.id,
                        at,
                        &header,
                        kept_section.as_ref(),
                        next,
                        mark,
                        now_ms,
                    );
                };
                // Records are looked at in place; only those returned become `Record`s.
                loop {
                    let mark = records.mark();
                    let Some(view) = records.next_view() else {
                        break;
                    };
                    walked += 1;
                    let view = view.map_err(corrupt)?;
                    if view.offset < from {
                        continue;
                    }
                    if view.offset >= end_offset {
                        return Ok(());
                    }
                    if view.expires_at_ms.is_some_and(|at| at <= now_ms) {
                        next = view.offset + 1;
                        continue;
                    }
                    if !budget.keep(&records.raw(&view), view.payload_bytes) {
                        next = view.offset + 1;
                        if budget.exhausted() {
                            // The skip limits: over as if the budget ran out.
                            stop_at(next, records.mark());
                            return Ok(());
                        }
                        continue;
                    }
                    if !budget.admit(view.payload_bytes) {
                        // The next read starts at `next`, at or before this record.
                        stop_at(next, mark);
                        return Ok(());
                    }
                    let record = records.record(&view).map_err(corrupt)?;
                    next = view.offset + 1;
                    out.push(record);
                }
                next = next.max(header.next_offset());
            }
            Ok(())
        })();
        resume.count_walked(walked);
        match scanned {
            Err(Error::Corrupt { .. }) if budget.returned_any => {
                budget.refused = true;
                Ok(next)
            }
            Err(error) => Err(error),
            Ok(()) => Ok(next),
        }
    }

    /// The first offset in this segment whose record timestamp is >= `timestamp_ms`,
    /// if any.
    pub fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        end_position: u64,
    ) -> Result<Option<u64>> {
        let relative = {
            let state = self.index()?;
            state
                .index
                .as_ref()
                .map_or(0, |i| i.relative_offset_for_time(timestamp_ms))
        };
        let (mut position, mut expected) = self.start_for(relative)?;
        let data = self.visible_bytes(end_position)?;
        while position < end_position {
            let rest = data.slice(position as usize..);
            let header = self.header_at(&rest, position, expected)?;
            expected = header.next_offset();
            let length = header.batch_length as usize;
            let corrupt = |reason: String| Error::corrupt(self.log_path(), position, reason);
            if header.max_timestamp_ms >= timestamp_ms {
                let bytes = rest.slice(..length);
                if !batch::verify_crc(&bytes, &header) {
                    return Err(corrupt("CRC mismatch".into()));
                }
                for record in
                    RecordIter::new(&bytes, &header).map_err(|e| corrupt(e.to_string()))?
                {
                    let record = record.map_err(|e| corrupt(e.to_string()))?;
                    if record.timestamp_ms >= timestamp_ms {
                        return Ok(Some(record.offset));
                    }
                }
            }
            position += length as u64;
        }
        Ok(None)
    }
}

/// A batch a [`BatchScan`] found: where it starts in the segment, its header, its
/// whole bytes.
struct ScannedBatch {
    at: u64,
    header: BatchHeader,
    bytes: Bytes,
}

/// The batches of a segment holding offsets in `[from, end_offset)` within its first
/// `end_position` bytes, in order ([`Segment::scan`]). Each is whole and continuous
/// with the one before (its base offset is outside the CRC, so continuity vouches for
/// it), and its CRC is checked before its header's expiry is believed: a flipped bit in
/// `max_expiry_ms` must read as corruption, not pass the batch off as expired and skip
/// it in silence.
struct BatchScan<'a> {
    segment: &'a Segment,
    data: Bytes,
    position: u64,
    expected: u64,
    end_position: u64,
    from: u64,
    end_offset: u64,
    now_ms: i64,
}

impl BatchScan<'_> {
    /// The next batch, or `None` at the end of the range. A batch whose every record
    /// has expired is passed over, and `next` (the offset the read resumes from) moved
    /// past it.
    fn next_batch(&mut self, next: &mut u64) -> Result<Option<ScannedBatch>> {
        while self.position < self.end_position {
            let at = self.position;
            let rest = self.data.slice(at as usize..);
            let header = self.segment.header_at(&rest, at, self.expected)?;
            if header.base_offset >= self.end_offset {
                self.position = self.end_position;
                break;
            }
            self.expected = header.next_offset();
            let length = header.batch_length as usize;
            self.position += length as u64;
            if header.next_offset() <= self.from {
                continue;
            }
            let bytes = rest.slice(..length);
            if !batch::verify_crc(&bytes, &header) {
                return Err(Error::corrupt(
                    self.segment.log_path(),
                    at,
                    format!(
                        "CRC mismatch in the batch holding offsets {}..={}",
                        header.base_offset,
                        header.last_offset()
                    ),
                ));
            }
            if header.all_expired(self.now_ms) {
                *next = header.next_offset();
                continue;
            }
            return Ok(Some(ScannedBatch { at, header, bytes }));
        }
        Ok(None)
    }
}

/// Reads and validates both index files of a segment; `None` unless both are intact,
/// agree with each other and describe a log of exactly `log_bytes` bytes.
pub fn load_index_files(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    log_bytes: u64,
) -> Option<(SegmentSummary, SegmentIndex)> {
    let read = |suffix| {
        fsutil::read_small_file(
            fs,
            &segment_path(dir, base_offset, suffix),
            index::INDEX_FILE_BYTES_MAX,
        )
        .ok()
        .flatten()
    };
    let (summary, offsets) = index::decode_offset_index(&read(INDEX_SUFFIX)?).ok()?;
    let (time_summary, times) = index::decode_time_index(&read(TIME_INDEX_SUFFIX)?).ok()?;
    let valid = summary == time_summary
        && summary.base_offset == base_offset
        && summary.log_bytes == log_bytes;
    valid.then_some((summary, SegmentIndex { offsets, times }))
}

/// Reads only the summary of a sealed segment from its index file, if it is valid for
/// a log of `log_bytes` bytes.
pub fn load_summary(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    log_bytes: u64,
) -> Option<SegmentSummary> {
    let bytes = fsutil::read_small_file(
        fs,
        &segment_path(dir, base_offset, INDEX_SUFFIX),
        index::INDEX_FILE_BYTES_MAX,
    )
    .ok()
    .flatten()?;
    let (summary, _) = index::decode_offset_index(&bytes).ok()?;
    (summary.base_offset == base_offset && summary.log_bytes == log_bytes).then_some(summary)
}

/// Resumes a segment state from its index files, kept only as far as `position` (a
/// batch boundary at or before which the index is trusted). Falls back to an empty
/// state (scan from 0) when the files are unusable.
pub fn state_up_to(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    position: u64,
    next_offset: u64,
) -> (SegmentState, u64) {
    let Some((summary, mut index)) = load_index_files(fs, dir, base_offset, position) else {
        return (SegmentState::new(base_offset), 0);
    };
    if summary.next_offset != next_offset {
        return (SegmentState::new(base_offset), 0);
    }
    index.offsets.retain(|e| u64::from(e.position) < position);
    index
        .times
        .retain(|e| u64::from(e.relative_offset) < next_offset - base_offset);
    (SegmentState::from_index(summary, index), position)
}

/// Writes both index files of the segment `state` describes (each fsynced and renamed
/// into place), leaving the directory fsync to the caller.
pub fn replace_index_files(fs: &dyn FileSystem, dir: &Path, state: &SegmentState) -> Result<()> {
    let base_offset = state.summary.base_offset;
    let offsets = index::encode_offset_index(&state.summary, &state.index.offsets);
    let times = index::encode_time_index(&state.summary, &state.index.times);
    fsutil::replace_file(fs, &segment_path(dir, base_offset, INDEX_SUFFIX), &offsets)?;
    fsutil::replace_file(
        fs,
        &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
        &times,
    )
}

/// Removes a segment's files (retention, or segments past a torn tail). The log goes
/// first: a crash part way leaves at most stray index files, which recovery ignores
/// without their log (and which are checked against the log's length and offsets should
/// a log of that name appear again).
pub fn remove_files(fs: &dyn FileSystem, dir: &Path, base_offset: u64) -> Result<()> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, ID_INDEX_SUFFIX] {
        let path = segment_path(dir, base_offset, suffix);
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
    Ok(())
}

/// A log of batches of `counts` records of `value_bytes` bytes each, the first at
/// offset `base`, and the position of each batch. For unit tests.
#[cfg(test)]
pub(crate) fn test_log(base: u64, counts: &[u32], value_bytes: usize) -> (Vec<u8>, Vec<u64>) {
    use crate::batch::{EncodeOptions, NewRecord, encode_batch};
    let options = EncodeOptions {
        now_ms: 1_000,
        default_ttl_ms: None,
        compression: batch::Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let mut log = Vec::new();
    let mut positions = Vec::new();
    let mut next = base;
    for &count in counts {
        let records: Vec<_> = (0..count)
            .map(|i| NewRecord::value(vec![i as u8; value_bytes]))
            .collect();
        let mut encoded = encode_batch(&records, &options).expect("a test batch encodes");
        encoded.set_base_offset(next);
        next += u64::from(count);
        positions.push(log.len() as u64);
        log.extend_from_slice(&encoded.bytes);
    }
    (log, positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(batches: &[u32]) -> (Vec<u8>, Vec<u64>) {
        test_log(0, batches, 700)
    }

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/d"), 42, LOG_SUFFIX);
        assert_eq!(path, Path::new("/d/00000000000000000042.log"));
        assert_eq!(
            parse_segment_name("00000000000000000042.log", LOG_SUFFIX),
            Some(42)
        );
        assert_eq!(parse_segment_name("42.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_segment_name("00000000000000000042.index", LOG_SUFFIX),
            None
        );
    }

    #[test]
    fn scan_of_a_clean_log_builds_a_sparse_index() {
        let (log, positions) = log_of(&[3, 10, 1, 7, 20]);
        let report = scan(&log, 0, SegmentState::new(0));
        assert_eq!(report.torn_tail, None);
        assert_eq!(report.valid_bytes, log.len() as u64);
        assert_eq!(report.batches, 5);
        assert_eq!(report.state.summary.next_offset, 41);
        assert!(!report.state.index.offsets.is_empty());
        for entry in &report.state.index.offsets {
            assert!(positions.contains(&u64::from(entry.position)));
        }
    }

    #[test]
    fn scan_cuts_a_torn_tail_at_every_byte() {
        let (log, positions) = log_of(&[3, 4, 5]);
        let last = positions[2] as usize;
        for cut in last..log.len() {
            let report = scan(&log[..cut], 0, SegmentState::new(0));
            assert_eq!(report.valid_bytes, last as u64, "cut at {cut}");
            assert_eq!(report.state.summary.next_offset, 7);
            assert_eq!(report.torn_tail.is_some(), cut > last);
        }
    }

    #[test]
    fn scan_reports_a_bad_batch_followed_by_a_good_one_as_corruption() {
        let (mut log, positions) = log_of(&[3, 4, 5]);
        log[positions[1] as usize + 100] ^= 1;
        let report = scan(&log, 0, SegmentState::new(0));
        assert_eq!(report.torn_tail, None);
        assert_eq!(report.corrupt_batches.len(), 1);
        assert_eq!(report.corrupt_batches[0].position, positions[1]);
        assert_eq!(report.state.summary.next_offset, 12);

        // The same damage in the last batch is a torn write.
        let (mut log, positions) = log_of(&[3, 4, 5]);
        log[positions[2] as usize + 100] ^= 1;
        let report = scan(&log, 0, SegmentState::new(0));
        assert_eq!(report.torn_tail.map(|t| t.position), Some(positions[2]));

        // Unless it was fsynced before: then it is corruption, and the scan goes on.
        let end = log.len() as u64;
        let report = scan_durable(&log, 0, SegmentState::new(0), end);
        assert_eq!(report.torn_tail, None);
        assert_eq!(report.corrupt_batches.len(), 1);
        assert_eq!(report.corrupt_batches[0].position, positions[2]);
        assert_eq!(report.state.summary.next_offset, 12);
        assert_eq!(report.valid_bytes, end);
        // Durable bytes that end before it vouch for nothing about it.
        let report = scan_durable(&log, 0, SegmentState::new(0), positions[2]);
        assert_eq!(report.torn_tail.map(|t| t.position), Some(positions[2]));
    }
}
