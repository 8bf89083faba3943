//! A queue meeting messages that retention deleted, through the real broker: a purge
//! counts only what it took from the queue's view, a delivery whose message retention
//! deleted is dropped (not counted as unacked; its ack is answered plainly), and the
//! delivery status of a deleted offset says retention deleted it.
//!
//! Each test publishes offsets 0-35 an hour old, in a segment of their own (the next
//! batch does not fit beside them), then 36-89 now, and sets a retention of a minute:
//! the broker's retention pass (every 100 ms here) deletes 0-35.

use std::time::Duration;

use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action};
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, DescribeQueueRequest, GetDeliveryStatusRequest,
    GetDeliveryStatusResponse, Message, MessagePosition, PublishRequest, PurgeQueueRequest,
    QueueConfig, QueueDeliveryState, QueueDeliveryStatus, QueueDescription, ReceiveRequest,
    SettleRequest, Settlement, SettlementOutcome, TopicConfig, TopicConfigUpdate,
    get_delivery_status_request, get_delivery_status_response,
};
use tidelog_tests::{TestBroker, metric_value, now_ms};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::create_queue;

const TOPIC: &str = "tide";
const QUEUE: &str = "tide-q";
/// Offsets 0 to this (exclusive) are old and deleted by retention.
const OLD: u64 = 36;
/// Offsets in the topic.
const END: u64 = 90;

