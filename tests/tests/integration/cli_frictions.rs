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
            .contains("has 3 partitions (0-2), not partition 5"),
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
    let produced =
        cli_with_input(&broker, &["produce", "wide", "--quiet"], input.as_bytes()).ok("produce");
    assert_eq!(produced.stdout.lines().count(), 1, "{}", produced.stdout);
    assert!(produced.stdout.len() < 200, "{}", produced.stdout);
    assert!(
        produced.stdout.contains("1000 partitions"),
        "{}",
        produced.stdout
    );

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
