//! Work queues in the storage engine: the delivery engine against a simple model, with
//! random deliveries, acks, nacks, terms, extensions, members leaving, deadlines
//! passing (a ManualClock: nothing sleeps), process kills and power cuts (FaultyFs);
//! then priority, delay and redrive on their own. `TIDELOG_QUEUE_SEEDS=N` runs more
//! seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault};
use tidelog_storage::queue::admin::{self, DLQ_HEADER_OFFSET, DLQ_HEADER_PARTITION};
use tidelog_storage::queue::history::Outcome;
use tidelog_storage::queue::{
    Delivery, Hold, QueueConfig, QueueEngine, QueueOp, SettleAction, SettleOutcome, SettleRequest,
    StartAt,
};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{Clock, ManualClock, NewRecord, Store, TopicConfig};

mod common;
use common::faulty_store as open;
use common::plain_store as plain_store_reopened;

const START_MS: i64 = 1_700_000_000_000;
const PARTITIONS: u32 = 2;
const MESSAGES: u64 = 60;

fn config() -> QueueConfig {
    QueueConfig {
        ack_deadline_ms: 1_000,
        max_deliveries: 3,
        backoff_initial_ms: 100,
        backoff_max_ms: 400,
        ..QueueConfig::defaults_for("jobs")
    }
}

/// What the test knows of one message.
#[derive(Debug, Clone, Default)]
struct Known {
    deliver_at: Option<i64>,
    /// Deliveries the test saw (durable: deliver returns after the state log).
    attempts: u32,
    /// Held now by (member, attempt, deadline), as far as the test knows.
    held: Option<(String, u32, i64)>,
    acked: bool,
    dead: bool,
}

struct Model {
    messages: BTreeMap<(u32, u64), Known>,
    connected: BTreeSet<String>,
}

fn publish(store: &Store, rng: &mut Rng, model: &mut Model) {
    let topic = store.topic("jobs").unwrap();
    for i in 0..MESSAGES {
        let partition = (i % u64::from(PARTITIONS)) as u32;
        let deliver_at = (rng.below(5) == 0).then(|| START_MS + rng.below(3_000) as i64);
        let record = NewRecord {
            value: Bytes::from(format!("job-{i}")),
            priority: rng.below(3) as u8,
            deliver_at_ms: deliver_at,
            ..NewRecord::default()
        };
        let appended = topic
            .partition(partition)
            .unwrap()
            .append_durable(&[record])
            .unwrap();
        model.messages.insert(
            (partition, appended.base_offset),
            Known {
                deliver_at,
                ..Known::default()
            },
        );
    }
}

/// Checks one delivery against what the test knows, and records it.
fn check_delivery(model: &mut Model, member: &str, d: &Delivery, now: i64, context: &str) {
    let (partition, offset, attempt, deadline) =
        (d.partition, d.record.offset, d.attempt, d.deadline_ms);
    let known = model
        .messages
        .get_mut(&(partition, offset))
        .unwrap_or_else(|| panic!("{context}: delivered unknown {partition}/{offset}"));
    assert!(
        !known.acked,
        "{context}: {partition}/{offset} delivered after its ack"
    );
    assert!(
        !known.dead,
        "{context}: {partition}/{offset} delivered after it was dead-lettered"
    );
    assert!(
        attempt > known.attempts,
        "{context}: {partition}/{offset} attempt {attempt} after {} seen",
        known.attempts
    );
    assert!(
        attempt <= config().max_deliveries,
        "{context}: attempt {attempt} over the max"
    );
    if let Some((holder, _, held_deadline)) = &known.held {
        assert!(
            !model.connected.contains(holder) || *held_deadline <= now,
            "{context}: {partition}/{offset} delivered to {member} while {holder} holds it until {held_deadline} (now {now})"
        );
    }
    if let Some(at) = known.deliver_at {
        assert!(
            now >= at,
            "{context}: {partition}/{offset} delivered at {now} before {at}"
        );
    }
    known.attempts = attempt;
    known.held = Some((member.to_string(), attempt, deadline));
}

/// Dead letters in the DLQ topic, by their source (partition, offset).
fn dead_letters(store: &Store) -> BTreeSet<(u32, u64)> {
    let Ok(dlq) = store.topic("jobs.dlq") else {
        return BTreeSet::new();
    };
    let mut letters = BTreeSet::new();
    let partition = dlq.partition(0).unwrap();
    let mut next = partition.log_start().unwrap();
    while next < partition.end_offset().unwrap() {
        let read = partition.read(next, 1000, u64::MAX).unwrap();
        for record in read.records {
            let header = |key: &str| -> u64 {
                let value = &record.headers.iter().find(|h| h.key == key).unwrap().value;
                std::str::from_utf8(value).unwrap().parse().unwrap()
            };
            letters.insert((
                header(DLQ_HEADER_PARTITION) as u32,
                header(DLQ_HEADER_OFFSET),
            ));
        }
        next = read.next_offset;
    }
    letters
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), seed).unwrap();
    let clock = ManualClock::new(START_MS);
    let mut rng = Rng::new(seed);
    let mut model = Model {
        messages: BTreeMap::new(),
        connected: BTreeSet::new(),
    };
    let mut store = open(&fs, &data, &clock);
    store
        .create_topic(
            "jobs",
            PARTITIONS,
            TopicConfig {
                priority_levels: 3,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    publish(&store, &mut rng, &mut model);
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    let members = ["a", "b", "c"];
    // What the run did, so a seed that exercises nothing fails.
    let (mut deliveries_seen, mut settled_seen, mut crashes) = (0u64, 0u64, 0u64);

    for step in 0..400 {
        let context = format!("seed {seed} step {step}");
        let now = clock.now_ms();
        match rng.below(20) {
            0..=5 => {
                let member = members[rng.below(3) as usize];
                if !model.connected.contains(member) {
                    engine.member_joined(member);
                    model.connected.insert(member.to_string());
                }
                let want = 1 + rng.below(6) as u32;
                for (who, deliveries) in engine.deliver(&[(member.to_string(), want)]).unwrap() {
                    assert!(deliveries.len() <= want as usize);
                    deliveries_seen += deliveries.len() as u64;
                    for d in deliveries {
                        check_delivery(&mut model, &who, &d, now, &context);
                    }
                }
            }
            6..=10 => {
                // Settle some of what the test believes is held.
                let held: Vec<((u32, u64), String, u32)> = model
                    .messages
                    .iter()
                    .filter_map(|(k, m)| m.held.clone().map(|(who, attempt, _)| (*k, who, attempt)))
                    .collect();
                if held.is_empty() {
                    continue;
                }
                let ((partition, offset), holder, attempt) =
                    held[rng.below(held.len() as u64) as usize].clone();
                let action = match rng.below(6) {
                    0..=2 => SettleAction::Ack { through: None },
                    3 => SettleAction::Nack {
                        delay_ms: None,
                        reason: "busy".into(),
                    },
                    4 => SettleAction::InProgress { extend_ms: None },
                    _ => SettleAction::Term {
                        reason: "poison".into(),
                    },
                };
                let outcome = engine
                    .settle(
                        Some(&holder),
                        &[SettleRequest {
                            partition,
                            offset,
                            attempt,
                            action: action.clone(),
                        }],
                    )
                    .unwrap();
                if matches!(outcome[0], SettleOutcome::Ok { .. }) {
                    settled_seen += 1;
                }
                let known = model.messages.get_mut(&(partition, offset)).unwrap();
                match outcome[0] {
                    SettleOutcome::Ok { .. } => match action {
                        SettleAction::Ack { .. } => {
                            known.acked = true;
                            known.held = None;
                        }
                        SettleAction::Term { .. } => {
                            known.dead = true;
                            known.held = None;
                        }
                        SettleAction::Nack { .. } => {
                            if attempt >= config().max_deliveries {
                                known.dead = true;
                            }
                            known.held = None;
                        }
                        SettleAction::InProgress { .. } => {
                            if let Some(held) = known.held.as_mut() {
                                held.2 = now + config().ack_deadline_ms as i64;
                            }
                        }
                    },
                    // The engine gave it up already (deadline or member left): stale is right
                    // only if that could have happened.
                    SettleOutcome::Stale(_) | SettleOutcome::NotFound(_) => {
                        let (_, _, deadline) = known.held.clone().unwrap();
                        assert!(
                            deadline <= now || !model.connected.contains(&holder),
                            "{context}: a live lease was refused: {:?}",
                            outcome[0]
                        );
                        known.held = None;
                    }
                    SettleOutcome::Invalid(ref e)
                    | SettleOutcome::Refused(ref e)
                    | SettleOutcome::Unavailable(ref e) => panic!("{context}: {e}"),
                }
            }
            11..=13 => {
                clock.advance_ms(rng.below(1_500) as i64);
                engine.tick().unwrap();
                let now = clock.now_ms();
                // Every message whose (re)delivery has come is in the engine's due set:
                // none is forgotten until a restart rebuilds the timers.
                let ready_in_state = store.queues().read(|q| {
                    q.get("work").map_or(0, |queue| {
                        queue
                            .partitions
                            .values()
                            .flat_map(|p| p.pending.iter())
                            .filter(|(_, p)| match p.hold {
                                Hold::Waiting { due_ms } | Hold::Delayed { due_ms } => {
                                    due_ms <= now
                                }
                                Hold::Leased { .. } => false,
                            })
                            .count()
                    })
                });
                assert_eq!(
                    engine.due_count(),
                    ready_in_state,
                    "{context}: due messages the engine does not know of"
                );
                for known in model.messages.values_mut() {
                    if known
                        .held
                        .as_ref()
                        .is_some_and(|(_, _, deadline)| *deadline <= now)
                    {
                        known.held = None;
                    }
                }
            }
            14 => {
                let member = members[rng.below(3) as usize];
                if model.connected.remove(member) {
                    engine.member_left(member);
                    engine.tick().unwrap();
                    for known in model.messages.values_mut() {
                        if known.held.as_ref().is_some_and(|(who, _, _)| who == member) {
                            known.held = None;
                        }
                    }
                }
            }
            15 => {
                // A crash: a killed process, or a power cut that loses what no fsync
                // covered. Every delivery and settlement the test saw was durable.
                drop(engine);
                let store_owned = Arc::try_unwrap(store).expect("the engine is gone");
                store_owned.simulate_crash();
                if rng.below(2) == 0 {
                    fs.kill_process();
                } else {
                    fs.crash(CrashOptions::lose_unsynced()).unwrap();
                }
                store = open(&fs, &data, &clock);
                engine = QueueEngine::open(store.clone(), "work").unwrap();
                model.connected.clear();
                for known in model.messages.values_mut() {
                    known.held = None;
                }
                crashes += 1;
            }
            _ => {
                engine.tick().unwrap();
            }
        }
    }

    assert!(
        deliveries_seen >= 20 && settled_seen >= 10 && crashes >= 3,
        "seed {seed} exercised too little: {deliveries_seen} deliveries, {settled_seen} settlements, {crashes} crashes"
    );
    // Drain: one member settles everything; every message ends acked or dead-lettered.
    engine.member_joined("drain");
    for round in 0..400 {
        clock.advance_ms(500);
        engine.tick().unwrap();
        let now = clock.now_ms();
        let delivered = engine.deliver(&[("drain".to_string(), 50)]).unwrap();
        for (_, deliveries) in delivered {
            for d in deliveries {
                check_delivery(
                    &mut model,
                    "drain",
                    &d,
                    now,
                    &format!("seed {seed} drain round {round}"),
                );
                let outcome = engine
                    .settle(
                        Some("drain"),
                        &[SettleRequest {
                            partition: d.partition,
                            offset: d.record.offset,
                            attempt: d.attempt,
                            action: SettleAction::Ack { through: None },
                        }],
                    )
                    .unwrap();
                assert_eq!(outcome[0], SettleOutcome::Ok { settled: 1 });
                let known = model
                    .messages
                    .get_mut(&(d.partition, d.record.offset))
                    .unwrap();
                known.acked = true;
                known.held = None;
            }
        }
        if store.queues().read(|q| q.pending_total()) == 0
            && model
                .messages
                .values()
                .all(|m| m.acked || m.dead || m.attempts >= config().max_deliveries)
            && admin::queue_status(&*store, "work", now).unwrap().ready == 0
        {
            break;
        }
    }
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.ready, status.unacked, status.waiting, status.delayed),
        (0, 0, 0, 0),
        "seed {seed}: the queue did not drain: {status:?}"
    );
    let letters = dead_letters(&store);
    for (key, known) in &model.messages {
        assert!(
            known.acked || letters.contains(key),
            "seed {seed}: {key:?} was neither acked nor dead-lettered: {known:?}"
        );
        assert!(
            !(known.acked && letters.contains(key) && !known.dead),
            "seed {seed}: {key:?} acked and dead-lettered"
        );
        if known.dead {
            assert!(
                letters.contains(key),
                "seed {seed}: {key:?} lost its dead letter"
            );
        }
    }
}

