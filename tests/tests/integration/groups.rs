//! Consumer groups through the real broker: membership and rebalancing on Subscribe
//! streams, commits and their rules, offsets across a restart, every offset-reset
//! mode, and the refusals while a group has live members.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::reset_offsets_request::{
    AllTopics, ExplicitOffsets, Scope, Spec, ToCurrent, ToEarliest, ToLatest, TopicScope,
};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, Assignment, CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest,
    FetchOffsetsRequest, GroupDescription, GroupMembership, GroupState, ListGroupsRequest, Message,
    OffsetChange, PublishRequest, ResetOffsetsRequest, ResetPolicy, ResetReason, SubscribeRequest,
    SubscribeResponse, TopicConfig, TopicPartitionOffset,
};
use tidelog_tests::{TestBroker, now_ms};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Longest wait for any one event; the suite never sleeps this long when all is well.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `count` messages to one partition (values "p{partition}-{i}"), with
/// timestamps from `timestamps` if given. Returns their offsets.
async fn publish(
    broker: &TestBroker,
    topic: &str,
    partition: u32,
    count: usize,
    timestamps: Option<&dyn Fn(usize) -> i64>,
) -> Vec<u64> {
    let messages = (0..count)
        .map(|i| Message {
            value: format!("p{partition}-{i}").into_bytes().into(),
            partition: Some(partition),
            timestamp_ms: timestamps.map(|f| f(i)),
            ..Default::default()
        })
        .collect();
    let acks = broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish")
        .into_inner()
        .acks;
    acks.into_iter().map(|a| a.offset).collect()
}

fn membership(
    group: &str,
    member_id: &str,
    session_timeout_ms: u64,
    auto_commit_ms: u64,
) -> GroupMembership {
    GroupMembership {
        group_id: group.into(),
        member_id: member_id.into(),
        session_timeout_ms,
        auto_commit_interval_ms: auto_commit_ms,
        client_id: "it".into(),
        handover_timeout_ms: 0,
    }
}

async fn subscribe(
    consumer: &mut ConsumerClient<Channel>,
    topic: &str,
    group: GroupMembership,
    reset_policy: ResetPolicy,
) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
    consumer
        .subscribe(SubscribeRequest {
            topic: topic.into(),
            group: Some(group),
            reset_policy: reset_policy as i32,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next event, failing the test after [`EVENT_TIMEOUT`]. `Err` is the status that
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
    match next_event(stream).await.expect("stream open") {
        Event::Assignment(assignment) => assignment,
        other => panic!("expected an Assignment, got {other:?}"),
    }
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

/// Polls DescribeGroup until `done` holds (or fails after [`EVENT_TIMEOUT`]). A group
/// not found yet (its first member is still joining) is polled again.
async fn wait_for_group(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    done: impl Fn(&GroupDescription) -> bool,
) -> GroupDescription {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let description = match groups
            .describe_group(DescribeGroupRequest {
                group_id: group.into(),
            })
            .await
        {
            Ok(response) => response.into_inner().group,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => panic!("describe group: {status:?}"),
        };
        if let Some(description) = &description
            && done(description)
        {
            return description.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never reached the expected state: {description:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn fetch_offsets(
    groups: &mut GroupsClient<Channel>,
    group: &str,
) -> BTreeMap<(String, u32), u64> {
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
        .map(|o| ((o.topic, o.partition), o.offset))
        .collect()
}

async fn admin_commit(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    offsets: &[(&str, u32, u64)],
) -> Result<(), tonic::Status> {
    groups
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.into(),
            member_id: String::new(),
            generation: None,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| TopicPartitionOffset {
                    topic: (*topic).into(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                    topic_id: 0,
                })
                .collect(),
        })
        .await
        .map(|_| ())
}

async fn member_commit(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    member_id: &str,
    generation: Option<u64>,
    offsets: &[(&str, u32, u64)],
) -> Result<(), tonic::Status> {
    groups
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.into(),
            member_id: member_id.into(),
            generation,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| TopicPartitionOffset {
                    topic: (*topic).into(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                    topic_id: 0,
                })
                .collect(),
        })
        .await
        .map(|_| ())
}

/// What one test consumer saw: every Assignment and every delivered message, tagged
/// with the generation of the Assignment it followed.
#[derive(Debug, Default)]
struct Seen {
    /// (member, generation, partitions)
    assignments: Vec<(String, u64, Vec<u32>)>,
    /// (member, generation, partition, offset)
    deliveries: Vec<(String, u64, u32, u64)>,
}

/// Runs one group member that commits (with its member id and generation) after each
/// batch, as an at-least-once consumer does, recording everything in `seen`.
fn spawn_member(
    mut consumer: ConsumerClient<Channel>,
    mut groups: GroupsClient<Channel>,
    topic: &'static str,
    group: &'static str,
    seen: Arc<Mutex<Seen>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = subscribe(
            &mut consumer,
            topic,
            membership(group, "", 0, 0),
            ResetPolicy::Earliest,
        )
        .await
        .expect("subscribe");
        let mut current: Option<(String, u64)> = None;
        while let Ok(Some(response)) = stream.message().await {
            match response.event.expect("event") {
                Event::Assignment(a) => {
                    seen.lock().unwrap().assignments.push((
                        a.member_id.clone(),
                        a.generation,
                        a.partitions.clone(),
                    ));
                    current = Some((a.member_id, a.generation));
                }
                Event::Batch(batch) => {
                    let (member, generation) =
                        current.clone().expect("messages only after an Assignment");
                    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
                    {
                        let mut seen = seen.lock().unwrap();
                        for m in &batch.messages {
                            seen.deliveries.push((
                                member.clone(),
                                generation,
                                m.partition,
                                m.offset,
                            ));
                            next.insert(m.partition, m.offset + 1);
                        }
                    }
                    let offsets: Vec<(&str, u32, u64)> =
                        next.iter().map(|(p, o)| (topic, *p, *o)).collect();
                    // A stale generation is refused: the new owner re-reads from the
                    // last accepted commit (at-least-once).
                    if let Err(status) =
                        member_commit(&mut groups, group, &member, Some(generation), &offsets).await
                    {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    }
                }
                Event::PositionReset(_) | Event::Positioned(_) | Event::TopicsChanged(_) => {}
            }
        }
    })
}

