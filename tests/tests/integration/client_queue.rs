//! tidelog-client's `QueueConsumer` (the `Queues.Consume` stream) through the real
//! broker: every outcome (ack, nack with a delay, in progress, term, a deadline that
//! passes) on values of 0 B, 3 KB and 1 MiB; credit as back-pressure; a broker killed
//! and restarted mid-stream (the consumer carries on, a stale settlement is
//! `Error::LeaseLost`, every message acked exactly once); and a property test of
//! random counts, sizes, outcomes and credit against a model.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tidelog_client::proto::start_position::{Earliest, Position};
use tidelog_client::proto::{
    CreateQueueRequest, DescribeQueueRequest, QueueConfig, QueueDescription, StartPosition,
    TopicConfig,
};
use tidelog_client::{
    Client, Delivery, Error, FetchOptions, Producer, ProducerConfig, QueueConsumer,
    QueueConsumerOptions, QueueEvent, Record, Settle, Settled,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

async fn client(broker: &TestBroker) -> Client {
    Client::connect(&broker.endpoint()).await.expect("connect")
}

fn config(ack_deadline_ms: u64, max_deliveries: u32) -> QueueConfig {
    QueueConfig {
        ack_deadline_ms: Some(ack_deadline_ms),
        max_deliveries: Some(max_deliveries),
        backoff_initial_ms: Some(100),
        backoff_max_ms: Some(200),
        ..QueueConfig::default()
    }
}

/// A topic of `partitions` taking messages up to 2 MiB, and a queue on it from the
/// start.
async fn topic_and_queue(
    client: &Client,
    topic: &str,
    partitions: u32,
    queue: &str,
    config: QueueConfig,
) {
    let topic_config = TopicConfig {
        max_message_bytes: 2 << 20,
        ..TopicConfig::default()
    };
    client
        .create_topic(topic, partitions, topic_config)
        .await
        .expect("create topic");
    client
        .queues()
        .create_queue(CreateQueueRequest {
            name: queue.into(),
            topic: topic.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            config: Some(config),
            ..Default::default()
        })
        .await
        .expect("create queue");
}

async fn publish(client: &Client, records: Vec<Record>) {
    let producer = Producer::new(client, ProducerConfig::default());
    let mut acks = Vec::new();
    for record in records {
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        ack.await.expect("published");
    }
    producer.close().await.expect("close");
}

async fn describe(client: &Client, queue: &str) -> QueueDescription {
    client
        .queues()
        .describe_queue(DescribeQueueRequest { name: queue.into() })
        .await
        .expect("describe")
        .into_inner()
        .queue
        .expect("a queue")
}

/// Nothing ready, held or waiting: every message was settled.
async fn assert_settled(client: &Client, queue: &str) {
    let q = describe(client, queue).await;
    assert_eq!(
        (q.ready, q.unacked, q.waiting, q.delayed),
        (0, 0, 0, 0),
        "{q:?}"
    );
}

/// The keys of the dead letters in `topic` (partition 0), in order.
async fn dead_letter_keys(client: &Client, topic: &str) -> Vec<String> {
    let options = FetchOptions {
        max_wait: Duration::from_millis(200),
        ..FetchOptions::default()
    };
    let mut keys = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = match client.fetch(topic, 0, offset, &options).await {
            Ok(fetched) => fetched,
            Err(Error::TopicNotFound { .. }) => return keys,
            Err(error) => panic!("fetch {topic}: {error}"),
        };
        if fetched.messages.is_empty() {
            return keys;
        }
        offset = fetched.next_offset;
        keys.extend(fetched.messages.iter().map(|m| key_of(m.key.as_ref())));
    }
}

fn key_of(key: Option<&Bytes>) -> String {
    key.map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default()
}

fn key(delivery: &Delivery) -> String {
    key_of(delivery.message().key.as_ref())
}

/// The next deliveries within `wait`, or none.
async fn batch_within(consumer: &mut QueueConsumer, wait: Duration) -> Vec<Delivery> {
    match timeout(wait, consumer.next_batch()).await {
        Ok(batch) => batch.expect("read"),
        Err(_) => Vec::new(),
    }
}

