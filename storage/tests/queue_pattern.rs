//! Queues on a topic pattern in the storage engine: which topics they take (now and
//! later, never their own dead-letter topic), where each starts, status, alter, purge,
//! delete and redrive over all of them; then power cuts, EIO and ENOSPC at every step
//! of a workload of pattern-queue and topic changes (FaultyFs), checked against what
//! was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault};
use tidelog_storage::queue::admin::{self, DLQ_HEADER_TOPIC};
use tidelog_storage::queue::history::QueueHistory;
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, QueueHost, QueueOp, Queues, SettleAction, SettleRequest, StartAt,
};
use tidelog_storage::statelog::StateLog;
use tidelog_storage::{
    Clock, ManualClock, NewRecord, OffsetStore, Result, Store, StoreOptions, Topic, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;

fn options(fs: &FaultyFs, clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        flush_threads: 1,
        retention_interval: None,
        flush_observer: None,
        fs: Arc::new(fs.clone()),
        ..StoreOptions::default()
    }
}

fn open(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> Result<Arc<Store>> {
    Store::open(data, options(fs, clock)).map(Arc::new)
}

fn publish(store: &Store, topic: &str, count: u64) {
    let topic = store.topic(topic).unwrap();
    for partition in topic.partitions() {
        let records: Vec<NewRecord> = (0..count)
            .map(|i| NewRecord::value(Bytes::from(format!("{}-{i}", topic.name()))))
            .collect();
        partition.append_durable(&records).unwrap();
    }
}

fn config(queue: &str) -> QueueConfig {
    QueueConfig {
        max_deliveries: 1,
        ..QueueConfig::defaults_for(queue)
    }
}

/// (topic, per-topic queue) of pattern queue `name`.
fn children(store: &Store, name: &str) -> BTreeMap<String, String> {
    store.queues().read(|q| {
        q.children(name)
            .map(|c| (c.topic.clone(), c.name.clone()))
            .collect()
    })
}

/// Every value a member of the queue gets when it takes everything, by topic.
fn drain(store: &Arc<Store>, name: &str) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, child) in admin::serving_queues(&**store, name).unwrap() {
        let mut engine = QueueEngine::open(store.clone(), &child).unwrap();
        engine.member_joined("m");
        loop {
            let batches = engine.deliver(&[("m".into(), 1000)]).unwrap();
            if batches.is_empty() {
                break;
            }
            for (_, deliveries) in batches {
                let requests: Vec<SettleRequest> = deliveries
                    .iter()
                    .map(|d| SettleRequest {
                        partition: d.partition,
                        offset: d.record.offset,
                        attempt: 0,
                        action: SettleAction::Ack { through: None },
                    })
                    .collect();
                for d in &deliveries {
                    got.entry(topic.clone())
                        .or_default()
                        .push(String::from_utf8_lossy(&d.record.value).into_owned());
                }
                engine.settle(Some("m"), &requests).unwrap();
            }
        }
    }
    got
}

