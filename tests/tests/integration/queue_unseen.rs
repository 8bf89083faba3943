//! Deliveries that never reach their member, through the real broker: a Receive
//! cancelled after the broker handed it its deliveries (held up by the caller's
//! consume-bytes quota), and a Consume stream whose connection dropped with
//! deliveries still queued on it, give those deliveries back unseen: the message is
//! ready again with its attempt count unchanged, so with max_deliveries 1 it is
//! delivered (attempt 1) rather than dead-lettered; across a kill -9 too. The
//! delivery history shows the released attempt.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::queue_consume_request::{Open, Request as ConsumeRequest};
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::{
    AckLevel, DeliveryOutcome, DescribeQueueRequest, ListDeliveriesRequest, Message,
    PublishRequest, QueueConfig, QueueConsumeRequest, QueueDelivery, QueueDescription, QuotaLimits,
    ReceiveRequest, SetQuotaRequest, TopicConfig,
};
use tidelog_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::auth::{Conn, allow, bootstrap_token, create_token, with_token};
use crate::support::{create_queue, publish_values as publish};

/// Deliveries count once (max_deliveries 1) and a lease outlives the test's waits
/// only where it says so.
fn one_attempt(ack_deadline_ms: u64) -> QueueConfig {
    QueueConfig {
        ack_deadline_ms: Some(ack_deadline_ms),
        max_deliveries: Some(1),
        backoff_initial_ms: Some(50),
        backoff_max_ms: Some(50),
        ..Default::default()
    }
}

fn queues_of(channel: Channel) -> QueuesClient<Channel> {
    QueuesClient::new(channel).max_decoding_message_size(64 << 20)
}

async fn describe(broker: &TestBroker, queue: &str) -> QueueDescription {
    queues_of(broker.channel().await)
        .describe_queue(DescribeQueueRequest { name: queue.into() })
        .await
        .expect("describe")
        .into_inner()
        .queue
        .unwrap()
}

