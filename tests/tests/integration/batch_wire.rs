//! Record batches on the wire through the real broker: a client encodes batches in the
//! log's format (keys, headers, TTLs, large and empty values, ids, zstd), publishes them
//! with PublishBatch and on PublishStream, and reads them back with FetchBatches and
//! SubscribeBatches, decoding them as a client would; the per-message Fetch and
//! GetMessage see the same messages. Every class of malformed batch is refused with
//! INVALID_ARGUMENT naming the reason, and nothing is appended. A dedup window
//! deduplicates a retried batch whole.

use std::time::Duration;

use bytes::Bytes;
use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    AckLevel, FetchRequest, GetMessageRequest, PublishBatchRequest, PublishStreamRequest,
    StartPosition, SubscribeRequest, TopicConfig, publish_stream_response::Outcome, start_position,
    subscribe_batches_response::Event,
};
use tidelog_storage::batch::{EncodeOptions, encode_batch};
use tidelog_storage::client_batch::delivered_records;
use tidelog_storage::{Compression, Header, NewRecord, Record};
use tidelog_tests::{TestBroker, now_ms};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

/// Encodes `records` as a client does (the broker's append time is close to ours).
fn encode(records: &[NewRecord], compression: Compression) -> Bytes {
    let options = EncodeOptions {
        now_ms: now_ms(),
        default_ttl_ms: None,
        compression,
        max_message_bytes: 4 << 20,
        priority_levels: 0,
    };
    Bytes::from(encode_batch(records, &options).expect("encode").bytes)
}

fn records(first: usize, count: usize) -> Vec<NewRecord> {
    (first..first + count)
        .map(|n| NewRecord {
            key: (n % 3 != 0).then(|| Bytes::from(format!("key-{n}"))),
            value: match n % 7 {
                0 => Bytes::new(),
                1 => Bytes::from(vec![b'L'; 1 << 20]),
                _ => Bytes::from(format!("value {n} {}", "x".repeat(n % 90))),
            },
            headers: (0..n % 3)
                .map(|h| Header {
                    key: format!("h{h}"),
                    value: Bytes::from(format!("hv{n}")),
                })
                .collect(),
            ttl_ms: (n % 5 == 0).then_some(3_600_000),
            id: (n % 2 == 0).then(|| Bytes::from(format!("id-{n}"))),
            ..NewRecord::default()
        })
        .collect()
}

async fn publish(
    client: &mut PublisherClient<Channel>,
    topic: &str,
    partition: u32,
    batch: Bytes,
) -> Result<tidelog_proto::v1::PublishBatchResponse, tonic::Status> {
    client
        .publish_batch(PublishBatchRequest {
            topic: topic.into(),
            partition,
            batch,
            ack: AckLevel::Durable as i32,
            relative_times: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every record of a partition through FetchBatches, decoded as a client does.
async fn fetch_all_batches(
    broker: &TestBroker,
    topic: &str,
    from: u64,
    filter: &str,
) -> Vec<Record> {
    let request = FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset: from,
        max_messages: 50,
        filter: filter.into(),
        ..Default::default()
    };
    fetch_records(broker, request, |_| {}).await
}

/// The values partition `partition` of `topic` holds, in offset order (Fetch of every
/// record).
async fn stored_values(broker: &TestBroker, topic: &str, partition: u32) -> Vec<Bytes> {
    let request = FetchRequest {
        topic: topic.into(),
        partition,
        ..Default::default()
    };
    fetch_records(broker, request, |_| {})
        .await
        .into_iter()
        .map(|r| r.value)
        .collect()
}

/// Every record from `request`'s offset to the end through FetchBatches, following
/// each response's `next_offset`; `vary` sets each request's limits before it goes.
async fn fetch_records(
    broker: &TestBroker,
    mut request: FetchRequest,
    mut vary: impl FnMut(&mut FetchRequest),
) -> Vec<Record> {
    let mut consumer = broker.consumer().await;
    let mut out = Vec::new();
    loop {
        vary(&mut request);
        let response = consumer
            .fetch_batches(request.clone())
            .await
            .expect("fetch batches")
            .into_inner();
        for batch in &response.batches {
            let records =
                delivered_records(&batch.batch, batch.skip_front, &batch.skip, response.now_ms)
                    .expect("a stored batch decodes");
            out.extend(records);
        }
        if response.next_offset >= response.end_offset {
            break;
        }
        assert!(
            response.next_offset > request.offset,
            "no progress at {}",
            request.offset
        );
        request.offset = response.next_offset;
    }
    out
}

/// The next `count` records of a SubscribeBatches stream (other events skipped),
/// decoded as a client does.
async fn stream_records(
    stream: &mut tonic::Streaming<tidelog_proto::v1::SubscribeBatchesResponse>,
    count: usize,
) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        let Some(Event::Batches(batches)) = event.event else {
            continue;
        };
        for batch in &batches.batches {
            out.extend(
                delivered_records(&batch.batch, batch.skip_front, &batch.skip, batches.now_ms)
                    .expect("a stored batch decodes"),
            );
        }
    }
    out
}

fn same(got: &Record, sent: &NewRecord, what: &str) {
    assert_eq!(got.key, sent.key, "{what}: key");
    assert_eq!(got.value, sent.value, "{what}: value");
    assert_eq!(got.headers, sent.headers, "{what}: headers");
    assert_eq!(got.id, sent.id, "{what}: id");
    assert_eq!(
        got.expires_at_ms.is_some(),
        sent.ttl_ms.is_some(),
        "{what}: expiry"
    );
}

