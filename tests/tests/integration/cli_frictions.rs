//! Issue 12's frictions, through the real `tidelog` binary against a live tidelogd:
//! the broker's hints in the CLI's terms, output at scale, the operator's missing
//! commands, binary data, and following through broker restarts.

use tidelog_tests::TestBroker;

use crate::cli::{cli, cli_with_input};

/// No RPC name, request field or half-open range reaches an operator.
fn assert_cli_terms(stderr: &str) {
    for api in [
        "Admin.",
        "Groups.",
        "Consumer.",
        "Publisher.",
        "reset_policy",
        "max_message_bytes",
        "..",
    ] {
        assert!(!stderr.contains(api), "{api:?} in: {stderr}");
    }
}

#[test]
fn cli_broker_hints_name_cli_commands_and_flags() {
    let broker = TestBroker::start();

    let run = cli(&broker, &["consume", "nosuch"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "check the name (`tidelog topic list`) or create it with `tidelog topic create`"
        ),
        "{}",
        run.stderr
    );
    assert_cli_terms(&run.stderr);

    cli(&broker, &["topic", "create", "small", "--partitions", "3"]).ok("create");
    let run = cli(&broker, &["consume", "small", "-p", "5"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("topic \"small\" has 3 partitions (0-2); there is no partition 5"),
        "{}",
        run.stderr
    );
    assert_cli_terms(&run.stderr);

    // Over the topic's 1 MiB: raising the limit is the way out, said as a command.
    let big = vec![b'x'; (1 << 20) + 1];
    let run = cli_with_input(&broker, &["produce", "small"], &big);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "raise the topic's limit (`tidelog topic alter TOPIC --max-message-bytes SIZE`, up to \
             16MiB)"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(lines 1)"), "{}", run.stderr);
    assert_cli_terms(&run.stderr);

    // Over 16 MiB on a topic that already allows 16 MiB: no advice to raise it.
    cli(
        &broker,
        &["topic", "create", "huge", "--max-message-bytes", "16MiB"],
    )
    .ok("create");
    let huge = vec![b'x'; (16 << 20) + 1];
    let run = cli_with_input(&broker, &["produce", "huge"], &huge);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("16 MiB is the largest --max-message-bytes a topic can have"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("raise"), "{}", run.stderr);
    assert_cli_terms(&run.stderr);

    // A group with no committed offset under --offset-reset error.
    let run = cli(
        &broker,
        &[
            "consume",
            "small",
            "--group",
            "g",
            "--offset-reset",
            "error",
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("--offset-reset is error"),
        "{}",
        run.stderr
    );
    assert_cli_terms(&run.stderr);
}

/// One line of `--json` error output: the stable shape, every key present.
fn json_error(stderr: &str) -> serde_json::Value {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let value: serde_json::Value =
        serde_json::from_str(stderr).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    let error = value["error"].as_object().expect("an error object");
    let keys: Vec<&str> = error.keys().map(String::as_str).collect();
    assert_eq!(keys, ["message", "exit_code", "grpc_code"], "{stderr}");
    value
}

#[test]
fn cli_output_at_scale_and_errors_for_scripts() {
    let mut broker = TestBroker::start();

    // Usage errors exit 2, JSON ones too.
    for partitions in ["0", "10001"] {
        let run = cli(
            &broker,
            &["topic", "create", "t", "--partitions", partitions],
        );
        assert_eq!(run.code, 2, "{partitions}: {}", run.stderr);
        let run = cli(
            &broker,
            &["topic", "create", "t", "--partitions", partitions, "--json"],
        );
        assert_eq!(run.code, 2, "{}", run.stderr);
        let error = json_error(&run.stderr);
        assert_eq!(error["error"]["exit_code"], 2);
        assert_eq!(error["error"]["grpc_code"], serde_json::Value::Null);
    }
    let run = cli(&broker, &["consume", "--json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let error = json_error(&run.stderr);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("<TOPIC>"),
        "{}",
        run.stderr
    );
    // A broker error: its gRPC code, and the message in the CLI's terms.
    let run = cli(&broker, &["consume", "nosuch", "--json"]);
    assert_eq!(run.code, 1);
    let error = json_error(&run.stderr);
    assert_eq!(error["error"]["exit_code"], 1);
    assert_eq!(error["error"]["grpc_code"], "NOT_FOUND");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`tidelog topic create`"),
        "{}",
        run.stderr
    );

    // Many partitions take a while: a terminal sees the create going on, a pipe sees
    // nothing.
    let created = cli(
        &broker,
        &["topic", "create", "wide", "--partitions", "1000"],
    )
    .ok("create");
    assert_eq!(created.stderr, "");
    let on_terminal = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --server {} topic create wide2 --partitions 300",
            tidelog_tests::tidelog_bin().display(),
            broker.endpoint()
        ))
        .arg("/dev/null")
        .output()
        .expect("running script(1) from util-linux, to give tidelog a terminal");
    let screen = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{screen}");
    assert!(
        screen.contains("creating topic wide2 with 300 partitions ("),
        "{screen}"
    );
    assert!(screen.contains("created topic wide2"), "{screen}");

    // --quiet: one short line, whatever the number of partitions.
    let input: String = (0..3000).map(|i| format!("m{i}\n")).collect();
    // Keyless messages fill one partition's batch, then the next (the producer's
    // sticky partitioner): batches of 10 spread 3000 over 300 partitions.
    let produced = cli_with_input(
        &broker,
        &["produce", "wide", "--quiet", "--batch-messages", "10"],
        input.as_bytes(),
    )
    .ok("produce");
    assert_eq!(produced.stdout.lines().count(), 1, "{}", produced.stdout);
    assert!(produced.stdout.len() < 200, "{}", produced.stdout);
    let partitions: u32 = produced
        .stdout
        .trim_end()
        .rsplit("; ")
        .next()
        .and_then(|tail| tail.strip_suffix(" partitions"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no partition count in {}", produced.stdout));
    assert!(partitions > 4, "{}", produced.stdout);

    // segment verify: a live directory is named as such; partitions in natural order.
    cli(&broker, &["topic", "create", "big", "--partitions", "12"]).ok("create");
    let data = broker.data_dir();
    let data = data.to_str().unwrap();
    let live = cli(&broker, &["segment", "verify", data]);
    assert!(
        live.stderr.contains("warning: a running tidelogd holds"),
        "{}",
        live.stderr
    );
    broker.stop();
    let verified = cli(&broker, &["segment", "verify", data]).ok("verify");
    assert!(!verified.stderr.contains("warning"), "{}", verified.stderr);
    let big: Vec<u32> = verified
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|dir| dir.split_once("/topics/big/"))
        .map(|(_, p)| p.parse().unwrap())
        .collect();
    assert_eq!(big, (0..12).collect::<Vec<_>>(), "{}", verified.stdout);
}

#[test]
fn cli_broker_describe_shows_the_effective_settings() {
    let broker = TestBroker::start_with(&["--retention-interval", "250ms"]);
    let described = cli(&broker, &["broker", "describe", "--json"]).ok("broker describe");
    let value = described.json();
    assert_eq!(value["listen"], broker.grpc_addr().to_string());
    assert_eq!(value["metrics_listen"], broker.metrics_addr().to_string());
    let data = std::fs::canonicalize(broker.data_dir()).unwrap();
    assert_eq!(value["data_dir"], data.display().to_string());
    assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));
    let settings = &value["settings"];
    assert_eq!(settings["retention_interval"], "250ms");
    assert_eq!(settings["shutdown_timeout"], "10s");
    assert_eq!(settings["listen"], broker.grpc_addr().to_string());
    let text = cli(&broker, &["broker", "describe"]).ok("broker describe");
    assert!(
        text.stdout.contains("retention_interval"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("listen          {}", broker.grpc_addr())),
        "{}",
        text.stdout
    );
}

