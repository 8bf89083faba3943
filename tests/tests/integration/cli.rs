//! The `tidelog` CLI binary against a live tidelogd: topics, produce/consume round
//! trips, consumer groups, and every `group reset-offsets` mode in dry run and
//! execute, checked against `group describe --json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidelog_proto::v1::{AckLevel, Message, PublishRequest};
use tidelog_tests::{TestBroker, now_ms, tidelog_command};

/// Exit code, stdout and stderr of one `tidelog` run against `broker`.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn ok(self, what: &str) -> Run {
        assert_eq!(
            self.code, 0,
            "tidelog {what} failed ({}):\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

pub(crate) fn cli_with_input(broker: &TestBroker, args: &[&str], input: &[u8]) -> Run {
    let mut child = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tidelog");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("waiting for tidelog");
    let _ = writer.join();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub(crate) fn cli(broker: &TestBroker, args: &[&str]) -> Run {
    cli_with_input(broker, args, b"")
}

/// Committed offset per (topic, partition) from `group describe --json`.
fn committed(broker: &TestBroker, group: &str) -> BTreeMap<(String, u64), Option<u64>> {
    let described = cli(broker, &["group", "describe", group, "--json"]);
    if described.code == 1 && described.stderr.contains("not found") {
        return BTreeMap::new(); // created by its first executed reset
    }
    described.ok("group describe").json()["partitions"]
        .as_array()
        .expect("partitions is an array")
        .iter()
        .map(|p| {
            (
                (
                    p["topic"].as_str().unwrap().to_string(),
                    p["partition"].as_u64().unwrap(),
                ),
                p["committed_offset"].as_u64(),
            )
        })
        .collect()
}

fn offsets(broker: &TestBroker, group: &str, topic: &str) -> Vec<Option<u64>> {
    committed(broker, group)
        .into_iter()
        .filter(|((t, _), _)| t == topic)
        .map(|(_, o)| o)
        .collect()
}

#[test]
fn cli_topics_produce_and_consume_round_trip() {
    let broker = TestBroker::start();

    let created = cli(
        &broker,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "2",
            "--retention",
            "7d",
            "--retention-bytes",
            "1GiB",
            "--json",
        ],
    )
    .ok("topic create");
    let topic = created.json();
    assert_eq!(topic["name"], "orders");
    assert_eq!(topic["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(topic["config"]["retention_ms"], 7 * 86_400_000u64);
    assert_eq!(topic["config"]["retention_bytes"], 1u64 << 30);

    let again = cli(&broker, &["topic", "create", "orders"]);
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .starts_with("error: creating topic \"orders\" failed:"),
        "{}",
        again.stderr
    );
    assert_eq!(again.stderr.lines().count(), 1);

    let listed = cli(&broker, &["topic", "list"]).ok("topic list");
    assert!(listed.stdout.starts_with("TOPIC"), "{}", listed.stdout);
    assert!(listed.stdout.contains("orders"), "{}", listed.stdout);

    let altered = cli(
        &broker,
        &[
            "topic",
            "alter",
            "orders",
            "--retention",
            "1d",
            "--ttl",
            "1h",
            "--fsync",
            "interval:10ms",
        ],
    )
    .ok("topic alter");
    assert!(
        altered.stdout.contains("retention              1d"),
        "{}",
        altered.stdout
    );
    let described = cli(&broker, &["topic", "describe", "orders", "--json"]).ok("topic describe");
    let config = &described.json()["config"];
    assert_eq!(config["retention_ms"], 86_400_000u64);
    assert_eq!(config["default_ttl_ms"], 3_600_000u64);
    assert_eq!(config["fsync"], "interval:10ms");
    cli(
        &broker,
        &[
            "topic", "alter", "orders", "--ttl", "off", "--fsync", "always",
        ],
    )
    .ok("topic alter off");
    let described = cli(&broker, &["topic", "describe", "orders"]).ok("topic describe");
    assert!(
        described.stdout.contains("ttl                    none"),
        "{}",
        described.stdout
    );
    assert!(
        described.stdout.contains("PARTITION"),
        "{}",
        described.stdout
    );

    // Lines from stdin, each acknowledged with its offset.
    let produced = cli_with_input(
        &broker,
        &["produce", "orders", "--partition", "0"],
        b"alpha\nbeta\ngamma\n",
    )
    .ok("produce");
    assert_eq!(
        produced.stdout,
        "partition 0 offset 0\npartition 0 offset 1\npartition 0 offset 2\n"
    );
    // Keys split off each line, with headers; a JSON summary.
    let produced = cli_with_input(
        &broker,
        &[
            "produce",
            "orders",
            "--partition",
            "1",
            "--key-separator",
            ":",
            "--header",
            "src=cli",
            "--header",
            "n=1",
            "--quiet",
            "--json",
        ],
        b"k1:v1\nk2:v2:with colon\n",
    )
    .ok("produce with keys");
    let summary = produced.json();
    assert_eq!(summary["messages"], 2);
    assert_eq!(summary["partitions"][0]["partition"], 1);
    // A file, in batches over the stream.
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines: String = (0..2_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(file.path(), &lines).unwrap();
    let produced = cli(
        &broker,
        &[
            "produce",
            "orders",
            "--partition",
            "0",
            "--file",
            file.path().to_str().unwrap(),
            "--quiet",
            "--batch-messages",
            "300",
        ],
    )
    .ok("produce --file");
    assert!(
        produced.stdout.starts_with("produced 2000 messages"),
        "{}",
        produced.stdout
    );
    assert!(
        produced.stdout.contains("offsets 0:3-2002"),
        "{}",
        produced.stdout
    );

    // Read back: values, positions, JSON lines.
    let consumed = cli(
        &broker,
        &["consume", "orders", "--partition", "0", "-n", "3"],
    )
    .ok("consume");
    assert_eq!(consumed.stdout, "alpha\nbeta\ngamma\n");
    let consumed = cli(
        &broker,
        &[
            "consume",
            "orders",
            "--partition",
            "0",
            "--from",
            "2",
            "-n",
            "2",
        ],
    )
    .ok("consume --from");
    assert_eq!(consumed.stdout, "gamma\nline 0\n");
    let consumed = cli(&broker, &["consume", "orders", "--partition", "0"]).ok("consume all");
    assert_eq!(consumed.stdout.lines().count(), 2_003);
    assert!(consumed.stdout.ends_with("line 1999\n"));
    let consumed = cli(
        &broker,
        &["consume", "orders", "--partition", "1", "--format", "json"],
    )
    .ok("consume json");
    let messages: Vec<Value> = consumed
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["partition"], 1);
    assert_eq!(messages[0]["offset"], 0);
    assert_eq!(messages[0]["key"], "k1");
    assert_eq!(messages[0]["value"], "v1");
    assert_eq!(messages[1]["value"], "v2:with colon");
    assert_eq!(messages[0]["headers"][0]["key"], "src");
    assert_eq!(messages[0]["headers"][0]["value"], "cli");
    assert!(messages[0]["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    let consumed = cli(
        &broker,
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--print-key",
            "--key-separator",
            "=",
        ],
    )
    .ok("consume keys");
    assert_eq!(consumed.stdout, "k1=v1\nk2=v2:with colon\n");
    let consumed = cli(
        &broker,
        &["consume", "orders", "--from", "2999-01-01T00:00:00Z"],
    )
    .ok("consume from the future");
    assert_eq!(consumed.stdout, "");
    let consumed = cli(
        &broker,
        &[
            "consume",
            "orders",
            "--from",
            "2000-01-01T00:00:00Z",
            "--partition",
            "1",
        ],
    )
    .ok("consume by time");
    assert_eq!(consumed.stdout.lines().count(), 2);
    let consumed = cli(
        &broker,
        &[
            "consume",
            "orders",
            "--follow",
            "--partition",
            "1",
            "-n",
            "2",
            "--from",
            "earliest",
        ],
    )
    .ok("consume --follow -n");
    assert_eq!(consumed.stdout, "v1\nv2:with colon\n");

    // As a group: what was printed is committed, the next run continues after it.
    let first = cli(
        &broker,
        &["consume", "orders", "--group", "readers", "-n", "5"],
    )
    .ok("consume --group -n");
    assert_eq!(first.stdout.lines().count(), 5);
    wait_until_no_members(&broker, "readers");
    let after_first: u64 = offsets(&broker, "readers", "orders")
        .iter()
        .map(|o| o.unwrap_or(0))
        .sum();
    assert_eq!(after_first, 5, "{:?}", committed(&broker, "readers"));
    let rest = cli(&broker, &["consume", "orders", "--group", "readers"]).ok("consume --group");
    assert_eq!(rest.stdout.lines().count(), 2_005 - 5);
    wait_until_no_members(&broker, "readers");
    assert_eq!(
        offsets(&broker, "readers", "orders"),
        vec![Some(2_003), Some(2)]
    );
    let listed = cli(&broker, &["group", "list", "--json"]).ok("group list");
    assert_eq!(listed.json()["groups"][0]["group_id"], "readers");
    let described = cli(&broker, &["group", "describe", "readers"]).ok("group describe");
    assert!(
        described.stdout.starts_with("group readers  state EMPTY"),
        "{}",
        described.stdout
    );
    assert!(described.stdout.contains("LAG"), "{}", described.stdout);

    // Errors from the broker are one line with what to do.
    let missing = cli(&broker, &["consume", "nope"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("not found") || missing.stderr.contains("NOT_FOUND"),
        "{}",
        missing.stderr
    );
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    let bad_partition = cli(&broker, &["consume", "orders", "--partition", "7"]);
    assert_eq!(bad_partition.code, 1);
    assert!(
        bad_partition.stderr.contains("there is no partition 7"),
        "{}",
        bad_partition.stderr
    );

    cli(&broker, &["group", "delete", "readers"]).ok("group delete");
    cli(&broker, &["topic", "delete", "orders"]).ok("topic delete");
    let gone = cli(&broker, &["topic", "describe", "orders"]);
    assert_eq!(gone.code, 1);
    assert!(
        gone.stderr
            .starts_with("error: describing topic \"orders\" failed:"),
        "{}",
        gone.stderr
    );
}

/// `YYYY-MM-DDTHH:MM:SS.sssZ` (the CLI's own parser is tested in its crate; this one
/// is independent of it).
pub(crate) fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

/// Ten messages in each of the topic's two partitions, with timestamps 10h, 9h, ...,
/// 1h before `base_ms`.
async fn publish_hourly(broker: &TestBroker, topic: &str, base_ms: i64) {
    let mut publisher = broker.publisher().await;
    for partition in 0..2u32 {
        let messages = (0..10i64)
            .map(|i| Message {
                value: format!("p{partition}-{i}").into_bytes().into(),
                timestamp_ms: Some(base_ms - (10 - i) * 3_600_000),
                partition: Some(partition),
                ..Message::default()
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
    }
}

/// Runs a reset as a dry run (checking nothing moved) and then with --execute
/// (checking `group describe` shows the new offsets). Returns the new offsets.
fn reset(broker: &TestBroker, group: &str, topic: &str, args: &[&str], expected: &[Option<u64>]) {
    let before = offsets(broker, group, topic);
    let mut dry: Vec<&str> = vec!["group", "reset-offsets", "--group", group];
    dry.extend_from_slice(args);
    let mut json = dry.clone();
    json.push("--json");
    let planned = cli(broker, &json).ok(&format!("reset {args:?} dry run"));
    let plan = planned.json();
    assert_eq!(plan["executed"], false);
    assert_eq!(
        offsets(broker, group, topic),
        before,
        "a dry run of {args:?} changed offsets"
    );
    let table = cli(broker, &dry).ok("reset dry run table");
    assert!(table.stdout.starts_with("GROUP"), "{}", table.stdout);
    assert!(table.stderr.contains("dry run"), "{}", table.stderr);

    let mut execute = json.clone();
    execute.push("--execute");
    let done = cli(broker, &execute).ok(&format!("reset {args:?} --execute"));
    let done = done.json();
    assert_eq!(done["executed"], true, "{done}");
    assert_eq!(
        done["changes"], plan["changes"],
        "execute differs from its dry run for {args:?}"
    );
    assert_eq!(
        offsets(broker, group, topic),
        expected,
        "after reset {args:?}"
    );
}

#[tokio::test]
async fn cli_reset_offsets_every_mode_dry_run_and_execute() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "events", "--partitions", "2"]).ok("topic create");
    let base = now_ms();
    publish_hourly(&broker, "events", base).await;
    let g = "resetters";
    let events = |spec: &str| format!("--topic={spec}");

    // A group is created by its first executed reset.
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-offset", "3"],
        &[Some(3), Some(3)],
    );
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-earliest"],
        &[Some(0), Some(0)],
    );
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-latest"],
        &[Some(10), Some(10)],
    );
    // Clamped to the end.
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-offset", "99"],
        &[Some(10), Some(10)],
    );
    // ... and says so, as Kafka's tool warns: a note under the table, `clamped_from` in
    // the JSON.
    let dry_clamp = |mode: &[&str], note: &str, new_offset: u64, clamped_from: i64| {
        let mut args = vec!["group", "reset-offsets", "--group", g, "--topic=events:1"];
        args.extend_from_slice(mode);
        let told = cli(&broker, &args).ok("clamped dry run");
        assert!(told.stderr.contains(note), "{}", told.stderr);
        args.push("--json");
        let changes = cli(&broker, &args).ok("clamped dry run, JSON").json()["changes"].clone();
        assert_eq!(changes[0]["new_offset"], new_offset, "{changes}");
        assert_eq!(changes[0]["clamped_from"], clamped_from, "{changes}");
        // The topic the offset belongs to, as `topic describe` shows its id.
        let described = cli(&broker, &["topic", "describe", "events", "--json"])
            .ok("topic describe")
            .json();
        assert_eq!(changes[0]["topic_id"], described["topic_id"], "{changes}");
        assert!(changes[0]["topic_id"].is_string(), "{changes}");
    };
    dry_clamp(
        &["--to-offset", "99"],
        "events/1: offset 99 is past the end of the log; set to the end, 10",
        10,
        99,
    );
    // A shift below offset 0 says what it asked for, not 0.
    dry_clamp(
        &["--shift-by", "-4000"],
        "events/1: offset -3990 is below 0 (the shift went past the first offset); set to the log start, 0",
        0,
        -3990,
    );
    // Several topics are planned by dry runs and committed by one explicit request,
    // whose offsets are already clamped: what was asked comes from the plan.
    cli(&broker, &["topic", "create", "quiet", "--partitions", "1"]).ok("topic create");
    let both = [
        "group",
        "reset-offsets",
        "--group",
        "clampers",
        "--topic=events:0",
        "--topic=quiet",
        "--to-offset",
        "99",
        "--execute",
        "--json",
    ];
    let done = cli(&broker, &both)
        .ok("clamped execute over two topics")
        .json();
    assert_eq!(done["executed"], true, "{done}");
    let moved: Vec<(String, u64, u64)> = done["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["topic"].as_str().unwrap().to_string(),
                c["new_offset"].as_u64().unwrap(),
                c["clamped_from"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        moved,
        vec![("events".to_string(), 10, 99), ("quiet".to_string(), 0, 99)]
    );
    // The first message at or after 7h30m before base is the one of 7h before (i = 3).
    let datetime = rfc3339(base - 7 * 3_600_000 - 1_800_000);
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-datetime", &datetime],
        &[Some(3), Some(3)],
    );
    // With an offset instead of Z.
    let local = rfc3339(base - 2 * 3_600_000 - 1_800_000 + 3_600_000)
        .replace('Z', "+01:00")
        .to_string();
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-datetime", &local],
        &[Some(8), Some(8)],
    );
    // Now minus 5h30m: the message of 5h before base (i = 5).
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--by-duration", "PT5H30M"],
        &[Some(5), Some(5)],
    );
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--shift-by", "-2"],
        &[Some(3), Some(3)],
    );
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--shift-by", "+4"],
        &[Some(7), Some(7)],
    );
    reset(
        &broker,
        g,
        "events",
        &[&events("events"), "--to-current"],
        &[Some(7), Some(7)],
    );
    // One partition only, then every topic of the group.
    reset(
        &broker,
        g,
        "events",
        &[&events("events:1"), "--to-earliest"],
        &[Some(7), Some(0)],
    );
    reset(
        &broker,
        g,
        "events",
        &["--all-topics", "--shift-by", "1"],
        &[Some(8), Some(1)],
    );
    // Two --topic flags: planned per topic, executed at once.
    cli(&broker, &["topic", "create", "other"]).ok("topic create other");
    reset(
        &broker,
        g,
        "events",
        &[&events("events:0"), &events("other"), "--to-offset", "2"],
        &[Some(2), Some(1)],
    );
    assert_eq!(offsets(&broker, g, "other"), vec![Some(0)]);

    // The dry-run table has the current and new offsets.
    let table = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--topic",
            "events",
            "--to-latest",
        ],
    )
    .ok("table");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET"
        ]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [g, "events", "0", "2", "10"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [g, "events", "1", "1", "10"]
    );
}

