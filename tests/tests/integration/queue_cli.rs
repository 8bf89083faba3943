//! `tidelog queue ...` and `tidelog bench queue` through the real binaries: the admin
//! commands and their errors in the CLI's terms, `queue consume` acking what it
//! printed, worker mode (a script that fails for some messages: they end in the
//! dead-letter topic after max deliveries, with the script's stderr as the reason;
//! redrive brings them back), deadline extension of a slow command, a graceful stop on
//! SIGTERM, and short bench runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidelog_tests::{TestBroker, tidelog_command};

use super::cli::{Run, cli_with_input};

fn cli(broker: &TestBroker, args: &[&str]) -> Run {
    cli_with_input(broker, args, b"")
}

/// Creates `topic` and publishes `values` to it (one per line).
fn topic_with(
    broker: &TestBroker,
    topic: &str,
    partitions: u32,
    values: &[String],
    extra: &[&str],
) {
    cli(
        broker,
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
    )
    .ok("topic create");
    let lines = values.join("\n") + "\n";
    let mut args = vec!["produce", topic, "--quiet"];
    args.extend_from_slice(extra);
    cli_with_input(broker, &args, lines.as_bytes()).ok("produce");
}

fn describe(broker: &TestBroker, queue: &str) -> Value {
    cli(broker, &["queue", "describe", queue, "--json"])
        .ok("queue describe")
        .json()
}

fn values(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m-{i}")).collect()
}

