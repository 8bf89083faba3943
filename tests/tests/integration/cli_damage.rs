//! Issue 12 bug 2, the CLI's part: `tidelog consume` prints every intact message before
//! a damaged batch, reports the DATA_LOSS for that partition only (naming partition,
//! offset and `tidelog segment verify`), and goes on reading the other partitions.

use std::time::Duration;

use bytes::Bytes;
use tidelog_proto::v1::{AckLevel, Message, PublishRequest, TopicConfig};
use tidelog_tests::TestBroker;

use crate::cli::{GroupConsumer, cli, wait_until};
use crate::support::{always, batch_positions, segment_logs};

const TOPIC: &str = "orders";
/// Partition 1 holds offsets 0..=96 in one batch, the damaged batch 97..=127, then
/// 128..=139; partitions 0 and 2 hold 10 messages each.
const DAMAGED_PARTITION: u32 = 1;
const DAMAGED_FIRST: u64 = 97;

fn value(partition: u32, offset: u64) -> String {
    format!("p{partition}-{offset:03}")
}

async fn publish(broker: &TestBroker, partition: u32, offsets: std::ops::Range<u64>) {
    let mut publisher = broker.publisher().await;
    let acks = publisher
        .publish(PublishRequest {
            topic: TOPIC.into(),
            messages: offsets
                .clone()
                .map(|o| Message {
                    value: Bytes::from(value(partition, o)),
                    partition: Some(partition),
                    ..Message::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish")
        .into_inner()
        .acks;
    assert_eq!(acks.first().map(|a| a.offset), Some(offsets.start));
}

/// A topic of three partitions whose partition 1 has a CRC-damaged batch holding
/// offsets 97..=127, checkpointed (so the broker opens it and serves around it).
async fn broker_with_a_damaged_batch() -> TestBroker {
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            TOPIC,
            3,
            TopicConfig {
                fsync: always(),
                ..TopicConfig::default()
            },
        )
        .await;
    publish(&broker, 0, 0..10).await;
    publish(&broker, DAMAGED_PARTITION, 0..DAMAGED_FIRST).await;
    publish(&broker, DAMAGED_PARTITION, DAMAGED_FIRST..128).await;
    publish(&broker, DAMAGED_PARTITION, 128..140).await;
    publish(&broker, 2, 0..10).await;
    tokio::task::block_in_place(|| broker.stop());
    let logs = segment_logs(&broker.data_dir(), TOPIC, DAMAGED_PARTITION);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    let batches = batch_positions(&bytes);
    assert_eq!(batches.len(), 3);
    // A bit of the second batch's records: its CRC no longer matches.
    let (start, length) = batches[1];
    bytes[start + length - 3] ^= 0x04;
    std::fs::write(&logs[0], &bytes).unwrap();
    tokio::task::block_in_place(|| broker.restart());
    broker
}

fn assert_names_the_damage(stderr: &str) {
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(
        last.contains("partition 1 of topic \"orders\"") && last.contains("offset 97"),
        "{stderr}"
    );
    assert!(last.contains("DATA_LOSS"), "{stderr}");
    assert!(last.contains("`tidelog segment verify`"), "{stderr}");
    // The broker's advice in API terms is not passed on.
    assert!(!stderr.contains("tidelog verify"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_consume_prints_up_to_a_damaged_batch_and_reads_the_other_partitions() {
    let broker = broker_with_a_damaged_batch().await;
    let broker = &broker;
    tokio::task::block_in_place(|| {
        // The command: offset 96 is intact, 97 starts the damaged batch.
        let run = cli(
            broker,
            &["consume", TOPIC, "-p", "1", "--from", "96", "-n", "3"],
        );
        assert_eq!(run.stdout, "p1-096\n", "{}", run.stderr);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_names_the_damage(&run.stderr);

        // The whole topic: every readable message of every partition, then the report.
        let run = cli(broker, &["consume", TOPIC]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let mut expected: Vec<String> = (0..10).map(|o| value(0, o)).collect();
        expected.extend((0..DAMAGED_FIRST).map(|o| value(1, o)));
        expected.extend((0..10).map(|o| value(2, o)));
        let printed: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(printed, expected, "{}", run.stderr);
        assert_names_the_damage(&run.stderr);
        assert!(
            run.stderr
                .contains("to read on past it: `tidelog consume orders -p 1 --from 128`"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("warning: orders/1: a damaged batch at offset 97"),
            "{}",
            run.stderr
        );

        // JSON alike: the messages, then the error.
        let run = cli(broker, &["consume", TOPIC, "--json", "-p", "1,2"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(run.stdout.lines().count(), 97 + 10, "{}", run.stderr);

        // --follow: the stream the broker ends with DATA_LOSS is opened again without
        // the damaged partition, so the others keep being followed.
        let follower = GroupConsumer::spawn(broker, &["consume", TOPIC, "--follow"], false);
        wait_until("the follower printed every readable message", || {
            follower.lines().len() >= expected.len()
        });
        tokio::runtime::Handle::current().block_on(publish(broker, 2, 10..12));
        wait_until("the follower printed the new messages", || {
            follower.lines().len() >= expected.len() + 2
        });
        std::thread::sleep(Duration::from_millis(200));
        let (code, stderr, mut lines) = follower.finish(true);
        assert_eq!(code, 1, "{stderr}");
        assert_names_the_damage(&stderr);
        let mut all = expected.clone();
        all.extend((10..12).map(|o| value(2, o)));
        all.sort();
        lines.sort();
        assert_eq!(lines, all, "{stderr}");

        // A group member: what it printed is committed, and the error says how to
        // move the group past the damage.
        let run = cli(broker, &["consume", TOPIC, "--group", "g"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stdout.lines().count() >= 97, "{}", run.stderr);
        assert_names_the_damage(&run.stderr);
        assert!(
            run.stderr.contains(
                "`tidelog group reset-offsets --group g --topic orders:1 --to-offset 128 --execute`"
            ),
            "{}",
            run.stderr
        );
        // The stream's end took the member with it; what it printed of partition 1 is
        // committed all the same (as a tool, the group having no member left).
        assert!(!run.stderr.contains("warning"), "{}", run.stderr);
        let described = cli(broker, &["group", "describe", "g", "--json"]).ok("describe");
        // (The broker lists every partition, committed or not: which of the others
        // the member committed before the stream ended depends on the interleaving.)
        let committed = described.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partition"] == DAMAGED_PARTITION)
            .map(|p| p["committed_offset"].as_u64());
        assert_eq!(committed, Some(Some(DAMAGED_FIRST)), "{}", described.stdout);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_whose_commit_is_refused_returns_every_message_before_the_damage() {
    // The broker ends the membership with DATA_LOSS at the damaged batch while the
    // member still holds deliveries it has not returned; a commit then is refused (the
    // member is gone) and the member reads ahead for an Assignment. It meets the
    // stream's end instead, and must return everything received before it first.
    let broker = broker_with_a_damaged_batch().await;
    let client = tidelog_client::Client::connect(&broker.endpoint())
        .await
        .expect("connect");
    let options = tidelog_client::GroupOptions {
        max_batch_messages: 10,
        session_timeout: Duration::from_secs(1),
        ..tidelog_client::GroupOptions::new("refused")
    };
    let mut member = tidelog_client::GroupMember::join(&client, TOPIC, options)
        .await
        .expect("join");
    let mut values = vec![member.next().await.expect("a first message").value];
    // The broker sends what it can, ends the stream at the damage and, once the
    // session timeout passed, forgets the member.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let described = client
            .groups()
            .describe_group(tidelog_proto::v1::DescribeGroupRequest {
                group_id: "refused".into(),
            })
            .await;
        let members = match described {
            Ok(response) => response.into_inner().group.expect("a group").members,
            // No live members and no commits: the group is gone.
            Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
            Err(status) => panic!("describe: {status}"),
        };
        if members.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member stayed: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match member.commit().await {
        Err(tidelog_client::Error::Rebalanced { .. }) => {}
        other => panic!("the membership ended at the damage, so the commit is refused: {other:?}"),
    }
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), member.next()).await {
            Ok(Ok(message)) => values.push(message.value),
            Ok(Err(error)) => break error,
            Err(_) => panic!("neither a message nor the error within 30 s"),
        }
    };
    assert!(error.is_data_loss(), "{error}");
    let mut printed: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .collect();
    printed.sort();
    let count = printed.len();
    printed.dedup();
    assert_eq!(
        printed.len(),
        count,
        "a message returned twice: {printed:?}"
    );
    // The damaged partition: every message before the damage. Partitions 0 and 2
    // hold one delivery each (10 messages): whether the broker sent it before it met
    // the damage depends on when their leases came, so each is there whole or not at
    // all, never in part.
    let of = |partition: u32| -> Vec<String> {
        let prefix = format!("p{partition}-");
        printed
            .iter()
            .filter(|v| v.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let expected: Vec<String> = (0..DAMAGED_FIRST)
        .map(|o| value(DAMAGED_PARTITION, o))
        .collect();
    assert_eq!(
        of(DAMAGED_PARTITION),
        expected,
        "every message before the damage"
    );
    for partition in [0, 2] {
        let got = of(partition);
        let whole: Vec<String> = (0..10).map(|o| value(partition, o)).collect();
        assert!(
            got.is_empty() || got == whole,
            "partition {partition}: {got:?}"
        );
    }
    assert_eq!(
        printed.len(),
        of(0).len() + of(DAMAGED_PARTITION).len() + of(2).len()
    );
}
