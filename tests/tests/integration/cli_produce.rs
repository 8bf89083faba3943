//! `tidelog produce` through tidelog-client's Producer, black box: the real `tidelog`
//! and `tidelogd` binaries. Large lines and files arrive once, in order, with their
//! acks in input order; `--ack none`; ids on a dedup topic (a re-run reports every
//! line duplicate at its original offset); a line over the topic's limit stops the
//! command naming it; and the broker killed and restarted mid-file.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidelog_tests::{TestBroker, tidelog_command};

use crate::cli::{Run, cli, cli_with_input};

/// `partition P offset O[ duplicate][ id ID]` parsed: (partition, offset, duplicate, id).
fn acks(run: &Run) -> Vec<(u32, u64, bool, Option<String>)> {
    run.stdout
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            assert!(
                words.len() >= 4 && words[0] == "partition" && words[2] == "offset",
                "not an ack line: {line:?}"
            );
            let duplicate = words.contains(&"duplicate");
            let id = words
                .iter()
                .position(|w| *w == "id")
                .map(|at| words[at + 1].to_string());
            (
                words[1].parse().unwrap(),
                words[3].parse().unwrap(),
                duplicate,
                id,
            )
        })
        .collect()
}

/// The values of `topic`'s first `n` messages (one partition), raw.
fn consume(broker: &TestBroker, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let run = cli(
        broker,
        &["consume", topic, "--from", "earliest", "-n", &n.to_string()],
    )
    .ok("consume");
    let mut values: Vec<Vec<u8>> = run
        .stdout
        .as_bytes()
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(
        values.pop(),
        Some(Vec::new()),
        "the output ends in a newline"
    );
    values
}

/// Offsets of every message of partition 0 (from `topic describe --json`'s end).
fn end_offset(broker: &TestBroker, topic: &str) -> u64 {
    let described = cli(broker, &["topic", "describe", topic, "--json"])
        .ok("describe")
        .json();
    described["partitions"][0]["end_offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no end_offset in {described}"))
}

#[test]
fn large_lines_and_a_file_of_20000_lines_arrive_once_in_order() {
    let broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "sizes", "--max-message-bytes", "2MiB"],
    )
    .ok("create");
    // 3 KB and 1 MiB lines between short ones.
    let lines: Vec<Vec<u8>> = vec![
        b"first".to_vec(),
        vec![b'a'; 3 * 1024],
        vec![b'b'; 1 << 20],
        b"between".to_vec(),
        vec![b'c'; 1 << 20],
        vec![b'd'; 3000],
        b"last".to_vec(),
    ];
    let mut input = lines.join(&b'\n');
    input.push(b'\n');
    let run = cli_with_input(&broker, &["produce", "sizes"], &input).ok("produce sizes");
    let got = acks(&run);
    assert_eq!(
        got.iter().map(|a| a.1).collect::<Vec<_>>(),
        (0..lines.len() as u64).collect::<Vec<_>>(),
        "{}",
        run.stdout
    );
    assert!(got.iter().all(|a| a.0 == 0 && !a.2 && a.3.is_none()));
    assert_eq!(consume(&broker, "sizes", lines.len()), lines);

    // A file of 20,000 lines, in batches of the default size and of 7 messages.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("line-{i:05}-{}", "x".repeat(i % 97)))
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    cli(&broker, &["topic", "create", "file"]).ok("create");
    let file = path.to_str().unwrap();
    let run = cli(&broker, &["produce", "file", "--file", file]).ok("produce --file");
    let offsets: Vec<u64> = acks(&run).iter().map(|a| a.1).collect();
    assert_eq!(offsets, (0..20_000).collect::<Vec<_>>());
    let run = cli(
        &broker,
        &[
            "produce",
            "file",
            "--file",
            file,
            "--batch-messages",
            "7",
            "--in-flight",
            "3",
            "--quiet",
            "--json",
        ],
    )
    .ok("produce --file --batch-messages 7");
    let summary = run.json();
    assert_eq!(summary["messages"], 20_000, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(
        summary["partitions"][0]["first_offset"], 20_000,
        "{summary}"
    );
    assert_eq!(summary["partitions"][0]["last_offset"], 39_999, "{summary}");
    let stored: Vec<String> = consume(&broker, "file", 40_000)
        .into_iter()
        .map(|v| String::from_utf8(v).unwrap())
        .collect();
    assert_eq!(stored[..20_000], lines[..]);
    assert_eq!(stored[20_000..], lines[..]);
    assert_eq!(end_offset(&broker, "file"), 40_000);
}

