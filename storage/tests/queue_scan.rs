//! The queue's scan of a topic stops on limits (records and bytes per read, records
//! per round, the deliveries members want, strict priority) and reports where each
//! partition and level's cursor moves. Random message sizes (a byte to several MiB),
//! random batches, priorities, a filter, members' wants, publishing while the queue is
//! being read, and engine and store reopens, against a simple model: every message is
//! delivered exactly once, in log order within its partition and level, nothing is
//! skipped, and at the end every cursor stands at the end of its partition.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tidelog_storage::batch::Header;
use tidelog_storage::queue::admin::{self, queue_status};
use tidelog_storage::queue::{QueueConfig, QueueEngine, SettleAction, SettleRequest, StartAt};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{Clock, ManualClock, NewRecord, Store, TopicConfig};

mod common;
use common::plain_store as open;

const START_MS: i64 = 1_700_000_000_000;
/// Largest message a run writes (several of the scan's 4 MiB reads' worth of small
/// ones).
const LARGE_BYTES_MAX: u64 = 6 << 20;
/// Log bytes a run writes at most, so a seed stays fast.
const RUN_BYTES_MAX: u64 = 40 << 20;

/// A message size: mostly small, some tens of KiB, now and then several MiB.
fn message_size(rng: &mut Rng, large_left: &mut u32) -> usize {
    match rng.below(100) {
        0..=69 => rng.below(300) as usize,
        70..=97 => 1 + rng.below(64 << 10) as usize,
        _ if *large_left > 0 => {
            *large_left -= 1;
            (1 << 20) + rng.below(LARGE_BYTES_MAX - (1 << 20)) as usize
        }
        _ => rng.below(2000) as usize,
    }
}

struct Run {
    rng: Rng,
    levels: u8,
    /// (partition, offset) -> level, for the messages the queue must deliver (those the
    /// filter matches).
    expected: BTreeMap<(u32, u64), u8>,
    /// Messages written, matching or not.
    written: u64,
    bytes: u64,
    large_left: u32,
    filtered: bool,
}