#[test]
fn a_pattern_queue_takes_matching_topics_now_and_later_but_never_its_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    for (topic, partitions) in [("orders.eu", 2), ("orders.us", 1), ("payments", 1)] {
        store
            .create_topic(topic, partitions, TopicConfig::default())
            .unwrap();
        publish(&store, topic, 3);
    }
    // Its dead-letter topic matches the pattern too: it must not consume it.
    let mut dlq_config = config("orders.dlq");
    dlq_config.dead_letter_topic = "orders.dlq".into();
    let queue = admin::create_pattern_queue(
        &*store,
        "all-orders",
        r"orders\..*",
        StartAt::Latest,
        dlq_config,
    )
    .unwrap();
    assert_eq!(queue.next_child, 2);
    assert_eq!(
        children(&store, "all-orders").keys().collect::<Vec<_>>(),
        vec!["orders.eu", "orders.us"]
    );
    // A name in use, a bad pattern, a reserved name.
    for (name, pattern) in [("all-orders", "x"), ("other", "orders("), ("__pq.x.1", "x")] {
        assert!(
            admin::create_pattern_queue(&*store, name, pattern, StartAt::Latest, config(name))
                .is_err(),
            "{name} {pattern}"
        );
    }
    // Latest: what was there before is not delivered; what comes after is.
    publish(&store, "orders.eu", 1);
    // A topic created later starts at its beginning: everything published to it since
    // the queue existed.
    store
        .create_topic("orders.asia", 1, TopicConfig::default())
        .unwrap();
    publish(&store, "orders.asia", 2);
    store
        .create_topic("orders.dlq", 1, TopicConfig::default())
        .unwrap();
    publish(&store, "orders.dlq", 1);
    let sync = admin::sync_pattern_queue(&*store, "all-orders").unwrap();
    assert_eq!(sync.added, vec!["orders.asia"]);
    assert_eq!(
        admin::sync_pattern_queue(&*store, "all-orders").unwrap(),
        Default::default(),
        "nothing changed: nothing written"
    );
    let status = admin::queue_status(&*store, "all-orders", START_MS).unwrap();
    assert_eq!(status.pattern.as_deref(), Some(r"orders\..*"));
    assert_eq!(status.ready, 2 + 2);
    assert_eq!(
        status
            .partitions
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect::<Vec<_>>(),
        vec![
            ("orders.asia", 0),
            ("orders.eu", 0),
            ("orders.eu", 1),
            ("orders.us", 0)
        ]
    );
    assert_eq!(
        admin::list_queues(&*store, None),
        vec!["all-orders".to_string()],
        "the per-topic queues are not listed"
    );
    assert_eq!(
        admin::list_queues(&*store, Some("orders.asia")),
        vec!["all-orders".to_string()]
    );
    assert_eq!(
        admin::queue_for_topic(&*store, "all-orders", "orders.eu").unwrap(),
        children(&store, "all-orders")["orders.eu"]
    );
    let error = admin::queue_for_topic(&*store, "all-orders", "payments").unwrap_err();
    assert!(error.to_string().contains("payments"), "{error}");
    let got = drain(&store, "all-orders");
    assert_eq!(
        got,
        BTreeMap::from([
            (
                "orders.asia".to_string(),
                vec!["orders.asia-0".to_string(), "orders.asia-1".to_string()]
            ),
            (
                "orders.eu".to_string(),
                vec!["orders.eu-0".to_string(), "orders.eu-0".to_string()]
            ),
        ])
    );

    // Alter reaches every topic's queue; the filter stays.
    let altered = admin::alter_queue(&*store, "all-orders", |c| c.ack_deadline_ms = 5_000).unwrap();
    assert_eq!(altered.ack_deadline_ms, 5_000);
    store.queues().read(|q| {
        assert!(
            q.children("all-orders")
                .all(|c| c.config.ack_deadline_ms == 5_000)
        );
    });

    // A deleted topic drops out with its queue.
    store.delete_topic("orders.us").unwrap();
    assert!(!children(&store, "all-orders").contains_key("orders.us"));
    assert_eq!(
        admin::sync_pattern_queue(&*store, "all-orders").unwrap(),
        Default::default()
    );

    // A term dead-letters into the one dead-letter topic, which names the pattern
    // queue and the topic; redrive puts each letter back into its own topic.
    publish(&store, "orders.asia", 1);
    let child = children(&store, "all-orders")["orders.asia"].clone();
    let mut engine = QueueEngine::open(store.clone(), &child).unwrap();
    engine.member_joined("m");
    let batches = engine.deliver(&[("m".into(), 10)]).unwrap();
    let delivery = &batches[0].1[0];
    engine
        .settle(
            Some("m"),
            &[SettleRequest {
                partition: delivery.partition,
                offset: delivery.record.offset,
                attempt: 0,
                action: SettleAction::Term {
                    reason: "bad".into(),
                },
            }],
        )
        .unwrap();
    drop(engine);
    let dlq = store.topic("orders.dlq").unwrap();
    let letter = dlq
        .partition(0)
        .unwrap()
        .read(1, 10, 1 << 20)
        .unwrap()
        .records;
    assert_eq!(letter.len(), 1);
    let header = |key: &str| {
        letter[0]
            .headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    };
    assert_eq!(header("tidelog-dlq-queue").as_deref(), Some("all-orders"));
    assert_eq!(header(DLQ_HEADER_TOPIC).as_deref(), Some("orders.asia"));
    let asia_end = store
        .topic("orders.asia")
        .unwrap()
        .partition(0)
        .unwrap()
        .end_offset()
        .unwrap();
    assert_eq!(
        admin::redrive_queue(&*store, "all-orders", 0).unwrap(),
        (1, 0)
    );
    assert_eq!(
        store
            .topic("orders.asia")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap(),
        asia_end + 1
    );

    // Purge and delete cover every topic.
    publish(&store, "orders.eu", 2);
    assert_eq!(admin::purge_queue(&*store, "all-orders").unwrap(), 5);
    assert_eq!(
        admin::queue_status(&*store, "all-orders", START_MS)
            .unwrap()
            .ready,
        0
    );
    admin::delete_queue(&*store, "all-orders").unwrap();
    assert!(
        store
            .queues()
            .read(|q| q.iter().next().is_none() && q.patterns().next().is_none())
    );
    assert!(admin::delete_queue(&*store, "all-orders").is_err());
}

