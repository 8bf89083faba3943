//! The id index (`.idindex`) of a sealed segment: every message id in the segment, as
//! a 64-bit hash and where its record is, sorted for binary search. A lookup hashes the
//! id, finds the entries with that hash, reads each record and compares the id bytes,
//! so answers are exact whatever the hash collides with.
//!
//! The file is written whole when a segment is sealed and when a partition closes
//! cleanly; until then the active segment keeps its entries in memory. A header of 56
//! bytes, then `entry_count` entries of 16 bytes, then `run_count` runs of 32 bytes;
//! all integers little-endian:
//!
//! | offset | size | field          | meaning                                               |
//! |-------:|-----:|----------------|-------------------------------------------------------|
//! |      0 |    4 | `magic`        | `TLID`                                                |
//! |      4 |    2 | `version`      | 2 (version 1, below, is still read)                   |
//! |      6 |    2 | `entry_bytes`  | 16                                                    |
//! |      8 |    8 | `base_offset`  | the segment's base offset                             |
//! |     16 |    8 | `log_bytes`    | length of the `.log` this index describes             |
//! |     24 |    8 | `next_offset`  | offset after the segment's last record                |
//! |     32 |    4 | `entry_count`  | entries that follow the header                        |
//! |     36 |    4 | `flags`        | bit 0: incomplete (see below); bits 1-31: 0           |
//! |     40 |    4 | `run_count`    | runs that follow the entries                          |
//! |     44 |    2 | `run_bytes`    | 32                                                    |
//! |     46 |    2 | reserved       | 0                                                     |
//! |     48 |    4 | `body_crc`     | CRC-32 of the entry and run bytes                     |
//! |     52 |    4 | `header_crc`   | CRC-32 of bytes `[0, 52)`                             |
//!
//! The ids the file lists, entries and the runs' ids together, are at most
//! [`ID_INDEX_ENTRIES_MAX`].
//!
//! Entry: `hash` u64 ([`hash_id`] of the id), `relative_offset` u32 (the record's offset
//! minus the segment's base offset), `position` u32 (byte position in the `.log` of the
//! batch holding the record). Entries are sorted by `(hash, relative_offset)`, strictly
//! increasing; one per record that has an id and is not in a run. Several records may
//! share an id (a topic without a dedup window stores a retried publish twice): each
//! has its entry.
//!
//! Run: records in a row of one batch whose ids are 16 bytes, share their first 8 bytes
//! (the prefix) and whose last 8 bytes (the suffix, big-endian) count up by one, at
//! least [`RUN_IDS_MIN`] of them (a producer's ids: see [`split_ids`]), listed once
//! instead of an entry each: `prefix` u64, `first` u64 (the first record's suffix),
//! `count` u32, `relative_offset` u32 (of the first record; the others follow it),
//! `position` u32 (of the batch), 4 reserved bytes (0). Runs are sorted by `(prefix,
//! first, relative_offset)`, strictly increasing, and may share ids (a batch stored
//! twice). A lookup of a 16-byte id looks in the runs too; its ids are not hashed, so a
//! batch of ids in a row costs the index a few bytes, not 16 an id.
//!
//! Version 1 (still read, no longer written) has a header of 48 bytes: the same fields
//! up to `flags`, then `entries_crc` (CRC-32 of the entries) at 40 and `header_crc`
//! (of bytes `[0, 44)`) at 44, and no runs.
//!
//! A segment without ids gets a file with no entries, so a missing file always means
//! "not written yet" (a crash before the seal finished, or an operator removed it):
//! recovery writes it again from the log. The incomplete flag says some batch of the
//! log failed its CRC when the index was built, so ids in it could not be read: a
//! lookup that finds nothing cannot say "not found" for this segment. It says what the
//! writer could read (an older build cannot decode a newer one's records), so the first
//! use in a process reads the log again and believes the flag only if that rebuild
//! sets it too.
//!
//! The header has its own CRC so recovery can check that a file is present and
//! describes the log (base offset, length) by reading its header; the body's CRC,
//! the order and the bounds of its entries and runs are checked when the file is first
//! used.

use bytes::Bytes;

use crate::batch::FormatError;
use crate::limits::{ID_INDEX_ENTRIES_MAX, ID_INDEX_FILE_BYTES_MAX};

pub const MAGIC: [u8; 4] = *b"TLID";
/// The version written.
pub const VERSION: u16 = 2;
/// Bytes of the header (version 2).
pub const HEADER_BYTES: usize = 56;
/// Bytes of a version 1 header.
pub const HEADER_BYTES_V1: usize = 48;
/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 16;
/// Bytes of one run.
pub const RUN_BYTES: usize = 32;
/// Ids in a row that make a run: shorter rows are listed id by id.
pub const RUN_IDS_MIN: usize = 8;
/// Header flag: some batch failed its CRC while the index was built; its ids are not
/// in the index.
pub const FLAG_INCOMPLETE: u32 = 1;
const FLAGS_KNOWN: u32 = FLAG_INCOMPLETE;

