//! `tidelogd --auth`: group and queue RPCs tell a caller nothing about topics it may
//! not describe. A topic the request names is refused (PERMISSION_DENIED, the same
//! answer as for a topic that does not exist); topics that come from a pattern or from
//! the group's or queue's state are left out silently. Moving a group's offsets
//! (CommitOffsets, ResetOffsets, DeleteOffsets) needs consume on the topic, showing
//! them describe; a ListDeliveries header filter needs consume.

use std::time::{Duration, Instant};

use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::{
    AlterQueueRequest, CommitOffsetsRequest, CreateQueueRequest, CreateTopicRequest,
    DeleteOffsetsRequest, DescribeGroupRequest, DescribeQueueRequest, FetchOffsetsRequest,
    GetDeliveryHistoryRequest, GetDeliveryStatusRequest, GroupDescription, GroupMembership, Header,
    ListDeliveriesRequest, ListQueuesRequest, Message, MessagePosition, PublishRequest,
    QueueConfig, QueueDescription, ResetOffsetsRequest, StartPosition, SubscribeRequest,
    TopicConfig, TopicPartitionOffset, get_delivery_history_request, get_delivery_status_request,
    reset_offsets_request, start_position,
};
use tidelog_tests::TestBroker;
use tonic::{Code, Status};

use crate::auth::{Conn, allow, bootstrap_token, create_token, with_token};
use crate::support::EVENT_TIMEOUT;

use reset_offsets_request::{
    AllTopics, ExplicitOffsets, Scope, Spec, ToLatest, TopicPatternScope, TopicScope,
};

async fn create_topic(admin: &Conn, name: &str, partitions: u32) {
    AdminClient::new(admin.clone())
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions,
            config: Some(TopicConfig::default()),
        })
        .await
        .unwrap();
}

async fn publish(conn: &Conn, topic: &str, count: usize) {
    PublisherClient::new(conn.clone())
        .publish(PublishRequest {
            topic: topic.into(),
            messages: vec![
                Message {
                    value: "v".into(),
                    headers: vec![Header {
                        key: "tenant".into(),
                        value: "acme".into(),
                    }],
                    ..Message::default()
                };
                count
            ],
            ..PublishRequest::default()
        })
        .await
        .unwrap();
}

/// The code and message of a refusal with `name` replaced, to compare the answers for
/// a topic that exists and one that does not.
fn refusal(status: Status, name: &str) -> (Code, String) {
    (status.code(), status.message().replace(name, "NAME"))
}

/// The same PERMISSION_DENIED for `secret` and for a topic that does not exist.
async fn refused_alike<F, Fut>(what: &str, call: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let mut answers = Vec::new();
    for name in ["secret", "no-such-topic"] {
        let status = call(name)
            .await
            .expect_err(&format!("{what} on topic {name} is refused"));
        answers.push(refusal(status, name));
    }
    assert_eq!(answers[0].0, Code::PermissionDenied, "{what}: {answers:?}");
    assert_eq!(answers[0], answers[1], "{what}");
}

fn reset(group: &str, scope: Option<Scope>, spec: Spec) -> ResetOffsetsRequest {
    ResetOffsetsRequest {
        group_id: group.into(),
        scope,
        spec: Some(spec),
        execute: false,
    }
}

/// The (topic, partition) pairs a reset answer moves.
async fn reset_topics(conn: &Conn, request: ResetOffsetsRequest) -> Vec<(String, u32)> {
    GroupsClient::new(conn.clone())
        .reset_offsets(request)
        .await
        .unwrap()
        .into_inner()
        .changes
        .into_iter()
        .map(|c| (c.topic, c.partition))
        .collect()
}

async fn fetched_topics(conn: &Conn, group: &str) -> Vec<String> {
    let mut topics: Vec<String> = crate::auth::committed(conn, group)
        .await
        .into_iter()
        .map(|(topic, _, _)| topic)
        .collect();
    topics.dedup();
    topics
}