/// What the workload was told, to hold the recovered state to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    /// Whether the pattern queue exists, as far as acknowledged calls say.
    exists: bool,
    /// Topics that exist, as far as acknowledged calls say.
    topics: BTreeSet<String>,
}

/// Pattern-queue and topic changes; stops at the first error (the power went, or a
/// fault was injected).
fn workload(store: &Arc<Store>, seen: &mut Seen, in_flight: &mut Option<Seen>) -> Result<()> {
    type Step = (Box<dyn Fn(&Store) -> Result<()>>, fn(&mut Seen));
    let steps: Vec<Step> = vec![
        (
            Box::new(|s| {
                s.create_topic("jobs.a", 2, TopicConfig::default())
                    .map(drop)
            }),
            |seen| {
                seen.topics.insert("jobs.a".into());
            },
        ),
        (
            Box::new(|s| {
                admin::create_pattern_queue(
                    s,
                    "work",
                    r"jobs\..*",
                    StartAt::Earliest,
                    config("work"),
                )
                .map(drop)
            }),
            |seen| seen.exists = true,
        ),
        (
            Box::new(|s| {
                s.create_topic("jobs.b", 1, TopicConfig::default())
                    .map(drop)
            }),
            |seen| {
                seen.topics.insert("jobs.b".into());
            },
        ),
        (
            Box::new(|s| admin::sync_pattern_queue(s, "work").map(drop)),
            |_| {},
        ),
        (Box::new(|s| s.delete_topic("jobs.a")), |seen| {
            seen.topics.remove("jobs.a");
        }),
        (
            Box::new(|s| admin::sync_pattern_queue(s, "work").map(drop)),
            |_| {},
        ),
        (
            Box::new(|s| admin::alter_queue(s, "work", |c| c.max_deliveries = 7).map(drop)),
            |_| {},
        ),
        (
            Box::new(|s| {
                s.create_topic("jobs.a", 1, TopicConfig::default())
                    .map(drop)
            }),
            |seen| {
                seen.topics.insert("jobs.a".into());
            },
        ),
        (
            Box::new(|s| admin::sync_pattern_queue(s, "work").map(drop)),
            |_| {},
        ),
        (Box::new(|s| admin::delete_queue(s, "work")), |seen| {
            seen.exists = false
        }),
    ];
    for (step, effect) in steps {
        let mut next = seen.clone();
        effect(&mut next);
        *in_flight = Some(next.clone());
        step(store)?;
        *in_flight = None;
        *seen = next;
    }
    Ok(())
}

