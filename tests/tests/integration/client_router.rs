//! tidelog-client's Router through the real broker: a pattern route under `--auth`
//! leaves out the topics the caller may not consume (as the broker's own pattern
//! subscriptions do) and picks them up once granted, while a named route the caller
//! may not consume, or a refused dead-letter publish, fails the router; a router
//! that stops leaves its group at once; a long handler error still fits a small
//! existing dead-letter topic.

use std::time::Duration;

use tidelog_client::proto::{AclRule, AddAclRequest, DescribeGroupRequest, RemoveAclRequest};
use tidelog_client::{
    Client, ClientOptions, Error, Message, Producer, ProducerConfig, Record, Retry, Router,
    RouterConfig,
};
use tidelog_tests::TestBroker;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::auth::bootstrap_token;
use crate::support::EVENT_TIMEOUT;

/// Well under the router members' 10 s session timeout: a member that leaves when its
/// router stops is gone from the group within this.
const LEFT_WITHIN: Duration = Duration::from_secs(3);

fn acl(resource: &str, operation: &str, effect: &str) -> AclRule {
    AclRule {
        principal: "svc".into(),
        resource: resource.into(),
        operation: operation.into(),
        effect: effect.into(),
    }
}

async fn add_acl(admin: &Client, rule: AclRule) {
    admin
        .access()
        .add_acl(AddAclRequest { rule: Some(rule) })
        .await
        .expect("add acl");
}

async fn publish(client: &Client, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = Producer::new(client, ProducerConfig::default());
    for value in values {
        producer
            .send_and_wait(Record::new(topic, value))
            .await
            .expect("publish");
    }
    producer.close().await.expect("close producer");
}

type Running = JoinHandle<tidelog_client::Result<()>>;

/// A router of group `group` on `client` built by `routes` (each route sends the
/// topic and value of what it handles to the receiver), with a quick rescan.
fn start_router(
    client: &Client,
    group: &str,
    routes: impl FnOnce(Router, &mpsc::UnboundedSender<(String, String)>) -> Router,
) -> (
    tokio::sync::oneshot::Sender<()>,
    Running,
    mpsc::UnboundedReceiver<(String, String)>,
) {
    let config = RouterConfig {
        rescan: Duration::from_millis(100),
        ..RouterConfig::new(group)
    };
    let (handled, seen) = mpsc::unbounded_channel();
    let router = routes(Router::new(client, config), &handled);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    (stop, tokio::spawn(router.run(stopped)), seen)
}

/// A handler that reports what it handles on `handled`.
fn reporting(
    handled: &mpsc::UnboundedSender<(String, String)>,
) -> impl Fn(Message) -> std::future::Ready<tidelog_client::HandlerResult> + Send + Sync + 'static {
    let handled = handled.clone();
    move |message: Message| {
        let _ = handled.send((
            message.topic.to_string(),
            String::from_utf8_lossy(&message.value).into_owned(),
        ));
        std::future::ready(Ok(()))
    }
}

/// Waits until `seen` has reported `count` messages of `topic` (others are returned
/// too); panics with the router's outcome if it ends first.
async fn handled_of(
    seen: &mut mpsc::UnboundedReceiver<(String, String)>,
    running: &mut Running,
    topic: &str,
    count: usize,
) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let wait = async {
        while all.iter().filter(|(t, _)| t == topic).count() < count {
            tokio::select! {
                Some(one) = seen.recv() => all.push(one),
                outcome = &mut *running => panic!("the router ended: {outcome:?}; handled {all:?}"),
            }
        }
    };
    timeout(EVENT_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("{count} messages of {topic} were not handled"));
    all
}

/// Members of `group` reading `topic`, connected or kept for a reconnect (none when
/// the group is gone: no members and no commits).
async fn members_on(admin: &Client, group: &str, topic: &str) -> usize {
    let described = admin
        .groups()
        .describe_group(DescribeGroupRequest {
            group_id: group.into(),
        })
        .await;
    let group = match described {
        Ok(described) => described.into_inner().group.expect("group"),
        Err(status) if status.code() == tonic::Code::NotFound => return 0,
        Err(status) => panic!("describe group: {status:?}"),
    };
    group.members.iter().filter(|m| m.topic == topic).count()
}

