//! Delivery status and history through the real broker (issue 14 item 4): one message
//! for every queue outcome (ack, nack, deadline passed, term, max deliveries -> dead
//! letter, acked on a second attempt), checked by GetDeliveryStatus,
//! GetDeliveryHistory and ListDeliveries before and after a restart and a kill -9; a
//! group's view; NOT_FOUND naming the topic and the id; bad cursors; the CLI commands
//! in both forms.

use std::time::{Duration, Instant};

use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, Nack, Term};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::{
    AckLevel, AlterQueueRequest, CommitOffsetsRequest, CreateQueueRequest, DeliveryFilter,
    DeliveryOutcome, GetDeliveryHistoryRequest, GetDeliveryHistoryResponse,
    GetDeliveryStatusRequest, Header, ListDeliveriesRequest, ListDeliveriesResponse, Message,
    MessagePosition, PublishRequest, QueueConfig, QueueDeliveryState, QueueDeliveryStatus,
    ReceiveRequest, SettleRequest, Settlement, StartPosition, TopicConfig, TopicPartitionOffset,
    get_delivery_history_request, get_delivery_status_request, get_delivery_status_response,
};
use tidelog_tests::TestBroker;
use tonic::Code;

use crate::cli::cli;

const TOPIC: &str = "jobs";
const QUEUE: &str = "work";

fn id(n: u64) -> String {
    format!("job-{n}")
}

async fn create_queue(broker: &TestBroker, name: &str) {
    QueuesClient::new(broker.channel().await)
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic: TOPIC.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            config: Some(QueueConfig {
                ack_deadline_ms: Some(300),
                max_deliveries: Some(2),
                backoff_initial_ms: Some(0),
                backoff_max_ms: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create queue");
}

async fn status(broker: &TestBroker, n: u64) -> Result<QueueDeliveryStatus, tonic::Status> {
    let response = MessagesClient::new(broker.channel().await)
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Id(id(n).into())),
            consumer: Some(get_delivery_status_request::Consumer::Queue(QUEUE.into())),
        })
        .await?
        .into_inner();
    assert_eq!(response.offset, n, "job-{n} is at offset {n}");
    match response.status {
        Some(get_delivery_status_response::Status::Queue(status)) => Ok(status),
        other => panic!("a queue status, not {other:?}"),
    }
}

async fn history(broker: &TestBroker, n: u64) -> GetDeliveryHistoryResponse {
    MessagesClient::new(broker.channel().await)
        .get_delivery_history(GetDeliveryHistoryRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_history_request::Message::Position(
                MessagePosition {
                    partition: 0,
                    offset: n,
                },
            )),
            queue: QUEUE.into(),
        })
        .await
        .expect("history")
        .into_inner()
}

