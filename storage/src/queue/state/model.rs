//! The queues' state as it is kept in memory, and the operations that change it.

use std::collections::BTreeMap;
use std::sync::Arc;

#[cfg(doc)]
use super::config::pattern_child_name;
use super::config::{QueueConfig, StartAt};
use super::pending::{Hold, Pending, PendingMap};

/// One partition of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePartition {
    /// Per level: every message of that level below it is taken.
    pub cursors: Vec<u64>,
    /// Per level: how many of that level's messages lie between the slowest cursor and
    /// its own, all taken ("taken ahead" of the slowest level: pending, or settled).
    /// So the messages not taken yet are `(end - slowest) - sum(ahead)` without reading
    /// the log ([`QueuePartition::untaken`]). Kept by the counts each
    /// [`QueueOp::Take`] carries ([`TakeCounts`]); 0 for the slowest level; never more
    /// than its cursor's lead ([`QueuePartition::normalize_ahead`]). All 0 in state
    /// written before the counts existed, which then counts as it did before.
    pub ahead: Vec<u64>,
    /// Taken and not settled, by offset.
    pub pending: PendingMap,
}

impl QueuePartition {
    /// A partition with every one of `levels` cursors at `start`, nothing taken.
    pub fn new(levels: u8, start: u64) -> Self {
        let levels = usize::from(levels.max(1));
        QueuePartition {
            cursors: vec![start; levels],
            ahead: vec![0; levels],
            pending: PendingMap::new(),
        }
    }

    /// A partition at `cursors`, nothing taken ahead and nothing pending.
    pub(super) fn at(cursors: Vec<u64>) -> Self {
        QueuePartition {
            ahead: vec![0; cursors.len()],
            cursors,
            pending: PendingMap::new(),
        }
    }

    /// The slowest level's cursor: every message below it is taken.
    pub fn slowest(&self) -> u64 {
        self.cursors.iter().copied().min().unwrap_or(0)
    }

    /// Keeps [`QueuePartition::ahead`] within what it can be: one count per level, none
    /// over its cursor's lead on the slowest (so the slowest level's is 0). Run after
    /// every change of the cursors or the counts: a count that drifted (a message that
    /// expired between a faster level's scan and the slowest's) is put right at the
    /// latest when the slowest level catches up. (Retention past the slowest cursor is
    /// followed by the engine's takes that move the passed levels to the log's start,
    /// their counts recounted over the log: `QueueEngine::follow_retention`.)
    pub(super) fn normalize_ahead(&mut self) {
        let slowest = self.slowest();
        self.ahead.resize(self.cursors.len(), 0);
        for (ahead, cursor) in self.ahead.iter_mut().zip(&self.cursors) {
            *ahead = (*ahead).min(cursor.saturating_sub(slowest));
        }
    }

    /// Applies the counts of a take by `level` whose scan started at `from` (see
    /// [`TakeCounts`]), if that is where the level's cursor is now (else the scan saw
    /// another state, e.g. a purge came first, and its counts are dropped; the cursor
    /// still moves and [`QueuePartition::normalize_ahead`] keeps the counts in
    /// bounds). Call before moving the cursor.
    pub(super) fn apply_counts(&mut self, level: u8, counts: &TakeCounts) {
        if self.cursors.get(usize::from(level)) != Some(&counts.from) {
            return;
        }
        self.ahead.resize(self.cursors.len(), 0);
        for (ahead, delta) in self.ahead.iter_mut().zip(&counts.ahead) {
            *ahead = ahead.saturating_add_signed(*delta);
        }
    }

    /// A take by `level` moves its cursor to `cursor_to` (never back), with the counts
    /// its scan carries ([`QueuePartition::apply_counts`]) and the counts kept in
    /// bounds after. The one rule of how a take moves a partition: the state machine
    /// applies [`QueueOp::Take`] with it, and the engine its view of the state.
    pub(crate) fn take(&mut self, level: u8, cursor_to: u64, counts: Option<&TakeCounts>) {
        if let Some(counts) = counts {
            self.apply_counts(level, counts);
        }
        if let Some(cursor) = self.cursors.get_mut(usize::from(level)) {
            *cursor = (*cursor).max(cursor_to);
        }
        self.normalize_ahead();
    }

    /// (where the span not taken yet starts, how many messages in it are not taken)
    /// on a log holding `start..end`: the span starts at the slowest cursor (or the
    /// log's start, if retention passed it) and holds every message from there to
    /// `end`, less those faster levels took ahead ([`QueuePartition::ahead`], each
    /// within its level's span still in the log; at least the pending ones there, as
    /// state written before the counts existed has none). The one rule of what is not
    /// taken yet, which DescribeQueue's ready count, the backpressure caps and a
    /// purge's count use.
    pub fn untaken(&self, start: u64, end: u64) -> (u64, u64) {
        let from = self.slowest().max(start).min(end);
        let ahead: u64 = self
            .ahead
            .iter()
            .zip(&self.cursors)
            .map(|(ahead, cursor)| (*ahead).min(cursor.min(&end).saturating_sub(from)))
            .sum();
        let pending = self.pending.range(from..end).count() as u64;
        (from, (end - from).saturating_sub(ahead.max(pending)))
    }

