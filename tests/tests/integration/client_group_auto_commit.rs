//! tidelog-client's `Commit::Auto` through the real broker: the member commits what
//! `next` returned (every interval, at a handover, on `close` and on drop), not what
//! the broker sent it. A member holds far more than it returned (the stream's
//! flow-control window: here every message of the topic), so a member that stops, is
//! dropped or crashes loses nothing it did not return.
//!
//! (Hunt 10a: with the broker committing the position after what it had sent, a member
//! dropped after returning 200 of 600 messages left the group's offsets at the end of
//! both partitions: 400 messages were never returned to anyone.)

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tidelog_client::proto::{FetchOffsetsRequest, TopicConfig};
use tidelog_client::{
    Client, Commit, Error, GroupEvent, GroupMember, GroupOptions, Message, Producer,
    ProducerConfig, Record,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

use crate::support::always;

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);
/// Messages in the topic, round robin over its two partitions.
const COUNT: u64 = 600;
/// Bytes of each value (a number, then padding).
const VALUE_BYTES: usize = 5_000;

fn options(group: &str) -> GroupOptions {
    GroupOptions {
        commit: Commit::Auto {
            interval: Duration::from_millis(100),
        },
        session_timeout: Duration::from_secs(10),
        // Long enough that a partition never moves before its handover commit: what
        // was returned is never returned again.
        handover_timeout: Duration::from_secs(20),
        max_batch_messages: 25,
        ..GroupOptions::new(group)
    }
}

