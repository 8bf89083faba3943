//! The id index (`.idindex`) of a sealed segment: every message id in the segment, as
//! a 64-bit hash and where its record is, sorted for binary search. A lookup hashes the
//! id, finds the entries with that hash, reads each record and compares the id bytes,
//! so answers are exact whatever the hash collides with.
//!
//! The file is written whole when a segment is sealed and when a partition closes
//! cleanly; until then the active segment keeps its entries in memory. A header of 48
//! bytes, then `entry_count` entries of 16 bytes; all integers little-endian:
//!
//! | offset | size | field          | meaning                                               |
//! |-------:|-----:|----------------|-------------------------------------------------------|
//! |      0 |    4 | `magic`        | `TLID`                                                |
//! |      4 |    2 | `version`      | 1                                                     |
//! |      6 |    2 | `entry_bytes`  | 16                                                    |
//! |      8 |    8 | `base_offset`  | the segment's base offset                             |
//! |     16 |    8 | `log_bytes`    | length of the `.log` this index describes             |
//! |     24 |    8 | `next_offset`  | offset after the segment's last record                |
//! |     32 |    4 | `entry_count`  | entries that follow, at most [`ID_INDEX_ENTRIES_MAX`] |
//! |     36 |    4 | `flags`        | bit 0: incomplete (see below); bits 1-31: 0           |
//! |     40 |    4 | `entries_crc`  | CRC-32 of the entry bytes                             |
//! |     44 |    4 | `header_crc`   | CRC-32 of bytes `[0, 44)`                             |
//!
//! Entry: `hash` u64 ([`hash_id`] of the id), `relative_offset` u32 (the record's offset
//! minus the segment's base offset), `position` u32 (byte position in the `.log` of the
//! batch holding the record). Entries are sorted by `(hash, relative_offset)`, strictly
//! increasing; one per record that has an id. Several records may share an id (a topic
//! without a dedup window stores a retried publish twice): each has its entry.
//!
//! A segment without ids gets a file with no entries, so a missing file always means
//! "not written yet" (a crash before the seal finished, or an operator removed it):
//! recovery writes it again from the log. The incomplete flag says some batch of the
//! log failed its CRC when the index was built, so ids in it could not be read: a
//! lookup that finds nothing cannot say "not found" for this segment.
//!
//! The header has its own CRC so recovery can check that a file is present and
//! describes the log (base offset, length) by reading 48 bytes; the entries' CRC,
//! their order and their bounds are checked when the file is first used.

use bytes::Bytes;

use crate::batch::FormatError;
use crate::limits::{ID_INDEX_ENTRIES_MAX, ID_INDEX_FILE_BYTES_MAX};

pub const MAGIC: [u8; 4] = *b"TLID";
pub const VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 48;
/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 16;
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
const AT_ENTRIES_CRC: usize = AT_FLAGS + 4;
const AT_HEADER_CRC: usize = AT_ENTRIES_CRC + 4;
const _: () = assert!(AT_HEADER_CRC + 4 == HEADER_BYTES);
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

/// Sorts `entries` by `(hash, relative_offset)`, the index's order. The hashes are
/// spread evenly, so one pass deals the entries into buckets by the hash's top bits
/// (about 4 entries a bucket) and each bucket is sorted on its own: about a third of
/// the time of a comparison sort of a segment's entries (16 ns an entry at a few
/// million). Hashes crafted to share their top bits only make their bucket a
/// comparison sort.
pub fn sort_entries(entries: &mut [IdEntry]) {
    let key = |e: &IdEntry| (e.hash, e.relative_offset);
    if entries.len() < 1024 {
        entries.sort_unstable_by_key(key);
        return;
    }
    let bits = (entries.len() / 4).ilog2().min(24);
    let bucket = |e: &IdEntry| (e.hash >> (64 - bits)) as usize;
    let mut starts = vec![0usize; (1 << bits) + 1];
    for entry in entries.iter() {
        starts[bucket(entry) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut dealt = vec![IdEntry::default(); entries.len()];
    for entry in entries.iter() {
        let at = &mut next[bucket(entry)];
        dealt[*at] = *entry;
        *at += 1;
    }
    for window in starts.windows(2) {
        dealt[window[0]..window[1]].sort_unstable_by_key(key);
    }
    entries.copy_from_slice(&dealt);
}

/// One record with an id: its id's hash and where it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    pub base_offset: u64,
    pub log_bytes: u64,
    pub next_offset: u64,
    pub entry_count: u32,
    pub flags: u32,
    pub entries_crc: u32,
}

impl IdIndexHeader {
    /// Some batch failed its CRC when the index was built: its ids are missing.
    pub fn incomplete(&self) -> bool {
        self.flags & FLAG_INCOMPLETE != 0
    }

    /// Length of the whole file this header describes.
    pub fn file_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + ENTRY_BYTES as u64 * u64::from(self.entry_count)
    }
}

