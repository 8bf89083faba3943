//! Where a consumer stands, through the real broker (issue 12's API frictions):
//! Consumer.ListOffsets, the positions every MessageBatch carries (past expired
//! messages too), the Positioned event, and a start per partition.

use std::time::Duration;

use crate::support::subscribe;
use tidelog_proto::v1::start_position::{Earliest, Latest, Position};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, GroupMembership, ListOffsetsRequest, ListedOffset, Message, MessageBatch,
    PartitionPosition, PositionReset, PublishRequest, ResetPolicy, ResetReason, StartPosition,
    SubscribeRequest, SubscribeResponse, TopicConfig, list_offsets_request,
};
use tidelog_tests::TestBroker;
use tonic::{Code, Streaming};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Publishes `count` messages to `partition` with timestamps `first_ms + i` and an
/// optional TTL; returns their offsets.
async fn publish(
    broker: &TestBroker,
    topic: &str,
    partition: u32,
    count: u64,
    first_ms: i64,
    ttl_ms: Option<u64>,
) -> Vec<u64> {
    let messages = (0..count)
        .map(|i| Message {
            value: format!("p{partition}-{i}").into_bytes().into(),
            partition: Some(partition),
            timestamp_ms: Some(first_ms + i as i64),
            ttl_ms,
            ..Default::default()
        })
        .collect();
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish")
        .into_inner()
        .acks
        .into_iter()
        .map(|a| a.offset)
        .collect()
}

async fn list(
    broker: &TestBroker,
    topic: &str,
    partitions: Vec<u32>,
    position: Option<list_offsets_request::Position>,
) -> Result<Vec<ListedOffset>, tonic::Status> {
    broker
        .consumer()
        .await
        .list_offsets(ListOffsetsRequest {
            topic: topic.into(),
            partitions,
            position,
        })
        .await
        .map(|r| r.into_inner().offsets)
}

async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Result<Event, tonic::Status> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(response.event.expect("an event")),
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
    }
}

async fn next_batch(stream: &mut Streaming<SubscribeResponse>) -> MessageBatch {
    loop {
        match next_event(stream).await.expect("stream open") {
            Event::Batch(batch) => return batch,
            Event::Assignment(_) | Event::PositionReset(_) => continue,
            Event::Positioned(p) => panic!("unasked Positioned {p:?}"),
            Event::TopicsChanged(t) => panic!("unasked TopicsChanged {t:?}"),
        }
    }
}

fn position(partition: u32, next_offset: u64, end_offset: u64) -> PartitionPosition {
    PartitionPosition {
        partition,
        next_offset,
        end_offset,
        topic: String::new(),
        topic_id: 0,
    }
}

/// `positions` as [`position`] writes them: each must name its topic's id (never 0,
/// the same in all: these tests read one topic), which is then left out.
fn without_ids(positions: &[PartitionPosition]) -> Vec<PartitionPosition> {
    let ids: std::collections::BTreeSet<u64> = positions.iter().map(|p| p.topic_id).collect();
    assert!(
        ids.len() <= 1 && !ids.contains(&0),
        "every position names its topic's id: {positions:?}"
    );
    positions
        .iter()
        .map(|p| PartitionPosition {
            topic_id: 0,
            ..p.clone()
        })
        .collect()
}

