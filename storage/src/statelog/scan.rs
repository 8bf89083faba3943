//! Reading a state log from its first byte: every record validated and handed on, and
//! the end classified as clean, a torn tail (what a crash during the last write leaves:
//! recovery truncates it), a record written whole by a newer build (recovery refuses to
//! open: run that build) or corruption (anything else: recovery refuses to open).
//!
//! One rule for the engine's replay ([`scan_file`], which streams the file in chunks of
//! [`STATE_READ_CHUNK_BYTES`]) and for offline tools ([`scan_image`] over bytes already in
//! memory): both run [`scan_source`].

use std::convert::Infallible;
use std::io;

use crate::fs::FsFile;
use crate::limits::STATE_READ_CHUNK_BYTES;

use super::record::{
    LogOp, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, Record, checksum_matches, claimed_len,
    decode_record,
};

/// What a scan of a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of whole, valid records from the start.
    pub valid_len: u64,
    /// Records in those bytes.
    pub records: u64,
    /// Bytes in the file (or image).
    pub file_bytes: u64,
    /// How the valid bytes end.
    pub end: ScanEnd,
}

/// How the valid records of a log end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// From `position` on is what a crash during the last write can leave: an
    /// incomplete record, or one whose length or checksum is wrong, with no intact
    /// record after it and no more bytes after it than one record. Recovery truncates
    /// the file to `position`.
    Torn { position: u64, reason: String },
    /// The record at `position` is damaged and a crash cannot explain it: its checksum
    /// matched but its content is not understood, or an intact record follows it, or
    /// more bytes follow it than one write can leave. Recovery refuses to open the log.
    Corrupt { position: u64, reason: String },
    /// The record at `position` was written whole (its checksum matched) by a newer
    /// build: it holds an operation kind or is of a record version this build does not
    /// know ([`DecodeError::written_by_newer`](super::DecodeError::written_by_newer)).
    /// Not damage: recovery refuses to open the log ([`crate::Error::WrittenByNewer`])
    /// and cuts nothing, so the build that wrote it reads it whole.
    Newer { position: u64, reason: String },
}

impl Scan {
    /// Whether the log can be opened (after cutting a torn tail).
    pub fn is_openable(&self) -> bool {
        matches!(self.end, ScanEnd::Clean | ScanEnd::Torn { .. })
    }
}

/// Scans a whole log image in memory, calling `on_record(position, record)` for each
/// valid record in order. Never panics, whatever the bytes.
pub fn scan_image<O: LogOp>(image: &[u8], on_record: impl FnMut(u64, Record<O>)) -> Scan {
    let Ok(scan) = scan_source(&mut SliceSource(image), on_record);
    scan
}

/// Scans the log open as `file`, reading it in chunks: at most
/// `max(STATE_READ_CHUNK_BYTES, one record)` bytes of it are in memory at once.
pub(crate) fn scan_file<O: LogOp>(
    file: &dyn FsFile,
    on_record: impl FnMut(u64, Record<O>),
) -> io::Result<Scan> {
    let len = file.size()?;
    scan_file_prefix(file, len, on_record)
}

/// [`scan_file`] of the first `len` bytes of the file only (fewer if it is shorter):
/// for a reader of a log that is being appended to, which reads only what was durable
/// when it began ([`crate::statelog::StateLog::log_bytes`]).
pub(crate) fn scan_file_prefix<O: LogOp>(
    file: &dyn FsFile,
    len: u64,
    on_record: impl FnMut(u64, Record<O>),
) -> io::Result<Scan> {
    let len = len.min(file.size()?);
    scan_source(
        &mut FileSource {
            file,
            len,
            buf: Vec::new(),
            start: 0,
        },
        on_record,
    )
}

/// Random access to the bytes of a log.
pub(crate) trait Source {
    type Error;
    fn len(&self) -> u64;
    /// Bytes `[at, at + want)`, fewer where the log ends first.
    fn get(&mut self, at: u64, want: usize) -> Result<&[u8], Self::Error>;
}