/// The bytes of an `.idindex` file for the segment `[base_offset, next_offset)` whose
/// log is `log_bytes` long. Sorts `entries`. The caller keeps `entries` within
/// [`ID_INDEX_ENTRIES_MAX`] (a segment rolls before it holds more ids).
pub fn encode(
    base_offset: u64,
    log_bytes: u64,
    next_offset: u64,
    incomplete: bool,
    entries: &mut [IdEntry],
) -> Vec<u8> {
    sort_entries(entries);
    let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * entries.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(ENTRY_BYTES as u16).to_le_bytes());
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&log_bytes.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let flags = if incomplete { FLAG_INCOMPLETE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // the two CRCs, below
    for entry in entries.iter() {
        out.extend_from_slice(&entry.hash.to_le_bytes());
        out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        out.extend_from_slice(&entry.position.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[AT_ENTRIES_CRC..AT_HEADER_CRC].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..AT_HEADER_CRC]);
    out[AT_HEADER_CRC..HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
    out
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

/// Parses and checks the header at the start of `bytes` (at least its 48 bytes): its
/// CRC, magic, version, entry size, flags, offsets and entry count. Does not look at
/// the entries: see [`decode`].
pub fn decode_header(bytes: &[u8]) -> Result<IdIndexHeader, FormatError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FormatError::Incomplete {
            needed: HEADER_BYTES as u64,
        });
    }
    let header_crc = u32::from_le_bytes(field(bytes, AT_HEADER_CRC)?);
    if crc32fast::hash(&bytes[..AT_HEADER_CRC]) != header_crc {
        return Err(invalid("id index header CRC mismatch"));
    }
    if field::<4>(bytes, 0)? != MAGIC {
        return Err(invalid("not an id index (wrong magic)"));
    }
    if u16::from_le_bytes(field(bytes, AT_VERSION)?) != VERSION {
        return Err(invalid("unknown id index version"));
    }
    if usize::from(u16::from_le_bytes(field(bytes, AT_ENTRY_BYTES)?)) != ENTRY_BYTES {
        return Err(invalid("wrong id index entry size"));
    }
    let header = IdIndexHeader {
        base_offset: u64::from_le_bytes(field(bytes, AT_BASE_OFFSET)?),
        log_bytes: u64::from_le_bytes(field(bytes, AT_LOG_BYTES)?),
        next_offset: u64::from_le_bytes(field(bytes, AT_NEXT_OFFSET)?),
        entry_count: u32::from_le_bytes(field(bytes, AT_ENTRY_COUNT)?),
        flags: u32::from_le_bytes(field(bytes, AT_FLAGS)?),
        entries_crc: u32::from_le_bytes(field(bytes, AT_ENTRIES_CRC)?),
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
    if header.entry_count > ID_INDEX_ENTRIES_MAX {
        return Err(invalid(format!(
            "{} id index entries is over the limit of {ID_INDEX_ENTRIES_MAX}",
            header.entry_count
        )));
    }
    if u64::from(header.entry_count) > span {
        return Err(invalid(format!(
            "{} id index entries for a segment of {span} records",
            header.entry_count
        )));
    }
    Ok(header)
}

/// Decodes and validates a whole `.idindex` file: the header, the length, the
/// entries' CRC, every entry within the segment and the order. Returns the header and
/// the entries as a [`IdTable`] that slices `bytes` (no copy).
pub fn decode(bytes: &Bytes) -> Result<(IdIndexHeader, IdTable), FormatError> {
    let header = decode_header(bytes)?;
    if bytes.len() as u64 != header.file_bytes() {
        return Err(invalid(format!(
            "id index is {} bytes, its header says {}",
            bytes.len(),
            header.file_bytes()
        )));
    }
    let body = bytes.slice(HEADER_BYTES..);
    if crc32fast::hash(&body) != header.entries_crc {
        return Err(invalid("id index entries CRC mismatch"));
    }
    let span = header.next_offset - header.base_offset;
    let table = IdTable {
        entries: body,
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
    Ok((header, table))
}

/// The entries of an id index, validated and sorted, in the file's bytes (a mapping
/// of the file, or bytes built in memory): binary search without decoding it all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdTable {
    /// Whole entries, sorted by `(hash, relative_offset)`.
    entries: Bytes,
    incomplete: bool,
}

