//! Server-side filters through the real broker (issue 15 item 2): Fetch, a plain
//! Subscribe, a group member (its committed offset moves past skipped messages) and a
//! queue, over headers, keys and JSON fields (including values that are not JSON), with
//! 3 KB and 600 KB messages of which about 1% match; the CLI's --filter; malformed
//! filters answered INVALID_ARGUMENT with the position.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterQueueRequest, CreateQueueRequest, DescribeGroupRequest, DescribeQueueRequest,
    FetchOffsetsRequest, FetchRequest, GroupMembership, Header, Message, PublishRequest,
    QueueConfig, ReceiveRequest, SettleRequest, Settlement, StartPosition, SubscribeRequest,
    SubscribeResponse, TopicConfig,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tonic::{Code, Streaming};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the test publishes as message `i`: 1 in 100 has header type=order (the 1%),
/// every third a key starting "eu-", even ones a JSON value {"amount": i, ...}, odd
/// ones plain text, each padded to `bytes`.
fn message(i: u64, bytes: usize) -> Message {
    let mut value = if i.is_multiple_of(2) {
        format!(r#"{{"amount": {i}, "pad": ""#).into_bytes()
    } else {
        format!("text {i} ").into_bytes()
    };
    let closing: &[u8] = if i.is_multiple_of(2) { b"\"}" } else { b"" };
    value.resize(bytes.saturating_sub(closing.len()).max(value.len()), b'x');
    value.extend_from_slice(closing);
    let mut headers = vec![Header {
        key: "type".into(),
        value: if i % 100 == 37 { "order" } else { "other" }.into(),
    }];
    if i.is_multiple_of(50) {
        headers.push(Header {
            key: "test".into(),
            value: "".into(),
        });
    }
    Message {
        key: if i.is_multiple_of(3) {
            format!("eu-{i}")
        } else {
            format!("us-{i}")
        }
        .into(),
        value: value.into(),
        headers,
        ..Default::default()
    }
}

/// A filter and, for message `i`, whether it matches.
type Case = (&'static str, fn(u64) -> bool);

/// The filters and, for message `i`, whether each matches.
const FILTERS: [Case; 5] = [
    (r#"header.type == "order""#, |i| i % 100 == 37),
    (r#"key ^= "eu-" && json.amount >= 1000"#, |i| {
        // Odd messages are not JSON: only reached for keys starting eu-.
        i.is_multiple_of(3) && i.is_multiple_of(2) && i >= 1000
    }),
    (
        r#"header.type in ("order", "refund") || !exists(header.test) && json.amount < 10"#,
        |i| i % 100 == 37 || (!i.is_multiple_of(50) && i.is_multiple_of(2) && i < 10),
    ),
    (r#"key == "us-1" || key == "eu-999""#, |i| {
        i == 1 || i == 999
    }),
    ("json.nothing == 1", |_| false),
];

/// Publishes messages `from..to` of `bytes` bytes to `partition`, `per_request` at a
/// time.
async fn publish(
    broker: &TestBroker,
    topic: &str,
    partition: u32,
    range: std::ops::Range<u64>,
    bytes: usize,
    per_request: u64,
) {
    let mut publisher = broker.publisher().await;
    let mut i = range.start;
    while i < range.end {
        let end = range.end.min(i + per_request);
        let messages = (i..end)
            .map(|i| Message {
                partition: Some(partition),
                ..message(i, bytes)
            })
            .collect();
        publisher
            .publish(PublishRequest {
                topic: topic.into(),
                messages,
                ack: AckLevel::Durable as i32,
            })
            .await
            .expect("publish");
        i = end;
    }
}

/// Follows next_offset with `filter` from 0 to the end of partition 0; returns the
/// offsets read and the number of fetches.
async fn fetch_all(broker: &TestBroker, topic: &str, filter: &str, max_bytes: u32) -> Vec<u64> {
    let mut consumer = broker.consumer().await;
    let mut read = Vec::new();
    let mut offset = 0;
    loop {
        let response = consumer
            .fetch(FetchRequest {
                topic: topic.into(),
                partition: 0,
                offset,
                max_bytes,
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .expect("fetch")
            .into_inner();
        read.extend(response.messages.iter().map(|m| m.offset));
        if response.next_offset == response.end_offset {
            return read;
        }
        assert!(
            response.next_offset > offset,
            "{filter}: fetch at {offset} made no progress"
        );
        offset = response.next_offset;
    }
}

#[tokio::test]
async fn fetch_returns_exactly_the_matching_messages_of_3_kb_values() {
    let broker = TestBroker::start();
    broker.create_topic("kb", 1, TopicConfig::default()).await;
    publish(&broker, "kb", 0, 0..3000, 3000, 500).await;
    for (filter, matches) in FILTERS {
        let expected: Vec<u64> = (0..3000).filter(|i| matches(*i)).collect();
        for max_bytes in [0, 1, 5000] {
            assert_eq!(
                fetch_all(&broker, "kb", filter, max_bytes).await,
                expected,
                "{filter} max_bytes {max_bytes}"
            );
        }
    }
    let metrics = broker.metrics_text();
    assert!(
        metric_value(&metrics, r#"tidelog_filtered_messages_total{kind="fetch"}"#)
            .is_some_and(|v| v > 10_000.0),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            r#"tidelog_filter_not_json_messages_total{kind="fetch"}"#
        )
        .is_some_and(|v| v > 0.0)
    );
}

#[tokio::test]
async fn a_fetch_long_poll_waits_for_a_matching_message() {
    let broker = TestBroker::start();
    broker.create_topic("poll", 1, TopicConfig::default()).await;
    publish(&broker, "poll", 0, 0..5, 100, 5).await;
    let mut consumer = broker.consumer().await;
    let request = FetchRequest {
        topic: "poll".into(),
        offset: 0,
        max_wait_ms: 10_000,
        filter: r#"header.type == "order""#.into(),
        ..Default::default()
    };
    let waiting = tokio::spawn(async move { consumer.fetch(request).await });
    // Non-matching messages arrive first: the poll goes on waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&broker, "poll", 0, 5..30, 100, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered before a match arrived");
    publish(&broker, "poll", 0, 30..40, 100, 10).await;
    let response = waiting.await.unwrap().expect("fetch").into_inner();
    let offsets: Vec<u64> = response.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![37]);
    assert_eq!(response.next_offset, 40);
}

#[tokio::test]
async fn a_malformed_filter_is_invalid_argument_naming_the_position() {
    let broker = TestBroker::start();
    broker.create_topic("bad", 1, TopicConfig::default()).await;
    let status = broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: "bad".into(),
            filter: r#"header.type = "order""#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("filter at byte 12: expected an operator"),
        "{}",
        status.message()
    );
    for filter in ["(".repeat(100), "x".repeat(5000), "key ==".into()] {
        let status = broker
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                topic: "bad".into(),
                filter: filter.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{filter}");
        assert!(status.message().contains("filter at byte"), "{status:?}");
    }
}

/// Reads batches until every partition's position reached `ends`; returns the
/// offsets of the messages per partition.
async fn collect_until(
    stream: &mut Streaming<SubscribeResponse>,
    ends: &BTreeMap<u32, u64>,
) -> BTreeMap<u32, Vec<u64>> {
    let mut got: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let deadline = Instant::now() + EVENT_TIMEOUT * 3;
    while ends.iter().any(|(p, end)| positions.get(p) < Some(end)) {
        assert!(
            Instant::now() < deadline,
            "stalled at {positions:?}, want {ends:?}"
        );
        let event = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event in time at {positions:?}, want {ends:?}"))
            .expect("stream open")
            .expect("stream not ended")
            .event
            .expect("an event");
        if let Event::Batch(batch) = event {
            for m in &batch.messages {
                got.entry(m.partition).or_default().push(m.offset);
            }
            for p in &batch.positions {
                positions.insert(p.partition, p.next_offset);
            }
        }
    }
    got
}

#[tokio::test]
async fn subscribe_delivers_only_matches_and_positions_pass_the_rest() {
    let broker = TestBroker::start();
    broker.create_topic("sub", 2, TopicConfig::default()).await;
    publish(&broker, "sub", 0, 0..2000, 3000, 500).await;
    publish(&broker, "sub", 1, 0..1000, 3000, 500).await;
    let mut stream = broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "sub".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            filter: r#"header.type == "order" && !exists(header.test)"#.into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let got = collect_until(&mut stream, &BTreeMap::from([(0, 2000), (1, 1000)])).await;
    let expected = |n: u64| (0..n).filter(|i| i % 100 == 37).collect::<Vec<_>>();
    assert_eq!(got.get(&0).cloned().unwrap_or_default(), expected(2000));
    assert_eq!(got.get(&1).cloned().unwrap_or_default(), expected(1000));
    // Live: skipped messages move the positions, the next match arrives.
    publish(&broker, "sub", 0, 2000..2138, 3000, 50).await;
    let got = collect_until(&mut stream, &BTreeMap::from([(0, 2138)])).await;
    assert_eq!(got.get(&0).cloned().unwrap_or_default(), vec![2037, 2137]);
    let metrics = broker.metrics_text();
    assert!(
        metric_value(
            &metrics,
            r#"tidelog_filtered_messages_total{kind="subscribe"}"#
        )
        .is_some_and(|v| v >= 2900.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_filter_that_matches_nothing_reports_every_partitions_end() {
    // Partition 0 takes two scans (the storage scans at most 16,384 records per
    // read); partition 1 reaches its end in the first. The first round moves both
    // without reaching every end and sends nothing (it is not yet a second since the
    // stream began): partition 1's end must still reach the client, with the batch
    // that tells of partition 0's end.
    let broker = TestBroker::start();
    broker
        .create_topic("nothing", 2, TopicConfig::default())
        .await;
    publish(&broker, "nothing", 0, 0..17_000, 10, 1000).await;
    publish(&broker, "nothing", 1, 0..100, 10, 100).await;
    let ends = BTreeMap::from([(0, 17_000), (1, 100)]);
    let earliest = Some(StartPosition {
        position: Some(Position::Earliest(Earliest {})),
    });
    let filter = r#"header.type == "none""#;
    let requests = [
        (
            "topic",
            SubscribeRequest {
                topic: "nothing".into(),
                start: earliest,
                ..Default::default()
            },
        ),
        (
            "pattern",
            SubscribeRequest {
                topic_pattern: "nothing".into(),
                start: earliest,
                ..Default::default()
            },
        ),
        (
            "group",
            SubscribeRequest {
                topic: "nothing".into(),
                group: Some(GroupMembership {
                    group_id: "nothing".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (what, request) in requests {
        let mut stream = broker
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                filter: filter.into(),
                ..request
            })
            .await
            .expect("subscribe")
            .into_inner();
        let got = collect_until(&mut stream, &ends).await;
        assert!(got.is_empty(), "{what}: {got:?}");
    }
}

#[tokio::test]
async fn six_hundred_kb_messages_of_which_one_percent_match_all_arrive() {
    // The last wave missed a consumer that stopped after 1 MiB: 150 messages of 600 KB
    // (90 MB), two of which match, through Fetch and Subscribe with default budgets.
    let broker = TestBroker::start();
    broker
        .create_topic("large", 1, TopicConfig::default())
        .await;
    publish(&broker, "large", 0, 0..150, 600 * 1024, 20).await;
    let filter = r#"header.type == "order""#;
    assert_eq!(fetch_all(&broker, "large", filter, 0).await, vec![37, 137]);
    let mut stream = broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "large".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let got = collect_until(&mut stream, &BTreeMap::from([(0, 150)])).await;
    assert_eq!(got[&0], vec![37, 137]);
}

#[tokio::test]
async fn a_group_member_commits_past_the_messages_its_filter_skips() {
    let broker = TestBroker::start();
    broker.create_topic("grp", 2, TopicConfig::default()).await;
    publish(&broker, "grp", 0, 0..1000, 3000, 500).await;
    publish(&broker, "grp", 1, 0..1000, 3000, 500).await;
    for (group, auto_commit_interval_ms) in [("auto", 100), ("manual", 0)] {
        let mut stream = broker
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                topic: "grp".into(),
                group: Some(GroupMembership {
                    group_id: group.into(),
                    auto_commit_interval_ms,
                    ..Default::default()
                }),
                filter: r#"header.type == "order""#.into(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let got = collect_until(&mut stream, &BTreeMap::from([(0, 1000), (1, 1000)])).await;
        let expected: Vec<u64> = (0..1000).filter(|i| i % 100 == 37).collect();
        let described = broker
            .groups()
            .await
            .describe_group(DescribeGroupRequest {
                group_id: group.into(),
            })
            .await
            .expect("describe group")
            .into_inner()
            .group
            .unwrap();
        assert_eq!(described.members[0].filter, r#"header.type == "order""#);
        assert_eq!(got[&0], expected, "{group}");
        assert_eq!(got[&1], expected, "{group}");
        if auto_commit_interval_ms > 0 {
            // The last match is 937: the committed offset passes the 62 skipped after
            // it, so a consumer never stalls behind them nor reads them again.
            let deadline = Instant::now() + EVENT_TIMEOUT;
            loop {
                let committed = broker
                    .groups()
                    .await
                    .fetch_offsets(FetchOffsetsRequest {
                        group_id: group.into(),
                        topic: Some("grp".into()),
                    })
                    .await
                    .expect("fetch offsets")
                    .into_inner()
                    .offsets;
                if committed.len() == 2 && committed.iter().all(|c| c.offset == 1000) {
                    break;
                }
                assert!(Instant::now() < deadline, "committed {committed:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        drop(stream);
    }
    let metrics = broker.metrics_text();
    assert!(
        metric_value(&metrics, r#"tidelog_filtered_messages_total{kind="group"}"#)
            .is_some_and(|v| v >= 3960.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_queue_with_a_filter_delivers_matches_and_settles_the_rest() {
    let broker = TestBroker::start();
    broker.create_topic("jobs", 1, TopicConfig::default()).await;
    publish(&broker, "jobs", 0, 0..1000, 3000, 500).await;
    let mut queues = QueuesClient::new(broker.channel().await);
    let status = queues
        .create_queue(CreateQueueRequest {
            name: "bad".into(),
            topic: "jobs".into(),
            filter: "json.a ==".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("filter at byte 9"), "{status:?}");
    let filter = r#"header.type == "order" || key == "eu-3""#;
    let created = queues
        .create_queue(CreateQueueRequest {
            name: "orders".into(),
            topic: "jobs".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(created.filter, filter);
    let mut delivered = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while delivered.len() < 11 {
        assert!(Instant::now() < deadline, "delivered {delivered:?}");
        let deliveries = queues
            .receive(ReceiveRequest {
                queue: "orders".into(),
                member: "w".into(),
                max_messages: 100,
                max_wait_ms: 1_000,
            })
            .await
            .expect("receive")
            .into_inner()
            .deliveries;
        let settlements = deliveries
            .iter()
            .map(|d| {
                let m = d.message.as_ref().unwrap();
                delivered.push(m.offset);
                Settlement {
                    partition: m.partition,
                    offset: m.offset,
                    ..Default::default()
                }
            })
            .collect();
        queues
            .settle(SettleRequest {
                queue: "orders".into(),
                settlements,
            })
            .await
            .expect("settle");
    }
    let mut expected: Vec<u64> = (0..1000).filter(|i| i % 100 == 37).collect();
    expected.insert(0, 3);
    assert_eq!(delivered, expected);
    // Nothing else comes, and every message is settled: the skipped ones as acked.
    let more = queues
        .receive(ReceiveRequest {
            queue: "orders".into(),
            member: "w".into(),
            max_messages: 100,
            max_wait_ms: 300,
        })
        .await
        .expect("receive")
        .into_inner()
        .deliveries;
    assert!(more.is_empty(), "{more:?}");
    let described = queues
        .describe_queue(DescribeQueueRequest {
            name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(described.filter, filter);
    assert_eq!(described.partitions[0].settled_below, 1000);
    assert_eq!(described.ready, 0);
    // An alter keeps the filter.
    let altered = queues
        .alter_queue(AlterQueueRequest {
            name: "orders".into(),
            config: Some(QueueConfig {
                max_deliveries: Some(9),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(altered.filter, filter);
    let metrics = broker.metrics_text();
    assert!(
        metric_value(&metrics, r#"tidelog_filtered_messages_total{kind="queue"}"#)
            .is_some_and(|v| v >= 989.0),
        "{metrics}"
    );
}

fn cli(broker: &TestBroker, args: &[&str]) -> std::process::Output {
    tidelog_command()
        .args(["--server", &broker.endpoint()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tidelog")
}

fn lines(output: &std::process::Output) -> Vec<String> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_cli_filters_fetch_follow_group_and_queue() {
    let broker = TestBroker::start();
    broker.create_topic("cli", 1, TopicConfig::default()).await;
    publish(&broker, "cli", 0, 0..500, 200, 500).await;
    let filter = r#"header.type == "order" || key == "us-1""#;
    let keys = |output: &std::process::Output| -> Vec<String> {
        lines(output)
            .iter()
            .map(|l| l.split('\t').next().unwrap_or("").to_string())
            .collect()
    };
    let expected = vec!["us-1", "us-37", "us-137", "eu-237", "us-337", "us-437"];
    // Fetch (no --follow).
    let output = cli(
        &broker,
        &["consume", "cli", "--print-key", "--filter", filter],
    );
    assert_eq!(keys(&output), expected);
    // --follow stops at --count.
    let output = cli(
        &broker,
        &[
            "consume",
            "cli",
            "--print-key",
            "--follow",
            "-n",
            "3",
            "--filter",
            filter,
        ],
    );
    assert_eq!(keys(&output), expected[..3]);
    // A group commits past what it skipped: a second run prints nothing new.
    let output = cli(
        &broker,
        &[
            "consume",
            "cli",
            "--print-key",
            "--group",
            "g",
            "--filter",
            filter,
        ],
    );
    assert_eq!(keys(&output), expected);
    let committed = broker
        .groups()
        .await
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "g".into(),
            topic: Some("cli".into()),
        })
        .await
        .expect("fetch offsets")
        .into_inner()
        .offsets;
    assert_eq!(
        committed.iter().map(|c| c.offset).collect::<Vec<_>>(),
        vec![500]
    );
    let output = cli(
        &broker,
        &[
            "consume",
            "cli",
            "--print-key",
            "--group",
            "g",
            "--filter",
            filter,
        ],
    );
    assert!(keys(&output).is_empty());
    // A bad filter: exit 1, the position, in the CLI's terms.
    let output = cli(&broker, &["consume", "cli", "--filter", "key = 1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--filter at byte 4: expected an operator"),
        "{stderr}"
    );
    // Queues: create with a filter, describe shows it.
    let output = cli(
        &broker,
        &[
            "queue", "create", "q", "--topic", "cli", "--from", "earliest", "--filter", filter,
        ],
    );
    assert!(lines(&output).iter().any(|l| l.contains(filter)));
    let output = cli(&broker, &["queue", "describe", "q"]);
    assert!(
        lines(&output)
            .iter()
            .any(|l| l.contains("filter") && l.contains(filter))
    );
    let output = cli(&broker, &["--json", "queue", "describe", "q"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["filter"], filter);
    let output = cli(
        &broker,
        &["queue", "consume", "q", "-n", "6", "--print-key"],
    );
    assert_eq!(keys(&output), expected);
}

/// Runs `tidelog --json bench consume <args>`; returns (exit code, JSON, stderr).
fn bench_consume(broker: &TestBroker, args: &[&str]) -> (i32, serde_json::Value, String) {
    let output = tidelog_command()
        .args(["--server", &broker.endpoint(), "--json", "bench", "consume"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tidelog bench consume");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn bench_consume_with_a_filter_receives_exactly_the_matching_messages() {
    let broker = TestBroker::start();
    for mode in [
        &[][..],
        &["--fetch"][..],
        &["--group", "--consumers", "2"][..],
    ] {
        let mut args = vec![
            "--messages",
            "20000",
            "--partitions",
            "2",
            "--filter",
            "header.bench-pct == 7 || header.bench-pct == 50",
        ];
        args.extend_from_slice(mode);
        let (code, json, stderr) = bench_consume(&broker, &args);
        assert_eq!(code, 0, "{mode:?}: {stderr}\n{json:#}");
        assert_eq!(json["validation"]["ok"], true, "{mode:?}: {json:#}");
        assert_eq!(
            json["consumers"]["total"]["messages"], 400,
            "{mode:?}: {json:#}"
        );
        assert_eq!(json["log"]["messages"], 20000, "{mode:?}: {json:#}");
        assert!(json["log"]["messages_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(
            json["parameters"]["filter"],
            "header.bench-pct == 7 || header.bench-pct == 50"
        );
    }
    // A bad filter is a usage error (exit 2) naming the position.
    let output = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "bench",
            "consume",
            "--filter",
            "header.x =",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--filter at byte 9: expected an operator"),
        "{stderr}"
    );
}

#[tokio::test]
async fn two_filtered_members_share_a_group_through_a_rebalance_without_loss() {
    let broker = TestBroker::start();
    broker
        .create_topic("share", 4, TopicConfig::default())
        .await;
    for partition in 0..4 {
        publish(&broker, "share", partition, 0..1000, 1000, 500).await;
    }
    let subscribe = || async {
        broker
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                topic: "share".into(),
                group: Some(GroupMembership {
                    group_id: "pair".into(),
                    auto_commit_interval_ms: 100,
                    ..Default::default()
                }),
                // 1 in 100 matches; at most 3 per batch, so the rebalance falls mid-way.
                filter: r#"header.type == "order""#.into(),
                max_batch_messages: 3,
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner()
    };
    let mut first = subscribe().await;
    // The first member reads a little, then a second joins and takes some partitions.
    let mut got: Vec<(u32, u64)> = Vec::new();
    while got.len() < 5 {
        if let Some(Event::Batch(batch)) = next_event(&mut first).await {
            got.extend(batch.messages.iter().map(|m| (m.partition, m.offset)));
        }
    }
    let mut second = subscribe().await;
    let expected: Vec<(u32, u64)> = (0..4)
        .flat_map(|p| (0..1000).filter(|i| i % 100 == 37).map(move |i| (p, i)))
        .collect();
    let deadline = Instant::now() + EVENT_TIMEOUT * 3;
    while got.len() < expected.len() {
        assert!(Instant::now() < deadline, "got {got:?}");
        let event = tokio::select! {
            event = next_event(&mut first) => event,
            event = next_event(&mut second) => event,
        };
        if let Some(Event::Batch(batch)) = event {
            got.extend(batch.messages.iter().map(|m| (m.partition, m.offset)));
        }
    }
    // A duplicate would have filled the count with a message missing.
    got.sort_unstable();
    assert_eq!(got, expected, "each matching message once");
}

/// The next event of a stream.
async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Option<Event> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("stream not ended")
        .event
}
