//! The read side of a partition: messages and whole batches from an offset (one loop
//! over segments for both, [`Partition::read_segments`]), the record a dedup check
//! needs, the first offset at a time, and the newest message with an id. Readers never
//! take the writer's lock: they snapshot the visible end and the segment list, and
//! read from the mappings.

use crate::batch::Record;
use crate::error::{Error, Result};
use crate::filter::{Filter, Filtered};
use crate::idindex;
use crate::limits::READ_RESERVE_RECORDS_MAX;
use crate::progress::LogEnd;
use crate::segment::{BatchBudget, ReadBudget, Segment, StoredBatch};

use super::Partition;

/// Records returned by a read, and where the log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// Where the next read should start (past any expired records skipped).
    pub next_offset: u64,
    pub log_start: u64,
    /// The visible end (high watermark).
    pub end_offset: u64,
    /// What a filter skipped ([`Partition::read_filtered`]; zero otherwise).
    pub filtered: Filtered,
}

/// Whole batches returned by [`Partition::read_batches`], and where the log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReadResult {
    pub batches: Vec<StoredBatch>,
    /// Where the next read should start.
    pub next_offset: u64,
    pub log_start: u64,
    /// The visible end (high watermark).
    pub end_offset: u64,
    /// The read's clock: a record of a returned batch whose expiry is at or before it
    /// has expired, and the reader drops it.
    pub now_ms: i64,
    /// What the filter refused.
    pub filtered: Filtered,
}

impl Partition {
    /// Reads up to `max_records` records / about `max_bytes` bytes from `from`.
    /// `from == end` returns nothing; outside `[log_start, end]` is `OffsetOutOfRange`.
    ///
    /// The read stops at the first record over the budget (the first record is
    /// returned even when it alone is over `max_bytes`), and `next_offset` is then that
    /// record's offset: following `next_offset` yields every live record exactly once.
    /// A partition whose topic was deleted fails with [`Error::TopicDeleted`].
    pub fn read(&self, from: u64, max_records: u32, max_bytes: u64) -> Result<ReadResult> {
        self.read_to(from, max_records, max_bytes, false, None)
    }

    /// [`Partition::read`] of the records `filter` matches (all with `None`). Records it
    /// skips are passed over without counting against the budget, and
    /// [`ReadResult::filtered`] counts them; after a scan limit
    /// ([`crate::limits::FILTER_SCAN_RECORDS_MAX`], `FILTER_SCAN_BYTES_MAX`) the read
    /// stops, possibly with no record, and `next_offset` is past everything it looked at.
    /// Following `next_offset` yields every live matching record exactly once.
    pub fn read_filtered(
        &self,
        from: u64,
        max_records: u32,
        max_bytes: u64,
        filter: Option<&Filter>,
    ) -> Result<ReadResult> {
        self.read_to(from, max_records, max_bytes, false, filter)
    }

    /// Whether a read from `offset` would find it in the log: `OffsetOutOfRange`
    /// outside `[log_start, end]`, as the read would fail (so a reader can apply its
    /// reset policy before it reads), and the read's error for a deleted or
    /// unavailable partition.
    pub fn check_offset(&self, offset: u64) -> Result<()> {
        self.read_snapshot(offset, false).map(|_| ())
    }