async fn describe_group(conn: &Conn, group: &str) -> GroupDescription {
    GroupsClient::new(conn.clone())
        .describe_group(DescribeGroupRequest {
            group_id: group.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap()
}

/// Every topic a group description names, sorted, without repeats.
fn group_topics(group: &GroupDescription) -> Vec<String> {
    let mut topics: Vec<String> = group
        .members
        .iter()
        .flat_map(|m| {
            std::iter::once(m.topic.clone()).chain(m.topics.iter().map(|t| t.topic.clone()))
        })
        .chain(group.lags.iter().map(|l| l.topic.clone()))
        .filter(|t| !t.is_empty())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_rpcs_tell_nothing_about_topics_the_caller_may_not_describe() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    create_topic(&admin, "secret", 3).await;
    create_topic(&admin, "open", 1).await;
    publish(&admin, "secret", 7).await;
    publish(&admin, "open", 2).await;
    // bob may do anything with its groups and the topic open, nothing with secret.
    let bob = with_token(&channel, Some(&create_token(&admin, "bob", 0).await));
    allow(&admin, "bob", "group:bob-*", "*").await;
    allow(&admin, "bob", "topic:open", "*").await;
    // The group has offsets on both topics (committed by the admin).
    let commit = |topic: &str| TopicPartitionOffset {
        topic: topic.into(),
        partition: 0,
        offset: 1,
        metadata: String::new(),
        topic_id: 0,
    };
    GroupsClient::new(admin.clone())
        .commit_offsets(CommitOffsetsRequest {
            group_id: "bob-g".into(),
            offsets: vec![commit("secret"), commit("open")],
            ..CommitOffsetsRequest::default()
        })
        .await
        .unwrap();

    // ResetOffsets on a named topic: refused alike whether it exists or not (it told
    // the partitions and end offsets of secret, and NOT_FOUND for the other).
    refused_alike("ResetOffsets by topic", |topic| {
        let bob = bob.clone();
        async move {
            let scope = Scope::Topic(TopicScope {
                topic: topic.into(),
                partitions: vec![],
            });
            GroupsClient::new(bob)
                .reset_offsets(reset("bob-g", Some(scope), Spec::ToLatest(ToLatest {})))
                .await
                .map(drop)
        }
    })
    .await;
    refused_alike("ResetOffsets explicit", |topic| {
        let bob = bob.clone();
        async move {
            let spec = Spec::Explicit(ExplicitOffsets {
                offsets: vec![TopicPartitionOffset {
                    topic: topic.into(),
                    partition: 0,
                    offset: 0,
                    metadata: String::new(),
                    topic_id: 0,
                }],
            });
            GroupsClient::new(bob)
                .reset_offsets(reset("bob-g", None, spec))
                .await
                .map(drop)
        }
    })
    .await;
    // By pattern or over the group's offsets: secret is left out.
    let every_topic = || {
        Some(Scope::TopicPattern(TopicPatternScope {
            topic_pattern: ".*".into(),
        }))
    };
    let latest = || Spec::ToLatest(ToLatest {});
    assert_eq!(
        reset_topics(&bob, reset("bob-g", every_topic(), latest())).await,
        [("open".to_string(), 0)]
    );
    let all = || Some(Scope::AllTopics(AllTopics {}));
    assert_eq!(
        reset_topics(&bob, reset("bob-g", all(), latest())).await,
        [("open".to_string(), 0)]
    );
    // The admin's answers hold secret: it was there to leave out.
    assert_eq!(
        reset_topics(&admin, reset("bob-g", every_topic(), latest()))
            .await
            .len(),
        4
    );
    assert_eq!(
        reset_topics(&admin, reset("bob-g", all(), latest()))
            .await
            .len(),
        2
    );
    // Executed, it moves only what it showed.
    let mut executed = reset("bob-g", every_topic(), latest());
    executed.execute = true;
    assert_eq!(
        reset_topics(&bob, executed).await,
        [("open".to_string(), 0)]
    );
    let secret_offset = GroupsClient::new(admin.clone())
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "bob-g".into(),
            topic: Some("secret".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(
        secret_offset.iter().map(|o| o.offset).collect::<Vec<_>>(),
        [1]
    );

    // CommitOffsets and DeleteOffsets on a topic it may not consume: refused alike
    // (a commit told the partition count and end offsets in its errors).
    refused_alike("CommitOffsets", |topic| {
        let bob = bob.clone();
        async move {
            GroupsClient::new(bob)
                .commit_offsets(CommitOffsetsRequest {
                    group_id: "bob-g".into(),
                    offsets: vec![TopicPartitionOffset {
                        topic: topic.into(),
                        partition: 2,
                        offset: 100,
                        metadata: String::new(),
                        topic_id: 0,
                    }],
                    ..CommitOffsetsRequest::default()
                })
                .await
                .map(drop)
        }
    })
    .await;
    refused_alike("DeleteOffsets", |topic| {
        let bob = bob.clone();
        async move {
            GroupsClient::new(bob)
                .delete_offsets(DeleteOffsetsRequest {
                    group_id: "bob-g".into(),
                    topic: topic.into(),
                    partitions: vec![],
                })
                .await
                .map(drop)
        }
    })
    .await;

    // FetchOffsets: a named topic is refused, the others are left out.
    refused_alike("FetchOffsets", |topic| {
        let bob = bob.clone();
        async move {
            GroupsClient::new(bob)
                .fetch_offsets(FetchOffsetsRequest {
                    group_id: "bob-g".into(),
                    topic: Some(topic.into()),
                })
                .await
                .map(drop)
        }
    })
    .await;
    assert_eq!(fetched_topics(&bob, "bob-g").await, ["open"]);
    assert_eq!(fetched_topics(&admin, "bob-g").await, ["open", "secret"]);

    // DescribeGroup: members' topics and the lag of topics bob may not describe are
    // left out. Two live members (the admin's): one on the pattern .*, one on secret.
    let member = |topic: &str, pattern: &str, client: &str| SubscribeRequest {
        topic: topic.into(),
        topic_pattern: pattern.into(),
        group: Some(GroupMembership {
            group_id: "bob-live".into(),
            client_id: client.into(),
            ..GroupMembership::default()
        }),
        ..SubscribeRequest::default()
    };
    let _pattern_member = ConsumerClient::new(admin.clone())
        .subscribe(member("", ".*", "by-pattern"))
        .await
        .unwrap()
        .into_inner();
    let _secret_member = ConsumerClient::new(admin.clone())
        .subscribe(member("secret", "", "on-secret"))
        .await
        .unwrap()
        .into_inner();
    GroupsClient::new(admin.clone())
        .commit_offsets(CommitOffsetsRequest {
            group_id: "bob-other".into(),
            offsets: vec![commit("secret"), commit("open")],
            ..CommitOffsetsRequest::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let seen_by_admin = loop {
        let group = describe_group(&admin, "bob-live").await;
        let pattern_topics = group
            .members
            .iter()
            .find(|m| m.client_id == "by-pattern")
            .map(|m| m.topics.len());
        if group.members.len() == 2 && pattern_topics == Some(2) {
            break group;
        }
        assert!(Instant::now() < deadline, "no stable group: {group:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(group_topics(&seen_by_admin), ["open", "secret"]);
    let seen_by_bob = describe_group(&bob, "bob-live").await;
    assert_eq!(seen_by_bob.members.len(), 2, "{seen_by_bob:?}");
    assert_eq!(group_topics(&seen_by_bob), ["open"], "{seen_by_bob:?}");
    let on_secret = seen_by_bob
        .members
        .iter()
        .find(|m| m.client_id == "on-secret")
        .unwrap();
    assert!(on_secret.partitions.is_empty(), "{on_secret:?}");
    // Committed offsets' lag, without live members.
    let offsets_only = describe_group(&bob, "bob-other").await;
    assert_eq!(group_topics(&offsets_only), ["open"], "{offsets_only:?}");
    assert_eq!(
        group_topics(&describe_group(&admin, "bob-other").await),
        ["open", "secret"]
    );
}

async fn describe_queue(conn: &Conn, name: &str) -> QueueDescription {
    QueuesClient::new(conn.clone())
        .describe_queue(DescribeQueueRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
}

/// Every topic a queue description names, sorted, without repeats.
fn queue_topics(queue: &QueueDescription) -> Vec<String> {
    let mut topics: Vec<String> = std::iter::once(queue.topic.clone())
        .chain(queue.topics.iter().cloned())
        .chain(queue.partitions.iter().map(|p| p.topic.clone()))
        .filter(|t| !t.is_empty())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

fn deliveries(queue: &str, topic: &str, header: bool) -> ListDeliveriesRequest {
    ListDeliveriesRequest {
        queue: queue.into(),
        topic: topic.into(),
        header: header.then(|| Header {
            key: "tenant".into(),
            value: "acme".into(),
        }),
        ..ListDeliveriesRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rpcs_tell_nothing_about_topics_the_caller_may_not_describe() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    create_topic(&admin, "secret", 2).await;
    create_topic(&admin, "open", 1).await;
    publish(&admin, "secret", 3).await;
    publish(&admin, "open", 3).await;
    let mut queues = QueuesClient::new(admin.clone());
    for (name, topic, pattern) in [
        ("q-pattern", "", ".*"),
        ("q-hidden", "secret", ""),
        ("q-open", "open", ""),
    ] {
        queues
            .create_queue(CreateQueueRequest {
                name: name.into(),
                topic: topic.into(),
                topic_pattern: pattern.into(),
                ..CreateQueueRequest::default()
            })
            .await
            .unwrap();
    }
    // carol may describe the queues and the topic open, nothing on secret.
    let carol = with_token(&channel, Some(&create_token(&admin, "carol", 0).await));
    allow(&admin, "carol", "queue:q-*", "describe").await;
    allow(&admin, "carol", "topic:open", "describe").await;

    // DescribeQueue and ListQueues leave secret out.
    assert_eq!(
        queue_topics(&describe_queue(&admin, "q-pattern").await),
        ["open", "secret"]
    );
    let pattern = describe_queue(&carol, "q-pattern").await;
    assert_eq!(queue_topics(&pattern), ["open"], "{pattern:?}");
    assert_eq!(
        queue_topics(&describe_queue(&admin, "q-hidden").await),
        ["secret"]
    );
    let hidden = describe_queue(&carol, "q-hidden").await;
    assert_eq!(queue_topics(&hidden), Vec::<String>::new(), "{hidden:?}");
    let listed = QueuesClient::new(carol.clone())
        .list_queues(ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 3);
    for queue in &listed {
        assert!(
            !queue_topics(queue).contains(&"secret".to_string()),
            "{queue:?}"
        );
    }
    refused_alike("ListQueues by topic", |topic| {
        let carol = carol.clone();
        async move {
            QueuesClient::new(carol)
                .list_queues(ListQueuesRequest {
                    topic: topic.into(),
                })
                .await
                .map(drop)
        }
    })
    .await;

    // ListDeliveries needs describe on the topic: named, refused alike; the queue's
    // own, refused without naming it.
    refused_alike("ListDeliveries", |topic| {
        let carol = carol.clone();
        async move {
            QueuesClient::new(carol)
                .list_deliveries(deliveries("q-pattern", topic, false))
                .await
                .map(drop)
        }
    })
    .await;
    let own = QueuesClient::new(carol.clone())
        .list_deliveries(deliveries("q-hidden", "", false))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
    assert!(!own.message().contains("secret"), "{}", own.message());
    // Describe on open: listed, but a header filter (it tests the messages' headers)
    // needs consume.
    QueuesClient::new(carol.clone())
        .list_deliveries(deliveries("q-open", "", false))
        .await
        .expect("describe on the queue and its topic lists deliveries");
    QueuesClient::new(carol.clone())
        .list_deliveries(deliveries("q-pattern", "open", false))
        .await
        .expect("describe on the queue and the named topic lists deliveries");
    for (queue, topic) in [("q-open", ""), ("q-pattern", "open")] {
        let status = QueuesClient::new(carol.clone())
            .list_deliveries(deliveries(queue, topic, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("may not consume topic:open"),
            "{}",
            status.message()
        );
    }
    allow(&admin, "carol", "topic:open", "consume").await;
    for (queue, topic) in [("q-open", ""), ("q-pattern", "open")] {
        QueuesClient::new(carol.clone())
            .list_deliveries(deliveries(queue, topic, true))
            .await
            .expect("consume on the topic allows a header filter");
    }
}

/// A queue on topic `topic` (or on `pattern`) reading it from its beginning.
async fn create_queue_from_earliest(admin: &Conn, name: &str, topic: &str, pattern: &str) {
    QueuesClient::new(admin.clone())
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic: topic.into(),
            topic_pattern: pattern.into(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            ..CreateQueueRequest::default()
        })
        .await
        .unwrap();
}

/// The refusals of a request naming a queue and a topic the queue does not consume
/// (GetDeliveryStatus, GetDeliveryHistory, ListDeliveries), by whoever `conn` carries.
async fn other_topic_refusals(conn: &Conn, queue: &str, topic: &str) -> Vec<Status> {
    let position = || MessagePosition {
        partition: 0,
        offset: 0,
    };
    let mut messages = MessagesClient::new(conn.clone());
    vec![
        messages
            .get_delivery_status(GetDeliveryStatusRequest {
                topic: topic.into(),
                message: Some(get_delivery_status_request::Message::Position(position())),
                consumer: Some(get_delivery_status_request::Consumer::Queue(queue.into())),
            })
            .await
            .unwrap_err(),
        messages
            .get_delivery_history(GetDeliveryHistoryRequest {
                topic: topic.into(),
                message: Some(get_delivery_history_request::Message::Position(position())),
                queue: queue.into(),
            })
            .await
            .unwrap_err(),
        QueuesClient::new(conn.clone())
            .list_deliveries(deliveries(queue, topic, false))
            .await
            .unwrap_err(),
    ]
}

/// A queue on a topic the caller may not describe: no refusal names that topic (nor
/// confirms a guess of it), no description shows its dead-letter topic, and a pattern
/// queue's counts add up only the topics shown (a queue on one topic's counts are the
/// queue's, which the caller may describe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_on_a_hidden_topic_is_named_in_no_refusal_and_no_dead_letter_topic() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    create_topic(&admin, "secret", 1).await;
    create_topic(&admin, "open", 1).await;
    publish(&admin, "secret", 3).await;
    publish(&admin, "open", 2).await;
    create_queue_from_earliest(&admin, "q-hidden", "secret", "").await;
    create_queue_from_earliest(&admin, "q-pattern", "", "secret|open").await;
    // carol may describe (and alter) the queues and describe the topic open.
    let carol = with_token(&channel, Some(&create_token(&admin, "carol", 0).await));
    allow(&admin, "carol", "queue:q-*", "describe").await;
    allow(&admin, "carol", "queue:q-*", "alter").await;
    allow(&admin, "carol", "topic:open", "describe").await;

    // A queue on another topic than the one named: the admin is told which, carol
    // only that it is not the one she named; INVALID_ARGUMENT for every RPC.
    for status in other_topic_refusals(&admin, "q-hidden", "open").await {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .starts_with(r#"queue "q-hidden" consumes topic "secret", not "open";"#),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("not found"), "{status:?}");
    }
    for status in other_topic_refusals(&carol, "q-hidden", "open").await {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().contains("secret"), "{}", status.message());
        assert!(
            status
                .message()
                .starts_with(r#"queue "q-hidden" does not consume topic "open";"#),
            "{}",
            status.message()
        );
    }

    // A dead-letter topic AlterQueue names is checked before it is compared with the
    // queue's own: the same refusal for the hidden topic and one that does not exist.
    refused_alike("AlterQueue's dead_letter_topic", |topic| {
        let carol = carol.clone();
        async move {
            QueuesClient::new(carol)
                .alter_queue(AlterQueueRequest {
                    name: "q-hidden".into(),
                    config: Some(QueueConfig {
                        dead_letter_topic: Some(topic.into()),
                        ..QueueConfig::default()
                    }),
                })
                .await
                .map(drop)
        }
    })
    .await;

    // Descriptions: the dead-letter topic (by default secret.dlq, q-pattern.dlq) only
    // to whoever may describe it.
    let dead_letters = |queue: &QueueDescription| {
        queue
            .config
            .as_ref()
            .and_then(|c| c.dead_letter_topic.clone())
    };
    assert_eq!(
        dead_letters(&describe_queue(&admin, "q-hidden").await).as_deref(),
        Some("secret.dlq")
    );
    let hidden = describe_queue(&carol, "q-hidden").await;
    assert_eq!(dead_letters(&hidden), None, "{hidden:?}");
    let listed = QueuesClient::new(carol.clone())
        .list_queues(ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 2);
    for queue in &listed {
        assert_eq!(dead_letters(queue), None, "{queue:?}");
    }
    allow(&admin, "carol", "topic:q-pattern.dlq", "describe").await;
    assert_eq!(
        dead_letters(&describe_queue(&carol, "q-pattern").await).as_deref(),
        Some("q-pattern.dlq")
    );

    // Counts: q-hidden's are the queue's (its topic left out); q-pattern's add up
    // the topic shown, open, only.
    assert_eq!((hidden.topic.as_str(), hidden.ready), ("", 3), "{hidden:?}");
    assert_eq!(describe_queue(&admin, "q-pattern").await.ready, 5);
    let pattern = describe_queue(&carol, "q-pattern").await;
    assert_eq!(queue_topics(&pattern), ["open"], "{pattern:?}");
    assert_eq!(pattern.ready, 2, "{pattern:?}");
}