#[test]
fn ack_none_prints_no_offsets_and_stores_every_line() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "fast"]).ok("create");
    let input: String = (0..1000).map(|i| format!("m{i}\n")).collect();
    let run = cli_with_input(
        &broker,
        &["produce", "fast", "--ack", "none"],
        input.as_bytes(),
    )
    .ok("produce --ack none");
    assert_eq!(run.stdout, "");
    let run = cli_with_input(
        &broker,
        &["produce", "fast", "--ack", "none", "-q", "--json"],
        input.as_bytes(),
    )
    .ok("produce --ack none -q");
    let summary = run.json();
    assert_eq!(summary["messages"], 1000, "{summary}");
    assert_eq!(summary["partitions"], serde_json::json!([]), "{summary}");
    // `--ack none` answers once the broker has the request, before it is written (and
    // on an `always` topic, readable once fsynced): wait for it to be readable.
    let waited = std::time::Instant::now();
    while end_offset(&broker, "fast") < 2000 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(20),
            "2,000 lines are not all stored after 20 s: end offset {}",
            end_offset(&broker, "fast")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stored = consume(&broker, "fast", 2000);
    let expected: Vec<Vec<u8>> = (0..2)
        .flat_map(|_| (0..1000).map(|i| format!("m{i}").into_bytes()))
        .collect();
    assert_eq!(stored, expected);
}

#[test]
fn ids_on_a_dedup_topic_and_a_rerun_reports_every_line_duplicate() {
    let broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "ids", "--dedup-window", "10m"],
    )
    .ok("create");
    let input: String = (0..3000)
        .map(|i| format!("order-{i}:value {i}\n"))
        .collect();
    let first = cli_with_input(
        &broker,
        &["produce", "ids", "--id-separator", ":"],
        input.as_bytes(),
    )
    .ok("produce ids");
    let first = acks(&first);
    assert_eq!(
        first,
        (0..3000).map(|o| (0, o, false, None)).collect::<Vec<_>>()
    );
    let again = cli_with_input(
        &broker,
        &["produce", "ids", "--id-separator", ":"],
        input.as_bytes(),
    )
    .ok("produce ids again");
    assert_eq!(
        acks(&again),
        (0..3000).map(|o| (0, o, true, None)).collect::<Vec<_>>()
    );
    // Half old, half new: each line judged alone.
    let mixed: String = (2000..4000)
        .map(|i| format!("order-{i}:value {i}\n"))
        .collect();
    let run = cli_with_input(
        &broker,
        &["produce", "ids", "--id-separator", ":", "-q", "--json"],
        mixed.as_bytes(),
    )
    .ok("produce mixed");
    let summary = run.json();
    assert_eq!(summary["messages"], 2000, "{summary}");
    assert_eq!(summary["duplicates"], 1000, "{summary}");
    assert_eq!(summary["partitions"][0]["first_offset"], 2000, "{summary}");
    assert_eq!(summary["partitions"][0]["last_offset"], 3999, "{summary}");
    assert_eq!(end_offset(&broker, "ids"), 4000);

    // Without --id-separator the producer gives each message an id; on a topic with
    // only a dedup window it is not printed (the acks read as before), on an
    // assign_ids topic it is.
    let run = cli_with_input(&broker, &["produce", "ids"], b"a\nb\n").ok("produce");
    assert_eq!(
        run.stdout,
        "partition 0 offset 4000\npartition 0 offset 4001\n"
    );
    let meta = cli(
        &broker,
        &[
            "consume",
            "ids",
            "--from",
            "4000",
            "-n",
            "2",
            "--print-meta",
        ],
    )
    .ok("consume");
    assert_eq!(meta.stdout.matches(" id=").count(), 2, "{}", meta.stdout);
    cli(&broker, &["topic", "create", "assigned", "--assign-ids"]).ok("create");
    let run = cli_with_input(&broker, &["produce", "assigned"], b"a\nb\nc\n").ok("produce");
    let got = acks(&run);
    assert_eq!(got.iter().map(|a| a.1).collect::<Vec<_>>(), [0, 1, 2]);
    let ids: std::collections::HashSet<_> = got.iter().map(|a| a.3.clone().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{}", run.stdout);
    assert!(
        got.iter()
            .all(|a| !a.2 && a.3.as_ref().unwrap().len() == 26)
    );
}