#[test]
fn deliveries_settlements_deadlines_and_crashes_against_a_model() {
    let seeds: u64 = std::env::var("TIDELOG_QUEUE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for seed in 0..seeds {
        run(seed);
    }
}

fn plain_store(dir: &Path, clock: &Arc<ManualClock>, levels: u8) -> Arc<Store> {
    let store = plain_store_reopened(dir, clock);
    store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                priority_levels: levels,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    store
}

#[test]
fn a_high_priority_message_goes_first_whatever_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 10);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let backlog: Vec<NewRecord> = (0..20_000)
        .map(|i| NewRecord::value(format!("low-{i}")))
        .collect();
    for chunk in backlog.chunks(5_000) {
        partition.append_durable(chunk).unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    // Before any priority-0 message goes out, every higher level looks through the log
    // (a scan budget per round; `behind` says to call again).
    let mut rounds = 0;
    let first = loop {
        rounds += 1;
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        if let Some((_, deliveries)) = delivered.first() {
            break deliveries[0].record.offset;
        }
        assert!(
            engine.behind(),
            "round {rounds}: nothing delivered and not behind"
        );
    };
    assert_eq!(first, 0);
    assert!(
        rounds > 1,
        "the higher levels had the backlog to look through"
    );
    let urgent = partition
        .append_durable(&[NewRecord {
            value: Bytes::from_static(b"urgent"),
            priority: 9,
            ..NewRecord::default()
        }])
        .unwrap()
        .base_offset;
    // The level-9 reader is at the end: the new priority-9 message goes before the
    // 19,999 priority-0 messages still waiting.
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(
        delivered[0].1[0].record.offset, urgent,
        "the priority-9 message is the next delivered"
    );
}

#[test]
fn a_delayed_message_waits_for_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition
        .append_durable(&[
            NewRecord {
                value: Bytes::from_static(b"later"),
                delay_ms: Some(5_000),
                ..NewRecord::default()
            },
            NewRecord::value("now"),
        ])
        .unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let first: Vec<u64> = engine.deliver(&[("m".into(), 10)]).unwrap()[0]
        .1
        .iter()
        .map(|d| d.record.offset)
        .collect();
    assert_eq!(first, vec![1], "the delayed message is held back");
    engine
        .settle(
            Some("m"),
            &[SettleRequest {
                partition: 0,
                offset: 1,
                attempt: 1,
                action: SettleAction::Ack { through: None },
            }],
        )
        .unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.delayed, 1);
    clock.advance_ms(4_999);
    engine.tick().unwrap();
    assert!(engine.deliver(&[("m".into(), 10)]).unwrap().is_empty());
    assert_eq!(engine.next_wakeup(), Some(START_MS + 5_000));
    clock.advance_ms(1);
    engine.tick().unwrap();
    let later = engine.deliver(&[("m".into(), 10)]).unwrap();
    assert_eq!(later[0].1[0].record.offset, 0);
    assert_eq!(later[0].1[0].attempt, 1);
}

#[test]
fn dead_letters_carry_their_story_and_redrive_brings_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition
        .append_durable(&[NewRecord {
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(b"poison"),
            ..NewRecord::default()
        }])
        .unwrap();
    let config = QueueConfig {
        max_deliveries: 2,
        ..config()
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    for attempt in 1..=2 {
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        assert_eq!(delivered[0].1[0].attempt, attempt);
        engine
            .settle(
                Some("m"),
                &[SettleRequest {
                    partition: 0,
                    offset: 0,
                    attempt,
                    action: SettleAction::Nack {
                        delay_ms: Some(10),
                        reason: format!("failure {attempt}"),
                    },
                }],
            )
            .unwrap();
        clock.advance_ms(10);
        engine.tick().unwrap();
    }
    assert!(engine.deliver(&[("m".into(), 1)]).unwrap().is_empty());
    let dlq = store.topic("jobs.dlq").unwrap();
    let letter = &dlq
        .partition(0)
        .unwrap()
        .read(0, 10, u64::MAX)
        .unwrap()
        .records[0];
    let header = |key: &str| {
        String::from_utf8(
            letter
                .headers
                .iter()
                .find(|h| h.key == key)
                .unwrap()
                .value
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(&letter.value[..], b"poison");
    assert_eq!(header("tidelog-dlq-attempts"), "2");
    assert_eq!(header("tidelog-dlq-queue"), "work");
    assert!(
        header("tidelog-dlq-reason").contains("failure 2"),
        "{}",
        header("tidelog-dlq-reason")
    );

    let (moved, remaining) = admin::redrive_queue(&*store, "work", 0).unwrap();
    assert_eq!((moved, remaining), (1, 0));
    let back = partition.read(1, 10, u64::MAX).unwrap().records;
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0].value[..], b"poison");
    assert!(
        back[0]
            .headers
            .iter()
            .all(|h| !h.key.starts_with("tidelog-dlq"))
    );
    assert_eq!(
        admin::redrive_queue(&*store, "work", 0).unwrap(),
        (0, 0),
        "nothing twice"
    );
    // Delivered again as a new message, attempt 1.
    let again = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!((again[0].1[0].record.offset, again[0].1[0].attempt), (1, 1));
}