#[test]
fn cli_topic_alter_raises_the_partition_count_and_says_keys_move() {
    let mut broker = TestBroker::start();
    cli(&broker, &["topic", "create", "grow", "--partitions", "2"]).ok("create");
    let member = crate::cli::GroupConsumer::spawn(
        &broker,
        &["consume", "grow", "--group", "g", "--follow"],
        false,
    );
    crate::cli::wait_until("the member joined", || {
        let described = cli(&broker, &["group", "describe", "g", "--json"]);
        described.code == 0 && described.json()["members"].as_array().unwrap().len() == 1
    });
    cli_with_input(&broker, &["produce", "grow", "-p", "1"], b"before\n").ok("produce");

    let altered = cli(&broker, &["topic", "alter", "grow", "--partitions", "4"]).ok("alter");
    assert!(
        altered
            .stderr
            .contains("KEYS NOW MAP TO DIFFERENT PARTITIONS (hash(key) % 4, not % 2)"),
        "{}",
        altered.stderr
    );
    assert!(
        altered.stdout.contains("partitions             2 -> 4"),
        "{}",
        altered.stdout
    );
    let described = cli(&broker, &["topic", "describe", "grow", "--json"]).ok("describe");
    assert_eq!(described.json()["partitions"].as_array().unwrap().len(), 4);

    // The group's member was given the new partitions: it reads what arrives there.
    cli_with_input(&broker, &["produce", "grow", "-p", "3"], b"after\n").ok("produce");
    crate::cli::wait_until("the member read the new partition", || {
        member.lines().iter().any(|l| l == "after")
    });
    let (code, stderr, lines) = member.finish(true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines, ["before", "after"], "{stderr}");

    // Only up.
    let down = cli(&broker, &["topic", "alter", "grow", "--partitions", "3"]);
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(down.stderr.contains("only grows"), "{}", down.stderr);
    assert_eq!(
        cli(&broker, &["topic", "alter", "grow", "--partitions", "0"]).code,
        2
    );

    // Durable: a restarted broker has the four partitions and their messages.
    broker.restart();
    let consumed = cli(&broker, &["consume", "grow", "-p", "3"]).ok("consume");
    assert_eq!(consumed.stdout, "after\n");
}

