//! `tidelogd --auth` through the real binary, in plaintext (the same matrix and
//! revocation runs over TLS in `tls.rs`):
//!
//! - the authorization matrix: every operation x a principal allowed, a principal
//!   denied (PERMISSION_DENIED naming the operation and resource, the same for a
//!   resource that does not exist), no token, an expired token, a revoked token
//!   (UNAUTHENTICATED);
//! - an open Subscribe ends within a second of its token's revocation, and of its rule's
//!   removal;
//! - tokens and rules survive kill -9; the bootstrap token is written once;
//! - the CLI's `auth` / `acl` commands and `--token`;
//! - with auth off, the Access service says so and everything else is unchanged.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    AclRule, AddAclRequest, CommitOffsetsRequest, CreatePartitionsRequest, CreateTokenRequest,
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, FetchOffsetsRequest,
    FetchRequest, ListAclsRequest, ListTokensRequest, ListTopicsRequest, Message, PublishRequest,
    RemoveAclRequest, ResetOffsetsRequest, RevokeTokenRequest, SubscribeRequest, TopicConfig,
    TopicPartitionOffset, WhoAmIRequest, reset_offsets_request,
};
use tidelog_proto::v1::{GroupMembership, SubscribeResponse, subscribe_response::Event};
use tidelog_tests::{TestBroker, tidelog_command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub(crate) type Conn = InterceptedService<Channel, Token>;

#[derive(Clone)]
pub(crate) struct Token(Option<String>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

async fn conn(broker: &TestBroker, token: Option<&str>) -> Conn {
    with_token(&broker.channel().await, token)
}

/// `channel` (plaintext or TLS) with a token on every call.
pub(crate) fn with_token(channel: &Channel, token: Option<&str>) -> Conn {
    InterceptedService::new(channel.clone(), Token(token.map(str::to_string)))
}

pub(crate) fn bootstrap_token(broker: &TestBroker) -> String {
    std::fs::read_to_string(broker.data_dir().join("bootstrap-admin.token"))
        .expect("the bootstrap token file")
        .trim()
        .to_string()
}

pub(crate) async fn create_token(admin: &Conn, principal: &str, ttl_ms: u64) -> String {
    AccessClient::new(admin.clone())
        .create_token(CreateTokenRequest {
            principal: principal.into(),
            ttl_ms,
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn rule(principal: &str, resource: &str, operation: &str) -> AclRule {
    AclRule {
        principal: principal.into(),
        resource: resource.into(),
        operation: operation.into(),
        effect: "allow".into(),
    }
}

pub(crate) async fn allow(admin: &Conn, principal: &str, resource: &str, operation: &str) {
    AccessClient::new(admin.clone())
        .add_acl(AddAclRequest {
            rule: Some(rule(principal, resource, operation)),
        })
        .await
        .unwrap();
}

/// Creates topic `name` (one partition, defaults) as whoever `conn` carries.
pub(crate) async fn create_topic(conn: &Conn, name: &str) {
    AdminClient::new(conn.clone())
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await
        .unwrap();
}

/// One call of `operation` on a resource, by whoever `conn` carries.
async fn call(operation: &str, conn: &Conn, n: usize) -> Result<(), Status> {
    let mut admin = AdminClient::new(conn.clone());
    match operation {
        "publish" => PublisherClient::new(conn.clone())
            .publish(PublishRequest {
                topic: "orders".into(),
                messages: vec![Message {
                    value: "v".into(),
                    ..Message::default()
                }],
                ..PublishRequest::default()
            })
            .await
            .map(drop),
        "consume" => ConsumerClient::new(conn.clone())
            .fetch(FetchRequest {
                topic: "orders".into(),
                max_messages: 1,
                ..FetchRequest::default()
            })
            .await
            .map(drop),
        "create" => admin
            .create_topic(CreateTopicRequest {
                name: format!("made-{n}"),
                partitions: 1,
                config: None,
            })
            .await
            .map(drop),
        "alter" => admin
            .create_partitions(CreatePartitionsRequest {
                name: "orders".into(),
                partitions: 2,
            })
            .await
            .map(drop),
        "delete" => admin
            .delete_topic(DeleteTopicRequest {
                name: "doomed".into(),
            })
            .await
            .map(drop),
        "describe" => admin
            .describe_topic(DescribeTopicRequest {
                name: "orders".into(),
            })
            .await
            .map(drop),
        "group-commit" => GroupsClient::new(conn.clone())
            .commit_offsets(CommitOffsetsRequest {
                group_id: "billing".into(),
                offsets: vec![TopicPartitionOffset {
                    topic: "orders".into(),
                    partition: 0,
                    offset: 0,
                    metadata: String::new(),
                    topic_id: 0,
                }],
                ..CommitOffsetsRequest::default()
            })
            .await
            .map(drop),
        "group-reset" => GroupsClient::new(conn.clone())
            .reset_offsets(ResetOffsetsRequest {
                group_id: "billing".into(),
                scope: Some(reset_offsets_request::Scope::AllTopics(
                    reset_offsets_request::AllTopics {},
                )),
                spec: Some(reset_offsets_request::Spec::ToEarliest(
                    reset_offsets_request::ToEarliest {},
                )),
                execute: false,
            })
            .await
            .map(drop),
        "admin" => AccessClient::new(conn.clone())
            .list_tokens(ListTokensRequest {})
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// The resource each operation's call names, as a rule pattern.
fn resource_of(operation: &str) -> &'static str {
    match operation {
        "create" => "topic:made-*",
        "delete" => "topic:doomed",
        "group-commit" | "group-reset" => "group:billing",
        "admin" => "cluster",
        _ => "topic:orders",
    }
}

const OPERATIONS: [&str; 9] = [
    "publish",
    "consume",
    "create",
    "alter",
    "delete",
    "describe",
    "group-commit",
    "group-reset",
    "admin",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_for_every_operation() {
    let broker = TestBroker::start_with(&["--auth"]);
    authorization_matrix(&broker.channel().await, &bootstrap_token(&broker)).await;
}

/// Every operation x a principal allowed, denied, with no token, an expired, a revoked
/// and a malformed token, over `channel` to a broker started with `--auth`.
pub(crate) async fn authorization_matrix(channel: &Channel, bootstrap: &str) {
    let admin = with_token(channel, Some(bootstrap));
    let mut admin_client = AdminClient::new(admin.clone());
    for name in ["orders", "doomed"] {
        admin_client
            .create_topic(CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                config: Some(TopicConfig::default()),
            })
            .await
            .unwrap();
    }
    let none = with_token(channel, None);
    let expired_token = create_token(&admin, "alice", 1).await;
    let revoked_token = create_token(&admin, "alice", 0).await;
    AccessClient::new(admin.clone())
        .revoke_token(RevokeTokenRequest {
            id: revoked_token.clone(),
        })
        .await
        .unwrap();
    let expired = with_token(channel, Some(&expired_token));
    let revoked = with_token(channel, Some(&revoked_token));
    let malformed = with_token(channel, Some("tidelog_nope"));
    tokio::time::sleep(Duration::from_millis(5)).await;

    for (n, operation) in OPERATIONS.into_iter().enumerate() {
        // A principal allowed this operation only, and one allowed nothing.
        let allowed_name = format!("ok-{operation}");
        let allowed = with_token(channel, Some(&create_token(&admin, &allowed_name, 0).await));
        let denied = with_token(channel, Some(&create_token(&admin, "nobody", 0).await));
        allow(&admin, &allowed_name, resource_of(operation), operation).await;
        if operation == "group-commit" {
            // A commit moves the topic's offsets: consume on the topic too.
            allow(&admin, &allowed_name, "topic:orders", "consume").await;
        }
        let outcome = call(operation, &allowed, n).await;
        assert!(
            outcome.is_ok(),
            "{operation} by a principal allowed it: {outcome:?}"
        );
        let status = call(operation, &denied, n).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{operation}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("may not {operation} ")),
            "{operation}: {}",
            status.message()
        );
        for (who, conn) in [
            ("no token", &none),
            ("an expired token", &expired),
            ("a revoked token", &revoked),
            ("a malformed token", &malformed),
        ] {
            let status = call(operation, conn, n).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{operation} with {who}: {status:?}"
            );
        }
        // Allowed another operation is not allowed this one.
        if operation != "admin" {
            let other = call("admin", &allowed, n).await.unwrap_err();
            assert_eq!(other.code(), Code::PermissionDenied);
        }
    }
    let expired_message = call("describe", &expired, 0).await.unwrap_err();
    // It names when, as a UTC date-time: "expired at 2026-12-07T18:00:01.000Z".
    let when = expired_message
        .message()
        .split("expired at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default();
    assert!(
        when.len() == 24 && when.ends_with('Z') && when.as_bytes()[10] == b'T',
        "{expired_message:?}"
    );

    // Denied the same way whether or not the topic exists.
    let nobody = with_token(channel, Some(&create_token(&admin, "nobody", 0).await));
    let mut nobody_admin = AdminClient::new(nobody.clone());
    let mut answers = Vec::new();
    for name in ["orders", "no-such-topic"] {
        let status = nobody_admin
            .describe_topic(DescribeTopicRequest { name: name.into() })
            .await
            .unwrap_err();
        answers.push((status.code(), status.message().replace(name, "NAME")));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, Code::PermissionDenied);
    // Lists show only what the caller may describe.
    let listed = nobody_admin
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert!(listed.is_empty(), "{listed:?}");
    let listed = AdminClient::new(with_token(
        channel,
        Some(&create_token(&admin, "ok-describe", 0).await),
    ))
    .list_topics(ListTopicsRequest::default())
    .await
    .unwrap()
    .into_inner()
    .topics;
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["orders"]
    );

    // The health check needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // WhoAmI: any valid token.
    let me = AccessClient::new(nobody)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_subscribe_ends_within_a_second_of_revocation_or_rule_removal() {
    let broker = TestBroker::start_with(&["--auth"]);
    revocation_ends_open_streams(&broker.channel().await, &bootstrap_token(&broker)).await;
}

/// An open Subscribe over `channel` ends within a second of its token's revocation,
/// and of its rule's removal.
pub(crate) async fn revocation_ends_open_streams(channel: &Channel, bootstrap: &str) {
    let admin = with_token(channel, Some(bootstrap));
    let created = AdminClient::new(admin.clone())
        .create_topic(CreateTopicRequest {
            name: "orders".into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await;
    // The matrix may have made it on the same broker.
    if let Err(status) = created {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    allow(&admin, "reader", "topic:orders", "consume").await;
    for ending in ["revoke", "remove the rule"] {
        let token = create_token(&admin, "reader", 0).await;
        let reader = with_token(channel, Some(&token));
        let mut stream = ConsumerClient::new(reader)
            .subscribe(SubscribeRequest {
                topic: "orders".into(),
                ..SubscribeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Open and quiet for a while: the re-checks pass.
        assert!(
            tokio::time::timeout(Duration::from_millis(600), stream.message())
                .await
                .is_err(),
            "{ending}: the stream should wait for messages"
        );
        let started = Instant::now();
        let mut access = AccessClient::new(admin.clone());
        let expected = if ending == "revoke" {
            access
                .revoke_token(RevokeTokenRequest { id: token.clone() })
                .await
                .unwrap();
            Code::Unauthenticated
        } else {
            access
                .remove_acl(RemoveAclRequest {
                    rule: Some(rule("reader", "topic:orders", "consume")),
                })
                .await
                .unwrap();
            Code::PermissionDenied
        };
        let ended = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .expect("the stream ended");
        let status = ended.unwrap_err();
        assert_eq!(status.code(), expected, "{ending}: {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{ending}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_rules_survive_kill_9_and_the_bootstrap_token_is_written_once() {
    let mut broker = TestBroker::start_with(&["--auth"]);
    let bootstrap = bootstrap_token(&broker);
    let admin = conn(&broker, Some(&bootstrap)).await;
    let token = create_token(&admin, "alice", 0).await;
    allow(&admin, "alice", "topic:*", "describe").await;
    let gone = create_token(&admin, "mallory", 0).await;
    AccessClient::new(admin.clone())
        .revoke_token(RevokeTokenRequest { id: gone.clone() })
        .await
        .unwrap();
    broker.kill9();
    broker.restart();
    assert_eq!(
        bootstrap_token(&broker),
        bootstrap,
        "the bootstrap file is not rewritten"
    );
    let alice = conn(&broker, Some(&token)).await;
    AdminClient::new(alice)
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap();
    let status = AdminClient::new(conn(&broker, Some(&gone)).await)
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        !broker.log().contains(&bootstrap[30..]),
        "the token's secret must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tokens_and_rules_and_sends_its_token() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = bootstrap_token(&broker);
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut command = tidelog_command();
        command.args(["--server", &broker.endpoint()]);
        command.env_remove("TIDELOG_TOKEN");
        if let Some(token) = token {
            command.env("TIDELOG_TOKEN", token);
        }
        command.args(args).output().unwrap()
    };
    let created = cli(
        Some(&admin),
        &[
            "auth",
            "token",
            "create",
            "--principal",
            "ops",
            "--ttl",
            "1h",
            "--json",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let ops = created["token"].as_str().unwrap().to_string();
    assert!(created["expires_at_ms"].as_i64().is_some());

    let denied = cli(Some(&ops), &["topic", "create", "ops-topic"]);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("may not create topic:ops-topic"),
        "{stderr}"
    );
    assert!(stderr.contains("tidelog acl add"), "{stderr}");

    let added = cli(
        Some(&admin),
        &[
            "acl",
            "add",
            "--principal",
            "ops",
            "--resource",
            "topic:ops-*",
            "--operation",
            "create",
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let made = cli(Some(&ops), &["topic", "create", "ops-topic"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let listed = cli(Some(&admin), &["acl", "list", "--json"]);
    let rules: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["principal"] == "ops" && r["resource"] == "topic:ops-*")
    );
    let tokens = cli(Some(&admin), &["auth", "token", "list"]);
    let text = String::from_utf8_lossy(&tokens.stdout);
    assert!(text.contains("ops") && !text.contains(&ops[25..]), "{text}");

    let id = created["id"].as_str().unwrap();
    let revoked = cli(Some(&admin), &["auth", "token", "revoke", id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let refused = cli(Some(&ops), &["topic", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not valid"));
    let none = cli(None, &["topic", "list"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("requires a token"));
    let typo = cli(Some("tidelog_123"), &["topic", "list"]);
    assert_eq!(
        typo.status.code(),
        Some(2),
        "a malformed token is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_the_access_service_says_so() {
    let broker = TestBroker::start();
    let mut access = AccessClient::new(broker.channel().await);
    let status = access.list_tokens(ListTokensRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("--auth"), "{status:?}");
    let me = access
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "");
    assert!(!broker.data_dir().join("bootstrap-admin.token").exists());
    assert!(!broker.data_dir().join("state/access").exists());
}

/// The record-batch RPCs and topic patterns are checked like the per-message ones: a
/// caller allowed to consume `orders` and nothing else may FetchBatches and
/// SubscribeBatches on it, is refused PublishBatch (before its bytes are looked at:
/// garbage gets PERMISSION_DENIED, not INVALID_ARGUMENT) and every batch form on
/// `secret`; an admin's garbage batch reaches validation. A Subscribe by pattern, plain
/// or as a group member, matches only the topics the caller may consume (others are
/// left out silently), and takes a topic in once a rule allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rpcs_and_patterns_are_authorized() {
    use tidelog_proto::v1::PublishBatchRequest;

    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, Some(&bootstrap_token(&broker))).await;
    for name in ["orders", "secret"] {
        create_topic(&admin, name).await;
    }
    let reader_token = create_token(&admin, "reader", 0).await;
    allow(&admin, "reader", "topic:orders", "consume").await;
    let reader = conn(&broker, Some(&reader_token)).await;

    let garbage = |topic: &str| PublishBatchRequest {
        topic: topic.into(),
        partition: 0,
        batch: vec![0xff; 80].into(),
        ..PublishBatchRequest::default()
    };
    let denied = PublisherClient::new(reader.clone())
        .publish_batch(garbage("orders"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let invalid = PublisherClient::new(admin.clone())
        .publish_batch(garbage("orders"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    let fetch = |topic: &str| FetchRequest {
        topic: topic.into(),
        max_messages: 1,
        ..FetchRequest::default()
    };
    ConsumerClient::new(reader.clone())
        .fetch_batches(fetch("orders"))
        .await
        .expect("consume on orders allows FetchBatches");
    let denied = ConsumerClient::new(reader.clone())
        .fetch_batches(fetch("secret"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = ConsumerClient::new(reader.clone())
        .subscribe_batches(SubscribeRequest {
            topic: "secret".into(),
            ..SubscribeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ConsumerClient::new(reader.clone())
        .subscribe_batches(SubscribeRequest {
            topic: "orders".into(),
            ..SubscribeRequest::default()
        })
        .await
        .expect("consume on orders allows SubscribeBatches");
    // As a group member, SubscribeBatches also needs consume on the group.
    let member = |group: &str| SubscribeRequest {
        topic: "orders".into(),
        group: Some(GroupMembership {
            group_id: group.into(),
            ..GroupMembership::default()
        }),
        ..SubscribeRequest::default()
    };
    let denied = ConsumerClient::new(reader.clone())
        .subscribe_batches(member("not-mine"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("group:not-mine"),
        "{}",
        denied.message()
    );

    // A pattern matches only the topics the caller may consume, plain and as a
    // group member; a rule added later takes a topic in within a rescan.
    let mut plain = ConsumerClient::new(reader.clone())
        .subscribe(SubscribeRequest {
            topic_pattern: ".*".into(),
            ..SubscribeRequest::default()
        })
        .await
        .expect("a pattern is allowed under --auth")
        .into_inner();
    let changed = |event: Option<SubscribeResponse>| match event.and_then(|e| e.event) {
        Some(Event::TopicsChanged(changed)) => changed.topics,
        other => panic!("expected TopicsChanged, got {other:?}"),
    };
    let first = tokio::time::timeout(Duration::from_secs(10), plain.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed(first),
        vec!["orders".to_string()],
        "secret is left out"
    );
    // A member of a group it may not consume is refused, naming the group.
    let member = |group: &str| SubscribeRequest {
        topic_pattern: ".*".into(),
        group: Some(GroupMembership {
            group_id: group.into(),
            ..GroupMembership::default()
        }),
        ..SubscribeRequest::default()
    };
    let denied = ConsumerClient::new(reader.clone())
        .subscribe(member("other"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    allow(&admin, "reader", "group:g", "consume").await;
    let mut grouped = ConsumerClient::new(reader.clone())
        .subscribe(member("g"))
        .await
        .expect("a pattern member under --auth")
        .into_inner();
    // The topics of the next Assignment (skipping the PositionResets of a group
    // without commits).
    async fn assigned(stream: &mut tonic::Streaming<SubscribeResponse>) -> Vec<String> {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .unwrap()
                .unwrap()
                .and_then(|e| e.event);
            match event {
                Some(Event::Assignment(a)) => {
                    return a.topics.into_iter().map(|t| t.topic).collect();
                }
                Some(Event::PositionReset(_)) => {}
                other => panic!("expected an Assignment, got {other:?}"),
            }
        }
    }
    assert_eq!(assigned(&mut grouped).await, vec!["orders".to_string()]);

    allow(&admin, "reader", "topic:secret", "consume").await;
    let granted = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(10), plain.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed(next),
        vec!["orders".to_string(), "secret".to_string()]
    );
    assert_eq!(
        assigned(&mut grouped).await,
        vec!["orders".to_string(), "secret".to_string()]
    );
    assert!(
        granted.elapsed() < Duration::from_millis(1500),
        "taken in after {:?}",
        granted.elapsed()
    );
}

/// Every admin change (topic, group reset, queue) writes an audit line with principal,
/// RPC, operation, resource and result, with auth on and off; audit lines count in
/// `tidelog_audit_events{result}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_and_counted_by_result() {
    use tidelog_tests::metric_value;
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, Some(&bootstrap_token(&broker))).await;
    let mut admin_client = AdminClient::new(admin.clone());
    admin_client
        .create_topic(CreateTopicRequest {
            name: "audited".into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await
        .unwrap();
    admin_client
        .create_partitions(CreatePartitionsRequest {
            name: "audited".into(),
            partitions: 2,
        })
        .await
        .unwrap();
    GroupsClient::new(admin.clone())
        .reset_offsets(ResetOffsetsRequest {
            group_id: "billing".into(),
            scope: Some(reset_offsets_request::Scope::AllTopics(
                reset_offsets_request::AllTopics {},
            )),
            spec: Some(reset_offsets_request::Spec::ToEarliest(
                reset_offsets_request::ToEarliest {},
            )),
            execute: true,
        })
        .await
        .unwrap();
    admin_client
        .delete_topic(DeleteTopicRequest {
            name: "no-such-topic".into(),
        })
        .await
        .unwrap_err();
    admin_client
        .delete_topic(DeleteTopicRequest {
            name: "audited".into(),
        })
        .await
        .unwrap();
    // A refused change: one "call refused" line, no "admin change" line.
    let nobody = conn(&broker, Some(&create_token(&admin, "nobody", 0).await)).await;
    AdminClient::new(nobody)
        .create_topic(CreateTopicRequest {
            name: "sneaky".into(),
            partitions: 1,
            config: None,
        })
        .await
        .unwrap_err();
    let log = broker.log();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tidelog_audit") && l.contains("admin change"))
        .collect();
    for expected in [
        ("Admin/CreateTopic", "create", "topic:audited", "OK"),
        ("Admin/CreatePartitions", "alter", "topic:audited", "OK"),
        ("Groups/ResetOffsets", "group-reset", "group:billing", "OK"),
        (
            "Admin/DeleteTopic",
            "delete",
            "topic:no-such-topic",
            "NOT_FOUND",
        ),
        ("Admin/DeleteTopic", "delete", "topic:audited", "OK"),
    ] {
        let (rpc, operation, resource, result) = expected;
        assert!(
            changes.iter().any(|l| l.contains("principal=\"admin\"")
                && l.contains(&format!("rpc=\"{rpc}\""))
                && l.contains(&format!("operation=\"{operation}\""))
                && l.contains(&format!("resource=\"{resource}\""))
                && l.contains(&format!("result=\"{result}\""))),
            "{expected:?} not in:\n{}",
            changes.join("\n")
        );
    }
    assert!(!changes.iter().any(|l| l.contains("sneaky")), "{changes:?}");
    assert!(log.contains("call refused") && log.contains("may not create topic:sneaky"));
    let metrics = broker.metrics_text();
    // The four admin changes that succeeded, and the token made for nobody.
    assert!(
        metric_value(&metrics, "tidelog_audit_events_total{result=\"OK\"}")
            .is_some_and(|n| n >= 5.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "tidelog_audit_events_total{result=\"NOT_FOUND\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tidelog_audit_events_total{result=\"PERMISSION_DENIED\"}"
        ),
        Some(1.0)
    );

    // Auth off: the changes are audited all the same, by principal "-".
    let open = TestBroker::start();
    tidelog_tests::create_topic(&open.channel().await, "plain", 1, TopicConfig::default()).await;
    assert!(
        open.log().lines().any(|l| l.contains("admin change")
            && l.contains("principal=\"-\"")
            && l.contains("resource=\"topic:plain\"")
            && l.contains("result=\"OK\"")),
        "{}",
        open.log()
    );
}

/// What a pattern stream tells, in either form: values read, or its new topic list.
enum Seen {
    Values(Vec<String>),
    Topics(Vec<String>),
    Other,
}

type SeenStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Seen> + Send>>;

/// A pattern stream whose right to one of its topics goes and comes back goes on in
/// that topic where it stood: nothing is delivered twice on one stream (Subscribe and
/// SubscribeBatches).
#[tokio::test]
async fn a_pattern_stream_resumes_a_topic_whose_right_comes_back_where_it_stood() {
    use tidelog_proto::v1::StartPosition;
    use tidelog_proto::v1::start_position::{Earliest, Position};
    use tidelog_proto::v1::subscribe_batches_response::Event as BatchEvent;
    use tokio_stream::StreamExt;

    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, Some(&bootstrap_token(&broker))).await;
    for name in ["pub-a", "pub-b"] {
        AdminClient::new(admin.clone())
            .create_topic(CreateTopicRequest {
                name: name.into(),
                partitions: 2,
                config: Some(TopicConfig::default()),
            })
            .await
            .unwrap();
    }
    let publish = |value: String| {
        let admin = admin.clone();
        async move {
            PublisherClient::new(admin)
                .publish(PublishRequest {
                    topic: "pub-b".into(),
                    messages: vec![Message {
                        value: value.into(),
                        ..Message::default()
                    }],
                    ..PublishRequest::default()
                })
                .await
                .unwrap();
        }
    };
    let reader_token = create_token(&admin, "reader", 0).await;
    allow(&admin, "reader", "topic:pub-a", "consume").await;
    allow(&admin, "reader", "topic:pub-b", "consume").await;
    let reader = conn(&broker, Some(&reader_token)).await;
    for (round, batch_form) in [false, true].into_iter().enumerate() {
        let request = SubscribeRequest {
            topic_pattern: "pub-.*".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            ..SubscribeRequest::default()
        };
        let mut client = ConsumerClient::new(reader.clone());
        let mut events: SeenStream = if batch_form {
            let stream = client
                .subscribe_batches(request)
                .await
                .unwrap()
                .into_inner();
            Box::pin(stream.map(|event| {
                match event.expect("ok").event {
                    Some(BatchEvent::Batches(batches)) => Seen::Values(
                        batches
                            .batches
                            .iter()
                            .flat_map(|b| {
                                tidelog_storage::client_batch::delivered_records(
                                    &b.batch,
                                    b.skip_front,
                                    &b.skip,
                                    batches.now_ms,
                                )
                                .expect("decode")
                            })
                            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                            .collect(),
                    ),
                    Some(BatchEvent::TopicsChanged(changed)) => Seen::Topics(changed.topics),
                    _ => Seen::Other,
                }
            }))
        } else {
            let stream = client.subscribe(request).await.unwrap().into_inner();
            Box::pin(stream.map(|event| {
                match event.expect("ok").event {
                    Some(Event::Batch(batch)) => Seen::Values(
                        batch
                            .messages
                            .iter()
                            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
                            .collect(),
                    ),
                    Some(Event::TopicsChanged(changed)) => Seen::Topics(changed.topics),
                    _ => Seen::Other,
                }
            }))
        };
        let mut values: Vec<String> = Vec::new();
        // Reads until `until` holds of the values read and the latest topic list.
        let mut read_until =
            async |values: &mut Vec<String>, until: &dyn Fn(&[String], &[String]) -> bool| {
                let mut topics: Vec<String> = Vec::new();
                while !until(values, &topics) {
                    let seen = tokio::time::timeout(Duration::from_secs(10), events.next())
                        .await
                        .expect("an event in time")
                        .expect("open");
                    match seen {
                        Seen::Values(more) => values.extend(more),
                        Seen::Topics(list) => topics = list,
                        Seen::Other => {}
                    }
                }
            };
        let three: Vec<String> = (0..3).map(|i| format!("r{round}-{i}")).collect();
        for value in &three {
            publish(value.clone()).await;
        }
        let skip = 4 * round; // the earlier round's messages
        read_until(&mut values, &|v, _| v.len() >= skip + 3).await;
        // The right goes: pub-b leaves the stream.
        AccessClient::new(admin.clone())
            .remove_acl(RemoveAclRequest {
                rule: Some(rule("reader", "topic:pub-b", "consume")),
            })
            .await
            .unwrap();
        read_until(&mut values, &|_, t| t == ["pub-a"]).await;
        // ... and comes back: pub-b is read on from where it stood.
        allow(&admin, "reader", "topic:pub-b", "consume").await;
        read_until(&mut values, &|_, t| t == ["pub-a", "pub-b"]).await;
        publish(format!("r{round}-3")).await;
        read_until(&mut values, &|v, _| {
            v.iter().any(|v| v == &format!("r{round}-3"))
        })
        .await;
        let distinct: BTreeSet<&String> = values.iter().collect();
        assert_eq!(
            distinct.len(),
            values.len(),
            "delivered twice on one stream (batch form {batch_form}): {values:?}"
        );
        assert_eq!(values.len(), skip + 4, "{values:?}");
    }
}

/// The rules of `conn`'s broker as ListAcls shows them: (principal, resource).
async fn listed_rules(admin: &Conn) -> Vec<(String, String)> {
    AccessClient::new(admin.clone())
        .list_acls(ListAclsRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules
        .into_iter()
        .map(|r| (r.principal, r.resource))
        .collect()
}

/// A resource that could never match (a `*` not at the end, a name after `cluster:`)
/// is refused by AddAcl (INVALID_ARGUMENT naming the grammar) and by `tidelog acl add`
/// (in flag terms, exit 2), so a deny written so cannot silently deny nothing; one an
/// older broker stored is still removed as ListAcls shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_could_never_match_are_refused() {
    let mut broker = TestBroker::start_with(&["--auth"]);
    let token = bootstrap_token(&broker);
    let admin = conn(&broker, Some(&token)).await;
    let before = listed_rules(&admin).await;
    let bad = [
        "topic:payroll*.eu",
        "topic:*payroll",
        "cluster:foo",
        "cluster:x*",
        "cluster:*",
    ];
    for resource in bad {
        for remove in [false, true] {
            let mut access = AccessClient::new(admin.clone());
            let rule = Some(AclRule {
                effect: "deny".into(),
                ..rule("alice", resource, "*")
            });
            let status = match remove {
                false => access.add_acl(AddAclRequest { rule }).await.map(drop),
                true => access.remove_acl(RemoveAclRequest { rule }).await.map(drop),
            }
            .unwrap_err();
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{resource}: {status:?}"
            );
            let message = status.message();
            assert!(
                message.starts_with(&format!("rule.resource: resource {resource:?}"))
                    && message.contains("a resource is topic:NAME, topic:PREFIX*, topic:*"),
                "{message}"
            );
        }
        let cli = tidelog_command()
            .args(["--server", &broker.endpoint()])
            .env("TIDELOG_TOKEN", &token)
            .args(["acl", "add", "--principal", "alice", "--operation", "*"])
            .args(["--deny", "--resource", resource])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&cli.stderr);
        assert_eq!(cli.status.code(), Some(2), "{resource}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: --resource: resource {resource:?}")),
            "{stderr}"
        );
    }
    assert_eq!(listed_rules(&admin).await, before, "nothing was stored");

    // A rule stored before the grammar was enforced loads, lists, and is removed by
    // its listed text.
    broker.stop();
    {
        use tidelog_storage::access::{self, AccessOp, Effect, ResourceKind, ResourcePattern};
        let log = access::open(
            std::sync::Arc::new(tidelog_storage::OsFs),
            &broker.data_dir(),
            std::sync::Arc::new(tidelog_storage::SystemClock),
        )
        .unwrap();
        log.append_one(AccessOp::AddRule(access::Rule {
            principal: "alice".into(),
            resource: ResourcePattern {
                kind: Some(ResourceKind::Topic),
                prefix: false,
                name: "payroll*.eu".into(),
            },
            operation: None,
            effect: Effect::Deny,
        }))
        .unwrap();
    }
    broker.restart();
    let admin = conn(&broker, Some(&token)).await;
    let old = ("alice".to_string(), "topic:payroll*.eu".to_string());
    assert!(listed_rules(&admin).await.contains(&old));
    AccessClient::new(admin.clone())
        .remove_acl(RemoveAclRequest {
            rule: Some(AclRule {
                effect: "deny".into(),
                ..rule("alice", "topic:payroll*.eu", "*")
            }),
        })
        .await
        .expect("a stored rule is removed as listed");
    assert_eq!(listed_rules(&admin).await, before);
}

/// The committed offsets of group `group` as `conn`'s caller may see them: (topic,
/// partition, offset).
pub(crate) async fn committed(conn: &Conn, group: &str) -> Vec<(String, u32, u64)> {
    GroupsClient::new(conn.clone())
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.into(),
            topic: None,
        })
        .await
        .unwrap()
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset))
        .collect()
}

/// A member of group `group` on topic `t`, auto-committing every 100 ms or not.
fn member_of(group: &str, auto_commit: bool) -> SubscribeRequest {
    SubscribeRequest {
        topic: "t".into(),
        group: Some(GroupMembership {
            group_id: group.into(),
            auto_commit_interval_ms: if auto_commit { 100 } else { 0 },
            ..GroupMembership::default()
        }),
        ..SubscribeRequest::default()
    }
}

/// A group member that asks for auto-commit moves the group's offsets as CommitOffsets
/// does: it needs group-commit on the group (PERMISSION_DENIED before it joins, from
/// Subscribe and SubscribeBatches alike), and its stream ends within a second of that
/// right's removal. Without auto-commit, consume on the group is enough, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_commit_needs_group_commit_on_the_group() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, Some(&bootstrap_token(&broker))).await;
    AdminClient::new(admin.clone())
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await
        .unwrap();
    PublisherClient::new(admin.clone())
        .publish(PublishRequest {
            topic: "t".into(),
            messages: vec![
                Message {
                    value: "v".into(),
                    ..Message::default()
                };
                10
            ],
            ..PublishRequest::default()
        })
        .await
        .unwrap();
    GroupsClient::new(admin.clone())
        .commit_offsets(CommitOffsetsRequest {
            group_id: "gx".into(),
            offsets: vec![TopicPartitionOffset {
                topic: "t".into(),
                partition: 0,
                offset: 2,
                ..TopicPartitionOffset::default()
            }],
            ..CommitOffsetsRequest::default()
        })
        .await
        .unwrap();
    let at_two = vec![("t".to_string(), 0, 2)];
    allow(&admin, "carol", "topic:t", "consume").await;
    allow(&admin, "carol", "group:g*", "consume").await;
    let carol = conn(&broker, Some(&create_token(&admin, "carol", 0).await)).await;

    // Refused before joining, by both forms; the offsets stay.
    let mut consumer = ConsumerClient::new(carol.clone());
    let refusals = [
        consumer
            .subscribe(member_of("gx", true))
            .await
            .map(drop)
            .unwrap_err(),
        consumer
            .subscribe_batches(member_of("gx", true))
            .await
            .map(drop)
            .unwrap_err(),
    ];
    for status in refusals {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("may not group-commit group:gx")
                && status.message().contains("auto_commit_interval_ms"),
            "{}",
            status.message()
        );
    }
    assert_eq!(committed(&admin, "gx").await, at_two);

    // Without auto-commit the member reads (and commits nothing).
    let mut plain = consumer
        .subscribe(member_of("gx", false))
        .await
        .expect("consume on the group is enough without auto-commit")
        .into_inner();
    plain.message().await.unwrap().expect("an event");
    drop(plain);

    // Allowed group-commit (on another group, which no member left): it joins; the
    // right removed, its stream ends within a second, as at any rule change.
    allow(&admin, "carol", "group:gy", "group-commit").await;
    let mut member = consumer
        .subscribe(member_of("gy", true))
        .await
        .expect("group-commit on the group allows auto-commit")
        .into_inner();
    member.message().await.unwrap().expect("an event");
    let started = Instant::now();
    AccessClient::new(admin.clone())
        .remove_acl(RemoveAclRequest {
            rule: Some(rule("carol", "group:gy", "group-commit")),
        })
        .await
        .unwrap();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(3), member.message())
            .await
            .expect("the stream ended")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("may not group-commit group:gy"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
