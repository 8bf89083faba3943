//! `tidelogd --auth`: a work queue writes only where its caller may write. A queue's
//! dead-letter topic (named, or the default `<topic>.dlq` / `<queue>.dlq`) needs publish
//! on it at CreateQueue and at an AlterQueue that changes it, and create too when it
//! does not exist yet, refused before anything is stored; RedriveQueue needs publish on
//! every topic it can write letters back to (the queue's topic, or each topic a pattern
//! queue has taken).

use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::{
    AlterQueueRequest, CreateQueueRequest, DescribeQueueRequest, DescribeTopicRequest,
    FetchRequest, Header, Message, PublishRequest, QueueConfig, RedriveQueueRequest,
};
use tidelog_tests::TestBroker;
use tonic::{Code, Status};

use crate::auth::{Conn, allow, bootstrap_token, create_token, create_topic, with_token};

async fn publish(conn: &Conn, topic: &str, messages: Vec<Message>) -> Result<(), Status> {
    PublisherClient::new(conn.clone())
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ..PublishRequest::default()
        })
        .await
        .map(drop)
}

/// The values in partition 0 of `topic`.
async fn values(admin: &Conn, topic: &str) -> Vec<String> {
    ConsumerClient::new(admin.clone())
        .fetch(FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_messages: 100,
            ..FetchRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

fn with_dead_letters(topic: &str) -> Option<QueueConfig> {
    Some(QueueConfig {
        dead_letter_topic: Some(topic.into()),
        ..QueueConfig::default()
    })
}

async fn create_queue(
    conn: &Conn,
    name: &str,
    topic: &str,
    pattern: &str,
    config: Option<QueueConfig>,
) -> Result<(), Status> {
    QueuesClient::new(conn.clone())
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic: topic.into(),
            topic_pattern: pattern.into(),
            config,
            ..CreateQueueRequest::default()
        })
        .await
        .map(drop)
}

async fn alter_queue(conn: &Conn, name: &str, config: QueueConfig) -> Result<(), Status> {
    QueuesClient::new(conn.clone())
        .alter_queue(AlterQueueRequest {
            name: name.into(),
            config: Some(config),
        })
        .await
        .map(drop)
}

async fn dead_letter_topic_of(admin: &Conn, queue: &str) -> String {
    QueuesClient::new(admin.clone())
        .describe_queue(DescribeQueueRequest { name: queue.into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .config
        .unwrap()
        .dead_letter_topic
        .unwrap()
}

async fn queue_exists(admin: &Conn, queue: &str) -> bool {
    match QueuesClient::new(admin.clone())
        .describe_queue(DescribeQueueRequest { name: queue.into() })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("describe {queue}: {status:?}"),
    }
}

async fn topic_exists(admin: &Conn, topic: &str) -> bool {
    match AdminClient::new(admin.clone())
        .describe_topic(DescribeTopicRequest { name: topic.into() })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("describe {topic}: {status:?}"),
    }
}

