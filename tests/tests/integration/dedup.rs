//! Message ids through the real broker, as a client written from the .proto sees them:
//! a producer that retries every publish (some twice, some after a kill -9) ends with
//! each id stored once; concurrent duplicates on separate connections store one copy
//! and all name it; a duplicate after the window is stored again; broker-assigned ids
//! come back in the ack and with the message; the CLI's `--id`, `--id-separator`,
//! `--dedup-window` and `--assign-ids`; the duplicates metric.

use std::collections::HashMap;

use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    AckLevel, CreateTopicRequest, FetchRequest, Message, MessageAck, PublishRequest,
    PublishStreamRequest, TopicConfig, publish_stream_response::Outcome,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tonic::transport::Channel;

fn message(id: &str, value: &str) -> Message {
    Message {
        id: id.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn publish(
    client: &mut PublisherClient<Channel>,
    topic: &str,
    messages: Vec<Message>,
) -> Vec<MessageAck> {
    client
        .publish(PublishRequest {
            topic: topic.into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish")
        .into_inner()
        .acks
}

/// Every message of the topic: (partition, offset, id, value).
async fn stored(
    broker: &TestBroker,
    topic: &str,
    partitions: u32,
) -> Vec<(u32, u64, String, String)> {
    let mut consumer = broker.consumer().await;
    let mut all = Vec::new();
    for partition in 0..partitions {
        let mut offset = 0;
        loop {
            let response = consumer
                .fetch(FetchRequest {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_messages: 1000,
                    ..Default::default()
                })
                .await
                .expect("fetch")
                .into_inner();
            for m in &response.messages {
                all.push((
                    partition,
                    m.offset,
                    String::from_utf8_lossy(&m.id).into_owned(),
                    String::from_utf8_lossy(&m.value).into_owned(),
                ));
            }
            if response.messages.is_empty() || response.next_offset >= response.end_offset {
                break;
            }
            offset = response.next_offset;
        }
    }
    all
}

#[tokio::test]
async fn a_retrying_producer_stores_each_id_once_across_a_kill_9() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("orders", 3, TopicConfig::default())
        .await;
    let mut client = broker.publisher().await;
    let mut acks: HashMap<String, (u32, u64)> = HashMap::new();
    // 300 ids of about 3 KB, each published, and every third one again at once.
    for round in 0..3u32 {
        for batch in 0..10u32 {
            let first = round * 100 + batch * 10;
            let messages: Vec<Message> = (first..first + 10)
                .map(|i| message(&format!("order-{i}"), &format!("{i}:{}", "x".repeat(3000))))
                .collect();
            let got = publish(&mut client, "orders", messages.clone()).await;
            let retried = publish(
                &mut client,
                "orders",
                messages.into_iter().step_by(3).collect(),
            )
            .await;
            for (i, ack) in (first..first + 10).zip(&got) {
                assert!(!ack.duplicate, "order-{i} was new");
                acks.insert(format!("order-{i}"), (ack.partition, ack.offset));
            }
            for (i, ack) in (first..first + 10).step_by(3).zip(&retried) {
                assert!(ack.duplicate, "order-{i} retried at once");
                assert_eq!((ack.partition, ack.offset), acks[&format!("order-{i}")]);
            }
        }
        if round == 1 {
            // The broker dies; the producer retries everything it sent so far.
            broker.kill9();
            broker.restart();
            client = broker.publisher().await;
            for i in 0..200u32 {
                let ack = publish(
                    &mut client,
                    "orders",
                    vec![message(&format!("order-{i}"), "retry")],
                )
                .await;
                assert!(ack[0].duplicate, "order-{i} after the kill -9");
                assert_eq!(
                    (ack[0].partition, ack[0].offset),
                    acks[&format!("order-{i}")]
                );
            }
        }
    }
    // The same ids on the stream are duplicates too.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(PublishStreamRequest {
        batch: None,
        request_id: 1,
        request: Some(PublishRequest {
            topic: "orders".into(),
            messages: vec![message("order-5", "stream"), message("order-new", "stream")],
            ack: AckLevel::Durable as i32,
        }),
    })
    .await
    .unwrap();
    drop(tx);
    let mut responses = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let Some(Outcome::Response(response)) = responses.message().await.unwrap().unwrap().outcome
    else {
        panic!("the stream request failed");
    };
    assert!(response.acks[0].duplicate);
    assert!(!response.acks[1].duplicate);

    let log = stored(&broker, "orders", 3).await;
    assert_eq!(log.len(), 301, "300 ids and order-new, each once");
    for (partition, offset, id, value) in &log {
        if id != "order-new" {
            assert_eq!(acks[id], (*partition, *offset), "{id}");
            assert!(
                value.starts_with(&format!("{}:", &id["order-".len()..])),
                "{id}: the first copy is kept"
            );
        }
    }
    let duplicates = metric_value(
        &broker.metrics_text(),
        "tidelog_publish_duplicates_total{topic=\"orders\"}",
    );
    // After the restart the counter starts again: the 200 retries, the third round's
    // 40 and the stream's one.
    assert_eq!(duplicates, Some(241.0));
}

/// A producer's id `n`: 16 bytes, its own 8-byte prefix and a counter, the layout the
/// broker keeps as one range per row of ids (runs, in the dedup window and the id
/// index).
fn sequenced(n: u64) -> Vec<u8> {
    [*b"producr7", n.to_be_bytes()].concat()
}

fn sequenced_message(n: u64) -> Message {
    Message {
        id: sequenced(n).into(),
        value: format!("{n}:{}", "v".repeat(100 + (n % 7) as usize * 500))
            .into_bytes()
            .into(),
        partition: Some(0),
        ..Default::default()
    }
}

/// Ids in a row (runs) through the real broker: whole requests retried, a single id
/// from the middle of a row, a row that overlaps stored rows in part, before and after
/// a kill -9 and across segments that roll and seal (their id indexes list the rows
/// as runs). Each id is stored once, every duplicate names the original, and
/// GetMessage finds every id after the restart.
#[tokio::test]
async fn ids_in_a_row_are_stored_once_across_a_kill_9_and_found_by_id() {
    use tidelog_proto::v1::GetMessageRequest;
    use tidelog_proto::v1::messages_client::MessagesClient;
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            "rows",
            1,
            TopicConfig {
                segment_bytes: 256 * 1024,
                ..TopicConfig::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let mut placed: HashMap<u64, u64> = HashMap::new();
    let check = |acks: &[MessageAck], ids: &[u64], placed: &mut HashMap<u64, u64>, when: &str| {
        assert_eq!(acks.len(), ids.len(), "{when}");
        for (ack, &n) in acks.iter().zip(ids) {
            match placed.get(&n) {
                Some(&offset) => {
                    assert!(ack.duplicate, "{when}: id {n} stored twice");
                    assert_eq!(ack.offset, offset, "{when}: id {n}");
                }
                None => {
                    assert!(
                        !ack.duplicate,
                        "{when}: id {n} never stored, called a duplicate"
                    );
                    placed.insert(n, ack.offset);
                }
            }
        }
    };
    let send = async |client: &mut PublisherClient<Channel>,
                      ids: Vec<u64>,
                      placed: &mut HashMap<u64, u64>,
                      when: &str| {
        let messages = ids.iter().map(|&n| sequenced_message(n)).collect();
        let acks = publish(client, "rows", messages).await;
        check(&acks, &ids, placed, when);
    };
    // Ten rows of 100 ids.
    for row in 0..10u64 {
        send(
            &mut client,
            (row * 100..row * 100 + 100).collect(),
            &mut placed,
            "new rows",
        )
        .await;
    }
    // Retries: a whole row, one id from the middle of another, a row across two.
    send(
        &mut client,
        (300..400).collect(),
        &mut placed,
        "a row again",
    )
    .await;
    send(&mut client, vec![555], &mut placed, "one id of a row").await;
    send(
        &mut client,
        (650..760).collect(),
        &mut placed,
        "across two rows",
    )
    .await;
    broker.kill9();
    broker.restart();
    let mut client = broker.publisher().await;
    send(
        &mut client,
        (0..100).collect(),
        &mut placed,
        "after the kill, a row again",
    )
    .await;
    send(
        &mut client,
        (940..1060).collect(),
        &mut placed,
        "after the kill, half new",
    )
    .await;
    send(
        &mut client,
        vec![999, 1000, 1059, 1060],
        &mut placed,
        "after the kill, singles",
    )
    .await;
    send(
        &mut client,
        (1061..1100).collect(),
        &mut placed,
        "after the kill, new",
    )
    .await;
    let log = stored(&broker, "rows", 1).await;
    assert_eq!(log.len(), placed.len(), "each id once");
    let mut lookups = MessagesClient::new(broker.channel().await);
    for (&n, &offset) in &placed {
        let found = lookups
            .get_message(GetMessageRequest {
                topic: "rows".into(),
                id: sequenced(n).into(),
                include_value: false,
            })
            .await
            .unwrap_or_else(|s| panic!("id {n} not found: {s:?}"))
            .into_inner()
            .message
            .expect("a message");
        assert_eq!((found.partition, found.offset), (0, offset), "id {n}");
    }
    let missing = lookups
        .get_message(GetMessageRequest {
            topic: "rows".into(),
            id: sequenced(5000).into(),
            include_value: false,
        })
        .await
        .expect_err("an id never published");
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// Bug hunt 2026-12-06: a request's appends run in partition order, so of two
/// messages with one id the one sent to the lower partition was kept, even when it came
/// second. The first in the request is kept now, whatever partitions they go to; the
/// later ones name it, and a repeat of an id stored earlier names the stored message.
#[tokio::test]
async fn within_one_request_the_first_message_with_an_id_is_kept_whatever_its_partition() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 3, TopicConfig::default()).await;
    let mut client = broker.publisher().await;
    let to = |partition: u32, id: &str, value: &str| Message {
        partition: Some(partition),
        ..message(id, value)
    };
    let earlier = publish(&mut client, "jobs", vec![to(1, "z", "STORED-BEFORE")]).await;
    let value = "v".repeat(3000);
    let acks = publish(
        &mut client,
        "jobs",
        vec![
            to(2, "x", "x-first"),
            to(0, "y", "y-first"),
            to(2, "y", "y-second"),
            to(0, "x", "x-second"),
            to(1, "x", "x-third"),
            to(0, "z", "z-again"),
            to(2, "z", "z-again-2"),
            to(0, "w", &value),
        ],
    )
    .await;
    let placed: Vec<(u32, u64, bool)> = acks
        .iter()
        .map(|a| (a.partition, a.offset, a.duplicate))
        .collect();
    let (x, y, z) = (placed[0], placed[1], earlier[0].clone());
    assert!(!x.2 && !y.2, "{placed:?}");
    assert_eq!((x.0, y.0), (2, 0), "{placed:?}");
    assert_eq!(placed[2], (y.0, y.1, true), "{placed:?}");
    assert_eq!(placed[3], (x.0, x.1, true), "{placed:?}");
    assert_eq!(placed[4], (x.0, x.1, true), "{placed:?}");
    assert_eq!(placed[5], (z.partition, z.offset, true), "{placed:?}");
    assert_eq!(placed[6], (z.partition, z.offset, true), "{placed:?}");
    assert_eq!(placed[7].0, 0, "{placed:?}");
    assert!(!placed[7].2, "{placed:?}");
    let mut values: Vec<(String, String)> = stored(&broker, "jobs", 3)
        .await
        .into_iter()
        .map(|(_, _, id, value)| (id, value))
        .collect();
    values.sort();
    assert_eq!(
        values,
        [
            ("w".to_string(), value),
            ("x".to_string(), "x-first".to_string()),
            ("y".to_string(), "y-first".to_string()),
            ("z".to_string(), "STORED-BEFORE".to_string()),
        ]
    );
}

#[tokio::test]
async fn concurrent_duplicates_on_separate_connections_store_one_copy() {
    let broker = TestBroker::start();
    broker.create_topic("race", 4, TopicConfig::default()).await;
    let mut tasks = Vec::new();
    for producer in 0..4u32 {
        let mut client = broker.publisher().await;
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for batch in 0..20u32 {
                let messages: Vec<Message> = (0..25)
                    .map(|i| Message {
                        partition: Some(producer),
                        ..message(&format!("r-{}", batch * 25 + i), "v")
                    })
                    .collect();
                acks.extend(publish(&mut client, "race", messages).await);
            }
            acks
        }));
    }
    let mut by_id: Vec<Vec<MessageAck>> = vec![Vec::new(); 500];
    for task in tasks {
        for (i, ack) in task.await.unwrap().into_iter().enumerate() {
            by_id[i].push(ack);
        }
    }
    for (i, acks) in by_id.iter().enumerate() {
        assert_eq!(
            acks.iter().filter(|a| !a.duplicate).count(),
            1,
            "r-{i}: {acks:?}"
        );
        assert!(
            acks.iter()
                .all(|a| (a.partition, a.offset) == (acks[0].partition, acks[0].offset)),
            "r-{i}: {acks:?}"
        );
    }
    assert_eq!(stored(&broker, "race", 4).await.len(), 500);
}

