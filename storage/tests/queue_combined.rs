//! `QueueEngine::settle_combined` (the broker's group commit of settlements): several
//! callers' settlements combined into one call give each caller exactly what settling
//! its own alone, in order, gives, and leave the same state (a property test against
//! two stores built the same way); and a failed fsync during a combined call fails
//! every caller in it and acks none, durably.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
use tidelog_storage::queue::admin;
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, SettleAction, SettleOutcome, SettleRequest, StartAt,
};
use tidelog_storage::{Error, ManualClock, NewRecord, Store, TopicConfig};

mod common;
use common::faulty_store as open;

const START_MS: i64 = 1_700_000_000_000;
const PARTITIONS: u32 = 2;
/// Messages per partition; the settlements also name offsets past these.
const MESSAGES: u64 = 10;
const MEMBERS: [&str; 3] = ["m0", "m1", "m2"];

fn config() -> QueueConfig {
    QueueConfig {
        ack_deadline_ms: 1_000,
        // A nack of the second delivery dead-letters.
        max_deliveries: 2,
        backoff_initial_ms: 100,
        backoff_max_ms: 100,
        ..QueueConfig::defaults_for("jobs")
    }
}

fn ack(partition: u32, offset: u64) -> SettleRequest {
    SettleRequest {
        partition,
        offset,
        attempt: 0,
        action: SettleAction::Ack { through: None },
    }
}

/// A store with topic `jobs` and queue `work`, and an engine whose members hold
/// deliveries: most on their first attempt, some on their second (nacked once, then
/// delivered again), some messages never delivered. The same calls on two stores
/// give the same state.
fn setup(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> (Arc<Store>, QueueEngine) {
    let store = open(fs, data, clock);
    let topic = store
        .create_topic("jobs", PARTITIONS, TopicConfig::default())
        .unwrap();
    for partition in 0..PARTITIONS {
        let records: Vec<NewRecord> = (0..MESSAGES)
            .map(|i| NewRecord {
                value: Bytes::from(format!("job-{partition}-{i}")),
                ..NewRecord::default()
            })
            .collect();
        topic
            .partition(partition)
            .unwrap()
            .append_durable(&records)
            .unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    for member in MEMBERS {
        engine.member_joined(member);
    }
    let wants: Vec<(String, u32)> = MEMBERS.iter().map(|m| (m.to_string(), 5)).collect();
    let first = engine.deliver(&wants).unwrap();
    // Each member nacks its first delivery at once: delivered again on attempt 2.
    for (member, deliveries) in &first {
        let d = &deliveries[0];
        let outcomes = engine
            .settle(
                Some(member),
                &[SettleRequest {
                    partition: d.partition,
                    offset: d.record.offset,
                    attempt: 0,
                    action: SettleAction::Nack {
                        delay_ms: Some(0),
                        reason: "again".into(),
                    },
                }],
            )
            .unwrap();
        assert_eq!(outcomes, vec![SettleOutcome::Ok { settled: 0 }]);
    }
    clock.advance_ms(1);
    engine.tick().unwrap();
    let wants: Vec<(String, u32)> = MEMBERS.iter().map(|m| (m.to_string(), 1)).collect();
    engine.deliver(&wants).unwrap();
    (store, engine)
}

/// One settlement as the test draws it.
#[derive(Debug, Clone)]
struct Drawn {
    partition: u32,
    offset: u64,
    /// 0: the current one; 1 or 2: that attempt (stale when it is not current).
    attempt: u32,
    action: u8,
    extra: u64,
}

impl Drawn {
    fn request(&self) -> SettleRequest {
        let action = match self.action {
            0 | 1 => SettleAction::Ack { through: None },
            2 => SettleAction::Ack {
                through: Some(self.offset + self.extra % 4),
            },
            3 => SettleAction::Nack {
                // Over the maximum one in eight times: Invalid.
                delay_ms: match self.extra % 8 {
                    0 => Some(u64::MAX),
                    1 | 2 => None,
                    n => Some(n * 10),
                },
                reason: format!("nack {}", self.extra),
            },
            4 => SettleAction::InProgress {
                // Under the minimum one in four times: Invalid.
                extend_ms: match self.extra % 4 {
                    0 => Some(1),
                    1 => None,
                    n => Some(n * 5_000),
                },
            },
            _ => SettleAction::Term {
                reason: format!("term {}", self.extra),
            },
        };
        SettleRequest {
            partition: self.partition,
            offset: self.offset,
            attempt: self.attempt,
            action,
        }
    }
}

fn drawn() -> impl Strategy<Value = Drawn> {
    (
        0..PARTITIONS,
        // Half the offsets (and one never delivered): callers often meet.
        0..MESSAGES / 2 + 1,
        0u32..3,
        0u8..6,
        any::<u64>(),
    )
        .prop_map(|(partition, offset, attempt, action, extra)| Drawn {
            partition,
            offset,
            attempt,
            action,
            extra,
        })
}

/// Callers: (member index, 3 = None for the unary API; their settlements).
fn callers() -> impl Strategy<Value = Vec<(usize, Vec<Drawn>)>> {
    prop::collection::vec((0usize..4, prop::collection::vec(drawn(), 1..6)), 1..8)
}

/// What a store holds after the settlements: the queue's state, the dead letters.
fn durable(store: &Store) -> (tidelog_storage::queue::Queue, u64) {
    let queue = store
        .queues()
        .read(|q| q.get("work").cloned())
        .expect("the queue");
    let letters = store
        .topic("jobs.dlq")
        .map(|t| t.partitions().iter().map(|p| p.end_offset().unwrap()).sum())
        .unwrap_or(0);
    (queue, letters)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    })]

    #[test]
    fn combined_settlements_answer_each_caller_as_if_settled_alone(callers in callers()) {
        // Two stores built the same way, each with its own clock.
        let (clock_a, clock_b) = (ManualClock::new(START_MS), ManualClock::new(START_MS));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (fs_a, fs_b) = (
            FaultyFs::new(dir_a.path(), 1).unwrap(),
            FaultyFs::new(dir_b.path(), 1).unwrap(),
        );
        let (store_a, mut combined) = setup(&fs_a, dir_a.path(), &clock_a);
        let (store_b, mut alone) = setup(&fs_b, dir_b.path(), &clock_b);
        prop_assert_eq!(durable(&store_a), durable(&store_b), "the two setups differ");
        let requests: Vec<(Option<&str>, Vec<SettleRequest>)> = callers
            .iter()
            .map(|(m, drawn)| (MEMBERS.get(*m).copied(), drawn.iter().map(Drawn::request).collect()))
            .collect();
        let batches: Vec<(Option<&str>, &[SettleRequest])> =
            requests.iter().map(|(m, r)| (*m, r.as_slice())).collect();
        let got = combined.settle_combined(&batches).unwrap();
        let mut want = Vec::new();
        for (member, requests) in &batches {
            want.push(alone.settle(*member, requests).unwrap());
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(durable(&store_a), durable(&store_b));
        prop_assert_eq!(combined.counters, alone.counters);
        for member in MEMBERS {
            prop_assert_eq!(combined.unacked(member), alone.unacked(member), "{}", member);
        }
        prop_assert_eq!(combined.next_wakeup(), alone.next_wakeup());
        // The engines go on the same way: the timers and leases agree.
        clock_a.advance_ms(2_000);
        clock_b.advance_ms(2_000);
        combined.tick().unwrap();
        alone.tick().unwrap();
        prop_assert_eq!(durable(&store_a), durable(&store_b), "after the deadlines");
    }
}

