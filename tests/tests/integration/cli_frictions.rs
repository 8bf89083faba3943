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
