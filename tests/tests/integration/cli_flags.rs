//! Hunt 5's CLI findings, through the real `tidelog` binary against a live tidelogd:
//! `produce --key` beside the TLS key flag, topic flags that took 0 for "the
//! default", queue caps the topic output left out, queue errors without their gRPC
//! code, and broker refusals in API terms.

use std::process::Stdio;

use serde_json::Value;
use tidelog_tests::{TestBroker, tidelog_command};

use crate::cli::{Run, cli, cli_with_input};

/// One `--json` error object from stderr.
fn json_error(run: &Run) -> Value {
    serde_json::from_str(run.stderr.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stderr))
}

#[test]
fn cli_produce_key_is_the_message_key_and_the_tls_key_has_its_own_flag() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "s"]).ok("create");

    // Was a clap panic (exit 101): the TLS --key and produce's --key shared an id.
    let run = cli_with_input(&broker, &["produce", "s", "--key", "user1"], b"hello\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("partition 0 offset 0"),
        "{}",
        run.stdout
    );
    let run = cli_with_input(
        &broker,
        &["--json", "produce", "s", "-k", "user2"],
        b"again\n",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    let consumed = cli(&broker, &["consume", "s", "-n", "2", "--json"]).ok("consume");
    let keys: Vec<Value> = consumed
        .json_lines()
        .iter()
        .map(|m| m["key"].clone())
        .collect();
    assert_eq!(keys, ["user1", "user2"], "{}", consumed.stdout);

    // TIDELOG_KEY is the message key `queue work` gives its command, not a TLS key
    // file: a produce run by a worker, with it set, neither panics nor asks for a
    // certificate. The TLS key's variable is TIDELOG_CERT_KEY.
    let output = tidelog_command()
        .args(["--server", &broker.endpoint(), "produce", "s"])
        .env("TIDELOG_KEY", "user3")
        .env_remove("TIDELOG_CERT")
        .env_remove("TIDELOG_CERT_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let output = tidelog_command()
        .args(["--server", &broker.endpoint(), "produce", "s"])
        .env("TIDELOG_CERT_KEY", "k.pem")
        .env_remove("TIDELOG_CERT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--cert and --tls-key go together"),
        "{stderr}"
    );
}

#[test]
fn cli_topic_flags_refuse_zero_instead_of_meaning_the_default() {
    let broker = TestBroker::start();
    cli(
        &broker,
        &[
            "topic",
            "create",
            "a",
            "--max-message-bytes",
            "2MiB",
            "--priority-levels",
            "3",
            "--segment-bytes",
            "64MiB",
        ],
    )
    .ok("create");
    for (flag, range) in [
        ("--max-message-bytes", "1B to 16MiB"),
        ("--priority-levels", "1 to 10"),
        ("--segment-bytes", "4KiB to 1GiB"),
    ] {
        for command in ["alter", "create"] {
            let run = cli(&broker, &["topic", command, "a", flag, "0"]);
            assert_eq!(run.code, 2, "{command} {flag} 0: {}", run.stderr);
            assert!(
                run.stderr.contains(flag) && run.stderr.contains(range),
                "{command} {flag} 0: {}",
                run.stderr
            );
        }
    }
    let config = cli(&broker, &["topic", "describe", "a", "--json"])
        .ok("describe")
        .json()["config"]
        .clone();
    assert_eq!(config["max_message_bytes"], 2 << 20, "{config}");
    assert_eq!(config["priority_levels"], 3, "{config}");
    assert_eq!(config["segment_bytes"], 64 << 20, "{config}");
}

