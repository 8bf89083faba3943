//! Record batches built by clients: the validation a batch published in the on-disk
//! format (`storage/FORMAT.md`) passes before the log appends its bytes as they came.
//!
//! [`validate_batch`] is a pure function over `&[u8]` (the fuzz target
//! `client_batch` calls it): it walks the batch without building [`crate::Record`]s
//! and returns a typed [`BatchError`] naming the first thing wrong, or a
//! [`CheckedBatch`] with what the appender needs (the header, where the ids are, for
//! the id index and the dedup window, the payload bytes for metrics).
//!
//! What a client batch must be, beyond what the format itself demands (and what
//! [`crate::batch::decode_batch`] checks):
//! - exactly the bytes of one batch (`batch_length` equals the bytes received);
//! - offsets dense: record `i` has offset delta `i` (`last_offset_delta ==
//!   record_count - 1`), since the log gives a batch `record_count` offsets;
//! - the header's summary true to its records: `first_timestamp_ms` is record 0's
//!   timestamp, `max_timestamp_ms` the largest, `max_expiry_ms` the latest expiry
//!   (`i64::MAX` when a record never expires). Retention, TTL and the time index
//!   believe these fields without reading records, so a lie would delete or keep data
//!   wrongly;
//! - timestamps >= 0 (as the per-message Publish demands);
//! - no record already expired at the append time, and on a topic with a default TTL
//!   every record carries an expiry (the client applies the default: the broker cannot
//!   add a field to a record without re-encoding it);
//! - ids of 1 to 128 bytes, priorities below the topic's levels, UTF-8 header keys, at
//!   most 1024 headers, and id + key + value + headers of each record within the
//!   topic's `max_message_bytes`;
//! - the base offset is ignored (the log writes its own; it is outside the CRC).
//!
//! A batch with relative times ([`BatchRules::relative_times`], the request's
//! `relative_times`) is moved to the append time first: the log stores it with record
//! 0's timestamp at the append time, every record's timestamp, expiry and deliver-at
//! keeping their distance from it. Records hold their times as deltas from
//! `first_timestamp_ms`, so only the header's `first_timestamp_ms`,
//! `max_timestamp_ms` and `max_expiry_ms` (`i64::MAX` stays) and the CRC change: the
//! [`CheckedBatch`]'s header is the moved one, which the appender writes over the
//! client's (as it writes the base offset), and the checks above run on the moved
//! times. A move that takes a time past the range of an `i64` is refused
//! ([`BatchError::Unmovable`]).
//!
//! A zstd batch is decompressed into a buffer of exactly `uncompressed_length` bytes
//! (at most [`BATCH_BYTES_MAX`]) to be walked; the stored bytes stay the client's.

use crate::batch::{
    self, BatchHeader, Compression, FormatError, NEVER_EXPIRES, RECORD_ATTRIBUTES_KNOWN,
    RECORD_HAS_DELIVER_AT, RECORD_HAS_EXPIRY, RECORD_HAS_ID, RECORD_HAS_KEY, RECORD_HAS_PRIORITY,
    RECORD_ID_FOLLOWS,
};
use crate::limits::{BATCH_BYTES_MAX, MESSAGE_ID_BYTES_MAX, RECORD_HEADERS_MAX};

/// The topic's rules a client batch is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BatchRules {
    /// The append time: no record may have expired by then.
    pub now_ms: i64,
    /// Largest id + key + value + headers of one record.
    pub max_message_bytes: u64,
    /// The topic's priority levels (a record's priority must be below it; 0 and 1
    /// allow only 0).
    pub priority_levels: u8,
    /// The topic has a default TTL: every record must carry an expiry.
    pub expiry_required: bool,
    /// The batch's times are relative to its first timestamp: move the batch so that
    /// record 0's timestamp is `now_ms` (see the module docs).
    pub relative_times: bool,
}

/// A batch a client built, as a publish hands it to [`crate::Topic`]: the partition,
/// the bytes, and whether its times are relative (moved to the append time, see the
/// module docs).
#[derive(Debug, Clone)]
pub struct ClientBatch {
    pub partition: u32,
    pub bytes: bytes::Bytes,
    pub relative_times: bool,
}

impl ClientBatch {
    /// A batch whose times are stored as they came (the client's clock).
    pub fn new(partition: u32, bytes: bytes::Bytes) -> ClientBatch {
        ClientBatch {
            partition,
            bytes,
            relative_times: false,
        }
    }

    /// The batch with relative times: moved to the append time.
    pub fn relative(partition: u32, bytes: bytes::Bytes) -> ClientBatch {
        ClientBatch {
            relative_times: true,
            ..ClientBatch::new(partition, bytes)
        }
    }
}

/// Why a client batch was refused. Each variant is one class of malformed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a batch header, or than the header's `batch_length`.
    Truncated { needed: u64, received: u64 },
    /// More bytes than the header's `batch_length`: one batch per request.
    TrailingBytes { batch_length: u64, received: u64 },
    /// The header contradicts the format (version, codec, lengths, counts).
    Header(String),
    /// The CRC does not match the bytes.
    Crc { stored: u32, computed: u32 },
    /// Offsets are not dense: `last_offset_delta` must be `record_count - 1`.
    SparseOffsets {
        last_offset_delta: u32,
        record_count: u32,
    },
    /// The zstd records section does not decode to `uncompressed_length` bytes.
    Compression(String),
    /// Record `index` is malformed (`reason` says how).
    Record { index: u32, reason: String },
    /// Record `index` is over the topic's `max_message_bytes`.
    RecordTooLarge { index: u32, size: u64, limit: u64 },
    /// Record `index` had expired at the append time.
    Expired {
        index: u32,
        expires_at_ms: i64,
        now_ms: i64,
    },
    /// Record `index` carries no expiry on a topic with a default TTL.
    ExpiryMissing { index: u32 },
    /// The header's summary fields disagree with the records.
    Summary(String),
    /// Bytes follow the last record in the records section.
    RecordsTrailing,
    /// Moving a batch with relative times to the append time takes one of its times
    /// past the range of an `i64` (`what` names it).
    Unmovable {
        what: &'static str,
        value_ms: i64,
        now_ms: i64,
        first_timestamp_ms: i64,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Truncated { needed, received } => write!(
                f,
                "the batch is truncated: {received} bytes received, {needed} needed"
            ),
            BatchError::TrailingBytes {
                batch_length,
                received,
            } => write!(
                f,
                "{received} bytes received but the batch header says {batch_length}: send exactly one batch"
            ),
            BatchError::Header(reason) => write!(f, "bad batch header: {reason}"),
            BatchError::Crc { stored, computed } => write!(
                f,
                "CRC mismatch: the header says {stored:#010x}, the bytes give {computed:#010x} (CRC-32 of bytes 16.. of the batch)"
            ),
            BatchError::SparseOffsets {
                last_offset_delta,
                record_count,
            } => write!(
                f,
                "last_offset_delta {last_offset_delta} with {record_count} records: offsets in a published batch must be dense (last_offset_delta = record_count - 1)"
            ),
            BatchError::Compression(reason) => write!(f, "bad zstd records section: {reason}"),
            BatchError::Record { index, reason } => write!(f, "record {index}: {reason}"),
            BatchError::RecordTooLarge { index, size, limit } => write!(
                f,
                "record {index} has {size} bytes of id, key, value and headers, over the topic's max_message_bytes {limit}"
            ),
            BatchError::Expired {
                index,
                expires_at_ms,
                now_ms,
            } => write!(
                f,
                "record {index} expires at {expires_at_ms} ms, not after the append time {now_ms} ms: it would never be delivered"
            ),
            BatchError::ExpiryMissing { index } => write!(
                f,
                "record {index} has no expiry but the topic has a default TTL: a batch's records must carry their expiry (the default_ttl_ms of Admin.DescribeTopic, from now)"
            ),
            BatchError::Summary(reason) => {
                write!(f, "the batch header disagrees with its records: {reason}")
            }
            BatchError::RecordsTrailing => {
                f.write_str("bytes follow the last record of the records section")
            }
            BatchError::Unmovable {
                what,
                value_ms,
                now_ms,
                first_timestamp_ms,
            } => write!(
                f,
                "relative_times: moving the batch from first_timestamp_ms {first_timestamp_ms} to the append time {now_ms} ms takes its {what} {value_ms} ms past the range of an i64; send times within the range, or without relative_times"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

/// A record's id in a checked batch: where it lies in the records section (see
/// [`CheckedBatch::id`]), not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedId {
    /// The record's position in the batch (its offset delta).
    pub index: u32,
    place: IdPlace,
}

/// Where a checked id is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdPlace {
    /// These bytes of the records section.
    Stored(std::ops::Range<usize>),
    /// Not stored: the previous record's plus one (record attribute bit 5).
    Follows([u8; 16]),
}

/// A batch [`validate_batch`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBatch {
    pub header: BatchHeader,
    /// The ids of the records that carry one, in record order.
    pub ids: Vec<CheckedId>,
    /// Id + key + value + header bytes of all records: what metrics count.
    pub payload_bytes: u64,
    /// Records due at the append (no deliver-at time, or one not after it) and their
    /// payload bytes: what the batch adds to its queues' ready backlog now (the
    /// backpressure caps, [`crate::queue::admin::admit`]); the others wait as delayed.
    pub ready_records: u32,
    pub ready_bytes: u64,
    /// The batch was moved to the append time ([`BatchRules::relative_times`]):
    /// `header`'s times and CRC differ from the bytes', and are what the log writes.
    pub moved: bool,
    /// The records section decompressed (a zstd batch's, when it has ids), which the
    /// ids lie in; `None`: they lie in the batch's own bytes.
    plain: Option<Vec<u8>>,
}

