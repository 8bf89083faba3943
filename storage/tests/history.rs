//! Delivery status and history of queue messages through the real engine: every
//! outcome (ack, nack, deadline, term, max deliveries) across a reopen; a model test of
//! random deliveries, acks, nacks, terms, extensions, deadlines, reopens, kills and
//! power cuts against a plain reference (ManualClock: nothing sleeps); and the history
//! files' faults (a power cut at every step, EIO on fsync, ENOSPC) through FaultyFs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
use tidelog_storage::queue::history::query::{ListRequest, list_events, message_attempts};
use tidelog_storage::queue::history::{HistoryEvent, Outcome, QueueHistory};
use tidelog_storage::queue::inspect::{
    self, DeliveriesQuery, DeliveryFilter, MessageAt, QueueState,
};
use tidelog_storage::queue::{
    HistoryWait, QueueConfig, QueueEngine, SettleAction, SettleOutcome, SettleRequest, StartAt,
    admin,
};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{Clock, Error, ManualClock, NewRecord, Store, StoreOptions, TopicConfig};

const START_MS: i64 = 1_700_000_000_000;
const MESSAGES: u64 = 8;

fn open(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> Result<Arc<Store>, Error> {
    Store::open(
        data,
        StoreOptions {
            clock: clock.clone(),
            flush_threads: 1,
            retention_interval: None,
            flush_observer: None,
            fs: Arc::new(fs.clone()),
            ..StoreOptions::default()
        },
    )
    .map(Arc::new)
}

fn config() -> QueueConfig {
    QueueConfig {
        ack_deadline_ms: 1_000,
        max_deliveries: 3,
        backoff_initial_ms: 100,
        backoff_max_ms: 100,
        ..QueueConfig::defaults_for("jobs")
    }
}

/// A store with topic `jobs` (one partition, `MESSAGES` messages with a header `n`)
/// and queue `work` from the start.
fn setup(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>, config: QueueConfig) -> Arc<Store> {
    let store = open(fs, data, clock).unwrap();
    let topic = store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    let records: Vec<NewRecord> = (0..MESSAGES)
        .map(|i| NewRecord {
            value: Bytes::from(format!("job-{i}")),
            headers: vec![tidelog_storage::Header {
                key: "n".into(),
                value: Bytes::from((i % 2).to_string()),
            }],
            ..NewRecord::default()
        })
        .collect();
    topic
        .partition(0)
        .unwrap()
        .append_durable(&records)
        .unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config).unwrap();
    store
}

fn state(store: &Store, offset: u64) -> QueueState {
    let topic = store.topic("jobs").unwrap();
    let message = inspect::message_at(&topic, 0, offset).unwrap();
    inspect::queue_state(store, "work", 0, offset, &message, store.clock().now_ms()).unwrap()
}

fn settle(
    engine: &mut QueueEngine,
    member: &str,
    offset: u64,
    action: SettleAction,
) -> SettleOutcome {
    engine
        .settle(
            Some(member),
            &[SettleRequest {
                partition: 0,
                offset,
                attempt: 0,
                action,
            }],
        )
        .unwrap()
        .remove(0)
}

/// (attempt, member, outcome, dead-lettered) of each attempt in the history.
fn story(store: &Store, offset: u64) -> Vec<(u32, String, Option<Outcome>, bool)> {
    inspect::message_history(store, "work", 0, offset, START_MS, store.clock().now_ms())
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.attempt,
                a.member,
                a.outcome.map(|o| o.0),
                a.dead_lettered.is_some(),
            )
        })
        .collect()
}