/// Waits (at most 10 s) until `queue` holds `ready` ready messages and none unacked.
async fn wait_ready(broker: &TestBroker, queue: &str, ready: u64) -> QueueDescription {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queue = describe(broker, queue).await;
        if (queue.ready, queue.unacked) == (ready, 0) || Instant::now() > deadline {
            return queue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn receive(channel: Channel, queue: &str, member: &str, max: u32) -> Vec<QueueDelivery> {
    queues_of(channel)
        .receive(ReceiveRequest {
            queue: queue.into(),
            member: member.into(),
            max_messages: max,
            max_wait_ms: 2_000,
        })
        .await
        .expect("receive")
        .into_inner()
        .deliveries
}

/// (offset, attempt) of each delivery, sorted.
fn offsets(deliveries: &[QueueDelivery]) -> Vec<(u64, u32)> {
    let mut offsets: Vec<(u64, u32)> = deliveries
        .iter()
        .map(|d| (d.message.as_ref().unwrap().offset, d.attempt))
        .collect();
    offsets.sort();
    offsets
}

/// The (offset, attempt, outcome) of every event of `queue`'s history, oldest first.
async fn history(broker: &TestBroker, queue: &str) -> Vec<(u64, u32, DeliveryOutcome)> {
    let mut events: Vec<_> = queues_of(broker.channel().await)
        .list_deliveries(ListDeliveriesRequest {
            queue: queue.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
        .into_iter()
        .map(|e| (e.offset, e.attempt, e.outcome(), e.at_ms))
        .collect();
    events.sort_by_key(|e| e.3);
    events.into_iter().map(|e| (e.0, e.1, e.2)).collect()
}

/// A broker with `--auth`, topic `jobs` with one message of 20 KB, queue `work` on it
/// (max_deliveries 1, the given deadline), and the admin's connection. `alice` may
/// receive from `work` at 1,000 bytes a second: a Receive of the message waits about
/// 19 s for her quota after it was handed the delivery.
async fn quota_bound_receiver(ack_deadline_ms: u64) -> (TestBroker, Conn, Conn) {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = with_token(&broker.channel().await, Some(&bootstrap_token(&broker)));
    tidelog_proto::v1::admin_client::AdminClient::new(admin.clone())
        .create_topic(tidelog_proto::v1::CreateTopicRequest {
            name: "jobs".into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await
        .expect("create topic");
    QueuesClient::new(admin.clone())
        .create_queue(tidelog_proto::v1::CreateQueueRequest {
            name: "work".into(),
            topic: "jobs".into(),
            start: Some(tidelog_proto::v1::StartPosition {
                position: Some(tidelog_proto::v1::start_position::Position::Earliest(
                    tidelog_proto::v1::start_position::Earliest {},
                )),
            }),
            config: Some(one_attempt(ack_deadline_ms)),
            ..Default::default()
        })
        .await
        .expect("create queue");
    tidelog_proto::v1::publisher_client::PublisherClient::new(admin.clone())
        .publish(PublishRequest {
            topic: "jobs".into(),
            messages: vec![Message {
                value: vec![b'x'; 20_000].into(),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    allow(&admin, "alice", "queue:work", "*").await;
    AccessClient::new(admin.clone())
        .set_quota(SetQuotaRequest {
            principal: "alice".into(),
            limits: Some(QuotaLimits {
                consume_bytes_per_sec: Some(1_000),
                ..QuotaLimits::default()
            }),
        })
        .await
        .unwrap();
    let alice = with_token(
        &broker.channel().await,
        Some(&create_token(&admin, "alice", 0).await),
    );
    (broker, admin, alice)
}

/// alice's Receive, cancelled by the caller after 1 s (the broker has handed it the
/// delivery and waits out her quota before answering).
async fn cancelled_receive(alice: &Conn) {
    let mut client = QueuesClient::new(alice.clone());
    let call = client.receive(ReceiveRequest {
        queue: "work".into(),
        member: "alice".into(),
        max_messages: 1,
        max_wait_ms: 0,
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err(),
        "the Receive answered within its quota"
    );
}

async fn describe_as(conn: &Conn) -> QueueDescription {
    QueuesClient::new(conn.clone())
        .describe_queue(DescribeQueueRequest {
            name: "work".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
}

async fn receive_as(conn: &Conn, member: &str) -> Vec<QueueDelivery> {
    QueuesClient::new(conn.clone())
        .receive(ReceiveRequest {
            queue: "work".into(),
            member: member.into(),
            max_messages: 10,
            max_wait_ms: 2_000,
        })
        .await
        .expect("receive")
        .into_inner()
        .deliveries
}

/// Waits (at most 10 s) until `work` holds one ready message and none unacked.
async fn wait_released(conn: &Conn) -> QueueDescription {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queue = describe_as(conn).await;
        if (queue.ready, queue.unacked) == (1, 0) || Instant::now() > deadline {
            return queue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_receive_gives_its_delivery_back_without_using_the_attempt() {
    // A deadline of 3 s, past the cancel (1 s): a lease left standing would then pass
    // it, and with one attempt allowed the message would be dead-lettered.
    let (broker, admin, alice) = quota_bound_receiver(3_000).await;
    let started = Instant::now();
    cancelled_receive(&alice).await;
    let queue = wait_released(&admin).await;
    assert_eq!((queue.ready, queue.unacked), (1, 0), "{queue:?}");
    // Past the deadline the phantom lease would have had.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(started.elapsed())).await;
    let again = receive_as(&admin, "bob").await;
    assert_eq!(offsets(&again), vec![(0, 1)], "delivered, as attempt 1");
    let events: Vec<(u64, u32, DeliveryOutcome)> = {
        let mut events: Vec<_> = QueuesClient::new(admin.clone())
            .list_deliveries(ListDeliveriesRequest {
                queue: "work".into(),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
            .into_iter()
            .map(|e| (e.at_ms, e.offset, e.attempt, e.outcome()))
            .collect();
        events.sort();
        events.into_iter().map(|e| (e.1, e.2, e.3)).collect()
    };
    assert_eq!(
        events,
        vec![
            (0, 1, DeliveryOutcome::Delivered),
            (0, 1, DeliveryOutcome::Released),
            (0, 1, DeliveryOutcome::Delivered),
        ]
    );
    let metrics = broker.metrics_text();
    assert_eq!(
        tidelog_tests::metric_value(&metrics, "tidelog_queue_released_total{queue=\"work\"}"),
        Some(1.0),
        "{metrics}"
    );
}

/// The release is durable: after a kill -9 the message is still ready with its one
/// attempt unused (a restart gives every lease up and counts it, so a release lost
/// to the kill would have dead-lettered it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_delivery_stays_released_across_kill_9() {
    let (mut broker, admin, alice) = quota_bound_receiver(60_000).await;
    cancelled_receive(&alice).await;
    let queue = wait_released(&admin).await;
    assert_eq!((queue.ready, queue.unacked), (1, 0), "{queue:?}");
    drop((admin, alice));
    broker.kill9();
    broker.restart();
    let admin = with_token(&broker.channel().await, Some(&bootstrap_token(&broker)));
    let again = receive_as(&admin, "bob").await;
    assert_eq!(offsets(&again), vec![(0, 1)], "delivered, as attempt 1");
}

/// A Consume stream that is sent more than its connection carries (the client reads
/// nothing), then dropped: what went out is given up as `member left` (one attempt:
/// dead-lettered), what was still queued in the broker is given back unseen and
/// delivered again as attempt 1. Every message is one or the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_consume_connection_gives_back_what_never_went_out() {
    const COUNT: u64 = 16;
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    create_queue(&broker, "work", "jobs", one_attempt(60_000)).await;
    for _ in 0..COUNT {
        publish(&broker, "jobs", vec![vec![b'v'; 1_000_000]]).await;
    }
    // Its own connection, through a proxy that drops it whole.
    let (proxy, cut) = one_connection_proxy(broker.grpc_addr()).await;
    let channel = Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: "work".into(),
            client_id: "stalled".into(),
            credit: COUNT as u32,
        })),
    })
    .await
    .unwrap();
    let stream = queues_of(channel.clone())
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Every message leased to it (the broker's side of the stream holds them).
    let deadline = Instant::now() + Duration::from_secs(10);
    while describe(&broker, "work").await.unacked < COUNT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(describe(&broker, "work").await.unacked, COUNT);
    // The connection drops (the request side was never half-closed).
    cut.send(()).unwrap();
    // The sent ones are dead-lettered (member left, one attempt), the rest ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queue = describe(&broker, "work").await;
    while queue.unacked > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        queue = describe(&broker, "work").await;
    }
    let released = queue.ready;
    assert!(released > 0, "nothing was given back: {queue:?}");
    assert!(released < COUNT, "some went out on the stream: {queue:?}");
    let queue = wait_ready(&broker, "work", released).await;
    assert_eq!(queue.ready, released, "{queue:?}");
    let mut again = Vec::new();
    for _ in 0..COUNT {
        if again.len() as u64 >= released {
            break;
        }
        again.extend(receive(broker.channel().await, "work", "bob", 3).await);
    }
    let again = offsets(&again);
    assert_eq!(again.len() as u64, released);
    assert!(again.iter().all(|&(_, attempt)| attempt == 1), "{again:?}");
    // The history: each offset given back was released once and delivered again;
    // every other offset was dead-lettered.
    let events = history(&broker, "work").await;
    let given_back: BTreeSet<u64> = again.iter().map(|&(offset, _)| offset).collect();
    let released_events: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.2 == DeliveryOutcome::Released)
        .map(|e| e.0)
        .collect();
    assert_eq!(released_events, given_back);
    let dead: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.2 == DeliveryOutcome::DeadLettered)
        .map(|e| e.0)
        .collect();
    assert_eq!(dead.len() as u64 + released, COUNT, "{events:?}");
    assert!(dead.is_disjoint(&given_back));
    drop((tx, stream, channel));
}

/// A TCP proxy on 127.0.0.1 for one connection to `target`; sending on the returned
/// channel drops both of its sockets (a connection dropped, not closed by either end).
async fn one_connection_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cutting) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cutting => {}
        }
        // Both sockets dropped here, with whatever either side had in flight.
    });
    (addr, cut)
}

/// A Receive whose call has a deadline (`grpc-timeout`) shorter than its `max_wait_ms`
/// ends its wait short of the deadline and answers in time, as a Fetch long poll does,
/// rather than leasing deliveries to a call its client has given up on (an attempt no
/// one saw); a message published afterwards goes to the next Receive as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_answers_before_its_deadline_with_what_it_has() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    create_queue(&broker, "work", "jobs", one_attempt(60_000)).await;
    let mut queues = queues_of(broker.channel().await);
    for timeout_ms in [300, 1_000] {
        let mut request = tonic::Request::new(ReceiveRequest {
            queue: "work".into(),
            member: "w".into(),
            max_messages: 10,
            max_wait_ms: 30_000,
        });
        request.set_timeout(Duration::from_millis(timeout_ms));
        let asked = Instant::now();
        let answer = queues
            .receive(request)
            .await
            .unwrap_or_else(|status| panic!("{timeout_ms} ms: an empty answer in time: {status}"));
        assert!(answer.into_inner().deliveries.is_empty());
        assert!(
            asked.elapsed() < Duration::from_millis(timeout_ms),
            "{:?}",
            asked.elapsed()
        );
    }
    publish(&broker, "jobs", vec![b"after".to_vec()]).await;
    let got = receive(broker.channel().await, "work", "w", 10).await;
    assert_eq!(offsets(&got), [(0, 1)]);
}