#[test]
fn cli_topic_output_shows_the_queue_caps_and_alter_lists_every_flag() {
    let broker = TestBroker::start();
    let created = cli(
        &broker,
        &[
            "topic",
            "create",
            "capped",
            "--queue-max-ready",
            "1000",
            "--queue-max-ready-bytes",
            "10MiB",
            "--queue-overflow",
            "dead-letter-oldest",
        ],
    )
    .ok("create");
    for run in [
        created,
        cli(&broker, &["topic", "describe", "capped"]).ok("describe"),
    ] {
        for line in [
            "queue-max-ready        1000\n",
            "queue-max-ready-bytes  10 MiB\n",
            "queue-overflow         dead-letter-oldest\n",
        ] {
            assert!(run.stdout.contains(line), "{line:?} in:\n{}", run.stdout);
        }
    }
    let altered = cli(
        &broker,
        &[
            "topic",
            "alter",
            "capped",
            "--queue-max-ready",
            "off",
            "--json",
        ],
    )
    .ok("alter");
    let config = &altered.json()["config"];
    assert_eq!(config["queue_max_ready_messages"], Value::Null, "{config}");
    assert_eq!(config["queue_max_ready_bytes"], 10 << 20, "{config}");
    assert_eq!(config["queue_overflow"], "dead-letter-oldest", "{config}");
    let plain = cli(&broker, &["topic", "describe", "capped"]).ok("describe");
    assert!(
        plain.stdout.contains("queue-max-ready        unlimited\n"),
        "{}",
        plain.stdout
    );

    let nothing = cli(&broker, &["topic", "alter", "capped"]);
    assert_eq!(nothing.code, 2);
    for flag in [
        "--partitions",
        "--retention",
        "--compression",
        "--priority-levels",
        "--queue-max-ready",
        "--queue-max-ready-bytes",
        "--queue-overflow",
        "--dedup-window",
        "--assign-ids",
    ] {
        assert!(nothing.stderr.contains(flag), "{flag}: {}", nothing.stderr);
    }
}

#[test]
fn cli_queue_json_errors_carry_the_grpc_code() {
    let broker = TestBroker::start();
    let run = cli(&broker, &["--json", "queue", "describe", "nope"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = json_error(&run);
    assert_eq!(error["error"]["grpc_code"], "NOT_FOUND", "{}", run.stderr);
    assert_eq!(error["error"]["exit_code"], 1, "{}", run.stderr);
}

#[test]
fn cli_broker_refusals_name_the_flags() {
    let broker = TestBroker::start();
    let run = cli(&broker, &["topic", "create", "a", "--dedup-window", "8d"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("--dedup-window"), "{}", run.stderr);
    assert!(run.stderr.contains("(7 days)"), "{}", run.stderr);
    assert!(!run.stderr.contains("dedup_window_ms"), "{}", run.stderr);

    let run = cli(
        &broker,
        &[
            "topic",
            "create",
            "b",
            "--retention",
            "18446744073709551615ms",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "--retention 18446744073709551615 is over the maximum of 9223372036854775807"
        ),
        "{}",
        run.stderr
    );

    cli(&broker, &["topic", "create", "t"]).ok("create");
    cli(&broker, &["queue", "create", "q", "--topic", "t"]).ok("queue create");
    let run = cli(
        &broker,
        &["queue", "deliveries", "q", "--since", "1h", "--until", "2h"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--since (") && run.stderr.contains(") is after --until ("),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(" ms)"), "{}", run.stderr);
}

#[test]
fn cli_partition_counts_and_lists_read_as_the_readme_writes_them() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "one"]).ok("create");
    let run = cli(&broker, &["topic", "alter", "one", "--partitions", "1"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("has 1 partition;"), "{}", run.stderr);

    cli(&broker, &["topic", "create", "many", "--partitions", "12"]).ok("create");
    for (scope, named) in [
        ("many:9", "partition 9"),
        ("many:1-3,7", "partitions 1-3,7"),
    ] {
        let args = ["group", "delete-offsets", "--group", "g", "--topic", scope];
        let run = cli(&broker, &args);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains(named), "{}", run.stderr);
        assert!(!run.stderr.contains('['), "{}", run.stderr);
    }
}