impl CheckedBatch {
    /// Records that carry no id.
    pub fn records_without_id(&self) -> u32 {
        self.header.record_count - self.ids.len() as u32
    }

    /// The bytes of `id`, one of [`CheckedBatch::ids`], in `bytes`: the batch this
    /// checked. Empty if `bytes` is not that batch.
    pub fn id<'a>(&'a self, bytes: &'a [u8], id: &'a CheckedId) -> &'a [u8] {
        let range = match &id.place {
            IdPlace::Stored(range) => range.clone(),
            IdPlace::Follows(id) => return id,
        };
        let section = match &self.plain {
            Some(plain) => plain.as_slice(),
            None => bytes.get(batch::HEADER_BYTES..).unwrap_or_default(),
        };
        section.get(range).unwrap_or_default()
    }

    /// A copy of `bytes`, the batch this checked, as the log stores it: a moved
    /// batch's CRC and times written in (the base offset stays `bytes`'; the log writes
    /// its own). The append path writes only the changed head: this is for tests and
    /// tools.
    pub fn as_stored(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stored = bytes.to_vec();
        if self.moved {
            batch::set_times(&mut stored, &self.header);
        }
        stored
    }

    /// The ids split as the id index and the dedup window take them
    /// ([`crate::idindex::split_ids`]: runs, and the others hashed), in `bytes`, the
    /// batch this checked.
    pub fn split_ids(&self, bytes: &[u8]) -> crate::idindex::SplitIds {
        crate::idindex::split_ids(self.ids.iter().map(|id| (id.index, self.id(bytes, id))))
    }
}

fn record_error(index: u32, reason: impl Into<String>) -> BatchError {
    BatchError::Record {
        index,
        reason: reason.into(),
    }
}

/// Checks that `bytes` is exactly one valid record batch under `rules`; see the
/// module docs for every rule. Never panics; allocates at most the decompressed
/// records section (bounded by [`BATCH_BYTES_MAX`]) and the ids.
pub fn validate_batch(bytes: &[u8], rules: &BatchRules) -> Result<CheckedBatch, BatchError> {
    let received = bytes.len() as u64;
    let header = BatchHeader::parse_client(bytes).map_err(|error| match error {
        FormatError::Incomplete { needed } => BatchError::Truncated { needed, received },
        FormatError::Invalid(reason) => BatchError::Header(reason),
    })?;
    let batch_length = u64::from(header.batch_length);
    if received < batch_length {
        return Err(BatchError::Truncated {
            needed: batch_length,
            received,
        });
    }
    if received > batch_length {
        return Err(BatchError::TrailingBytes {
            batch_length,
            received,
        });
    }
    // A batch to move is hashed in three pieces around its times, so that the moved
    // batch's CRC comes from the same pass (crc32fast's `combine`).
    let pieces = rules.relative_times.then(|| CrcPieces::of(bytes));
    let computed = match &pieces {
        Some(pieces) => pieces.whole(),
        None => batch::compute_crc(bytes),
    };
    if computed != header.crc {
        return Err(BatchError::Crc {
            stored: header.crc,
            computed,
        });
    }
    if header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::SparseOffsets {
            last_offset_delta: header.last_offset_delta,
            record_count: header.record_count,
        });
    }
    let header = match &pieces {
        Some(pieces) => {
            let mut moved = move_to(&header, rules.now_ms)?;
            moved.crc = pieces.with_times(&batch::times_bytes(&moved));
            moved
        }
        None => header,
    };
    let stored = &bytes[batch::HEADER_BYTES..];
    let mut plain: Option<Vec<u8>> = None;
    let section: &[u8] = match header.compression {
        Compression::None => stored,
        Compression::Zstd => {
            let capacity = header.uncompressed_length as usize;
            debug_assert!(capacity as u64 <= BATCH_BYTES_MAX);
            let decoded = zstd::bulk::decompress(stored, capacity)
                .map_err(|e| BatchError::Compression(format!("it does not decode: {e}")))?;
            if decoded.len() != capacity {
                return Err(BatchError::Compression(format!(
                    "it decodes to {} bytes, the header says {capacity}",
                    decoded.len()
                )));
            }
            plain.insert(decoded)
        }
    };
    let mut walk = Walk {
        bytes: section,
        at: 0,
        follower: None,
    };
    let mut ids = Vec::new();
    let mut tally = Tally {
        payload_bytes: 0,
        ready_records: 0,
        ready_bytes: 0,
        max_timestamp: i64::MIN,
        max_expiry: i64::MIN,
    };
    let first = header.first_timestamp_ms;
    let count = header.record_count;
    for index in 0..count {
        // Each branch inlines `add`, so the shortcut's record (no expiry, deliver-at or
        // id) is counted without the tests those need.
        match walk.plain_record(index, first) {
            Some(Short::Plain(fields)) => {
                tally.add(index, fields, &header, rules, &walk, &mut ids)?
            }
            Some(Short::Follows(fields)) => {
                tally.add(index, fields, &header, rules, &walk, &mut ids)?
            }
            None => {
                let fields = walk
                    .record(index, first, rules)
                    .map_err(|reason| record_error(index, reason))?;
                tally.add(index, fields, &header, rules, &walk, &mut ids)?;
            }
        }
    }
    let Tally {
        payload_bytes,
        ready_records,
        ready_bytes,
        max_timestamp,
        max_expiry,
    } = tally;
    if walk.at != section.len() {
        return Err(BatchError::RecordsTrailing);
    }
    if header.max_timestamp_ms != max_timestamp {
        return Err(BatchError::Summary(format!(
            "max_timestamp_ms is {} but the records' largest timestamp is {max_timestamp}",
            header.max_timestamp_ms
        )));
    }
    if header.max_expiry_ms != max_expiry {
        return Err(BatchError::Summary(format!(
            "max_expiry_ms is {} but the records' latest expiry is {max_expiry} ({} means some record never expires)",
            header.max_expiry_ms, NEVER_EXPIRES
        )));
    }
    // The ids lie in the decompressed section: keep it while they are needed.
    let plain = plain.filter(|_| !ids.is_empty());
    Ok(CheckedBatch {
        header,
        ids,
        payload_bytes,
        ready_records,
        ready_bytes,
        moved: pieces.is_some(),
        plain,
    })
}

/// What [`validate_batch`] sums up over the records as it walks them (the ids apart, so
/// these stay in registers).
struct Tally {
    payload_bytes: u64,
    ready_records: u32,
    ready_bytes: u64,
    max_timestamp: i64,
    max_expiry: i64,
}

impl Tally {
    /// Checks record `index`'s `fields` against the batch's rules and counts it; `walk`
    /// stands just past the record.
    #[inline(always)]
    fn add(
        &mut self,
        index: u32,
        fields: Fields,
        header: &BatchHeader,
        rules: &BatchRules,
        walk: &Walk<'_>,
        ids: &mut Vec<CheckedId>,
    ) -> Result<(), BatchError> {
        let first = header.first_timestamp_ms;
        if index == 0 && fields.timestamp_ms != first {
            return Err(BatchError::Summary(format!(
                "first_timestamp_ms is {first} but record 0's timestamp is {}",
                fields.timestamp_ms
            )));
        }
        if fields.timestamp_ms < 0 {
            return Err(record_error(
                index,
                format!(
                    "timestamp {} ms is negative; timestamps are ms since the Unix epoch",
                    fields.timestamp_ms
                ),
            ));
        }
        self.max_timestamp = self.max_timestamp.max(fields.timestamp_ms);
        match fields.expires_at_ms {
            Some(at) if at <= rules.now_ms => {
                return Err(BatchError::Expired {
                    index,
                    expires_at_ms: at,
                    now_ms: rules.now_ms,
                });
            }
            Some(at) => self.max_expiry = self.max_expiry.max(at),
            None if rules.expiry_required => return Err(BatchError::ExpiryMissing { index }),
            None => self.max_expiry = NEVER_EXPIRES,
        }
        if fields.payload_bytes > rules.max_message_bytes {
            return Err(BatchError::RecordTooLarge {
                index,
                size: fields.payload_bytes,
                limit: rules.max_message_bytes,
            });
        }
        self.payload_bytes += fields.payload_bytes;
        if fields.deliver_at_ms.is_none_or(|at| at <= rules.now_ms) {
            self.ready_records += 1;
            self.ready_bytes += fields.payload_bytes;
        }
        if let Some(place) = fields.id {
            if ids.is_empty() {
                // Room for an id in every record left, bounded by the bytes left (a
                // record with an id takes at least 7).
                let left = (header.record_count - index) as usize;
                ids.reserve(left.min((walk.bytes.len() - walk.at) / 7 + 1));
            }
            ids.push(CheckedId { index, place });
        }
        Ok(())
    }
}

/// A record's time: the batch's first timestamp (the append time, for a batch moved by
/// relative_times) plus the record's zigzag `delta`; refused past the range of an
/// `i64` rather than wrapped (a wrapped deliver-at time would be in the past).
#[inline(always)]
fn time_at(first: i64, delta: u64, what: &str) -> Result<i64, String> {
    let delta = batch::unzigzag(delta);
    first.checked_add(delta).ok_or_else(|| {
        format!(
            "its {what} is first_timestamp_ms {first} (the append time with relative_times) plus {delta} ms, past the range of an i64; send a time within the range"
        )
    })
}