#[test]
fn cli_if_exists_flags_and_the_total_lag() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "t", "--partitions", "2"]).ok("create");
    // Again: an error, unless --if-not-exists (which leaves the topic as it is).
    assert_eq!(cli(&broker, &["topic", "create", "t"]).code, 1);
    let again = cli(
        &broker,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "5",
            "--if-not-exists",
        ],
    )
    .ok("create --if-not-exists");
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    let again = cli(
        &broker,
        &["topic", "create", "t", "--if-not-exists", "--json"],
    )
    .ok("create --if-not-exists --json");
    assert_eq!(again.json()["created"], false);
    assert_eq!(
        again.json()["topic"]["partitions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Total lag: the group committed partition 0 at 1 and nothing for partition 1;
    // the total sums the committed partitions and says what the others hold, counted
    // from the log start (hunt finding: partition 1 was left out, so its messages
    // hid behind the total). (Set with reset-offsets: a consume -n 1 may or may not
    // commit partition 1's start before it stops, depending on when that partition's
    // position reaches it.)
    cli_with_input(&broker, &["produce", "t", "-p", "0"], b"a\nb\nc\n").ok("produce");
    cli_with_input(&broker, &["produce", "t", "-p", "1"], b"d\ne\nf\n").ok("produce");
    let reset = [
        "group",
        "reset-offsets",
        "--group",
        "g",
        "--topic",
        "t:0",
        "--to-offset",
        "1",
        "--execute",
    ];
    cli(&broker, &reset).ok("reset-offsets");
    let described = cli(&broker, &["group", "describe", "g"]).ok("describe");
    assert!(
        described.stdout.contains(
            "total lag 2, plus 3 messages on 1 partition without a commit (LAG marked *)\n\
             * no commit: LAG counts from the log start; a member starts such a partition per \
             its --offset-reset (earliest reads these messages, latest skips them)\n"
        ),
        "{}",
        described.stdout
    );
    let uncommitted = described
        .stdout
        .lines()
        .find(|line| line.starts_with("t ") && line.split_whitespace().nth(1) == Some("1"))
        .unwrap_or_else(|| panic!("no row of t/1: {}", described.stdout));
    assert_eq!(
        uncommitted.split_whitespace().collect::<Vec<_>>(),
        ["t", "1", "-", "0", "3", "3*", "-"],
        "{}",
        described.stdout
    );
    let described = cli(&broker, &["group", "describe", "g", "--json"]).ok("describe");
    let json = described.json();
    assert_eq!(json["total_lag"], 2);
    assert_eq!(json["partitions_without_commit"], 1);
    assert_eq!(json["lag_without_commit"], 3);
    assert_eq!(json["partitions"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(
        json["partitions"][1]["committed_offset"],
        serde_json::Value::Null
    );
    assert_eq!(json["partitions"][1]["lag"], serde_json::Value::Null);
    assert_eq!(json["partitions"][1]["lag_from_log_start"], 3);
    assert_eq!(
        json["partitions"][0]["lag_from_log_start"],
        serde_json::Value::Null
    );
    // Both partitions read from their commits (or the start): one message more.
    cli(&broker, &["consume", "t", "--group", "g", "-n", "1"]).ok("consume");
    let described = cli(&broker, &["group", "describe", "g", "--json"]).ok("describe");
    let lag = described.json()["total_lag"].as_u64().unwrap();
    assert!(
        lag == 1 || lag == 4,
        "total lag {lag}: {}",
        described.stdout
    );

    // Delete: an error for a missing topic, unless --if-exists.
    cli(&broker, &["topic", "delete", "t"]).ok("delete");
    assert_eq!(cli(&broker, &["topic", "delete", "t"]).code, 1);
    let gone = cli(&broker, &["topic", "delete", "t", "--if-exists"]).ok("delete --if-exists");
    assert!(gone.stderr.contains("nothing deleted"), "{}", gone.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_consume_until_an_offset_or_a_time_and_headers_in_text() {
    use tidelog_proto::v1::{AckLevel, Header, Message, PublishRequest};
    let broker = TestBroker::start();
    let broker = &broker;
    tokio::task::block_in_place(|| {
        cli(broker, &["topic", "create", "u"]).ok("create");
    });
    // Ten messages a second apart, from a fixed time.
    const T0: i64 = 1_700_000_000_000;
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "u".into(),
            messages: (0..10)
                .map(|i| Message {
                    value: format!("m{i}").into_bytes().into(),
                    timestamp_ms: Some(T0 + i * 1000),
                    headers: vec![
                        Header {
                            key: "source".into(),
                            value: "cli".into(),
                        },
                        Header {
                            key: "list".into(),
                            value: "a,b".into(),
                        },
                    ],
                    ..Message::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    let lines =
        |run: &crate::cli::Run| -> Vec<String> { run.stdout.lines().map(str::to_string).collect() };
    let values =
        |range: std::ops::Range<i64>| -> Vec<String> { range.map(|i| format!("m{i}")).collect() };
    tokio::task::block_in_place(|| {
        let run = cli(broker, &["consume", "u", "--until", "5"]).ok("until 5");
        assert_eq!(lines(&run), values(0..5));
        let run = cli(broker, &["consume", "u", "--from", "2", "--until", "5"]).ok("2..5");
        assert_eq!(lines(&run), values(2..5));
        // A time: the first message stamped at or after it is not printed.
        let at = crate::cli::rfc3339(T0 + 2500);
        let run = cli(broker, &["consume", "u", "--until", &at]).ok("until a time");
        assert_eq!(lines(&run), values(0..3));
        // --follow ends by itself once the partition reached it.
        let run = cli(broker, &["consume", "u", "--follow", "--until", "4"]).ok("follow");
        assert_eq!(lines(&run), values(0..4));
        let run = cli(broker, &["consume", "u", "--follow", "--until", &at]).ok("follow time");
        assert!(lines(&run).len() <= 3, "{}", run.stdout);
        // A group prints, and commits, up to it.
        let run = cli(broker, &["consume", "u", "--group", "g", "--until", "3"]).ok("group");
        assert_eq!(lines(&run), values(0..3));
        let described = cli(broker, &["group", "describe", "g", "--json"]).ok("describe");
        assert_eq!(described.json()["partitions"][0]["committed_offset"], 3);
        let run = cli(
            broker,
            &["consume", "u", "--group", "g", "--follow", "--until", "6"],
        )
        .ok("group follow");
        assert_eq!(lines(&run), values(3..6));

        // Headers in the text format, escaped so they never split the field.
        let run = cli(
            broker,
            &["consume", "u", "-n", "1", "--print-headers", "--print-key"],
        )
        .ok("headers");
        assert_eq!(run.stdout, "\tsource=cli,list=a\\,b\tm0\n");
        cli_with_input(broker, &["produce", "u"], b"bare\n").ok("produce");
        let run = cli(broker, &["consume", "u", "--from", "10", "--print-headers"]).ok("none");
        assert_eq!(run.stdout, "-\tbare\n");
    });
}

/// Issue 12 item 8: a group member commits where the broker says the partition stands
/// (MessageBatch.positions), past expired messages it never saw, not "last offset + 1".
/// Hunt finding: a member whose consumer was killed with -9 showed like a connected
/// one until its session timeout removed it. Its connection goes away as a killed
/// process's does (the member's own channel is dropped), and `group describe` says it
/// is disconnected and how long its session keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_group_describe_shows_a_killed_member_as_disconnected() {
    use tidelog_proto::v1::subscribe_response::Event;
    use tidelog_proto::v1::{GroupMembership, ResetPolicy, SubscribeRequest};
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "jobs", "--partitions", "2"]).ok("create");
    {
        let mut consumer = broker.consumer().await;
        let mut stream = consumer
            .subscribe(SubscribeRequest {
                topic: "jobs".into(),
                group: Some(GroupMembership {
                    group_id: "workers".into(),
                    session_timeout_ms: 60_000,
                    client_id: "worker".into(),
                    ..GroupMembership::default()
                }),
                reset_policy: ResetPolicy::Earliest as i32,
                ..SubscribeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an Assignment in time")
            .unwrap()
            .unwrap();
        assert!(
            matches!(first.event, Some(Event::Assignment(_))),
            "{first:?}"
        );
    }
    let mut described = String::new();
    crate::cli::wait_until("the member shows as disconnected", || {
        described = cli(&broker, &["group", "describe", "workers"])
            .ok("describe")
            .stdout;
        described.contains("disconnected")
    });
    assert!(
        described.contains("state STABLE  generation 1  (1 member, 1 disconnected)"),
        "{described}"
    );
    let row = described
        .lines()
        .find(|line| line.starts_with("worker-"))
        .unwrap_or_else(|| panic!("no member row: {described}"));
    let seconds: u64 = row
        .split("disconnected, leaves in ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seconds left in: {row}"));
    assert!((50..=60).contains(&seconds), "{row}");
    assert!(
        described.contains("nobody reads its partitions"),
        "{described}"
    );

    let json = cli(&broker, &["group", "describe", "workers", "--json"])
        .ok("describe --json")
        .json();
    let member = &json["members"][0];
    assert_eq!(member["disconnected"], true, "{json}");
    let left = member["session_expires_in_ms"].as_u64().expect("ms left");
    assert!(left > 50_000 && left <= 60_000, "{json}");
}

#[test]
fn cli_group_commits_past_expired_messages() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "ttl"]).ok("create");
    cli_with_input(&broker, &["produce", "ttl"], b"kept\n").ok("produce");
    cli_with_input(
        &broker,
        // Not shorter: the producer stamps the expiry when it sends, and the broker
        // refuses a message that expired on its way.
        &["produce", "ttl", "--ttl", "1s"],
        b"gone-1\ngone-2\n",
    )
    .ok("produce");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let run = cli(&broker, &["consume", "ttl", "--group", "g"]).ok("consume");
    assert_eq!(run.stdout, "kept\n");
    let described = cli(&broker, &["group", "describe", "g", "--json"]).ok("describe");
    let partition = &described.json()["partitions"][0];
    assert_eq!(partition["committed_offset"], 3, "{}", described.stdout);
    assert_eq!(partition["lag"], 0, "{}", described.stdout);
}

#[test]
fn cli_prints_shell_completions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = tidelog_tests::tidelog_command()
            .args(["completions", shell])
            .output()
            .expect("running tidelog");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["consume", "reset-offsets", "if-not-exists", "until"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        if shell == "bash" {
            // The script is valid bash.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tidelog.bash");
            std::fs::write(&path, &script).unwrap();
            let checked = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()
                .expect("running bash -n");
            assert!(checked.success());
        }
    }
    let bad = tidelog_tests::tidelog_command()
        .args(["completions", "tcsh"])
        .output()
        .expect("running tidelog");
    assert_eq!(bad.status.code(), Some(2));
}

/// `tidelog` with raw stdin and raw stdout (binary data).
fn cli_bytes(broker: &TestBroker, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = tidelog_tests::tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting tidelog");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cli_binary_data_both_ways() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "bin"]).ok("create");
    let random: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(random.contains(&b'\n') && std::str::from_utf8(&random).is_err());

    // Line mode on binary input: split at newline bytes, and said so.
    let (code, _, stderr) = cli_bytes(&broker, &["produce", "bin", "-q"], &random);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("is not UTF-8 text"), "{stderr}");
    let lines = random.iter().filter(|&&b| b == b'\n').count() as u64;

    // A whole file is one message, byte for byte, raw or in base64.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &random).unwrap();
    let produced = cli(
        &broker,
        &["produce", "bin", "--value-file", file.to_str().unwrap()],
    )
    .ok("produce --value-file");
    let offset = lines + 1;
    assert_eq!(produced.stdout, format!("partition 0 offset {offset}\n"));
    let from = offset.to_string();
    let (code, raw, stderr) = cli_bytes(&broker, &["consume", "bin", "--from", &from], b"");
    assert_eq!(code, 0, "{stderr}");
    let mut expected = random.clone();
    expected.push(b'\n');
    assert_eq!(
        raw, expected,
        "--format raw (the default) prints the bytes as stored"
    );
    let encoded = cli(
        &broker,
        &["consume", "bin", "--from", &from, "--format", "base64"],
    )
    .ok("consume base64");
    // Round trip: what consume prints in base64, produce reads in base64.
    cli_with_input(
        &broker,
        &["produce", "bin", "--format", "base64"],
        encoded.stdout.as_bytes(),
    )
    .ok("produce base64");
    let from = (offset + 1).to_string();
    let (_, again, _) = cli_bytes(&broker, &["consume", "bin", "--from", &from], b"");
    assert_eq!(again, expected);
    let bad = cli_with_input(&broker, &["produce", "bin", "--format", "base64"], b"!!\n");
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("is not base64"), "{}", bad.stderr);

    // NUL-delimited both ways (find -print0 | ..., ... | xargs -0).
    cli(&broker, &["topic", "create", "nul"]).ok("create");
    let (code, _, stderr) = cli_bytes(&broker, &["produce", "nul", "-D", "\\0"], b"a\0b\nc\0");
    assert_eq!(code, 0, "{stderr}");
    let (_, out, _) = cli_bytes(&broker, &["consume", "nul", "-D", "\\0"], b"");
    assert_eq!(out, b"a\0b\nc\0");

    // CRLF input: the \r is kept, with a warning naming the fix; -D '\r\n' splits there.
    cli(&broker, &["topic", "create", "crlf"]).ok("create");
    let (code, _, stderr) = cli_bytes(&broker, &["produce", "crlf"], b"x\r\ny\r\n");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("-D '\\r\\n'"), "{stderr}");
    let (code, _, stderr) = cli_bytes(&broker, &["produce", "crlf", "-D", "\\r\\n"], b"z\r\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    let (_, out, _) = cli_bytes(&broker, &["consume", "crlf", "--format", "json"], b"");
    let values: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].to_string())
        .collect();
    assert_eq!(values, [r#""x\r""#, r#""y\r""#, r#""z""#]);
}

/// `consume --follow` (plain and as a group member) outlives a broker restart: it
/// reconnects with backoff, resumes where it stood (the group member joins again) and
/// prints what is published after the restart.
#[test]
fn cli_follow_reconnects_when_the_broker_restarts() {
    let mut broker = TestBroker::start();
    cli(&broker, &["topic", "create", "live", "--partitions", "2"]).ok("create");
    cli_with_input(&broker, &["produce", "live"], b"a\nb\n").ok("produce");
    let plain = crate::cli::GroupConsumer::spawn(&broker, &["consume", "live", "--follow"], false);
    let member = crate::cli::GroupConsumer::spawn(
        &broker,
        &["consume", "live", "--group", "g", "--follow"],
        false,
    );
    crate::cli::wait_until("both printed what was there", || {
        plain.lines().len() == 2 && member.lines().len() == 2
    });
    // The group's commit of what it printed has landed (a restart before it would have
    // the member print those lines again, as at-least-once allows).
    crate::cli::wait_until("the group committed what it printed", || {
        let described = cli(&broker, &["group", "describe", "g", "--json"]);
        described.code == 0
            && described.json()["partitions"]
                .as_array()
                .is_some_and(|parts| {
                    parts
                        .iter()
                        .map(|p| p["committed_offset"].as_u64().unwrap_or(0))
                        .sum::<u64>()
                        == 2
                })
    });

    broker.restart_on_the_same_ports();
    cli_with_input(&broker, &["produce", "live"], b"c\nd\n").ok("produce after the restart");
    crate::cli::wait_until("both printed what came after the restart", || {
        plain.lines().len() >= 4 && member.lines().len() >= 4
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, stderr, mut lines) = plain.finish(true);
    assert_eq!(code, 0, "{stderr}");
    lines.sort();
    assert_eq!(lines, ["a", "b", "c", "d"], "{stderr}");
    assert!(stderr.contains("reconnecting with backoff"), "{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    let (code, stderr, mut lines) = member.finish(true);
    assert_eq!(code, 0, "{stderr}");
    lines.sort();
    assert_eq!(lines, ["a", "b", "c", "d"], "{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
}

/// `consume --topic-pattern` (no group) notes the topics it reads, picks up a topic
/// created later, outlives a broker restart (resuming every (topic, partition) where it
/// stood) and notes a deleted topic; each message printed once, with its topic.
#[test]
fn cli_topic_pattern_follows_new_topics_and_reconnects_when_the_broker_restarts() {
    let mut broker = TestBroker::start();
    cli(&broker, &["topic", "create", "tp.a", "--partitions", "2"]).ok("create");
    cli_with_input(&broker, &["produce", "tp.a"], b"a1\na2\n").ok("produce");
    let reader = crate::cli::GroupConsumer::spawn(
        &broker,
        &["--json", "consume", "--topic-pattern", r"tp\..*"],
        false,
    );
    crate::cli::wait_until("it printed what was there", || reader.lines().len() == 2);
    cli(&broker, &["topic", "create", "tp.b"]).ok("create later");
    cli_with_input(&broker, &["produce", "tp.b"], b"b1\n").ok("produce");
    crate::cli::wait_until("it printed the new topic's message", || {
        reader.lines().len() == 3
    });

    broker.restart_on_the_same_ports();
    cli_with_input(&broker, &["produce", "tp.a"], b"a3\n").ok("produce after the restart");
    cli_with_input(&broker, &["produce", "tp.b"], b"b2\n").ok("produce after the restart");
    crate::cli::wait_until("it printed what came after the restart", || {
        reader.lines().len() >= 5
    });
    cli(&broker, &["topic", "delete", "tp.b"]).ok("delete");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, stderr, lines) = reader.finish(true);
    assert_eq!(code, 0, "{stderr}");
    let mut printed: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect(line);
            (
                v["topic"].as_str().expect("topic").to_string(),
                v["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    printed.sort();
    let expected: Vec<(String, String)> = [
        ("tp.a", "a1"),
        ("tp.a", "a2"),
        ("tp.a", "a3"),
        ("tp.b", "b1"),
        ("tp.b", "b2"),
    ]
    .iter()
    .map(|(t, v)| (t.to_string(), v.to_string()))
    .collect();
    assert_eq!(printed, expected, "{stderr}");
    for needle in [
        "note: reading topics tp.a",
        "note: reading topics tp.b",
        "reconnecting with backoff",
        "reconnected",
        "note: topics tp.b were deleted: no longer read",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
}

/// `consume --group --from`: where partitions without a committed offset start (as
/// kafka-console-consumer --from-beginning); a group with commits goes on from them.
#[test]
fn cli_group_from_applies_without_a_committed_offset() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "f"]).ok("create");
    let input: String = (0..10).map(|i| format!("m{i}\n")).collect();
    cli_with_input(&broker, &["produce", "f"], input.as_bytes()).ok("produce");
    let printed = |run: crate::cli::Run| -> Vec<String> {
        run.ok("consume")
            .stdout
            .lines()
            .map(str::to_string)
            .collect()
    };
    let values =
        |range: std::ops::Range<u32>| -> Vec<String> { range.map(|i| format!("m{i}")).collect() };
    // An offset: the group starts there.
    let run = cli(&broker, &["consume", "f", "--group", "g", "--from", "7"]);
    assert_eq!(printed(run), values(7..10));
    // The group has committed: --from no longer applies.
    let run = cli(&broker, &["consume", "f", "--group", "g", "--from", "0"]);
    assert_eq!(printed(run), Vec::<String>::new());
    // latest: nothing now, and the group goes on from there next time.
    let run = cli(
        &broker,
        &["consume", "f", "--group", "late", "--from", "latest"],
    );
    assert_eq!(printed(run), Vec::<String>::new());
    cli_with_input(&broker, &["produce", "f"], b"m10\n").ok("produce");
    let run = cli(&broker, &["consume", "f", "--group", "late"]);
    assert_eq!(printed(run), values(10..11));
    // earliest (Kafka's --from-beginning) for a new group.
    let run = cli(
        &broker,
        &["consume", "f", "--group", "new", "--from", "earliest"],
    );
    assert_eq!(printed(run), values(0..11));
}

/// Bug hunt 2026-12-06: `consume --group --from OFFSET` past a partition's end
/// committed the end there, skipping every message of that partition in silence, where
/// the same --from without a group follows --offset-reset. Now the group's start
/// follows it too: earliest (the default) starts at the log start with a note, error
/// fails naming the offsets; a partition the offset lies in starts there.
#[test]
fn cli_group_from_past_a_partitions_end_follows_offset_reset() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "fr", "--partitions", "2"]).ok("create");
    let lines =
        |range: std::ops::Range<u32>| -> String { range.map(|i| format!("m{i}\n")).collect() };
    cli_with_input(
        &broker,
        &["produce", "fr", "-p", "0"],
        lines(0..30).as_bytes(),
    )
    .ok("p0");
    cli_with_input(
        &broker,
        &["produce", "fr", "-p", "1"],
        lines(100..120).as_bytes(),
    )
    .ok("p1");
    // Partition 0 holds 0..30, partition 1 0..20: offset 25 is past partition 1's end.
    let run = cli(&broker, &["consume", "fr", "--group", "g", "--from", "25"]).ok("consume");
    let mut printed: Vec<&str> = run.stdout.lines().collect();
    printed.sort_unstable();
    let mut want: Vec<String> = (25..30).chain(100..120).map(|i| format!("m{i}")).collect();
    want.sort_unstable();
    assert_eq!(printed, want, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("partition 1: offset 25 is past the end 20; starting at the log start 0"),
        "{}",
        run.stderr
    );
    let run = cli(
        &broker,
        &[
            "consume",
            "fr",
            "--group",
            "e",
            "--from",
            "500",
            "--offset-reset",
            "error",
        ],
    );
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("offset 500 of fr/0 is past the end 30"),
        "{}",
        run.stderr
    );
    // Nothing was committed for the group that failed: a later start still applies.
    let run = cli(&broker, &["consume", "fr", "--group", "e", "--from", "29"]).ok("consume");
    assert!(run.stdout.lines().any(|l| l == "m29"), "{}", run.stdout);
}