impl Run {
    /// Appends a few batches of random records to random partitions.
    fn publish(&mut self, store: &Store, partitions: u32) {
        let topic = store.topic("jobs").unwrap();
        for _ in 0..1 + self.rng.below(4) {
            if self.bytes >= RUN_BYTES_MAX {
                return;
            }
            let partition = self.rng.below(u64::from(partitions)) as u32;
            let span = if self.rng.below(4) == 0 { 1500 } else { 40 };
            let count = 1 + self.rng.below(span);
            let mut records = Vec::new();
            let mut batch_bytes = 0u64;
            for _ in 0..count {
                let size = message_size(&mut self.rng, &mut self.large_left);
                if batch_bytes + size as u64 > (12 << 20) {
                    break;
                }
                batch_bytes += size as u64;
                let priority = self.rng.below(u64::from(self.levels)) as u8;
                let matches = !self.filtered || self.rng.below(3) != 0;
                records.push(NewRecord {
                    value: Bytes::from(vec![b'v'; size]),
                    priority,
                    headers: vec![Header {
                        key: "kind".into(),
                        value: Bytes::from_static(if matches { b"job" } else { b"noise" }),
                    }],
                    ..NewRecord::default()
                });
            }
            let levels: Vec<(u8, bool)> = records
                .iter()
                .map(|r| (r.priority, r.headers[0].value.as_ref() == b"job"))
                .collect();
            let appended = topic
                .partition(partition)
                .unwrap()
                .append_durable(&records)
                .unwrap();
            for (i, (level, matches)) in levels.into_iter().enumerate() {
                if matches {
                    self.expected
                        .insert((partition, appended.base_offset + i as u64), level);
                }
            }
            self.written += records.len() as u64;
            self.bytes += batch_bytes;
        }
    }
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let mut rng = Rng::new(seed);
    let partitions = 1 + rng.below(3) as u32;
    let levels = 1 + rng.below(3) as u8;
    let filtered = rng.below(2) == 0;
    let mut run = Run {
        rng: Rng::new(seed ^ 0x5eed),
        levels,
        expected: BTreeMap::new(),
        written: 0,
        bytes: 0,
        large_left: 3,
        filtered,
    };
    let mut store = open(&data, &clock);
    store
        .create_topic(
            "jobs",
            partitions,
            TopicConfig {
                priority_levels: levels,
                max_message_bytes: 8 << 20,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    // A backlog before the queue exists, read from the earliest offset.
    for _ in 0..3 {
        run.publish(&store, partitions);
    }
    let config = QueueConfig {
        // Nothing is redelivered: the clock stands still and every delivery is acked.
        ack_deadline_ms: 3_600_000,
        max_unacked_per_member: 100_000,
        filter: filtered.then(|| r#"header.kind == "job""#.to_string()),
        ..QueueConfig::defaults_for("jobs")
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    let members = ["a", "b", "c"];
    for member in members {
        engine.member_joined(member);
    }

    let context =
        format!("seed {seed} ({partitions} partitions, {levels} levels, filter {filtered})");
    let mut delivered: BTreeSet<(u32, u64)> = BTreeSet::new();
    // The last offset delivered per (partition, level): log order within each.
    let mut last: BTreeMap<(u32, u8), u64> = BTreeMap::new();
    let (mut reopens, mut capped_rounds) = (0u32, 0u32);
    let mut quiet = 0u32;
    for step in 0..100_000u32 {
        let context = format!("{context} step {step}");
        let roll = run.rng.below(100);
        if roll < 6 {
            run.publish(&store, partitions);
        } else if roll < 8 {
            // The engine (and, every other time, the store) opens again from the state
            // log: the cursors it reports are durable.
            drop(engine);
            if reopens % 2 == 1 {
                store.close().unwrap();
                drop(store);
                store = open(&data, &clock);
            }
            engine = QueueEngine::open(store.clone(), "work").unwrap();
            for member in members {
                engine.member_joined(member);
            }
            reopens += 1;
        }
        let member = members[run.rng.below(3) as usize];
        let want = match run.rng.below(10) {
            0 => 5_000,
            1..=3 => 1 + run.rng.below(300) as u32,
            _ => 1 + run.rng.below(8) as u32,
        };
        let rounds = engine.deliver(&[(member.to_string(), want)]).unwrap();
        let mut got = 0usize;
        let mut settle = Vec::new();
        for (who, deliveries) in rounds {
            assert_eq!(who, member, "{context}");
            for d in deliveries {
                let key = (d.partition, d.record.offset);
                let level = *run
                    .expected
                    .get(&key)
                    .unwrap_or_else(|| panic!("{context}: delivered {key:?}, not expected"));
                assert!(delivered.insert(key), "{context}: {key:?} delivered twice");
                assert_eq!(d.attempt, 1, "{context}: {key:?}");
                if let Some(previous) = last.insert((d.partition, level), d.record.offset) {
                    assert!(
                        previous < d.record.offset,
                        "{context}: partition {} level {level}: {} after {previous}",
                        d.partition,
                        d.record.offset
                    );
                }
                got += 1;
                settle.push(SettleRequest {
                    partition: d.partition,
                    offset: d.record.offset,
                    attempt: 0,
                    action: SettleAction::Ack { through: None },
                });
            }
        }
        assert!(
            got <= want as usize,
            "{context}: {got} for a want of {want}"
        );
        if got == want as usize {
            capped_rounds += 1;
        }
        if !settle.is_empty() {
            engine.settle(Some(member), &settle).unwrap();
        }
        let left = run.expected.len() - delivered.len();
        if got == 0 {
            // Nothing came although messages wait: only while a scan budget ran out
            // before the round found any (strict priority looks through higher levels
            // first, a filter passes over what it skips). `behind` says so.
            assert!(
                left == 0 || engine.behind(),
                "{context}: nothing delivered, not behind, {left} messages never delivered"
            );
        }
        if left == 0 && run.bytes >= RUN_BYTES_MAX / 2 && step >= 300 {
            quiet += 1;
            if quiet > 3 {
                break;
            }
        }
        if left == 0 && run.rng.below(3) == 0 {
            run.publish(&store, partitions);
        }
    }
    assert_eq!(
        delivered.len(),
        run.expected.len(),
        "{context}: every message the filter matches is delivered"
    );
    // Every cursor at the end of its partition, nothing held or ready.
    let status = queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.ready, status.unacked),
        (0, 0),
        "{context}: {status:?}"
    );
    let topic = store.topic("jobs").unwrap();
    for p in &status.partitions {
        let partition_end = topic.partition(p.partition).unwrap().end_offset().unwrap();
        assert_eq!(
            (p.settled_below, p.end_offset),
            (partition_end, partition_end),
            "{context}: partition {}",
            p.partition
        );
    }
    // The run exercised what it means to.
    assert!(run.written > 1_000, "{context}: {} written", run.written);
    assert!(
        reopens > 0 && capped_rounds > 0,
        "{context}: {reopens} reopens, {capped_rounds} rounds that gave all they were asked"
    );
    store.close().unwrap();
}

#[test]
fn scans_deliver_everything_once_in_order_whatever_the_sizes_budgets_and_reopens() {
    let seeds: u64 = std::env::var("TIDELOG_QUEUE_SCAN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for seed in 0..seeds {
        run(0x9e37_79b9 + seed);
    }
}
