//! A damaged batch (a CRC mismatch) in one partition of a queue's topic stops the
//! queue's deliveries from that partition only, at the damage, as it stops the log's
//! readers: what is before it is delivered, the other partitions deliver on, lower
//! priority levels too, and the queue reads on by itself once the batch reads again.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::queue::admin::{self, queue_status};
use tidelog_storage::queue::engine::DAMAGE_RETRY_MS;
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, SettleAction, SettleOutcome, SettleRequest, StartAt,
};
use tidelog_storage::{Clock, ManualClock, NewRecord, QueueOverflow, Store, TopicConfig};

mod common;
use common::plain_store;

const START_MS: i64 = 1_700_000_000_000;
/// Partition 0 holds four batches of ten (offsets 0..40), the third (20..30) damaged;
/// partitions 1 and 2 two batches each (0..20).
const DAMAGED_FIRST: u64 = 20;

fn record(partition: u32, offset: u64) -> NewRecord {
    NewRecord {
        value: Bytes::from(format!("p{partition}-{offset}")),
        // Both priority levels in every batch: each level's scan meets the damage.
        priority: (offset % 2) as u8,
        ..NewRecord::default()
    }
}

/// A store whose topic "jobs" (3 partitions, 2 priority levels, `config`) holds the
/// batches above and queue "work" from the start, with a bit of partition 0's batch
/// at offset 20 flipped while the store was closed. Returns the store and how to
/// mend the batch (the file, the byte's position and its original value).
fn damaged_store(dir: &Path, clock: &Arc<ManualClock>, config: TopicConfig) -> (Arc<Store>, Mend) {
    let store = plain_store(dir, clock);
    let topic = store
        .create_topic(
            "jobs",
            3,
            TopicConfig {
                priority_levels: 2,
                ..config
            },
        )
        .unwrap();
    for (partition, batches) in [(0u32, 4u64), (1, 2), (2, 2)] {
        for b in 0..batches {
            let records: Vec<NewRecord> = (b * 10..b * 10 + 10)
                .map(|o| record(partition, o))
                .collect();
            topic
                .partition(partition)
                .unwrap()
                .append_durable(&records)
                .unwrap();
        }
    }
    admin::create_queue(
        &*store,
        "work",
        "jobs",
        StartAt::Earliest,
        QueueConfig::defaults_for("jobs"),
    )
    .unwrap();
    drop(topic);
    store.close().unwrap();
    drop(store);
    let mend = flip_a_bit(dir, DAMAGED_FIRST);
    (plain_store(dir, clock), mend)
}

/// Where a bit was flipped, to flip it back.
struct Mend {
    log: PathBuf,
    position: u64,
    byte: u8,
}

impl Mend {
    /// Writes the original byte back in place (the broker's mapping sees it).
    fn apply(&self) {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.log)
            .unwrap();
        file.seek(SeekFrom::Start(self.position)).unwrap();
        file.write_all(&[self.byte]).unwrap();
        file.sync_all().unwrap();
    }
}

/// Flips a bit of the last record byte of partition 0's batch at `base`.
fn flip_a_bit(dir: &Path, base: u64) -> Mend {
    let pdir = dir.join("topics").join("jobs").join("0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let mut bytes = std::fs::read(&log).unwrap();
        let mut at = 0usize;
        while at < bytes.len() {
            let Ok(header) = tidelog_storage::batch::BatchHeader::parse(&bytes[at..]) else {
                break;
            };
            let length = header.batch_length as usize;
            if header.base_offset == base {
                let position = at + length - 1;
                let byte = bytes[position];
                bytes[position] ^= 0x10;
                std::fs::write(&log, &bytes).unwrap();
                return Mend {
                    log,
                    position: position as u64,
                    byte,
                };
            }
            at += length;
        }
    }
    panic!("no batch at offset {base} in partition 0");
}