/// Waits until the union of deliveries covers `expected`.
async fn wait_for_deliveries(seen: &Arc<Mutex<Seen>>, expected: &BTreeSet<(u32, u64)>) {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let delivered: BTreeSet<(u32, u64)> = seen
            .lock()
            .unwrap()
            .deliveries
            .iter()
            .map(|d| (d.2, d.3))
            .collect();
        if expected.is_subset(&delivered) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing deliveries: {:?}",
            expected.difference(&delivered).take(10).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_members_rebalance_when_one_leaves_without_loss_or_double_delivery() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders", 6, TopicConfig::default())
        .await;
    let mut groups = broker.groups().await;
    let mut expected = BTreeSet::new();
    // Messages that wait for the group before it exists.
    for partition in 0..6 {
        for offset in publish(&broker, "orders", partition, 20, None).await {
            expected.insert((partition, offset));
        }
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(spawn_member(
            broker.consumer().await,
            broker.groups().await,
            "orders",
            "g3",
            seen.clone(),
        ));
    }
    let stable = wait_for_group(&mut groups, "g3", |g| {
        g.members.len() == 3 && g.state == GroupState::Stable as i32
    })
    .await;
    let mut owners: Vec<u32> = stable
        .members
        .iter()
        .flat_map(|m| m.partitions.clone())
        .collect();
    owners.sort_unstable();
    assert_eq!(owners, (0..6).collect::<Vec<_>>());
    assert!(
        stable.members.iter().all(|m| m.partitions.len() == 2),
        "balanced: {stable:?}"
    );

    for partition in 0..6 {
        for offset in publish(&broker, "orders", partition, 30, None).await {
            expected.insert((partition, offset));
        }
    }
    wait_for_deliveries(&seen, &expected).await;

    // One member leaves (its stream is cancelled); the other two take its partitions.
    members.remove(1).abort();
    let generation_before = stable.generation;
    let after = wait_for_group(&mut groups, "g3", |g| {
        g.members.len() == 2
            && g.generation > generation_before
            && g.state == GroupState::Stable as i32
    })
    .await;
    let mut owners: Vec<u32> = after
        .members
        .iter()
        .flat_map(|m| m.partitions.clone())
        .collect();
    owners.sort_unstable();
    assert_eq!(owners, (0..6).collect::<Vec<_>>());
    assert!(after.members.iter().all(|m| m.partitions.len() == 3));

    for partition in 0..6 {
        for offset in publish(&broker, "orders", partition, 30, None).await {
            expected.insert((partition, offset));
        }
    }
    wait_for_deliveries(&seen, &expected).await;
    for member in members {
        member.abort();
    }

    let seen = seen.lock().unwrap();
    // No message delivered to two members within one generation.
    let mut by_generation: HashMap<(u64, u32, u64), BTreeSet<&str>> = HashMap::new();
    for (member, generation, partition, offset) in &seen.deliveries {
        by_generation
            .entry((*generation, *partition, *offset))
            .or_default()
            .insert(member);
    }
    for (key, members) in &by_generation {
        assert_eq!(
            members.len(),
            1,
            "{key:?} went to {members:?} in one generation"
        );
    }
    // Assignments of one generation never overlap.
    let mut owner_in_generation: HashMap<(u64, u32), &str> = HashMap::new();
    for (member, generation, partitions) in &seen.assignments {
        for partition in partitions {
            if let Some(other) = owner_in_generation.insert((*generation, *partition), member) {
                assert_eq!(
                    other, member,
                    "partition {partition} assigned twice in generation {generation}"
                );
            }
        }
    }
    // Every message arrived (checked above), and only published ones.
    let delivered: BTreeSet<(u32, u64)> = seen.deliveries.iter().map(|d| (d.2, d.3)).collect();
    assert_eq!(delivered, expected);
}

