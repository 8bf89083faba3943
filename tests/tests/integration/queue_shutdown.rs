//! SIGTERM with idle queue consumers: a Receive long poll and an open Consume stream
//! end at once (the Receive with what it has, the stream with UNAVAILABLE), so the
//! shutdown does not wait out --shutdown-timeout for them; and no message is lost or
//! counted as delivered to nobody: after the restart every one is delivered, those no
//! client saw as attempt 1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request as ConsumeRequest};
use tidelog_proto::v1::queue_consume_response::Event;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action};
use tidelog_proto::v1::{
    QueueConfig, QueueConsumeRequest, QueueDelivery, ReceiveRequest, SettleRequest, Settlement,
    TopicConfig,
};
use tidelog_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::{create_queue, publish_values};

/// Well under the 10 s --shutdown-timeout the broker is started with (which it waited
/// out before), and well over what a shutdown takes on a loaded machine.
const PROMPT_SHUTDOWN: Duration = Duration::from_secs(3);

fn broker() -> TestBroker {
    TestBroker::start_with(&["--shutdown-timeout", "10s"])
}

async fn publish(broker: &TestBroker, topic: &str, count: usize) {
    let values = (0..count).map(|i| format!("m-{i}").into_bytes());
    publish_values(broker, topic, values.collect()).await;
}

fn offset(d: &QueueDelivery) -> u64 {
    d.message
        .as_ref()
        .expect("a delivery has its message")
        .offset
}

/// SIGTERM, asserting a clean exit within [`PROMPT_SHUTDOWN`].
fn terminate_promptly(broker: &mut TestBroker, waiting: &str) {
    let started = Instant::now();
    let status = broker.terminate();
    let took = started.elapsed();
    assert!(status.success(), "tidelogd exited with {status}");
    assert!(
        took < PROMPT_SHUTDOWN,
        "SIGTERM took {took:?} with {waiting} (--shutdown-timeout 10s); its log:\n{}",
        broker.log()
    );
}

/// After the restart: every message of the queue, by offset, with the attempt it is
/// delivered as now (each acked once received).
async fn drain_after_restart(broker: &TestBroker, count: usize) -> BTreeMap<u64, u32> {
    let mut client = QueuesClient::new(broker.channel().await);
    let mut attempts = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while attempts.len() < count && Instant::now() < deadline {
        let deliveries = client
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "after".into(),
                max_messages: 10,
                max_wait_ms: 1_000,
            })
            .await
            .expect("Receive after the restart")
            .into_inner()
            .deliveries;
        if deliveries.is_empty() {
            continue;
        }
        let settlements = deliveries
            .iter()
            .map(|d| Settlement {
                partition: 0,
                offset: offset(d),
                attempt: d.attempt,
                action: Some(Action::Ack(Ack {})),
                ..Default::default()
            })
            .collect();
        client
            .settle(SettleRequest {
                queue: "work".into(),
                settlements,
            })
            .await
            .expect("Settle after the restart");
        for d in &deliveries {
            assert!(
                attempts.insert(offset(d), d.attempt).is_none(),
                "offset {} delivered twice after the restart",
                offset(d)
            );
        }
    }
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_idle_receive_at_once_with_nothing_leased_to_it() {
    let mut broker = broker();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 4).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            ack_deadline_ms: Some(60_000),
            backoff_initial_ms: Some(0),
            max_unacked_per_member: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut client = QueuesClient::new(broker.channel().await);
    let receive = ReceiveRequest {
        queue: "work".into(),
        member: "x".into(),
        max_messages: 10,
        max_wait_ms: 30_000,
    };
    let first = client
        .receive(receive.clone())
        .await
        .expect("first Receive")
        .into_inner()
        .deliveries;
    assert_eq!(first.len(), 2, "the member's unacked limit: {first:?}");
    // At its unacked limit, x's next Receive waits (two messages are ready, but not
    // for x): an idle long poll.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (client.receive(receive).await, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the second Receive did not wait");

    terminate_promptly(&mut broker, "a Receive waiting (max_wait_ms 30000)");
    let (answer, took) = waiting.await.expect("the Receive task");
    let deliveries = answer
        .unwrap_or_else(|status| panic!("the waiting Receive failed at shutdown: {status:?}"))
        .into_inner()
        .deliveries;
    assert!(deliveries.is_empty(), "{deliveries:?}");
    assert!(
        took < PROMPT_SHUTDOWN + Duration::from_millis(500),
        "{took:?}"
    );

    broker.restart();
    let attempts = drain_after_restart(&broker, 4).await;
    assert_eq!(
        attempts.len(),
        4,
        "every message delivered again: {attempts:?}"
    );
    for (offset, attempt) in attempts {
        // The first Receive's two were seen (their leases given up at the restart,
        // counted); the other two went to no one: still attempt 1.
        let seen = first.iter().any(|d| self::offset(d) == offset);
        assert_eq!(
            attempt,
            if seen { 2 } else { 1 },
            "offset {offset} (seen before the restart: {seen})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_open_consume_stream_at_once_with_unavailable() {
    let mut broker = broker();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 3).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            ack_deadline_ms: Some(60_000),
            backoff_initial_ms: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut client = QueuesClient::new(broker.channel().await);
    let (tx, rx) = mpsc::channel(4);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: "work".into(),
            client_id: "c1".into(),
            credit: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .consume(ReceiverStream::new(rx))
        .await
        .expect("Consume")
        .into_inner();
    let opened = stream.message().await.expect("Opened").expect("Opened");
    assert!(matches!(opened.event, Some(Event::Opened(_))), "{opened:?}");
    // One delivery, left unsettled; then the stream has no credit: idle.
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Credit(Credit { messages: 1 })),
    })
    .await
    .unwrap();
    let delivered = match stream.message().await.expect("Deliveries") {
        Some(tidelog_proto::v1::QueueConsumeResponse {
            event: Some(Event::Deliveries(d)),
        }) => d.deliveries,
        other => panic!("expected a delivery, got {other:?}"),
    };
    assert_eq!(delivered.len(), 1);
    let reading = tokio::spawn(async move {
        let started = Instant::now();
        let mut events = Vec::new();
        let end = loop {
            match stream.message().await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        // The sender is kept open until the stream ends: no half-close.
        drop(tx);
        (events, end, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reading.is_finished(), "the stream ended before SIGTERM");

    terminate_promptly(&mut broker, "a Consume stream open");
    let (events, end, took) = reading.await.expect("the reading task");
    assert!(events.is_empty(), "{events:?}");
    let status = end.expect_err("the stream ends with an error status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the broker is shutting down; open Consume again"),
        "{status:?}"
    );
    assert!(
        took < PROMPT_SHUTDOWN + Duration::from_millis(500),
        "{took:?}"
    );

    broker.restart();
    let attempts = drain_after_restart(&broker, 3).await;
    assert_eq!(
        attempts.len(),
        3,
        "every message delivered again: {attempts:?}"
    );
    for (offset, attempt) in attempts {
        // The one sent on the stream was seen: counted. The others went to no one.
        let seen = offset == self::offset(&delivered[0]);
        assert_eq!(
            attempt,
            if seen { 2 } else { 1 },
            "offset {offset} (sent on the stream: {seen})"
        );
    }
}
