//! Requests that break every rule of the API, through the real gRPC port: each gets
//! the status code the proto documents for it (issue 6).
//!
//! The refused requests are a table, [`refused_requests`]: each [`Case`] has a name,
//! the [`Call`] to make and the code expected. They all run in one loop that names
//! every case answered otherwise, so one run shows every broken case. Extreme but
//! legal requests, which must be accepted, are checked after the table.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::reset_offsets_request::{
    ExplicitOffsets, Scope, Spec, ToEarliest, TopicScope,
};
use tidelog_proto::v1::start_position::Position;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, CommitOffsetsRequest, CreateTopicRequest,
    DeleteGroupRequest, DeleteTopicRequest, DescribeGroupRequest, DescribeTopicRequest,
    FetchOffsetsRequest, FetchRequest, FsyncPolicy, GroupMembership, Header, Message,
    PublishRequest, ResetOffsetsRequest, ResetPolicy, ResetReason, StartPosition, SubscribeRequest,
    TopicConfig, TopicConfigUpdate, TopicPartitionOffset, fsync_policy::Policy,
};
use tidelog_tests::{TestBroker, create_topic, describe_topic};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{
    Bystander, assert_no_panic, assert_same, consumer, fetch, next_event, rss_mib,
};

/// One request the broker must refuse, with the code the proto documents for it.
struct Case {
    /// What the request breaks; names the case in a failure.
    name: String,
    call: Call,
    code: Code,
}

fn case(name: impl Into<String>, call: Call, code: Code) -> Case {
    Case {
        name: name.into(),
        call,
        code,
    }
}

/// A request to make, one variant per RPC. The cases use topic "bad" (2 partitions,
/// `max_message_bytes` 1024) and names that exist nowhere ("nope").
enum Call {
    CreateTopic(CreateTopicRequest),
    AlterTopicConfig(AlterTopicConfigRequest),
    DescribeTopic(DescribeTopicRequest),
    DeleteTopic(DeleteTopicRequest),
    Publish(PublishRequest),
    Fetch(FetchRequest),
    /// Answered by the stream's first event, or the status that ended it.
    Subscribe(SubscribeRequest),
    DescribeGroup(DescribeGroupRequest),
    DeleteGroup(DeleteGroupRequest),
    CommitOffsets(CommitOffsetsRequest),
    ResetOffsets(ResetOffsetsRequest),
}

impl Call {
    /// The RPC, for failure reports (two cases may share a name across RPCs).
    fn method(&self) -> &'static str {
        match self {
            Call::CreateTopic(_) => "CreateTopic",
            Call::AlterTopicConfig(_) => "AlterTopicConfig",
            Call::DescribeTopic(_) => "DescribeTopic",
            Call::DeleteTopic(_) => "DeleteTopic",
            Call::Publish(_) => "Publish",
            Call::Fetch(_) => "Fetch",
            Call::Subscribe(_) => "Subscribe",
            Call::DescribeGroup(_) => "DescribeGroup",
            Call::DeleteGroup(_) => "DeleteGroup",
            Call::CommitOffsets(_) => "CommitOffsets",
            Call::ResetOffsets(_) => "ResetOffsets",
        }
    }

    /// Makes the call on `channel`: the status it failed with, or what it answered.
    async fn send(self, channel: &Channel) -> Result<String, Status> {
        fn answered<T: Debug>(
            result: Result<tonic::Response<T>, Status>,
        ) -> Result<String, Status> {
            result.map(|response| format!("{:?}", response.into_inner()))
        }
        let admin = || AdminClient::new(channel.clone());
        let groups = || GroupsClient::new(channel.clone());
        match self {
            Call::CreateTopic(r) => answered(admin().create_topic(r).await),
            Call::AlterTopicConfig(r) => answered(admin().alter_topic_config(r).await),
            Call::DescribeTopic(r) => answered(admin().describe_topic(r).await),
            Call::DeleteTopic(r) => answered(admin().delete_topic(r).await),
            Call::Publish(r) => answered(PublisherClient::new(channel.clone()).publish(r).await),
            Call::Fetch(r) => answered(consumer(channel).fetch(r).await),
            Call::Subscribe(r) => first_event(channel, r).await.map(|e| format!("{e:?}")),
            Call::DescribeGroup(r) => answered(groups().describe_group(r).await),
            Call::DeleteGroup(r) => answered(groups().delete_group(r).await),
            Call::CommitOffsets(r) => answered(groups().commit_offsets(r).await),
            Call::ResetOffsets(r) => answered(groups().reset_offsets(r).await),
        }
    }
}

