//! Messages.GetMessage and `tidelog message get` through the real broker: ids found in
//! every segment of every partition, after a restart, and after the id index files
//! were deleted with the broker stopped (recovery writes them again); NOT_FOUND naming
//! the topic and the id, INVALID_ARGUMENT for bad ids, NOT_FOUND for a deleted topic;
//! the lookup metric; the CLI in both forms and its errors.

use std::collections::BTreeMap;

use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::{
    AckLevel, DeleteTopicRequest, GetMessageRequest, GetMessageResponse, Header, Message,
    PublishRequest, TopicConfig,
};
use tidelog_tests::{TestBroker, metric_value};
use tonic::Code;
use tonic::transport::Channel;

use crate::cli::cli;
use crate::support::segment_logs;

const TOPIC: &str = "orders";
const MESSAGES: u64 = 240;

fn id(n: u64) -> String {
    format!("order-{n}")
}

fn value(n: u64) -> String {
    format!("value of order {n} {}", "x".repeat(200 + (n % 50) as usize))
}

async fn get(
    client: &mut MessagesClient<Channel>,
    id: &[u8],
    include_value: bool,
) -> Result<GetMessageResponse, tonic::Status> {
    client
        .get_message(GetMessageRequest {
            topic: TOPIC.into(),
            id: id.to_vec().into(),
            include_value,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every published id is found where its ack put it, with its value and header.
async fn check_all(broker: &TestBroker, placed: &BTreeMap<u64, (u32, u64)>, when: &str) {
    let mut client = MessagesClient::new(broker.channel().await);
    for (&n, &(partition, offset)) in placed {
        let found = get(&mut client, id(n).as_bytes(), true)
            .await
            .unwrap_or_else(|s| panic!("{when}: {} not found: {s:?}", id(n)));
        let message = found.message.expect("a message");
        assert_eq!(
            (message.partition, message.offset),
            (partition, offset),
            "{when}"
        );
        assert_eq!(message.id, id(n).as_bytes(), "{when}");
        assert_eq!(message.value, value(n).as_bytes(), "{when}");
        assert_eq!(message.headers[0].value, n.to_string().as_bytes(), "{when}");
        assert_eq!(
            found.size_bytes,
            (id(n).len() + value(n).len() + 1 + n.to_string().len()) as u64,
            "{when}"
        );
    }
}

// Several threads, so the clients' connections close while a restart blocks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_id_in_every_segment_after_restarts_and_rebuilt_indexes() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            TOPIC,
            2,
            TopicConfig {
                segment_bytes: 4096,
                ..Default::default()
            },
        )
        .await;
    let mut publisher = broker.publisher().await;
    let mut placed = BTreeMap::new();
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(4) {
        let messages = chunk
            .iter()
            .map(|&n| Message {
                id: id(n).into(),
                value: value(n).into(),
                headers: vec![Header {
                    key: "n".into(),
                    value: n.to_string().into(),
                }],
                partition: Some((n % 2) as u32),
                ..Default::default()
            })
            .collect();
        let acks = publisher
            .publish(PublishRequest {
                topic: TOPIC.into(),
                messages,
                ack: AckLevel::Durable as i32,
            })
            .await
            .expect("publish")
            .into_inner()
            .acks;
        for (&n, ack) in chunk.iter().zip(acks) {
            placed.insert(n, (ack.partition, ack.offset));
        }
    }
    let data = broker.data_dir();
    for partition in 0..2 {
        assert!(
            segment_logs(&data, TOPIC, partition).len() >= 5,
            "partition {partition} should span several segments"
        );
    }
    check_all(&broker, &placed, "while running").await;

    let mut client = MessagesClient::new(broker.channel().await);
    // The value only on request; the size and the rest always.
    let found = get(&mut client, id(7).as_bytes(), false).await.unwrap();
    let message = found.message.unwrap();
    assert!(message.value.is_empty());
    assert_eq!(message.headers.len(), 1);
    assert!(found.size_bytes > value(7).len() as u64);

    // Unknown ids: NOT_FOUND naming the topic and the id (binary ones in hex).
    let missing = get(&mut client, b"order-none", true).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("order-none"), "{missing:?}");
    assert!(missing.message().contains("\"orders\""), "{missing:?}");
    let binary = get(&mut client, &[0, 0xff], true).await.unwrap_err();
    assert_eq!(binary.code(), Code::NotFound);
    assert!(binary.message().contains("0x00ff"), "{binary:?}");
    // Bad ids and unknown topics.
    for bad in [Vec::new(), vec![b'x'; 129]] {
        let status = get(&mut client, &bad, true).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("1 to 128 bytes"), "{status:?}");
    }
    let unknown = client
        .get_message(GetMessageRequest {
            topic: "nowhere".into(),
            id: "order-1".into(),
            include_value: false,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The lookups are counted.
    let metrics = broker.metrics_text();
    let found_count = metric_value(
        &metrics,
        "tidelog_message_lookups_total{topic=\"orders\",result=\"found\"}",
    )
    .unwrap_or(0.0);
    assert!(found_count >= MESSAGES as f64 + 1.0, "{metrics}");
    let not_found = metric_value(
        &metrics,
        "tidelog_message_lookups_total{topic=\"orders\",result=\"not_found\"}",
    );
    assert_eq!(not_found, Some(2.0), "{metrics}");

    // A clean restart: the sealed segments' ids from their files. (Open connections
    // would hold the graceful shutdown up to its timeout.)
    drop((client, publisher));
    tokio::task::block_in_place(|| broker.restart());
    check_all(&broker, &placed, "after a restart").await;

    // Every id index deleted with the broker stopped: recovery writes them again.
    tokio::task::block_in_place(|| broker.stop());
    let mut deleted = 0;
    for partition in 0..2 {
        for log in segment_logs(&data, TOPIC, partition) {
            let idindex = log.with_extension("idindex");
            if idindex.exists() {
                std::fs::remove_file(&idindex).unwrap();
                deleted += 1;
            }
        }
    }
    assert!(deleted >= 10, "only {deleted} id index files");
    tokio::task::block_in_place(|| broker.restart());
    for partition in 0..2 {
        let logs = segment_logs(&data, TOPIC, partition);
        for log in &logs[..logs.len() - 1] {
            assert!(
                log.with_extension("idindex").exists(),
                "{} was not rebuilt",
                log.display()
            );
        }
    }
    check_all(&broker, &placed, "after the id indexes were deleted").await;

    // A kill -9: the active segments' ids are read back from their logs.
    broker.kill9();
    tokio::task::block_in_place(|| broker.restart());
    check_all(&broker, &placed, "after kill -9").await;

    // The CLI: JSON, the human form with the value, and its errors.
    let json = cli(&broker, &["message", "get", TOPIC, &id(11), "--json"])
        .ok("message get --json")
        .json();
    let (partition, offset) = placed[&11];
    assert_eq!(json["partition"], partition);
    assert_eq!(json["offset"], offset);
    assert_eq!(json["id"], id(11));
    assert_eq!(json["headers"][0]["value"], "11");
    assert!(json.get("value").is_none(), "{json}");
    let with_value = cli(
        &broker,
        &["message", "get", TOPIC, &id(11), "--value", "--json"],
    )
    .ok("message get --value --json")
    .json();
    assert_eq!(with_value["value"], value(11));
    let human = cli(&broker, &["message", "get", TOPIC, &id(12), "--value"]).ok("message get");
    let offset_line = human
        .stdout
        .lines()
        .find(|line| line.starts_with("offset"))
        .unwrap_or_default();
    assert_eq!(
        offset_line.split_whitespace().nth(1),
        Some(placed[&12].1.to_string().as_str()),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains(&value(12)), "{}", human.stdout);
    let missing = cli(&broker, &["message", "get", TOPIC, "order-none"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("order-none") && missing.stderr.contains("orders"),
        "{missing:?}"
    );
    assert!(!missing.stderr.contains("Messages."), "{missing:?}");
    let usage = cli(&broker, &["message", "get", TOPIC, "0x123"]);
    assert_eq!(usage.code, 2, "{usage:?}");
    let too_long = cli(&broker, &["message", "get", TOPIC, &"y".repeat(129)]);
    assert_eq!(too_long.code, 2, "{too_long:?}");

    // A deleted topic: NOT_FOUND.
    broker
        .admin()
        .await
        .delete_topic(DeleteTopicRequest { name: TOPIC.into() })
        .await
        .expect("delete");
    let mut client = MessagesClient::new(broker.channel().await);
    let gone = get(&mut client, id(1).as_bytes(), true).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    crate::support::assert_no_panic(&broker);
}
