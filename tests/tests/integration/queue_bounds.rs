//! Queue deliveries that are made are returned, and their responses are bounded in
//! bytes: a Receive that stops waiting returns what was leased to it or leases
//! nothing; a Consume stream that half-closes was sent every delivery recorded for
//! it; Consume events and Receive responses stay under the 3 MiB bound (gRPC clients'
//! default receive limit is 4 MiB), one larger message going alone; a Receive leases
//! only what fits, the rest stays ready.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use tidelog_proto::v1::queue_consume_request::{Open, Request as ConsumeRequest};
use tidelog_proto::v1::queue_consume_response::Event;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action};
use tidelog_proto::v1::{
    AckLevel, DeliveryOutcome, DescribeQueueRequest, ListDeliveriesRequest, Message,
    PublishRequest, QueueConfig, QueueConsumeRequest, QueueDelivery, ReceiveRequest, SettleRequest,
    Settlement, TopicConfig,
};
use tidelog_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::create_queue;

/// The documented bound on a Receive response and on a Consume Deliveries event
/// (server `read::QUEUE_RESPONSE_BYTES_MAX`).
const QUEUE_RESPONSE_BYTES_MAX: usize = 3 * 1024 * 1024;
/// The receive limit a gRPC client has by default (tonic's, as grpcio's): the
/// clients here keep it, except where a test raises it for a 16 MiB message.
const CLIENT_DEFAULT_RECEIVE_BYTES: usize = 4 * 1024 * 1024;
const _: () = assert!(QUEUE_RESPONSE_BYTES_MAX < CLIENT_DEFAULT_RECEIVE_BYTES);

/// Topic `jobs` of `partitions` and queue `work` on it whose deliveries each get one
/// attempt (max_deliveries 1), with a deadline far enough not to pass in a test: a
/// delivery leased to no caller shows as a lease, never as a redelivery.
async fn one_shot_queue(broker: &TestBroker, partitions: u32) {
    broker
        .create_topic("jobs", partitions, TopicConfig::default())
        .await;
    create_queue(
        broker,
        "work",
        "jobs",
        QueueConfig {
            ack_deadline_ms: Some(60_000),
            max_deliveries: Some(1),
            ..Default::default()
        },
    )
    .await;
}

/// Publishes requests of `per_request` small messages to `jobs` (ack WRITTEN), a pause
/// of `pause` between them, until `stop`: a producer racing the queue's members.
async fn racing_producer(
    broker: &TestBroker,
    per_request: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut publisher = broker.publisher().await;
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            publisher
                .publish(PublishRequest {
                    topic: "jobs".into(),
                    messages: (0..per_request)
                        .map(|j| Message {
                            value: format!("m-{i}-{j}").into_bytes().into(),
                            ..Default::default()
                        })
                        .collect(),
                    ack: AckLevel::Written as i32,
                })
                .await
                .expect("publish");
            i += 1;
            tokio::time::sleep(pause).await;
        }
    })
}

/// Publishes `count` messages of `bytes` value bytes each, durably, one per request.
async fn publish_sized(broker: &TestBroker, topic: &str, count: usize, bytes: usize) {
    let mut publisher = broker.publisher().await;
    for i in 0..count {
        let mut value = vec![b'x'; bytes];
        let tag = format!("m-{i}-");
        value[..tag.len()].copy_from_slice(tag.as_bytes());
        publisher
            .publish(PublishRequest {
                topic: topic.into(),
                messages: vec![Message {
                    value: value.into(),
                    ..Default::default()
                }],
                ack: AckLevel::Durable as i32,
            })
            .await
            .expect("publish");
    }
}

fn offset(d: &QueueDelivery) -> (u32, u64) {
    let m = d.message.as_ref().unwrap();
    (m.partition, m.offset)
}