#[tokio::test]
async fn batches_round_trip_through_the_broker_both_ways() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "wire",
            1,
            TopicConfig {
                max_message_bytes: 2 << 20,
                ..Default::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let mut sent = Vec::new();
    // Unary, plain and zstd.
    for (first, compression) in [(0, Compression::None), (40, Compression::Zstd)] {
        let batch = records(first, 40);
        let ack = publish(&mut client, "wire", 0, encode(&batch, compression))
            .await
            .expect("publish batch");
        assert_eq!(
            (ack.base_offset, ack.count, ack.duplicate),
            (first as u64, 40, false)
        );
        sent.extend(batch);
    }
    // On the publish stream, beside a per-message request.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for request_id in 0..3u64 {
        let batch = records(80 + 10 * request_id as usize, 10);
        tx.send(PublishStreamRequest {
            request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                topic: "wire".into(),
                partition: 0,
                batch: encode(&batch, Compression::Zstd),
                // Durable: readers of an `always` topic see only what is fsynced, and
                // the reads below must find every batch once it is answered.
                ack: AckLevel::Durable as i32,
                relative_times: false,
            }),
        })
        .await
        .unwrap();
        sent.extend(batch);
    }
    drop(tx);
    for request_id in 0..3u64 {
        let response = responses.next().await.expect("an answer").expect("ok");
        assert_eq!(response.request_id, request_id);
        match response.outcome {
            Some(Outcome::BatchResponse(ack)) => {
                assert_eq!(ack.base_offset, 80 + 10 * request_id)
            }
            other => panic!("request {request_id}: {other:?}"),
        }
    }

    // Batch form: every record, in order, from the start and from inside a batch.
    let got = fetch_all_batches(&broker, "wire", 0, "").await;
    assert_eq!(got.len(), sent.len());
    for (n, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(got.offset, n as u64);
        same(got, sent, &format!("record {n}"));
    }
    let tail = fetch_all_batches(&broker, "wire", 45, "").await;
    assert_eq!(
        tail.first().map(|r| r.offset),
        Some(45),
        "skip_front drops 40..45"
    );
    assert_eq!(tail.len(), sent.len() - 45);

    // The per-message Fetch sees the same messages.
    let mut consumer = broker.consumer().await;
    let fetched = consumer
        .fetch(FetchRequest {
            topic: "wire".into(),
            partition: 0,
            offset: 40,
            max_messages: 5,
            max_bytes: 64 << 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for m in &fetched.messages {
        let sent = &sent[m.offset as usize];
        assert_eq!(m.value, sent.value);
        assert_eq!(m.key, sent.key.clone().unwrap_or_default());
    }

    // Ids are indexed: GetMessage finds a batch's record by its id.
    let mut messages = MessagesClient::new(broker.channel().await);
    let found = messages
        .get_message(GetMessageRequest {
            topic: "wire".into(),
            id: Bytes::from_static(b"id-42"),
            include_value: true,
        })
        .await
        .expect("id-42 is found")
        .into_inner()
        .message
        .unwrap();
    assert_eq!(found.offset, 42);
    assert_eq!(found.value, sent[42].value);

    // A filter marks the records it refuses; the client skips them.
    let keyed = fetch_all_batches(&broker, "wire", 0, "key == \"key-1\"").await;
    assert_eq!(keyed.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1]);

    // SubscribeBatches from the earliest offset delivers every record once.
    let mut stream = consumer
        .subscribe_batches(SubscribeRequest {
            topic: "wire".into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            max_batch_messages: 30,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = stream_records(&mut stream, sent.len())
        .await
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, (0..sent.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn expired_records_in_a_batch_are_dropped_by_the_reader() {
    let broker = TestBroker::start();
    broker.create_topic("ttl", 1, TopicConfig::default()).await;
    let mut client = broker.publisher().await;
    let batch = vec![
        NewRecord {
            ttl_ms: Some(1_000),
            ..NewRecord::value("short")
        },
        NewRecord::value("forever"),
    ];
    publish(&mut client, "ttl", 0, encode(&batch, Compression::None))
        .await
        .unwrap();
    assert_eq!(fetch_all_batches(&broker, "ttl", 0, "").await.len(), 2);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = fetch_all_batches(&broker, "ttl", 0, "").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, Bytes::from_static(b"forever"));
}

#[tokio::test]
async fn every_malformed_batch_is_refused_with_its_reason_and_nothing_is_appended() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "strict",
            1,
            TopicConfig {
                max_message_bytes: 1000,
                ..Default::default()
            },
        )
        .await;
    broker
        .create_topic(
            "ttl-default",
            1,
            TopicConfig {
                default_ttl_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await;
    broker
        .create_topic(
            "assigning",
            1,
            TopicConfig {
                assign_ids: true,
                ..Default::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let good = encode(&records(2, 5), Compression::None).to_vec();
    let recrc = |mut bytes: Vec<u8>| {
        let crc = tidelog_storage::batch::compute_crc(&bytes);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    let with = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        recrc(bytes)
    };
    let mut crc = good.clone();
    *crc.last_mut().unwrap() ^= 1;
    let mut zstd = encode(&records(2, 5), Compression::Zstd).to_vec();
    let last = zstd.len() - 1;
    zstd[last] ^= 0xff;
    let expired = encode(
        &[NewRecord {
            ttl_ms: Some(1),
            ..NewRecord::value("v")
        }],
        Compression::None,
    );
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("strict", "empty", Vec::new(), "truncated"),
        (
            "strict",
            "truncated",
            good[..good.len() - 3].to_vec(),
            "truncated",
        ),
        (
            "strict",
            "two batches",
            [good.clone(), good.clone()].concat(),
            "exactly one batch",
        ),
        ("strict", "crc", crc, "CRC mismatch"),
        ("strict", "version", with(16, &[9]), "version"),
        ("strict", "codec", with(17, &[2]), "codec"),
        (
            "strict",
            "zero records",
            with(24, &0u32.to_le_bytes()),
            "record count",
        ),
        (
            "strict",
            "sparse offsets",
            with(20, &9u32.to_le_bytes()),
            "dense",
        ),
        (
            "strict",
            "record count over the records",
            {
                let mut b = with(24, &6u32.to_le_bytes());
                b[20..24].copy_from_slice(&5u32.to_le_bytes());
                recrc(b)
            },
            "record 5",
        ),
        (
            "strict",
            "max timestamp",
            with(36, &(now_ms() + 10_000_000).to_le_bytes()),
            "max_timestamp_ms",
        ),
        (
            "strict",
            "max expiry",
            with(44, &1i64.to_le_bytes()),
            "max_expiry_ms",
        ),
        (
            "strict",
            "record attributes",
            with(61, &[0xe0]),
            "unknown attribute",
        ),
        (
            "strict",
            "too large",
            encode(&[NewRecord::value(vec![0u8; 1001])], Compression::None).to_vec(),
            "max_message_bytes",
        ),
        ("strict", "zstd", recrc(zstd), "zstd"),
        (
            "strict",
            "expired",
            {
                std::thread::sleep(Duration::from_millis(5));
                expired.to_vec()
            },
            "expires at",
        ),
        (
            "ttl-default",
            "no expiry on a default-TTL topic",
            good.clone(),
            "default TTL",
        ),
        (
            "assigning",
            "no ids on an assign_ids topic",
            good.clone(),
            "assigns ids",
        ),
    ];
    for (topic, what, bytes, reason) in cases {
        let status = publish(&mut client, topic, 0, Bytes::from(bytes))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{what}: {:?}",
            status.message()
        );
    }
    for topic in ["strict", "ttl-default", "assigning"] {
        let description = broker.describe_topic(topic).await;
        assert_eq!(
            description.partitions[0].end_offset, 0,
            "{topic}: nothing appended"
        );
    }
    // The same batch, valid, goes in.
    let ack = publish(
        &mut client,
        "strict",
        0,
        encode(&[NewRecord::value("ok")], Compression::None),
    )
    .await
    .unwrap();
    assert_eq!(ack.count, 1);
}

#[tokio::test]
async fn a_retried_batch_is_stored_once_within_the_dedup_window() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "once",
            1,
            TopicConfig {
                dedup_window_ms: Some(600_000),
                ..Default::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let batch: Vec<NewRecord> = (0..10)
        .map(|n| NewRecord {
            id: Some(Bytes::from(format!("order-{n}"))),
            ..NewRecord::value(format!("v{n}"))
        })
        .collect();
    let bytes = encode(&batch, Compression::Zstd);
    let first = publish(&mut client, "once", 0, bytes.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    let retry = publish(&mut client, "once", 0, bytes).await.unwrap();
    assert!(retry.duplicate);
    let offsets: Vec<u64> = retry.acks.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    assert!(retry.acks.iter().all(|a| a.duplicate));
    // Half old, half new: refused whole, nothing appended.
    let mixed: Vec<NewRecord> = (5..15)
        .map(|n| NewRecord {
            id: Some(Bytes::from(format!("order-{n}"))),
            ..NewRecord::value(format!("v{n}"))
        })
        .collect();
    let status = publish(&mut client, "once", 0, encode(&mixed, Compression::None))
        .await
        .expect_err("a mixed batch");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("deduplicated whole"),
        "{}",
        status.message()
    );
    assert_eq!(
        broker.describe_topic("once").await.partitions[0].end_offset,
        10
    );
    // The per-message Publish sees the batch's ids too.
    let got = fetch_all_batches(&broker, "once", 0, "").await;
    assert_eq!(got.len(), 10);
}

/// Batches acked DURABLE survive a kill -9: recovery's scan accepts the client's bytes
/// with the broker's base offsets, and reads in both forms return every record.
#[tokio::test]
async fn durable_batches_survive_a_kill_9() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            "kept",
            1,
            TopicConfig {
                max_message_bytes: 2 << 20,
                ..Default::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let mut sent = Vec::new();
    for round in 0..20usize {
        let batch = records(round * 25, 25);
        let compression = if round % 2 == 0 {
            Compression::Zstd
        } else {
            Compression::None
        };
        publish(&mut client, "kept", 0, encode(&batch, compression))
            .await
            .expect("durable publish");
        sent.extend(batch);
    }
    broker.kill9();
    broker.restart();
    let end = broker.describe_topic("kept").await.partitions[0].end_offset;
    assert_eq!(end, sent.len() as u64, "{}", broker.log());
    let got = fetch_all_batches(&broker, "kept", 0, "").await;
    assert_eq!(got.len(), sent.len());
    for (n, (got, sent)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(got.offset, n as u64);
        same(got, sent, &format!("record {n} after the kill"));
    }
    // The dedup window outlives the kill: a retried batch is a duplicate...
    let mut client = broker.publisher().await;
    let retry = publish(
        &mut client,
        "kept",
        0,
        encode(&records(0, 25), Compression::None),
    )
    .await
    .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        retry.acks.iter().map(|a| a.offset).collect::<Vec<_>>(),
        (0..25).step_by(2).collect::<Vec<u64>>()
    );
    // ...and new batches go on after the recovered end.
    let ack = publish(
        &mut client,
        "kept",
        0,
        encode(&records(1000, 3), Compression::None),
    )
    .await
    .unwrap();
    assert_eq!((ack.base_offset, ack.duplicate), (sent.len() as u64, false));
}

/// The events of a batch-form member stream until `want` records of `topic` arrived:
/// (partition, offset) of each delivered record, and the Assignments seen.
async fn read_member(
    stream: &mut tonic::Streaming<tidelog_proto::v1::SubscribeBatchesResponse>,
    want: usize,
    topic: &str,
) -> (Vec<(u32, u64)>, Vec<Vec<u32>>) {
    let mut got = Vec::new();
    let mut assignments = Vec::new();
    while got.len() < want {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok")
            .event
            .expect("an event");
        match event {
            Event::Assignment(assignment) => assignments.push(
                assignment
                    .partitions
                    .iter()
                    .copied()
                    .chain(assignment.topics.iter().flat_map(|t| t.partitions.clone()))
                    .collect(),
            ),
            Event::Batches(batches) => {
                let position = batches.position.expect("a position");
                assert_eq!(position.partition, batches.partition);
                assert_eq!(
                    position.topic, topic,
                    "the position names the topic on a pattern member only"
                );
                for batch in &batches.batches {
                    for record in delivered_records(
                        &batch.batch,
                        batch.skip_front,
                        &batch.skip,
                        batches.now_ms,
                    )
                    .unwrap()
                    {
                        got.push((batches.partition, record.offset));
                    }
                }
            }
            // A partition without a committed offset starts by the reset policy.
            Event::PositionReset(reset) => assert_eq!(reset.topic, topic),
            other => panic!("unexpected event {other:?}"),
        }
    }
    (got, assignments)
}

/// SubscribeBatches with a group: a member like Subscribe's (Assignment first, a
/// rebalance when a second member joins, auto-commit of the positions), its data as
/// stored batches; every record reaches the group once; a pattern member's positions
/// name the topic; a plain pattern stream in batch form is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_read_stored_batches_and_commit_their_positions() {
    use tidelog_proto::v1::GroupMembership;
    use tidelog_proto::v1::groups_client::GroupsClient;
    let broker = TestBroker::start();
    broker.create_topic("gw", 4, TopicConfig::default()).await;
    let mut publisher = PublisherClient::new(broker.channel().await);
    let fill = |first: usize| {
        (first..first + 40)
            .map(|n| NewRecord::value(Bytes::from(format!("v{n}"))))
            .collect::<Vec<_>>()
    };
    for partition in 0..4 {
        publish(
            &mut publisher,
            "gw",
            partition,
            encode(&fill(0), Compression::None),
        )
        .await
        .unwrap();
    }
    let member = |group: &str| GroupMembership {
        group_id: group.into(),
        auto_commit_interval_ms: 50,
        client_id: "batch-member".into(),
        ..Default::default()
    };
    let subscribe = |topic: &str, pattern: &str, group: &str| SubscribeRequest {
        topic: topic.into(),
        topic_pattern: pattern.into(),
        group: Some(member(group)),
        max_batch_messages: 25,
        ..Default::default()
    };
    let mut a = broker
        .consumer()
        .await
        .subscribe_batches(subscribe("gw", "", "g"))
        .await
        .unwrap()
        .into_inner();
    let (first, assignments) = read_member(&mut a, 160, "").await;
    assert_eq!(assignments, vec![vec![0, 1, 2, 3]]);
    let mut expected: Vec<(u32, u64)> = (0..4).flat_map(|p| (0..40).map(move |o| (p, o))).collect();
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, expected,
        "every record once, in offset order per partition"
    );

    // A second member: the partitions are split, and the next 160 records reach the
    // group once between the two.
    let mut b = broker
        .consumer()
        .await
        .subscribe_batches(subscribe("gw", "", "g"))
        .await
        .unwrap()
        .into_inner();
    let b_assignment = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Event::Assignment(assignment)) = event.event {
            let partitions = assignment.partitions;
            if !partitions.is_empty() {
                break partitions;
            }
        }
    };
    assert_eq!(b_assignment.len(), 2, "{b_assignment:?}");
    for partition in 0..4 {
        publish(
            &mut publisher,
            "gw",
            partition,
            encode(&fill(40), Compression::None),
        )
        .await
        .unwrap();
    }
    let (from_b, _) = read_member(&mut b, 80, "").await;
    assert!(
        from_b.iter().all(|(p, _)| b_assignment.contains(p)),
        "{from_b:?}"
    );
    let (from_a, a_assignments) = read_member(&mut a, 80, "").await;
    assert!(
        a_assignments.last().is_some_and(|p| p.len() == 2),
        "{a_assignments:?}"
    );
    let mut second: Vec<(u32, u64)> = from_a.into_iter().chain(from_b).collect();
    second.sort_unstable();
    expected = (0..4).flat_map(|p| (40..80).map(move |o| (p, o))).collect();
    assert_eq!(second, expected);

    // Auto-commit moved every partition's committed offset to the end.
    let mut groups = GroupsClient::new(broker.channel().await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let offsets: Vec<u64> = groups
            .fetch_offsets(tidelog_proto::v1::FetchOffsetsRequest {
                group_id: "g".into(),
                topic: None,
            })
            .await
            .unwrap()
            .into_inner()
            .offsets
            .iter()
            .map(|o| o.offset)
            .collect();
        if offsets == [80, 80, 80, 80] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, b));

    // A pattern member: its positions name the topic.
    let mut p = broker
        .consumer()
        .await
        .subscribe_batches(subscribe("", "gw.*", "gp"))
        .await
        .unwrap()
        .into_inner();
    let (all, _) = read_member(&mut p, 320, "gw").await;
    assert_eq!(all.len(), 320);

    // Without a group, SubscribeBatches reads a pattern as Subscribe does: the topics
    // first, then batches whose positions name their topic.
    let mut plain = broker
        .consumer()
        .await
        .subscribe_batches(SubscribeRequest {
            topic_pattern: "gw.*".into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(Default::default())),
            }),
            ..Default::default()
        })
        .await
        .expect("a plain pattern stream")
        .into_inner();
    let Event::TopicsChanged(changed) = next_event(&mut plain).await else {
        panic!("the first event is TopicsChanged");
    };
    assert!(changed.topics.contains(&"gw".to_string()), "{changed:?}");
    let Event::Batches(batches) = next_event(&mut plain).await else {
        panic!("then batches");
    };
    assert_eq!(batches.position.expect("a position").topic, "gw");
}

