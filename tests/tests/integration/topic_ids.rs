//! Topic ids (Kafka's): a topic deleted and created again under its name is another
//! topic, and a consumer that saved positions with the id they were read in is never
//! served the new topic from them. A resumed Subscribe (one topic, or a pattern) reads
//! the new topic from its start and says so (RESET_REASON_TOPIC_RECREATED); Fetch and
//! FetchBatches refuse an offset of the old topic; tidelog-client's `Subscription`
//! sends the ids on its reconnects, so nothing of the new topic is skipped across a
//! broker restart; the CLI shows the id. Written from the .proto, with raw tonic
//! clients, as a client in any language would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidelog_client::{
    Client, Event as ClientEvent, ResetReason as ClientReason, StartAt, SubscribeOptions,
    Subscription,
};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    DeleteTopicRequest, FetchRequest, PartitionPosition, PositionReset, ResetPolicy, ResetReason,
    StartPosition, SubscribeRequest, SubscribeResponse, TopicConfig,
};
use tidelog_tests::{TestBroker, metric_value};
use tokio::time::timeout;
use tonic::{Code, Streaming};

use crate::cli::cli;
use crate::support::{next_event, publish_values, subscribe};

const WAIT: Duration = Duration::from_secs(30);

fn values(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| format!("{prefix} {n}").into_bytes())
        .collect()
}

async fn recreate(broker: &TestBroker, topic: &str, partitions: u32) -> u64 {
    let before = broker.describe_topic(topic).await.topic_id;
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest { name: topic.into() })
        .await
        .expect("DeleteTopic");
    broker
        .create_topic(topic, partitions, TopicConfig::default())
        .await;
    let after = broker.describe_topic(topic).await.topic_id;
    assert_ne!(after, 0, "a topic always has an id");
    assert_ne!(after, before, "a topic created again is another topic");
    after
}

/// Reads a plain stream until every listed partition reached `ends`; returns the last
/// position of each (what a client saves to resume) and the values read.
async fn read_to_the_end(
    stream: &mut Streaming<SubscribeResponse>,
    ends: &BTreeMap<(String, u32), u64>,
) -> (BTreeMap<(String, u32), PartitionPosition>, Vec<String>) {
    let mut positions = BTreeMap::new();
    let mut values = Vec::new();
    while ends.iter().any(|(key, end)| {
        positions
            .get(key)
            .is_none_or(|p: &PartitionPosition| p.next_offset < *end)
    }) {
        match next_event(stream)
            .await
            .expect("stream open")
            .expect("an event")
        {
            Event::Batch(batch) => {
                values.extend(
                    batch
                        .messages
                        .iter()
                        .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
                );
                for position in batch.positions {
                    positions.insert((position.topic.clone(), position.partition), position);
                }
            }
            Event::Positioned(positioned) => {
                for position in positioned.positions {
                    positions.insert((position.topic.clone(), position.partition), position);
                }
            }
            Event::TopicsChanged(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (positions, values)
}

fn earliest() -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::Earliest(Earliest {})),
    })
}

