//! Delivery receipts through the real broker, with unary Receive and Settle (which name
//! no member, so the receipt is all that names a lease): a queue deleted and created
//! again under its name, and a pattern queue's topic deleted and created again, deliver
//! their new messages at the same partitions, offsets and attempts as the old ones. A
//! settlement that echoes an old delivery's receipt is NOT_FOUND and leaves the new
//! holder's lease alone: the new holder's own acks are OK and the history names it.

use std::time::{Duration, Instant};

use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::{
    CreateQueueRequest, DeleteQueueRequest, DeleteTopicRequest, DeliveryOutcome,
    GetDeliveryHistoryRequest, MessagePosition, QueueDelivery, ReceiveRequest, SettleRequest,
    Settlement, SettlementOutcome, StartPosition, TopicConfig, get_delivery_history_request,
};
use tidelog_tests::TestBroker;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::publish_values;

async fn publish(broker: &TestBroker, topic: &str, prefix: &str, count: usize) {
    let values = (0..count).map(|i| format!("{prefix}{i}").into_bytes());
    publish_values(broker, topic, values.collect()).await;
}

async fn create_queue(broker: &TestBroker, name: &str, topic: &str, pattern: &str) {
    QueuesClient::new(broker.channel().await)
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic: topic.into(),
            topic_pattern: pattern.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            ..Default::default()
        })
        .await
        .expect("create queue");
}

/// `count` deliveries of `queue` leased to `member` by unary Receives.
async fn receive(
    queues: &mut QueuesClient<Channel>,
    queue: &str,
    member: &str,
    count: usize,
) -> Vec<QueueDelivery> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < count && Instant::now() < until {
        got.extend(
            queues
                .receive(ReceiveRequest {
                    queue: queue.into(),
                    member: member.into(),
                    max_messages: (count - got.len()) as u32,
                    max_wait_ms: 200,
                })
                .await
                .expect("receive")
                .into_inner()
                .deliveries,
        );
    }
    assert_eq!(got.len(), count, "{member}: {got:?}");
    got
}

/// Acks each delivery by a unary Settle that echoes its receipt.
async fn ack_all(
    queues: &mut QueuesClient<Channel>,
    queue: &str,
    deliveries: &[QueueDelivery],
) -> Vec<SettlementOutcome> {
    let settlements = deliveries
        .iter()
        .map(|d| {
            let m = d.message.as_ref().unwrap();
            assert!(!d.receipt.is_empty(), "a delivery without a receipt: {d:?}");
            Settlement {
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
                attempt: d.attempt,
                receipt: d.receipt.clone(),
                action: Some(Action::Ack(Ack {})),
                ..Default::default()
            }
        })
        .collect();
    queues
        .settle(SettleRequest {
            queue: queue.into(),
            settlements,
        })
        .await
        .expect("settle")
        .into_inner()
        .outcomes
}

fn positions(deliveries: &[QueueDelivery]) -> Vec<(u32, u64, u32)> {
    deliveries
        .iter()
        .map(|d| {
            let m = d.message.as_ref().unwrap();
            (m.partition, m.offset, d.attempt)
        })
        .collect()
}

/// The old holder acks its deliveries `before` after the queue or topic was created
/// again and `holder` leased the new messages (`after`), at the very same positions and
/// attempts: refused NOT_FOUND (its message says `said`); then the new holder's acks are
/// OK and the history of the new 0:0 names it alone.
async fn the_old_holder_settles_nothing_of_the_new(
    broker: &TestBroker,
    holder: &str,
    queue: &str,
    topic: &str,
    before: &[QueueDelivery],
    after: &[QueueDelivery],
    said: &str,
) {
    assert_eq!(positions(before), positions(after));
    let mut queues = QueuesClient::new(broker.channel().await);
    let outcomes = ack_all(&mut queues, queue, before).await;
    assert_eq!(outcomes.len(), before.len());
    for outcome in &outcomes {
        assert_eq!(outcome.code, Code::NotFound as i32, "{outcome:?}");
        assert!(outcome.message.contains(said), "{outcome:?}");
        assert!(!outcome.message.contains("__pq"), "{outcome:?}");
    }
    let outcomes = ack_all(&mut queues, queue, after).await;
    for outcome in &outcomes {
        assert_eq!(outcome.code, 0, "{outcome:?}");
    }
    let history = MessagesClient::new(broker.channel().await)
        .get_delivery_history(GetDeliveryHistoryRequest {
            topic: topic.into(),
            queue: queue.into(),
            message: Some(get_delivery_history_request::Message::Position(
                MessagePosition {
                    partition: 0,
                    offset: 0,
                },
            )),
        })
        .await
        .expect("history")
        .into_inner();
    let acked: Vec<(u32, String)> = history
        .attempts
        .iter()
        .filter(|a| a.outcome == DeliveryOutcome::Acked as i32)
        .map(|a| (a.attempt, a.member.clone()))
        .collect();
    assert_eq!(acked, [(1, format!("receive:{holder}"))], "{history:?}");
}

#[tokio::test]
async fn an_old_receipt_of_a_pattern_queue_topic_created_again_settles_nothing() {
    let broker = TestBroker::start();
    broker.create_topic("p.a", 1, TopicConfig::default()).await;
    create_queue(&broker, "q", "", r"p\..*").await;
    publish(&broker, "p.a", "old", 5).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let old = receive(&mut queues, "q", "A", 5).await;
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest { name: "p.a".into() })
        .await
        .unwrap();
    broker.create_topic("p.a", 1, TopicConfig::default()).await;
    publish(&broker, "p.a", "new", 5).await;
    let new = receive(&mut queues, "q", "B", 5).await;
    assert!(
        new.iter()
            .all(|d| d.message.as_ref().unwrap().value.starts_with(b"new")),
        "{new:?}"
    );
    the_old_holder_settles_nothing_of_the_new(
        &broker,
        "B",
        "q",
        "p.a",
        &old,
        &new,
        "topic \"p.a\" in queue \"q\"",
    )
    .await;
}

#[tokio::test]
async fn an_old_receipt_of_a_queue_created_again_settles_nothing() {
    let broker = TestBroker::start();
    broker.create_topic("work", 1, TopicConfig::default()).await;
    create_queue(&broker, "q", "work", "").await;
    publish(&broker, "work", "m", 3).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let old = receive(&mut queues, "q", "A", 3).await;
    queues
        .delete_queue(DeleteQueueRequest { name: "q".into() })
        .await
        .unwrap();
    create_queue(&broker, "q", "work", "").await;
    let new = receive(&mut queues, "q", "B", 3).await;
    the_old_holder_settles_nothing_of_the_new(&broker, "B", "q", "work", &old, &new, "queue \"q\"")
        .await;
}

/// The same member name on both sides: only the receipt's queue tells the leases apart.
#[tokio::test]
async fn an_old_receipt_of_the_same_member_name_settles_nothing_of_a_queue_created_again() {
    let broker = TestBroker::start();
    broker.create_topic("work", 1, TopicConfig::default()).await;
    create_queue(&broker, "q", "work", "").await;
    publish(&broker, "work", "m", 3).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let old = receive(&mut queues, "q", "w", 3).await;
    queues
        .delete_queue(DeleteQueueRequest { name: "q".into() })
        .await
        .unwrap();
    create_queue(&broker, "q", "work", "").await;
    let new = receive(&mut queues, "q", "w", 3).await;
    the_old_holder_settles_nothing_of_the_new(&broker, "w", "q", "work", &old, &new, "queue \"q\"")
        .await;
}