#[test]
fn every_outcome_has_its_status_and_history_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let clock = ManualClock::new(START_MS);
    let config = QueueConfig {
        max_deliveries: 2,
        ..config()
    };
    let store = setup(&fs, dir.path(), &clock, config);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m1");
    let delivered = engine.deliver(&[("m1".into(), 5)]).unwrap();
    assert_eq!(delivered[0].1.len(), 5);
    assert!(
        matches!(state(&store, 0), QueueState::Unacked { ref member, attempt: 1, .. } if member == "m1")
    );
    assert_eq!(state(&store, 6), QueueState::Ready);

    // 0 acked; 1 nacked; 2 times out twice (dead-lettered); 3 terminated; 4 extended.
    settle(&mut engine, "m1", 0, SettleAction::Ack { through: None });
    settle(
        &mut engine,
        "m1",
        1,
        SettleAction::Nack {
            delay_ms: Some(5_000),
            reason: "busy".into(),
        },
    );
    settle(
        &mut engine,
        "m1",
        3,
        SettleAction::Term {
            reason: "bad input".into(),
        },
    );
    clock.advance_ms(500);
    settle(
        &mut engine,
        "m1",
        4,
        SettleAction::InProgress {
            extend_ms: Some(10_000),
        },
    );
    clock.advance_ms(600);
    engine.tick().unwrap();
    clock.advance_ms(200);
    engine.tick().unwrap();
    let again = engine.deliver(&[("m1".into(), 1)]).unwrap();
    assert_eq!(again[0].1[0].record.offset, 2);
    clock.advance_ms(1_100);
    engine.tick().unwrap();

    let check = |store: &Store, context: &str| {
        assert!(
            matches!(state(store, 0), QueueState::Acked { attempts: 1, .. }),
            "{context}"
        );
        assert!(
            matches!(state(store, 1), QueueState::Waiting { ref reason, attempts: 1, .. } if reason == "busy"),
            "{context}: {:?}",
            state(store, 1)
        );
        match state(store, 2) {
            QueueState::DeadLettered {
                reason, attempts, ..
            } => {
                assert_eq!(attempts, 2, "{context}");
                assert!(
                    reason.contains("deadline passed after 2 deliveries"),
                    "{context}: {reason}"
                );
            }
            other => panic!("{context}: {other:?}"),
        }
        match state(store, 3) {
            QueueState::DeadLettered { reason, .. } => {
                assert_eq!(reason, "terminated: bad input", "{context}")
            }
            other => panic!("{context}: {other:?}"),
        }
        assert_eq!(state(store, 7), QueueState::Ready, "{context}");
        assert_eq!(
            story(store, 2),
            vec![
                (1, "m1".into(), Some(Outcome::DeadlinePassed), false),
                (2, "m1".into(), Some(Outcome::DeadlinePassed), true),
            ],
            "{context}"
        );
        assert_eq!(
            story(store, 3),
            vec![(1, "m1".into(), Some(Outcome::Terminated), true)],
            "{context}"
        );
        assert_eq!(
            story(store, 1),
            vec![(1, "m1".into(), Some(Outcome::Nacked), false)],
            "{context}"
        );
        let attempts =
            inspect::message_history(store, "work", 0, 4, START_MS, store.clock().now_ms())
                .unwrap();
        assert_eq!(attempts[0].extensions, 1, "{context}");
        // Listing: failed attempts, newest first; dead letters; by header.
        let list = |filter, header: Option<(&str, &str)>| -> Vec<(u64, Outcome)> {
            inspect::list_deliveries(
                store,
                "work",
                &DeliveriesQuery {
                    filter,
                    header: header.map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))),
                    ..DeliveriesQuery::default()
                },
                store.clock().now_ms(),
            )
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| (d.event.offset, d.event.outcome))
            // 4's lease is given up after the first reopen (member left).
            .filter(|(offset, _)| *offset != 4)
            .collect()
        };
        assert_eq!(
            list(DeliveryFilter::DeadLettered, None),
            vec![(2, Outcome::DeadLettered), (3, Outcome::DeadLettered)],
            "{context}"
        );
        assert_eq!(
            list(DeliveryFilter::Failed, None),
            vec![
                (2, Outcome::DeadlinePassed),
                (2, Outcome::DeadlinePassed),
                (1, Outcome::Nacked)
            ],
            "{context}"
        );
        assert_eq!(
            list(DeliveryFilter::Acked, Some(("n", "0"))),
            vec![(0, Outcome::Acked)],
            "{context}"
        );
        assert!(
            list(DeliveryFilter::Acked, Some(("n", "1"))).is_empty(),
            "{context}"
        );
    };
    check(&store, "before the reopen");
    assert!(matches!(state(&store, 4), QueueState::Unacked { .. }));
    drop(engine);
    drop(store);
    fs.kill_process();
    let store = open(&fs, dir.path(), &clock).unwrap();
    check(&store, "after a kill and reopen");
    // The lease of 4 is given up at the first tick: its member is gone.
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.tick().unwrap();
    assert!(matches!(state(&store, 4), QueueState::Waiting { .. }));
    assert_eq!(
        story(&store, 4),
        vec![(1, "m1".into(), Some(Outcome::MemberLeft), false)]
    );
    drop(engine);
    drop(store);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let store = open(&fs, dir.path(), &clock).unwrap();
    check(&store, "after a power cut");
    // A deleted queue's history goes with it.
    admin::delete_queue(&*store, "work").unwrap();
    assert!(!dir.path().join("state/history/work").exists());
}