/// `header` moved by `now_ms - first_timestamp_ms`: record 0's timestamp becomes
/// `now_ms` (its CRC is the caller's to redo). Every record's time is a delta from
/// `first_timestamp_ms`, so the header's times are all that change.
fn move_to(header: &BatchHeader, now_ms: i64) -> Result<BatchHeader, BatchError> {
    let first = header.first_timestamp_ms;
    let unmovable = |what, value_ms| BatchError::Unmovable {
        what,
        value_ms,
        now_ms,
        first_timestamp_ms: first,
    };
    let shift = now_ms
        .checked_sub(first)
        .ok_or_else(|| unmovable("first_timestamp_ms", first))?;
    let max_timestamp_ms = header
        .max_timestamp_ms
        .checked_add(shift)
        .ok_or_else(|| unmovable("max_timestamp_ms", header.max_timestamp_ms))?;
    let max_expiry_ms = match header.max_expiry_ms {
        NEVER_EXPIRES => NEVER_EXPIRES,
        // A moved expiry may not become i64::MAX, which means "never".
        at => at
            .checked_add(shift)
            .filter(|&moved| moved != NEVER_EXPIRES)
            .ok_or_else(|| unmovable("max_expiry_ms", at))?,
    };
    Ok(BatchHeader {
        first_timestamp_ms: now_ms,
        max_timestamp_ms,
        max_expiry_ms,
        ..*header
    })
}

/// A batch's CRC in three pieces: the bytes it covers before the header's times, the
/// times, and the bytes after them; so the CRC of the same batch with other times
/// costs a hash of 24 bytes, not of the batch.
struct CrcPieces {
    before: crc32fast::Hasher,
    times: crc32fast::Hasher,
    after: crc32fast::Hasher,
}

impl CrcPieces {
    /// The pieces of `bytes`, a batch at least a header long (shorter: empty pieces).
    fn of(bytes: &[u8]) -> CrcPieces {
        let piece = |range: std::ops::Range<usize>| {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(bytes.get(range).unwrap_or_default());
            hasher
        };
        let mut after = crc32fast::Hasher::new();
        after.update(bytes.get(batch::TIMES_END..).unwrap_or_default());
        CrcPieces {
            before: piece(batch::CRC_COVERS_FROM..batch::TIMES_AT),
            times: piece(batch::TIMES_AT..batch::TIMES_END),
            after,
        }
    }

    /// The CRC of the batch as it is.
    fn whole(&self) -> u32 {
        let mut whole = self.before.clone();
        whole.combine(&self.times);
        whole.combine(&self.after);
        whole.finalize()
    }

    /// The CRC of the batch with `times` in place of its header's times.
    fn with_times(&self, times: &[u8; batch::TIMES_END - batch::TIMES_AT]) -> u32 {
        let mut whole = self.before.clone();
        let mut moved = crc32fast::Hasher::new();
        moved.update(times);
        whole.combine(&moved);
        whole.combine(&self.after);
        whole.finalize()
    }
}

#[cold]
fn bad_varint() -> String {
    "malformed varint, or one that runs past the record's length".into()
}

#[cold]
fn past_the_record(what: &str) -> String {
    format!("the {what} runs past the record's length")
}

/// What the walk learns of one record.
#[derive(Debug, PartialEq)]
struct Fields {
    timestamp_ms: i64,
    expires_at_ms: Option<i64>,
    deliver_at_ms: Option<i64>,
    /// Where the id is.
    id: Option<IdPlace>,
    payload_bytes: u64,
}

/// A record [`Walk::plain_record`] read: without an id, or with the one that follows the
/// record before's (a branch each, so each counts what it has).
enum Short {
    Plain(Fields),
    Follows(Fields),
}

/// A varint of one or two bytes at `at` in `bytes` and its length; `None` for any other
/// (longer, truncated): for [`Walk::plain_record`]'s shortcut, which leaves the rest to
/// the full walk.
#[inline(always)]
fn short_varint(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let low = *bytes.get(at)?;
    if low < 0x80 {
        return Some((u64::from(low), 1));
    }
    let high = *bytes.get(at + 1)?;
    (high < 0x80).then(|| (u64::from(low & 0x7f) | u64::from(high) << 7, 2))
}

/// A cursor over a records section.
#[derive(Clone)]
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The id the next record has if it carries `RECORD_ID_FOLLOWS`.
    follower: Option<[u8; 16]>,
}

impl Walk<'_> {
    /// A varint that ends before `end` (a record's varints never run past its length).
    #[inline(always)]
    fn varint(&mut self, end: usize) -> Result<u64, String> {
        let (value, used) = batch::varint_at(self.bytes, self.at, end).ok_or_else(bad_varint)?;
        self.at += used;
        Ok(value)
    }

    #[inline]
    fn byte(&mut self, end: usize) -> Result<u8, String> {
        if self.at >= end {
            return Err("fields run past the record's length".into());
        }
        let byte = self.bytes[self.at];
        self.at += 1;
        Ok(byte)
    }

    /// A varint length and that many bytes, all before `end`: their range.
    #[inline(always)]
    fn field(&mut self, end: usize, what: &str) -> Result<std::ops::Range<usize>, String> {
        let length = self.varint(end)?;
        let start = self.at;
        match usize::try_from(length)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&stop| stop <= end)
        {
            Some(stop) => {
                self.at = stop;
                Ok(start..stop)
            }
            None => Err(past_the_record(what)),
        }
    }

    /// The most common records, valid, in one step: no attributes but "id follows"
    /// (no key, stored id, expiry, deliver-at or priority), no headers, and varints of
    /// one or two bytes. `None` for anything else, valid or not, which
    /// [`Walk::record`] then decides: it is the rule, and this a shortcut that accepts
    /// only what it accepts, with the same fields (the test
    /// `the_shortcut_accepts_only_what_the_walk_accepts_and_reads_the_same`).
    #[inline(always)]
    fn plain_record(&mut self, index: u32, first: i64) -> Option<Short> {
        let bytes = self.bytes;
        let (length, used) = short_varint(bytes, self.at)?;
        let start = self.at + used;
        let record = bytes.get(start..start + length as usize)?;
        // attributes, offset delta, timestamp delta, value length, value, and the
        // header count (0) last.
        let (&attributes, fields) = record.split_first()?;
        let (&0, fields) = fields.split_last()? else {
            return None;
        };
        if attributes & !RECORD_ID_FOLLOWS != 0 {
            return None;
        }
        let (delta, a) = short_varint(fields, 0)?;
        let (timestamp, b) = short_varint(fields, a)?;
        let (value, c) = short_varint(fields, a + b)?;
        if delta != u64::from(index) || a + b + c + value as usize != fields.len() {
            return None;
        }
        let timestamp_ms = first.checked_add(batch::unzigzag(timestamp))?;
        let plain = |payload_bytes, id| Fields {
            timestamp_ms,
            expires_at_ms: None,
            deliver_at_ms: None,
            id,
            payload_bytes,
        };
        let fields = if attributes == 0 {
            self.follower = None;
            Short::Plain(plain(value, None))
        } else {
            let id = self.follower?;
            self.follower = batch::next_id(Some(&id));
            Short::Follows(plain(value + id.len() as u64, Some(IdPlace::Follows(id))))
        };
        self.at = start + record.len();
        Some(fields)
    }

    #[inline(always)]
    fn record(&mut self, index: u32, first: i64, rules: &BatchRules) -> Result<Fields, String> {
        let length = self.varint(self.bytes.len())?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or("its length runs past the records section")?;
        let attributes = self.byte(end)?;
        if attributes & !RECORD_ATTRIBUTES_KNOWN != 0 {
            return Err(format!("unknown attribute bits {attributes:#04x}"));
        }
        let delta = self.varint(end)?;
        if delta != u64::from(index) {
            return Err(format!(
                "offset delta {delta} where {index} was expected (dense offsets)"
            ));
        }
        let timestamp_ms = time_at(first, self.varint(end)?, "timestamp")?;
        let expires_at_ms = if attributes & RECORD_HAS_EXPIRY != 0 {
            Some(time_at(first, self.varint(end)?, "expiry")?)
        } else {
            None
        };
        let deliver_at_ms = if attributes & RECORD_HAS_DELIVER_AT != 0 {
            Some(time_at(first, self.varint(end)?, "deliver-at time")?)
        } else {
            None
        };
        if attributes & RECORD_HAS_PRIORITY != 0 {
            let priority = self.byte(end)?;
            let levels = rules.priority_levels.max(1);
            if priority == 0 || priority >= levels {
                return Err(format!(
                    "priority {priority} is outside 1..={} (the topic has {levels} priority level(s); absent means 0)",
                    levels - 1
                ));
            }
        }
        let mut payload = 0u64;
        let follower = self.follower.take();
        let id = if attributes & RECORD_HAS_ID != 0 {
            if attributes & RECORD_ID_FOLLOWS != 0 {
                return Err("attribute bits 4 (has id) and 5 (id follows) together".into());
            }
            let range = self.field(end, "id")?;
            if !(1..=MESSAGE_ID_BYTES_MAX).contains(&range.len()) {
                return Err(format!(
                    "an id of {} bytes; ids are 1 to {MESSAGE_ID_BYTES_MAX} bytes",
                    range.len()
                ));
            }
            payload += range.len() as u64;
            self.follower = batch::next_id(Some(&self.bytes[range.clone()]));
            Some(IdPlace::Stored(range))
        } else if attributes & RECORD_ID_FOLLOWS != 0 {
            let id = follower.ok_or(
                "attribute bit 5 (id follows) after a record without a 16-byte id whose last 8 bytes can count up",
            )?;
            payload += id.len() as u64;
            self.follower = batch::next_id(Some(&id));
            Some(IdPlace::Follows(id))
        } else {
            None
        };
        if attributes & RECORD_HAS_KEY != 0 {
            payload += self.field(end, "key")?.len() as u64;
        }
        payload += self.field(end, "value")?.len() as u64;
        let header_count = self.varint(end)?;
        if header_count > u64::from(RECORD_HEADERS_MAX) {
            return Err(format!(
                "{header_count} headers, over the limit of {RECORD_HEADERS_MAX}"
            ));
        }
        for header in 0..header_count {
            let key = self.field(end, "header key")?;
            if std::str::from_utf8(&self.bytes[key.clone()]).is_err() {
                return Err(format!("header {header}'s key is not UTF-8"));
            }
            payload += key.len() as u64;
            payload += self.field(end, "header value")?.len() as u64;
        }
        if self.at != end {
            return Err(format!(
                "its fields end {} bytes before its length says",
                end - self.at
            ));
        }
        Ok(Fields {
            timestamp_ms,
            expires_at_ms,
            deliver_at_ms,
            id,
            payload_bytes: payload,
        })
    }
}