async fn ack_all(client: &mut QueuesClient<Channel>, queue: &str, deliveries: &[QueueDelivery]) {
    let outcomes = client
        .settle(SettleRequest {
            queue: queue.into(),
            settlements: deliveries
                .iter()
                .map(|d| Settlement {
                    partition: offset(d).0,
                    offset: offset(d).1,
                    attempt: d.attempt,
                    action: Some(Action::Ack(Ack {})),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("settle")
        .into_inner()
        .outcomes;
    assert!(outcomes.iter().all(|o| o.code == 0), "{outcomes:?}");
}

async fn unacked(client: &mut QueuesClient<Channel>, queue: &str) -> u64 {
    client
        .describe_queue(DescribeQueueRequest { name: queue.into() })
        .await
        .expect("describe")
        .into_inner()
        .queue
        .unwrap()
        .unacked
}

/// Every (partition, offset) the history of `queue` records as delivered to `member`.
async fn delivered_to(
    client: &mut QueuesClient<Channel>,
    queue: &str,
    member: &str,
) -> BTreeSet<(u32, u64)> {
    let mut delivered = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_deliveries(ListDeliveriesRequest {
                queue: queue.into(),
                limit: 1000,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .expect("list deliveries")
            .into_inner();
        for event in &page.deliveries {
            if event.member == member && event.outcome == DeliveryOutcome::Delivered as i32 {
                delivered.insert((event.partition, event.offset));
            }
        }
        if page.next_cursor.is_empty() {
            return delivered;
        }
        cursor = page.next_cursor;
    }
}

/// A Receive whose wait ends (0 ms, a few ms) returns the message that was ready, and
/// one that returns nothing leaves nothing leased: before, the timeout dropped the
/// answer of a delivery round already under way, the message stayed leased to
/// `receive:<member>` unseen and its attempt counted (with max_deliveries 1, dead-
/// lettered without ever being returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receive_that_stops_waiting_returns_or_leases_nothing() {
    let broker = TestBroker::start();
    one_shot_queue(&broker, 2).await;
    let mut client = QueuesClient::new(broker.channel().await);
    for round in 0..60u64 {
        publish_sized(&broker, "jobs", 1, 64).await;
        let wait = [0, 1, 2, 5][(round % 4) as usize];
        let got = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "u1".into(),
                max_messages: 10,
                max_wait_ms: wait,
            })
            .await
            .expect("receive")
            .into_inner()
            .deliveries;
        // Ready before the call: a wait that ends still delivers what is ready.
        assert_eq!(got.len(), 1, "round {round} (wait {wait} ms): {got:?}");
        assert_eq!(got[0].attempt, 1);
        ack_all(&mut client, "work", &got).await;
        assert_eq!(unacked(&mut client, "work").await, 0, "round {round}");
        // Nothing ready: nothing is leased either.
        let none = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "u1".into(),
                max_messages: 10,
                max_wait_ms: wait,
            })
            .await
            .expect("receive")
            .into_inner()
            .deliveries;
        assert!(none.is_empty(), "round {round}: {none:?}");
        assert_eq!(unacked(&mut client, "work").await, 0, "round {round}");
    }
}

/// Many short Receives race a producer: every message recorded as delivered to the
/// member was returned by one of its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivery_recorded_for_a_receive_member_was_returned() {
    let broker = TestBroker::start();
    one_shot_queue(&broker, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = racing_producer(&broker, 1, Duration::from_millis(1), stop.clone()).await;
    let mut client = QueuesClient::new(broker.channel().await);
    let mut returned = BTreeSet::new();
    for round in 0..400u64 {
        let got = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "u1".into(),
                max_messages: 5,
                max_wait_ms: round % 4,
            })
            .await
            .expect("receive")
            .into_inner()
            .deliveries;
        returned.extend(got.iter().map(offset));
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let recorded = delivered_to(&mut client, "work", "receive:u1").await;
    let unseen: Vec<_> = recorded.difference(&returned).collect();
    assert!(
        unseen.is_empty(),
        "{} of {} deliveries recorded for receive:u1 were never returned, the first: {:?}",
        unseen.len(),
        recorded.len(),
        &unseen[..unseen.len().min(10)]
    );
    assert_eq!(
        unacked(&mut client, "work").await,
        returned.len() as u64,
        "what is leased is what was returned"
    );
}

