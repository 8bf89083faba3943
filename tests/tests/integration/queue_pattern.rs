//! Queues on a topic pattern through the real broker, as a client written from the
//! .proto: a member is served by every matching topic, picks up a topic created while
//! it consumes (within seconds, from the topic's beginning), keeps consuming when a
//! topic is deleted; settlements name their topic; status, history listing, dead
//! letters and redrive per topic; bad input; and a kill -9 that loses no ack and
//! redelivers what was unacked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request as ConsumeRequest, Settle};
use tidelog_proto::v1::queue_consume_response::Event;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, Term};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::{
    AckLevel, CreateQueueRequest, DeleteTopicRequest, DescribeQueueRequest,
    GetDeliveryStatusRequest, ListDeliveriesRequest, Message, MessagePosition, PublishRequest,
    QueueConfig, QueueConsumeRequest, QueueConsumeResponse, QueueDeliveryState, QueueDescription,
    RedriveQueueRequest, Settlement, SettlementOutcome, StartPosition, TopicConfig,
    get_delivery_status_request, get_delivery_status_response,
};
use tidelog_tests::TestBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::Streaming;

fn earliest() -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::Earliest(Earliest {})),
    })
}

/// Publishes `count` messages "<topic>/<i>" (sizes from 0 to 3 KB) round robin.
async fn publish(broker: &TestBroker, topic: &str, count: usize) {
    let messages = (0..count)
        .map(|i| {
            let mut value = format!("{topic}/{i}").into_bytes();
            value.resize(value.len() + (i * 997) % 3000, b'.');
            Message {
                value: value.into(),
                ..Default::default()
            }
        })
        .collect();
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
}

fn name_of(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.trim_end_matches('.').to_string()
}

async fn describe(broker: &TestBroker, name: &str) -> QueueDescription {
    QueuesClient::new(broker.channel().await)
        .describe_queue(DescribeQueueRequest { name: name.into() })
        .await
        .expect("describe")
        .into_inner()
        .queue
        .unwrap()
}

async fn create(
    broker: &TestBroker,
    name: &str,
    pattern: &str,
    config: QueueConfig,
) -> QueueDescription {
    QueuesClient::new(broker.channel().await)
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic_pattern: pattern.into(),
            start: earliest(),
            config: Some(config),
            ..Default::default()
        })
        .await
        .expect("create the pattern queue")
        .into_inner()
        .queue
        .unwrap()
}

/// A Consume stream member.
struct Member {
    tx: mpsc::Sender<QueueConsumeRequest>,
    stream: Streaming<QueueConsumeResponse>,
    next_request: u64,
}

impl Member {
    async fn open(broker: &TestBroker, queue: &str, credit: u32) -> Member {
        let (tx, rx) = mpsc::channel(64);
        tx.send(QueueConsumeRequest {
            request: Some(ConsumeRequest::Open(Open {
                queue: queue.into(),
                client_id: "pattern-test".into(),
                credit,
            })),
        })
        .await
        .unwrap();
        let mut stream = QueuesClient::new(broker.channel().await)
            .consume(ReceiverStream::new(rx))
            .await
            .expect("consume")
            .into_inner();
        match stream.message().await.unwrap().and_then(|e| e.event) {
            Some(Event::Opened(_)) => {}
            other => panic!("Opened first, not {other:?}"),
        }
        Member {
            tx,
            stream,
            next_request: 0,
        }
    }

    /// Deliveries until `want` arrived or `wait` passed: (topic, partition, offset,
    /// name, attempt).
    async fn deliveries(
        &mut self,
        want: usize,
        wait: Duration,
    ) -> Vec<(String, u32, u64, String, u32)> {
        let mut got = Vec::new();
        let until = tokio::time::Instant::now() + wait;
        while got.len() < want {
            let event = match tokio::time::timeout_at(until, self.stream.message()).await {
                Ok(event) => event.expect("the stream stays up").expect("not ended"),
                Err(_) => break,
            };
            if let Some(Event::Deliveries(batch)) = event.event {
                for d in batch.deliveries {
                    let m = d.message.unwrap();
                    got.push((m.topic, m.partition, m.offset, name_of(&m.value), d.attempt));
                }
            }
        }
        got
    }

    /// Sends settlements and returns their outcome codes.
    async fn settle(&mut self, settlements: Vec<Settlement>) -> Vec<i32> {
        let outcomes = self.settle_outcomes(settlements).await;
        outcomes.iter().map(|o| o.code).collect()
    }

