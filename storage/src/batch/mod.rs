//! The record batch: the unit of append, checksum, compression and reading.
//!
//! Byte layout (all integers little-endian; `storage/FORMAT.md` has the full spec):
//!
//! | offset | size | field                | meaning                                                  |
//! |-------:|-----:|----------------------|----------------------------------------------------------|
//! |      0 |    4 | `batch_length`       | bytes in this batch, this field included                 |
//! |      4 |    8 | `base_offset`        | offset of the first record                               |
//! |     12 |    4 | `crc`                | CRC-32 (IEEE) of bytes `[16, batch_length)`              |
//! |     16 |    1 | `version`            | format version, 1                                        |
//! |     17 |    1 | `attributes`         | bits 0-1 codec (0 none, 1 zstd); other bits 0            |
//! |     18 |    2 | `reserved`           | 0                                                        |
//! |     20 |    4 | `last_offset_delta`  | last record's offset minus `base_offset`                 |
//! |     24 |    4 | `record_count`       | records in the batch, >= 1                               |
//! |     28 |    8 | `first_timestamp_ms` | timestamp of the first record                            |
//! |     36 |    8 | `max_timestamp_ms`   | largest record timestamp                                 |
//! |     44 |    8 | `max_expiry_ms`      | latest record expiry; `i64::MAX` if any record never expires |
//! |     52 |    4 | `records_length`     | bytes of the records section as stored                   |
//! |     56 |    4 | `uncompressed_length`| bytes of the records section once decompressed           |
//! |     60 |    - | records              | `record_count` records, zstd-compressed if codec = 1     |
//!
//! The base offset sits before the CRC and outside it, so the log can assign offsets
//! after the (possibly compressed) batch is encoded and checksummed outside its lock;
//! readers still validate it against the offset they expect.
//!
//! Each record: `varint length` (bytes that follow), `u8 attributes` (bit 0 has key,
//! bit 1 has expiry, bit 2 has deliver-at, bit 3 has priority, bit 4 has id, bit 5 id
//! follows the previous record's), `varint offset_delta`, `zigzag varint timestamp_delta` (from
//! `first_timestamp_ms`), [`zigzag varint expiry_delta`], [`varint key_length`, key],
//! `varint value_length`, value, `varint header_count`, then per header `varint
//! key_length`, UTF-8 key, `varint value_length`, value.

use bytes::Bytes;

use crate::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, MESSAGE_ID_BYTES_MAX, PRIORITY_LEVELS_MAX,
    RECORD_HEADERS_MAX,
};

mod records;

/// Bytes in a batch header.
pub const HEADER_BYTES: usize = 60;
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// `max_expiry_ms` of a batch holding a record that never expires.
pub const NEVER_EXPIRES: i64 = i64::MAX;

pub(crate) const LENGTH_AT: usize = 0;
pub(crate) const BASE_OFFSET_AT: usize = LENGTH_AT + 4;
pub(crate) const CRC_AT: usize = BASE_OFFSET_AT + 8;
/// The CRC covers everything from here to the end of the batch.
pub const CRC_COVERS_FROM: usize = CRC_AT + 4;
pub(crate) const VERSION_AT: usize = CRC_COVERS_FROM;
pub(crate) const ATTRIBUTES_AT: usize = VERSION_AT + 1;
const RESERVED_AT: usize = ATTRIBUTES_AT + 1;
pub(crate) const LAST_OFFSET_DELTA_AT: usize = RESERVED_AT + 2;
pub(crate) const RECORD_COUNT_AT: usize = LAST_OFFSET_DELTA_AT + 4;
pub(crate) const FIRST_TIMESTAMP_AT: usize = RECORD_COUNT_AT + 4;
pub(crate) const MAX_TIMESTAMP_AT: usize = FIRST_TIMESTAMP_AT + 8;
pub(crate) const MAX_EXPIRY_AT: usize = MAX_TIMESTAMP_AT + 8;
pub(crate) const RECORDS_LENGTH_AT: usize = MAX_EXPIRY_AT + 8;
pub(crate) const UNCOMPRESSED_LENGTH_AT: usize = RECORDS_LENGTH_AT + 4;
const _: () = assert!(UNCOMPRESSED_LENGTH_AT + 4 == HEADER_BYTES);
/// The header's times (`first_timestamp_ms`, `max_timestamp_ms`, `max_expiry_ms`):
/// what moving a batch to the append time rewrites (with the CRC).
pub(crate) const TIMES_AT: usize = FIRST_TIMESTAMP_AT;
pub(crate) const TIMES_END: usize = MAX_EXPIRY_AT + 8;
const _: () = assert!(TIMES_AT >= CRC_COVERS_FROM && TIMES_END == RECORDS_LENGTH_AT);

const CODEC_MASK: u8 = 0b11;
pub(crate) const RECORD_HAS_KEY: u8 = 1 << 0;
pub(crate) const RECORD_HAS_EXPIRY: u8 = 1 << 1;
pub(crate) const RECORD_HAS_DELIVER_AT: u8 = 1 << 2;
pub(crate) const RECORD_HAS_PRIORITY: u8 = 1 << 3;
pub(crate) const RECORD_HAS_ID: u8 = 1 << 4;
/// The record's id is not stored: it is the previous record's (a 16-byte id) with its
/// last 8 bytes, read big-endian, plus one (see [`next_id`]). Never with
/// [`RECORD_HAS_ID`].
pub(crate) const RECORD_ID_FOLLOWS: u8 = 1 << 5;
/// Every attribute bit a record may carry; the others must be 0.
pub(crate) const RECORD_ATTRIBUTES_KNOWN: u8 = RECORD_HAS_KEY
    | RECORD_HAS_EXPIRY
    | RECORD_HAS_DELIVER_AT
    | RECORD_HAS_PRIORITY
    | RECORD_HAS_ID
    | RECORD_ID_FOLLOWS;

