//! Reading the records of a batch: [`RecordIter`] parses and validates each record in
//! place ([`RecordView`], [`RawRecord`]) and makes a [`Record`] only when asked.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use super::{
    BatchHeader, Compression, FormatError, HEADER_BYTES, Header, NEVER_EXPIRES,
    RECORD_ATTRIBUTES_KNOWN, RECORD_HAS_DELIVER_AT, RECORD_HAS_EXPIRY, RECORD_HAS_ID,
    RECORD_HAS_KEY, RECORD_HAS_PRIORITY, RECORD_ID_FOLLOWS, Record, get_varint, invalid, next_id,
    unzigzag, varint_at,
};
use crate::limits::{MESSAGE_ID_BYTES_MAX, PRIORITY_LEVELS_MAX, RECORD_HEADERS_MAX};

/// Decodes the records of a whole, CRC-checked batch. `batch` is exactly the batch's
/// bytes; for an uncompressed batch every key and value is a slice of it (no copy).
/// Records are validated as they are read: lengths against what remains, UTF-8 header
/// keys, offset deltas in order and within the header's range.
pub fn decode_records(batch: &Bytes, header: &BatchHeader) -> Result<Vec<Record>, FormatError> {
    let mut records = Vec::with_capacity(header.record_count.min(4096) as usize);
    for record in RecordIter::new(batch, header)? {
        records.push(record?);
    }
    Ok(records)
}

/// Iterates over the records of one batch (see [`decode_records`]).
pub struct RecordIter {
    section: Bytes,
    position: usize,
    remaining: u32,
    previous_delta: Option<u64>,
    header: BatchHeader,
    /// The id the next record has if it carries [`RECORD_ID_FOLLOWS`].
    follower: Option<[u8; 16]>,
    /// Where the [`Record`]s made of views get the ids that are not stored (a
    /// [`RECORD_ID_FOLLOWS`] run): one allocation for many ids, not one each.
    followed: RefCell<BytesMut>,
}

impl RecordIter {
    pub fn new(batch: &Bytes, header: &BatchHeader) -> Result<RecordIter, FormatError> {
        if batch.len() != header.batch_length as usize {
            return Err(FormatError::Incomplete {
                needed: u64::from(header.batch_length),
            });
        }
        let stored = batch.slice(HEADER_BYTES..);
        let section = match header.compression {
            Compression::None => stored,
            Compression::Zstd => {
                let capacity = header.uncompressed_length as usize;
                let plain = zstd::bulk::decompress(&stored, capacity)
                    .map_err(|e| invalid(format!("zstd records section does not decode: {e}")))?;
                if plain.len() != capacity {
                    return Err(invalid(format!(
                        "zstd records section decodes to {} bytes, header says {capacity}",
                        plain.len()
                    )));
                }
                Bytes::from(plain)
            }
        };
        Ok(RecordIter::over_section(section, header))
    }

    /// An iterator over `section`, the records section of the batch whose header is
    /// `header` as [`RecordIter::section`] returned it (decompressed): the records
    /// again from the first, without a second CRC check or decompression. Every record
    /// is validated as it is read, whatever `section` holds.
    pub fn over_section(section: Bytes, header: &BatchHeader) -> RecordIter {
        RecordIter {
            section,
            position: 0,
            remaining: header.record_count,
            previous_delta: None,
            header: *header,
            follower: None,
            followed: RefCell::new(BytesMut::new()),
        }
    }

    /// The records section this iterator reads (decompressed when the batch is zstd),
    /// for [`RecordIter::over_section`].
    pub fn section(&self) -> &Bytes {
        &self.section
    }

    /// The records section of `batch` (exactly the batch's bytes, as for
    /// [`RecordIter::new`]) when it is stored as it is read: a slice of `batch`, no
    /// copy. `None` for a compressed batch (its section is made by decompressing), or
    /// bytes too short to hold the header.
    pub fn stored_section(batch: &Bytes, header: &BatchHeader) -> Option<Bytes> {
        (header.compression == Compression::None && batch.len() >= HEADER_BYTES)
            .then(|| batch.slice(HEADER_BYTES..))
    }

    /// Where this iterator is: what [`RecordIter::over_section_at`] needs to go on from
    /// here later, over the same section, without reading the records before again.
    #[inline]
    pub fn mark(&self) -> Mark {
        Mark {
            position: self.position,
            remaining: self.remaining,
            previous_delta: self.previous_delta,
            follower: self.follower,
        }
    }

