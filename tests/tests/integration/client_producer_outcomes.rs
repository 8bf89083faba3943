//! The producer's outcomes when answers are lost, through the real broker and a proxy
//! that drops the broker's answers and cuts connections: a batch sent and unanswered
//! is not sent again once its topic's dedup window passed (no record stored twice), and
//! fails as `OutcomeUnknown` (with its ids), not as the definite `Timeout` of a batch
//! never sent; the producer routes keys by a partition count that grew
//! (Admin.CreatePartitions); and its batches are timed by the broker's clock when no
//! record has a time of its caller's (`PublishBatchRequest.relative_times`).

use std::time::{Duration, Instant};

use tidelog_client::proto::{CreatePartitionsRequest, TopicConfig};
use tidelog_client::{Client, Error, Producer, ProducerConfig, Record};
use tidelog_tests::{FlakyProxy, TestBroker};
use tokio::time::timeout;

use crate::support::fetch_range;

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

fn config() -> ProducerConfig {
    ProducerConfig {
        backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        ..ProducerConfig::default()
    }
}

/// The values stored in partition 0 of `topic`, in order.
async fn stored(broker: &TestBroker, topic: &str) -> Vec<Vec<u8>> {
    let end = broker.describe_topic(topic).await.partitions[0].end_offset;
    let channel = broker.channel().await;
    fetch_range(&channel, topic, 0, 0, end)
        .await
        .expect("fetch")
        .into_iter()
        .map(|m| m.value.to_vec())
        .collect()
}