/// The id a record with [`RECORD_ID_FOLLOWS`] has after a record whose id is
/// `previous`: `None` when `previous` is not a 16-byte id whose last 8 bytes can count
/// up (then the bit is invalid there). The one rule, for the encoder and every reader.
#[inline]
pub(crate) fn next_id(previous: Option<&[u8]>) -> Option<[u8; 16]> {
    let previous: &[u8; 16] = previous?.try_into().ok()?;
    id_after(u128::from_be_bytes(*previous)).map(u128::to_be_bytes)
}

/// [`next_id`] of a 16-byte id read as a big-endian `u128`.
#[inline]
fn id_after(previous: u128) -> Option<u128> {
    // The last 8 bytes count up; they may not wrap into the first 8.
    (previous as u64 != u64::MAX).then(|| previous + 1)
}
/// zstd level for compressed batches: level 1 keeps appends CPU-cheap.
const ZSTD_LEVEL: i32 = 1;

/// Compression applied to a batch's records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Zstd,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The name used in configs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A record header: a string key and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// A record as a producer hands it to the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// Producer timestamp; the append time when absent.
    pub timestamp_ms: Option<i64>,
    /// Time to live from the append time; the topic default when absent; 0 means
    /// never expires (overriding the topic default).
    pub ttl_ms: Option<u64>,
    /// The producer's id for the message: opaque, 1 to `MESSAGE_ID_BYTES_MAX` bytes.
    pub id: Option<Bytes>,
    /// Not to be delivered by queues before this time (ms since the epoch).
    pub deliver_at_ms: Option<i64>,
    /// Not to be delivered by queues before this long after the append time (ms);
    /// exclusive with `deliver_at_ms`.
    pub delay_ms: Option<u64>,
    /// Queue delivery priority, 0 (the default, lowest) up to the topic's levels - 1.
    pub priority: u8,
}

impl AsRef<NewRecord> for NewRecord {
    fn as_ref(&self) -> &NewRecord {
        self
    }
}

impl NewRecord {
    /// A record with just a value.
    pub fn value(value: impl Into<Bytes>) -> Self {
        NewRecord {
            value: value.into(),
            ..NewRecord::default()
        }
    }

    /// Id, key, value and header bytes: what `max_message_bytes` limits.
    #[inline]
    /// When the record is to be delivered, appended at `now_ms`: its `deliver_at_ms`,
    /// or `now_ms` plus its `delay_ms`; None: at once.
    pub fn deliver_at(&self, now_ms: i64) -> Option<i64> {
        self.deliver_at_ms
            .or_else(|| self.delay_ms.map(|d| now_ms.saturating_add(d as i64)))
    }

    /// Whether the record is due at once when appended at `now_ms` (no deliver-at time
    /// ahead): what it adds to its queues' ready backlog.
    pub fn due_at(&self, now_ms: i64) -> bool {
        self.deliver_at(now_ms).is_none_or(|at| at <= now_ms)
    }

    pub fn payload_bytes(&self) -> u64 {
        payload_size(
            self.id.as_ref(),
            self.key.as_ref(),
            &self.value,
            &self.headers,
        )
    }
}

/// Id + key + value + header bytes: the one definition of a message's size, for what a
/// producer sends and what a reader gets back.
#[inline]
fn payload_size(id: Option<&Bytes>, key: Option<&Bytes>, value: &Bytes, headers: &[Header]) -> u64 {
    let id = id.map_or(0, |i| i.len());
    let key = key.map_or(0, |k| k.len());
    let headers: usize = headers.iter().map(|h| h.key.len() + h.value.len()).sum();
    (id + key + value.len() + headers) as u64
}

/// A record read back from the log. `key`, `value` and header values of uncompressed
/// batches point into the segment's memory mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    /// The producer's id for the message, if it gave one.
    pub id: Option<Bytes>,
    /// Queues do not deliver it before this time (ms since the epoch). Log readers see
    /// it as metadata and read in log order.
    pub deliver_at_ms: Option<i64>,
    /// Queue delivery priority (0 = lowest).
    pub priority: u8,
}

impl Record {
    /// Id, key, value and header bytes: what read budgets and metrics count.
    #[inline]
    pub fn payload_bytes(&self) -> u64 {
        payload_size(
            self.id.as_ref(),
            self.key.as_ref(),
            &self.value,
            &self.headers,
        )
    }

    /// Whether its TTL ends at or before its deliver-at time: no queue can ever deliver
    /// it (it is expired when it comes due). Queues pass it over as they pass an
    /// expired message, and its delivery status is expired from the start.
    #[inline]
    pub fn expires_before_due(&self) -> bool {
        matches!(
            (self.deliver_at_ms, self.expires_at_ms),
            (Some(due), Some(expires)) if expires <= due
        )
    }
}

/// Why bytes are not a valid batch. `Incomplete` (the bytes end before the batch does)
/// is kept apart from `Invalid`: at the tail of a log the first is a torn write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// At least `needed` bytes are required and fewer are present.
    Incomplete { needed: u64 },
    /// The bytes contradict the format; `reason` says how.
    Invalid(String),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::Incomplete { needed } => {
                write!(f, "incomplete batch: {needed} bytes needed")
            }
            FormatError::Invalid(reason) => f.write_str(reason),
        }
    }
}

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError::Invalid(reason.into())
}

/// The fixed-size header of a batch, parsed and checked for internal consistency
/// (but not yet against the CRC: see [`verify_crc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_length: u32,
    pub base_offset: u64,
    pub crc: u32,
    pub compression: Compression,
    pub last_offset_delta: u32,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub max_expiry_ms: i64,
    pub records_length: u32,
    pub uncompressed_length: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    u64_at(bytes, at) as i64
}

/// The length a batch starting at `bytes` declares, if at least 4 bytes are present.
pub fn declared_length(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 4).then(|| u32_at(bytes, LENGTH_AT))
}