#[test]
fn queue_admin_commands_with_their_errors_in_cli_terms() {
    let broker = TestBroker::start();
    topic_with(&broker, "orders", 2, &values(10), &[]);
    let created = cli(
        &broker,
        &[
            "queue",
            "create",
            "billing",
            "--topic",
            "orders",
            "--from",
            "earliest",
            "--ack-deadline",
            "45s",
            "--max-deliveries",
            "7",
            "--backoff",
            "2s..1m",
            "--dead-letter-topic",
            "orders.failed",
            "--max-unacked",
            "50",
            "--json",
        ],
    )
    .ok("queue create")
    .json();
    assert_eq!(created["ready"], 10, "{created:#}");
    let config = &created["config"];
    assert_eq!(config["ack_deadline_ms"], 45_000);
    assert_eq!(config["max_deliveries"], 7);
    assert_eq!(config["backoff_initial_ms"], 2_000);
    assert_eq!(config["backoff_max_ms"], 60_000);
    assert_eq!(config["dead_letter_topic"], "orders.failed");
    assert_eq!(config["max_unacked_per_member"], 50);

    // A second queue from latest sees nothing of what is stored.
    let human = cli(&broker, &["queue", "create", "audit", "--topic", "orders"]).ok("create");
    assert!(
        human
            .stdout
            .starts_with("created queue audit on topic orders (0 ready)\n"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("max deliveries     5\n"),
        "{}",
        human.stdout
    );

    let listed = cli(&broker, &["queue", "list"]).ok("queue list").stdout;
    assert!(listed.starts_with("QUEUE    TOPIC   READY"), "{listed}");
    assert!(listed.contains("billing  orders     10"), "{listed}");
    let listed = cli(&broker, &["queue", "list", "--json", "--topic", "orders"])
        .ok("queue list")
        .json();
    let names: Vec<&str> = listed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "billing"]);

    let text = cli(&broker, &["queue", "describe", "billing"])
        .ok("describe")
        .stdout;
    for line in [
        "queue billing  topic orders  (0 members)",
        "ready           10",
        "ack deadline       45s",
        "backoff            2s..1m (doubling)",
        "dead-letter topic  orders.failed",
        "PARTITION  SETTLED-BELOW  END  LAG",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    let altered = cli(
        &broker,
        &[
            "queue",
            "alter",
            "billing",
            "--ack-deadline",
            "2m",
            "--max-deliveries",
            "unlimited",
            "--json",
        ],
    )
    .ok("queue alter")
    .json();
    assert_eq!(altered["config"]["ack_deadline_ms"], 120_000);
    assert_eq!(altered["config"]["max_deliveries"], 0);
    assert_eq!(altered["config"]["backoff_initial_ms"], 2_000, "unchanged");

    // Errors: what failed, in flags and tidelog commands; exit 2 for bad arguments.
    for (args, code, needles) in [
        (
            vec!["queue", "create", "billing", "--topic", "orders"],
            1,
            vec!["already exists", "tidelog queue alter"],
        ),
        (
            vec!["queue", "create", "x", "--topic", "nope"],
            1,
            vec!["topic \"nope\" not found", "tidelog topic create"],
        ),
        // Its own topic as its dead-letter topic: dead letters back for ever.
        (
            vec![
                "queue",
                "create",
                "x",
                "--topic",
                "orders",
                "--dead-letter-topic",
                "orders",
            ],
            1,
            vec![
                "--dead-letter-topic \"orders\" is the queue's own topic",
                "name another topic (the default is orders.dlq)",
            ],
        ),
        (
            vec!["queue", "alter", "billing", "--dead-letter-topic", "orders"],
            1,
            vec!["--dead-letter-topic \"orders\" is the queue's own topic"],
        ),
        (
            vec![
                "queue",
                "create",
                "x",
                "--topic",
                "orders",
                "--ack-deadline",
                "10ms",
            ],
            2,
            vec!["--ack-deadline", "100ms..12h"],
        ),
        (
            vec![
                "queue",
                "create",
                "x",
                "--topic",
                "orders",
                "--ack-deadline",
                "30",
            ],
            2,
            vec!["--ack-deadline", "no unit"],
        ),
        (
            vec![
                "queue",
                "create",
                "x",
                "--topic",
                "orders",
                "--backoff",
                "5m..1s",
            ],
            2,
            vec!["--backoff", "shorter"],
        ),
        (
            vec![
                "queue",
                "create",
                "x",
                "--topic",
                "orders",
                "--max-unacked",
                "0",
            ],
            2,
            vec!["--max-unacked"],
        ),
        (
            vec!["queue", "alter", "billing"],
            2,
            vec!["nothing to change"],
        ),
        (
            vec!["queue", "alter", "billing", "--backoff-max", "1s"],
            2,
            vec!["--backoff-max", "shorter"],
        ),
        (
            vec![
                "queue",
                "alter",
                "billing",
                "--dead-letter-topic",
                "bad name",
            ],
            1,
            vec!["--dead-letter-topic", "bad name"],
        ),
        (
            vec!["queue", "describe", "nope"],
            1,
            vec!["queue \"nope\" not found", "tidelog queue list"],
        ),
        (
            vec!["queue", "consume", "nope"],
            1,
            vec!["queue \"nope\" not found"],
        ),
        (
            vec!["queue", "work", "billing", "--", "no-such-command-x"],
            2,
            vec!["not found in PATH"],
        ),
    ] {
        let run = cli(&broker, &args);
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        for needle in needles {
            assert!(
                run.stderr.contains(needle),
                "{args:?}: {needle:?} not in {run:?}"
            );
        }
        assert!(
            !run.stderr.contains("Queues.") && !run.stderr.contains("_ms"),
            "{args:?} names the API: {}",
            run.stderr
        );
    }

    let purged = cli(&broker, &["queue", "purge", "billing", "--json"])
        .ok("purge")
        .json();
    assert_eq!(purged["purged"], 10);
    assert_eq!(describe(&broker, "billing")["ready"], 0);
    cli(&broker, &["queue", "delete", "billing"]).ok("delete");
    let gone = cli(&broker, &["queue", "describe", "billing"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    let listed = cli(&broker, &["queue", "list", "--json"]).ok("list").json();
    assert_eq!(listed["queues"].as_array().unwrap().len(), 1);
}

#[test]
fn queue_consume_acks_what_it_printed() {
    let broker = TestBroker::start();
    topic_with(&broker, "jobs", 2, &values(20), &[]);
    cli(
        &broker,
        &[
            "queue", "create", "q", "--topic", "jobs", "--from", "earliest",
        ],
    )
    .ok("create");

    let first = cli(&broker, &["queue", "consume", "q", "-n", "5", "--json"]).ok("consume -n");
    let lines = first.json_lines();
    assert_eq!(lines.len(), 5, "{}", first.stdout);
    for line in &lines {
        assert_eq!(line["attempt"], 1, "{line}");
        assert!(line["deadline"].as_i64().unwrap() > 0, "{line}");
        assert!(line["value"].as_str().unwrap().starts_with("m-"), "{line}");
    }
    // Acked before the command returned: nothing is held, 15 are left.
    let after = describe(&broker, "q");
    assert_eq!(
        (after["ready"].clone(), after["unacked"].clone()),
        (15.into(), 0.into()),
        "{after:#}"
    );

    let rest = cli(&broker, &["queue", "consume", "q", "--print-meta"]).ok("consume");
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| l["value"].as_str().unwrap().to_string())
        .collect();
    for line in rest.stdout.lines() {
        let (meta, value) = line.split_once('\t').expect("meta, a tab, the value");
        assert!(meta.ends_with(" attempt 1"), "{line}");
        assert!(meta.split(' ').next().unwrap().contains(':'), "{line}");
        seen.push(value.to_string());
    }
    seen.sort();
    let mut all = values(20);
    all.sort();
    assert_eq!(seen, all, "every message printed exactly once");
    let after = describe(&broker, "q");
    assert_eq!(after["ready"], 0, "{after:#}");
    assert_eq!(after["unacked"], 0, "{after:#}");

    // --follow waits for new messages; -n ends it.
    let mut follower = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "queue",
            "consume",
            "q",
            "--follow",
            "-n",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cli_with_input(
        &broker,
        &["produce", "jobs", "--quiet"],
        b"late-1\nlate-2\nlate-3\n",
    )
    .ok("produce");
    let output = wait_with_timeout(&mut follower, Duration::from_secs(20));
    let mut late: Vec<&str> = output.lines().collect();
    late.sort();
    assert_eq!(late, ["late-1", "late-2", "late-3"]);
}

/// Waits for `child` to exit within `timeout` and returns its stdout.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
            let mut stderr = String::new();
            if let Some(err) = child.stderr.as_mut() {
                std::io::Read::read_to_string(err, &mut stderr).unwrap();
            }
            assert!(status.success(), "exit {status}: {stdout}\n{stderr}");
            return stdout;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tidelog did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn worker_mode_acks_nacks_and_dead_letters_then_redrive_brings_them_back() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    topic_with(
        &broker,
        "orders",
        2,
        &values(30),
        &["--header", "source=test run"],
    );
    cli(
        &broker,
        &[
            "queue",
            "create",
            "work",
            "--topic",
            "orders",
            "--from",
            "earliest",
            "--max-deliveries",
            "2",
            "--backoff",
            "50ms",
        ],
    )
    .ok("create");
    let log = dir.path().join("runs.log");
    // Fails (exit 3, a message on stderr) for m-0, m-7, m-14, m-21, m-28.
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            r#"value=$(cat)
echo "$value $TIDELOG_ATTEMPT $TIDELOG_TOPIC $TIDELOG_PARTITION $TIDELOG_OFFSET $TIDELOG_QUEUE [$TIDELOG_HEADER_SOURCE]" >> {log}
n=${{value#m-}}
if [ $((n % 7)) -eq 0 ]; then
  echo "noise that scrolls away" >&2
  echo "cannot process $value" >&2
  exit 3
fi
echo "processed $value"
"#,
            log = log.display()
        ),
    );
    let run = cli(
        &broker,
        &[
            "queue",
            "work",
            "work",
            "--concurrency",
            "3",
            "--stop-when-idle",
            "1s",
            "--json",
            "--",
            "sh",
            &worker,
        ],
    )
    .ok("queue work");
    let summary = run.json();
    assert_eq!(summary["acked"], 25, "{summary:#}\n{}", run.stderr);
    assert_eq!(summary["nacked"], 5, "{summary:#}");
    assert_eq!(summary["dead_lettered"], 5, "{summary:#}");
    assert_eq!(summary["refused"], 0, "{summary:#}");
    assert_eq!(summary["exit_codes"]["0"], 25, "{summary:#}");
    assert_eq!(summary["exit_codes"]["3"], 10, "{summary:#}");
    // --json: the commands' stdout went to stderr, and their stderr is echoed there.
    assert!(run.stderr.contains("processed m-1\n"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot process m-7\n"),
        "{}",
        run.stderr
    );

    // Every message ran once, the failing ones twice (attempts 1 and 2), with the
    // environment set.
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let fields: Vec<&str> = line.splitn(7, ' ').collect();
        assert_eq!(fields[2], "orders", "{line}");
        assert!(fields[3] == "0" || fields[3] == "1", "{line}");
        fields[4].parse::<u64>().expect("an offset");
        assert_eq!(fields[5], "work", "{line}");
        assert_eq!(fields[6], "[test run]", "{line}");
        attempts
            .entry(fields[0].to_string())
            .or_default()
            .push(fields[1].parse().unwrap());
    }
    assert_eq!(attempts.len(), 30);
    for (value, seen) in &attempts {
        let n: u32 = value.trim_start_matches("m-").parse().unwrap();
        let mut seen = seen.clone();
        seen.sort();
        let expected: &[u32] = if n.is_multiple_of(7) { &[1, 2] } else { &[1] };
        assert_eq!(seen, expected, "{value}");
    }

    // The dead letters: the message, where it came from, and why.
    let dead = cli(&broker, &["consume", "orders.dlq", "--json"]).ok("consume dlq");
    let dead = dead.json_lines();
    assert_eq!(dead.len(), 5);
    for letter in &dead {
        let header = |key: &str| {
            letter["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["key"] == key)
                .map(|h| h["value"].as_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let value = letter["value"].as_str().unwrap();
        assert_eq!(header("tidelog-dlq-queue"), "work");
        assert_eq!(header("tidelog-dlq-attempts"), "2");
        assert_eq!(header("source"), "test run");
        let reason = header("tidelog-dlq-reason");
        assert!(reason.contains("exit status 3"), "{reason}");
        assert!(
            reason.contains(&format!("cannot process {value}")),
            "{reason}"
        );
    }
    let after = describe(&broker, "work");
    assert_eq!(
        (
            after["ready"].clone(),
            after["unacked"].clone(),
            after["waiting"].clone()
        ),
        (0.into(), 0.into(), 0.into()),
        "{after:#}"
    );

    // Redrive: the five go back to the topic, and the queue has them ready again.
    let redriven = cli(
        &broker,
        &["queue", "redrive", "work", "--batch", "2", "--json"],
    )
    .ok("redrive")
    .json();
    assert_eq!(redriven["moved"], 5, "{redriven:#}");
    assert_eq!(redriven["requests"], 3, "2 + 2 + 1: {redriven:#}");
    assert_eq!(describe(&broker, "work")["ready"], 5);
    let again = cli(&broker, &["queue", "redrive", "work"]).ok("redrive");
    assert!(
        again.stdout.starts_with("moved 0 dead letters"),
        "{}",
        again.stdout
    );
    let back = cli(&broker, &["queue", "consume", "work", "--json"]).ok("consume");
    let mut back: Vec<String> = back
        .json_lines()
        .iter()
        .map(|l| l["value"].as_str().unwrap().to_string())
        .collect();
    back.sort();
    assert_eq!(back, ["m-0", "m-14", "m-21", "m-28", "m-7"]);
}

#[test]
fn a_slow_command_has_its_deadline_extended_and_sigterm_lets_commands_finish() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    topic_with(&broker, "slow", 1, &values(4), &[]);
    cli(
        &broker,
        &[
            "queue",
            "create",
            "q",
            "--topic",
            "slow",
            "--from",
            "earliest",
            "--ack-deadline",
            "1s",
        ],
    )
    .ok("create");
    let started = dir.path().join("started");
    // Takes 2.5 deadlines: without extensions the queue would give it to someone else.
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!(
            "cat > /dev/null\necho \"$TIDELOG_OFFSET $TIDELOG_ATTEMPT\" >> {}\nsleep 2.5\n",
            started.display()
        ),
    );
    let mut worker = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "--json",
            "queue",
            "work",
            "q",
            "--concurrency",
            "2",
            "--",
            "sh",
            &slow,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both slots busy, then SIGTERM: the two running commands finish and are acked,
    // nothing else is taken.
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_to_string(&started).map_or(0, |s| s.lines().count()) < 2 {
        assert!(Instant::now() < deadline, "the commands never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let described = describe(&broker, "q");
    assert_eq!(described["unacked"], 2, "{described:#}");
    assert_eq!(
        described["members"].as_array().unwrap().len(),
        1,
        "{described:#}"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stdout = wait_with_timeout(&mut worker, Duration::from_secs(20));
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["acked"], 2, "{summary:#}");
    assert_eq!(summary["interrupted"], true, "{summary:#}");
    assert!(summary["extended"].as_u64().unwrap() >= 4, "{summary:#}");
    let runs = std::fs::read_to_string(&started).unwrap();
    assert!(
        runs.lines().all(|l| l.ends_with(" 1")),
        "only first attempts: {runs}"
    );
    assert_eq!(runs.lines().count(), 2, "{runs}");
    let after = describe(&broker, "q");
    assert_eq!(after["ready"], 2, "{after:#}");
    assert_eq!(after["unacked"], 0, "{after:#}");
}

/// Runs `tidelog --json bench queue ...`.
fn bench_queue(broker: &TestBroker, args: &[&str]) -> (i32, Value, String) {
    let output = tidelog_command()
        .args(["--server", &broker.endpoint(), "--json", "bench", "queue"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tidelog bench queue");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn bench_queue_acks_every_message_exactly_once() {
    let broker = TestBroker::start();
    for (args, messages) in [
        (
            vec!["--messages", "3000", "--workers", "2", "--partitions", "2"],
            3000,
        ),
        (
            vec![
                "--messages",
                "2000",
                "--workers",
                "3",
                "--live",
                "--credit",
                "100",
                "--batch",
                "250",
            ],
            2000,
        ),
    ] {
        let (code, json, stderr) = bench_queue(&broker, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}\n{json:#}");
        assert_eq!(json["validation"]["ok"], true, "{json:#}");
        assert_eq!(json["acked"], messages, "{json:#}");
        assert!(json["acked_per_s"].as_f64().unwrap() > 0.0, "{json:#}");
        let latency = &json["ack_latency"];
        assert_eq!(
            latency["count"], messages,
            "one sample per message: {json:#}"
        );
        assert!(
            json["broker_cpu_seconds"].as_f64().is_some(),
            "the broker's pid was found: {json:#}"
        );
        assert_eq!(json["queue_after"]["unacked"], 0, "{json:#}");
        assert_eq!(json["deleted"], true);
        let acked: u64 = json["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["acked"].as_u64().unwrap())
            .sum();
        assert_eq!(acked, messages);
        let live = args.contains(&"--live");
        assert_eq!(
            json["publish_to_delivery_latency"].is_object(),
            live,
            "publish -> delivery is measured with --live: {json:#}"
        );
    }
    // Nothing of the runs is left behind.
    let queues = cli(&broker, &["queue", "list", "--json"]).ok("list").json();
    assert_eq!(queues["queues"].as_array().unwrap().len(), 0, "{queues:#}");
}

/// Runs tidelogd on `data` until it exits (it must refuse to start); its stderr.
fn refused_start(data: &Path) -> String {
    let out = std::process::Command::new(tidelog_tests::tidelogd_bin())
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("running tidelogd");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// A queue state record of an operation kind this build does not know, whole (its
/// checksum matched: what a newer tidelogd writes, and what this build sees after a
/// rollback), is refused as written by a newer tidelogd, not as corruption: by
/// tidelogd at start, by `segment verify` (which names it, says to run the newer build
/// and offers no --force), and by `segment repair`, which leaves it even with --force
/// (the newer build's state is then whole for it). `repair --discard-newer` cuts it
/// (bytes kept aside, a warning saying what is lost) and this build then starts with the
/// state recorded before it: the two acked messages stay acked.
#[test]
fn a_queue_state_record_of_a_newer_build_is_refused_as_such_and_cut_only_by_discard_newer() {
    let mut broker = TestBroker::start();
    topic_with(&broker, "jobs", 1, &values(5), &[]);
    cli(
        &broker,
        &[
            "queue", "create", "q", "--topic", "jobs", "--from", "earliest",
        ],
    )
    .ok("create");
    cli(&broker, &["queue", "consume", "q", "-n", "2"]).ok("consume -n 2");
    broker.stop();
    let data = broker.data_dir();
    let data_arg = data.to_str().unwrap();
    let queues_log = data.join("state/queues/queues.statelog");

    /// An operation of a kind this build does not know, framed and checksummed by the
    /// state log's own encoder.
    struct Newer;
    impl tidelog_storage::statelog::LogOp for Newer {
        fn encode(&self, out: &mut Vec<u8>) -> tidelog_storage::Result<()> {
            out.extend_from_slice(&[99, 0, 0, 0, 0, 0, 0, 0, 0]);
            Ok(())
        }
        fn decode(
            reader: &mut tidelog_storage::statelog::OpReader<'_>,
        ) -> Result<Self, tidelog_storage::statelog::DecodeError> {
            Err(reader.malformed("never read"))
        }
    }
    let mut bytes = std::fs::read(&queues_log).unwrap();
    let at = bytes.len();
    bytes.extend_from_slice(
        &tidelog_storage::statelog::encode_record(&tidelog_storage::statelog::Record {
            written_at_ms: 0,
            ops: vec![Newer],
        })
        .unwrap(),
    );
    std::fs::write(&queues_log, &bytes).unwrap();

    let stderr = refused_start(&data);
    assert!(
        stderr.contains(&format!(
            "{} was written by a newer tidelogd",
            queues_log.display()
        )) && stderr.contains(&format!("at byte {at}"))
            && stderr.contains("operation kind 99")
            && stderr.contains("upgrade to read it")
            && !stderr.contains("corrupt"),
        "{stderr}"
    );

    let verify = cli(&broker, &["segment", "verify", data_arg]);
    assert_eq!(verify.code, 1, "{}\n{}", verify.stdout, verify.stderr);
    let said = format!("{}\n{}", verify.stdout, verify.stderr);
    assert!(
        said.contains("written_by_newer")
            && said.contains("operation kind 99")
            && said.contains("run that build")
            && !said.contains("corrupt")
            && !said.contains("--force"),
        "{said}"
    );
    let report = cli(&broker, &["segment", "verify", data_arg, "--json"]).json();
    let problems: Vec<&Value> = report["state_logs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["problems"].as_array().unwrap())
        .collect();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["kind"], "written_by_newer", "{report:#}");
    assert_eq!(problems[0]["position"], at as u64, "{report:#}");

    for args in [
        vec!["segment", "repair", data_arg],
        vec!["segment", "repair", data_arg, "--force"],
    ] {
        let repair = cli(&broker, &args);
        assert_eq!(
            repair.code, 1,
            "{args:?}: {}\n{}",
            repair.stdout, repair.stderr
        );
        assert!(
            repair.stderr.contains("--force does not cut it")
                && repair.stderr.contains("run that build")
                && repair.stderr.contains("rerun with --discard-newer"),
            "{args:?}: {}",
            repair.stderr
        );
        assert!(
            !repair.stderr.contains("rerun with --force"),
            "{args:?}: {}",
            repair.stderr
        );
        assert_eq!(
            std::fs::read(&queues_log).unwrap(),
            bytes,
            "{args:?}: left as it is"
        );
    }

    let dry = cli(
        &broker,
        &[
            "segment",
            "repair",
            data_arg,
            "--discard-newer",
            "--dry-run",
        ],
    )
    .ok("repair --discard-newer --dry-run");
    assert!(
        dry.stdout.contains(&format!(
            "would: cut {} at position {at}",
            queues_log.display()
        )) && dry.stderr.contains("WARNING: would cut")
            && dry
                .stderr
                .contains("messages acked after it may be delivered again"),
        "{}\n{}",
        dry.stdout,
        dry.stderr
    );
    assert_eq!(std::fs::read(&queues_log).unwrap(), bytes, "dry run");

    let cut = cli(&broker, &["segment", "repair", data_arg, "--discard-newer"])
        .ok("repair --discard-newer");
    assert!(
        cut.stdout
            .contains(&format!("did: cut {}", queues_log.display()))
            && cut
                .stderr
                .contains("a record a newer tidelogd wrote (--discard-newer)"),
        "{}\n{}",
        cut.stdout,
        cut.stderr
    );
    assert_eq!(std::fs::read(&queues_log).unwrap(), bytes[..at]);
    let side = queues_log.with_file_name(format!("queues.statelog.torn-at-{at}"));
    assert_eq!(std::fs::read(&side).unwrap(), bytes[at..], "kept aside");
    cli(&broker, &["segment", "verify", data_arg]).ok("verify after the cut");

    broker.restart();
    let rest = cli(&broker, &["queue", "consume", "q", "-n", "3", "--json"]).ok("consume");
    let got: Vec<String> = rest
        .json_lines()
        .iter()
        .map(|line| line["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, values(5)[2..], "{}", rest.stdout);
}

/// `tidelog segment verify` checks a topic's own files with the broker's rules: for each
/// of a topic.config of a newer build, one with an unknown key, a topic.owner that is
/// not a principal and a topic.id that is not an id, tidelogd refuses to start, and
/// verify does not call the directory clean: it names the file, says the broker does
/// not start, and marks the topic's partitions as not opened; repair leaves the files.
#[test]
fn segment_verify_checks_the_topic_files_the_broker_refuses() {
    let mut broker = TestBroker::start();
    topic_with(&broker, "t1", 2, &values(10), &[]);
    broker.stop();
    let data = broker.data_dir();
    let data_arg = data.to_str().unwrap();
    let topic = data.join("topics/t1");
    cli(&broker, &["segment", "verify", data_arg]).ok("verify before");

    let config = std::fs::read_to_string(topic.join("topic.config")).unwrap();
    let features = format!("record_features={}", tidelog_storage::RECORD_FEATURES);
    let newer = format!("record_features={}", tidelog_storage::RECORD_FEATURES + 1);
    let cases = [
        (
            "topic.config",
            config.replace(&features, &newer),
            "written_by_newer",
        ),
        (
            "topic.config",
            format!("{config}bogus=1\n"),
            "topic_config_invalid",
        ),
        (
            "topic.owner",
            "not a principal\n".to_string(),
            "topic_owner_invalid",
        ),
        ("topic.id", "0123\n".to_string(), "topic_id_invalid"),
    ];
    for (name, contents, kind) in cases {
        let path = topic.join(name);
        let before = std::fs::read(&path).ok();
        std::fs::write(&path, &contents).unwrap();
        let stderr = refused_start(&data);
        assert!(
            stderr.contains("cannot open data directory") && stderr.contains(name),
            "{name}: {stderr}"
        );

        let verify = cli(&broker, &["segment", "verify", data_arg]);
        assert_eq!(
            verify.code, 1,
            "{name}: {}\n{}",
            verify.stdout, verify.stderr
        );
        assert!(
            verify
                .stdout
                .contains(&format!("error: {}", path.display()))
                && verify.stdout.contains("tidelogd refuses to start")
                && verify.stderr.contains(kind)
                && !verify.stderr.contains("--force"),
            "{name}: {}\n{}",
            verify.stdout,
            verify.stderr
        );
        let report = cli(&broker, &["segment", "verify", data_arg, "--json"]).json();
        assert_eq!(report["clean"], false, "{name}: {report:#}");
        assert_eq!(
            report["topics"][0]["problems"][0]["kind"], kind,
            "{report:#}"
        );
        let partitions = report["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 2, "{report:#}");
        assert!(
            partitions.iter().all(|p| p["broker_opens"] == false),
            "{name}: {report:#}"
        );

        let repair = cli(&broker, &["segment", "repair", data_arg, "--force"]);
        assert_eq!(
            repair.code, 1,
            "{name}: {}\n{}",
            repair.stdout, repair.stderr
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), contents, "{name}");
        match before {
            Some(before) => std::fs::write(&path, before).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    cli(&broker, &["segment", "verify", data_arg]).ok("verify after");
    broker.restart();
}

/// `tidelog segment verify` and `repair` check the queue state log and the delivery
/// history files as the broker reads them: clean after real use; a torn history tail
/// and a damaged queue state record are named with what the broker does about each;
/// tidelogd does refuse to start on the damaged queue state, repair cuts the torn tail
/// on its own and the damage only with --force, and the broker then starts and serves
/// the queue.
#[test]
fn segment_verify_and_repair_cover_the_queue_state_and_its_history() {
    let mut broker = TestBroker::start();
    topic_with(&broker, "jobs", 1, &values(20), &[]);
    cli(
        &broker,
        &[
            "queue", "create", "q", "--topic", "jobs", "--from", "earliest",
        ],
    )
    .ok("create");
    cli(&broker, &["queue", "consume", "q", "-n", "5"]).ok("consume -n 5");
    broker.stop();
    let data = broker.data_dir();
    let data_arg = data.to_str().unwrap();

    let verify = |force_json: bool| {
        let mut args = vec!["segment", "verify", data_arg];
        if force_json {
            args.push("--json");
        }
        cli(&broker, &args)
    };
    let clean = verify(true).ok("verify");
    let report = clean.json();
    let kinds = |report: &Value| -> Vec<(String, String, usize)> {
        report["state_logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let file = l["file"].as_str().unwrap();
                let name = file.rsplit('/').next().unwrap().to_string();
                (
                    l["kind"].as_str().unwrap().to_string(),
                    name,
                    l["problems"].as_array().unwrap().len(),
                )
            })
            .collect()
    };
    let logs = kinds(&report);
    assert!(
        logs.iter()
            .any(|(k, n, p)| k == "queues" && n == "queues.statelog" && *p == 0),
        "{report:#}"
    );
    let history: Vec<&(String, String, usize)> =
        logs.iter().filter(|(k, _, _)| k == "history").collect();
    assert!(
        !history.is_empty(),
        "delivery history files are checked: {report:#}"
    );
    assert!(history.iter().all(|(_, _, p)| *p == 0), "{report:#}");
    let human = verify(false).ok("verify");
    assert!(
        human.stdout.contains("1 queue state log")
            && human.stdout.contains("delivery history file"),
        "{}",
        human.stdout
    );

    // A torn history tail and a damaged (not torn) queue state record.
    let history_dir = data.join("state/history/q");
    let history_file = std::fs::read_dir(&history_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "history"))
        .expect("a history file");
    let bytes = std::fs::read(&history_file).unwrap();
    std::fs::write(&history_file, &bytes[..bytes.len() - 1]).unwrap();
    let queues_log = data.join("state/queues/queues.statelog");
    let mut bytes = std::fs::read(&queues_log).unwrap();
    // Record boundaries (storage/FORMAT.md, "State logs": a u32 body length, a u32 CRC,
    // the body).
    let mut starts = vec![0usize];
    while let Some(len) = bytes
        .get(*starts.last().unwrap()..)
        .and_then(|rest| rest.get(..4))
    {
        let next =
            starts.last().unwrap() + 8 + u32::from_le_bytes(len.try_into().unwrap()) as usize;
        if next >= bytes.len() {
            break;
        }
        starts.push(next);
    }
    assert!(starts.len() >= 3, "create, deliveries and acks: {starts:?}");
    // Inside the second record's body (the first creates the queue); intact records
    // follow it, so this is damage, not a torn tail.
    let cut_at = starts[1];
    bytes[cut_at + 12] ^= 0x40;
    std::fs::write(&queues_log, &bytes).unwrap();

    let damaged = verify(false);
    assert_eq!(damaged.code, 1, "{}\n{}", damaged.stdout, damaged.stderr);
    assert!(
        damaged
            .stdout
            .contains("tidelogd refuses to start while the queue state is damaged"),
        "{}",
        damaged.stdout
    );
    assert!(
        damaged.stdout.contains("torn tail")
            && damaged.stdout.contains("reads of the history stop there"),
        "{}",
        damaged.stdout
    );
    let report = verify(true).json();
    assert_eq!(report["clean"], false, "{report:#}");

    // The broker does refuse the damaged queue state.
    let mut refused = std::process::Command::new(tidelog_tests::tidelogd_bin())
        .args(["--data-dir", data_arg])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tidelogd started on a damaged queue state log"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("queues.statelog"), "{stderr}");

    // Without --force only the torn tail is cut; with it, the damage too.
    let repair = cli(&broker, &["segment", "repair", data_arg]);
    assert_eq!(repair.code, 1, "{}\n{}", repair.stdout, repair.stderr);
    assert!(
        std::fs::read_dir(&history_dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".torn-at-")),
        "the torn bytes are kept beside the history file"
    );
    let report = verify(true).json();
    let problems: Vec<(String, String, usize)> = kinds(&report)
        .into_iter()
        .filter(|(_, _, p)| *p > 0)
        .collect();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0].0, "queues", "{report:#}");
    cli(&broker, &["segment", "repair", data_arg, "--force"]).ok("repair --force");
    verify(false).ok("verify after repair --force");
    assert!(
        std::fs::read_dir(data.join("state/queues"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".torn-at-")),
        "the cut queue state bytes are kept beside the log"
    );

    let kept = std::fs::metadata(&queues_log).unwrap().len();
    assert_eq!(kept, cut_at as u64, "cut where the damage begins");

    // The broker starts again with the queue as its first record made it: the acks
    // recorded after the cut are lost, so all 20 messages are delivered again.
    broker.restart();
    let again = cli(&broker, &["queue", "consume", "q", "--json"]).ok("consume");
    let mut seen: Vec<String> = again
        .json_lines()
        .iter()
        .map(|l| l["value"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut all = values(20);
    all.sort();
    assert_eq!(seen, all, "{}", again.stdout);
    broker.stop();
}

#[test]
fn a_queue_on_a_topic_pattern_from_the_cli() {
    let broker = TestBroker::start();
    topic_with(&broker, "orders.eu", 2, &values(6), &[]);
    topic_with(&broker, "payments", 1, &values(3), &[]);
    let created = cli(
        &broker,
        &[
            "queue",
            "create",
            "all-orders",
            "--topic-pattern",
            r"orders\..*",
            "--from",
            "earliest",
        ],
    )
    .ok("queue create --topic-pattern");
    assert!(
        created.stdout.starts_with(
            r"created queue all-orders on topic pattern orders\..* (1 topic: orders.eu) (6 ready)"
        ),
        "{}",
        created.stdout
    );
    topic_with(&broker, "orders.us", 1, &values(4), &[]);
    let described = describe(&broker, "all-orders");
    assert_eq!(described["topic_pattern"], r"orders\..*", "{described:#}");
    assert_eq!(
        described["topics"],
        serde_json::json!(["orders.eu", "orders.us"]),
        "{described:#}"
    );
    assert_eq!(described["ready"], 10, "{described:#}");
    let text = cli(&broker, &["queue", "describe", "all-orders"]).ok("describe");
    assert!(text.stdout.contains("TOPIC"), "{}", text.stdout);

    // Every delivery names its topic, and is acked (by topic) once printed.
    let consumed = cli(&broker, &["queue", "consume", "all-orders", "--json"]).ok("consume");
    let mut by_topic: BTreeMap<String, usize> = BTreeMap::new();
    for line in consumed.json_lines() {
        *by_topic
            .entry(line["topic"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        by_topic,
        BTreeMap::from([("orders.eu".to_string(), 6), ("orders.us".to_string(), 4)])
    );
    let after = describe(&broker, "all-orders");
    assert_eq!(
        (after["ready"].clone(), after["unacked"].clone()),
        (0.into(), 0.into())
    );

    // Listing deliveries needs the topic; both flags at once is a usage error.
    let listed = cli(
        &broker,
        &[
            "queue",
            "deliveries",
            "all-orders",
            "--topic",
            "orders.us",
            "--json",
        ],
    )
    .ok("deliveries --topic");
    assert!(!listed.stdout.is_empty());
    let without = cli(&broker, &["queue", "deliveries", "all-orders"]);
    assert_ne!(without.code, 0);
    assert!(without.stderr.contains("topic"), "{}", without.stderr);
    let both = cli(
        &broker,
        &[
            "queue",
            "create",
            "x",
            "--topic",
            "a",
            "--topic-pattern",
            "b",
        ],
    );
    assert_eq!(both.code, 2, "{}", both.stderr);
}