#[tokio::test]
async fn a_resume_with_the_id_of_a_deleted_topic_reads_the_new_topic_from_its_start() {
    let broker = TestBroker::start();
    broker.create_topic("ids", 2, TopicConfig::default()).await;
    let old_id = broker.describe_topic("ids").await.topic_id;
    assert_ne!(old_id, 0);
    publish_values(&broker, "ids", values("old", 40)).await;
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "ids".into(),
            start: earliest(),
            send_positioned: true,
            ..Default::default()
        },
    )
    .await;
    let ends = BTreeMap::from([((String::new(), 0), 20), ((String::new(), 1), 20)]);
    let (saved, _) = read_to_the_end(&mut stream, &ends).await;
    drop(stream);
    assert!(
        saved.values().all(|p| p.topic_id == old_id),
        "every position names the topic's id: {saved:?}"
    );

    // Deleted and created again, with one partition and more messages than were read.
    let new_id = recreate(&broker, "ids", 1).await;
    publish_values(&broker, "ids", values("new", 50)).await;
    let starts = |id: u64| -> Vec<PartitionStart> {
        saved
            .values()
            .map(|p| PartitionStart {
                partition: p.partition,
                offset: p.next_offset,
                topic: String::new(),
                topic_id: id,
            })
            .collect()
    };

    // Whatever the reset policy: every message of the new topic is new to the stream.
    for policy in [
        ResetPolicy::Earliest,
        ResetPolicy::Latest,
        ResetPolicy::Error,
    ] {
        let mut stream = subscribe(
            &broker,
            SubscribeRequest {
                topic: "ids".into(),
                partition_starts: starts(old_id),
                follow_partitions_from: Some(2),
                send_positioned: true,
                reset_policy: policy as i32,
                ..Default::default()
            },
        )
        .await;
        match next_event(&mut stream).await.unwrap().unwrap() {
            Event::Positioned(p) => assert_eq!(
                p.positions,
                vec![PartitionPosition {
                    partition: 0,
                    next_offset: 0,
                    end_offset: 50,
                    topic: String::new(),
                    topic_id: new_id,
                }],
                "{policy:?}: partition 1 is not in the new topic"
            ),
            other => panic!("{policy:?}: expected Positioned, got {other:?}"),
        }
        match next_event(&mut stream).await.unwrap().unwrap() {
            Event::PositionReset(reset) => assert_eq!(
                reset,
                PositionReset {
                    partition: 0,
                    from_offset: Some(20),
                    to_offset: 0,
                    reason: ResetReason::TopicRecreated as i32,
                    topic: String::new(),
                    topic_id: new_id,
                },
                "{policy:?}"
            ),
            other => panic!("{policy:?}: expected the PositionReset, got {other:?}"),
        }
        let ends = BTreeMap::from([((String::new(), 0), 50)]);
        let (_, read) = read_to_the_end(&mut stream, &ends).await;
        assert_eq!(read.len(), 50, "{policy:?}");
        assert_eq!(
            read.first().map(String::as_str),
            Some("new 0"),
            "{policy:?}"
        );
    }
    let metrics = broker.metrics_text();
    assert_eq!(
        metric_value(
            &metrics,
            "tidelog_position_resets_total{topic=\"ids\",reason=\"topic_recreated\"}"
        ),
        Some(3.0),
        "{metrics}"
    );

    // The new topic's own id: the positions hold, no reset.
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "ids".into(),
            partition_starts: vec![PartitionStart {
                partition: 0,
                offset: 45,
                topic: String::new(),
                topic_id: new_id,
            }],
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap().unwrap() {
        Event::Batch(batch) => assert_eq!(batch.messages[0].offset, 45),
        other => panic!("expected messages from 45, got {other:?}"),
    }
    // No id (a client that predates them): the offset is taken as it is.
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "ids".into(),
            partition_starts: starts(0)[..1].to_vec(),
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap().unwrap() {
        Event::Batch(batch) => assert_eq!(batch.messages[0].offset, 20),
        other => panic!("expected messages from 20, got {other:?}"),
    }
    // Only a partition the new topic does not have, and no follow: nothing to read.
    let status = broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "ids".into(),
            partition_starts: starts(old_id)[1..].to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("nothing to read");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("deleted and created again")
            && status.message().contains("without partition_starts"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_pattern_resume_reads_only_the_recreated_topic_again() {
    let broker = TestBroker::start();
    for topic in ["pi.kept", "pi.again"] {
        broker.create_topic(topic, 1, TopicConfig::default()).await;
        publish_values(&broker, topic, values(topic, 30)).await;
    }
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic_pattern: r"pi\..*".into(),
            start: earliest(),
            ..Default::default()
        },
    )
    .await;
    let ends = BTreeMap::from([
        (("pi.kept".to_string(), 0), 30),
        (("pi.again".to_string(), 0), 30),
    ]);
    let (saved, _) = read_to_the_end(&mut stream, &ends).await;
    drop(stream);
    let new_id = recreate(&broker, "pi.again", 1).await;
    for topic in ["pi.kept", "pi.again"] {
        publish_values(&broker, topic, values(&format!("{topic} more"), 40)).await;
    }
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic_pattern: r"pi\..*".into(),
            partition_starts: saved
                .values()
                .map(|p| PartitionStart {
                    partition: p.partition,
                    offset: p.next_offset,
                    topic: p.topic.clone(),
                    topic_id: p.topic_id,
                })
                .collect(),
            ..Default::default()
        },
    )
    .await;
    let mut resets = Vec::new();
    let mut read: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let started = Instant::now();
    while read.values().map(Vec::len).sum::<usize>() < 80 {
        assert!(started.elapsed() < WAIT, "read {read:?}");
        match next_event(&mut stream).await.unwrap().unwrap() {
            Event::Batch(batch) => {
                for m in batch.messages {
                    read.entry(m.topic)
                        .or_default()
                        .push(String::from_utf8_lossy(&m.value).into_owned());
                }
            }
            Event::PositionReset(reset) => resets.push(reset),
            Event::TopicsChanged(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        resets,
        vec![PositionReset {
            partition: 0,
            from_offset: Some(30),
            to_offset: 0,
            reason: ResetReason::TopicRecreated as i32,
            topic: "pi.again".into(),
            topic_id: new_id,
        }]
    );
    // The kept topic goes on from its position; the new one is read whole.
    assert_eq!(
        read["pi.kept"].first().map(String::as_str),
        Some("pi.kept more 0")
    );
    assert_eq!(read["pi.kept"].len(), 40);
    assert_eq!(
        read["pi.again"].first().map(String::as_str),
        Some("pi.again more 0")
    );
    assert_eq!(read["pi.again"].len(), 40);
}

#[tokio::test]
async fn fetch_refuses_an_offset_read_in_a_deleted_topic_and_names_both_ids() {
    let broker = TestBroker::start();
    broker.create_topic("fi", 1, TopicConfig::default()).await;
    publish_values(&broker, "fi", values("old", 10)).await;
    let request = |offset: u64, topic_id: u64| FetchRequest {
        topic: "fi".into(),
        partition: 0,
        offset,
        max_messages: 100,
        topic_id,
        ..Default::default()
    };
    let mut consumer = broker.consumer().await;
    let first = consumer.fetch(request(0, 0)).await.unwrap().into_inner();
    let old_id = first.topic_id;
    assert_eq!(old_id, broker.describe_topic("fi").await.topic_id);
    let batches = consumer
        .fetch_batches(request(0, old_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batches.topic_id, old_id);

    let new_id = recreate(&broker, "fi", 1).await;
    publish_values(&broker, "fi", values("new", 20)).await;
    let refused = consumer.fetch(request(5, old_id)).await.unwrap_err();
    let refused_batches = consumer
        .fetch_batches(request(5, old_id))
        .await
        .unwrap_err();
    for status in [refused, refused_batches] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&format!("{old_id:016x}"))
                && status.message().contains(&format!("{new_id:016x}"))
                && status.message().contains("log_start_offset"),
            "{status:?}"
        );
    }
    // With the new id, or none, it reads.
    for id in [new_id, 0] {
        let read = consumer.fetch(request(5, id)).await.unwrap().into_inner();
        assert_eq!(read.messages[0].value.as_ref(), b"new 5");
        assert_eq!(read.topic_id, new_id);
    }
}