    /// [`RecordIter::over_section`] from `mark`, which an iterator over the same
    /// `section` of the batch whose header is `header` returned ([`RecordIter::mark`]):
    /// the records from there on, each validated as it is read. A mark taken over
    /// other bytes reads as a malformed batch (an error, never a panic).
    pub fn over_section_at(section: Bytes, header: &BatchHeader, mark: Mark) -> RecordIter {
        let mut records = RecordIter::over_section(section, header);
        if mark.position > records.section.len() || mark.remaining > header.record_count {
            // Not a mark of this section: the next record is an error.
            records.position = records.section.len();
            records.remaining = 1;
            return records;
        }
        records.position = mark.position;
        records.remaining = mark.remaining;
        records.previous_delta = mark.previous_delta;
        records.follower = mark.follower;
        records
    }

    /// Parses and validates the next record in place: every check [`RecordIter::next`]
    /// makes, with the variable-length fields as spans of the records section and
    /// nothing copied or allocated. [`RecordIter::record`] makes a [`Record`] of it,
    /// [`RecordIter::raw`] lends its bytes (for a filter that may skip it).
    #[inline(always)]
    fn next_view_inner(&mut self) -> Result<RecordView, FormatError> {
        let record_length = self.varint()? as usize;
        let end = self
            .position
            .checked_add(record_length)
            .filter(|&end| end <= self.section.len())
            .ok_or_else(|| invalid("record length runs past the records section"))?;
        let attributes = self.byte()?;
        if attributes & !RECORD_ATTRIBUTES_KNOWN != 0 {
            return Err(invalid(format!(
                "unknown record attributes {attributes:#x}"
            )));
        }
        let offset_delta = self.varint()?;
        if offset_delta > u64::from(self.header.last_offset_delta)
            || self.previous_delta.is_some_and(|prev| offset_delta <= prev)
        {
            return Err(invalid(format!(
                "record offset delta {offset_delta} is out of order"
            )));
        }
        self.previous_delta = Some(offset_delta);
        let first = self.header.first_timestamp_ms;
        let timestamp_ms = first.wrapping_add(unzigzag(self.varint()?));
        let expires_at_ms = if attributes & RECORD_HAS_EXPIRY != 0 {
            // An expiry at the end of time (a TTL that saturated, or a client's way of
            // saying "never" on a topic with a default TTL) is no expiry.
            Some(first.wrapping_add(unzigzag(self.varint()?))).filter(|&at| at != NEVER_EXPIRES)
        } else {
            None
        };
        let deliver_at_ms = if attributes & RECORD_HAS_DELIVER_AT != 0 {
            Some(first.wrapping_add(unzigzag(self.varint()?)))
        } else {
            None
        };
        let priority = if attributes & RECORD_HAS_PRIORITY != 0 {
            let priority = self.byte()?;
            if priority == 0 || priority >= PRIORITY_LEVELS_MAX {
                return Err(invalid(format!(
                    "record priority {priority} is out of range"
                )));
            }
            priority
        } else {
            0
        };
        let follower = self.follower.take();
        let id = if attributes & RECORD_HAS_ID != 0 {
            if attributes & RECORD_ID_FOLLOWS != 0 {
                return Err(invalid("record has both a stored id and one that follows"));
            }
            let id = self.span(end)?;
            if !(1..=MESSAGE_ID_BYTES_MAX).contains(&id.len()) {
                return Err(invalid(format!(
                    "record id of {} bytes is out of range",
                    id.len()
                )));
            }
            self.follower = next_id(Some(&self.section[id.start..id.end]));
            Some(IdAt::Stored(id))
        } else if attributes & RECORD_ID_FOLLOWS != 0 {
            let id = follower.ok_or_else(|| {
                invalid("record id follows a record without a 16-byte id that can count up")
            })?;
            self.follower = next_id(Some(&id));
            Some(IdAt::Follows(id))
        } else {
            None
        };
        let key = if attributes & RECORD_HAS_KEY != 0 {
            Some(self.span(end)?)
        } else {
            None
        };
        let value = self.span(end)?;
        let header_count = self.varint()?;
        if header_count > u64::from(RECORD_HEADERS_MAX) {
            return Err(invalid(format!("{header_count} headers is over the limit")));
        }
        let headers_start = self.position;
        let mut header_bytes = 0;
        // Header keys are checked to be UTF-8 when a `Record` is made of the view
        // ([`RecordIter::record`]): a record a filter passes over is never decoded, so
        // its keys are compared as bytes and not checked.
        for _ in 0..header_count {
            let key = self.span(end)?;
            let value = self.span(end)?;
            header_bytes += key.len() + value.len();
        }
        if self.position != end {
            return Err(invalid("record length does not match its fields"));
        }
        let payload_bytes =
            (id.map_or(0, IdAt::len) + key.map_or(0, |k| k.len()) + value.len() + header_bytes)
                as u64;
        Ok(RecordView {
            offset: self.header.base_offset + offset_delta,
            timestamp_ms,
            expires_at_ms,
            deliver_at_ms,
            priority,
            payload_bytes,
            id,
            key,
            value,
            headers: Span {
                start: headers_start,
                end,
            },
            header_count: header_count as u32,
        })
    }

