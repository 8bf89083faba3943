//! The consumer offsets store: durable `(group, topic, partition) -> CommittedOffset`.
//!
//! # Model
//!
//! [`OffsetStore`] is a [`StateLog`] of the [`Offsets`] state machine in
//! `DIR/offsets.log`: the live map in memory, every change an operation ([`OffsetOp`]):
//! commit offsets for a group, delete a group, or delete a topic's offsets from every
//! group. The state log provides the rest, documented in [`crate::statelog`]: the record
//! framing, group commit (concurrent commits share one `fdatasync`), readers that see
//! only durable offsets, poisoning after a failed fsync, replay with torn-tail and
//! corruption rules, and compaction when the log grows past `max(1 MiB, 4 x the live
//! size)`.
//!
//! - **Atomic commits.** One [`OffsetStore::commit`] call is one operation, and the
//!   operations of one call never span records, so a crash keeps all of a call's
//!   entries or none.
//! - **Readers see only durable state**: [`OffsetStore::fetch`] never returns an offset
//!   a crash could take back.
//! - **fsync failure is fatal**: every later write fails with [`Error::Poisoned`] until
//!   the store is reopened. Reads keep working from memory, which holds only
//!   acknowledged data.
//!
//! # Operations
//!
//! Records are state-log records (see [`crate::statelog`] and `storage/FORMAT.md`);
//! the bytes of `offsets.log` are the same as before the state log existed, so no
//! migration is needed either way. `str16` is a `u16` byte length followed by that many
//! bytes of UTF-8 (no terminator). An operation is a `kind` u8, then the fields of that
//! kind:
//!
//! | kind | name | fields after `kind` |
//! |---:|---|---|
//! | 1 | commit | `group` str16, `entry_count` u32 (`>= 1`), `entry_count` entries |
//! | 2 | delete-group | `group` str16 |
//! | 3 | delete-topic | `topic` str16 |
//! | 4 | delete-group-offsets | `group` str16, `topic` str16, `partition_count` u32, `partition_count` x `partition` u32 (none = every partition) |
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
//! entries no longer exists. A compaction writes the live map as commit operations of
//! at most about 64 KiB each (a large group spans several); commit timestamps are kept
//! because each entry carries its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::limits::{COMMIT_METADATA_BYTES_MAX, GROUP_ID_BYTES_MAX, TOPIC_NAME_BYTES_MAX};
use crate::statelog::{
    self, LogOp, OPS_BYTES_MAX, OpReader, Record, SnapshotWriter, StateLog, StateLogOptions,
    StateMachine, put_str16,
};

pub use crate::statelog::{BODY_FIXED_BYTES, DecodeError, RECORD_HEADER_BYTES, RECORD_VERSION};

/// Name of the log file inside the store's directory.
pub const LOG_FILE_NAME: &str = "offsets.log";

const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;
const KIND_DELETE_TOPIC: u8 = 3;
const KIND_DELETE_GROUP_OFFSETS: u8 = 4;

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
/// A compaction's commit operations stop taking entries at about this size.
const SNAPSHOT_OP_BYTES: usize = 64 * 1024;

