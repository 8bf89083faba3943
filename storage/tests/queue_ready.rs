//! The ready count of a queue with several priority levels: a message a faster level
//! took (delivered, acked, nacked, delayed or skipped by the filter) is never counted
//! as ready again, whatever the order of settlements, across restarts (replay) and
//! compactions (snapshot), after power cuts, a failed fsync and a full disk. Checked
//! against a brute-force count over the log (`TIDELOG_QUEUE_SEEDS=N` runs more
//! seeds), and through the backpressure caps that use the same count.

use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault};
use tidelog_storage::queue::admin;
use tidelog_storage::queue::{
    Hold, QueueConfig, QueueEngine, SettleAction, SettleOutcome, SettleRequest, StartAt,
    inspect::{self, QueueState},
};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{
    Clock, FsyncPolicy, Header, ManualClock, NewRecord, QueueOverflow, Store, TopicConfig,
};

mod common;
use common::faulty_store as open;
use common::plain_store as plain;
use common::work_queue;

const START_MS: i64 = 1_700_000_000_000;

fn topic_config(levels: u8, cap: Option<u64>, overflow: QueueOverflow) -> TopicConfig {
    TopicConfig {
        priority_levels: levels,
        queue_max_ready_messages: cap,
        queue_overflow: overflow,
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    }
}

/// A 2-level topic whose appends are durable before they are visible (the crash
/// tests: a power cut takes back no message).
fn durable_topic() -> TopicConfig {
    TopicConfig {
        priority_levels: 2,
        ..TopicConfig::default()
    }
}

fn message(priority: u8) -> NewRecord {
    NewRecord {
        value: Bytes::from(format!("p{priority}")),
        priority,
        ..NewRecord::default()
    }
}

fn ack(offset: u64) -> SettleRequest {
    SettleRequest {
        partition: 0,
        offset,
        attempt: 0,
        action: SettleAction::Ack { through: None },
    }
}

/// The repro: 5 low messages, then 1 high; the high one is delivered first and acked
/// (out of offset order): 5 ready, not 6.
fn high_acked_after_five_low(store: &Arc<Store>) -> QueueEngine {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    work_queue(store);
    for _ in 0..5 {
        partition.append_durable(&[message(0)]).unwrap();
    }
    partition.append_durable(&[message(1)]).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(delivered[0].1[0].record.offset, 5, "the high one first");
    assert_eq!(
        engine.settle(Some("m"), &[ack(5)]).unwrap(),
        vec![SettleOutcome::Ok { settled: 1 }]
    );
    engine
}

#[test]
fn a_message_acked_out_of_offset_order_is_not_ready_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain(dir.path(), &clock);
    store
        .create_topic("jobs", 1, topic_config(2, None, QueueOverflow::Reject))
        .unwrap();
    let engine = high_acked_after_five_low(&store);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (5, 0), "{status:?}");
    drop(engine);
    // Replay, then a snapshot: the same.
    drop(store);
    let store = plain(dir.path(), &clock);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 5, "after a replay");
    store.queues().compact().unwrap();
    drop(store);
    let store = plain(dir.path(), &clock);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 5, "after a snapshot");
}

#[test]
fn the_reject_cap_has_room_for_what_was_acked_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain(dir.path(), &clock);
    store
        .create_topic("jobs", 1, topic_config(2, Some(5), QueueOverflow::Reject))
        .unwrap();
    let engine = high_acked_after_five_low(&store);
    let topic = store.topic("jobs").unwrap();
    // 5 ready at a cap of 5: full, but not over.
    let over = admin::over_caps(&*store, &topic, 1, 2).unwrap().unwrap();
    assert_eq!(over.ready_messages, 5, "{over:?}");
    drop(engine);
    // One low message delivered and acked: room for exactly one.
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(delivered[0].1[0].record.offset, 0);
    engine.settle(Some("m"), &[ack(0)]).unwrap();
    assert_eq!(admin::over_caps(&*store, &topic, 1, 2).unwrap(), None);
    assert!(admin::over_caps(&*store, &topic, 2, 4).unwrap().is_some());
}