async fn next_event(
    stream: &mut tonic::Streaming<tidelog_proto::v1::SubscribeBatchesResponse>,
) -> Event {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an event in time")
        .expect("open")
        .expect("ok")
        .event
        .expect("an event")
}

/// Batches of random sizes (records of 0 B to 200 KB, so stored batches from a few
/// dozen bytes, copied into the response, to megabytes, sent as slices of the
/// segments) come back whole through FetchBatches and SubscribeBatches with random
/// byte budgets, every record once and in order; deleting the topic then ends the
/// stream with NOT_FOUND in its trailers.
#[tokio::test]
async fn batches_of_random_sizes_read_back_in_both_forms_and_a_stream_ends_with_its_status() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "sizes",
            1,
            TopicConfig {
                max_message_bytes: 4 << 20,
                ..Default::default()
            },
        )
        .await;
    let mut rng = crate::support::Rng::new(0x5eed_b47c);
    let mut client = broker.publisher().await;
    let mut sent: Vec<Bytes> = Vec::new();
    for _ in 0..24 {
        let count = 1 + rng.below(40) as usize;
        let batch: Vec<NewRecord> = (0..count)
            .map(|_| {
                let len = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(200_000) as usize,
                    _ => rng.below(3_000) as usize,
                };
                NewRecord {
                    value: Bytes::from(rng.bytes(len)),
                    ..NewRecord::default()
                }
            })
            .collect();
        publish(&mut client, "sizes", 0, encode(&batch, Compression::None))
            .await
            .expect("publish batch");
        sent.extend(batch.into_iter().map(|r| r.value));
    }

    let request = FetchRequest {
        topic: "sizes".into(),
        ..Default::default()
    };
    let fetched = fetch_records(&broker, request, |request| {
        request.max_bytes = 1 + rng.below(1 << 20) as u32;
    })
    .await;
    let offsets: Vec<u64> = fetched.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..sent.len() as u64).collect::<Vec<_>>());
    let fetched: Vec<Bytes> = fetched.into_iter().map(|r| r.value).collect();
    assert!(fetched == sent, "FetchBatches returned other values");

    let mut stream = broker
        .consumer()
        .await
        .subscribe_batches(SubscribeRequest {
            topic: "sizes".into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            max_batch_bytes: 1 + rng.below(2 << 20) as u32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let streamed = stream_records(&mut stream, sent.len()).await;
    let offsets: Vec<u64> = streamed.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..sent.len() as u64).collect::<Vec<_>>());
    let streamed: Vec<Bytes> = streamed.into_iter().map(|r| r.value).collect();
    assert!(streamed == sent, "SubscribeBatches delivered other values");

    broker
        .admin()
        .await
        .delete_topic(tidelog_proto::v1::DeleteTopicRequest {
            name: "sizes".into(),
        })
        .await
        .unwrap();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream ends in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("deleted"), "{status:?}");
}