#[tokio::test]
async fn cli_export_then_from_file_round_trip() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "events", "--partitions", "2"]).ok("topic create");
    publish_hourly(&broker, "events", now_ms()).await;
    let g = "exporters";
    cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--topic",
            "events:0",
            "--to-offset",
            "4",
            "--execute",
        ],
    )
    .ok("seed p0");
    cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--topic",
            "events:1",
            "--to-offset",
            "6",
            "--execute",
        ],
    )
    .ok("seed p1");

    let exported = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--all-topics",
            "--to-current",
            "--export",
        ],
    )
    .ok("export");
    let id = topic_id(&broker, "events");
    assert_eq!(
        exported.stdout,
        format!("topic,partition,offset,topic_id\nevents,0,4,{id}\nevents,1,6,{id}\n")
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &exported.stdout).unwrap();

    cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--all-topics",
            "--to-latest",
            "--execute",
        ],
    )
    .ok("to latest");
    assert_eq!(offsets(&broker, g, "events"), vec![Some(10), Some(10)]);

    let path = file.path().to_str().unwrap();
    let dry = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--from-file",
            path,
            "--export",
        ],
    )
    .ok("from-file dry run");
    assert_eq!(dry.stdout, exported.stdout);
    assert_eq!(offsets(&broker, g, "events"), vec![Some(10), Some(10)]);
    reset(
        &broker,
        g,
        "events",
        &["--from-file", path],
        &[Some(4), Some(6)],
    );

    // A bad file is named with its line.
    std::fs::write(file.path(), "events,0,4\nevents,zero,1\n").unwrap();
    let bad = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--from-file",
            path,
            "--execute",
        ],
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("line 2"), "{}", bad.stderr);
}