/// Sends every case in order; one line for each case answered with anything but its
/// code.
async fn run(channel: &Channel, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for Case { name, call, code } in cases {
        let method = call.method();
        match call.send(channel).await {
            Err(status) if status.code() == code => {}
            Err(status) => failures.push(format!(
                "{method} {name}: expected {code:?}, got {status:?}"
            )),
            Ok(answer) => failures.push(format!(
                "{method} {name}: expected {code:?}, got Ok({answer})"
            )),
        }
    }
    failures
}

/// The first event of a Subscribe (or the status that ended it).
async fn first_event(channel: &Channel, request: SubscribeRequest) -> Result<Event, Status> {
    let mut stream = consumer(channel).subscribe(request).await?.into_inner();
    next_event(&mut stream)
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without an event"))
}

fn create(name: &str, partitions: u32, config: Option<TopicConfig>) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.into(),
        partitions,
        config,
    }
}

/// Creates topic "cfg" with the default config changed by `change`.
fn create_with(change: impl FnOnce(&mut TopicConfig)) -> Call {
    let mut config = TopicConfig::default();
    change(&mut config);
    Call::CreateTopic(create("cfg", 1, Some(config)))
}

fn alter(name: &str, update: TopicConfigUpdate) -> Call {
    Call::AlterTopicConfig(AlterTopicConfigRequest {
        name: name.into(),
        update: Some(update),
    })
}

/// Alters topic "bad" with an empty update changed by `change`.
fn alter_with(change: impl FnOnce(&mut TopicConfigUpdate)) -> Call {
    let mut update = TopicConfigUpdate::default();
    change(&mut update);
    alter("bad", update)
}

fn publish(topic: &str, messages: Vec<Message>, ack: i32) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        messages,
        ack,
    }
}

/// Publishes one message to "bad" with ack DURABLE, a default message changed by
/// `change`.
fn publish_with(change: impl FnOnce(&mut Message)) -> Call {
    let mut message = Message::default();
    change(&mut message);
    Call::Publish(publish("bad", vec![message], AckLevel::Durable as i32))
}

fn fetch_request(topic: &str, partition: u32, offset: u64) -> FetchRequest {
    FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        ..Default::default()
    }
}

fn subscribe(topic: &str) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.into(),
        ..Default::default()
    }
}

/// Subscribes to "bad" with a default request changed by `change`.
fn subscribe_with(change: impl FnOnce(&mut SubscribeRequest)) -> Call {
    let mut request = subscribe("bad");
    change(&mut request);
    Call::Subscribe(request)
}

fn member(group_id: String, client_id: String) -> Option<GroupMembership> {
    Some(GroupMembership {
        group_id,
        client_id,
        ..Default::default()
    })
}

fn entry(topic: &str, partition: u32, offset: u64, metadata: String) -> TopicPartitionOffset {
    TopicPartitionOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata,
        topic_id: 0,
    }
}

fn commit(group_id: &str, offsets: Vec<TopicPartitionOffset>) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group_id: group_id.into(),
        offsets,
        ..Default::default()
    }
}

fn scope(topic: &str, partitions: Vec<u32>) -> Option<Scope> {
    Some(Scope::Topic(TopicScope {
        topic: topic.into(),
        partitions,
    }))
}

/// A dry run (`execute: false`) for group "g".
fn reset(scope: Option<Scope>, spec: Option<Spec>) -> ResetOffsetsRequest {
    ResetOffsetsRequest {
        group_id: "g".into(),
        scope,
        spec,
        execute: false,
    }
}