#[test]
fn the_dead_letter_oldest_cap_drops_nothing_under_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain(dir.path(), &clock);
    store
        .create_topic(
            "jobs",
            1,
            topic_config(2, Some(5), QueueOverflow::DeadLetterOldest),
        )
        .unwrap();
    let mut engine = high_acked_after_five_low(&store);
    assert_eq!(engine.enforce_caps().unwrap(), 0, "5 ready at a cap of 5");
    assert!(store.topic("jobs.dlq").is_err(), "no dead letter written");
    // Two more: 7 ready, the two oldest low ones go.
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition.append_durable(&[message(0), message(0)]).unwrap();
    assert_eq!(engine.enforce_caps().unwrap(), 2);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 5, "{status:?}");
    // The overflow pass moved the slowest cursor past the high one's offset (and its
    // look for delayed messages first took the high level to the end): still 5.
    let cursors = store
        .queues()
        .read(|q| q.get("work").unwrap().partitions[&0].cursors.clone());
    assert_eq!(cursors, vec![2, 8]);
}

/// The brute-force ready count of queue `work` on partition 0: every message of the
/// log its level's cursor has not passed, plus the pending ones due now.
fn brute_force_ready(store: &Store, now: i64) -> u64 {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let log_start = partition.log_start().unwrap();
    let (cursors, levels, due) = store.queues().read(|q| {
        let queue = q.get("work").unwrap();
        let part = queue.partitions.get(&0);
        let due = part.map_or(0, |p| {
            p.pending
                .iter()
                // Retention deleted it: gone, not ready.
                .filter(|&(offset, _)| offset >= log_start)
                .filter(|(_, pending)| match pending.hold {
                    Hold::Leased { .. } => false,
                    Hold::Waiting { due_ms } | Hold::Delayed { due_ms } => due_ms <= now,
                })
                .count() as u64
        });
        (
            part.map(|p| p.cursors.clone())
                .unwrap_or_else(|| vec![0; usize::from(queue.levels)]),
            queue.levels,
            due,
        )
    });
    let mut untaken = 0;
    let mut position = log_start;
    while position < partition.end_offset().unwrap() {
        let read = partition.read(position, 1000, u64::MAX).unwrap();
        for record in &read.records {
            let level = usize::from(record.priority.min(levels - 1));
            if record.offset >= cursors[level] {
                untaken += 1;
            }
        }
        position = read.next_offset;
    }
    untaken + due
}

/// What `take_delayed` promises, checked over the log: from the fastest level down, no
/// level's first message past its position (the filter's skips aside) has its
/// deliver-at ahead of `now`; the check stops at the first level whose position is
/// short of the log's end (its head is due: slower levels wait for a member's round).
fn check_no_delayed_head(store: &Store, now: i64, filtered: bool, context: &str) {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let (cursors, levels) = store.queues().read(|q| {
        let queue = q.get("work").unwrap();
        let cursors = queue.partitions.get(&0).map(|p| p.cursors.clone());
        (
            cursors.unwrap_or_else(|| vec![0; usize::from(queue.levels)]),
            queue.levels,
        )
    });
    let end = partition.end_offset().unwrap();
    for level in (0..levels).rev() {
        let cursor = cursors[usize::from(level)].max(partition.log_start().unwrap());
        let mut position = cursor;
        let mut head = None;
        'scan: while position < end {
            let read = partition.read(position, 1000, u64::MAX).unwrap();
            for record in read.records {
                let skipped = filtered
                    && record
                        .headers
                        .iter()
                        .any(|h| h.key == "kind" && h.value.as_ref() == b"skip");
                if record.priority.min(levels - 1) == level && !skipped {
                    head = Some(record);
                    break 'scan;
                }
            }
            position = read.next_offset;
        }
        if let Some(record) = head {
            assert!(
                record.deliver_at_ms.is_none_or(|due| due <= now),
                "{context}: level {level}'s head {} is due at {:?}, after now {now}: \
                 take_delayed left it (cursors {cursors:?})",
                record.offset,
                record.deliver_at_ms
            );
        }
        if cursor < end {
            break;
        }
    }
}