/// The topic's id as the CLI shows it (`topic describe --json`).
fn topic_id(broker: &TestBroker, topic: &str) -> String {
    let described = cli(broker, &["topic", "describe", topic, "--json"]).ok("topic describe");
    let id = described.json()["topic_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{id}");
    id
}

/// Offsets saved with --export and restored with --from-file after their topic was
/// deleted and created again are refused, naming the row and what to do, and nothing
/// is committed: they are offsets of the old topic, and would skip the new one's first
/// messages. A file without ids (Kafka's three columns) is restored unchecked.
#[tokio::test]
async fn cli_from_file_refuses_offsets_of_a_topic_created_again_since_the_export() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "moved", "--partitions", "2"]).ok("topic create");
    publish_hourly(&broker, "moved", now_ms()).await;
    let g = "restorers";
    reset(
        &broker,
        g,
        "moved",
        &["--topic", "moved", "--to-offset", "8"],
        &[Some(8), Some(8)],
    );
    let export_args = [
        "group",
        "reset-offsets",
        "--group",
        g,
        "--all-topics",
        "--to-current",
        "--export",
    ];
    let exported = cli(&broker, &export_args).ok("export");
    let old_id = topic_id(&broker, "moved");
    assert!(
        exported.stdout.contains(&format!("moved,0,8,{old_id}\n")),
        "{}",
        exported.stdout
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &exported.stdout).unwrap();
    let path = file.path().to_str().unwrap();

    cli(&broker, &["topic", "delete", "moved"]).ok("topic delete");
    cli(&broker, &["topic", "create", "moved", "--partitions", "2"]).ok("topic create again");
    publish_hourly(&broker, "moved", now_ms()).await;
    let new_id = topic_id(&broker, "moved");
    assert_ne!(old_id, new_id);
    assert_eq!(offsets(&broker, g, "moved"), Vec::<Option<u64>>::new());

    let restore = [
        "group",
        "reset-offsets",
        "--group",
        g,
        "--from-file",
        path,
        "--execute",
    ];
    let refused = cli(&broker, &restore);
    assert_eq!(refused.code, 1, "{refused:?}");
    for said in [
        format!("row moved,0,8,{old_id} of {path}"),
        "deleted and created again since the export".to_string(),
        new_id.clone(),
        "nothing was committed".to_string(),
        "reset it with --topic moved --to-earliest".to_string(),
        "empty the topic_id field of their rows".to_string(),
    ] {
        assert!(
            refused.stderr.contains(&said),
            "{said:?} in {}",
            refused.stderr
        );
    }
    assert_eq!(offsets(&broker, g, "moved"), Vec::<Option<u64>>::new());
    // A dry run is refused alike.
    let mut dry = restore.to_vec();
    dry.pop();
    assert_eq!(cli(&broker, &dry).code, 1);

    // A file of Kafka's three columns (or exported before topics had ids) carries no
    // id: it is restored as it says, unchecked.
    std::fs::write(file.path(), "moved,0,8\nmoved,1,8\n").unwrap();
    reset(
        &broker,
        g,
        "moved",
        &["--from-file", path],
        &[Some(8), Some(8)],
    );
    // A file exported from the new topic restores onto it.
    reset(
        &broker,
        g,
        "moved",
        &["--topic", "moved", "--to-offset", "3"],
        &[Some(3), Some(3)],
    );
    let exported = cli(&broker, &export_args).ok("export of the new topic");
    assert!(
        exported.stdout.contains(&format!("moved,1,3,{new_id}\n")),
        "{}",
        exported.stdout
    );
    std::fs::write(file.path(), &exported.stdout).unwrap();
    reset(
        &broker,
        g,
        "moved",
        &["--to-earliest", "--topic", "moved"],
        &[Some(0), Some(0)],
    );
    reset(
        &broker,
        g,
        "moved",
        &["--from-file", path],
        &[Some(3), Some(3)],
    );
}