// Every name and metadata string fits a str16.
const _: () = assert!(GROUP_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(TOPIC_NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(COMMIT_METADATA_BYTES_MAX <= u16::MAX as usize);
// One commit of one maximal entry fits in a record, so size is never why a valid
// single-entry commit is refused; and a snapshot operation always takes at least one.
const MAX_ONE_ENTRY_COMMIT_BYTES: usize = COMMIT_OP_FIXED_BYTES
    + GROUP_ID_BYTES_MAX
    + ENTRY_FIXED_BYTES
    + TOPIC_NAME_BYTES_MAX
    + COMMIT_METADATA_BYTES_MAX;
const _: () = assert!(MAX_ONE_ENTRY_COMMIT_BYTES <= OPS_BYTES_MAX);
const _: () = assert!(MAX_ONE_ENTRY_COMMIT_BYTES <= SNAPSHOT_OP_BYTES);

// ---------------------------------------------------------------------------------------
// Values and operations
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
pub type OffsetRecord = Record<OffsetOp>;

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
    /// Remove `group`'s offsets for `topic`: of `partitions`, or all when empty.
    DeleteGroupOffsets {
        group: String,
        topic: String,
        partitions: Vec<u32>,
    },
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

/// Decodes the offsets-log record at the start of `bytes`; see
/// [`statelog::decode_record`]. Never panics, whatever the input.
pub fn decode_record(bytes: &[u8]) -> Result<Option<(OffsetRecord, usize)>, DecodeError> {
    statelog::decode_record::<OffsetOp>(bytes)
}

/// Encodes `record` as it is stored, header included. Refuses what the decoder would
/// refuse: names or metadata outside their limits, no operations, an empty commit, a
/// body over the record limit.
pub fn encode_record(record: &OffsetRecord) -> Result<Vec<u8>> {
    statelog::encode_record(record)
}

impl LogOp for OffsetOp {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        validate_op(self)?;
        match self {
            OffsetOp::Commit { group, entries } => {
                out.push(KIND_COMMIT);
                put_str16(out, group);
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for entry in entries {
                    put_entry(
                        out,
                        &entry.topic,
                        entry.partition,
                        entry.offset,
                        entry.commit_timestamp_ms,
                        &entry.metadata,
                    );
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
            OffsetOp::DeleteGroupOffsets {
                group,
                topic,
                partitions,
            } => {
                out.push(KIND_DELETE_GROUP_OFFSETS);
                put_str16(out, group);
                put_str16(out, topic);
                out.extend_from_slice(&(partitions.len() as u32).to_le_bytes());
                for partition in partitions {
                    out.extend_from_slice(&partition.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    fn decode(reader: &mut OpReader<'_>) -> Result<Self, DecodeError> {
        match reader.u8("operation kind")? {
            KIND_COMMIT => {
                let group = reader.str16("group id", 1, GROUP_ID_BYTES_MAX)?;
                let entry_count = reader.count("entry_count", 1, ENTRY_BYTES_MIN)?;
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
            KIND_DELETE_GROUP_OFFSETS => {
                let group = reader.str16("group id", 1, GROUP_ID_BYTES_MAX)?;
                let topic = reader.str16("topic", 1, TOPIC_NAME_BYTES_MAX)?;
                let count = reader.count("partition_count", 0, 4)?;
                let mut partitions = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    partitions.push(reader.u32("partition")?);
                }
                Ok(OffsetOp::DeleteGroupOffsets {
                    group,
                    topic,
                    partitions,
                })
            }
            kind => Err(reader.unknown_kind(kind)),
        }
    }
}

fn put_entry(
    out: &mut Vec<u8>,
    topic: &str,
    partition: u32,
    offset: u64,
    commit_timestamp_ms: i64,
    metadata: &str,
) {
    put_str16(out, topic);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&commit_timestamp_ms.to_le_bytes());
    put_str16(out, metadata);
}

fn entry_encoded_bytes(topic: &str, metadata: &str) -> u64 {
    (ENTRY_FIXED_BYTES + topic.len() + metadata.len()) as u64
}

fn commit_op_overhead_bytes(group: &str) -> u64 {
    (COMMIT_OP_FIXED_BYTES + group.len()) as u64
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
        OffsetOp::DeleteGroupOffsets { group, topic, .. } => {
            validate_group(group)?;
            validate_topic(topic)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------

/// group -> topic -> partition -> committed offset. A group is present only while it
/// has at least one entry, and a topic only while it has at least one partition.
type GroupMap = BTreeMap<String, BTreeMap<String, BTreeMap<u32, CommittedOffset>>>;

/// The live offsets and an estimate of their encoded size (what a snapshot holds,
/// without record headers), kept up to date on every change.
#[derive(Debug, Default)]
pub struct Offsets {
    groups: GroupMap,
    encoded_bytes: u64,
}

impl StateMachine for Offsets {
    type Op = OffsetOp;
    /// Whether the operation found something to change (for a delete, whether the
    /// group or topic existed).
    type Outcome = bool;
    const NAME: &'static str = "consumer offsets";

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
            OffsetOp::DeleteGroupOffsets {
                group,
                topic,
                partitions,
            } => {
                let Some(topics) = self.groups.get_mut(&group) else {
                    return false;
                };
                let Some(stored) = topics.get_mut(&topic) else {
                    return false;
                };
                let mut found = false;
                let gone: Vec<u32> = if partitions.is_empty() {
                    stored.keys().copied().collect()
                } else {
                    partitions
                };
                for partition in gone {
                    if let Some(value) = stored.remove(&partition) {
                        found = true;
                        self.encoded_bytes -= entry_encoded_bytes(&topic, &value.metadata);
                    }
                }
                if stored.is_empty() {
                    topics.remove(&topic);
                }
                if topics.is_empty() {
                    self.groups.remove(&group);
                    self.encoded_bytes -= commit_op_overhead_bytes(&group);
                }
                found
            }
        }
    }

    /// Commit operations, group by group, each of at most about `SNAPSHOT_OP_BYTES`.
    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()> {
        let mut chunk: Vec<(&str, u32, &CommittedOffset)> = Vec::new();
        for (group, topics) in &self.groups {
            let op_fixed = commit_op_overhead_bytes(group) as usize;
            let mut chunk_bytes = op_fixed;
            for (topic, partitions) in topics {
                for (partition, value) in partitions {
                    let entry_bytes = entry_encoded_bytes(topic, &value.metadata) as usize;
                    if !chunk.is_empty() && chunk_bytes + entry_bytes > SNAPSHOT_OP_BYTES {
                        push_commit(out, group, &chunk)?;
                        chunk.clear();
                        chunk_bytes = op_fixed;
                    }
                    chunk.push((topic, *partition, value));
                    chunk_bytes += entry_bytes;
                }
            }
            if !chunk.is_empty() {
                push_commit(out, group, &chunk)?;
                chunk.clear();
            }
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        self.encoded_bytes
    }
}

/// Writes one commit operation of `entries` (valid: they come from the live map).
fn push_commit(
    out: &mut SnapshotWriter<'_>,
    group: &str,
    entries: &[(&str, u32, &CommittedOffset)],
) -> Result<()> {
    out.push_with(|buf| {
        buf.push(KIND_COMMIT);
        put_str16(buf, group);
        buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (topic, partition, value) in entries {
            put_entry(
                buf,
                topic,
                *partition,
                value.offset,
                value.commit_timestamp_ms,
                &value.metadata,
            );
        }
        Ok(())
    })
}

impl Offsets {
    /// Every committed offset: (group, topic, partition) -> the next offset to consume.
    /// For offline tools that replay a log through [`StateMachine::apply`].
    pub fn committed(&self) -> BTreeMap<(String, String, u32), u64> {
        let mut out = BTreeMap::new();
        for (group, topics) in &self.groups {
            for (topic, partitions) in topics {
                for (&partition, value) in partitions {
                    out.insert((group.clone(), topic.clone(), partition), value.offset);
                }
            }
        }
        out
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

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// Durable consumer offsets for every group. All methods take `&self`; share it in an
/// `Arc`.
#[derive(Debug)]
pub struct OffsetStore {
    /// The offsets and their log.
    log: StateLog<Offsets>,
    /// Source of commit timestamps.
    clock: Arc<dyn Clock>,
}

impl OffsetStore {
    /// Opens (creating if needed) the store in `dir` and replays its log.
    ///
    /// A torn tail is truncated with a warning; damage a crash cannot explain fails with
    /// [`Error::Corrupt`]. A leftover `offsets.log.tmp` from an interrupted compaction is
    /// deleted.
    /// Every file operation goes through `fs` ([`crate::OsFs`] outside tests).
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path, clock: Arc<dyn Clock>) -> Result<OffsetStore> {
        let log = StateLog::open(
            fs,
            &dir.join(LOG_FILE_NAME),
            Offsets::default(),
            clock.clone(),
            StateLogOptions::default(),
        )?;
        Ok(OffsetStore { log, clock })
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
        self.log
            .append_one(OffsetOp::Commit {
                group: group.to_string(),
                entries,
            })
            .map(|_| ())
    }

    /// The committed offset of `group` for `topic`/`partition`, if any.
    pub fn fetch(&self, group: &str, topic: &str, partition: u32) -> Option<CommittedOffset> {
        self.log.read(|offsets| {
            offsets
                .groups
                .get(group)?
                .get(topic)?
                .get(&partition)
                .cloned()
        })
    }

    /// Every committed offset of `group`, sorted by topic then partition.
    pub fn fetch_group(&self, group: &str) -> Vec<(String, u32, CommittedOffset)> {
        self.log.read(|offsets| {
            let Some(topics) = offsets.groups.get(group) else {
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
        })
    }

    /// Every group with at least one committed offset, sorted.
    pub fn list_groups(&self) -> Vec<String> {
        self.log
            .read(|offsets| offsets.groups.keys().cloned().collect())
    }

    /// Durably removes every offset of `group`. Returns whether the group existed.
    pub fn delete_group(&self, group: &str) -> Result<bool> {
        validate_group(group)?;
        // Nothing queued or in flight could create it first: a no-op needs no write.
        let absent = self
            .log
            .read_settled(|offsets| !offsets.groups.contains_key(group))?;
        if absent == Some(true) {
            return Ok(false);
        }
        self.log.append_one(OffsetOp::DeleteGroup {
            group: group.to_string(),
        })
    }

    /// Durably removes `group`'s offsets for `topic` (of `partitions`, or all of them
    /// when empty), as `kafka-consumer-groups --delete-offsets` does. Returns whether
    /// there was any. A group left with none no longer exists.
    pub fn delete_group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<bool> {
        validate_group(group)?;
        validate_topic(topic)?;
        let absent = self.log.read_settled(|offsets| {
            offsets
                .groups
                .get(group)
                .and_then(|t| t.get(topic))
                .is_none_or(|stored| {
                    !partitions.is_empty() && partitions.iter().all(|p| !stored.contains_key(p))
                })
        })?;
        if absent == Some(true) {
            return Ok(false);
        }
        self.log.append_one(OffsetOp::DeleteGroupOffsets {
            group: group.to_string(),
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
        })
    }

    /// Every topic some group has offsets on.
    pub fn topics(&self) -> std::collections::BTreeSet<String> {
        self.log.read(|offsets| {
            offsets
                .groups
                .values()
                .flat_map(|topics| topics.keys().cloned())
                .collect()
        })
    }

    /// Durably removes `topic`'s offsets from every group (for a deleted topic).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        validate_topic(topic)?;
        let absent = self.log.read_settled(|offsets| !offsets.has_topic(topic))?;
        if absent == Some(true) {
            return Ok(());
        }
        self.log
            .append_one(OffsetOp::DeleteTopic {
                topic: topic.to_string(),
            })
            .map(|_| ())
    }

    /// Rewrites the log as a snapshot of the live offsets (see [`crate::statelog`]).
    /// Runs on its own when the log grows past `max(1 MiB, 4 x live size)`.
    pub fn compact(&self) -> Result<()> {
        self.log.compact()
    }

    /// Bytes in the log file now.
    pub fn log_bytes(&self) -> u64 {
        self.log.log_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::fs::OsFs;
    use crate::fsutil::temp_path;
    use crate::limits::OFFSET_RECORD_BODY_BYTES_MAX;
    use crate::statelog::ScanEnd;
    use proptest::prelude::*;
    use std::fs;
    use std::path::PathBuf;

    fn new_clock() -> Arc<ManualClock> {
        ManualClock::new(1_700_000_000_000)
    }

    fn open(dir: &Path, clock: &Arc<ManualClock>) -> OffsetStore {
        OffsetStore::open(Arc::new(OsFs), dir, clock.clone()).unwrap()
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

    #[test]
    fn crash_between_compaction_tmp_write_and_rename_keeps_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let clock = new_clock();
        let store = open(dir.path(), &clock);
        store.commit("g", &[entry("t", 0, 1, "old")]).unwrap();
        let tmp = store.log.compact_crash_before_rename().unwrap();
        assert_eq!(tmp, temp_path(&log_of(dir.path())));
        // The temporary file is a complete snapshot, just never installed.
        let mut live = Offsets::default();
        let snapshot = statelog::scan_image::<OffsetOp>(&fs::read(&tmp).unwrap(), |_, record| {
            for op in record.ops {
                live.apply(op);
            }
        });
        assert_eq!(snapshot.end, ScanEnd::Clean);
        assert!(live.groups.contains_key("g"));
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
            max_seen <= StateLogOptions::default().compact_min_bytes + 8 * 1024,
            "log reached {max_seen} bytes"
        );
        assert!(store.log_bytes() < StateLogOptions::default().compact_min_bytes);
        assert_eq!(
            store.log_bytes(),
            fs::metadata(log_of(dir.path())).unwrap().len()
        );
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(offset_of(&store, "g", "t", 0), Some(399));
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

    /// The bytes of `offsets.log` are pinned: a record made by hand from the table in
    /// the module docs (CRC computed with zlib's `crc32`, independently of this code)
    /// is what the encoder writes and what the decoder reads. Files written before the
    /// state log existed have exactly this framing.
    #[test]
    fn record_bytes_are_the_documented_ones() {
        let golden = "370000004cc80f2b010807060504030201030000000101006701000000010074030000002a\
                      00000000000000e80300000000000001006d0201006803010075";
        let golden: Vec<u8> = (0..golden.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).unwrap())
            .collect();
        let record = OffsetRecord {
            written_at_ms: 0x0102_0304_0506_0708,
            ops: vec![
                OffsetOp::Commit {
                    group: "g".to_string(),
                    entries: vec![CommitEntry {
                        topic: "t".to_string(),
                        partition: 3,
                        offset: 42,
                        commit_timestamp_ms: 1000,
                        metadata: "m".to_string(),
                    }],
                },
                OffsetOp::DeleteGroup {
                    group: "h".to_string(),
                },
                OffsetOp::DeleteTopic {
                    topic: "u".to_string(),
                },
            ],
        };
        assert_eq!(encode_record(&record).unwrap(), golden);
        assert_eq!(decode_record(&golden), Ok(Some((record, golden.len()))));
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
            Err(DecodeError::UnknownKind { at: 21, kind: 9 })
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
            (
                name(GROUP_ID_BYTES_MAX),
                name(TOPIC_NAME_BYTES_MAX),
                proptest::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(group, topic, partitions)| OffsetOp::DeleteGroupOffsets {
                    group,
                    topic,
                    partitions
                }),
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
        DeleteGroupOffsets(usize, usize, Vec<u32>),
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
            1 => (0..GROUPS.len(), 0..TOPICS.len(), proptest::collection::vec(0..3u32, 0..2))
                .prop_map(|(g, t, p)| ModelOp::DeleteGroupOffsets(g, t, p)),
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
                    ModelOp::DeleteGroupOffsets(g, t, partitions) => {
                        let existed = model.keys().any(|(group, topic, p)| {
                            group == GROUPS[g]
                                && topic == TOPICS[t]
                                && (partitions.is_empty() || partitions.contains(p))
                        });
                        prop_assert_eq!(
                            store.delete_group_offsets(GROUPS[g], TOPICS[t], &partitions).unwrap(),
                            existed
                        );
                        model.retain(|(group, topic, p), _| {
                            !(group == GROUPS[g]
                                && topic == TOPICS[t]
                                && (partitions.is_empty() || partitions.contains(p)))
                        });
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
                let (kept, recomputed) =
                    store.log.read(|offsets| (offsets.encoded_bytes, offsets.recomputed_encoded_bytes()));
                prop_assert_eq!(kept, recomputed);
            }
        }
    }
}