/// Redrives at once (a client's retry while its first call runs, two operators) move
/// each dead letter back once between them: 300 letters, four redrives started
/// together, 300 moved in all and 300 messages back on the topic (each redrive used to
/// read the same position and publish all 300).
#[test]
fn redrives_at_once_move_each_dead_letter_back_once() {
    const LETTERS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let records: Vec<NewRecord> = (0..LETTERS)
        .map(|i| NewRecord::value(Bytes::from(format!("m-{i}"))))
        .collect();
    partition.append_durable(&records).unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = delivered_all(&mut engine, "m", LETTERS as usize);
    let terms: Vec<SettleRequest> = delivered
        .iter()
        .map(|d| SettleRequest {
            partition: 0,
            offset: d.record.offset,
            attempt: d.attempt,
            action: SettleAction::Term {
                reason: "poison".into(),
            },
        })
        .collect();
    engine.settle(Some("m"), &terms).unwrap();
    assert_eq!(
        store
            .topic("jobs.dlq")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap(),
        LETTERS
    );
    let start = std::sync::Barrier::new(4);
    let moved: u64 = std::thread::scope(|scope| {
        let redrives: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    admin::redrive_queue(&*store, "work", 1_000).unwrap().0
                })
            })
            .collect();
        redrives.into_iter().map(|r| r.join().unwrap()).sum()
    });
    assert_eq!(moved, LETTERS);
    assert_eq!(
        partition.end_offset().unwrap(),
        2 * LETTERS,
        "each letter back once"
    );
}

/// Every delivery a round makes to `member`, in rounds of at most 1,000, until `count`.
fn delivered_all(engine: &mut QueueEngine, member: &str, count: usize) -> Vec<Delivery> {
    let mut all = Vec::new();
    while all.len() < count {
        let round = engine
            .deliver(&[(member.into(), (count - all.len()).min(1_000) as u32)])
            .unwrap();
        let got: Vec<Delivery> = round.into_iter().flat_map(|(_, d)| d).collect();
        assert!(!got.is_empty(), "{} of {count} delivered", all.len());
        all.extend(got);
    }
    all
}

/// The one-partition store of [`plain_store`] with topic `jobs` at its default
/// `max_message_bytes` (1 MiB), three messages of exactly that size, and a queue on
/// it with `max_deliveries` 1 whose member `m` holds all three.
fn three_held_at_the_limit(dir: &Path, clock: &Arc<ManualClock>) -> (Arc<Store>, QueueEngine) {
    let store = plain_store(dir, clock, 0);
    let limit = TopicConfig::default().max_message_bytes as usize;
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for i in 0..3u8 {
        partition
            .append_durable(&[NewRecord::value(vec![b'a' + i; limit])])
            .unwrap();
    }
    let queue_config = QueueConfig {
        max_deliveries: 1,
        ..config()
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 3)]).unwrap();
    assert_eq!(delivered[0].1.len(), 3);
    (store, engine)
}

fn settle_one(offset: u64, action: SettleAction) -> SettleRequest {
    SettleRequest {
        partition: 0,
        offset,
        attempt: 1,
        action,
    }
}

#[test]
fn a_message_at_its_topics_limit_is_dead_lettered_by_nack_term_and_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mut engine) = three_held_at_the_limit(dir.path(), &clock);
    // A nack on the last attempt and a term (with a reason past the longest kept), in
    // one call: each dead-lettered, though its letter is over the dead-letter topic's
    // max_message_bytes (the same 1 MiB) by the headers the broker added.
    let outcomes = engine
        .settle(
            Some("m"),
            &[
                settle_one(
                    0,
                    SettleAction::Nack {
                        delay_ms: None,
                        reason: "bad".into(),
                    },
                ),
                settle_one(
                    1,
                    SettleAction::Term {
                        reason: "x".repeat(5_000),
                    },
                ),
            ],
        )
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            SettleOutcome::Ok { settled: 1 },
            SettleOutcome::Ok { settled: 1 }
        ]
    );
    // The third by its deadline.
    clock.advance_ms(config().ack_deadline_ms as i64);
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.ready, status.unacked, status.waiting),
        (0, 0, 0),
        "{status:?}"
    );
    assert_eq!(status.partitions[0].settled_below, 3, "all three settled");

    let limit = TopicConfig::default().max_message_bytes;
    let dlq = store.topic("jobs.dlq").unwrap();
    assert_eq!(dlq.config().max_message_bytes, limit);
    let letters = dlq
        .partition(0)
        .unwrap()
        .read(0, 10, u64::MAX)
        .unwrap()
        .records;
    assert_eq!(letters.len(), 3);
    for (i, letter) in letters.iter().enumerate() {
        assert_eq!(letter.value.len() as u64, limit);
        assert_eq!(letter.value[0], b'a' + i as u8);
        let offset = letter
            .headers
            .iter()
            .find(|h| h.key == DLQ_HEADER_OFFSET)
            .unwrap();
        assert_eq!(&offset.value[..], i.to_string().as_bytes());
        let size = letter.payload_bytes();
        assert!(
            size > limit && size <= limit + admin::DLQ_HEADERS_BYTES_MAX,
            "letter {i}: {size} bytes"
        );
    }
    // Redrive takes the headers off: the messages fit their topic again.
    assert_eq!(admin::redrive_queue(&*store, "work", 0).unwrap(), (3, 0));
    let back = store
        .topic("jobs")
        .unwrap()
        .partition(0)
        .unwrap()
        .read(3, 10, u64::MAX)
        .unwrap()
        .records;
    assert_eq!(back.len(), 3);
    assert!(back.iter().all(|r| r.payload_bytes() == limit));
}

#[test]
fn a_dead_letter_refused_for_good_sends_the_message_back_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // A dead-letter topic that refuses the letters: its limit (with the allowance
    // for the headers) is far below the messages' size, an operator's choice.
    let store = plain_store(dir.path(), &clock, 0);
    store
        .create_topic(
            "jobs.dlq",
            1,
            TopicConfig {
                max_message_bytes: 100,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    drop(store);
    let store = plain_store_reopened(dir.path(), &clock);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for _ in 0..3 {
        partition
            .append_durable(&[NewRecord::value(vec![b'z'; 5_000])])
            .unwrap();
    }
    let queue_config = QueueConfig {
        max_deliveries: 1,
        ..config()
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(engine.deliver(&[("m".into(), 3)]).unwrap()[0].1.len(), 3);
    // A term and a last nack the dead-letter topic refuses, and an ack, in one call:
    // the ack is done, the other two are refused each on its own and released.
    let outcomes = engine
        .settle(
            Some("m"),
            &[
                settle_one(
                    0,
                    SettleAction::Term {
                        reason: "give up".into(),
                    },
                ),
                settle_one(1, SettleAction::Ack { through: None }),
                settle_one(
                    2,
                    SettleAction::Nack {
                        delay_ms: Some(0),
                        reason: "bad".into(),
                    },
                ),
            ],
        )
        .unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Refused(m) if m.contains("max_message_bytes")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], SettleOutcome::Ok { settled: 1 });
    assert!(
        matches!(&outcomes[2], SettleOutcome::Refused(_)),
        "{outcomes:?}"
    );
    assert_eq!(engine.unacked("m"), 0);
    // Delivered again after the backoff, not held by nobody forever.
    clock.advance_ms(config().backoff_max_ms as i64);
    engine.tick().unwrap();
    let again = engine.deliver(&[("m".into(), 3)]).unwrap();
    let mut offsets: Vec<(u64, u32)> = again[0]
        .1
        .iter()
        .map(|d| (d.record.offset, d.attempt))
        .collect();
    offsets.sort();
    assert_eq!(offsets, vec![(0, 2), (2, 2)]);
    // Its deadline passing does the same: the lease is given up, the message waits.
    clock.advance_ms(config().ack_deadline_ms as i64);
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.waiting), (0, 2), "{status:?}");
    assert!(
        store
            .topic("jobs.dlq")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap()
            == 0
    );
    // After a restart the same: waiting, then delivered again.
    drop(engine);
    drop(store);
    let store = plain_store_reopened(dir.path(), &clock);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    clock.advance_ms(config().backoff_max_ms as i64);
    engine.tick().unwrap();
    assert_eq!(engine.deliver(&[("m".into(), 3)]).unwrap()[0].1.len(), 2);
    // The operator's way out: purge settles them.
    assert_eq!(admin::purge_queue(&*store, "work").unwrap(), 2);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.waiting, status.ready), (0, 0, 0));
}