/// One random run: publishes of random priorities (some delayed, some the filter
/// skips), deliveries of random sizes, acks, nacks and terms of random held messages
/// in random order, ticks, restarts, compactions, overflow passes, takes of delayed
/// messages ahead (checked: no delayed head left), and, on half the seeds, retention
/// deleting old segments (a segment rolls every 40 ms of the clock), followed by the
/// engine's next round as the broker's queue runtime runs it; after every step the
/// ready count equals the brute-force count.
fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let mut rng = Rng::new(seed);
    let levels = 2 + rng.below(3) as u8;
    let filtered = rng.below(2) == 0;
    let cap = (rng.below(3) == 0).then(|| 10 + rng.below(20));
    let retention_ms = (rng.below(2) == 0).then(|| 100 + rng.below(200));
    let mut store = plain(dir.path(), &clock);
    store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                segment_ms: retention_ms.map(|_| 40),
                retention_ms,
                ..topic_config(levels, cap, QueueOverflow::DeadLetterOldest)
            },
        )
        .unwrap();
    let config = QueueConfig {
        ack_deadline_ms: 1_000,
        max_deliveries: 3,
        backoff_initial_ms: 10,
        backoff_max_ms: 40,
        filter: filtered.then(|| r#"header.kind != "skip""#.to_string()),
        ..QueueConfig::defaults_for("jobs")
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    let members = ["a", "b"];
    for m in members {
        engine.member_joined(m);
    }
    let mut held: Vec<(String, u64)> = Vec::new();
    for step in 0..300 {
        let now = clock.now_ms();
        match rng.below(100) {
            0..=29 => {
                let count = 1 + rng.below(4);
                let records: Vec<NewRecord> = (0..count)
                    .map(|_| {
                        let mut record = message(rng.below(u64::from(levels)) as u8);
                        if rng.below(8) == 0 {
                            record.deliver_at_ms = Some(now + 1 + rng.below(50) as i64);
                        }
                        if rng.below(5) == 0 {
                            record.headers.push(Header {
                                key: "kind".into(),
                                value: Bytes::from_static(b"skip"),
                            });
                        }
                        record
                    })
                    .collect();
                let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
                partition.append_durable(&records).unwrap();
            }
            30..=54 => {
                let member = members[rng.below(2) as usize];
                let want = 1 + rng.below(4) as u32;
                for (m, deliveries) in engine.deliver(&[(member.to_string(), want)]).unwrap() {
                    held.extend(deliveries.iter().map(|d| (m.clone(), d.record.offset)));
                }
            }
            55..=79 if !held.is_empty() => {
                let (member, offset) = held.swap_remove(rng.below(held.len() as u64) as usize);
                let action = match rng.below(6) {
                    0 => SettleAction::Nack {
                        delay_ms: Some(rng.below(30)),
                        reason: "again".into(),
                    },
                    1 => SettleAction::Term {
                        reason: "no".into(),
                    },
                    _ => SettleAction::Ack { through: None },
                };
                let request = SettleRequest {
                    action,
                    ..ack(offset)
                };
                engine.settle(Some(&member), &[request]).unwrap();
            }
            80..=85 => {
                clock.advance_ms(1 + rng.below(60) as i64);
                engine.tick().unwrap();
            }
            86..=87 => {
                // Retention (a no-op on the seeds without it), then the queue
                // runtime's next round: with no member asking, it takes delayed
                // messages ahead.
                let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
                partition.enforce_retention().unwrap();
                engine.take_delayed().unwrap();
            }
            88..=89 => {
                engine.enforce_caps().unwrap();
            }
            90..=91 => {
                // As the runtime does on a capped topic: delayed messages taken ahead,
                // then the caps.
                engine.take_delayed().unwrap();
                check_no_delayed_head(&store, now, filtered, &format!("seed {seed} step {step}"));
                if rng.below(2) == 0 {
                    engine.enforce_caps().unwrap();
                }
            }
            92..=95 => {
                // A restart: the state replayed from the log; every lease is given up.
                drop(engine);
                drop(store);
                store = plain(dir.path(), &clock);
                engine = QueueEngine::open(store.clone(), "work").unwrap();
                for m in members {
                    engine.member_joined(m);
                }
                held.clear();
                engine.tick().unwrap();
            }
            _ => {
                store.queues().compact().unwrap();
                if rng.below(2) == 0 {
                    drop(engine);
                    drop(store);
                    store = plain(dir.path(), &clock);
                    engine = QueueEngine::open(store.clone(), "work").unwrap();
                    for m in members {
                        engine.member_joined(m);
                    }
                    held.clear();
                    engine.tick().unwrap();
                }
            }
        }
        let now = clock.now_ms();
        let status = admin::queue_status(&*store, "work", now).unwrap();
        assert_eq!(
            status.ready,
            brute_force_ready(&store, now),
            "seed {seed} step {step}: levels {levels}, filtered {filtered}, retention_ms \
             {retention_ms:?}, {status:?}"
        );
    }
}

#[test]
fn the_ready_count_equals_a_brute_force_count() {
    let seeds: u64 = std::env::var("TIDELOG_QUEUE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for seed in 0..seeds {
        run(seed);
    }
}

/// A store with a 2-level topic, 5 low and 1 high messages, and queue `work` whose
/// member `m` holds the high one (a counted take of level 1 is durable).
fn five_low_one_high_taken(store: &Arc<Store>) -> QueueEngine {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for _ in 0..5 {
        partition.append_durable(&[message(0)]).unwrap();
    }
    partition.append_durable(&[message(1)]).unwrap();
    work_queue(store);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    engine
}

/// After a crash the count is one of the two durable states: before the take (6 not
/// taken, 6 ready) or after it (5 ready; the high one held, then given up by the
/// restart and due again after its backoff). Never 6 ready with the take durable.
fn check_after_crash(store: &Store, clock: &ManualClock, answered: bool, context: &str) {
    let taken = store
        .queues()
        .read(|q| {
            q.get("work")
                .unwrap()
                .partitions
                .get(&0)
                .map(|p| p.cursors.clone())
        })
        .is_some_and(|cursors| cursors[1] == 6);
    assert!(!answered || taken, "{context}: an answered take was lost");
    let now = clock.now_ms();
    let status = admin::queue_status(store, "work", now).unwrap();
    assert_eq!(status.ready, brute_force_ready(store, now), "{context}");
    let expected = if taken { (5, 1) } else { (6, 0) };
    assert_eq!(
        (status.ready, status.unacked),
        expected,
        "{context}: {status:?}"
    );
}

/// From a restart after a crash: the high message goes first (again, or for the
/// first time) and is acked out of offset order: 5 ready; then the rest: 0.
fn ack_the_high_one_then_the_rest(store: &Arc<Store>, clock: &ManualClock, context: &str) {
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    engine.tick().unwrap();
    clock.advance_ms(60_000);
    engine.tick().unwrap();
    let high = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(high[0].1[0].record.offset, 5, "{context}");
    engine.settle(Some("m"), &[ack(5)]).unwrap();
    let status = admin::queue_status(&**store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.ready, status.unacked),
        (5, 0),
        "{context}: {status:?}"
    );
    let rest = engine.deliver(&[("m".into(), 10)]).unwrap();
    assert_eq!(rest[0].1.len(), 5, "{context}");
    for d in &rest[0].1 {
        engine.settle(Some("m"), &[ack(d.record.offset)]).unwrap();
    }
    let status = admin::queue_status(&**store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (0, 0), "{context}");
}