/// What a request of the stream below is, and what must become of it.
enum Sent {
    /// A batch to a partition: its values, appended there in request order.
    Batch(u32, Vec<Bytes>),
    /// Messages by the per-message form, to one partition.
    Messages(u32, Vec<Bytes>),
    /// Refused alone, with this code.
    Refused(Code),
}

/// Requests sent on one PublishStream without waiting (so the broker finds many
/// arrived at once and writes a partition's batches together): batches of random
/// sizes to three partitions in random order, with per-message requests, malformed
/// batches and batches to a partition that does not exist among them. Every request
/// is answered in its order; each batch lands in its partition right after the
/// partition's earlier requests, whatever came between them on the stream; a refused
/// request changes nothing; and every partition reads back exactly what was sent to it.
#[tokio::test]
async fn requests_sent_together_on_a_stream_are_answered_in_order_and_land_in_order() {
    const PARTITIONS: u32 = 3;
    let broker = TestBroker::start();
    broker
        .create_topic(
            "together",
            PARTITIONS,
            TopicConfig {
                max_message_bytes: 4 << 20,
                // Small segments: runs of batches roll in the middle.
                segment_bytes: 1 << 20,
                ..Default::default()
            },
        )
        .await;
    let mut rng = crate::support::Rng::new(0x70_6e7e);
    let mut requests = Vec::new();
    let mut sent = Vec::new();
    for request_id in 0..80u64 {
        let partition = rng.below(u64::from(PARTITIONS)) as u32;
        let values: Vec<Bytes> = (0..1 + rng.below(30))
            .map(|_| {
                let len = match rng.below(40) {
                    0 => 0,
                    1 => 150_000 + rng.below(200_000) as usize,
                    _ => rng.below(3_500) as usize,
                };
                Bytes::from(rng.bytes(len))
            })
            .collect();
        let records: Vec<NewRecord> = values.iter().cloned().map(NewRecord::value).collect();
        let ack = if rng.below(2) == 0 {
            AckLevel::Written
        } else {
            AckLevel::Durable
        } as i32;
        let batch = |partition, bytes| PublishStreamRequest {
            request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                topic: "together".into(),
                partition,
                batch: bytes,
                ack,
                relative_times: false,
            }),
        };
        let (request, what) = match rng.below(20) {
            0 => {
                let mut torn = encode(&records, Compression::None).to_vec();
                let last = torn.len() - 1;
                torn[last] ^= 1;
                (
                    batch(partition, Bytes::from(torn)),
                    Sent::Refused(Code::InvalidArgument),
                )
            }
            1 => (
                batch(PARTITIONS + 4, encode(&records, Compression::None)),
                Sent::Refused(Code::InvalidArgument),
            ),
            2 | 3 => {
                let messages = values
                    .iter()
                    .map(|value| tidelog_proto::v1::Message {
                        value: value.clone(),
                        partition: Some(partition),
                        ..Default::default()
                    })
                    .collect();
                let request = tidelog_proto::v1::PublishRequest {
                    topic: "together".into(),
                    messages,
                    ack,
                };
                (
                    PublishStreamRequest {
                        request_id,
                        request: Some(request),
                        batch: None,
                    },
                    Sent::Messages(partition, values),
                )
            }
            n => {
                let compression = if n % 4 == 0 {
                    Compression::Zstd
                } else {
                    Compression::None
                };
                (
                    batch(partition, encode(&records, compression)),
                    Sent::Batch(partition, values),
                )
            }
        };
        requests.push(request);
        sent.push(what);
    }

    let mut client = broker.publisher().await;
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut expected: Vec<Vec<Bytes>> = vec![Vec::new(); PARTITIONS as usize];
    for (request_id, what) in sent.iter().enumerate() {
        let response = responses.next().await.expect("an answer").expect("ok");
        assert_eq!(response.request_id, request_id as u64, "answers in order");
        let context = format!("request {request_id}");
        match (what, response.outcome) {
            (Sent::Batch(partition, values), Some(Outcome::BatchResponse(ack))) => {
                let log = &mut expected[*partition as usize];
                assert_eq!(ack.partition, *partition, "{context}");
                assert_eq!(ack.base_offset, log.len() as u64, "{context}");
                assert_eq!(ack.count as usize, values.len(), "{context}");
                log.extend(values.iter().cloned());
            }
            (Sent::Messages(partition, values), Some(Outcome::Response(response))) => {
                let log = &mut expected[*partition as usize];
                let offsets: Vec<(u32, u64)> = response
                    .acks
                    .iter()
                    .map(|ack| (ack.partition, ack.offset))
                    .collect();
                let want: Vec<(u32, u64)> = (0..values.len() as u64)
                    .map(|i| (*partition, log.len() as u64 + i))
                    .collect();
                assert_eq!(offsets, want, "{context}");
                log.extend(values.iter().cloned());
            }
            (Sent::Refused(code), Some(Outcome::Error(error))) => {
                assert_eq!(error.code, *code as i32, "{context}: {error:?}");
            }
            (_, other) => panic!("{context}: {other:?}"),
        }
    }
    assert!(responses.next().await.is_none(), "the stream ends OK");
    for partition in 0..PARTITIONS {
        // Readers see what is durable (the topic syncs every append): a durable
        // publish last makes the partition's earlier appends durable too.
        let last = vec![Bytes::from(format!("last of {partition}"))];
        let records: Vec<NewRecord> = last.iter().cloned().map(NewRecord::value).collect();
        let batch = encode(&records, Compression::None);
        let ack = publish(&mut client, "together", partition, batch)
            .await
            .unwrap();
        let log = &mut expected[partition as usize];
        assert_eq!(ack.base_offset, log.len() as u64);
        log.extend(last);

        let request = FetchRequest {
            topic: "together".into(),
            partition,
            ..Default::default()
        };
        let fetched = fetch_records(&broker, request, |_| {}).await;
        let offsets: Vec<u64> = fetched.iter().map(|r| r.offset).collect();
        let log = &expected[partition as usize];
        assert_eq!(offsets, (0..log.len() as u64).collect::<Vec<_>>());
        let values: Vec<Bytes> = fetched.into_iter().map(|r| r.value).collect();
        assert!(values == *log, "partition {partition} holds other values");
    }
}