/// A broker with topic TOPIC (one partition, small segments) holding offsets 0-89,
/// 0-35 an hour old in a segment of their own, and queue QUEUE on it from the
/// earliest offset, with a long ack deadline (no lease ends by itself in a test).
async fn setup() -> TestBroker {
    let broker = TestBroker::start_with(&["--retention-interval", "100ms"]);
    broker
        .create_topic(
            TOPIC,
            1,
            TopicConfig {
                segment_bytes: 4096,
                ..TopicConfig::default()
            },
        )
        .await;
    create_queue(
        &broker,
        QUEUE,
        TOPIC,
        QueueConfig {
            ack_deadline_ms: Some(600_000),
            ..QueueConfig::default()
        },
    )
    .await;
    let mut publisher = broker.publisher().await;
    let an_hour_ago = now_ms() - 3_600_000;
    for (offsets, timestamp_ms) in [(0..OLD, Some(an_hour_ago)), (OLD..END, None)] {
        publisher
            .publish(PublishRequest {
                topic: TOPIC.into(),
                messages: offsets
                    .map(|_| Message {
                        value: vec![b'v'; 80].into(),
                        timestamp_ms,
                        ..Default::default()
                    })
                    .collect(),
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    broker
}

/// Sets a retention of a minute on TOPIC and waits until the retention pass has
/// deleted offsets 0-35.
async fn retain(broker: &TestBroker) {
    broker
        .admin()
        .await
        .alter_topic_config(AlterTopicConfigRequest {
            name: TOPIC.into(),
            update: Some(TopicConfigUpdate {
                retention_ms: Some(60_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.describe_topic(TOPIC).await.partitions[0].log_start_offset != OLD {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queues(broker: &TestBroker) -> QueuesClient<Channel> {
    QueuesClient::new(broker.channel().await)
}

/// The offsets a unary Receive of member `m` got (up to `max`).
async fn receive(broker: &TestBroker, max: u32) -> Vec<u64> {
    queues(broker)
        .await
        .receive(ReceiveRequest {
            queue: QUEUE.into(),
            member: "m".into(),
            max_messages: max,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .iter()
        .map(|d| d.message.as_ref().unwrap().offset)
        .collect()
}

/// The outcome of acking `offset` of partition 0 (any attempt, whoever holds it).
async fn ack(broker: &TestBroker, offset: u64) -> SettlementOutcome {
    let mut outcomes = queues(broker)
        .await
        .settle(SettleRequest {
            queue: QUEUE.into(),
            settlements: vec![Settlement {
                partition: 0,
                offset,
                action: Some(Action::Ack(Ack {})),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

async fn describe(broker: &TestBroker) -> QueueDescription {
    queues(broker)
        .await
        .describe_queue(DescribeQueueRequest { name: QUEUE.into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
}

async fn status_at(
    broker: &TestBroker,
    offset: u64,
) -> Result<GetDeliveryStatusResponse, tonic::Status> {
    MessagesClient::new(broker.channel().await)
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Position(
                MessagePosition {
                    partition: 0,
                    offset,
                },
            )),
            consumer: Some(get_delivery_status_request::Consumer::Queue(QUEUE.into())),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn queue_status(response: GetDeliveryStatusResponse) -> QueueDeliveryStatus {
    match response.status {
        Some(get_delivery_status_response::Status::Queue(status)) => status,
        other => panic!("a queue status, not {other:?}"),
    }
}

/// PurgeQueue after retention deleted offsets 0-35, three of them held by a member:
/// it reports the 54 messages it took from the queue (36-89, all ready), not the 90
/// from the queue's cursor (0) to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_counts_only_what_retention_left() {
    let broker = setup().await;
    assert_eq!(receive(&broker, 3).await, [0, 1, 2]);
    retain(&broker).await;
    assert_eq!(describe(&broker).await.ready, END - OLD);
    let purged = queues(&broker)
        .await
        .purge_queue(PurgeQueueRequest { name: QUEUE.into() })
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, END - OLD, "messages purged");
    let after = describe(&broker).await;
    assert_eq!((after.ready, after.unacked), (0, 0), "{after:?}");
}

/// A delivery whose message retention deleted is dropped at once (the retention pass
/// wakes the queue), with no member calling: it leaves the unacked count (DescribeQueue
/// and the metrics) and its member's share; the member's late ack of it is NOT_FOUND
/// saying retention deleted it, the queue delivers on from the log's new start, and
/// the metrics count each deleted message lost once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_a_message_retention_deleted_is_dropped() {
    let broker = setup().await;
    assert_eq!(receive(&broker, 3).await, [0, 1, 2]);
    assert_eq!(describe(&broker).await.unacked, 3);
    retain(&broker).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queue = describe(&broker).await;
        if queue.unacked == 0 && queue.ready == END - OLD {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deliveries of deleted messages are still counted: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = broker.metrics_text();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("tidelog_queue_unacked{{queue=\"{QUEUE}\"}}")
        ),
        Some(0.0),
        "{metrics}"
    );
    // The member's ack of a dropped delivery: a plain answer naming retention.
    let outcome = ack(&broker, 1).await;
    assert_eq!(outcome.code, Code::NotFound as i32, "{outcome:?}");
    assert!(
        outcome.message.contains("deleted by retention") && outcome.message.contains("36"),
        "{}",
        outcome.message
    );
    assert_eq!(outcome.settled, 0);
    // Its share of the queue is free again and the queue goes on at the log's start.
    assert_eq!(receive(&broker, 2).await, [36, 37]);
    assert_eq!(ack(&broker, 36).await.code, Code::Ok as i32);
    // Every deleted message the queue had not settled counted lost once: the three
    // held, and the 33 never taken.
    let metrics = broker.metrics_text();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("tidelog_queue_lost_to_retention_total{{queue=\"{QUEUE}\"}}")
        ),
        Some(OLD as f64),
        "{metrics}"
    );
}

/// GetDeliveryStatus of an offset retention deleted says so (DELETED, naming the log's
/// start), for a message never delivered and for one held when it was deleted; one
/// the queue acked before keeps its ACKED; an offset past the end is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_of_a_deleted_offset_says_retention_deleted_it() {
    let broker = setup().await;
    assert_eq!(receive(&broker, 2).await, [0, 1]);
    assert_eq!(ack(&broker, 0).await.code, Code::Ok as i32);
    retain(&broker).await;
    for (offset, attempts) in [(1, 1), (5, 0)] {
        let response = status_at(&broker, offset)
            .await
            .unwrap_or_else(|status| panic!("offset {offset}: {status:?}"));
        assert_eq!((response.partition, response.offset), (0, offset));
        let status = queue_status(response);
        assert_eq!(
            status.state(),
            QueueDeliveryState::Deleted,
            "offset {offset}: {status:?}"
        );
        assert_eq!(status.attempts, attempts, "offset {offset}: {status:?}");
        assert!(status.reason.contains("retention"), "{status:?}");
        assert!(status.reason.contains("36"), "{status:?}");
    }
    let acked = queue_status(status_at(&broker, 0).await.unwrap());
    assert_eq!(acked.state(), QueueDeliveryState::Acked, "{acked:?}");
    let past = status_at(&broker, END + 10).await.unwrap_err();
    assert_eq!(past.code(), Code::NotFound, "{past:?}");
    // The live ones are as before.
    let live = queue_status(status_at(&broker, OLD).await.unwrap());
    assert_eq!(live.state(), QueueDeliveryState::Ready, "{live:?}");
}