/// A power cut at every point of a delivery whose take carries the counts.
#[test]
fn a_power_cut_anywhere_in_a_counted_take_keeps_the_count_exact() {
    let mut cut_after = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), cut_after).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = open(&fs, &data, &clock);
        store.create_topic("jobs", 1, durable_topic()).unwrap();
        let mut engine = five_low_one_high_taken(&store);
        fs.power_off_after(cut_after);
        let answered = engine.deliver(&[("m".into(), 1)]);
        let cut = fs.is_powered_off();
        drop(engine);
        let store = common::power_cut(
            store,
            &fs,
            &data,
            &clock,
            CrashOptions::keep_some(cut_after),
        );
        let context = format!("cut after {cut_after}");
        let delivered = matches!(&answered, Ok(d) if !d.is_empty());
        check_after_crash(&store, &clock, delivered, &context);
        ack_the_high_one_then_the_rest(&store, &clock, &context);
        if !cut {
            assert!(delivered, "no cut: delivered");
            assert!(cut_after >= 2, "only {cut_after} points to cut at");
            break;
        }
        cut_after += 1;
        assert!(cut_after < 1_000, "the delivery never completed");
    }
}

/// A failed fsync of the queue state (EIO) fails the delivery and poisons the state
/// log; after a restart the count is the one before the take.
#[test]
fn a_failed_fsync_of_a_counted_take_leaves_the_count_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 21).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store.create_topic("jobs", 1, durable_topic()).unwrap();
    let mut engine = five_low_one_high_taken(&store);
    fs.fail_sync(SyncFault::nth(1).path_contains("queues"));
    assert!(engine.deliver(&[("m".into(), 1)]).is_err());
    assert!(
        engine.deliver(&[("m".into(), 1)]).is_err(),
        "poisoned: not retried"
    );
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    check_after_crash(&store, &clock, false, "after EIO");
    ack_the_high_one_then_the_rest(&store, &clock, "after EIO");
}