async fn setup(broker: &TestBroker) -> Client {
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let config = TopicConfig {
        fsync: always(),
        ..TopicConfig::default()
    };
    client
        .create_topic("auto", 2, config)
        .await
        .expect("create");
    let producer = Producer::new(&client, ProducerConfig::default());
    let mut acks = Vec::new();
    for n in 0..COUNT {
        let mut value = format!("{n}:").into_bytes();
        value.resize(VALUE_BYTES, b'x');
        let record = Record::new("auto", Bytes::from(value)).partition((n % 2) as u32);
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    client
}

fn number(message: &Message) -> u64 {
    let end = message.value.iter().position(|b| *b == b':').expect(":");
    std::str::from_utf8(&message.value[..end])
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// How often each message was returned, to anyone.
#[derive(Default)]
struct Returned {
    times: BTreeMap<u64, u32>,
}

impl Returned {
    fn add(&mut self, message: &Message) {
        assert_eq!(number(message) % 2, u64::from(message.partition));
        *self.times.entry(number(message)).or_default() += 1;
    }

    fn covered(&self) -> u64 {
        self.times.len() as u64
    }

    /// The position after the last message of `partition` returned (values are
    /// numbered round robin: n is offset n / 2 of partition n % 2).
    fn next_offset(&self, partition: u32) -> u64 {
        self.times
            .keys()
            .filter(|n| *n % 2 == u64::from(partition))
            .map(|n| n / 2 + 1)
            .max()
            .unwrap_or(0)
    }

    fn twice(&self) -> Vec<u64> {
        self.times
            .iter()
            .filter(|(_, times)| **times > 1)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Returns `count` messages of `member`, slowly enough that auto-commits fall between.
async fn take(member: &mut GroupMember, count: u64, returned: &mut Returned) {
    for _ in 0..count {
        let message = timeout(WAIT, member.next())
            .await
            .expect("a message in time")
            .expect("next");
        returned.add(&message);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads `member` until every message was returned to someone, or nothing came for a
/// few seconds.
async fn read_rest(member: &mut GroupMember, returned: &mut Returned) {
    while returned.covered() < COUNT {
        match timeout(Duration::from_secs(5), member.next()).await {
            Ok(message) => returned.add(&message.expect("next")),
            Err(_) => break,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Close,
    Drop,
    Abort,
}

/// Member A returns 200 of the 600 messages (it holds them all), member B joins
/// (taking a partition from A) and A returns 100 more, then A stops: every message is
/// returned to A or B, none twice.
async fn a_member_that_stops(stop: Stop) {
    let broker = TestBroker::start();
    let client = setup(&broker).await;
    let mut returned = Returned::default();
    let mut a = GroupMember::join(&client, "auto", options("g"))
        .await
        .expect("A joins");
    take(&mut a, 200, &mut returned).await;
    let mut b = GroupMember::join(&client, "auto", options("g"))
        .await
        .expect("B joins");
    take(&mut a, 100, &mut returned).await;
    match stop {
        Stop::Close => timeout(WAIT, a.close())
            .await
            .expect("closed in time")
            .expect("close"),
        Stop::Drop => drop(a),
        Stop::Abort => {
            let task = tokio::spawn(async move {
                let _member = a;
                std::future::pending::<()>().await;
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            task.abort();
            let _ = task.await;
        }
    }
    read_rest(&mut b, &mut returned).await;
    let missing: Vec<u64> = (0..COUNT)
        .filter(|n| !returned.times.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{stop:?}: {} of {COUNT} messages never returned to anyone (first {:?})",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        returned.twice(),
        Vec::<u64>::new(),
        "{stop:?}: returned twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_commit_member_closed_loses_and_repeats_nothing() {
    a_member_that_stops(Stop::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_commit_member_dropped_loses_and_repeats_nothing() {
    a_member_that_stops(Stop::Drop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_commit_member_whose_task_is_aborted_loses_nothing() {
    a_member_that_stops(Stop::Abort).await;
}

/// A member that keeps reading after a rebalance took a partition away returns none
/// of that partition's buffered messages once it returned the Assignment, in either
/// commit mode, and the two members return every message once.
async fn a_revoked_partition_is_not_returned_after_the_revoke(commit: Commit) {
    let broker = TestBroker::start();
    let client = setup(&broker).await;
    let options = GroupOptions {
        commit,
        ..options("k")
    };
    let mut returned = Returned::default();
    let mut a = GroupMember::join(&client, "auto", options.clone())
        .await
        .expect("A joins");
    take(&mut a, 100, &mut returned).await;
    let mut b = GroupMember::join(&client, "auto", options)
        .await
        .expect("B joins");
    let (_, _, b_owns) = b.assignment();
    assert_eq!(b_owns.len(), 1, "B owns one partition");
    let moved = b_owns[0];
    let kept = 1 - moved;
    let mut revoked = false;
    // The group's commit of the moved partition once A handed it over.
    let mut handed_over_at = None;
    // A reads on with events until it returned the Assignment, then the rest of the
    // partition it kept.
    let kept_done = |returned: &Returned| {
        returned
            .times
            .keys()
            .filter(|n| *n % 2 == u64::from(kept))
            .count() as u64
            == COUNT / 2
    };
    while !(revoked && kept_done(&returned) && handed_over_at.is_some()) {
        // The call after the one that returned the revoke makes the handover commit
        // first (the explicit caller makes it itself), then waits for more.
        let wait = if revoked && kept_done(&returned) {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        };
        let event = timeout(wait, a.next_event()).await;
        if revoked && handed_over_at.is_none() {
            handed_over_at = Some(committed(&client, "k", moved).await);
        }
        let event = match event {
            Ok(event) => event.expect("next_event"),
            Err(_) if revoked && kept_done(&returned) => continue,
            Err(_) => break,
        };
        match event {
            GroupEvent::Assigned(change) => {
                if change.revoked.iter().any(|(_, p)| *p == moved) {
                    revoked = true;
                }
                if commit == Commit::Explicit {
                    a.commit().await.expect("handover commit");
                }
            }
            GroupEvent::Messages(messages) => {
                for m in &messages {
                    assert!(
                        !(revoked && m.partition == moved),
                        "{commit:?}: A returned {}/{} after returning the revoke",
                        m.partition,
                        m.offset
                    );
                    returned.add(m);
                }
                if commit == Commit::Explicit {
                    match a.commit().await {
                        Ok(()) | Err(Error::Rebalanced { .. }) => {}
                        Err(error) => panic!("commit: {error}"),
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        revoked,
        "{commit:?}: A returned the Assignment revoking {moved}"
    );
    // The partition moved at what A returned of it, not at what the broker had sent A.
    let a_moved_at = returned.next_offset(moved);
    assert_eq!(
        handed_over_at,
        Some(a_moved_at),
        "{commit:?}: the moved partition's commit at the handover"
    );
    while returned.covered() < COUNT {
        let message = timeout(WAIT, b.next())
            .await
            .expect("B: a message in time")
            .expect("next");
        assert_eq!(message.partition, moved);
        returned.add(&message);
        if commit == Commit::Explicit {
            b.commit().await.expect("commit");
        }
    }
    assert_eq!(
        returned.twice(),
        Vec::<u64>::new(),
        "{commit:?}: returned twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_commit_member_returns_no_revoked_message_after_the_revoke() {
    a_revoked_partition_is_not_returned_after_the_revoke(Commit::Auto {
        interval: Duration::from_millis(100),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_member_returns_no_revoked_message_after_the_revoke() {
    a_revoked_partition_is_not_returned_after_the_revoke(Commit::Explicit).await;
}

/// The group's committed offset of `partition` of topic "auto" (0 if none).
async fn committed(client: &Client, group: &str, partition: u32) -> u64 {
    let request = FetchOffsetsRequest {
        group_id: group.to_string(),
        topic: Some("auto".to_string()),
    };
    let offsets = client
        .groups()
        .fetch_offsets(request)
        .await
        .expect("FetchOffsets")
        .into_inner()
        .offsets;
    offsets
        .iter()
        .find(|o| o.partition == partition)
        .map_or(0, |o| o.offset)
}

/// A broker killed under an auto-commit member: its commits never went past what it
/// returned, what it returned and had not committed yet comes again (at-least-once),
/// and nothing it never returned is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_an_auto_commit_member_loses_nothing() {
    let mut broker = TestBroker::start();
    let client = setup(&broker).await;
    let mut returned = Returned::default();
    let mut a = GroupMember::join(&client, "auto", options("c"))
        .await
        .expect("A joins");
    take(&mut a, 200, &mut returned).await;
    // Auto-commits fell within those 200: none went past what A returned.
    for partition in 0..2 {
        let at = committed(&client, "c", partition).await;
        let returned_to = returned.next_offset(partition);
        assert!(
            at <= returned_to,
            "partition {partition} committed at {at}, past what A returned ({returned_to})"
        );
    }
    broker.kill9();
    broker.restart_on_the_same_ports();
    read_rest(&mut a, &mut returned).await;
    let missing: Vec<u64> = (0..COUNT)
        .filter(|n| !returned.times.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {COUNT} messages never returned (first {:?})",
        missing.len(),
        missing.first()
    );
}

/// With a zero interval the member commits, at every `next` and `next_event`, what the
/// calls before it returned (Kafka's `auto.commit.interval.ms` = 0), and returns: the
/// commit never holds up the read. The member runs on a thread of its own, as a call
/// that loops without awaiting can neither be timed out nor be stopped from the
/// caller's runtime.
///
/// (Before: the member's timer, re-armed at now + 0, was due again at once; the
/// auto-commit with nothing new to commit returned without awaiting, and the member
/// went round again: its first `next` spun at 100% CPU and never returned, and a
/// `timeout` around it never fired.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_commit_member_with_a_zero_interval_commits_at_every_call() {
    let broker = TestBroker::start();
    setup(&broker).await;
    let endpoint = broker.endpoint();
    let (done, finished) = tokio::sync::oneshot::channel();
    let member_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(zero_interval_member(&endpoint));
        let _ = done.send(());
    });
    match timeout(WAIT, finished).await {
        Ok(Ok(())) => member_thread.join().expect("the member's thread"),
        // The thread panicked: its panic is the failure.
        Ok(Err(_)) => match member_thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("the member's thread ended without a word"),
        },
        Err(_) => panic!(
            "a member with a zero auto-commit interval did not finish 40 reads in {WAIT:?}: \
             its calls loop without returning (the thread is left spinning)"
        ),
    }
}

/// The member of [`an_auto_commit_member_with_a_zero_interval_commits_at_every_call`]:
/// 20 calls of `next`, 20 of `next_event`, then `close`; before each, what the member
/// would commit; after each, the group's commits hold it.
async fn zero_interval_member(endpoint: &str) {
    let client = Client::connect(endpoint).await.expect("connect");
    let options = GroupOptions {
        commit: Commit::Auto {
            interval: Duration::ZERO,
        },
        ..options("z")
    };
    let mut member = GroupMember::join(&client, "auto", options)
        .await
        .expect("joins");
    let mut returned = Returned::default();
    for call in 0..40 {
        let before = member.positions().clone();
        if call < 20 {
            returned.add(&member.next().await.expect("next"));
        } else if let GroupEvent::Messages(messages) = member.next_event().await.expect("event") {
            messages.iter().for_each(|m| returned.add(m));
        }
        for ((_, partition), position) in before {
            assert_eq!(
                committed(&client, "z", partition).await,
                position,
                "call {call}: partition {partition}'s commit after the call"
            );
        }
    }
    let last = member.positions().clone();
    assert!(
        returned.covered() >= 20,
        "{} messages returned",
        returned.covered()
    );
    member.close().await.expect("close");
    for ((_, partition), position) in last {
        assert_eq!(
            committed(&client, "z", partition).await,
            position,
            "partition {partition}'s commit after close"
        );
    }
}