/// After recovery and a sync: the pattern queue exists as acknowledged (or as the
/// call in flight left it), and has exactly one queue on every matching topic.
fn check(store: &Arc<Store>, allowed: &[Seen], context: &str) {
    let exists = store.queues().read(|q| q.pattern("work").is_some());
    let topics: BTreeSet<String> = store
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| t.starts_with("jobs."))
        .collect();
    assert!(
        allowed.iter().any(|a| a.exists == exists),
        "{context}: pattern queue exists {exists}, allowed {allowed:?}"
    );
    assert!(
        allowed.iter().any(|a| a.topics.is_subset(&topics)),
        "{context}: topics {topics:?}, allowed {allowed:?}"
    );
    if exists {
        admin::sync_pattern_queue(&**store, "work")
            .unwrap_or_else(|e| panic!("{context}: sync after recovery: {e}"));
        let queues: Vec<(String, String)> = store.queues().read(|q| {
            q.children("work")
                .map(|c| (c.topic.clone(), c.name.clone()))
                .collect()
        });
        let on: BTreeSet<String> = queues.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(on, topics, "{context}: one queue per matching topic");
        assert_eq!(on.len(), queues.len(), "{context}: {queues:?}");
        assert_eq!(
            admin::queue_status(&**store, "work", START_MS)
                .unwrap()
                .config
                .max_deliveries,
            store
                .queues()
                .read(|q| q.pattern("work").unwrap().config.max_deliveries),
        );
    } else {
        let left = store.queues().read(|q| q.children("work").count());
        assert_eq!(
            left, 0,
            "{context}: per-topic queues outlived their pattern queue"
        );
    }
}

fn run(fault: &dyn Fn(&FaultyFs, u64), at: u64, ending: u64) -> (bool, u64) {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), at).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let data = dir.path().join("data");
    fault(&fs, at);
    let mut seen = Seen::default();
    let mut in_flight = None;
    let outcome = open(&fs, &data, &clock).and_then(|store| {
        let result = workload(&store, &mut seen, &mut in_flight);
        Arc::try_unwrap(store)
            .expect("nothing else holds the store")
            .simulate_crash();
        result
    });
    let failed = outcome.is_err();
    let ops = fs.ops();
    let context = format!("fault at {at}, ending {ending}: {outcome:?}");
    match ending {
        0 => fs.crash(CrashOptions::lose_unsynced()).unwrap(),
        1 => fs.crash(CrashOptions::keep_some(at)).unwrap(),
        _ => fs.kill_process(),
    }
    let mut allowed = vec![seen.clone()];
    allowed.extend(in_flight);
    let store = open(&fs, &data, &clock).unwrap_or_else(|e| panic!("{context}: reopening: {e}"));
    check(&store, &allowed, &context);
    (failed, ops)
}

#[test]
fn a_power_cut_at_every_step_leaves_each_topic_with_exactly_one_queue() {
    let (failed, total) = run(&|_, _| {}, 0, 0);
    assert!(!failed);
    assert!(
        total > 50,
        "the workload did too little: {total} operations"
    );
    for at in 1..=total {
        run(&|fs, at| fs.power_off_after(at), at, at % 3);
    }
}

#[test]
fn an_fsync_error_or_a_full_disk_fails_the_call_and_recovery_keeps_the_rest() {
    let (_, total) = run(&|_, _| {}, 0, 0);
    let mut failures = 0;
    for n in 1..=total.min(40) {
        let (failed, _) = run(&|fs, n| fs.fail_sync(SyncFault::nth(n)), n, 2);
        failures += u32::from(failed);
    }
    assert!(
        failures > 10,
        "only {failures} of the fsync faults failed a call"
    );
    for n in [1, 5, 20] {
        let _ = run(
            &|fs, n| {
                fs.set_capacity(Some(n * 4096));
            },
            n,
            n % 3,
        );
    }
}

#[test]
fn racing_syncs_give_each_topic_exactly_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 7).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    admin::create_pattern_queue(&*store, "race", r"r\..*", StartAt::Latest, config("race"))
        .unwrap();
    std::thread::scope(|scope| {
        // Topics appear while four threads sync (as the broker's runtime and
        // DescribeQueue calls do).
        scope.spawn(|| {
            for i in 0..40 {
                store
                    .create_topic(&format!("r.{i:02}"), 1, TopicConfig::default())
                    .unwrap();
            }
        });
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..60 {
                    admin::sync_pattern_queue(&*store, "race").unwrap();
                }
            });
        }
    });
    admin::sync_pattern_queue(&*store, "race").unwrap();
    let per_topic: BTreeMap<String, usize> = store.queues().read(|q| {
        let mut counts = BTreeMap::new();
        for child in q.children("race") {
            *counts.entry(child.topic.clone()).or_default() += 1;
        }
        counts
    });
    assert_eq!(per_topic.len(), 40, "{per_topic:?}");
    assert!(per_topic.values().all(|n| *n == 1), "{per_topic:?}");
}