/// A full disk (ENOSPC) fails the delivery; once there is room again the take goes
/// through and the count is exact.
#[test]
fn a_full_disk_fails_a_counted_take_and_the_count_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 22).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store.create_topic("jobs", 1, durable_topic()).unwrap();
    let mut engine = five_low_one_high_taken(&store);
    fs.set_capacity(Some(fs.used_bytes()));
    assert!(engine.deliver(&[("m".into(), 1)]).is_err());
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.ready, status.unacked),
        (6, 0),
        "readers see durable state"
    );
    fs.set_capacity(None);
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    check_after_crash(&store, &clock, false, "after ENOSPC");
    ack_the_high_one_then_the_rest(&store, &clock, "room again after ENOSPC");
}

/// Messages taken and then deleted by retention before their redelivery (due now or
/// later) or their deliver-at time count nowhere in DescribeQueue: not ready, not
/// waiting, not delayed (hunt 9c: they counted as ready until the next delivery round
/// found them gone). Nor does one a member still holds: the queue drops it
/// (`QueuePartition::deleted_pending`), so it is not unacked either.
#[test]
fn messages_retention_deleted_while_taken_count_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain(dir.path(), &clock);
    let config = TopicConfig {
        segment_bytes: 4 * 1024,
        retention_ms: Some(60_000),
        ..topic_config(1, None, QueueOverflow::Reject)
    };
    store.create_topic("jobs", 1, config).unwrap();
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    work_queue(&store);
    let old = |deliver_at_ms: Option<i64>| NewRecord {
        value: Bytes::from(vec![b'o'; 200]),
        deliver_at_ms,
        ..NewRecord::default()
    };
    // Offsets 0-2 due, 3 delayed by an hour, then enough to fill sealed segments.
    let mut first = vec![
        old(None),
        old(None),
        old(None),
        old(Some(START_MS + 3_600_000)),
    ];
    first.extend((0..60).map(|_| old(None)));
    partition.append_durable(&first).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".to_string(), 3)]).unwrap();
    let offsets: Vec<u64> = delivered[0].1.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    // 3 is taken as delayed (as the runtime does on a capped topic).
    engine.take_delayed().unwrap();
    let nack = |offset: u64, delay_ms: u64| SettleRequest {
        action: SettleAction::Nack {
            delay_ms: Some(delay_ms),
            reason: "later".into(),
        },
        ..ack(offset)
    };
    // 0 waits for a redelivery due at once, 1 for one in ten minutes; 2 stays held.
    engine
        .settle(Some("m"), &[nack(0, 0), nack(1, 600_000)])
        .unwrap();
    let before = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (before.ready, before.waiting, before.delayed, before.unacked),
        (1 + 60, 1, 1, 1),
        "{before:?}"
    );
    // Two minutes on, fresh messages, and retention deletes the old segments.
    clock.advance_ms(120_000);
    partition
        .append_durable(&[NewRecord::value(Bytes::from_static(b"fresh"))])
        .unwrap();
    partition.enforce_retention().unwrap();
    let (start, end) = partition.bounds().unwrap();
    assert!(
        start > 3,
        "retention deleted the taken messages: log {start}..{end}"
    );
    let after = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (after.ready, after.waiting, after.delayed, after.unacked),
        (end - start, 0, 0, 0),
        "log {start}..{end}: {after:?}"
    );
}