#[test]
fn expired_and_group_states() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 2).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    let topic = store.topic("jobs").unwrap();
    topic
        .partition(0)
        .unwrap()
        .append_durable(&[
            NewRecord {
                value: Bytes::from_static(b"acked, then expired"),
                ttl_ms: Some(1_000),
                ..NewRecord::default()
            },
            NewRecord {
                value: Bytes::from_static(b"expired, never delivered"),
                ttl_ms: Some(1_000),
                ..NewRecord::default()
            },
        ])
        .unwrap();
    // Every message but the last is delivered; the first short-lived one is acked.
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    let delivered = engine
        .deliver(&[("m".into(), MESSAGES as u32 + 1)])
        .unwrap();
    assert_eq!(delivered[0].1.len(), MESSAGES as usize + 1);
    settle(
        &mut engine,
        "m",
        MESSAGES,
        SettleAction::Ack { through: None },
    );
    clock.advance_ms(2_000);
    for (offset, acked) in [(MESSAGES, true), (MESSAGES + 1, false)] {
        let message = inspect::message_at(&topic, 0, offset).unwrap();
        assert_eq!(message, MessageAt::Expired);
        let state =
            inspect::queue_state(&*store, "work", 0, offset, &message, clock.now_ms()).unwrap();
        if acked {
            assert!(
                matches!(state, QueueState::Acked { attempts: 1, .. }),
                "an acked message stays acked once it expires: {state:?}"
            );
        } else {
            assert!(matches!(state, QueueState::Expired { .. }), "{state:?}");
        }
    }
    assert!(matches!(
        inspect::message_at(&topic, 0, 100).unwrap(),
        MessageAt::Missing { .. }
    ));
    store
        .offsets()
        .commit("g", &[("jobs".into(), 0, 3, String::new())])
        .unwrap();
    let past = inspect::group_state(&*store, "g", "jobs", 0, 2);
    assert_eq!((past.committed, past.past), (Some(3), true));
    let not_yet = inspect::group_state(&*store, "g", "jobs", 0, 3);
    assert!(!not_yet.past);
    assert_eq!(
        inspect::group_state(&*store, "none", "jobs", 0, 0).committed,
        None
    );
}

#[test]
fn a_bad_cursor_is_refused_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 3).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    admin::create_queue(&*store, "other", "jobs", StartAt::Earliest, config()).unwrap();
    let mut engine = QueueEngine::open(store.clone(), "other").unwrap();
    engine.member_joined("m");
    engine.deliver(&[("m".into(), 4)]).unwrap();
    let page = inspect::list_deliveries(
        &*store,
        "other",
        &DeliveriesQuery {
            limit: 2,
            ..DeliveriesQuery::default()
        },
        clock.now_ms(),
    )
    .unwrap();
    assert_eq!(page.deliveries.len(), 2);
    let cursor = page.next_cursor.unwrap();
    let refuse = |queue: &str, cursor: &str| {
        let error = inspect::list_deliveries(
            &*store,
            queue,
            &DeliveriesQuery {
                cursor: Some(cursor.into()),
                ..DeliveriesQuery::default()
            },
            clock.now_ms(),
        )
        .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
        error.to_string()
    };
    assert!(refuse("work", &cursor).contains("another queue"));
    assert!(refuse("other", "garbage").contains("cut short"));
    assert!(refuse("other", &cursor[..cursor.len() - 2]).contains("cut short"));
    let mut flipped = cursor.clone().into_bytes();
    flipped[12] = if flipped[12] == b'a' { b'b' } else { b'a' };
    assert!(refuse("other", &String::from_utf8(flipped).unwrap()).contains("checksum"));
    let error = inspect::list_deliveries(
        &*store,
        "other",
        &DeliveriesQuery {
            limit: 1001,
            ..DeliveriesQuery::default()
        },
        clock.now_ms(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("limit 1001"), "{error}");
    // The cursor of the other queue goes on where it stopped.
    let rest = inspect::list_deliveries(
        &*store,
        "other",
        &DeliveriesQuery {
            cursor: Some(cursor),
            ..DeliveriesQuery::default()
        },
        clock.now_ms(),
    )
    .unwrap();
    let offsets: Vec<u64> = rest.deliveries.iter().map(|d| d.event.offset).collect();
    assert_eq!(offsets, vec![1, 0]);
    assert!(rest.next_cursor.is_none());
}

// ---------------------------------------------------------------------------------------
// The model test
// ---------------------------------------------------------------------------------------

/// What the test saw of one message.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Per attempt: member, how it ended, dead-lettered after it.
    attempts: BTreeMap<u32, (String, Option<Outcome>, bool)>,
    /// Held now: member, attempt, deadline.
    held: Option<(String, u32, i64)>,
    acked: bool,
    dead: bool,
}

fn end_attempt(seen: &mut Seen, outcome: Outcome, max: u32) {
    let Some((_, attempt, _)) = seen.held.take() else {
        panic!("ending an attempt not held")
    };
    let entry = seen.attempts.get_mut(&attempt).unwrap();
    entry.1 = Some(outcome);
    match outcome {
        Outcome::Acked => seen.acked = true,
        Outcome::Terminated => {
            entry.2 = true;
            seen.dead = true;
        }
        _ if attempt >= max => {
            entry.2 = true;
            seen.dead = true;
        }
        _ => {}
    }
}

