//! The queues' durable state: for every queue, which messages of its topic it has
//! settled, which it holds for members (with a deadline and an attempt count), and
//! which wait for a redelivery or for their deliver-at time. One [`StateMachine`] on
//! the state log for every queue of the broker (`DATA/state/queues/queues.statelog`).
//! The delivery engine (the server) decides what happens; this module records it, so
//! a restart resumes exactly where the last durable decision left off.
//!
//! # Model
//!
//! Per queue and partition:
//! - one **cursor per priority level**: every message of that level below the cursor
//!   has been *taken* by the queue (and is pending, or settled);
//! - **pending** messages: taken and not yet settled, each `Leased` (to a member, until
//!   a deadline), `Waiting` (for a redelivery, until a due time) or `Delayed` (not yet
//!   delivered, until its deliver-at time), with its attempt count, its first and last
//!   delivery time and the last reason a member gave;
//! - every other message below the cursor of its own level is **settled**: acked,
//!   dead-lettered, purged, or skipped as expired.
//!
//! So the state costs what is in flight (pending messages), never the backlog: a queue
//! with a million ready messages and nothing delivered holds a few cursors. A message's
//! level is its priority, capped at the queue's top level; a queue's levels are fixed
//! when it is created (the topic's `priority_levels` then). The highest levels' cursors
//! run ahead through the log (skipping other levels' messages), which is how a new
//! priority-9 message is found behind a million priority-0 ones.
//!
//! # Operations
//!
//! Each is a `kind` u8 and its fields (state-log records, see [`crate::statelog`]).
//! `str16` is a u16 byte length then UTF-8; lists are a u32 count then the items.
//!
//! | kind | name | fields | effect |
//! |---:|---|---|---|
//! | 1 | create | `name` str16, `topic` str16, config, `levels` u8, `created_ms` i64, partitions: u32 count x (`partition` u32, `levels` x `cursor` u64) | a queue with these cursors |
//! | 2 | alter | `name` str16, config | new config |
//! | 3 | delete | `name` str16 | the queue and its state are gone |
//! | 4 | take | `name`, `partition` u32, `level` u8, `cursor_to` u64, `at_ms` i64, taken: u32 count x (`offset` u64, hold) | the level's cursor moves to `cursor_to`; the taken offsets become pending (a lease is attempt 1); every other offset of that level passed over is settled |
//! | 5 | lease | `name`, `partition` u32, `offset` u64, `member` str16, `deadline_ms` i64, `at_ms` i64 | a pending message is delivered again: attempt + 1 |
//! | 6 | ack | `name`, `partition` u32, ranges: u32 count x (`first` u64, `last` u64) | pending messages in the ranges are settled |
//! | 7 | nack | `name`, `partition` u32, `offset` u64, `due_ms` i64, `reason` str16 | it waits until `due_ms` |
//! | 8 | extend | `name`, `partition` u32, `offset` u64, `deadline_ms` i64 | the lease runs until `deadline_ms` |
//! | 9 | dead-letter | `name`, `partition` u32, `offset` u64, `reason` str16 | settled (its dead letter was appended first) |
//! | 10 | purge | `name`, ends: u32 count x (`partition` u32, `end` u64) | every cursor moves to at least `end`; pending messages below it are settled |
//! | 11 | restore | `name`, `partition` u32, `offset` u64, pending | a pending message as it was (snapshots only) |
//! | 12 | create with a filter | the fields of create, then `filter` str16 | create, for a queue whose config has a filter (kind 1 has none, so logs written before filters read unchanged) |
//!
//! **config**: `ack_deadline_ms` u64, `max_deliveries` u32 (0 = unlimited),
//! `backoff_initial_ms` u64, `backoff_max_ms` u64, `dead_letter_topic` str16,
//! `max_unacked_per_member` u32. The config's `filter` is not in it: it is fixed when
//! the queue is created (kind 12) and an alter keeps it.
//! **hold**: a tag u8 then: 1 = leased (`member` str16, `deadline_ms` i64); 2 =
//! waiting (`due_ms` i64); 3 = delayed (`due_ms` i64).
//! **pending**: `level` u8, `attempts` u32, hold, `first_delivery_ms` i64,
//! `last_delivery_ms` i64, `reason` str16.
//!
//! An operation about a queue, partition or offset that does not exist (any more) is
//! a no-op: the engine checks before it appends, and a queue deleted in between makes
//! the rest moot. Operations on a partition the queue has not seen yet (the topic grew)
//! create it with every cursor at the taken offset's partition start, 0.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::limits::{FILTER_BYTES_MAX, PRIORITY_LEVELS_MAX, TOPIC_NAME_BYTES_MAX};
use crate::statelog::{DecodeError, LogOp, OpReader, SnapshotWriter, StateMachine, put_str16};

/// Longest member id or client name kept in the state.
pub const MEMBER_BYTES_MAX: usize = 255;
/// Longest reason kept with a message (a longer one is cut at a character boundary).
pub const REASON_BYTES_MAX: usize = 1024;
/// Longest ack deadline, in-progress extension, nack delay or backoff: 12 hours.
pub const QUEUE_DELAY_MS_MAX: u64 = 12 * 3600 * 1000;
/// Shortest ack deadline.
pub const ACK_DEADLINE_MS_MIN: u64 = 100;
/// Most unsettled deliveries one member may hold.
pub const MAX_UNACKED_PER_MEMBER_MAX: u32 = 100_000;