/// A store whose topic `jobs` caps each queue at 5 ready messages under `overflow`,
/// with 5 messages and a queue whose member `slow` holds offset 0 while `fast` took
/// offsets 1-4 and acked them: 0 ready, 1 unacked.
fn one_held_under_a_cap_of_five(
    dir: &Path,
    clock: &Arc<ManualClock>,
    overflow: tidelog_storage::QueueOverflow,
) -> (Arc<Store>, QueueEngine) {
    let store = plain_store_reopened(dir, clock);
    store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                queue_max_ready_messages: Some(5),
                queue_overflow: overflow,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for i in 0..5 {
        partition
            .append_durable(&[NewRecord::value(format!("m{i}"))])
            .unwrap();
    }
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("slow");
    engine.member_joined("fast");
    assert_eq!(engine.deliver(&[("slow".into(), 1)]).unwrap()[0].1.len(), 1);
    assert_eq!(engine.deliver(&[("fast".into(), 4)]).unwrap()[0].1.len(), 4);
    let outcomes = engine
        .settle(
            Some("fast"),
            &[SettleRequest {
                partition: 0,
                offset: 1,
                attempt: 0,
                action: SettleAction::Ack { through: Some(4) },
            }],
        )
        .unwrap();
    assert_eq!(outcomes, vec![SettleOutcome::Ok { settled: 4 }]);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (0, 1), "{status:?}");
    (store, engine)
}

#[test]
fn the_reject_cap_counts_ready_messages_not_held_nor_acked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, _engine) =
        one_held_under_a_cap_of_five(dir.path(), &clock, tidelog_storage::QueueOverflow::Reject);
    let topic = store.topic("jobs").unwrap();
    // 0 ready: room for 5 more, not for 6.
    assert_eq!(admin::over_caps(&*store, &topic, 5, 10).unwrap(), None);
    let over = admin::over_caps(&*store, &topic, 6, 12).unwrap().unwrap();
    assert_eq!(over.ready_messages, 0);
    let partition = topic.partition(0).unwrap().clone();
    for i in 0..5 {
        partition
            .append_durable(&[NewRecord::value(format!("n{i}"))])
            .unwrap();
    }
    let over = admin::over_caps(&*store, &topic, 1, 2).unwrap().unwrap();
    assert_eq!(over.ready_messages, 5, "{over:?}");
    assert_eq!(over.cap, "queue_max_ready_messages 5");
}

#[test]
fn the_dead_letter_oldest_cap_counts_by_the_same_rule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mut engine) = one_held_under_a_cap_of_five(
        dir.path(),
        &clock,
        tidelog_storage::QueueOverflow::DeadLetterOldest,
    );
    assert_eq!(engine.enforce_caps().unwrap(), 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for i in 0..7 {
        partition
            .append_durable(&[NewRecord::value(format!("n{i}"))])
            .unwrap();
    }
    // 7 ready, cap 5: the two oldest ready ones go, not the held one.
    assert_eq!(engine.enforce_caps().unwrap(), 2);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (5, 1), "{status:?}");
    let letters = store
        .topic("jobs.dlq")
        .unwrap()
        .partition(0)
        .unwrap()
        .read(0, 10, u64::MAX)
        .unwrap()
        .records;
    let values: Vec<&[u8]> = letters.iter().map(|r| &r.value[..]).collect();
    assert_eq!(values, vec![&b"n0"[..], b"n1"]);
}

#[test]
fn purge_reports_every_message_it_settled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    // 0-1 taken and delayed, 2-4 held, 5-6 nacked and waiting, 7-9 never taken.
    for i in 0..10u64 {
        partition
            .append_durable(&[NewRecord {
                value: Bytes::from(format!("m{i}")),
                delay_ms: (i < 2).then_some(60_000),
                ..NewRecord::default()
            }])
            .unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 5)]).unwrap();
    assert_eq!(delivered[0].1.len(), 5);
    for offset in 5..7 {
        engine
            .settle(
                Some("m"),
                &[SettleRequest {
                    partition: 0,
                    offset,
                    attempt: 1,
                    action: SettleAction::Nack {
                        delay_ms: Some(60_000),
                        reason: "later".into(),
                    },
                }],
            )
            .unwrap();
    }
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.unacked, status.waiting, status.delayed, status.ready),
        (3, 2, 2, 3),
        "{status:?}"
    );
    assert_eq!(admin::purge_queue(&*store, "work").unwrap(), 10);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(
        (status.unacked, status.waiting, status.delayed, status.ready),
        (0, 0, 0, 0)
    );
    assert_eq!(
        admin::purge_queue(&*store, "work").unwrap(),
        0,
        "nothing twice"
    );
}

/// What a purge settled no longer counts as held by its members once the engine
/// counts again (`QueueEngine::recount_held`, which the broker calls after every
/// PurgeQueue): a member at its cap has its room back. Leases made after the purge
/// count, as do the engine's own; leases restored from before the engine opened do
/// not, nor do members that left.
#[test]
fn a_purge_gives_members_back_the_room_its_settled_deliveries_took() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let publish = |count: u64| {
        let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
        for i in 0..count {
            partition
                .append_durable(&[NewRecord::value(format!("m{i}"))])
                .unwrap();
        }
    };
    publish(6);
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    // Offset 0 leased by an engine of an earlier run: restored in the next one.
    let mut earlier = QueueEngine::open(store.clone(), "work").unwrap();
    earlier.member_joined("m");
    assert_eq!(earlier.deliver(&[("m".into(), 1)]).unwrap()[0].1.len(), 1);
    drop(earlier);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    for member in ["m", "other", "leaver"] {
        engine.member_joined(member);
    }
    let wants = [("m".into(), 3), ("other".into(), 1), ("leaver".into(), 1)];
    assert_eq!(
        engine
            .deliver(&wants)
            .unwrap()
            .iter()
            .map(|(_, d)| d.len())
            .sum::<usize>(),
        5
    );
    engine.member_left("leaver");
    let held = |engine: &QueueEngine| ["m", "other", "leaver"].map(|member| engine.unacked(member));
    // Counting again from the state changes nothing the engine did itself.
    assert_eq!(held(&engine), [3, 1, 0]);
    engine.recount_held();
    assert_eq!(held(&engine), [3, 1, 0]);

    assert_eq!(admin::purge_queue(&*store, "work").unwrap(), 6);
    engine.recount_held();
    assert_eq!(held(&engine), [0, 0, 0], "the purge settled every delivery");
    // New messages go to them, and count as ever.
    publish(4);
    engine.tick().unwrap();
    let delivered = engine
        .deliver(&[("m".into(), 3), ("other".into(), 3)])
        .unwrap();
    assert_eq!(delivered.iter().map(|(_, d)| d.len()).sum::<usize>(), 4);
    assert_eq!(held(&engine), [2, 2, 0]);
    engine.recount_held();
    assert_eq!(held(&engine), [2, 2, 0]);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.ready), (4, 0), "{status:?}");
}

#[test]
fn an_ack_range_ending_below_its_offset_is_invalid_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for i in 0..3 {
        partition
            .append_durable(&[NewRecord::value(format!("m{i}"))])
            .unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(engine.deliver(&[("m".into(), 3)]).unwrap()[0].1.len(), 3);
    let outcomes = engine
        .settle(
            Some("m"),
            &[
                settle_one(2, SettleAction::Ack { through: Some(1) }),
                settle_one(0, SettleAction::Ack { through: Some(0) }),
            ],
        )
        .unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Invalid(m) if m.contains("through_offset 1")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], SettleOutcome::Ok { settled: 1 });
    assert_eq!(engine.unacked("m"), 2, "offsets 1 and 2 still held");
}

/// A FaultyFs store with topic `jobs` (1 MiB max_message_bytes), one message of
/// exactly that size, and a queue (max_deliveries 1) whose member `m` holds it, all
/// durable.
fn big_one_held(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> (Arc<Store>, QueueEngine) {
    let store = open(fs, data, clock);
    store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    let limit = TopicConfig::default().max_message_bytes as usize;
    store
        .topic("jobs")
        .unwrap()
        .partition(0)
        .unwrap()
        .append_durable(&[NewRecord::value(vec![b'q'; limit])])
        .unwrap();
    let queue_config = QueueConfig {
        max_deliveries: 1,
        ..config()
    };
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(engine.deliver(&[("m".into(), 1)]).unwrap()[0].1.len(), 1);
    (store, engine)
}

/// The dead letters of `store`'s `jobs.dlq` (none if it does not exist).
fn letters_of(store: &Store) -> Vec<tidelog_storage::Record> {
    match store.topic("jobs.dlq") {
        Ok(dlq) => {
            dlq.partition(0)
                .unwrap()
                .read(0, 10, u64::MAX)
                .unwrap()
                .records
        }
        Err(_) => Vec::new(),
    }
}

/// A power cut at every point of a term of a message at its topic's limit: after
/// recovery, the message is either still pending (delivered again) or settled with
/// its whole dead letter in the dead-letter topic, never settled without one; and a
/// term answered OK is settled after any cut.
#[test]
fn a_power_cut_anywhere_in_a_large_dead_letter_loses_nothing() {
    let limit = TopicConfig::default().max_message_bytes;
    let mut cut_after = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), cut_after).unwrap();
        let clock = ManualClock::new(START_MS);
        let (store, mut engine) = big_one_held(&fs, &data, &clock);
        fs.power_off_after(cut_after);
        let answered = engine.settle(
            Some("m"),
            &[settle_one(
                0,
                SettleAction::Term {
                    reason: "give up".into(),
                },
            )],
        );
        let cut = fs.is_powered_off();
        drop(engine);
        let store = common::power_cut(
            store,
            &fs,
            &data,
            &clock,
            CrashOptions::keep_some(cut_after),
        );
        let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
        let settled = status.partitions[0].settled_below == 1;
        let letters = letters_of(&store);
        if settled {
            assert_eq!(
                letters.len(),
                1,
                "cut after {cut_after}: settled without its letter"
            );
            assert_eq!(letters[0].value.len() as u64, limit);
        } else {
            assert!(
                !matches!(answered.as_deref(), Ok([SettleOutcome::Ok { .. }])),
                "cut after {cut_after}: a term answered OK was taken back"
            );
            assert_eq!(status.unacked + status.waiting + status.ready, 1);
        }
        if !cut {
            assert!(settled, "no cut: the term is done");
            assert!(cut_after >= 3, "only {cut_after} points to cut at");
            break;
        }
        cut_after += 1;
        assert!(cut_after < 10_000, "the term never completed");
    }
}