/// Delivers to member "m" until nothing comes (or 20 rounds), acks everything
/// delivered, and returns what was delivered.
fn deliver_and_ack(engine: &mut QueueEngine) -> BTreeSet<(u32, u64)> {
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        let delivered = engine
            .deliver(&[("m".to_string(), 1000)])
            .expect("a damaged batch does not fail the queue's deliveries");
        let deliveries: Vec<_> = delivered.into_iter().flat_map(|(_, d)| d).collect();
        if deliveries.is_empty() && !engine.behind() {
            return got;
        }
        let acks: Vec<SettleRequest> = deliveries
            .iter()
            .map(|d| SettleRequest {
                partition: d.partition,
                offset: d.record.offset,
                attempt: d.attempt,
                action: SettleAction::Ack { through: None },
            })
            .collect();
        for (d, outcome) in deliveries
            .iter()
            .zip(engine.settle(Some("m"), &acks).unwrap())
        {
            assert_eq!(outcome, SettleOutcome::Ok { settled: 1 }, "{d:?}");
            assert!(
                got.insert((d.partition, d.record.offset)),
                "delivered twice: {d:?}"
            );
        }
    }
    panic!("the queue kept delivering (or stayed behind) for 20 rounds: {got:?}");
}

fn offsets(partition: u32, range: std::ops::Range<u64>) -> BTreeSet<(u32, u64)> {
    range.map(|o| (partition, o)).collect()
}

#[test]
fn a_damaged_batch_stops_its_partition_only_and_the_queue_reads_on_once_it_is_mended() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mend) = damaged_store(dir.path(), &clock, TopicConfig::default());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");

    // Partition 0 up to the damage, partitions 1 and 2 whole, both levels.
    let mut want = offsets(0, 0..DAMAGED_FIRST);
    want.extend(offsets(1, 0..20));
    want.extend(offsets(2, 0..20));
    assert_eq!(deliver_and_ack(&mut engine), want);
    let damaged = engine.damaged();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(
        (damaged[0].partition, damaged[0].offset),
        (0, DAMAGED_FIRST)
    );
    assert!(damaged[0].reason.contains("corrupt"), "{damaged:?}");
    assert_eq!(damaged[0].since_ms, START_MS);
    let status = queue_status(&*store, "work", clock.now_ms()).unwrap();
    let settled: Vec<(u32, u64)> = status
        .partitions
        .iter()
        .map(|p| (p.partition, p.settled_below))
        .collect();
    assert_eq!(settled, vec![(0, DAMAGED_FIRST), (1, 20), (2, 20)]);
    assert_eq!(status.ready, 40 - DAMAGED_FIRST);

    // The healthy partitions go on serving new messages.
    let topic = store.topic("jobs").unwrap();
    let records: Vec<NewRecord> = (20..25).map(|o| record(2, o)).collect();
    topic
        .partition(2)
        .unwrap()
        .append_durable(&records)
        .unwrap();
    assert_eq!(deliver_and_ack(&mut engine), offsets(2, 20..25));

    // Mended in place: read again after the retry interval, not every round.
    mend.apply();
    clock.advance_ms(DAMAGE_RETRY_MS - 1);
    assert_eq!(deliver_and_ack(&mut engine), BTreeSet::new());
    assert_eq!(engine.damaged().len(), 1);
    clock.advance_ms(1);
    assert_eq!(deliver_and_ack(&mut engine), offsets(0, DAMAGED_FIRST..40));
    assert_eq!(engine.damaged(), vec![]);
    let status = queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 0);
    drop(engine);
    drop(topic);
    store.close().unwrap();
}

/// The overflow pass (dead-letter-oldest) stops at the damage too: it dead-letters
/// the oldest messages it can read, in every partition, and fails nothing.
#[test]
fn the_overflow_pass_passes_over_a_damaged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let config = TopicConfig {
        queue_max_ready_messages: Some(10),
        queue_overflow: QueueOverflow::DeadLetterOldest,
        ..TopicConfig::default()
    };
    let (store, _mend) = damaged_store(dir.path(), &clock, config);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    // 80 ready, 10 allowed: 70 to go, of which only the 60 before the damage or in
    // the healthy partitions can be read (20 + 20 + 20).
    let dropped = engine
        .enforce_caps()
        .expect("a damaged batch does not fail the overflow pass");
    assert_eq!(dropped, 60);
    assert_eq!(engine.damaged().len(), 1);
    let dlq = store.topic("jobs.dlq").unwrap();
    assert_eq!(
        dlq.partitions()
            .iter()
            .map(|p| p.end_offset().unwrap())
            .sum::<u64>(),
        60
    );
    drop(engine);
    store.close().unwrap();
}
