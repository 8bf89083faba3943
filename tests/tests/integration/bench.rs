//! `tidelog bench` against a live tidelogd: short produce, consume and e2e runs
//! report non-zero throughput and zero validation errors, and a topic holding
//! messages the bench did not write fails validation with exit code 1.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;
use tidelog_tests::{TestBroker, tidelog_command};

/// Runs `tidelog --server <broker> --json bench <args>`; returns (exit code, JSON
/// document, stderr).
fn bench(broker: &TestBroker, args: &[&str]) -> (i32, Value, String) {
    let output = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .arg("--json")
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tidelog bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("bench printed no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}")
    });
    (output.status.code().unwrap_or(-1), json, stderr)
}

/// Asserts a clean run: exit 0, validation ok, every listed side moved messages.
fn assert_clean(code: i32, json: &Value, stderr: &str, sides: &[&str], messages: u64) {
    assert_eq!(code, 0, "bench failed: {stderr}\n{json:#}");
    assert_eq!(json["validation"]["ok"], true, "{json:#}");
    assert_eq!(json["validation"]["errors"], 0, "{json:#}");
    for side in sides {
        let total = &json[side]["total"];
        assert_eq!(total["messages"], messages, "{side}: {json:#}");
        assert!(
            total["messages_per_s"].as_f64().unwrap() > 0.0,
            "{side}: {json:#}"
        );
        assert!(
            total["mb_per_s"].as_f64().unwrap() > 0.0,
            "{side}: {json:#}"
        );
        assert!(
            total["latency"].is_object() || *side == "consumers",
            "{side}: {json:#}"
        );
    }
}

#[test]
fn bench_produce_reports_throughput_and_latency_for_unary_and_stream() {
    let broker = TestBroker::start();
    let (code, json, stderr) = bench(
        &broker,
        &[
            "produce",
            "--messages",
            "6000",
            "--batch",
            "500",
            "--producers",
            "2",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers"], 6000);
    assert_eq!(json["parameters"]["stream"], false);
    assert_eq!(json["producers"]["actors"].as_array().unwrap().len(), 2);
    let latency = &json["producers"]["total"]["latency"];
    assert_eq!(latency["count"], 12, "one sample per request: {json:#}");
    for field in ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"] {
        assert!(latency[field].as_u64().unwrap() > 0, "{field}: {json:#}");
    }
    assert_eq!(json["topic"]["created"], true);
    assert_eq!(json["topic"]["deleted"], true);

    let (code, json, stderr) = bench(
        &broker,
        &[
            "produce",
            "--messages",
            "5000",
            "--batch",
            "250",
            "--stream",
            "--in-flight",
            "4",
            "--partitions",
            "3",
            "--fsync",
            "never",
            "--ack",
            "written",
            "--message-size",
            "1KiB",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers"], 5000);
    assert_eq!(json["parameters"]["fsync"], "never");
    assert_eq!(json["producers"]["total"]["payload_bytes"], 5000 * 1024);
}

#[test]
fn bench_consume_validates_what_it_reads_back() {
    let broker = TestBroker::start();
    // Partitions divided among plain subscribers.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--messages",
            "8000",
            "--batch",
            "400",
            "--stream",
            "--partitions",
            "2",
            "--consumers",
            "2",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 8000);
    assert_eq!(json["prefill"]["messages"], 8000);
    assert_eq!(json["validation"]["messages_checked"], 8000);

    // A consumer group, and fetch consumers, on the same kept topic.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--topic",
            "bench-kept",
            "--keep",
            "--messages",
            "6000",
            "--batch",
            "300",
            "--partitions",
            "3",
            "--consumers",
            "2",
            "--group",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 6000);
    assert_eq!(json["topic"]["deleted"], false);
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--topic",
            "bench-kept",
            "--consumers",
            "2",
            "--fetch",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 6000);
    assert_eq!(json["topic"]["created"], false);
    // Fan-out: every consumer reads all of it.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--topic",
            "bench-kept",
            "--consumers",
            "3",
            "--fanout",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 18_000);
    // A consumer group in batch form (SubscribeBatches with a group), validated the
    // same way.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--topic",
            "bench-kept",
            "--consumers",
            "2",
            "--group",
            "--batch-wire",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 6000);
}