impl BatchHeader {
    /// Parses and validates the header at the start of `bytes`. Only the header is
    /// required; whether the whole batch is present is for the caller to check
    /// against [`BatchHeader::batch_length`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        let header = BatchHeader::parse_fields(bytes)?;
        header.check()?;
        Ok(header)
    }

    /// [`BatchHeader::parse`] of a batch a client sent: its `base_offset` is the log's
    /// to write (FORMAT.md), so whatever the client put there reads as 0 and is not
    /// checked.
    pub fn parse_client(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        let mut header = BatchHeader::parse_fields(bytes)?;
        header.base_offset = 0;
        header.check()?;
        Ok(header)
    }

    /// The header's fields, the codec and reserved bits checked, the rest not yet.
    fn parse_fields(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        if bytes.len() < HEADER_BYTES {
            return Err(FormatError::Incomplete {
                needed: HEADER_BYTES as u64,
            });
        }
        let batch_length = u32_at(bytes, LENGTH_AT);
        if (batch_length as usize) < HEADER_BYTES || u64::from(batch_length) > BATCH_BYTES_MAX {
            return Err(invalid(format!(
                "batch length {batch_length} is outside {HEADER_BYTES}..={BATCH_BYTES_MAX}"
            )));
        }
        let version = bytes[VERSION_AT];
        if version != FORMAT_VERSION {
            return Err(invalid(format!(
                "unknown batch format version {version} (this build reads {FORMAT_VERSION})"
            )));
        }
        let attributes = bytes[ATTRIBUTES_AT];
        let compression = Compression::from_code(attributes & CODEC_MASK)
            .ok_or_else(|| invalid(format!("unknown compression codec {}", attributes & 3)))?;
        if attributes & !CODEC_MASK != 0 || bytes[RESERVED_AT] != 0 || bytes[RESERVED_AT + 1] != 0 {
            return Err(invalid("reserved attribute bits are set"));
        }
        let header = BatchHeader {
            batch_length,
            base_offset: u64_at(bytes, BASE_OFFSET_AT),
            crc: u32_at(bytes, CRC_AT),
            compression,
            last_offset_delta: u32_at(bytes, LAST_OFFSET_DELTA_AT),
            record_count: u32_at(bytes, RECORD_COUNT_AT),
            first_timestamp_ms: i64_at(bytes, FIRST_TIMESTAMP_AT),
            max_timestamp_ms: i64_at(bytes, MAX_TIMESTAMP_AT),
            max_expiry_ms: i64_at(bytes, MAX_EXPIRY_AT),
            records_length: u32_at(bytes, RECORDS_LENGTH_AT),
            uncompressed_length: u32_at(bytes, UNCOMPRESSED_LENGTH_AT),
        };
        Ok(header)
    }

    fn check(&self) -> Result<(), FormatError> {
        if self.record_count == 0 || self.record_count > BATCH_RECORDS_MAX {
            return Err(invalid(format!(
                "record count {} is outside 1..={BATCH_RECORDS_MAX}",
                self.record_count
            )));
        }
        if self.last_offset_delta < self.record_count - 1 {
            return Err(invalid(format!(
                "last offset delta {} is too small for {} records",
                self.last_offset_delta, self.record_count
            )));
        }
        if self
            .base_offset
            .checked_add(u64::from(self.last_offset_delta) + 1)
            .is_none()
        {
            return Err(invalid("base offset + last offset delta overflows"));
        }
        if HEADER_BYTES as u64 + u64::from(self.records_length) != u64::from(self.batch_length) {
            return Err(invalid(format!(
                "records length {} does not fit batch length {}",
                self.records_length, self.batch_length
            )));
        }
        if u64::from(self.uncompressed_length) > BATCH_BYTES_MAX {
            return Err(invalid(format!(
                "uncompressed length {} is over the {BATCH_BYTES_MAX}-byte limit",
                self.uncompressed_length
            )));
        }
        if self.compression == Compression::None && self.uncompressed_length != self.records_length
        {
            return Err(invalid("uncompressed batch with differing lengths"));
        }
        if self.max_timestamp_ms < self.first_timestamp_ms {
            return Err(invalid("max timestamp is before the first timestamp"));
        }
        Ok(())
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// True when every record in the batch has expired at `now_ms`.
    pub fn all_expired(&self, now_ms: i64) -> bool {
        self.max_expiry_ms != NEVER_EXPIRES && self.max_expiry_ms <= now_ms
    }
}

/// The CRC-32 that `batch` should carry (over `[CRC_COVERS_FROM, len)`).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(batch.get(CRC_COVERS_FROM..).unwrap_or_default())
}

/// True when the whole `batch` (exactly `batch_length` bytes) matches its CRC.
pub fn verify_crc(batch: &[u8], header: &BatchHeader) -> bool {
    batch.len() == header.batch_length as usize && compute_crc(batch) == header.crc
}

/// Writes `base_offset` into an encoded batch (it is outside the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
}

/// `header`'s times as the bytes `[TIMES_AT, TIMES_END)` of a batch hold them.
pub(crate) fn times_bytes(header: &BatchHeader) -> [u8; TIMES_END - TIMES_AT] {
    let mut times = [0u8; TIMES_END - TIMES_AT];
    let fields = [
        header.first_timestamp_ms,
        header.max_timestamp_ms,
        header.max_expiry_ms,
    ];
    for (chunk, field) in times.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
    times
}

/// Writes `header`'s CRC and times into the first [`TIMES_END`] bytes of its batch
/// (`head`): a batch moved to the append time, as the log stores it.
pub(crate) fn set_times(head: &mut [u8], header: &BatchHeader) {
    if let Some(crc) = head.get_mut(CRC_AT..CRC_AT + 4) {
        crc.copy_from_slice(&header.crc.to_le_bytes());
    }
    if let Some(times) = head.get_mut(TIMES_AT..TIMES_END) {
        times.copy_from_slice(&times_bytes(header));
    }
}

/// A batch encoded and checksummed, waiting for its base offset, with its header as
/// written (so an appender need not parse back what it just encoded).
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub header: BatchHeader,
}

impl EncodedBatch {
    /// Gives the batch its base offset, in the bytes and the header alike.
    pub fn set_base_offset(&mut self, base_offset: u64) {
        set_base_offset(&mut self.bytes, base_offset);
        self.header.base_offset = base_offset;
    }
}