/// Every delivery that comes until none came for `quiet`.
async fn drain_for(consumer: &mut QueueConsumer, quiet: Duration) -> Vec<Delivery> {
    let mut all = Vec::new();
    loop {
        let batch = batch_within(consumer, quiet).await;
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn every_outcome_through_the_stream_with_empty_3k_and_1mib_values() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    topic_and_queue(&client, "co", 1, "co-q", config(1000, 5)).await;
    let values = [
        ("empty", Bytes::new()),
        ("3k", pattern(3 * 1024)),
        ("1m", pattern(1 << 20)),
        ("nack", Bytes::from_static(b"n")),
        ("term", Bytes::from_static(b"t")),
        ("slow", Bytes::from_static(b"s")),
        ("late", Bytes::from_static(b"l")),
    ];
    let records = values
        .iter()
        .map(|(k, v)| Record::new("co", v.clone()).key(*k))
        .collect();
    publish(&client, records).await;
    let options = QueueConsumerOptions::new("outcomes");
    let mut consumer = QueueConsumer::open(&client, "co-q", options)
        .await
        .expect("open");
    assert!(!consumer.member_id().is_empty());
    assert_eq!(consumer.config().ack_deadline_ms, Some(1000));
    let mut first: BTreeMap<String, Delivery> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while first.len() < values.len() {
        assert!(Instant::now() < deadline, "got only {:?}", first.keys());
        let delivery = timeout(WAIT, consumer.next())
            .await
            .expect("in time")
            .expect("next");
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(&*delivery.message().topic, "co");
        first.insert(key(&delivery), delivery);
    }
    let started = Instant::now();
    for (k, v) in &values {
        let delivery = &first[*k];
        assert_eq!(delivery.message().value, *v, "{k}");
        match *k {
            "empty" | "3k" | "1m" => {
                assert_eq!(delivery.settle(Settle::Ack).await, Ok(Settled::Acked));
            }
            "nack" => delivery
                .nack(Some(Duration::from_millis(300)), "try later")
                .await
                .expect("nack"),
            "term" => {
                let reason = "cannot parse".to_string();
                let settled = delivery.settle(Settle::Term { reason }).await;
                assert_eq!(settled, Ok(Settled::DeadLettered));
            }
            "slow" => {
                let extend = Some(Duration::from_secs(5));
                let settled = delivery.settle(Settle::InProgress { extend }).await;
                assert_eq!(settled, Ok(Settled::Extended));
            }
            _ => {} // "late": left to pass its deadline.
        }
    }
    // The nack comes back after its delay, the late one after its deadline (1 s),
    // both as attempt 2; the extended one does not within its new deadline.
    // Each is acked as it comes (past the 1 s deadline it would come yet again).
    let mut again: BTreeMap<String, (u32, Duration)> = BTreeMap::new();
    while started.elapsed() < Duration::from_millis(2500) {
        for d in batch_within(&mut consumer, Duration::from_millis(200)).await {
            let at = started.elapsed();
            assert!(again.insert(key(&d), (d.attempt(), at)).is_none(), "twice");
            d.ack().await.expect("ack the redelivery");
        }
    }
    let keys: Vec<&str> = again.keys().map(String::as_str).collect();
    assert_eq!(keys, ["late", "nack"], "only these come again");
    let (nack_attempt, nack_at) = again["nack"];
    assert_eq!(nack_attempt, 2);
    assert!(nack_at >= Duration::from_millis(300), "{nack_at:?}");
    let (late_attempt, late_at) = again["late"];
    assert_eq!(late_attempt, 2);
    assert!(late_at >= Duration::from_millis(500), "{late_at:?}");
    // The first delivery of the late one is stale now.
    let stale = first["late"].ack().await.expect_err("stale");
    assert!(
        matches!(
            stale,
            Error::SettleRefused {
                code: tonic::Code::FailedPrecondition | tonic::Code::NotFound,
                ..
            }
        ),
        "{stale}"
    );
    // Settling twice is refused too.
    let twice = first["empty"].ack().await.expect_err("settled already");
    assert!(matches!(twice, Error::SettleRefused { .. }), "{twice}");
    // An extension out of range is the caller's error, and the delivery stays held.
    let bad = first["slow"]
        .in_progress(Some(Duration::from_millis(1)))
        .await
        .expect_err("out of range");
    assert!(matches!(bad, Error::InvalidArgument { .. }), "{bad}");
    first["slow"].ack().await.expect("ack within the extension");
    // Nothing more: the termed one is a dead letter, not redelivered.
    let more = drain_for(&mut consumer, Duration::from_millis(700)).await;
    assert!(
        more.is_empty(),
        "{:?}",
        more.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(dead_letter_keys(&client, "co.dlq").await, ["term"]);
    assert_settled(&client, "co-q").await;
    consumer.close().await;
}

#[tokio::test]
async fn a_consumer_that_does_not_settle_gets_at_most_its_credit() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    topic_and_queue(&client, "cr", 2, "cr-q", config(30_000, 5)).await;
    let records = (0..30)
        .map(|i| Record::new("cr", format!("m{i}")).key(format!("k{i}")))
        .collect();
    publish(&client, records).await;
    let options = QueueConsumerOptions {
        credit: 4,
        ..QueueConsumerOptions::new("slow-reader")
    };
    let mut consumer = QueueConsumer::open(&client, "cr-q", options)
        .await
        .expect("open");
    let held = drain_for(&mut consumer, Duration::from_secs(1)).await;
    assert_eq!(held.len(), 4, "the credit");
    assert_eq!(describe(&client, "cr-q").await.unacked, 4);
    // Extensions give no credit back.
    for d in &held {
        d.in_progress(None).await.expect("in progress");
    }
    assert!(
        drain_for(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty()
    );
    // Two acks (one request) make room for two more.
    let acked = Delivery::ack_all(&held[..2]).await.expect("ack");
    let count: u64 = acked.iter().map(|r| *r.outcome.as_ref().expect("ok")).sum();
    assert_eq!(count, 2);
    let more = drain_for(&mut consumer, Duration::from_secs(1)).await;
    assert_eq!(more.len(), 2, "credit given back for the two acks");
    // A total limit: a second consumer asks for no more than 3 in all.
    let options = QueueConsumerOptions {
        credit: 10,
        limit: Some(3),
        ..QueueConsumerOptions::new("limited")
    };
    let mut limited = QueueConsumer::open(&client, "cr-q", options)
        .await
        .expect("open");
    let mut got = 0;
    let mut last = Vec::new();
    for _ in 0..3 {
        let d = drain_for(&mut limited, Duration::from_millis(700)).await;
        got += d.len();
        Delivery::ack_all(&d).await.expect("ack");
        if !d.is_empty() {
            last = d;
        }
    }
    assert_eq!(got, 3, "the limit");
    // Deliveries of two consumers are not acked together.
    let mixed = [held[2].clone(), last[0].clone()];
    let error = Delivery::ack_all(&mixed).await.expect_err("two members");
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
    let rest: Vec<Delivery> = held[2..].iter().chain(&more).cloned().collect();
    let acked = Delivery::ack_all(&rest).await.expect("ack");
    assert!(
        acked.iter().all(|r| r.outcome == Ok(r.deliveries)),
        "{acked:?}"
    );
    assert_eq!(
        drain_for(&mut consumer, Duration::from_secs(1)).await.len(),
        4
    );
    limited.close().await;
    consumer.close().await;
}

/// Credit goes back half a window at a time: one ack of a full window of 4 brings
/// nothing, the second brings two (one delivery round for both).
#[tokio::test]
async fn credit_goes_back_half_a_window_at_a_time() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    topic_and_queue(&client, "hw", 1, "hw-q", config(30_000, 5)).await;
    let records = (0..20)
        .map(|i| Record::new("hw", format!("m{i}")))
        .collect();
    publish(&client, records).await;
    let options = QueueConsumerOptions {
        credit: 4,
        ..QueueConsumerOptions::new("half")
    };
    let mut consumer = QueueConsumer::open(&client, "hw-q", options)
        .await
        .expect("open");
    let held = drain_for(&mut consumer, Duration::from_secs(1)).await;
    assert_eq!(held.len(), 4, "the window");
    held[0].ack().await.expect("ack");
    assert!(
        drain_for(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty(),
        "one settlement of a window of 4 gives no credit back yet"
    );
    held[1].ack().await.expect("ack");
    let more = drain_for(&mut consumer, Duration::from_secs(1)).await;
    assert_eq!(more.len(), 2, "half the window given back");
    assert_eq!(describe(&client, "hw-q").await.unacked, 4);
    consumer.close().await;
}

#[tokio::test]
async fn a_broker_killed_mid_stream_loses_no_ack_and_stale_settlements_say_so() {
    const MESSAGES: u64 = 120;
    let mut broker = TestBroker::start();
    let client = client(&broker).await;
    topic_and_queue(&client, "rs", 2, "rs-q", config(2000, 0)).await;
    let records = (0..MESSAGES)
        .map(|i| Record::new("rs", format!("m{i}")).key(format!("k{i}")))
        .collect();
    publish(&client, records).await;
    let options = QueueConsumerOptions {
        credit: 10,
        ..QueueConsumerOptions::new("survivor")
    };
    let mut consumer = QueueConsumer::open(&client, "rs-q", options)
        .await
        .expect("open");
    // Acks answered, per (partition, offset).
    let mut acked: BTreeMap<(u32, u64), u32> = BTreeMap::new();
    let mut held = Vec::new();
    while acked.len() < 40 {
        let batch = timeout(WAIT, consumer.next_batch())
            .await
            .expect("in time")
            .expect("read");
        for d in batch {
            d.ack().await.expect("ack");
            let m = d.message();
            *acked.entry((m.partition, m.offset)).or_default() += 1;
        }
    }
    // Hold a few unsettled through the kill.
    while held.len() < 3 {
        held.extend(
            timeout(WAIT, consumer.next_batch())
                .await
                .expect("in time")
                .expect("read"),
        );
    }
    broker.kill9();
    broker.restart_on_the_same_ports();
    let (mut disconnected, mut reconnected) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !reconnected {
        assert!(Instant::now() < deadline, "no reconnect");
        match timeout(WAIT, consumer.next_event())
            .await
            .expect("in time")
            .expect("event")
        {
            QueueEvent::Disconnected { error } => {
                assert!(!disconnected, "one Disconnected per break");
                disconnected = true;
                eprintln!("disconnected: {error}");
            }
            QueueEvent::Reconnected { member_id } => {
                assert!(disconnected);
                assert!(!member_id.is_empty());
                reconnected = true;
            }
            QueueEvent::Deliveries(deliveries) => {
                // Before the break was seen: settle them after it, below.
                held.extend(deliveries);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for d in &held {
        let error = d.ack().await.expect_err("stale");
        assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
        assert!(
            error.to_string().contains("delivers the message again"),
            "{error}"
        );
    }
    let mut redelivered = 0;
    while (acked.len() as u64) < MESSAGES {
        let batch = timeout(WAIT, consumer.next_batch())
            .await
            .unwrap_or_else(|_| panic!("only {} acked", acked.len()))
            .expect("read");
        for d in batch {
            if d.attempt() > 1 {
                redelivered += 1;
            }
            d.ack().await.expect("ack");
            let m = d.message();
            *acked.entry((m.partition, m.offset)).or_default() += 1;
        }
    }
    assert!(redelivered >= 3, "the held ones came again: {redelivered}");
    assert!(acked.values().all(|&n| n == 1), "acked twice: {acked:?}");
    assert!(
        drain_for(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert_settled(&client, "rs-q").await;
    consumer.close().await;
}

async fn pattern_queue(client: &Client, name: &str, pattern: &str) {
    client
        .queues()
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic_pattern: pattern.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            config: Some(config(30_000, 5)),
            ..Default::default()
        })
        .await
        .expect("create pattern queue");
}

#[tokio::test]
async fn a_queue_on_a_topic_pattern_names_each_delivery_topic() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    for (topic, partitions) in [("pt.a", 2), ("pt.b", 1)] {
        client
            .create_topic(topic, partitions, TopicConfig::default())
            .await
            .expect("create topic");
    }
    pattern_queue(&client, "pt-q", r"pt\..*").await;
    pattern_queue(&client, "pt-w", r"pt\..*").await;
    let records = (0..6)
        .map(|i| {
            let topic = if i % 2 == 0 { "pt.a" } else { "pt.b" };
            Record::new(topic, format!("v{i}")).key(format!("k{i}"))
        })
        .collect();
    publish(&client, records).await;
    let options = QueueConsumerOptions {
        credit: 3,
        ..QueueConsumerOptions::new("pattern")
    };
    let mut consumer = QueueConsumer::open(&client, "pt-q", options)
        .await
        .expect("open");
    let mut by_topic: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while by_topic.values().sum::<usize>() < 6 {
        assert!(Instant::now() < deadline, "{by_topic:?}");
        let batch = batch_within(&mut consumer, Duration::from_secs(2)).await;
        // Settlements name each delivery's topic: acked per topic in one request.
        let ranges = Delivery::ack_all(&batch).await.expect("ack");
        assert!(
            ranges.iter().all(|r| r.outcome == Ok(r.deliveries)),
            "{ranges:?}"
        );
        for d in &batch {
            *by_topic.entry(d.message().topic.to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        by_topic,
        BTreeMap::from([("pt.a".to_string(), 3), ("pt.b".to_string(), 3)])
    );
    assert_settled(&client, "pt-q").await;
    consumer.close().await;

    // `tidelog queue work` gives the command each delivery's own topic.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("topics");
    let script = dir.path().join("topic.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$TIDELOG_TOPIC\" >> {}\n", log.display()),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let script = script.to_str().expect("utf-8").to_string();
    let run = super::cli::cli_with_input(
        &broker,
        &["queue", "work", "pt-w", "-n", "6", "--", &script],
        b"",
    )
    .ok("queue work");
    assert!(run.stderr.contains("6 acked"), "{}", run.stderr);
    let mut topics: Vec<String> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(str::to_string)
        .collect();
    topics.sort();
    assert_eq!(topics, ["pt.a", "pt.a", "pt.a", "pt.b", "pt.b", "pt.b"]);
}

/// What a message's deliveries do, attempt by attempt (after the last: ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Ack,
    Nack {
        delay_ms: u64,
    },
    Term,
    /// An extension, then an ack.
    ExtendThenAck,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Ack),
        3 => (0u64..150).prop_map(|delay_ms| Step::Nack { delay_ms }),
        1 => Just(Step::Term),
        1 => Just(Step::ExtendThenAck),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    credit: u32,
    /// Per message: its value size and its plan.
    messages: Vec<(usize, Vec<Step>)>,
}

fn case() -> impl Strategy<Value = Case> {
    let message = (
        prop_oneof![Just(0usize), 1usize..64, 1000usize..5000],
        proptest::collection::vec(step(), 0..4),
    );
    (1u32..12, proptest::collection::vec(message, 1..30))
        .prop_map(|(credit, messages)| Case { credit, messages })
}

/// Max deliveries of the model's queue: a nack of attempt 3 dead-letters.
const MAX_DELIVERIES: u32 = 3;

/// The model: which messages end acked and which dead-lettered.
fn model(case: &Case) -> (Vec<usize>, Vec<usize>) {
    let (mut acked, mut dead) = (Vec::new(), Vec::new());
    for (i, (_, plan)) in case.messages.iter().enumerate() {
        let mut attempt = 1;
        loop {
            match plan.get(attempt - 1).copied().unwrap_or(Step::Ack) {
                Step::Ack | Step::ExtendThenAck => {
                    acked.push(i);
                    break;
                }
                Step::Term => {
                    dead.push(i);
                    break;
                }
                Step::Nack { .. } if attempt as u32 >= MAX_DELIVERIES => {
                    dead.push(i);
                    break;
                }
                Step::Nack { .. } => attempt += 1,
            }
        }
    }
    (acked, dead)
}

async fn run_case(client: &Client, n: usize, case: &Case) -> Result<(), TestCaseError> {
    let (topic, queue) = (format!("pq{n}"), format!("pq{n}-q"));
    topic_and_queue(client, &topic, 2, &queue, config(10_000, MAX_DELIVERIES)).await;
    let records = case
        .messages
        .iter()
        .enumerate()
        .map(|(i, (size, _))| Record::new(&topic, pattern(*size)).key(i.to_string()))
        .collect();
    publish(client, records).await;
    let options = QueueConsumerOptions {
        credit: case.credit,
        ..QueueConsumerOptions::new("model")
    };
    let mut consumer = QueueConsumer::open(client, &queue, options)
        .await
        .expect("open");
    let (want_acked, want_dead) = model(case);
    let mut acked: BTreeMap<usize, u32> = BTreeMap::new();
    let mut dead: BTreeMap<usize, u32> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while acked.len() + dead.len() < case.messages.len() {
        prop_assert!(Instant::now() < deadline, "acked {acked:?} dead {dead:?}");
        let batch = batch_within(&mut consumer, Duration::from_secs(2)).await;
        // Never more held than the credit.
        prop_assert!(batch.len() <= case.credit as usize);
        for d in batch {
            let i: usize = key(&d).parse().expect("a number key");
            let (size, plan) = &case.messages[i];
            prop_assert_eq!(d.message().value.len(), *size);
            let step = plan
                .get(d.attempt() as usize - 1)
                .copied()
                .unwrap_or(Step::Ack);
            let settled = match step {
                Step::Ack => d.settle(Settle::Ack).await,
                Step::ExtendThenAck => {
                    d.in_progress(None).await.expect("in progress");
                    d.settle(Settle::Ack).await
                }
                Step::Nack { delay_ms } => {
                    let delay = Some(Duration::from_millis(delay_ms));
                    let reason = format!("attempt {}", d.attempt());
                    d.settle(Settle::Nack { delay, reason }).await
                }
                Step::Term => {
                    let reason = "model".to_string();
                    d.settle(Settle::Term { reason }).await
                }
            };
            match settled.expect("settle") {
                Settled::Acked => *acked.entry(i).or_default() += 1,
                Settled::DeadLettered => *dead.entry(i).or_default() += 1,
                Settled::Nacked => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    prop_assert!(acked.values().chain(dead.values()).all(|&n| n == 1));
    prop_assert_eq!(acked.keys().copied().collect::<Vec<_>>(), want_acked);
    prop_assert_eq!(dead.keys().copied().collect::<Vec<_>>(), want_dead.clone());
    let mut letters: Vec<usize> = dead_letter_keys(client, &format!("{topic}.dlq"))
        .await
        .iter()
        .map(|k| k.parse().expect("a number key"))
        .collect();
    letters.sort_unstable();
    prop_assert_eq!(letters, want_dead);
    assert_settled(client, &queue).await;
    consumer.close().await;
    Ok(())
}

#[test]
fn random_counts_sizes_outcomes_and_credit_end_as_the_model_says() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = TestBroker::start();
    let client = runtime.block_on(client(&broker));
    let cases = std::env::var("TIDELOG_QUEUE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    // Each case (shrunk ones too) gets its own topic and queue.
    let n = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&case(), |case| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(run_case(&client, n, &case))
        })
        .unwrap();
}

/// A worker's ack that got no answer (the connection broke under it) used to fail as
/// "the broker is unavailable (retry with backoff)", not saying the broker may have
/// applied it: it now says the outcome is unknown and that a retry is safe, and a
/// retry settles the delivery (here the first try never reached the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ack_without_an_answer_says_the_outcome_is_unknown() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    topic_and_queue(&client, "unk", 1, "unk-q", QueueConfig::default()).await;
    publish(&client, vec![Record::new("unk", "a").partition(0)]).await;
    let proxy = tidelog_tests::FlakyProxy::start(broker.grpc_addr());
    let through = Client::connect(&proxy.endpoint()).await.expect("connect");
    let worker = tidelog_client::QueueWorker::new(&through, "unk-q", "w");
    let deliveries = worker
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    let delivery = deliveries.into_iter().next().expect("a delivery");
    // The ack waits in the proxy, and the connection breaks under it.
    proxy.pause(true);
    proxy.refuse(true);
    let cutter = proxy.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cutter.cut();
    });
    let error = timeout(WAIT, delivery.ack())
        .await
        .expect("in time")
        .expect_err("no answer");
    assert!(error.is_retryable(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("may or may not have been applied"), "{text}");
    assert!(text.contains("retrying it is safe"), "{text}");
    proxy.refuse(false);
    proxy.pause(false);
    // Retried with backoff (the client's channel reconnects), it acks the delivery.
    timeout(WAIT, async {
        loop {
            match delivery.ack().await {
                Err(error) if error.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked => break acked,
            }
        }
    })
    .await
    .expect("in time")
    .expect("the retry acks it");
}