/// A PERMISSION_DENIED whose message says `what` ("principal alice may not publish
/// topic:payroll") and names the RPC.
fn assert_denied(result: Result<(), Status>, what: &str, rpc: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains(what) && status.message().contains(rpc),
        "wanted {what:?} ({rpc}) in: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_needs_publish_on_it_and_create_when_it_is_new() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    create_topic(&admin, "orders").await;
    create_topic(&admin, "payroll").await;
    // alice may do anything on topic orders and on queues q*; nothing on payroll.
    let alice = with_token(&channel, Some(&create_token(&admin, "alice", 0).await));
    allow(&admin, "alice", "topic:orders", "*").await;
    allow(&admin, "alice", "queue:q*", "*").await;
    let create = "Queues/CreateQueue";
    let alter = "Queues/AlterQueue";

    // A topic alice may not publish to: refused, and no queue is stored.
    assert_denied(
        create_queue(&alice, "q1", "orders", "", with_dead_letters("payroll")).await,
        "principal alice may not publish topic:payroll",
        create,
    );
    assert!(!queue_exists(&admin, "q1").await);
    // The default, <topic>.dlq, is checked too.
    assert_denied(
        create_queue(&alice, "q1", "orders", "", None).await,
        "principal alice may not publish topic:orders.dlq",
        create,
    );
    assert!(!queue_exists(&admin, "q1").await);
    // A topic that does not exist yet needs create too (the first letter creates it).
    allow(&admin, "alice", "topic:orders.dlq", "publish").await;
    assert_denied(
        create_queue(&alice, "q1", "orders", "", None).await,
        "principal alice may not create topic:orders.dlq",
        create,
    );
    assert!(!queue_exists(&admin, "q1").await);
    allow(&admin, "alice", "topic:orders.dlq", "create").await;
    create_queue(&alice, "q1", "orders", "", None)
        .await
        .expect("publish and create on orders.dlq allow it as q1's dead-letter topic");
    // Once it exists, publish is enough.
    create_topic(&admin, "orders.failed").await;
    allow(&admin, "alice", "topic:orders.failed", "publish").await;
    create_queue(
        &alice,
        "q2",
        "orders",
        "",
        with_dead_letters("orders.failed"),
    )
    .await
    .expect("publish on an existing dead-letter topic is enough");

    // A pattern queue's default is <queue>.dlq.
    allow(&admin, "alice", "topic:*", "consume").await;
    assert_denied(
        create_queue(&alice, "q-all", "", "orders.*", None).await,
        "principal alice may not publish topic:q-all.dlq",
        create,
    );
    assert_denied(
        create_queue(
            &alice,
            "q-all",
            "",
            "orders.*",
            with_dead_letters("payroll"),
        )
        .await,
        "principal alice may not publish topic:payroll",
        create,
    );
    assert!(!queue_exists(&admin, "q-all").await);
    create_queue(
        &alice,
        "q-all",
        "",
        "orders.*",
        with_dead_letters("orders.failed"),
    )
    .await
    .expect("a pattern queue dead-lettering where alice may publish");

    // AlterQueue to a topic alice may not publish to, or may not create: refused, the
    // queue keeps its dead-letter topic. (A topic an AlterQueue names needs describe
    // first, as any topic a request names: alice has it, so what is judged here is
    // what the broker would write.)
    allow(&admin, "alice", "topic:*", "describe").await;
    for queue in ["q1", "q-all"] {
        assert_denied(
            alter_queue(&alice, queue, with_dead_letters("payroll").unwrap()).await,
            "principal alice may not publish topic:payroll",
            alter,
        );
    }
    allow(&admin, "alice", "topic:new.*", "publish").await;
    assert_denied(
        alter_queue(&alice, "q1", with_dead_letters("new.dlq").unwrap()).await,
        "principal alice may not create topic:new.dlq",
        alter,
    );
    assert_eq!(dead_letter_topic_of(&admin, "q1").await, "orders.dlq");
    assert_eq!(dead_letter_topic_of(&admin, "q-all").await, "orders.failed");
    // An alter that leaves the dead-letter topic as it is needs nothing on it, even
    // when it names it.
    admin_sets_dead_letters(&admin, "q1", "payroll").await;
    alter_queue(
        &alice,
        "q1",
        QueueConfig {
            ack_deadline_ms: Some(5_000),
            ..QueueConfig::default()
        },
    )
    .await
    .expect("an alter that keeps the dead-letter topic");
    alter_queue(&alice, "q1", with_dead_letters("payroll").unwrap())
        .await
        .expect("an alter naming the dead-letter topic the queue has");
    // Changing it to where alice may publish, and create: allowed.
    allow(&admin, "alice", "topic:new.*", "create").await;
    alter_queue(&alice, "q1", with_dead_letters("new.dlq").unwrap())
        .await
        .expect("publish and create on new.dlq");
    assert_eq!(dead_letter_topic_of(&admin, "q1").await, "new.dlq");

    // Nothing reached payroll, and no refused topic was created.
    assert_eq!(values(&admin, "payroll").await, Vec::<String>::new());
    assert!(!topic_exists(&admin, "q-all.dlq").await);
}

async fn admin_sets_dead_letters(admin: &Conn, queue: &str, topic: &str) {
    alter_queue(admin, queue, with_dead_letters(topic).unwrap())
        .await
        .unwrap();
}

