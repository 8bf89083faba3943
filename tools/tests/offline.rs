//! The built `tidelog` binary without a broker: arguments, exit codes, and the
//! offline segment commands on data directories written by the storage engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tidelog_storage::{NewRecord, Store, StoreOptions, TopicConfig};

fn tidelog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(args)
        .env_remove("TIDELOG_SERVER")
        .output()
        .expect("running tidelog")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let output = tidelog(args);
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn help_lists_the_commands_with_examples() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "topic",
        "produce",
        "consume",
        "group",
        "segment",
        "Examples:",
    ] {
        assert!(
            stdout.contains(command),
            "--help lacks {command}:\n{stdout}"
        );
    }
    let (code, stdout, _) = run(&["group", "reset-offsets", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--to-datetime"));
    assert!(stdout.contains("Examples:"));
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("tidelog "));
}

#[test]
fn bad_arguments_exit_2_with_a_useful_line() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "unrecognized subcommand"),
        (
            &["topic", "create", "t", "--retention", "7x"],
            "unknown unit \"x\"",
        ),
        (
            &["topic", "create", "t", "--retention-bytes", "lots"],
            "not a size",
        ),
        (
            &["topic", "create", "t", "--fsync", "sometimes"],
            "not an fsync policy",
        ),
        (
            &["topic", "create", "t", "--partitions", "0"],
            "--partitions 0",
        ),
        (&["topic", "alter", "t"], "nothing to change"),
        (&["produce", "t", "--header", "novalue"], "has no '='"),
        (&["produce", "t", "--ack", "maybe"], "invalid value"),
        (
            &["consume", "t", "--from", "yesterday"],
            "not earliest, latest, an offset or a date-time",
        ),
        (
            // The broker assigns a group's partitions (--from is allowed with a group).
            &["consume", "t", "--group", "g", "--partition", "1"],
            "cannot be used with",
        ),
        (
            &["group", "reset-offsets", "--group", "g", "--topic", "t"],
            "required",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest",
            ],
            "cannot be used with",
        ),
        (
            &["group", "reset-offsets", "--group", "g", "--to-earliest"],
            "give --topic",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t:x",
                "--to-earliest",
            ],
            "not a partition number",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--to-datetime",
                "2026-13-01T00:00:00Z",
            ],
            "month must be",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--by-duration",
                "5 minutes",
            ],
            "unexpected ' '",
        ),
        (
            &["topic", "create", "t", "--retention", "10"],
            "10 has no unit",
        ),
        (
            &[
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--from-file",
                "x.csv",
            ],
            "--from-file takes",
        ),
        (
            &["segment", "dump", "/etc/hostname"],
            "cannot tell what kind of file",
        ),
        (
            &["--server", "http://[bad", "topic", "list"],
            "is not an address",
        ),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, 2, "tidelog {args:?} exited {code}; stderr: {stderr}");
        assert!(
            stderr.contains(needle),
            "tidelog {args:?}: stderr lacks {needle:?}:\n{stderr}"
        );
        assert!(
            stdout.is_empty() || args.is_empty(),
            "tidelog {args:?} printed to stdout: {stdout}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_unreachable_broker_is_one_clear_line() {
    // Port 1 on loopback: nothing listens there.
    let (code, _, stderr) = run(&["--server", "127.0.0.1:1", "topic", "list"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot reach tidelogd at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("is it running? (--server / TIDELOG_SERVER)"),
        "{stderr}"
    );
}

/// A data directory with topic `t` (2 partitions, 4 KiB segments) written by the
/// storage engine and closed cleanly. Returns the partition-0 directory.
fn data_dir(root: &Path) -> PathBuf {
    let store = Store::open(root, StoreOptions::default()).expect("opening a store");
    let config = TopicConfig {
        segment_bytes: 4096,
        ..TopicConfig::default()
    };
    let topic = store
        .create_topic("t", 2, config)
        .expect("creating topic t");
    for partition in topic.partitions() {
        for i in 0..60u32 {
            let value = format!("message {i:03} {}", "x".repeat(150));
            let record = NewRecord {
                key: Some(format!("key-{i}").into()),
                headers: vec![tidelog_storage::Header {
                    key: "n".into(),
                    value: i.to_string().into(),
                }],
                ..NewRecord::value(value)
            };
            partition.append_durable(&[record]).expect("appending");
        }
    }
    drop(topic);
    store.close().expect("closing the store");
    drop(store);
    root.join("topics/t/0")
}

fn segment_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn a_clean_data_dir_verifies_and_dumps() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    assert!(logs.len() >= 3, "expected several segments, got {logs:?}");

    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0, "verify of a clean dir failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("verified 2 partitions"), "{stdout}");
    assert!(stdout.contains("0 errors"), "{stdout}");

    let (code, stdout, _) = run(&["segment", "verify", path(&root), "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("verify --json is JSON");
    assert_eq!(report["clean"], true);
    assert_eq!(report["partitions"][0]["next_offset"], 60);

    // Batches, then records.
    let first = path(&logs[0]);
    let (code, stdout, stderr) = run(&["segment", "dump", first]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("batch  position 0  offsets 0  records 1"),
        "{stdout}"
    );
    assert!(stdout.contains("crc 0x"));
    assert!(!stdout.contains("record  offset"));
    let (code, stdout, _) = run(&["segment", "dump", first, "--records"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("record  offset 0  "), "{stdout}");
    assert!(stdout.contains("key \"key-0\""), "{stdout}");
    assert!(stdout.contains("headers [n=\"0\"]"), "{stdout}");
    let (code, stdout, _) = run(&["segment", "dump", first, "--records", "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each dump line is JSON"))
        .collect();
    assert_eq!(lines[0]["type"], "batch");
    assert_eq!(lines[1]["type"], "record");
    assert_eq!(lines[1]["key"], "key-0");
    assert!(
        lines[1]["value"]
            .as_str()
            .unwrap()
            .starts_with("message 000")
    );
    assert_eq!(lines.last().unwrap()["type"], "summary");

    // Index files of a sealed segment.
    let index = logs[0].with_extension("index");
    let (code, stdout, _) = run(&["segment", "dump", path(&index)]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("offset-index  base-offset 0"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        "segment",
        "dump",
        path(&logs[0].with_extension("timeindex")),
    ]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("time-index  base-offset 0"), "{stdout}");
    let (code, stdout, _) = run(&["segment", "dump", path(&partition.join("checkpoint"))]);
    assert_eq!(code, 0);
    assert!(stdout.contains("(current)"), "{stdout}");

    let (code, stdout, _) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to repair"), "{stdout}");
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_named_and_only_forced_repair_cuts_it() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    // A byte inside the records of the first batch of the first (sealed) segment.
    let mut bytes = fs::read(&logs[0]).unwrap();
    bytes[100] ^= 0x20;
    fs::write(&logs[0], &bytes).unwrap();

    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let named = format!("{} at position 0: CRC mismatch", logs[0].display());
    assert!(stdout.contains(&named), "{stdout}");
    assert!(stderr.starts_with("error: 1 problem in"), "{stderr}");
    assert!(stderr.contains(&named), "{stderr}");
    assert!(stderr.contains("corrupt_batch"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, stdout, _) = run(&["segment", "dump", path(&logs[0])]);
    assert_eq!(code, 1);
    assert!(stdout.contains("MISMATCH"), "{stdout}");

    // Repair refuses without --force and changes nothing.
    let (code, stdout, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("refused: "), "{stdout}");
    assert!(stderr.contains("rerun with --force"), "{stderr}");
    assert_eq!(fs::read(&logs[0]).unwrap(), bytes);

    // --force cuts the log at the bad batch; later segments move aside.
    let (code, stdout, stderr) = run(&["segment", "repair", path(&root), "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("did: cut "), "{stdout}");
    assert!(stdout.contains("move segment"), "{stdout}");
    assert_eq!(fs::metadata(&logs[0]).unwrap().len(), 0);
    assert!(logs[0].with_extension("log.torn-at-0").exists());
    assert!(PathBuf::from(format!("{}.removed-by-repair", logs[1].display())).exists());
    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // The storage engine opens what repair left.
    let store = Store::open(&root, StoreOptions::default()).expect("reopening after repair");
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.partition(0).unwrap().end_offset().unwrap(), 0);
    assert_eq!(topic.partition(1).unwrap().end_offset().unwrap(), 60);
    store.close().unwrap();
}

/// Byte positions of the batches of a log.
fn batch_positions(log: &[u8]) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut at = 0;
    while let Some(length) = log
        .get(at..)
        .and_then(tidelog_storage::batch::declared_length)
    {
        positions.push(at);
        at += length as usize;
    }
    positions
}

#[test]
fn a_torn_append_is_reported_and_repair_cuts_it_into_a_side_file() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    let last = logs.last().unwrap();
    // A crash in the middle of an append: part of a batch after the checkpoint.
    let mut bytes = fs::read(last).unwrap();
    let length = bytes.len();
    let last_batch = *batch_positions(&bytes).last().unwrap();
    let torn: Vec<u8> = bytes[last_batch..length - 30].to_vec();
    bytes.extend_from_slice(&torn);
    fs::write(last, &bytes).unwrap();

    let (code, stdout, stderr) = run(&["segment", "verify", path(&partition)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let named = format!("{} at position {length}: torn tail", last.display());
    assert!(stdout.contains(&named), "{stdout}");
    assert!(stderr.contains("torn_tail"), "{stderr}");
    assert!(stderr.contains(&named), "{stderr}");
    let (code, stdout, _) = run(&["segment", "verify", path(&partition), "--json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problem = &report["partitions"][0]["problems"][0];
    assert_eq!(problem["kind"], "torn_tail");
    assert_eq!(problem["position"], length);

    // A dry run changes nothing.
    let (code, stdout, _) = run(&["segment", "repair", path(&root), "--dry-run"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("would: cut"), "{stdout}");
    assert_eq!(fs::read(last).unwrap(), bytes);

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let did = format!("did: cut {} at position {length}", last.display());
    assert!(stdout.contains(&did), "{stdout}");
    assert_eq!(fs::metadata(last).unwrap().len(), length as u64);
    let side = PathBuf::from(format!("{}.torn-at-{length}", last.display()));
    assert_eq!(fs::read(&side).unwrap(), torn);

    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let store = Store::open(&root, StoreOptions::default()).expect("reopening after repair");
    assert_eq!(
        store
            .topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap(),
        60
    );
    store.close().unwrap();
}

#[test]
fn a_truncated_last_batch_in_fsynced_data_needs_force() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    let last = logs.last().unwrap();
    let bytes = fs::read(last).unwrap();
    let last_batch = *batch_positions(&bytes).last().unwrap();
    fs::write(last, &bytes[..bytes.len() - 25]).unwrap();

    // The checkpoint vouched for those bytes: not a torn write but lost data.
    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let named = format!("{} at position {last_batch}", last.display());
    assert!(stdout.contains(&named), "{stdout}");
    assert!(stderr.contains("durable_data_damaged"), "{stderr}");

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("refused: {named}")), "{stdout}");
    assert_eq!(fs::metadata(last).unwrap().len() as usize, bytes.len() - 25);

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root), "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("did: rewrite"), "{stdout}");
    assert!(stdout.contains("checkpoint"), "{stdout}");
    assert_eq!(fs::metadata(last).unwrap().len() as usize, last_batch);
    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let store = Store::open(&root, StoreOptions::default()).expect("reopening after repair");
    assert_eq!(
        store
            .topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap(),
        59
    );
    store.close().unwrap();
}

#[test]
fn a_damaged_index_is_reported_and_rewritten() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    let index = logs[0].with_extension("index");
    let original = fs::read(&index).unwrap();
    let mut bytes = original.clone();
    let at = bytes.len() - 1;
    bytes[at] ^= 1;
    fs::write(&index, &bytes).unwrap();

    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{}: unreadable index", index.display())),
        "{stdout}"
    );
    let (code, _, _) = run(&["segment", "dump", path(&index)]);
    assert_eq!(code, 1);

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("did: rewrite"), "{stdout}");
    assert_eq!(fs::read(&index).unwrap(), original);
    let (code, _, _) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0);
}