/// What an encoder needs besides the records.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// The append time: default timestamp and the base of every TTL.
    pub now_ms: i64,
    /// TTL for records that carry none.
    pub default_ttl_ms: Option<u64>,
    pub compression: Compression,
    /// Largest id + key + value + headers of one record.
    pub max_message_bytes: u64,
    /// The topic's priority levels: a record's priority must be below it (0 and 1
    /// both allow only priority 0).
    pub priority_levels: u8,
}

/// Encodes records into one batch with base offset 0 (set it with [`set_base_offset`]).
/// Fails with `TooLarge` naming the first record over `max_message_bytes`, or the
/// batch if it would exceed [`BATCH_BYTES_MAX`]. The records are anything that holds
/// a [`NewRecord`] (a client's own record type, say), so a caller need not copy them
/// into a `Vec<NewRecord>` first.
pub fn encode_batch<R: AsRef<NewRecord>>(
    records: &[R],
    options: &EncodeOptions,
) -> Result<EncodedBatch, crate::Error> {
    encode_batch_into(records, options, Vec::new())
}

/// [`encode_batch`] into `buffer`: emptied first, its allocation reused when large
/// enough (an encoder of many batches hands back the buffers of batches already sent,
/// rather than asking the allocator for a fresh ~100 KB one per batch).
pub fn encode_batch_into<R: AsRef<NewRecord>>(
    records: &[R],
    options: &EncodeOptions,
    buffer: Vec<u8>,
) -> Result<EncodedBatch, crate::Error> {
    let record_count = u32::try_from(records.len())
        .ok()
        .filter(|&n| n > 0 && n <= BATCH_RECORDS_MAX)
        .ok_or_else(|| {
            crate::Error::invalid(format!(
                "a batch must hold 1..={BATCH_RECORDS_MAX} records, not {}",
                records.len()
            ))
        })?;
    let mut payload_total = 0u64;
    for (index, record) in records.iter().map(AsRef::as_ref).enumerate() {
        let size = record.payload_bytes();
        if size > options.max_message_bytes {
            return Err(crate::Error::TooLarge {
                what: format!("message {index}"),
                size,
                limit: options.max_message_bytes,
                limit_name: "max_message_bytes",
            });
        }
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return Err(crate::Error::invalid(format!(
                "message {index} has {} headers, over the limit of {RECORD_HEADERS_MAX}",
                record.headers.len()
            )));
        }
        if let Some(id) = &record.id
            && !(1..=MESSAGE_ID_BYTES_MAX).contains(&id.len())
        {
            return Err(crate::Error::invalid(format!(
                "message {index} has an id of {} bytes; ids are 1 to {MESSAGE_ID_BYTES_MAX} bytes",
                id.len()
            )));
        }
        if record.deliver_at_ms.is_some() && record.delay_ms.is_some() {
            return Err(crate::Error::invalid(format!(
                "message {index} has both deliver_at_ms and delay_ms; set at most one"
            )));
        }
        if record.delay_ms.is_some_and(|d| d > i64::MAX as u64) {
            return Err(crate::Error::invalid(format!(
                "message {index} has a delay_ms over i64::MAX"
            )));
        }
        let levels = options.priority_levels.max(1);
        if record.priority >= levels {
            return Err(crate::Error::invalid(format!(
                "message {index} has priority {}, but the topic has {levels} priority level(s) (priorities 0..={}); create or alter the topic with more priority_levels (at most {PRIORITY_LEVELS_MAX})",
                record.priority,
                levels - 1
            )));
        }
        payload_total += size + 32 + 10 * record.headers.len() as u64;
    }
    if payload_total + HEADER_BYTES as u64 > BATCH_BYTES_MAX {
        return Err(crate::Error::TooLarge {
            what: "the batch".into(),
            size: payload_total,
            limit: BATCH_BYTES_MAX,
            limit_name: "BATCH_BYTES_MAX",
        });
    }

    let timestamp = |record: &NewRecord| record.timestamp_ms.unwrap_or(options.now_ms);
    let first_timestamp_ms = timestamp(records[0].as_ref());
    let mut max_timestamp_ms = first_timestamp_ms;
    let mut max_expiry_ms = i64::MIN;

    let mut bytes = buffer;
    bytes.clear();
    bytes.reserve(HEADER_BYTES + payload_total as usize);
    bytes.resize(HEADER_BYTES, 0);
    // The id a record would have if it followed the one before (see RECORD_ID_FOLLOWS),
    // as a big-endian u128: compared as one number, not as bytes.
    let mut follower: Option<u128> = None;
    for (delta, record) in records.iter().map(AsRef::as_ref).enumerate() {
        let ts = timestamp(record);
        max_timestamp_ms = max_timestamp_ms.max(ts);
        // A TTL of 0 on a record means "never expires", overriding the default.
        let ttl = record
            .ttl_ms
            .or(options.default_ttl_ms)
            .filter(|&ttl| ttl > 0);
        let expiry = ttl.map(|ttl| {
            options
                .now_ms
                .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
        });
        max_expiry_ms = max_expiry_ms.max(expiry.unwrap_or(NEVER_EXPIRES));

        let mut attributes = 0u8;
        if record.key.is_some() {
            attributes |= RECORD_HAS_KEY;
        }
        if expiry.is_some() {
            attributes |= RECORD_HAS_EXPIRY;
        }
        let deliver_at = record.deliver_at(options.now_ms);
        if deliver_at.is_some() {
            attributes |= RECORD_HAS_DELIVER_AT;
        }
        if record.priority > 0 {
            attributes |= RECORD_HAS_PRIORITY;
        }
        // An id that counts on from the previous record's is not written out.
        let id = record
            .id
            .as_deref()
            .and_then(|id| <[u8; 16]>::try_from(id).ok())
            .map(u128::from_be_bytes);
        let follows = id.is_some() && id == follower;
        follower = id.and_then(id_after);
        let written_id = record.id.as_ref().filter(|_| !follows);
        if follows {
            attributes |= RECORD_ID_FOLLOWS;
        } else if record.id.is_some() {
            attributes |= RECORD_HAS_ID;
        }
        // The record's length comes first: the fixed part's length is summed from its
        // fields, then everything is written straight into the batch.
        let ts_delta = zigzag(ts.wrapping_sub(first_timestamp_ms));
        let expiry_delta = expiry.map(|e| zigzag(e.wrapping_sub(first_timestamp_ms)));
        let deliver_delta = deliver_at.map(|d| zigzag(d.wrapping_sub(first_timestamp_ms)));
        let fixed_len = 1
            + varint_len(delta as u64)
            + varint_len(ts_delta)
            + expiry_delta.map_or(0, varint_len)
            + deliver_delta.map_or(0, varint_len)
            + usize::from(record.priority > 0)
            + written_id.map_or(0, |id| varint_len(id.len() as u64) + id.len())
            + record
                .key
                .as_ref()
                .map_or(0, |key| varint_len(key.len() as u64));
        let mut tail_len = record.key.as_ref().map_or(0, |k| k.len());
        tail_len += varint_len(record.value.len() as u64) + record.value.len();
        tail_len += varint_len(record.headers.len() as u64);
        for header in &record.headers {
            tail_len += varint_len(header.key.len() as u64) + header.key.len();
            tail_len += varint_len(header.value.len() as u64) + header.value.len();
        }
        put_varint(&mut bytes, (fixed_len + tail_len) as u64);
        let fixed_at = bytes.len();
        bytes.push(attributes);
        put_varint(&mut bytes, delta as u64);
        put_varint(&mut bytes, ts_delta);
        if let Some(expiry_delta) = expiry_delta {
            put_varint(&mut bytes, expiry_delta);
        }
        if let Some(deliver_delta) = deliver_delta {
            put_varint(&mut bytes, deliver_delta);
        }
        if record.priority > 0 {
            bytes.push(record.priority);
        }
        if let Some(id) = written_id {
            put_varint(&mut bytes, id.len() as u64);
            bytes.extend_from_slice(id);
        }
        if let Some(key) = &record.key {
            put_varint(&mut bytes, key.len() as u64);
        }
        debug_assert_eq!(bytes.len() - fixed_at, fixed_len);
        if let Some(key) = &record.key {
            bytes.extend_from_slice(key);
        }
        put_varint(&mut bytes, record.value.len() as u64);
        bytes.extend_from_slice(&record.value);
        put_varint(&mut bytes, record.headers.len() as u64);
        for header in &record.headers {
            put_varint(&mut bytes, header.key.len() as u64);
            bytes.extend_from_slice(header.key.as_bytes());
            put_varint(&mut bytes, header.value.len() as u64);
            bytes.extend_from_slice(&header.value);
        }
    }

    let uncompressed_length = bytes.len() - HEADER_BYTES;
    if options.compression == Compression::Zstd {
        let compressed = zstd::bulk::compress(&bytes[HEADER_BYTES..], ZSTD_LEVEL)
            .map_err(|e| crate::Error::io("compressing a batch with zstd", e))?;
        bytes.truncate(HEADER_BYTES);
        bytes.extend_from_slice(&compressed);
    }
    let records_length = bytes.len() - HEADER_BYTES;
    let batch_length = bytes.len();
    if batch_length as u64 > BATCH_BYTES_MAX {
        return Err(crate::Error::TooLarge {
            what: "the encoded batch".into(),
            size: batch_length as u64,
            limit: BATCH_BYTES_MAX,
            limit_name: "BATCH_BYTES_MAX",
        });
    }

    let header = &mut bytes[..HEADER_BYTES];
    header[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&(batch_length as u32).to_le_bytes());
    header[VERSION_AT] = FORMAT_VERSION;
    header[ATTRIBUTES_AT] = options.compression.code();
    header[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
        .copy_from_slice(&(record_count - 1).to_le_bytes());
    header[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&record_count.to_le_bytes());
    header[FIRST_TIMESTAMP_AT..FIRST_TIMESTAMP_AT + 8]
        .copy_from_slice(&first_timestamp_ms.to_le_bytes());
    header[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp_ms.to_le_bytes());
    header[MAX_EXPIRY_AT..MAX_EXPIRY_AT + 8].copy_from_slice(&max_expiry_ms.to_le_bytes());
    header[RECORDS_LENGTH_AT..RECORDS_LENGTH_AT + 4]
        .copy_from_slice(&(records_length as u32).to_le_bytes());
    header[UNCOMPRESSED_LENGTH_AT..UNCOMPRESSED_LENGTH_AT + 4]
        .copy_from_slice(&(uncompressed_length as u32).to_le_bytes());
    let crc = compute_crc(&bytes);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());

    let header = BatchHeader {
        batch_length: batch_length as u32,
        base_offset: 0,
        crc,
        compression: options.compression,
        last_offset_delta: record_count - 1,
        record_count,
        first_timestamp_ms,
        max_timestamp_ms,
        max_expiry_ms,
        records_length: records_length as u32,
        uncompressed_length: uncompressed_length as u32,
    };
    // Paired with the reader's check: what is handed back is what was written.
    debug_assert_eq!(BatchHeader::parse(&bytes).ok(), Some(header));
    Ok(EncodedBatch { bytes, header })
}