/// The reader's side of a batch read (Fetch / Subscribe in batch form): decodes one
/// returned batch (`bytes`, CRC checked) and keeps the records to deliver: not the
/// first `skip_front`, not those whose offset delta `skip` lists, not those expired at
/// `now_ms` (the response's clock). Any reader can do the same from `FORMAT.md`.
pub fn delivered_records(
    bytes: &bytes::Bytes,
    skip_front: u32,
    skip: &[u32],
    now_ms: i64,
) -> Result<Vec<crate::Record>, FormatError> {
    let mut records = Vec::new();
    for_each_delivered(bytes, skip_front, skip, now_ms, |record| {
        records.push(record)
    })?;
    Ok(records)
}

/// [`delivered_records`] handing each record to `deliver` as it is decoded, without a
/// vector between (a consumer builds its own messages from them). Every record is
/// checked in place; only the delivered ones become [`crate::Record`]s. On an error,
/// records of the batch may already have been handed over: a caller that must take a
/// batch whole or not at all drops them (the error names the damage).
pub fn for_each_delivered(
    bytes: &bytes::Bytes,
    skip_front: u32,
    skip: &[u32],
    now_ms: i64,
    mut deliver: impl FnMut(crate::Record),
) -> Result<(), FormatError> {
    let (header, mut records) = open_returned(bytes)?;
    for_each_delivered_view(
        &mut records,
        header.base_offset,
        skip_front,
        skip,
        now_ms,
        |records, view| {
            deliver(records.record(view)?);
            Ok(())
        },
    )
}

/// Opens one batch a batch read returned (`bytes`, exactly one batch): its header,
/// checked against the length and the CRC, and an iterator over its records (a zstd
/// section decompressed). The first step of [`for_each_delivered`].
pub fn open_returned(
    bytes: &bytes::Bytes,
) -> Result<(BatchHeader, batch::RecordIter), FormatError> {
    let header = BatchHeader::parse(bytes)?;
    let length = header.batch_length as usize;
    if bytes.len() < length {
        return Err(FormatError::Incomplete {
            needed: length as u64,
        });
    }
    if bytes.len() != length {
        return Err(FormatError::Invalid(format!(
            "{} bytes hold a batch of {}: one batch expected",
            bytes.len(),
            header.batch_length
        )));
    }
    if !batch::verify_crc(bytes, &header) {
        return Err(FormatError::Invalid("CRC mismatch".into()));
    }
    let records = batch::RecordIter::new(bytes, &header)?;
    Ok((header, records))
}