/// Bug hunt 2026-12-06: two `consume --group G -n 7` started together. The first to
/// finish often had its final commit refused (the other's join had started a
/// rebalance), fell back to a tool's commit, which live members refuse, and warned:
/// what it printed was delivered again to the next reader (8 runs in 10). Now a member
/// whose final commit meets a rebalance takes the coming Assignment and commits in its
/// generation: across the two, every message is printed once, and the group's
/// committed offsets are past everything printed.
#[test]
fn cli_group_members_started_together_print_each_message_once() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "t", "--partitions", "2"]).ok("create");
    for p in ["0", "1"] {
        let lines: String = (0..60).map(|i| format!("{p}-{i}\n")).collect();
        cli_with_input(&broker, &["produce", "t", "-p", p], lines.as_bytes()).ok("produce");
    }
    for trial in 0..5 {
        let group = format!("together-{trial}");
        let spawn = || {
            tidelog_tests::tidelog_command()
                .args(["--server", &broker.endpoint()])
                .args(["consume", "t", "--group", &group, "-n", "7"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting tidelog")
        };
        let (a, b) = (spawn(), spawn());
        let mut printed: Vec<String> = Vec::new();
        for child in [a, b] {
            let out = child.wait_with_output().expect("waiting for tidelog");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "trial {trial}: {stderr}");
            assert!(
                !stderr.contains("delivered again"),
                "trial {trial}: {stderr}"
            );
            printed.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
        let mut unique = printed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            printed.len(),
            "trial {trial}: printed twice: {printed:?}"
        );
        // The next reader of the group starts after everything printed.
        let next = cli(&broker, &["consume", "t", "--group", &group, "-n", "200"]).ok("consume");
        for line in next.stdout.lines() {
            assert!(
                !printed.iter().any(|p| p == line),
                "trial {trial}: {line} again"
            );
        }
    }
}

