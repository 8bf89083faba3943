//! Topic patterns through the real broker (issue 15 item 1, Subscribe part): a
//! pattern stream reads every matching topic, names each message's topic, picks up a
//! topic created while it runs within a second, drops a deleted one and goes on, waits
//! when nothing matches yet, combines with a filter; abusive or malformed patterns get
//! INVALID_ARGUMENT at once; the CLI's `consume --topic-pattern`.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, DeleteTopicRequest, GroupMembership, Header, Message, PublishRequest, StartPosition,
    SubscribeRequest, SubscribeResponse, TopicConfig, TopicsChanged,
};
use tidelog_tests::{TestBroker, tidelog_command};
use tonic::{Code, Streaming};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The API promises new and deleted topics are seen within 1 second.
const PICKUP_MAX: Duration = Duration::from_secs(1);

async fn publish(broker: &TestBroker, topic: &str, partition: u32, values: &[&str]) {
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            ack: AckLevel::Durable as i32,
            messages: values
                .iter()
                .map(|v| Message {
                    partition: Some(partition),
                    value: v.to_string().into(),
                    headers: vec![Header {
                        key: "kind".into(),
                        value: if v.starts_with("keep") {
                            "keep"
                        } else {
                            "drop"
                        }
                        .into(),
                    }],
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("publish");
}

async fn subscribe(
    broker: &TestBroker,
    pattern: &str,
    filter: &str,
) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
    broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic_pattern: pattern.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Event {
    tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("the stream did not end")
        .event
        .expect("an event")
}

/// Reads until `count` messages arrived: (topic, partition, value) of each, and the
/// TopicsChanged events seen on the way. Positions must name a topic too.
async fn messages(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> (Vec<(String, u32, String)>, Vec<TopicsChanged>) {
    let mut got = Vec::new();
    let mut changes = Vec::new();
    while got.len() < count {
        match next_event(stream).await {
            Event::Batch(batch) => {
                for p in &batch.positions {
                    assert!(!p.topic.is_empty(), "a position without its topic: {p:?}");
                }
                for m in batch.messages {
                    got.push((
                        m.topic,
                        m.partition,
                        String::from_utf8_lossy(&m.value).into_owned(),
                    ));
                }
            }
            Event::TopicsChanged(changed) => changes.push(changed),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, changes)
}

/// The next TopicsChanged, skipping batches (none expected meanwhile).
async fn next_change(stream: &mut Streaming<SubscribeResponse>) -> TopicsChanged {
    match next_event(stream).await {
        Event::TopicsChanged(changed) => changed,
        other => panic!("expected TopicsChanged, got {other:?}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_pattern_stream_follows_topics_as_they_come_and_go() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders.eu", 2, TopicConfig::default())
        .await;
    broker
        .create_topic("payments", 1, TopicConfig::default())
        .await;
    // Matches `orders\..*` only in part: the pattern is anchored.
    broker
        .create_topic("old-orders.eu", 1, TopicConfig::default())
        .await;
    publish(&broker, "orders.eu", 0, &["keep eu-0", "drop eu-0"]).await;
    publish(&broker, "orders.eu", 1, &["keep eu-1"]).await;
    publish(&broker, "payments", 0, &["keep pay"]).await;
    publish(&broker, "old-orders.eu", 0, &["keep old"]).await;

    let mut stream = subscribe(&broker, r"orders\..*", "")
        .await
        .expect("subscribe");
    let first = next_change(&mut stream).await;
    assert_eq!(first.added, names(&["orders.eu"]));
    assert_eq!(first.topics, names(&["orders.eu"]));
    assert!(first.removed.is_empty());
    let (got, changes) = messages(&mut stream, 3).await;
    assert!(changes.is_empty(), "{changes:?}");
    let got: BTreeSet<_> = got.into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from([
            ("orders.eu".to_string(), 0, "keep eu-0".to_string()),
            ("orders.eu".to_string(), 0, "drop eu-0".to_string()),
            ("orders.eu".to_string(), 1, "keep eu-1".to_string()),
        ])
    );

    // A topic created while the stream runs: picked up within a second, read from its
    // start (the message published right after the create is not missed).
    let created = Instant::now();
    broker
        .create_topic("orders.us", 3, TopicConfig::default())
        .await;
    publish(&broker, "orders.us", 2, &["keep us-2"]).await;
    let changed = next_change(&mut stream).await;
    let seen_after = created.elapsed();
    assert_eq!(changed.added, names(&["orders.us"]));
    assert_eq!(changed.topics, names(&["orders.eu", "orders.us"]));
    assert!(
        seen_after <= PICKUP_MAX,
        "new topic seen after {seen_after:?}"
    );
    let (got, _) = messages(&mut stream, 1).await;
    assert_eq!(
        got,
        vec![("orders.us".to_string(), 2, "keep us-2".to_string())]
    );

    // A deleted topic drops out; the stream goes on with the others.
    let deleted = Instant::now();
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest {
            name: "orders.eu".into(),
        })
        .await
        .expect("delete");
    let changed = next_change(&mut stream).await;
    let seen_after = deleted.elapsed();
    assert_eq!(changed.removed, names(&["orders.eu"]));
    assert!(changed.added.is_empty());
    assert_eq!(changed.topics, names(&["orders.us"]));
    assert!(
        seen_after <= PICKUP_MAX,
        "deletion seen after {seen_after:?}"
    );
    publish(&broker, "orders.us", 0, &["keep us-0"]).await;
    let (got, _) = messages(&mut stream, 1).await;
    assert_eq!(
        got,
        vec![("orders.us".to_string(), 0, "keep us-0".to_string())]
    );

    // Created again under the same name: back, from its (new) start.
    broker
        .create_topic("orders.eu", 1, TopicConfig::default())
        .await;
    publish(&broker, "orders.eu", 0, &["keep eu again"]).await;
    let (got, changes) = messages(&mut stream, 1).await;
    assert_eq!(
        got,
        vec![("orders.eu".to_string(), 0, "keep eu again".to_string())]
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].added, names(&["orders.eu"]));
}

#[tokio::test]
async fn a_pattern_that_matches_nothing_waits_and_filters_apply() {
    let broker = TestBroker::start();
    let mut stream = subscribe(&broker, r"audit-[0-9]+", r#"header.kind == "keep""#)
        .await
        .expect("a pattern matching nothing is allowed");
    let first = next_change(&mut stream).await;
    assert!(
        first.added.is_empty() && first.topics.is_empty(),
        "{first:?}"
    );
    broker
        .create_topic("audit-x", 1, TopicConfig::default())
        .await;
    broker
        .create_topic("audit-7", 1, TopicConfig::default())
        .await;
    publish(
        &broker,
        "audit-7",
        0,
        &["drop 1", "keep 2", "drop 3", "keep 4"],
    )
    .await;
    publish(&broker, "audit-x", 0, &["keep never"]).await;
    let changed = next_change(&mut stream).await;
    assert_eq!(changed.added, names(&["audit-7"]));
    let (got, _) = messages(&mut stream, 2).await;
    let values: Vec<&str> = got.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(values, vec!["keep 2", "keep 4"]);
    assert!(got.iter().all(|(t, _, _)| t == "audit-7"));
}

#[tokio::test]
async fn bad_and_abusive_patterns_are_invalid_argument_at_once() {
    let broker = TestBroker::start();
    broker.create_topic("t", 1, TopicConfig::default()).await;
    let long = "a".repeat(2000);
    for (pattern, expected) in [
        (r"(\w{100}){100}", "too complex"),
        ("((a{100}){100}){100}", "too complex"),
        ("(", "not a valid regular expression"),
        ("a)|(b", "not a valid regular expression"),
        (long.as_str(), "bytes long"),
    ] {
        let started = Instant::now();
        let status = subscribe(&broker, pattern, "").await.expect_err(pattern);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{pattern}: slow"
        );
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{pattern}: {status:?}"
        );
        assert!(status.message().contains("topic_pattern"), "{status:?}");
        assert!(status.message().contains(expected), "{pattern}: {status:?}");
    }
    let mut consumer = broker.consumer().await;
    for (request, expected) in [
        (
            SubscribeRequest {
                topic: "t".into(),
                topic_pattern: "t".into(),
                ..Default::default()
            },
            "not both",
        ),
        (
            SubscribeRequest {
                topic_pattern: "t".into(),
                partitions: vec![0],
                ..Default::default()
            },
            "leave partitions",
        ),
        (
            SubscribeRequest {
                topic_pattern: "t".into(),
                partitions: vec![0],
                group: Some(GroupMembership {
                    group_id: "g".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "must be unset with a group",
        ),
        (
            SubscribeRequest::default(),
            "set topic (a topic's name) or topic_pattern",
        ),
        (
            SubscribeRequest {
                topic_pattern: "t".into(),
                partition_starts: vec![PartitionStart {
                    partition: 0,
                    offset: 0,
                    topic: "other".into(),
                    topic_id: 0,
                }],
                ..Default::default()
            },
            "does not match topic \"other\"",
        ),
    ] {
        let status = consumer.subscribe(request).await.expect_err(expected);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // The broker is still quick after all that.
    let mut stream = subscribe(&broker, "t", "").await.expect("subscribe");
    assert_eq!(next_change(&mut stream).await.topics, names(&["t"]));
}

#[tokio::test]
async fn cli_consume_topic_pattern_prints_each_messages_topic() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders.eu", 1, TopicConfig::default())
        .await;
    broker
        .create_topic("orders.us", 1, TopicConfig::default())
        .await;
    broker
        .create_topic("other", 1, TopicConfig::default())
        .await;
    publish(&broker, "orders.eu", 0, &["keep a"]).await;
    publish(&broker, "orders.us", 0, &["keep b"]).await;
    publish(&broker, "other", 0, &["keep c"]).await;
    let output = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "--json",
            "consume",
            "--topic-pattern",
            r"orders\..*",
            "-n",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run tidelog");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let mut seen: Vec<(String, String)> = stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect(line);
            (
                v["topic"].as_str().expect("topic").to_string(),
                v["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("orders.eu".to_string(), "keep a".to_string()),
            ("orders.us".to_string(), "keep b".to_string())
        ]
    );
    // Human form: the topic leads each line with --print-meta; a bad pattern is a
    // usage error naming the flag.
    let output = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "consume",
            "--topic-pattern",
            "(",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run tidelog");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--topic-pattern"), "{stderr}");
}