async fn list(
    broker: &TestBroker,
    queue: &str,
    filter: DeliveryFilter,
    header: Option<(&str, &str)>,
    limit: u32,
    cursor: &str,
) -> Result<ListDeliveriesResponse, tonic::Status> {
    QueuesClient::new(broker.channel().await)
        .list_deliveries(ListDeliveriesRequest {
            queue: queue.into(),
            filter: filter as i32,
            header: header.map(|(k, v)| Header {
                key: k.into(),
                value: v.as_bytes().to_vec().into(),
            }),
            limit,
            cursor: cursor.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn state(status: &QueueDeliveryStatus) -> QueueDeliveryState {
    QueueDeliveryState::try_from(status.state).unwrap()
}

fn outcome(value: i32) -> DeliveryOutcome {
    DeliveryOutcome::try_from(value).unwrap()
}

fn timed_out(value: i32) -> bool {
    matches!(
        outcome(value),
        DeliveryOutcome::DeadlinePassed | DeliveryOutcome::MemberLeft
    )
}

/// Everything the test knows, checked again after each restart.
async fn check(broker: &TestBroker, when: &str) {
    let s0 = status(broker, 0).await.unwrap();
    assert_eq!(
        (state(&s0), s0.attempts),
        (QueueDeliveryState::Acked, 1),
        "{when}"
    );
    let s1 = status(broker, 1).await.unwrap();
    assert_eq!(state(&s1), QueueDeliveryState::Waiting, "{when}");
    assert_eq!(s1.reason, "busy", "{when}");
    let s2 = status(broker, 2).await.unwrap();
    assert_eq!(state(&s2), QueueDeliveryState::DeadLettered, "{when}");
    assert!(
        s2.reason.contains("after 2 deliveries"),
        "{when}: {}",
        s2.reason
    );
    let s3 = status(broker, 3).await.unwrap();
    assert_eq!(state(&s3), QueueDeliveryState::DeadLettered, "{when}");
    assert_eq!(s3.reason, "terminated: bad input", "{when}");
    let s4 = status(broker, 4).await.unwrap();
    assert_eq!(
        (state(&s4), s4.attempts),
        (QueueDeliveryState::Acked, 2),
        "{when}"
    );
    let s5 = status(broker, 5).await.unwrap();
    assert_eq!(state(&s5), QueueDeliveryState::Ready, "{when}");

    let h2 = history(broker, 2).await;
    assert_eq!(h2.attempts.len(), 2, "{when}: {h2:?}");
    assert_eq!(h2.attempts[0].member, "receive:a", "{when}");
    assert!(timed_out(h2.attempts[0].outcome), "{when}: {h2:?}");
    assert_eq!(h2.attempts[1].member, "receive:b", "{when}");
    assert!(timed_out(h2.attempts[1].outcome), "{when}: {h2:?}");
    assert!(h2.attempts[1].dead_lettered_at_ms.is_some(), "{when}");
    assert_eq!(h2.id, id(2).as_bytes(), "{when}");
    assert_eq!(
        (h2.history_attempts, h2.history_retention_ms),
        (10, 604_800_000)
    );
    let h3 = history(broker, 3).await;
    assert_eq!(h3.attempts.len(), 1, "{when}");
    assert_eq!(outcome(h3.attempts[0].outcome), DeliveryOutcome::Terminated);
    assert_eq!(h3.attempts[0].reason, "bad input", "{when}");
    let h4 = history(broker, 4).await;
    let outcomes: Vec<_> = h4
        .attempts
        .iter()
        .map(|a| (a.attempt, a.member.clone()))
        .collect();
    // Unary Receive leases to "receive:<member>".
    assert_eq!(
        outcomes,
        vec![(1, "receive:a".into()), (2, "receive:b".into())],
        "{when}"
    );
    assert_eq!(
        outcome(h4.attempts[1].outcome),
        DeliveryOutcome::Acked,
        "{when}"
    );
    let h1 = history(broker, 1).await;
    assert_eq!(
        outcome(h1.attempts[0].outcome),
        DeliveryOutcome::Nacked,
        "{when}"
    );
    assert_eq!(h1.attempts[0].reason, "busy", "{when}");

    let dead = list(broker, QUEUE, DeliveryFilter::DeadLettered, None, 0, "")
        .await
        .unwrap();
    let offsets: Vec<u64> = dead.deliveries.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, vec![2, 3], "{when}: newest first");
    assert_eq!(dead.deliveries[0].id, id(2).as_bytes(), "{when}");
    assert!(dead.next_cursor.is_empty(), "{when}");
    // Failed attempts of the messages with tenant=acme (the even ones).
    let failed = list(
        broker,
        QUEUE,
        DeliveryFilter::Failed,
        Some(("tenant", "acme")),
        0,
        "",
    )
    .await
    .unwrap();
    assert!(!failed.deliveries.is_empty(), "{when}");
    assert!(
        failed.deliveries.iter().all(|d| d.offset % 2 == 0),
        "{when}"
    );
    // Pages of 2 list what one page of 100 does.
    let all = list(broker, QUEUE, DeliveryFilter::All, None, 100, "")
        .await
        .unwrap()
        .deliveries;
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list(broker, QUEUE, DeliveryFilter::All, None, 2, &cursor)
            .await
            .unwrap();
        assert!(page.deliveries.len() <= 2);
        paged.extend(page.deliveries);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(paged, all, "{when}");
}

/// Polls until `n` is in `want`, at most 10 s.
async fn wait_for(broker: &TestBroker, n: u64, want: QueueDeliveryState) {
    let start = Instant::now();
    loop {
        let now = status(broker, n).await.unwrap();
        if state(&now) == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job-{n} stays {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settlement(n: u64, attempt: u32, action: Action) -> Settlement {
    Settlement {
        partition: 0,
        offset: n,
        attempt,
        action: Some(action),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_outcome_has_its_status_and_history_across_a_restart_and_a_kill() {
    let mut broker = TestBroker::start();
    broker.create_topic(TOPIC, 1, TopicConfig::default()).await;
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages: (0..6)
                .map(|n| Message {
                    id: id(n).into(),
                    value: format!("value {n}").into_bytes().into(),
                    headers: vec![Header {
                        key: "tenant".into(),
                        value: if n % 2 == 0 { "acme" } else { "other" }.into(),
                    }],
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    create_queue(&broker, QUEUE).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let receive = |member: &str, max: u32| ReceiveRequest {
        queue: QUEUE.into(),
        member: member.into(),
        max_messages: max,
        max_wait_ms: 2_000,
    };
    let first = queues
        .receive(receive("a", 5))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(first.len(), 5);
    let s0 = status(&broker, 0).await.unwrap();
    assert_eq!(state(&s0), QueueDeliveryState::Unacked);
    assert_eq!((s0.member.as_str(), s0.attempts), ("receive:a", 1));
    let outcomes = queues
        .settle(SettleRequest {
            queue: QUEUE.into(),
            settlements: vec![
                settlement(0, 1, Action::Ack(Ack {})),
                settlement(
                    1,
                    1,
                    Action::Nack(Nack {
                        delay_ms: Some(3_600_000),
                        reason: "busy".into(),
                    }),
                ),
                settlement(
                    3,
                    1,
                    Action::Term(Term {
                        reason: "bad input".into(),
                    }),
                ),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert!(
        outcomes.iter().all(|o| o.code == Code::Ok as i32),
        "{outcomes:?}"
    );
    // 2 and 4 time out, and come back to b as attempt 2.
    wait_for(&broker, 2, QueueDeliveryState::Waiting).await;
    wait_for(&broker, 4, QueueDeliveryState::Waiting).await;
    let second = queues
        .receive(receive("b", 2))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let mut offsets: Vec<(u64, u32)> = second
        .iter()
        .map(|d| (d.message.as_ref().unwrap().offset, d.attempt))
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, vec![(2, 2), (4, 2)]);
    queues
        .settle(SettleRequest {
            queue: QUEUE.into(),
            settlements: vec![settlement(4, 2, Action::Ack(Ack {}))],
        })
        .await
        .unwrap();
    // 2 times out on its last delivery: dead-lettered.
    wait_for(&broker, 2, QueueDeliveryState::DeadLettered).await;
    broker
        .groups()
        .await
        .commit_offsets(CommitOffsetsRequest {
            group_id: "audit".into(),
            offsets: vec![TopicPartitionOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset: 2,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("commit");
    check(&broker, "before a restart").await;

    // Errors: an unknown id names the topic and the id; a position past the end; a
    // queue of another topic; bad cursors.
    let mut messages = MessagesClient::new(broker.channel().await);
    let missing = messages
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Id("job-99".into())),
            consumer: Some(get_delivery_status_request::Consumer::Queue(QUEUE.into())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("job-99") && missing.message().contains("\"jobs\""),
        "{missing:?}"
    );
    let past_end = messages
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Position(
                MessagePosition {
                    partition: 0,
                    offset: 50,
                },
            )),
            consumer: Some(get_delivery_status_request::Consumer::Group("audit".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(past_end.code(), Code::NotFound);
    assert!(
        past_end.message().contains("partition 0 offset 50"),
        "{past_end:?}"
    );
    let no_consumer = messages
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Id(id(0).into())),
            consumer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(no_consumer.code(), Code::InvalidArgument);
    let group = messages
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: TOPIC.into(),
            message: Some(get_delivery_status_request::Message::Id(id(1).into())),
            consumer: Some(get_delivery_status_request::Consumer::Group("audit".into())),
        })
        .await
        .unwrap()
        .into_inner();
    match group.status {
        Some(get_delivery_status_response::Status::Group(g)) => {
            assert_eq!((g.committed_offset, g.committed_past), (Some(2), true));
        }
        other => panic!("{other:?}"),
    }
    create_queue(&broker, "other").await;
    let mut other = QueuesClient::new(broker.channel().await);
    other
        .receive(ReceiveRequest {
            queue: "other".into(),
            member: "x".into(),
            max_messages: 3,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap();
    let other_cursor = list(&broker, "other", DeliveryFilter::All, None, 1, "")
        .await
        .unwrap()
        .next_cursor;
    assert!(!other_cursor.is_empty());
    for (cursor, says) in [
        ("garbage", "cut short"),
        (&other_cursor[..other_cursor.len() - 1], "cut short"),
        (other_cursor.as_str(), "another queue"),
    ] {
        let refused = list(&broker, QUEUE, DeliveryFilter::All, None, 0, cursor)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{cursor}");
        assert!(refused.message().contains(says), "{cursor}: {refused:?}");
    }
    let over = list(&broker, QUEUE, DeliveryFilter::All, None, 1001, "")
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument);
    let metrics = broker.metrics_text();
    for series in [
        "tidelog_delivery_lookups_total{call=\"list\",result=\"invalid_argument\"} 4",
        "tidelog_delivery_lookups_total{call=\"status\",result=\"not_found\"} 2",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }

    // The CLI, both forms.
    let run = cli(
        &broker,
        &["message", "status", TOPIC, &id(2), "--queue", QUEUE],
    )
    .ok("message status");
    assert!(run.stdout.contains("dead-lettered"), "{}", run.stdout);
    let run = cli(
        &broker,
        &[
            "message",
            "status",
            TOPIC,
            "--partition",
            "0",
            "--offset",
            "1",
            "--group",
            "audit",
            "--json",
        ],
    )
    .ok("message status --group");
    assert_eq!(run.json()["group"]["committed_past"], true);
    let run = cli(
        &broker,
        &[
            "message",
            "history",
            TOPIC,
            &id(4),
            "--queue",
            QUEUE,
            "--json",
        ],
    )
    .ok("message history");
    let json = run.json();
    assert_eq!(json["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(json["attempts"][1]["outcome"], "acked");
    assert_eq!(json["status"]["state"], "acked");
    let run = cli(
        &broker,
        &["message", "history", TOPIC, &id(3), "--queue", QUEUE],
    )
    .ok("message history");
    assert!(
        run.stdout.contains("terminated") && run.stdout.contains("bad input"),
        "{}",
        run.stdout
    );
    let run = cli(
        &broker,
        &[
            "queue",
            "deliveries",
            QUEUE,
            "--state",
            "dead-lettered",
            "--since",
            "1h",
            "--json",
        ],
    )
    .ok("queue deliveries");
    let json = run.json();
    let listed: Vec<u64> = json["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![2, 3]);
    let run = cli(&broker, &["queue", "deliveries", QUEUE, "--limit", "1"]).ok("queue deliveries");
    assert!(
        run.stdout.contains("next page: --cursor "),
        "{}",
        run.stdout
    );
    let run = cli(
        &broker,
        &["queue", "deliveries", QUEUE, "--cursor", "garbage"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--cursor"), "{}", run.stderr);
    let run = cli(
        &broker,
        &[
            "message",
            "status",
            TOPIC,
            "--partition",
            "0",
            "--offset",
            "50",
            "--queue",
            QUEUE,
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("offsets 0-5"),
        "the CLI's range notation: {}",
        run.stderr
    );
    let run = cli(
        &broker,
        &["message", "status", TOPIC, "job-99", "--queue", QUEUE],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("job-99"), "{}", run.stderr);
    drop((messages, queues, other));

    broker.restart();
    check(&broker, "after a restart").await;
    broker.kill9();
    broker.restart();
    check(&broker, "after a kill -9").await;

    // The bounds are queue settings: one attempt per message shows only the newest.
    cli(
        &broker,
        &["queue", "alter", QUEUE, "--history-attempts", "1"],
    )
    .ok("queue alter");
    let h2 = history(&broker, 2).await;
    assert_eq!(h2.history_attempts, 1);
    let attempts: Vec<u32> = h2.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, vec![2]);
    let described = cli(&broker, &["queue", "describe", QUEUE, "--json"]).ok("queue describe");
    assert_eq!(described.json()["config"]["history_attempts"], 1);
    let refused = cli(
        &broker,
        &["queue", "alter", QUEUE, "--history-retention", "91d"],
    );
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("90d"), "{}", refused.stderr);
}

/// Queue `work`'s history files (their names), oldest first.
fn history_files(broker: &TestBroker) -> Vec<String> {
    let dir = broker.data_dir().join("state/history").join(QUEUE);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Receives the queue's next message (offset `n`) as member `m` and acks it.
async fn receive_and_ack(broker: &TestBroker, n: u64) {
    let mut queues = QueuesClient::new(broker.channel().await);
    let deliveries = queues
        .receive(ReceiveRequest {
            queue: QUEUE.into(),
            member: "m".into(),
            max_messages: 1,
            max_wait_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].message.as_ref().unwrap().offset, n);
    let outcomes = queues
        .settle(SettleRequest {
            queue: QUEUE.into(),
            settlements: vec![settlement(n, 1, Action::Ack(Ack {}))],
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(outcomes[0].code, Code::Ok as i32, "{outcomes:?}");
}

/// An idle queue's delivery history past its retention is deleted by the broker's
/// retention pass, with no further delivery or settlement (it went only with the
/// queue's next one, so an idle queue kept it for ever): here after AlterQueue lowers
/// the retention to 1 s. Its messages' history then says what the README says of
/// history past the retention: no attempts, status SETTLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queues_expired_history_is_deleted_by_the_retention_pass() {
    let mut broker = TestBroker::start_with(&["--retention-interval", "100ms"]);
    broker.create_topic(TOPIC, 1, TopicConfig::default()).await;
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages: (0..2)
                .map(|n| Message {
                    id: id(n).into(),
                    value: format!("value {n}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    create_queue(&broker, QUEUE).await;
    receive_and_ack(&broker, 0).await;
    // A history file holds 16 MiB or an hour: rather than either, the broker is
    // stopped and its one file renamed as if begun two hours ago, so the next events
    // begin a second file.
    broker.stop();
    let [first] = &history_files(&broker)[..] else {
        panic!("one history file: {:?}", history_files(&broker));
    };
    let began: i64 = first.strip_suffix(".history").unwrap().parse().unwrap();
    let dir = broker.data_dir().join("state/history").join(QUEUE);
    let older = format!("{:020}.history", began - 2 * 3_600_000);
    std::fs::rename(dir.join(first), dir.join(&older)).unwrap();
    broker.restart();
    receive_and_ack(&broker, 1).await;
    let files = history_files(&broker);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0], older);
    let before = history(&broker, 0).await;
    assert_eq!(before.attempts.len(), 1, "{before:?}");
    assert_eq!(outcome(before.attempts[0].outcome), DeliveryOutcome::Acked);

    // The queue stays idle from here on.
    QueuesClient::new(broker.channel().await)
        .alter_queue(AlterQueueRequest {
            name: QUEUE.into(),
            config: Some(QueueConfig {
                history_retention_ms: Some(1_000),
                ..Default::default()
            }),
        })
        .await
        .expect("alter queue");
    // Every event of the first file is older than 1 s once the second file began 1 s
    // ago; the retention pass after that (every 100 ms) deletes the first file.
    let start = Instant::now();
    while history_files(&broker).len() > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the history file past the retention is still there 10 s after the alter, the queue idle: {:?}",
            history_files(&broker)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(history_files(&broker), &files[1..], "the newest file stays");
    let after = history(&broker, 0).await;
    assert!(after.attempts.is_empty(), "{after:?}");
    assert_eq!(
        state(after.status.as_ref().unwrap()),
        QueueDeliveryState::Settled,
        "no history says how it was settled: {after:?}"
    );
    assert_eq!(after.history_retention_ms, 1_000);
}