/// A message shaped as queue `queue`'s dead letter from `topic`, as anyone who may
/// publish to the dead-letter topic can write it.
fn forged_letter(queue: &str, topic: &str, value: &str) -> Message {
    let headers = [
        ("tidelog-dlq-queue", queue),
        ("tidelog-dlq-topic", topic),
        ("tidelog-dlq-partition", "0"),
        ("tidelog-dlq-offset", "0"),
        ("tidelog-dlq-attempts", "5"),
        ("tidelog-dlq-first-delivery-ms", "1"),
        ("tidelog-dlq-last-delivery-ms", "2"),
        ("tidelog-dlq-reason", "forged"),
    ];
    Message {
        value: value.to_string().into(),
        headers: headers
            .iter()
            .map(|(key, value)| Header {
                key: key.to_string(),
                value: value.to_string().into(),
            })
            .collect(),
        ..Message::default()
    }
}

async fn redrive(conn: &Conn, queue: &str) -> Result<u64, Status> {
    QueuesClient::new(conn.clone())
        .redrive_queue(RedriveQueueRequest {
            name: queue.into(),
            max_messages: 0,
        })
        .await
        .map(|r| r.into_inner().moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_needs_publish_on_every_topic_it_writes_letters_back_to() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    for topic in ["ro", "c.dlq", "p.a", "p.b"] {
        create_topic(&admin, topic).await;
    }
    publish(&admin, "ro", vec![Message::default()])
        .await
        .unwrap();
    // carol may only read ro, but may do anything on c.* and her queues.
    let carol = with_token(&channel, Some(&create_token(&admin, "carol", 0).await));
    allow(&admin, "carol", "topic:ro", "consume").await;
    allow(&admin, "carol", "topic:c.*", "*").await;
    allow(&admin, "carol", "queue:qc*", "*").await;
    assert_denied(
        publish(&carol, "ro", vec![Message::default()]).await,
        "principal carol may not publish topic:ro",
        "Publisher/Publish",
    );
    create_queue(&carol, "qc", "ro", "", with_dead_letters("c.dlq"))
        .await
        .expect("consume on ro, publish on c.dlq");
    publish(&carol, "c.dlq", vec![forged_letter("qc", "ro", "FORGED")])
        .await
        .unwrap();

    // Redriving would append to ro: refused, ro holds what it held.
    assert_denied(
        redrive(&carol, "qc").await.map(drop),
        "principal carol may not publish the topic of queue qc",
        "Queues/RedriveQueue",
    );
    assert_eq!(values(&admin, "ro").await, [""]);
    allow(&admin, "carol", "topic:ro", "publish").await;
    assert_eq!(redrive(&carol, "qc").await.unwrap(), 1);
    assert_eq!(values(&admin, "ro").await, ["", "FORGED"]);

    // A pattern queue: publish on every topic it has taken.
    allow(&admin, "carol", "topic:*", "consume").await;
    allow(&admin, "carol", "topic:p.a", "publish").await;
    create_queue(&carol, "qcp", "", "p\\..*", with_dead_letters("c.dlq"))
        .await
        .expect("a pattern queue on p.*");
    publish(
        &carol,
        "c.dlq",
        vec![
            forged_letter("qcp", "p.a", "FORGED-A"),
            forged_letter("qcp", "p.b", "FORGED-B"),
        ],
    )
    .await
    .unwrap();
    assert_denied(
        redrive(&carol, "qcp").await.map(drop),
        "principal carol may not publish a topic of queue qcp",
        "Queues/RedriveQueue",
    );
    assert_eq!(values(&admin, "p.a").await, Vec::<String>::new());
    assert_eq!(values(&admin, "p.b").await, Vec::<String>::new());
    allow(&admin, "carol", "topic:p.b", "publish").await;
    assert_eq!(redrive(&carol, "qcp").await.unwrap(), 2);
    assert_eq!(values(&admin, "p.a").await, ["FORGED-A"]);
    assert_eq!(values(&admin, "p.b").await, ["FORGED-B"]);
}