const KIND_CREATE: u8 = 1;
const KIND_ALTER: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_TAKE: u8 = 4;
const KIND_LEASE: u8 = 5;
const KIND_ACK: u8 = 6;
const KIND_NACK: u8 = 7;
const KIND_EXTEND: u8 = 8;
const KIND_DEAD_LETTER: u8 = 9;
const KIND_PURGE: u8 = 10;
const KIND_RESTORE: u8 = 11;
const KIND_CREATE_FILTERED: u8 = 12;

const HOLD_LEASED: u8 = 1;
const HOLD_WAITING: u8 = 2;
const HOLD_DELAYED: u8 = 3;

/// How a queue delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Time a member has to settle a delivery.
    pub ack_deadline_ms: u64,
    /// Deliveries of one message before it is dead-lettered; 0 = unlimited.
    pub max_deliveries: u32,
    /// Wait before the first redelivery; doubles with every further attempt.
    pub backoff_initial_ms: u64,
    /// Longest wait before a redelivery.
    pub backoff_max_ms: u64,
    /// Where dead letters go.
    pub dead_letter_topic: String,
    /// Most unsettled deliveries one member holds.
    pub max_unacked_per_member: u32,
    /// Only messages this filter ([`crate::filter`]) matches are delivered; the queue
    /// passes over the others as settled. Set when the queue is created, never
    /// altered (an alter keeps it).
    pub filter: Option<String>,
}

impl QueueConfig {
    /// The defaults for a queue on `topic`: 30 s deadline, 5 deliveries, backoff from
    /// 1 s to 5 min, dead letters to `<topic>.dlq`, 1,000 unacked per member.
    pub fn defaults_for(topic: &str) -> Self {
        QueueConfig {
            ack_deadline_ms: 30_000,
            max_deliveries: 5,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            dead_letter_topic: format!("{topic}.dlq"),
            max_unacked_per_member: 1_000,
            filter: None,
        }
    }

    /// Checks every value against its bounds; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{name} {value} is outside {min}..={max}"
                )))
            }
        };
        within(
            "ack_deadline_ms",
            self.ack_deadline_ms,
            ACK_DEADLINE_MS_MIN,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "backoff_initial_ms",
            self.backoff_initial_ms,
            0,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_initial_ms,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "max_unacked_per_member",
            u64::from(self.max_unacked_per_member),
            1,
            u64::from(MAX_UNACKED_PER_MEMBER_MAX),
        )?;
        if let Some(filter) = &self.filter {
            crate::filter::Filter::parse(filter)
                .map_err(|e| Error::invalid(format!("filter {e}")))?;
        }
        crate::config::validate_topic_name(&self.dead_letter_topic)
            .map_err(|e| Error::invalid(format!("dead_letter_topic: {e}")))
    }

    /// The wait before delivering a message again after its `attempts`-th delivery
    /// failed: `backoff_initial_ms * 2^(attempts - 1)`, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(63);
        self.backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms)
    }

    /// Whether a message delivered `attempts` times has used all its deliveries.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_deliveries != 0 && attempts >= self.max_deliveries
    }
}

/// Checks a queue name: the same rules as a topic name.
pub fn validate_queue_name(name: &str) -> Result<()> {
    crate::config::validate_topic_name(name)
        .map_err(|e| Error::invalid(e.to_string().replace("topic name", "queue name")))
}

/// Why a pending message is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Delivered to `member`, to be settled by `deadline_ms`.
    Leased { member: String, deadline_ms: i64 },
    /// Waiting for a redelivery (nacked, or a delivery given up) until `due_ms`.
    Waiting { due_ms: i64 },
    /// Never delivered yet: waiting for its deliver-at time.
    Delayed { due_ms: i64 },
}

/// A message a queue has taken and not settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its priority level in this queue.
    pub level: u8,
    /// Deliveries so far (0 while delayed).
    pub attempts: u32,
    pub hold: Hold,
    /// When it was first and last delivered (0 before the first delivery).
    pub first_delivery_ms: i64,
    pub last_delivery_ms: i64,
    /// The last reason a member gave (nack), empty if none.
    pub reason: String,
}

/// One partition of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePartition {
    /// Per level: every message of that level below it is taken.
    pub cursors: Vec<u64>,
    /// Taken and not settled, by offset.
    pub pending: BTreeMap<u64, Pending>,
}

impl QueuePartition {
    fn new(levels: u8, start: u64) -> Self {
        QueuePartition {
            cursors: vec![start; usize::from(levels.max(1))],
            pending: BTreeMap::new(),
        }
    }

    /// Every offset below it is settled.
    pub fn settled_below(&self) -> u64 {
        let cursors = self.cursors.iter().copied().min().unwrap_or(0);
        self.pending
            .keys()
            .next()
            .map_or(cursors, |&first| first.min(cursors))
    }
}

/// A queue's definition and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub name: String,
    pub topic: String,
    pub config: QueueConfig,
    /// Priority levels, 1 to 10.
    pub levels: u8,
    pub created_ms: i64,
    pub partitions: BTreeMap<u32, QueuePartition>,
}