#[test]
fn repair_refuses_a_directory_a_broker_holds() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    data_dir(&root);
    let store = Store::open(&root, StoreOptions::default()).unwrap();
    let (code, _, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("a running tidelogd holds"), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    store.close().unwrap();
}

#[test]
fn segments_past_a_lost_unsynced_tail_are_moved_aside_without_force() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    let logs = segment_logs(&partition);
    assert!(logs.len() >= 3, "{logs:?}");
    // As after a crash: the checkpoint only reached the first segment, and the second
    // lost its last (unsynced) batch while the third kept its directory entry.
    let first_len = fs::metadata(&logs[0]).unwrap().len();
    let first_next: u64 = logs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut checkpoint = tidelog_storage::checkpoint::CheckpointFile::open(
        std::sync::Arc::new(tidelog_storage::OsFs),
        &partition,
    )
    .unwrap();
    checkpoint.write(0, first_len, first_next).unwrap();
    drop(checkpoint);
    let second = fs::read(&logs[1]).unwrap();
    let last_batch = *batch_positions(&second).last().unwrap();
    fs::write(&logs[1], &second[..last_batch]).unwrap();

    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let named = format!(
        "{} at position 0: segment starts at offset",
        logs[2].display()
    );
    assert!(stdout.contains(&named), "{stdout}");
    assert!(stderr.contains("unsynced_segments"), "{stderr}");

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for moved in &logs[2..] {
        assert!(!moved.exists(), "{} was not moved aside", moved.display());
        assert!(PathBuf::from(format!("{}.removed-by-repair", moved.display())).exists());
    }
    let (code, stdout, stderr) = run(&["segment", "verify", path(&root)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let store = Store::open(&root, StoreOptions::default()).expect("reopening after repair");
    let end = store
        .topic("t")
        .unwrap()
        .partition(0)
        .unwrap()
        .end_offset()
        .unwrap();
    let second_base: u64 = logs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(end > second_base && end < 60, "end offset {end}");
    store.close().unwrap();
}

/// Issue 12, bug 4: a forced cut reports the checkpoint it really writes (it printed
/// next offset 18446744073709551615), and says loudly that the cut offsets will be
/// given out again, naming each group that committed past the new end with the
/// command that moves it back.
#[test]
fn a_forced_cut_names_the_reused_offsets_and_the_groups_past_them() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("data");
    let partition = data_dir(&root);
    {
        let store = Store::open(&root, StoreOptions::default()).unwrap();
        let commit = |group: &str, offset: u64| {
            store
                .offsets()
                .commit(group, &[("t".into(), 0, offset, String::new())])
                .unwrap();
        };
        commit("ahead", 55);
        commit("behind", 10);
        store.close().unwrap();
    }
    // Damage the first batch of the second segment, which the checkpoint vouches for.
    let logs = segment_logs(&partition);
    let second_base: u64 = logs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut bytes = fs::read(&logs[1]).unwrap();
    bytes[100] ^= 0x20;
    fs::write(&logs[1], &bytes).unwrap();

    let (code, stdout, stderr) = run(&["segment", "repair", path(&root), "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("next offset {second_base})")),
        "the checkpoint's real next offset: {stdout}"
    );
    assert!(!stdout.contains("18446744073709551615"), "{stdout}");
    assert!(
        stderr.contains(&format!("partition t/0 loses offsets {second_base}-59")),
        "{stderr}"
    );
    assert!(
        stderr.contains("group \"ahead\" has committed offset 55"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "tidelog group reset-offsets --group ahead --topic t:0 --to-offset {second_base} --execute"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("\"behind\""), "{stderr}");

    let store = Store::open(&root, StoreOptions::default()).expect("reopening after repair");
    assert_eq!(
        store
            .topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .end_offset()
            .unwrap(),
        second_base
    );
    store.close().unwrap();
}