/// Bug hunt 2026-12-06: the requests a PublishStream reader takes together were
/// appended a partition at a time, so of two batches with one id sent to different
/// partitions, the one to the partition appended first was kept even when it came
/// second. Each id here goes first to one partition, then, a few requests later, to
/// another (or the same), with plain batches between: the first is kept, the second
/// is acked as its duplicate, and each partition holds its plain batches in order.
#[tokio::test]
async fn of_two_batches_with_one_id_sent_together_the_first_is_kept() {
    const PARTITIONS: u32 = 3;
    let broker = TestBroker::start();
    broker
        .create_topic("ids", PARTITIONS, TopicConfig::default())
        .await;
    let mut rng = crate::support::Rng::new(0x1d5_f125);
    let with_id = |id: &str, value: String| {
        vec![NewRecord {
            id: Some(Bytes::from(id.to_string())),
            ..NewRecord::value(value)
        }]
    };
    // (partition, records, the id's first request if this repeats it).
    let mut sent: Vec<(u32, Vec<NewRecord>, Option<usize>)> = Vec::new();
    for k in 0..30 {
        let first = rng.below(u64::from(PARTITIONS)) as u32;
        let again = rng.below(u64::from(PARTITIONS)) as u32;
        let id = format!("id-{k}");
        sent.push((first, with_id(&id, format!("first {k}")), None));
        let repeated = sent.len() - 1;
        for _ in 0..rng.below(3) {
            let partition = rng.below(u64::from(PARTITIONS)) as u32;
            let plain = (0..1 + rng.below(20))
                .map(|i| NewRecord::value(format!("plain {k} {i} {}", "p".repeat(3000))))
                .collect();
            sent.push((partition, plain, None));
        }
        sent.push((again, with_id(&id, format!("second {k}")), Some(repeated)));
    }
    let requests: Vec<PublishStreamRequest> = sent
        .iter()
        .enumerate()
        .map(
            |(request_id, (partition, records, _))| PublishStreamRequest {
                request_id: request_id as u64,
                request: None,
                batch: Some(PublishBatchRequest {
                    topic: "ids".into(),
                    partition: *partition,
                    batch: encode(records, Compression::None),
                    // Readers see only what is durable.
                    ack: AckLevel::Durable as i32,
                    relative_times: false,
                }),
            },
        )
        .collect();
    let mut client = broker.publisher().await;
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut acks = Vec::new();
    let mut expected: Vec<Vec<Bytes>> = vec![Vec::new(); PARTITIONS as usize];
    for (request_id, (partition, records, repeats)) in sent.iter().enumerate() {
        let response = responses.next().await.expect("an answer").expect("ok");
        let Some(Outcome::BatchResponse(ack)) = response.outcome else {
            panic!("request {request_id}: {response:?}");
        };
        match repeats {
            None => {
                assert!(!ack.duplicate, "request {request_id}: {ack:?}");
                let log = &mut expected[*partition as usize];
                assert_eq!(ack.base_offset, log.len() as u64, "request {request_id}");
                log.extend(records.iter().map(|r| r.value.clone()));
            }
            Some(first) => {
                let original: &tidelog_proto::v1::PublishBatchResponse = &acks[*first];
                assert!(ack.duplicate, "request {request_id}: {ack:?}");
                let named: Vec<(u32, u64)> =
                    ack.acks.iter().map(|a| (a.partition, a.offset)).collect();
                assert_eq!(
                    named,
                    [(original.partition, original.base_offset)],
                    "request {request_id} names request {first}"
                );
            }
        }
        acks.push(ack);
    }
    for partition in 0..PARTITIONS {
        let values = stored_values(&broker, "ids", partition).await;
        assert!(
            values == expected[partition as usize],
            "partition {partition} holds other values"
        );
    }
}

