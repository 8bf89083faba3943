//! A CRC-damaged batch in one partition of a queue's topic, through the broker: unary
//! Receive and a Consume stream deliver every message before the damage and every
//! message of the other partitions (instead of failing with DATA_LOSS), DescribeQueue
//! and `/metrics` show the stopped partition, and after `tidelog segment repair
//! --force` (broker stopped) and a restart the queue delivers from it again.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request as ConsumeRequest, Settle};
use tidelog_proto::v1::queue_consume_response::Event;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action};
use tidelog_proto::v1::{
    AckLevel, DescribeQueueRequest, Message, PublishRequest, QueueConfig, QueueConsumeRequest,
    QueueDelivery, QueuePartition, ReceiveRequest, SettleRequest, Settlement, TopicConfig,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::{always, batch_positions, create_queue, segment_logs};

const TOPIC: &str = "jobs";
const QUEUE: &str = "work";
/// Partition 0 holds 0..10, the damaged batch 10..20, then 20..25; partitions 1 and 2
/// hold 0..10 each.
const DAMAGED_FIRST: u64 = 10;

async fn publish(broker: &TestBroker, partition: u32, offsets: std::ops::Range<u64>) {
    let acks = broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages: offsets
                .clone()
                .map(|o| Message {
                    value: Bytes::from(format!("p{partition}-{o}")),
                    partition: Some(partition),
                    ..Message::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish")
        .into_inner()
        .acks;
    assert_eq!(acks.first().map(|a| a.offset), Some(offsets.start));
}

fn position(d: &QueueDelivery) -> (u32, u64) {
    let m = d.message.as_ref().unwrap();
    assert_eq!(m.value, format!("p{}-{}", m.partition, m.offset).as_bytes());
    (m.partition, m.offset)
}

fn ack(d: &QueueDelivery) -> Settlement {
    let (partition, offset) = position(d);
    Settlement {
        partition,
        offset,
        attempt: d.attempt,
        action: Some(Action::Ack(Ack {})),
        ..Default::default()
    }
}

fn offsets(partition: u32, range: std::ops::Range<u64>) -> BTreeSet<(u32, u64)> {
    range.map(|o| (partition, o)).collect()
}

/// Unary Receive of at most `max` (waiting up to 1 s), each acked with Settle.
async fn receive_and_ack(client: &mut QueuesClient<Channel>, max: u32) -> Vec<(u32, u64)> {
    let deliveries = client
        .receive(ReceiveRequest {
            queue: QUEUE.into(),
            member: "r".into(),
            max_messages: max,
            max_wait_ms: 1_000,
        })
        .await
        .expect("Receive is not failed by a damaged batch in one partition")
        .into_inner()
        .deliveries;
    if !deliveries.is_empty() {
        let settled = client
            .settle(SettleRequest {
                queue: QUEUE.into(),
                settlements: deliveries.iter().map(ack).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(settled.outcomes.iter().all(|o| o.code == 0), "{settled:?}");
    }
    deliveries.iter().map(position).collect()
}

async fn partitions(client: &mut QueuesClient<Channel>) -> Vec<QueuePartition> {
    client
        .describe_queue(DescribeQueueRequest { name: QUEUE.into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .partitions
}

fn damaged_gauge(broker: &TestBroker) -> Option<f64> {
    metric_value(
        &broker.metrics_text(),
        &format!("tidelog_queue_damaged_partitions{{queue=\"{QUEUE}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_stops_a_queue_on_its_partition_only_until_repaired() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            TOPIC,
            3,
            TopicConfig {
                fsync: always(),
                ..TopicConfig::default()
            },
        )
        .await;
    publish(&broker, 0, 0..DAMAGED_FIRST).await;
    publish(&broker, 0, DAMAGED_FIRST..20).await;
    publish(&broker, 0, 20..25).await;
    publish(&broker, 1, 0..10).await;
    publish(&broker, 2, 0..10).await;
    create_queue(&broker, QUEUE, TOPIC, QueueConfig::default()).await;
    tokio::task::block_in_place(|| broker.stop());
    let logs = segment_logs(&broker.data_dir(), TOPIC, 0);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    let batches = batch_positions(&bytes);
    assert_eq!(batches.len(), 3);
    let (start, length) = batches[1];
    bytes[start + length - 3] ^= 0x04;
    std::fs::write(&logs[0], &bytes).unwrap();
    tokio::task::block_in_place(|| broker.restart());

    // Unary Receive: 12 of the 30 messages that can be read.
    let mut client = QueuesClient::new(broker.channel().await);
    let mut got: Vec<(u32, u64)> = receive_and_ack(&mut client, 12).await;
    assert!(!got.is_empty() && got.len() <= 12, "{got:?}");

    // A Consume stream: the other 18, then what is published to a healthy partition.
    let (tx, rx) = mpsc::channel(16);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: QUEUE.into(),
            client_id: "stream".into(),
            credit: 100,
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut request_id = 0;
    let mut published = false;
    while got.len() < 33 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no more deliveries on the stream; got {got:?}"))
            .expect("Consume is not ended by a damaged batch in one partition")
            .expect("the stream stays open");
        match event.event {
            Some(Event::Deliveries(batch)) => {
                got.extend(batch.deliveries.iter().map(position));
                request_id += 1;
                tx.send(QueueConsumeRequest {
                    request: Some(ConsumeRequest::Settle(Settle {
                        request_id,
                        settlements: batch.deliveries.iter().map(ack).collect(),
                    })),
                })
                .await
                .unwrap();
                tx.send(QueueConsumeRequest {
                    request: Some(ConsumeRequest::Credit(Credit {
                        messages: batch.deliveries.len() as u32,
                    })),
                })
                .await
                .unwrap();
            }
            Some(Event::Settled(settled)) => {
                assert!(settled.outcomes.iter().all(|o| o.code == 0), "{settled:?}");
            }
            _ => {}
        }
        if got.len() == 30 && !published {
            published = true;
            publish(&broker, 1, 10..13).await;
        }
    }
    let mut want = offsets(0, 0..DAMAGED_FIRST);
    want.extend(offsets(1, 0..13));
    want.extend(offsets(2, 0..10));
    let unique: BTreeSet<(u32, u64)> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "delivered twice: {got:?}");
    assert_eq!(unique, want);
    drop(tx);

    // The operator sees where and why partition 0 stopped; the others did not.
    let described = partitions(&mut client).await;
    assert_eq!(
        described[0].damaged_at,
        Some(DAMAGED_FIRST),
        "{described:?}"
    );
    assert!(described[0].damaged_reason.contains("CRC"), "{described:?}");
    assert_eq!(described[0].settled_below, DAMAGED_FIRST);
    assert!(
        described[1..].iter().all(|p| p.damaged_at.is_none()),
        "{described:?}"
    );
    assert_eq!(damaged_gauge(&broker), Some(1.0));
    let log = broker.log();
    assert!(
        log.contains("a damaged batch stops this queue's deliveries"),
        "{log}"
    );
    // Receive still answers, with nothing (the damaged partition waits).
    assert_eq!(receive_and_ack(&mut client, 10).await, vec![]);

    // Repaired with the broker stopped (the log cut at the damage), then restarted:
    // the queue delivers partition 0's new messages, and nothing is damaged.
    tokio::task::block_in_place(|| broker.stop());
    let data = broker.data_dir();
    let output = tidelog_command()
        .args(["segment", "repair", data.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    tokio::task::block_in_place(|| broker.restart());
    publish(&broker, 0, DAMAGED_FIRST..DAMAGED_FIRST + 5).await;
    let mut client = QueuesClient::new(broker.channel().await);
    let got: BTreeSet<(u32, u64)> = receive_and_ack(&mut client, 10).await.into_iter().collect();
    assert_eq!(got, offsets(0, DAMAGED_FIRST..DAMAGED_FIRST + 5));
    let described = partitions(&mut client).await;
    assert!(
        described.iter().all(|p| p.damaged_at.is_none()),
        "{described:?}"
    );
    assert_eq!(damaged_gauge(&broker), Some(0.0));
    broker.stop();
}