fn check_model(store: &Store, model: &BTreeMap<u64, Seen>, context: &str) {
    for (&offset, seen) in model {
        let story = story(store, offset);
        let expected: Vec<(u32, String, Option<Outcome>, bool)> = seen
            .attempts
            .iter()
            .map(|(&a, (m, o, d))| (a, m.clone(), *o, *d))
            .collect();
        assert_eq!(story, expected, "{context}: history of offset {offset}");
        let state = state(store, offset);
        let ok = match &state {
            QueueState::Acked { .. } => seen.acked,
            QueueState::DeadLettered { .. } => seen.dead,
            QueueState::Unacked {
                member, attempt, ..
            } => seen
                .held
                .as_ref()
                .is_some_and(|(m, a, _)| m == member && a == attempt),
            QueueState::Waiting { .. } => {
                !seen.attempts.is_empty() && seen.held.is_none() && !seen.acked && !seen.dead
            }
            QueueState::Ready => seen.attempts.is_empty(),
            _ => false,
        };
        assert!(
            ok,
            "{context}: offset {offset} is {state:?}, the test saw {seen:?}"
        );
    }
}

fn model_run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), seed).unwrap();
    let clock = ManualClock::new(START_MS);
    let config = config();
    let max = config.max_deliveries;
    let mut store = setup(&fs, dir.path(), &clock, config);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    let members = ["m1", "m2"];
    for m in members {
        engine.member_joined(m);
    }
    let mut model: BTreeMap<u64, Seen> = (0..MESSAGES).map(|o| (o, Seen::default())).collect();
    let mut rng = Rng::new(seed);
    for step in 0..80 {
        let context = format!("seed {seed} step {step}");
        let now = clock.now_ms();
        match rng.below(10) {
            0..=2 => {
                let member = members[rng.below(2) as usize];
                for (m, deliveries) in engine
                    .deliver(&[(member.into(), 1 + rng.below(3) as u32)])
                    .unwrap()
                {
                    for d in deliveries {
                        let seen = model.get_mut(&d.record.offset).unwrap();
                        assert!(!seen.acked && !seen.dead, "{context}");
                        seen.attempts.insert(d.attempt, (m.clone(), None, false));
                        seen.held = Some((m.clone(), d.attempt, d.deadline_ms));
                    }
                }
            }
            3..=6 => {
                let held: Vec<(u64, String)> = model
                    .iter()
                    .filter_map(|(&o, s)| s.held.as_ref().map(|h| (o, h.0.clone())))
                    .collect();
                if held.is_empty() {
                    continue;
                }
                let (offset, member) = held[rng.below(held.len() as u64) as usize].clone();
                let (action, outcome) = match rng.below(4) {
                    0 => (SettleAction::Ack { through: None }, Some(Outcome::Acked)),
                    1 => (
                        SettleAction::Nack {
                            delay_ms: None,
                            reason: format!("nack {step}"),
                        },
                        Some(Outcome::Nacked),
                    ),
                    2 => (
                        SettleAction::Term {
                            reason: "term".into(),
                        },
                        Some(Outcome::Terminated),
                    ),
                    _ => (SettleAction::InProgress { extend_ms: None }, None),
                };
                let result = settle(&mut engine, &member, offset, action);
                assert!(
                    matches!(result, SettleOutcome::Ok { .. }),
                    "{context}: {result:?}"
                );
                let seen = model.get_mut(&offset).unwrap();
                match outcome {
                    Some(outcome) => end_attempt(seen, outcome, max),
                    None => {
                        if let Some(held) = &mut seen.held {
                            held.2 = now + 1_000;
                        }
                    }
                }
            }
            7 | 8 => {
                clock.advance_ms(200 + rng.below(900) as i64);
                let now = clock.now_ms();
                engine.tick().unwrap();
                for seen in model.values_mut() {
                    if seen.held.as_ref().is_some_and(|h| h.2 <= now) {
                        end_attempt(seen, Outcome::DeadlinePassed, max);
                    }
                }
            }
            _ => {
                drop(engine);
                drop(store);
                match rng.below(3) {
                    0 => fs.kill_process(),
                    1 => fs.crash(CrashOptions::lose_unsynced()).unwrap(),
                    _ => {}
                }
                store = open(&fs, dir.path(), &clock).unwrap();
                check_model(&store, &model, &format!("{context}, reopened"));
                engine = QueueEngine::open(store.clone(), "work").unwrap();
                engine.tick().unwrap();
                for seen in model.values_mut() {
                    if seen.held.is_some() {
                        end_attempt(seen, Outcome::MemberLeft, max);
                    }
                }
                for m in members {
                    engine.member_joined(m);
                }
            }
        }
        check_model(&store, &model, &context);
    }
}

