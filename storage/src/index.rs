//! The sparse offset index (`.index`) and time index (`.timeindex`) of a segment.
//!
//! Both are kept in memory while a segment is active and written whole when it is
//! sealed or the partition closes cleanly. Both files have the same 56-byte header,
//! then fixed-size entries; all integers little-endian:
//!
//! | offset | size | field            | meaning                                           |
//! |-------:|-----:|------------------|---------------------------------------------------|
//! |      0 |    4 | `magic`          | `TLIX` (offset index) or `TLTI` (time index)      |
//! |      4 |    2 | `version`        | 1                                                 |
//! |      6 |    2 | `entry_bytes`    | 8 (offset index) or 12 (time index)               |
//! |      8 |    8 | `base_offset`    | the segment's base offset                         |
//! |     16 |    8 | `log_bytes`      | length of the `.log` this index describes         |
//! |     24 |    8 | `next_offset`    | offset after the segment's last record            |
//! |     32 |    8 | `max_timestamp_ms` | largest record timestamp in the segment (`i64::MIN` if empty) |
//! |     40 |    8 | `max_expiry_ms`  | latest record expiry (`i64::MAX`: some never expire; `i64::MIN`: empty) |
//! |     48 |    4 | `entry_count`    | entries that follow                               |
//! |     52 |    4 | `crc`            | CRC-32 of bytes `[0, 52)` followed by all entries |
//!
//! Offset-index entry (8 bytes): `u32 relative_offset` (batch base offset minus the
//! segment's), `u32 position` (byte position of that batch in the `.log`).
//! Time-index entry (12 bytes): `i64 timestamp_ms` (the largest timestamp of every
//! batch up to and including this one), `u32 relative_offset` of the batch.
//! An entry is written for a batch when at least `INDEX_INTERVAL_BYTES` of log have
//! passed since the previous entry. An index whose `log_bytes` differs from the log's
//! length, or that fails any check, is rebuilt by scanning the log.

use crate::batch::FormatError;

pub const HEADER_BYTES: usize = 56;
pub const OFFSET_MAGIC: [u8; 4] = *b"TLIX";
pub const TIME_MAGIC: [u8; 4] = *b"TLTI";
const VERSION: u16 = 1;
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
pub use crate::limits::INDEX_ENTRIES_MAX;
/// Longest valid index file (a time index full of entries): nothing longer is read.
pub const INDEX_FILE_BYTES_MAX: u64 =
    HEADER_BYTES as u64 + TIME_ENTRY_BYTES as u64 * INDEX_ENTRIES_MAX as u64;
const _: () = assert!(OFFSET_ENTRY_BYTES <= TIME_ENTRY_BYTES);

/// A summary of a segment: what retention, time lookup and describe need without
/// reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: u64,
    pub log_bytes: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    pub max_expiry_ms: i64,
}

impl SegmentSummary {
    pub fn empty(base_offset: u64) -> Self {
        SegmentSummary {
            base_offset,
            log_bytes: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            max_expiry_ms: i64::MIN,
        }
    }

    /// True when the segment holds at least one record and every record has expired.
    pub fn all_expired(&self, now_ms: i64) -> bool {
        self.next_offset > self.base_offset
            && self.max_expiry_ms != crate::batch::NEVER_EXPIRES
            && self.max_expiry_ms <= now_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// Both indexes of one segment, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The last indexed batch starting at or before `relative_offset` (the segment
    /// start when none is).
    pub fn entry_for(&self, relative_offset: u32) -> OffsetEntry {
        let after = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map_or(
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            },
            |i| self.offsets[i],
        )
    }

    /// Relative offset of a batch from which a scan finds the first record with a
    /// timestamp >= `timestamp_ms`: the last entry whose running maximum is still
    /// below it (every batch up to it is too old), or the segment start.
    pub fn relative_offset_for_time(&self, timestamp_ms: i64) -> u32 {
        let below = self
            .times
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        below
            .checked_sub(1)
            .map_or(0, |i| self.times[i].relative_offset)
    }
}

