//! The record framing of a state log: header, body, operations; the encoder, the
//! validating decoder and the cursor that operation decoders read with. The byte table
//! is in the module docs of [`crate::statelog`] and in `storage/FORMAT.md`.

use crate::error::{Error, Result};
use crate::limits::STATE_RECORD_BODY_BYTES_MAX;

/// The only record version this build reads and writes.
pub const RECORD_VERSION: u8 = 1;

// Record header layout, each offset chained from the previous field.
const HEADER_BODY_LEN_AT: usize = 0;
pub(crate) const HEADER_CRC_AT: usize = HEADER_BODY_LEN_AT + 4;
/// Bytes before the body of a record: `body_len` and `crc`.
pub const RECORD_HEADER_BYTES: usize = HEADER_CRC_AT + 4;

// Body layout.
pub(crate) const BODY_VERSION_AT: usize = 0;
const BODY_WRITTEN_AT_MS_AT: usize = BODY_VERSION_AT + 1;
const BODY_OP_COUNT_AT: usize = BODY_WRITTEN_AT_MS_AT + 8;
/// Bytes of a body before its first operation; also the smallest valid `body_len`.
pub const BODY_FIXED_BYTES: usize = BODY_OP_COUNT_AT + 4;

/// Room for operations in one record: what one append call (all of its operations) and
/// so one operation may encode to.
pub const OPS_BYTES_MAX: usize = STATE_RECORD_BODY_BYTES_MAX as usize - BODY_FIXED_BYTES;

/// The longest record, header included. A crash tears at most the last write, which is
/// one record, so a damaged tail longer than this cannot be a torn write.
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + STATE_RECORD_BODY_BYTES_MAX as usize;

const _: () = assert!(BODY_FIXED_BYTES == 13);
const _: () = assert!(OPS_BYTES_MAX > 0);

/// An operation of a state machine, as it is stored. Its encoding starts with a `kind`
/// byte that names the operation within its machine (each machine has its own kinds;
/// see "Adding an operation" in [`crate::statelog`]).
pub trait LogOp: Sized + Send + 'static {
    /// Appends the encoding of `self`, kind byte first. Refuses (with
    /// [`Error::InvalidArgument`]) what [`LogOp::decode`] would refuse: nothing that
    /// cannot be read back is ever written.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()>;

    /// Reads one operation, kind byte first. Must check every length against
    /// [`OpReader::remaining`] before allocating, never panic, and consume exactly the
    /// bytes [`LogOp::encode`] wrote.
    fn decode(reader: &mut OpReader<'_>) -> Result<Self, DecodeError>;
}

/// One decoded record: the operations one flush wrote, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<O> {
    /// Wall clock when the record was written; informational.
    pub written_at_ms: i64,
    /// At least one operation, applied in order.
    pub ops: Vec<O>,
}

/// Why bytes are not a valid record. Positions are byte offsets from the start of the
/// record (its `body_len` field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// `body_len` is below the fixed body size or above the limit.
    #[error(
        "record body length {body_len} is outside {BODY_FIXED_BYTES}..={STATE_RECORD_BODY_BYTES_MAX}"
    )]
    LengthOutOfRange { body_len: u32 },

    /// The body's CRC does not match the stored one.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },

    /// The checksum matched but the version is not one this build knows.
    #[error(
        "record version {version} is not supported (this build reads version {RECORD_VERSION}; was the file written by a newer tidelog?)"
    )]
    UnsupportedVersion { version: u8 },

    /// The checksum matched but the body does not follow the format.
    #[error("malformed record at byte {at}: {reason}")]
    Malformed { at: usize, reason: String },

    /// The checksum matched and the operation at byte `at` is of a kind this build
    /// does not know: what a newer build writes (kinds are never reused), not damage.
    #[error(
        "operation kind {kind} at byte {at} of the record is not one this build knows (a newer tidelog wrote it)"
    )]
    UnknownKind { at: usize, kind: u8 },
}

impl DecodeError {
    /// Whether a crash during the write could have produced this: the header or body
    /// bytes are not the ones written. A record whose checksum matched was written this
    /// way, so it is never a torn write.
    pub fn may_be_torn_write(&self) -> bool {
        matches!(
            self,
            DecodeError::LengthOutOfRange { .. } | DecodeError::ChecksumMismatch { .. }
        )
    }

