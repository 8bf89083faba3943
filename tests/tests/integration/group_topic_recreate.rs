//! A group member kept by its session timeout across a DeleteTopic and a CreateTopic of
//! the same name: the deletion takes the topic from its assignment and moves the
//! group's generation on, so a commit of the old incarnation is refused as stale, and
//! a reconnect with the member id is assigned the new topic's partitions and reads
//! them (by topic name and by pattern).

use std::collections::BTreeSet;
use std::time::Duration;

use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, Assignment, CommitOffsetsRequest, DeleteTopicRequest, DescribeGroupRequest,
    FetchOffsetsRequest, GroupDescription, GroupMembership, Message, PublishRequest, ResetPolicy,
    SubscribeRequest, SubscribeResponse, TopicConfig, TopicPartitionOffset,
};
use tidelog_tests::TestBroker;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Longest wait for any one event; nothing here takes that long when all is well.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a member subscribes to.
#[derive(Clone, Copy)]
enum To<'a> {
    Topic(&'a str),
    Pattern(&'a str),
}

async fn subscribe(
    consumer: &mut ConsumerClient<Channel>,
    to: To<'_>,
    group: &str,
    member_id: &str,
    session_timeout_ms: u64,
) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
    let (topic, topic_pattern) = match to {
        To::Topic(name) => (name.to_string(), String::new()),
        To::Pattern(pattern) => (String::new(), pattern.to_string()),
    };
    consumer
        .subscribe(SubscribeRequest {
            topic,
            topic_pattern,
            group: Some(GroupMembership {
                group_id: group.into(),
                member_id: member_id.into(),
                session_timeout_ms,
                auto_commit_interval_ms: 0,
                client_id: "it".into(),
                handover_timeout_ms: 0,
            }),
            reset_policy: ResetPolicy::Earliest as i32,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next event, failing the test after [`EVENT_TIMEOUT`]; `Err` is the status that
/// ended the stream.
async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Result<Event, tonic::Status> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(response.event.expect("every response has an event")),
        Ok(Ok(None)) => panic!("the stream ended without a status"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
    }
}

async fn expect_assignment(stream: &mut Streaming<SubscribeResponse>) -> Assignment {
    loop {
        match next_event(stream).await.expect("stream open") {
            Event::Assignment(assignment) => return assignment,
            Event::PositionReset(_) => {}
            other => panic!("expected an Assignment, got {other:?}"),
        }
    }
}

/// The member's partitions of `topic` in `assignment` (a pattern member lists them per
/// topic), sorted.
fn partitions_of(assignment: &Assignment, topic: &str) -> Vec<u32> {
    let mut partitions = if assignment.topics.is_empty() {
        assignment.partitions.clone()
    } else {
        assignment
            .topics
            .iter()
            .filter(|t| t.topic == topic)
            .flat_map(|t| t.partitions.clone())
            .collect()
    };
    partitions.sort_unstable();
    partitions
}

/// Reads until messages of every partition in `want` came (failing after
/// [`EVENT_TIMEOUT`] or if the stream ends); returns the values read.
async fn read_partitions(
    stream: &mut Streaming<SubscribeResponse>,
    want: &BTreeSet<u32>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !want.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read partitions {seen:?}, not all of {want:?}"
        );
        match next_event(stream).await {
            Ok(Event::Batch(batch)) => {
                for m in batch.messages {
                    seen.insert(m.partition);
                    values.push(String::from_utf8_lossy(&m.value).into_owned());
                }
            }
            Ok(_) => {}
            Err(status) => panic!("the member's stream ended: {status:?} (read {seen:?})"),
        }
    }
    values
}

async fn publish(broker: &TestBroker, topic: &str, partition: u32, values: &[&str]) {
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages: values
                .iter()
                .map(|v| Message {
                    value: v.as_bytes().to_vec().into(),
                    partition: Some(partition),
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
}

async fn delete_topic(broker: &TestBroker, topic: &str) {
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest { name: topic.into() })
        .await
        .expect("delete topic");
}

async fn commit(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    member_id: &str,
    generation: u64,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(), tonic::Status> {
    groups
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member_id.into(),
            generation: Some(generation),
            offsets: vec![TopicPartitionOffset {
                topic: topic.into(),
                partition,
                offset,
                metadata: String::new(),
                topic_id: 0,
            }],
        })
        .await
        .map(|_| ())
}

async fn committed(groups: &mut GroupsClient<Channel>, group: &str) -> Vec<(String, u32, u64)> {
    groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.into(),
            topic: None,
        })
        .await
        .expect("fetch offsets")
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect()
}

async fn describe(groups: &mut GroupsClient<Channel>, group: &str) -> GroupDescription {
    groups
        .describe_group(DescribeGroupRequest {
            group_id: group.into(),
        })
        .await
        .expect("describe group")
        .into_inner()
        .group
        .expect("a description")
}

/// Waits until the stream ends, returning its status (events before it are skipped).
async fn ended(stream: &mut Streaming<SubscribeResponse>) -> tonic::Status {
    loop {
        if let Err(status) = next_event(stream).await {
            return status;
        }
    }
}