/// An fsync of the dead-letter topic that fails (poisoning its partition) is a
/// passing failure: the term is answered UNAVAILABLE, the member still holds the
/// message; after a restart (the partition recovered) the lease is over: a term of
/// it is stale, and the first tick gives it up, its one allowed delivery used, so it
/// is dead-lettered.
#[test]
fn a_failed_fsync_of_the_dead_letter_leaves_the_delivery_held_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 7).unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, mut engine) = big_one_held(&fs, &data, &clock);
    // The dead-letter topic exists (its creation is not what fails).
    store
        .create_topic("jobs.dlq", 1, TopicConfig::default())
        .unwrap();
    fs.fail_sync(SyncFault::nth(1).path_contains("jobs.dlq"));
    let term = [settle_one(
        0,
        SettleAction::Term {
            reason: "give up".into(),
        },
    )];
    let outcomes = engine.settle(Some("m"), &term).unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Unavailable(_)),
        "{outcomes:?}"
    );
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.unacked, 1, "still held: {status:?}");
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    // A member of the same name (in tests only: a stream member's id is new in each
    // run) cannot settle it.
    engine.member_joined("m");
    let outcomes = engine.settle(Some("m"), &term).unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Stale(why) if why.contains("restarted")),
        "{outcomes:?}"
    );
    engine.tick().unwrap();
    assert_eq!(letters_of(&store).len(), 1);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.unacked, 0, "{status:?}");
}

/// Queue `work` (ack deadline 30 s, backoff 100 ms, `max_deliveries`) on `jobs` with
/// one message, leased (attempt 1) to `receive:w1` (a unary Receive's member) by an
/// engine that is gone when this returns: the broker's run ends with the lease held.
fn one_leased_before_a_restart(store: &Arc<Store>, max_deliveries: u32) {
    store
        .topic("jobs")
        .unwrap()
        .partition(0)
        .unwrap()
        .append_durable(&[NewRecord::value("job")])
        .unwrap();
    let queue_config = QueueConfig {
        ack_deadline_ms: 30_000,
        backoff_initial_ms: 100,
        max_deliveries,
        ..config()
    };
    admin::create_queue(&**store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("receive:w1");
    let delivered = engine.deliver(&[("receive:w1".into(), 10)]).unwrap();
    assert_eq!(delivered[0].1[0].attempt, 1);
}

/// The deliveries a round makes to `member` now.
fn delivered_now(engine: &mut QueueEngine, member: &str) -> Vec<Delivery> {
    engine
        .deliver(&[(member.into(), 10)])
        .unwrap()
        .into_iter()
        .flat_map(|(_, deliveries)| deliveries)
        .collect()
}

/// An ack of attempt `attempt` of offset 0, by whoever holds it.
fn ack_0(attempt: u32) -> SettleRequest {
    SettleRequest {
        partition: 0,
        offset: 0,
        attempt,
        action: SettleAction::Ack { through: None },
    }
}

/// A lease made before a restart went to a call of the last run: the first tick gives
/// it up (member left, the attempt counted), so the message goes to another member
/// after its backoff, not after its 30 s deadline, even when the holder's name has
/// joined and asked first (a unary Receive's member comes back under the same name).
#[test]
fn a_lease_from_before_a_restart_is_given_up_even_when_its_holder_joins_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    one_leased_before_a_restart(&store, 3);
    drop(store);
    clock.advance_ms(1_000);
    let store = plain_store_reopened(dir.path(), &clock);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    // The old holder's name is back first and asks: nothing is ready for it.
    engine.member_joined("receive:w1");
    assert!(delivered_now(&mut engine, "receive:w1").is_empty());
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.waiting), (0, 1), "{status:?}");
    assert_eq!(
        attempts_of_0(&store, &clock),
        vec![(1, Some(Outcome::MemberLeft))]
    );
    assert_eq!(engine.unacked("receive:w1"), 0);
    assert_eq!(
        (engine.counters.timed_out, engine.counters.member_left),
        (0, 1)
    );
    // After the backoff, long before the deadline, another member gets it.
    clock.advance_ms(100);
    engine.tick().unwrap();
    engine.member_joined("receive:w2");
    let again = delivered_now(&mut engine, "receive:w2");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].record.offset, again[0].attempt), (0, 2));
    let outcomes = engine.settle(None, &[ack_0(1)]).unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Stale(why) if why.contains("attempt 2")),
        "{outcomes:?}"
    );
    assert_eq!(
        engine.settle(None, &[ack_0(2)]).unwrap(),
        vec![SettleOutcome::Ok { settled: 1 }]
    );
}

/// A lease from before a restart is over from the open on, before the tick gives it
/// up: its settlements (by anyone, by its holder's name, as a range) are stale and
/// change nothing, and it cannot be given back unseen; the tick then gives it up.
#[test]
fn a_lease_from_before_a_restart_cannot_be_settled_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    one_leased_before_a_restart(&store, 3);
    drop(store);
    let store = plain_store_reopened(dir.path(), &clock);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("receive:w1");
    for (member, request) in [
        (None, ack_0(1)),
        (Some("receive:w1"), ack_0(0)),
        (
            Some("receive:w1"),
            SettleRequest {
                action: SettleAction::InProgress { extend_ms: None },
                ..ack_0(1)
            },
        ),
    ] {
        let outcomes = engine.settle(member, &[request]).unwrap();
        assert!(
            matches!(&outcomes[0], SettleOutcome::Stale(why) if why.contains("before the broker restarted")),
            "{outcomes:?}"
        );
    }
    let range = SettleRequest {
        action: SettleAction::Ack { through: Some(5) },
        ..ack_0(0)
    };
    assert_eq!(
        engine.settle(None, &[range]).unwrap(),
        vec![SettleOutcome::Ok { settled: 0 }]
    );
    assert_eq!(engine.release("receive:w1", &[(0, 0, 1)]).unwrap(), 0);
    assert_eq!(engine.counters.acked, 0);
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.waiting), (0, 1), "{status:?}");
    assert_eq!(
        attempts_of_0(&store, &clock),
        vec![(1, Some(Outcome::MemberLeft))]
    );
}

/// A restored lease on its last allowed delivery whose dead letter cannot be written
/// at the first tick (a full disk: a passing failure) stands until the retry; its
/// holder's name joining meanwhile does not keep it: the retry, long before the
/// deadline, dead-letters it (member left).
#[test]
fn a_restored_lease_whose_dead_letter_waits_is_given_up_at_the_retry_whoever_joined() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 21).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    store
        .create_topic("jobs.dlq", 1, TopicConfig::default())
        .unwrap();
    one_leased_before_a_restart(&store, 1);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    fs.set_capacity(Some(fs.used_bytes()));
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.unacked, 1, "its dead letter waits: {status:?}");
    assert!(letters_of(&store).is_empty());
    fs.set_capacity(None);
    engine.member_joined("receive:w1");
    assert!(delivered_now(&mut engine, "receive:w1").is_empty());
    clock.advance_ms(1_000);
    engine.tick().unwrap();
    assert_eq!(letters_of(&store).len(), 1, "dead-lettered at the retry");
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.ready), (0, 0), "{status:?}");
    assert_eq!(engine.unacked("receive:w1"), 0);
}

