//! Consumer groups on a topic pattern through the real broker (issue 15 item 1, the
//! group part): two members on `orders\..*` split every matching topic's partitions,
//! take in a topic created during the test within a second (a rebalance, no
//! reconnect), drop a deleted one without their streams ending, and, committing per
//! (topic, partition) with a handover window, deliver every message exactly once
//! across the rebalances (checked against a model of what was published); describe
//! shows the pattern and the matched topics; reset-offsets works per matched topic
//! and by pattern; a member by name and a member by pattern share a topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::reset_offsets_request::{
    Scope, Spec, ToEarliest, ToLatest, TopicPatternScope, TopicScope,
};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, Assignment, CommitOffsetsRequest, DeleteTopicRequest, DescribeGroupRequest,
    FetchOffsetsRequest, GroupDescription, GroupMembership, GroupState, Message, PublishRequest,
    ResetOffsetsRequest, ResetPolicy, SubscribeRequest, SubscribeResponse, TopicConfig,
    TopicPartitionOffset,
};
use tidelog_tests::TestBroker;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The API promises a new matching topic is assigned within 1 second.
const PICKUP_MAX: Duration = Duration::from_secs(1);
const PATTERN: &str = r"orders\..*";

type Tp = (String, u32);

/// Publishes `count` messages to one partition; returns their offsets.
async fn publish(broker: &TestBroker, topic: &str, partition: u32, count: usize) -> Vec<u64> {
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            ack: AckLevel::Durable as i32,
            messages: (0..count)
                .map(|i| Message {
                    partition: Some(partition),
                    value: format!("{topic}/{partition}/{i}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("publish")
        .into_inner()
        .acks
        .into_iter()
        .map(|a| a.offset)
        .collect()
}

/// Publishes `count` to every partition of `topic`, adding each message to `model`.
async fn publish_all(
    broker: &TestBroker,
    topic: &str,
    partitions: u32,
    count: usize,
    model: &mut BTreeSet<(String, u32, u64)>,
) {
    for partition in 0..partitions {
        for offset in publish(broker, topic, partition, count).await {
            model.insert((topic.to_string(), partition, offset));
        }
    }
}

fn pattern_member(group: &str, pattern: &str, member_id: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic_pattern: pattern.into(),
        group: Some(GroupMembership {
            group_id: group.into(),
            member_id: member_id.into(),
            client_id: "it".into(),
            // Client commits, with a handover window: what a member processed is
            // committed before a partition's next owner starts.
            handover_timeout_ms: 10_000,
            ..GroupMembership::default()
        }),
        reset_policy: ResetPolicy::Earliest as i32,
        ..SubscribeRequest::default()
    }
}

fn assigned(a: &Assignment) -> Vec<Tp> {
    a.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

/// Everything the members saw.
#[derive(Debug, Default)]
struct Seen {
    /// (member, generation, matched topics, partitions)
    assignments: Vec<(String, u64, Vec<String>, Vec<Tp>)>,
    /// (member, topic, partition, offset), in arrival order.
    deliveries: Vec<(String, String, u32, u64)>,
    /// How each member's stream ended, if it did.
    ended: Vec<tonic::Status>,
}

async fn commit(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    member: &str,
    generation: u64,
    offsets: &BTreeMap<Tp, u64>,
) -> Result<(), tonic::Status> {
    groups
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member.into(),
            generation: Some(generation),
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| TopicPartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                    topic_id: 0,
                })
                .collect(),
        })
        .await
        .map(drop)
}