/// Waits (up to [`LEFT_WITHIN`]) until no member of `group` reads `topic`.
async fn assert_left(admin: &Client, group: &str, topic: &str) {
    let deadline = tokio::time::Instant::now() + LEFT_WITHIN;
    while members_on(admin, group, topic).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a member of the stopped router still holds {topic} in group {group} after {LEFT_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_router_pattern_route_leaves_out_a_topic_it_may_not_consume_until_granted() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = Client::connect_with(
        &broker.endpoint(),
        ClientOptions::default().token(bootstrap_token(&broker)),
    )
    .await
    .expect("connect admin");
    let token = admin
        .access()
        .create_token(tidelog_client::proto::CreateTokenRequest {
            principal: "svc".into(),
            ttl_ms: 0,
            description: String::new(),
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    for (resource, operation) in [
        ("topic:pay.*", "consume"),
        ("topic:pay.*", "describe"),
        ("topic:pay.*", "publish"),
        ("topic:pay.*", "create"),
        ("group:rt", "consume"),
        ("group:rt", "group-commit"),
        ("group:rt", "describe"),
    ] {
        add_acl(&admin, acl(resource, operation, "allow")).await;
    }
    let deny = acl("topic:pay.secret", "consume", "deny");
    add_acl(&admin, deny.clone()).await;
    admin
        .create_topic("pay.a", 2, Default::default())
        .await
        .expect("create pay.a");
    admin
        .create_topic("pay.secret", 1, Default::default())
        .await
        .expect("create pay.secret");
    publish(&admin, "pay.a", (0..10).map(|i| format!("a{i}"))).await;
    publish(&admin, "pay.secret", (0..5).map(|i| format!("s{i}"))).await;

    let svc = Client::connect_with(&broker.endpoint(), ClientOptions::default().token(&token))
        .await
        .expect("connect svc");
    let (stop, mut running, mut seen) = start_router(&svc, "rt", |router, handled| {
        router
            .route_pattern(r"pay\..*", reporting(handled))
            .expect("pattern")
    });
    // pay.a is routed; pay.secret, which svc may not consume, is left out.
    let handled = handled_of(&mut seen, &mut running, "pay.a", 10).await;
    assert!(
        handled.iter().all(|(topic, _)| topic == "pay.a"),
        "{handled:?}"
    );
    // Granted later: the next rescans pick it up.
    admin
        .access()
        .remove_acl(RemoveAclRequest { rule: Some(deny) })
        .await
        .expect("remove the deny");
    let handled = handled_of(&mut seen, &mut running, "pay.secret", 5).await;
    let mut secret: Vec<_> = handled
        .into_iter()
        .filter(|(topic, _)| topic == "pay.secret")
        .map(|(_, value)| value)
        .collect();
    secret.sort();
    assert_eq!(secret, ["s0", "s1", "s2", "s3", "s4"]);
    stop.send(()).expect("stop");
    running.await.expect("join").expect("router");

    // A route that names a topic svc may not consume is a configuration error: the
    // router fails at start.
    add_acl(&admin, acl("topic:pay.secret", "consume", "deny")).await;
    let (_stop, running, _seen) = start_router(&svc, "rt", |router, handled| {
        router.route("pay.secret", reporting(handled))
    });
    match timeout(EVENT_TIMEOUT, running).await {
        Ok(Ok(Err(Error::PermissionDenied { message }))) => {
            assert!(message.contains("pay.secret"), "{message}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }

    // A pattern route whose dead-letter publish is refused is not left out quietly:
    // the router fails.
    add_acl(&admin, acl("topic:pay.p.dlq", "publish", "deny")).await;
    admin
        .create_topic("pay.p", 1, Default::default())
        .await
        .expect("create pay.p");
    publish(&admin, "pay.p", ["poison".to_string()]).await;
    let config = one_try("rt");
    let router = Router::new(&svc, config)
        .route_pattern(r"pay\.p", |_message: Message| async move {
            Err("poison".into())
        })
        .expect("pattern");
    match timeout(EVENT_TIMEOUT, router.run(std::future::pending::<()>())).await {
        Ok(Err(Error::PermissionDenied { message })) => {
            assert!(message.contains("pay.p.dlq"), "{message}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn a_router_that_stops_leaves_its_group_at_once() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    for topic in ["r.a", "r.b"] {
        client
            .create_topic(topic, 2, Default::default())
            .await
            .expect("create");
        publish(&client, topic, ["one".to_string()]).await;
    }
    // Stopped by its caller.
    let (stop, mut running, mut seen) = start_router(&client, "leaving", |router, handled| {
        router.route("r.a", reporting(handled))
    });
    handled_of(&mut seen, &mut running, "r.a", 1).await;
    assert_eq!(members_on(&client, "leaving", "r.a").await, 1);
    stop.send(()).expect("stop");
    running.await.expect("join").expect("router");
    assert_left(&client, "leaving", "r.a").await;

    // Stopped by an error: a named route's topic is deleted.
    let (_stop, mut running, mut seen) = start_router(&client, "leaving", |router, handled| {
        router
            .route("r.a", reporting(handled))
            .route("r.b", reporting(handled))
    });
    publish(&client, "r.a", ["two".to_string()]).await;
    let handled = handled_of(&mut seen, &mut running, "r.a", 1).await;
    if !handled.iter().any(|(topic, _)| topic == "r.b") {
        handled_of(&mut seen, &mut running, "r.b", 1).await;
    }
    client
        .admin()
        .delete_topic(tidelog_client::proto::DeleteTopicRequest { name: "r.b".into() })
        .await
        .expect("delete r.b");
    match timeout(EVENT_TIMEOUT, running).await {
        Ok(Ok(Err(Error::TopicNotFound { topic }))) => assert_eq!(topic, "r.b"),
        other => panic!("expected TopicNotFound, got {other:?}"),
    }
    assert_left(&client, "leaving", "r.a").await;
}

#[tokio::test]
async fn a_router_dead_letters_a_long_error_into_a_small_dead_letter_topic() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("long.a", 1, Default::default())
        .await
        .expect("create");
    let small = tidelog_client::proto::TopicConfig {
        max_message_bytes: 1000,
        ..Default::default()
    };
    client
        .create_topic("long.a.dlq", 1, small)
        .await
        .expect("create dlq");
    let config = one_try("long-errors");
    let error = "e".repeat(5000);
    let router = Router::new(&client, config).route("long.a", move |_message: Message| {
        let error = error.clone();
        async move { Err(error.into()) }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(router.run(stopped));
    publish(&client, "long.a", ["poison".to_string()]).await;
    let mut dead = tidelog_client::Subscription::open(
        &client,
        "long.a.dlq",
        tidelog_client::SubscribeOptions {
            start: tidelog_client::StartAt::Earliest,
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    let letter = tokio::select! {
        letter = timeout(EVENT_TIMEOUT, dead.next()) => letter.expect("a letter").expect("read"),
        outcome = &mut running => panic!("the router ended: {outcome:?}"),
    };
    assert!(letter.value.is_empty(), "the value is left out");
    let reason = letter
        .header("x-dead-letter-reason")
        .expect("reason header");
    assert!(reason.starts_with(b"eee"), "{reason:?}");
    assert!(reason.len() < 1000, "{}", reason.len());
    assert_eq!(
        letter.header("x-dead-letter-offset").map(|v| v.as_ref()),
        Some(&b"0"[..])
    );
    assert!(letter.header("x-dead-letter-omitted").is_some());
    assert!(!running.is_finished(), "the router goes on");
    stop.send(()).expect("stop");
    running.await.expect("join").expect("router");
}

/// A Router config for group `group` that dead-letters at the first failure and looks
/// for new topics every 100 ms.
fn one_try(group: &str) -> RouterConfig {
    RouterConfig {
        retry: Retry {
            attempts: 1,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        rescan: Duration::from_millis(100),
        ..RouterConfig::new(group)
    }
}