/// A power cut at every point of the first tick's give-up of a restored lease (its
/// holder's name joined): after recovery the lease either still stands (the next
/// run gives it up) or is given up with its attempt counted; never lost, and a
/// give-up that returned is never taken back.
#[test]
fn a_power_cut_anywhere_in_giving_up_a_restored_lease_keeps_the_lease_or_its_give_up() {
    let pending = |store: &Store, context: &str| {
        store
            .queues()
            .read(|q| {
                q.get("work").unwrap().partitions[&0]
                    .pending
                    .get(0)
                    .map(|p| p.into_owned())
            })
            .unwrap_or_else(|| panic!("{context}: settled"))
    };
    let mut cut_after = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), cut_after).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = open(&fs, &data, &clock);
        store
            .create_topic("jobs", 1, TopicConfig::default())
            .unwrap();
        one_leased_before_a_restart(&store, 3);
        let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("receive:w1");
        fs.power_off_after(cut_after);
        let answered = engine.tick().is_ok();
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
        let after = pending(&store, &context);
        assert_eq!(after.attempts, 1, "{context}: the attempt stays counted");
        match after.hold {
            Hold::Leased { .. } => assert!(!answered, "{context}: a give-up was taken back"),
            Hold::Waiting { .. } => {}
            other => panic!("{context}: {other:?}"),
        }
        // The next run gives up what still stands, its holder's name joined or not.
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("receive:w1");
        engine.tick().unwrap();
        let after = pending(&store, &context);
        assert!(
            matches!(after.hold, Hold::Waiting { .. }) && after.attempts == 1,
            "{context}: {after:?}"
        );
        if !cut {
            assert!(answered, "no cut: given up");
            assert!(cut_after >= 2, "only {cut_after} points to cut at");
            break;
        }
        cut_after += 1;
        assert!(cut_after < 1_000, "the give-up never completed");
    }
}

/// A failed fsync of the queue state (EIO) fails the tick that gives up a restored
/// lease and poisons the state log; the next run gives it up.
#[test]
fn a_failed_fsync_fails_the_give_up_and_the_next_run_gives_the_lease_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 22).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    one_leased_before_a_restart(&store, 3);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("receive:w1");
    fs.fail_sync(SyncFault::nth(1).path_contains("queues"));
    assert!(engine.tick().is_err());
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.unacked, 1, "not given up: {status:?}");
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("receive:w1");
    engine.tick().unwrap();
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.unacked, status.waiting), (0, 1), "{status:?}");
}

/// The attempts the history shows for offset 0 of queue `work`: (attempt, outcome).
fn attempts_of_0(store: &Store, clock: &ManualClock) -> Vec<(u32, Option<Outcome>)> {
    tidelog_storage::queue::inspect::message_history(store, "work", 0, 0, 0, clock.now_ms())
        .unwrap()
        .into_iter()
        .map(|a| (a.attempt, a.outcome.map(|o| o.0)))
        .collect()
}

/// A queue (max_deliveries 1) on `jobs` with one message, and an engine whose member
/// `m` was handed it (attempt 1), all durable.
fn one_delivered_at_most_once(store: &Arc<Store>) -> QueueEngine {
    store
        .topic("jobs")
        .unwrap()
        .partition(0)
        .unwrap()
        .append_durable(&[NewRecord::value("only")])
        .unwrap();
    let queue_config = QueueConfig {
        max_deliveries: 1,
        ..config()
    };
    admin::create_queue(&**store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(delivered[0].1[0].attempt, 1);
    engine
}

/// A delivery given back unseen (its Receive cancelled, its stream gone) is ready at
/// once with its attempt taken back: with max_deliveries 1 it is delivered again as
/// attempt 1, not dead-lettered; the history shows the released attempt until the
/// delivery that takes its number replaces it. Stale releases change nothing.
#[test]
fn a_delivery_given_back_unseen_is_ready_again_without_using_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let mut engine = one_delivered_at_most_once(&store);
    assert_eq!(
        engine.release("other", &[(0, 0, 1)]).unwrap(),
        0,
        "not its lease"
    );
    assert_eq!(
        engine.release("m", &[(0, 0, 2)]).unwrap(),
        0,
        "not its attempt"
    );
    assert_eq!(engine.release("m", &[(0, 0, 1), (0, 0, 1)]).unwrap(), 1);
    assert_eq!(engine.unacked("m"), 0);
    assert_eq!(engine.counters.released, 1);
    assert_eq!(engine.counters.delivered, 0, "nobody got it");
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (1, 0), "{status:?}");
    assert_eq!(
        attempts_of_0(&store, &clock),
        vec![(1, Some(Outcome::Released))]
    );
    assert_eq!(engine.release("m", &[(0, 0, 1)]).unwrap(), 0, "once");
    // No backoff: delivered again at once, as attempt 1.
    let again = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!((again[0].1[0].record.offset, again[0].1[0].attempt), (0, 1));
    assert_eq!(attempts_of_0(&store, &clock), vec![(1, None)]);
    // Its deadline passing now is the one attempt it had: dead-lettered.
    clock.advance_ms(config().ack_deadline_ms as i64);
    engine.tick().unwrap();
    assert_eq!(dead_letters(&store).len(), 1);
}

/// After a restart the released message is still ready with no attempt used: the
/// broker's restart gives up leases (counting them), so without the durable release
/// this message would be dead-lettered (max_deliveries 1).
#[test]
fn a_release_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let mut engine = one_delivered_at_most_once(&store);
    assert_eq!(engine.release("m", &[(0, 0, 1)]).unwrap(), 1);
    drop(engine);
    drop(store);
    let store = plain_store_reopened(dir.path(), &clock);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    engine.tick().unwrap();
    let again = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(again[0].1[0].attempt, 1);
    assert!(dead_letters(&store).is_empty());
}

/// What a crash leaves of a release, whatever point it cuts at: the message is either
/// still held at attempt 1 (the release was not durable: the restart gives the lease
/// up, as without a release) or ready with no attempt used; a release answered Ok is
/// never taken back.
fn check_after_crash(store: &Store, clock: &ManualClock, answered: bool, context: &str) {
    let pending = store.queues().read(|q| {
        q.get("work").unwrap().partitions[&0]
            .pending
            .get(0)
            .map(|p| p.into_owned())
    });
    let pending = pending.unwrap_or_else(|| panic!("{context}: the message was settled"));
    match pending.hold {
        Hold::Leased { .. } => {
            assert!(!answered, "{context}: a release answered Ok was taken back");
            assert_eq!(pending.attempts, 1, "{context}");
        }
        Hold::Waiting { due_ms } => {
            assert_eq!(pending.attempts, 0, "{context}");
            assert!(due_ms <= clock.now_ms(), "{context}: ready at once");
        }
        other => panic!("{context}: {other:?}"),
    }
}

/// A power cut at every point of a release.
#[test]
fn a_power_cut_anywhere_in_a_release_keeps_the_lease_or_the_release() {
    let mut cut_after = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), cut_after).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = open(&fs, &data, &clock);
        store
            .create_topic("jobs", 1, TopicConfig::default())
            .unwrap();
        let mut engine = one_delivered_at_most_once(&store);
        fs.power_off_after(cut_after);
        let answered = engine.release("m", &[(0, 0, 1)]);
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
        check_after_crash(&store, &clock, matches!(answered, Ok(1)), &context);
        if !cut {
            assert_eq!(answered.unwrap(), 1, "no cut: released");
            assert!(cut_after >= 2, "only {cut_after} points to cut at");
            break;
        }
        cut_after += 1;
        assert!(cut_after < 1_000, "the release never completed");
    }
}

/// A failed fsync of the queue state (EIO) fails the release (nothing is answered
/// as released) and poisons the state log; after a restart the lease stands as it
/// was durable, attempt 1, as if the release never happened.
#[test]
fn a_failed_fsync_fails_the_release_and_leaves_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 11).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    let mut engine = one_delivered_at_most_once(&store);
    fs.fail_sync(SyncFault::nth(1).path_contains("queues"));
    assert!(engine.release("m", &[(0, 0, 1)]).is_err());
    assert!(
        engine.release("m", &[(0, 0, 1)]).is_err(),
        "poisoned: not retried"
    );
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    check_after_crash(&store, &clock, false, "after EIO");
}

/// A full disk (ENOSPC) fails the release; the lease stands, and the next run gives
/// it up at its first tick, counted (as for a broker that died before the release):
/// its one allowed delivery used, it is dead-lettered.
#[test]
fn a_full_disk_fails_the_release_and_leaves_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 12).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(&fs, &data, &clock);
    store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    let mut engine = one_delivered_at_most_once(&store);
    fs.set_capacity(Some(fs.used_bytes()));
    assert!(engine.release("m", &[(0, 0, 1)]).is_err());
    let held = store.queues().read(|q| {
        q.get("work").unwrap().partitions[&0]
            .pending
            .get(0)
            .map(|p| p.into_owned())
    });
    assert!(
        matches!(
            held.map(|p| (p.hold, p.attempts)),
            Some((Hold::Leased { .. }, 1))
        ),
        "readers see only durable state"
    );
    fs.set_capacity(None);
    drop(engine);
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    check_after_crash(&store, &clock, false, "after ENOSPC");
    // A release of the last run's delivery (by a member of the same name, in tests
    // only) finds nothing to give back unseen.
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(engine.release("m", &[(0, 0, 1)]).unwrap(), 0);
    engine.tick().unwrap();
    assert_eq!(dead_letters(&store).len(), 1);
}