#[tokio::test]
async fn a_duplicate_after_the_window_is_stored_again_and_assigned_ids_come_back() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "short",
            1,
            TopicConfig {
                dedup_window_ms: Some(300),
                assign_ids: true,
                ..Default::default()
            },
        )
        .await;
    let mut client = broker.publisher().await;
    let first = publish(&mut client, "short", vec![message("once", "1")]).await;
    let again = publish(&mut client, "short", vec![message("once", "2")]).await;
    assert!(again[0].duplicate);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let later = publish(&mut client, "short", vec![message("once", "3")]).await;
    assert!(
        !later[0].duplicate,
        "past the window, by design, stored again"
    );
    assert_ne!(later[0].offset, first[0].offset);
    assert!(first[0].id.is_empty(), "a message's own id is not echoed");

    let assigned = publish(
        &mut client,
        "short",
        vec![message("", "no id"), message("", "no id")],
    )
    .await;
    assert_eq!(assigned[0].id.len(), 16);
    assert!(assigned[0].id < assigned[1].id, "assigned ids are ordered");
    let fetched = broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: "short".into(),
            offset: assigned[0].offset,
            max_messages: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.messages[0].id, assigned[0].id);
    // Sending an assigned id back deduplicates.
    let back = publish(
        &mut client,
        "short",
        vec![Message {
            id: assigned[1].id.clone(),
            ..Default::default()
        }],
    )
    .await;
    assert!(back[0].duplicate);
    assert_eq!(back[0].offset, assigned[1].offset);

    let description = broker.describe_topic("short").await;
    let config = description.config.unwrap();
    assert_eq!(
        (config.dedup_window_ms, config.assign_ids),
        (Some(300), true)
    );
    let status = broker
        .admin()
        .await
        .create_topic(CreateTopicRequest {
            name: "too-long".into(),
            partitions: 1,
            config: Some(TopicConfig {
                dedup_window_ms: Some(8 * 86_400_000),
                ..Default::default()
            }),
        })
        .await
        .expect_err("a window over 7 days");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("dedup_window_ms"),
        "{}",
        status.message()
    );
}