/// Where each header field starts.
const AT_VERSION: usize = 4;
const AT_ENTRY_BYTES: usize = AT_VERSION + 2;
const AT_BASE_OFFSET: usize = AT_ENTRY_BYTES + 2;
const AT_LOG_BYTES: usize = AT_BASE_OFFSET + 8;
const AT_NEXT_OFFSET: usize = AT_LOG_BYTES + 8;
const AT_ENTRY_COUNT: usize = AT_NEXT_OFFSET + 8;
const AT_FLAGS: usize = AT_ENTRY_COUNT + 4;
const AT_RUN_COUNT: usize = AT_FLAGS + 4;
const AT_RUN_BYTES: usize = AT_RUN_COUNT + 4;
const AT_ENTRIES_CRC: usize = AT_RUN_BYTES + 4;
const AT_HEADER_CRC: usize = AT_ENTRIES_CRC + 4;
const _: () = assert!(AT_HEADER_CRC + 4 == HEADER_BYTES);
/// Version 1's CRCs.
const AT_ENTRIES_CRC_V1: usize = AT_FLAGS + 4;
const AT_HEADER_CRC_V1: usize = AT_ENTRIES_CRC_V1 + 4;
const _: () = assert!(AT_HEADER_CRC_V1 + 4 == HEADER_BYTES_V1);
// A run holds at least `RUN_IDS_MIN` ids in 32 bytes, so no file with at most
// `ID_INDEX_ENTRIES_MAX` ids is longer than one of that many entries.
const _: () = assert!(RUN_BYTES <= ENTRY_BYTES * RUN_IDS_MIN);
const _: () = assert!(
    ID_INDEX_FILE_BYTES_MAX == (HEADER_BYTES + ENTRY_BYTES * ID_INDEX_ENTRIES_MAX as usize) as u64
);

/// The SipHash key of [`hash_id`]: the 16 ASCII bytes `tidelog idindex1`. The key is
/// public; what matters is that finding many ids with one 64-bit SipHash value (to
/// make lookups read many records) costs far more than finding two.
const HASH_KEY: [u8; 16] = *b"tidelog idindex1";

/// The hash an entry is sorted by: SipHash-2-4 of the id bytes with [`HASH_KEY`]
/// (`k0` = its first 8 bytes, `k1` = the last 8, each little-endian), as in the
/// SipHash paper.
pub fn hash_id(id: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(HASH_KEY[..8].try_into().unwrap_or([0; 8]));
    let k1 = u64::from_le_bytes(HASH_KEY[8..].try_into().unwrap_or([0; 8]));
    siphash24(k0, k1, id)
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012).
fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut compress = |m: u64| {
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    };
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        compress(u64::from_le_bytes(word));
    }
    let mut last = [0u8; 8];
    let tail = chunks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = data.len() as u8;
    compress(u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Sorts `entries` by `(hash, relative_offset)`, the index's order. (Dealing them into
/// buckets by the hash's top bits first was tried: the scratch vector's fresh pages
/// cost more than the comparisons saved; see BENCHMARKS.md.)
pub fn sort_entries(entries: &mut [IdEntry]) {
    entries.sort_unstable_by_key(|e| (e.hash, e.relative_offset));
}

/// Prefix and suffix of a 16-byte id (its first and last 8 bytes, big-endian); `None`
/// for ids of other lengths.
pub fn id_parts(id: &[u8]) -> Option<(u64, u64)> {
    let id: &[u8; 16] = id.try_into().ok()?;
    let (prefix, suffix) = id.split_at(8);
    Some((
        u64::from_be_bytes(prefix.try_into().ok()?),
        u64::from_be_bytes(suffix.try_into().ok()?),
    ))
}

/// The 16-byte id of `prefix` and `suffix`.
pub fn id_of_parts(prefix: u64, suffix: u64) -> [u8; 16] {
    (u128::from(prefix) << 64 | u128::from(suffix)).to_be_bytes()
}

/// Records `[index, index + count)` of one append, whose ids make a run: `prefix`,
/// suffixes from `first` up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRow {
    pub index: u32,
    pub count: u32,
    pub prefix: u64,
    pub first: u64,
}

/// The ids of one append, as the id index (and the dedup window) take them: the runs,
/// and every other id with its [`hash_id`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitIds {
    /// `(index in the append, hash)` of each id not in a run, in order.
    pub singles: Vec<(u32, u64)>,
    /// The runs, in order.
    pub runs: Vec<IdRow>,
}

impl SplitIds {
    /// Ids in all: singles and the runs' ids.
    pub fn ids(&self) -> usize {
        self.singles.len() + self.runs.iter().map(|r| r.count as usize).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.runs.is_empty()
    }
}