/// `queues_with_leases` (what the broker starts as it starts) names the queues holding
/// a lease as clients know them: a plain queue by its name, a pattern queue's leases on
/// its per-topic queues by the pattern queue's name; a queue with messages ready but
/// none leased, or whose lease was settled, is not named.
#[test]
fn the_queues_with_leases_are_named_as_clients_know_them() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    for topic in ["orders.eu", "jobs", "idle"] {
        store
            .create_topic(topic, 1, TopicConfig::default())
            .unwrap();
    }
    admin::create_pattern_queue(
        &*store,
        "all-orders",
        r"orders\..*",
        StartAt::Earliest,
        config("all-orders"),
    )
    .unwrap();
    admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config("work")).unwrap();
    admin::create_queue(
        &*store,
        "unused",
        "idle",
        StartAt::Earliest,
        config("unused"),
    )
    .unwrap();
    for topic in ["orders.eu", "jobs", "idle"] {
        publish(&store, topic, 2);
    }
    assert!(admin::queues_with_leases(&*store).is_empty());
    let child = children(&store, "all-orders")["orders.eu"].clone();
    let mut engines = Vec::new();
    for queue in [child.as_str(), "work"] {
        let mut engine = QueueEngine::open(store.clone(), queue).unwrap();
        engine.member_joined("m");
        let delivered = engine.deliver(&[("m".into(), 1)]).unwrap();
        assert_eq!(delivered[0].1.len(), 1, "{queue}");
        engines.push((engine, delivered[0].1[0].attempt));
    }
    assert_eq!(
        admin::queues_with_leases(&*store),
        vec!["all-orders".to_string(), "work".to_string()]
    );
    let (mut work, attempt) = engines.pop().unwrap();
    work.settle(
        None,
        &[SettleRequest {
            partition: 0,
            offset: 0,
            attempt,
            action: SettleAction::Ack { through: None },
        }],
    )
    .unwrap();
    assert_eq!(
        admin::queues_with_leases(&*store),
        vec!["all-orders".to_string()]
    );
}

/// A pattern queue's dead-letter topic changed by `alter_queue` is dropped at once (its
/// queue and state go, as a deleted topic's), so a dead letter never comes back as a
/// new message, and one that is no longer the dead-letter topic is taken again, from
/// its beginning as any topic matching later. A queue on one topic may not send its
/// dead letters to that topic, at create or alter.
#[test]
fn an_altered_dead_letter_topic_leaves_the_pattern_queue_and_one_given_up_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    for topic in ["p.a", "p.b"] {
        store
            .create_topic(topic, 1, TopicConfig::default())
            .unwrap();
        publish(&store, topic, 1);
    }
    admin::create_pattern_queue(&*store, "q", r"p\..*", StartAt::Earliest, config("q")).unwrap();
    let before = children(&store, "q");
    assert_eq!(before.keys().collect::<Vec<_>>(), vec!["p.a", "p.b"]);
    admin::alter_queue(&*store, "q", |c| c.dead_letter_topic = "p.b".into()).unwrap();
    let after = children(&store, "q");
    assert_eq!(after.keys().collect::<Vec<_>>(), vec!["p.a"]);
    assert!(
        store.queues().read(|q| !q.exists(&before["p.b"])),
        "its state is gone"
    );
    assert_eq!(
        drain(&store, "q"),
        BTreeMap::from([("p.a".to_string(), vec!["p.a-0".to_string()])])
    );
    assert_eq!(
        admin::sync_pattern_queue(&*store, "q").unwrap(),
        Default::default(),
        "the rule is the sync's: nothing more to do"
    );
    admin::alter_queue(&*store, "q", |c| c.dead_letter_topic = "x.dlq".into()).unwrap();
    let again = children(&store, "q");
    assert_eq!(again.keys().collect::<Vec<_>>(), vec!["p.a", "p.b"]);
    assert_ne!(
        again["p.b"], before["p.b"],
        "a new queue, with a new history"
    );
    assert_eq!(
        drain(&store, "q"),
        BTreeMap::from([("p.b".to_string(), vec!["p.b-0".to_string()])])
    );

    // A queue on one topic.
    let mut own = config("own");
    own.dead_letter_topic = "p.a".into();
    let refused = admin::create_queue(&*store, "own", "p.a", StartAt::Earliest, own).unwrap_err();
    assert!(
        refused.to_string().contains("dead_letter_topic"),
        "{refused}"
    );
    admin::create_queue(&*store, "one", "p.a", StartAt::Earliest, config("p.a")).unwrap();
    let refused =
        admin::alter_queue(&*store, "one", |c| c.dead_letter_topic = "p.a".into()).unwrap_err();
    assert!(
        refused.to_string().contains("is the queue's own topic"),
        "{refused}"
    );
    assert_eq!(
        admin::queue_status(&*store, "one", START_MS)
            .unwrap()
            .config
            .dead_letter_topic,
        "p.a.dlq"
    );
}