/// A PublishStream of durable batches to three partitions, sent without waiting (so the
/// broker writes a partition's batches together), killed with SIGKILL half-way through
/// its answers. After the restart each partition holds a prefix of what was sent to it,
/// in order, byte for byte: every batch acked durable, and of the rest only batches
/// whose predecessors in that partition are there too.
#[tokio::test]
async fn batches_written_together_survive_a_kill_9_in_order() {
    const PARTITIONS: u32 = 3;
    const REQUESTS: u64 = 90;
    let mut broker = TestBroker::start();
    broker
        .create_topic("runs", PARTITIONS, TopicConfig::default())
        .await;
    let mut rng = crate::support::Rng::new(0x6b11_1009);
    let mut sent: Vec<(u32, Vec<Bytes>)> = Vec::new();
    let mut requests = Vec::new();
    // Each request's base offset in its partition, and the partitions' ends.
    let mut bases = Vec::new();
    let mut ends = [0u64; PARTITIONS as usize];
    for request_id in 0..REQUESTS {
        let partition = rng.below(u64::from(PARTITIONS)) as u32;
        let values: Vec<Bytes> = (0..1 + rng.below(40))
            .map(|_| {
                let len = rng.below(4_000) as usize;
                Bytes::from(rng.bytes(len))
            })
            .collect();
        let records: Vec<NewRecord> = values.iter().cloned().map(NewRecord::value).collect();
        requests.push(PublishStreamRequest {
            request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                topic: "runs".into(),
                partition,
                batch: encode(&records, Compression::None),
                ack: AckLevel::Durable as i32,
                relative_times: false,
            }),
        });
        bases.push(ends[partition as usize]);
        ends[partition as usize] += values.len() as u64;
        sent.push((partition, values));
    }
    let mut client = broker.publisher().await;
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    // Durable acks: (partition, base offset, count).
    let mut acked = Vec::new();
    for request_id in 0..REQUESTS / 2 {
        let response = responses.next().await.expect("an answer").expect("ok");
        assert_eq!(response.request_id, request_id);
        match response.outcome {
            Some(Outcome::BatchResponse(ack)) => {
                acked.push((ack.partition, ack.base_offset, ack.count))
            }
            other => panic!("request {request_id}: {other:?}"),
        }
    }
    broker.kill9();
    drop(responses);
    broker.restart();

    for partition in 0..PARTITIONS {
        let stored = stored_values(&broker, "runs", partition).await;
        let mut expected: Vec<Bytes> = Vec::new();
        let mut batch_ends = vec![0];
        for (_, values) in sent.iter().filter(|(p, _)| *p == partition) {
            expected.extend(values.iter().cloned());
            batch_ends.push(expected.len());
        }
        assert!(
            batch_ends.contains(&stored.len()),
            "partition {partition}: {} records recovered, not a whole number of batches",
            stored.len()
        );
        assert!(
            stored[..] == expected[..stored.len()],
            "partition {partition}: the recovered records are not what was sent, in order"
        );
        for (_, base, count) in acked.iter().filter(|(p, ..)| *p == partition) {
            assert!(
                base + u64::from(*count) <= stored.len() as u64,
                "partition {partition}: acked durable {base}+{count}, but {} records recovered",
                stored.len()
            );
        }
    }
}

