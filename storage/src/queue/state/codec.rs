//! The bytes of [`QueueOp`]: each operation is one state-log operation (see
//! [`crate::statelog`]).
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
//! | 12 | create (v2) | as 1, with config v2 | as 1 |
//! | 13 | alter (v2) | as 2, with config v2 | as 2 |
//! | 14 | create with a filter | the fields of 12, then `filter` str16 | as 12, for a queue whose config has a filter (12 has none) |
//! | 15 | create on a pattern | `name` str16, `pattern` str16, config v2, `filter` str16 (empty = none), start, `created_ms` i64, `next_child` u32 | a queue on a topic pattern; its per-topic queues are created by kind 12 or 14 (named `__pq.<name>.<n>`, each raising `next_child` past its `n`; one for a topic that already has one is a no-op) |
//! | 16 | release | `name`, `partition` u32, `offset` u64, `attempt` u32, `due_ms` i64 | a message leased at exactly `attempt` is given back unseen: `attempts - 1` (and, back at 0, its delivery times cleared), it waits until `due_ms`; else a no-op |
//! | 17 | take (counted) | the fields of 4, then `from` u64, `n` u8 (at most 10), `n` x `delta` i64 | as 4; first, if the level's cursor is at `from`, each level's *ahead* count (see below) changes by its `delta` (saturating at 0) |
//! | 18 | ahead | `name`, `partition` u32, `n` u8 (at most 10), `n` x `ahead` u64 | the partition's *ahead* counts are these (snapshots only) |
//!
//! Kind 16 is new with the release of unseen deliveries: this build reads every
//! kind older builds wrote, and writes 16 only as a live record (a snapshot holds a
//! released message as the `restore` of its pending state, never a 16). A build
//! before it reads a live 16 as corruption (unknown kind), like 12 to 15 before it.
//!
//! Kinds 17 and 18 are new with the exact ready count of queues with several priority
//! levels. Per partition and level the state keeps *ahead*: how many of the level's
//! messages between the slowest level's cursor and its own cursor are taken (they are
//! not ready, yet lie past the slowest cursor). The engine's scan of a level reads every
//! message it passes and knows each one's level, so its take (17) carries the changes:
//! the taking level gains its own messages passed (taken, delayed, skipped by the
//! filter); if the taking level was the slowest, every level loses its messages below
//! the new slowest cursor. Where retention deleted the log past the slowest cursor, the
//! engine moves the levels it passed to the log's start with takes (17) taking nothing,
//! the first of them carrying the changes that make each count what its level took
//! from the log's start (counted again over the log). After every take (4 or 17), purge
//! (10) or ahead (18), each count is cut to its cursor's lead on the slowest cursor (so
//! the slowest level's is 0).
//! A take of 4 (a single-level queue, or a build before the counts) changes no count, so
//! state written before them reads as it did then (counts 0: the pending messages past
//! the slowest cursor are then all it subtracts). A snapshot writes an 18 after the
//! queue's create for each partition with a count above 0. A build before them reads 17
//! and 18 as corruption (unknown kind), like 16 before it.
//!
//! **config**: `ack_deadline_ms` u64, `max_deliveries` u32 (0 = unlimited),
//! `backoff_initial_ms` u64, `backoff_max_ms` u64, `dead_letter_topic` str16,
//! `max_unacked_per_member` u32.
//! **config v2**: config, then `history_attempts` u32, `history_retention_ms` u64.
//! Kinds 1 and 2 (config without the history fields, read with the defaults: 10
//! attempts, 7 days) are what builds before the delivery history wrote; this build
//! writes 12 (or 14) and 13 and reads all five. The config's `filter` is in none of
//! them: it is fixed when the queue is created (kind 14) and an alter keeps it.
//! **hold**: a tag u8 then: 1 = leased (`member` str16, `deadline_ms` i64); 2 =
//! waiting (`due_ms` i64); 3 = delayed (`due_ms` i64).
//! **start**: a tag u8 then: 1 = earliest; 2 = latest; 3 = a time (`timestamp_ms` i64).
//! A delete (3) or alter (2, 13) naming a queue on a pattern deletes or alters it (an
//! alter keeps its filter); its per-topic queues get their own operations.
//! **pending**: `level` u8, `attempts` u32, hold, `first_delivery_ms` i64,
//! `last_delivery_ms` i64, `reason` str16.
//!
//! An operation about a queue, partition or offset that does not exist (any more) is
//! a no-op: the engine checks before it appends, and a queue deleted in between makes
//! the rest moot. Operations on a partition the queue has not seen yet (the topic grew)
//! create it with every cursor at the taken offset's partition start, 0.