/// The whole story for one kind of member: kept across the delete and re-create (2
/// then 4 partitions), its old commit refused, its reconnect reading all 4, then a
/// new member and the kept one splitting them.
async fn kept_member_across_a_recreate(to: To<'_>, topic: &str, group: &str) {
    let broker = TestBroker::start();
    broker.create_topic(topic, 2, TopicConfig::default()).await;
    for partition in 0..2 {
        publish(&broker, topic, partition, &["old"; 5]).await;
    }
    let mut consumer = broker.consumer().await;
    let mut groups = broker.groups().await;
    let mut first = subscribe(&mut consumer, to, group, "", 60_000)
        .await
        .unwrap();
    let old = expect_assignment(&mut first).await;
    assert_eq!(partitions_of(&old, topic), vec![0, 1]);
    let member_id = old.member_id.clone();

    delete_topic(&broker, topic).await;
    match to {
        // A member of that one topic is told; the session timeout keeps it.
        To::Topic(_) => {
            let status = ended(&mut first).await;
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
        }
        // A pattern member reads on; its client goes away.
        To::Pattern(_) => drop(first),
    }
    broker.create_topic(topic, 4, TopicConfig::default()).await;
    for partition in 0..4 {
        publish(&broker, topic, partition, &["new"; 5]).await;
    }

    // The old incarnation's generation is stale: nothing lands on the new topic.
    let refused = commit(&mut groups, group, &member_id, old.generation, topic, 0, 3)
        .await
        .expect_err("a commit in the old topic's generation must be refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("stale"), "{refused:?}");
    assert_eq!(committed(&mut groups, group).await, vec![]);

    // Reconnecting with the member id: all of the new topic, read at once.
    let mut again = subscribe(&mut consumer, to, group, &member_id, 60_000)
        .await
        .unwrap();
    let fresh = expect_assignment(&mut again).await;
    assert_eq!(fresh.member_id, member_id);
    assert!(fresh.generation > old.generation, "{fresh:?} after {old:?}");
    assert_eq!(partitions_of(&fresh, topic), vec![0, 1, 2, 3]);
    let values = read_partitions(&mut again, &(0..4).collect()).await;
    assert!(values.iter().all(|v| v == "new"), "{values:?}");
    // Its commit in the new generation is taken.
    commit(
        &mut groups,
        group,
        &member_id,
        fresh.generation,
        topic,
        0,
        5,
    )
    .await
    .unwrap();

    // It goes away again (kept); a new member joins: the two cover the topic.
    drop(again);
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while describe(&mut groups, group).await.members[0]
        .session_expires_in_ms
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut other = subscribe(&mut consumer, to, group, "", 60_000)
        .await
        .unwrap();
    let b = expect_assignment(&mut other).await;
    let mine: BTreeSet<u32> = partitions_of(&b, topic).into_iter().collect();
    assert_eq!(mine.len(), 2, "{b:?}");
    // (Partition 0 was committed to its end: one more message each.)
    for partition in 0..4 {
        publish(&broker, topic, partition, &["newer"]).await;
    }
    read_partitions(&mut other, &mine).await;
    let description = describe(&mut groups, group).await;
    assert_eq!(description.members.len(), 2, "{description:?}");
    let mut all: Vec<u32> = description
        .members
        .iter()
        .flat_map(|m| {
            if m.topics.is_empty() {
                m.partitions.clone()
            } else {
                m.topics.iter().flat_map(|t| t.partitions.clone()).collect()
            }
        })
        .collect();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3], "{description:?}");
}

#[tokio::test]
async fn a_kept_member_gets_the_recreated_topic_and_its_old_commits_are_refused() {
    kept_member_across_a_recreate(To::Topic("rc"), "rc", "rcg").await;
}

#[tokio::test]
async fn a_kept_pattern_member_gets_the_recreated_topic_and_its_old_commits_are_refused() {
    kept_member_across_a_recreate(To::Pattern(r"rc\..*"), "rc.one", "rcpg").await;
}

/// A client that reconnects with its member id (as client libraries do) after its
/// topic was deleted and created again reads the new topic at once, rather than
/// getting the old assignment and NOT_FOUND on every try until its session ends.
#[tokio::test]
async fn a_member_reconnecting_with_its_id_reads_the_recreated_topic() {
    let broker = TestBroker::start();
    broker.create_topic("lv", 1, TopicConfig::default()).await;
    let mut consumer = broker.consumer().await;
    let mut first = subscribe(&mut consumer, To::Topic("lv"), "lvg", "", 2_000)
        .await
        .unwrap();
    let member_id = expect_assignment(&mut first).await.member_id;
    delete_topic(&broker, "lv").await;
    broker.create_topic("lv", 1, TopicConfig::default()).await;
    publish(&broker, "lv", 0, &["new0", "new1", "new2"]).await;
    drop(first);

    // Each try: subscribe with the id, read until a batch or the stream's end.
    let started = tokio::time::Instant::now();
    let mut failures = Vec::new();
    let values = 'tries: loop {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no messages of the re-created topic after {failures:?}"
        );
        let mut stream = subscribe(&mut consumer, To::Topic("lv"), "lvg", &member_id, 2_000)
            .await
            .unwrap();
        loop {
            match next_event(&mut stream).await {
                Ok(Event::Assignment(a)) => assert_eq!(a.partitions, vec![0], "{a:?}"),
                Ok(Event::Batch(batch)) => {
                    break 'tries batch
                        .messages
                        .iter()
                        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
                        .collect::<Vec<_>>();
                }
                Ok(_) => {}
                Err(status) => {
                    failures.push(status);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    };
    assert_eq!(values, vec!["new0", "new1", "new2"]);
    assert!(
        failures.is_empty(),
        "the first reconnect reads: {failures:?}"
    );
}