#[test]
fn status_and_history_match_what_the_engine_did() {
    let seeds = std::env::var("TIDELOG_HISTORY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6u64);
    for seed in 0..seeds {
        model_run(seed);
    }
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

/// Events of one engine call, answered once its history is durable.
type Answered = Vec<(u64, u32, Outcome)>;

/// The calls whose history is submitted and not yet waited for (pipelined mode).
struct Pipeline {
    /// The server's way (`QueueEngine::defer_history`): each call's history is waited
    /// for after the next call made its queue-state decision durable, so the two
    /// fsyncs overlap; its events count as answered only then.
    deferred: bool,
    previous: Option<(HistoryWait, Answered)>,
    answered: Answered,
}

impl Pipeline {
    /// After an engine call that returned Ok with `events`: false when a wait failed,
    /// or the call's history could not be written (the call stands without its
    /// events, counted: the power is off), which ends the workload.
    fn called(&mut self, engine: &mut QueueEngine, events: Answered) -> bool {
        if engine.counters.history_failed_events > 0 {
            return false;
        }
        if !self.deferred {
            self.answered.extend(events);
            return true;
        }
        let this = (engine.take_history(), events);
        let ok = self.finish();
        self.previous = Some(this);
        ok
    }

    /// Waits for the call still in flight.
    fn finish(&mut self) -> bool {
        match self.previous.take() {
            Some((wait, events)) => {
                let ok = wait.wait().is_ok();
                if ok {
                    self.answered.extend(events);
                }
                ok
            }
            None => true,
        }
    }

    fn end(mut self, engine: Option<&mut QueueEngine>) -> Answered {
        if let Some(engine) = engine {
            // A failed call submitted nothing to answer for, but what it submitted is
            // waited for (as the server does).
            let _ = engine.take_history().wait();
        }
        self.finish();
        self.answered
    }
}

/// Runs a fixed workload with the power cut after `cut_at` filesystem operations;
/// returns the events of the calls that were answered (their history durable by then).
fn workload(
    fs: &FaultyFs,
    data: &Path,
    clock: &Arc<ManualClock>,
    deferred: bool,
) -> Vec<(u64, u32, Outcome)> {
    let mut pipeline = Pipeline {
        deferred,
        previous: None,
        answered: Vec::new(),
    };
    let Ok(store) = open(fs, data, clock) else {
        return pipeline.end(None);
    };
    let Ok(mut engine) = QueueEngine::open(store.clone(), "work") else {
        return pipeline.end(None);
    };
    engine.defer_history(deferred);
    engine.member_joined("m");
    for round in 0..3u32 {
        let Ok(delivered) = engine.deliver(&[("m".into(), 3)]) else {
            return pipeline.end(Some(&mut engine));
        };
        let offsets: Vec<(u64, u32)> = delivered
            .iter()
            .flat_map(|(_, d)| d.iter().map(|d| (d.record.offset, d.attempt)))
            .collect();
        let events = offsets
            .iter()
            .map(|&(o, a)| (o, a, Outcome::Delivered))
            .collect();
        if !pipeline.called(&mut engine, events) {
            return pipeline.end(Some(&mut engine));
        }
        for (i, &(offset, attempt)) in offsets.iter().enumerate() {
            let (action, outcome) = if (i as u32 + round).is_multiple_of(2) {
                (SettleAction::Ack { through: None }, Outcome::Acked)
            } else {
                (
                    SettleAction::Nack {
                        delay_ms: Some(0),
                        reason: "again".into(),
                    },
                    Outcome::Nacked,
                )
            };
            let settled = engine.settle(
                Some("m"),
                &[SettleRequest {
                    partition: 0,
                    offset,
                    attempt,
                    action,
                }],
            );
            if settled.is_err() || !pipeline.called(&mut engine, vec![(offset, attempt, outcome)]) {
                return pipeline.end(Some(&mut engine));
            }
        }
        clock.advance_ms(10);
        if engine.tick().is_err() || !pipeline.called(&mut engine, Vec::new()) {
            return pipeline.end(Some(&mut engine));
        }
    }
    pipeline.end(Some(&mut engine))
}

#[test]
fn a_power_cut_at_every_step_keeps_every_event_of_an_answered_call() {
    power_cut_at_every_step(false);
}

/// The same with the history pipelined as the broker runs it (each call's history
/// fsync overlapping the next call's queue-state fsync).
#[test]
fn a_power_cut_at_every_step_keeps_every_event_of_an_answered_call_pipelined() {
    power_cut_at_every_step(true);
}

fn power_cut_at_every_step(deferred: bool) {
    // How many filesystem operations the workload takes with the power on.
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), 0).unwrap();
        let clock = ManualClock::new(START_MS);
        drop(setup(&fs, dir.path(), &clock, config()));
        let before = fs.ops();
        workload(&fs, dir.path(), &clock, deferred);
        fs.ops() - before
    };
    assert!(
        total > 50,
        "the workload takes {total} filesystem operations"
    );
    eprintln!("history: {total} power-cut points checked");
    for cut in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), cut).unwrap();
        if cut % 2 == 1 {
            fs.set_short_writes(Some(3));
        }
        let clock = ManualClock::new(START_MS);
        drop(setup(&fs, dir.path(), &clock, config()));
        fs.power_off_after(cut);
        let answered = workload(&fs, dir.path(), &clock, deferred);
        let options = if cut % 3 == 0 {
            CrashOptions::keep_some(cut)
        } else {
            CrashOptions::lose_unsynced()
        };
        fs.crash(options).unwrap();
        let context = format!("power cut after {cut} of {total} operations");
        let store = open(&fs, dir.path(), &clock)
            .unwrap_or_else(|e| panic!("{context}: the store does not open: {e}"));
        let history = store.queue_history("work").unwrap();
        assert!(store.queue_history("..").is_err());
        for (offset, attempt, outcome) in &answered {
            let attempts = message_attempts(&history, 0, *offset, 0, 100).unwrap();
            let found = attempts.iter().find(|a| a.attempt == *attempt);
            let recorded = match outcome {
                Outcome::Delivered => found.is_some_and(|a| a.delivered_ms.is_some()),
                other => found.is_some_and(|a| a.outcome.as_ref().map(|o| o.0) == Some(*other)),
            };
            assert!(
                recorded,
                "{context}: {offset}/{attempt} {outcome:?} answered but not in the history {attempts:?}"
            );
        }
        // Every event the history shows happened: the queue state agrees.
        for offset in 0..MESSAGES {
            let attempts = message_attempts(&history, 0, offset, 0, 100).unwrap();
            let pending_attempts = store.queues().read(|q| {
                q.get("work").unwrap().partitions[&0]
                    .pending
                    .get(offset)
                    .map(|p| p.attempts)
            });
            if let Some(pending) = pending_attempts {
                assert!(
                    attempts.iter().all(|a| a.attempt <= pending),
                    "{context}: offset {offset} pending at attempt {pending}, history {attempts:?}"
                );
            }
        }
        // The recovered history takes appends.
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("m");
        clock.advance_ms(10_000);
        engine.tick().unwrap();
        engine.deliver(&[("m".into(), 1)]).unwrap();
    }
}

