//! Reading whole stored batches: the batch form of Fetch and Subscribe hands each batch
//! out as it lies in the segment (a `Bytes` slice of the mapping, no copy), with what
//! the client must skip in it.
//!
//! # Mark and skip, not re-encode
//! A returned batch may hold records the reader must not deliver: records before the
//! requested offset (the batch starts earlier), records a filter refuses, and expired
//! records. The batch is never re-encoded without them (that would copy every byte and
//! recompress zstd batches, the work batch reads exist to avoid); instead:
//! - records before the start: [`StoredBatch::skip_front`] counts them (offsets in a
//!   batch are dense, so they are the first `skip_front` records);
//! - filtered records: [`StoredBatch::skip`] lists their offset deltas (a filter
//!   decodes the records of each batch it looks at anyway); a batch whose every record
//!   in range is refused is not returned at all;
//! - expired records: a batch whose every record has expired (its header's
//!   `max_expiry_ms`) is not returned; inside a returned batch the reader drops each
//!   record whose expiry is at or before the read's `now_ms`. Marking them here would
//!   mean walking (and for zstd decompressing) every batch on every read, while each
//!   record carries its own expiry: the client's check against the broker's clock is
//!   exact and free.

use bytes::Bytes;

use super::{ScannedBatch, Segment};
use crate::batch::RecordIter;
use crate::error::{Error, Result};
use crate::filter::{Filter, Filtered, Verdict};
use crate::limits::{FILTER_SCAN_BYTES_MAX, FILTER_SCAN_RECORDS_MAX};

/// A stored batch as a batch read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The whole batch, header included, as stored (a slice of the segment's mapping).
    pub bytes: Bytes,
    pub base_offset: u64,
    pub record_count: u32,
    /// Records at the front below the read's start: the reader skips them.
    pub skip_front: u32,
    /// Offset deltas (record offset minus `base_offset`) of records the filter
    /// refused, ascending: the reader skips them.
    pub skip: Vec<u32>,
}

impl StoredBatch {
    /// Records the reader is to deliver (expired ones aside).
    pub fn delivered(&self) -> u32 {
        self.record_count
            .saturating_sub(self.skip_front)
            .saturating_sub(self.skip.len() as u32)
    }
}

/// How much a batch read may return: whole batches, the first always, the next only
/// while `max_records` (records delivered) and `max_bytes` (batch bytes) last.
#[derive(Debug)]
pub struct BatchBudget<'f> {
    records_left: u64,
    bytes_left: u64,
    returned_any: bool,
    /// A batch was refused (over the budget) or the filter's scan limits were reached.
    pub(crate) stopped: bool,
    filter: Option<&'f Filter>,
    skips_left: u32,
    skip_bytes_left: u64,
    filtered: Filtered,
}

impl<'f> BatchBudget<'f> {
    pub fn new(max_records: u32, max_bytes: u64, filter: Option<&'f Filter>) -> Self {
        BatchBudget {
            records_left: u64::from(max_records),
            bytes_left: max_bytes,
            returned_any: false,
            stopped: false,
            filter,
            skips_left: FILTER_SCAN_RECORDS_MAX,
            skip_bytes_left: FILTER_SCAN_BYTES_MAX,
            filtered: Filtered::default(),
        }
    }

    pub fn filtered(&self) -> Filtered {
        self.filtered
    }

    pub fn exhausted(&self) -> bool {
        self.stopped || self.records_left == 0 || (self.returned_any && self.bytes_left == 0)
    }

    fn admit(&mut self, records: u32, bytes: u64) -> bool {
        if self.exhausted()
            || (self.returned_any
                && (bytes > self.bytes_left || u64::from(records) > self.records_left))
        {
            self.stopped = true;
            return false;
        }
        self.records_left = self.records_left.saturating_sub(u64::from(records));
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
        self.returned_any = true;
        true
    }

    /// Counts a refused record against the filter's scan limits.
    fn skipped(&mut self, verdict: Verdict, bytes: u64) {
        self.filtered.skipped += 1;
        if verdict == Verdict::NotJson {
            self.filtered.not_json += 1;
        }
        self.skips_left = self.skips_left.saturating_sub(1);
        self.skip_bytes_left = self.skip_bytes_left.saturating_sub(bytes);
    }

    fn scan_limit_reached(&self) -> bool {
        self.skips_left == 0 || self.skip_bytes_left == 0
    }
}

impl Segment {
    /// Reads whole batches holding offsets in `[from, end_offset)` from bytes `[..,
    /// end_position)` into `out`, until the budget is spent; see the module docs for
    /// what is skipped and how. Returns the offset the next read starts from. Damage
    /// after batches were returned ends the read before it (as [`Segment::read`]).
    pub fn read_batches(
        &self,
        from: u64,
        end_position: u64,
        end_offset: u64,
        now_ms: i64,
        budget: &mut BatchBudget<'_>,
        out: &mut Vec<StoredBatch>,
    ) -> Result<u64> {
        let mut next = from;
        let scanned = (|| -> Result<()> {
            let mut scan = self.scan(from, end_position, end_offset, now_ms)?;
            while !budget.exhausted() {
                let Some(ScannedBatch { at, header, bytes }) = scan.next_batch(&mut next)? else {
                    break;
                };
                let length = bytes.len();
                let start = from.max(header.base_offset);
                let dense = header.last_offset_delta == header.record_count - 1;
                let skip_front = if dense {
                    (start - header.base_offset) as u32
                } else {
                    0
                };
                let mut skip = Vec::new();
                if budget.filter.is_some() || !dense {
                    // Decode to evaluate the filter (or, in a batch with offset gaps,
                    // to mark the records before the start one by one).
                    let records = RecordIter::new(&bytes, &header)
                        .map_err(|e| Error::corrupt(self.log_path(), at, e.to_string()))?;
                    let (mut in_range, mut refused) = (0u32, 0u32);
                    for record in records {
                        let record = record
                            .map_err(|e| Error::corrupt(self.log_path(), at, e.to_string()))?;
                        let delta = (record.offset - header.base_offset) as u32;
                        if record.offset < start {
                            // Dense batches count these in skip_front.
                            if !dense {
                                skip.push(delta);
                            }
                            continue;
                        }
                        in_range += 1;
                        if let Some(filter) = budget.filter {
                            let verdict = filter.evaluate_record(&record);
                            if verdict != Verdict::Match {
                                budget.skipped(verdict, record.payload_bytes());
                                skip.push(delta);
                                refused += 1;
                            }
                        }
                    }
                    if refused > 0 && refused == in_range {
                        // Every record in range refused: the batch is not returned.
                        next = header.next_offset();
                        if budget.scan_limit_reached() {
                            budget.stopped = true;
                        }
                        continue;
                    }
                }
                let batch = StoredBatch {
                    bytes,
                    base_offset: header.base_offset,
                    record_count: header.record_count,
                    skip_front,
                    skip,
                };
                if !budget.admit(batch.delivered(), length as u64) {
                    return Ok(());
                }
                next = header.next_offset();
                out.push(batch);
                if budget.scan_limit_reached() {
                    // The filter's scan limits: over after this batch.
                    budget.stopped = true;
                }
            }
            Ok(())
        })();
        match scanned {
            Err(Error::Corrupt { .. }) if budget.returned_any => {
                budget.stopped = true;
                Ok(next)
            }
            Err(error) => Err(error),
            Ok(()) => Ok(next),
        }
    }
}