/// Every request the broker must refuse, in the order they are sent.
fn refused_requests() -> Vec<Case> {
    use Call::{
        CommitOffsets, CreateTopic, DeleteGroup, DeleteTopic, DescribeGroup, DescribeTopic, Fetch,
        Publish, ResetOffsets, Subscribe,
    };
    use Code::{FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted};
    let mut cases = Vec::new();

    // Topic names and partition counts.
    let long = "x".repeat(250);
    for name in [
        "",
        &long,
        "a/b",
        "../escape",
        "a b",
        "ü",
        "nul\0",
        ".",
        "..",
        "__internal",
    ] {
        let call = CreateTopic(create(name, 1, None));
        cases.push(case(format!("create {name:?}"), call, InvalidArgument));
    }
    let many = CreateTopic(create("many", 10_001, None));
    cases.push(case("10001 partitions", many, InvalidArgument));

    // Config values.
    let interval_0 = || {
        Some(FsyncPolicy {
            policy: Some(Policy::IntervalMs(0)),
        })
    };
    let no_policy = || Some(FsyncPolicy { policy: None });
    cases.extend([
        case(
            "segment_bytes 1",
            create_with(|c| c.segment_bytes = 1),
            InvalidArgument,
        ),
        case(
            "segment_bytes 2 GiB",
            create_with(|c| c.segment_bytes = 2 << 30),
            InvalidArgument,
        ),
        case(
            "max_message_bytes 17 MiB",
            create_with(|c| c.max_message_bytes = 17 << 20),
            InvalidArgument,
        ),
        // 0 switches a limit off, as in an update (not an error since issue 12).
        case(
            "priority_levels 11",
            create_with(|c| c.priority_levels = 11),
            InvalidArgument,
        ),
        case(
            "fsync interval 0",
            create_with(|c| c.fsync = interval_0()),
            InvalidArgument,
        ),
        case(
            "fsync with no policy",
            create_with(|c| c.fsync = no_policy()),
            InvalidArgument,
        ),
        case(
            "compression 99",
            create_with(|c| c.compression = 99),
            InvalidArgument,
        ),
        case(
            "compression -1",
            create_with(|c| c.compression = -1),
            InvalidArgument,
        ),
    ]);
    cases.extend([
        case(
            "alter an unknown topic",
            alter("nope", TopicConfigUpdate::default()),
            NotFound,
        ),
        case(
            "alter compression 99",
            alter_with(|u| u.compression = Some(99)),
            InvalidArgument,
        ),
        case(
            "alter segment_bytes 1",
            alter_with(|u| u.segment_bytes = Some(1)),
            InvalidArgument,
        ),
        case(
            "alter max_message_bytes u64::MAX",
            alter_with(|u| u.max_message_bytes = Some(u64::MAX)),
            InvalidArgument,
        ),
        case(
            "alter fsync interval 0",
            alter_with(|u| u.fsync = interval_0()),
            InvalidArgument,
        ),
    ]);
    for name in ["", "../bad", "bad/../bad", "nope"] {
        let describe = DescribeTopic(DescribeTopicRequest { name: name.into() });
        cases.push(case(format!("describe {name:?}"), describe, NotFound));
        let delete = DeleteTopic(DeleteTopicRequest { name: name.into() });
        cases.push(case(format!("delete {name:?}"), delete, NotFound));
    }

    // Publish.
    let durable = AckLevel::Durable as i32;
    for topic in ["nope", "", "../bad"] {
        let call = Publish(publish(topic, vec![Message::default()], durable));
        cases.push(case(format!("publish to {topic:?}"), call, NotFound));
    }
    for ack in [99, -1, i32::MAX] {
        let call = Publish(publish("bad", vec![Message::default()], ack));
        cases.push(case(format!("ack {ack}"), call, InvalidArgument));
    }
    let big = || Message {
        value: vec![1; 900_000].into(),
        ..Default::default()
    };
    cases.extend([
        case(
            "partition u32::MAX",
            publish_with(|m| m.partition = Some(u32::MAX)),
            InvalidArgument,
        ),
        case(
            "timestamp -1",
            publish_with(|m| m.timestamp_ms = Some(-1)),
            InvalidArgument,
        ),
        case(
            "timestamp i64::MIN",
            publish_with(|m| m.timestamp_ms = Some(i64::MIN)),
            InvalidArgument,
        ),
        case(
            "1025 headers",
            publish_with(|m| m.headers = vec![Header::default(); 1025]),
            InvalidArgument,
        ),
        case(
            "priority above the topic's levels",
            publish_with(|m| m.priority = 1),
            InvalidArgument,
        ),
        case(
            "id of 129 bytes",
            publish_with(|m| m.id = vec![b'i'; 129].into()),
            InvalidArgument,
        ),
        case(
            "deliver_at_ms and delay_ms",
            publish_with(|m| {
                m.deliver_at_ms = Some(1);
                m.delay_ms = Some(1);
            }),
            InvalidArgument,
        ),
        case(
            "over max_message_bytes",
            publish_with(|m| m.value = vec![7; 2000].into()),
            InvalidArgument,
        ),
        case(
            "no messages",
            Publish(publish("bad", Vec::new(), durable)),
            InvalidArgument,
        ),
        case(
            "a request over --max-request-bytes",
            Publish(publish("bad", vec![big(), big(), big()], durable)),
            ResourceExhausted,
        ),
    ]);

    // Fetch.
    cases.extend([
        case(
            "fetch an unknown topic",
            Fetch(fetch_request("nope", 0, 0)),
            NotFound,
        ),
        case(
            "fetch partition u32::MAX",
            Fetch(fetch_request("bad", u32::MAX, 0)),
            InvalidArgument,
        ),
        case(
            "fetch offset u64::MAX",
            Fetch(fetch_request("bad", 0, u64::MAX)),
            OutOfRange,
        ),
    ]);

    // Subscribe.
    let beyond_the_end = || {
        Some(StartPosition {
            position: Some(Position::Offset(u64::MAX)),
        })
    };
    let g = || member("g".into(), String::new());
    cases.extend([
        case(
            "subscribe to an unknown topic",
            Subscribe(subscribe("nope")),
            NotFound,
        ),
        case(
            "reset_policy 99",
            subscribe_with(|r| r.reset_policy = 99),
            InvalidArgument,
        ),
        case(
            "partition u32::MAX",
            subscribe_with(|r| r.partitions = vec![u32::MAX]),
            InvalidArgument,
        ),
        case(
            "duplicate partitions",
            subscribe_with(|r| r.partitions = vec![0, 0]),
            InvalidArgument,
        ),
        case(
            "start u64::MAX with policy ERROR",
            subscribe_with(|r| {
                r.start = beyond_the_end();
                r.reset_policy = ResetPolicy::Error as i32;
            }),
            OutOfRange,
        ),
        case(
            "a group with partitions",
            subscribe_with(|r| {
                r.partitions = vec![0];
                r.group = g();
            }),
            InvalidArgument,
        ),
        case(
            "an empty group id",
            subscribe_with(|r| r.group = member(String::new(), String::new())),
            InvalidArgument,
        ),
        case(
            "a 256-byte group id",
            subscribe_with(|r| r.group = member("g".repeat(256), String::new())),
            InvalidArgument,
        ),
        case(
            "a 256-byte client id",
            subscribe_with(|r| r.group = member("g".into(), "c".repeat(256))),
            InvalidArgument,
        ),
        case(
            "a group on an unknown topic",
            Subscribe(SubscribeRequest {
                group: g(),
                ..subscribe("nope")
            }),
            NotFound,
        ),
        case(
            "a group with reset_policy 99",
            subscribe_with(|r| {
                r.group = g();
                r.reset_policy = 99;
            }),
            InvalidArgument,
        ),
    ]);

    // Groups.
    let describe = |group_id| DescribeGroup(DescribeGroupRequest { group_id });
    let delete = |group_id| DeleteGroup(DeleteGroupRequest { group_id });
    cases.extend([
        case(
            "describe an unknown group",
            describe("nope".into()),
            NotFound,
        ),
        case("delete an unknown group", delete("nope".into()), NotFound),
        case(
            "describe a 256-byte group id",
            describe("g".repeat(256)),
            InvalidArgument,
        ),
    ]);
    let at = |topic, partition, offset| vec![entry(topic, partition, offset, String::new())];
    let as_member = |generation| {
        CommitOffsets(CommitOffsetsRequest {
            member_id: "m".into(),
            generation,
            ..commit("g", at("bad", 0, 0))
        })
    };
    cases.extend([
        case(
            "commit for an empty group id",
            CommitOffsets(commit("", at("bad", 0, 0))),
            InvalidArgument,
        ),
        case(
            "commit nothing",
            CommitOffsets(commit("g", Vec::new())),
            InvalidArgument,
        ),
        case(
            "commit 4097 bytes of metadata",
            CommitOffsets(commit("g", vec![entry("bad", 0, 0, "m".repeat(4097))])),
            InvalidArgument,
        ),
        case(
            "commit partition u32::MAX",
            CommitOffsets(commit("g", at("bad", u32::MAX, 0))),
            InvalidArgument,
        ),
        case(
            "commit offset u64::MAX",
            CommitOffsets(commit("g", at("bad", 0, u64::MAX))),
            OutOfRange,
        ),
        case(
            "commit to an unknown topic",
            CommitOffsets(commit("g", at("nope", 0, 0))),
            NotFound,
        ),
        case(
            "commit with a member id and no generation",
            as_member(None),
            InvalidArgument,
        ),
        case(
            "commit as an unknown member",
            as_member(Some(1)),
            FailedPrecondition,
        ),
    ]);
    let earliest = || Some(Spec::ToEarliest(ToEarliest {}));
    let explicit = |offsets| Some(Spec::Explicit(ExplicitOffsets { offsets }));
    let reset_on = |scope, spec| ResetOffsets(reset(scope, spec));
    cases.extend([
        case(
            "reset without spec",
            reset_on(scope("bad", vec![]), None),
            InvalidArgument,
        ),
        case(
            "reset without scope",
            reset_on(None, earliest()),
            InvalidArgument,
        ),
        case(
            "reset explicit with a scope",
            reset_on(scope("bad", vec![]), explicit(at("bad", 0, 0))),
            InvalidArgument,
        ),
        case(
            "reset explicit partition u32::MAX",
            reset_on(None, explicit(at("bad", u32::MAX, 0))),
            InvalidArgument,
        ),
        case(
            "reset partition u32::MAX",
            reset_on(scope("bad", vec![u32::MAX]), earliest()),
            InvalidArgument,
        ),
        case(
            "reset an unknown topic",
            reset_on(scope("nope", vec![]), earliest()),
            NotFound,
        ),
    ]);
    cases
}