/// Waits until partition 0 of `topic` holds `count` messages.
async fn wait_stored(broker: &TestBroker, topic: &str, count: u64) {
    let started = Instant::now();
    while broker.describe_topic(topic).await.partitions[0].end_offset < count {
        assert!(
            started.elapsed() < WAIT,
            "{topic}: {count} messages never stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A batch the broker stored but whose answer was lost, while the connection stays
/// down past the topic's dedup window (1 s): sending it again would store it a second
/// time (the broker forgot its id), so the producer does not, and the record fails
/// with `OutcomeUnknown` naming the dedup window, well before the delivery timeout.
/// The log holds it once.
#[tokio::test]
async fn a_batch_unanswered_past_the_dedup_window_is_not_sent_again() {
    let broker = TestBroker::start();
    let topic_config = TopicConfig {
        dedup_window_ms: Some(1_000),
        ..TopicConfig::default()
    };
    broker.create_topic("window", 1, topic_config).await;
    let proxy = FlakyProxy::start(broker.grpc_addr());
    let client = Client::connect(&proxy.endpoint()).await.expect("connect");
    let producer = Producer::new(&client, config());
    producer
        .send_and_wait(Record::new("window", "first"))
        .await
        .expect("first");

    proxy.drop_answers(true);
    let lost = producer
        .send(Record::new("window", "answer lost"))
        .await
        .expect("send");
    wait_stored(&broker, "window", 2).await;
    // Past the window (and its 8 ms granularity): the broker would store a resend.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    proxy.cut();
    proxy.drop_answers(false);

    let outcome = timeout(WAIT, lost).await.expect("resolved in time");
    let Err(Error::OutcomeUnknown { reason, ids, .. }) = &outcome else {
        panic!("not an unknown outcome: {outcome:?}");
    };
    assert!(reason.contains("dedup window"), "{reason}");
    assert_eq!(ids.len(), 1);
    assert!(ids[0].is_some(), "the id the producer attached");
    // The producer carries on; the lost record is in the log once.
    let next = producer
        .send_and_wait(Record::new("window", "next"))
        .await
        .expect("next");
    assert_eq!(next.offset, Some(2));
    assert_eq!(
        stored(&broker, "window").await,
        [&b"first"[..], b"answer lost", b"next"]
    );
    producer.close().await.expect("close");
}

/// While the broker cannot be reached for longer than `delivery_timeout`: a record
/// sent before (stored, its answer lost) fails with `OutcomeUnknown` carrying its id,
/// and sending it again with that id is answered with the stored original (nothing
/// stored twice); a `send_batch` likewise, with the ids the producer attached; a record
/// handed over after the connection broke, never sent, fails with `Timeout` and is not
/// stored.
#[tokio::test]
async fn records_sent_and_unanswered_fail_with_an_unknown_outcome_and_their_ids() {
    let broker = TestBroker::start();
    let topic_config = TopicConfig {
        dedup_window_ms: Some(600_000),
        ..TopicConfig::default()
    };
    broker.create_topic("unanswered", 1, topic_config).await;
    let proxy = FlakyProxy::start(broker.grpc_addr());
    let client = Client::connect(&proxy.endpoint()).await.expect("connect");
    let producer = Producer::new(
        &client,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(1),
            ..config()
        },
    );
    producer
        .send_and_wait(Record::new("unanswered", "first"))
        .await
        .expect("first");

    proxy.drop_answers(true);
    let sent = producer
        .send(Record::new("unanswered", "sent"))
        .await
        .expect("send");
    wait_stored(&broker, "unanswered", 2).await;
    let batch = [Record::new("", "batch 0"), Record::new("", "batch 1")];
    let sent_batch = producer
        .send_batch("unanswered", 0, tidelog_client::Ack::Durable, &batch)
        .await
        .expect("send_batch");
    wait_stored(&broker, "unanswered", 4).await;
    proxy.refuse(true);
    proxy.cut();
    proxy.drop_answers(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let never_sent = producer
        .send(Record::new("unanswered", "never sent"))
        .await
        .expect("send");

    let outcome = timeout(WAIT, sent).await.expect("resolved in time");
    let Err(Error::OutcomeUnknown { ids, .. }) = &outcome else {
        panic!("a record sent and unanswered: {outcome:?}");
    };
    let text = outcome.as_ref().unwrap_err().to_string();
    assert!(text.contains("may or may not be stored"), "{text}");
    let id = ids[0].clone().expect("its id");
    let outcome = timeout(WAIT, sent_batch).await.expect("resolved in time");
    let Err(Error::OutcomeUnknown { ids: batch_ids, .. }) = &outcome else {
        panic!("a batch sent and unanswered: {outcome:?}");
    };
    assert_eq!(batch_ids.len(), 2);
    let outcome = timeout(WAIT, never_sent).await.expect("resolved in time");
    assert!(
        matches!(outcome, Err(Error::Timeout { .. })),
        "a record never sent: {outcome:?}"
    );

    // Sent again with the ids the errors carried: the originals answer.
    proxy.refuse(false);
    let again = producer
        .send_and_wait(Record::new("unanswered", "sent").id(id))
        .await
        .expect("again");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.offset, Some(1));
    let batch_again: Vec<Record> = batch_ids
        .iter()
        .enumerate()
        .map(|(n, id)| Record::new("", format!("batch {n}")).id(id.clone().expect("an id")))
        .collect();
    let answers = producer
        .send_batch("unanswered", 0, tidelog_client::Ack::Durable, &batch_again)
        .await
        .expect("send_batch")
        .await
        .expect("answered");
    assert!(answers.iter().all(|d| d.duplicate), "{answers:?}");
    assert_eq!(
        answers.iter().map(|d| d.offset).collect::<Vec<_>>(),
        [Some(2), Some(3)]
    );
    assert_eq!(
        stored(&broker, "unanswered").await,
        [&b"first"[..], b"sent", b"batch 0", b"batch 1"]
    );
    producer.close().await.expect("close");
}

/// After Admin.CreatePartitions a producer describes the topic again within
/// `metadata_max_age` and routes keys by the new count (as a fresh producer does), and
/// a record for a new partition is sent there rather than refused.
#[tokio::test]
async fn the_producer_routes_by_a_partition_count_that_grew() {
    let broker = TestBroker::start();
    broker.create_topic("grow", 2, TopicConfig::default()).await;
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let refreshing = Producer::new(
        &client,
        ProducerConfig {
            metadata_max_age: Duration::from_millis(200),
            ..config()
        },
    );
    let explicit = Producer::new(&client, config());
    // Keys whose partition changes from 2 partitions to 8.
    let keys: Vec<String> = (0..100)
        .map(|n| format!("key-{n}"))
        .filter(|key| {
            let old = tidelog_storage::partitioner::partition_for_key(key.as_bytes(), 2);
            old != tidelog_storage::partitioner::partition_for_key(key.as_bytes(), 8)
        })
        .take(5)
        .collect();
    assert_eq!(keys.len(), 5);
    for (producer, key) in [(&refreshing, &keys[0]), (&explicit, &keys[0])] {
        producer
            .send_and_wait(Record::new("grow", "before").key(key.clone()))
            .await
            .expect("described");
    }

    client
        .admin()
        .create_partitions(CreatePartitionsRequest {
            name: "grow".into(),
            partitions: 8,
        })
        .await
        .expect("create partitions");
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    for key in &keys {
        let delivered = refreshing
            .send_and_wait(Record::new("grow", "after").key(key.clone()))
            .await
            .expect("after");
        assert_eq!(
            delivered.partition,
            tidelog_storage::partitioner::partition_for_key(key.as_bytes(), 8),
            "key {key} routed by the old count"
        );
    }
    // `explicit` has not described the topic again yet: a record for partition 6 makes
    // it do so.
    let delivered = explicit
        .send_and_wait(Record::new("grow", "to six").partition(6))
        .await
        .expect("partition 6 exists now");
    assert_eq!(delivered.partition, 6);
    let delivered = explicit
        .send_and_wait(Record::new("grow", "keyed").key(keys[1].clone()))
        .await
        .expect("keyed");
    assert_eq!(
        delivered.partition,
        tidelog_storage::partitioner::partition_for_key(keys[1].as_bytes(), 8)
    );
    refreshing.close().await.expect("close");
    explicit.close().await.expect("close");
}

/// Sends `signal` (`STOP`, `CONT`) to the broker's process.
fn signal(broker: &TestBroker, signal: &str) {
    let pid = broker.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A frozen broker (SIGSTOP) keeps the connection open and answers nothing: a record
/// sent to it fails once `delivery_timeout` passes (not only when HTTP/2 keep-alive
/// gives up, 20 s later), as `OutcomeUnknown` (the broker may store it when it wakes
/// up), with its id; sent again with that id after the broker resumes, it is in the
/// log once.
#[tokio::test]
async fn a_record_sent_to_a_frozen_broker_fails_in_time_with_an_unknown_outcome() {
    let broker = TestBroker::start();
    let topic_config = TopicConfig {
        dedup_window_ms: Some(600_000),
        ..TopicConfig::default()
    };
    broker.create_topic("frozen", 1, topic_config).await;
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let producer = Producer::new(
        &client,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(1),
            ..config()
        },
    );
    producer
        .send_and_wait(Record::new("frozen", "first"))
        .await
        .expect("first");
    signal(&broker, "STOP");
    let started = Instant::now();
    let outcome = timeout(
        WAIT,
        producer.send_and_wait(Record::new("frozen", "while frozen")),
    )
    .await
    .expect("resolved in time");
    let waited = started.elapsed();
    signal(&broker, "CONT");
    let Err(Error::OutcomeUnknown { ids, .. }) = &outcome else {
        panic!("sent to a frozen broker: {outcome:?}");
    };
    assert!(
        waited < Duration::from_secs(5),
        "failed only after {waited:?}"
    );
    let id = ids[0].clone().expect("its id");
    producer
        .send_and_wait(Record::new("frozen", "while frozen").id(id))
        .await
        .expect("sent again");
    assert_eq!(
        stored(&broker, "frozen").await,
        [&b"first"[..], b"while frozen"]
    );
    producer.close().await.expect("close");
}

/// The producer sends its batches with relative times when no record has a timestamp
/// or deliver-at of its caller's: a record held 1.5 s on its way to the broker (the
/// proxy holds the requests) is stored with the broker's append time, after the hold,
/// not the producer's encode time, and its TTL and delay count from there. A record
/// with a timestamp of its own keeps it, and its batch goes as it was encoded.
#[tokio::test]
async fn records_without_times_of_their_own_are_timed_by_the_broker() {
    let broker = TestBroker::start();
    broker
        .create_topic("timed", 1, TopicConfig::default())
        .await;
    let proxy = FlakyProxy::start(broker.grpc_addr());
    let client = Client::connect(&proxy.endpoint()).await.expect("connect");
    let producer = Producer::new(&client, config());
    // The topic described and the stream open before the hold.
    producer
        .send_and_wait(Record::new("timed", "first"))
        .await
        .expect("first");

    proxy.pause(true);
    let sent_at = tidelog_tests::now_ms();
    let held = producer
        .send(Record::new("timed", "held").ttl_ms(60_000).delay_ms(5_000))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let released_at = tidelog_tests::now_ms();
    proxy.pause(false);
    let held = timeout(WAIT, held).await.expect("in time").expect("held");

    proxy.pause(true);
    let own = producer
        .send(Record::new("timed", "own time").timestamp_ms(sent_at - 1_000))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.pause(false);
    let own = timeout(WAIT, own).await.expect("in time").expect("own");

    let channel = broker.channel().await;
    let stored = fetch_range(&channel, "timed", 0, 1, 3)
        .await
        .expect("fetch");
    let (held_stored, own_stored) = (&stored[0], &stored[1]);
    assert_eq!(
        (held_stored.offset, own_stored.offset),
        (held.offset.unwrap(), own.offset.unwrap())
    );
    assert!(
        held_stored.timestamp_ms >= released_at,
        "stored at {} ms, the producer encoded it at about {sent_at} ms and the broker \
         received it after {released_at} ms",
        held_stored.timestamp_ms
    );
    assert_eq!(
        held_stored.expires_at_ms,
        Some(held_stored.timestamp_ms + 60_000)
    );
    assert_eq!(
        held_stored.deliver_at_ms,
        Some(held_stored.timestamp_ms + 5_000)
    );
    assert_eq!(own_stored.timestamp_ms, sent_at - 1_000);
    producer.close().await.expect("close");
}

/// A `batch_bytes` over the broker's request limit (32 MiB by default) used to make
/// every batch a request the broker refused (RESOURCE_EXHAUSTED), failing every
/// record: the producer now caps it at `BATCH_BYTES_MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_bytes_over_the_request_limit_is_capped() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("big", 1, TopicConfig::default())
        .await
        .expect("create");
    let config = ProducerConfig {
        batch_bytes: 64 * 1024 * 1024,
        linger: Duration::from_secs(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config);
    // 40 MiB in records of 64 KiB, sent within one linger: one batch without the cap.
    let value = vec![b'x'; 64 * 1024];
    let mut acks = Vec::new();
    for _ in 0..640 {
        let record = Record::new("big", value.clone()).partition(0);
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("stored");
    }
    producer.close().await.expect("close");
}