    /// Sends settlements and returns their outcomes.
    async fn settle_outcomes(&mut self, settlements: Vec<Settlement>) -> Vec<SettlementOutcome> {
        self.next_request += 1;
        let request_id = self.next_request;
        self.tx
            .send(QueueConsumeRequest {
                request: Some(ConsumeRequest::Settle(Settle {
                    request_id,
                    settlements,
                })),
            })
            .await
            .unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), self.stream.message())
                .await
                .expect("an answer in time")
                .expect("the stream stays up")
                .expect("not ended");
            if let Some(Event::Settled(settled)) = event.event {
                assert_eq!(settled.request_id, request_id);
                return settled.outcomes;
            }
        }
    }

    async fn credit(&self, messages: u32) {
        self.tx
            .send(QueueConsumeRequest {
                request: Some(ConsumeRequest::Credit(Credit { messages })),
            })
            .await
            .unwrap();
    }
}

fn ack(topic: &str, partition: u32, offset: u64) -> Settlement {
    Settlement {
        topic: topic.into(),
        partition,
        offset,
        action: Some(Action::Ack(Ack {})),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pattern_queue_takes_new_topics_drops_deleted_ones_and_settles_per_topic() {
    let broker = TestBroker::start();
    broker
        .create_topic("orders.eu", 2, TopicConfig::default())
        .await;
    broker
        .create_topic("payments", 1, TopicConfig::default())
        .await;
    publish(&broker, "orders.eu", 10).await;
    publish(&broker, "payments", 5).await;
    let created = create(
        &broker,
        "all-orders",
        r"orders\..*",
        QueueConfig {
            max_deliveries: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.topic, "");
    assert_eq!(created.topic_pattern, r"orders\..*");
    assert_eq!(created.topics, vec!["orders.eu"]);
    assert_eq!(created.ready, 10);
    assert_eq!(
        created.config.unwrap().dead_letter_topic.as_deref(),
        Some("all-orders.dlq"),
        "one dead-letter topic for every topic, named after the queue"
    );

    let mut member = Member::open(&broker, "all-orders", 1000).await;
    let first = member.deliveries(10, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 10);
    assert!(
        first.iter().all(|d| d.0 == "orders.eu" && d.4 == 1),
        "{first:?}"
    );

    // Settlements name their topic: without one, or with a topic the queue has not
    // taken, each gets its own refusal, and the others go through.
    let (t, p, o, _, _) = first[0].clone();
    let codes = member
        .settle(vec![
            Settlement {
                topic: String::new(),
                ..ack(&t, p, o)
            },
            ack("payments", p, o),
            ack(&t, p, o),
        ])
        .await;
    assert_eq!(
        codes,
        vec![Code::InvalidArgument as i32, Code::NotFound as i32, 0]
    );
    let rest: Vec<Settlement> = first[1..]
        .iter()
        .map(|(t, p, o, _, _)| ack(t, *p, *o))
        .collect();
    assert!(member.settle(rest).await.iter().all(|c| *c == 0));
    // Settled twice: NOT_FOUND in the queue's own name, not its topic's inner queue's.
    let again = member.settle_outcomes(vec![ack(&t, p, o)]).await;
    assert_eq!(again[0].code, Code::NotFound as i32, "{again:?}");
    assert!(
        again[0].message.contains("queue \"all-orders\"") && !again[0].message.contains("__pq"),
        "{again:?}"
    );

    // A topic created while the member consumes: taken within a second or two, from
    // its beginning, without reconnecting.
    let started = Instant::now();
    broker
        .create_topic("orders.us", 3, TopicConfig::default())
        .await;
    publish(&broker, "orders.us", 7).await;
    let second = member.deliveries(7, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(
        second.iter().map(|d| d.3.clone()).collect::<BTreeSet<_>>(),
        (0..7)
            .map(|i| format!("orders.us/{i}"))
            .collect::<BTreeSet<_>>()
    );
    assert!(second.iter().all(|d| d.0 == "orders.us"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        describe(&broker, "all-orders").await.topics,
        vec!["orders.eu", "orders.us"]
    );

    // A term: the dead letter names the queue and the topic; redrive puts it back in
    // that topic, and the queue delivers it again.
    let (t, p, o, n, _) = second[0].clone();
    let codes = member
        .settle(vec![Settlement {
            action: Some(Action::Term(Term {
                reason: "bad".into(),
            })),
            ..ack(&t, p, o)
        }])
        .await;
    assert_eq!(codes, vec![0]);
    let rest: Vec<Settlement> = second[1..]
        .iter()
        .map(|(t, p, o, _, _)| ack(t, *p, *o))
        .collect();
    assert!(member.settle(rest).await.iter().all(|c| *c == 0));
    let redriven = QueuesClient::new(broker.channel().await)
        .redrive_queue(RedriveQueueRequest {
            name: "all-orders".into(),
            max_messages: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((redriven.moved, redriven.remaining), (1, 0));
    member.credit(100).await;
    let again = member.deliveries(1, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].0.as_str(), again[0].3.as_str()),
        ("orders.us", n.as_str())
    );
    let (t, p, o, _, _) = again[0].clone();
    assert_eq!(member.settle(vec![ack(&t, p, o)]).await, vec![0]);

    // Status and history are per topic.
    let status = MessagesClient::new(broker.channel().await)
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: "orders.eu".into(),
            message: Some(get_delivery_status_request::Message::Position(
                MessagePosition {
                    partition: first[0].1,
                    offset: first[0].2,
                },
            )),
            consumer: Some(get_delivery_status_request::Consumer::Queue(
                "all-orders".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    match status.status {
        Some(get_delivery_status_response::Status::Queue(q)) => {
            assert_eq!(q.queue, "all-orders");
            assert_eq!(q.state, QueueDeliveryState::Acked as i32);
        }
        other => panic!("a queue status, not {other:?}"),
    }
    let mut queues = QueuesClient::new(broker.channel().await);
    let without_topic = queues
        .list_deliveries(ListDeliveriesRequest {
            queue: "all-orders".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(without_topic.code(), Code::InvalidArgument);
    assert!(
        without_topic.message().contains("topic"),
        "{without_topic:?}"
    );
    let listed = queues
        .list_deliveries(ListDeliveriesRequest {
            queue: "all-orders".into(),
            topic: "orders.us".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.deliveries.len() >= 7 * 2,
        "{}",
        listed.deliveries.len()
    );

    // A deleted topic drops out; the member keeps consuming the others.
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest {
            name: "orders.us".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        describe(&broker, "all-orders").await.topics,
        vec!["orders.eu"]
    );
    publish(&broker, "orders.eu", 3).await;
    let third = member.deliveries(3, Duration::from_secs(10)).await;
    assert_eq!(third.len(), 3, "{third:?}");
    assert!(third.iter().all(|d| d.0 == "orders.eu"));
}

#[tokio::test]
async fn bad_pattern_queues_are_refused_and_name_what_to_fix() {
    let broker = TestBroker::start();
    let mut queues = QueuesClient::new(broker.channel().await);
    for (request, says) in [
        (
            CreateQueueRequest {
                name: "q".into(),
                topic: "t".into(),
                topic_pattern: "t.*".into(),
                ..Default::default()
            },
            "exactly one of topic and topic_pattern",
        ),
        (
            CreateQueueRequest {
                name: "q".into(),
                topic_pattern: "orders(".into(),
                ..Default::default()
            },
            "topic_pattern",
        ),
        (
            CreateQueueRequest {
                name: "q".into(),
                topic_pattern: "(a{1000}){1000}".into(),
                ..Default::default()
            },
            "too complex",
        ),
        (
            CreateQueueRequest {
                name: "__pq.q.1".into(),
                topic_pattern: "t.*".into(),
                ..Default::default()
            },
            "__pq.",
        ),
        (
            CreateQueueRequest {
                name: "q".repeat(201),
                topic_pattern: "t.*".into(),
                ..Default::default()
            },
            "at most 200",
        ),
    ] {
        let error = queues.create_queue(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(says), "{says}: {error:?}");
    }
    // A pattern that matches nothing is allowed, and says so.
    let created = create(&broker, "later", "nothing-yet.*", QueueConfig::default()).await;
    assert!(created.topics.is_empty());
    // A per-topic queue is not a queue a client can name.
    broker
        .create_topic("nothing-yet.a", 1, TopicConfig::default())
        .await;
    assert_eq!(
        describe(&broker, "later").await.topics,
        vec!["nothing-yet.a"]
    );
    let hidden = queues
        .describe_queue(DescribeQueueRequest {
            name: "__pq.later.0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
}

#[tokio::test]
async fn a_kill9_loses_no_ack_of_a_pattern_queue_and_redelivers_what_was_unacked() {
    let mut broker = TestBroker::start();
    for topic in ["jobs.a", "jobs.b"] {
        broker.create_topic(topic, 2, TopicConfig::default()).await;
        publish(&broker, topic, 200).await;
    }
    create(
        &broker,
        "work",
        r"jobs\..*",
        QueueConfig {
            ack_deadline_ms: Some(1_000),
            backoff_initial_ms: Some(0),
            backoff_max_ms: Some(0),
            max_deliveries: Some(0),
            ..Default::default()
        },
    )
    .await;
    let mut member = Member::open(&broker, "work", 150).await;
    let taken = member.deliveries(150, Duration::from_secs(10)).await;
    assert_eq!(taken.len(), 150);
    let acked: BTreeSet<String> = taken[..100].iter().map(|d| d.3.clone()).collect();
    let settlements = taken[..100]
        .iter()
        .map(|(t, p, o, _, _)| ack(t, *p, *o))
        .collect();
    assert!(member.settle(settlements).await.iter().all(|c| *c == 0));
    let unacked: BTreeSet<String> = taken[100..].iter().map(|d| d.3.clone()).collect();
    broker.kill9();
    broker.restart();

    let mut member = Member::open(&broker, "work", 1000).await;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(30);
    while seen.len() < 300 && Instant::now() < until {
        let got = member
            .deliveries(300 - seen.len(), Duration::from_secs(5))
            .await;
        let settlements: Vec<Settlement> =
            got.iter().map(|(t, p, o, _, _)| ack(t, *p, *o)).collect();
        if !settlements.is_empty() {
            assert!(member.settle(settlements).await.iter().all(|c| *c == 0));
            member.credit(got.len() as u32).await;
        }
        for (_, _, _, name, attempt) in got {
            assert!(!acked.contains(&name), "{name} was acked before the kill");
            assert!(
                seen.insert(name, attempt).is_none(),
                "delivered twice after its ack"
            );
        }
    }
    assert_eq!(seen.len(), 300, "every message not acked before the kill");
    for name in &unacked {
        assert_eq!(seen.get(name), Some(&2), "{name}: its second delivery");
    }
    let queue = describe(&broker, "work").await;
    assert_eq!((queue.ready, queue.unacked), (0, 0));
    assert_eq!(queue.topics, vec!["jobs.a", "jobs.b"]);
}

/// A settlement naming a topic deleted a moment before (the queue has not dropped the
/// topic yet) is NOT_FOUND on its own, in the queue's terms (never its internal
/// `__pq.` names): the other topic's settlements in the same request go through, unary
/// or on a Consume stream, and the stream stays up. (The unary Settle failed as a
/// whole with NOT_FOUND naming `__pq.<queue>.<n>`, the stream ended with it.) Several
/// rounds, each settling right after the delete, where the race is nearly always lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_of_a_topic_just_deleted_is_not_found_alone_and_spares_the_rest() {
    let broker = TestBroker::start();
    create(&broker, "churn", r"churn\..*", QueueConfig::default()).await;
    broker
        .create_topic("churn.stable", 1, TopicConfig::default())
        .await;
    let mut member = Member::open(&broker, "churn", 1000).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let check = |what: &str, topic: &str, gone: &str, code: i32, message: &str| {
        assert!(!message.contains("__pq"), "{what}: {message:?}");
        if topic == gone {
            assert_eq!(code, Code::NotFound as i32, "{what}: {message:?}");
            assert!(message.contains(gone), "{what}: {message:?}");
        } else {
            assert_eq!(code, 0, "{what}: {message:?}");
        }
    };
    for round in 0..5 {
        let gone = format!("churn.gone{round}");
        broker.create_topic(&gone, 1, TopicConfig::default()).await;
        publish(&broker, &gone, 2).await;
        publish(&broker, "churn.stable", 2).await;
        let got = member.deliveries(4, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 4, "round {round}: {got:?}");
        broker
            .admin()
            .await
            .delete_topic(DeleteTopicRequest { name: gone.clone() })
            .await
            .unwrap();
        // Of each topic, the first settled by a unary Settle, the second on the
        // stream.
        let mut first = BTreeMap::new();
        let mut second = Vec::new();
        for (topic, partition, offset, _, _) in &got {
            if first.contains_key(topic) {
                second.push((topic.clone(), ack(topic, *partition, *offset)));
            } else {
                first.insert(topic.clone(), ack(topic, *partition, *offset));
            }
        }
        let (topics, settlements): (Vec<String>, Vec<Settlement>) = first.into_iter().unzip();
        let outcomes = queues
            .settle(tidelog_proto::v1::SettleRequest {
                queue: "churn".into(),
                settlements,
            })
            .await
            .unwrap_or_else(|status| panic!("round {round}: the Settle failed: {status:?}"))
            .into_inner()
            .outcomes;
        assert_eq!(outcomes.len(), 2);
        for (topic, outcome) in topics.iter().zip(&outcomes) {
            check("unary", topic, &gone, outcome.code, &outcome.message);
        }
        let (topics, settlements): (Vec<String>, Vec<Settlement>) = second.into_iter().unzip();
        let outcomes = member.settle_outcomes(settlements).await;
        assert_eq!(outcomes.len(), 2);
        for (topic, outcome) in topics.iter().zip(&outcomes) {
            check("stream", topic, &gone, outcome.code, &outcome.message);
        }
        member.credit(4).await;
    }
    // The stream is still up and delivers.
    publish(&broker, "churn.stable", 1).await;
    let last = member.deliveries(1, Duration::from_secs(10)).await;
    assert_eq!(last.len(), 1);
}
