//! Work queues through the real broker, as a client written from the .proto: admin
//! calls; three workers sharing 100,000 messages with random nacks and a poison
//! message (every message ends acked exactly once or dead-lettered with its reason);
//! a kill -9 in the middle loses no ack and keeps attempt counts; stale settlements;
//! unary Receive and Settle, and their leases ending with a restart; delay precision
//! and priority order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request as ConsumeRequest, Settle};
use tidelog_proto::v1::queue_consume_response::Event;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, Nack, Term};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::{
    AckLevel, CommitOffsetsRequest, ConsumedMessage, CreateQueueRequest, DeleteQueueRequest,
    DescribeQueueRequest, FetchRequest, ListQueuesRequest, Message, PublishRequest,
    PurgeQueueRequest, QueueConfig, QueueConsumeRequest, QueueDelivery, QueueDescription,
    ReceiveRequest, RedriveQueueRequest, SettleRequest, Settlement, TopicConfig,
    TopicPartitionOffset,
};
use tidelog_tests::{TestBroker, now_ms};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::create_queue;

async fn queues(broker: &TestBroker) -> QueuesClient<Channel> {
    QueuesClient::new(broker.channel().await)
}

/// Publishes `count` messages "m-<i>" round robin over the topic's partitions, durably.
async fn publish(broker: &TestBroker, topic: &str, from: usize, count: usize) {
    publish_acked(broker, topic, from, count, AckLevel::Durable).await;
}

/// [`publish`], answered at `ack`.
async fn publish_acked(broker: &TestBroker, topic: &str, from: usize, count: usize, ack: AckLevel) {
    let mut publisher = broker.publisher().await;
    for chunk in (from..from + count).collect::<Vec<_>>().chunks(1000) {
        publisher
            .publish(PublishRequest {
                topic: topic.into(),
                messages: chunk
                    .iter()
                    .map(|i| Message {
                        value: format!("m-{i}").into_bytes().into(),
                        ..Default::default()
                    })
                    .collect(),
                ack: ack as i32,
            })
            .await
            .expect("publish");
    }
}

fn ack(d: &QueueDelivery) -> Settlement {
    let m = d.message.as_ref().unwrap();
    Settlement {
        partition: m.partition,
        offset: m.offset,
        attempt: d.attempt,
        action: Some(Action::Ack(Ack {})),
        ..Default::default()
    }
}