/// The one rule of which records of a returned batch the reader delivers, over the
/// records of `records` (from [`open_returned`], of the batch at `base_offset`): not
/// the first `skip_front`, not those whose offset delta `skip` lists, not those expired
/// at `now_ms`. Each is checked in place and handed to `deliver` as a view (with the
/// iterator, to borrow its bytes or make a [`crate::Record`]); the first error ends the
/// walk, after the records before it were handed over.
pub fn for_each_delivered_view(
    records: &mut batch::RecordIter,
    base_offset: u64,
    skip_front: u32,
    skip: &[u32],
    now_ms: i64,
    mut deliver: impl FnMut(&batch::RecordIter, &batch::RecordView) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let mut index = 0u32;
    while let Some(view) = records.next_view() {
        let view = view?;
        let delta = (view.offset - base_offset) as u32;
        let kept = index >= skip_front
            && skip.binary_search(&delta).is_err()
            && view.expires_at_ms.is_none_or(|at| at > now_ms);
        if kept {
            deliver(records, &view)?;
        }
        index = index.saturating_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::batch::{
        ATTRIBUTES_AT, BASE_OFFSET_AT, CRC_AT, EncodeOptions, FIRST_TIMESTAMP_AT,
        LAST_OFFSET_DELTA_AT, MAX_EXPIRY_AT, MAX_TIMESTAMP_AT, RECORD_COUNT_AT, VERSION_AT,
        decode_batch, encode_batch,
    };
    use crate::{Header, NewRecord};

    const NOW: i64 = 1_700_000_000_000;

    fn rules() -> BatchRules {
        BatchRules {
            now_ms: NOW,
            max_message_bytes: 1 << 20,
            priority_levels: 10,
            expiry_required: false,
            relative_times: false,
        }
    }

    fn encode(records: &[NewRecord], compression: Compression) -> Vec<u8> {
        let options = EncodeOptions {
            now_ms: NOW,
            default_ttl_ms: None,
            compression,
            max_message_bytes: 1 << 20,
            priority_levels: 10,
        };
        encode_batch(records, &options).unwrap().bytes
    }

    fn sample() -> Vec<NewRecord> {
        vec![
            NewRecord {
                key: Some(Bytes::from_static(b"k")),
                value: Bytes::from_static(b"v1"),
                headers: vec![Header {
                    key: "h".into(),
                    value: Bytes::from_static(b"x"),
                }],
                ttl_ms: Some(60_000),
                id: Some(Bytes::from_static(b"id-1")),
                priority: 3,
                ..NewRecord::default()
            },
            NewRecord::value(Bytes::new()),
            NewRecord {
                value: Bytes::from(vec![9u8; 70_000]),
                timestamp_ms: Some(NOW - 5),
                id: Some(Bytes::from_static(b"id-3")),
                deliver_at_ms: Some(NOW + 1000),
                ..NewRecord::default()
            },
        ]
    }

    /// Rewrites the CRC after a hand edit, so the edit itself is what is judged.
    fn recrc(bytes: &mut [u8]) {
        let crc = batch::compute_crc(bytes);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    fn put_i64(bytes: &mut [u8], at: usize, value: i64) {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn an_encoded_batch_validates_with_its_ids_and_sizes() {
        for compression in [Compression::None, Compression::Zstd] {
            let bytes = encode(&sample(), compression);
            let checked = validate_batch(&bytes, &rules()).unwrap();
            assert_eq!(checked.header.record_count, 3);
            assert_eq!(checked.records_without_id(), 1);
            // The third waits for its deliver-at time: the first two are ready now.
            let payloads: Vec<u64> = sample().iter().map(NewRecord::payload_bytes).collect();
            assert_eq!(
                (checked.ready_records, checked.ready_bytes),
                (2, payloads[0] + payloads[1])
            );
            let ids: Vec<_> = checked
                .ids
                .iter()
                .map(|i| (i.index, checked.id(&bytes, i).to_vec()))
                .collect();
            assert_eq!(ids, vec![(0, b"id-1".to_vec()), (2, b"id-3".to_vec())]);
            assert_eq!(
                checked.split_ids(&bytes).singles,
                vec![
                    (0, crate::idindex::hash_id(b"id-1")),
                    (2, crate::idindex::hash_id(b"id-3"))
                ]
            );
            assert_eq!(checked.payload_bytes, 4 + 1 + 2 + 2 + 4 + 70_000);
        }
    }

    fn with_id(id: &[u8]) -> NewRecord {
        NewRecord {
            id: Some(Bytes::copy_from_slice(id)),
            ..NewRecord::value(Bytes::from_static(b"value"))
        }
    }

    /// The ids of a batch as the validator and the reader each see them, which must
    /// agree.
    fn ids_both_ways(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let checked = validate_batch(bytes, &rules()).unwrap();
        let validated: Vec<(u32, Vec<u8>)> = checked
            .ids
            .iter()
            .map(|i| (i.index, checked.id(bytes, i).to_vec()))
            .collect();
        let read: Vec<(u32, Vec<u8>)> = decode_batch(&Bytes::copy_from_slice(bytes))
            .unwrap()
            .1
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i as u32, r.id.as_ref()?.to_vec())))
            .collect();
        assert_eq!(validated, read);
        validated
    }

    /// A 16-byte id that counts up from the record before's is not stored (record
    /// attribute bit 5): a run costs one id's bytes, and both readers give every id
    /// back. A record without an id, an id of another length or another prefix, and a
    /// suffix that cannot count up each end the run.
    #[test]
    fn ids_that_count_up_are_stored_once_and_read_back() {
        let id = |prefix: u64, suffix: u64| crate::idindex::id_of_parts(prefix, suffix);
        let plain = vec![NewRecord::value(Bytes::from_static(b"value")); 100];
        let run: Vec<NewRecord> = (0..100).map(|i| with_id(&id(7, 1_000 + i))).collect();
        for compression in [Compression::None, Compression::Zstd] {
            let bytes = encode(&run, compression);
            assert_eq!(
                ids_both_ways(&bytes),
                (0..100u32)
                    .map(|i| (i, id(7, 1_000 + u64::from(i)).to_vec()))
                    .collect::<Vec<_>>()
            );
        }
        // One id stored: its length byte and 16 bytes.
        let without = encode(&plain, Compression::None).len();
        assert_eq!(encode(&run, Compression::None).len(), without + 17);
        let records = vec![
            with_id(&id(7, 5)),
            with_id(&id(7, 6)),
            NewRecord::value(Bytes::from_static(b"no id")),
            with_id(&id(7, 7)),
            with_id(&id(8, 8)),
            with_id(&id(8, 9)),
            with_id(b"short"),
            with_id(&id(8, 10)),
            with_id(&id(9, u64::MAX - 1)),
            with_id(&id(9, u64::MAX)),
            with_id(&id(10, 0)),
            with_id(&id(10, 0)),
            with_id(&id(u64::MAX, u64::MAX)),
            with_id(&id(u64::MAX, 0)),
        ];
        let bytes = encode(&records, Compression::None);
        let expected: Vec<(u32, Vec<u8>)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i as u32, r.id.as_ref()?.to_vec())))
            .collect();
        assert_eq!(ids_both_ways(&bytes), expected);
        // Stored in full: records 0, 3, 4, 6, 7, 8, 10, 11, 12 and 13 (the same id
        // twice does not count up, nor does an id of all ones, into any id); records 1,
        // 5 and 9 follow.
        let stored: usize = [0, 3, 4, 7, 8, 10, 11, 12, 13].len() * 17 + 6;
        let bare: Vec<NewRecord> = records
            .iter()
            .map(|r| NewRecord {
                id: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(bytes.len(), encode(&bare, Compression::None).len() + stored);
    }

    /// Attribute bit 5 where no id can follow (on the first record, after a record
    /// without an id, after an id that is not 16 bytes, after a suffix of all ones),
    /// and with bit 4: refused by the validator and the reader alike.
    #[test]
    fn an_id_that_follows_nothing_is_refused_by_both_readers() {
        let id = |prefix: u64, suffix: u64| crate::idindex::id_of_parts(prefix, suffix);
        // Records below 128 bytes: a one-byte length, then the attributes.
        let attributes_of = |bytes: &[u8], record: usize| {
            let mut at = batch::HEADER_BYTES;
            for _ in 0..record {
                at += 1 + bytes[at] as usize;
            }
            at + 1
        };
        let no_id = NewRecord::value(Bytes::from_static(b"value"));
        let cases: Vec<(&str, Vec<NewRecord>, usize, u8)> = vec![
            (
                "on the first record",
                vec![no_id.clone(), no_id.clone()],
                0,
                RECORD_ID_FOLLOWS,
            ),
            (
                "after no id",
                vec![no_id.clone(), no_id.clone()],
                1,
                RECORD_ID_FOLLOWS,
            ),
            (
                "after a 5-byte id",
                vec![with_id(b"short"), no_id.clone()],
                1,
                RECORD_ID_FOLLOWS,
            ),
            (
                "after a suffix of all ones",
                vec![with_id(&id(3, u64::MAX)), no_id.clone()],
                1,
                RECORD_ID_FOLLOWS,
            ),
            (
                "with bit 4",
                vec![with_id(&id(3, 1)), with_id(&id(3, 2))],
                1,
                RECORD_HAS_ID,
            ),
        ];
        for (name, records, record, bit) in cases {
            let mut bytes = encode(&records, Compression::None);
            let at = attributes_of(&bytes, record);
            bytes[at] |= bit;
            recrc(&mut bytes);
            assert!(
                matches!(validate_batch(&bytes, &rules()), Err(BatchError::Record { index, .. }) if index as usize == record),
                "{name}: {:?}",
                validate_batch(&bytes, &rules())
            );
            assert!(
                decode_batch(&Bytes::from(bytes)).is_err(),
                "{name}: decoded"
            );
        }
        // The same bit after a 16-byte id that can count up: that id plus one.
        let mut bytes = encode(&[with_id(&id(3, 41)), no_id.clone()], Compression::None);
        // The record's length grows by nothing: bit 5 adds no field.
        let at = attributes_of(&bytes, 1);
        bytes[at] |= RECORD_ID_FOLLOWS;
        recrc(&mut bytes);
        // Its payload now counts the id: within max_message_bytes, so it validates.
        assert_eq!(
            ids_both_ways(&bytes),
            vec![(0, id(3, 41).to_vec()), (1, id(3, 42).to_vec())]
        );
    }

    /// Every class of malformed batch, each refused with its own error.
    #[test]
    fn every_malformed_class_is_refused_by_name() {
        let good = encode(&sample(), Compression::None);
        type Case = (&'static str, Vec<u8>, BatchRules, fn(&BatchError) -> bool);
        let mut cases: Vec<Case> = Vec::new();
        cases.push(("empty", Vec::new(), rules(), |e| {
            matches!(e, BatchError::Truncated { .. })
        }));
        cases.push(
            ("truncated", good[..good.len() - 1].to_vec(), rules(), |e| {
                matches!(e, BatchError::Truncated { .. })
            }),
        );
        let mut trailing = good.clone();
        trailing.push(0);
        cases.push(("trailing", trailing, rules(), |e| {
            matches!(e, BatchError::TrailingBytes { .. })
        }));
        let mut version = good.clone();
        version[VERSION_AT] = 2;
        recrc(&mut version);
        cases.push(("version", version, rules(), |e| {
            matches!(e, BatchError::Header(_))
        }));
        let mut codec = good.clone();
        codec[ATTRIBUTES_AT] = 3;
        recrc(&mut codec);
        cases.push(("codec", codec, rules(), |e| {
            matches!(e, BatchError::Header(_))
        }));
        let mut length = good.clone();
        length[0..4].copy_from_slice(&10u32.to_le_bytes());
        cases.push(("length", length, rules(), |e| {
            matches!(e, BatchError::Header(_))
        }));
        let mut count = good.clone();
        count[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&0u32.to_le_bytes());
        recrc(&mut count);
        cases.push(("zero records", count, rules(), |e| {
            matches!(e, BatchError::Header(_))
        }));
        let mut crc = good.clone();
        let last = crc.len() - 1;
        crc[last] ^= 1;
        cases.push(("crc", crc, rules(), |e| matches!(e, BatchError::Crc { .. })));
        let mut sparse = good.clone();
        sparse[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&5u32.to_le_bytes());
        recrc(&mut sparse);
        cases.push(("sparse", sparse, rules(), |e| {
            matches!(e, BatchError::SparseOffsets { .. })
        }));
        let mut more = good.clone();
        more[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&4u32.to_le_bytes());
        more[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&3u32.to_le_bytes());
        recrc(&mut more);
        cases.push(("count over the records", more, rules(), |e| {
            matches!(e, BatchError::Record { index: 3, .. })
        }));
        let mut fewer = good.clone();
        fewer[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&2u32.to_le_bytes());
        fewer[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&1u32.to_le_bytes());
        recrc(&mut fewer);
        cases.push(("count under the records", fewer, rules(), |e| {
            matches!(e, BatchError::RecordsTrailing)
        }));
        let mut first = good.clone();
        put_i64(&mut first, FIRST_TIMESTAMP_AT, NOW - 1);
        recrc(&mut first);
        cases.push(("first timestamp", first, rules(), |e| {
            matches!(e, BatchError::Summary(_))
        }));
        let mut max_ts = good.clone();
        put_i64(&mut max_ts, MAX_TIMESTAMP_AT, NOW + 1);
        recrc(&mut max_ts);
        cases.push(("max timestamp", max_ts, rules(), |e| {
            matches!(e, BatchError::Summary(_))
        }));
        let mut expiry = good.clone();
        put_i64(&mut expiry, MAX_EXPIRY_AT, NOW + 60_000);
        recrc(&mut expiry);
        cases.push(("max expiry", expiry, rules(), |e| {
            matches!(e, BatchError::Summary(_))
        }));
        let later = BatchRules {
            now_ms: NOW + 60_000,
            ..rules()
        };
        cases.push(("expired", good.clone(), later, |e| {
            matches!(e, BatchError::Expired { index: 0, .. })
        }));
        let ttl = BatchRules {
            expiry_required: true,
            ..rules()
        };
        cases.push(("no expiry with a default TTL", good.clone(), ttl, |e| {
            matches!(e, BatchError::ExpiryMissing { index: 1 })
        }));
        let small = BatchRules {
            max_message_bytes: 1000,
            ..rules()
        };
        cases.push(("too large", good.clone(), small, |e| {
            matches!(
                e,
                BatchError::RecordTooLarge {
                    index: 2,
                    size: 70_004,
                    limit: 1000
                }
            )
        }));
        let levels = BatchRules {
            priority_levels: 2,
            ..rules()
        };
        cases.push(("priority", good.clone(), levels, |e| {
            matches!(e, BatchError::Record { index: 0, .. })
        }));
        let mut zstd = encode(&sample(), Compression::Zstd);
        let last = zstd.len() - 1;
        zstd[last] ^= 0xff;
        recrc(&mut zstd);
        cases.push(("zstd", zstd, rules(), |e| {
            matches!(e, BatchError::Compression(_))
        }));
        let negative = encode(
            &[NewRecord {
                timestamp_ms: Some(-1),
                ..NewRecord::value("v")
            }],
            Compression::None,
        );
        cases.push(("negative timestamp", negative, rules(), |e| {
            matches!(e, BatchError::Record { index: 0, .. })
        }));
        // Record-level damage, each with a valid CRC: a record byte edited in place.
        let one = encode(
            &[NewRecord {
                key: Some(Bytes::from_static(b"key")),
                headers: vec![Header {
                    key: "ab".into(),
                    value: Bytes::from_static(b"c"),
                }],
                ..NewRecord::value("value")
            }],
            Compression::None,
        );
        // Layout of that record after the 60-byte header: length, attributes (61),
        // offset delta (62), timestamp delta (63), key length (64), key (65..68), value
        // length (68), value (69..74), header count (74), key length (75), key (76..78).
        for (what, at, value) in [
            ("unknown attribute", 61usize, 0x21u8),
            ("offset delta", 62, 1),
            ("record length", 60, 0x7f),
            ("key length", 64, 100),
            ("header count", 74, 3),
            ("header key utf-8", 76, 0xff),
        ] {
            let mut bytes = one.clone();
            bytes[at] = value;
            recrc(&mut bytes);
            let error = validate_batch(&bytes, &rules()).unwrap_err();
            assert!(
                matches!(error, BatchError::Record { index: 0, .. }),
                "{what}: {error}"
            );
            assert!(decode_batch(&Bytes::from(bytes)).is_err() || what == "offset delta");
        }
        for (what, bytes, rules, expected) in cases {
            let error = validate_batch(&bytes, &rules).unwrap_err();
            assert!(expected(&error), "{what}: {error:?}");
            assert!(!error.to_string().is_empty());
        }
    }

    /// The fuzz target's seeds (written by the Python encoder of FORMAT.md) validate:
    /// a second, independent encoder agrees with this validator.
    #[test]
    fn a_header_count_past_the_records_length_is_refused_not_a_panic() {
        // Found by the client_batch fuzz target: a record whose length ends inside its
        // fields, so the header count's varint was read past it and the length check's
        // message subtracted the other way round.
        let bytes: &[u8] = &[
            198, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42, 96, 234, 223, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0,
            0, 0, 0, 104, 229, 207, 139, 1, 0, 0, 0, 104, 229, 207, 139, 1, 0, 0, 255, 255, 255,
            255, 255, 255, 255, 127, 138, 0, 0, 0, 138, 0, 0, 0, 20, 19, 0, 0, 192, 169, 7, 4, 105,
            100, 45, 49, 1, 107, 1, 118, 1, 1, 104, 1, 120, 4, 0, 1, 0, 0, 0, 110, 16, 2, 9, 4,
            105, 100, 45, 51, 100, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122,
            122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122,
            122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122,
            122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122,
            122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122,
            122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 122, 0, 60, 122, 122, 122,
            122, 0,
        ];
        let rules = BatchRules {
            now_ms: 1_700_000_000_000,
            priority_levels: 0,
            ..rules()
        };
        let error = validate_batch(bytes, &rules).unwrap_err().to_string();
        assert!(error.contains("length"), "{error}");
    }

    #[test]
    fn the_fuzz_seeds_from_the_python_encoder_validate() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_batch");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let rules = BatchRules {
                expiry_required: data[0] & 4 != 0,
                ..rules()
            };
            validate_batch(&data[1..], &rules).unwrap();
            seen += 1;
        }
        assert!(seen >= 3);
    }

    /// `records` encoded by a client whose clock reads `client_now_ms`.
    fn encode_at(records: &[NewRecord], compression: Compression, client_now_ms: i64) -> Vec<u8> {
        let options = EncodeOptions {
            now_ms: client_now_ms,
            default_ttl_ms: None,
            compression,
            max_message_bytes: 1 << 20,
            priority_levels: 10,
        };
        encode_batch(records, &options).unwrap().bytes
    }

    fn relative() -> BatchRules {
        BatchRules {
            relative_times: true,
            ..rules()
        }
    }

    /// What the log writes for a checked batch: its bytes with the checked header's
    /// CRC and times (and a base offset) written in, as `RunBatch::checked` does.
    fn as_stored(bytes: &[u8], checked: &CheckedBatch) -> Bytes {
        let mut stored = checked.as_stored(bytes);
        batch::set_base_offset(&mut stored, 5);
        Bytes::from(stored)
    }

    /// Records with relative times only (a TTL, a delay, none with a timestamp of its
    /// own), as tidelog-client sends them.
    fn relative_sample() -> Vec<NewRecord> {
        vec![
            NewRecord {
                ttl_ms: Some(300_000),
                id: Some(Bytes::from_static(b"id-1")),
                ..NewRecord::value("a")
            },
            NewRecord {
                ttl_ms: Some(250_000),
                ..NewRecord::value("b")
            },
            NewRecord {
                ttl_ms: Some(60_000),
                delay_ms: Some(10_000),
                ..NewRecord::value("c")
            },
        ]
    }

    #[test]
    fn a_batch_with_relative_times_is_moved_to_the_append_time() {
        // A client 3 minutes behind and one an hour ahead; a batch with times of the
        // caller's own (timestamps, a deliver-at) keeps their distances too.
        for (skew, records) in [
            (-180_000, relative_sample()),
            (3_600_000, relative_sample()),
            (-180_000, sample()),
        ] {
            for compression in [Compression::None, Compression::Zstd] {
                let client_now = NOW + skew;
                let bytes = encode_at(&records, compression, client_now);
                let (sent, sent_records) = decode_batch(&Bytes::from(bytes.clone())).unwrap();
                let checked = validate_batch(&bytes, &relative()).unwrap();
                assert!(checked.moved);
                let shift = NOW - sent.first_timestamp_ms;
                let header = checked.header;
                assert_eq!(header.first_timestamp_ms, NOW);
                assert_eq!(header.max_timestamp_ms, sent.max_timestamp_ms + shift);
                let moved_expiry = match sent.max_expiry_ms {
                    NEVER_EXPIRES => NEVER_EXPIRES,
                    at => at + shift,
                };
                assert_eq!(header.max_expiry_ms, moved_expiry);
                // Nothing else in the header moves.
                assert_eq!(
                    BatchHeader {
                        crc: sent.crc,
                        first_timestamp_ms: sent.first_timestamp_ms,
                        max_timestamp_ms: sent.max_timestamp_ms,
                        max_expiry_ms: sent.max_expiry_ms,
                        ..header
                    },
                    sent
                );
                // The stored batch is valid (its CRC the one computed) and each
                // record's times kept their distance from the first timestamp.
                let stored = as_stored(&bytes, &checked);
                assert_eq!(batch::compute_crc(&stored), header.crc);
                assert_eq!(stored[batch::TIMES_END..], bytes[batch::TIMES_END..]);
                let (read, read_records) = decode_batch(&stored).unwrap();
                assert_eq!(
                    read,
                    BatchHeader {
                        base_offset: 5,
                        ..header
                    }
                );
                assert_eq!(read_records.len(), sent_records.len());
                for (got, was) in read_records.iter().zip(&sent_records) {
                    assert_eq!(got.timestamp_ms, was.timestamp_ms + shift);
                    assert_eq!(got.expires_at_ms, was.expires_at_ms.map(|at| at + shift));
                    assert_eq!(got.deliver_at_ms, was.deliver_at_ms.map(|at| at + shift));
                    assert_eq!((&got.value, &got.id), (&was.value, &was.id));
                }
                // Record 0's TTL counts from the append time.
                let ttl = records[0].ttl_ms.unwrap() as i64;
                assert_eq!(read_records[0].expires_at_ms, Some(NOW + ttl));
                // The stored batch checks again as it is, without moving.
                let again = validate_batch(&stored, &rules()).unwrap();
                assert!(!again.moved);
                // (A client's base offset reads as 0: the log writes its own.)
                assert_eq!(
                    again.header,
                    BatchHeader {
                        base_offset: 0,
                        ..read
                    }
                );
                // The same ids where they were.
                let ids = |checked: &CheckedBatch, bytes: &[u8]| -> Vec<(u32, Vec<u8>)> {
                    let ids = checked.ids.iter();
                    ids.map(|id| (id.index, checked.id(bytes, id).to_vec()))
                        .collect()
                };
                assert_eq!(ids(&again, &stored), ids(&checked, &bytes));
            }
        }
    }

    #[test]
    fn a_batch_without_relative_times_keeps_the_clients_times() {
        let bytes = encode_at(&relative_sample(), Compression::None, NOW - 30_000);
        let checked = validate_batch(&bytes, &rules()).unwrap();
        assert!(!checked.moved);
        assert_eq!(checked.header.first_timestamp_ms, NOW - 30_000);
        assert_eq!(&as_stored(&bytes, &checked)[12..], &bytes[12..]);
    }

    /// A TTL shorter than a slow client clock is behind: refused as expired with the
    /// client's times, stored with its TTL from the append time when relative.
    #[test]
    fn a_ttl_counts_from_the_append_time_when_relative() {
        let records = [NewRecord {
            ttl_ms: Some(300_000),
            ..NewRecord::value("v")
        }];
        let bytes = encode_at(&records, Compression::None, NOW - 600_000);
        assert!(matches!(
            validate_batch(&bytes, &rules()),
            Err(BatchError::Expired { index: 0, .. })
        ));
        let checked = validate_batch(&bytes, &relative()).unwrap();
        assert_eq!(checked.header.max_expiry_ms, NOW + 300_000);
        // A topic with a default TTL: the expiry the client applied is there.
        let required = BatchRules {
            expiry_required: true,
            ..relative()
        };
        validate_batch(&bytes, &required).unwrap();
        let without = encode_at(&[NewRecord::value("v")], Compression::None, NOW - 600_000);
        assert!(matches!(
            validate_batch(&without, &required),
            Err(BatchError::ExpiryMissing { index: 0 })
        ));
    }

    #[test]
    fn a_moved_expiry_at_or_before_the_append_time_is_refused() {
        // Record 0's timestamp is 10 s after the client's now: a 10 s TTL expires at
        // record 0's timestamp, so at the moved append time; 5 s, before it.
        for (ttl, at) in [(10_000u64, NOW), (5_000, NOW - 5_000)] {
            let records = [NewRecord {
                timestamp_ms: Some(NOW + 10_000),
                ttl_ms: Some(ttl),
                ..NewRecord::value("v")
            }];
            let bytes = encode_at(&records, Compression::None, NOW);
            assert_eq!(
                validate_batch(&bytes, &relative()).unwrap_err(),
                BatchError::Expired {
                    index: 0,
                    expires_at_ms: at,
                    now_ms: NOW
                }
            );
        }
    }

    #[test]
    fn a_move_past_the_range_of_an_i64_is_refused() {
        let unmovable = |bytes: &[u8], rules: &BatchRules| match validate_batch(bytes, rules) {
            Err(BatchError::Unmovable { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        // The largest timestamp past i64::MAX once moved forward.
        let late = encode_at(
            &[
                NewRecord {
                    timestamp_ms: Some(0),
                    ..NewRecord::value("a")
                },
                NewRecord {
                    timestamp_ms: Some(i64::MAX - 10),
                    ..NewRecord::value("b")
                },
            ],
            Compression::None,
            NOW,
        );
        assert_eq!(unmovable(&late, &relative()), "max_timestamp_ms");
        // The latest expiry past i64::MAX, or onto it (which would read "never").
        for ttl in [i64::MAX - NOW / 2, i64::MAX - NOW] {
            let far = encode_at(
                &[NewRecord {
                    timestamp_ms: Some(0),
                    ttl_ms: Some(ttl as u64),
                    ..NewRecord::value("a")
                }],
                Compression::None,
                0,
            );
            assert_eq!(unmovable(&far, &relative()), "max_expiry_ms", "{ttl}");
        }
        // A first timestamp so far back the shift itself overflows.
        let mut back = encode_at(&[NewRecord::value("a")], Compression::None, NOW);
        put_i64(&mut back, FIRST_TIMESTAMP_AT, i64::MIN + 5);
        put_i64(&mut back, MAX_TIMESTAMP_AT, i64::MIN + 5);
        recrc(&mut back);
        let error = validate_batch(&back, &relative()).unwrap_err();
        assert!(
            matches!(
                error,
                BatchError::Unmovable {
                    what: "first_timestamp_ms",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("relative_times"), "{error}");
        // A never-expiring batch stays so.
        let never = encode_at(&[NewRecord::value("a")], Compression::None, 0);
        let checked = validate_batch(&never, &relative()).unwrap();
        assert_eq!(checked.header.max_expiry_ms, NEVER_EXPIRES);
    }

    /// A record's time the move takes past the range of an i64 is refused naming it,
    /// not wrapped: a deliver-at time wrapped into the past was delivered at once, and
    /// an expiry so wrapped was refused as "expires ... not after the append time"
    /// (hunt 10b). The header's summary of times has no deliver-at (and an expiry under
    /// a never-expiring maximum), so the records' own times are checked.
    #[test]
    fn a_record_time_past_the_range_of_an_i64_is_refused_not_wrapped() {
        let far_deliver = encode_at(
            &[NewRecord {
                timestamp_ms: Some(0),
                deliver_at_ms: Some(i64::MAX - 10),
                ..NewRecord::value("a")
            }],
            Compression::None,
            0,
        );
        let far_expiry = encode_at(
            &[
                NewRecord {
                    timestamp_ms: Some(0),
                    ..NewRecord::value("never")
                },
                NewRecord {
                    timestamp_ms: Some(0),
                    ttl_ms: Some((i64::MAX - 10) as u64),
                    ..NewRecord::value("far")
                },
            ],
            Compression::None,
            0,
        );
        for (bytes, index, what) in [
            (&far_deliver, 0, "deliver-at time"),
            (&far_expiry, 1, "expiry"),
        ] {
            // Within the range as sent.
            validate_batch(bytes, &rules()).unwrap();
            match validate_batch(bytes, &relative()) {
                Err(BatchError::Record { index: at, reason }) => {
                    assert_eq!(at, index, "{reason}");
                    assert!(
                        reason.contains(&format!("its {what} is"))
                            && reason.contains("past the range of an i64"),
                        "{reason}"
                    );
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_damaged_batch_with_relative_times_fails_its_crc_before_it_moves() {
        let mut bytes = encode_at(&relative_sample(), Compression::None, NOW - 1000);
        let at = bytes.len() - 2;
        bytes[at] ^= 1;
        assert!(matches!(
            validate_batch(&bytes, &relative()),
            Err(BatchError::Crc { .. })
        ));
        // And one whose times were edited.
        let mut bytes = encode_at(&relative_sample(), Compression::None, NOW - 1000);
        bytes[MAX_TIMESTAMP_AT] ^= 1;
        assert!(matches!(
            validate_batch(&bytes, &relative()),
            Err(BatchError::Crc { .. })
        ));
    }

    #[test]
    fn the_base_offset_is_the_logs_to_write() {
        // Any value, even one that would overflow with the batch's last offset delta.
        for base in [77, u64::MAX - 1, u64::MAX] {
            let mut bytes = encode(&sample(), Compression::None);
            bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base.to_le_bytes());
            validate_batch(&bytes, &rules()).unwrap();
        }
    }

    #[test]
    fn delivered_records_drop_the_front_the_skipped_and_the_expired() {
        let bytes = Bytes::from(encode(&sample(), Compression::Zstd));
        let offsets =
            |records: Vec<crate::Record>| records.iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!(
            offsets(delivered_records(&bytes, 0, &[], NOW).unwrap()),
            vec![0, 1, 2]
        );
        assert_eq!(
            offsets(delivered_records(&bytes, 1, &[2], NOW).unwrap()),
            vec![1]
        );
        // Record 0 expires at NOW + 60 s.
        assert_eq!(
            offsets(delivered_records(&bytes, 0, &[], NOW + 60_000).unwrap()),
            vec![1, 2]
        );
    }

    fn record() -> impl Strategy<Value = NewRecord> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(
                ("[a-z]{0,5}", proptest::collection::vec(any::<u8>(), 0..8)),
                0..3,
            ),
            proptest::option::of(0i64..2_000_000_000_000),
            proptest::option::of(0u64..1_000_000),
            proptest::option::of(prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..20),
                // 16-byte ids, some whose suffix cannot count up.
                (
                    0u64..3,
                    prop_oneof![any::<u64>(), Just(u64::MAX - 1), Just(u64::MAX)]
                )
                    .prop_map(
                        |(prefix, suffix)| crate::idindex::id_of_parts(prefix, suffix).to_vec()
                    ),
            ]),
            0u8..10,
        )
            .prop_map(
                |(key, value, headers, timestamp_ms, ttl_ms, id, priority)| NewRecord {
                    key: key.map(Bytes::from),
                    value: Bytes::from(value),
                    headers: headers
                        .into_iter()
                        .map(|(key, value)| Header {
                            key,
                            value: Bytes::from(value),
                        })
                        .collect(),
                    timestamp_ms,
                    ttl_ms,
                    id: id.map(Bytes::from),
                    priority,
                    ..NewRecord::default()
                },
            )
    }

    /// Gives record `i` the id that counts up from record `i - 1`'s where `chain[i]`
    /// and that one is 16 bytes (wrapping at the end, where the encoder must store it),
    /// so runs of ids that follow, their ends and their edges come up often.
    fn chain_ids(mut records: Vec<NewRecord>, chain: &[bool]) -> Vec<NewRecord> {
        for i in 1..records.len() {
            let previous = records[i - 1]
                .id
                .as_deref()
                .and_then(|id| <[u8; 16]>::try_from(id).ok());
            if let (Some(previous), Some(true)) = (previous, chain.get(i)) {
                let next = u128::from_be_bytes(previous).wrapping_add(1);
                records[i].id = Some(Bytes::copy_from_slice(&next.to_be_bytes()));
            }
        }
        records
    }

    /// Mostly records the shortcut takes (no key, headers, TTL or priority; values of
    /// 0 to 300 bytes, so one- and two-byte lengths; ids that follow from `chain_ids`),
    /// with now and then each thing it does not take.
    fn mostly_plain() -> impl Strategy<Value = NewRecord> {
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            0u8..20,
            proptest::option::of(0i64..2_000_000_000_000),
            any::<u64>(),
        )
            .prop_map(|(value, odd, timestamp_ms, id)| NewRecord {
                value: Bytes::from(value),
                key: (odd == 1).then(|| Bytes::from_static(b"k")),
                headers: if odd == 2 {
                    vec![Header {
                        key: "h".into(),
                        value: Bytes::new(),
                    }]
                } else {
                    Vec::new()
                },
                ttl_ms: (odd == 3).then_some(60_000),
                priority: u8::from(odd == 4),
                id: (odd >= 15)
                    .then(|| Bytes::copy_from_slice(&crate::idindex::id_of_parts(odd.into(), id))),
                timestamp_ms,
                ..NewRecord::default()
            })
    }

    /// The shortcut takes plain records and ids that follow, and leaves the rest.
    #[test]
    fn the_shortcut_takes_plain_records_and_ids_that_follow() {
        let id = crate::idindex::id_of_parts(1, 5);
        let records = vec![
            NewRecord::value(Bytes::from(vec![1u8; 100])),
            NewRecord::value(Bytes::from(vec![2u8; 200])),
            NewRecord {
                id: Some(Bytes::copy_from_slice(&id)),
                ..NewRecord::value(Bytes::from_static(b"stored id"))
            },
            NewRecord {
                id: Some(Bytes::copy_from_slice(&crate::idindex::id_of_parts(1, 6))),
                ..NewRecord::value(Bytes::from_static(b"follows"))
            },
            NewRecord {
                key: Some(Bytes::from_static(b"k")),
                ..NewRecord::value(Bytes::from_static(b"keyed"))
            },
        ];
        let bytes = encode(&records, Compression::None);
        let header = BatchHeader::parse_client(&bytes).unwrap();
        let mut walk = Walk {
            bytes: &bytes[batch::HEADER_BYTES..],
            at: 0,
            follower: None,
        };
        let mut taken = Vec::new();
        for index in 0..records.len() as u32 {
            let short = walk.clone().plain_record(index, header.first_timestamp_ms);
            taken.push(match short {
                Some(Short::Plain(_)) => "plain",
                Some(Short::Follows(_)) => "follows",
                None => "walk",
            });
            walk.record(index, header.first_timestamp_ms, &rules())
                .unwrap();
        }
        assert_eq!(taken, ["plain", "plain", "walk", "follows", "walk"]);
    }

    proptest! {
        /// The shortcut (`Walk::plain_record`) accepts only records the walk accepts,
        /// with the same fields, the same place after them and the same id to follow,
        /// on batches of mostly plain records with bytes of their records changed.
        #[test]
        fn the_shortcut_accepts_only_what_the_walk_accepts_and_reads_the_same(
            records in proptest::collection::vec(mostly_plain(), 1..12),
            chain in proptest::collection::vec(any::<bool>(), 12),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            near_edges in proptest::collection::vec(
                (any::<prop::sample::Index>(), -6i32..7, any::<u8>()), 0..3),
        ) {
            let records = chain_ids(records, &chain);
            let bytes = encode(&records, Compression::None);
            let header = BatchHeader::parse_client(&bytes).unwrap();
            let mut section = bytes[batch::HEADER_BYTES..].to_vec();
            // Where each record starts, to change bytes near those edges: the lengths,
            // attributes and deltas after one, the header count before.
            let mut starts = Vec::new();
            let mut walk = Walk { bytes: &section, at: 0, follower: None };
            for index in 0..records.len() as u32 {
                starts.push(walk.at);
                walk.record(index, header.first_timestamp_ms, &rules()).unwrap();
            }
            starts.push(section.len());
            for (index, value) in edits {
                let at = index.index(section.len());
                section[at] = value;
            }
            for (edge, shift, value) in near_edges {
                let at = starts[edge.index(starts.len())] as i64 + i64::from(shift);
                if let Some(byte) = usize::try_from(at).ok().and_then(|at| section.get_mut(at)) {
                    *byte = value;
                }
            }
            let first = header.first_timestamp_ms;
            let mut walk = Walk { bytes: &section, at: 0, follower: None };
            for index in 0..records.len() as u32 + 2 {
                let mut shortcut = walk.clone();
                let short = shortcut.plain_record(index, first);
                let walked = walk.record(index, first, &rules());
                if let Some(Short::Plain(fields) | Short::Follows(fields)) = short {
                    prop_assert_eq!(Some(&fields), walked.as_ref().ok());
                    prop_assert_eq!(shortcut.at, walk.at);
                    prop_assert_eq!(shortcut.follower, walk.follower);
                }
                if walked.is_err() {
                    break;
                }
            }
        }

        /// Every batch the encoder makes validates, and its ids are the records' ids.
        #[test]
        fn every_encoded_batch_validates(
            records in proptest::collection::vec(record(), 1..20),
            chain in proptest::collection::vec(any::<bool>(), 30),
            zstd in any::<bool>(),
        ) {
            let records = chain_ids(records, &chain);
            let compression = if zstd { Compression::Zstd } else { Compression::None };
            let bytes = encode(&records, compression);
            let checked = validate_batch(&bytes, &rules()).unwrap();
            prop_assert_eq!(checked.header.record_count as usize, records.len());
            let ids: Vec<Vec<u8>> = records.iter().filter_map(|r| r.id.as_ref().map(|i| i.to_vec())).collect();
            prop_assert_eq!(checked.ids.iter().map(|i| checked.id(&bytes, i).to_vec()).collect::<Vec<_>>(), ids);
        }

        /// A batch with bytes changed either fails validation or decodes to the same
        /// records (changes to the base offset, which the log overwrites, aside).
        #[test]
        fn every_mutation_fails_or_changes_nothing(
            records in proptest::collection::vec(record(), 1..8),
            chain in proptest::collection::vec(any::<bool>(), 30),
            zstd in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            fix_crc in any::<bool>(),
        ) {
            let records = chain_ids(records, &chain);
            let compression = if zstd { Compression::Zstd } else { Compression::None };
            let bytes = encode(&records, compression);
            let original = decode_batch(&Bytes::from(bytes.clone())).unwrap().1;
            let mut mutated = bytes.clone();
            for (index, value) in edits {
                let at = index.index(mutated.len());
                if !(BASE_OFFSET_AT..BASE_OFFSET_AT + 8).contains(&at) {
                    mutated[at] = value;
                }
            }
            if fix_crc {
                recrc(&mut mutated);
            }
            if let Ok(checked) = validate_batch(&mutated, &rules()) {
                let decoded = decode_batch(&Bytes::from(mutated.clone()));
                prop_assert!(decoded.is_ok(), "validated but does not decode");
                let decoded = decoded.unwrap().1;
                if fix_crc {
                    // A different batch with a true CRC: what the validator saw is
                    // what a reader decodes.
                    prop_assert_eq!(decoded.len(), checked.header.record_count as usize);
                    let ids: Vec<Vec<u8>> = decoded.iter().filter_map(|r| r.id.as_ref().map(|i| i.to_vec())).collect();
                    prop_assert_eq!(checked.ids.iter().map(|i| checked.id(&mutated, i).to_vec()).collect::<Vec<_>>(), ids);
                } else {
                    // Edits under the CRC never pass unless they changed nothing a
                    // record holds.
                    prop_assert_eq!(decoded, original);
                }
            }
        }

        /// What a reader delivers is what decoding the whole batch and then dropping
        /// the front, the skipped and the expired gives, for random skips and clocks;
        /// and a damaged batch (bytes changed, CRC fixed or not) delivers nothing the
        /// whole decode would refuse.
        #[test]
        fn delivered_records_are_the_decoded_ones_minus_the_dropped(
            records in proptest::collection::vec(record(), 1..30),
            chain in proptest::collection::vec(any::<bool>(), 30),
            zstd in any::<bool>(),
            skip_front in 0u32..6,
            skip in proptest::collection::btree_set(0u32..30, 0..8),
            clock in prop_oneof![Just(NOW), Just(NOW + 60_000), Just(i64::MAX)],
            edit in proptest::option::of((any::<prop::sample::Index>(), any::<u8>(), any::<bool>())),
        ) {
            let records = chain_ids(records, &chain);
            let compression = if zstd { Compression::Zstd } else { Compression::None };
            let mut bytes = encode(&records, compression);
            if let Some((index, value, fix_crc)) = edit {
                let at = index.index(bytes.len());
                if !(BASE_OFFSET_AT..BASE_OFFSET_AT + 8).contains(&at) {
                    bytes[at] = value;
                }
                if fix_crc {
                    recrc(&mut bytes);
                }
            }
            let bytes = Bytes::from(bytes);
            let skip: Vec<u32> = skip.into_iter().collect();
            let expected = decode_batch(&bytes).map(|(header, decoded)| {
                decoded
                    .into_iter()
                    .enumerate()
                    .filter(|(index, record)| {
                        let delta = (record.offset - header.base_offset) as u32;
                        *index as u32 >= skip_front
                            && skip.binary_search(&delta).is_err()
                            && record.expires_at_ms.is_none_or(|at| at > clock)
                    })
                    .map(|(_, record)| record)
                    .collect::<Vec<_>>()
            });
            match (delivered_records(&bytes, skip_front, &skip, clock), expected) {
                (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected),
                (Err(_), Err(_)) => {}
                // A reader checks header keys as UTF-8 only on what it delivers, so a
                // batch whose bad key is on a dropped record reads; nothing else may
                // differ.
                (Ok(got), Err(error)) => prop_assert!(
                    error.to_string().contains("UTF-8"),
                    "delivered {} records of a batch that does not decode: {}", got.len(), error
                ),
                (Err(error), Ok(_)) => prop_assert!(false, "refused a batch that decodes: {}", error),
            }
        }

        /// Arbitrary bytes never panic the validator.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = validate_batch(&data, &rules());
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::batch::{EncodeOptions, NewRecord, encode_batch};

    /// Not a test: the validation's cost per record of a 1,000-record batch of 100-byte
    /// values, without and with 16-byte ids. Run with `cargo test --release -p
    /// tidelog-storage --lib validate_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn validate_timing() {
        for ids in [false, true] {
            let records: Vec<NewRecord> = (0..1000u32)
                .map(|i| {
                    let mut r = NewRecord::value(vec![b'x'; 100]);
                    if ids {
                        r.id = Some(bytes::Bytes::from(format!("{i:016}")));
                    }
                    r
                })
                .collect();
            let options = EncodeOptions {
                now_ms: 1_700_000_000_000,
                default_ttl_ms: None,
                compression: Compression::None,
                max_message_bytes: 1 << 20,
                priority_levels: 1,
            };
            let bytes = encode_batch(&records, &options).unwrap().bytes;
            let rules = BatchRules {
                now_ms: 1_700_000_000_000,
                max_message_bytes: 1 << 20,
                priority_levels: 1,
                expiry_required: false,
                relative_times: false,
            };
            let start = std::time::Instant::now();
            let rounds = 3000;
            for _ in 0..rounds {
                std::hint::black_box(validate_batch(std::hint::black_box(&bytes), &rules).unwrap());
            }
            println!(
                "ids {ids}: {:.1} ns a record",
                start.elapsed().as_nanos() as f64 / (rounds * 1000) as f64
            );
        }
    }
}