#[test]
fn the_cli_publishes_with_ids_and_shows_them() {
    let broker = TestBroker::start();
    let server = broker.endpoint();
    let cli = |args: &[&str], stdin: &str| {
        let mut child = tidelog_command()
            .arg("--server")
            .arg(&server)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    cli(&["topic", "create", "cli-ids", "--dedup-window", "10m"], "");
    assert!(cli(&["topic", "describe", "cli-ids"], "").contains("dedup-window           10m"));
    assert_eq!(
        cli(&["produce", "cli-ids", "--id", "invoice-1"], "first\n"),
        "partition 0 offset 0\n"
    );
    assert_eq!(
        cli(&["produce", "cli-ids", "--id", "invoice-1"], "second\n"),
        "partition 0 offset 0 duplicate\n"
    );
    assert_eq!(
        cli(
            &["produce", "cli-ids", "--id-separator", ":"],
            "a:one\nb:two\na:three\n"
        ),
        "partition 0 offset 1\npartition 0 offset 2\npartition 0 offset 1 duplicate\n"
    );
    let quiet = cli(
        &["produce", "cli-ids", "--id-separator", ":", "--quiet"],
        "b:x\nc:y\n",
    );
    assert!(quiet.contains("1 duplicate not stored again"), "{quiet}");
    let consumed = cli(
        &[
            "consume",
            "cli-ids",
            "--from",
            "earliest",
            "-n",
            "4",
            "--print-meta",
        ],
        "",
    );
    let ids: Vec<&str> = consumed
        .lines()
        .map(|l| l.split(" id=").nth(1).unwrap().split('\t').next().unwrap())
        .collect();
    assert_eq!(ids, ["invoice-1", "a", "b", "c"], "{consumed}");

    cli(&["topic", "create", "cli-assigned", "--assign-ids"], "");
    let acked = cli(&["produce", "cli-assigned", "--json"], "hello\n");
    let ack: serde_json::Value = serde_json::from_str(acked.trim()).unwrap();
    let id = ack["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26, "{acked}");
    let json = cli(
        &[
            "consume",
            "cli-assigned",
            "--from",
            "earliest",
            "-n",
            "1",
            "--json",
        ],
        "",
    );
    let message: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(message["id"], id.as_str());
    // The assigned id, given back in its text form, is the same id.
    assert_eq!(
        cli(&["produce", "cli-assigned", "--id", &id], "again\n"),
        "partition 0 offset 0 duplicate\n"
    );
}
