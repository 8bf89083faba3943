//! Test helpers shared by the state's unit tests: sample operations and proptest
//! strategies.

use proptest::prelude::*;

use super::config::{QueueConfig, StartAt};
use super::model::{PatternQueue, QueueOp, TakeCounts, Taken};
use super::pending::Hold;
use crate::statelog::{LogOp, OpReader};

pub(super) fn config() -> QueueConfig {
    QueueConfig::defaults_for("jobs")
}

pub(super) fn create(name: &str, levels: u8, partitions: u32) -> QueueOp {
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

pub(super) fn create_pattern(name: &str, start: StartAt, next_child: u32) -> QueueOp {
    QueueOp::CreatePattern(PatternQueue {
        name: name.into(),
        pattern: r"jobs\..*".into(),
        config: QueueConfig {
            filter: (next_child % 2 == 1).then(|| "header.kind == \"a\"".into()),
            ..QueueConfig::defaults_for(name)
        },
        start,
        created_ms: 3,
        next_child,
    })
}

pub(super) fn leased(offset: u64, member: &str) -> Taken {
    Taken {
        offset,
        hold: Hold::Leased {
            member: member.into(),
            deadline_ms: 100,
        },
    }
}

pub(super) fn round_trip(op: &QueueOp) -> QueueOp {
    let mut bytes = Vec::new();
    op.encode(&mut bytes).unwrap();
    let mut reader = OpReader::new(&bytes);
    let decoded = QueueOp::decode(&mut reader).unwrap();
    assert_eq!(reader.remaining(), 0, "{op:?} left bytes behind");
    decoded
}

pub(super) fn arb_hold() -> impl Strategy<Value = Hold> {
    prop_oneof![
        ("[a-z0-9-]{0,20}", any::<i64>()).prop_map(|(member, deadline_ms)| Hold::Leased {
            member: member.into(),
            deadline_ms
        }),
        any::<i64>().prop_map(|due_ms| Hold::Waiting { due_ms }),
        any::<i64>().prop_map(|due_ms| Hold::Delayed { due_ms }),
    ]
}

/// A queue name: a plain queue, a pattern queue (`pa`) or one of its per-topic queues.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]",
        Just("pa".to_string()),
        Just("__pq.pa.0".to_string()),
        Just("__pq.pa.1".to_string()),
    ]
}

pub(super) fn arb_op() -> impl Strategy<Value = QueueOp> {
    let name = arb_name;
    prop_oneof![
        (name(), 1u8..=3, 0u32..3)
            .prop_map(|(n, levels, partitions)| create(&n, levels, partitions)),
        (
            name(),
            prop_oneof![
                Just(StartAt::Earliest),
                Just(StartAt::Latest),
                any::<i64>().prop_map(StartAt::TimestampMs)
            ],
            0u32..4
        )
            .prop_map(|(n, start, next_child)| create_pattern(&n, start, next_child)),
        (name(), 100u64..500).prop_map(|(n, ack_deadline_ms)| QueueOp::Alter {
            name: n,
            config: QueueConfig {
                ack_deadline_ms,
                ..config()
            }
        }),
        (
            name(),
            0u32..3,
            0u8..3,
            0u64..50,
            prop::collection::vec((0u64..50, arb_hold()), 0..5),
            prop::option::of((0u64..50, prop::collection::vec(-20i64..20, 0..4)))
        )
            .prop_map(
                |(n, partition, level, cursor_to, taken, counts)| QueueOp::Take {
                    name: n,
                    partition,
                    level,
                    cursor_to,
                    at_ms: 5,
                    taken: taken
                        .into_iter()
                        .map(|(offset, hold)| Taken { offset, hold })
                        .collect(),
                    counts: counts.map(|(from, ahead)| TakeCounts { from, ahead }),
                }
            ),
        (name(), 0u32..3, prop::collection::vec(0u64..50, 0..4)).prop_map(
            |(n, partition, ahead)| QueueOp::Ahead {
                name: n,
                partition,
                ahead
            }
        ),
        (name(), 0u32..3, 0u64..50, "[a-z]{0,8}").prop_map(|(n, partition, offset, member)| {
            QueueOp::Lease {
                name: n,
                partition,
                offset,
                member: member.into(),
                deadline_ms: 9,
                at_ms: 7,
            }
        }),
        (
            name(),
            0u32..3,
            prop::collection::vec((0u64..50, 0u64..50), 0..4)
        )
            .prop_map(|(n, partition, ranges)| QueueOp::Ack {
                name: n,
                partition,
                ranges
            }),
        (name(), 0u32..3, 0u64..50, any::<i64>(), "[a-z ]{0,12}").prop_map(
            |(n, partition, offset, due_ms, reason)| QueueOp::Nack {
                name: n,
                partition,
                offset,
                due_ms,
                reason
            }
        ),
        (name(), 0u32..3, 0u64..50).prop_map(|(n, partition, offset)| QueueOp::DeadLetter {
            name: n,
            partition,
            offset,
            reason: "max deliveries".into()
        }),
        (name(), 0u32..3, 0u64..50, 0u32..4, any::<i64>()).prop_map(
            |(n, partition, offset, attempt, due_ms)| QueueOp::Release {
                name: n,
                partition,
                offset,
                attempt,
                due_ms
            }
        ),
        (name(), prop::collection::vec((0u32..3, 0u64..60), 0..3))
            .prop_map(|(n, ends)| QueueOp::Purge { name: n, ends }),
        name().prop_map(|n| QueueOp::Delete { name: n }),
    ]
}