/// Splits the ids of one append, `(index in the append, id)` in order, into runs
/// (records in a row, at consecutive indexes, whose 16-byte ids share a prefix and
/// count up by one, at least [`RUN_IDS_MIN`] of them) and singles, which are hashed.
/// The one rule for what a run is, for the id index and the dedup window alike.
pub fn split_ids<'a>(ids: impl IntoIterator<Item = (u32, &'a [u8])>) -> SplitIds {
    let mut split = SplitIds::default();
    let mut row: Option<IdRow> = None;
    let close = |row: IdRow, split: &mut SplitIds| {
        if row.count as usize >= RUN_IDS_MIN {
            split.runs.push(row);
        } else {
            for k in 0..row.count {
                let id = id_of_parts(row.prefix, row.first + u64::from(k));
                split.singles.push((row.index + k, hash_id(&id)));
            }
        }
    };
    for (index, id) in ids {
        let parts = id_parts(id);
        if let (Some(open), Some((prefix, suffix))) = (&mut row, parts)
            && open.prefix == prefix
            && open.index.checked_add(open.count) == Some(index)
            && open.first.checked_add(u64::from(open.count)) == Some(suffix)
        {
            open.count += 1;
            continue;
        }
        if let Some(open) = row.take() {
            close(open, &mut split);
        }
        match parts {
            Some((prefix, first)) => {
                row = Some(IdRow {
                    index,
                    count: 1,
                    prefix,
                    first,
                })
            }
            None => split.singles.push((index, hash_id(id))),
        }
    }
    if let Some(open) = row {
        close(open, &mut split);
    }
    split
}

/// A run of a segment's id index (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRun {
    pub prefix: u64,
    /// The first record's suffix.
    pub first: u64,
    pub count: u32,
    /// The first record's offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position in the `.log` of the batch holding the records.
    pub position: u32,
}

impl IdRun {
    fn key(&self) -> (u64, u64, u32) {
        (self.prefix, self.first, self.relative_offset)
    }

    /// Whether the run holds the id with suffix `suffix` (of its prefix).
    pub fn holds(&self, suffix: u64) -> bool {
        suffix >= self.first && suffix - self.first < u64::from(self.count)
    }
}

/// One record with an id: its id's hash and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdEntry {
    pub hash: u64,
    /// The record's offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position in the `.log` of the batch holding the record.
    pub position: u32,
}

/// What the header of an id index says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdIndexHeader {
    pub version: u16,
    pub base_offset: u64,
    pub log_bytes: u64,
    pub next_offset: u64,
    pub entry_count: u32,
    pub flags: u32,
    /// 0 in version 1.
    pub run_count: u32,
    /// The CRC of the entries and runs.
    pub entries_crc: u32,
}

impl IdIndexHeader {
    /// Some batch failed its CRC when the index was built: its ids are missing.
    pub fn incomplete(&self) -> bool {
        self.flags & FLAG_INCOMPLETE != 0
    }

    /// Bytes of the header itself.
    pub fn header_bytes(&self) -> usize {
        if self.version == 1 {
            HEADER_BYTES_V1
        } else {
            HEADER_BYTES
        }
    }

    /// Length of the whole file this header describes.
    pub fn file_bytes(&self) -> u64 {
        self.header_bytes() as u64
            + ENTRY_BYTES as u64 * u64::from(self.entry_count)
            + RUN_BYTES as u64 * u64::from(self.run_count)
    }
}

/// The bytes of an `.idindex` file (version 2) for the segment `[base_offset,
/// next_offset)` whose log is `log_bytes` long. Sorts `entries` and `runs`. The caller
/// keeps their ids within [`ID_INDEX_ENTRIES_MAX`] (a segment rolls before it holds
/// more) and each run at least [`RUN_IDS_MIN`] long.
pub fn encode(
    base_offset: u64,
    log_bytes: u64,
    next_offset: u64,
    incomplete: bool,
    entries: &mut [IdEntry],
    runs: &mut [IdRun],
) -> Vec<u8> {
    sort_entries(entries);
    runs.sort_unstable_by_key(IdRun::key);
    let mut out =
        Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * entries.len() + RUN_BYTES * runs.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(ENTRY_BYTES as u16).to_le_bytes());
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&log_bytes.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let flags = if incomplete { FLAG_INCOMPLETE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    out.extend_from_slice(&(RUN_BYTES as u16).to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&[0; 8]); // the two CRCs, below
    put_entries(&mut out, entries);
    put_runs(&mut out, runs);
    let entries_crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[AT_ENTRIES_CRC..AT_HEADER_CRC].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..AT_HEADER_CRC]);
    out[AT_HEADER_CRC..HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// The bytes of a version 1 `.idindex` file, as builds before runs wrote it (every id an
/// entry, sorted here): for tests that an upgraded broker, and `tidelog segment verify`,
/// still read what they left. Test-only (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub fn encode_v1(
    base_offset: u64,
    log_bytes: u64,
    next_offset: u64,
    incomplete: bool,
    entries: &mut [IdEntry],
) -> Vec<u8> {
    sort_entries(entries);
    let mut out = Vec::with_capacity(HEADER_BYTES_V1 + ENTRY_BYTES * entries.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(ENTRY_BYTES as u16).to_le_bytes());
    for word in [base_offset, log_bytes, next_offset] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let flags = if incomplete { FLAG_INCOMPLETE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    put_entries(&mut out, entries);
    let crc = crc32fast::hash(&out[HEADER_BYTES_V1..]);
    out[AT_ENTRIES_CRC_V1..AT_HEADER_CRC_V1].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&out[..AT_HEADER_CRC_V1]);
    out[AT_HEADER_CRC_V1..HEADER_BYTES_V1].copy_from_slice(&crc.to_le_bytes());
    out
}