/// One pattern member that processes (records) each batch and then commits it with
/// its generation per (topic, partition). A commit refused because a rebalance came
/// first is made again, in the new generation, when its Assignment arrives (inside
/// the handover window), so nothing is delivered twice.
fn spawn_member(
    mut consumer: ConsumerClient<Channel>,
    mut groups: GroupsClient<Channel>,
    group: &'static str,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = consumer
            .subscribe(pattern_member(group, PATTERN, ""))
            .await
            .expect("subscribe")
            .into_inner();
        let mut current: Option<(String, u64)> = None;
        let mut uncommitted: BTreeMap<Tp, u64> = BTreeMap::new();
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return,
                Err(status) => {
                    seen.lock().unwrap().ended.push(status);
                    return;
                }
            };
            match response.event.expect("event") {
                Event::Assignment(a) => {
                    assert!(a.partitions.is_empty(), "a pattern member's are in topics");
                    let topics: Vec<String> = a.topics.iter().map(|t| t.topic.clone()).collect();
                    seen.lock().unwrap().assignments.push((
                        a.member_id.clone(),
                        a.generation,
                        topics,
                        assigned(&a),
                    ));
                    current = Some((a.member_id.clone(), a.generation));
                    // What was processed and not committed yet, revoked or not; an
                    // empty commit ends the handover window all the same. Offsets of
                    // a deleted topic are gone with it.
                    let live: BTreeSet<String> = a.topics.iter().map(|t| t.topic.clone()).collect();
                    uncommitted.retain(|(topic, _), _| live.contains(topic));
                    commit(&mut groups, group, &a.member_id, a.generation, &uncommitted)
                        .await
                        .map(|()| uncommitted.clear())
                        .unwrap_or_else(|status| {
                            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        });
                }
                Event::Batch(batch) => {
                    let (member, generation) = current.clone().expect("an Assignment first");
                    {
                        let mut seen = seen.lock().unwrap();
                        for m in &batch.messages {
                            assert!(!m.topic.is_empty(), "each message names its topic");
                            seen.deliveries.push((
                                member.clone(),
                                m.topic.clone(),
                                m.partition,
                                m.offset,
                            ));
                        }
                    }
                    for p in &batch.positions {
                        assert!(!p.topic.is_empty(), "each position names its topic");
                        uncommitted.insert((p.topic.clone(), p.partition), p.next_offset);
                    }
                    match commit(&mut groups, group, &member, generation, &uncommitted).await {
                        Ok(()) => uncommitted.clear(),
                        // A rebalance came first: committed with the next Assignment.
                        Err(status) => {
                            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}")
                        }
                    }
                }
                Event::PositionReset(reset) => {
                    assert!(!reset.topic.is_empty(), "a reset names its topic");
                }
                other => panic!("unexpected event on a group stream: {other:?}"),
            }
        }
    })
}

async fn describe(groups: &mut GroupsClient<Channel>, group: &str) -> Option<GroupDescription> {
    match groups
        .describe_group(DescribeGroupRequest {
            group_id: group.into(),
        })
        .await
    {
        Ok(response) => response.into_inner().group,
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("describe group: {status:?}"),
    }
}