    /// Whether the record was written whole by a newer build: its checksum matched and
    /// it holds an operation kind, or is of a record version, newer than this build
    /// knows. The one rule by which every state log tells a record it must not read
    /// (refused as [`crate::Error::WrittenByNewer`]: run the newer build) from damage.
    pub fn written_by_newer(&self) -> bool {
        match self {
            DecodeError::UnknownKind { .. } => true,
            DecodeError::UnsupportedVersion { version } => *version > RECORD_VERSION,
            _ => false,
        }
    }
}

/// How many bytes the record at the start of `bytes` claims, header included, from its
/// header alone (clamped to [`RECORD_BYTES_MAX`]); [`RECORD_HEADER_BYTES`] when the header
/// is incomplete or its length is out of range, which the header alone shows.
pub(crate) fn claimed_len(header: &[u8]) -> usize {
    match header
        .first_chunk::<4>()
        .map(|len| u32::from_le_bytes(*len))
    {
        Some(body_len)
            if (body_len as usize) >= BODY_FIXED_BYTES
                && body_len <= STATE_RECORD_BODY_BYTES_MAX =>
        {
            RECORD_HEADER_BYTES + body_len as usize
        }
        _ => RECORD_HEADER_BYTES,
    }
}

/// Whether a complete record whose length is in range and whose checksum matches starts
/// at `bytes[0]`: it was written whole, whether its body decodes or not.
pub(crate) fn checksum_matches(bytes: &[u8]) -> bool {
    let end = claimed_len(bytes);
    if end == RECORD_HEADER_BYTES {
        return false;
    }
    let stored = bytes
        .get(HEADER_CRC_AT..RECORD_HEADER_BYTES)
        .and_then(|field| <[u8; 4]>::try_from(field).ok())
        .map(u32::from_le_bytes);
    match (bytes.get(RECORD_HEADER_BYTES..end), stored) {
        (Some(body), Some(stored)) => crc32fast::hash(body) == stored,
        _ => false,
    }
}

/// Decodes the record at the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the record does (an incomplete record),
/// `Ok(Some((record, used)))` with the number of bytes the record occupies, or why the
/// bytes are not a record. Never panics and never allocates more than the bytes given
/// justify, whatever the input.
pub fn decode_record<O: LogOp>(bytes: &[u8]) -> Result<Option<(Record<O>, usize)>, DecodeError> {
    let Some((body_len, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let Some((stored_crc, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let body_len = u32::from_le_bytes(*body_len);
    let stored = u32::from_le_bytes(*stored_crc);
    if (body_len as usize) < BODY_FIXED_BYTES || body_len > STATE_RECORD_BODY_BYTES_MAX {
        return Err(DecodeError::LengthOutOfRange { body_len });
    }
    let Some(body) = rest.get(..body_len as usize) else {
        return Ok(None);
    };
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    let record = decode_body(body)?;
    Ok(Some((record, RECORD_HEADER_BYTES + body.len())))
}

fn decode_body<O: LogOp>(body: &[u8]) -> Result<Record<O>, DecodeError> {
    let mut reader = OpReader {
        rest: body,
        consumed: 0,
    };
    let version = reader.u8("version")?;
    if version != RECORD_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let written_at_ms = reader.i64("written_at_ms")?;
    let op_count = reader.u32("op_count")?;
    if op_count == 0 {
        return Err(reader.malformed("op_count is 0"));
    }
    // Each operation consumes at least its kind byte or fails, so this loop (and the
    // vector) is bounded by the body's length, not by `op_count`.
    let mut ops = Vec::new();
    for _ in 0..op_count {
        let before = reader.consumed;
        ops.push(O::decode(&mut reader)?);
        if reader.consumed == before {
            return Err(reader.malformed("an operation decoder consumed no bytes"));
        }
    }
    if !reader.rest.is_empty() {
        return Err(reader.malformed(format!(
            "{} bytes follow the last of {op_count} operations",
            reader.rest.len()
        )));
    }
    Ok(Record { written_at_ms, ops })
}

/// Encodes `record` as it is stored, header included. Refuses what the decoder would
/// refuse: no operations, an operation its [`LogOp::encode`] refuses, a body over
/// [`STATE_RECORD_BODY_BYTES_MAX`].
pub fn encode_record<O: LogOp>(record: &Record<O>) -> Result<Vec<u8>> {
    if record.ops.is_empty() {
        return Err(Error::invalid(
            "a state log record needs at least one operation",
        ));
    }
    let mut ops = Vec::new();
    for op in &record.ops {
        op.encode(&mut ops)?;
    }
    check_ops_fit("state log record", ops.len())?;
    Ok(assemble_record(
        record.written_at_ms,
        record.ops.len() as u32,
        std::iter::once(ops.as_slice()),
    ))
}

/// Refuses `ops_len` bytes of operations that do not fit one record.
pub(crate) fn check_ops_fit(what: &str, ops_len: usize) -> Result<()> {
    if ops_len > OPS_BYTES_MAX {
        return Err(Error::TooLarge {
            what: what.to_string(),
            size: (BODY_FIXED_BYTES + ops_len) as u64,
            limit: u64::from(STATE_RECORD_BODY_BYTES_MAX),
            limit_name: "STATE_RECORD_BODY_BYTES_MAX",
        });
    }
    Ok(())
}

/// Builds a record around `op_count` operations already encoded, given as consecutive
/// pieces. The caller has checked that they fit ([`check_ops_fit`]).
pub(crate) fn assemble_record<'a>(
    written_at_ms: i64,
    op_count: u32,
    pieces: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let ops_len: usize = pieces.clone().map(<[u8]>::len).sum();
    let body_len = BODY_FIXED_BYTES + ops_len;
    debug_assert!(op_count >= 1);
    debug_assert!(
        ops_len >= op_count as usize,
        "every operation has a kind byte"
    );
    debug_assert!(body_len <= STATE_RECORD_BODY_BYTES_MAX as usize);

    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below.
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&written_at_ms.to_le_bytes());
    out.extend_from_slice(&op_count.to_le_bytes());
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES + BODY_FIXED_BYTES);
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES + body_len);
    let crc = crc32fast::hash(out.get(RECORD_HEADER_BYTES..).unwrap_or_default());
    if let Some(field) = out.get_mut(HEADER_CRC_AT..RECORD_HEADER_BYTES) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// Appends a str16: a `u16` byte length, then the UTF-8 bytes. The caller has checked
/// that `text` is at most `u16::MAX` bytes (its [`LogOp::encode`] validates lengths).
pub fn put_str16(out: &mut Vec<u8>, text: &str) {
    put_bytes16(out, text.as_bytes());
}

/// Appends a bytes16: a `u16` byte length, then the bytes (at most `u16::MAX`).
pub fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over a record body that checks every length against what remains. What an
/// operation decoder ([`LogOp::decode`]) reads with; every read names the field, so a
/// malformed record says which field and where.
#[derive(Debug)]
pub struct OpReader<'a> {
    rest: &'a [u8],
    consumed: usize,
}