fn header(magic: [u8; 4], entry_bytes: usize, summary: &SegmentSummary, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + count * entry_bytes);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entry_bytes as u16).to_le_bytes());
    out.extend_from_slice(&summary.base_offset.to_le_bytes());
    out.extend_from_slice(&summary.log_bytes.to_le_bytes());
    out.extend_from_slice(&summary.next_offset.to_le_bytes());
    out.extend_from_slice(&summary.max_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&summary.max_expiry_ms.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in by `seal`
    out
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[..52]);
    hasher.update(&out[HEADER_BYTES..]);
    let crc = hasher.finalize();
    out[52..56].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The bytes of a `.index` file.
pub fn encode_offset_index(summary: &SegmentSummary, entries: &[OffsetEntry]) -> Vec<u8> {
    let mut out = header(OFFSET_MAGIC, OFFSET_ENTRY_BYTES, summary, entries.len());
    for entry in entries {
        out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        out.extend_from_slice(&entry.position.to_le_bytes());
    }
    seal(out)
}

/// The bytes of a `.timeindex` file.
pub fn encode_time_index(summary: &SegmentSummary, entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = header(TIME_MAGIC, TIME_ENTRY_BYTES, summary, entries.len());
    for entry in entries {
        out.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&entry.relative_offset.to_le_bytes());
    }
    seal(out)
}

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError::Invalid(reason.into())
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], FormatError> {
    bytes
        .get(at..at + N)
        .and_then(|slice| slice.try_into().ok())
        .ok_or(FormatError::Incomplete {
            needed: (at + N) as u64,
        })
}

/// Parses and checks a header and the entry area; returns the summary and the entry
/// bytes.
fn decode_common(
    bytes: &[u8],
    magic: [u8; 4],
    entry_bytes: usize,
) -> Result<(SegmentSummary, &[u8]), FormatError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FormatError::Incomplete {
            needed: HEADER_BYTES as u64,
        });
    }
    if field::<4>(bytes, 0)? != magic {
        return Err(invalid("wrong magic for this kind of index"));
    }
    if u16::from_le_bytes(field(bytes, 4)?) != VERSION {
        return Err(invalid("unknown index version"));
    }
    if usize::from(u16::from_le_bytes(field(bytes, 6)?)) != entry_bytes {
        return Err(invalid("wrong index entry size"));
    }
    let summary = SegmentSummary {
        base_offset: u64::from_le_bytes(field(bytes, 8)?),
        log_bytes: u64::from_le_bytes(field(bytes, 16)?),
        next_offset: u64::from_le_bytes(field(bytes, 24)?),
        max_timestamp_ms: i64::from_le_bytes(field(bytes, 32)?),
        max_expiry_ms: i64::from_le_bytes(field(bytes, 40)?),
    };
    let count = u32::from_le_bytes(field(bytes, 48)?);
    if count > INDEX_ENTRIES_MAX {
        return Err(invalid(format!("{count} index entries is over the limit")));
    }
    let expected_len = HEADER_BYTES + count as usize * entry_bytes;
    if bytes.len() != expected_len {
        return Err(invalid(format!(
            "index is {} bytes, its header says {expected_len}",
            bytes.len()
        )));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..52]);
    hasher.update(&bytes[HEADER_BYTES..]);
    if hasher.finalize() != u32::from_le_bytes(field(bytes, 52)?) {
        return Err(invalid("index CRC mismatch"));
    }
    if summary.next_offset < summary.base_offset
        || summary.next_offset - summary.base_offset > u64::from(u32::MAX)
    {
        return Err(invalid("index next offset is out of the segment's range"));
    }
    Ok((summary, &bytes[HEADER_BYTES..]))
}

/// Decodes and validates a `.index` file: entries strictly increasing in offset and
/// position, within the summary's bounds.
pub fn decode_offset_index(
    bytes: &[u8],
) -> Result<(SegmentSummary, Vec<OffsetEntry>), FormatError> {
    let (summary, body) = decode_common(bytes, OFFSET_MAGIC, OFFSET_ENTRY_BYTES)?;
    let span = summary.next_offset - summary.base_offset;
    let mut entries: Vec<OffsetEntry> = Vec::with_capacity(body.len() / OFFSET_ENTRY_BYTES);
    for chunk in body.chunks_exact(OFFSET_ENTRY_BYTES) {
        let entry = OffsetEntry {
            relative_offset: u32::from_le_bytes(field(chunk, 0)?),
            position: u32::from_le_bytes(field(chunk, 4)?),
        };
        if u64::from(entry.relative_offset) >= span
            || u64::from(entry.position) >= summary.log_bytes
        {
            return Err(invalid("index entry points outside its segment"));
        }
        if let Some(last) = entries.last()
            && (entry.relative_offset <= last.relative_offset || entry.position <= last.position)
        {
            return Err(invalid("index entries are not increasing"));
        }
        entries.push(entry);
    }
    Ok((summary, entries))
}