/// Bug hunt 2026-12-06: a mistyped --topic-pattern (or --all-topics on a group with no
/// commits) exited 0 with "committed the new offsets of group billing (0
/// partitions)". Now it fails, saying the scope names no partition and what to check.
#[test]
fn cli_a_reset_whose_pattern_or_group_names_nothing_fails() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "orders"]).ok("create");
    cli_with_input(&broker, &["produce", "orders"], b"a\nb\n").ok("produce");
    for (scope, needle) in [
        (vec!["--topic-pattern", "ordres.*"], "names no partition"),
        (vec!["--all-topics"], "has no committed offsets"),
    ] {
        let mut args = vec!["group", "reset-offsets", "--group", "billing"];
        args.extend(&scope);
        args.extend(["--to-earliest", "--execute"]);
        let run = cli(&broker, &args);
        assert_eq!(run.code, 1, "{scope:?}: {} {}", run.stdout, run.stderr);
        assert!(run.stderr.contains(needle), "{scope:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains("committed the new offsets"),
            "{}",
            run.stderr
        );
    }
    // A pattern that matches goes through.
    let run = cli(
        &broker,
        &[
            "group",
            "reset-offsets",
            "--group",
            "billing",
            "--topic-pattern",
            "ord.*",
            "--to-earliest",
            "--execute",
        ],
    )
    .ok("reset");
    assert!(
        run.stderr
            .contains("committed the new offsets of group billing (1 partition)"),
        "{}",
        run.stderr
    );
}