/// Acks `deliveries` of `queue` in one Settle; the outcome codes, in order.
async fn ack_codes(
    client: &mut QueuesClient<Channel>,
    queue: &str,
    deliveries: &[QueueDelivery],
) -> Vec<i32> {
    client
        .settle(SettleRequest {
            queue: queue.into(),
            settlements: deliveries.iter().map(ack).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes
        .iter()
        .map(|o| o.code)
        .collect()
}

fn nack(d: &QueueDelivery, reason: &str, delay_ms: Option<u64>) -> Settlement {
    Settlement {
        action: Some(Action::Nack(Nack {
            delay_ms,
            reason: reason.into(),
        })),
        ..ack(d)
    }
}

fn value(d: &QueueDelivery) -> String {
    String::from_utf8(d.message.as_ref().unwrap().value.to_vec()).unwrap()
}

/// What every worker saw, shared.
#[derive(Default)]
struct Ledger {
    /// value -> attempts seen.
    attempts: BTreeMap<String, Vec<u32>>,
    /// values whose ack was answered OK.
    acked: BTreeSet<String>,
    /// values whose ack was sent (answered or not: a kill -9 may take the answer of an
    /// ack that was made durable).
    ack_sent: BTreeSet<String>,
    /// Settle requests sent and not answered yet.
    unanswered: usize,
}

/// A worker on a Consume stream: acks, except ~10% nacked (with a short delay) and the
/// poison message, always nacked. Ends when the stream ends or `stop` is set.
async fn worker(
    channel: Channel,
    queue: &'static str,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: queue.into(),
            client_id: format!("worker-{seed}"),
            credit: 500,
        })),
    })
    .await
    .unwrap();
    let mut stream = QueuesClient::new(channel)
        .consume(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut rng = tidelog_storage::rng::SeededRng::new(seed);
    let mut request_id = 0;
    // Per Settle sent: the value each settlement acks (None for a nack).
    let mut sent: BTreeMap<u64, Vec<Option<String>>> = BTreeMap::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(Event::Deliveries(batch)) => {
                let mut settlements = Vec::new();
                let mut values = Vec::new();
                for d in &batch.deliveries {
                    let v = value(d);
                    ledger
                        .lock()
                        .unwrap()
                        .attempts
                        .entry(v.clone())
                        .or_default()
                        .push(d.attempt);
                    if v == "m-poison" {
                        settlements.push(nack(d, "poison pill", Some(1)));
                        values.push(None);
                    } else if rng.below(10) == 0 {
                        settlements.push(nack(d, "transient", Some(1)));
                        values.push(None);
                    } else {
                        settlements.push(ack(d));
                        values.push(Some(v));
                    }
                }
                request_id += 1;
                ledger
                    .lock()
                    .unwrap()
                    .ack_sent
                    .extend(values.iter().flatten().cloned());
                ledger.lock().unwrap().unanswered += 1;
                sent.insert(request_id, values);
                tx.send(QueueConsumeRequest {
                    request: Some(ConsumeRequest::Settle(Settle {
                        request_id,
                        settlements,
                    })),
                })
                .await
                .ok();
            }
            Some(Event::Settled(settled)) => {
                // Acks count once the broker says they are durable.
                let values = sent
                    .remove(&settled.request_id)
                    .expect("an answer to a request");
                {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.unanswered -= 1;
                    for (outcome, v) in settled.outcomes.iter().zip(&values) {
                        if let (0, Some(v)) = (outcome.code, v) {
                            assert!(ledger.acked.insert(v.clone()), "{v} acked twice");
                        }
                    }
                }
                tx.send(QueueConsumeRequest {
                    request: Some(ConsumeRequest::Credit(Credit {
                        messages: values.len() as u32,
                    })),
                })
                .await
                .ok();
            }
            Some(Event::Opened(_)) | None => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn admin_calls_create_describe_list_alter_purge_delete() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders", 2, TopicConfig::default())
        .await;
    publish(&broker, "orders", 0, 10).await;
    create_queue(&broker, "billing", "orders", QueueConfig::default()).await;
    let mut client = queues(&broker).await;
    let described = client
        .describe_queue(DescribeQueueRequest {
            name: "billing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(described.ready, 10);
    let config = described.config.unwrap();
    assert_eq!(
        (
            config.ack_deadline_ms,
            config.max_deliveries,
            config.dead_letter_topic.as_deref()
        ),
        (Some(30_000), Some(5), Some("orders.dlq")),
        "the defaults"
    );
    let duplicate = client
        .create_queue(CreateQueueRequest {
            name: "billing".into(),
            topic: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    for (what, request, code) in [
        (
            "an unknown topic",
            CreateQueueRequest {
                name: "x".into(),
                topic: "nope".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            "a bad name",
            CreateQueueRequest {
                name: "a b".into(),
                topic: "orders".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "a deadline out of range",
            CreateQueueRequest {
                name: "y".into(),
                topic: "orders".into(),
                config: Some(QueueConfig {
                    ack_deadline_ms: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ] {
        let status = client.create_queue(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    let listed = client
        .list_queues(ListQueuesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 1);
    let purged = client
        .purge_queue(PurgeQueueRequest {
            name: "billing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, 10);
    let after = client
        .describe_queue(DescribeQueueRequest {
            name: "billing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(after.ready, 0);
    client
        .delete_queue(DeleteQueueRequest {
            name: "billing".into(),
        })
        .await
        .unwrap();
    let gone = client
        .describe_queue(DescribeQueueRequest {
            name: "billing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn unary_receive_and_settle_with_stale_and_unknown_settlements() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 3).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            ack_deadline_ms: Some(300),
            backoff_initial_ms: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut client = queues(&broker).await;
    let receive = |member: &str, max: u32| ReceiveRequest {
        queue: "work".into(),
        member: member.into(),
        max_messages: max,
        max_wait_ms: 2_000,
    };
    let first = client
        .receive(receive("a", 2))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|d| d.attempt == 1));
    // The first delivery's deadline passes: it goes to b as attempt 2.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = client
        .receive(receive("b", 1))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    let redelivered = again[0].message.as_ref().unwrap().offset;
    let old = first
        .iter()
        .find(|d| d.message.as_ref().unwrap().offset == redelivered)
        .unwrap();
    let outcomes = client
        .settle(SettleRequest {
            queue: "work".into(),
            settlements: vec![
                ack(old),
                ack(&again[0]),
                Settlement {
                    partition: 0,
                    offset: 99,
                    action: Some(Action::Ack(Ack {})),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let codes: Vec<i32> = outcomes.iter().map(|o| o.code).collect();
    assert_eq!(
        codes,
        vec![
            Code::FailedPrecondition as i32,
            Code::Ok as i32,
            Code::NotFound as i32
        ],
        "stale, acked, and an offset never delivered: {outcomes:?}"
    );
    assert!(outcomes[0].message.contains("attempt 2"), "{outcomes:?}");
    let second_ack = client
        .settle(SettleRequest {
            queue: "work".into(),
            settlements: vec![ack(&again[0])],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(second_ack[0].code, Code::NotFound as i32, "{second_ack:?}");
}

/// How the broker goes down in [`a_unary_lease_ends_with_the_broker_whoever_asks_first`].
#[derive(Debug, Clone, Copy)]
enum Down {
    Kill9,
    Sigterm,
}

/// A message leased by a unary Receive (member w1, ack deadline 30 s) when the broker
/// goes down: after the restart the lease is over, even though w1's Receive is the
/// first call (the member's name comes back; its lease must not): w1 gets nothing, a
/// Settle of attempt 1 is stale, and w2 gets the message as attempt 2 after the 3 s
/// backoff, not after the 30 s deadline. (The broker ends the lease as it starts, so
/// the backoff is long enough for w1's first Receive to come before it is over.)
async fn a_unary_lease_ends_with_the_broker_whoever_asks_first(down: Down) {
    let mut broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 1).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            ack_deadline_ms: Some(30_000),
            backoff_initial_ms: Some(3_000),
            ..Default::default()
        },
    )
    .await;
    let receive = |member: &str, max_wait_ms: u64| ReceiveRequest {
        queue: "work".into(),
        member: member.into(),
        max_messages: 10,
        max_wait_ms,
    };
    let first = queues(&broker)
        .await
        .receive(receive("w1", 2_000))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    tokio::task::block_in_place(|| match down {
        Down::Kill9 => {
            broker.kill9();
            broker.restart();
        }
        Down::Sigterm => broker.restart(),
    });
    let restarted = tokio::time::Instant::now();
    let mut client = queues(&broker).await;
    // w1 asks first: its old lease does not come back to it, nothing else is ready.
    let again = client
        .receive(receive("w1", 0))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(again.is_empty(), "{down:?}: {again:?}");
    let settle = |settlements| SettleRequest {
        queue: "work".into(),
        settlements,
    };
    let stale = client
        .settle(settle(vec![ack(&first[0])]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(
        stale[0].code,
        Code::FailedPrecondition as i32,
        "{down:?}: attempt 1 ended with the restart: {stale:?}"
    );
    let mut got = Vec::new();
    while got.is_empty() && restarted.elapsed() < Duration::from_secs(15) {
        got = client
            .receive(receive("w2", 1_000))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
    }
    assert_eq!(
        got.len(),
        1,
        "{down:?}: not delivered again within 15 s of the restart (the ack deadline is 30 s)"
    );
    assert_eq!((value(&got[0]).as_str(), got[0].attempt), ("m-0", 2));
    let outcomes = client
        .settle(settle(vec![ack(&first[0]), ack(&got[0])]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    let codes: Vec<i32> = outcomes.iter().map(|o| o.code).collect();
    assert_eq!(
        codes,
        vec![Code::FailedPrecondition as i32, Code::Ok as i32],
        "{down:?}: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_lease_ends_with_a_kill_9_even_when_its_member_asks_first() {
    a_unary_lease_ends_with_the_broker_whoever_asks_first(Down::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_lease_ends_with_a_clean_stop_even_when_its_member_asks_first() {
    a_unary_lease_ends_with_the_broker_whoever_asks_first(Down::Sigterm).await;
}

/// Leases held when the broker is killed end as the broker starts, before it serves:
/// DescribeQueue shows them unacked before the kill and, as the first call after the
/// restart, no longer (it used to until some member called, up to the 30 s ack
/// deadline here, and a pattern queue's for some ms after the start), and each message
/// is delivered again as attempt 2. A plain queue on one topic, and a pattern queue on
/// four (a lease on each).
async fn leases_from_before_a_kill_9_end_as_the_broker_starts(pattern: bool) {
    let mut broker = TestBroker::start();
    let topics: &[&str] = if pattern {
        &["p.t0", "p.t1", "p.t2", "p.t3"]
    } else {
        &["jobs"]
    };
    for topic in topics {
        broker.create_topic(topic, 1, TopicConfig::default()).await;
        publish(&broker, topic, 0, 1).await;
    }
    let config = QueueConfig {
        ack_deadline_ms: Some(30_000),
        backoff_initial_ms: Some(100),
        ..Default::default()
    };
    if pattern {
        queues(&broker)
            .await
            .create_queue(CreateQueueRequest {
                name: "work".into(),
                topic_pattern: r"p\..*".into(),
                start: Some(tidelog_proto::v1::StartPosition {
                    position: Some(Position::Earliest(Earliest {})),
                }),
                config: Some(config),
                ..Default::default()
            })
            .await
            .unwrap();
    } else {
        create_queue(&broker, "work", "jobs", config).await;
    }
    let receive = |member: &str| ReceiveRequest {
        queue: "work".into(),
        member: member.into(),
        max_messages: 10,
        max_wait_ms: 2_000,
    };
    let mut first = Vec::new();
    while first.len() < topics.len() {
        let got = queues(&broker)
            .await
            .receive(receive("w1"))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert!(!got.is_empty(), "nothing more after {first:?}");
        first.extend(got);
    }
    assert_eq!(first.len(), topics.len());
    async fn describe(broker: &TestBroker) -> QueueDescription {
        queues(broker)
            .await
            .describe_queue(DescribeQueueRequest {
                name: "work".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .queue
            .unwrap()
    }
    let before = describe(&broker).await;
    assert_eq!(before.unacked, topics.len() as u64, "{before:?}");
    tokio::task::block_in_place(|| {
        broker.kill9();
        broker.restart();
    });
    let after = describe(&broker).await;
    assert_eq!(
        (after.unacked, after.members.len()),
        (0, 0),
        "the first call after the restart still sees the leases from before the kill -9: \
         {after:?}"
    );
    let mut again = Vec::new();
    while again.len() < topics.len() {
        let got = queues(&broker)
            .await
            .receive(receive("w2"))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert!(!got.is_empty(), "{after:?}: nothing more after {again:?}");
        again.extend(got);
    }
    for delivery in &again {
        assert_eq!((value(delivery).as_str(), delivery.attempt), ("m-0", 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_from_before_a_kill_9_ends_as_the_broker_starts_without_any_call() {
    leases_from_before_a_kill_9_end_as_the_broker_starts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_queues_leases_from_before_a_kill_9_end_as_the_broker_starts() {
    leases_from_before_a_kill_9_end_as_the_broker_starts(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_100000_messages_with_nacks_and_a_poison_message() {
    const MESSAGES: usize = 100_000;
    let mut broker = TestBroker::start();
    broker.create_topic("work", 4, TopicConfig::default()).await;
    create_queue(
        &broker,
        "q",
        "work",
        QueueConfig {
            max_deliveries: Some(4),
            backoff_initial_ms: Some(5),
            backoff_max_ms: Some(50),
            ..Default::default()
        },
    )
    .await;
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "work".into(),
            messages: vec![Message {
                value: "m-poison".into(),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap();
    publish(&broker, "work", 0, MESSAGES / 2).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let channel = broker.channel().await;
    let workers: Vec<_> = (0..3)
        .map(|seed| tokio::spawn(worker(channel.clone(), "q", ledger.clone(), seed)))
        .collect();
    // Half-way, kill the broker: no ack the workers saw answered may be lost, and the
    // attempt counts survive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| broker.kill9());
    for worker in workers {
        let _ = worker.await;
    }
    let acked_before: BTreeSet<String> = ledger.lock().unwrap().acked.clone();
    // Acks sent but not answered when the broker died: each was made durable (never
    // delivered again) or not (delivered again), nobody can tell which.
    let in_doubt: BTreeSet<String> = ledger
        .lock()
        .unwrap()
        .ack_sent
        .difference(&acked_before)
        .cloned()
        .collect();
    ledger.lock().unwrap().unanswered = 0;
    let attempts_before: BTreeMap<String, u32> = ledger
        .lock()
        .unwrap()
        .attempts
        .iter()
        .map(|(v, a)| (v.clone(), *a.iter().max().unwrap()))
        .collect();
    eprintln!(
        "acked before the kill: {} of {} published",
        acked_before.len(),
        MESSAGES / 2 + 1
    );
    assert!(
        !acked_before.is_empty(),
        "the workers acked before the kill"
    );
    tokio::task::block_in_place(|| broker.restart());
    publish(&broker, "work", MESSAGES / 2, MESSAGES / 2).await;
    let channel = broker.channel().await;
    let workers: Vec<_> = (10..13)
        .map(|seed| tokio::spawn(worker(channel.clone(), "q", ledger.clone(), seed)))
        .collect();

    // Until every message is acked or dead-lettered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut client = queues(&broker).await;
    loop {
        let queue = client
            .describe_queue(DescribeQueueRequest { name: "q".into() })
            .await
            .unwrap()
            .into_inner()
            .queue
            .unwrap();
        if queue.ready + queue.unacked + queue.waiting + queue.delayed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The queue drains when the last acks are durable, a moment before their answers
    // reach the workers: wait for every ack sent since the restart to be answered.
    loop {
        let unanswered = ledger.lock().unwrap().unanswered;
        if unanswered == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unanswered} Settle requests were never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for worker in workers {
        worker.abort();
    }

    // The dead letters, with their reasons.
    // Every dead letter, following next_offset (one Fetch stops at its byte budget).
    let mut dlq = Vec::new();
    let mut consumer = broker.consumer().await;
    let mut offset = 0;
    loop {
        let page = consumer
            .fetch(FetchRequest {
                topic: "work.dlq".into(),
                offset,
                max_messages: 10_000,
                ..Default::default()
            })
            .await
            .expect("the dead-letter topic exists")
            .into_inner();
        if page.messages.is_empty() {
            break;
        }
        offset = page.next_offset;
        dlq.extend(page.messages);
    }
    let mut dead = BTreeSet::new();
    for letter in &dlq {
        let v = String::from_utf8(letter.value.to_vec()).unwrap();
        let reason = letter
            .headers
            .iter()
            .find(|h| h.key == "tidelog-dlq-reason")
            .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
            .unwrap();
        assert!(!reason.is_empty(), "{v} dead-lettered without a reason");
        dead.insert(v);
    }
    assert!(
        dead.contains("m-poison"),
        "the poison message is dead-lettered: {dead:?}"
    );

    let ledger = ledger.lock().unwrap();
    let mut expected: BTreeSet<String> = (0..MESSAGES).map(|i| format!("m-{i}")).collect();
    expected.insert("m-poison".into());
    for v in &expected {
        let acked = ledger.acked.contains(v);
        if !acked && !dead.contains(v) && in_doubt.contains(v) {
            // Its ack was made durable at the kill, its answer lost: it was not
            // delivered after the restart.
            let seen = &ledger.attempts[v];
            assert!(
                seen.iter().all(|&a| a <= attempts_before[v]),
                "{v}: its ack before the kill was lost, yet it was not acked after: {seen:?}"
            );
            continue;
        }
        assert!(
            acked != dead.contains(v),
            "{v}: acked {acked}, dead-lettered {} (exactly one is expected)",
            dead.contains(v)
        );
    }
    for v in &acked_before {
        let seen = &ledger.attempts[v];
        assert_eq!(
            seen.iter().filter(|&&a| a > attempts_before[v]).count(),
            0,
            "{v} was acked before the kill and delivered again after it: {seen:?}"
        );
    }
    for (v, attempts) in &ledger.attempts {
        let mut sorted = attempts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert!(
            sorted.windows(2).all(|w| w[1] > w[0]) && sorted.iter().all(|&a| a <= 4),
            "{v}: attempts {attempts:?} must grow and stay within max_deliveries 4, across the restart"
        );
    }
}

#[tokio::test]
async fn delay_is_honoured_and_priority_goes_first() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                priority_levels: 10,
                ..TopicConfig::default()
            },
        )
        .await;
    create_queue(&broker, "work", "jobs", QueueConfig::default()).await;
    let mut publisher = broker.publisher().await;
    let low: Vec<Message> = (0..2000)
        .map(|i| Message {
            value: format!("low-{i}").into_bytes().into(),
            ..Default::default()
        })
        .collect();
    publisher
        .publish(PublishRequest {
            topic: "jobs".into(),
            messages: low,
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap();
    let due = now_ms() + 700;
    publisher
        .publish(PublishRequest {
            topic: "jobs".into(),
            messages: vec![
                Message {
                    value: "urgent".into(),
                    priority: 9,
                    ..Default::default()
                },
                Message {
                    value: "later".into(),
                    priority: 9,
                    deliver_at_ms: Some(due),
                    ..Default::default()
                },
            ],
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap();
    let mut client = queues(&broker).await;
    let receive = || ReceiveRequest {
        queue: "work".into(),
        member: "m".into(),
        max_messages: 1,
        max_wait_ms: 5_000,
    };
    let first = client
        .receive(receive())
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(
        value(&first[0]),
        "urgent",
        "priority 9 goes before 2,000 of priority 0"
    );
    client
        .settle(SettleRequest {
            queue: "work".into(),
            settlements: vec![ack(&first[0])],
        })
        .await
        .unwrap();
    // The delayed priority-9 message comes when its time comes, ahead of the backlog:
    // until then the backlog is served.
    let mut delayed_at = None;
    for _ in 0..200 {
        let got = client
            .receive(receive())
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        let Some(d) = got.first() else { continue };
        client
            .settle(SettleRequest {
                queue: "work".into(),
                settlements: vec![ack(d)],
            })
            .await
            .unwrap();
        if value(d) == "later" {
            delayed_at = Some(now_ms());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = delayed_at.expect("the delayed message was delivered");
    assert!(at >= due, "delivered {} ms early", due - at);
    assert!(at - due < 500, "delivered {} ms late", at - due);
}

#[tokio::test]
async fn redrive_moves_dead_letters_back() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 1).await;
    create_queue(&broker, "work", "jobs", QueueConfig::default()).await;
    let mut client = queues(&broker).await;
    let got = client
        .receive(ReceiveRequest {
            queue: "work".into(),
            member: "m".into(),
            max_messages: 1,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    client
        .settle(SettleRequest {
            queue: "work".into(),
            settlements: vec![Settlement {
                action: Some(Action::Term(Term {
                    reason: "bad input".into(),
                })),
                ..ack(&got[0])
            }],
        })
        .await
        .unwrap();
    let redriven = client
        .redrive_queue(RedriveQueueRequest {
            name: "work".into(),
            max_messages: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((redriven.moved, redriven.remaining), (1, 0));
    let again = client
        .receive(ReceiveRequest {
            queue: "work".into(),
            member: "m".into(),
            max_messages: 1,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(value(&again[0]), "m-0");
    assert_eq!(again[0].attempt, 1);
}

/// Every metric the shipped alert rules and dashboard use (deploy/) is exported by a
/// live broker with a queue at work, and the queue's metrics count what happened.
#[tokio::test]
async fn the_metrics_the_alerts_and_dashboard_use_are_exported() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 3).await;
    create_queue(&broker, "work", "jobs", QueueConfig::default()).await;
    let mut client = queues(&broker).await;
    let got = client
        .receive(ReceiveRequest {
            queue: "work".into(),
            member: "m".into(),
            max_messages: 2,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 2);
    client
        .settle(SettleRequest {
            queue: "work".into(),
            settlements: vec![
                ack(&got[0]),
                Settlement {
                    action: Some(Action::Term(Term {
                        reason: "bad".into(),
                    })),
                    ..ack(&got[1])
                },
            ],
        })
        .await
        .unwrap();
    // Activity for the other families the dashboard shows: a fetch, a group commit
    // (lag), a failed call (RPC errors).
    broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: "jobs".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    broker
        .groups()
        .await
        .commit_offsets(CommitOffsetsRequest {
            group_id: "readers".into(),
            offsets: vec![TopicPartitionOffset {
                topic: "jobs".into(),
                partition: 0,
                offset: 1,
                metadata: String::new(),
                topic_id: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = client
        .describe_queue(DescribeQueueRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    let metrics = broker.metrics_text();
    for (series, expected) in [
        ("tidelog_queue_acked_total{queue=\"work\"}", 1.0),
        ("tidelog_queue_delivered_total{queue=\"work\"}", 2.0),
        (
            "tidelog_queue_dead_lettered_total{queue=\"work\",reason=\"term\"}",
            1.0,
        ),
        ("tidelog_queue_ready{queue=\"work\"}", 1.0),
        ("tidelog_queue_unacked{queue=\"work\"}", 0.0),
        (
            "tidelog_queue_ack_latency_seconds_count{queue=\"work\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            tidelog_tests::metric_value(&metrics, series),
            Some(expected),
            "{series} in:\n{metrics}"
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/prometheus/tidelog-alerts.yml",
        "deploy/grafana/tidelog-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut names: Vec<&str> = text
            .match_indices("tidelog_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|name| name.len() > "tidelog_".len())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(
                metrics.lines().any(|l| l.starts_with(name)),
                "{file} uses {name}, which the broker does not export"
            );
        }
    }
}

/// The messages of dead-letter topic `dlq` once it holds `at_least` (or what it holds
/// after 10 s).
async fn dead_letters(broker: &TestBroker, dlq: &str, at_least: usize) -> Vec<ConsumedMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let letters = broker
            .consumer()
            .await
            .fetch(FetchRequest {
                topic: dlq.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().messages)
            .unwrap_or_default();
        if letters.len() >= at_least || tokio::time::Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cap is enforced on messages that become visible after their publish was
/// answered. On an fsync = always topic, a publish with ack WRITTEN returns (and tells
/// the queue) before the fsync, when none of its messages is visible yet. The queue
/// has no consumer to wake it, and no publish follows. The fsync alone must make the
/// queue dead-letter the oldest three of eight (CI once saw two: the last publish's
/// overflow waited for a next publish that never came).
#[tokio::test]
async fn overflow_is_enforced_on_messages_the_fsync_makes_visible() {
    use tidelog_proto::v1::QueueOverflow;
    let broker = TestBroker::start();
    broker
        .create_topic(
            "late",
            1,
            TopicConfig {
                queue_max_ready_messages: Some(5),
                queue_overflow: QueueOverflow::DeadLetterOldest as i32,
                ..TopicConfig::default()
            },
        )
        .await;
    create_queue(&broker, "late-q", "late", QueueConfig::default()).await;
    // Up to the cap, durably: the queue's runtime has started and seen them all.
    for i in 0..5 {
        publish(&broker, "late", i, 1).await;
    }
    // Three more: the runtime looks when they are written, before the fsync.
    publish_acked(&broker, "late", 5, 3, AckLevel::Written).await;
    let values: Vec<String> = dead_letters(&broker, "late.dlq", 3)
        .await
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, vec!["m-0", "m-1", "m-2"], "the oldest three");
}

/// A waiting consumer gets each message as soon as it is visible. On an fsync = always
/// topic (the default) a publish with ack WRITTEN is answered, and wakes the queue,
/// before the fsync; its message becomes visible when the fsync ends, possibly while
/// the queue's runtime is in a round. The runtime then must not wait past it. Before
/// the fix, 5 runs of this test in 10 stalled on one of their 30 messages: it was
/// delivered only when something else woke the queue (here: nothing).
#[tokio::test]
async fn a_waiting_consumer_gets_each_message_the_fsync_makes_visible() {
    let broker = TestBroker::start();
    broker.create_topic("one", 1, TopicConfig::default()).await;
    create_queue(&broker, "one-q", "one", QueueConfig::default()).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: "one-q".into(),
            client_id: "waiting".into(),
            credit: 1,
        })),
    })
    .await
    .unwrap();
    let mut stream = queues(&broker)
        .await
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..30 {
        publish_acked(&broker, "one", i as usize, 1, AckLevel::Written).await;
        let delivery = loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .unwrap_or_else(|_| panic!("m-{i} was not delivered in 10 s"))
                .unwrap()
                .expect("the stream ended");
            if let Some(Event::Deliveries(batch)) = event.event {
                assert_eq!(batch.deliveries.len(), 1);
                break batch.deliveries[0].clone();
            }
        };
        assert_eq!(value(&delivery), format!("m-{i}"));
        tx.send(QueueConsumeRequest {
            request: Some(ConsumeRequest::Settle(Settle {
                request_id: i,
                settlements: vec![ack(&delivery)],
            })),
        })
        .await
        .unwrap();
        tx.send(QueueConsumeRequest {
            request: Some(ConsumeRequest::Credit(Credit { messages: 1 })),
        })
        .await
        .unwrap();
    }
}

/// Topics `strict` (overflow reject) and `lossy` (dead-letter-oldest), one partition
/// each, capped at `cap` ready messages, with queues `strict-q` and `lossy-q`.
async fn capped_topics(broker: &TestBroker, cap: u64) {
    use tidelog_proto::v1::QueueOverflow;
    for (topic, overflow) in [
        ("strict", QueueOverflow::Reject),
        ("lossy", QueueOverflow::DeadLetterOldest),
    ] {
        broker
            .create_topic(
                topic,
                1,
                TopicConfig {
                    queue_max_ready_messages: Some(cap),
                    queue_overflow: overflow as i32,
                    ..TopicConfig::default()
                },
            )
            .await;
        create_queue(broker, &format!("{topic}-q"), topic, QueueConfig::default()).await;
    }
}

/// Backpressure both ways: a full queue refuses publishes (discard new) or dead-letters
/// its oldest ready messages with reason overflow (discard old).
#[tokio::test]
async fn overflow_rejects_new_or_dead_letters_old() {
    let broker = TestBroker::start();
    capped_topics(&broker, 5).await;
    let mut publisher = broker.publisher().await;
    let one = |topic: &str, i: usize| PublishRequest {
        topic: topic.into(),
        messages: vec![Message {
            value: format!("m-{i}").into_bytes().into(),
            ..Default::default()
        }],
        ack: AckLevel::Durable as i32,
    };

    // Discard new.
    for i in 0..5 {
        publisher.publish(one("strict", i)).await.unwrap();
    }
    let refused = publisher.publish(one("strict", 5)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("strict-q") && refused.message().contains("5 ready"),
        "{refused:?}"
    );
    let mut client = queues(&broker).await;
    let got = client
        .receive(ReceiveRequest {
            queue: "strict-q".into(),
            member: "m".into(),
            max_messages: 2,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    ack_codes(&mut client, "strict-q", &got).await;
    publisher
        .publish(one("strict", 5))
        .await
        .expect("room again after two acks");

    // Discard old: no consumer at all, the oldest go to the dead-letter topic.
    for i in 0..8 {
        publisher.publish(one("lossy", i)).await.unwrap();
    }
    let letters = dead_letters(&broker, "lossy.dlq", 3).await;
    let values: Vec<String> = letters
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, vec!["m-0", "m-1", "m-2"], "the oldest three");
    let reason = letters[0]
        .headers
        .iter()
        .find(|h| h.key == "tidelog-dlq-reason")
        .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
        .unwrap();
    assert!(reason.starts_with("overflow"), "{reason}");
    assert!(
        reason.ends_with("(queue_max_ready_messages 5, queue_max_ready_bytes off)"),
        "the caps in the operator's terms: {reason}"
    );
    // A pass writes its letters, then records them in the queue's state: the count
    // comes down to the cap once the pass is durable.
    let started = std::time::Instant::now();
    loop {
        let described = client
            .describe_queue(DescribeQueueRequest {
                name: "lossy-q".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .queue
            .unwrap();
        if described.ready == 5 {
            break;
        }
        assert!(
            described.ready > 5 && started.elapsed() < Duration::from_secs(10),
            "ready {}",
            described.ready
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delayed messages take no room under the caps, with no member connected: a publish
/// of delayed messages is never refused (it adds nothing ready now), the queue takes
/// them as they arrive, DescribeQueue counts them delayed, not ready, and a
/// dead-letter-oldest queue moves none of them. Ready messages still meet the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_take_no_room_under_the_caps() {
    let broker = TestBroker::start();
    capped_topics(&broker, 2).await;
    let mut publisher = broker.publisher().await;
    let one = |topic: &str, i: usize, delay_ms: Option<u64>| PublishRequest {
        topic: topic.into(),
        messages: vec![Message {
            value: format!("m-{i}").into_bytes().into(),
            delay_ms,
            ..Default::default()
        }],
        ack: AckLevel::Durable as i32,
    };
    let mut client = queues(&broker).await;
    for topic in ["strict", "lossy"] {
        for i in 0..4 {
            publisher
                .publish(one(topic, i, Some(3_600_000)))
                .await
                .unwrap_or_else(|e| panic!("{topic}: delayed publish {i}: {e:?}"));
        }
        // Taken as they arrive (the queue looks when messages become visible).
        let queue = format!("{topic}-q");
        let started = std::time::Instant::now();
        loop {
            let described = client
                .describe_queue(DescribeQueueRequest {
                    name: queue.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .queue
                .unwrap();
            if (described.ready, described.delayed) == (0, 4) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{queue}: ready {}, delayed {}",
                described.ready,
                described.delayed
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Ready messages meet the cap as before.
    for i in 4..6 {
        publisher.publish(one("strict", i, None)).await.unwrap();
    }
    let refused = publisher.publish(one("strict", 6, None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Still no room for ready ones, but delayed ones go on.
    publisher
        .publish(one("strict", 7, Some(3_600_000)))
        .await
        .expect("a delayed publish adds nothing ready");
    // Nothing delayed was dead-lettered as overflow.
    let letters = broker
        .consumer()
        .await
        .fetch(tidelog_proto::v1::FetchRequest {
            topic: "lossy.dlq".into(),
            ..Default::default()
        })
        .await;
    match letters {
        Ok(letters) => assert!(letters.into_inner().messages.is_empty()),
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
    }
}

/// A publish to a rejecting capped topic is judged on what is ready when it arrives:
/// a delayed message acked a moment before takes no room even if the queue's runtime
/// has not looked yet, and messages whose TTL passed at the head of the queue take none
/// either (hunt 10c: the first refused 12 to 19 of 20 such publishes, the second every
/// publish until a member came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_meets_the_cap_of_ready_messages_only() {
    use tidelog_proto::v1::QueueOverflow;
    let broker = TestBroker::start();
    let mut publisher = broker.publisher().await;
    let message = |delay_ms: Option<u64>, ttl_ms: Option<u64>| Message {
        value: b"m".to_vec().into(),
        delay_ms,
        ttl_ms,
        ..Default::default()
    };
    let publish = |topic: &str, message: Message| PublishRequest {
        topic: topic.into(),
        messages: vec![message],
        ack: AckLevel::Durable as i32,
    };
    let capped = |cap| TopicConfig {
        queue_max_ready_messages: Some(cap),
        queue_overflow: QueueOverflow::Reject as i32,
        ..TopicConfig::default()
    };
    for i in 0..5 {
        let topic = format!("fresh-{i}");
        broker.create_topic(&topic, 1, capped(1)).await;
        create_queue(
            &broker,
            &format!("{topic}-q"),
            &topic,
            QueueConfig::default(),
        )
        .await;
        publisher
            .publish(publish(&topic, message(Some(3_600_000), None)))
            .await
            .unwrap();
        publisher
            .publish(publish(&topic, message(None, None)))
            .await
            .unwrap_or_else(|e| panic!("{topic}: the due one after the delayed one: {e:?}"));
        let refused = publisher
            .publish(publish(&topic, message(None, None)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    }
    broker.create_topic("short", 1, capped(2)).await;
    create_queue(&broker, "short-q", "short", QueueConfig::default()).await;
    for _ in 0..2 {
        publisher
            .publish(publish("short", message(None, Some(300))))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..2 {
        publisher
            .publish(publish("short", message(None, None)))
            .await
            .unwrap_or_else(|e| panic!("publish {i} after the two expired: {e:?}"));
    }
    let refused = publisher
        .publish(publish("short", message(None, None)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("holds 2 ready"), "{refused:?}");
}

/// A message of a higher priority level delivered and acked before the lower ones
/// before it (out of offset order) is not ready any more: DescribeQueue counts 5 of
/// 5 low + 1 high, after a kill -9 and restart too; and the caps count the same:
/// with 4 low + 1 high under a cap of 5, the high one acked leaves room for one more
/// publish (reject), and a dead-letter-oldest queue then holding 5 at its cap of 5
/// dead-letters nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acked_out_of_offset_order_is_not_ready_nor_over_the_caps() {
    use tidelog_proto::v1::QueueOverflow;
    let mut broker = TestBroker::start();
    let two_levels = |cap: Option<u64>, overflow: QueueOverflow| TopicConfig {
        priority_levels: 2,
        queue_max_ready_messages: cap,
        queue_overflow: overflow as i32,
        ..TopicConfig::default()
    };
    broker
        .create_topic("plain", 1, two_levels(None, QueueOverflow::Reject))
        .await;
    broker
        .create_topic("strict", 1, two_levels(Some(5), QueueOverflow::Reject))
        .await;
    broker
        .create_topic(
            "lossy",
            1,
            two_levels(Some(5), QueueOverflow::DeadLetterOldest),
        )
        .await;
    for topic in ["plain", "strict", "lossy"] {
        create_queue(
            &broker,
            &format!("{topic}-q"),
            topic,
            QueueConfig::default(),
        )
        .await;
    }
    let mut publisher = broker.publisher().await;
    let messages = |topic: &str, low: usize, high: usize| PublishRequest {
        topic: topic.into(),
        messages: (0..low)
            .map(|i| Message {
                value: format!("low-{i}").into_bytes().into(),
                ..Default::default()
            })
            .chain((0..high).map(|_| Message {
                value: "high".into(),
                priority: 1,
                ..Default::default()
            }))
            .collect(),
        ack: AckLevel::Durable as i32,
    };
    let mut client = queues(&broker).await;
    let ready = |client: &mut QueuesClient<Channel>, queue: &str| {
        let mut client = client.clone();
        let queue = queue.to_string();
        async move {
            client
                .describe_queue(DescribeQueueRequest { name: queue })
                .await
                .unwrap()
                .into_inner()
                .queue
                .unwrap()
                .ready
        }
    };
    for (topic, low) in [("plain", 5), ("strict", 4), ("lossy", 4)] {
        publisher.publish(messages(topic, low, 1)).await.unwrap();
        let queue = format!("{topic}-q");
        let got = client
            .receive(ReceiveRequest {
                queue: queue.clone(),
                member: "m".into(),
                max_messages: 1,
                max_wait_ms: 2_000,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(value(&got[0]), "high", "{topic}: the high one first");
        let codes = ack_codes(&mut client, &queue, &got).await;
        assert_eq!(codes, [Code::Ok as i32], "{topic}");
        assert_eq!(ready(&mut client, &queue).await, low as u64, "{topic}");
    }
    publisher
        .publish(messages("strict", 1, 0))
        .await
        .expect("4 ready under a cap of 5: room for one more");
    publisher.publish(messages("lossy", 1, 0)).await.unwrap();
    assert_eq!(ready(&mut client, "strict-q").await, 5);
    assert_eq!(ready(&mut client, "lossy-q").await, 5);
    // The overflow pass runs after each publish: give it time to (wrongly) act.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        dead_letters(&broker, "lossy.dlq", 0).await.is_empty(),
        "5 ready at a cap of 5: nothing dead-lettered"
    );
    assert_eq!(ready(&mut client, "lossy-q").await, 5);

    // The counts are durable state: the same after a kill -9.
    tokio::task::block_in_place(|| broker.kill9());
    tokio::task::block_in_place(|| broker.restart());
    let mut client = queues(&broker).await;
    for (queue, expected) in [("plain-q", 5), ("strict-q", 5), ("lossy-q", 5)] {
        assert_eq!(
            ready(&mut client, queue).await,
            expected,
            "{queue} after a kill -9"
        );
    }
    let mut publisher = broker.publisher().await;
    let refused = publisher
        .publish(messages("strict", 1, 0))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "5 ready at a cap of 5"
    );
}

/// The deliveries a Consume stream sends until `want` arrived or `wait` passed.
async fn stream_deliveries(
    stream: &mut tonic::Streaming<tidelog_proto::v1::QueueConsumeResponse>,
    want: usize,
    wait: Duration,
) -> Vec<QueueDelivery> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while got.len() < want {
        let event = match tokio::time::timeout_at(until, stream.message()).await {
            Ok(event) => event.expect("the stream stays up").expect("not ended"),
            Err(_) => break,
        };
        if let Some(Event::Deliveries(batch)) = event.event {
            got.extend(batch.deliveries);
        }
    }
    got
}

/// PurgeQueue settles the deliveries members hold, so their room under
/// `max_unacked_per_member` comes back at once: a Consume member and a Receive member,
/// each at its limit of 3 (deadline a minute away), hold nothing by DescribeQueue after
/// the purge and get the messages published after it as they come, the Receive member
/// on a call that was already waiting. (They held their purged deliveries for good, and got
/// nothing more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_gives_members_at_their_limit_their_room_back() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 10).await;
    create_queue(
        &broker,
        "work",
        "jobs",
        QueueConfig {
            max_unacked_per_member: Some(3),
            ack_deadline_ms: Some(60_000),
            ..Default::default()
        },
    )
    .await;
    let mut client = queues(&broker).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(QueueConsumeRequest {
        request: Some(ConsumeRequest::Open(Open {
            queue: "work".into(),
            client_id: "streamer".into(),
            credit: 100,
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let held = stream_deliveries(&mut stream, 3, Duration::from_secs(10)).await;
    assert_eq!(held.len(), 3);
    let receive = |wait_ms: u64| ReceiveRequest {
        queue: "work".into(),
        member: "poller".into(),
        max_messages: 10,
        max_wait_ms: wait_ms,
    };
    let polled = client.receive(receive(2_000)).await.unwrap().into_inner();
    assert_eq!(polled.deliveries.len(), 3);
    let describe = |client: &QueuesClient<Channel>| {
        let mut client = client.clone();
        async move {
            let queue = client
                .describe_queue(DescribeQueueRequest {
                    name: "work".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .queue
                .unwrap();
            let members: Vec<(String, u64)> = queue
                .members
                .iter()
                .map(|m| (m.client_id.clone(), m.unacked))
                .collect();
            (queue.unacked, queue.ready, members)
        }
    };
    let (unacked, ready, mut members) = describe(&client).await;
    members.sort();
    assert_eq!(
        (unacked, ready, members),
        (6, 4, vec![("poller".into(), 3), ("streamer".into(), 3)])
    );
    // A Receive waiting at its limit while the queue is purged.
    let mut waiting_client = client.clone();
    let waiting = tokio::spawn(async move { waiting_client.receive(receive(10_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let purged = client
        .purge_queue(PurgeQueueRequest {
            name: "work".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, 10);
    let (unacked, ready, mut members) = describe(&client).await;
    members.sort();
    assert_eq!(
        (unacked, ready, members),
        (0, 0, vec![("poller".into(), 0), ("streamer".into(), 0)]),
        "the purge settled what the members held"
    );

    let published = std::time::Instant::now();
    publish(&broker, "jobs", 10, 4).await;
    let polled = waiting
        .await
        .unwrap()
        .expect("the waiting Receive")
        .into_inner()
        .deliveries;
    assert!(
        (1..=3).contains(&polled.len()),
        "the waiting Receive gets new messages: {polled:?}"
    );
    // As they come, not when the call's 10 s wait ends.
    assert!(
        published.elapsed() < Duration::from_secs(5),
        "took {:?}",
        published.elapsed()
    );
    let streamed = stream_deliveries(&mut stream, 4 - polled.len(), Duration::from_secs(10)).await;
    let mut new: Vec<String> = polled.iter().chain(&streamed).map(value).collect();
    new.sort();
    assert_eq!(new, ["m-10", "m-11", "m-12", "m-13"]);
    // Acks of purged deliveries are NOT_FOUND, each on its own.
    let codes = ack_codes(&mut client, "work", &held).await;
    assert!(
        codes.iter().all(|&c| c == Code::NotFound as i32),
        "{codes:?}"
    );
}

/// Hunt 10c, finding 4: with priority levels, after retention deleted the log past the
/// low level's position and some of what the high level took ahead, the ready count
/// drifted low with every later high delivery (2 per delivery, down to 0 with low
/// messages still to deliver). Here the high level took 25 high messages (offsets 0 to
/// 48), then retention deletes offsets 0-35: once the retention pass has run the ready
/// count is exact without any member calling (47: the 54 left less the 7 high ones
/// taken at 36-48), and stays exact through every delivery after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_count_stays_exact_after_retention_passed_the_low_level() {
    use tidelog_proto::v1::{AlterTopicConfigRequest, TopicConfigUpdate};
    let broker = TestBroker::start_with(&["--retention-interval", "100ms"]);
    broker
        .create_topic(
            "tide",
            1,
            TopicConfig {
                priority_levels: 2,
                segment_bytes: 4096,
                ..TopicConfig::default()
            },
        )
        .await;
    create_queue(&broker, "tide-q", "tide", QueueConfig::default()).await;
    // Offsets 0-35 an hour old, in a segment of their own (the next batch does not fit
    // beside them), then 36-89 now; the high ones (priority 1) at even offsets.
    let mut publisher = broker.publisher().await;
    let an_hour_ago = now_ms() - 3_600_000;
    for (offsets, timestamp_ms) in [(0..36, Some(an_hour_ago)), (36..90, None)] {
        publisher
            .publish(PublishRequest {
                topic: "tide".into(),
                messages: offsets
                    .map(|offset| Message {
                        value: vec![b'v'; 80].into(),
                        priority: u32::from(offset % 2 == 0),
                        timestamp_ms,
                        ..Default::default()
                    })
                    .collect(),
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    let mut client = queues(&broker).await;
    let receive = |client: &mut QueuesClient<Channel>, max_messages: u32| {
        let mut client = client.clone();
        async move {
            let deliveries = client
                .receive(ReceiveRequest {
                    queue: "tide-q".into(),
                    member: "m".into(),
                    max_messages,
                    max_wait_ms: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .deliveries;
            let codes = ack_codes(&mut client, "tide-q", &deliveries).await;
            assert!(codes.iter().all(|&c| c == Code::Ok as i32), "{codes:?}");
            deliveries
                .iter()
                .map(|d| d.message.as_ref().unwrap().offset)
                .collect::<Vec<u64>>()
        }
    };
    let ready = |client: &mut QueuesClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .describe_queue(DescribeQueueRequest {
                    name: "tide-q".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .queue
                .unwrap()
                .ready
        }
    };
    let took = receive(&mut client, 25).await;
    assert_eq!(took, (0..25).map(|i| 2 * i).collect::<Vec<u64>>());
    assert_eq!(ready(&mut client).await, 65);
    broker
        .admin()
        .await
        .alter_topic_config(AlterTopicConfigRequest {
            name: "tide".into(),
            update: Some(TopicConfigUpdate {
                retention_ms: Some(60_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.describe_topic("tide").await.partitions[0].log_start_offset != 36 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The retention pass wakes the queue, which follows the new log start.
    let mut left = 54 - 7;
    loop {
        let now = ready(&mut client).await;
        if now == left {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready {now}, not {left}, after retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let got = receive(&mut client, 1).await;
        if got.is_empty() {
            break;
        }
        left -= 1;
        assert_eq!(ready(&mut client).await, left, "after delivering {got:?}");
    }
    assert_eq!(left, 0, "every message left was delivered");
}