/// A 2-level topic of 90 messages alternating priority 1 and 0 (the high ones at even
/// offsets), the first 36 in a segment of their own that retention deletes once the
/// clock is a minute on; queue `work` with member `m`, who has taken and acked the
/// first `high_taken` high messages (so level 1's cursor runs ahead of level 0's).
fn ninety_alternating(store: &Arc<Store>, clock: &ManualClock, high_taken: u32) -> QueueEngine {
    let config = TopicConfig {
        segment_ms: Some(1_000),
        retention_ms: Some(60_000),
        ..topic_config(2, None, QueueOverflow::Reject)
    };
    store.create_topic("jobs", 1, config).unwrap();
    work_queue(store);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let alternating = |from: u64, to: u64| -> Vec<NewRecord> {
        (from..to)
            .map(|offset| message(u8::from(offset % 2 == 0)))
            .collect()
    };
    partition.append_durable(&alternating(0, 36)).unwrap();
    clock.advance_ms(2_000);
    partition.append_durable(&alternating(36, 90)).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), high_taken)]).unwrap();
    let offsets: Vec<u64> = delivered[0].1.iter().map(|d| d.record.offset).collect();
    assert_eq!(
        offsets,
        (0..u64::from(high_taken))
            .map(|i| 2 * i)
            .collect::<Vec<_>>()
    );
    for offset in offsets {
        engine.settle(Some("m"), &[ack(offset)]).unwrap();
    }
    engine
}

/// Delivers and acks the rest one by one: the high messages first, then the low ones,
/// with the ready count checked against the brute-force count after each.
fn deliver_the_rest_one_by_one(store: &Store, clock: &ManualClock, engine: &mut QueueEngine) {
    let mut expected_ready = admin::queue_status(store, "work", clock.now_ms())
        .unwrap()
        .ready;
    loop {
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        let Some((_, deliveries)) = delivered.first() else {
            break;
        };
        let (offset, priority) = (deliveries[0].record.offset, deliveries[0].record.priority);
        engine.settle(Some("m"), &[ack(offset)]).unwrap();
        expected_ready -= 1;
        let status = admin::queue_status(store, "work", clock.now_ms()).unwrap();
        let context = format!("after delivering {offset} (priority {priority}): {status:?}");
        assert_eq!(status.ready, expected_ready, "{context}");
        assert_eq!(
            status.ready,
            brute_force_ready(store, clock.now_ms()),
            "{context}"
        );
    }
    assert_eq!(expected_ready, 0, "every message left was delivered");
}

/// Hunt 10c, finding 4: level 1 took the first 10 high messages (its cursor at 20),
/// then retention deleted offsets 0-35, past both levels' cursors. The ready count was
/// exact right after the cut (54), but each later high delivery lowered it by 2 (the
/// 10 deleted high messages stayed in level 1's count of what it took ahead), down to
/// 0 with 27 low messages still to deliver.
#[test]
fn retention_past_a_faster_levels_cursor_keeps_the_ready_count_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain(dir.path(), &clock);
    let mut engine = ninety_alternating(&store, &clock, 10);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 80, "{status:?}");
    clock.advance_ms(60_000);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition.enforce_retention().unwrap();
    assert_eq!(partition.log_start().unwrap(), 36);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 54, "{status:?}");
    deliver_the_rest_one_by_one(&store, &clock, &mut engine);
    // Lost to retention: the 36 deleted offsets less the 10 high ones taken.
    assert_eq!(engine.counters.lost_to_retention, 26);
}

/// The same with level 1's cursor past the cut (it took 25 high messages, up to offset
/// 48): after the queue's next round, the 7 high messages it took at 36-48 are not
/// ready, and the 18 deleted below 36 are no longer subtracted from what is left. The
/// count holds across a restart (replay) and a snapshot.
#[test]
fn retention_between_the_levels_cursors_keeps_the_ready_count_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let mut store = plain(dir.path(), &clock);
    let mut engine = ninety_alternating(&store, &clock, 25);
    clock.advance_ms(60_000);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition.enforce_retention().unwrap();
    assert_eq!(partition.log_start().unwrap(), 36);
    // The queue runtime's next round (no member asking).
    engine.take_delayed().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 54 - 7, "{status:?}");
    assert_eq!(engine.counters.lost_to_retention, 36 - 18);
    for compact in [false, true] {
        drop(engine);
        if compact {
            store.queues().compact().unwrap();
        }
        drop(store);
        store = plain(dir.path(), &clock);
        let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
        assert_eq!(status.ready, 47, "compacted {compact}: {status:?}");
        engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("m");
    }
    deliver_the_rest_one_by_one(&store, &clock, &mut engine);
}