/// What a terminal shows while `tidelog ARGS` runs (through script(1)), escape
/// sequences and all.
fn on_a_terminal(broker: &TestBroker, args: &str) -> String {
    let output = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --server {} {args}",
            tidelog_tests::tidelog_bin().display(),
            broker.endpoint()
        ))
        .arg("/dev/null")
        .output()
        .expect("running script(1) from util-linux, to give tidelog a terminal");
    let screen = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args}: {screen}");
    screen
}

/// The progress displays say what is true from their first frame: produce's ETA is
/// not a guess from no data ("16h"), and a produce benchmark does not report
/// "consumed 0 (0/s)".
#[test]
fn cli_progress_displays_start_sensibly() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "p"]).ok("create");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.txt");
    let line = "x".repeat(99);
    let input: String = (0..100_000).map(|_| format!("{line}\n")).collect();
    std::fs::write(&file, input).unwrap();
    let screen = on_a_terminal(
        &broker,
        &format!("produce p --quiet --file {}", file.display()),
    );
    let etas: Vec<&str> = screen
        .split("eta ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!etas.is_empty(), "no progress bar: {screen}");
    assert_eq!(etas[0], "-", "the first ETA is a guess: {screen}");
    for eta in &etas {
        assert!(!eta.contains('h'), "an ETA of hours for 10 MB: {screen}");
    }

    let screen = on_a_terminal(&broker, "bench produce --messages 200k --topic bp");
    assert!(screen.contains("produce: produced"), "{screen}");
    assert!(!screen.contains("consumed 0"), "{screen}");
}

