//! tidelog-client's `GroupMember::join_pattern` through the real broker: a member on a
//! topic pattern picks up topics created after it joined, leaves non-matching topics
//! out, commits per (topic, partition), and a later pair of members resumes from those
//! commits and shares the partitions without a message lost or repeated.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tidelog_client::proto::TopicConfig;
use tidelog_client::{
    Client, Commit, Error, GroupMember, GroupOptions, Message, Producer, ProducerConfig, Record,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift), so a failing run can be repeated.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Mostly small values, some of 3 KB, a few of 300 KB and some empty.
    fn value(&mut self, n: usize) -> Bytes {
        let size = match self.next() % 20 {
            0 => 0,
            1 => 300 << 10,
            2..=5 => 3 << 10,
            r => 20 + (r as usize * 7),
        };
        let mut value = format!("{n:08}").into_bytes();
        value.resize(size.max(8), b'v');
        if size == 0 {
            value.clear();
        }
        Bytes::from(value)
    }
}

/// Publishes `count` records to `topic` (keyed, so every partition gets some); the
/// value starts with the record's number `n` and the header `n` carries it too (empty
/// values have only the header). Returns the numbers.
async fn publish(
    producer: &Producer,
    topic: &str,
    numbers: std::ops::Range<usize>,
    sizes: &mut Sizes,
) -> Vec<usize> {
    let mut acks = Vec::new();
    for n in numbers.clone() {
        let record = Record::new(topic, sizes.value(n))
            .key(format!("k{}", n % 13))
            .header("n", n.to_string());
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    numbers.collect()
}

fn number(message: &Message) -> usize {
    let header = message.header("n").expect("every record has header n");
    std::str::from_utf8(header)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// Reads until `want` numbers of `topic` were seen, asserting each message's topic
/// matches and none repeats.
async fn read_until(
    member: &mut GroupMember,
    want: &BTreeSet<(String, usize)>,
    seen: &mut BTreeSet<(String, usize)>,
) {
    while !want.is_subset(seen) {
        let message = timeout(WAIT, member.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} messages arrived", seen.len(), want.len()))
            .expect("next");
        let key = (message.topic.to_string(), number(&message));
        assert!(want.contains(&key), "unexpected message {key:?}");
        assert!(seen.insert(key.clone()), "{key:?} delivered twice");
        member.commit().await.expect("commit");
    }
}

fn options(group: &str) -> GroupOptions {
    GroupOptions {
        commit: Commit::Explicit,
        session_timeout: Duration::from_secs(1),
        max_batch_messages: 40,
        ..GroupOptions::new(group)
    }
}

fn big_topic() -> TopicConfig {
    TopicConfig {
        max_message_bytes: 1 << 20,
        ..TopicConfig::default()
    }
}

#[tokio::test]
async fn a_pattern_member_picks_up_new_topics_commits_per_topic_and_resumes() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("pg.a", 2, big_topic())
        .await
        .expect("create pg.a");
    client
        .create_topic("other", 1, big_topic())
        .await
        .expect("create other");
    let producer = Producer::new(&client, ProducerConfig::default());
    let mut sizes = Sizes(0x9E37_79B9_7F4A_7C15);

    let mut first = GroupMember::join_pattern(&client, r"pg\..*", options("pg"))
        .await
        .expect("join");
    let assigned: Vec<(String, u32)> = first.assigned().map(|(t, p)| (t.to_string(), p)).collect();
    assert_eq!(assigned, [("pg.a".into(), 0), ("pg.a".into(), 1)]);
    assert!(
        first.assignment().2.is_empty(),
        "a pattern member's partitions are per topic"
    );

    let mut want: BTreeSet<(String, usize)> = publish(&producer, "pg.a", 0..200, &mut sizes)
        .await
        .into_iter()
        .map(|n| ("pg.a".to_string(), n))
        .collect();
    publish(&producer, "other", 0..50, &mut sizes).await;
    let mut seen = BTreeSet::new();
    read_until(&mut first, &want, &mut seen).await;

    // A topic created after the member joined: its partitions join the assignment
    // and its messages arrive, named by topic.
    client
        .create_topic("pg.b", 3, big_topic())
        .await
        .expect("create pg.b");
    want.extend(
        publish(&producer, "pg.b", 200..500, &mut sizes)
            .await
            .into_iter()
            .map(|n| ("pg.b".to_string(), n)),
    );
    read_until(&mut first, &want, &mut seen).await;
    assert_eq!(seen, want);
    let assigned: BTreeSet<(String, u32)> =
        first.assigned().map(|(t, p)| (t.to_string(), p)).collect();
    assert_eq!(assigned.len(), 5, "{assigned:?}");
    let topics: Vec<&str> = first.topics().iter().map(|(t, _)| &**t).collect();
    assert_eq!(topics, ["pg.a", "pg.b"]);

    // The commits are per (topic, partition): the group's offsets stand at each end.
    let committed = client
        .groups()
        .fetch_offsets(tidelog_client::proto::FetchOffsetsRequest {
            group_id: "pg".into(),
            ..Default::default()
        })
        .await
        .expect("FetchOffsets")
        .into_inner();
    let by_topic: BTreeMap<String, u64> =
        committed
            .offsets
            .iter()
            .fold(BTreeMap::new(), |mut sums, o| {
                *sums.entry(o.topic.clone()).or_default() += o.offset;
                sums
            });
    assert_eq!(by_topic.get("pg.a"), Some(&200), "{committed:?}");
    assert_eq!(by_topic.get("pg.b"), Some(&300), "{committed:?}");
    assert!(!by_topic.contains_key("other"), "{committed:?}");
    drop(first);

    // Two members of the same group take over from the commits: only what was
    // published since arrives, each message once, across the two of them.
    let fresh: BTreeSet<(String, usize)> = publish(&producer, "pg.a", 500..600, &mut sizes)
        .await
        .into_iter()
        .map(|n| ("pg.a".to_string(), n))
        .chain(
            publish(&producer, "pg.b", 600..750, &mut sizes)
                .await
                .into_iter()
                .map(|n| ("pg.b".to_string(), n)),
        )
        .collect();
    let mut second = GroupMember::join_pattern(&client, r"pg\..*", options("pg"))
        .await
        .expect("second join");
    let mut third = GroupMember::join_pattern(&client, r"pg\..*", options("pg"))
        .await
        .expect("third join");
    let mut seen: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut per_member = [0usize; 2];
    while !fresh.is_subset(&seen) {
        let (index, message) = tokio::select! {
            m = second.next() => (0, m),
            m = third.next() => (1, m),
            _ = tokio::time::sleep(WAIT) => panic!("only {} of {} arrived", seen.len(), fresh.len()),
        };
        let message = message.expect("next");
        let key = (message.topic.to_string(), number(&message));
        assert!(
            fresh.contains(&key),
            "{key:?} came again after it was committed"
        );
        assert!(seen.insert(key.clone()), "{key:?} delivered twice");
        per_member[index] += 1;
        let member = if index == 0 { &mut second } else { &mut third };
        match member.commit().await {
            Ok(()) | Err(Error::Rebalanced { .. }) => {}
            Err(error) => panic!("commit: {error}"),
        }
    }
    // Nothing more comes to either member.
    tokio::select! {
        m = second.next() => panic!("an extra message: {m:?}"),
        m = third.next() => panic!("an extra message: {m:?}"),
        _ = tokio::time::sleep(Duration::from_millis(700)) => {}
    }
    let owned: BTreeSet<(String, u32)> = second
        .assigned()
        .chain(third.assigned())
        .map(|(t, p)| (t.to_string(), p))
        .collect();
    assert_eq!(owned.len(), 5, "the two members share all five partitions");
    assert!(
        second.assigned().count() > 0 && third.assigned().count() > 0,
        "both members own partitions"
    );
    producer.close().await.expect("close");
}

#[tokio::test]
async fn a_bad_pattern_is_refused_before_joining() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    match GroupMember::join_pattern(&client, "orders(", GroupOptions::new("g")).await {
        Err(Error::InvalidArgument { message, .. }) => {
            assert!(message.contains("topic_pattern"), "{message}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // A pattern matching nothing yet is allowed: the member waits for topics.
    let member = GroupMember::join_pattern(&client, r"later\..*", GroupOptions::new("g2"))
        .await
        .expect("join a pattern that matches nothing");
    assert_eq!(member.assigned().count(), 0);
    assert!(member.topics().is_empty());
}