/// Bug hunt 5 (2026-12-07): a topic's queue caps with the `reject` policy held only
/// for the per-message Publish: PublishBatch, and batches on PublishStream (what the
/// Rust client's Producer and `tidelog produce` send), went past them. Now every
/// publish form is refused with RESOURCE_EXHAUSTED, a batch whole, and the stream goes
/// on.
#[tokio::test]
async fn a_full_queue_refuses_batches_in_every_publish_form() {
    use tidelog_proto::v1::{QueueConfig, QueueOverflow};
    let broker = TestBroker::start();
    broker
        .create_topic(
            "capped",
            2,
            TopicConfig {
                queue_max_ready_messages: Some(5),
                queue_overflow: QueueOverflow::Reject as i32,
                ..TopicConfig::default()
            },
        )
        .await;
    crate::support::create_queue(&broker, "cq", "capped", QueueConfig::default()).await;
    let plain = |first: usize, count: usize| -> Vec<NewRecord> {
        (first..first + count)
            .map(|n| NewRecord {
                value: Bytes::from(format!("m-{n}")),
                ..NewRecord::default()
            })
            .collect()
    };
    let mut client = broker.publisher().await;
    // 3 fit; 3 more would make 6: refused whole, nothing appended.
    publish(
        &mut client,
        "capped",
        0,
        encode(&plain(0, 3), Compression::None),
    )
    .await
    .expect("3 of 5");
    let refused = publish(
        &mut client,
        "capped",
        1,
        encode(&plain(3, 3), Compression::Zstd),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("queue \"cq\"") && refused.message().contains("3 ready"),
        "{refused:?}"
    );
    // On the stream, one answered before the next is sent (the caps count what
    // readers can see): 1 fits (4), the next fits (5), the third does not.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut outcomes = Vec::new();
    for request_id in 0..3u64 {
        tx.send(PublishStreamRequest {
            request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                topic: "capped".into(),
                partition: request_id as u32 % 2,
                batch: encode(&plain(10 + request_id as usize, 1), Compression::None),
                ack: AckLevel::Durable as i32,
                relative_times: false,
            }),
        })
        .await
        .unwrap();
        let response = responses
            .next()
            .await
            .expect("an answer")
            .expect("the stream goes on after a refused batch");
        outcomes.push(match response.outcome {
            Some(Outcome::BatchResponse(_)) => Ok(response.request_id),
            Some(Outcome::Error(error)) => Err((response.request_id, error.code)),
            other => panic!("{other:?}"),
        });
    }
    drop(tx);
    assert_eq!(
        outcomes,
        [Ok(0), Ok(1), Err((2, Code::ResourceExhausted as i32))]
    );
    // The log holds exactly the 5 admitted.
    let mut stored = 0;
    for partition in 0..2 {
        stored += stored_values(&broker, "capped", partition).await.len();
    }
    assert_eq!(stored, 5);
    // The CLI publishes in batch form too.
    let mut produce = tidelog_tests::tidelog_command()
        .args(["--server", &broker.endpoint(), "produce", "capped"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tidelog produce");
    {
        use std::io::Write;
        let mut stdin = produce.stdin.take().unwrap();
        stdin.write_all(b"one more\n").unwrap();
    }
    let run = produce.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is full"), "{stderr}");
}

/// A PublishBatch with `relative_times` from clients whose clocks are off (3 and 10
/// minutes behind the broker's, an hour ahead) is timed by the broker: the stored
/// timestamp is the broker's append time and a TTL counts from it (the 10-minute-late
/// client's 5-minute TTL is not refused as already expired); after a kill -9 the dedup
/// window, read back from the stored timestamps, still holds the ids, so a resend
/// within the window is answered duplicate.
#[tokio::test]
async fn a_batch_with_relative_times_is_timed_by_the_broker_and_deduplicated_after_a_kill() {
    let mut broker = TestBroker::start();
    let config = TopicConfig {
        dedup_window_ms: Some(120_000),
        ..TopicConfig::default()
    };
    broker.create_topic("skewed", 1, config).await;
    let mut client = broker.publisher().await;
    let relative = |batch: Bytes| PublishBatchRequest {
        topic: "skewed".into(),
        partition: 0,
        batch,
        ack: AckLevel::Durable as i32,
        relative_times: true,
    };
    let mut sent = Vec::new();
    for (skew, name) in [
        (-180_000, "behind"),
        (-600_000, "late"),
        (3_600_000, "ahead"),
    ] {
        let records = [NewRecord {
            id: Some(Bytes::from(format!("invoice-{name}"))),
            ttl_ms: Some(300_000),
            ..NewRecord::value(name)
        }];
        let before = now_ms();
        let options = EncodeOptions {
            now_ms: before + skew,
            default_ttl_ms: None,
            compression: Compression::None,
            max_message_bytes: 1 << 20,
            priority_levels: 0,
        };
        let batch = Bytes::from(encode_batch(&records, &options).unwrap().bytes);
        let ack = client
            .publish_batch(relative(batch.clone()))
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"))
            .into_inner();
        let after = now_ms();
        let stored = fetch_all_batches(&broker, "skewed", ack.base_offset, "").await;
        let stored = &stored[0];
        assert!(
            (before..=after).contains(&stored.timestamp_ms),
            "{name}: stored at {} ms, the broker's clock read {before}..={after}",
            stored.timestamp_ms
        );
        assert_eq!(
            stored.expires_at_ms,
            Some(stored.timestamp_ms + 300_000),
            "{name}: the TTL counts from the append time"
        );
        sent.push((name, batch, ack.base_offset));
    }
    broker.kill9();
    broker.restart();
    let mut client = broker.publisher().await;
    for (name, batch, offset) in sent {
        let resend = client
            .publish_batch(relative(batch))
            .await
            .unwrap_or_else(|status| panic!("{name}: {status:?}"))
            .into_inner();
        assert!(
            resend.duplicate,
            "{name}: the resend after the kill was stored again"
        );
        assert_eq!(resend.acks[0].offset, offset, "{name}");
    }
    let end = broker.describe_topic("skewed").await.partitions[0].end_offset;
    assert_eq!(end, 3);
}

/// tidelogd refuses messages stamped more than `--max-timestamp-ahead` (default 1h)
/// ahead of its clock, per message and in batches alike, and stores them with `off`.
#[tokio::test]
async fn timestamps_far_ahead_of_the_broker_are_refused_unless_switched_off() {
    let two_hours_ahead = now_ms() + 2 * 3_600_000;
    let ahead = || NewRecord {
        timestamp_ms: Some(two_hours_ahead),
        ..NewRecord::value(&b"from a clock ahead"[..])
    };
    for (flags, refused) in [
        (&[][..], true),
        (&["--max-timestamp-ahead", "off"][..], false),
    ] {
        let broker = TestBroker::start_with(flags);
        broker
            .create_topic("ahead", 1, TopicConfig::default())
            .await;
        let mut client = broker.publisher().await;
        let batch = publish(
            &mut client,
            "ahead",
            0,
            encode(&[ahead()], Compression::None),
        )
        .await;
        let one = client
            .publish(tidelog_proto::v1::PublishRequest {
                topic: "ahead".into(),
                messages: vec![tidelog_proto::v1::Message {
                    value: Bytes::from_static(b"one"),
                    timestamp_ms: Some(two_hours_ahead),
                    ..tidelog_proto::v1::Message::default()
                }],
                ack: AckLevel::Durable as i32,
            })
            .await;
        if refused {
            for status in [batch.unwrap_err(), one.unwrap_err()] {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(
                    status.message().contains("ahead of the broker's clock")
                        && status.message().contains("--max-timestamp-ahead"),
                    "{status:?}"
                );
            }
            assert_eq!(stored_values(&broker, "ahead", 0).await.len(), 0);
        } else {
            batch.expect("stored with the bound off");
            one.expect("stored with the bound off");
            assert_eq!(stored_values(&broker, "ahead", 0).await.len(), 2);
        }
    }
}

/// A batch-form group member that commits itself is told of a position that moved
/// only past expired records (an event with no batches), as the plain SubscribeBatches
/// reader and the message form tell it: otherwise its commits, and its lag, would stop
/// before them for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_form_member_is_told_of_a_position_moved_past_expired_records() {
    use tidelog_proto::v1::GroupMembership;
    let broker = TestBroker::start();
    broker
        .create_topic("expiring", 1, TopicConfig::default())
        .await;
    let mut publisher = PublisherClient::new(broker.channel().await);
    let kept: Vec<NewRecord> = (0..5)
        .map(|n| NewRecord::value(format!("kept {n}")))
        .collect();
    publish(
        &mut publisher,
        "expiring",
        0,
        encode(&kept, Compression::None),
    )
    .await
    .unwrap();
    let short: Vec<NewRecord> = (0..10)
        .map(|n| NewRecord {
            ttl_ms: Some(300),
            ..NewRecord::value(format!("short {n}"))
        })
        .collect();
    publish(
        &mut publisher,
        "expiring",
        0,
        encode(&short, Compression::None),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stream = broker
        .consumer()
        .await
        .subscribe_batches(SubscribeRequest {
            topic: "expiring".into(),
            group: Some(GroupMembership {
                group_id: "explicit".into(),
                ..Default::default()
            }),
            // The kept records fill the first read, so the next one finds only the
            // expired batch.
            max_batch_messages: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut delivered = 0;
    let mut positions = Vec::new();
    while positions.last() != Some(&15) {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no position past the expired records: {delivered} records, positions {positions:?}")
            })
            .expect("open")
            .expect("ok")
            .event
            .expect("an event");
        if let Event::Batches(batches) = event {
            for batch in &batches.batches {
                delivered +=
                    delivered_records(&batch.batch, batch.skip_front, &batch.skip, batches.now_ms)
                        .unwrap()
                        .len();
            }
            positions.push(batches.position.expect("a position").next_offset);
        }
    }
    assert_eq!(delivered, 5, "the kept records, none of the expired");
}