/// The dead-letter-oldest pass when the dead-letter topic refuses one letter for good
/// (too large for it): the others still go, the refused message stays ready (and is
/// delivered to a member), and the next pass does not fail on it again.
#[test]
fn an_overflow_letter_refused_for_good_stays_ready_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store_reopened(dir.path(), &clock);
    store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                queue_max_ready_messages: Some(2),
                queue_overflow: tidelog_storage::QueueOverflow::DeadLetterOldest,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    store
        .create_topic(
            "jobs.dlq",
            1,
            TopicConfig {
                max_message_bytes: 100,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition
        .append_durable(&[NewRecord::value(vec![b'z'; 5_000])])
        .unwrap();
    for i in 1..5 {
        partition
            .append_durable(&[NewRecord::value(format!("n{i}"))])
            .unwrap();
    }
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    // 5 ready, cap 2: the oldest three go, but offset 0's letter is refused.
    assert_eq!(engine.enforce_caps().unwrap(), 2);
    assert_eq!(engine.counters.overflow_refused, 1);
    assert_eq!(dead_letters(&store), BTreeSet::from([(0, 1), (0, 2)]));
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!(status.ready, 3, "{status:?}");
    // The refused one counts as ready: the next pass takes the next oldest instead,
    // and does not try offset 0 again.
    assert_eq!(engine.enforce_caps().unwrap(), 1);
    assert_eq!(engine.enforce_caps().unwrap(), 0);
    assert_eq!(engine.counters.overflow_refused, 1);
    assert_eq!(
        dead_letters(&store),
        BTreeSet::from([(0, 1), (0, 2), (0, 3)])
    );
    // It is delivered like any ready message, first (the oldest due).
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 2)]).unwrap();
    let offsets: Vec<(u64, u32)> = delivered[0]
        .1
        .iter()
        .map(|d| (d.record.offset, d.attempt))
        .collect();
    assert_eq!(offsets, vec![(0, 1), (4, 1)]);
}

/// Queue `work` on `jobs` (holding one message, "poison") stored with
/// `dead_letter_topic` as an older broker stored it: today's CreateQueue refuses that
/// config (its refusal is returned), so the definition goes in past the checks.
fn stored_past_the_checks(store: &Arc<Store>, dead_letter_topic: &str) -> String {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    partition
        .append_durable(&[NewRecord::value("poison")])
        .unwrap();
    let stored = QueueConfig {
        max_deliveries: 1,
        dead_letter_topic: dead_letter_topic.into(),
        ..config()
    };
    let refused = admin::create_queue(&**store, "work", "jobs", StartAt::Earliest, stored.clone())
        .expect_err("today's checks refuse it")
        .to_string();
    store
        .change_queues(vec![QueueOp::Create {
            name: "work".into(),
            topic: "jobs".into(),
            config: stored,
            levels: 1,
            created_ms: START_MS,
            cursors: vec![(0, vec![0])],
        }])
        .unwrap();
    refused
}

/// The term of queue `work`'s one message ([`stored_past_the_checks`]) is refused for
/// good with a reason holding each of `said`, no letter is written to `jobs`, and the
/// message comes again, at attempt 2, after the backoff.
fn term_is_refused_for_good(store: &Arc<Store>, clock: &ManualClock, said: &[&str]) {
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(engine.deliver(&[("m".into(), 1)]).unwrap()[0].1.len(), 1);
    let outcomes = engine
        .settle(
            Some("m"),
            &[settle_one(
                0,
                SettleAction::Term {
                    reason: "give up".into(),
                },
            )],
        )
        .unwrap();
    assert!(
        matches!(&outcomes[0], SettleOutcome::Refused(m) if said.iter().all(|s| m.contains(s))),
        "{outcomes:?}"
    );
    assert_eq!(
        partition.end_offset().unwrap(),
        1,
        "no letter was written to the topic"
    );
    clock.advance_ms(config().backoff_max_ms as i64);
    engine.tick().unwrap();
    let again = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(again[0].1.len(), 1);
    assert_eq!((again[0].1[0].record.offset, again[0].1[0].attempt), (0, 2));
}

/// A queue stored before create and AlterQueue refused a dead-letter topic that is its
/// own topic: its last attempts are sent back for redelivery, refused for good with a
/// reason naming the fix, and nothing is written to the topic. Before, each dead letter
/// became a new message of the queue: a poison message came back for ever and the
/// topic grew by one message per round.
#[test]
fn a_queue_whose_dead_letter_topic_is_its_own_topic_writes_no_letter() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    stored_past_the_checks(&store, "jobs");
    term_is_refused_for_good(&store, &clock, &["own topic", "AlterQueue"]);
}

/// A lease whose deadline passes counts as timed out; one whose member left (gone, or
/// from the engine's run before) as member left: the metrics tell the two apart.
#[test]
fn leases_given_up_count_as_timed_out_or_member_left_by_why() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for n in 0..4 {
        partition
            .append_durable(&[NewRecord::value(format!("job {n}"))])
            .unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    // A lease of the run before: ended by the next engine's first tick.
    let mut earlier = QueueEngine::open(store.clone(), "work").unwrap();
    earlier.member_joined("m");
    assert_eq!(earlier.deliver(&[("m".into(), 1)]).unwrap()[0].1.len(), 1);
    drop(earlier);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.tick().unwrap();
    assert_eq!(
        (engine.counters.timed_out, engine.counters.member_left),
        (0, 1)
    );
    // A member that leaves holding one, and one that lets its deadline pass.
    engine.member_joined("leaver");
    engine.member_joined("slow");
    let wants = [("leaver".into(), 1), ("slow".into(), 1)];
    let delivered: usize = engine
        .deliver(&wants)
        .unwrap()
        .iter()
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(delivered, 2);
    engine.member_left("leaver");
    engine.tick().unwrap();
    assert_eq!(
        (engine.counters.timed_out, engine.counters.member_left),
        (0, 2)
    );
    clock.advance_ms(config().ack_deadline_ms as i64 + 1);
    engine.tick().unwrap();
    assert_eq!(
        (engine.counters.timed_out, engine.counters.member_left),
        (1, 2)
    );
}

/// With no member asking, `take_delayed` takes the delayed messages at the head of each
/// partition and level: they count as delayed, not ready (DescribeQueue, the caps). It
/// stops at the first due message, which a member's round takes, and goes on past it
/// after that round; a lower level waits until the faster levels have passed all they
/// hold (strict priority, as in delivery rounds).
#[test]
fn delayed_messages_are_taken_ahead_of_members_and_count_as_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 2);
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    let later = START_MS + 3_600_000;
    // (delayed, priority) of offsets 0 to 8.
    let layout = [
        (true, 0),
        (true, 0),
        (true, 0),
        (false, 0),
        (true, 0),
        (true, 0),
        (false, 1),
        (true, 1),
        (true, 0),
    ];
    for (n, (delayed, priority)) in layout.into_iter().enumerate() {
        partition
            .append_durable(&[NewRecord {
                deliver_at_ms: delayed.then_some(later),
                priority,
                ..NewRecord::value(format!("m{n}"))
            }])
            .unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    let counts = || {
        let s = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
        (s.ready, s.delayed, s.unacked)
    };
    // Level 1's head (offset 6) is due: nothing below it is looked at yet.
    engine.take_delayed().unwrap();
    engine.take_delayed().unwrap();
    assert_eq!(counts(), (9, 0, 0));
    engine.member_joined("m");
    let first = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(first[0].1[0].record.offset, 6);
    // Level 1 then takes 7; level 0 takes 0 to 2 and stops at 3, which is due.
    engine.take_delayed().unwrap();
    assert_eq!(counts(), (4, 4, 1));
    let second = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(second[0].1[0].record.offset, 3);
    engine.take_delayed().unwrap();
    assert_eq!(counts(), (0, 7, 2));
    // Due, they are delivered as any delayed message (the two held are acked first).
    for offset in [3, 6] {
        let acked = engine
            .settle(
                Some("m"),
                &[settle_one(offset, SettleAction::Ack { through: None })],
            )
            .unwrap();
        assert_eq!(acked[0], SettleOutcome::Ok { settled: 1 });
    }
    clock.advance_ms(3_600_000);
    engine.tick().unwrap();
    let due = engine.deliver(&[("m".into(), 10)]).unwrap();
    let mut offsets: Vec<u64> = due[0].1.iter().map(|d| d.record.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, vec![0, 1, 2, 4, 5, 7, 8]);
}