use super::config::{
    HISTORY_ATTEMPTS_DEFAULT, HISTORY_RETENTION_MS_DEFAULT, MEMBER_BYTES_MAX, QueueConfig,
    REASON_BYTES_MAX, StartAt,
};
use super::model::{PatternQueue, QueueOp, TakeCounts, Taken};
use super::pending::{Hold, Pending};
use crate::error::{Error, Result};
use crate::limits::{
    FILTER_BYTES_MAX, PRIORITY_LEVELS_MAX, TOPIC_NAME_BYTES_MAX, TOPIC_PATTERN_BYTES_MAX,
};
use crate::statelog::{DecodeError, LogOp, OpReader, put_str16};

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
const KIND_CREATE_V2: u8 = 12;
const KIND_ALTER_V2: u8 = 13;
const KIND_CREATE_FILTERED: u8 = 14;
const KIND_CREATE_PATTERN: u8 = 15;
const KIND_RELEASE: u8 = 16;
const KIND_TAKE_COUNTED: u8 = 17;
const KIND_AHEAD: u8 = 18;

const START_EARLIEST: u8 = 1;
const START_LATEST: u8 = 2;
const START_TIMESTAMP: u8 = 3;

const HOLD_LEASED: u8 = 1;
const HOLD_WAITING: u8 = 2;
const HOLD_DELAYED: u8 = 3;

fn put_config(out: &mut Vec<u8>, config: &QueueConfig) {
    out.extend_from_slice(&config.ack_deadline_ms.to_le_bytes());
    out.extend_from_slice(&config.max_deliveries.to_le_bytes());
    out.extend_from_slice(&config.backoff_initial_ms.to_le_bytes());
    out.extend_from_slice(&config.backoff_max_ms.to_le_bytes());
    put_str16(out, &config.dead_letter_topic);
    out.extend_from_slice(&config.max_unacked_per_member.to_le_bytes());
    out.extend_from_slice(&config.history_attempts.to_le_bytes());
    out.extend_from_slice(&config.history_retention_ms.to_le_bytes());
}

