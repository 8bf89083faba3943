//! Deleting queues and topics while workers receive and settle (hunt 7b findings 5
//! and 6): every delete is answered OK, the deleted queue's history directory is gone
//! when the answer comes, a queue created again under the name never lists the old
//! queue's events, and the deleted queue's ack-latency histogram goes with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, Nack};
use tidelog_proto::v1::{
    DeleteQueueRequest, DeleteTopicRequest, ListDeliveriesRequest, QueueConfig, ReceiveRequest,
    SettleRequest, Settlement, TopicConfig,
};
use tidelog_tests::{TestBroker, now_ms};

use crate::support::{create_queue, publish_values};

async fn publish(broker: &TestBroker, topic: &str, count: usize) {
    let values = (0..count).map(|i| format!("m{i}").into_bytes());
    publish_values(broker, topic, values.collect()).await;
}

/// Receives from queue `work` and nacks (due again at once) until `stop`.
async fn worker(broker: &TestBroker, stop: Arc<AtomicBool>) {
    let mut client = QueuesClient::new(broker.channel().await);
    while !stop.load(Ordering::Relaxed) {
        let Ok(received) = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "w".into(),
                max_messages: 5,
                max_wait_ms: 20,
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let deliveries = received.into_inner().deliveries;
        if deliveries.is_empty() {
            continue;
        }
        let settlements = deliveries
            .iter()
            .map(|d| {
                let m = d.message.as_ref().unwrap();
                Settlement {
                    partition: m.partition,
                    offset: m.offset,
                    attempt: d.attempt,
                    action: Some(Action::Nack(Nack {
                        delay_ms: Some(0),
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            })
            .collect();
        let _ = client
            .settle(SettleRequest {
                queue: "work".into(),
                settlements,
            })
            .await;
    }
}

fn queue_config() -> QueueConfig {
    QueueConfig {
        max_deliveries: Some(0),
        ..Default::default()
    }
}

/// Waits until queue `work` has recorded `at_least` delivery events; returns the
/// events older than `since_ms`.
async fn worked(
    client: &mut QueuesClient<tonic::transport::Channel>,
    at_least: usize,
    since_ms: i64,
) -> usize {
    loop {
        let listed = client
            .list_deliveries(ListDeliveriesRequest {
                queue: "work".into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if listed.len() >= at_least {
            return listed.iter().filter(|e| e.at_ms < since_ms).count();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_racing_workers_stand_and_a_new_queue_of_the_name_lists_no_old_history() {
    let broker = Arc::new(TestBroker::start());
    let history = broker.data_dir().join("state/history/work");
    let mut client = QueuesClient::new(broker.channel().await);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (broker, stop) = (broker.clone(), stop.clone());
            tokio::spawn(async move { worker(&broker, stop).await })
        })
        .collect();

    // DeleteQueue, each while the workers settle.
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 2000).await;
    for cycle in 0..15 {
        let created_ms = now_ms();
        create_queue(&broker, "work", "jobs", queue_config()).await;
        let old = worked(&mut client, 40, created_ms).await;
        assert_eq!(
            old, 0,
            "cycle {cycle}: the new queue lists the deleted queue's events"
        );
        client
            .delete_queue(DeleteQueueRequest {
                name: "work".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: DeleteQueue: {e:?}"));
        assert!(
            !history.exists(),
            "cycle {cycle}: the history directory is left"
        );
    }

    // DeleteTopic of the queue's topic, each while the workers settle.
    for cycle in 0..10 {
        let topic = format!("t{cycle}");
        broker.create_topic(&topic, 1, TopicConfig::default()).await;
        publish(&broker, &topic, 500).await;
        let created_ms = now_ms();
        create_queue(&broker, "work", &topic, queue_config()).await;
        assert_eq!(
            worked(&mut client, 40, created_ms).await,
            0,
            "cycle {cycle}"
        );
        broker
            .admin()
            .await
            .delete_topic(DeleteTopicRequest {
                name: topic.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: DeleteTopic: {e:?}"));
        assert!(
            !history.exists(),
            "cycle {cycle}: the history directory is left"
        );
        let trash: Vec<_> = std::fs::read_dir(broker.data_dir().join("trash"))
            .unwrap()
            .collect();
        assert!(
            trash.is_empty(),
            "cycle {cycle}: left in the trash: {trash:?}"
        );
        let metrics = broker.metrics_text();
        let named = format!("topic=\"{topic}\"");
        assert!(
            !metrics.lines().any(|l| l.contains(&named)),
            "cycle {cycle}: series of the deleted topic stay"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
}

#[tokio::test]
async fn a_deleted_queue_takes_its_ack_latency_histogram_with_it() {
    let broker = TestBroker::start();
    let mut client = QueuesClient::new(broker.channel().await);
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 3).await;
    let series = |metrics: &str| {
        metrics
            .lines()
            .filter(|l| l.contains("queue=\"work\""))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for round in 0..2 {
        create_queue(&broker, "work", "jobs", QueueConfig::default()).await;
        let metrics = broker.metrics_text();
        assert!(
            !metrics.contains("tidelog_queue_ack_latency_seconds_count{queue=\"work\"}"),
            "round {round}: a new queue has an ack-latency histogram before any ack"
        );
        let got = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "m".into(),
                max_messages: 3,
                max_wait_ms: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(got.len(), 3);
        client
            .settle(SettleRequest {
                queue: "work".into(),
                settlements: got
                    .iter()
                    .map(|d| {
                        let m = d.message.as_ref().unwrap();
                        Settlement {
                            partition: m.partition,
                            offset: m.offset,
                            attempt: d.attempt,
                            action: Some(Action::Ack(Ack::default())),
                            ..Default::default()
                        }
                    })
                    .collect(),
            })
            .await
            .unwrap();
        assert_eq!(
            tidelog_tests::metric_value(
                &broker.metrics_text(),
                "tidelog_queue_ack_latency_seconds_count{queue=\"work\"}"
            ),
            Some(3.0),
            "round {round}"
        );
        client
            .delete_queue(DeleteQueueRequest {
                name: "work".into(),
            })
            .await
            .unwrap();
        let left = series(&broker.metrics_text());
        assert!(
            left.is_empty(),
            "round {round}: series of the deleted queue stay: {left:?}"
        );
    }
}
