//! Recovery through the real binaries: a partition whose fsynced data was lost on disk
//! is served as unavailable while the rest of the broker serves (issue 12, bug 3),
//! `tidelog segment verify` says the same, and a forced repair brings it back.

use std::path::{Path, PathBuf};

use tidelog_proto::v1::{
    AckLevel, DescribeTopicRequest, FetchRequest, Message, PublishRequest, TopicConfig,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const MESSAGES: u64 = 20;

fn last_segment(data: &Path, partition: u32) -> PathBuf {
    let dir = data.join("topics").join(TOPIC).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

async fn publish(broker: &TestBroker, partition: u32, count: u64) -> Result<(), tonic::Status> {
    let messages = (0..count)
        .map(|i| Message {
            value: format!("p{partition}-{i}").into_bytes().into(),
            partition: Some(partition),
            ..Default::default()
        })
        .collect();
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .map(drop)
}

async fn fetch(broker: &TestBroker, partition: u32) -> Result<u64, tonic::Status> {
    broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: TOPIC.into(),
            partition,
            offset: 0,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().messages.len() as u64)
}

async fn partitions_health(broker: &TestBroker) -> i32 {
    HealthClient::new(broker.channel().await)
        .check(HealthCheckRequest {
            service: "tidelog.partitions".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

fn tidelog(args: &[&str]) -> (i32, String, String) {
    let output = tidelog_command()
        .args(args)
        .output()
        .expect("running tidelog");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_lost_fsynced_data_is_unavailable_and_the_others_serve() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(TOPIC, PARTITIONS, TopicConfig::default())
        .await;
    // Two batches per partition: the damage below takes only the second.
    for partition in 0..PARTITIONS {
        publish(&broker, partition, MESSAGES / 2).await.unwrap();
        publish(&broker, partition, MESSAGES / 2).await.unwrap();
    }
    assert_eq!(
        partitions_health(&broker).await,
        1,
        "SERVING while all opened"
    );
    broker.stop();

    // The disk loses the last 10 bytes of partition 1, which the checkpoint says were
    // fsynced.
    let data = broker.data_dir();
    let log = last_segment(&data, 1);
    let length = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(length - 10)
        .unwrap();

    tokio::task::block_in_place(|| broker.restart());
    // The other partitions serve reads and writes.
    for partition in [0, 2] {
        assert_eq!(fetch(&broker, partition).await.unwrap(), MESSAGES);
        publish(&broker, partition, 1).await.unwrap();
    }
    // Partition 1 refuses both, saying what to do.
    for status in [
        fetch(&broker, 1).await.unwrap_err(),
        publish(&broker, 1, 1).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("tidelog segment repair --force"),
            "{status:?}"
        );
        assert!(
            status.message().contains("data was lost on disk"),
            "{status:?}"
        );
    }
    let described = broker
        .admin()
        .await
        .describe_topic(DescribeTopicRequest { name: TOPIC.into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let flags: Vec<bool> = described.partitions.iter().map(|p| p.unavailable).collect();
    assert_eq!(flags, vec![false, true, false]);
    assert!(
        described.partitions[1]
            .unavailable_reason
            .contains("fsynced before")
    );
    let metrics = broker.metrics_text();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("tidelog_partition_unavailable{{topic=\"{TOPIC}\",partition=\"1\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("tidelog_partition_unavailable{{topic=\"{TOPIC}\",partition=\"0\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(partitions_health(&broker).await, 2, "NOT_SERVING");
    broker.stop();

    // Verify says the same; a forced repair accepts the loss and the partition is back.
    let data_arg = data.to_str().unwrap();
    let (code, stdout, stderr) = tidelog(&["segment", "verify", data_arg, "--json"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let verified: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let opens: Vec<bool> = verified["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["broker_opens"].as_bool().unwrap())
        .collect();
    assert_eq!(opens, vec![true, false, true], "{stdout}");
    assert!(stdout.contains("durable_data"), "{stdout}");
    let (code, stdout, stderr) = tidelog(&["segment", "repair", data_arg, "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    tokio::task::block_in_place(|| broker.restart());
    assert_eq!(fetch(&broker, 1).await.unwrap(), MESSAGES / 2);
    publish(&broker, 1, 1).await.unwrap();
    assert_eq!(partitions_health(&broker).await, 1);
    broker.stop();
}