#[test]
fn a_duplicate_across_combined_callers_is_not_found_to_the_second() {
    let clock = ManualClock::new(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 2).unwrap();
    let (store, mut engine) = setup(&fs, dir.path(), &clock);
    let held = engine.unacked("m1");
    // m1 holds 0/1 or 1/1 among others; find one of its deliveries from the state.
    let (partition, offset) = store
        .queues()
        .read(|q| {
            let queue = q.get("work")?;
            queue.partitions.iter().find_map(|(&p, part)| {
                part.pending.iter().find_map(|(offset, pending)| {
                    matches!(&pending.hold,
                        tidelog_storage::queue::Hold::Leased { member, .. } if &**member == "m1")
                    .then_some((p, offset))
                })
            })
        })
        .expect("m1 holds a delivery");
    let first = [ack(partition, offset)];
    let second = [ack(partition, offset)];
    let outcomes = engine
        .settle_combined(&[(Some("m1"), &first), (None, &second)])
        .unwrap();
    assert_eq!(outcomes[0], vec![SettleOutcome::Ok { settled: 1 }]);
    assert!(
        matches!(&outcomes[1][..], [SettleOutcome::NotFound(message)] if message.contains("settled already")),
        "{outcomes:?}"
    );
    assert_eq!(engine.unacked("m1"), held - 1);
    assert_eq!(engine.counters.acked, 1);
}

#[test]
fn a_failed_fsync_fails_every_combined_caller_and_acks_none() {
    let clock = ManualClock::new(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 3).unwrap();
    let (store, mut engine) = setup(&fs, dir.path(), &clock);
    let before = durable(&store).0;
    // Every member's deliveries, each member one caller.
    let held: Vec<(&str, Vec<SettleRequest>)> = MEMBERS
        .iter()
        .map(|&member| {
            let requests = store.queues().read(|q| {
                let queue = q.get("work").unwrap();
                queue
                    .partitions
                    .iter()
                    .flat_map(|(&p, part)| {
                        part.pending
                            .iter()
                            .filter(|(_, pending)| {
                                matches!(&pending.hold,
                                tidelog_storage::queue::Hold::Leased { member: m, .. } if &**m == member)
                            })
                            .map(move |(offset, _)| ack(p, offset))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            });
            (member, requests)
        })
        .collect();
    assert!(held.iter().all(|(_, r)| !r.is_empty()));
    let batches: Vec<(Option<&str>, &[SettleRequest])> =
        held.iter().map(|(m, r)| (Some(*m), r.as_slice())).collect();
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::Data])
            .path_contains("queues"),
    );
    let error = engine.settle_combined(&batches).unwrap_err();
    assert!(
        matches!(error, Error::Poisoned { .. } | Error::Io { .. }),
        "{error}"
    );
    assert_eq!(
        fs.stats().failed_syncs,
        1,
        "the failed fsync is never retried"
    );
    // Nothing more is settled on the poisoned state log.
    let again = engine.settle(batches[0].0, batches[0].1).unwrap_err();
    assert!(matches!(again, Error::Poisoned { .. }), "{again}");
    assert_eq!(
        fs.stats().failed_syncs,
        1,
        "the failed fsync is never retried"
    );
    drop(engine);
    drop(store);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let store = open(&fs, dir.path(), &clock);
    let after = durable(&store).0;
    // Not one of the acks is durable: every message is still pending.
    for (&partition, part) in &before.partitions {
        for (offset, _) in part.pending.iter() {
            assert!(
                after.partitions[&partition].pending.get(offset).is_some(),
                "{partition}/{offset} was acked by a failed combined settlement"
            );
        }
    }
}
