//! The broker core through its gRPC API: admin, publish (unary and stream), fetch,
//! subscribe, TTL, retention, the error catalogue, health, reflection, metrics, crash
//! and graceful shutdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::subscribe;
use bytes::Bytes;
use tidelog_proto::v1::start_position::{Earliest, Latest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, ConsumedMessage, CreateTopicRequest, DeleteTopicRequest,
    DescribeTopicRequest, FetchRequest, FetchResponse, Header, ListTopicsRequest, Message,
    PublishRequest, PublishResponse, PublishStreamRequest, ResetPolicy, ResetReason, StartPosition,
    SubscribeRequest, SubscribeResponse, TopicConfig, TopicConfigUpdate,
    publish_stream_response::Outcome,
};
use tidelog_tests::{TestBroker, http_get, metric_value, now_ms};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Bound on every wait for an event in these tests.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn value_message(value: impl Into<Bytes>) -> Message {
    Message {
        value: value.into(),
        ..Default::default()
    }
}

async fn publish(
    broker: &TestBroker,
    topic: &str,
    messages: Vec<Message>,
    ack: AckLevel,
) -> Result<PublishResponse, tonic::Status> {
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ack: ack as i32,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn fetch(
    broker: &TestBroker,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<FetchResponse, tonic::Status> {
    broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next event on a stream, failing the test after [`EVENT_TIMEOUT`].
async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Result<Event, tonic::Status> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(response.event.expect("an event is set")),
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
    }
}

/// Collects `count` messages from a stream (failing on any other event).
async fn collect_messages(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> Vec<ConsumedMessage> {
    let mut messages = Vec::new();
    while messages.len() < count {
        match next_event(stream).await.unwrap() {
            Event::Batch(batch) => messages.extend(batch.messages),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(messages.len(), count, "more messages than expected");
    messages
}

fn start(position: Position) -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(position),
    })
}

#[tokio::test]
async fn publish_fetch_round_trip_with_keys_and_headers() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders", 3, TopicConfig::default())
        .await;

    let messages = vec![
        Message {
            key: Bytes::from_static(b"customer-1"),
            value: Bytes::from_static(b"first"),
            headers: vec![
                Header {
                    key: "trace".into(),
                    value: Bytes::from_static(b"\x00\x01\xff"),
                },
                Header {
                    key: "trace".into(),
                    value: Bytes::from_static(b"dup"),
                },
            ],
            timestamp_ms: Some(1_700_000_000_000),
            ..Default::default()
        },
        Message {
            key: Bytes::from_static(b"customer-1"),
            value: Bytes::from_static(b"second"),
            ..Default::default()
        },
        Message {
            value: Bytes::from_static(b"pinned"),
            partition: Some(2),
            ..Default::default()
        },
        value_message(Bytes::new()),
    ];
    let acks = publish(&broker, "orders", messages.clone(), AckLevel::Durable)
        .await
        .unwrap()
        .acks;
    assert_eq!(acks.len(), 4);
    // The same key goes to the same partition, in order.
    assert_eq!(acks[0].partition, acks[1].partition);
    assert_eq!(acks[1].offset, acks[0].offset + 1);
    assert_eq!(acks[2].partition, 2);

    for (message, ack) in messages.iter().zip(&acks) {
        let fetched = fetch(&broker, "orders", ack.partition, ack.offset)
            .await
            .unwrap();
        let got = &fetched.messages[0];
        assert_eq!((got.partition, got.offset), (ack.partition, ack.offset));
        assert_eq!(got.key, message.key);
        assert_eq!(got.value, message.value);
        assert_eq!(got.headers, message.headers);
        assert_eq!(got.expires_at_ms, None);
        if let Some(ts) = message.timestamp_ms {
            assert_eq!(got.timestamp_ms, ts);
        } else {
            assert!((got.timestamp_ms - now_ms()).abs() < 60_000);
        }
    }

    // Keyless messages without a partition spread round robin.
    let keyless: Vec<Message> = (0..30).map(|i| value_message(format!("v{i}"))).collect();
    let acks = publish(&broker, "orders", keyless, AckLevel::Written)
        .await
        .unwrap()
        .acks;
    let mut per_partition = BTreeMap::new();
    for ack in &acks {
        *per_partition.entry(ack.partition).or_insert(0) += 1;
    }
    assert_eq!(
        per_partition.values().copied().collect::<Vec<_>>(),
        [10, 10, 10]
    );

    // ACK_LEVEL_NONE answers without acks; the messages are stored all the same.
    let response = publish(
        &broker,
        "orders",
        vec![value_message("quiet")],
        AckLevel::None,
    )
    .await
    .unwrap();
    assert!(response.acks.is_empty());

    // Fetch limits and next_offset.
    let partition = acks[0].partition;
    let page = broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: "orders".into(),
            partition,
            offset: 0,
            max_messages: 2,
            // WRITTEN acks come before the fsync; readers of an fsync=always topic
            // see the messages once they are durable.
            max_wait_ms: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.next_offset, 2);
    assert!(page.end_offset >= 10);
    assert_eq!(page.log_start_offset, 0);

    // The counters moved.
    let metrics = broker.metrics_text();
    assert!(
        metric_value(&metrics, "tidelog_publish_messages_total{topic=\"orders\"}").unwrap() >= 34.0
    );
    assert!(
        metric_value(&metrics, "tidelog_fetch_messages_total{topic=\"orders\"}").unwrap() >= 6.0
    );
    assert!(metric_value(&metrics, "tidelog_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(
        metrics.contains("tidelog_partition_end_offset{topic=\"orders\",partition=\"2\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tidelog_rpc_duration_seconds_count{method=\"Publish\"}"));
    let (status, _) = http_get(broker.metrics_addr(), "/nothing-here");
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admin_lists_describes_alters_and_deletes_topics() {
    let broker = TestBroker::start();
    let mut admin = broker.admin().await;
    let created = admin
        .create_topic(CreateTopicRequest {
            name: "b-topic".into(),
            partitions: 0,
            config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    // 0 partitions means 1; unset config fields take the API's defaults.
    assert_eq!(created.partitions.len(), 1);
    let config = created.config.unwrap();
    assert_eq!(config.retention_ms, None);
    assert_eq!(config.segment_bytes, 256 << 20);
    assert_eq!(config.max_message_bytes, 1 << 20);
    assert!(config.fsync.unwrap().policy.is_some());
    broker
        .create_topic("a-topic", 4, TopicConfig::default())
        .await;

    let listed = admin
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .topics;
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a-topic", "b-topic"]);
    assert_eq!(listed[0].partitions, 4);

    let altered = admin
        .alter_topic_config(AlterTopicConfigRequest {
            name: "a-topic".into(),
            update: Some(TopicConfigUpdate {
                retention_ms: Some(60_000),
                max_message_bytes: Some(4096),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let config = altered.config.unwrap();
    assert_eq!(config.retention_ms, Some(60_000));
    assert_eq!(config.max_message_bytes, 4096);
    let too_big = publish(
        &broker,
        "a-topic",
        vec![value_message(vec![0u8; 5000])],
        AckLevel::Written,
    )
    .await
    .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);

    admin
        .delete_topic(DeleteTopicRequest {
            name: "a-topic".into(),
        })
        .await
        .unwrap();
    let gone = admin
        .describe_topic(DescribeTopicRequest {
            name: "a-topic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // The name can be used again.
    broker
        .create_topic("a-topic", 1, TopicConfig::default())
        .await;
}

#[tokio::test]
async fn compressed_topics_deliver_the_original_bytes() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "zipped",
            1,
            TopicConfig {
                compression: tidelog_proto::v1::Compression::Zstd as i32,
                ..Default::default()
            },
        )
        .await;
    let messages: Vec<Message> = (0..50)
        .map(|i| Message {
            key: format!("k{i}").into(),
            value: format!("{i:04} the same words again and again and again").into(),
            ..Default::default()
        })
        .collect();
    publish(&broker, "zipped", messages.clone(), AckLevel::Durable)
        .await
        .unwrap();
    let fetched = fetch(&broker, "zipped", 0, 0).await.unwrap();
    assert_eq!(fetched.messages.len(), 50);
    for (got, sent) in fetched.messages.iter().zip(&messages) {
        assert_eq!((&got.key, &got.value), (&sent.key, &sent.value));
    }
    let description = broker.describe_topic("zipped").await;
    assert_eq!(
        description.config.unwrap().compression,
        tidelog_proto::v1::Compression::Zstd as i32
    );
}

#[tokio::test]
async fn subscribe_from_earliest_latest_offset_and_timestamp() {
    let broker = TestBroker::start();
    broker
        .create_topic("events", 1, TopicConfig::default())
        .await;
    // Ten messages with timestamps 1000, 2000, ... 10000.
    let messages: Vec<Message> = (0..10)
        .map(|i| Message {
            value: format!("m{i}").into(),
            timestamp_ms: Some((i + 1) * 1000),
            ..Default::default()
        })
        .collect();
    publish(&broker, "events", messages, AckLevel::Durable)
        .await
        .unwrap();

    let request = |position: Position| SubscribeRequest {
        topic: "events".into(),
        start: start(position),
        ..Default::default()
    };
    let offsets =
        |messages: &[ConsumedMessage]| messages.iter().map(|m| m.offset).collect::<Vec<_>>();

    let mut earliest = subscribe(&broker, request(Position::Earliest(Earliest {}))).await;
    let got = collect_messages(&mut earliest, 10).await;
    assert_eq!(offsets(&got), (0..10).collect::<Vec<_>>());
    assert_eq!(got[3].value, Bytes::from_static(b"m3"));

    let mut from_offset = subscribe(&broker, request(Position::Offset(7))).await;
    assert_eq!(
        offsets(&collect_messages(&mut from_offset, 3).await),
        [7, 8, 9]
    );

    // The first message with timestamp >= 4500 is offset 4 (timestamp 5000).
    let mut from_time = subscribe(&broker, request(Position::TimestampMs(4500))).await;
    assert_eq!(
        offsets(&collect_messages(&mut from_time, 6).await),
        [4, 5, 6, 7, 8, 9]
    );

    let mut latest = subscribe(&broker, request(Position::Latest(Latest {}))).await;
    // No start at all also means latest.
    let mut default_start = subscribe(
        &broker,
        SubscribeRequest {
            topic: "events".into(),
            ..Default::default()
        },
    )
    .await;
    // Let both streams reach the server before the next publish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(
        &broker,
        "events",
        vec![value_message("new")],
        AckLevel::Durable,
    )
    .await
    .unwrap();
    for stream in [
        &mut latest,
        &mut default_start,
        &mut earliest,
        &mut from_time,
    ] {
        let got = collect_messages(stream, 1).await;
        assert_eq!((got[0].offset, &got[0].value[..]), (10, &b"new"[..]));
    }

    // A start past the end follows the reset policy.
    let mut reset = subscribe(
        &broker,
        SubscribeRequest {
            topic: "events".into(),
            start: start(Position::Offset(1000)),
            reset_policy: ResetPolicy::Latest as i32,
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut reset).await.unwrap() {
        Event::PositionReset(reset) => {
            assert_eq!(reset.from_offset, Some(1000));
            assert_eq!(reset.to_offset, 11);
            assert_eq!(reset.reason, ResetReason::AboveEndOffset as i32);
        }
        other => panic!("expected a PositionReset, got {other:?}"),
    }
    let mut refused = subscribe(
        &broker,
        SubscribeRequest {
            topic: "events".into(),
            start: start(Position::Offset(1000)),
            reset_policy: ResetPolicy::Error as i32,
            ..Default::default()
        },
    )
    .await;
    let status = next_event(&mut refused).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("0..11"), "{}", status.message());
}

#[tokio::test]
async fn subscriber_receives_messages_published_after_it_subscribed() {
    let broker = TestBroker::start();
    broker.create_topic("live", 2, TopicConfig::default()).await;
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "live".into(),
            start: start(Position::Earliest(Earliest {})),
            max_batch_messages: 7,
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A pipelined producer: 50 requests of 4 messages, sent without waiting.
    let (tx, rx) = mpsc::channel(64);
    let mut responses = broker
        .publisher()
        .await
        .publish_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for request_id in 0..50u64 {
        let messages = (0..4)
            .map(|i| Message {
                value: format!("{request_id}-{i}").into(),
                partition: Some((i % 2) as u32),
                ..Default::default()
            })
            .collect();
        tx.send(PublishStreamRequest {
            batch: None,
            request_id,
            request: Some(PublishRequest {
                topic: "live".into(),
                messages,
                ack: AckLevel::Durable as i32,
            }),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut answered = 0;
    while let Some(response) = responses.message().await.unwrap() {
        assert_eq!(response.request_id, answered);
        assert!(matches!(response.outcome, Some(Outcome::Response(_))));
        answered += 1;
    }
    assert_eq!(answered, 50);

    let got = collect_messages(&mut stream, 200).await;
    // Per partition, offsets arrive in order without gaps or repeats, and batches
    // respect max_batch_messages.
    for partition in 0..2 {
        let offsets: Vec<u64> = got
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn subscribe_reads_only_the_chosen_partitions_and_ends_when_the_topic_is_deleted() {
    let broker = TestBroker::start();
    broker.create_topic("some", 3, TopicConfig::default()).await;
    let messages = (0..9)
        .map(|i| Message {
            value: format!("p{}", i % 3).into(),
            partition: Some(i % 3),
            ..Default::default()
        })
        .collect();
    publish(&broker, "some", messages, AckLevel::Durable)
        .await
        .unwrap();
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "some".into(),
            partitions: vec![2, 0],
            start: start(Position::Earliest(Earliest {})),
            ..Default::default()
        },
    )
    .await;
    let got = collect_messages(&mut stream, 6).await;
    assert!(got.iter().all(|m| m.partition != 1), "{got:?}");
    assert!(got.iter().all(|m| m.value == format!("p{}", m.partition)));

    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest {
            name: "some".into(),
        })
        .await
        .unwrap();
    let status = next_event(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("deleted"), "{status:?}");
}

#[tokio::test]
async fn publish_stream_answers_in_order_and_survives_bad_requests() {
    let broker = TestBroker::start();
    broker
        .create_topic("piped", 1, TopicConfig::default())
        .await;
    let (tx, rx) = mpsc::channel(16);
    let mut responses = broker
        .publisher()
        .await
        .publish_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        for request_id in 0..300u64 {
            let topic = if request_id == 150 {
                "missing"
            } else {
                "piped"
            };
            tx.send(PublishStreamRequest {
                batch: None,
                request_id: 1000 + request_id,
                request: Some(PublishRequest {
                    topic: topic.into(),
                    messages: vec![value_message(format!("r{request_id}"))],
                    ack: AckLevel::Durable as i32,
                }),
            })
            .await
            .unwrap();
        }
    });
    let mut expected_offset = 0;
    for request_id in 0..300u64 {
        let response = tokio::time::timeout(EVENT_TIMEOUT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.request_id, 1000 + request_id);
        match response.outcome.unwrap() {
            Outcome::Response(ok) => {
                assert_ne!(request_id, 150);
                assert_eq!(ok.acks[0].offset, expected_offset);
                expected_offset += 1;
            }
            Outcome::Error(error) => {
                assert_eq!(request_id, 150);
                assert_eq!(error.code, Code::NotFound as i32);
            }
            Outcome::BatchResponse(_) => panic!("a batch answer to a message request"),
        }
    }
    sender.await.unwrap();
    assert!(
        responses.message().await.unwrap().is_none(),
        "stream ends OK"
    );
    // 299 fsyncs would take ~1 s at this disk's rate; pipelining shares them.
    let metrics = broker.metrics_text();
    let fsyncs = metric_value(&metrics, "tidelog_fsync_duration_seconds_count").unwrap();
    assert!(fsyncs >= 1.0, "{metrics}");
}

#[tokio::test]
async fn fetch_long_polls_until_data_arrives_or_the_wait_ends() {
    let broker = TestBroker::start();
    broker.create_topic("poll", 1, TopicConfig::default()).await;
    let mut consumer = broker.consumer().await;

    let started = Instant::now();
    let empty = consumer
        .fetch(FetchRequest {
            topic: "poll".into(),
            offset: 0,
            max_wait_ms: 150,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.messages.is_empty());
    assert_eq!(empty.next_offset, 0);
    assert!(started.elapsed() >= Duration::from_millis(140));

    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let response = consumer
            .fetch(FetchRequest {
                topic: "poll".into(),
                offset: 0,
                max_wait_ms: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (response, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(
        &broker,
        "poll",
        vec![value_message("wake")],
        AckLevel::Durable,
    )
    .await
    .unwrap();
    let (response, waited) = waiting.await.unwrap();
    assert_eq!(response.messages.len(), 1);
    assert_eq!(response.next_offset, 1);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[tokio::test]
async fn expired_messages_are_never_delivered() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "ttl",
            1,
            TopicConfig {
                default_ttl_ms: Some(300),
                ..Default::default()
            },
        )
        .await;
    let messages = vec![
        value_message("short-lived"),
        Message {
            value: "forever".into(),
            ttl_ms: Some(0),
            ..Default::default()
        },
        Message {
            value: "own-ttl".into(),
            ttl_ms: Some(60_000),
            ..Default::default()
        },
    ];
    publish(&broker, "ttl", messages, AckLevel::Durable)
        .await
        .unwrap();
    let before = fetch(&broker, "ttl", 0, 0).await.unwrap();
    assert_eq!(before.messages.len(), 3);
    assert!(before.messages[0].expires_at_ms.is_some());
    assert_eq!(before.messages[1].expires_at_ms, None);

    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = fetch(&broker, "ttl", 0, 0).await.unwrap();
    let values: Vec<_> = after.messages.iter().map(|m| m.value.clone()).collect();
    assert_eq!(values, [Bytes::from("forever"), Bytes::from("own-ttl")]);
    assert_eq!(after.messages[0].offset, 1);

    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "ttl".into(),
            start: start(Position::Earliest(Earliest {})),
            ..Default::default()
        },
    )
    .await;
    let got = collect_messages(&mut stream, 2).await;
    assert_eq!(got[0].value, Bytes::from("forever"));
}

#[tokio::test]
async fn retention_deletes_old_segments_and_resets_subscribers() {
    let broker = TestBroker::start_with(&["--retention-interval", "100ms"]);
    broker
        .create_topic(
            "old",
            1,
            TopicConfig {
                segment_bytes: 4096,
                retention_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await;
    // An hour old, in ~20 segments of 4 KiB.
    let old = now_ms() - 3_600_000;
    for chunk in 0..20 {
        let messages = (0..4)
            .map(|i| Message {
                value: vec![chunk as u8; 900].into(),
                timestamp_ms: Some(old + i),
                ..Default::default()
            })
            .collect();
        publish(&broker, "old", messages, AckLevel::Durable)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let description = loop {
        let description = broker.describe_topic("old").await;
        if description.partitions[0].log_start_offset == 80 {
            break description;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not run: {description:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(description.partitions[0].end_offset, 80);

    let status = fetch(&broker, "old", 0, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("80..80"), "{}", status.message());

    // A subscriber starting below the log start is moved by its reset policy.
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "old".into(),
            start: start(Position::Offset(3)),
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap() {
        Event::PositionReset(reset) => {
            assert_eq!(reset.from_offset, Some(3));
            assert_eq!(reset.to_offset, 80);
            assert_eq!(reset.reason, ResetReason::BelowLogStart as i32);
        }
        other => panic!("expected a PositionReset, got {other:?}"),
    }
    publish(
        &broker,
        "old",
        vec![value_message("fresh")],
        AckLevel::Durable,
    )
    .await
    .unwrap();
    assert_eq!(collect_messages(&mut stream, 1).await[0].offset, 80);

    // The log start moves before the deleted files are removed and their directory
    // synced; the pass counts its deletions after that. A pass that ran while the
    // batches were still arriving has counted part of them already: wait for all 80.
    let deleted = "tidelog_retention_deleted_messages_total{topic=\"old\"}";
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let metrics = loop {
        let metrics = broker.metrics_text();
        if metric_value(&metrics, deleted) == Some(80.0) || Instant::now() >= deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metric_value(
            &metrics,
            "tidelog_retention_deleted_segments_total{topic=\"old\",reason=\"time\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tidelog_retention_deleted_messages_total{topic=\"old\"}"
        ),
        Some(80.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tidelog_position_resets_total{topic=\"old\",reason=\"below_log_start\"}"
        ),
        Some(1.0)
    );
}

/// Asserts `result` failed with `code` and a message containing `needle`.
fn expect<T>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.err().expect("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle:?} not in {:?}",
        status.message()
    );
}

#[tokio::test]
async fn errors_have_precise_codes_and_actionable_messages() {
    let broker = TestBroker::start_with(&["--max-request-bytes", "1048576"]);
    broker
        .create_topic(
            "errs",
            2,
            TopicConfig {
                max_message_bytes: 1024,
                ..Default::default()
            },
        )
        .await;
    publish(&broker, "errs", vec![value_message("x")], AckLevel::Durable)
        .await
        .unwrap();
    let mut admin = broker.admin().await;

    // Unknown topic.
    expect(
        admin
            .describe_topic(DescribeTopicRequest {
                name: "nope".into(),
            })
            .await
            .map(drop),
        Code::NotFound,
        "nope",
    );
    expect(
        publish(&broker, "nope", vec![value_message("x")], AckLevel::Durable).await,
        Code::NotFound,
        "ListTopics",
    );
    expect(fetch(&broker, "nope", 0, 0).await, Code::NotFound, "nope");
    expect(
        admin
            .delete_topic(DeleteTopicRequest {
                name: "nope".into(),
            })
            .await
            .map(drop),
        Code::NotFound,
        "nope",
    );
    // Existing topic.
    expect(
        admin
            .create_topic(CreateTopicRequest {
                name: "errs".into(),
                partitions: 1,
                config: None,
            })
            .await
            .map(drop),
        Code::AlreadyExists,
        "already exists",
    );
    // Bad names, partition counts and config values.
    for name in ["", "a/b", "..", "__internal", &"x".repeat(250)] {
        expect(
            admin
                .create_topic(CreateTopicRequest {
                    name: name.into(),
                    partitions: 1,
                    config: None,
                })
                .await
                .map(drop),
            Code::InvalidArgument,
            "",
        );
    }
    expect(
        admin
            .create_topic(CreateTopicRequest {
                name: "many".into(),
                partitions: 10_001,
                config: None,
            })
            .await
            .map(drop),
        Code::InvalidArgument,
        "10000",
    );
    expect(
        admin
            .create_topic(CreateTopicRequest {
                name: "tiny-segments".into(),
                partitions: 1,
                config: Some(TopicConfig {
                    segment_bytes: 10,
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        Code::InvalidArgument,
        "segment_bytes",
    );
    // Bad partition.
    expect(
        publish(
            &broker,
            "errs",
            vec![Message {
                value: "x".into(),
                partition: Some(2),
                ..Default::default()
            }],
            AckLevel::Durable,
        )
        .await,
        Code::InvalidArgument,
        "has 2 partitions (0-1); there is no partition 2",
    );
    expect(
        fetch(&broker, "errs", 5, 0).await,
        Code::InvalidArgument,
        "has 2 partitions (0-1); there is no partition 5",
    );
    let mut bad_subscribe = broker.consumer().await;
    expect(
        async {
            let mut stream = bad_subscribe
                .subscribe(SubscribeRequest {
                    topic: "errs".into(),
                    partitions: vec![0, 9],
                    ..Default::default()
                })
                .await?
                .into_inner();
            stream.message().await
        }
        .await,
        Code::InvalidArgument,
        "has 2 partitions (0-1); there is no partition 9",
    );
    // Offsets out of range name both bounds.
    expect(fetch(&broker, "errs", 0, 5).await, Code::OutOfRange, "0..1");
    // Over the topic's message limit, and empty requests.
    expect(
        publish(
            &broker,
            "errs",
            vec![value_message(vec![0u8; 2000])],
            AckLevel::Durable,
        )
        .await,
        Code::InvalidArgument,
        "max_message_bytes",
    );
    expect(
        publish(&broker, "errs", Vec::new(), AckLevel::Durable).await,
        Code::InvalidArgument,
        "at least one",
    );
    expect(
        publish(
            &broker,
            "errs",
            vec![Message {
                value: "x".into(),
                timestamp_ms: Some(-5),
                ..Default::default()
            }],
            AckLevel::Durable,
        )
        .await,
        Code::InvalidArgument,
        "negative",
    );
    // Over the server's request size limit: rejected by the transport.
    let status = publish(
        &broker,
        "errs",
        vec![value_message(vec![0u8; 2 << 20])],
        AckLevel::Durable,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("1048576") && status.message().contains("--max-request-bytes"),
        "{status:?}"
    );

    // The same inside a publish stream: the stream ends with that status.
    let (tx, rx) = mpsc::channel(1);
    let mut stream = broker
        .publisher()
        .await
        .publish_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(PublishStreamRequest {
        batch: None,
        request_id: 1,
        request: Some(PublishRequest {
            topic: "errs".into(),
            messages: vec![value_message(vec![0u8; 2 << 20])],
            ack: AckLevel::Durable as i32,
        }),
    })
    .await
    .unwrap();
    let status = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Still serving after all that, and the errors were counted.
    publish(&broker, "errs", vec![value_message("y")], AckLevel::Durable)
        .await
        .unwrap();
    let metrics = broker.metrics_text();
    assert!(
        metric_value(
            &metrics,
            "tidelog_rpc_errors_total{method=\"Publish\",code=\"INVALID_ARGUMENT\"}"
        )
        .unwrap()
            >= 3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let broker = TestBroker::start();
    let channel: Channel = broker.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "tidelog.v1.Publisher",
        "tidelog.v1.Consumer",
        "tidelog.v1.Admin",
        "tidelog.v1.Groups",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in tidelog_proto::SERVICE_NAMES
        .into_iter()
        .chain(["grpc.health.v1.Health"])
    {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
}

// A multi-thread runtime: the client answers the broker's goodbye while `stop`
// blocks (see `TestBroker::stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_durable_acks_loses_nothing() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("crash", 3, TopicConfig::default())
        .await;
    broker
        .create_topic(
            "crash-interval",
            1,
            TopicConfig {
                fsync: Some(tidelog_proto::v1::FsyncPolicy {
                    policy: Some(tidelog_proto::v1::fsync_policy::Policy::IntervalMs(60_000)),
                }),
                ..Default::default()
            },
        )
        .await;

    // Every acked message by (topic, partition, offset).
    let mut acked: BTreeMap<(String, u32, u64), Message> = BTreeMap::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next_byte = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    for round in 0..40u32 {
        for topic in ["crash", "crash-interval"] {
            let messages: Vec<Message> = (0..5)
                .map(|i| {
                    let len = 1 + (round as usize * 37 + i * 101) % 3000;
                    Message {
                        key: if i % 2 == 0 {
                            Bytes::from(format!("key-{}", (round + i as u32) % 7))
                        } else {
                            Bytes::new()
                        },
                        value: (0..len).map(|_| next_byte()).collect::<Vec<u8>>().into(),
                        headers: vec![Header {
                            key: format!("h{i}"),
                            value: vec![next_byte(), 0, 255].into(),
                        }],
                        ..Default::default()
                    }
                })
                .collect();
            let acks = publish(&broker, topic, messages.clone(), AckLevel::Durable)
                .await
                .unwrap()
                .acks;
            for (message, ack) in messages.into_iter().zip(acks) {
                acked.insert((topic.to_string(), ack.partition, ack.offset), message);
            }
        }
    }
    broker.kill9();
    broker.restart();

    for ((topic, partition, offset), message) in &acked {
        let fetched = fetch(&broker, topic, *partition, *offset).await.unwrap();
        let got = fetched
            .messages
            .first()
            .unwrap_or_else(|| panic!("{topic}/{partition}@{offset} is gone after kill -9"));
        assert_eq!(got.offset, *offset);
        assert_eq!(got.key, message.key, "{topic}/{partition}@{offset}");
        assert_eq!(got.value, message.value, "{topic}/{partition}@{offset}");
        assert_eq!(got.headers, message.headers, "{topic}/{partition}@{offset}");
    }
    broker.stop();
}

// Multi-threaded: `stop` blocks this thread while the client's connections must
// keep answering the server's HTTP/2 GOAWAY and PING for a graceful close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_zero() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("graceful", 1, TopicConfig::default())
        .await;
    publish(
        &broker,
        "graceful",
        vec![value_message("kept")],
        AckLevel::Written,
    )
    .await
    .unwrap();
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "graceful".into(),
            start: start(Position::Earliest(Earliest {})),
            ..Default::default()
        },
    )
    .await;
    collect_messages(&mut stream, 1).await;
    let mut long_poll = broker.consumer().await;
    let poll = tokio::spawn(async move {
        long_poll
            .fetch(FetchRequest {
                topic: "graceful".into(),
                offset: 1,
                max_wait_ms: 30_000,
                ..Default::default()
            })
            .await
    });
    // An open publish stream with one request answered.
    let (publish_tx, publish_rx) = mpsc::channel(4);
    let mut publish_stream = broker
        .publisher()
        .await
        .publish_stream(ReceiverStream::new(publish_rx))
        .await
        .unwrap()
        .into_inner();
    publish_tx
        .send(PublishStreamRequest {
            batch: None,
            request_id: 1,
            request: Some(PublishRequest {
                topic: "graceful".into(),
                messages: vec![value_message("streamed")],
                ack: AckLevel::Durable as i32,
            }),
        })
        .await
        .unwrap();
    let answer = publish_stream.message().await.unwrap().unwrap();
    assert!(matches!(answer.outcome, Some(Outcome::Response(_))));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    broker.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}; log:\n{}",
        started.elapsed(),
        broker.log()
    );
    // The subscriber was told, and the long poll answered (or saw the server go).
    // (It may first deliver the streamed message, if it had not yet.)
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, stream.message())
            .await
            .unwrap()
        {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
            Ok(None) => break,
            Ok(Some(SubscribeResponse {
                event: Some(Event::Batch(batch)),
            })) => assert_eq!(batch.messages[0].value, Bytes::from("streamed")),
            Ok(Some(event)) => panic!("unexpected event {event:?}"),
        }
    }
    let _ = tokio::time::timeout(EVENT_TIMEOUT, poll).await.unwrap();
    match tokio::time::timeout(EVENT_TIMEOUT, publish_stream.message())
        .await
        .unwrap()
    {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(answer)) => panic!("unexpected answer {answer:?}"),
    }
    drop(publish_tx);
    assert!(
        broker.log().contains("checkpoints written"),
        "{}",
        broker.log()
    );

    // Written (not fsynced) data survived the clean stop.
    broker.restart();
    let fetched = fetch(&broker, "graceful", 0, 0).await.unwrap();
    assert_eq!(fetched.messages[0].value, Bytes::from("kept"));
    assert_eq!(fetched.messages[1].value, Bytes::from("streamed"));
    broker.stop();
}

/// A second tidelogd on a data directory a running broker holds exits at once with
/// status 1, naming the directory and what to do, and leaves the first one serving.
#[tokio::test]
async fn a_second_broker_on_the_same_data_dir_is_refused_with_its_reason() {
    let broker = TestBroker::start();
    broker.create_topic("kept", 1, TopicConfig::default()).await;
    let started = std::time::Instant::now();
    let second = std::process::Command::new(tidelog_tests::tidelogd_bin())
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running a second tidelogd");
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "data directory {} is in use by another tidelog process; stop it or choose another directory",
            broker.data_dir().display()
        )),
        "{stderr}"
    );
    assert!(
        started.elapsed() < tidelog_tests::READY_TIMEOUT,
        "refused after {:?}",
        started.elapsed()
    );
    // The first broker still has its topic and takes writes.
    broker
        .create_topic("after", 1, TopicConfig::default())
        .await;
    let topics = broker
        .admin()
        .await
        .list_topics(tidelog_proto::v1::ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = topics.topics.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"kept") && names.contains(&"after"),
        "{names:?}"
    );
}

/// A topic.config from before `record_features` (what an older build wrote) gains the
/// line when the broker opens it, and keeps it through a kill -9; one that states
/// record features newer than this build's makes tidelogd exit 1 saying a newer
/// tidelogd wrote it (not that it is corrupt), and leaves it for that build.
#[tokio::test]
async fn topic_config_record_features_are_recorded_on_open_and_newer_ones_refused() {
    let mut broker = TestBroker::start();
    broker.create_topic("t", 1, TopicConfig::default()).await;
    let ids: Vec<Message> = (0..20u64)
        .map(|i| Message {
            value: Bytes::from(format!("m{i}")),
            id: Bytes::from([b"PRODUCER".as_slice(), &(1_000 + i).to_be_bytes()].concat()),
            ..Default::default()
        })
        .collect();
    publish(&broker, "t", ids, AckLevel::Durable).await.unwrap();
    let path = broker.data_dir().join("topics/t/topic.config");
    let written = std::fs::read_to_string(&path).unwrap();
    let line = format!("record_features={}\n", tidelog_storage::RECORD_FEATURES);
    assert!(written.contains(&line), "{written}");

    broker.kill9();
    std::fs::write(&path, written.replace(&line, "")).unwrap();
    broker.restart();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    broker.kill9();
    broker.restart();
    let fetched = fetch(&broker, "t", 0, 0).await.unwrap();
    assert_eq!(fetched.messages.len(), 20);
    broker.kill9();

    let newer = written.replace(
        &line,
        &format!("record_features={}\n", tidelog_storage::RECORD_FEATURES + 1),
    );
    std::fs::write(&path, &newer).unwrap();
    let refused = std::process::Command::new(tidelog_tests::tidelogd_bin())
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running tidelogd");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "{} was written by a newer tidelogd (record_features={}",
            path.display(),
            tidelog_storage::RECORD_FEATURES + 1
        )) && stderr.contains("upgrade to read it")
            && !stderr.contains("corrupt"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
}

/// A broker started with too low an open-file limit for its partitions (each keeps two
/// files open) exits 1 saying so and what to do: raise the hard limit, sized from the
/// partitions the data directory holds, not only "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_out_of_file_descriptors_says_to_raise_the_limit() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("many", 200, TopicConfig::default())
        .await;
    broker.stop();
    let command = format!(
        "ulimit -n 64 && exec '{}' --data-dir '{}' --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0",
        tidelog_tests::tidelogd_bin().display(),
        broker.data_dir().display()
    );
    let refused = std::process::Command::new("sh")
        .args(["-c", &command])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running tidelogd");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Too many open files")
            && stderr.contains("raise its hard open-file limit (ulimit -n, systemd LimitNOFILE)")
            && stderr.contains("twice its 200 partitions"),
        "{stderr}"
    );
}