/// Polls DescribeGroup until `done` holds; panics after [`EVENT_TIMEOUT`].
async fn wait_for_group(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    done: impl Fn(&GroupDescription) -> bool,
) -> GroupDescription {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let description = describe(groups, group).await;
        if let Some(d) = description.as_ref().filter(|d| done(d)) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "group never got there: {description:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every (topic, partition) the group's members own, sorted.
fn owned(description: &GroupDescription) -> Vec<Tp> {
    let mut all: Vec<Tp> = description
        .members
        .iter()
        .flat_map(|m| {
            m.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        })
        .collect();
    all.sort();
    all
}

fn tps(topics: &[(&str, u32)]) -> Vec<Tp> {
    let mut all: Vec<Tp> = topics
        .iter()
        .flat_map(|(t, n)| (0..*n).map(|p| (t.to_string(), p)))
        .collect();
    all.sort();
    all
}

/// Waits until the members delivered every message of `model`.
async fn wait_for_deliveries(seen: &Arc<Mutex<Seen>>, model: &BTreeSet<(String, u32, u64)>) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let delivered: BTreeSet<(String, u32, u64)> = seen
            .lock()
            .unwrap()
            .deliveries
            .iter()
            .map(|(_, t, p, o)| (t.clone(), *p, *o))
            .collect();
        if model.is_subset(&delivered) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "missing deliveries: {:?}",
            model.difference(&delivered).take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls FetchOffsets until the group's commit of every (topic, partition) of
/// `ends` is that end offset.
async fn wait_for_commits(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    ends: &BTreeMap<Tp, u64>,
) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let committed: BTreeMap<Tp, u64> = groups
            .fetch_offsets(FetchOffsetsRequest {
                group_id: group.into(),
                topic: None,
            })
            .await
            .unwrap()
            .into_inner()
            .offsets
            .into_iter()
            .map(|c| ((c.topic, c.partition), c.offset))
            .collect();
        if ends.iter().all(|(tp, end)| committed.get(tp) == Some(end)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "commits {committed:?}, expected {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_group_takes_in_new_topics_drops_deleted_ones_and_loses_nothing() {
    let broker = TestBroker::start();
    for (name, partitions) in [
        ("orders.eu", 2),
        ("orders.us", 2),
        ("payments", 1),
        ("old-orders.eu", 1),
    ] {
        broker
            .create_topic(name, partitions, TopicConfig::default())
            .await;
    }
    let mut model = BTreeSet::new();
    publish_all(&broker, "orders.eu", 2, 20, &mut model).await;
    publish_all(&broker, "orders.us", 2, 20, &mut model).await;
    // Not matched (the pattern is anchored): never delivered.
    publish(&broker, "payments", 0, 5).await;
    publish(&broker, "old-orders.eu", 0, 5).await;

    let mut groups = broker.groups().await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let first = spawn_member(
        broker.consumer().await,
        broker.groups().await,
        "pg",
        seen.clone(),
    );
    wait_for_group(&mut groups, "pg", |g| g.state == GroupState::Stable as i32).await;
    // The second member joins while the first is reading: a rebalance mid-stream.
    publish_all(&broker, "orders.eu", 2, 30, &mut model).await;
    let second = spawn_member(
        broker.consumer().await,
        broker.groups().await,
        "pg",
        seen.clone(),
    );
    let stable = wait_for_group(&mut groups, "pg", |g| {
        g.members.len() == 2 && g.state == GroupState::Stable as i32
    })
    .await;
    assert_eq!(owned(&stable), tps(&[("orders.eu", 2), ("orders.us", 2)]));
    for member in &stable.members {
        assert_eq!(member.topic_pattern, PATTERN);
        assert_eq!(member.topic, "");
        let topics: Vec<&str> = member.topics.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["orders.eu", "orders.us"],
            "describe names the matched topics"
        );
        assert_eq!(
            member
                .topics
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>(),
            2,
            "two partitions each: {stable:?}"
        );
    }
    publish_all(&broker, "orders.us", 2, 30, &mut model).await;
    wait_for_deliveries(&seen, &model).await;

    // A matching topic created now is assigned within a second, without a reconnect.
    let created = Instant::now();
    broker
        .create_topic("orders.asia", 3, TopicConfig::default())
        .await;
    let took_in = wait_for_group(&mut groups, "pg", |g| {
        g.state == GroupState::Stable as i32
            && owned(g) == tps(&[("orders.asia", 3), ("orders.eu", 2), ("orders.us", 2)])
    })
    .await;
    assert!(
        created.elapsed() < PICKUP_MAX,
        "orders.asia assigned after {:?}",
        created.elapsed()
    );
    assert!(took_in.generation > stable.generation);
    publish_all(&broker, "orders.asia", 3, 25, &mut model).await;
    publish_all(&broker, "orders.eu", 2, 10, &mut model).await;
    wait_for_deliveries(&seen, &model).await;

    // A deleted topic drops out of the assignment; no stream ends.
    let before = seen.lock().unwrap().deliveries.len();
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest {
            name: "orders.us".into(),
        })
        .await
        .unwrap();
    model.retain(|(topic, _, _)| topic != "orders.us");
    let dropped = wait_for_group(&mut groups, "pg", |g| {
        g.state == GroupState::Stable as i32
            && owned(g) == tps(&[("orders.asia", 3), ("orders.eu", 2)])
    })
    .await;
    assert!(
        dropped.lags.iter().all(|l| l.topic != "orders.us"),
        "{dropped:?}"
    );
    publish_all(&broker, "orders.asia", 3, 10, &mut model).await;
    publish_all(&broker, "orders.eu", 2, 10, &mut model).await;
    wait_for_deliveries(&seen, &model).await;
    assert!(seen.lock().unwrap().deliveries.len() > before);

    // Every commit lands per (topic, partition) at its end.
    let mut ends = BTreeMap::new();
    for (topic, partitions) in [("orders.eu", 2u32), ("orders.asia", 3)] {
        for p in broker.describe_topic(topic).await.partitions {
            assert!(p.partition < partitions);
            ends.insert((topic.to_string(), p.partition), p.end_offset);
        }
    }
    wait_for_commits(&mut groups, "pg", &ends).await;
    let described = describe(&mut groups, "pg").await.unwrap();
    for lag in &described.lags {
        assert_eq!(lag.lag, Some(0), "{lag:?}");
    }
    first.abort();
    second.abort();

    let seen = seen.lock().unwrap();
    assert!(seen.ended.is_empty(), "no stream ended: {:?}", seen.ended);
    // Against the model: every message of a live topic exactly once, over both members
    // and every rebalance (orders.us's were delivered too before it went).
    let mut count: BTreeMap<(String, u32, u64), usize> = BTreeMap::new();
    for (_, topic, partition, offset) in &seen.deliveries {
        *count
            .entry((topic.clone(), *partition, *offset))
            .or_default() += 1;
    }
    let duplicated: Vec<_> = count.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    let delivered: BTreeSet<(String, u32, u64)> = count
        .into_keys()
        .filter(|(topic, _, _)| topic != "orders.us")
        .collect();
    assert_eq!(
        delivered, model,
        "nothing lost, nothing unpublished or unmatched"
    );
    // Assignments of one generation never give a partition to two members.
    let mut owner: BTreeMap<(u64, Tp), &str> = BTreeMap::new();
    for (member, generation, _, partitions) in &seen.assignments {
        for tp in partitions {
            if let Some(other) = owner.insert((*generation, tp.clone()), member) {
                assert_eq!(other, member, "{tp:?} twice in generation {generation}");
            }
        }
    }
    // Both members saw orders.asia come and orders.us go in their matched topics.
    let last: BTreeMap<&str, &Vec<String>> = seen
        .assignments
        .iter()
        .map(|(member, _, topics, _)| (member.as_str(), topics))
        .collect();
    assert_eq!(last.len(), 2);
    for topics in last.values() {
        assert_eq!(
            **topics,
            ["orders.asia".to_string(), "orders.eu".to_string()]
        );
    }
}