/// tidelog-client's subscriptions (one topic, and a pattern) across a broker restart
/// while the topic is deleted and created again: the reconnect sends the ids, so the
/// new topic is read whole (before topic ids its first messages, up to the old
/// positions, were skipped).
// A multi-thread runtime: the client answers the broker's goodbye while `stop` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscription_reads_a_topic_recreated_while_it_was_away_whole() {
    let mut broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    for topic in ["ca.one", "ca.pat"] {
        client
            .create_topic(topic, 2, TopicConfig::default())
            .await
            .expect("create");
        publish_values(&broker, topic, values("old", 60)).await;
    }
    let options = SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::default()
    };
    let mut by_topic = Subscription::open(&client, "ca.one", options.clone())
        .await
        .expect("open");
    let mut by_pattern = Subscription::open_pattern(&client, r"ca\.pat", options)
        .await
        .expect("open_pattern");
    for subscription in [&mut by_topic, &mut by_pattern] {
        for _ in 0..60 {
            timeout(WAIT, subscription.next())
                .await
                .expect("in time")
                .expect("old message");
        }
    }

    broker.restart_on_the_same_ports();
    // While the subscriptions are away (they reconnect at their next call), through
    // connections of the test's own.
    for topic in ["ca.one", "ca.pat"] {
        recreate(&broker, topic, 2).await;
        publish_values(&broker, topic, values("new", 100)).await;
    }

    for (subscription, topic) in [(&mut by_topic, "ca.one"), (&mut by_pattern, "ca.pat")] {
        let new_id = broker.describe_topic(topic).await.topic_id;
        let mut values = Vec::new();
        let mut resets = Vec::new();
        while values.len() < 100 {
            match timeout(WAIT, subscription.next_event())
                .await
                .unwrap_or_else(|_| panic!("{topic}: stalled at {values:?}; resets {resets:?}"))
                .expect("next_event")
            {
                ClientEvent::Messages(messages) => values.extend(
                    messages
                        .iter()
                        .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
                ),
                ClientEvent::PositionReset(reset) => resets.push(reset),
                _ => {}
            }
        }
        values.sort_by_key(|v| v["new ".len()..].parse::<u32>().unwrap_or(u32::MAX));
        let wanted: Vec<String> = (0..100).map(|n| format!("new {n}")).collect();
        assert_eq!(
            values, wanted,
            "{topic}: every message of the new topic, once"
        );
        assert_eq!(resets.len(), 2, "{topic}: {resets:?}");
        assert!(
            resets
                .iter()
                .all(|r| r.reason == ClientReason::TopicRecreated && r.to_offset == 0),
            "{topic}: {resets:?}"
        );
        for partition in 0..2 {
            assert_eq!(subscription.topic_id(topic, partition), Some(new_id));
        }
    }
}