/// A config of kinds 1 and 2 (`v2` false: no history fields) or 12 and 13.
fn read_config(r: &mut OpReader<'_>, v2: bool) -> Result<QueueConfig, DecodeError> {
    let mut config = QueueConfig {
        ack_deadline_ms: r.u64("ack_deadline_ms")?,
        max_deliveries: r.u32("max_deliveries")?,
        backoff_initial_ms: r.u64("backoff_initial_ms")?,
        backoff_max_ms: r.u64("backoff_max_ms")?,
        dead_letter_topic: r.str16("dead_letter_topic", 1, TOPIC_NAME_BYTES_MAX)?,
        max_unacked_per_member: r.u32("max_unacked_per_member")?,
        history_attempts: HISTORY_ATTEMPTS_DEFAULT,
        history_retention_ms: HISTORY_RETENTION_MS_DEFAULT,
        filter: None,
    };
    if v2 {
        config.history_attempts = r.u32("history_attempts")?;
        config.history_retention_ms = r.u64("history_retention_ms")?;
    }
    Ok(config)
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
            member: r.str16("member", 0, MEMBER_BYTES_MAX)?.into(),
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

/// A count of per-level values (0 to [`PRIORITY_LEVELS_MAX`]).
fn read_count_of_levels(r: &mut OpReader<'_>) -> Result<u8, DecodeError> {
    let levels = r.u8("level count")?;
    if levels > PRIORITY_LEVELS_MAX {
        return Err(r.malformed(format!(
            "{levels} per-level counts, over {PRIORITY_LEVELS_MAX}"
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
        QueueOp::CreatePattern(queue) => {
            name_ok(&queue.name)?;
            if queue.pattern.is_empty() {
                return Err(Error::invalid("a queue's topic pattern is empty"));
            }
            short("topic pattern", &queue.pattern, TOPIC_PATTERN_BYTES_MAX)?;
            queue.config.validate()
        }
        QueueOp::Delete { name } | QueueOp::Purge { name, .. } | QueueOp::Ack { name, .. } => {
            name_ok(name)
        }
        QueueOp::Take {
            name,
            level,
            taken,
            counts,
            ..
        } => {
            name_ok(name)?;
            if *level >= PRIORITY_LEVELS_MAX {
                return Err(Error::invalid(format!("level {level} is out of range")));
            }
            if counts
                .as_ref()
                .is_some_and(|c| c.ahead.len() > usize::from(PRIORITY_LEVELS_MAX))
            {
                return Err(Error::invalid("a take counts more levels than a queue has"));
            }
            taken.iter().try_for_each(|t| hold_ok(&t.hold))
        }
        QueueOp::Ahead { name, ahead, .. } => {
            name_ok(name)?;
            if ahead.len() > usize::from(PRIORITY_LEVELS_MAX) {
                return Err(Error::invalid(
                    "ahead counts for more levels than a queue has",
                ));
            }
            Ok(())
        }
        QueueOp::Lease { name, member, .. } => {
            name_ok(name)?;
            short("member", member, MEMBER_BYTES_MAX)
        }
        QueueOp::Nack { name, reason, .. } | QueueOp::DeadLetter { name, reason, .. } => {
            name_ok(name)?;
            short("reason", reason, REASON_BYTES_MAX)
        }
        QueueOp::Extend { name, .. } | QueueOp::Release { name, .. } => name_ok(name),
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
                    None => KIND_CREATE_V2,
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
                out.push(KIND_ALTER_V2);
                put_str16(out, name);
                put_config(out, config);
            }
            QueueOp::Delete { name } => {
                out.push(KIND_DELETE);
                put_str16(out, name);
            }
            QueueOp::CreatePattern(queue) => {
                out.push(KIND_CREATE_PATTERN);
                put_str16(out, &queue.name);
                put_str16(out, &queue.pattern);
                put_config(out, &queue.config);
                put_str16(out, queue.config.filter.as_deref().unwrap_or(""));
                match queue.start {
                    StartAt::Earliest => out.push(START_EARLIEST),
                    StartAt::Latest => out.push(START_LATEST),
                    StartAt::TimestampMs(ms) => {
                        out.push(START_TIMESTAMP);
                        put_i64(out, ms);
                    }
                }
                put_i64(out, queue.created_ms);
                put_u32(out, queue.next_child);
            }
            QueueOp::Take {
                name,
                partition,
                level,
                cursor_to,
                at_ms,
                taken,
                counts,
            } => {
                out.push(match counts {
                    None => KIND_TAKE,
                    Some(_) => KIND_TAKE_COUNTED,
                });
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
                if let Some(counts) = counts {
                    put_u64(out, counts.from);
                    out.push(counts.ahead.len() as u8);
                    for delta in &counts.ahead {
                        put_i64(out, *delta);
                    }
                }
            }
            QueueOp::Ahead {
                name,
                partition,
                ahead,
            } => {
                out.push(KIND_AHEAD);
                put_str16(out, name);
                put_u32(out, *partition);
                out.push(ahead.len() as u8);
                for count in ahead {
                    put_u64(out, *count);
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
            QueueOp::Release {
                name,
                partition,
                offset,
                attempt,
                due_ms,
            } => {
                out.push(KIND_RELEASE);
                put_str16(out, name);
                put_u32(out, *partition);
                put_u64(out, *offset);
                put_u32(out, *attempt);
                put_i64(out, *due_ms);
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
            KIND_CREATE | KIND_CREATE_V2 | KIND_CREATE_FILTERED => {
                let name = read_name(r)?;
                let topic = r.str16("topic", 1, TOPIC_NAME_BYTES_MAX)?;
                let mut config = read_config(r, kind != KIND_CREATE)?;
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
            KIND_ALTER | KIND_ALTER_V2 => QueueOp::Alter {
                name: read_name(r)?,
                config: read_config(r, kind == KIND_ALTER_V2)?,
            },
            KIND_DELETE => QueueOp::Delete {
                name: read_name(r)?,
            },
            KIND_CREATE_PATTERN => {
                let name = read_name(r)?;
                let pattern = r.str16("topic pattern", 1, TOPIC_PATTERN_BYTES_MAX)?;
                let mut config = read_config(r, true)?;
                let filter = r.str16("filter", 0, FILTER_BYTES_MAX)?;
                config.filter = (!filter.is_empty()).then_some(filter);
                let start = match r.u8("start")? {
                    START_EARLIEST => StartAt::Earliest,
                    START_LATEST => StartAt::Latest,
                    START_TIMESTAMP => StartAt::TimestampMs(r.i64("timestamp_ms")?),
                    other => return Err(r.malformed(format!("unknown start {other}"))),
                };
                QueueOp::CreatePattern(PatternQueue {
                    name,
                    pattern,
                    config,
                    start,
                    created_ms: r.i64("created_ms")?,
                    next_child: r.u32("next_child")?,
                })
            }
            KIND_TAKE | KIND_TAKE_COUNTED => {
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
                let counts = if kind == KIND_TAKE_COUNTED {
                    let from = r.u64("from")?;
                    let levels = read_count_of_levels(r)?;
                    let mut ahead = Vec::with_capacity(usize::from(levels));
                    for _ in 0..levels {
                        ahead.push(r.i64("ahead delta")?);
                    }
                    Some(TakeCounts { from, ahead })
                } else {
                    None
                };
                QueueOp::Take {
                    name,
                    partition,
                    level,
                    cursor_to,
                    at_ms,
                    taken,
                    counts,
                }
            }
            KIND_AHEAD => {
                let name = read_name(r)?;
                let partition = r.u32("partition")?;
                let levels = read_count_of_levels(r)?;
                let mut ahead = Vec::with_capacity(usize::from(levels));
                for _ in 0..levels {
                    ahead.push(r.u64("ahead")?);
                }
                QueueOp::Ahead {
                    name,
                    partition,
                    ahead,
                }
            }
            KIND_LEASE => QueueOp::Lease {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                member: r.str16("member", 0, MEMBER_BYTES_MAX)?.into(),
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
            KIND_RELEASE => QueueOp::Release {
                name: read_name(r)?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                attempt: r.u32("attempt")?,
                due_ms: r.i64("due_ms")?,
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

#[cfg(test)]
mod tests {
    use super::super::strategies::{arb_op, round_trip};
    use super::*;
    use proptest::prelude::*;

    /// A create and an alter written before the history fields existed (kinds 1 and 2)
    /// read back with the history defaults.
    #[test]
    fn configs_of_kinds_1_and_2_read_with_the_history_defaults() {
        let config = QueueConfig::defaults_for("jobs");
        let mut old = vec![KIND_ALTER];
        put_str16(&mut old, "q");
        let mut body = Vec::new();
        put_config(&mut body, &config);
        // The old layout is the new one without its last 12 bytes.
        old.extend_from_slice(&body[..body.len() - 12]);
        let mut reader = OpReader::new(&old);
        let op = QueueOp::decode(&mut reader).unwrap();
        assert_eq!(reader.remaining(), 0);
        assert_eq!(
            op,
            QueueOp::Alter {
                name: "q".into(),
                config,
            }
        );
    }

    /// The ops of the fuzz target's seed: a pattern queue, a queue of one of its
    /// topics, a delivery in it, and a release of one of its leases (kind 16).
    fn seed_ops() -> Vec<QueueOp> {
        use super::super::strategies::{create, create_pattern, leased};
        vec![
            create_pattern("all-orders", StartAt::TimestampMs(1_700_000_000_000), 1),
            create("__pq.all-orders.0", 2, 2),
            QueueOp::Take {
                name: "__pq.all-orders.0".into(),
                partition: 1,
                level: 1,
                cursor_to: 9,
                at_ms: 5,
                taken: vec![leased(3, "member-1"), leased(8, "member-1")],
                counts: None,
            },
            QueueOp::Release {
                name: "__pq.all-orders.0".into(),
                partition: 1,
                offset: 8,
                attempt: 1,
                due_ms: 6,
            },
        ]
    }

    /// The fuzz target's seed (fuzz/corpus/queue_state/pattern) is the ops above back
    /// to back, so the fuzzer starts from the accepting paths of kinds 15 and 16.
    #[test]
    fn the_fuzz_seed_decodes() {
        check_seed("pattern", &seed_ops());
    }

    /// The fuzz seed fuzz/corpus/queue_state/`name` is `ops` encoded back to back, and
    /// decodes to them (`TIDELOG_WRITE_SEEDS=1` writes it anew). Returns its bytes.
    fn check_seed(name: &str, ops: &[QueueOp]) -> Vec<u8> {
        let mut expected = Vec::new();
        for op in ops {
            op.encode(&mut expected).unwrap();
        }
        let path = format!(
            "{}/../fuzz/corpus/queue_state/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        if std::env::var_os("TIDELOG_WRITE_SEEDS").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let seed = std::fs::read(&path).unwrap();
        assert_eq!(seed, expected);
        let mut reader = OpReader::new(&seed);
        for op in ops {
            assert_eq!(&QueueOp::decode(&mut reader).unwrap(), op);
        }
        assert_eq!(reader.remaining(), 0);
        seed
    }

    /// The ops of the second fuzz seed: a queue with two levels, a counted take
    /// (kind 17) and a partition's ahead counts (kind 18).
    fn counts_seed_ops() -> Vec<QueueOp> {
        use super::super::strategies::{create, leased};
        vec![
            create("urgent", 2, 1),
            QueueOp::Take {
                name: "urgent".into(),
                partition: 0,
                level: 1,
                cursor_to: 6,
                at_ms: 5,
                taken: vec![leased(5, "member-1")],
                counts: Some(TakeCounts {
                    from: 0,
                    ahead: vec![0, 1],
                }),
            },
            QueueOp::Ahead {
                name: "urgent".into(),
                partition: 0,
                ahead: vec![0, 1],
            },
        ]
    }

    /// The fuzz target's seed fuzz/corpus/queue_state/counts is the ops above back to
    /// back, so the fuzzer starts from the accepting paths of kinds 17 and 18.
    #[test]
    fn the_counts_fuzz_seed_decodes() {
        let seed = check_seed("counts", &counts_seed_ops());
        assert_eq!(seed[0], KIND_CREATE_V2);
    }

    /// A take written before the counts existed (kind 4) reads with none, and a
    /// counted take of more levels than any queue has is refused.
    #[test]
    fn takes_without_counts_read_as_before_and_counts_are_bounded() {
        let take = QueueOp::Take {
            name: "q".into(),
            partition: 0,
            level: 0,
            cursor_to: 3,
            at_ms: 1,
            taken: Vec::new(),
            counts: None,
        };
        let mut bytes = Vec::new();
        take.encode(&mut bytes).unwrap();
        assert_eq!(bytes[0], KIND_TAKE);
        assert_eq!(round_trip(&take), take);
        let mut counted = Vec::new();
        QueueOp::Take {
            name: "q".into(),
            partition: 0,
            level: 0,
            cursor_to: 3,
            at_ms: 1,
            taken: Vec::new(),
            counts: Some(TakeCounts {
                from: 0,
                ahead: vec![1; 10],
            }),
        }
        .encode(&mut counted)
        .unwrap();
        assert_eq!(counted[0], KIND_TAKE_COUNTED);
        // The level count is the byte after `from`, 9 bytes before the 10 deltas.
        let at = counted.len() - 10 * 8 - 1;
        assert_eq!(counted[at], 10);
        counted[at] = 11;
        assert!(QueueOp::decode(&mut OpReader::new(&counted)).is_err());
        let too_many = QueueOp::Ahead {
            name: "q".into(),
            partition: 0,
            ahead: vec![0; 11],
        };
        assert!(too_many.encode(&mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn operations_round_trip(op in arb_op()) {
            prop_assert_eq!(round_trip(&op), op);
        }

        /// A snapshot rebuilds exactly the state it was taken of, whatever led there.

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut reader = OpReader::new(&bytes);
            let _ = QueueOp::decode(&mut reader);
        }
    }
}