/// Requests that break every rule of the API, with the status code the proto
/// documents for each: the broker answers them all, never panics, stays within a
/// memory bound, and a client beside them keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_documented_codes() {
    let mut broker = TestBroker::start_with(&["--max-request-bytes", "1048576"]);
    let channel = broker.channel().await;
    create_topic(
        &channel,
        "bad",
        2,
        TopicConfig {
            max_message_bytes: 1024,
            ..Default::default()
        },
    )
    .await;
    create_topic(&channel, "side", 1, TopicConfig::default()).await;
    let bystander = Bystander::start(&broker, "side").await;
    let rss_before = rss_mib(&broker);

    let cases = refused_requests();
    let refused = cases.len();
    let failures = run(&channel, cases).await;
    assert!(
        failures.is_empty(),
        "{} of {refused} bad requests got another answer than their documented code:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // None of them touched the real topic.
    assert_eq!(describe_topic(&channel, "bad").await.partitions.len(), 2);

    // A timestamp far ahead of the broker's clock is refused (past the default
    // --max-timestamp-ahead of 1h: it would hold time retention until then).
    let far = PublisherClient::new(channel.clone())
        .publish(publish(
            "bad",
            vec![Message {
                value: Bytes::from_static(b"v"),
                timestamp_ms: Some(i64::MAX),
                ..Default::default()
            }],
            AckLevel::Durable as i32,
        ))
        .await
        .unwrap_err();
    assert_eq!(far.code(), Code::InvalidArgument, "{far:?}");
    assert!(far.message().contains("--max-timestamp-ahead"), "{far:?}");

    // Extreme but legal values are stored and read back as sent.
    let extreme = Message {
        key: Bytes::from_static(b"extreme"),
        value: Bytes::from_static(b"v"),
        timestamp_ms: Some(0),
        ttl_ms: Some(u64::MAX),
        partition: Some(1),
        ..Default::default()
    };
    let ack = PublisherClient::new(channel.clone())
        .publish(publish(
            "bad",
            vec![extreme.clone()],
            AckLevel::Durable as i32,
        ))
        .await
        .unwrap()
        .into_inner()
        .acks[0]
        .offset;
    let got = fetch(&channel, "bad", 1, ack, 1).await.unwrap();
    assert_same(&got.messages[0], &extreme, "timestamp 0, u64::MAX ttl");

    // Huge Fetch limits are capped, not refused.
    let mut reader = consumer(&channel);
    let all = reader
        .fetch(FetchRequest {
            max_messages: u32::MAX,
            max_bytes: u32::MAX,
            ..fetch_request("bad", 0, 0)
        })
        .await
        .expect("huge limits are capped, not refused")
        .into_inner();
    // A long poll of u64::MAX ms still answers before the call's deadline.
    let mut request = tonic::Request::new(FetchRequest {
        max_wait_ms: u64::MAX,
        ..fetch_request("bad", 0, all.end_offset)
    });
    request.set_timeout(Duration::from_millis(300));
    let asked = Instant::now();
    let answer = reader
        .fetch(request)
        .await
        .expect("an empty answer in time");
    assert!(answer.into_inner().messages.is_empty());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // A start beyond the end with policy EARLIEST is a PositionReset, not an error.
    let event = first_event(
        &channel,
        SubscribeRequest {
            partitions: vec![0],
            start: Some(StartPosition {
                position: Some(Position::Offset(u64::MAX)),
            }),
            ..subscribe("bad")
        },
    )
    .await
    .unwrap();
    match event {
        Event::PositionReset(reset) => {
            assert_eq!(reset.reason, ResetReason::AboveEndOffset as i32);
            assert_eq!(reset.from_offset, Some(u64::MAX));
        }
        other => panic!("expected a PositionReset, got {other:?}"),
    }
    // A timestamp before the epoch starts at the beginning.
    let event = first_event(
        &channel,
        SubscribeRequest {
            partitions: vec![1],
            start: Some(StartPosition {
                position: Some(Position::TimestampMs(i64::MIN)),
            }),
            ..subscribe("bad")
        },
    )
    .await
    .unwrap();
    match event {
        Event::Batch(batch) => assert_eq!(batch.messages[0].offset, 0),
        other => panic!("expected messages, got {other:?}"),
    }

    // An unknown group has no offsets: not an error.
    let mut groups = GroupsClient::new(channel.clone());
    let offsets = groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "nope".into(),
            topic: None,
        })
        .await
        .expect("an unknown group has no offsets")
        .into_inner();
    assert!(offsets.offsets.is_empty());
    // Extreme reset targets are clamped to the log, never an error or a wrap-around.
    let end = describe_topic(&channel, "bad").await.partitions[0].end_offset;
    for spec in [
        Spec::ToOffset(u64::MAX),
        Spec::ShiftBy(i64::MIN),
        Spec::ShiftBy(i64::MAX),
        Spec::ByDurationMs(u64::MAX),
        Spec::ToDatetimeMs(i64::MIN),
        Spec::ToDatetimeMs(i64::MAX),
    ] {
        let changes = groups
            .reset_offsets(reset(scope("bad", vec![0]), Some(spec.clone())))
            .await
            .unwrap_or_else(|s| panic!("{spec:?}: {s}"))
            .into_inner()
            .changes;
        for change in changes {
            assert!(
                change.new_offset <= end,
                "{spec:?}: {change:?} past the end {end}"
            );
        }
    }

    let rss_after = rss_mib(&broker);
    bystander.finish(Duration::from_secs(5)).await;
    println!(
        "bad requests: {refused} refused; RSS {rss_before:?} MiB -> {rss_after:?} MiB (VmRSS, RssAnon)"
    );
    assert!(
        rss_after.0 - rss_before.0 < 256.0,
        "RSS grew from {rss_before:?} to {rss_after:?} MiB"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}