#[test]
fn the_cli_shows_a_topics_id() {
    let broker = TestBroker::start();
    let run = |args: &[&str]| cli(&broker, args).ok("tidelog").stdout;
    run(&["topic", "create", "shown", "--partitions", "2"]);
    let json: serde_json::Value =
        serde_json::from_str(&run(&["topic", "describe", "shown", "--json"])).expect("JSON");
    let id = json["topic_id"]
        .as_str()
        .expect("topic_id is a string")
        .to_string();
    assert_eq!(id.len(), 16, "{json}");
    let listed: serde_json::Value =
        serde_json::from_str(&run(&["topic", "list", "--json"])).expect("JSON");
    assert_eq!(listed["topics"][0]["topic_id"].as_str(), Some(id.as_str()));
    let human = run(&["topic", "describe", "shown"]);
    assert!(
        human
            .lines()
            .next()
            .is_some_and(|l| l.contains(&format!("id {id}"))),
        "{human}"
    );
    // The id in the topic's file, as FORMAT.md says.
    let on_disk =
        std::fs::read_to_string(broker.data_dir().join("topics/shown/topic.id")).expect("topic.id");
    assert_eq!(on_disk, id);
}

#[tokio::test]
async fn a_commit_or_reset_of_an_offset_read_in_a_deleted_topic_is_refused() {
    use tidelog_proto::v1::reset_offsets_request::{ExplicitOffsets, Spec};
    use tidelog_proto::v1::{CommitOffsetsRequest, ResetOffsetsRequest, TopicPartitionOffset};

    let broker = TestBroker::start();
    broker.create_topic("ci", 1, TopicConfig::default()).await;
    let old_id = broker.describe_topic("ci").await.topic_id;
    publish_values(&broker, "ci", values("old", 30)).await;
    let new_id = recreate(&broker, "ci", 1).await;
    publish_values(&broker, "ci", values("new", 10)).await;
    let entry = |topic_id: u64| TopicPartitionOffset {
        topic: "ci".into(),
        partition: 0,
        offset: 5,
        metadata: String::new(),
        topic_id,
    };
    let mut groups = broker.groups().await;
    let commit = |topic_id: u64| CommitOffsetsRequest {
        group_id: "g".into(),
        offsets: vec![entry(topic_id)],
        ..Default::default()
    };
    let reset = |topic_id: u64| ResetOffsetsRequest {
        group_id: "g".into(),
        spec: Some(Spec::Explicit(ExplicitOffsets {
            offsets: vec![entry(topic_id)],
        })),
        execute: true,
        ..Default::default()
    };
    let refused = groups.commit_offsets(commit(old_id)).await.unwrap_err();
    let refused_reset = groups.reset_offsets(reset(old_id)).await.unwrap_err();
    for (status, what) in [
        (refused, "nothing was committed"),
        (refused_reset, "nothing was reset"),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&format!("{old_id:016x}"))
                && status.message().contains(&format!("{new_id:016x}"))
                && status.message().contains(what),
            "{status:?}"
        );
    }
    assert_eq!(
        committed(&broker).await,
        Vec::<u64>::new(),
        "nothing committed"
    );
    // The new topic's id, or none: committed.
    groups.commit_offsets(commit(new_id)).await.expect("commit");
    assert_eq!(committed(&broker).await, vec![5]);
    groups.commit_offsets(commit(0)).await.expect("commit");
    groups.reset_offsets(reset(new_id)).await.expect("reset");
}