/// `group delete-offsets` removes one topic's committed offsets (some partitions, or
/// all) and the group starts them by its reset policy again; refused while the group
/// has live members, NOT_FOUND when there is nothing to delete.
#[test]
fn cli_group_delete_offsets_of_one_topic() {
    let broker = TestBroker::start();
    for topic in ["a", "b"] {
        cli(&broker, &["topic", "create", topic, "--partitions", "2"]).ok("create");
        cli_with_input(&broker, &["produce", topic, "-p", "0"], b"1\n2\n").ok("produce");
        cli_with_input(&broker, &["produce", topic, "-p", "1"], b"3\n4\n").ok("produce");
    }
    for topic in ["a", "b"] {
        cli(&broker, &["consume", topic, "--group", "g", "-n", "4"]).ok("consume");
    }
    let offsets = |broker: &TestBroker| -> Vec<(String, u64)> {
        let described = cli(broker, &["group", "describe", "g", "--json"]).ok("describe");
        described.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !p["committed_offset"].is_null())
            .map(|p| {
                (
                    p["topic"].as_str().unwrap().to_string(),
                    p["partition"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(offsets(&broker).len(), 4);
    let done = cli(
        &broker,
        &["group", "delete-offsets", "--group", "g", "--topic", "a:1"],
    )
    .ok("delete-offsets a:1");
    assert_eq!(
        done.stdout.trim(),
        "deleted the offsets of group g for partition 1 of a"
    );
    assert_eq!(
        offsets(&broker),
        vec![
            ("a".to_string(), 0),
            ("b".to_string(), 0),
            ("b".to_string(), 1)
        ]
    );
    let done = cli(
        &broker,
        &[
            "group",
            "delete-offsets",
            "--group",
            "g",
            "--topic",
            "b",
            "--json",
        ],
    )
    .ok("delete-offsets b");
    assert_eq!(done.json()["deleted"], true);
    assert_eq!(offsets(&broker), vec![("a".to_string(), 0)]);
    let nothing = cli(
        &broker,
        &["group", "delete-offsets", "--group", "g", "--topic", "b"],
    );
    assert_eq!(nothing.code, 1, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("no committed offsets"),
        "{}",
        nothing.stderr
    );
    // Partition 1 of a starts again by the reset policy (earliest): its two messages.
    let again = cli(&broker, &["consume", "a", "--group", "g", "-n", "2"]).ok("consume");
    assert_eq!(again.stdout.lines().collect::<Vec<_>>(), vec!["3", "4"]);
}

/// CI run 2026-12-07: a member whose handover commit reached the broker after the
/// group had moved on again (the member that took the partition left before the
/// commit came: here the commit waits in a paused proxy) took the refusal as "the
/// partition moved", said "delivered again", and never committed what it had
/// printed of it, although the next Assignment gave the partition back: the next
/// reader of the group printed those messages again. Now it commits them with that
/// Assignment.
#[test]
fn cli_a_handover_refused_because_the_group_moved_on_again_commits_with_the_next_assignment() {
    use std::io::BufRead;
    use tidelog_client::{Client, GroupMember, GroupOptions};
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "t", "--partitions", "2"]).ok("create");
    let produce = |p: &str, from: usize, to: usize| {
        let lines: String = (from..to).map(|i| format!("{p}-{i}\n")).collect();
        cli_with_input(&broker, &["produce", "t", "-p", p], lines.as_bytes()).ok("produce");
    };
    for p in ["0", "1"] {
        produce(p, 0, 3);
    }
    let proxy = tidelog_tests::FlakyProxy::start(broker.grpc_addr());
    let mut a = tidelog_tests::tidelog_command()
        .args(["--server", &proxy.endpoint()])
        .args(["consume", "t", "--group", "g", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting tidelog");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = a.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed: Vec<String> = Vec::new();
    let read = |count: usize, printed: &mut Vec<String>| {
        while printed.len() < count {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("member A printed only {printed:?}"));
            printed.push(line);
        }
    };
    read(6, &mut printed);
    let describe = || {
        cli(&broker, &["group", "describe", "g", "--json"])
            .ok("describe")
            .json()
    };
    let committed = |offsets: [u64; 2]| {
        let partitions = describe()["partitions"].clone();
        (0..2).all(|p| partitions[p]["committed_offset"].as_u64() == Some(offsets[p]))
    };
    crate::cli::wait_until("A committed what it printed", || committed([3, 3]));
    let generation = describe()["generation"].as_u64().unwrap();
    // A's commit of what it prints now waits in the proxy.
    proxy.pause(true);
    produce("0", 3, 5);
    read(8, &mut printed);
    // B joins and takes partition 0 (its id sorts first: the range assignor's first
    // share), held for A's handover commit; then B leaves before that commit
    // arrives, and partition 0 comes back to A.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect(&broker.endpoint()).await.expect("connect");
        let b = GroupMember::join(
            &client,
            "t",
            GroupOptions {
                client_id: "a-member".into(),
                session_timeout: std::time::Duration::ZERO,
                ..GroupOptions::new("g")
            },
        )
        .await
        .expect("B joins");
        assert_eq!(b.assigned().collect::<Vec<_>>(), [("t", 0)]);
        assert_eq!(b.assignment().1, generation + 1);
    });
    drop(runtime);
    crate::cli::wait_until("B left", || {
        describe()["generation"].as_u64() == Some(generation + 2)
    });
    proxy.pause(false);
    // Without the fix the commit never comes: give it 10 s, then end A either way
    // (SIGINT: it commits and leaves).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !committed([5, 3]) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &a.id().to_string()])
        .status();
    let out = a.wait_with_output().expect("waiting for A");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("delivered again"), "{stderr}");
    let mut unique = printed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{printed:?}");
    let next = cli(&broker, &["consume", "t", "--group", "g", "-n", "100"]).ok("consume");
    assert_eq!(
        next.stdout, "",
        "printed again by the next reader; A said: {stderr}"
    );
}