impl<'a> OpReader<'a> {
    /// A reader over a bare body, positions counted as if a record header preceded it.
    /// For tests of operation decoders.
    pub fn new(body: &'a [u8]) -> Self {
        OpReader {
            rest: body,
            consumed: 0,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// A [`DecodeError::Malformed`] at the current position.
    pub fn malformed(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::Malformed {
            at: RECORD_HEADER_BYTES + self.consumed,
            reason: reason.into(),
        }
    }

    /// The error for an operation kind the machine does not know, just read: every
    /// machine's decoder returns this for a kind it does not know, so a record of a
    /// newer build is refused as such ([`DecodeError::written_by_newer`]), never as
    /// damage.
    pub fn unknown_kind(&self, kind: u8) -> DecodeError {
        DecodeError::UnknownKind {
            // The kind byte was already consumed.
            at: (RECORD_HEADER_BYTES + self.consumed).saturating_sub(1),
            kind,
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                self.consumed += N;
                Ok(*head)
            }
            None => Err(self.malformed(format!(
                "{what} needs {N} bytes but {} remain",
                self.rest.len()
            ))),
        }
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array::<1>(what)?))
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array::<8>(what)?))
    }

    /// A `u32` count of items that each take at least `item_bytes_min` bytes, at least
    /// `min`: refused when the remaining bytes cannot hold that many, so a loop over it
    /// (and a vector sized by it) is bounded by the record, not by the number.
    pub fn count(
        &mut self,
        what: &str,
        min: u32,
        item_bytes_min: usize,
    ) -> Result<u32, DecodeError> {
        let count = self.u32(what)?;
        if count < min {
            return Err(self.malformed(format!("{what} is {count}, below {min}")));
        }
        let fits = (self.rest.len() / item_bytes_min.max(1)) as u64;
        if u64::from(count) > fits {
            return Err(self.malformed(format!(
                "{what} {count} cannot fit in the {} bytes that remain",
                self.rest.len()
            )));
        }
        Ok(count)
    }

    /// A bytes16 of `min..=max` bytes.
    pub fn bytes16(&mut self, what: &str, min: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(what)?);
        if len < min || len > max {
            return Err(self.malformed(format!("{what} is {len} bytes, outside {min}..={max}")));
        }
        let Some((raw, tail)) = self.rest.split_at_checked(len) else {
            return Err(self.malformed(format!(
                "{what} is {len} bytes but {} remain",
                self.rest.len()
            )));
        };
        self.rest = tail;
        self.consumed += len;
        Ok(raw)
    }

    /// A str16 of `min..=max` bytes of UTF-8.
    pub fn str16(&mut self, what: &str, min: usize, max: usize) -> Result<String, DecodeError> {
        let start = self.consumed;
        let raw = self.bytes16(what, min, max)?;
        match std::str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(DecodeError::Malformed {
                at: RECORD_HEADER_BYTES + start,
                reason: format!("{what} is not UTF-8: {e}"),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small operation for the tests of the framing: kind 1 puts a value under a key,
    /// kind 2 deletes a key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum TestOp {
        Put(String, u64),
        Delete(String),
    }

    impl LogOp for TestOp {
        fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
            let key = match self {
                TestOp::Put(key, _) | TestOp::Delete(key) => key,
            };
            if key.is_empty() || key.len() > 64 {
                return Err(Error::invalid("test keys are 1..=64 bytes"));
            }
            match self {
                TestOp::Put(key, value) => {
                    out.push(1);
                    put_str16(out, key);
                    out.extend_from_slice(&value.to_le_bytes());
                }
                TestOp::Delete(key) => {
                    out.push(2);
                    put_str16(out, key);
                }
            }
            Ok(())
        }

        fn decode(reader: &mut OpReader<'_>) -> Result<Self, DecodeError> {
            match reader.u8("kind")? {
                1 => Ok(TestOp::Put(
                    reader.str16("key", 1, 64)?,
                    reader.u64("value")?,
                )),
                2 => Ok(TestOp::Delete(reader.str16("key", 1, 64)?)),
                kind => Err(reader.unknown_kind(kind)),
            }
        }
    }

    fn put(key: &str, value: u64) -> TestOp {
        TestOp::Put(key.to_string(), value)
    }

    /// Wraps `body` in a header with the right length and checksum, so the body parser
    /// itself is exercised.
    pub(crate) fn with_valid_header(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    fn body_head(op_count: u32) -> Vec<u8> {
        let mut body = vec![RECORD_VERSION];
        body.extend_from_slice(&0i64.to_le_bytes());
        body.extend_from_slice(&op_count.to_le_bytes());
        body
    }

    #[test]
    fn decode_distinguishes_incomplete_from_invalid() {
        let record = encode_record(&Record {
            written_at_ms: 5,
            ops: vec![put("k", 7), TestOp::Delete("j".into())],
        })
        .unwrap();
        assert_eq!(claimed_len(&record), record.len());
        for cut in 0..record.len() {
            assert_eq!(
                decode_record::<TestOp>(&record[..cut]),
                Ok(None),
                "cut {cut}"
            );
        }
        let (decoded, used) = decode_record::<TestOp>(&record).unwrap().unwrap();
        assert_eq!(used, record.len());
        assert_eq!(decoded.written_at_ms, 5);
        assert_eq!(decoded.ops, [put("k", 7), TestOp::Delete("j".into())]);

        let mut zero = record.clone();
        zero[..4].fill(0);
        assert_eq!(claimed_len(&zero), RECORD_HEADER_BYTES);
        assert_eq!(
            decode_record::<TestOp>(&zero),
            Err(DecodeError::LengthOutOfRange { body_len: 0 })
        );
        let mut huge = record.clone();
        huge[..4].copy_from_slice(&(STATE_RECORD_BODY_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(
            decode_record::<TestOp>(&huge),
            Err(DecodeError::LengthOutOfRange { .. })
        ));
        let mut flipped = record;
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_record::<TestOp>(&flipped),
            Err(DecodeError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn malformed_bodies_with_valid_checksums_are_rejected() {
        let malformed = |body: &[u8]| {
            let result = decode_record::<TestOp>(&with_valid_header(body));
            assert!(
                matches!(result, Err(DecodeError::Malformed { .. })),
                "{result:?}"
            );
            assert!(!result.unwrap_err().may_be_torn_write());
        };
        // op_count 0, and op_count 1 with no operation.
        malformed(&body_head(0));
        malformed(&body_head(1));
        // An unknown kind, reported at its byte, as written by a newer build (also
        // after a known operation).
        let mut unknown = body_head(1);
        unknown.push(9);
        let error = decode_record::<TestOp>(&with_valid_header(&unknown)).unwrap_err();
        assert_eq!(error, DecodeError::UnknownKind { at: 21, kind: 9 });
        assert!(error.written_by_newer() && !error.may_be_torn_write());
        let mut after_known = body_head(2);
        after_known.extend_from_slice(&[2, 1, 0, b'k', 17]);
        assert_eq!(
            decode_record::<TestOp>(&with_valid_header(&after_known)),
            Err(DecodeError::UnknownKind { at: 25, kind: 17 })
        );
        // A string longer than what remains; not UTF-8.
        let mut short = body_head(1);
        short.push(2);
        short.extend_from_slice(&40u16.to_le_bytes());
        short.extend_from_slice(b"abc");
        malformed(&short);
        let mut not_utf8 = body_head(1);
        not_utf8.push(2);
        not_utf8.extend_from_slice(&2u16.to_le_bytes());
        not_utf8.extend_from_slice(&[0xC3, 0x28]);
        malformed(&not_utf8);
        // Trailing bytes after the operations; a huge op_count.
        let mut trailing = body_head(1);
        trailing.extend_from_slice(&[2, 1, 0, b'k', 0]);
        malformed(&trailing);
        let mut many = body_head(u32::MAX);
        many.extend_from_slice(&[2, 1, 0, b'k']);
        malformed(&many);
        // An unknown version with a valid checksum.
        let mut version = body_head(1);
        version[0] = RECORD_VERSION + 1;
        version.extend_from_slice(&[2, 1, 0, b'k']);
        let error = decode_record::<TestOp>(&with_valid_header(&version)).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedVersion {
                version: RECORD_VERSION + 1
            }
        );
        assert!(error.written_by_newer());
        // Version 0 was never written: damage, not a newer build.
        version[0] = 0;
        let error = decode_record::<TestOp>(&with_valid_header(&version)).unwrap_err();
        assert!(!error.written_by_newer() && !error.may_be_torn_write());
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would() {
        let empty: Record<TestOp> = Record {
            written_at_ms: 0,
            ops: Vec::new(),
        };
        assert!(matches!(
            encode_record(&empty),
            Err(Error::InvalidArgument(_))
        ));
        let bad_key = Record {
            written_at_ms: 0,
            ops: vec![put("", 1)],
        };
        assert!(matches!(
            encode_record(&bad_key),
            Err(Error::InvalidArgument(_))
        ));
        assert!(check_ops_fit("x", OPS_BYTES_MAX).is_ok());
        assert!(matches!(
            check_ops_fit("x", OPS_BYTES_MAX + 1),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn reader_counts_are_bounded_by_the_bytes_that_remain() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(OpReader::new(&bytes).count("n", 1, 4), Ok(3));
        assert!(OpReader::new(&bytes).count("n", 1, 5).is_err());
        assert!(OpReader::new(&bytes).count("n", 4, 1).is_err());
        let mut reader = OpReader::new(&[5, 0, b'a']);
        assert!(reader.bytes16("id", 0, 10).is_err());
        let mut reader = OpReader::new(&[1, 0, b'a', 7]);
        assert_eq!(reader.bytes16("id", 1, 1).unwrap(), b"a");
        assert_eq!(reader.remaining(), 1);
    }

    fn any_op() -> impl Strategy<Value = TestOp> {
        let key = "[a-z0-9é]{1,16}";
        prop_oneof![
            (key, any::<u64>()).prop_map(|(k, v)| TestOp::Put(k, v)),
            key.prop_map(TestOp::Delete),
        ]
    }

    proptest! {
        #[test]
        fn decode_record_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record::<TestOp>(&bytes);
        }

        #[test]
        fn decode_record_never_panics_on_random_bodies_with_valid_checksum(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            version_ok in any::<bool>(),
        ) {
            let mut body = body;
            if version_ok && !body.is_empty() {
                body[0] = RECORD_VERSION;
            }
            let _ = decode_record::<TestOp>(&with_valid_header(&body));
        }

        #[test]
        fn encode_then_decode_round_trips(
            written_at_ms in any::<i64>(),
            ops in proptest::collection::vec(any_op(), 1..6),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let record = Record { written_at_ms, ops };
            let mut bytes = encode_record(&record).unwrap();
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            let (decoded, used) = decode_record::<TestOp>(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(decoded, record);
            // Every single-bit flip is caught.
            for at in 0..len {
                let mut damaged = bytes[..len].to_vec();
                damaged[at] ^= 1 << (at % 8);
                prop_assert!(!matches!(decode_record::<TestOp>(&damaged), Ok(Some(_))), "flip at {}", at);
            }
        }
    }
}