/// A [`QueueHost`] that runs a hook once, the first time the wrapped call is made
/// (`topics` or `change_queues`): inline, or on another thread, waiting for the hook
/// to end (or for 300 ms, if it blocks first) before going on. The interleavings of
/// two queue changes that the lock on queue changes exists to forbid.
#[derive(Debug)]
struct Interposed {
    store: Arc<Store>,
    on: &'static str,
    inline: bool,
    hook: std::sync::Mutex<Option<Hook>>,
    reached: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    joins: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

struct Hook(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Interposed {
    fn new(store: &Arc<Store>, on: &'static str, hook: impl FnOnce() + Send + 'static) -> Self {
        Interposed {
            store: store.clone(),
            on,
            inline: false,
            hook: std::sync::Mutex::new(Some(Hook(Box::new(hook)))),
            reached: Arc::default(),
            joins: std::sync::Mutex::default(),
        }
    }

    fn interpose(&self, call: &str) {
        if call != self.on {
            return;
        }
        let Some(Hook(hook)) = self.hook.lock().unwrap().take() else {
            return;
        };
        if self.inline {
            return hook();
        }
        let reached = self.reached.clone();
        self.joins.lock().unwrap().push(std::thread::spawn(move || {
            hook();
            *reached.0.lock().unwrap() = true;
            reached.1.notify_all();
        }));
        let (done, changed) = &*self.reached;
        let _ = changed
            .wait_timeout_while(
                done.lock().unwrap(),
                std::time::Duration::from_millis(300),
                |done| !*done,
            )
            .unwrap();
    }

    /// The hook runs in the caller's thread.
    fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Waits for the hook's thread.
    fn join(&self) {
        for join in self.joins.lock().unwrap().drain(..) {
            join.join().unwrap();
        }
    }
}

impl QueueHost for Interposed {
    fn queues(&self) -> &StateLog<Queues> {
        self.store.queues()
    }
    fn queue_history(&self, name: &str) -> Result<Arc<QueueHistory>> {
        QueueHost::queue_history(&*self.store, name)
    }
    fn live_queue_history(&self, name: &str, created_ms: i64) -> Result<Option<Arc<QueueHistory>>> {
        QueueHost::live_queue_history(&*self.store, name, created_ms)
    }
    fn change_queues(&self, ops: Vec<QueueOp>) -> Result<Vec<u64>> {
        self.interpose("change_queues");
        self.store.change_queues(ops)
    }
    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.store.topic(name)
    }
    fn topics(&self) -> Vec<Arc<Topic>> {
        self.interpose("topics");
        self.store.topics()
    }
    fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Arc<Topic>> {
        self.store.create_topic(name, partitions, config)
    }
    fn offsets(&self) -> &OffsetStore {
        self.store.offsets()
    }
    fn commit_offsets(
        &self,
        group: &str,
        commits: &[(Arc<Topic>, u32, u64, String)],
    ) -> Result<()> {
        self.store.commit_offsets(group, commits)
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        QueueHost::clock(&*self.store)
    }
    fn redrives(&self) -> &std::sync::Mutex<()> {
        QueueHost::redrives(&*self.store)
    }
    fn queue_changes(&self) -> &std::sync::Mutex<()> {
        QueueHost::queue_changes(&*self.store)
    }
}

/// An AlterQueue that lands while a pattern queue's sync gives a new topic its queue
/// reaches that queue too: the sync either finishes first (and the alter changes the
/// new queue with the rest) or reads the altered config. Before, the new topic's queue
/// kept the config the alter had replaced, for good.
#[test]
fn an_alter_racing_a_sync_reaches_the_queue_of_the_topic_the_sync_takes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    store
        .create_topic("jobs.a", 1, TopicConfig::default())
        .unwrap();
    admin::create_pattern_queue(
        &*store,
        "work",
        r"jobs\..*",
        StartAt::Earliest,
        config("work"),
    )
    .unwrap();
    store
        .create_topic("jobs.b", 1, TopicConfig::default())
        .unwrap();
    // The sync has read the queue's config and the topic list when the alter runs; the
    // alter's own sync of the topics waits until that sync has given jobs.b its queue.
    let (synced, wait_for_sync) = std::sync::mpsc::channel::<()>();
    let altering = Interposed::new(&store, "topics", move || {
        let _ = wait_for_sync.recv_timeout(std::time::Duration::from_secs(10));
    })
    .inline();
    let host = Interposed::new(&store, "change_queues", move || {
        admin::alter_queue(&altering, "work", |c| c.max_deliveries = 7).unwrap();
    });
    let sync = admin::sync_pattern_queue(&host, "work").unwrap();
    synced.send(()).unwrap();
    host.join();
    // Whichever sync took jobs.b (this one, or the alter's own), its queue has the
    // altered config, as every other queue of the pattern.
    assert_eq!(children(&store, "work").len(), 2, "{sync:?}");
    let configs: Vec<(String, u32)> = store.queues().read(|q| {
        q.children("work")
            .map(|c| (c.topic.clone(), c.config.max_deliveries))
            .collect()
    });
    assert_eq!(
        configs,
        vec![("jobs.a".to_string(), 7), ("jobs.b".to_string(), 7)]
    );
}

