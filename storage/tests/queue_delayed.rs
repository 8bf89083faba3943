//! The memory a queue's delayed messages cost, and that they survive a restart.
//!
//! Issue 13 asks that 1,000,000 pending delayed messages cost at most 128 MiB of broker
//! memory (134 bytes each; see [`BYTES_PER_DELAYED_MAX`]). This test publishes `TIDELOG_DELAYED_MESSAGES` messages
//! (default 50,000, so CI stays fast; the 1,000,000 figure in BENCHMARKS.md comes from
//! `TIDELOG_DELAYED_MESSAGES=1000000 cargo test --release -p tidelog-storage --test
//! queue_delayed -- --nocapture`) delayed by an hour, lets a queue take every one of them,
//! and measures the growth of the process's anonymous resident memory (`RssAnon` in
//! /proc/self/status; the log's mapped pages are file-backed and not counted). Its own
//! test binary, so no other test allocates meanwhile.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, SettleAction, SettleRequest, StartAt, admin,
};
use tidelog_storage::{Clock, ManualClock, NewRecord, Store, StoreOptions, TopicConfig};

const START_MS: i64 = 1_700_000_000_000;
const DELAY_MS: u64 = 3_600_000;
/// What a delayed message may cost. Issue 13's target is 128 MiB for 1,000,000 (134
/// bytes each). A delayed message never delivered is kept compact in the queue's state
/// (offset, due time and level: about 30 bytes with the map's nodes, see
/// `queue::state::PendingMap`) plus the engine's timer (about 40): 92 bytes measured
/// at 1,000,000, 105 at 50,000 (the fixed costs spread over fewer). The full entry
/// (about 140 bytes) is built only when the message is leased.
const BYTES_PER_DELAYED_MAX: u64 = 120;

fn rss_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("an RssAnon line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("RssAnon in kB");
    kib * 1024
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Arc<Store> {
    Arc::new(
        Store::open(
            dir,
            StoreOptions {
                clock: clock.clone(),
                flush_threads: 1,
                retention_interval: None,
                flush_observer: None,
                ..StoreOptions::default()
            },
        )
        .expect("opening the store"),
    )
}

/// Runs delivery rounds until the queue took everything (a round scans at least 4,096
/// messages while there are more; the status, which copies the queue's state, is not
/// asked meanwhile).
fn take_all(engine: &mut QueueEngine, messages: u64) {
    for _ in 0..messages / 4096 + 8 {
        let delivered = engine.deliver(&[("m".into(), 1000)]).unwrap();
        assert!(delivered.is_empty(), "nothing is due for an hour");
    }
}

#[test]
fn delayed_messages_cost_a_bounded_amount_each_and_survive_a_restart() {
    let messages: u64 = std::env::var("TIDELOG_DELAYED_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(dir.path(), &clock);
    store
        .create_topic("jobs", 2, TopicConfig::default())
        .unwrap();
    let topic = store.topic("jobs").unwrap();
    // Batches of 100, as publish requests bring them (a redelivery reads its message's
    // whole batch).
    let chunk: Vec<NewRecord> = (0..100)
        .map(|i| NewRecord {
            value: Bytes::from(format!("job-{i:011}")),
            delay_ms: Some(DELAY_MS),
            ..NewRecord::default()
        })
        .collect();
    let mut published = 0;
    while published < messages {
        let n = chunk.len().min((messages - published) as usize);
        let partition = topic.partition((published / 100 % 2) as u32).unwrap();
        partition.append_durable(&chunk[..n]).unwrap();
        published += n as u64;
    }
    admin::create_queue(
        &*store,
        "later",
        "jobs",
        StartAt::Earliest,
        QueueConfig::defaults_for("jobs"),
    )
    .unwrap();

    let before = rss_anon_bytes();
    let mut engine = QueueEngine::open(store.clone(), "later").unwrap();
    engine.member_joined("m");
    take_all(&mut engine, messages);
    let grown = rss_anon_bytes().saturating_sub(before);
    let status = admin::queue_status(&*store, "later", clock.now_ms()).unwrap();
    assert_eq!(status.delayed, messages, "{status:?}");
    eprintln!(
        "{messages} delayed messages: {} MiB of anonymous memory, {} bytes each",
        grown >> 20,
        grown / messages
    );
    assert!(
        grown <= messages * BYTES_PER_DELAYED_MAX,
        "{messages} delayed messages cost {grown} bytes ({} each, at most {BYTES_PER_DELAYED_MAX})",
        grown / messages
    );

    // A restart: the delayed messages are still held. (Memory is not measured again:
    // the allocator keeps what the first half freed, including the copy of the
    // queue's state the status above made, so the process's figure says nothing.)
    drop(engine);
    drop(topic);
    store.close().unwrap();
    drop(store);
    let store = open(dir.path(), &clock);
    let mut engine = QueueEngine::open(store.clone(), "later").unwrap();
    engine.member_joined("m");
    let status = admin::queue_status(&*store, "later", clock.now_ms()).unwrap();
    assert_eq!(status.delayed, messages, "after a restart: {status:?}");
    assert_eq!(status.ready, 0, "after a restart: {status:?}");
    assert!(engine.deliver(&[("m".into(), 1000)]).unwrap().is_empty());
    assert_eq!(engine.next_wakeup(), Some(START_MS + DELAY_MS as i64));

    // Their time comes: they are delivered, first attempts, in batches up to the
    // member's max unacked (the first 10 batches are checked; all of them would take
    // the engine's per-message timer work 200,000 times over in a debug build).
    clock.advance_ms(DELAY_MS as i64);
    let started = std::time::Instant::now();
    engine.tick().unwrap();
    eprintln!("tick with {messages} due: {:?}", started.elapsed());
    let mut delivered = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let batch = engine.deliver(&[("m".into(), 1000)]).unwrap();
        let (_, deliveries) = batch.first().expect("due messages are delivered");
        assert_eq!(deliveries.len(), 1000, "a batch up to max unacked");
        let requests: Vec<_> = deliveries
            .iter()
            .map(|d| {
                assert_eq!(d.attempt, 1);
                assert!(
                    delivered.insert((d.partition, d.record.offset)),
                    "{}:{} delivered twice",
                    d.partition,
                    d.record.offset
                );
                SettleRequest {
                    partition: d.partition,
                    offset: d.record.offset,
                    attempt: d.attempt,
                    action: SettleAction::Ack { through: None },
                }
            })
            .collect();
        engine.settle(Some("m"), &requests).unwrap();
    }
    let status = admin::queue_status(&*store, "later", clock.now_ms()).unwrap();
    assert_eq!(status.delayed, 0, "{status:?}");
    assert_eq!(status.ready, messages - 10_000, "{status:?}");
}
