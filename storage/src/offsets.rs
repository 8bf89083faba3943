//! The consumer offsets store: durable `(group, topic, partition) -> CommittedOffset`.
//!
//! # Model
//!
//! [`OffsetStore`] keeps the whole live map in memory and every change in one append-only
//! file, `DIR/offsets.log`. A change is an *operation* ([`OffsetOp`]): commit offsets for
//! a group, delete a group, or delete a topic's offsets from every group. Operations are
//! written inside CRC-protected *records* ([`OffsetRecord`]); one record is written with
//! one `write` and made durable with one `fdatasync` before any caller it covers returns.
//!
//! - **Atomic commits.** One [`OffsetStore::commit`] call is one operation, and an
//!   operation never spans records, so a crash keeps all of a call's entries or none.
//! - **Group commit.** Callers that arrive while a write is in flight queue up; the next
//!   writer puts every queued operation (up to [`OFFSET_RECORD_BODY_BYTES_MAX`]) into
//!   *one* record and covers them all with one `fdatasync`. Keeping a flush to one record
//!   is what lets recovery tell a torn write from corruption (see below).
//! - **Readers see only durable state.** The in-memory map is updated after the
//!   `fdatasync` returns, so [`OffsetStore::fetch`] never returns an offset a crash could
//!   take back.
//! - **fsync failure is fatal.** A failed `fdatasync` poisons the store: every later write
//!   fails with [`Error::Poisoned`] until the store is reopened (and so replayed from what
//!   is really on disk). Reads keep working from memory, which holds only acknowledged
//!   data.
//!
//! # On-disk format
//!
//! `offsets.log` is a sequence of records with nothing between them. All integers are
//! little-endian. `str16` is a `u16` byte length followed by that many bytes of UTF-8
//! (no terminator).
//!
//! **Record**
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 4 | `body_len` u32 | `13 <= body_len <= OFFSET_RECORD_BODY_BYTES_MAX` (16 MiB) |
//! | 4 | 4 | `crc` u32 | CRC-32 (IEEE, as `crc32fast::hash`) of the `body_len` body bytes |
//! | 8 | `body_len` | body | below |
//!
//! **Body**
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 1 | `version` u8 | `1` |
//! | 1 | 8 | `written_at_ms` i64 | wall clock when the record was written (informational) |
//! | 9 | 4 | `op_count` u32 | `>= 1` |
//! | 13 | .. | `op_count` operations | must end exactly at the end of the body |
//!
//! **Operation**: a `kind` u8, then the fields of that kind.
//!
//! | kind | name | fields after `kind` |
//! |---:|---|---|
//! | 1 | commit | `group` str16, `entry_count` u32 (`>= 1`), `entry_count` entries |
//! | 2 | delete-group | `group` str16 |
//! | 3 | delete-topic | `topic` str16 |
//!
//! **Commit entry**
//!
//! | size | field | rule |
//! |---:|---|---|
//! | 2 + n | `topic` str16 | `1 <= n <= TOPIC_NAME_BYTES_MAX` (249) |
//! | 4 | `partition` u32 | |
//! | 8 | `offset` u64 | the next offset the group will consume |
//! | 8 | `commit_timestamp_ms` i64 | wall clock of the commit call |
//! | 2 + n | `metadata` str16 | `0 <= n <= COMMIT_METADATA_BYTES_MAX` (4096) |
//!
//! A `group` str16 holds `1..=GROUP_ID_BYTES_MAX` (255) bytes. Operations apply in file
//! order: a commit entry replaces the value of its `(group, topic, partition)`; within one
//! commit a later entry for the same key wins. delete-group removes the group;
//! delete-topic removes that topic's entries from every group. A group left with no
//! entries no longer exists.
//!
//! # Recovery
//!
//! Opening replays the log from byte 0. Each record is checked in this order: the
//! header is complete, `body_len` is in range, the body is complete, the CRC matches,
//! the body is well formed (every length checked against what remains, UTF-8 checked,
//! no trailing bytes).
//!
//! - The file ends inside the record (**incomplete**), `body_len` is out of range, or
//!   the **CRC mismatches**: a torn tail *only if no intact record (one whose CRC
//!   matches) starts at any later byte*. One write per `fdatasync` means a crash can
//!   only tear the last record. A torn tail is truncated to the record's start and
//!   fsynced, with a warning. Otherwise the open fails with [`Error::Corrupt`] naming
//!   the file and the damaged record's position: nothing is cut silently. (A damaged
//!   `body_len` in the middle can make a record look incomplete; the search for a later
//!   intact record catches that too.) The search tries every later byte position, so it
//!   is slower on a large damaged tail; it only runs when the log is damaged.
//! - The CRC matches but the body is malformed or its version unknown: never a torn
//!   write, always [`Error::Corrupt`] (a bug, or a file written by a newer tidelog).
//!
//! The replayed bytes are then written again and fsynced, and the directory fsynced,
//! before anything is served: they may have been in the page cache only (the process
//! died before its `fdatasync`, or that `fdatasync` failed and the kernel dropped the
//! dirty state), and a value served once must not come back older after a power cut.
//!
//! # Compaction
//!
//! When the log grows past `max(1 MiB, 4 x the live size)` (checked after each flush),
//! or when [`OffsetStore::compact`] is called, the live map is written as commit
//! operations to `offsets.log.tmp`, which is fsynced and renamed over `offsets.log`;
//! then the directory is fsynced. A crash before the rename leaves the old log intact,
//! and a stale `offsets.log.tmp` is deleted by the next open. Commit timestamps are kept
//! because each entry carries its own.
//!
//! Only one `OffsetStore` may have a directory open at a time; nothing on disk enforces
//! that yet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::clock::Clock;
use crate::error::{Error, IoContext, Result};
use crate::fs::{FileSystem, FsFile, OpenMode, OsFs};
use crate::fsutil::{parent_dir, sync_dir_with, temp_path};
use crate::limits::{
    COMMIT_METADATA_BYTES_MAX, GROUP_ID_BYTES_MAX, OFFSET_RECORD_BODY_BYTES_MAX,
    TOPIC_NAME_BYTES_MAX,
};

/// Name of the log file inside the store's directory.
pub const LOG_FILE_NAME: &str = "offsets.log";

/// The only record version this build reads and writes.
pub const RECORD_VERSION: u8 = 1;

// Record header layout, each offset chained from the previous field.
const HEADER_BODY_LEN_AT: usize = 0;
const HEADER_CRC_AT: usize = HEADER_BODY_LEN_AT + 4;
/// Bytes before the body of a record: `body_len` and `crc`.
pub const RECORD_HEADER_BYTES: usize = HEADER_CRC_AT + 4;

// Body layout.
const BODY_VERSION_AT: usize = 0;
const BODY_WRITTEN_AT_MS_AT: usize = BODY_VERSION_AT + 1;
const BODY_OP_COUNT_AT: usize = BODY_WRITTEN_AT_MS_AT + 8;
/// Bytes of a body before its first operation; also the smallest valid `body_len`.
pub const BODY_FIXED_BYTES: usize = BODY_OP_COUNT_AT + 4;

const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;
const KIND_DELETE_TOPIC: u8 = 3;

/// Bytes of a str16 length prefix.
const STR16_PREFIX_BYTES: usize = 2;
/// Bytes of a commit operation besides the group's characters and the entries:
/// kind, group length prefix, entry count.
const COMMIT_OP_FIXED_BYTES: usize = 1 + STR16_PREFIX_BYTES + 4;
/// Bytes of a commit entry besides the topic's and metadata's characters: two length
/// prefixes, partition, offset, commit timestamp.
const ENTRY_FIXED_BYTES: usize = STR16_PREFIX_BYTES + 4 + 8 + 8 + STR16_PREFIX_BYTES;
/// Smallest encoded commit entry (one-byte topic, empty metadata); bounds how many
/// entries a body of a given size can claim.
const ENTRY_BYTES_MIN: usize = ENTRY_FIXED_BYTES + 1;

/// The log is compacted when it is larger than this and than
/// `COMPACT_LIVE_RATIO x` the live size.
const COMPACT_LOG_BYTES_MIN: u64 = 1024 * 1024;
const COMPACT_LIVE_RATIO: u64 = 4;

// Every name and metadata string fits a str16.
const _: () = assert!(GROUP_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(TOPIC_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(COMMIT_METADATA_BYTES_MAX <= u16::MAX as usize);
// One commit of one maximal entry fits in a record, so size is never why a valid
// single-entry commit is refused.
const _: () = assert!(
    BODY_FIXED_BYTES
        + COMMIT_OP_FIXED_BYTES
        + GROUP_ID_BYTES_MAX
        + ENTRY_FIXED_BYTES
        + TOPIC_NAME_BYTES_MAX
        + COMMIT_METADATA_BYTES_MAX
        <= OFFSET_RECORD_BODY_BYTES_MAX as usize
);
// A whole record's length fits in u32 (and so in usize on every supported target).
const _: () =
    assert!(OFFSET_RECORD_BODY_BYTES_MAX as u64 + RECORD_HEADER_BYTES as u64 <= u32::MAX as u64);

// ---------------------------------------------------------------------------------------
// Values and records
// ---------------------------------------------------------------------------------------

/// What a group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will consume (Kafka's convention).
    pub offset: u64,
    /// Free-form client metadata, at most [`COMMIT_METADATA_BYTES_MAX`] bytes.
    pub metadata: String,
    /// Wall-clock milliseconds of the commit call, from the store's [`Clock`].
    pub commit_timestamp_ms: i64,
}

/// One decoded record of the offsets log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    /// When the record was written; informational.
    pub written_at_ms: i64,
    /// At least one operation, applied in order.
    pub ops: Vec<OffsetOp>,
}