/// Decodes and validates a `.timeindex` file: timestamps non-decreasing, offsets
/// strictly increasing and within the segment.
pub fn decode_time_index(bytes: &[u8]) -> Result<(SegmentSummary, Vec<TimeEntry>), FormatError> {
    let (summary, body) = decode_common(bytes, TIME_MAGIC, TIME_ENTRY_BYTES)?;
    let span = summary.next_offset - summary.base_offset;
    let mut entries: Vec<TimeEntry> = Vec::with_capacity(body.len() / TIME_ENTRY_BYTES);
    for chunk in body.chunks_exact(TIME_ENTRY_BYTES) {
        let entry = TimeEntry {
            timestamp_ms: i64::from_le_bytes(field(chunk, 0)?),
            relative_offset: u32::from_le_bytes(field(chunk, 8)?),
        };
        if u64::from(entry.relative_offset) >= span {
            return Err(invalid("time index entry points outside its segment"));
        }
        if let Some(last) = entries.last()
            && (entry.timestamp_ms < last.timestamp_ms
                || entry.relative_offset <= last.relative_offset)
        {
            return Err(invalid("time index entries are not increasing"));
        }
        entries.push(entry);
    }
    Ok((summary, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> SegmentSummary {
        SegmentSummary {
            base_offset: 100,
            log_bytes: 50_000,
            next_offset: 400,
            max_timestamp_ms: 9_000,
            max_expiry_ms: i64::MAX,
        }
    }

    fn index() -> SegmentIndex {
        SegmentIndex {
            offsets: vec![
                OffsetEntry {
                    relative_offset: 10,
                    position: 4_100,
                },
                OffsetEntry {
                    relative_offset: 50,
                    position: 8_300,
                },
                OffsetEntry {
                    relative_offset: 90,
                    position: 12_500,
                },
            ],
            times: vec![
                TimeEntry {
                    timestamp_ms: 1_000,
                    relative_offset: 10,
                },
                TimeEntry {
                    timestamp_ms: 5_000,
                    relative_offset: 50,
                },
                TimeEntry {
                    timestamp_ms: 5_000,
                    relative_offset: 90,
                },
            ],
        }
    }

    #[test]
    fn both_indexes_round_trip() {
        let index = index();
        let bytes = encode_offset_index(&summary(), &index.offsets);
        assert_eq!(
            decode_offset_index(&bytes).unwrap(),
            (summary(), index.offsets.clone())
        );
        let bytes = encode_time_index(&summary(), &index.times);
        assert_eq!(
            decode_time_index(&bytes).unwrap(),
            (summary(), index.times.clone())
        );
    }

    #[test]
    fn lookups_find_the_last_entry_at_or_before() {
        let index = index();
        assert_eq!(index.entry_for(0).position, 0);
        assert_eq!(index.entry_for(10).position, 4_100);
        assert_eq!(
            index.entry_for(49),
            OffsetEntry {
                relative_offset: 10,
                position: 4_100
            }
        );
        assert_eq!(index.entry_for(1_000).position, 12_500);
        assert_eq!(index.relative_offset_for_time(500), 0);
        assert_eq!(index.relative_offset_for_time(1_001), 10);
        assert_eq!(index.relative_offset_for_time(5_000), 10);
        assert_eq!(index.relative_offset_for_time(9_999), 90);
    }

    #[test]
    fn any_damage_is_rejected() {
        let bytes = encode_offset_index(&summary(), &index().offsets);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(
                decode_offset_index(&damaged).is_err(),
                "flip at {at} accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode_offset_index(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn entries_out_of_order_are_rejected_even_with_a_good_crc() {
        let mut offsets = index().offsets;
        offsets.swap(0, 1);
        let bytes = encode_offset_index(&summary(), &offsets);
        assert!(decode_offset_index(&bytes).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_offset_index(&data);
            let _ = decode_time_index(&data);
        }
    }
}