impl Queue {
    /// The level of a message of `priority` in this queue.
    pub fn level_of(&self, priority: u8) -> u8 {
        priority.min(self.levels.saturating_sub(1))
    }

    /// (leased, waiting, delayed) pending messages.
    pub fn pending_counts(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for pending in self.partitions.values().flat_map(|p| p.pending.values()) {
            match pending.hold {
                Hold::Leased { .. } => counts.0 += 1,
                Hold::Waiting { .. } => counts.1 += 1,
                Hold::Delayed { .. } => counts.2 += 1,
            }
        }
        counts
    }

    fn partition(&mut self, partition: u32) -> &mut QueuePartition {
        let levels = self.levels;
        self.partitions
            .entry(partition)
            .or_insert_with(|| QueuePartition::new(levels, 0))
    }
}

/// A taken message: leased at once, or delayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub offset: u64,
    pub hold: Hold,
}

/// A change to the queues' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    Create {
        name: String,
        topic: String,
        config: QueueConfig,
        levels: u8,
        created_ms: i64,
        /// Per partition, the cursor of every level.
        cursors: Vec<(u32, Vec<u64>)>,
    },
    Alter {
        name: String,
        config: QueueConfig,
    },
    Delete {
        name: String,
    },
    Take {
        name: String,
        partition: u32,
        level: u8,
        cursor_to: u64,
        at_ms: i64,
        taken: Vec<Taken>,
    },
    Lease {
        name: String,
        partition: u32,
        offset: u64,
        member: String,
        deadline_ms: i64,
        at_ms: i64,
    },
    Ack {
        name: String,
        partition: u32,
        /// Inclusive ranges.
        ranges: Vec<(u64, u64)>,
    },
    Nack {
        name: String,
        partition: u32,
        offset: u64,
        due_ms: i64,
        reason: String,
    },
    Extend {
        name: String,
        partition: u32,
        offset: u64,
        deadline_ms: i64,
    },
    DeadLetter {
        name: String,
        partition: u32,
        offset: u64,
        reason: String,
    },
    Purge {
        name: String,
        ends: Vec<(u32, u64)>,
    },
    Restore {
        name: String,
        partition: u32,
        offset: u64,
        pending: Pending,
    },
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_config(out: &mut Vec<u8>, config: &QueueConfig) {
    out.extend_from_slice(&config.ack_deadline_ms.to_le_bytes());
    out.extend_from_slice(&config.max_deliveries.to_le_bytes());
    out.extend_from_slice(&config.backoff_initial_ms.to_le_bytes());
    out.extend_from_slice(&config.backoff_max_ms.to_le_bytes());
    put_str16(out, &config.dead_letter_topic);
    out.extend_from_slice(&config.max_unacked_per_member.to_le_bytes());
}

fn read_config(r: &mut OpReader<'_>) -> Result<QueueConfig, DecodeError> {
    Ok(QueueConfig {
        ack_deadline_ms: r.u64("ack_deadline_ms")?,
        max_deliveries: r.u32("max_deliveries")?,
        backoff_initial_ms: r.u64("backoff_initial_ms")?,
        backoff_max_ms: r.u64("backoff_max_ms")?,
        dead_letter_topic: r.str16("dead_letter_topic", 1, TOPIC_NAME_BYTES_MAX)?,
        max_unacked_per_member: r.u32("max_unacked_per_member")?,
        filter: None,
    })
}

fn put_hold(out: &mut Vec<u8>, hold: &Hold) {
    match hold {
        Hold::Leased {
            member,
            deadline_ms,
        } => {
            out.push(HOLD_LEASED);
            put_str16(out, member);
            out.extend_from_slice(&deadline_ms.to_le_bytes());
        }
        Hold::Waiting { due_ms } => {
            out.push(HOLD_WAITING);
            out.extend_from_slice(&due_ms.to_le_bytes());
        }
        Hold::Delayed { due_ms } => {
            out.push(HOLD_DELAYED);
            out.extend_from_slice(&due_ms.to_le_bytes());
        }
    }
}

fn read_hold(r: &mut OpReader<'_>) -> Result<Hold, DecodeError> {
    match r.u8("hold")? {
        HOLD_LEASED => Ok(Hold::Leased {
            member: r.str16("member", 0, MEMBER_BYTES_MAX)?,
            deadline_ms: r.i64("deadline_ms")?,
        }),
        HOLD_WAITING => Ok(Hold::Waiting {
            due_ms: r.i64("due_ms")?,
        }),
        HOLD_DELAYED => Ok(Hold::Delayed {
            due_ms: r.i64("due_ms")?,
        }),
        other => Err(r.malformed(format!("unknown hold {other}"))),
    }
}

fn read_name(r: &mut OpReader<'_>) -> Result<String, DecodeError> {
    r.str16("queue name", 1, TOPIC_NAME_BYTES_MAX)
}

fn read_levels(r: &mut OpReader<'_>) -> Result<u8, DecodeError> {
    let levels = r.u8("levels")?;
    if levels == 0 || levels > PRIORITY_LEVELS_MAX {
        return Err(r.malformed(format!(
            "levels {levels} is outside 1..={PRIORITY_LEVELS_MAX}"
        )));
    }
    Ok(levels)
}