/// Opens a Consume stream with `credit`, half-closes it once it was sent `until`
/// deliveries (0: at once) and reads it to the end: (member id, the deliveries it was
/// sent, each Deliveries event's bytes and deliveries).
async fn open_and_half_close(
    client: &mut QueuesClient<Channel>,
    queue: &str,
    credit: u32,
    until: usize,
) -> (String, Vec<QueueDelivery>, Vec<(usize, usize)>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: queue.into(),
            client_id: "half-close".into(),
            credit,
        })),
    })
    .await
    .unwrap();
    let mut tx = Some(tx);
    if until == 0 {
        tx = None;
    }
    let mut stream = client
        .consume(ReceiverStream::new(rx))
        .await
        .expect("consume")
        .into_inner();
    let mut member = String::new();
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("the stream ends OK") {
        let bytes = event.encoded_len();
        match event.event {
            Some(Event::Opened(opened)) => member = opened.member_id,
            Some(Event::Deliveries(batch)) => {
                events.push((bytes, batch.deliveries.len()));
                sent.extend(batch.deliveries);
            }
            _ => {}
        }
        if sent.len() >= until {
            tx = None;
        }
    }
    drop(tx);
    (member, sent, events)
}

/// A stream that half-closes while a producer publishes: every delivery the history
/// records for its member was sent on its stream. Before, a delivery round under way
/// when the member left leased messages to it that were never sent (given up as
/// MEMBER_LEFT, with max_deliveries 1 dead-lettered unseen).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_closed_stream_was_sent_every_delivery_recorded_for_it() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 2, TopicConfig::default()).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            max_deliveries: Some(1),
            ..Default::default()
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = racing_producer(&broker, 10, Duration::from_micros(200), stop.clone()).await;
    let mut client = QueuesClient::new(broker.channel().await);
    let mut members = Vec::new();
    for _ in 0..30 {
        let (member, sent, _) = open_and_half_close(&mut client, "work", 1000, 0).await;
        members.push((member, sent.iter().map(offset).collect::<BTreeSet<_>>()));
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let mut failures = Vec::new();
    for (member, sent) in &members {
        let recorded = delivered_to(&mut client, "work", member).await;
        let unsent: Vec<_> = recorded.difference(sent).copied().collect();
        if !unsent.is_empty() {
            failures.push((member.clone(), unsent));
        }
    }
    let unsent: usize = failures.iter().map(|f| f.1.len()).sum();
    assert!(
        failures.is_empty(),
        "{unsent} deliveries recorded for {} members but never sent on their streams, the first: {:?}",
        failures.len(),
        failures
            .iter()
            .map(|f| (&f.0, &f.1[..f.1.len().min(5)]))
            .collect::<Vec<_>>()
    );
}