#[tokio::test]
async fn list_offsets_finds_the_start_the_end_and_the_first_message_at_a_time() {
    let broker = TestBroker::start();
    broker.create_topic("t", 2, TopicConfig::default()).await;
    publish(&broker, "t", 0, 10, 1_000, None).await;
    publish(&broker, "t", 1, 4, 5_000, None).await;
    use list_offsets_request::Position as P;

    let earliest = list(&broker, "t", vec![], Some(P::Earliest(Earliest {})))
        .await
        .unwrap();
    let offsets: Vec<(u32, u64, bool)> = earliest
        .iter()
        .map(|o| (o.partition, o.offset, o.found))
        .collect();
    assert_eq!(offsets, vec![(0, 0, true), (1, 0, true)]);
    assert_eq!(
        earliest.iter().map(|o| o.end_offset).collect::<Vec<_>>(),
        vec![10, 4]
    );

    let latest = list(&broker, "t", vec![1], Some(P::Latest(Latest {})))
        .await
        .unwrap();
    assert_eq!((latest[0].partition, latest[0].offset), (1, 4));

    // Partition 0 holds times 1000..=1009, partition 1 5000..=5003.
    let at = list(&broker, "t", vec![1, 0], Some(P::TimestampMs(1_004)))
        .await
        .unwrap();
    let found: Vec<(u32, u64, bool)> = at
        .iter()
        .map(|o| (o.partition, o.offset, o.found))
        .collect();
    assert_eq!(
        found,
        vec![(1, 0, true), (0, 4, true)],
        "in the order asked"
    );
    let future = list(&broker, "t", vec![0], Some(P::TimestampMs(9_999)))
        .await
        .unwrap();
    assert_eq!((future[0].offset, future[0].found), (10, false));

    for (what, topic, partitions, position, code) in [
        ("no position", "t", vec![], None, Code::InvalidArgument),
        (
            "a duplicate partition",
            "t",
            vec![0, 0],
            Some(P::Latest(Latest {})),
            Code::InvalidArgument,
        ),
        (
            "a partition past the count",
            "t",
            vec![2],
            Some(P::Latest(Latest {})),
            Code::InvalidArgument,
        ),
        (
            "an unknown topic",
            "nope",
            vec![],
            Some(P::Latest(Latest {})),
            Code::NotFound,
        ),
    ] {
        let status = list(&broker, topic, partitions, position)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
}

#[tokio::test]
async fn every_batch_carries_the_next_offset_past_expired_messages_and_the_end() {
    let broker = TestBroker::start();
    broker.create_topic("ttl", 1, TopicConfig::default()).await;
    publish(&broker, "ttl", 0, 3, 1_000, None).await;
    // Two more that expire before anyone reads them, then nothing.
    publish(&broker, "ttl", 0, 2, 2_000, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "ttl".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            ..Default::default()
        },
    )
    .await;
    let batch = next_batch(&mut stream).await;
    assert_eq!(
        batch.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // "last offset + 1" would be 3; the position is past the expired 3 and 4.
    assert_eq!(without_ids(&batch.positions), vec![position(0, 5, 5)]);
}

/// Bug hunt 2026-12-06: when a read found only expired messages (its budget had
/// stopped the read before them), a plain Subscribe stream or a group member sent
/// nothing, so the client never learned it was past them: a lag of 2 forever, and a
/// loop reading until next_offset == end_offset never ended. Each now sends a batch
/// with no messages and the position past them.
#[tokio::test]
async fn a_read_that_finds_only_expired_messages_still_reports_the_position_past_them() {
    let broker = TestBroker::start();
    broker.create_topic("tail", 1, TopicConfig::default()).await;
    publish(&broker, "tail", 0, 2, 1_000, None).await;
    publish(&broker, "tail", 0, 2, 2_000, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for group in [None, Some("tail-readers")] {
        let mut stream = subscribe(
            &broker,
            SubscribeRequest {
                topic: "tail".into(),
                // A new group starts at the earliest offset too.
                start: group.is_none().then_some(StartPosition {
                    position: Some(Position::Earliest(Earliest {})),
                }),
                group: group.map(|g| GroupMembership {
                    group_id: g.into(),
                    ..Default::default()
                }),
                max_batch_messages: 1,
                ..Default::default()
            },
        )
        .await;
        let mut got = Vec::new();
        loop {
            let batch = next_batch(&mut stream).await;
            let offsets: Vec<u64> = batch.messages.iter().map(|m| m.offset).collect();
            got.push((offsets, without_ids(&batch.positions)));
            if got.len() == 3 {
                break;
            }
        }
        assert_eq!(
            got,
            vec![
                (vec![0], vec![position(0, 1, 4)]),
                (vec![1], vec![position(0, 2, 4)]),
                (vec![], vec![position(0, 4, 4)]),
            ],
            "group {group:?}"
        );
    }
}

#[tokio::test]
async fn a_group_members_batches_carry_a_position_per_partition_read() {
    let broker = TestBroker::start();
    broker.create_topic("g", 2, TopicConfig::default()).await;
    publish(&broker, "g", 0, 3, 1_000, None).await;
    publish(&broker, "g", 1, 2, 1_000, None).await;
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "g".into(),
            group: Some(GroupMembership {
                group_id: "readers".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let mut last = std::collections::BTreeMap::new();
    let mut delivered = 0;
    while delivered < 5 {
        let batch = next_batch(&mut stream).await;
        delivered += batch.messages.len();
        for m in &batch.messages {
            assert!(
                batch.positions.iter().any(|p| p.partition == m.partition),
                "message of partition {} without its position",
                m.partition
            );
        }
        for p in batch.positions {
            last.insert(p.partition, (p.next_offset, p.end_offset));
        }
    }
    assert_eq!(
        last.into_iter().collect::<Vec<_>>(),
        vec![(0, (3, 3)), (1, (2, 2))]
    );
}

#[tokio::test]
async fn positioned_comes_first_so_a_publish_right_after_is_delivered_from_latest() {
    let broker = TestBroker::start();
    broker.create_topic("live", 2, TopicConfig::default()).await;
    publish(&broker, "live", 0, 4, 1_000, None).await;
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "live".into(),
            start: Some(StartPosition {
                position: Some(Position::Latest(Latest {})),
            }),
            send_positioned: true,
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap() {
        Event::Positioned(positioned) => assert_eq!(
            without_ids(&positioned.positions),
            vec![position(0, 4, 4), position(1, 0, 0)]
        ),
        other => panic!("expected Positioned first, got {other:?}"),
    }
    // Published after the event, from "latest": delivered, every time.
    let offsets = publish(&broker, "live", 0, 1, 2_000, None).await;
    let batch = next_batch(&mut stream).await;
    assert_eq!(batch.messages[0].offset, offsets[0]);

    // Not asked for: no Positioned event (clients that predate it are not surprised).
    let mut plain = subscribe(
        &broker,
        SubscribeRequest {
            topic: "live".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        next_event(&mut plain).await.unwrap(),
        Event::Batch(_)
    ));
}

#[tokio::test]
async fn a_start_per_partition_resumes_each_where_it_got_to() {
    let broker = TestBroker::start();
    broker
        .create_topic("multi", 3, TopicConfig::default())
        .await;
    for partition in 0..3 {
        publish(&broker, "multi", partition, 6, 1_000, None).await;
    }
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "multi".into(),
            partition_starts: vec![
                PartitionStart {
                    partition: 2,
                    offset: 5,
                    ..Default::default()
                },
                PartitionStart {
                    partition: 0,
                    offset: 2,
                    ..Default::default()
                },
            ],
            send_positioned: true,
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap() {
        Event::Positioned(p) => {
            assert_eq!(
                without_ids(&p.positions),
                vec![position(2, 5, 6), position(0, 2, 6)]
            )
        }
        other => panic!("expected Positioned, got {other:?}"),
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(
            next_batch(&mut stream)
                .await
                .messages
                .iter()
                .map(|m| (m.partition, m.offset)),
        );
    }
    got.sort_unstable();
    assert_eq!(got, vec![(0, 2), (0, 3), (0, 4), (0, 5), (2, 5)]);

    let refused = [
        (
            "a partition twice",
            SubscribeRequest {
                topic: "multi".into(),
                partition_starts: vec![
                    PartitionStart {
                        partition: 1,
                        offset: 0,
                        ..Default::default()
                    },
                    PartitionStart {
                        partition: 1,
                        offset: 3,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ),
        (
            "partition_starts with start",
            SubscribeRequest {
                topic: "multi".into(),
                partition_starts: vec![PartitionStart {
                    partition: 1,
                    offset: 0,
                    ..Default::default()
                }],
                start: Some(StartPosition {
                    position: Some(Position::Earliest(Earliest {})),
                }),
                ..Default::default()
            },
        ),
        (
            "send_positioned with a group",
            SubscribeRequest {
                topic: "multi".into(),
                group: Some(GroupMembership {
                    group_id: "g".into(),
                    ..Default::default()
                }),
                send_positioned: true,
                ..Default::default()
            },
        ),
    ];
    for (what, request) in refused {
        let result = broker.consumer().await.subscribe(request).await;
        let status = match result {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                next_event(&mut stream).await.expect_err(what)
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
}

#[tokio::test]
async fn positioned_names_the_start_the_reset_policy_chose_for_a_start_out_of_range() {
    let broker = TestBroker::start();
    // Partition 0 from past its end, partition 1 from within its log.
    let request = |topic: &str, reset_policy: ResetPolicy| SubscribeRequest {
        topic: topic.into(),
        partition_starts: vec![
            PartitionStart {
                partition: 0,
                offset: 1000,
                ..Default::default()
            },
            PartitionStart {
                partition: 1,
                offset: 1,
                ..Default::default()
            },
        ],
        reset_policy: reset_policy as i32,
        send_positioned: true,
        ..Default::default()
    };
    for (topic, policy, start) in [
        ("latest", ResetPolicy::Latest, 5),
        ("earliest", ResetPolicy::Earliest, 0),
        ("error", ResetPolicy::Error, 0),
    ] {
        broker.create_topic(topic, 2, TopicConfig::default()).await;
        publish(&broker, topic, 0, 5, 1_000, None).await;
        publish(&broker, topic, 1, 3, 1_000, None).await;
        if policy == ResetPolicy::Error {
            // No Positioned: the stream ends OUT_OF_RANGE.
            let status = match broker
                .consumer()
                .await
                .subscribe(request(topic, policy))
                .await
            {
                Err(status) => status,
                Ok(response) => {
                    let mut stream = response.into_inner();
                    next_event(&mut stream)
                        .await
                        .expect_err("OUT_OF_RANGE, not an event")
                }
            };
            assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
            continue;
        }
        let mut stream = subscribe(&broker, request(topic, policy)).await;
        match next_event(&mut stream).await.unwrap() {
            Event::Positioned(p) => assert_eq!(
                without_ids(&p.positions),
                vec![position(0, start, 5), position(1, 1, 3)],
                "{policy:?}: where delivery starts"
            ),
            other => panic!("{policy:?}: expected Positioned first, got {other:?}"),
        }
        // The reset is still reported, from the offset asked for.
        match next_event(&mut stream).await.unwrap() {
            Event::PositionReset(reset) => assert_eq!(
                reset,
                PositionReset {
                    partition: 0,
                    from_offset: Some(1000),
                    to_offset: start,
                    reason: ResetReason::AboveEndOffset as i32,
                    topic: String::new(),
                    topic_id: reset.topic_id.max(1),
                },
                "{policy:?}"
            ),
            other => panic!("{policy:?}: expected the PositionReset, got {other:?}"),
        }
        // The start is fixed: a message published now comes, after those before it.
        let offsets = publish(&broker, topic, 0, 1, 2_000, None).await;
        let mut got = Vec::new();
        while !(got.contains(&(0, offsets[0])) && got.contains(&(1, 2))) {
            let batch = next_batch(&mut stream).await;
            got.extend(batch.messages.iter().map(|m| (m.partition, m.offset)));
        }
        got.sort_unstable();
        let mut expected: Vec<(u32, u64)> = (start..=offsets[0]).map(|o| (0, o)).collect();
        expected.extend([(1, 1), (1, 2)]);
        assert_eq!(got, expected, "{policy:?}");
    }
}