fn event(offset: u64, at_ms: i64) -> HistoryEvent {
    HistoryEvent {
        partition: 0,
        offset,
        attempt: 1,
        at_ms,
        outcome: Outcome::Acked,
        deadline_ms: 0,
        member: "m".into(),
        reason: String::new(),
    }
}

fn listed(history: &QueueHistory) -> Vec<u64> {
    list_events(
        history,
        &ListRequest {
            since_ms: i64::MIN,
            until_ms: i64::MAX,
            limit: 1000,
            cursor: None,
            queue_tag: 0,
        },
        |_| true,
        |_| Ok(true),
    )
    .unwrap()
    .events
    .iter()
    .map(|e| e.offset)
    .collect()
}

/// A failed history fsync (EIO) poisons the history until a restart: never retried,
/// its events never reported as recorded. The decisions it would have recorded
/// stand (they are in the queue state first): the settle is answered, and so is
/// every later call, without history, each failure counted.
#[test]
fn eio_on_a_history_fsync_poisons_the_history_never_retried_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 5).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    engine.deliver(&[("m".into(), 2)]).unwrap();
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::Data])
            .path_contains(".history"),
    );
    let ack = |offset| SettleRequest {
        partition: 0,
        offset,
        attempt: 0,
        action: SettleAction::Ack { through: None },
    };
    let settled = engine.settle(Some("m"), &[ack(0)]).unwrap();
    assert!(
        matches!(settled[..], [SettleOutcome::Ok { .. }]),
        "{settled:?}"
    );
    assert_eq!(engine.counters.history_failed_events, 1);
    // Later calls are answered too; the poisoned history takes nothing more.
    let settled = engine.settle(Some("m"), &[ack(1)]).unwrap();
    assert!(
        matches!(settled[..], [SettleOutcome::Ok { .. }]),
        "{settled:?}"
    );
    assert_eq!(engine.counters.history_failed_events, 2);
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(delivered.len(), 1, "deliveries go on without history");
    assert_eq!(engine.counters.history_failed_events, 3);
    assert_eq!(
        fs.stats().failed_syncs,
        1,
        "the failed fsync is never retried"
    );
    drop(engine);
    drop(store);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let store = open(&fs, dir.path(), &clock).unwrap();
    // The queue state holds the acks (they were durable first); the history lacks
    // their events but opens and records again.
    for offset in [0, 1] {
        assert!(matches!(
            state(&store, offset),
            QueueState::Acked { .. } | QueueState::Settled { .. }
        ));
    }
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    clock.advance_ms(60_000);
    engine.tick().unwrap();
    engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(engine.counters.history_failed_events, 0);
    assert!(!story(&store, 2).is_empty());
}

