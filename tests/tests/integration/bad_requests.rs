//! Requests that break every rule of the API, through the real gRPC port: each gets
//! the status code the proto documents for it (issue 6).

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

/// Asserts `result` failed with `code`.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// The first event of a Subscribe (or the status that ended it).
async fn first_event(channel: &Channel, request: SubscribeRequest) -> Result<Event, Status> {
    let mut stream = consumer(channel).subscribe(request).await?.into_inner();
    next_event(&mut stream)
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without an event"))
}

fn bad_config(change: impl FnOnce(&mut TopicConfig)) -> TopicConfig {
    let mut config = TopicConfig::default();
    change(&mut config);
    config
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
    let mut admin = AdminClient::new(channel.clone());
    let mut publisher = PublisherClient::new(channel.clone());
    let mut groups = GroupsClient::new(channel.clone());
    let create = |name: &str, partitions: u32, config: Option<TopicConfig>| CreateTopicRequest {
        name: name.into(),
        partitions,
        config,
    };

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
        expect_code(
            &format!("create {name:?}"),
            admin.create_topic(create(name, 1, None)).await,
            Code::InvalidArgument,
        );
    }
    expect_code(
        "10001 partitions",
        admin.create_topic(create("many", 10_001, None)).await,
        Code::InvalidArgument,
    );
    // Config values.
    let configs = [
        ("segment_bytes 1", bad_config(|c| c.segment_bytes = 1)),
        (
            "segment_bytes 2 GiB",
            bad_config(|c| c.segment_bytes = 2 << 30),
        ),
        (
            "max_message_bytes 17 MiB",
            bad_config(|c| c.max_message_bytes = 17 << 20),
        ),
        ("retention_ms 0", bad_config(|c| c.retention_ms = Some(0))),
        (
            "retention_bytes 0",
            bad_config(|c| c.retention_bytes = Some(0)),
        ),
        (
            "default_ttl_ms 0",
            bad_config(|c| c.default_ttl_ms = Some(0)),
        ),
        ("segment_ms 0", bad_config(|c| c.segment_ms = Some(0))),
        (
            "fsync interval 0",
            bad_config(|c| {
                c.fsync = Some(FsyncPolicy {
                    policy: Some(Policy::IntervalMs(0)),
                })
            }),
        ),
        (
            "fsync with no policy",
            bad_config(|c| c.fsync = Some(FsyncPolicy { policy: None })),
        ),
        ("compression 99", bad_config(|c| c.compression = 99)),
        ("compression -1", bad_config(|c| c.compression = -1)),
    ];
    for (what, config) in configs {
        expect_code(
            what,
            admin.create_topic(create("cfg", 1, Some(config))).await,
            Code::InvalidArgument,
        );
    }
    let alter = |name: &str, update: TopicConfigUpdate| AlterTopicConfigRequest {
        name: name.into(),
        update: Some(update),
    };
    expect_code(
        "alter an unknown topic",
        admin
            .alter_topic_config(alter("nope", TopicConfigUpdate::default()))
            .await,
        Code::NotFound,
    );
    for (what, update) in [
        (
            "alter compression 99",
            TopicConfigUpdate {
                compression: Some(99),
                ..Default::default()
            },
        ),
        (
            "alter segment_bytes 1",
            TopicConfigUpdate {
                segment_bytes: Some(1),
                ..Default::default()
            },
        ),
        (
            "alter max_message_bytes u64::MAX",
            TopicConfigUpdate {
                max_message_bytes: Some(u64::MAX),
                ..Default::default()
            },
        ),
        (
            "alter fsync interval 0",
            TopicConfigUpdate {
                fsync: Some(FsyncPolicy {
                    policy: Some(Policy::IntervalMs(0)),
                }),
                ..Default::default()
            },
        ),
    ] {
        expect_code(
            what,
            admin.alter_topic_config(alter("bad", update)).await,
            Code::InvalidArgument,
        );
    }
    for name in ["", "../bad", "bad/../bad", "nope"] {
        expect_code(
            &format!("describe {name:?}"),
            admin
                .describe_topic(DescribeTopicRequest { name: name.into() })
                .await,
            Code::NotFound,
        );
        expect_code(
            &format!("delete {name:?}"),
            admin
                .delete_topic(DeleteTopicRequest { name: name.into() })
                .await,
            Code::NotFound,
        );
    }
    // Nothing above touched the real topic.
    assert_eq!(describe_topic(&channel, "bad").await.partitions.len(), 2);

    // Publish.
    let publish = |topic: &str, messages: Vec<Message>, ack: i32| PublishRequest {
        topic: topic.into(),
        messages,
        ack,
    };
    let one = |message: Message| vec![message];
    let durable = AckLevel::Durable as i32;
    for topic in ["nope", "", "../bad"] {
        expect_code(
            &format!("publish to {topic:?}"),
            publisher
                .publish(publish(topic, one(Message::default()), durable))
                .await,
            Code::NotFound,
        );
    }
    for ack in [99, -1, i32::MAX] {
        expect_code(
            &format!("ack {ack}"),
            publisher
                .publish(publish("bad", one(Message::default()), ack))
                .await,
            Code::InvalidArgument,
        );
    }
    let bad_messages = [
        (
            "partition u32::MAX",
            Message {
                partition: Some(u32::MAX),
                ..Default::default()
            },
        ),
        (
            "timestamp -1",
            Message {
                timestamp_ms: Some(-1),
                ..Default::default()
            },
        ),
        (
            "timestamp i64::MIN",
            Message {
                timestamp_ms: Some(i64::MIN),
                ..Default::default()
            },
        ),
        (
            "1025 headers",
            Message {
                headers: vec![Header::default(); 1025],
                ..Default::default()
            },
        ),
        (
            "over max_message_bytes",
            Message {
                value: vec![7; 2000].into(),
                ..Default::default()
            },
        ),
    ];
    for (what, message) in bad_messages {
        expect_code(
            what,
            publisher
                .publish(publish("bad", one(message), durable))
                .await,
            Code::InvalidArgument,
        );
    }
    expect_code(
        "no messages",
        publisher.publish(publish("bad", Vec::new(), durable)).await,
        Code::InvalidArgument,
    );
    expect_code(
        "a request over --max-request-bytes",
        publisher
            .publish(publish(
                "bad",
                (0..3)
                    .map(|_| Message {
                        value: vec![1; 900_000].into(),
                        ..Default::default()
                    })
                    .collect(),
                durable,
            ))
            .await,
        Code::ResourceExhausted,
    );
    // Extreme but legal values are stored and read back as sent.
    let extreme = Message {
        key: Bytes::from_static(b"extreme"),
        value: Bytes::from_static(b"v"),
        timestamp_ms: Some(i64::MAX),
        ttl_ms: Some(u64::MAX),
        partition: Some(1),
        ..Default::default()
    };
    let ack = publisher
        .publish(publish("bad", one(extreme.clone()), durable))
        .await
        .unwrap()
        .into_inner()
        .acks[0];
    let got = fetch(&channel, "bad", 1, ack.offset, 1).await.unwrap();
    assert_same(
        &got.messages[0],
        &extreme,
        "i64::MAX timestamp, u64::MAX ttl",
    );

    // Fetch.
    let fetch_request = |topic: &str, partition: u32, offset: u64| FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        ..Default::default()
    };
    let mut reader = consumer(&channel);
    expect_code(
        "fetch an unknown topic",
        reader.fetch(fetch_request("nope", 0, 0)).await,
        Code::NotFound,
    );
    expect_code(
        "fetch partition u32::MAX",
        reader.fetch(fetch_request("bad", u32::MAX, 0)).await,
        Code::InvalidArgument,
    );
    expect_code(
        "fetch offset u64::MAX",
        reader.fetch(fetch_request("bad", 0, u64::MAX)).await,
        Code::OutOfRange,
    );
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

    // Subscribe.
    let subscribe = |topic: &str| SubscribeRequest {
        topic: topic.into(),
        ..Default::default()
    };
    let group = |group_id: String, client_id: String| {
        Some(GroupMembership {
            group_id,
            client_id,
            ..Default::default()
        })
    };
    let subscribe_cases = [
        (
            "subscribe to an unknown topic",
            subscribe("nope"),
            Code::NotFound,
        ),
        (
            "reset_policy 99",
            SubscribeRequest {
                reset_policy: 99,
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "partition u32::MAX",
            SubscribeRequest {
                partitions: vec![u32::MAX],
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "duplicate partitions",
            SubscribeRequest {
                partitions: vec![0, 0],
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "start u64::MAX with policy ERROR",
            SubscribeRequest {
                start: Some(StartPosition {
                    position: Some(Position::Offset(u64::MAX)),
                }),
                reset_policy: ResetPolicy::Error as i32,
                ..subscribe("bad")
            },
            Code::OutOfRange,
        ),
        (
            "a group with partitions",
            SubscribeRequest {
                partitions: vec![0],
                group: group("g".into(), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "an empty group id",
            SubscribeRequest {
                group: group(String::new(), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a 256-byte group id",
            SubscribeRequest {
                group: group("g".repeat(256), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a 256-byte client id",
            SubscribeRequest {
                group: group("g".into(), "c".repeat(256)),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a group on an unknown topic",
            SubscribeRequest {
                group: group("g".into(), String::new()),
                ..subscribe("nope")
            },
            Code::NotFound,
        ),
        (
            "a group with reset_policy 99",
            SubscribeRequest {
                group: group("g".into(), String::new()),
                reset_policy: 99,
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in subscribe_cases {
        expect_code(what, first_event(&channel, request).await, code);
    }
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

    // Groups.
    expect_code(
        "describe an unknown group",
        groups
            .describe_group(DescribeGroupRequest {
                group_id: "nope".into(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        "delete an unknown group",
        groups
            .delete_group(DeleteGroupRequest {
                group_id: "nope".into(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        "describe a 256-byte group id",
        groups
            .describe_group(DescribeGroupRequest {
                group_id: "g".repeat(256),
            })
            .await,
        Code::InvalidArgument,
    );
    let offsets = groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "nope".into(),
            topic: None,
        })
        .await
        .expect("an unknown group has no offsets")
        .into_inner();
    assert!(offsets.offsets.is_empty());
    let entry = |topic: &str, partition: u32, offset: u64, metadata: String| TopicPartitionOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata,
    };
    let commit = |group_id: &str, offsets: Vec<TopicPartitionOffset>| CommitOffsetsRequest {
        group_id: group_id.into(),
        offsets,
        ..Default::default()
    };
    let commit_cases = [
        (
            "commit for an empty group id",
            commit("", vec![entry("bad", 0, 0, String::new())]),
            Code::InvalidArgument,
        ),
        (
            "commit nothing",
            commit("g", Vec::new()),
            Code::InvalidArgument,
        ),
        (
            "commit 4097 bytes of metadata",
            commit("g", vec![entry("bad", 0, 0, "m".repeat(4097))]),
            Code::InvalidArgument,
        ),
        (
            "commit partition u32::MAX",
            commit("g", vec![entry("bad", u32::MAX, 0, String::new())]),
            Code::InvalidArgument,
        ),
        (
            "commit offset u64::MAX",
            commit("g", vec![entry("bad", 0, u64::MAX, String::new())]),
            Code::OutOfRange,
        ),
        (
            "commit to an unknown topic",
            commit("g", vec![entry("nope", 0, 0, String::new())]),
            Code::NotFound,
        ),
        (
            "commit with a member id and no generation",
            CommitOffsetsRequest {
                member_id: "m".into(),
                ..commit("g", vec![entry("bad", 0, 0, String::new())])
            },
            Code::InvalidArgument,
        ),
        (
            "commit as an unknown member",
            CommitOffsetsRequest {
                member_id: "m".into(),
                generation: Some(1),
                ..commit("g", vec![entry("bad", 0, 0, String::new())])
            },
            Code::FailedPrecondition,
        ),
    ];
    for (what, request, code) in commit_cases {
        expect_code(what, groups.commit_offsets(request).await, code);
    }
    let scope = |topic: &str, partitions: Vec<u32>| {
        Some(Scope::Topic(TopicScope {
            topic: topic.into(),
            partitions,
        }))
    };
    let reset = |scope, spec| ResetOffsetsRequest {
        group_id: "g".into(),
        scope,
        spec,
        execute: false,
    };
    let reset_cases = [
        (
            "reset without spec",
            reset(scope("bad", vec![]), None),
            Code::InvalidArgument,
        ),
        (
            "reset without scope",
            reset(None, Some(Spec::ToEarliest(ToEarliest {}))),
            Code::InvalidArgument,
        ),
        (
            "reset explicit with a scope",
            reset(
                scope("bad", vec![]),
                Some(Spec::Explicit(ExplicitOffsets {
                    offsets: vec![entry("bad", 0, 0, String::new())],
                })),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset explicit partition u32::MAX",
            reset(
                None,
                Some(Spec::Explicit(ExplicitOffsets {
                    offsets: vec![entry("bad", u32::MAX, 0, String::new())],
                })),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset partition u32::MAX",
            reset(
                scope("bad", vec![u32::MAX]),
                Some(Spec::ToEarliest(ToEarliest {})),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset an unknown topic",
            reset(scope("nope", vec![]), Some(Spec::ToEarliest(ToEarliest {}))),
            Code::NotFound,
        ),
    ];
    for (what, request, code) in reset_cases {
        expect_code(what, groups.reset_offsets(request).await, code);
    }
    // Extreme targets are clamped to the log, never an error or a wrap-around.
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
    println!("bad requests: RSS {rss_before:?} MiB -> {rss_after:?} MiB (VmRSS, RssAnon)");
    assert!(
        rss_after.0 - rss_before.0 < 256.0,
        "RSS grew from {rss_before:?} to {rss_after:?} MiB"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}