fn read_level(r: &mut OpReader<'_>) -> Result<u8, DecodeError> {
    let level = r.u8("level")?;
    if level >= PRIORITY_LEVELS_MAX {
        return Err(r.malformed(format!("level {level} is not below {PRIORITY_LEVELS_MAX}")));
    }
    Ok(level)
}

/// Refuses what the decoder would refuse, before anything is written.
fn validate_op(op: &QueueOp) -> Result<()> {
    let name_ok = |name: &str| {
        if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
            Err(Error::invalid(format!(
                "queue name {name:?} has a bad length"
            )))
        } else {
            Ok(())
        }
    };
    let short = |what: &str, text: &str, max: usize| {
        if text.len() > max {
            Err(Error::invalid(format!("{what} is over {max} bytes")))
        } else {
            Ok(())
        }
    };
    let hold_ok = |hold: &Hold| match hold {
        Hold::Leased { member, .. } => short("member", member, MEMBER_BYTES_MAX),
        _ => Ok(()),
    };
    match op {
        QueueOp::Create {
            name,
            topic,
            config,
            levels,
            cursors,
            ..
        } => {
            name_ok(name)?;
            name_ok(topic)?;
            config.validate()?;
            if *levels == 0 || *levels > PRIORITY_LEVELS_MAX {
                return Err(Error::invalid(format!("levels {levels} is out of range")));
            }
            if cursors.iter().any(|(_, c)| c.len() != usize::from(*levels)) {
                return Err(Error::invalid(
                    "a partition's cursors do not match the levels",
                ));
            }
            Ok(())
        }
        QueueOp::Alter { name, config } => {
            name_ok(name)?;
            config.validate()
        }
        QueueOp::Delete { name } | QueueOp::Purge { name, .. } | QueueOp::Ack { name, .. } => {
            name_ok(name)
        }
        QueueOp::Take {
            name, level, taken, ..
        } => {
            name_ok(name)?;
            if *level >= PRIORITY_LEVELS_MAX {
                return Err(Error::invalid(format!("level {level} is out of range")));
            }
            taken.iter().try_for_each(|t| hold_ok(&t.hold))
        }
        QueueOp::Lease { name, member, .. } => {
            name_ok(name)?;
            short("member", member, MEMBER_BYTES_MAX)
        }
        QueueOp::Nack { name, reason, .. } | QueueOp::DeadLetter { name, reason, .. } => {
            name_ok(name)?;
            short("reason", reason, REASON_BYTES_MAX)
        }
        QueueOp::Extend { name, .. } => name_ok(name),
        QueueOp::Restore { name, pending, .. } => {
            name_ok(name)?;
            short("reason", &pending.reason, REASON_BYTES_MAX)?;
            if pending.level >= PRIORITY_LEVELS_MAX {
                return Err(Error::invalid("level out of range"));
            }
            hold_ok(&pending.hold)
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl LogOp for QueueOp {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        validate_op(self)?;
        match self {
            QueueOp::Create {
                name,
                topic,
                config,
                levels,
                created_ms,
                cursors,
            } => {
                out.push(match config.filter {
                    None => KIND_CREATE,
                    Some(_) => KIND_CREATE_FILTERED,
                });
                put_str16(out, name);
                put_str16(out, topic);
                put_config(out, config);
                out.push(*levels);
                put_i64(out, *created_ms);
                put_u32(out, cursors.len() as u32);
                for (partition, levels) in cursors {
                    put_u32(out, *partition);
                    for cursor in levels {
                        put_u64(out, *cursor);
                    }
                }
                if let Some(filter) = &config.filter {
                    put_str16(out, filter);
                }
            }
            QueueOp::Alter { name, config } => {
                out.push(KIND_ALTER);
                put_str16(out, name);
                put_config(out, config);
            }
            QueueOp::Delete { name } => {
                out.push(KIND_DELETE);
                put_str16(out, name);
            }
            QueueOp::Take {
                name,
                partition,
                level,
                cursor_to,
                at_ms,
                taken,
            } => {
                out.push(KIND_TAKE);
                put_str16(out, name);
                put_u32(out, *partition);
                out.push(*level);
                put_u64(out, *cursor_to);
                put_i64(out, *at_ms);
                put_u32(out, taken.len() as u32);
                for t in taken {
                    put_u64(out, t.offset);
                    put_hold(out, &t.hold);
                }
            }
            QueueOp::Lease {
                name,
                partition,
                offset,
                member,
                deadline_ms,
                at_ms,
            } => {
                out.push(KIND_LEASE);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                put_str16(out, member);
                put_i64(out, *deadline_ms);
                put_i64(out, *at_ms);
            }
            QueueOp::Ack {
                name,
                partition,
                ranges,
            } => {
                out.push(KIND_ACK);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u32(out, ranges.len() as u32);
                for (first, last) in ranges {
                    put_u64(out, *first);
                    put_u64(out, *last);
                }
            }
            QueueOp::Nack {
                name,
                partition,
                offset,
                due_ms,
                reason,
            } => {
                out.push(KIND_NACK);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                put_i64(out, *due_ms);
                put_str16(out, reason);
            }
            QueueOp::Extend {
                name,
                partition,
                offset,
                deadline_ms,
            } => {
                out.push(KIND_EXTEND);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                put_i64(out, *deadline_ms);
            }
            QueueOp::DeadLetter {
                name,
                partition,
                offset,
                reason,
            } => {
                out.push(KIND_DEAD_LETTER);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                put_str16(out, reason);
            }
            QueueOp::Purge { name, ends } => {
                out.push(KIND_PURGE);
                put_str16(out, name);
                put_u32(out, ends.len() as u32);
                for (partition, end) in ends {
                    put_u32(out, *partition);
                    put_u64(out, *end);
                }
            }
            QueueOp::Restore {
                name,
                partition,
                offset,
                pending,
            } => {
                out.push(KIND_RESTORE);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                out.push(pending.level);
                put_u32(out, pending.attempts);
                put_hold(out, &pending.hold);
                put_i64(out, pending.first_delivery_ms);
                put_i64(out, pending.last_delivery_ms);
                put_str16(out, &pending.reason);
            }
        }
        Ok(())
    }

    fn decode(r: &mut OpReader<'_>) -> Result<Self, DecodeError> {
        let kind = r.u8("kind")?;
        Ok(match kind {
            kind @ (KIND_CREATE | KIND_CREATE_FILTERED) => {
                let name = read_name(r)?;
                let topic = r.str16("topic", 1, TOPIC_NAME_BYTES_MAX)?;
                let mut config = read_config(r)?;
                let levels = read_levels(r)?;
                let created_ms = r.i64("created_ms")?;
                let item = 4 + 8 * usize::from(levels);
                let count = r.count("partition count", 0, item)?;
                let mut cursors = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let partition = r.u32("partition")?;
                    let mut levels_cursors = Vec::with_capacity(usize::from(levels));
                    for _ in 0..levels {
                        levels_cursors.push(r.u64("cursor")?);
                    }
                    cursors.push((partition, levels_cursors));
                }
                if kind == KIND_CREATE_FILTERED {
                    config.filter = Some(r.str16("filter", 1, FILTER_BYTES_MAX)?);
                }
                QueueOp::Create {
                    name,
                    topic,
                    config,
                    levels,
                    created_ms,
                    cursors,
                }
            }
            KIND_ALTER => QueueOp::Alter {
                name: read_name(r)?,
                config: read_config(r)?,
            },
            KIND_DELETE => QueueOp::Delete {
                name: read_name(r)?,
            },
            KIND_TAKE => {
                let name = read_name(r)?;
                let partition = r.u32("partition")?;
                let level = read_level(r)?;
                let cursor_to = r.u64("cursor_to")?;
                let at_ms = r.i64("at_ms")?;
                // An offset and the smallest hold (tag + i64).
                let count = r.count("taken count", 0, 8 + 9)?;
                let mut taken = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    taken.push(Taken {
                        offset: r.u64("offset")?,
                        hold: read_hold(r)?,
                    });
                }
                QueueOp::Take {
                    name,
                    partition,
                    level,
                    cursor_to,
                    at_ms,
                    taken,
                }
            }
            KIND_LEASE => QueueOp::Lease {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                member: r.str16("member", 0, MEMBER_BYTES_MAX)?,
                deadline_ms: r.i64("deadline_ms")?,
                at_ms: r.i64("at_ms")?,
            },
            KIND_ACK => {
                let name = read_name(r)?;
                let partition = r.u32("partition")?;
                let count = r.count("range count", 0, 16)?;
                let mut ranges = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    ranges.push((r.u64("first")?, r.u64("last")?));
                }
                QueueOp::Ack {
                    name,
                    partition,
                    ranges,
                }
            }
            KIND_NACK => QueueOp::Nack {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                due_ms: r.i64("due_ms")?,
                reason: r.str16("reason", 0, REASON_BYTES_MAX)?,
            },
            KIND_EXTEND => QueueOp::Extend {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                deadline_ms: r.i64("deadline_ms")?,
            },
            KIND_DEAD_LETTER => QueueOp::DeadLetter {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                reason: r.str16("reason", 0, REASON_BYTES_MAX)?,
            },
            KIND_PURGE => {
                let name = read_name(r)?;
                let count = r.count("end count", 0, 12)?;
                let mut ends = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    ends.push((r.u32("partition")?, r.u64("end")?));
                }
                QueueOp::Purge { name, ends }
            }
            KIND_RESTORE => {
                let name = read_name(r)?;
                let partition = r.u32("partition")?;
                let offset = r.u64("offset")?;
                let level = read_level(r)?;
                let attempts = r.u32("attempts")?;
                let hold = read_hold(r)?;
                let first_delivery_ms = r.i64("first_delivery_ms")?;
                let last_delivery_ms = r.i64("last_delivery_ms")?;
                let reason = r.str16("reason", 0, REASON_BYTES_MAX)?;
                QueueOp::Restore {
                    name,
                    partition,
                    offset,
                    pending: Pending {
                        level,
                        attempts,
                        hold,
                        first_delivery_ms,
                        last_delivery_ms,
                        reason,
                    },
                }
            }
            other => return Err(r.unknown_kind(other)),
        })
    }
}