    /// The record at `offset` if it is written, durable or not yet (what a reader of an
    /// `fsync = always` topic cannot see yet): for the dedup window, which must find a
    /// duplicate's original as soon as its append returned. `None` when there is no
    /// such record (out of range, expired, or not yet written).
    pub(crate) fn written_record(&self, offset: u64) -> Result<Option<Record>> {
        match self.read_to(offset, 1, u64::MAX, true, None) {
            Ok(read) => Ok(read.records.into_iter().find(|r| r.offset == offset)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// [`Partition::read`] up to the visible end, or up to the written end when
    /// `written` (see [`Partition::written_record`]).
    fn read_to(
        &self,
        from: u64,
        max_records: u32,
        max_bytes: u64,
        written: bool,
        filter: Option<&Filter>,
    ) -> Result<ReadResult> {
        let (visible, log_start) = self.read_snapshot(from, written)?;
        // Room for what the read can return without a filter, so the vector of
        // records is not regrown (and moved) as it fills; bounded by what is there.
        let expected = match filter {
            None => (visible.offset - from.min(visible.offset)).min(u64::from(max_records)),
            Some(_) => 0,
        };
        let mut result = ReadResult {
            records: Vec::with_capacity(expected.min(READ_RESERVE_RECORDS_MAX) as usize),
            next_offset: from,
            log_start,
            end_offset: visible.offset,
            filtered: Filtered::default(),
        };
        if from == visible.offset || max_records == 0 {
            return Ok(result);
        }
        let now_ms = self.clock.now_ms();
        let mut budget = ReadBudget::new(max_records, max_bytes).with_filter(filter);
        let cursor = self.read_segments(
            from,
            visible,
            &mut budget,
            ReadBudget::exhausted,
            |segment, cursor, end_position, budget| {
                segment.read(
                    cursor,
                    end_position,
                    visible.offset,
                    now_ms,
                    budget,
                    &self.resume,
                    &mut result.records,
                )
            },
        )?;
        result.filtered = budget.filtered();
        result.next_offset = if budget.exhausted() {
            cursor
        } else {
            visible.offset
        };
        Ok(result)
    }

    /// Reads whole stored batches from `from`: the batch form of [`Partition::read`]
    /// (see [`crate::segment::StoredBatch`] for what the reader skips in each, and
    /// why batches are marked rather than re-encoded). `max_records` counts records
    /// delivered, `max_bytes` batch bytes; the first batch is returned whatever its
    /// size. `next_offset` follows the last batch returned (or skipped: expired, or
    /// every record refused by `filter`).
    pub fn read_batches(
        &self,
        from: u64,
        max_records: u32,
        max_bytes: u64,
        filter: Option<&Filter>,
    ) -> Result<BatchReadResult> {
        let (visible, log_start) = self.read_snapshot(from, false)?;
        let now_ms = self.clock.now_ms();
        let mut result = BatchReadResult {
            batches: Vec::new(),
            next_offset: from,
            log_start,
            end_offset: visible.offset,
            now_ms,
            filtered: Filtered::default(),
        };
        if from == visible.offset || max_records == 0 {
            return Ok(result);
        }
        let mut budget = BatchBudget::new(max_records, max_bytes, filter);
        let cursor = self.read_segments(
            from,
            visible,
            &mut budget,
            BatchBudget::exhausted,
            |segment, cursor, end_position, budget| {
                segment.read_batches(
                    cursor,
                    end_position,
                    visible.offset,
                    now_ms,
                    budget,
                    &mut result.batches,
                )
            },
        )?;
        result.filtered = budget.filtered();
        result.next_offset = if budget.exhausted() {
            cursor
        } else {
            visible.offset
        };
        Ok(result)
    }

    /// Where a read from `from` may go: the end readers see (the written end when
    /// `written`) and the log start, taken together under the progress lock. A deleted
    /// or unavailable partition fails; `from` outside `[log_start, end]` is
    /// `OffsetOutOfRange`.
    fn read_snapshot(&self, from: u64, written: bool) -> Result<(LogEnd, u64)> {
        let (end, log_start) = {
            let state = self.progress.lock();
            if state.deleted || state.unavailable.is_some() {
                return Err(self.progress.closed_error_in(&state));
            }
            let end = if written {
                state.written
            } else {
                state.visible()
            };
            (end, state.log_start)
        };
        if from < log_start || from > end.offset {
            return Err(Error::OffsetOutOfRange {
                partition: self.name.clone(),
                requested: from,
                log_start,
                end: end.offset,
            });
        }
        Ok((end, log_start))
    }

    /// The one loop over segments for message and batch reads: from the segment holding
    /// `from` up to `visible`, each read by `read(segment, cursor, end position,
    /// budget)` (which returns where it stopped) until `exhausted(budget)`. Returns the
    /// offset the reads stopped at. Retention may delete segments while this runs: the
    /// snapshot is the authority, so a read from before its oldest segment, or one whose
    /// segment went away, is `OffsetOutOfRange`, never a silent skip to the next segment.
    fn read_segments<B>(
        &self,
        from: u64,
        visible: LogEnd,
        budget: &mut B,
        exhausted: fn(&B) -> bool,
        mut read: impl FnMut(&Segment, u64, u64, &mut B) -> Result<u64>,
    ) -> Result<u64> {
        let out_of_range = |requested, log_start| Error::OffsetOutOfRange {
            partition: self.name.clone(),
            requested,
            log_start,
            end: visible.offset,
        };
        let segments = self.segments();
        if let Some(oldest) = segments.first()
            && from < oldest.base_offset
        {
            return Err(out_of_range(from, oldest.base_offset));
        }
        let first = segments
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let mut cursor = from;
        for segment in &segments[first..] {
            if segment.base_offset >= visible.offset || exhausted(budget) {
                break;
            }
            cursor = cursor.max(segment.base_offset);
            let end_position = readable_end(segment, visible);
            let outcome = read(segment, cursor, end_position, budget);
            self.mapped.note_read(segment);
            cursor = match outcome {
                Ok(next) => next,
                // Retention removed the segment after the snapshot was taken.
                Err(Error::Io { .. }) if self.log_start_now() > cursor => {
                    return Err(out_of_range(cursor, self.log_start_now()));
                }
                Err(error) => return Err(error),
            };
        }
        Ok(cursor)
    }

    /// About how many log bytes the visible messages from `offset` on take (exact to
    /// within one index interval, a few KiB): for backlog limits, without reading the log.
    pub fn bytes_from(&self, offset: u64) -> Result<u64> {
        let visible = self.progress.lock().visible();
        let mut bytes = 0;
        for segment in self.segments() {
            let summary = segment.summary();
            let end = readable_end(&segment, visible);
            if summary.next_offset <= offset && segment.base_offset != visible.segment_base {
                continue;
            }
            let from = if offset > segment.base_offset {
                segment.position_near(offset)?
            } else {
                0
            };
            bytes += end.saturating_sub(from);
        }
        Ok(bytes)
    }

    /// The first offset whose record timestamp is >= `timestamp_ms` (Kafka's
    /// `offsetsForTimes`), or `None` when every visible record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let visible = {
            let state = self.progress.lock();
            if let Some(error) = &state.unavailable {
                return Err(error.clone());
            }
            state.visible()
        };
        for segment in self.segments() {
            if segment.base_offset >= visible.offset {
                break;
            }
            let summary = segment.summary();
            if summary.max_timestamp_ms < timestamp_ms {
                continue;
            }
            let end_position = readable_end(&segment, visible);
            let found = segment.offset_for_timestamp(timestamp_ms, end_position);
            self.mapped.note_read(&segment);
            if let Some(offset) = found? {
                return Ok((offset < visible.offset).then_some(offset));
            }
        }
        Ok(None)
    }

    /// The newest message in this partition whose id is `id`, among those readers can
    /// see (below the visible end, at or after the log start) that have not expired;
    /// `None` when there is none. Several messages may carry one id (a topic without a
    /// dedup window stores a retried publish again): the one with the highest offset
    /// is returned.
    ///
    /// Segments are searched newest first: the active one's ids from memory, a sealed
    /// one's from its `.idindex` (mapped, validated, and rebuilt from the log when
    /// missing or invalid), and each candidate record is read and its id compared, so
    /// the answer is exact. Blocking: it may read and write files.
    ///
    /// Fails with `InvalidArgument` for an empty id or one over
    /// `MESSAGE_ID_BYTES_MAX` bytes, and with `Corrupt` when nothing was found but a
    /// segment holds a batch whose ids could not be read (its CRC fails).
    pub fn find_by_id(&self, id: &[u8]) -> Result<Option<Record>> {
        crate::msgid::check(id)?;
        let (visible, log_start) = {
            let state = self.progress.lock();
            if state.deleted || state.unavailable.is_some() {
                return Err(self.progress.closed_error_in(&state));
            }
            (state.visible(), state.log_start)
        };
        let hash = idindex::hash_id(id);
        let now_ms = self.clock.now_ms();
        let mut unreadable: Option<Error> = None;
        for segment in self.segments().iter().rev() {
            if segment.base_offset >= visible.offset {
                continue;
            }
            let end_position = readable_end(segment, visible);
            let found = segment.find_by_id(id, hash, visible.offset, end_position, now_ms);
            self.mapped.note_read(segment);
            let found = match found {
                Ok(found) => found,
                // Retention removed the segment after the snapshot was taken: its
                // messages are gone, as if it had gone before.
                Err(Error::Io { .. }) if self.log_start_now() > segment.base_offset => continue,
                Err(error) => return Err(error),
            };
            if let Some(record) = found.record {
                if record.offset >= log_start.max(self.log_start_now()) {
                    return Ok(Some(record));
                }
                continue;
            }
            if found.incomplete && unreadable.is_none() {
                unreadable = Some(Error::corrupt(
                    segment.log_path(),
                    0,
                    format!(
                        "message id {} was not found, but a batch of this segment fails its CRC, so ids in it cannot be read",
                        crate::msgid::display(id)
                    ),
                ));
            }
        }
        match unreadable {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }
}

/// Where readers of `segment` stop: the visible position in the segment being
/// written, the whole log of a sealed one.
fn readable_end(segment: &Segment, visible: LogEnd) -> u64 {
    if segment.base_offset == visible.segment_base {
        visible.position
    } else {
        segment.summary().log_bytes
    }
}