    /// The next record in place (see [`RecordView`]); after an error, `None`.
    #[inline]
    pub fn next_view(&mut self) -> Option<Result<RecordView, FormatError>> {
        if self.remaining == 0 {
            if self.position != self.section.len() {
                self.position = self.section.len();
                return Some(Err(invalid("bytes left over after the last record")));
            }
            return None;
        }
        self.remaining -= 1;
        let view = self.next_view_inner();
        if view.is_err() {
            // Stop after the first error: what follows cannot be trusted.
            self.remaining = 0;
            self.position = self.section.len();
        }
        Some(view)
    }

    /// The [`Record`] of a view this iterator returned: keys, values and header values
    /// are slices of the batch (no copy); header keys are copied into `String`s, and a
    /// key that is not UTF-8 is an error (the one check [`RecordIter::next_view`] leaves
    /// to this step).
    #[inline(always)]
    pub fn record(&self, view: &RecordView) -> Result<Record, FormatError> {
        let slice = |span: Span| self.section.slice(span.start..span.end);
        let headers = if view.header_count == 0 {
            Vec::new()
        } else {
            let mut raw = self.raw(view).headers;
            let mut headers = Vec::with_capacity(view.header_count as usize);
            for _ in 0..raw.left {
                let (Some(key), Some(value)) = (raw.field(), raw.field()) else {
                    return Err(invalid("record headers do not parse"));
                };
                let key =
                    std::str::from_utf8(key).map_err(|_| invalid("header key is not UTF-8"))?;
                headers.push(Header {
                    key: key.to_owned(),
                    value: self.section.slice_ref(value),
                });
            }
            headers
        };
        Ok(Record {
            offset: view.offset,
            timestamp_ms: view.timestamp_ms,
            expires_at_ms: view.expires_at_ms,
            key: view.key.map(slice),
            value: slice(view.value),
            headers,
            id: view.id.map(|id| match id {
                IdAt::Stored(span) => slice(span),
                IdAt::Follows(id) => {
                    let mut followed = self.followed.borrow_mut();
                    if followed.capacity() < id.len() {
                        // Room for the ids of the records left, which likely follow too.
                        let left = self.remaining as usize + 1;
                        followed.reserve(id.len() * left.min(4096));
                    }
                    followed.extend_from_slice(&id);
                    followed.split().freeze()
                }
            }),
            deliver_at_ms: view.deliver_at_ms,
            priority: view.priority,
        })
    }

    /// Checks what [`RecordIter::record`] checks beyond [`RecordIter::next_view`] (that
    /// the header keys are UTF-8, so [`RawHeaders`] reads every header), without making
    /// the record.
    pub fn check_headers(&self, view: &RecordView) -> Result<(), FormatError> {
        if view.header_count == 0 {
            return Ok(());
        }
        let read = self.raw(view).headers.count();
        if read != view.header_count as usize {
            return Err(invalid("header key is not UTF-8"));
        }
        Ok(())
    }

    /// The message id of a view this iterator returned, borrowed.
    pub fn id<'a>(&'a self, view: &'a RecordView) -> Option<&'a [u8]> {
        view.id.as_ref().map(|id| match id {
            IdAt::Stored(span) => &self.section[span.start..span.end],
            IdAt::Follows(id) => &id[..],
        })
    }