#[test]
fn bench_e2e_measures_publish_to_receive() {
    let broker = TestBroker::start();
    let (code, json, stderr) = bench(
        &broker,
        &[
            "e2e",
            "--messages",
            "6000",
            "--batch",
            "200",
            "--stream",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--partitions",
            "2",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers", "consumers"], 6000);
    let latency = &json["consumers"]["total"]["latency"];
    assert_eq!(latency["count"], 6000, "one sample per message: {json:#}");
    assert!(latency["p99_us"].as_u64().unwrap() >= latency["p50_us"].as_u64().unwrap());

    // A time budget and a target rate, with a group.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "e2e",
            "--duration",
            "1s",
            "--rate",
            "5k",
            "--batch",
            "100",
            "--consumers",
            "2",
            "--partitions",
            "2",
            "--group",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{json:#}");
    assert_eq!(json["validation"]["ok"], true, "{json:#}");
    let produced = json["producers"]["total"]["messages"].as_u64().unwrap();
    // At most the target rate (a slow CI disk may keep it below).
    assert!(
        (100..=6000).contains(&produced),
        "at most about 5k/s for 1s: {json:#}"
    );
    assert_eq!(json["consumers"]["total"]["messages"], produced, "{json:#}");
}

#[test]
fn bench_consume_fails_on_messages_it_did_not_write() {
    let broker = TestBroker::start();
    let mut produce = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(["topic", "create", "foreign"])
        .output()
        .expect("running tidelog");
    assert!(produce.status.success(), "{produce:?}");
    let mut child = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(["produce", "foreign", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tidelog produce");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"these lines are\nnot bench payloads, so the checksum cannot match them\n")
        .expect("writing lines");
    produce = child
        .wait_with_output()
        .expect("waiting for tidelog produce");
    assert!(produce.status.success(), "{produce:?}");

    let (code, json, stderr) = bench(&broker, &["consume", "--topic", "foreign"]);
    assert_eq!(code, 1, "validation errors exit 1: {stderr}\n{json:#}");
    assert_eq!(json["validation"]["ok"], false);
    assert_eq!(json["validation"]["errors"], 2, "{json:#}");
    let first = json["validation"]["first_errors"][0].as_str().unwrap();
    assert!(
        first.contains("checksum") || first.contains("shorter"),
        "{first}"
    );
    assert!(stderr.contains("validation failed"), "{stderr}");
}

/// `--batch-wire` produces through tidelog-client's `Producer::send_batch` and reads
/// through its `Subscription`, `GroupMember` and `Client::fetch`: every size the bench
/// allows (from its 32-byte header up to 1 MiB; 0 B is below the header) round-trips
/// validated, and `--ack none` (the library's `Ack::None`) stores every message.
#[test]
fn bench_batch_wire_goes_through_the_library_at_every_size() {
    let broker = TestBroker::start();
    for (size, bytes, batch, messages) in [
        ("32", 32, "500", 3000u64),
        ("100", 100, "500", 4000),
        ("3KB", 3000, "100", 1000),
        ("1MiB", 1 << 20, "4", 12),
    ] {
        let (code, json, stderr) = bench(
            &broker,
            &[
                "consume",
                "--batch-wire",
                "--stream",
                "--message-size",
                size,
                "--batch",
                batch,
                "--messages",
                &messages.to_string(),
                "--partitions",
                "2",
                "--consumers",
                "2",
            ],
        );
        assert_clean(code, &json, &stderr, &["consumers"], messages);
        assert_eq!(json["prefill"]["messages"], messages, "{size}: {json:#}");
        assert_eq!(
            json["consumers"]["total"]["payload_bytes"],
            messages * bytes,
            "{size}: {json:#}"
        );
    }

    // Produce alone, with ids, zstd and in-flight requests; latency per request.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "produce",
            "--batch-wire",
            "--stream",
            "--ids",
            "--compression",
            "zstd",
            "--messages",
            "5000",
            "--batch",
            "250",
            "--in-flight",
            "4",
            "--partitions",
            "3",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers"], 5000);
    assert_eq!(
        json["producers"]["total"]["latency"]["count"], 20,
        "one sample per send_batch: {json:#}"
    );

    // --ack none: no offsets come back, yet every message is stored (the consumers of
    // an e2e run read all of them, validated).
    let (code, json, stderr) = bench(
        &broker,
        &[
            "e2e",
            "--batch-wire",
            "--stream",
            "--ack",
            "none",
            "--messages",
            "3000",
            "--batch",
            "100",
            "--partitions",
            "2",
            "--consumers",
            "2",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers", "consumers"], 3000);
    assert_eq!(json["parameters"]["ack"], "none", "{json:#}");

    // The kept topic, read by fetch and by a group in batch form.
    let (code, json, stderr) = bench(
        &broker,
        &[
            "consume",
            "--topic",
            "bw-kept",
            "--keep",
            "--batch-wire",
            "--stream",
            "--ack",
            "none",
            "--messages",
            "3000",
            "--batch",
            "300",
            "--partitions",
            "3",
        ],
    );
    assert_clean(code, &json, &stderr, &["consumers"], 3000);
    for mode in ["--fetch", "--group"] {
        let (code, json, stderr) = bench(
            &broker,
            &[
                "consume",
                "--topic",
                "bw-kept",
                "--batch-wire",
                "--consumers",
                "2",
                mode,
            ],
        );
        assert_clean(code, &json, &stderr, &["consumers"], 3000);
    }
}

/// A message missing from the middle of a producer's sequence is found when the bench
/// reads in batch form through the library (subscription, fetch and group alike): the
/// topic holds a bench run's messages copied with one left out.
#[test]
fn bench_batch_wire_reads_find_a_gap() {
    let broker = TestBroker::start();
    let (code, json, stderr) = bench(
        &broker,
        &[
            "produce",
            "--topic",
            "whole",
            "--keep",
            "--batch-wire",
            "--stream",
            "--messages",
            "300",
            "--batch",
            "100",
        ],
    );
    assert_clean(code, &json, &stderr, &["producers"], 300);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        use tidelog_client::{Ack, Client, Producer, ProducerConfig, Record};
        let client = Client::connect(&broker.endpoint()).await.expect("connect");
        client
            .create_topic("gappy", 1, tidelog_client::proto::TopicConfig::default())
            .await
            .expect("create");
        let fetched = client
            .fetch(
                "whole",
                0,
                0,
                &tidelog_client::FetchOptions {
                    max_messages: 1000,
                    ..tidelog_client::FetchOptions::default()
                },
            )
            .await
            .expect("fetch");
        assert_eq!(fetched.messages.len(), 300);
        let records: Vec<Record> = fetched
            .messages
            .into_iter()
            .filter(|m| m.offset != 150)
            .map(|m| Record::new("", m.value))
            .collect();
        let producer = Producer::new(&client, ProducerConfig::default());
        let stored = producer
            .send_batch("gappy", 0, Ack::Durable, &records)
            .await
            .expect("send_batch")
            .await
            .expect("stored");
        assert_eq!(stored.len(), 299);
        producer.close().await.expect("close");
    });
    for mode in [None, Some("--fetch"), Some("--group")] {
        let mut args = vec!["consume", "--topic", "gappy", "--batch-wire"];
        args.extend(mode);
        let (code, json, stderr) = bench(&broker, &args);
        assert_eq!(
            code, 1,
            "{mode:?}: the gap fails the run: {stderr}\n{json:#}"
        );
        assert_eq!(json["validation"]["ok"], false, "{json:#}");
        let errors = json["validation"]["first_errors"].to_string();
        assert!(
            errors.contains("producer 0 sequence 151, expected 150"),
            "{mode:?}: {errors}"
        );
        assert_eq!(json["consumers"]["total"]["messages"], 299, "{json:#}");
    }
}

/// `--pin`: each producer publishes to its own partition only (its number mod
/// `--partitions`), so partition k holds producer k's messages and no other's; without
/// it, each producer goes round the partitions. Fewer producers than partitions is a
/// usage error.
#[test]
fn bench_pin_keeps_each_producer_on_its_own_partition() {
    let broker = TestBroker::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (pin, topic) in [(true, "pinned"), (false, "spread")] {
        let mut args = vec![
            "produce",
            "--batch-wire",
            "--stream",
            "--topic",
            topic,
            "--keep",
            "--messages",
            "6000",
            "--batch",
            "200",
            "--producers",
            "3",
            "--partitions",
            "3",
        ];
        if pin {
            args.push("--pin");
        }
        let (code, json, stderr) = bench(&broker, &args);
        assert_clean(code, &json, &stderr, &["producers"], 6000);
        for partition in 0..3u32 {
            // The producer id of every message in the partition (payload bytes 8..12).
            let producers: std::collections::BTreeSet<u32> = runtime.block_on(async {
                let response = broker
                    .consumer()
                    .await
                    .fetch(tidelog_proto::v1::FetchRequest {
                        topic: topic.into(),
                        partition,
                        max_messages: 10_000,
                        ..Default::default()
                    })
                    .await
                    .expect("fetch")
                    .into_inner();
                response
                    .messages
                    .iter()
                    .map(|m| u32::from_le_bytes(m.value[8..12].try_into().unwrap()))
                    .collect()
            });
            let expected: std::collections::BTreeSet<u32> = if pin {
                [partition].into()
            } else {
                (0..3).collect()
            };
            assert_eq!(producers, expected, "{topic} partition {partition}");
        }
    }
    let output = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args([
            "bench",
            "produce",
            "--pin",
            "--producers",
            "2",
            "--partitions",
            "3",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running tidelog bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--pin with 2 producers leaves some of the 3 partitions empty"),
        "{stderr}"
    );
}