/// A queue stored before create and AlterQueue refused a dead-letter topic in the
/// reserved `__` namespace: its first letter does not create that topic (a client could
/// not have created it); the message is refused for good with the rule and the fix, and
/// delivered again. An alter of anything else still works; one to `__y` is refused.
#[test]
fn a_stored_dead_letter_topic_with_a_reserved_name_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = plain_store(dir.path(), &clock, 0);
    let refused = stored_past_the_checks(&store, "__x");
    assert!(
        refused.contains("dead_letter_topic") && refused.contains("reserved"),
        "{refused}"
    );
    admin::alter_queue(&*store, "work", |c| c.ack_deadline_ms += 1)
        .expect("an alter that keeps the stored dead-letter topic");
    let refused = admin::alter_queue(&*store, "work", |c| c.dead_letter_topic = "__y".into())
        .unwrap_err()
        .to_string();
    assert!(refused.contains("reserved"), "{refused}");
    term_is_refused_for_good(&store, &clock, &["reserved", "AlterQueue"]);
    assert!(store.topic("__x").is_err(), "no reserved topic was created");
}

/// A store whose topic "jobs" holds offsets 0-35 stamped at the start, in a segment of
/// their own, then 36-89 a minute later, with a retention of a minute; queue "work"
/// from its earliest offset, member "m" of the engine returned holding 0-2. Then the
/// clock moves on and retention deletes 0-35 (the engine is not called).
fn three_held_then_deleted(dir: &Path, clock: &Arc<ManualClock>) -> (Arc<Store>, QueueEngine) {
    let store = plain_store_reopened(dir, clock);
    store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                segment_bytes: 4096,
                retention_ms: Some(60_000),
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
    for (offsets, timestamp_ms) in [(0..36, START_MS), (36..90, START_MS + 60_000)] {
        let records: Vec<NewRecord> = offsets
            .map(|_| NewRecord {
                timestamp_ms: Some(timestamp_ms),
                ..NewRecord::value(vec![b'v'; 80])
            })
            .collect();
        partition.append_durable(&records).unwrap();
    }
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 3)]).unwrap();
    assert_eq!(delivered[0].1.len(), 3);
    assert_eq!(engine.unacked("m"), 3);
    clock.advance_ms(90_000);
    store.enforce_retention();
    assert_eq!(partition.log_start().unwrap(), 36, "retention deleted 0-35");
    (store, engine)
}

/// A purge after retention deleted messages the queue had not settled (three held,
/// 33 never taken), before any engine followed the log's start: it counts the 54 it
/// took from the queue's view (DescribeQueue's ready count just before), not the 90
/// from the cursor to the end.
#[test]
fn a_purge_does_not_count_what_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, _engine) = three_held_then_deleted(dir.path(), &clock);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (54, 0), "{status:?}");
    assert_eq!(admin::purge_queue(&*store, "work").unwrap(), 54);
    let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
    assert_eq!((status.ready, status.unacked), (0, 0), "{status:?}");
    assert_eq!(admin::purge_queue(&*store, "work").unwrap(), 0);
}

/// Leases on messages retention deleted are dropped by the engine: by its timers (no
/// member asking), and before a settlement is judged, which is then NOT_FOUND saying
/// retention deleted it; the member's share is free again, and the drop is counted
/// lost to retention.
#[test]
fn an_engine_drops_the_leases_of_messages_retention_deleted() {
    for by_tick in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let (store, mut engine) = three_held_then_deleted(dir.path(), &clock);
        if by_tick {
            engine.tick().unwrap();
            let left = store
                .queues()
                .read(|q| q.get("work").unwrap().pending_counts());
            assert_eq!(left, (0, 0, 0), "no lease left after the tick");
        }
        let outcome = engine.settle(
            Some("m"),
            &[settle_one(1, SettleAction::Ack { through: None })],
        );
        match &outcome.unwrap()[..] {
            [SettleOutcome::NotFound(why)] => assert!(
                why.contains("deleted by retention") && why.contains("starts at 36"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(engine.counters.lost_to_retention, 3);
        assert_eq!(engine.unacked("m"), 0);
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        assert_eq!(delivered[0].1[0].record.offset, 36);
    }
}

/// A queue (ack deadline 1 s, `max_deliveries`) on `jobs` with one message whose first
/// delivery (at START_MS) member `m` nacked at once with no delay, and which it was
/// handed again 1 ms later (attempt 2). Attempt 1's deadline timer (START_MS + 1000)
/// is still set, 1 ms before attempt 2's (START_MS + 1001).
fn nacked_at_once_and_held_again(
    store: &Arc<Store>,
    clock: &ManualClock,
    max_deliveries: u32,
) -> QueueEngine {
    store
        .topic("jobs")
        .unwrap()
        .partition(0)
        .unwrap()
        .append_durable(&[NewRecord::value("job")])
        .unwrap();
    let queue_config = QueueConfig {
        ack_deadline_ms: 1_000,
        max_deliveries,
        backoff_initial_ms: 10,
        backoff_max_ms: 10,
        ..config()
    };
    admin::create_queue(&**store, "work", "jobs", StartAt::Earliest, queue_config).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    assert_eq!(delivered_now(&mut engine, "m")[0].attempt, 1);
    let nack = SettleRequest {
        partition: 0,
        offset: 0,
        attempt: 1,
        action: SettleAction::Nack {
            delay_ms: Some(0),
            reason: "again".into(),
        },
    };
    assert_eq!(
        engine.settle(Some("m"), &[nack]).unwrap(),
        vec![SettleOutcome::Ok { settled: 0 }]
    );
    clock.advance_ms(1);
    engine.tick().unwrap();
    let again = delivered_now(&mut engine, "m");
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].attempt, again[0].deadline_ms),
        (2, START_MS + 1_001)
    );
    engine
}

/// The history events of offset 0 of queue `work`, oldest first: (attempt, outcome).
fn events_of_0(store: &Store) -> Vec<(u32, Outcome)> {
    let mut events: Vec<(u32, Outcome)> = tidelog_storage::queue::inspect::list_deliveries(
        store,
        "work",
        &tidelog_storage::queue::inspect::DeliveriesQuery::default(),
        store.clock().now_ms(),
    )
    .unwrap()
    .deliveries
    .into_iter()
    .filter(|d| (d.event.partition, d.event.offset) == (0, 0))
    .map(|d| (d.event.attempt, d.event.outcome))
    .collect();
    events.reverse();
    events
}

/// A lease whose message has more than one timer due in the same tick (attempt 1's
/// deadline, left set when a nack with no delay ended it early, and attempt 2's, or
/// the one a member's leaving sets) is given up once: its last attempt writes one
/// dead letter, counted once, with one give-up and one dead-lettered event (hunt 12a:
/// with members nacking at once, 100 messages made up to 186 letters, and redrive
/// sent every copy back). The tick judged each timer against the state from before
/// its own operations, so the second timer gave the same lease up again.
#[test]
fn a_lease_is_given_up_once_when_two_of_its_timers_come_in_one_tick() {
    // (max_deliveries, member leaves at, tick at, timed out, member left, letters)
    let cases = [
        // Both deadlines passed when the tick comes: the last attempt's letter.
        (2, None, START_MS + 1_001, 1, 0, 1),
        // Its member leaves, and the tick comes after attempt 1's deadline.
        (2, Some(START_MS + 500), START_MS + 1_000, 0, 1, 1),
        // Not the last attempt: given up once, one redelivery, no letter.
        (3, None, START_MS + 1_001, 1, 0, 0),
    ];
    for (max_deliveries, leaves_at, tick_at, timed_out, member_left, letters) in cases {
        let context = format!("max_deliveries {max_deliveries}, member leaves at {leaves_at:?}");
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let store = plain_store(dir.path(), &clock, 0);
        let mut engine = nacked_at_once_and_held_again(&store, &clock, max_deliveries);
        if let Some(at) = leaves_at {
            clock.set_ms(at);
            engine.member_left("m");
        }
        clock.set_ms(tick_at);
        engine.tick().unwrap();
        assert_eq!(letters_of(&store).len(), letters, "{context}");
        assert_eq!(
            (
                engine.counters.timed_out,
                engine.counters.member_left,
                engine.counters.dead_lettered_max_deliveries
            ),
            (timed_out, member_left, letters as u64),
            "{context}"
        );
        let gave_up = if member_left == 1 {
            Outcome::MemberLeft
        } else {
            Outcome::DeadlinePassed
        };
        let mut story = vec![
            (1, Outcome::Delivered),
            (1, Outcome::Nacked),
            (2, Outcome::Delivered),
            (2, gave_up),
        ];
        if letters == 1 {
            story.push((2, Outcome::DeadLettered));
        }
        assert_eq!(events_of_0(&store), story, "{context}");
        // Settled once: nothing more on later ticks; without a letter it comes back once.
        clock.advance_ms(2_000);
        engine.tick().unwrap();
        engine.member_joined("n");
        let later = delivered_now(&mut engine, "n");
        match letters {
            1 => assert!(later.is_empty(), "{context}"),
            _ => assert_eq!(later.iter().map(|d| d.attempt).collect::<Vec<_>>(), [3]),
        }
        assert_eq!(letters_of(&store).len(), letters, "{context}");
    }
}
