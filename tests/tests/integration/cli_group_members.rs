//! Several `tidelog consume --group` runs at once (no `--follow`): across them, and a
//! reader of the group after them, every message is printed exactly once.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use tidelog_tests::TestBroker;

use crate::cli::{cli, cli_with_input, wait_until};

/// A `tidelog consume TOPIC --group GROUP` with more arguments, stdout and stderr
/// piped.
fn spawn_consume(endpoint: &str, topic: &str, group: &str, more: &[&str]) -> Child {
    tidelog_tests::tidelog_command()
        .args(["--server", endpoint])
        .args(["consume", topic, "--group", group])
        .args(more)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tidelog")
}

/// Bug hunt 11a: 16 `consume --group G` runs started together on 6 partitions printed
/// hundreds of messages twice in one round of a few, while every run exited 0. A
/// member's final commit refused for a rebalance was made once more with the next
/// Assignment and, refused again (the group had moved on once more: members leave one
/// after another), sent without a member id, which the live members' group refuses;
/// a commit after a printed batch left out the partitions of a refused handover,
/// which ended their handover window uncommitted; and an Assignment that took nothing
/// away in the CLI's view left the client's own handover commit to end the windows,
/// behind the CLI's record of what it committed. Now every commit names every
/// partition still held, every Assignment gets the CLI's commit, and the final one
/// follows the group to the generation that takes it.
#[test]
fn cli_many_group_members_started_together_print_each_message_once() {
    const PARTITIONS: usize = 6;
    const PER_PARTITION: usize = 400;
    const MEMBERS: usize = 12;
    const ROUNDS: usize = 3;
    let broker = TestBroker::start();
    let endpoint = broker.endpoint();
    cli(
        &broker,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            &PARTITIONS.to_string(),
        ],
    )
    .ok("create");
    let mut all: Vec<String> = Vec::new();
    for p in 0..PARTITIONS {
        let lines: Vec<String> = (0..PER_PARTITION).map(|i| format!("{p}-{i}")).collect();
        let input = lines.join("\n") + "\n";
        cli_with_input(
            &broker,
            &["produce", "t", "-p", &p.to_string()],
            input.as_bytes(),
        )
        .ok("produce");
        all.extend(lines);
    }
    all.sort();
    for round in 0..ROUNDS {
        let group = format!("many-{round}");
        let members: Vec<Child> = (0..MEMBERS)
            .map(|_| spawn_consume(&endpoint, "t", &group, &[]))
            .collect();
        let mut printed: BTreeMap<String, usize> = BTreeMap::new();
        let mut said = String::new();
        for (i, member) in members.into_iter().enumerate() {
            let out = member.wait_with_output().expect("waiting for tidelog");
            let stderr = String::from_utf8_lossy(&out.stderr);
            said.push_str(&format!(
                "member {i} (exit {:?}): {stderr}\n",
                out.status.code()
            ));
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                *printed.entry(line.to_string()).or_default() += 1;
            }
        }
        // What the members left is the next reader's.
        let rest = cli(&broker, &["consume", "t", "--group", &group]).ok("consume the rest");
        for line in rest.stdout.lines() {
            *printed.entry(line.to_string()).or_default() += 1;
        }
        let twice: Vec<(&String, &usize)> = printed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "round {round}: {} messages printed more than once (e.g. {:?}); the members said:\n{said}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        assert_eq!(
            printed.keys().cloned().collect::<Vec<_>>(),
            all,
            "round {round}: messages missing; the members said:\n{said}"
        );
        assert!(
            !said.contains("exit Some(1)") && !said.contains("warning"),
            "round {round}: {said}"
        );
    }
}

/// Bug hunt 11a, made exact: a member's final commit (`-n` reached) is held in a
/// proxy while two members join the group one after the other, so it is refused
/// (stale), and so is the one it makes with the first Assignment that comes (the
/// group moved on again). It used to end there (a commit without member id, refused
/// while the group has live members; or nothing at all, when the partitions still
/// assigned had nothing to commit) and exit 0, leaving what it printed uncommitted: the
/// partition's next owner printed it again. Now it commits in the generation of the
/// second Assignment, inside the handover window, so the next owners start after it.
#[test]
fn cli_a_final_commit_follows_the_group_through_two_rebalances() {
    use std::io::{BufRead, BufReader};
    use tidelog_client::{Client, GroupMember, GroupOptions};
    let broker = TestBroker::start();
    cli(&broker, &["topic", "create", "t", "--partitions", "2"]).ok("create");
    let proxy = tidelog_tests::FlakyProxy::start(broker.grpc_addr());
    // Waits for messages (--follow) and stops after 5.
    let mut a = spawn_consume(&proxy.endpoint(), "t", "g", &["--follow", "-n", "5"]);
    let mut lines = BufReader::new(a.stdout.take().unwrap()).lines();
    let mut printed: Vec<String> = Vec::new();
    let mut read = |count: usize, a: &mut Child| {
        while printed.len() < count {
            let Some(line) = lines.next() else {
                let mut stderr = String::new();
                let _ = std::io::Read::read_to_string(a.stderr.as_mut().unwrap(), &mut stderr);
                panic!("A printed only {printed:?}: {stderr}");
            };
            printed.push(line.expect("A's stdout"));
        }
        printed.clone()
    };
    let describe = || {
        cli(&broker, &["group", "describe", "g", "--json"])
            .ok("describe")
            .json()
    };
    let committed = |p: usize| describe()["partitions"][p]["committed_offset"].as_u64();
    // A reads and commits the first message: it is a member, waiting for more.
    cli_with_input(&broker, &["produce", "t", "-p", "0"], b"m0\n").ok("produce");
    assert_eq!(read(1, &mut a), ["m0"]);
    wait_until("A committed m0", || committed(0) == Some(1));
    let joined = describe()["generation"].as_u64().unwrap();
    // A's final commit, after it printed 4 more (one batch, one delivery), waits in
    // the proxy.
    proxy.pause(true);
    let input = "m1\nm2\nm3\nm4\n";
    cli_with_input(&broker, &["produce", "t", "-p", "0"], input.as_bytes()).ok("produce");
    assert_eq!(read(5, &mut a), ["m0", "m1", "m2", "m3", "m4"]);
    // B joins (partition 0 is its: its id sorts first), then C (partition 1): A's
    // commit is refused in its generation, and again in B's.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (b, c) = runtime.block_on(async {
        let client = Client::connect(&broker.endpoint()).await.expect("connect");
        let join = |id: &str| {
            GroupMember::join(
                &client,
                "t",
                GroupOptions {
                    client_id: id.into(),
                    session_timeout: Duration::ZERO,
                    ..GroupOptions::new("g")
                },
            )
        };
        let b = join("a-member").await.expect("B joins");
        assert_eq!(b.assignment().1, joined + 1);
        let c = join("b-member").await.expect("C joins");
        assert_eq!(c.assignment().1, joined + 2);
        (b, c)
    });
    proxy.pause(false);
    let out = a.wait_with_output().expect("waiting for A");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    // What A printed is committed: B starts partition 0 after it.
    let partitions = describe()["partitions"].clone();
    assert_eq!(
        partitions[0]["committed_offset"].as_u64(),
        Some(5),
        "A said: {stderr}"
    );
    runtime.block_on(async {
        for member in [b, c] {
            member.close().await.expect("close");
        }
    });
    let next = cli(&broker, &["consume", "t", "--group", "g"]).ok("consume");
    assert_eq!(next.stdout, "", "printed again; A said: {stderr}");
}
