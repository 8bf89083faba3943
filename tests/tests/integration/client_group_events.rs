//! tidelog-client's `GroupMember` event form (`next_event`, `GroupEvent`) and its
//! commits of what the caller handled (`commit`, `commit_offsets`) through the real
//! broker: a rebalance reports revoked partitions and moves them without a message
//! lost or repeated, progress reaches each partition's end offset, a damaged batch
//! fails with DATA_LOSS after what came before it, values of every size arrive whole,
//! and a random run of members leaving and rejoining handles every message at least
//! once and never again after its commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_client::proto::TopicConfig;
use tidelog_client::{
    Ack, Client, Commit, GroupEvent, GroupMember, GroupOptions, Message, Producer, ProducerConfig,
    Record,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

use crate::support::{Rng, always, batch_positions, segment_logs};

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

fn options(group: &str) -> GroupOptions {
    GroupOptions {
        commit: Commit::Explicit,
        session_timeout: Duration::from_secs(1),
        handover_timeout: Duration::from_secs(5),
        max_batch_messages: 25,
        ..GroupOptions::new(group)
    }
}

/// Publishes values `0..count` to `partitions` partitions of `topic`, round robin,
/// each value its number; returns (partition, number) for each.
async fn publish(client: &Client, topic: &str, partitions: u32, numbers: std::ops::Range<u64>) {
    let producer = Producer::new(client, ProducerConfig::default());
    let mut acks = Vec::new();
    for n in numbers {
        let partition = (n % u64::from(partitions)) as u32;
        let record = Record::new(topic, n.to_string()).partition(partition);
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
}

fn number(message: &Message) -> u64 {
    std::str::from_utf8(&message.value)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// The next event of `member`, within [`WAIT`].
async fn next(member: &mut GroupMember) -> GroupEvent {
    timeout(WAIT, member.next_event())
        .await
        .expect("an event in time")
        .expect("next_event")
}

#[tokio::test]
async fn a_rebalance_reports_revoked_partitions_and_loses_or_repeats_nothing() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("ev", 4, TopicConfig::default())
        .await
        .expect("create");
    publish(&client, "ev", 4, 0..400).await;

    let mut first = GroupMember::join(&client, "ev", options("g"))
        .await
        .expect("join");
    assert_eq!(first.assignment().2, [0, 1, 2, 3]);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    // Read some (committing after each delivery), then a second member joins.
    let mut handled = 0;
    while handled < 100 {
        match next(&mut first).await {
            GroupEvent::Messages(messages) => {
                for m in &messages {
                    *seen.entry(number(m)).or_default() += 1;
                    handled += 1;
                }
            }
            GroupEvent::Progress(_) => first.commit().await.expect("commit"),
            // A fresh group starts each partition by its reset policy.
            GroupEvent::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    first.commit().await.expect("commit what was handled");
    let second = tokio::spawn({
        let client = client.clone();
        async move { GroupMember::join(&client, "ev", options("g")).await }
    });
    // The first member is told which partitions moved, and commits what it handled
    // (of the revoked partitions too) at once: nothing was committed for it before.
    let mut handled_at: BTreeMap<u32, u64> = BTreeMap::new();
    let change = loop {
        match next(&mut first).await {
            GroupEvent::Messages(messages) => {
                for m in &messages {
                    *seen.entry(number(m)).or_default() += 1;
                    handled_at.insert(m.partition, m.offset + 1);
                }
            }
            GroupEvent::Progress(_) => {}
            GroupEvent::Assigned(change) => break change,
            // A fresh group starts each partition by its reset policy.
            GroupEvent::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let offsets: Vec<(&str, u32, u64)> = handled_at.iter().map(|(p, o)| ("ev", *p, *o)).collect();
    first
        .commit_offsets(&offsets)
        .await
        .expect("the handover commit, revoked partitions included, inside the window");
    assert_eq!(change.revoked.len(), 2, "{change:?}");
    assert!(change.added.is_empty(), "{change:?}");
    assert_eq!(change.assigned.len(), 2, "{change:?}");
    let mut second = timeout(WAIT, second)
        .await
        .expect("second joins in time")
        .expect("task")
        .expect("second join");
    let owned: BTreeSet<u32> = first
        .assigned()
        .chain(second.assigned())
        .map(|(_, p)| p)
        .collect();
    assert_eq!(owned, BTreeSet::from([0, 1, 2, 3]));

    // Both read the rest, committing every message as handled.
    while seen.len() < 400 {
        let (index, event) = tokio::select! {
            e = first.next_event() => (0, e),
            e = second.next_event() => (1, e),
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 400 arrived", seen.len()),
        };
        let member = if index == 0 { &mut first } else { &mut second };
        if let GroupEvent::Messages(messages) = event.expect("next_event") {
            for m in &messages {
                *seen.entry(number(m)).or_default() += 1;
                let position = m.offset + 1;
                member
                    .commit_offsets(&[(&m.topic, m.partition, position)])
                    .await
                    .expect("commit_offsets");
            }
        }
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
    // Nothing more comes.
    tokio::select! {
        e = first.next_event() => assert!(!matches!(e, Ok(GroupEvent::Messages(_))), "extra {e:?}"),
        e = second.next_event() => assert!(!matches!(e, Ok(GroupEvent::Messages(_))), "extra {e:?}"),
        _ = tokio::time::sleep(Duration::from_millis(700)) => {}
    }
}

/// Read in place (`GroupOptions::views`): a member's deliveries come as views, a
/// delivery counts as returned whole, a rebalance's handover commit covers what was
/// read, and `next` returns messages made of the views: every number once.
#[tokio::test]
async fn members_reading_in_place_hand_over_without_loss_or_repeat() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("vw", 4, TopicConfig::default())
        .await
        .expect("create");
    publish(&client, "vw", 4, 0..400).await;
    let in_place = |group: &str| GroupOptions {
        views: true,
        ..options(group)
    };
    let mut first = GroupMember::join(&client, "vw", in_place("g"))
        .await
        .expect("join");
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let count = |value: &[u8], seen: &mut BTreeMap<u64, usize>| {
        let n: u64 = std::str::from_utf8(value).unwrap().parse().unwrap();
        *seen.entry(n).or_default() += 1;
    };
    while seen.len() < 100 {
        match next(&mut first).await {
            GroupEvent::Views(views) => views
                .for_each(|m| count(m.value, &mut seen))
                .expect("read in place"),
            GroupEvent::Progress(_) => first.commit().await.expect("commit"),
            GroupEvent::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let second = tokio::spawn({
        let client = client.clone();
        async move { GroupMember::join(&client, "vw", in_place("g")).await }
    });
    // Up to the new assignment, then the handover commit of everything returned.
    loop {
        match next(&mut first).await {
            GroupEvent::Views(views) => views
                .for_each(|m| count(m.value, &mut seen))
                .expect("read in place"),
            GroupEvent::Assigned(change) => {
                assert_eq!(change.revoked.len(), 2, "{change:?}");
                break;
            }
            GroupEvent::Progress(_) | GroupEvent::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    first.commit().await.expect("the handover commit");
    let mut second = timeout(WAIT, second)
        .await
        .expect("second joins in time")
        .expect("task")
        .expect("second join");
    // The rest through `next`, committing each message.
    while seen.len() < 400 {
        let (index, message) = tokio::select! {
            m = first.next() => (0, m),
            m = second.next() => (1, m),
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 400 arrived", seen.len()),
        };
        let message = message.expect("next");
        count(&message.value, &mut seen);
        let member = if index == 0 { &mut first } else { &mut second };
        member.commit().await.expect("commit");
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn progress_reaches_each_partition_end_offset() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("pr", 3, TopicConfig::default())
        .await
        .expect("create");
    publish(&client, "pr", 3, 0..300).await;
    let mut member = GroupMember::join(&client, "pr", options("g"))
        .await
        .expect("join");
    let mut at_end: BTreeSet<u32> = BTreeSet::new();
    let mut messages = 0;
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    while at_end.len() < 3 {
        match next(&mut member).await {
            GroupEvent::Messages(delivered) => {
                for m in &delivered {
                    messages += 1;
                    last.insert(m.partition, m.offset);
                }
            }
            GroupEvent::Progress(p) => {
                assert_eq!(&*p.topic, "pr");
                assert_eq!(p.end_offset, 100, "{p:?}");
                assert_eq!(Some(&(p.next_offset - 1)), last.get(&p.partition), "{p:?}");
                if p.next_offset == p.end_offset {
                    at_end.insert(p.partition);
                }
            }
            // A fresh group starts each partition by its reset policy.
            GroupEvent::PositionReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages, 300);
    // What commit commits is what was returned: the positions at the end.
    let positions: Vec<u64> = member.positions().values().copied().collect();
    assert_eq!(positions, [100, 100, 100]);
    member.commit().await.expect("commit");
    drop(member);
    let committed = client
        .groups()
        .fetch_offsets(tidelog_client::proto::FetchOffsetsRequest {
            group_id: "g".into(),
            topic: Some("pr".into()),
        })
        .await
        .expect("FetchOffsets")
        .into_inner();
    assert!(
        committed.offsets.iter().all(|o| o.offset == 100) && committed.offsets.len() == 3,
        "{committed:?}"
    );
}

#[tokio::test]
async fn commit_offsets_commits_exactly_what_the_caller_handled() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("ex", 1, TopicConfig::default())
        .await
        .expect("create");
    publish(&client, "ex", 1, 0..50).await;
    let mut member = GroupMember::join(&client, "ex", options("g"))
        .await
        .expect("join");
    let mut received = 0;
    while received < 50 {
        if let GroupEvent::Messages(messages) = next(&mut member).await {
            received += messages.len();
        }
    }
    // Only 20 were handled: commit that, not what was received.
    member
        .commit_offsets(&[("ex", 0, 20)])
        .await
        .expect("commit_offsets");
    drop(member);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut member = GroupMember::join(&client, "ex", options("g"))
        .await
        .expect("rejoin");
    let first = loop {
        if let GroupEvent::Messages(messages) = next(&mut member).await {
            break messages[0].clone();
        }
    };
    assert_eq!(first.offset, 20);
}

#[tokio::test]
async fn values_of_every_size_arrive_whole() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic(
            "sizes",
            1,
            TopicConfig {
                max_message_bytes: 2 << 20,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let sizes = [0usize, 100, 3 << 10, 1 << 20, 0, 100];
    let producer = Producer::new(&client, ProducerConfig::default());
    for (i, size) in sizes.iter().enumerate() {
        let value: Vec<u8> = (0..*size).map(|b| (b % 251) as u8 ^ i as u8).collect();
        let ack = producer
            .send(Record::new("sizes", Bytes::from(value)).partition(0))
            .await
            .expect("send");
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    let mut member = GroupMember::join(&client, "sizes", options("g"))
        .await
        .expect("join");
    let mut got = Vec::new();
    while got.len() < sizes.len() {
        if let GroupEvent::Messages(messages) = next(&mut member).await {
            got.extend(messages.into_vec());
            member.commit().await.expect("commit");
        }
    }
    for (i, (m, size)) in got.iter().zip(sizes).enumerate() {
        assert_eq!(m.offset, i as u64);
        assert_eq!(m.value.len(), size, "message {i}");
        assert!(
            m.value
                .iter()
                .enumerate()
                .all(|(b, v)| *v == (b % 251) as u8 ^ i as u8),
            "message {i} arrived changed"
        );
    }
}

// A multi-thread runtime: the client answers the broker's goodbye while `stop`
// blocks (see `TestBroker::stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_fails_with_data_loss_after_what_came_before_it() {
    let mut broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic(
            "dmg",
            1,
            TopicConfig {
                fsync: always(),
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let producer = Producer::new(&client, ProducerConfig::default());
    for range in [0..40u64, 40..70, 70..80] {
        let records: Vec<Record> = range.map(|o| Record::new("dmg", o.to_string())).collect();
        let batch = producer
            .send_batch("dmg", 0, Ack::Durable, &records)
            .await
            .expect("send_batch");
        timeout(WAIT, batch).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    drop(client);
    broker.stop();
    let logs = segment_logs(&broker.data_dir(), "dmg", 0);
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    let batches = batch_positions(&bytes);
    assert_eq!(batches.len(), 3);
    let (start, length) = batches[1];
    bytes[start + length - 3] ^= 0x04;
    std::fs::write(&logs[0], &bytes).unwrap();
    broker.restart();

    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let mut member = GroupMember::join(&client, "dmg", options("g"))
        .await
        .expect("join");
    let mut numbers = Vec::new();
    let error = loop {
        match timeout(WAIT, member.next_event()).await.expect("in time") {
            Ok(GroupEvent::Messages(messages)) => numbers.extend(messages.iter().map(number)),
            Ok(GroupEvent::Progress(_)) => member.commit().await.expect("commit"),
            Ok(GroupEvent::PositionReset(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(error) => break error,
        }
    };
    assert!(error.is_data_loss(), "{error:?}");
    assert_eq!(numbers, (0..40).collect::<Vec<_>>());
    // Which partition, and where: found where the stream got to.
    let places = |damaged: &[tidelog_client::Damaged]| -> Vec<(String, u32, u64)> {
        damaged
            .iter()
            .map(|d| (d.topic.to_string(), d.partition, d.offset))
            .collect()
    };
    let damaged = member.damaged().await.expect("damaged");
    assert_eq!(places(&damaged), [("dmg".to_string(), 0, 40)]);
    assert!(damaged[0].error.is_data_loss(), "{:?}", damaged[0].error);
    drop(member);

    // A new member of the group starts at its commit (40), on the damage at once:
    // found through the committed offset.
    let mut again = GroupMember::join(&client, "dmg", options("g"))
        .await
        .expect("join");
    let error = loop {
        match timeout(WAIT, again.next_event()).await.expect("in time") {
            Ok(GroupEvent::Messages(m)) => panic!("offset {} read past the damage", m[0].offset),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert!(error.is_data_loss(), "{error:?}");
    let damaged = again.damaged().await.expect("damaged");
    assert_eq!(places(&damaged), [("dmg".to_string(), 0, 40)]);
}

#[tokio::test]
async fn members_leaving_and_rejoining_handle_everything_and_repeat_nothing_committed() {
    let seed = crate::support::env_u64("TIDELOG_TEST_SEED", 0x5EED_6E0F);
    let mut rng = Rng::new(seed);
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic(
            "prop",
            3,
            TopicConfig {
                max_message_bytes: 1 << 20,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let count = 200 + rng.below(400);
    let producer = Producer::new(&client, ProducerConfig::default());
    let mut acks = Vec::new();
    for n in 0..count {
        let size = match rng.below(10) {
            0 => 0,
            1 => 3 << 10,
            2 if rng.below(4) == 0 => 200 << 10,
            _ => rng.below(200) as usize,
        };
        let mut value = n.to_string().into_bytes();
        value.push(b':');
        value.resize(value.len() + size, b'x');
        let record = Record::new("prop", Bytes::from(value)).partition((n % 3) as u32);
        acks.push(producer.send(record).await.expect("send"));
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    let number = |m: &Message| -> u64 {
        let end = m.value.iter().position(|b| *b == b':').expect("a number");
        std::str::from_utf8(&m.value[..end])
            .expect("utf-8")
            .parse()
            .expect("a number")
    };

    // Committed position per partition, as the test knows it.
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut handled: BTreeSet<u64> = BTreeSet::new();
    let mut rounds = 0;
    while (handled.len() as u64) < count {
        rounds += 1;
        assert!(
            rounds < 50,
            "seed {seed:#x}: no progress after {rounds} members"
        );
        let mut member = GroupMember::join(&client, "prop", options("prop"))
            .await
            .expect("join");
        // Each member handles a random number of messages, commits at random points,
        // then leaves (a drop: an explicit member commits nothing) with what it did not commit.
        let quota = 1 + rng.below(count / 2);
        let mut taken = 0;
        let mut uncommitted: BTreeMap<u32, u64> = BTreeMap::new();
        while taken < quota && (handled.len() as u64) < count {
            let event = match timeout(Duration::from_secs(3), member.next_event()).await {
                Ok(event) => event.expect("next_event"),
                Err(_) => break,
            };
            let GroupEvent::Messages(messages) = event else {
                continue;
            };
            for m in &messages {
                if taken >= quota {
                    break;
                }
                let at = committed.get(&m.partition).copied().unwrap_or(0);
                assert!(
                    m.offset >= at,
                    "seed {seed:#x}: {}/{} came again after offset {at} was committed",
                    m.partition,
                    m.offset
                );
                handled.insert(number(m));
                uncommitted.insert(m.partition, m.offset + 1);
                taken += 1;
                if rng.below(5) == 0 {
                    let topic: Arc<str> = m.topic.clone();
                    let offsets: Vec<(&str, u32, u64)> =
                        uncommitted.iter().map(|(p, o)| (&*topic, *p, *o)).collect();
                    member.commit_offsets(&offsets).await.expect("commit");
                    committed.extend(std::mem::take(&mut uncommitted));
                }
            }
        }
        drop(member);
        // The dropped member leaves in a spawned task (else after its session).
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(handled, (0..count).collect(), "seed {seed:#x}");
}

/// A member that left its handover to the library (it did not commit after the
/// Assignment that took a partition away) had that commit refused when the group
/// moved on again before it arrived (the member that took the partition left; here
/// the commit waits in a paused proxy). The library forgot the partition, so what it
/// had returned of it was never committed, although the next Assignment gave it back.
/// Now the handover goes with the next Assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_refused_because_the_group_moved_on_again_goes_with_the_next_assignment() {
    let broker = TestBroker::start();
    let direct = Client::connect(&broker.endpoint()).await.expect("connect");
    direct
        .create_topic("ho", 2, TopicConfig::default())
        .await
        .expect("create");
    publish(&direct, "ho", 2, 0..6).await;
    let proxy = tidelog_tests::FlakyProxy::start(broker.grpc_addr());
    let through = Client::connect(&proxy.endpoint()).await.expect("connect");
    let member = |client_id: &str| GroupOptions {
        client_id: client_id.into(),
        session_timeout: Duration::ZERO,
        ..options("g")
    };
    // "z-member" sorts after "a-member": the range assignor gives B partition 0.
    let mut a = GroupMember::join(&through, "ho", member("z-member"))
        .await
        .expect("A joins");
    let generation = a.assignment().1;
    let at = |a: &GroupMember, partition: u32| {
        a.positions()
            .get(&(Arc::from("ho"), partition))
            .copied()
            .unwrap_or(0)
    };
    while at(&a, 0) < 3 || at(&a, 1) < 3 {
        next(&mut a).await;
    }
    a.commit().await.expect("commit");
    // A's next commit waits in the proxy; A receives two more of partition 0.
    proxy.pause(true);
    let producer = Producer::new(&direct, ProducerConfig::default());
    for n in 6..8 {
        let ack = producer
            .send(Record::new("ho", n.to_string()).partition(0))
            .await
            .expect("send");
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    while at(&a, 0) < 5 {
        next(&mut a).await;
    }
    // B joins, takes partition 0 (held for A's handover), and leaves at once.
    let b = GroupMember::join(&direct, "ho", member("a-member"))
        .await
        .expect("B joins");
    assert_eq!(b.assigned().collect::<Vec<_>>(), [("ho", 0)]);
    assert_eq!(b.assignment().1, generation + 1);
    drop(b);
    let mut groups = direct.groups();
    let describe = tidelog_client::proto::DescribeGroupRequest {
        group_id: "g".into(),
    };
    timeout(WAIT, async {
        loop {
            let group = groups
                .describe_group(describe.clone())
                .await
                .expect("describe")
                .into_inner();
            if group.group.is_some_and(|g| g.generation == generation + 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("B left");
    // A is told partition 0 went; its next call hands it over, in a commit the proxy
    // lets through only once the group moved on.
    loop {
        if let GroupEvent::Assigned(change) = next(&mut a).await {
            assert_eq!(change.generation, generation + 1);
            break;
        }
    }
    let release = proxy.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        release.pause(false);
    });
    loop {
        if let GroupEvent::Assigned(change) = next(&mut a).await {
            assert_eq!(change.generation, generation + 2);
            assert_eq!(change.assigned.len(), 2, "{change:?}");
            break;
        }
    }
    a.commit().await.expect("commit");
    assert_eq!(
        committed(&direct, "g", "ho").await,
        BTreeMap::from([(0, 5), (1, 3)])
    );
}

/// A member handling a delivery of a partition while another member joins: its
/// `commit_offsets` of it is refused (the group moved on), and its next `next_event`
/// reads ahead to the new Assignment. The member used to return what it had received
/// before that Assignment of the partitions it keeps (here partition 0) ahead of the
/// `Assigned` event, in the new generation: the caller's `commit_offsets` of them ended
/// the handover window, its commit of the revoked partition after `Assigned` was
/// refused ("not assigned"), and the next owner read the partition again from 0. Now
/// `Assigned` comes first, so the revoked partition is handed over at what was handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_commit_the_assignment_comes_before_anything_of_its_generation() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    client
        .create_topic("hv", 2, TopicConfig::default())
        .await
        .expect("create");
    // Ten stored batches a partition, so each partition is delivered in turns of ten.
    let producer = Producer::new(&client, ProducerConfig::default());
    for round in 0..10u64 {
        for partition in 0..2u32 {
            let records: Vec<Record> = (0..10)
                .map(|i| Record::new("", (round * 10 + i).to_string()))
                .collect();
            let ack = producer
                .send_batch("hv", partition, Ack::Durable, &records)
                .await
                .expect("send");
            timeout(WAIT, ack).await.expect("in time").expect("acked");
        }
    }
    let member = |client_id: &str| GroupOptions {
        client_id: client_id.into(),
        max_batch_messages: 10,
        ..options("g")
    };
    // "a-member" sorts first: the range assignor leaves it partition 0 and gives
    // partition 1 to "z-member".
    let mut a = GroupMember::join(&client, "hv", member("a-member"))
        .await
        .expect("A joins");
    let generation = a.assignment().1;
    // A handles (and commits) partition 0's deliveries until one of partition 1 comes.
    let end = loop {
        match next(&mut a).await {
            GroupEvent::Messages(messages) if messages.partition() == 0 => {
                a.commit_offsets(&[("hv", 0, messages.next_offset())])
                    .await
                    .expect("commit partition 0");
            }
            GroupEvent::Messages(messages) => break messages.next_offset(),
            _ => {}
        }
    };
    let handled_0 = a
        .positions()
        .get(&(Arc::from("hv"), 0))
        .copied()
        .unwrap_or(0);
    assert!(handled_0 < 100, "partition 0 is delivered in turns with 1");
    // While A handles it, B joins and takes partition 1.
    let mut b = GroupMember::join(&client, "hv", member("z-member"))
        .await
        .expect("B joins");
    assert_eq!(b.assignment().1, generation + 1);
    assert_eq!(b.assigned().collect::<Vec<_>>(), [("hv", 1)]);
    let refused = a.commit_offsets(&[("hv", 1, end)]).await;
    assert!(
        matches!(refused, Err(tidelog_client::Error::Rebalanced { .. })),
        "{refused:?}"
    );
    assert!(a.rebalance_pending());
    // The Assignment comes before the deliveries of partition 0 received ahead of it.
    match next(&mut a).await {
        GroupEvent::Assigned(change) => {
            assert_eq!(change.generation, generation + 1);
            assert_eq!(change.revoked, [(Arc::from("hv"), 1)]);
        }
        other => panic!("expected the Assignment first, got {other:?}"),
    }
    a.commit_offsets(&[("hv", 1, end)])
        .await
        .expect("the handover commit");
    let committed = committed(&client, "g", "hv").await;
    let mut handled = BTreeMap::from([(1, end)]);
    if handled_0 > 0 {
        handled.insert(0, handled_0);
    }
    assert_eq!(committed, handled);
    // B goes on after what A handled; A goes on with partition 0 where it stopped.
    let first_of_b = loop {
        if let GroupEvent::Messages(messages) = next(&mut b).await {
            break messages[0].offset;
        }
    };
    assert_eq!(first_of_b, end);
    let first_of_a = loop {
        if let GroupEvent::Messages(messages) = next(&mut a).await {
            assert_eq!(messages.partition(), 0);
            break messages[0].offset;
        }
    };
    assert_eq!(first_of_a, handled_0);
}

/// How [`a_restart_under_a_committing_member`] restarts the broker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    Kill9,
    Sigterm,
    /// kill -9, and started again after the next commit failed (the connection broke).
    Kill9UntilACommitFails,
}

/// A member commits after every message it handles (`next` + `commit`, or
/// `next_event` + `commit_offsets`), holding more than it returned: the rest of a
/// delivery of 20 and the deliveries behind it. The broker restarts after offset 50.
/// The member used to go on returning the dead stream's messages (51-299) with every
/// commit refused ("no member ...") and then deliver them all again from the last
/// accepted commit: 249 of 300 handled twice. Now the first refused commit drops what
/// the member held: nothing at or below the last accepted commit comes again, and of
/// what follows only the message in hand when the broker went away (its commit was
/// refused).
async fn a_restart_under_a_committing_member(restart: Restart, events: bool) {
    const COUNT: u64 = 300;
    const RESTART_AFTER: u64 = 50;
    let mut broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let config = TopicConfig {
        fsync: always(),
        ..TopicConfig::default()
    };
    client.create_topic("rs", 1, config).await.expect("create");
    // Stored batches of 20 and deliveries of at most 20: the restart falls in the
    // middle of the delivery [40, 60).
    let producer = Producer::new(&client, ProducerConfig::default());
    for start in (0..COUNT).step_by(20) {
        let records: Vec<Record> = (start..start + 20)
            .map(|n| Record::new("rs", n.to_string()))
            .collect();
        let batch = producer
            .send_batch("rs", 0, Ack::Durable, &records)
            .await
            .expect("send_batch");
        timeout(WAIT, batch).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    let options = GroupOptions {
        max_batch_messages: 20,
        ..options("g")
    };
    let mut member = GroupMember::join(&client, "rs", options)
        .await
        .expect("join");

    let mut tally = Tally::default();
    let mut restarted_at = None;
    while tally.accepted < COUNT {
        if events {
            let GroupEvent::Messages(messages) = next(&mut member).await else {
                continue;
            };
            for message in messages.iter() {
                assert_eq!(number(message), message.offset);
                let committed = member
                    .commit_offsets(&[("rs", 0, message.offset + 1)])
                    .await;
                let accepted = tally.handled(message.offset, committed);
                if !accepted && !broker.is_running() {
                    broker.restart_on_the_same_ports();
                }
                if restarted_at.is_none() && message.offset == RESTART_AFTER {
                    restarted_at = Some(tally.accepted);
                    restart.apply(&mut broker);
                }
                // The rest of a delivery whose commit was refused comes again.
                if !accepted {
                    break;
                }
            }
        } else {
            let message = timeout(WAIT, member.next())
                .await
                .expect("a message in time")
                .expect("next");
            assert_eq!(number(&message), message.offset);
            let committed = member.commit().await;
            let accepted = tally.handled(message.offset, committed);
            if !accepted && !broker.is_running() {
                broker.restart_on_the_same_ports();
            }
            if restarted_at.is_none() && message.offset == RESTART_AFTER {
                restarted_at = Some(tally.accepted);
                restart.apply(&mut broker);
            }
        }
    }
    let restarted_at = restarted_at.expect("restarted");
    assert_eq!(restarted_at, RESTART_AFTER + 1);
    assert_eq!(tally.times.len() as u64, COUNT, "every message handled");
    let again: Vec<(u64, u32)> = tally
        .times
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(&offset, &times)| (offset, times))
        .collect();
    assert_eq!(
        again,
        [(restarted_at, 2)],
        "handled more than once (only the message whose commit was refused may come again)"
    );
    // The message in hand when the broker went away: its commit was refused.
    assert_eq!(tally.refused, [restarted_at], "commits refused");
}

/// What [`a_restart_under_a_committing_member`] handled and how its commits fared.
#[derive(Default)]
struct Tally {
    /// Per offset, how often it was handled.
    times: BTreeMap<u64, u32>,
    /// The last commit the broker accepted.
    accepted: u64,
    /// The offsets whose commit was refused.
    refused: Vec<u64>,
}

impl Tally {
    /// `offset` was handled and its commit ended `committed`: whether it was accepted.
    fn handled(&mut self, offset: u64, committed: tidelog_client::Result<()>) -> bool {
        *self.times.entry(offset).or_default() += 1;
        match committed {
            Ok(()) => {
                self.accepted = offset + 1;
                true
            }
            Err(error) => {
                // The broker is away or restarted: retryable, or the membership ended.
                assert!(
                    error.is_retryable()
                        || matches!(error, tidelog_client::Error::Rebalanced { .. }),
                    "{error:?}"
                );
                eprintln!("the commit after offset {offset} failed: {error}");
                self.refused.push(offset);
                false
            }
        }
    }
}

impl Restart {
    /// Restarts `broker` on its ports (clients reconnect to the address they have).
    fn apply(self, broker: &mut TestBroker) {
        match self {
            Restart::Kill9 => {
                broker.kill9();
                broker.restart_on_the_same_ports();
            }
            Restart::Sigterm => broker.restart_on_the_same_ports(),
            Restart::Kill9UntilACommitFails => broker.kill9(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_a_member_repeats_only_the_message_whose_commit_it_refused() {
    a_restart_under_a_committing_member(Restart::Kill9, false).await;
}

/// The commit after the kill fails on the broken connection (the broker is down)
/// rather than being refused by the restarted broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_under_a_member_repeats_only_the_message_whose_commit_failed() {
    a_restart_under_a_committing_member(Restart::Kill9UntilACommitFails, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_under_a_member_repeats_only_the_message_whose_commit_it_refused() {
    a_restart_under_a_committing_member(Restart::Sigterm, true).await;
}

/// The offsets `group` has committed on `topic`, by partition.
async fn committed(client: &Client, group: &str, topic: &str) -> BTreeMap<u32, u64> {
    client
        .groups()
        .fetch_offsets(tidelog_client::proto::FetchOffsetsRequest {
            group_id: group.into(),
            topic: Some(topic.into()),
        })
        .await
        .expect("fetch offsets")
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}
