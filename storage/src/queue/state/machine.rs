//! [`Queues`]: the state machine of every queue of the broker: applies each
//! [`QueueOp`] and writes the snapshot that rebuilds it.

use std::collections::BTreeMap;

use super::config::{QueueConfig, pattern_child_parent};
use super::model::{PatternQueue, Queue, QueueOp, QueuePartition};
use super::pending::{Hold, Pending};
use crate::error::Result;
use crate::statelog::{SnapshotWriter, StateMachine};

/// Every queue of the broker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queues {
    queues: BTreeMap<String, Queue>,
    /// Queues on a topic pattern (their per-topic queues are in `queues`).
    patterns: BTreeMap<String, PatternQueue>,
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

    /// Every queue, by name (the per-topic queues of pattern queues included).
    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    /// The queue on a topic pattern named `name`.
    pub fn pattern(&self, name: &str) -> Option<&PatternQueue> {
        self.patterns.get(name)
    }

    /// Every queue on a topic pattern, by name.
    pub fn patterns(&self) -> impl Iterator<Item = &PatternQueue> {
        self.patterns.values()
    }

    /// The per-topic queues of pattern queue `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Queue> + 'a {
        self.queues.values().filter(move |q| {
            pattern_child_parent(&q.name).is_some_and(|(parent, _)| parent == name)
        })
    }

    /// Whether a queue or a pattern queue is named `name`.
    pub fn exists(&self, name: &str) -> bool {
        self.queues.contains_key(name) || self.patterns.contains_key(name)
    }

    /// Pending messages over every queue.
    pub fn pending_total(&self) -> u64 {
        self.pending_total
    }

    /// Inserts or replaces a pending entry, keeping the total right.
    fn put_pending(total: &mut u64, partition: &mut QueuePartition, offset: u64, pending: Pending) {
        if partition.pending.insert(offset, pending) {
            *total += 1;
        }
    }

    fn remove_pending(total: &mut u64, partition: &mut QueuePartition, offset: u64) -> bool {
        let removed = partition.pending.remove(offset);
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
                if self.exists(&name) {
                    return 0;
                }
                if let Some((parent, n)) = pattern_child_parent(&name) {
                    // Only for a pattern queue that exists (a sync racing the pattern
                    // queue's deletion makes nothing), and one queue per topic (of two
                    // racing syncs that both took a topic, the second's is not made).
                    if !self.patterns.contains_key(parent)
                        || self.children(parent).any(|c| c.topic == topic)
                    {
                        return 0;
                    }
                    if let Some(parent) = self.patterns.get_mut(parent) {
                        parent.next_child = parent.next_child.max(n.saturating_add(1));
                    }
                }
                let partitions = cursors
                    .into_iter()
                    .map(|(partition, cursors)| (partition, QueuePartition::at(cursors)))
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
            QueueOp::CreatePattern(queue) => {
                if self.exists(&queue.name) {
                    return 0;
                }
                self.patterns.insert(queue.name.clone(), queue);
                1
            }
            QueueOp::Alter { name, config } => {
                // The filter is fixed at creation (an Alter does not carry it).
                let target = match self.queues.get_mut(&name) {
                    Some(queue) => &mut queue.config,
                    None => match self.patterns.get_mut(&name) {
                        Some(pattern) => &mut pattern.config,
                        None => return 0,
                    },
                };
                let filter = target.filter.take();
                *target = QueueConfig { filter, ..config };
                1
            }
            QueueOp::Delete { name } if self.patterns.contains_key(&name) => {
                // Its per-topic queues go with it (the broker deletes them first in
                // the same append, which leaves none here).
                self.patterns.remove(&name);
                let children: Vec<String> = self.children(&name).map(|c| c.name.clone()).collect();
                for child in children {
                    if let Some(queue) = self.queues.remove(&child) {
                        self.pending_total -= queue
                            .partitions
                            .values()
                            .map(|p| p.pending.len() as u64)
                            .sum::<u64>();
                    }
                }
                1
            }
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
                counts,
            } => {
                let Some(queue) = self.queues.get_mut(&name) else {
                    return 0;
                };
                if level >= queue.levels {
                    return 0;
                }
                let part = queue.partition(partition);
                part.take(level, cursor_to, counts.as_ref());
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
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                let leased = part.pending.update(offset, |pending| {
                    pending.attempts = pending.attempts.saturating_add(1);
                    pending.hold = Hold::Leased {
                        member,
                        deadline_ms,
                    };
                    if pending.first_delivery_ms == 0 {
                        pending.first_delivery_ms = at_ms;
                    }
                    pending.last_delivery_ms = at_ms;
                });
                u64::from(leased.is_some())
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
                    settled += part.pending.remove_range(first..=last);
                }
                *total -= settled;
                settled
            }
            QueueOp::Nack {
                name,
                partition,
                offset,
                due_ms,
                reason,
            } => {
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                let nacked = part.pending.update(offset, |pending| {
                    pending.hold = Hold::Waiting { due_ms };
                    pending.reason = reason;
                });
                u64::from(nacked.is_some())
            }
            QueueOp::Extend {
                name,
                partition,
                offset,
                deadline_ms,
            } => {
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                part.pending
                    .update(offset, |pending| match &mut pending.hold {
                        Hold::Leased {
                            deadline_ms: current,
                            ..
                        } => {
                            *current = deadline_ms;
                            1
                        }
                        _ => 0,
                    })
                    .unwrap_or(0)
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
                // Messages settled: the pending ones below the end, and those not taken
                // yet (from the slowest cursor to the end, less those faster levels
                // took: QueuePartition::untaken).
                let mut purged = 0;
                for (partition, end) in ends {
                    let part = queue.partition(partition);
                    let untaken = if part.slowest() < end {
                        part.untaken(0, end).1
                    } else {
                        0
                    };
                    for cursor in &mut part.cursors {
                        *cursor = (*cursor).max(end);
                    }
                    part.normalize_ahead();
                    let below = part.pending.remove_range(..end);
                    *total -= below;
                    purged += below + untaken;
                }
                purged
            }
            QueueOp::Release {
                name,
                partition,
                offset,
                attempt,
                due_ms,
            } => {
                let Some(part) = self
                    .queues
                    .get_mut(&name)
                    .and_then(|q| q.partitions.get_mut(&partition))
                else {
                    return 0;
                };
                part.pending
                    .update(offset, |pending| {
                        if !matches!(pending.hold, Hold::Leased { .. })
                            || pending.attempts != attempt
                        {
                            return 0;
                        }
                        pending.attempts = attempt.saturating_sub(1);
                        pending.hold = Hold::Waiting { due_ms };
                        if pending.attempts == 0 {
                            pending.first_delivery_ms = 0;
                            pending.last_delivery_ms = 0;
                        }
                        1
                    })
                    .unwrap_or(0)
            }
            QueueOp::Ahead {
                name,
                partition,
                ahead,
            } => {
                let Some(queue) = self.queues.get_mut(&name) else {
                    return 0;
                };
                let part = queue.partition(partition);
                part.ahead = ahead;
                part.normalize_ahead();
                1
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
        for pattern in self.patterns.values() {
            out.push(&QueueOp::CreatePattern(pattern.clone()))?;
        }
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
                if part.ahead.iter().any(|&a| a > 0) {
                    out.push(&QueueOp::Ahead {
                        name: queue.name.clone(),
                        partition: *partition,
                        ahead: part.ahead.clone(),
                    })?;
                }
                for (offset, pending) in part.pending.iter() {
                    out.push(&QueueOp::Restore {
                        name: queue.name.clone(),
                        partition: *partition,
                        offset,
                        pending: pending.into_owned(),
                    })?;
                }
            }
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        (self.queues.len() + self.patterns.len()) as u64 * SNAPSHOT_QUEUE_BYTES
            + self.pending_total * SNAPSHOT_PENDING_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::StartAt;
    use super::super::strategies::{arb_op, create, create_pattern, leased};
    use super::*;
    use crate::statelog::StateMachine;
    use proptest::prelude::*;

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
            counts: None,
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
        let pending = state.get("q").unwrap().partitions[&1]
            .pending
            .get(2)
            .unwrap()
            .into_owned();
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

    /// A release takes back exactly the attempt it names: the message waits with the
    /// count it had before that delivery, and a stale or repeated release is a no-op.
    #[test]
    fn a_release_takes_back_the_attempt_it_names() {
        let mut state = Queues::default();
        state.apply(create("q", 1, 1));
        state.apply(QueueOp::Take {
            name: "q".into(),
            partition: 0,
            level: 0,
            cursor_to: 2,
            at_ms: 10,
            taken: vec![leased(0, "m1"), leased(1, "m1")],
            counts: None,
        });
        let release = |offset, attempt| QueueOp::Release {
            name: "q".into(),
            partition: 0,
            offset,
            attempt,
            due_ms: 20,
        };
        let pending = |state: &Queues, offset| {
            state.get("q").unwrap().partitions[&0]
                .pending
                .get(offset)
                .unwrap()
                .into_owned()
        };
        assert_eq!(state.apply(release(0, 2)), 0, "not attempt 2");
        assert_eq!(state.apply(release(0, 1)), 1);
        assert_eq!(
            pending(&state, 0),
            Pending {
                level: 0,
                attempts: 0,
                hold: Hold::Waiting { due_ms: 20 },
                first_delivery_ms: 0,
                last_delivery_ms: 0,
                reason: String::new(),
            },
            "as if never delivered"
        );
        assert_eq!(state.apply(release(0, 1)), 0, "not leased any more");
        // A second attempt released keeps the first's story.
        state.apply(QueueOp::Lease {
            name: "q".into(),
            partition: 0,
            offset: 1,
            member: "m2".into(),
            deadline_ms: 99,
            at_ms: 30,
        });
        assert_eq!(state.apply(release(1, 2)), 1);
        let second = pending(&state, 1);
        assert_eq!(
            (second.attempts, second.first_delivery_ms, second.hold),
            (1, 10, Hold::Waiting { due_ms: 20 })
        );
        assert_eq!(state.pending_total(), 2);
        assert_eq!(state.get("q").unwrap().pending_counts(), (0, 2, 0));
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
    fn pattern_queues_share_the_name_space_and_number_their_topics_queues() {
        let mut state = Queues::default();
        assert_eq!(state.apply(create_pattern("orders", StartAt::Latest, 0)), 1);
        assert_eq!(state.apply(create("orders", 1, 1)), 0, "the name is taken");
        assert_eq!(
            state.apply(create_pattern("orders", StartAt::Earliest, 0)),
            0
        );
        state.apply(create("__pq.orders.4", 1, 2));
        assert_eq!(
            state.apply(create("__pq.orders.5", 1, 2)),
            0,
            "a second queue on the same topic is not made"
        );
        // A queue of another pattern queue whose name extends this one's.
        state.apply(create_pattern("orders.eu", StartAt::Latest, 0));
        assert_eq!(state.apply(create("__pq.orders.eu.7", 1, 1)), 1);
        let pattern = state.pattern("orders").unwrap();
        assert_eq!(pattern.next_child, 5, "past the highest number used");
        assert_eq!(
            state
                .children("orders")
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>(),
            vec!["__pq.orders.4"]
        );
        let mut altered = pattern.config.clone();
        altered.ack_deadline_ms = 999;
        altered.filter = None;
        assert_eq!(
            state.apply(QueueOp::Alter {
                name: "orders".into(),
                config: altered,
            }),
            1
        );
        assert_eq!(state.pattern("orders").unwrap().config.ack_deadline_ms, 999);
        assert_eq!(
            state.apply(QueueOp::Delete {
                name: "orders".into()
            }),
            1
        );
        assert!(state.pattern("orders").is_none());
        assert!(
            state.get("__pq.orders.4").is_none(),
            "its per-topic queues go with it"
        );
        assert_eq!(
            state.apply(create("__pq.orders.6", 1, 1)),
            0,
            "no per-topic queue without its pattern queue"
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
            counts: None,
        });
        // Offsets 0-9: the one held and the nine not taken by the slowest level.
        let purged = state.apply(QueueOp::Purge {
            name: "q".into(),
            ends: vec![(0, 10)],
        });
        assert_eq!(purged, 10);
        let part = &state.get("q").unwrap().partitions[&0];
        assert_eq!(part.cursors, vec![10, 10, 10]);
        assert_eq!(part.settled_below(), 10);
        assert_eq!(state.pending_total(), 0);
    }

    /// The counts of messages taken ahead of the slowest level: a counted take adds
    /// them, the slowest level's take passing them takes them off, a take whose scan
    /// started elsewhere (a purge came first) is not counted, and a purge to the end
    /// leaves none.
    #[test]
    fn taken_ahead_counts_follow_the_takes() {
        use super::super::model::TakeCounts;
        let take = |level: u8, from: u64, to: u64, ahead: Vec<i64>| QueueOp::Take {
            name: "q".into(),
            partition: 0,
            level,
            cursor_to: to,
            at_ms: 1,
            taken: Vec::new(),
            counts: Some(TakeCounts { from, ahead }),
        };
        let untaken =
            |state: &Queues, end: u64| state.get("q").unwrap().partitions[&0].untaken(0, end).1;
        let mut state = Queues::default();
        state.apply(create("q", 2, 1));
        // Offsets 0-4 level 0, 5 level 1: level 1 takes 5 (one of its own passed).
        state.apply(take(1, 0, 6, vec![0, 1]));
        assert_eq!(state.get("q").unwrap().partitions[&0].ahead, vec![0, 1]);
        assert_eq!(untaken(&state, 6), 5);
        // A stale take (its scan started at 3, the cursor is at 0): not counted.
        state.apply(take(0, 3, 4, vec![1, -1]));
        assert_eq!(state.get("q").unwrap().partitions[&0].ahead, vec![0, 1]);
        // Its cursor still moved (as a kind 4 take's does); level 1's count (offset 5)
        // is still within its lead.
        let part = &state.get("q").unwrap().partitions[&0];
        assert_eq!(part.cursors, vec![4, 6]);
        // Level 0 passes 4 and 5 (5 is level 1's): the slowest cursor reaches 6.
        state.apply(take(0, 4, 6, vec![0, -1]));
        let part = &state.get("q").unwrap().partitions[&0];
        assert_eq!(
            (part.ahead.clone(), part.cursors.clone()),
            (vec![0, 0], vec![6, 6])
        );
        assert_eq!(untaken(&state, 9), 3);
        // Level 1 runs ahead again, then a purge to the end settles everything.
        state.apply(take(1, 6, 9, vec![0, 2]));
        assert_eq!(untaken(&state, 9), 1);
        state.apply(QueueOp::Purge {
            name: "q".into(),
            ends: vec![(0, 9)],
        });
        assert_eq!(state.get("q").unwrap().partitions[&0].ahead, vec![0, 0]);
        assert_eq!(untaken(&state, 9), 0);
    }

    proptest! {
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

    }
}