pub use records::{Mark, RawHeaders, RawRecord, RecordIter, RecordView, decode_records};

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[inline]
fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// Appends `value` as an unsigned LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    // Most lengths and deltas fit one byte.
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint: the value and the bytes it used, or `None` if the
/// bytes end first or it is longer than 10 bytes / overflows u64.
#[inline]
pub fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    varint_at(bytes, 0, bytes.len())
}

/// [`get_varint`] of `bytes[at..end]` (`None` when that range is not in `bytes`), for
/// the record walks: most lengths and deltas fit one byte, and the offset deltas of a
/// batch past its 128th record (and the lengths of records of 128 bytes or more) two.
/// Both are read inline, with the walk's position in a register; the rest out of line.
#[inline(always)]
pub fn varint_at(bytes: &[u8], at: usize, end: usize) -> Option<(u64, usize)> {
    if at < end && end <= bytes.len() {
        let low = bytes[at];
        if low < 0x80 {
            return Some((u64::from(low), 1));
        }
        if at + 1 < end {
            let high = bytes[at + 1];
            if high < 0x80 {
                return Some((u64::from(low & 0x7f) | u64::from(high) << 7, 2));
            }
        }
    }
    long_varint_at(bytes, at, end)
}

/// [`varint_at`] of three bytes or more, or none (truncated, malformed).
#[inline(never)]
fn long_varint_at(bytes: &[u8], at: usize, end: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.get(at..end)?.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        if index == 9 && low > 1 {
            return None;
        }
        value |= low << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

/// Parses, CRC-checks and decodes the batch at the start of `bytes`, returning its
/// header, its records and its length. The fuzz target's entry point: any input must
/// give `Ok` or `Err`, never a panic.
pub fn decode_batch(bytes: &Bytes) -> Result<(BatchHeader, Vec<Record>), FormatError> {
    let header = BatchHeader::parse(bytes)?;
    let length = header.batch_length as usize;
    if bytes.len() < length {
        return Err(FormatError::Incomplete {
            needed: length as u64,
        });
    }
    let batch = bytes.slice(..length);
    if !verify_crc(&batch, &header) {
        return Err(invalid("CRC mismatch"));
    }
    let records = decode_records(&batch, &header)?;
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> EncodeOptions {
        EncodeOptions {
            now_ms: 1_700_000_000_000,
            default_ttl_ms: None,
            compression: Compression::None,
            max_message_bytes: 1 << 20,
            priority_levels: 10,
        }
    }

    fn sample_records() -> Vec<NewRecord> {
        vec![
            NewRecord {
                key: Some(Bytes::from_static(b"user-1")),
                value: Bytes::from_static(b"hello"),
                headers: vec![Header {
                    key: "trace".into(),
                    value: Bytes::from_static(b"abc"),
                }],
                timestamp_ms: Some(1_600_000_000_000),
                ttl_ms: Some(60_000),
                id: Some(Bytes::from_static(b"evt-0001")),
                deliver_at_ms: Some(1_700_000_050_000),
                delay_ms: None,
                priority: 9,
            },
            NewRecord::value(Bytes::from_static(b"")),
            NewRecord {
                value: Bytes::from(vec![7u8; 300]),
                timestamp_ms: Some(1_500_000_000_000),
                delay_ms: Some(30_000),
                ..NewRecord::default()
            },
        ]
    }

    /// A reused buffer (holding an earlier batch, with room to spare, or too small)
    /// encodes byte for byte what a fresh one does, compressed or not.
    /// A TTL so long the expiry saturates at the end of time reads back as no expiry
    /// (never), not as an expiry in the year 292,277,026.
    #[test]
    fn a_ttl_that_saturates_reads_back_as_never_expiring() {
        let records = vec![NewRecord {
            ttl_ms: Some(u64::MAX),
            ..NewRecord::value(&b"forever"[..])
        }];
        let encoded = encode_batch(&records, &options()).unwrap();
        let (header, decoded) = decode_batch(&Bytes::from(encoded.bytes)).unwrap();
        assert_eq!(header.max_expiry_ms, NEVER_EXPIRES);
        assert_eq!(decoded[0].expires_at_ms, None);
    }

    /// An iterator rebuilt at a mark taken before any record reads on exactly as the
    /// one it was taken from: the records after it, ids that count up included (their
    /// previous id is in the mark), compressed or not. A mark of other bytes reads as
    /// an error, never a panic.
    #[test]
    fn an_iterator_goes_on_from_a_mark() {
        let records: Vec<NewRecord> = (0..50u128)
            .map(|i| NewRecord {
                id: (i % 17 != 5).then(|| Bytes::copy_from_slice(&(1000 + i).to_be_bytes())),
                key: (i % 3 == 0).then(|| Bytes::from(vec![b'k'; i as usize])),
                ..NewRecord::value(vec![i as u8; i as usize])
            })
            .collect();
        for compression in [Compression::None, Compression::Zstd] {
            let options = EncodeOptions {
                compression,
                ..options()
            };
            let encoded = encode_batch(&records, &options).unwrap();
            let bytes = Bytes::from(encoded.bytes);
            let header = encoded.header;
            let all = decode_records(&bytes, &header).unwrap();
            let mut walk = RecordIter::new(&bytes, &header).unwrap();
            assert_eq!(
                RecordIter::stored_section(&bytes, &header).is_some(),
                compression == Compression::None
            );
            for at in 0..=all.len() {
                let mark = walk.mark();
                let rest: Vec<Record> =
                    RecordIter::over_section_at(walk.section().clone(), &header, mark)
                        .collect::<Result<_, _>>()
                        .unwrap();
                assert_eq!(rest, all[at..], "{compression:?} from record {at}");
                walk.next();
            }
            let mark = walk.mark();
            let short = walk.section().slice(..10);
            let mut elsewhere = RecordIter::over_section_at(short, &header, mark);
            assert!(matches!(elsewhere.next(), Some(Err(_))), "{compression:?}");
            assert!(elsewhere.next().is_none());
        }
    }

    #[test]
    fn a_reused_buffer_encodes_what_a_fresh_one_does() {
        for compression in [Compression::None, Compression::Zstd] {
            let options = EncodeOptions {
                compression,
                ..options()
            };
            let fresh = encode_batch(&sample_records(), &options).unwrap();
            let mut dirty = vec![0xa5u8; 10_000];
            dirty.truncate(7_000);
            for buffer in [dirty, vec![1, 2, 3], Vec::new()] {
                let reused = encode_batch_into(&sample_records(), &options, buffer).unwrap();
                assert_eq!(reused.bytes, fresh.bytes, "{compression:?}");
                assert_eq!(reused.header, fresh.header);
            }
        }
    }

    /// A header key that is not UTF-8 (written by no tidelog, but behind a valid CRC):
    /// the view of its record is read (a filter may compare it as bytes and pass over
    /// it), and making a `Record` of it is an error, never a lossy key.
    #[test]
    fn a_header_key_that_is_not_utf8_is_refused_when_its_record_is_made() {
        let records = vec![
            NewRecord {
                headers: vec![Header {
                    key: "kind".into(),
                    value: Bytes::from_static(b"a"),
                }],
                ..NewRecord::value(Bytes::from_static(b"first"))
            },
            NewRecord::value(Bytes::from_static(b"second")),
        ];
        let mut encoded = encode_batch(&records, &options()).unwrap();
        let at = encoded.bytes.windows(4).position(|w| w == b"kind").unwrap();
        encoded.bytes[at] = 0xff;
        let crc = compute_crc(&encoded.bytes);
        encoded.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let bytes = Bytes::from(encoded.bytes);
        let header = BatchHeader::parse(&bytes).unwrap();
        let mut iter = RecordIter::new(&bytes, &header).unwrap();
        let view = iter.next_view().unwrap().unwrap();
        assert_eq!(iter.raw(&view).headers().value_of("kind"), None);
        let error = iter.record(&view).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
        // The check without making the record says the same.
        let error = iter.check_headers(&view).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
        // The record after it is fine.
        let next = iter.next_view().unwrap().unwrap();
        assert_eq!(iter.check_headers(&next), Ok(()));
        assert_eq!(
            iter.record(&next).unwrap().value,
            Bytes::from_static(b"second")
        );
        // Over its section again, the iterator reads the same records from the first.
        let mut again = RecordIter::over_section(iter.section().clone(), &header);
        let first = again.next_view().unwrap().unwrap();
        assert_eq!(first, view);
        assert_eq!(again.raw(&first).value, b"first");
        // Decoding the whole batch refuses it.
        assert!(decode_batch(&bytes).is_err());
    }

    fn round_trip(compression: Compression) {
        let mut options = options();
        options.compression = compression;
        let records = sample_records();
        let mut encoded = encode_batch(&records, &options).unwrap();
        set_base_offset(&mut encoded.bytes, 42);
        let bytes = Bytes::from(encoded.bytes);
        let (header, decoded) = decode_batch(&bytes).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(header.compression, compression);
        assert_eq!(header.first_timestamp_ms, 1_600_000_000_000);
        assert_eq!(header.max_timestamp_ms, options.now_ms);
        assert_eq!(header.max_expiry_ms, NEVER_EXPIRES);
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0].offset, 42);
        assert_eq!(decoded[0].key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(decoded[0].value, Bytes::from_static(b"hello"));
        assert_eq!(decoded[0].headers, records[0].headers);
        assert_eq!(decoded[0].expires_at_ms, Some(options.now_ms + 60_000));
        assert_eq!(decoded[1].key, None);
        assert_eq!(decoded[1].timestamp_ms, options.now_ms);
        assert_eq!(decoded[1].expires_at_ms, None);
        assert_eq!(decoded[2].timestamp_ms, 1_500_000_000_000);
        assert_eq!(decoded[2].value.len(), 300);
        assert_eq!(decoded[0].id.as_deref(), Some(&b"evt-0001"[..]));
        assert_eq!(decoded[0].deliver_at_ms, Some(1_700_000_050_000));
        assert_eq!(decoded[0].priority, 9);
        assert_eq!(
            (
                decoded[1].id.clone(),
                decoded[1].deliver_at_ms,
                decoded[1].priority
            ),
            (None, None, 0)
        );
        // A delay counts from the append time.
        assert_eq!(decoded[2].deliver_at_ms, Some(options.now_ms + 30_000));
    }

    #[test]
    fn ids_delays_and_priorities_are_checked_before_encoding() {
        let one = |record: NewRecord, levels: u8| {
            let options = EncodeOptions {
                priority_levels: levels,
                ..options()
            };
            encode_batch(&[record], &options)
        };
        let with = |f: fn(&mut NewRecord)| {
            let mut record = NewRecord::value("v");
            f(&mut record);
            record
        };
        for (what, record, levels) in [
            ("empty id", with(|r| r.id = Some(Bytes::new())), 10),
            (
                "129-byte id",
                with(|r| r.id = Some(Bytes::from(vec![1u8; 129]))),
                10,
            ),
            (
                "both deliver_at and delay",
                with(|r| {
                    r.deliver_at_ms = Some(1);
                    r.delay_ms = Some(1);
                }),
                10,
            ),
            ("priority at the levels", with(|r| r.priority = 3), 3),
            ("priority without levels", with(|r| r.priority = 1), 0),
        ] {
            let error = one(record, levels).unwrap_err();
            assert!(
                matches!(error, crate::Error::InvalidArgument(_)),
                "{what}: {error}"
            );
        }
        one(with(|r| r.id = Some(Bytes::from(vec![1u8; 128]))), 0).unwrap();
        one(with(|r| r.priority = 2), 3).unwrap();
    }

    #[test]
    fn uncompressed_batch_round_trips() {
        round_trip(Compression::None);
    }

    #[test]
    fn zstd_batch_round_trips() {
        round_trip(Compression::Zstd);
    }

    #[test]
    fn uncompressed_values_point_into_the_batch_buffer() {
        let encoded = encode_batch(&sample_records(), &options()).unwrap();
        let bytes = Bytes::from(encoded.bytes);
        let (_, records) = decode_batch(&bytes).unwrap();
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(range.contains(&(records[2].value.as_ptr() as usize)));
    }

    #[test]
    fn default_ttl_sets_max_expiry_when_every_record_expires() {
        let mut options = options();
        options.default_ttl_ms = Some(1000);
        let encoded = encode_batch(&sample_records(), &options).unwrap();
        let header = BatchHeader::parse(&encoded.bytes).unwrap();
        assert_eq!(header.max_expiry_ms, options.now_ms + 60_000);
        assert!(!header.all_expired(options.now_ms + 59_999));
        assert!(header.all_expired(options.now_ms + 60_000));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let encoded = encode_batch(&sample_records(), &options()).unwrap();
        for bit in 0..encoded.bytes.len() * 8 {
            let mut damaged = encoded.bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = decode_batch(&Bytes::from(damaged));
            // The base offset is outside the CRC by design: readers check it against
            // the offset they expect. Every other bit must make decoding fail.
            let in_base_offset = (BASE_OFFSET_AT..BASE_OFFSET_AT + 8).contains(&(bit / 8));
            if !in_base_offset {
                assert!(result.is_err(), "flip of bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncation_is_incomplete_not_invalid() {
        let encoded = encode_batch(&sample_records(), &options()).unwrap();
        for len in 0..encoded.bytes.len() {
            let result = decode_batch(&Bytes::copy_from_slice(&encoded.bytes[..len]));
            assert!(
                matches!(result, Err(FormatError::Incomplete { .. })),
                "truncated to {len}: {result:?}"
            );
        }
    }

    #[test]
    fn oversized_message_is_refused_with_its_limit() {
        let mut options = options();
        options.max_message_bytes = 10;
        let error = encode_batch(&[NewRecord::value(vec![0u8; 11])], &options).unwrap_err();
        assert!(matches!(
            error,
            crate::Error::TooLarge {
                size: 11,
                limit: 10,
                ..
            }
        ));
        assert!(encode_batch::<NewRecord>(&[], &options).is_err());
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_input() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value));
            assert_eq!(get_varint(&out), Some((value, out.len())));
        }
        assert_eq!(get_varint(&[0x80; 11]), None);
        assert_eq!(
            get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            None
        );
        for value in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    proptest::proptest! {
        /// The varint reader (one- and two-byte fast paths, the rest out of line) reads
        /// any bytes as a plain LEB128 model does: the same value and length, or
        /// `None` for the same inputs (truncated, over 10 bytes, over u64), and a
        /// varint that must end before `end` as the model reads the bytes up to it.
        #[test]
        fn varints_read_as_leb128_defines_them(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![0u8..0x80, 0x80u8..=0xff, proptest::strategy::Just(0x80u8)],
                0..13,
            ),
            at in 0usize..15,
            end in 0usize..15,
        ) {
            // LEB128 as the format defines it, written apart from the reader: up to
            // the first byte without the continuation bit, at most 10 bytes, a value
            // that fits 64 bits.
            let model = |bytes: &[u8]| {
                let len = bytes.iter().position(|&byte| byte < 0x80)? + 1;
                if len > 10 {
                    return None;
                }
                let value = bytes[..len]
                    .iter()
                    .rev()
                    .fold(0u128, |value, &byte| value << 7 | u128::from(byte & 0x7f));
                u64::try_from(value).ok().map(|value| (value, len))
            };
            proptest::prop_assert_eq!(get_varint(&bytes), model(&bytes));
            // Within a record: only bytes[at..end] count, and a range outside the
            // bytes reads nothing.
            let inside = bytes.get(at..end).and_then(model);
            proptest::prop_assert_eq!(varint_at(&bytes, at, end), inside);
        }
    }

    proptest::proptest! {
        /// Records whose lengths, offset deltas and header fields cross the one- and
        /// two-byte varint boundaries (127/128, 16383/16384) read back as written, in
        /// place and decoded, and each header is found by name as a linear search finds
        /// it (the reader's fast paths for two-byte varints and short key comparisons).
        #[test]
        fn records_round_trip_across_varint_sizes(
            values in proptest::collection::vec(
                proptest::prop_oneof![0usize..200, 16_300usize..16_500, 100usize..140],
                1..3,
            ),
            count in 1usize..400,
            names in proptest::collection::vec("[a-z.-]{0,20}", 0..4),
            probe in "[a-z.-]{0,20}",
            flip in 0usize..20,
        ) {
            // Names that differ from a header's in one byte only, anywhere in it.
            let near: Vec<String> = names
                .iter()
                .filter(|name| !name.is_empty())
                .map(|name| {
                    let mut bytes = name.clone().into_bytes();
                    let at = flip % bytes.len();
                    bytes[at] = b'X';
                    String::from_utf8(bytes).unwrap()
                })
                .collect();
            let records: Vec<NewRecord> = (0..count)
                .map(|i| NewRecord {
                    value: Bytes::from(vec![i as u8; values[i % values.len()]]),
                    headers: names
                        .iter()
                        .enumerate()
                        .map(|(n, name)| Header {
                            key: name.clone(),
                            value: Bytes::from(format!("{i}-{n}")),
                        })
                        .collect(),
                    ..NewRecord::default()
                })
                .collect();
            let encoded = encode_batch(&records, &options()).unwrap();
            let bytes = Bytes::from(encoded.bytes);
            let header = BatchHeader::parse(&bytes).unwrap();
            let mut iter = RecordIter::new(&bytes, &header).unwrap();
            let mut read = 0;
            while let Some(view) = iter.next_view() {
                let view = view.unwrap();
                let record = iter.record(&view).unwrap();
                let written = &records[read];
                proptest::prop_assert_eq!(record.offset, read as u64);
                proptest::prop_assert_eq!(&record.value, &written.value);
                proptest::prop_assert_eq!(&record.headers, &written.headers);
                for name in names.iter().chain(&near).chain([&probe]) {
                    let expected = written.headers.iter().find(|h| &h.key == name).map(|h| h.value.as_ref());
                    proptest::prop_assert_eq!(iter.raw(&view).headers().value_of(name), expected);
                }
                read += 1;
            }
            proptest::prop_assert_eq!(read, count);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_batch(&Bytes::from(data));
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_header_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), count in 1u32..8) {
            // A well-formed header with a correct CRC over random record bytes reaches
            // the record decoder, which must reject garbage without panicking.
            let mut bytes = vec![0u8; HEADER_BYTES];
            bytes.extend_from_slice(&body);
            let len = bytes.len() as u32;
            bytes[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_le_bytes());
            bytes[VERSION_AT] = FORMAT_VERSION;
            bytes[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&(count - 1).to_le_bytes());
            bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
            bytes[RECORDS_LENGTH_AT..RECORDS_LENGTH_AT + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
            bytes[UNCOMPRESSED_LENGTH_AT..UNCOMPRESSED_LENGTH_AT + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
            let crc = compute_crc(&bytes);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_batch(&Bytes::from(bytes));
        }
    }
}