/// Bug hunt 5 (2026-12-07): on a full disk a delivery's history append failed after
/// its lease was durable, and the engine call failed: the deliveries went to no
/// member, yet counted as attempts (with max_deliveries 1 they were dead-lettered
/// unseen). Now the deliveries are made and returned; the history lacks them, counted.
#[test]
fn a_history_append_refused_for_room_does_not_undo_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 8).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    engine.deliver(&[("m".into(), 1)]).unwrap();
    // Room for the queue state's next record, not for the history's.
    fs.set_full_for(Some(".history"));
    let delivered = engine.deliver(&[("m".into(), 2)]).unwrap();
    let offsets: Vec<u64> = delivered
        .iter()
        .flat_map(|(_, d)| d.iter().map(|d| d.record.offset))
        .collect();
    assert_eq!(offsets, [1, 2]);
    assert_eq!(engine.counters.delivered, 3);
    assert_eq!(engine.counters.history_failed_events, 2);
    fs.set_full_for(None);
    let settled = engine
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
    assert!(
        matches!(settled[..], [SettleOutcome::Ok { .. }]),
        "{settled:?}"
    );
    assert_eq!(engine.counters.history_failed_events, 2, "room again");
    assert!(!story(&store, 1).is_empty(), "the ack is recorded");
}

#[test]
fn enospc_fails_one_append_cleanly_and_appends_resume_with_room() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 6).unwrap();
    let clock = ManualClock::new(START_MS);
    let history = QueueHistory::new(Arc::new(fs.clone()), dir.path().join("q"), clock.clone());
    history
        .append(vec![event(0, START_MS)], 86_400_000)
        .unwrap();
    let before = history.disk_bytes().unwrap();
    fs.set_capacity(Some(fs.used_bytes() + 20));
    let error = history
        .append(vec![event(1, START_MS)], 86_400_000)
        .unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert_eq!(
        history.disk_bytes().unwrap(),
        before,
        "the file is cut back"
    );
    assert_eq!(listed(&history), vec![0]);
    fs.set_capacity(None);
    history
        .append(vec![event(2, START_MS)], 86_400_000)
        .unwrap();
    drop(history);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let history = QueueHistory::new(Arc::new(fs.clone()), dir.path().join("q"), clock.clone());
    assert_eq!(listed(&history), vec![2, 0]);
}

/// A message that expires while leased on its last attempt is settled without a dead
/// letter, whether its deadline passes or its member terms it or nacks it: nothing is
/// written to the dead-letter topic (not even created), no DEAD_LETTERED event or count,
/// and its status is EXPIRED after its 1 attempt (it said DEAD_LETTERED, "appended to
/// the dead-letter topic", with nothing appended, and attempts 0).
#[test]
fn a_message_that_expires_on_its_last_attempt_is_expired_not_dead_lettered() {
    for how in ["deadline", "term", "nack"] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), 3).unwrap();
        let clock = ManualClock::new(START_MS);
        let config = QueueConfig {
            max_deliveries: 1,
            ..config()
        };
        let store = setup(&fs, dir.path(), &clock, config);
        let partition = store.topic("jobs").unwrap().partition(0).unwrap().clone();
        partition
            .append_durable(&[NewRecord {
                value: Bytes::from_static(b"short-lived"),
                ttl_ms: Some(500),
                ..NewRecord::default()
            }])
            .unwrap();
        let offset = MESSAGES;
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("m");
        let delivered = engine
            .deliver(&[("m".into(), MESSAGES as u32 + 1)])
            .unwrap();
        assert_eq!(delivered[0].1.len(), MESSAGES as usize + 1, "{how}");
        // The others are acked: only the short-lived one is held.
        settle(
            &mut engine,
            "m",
            0,
            SettleAction::Ack {
                through: Some(MESSAGES - 1),
            },
        );
        clock.advance_ms(600);
        match how {
            "deadline" => {
                clock.advance_ms(1_000);
                engine.tick().unwrap();
            }
            "term" => assert_eq!(
                settle(
                    &mut engine,
                    "m",
                    offset,
                    SettleAction::Term {
                        reason: "bad".into()
                    }
                ),
                SettleOutcome::Ok { settled: 1 },
                "{how}"
            ),
            _ => assert_eq!(
                settle(
                    &mut engine,
                    "m",
                    offset,
                    SettleAction::Nack {
                        delay_ms: None,
                        reason: "bad".into()
                    }
                ),
                SettleOutcome::Ok { settled: 1 },
                "{how}"
            ),
        }
        assert!(
            matches!(store.topic("jobs.dlq"), Err(Error::NotFound { .. })),
            "{how}: no letter was written, so no dead-letter topic"
        );
        assert_eq!(
            (
                engine.counters.dead_lettered_max_deliveries,
                engine.counters.dead_lettered_term,
                engine.counters.lost_to_retention
            ),
            (0, 0, 1),
            "{how}"
        );
        assert!(
            story(&store, offset)
                .iter()
                .all(|(_, _, _, letter)| !letter),
            "{how}: {:?}",
            story(&store, offset)
        );
        let state = state(&store, offset);
        assert!(
            matches!(state, QueueState::Expired { attempts: 1, .. }),
            "{how}: {state:?}"
        );
        let status = admin::queue_status(&*store, "work", clock.now_ms()).unwrap();
        assert_eq!(status.unacked, 0, "{how}");
    }
}