fn put_entries(out: &mut Vec<u8>, entries: &[IdEntry]) {
    for entry in entries {
        out.extend_from_slice(&entry.hash.to_le_bytes());
        out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        out.extend_from_slice(&entry.position.to_le_bytes());
    }
}

fn put_runs(out: &mut Vec<u8>, runs: &[IdRun]) {
    for run in runs {
        out.extend_from_slice(&run.prefix.to_le_bytes());
        out.extend_from_slice(&run.first.to_le_bytes());
        out.extend_from_slice(&run.count.to_le_bytes());
        out.extend_from_slice(&run.relative_offset.to_le_bytes());
        out.extend_from_slice(&run.position.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
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

/// Parses and checks the header at the start of `bytes` (at least its 56 bytes, or
/// 48 for version 1): its CRC, magic, version, entry and run sizes, flags, offsets and
/// counts. Does not look at the entries: see [`decode`].
pub fn decode_header(bytes: &[u8]) -> Result<IdIndexHeader, FormatError> {
    if bytes.len() < HEADER_BYTES_V1 {
        return Err(FormatError::Incomplete {
            needed: HEADER_BYTES_V1 as u64,
        });
    }
    let version = u16::from_le_bytes(field(bytes, AT_VERSION)?);
    let (at_entries_crc, at_header_crc) = match version {
        1 => (AT_ENTRIES_CRC_V1, AT_HEADER_CRC_V1),
        VERSION => (AT_ENTRIES_CRC, AT_HEADER_CRC),
        _ => return Err(invalid("unknown id index version (or a damaged header)")),
    };
    let header_crc = u32::from_le_bytes(field(bytes, at_header_crc)?);
    if crc32fast::hash(&bytes[..at_header_crc]) != header_crc {
        return Err(invalid("id index header CRC mismatch"));
    }
    if field::<4>(bytes, 0)? != MAGIC {
        return Err(invalid("not an id index (wrong magic)"));
    }
    if usize::from(u16::from_le_bytes(field(bytes, AT_ENTRY_BYTES)?)) != ENTRY_BYTES {
        return Err(invalid("wrong id index entry size"));
    }
    let run_count = if version == 1 {
        0
    } else {
        if usize::from(u16::from_le_bytes(field(bytes, AT_RUN_BYTES)?)) != RUN_BYTES
            || u16::from_le_bytes(field(bytes, AT_RUN_BYTES + 2)?) != 0
        {
            return Err(invalid("wrong id index run size"));
        }
        u32::from_le_bytes(field(bytes, AT_RUN_COUNT)?)
    };
    let header = IdIndexHeader {
        version,
        base_offset: u64::from_le_bytes(field(bytes, AT_BASE_OFFSET)?),
        log_bytes: u64::from_le_bytes(field(bytes, AT_LOG_BYTES)?),
        next_offset: u64::from_le_bytes(field(bytes, AT_NEXT_OFFSET)?),
        entry_count: u32::from_le_bytes(field(bytes, AT_ENTRY_COUNT)?),
        flags: u32::from_le_bytes(field(bytes, AT_FLAGS)?),
        run_count,
        entries_crc: u32::from_le_bytes(field(bytes, at_entries_crc)?),
    };
    if header.flags & !FLAGS_KNOWN != 0 {
        return Err(invalid(format!(
            "unknown id index flags {:#x}",
            header.flags
        )));
    }
    let span = header
        .next_offset
        .checked_sub(header.base_offset)
        .filter(|&span| span <= u64::from(u32::MAX))
        .ok_or_else(|| invalid("id index next offset is out of the segment's range"))?;
    // Each run holds at least `RUN_IDS_MIN` ids (checked with the runs).
    let ids_least =
        u64::from(header.entry_count) + u64::from(header.run_count) * RUN_IDS_MIN as u64;
    if ids_least > u64::from(ID_INDEX_ENTRIES_MAX) {
        return Err(invalid(format!(
            "{} id index entries and {} runs is over the limit of {ID_INDEX_ENTRIES_MAX} ids",
            header.entry_count, header.run_count
        )));
    }
    if ids_least > span {
        return Err(invalid(format!(
            "{} id index entries and {} runs for a segment of {span} records",
            header.entry_count, header.run_count
        )));
    }
    Ok(header)
}

/// Decodes and validates a whole `.idindex` file: the header, the length, the body's
/// CRC, every entry and run within the segment, and the order. Returns the header and
/// the entries and runs as a [`IdTable`] that slices `bytes` (no copy).
pub fn decode(bytes: &Bytes) -> Result<(IdIndexHeader, IdTable), FormatError> {
    let header = decode_header(bytes)?;
    if bytes.len() as u64 != header.file_bytes() {
        return Err(invalid(format!(
            "id index is {} bytes, its header says {}",
            bytes.len(),
            header.file_bytes()
        )));
    }
    let body = bytes.slice(header.header_bytes()..);
    if crc32fast::hash(&body) != header.entries_crc {
        return Err(invalid("id index entries CRC mismatch"));
    }
    let span = header.next_offset - header.base_offset;
    let entries_end = ENTRY_BYTES * header.entry_count as usize;
    let mut table = IdTable {
        entries: body.slice(..entries_end),
        runs: body.slice(entries_end..),
        longest_run: 0,
        incomplete: header.incomplete(),
    };
    let mut previous: Option<(u64, u32)> = None;
    for entry in table.iter() {
        if u64::from(entry.relative_offset) >= span || u64::from(entry.position) >= header.log_bytes
        {
            return Err(invalid("id index entry points outside its segment"));
        }
        let key = (entry.hash, entry.relative_offset);
        if previous.is_some_and(|p| p >= key) {
            return Err(invalid("id index entries are not in order"));
        }
        previous = Some(key);
    }
    let mut previous: Option<(u64, u64, u32)> = None;
    let mut ids = u64::from(header.entry_count);
    for i in 0..table.run_count() {
        let run = table.run(i);
        if table.runs[i * RUN_BYTES + 28..(i + 1) * RUN_BYTES] != [0; 4] {
            return Err(invalid("id index run has reserved bytes set"));
        }
        if (run.count as usize) < RUN_IDS_MIN
            || run.first.checked_add(u64::from(run.count) - 1).is_none()
        {
            return Err(invalid(format!(
                "id index run of {} ids (at least {RUN_IDS_MIN}, within its prefix)",
                run.count
            )));
        }
        if u64::from(run.relative_offset) + u64::from(run.count) > span
            || u64::from(run.position) >= header.log_bytes
        {
            return Err(invalid("id index run points outside its segment"));
        }
        if previous.is_some_and(|p| p >= run.key()) {
            return Err(invalid("id index runs are not in order"));
        }
        previous = Some(run.key());
        ids += u64::from(run.count);
        table.longest_run = table.longest_run.max(run.count);
    }
    if ids > u64::from(ID_INDEX_ENTRIES_MAX) {
        return Err(invalid(format!(
            "id index lists {ids} ids, over the limit of {ID_INDEX_ENTRIES_MAX}"
        )));
    }
    Ok((header, table))
}

/// The entries of an id index, validated and sorted, in the file's bytes (a mapping
/// of the file, or bytes built in memory): binary search without decoding it all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdTable {
    /// Whole entries, sorted by `(hash, relative_offset)`.
    entries: Bytes,
    /// Whole runs, sorted by `(prefix, first, relative_offset)`.
    runs: Bytes,
    /// The most ids a run holds: how far below an id a run holding it can start.
    longest_run: u32,
    incomplete: bool,
}

impl IdTable {
    /// A table of `entries` and `runs` (sorted here), in memory.
    pub fn from_parts(mut entries: Vec<IdEntry>, mut runs: Vec<IdRun>, incomplete: bool) -> Self {
        sort_entries(&mut entries);
        runs.sort_unstable_by_key(IdRun::key);
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY_BYTES);
        put_entries(&mut bytes, &entries);
        let mut run_bytes = Vec::with_capacity(runs.len() * RUN_BYTES);
        put_runs(&mut run_bytes, &runs);
        IdTable {
            entries: Bytes::from(bytes),
            runs: Bytes::from(run_bytes),
            longest_run: runs.iter().map(|r| r.count).max().unwrap_or(0),
            incomplete,
        }
    }

    /// Runs in the table.
    pub fn run_count(&self) -> usize {
        self.runs.len() / RUN_BYTES
    }

    /// The run at `index` (< `run_count`).
    fn run(&self, index: usize) -> IdRun {
        let bytes = &self.runs[index * RUN_BYTES..(index + 1) * RUN_BYTES];
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let u32_at = |at: usize| {
            let mut word = [0u8; 4];
            word.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(word)
        };
        IdRun {
            prefix: u64_at(0),
            first: u64_at(8),
            count: u32_at(16),
            relative_offset: u32_at(20),
            position: u32_at(24),
        }
    }

    /// Every run, in order.
    pub fn runs(&self) -> impl Iterator<Item = IdRun> + '_ {
        (0..self.run_count()).map(|i| self.run(i))
    }

    /// Where the runs put the 16-byte id with `prefix` and `suffix`, as entries (with
    /// `hash`, the id's), newest (highest offset) first.
    pub fn run_candidates(&self, prefix: u64, suffix: u64, hash: u64) -> Vec<IdEntry> {
        // The first run past (prefix, suffix); those holding it start at most
        // `longest_run - 1` below it.
        let (mut low, mut high) = (0, self.run_count());
        while low < high {
            let middle = low + (high - low) / 2;
            let run = self.run(middle);
            if (run.prefix, run.first) <= (prefix, suffix) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let lowest = suffix.saturating_sub(u64::from(self.longest_run.max(1)) - 1);
        let mut found: Vec<IdEntry> = (0..low)
            .rev()
            .map(|i| self.run(i))
            .take_while(|run| run.prefix == prefix && run.first >= lowest)
            .filter(|run| run.holds(suffix))
            .map(|run| IdEntry {
                hash,
                relative_offset: run.relative_offset + (suffix - run.first) as u32,
                position: run.position,
            })
            .collect();
        found.sort_unstable_by_key(|e| std::cmp::Reverse(e.relative_offset));
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len() / ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the segment has ids this table could not take (see [`FLAG_INCOMPLETE`]).
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    /// The entry at `index` (< `len`).
    fn get(&self, index: usize) -> IdEntry {
        let at = index * ENTRY_BYTES;
        let bytes = &self.entries[at..at + ENTRY_BYTES];
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&bytes[..8]);
        let mut relative = [0u8; 4];
        relative.copy_from_slice(&bytes[8..12]);
        let mut position = [0u8; 4];
        position.copy_from_slice(&bytes[12..16]);
        IdEntry {
            hash: u64::from_le_bytes(hash),
            relative_offset: u32::from_le_bytes(relative),
            position: u32::from_le_bytes(position),
        }
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = IdEntry> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The entries whose hash is `hash`, newest (highest offset) first. Lazy: a lookup
    /// that stops at the first match reads no more of a long run of duplicates.
    pub fn candidates(&self, hash: u64) -> impl Iterator<Item = IdEntry> + '_ {
        let first_at_or_after = |hash: u64| {
            let (mut low, mut high) = (0, self.len());
            while low < high {
                let middle = low + (high - low) / 2;
                if self.get(middle).hash < hash {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            low
        };
        let low = first_at_or_after(hash);
        let high = match hash.checked_add(1) {
            Some(next) => first_at_or_after(next),
            None => self.len(),
        };
        (low..high).rev().map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<IdEntry> {
        vec![
            IdEntry {
                hash: 9,
                relative_offset: 1,
                position: 0,
            },
            IdEntry {
                hash: 3,
                relative_offset: 7,
                position: 4_200,
            },
            IdEntry {
                hash: 9,
                relative_offset: 8,
                position: 4_200,
            },
            IdEntry {
                hash: u64::MAX,
                relative_offset: 2,
                position: 90,
            },
        ]
    }

    /// Two runs of prefix 5 that share ids 104..=107, and one that ends at the last
    /// suffix.
    fn runs() -> Vec<IdRun> {
        vec![
            IdRun {
                prefix: 5,
                first: 104,
                count: 9,
                relative_offset: 20,
                position: 4_300,
            },
            IdRun {
                prefix: 5,
                first: 100,
                count: 8,
                relative_offset: 10,
                position: 4_200,
            },
            IdRun {
                prefix: 1,
                first: u64::MAX - 7,
                count: 8,
                relative_offset: 0,
                position: 0,
            },
        ]
    }

    fn file() -> Bytes {
        Bytes::from(encode(100, 5_000, 130, false, &mut entries(), &mut runs()))
    }

    /// A version 1 file of `entries`, as the version before runs wrote it.
    fn file_v1(entries: &mut [IdEntry]) -> Bytes {
        Bytes::from(encode_v1(100, 5_000, 130, false, entries))
    }

    #[test]
    fn a_version_1_file_is_still_read() {
        let bytes = file_v1(&mut entries());
        let (header, table) = decode(&bytes).unwrap();
        assert_eq!(
            (header.version, header.entry_count, header.run_count),
            (1, 4, 0)
        );
        assert_eq!(decode_header(&bytes[..HEADER_BYTES_V1]).unwrap(), header);
        assert_eq!(table, IdTable::from_parts(entries(), Vec::new(), false));
        assert_eq!(table.run_count(), 0);
        let offsets: Vec<u32> = table.candidates(9).map(|e| e.relative_offset).collect();
        assert_eq!(offsets, vec![8, 1]);
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x20;
            assert!(decode(&Bytes::from(damaged)).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn runs_find_every_copy_of_an_id_newest_first() {
        let (_, table) = decode(&file()).unwrap();
        let offsets = |prefix, suffix| {
            table
                .run_candidates(prefix, suffix, 0)
                .iter()
                .map(|e| (e.relative_offset, e.position))
                .collect::<Vec<_>>()
        };
        assert_eq!(offsets(5, 105), vec![(21, 4_300), (15, 4_200)]);
        assert_eq!(offsets(5, 100), vec![(10, 4_200)]);
        assert_eq!(offsets(5, 112), vec![(28, 4_300)]);
        assert_eq!(offsets(1, u64::MAX), vec![(7, 0)]);
        assert!(offsets(5, 99).is_empty());
        assert!(offsets(5, 113).is_empty());
        assert!(offsets(6, 100).is_empty());
        assert!(offsets(4, u64::MAX).is_empty());
        let mut sorted = runs();
        sorted.sort_unstable_by_key(IdRun::key);
        assert_eq!(table.runs().collect::<Vec<_>>(), sorted);
    }

    /// `bytes` with both CRCs made right again, so only the check under test fails.
    fn reseal(mut bytes: Vec<u8>) -> Bytes {
        let crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
        bytes[AT_ENTRIES_CRC..AT_HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..AT_HEADER_CRC]);
        bytes[AT_HEADER_CRC..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(bytes)
    }

    #[test]
    fn runs_short_out_of_order_or_outside_are_rejected_even_with_good_crcs() {
        let runs_at = HEADER_BYTES + ENTRY_BYTES * entries().len();
        let good = file().to_vec();
        assert!(decode(&reseal(good.clone())).is_ok());
        // The first run (prefix 1) 7 ids long.
        let mut short = good.clone();
        short[runs_at + 16..runs_at + 20].copy_from_slice(&7u32.to_le_bytes());
        assert!(decode(&reseal(short)).is_err());
        // Past its prefix's last suffix.
        let mut wraps = good.clone();
        wraps[runs_at + 16..runs_at + 20].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode(&reseal(wraps)).is_err());
        // Records past the segment's 30.
        let mut outside = good.clone();
        let second = runs_at + 2 * RUN_BYTES;
        outside[second + 20..second + 24].copy_from_slice(&22u32.to_le_bytes());
        assert!(decode(&reseal(outside)).is_err());
        // Two runs swapped.
        let mut swapped = good.clone();
        let run: Vec<u8> = swapped[runs_at..runs_at + RUN_BYTES].to_vec();
        swapped.copy_within(runs_at + RUN_BYTES..runs_at + 2 * RUN_BYTES, runs_at);
        swapped[runs_at + RUN_BYTES..runs_at + 2 * RUN_BYTES].copy_from_slice(&run);
        assert!(decode(&reseal(swapped)).is_err());
        // Reserved bytes set.
        let mut reserved = good;
        reserved[runs_at + 28] = 1;
        assert!(decode(&reseal(reserved)).is_err());
    }

    /// Against a model: every id goes to exactly one of the singles (with its hash) or
    /// the runs, and the runs are the maximal rows of at least `RUN_IDS_MIN` records
    /// at consecutive indexes with 16-byte ids of one prefix counting up.
    #[test]
    fn split_ids_matches_a_model() {
        let mut rng = crate::rng::SeededRng::new(5);
        for round in 0..300 {
            let mut ids: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut index = 0u32;
            let mut suffix = rng.next();
            for _ in 0..rng.below(60) {
                index += if rng.below(10) == 0 { 2 } else { 1 };
                let id = match rng.below(12) {
                    0 => b"short".to_vec(),
                    1 => id_of_parts(rng.below(2), rng.below(4)).to_vec(),
                    2 => {
                        suffix = u64::MAX - rng.below(3);
                        id_of_parts(7, suffix).to_vec()
                    }
                    _ => {
                        suffix = suffix.wrapping_add(1);
                        id_of_parts(7, suffix).to_vec()
                    }
                };
                ids.push((index, id));
            }
            let split = split_ids(ids.iter().map(|(i, id)| (*i, &id[..])));
            // The model's rows.
            let mut rows: Vec<Vec<usize>> = Vec::new();
            for (n, (i, id)) in ids.iter().enumerate() {
                let extends = n > 0
                    && rows.last().is_some_and(|row| {
                        let (pi, pid) = &ids[*row.last().unwrap()];
                        match (id_parts(pid), id_parts(id)) {
                            (Some((pp, ps)), Some((p, s))) => {
                                pp == p && pi + 1 == *i && ps.checked_add(1) == Some(s)
                            }
                            _ => false,
                        }
                    });
                if extends {
                    rows.last_mut().unwrap().push(n);
                } else {
                    rows.push(vec![n]);
                }
            }
            let mut singles = Vec::new();
            let mut runs = Vec::new();
            for row in rows {
                if row.len() >= RUN_IDS_MIN {
                    let (index, id) = &ids[row[0]];
                    let (prefix, first) = id_parts(id).unwrap();
                    runs.push(IdRow {
                        index: *index,
                        count: row.len() as u32,
                        prefix,
                        first,
                    });
                } else {
                    singles.extend(row.iter().map(|&n| (ids[n].0, hash_id(&ids[n].1))));
                }
            }
            assert_eq!(split.runs, runs, "round {round}");
            assert_eq!(split.singles, singles, "round {round}");
            assert_eq!(split.ids(), ids.len());
        }
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The paper's key 00..0f; vectors from its reference implementation.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &message), 0xa129_ca61_49be_45e5);
        // And std's (deprecated, but still SipHash-2-4) hasher for every length up to
        // two words and more.
        #[allow(
            deprecated,
            reason = "an independent SipHash-2-4 to check ours against"
        )]
        for len in 0..40u8 {
            use std::hash::Hasher;
            let data: Vec<u8> = (0..len).map(|b| b.wrapping_mul(37)).collect();
            let mut std_hasher = std::hash::SipHasher::new_with_keys(k0, k1);
            std_hasher.write(&data);
            assert_eq!(
                siphash24(k0, k1, &data),
                std_hasher.finish(),
                "length {len}"
            );
        }
        assert_ne!(hash_id(b"a"), hash_id(b"b"));
    }

    #[test]
    fn round_trips_sorted() {
        let (header, table) = decode(&file()).unwrap();
        assert_eq!(
            header,
            IdIndexHeader {
                version: 2,
                base_offset: 100,
                log_bytes: 5_000,
                next_offset: 130,
                entry_count: 4,
                flags: 0,
                run_count: 3,
                entries_crc: header.entries_crc,
            }
        );
        let mut sorted = entries();
        sorted.sort_by_key(|e| (e.hash, e.relative_offset));
        assert_eq!(table.iter().collect::<Vec<_>>(), sorted);
        assert_eq!(table, IdTable::from_parts(entries(), runs(), false));
        assert_eq!(decode_header(&file()[..HEADER_BYTES]).unwrap(), header);
    }

    #[test]
    fn candidates_are_every_entry_of_the_hash_newest_first() {
        let (_, table) = decode(&file()).unwrap();
        let offsets = |hash| {
            table
                .candidates(hash)
                .map(|e| e.relative_offset)
                .collect::<Vec<_>>()
        };
        assert_eq!(offsets(9), vec![8, 1]);
        assert_eq!(offsets(3), vec![7]);
        assert_eq!(offsets(u64::MAX), vec![2]);
        assert!(offsets(0).is_empty());
        assert!(offsets(4).is_empty());
        assert_eq!(IdTable::default().candidates(9).count(), 0);
    }

    #[test]
    fn any_damage_is_rejected() {
        let bytes = file();
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x20;
            assert!(
                decode(&Bytes::from(damaged)).is_err(),
                "flip at {at} accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes.slice(..len)).is_err(),
                "cut at {len} accepted"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_err());
    }

    #[test]
    fn entries_out_of_bounds_or_order_are_rejected_even_with_good_crcs() {
        // Encoded by hand past `encode`'s sort.
        let mut swapped = file().to_vec();
        let (first, second) = (HEADER_BYTES, HEADER_BYTES + ENTRY_BYTES);
        let entry: Vec<u8> = swapped[first..second].to_vec();
        swapped.copy_within(second..second + ENTRY_BYTES, first);
        swapped[second..second + ENTRY_BYTES].copy_from_slice(&entry);
        assert!(decode(&reseal(swapped)).is_err());

        let mut outside = file().to_vec();
        // relative offset 30 of a segment of 30 records.
        outside[HEADER_BYTES + 8..HEADER_BYTES + 12].copy_from_slice(&30u32.to_le_bytes());
        assert!(decode(&reseal(outside)).is_err());

        let mut too_many = file().to_vec();
        too_many[AT_ENTRY_COUNT..AT_FLAGS]
            .copy_from_slice(&(ID_INDEX_ENTRIES_MAX + 1).to_le_bytes());
        assert!(decode_header(&reseal(too_many)).is_err());
    }

    #[test]
    fn the_incomplete_flag_round_trips_and_unknown_flags_are_refused() {
        let bytes = Bytes::from(encode(0, 10, 1, true, &mut [], &mut []));
        let (header, table) = decode(&bytes).unwrap();
        assert!(header.incomplete() && table.incomplete() && table.is_empty());
        let mut unknown = bytes.to_vec();
        unknown[AT_FLAGS] = 2;
        let crc = crc32fast::hash(&unknown[..AT_HEADER_CRC]);
        unknown[AT_HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_header(&unknown).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(data));
        }
    }
}