impl IdTable {
    /// A table of `entries` (sorted here), in memory.
    pub fn from_entries(mut entries: Vec<IdEntry>, incomplete: bool) -> Self {
        sort_entries(&mut entries);
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY_BYTES);
        for entry in &entries {
            bytes.extend_from_slice(&entry.hash.to_le_bytes());
            bytes.extend_from_slice(&entry.relative_offset.to_le_bytes());
            bytes.extend_from_slice(&entry.position.to_le_bytes());
        }
        IdTable {
            entries: Bytes::from(bytes),
            incomplete,
        }
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

    /// The bucket sort orders like a comparison sort by `(hash, relative_offset)`:
    /// random sizes across the point where buckets start, hashes spread, crowded into
    /// a few top bits, or repeated.
    #[test]
    fn entries_sort_by_hash_then_offset() {
        let mut rng = crate::rng::SeededRng::new(11);
        for round in 0..60 {
            let len = rng.below(if round % 3 == 0 { 6000 } else { 2000 }) as usize;
            let spread = rng.below(3);
            let mut entries: Vec<IdEntry> = (0..len)
                .map(|i| IdEntry {
                    hash: match spread {
                        0 => rng.next(),
                        // Every hash in a few buckets.
                        1 => rng.below(4) << 62 | rng.below(1000),
                        _ => rng.below(50),
                    },
                    relative_offset: (len - i) as u32,
                    position: rng.below(1 << 20) as u32,
                })
                .collect();
            let mut expected = entries.clone();
            expected.sort_unstable_by_key(|e| (e.hash, e.relative_offset));
            sort_entries(&mut entries);
            assert_eq!(entries, expected, "round {round}, {len} entries");
        }
    }

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

    fn file() -> Bytes {
        Bytes::from(encode(100, 5_000, 110, false, &mut entries()))
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
                base_offset: 100,
                log_bytes: 5_000,
                next_offset: 110,
                entry_count: 4,
                flags: 0,
                entries_crc: header.entries_crc,
            }
        );
        let mut sorted = entries();
        sorted.sort_by_key(|e| (e.hash, e.relative_offset));
        assert_eq!(table.iter().collect::<Vec<_>>(), sorted);
        assert_eq!(table, IdTable::from_entries(entries(), false));
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
        let reseal = |mut bytes: Vec<u8>| {
            let crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
            bytes[AT_ENTRIES_CRC..AT_HEADER_CRC].copy_from_slice(&crc.to_le_bytes());
            let crc = crc32fast::hash(&bytes[..AT_HEADER_CRC]);
            bytes[AT_HEADER_CRC..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            Bytes::from(bytes)
        };
        let mut swapped = file().to_vec();
        let (first, second) = (HEADER_BYTES, HEADER_BYTES + ENTRY_BYTES);
        let entry: Vec<u8> = swapped[first..second].to_vec();
        swapped.copy_within(second..second + ENTRY_BYTES, first);
        swapped[second..second + ENTRY_BYTES].copy_from_slice(&entry);
        assert!(decode(&reseal(swapped)).is_err());

        let mut outside = file().to_vec();
        // relative offset 10 of a segment of 10 records.
        outside[HEADER_BYTES + 8..HEADER_BYTES + 12].copy_from_slice(&10u32.to_le_bytes());
        assert!(decode(&reseal(outside)).is_err());

        let mut too_many = file().to_vec();
        too_many[AT_ENTRY_COUNT..AT_FLAGS]
            .copy_from_slice(&(ID_INDEX_ENTRIES_MAX + 1).to_le_bytes());
        assert!(decode_header(&reseal(too_many)).is_err());
    }

    #[test]
    fn the_incomplete_flag_round_trips_and_unknown_flags_are_refused() {
        let bytes = Bytes::from(encode(0, 10, 1, true, &mut []));
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