#[test]
fn a_line_over_the_topic_limit_stops_the_command_naming_it() {
    let broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "small", "--max-message-bytes", "1KiB"],
    )
    .ok("create");
    let mut input = String::new();
    for i in 1..=10 {
        input.push_str(&format!("ok {i}\n"));
    }
    input.push_str(&"x".repeat(2000));
    input.push('\n');
    for i in 12..=5000 {
        input.push_str(&format!("after {i}\n"));
    }
    let run = cli_with_input(&broker, &["produce", "small"], input.as_bytes());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("(lines 11) failed"), "{}", run.stderr);
    assert!(
        run.stderr.contains("--max-message-bytes 1024"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "raise the topic's limit (`tidelog topic alter TOPIC --max-message-bytes SIZE`"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("(10 earlier messages were stored)"),
        "{}",
        run.stderr
    );
    // Acks of the ten lines before it, in order, and nothing after.
    assert_eq!(
        acks(&run).iter().map(|a| a.1).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    // What else was stored is exactly what the error names: lines sent before the
    // failure was seen, in order, right after line 10; nothing is lost silently.
    let later: u64 = match run.stderr.split(" later message").next() {
        Some(head) if run.stderr.contains(" later message") => {
            head.rsplit('(').next().unwrap().trim().parse().unwrap()
        }
        _ => 0,
    };
    assert!(later < 4989, "the command stopped sending: {}", run.stderr);
    let end = end_offset(&broker, "small");
    assert_eq!(end, 10 + later, "{}", run.stderr);
    let stored = consume(&broker, "small", end as usize);
    for (i, value) in stored.iter().enumerate() {
        let expected = if i < 10 {
            format!("ok {}", i + 1)
        } else {
            format!("after {}", i + 2)
        };
        assert_eq!(String::from_utf8_lossy(value), expected);
    }
    if later > 0 {
        assert!(
            run.stderr
                .contains(&format!("stored too: lines 12-{})", 11 + later)),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn the_broker_killed_and_restarted_mid_file_stores_every_line_once() {
    let mut broker = TestBroker::start();
    cli(
        &broker,
        &["topic", "create", "crash", "--dedup-window", "1h"],
    )
    .ok("create");
    const LINES: usize = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    let lines: Vec<String> = (0..LINES).map(|i| format!("event {i:06}")).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let mut child = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(["produce", "crash", "--file", path.to_str().unwrap()])
        .args(["--batch-messages", "500"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill it once a good part of the file is acknowledged.
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while printed.len() < LINES / 5 {
        assert!(
            Instant::now() < deadline,
            "too slow: {} acks",
            printed.len()
        );
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("produce stopped printing ({e}) after {}", printed.len()),
        }
    }
    broker.kill9();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart_on_the_same_ports();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    reader.join().unwrap();
    printed.extend(rx.try_iter());
    // The producer reconnects and resends; its ids make a resent batch a duplicate,
    // answered with the original offsets: the command succeeds.
    assert!(status.success(), "{status:?}: {stderr}");
    let run = Run {
        code: 0,
        stdout: printed.join("\n"),
        stderr,
    };
    let got = acks(&run);
    assert_eq!(got.len(), LINES);
    assert!(got.iter().all(|a| a.0 == 0 && !a.2 && a.3.is_none()));
    assert_eq!(
        got.iter().map(|a| a.1).collect::<Vec<_>>(),
        (0..LINES as u64).collect::<Vec<_>>(),
        "offsets in input order"
    );
    assert_eq!(end_offset(&broker, "crash"), LINES as u64);
    let stored: Vec<String> = consume(&broker, "crash", LINES)
        .into_iter()
        .map(|v| String::from_utf8(v).unwrap())
        .collect();
    assert_eq!(stored, lines, "every line once, in order");
}

/// A line typed is sent at once, not when more lines or the end of input come (no
/// linger timer, no waiting for a full batch): the broker has it while stdin is open.
#[test]
fn a_typed_line_is_stored_before_the_next_is_typed() {
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "typed"]).ok("create");
    let mut child = tidelog_command()
        .arg("--server")
        .arg(broker.endpoint())
        .args(["produce", "typed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..3u64 {
        writeln!(stdin, "typed {i}").unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while end_offset(&broker, "typed") < i + 1 {
            assert!(Instant::now() < deadline, "line {i} was not sent");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "partition 0 offset 0\npartition 0 offset 1\npartition 0 offset 2\n"
    );
}