/// A store whose topic `jobs` has `levels` levels and dead-letters the oldest over a cap
/// of `cap` ready messages, with queue `work` from the earliest and member `m`.
fn dead_letter_oldest_over(
    cap: u64,
    clock: &Arc<ManualClock>,
    dir: &std::path::Path,
) -> (Arc<Store>, QueueEngine) {
    let store = plain(dir, clock);
    store
        .create_topic(
            "jobs",
            1,
            topic_config(1, Some(cap), QueueOverflow::DeadLetterOldest),
        )
        .unwrap();
    work_queue(&store);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    (store, engine)
}

fn append(store: &Store, records: &[NewRecord]) {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition.append_durable(records).unwrap();
}

fn short_lived(ttl_ms: u64) -> NewRecord {
    NewRecord {
        ttl_ms: Some(ttl_ms),
        ..message(0)
    }
}

/// Messages that expired at the head of the queue are not ready: dead-letter-oldest
/// moves no live message in their place, also when a take of delayed messages stopped
/// at them while they were still due (hunt 10c: 2 expired and 1 live message counted 3
/// ready, so the next two publishes dead-lettered two live ones).
#[test]
fn expired_messages_at_the_head_take_no_room_under_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mut engine) = dead_letter_oldest_over(3, &clock, dir.path());
    append(&store, &[short_lived(500), short_lived(500), message(0)]);
    // A look while they are due stops at the first one.
    engine.take_delayed().unwrap();
    assert_eq!(engine.enforce_caps().unwrap(), 0);
    assert_eq!(
        admin::queue_status(&*store, "work", clock.now_ms())
            .unwrap()
            .ready,
        3
    );
    clock.advance_ms(600);
    append(&store, &[message(0), message(0)]);
    assert_eq!(engine.enforce_caps().unwrap(), 0, "nothing is over the cap");
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 3, "{status:?}");
    assert!(
        store.topic("jobs.dlq").is_err(),
        "no dead letter was written"
    );
    // One more is over: the oldest live one goes.
    append(&store, &[message(0)]);
    assert_eq!(engine.enforce_caps().unwrap(), 1);
    let delivered = engine.deliver(&[("m".to_string(), 10)]).unwrap();
    let offsets: Vec<u64> = delivered[0].1.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5], "offset 2 was dead-lettered");
}

/// A message whose TTL ends before its deliver-at time can never be delivered: a queue
/// passes it over as it passes an expired one (not delayed, then ready, taking room),
/// and its delivery status is expired from the start (hunt 10c).
#[test]
fn a_message_expiring_before_it_comes_due_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mut engine) = dead_letter_oldest_over(5, &clock, dir.path());
    let never = NewRecord {
        deliver_at_ms: Some(START_MS + 1_200),
        ..short_lived(800)
    };
    let later = NewRecord {
        deliver_at_ms: Some(START_MS + 1_200),
        ..short_lived(5_000)
    };
    append(&store, &[never.clone(), never, later]);
    engine.take_delayed().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.delayed), (0, 1), "{status:?}");
    let topic = store.topic("jobs").unwrap();
    let state = |offset| {
        let message = inspect::message_at(&topic, 0, offset).unwrap();
        inspect::queue_state(&*store, "work", 0, offset, &message, clock.now_ms()).unwrap()
    };
    assert!(
        matches!(state(0), QueueState::Expired { attempts: 0, .. }),
        "{:?}",
        state(0)
    );
    assert!(
        matches!(state(2), QueueState::Delayed { .. }),
        "{:?}",
        state(2)
    );
    clock.advance_ms(1_300);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.delayed), (1, 0), "{status:?}");
    engine.tick().unwrap();
    let delivered = engine.deliver(&[("m".to_string(), 10)]).unwrap();
    let offsets: Vec<u64> = delivered[0].1.iter().map(|d| d.record.offset).collect();
    assert_eq!(offsets, vec![2]);
}