    /// The bytes of a view this iterator returned, borrowed.
    #[inline]
    pub fn raw<'a>(&'a self, view: &RecordView) -> RawRecord<'a> {
        let bytes = |span: Span| &self.section[span.start..span.end];
        RawRecord {
            key: view.key.map(bytes),
            value: bytes(view.value),
            headers: RawHeaders {
                bytes: bytes(view.headers),
                left: view.header_count,
            },
        }
    }

    #[inline(always)]
    fn byte(&mut self) -> Result<u8, FormatError> {
        let byte = *self
            .section
            .get(self.position)
            .ok_or_else(|| invalid("record truncated"))?;
        self.position += 1;
        Ok(byte)
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, FormatError> {
        let (value, used) = varint_at(&self.section, self.position, self.section.len())
            .ok_or_else(|| invalid("malformed varint"))?;
        self.position += used;
        Ok(value)
    }

    /// A varint length followed by that many bytes, all within `end`: their span.
    #[inline(always)]
    fn span(&mut self, end: usize) -> Result<Span, FormatError> {
        let length = self.varint()?;
        let stop = usize::try_from(length)
            .ok()
            .and_then(|len| self.position.checked_add(len))
            .filter(|&stop| stop <= end)
            .ok_or_else(|| invalid("field length runs past its record"))?;
        let span = Span {
            start: self.position,
            end: stop,
        };
        self.position = stop;
        Ok(span)
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let view = self.next_view()?;
        Some(view.and_then(|view| self.record(&view)))
    }
}

/// Where a [`RecordIter`] is in its records section, and what it carries from the
/// records before (the last offset delta, the id a following record counts up from):
/// enough to go on from there ([`RecordIter::over_section_at`]). A few words; it holds
/// no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    position: usize,
    remaining: u32,
    previous_delta: Option<u64>,
    follower: Option<[u8; 16]>,
}

/// Where a field lies in a batch's records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// Where a record's id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdAt {
    /// In the records section.
    Stored(Span),
    /// Not stored: the previous record's plus one ([`RECORD_ID_FOLLOWS`]).
    Follows([u8; 16]),
}

impl IdAt {
    fn len(self) -> usize {
        match self {
            IdAt::Stored(span) => span.len(),
            IdAt::Follows(id) => id.len(),
        }
    }
}

/// A record of a batch, validated but not decoded into a [`Record`]: its fixed fields,
/// and where its id, key, value and headers lie in the batch ([`RecordIter::raw`]).
/// Reads look at a view first and make a `Record` only of what they return, so what
/// they pass over (records before the read's start, expired ones, ones a filter skips)
/// costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub deliver_at_ms: Option<i64>,
    pub priority: u8,
    /// Id, key, value and header bytes, as [`Record::payload_bytes`] counts them.
    pub payload_bytes: u64,
    id: Option<IdAt>,
    key: Option<Span>,
    value: Span,
    /// The header entries, after their count.
    headers: Span,
    header_count: u32,
}

/// A record's key, value and headers as borrowed bytes of its batch.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: RawHeaders<'a>,
}

impl<'a> RawRecord<'a> {
    /// The headers in stored order, as (key, value).
    pub fn headers(&self) -> RawHeaders<'a> {
        self.headers
    }
}

/// The headers of a [`RawRecord`], read in place. Their lengths were validated when the
/// record was (within the record), so reading them cannot fail; their keys are not
/// known to be UTF-8 (see [`RecordIter::record`]): a key that is not, or bytes that do
/// not parse, end the iteration.
#[derive(Debug, Clone, Copy)]
pub struct RawHeaders<'a> {
    bytes: &'a [u8],
    left: u32,
}

impl<'a> RawHeaders<'a> {
    #[inline]
    fn field(&mut self) -> Option<&'a [u8]> {
        // Header keys and short values have one-byte lengths: no varint loop for them.
        let (length, used) = match self.bytes.first() {
            Some(&byte) if byte < 0x80 => (u64::from(byte), 1),
            _ => get_varint(self.bytes)?,
        };
        let stop = used.checked_add(usize::try_from(length).ok()?)?;
        let field = self.bytes.get(used..stop)?;
        self.bytes = &self.bytes[stop..];
        Some(field)
    }
}

impl<'a> RawHeaders<'a> {
    /// The value of the first header named `name`, comparing bytes (a key that is not
    /// UTF-8 equals no name).
    #[inline]
    pub fn value_of(mut self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        for _ in 0..self.left {
            let key = self.field()?;
            let value = self.field()?;
            if short_equal(key, name) {
                return Some(value);
            }
        }
        None
    }
}

/// `a == b` for the short byte strings header keys are, without a call to `memcmp` or
/// a byte loop (whose exit branch mispredicts once per header of every record a filter
/// reads): keys of 4 to 16 bytes are compared as two words that overlap in the middle.
#[inline(always)]
fn short_equal(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word8 =
        |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let word4 =
        |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or_default());
    match n {
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        _ => a == b,
    }
}

impl<'a> Iterator for RawHeaders<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let entry = (|| {
            let key = std::str::from_utf8(self.field()?).ok()?;
            Some((key, self.field()?))
        })();
        if entry.is_none() {
            self.left = 0;
        }
        entry
    }
}