/// Group "g"'s committed offsets (FetchOffsets).
async fn committed(broker: &TestBroker) -> Vec<u64> {
    broker
        .groups()
        .await
        .fetch_offsets(tidelog_proto::v1::FetchOffsetsRequest {
            group_id: "g".into(),
            topic: None,
        })
        .await
        .expect("FetchOffsets")
        .into_inner()
        .offsets
        .iter()
        .map(|o| o.offset)
        .collect()
}

/// Hunt 11b: a resume listed partitions 0-3 of a topic deleted since; the new topic
/// has 2 and then grows to 5 while the stream runs. Partitions 2 and 3 are new to the
/// stream like 4: all three are read from their start (they were left unread before,
/// being below follow_partitions_from).
#[tokio::test]
async fn listed_partitions_the_recreated_topic_lacks_are_read_when_they_are_added() {
    use tidelog_proto::v1::{CreatePartitionsRequest, Message, PublishRequest};

    let broker = TestBroker::start();
    broker.create_topic("grow", 4, TopicConfig::default()).await;
    let old_id = broker.describe_topic("grow").await.topic_id;
    recreate(&broker, "grow", 2).await;
    let mut stream = subscribe(
        &broker,
        SubscribeRequest {
            topic: "grow".into(),
            partition_starts: (0..4)
                .map(|partition| PartitionStart {
                    partition,
                    offset: 3,
                    topic: String::new(),
                    topic_id: old_id,
                })
                .collect(),
            follow_partitions_from: Some(4),
            send_positioned: true,
            ..Default::default()
        },
    )
    .await;
    match next_event(&mut stream).await.unwrap().unwrap() {
        Event::Positioned(p) => assert_eq!(
            p.positions.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![0, 1]
        ),
        other => panic!("expected Positioned, got {other:?}"),
    }
    broker
        .admin()
        .await
        .create_partitions(CreatePartitionsRequest {
            name: "grow".into(),
            partitions: 5,
        })
        .await
        .expect("CreatePartitions");
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "grow".into(),
            messages: (0..5)
                .map(|partition| Message {
                    value: format!("p{partition}").into_bytes().into(),
                    partition: Some(partition),
                    ..Default::default()
                })
                .collect(),
            ack: tidelog_proto::v1::AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    let mut read = Vec::new();
    let mut resets = Vec::new();
    while read.len() < 5 {
        match next_event(&mut stream).await.unwrap().unwrap() {
            Event::Batch(batch) => read.extend(
                batch
                    .messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
            ),
            Event::PositionReset(reset) => resets.push(reset.partition),
            other => panic!("unexpected {other:?}"),
        }
    }
    read.sort();
    assert_eq!(read, vec!["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(resets, vec![0, 1], "the partitions the new topic had");
}

/// The id is durable from CreateTopic's answer on: a kill -9 right after it keeps it.
#[tokio::test]
async fn a_topic_keeps_its_id_across_a_kill_9() {
    let mut broker = TestBroker::start();
    broker.create_topic("k9", 3, TopicConfig::default()).await;
    let id = broker.describe_topic("k9").await.topic_id;
    broker.kill9();
    broker.restart();
    assert_eq!(broker.describe_topic("k9").await.topic_id, id);
    broker.kill9();
    broker.restart();
    assert_eq!(broker.describe_topic("k9").await.topic_id, id);
}