/// One change to the offsets map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetOp {
    /// Set the entries' offsets for `group`. Never empty.
    Commit {
        group: String,
        entries: Vec<CommitEntry>,
    },
    /// Remove every offset of `group`.
    DeleteGroup { group: String },
    /// Remove `topic`'s offsets from every group.
    DeleteTopic { topic: String },
}

/// One `(topic, partition)` of a commit operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub commit_timestamp_ms: i64,
    pub metadata: String,
}

/// Why bytes are not a valid record. Positions are byte offsets from the start of the
/// record (its `body_len` field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// `body_len` is below the fixed body size or above the limit.
    #[error(
        "record body length {body_len} is outside {BODY_FIXED_BYTES}..={OFFSET_RECORD_BODY_BYTES_MAX}"
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
}

/// Decodes the record at the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the record does (an incomplete record),
/// `Ok(Some((record, used)))` with the number of bytes the record occupies, or why the
/// bytes are not a record. Never panics and never allocates more than the bytes given
/// justify, whatever the input.
pub fn decode_record(bytes: &[u8]) -> Result<Option<(OffsetRecord, usize)>, DecodeError> {
    let Some((body_len, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let Some((stored_crc, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let body_len = u32::from_le_bytes(*body_len);
    let stored = u32::from_le_bytes(*stored_crc);
    if (body_len as usize) < BODY_FIXED_BYTES || body_len > OFFSET_RECORD_BODY_BYTES_MAX {
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

fn decode_body(body: &[u8]) -> Result<OffsetRecord, DecodeError> {
    let mut reader = BodyReader {
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
        return Err(reader.malformed("op_count is 0".to_string()));
    }
    let mut ops = Vec::new();
    for _ in 0..op_count {
        ops.push(decode_op(&mut reader)?);
    }
    if !reader.rest.is_empty() {
        return Err(reader.malformed(format!(
            "{} bytes follow the last of {op_count} operations",
            reader.rest.len()
        )));
    }
    Ok(OffsetRecord { written_at_ms, ops })
}

fn decode_op(reader: &mut BodyReader<'_>) -> Result<OffsetOp, DecodeError> {
    match reader.u8("operation kind")? {
        KIND_COMMIT => {
            let group = reader.str16("group id", 1, GROUP_ID_BYTES_MAX)?;
            let entry_count = reader.u32("entry_count")?;
            if entry_count == 0 {
                return Err(reader.malformed("commit with entry_count 0".to_string()));
            }
            // Refuse a count the remaining bytes cannot hold before looping on it.
            let fits = (reader.rest.len() / ENTRY_BYTES_MIN) as u64;
            if u64::from(entry_count) > fits {
                return Err(reader.malformed(format!(
                    "entry_count {entry_count} cannot fit in the {} bytes that remain",
                    reader.rest.len()
                )));
            }
            let mut entries = Vec::new();
            for _ in 0..entry_count {
                entries.push(CommitEntry {
                    topic: reader.str16("topic", 1, TOPIC_NAME_BYTES_MAX)?,
                    partition: reader.u32("partition")?,
                    offset: reader.u64("offset")?,
                    commit_timestamp_ms: reader.i64("commit_timestamp_ms")?,
                    metadata: reader.str16("metadata", 0, COMMIT_METADATA_BYTES_MAX)?,
                });
            }
            Ok(OffsetOp::Commit { group, entries })
        }
        KIND_DELETE_GROUP => Ok(OffsetOp::DeleteGroup {
            group: reader.str16("group id", 1, GROUP_ID_BYTES_MAX)?,
        }),
        KIND_DELETE_TOPIC => Ok(OffsetOp::DeleteTopic {
            topic: reader.str16("topic", 1, TOPIC_NAME_BYTES_MAX)?,
        }),
        kind => Err(DecodeError::Malformed {
            // The kind byte was already consumed.
            at: RECORD_HEADER_BYTES + reader.consumed - 1,
            reason: format!("unknown operation kind {kind}"),
        }),
    }
}

/// A cursor over a body that checks every length against what remains.
struct BodyReader<'a> {
    rest: &'a [u8],
    consumed: usize,
}

impl<'a> BodyReader<'a> {
    fn malformed(&self, reason: String) -> DecodeError {
        DecodeError::Malformed {
            at: RECORD_HEADER_BYTES + self.consumed,
            reason,
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

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array::<1>(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array::<8>(what)?))
    }

    /// A str16 of `min..=max` bytes of UTF-8.
    fn str16(&mut self, what: &str, min: usize, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(u16::from_le_bytes(self.array::<2>(what)?));
        if len < min || len > max {
            return Err(self.malformed(format!("{what} is {len} bytes, outside {min}..={max}")));
        }
        let Some((raw, tail)) = self.rest.split_at_checked(len) else {
            return Err(self.malformed(format!(
                "{what} is {len} bytes but {} remain",
                self.rest.len()
            )));
        };
        let text = std::str::from_utf8(raw)
            .map_err(|e| self.malformed(format!("{what} is not UTF-8: {e}")))?;
        self.rest = tail;
        self.consumed += len;
        Ok(text.to_owned())
    }
}

/// Encodes `record` as it is stored, header included. Refuses what the decoder would
/// refuse: names or metadata outside their limits, no operations, an empty commit, a
/// body over [`OFFSET_RECORD_BODY_BYTES_MAX`].
pub fn encode_record(record: &OffsetRecord) -> Result<Vec<u8>> {
    if record.ops.is_empty() {
        return Err(Error::invalid(
            "an offsets record needs at least one operation",
        ));
    }
    let mut encoded_ops = Vec::with_capacity(record.ops.len());
    for op in &record.ops {
        validate_op(op)?;
        let mut encoded = Vec::new();
        encode_op(op, &mut encoded);
        encoded_ops.push(encoded);
    }
    let body_len = BODY_FIXED_BYTES + encoded_ops.iter().map(Vec::len).sum::<usize>();
    check_body_fits(body_len)?;
    Ok(assemble_record(
        record.written_at_ms,
        encoded_ops.iter().map(Vec::as_slice),
    ))
}

/// Builds a record around operations already encoded by [`encode_op`]. The caller has
/// checked that the body fits [`OFFSET_RECORD_BODY_BYTES_MAX`].
fn assemble_record<'a>(written_at_ms: i64, ops: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let op_count = ops.clone().count();
    let ops_len: usize = ops.clone().map(<[u8]>::len).sum();
    let body_len = BODY_FIXED_BYTES + ops_len;
    debug_assert!(op_count >= 1);
    debug_assert!(body_len <= OFFSET_RECORD_BODY_BYTES_MAX as usize);

    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below.
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&written_at_ms.to_le_bytes());
    out.extend_from_slice(&(op_count as u32).to_le_bytes());
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES + BODY_FIXED_BYTES);
    for op in ops {
        out.extend_from_slice(op);
    }
    debug_assert_eq!(out.len(), RECORD_HEADER_BYTES + body_len);
    let crc = crc32fast::hash(&out[RECORD_HEADER_BYTES..]);
    out[HEADER_CRC_AT..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Appends the encoding of a validated operation.
fn encode_op(op: &OffsetOp, out: &mut Vec<u8>) {
    match op {
        OffsetOp::Commit { group, entries } => {
            out.push(KIND_COMMIT);
            put_str16(out, group);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for entry in entries {
                encode_entry(entry, out);
            }
        }
        OffsetOp::DeleteGroup { group } => {
            out.push(KIND_DELETE_GROUP);
            put_str16(out, group);
        }
        OffsetOp::DeleteTopic { topic } => {
            out.push(KIND_DELETE_TOPIC);
            put_str16(out, topic);
        }
    }
}

fn encode_entry(entry: &CommitEntry, out: &mut Vec<u8>) {
    put_str16(out, &entry.topic);
    out.extend_from_slice(&entry.partition.to_le_bytes());
    out.extend_from_slice(&entry.offset.to_le_bytes());
    out.extend_from_slice(&entry.commit_timestamp_ms.to_le_bytes());
    put_str16(out, &entry.metadata);
}

fn put_str16(out: &mut Vec<u8>, text: &str) {
    debug_assert!(text.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn entry_encoded_bytes(topic: &str, metadata: &str) -> u64 {
    (ENTRY_FIXED_BYTES + topic.len() + metadata.len()) as u64
}

fn commit_op_overhead_bytes(group: &str) -> u64 {
    (COMMIT_OP_FIXED_BYTES + group.len()) as u64
}

fn check_body_fits(body_len: usize) -> Result<()> {
    if body_len > OFFSET_RECORD_BODY_BYTES_MAX as usize {
        return Err(Error::TooLarge {
            what: "offsets log record (one commit call)".to_string(),
            size: body_len as u64,
            limit: u64::from(OFFSET_RECORD_BODY_BYTES_MAX),
            limit_name: "OFFSET_RECORD_BODY_BYTES_MAX",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err(Error::invalid(format!(
            "group id must be 1..={GROUP_ID_BYTES_MAX} bytes, got {} bytes",
            group.len()
        )));
    }
    Ok(())
}

fn validate_topic(topic: &str) -> Result<()> {
    if topic.is_empty() || topic.len() > TOPIC_NAME_BYTES_MAX {
        return Err(Error::invalid(format!(
            "topic name must be 1..={TOPIC_NAME_BYTES_MAX} bytes, got {} bytes",
            topic.len()
        )));
    }
    Ok(())
}

fn validate_metadata(topic: &str, partition: u32, metadata: &str) -> Result<()> {
    if metadata.len() > COMMIT_METADATA_BYTES_MAX {
        return Err(Error::invalid(format!(
            "commit metadata for {topic}/{partition} is {} bytes, over the limit of \
             {COMMIT_METADATA_BYTES_MAX} bytes (COMMIT_METADATA_BYTES_MAX)",
            metadata.len()
        )));
    }
    Ok(())
}

fn validate_op(op: &OffsetOp) -> Result<()> {
    match op {
        OffsetOp::Commit { group, entries } => {
            validate_group(group)?;
            if entries.is_empty() {
                return Err(Error::invalid(
                    "a commit operation needs at least one entry",
                ));
            }
            for entry in entries {
                validate_topic(&entry.topic)?;
                validate_metadata(&entry.topic, entry.partition, &entry.metadata)?;
            }
            Ok(())
        }
        OffsetOp::DeleteGroup { group } => validate_group(group),
        OffsetOp::DeleteTopic { topic } => validate_topic(topic),
    }
}

// ---------------------------------------------------------------------------------------
// The live map
// ---------------------------------------------------------------------------------------

/// group -> topic -> partition -> committed offset. A group is present only while it
/// has at least one entry, and a topic only while it has at least one partition.
type GroupMap = BTreeMap<String, BTreeMap<String, BTreeMap<u32, CommittedOffset>>>;

/// The live offsets and an estimate of their encoded size (what a snapshot holds,
/// without record headers), kept up to date on every change.
#[derive(Debug, Default)]
struct LiveOffsets {
    groups: GroupMap,
    encoded_bytes: u64,
}

impl LiveOffsets {
    fn apply_record(&mut self, record: OffsetRecord) {
        for op in record.ops {
            self.apply(op);
        }
    }

    /// Applies one operation; returns whether it found something to change (for a
    /// delete, whether the group or topic existed).
    fn apply(&mut self, op: OffsetOp) -> bool {
        match op {
            OffsetOp::Commit { group, entries } => {
                let encoded_bytes = &mut self.encoded_bytes;
                let topics = self.groups.entry(group).or_insert_with_key(|group| {
                    *encoded_bytes += commit_op_overhead_bytes(group);
                    BTreeMap::new()
                });
                for entry in entries {
                    let topic_bytes = entry.topic.len();
                    let new_bytes = entry_encoded_bytes(&entry.topic, &entry.metadata);
                    let value = CommittedOffset {
                        offset: entry.offset,
                        metadata: entry.metadata,
                        commit_timestamp_ms: entry.commit_timestamp_ms,
                    };
                    let partitions = topics.entry(entry.topic).or_default();
                    if let Some(old) = partitions.insert(entry.partition, value) {
                        *encoded_bytes -=
                            (ENTRY_FIXED_BYTES + topic_bytes + old.metadata.len()) as u64;
                    }
                    *encoded_bytes += new_bytes;
                }
                true
            }
            OffsetOp::DeleteGroup { group } => match self.groups.remove(&group) {
                Some(topics) => {
                    self.encoded_bytes -= commit_op_overhead_bytes(&group);
                    for (topic, partitions) in &topics {
                        for value in partitions.values() {
                            self.encoded_bytes -= entry_encoded_bytes(topic, &value.metadata);
                        }
                    }
                    true
                }
                None => false,
            },
            OffsetOp::DeleteTopic { topic } => {
                let mut found = false;
                let mut emptied = Vec::new();
                for (group, topics) in &mut self.groups {
                    if let Some(partitions) = topics.remove(&topic) {
                        found = true;
                        for value in partitions.values() {
                            self.encoded_bytes -= entry_encoded_bytes(&topic, &value.metadata);
                        }
                        if topics.is_empty() {
                            emptied.push(group.clone());
                        }
                    }
                }
                for group in emptied {
                    self.groups.remove(&group);
                    self.encoded_bytes -= commit_op_overhead_bytes(&group);
                }
                found
            }
        }
    }

    fn has_topic(&self, topic: &str) -> bool {
        self.groups
            .values()
            .any(|topics| topics.contains_key(topic))
    }

    #[cfg(test)]
    fn recomputed_encoded_bytes(&self) -> u64 {
        let mut total = 0;
        for (group, topics) in &self.groups {
            total += commit_op_overhead_bytes(group);
            for (topic, partitions) in topics {
                for value in partitions.values() {
                    total += entry_encoded_bytes(topic, &value.metadata);
                }
            }
        }
        total
    }
}

/// Encodes the live map as a complete log: commit operations packed into records of at
/// most [`OFFSET_RECORD_BODY_BYTES_MAX`], a group split over several operations only when
/// it does not fit in one.
fn encode_snapshot(live: &LiveOffsets, written_at_ms: i64) -> Vec<u8> {
    let ops_room = OFFSET_RECORD_BODY_BYTES_MAX as usize - BODY_FIXED_BYTES;
    let mut ops: Vec<Vec<u8>> = Vec::new();
    for (group, topics) in &live.groups {
        let op_fixed = COMMIT_OP_FIXED_BYTES + group.len();
        let mut entries = Vec::new();
        let mut count: u32 = 0;
        for (topic, partitions) in topics {
            for (partition, value) in partitions {
                let entry_len = entry_encoded_bytes(topic, &value.metadata) as usize;
                if count > 0 && op_fixed + entries.len() + entry_len > ops_room {
                    ops.push(commit_op_from_parts(group, count, &entries));
                    entries.clear();
                    count = 0;
                }
                encode_entry(
                    &CommitEntry {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: value.offset,
                        commit_timestamp_ms: value.commit_timestamp_ms,
                        metadata: value.metadata.clone(),
                    },
                    &mut entries,
                );
                count += 1;
            }
        }
        if count > 0 {
            ops.push(commit_op_from_parts(group, count, &entries));
        }
    }

    let mut out = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let mut end = start;
        let mut used = 0;
        while let Some(op) = ops.get(end) {
            if end > start && used + op.len() > ops_room {
                break;
            }
            used += op.len();
            end += 1;
        }
        let batch = ops.get(start..end).unwrap_or_default();
        out.extend_from_slice(&assemble_record(
            written_at_ms,
            batch.iter().map(Vec::as_slice),
        ));
        start = end;
    }
    out
}

fn commit_op_from_parts(group: &str, count: u32, entries: &[u8]) -> Vec<u8> {
    let mut op = Vec::with_capacity(COMMIT_OP_FIXED_BYTES + group.len() + entries.len());
    op.push(KIND_COMMIT);
    put_str16(&mut op, group);
    op.extend_from_slice(&count.to_le_bytes());
    op.extend_from_slice(entries);
    op
}

/// Replays a whole log image. Returns the live map and how many leading bytes are
/// valid; what follows them is a torn tail (with the reason) that the caller truncates.
fn replay(path: &Path, bytes: &[u8]) -> Result<Replayed> {
    let mut live = LiveOffsets::default();
    let mut position = 0;
    while let Some(rest) = bytes.get(position..).filter(|rest| !rest.is_empty()) {
        let damage = match decode_record(rest) {
            Ok(Some((record, used))) => {
                live.apply_record(record);
                position += used;
                continue;
            }
            Ok(None) => format!(
                "the record is incomplete: the file ends {} bytes into it",
                rest.len()
            ),
            Err(e) if e.may_be_torn_write() => e.to_string(),
            Err(e) => {
                return Err(Error::corrupt(
                    path,
                    position as u64,
                    format!("{e} (its checksum matched, so this is not a torn write)"),
                ));
            }
        };
        // Only the last record can be torn by a crash. A damaged `body_len` can make a
        // record in the middle look incomplete, so look for intact records after it.
        if let Some(next) = find_intact_record_after(bytes, position) {
            return Err(Error::corrupt(
                path,
                position as u64,
                format!(
                    "{damage}; an intact record follows at byte {next}, so this is damage \
                     inside the log, not a torn write at its end"
                ),
            ));
        }
        return Ok(Replayed {
            live,
            valid_len: position,
            torn_reason: Some(damage),
        });
    }
    Ok(Replayed {
        live,
        valid_len: position,
        torn_reason: None,
    })
}

struct Replayed {
    live: LiveOffsets,
    valid_len: usize,
    torn_reason: Option<String>,
}

/// The first position after `bad` where a record with a matching checksum starts.
fn find_intact_record_after(bytes: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..bytes.len()).find(|&candidate| {
        let rest = bytes.get(candidate..).unwrap_or_default();
        match decode_record(rest) {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => !e.may_be_torn_write(),
        }
    })
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// Durable consumer offsets for every group. All methods take `&self`; share it in an
/// `Arc`.
pub struct OffsetStore {
    /// Every file operation goes through this.
    fs: Arc<dyn FileSystem>,
    /// The store's directory; fsynced after the log file is created or replaced.
    dir: PathBuf,
    /// `dir/offsets.log`.
    log_path: PathBuf,
    /// Source of commit and record timestamps.
    clock: Arc<dyn Clock>,
    /// Live map, queue of waiting operations and the writer role.
    state: Mutex<State>,
    /// Signalled when a flush or compaction finishes, so waiters look for their outcome
    /// or take the writer role.
    state_changed: Condvar,
    /// The open log. Locked only by the thread holding the writer role
    /// (`State::writer_busy`), so it is never contended and never held with `state`.
    log: Mutex<LogFile>,
}

impl fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffsetStore")
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct LogFile {
    /// Opened for writing; records are written at `len`.
    file: Arc<dyn FsFile>,
    /// Bytes in the file, all of them valid records.
    len: u64,
}

#[derive(Debug)]
struct State {
    /// Only what is durable: applied after the fdatasync that covers it.
    live: LiveOffsets,
    /// Bytes in the log file (mirrors `LogFile::len` for the compaction trigger).
    log_bytes: u64,
    /// Operations waiting for the next flush, oldest first.
    queue: VecDeque<Queued>,
    next_ticket: u64,
    /// Outcomes of flushed operations that their callers have not collected yet.
    outcomes: HashMap<u64, Result<bool>>,
    /// Some thread is writing the log (a flush or a compaction). At most one at a time.
    writer_busy: bool,
    /// Set when an fsync failed or the log handle is no longer trustworthy: every write
    /// is refused until the store is reopened.
    poisoned: Option<String>,
}

#[derive(Debug)]
struct Queued {
    ticket: u64,
    op: OffsetOp,
    encoded: Vec<u8>,
}

/// A failed write to the log, and whether it leaves the store unable to write again.
struct WriteFailure {
    error: Error,
    poisons: bool,
}

impl WriteFailure {
    fn recoverable(error: Error) -> Self {
        WriteFailure {
            error,
            poisons: false,
        }
    }

    fn fatal(error: Error) -> Self {
        WriteFailure {
            error,
            poisons: true,
        }
    }
}

impl OffsetStore {
    /// Opens (creating if needed) the store in `dir` and replays its log.
    ///
    /// A torn tail is truncated with a warning; damage before the last record fails with
    /// [`Error::Corrupt`]. A leftover `offsets.log.tmp` from an interrupted compaction is
    /// deleted.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<OffsetStore> {
        Self::open_with(Arc::new(OsFs), dir, clock)
    }

    /// [`OffsetStore::open`] with every file operation going through `fs`.
    pub fn open_with(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<OffsetStore> {
        create_dir_durably(&*fs, dir)?;
        let log_path = dir.join(LOG_FILE_NAME);

        let tmp_path = temp_path(&log_path);
        match fs.remove_file(&tmp_path) {
            Ok(()) => {
                tracing::info!(
                    file = %tmp_path.display(),
                    "removed the temporary file of an interrupted offsets-log compaction"
                );
                sync_dir_with(&*fs, dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", tmp_path.display()), e)),
        }

        let (file, _created) = open_log(&*fs, &log_path)?;
        // Always: the log may be new, or renamed in by a compaction whose directory
        // fsync never ran (the process died); either way its entry must be durable
        // before what it holds is served.
        sync_dir_with(&*fs, dir)?;
        // The whole log is replayed; compaction keeps it within a few times the live size.
        let bytes = fs
            .read_file(&log_path, u64::MAX)
            .ctx(|| format!("reading {}", log_path.display()))?;

        let replayed = replay(&log_path, &bytes)?;
        if let Some(reason) = &replayed.torn_reason {
            tracing::warn!(
                file = %log_path.display(),
                position = replayed.valid_len,
                dropped_bytes = bytes.len() - replayed.valid_len,
                reason = %reason,
                "truncating the torn tail of the consumer offsets log"
            );
            file.set_len(replayed.valid_len as u64)
                .ctx(|| format!("truncating {}", log_path.display()))?;
        }
        // What was replayed is about to be served, but it may be known to the page
        // cache only: the process before may have died between a write and its
        // fdatasync, or its fdatasync may have failed, after which Linux keeps the pages
        // but marks them clean ("fsyncgate"), so a plain fsync here would write nothing.
        // Write the bytes again and fsync them; the log is compacted, so this is small.
        let valid = bytes.get(..replayed.valid_len).unwrap_or_default();
        file.write_all_at(valid, 0)
            .and_then(|()| file.sync_all())
            .ctx(|| format!("rewriting and fsyncing {}", log_path.display()))?;
        let len = replayed.valid_len as u64;

        Ok(OffsetStore {
            fs,
            dir: dir.to_path_buf(),
            log_path,
            clock,
            state: Mutex::new(State {
                live: replayed.live,
                log_bytes: len,
                queue: VecDeque::new(),
                next_ticket: 0,
                outcomes: HashMap::new(),
                writer_busy: false,
                poisoned: None,
            }),
            state_changed: Condvar::new(),
            log: Mutex::new(LogFile { file, len }),
        })
    }

    /// Durably records `commits` — `(topic, partition, offset, metadata)` — for `group`.
    ///
    /// When this returns `Ok`, every entry is on disk; a crash keeps all of them or (if
    /// this had not returned) none. A later entry for the same partition wins. An empty
    /// `commits` writes nothing.
    pub fn commit(&self, group: &str, commits: &[(String, u32, u64, String)]) -> Result<()> {
        validate_group(group)?;
        for (topic, partition, _, metadata) in commits {
            validate_topic(topic)?;
            validate_metadata(topic, *partition, metadata)?;
        }
        if commits.is_empty() {
            return Ok(());
        }
        let commit_timestamp_ms = self.clock.now_ms();
        let entries = commits
            .iter()
            .map(|(topic, partition, offset, metadata)| CommitEntry {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                commit_timestamp_ms,
                metadata: metadata.clone(),
            })
            .collect();
        self.submit(OffsetOp::Commit {
            group: group.to_string(),
            entries,
        })
        .map(|_| ())
    }

    /// The committed offset of `group` for `topic`/`partition`, if any.
    pub fn fetch(&self, group: &str, topic: &str, partition: u32) -> Option<CommittedOffset> {
        let state = self.lock_state();
        state
            .live
            .groups
            .get(group)?
            .get(topic)?
            .get(&partition)
            .cloned()
    }

    /// Every committed offset of `group`, sorted by topic then partition.
    pub fn fetch_group(&self, group: &str) -> Vec<(String, u32, CommittedOffset)> {
        let state = self.lock_state();
        let Some(topics) = state.live.groups.get(group) else {
            return Vec::new();
        };
        topics
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(partition, value)| (topic.clone(), *partition, value.clone()))
            })
            .collect()
    }

    /// Every group with at least one committed offset, sorted.
    pub fn list_groups(&self) -> Vec<String> {
        self.lock_state().live.groups.keys().cloned().collect()
    }

    /// Durably removes every offset of `group`. Returns whether the group existed.
    pub fn delete_group(&self, group: &str) -> Result<bool> {
        validate_group(group)?;
        {
            let state = self.lock_state();
            self.refuse_if_poisoned(&state)?;
            // Nothing queued or in flight could create it first: a no-op needs no write.
            if !state.writer_busy
                && state.queue.is_empty()
                && !state.live.groups.contains_key(group)
            {
                return Ok(false);
            }
        }
        self.submit(OffsetOp::DeleteGroup {
            group: group.to_string(),
        })
    }

    /// Durably removes `topic`'s offsets from every group (for a deleted topic).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        validate_topic(topic)?;
        {
            let state = self.lock_state();
            self.refuse_if_poisoned(&state)?;
            if !state.writer_busy && state.queue.is_empty() && !state.live.has_topic(topic) {
                return Ok(());
            }
        }
        self.submit(OffsetOp::DeleteTopic {
            topic: topic.to_string(),
        })
        .map(|_| ())
    }

    /// Rewrites the log as a snapshot of the live offsets (see the module docs). Runs on
    /// its own when the log grows past `max(1 MiB, 4 x live size)`.
    pub fn compact(&self) -> Result<()> {
        let state = self.acquire_writer_role()?;
        let (mut state, result) = self.compact_as_writer(state);
        state.writer_busy = false;
        self.state_changed.notify_all();
        result
    }

    /// Bytes in the log file now.
    pub fn log_bytes(&self) -> u64 {
        self.lock_state().log_bytes
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the map is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_log(&self) -> MutexGuard<'_, LogFile> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poisoned_error(&self, cause: &str) -> Error {
        Error::Poisoned {
            partition: format!("consumer offsets store {}", self.log_path.display()),
            cause: cause.to_string(),
        }
    }

    fn refuse_if_poisoned(&self, state: &State) -> Result<()> {
        match &state.poisoned {
            Some(cause) => Err(self.poisoned_error(cause)),
            None => Ok(()),
        }
    }

    /// Queues `op`, then waits until a flush covers it, doing the flush itself when no
    /// other thread is writing. Returns what applying the op reported.
    fn submit(&self, op: OffsetOp) -> Result<bool> {
        let mut encoded = Vec::new();
        encode_op(&op, &mut encoded);
        check_body_fits(BODY_FIXED_BYTES + encoded.len())?;

        let mut state = self.lock_state();
        self.refuse_if_poisoned(&state)?;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Queued {
            ticket,
            op,
            encoded,
        });
        loop {
            if let Some(outcome) = state.outcomes.remove(&ticket) {
                return outcome;
            }
            if !state.writer_busy {
                debug_assert!(state.queue.iter().any(|queued| queued.ticket == ticket));
                state.writer_busy = true;
                state = self.flush_as_writer(state);
                state.writer_busy = false;
                self.state_changed.notify_all();
                continue;
            }
            state = self
                .state_changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes the queued operations (as many as fit) as one record, fdatasyncs, applies
    /// them and posts their outcomes. The caller holds the writer role.
    fn flush_as_writer<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        debug_assert!(state.writer_busy);
        if let Some(cause) = state.poisoned.clone() {
            while let Some(queued) = state.queue.pop_front() {
                let error = self.poisoned_error(&cause);
                state.outcomes.insert(queued.ticket, Err(error));
            }
            return state;
        }

        let ops_room = OFFSET_RECORD_BODY_BYTES_MAX as usize - BODY_FIXED_BYTES;
        let mut batch = Vec::new();
        let mut used = 0;
        while let Some(front) = state.queue.front() {
            if !batch.is_empty() && used + front.encoded.len() > ops_room {
                break;
            }
            used += front.encoded.len();
            if let Some(queued) = state.queue.pop_front() {
                batch.push(queued);
            }
        }
        if batch.is_empty() {
            return state;
        }
        drop(state);

        let record = assemble_record(
            self.clock.now_ms(),
            batch.iter().map(|queued| queued.encoded.as_slice()),
        );
        let written = self.append_durably(&record);

        let mut state = self.lock_state();
        match written {
            Ok(()) => {
                state.log_bytes += record.len() as u64;
                for queued in batch {
                    let found = state.live.apply(queued.op);
                    state.outcomes.insert(queued.ticket, Ok(found));
                }
            }
            Err(failure) => {
                let error = if failure.poisons {
                    let cause = failure.error.to_string();
                    tracing::error!(
                        file = %self.log_path.display(),
                        error = %cause,
                        "consumer offsets log write failed; refusing writes until reopened"
                    );
                    state.poisoned = Some(cause.clone());
                    self.poisoned_error(&cause)
                } else {
                    failure.error
                };
                for queued in batch {
                    state.outcomes.insert(queued.ticket, Err(error.clone()));
                }
                return state;
            }
        }
        // Let the callers this flush covered return before any compaction.
        self.state_changed.notify_all();

        let threshold = COMPACT_LOG_BYTES_MIN.max(COMPACT_LIVE_RATIO * state.live.encoded_bytes);
        if state.log_bytes > threshold {
            let (compacted_state, result) = self.compact_as_writer(state);
            state = compacted_state;
            if let Err(e) = result {
                tracing::warn!(
                    file = %self.log_path.display(),
                    error = %e,
                    "automatic compaction of the consumer offsets log failed"
                );
            }
        }
        state
    }

    /// Appends `record` and fdatasyncs it. A failed write is undone (the file is cut
    /// back, so no record ever follows a partial one); a failed fdatasync is fatal.
    fn append_durably(&self, record: &[u8]) -> Result<(), WriteFailure> {
        let mut log = self.lock_log();
        if let Err(e) = log.file.write_all_at(record, log.len) {
            let error = Error::io(format!("appending to {}", self.log_path.display()), e);
            return match log.file.set_len(log.len) {
                Ok(()) => Err(WriteFailure::recoverable(error)),
                Err(cut) => Err(WriteFailure::fatal(Error::io(
                    format!(
                        "cutting {} back to {} bytes after a failed append ({error})",
                        self.log_path.display(),
                        log.len
                    ),
                    cut,
                ))),
            };
        }
        log.file
            .sync_data()
            .map_err(|e| Error::io(format!("fdatasyncing {}", self.log_path.display()), e))
            .map_err(WriteFailure::fatal)?;
        log.len += record.len() as u64;
        Ok(())
    }

    /// Waits for and takes the writer role.
    fn acquire_writer_role(&self) -> Result<MutexGuard<'_, State>> {
        let mut state = self.lock_state();
        while state.writer_busy {
            state = self
                .state_changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.refuse_if_poisoned(&state)?;
        state.writer_busy = true;
        Ok(state)
    }

    /// Replaces the log with a snapshot of the live map. The caller holds the writer
    /// role, so the map does not change meanwhile.
    fn compact_as_writer<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, Result<()>) {
        debug_assert!(state.writer_busy);
        let snapshot = encode_snapshot(&state.live, self.clock.now_ms());
        let before = state.log_bytes;
        drop(state);

        let result = self
            .write_snapshot_tmp(&snapshot)
            .and_then(|tmp| self.install_snapshot(&tmp, snapshot.len() as u64));

        let mut state = self.lock_state();
        match result {
            Ok(()) => {
                state.log_bytes = snapshot.len() as u64;
                tracing::info!(
                    file = %self.log_path.display(),
                    before_bytes = before,
                    after_bytes = snapshot.len(),
                    "compacted the consumer offsets log"
                );
                (state, Ok(()))
            }
            Err(failure) => {
                if failure.poisons {
                    let cause = failure.error.to_string();
                    state.poisoned = Some(cause.clone());
                    let error = self.poisoned_error(&cause);
                    (state, Err(error))
                } else {
                    (state, Err(failure.error))
                }
            }
        }
    }

    /// Writes and fsyncs `offsets.log.tmp`. On failure the temporary file is removed and
    /// the log is untouched.
    fn write_snapshot_tmp(&self, snapshot: &[u8]) -> Result<PathBuf, WriteFailure> {
        let tmp = temp_path(&self.log_path);
        let written = self.fs.open(&tmp, OpenMode::Truncate).and_then(|file| {
            file.write_all_at(snapshot, 0)?;
            file.sync_all()
        });
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = self.fs.remove_file(&tmp);
                Err(WriteFailure::recoverable(Error::io(
                    format!("writing the compacted log {}", tmp.display()),
                    e,
                )))
            }
        }
    }

    /// Renames the fsynced snapshot over the log, fsyncs the directory and switches the
    /// append handle to the new file.
    fn install_snapshot(&self, tmp: &Path, len: u64) -> Result<(), WriteFailure> {
        let mut log = self.lock_log();
        if let Err(e) = self.fs.rename(tmp, &self.log_path) {
            let _ = self.fs.remove_file(tmp);
            return Err(WriteFailure::recoverable(Error::io(
                format!("renaming {} to {}", tmp.display(), self.log_path.display()),
                e,
            )));
        }
        // From here the old handle points at an unlinked file: any failure is fatal.
        sync_dir_with(&*self.fs, &self.dir).map_err(WriteFailure::fatal)?;
        let file = self.fs.open(&self.log_path, OpenMode::Write).map_err(|e| {
            WriteFailure::fatal(Error::io(
                format!("reopening {} after compaction", self.log_path.display()),
                e,
            ))
        })?;
        *log = LogFile { file, len };
        Ok(())
    }

    /// Test hook: a compaction that crashes after writing and fsyncing the temporary
    /// file, before the rename.
    #[cfg(test)]
    fn compact_crash_before_rename(&self) -> Result<PathBuf> {
        let state = self.acquire_writer_role()?;
        let snapshot = encode_snapshot(&state.live, self.clock.now_ms());
        drop(state);
        let result = self.write_snapshot_tmp(&snapshot);
        let mut state = self.lock_state();
        state.writer_busy = false;
        self.state_changed.notify_all();
        result.map_err(|failure| failure.error)
    }
}

/// Opens the log for writing; reports whether it was created.
fn open_log(fs: &dyn FileSystem, path: &Path) -> Result<(Arc<dyn FsFile>, bool)> {
    match fs.open(path, OpenMode::CreateNew) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = fs
                .open(path, OpenMode::Write)
                .ctx(|| format!("opening {}", path.display()))?;
            Ok((file, false))
        }
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each one created.
fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match fs.metadata(current) {
            Ok(meta) if meta.is_dir => break,
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "{} exists and is not a directory",
                    current.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(current);
                match current.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => current = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(Error::io(format!("inspecting {}", current.display()), e)),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .ctx(|| format!("creating directory {}", dir.display()))?;
    for created in missing.iter().rev() {
        sync_dir_with(fs, parent_dir(created))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use proptest::prelude::*;
    use std::fs;

    fn new_clock() -> Arc<ManualClock> {
        ManualClock::new(1_700_000_000_000)
    }

    fn open(dir: &Path, clock: &Arc<ManualClock>) -> OffsetStore {
        OffsetStore::open(dir, clock.clone()).unwrap()
    }

    fn entry(
        topic: &str,
        partition: u32,
        offset: u64,
        metadata: &str,
    ) -> (String, u32, u64, String) {
        (topic.to_string(), partition, offset, metadata.to_string())
    }

    fn log_of(dir: &Path) -> PathBuf {
        dir.join(LOG_FILE_NAME)
    }

    fn offset_of(store: &OffsetStore, group: &str, topic: &str, partition: u32) -> Option<u64> {
        store
            .fetch(group, topic, partition)
            .map(|value| value.offset)
    }

    /// Everything in the store, for comparing two stores or a store with a model.
    fn dump(store: &OffsetStore) -> Vec<(String, String, u32, CommittedOffset)> {
        let mut all = Vec::new();
        for group in store.list_groups() {
            for (topic, partition, value) in store.fetch_group(&group) {
                all.push((group.clone(), topic, partition, value));
            }
        }
        all
    }

    fn assert_corrupt_at(result: Result<OffsetStore>, file: &Path, at: u64) {
        match result {
            Err(Error::Corrupt {
                file: f,
                position,
                reason,
            }) => {
                assert_eq!(f, file);
                assert_eq!(position, at, "reason: {reason}");
            }
            other => panic!("expected Error::Corrupt at {at}, got {other:?}"),
        }
    }

    #[test]
    fn commit_fetch_and_reopen_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        assert!(store.list_groups().is_empty());
        assert_eq!(store.fetch("g", "t", 0), None);

        store
            .commit("g", &[entry("t", 1, 42, "m1"), entry("a-topic", 0, 7, "")])
            .unwrap();
        let at = clock.now_ms();
        assert_eq!(
            store.fetch("g", "t", 1),
            Some(CommittedOffset {
                offset: 42,
                metadata: "m1".to_string(),
                commit_timestamp_ms: at,
            })
        );
        assert_eq!(store.fetch("g", "t", 0), None);
        assert_eq!(store.fetch("other", "t", 1), None);
        let group = store.fetch_group("g");
        let keys: Vec<_> = group
            .iter()
            .map(|(t, p, v)| (t.as_str(), *p, v.offset))
            .collect();
        assert_eq!(keys, [("a-topic", 0, 7), ("t", 1, 42)]);
        assert_eq!(store.list_groups(), ["g"]);
        let before = dump(&store);
        drop(store);

        let store = open(dir.path(), &clock);
        assert_eq!(dump(&store), before);
    }

    #[test]
    fn empty_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &new_clock());
        store.commit("g", &[]).unwrap();
        assert_eq!(store.log_bytes(), 0);
        assert!(store.list_groups().is_empty());
    }

    #[test]
    fn many_commits_then_reopen_gives_latest_values() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        let mut model = BTreeMap::new();
        for i in 0..300u64 {
            clock.advance_ms(3);
            let group = format!("group-{}", i % 3);
            let partition = (i % 4) as u32;
            let metadata = format!("commit {i}");
            store
                .commit(&group, &[entry("orders", partition, i * 10, &metadata)])
                .unwrap();
            model.insert((group, partition), (i * 10, metadata, clock.now_ms()));
        }
        drop(store);

        let store = open(dir.path(), &clock);
        for ((group, partition), (offset, metadata, at)) in &model {
            let value = store.fetch(group, "orders", *partition).unwrap();
            assert_eq!(value.offset, *offset);
            assert_eq!(&value.metadata, metadata);
            assert_eq!(value.commit_timestamp_ms, *at);
        }
        assert_eq!(store.list_groups(), ["group-0", "group-1", "group-2"]);
    }

    #[test]
    fn later_entry_for_the_same_partition_in_one_commit_wins() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store
            .commit(
                "g",
                &[entry("t", 0, 1, "first"), entry("t", 0, 2, "second")],
            )
            .unwrap();
        assert_eq!(offset_of(&store, "g", "t", 0), Some(2));
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(store.fetch("g", "t", 0).unwrap().metadata, "second");
    }

    #[test]
    fn delete_group_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g1", &[entry("t", 0, 5, "")]).unwrap();
        store.commit("g2", &[entry("t", 0, 6, "")]).unwrap();
        assert!(store.delete_group("g1").unwrap());
        assert!(!store.delete_group("g1").unwrap());
        assert!(!store.delete_group("never-existed").unwrap());
        assert_eq!(store.fetch("g1", "t", 0), None);
        assert_eq!(store.list_groups(), ["g2"]);
        drop(store);

        let store = open(dir.path(), &clock);
        assert_eq!(store.fetch("g1", "t", 0), None);
        assert!(store.fetch_group("g1").is_empty());
        assert_eq!(store.list_groups(), ["g2"]);
        assert_eq!(offset_of(&store, "g2", "t", 0), Some(6));

        // A deleted group can come back with fresh offsets.
        store.commit("g1", &[entry("t", 0, 9, "")]).unwrap();
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(offset_of(&store, "g1", "t", 0), Some(9));
    }

    #[test]
    fn delete_topic_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store
            .commit(
                "g1",
                &[
                    entry("t1", 0, 1, ""),
                    entry("t1", 1, 2, ""),
                    entry("t2", 0, 3, ""),
                ],
            )
            .unwrap();
        store.commit("g2", &[entry("t1", 0, 4, "")]).unwrap();
        store.delete_topic("t1").unwrap();
        store.delete_topic("no-such-topic").unwrap();

        let check = |store: &OffsetStore| {
            assert_eq!(store.fetch("g1", "t1", 0), None);
            assert_eq!(store.fetch("g1", "t1", 1), None);
            assert_eq!(offset_of(store, "g1", "t2", 0), Some(3));
            // g2 had only t1: it is gone.
            assert_eq!(store.list_groups(), ["g1"]);
        };
        check(&store);
        drop(store);
        check(&open(dir.path(), &clock));
    }

    /// Writes two commits to the same key, then cuts the file at every byte of the last
    /// record: reopening gives the first value (or, uncut, the second), never garbage,
    /// and truncates the file back to the end of the first record.
    #[test]
    fn torn_tail_at_every_byte_of_last_record_keeps_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 10, "old")]).unwrap();
        let first_end = store.log_bytes();
        store
            .commit("g", &[entry("t", 0, 20, "new"), entry("t", 1, 5, "new")])
            .unwrap();
        drop(store);
        let full = fs::read(log_of(dir.path())).unwrap();
        assert!(full.len() as u64 > first_end);

        for cut in first_end as usize..=full.len() {
            let case = tempfile::tempdir().unwrap();
            fs::write(log_of(case.path()), &full[..cut]).unwrap();
            let store = open(case.path(), &clock);
            if cut == full.len() {
                assert_eq!(offset_of(&store, "g", "t", 0), Some(20));
                assert_eq!(offset_of(&store, "g", "t", 1), Some(5));
                continue;
            }
            assert_eq!(offset_of(&store, "g", "t", 0), Some(10), "cut at {cut}");
            // The torn commit is gone as a unit.
            assert_eq!(offset_of(&store, "g", "t", 1), None, "cut at {cut}");
            assert_eq!(
                fs::metadata(log_of(case.path())).unwrap().len(),
                first_end,
                "cut at {cut}"
            );
            // The log accepts appends after the truncation and replays cleanly.
            store.commit("g", &[entry("t", 0, 30, "")]).unwrap();
            drop(store);
            let store = open(case.path(), &clock);
            assert_eq!(offset_of(&store, "g", "t", 0), Some(30), "cut at {cut}");
        }
    }

    /// A crash can leave the last record with wrong bytes rather than missing ones
    /// (a page written, another not): any damage confined to the last record, or a
    /// zero-filled extension, is a torn tail.
    #[test]
    fn damaged_last_record_is_truncated_as_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 10, "old")]).unwrap();
        let first_end = store.log_bytes() as usize;
        store.commit("g", &[entry("t", 0, 20, "new")]).unwrap();
        drop(store);
        let full = fs::read(log_of(dir.path())).unwrap();

        let mut damaged_images = Vec::new();
        for at in first_end..full.len() {
            let mut image = full.clone();
            image[at] ^= 0xFF;
            damaged_images.push(image);
        }
        let mut zero_extended = full[..first_end].to_vec();
        zero_extended.extend_from_slice(&[0; 4096]);
        damaged_images.push(zero_extended);
        let mut zeroed_last = full.clone();
        zeroed_last[first_end..].fill(0);
        damaged_images.push(zeroed_last);

        for (case_number, image) in damaged_images.iter().enumerate() {
            let case = tempfile::tempdir().unwrap();
            fs::write(log_of(case.path()), image).unwrap();
            let store = open(case.path(), &clock);
            assert_eq!(
                offset_of(&store, "g", "t", 0),
                Some(10),
                "case {case_number}"
            );
            assert_eq!(
                fs::metadata(log_of(case.path())).unwrap().len(),
                first_end as u64,
                "case {case_number}"
            );
        }
    }

    /// Damage to any byte of a record that intact records follow is corruption: the
    /// open fails, naming the file and the damaged record, and the file is left as is.
    #[test]
    fn corrupted_byte_in_middle_record_is_reported_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 1, "one")]).unwrap();
        let middle_start = store.log_bytes() as usize;
        store.commit("g", &[entry("t", 0, 2, "two")]).unwrap();
        let middle_end = store.log_bytes() as usize;
        store.commit("g", &[entry("t", 0, 3, "three")]).unwrap();
        drop(store);
        let full = fs::read(log_of(dir.path())).unwrap();

        for at in middle_start..middle_end {
            for flip in [0xFF_u8, 0x01, 0x80] {
                let case = tempfile::tempdir().unwrap();
                let path = log_of(case.path());
                let mut image = full.clone();
                image[at] ^= flip;
                fs::write(&path, &image).unwrap();
                assert_corrupt_at(
                    OffsetStore::open(case.path(), clock.clone()),
                    &path,
                    middle_start as u64,
                );
                assert_eq!(fs::read(&path).unwrap(), image, "byte {at} flip {flip:#x}");
            }
        }
    }

    /// A record whose checksum matches but whose content is not understood was written
    /// on purpose (by a newer build, or a bug): never truncated, even at the tail.
    #[test]
    fn unknown_version_with_valid_checksum_is_corrupt_even_at_tail() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 1, "")]).unwrap();
        let good_len = store.log_bytes();
        drop(store);

        let mut record = encode_record(&OffsetRecord {
            written_at_ms: 0,
            ops: vec![OffsetOp::DeleteTopic {
                topic: "t".to_string(),
            }],
        })
        .unwrap();
        record[RECORD_HEADER_BYTES + BODY_VERSION_AT] = RECORD_VERSION + 1;
        let crc = crc32fast::hash(&record[RECORD_HEADER_BYTES..]);
        record[HEADER_CRC_AT..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        let path = log_of(dir.path());
        let mut image = fs::read(&path).unwrap();
        image.extend_from_slice(&record);
        fs::write(&path, &image).unwrap();

        assert_corrupt_at(
            OffsetStore::open(dir.path(), clock.clone()),
            &path,
            good_len,
        );
        assert_eq!(fs::read(&path).unwrap(), image);
    }

    #[test]
    fn crash_between_compaction_tmp_write_and_rename_keeps_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 1, "old")]).unwrap();
        let tmp = store.compact_crash_before_rename().unwrap();
        assert_eq!(tmp, temp_path(&log_of(dir.path())));
        // The temporary file is a complete snapshot, just never installed.
        let snapshot = replay(&tmp, &fs::read(&tmp).unwrap()).unwrap();
        assert_eq!(snapshot.torn_reason, None);
        assert!(snapshot.live.groups.contains_key("g"));
        // The store goes on appending to the old log.
        store.commit("g", &[entry("t", 0, 2, "newer")]).unwrap();
        drop(store); // "crash"
        assert!(tmp.exists());

        let store = open(dir.path(), &clock);
        assert!(!tmp.exists(), "a stale offsets.log.tmp is removed at open");
        assert_eq!(store.fetch("g", "t", 0).unwrap().metadata, "newer");
        drop(store);

        // Garbage in a stale temporary file is ignored too.
        fs::write(&tmp, b"half a snapshot").unwrap();
        let store = open(dir.path(), &clock);
        assert!(!tmp.exists());
        assert_eq!(offset_of(&store, "g", "t", 0), Some(2));
    }

    #[test]
    fn compaction_preserves_all_values() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        for round in 0..20u64 {
            for group in 0..5 {
                clock.advance_ms(1);
                let entries: Vec<_> = (0..6)
                    .map(|p| {
                        entry(
                            &format!("topic-{}", p % 3),
                            p,
                            round * 100 + p as u64,
                            &format!("r{round}"),
                        )
                    })
                    .collect();
                store.commit(&format!("g{group}"), &entries).unwrap();
            }
        }
        store.delete_group("g4").unwrap();
        store.delete_topic("topic-2").unwrap();
        let before = dump(&store);
        let bytes_before = store.log_bytes();

        store.compact().unwrap();
        assert!(
            store.log_bytes() < bytes_before / 10,
            "{} -> {}",
            bytes_before,
            store.log_bytes()
        );
        assert_eq!(
            store.log_bytes(),
            fs::metadata(log_of(dir.path())).unwrap().len()
        );
        assert_eq!(dump(&store), before);
        assert!(!temp_path(&log_of(dir.path())).exists());

        // Appends after compaction go to the new file.
        store
            .commit("g0", &[entry("topic-0", 0, 999_999, "after")])
            .unwrap();
        let mut expected = dump(&store);
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(dump(&store), expected);

        // Compacting twice and an empty store are fine too.
        store.compact().unwrap();
        store.compact().unwrap();
        for group in store.list_groups() {
            assert!(store.delete_group(&group).unwrap());
        }
        store.compact().unwrap();
        assert_eq!(store.log_bytes(), 0);
        drop(store);
        expected.clear();
        assert_eq!(dump(&open(dir.path(), &clock)), expected);
    }

    #[test]
    fn log_is_compacted_automatically_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        let metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX);
        let mut max_seen = 0;
        for i in 0..400u64 {
            store.commit("g", &[entry("t", 0, i, &metadata)]).unwrap();
            max_seen = max_seen.max(store.log_bytes());
        }
        // 400 records of ~4.2 KiB would be ~1.7 MiB without compaction; with it the log
        // never exceeds the threshold by more than one record.
        assert!(
            max_seen <= COMPACT_LOG_BYTES_MIN + 8 * 1024,
            "log reached {max_seen} bytes"
        );
        assert!(store.log_bytes() < COMPACT_LOG_BYTES_MIN);
        assert_eq!(
            store.log_bytes(),
            fs::metadata(log_of(dir.path())).unwrap().len()
        );
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(offset_of(&store, "g", "t", 0), Some(399));
    }

    #[test]
    fn invalid_group_topic_and_metadata_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &new_clock());
        let invalid = |result: Result<()>| {
            assert!(
                matches!(result, Err(Error::InvalidArgument(_))),
                "{result:?}"
            );
        };
        let long_group = "g".repeat(GROUP_ID_BYTES_MAX + 1);
        let long_topic = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
        let long_metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX + 1);
        invalid(store.commit("", &[entry("t", 0, 1, "")]));
        invalid(store.commit("", &[]));
        invalid(store.commit(&long_group, &[entry("t", 0, 1, "")]));
        invalid(store.commit("g", &[entry("", 0, 1, "")]));
        invalid(store.commit("g", &[entry(&long_topic, 0, 1, "")]));
        invalid(store.commit("g", &[entry("t", 0, 1, &long_metadata)]));
        // One bad entry rejects the whole call.
        invalid(store.commit(
            "g",
            &[entry("t", 0, 1, ""), entry("t", 1, 1, &long_metadata)],
        ));
        invalid(store.delete_group("").map(|_| ()));
        invalid(store.delete_group(&long_group).map(|_| ()));
        invalid(store.delete_topic(""));
        assert_eq!(store.log_bytes(), 0, "nothing was written");
        assert!(store.list_groups().is_empty());

        // The limits themselves are accepted.
        let group = "g".repeat(GROUP_ID_BYTES_MAX);
        let topic = "t".repeat(TOPIC_NAME_BYTES_MAX);
        let metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX);
        store
            .commit(&group, &[entry(&topic, 0, 1, &metadata)])
            .unwrap();
        assert_eq!(store.fetch(&group, &topic, 0).unwrap().metadata, metadata);
    }

    #[test]
    fn commit_over_the_record_limit_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &new_clock());
        let metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX);
        let per_entry = ENTRY_FIXED_BYTES + 1 + metadata.len();
        let count = OFFSET_RECORD_BODY_BYTES_MAX as usize / per_entry + 1;
        let entries: Vec<_> = (0..count as u32)
            .map(|p| entry("t", p, 1, &metadata))
            .collect();
        let result = store.commit("g", &entries);
        assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");
        assert_eq!(store.log_bytes(), 0);
    }

    #[test]
    fn open_creates_missing_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b").join("offsets");
        let clock = new_clock();
        let store = open(&dir, &clock);
        store.commit("g", &[entry("t", 0, 1, "")]).unwrap();
        assert!(log_of(&dir).is_file());
        drop(store);
        assert_eq!(offset_of(&open(&dir, &clock), "g", "t", 0), Some(1));

        let file = root.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            OffsetStore::open(&file, clock.clone()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn concurrent_commits_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = Arc::new(open(dir.path(), &clock));
        let threads: Vec<_> = (0..8u32)
            .map(|thread| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..40u64 {
                        let group = format!("g{thread}");
                        store
                            .commit(&group, &[entry("t", 0, i, ""), entry("t", 1, i + 1, "")])
                            .unwrap();
                        // A reader never sees a value older than its own acked commit.
                        assert!(offset_of(&store, &group, "t", 0).unwrap() >= i);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let records = {
            let bytes = fs::read(log_of(dir.path())).unwrap();
            let mut at = 0;
            let mut count = 0;
            while let Ok(Some((_, used))) = decode_record(&bytes[at..]) {
                at += used;
                count += 1;
            }
            assert_eq!(at, bytes.len());
            count
        };
        assert!(records <= 8 * 40, "{records} records");
        drop(store);
        let store = open(dir.path(), &clock);
        for thread in 0..8 {
            let group = format!("g{thread}");
            assert_eq!(offset_of(&store, &group, "t", 0), Some(39));
            assert_eq!(offset_of(&store, &group, "t", 1), Some(40));
        }
    }

    #[test]
    fn decode_distinguishes_incomplete_from_invalid() {
        let record = encode_record(&OffsetRecord {
            written_at_ms: 5,
            ops: vec![OffsetOp::DeleteGroup {
                group: "g".to_string(),
            }],
        })
        .unwrap();
        for cut in 0..record.len() {
            assert_eq!(decode_record(&record[..cut]), Ok(None), "cut at {cut}");
        }
        let (decoded, used) = decode_record(&record).unwrap().unwrap();
        assert_eq!(used, record.len());
        assert_eq!(decoded.written_at_ms, 5);

        let mut zero = record.clone();
        zero[..4].fill(0);
        assert_eq!(
            decode_record(&zero),
            Err(DecodeError::LengthOutOfRange { body_len: 0 })
        );
        let mut huge = record.clone();
        huge[..4].copy_from_slice(&(OFFSET_RECORD_BODY_BYTES_MAX + 1).to_le_bytes());
        assert!(matches!(
            decode_record(&huge),
            Err(DecodeError::LengthOutOfRange { .. })
        ));
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_record(&flipped),
            Err(DecodeError::ChecksumMismatch { .. })
        ));
    }

    /// Wraps `body` in a header with the right length and checksum, so the body parser
    /// itself is exercised.
    fn with_valid_header(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn malformed_bodies_with_valid_checksums_are_rejected() {
        let mut body = vec![RECORD_VERSION];
        body.extend_from_slice(&0i64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        let header_only = body.clone();

        // op_count 1 but no operation.
        assert!(matches!(
            decode_record(&with_valid_header(&header_only)),
            Err(DecodeError::Malformed { .. })
        ));
        // Unknown kind.
        let mut unknown = header_only.clone();
        unknown.push(9);
        assert!(matches!(
            decode_record(&with_valid_header(&unknown)),
            Err(DecodeError::Malformed { at: 21, .. })
        ));
        // A string longer than what remains.
        let mut short = header_only.clone();
        short.push(KIND_DELETE_GROUP);
        short.extend_from_slice(&200u16.to_le_bytes());
        short.extend_from_slice(b"abc");
        assert!(matches!(
            decode_record(&with_valid_header(&short)),
            Err(DecodeError::Malformed { .. })
        ));
        // Not UTF-8.
        let mut not_utf8 = header_only.clone();
        not_utf8.push(KIND_DELETE_TOPIC);
        not_utf8.extend_from_slice(&2u16.to_le_bytes());
        not_utf8.extend_from_slice(&[0xC3, 0x28]);
        assert!(matches!(
            decode_record(&with_valid_header(&not_utf8)),
            Err(DecodeError::Malformed { .. })
        ));
        // An entry count the body cannot hold.
        let mut many = header_only.clone();
        many.push(KIND_COMMIT);
        many.extend_from_slice(&1u16.to_le_bytes());
        many.push(b'g');
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&with_valid_header(&many)),
            Err(DecodeError::Malformed { .. })
        ));
        // Trailing bytes after the operations.
        let mut trailing = header_only;
        trailing.push(KIND_DELETE_GROUP);
        trailing.extend_from_slice(&1u16.to_le_bytes());
        trailing.push(b'g');
        trailing.push(0);
        assert!(matches!(
            decode_record(&with_valid_header(&trailing)),
            Err(DecodeError::Malformed { .. })
        ));
    }

    fn name(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-zé.\\-_0-9]{{1,{}}}", max.min(20))).unwrap()
    }

    fn any_op() -> impl Strategy<Value = OffsetOp> {
        let entry = (
            name(TOPIC_NAME_BYTES_MAX),
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            ".{0,30}",
        )
            .prop_map(
                |(topic, partition, offset, commit_timestamp_ms, metadata)| CommitEntry {
                    topic,
                    partition,
                    offset,
                    commit_timestamp_ms,
                    metadata,
                },
            );
        prop_oneof![
            (
                name(GROUP_ID_BYTES_MAX),
                proptest::collection::vec(entry, 1..5)
            )
                .prop_map(|(group, entries)| OffsetOp::Commit { group, entries }),
            name(GROUP_ID_BYTES_MAX).prop_map(|group| OffsetOp::DeleteGroup { group }),
            name(TOPIC_NAME_BYTES_MAX).prop_map(|topic| OffsetOp::DeleteTopic { topic }),
        ]
    }

    proptest! {
        #[test]
        fn decode_record_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record(&bytes);
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
            let _ = decode_record(&with_valid_header(&body));
        }

        #[test]
        fn encode_then_decode_round_trips(
            written_at_ms in any::<i64>(),
            ops in proptest::collection::vec(any_op(), 1..6),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let record = OffsetRecord { written_at_ms, ops };
            let mut bytes = encode_record(&record).unwrap();
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            let (decoded, used) = decode_record(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(decoded, record);
            // Every single-bit flip is caught.
            for at in 0..len {
                let mut damaged = bytes[..len].to_vec();
                damaged[at] ^= 1 << (at % 8);
                prop_assert!(!matches!(decode_record(&damaged), Ok(Some(_))), "flip at {}", at);
            }
        }
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Commit(usize, Vec<(usize, u32, u64, usize)>),
        DeleteGroup(usize),
        DeleteTopic(usize),
        Compact,
        Reopen,
    }

    const GROUPS: [&str; 3] = ["alpha", "beta", "gamma"];
    const TOPICS: [&str; 3] = ["orders", "payments", "x"];

    fn model_op() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            6 => (0..GROUPS.len(), proptest::collection::vec((0..TOPICS.len(), 0..3u32, any::<u64>(), 0..40usize), 0..4))
                .prop_map(|(g, entries)| ModelOp::Commit(g, entries)),
            1 => (0..GROUPS.len()).prop_map(ModelOp::DeleteGroup),
            1 => (0..TOPICS.len()).prop_map(ModelOp::DeleteTopic),
            1 => Just(ModelOp::Compact),
            1 => Just(ModelOp::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// The store against a plain map, through reopens and compactions.
        #[test]
        fn store_matches_a_model(ops in proptest::collection::vec(model_op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let clock = new_clock();
            let mut store = open(dir.path(), &clock);
            let mut model: BTreeMap<(String, String, u32), (u64, String, i64)> = BTreeMap::new();
            for op in ops {
                clock.advance_ms(7);
                match op {
                    ModelOp::Commit(g, entries) => {
                        let group = GROUPS[g];
                        let entries: Vec<_> = entries
                            .into_iter()
                            .map(|(t, p, o, m)| entry(TOPICS[t], p, o, &"µ".repeat(m)))
                            .collect();
                        store.commit(group, &entries).unwrap();
                        for (topic, partition, offset, metadata) in entries {
                            model.insert((group.to_string(), topic, partition), (offset, metadata, clock.now_ms()));
                        }
                    }
                    ModelOp::DeleteGroup(g) => {
                        let existed = model.keys().any(|(group, _, _)| group == GROUPS[g]);
                        prop_assert_eq!(store.delete_group(GROUPS[g]).unwrap(), existed);
                        model.retain(|(group, _, _), _| group != GROUPS[g]);
                    }
                    ModelOp::DeleteTopic(t) => {
                        store.delete_topic(TOPICS[t]).unwrap();
                        model.retain(|(_, topic, _), _| topic != TOPICS[t]);
                    }
                    ModelOp::Compact => store.compact().unwrap(),
                    ModelOp::Reopen => {
                        drop(store);
                        store = open(dir.path(), &clock);
                    }
                }
                let expected: Vec<_> = model
                    .iter()
                    .map(|((group, topic, partition), (offset, metadata, at))| {
                        (group.clone(), topic.clone(), *partition, CommittedOffset {
                            offset: *offset,
                            metadata: metadata.clone(),
                            commit_timestamp_ms: *at,
                        })
                    })
                    .collect();
                prop_assert_eq!(dump(&store), expected);
                let state = store.lock_state();
                prop_assert_eq!(state.live.encoded_bytes, state.live.recomputed_encoded_bytes());
            }
        }
    }
}
