//! Recovery through the real binaries: a partition whose fsynced data was lost on disk
//! is served as unavailable while the rest of the broker serves (issue 12, bug 3),
//! `tidelog segment verify` says the same, and a forced repair brings it back.

use std::path::{Path, PathBuf};

use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::reset_offsets_request::{
    AllTopics, ExplicitOffsets, Scope, Spec, ToCurrent, ToEarliest, ToLatest, TopicScope,
};
use tidelog_proto::v1::{
    AckLevel, CommitOffsetsRequest, CreateQueueRequest, DescribeGroupRequest, DescribeQueueRequest,
    DescribeTopicRequest, FetchOffsetsRequest, FetchRequest, ListTopicsRequest, Message,
    PublishRequest, ReceiveRequest, ResetOffsetsRequest, StartPosition, TopicConfig,
    TopicPartitionOffset, start_position,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};

use crate::cli::{cli, cli_with_input};
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

/// The partition's status, as a request touching it must fail: UNAVAILABLE naming the
/// partition and what to do.
fn assert_refused_for_repair(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status
            .message()
            .contains(&format!("{TOPIC}/1 is unavailable")),
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("tidelog segment repair --force"),
        "{what}: {status:?}"
    );
}

async fn committed_offsets(broker: &TestBroker, group: &str) -> Vec<(u32, u64)> {
    let mut offsets: Vec<(u32, u64)> = broker
        .groups()
        .await
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.into(),
            topic: None,
        })
        .await
        .unwrap()
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    offsets.sort_unstable();
    offsets
}

fn reset_request(scope: Option<Scope>, spec: Spec, execute: bool) -> ResetOffsetsRequest {
    ResetOffsetsRequest {
        group_id: "billing".into(),
        scope,
        spec: Some(spec),
        execute,
    }
}