/// A purged message delivered twice is SETTLED after 2 attempts (it said 0).
#[test]
fn a_purged_message_keeps_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 4).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    for attempt in 1..=2 {
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        assert_eq!(delivered[0].1[0].attempt, attempt);
        settle(
            &mut engine,
            "m",
            0,
            SettleAction::Nack {
                delay_ms: Some(0),
                reason: "again".into(),
            },
        );
        engine.tick().unwrap();
    }
    drop(engine);
    admin::purge_queue(&*store, "work").unwrap();
    let state = state(&store, 0);
    assert!(
        matches!(state, QueueState::Settled { attempts: 2 }),
        "{state:?}"
    );
}

const HOUR_MS: i64 = 3_600_000;

/// Acks message `offset`, the next one the queue delivers, now.
fn deliver_and_ack(engine: &mut QueueEngine, offset: u64) {
    let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
    assert_eq!(delivered[0].1[0].record.offset, offset);
    assert!(matches!(
        settle(engine, "m", offset, SettleAction::Ack { through: None }),
        SettleOutcome::Ok { settled: 1 }
    ));
}

/// When queue `work`'s history files began.
fn history_files(store: &Store) -> Vec<i64> {
    store
        .queue_history("work")
        .unwrap()
        .files()
        .unwrap()
        .iter()
        .map(|f| f.start_ms)
        .collect()
}

/// An idle queue's history files past its retention go at the next retention pass,
/// with no delivery or settlement since (they went only with the queue's next append):
/// the file appends went to last stays. The pruned message's history is then what the
/// README says of history past the retention: no attempts, status SETTLED.
#[test]
fn an_idle_queues_expired_history_files_go_at_the_next_retention_pass() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 5).unwrap();
    let clock = ManualClock::new(START_MS);
    let config = QueueConfig {
        history_retention_ms: 3 * HOUR_MS as u64,
        ..config()
    };
    let store = setup(&fs, dir.path(), &clock, config);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    // A file an hour at most: message 0's events in one, message 1's two hours later
    // in the next.
    deliver_and_ack(&mut engine, 0);
    clock.advance_ms(2 * HOUR_MS);
    deliver_and_ack(&mut engine, 1);
    assert_eq!(history_files(&store), [START_MS, START_MS + 2 * HOUR_MS]);
    assert_eq!(story(&store, 0).len(), 1);

    // The engine stays idle from here on. Two hours on, the second file began 2 h
    // ago: within the 3 h retention, the first file's events may still be wanted.
    clock.advance_ms(2 * HOUR_MS);
    store.enforce_retention();
    assert_eq!(history_files(&store), [START_MS, START_MS + 2 * HOUR_MS]);
    // Past it: every event of the first file is older than the retention.
    clock.advance_ms(HOUR_MS + 1);
    store.enforce_retention();
    assert_eq!(
        history_files(&store),
        [START_MS + 2 * HOUR_MS],
        "the first file is past the retention and the queue is idle: the retention pass deletes it"
    );
    assert!(story(&store, 0).is_empty());
    assert!(
        matches!(state(&store, 0), QueueState::Settled { .. }),
        "{:?}",
        state(&store, 0)
    );
    // The queue goes on: its next events begin a new file (the one that stayed is
    // more than an hour old).
    deliver_and_ack(&mut engine, 2);
    let now = clock.now_ms();
    assert_eq!(history_files(&store), [START_MS + 2 * HOUR_MS, now]);
    assert_eq!(story(&store, 2).len(), 1);
}

/// A history retention lowered by AlterQueue takes effect at the next retention pass,
/// and a store opens with the history of queues it has not opened yet pruned: no
/// delivery needed in either case.
#[test]
fn a_lowered_history_retention_and_a_reopen_prune_an_idle_queues_history() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 6).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = setup(&fs, dir.path(), &clock, config());
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("m");
    for offset in 0..3 {
        if offset > 0 {
            clock.advance_ms(2 * HOUR_MS);
        }
        deliver_and_ack(&mut engine, offset);
    }
    let all = [START_MS, START_MS + 2 * HOUR_MS, START_MS + 4 * HOUR_MS];
    assert_eq!(history_files(&store), all);
    store.enforce_retention();
    assert_eq!(history_files(&store), all, "7 days of retention keep them");

    // 90 minutes: the first file's events are all older (the next began 2 h ago), the
    // second's newest are not (the third began just now).
    admin::alter_queue(&*store, "work", |c| c.history_retention_ms = 90 * 60 * 1000).unwrap();
    store.enforce_retention();
    assert_eq!(history_files(&store), &all[1..]);

    // Two hours later the second file is past it too; a store opened now deletes it
    // before anything asks for the queue.
    drop(engine);
    store.close().unwrap();
    drop(store);
    clock.advance_ms(2 * HOUR_MS);
    let store = open(&fs, dir.path(), &clock).unwrap();
    assert_eq!(history_files(&store), &all[2..]);
}