    /// The pending messages retention deleted, on a log that now starts at `start`:
    /// every one below it, whatever its hold (held by a member, waiting for a
    /// redelivery, delayed). They are gone: there is nothing left to deliver, dead-letter
    /// or settle. The one rule of what retention takes from a queue's pending messages:
    /// DescribeQueue's counts and the metrics leave them out
    /// (`admin::partition_counts`), the engine drops them as it follows the log's start
    /// (`QueueEngine::drop_deleted`), a purge does not count them, and their delivery
    /// status is `Deleted` (`inspect::queue_state`).
    pub fn deleted_pending(&self, start: u64) -> super::pending::Iter<'_> {
        self.pending.range(..start)
    }

    /// Every offset below it is settled.
    pub fn settled_below(&self) -> u64 {
        let cursors = self.cursors.iter().copied().min().unwrap_or(0);
        self.pending
            .first_offset()
            .map_or(cursors, |first| first.min(cursors))
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

    /// The queue's definition and cursors without its pending messages (cheap to
    /// copy out of the state).
    pub fn without_pending(&self) -> Queue {
        Queue {
            name: self.name.clone(),
            topic: self.topic.clone(),
            config: self.config.clone(),
            levels: self.levels,
            created_ms: self.created_ms,
            partitions: self
                .partitions
                .iter()
                .map(|(&id, part)| {
                    (
                        id,
                        QueuePartition {
                            cursors: part.cursors.clone(),
                            ahead: part.ahead.clone(),
                            pending: PendingMap::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// (leased, waiting, delayed) pending messages.
    pub fn pending_counts(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for (_, pending) in self.partitions.values().flat_map(|p| p.pending.iter()) {
            match pending.hold {
                Hold::Leased { .. } => counts.0 += 1,
                Hold::Waiting { .. } => counts.1 += 1,
                Hold::Delayed { .. } => counts.2 += 1,
            }
        }
        counts
    }

    pub(super) fn partition(&mut self, partition: u32) -> &mut QueuePartition {
        let levels = self.levels;
        self.partitions
            .entry(partition)
            .or_insert_with(|| QueuePartition::new(levels, 0))
    }
}

/// A queue on a topic pattern. It holds no messages itself: each topic its pattern
/// matches gets an ordinary queue of its own (named by [`pattern_child_name`]) with
/// the pattern queue's config, and members of the pattern queue are served by all of
/// them. So every per-message rule, record and file of a queue holds unchanged per
/// topic; this definition adds only which topics belong and where new ones start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternQueue {
    pub name: String,
    /// The topic pattern (see [`crate::pattern`]), as the client wrote it.
    pub pattern: String,
    /// The config every per-topic queue gets (its filter included).
    pub config: QueueConfig,
    /// Where the topics matched at creation start (see [`StartAt::for_later_topic`]
    /// for the later ones).
    pub start: StartAt,
    pub created_ms: i64,
    /// The number the next per-topic queue gets (never reused, so a topic deleted and
    /// created again gets a new queue, with a new history).
    pub next_child: u32,
}

/// A taken message: leased at once, or delayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub offset: u64,
    pub hold: Hold,
}

/// What a level's scan passed, carried by its [`QueueOp::Take`] so the state keeps
/// [`QueuePartition::ahead`] exact (a take without it leaves the counts as they
/// were, which is how state written before them reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeCounts {
    /// The level's cursor when its scan started: the counts apply only if it is still
    /// there.
    pub from: u64,
    /// Per level, the change of its count: the taking level gains its own messages it
    /// passed (taken, delayed, or skipped by the filter); when the taking level was
    /// the slowest, every level loses its messages below the new slowest cursor.
    pub ahead: Vec<i64>,
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
    /// Deletes a queue, or a queue on a topic pattern (its per-topic queues are
    /// deleted by their own operations, in the same append).
    Delete {
        name: String,
    },
    /// A queue on a topic pattern (its per-topic queues are `Create`d beside it).
    CreatePattern(PatternQueue),
    Take {
        name: String,
        partition: u32,
        level: u8,
        cursor_to: u64,
        at_ms: i64,
        taken: Vec<Taken>,
        /// None: a take of a single-level queue (nothing is ahead), or one written
        /// before the counts existed.
        counts: Option<TakeCounts>,
    },
    /// A partition's [`QueuePartition::ahead`] counts as they were (snapshots only).
    Ahead {
        name: String,
        partition: u32,
        ahead: Vec<u64>,
    },
    Lease {
        name: String,
        partition: u32,
        offset: u64,
        member: Arc<str>,
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
    /// A lease given back unseen: the delivery of attempt `attempt` could not be
    /// handed to its member (its Receive was cancelled, its stream's connection
    /// dropped). The attempt is taken back (`attempts - 1`, and the delivery times
    /// cleared if it was the first) and the message waits until `due_ms` (now: no
    /// backoff). A no-op unless the message is leased at exactly `attempt`.
    Release {
        name: String,
        partition: u32,
        offset: u64,
        attempt: u32,
        due_ms: i64,
    },
}