/// Every queue of the broker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queues {
    queues: BTreeMap<String, Queue>,
    /// Pending messages over every queue (for the snapshot estimate).
    pending_total: u64,
}

/// About how many bytes a queue and a pending message take in a snapshot.
const SNAPSHOT_QUEUE_BYTES: u64 = 600;
const SNAPSHOT_PENDING_BYTES: u64 = 96;

impl Queues {
    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    /// Every queue, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    /// Pending messages over every queue.
    pub fn pending_total(&self) -> u64 {
        self.pending_total
    }

    /// Inserts or replaces a pending entry, keeping the total right.
    fn put_pending(total: &mut u64, partition: &mut QueuePartition, offset: u64, pending: Pending) {
        if partition.pending.insert(offset, pending).is_none() {
            *total += 1;
        }
    }

    fn remove_pending(total: &mut u64, partition: &mut QueuePartition, offset: u64) -> bool {
        let removed = partition.pending.remove(&offset).is_some();
        if removed {
            *total -= 1;
        }
        removed
    }
}

impl StateMachine for Queues {
    type Op = QueueOp;
    /// Messages (or queues) the operation changed.
    type Outcome = u64;
    const NAME: &'static str = "queues";

    fn apply(&mut self, op: QueueOp) -> u64 {
        let total = &mut self.pending_total;
        match op {
            QueueOp::Create {
                name,
                topic,
                config,
                levels,
                created_ms,
                cursors,
            } => {
                if self.queues.contains_key(&name) {
                    return 0;
                }
                let partitions = cursors
                    .into_iter()
                    .map(|(partition, cursors)| {
                        (
                            partition,
                            QueuePartition {
                                cursors,
                                pending: BTreeMap::new(),
                            },
                        )
                    })
                    .collect();
                self.queues.insert(
                    name.clone(),
                    Queue {
                        name,
                        topic,
                        config,
                        levels,
                        created_ms,
                        partitions,
                    },
                );
                1
            }
            QueueOp::Alter { name, config } => match self.queues.get_mut(&name) {
                Some(queue) => {
                    // The filter is fixed at creation (an Alter does not carry it).
                    let filter = queue.config.filter.take();
                    queue.config = QueueConfig { filter, ..config };
                    1
                }
                None => 0,
            },
            QueueOp::Delete { name } => match self.queues.remove(&name) {
                Some(queue) => {
                    *total -= queue
                        .partitions
                        .values()
                        .map(|p| p.pending.len() as u64)
                        .sum::<u64>();
                    1
                }
                None => 0,
            },
            QueueOp::Take {
                name,
                partition,
                level,
                cursor_to,
                at_ms,
                taken,
            } => {
                let Some(queue) = self.queues.get_mut(&name) else {
                    return 0;
                };
                if level >= queue.levels {
                    return 0;
                }
                let part = queue.partition(partition);
                let cursor = &mut part.cursors[usize::from(level)];
                *cursor = (*cursor).max(cursor_to);
                let mut changed = 0;
                for t in taken {
                    let (attempts, first, last) = match t.hold {
                        Hold::Leased { .. } => (1, at_ms, at_ms),
                        _ => (0, 0, 0),
                    };
                    let pending = Pending {
                        level,
                        attempts,
                        hold: t.hold,
                        first_delivery_ms: first,
                        last_delivery_ms: last,
                        reason: String::new(),
                    };
                    Queues::put_pending(total, part, t.offset, pending);
                    changed += 1;
                }
                changed
            }
            QueueOp::Lease {
                name,
                partition,
                offset,
                member,
                deadline_ms,
                at_ms,
            } => {
                let Some(pending) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                    .and_then(|p| p.pending.get_mut(&offset))
                else {
                    return 0;
                };
                pending.attempts = pending.attempts.saturating_add(1);
                pending.hold = Hold::Leased {
                    member,
                    deadline_ms,
                };
                if pending.first_delivery_ms == 0 {
                    pending.first_delivery_ms = at_ms;
                }
                pending.last_delivery_ms = at_ms;
                1
            }
            QueueOp::Ack {
                name,
                partition,
                ranges,
            } => {
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                let mut settled = 0;
                for (first, last) in ranges {
                    if first > last {
                        continue;
                    }
                    let offsets: Vec<u64> =
                        part.pending.range(first..=last).map(|(o, _)| *o).collect();
                    for offset in offsets {
                        if Queues::remove_pending(total, part, offset) {
                            settled += 1;
                        }
                    }
                }
                settled
            }
            QueueOp::Nack {
                name,
                partition,
                offset,
                due_ms,
                reason,
            } => {
                let Some(pending) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                    .and_then(|p| p.pending.get_mut(&offset))
                else {
                    return 0;
                };
                pending.hold = Hold::Waiting { due_ms };
                pending.reason = reason;
                1
            }
            QueueOp::Extend {
                name,
                partition,
                offset,
                deadline_ms,
            } => {
                let Some(pending) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                    .and_then(|p| p.pending.get_mut(&offset))
                else {
                    return 0;
                };
                match &mut pending.hold {
                    Hold::Leased {
                        deadline_ms: current,
                        ..
                    } => {
                        *current = deadline_ms;
                        1
                    }
                    _ => 0,
                }
            }
            QueueOp::DeadLetter {
                name,
                partition,
                offset,
                ..
            } => {
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                u64::from(Queues::remove_pending(total, part, offset))
            }
            QueueOp::Purge { name, ends } => {
                let Some(queue) = self.queues.get_mut(&name) else {
                    return 0;
                };
                let mut purged = 0;
                for (partition, end) in ends {
                    let part = queue.partition(partition);
                    for cursor in &mut part.cursors {
                        *cursor = (*cursor).max(end);
                    }
                    let below: Vec<u64> = part.pending.range(..end).map(|(o, _)| *o).collect();
                    for offset in below {
                        if Queues::remove_pending(total, part, offset) {
                            purged += 1;
                        }
                    }
                }
                purged
            }
            QueueOp::Restore {
                name,
                partition,
                offset,
                pending,
            } => {
                let Some(queue) = self.queues.get_mut(&name) else {
                    return 0;
                };
                let part = queue.partition(partition);
                Queues::put_pending(total, part, offset, pending);
                1
            }
        }
    }

    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()> {
        for queue in self.queues.values() {
            out.push(&QueueOp::Create {
                name: queue.name.clone(),
                topic: queue.topic.clone(),
                config: queue.config.clone(),
                levels: queue.levels,
                created_ms: queue.created_ms,
                cursors: queue
                    .partitions
                    .iter()
                    .map(|(p, part)| (*p, part.cursors.clone()))
                    .collect(),
            })?;
            for (partition, part) in &queue.partitions {
                for (offset, pending) in &part.pending {
                    out.push(&QueueOp::Restore {
                        name: queue.name.clone(),
                        partition: *partition,
                        offset: *offset,
                        pending: pending.clone(),
                    })?;
                }
            }
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        self.queues.len() as u64 * SNAPSHOT_QUEUE_BYTES
            + self.pending_total * SNAPSHOT_PENDING_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> QueueConfig {
        QueueConfig::defaults_for("jobs")
    }

    fn create(name: &str, levels: u8, partitions: u32) -> QueueOp {
        QueueOp::Create {
            name: name.into(),
            topic: "jobs".into(),
            config: config(),
            levels,
            created_ms: 1,
            cursors: (0..partitions)
                .map(|p| (p, vec![0; usize::from(levels)]))
                .collect(),
        }
    }

    fn leased(offset: u64, member: &str) -> Taken {
        Taken {
            offset,
            hold: Hold::Leased {
                member: member.into(),
                deadline_ms: 100,
            },
        }
    }

    fn round_trip(op: &QueueOp) -> QueueOp {
        let mut bytes = Vec::new();
        op.encode(&mut bytes).unwrap();
        let mut reader = OpReader::new(&bytes);
        let decoded = QueueOp::decode(&mut reader).unwrap();
        assert_eq!(reader.remaining(), 0, "{op:?} left bytes behind");
        decoded
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = config();
        let waits: Vec<u64> = (1..=10).map(|a| config.backoff_ms(a)).collect();
        assert_eq!(
            waits,
            vec![
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        assert_eq!(config.backoff_ms(u32::MAX), 300_000);
        assert!(!config.exhausted(4) && config.exhausted(5));
        let unlimited = QueueConfig {
            max_deliveries: 0,
            ..config
        };
        assert!(!unlimited.exhausted(u32::MAX));
    }

    #[test]
    fn configs_out_of_range_are_named() {
        for (change, field) in [
            (
                (|c: &mut QueueConfig| c.ack_deadline_ms = 10) as fn(&mut QueueConfig),
                "ack_deadline_ms",
            ),
            (|c| c.backoff_max_ms = 10, "backoff_max_ms"),
            (|c| c.max_unacked_per_member = 0, "max_unacked_per_member"),
            (|c| c.dead_letter_topic = "a b".into(), "dead_letter_topic"),
        ] {
            let mut config = config();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        }
    }

    #[test]
    fn a_message_is_taken_leased_nacked_redelivered_and_acked() {
        let mut state = Queues::default();
        assert_eq!(state.apply(create("q", 1, 2)), 1);
        state.apply(QueueOp::Take {
            name: "q".into(),
            partition: 1,
            level: 0,
            cursor_to: 5,
            at_ms: 10,
            taken: vec![leased(2, "m1"), leased(4, "m1")],
        });
        let queue = state.get("q").unwrap();
        assert_eq!(
            queue.partitions[&1].settled_below(),
            2,
            "0 and 1 were passed over"
        );
        assert_eq!(queue.pending_counts(), (2, 0, 0));
        state.apply(QueueOp::Nack {
            name: "q".into(),
            partition: 1,
            offset: 2,
            due_ms: 50,
            reason: "busy".into(),
        });
        assert_eq!(state.get("q").unwrap().pending_counts(), (1, 1, 0));
        state.apply(QueueOp::Lease {
            name: "q".into(),
            partition: 1,
            offset: 2,
            member: "m2".into(),
            deadline_ms: 200,
            at_ms: 60,
        });
        let pending = &state.get("q").unwrap().partitions[&1].pending[&2];
        assert_eq!(
            (
                pending.attempts,
                pending.first_delivery_ms,
                pending.last_delivery_ms
            ),
            (2, 10, 60)
        );
        assert_eq!(pending.reason, "busy");
        assert_eq!(
            state.apply(QueueOp::Ack {
                name: "q".into(),
                partition: 1,
                ranges: vec![(0, 3), (4, 4)],
            }),
            2
        );
        assert_eq!(state.get("q").unwrap().partitions[&1].settled_below(), 5);
        assert_eq!(state.pending_total(), 0);
    }

    #[test]
    fn operations_on_what_is_gone_change_nothing() {
        let mut state = Queues::default();
        for op in [
            QueueOp::Ack {
                name: "none".into(),
                partition: 0,
                ranges: vec![(0, 9)],
            },
            QueueOp::Delete {
                name: "none".into(),
            },
            QueueOp::Extend {
                name: "none".into(),
                partition: 0,
                offset: 0,
                deadline_ms: 1,
            },
        ] {
            assert_eq!(state.apply(op), 0);
        }
        state.apply(create("q", 1, 1));
        assert_eq!(
            state.apply(create("q", 1, 1)),
            0,
            "a second create is a no-op"
        );
    }

    #[test]
    fn purge_settles_everything_below_the_ends() {
        let mut state = Queues::default();
        state.apply(create("q", 3, 1));
        state.apply(QueueOp::Take {
            name: "q".into(),
            partition: 0,
            level: 2,
            cursor_to: 8,
            at_ms: 1,
            taken: vec![leased(7, "m")],
        });
        state.apply(QueueOp::Purge {
            name: "q".into(),
            ends: vec![(0, 10)],
        });
        let part = &state.get("q").unwrap().partitions[&0];
        assert_eq!(part.cursors, vec![10, 10, 10]);
        assert_eq!(part.settled_below(), 10);
        assert_eq!(state.pending_total(), 0);
    }

    fn arb_hold() -> impl Strategy<Value = Hold> {
        prop_oneof![
            ("[a-z0-9-]{0,20}", any::<i64>()).prop_map(|(member, deadline_ms)| Hold::Leased {
                member,
                deadline_ms
            }),
            any::<i64>().prop_map(|due_ms| Hold::Waiting { due_ms }),
            any::<i64>().prop_map(|due_ms| Hold::Delayed { due_ms }),
        ]
    }

    fn arb_op() -> impl Strategy<Value = QueueOp> {
        let name = "[a-c]";
        prop_oneof![
            (name, 1u8..=3, 0u32..3)
                .prop_map(|(n, levels, partitions)| create(&n, levels, partitions)),
            (
                name,
                0u32..3,
                0u8..3,
                0u64..50,
                prop::collection::vec((0u64..50, arb_hold()), 0..5)
            )
                .prop_map(|(n, partition, level, cursor_to, taken)| QueueOp::Take {
                    name: n,
                    partition,
                    level,
                    cursor_to,
                    at_ms: 5,
                    taken: taken
                        .into_iter()
                        .map(|(offset, hold)| Taken { offset, hold })
                        .collect(),
                }),
            (name, 0u32..3, 0u64..50, "[a-z]{0,8}").prop_map(|(n, partition, offset, member)| {
                QueueOp::Lease {
                    name: n,
                    partition,
                    offset,
                    member,
                    deadline_ms: 9,
                    at_ms: 7,
                }
            }),
            (
                name,
                0u32..3,
                prop::collection::vec((0u64..50, 0u64..50), 0..4)
            )
                .prop_map(|(n, partition, ranges)| QueueOp::Ack {
                    name: n,
                    partition,
                    ranges
                }),
            (name, 0u32..3, 0u64..50, any::<i64>(), "[a-z ]{0,12}").prop_map(
                |(n, partition, offset, due_ms, reason)| QueueOp::Nack {
                    name: n,
                    partition,
                    offset,
                    due_ms,
                    reason
                }
            ),
            (name, 0u32..3, 0u64..50).prop_map(|(n, partition, offset)| QueueOp::DeadLetter {
                name: n,
                partition,
                offset,
                reason: "max deliveries".into()
            }),
            (name, prop::collection::vec((0u32..3, 0u64..60), 0..3))
                .prop_map(|(n, ends)| QueueOp::Purge { name: n, ends }),
            name.prop_map(|n| QueueOp::Delete { name: n }),
        ]
    }

    proptest! {
        #[test]
        fn operations_round_trip(op in arb_op()) {
            prop_assert_eq!(round_trip(&op), op);
        }

        /// A snapshot rebuilds exactly the state it was taken of, whatever led there.
        #[test]
        fn a_snapshot_rebuilds_the_state(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut state = Queues::default();
            for op in ops {
                state.apply(op);
            }
            let pending: u64 = state
                .iter()
                .flat_map(|q| q.partitions.values())
                .map(|p| p.pending.len() as u64)
                .sum();
            prop_assert_eq!(state.pending_total(), pending);
            let mut image = Vec::new();
            let mut sink = |record: &[u8]| {
                image.extend_from_slice(record);
                Ok(())
            };
            let mut writer = SnapshotWriter::new(0, &mut sink);
            state.snapshot(&mut writer).unwrap();
            writer.finish().unwrap();
            let mut rebuilt = Queues::default();
            let scan = crate::statelog::scan_image::<QueueOp>(&image, |_, record| {
                for op in record.ops {
                    rebuilt.apply(op);
                }
            });
            prop_assert!(scan.is_openable());
            prop_assert_eq!(rebuilt, state);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut reader = OpReader::new(&bytes);
            let _ = QueueOp::decode(&mut reader);
        }
    }
}