/// Reads events until `count` messages arrived; returns them and the Assignments seen.
async fn read_messages(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> (Vec<(u32, u64)>, Vec<Assignment>) {
    read_events(stream, count, false).await
}

/// [`read_messages`], passing over the PositionReset events of partitions without a
/// commit.
async fn read_past_resets(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> (Vec<(u32, u64)>, Vec<Assignment>) {
    read_events(stream, count, true).await
}

async fn read_events(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
    resets: bool,
) -> (Vec<(u32, u64)>, Vec<Assignment>) {
    let mut messages = Vec::new();
    let mut assignments = Vec::new();
    while messages.len() < count {
        match next_event(stream).await.expect("stream open") {
            Event::Batch(batch) => {
                messages.extend(batch.messages.iter().map(|m| (m.partition, m.offset)))
            }
            Event::Assignment(assignment) => assignments.push(assignment),
            Event::PositionReset(reset)
                if resets && reset.reason == ResetReason::NoCommittedOffset as i32 => {}
            Event::PositionReset(reset) => panic!("unexpected {reset:?}"),
            Event::Positioned(positioned) => panic!("unexpected {positioned:?}"),
            Event::TopicsChanged(changed) => panic!("unexpected {changed:?}"),
        }
    }
    assert_eq!(messages.len(), count, "no more than expected");
    (messages, assignments)
}

#[tokio::test]
async fn auto_commit_hands_partitions_over_without_loss_or_duplicates() {
    let broker = TestBroker::start();
    broker
        .create_topic("events", 2, TopicConfig::default())
        .await;
    for partition in 0..2 {
        publish(&broker, "events", partition, 50, None).await;
    }
    let mut groups = broker.groups().await;
    let mut consumer = broker.consumer().await;
    let mut delivered: Vec<(u32, u64)> = Vec::new();

    // A alone: both partitions, started by the reset policy (no commits yet).
    let mut a = subscribe(
        &mut consumer,
        "events",
        membership("auto", "", 0, 20),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let first = expect_assignment(&mut a).await;
    assert_eq!(first.partitions, vec![0, 1]);
    let mut resets = 0;
    while delivered.len() < 100 {
        match next_event(&mut a).await.unwrap() {
            Event::Batch(batch) => {
                delivered.extend(batch.messages.iter().map(|m| (m.partition, m.offset)))
            }
            Event::PositionReset(reset) => {
                assert_eq!(
                    (reset.reason, reset.to_offset),
                    (ResetReason::NoCommittedOffset as i32, 0)
                );
                resets += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resets, 2, "each partition started by the reset policy");

    // B joins: A gives up one partition, committing what it sent before B starts it.
    let mut b = subscribe(
        &mut consumer,
        "events",
        membership("auto", "", 0, 20),
        ResetPolicy::Error,
    )
    .await
    .unwrap();
    let b_assignment = expect_assignment(&mut b).await;
    let a_assignment = expect_assignment(&mut a).await;
    assert_eq!(a_assignment.generation, b_assignment.generation);
    assert_eq!(
        a_assignment.partitions.len() + b_assignment.partitions.len(),
        2
    );
    for partition in 0..2 {
        publish(&broker, "events", partition, 10, None).await;
    }
    let (from_a, _) = read_messages(&mut a, 10).await;
    let (from_b, _) = read_messages(&mut b, 10).await;
    assert!(
        from_a
            .iter()
            .all(|(p, _)| a_assignment.partitions.contains(p))
    );
    assert_eq!(
        from_b.first().map(|m| m.1),
        Some(50),
        "B starts where A stopped"
    );
    delivered.extend(from_a);
    delivered.extend(from_b);

    // A leaves: its final commit lets B continue exactly after it.
    drop(a);
    let alone = expect_assignment(&mut b).await;
    assert_eq!(alone.partitions, vec![0, 1]);
    for partition in 0..2 {
        publish(&broker, "events", partition, 5, None).await;
    }
    let (from_b, _) = read_messages(&mut b, 10).await;
    delivered.extend(from_b);
    drop(b);
    let description = wait_for_group(&mut groups, "auto", |g| g.members.is_empty()).await;
    let committed: Vec<Option<u64>> = description
        .lags
        .iter()
        .map(|l| l.committed_offset)
        .collect();
    assert_eq!(
        committed,
        vec![Some(65), Some(65)],
        "final commits on leave"
    );

    let unique: BTreeSet<(u32, u64)> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "no duplicates");
    assert_eq!(
        unique,
        (0..2).flat_map(|p| (0..65).map(move |o| (p, o))).collect()
    );
}

// Multi-threaded: the graceful stop blocks this task while the client's connections
// must still answer the server's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_crash_and_a_graceful_restart() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("durable", 3, TopicConfig::default())
        .await;
    for partition in 0..3 {
        publish(&broker, "durable", partition, 10, None).await;
    }
    let mut groups = broker.groups().await;
    admin_commit(
        &mut groups,
        "keeper",
        &[("durable", 0, 4), ("durable", 1, 10), ("durable", 2, 0)],
    )
    .await
    .unwrap();
    let before = fetch_offsets(&mut groups, "keeper").await;
    drop(groups);

    // A commit is durable when it is answered: kill -9 loses nothing.
    broker.kill9();
    broker.restart();
    let mut groups = broker.groups().await;
    assert_eq!(fetch_offsets(&mut groups, "keeper").await, before);
    let listed = groups
        .list_groups(ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].group_id, "keeper");
    assert_eq!(listed[0].state, GroupState::Empty as i32);

    // A member resumes at the committed offsets (policy ERROR: no reset allowed).
    // Its auto-commit interval is long, so only its final commit stores its position.
    let mut consumer = broker.consumer().await;
    let mut stream = subscribe(
        &mut consumer,
        "durable",
        membership("keeper", "", 0, 60_000),
        ResetPolicy::Error,
    )
    .await
    .unwrap();
    expect_assignment(&mut stream).await;
    let mut first: BTreeMap<u32, u64> = BTreeMap::new();
    let mut received = 0;
    while received < 16 {
        match next_event(&mut stream).await.unwrap() {
            Event::Batch(batch) => {
                for m in batch.messages {
                    first.entry(m.partition).or_insert(m.offset);
                    received += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(first, BTreeMap::from([(0, 4), (2, 0)]));
    let description = describe(&mut groups, "keeper").await;
    let lag: BTreeMap<u32, Option<u64>> = description
        .lags
        .iter()
        .map(|l| (l.partition, l.lag))
        .collect();
    assert_eq!(
        lag,
        BTreeMap::from([(0, Some(6)), (1, Some(0)), (2, Some(10))])
    );

    // A graceful stop ends the member's stream with UNAVAILABLE after its final
    // commit of everything it sent.
    broker.stop();
    let status = next_event(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    broker.restart();
    let mut groups = broker.groups().await;
    let after: Vec<u64> = fetch_offsets(&mut groups, "keeper")
        .await
        .into_values()
        .collect();
    assert_eq!(after, vec![10, 10, 10]);
}

/// Runs one reset (dry run, then execute) and checks both against `expected`
/// (partition -> (current, new)), none of them clamped; returns the offsets after the
/// execute.
async fn reset_both_ways(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    scope: Option<Scope>,
    spec: Spec,
    expected: &[(u32, Option<u64>, u64)],
) -> BTreeMap<(String, u32), u64> {
    reset_clamped(groups, group, scope, spec, expected, &[]).await
}

/// [`reset_both_ways`] where the partitions of `clamped` (partition -> the offset the
/// mode asked for) were clamped to the log, and say so (`clamped_from`).
async fn reset_clamped(
    groups: &mut GroupsClient<Channel>,
    group: &str,
    scope: Option<Scope>,
    spec: Spec,
    expected: &[(u32, Option<u64>, u64)],
    clamped: &[(u32, i64)],
) -> BTreeMap<(String, u32), u64> {
    let before = fetch_offsets(groups, group).await;
    let request = ResetOffsetsRequest {
        group_id: group.into(),
        scope: scope.clone(),
        spec: Some(spec.clone()),
        execute: false,
    };
    let dry = groups
        .reset_offsets(request.clone())
        .await
        .unwrap()
        .into_inner();
    // Every change names the topic "resets" by its id (one topic, one id, never 0).
    let topic_id = dry.changes.first().map_or(0, |c| c.topic_id);
    assert!(
        dry.changes.is_empty() || topic_id != 0,
        "changes carry the topic's id"
    );
    let expected_changes: Vec<OffsetChange> = expected
        .iter()
        .map(|(partition, current, new)| OffsetChange {
            topic: "resets".into(),
            partition: *partition,
            current_offset: *current,
            new_offset: *new,
            clamped_from: clamped
                .iter()
                .find(|(p, _)| p == partition)
                .map(|&(_, asked)| asked),
            topic_id,
        })
        .collect();
    assert_eq!(dry.changes, expected_changes, "dry run of {spec:?}");
    assert!(!dry.executed);
    assert_eq!(
        fetch_offsets(groups, group).await,
        before,
        "a dry run changes nothing"
    );

    let done = groups
        .reset_offsets(ResetOffsetsRequest {
            execute: true,
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.executed);
    assert_eq!(done.changes, expected_changes, "execute of {spec:?}");
    let after = fetch_offsets(groups, group).await;
    for (partition, _, new) in expected {
        assert_eq!(
            after.get(&("resets".to_string(), *partition)),
            Some(new),
            "{spec:?}"
        );
    }
    after
}

#[tokio::test]
async fn every_reset_mode_with_dry_run_and_execute() {
    let broker = TestBroker::start();
    broker
        .create_topic("resets", 3, TopicConfig::default())
        .await;
    // Ten messages per partition, one minute apart, the last one a minute ago.
    let base = now_ms() - 10 * 60_000;
    let stamp = move |i: usize| base + i as i64 * 60_000;
    for partition in 0..3 {
        publish(&broker, "resets", partition, 10, Some(&stamp)).await;
    }
    let mut groups = broker.groups().await;
    let g = "resetter";
    admin_commit(&mut groups, g, &[("resets", 0, 5), ("resets", 1, 3)])
        .await
        .unwrap();
    let topic = |partitions: &[u32]| {
        Some(Scope::Topic(TopicScope {
            topic: "resets".into(),
            partitions: partitions.to_vec(),
        }))
    };

    // to-current lists the commits and leaves out the uncommitted partition 2.
    reset_both_ways(
        &mut groups,
        g,
        topic(&[]),
        Spec::ToCurrent(ToCurrent {}),
        &[(0, Some(5), 5), (1, Some(3), 3)],
    )
    .await;
    // shift-by moves the commits, clamped to the log; partition 2 still left out.
    // Partition 1 goes below offset 0: it says what was asked, not 0 (the log starts
    // at 0, so only the sign shows the clamp).
    reset_clamped(
        &mut groups,
        g,
        topic(&[]),
        Spec::ShiftBy(-4),
        &[(0, Some(5), 1), (1, Some(3), 0)],
        &[(1, -1)],
    )
    .await;
    reset_both_ways(
        &mut groups,
        g,
        topic(&[0, 1]),
        Spec::ShiftBy(6),
        &[(0, Some(1), 7), (1, Some(0), 6)],
    )
    .await;
    reset_clamped(
        &mut groups,
        g,
        topic(&[0]),
        Spec::ShiftBy(100),
        &[(0, Some(7), 10)],
        &[(0, 107)],
    )
    .await;
    // to-earliest and to-latest cover uncommitted partitions too.
    reset_both_ways(
        &mut groups,
        g,
        topic(&[]),
        Spec::ToEarliest(ToEarliest {}),
        &[(0, Some(10), 0), (1, Some(6), 0), (2, None, 0)],
    )
    .await;
    reset_both_ways(
        &mut groups,
        g,
        topic(&[1, 2]),
        Spec::ToLatest(ToLatest {}),
        &[(1, Some(0), 10), (2, Some(0), 10)],
    )
    .await;
    // to-offset, clamped to [log start, end].
    reset_both_ways(
        &mut groups,
        g,
        topic(&[0, 1]),
        Spec::ToOffset(4),
        &[(0, Some(0), 4), (1, Some(10), 4)],
    )
    .await;
    reset_clamped(
        &mut groups,
        g,
        topic(&[2]),
        Spec::ToOffset(1_000),
        &[(2, Some(10), 10)],
        &[(2, 1_000)],
    )
    .await;
    // to-datetime: the first message at or after the time; the end if none.
    reset_both_ways(
        &mut groups,
        g,
        topic(&[0]),
        Spec::ToDatetimeMs(stamp(6) - 1),
        &[(0, Some(4), 6)],
    )
    .await;
    reset_both_ways(
        &mut groups,
        g,
        topic(&[1]),
        Spec::ToDatetimeMs(stamp(9) + 1),
        &[(1, Some(4), 10)],
    )
    .await;
    reset_both_ways(
        &mut groups,
        g,
        topic(&[2]),
        Spec::ToDatetimeMs(0),
        &[(2, Some(10), 0)],
    )
    .await;
    // by-duration: now - 3.5 minutes lies between message 6 (4 minutes old) and
    // message 7 (3 minutes old): the first at or after it is 7.
    reset_both_ways(
        &mut groups,
        g,
        topic(&[0]),
        Spec::ByDurationMs(210_000),
        &[(0, Some(6), 7)],
    )
    .await;
    // all_topics: every partition with a commit.
    reset_clamped(
        &mut groups,
        g,
        Some(Scope::AllTopics(AllTopics {})),
        Spec::ShiftBy(-1),
        &[(0, Some(7), 6), (1, Some(10), 9), (2, Some(0), 0)],
        &[(2, -1)],
    )
    .await;
    // explicit (from-file): offsets and metadata per partition, clamped.
    reset_clamped(
        &mut groups,
        g,
        None,
        Spec::Explicit(ExplicitOffsets {
            offsets: vec![
                TopicPartitionOffset {
                    topic: "resets".into(),
                    partition: 2,
                    offset: 8,
                    metadata: "from-file".into(),
                    topic_id: 0,
                },
                TopicPartitionOffset {
                    topic: "resets".into(),
                    partition: 0,
                    offset: 99,
                    metadata: String::new(),
                    topic_id: 0,
                },
            ],
        }),
        &[(0, Some(6), 10), (2, Some(0), 8)],
        &[(0, 99)],
    )
    .await;
    let fetched = groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: g.into(),
            topic: Some("resets".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(
        fetched.iter().find(|o| o.partition == 2).unwrap().metadata,
        "from-file"
    );

    // DescribeGroup agrees.
    let description = describe(&mut groups, g).await;
    let committed: Vec<(u32, Option<u64>, Option<u64>)> = description
        .lags
        .iter()
        .map(|l| (l.partition, l.committed_offset, l.lag))
        .collect();
    assert_eq!(
        committed,
        vec![
            (0, Some(10), Some(0)),
            (1, Some(9), Some(1)),
            (2, Some(8), Some(2))
        ]
    );

    // A group that does not exist yet is created by an executed reset.
    groups
        .reset_offsets(ResetOffsetsRequest {
            group_id: "fresh".into(),
            scope: topic(&[1]),
            spec: Some(Spec::ToOffset(3)),
            execute: true,
        })
        .await
        .unwrap();
    assert_eq!(
        fetch_offsets(&mut groups, "fresh").await,
        BTreeMap::from([(("resets".to_string(), 1), 3)])
    );

    // Malformed requests.
    let bad = |scope: Option<Scope>, spec: Option<Spec>| ResetOffsetsRequest {
        group_id: g.into(),
        scope,
        spec,
        execute: false,
    };
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(groups.reset_offsets(bad(topic(&[]), None)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            groups
                .reset_offsets(bad(None, Some(Spec::ToLatest(ToLatest {}))))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            groups
                .reset_offsets(bad(
                    topic(&[]),
                    Some(Spec::Explicit(ExplicitOffsets { offsets: vec![] }))
                ))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            groups
                .reset_offsets(bad(topic(&[7]), Some(Spec::ToLatest(ToLatest {}))))
                .await
        ),
        Code::InvalidArgument
    );
    let unknown = Some(Scope::Topic(TopicScope {
        topic: "nope".into(),
        partitions: vec![],
    }));
    assert_eq!(
        code(
            groups
                .reset_offsets(bad(unknown, Some(Spec::ToLatest(ToLatest {}))))
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn live_members_block_reset_delete_and_admin_commits_until_their_session_ends() {
    let broker = TestBroker::start();
    broker.create_topic("live", 2, TopicConfig::default()).await;
    publish(&broker, "live", 0, 3, None).await;
    let mut groups = broker.groups().await;
    admin_commit(&mut groups, "busy", &[("live", 0, 1)])
        .await
        .unwrap();

    let mut consumer = broker.consumer().await;
    let mut stream = subscribe(
        &mut consumer,
        "live",
        membership("busy", "", 300, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    expect_assignment(&mut stream).await;

    let scope = Some(Scope::Topic(TopicScope {
        topic: "live".into(),
        partitions: vec![],
    }));
    let reset = |execute| ResetOffsetsRequest {
        group_id: "busy".into(),
        scope: scope.clone(),
        spec: Some(Spec::ToEarliest(ToEarliest {})),
        execute,
    };
    let status = groups.reset_offsets(reset(true)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // A dry run is always allowed.
    groups.reset_offsets(reset(false)).await.unwrap();
    let status = groups
        .delete_group(DeleteGroupRequest {
            group_id: "busy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = admin_commit(&mut groups, "busy", &[("live", 0, 2)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The stream ends; the session timeout keeps the member a little longer.
    drop(stream);
    let kept = describe(&mut groups, "busy").await;
    assert_eq!(
        kept.members.len(),
        1,
        "kept by its session timeout: {kept:?}"
    );
    let description = wait_for_group(&mut groups, "busy", |g| g.members.is_empty()).await;
    assert_eq!(description.state, GroupState::Empty as i32);

    groups.reset_offsets(reset(true)).await.unwrap();
    groups
        .delete_group(DeleteGroupRequest {
            group_id: "busy".into(),
        })
        .await
        .unwrap();
    let status = groups
        .delete_group(DeleteGroupRequest {
            group_id: "busy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = groups
        .describe_group(DescribeGroupRequest {
            group_id: "busy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(fetch_offsets(&mut groups, "busy").await.is_empty());
}

#[tokio::test]
async fn commits_from_a_stale_generation_or_for_foreign_partitions_are_refused() {
    let broker = TestBroker::start();
    broker.create_topic("gens", 4, TopicConfig::default()).await;
    publish(&broker, "gens", 0, 5, None).await;
    let mut groups = broker.groups().await;
    let mut consumer = broker.consumer().await;

    let mut a = subscribe(
        &mut consumer,
        "gens",
        membership("gen", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let first = expect_assignment(&mut a).await;
    assert_eq!(first.partitions, vec![0, 1, 2, 3]);
    let mut b = subscribe(
        &mut consumer,
        "gens",
        membership("gen", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let b_assignment = expect_assignment(&mut b).await;
    // a sees the new generation once its old partitions are stopped.
    let second = loop {
        match next_event(&mut a).await.unwrap() {
            Event::Assignment(assignment) => break assignment,
            _ => continue,
        }
    };
    assert_eq!(second.generation, b_assignment.generation);
    assert!(second.generation > first.generation);
    let mut all: Vec<u32> = [second.partitions.clone(), b_assignment.partitions.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3]);

    let own = second.partitions[0];
    let foreign = b_assignment.partitions[0];
    let stale = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(first.generation),
        &[("gens", own, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("stale"), "{}", stale.message());
    // A generation ahead of the group's was never given out: not "stale", rejoin.
    let ahead = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(second.generation + 100),
        &[("gens", own, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(ahead.code(), Code::FailedPrecondition);
    assert!(
        ahead.message().contains(&format!(
            "generation {} of group \"gen\" is ahead of the group's current generation {}",
            second.generation + 100,
            second.generation
        )),
        "{}",
        ahead.message()
    );
    assert!(!ahead.message().contains("stale"), "{}", ahead.message());
    assert!(ahead.message().contains("rejoin"), "{}", ahead.message());
    let not_owned = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(second.generation),
        &[("gens", foreign, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(not_owned.code(), Code::FailedPrecondition);
    let unknown = member_commit(
        &mut groups,
        "gen",
        "nobody",
        Some(second.generation),
        &[("gens", own, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    let no_generation = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        None,
        &[("gens", own, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(no_generation.code(), Code::InvalidArgument);
    let beyond_end = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(second.generation),
        &[("gens", own, 1_000)],
    )
    .await
    .unwrap_err();
    assert_eq!(beyond_end.code(), Code::OutOfRange);
    let bad_partition = member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(second.generation),
        &[("gens", 9, 0)],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_partition.code(), Code::InvalidArgument);
    assert!(
        bad_partition
            .message()
            .contains("topic \"gens\" has 4 partitions (0-3); there is no partition 9"),
        "{}",
        bad_partition.message()
    );
    // One partition: said as such, not as a range.
    broker
        .create_topic("single", 1, TopicConfig::default())
        .await;
    let status = admin_commit(&mut groups, "tool", &[("single", 99, 0)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("topic \"single\" has 1 partition (0); there is no partition 99"),
        "{}",
        status.message()
    );
    member_commit(
        &mut groups,
        "gen",
        &first.member_id,
        Some(second.generation),
        &[("gens", own, 0)],
    )
    .await
    .unwrap();
    member_commit(
        &mut groups,
        "gen",
        &b_assignment.member_id,
        Some(second.generation),
        &[("gens", foreign, 0)],
    )
    .await
    .unwrap();
    assert_eq!(fetch_offsets(&mut groups, "gen").await.len(), 2);
}

/// Hunt findings: `DescribeGroup` of a group without live members left out the
/// partitions it never committed (so its lag hid their messages), and showed a member
/// whose consumer was killed like a connected one until its session timeout ended.
#[tokio::test]
async fn describe_lists_uncommitted_partitions_and_disconnected_members() {
    let broker = TestBroker::start();
    broker
        .create_topic("lagging", 2, TopicConfig::default())
        .await;
    publish(&broker, "lagging", 0, 20, None).await;
    publish(&broker, "lagging", 1, 20, None).await;
    let mut groups = broker.groups().await;
    admin_commit(&mut groups, "quiet", &[("lagging", 0, 3)])
        .await
        .unwrap();

    let empty = describe(&mut groups, "quiet").await;
    assert_eq!(empty.state, GroupState::Empty as i32);
    let rows: Vec<_> = empty
        .lags
        .iter()
        .map(|l| (l.partition, l.committed_offset, l.lag, l.lag_from_log_start))
        .collect();
    assert_eq!(
        rows,
        vec![(0, Some(3), Some(17), None), (1, None, None, Some(20))],
        "{empty:?}"
    );

    // One member stays connected; another, with a session timeout, loses its
    // connection as a killed process does (its own channel goes away).
    let mut stays = broker.consumer().await;
    let _connected = subscribe(
        &mut stays,
        "lagging",
        membership("quiet", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let kept_id = {
        let mut killed = broker.consumer().await;
        let mut stream = subscribe(
            &mut killed,
            "lagging",
            membership("quiet", "", 60_000, 0),
            ResetPolicy::Earliest,
        )
        .await
        .unwrap();
        expect_assignment(&mut stream).await.member_id
    };
    let described = wait_for_group(&mut groups, "quiet", |g| {
        g.members.iter().any(|m| m.disconnected)
    })
    .await;
    assert_eq!(described.members.len(), 2, "{described:?}");
    for member in &described.members {
        if member.member_id == kept_id {
            assert!(member.disconnected);
            let left = member.session_expires_in_ms.expect("time left");
            assert!(left > 50_000 && left <= 60_000, "{member:?}");
        } else {
            assert!(!member.disconnected, "{member:?}");
            assert_eq!(member.session_expires_in_ms, None, "{member:?}");
        }
    }
    // Both partitions still listed, with a member each.
    assert_eq!(described.lags.len(), 2, "{described:?}");
}

#[tokio::test]
async fn a_reconnect_keeps_the_partitions_and_a_second_stream_takes_over() {
    let broker = TestBroker::start();
    broker
        .create_topic("sticky", 3, TopicConfig::default())
        .await;
    let mut groups = broker.groups().await;
    let mut consumer = broker.consumer().await;
    let mut first = subscribe(
        &mut consumer,
        "sticky",
        membership("s", "", 5_000, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap();
    let assignment = expect_assignment(&mut first).await;

    // Same member id on a second stream: the first ends with ABORTED, no rebalance.
    let mut second = subscribe(
        &mut consumer,
        "sticky",
        membership("s", &assignment.member_id, 5_000, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap();
    let again = expect_assignment(&mut second).await;
    assert_eq!(
        (again.member_id.as_str(), again.generation),
        (assignment.member_id.as_str(), assignment.generation)
    );
    assert_eq!(again.partitions, assignment.partitions);
    loop {
        match next_event(&mut first).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                break;
            }
            // PositionReset events (no commits yet, policy LATEST) may come first.
            Ok(Event::PositionReset(reset)) => {
                assert_eq!(reset.reason, ResetReason::NoCommittedOffset as i32)
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }

    // The stream drops; a reconnect within the session timeout keeps everything.
    drop(second);
    let mut third = subscribe(
        &mut consumer,
        "sticky",
        membership("s", &assignment.member_id, 5_000, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap();
    let kept = expect_assignment(&mut third).await;
    assert_eq!(
        (kept.generation, kept.partitions.clone()),
        (assignment.generation, assignment.partitions.clone())
    );
    let description = describe(&mut groups, "s").await;
    assert_eq!(description.members.len(), 1);
    assert_eq!(description.members[0].client_id, "it");
    assert!(
        description.members[0]
            .client_address
            .starts_with("127.0.0.1:"),
        "{description:?}"
    );

    // An unknown member id is a first join with a new id.
    let mut other = subscribe(
        &mut consumer,
        "sticky",
        membership("s", "made-up", 0, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap();
    let fresh = expect_assignment(&mut other).await;
    assert_ne!(fresh.member_id, "made-up");
    assert!(fresh.generation > assignment.generation);
}

#[tokio::test]
async fn reset_policy_applies_to_partitions_without_a_commit() {
    let broker = TestBroker::start();
    broker
        .create_topic("policy", 1, TopicConfig::default())
        .await;
    publish(&broker, "policy", 0, 4, None).await;
    let mut consumer = broker.consumer().await;

    let mut error = subscribe(
        &mut consumer,
        "policy",
        membership("strict", "", 0, 0),
        ResetPolicy::Error,
    )
    .await
    .unwrap();
    expect_assignment(&mut error).await;
    let status = next_event(&mut error).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let mut latest = subscribe(
        &mut consumer,
        "policy",
        membership("tail", "", 0, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap();
    expect_assignment(&mut latest).await;
    match next_event(&mut latest).await.unwrap() {
        Event::PositionReset(reset) => {
            assert_eq!(reset.reason, ResetReason::NoCommittedOffset as i32);
            assert_eq!((reset.from_offset, reset.to_offset), (None, 4));
        }
        other => panic!("unexpected {other:?}"),
    }
    publish(&broker, "policy", 0, 1, None).await;
    match next_event(&mut latest).await.unwrap() {
        Event::Batch(batch) => assert_eq!(batch.messages[0].offset, 4),
        other => panic!("unexpected {other:?}"),
    }

    // Group streams take neither partitions nor a start position.
    let status = consumer
        .subscribe(SubscribeRequest {
            topic: "policy".into(),
            partitions: vec![0],
            group: Some(membership("tail", "", 0, 0)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = subscribe(
        &mut consumer,
        "missing",
        membership("tail", "", 0, 0),
        ResetPolicy::Latest,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_partition_kept_through_a_rebalance_goes_on_where_the_stream_stood() {
    // The .proto's Assignment: partitions new to a member start from the committed
    // offsets; one it keeps is not delivered again from them (here: none committed).
    let broker = TestBroker::start();
    broker.create_topic("kept", 2, TopicConfig::default()).await;
    publish(&broker, "kept", 0, 5, None).await;
    publish(&broker, "kept", 1, 5, None).await;
    let mut consumer = broker.consumer().await;
    let mut first = subscribe(
        &mut consumer,
        "kept",
        membership("k", "", 3_000, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    assert_eq!(expect_assignment(&mut first).await.partitions.len(), 2);
    let (read, _) = read_past_resets(&mut first, 10).await;
    assert_eq!(read.len(), 10, "{read:?}");

    let mut second = subscribe(
        &mut consumer,
        "kept",
        membership("k", "", 3_000, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let theirs = expect_assignment(&mut second).await;
    assert_eq!(theirs.partitions.len(), 1, "{theirs:?}");
    let moved = theirs.partitions[0];
    let kept = 1 - moved;
    // The partition that moved starts from the (absent) commit: all 5 again.
    let (read, _) = read_past_resets(&mut second, 5).await;
    assert_eq!(read, (0..5).map(|o| (moved, o)).collect::<Vec<_>>());

    // The first member's next message on the partition it kept is the new one.
    publish(&broker, "kept", kept, 1, None).await;
    let (read, assignments) = read_past_resets(&mut first, 1).await;
    assert_eq!(
        read,
        vec![(kept, 5)],
        "nothing delivered twice on the stream"
    );
    let mine = &assignments
        .last()
        .expect("the rebalance's Assignment came first")
        .partitions;
    assert_eq!(mine, &vec![kept]);
}

#[tokio::test]
async fn a_member_that_stops_reading_does_not_hold_up_a_rebalance() {
    let broker = TestBroker::start();
    broker
        .create_topic("backlog", 2, TopicConfig::default())
        .await;
    // 2 MiB per partition: far more than the stream's buffers hold.
    let value = vec![7u8; 1024];
    for partition in 0..2 {
        for _ in 0..4 {
            let messages = (0..512)
                .map(|_| Message {
                    value: value.clone().into(),
                    partition: Some(partition),
                    ..Default::default()
                })
                .collect();
            broker
                .publisher()
                .await
                .publish(PublishRequest {
                    topic: "backlog".into(),
                    messages,
                    ack: AckLevel::Durable as i32,
                })
                .await
                .unwrap();
        }
    }
    let mut consumer = broker.consumer().await;
    let mut slow = subscribe(
        &mut consumer,
        "backlog",
        membership("stall", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let first = expect_assignment(&mut slow).await;
    assert_eq!(first.partitions, vec![0, 1]);

    // `slow` reads nothing more; a second member still gets its partition at once.
    let mut other_consumer = broker.consumer().await;
    let mut fast = subscribe(
        &mut other_consumer,
        "backlog",
        membership("stall", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let fast_assignment = expect_assignment(&mut fast).await;
    assert_eq!(fast_assignment.partitions.len(), 1);
    let taken = fast_assignment.partitions[0];
    let mut fast_count = 0;
    while fast_count < 2048 {
        match next_event(&mut fast).await.unwrap() {
            Event::Batch(batch) => {
                assert!(batch.messages.iter().all(|m| m.partition == taken));
                fast_count += batch.messages.len();
            }
            Event::PositionReset(reset) => assert_eq!(reset.partition, taken),
            other => panic!("unexpected {other:?}"),
        }
    }

    // The slow member's backlog ends with its new Assignment; after it, only its
    // remaining partition. How much of the kept partition the stream's buffers held
    // before the Assignment depends on timing (all of it, on a loaded machine), so
    // reading goes on until both the whole partition and the Assignment arrived.
    let mut after_assignment = false;
    let mut kept_count = 0;
    while kept_count < 2048 || !after_assignment {
        match next_event(&mut slow).await.unwrap() {
            Event::Assignment(a) => {
                assert_eq!(a.generation, fast_assignment.generation);
                assert_eq!(a.partitions, vec![1 - taken]);
                after_assignment = true;
            }
            Event::Batch(batch) => {
                for m in &batch.messages {
                    if after_assignment {
                        assert_ne!(m.partition, taken, "revoked partition after the Assignment");
                    }
                    if m.partition != taken {
                        kept_count += 1;
                    }
                }
            }
            Event::PositionReset(_) => {}
            Event::Positioned(p) => panic!("unexpected {p:?}"),
            Event::TopicsChanged(t) => panic!("unexpected {t:?}"),
        }
    }
    assert!(after_assignment);
}

/// The first messages a member receives, skipping other events, until it has `count`.
async fn first_messages(
    stream: &mut Streaming<SubscribeResponse>,
    count: usize,
) -> Vec<(u32, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        if let Event::Batch(batch) = next_event(stream).await.expect("stream open") {
            seen.extend(batch.messages.iter().map(|m| (m.partition, m.offset)));
        }
    }
    seen
}

/// A member that commits itself and asked for a handover window keeps a partition a
/// rebalance takes from it until it commits in the new generation: it may commit that
/// partition then, and its next owner starts right after the commit. Without a commit
/// the window runs out and the next owner starts anyway; an empty commit is the
/// member's way to end the window with nothing to commit.
#[tokio::test]
async fn a_handover_window_lets_a_member_commit_what_a_rebalance_takes() {
    let broker = TestBroker::start();
    broker
        .create_topic("window", 2, TopicConfig::default())
        .await;
    for partition in 0..2 {
        publish(&broker, "window", partition, 10, None).await;
    }
    let mut groups = broker.groups().await;

    // Commit inside the window.
    let mut windowed = membership("win", "", 0, 0);
    windowed.handover_timeout_ms = 60_000;
    let mut a = subscribe(
        &mut broker.consumer().await,
        "window",
        windowed.clone(),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let first = expect_assignment(&mut a).await;
    assert_eq!(first.partitions, vec![0, 1]);
    first_messages(&mut a, 20).await;
    let mut b = subscribe(
        &mut broker.consumer().await,
        "window",
        membership("win", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let b_assignment = expect_assignment(&mut b).await;
    let second = expect_assignment(&mut a).await;
    assert_eq!(second.generation, b_assignment.generation);
    let taken = b_assignment.partitions[0];
    assert_eq!(second.partitions, vec![1 - taken]);
    // The window is open: the new owner reads nothing of the partition yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.message())
            .await
            .is_err(),
        "the new owner started inside the handover window"
    );
    // A commits the partition it lost, in the new generation (the old one is stale).
    member_commit(
        &mut groups,
        "win",
        &first.member_id,
        Some(second.generation),
        &[("window", taken, 7), ("window", 1 - taken, 10)],
    )
    .await
    .expect("a commit of a partition kept in the handover window");
    // ... which hands it over: B starts right after A's commit.
    assert_eq!(
        first_messages(&mut b, 3).await[..3],
        [(taken, 7), (taken, 8), (taken, 9)]
    );
    let gone = member_commit(
        &mut groups,
        "win",
        &first.member_id,
        Some(second.generation),
        &[("window", taken, 9)],
    )
    .await
    .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    drop((a, b));

    // No commit: the window runs out and the next owner starts anyway.
    let mut short = membership("short", "", 0, 0);
    short.handover_timeout_ms = 500;
    let mut c = subscribe(
        &mut broker.consumer().await,
        "window",
        short,
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let c_first = expect_assignment(&mut c).await;
    first_messages(&mut c, 20).await;
    let joined = tokio::time::Instant::now();
    let mut d = subscribe(
        &mut broker.consumer().await,
        "window",
        membership("short", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let d_assignment = expect_assignment(&mut d).await;
    let d_first = first_messages(&mut d, 1).await;
    assert_eq!(d_first[0], (d_assignment.partitions[0], 0));
    assert!(
        joined.elapsed() >= Duration::from_millis(400),
        "the window of 500 ms ended after {:?}",
        joined.elapsed()
    );

    // An empty commit: only from a member, in its current generation.
    let c_second = expect_assignment(&mut c).await;
    assert!(c_second.generation > c_first.generation);
    member_commit(
        &mut groups,
        "short",
        &c_first.member_id,
        Some(c_second.generation),
        &[],
    )
    .await
    .expect("an empty commit from a member");
    let stale = member_commit(
        &mut groups,
        "short",
        &c_first.member_id,
        Some(c_first.generation),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let anonymous = admin_commit(&mut groups, "short", &[]).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::InvalidArgument);
}

/// A partition a rebalance takes from a member and gives back to it before its
/// handover window ends starts again at the group's committed offset, as any grant
/// does: the member saw the Assignment that took it away and dropped what it had
/// received of it and not processed. It used to be read on from where the broker
/// had stopped sending it, so what lay between the commit and there was never
/// delivered to the member again, and its next commits went past it.
#[tokio::test]
async fn a_partition_given_back_inside_its_handover_window_starts_at_the_commit() {
    let broker = TestBroker::start();
    broker.create_topic("back", 2, TopicConfig::default()).await;
    for partition in 0..2 {
        publish(&broker, "back", partition, 10, None).await;
    }
    let mut groups = broker.groups().await;
    let mut windowed = membership("back", "", 0, 0);
    windowed.handover_timeout_ms = 60_000;
    let mut a = subscribe(
        &mut broker.consumer().await,
        "back",
        windowed,
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let first = expect_assignment(&mut a).await;
    assert_eq!(first.partitions, vec![0, 1]);
    // A received every message and has processed the first four of each partition.
    first_messages(&mut a, 20).await;
    member_commit(
        &mut groups,
        "back",
        &first.member_id,
        Some(first.generation),
        &[("back", 0, 4), ("back", 1, 4)],
    )
    .await
    .expect("A's commit");
    // B joins and takes a partition, which the broker keeps for A's commit.
    let b = subscribe(
        &mut broker.consumer().await,
        "back",
        membership("back", "", 0, 0),
        ResetPolicy::Earliest,
    )
    .await
    .unwrap();
    let second = expect_assignment(&mut a).await;
    assert_eq!(second.partitions.len(), 1);
    let taken = 1 - second.partitions[0];
    // A drops what it received of the partition taken and did not process. B leaves
    // before A commits: the partition comes back to A.
    drop(b);
    let third = expect_assignment(&mut a).await;
    assert!(third.generation > second.generation);
    assert_eq!(third.partitions, vec![0, 1]);
    publish(&broker, "back", taken, 1, None).await;
    let mut again = Vec::new();
    while again.last() != Some(&(taken, 10)) {
        again.extend(first_messages(&mut a, 1).await);
    }
    assert_eq!(
        again,
        (4..=10).map(|offset| (taken, offset)).collect::<Vec<_>>(),
        "the partition given back (committed at 4, sent up to 9) did not start at the commit"
    );
}

/// With a group the broker picks the partitions and where each starts: Subscribe and
/// SubscribeBatches refuse every field that would pick them instead, the same way.
#[tokio::test]
async fn both_subscribe_forms_refuse_partition_choices_with_a_group() {
    use tidelog_proto::v1::StartPosition;
    use tidelog_proto::v1::start_position::{Earliest, Position};
    use tidelog_proto::v1::subscribe_request::PartitionStart;

    let broker = TestBroker::start();
    broker
        .create_topic("chosen", 2, TopicConfig::default())
        .await;
    let with_group = |change: &dyn Fn(&mut SubscribeRequest)| {
        let mut request = SubscribeRequest {
            topic: "chosen".into(),
            group: Some(GroupMembership {
                group_id: "g".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        change(&mut request);
        request
    };
    type Change<'a> = &'a dyn Fn(&mut SubscribeRequest);
    let cases: [(&str, Change); 5] = [
        ("partitions", &|r| r.partitions = vec![1]),
        ("start", &|r| {
            r.start = Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            })
        }),
        ("partition_starts", &|r| {
            r.partition_starts = vec![PartitionStart {
                partition: 1,
                offset: 0,
                topic: String::new(),
                topic_id: 0,
            }]
        }),
        ("send_positioned", &|r| r.send_positioned = true),
        ("follow_partitions_from", &|r| {
            r.partition_starts = vec![PartitionStart {
                partition: 0,
                offset: 0,
                topic: String::new(),
                topic_id: 0,
            }];
            r.follow_partitions_from = Some(1);
        }),
    ];
    let mut consumer = broker.consumer().await;
    for (field, change) in cases {
        let refused = consumer
            .subscribe(with_group(change))
            .await
            .expect_err(field);
        let batches = consumer
            .subscribe_batches(with_group(change))
            .await
            .expect_err(field);
        for status in [refused, batches] {
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert!(
                status.message().contains("must be unset with a group")
                    && status.message().contains(field),
                "{field}: {status:?}"
            );
        }
    }
    // The group itself is fine: a plain member of it starts.
    let member = consumer
        .subscribe_batches(with_group(&|_| {}))
        .await
        .expect("a member with nothing chosen starts");
    drop(member);
}