/// 100 messages of 1 MiB - 4 KiB with credit 100, to a client with the default 4 MiB
/// receive limit: every Deliveries event is under the bound, all 100 arrive on one
/// stream. Before, one 104 MB event broke the stream (RESOURCE_EXHAUSTED), each break
/// counting an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_splits_deliveries_into_events_under_the_bound() {
    let broker = TestBroker::start();
    broker.create_topic("big", 1, TopicConfig::default()).await;
    publish_sized(&broker, "big", 100, 1024 * 1024 - 4096).await;
    // And 2,000 small ones behind them: many per event.
    let mut publisher = broker.publisher().await;
    publisher
        .publish(PublishRequest {
            topic: "big".into(),
            messages: (0..2000)
                .map(|i| Message {
                    value: format!("small-{i}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    create_queue(
        &broker,
        "work",
        "big",
        QueueConfig {
            max_unacked_per_member: Some(5000),
            ..Default::default()
        },
    )
    .await;
    let mut client = QueuesClient::new(broker.channel().await);
    let (_, sent, events) = open_and_half_close(&mut client, "work", 2100, 2100).await;
    let largest = events.iter().map(|e| e.0).max().unwrap_or(0);
    assert_eq!(sent.len(), 2100);
    assert!(sent.iter().all(|d| d.attempt == 1));
    let offsets: BTreeSet<_> = sent.iter().map(offset).collect();
    assert_eq!(offsets.len(), 2100);
    assert!(
        largest <= QUEUE_RESPONSE_BYTES_MAX,
        "an event of {largest} bytes"
    );
}

/// A message at the largest size a topic allows (16 MiB) goes out alone, in an event
/// over the bound (a client that takes such messages raises its limit), and the ones
/// around it in events under the bound; a Receive returns it alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_bound_goes_alone() {
    let broker = TestBroker::start();
    let max = 16 * 1024 * 1024;
    broker
        .create_topic(
            "huge",
            1,
            TopicConfig {
                max_message_bytes: max,
                ..Default::default()
            },
        )
        .await;
    publish_sized(&broker, "huge", 2, 1024 * 1024).await;
    publish_sized(&broker, "huge", 1, max as usize - 1024).await;
    publish_sized(&broker, "huge", 2, 1024 * 1024).await;
    create_queue(&broker, "work", "huge", QueueConfig::default()).await;
    create_queue(&broker, "unary", "huge", QueueConfig::default()).await;
    let channel = broker.channel().await;
    let mut client = QueuesClient::new(channel).max_decoding_message_size(64 << 20);
    let (_, _, events) = open_and_half_close(&mut client, "work", 5, 5).await;
    assert_eq!(events.iter().map(|e| e.1).sum::<usize>(), 5, "{events:?}");
    for (bytes, count) in &events {
        assert!(
            *bytes <= QUEUE_RESPONSE_BYTES_MAX || *count == 1,
            "{events:?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|(bytes, count)| *bytes > max as usize - 1024 && *count == 1)
    );

    // Receive: two 1 MiB messages fit, the 16 MiB one then goes alone.
    let mut got = Vec::new();
    while got.len() < 5 {
        let response = client
            .receive(ReceiveRequest {
                queue: "unary".into(),
                member: "u".into(),
                max_messages: 100,
                max_wait_ms: 1000,
            })
            .await
            .expect("receive")
            .into_inner();
        let bytes = response.encoded_len();
        assert!(
            bytes <= QUEUE_RESPONSE_BYTES_MAX || response.deliveries.len() == 1,
            "{bytes} bytes in {} deliveries",
            response.deliveries.len()
        );
        assert!(!response.deliveries.is_empty());
        got.extend(
            response
                .deliveries
                .iter()
                .map(|d| d.message.as_ref().unwrap().value.len()),
        );
    }
    assert_eq!(got.len(), 5);
    assert_eq!(got[2], max as usize - 1024, "{got:?}");
}

/// Receive(max_messages = 80) of 1 MiB - 4 KiB messages, on a client with the default
/// 4 MiB limit: each response is under the bound (3 of them), what it returns is what
/// is leased (the rest stays ready), and 27 calls take all 80 at their first attempt.
/// Before, one ~83 MB response the client rejected, with all 80 leased unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receive_leases_only_what_fits_its_response() {
    let broker = TestBroker::start();
    broker.create_topic("big", 2, TopicConfig::default()).await;
    publish_sized(&broker, "big", 80, 1024 * 1024 - 4096).await;
    create_queue(&broker, "work", "big", QueueConfig::default()).await;
    let mut client = QueuesClient::new(broker.channel().await);
    let mut seen = BTreeSet::new();
    let mut calls = 0;
    while seen.len() < 80 {
        calls += 1;
        assert!(calls <= 80, "80 messages in {calls} calls");
        let response = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "u".into(),
                max_messages: 80,
                max_wait_ms: 1000,
            })
            .await
            .expect("receive under the client's default limit")
            .into_inner();
        assert!(response.encoded_len() <= QUEUE_RESPONSE_BYTES_MAX);
        assert!(!response.deliveries.is_empty(), "call {calls}");
        assert!(response.deliveries.iter().all(|d| d.attempt == 1));
        for d in &response.deliveries {
            assert!(seen.insert(offset(d)), "{:?} twice", offset(d));
        }
        assert_eq!(
            unacked(&mut client, "work").await,
            seen.len() as u64,
            "leased is what was returned"
        );
    }
    assert_eq!(calls, 27, "3 per response (80 = 26 * 3 + 2)");
}