async fn reset(
    groups: &mut GroupsClient<Channel>,
    scope: Scope,
    spec: Spec,
    execute: bool,
) -> Result<Vec<(String, u32, Option<u64>, u64)>, tonic::Status> {
    groups
        .reset_offsets(ResetOffsetsRequest {
            group_id: "pr".into(),
            scope: Some(scope),
            spec: Some(spec),
            execute,
        })
        .await
        .map(|r| {
            r.into_inner()
                .changes
                .into_iter()
                .map(|c| (c.topic, c.partition, c.current_offset, c.new_offset))
                .collect()
        })
}

/// Reads a pattern member's stream until `count` messages came: (topic, partition,
/// offset) of each, and the last Assignment.
async fn read(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> (Vec<(String, u32, u64)>, Option<Assignment>) {
    let mut got = Vec::new();
    let mut assignment = None;
    while got.len() < count {
        let event = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .expect("not ended")
            .event
            .expect("an event");
        match event {
            Event::Assignment(a) => assignment = Some(a),
            Event::Batch(batch) => got.extend(
                batch
                    .messages
                    .into_iter()
                    .map(|m| (m.topic, m.partition, m.offset)),
            ),
            Event::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, assignment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offsets_per_matched_topic_and_by_pattern_and_mixed_members() {
    let broker = TestBroker::start();
    for (name, partitions) in [("orders.eu", 2), ("orders.us", 1), ("other", 1)] {
        broker
            .create_topic(name, partitions, TopicConfig::default())
            .await;
        for p in 0..partitions {
            publish(&broker, name, p, 10).await;
        }
    }
    let mut groups = broker.groups().await;
    let mut consumer = broker.consumer().await;
    let mut member = SubscribeRequest {
        group: Some(GroupMembership {
            auto_commit_interval_ms: 10,
            ..pattern_member("pr", PATTERN, "").group.unwrap()
        }),
        ..pattern_member("pr", PATTERN, "")
    };
    let mut stream = consumer
        .subscribe(member.clone())
        .await
        .unwrap()
        .into_inner();
    let (got, assignment) = read(&mut stream, 30).await;
    let topics: BTreeSet<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(topics, BTreeSet::from(["orders.eu", "orders.us"]));
    let assignment = assignment.unwrap();
    assert_eq!(
        assigned(&assignment),
        tps(&[("orders.eu", 2), ("orders.us", 1)])
    );

    // A member by name shares orders.eu with the pattern member; orders.us stays
    // the pattern member's alone (the by-name member does not read it).
    let by_name = consumer
        .subscribe(SubscribeRequest {
            topic: "orders.eu".into(),
            topic_pattern: String::new(),
            ..pattern_member("pr", "", "")
        })
        .await
        .unwrap()
        .into_inner();
    let shared = wait_for_group(&mut groups, "pr", |g| {
        g.members.len() == 2 && g.state == GroupState::Stable as i32
    })
    .await;
    let named = shared
        .members
        .iter()
        .find(|m| m.topic == "orders.eu")
        .unwrap();
    assert_eq!(named.partitions.len(), 1, "{shared:?}");
    assert!(named.topics.is_empty() && named.topic_pattern.is_empty());
    let patterned = shared
        .members
        .iter()
        .find(|m| m.topic_pattern == PATTERN)
        .unwrap();
    let of: BTreeMap<&str, usize> = patterned
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.partitions.len()))
        .collect();
    assert_eq!(of, BTreeMap::from([("orders.eu", 1), ("orders.us", 1)]));
    drop(by_name);

    // Describe: lag per (topic, partition) once the auto-commits land.
    let settled = wait_for_group(&mut groups, "pr", |g| {
        g.members.len() == 1 && g.lags.len() == 3 && g.lags.iter().all(|l| l.lag == Some(0))
    })
    .await;
    let lags: Vec<(String, u32)> = settled
        .lags
        .iter()
        .map(|l| (l.topic.clone(), l.partition))
        .collect();
    assert_eq!(lags, tps(&[("orders.eu", 2), ("orders.us", 1)]));
    drop(stream);
    wait_for_group(&mut groups, "pr", |g| g.state == GroupState::Empty as i32).await;

    // Reset by pattern: every partition of every matched topic, "other" untouched.
    let earliest = || Spec::ToEarliest(ToEarliest {});
    let by_pattern = || {
        Scope::TopicPattern(TopicPatternScope {
            topic_pattern: PATTERN.into(),
        })
    };
    let dry = reset(&mut groups, by_pattern(), earliest(), false)
        .await
        .unwrap();
    assert_eq!(
        dry,
        vec![
            ("orders.eu".to_string(), 0, Some(10), 0),
            ("orders.eu".to_string(), 1, Some(10), 0),
            ("orders.us".to_string(), 0, Some(10), 0),
        ]
    );
    reset(&mut groups, by_pattern(), earliest(), true)
        .await
        .unwrap();
    // Per matched topic: orders.us back to its end.
    let us = Scope::Topic(TopicScope {
        topic: "orders.us".into(),
        partitions: vec![],
    });
    let changed = reset(&mut groups, us, Spec::ToLatest(ToLatest {}), true)
        .await
        .unwrap();
    assert_eq!(changed, vec![("orders.us".to_string(), 0, Some(0), 10)]);
    let bad = reset(
        &mut groups,
        Scope::TopicPattern(TopicPatternScope {
            topic_pattern: "(".into(),
        }),
        earliest(),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("topic_pattern"), "{bad:?}");

    // Rejoined, the member replays orders.eu only.
    member.group.as_mut().unwrap().member_id = String::new();
    let mut stream = consumer.subscribe(member).await.unwrap().into_inner();
    let (got, _) = read(&mut stream, 20).await;
    assert!(got.iter().all(|(t, _, _)| t == "orders.eu"), "{got:?}");
    let unique: BTreeSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 20);
}

#[tokio::test]
async fn a_pattern_member_is_checked_like_a_plain_pattern() {
    let broker = TestBroker::start();
    let mut consumer = broker.consumer().await;
    for (request, expected) in [
        (pattern_member("g", "(", ""), "topic_pattern"),
        (
            SubscribeRequest {
                topic: "t".into(),
                ..pattern_member("g", "t", "")
            },
            "not both",
        ),
    ] {
        let status = consumer.subscribe(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // A pattern that matches nothing is allowed: an Assignment with no topics.
    let mut stream = consumer
        .subscribe(pattern_member("g", "nothing-yet.*", ""))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first.event {
        Some(Event::Assignment(a)) => {
            assert!(a.topics.is_empty() && a.partitions.is_empty(), "{a:?}")
        }
        other => panic!("expected an Assignment, got {other:?}"),
    }
    let described = describe(&mut broker.groups().await, "g").await.unwrap();
    assert_eq!(described.members[0].topic_pattern, "nothing-yet.*");
    assert!(described.members[0].topics.is_empty());
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `tidelog consume --topic-pattern P --group G`: stops once caught up on every matched
/// topic and commits per (topic, partition); `group reset-offsets --topic-pattern`
/// moves every matched topic; with --follow the member takes in a topic created while
/// it runs, outlives a broker restart, and `group describe` shows the pattern and the
/// matched topics.
#[test]
fn cli_pattern_group_commits_per_topic_follows_new_topics_and_resets_by_pattern() {
    use crate::cli::{GroupConsumer, cli, cli_with_input, wait_until};

    let mut broker = TestBroker::start();
    for (topic, partitions) in [("orders.eu", "2"), ("orders.us", "1"), ("other", "1")] {
        cli(
            &broker,
            &["topic", "create", topic, "--partitions", partitions],
        )
        .ok("create");
    }
    cli_with_input(&broker, &["produce", "orders.eu"], b"e1\ne2\ne3\ne4\n").ok("produce");
    cli_with_input(&broker, &["produce", "orders.us"], b"u1\nu2\n").ok("produce");
    cli_with_input(&broker, &["produce", "other"], b"x\n").ok("produce");
    let consume = |group: &str| {
        cli(
            &broker,
            &[
                "consume",
                "--topic-pattern",
                PATTERN,
                "--group",
                group,
                "--json",
            ],
        )
        .ok("consume by pattern as a group")
    };
    let run = consume("cg");
    let lines = run.json_lines();
    let got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["topic"]
                    .as_str()
                    .expect("each line names its topic")
                    .to_string(),
                l["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 6, "{got:?}\n{}", run.stderr);
    let values: Vec<String> = sorted(got.iter().map(|(_, v)| v.clone()).collect());
    assert_eq!(values, strings(&["e1", "e2", "e3", "e4", "u1", "u2"]));
    assert!(
        got.iter()
            .all(|(t, v)| t.starts_with("orders.") && v.starts_with(&t[7..8]))
    );
    // Committed per (topic, partition), at each end.
    let described = cli(&broker, &["group", "describe", "cg", "--json"])
        .ok("describe")
        .json();
    let partitions = described["partitions"].as_array().unwrap();
    let committed: Vec<(String, u64)> = partitions
        .iter()
        .map(|p| {
            (
                p["topic"].as_str().unwrap().to_string(),
                p["partition"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        committed,
        [
            ("orders.eu".to_string(), 0),
            ("orders.eu".to_string(), 1),
            ("orders.us".to_string(), 0)
        ]
    );
    for p in partitions {
        assert_eq!(p["committed_offset"], p["end_offset"], "{p}");
    }
    assert_eq!(consume("cg").stdout, "", "everything was committed");

    // Reset every matched topic, dry run first (the default).
    let dry = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            "cg",
            "--topic-pattern",
            PATTERN,
            "--to-earliest",
            "--json",
        ],
    )
    .ok("reset dry run")
    .json();
    assert_eq!(dry["executed"], false);
    assert_eq!(dry["changes"].as_array().unwrap().len(), 3, "{dry}");
    cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            "cg",
            "--topic-pattern",
            PATTERN,
            "--to-earliest",
            "--execute",
        ],
    )
    .ok("reset by pattern");
    assert_eq!(consume("cg").json_lines().len(), 6);
    let bad = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            "cg",
            "--topic-pattern",
            "(",
            "--to-earliest",
        ],
    );
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--topic-pattern"), "{}", bad.stderr);

    // A following member: a new topic comes in without a restart of the command.
    let member = GroupConsumer::spawn(
        &broker,
        &[
            "consume",
            "--topic-pattern",
            PATTERN,
            "--group",
            "live",
            "--follow",
        ],
        false,
    );
    wait_until("the member printed what was there", || {
        member.lines().len() == 6
    });
    let text = cli(&broker, &["group", "describe", "live"])
        .ok("describe")
        .stdout;
    assert!(text.contains(&format!("pattern {PATTERN}")), "{text}");
    assert!(
        text.contains("orders.eu") && text.contains("orders.us"),
        "{text}"
    );
    assert!(!text.contains("other"), "{text}");
    let json = cli(&broker, &["group", "describe", "live", "--json"])
        .ok("describe")
        .json();
    assert_eq!(json["members"][0]["topic_pattern"], PATTERN);
    let topics: Vec<&str> = json["members"][0]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["orders.eu", "orders.us"]);
    cli(&broker, &["topic", "create", "orders.asia"]).ok("create");
    cli_with_input(&broker, &["produce", "orders.asia"], b"a1\n").ok("produce");
    wait_until("the new topic's message", || {
        member.lines().contains(&"a1".to_string())
    });
    // A deleted topic drops out of the member's assignment; it reads on.
    cli(&broker, &["topic", "delete", "orders.us"]).ok("delete");
    wait_until("orders.us left the group", || {
        let json = cli(&broker, &["group", "describe", "live", "--json"]).json();
        json["members"][0]["topics"].as_array().map(Vec::len) == Some(2)
    });
    broker.restart_on_the_same_ports();
    cli_with_input(&broker, &["produce", "orders.asia"], b"a2\n").ok("produce after restart");
    wait_until("after the restart", || {
        member.lines().contains(&"a2".to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    let (code, stderr, lines) = member.finish(true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        sorted(lines),
        strings(&["a1", "a2", "e1", "e2", "e3", "e4", "u1", "u2"]),
        "{stderr}"
    );
    assert!(
        stderr.contains("the group reads topics orders.asia"),
        "{stderr}"
    );
    assert!(stderr.contains("reconnected"), "{stderr}");
    assert!(
        stderr.contains("topics orders.us are no longer matched"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("delivered again"),
        "no commit failed: {stderr}"
    );
}

/// `tidelog consume --topic-pattern P` (no group) outlives a broker restart: it
/// subscribes again from where each (topic, partition) stood, so nothing is printed
/// twice, and a topic created meanwhile is read from its start.
#[test]
fn cli_pattern_consume_reconnects_where_each_topic_stood() {
    use crate::cli::{GroupConsumer, cli, cli_with_input, wait_until};

    let mut broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "orders.eu", "--partitions", "2"],
    )
    .ok("create");
    cli(&broker, &["topic", "create", "orders.us"]).ok("create");
    cli_with_input(&broker, &["produce", "orders.eu"], b"e1\ne2\n").ok("produce");
    cli_with_input(&broker, &["produce", "orders.us"], b"u1\n").ok("produce");
    let plain = GroupConsumer::spawn(&broker, &["consume", "--topic-pattern", PATTERN], false);
    wait_until("printed what was there", || plain.lines().len() == 3);
    broker.restart_on_the_same_ports();
    cli_with_input(&broker, &["produce", "orders.us"], b"u2\n").ok("produce after restart");
    cli(&broker, &["topic", "create", "orders.asia"]).ok("create");
    cli_with_input(&broker, &["produce", "orders.asia"], b"a1\n").ok("produce");
    wait_until("printed what came after", || plain.lines().len() >= 5);
    std::thread::sleep(Duration::from_millis(300));
    let (code, stderr, lines) = plain.finish(true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        sorted(lines),
        strings(&["a1", "e1", "e2", "u1", "u2"]),
        "{stderr}"
    );
    assert!(stderr.contains("reconnected"), "{stderr}");
}

/// A member that auto-commits reads on when a matched topic is deleted (its stream
/// does not end), and no commit of it brings back the offsets DeleteTopic removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_committing_pattern_member_never_brings_back_a_deleted_topics_offsets() {
    let broker = TestBroker::start();
    for name in ["orders.eu", "orders.us"] {
        broker.create_topic(name, 1, TopicConfig::default()).await;
        publish(&broker, name, 0, 5).await;
    }
    let mut groups = broker.groups().await;
    let request = pattern_member("pa", PATTERN, "");
    let mut member = request.group.clone().unwrap();
    member.auto_commit_interval_ms = 10;
    let mut stream = broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            group: Some(member),
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    let (got, _) = read(&mut stream, 10).await;
    assert_eq!(got.len(), 10);
    let ends = BTreeMap::from([
        (("orders.eu".to_string(), 0), 5),
        (("orders.us".to_string(), 0), 5),
    ]);
    wait_for_commits(&mut groups, "pa", &ends).await;

    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest {
            name: "orders.us".into(),
        })
        .await
        .unwrap();
    publish(&broker, "orders.eu", 0, 3).await;
    let (got, assignment) = read(&mut stream, 3).await;
    assert!(got.iter().all(|(t, _, _)| t == "orders.eu"), "{got:?}");
    let topics: Vec<String> = assignment
        .expect("the rebalance that dropped orders.us")
        .topics
        .into_iter()
        .map(|t| t.topic)
        .collect();
    assert_eq!(topics, ["orders.eu"]);
    // Several auto-commit ticks, then the member leaves (a final commit).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    wait_for_group(&mut groups, "pa", |g| g.state == GroupState::Empty as i32).await;
    let offsets: Vec<(String, u32, u64)> = groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "pa".into(),
            topic: None,
        })
        .await
        .unwrap()
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| (c.topic, c.partition, c.offset))
        .collect();
    assert_eq!(offsets, [("orders.eu".to_string(), 0, 8)]);
}