struct SliceSource<'a>(&'a [u8]);

impl Source for SliceSource<'_> {
    type Error = Infallible;

    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn get(&mut self, at: u64, want: usize) -> Result<&[u8], Infallible> {
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(self.0.len());
        let end = start.saturating_add(want).min(self.0.len());
        Ok(self.0.get(start..end).unwrap_or_default())
    }
}

/// A file read through a buffer of at least [`STATE_READ_CHUNK_BYTES`].
struct FileSource<'a> {
    file: &'a dyn FsFile,
    len: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
}

impl Source for FileSource<'_> {
    type Error = io::Error;

    fn len(&self) -> u64 {
        self.len
    }

    fn get(&mut self, at: u64, want: usize) -> io::Result<&[u8]> {
        let at = at.min(self.len);
        let end = at.saturating_add(want as u64).min(self.len);
        let buffered_end = self.start + self.buf.len() as u64;
        if at < self.start || end > buffered_end {
            // `end - at <= want`, which callers bound by one record (plus one byte).
            let fill = ((end - at) as usize)
                .max(STATE_READ_CHUNK_BYTES)
                .min((self.len - at) as usize);
            self.buf.clear();
            self.buf.resize(fill, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.start = at;
        }
        let from = (at - self.start) as usize;
        let to = (end - self.start) as usize;
        Ok(self.buf.get(from..to).unwrap_or_default())
    }
}

pub(crate) fn scan_source<O: LogOp, S: Source>(
    source: &mut S,
    mut on_record: impl FnMut(u64, Record<O>),
) -> Result<Scan, S::Error> {
    let len = source.len();
    let mut position = 0u64;
    let mut records = 0u64;
    let scan = |valid_len, records, end| Scan {
        valid_len,
        records,
        file_bytes: len,
        end,
    };
    while position < len {
        let want = claimed_len(source.get(position, RECORD_HEADER_BYTES)?);
        let damage = match decode_record::<O>(source.get(position, want)?) {
            Ok(Some((record, used))) => {
                on_record(position, record);
                position += used as u64;
                records += 1;
                continue;
            }
            Ok(None) => format!(
                "the record is incomplete: the file ends {} bytes into it",
                len - position
            ),
            Err(e) if e.may_be_torn_write() => e.to_string(),
            Err(e) if e.written_by_newer() => {
                let reason = e.to_string();
                return Ok(scan(position, records, ScanEnd::Newer { position, reason }));
            }
            Err(e) => {
                let reason = format!("{e} (its checksum matched, so this is not a torn write)");
                return Ok(scan(
                    position,
                    records,
                    ScanEnd::Corrupt { position, reason },
                ));
            }
        };
        // Only the last write can be torn by a crash, and a write is one record. A
        // damaged `body_len` in the middle can make a record look incomplete, so look
        // for an intact record after it, within what one record could span.
        let rest = len - position;
        let window = rest.min(RECORD_BYTES_MAX as u64 + 1) as usize;
        let tail = source.get(position, window)?;
        let end = if let Some(next) = intact_record_in(tail) {
            let reason = format!(
                "{damage}; an intact record follows at byte {}, so this is damage inside the \
                 log, not a torn write at its end",
                position + next as u64
            );
            ScanEnd::Corrupt { position, reason }
        } else if rest > RECORD_BYTES_MAX as u64 {
            let reason = format!(
                "{damage}; {rest} bytes follow its start, more than one record \
                 ({RECORD_BYTES_MAX} bytes at most) a crash can tear, so this is damage inside \
                 the log, not a torn write at its end"
            );
            ScanEnd::Corrupt { position, reason }
        } else {
            ScanEnd::Torn {
                position,
                reason: damage,
            }
        };
        return Ok(scan(position, records, end));
    }
    Ok(scan(position, records, ScanEnd::Clean))
}