/// A raise of a topic's priority levels and the creation of a queue on it, racing:
/// either the queue is created first (and the raise is refused, as for any queue
/// with fewer levels) or after (with the new levels). Before, the queue could take the
/// old levels after the raise's check had found no queue, and deliver the new levels'
/// messages as its highest level, in offset order.
#[test]
fn a_queue_created_while_priority_levels_are_raised_never_keeps_the_old_levels() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let store = open(&fs, &dir.path().join("data"), &clock).unwrap();
    let levels = |n: u8| TopicConfig {
        priority_levels: n,
        ..TopicConfig::default()
    };
    store.create_topic("jobs", 1, levels(2)).unwrap();
    // The creation has read the topic's levels when the raise runs.
    let raising = store.clone();
    let raised = Arc::new(std::sync::Mutex::new(None));
    let outcome = raised.clone();
    let host = Interposed::new(&store, "change_queues", move || {
        *outcome.lock().unwrap() = Some(raising.alter_topic("jobs", levels(5)).map(drop));
    });
    admin::create_queue(&host, "work", "jobs", StartAt::Earliest, config("work")).unwrap();
    host.join();
    let queue_levels = store.queues().read(|q| q.get("work").unwrap().levels);
    let topic_levels = store.topic("jobs").unwrap().config().priority_levels;
    match raised.lock().unwrap().take().unwrap() {
        Ok(()) => assert_eq!((queue_levels, topic_levels), (5, 5)),
        Err(error) => {
            assert!(error.to_string().contains("cannot be raised"), "{error}");
            assert_eq!((queue_levels, topic_levels), (2, 2));
        }
    }
}