/// Waits until a group has no live members (a CLI consumer that exited has left).
fn wait_until_no_members(broker: &TestBroker, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let described = cli(broker, &["group", "describe", group, "--json"]).ok("group describe");
        if described.json()["members"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} kept its members: {}",
            described.stdout
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `group describe` shows at least one live member.
fn wait_for_member(broker: &TestBroker, group: &str, consumer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let described = cli(broker, &["group", "describe", group, "--json"]);
        if described.code == 0 && !described.json()["members"].as_array().unwrap().is_empty() {
            return;
        }
        if let Ok(Some(status)) = consumer.try_wait() {
            panic!("the consumer exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the consumer never joined {group}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn cli_execute_on_a_group_with_a_live_member_fails_clearly() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "events", "--partitions", "2"]).ok("topic create");
    publish_hourly(&broker, "events", now_ms()).await;
    let g = "busy";
    let mut consumer = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "consume",
            "events",
            "--group",
            g,
            "--follow",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a consumer");
    wait_for_member(&broker, g, &mut consumer);

    let described = cli(&broker, &["group", "describe", g]).ok("describe a live group");
    assert!(
        described.stdout.contains("tidelog-cli"),
        "{}",
        described.stdout
    );

    // A dry run is allowed; execute and delete are refused with what to do.
    cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--topic",
            "events",
            "--to-earliest",
        ],
    )
    .ok("dry run while live");
    let refused = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            g,
            "--topic",
            "events",
            "--to-earliest",
            "--execute",
        ],
    );
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .starts_with("error: resetting offsets of group \"busy\" failed:"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("live member"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("stop its consumers first"),
        "{}",
        refused.stderr
    );
    // The refusal names the command, not the RPC.
    assert!(
        refused
            .stderr
            .contains("`tidelog group reset-offsets --execute` refused"),
        "{}",
        refused.stderr
    );
    let refused = cli(&broker, &["group", "delete", g]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("live member"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("`tidelog group delete` refused"),
        "{}",
        refused.stderr
    );
    let refused = cli(
        &broker,
        &["group", "delete-offsets", "--group", g, "--topic", "events"],
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("`tidelog group delete-offsets` refused"),
        "{}",
        refused.stderr
    );
    for api in ["ResetOffsets", "DeleteGroup", "DeleteOffsets"] {
        assert!(!refused.stderr.contains(api), "{}", refused.stderr);
    }

    let _ = consumer.kill();
    let _ = consumer.wait();
}

/// A one-partition topic "ret" whose first 80 offsets retention deleted, holding
/// `fresh-0`, `fresh-1`, `fresh-2` at offsets 80..83.
async fn topic_with_deleted_head(broker: &TestBroker) {
    cli(
        broker,
        &[
            "topic",
            "create",
            "ret",
            "--segment-bytes",
            "4KiB",
            "--retention",
            "1m",
        ],
    )
    .ok("topic create");
    let mut publisher = broker.publisher().await;
    let old = now_ms() - 3_600_000;
    for chunk in 0..20 {
        let messages = (0..4)
            .map(|i| Message {
                value: vec![b'x'; 900].into(),
                timestamp_ms: Some(old + chunk * 4 + i),
                ..Message::default()
            })
            .collect();
        publisher
            .publish(PublishRequest {
                topic: "ret".into(),
                messages,
                ack: AckLevel::Durable as i32,
            })
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while broker.describe_topic("ret").await.partitions[0].log_start_offset < 80 {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = (0..3)
        .map(|i| Message {
            value: format!("fresh-{i}").into_bytes().into(),
            ..Message::default()
        })
        .collect();
    publisher
        .publish(PublishRequest {
            topic: "ret".into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    let partition = broker.describe_topic("ret").await.partitions[0].clone();
    assert_eq!((partition.log_start_offset, partition.end_offset), (80, 83));
}

/// Issue 12 bug 5: `--offset-reset` decides what an explicit `--from <offset>` outside
/// the partition's offsets does, with and without --follow.
#[tokio::test]
async fn cli_offset_reset_applies_to_an_out_of_range_from() {
    let broker = TestBroker::start_with(&["--retention-interval", "100ms"]);
    topic_with_deleted_head(&broker).await;

    for follow in [false, true] {
        let with_follow = |args: &[&'static str]| {
            let mut args = args.to_vec();
            if follow {
                args.push("--follow");
            }
            args
        };
        // error: exit 1 with the partition, the offsets and what to do.
        for from in ["5", "1000"] {
            let refused = cli(
                &broker,
                &with_follow(&[
                    "consume",
                    "ret",
                    "-p",
                    "0",
                    "--from",
                    from,
                    "-n",
                    "2",
                    "--offset-reset",
                    "error",
                ]),
            );
            assert_eq!(refused.code, 1, "follow {follow}, from {from}: {refused:?}");
            assert_eq!(refused.stdout, "", "follow {follow}, from {from}");
            let stderr = &refused.stderr;
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            for needle in [
                "ret/0",
                &format!("offset {from}"),
                // The partition holds 80..83 (end exclusive): the CLI's notation.
                "offsets 80-82",
                "--from earliest",
                "--offset-reset",
            ] {
                assert!(
                    stderr.contains(needle),
                    "follow {follow}, from {from}: no {needle:?} in {stderr}"
                );
            }
        }
        // latest: start at the end (nothing to print without new messages).
        if !follow {
            let latest = cli(
                &broker,
                &[
                    "consume",
                    "ret",
                    "-p",
                    "0",
                    "--from",
                    "5",
                    "--offset-reset",
                    "latest",
                ],
            )
            .ok("--offset-reset latest");
            assert_eq!(latest.stdout, "");
            assert!(latest.stderr.contains("83"), "{}", latest.stderr);
        }
        // earliest, the default: start at the log start, with a note.
        for policy in [&["--offset-reset", "earliest"][..], &[]] {
            let mut args = with_follow(&["consume", "ret", "-p", "0", "--from", "5", "-n", "2"]);
            args.extend_from_slice(policy);
            let earliest = cli(&broker, &args).ok("--offset-reset earliest");
            assert_eq!(earliest.stdout, "fresh-0\nfresh-1\n", "{args:?}");
            assert!(earliest.stderr.contains("80"), "{}", earliest.stderr);
        }
    }
    // With --follow and latest, the first message printed is the next one published.
    let mut follower = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "consume",
            "ret",
            "--from",
            "5",
            "--offset-reset",
            "latest",
            "--follow",
            "-n",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a follower");
    // Publish until the follower, positioned at the end, prints one of these.
    let mut publisher = broker.publisher().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(follower.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the follower printed nothing");
        publisher
            .publish(PublishRequest {
                topic: "ret".into(),
                messages: vec![Message {
                    value: b"late".to_vec().into(),
                    ..Message::default()
                }],
                ack: AckLevel::Durable as i32,
            })
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = follower
        .wait_with_output()
        .expect("waiting for the follower");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "late\n");
}

/// Issue 12 bug 7: every duration flag of the CLI takes the one grammar (a unit is
/// required, `0` alone means off or never where the flag says so, `1h30m` and
/// ISO-8601 `PT1H30M` both work) and a bare number is a usage error naming the flag.
#[test]
fn cli_durations_need_a_unit() {
    let broker = TestBroker::start();
    let usage = |args: &[&str], flag: &str, number: &str| {
        let refused = cli(&broker, args);
        assert_eq!(refused.code, 2, "{args:?}: {refused:?}");
        for needle in [
            flag,
            &format!("{number} has no unit"),
            &format!("{number}s"),
        ] {
            assert!(
                refused.stderr.contains(needle),
                "{args:?}: no {needle:?} in {}",
                refused.stderr
            );
        }
    };
    usage(
        &["topic", "create", "t2", "--retention", "10"],
        "--retention",
        "10",
    );
    usage(&["topic", "create", "t2", "--ttl", "5"], "--ttl", "5");
    usage(
        &["topic", "create", "t2", "--segment-age", "60"],
        "--segment-age",
        "60",
    );
    usage(
        &["topic", "create", "t2", "--fsync", "interval:5"],
        "--fsync",
        "5",
    );
    usage(&["produce", "t2", "--ttl", "1000"], "--ttl", "1000");
    usage(
        &[
            "group",
            "reset-offsets",
            "--group",
            "g",
            "--topic",
            "t2",
            "--by-duration",
            "30",
        ],
        "--by-duration",
        "30",
    );
    usage(&["bench", "produce", "--duration", "5"], "--duration", "5");
    assert!(
        cli(&broker, &["topic", "list"])
            .ok("topic list")
            .stdout
            .lines()
            .count()
            <= 1,
        "a refused create created a topic"
    );

    // 0 alone is "off" for a topic limit.
    let created = cli(
        &broker,
        &["topic", "create", "t2", "--retention", "0", "--json"],
    )
    .ok("--retention 0");
    assert_eq!(created.json()["config"]["retention_ms"], Value::Null);
    // Compound and ISO-8601 forms.
    let created = cli(
        &broker,
        &[
            "topic",
            "create",
            "t3",
            "--retention",
            "1h30m",
            "--ttl",
            "PT5M",
            "--segment-age",
            "P1D",
            "--fsync",
            "interval:1s500ms",
            "--json",
        ],
    )
    .ok("compound and ISO durations");
    let config = &created.json()["config"];
    assert_eq!(config["retention_ms"], 5_400_000u64);
    assert_eq!(config["default_ttl_ms"], 300_000u64);
    assert_eq!(config["segment_ms"], 86_400_000u64);
    assert_eq!(config["fsync"], "interval:1s500ms");
    let described = cli(&broker, &["topic", "describe", "t3"]).ok("topic describe");
    assert!(described.stdout.contains("1h30m"), "{}", described.stdout);
    cli(&broker, &["topic", "alter", "t3", "--retention", "PT2H"]).ok("alter to PT2H");
    let described = cli(&broker, &["topic", "describe", "t3", "--json"]).ok("topic describe");
    assert_eq!(described.json()["config"]["retention_ms"], 7_200_000u64);
    for by in ["30m", "PT30M", "1d12h"] {
        cli(
            &broker,
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t3",
                "--by-duration",
                by,
            ],
        )
        .ok(&format!("--by-duration {by}"));
    }
}

/// A `tidelog consume --group` running in the background, its stdout collected line
/// by line (unless paused: then the pipe fills and the consumer blocks in a write, as
/// behind a slow reader).
pub(crate) struct GroupConsumer {
    pub(crate) child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GroupConsumer {
    fn start(broker: &TestBroker, topic: &str, group: &str) -> GroupConsumer {
        GroupConsumer::start_paused(broker, topic, group, false)
    }

    fn start_paused(broker: &TestBroker, topic: &str, group: &str, paused: bool) -> GroupConsumer {
        GroupConsumer::spawn(
            broker,
            &["consume", topic, "--group", group, "--follow"],
            paused,
        )
    }

    /// Any long-running `tidelog` command (e.g. `consume --follow`), its stdout read
    /// line by line as it comes.
    pub(crate) fn spawn(broker: &TestBroker, args: &[&str], paused: bool) -> GroupConsumer {
        let mut child = tidelog_command()
            .args(["--server", &broker.endpoint()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a group consumer");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(paused));
        let (sink, gate) = (lines.clone(), paused.clone());
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut stdout = std::io::BufReader::new(stdout);
            loop {
                while gate.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink
                        .lock()
                        .unwrap()
                        .push(line.trim_end_matches('\n').to_string()),
                }
            }
        });
        GroupConsumer {
            child,
            lines,
            paused,
            reader: Some(reader),
        }
    }

    fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the process to exit (after a SIGTERM, or on its own) and returns its
    /// exit code, stderr and every line it printed.
    pub(crate) fn finish(mut self, terminate: bool) -> (i32, String, Vec<String>) {
        if terminate {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .expect("running kill");
            assert!(sent.success());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tidelog") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the consumer did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stdout reader");
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status.code().unwrap_or(-1), stderr, self.lines())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, failing with `what` after 30 s.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Committed offset and end offset of every partition of `topic`, from `group
/// describe --json`.
fn committed_and_end(broker: &TestBroker, group: &str, topic: &str) -> Vec<(Option<u64>, u64)> {
    let described = cli(broker, &["group", "describe", group, "--json"]);
    if described.code == 1 && described.stderr.contains("not found") {
        return Vec::new(); // no member and nothing committed
    }
    let described = described.ok("group describe");
    described.json()["partitions"]
        .as_array()
        .expect("partitions is an array")
        .iter()
        .filter(|p| p["topic"] == topic)
        .map(|p| {
            (
                p["committed_offset"].as_u64(),
                p["end_offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Issue 12 bug 6: a second CLI member joins while the first is behind (its reader
/// is slow, so messages of every partition are on their way to it); the first commits
/// what it printed of the partitions it loses before their new owner starts, so every
/// message is printed exactly once across the two, and the group's committed offsets
/// end at the end offsets.
#[tokio::test]
async fn cli_group_consumers_hand_partitions_over_without_duplicates() {
    const MESSAGES: usize = 1_000;
    let broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "handover", "--partitions", "4"],
    )
    .ok("topic create");
    // About 1 KiB each, over every partition (keyless messages fill a batch of one
    // partition, then the next: small batches spread them): far more than a pipe holds.
    let padding = "x".repeat(1_000);
    let produce = |range: std::ops::Range<usize>| {
        let input: String = range.map(|i| format!("m-{i:04}-{padding}\n")).collect();
        cli_with_input(
            &broker,
            &["produce", "handover", "--quiet", "--batch-messages", "25"],
            input.as_bytes(),
        )
        .ok("produce");
    };
    produce(0..800);
    let group = "gx";
    // `a` reads, fills its stdout pipe and blocks: batches of all four partitions
    // wait for it on its stream.
    let mut a = GroupConsumer::start_paused(&broker, "handover", group, true);
    wait_for_member(&broker, group, &mut a.child);
    std::thread::sleep(Duration::from_millis(500));
    // `b` joins: two of a's partitions go to b.
    let b = GroupConsumer::start(&broker, "handover", group);
    wait_until("the second consumer joined", || {
        let described = cli(&broker, &["group", "describe", group, "--json"]);
        described.code == 0 && described.json()["members"].as_array().unwrap().len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    a.resume();
    // New messages for both members' partitions.
    produce(800..MESSAGES);
    let distinct = || {
        let mut all: Vec<String> = a.lines();
        all.extend(b.lines());
        all.sort_unstable();
        all.dedup();
        all.len()
    };
    wait_until("every message was printed", || distinct() >= MESSAGES);
    // Anything printed twice would come right after the handover: give it time.
    std::thread::sleep(Duration::from_millis(300));

    let (a_code, a_stderr, a_lines) = a.finish(true);
    let (b_code, b_stderr, b_lines) = b.finish(true);
    assert_eq!(a_code, 0, "{a_stderr}");
    assert_eq!(b_code, 0, "{b_stderr}");
    assert!(!b_lines.is_empty(), "the second consumer got no partition");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in a_lines.iter().chain(&b_lines) {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), MESSAGES, "missing messages");
    let duplicates: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(line, _)| &line[..6])
        .collect();
    assert!(
        duplicates.is_empty(),
        "{} of {MESSAGES} messages printed twice (a: {} lines, b: {} lines): {:?}",
        duplicates.len(),
        a_lines.len(),
        b_lines.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    assert!(!a_stderr.contains("warning"), "{a_stderr}");
    assert!(!b_stderr.contains("warning"), "{b_stderr}");

    wait_until_no_members(&broker, group);
    let positions = committed_and_end(&broker, group, "handover");
    assert_eq!(positions.len(), 4, "{positions:?}");
    for (committed, end) in &positions {
        assert_eq!(*committed, Some(*end), "{positions:?}");
    }
}
/// Issue 12 bug 6: a group consumer whose stream the broker ends (here: the broker
/// stops a moment after the consumer printed a burst of messages) has already
/// committed everything it printed, and says nothing about a failed commit; after a
/// restart the group continues after the last printed message: the consumer, which
/// reconnects and joins again (--follow), prints nothing twice.
#[tokio::test]
async fn cli_group_consumer_ending_on_an_error_has_committed_what_it_printed() {
    let mut broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "stopping", "--partitions", "3"],
    )
    .ok("topic create");
    let mut publisher = broker.publisher().await;
    let group = "gs";
    let mut consumer = GroupConsumer::start(&broker, "stopping", group);
    wait_for_member(&broker, group, &mut consumer.child);
    // The consumer waits, idle; then 300 messages arrive, it prints them, and a
    // fraction of a second later the broker stops (well within a second: a consumer
    // that commits only now and then has not committed them yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher
        .publish(PublishRequest {
            topic: "stopping".into(),
            messages: (0..300)
                .map(|i| Message {
                    value: format!("s-{i:03}").into_bytes().into(),
                    ..Message::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    // An open client connection would hold up the broker's graceful stop.
    drop(publisher);
    wait_until("the consumer printed every message", || {
        consumer.lines().len() >= 300
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The broker goes away under the consumer: its stream ends with UNAVAILABLE; the
    // consumer joins again once the broker is back, from the committed offsets.
    broker.restart_on_the_same_ports();
    wait_for_member(&broker, group, &mut consumer.child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, stderr, lines) = consumer.finish(true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        lines.len(),
        300,
        "printed twice after the restart: {stderr}"
    );

    let positions = committed_and_end(&broker, group, "stopping");
    assert_eq!(
        positions.len(),
        3,
        "committed: {positions:?}; the consumer said: {stderr}"
    );
    for (committed, end) in &positions {
        assert_eq!(
            *committed,
            Some(*end),
            "{positions:?}; the consumer said: {stderr}"
        );
    }
    // The broker's reason, and no failed commit.
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(!stderr.contains("warning: committing"), "{stderr}");
    // The next reader of the group has nothing left to print.
    let rest = cli(&broker, &["consume", "stopping", "--group", group]).ok("consume the rest");
    assert_eq!(rest.stdout, "");
}