/// The first position after 0 in `tail` where a record starts whose checksum matches
/// (whether its body decodes or not: a matching checksum means it was written whole).
fn intact_record_in(tail: &[u8]) -> Option<usize> {
    (1..tail.len()).find(|&candidate| checksum_matches(tail.get(candidate..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::{TestOp, with_valid_header};
    use super::super::record::{RECORD_VERSION, encode_record};
    use super::*;
    use crate::fs::{FileSystem, OpenMode, OsFs};
    use proptest::prelude::*;

    fn record(key: &str, value: u64) -> Vec<u8> {
        encode_record(&Record {
            written_at_ms: 1,
            ops: vec![TestOp::Put(key.to_string(), value)],
        })
        .unwrap()
    }

    fn image(records: &[Vec<u8>]) -> Vec<u8> {
        records.concat()
    }

    fn scan_kv(image: &[u8]) -> (Scan, Vec<u64>) {
        let mut values = Vec::new();
        let scan = scan_image::<TestOp>(image, |_, record| {
            for op in record.ops {
                if let TestOp::Put(_, value) = op {
                    values.push(value);
                }
            }
        });
        (scan, values)
    }

    #[test]
    fn clean_log_scans_to_its_end() {
        let bytes = image(&[record("a", 1), record("b", 2), record("c", 3)]);
        let (scan, values) = scan_kv(&bytes);
        assert_eq!(scan.end, ScanEnd::Clean);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(scan.records, 3);
        assert_eq!(values, [1, 2, 3]);
        assert_eq!(scan_kv(&[]).0.end, ScanEnd::Clean);
    }

    /// A cut anywhere in the last record, or any damage confined to it, or a zero
    /// extension, is a torn tail; damage in a record with an intact one after it is
    /// corruption at that record.
    #[test]
    fn torn_tail_and_corruption_are_told_apart() {
        let first = record("a", 1);
        let middle = record("b", 2);
        let last = record("c", 3);
        let full = image(&[first.clone(), middle.clone(), last.clone()]);
        let last_start = first.len() + middle.len();
        for cut in last_start + 1..full.len() {
            let (scan, values) = scan_kv(&full[..cut]);
            assert_eq!(scan.valid_len, last_start as u64, "cut {cut}");
            assert!(matches!(scan.end, ScanEnd::Torn { .. }), "cut {cut}");
            assert_eq!(values, [1, 2]);
        }
        for at in last_start..full.len() {
            let mut damaged = full.clone();
            damaged[at] ^= 0xFF;
            let (scan, _) = scan_kv(&damaged);
            assert!(
                matches!(scan.end, ScanEnd::Torn { position, .. } if position == last_start as u64),
                "flip at {at}: {scan:?}"
            );
        }
        let mut zero_extended = full.clone();
        zero_extended.extend_from_slice(&[0; 4096]);
        assert!(matches!(
            scan_kv(&zero_extended).0.end,
            ScanEnd::Torn { .. }
        ));

        for at in first.len()..last_start {
            let mut damaged = full.clone();
            damaged[at] ^= 0x80;
            let (scan, values) = scan_kv(&damaged);
            assert!(
                matches!(&scan.end, ScanEnd::Corrupt { position, reason }
                    if *position == first.len() as u64 && reason.contains("intact record follows")),
                "flip at {at}: {scan:?}"
            );
            assert_eq!(values, [1]);
        }
    }

    #[test]
    fn checksummed_but_unreadable_record_is_corrupt_even_at_the_tail() {
        // Version 0 was never written (a newer version is a newer build's: see below).
        let mut body = vec![0];
        body.extend_from_slice(&[0; 12]);
        let bytes = image(&[record("a", 1), with_valid_header(&body)]);
        let (scan, _) = scan_kv(&bytes);
        assert!(
            matches!(&scan.end, ScanEnd::Corrupt { reason, .. } if reason.contains("checksum matched")),
            "{scan:?}"
        );
        assert!(!scan.is_openable());
    }

    /// A whole record of a kind (or record version) this build does not know is what a
    /// newer build writes: told apart from damage, at the tail and in the middle.
    #[test]
    fn a_whole_record_of_a_newer_build_is_newer_not_corrupt() {
        let mut body = vec![RECORD_VERSION];
        body.extend_from_slice(&0i64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(99);
        let newer = with_valid_header(&body);
        let first = record("a", 1);
        for bytes in [
            image(&[first.clone(), newer.clone()]),
            image(&[first.clone(), newer.clone(), record("b", 2)]),
        ] {
            let (scan, values) = scan_kv(&bytes);
            assert!(
                matches!(&scan.end, ScanEnd::Newer { position, reason }
                    if *position == first.len() as u64 && reason.contains("kind 99")),
                "{scan:?}"
            );
            assert!(!scan.is_openable());
            assert_eq!((scan.valid_len, values), (first.len() as u64, vec![1]));
        }
    }

    #[test]
    fn damage_followed_by_more_than_one_record_of_bytes_is_corruption() {
        let mut bytes = record("a", 1);
        let start = bytes.len() as u64;
        bytes.extend(std::iter::repeat_n(0xA5, RECORD_BYTES_MAX + 1));
        let (scan, _) = scan_kv(&bytes);
        assert!(
            matches!(&scan.end, ScanEnd::Corrupt { position, reason }
                if *position == start && reason.contains("more than one record")),
            "{scan:?}"
        );
        bytes.truncate(start as usize + RECORD_BYTES_MAX);
        assert!(matches!(
            scan_image::<TestOp>(&bytes, |_, _| ()).end,
            ScanEnd::Torn { .. }
        ));
    }

    /// The streaming reader agrees with the in-memory one, records larger than its
    /// chunk included.
    #[test]
    fn file_scan_matches_image_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let big_key = "k".repeat(64);
        let mut records = Vec::new();
        for i in 0..40_000u64 {
            records.push(record(&big_key, i));
        }
        let mut bytes = image(&records);
        assert!(bytes.len() > 2 * STATE_READ_CHUNK_BYTES);
        bytes.extend_from_slice(&records[0][..10]);
        let file = OsFs.open(&path, OpenMode::CreateNew).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        let mut count = 0u64;
        let from_file = scan_file::<TestOp>(&*file, |_, _| count += 1).unwrap();
        assert_eq!(from_file, scan_kv(&bytes).0);
        assert_eq!(count, 40_000);
        assert!(matches!(from_file.end, ScanEnd::Torn { .. }));
    }

    proptest! {
        /// Whatever the bytes: no panic, the valid prefix scans clean with the same
        /// records, and a torn tail is never longer than one record.
        #[test]
        fn scan_invariants_hold_on_any_bytes(
            keys in proptest::collection::vec(0u64..1000, 0..6),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<Option<(usize, u8)>>(),
        ) {
            let mut bytes = image(&keys.iter().map(|k| record("k", *k)).collect::<Vec<_>>());
            bytes.extend_from_slice(&garbage);
            if let Some((at, bits)) = flip && !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            let (scan, values) = scan_kv(&bytes);
            prop_assert!(scan.valid_len <= bytes.len() as u64);
            let (again, again_values) = scan_kv(&bytes[..scan.valid_len as usize]);
            prop_assert_eq!(again.end, ScanEnd::Clean);
            prop_assert_eq!(again.records, scan.records);
            prop_assert_eq!(again_values, values);
            match scan.end {
                ScanEnd::Clean => prop_assert_eq!(scan.valid_len, bytes.len() as u64),
                ScanEnd::Torn { position, .. }
                | ScanEnd::Corrupt { position, .. }
                | ScanEnd::Newer { position, .. } => {
                    prop_assert_eq!(position, scan.valid_len);
                }
            }
        }
    }
}