/// An unavailable partition has no positions: nothing takes one from it as if it were
/// empty at offset 0. Resets touching it (every mode, the CLI's export included) and
/// commits to it are refused whole, a queue cannot start on its topic, descriptions
/// and gauges show it as unavailable instead of 0, and the CLI says so (consume exits
/// 1 naming it, produce reports the broker's refusal at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_partition_gives_no_positions_to_act_on() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(TOPIC, PARTITIONS, TopicConfig::default())
        .await;
    for partition in 0..PARTITIONS {
        publish(&broker, partition, MESSAGES / 2).await.unwrap();
        publish(&broker, partition, MESSAGES / 2).await.unwrap();
    }
    let commit = |partition| TopicPartitionOffset {
        topic: TOPIC.into(),
        partition,
        offset: 15,
        metadata: String::new(),
        topic_id: 0,
    };
    broker
        .groups()
        .await
        .commit_offsets(CommitOffsetsRequest {
            group_id: "billing".into(),
            offsets: (0..PARTITIONS).map(commit).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A queue from the earliest, made before the damage.
    QueuesClient::new(broker.channel().await)
        .create_queue(CreateQueueRequest {
            name: "existing".into(),
            topic: TOPIC.into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    broker.stop();
    let log = last_segment(&broker.data_dir(), 1);
    let length = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(length - 10)
        .unwrap();
    tokio::task::block_in_place(|| broker.restart());
    let all_commits = vec![(0, 15), (1, 15), (2, 15)];

    // Resets that touch it are refused whole, dry run or not; nothing is written.
    let topic_scope = |partitions: Vec<u32>| {
        Some(Scope::Topic(TopicScope {
            topic: TOPIC.into(),
            partitions,
        }))
    };
    for (what, request) in [
        (
            "to_current over all topics",
            reset_request(
                Some(Scope::AllTopics(AllTopics {})),
                Spec::ToCurrent(ToCurrent {}),
                false,
            ),
        ),
        (
            "to_earliest over the topic, executed",
            reset_request(topic_scope(vec![]), Spec::ToEarliest(ToEarliest {}), true),
        ),
        (
            "to_latest on the partition, executed",
            reset_request(topic_scope(vec![1]), Spec::ToLatest(ToLatest {}), true),
        ),
        (
            "an explicit offset, executed",
            reset_request(
                None,
                Spec::Explicit(ExplicitOffsets {
                    offsets: vec![commit(1)],
                }),
                true,
            ),
        ),
    ] {
        let status = broker
            .groups()
            .await
            .reset_offsets(request)
            .await
            .unwrap_err();
        assert_refused_for_repair(&status, what);
        assert_eq!(committed_offsets(&broker, "billing").await, all_commits);
    }
    // A commit to it is refused too.
    let status = broker
        .groups()
        .await
        .commit_offsets(CommitOffsetsRequest {
            group_id: "billing".into(),
            offsets: vec![commit(1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused_for_repair(&status, "CommitOffsets");
    // A reset that does not touch it goes through.
    let response = broker
        .groups()
        .await
        .reset_offsets(reset_request(
            topic_scope(vec![0, 2]),
            Spec::ToCurrent(ToCurrent {}),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    let moved: Vec<(u32, u64)> = response
        .changes
        .iter()
        .map(|c| (c.partition, c.new_offset))
        .collect();
    assert_eq!(moved, vec![(0, 15), (2, 15)]);

    // A queue cannot start on the topic: where partition 1 ends is unknown.
    let mut queues = QueuesClient::new(broker.channel().await);
    let status = queues
        .create_queue(CreateQueueRequest {
            name: "jobs".into(),
            topic: TOPIC.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused_for_repair(&status, "CreateQueue from latest");
    let status = queues
        .describe_queue(DescribeQueueRequest {
            name: "jobs".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // A queue made before lists it as unavailable, and counts the others only.
    let existing = queues
        .describe_queue(DescribeQueueRequest {
            name: "existing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    let listed: Vec<(u32, u64, bool)> = existing
        .partitions
        .iter()
        .map(|p| (p.partition, p.end_offset, p.unavailable))
        .collect();
    assert_eq!(
        listed,
        vec![(0, MESSAGES, false), (1, 0, true), (2, MESSAGES, false)]
    );
    assert_eq!(existing.ready, 2 * MESSAGES, "{existing:?}");
    assert!(
        existing.partitions[1]
            .unavailable_reason
            .contains("tidelog segment repair"),
        "{existing:?}"
    );
    // It delivers the other partitions' messages, each once, none of the refused one's.
    let mut delivered: Vec<(u32, u64)> = Vec::new();
    while delivered.len() < (2 * MESSAGES) as usize {
        let deliveries = queues
            .receive(ReceiveRequest {
                queue: "existing".into(),
                member: "m".into(),
                max_messages: 100,
                max_wait_ms: 2_000,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert!(!deliveries.is_empty(), "delivered so far: {delivered:?}");
        delivered.extend(deliveries.iter().map(|d| {
            let message = d.message.as_ref().unwrap();
            (message.partition, message.offset)
        }));
    }
    delivered.sort_unstable();
    let expected: Vec<(u32, u64)> = [0, 2]
        .into_iter()
        .flat_map(|p| (0..MESSAGES).map(move |o| (p, o)))
        .collect();
    assert_eq!(delivered, expected);
    let queue_text = cli(&broker, &["queue", "describe", "existing"]).ok("queue describe");
    assert!(
        queue_text
            .stdout
            .contains("unavailable: partition 1 of topic \"orders\""),
        "{}",
        queue_text.stdout
    );

    // The group's description shows it unavailable, with its commit and no lag.
    let group = broker
        .groups()
        .await
        .describe_group(DescribeGroupRequest {
            group_id: "billing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let lags: Vec<(u32, Option<u64>, Option<u64>, bool)> = group
        .lags
        .iter()
        .map(|l| (l.partition, l.committed_offset, l.lag, l.unavailable))
        .collect();
    assert_eq!(
        lags,
        vec![
            (0, Some(15), Some(5), false),
            (1, Some(15), None, true),
            (2, Some(15), Some(5), false),
        ]
    );
    assert!(
        group.lags[1]
            .unavailable_reason
            .contains("tidelog segment repair"),
        "{group:?}"
    );
    // Its gauges are left out rather than 0.
    let metrics = broker.metrics_text();
    for gauge in [
        "tidelog_partition_end_offset",
        "tidelog_partition_log_start_offset",
        "tidelog_partition_size_bytes",
    ] {
        let labels = |p: u32| format!("{gauge}{{topic=\"{TOPIC}\",partition=\"{p}\"}}");
        assert_eq!(metric_value(&metrics, &labels(1)), None, "{metrics}");
        assert!(metric_value(&metrics, &labels(0)).is_some(), "{metrics}");
    }
    let lag = |p: u32| {
        format!(
            "tidelog_consumer_group_lag{{group=\"billing\",topic=\"{TOPIC}\",partition=\"{p}\"}}"
        )
    };
    assert_eq!(metric_value(&metrics, &lag(0)), Some(5.0), "{metrics}");
    assert_eq!(metric_value(&metrics, &lag(1)), None, "{metrics}");
    // ListTopics counts it apart from the size.
    let topics = broker
        .admin()
        .await
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(topics[0].unavailable_partitions, 1, "{topics:?}");

    // The CLI: describe says unavailable, with the reason, in text and JSON.
    let described = cli(&broker, &["topic", "describe", TOPIC, "--json"])
        .ok("topic describe --json")
        .json();
    let partition = &described["partitions"][1];
    assert_eq!(partition["unavailable"], true, "{described}");
    assert!(partition["end_offset"].is_null(), "{described}");
    assert!(
        partition["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("recovery refused"),
        "{described}"
    );
    let text = cli(&broker, &["topic", "describe", TOPIC]).ok("topic describe");
    assert!(
        text.stdout.contains("unavailable: partition orders/1"),
        "{}",
        text.stdout
    );
    let listed = cli(&broker, &["topic", "list"]).ok("topic list");
    assert!(
        listed.stdout.contains("+ 1 unavailable partition"),
        "{}",
        listed.stdout
    );
    let group_text = cli(&broker, &["group", "describe", "billing"]).ok("group describe");
    assert!(
        group_text.stdout.contains("unavailable: orders/1"),
        "{}",
        group_text.stdout
    );
    // The export of the save/restore workflow is refused: it would save 0 for it.
    let export = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            "billing",
            "--all-topics",
            "--to-current",
            "--export",
        ],
    );
    assert_eq!(export.code, 1, "{export:?}");
    assert!(
        export.stderr.contains("orders/1 is unavailable"),
        "{export:?}"
    );
    assert_eq!(export.stdout, "", "{export:?}");
    // Consume reads the others, names the one it could not read, and exits 1.
    let consumed = cli(&broker, &["consume", TOPIC]);
    assert_eq!(consumed.code, 1, "{consumed:?}");
    assert_eq!(
        consumed.stdout.lines().count() as u64,
        2 * MESSAGES,
        "{consumed:?}"
    );
    assert!(consumed.stderr.contains("orders/1"), "{consumed:?}");
    assert!(
        consumed.stderr.contains(
            "partition 1 of topic \"orders\" was not read: partition orders/1 is unavailable"
        ),
        "{consumed:?}"
    );
    let consumed = cli(&broker, &["consume", TOPIC, "--partition", "1"]);
    assert_eq!(consumed.code, 1, "{consumed:?}");
    assert_eq!(consumed.stdout, "", "{consumed:?}");
    // Produce reports the broker's answer at once: refused, nothing stored.
    let started = std::time::Instant::now();
    let produced = cli_with_input(&broker, &["produce", TOPIC, "--partition", "1"], b"x\n");
    assert_eq!(produced.code, 1, "{produced:?}");
    assert!(
        produced.stderr.contains("nothing was stored"),
        "{produced:?}"
    );
    assert!(!produced.stderr.contains("outcome unknown"), "{produced:?}");
    assert!(
        produced.stderr.contains("tidelog segment repair --force"),
        "{produced:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "produce retried a refusal for {:?}",
        started.elapsed()
    );
    broker.stop();

    // After the repair, the group's commit is where it was.
    let data = broker.data_dir();
    let (code, stdout, stderr) = tidelog(&["segment", "repair", data.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    tokio::task::block_in_place(|| broker.restart());
    assert_eq!(committed_offsets(&broker, "billing").await, all_commits);
    broker.stop();
}
