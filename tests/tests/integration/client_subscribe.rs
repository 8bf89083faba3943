//! tidelog-client's `Subscription` through the real broker, beyond one topic
//! (`client.rs` has the basics): a pattern subscription picks up a topic created after
//! it opened and names each message's topic; survives a broker restart without a gap
//! or a repeat; carries 0 B to 1 MiB values; random messages across topics and
//! partitions all arrive once, in partition order (read in place with
//! `SubscribeOptions::views` or not); a damaged partition is found, left out (one
//! topic) or passed (a pattern), and the others are read on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_client::proto::TopicConfig;
use tidelog_client::{
    Ack, Client, Delivered, Event, Message, Producer, ProducerConfig, Record, StartAt,
    SubscribeOptions, Subscription,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

use crate::support::{Rng, always, batch_positions, env_u64, segment_logs};

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

async fn client(broker: &TestBroker) -> Client {
    Client::connect(&broker.endpoint()).await.expect("connect")
}

fn earliest() -> SubscribeOptions {
    SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::default()
    }
}

fn config(max_message_bytes: u64) -> TopicConfig {
    TopicConfig {
        max_message_bytes,
        ..TopicConfig::default()
    }
}

/// (topic, partition, offset) of a message.
type Place = (String, u32, u64);

/// Sends `records` and returns where each was stored, in the order given.
async fn send(producer: &Producer, records: Vec<Record>) -> Vec<Delivered> {
    let mut acks = Vec::with_capacity(records.len());
    for record in records {
        acks.push(producer.send(record).await.expect("send"));
    }
    let mut delivered = Vec::with_capacity(acks.len());
    for ack in acks {
        delivered.push(
            timeout(WAIT, ack)
                .await
                .expect("ack in time")
                .expect("acked"),
        );
    }
    delivered
}

/// What a reader saw: the messages in arrival order and every other event.
#[derive(Default)]
struct Seen {
    messages: Vec<Message>,
    events: Vec<Event>,
}

impl Seen {
    /// Reads until `done` holds (failing after [`WAIT`] without an event).
    async fn read_until(&mut self, subscription: &mut Subscription, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            let event = timeout(WAIT, subscription.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "stalled after {} messages; events {:?}",
                        self.messages.len(),
                        self.events
                    )
                })
                .expect("next_event");
            match event {
                Event::Messages(messages) => self.messages.extend(messages),
                Event::Views(views) => views
                    .for_each(|m| {
                        let message = m.to_message(views.topic(), views.partition());
                        self.messages.push(message);
                    })
                    .expect("a delivery read in place"),
                other => self.events.push(other),
            }
        }
    }

    fn places(&self) -> Vec<Place> {
        self.messages
            .iter()
            .map(|m| (m.topic.to_string(), m.partition, m.offset))
            .collect()
    }

    /// Every message once, each partition's in offset order.
    fn assert_once_in_order(&self) {
        let places = self.places();
        let unique: BTreeSet<&Place> = places.iter().collect();
        assert_eq!(unique.len(), places.len(), "a message arrived twice");
        let mut last: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for (topic, partition, offset) in &places {
            if let Some(before) = last.insert((topic.clone(), *partition), *offset) {
                assert!(
                    before < *offset,
                    "{topic}/{partition}: {offset} came after {before}"
                );
            }
        }
    }

    fn topics_added(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TopicsChanged(changed) => Some(changed.added.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

fn expected_places(delivered: &[Delivered], topics: &[String]) -> BTreeSet<Place> {
    delivered
        .iter()
        .zip(topics)
        .map(|(d, topic)| {
            (
                topic.clone(),
                d.partition,
                d.offset.expect("durable acks carry offsets"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_pattern_subscription_picks_up_a_topic_created_later_and_names_each_topic() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    client
        .create_topic("cs.a", 2, TopicConfig::default())
        .await
        .expect("create");
    client
        .create_topic("other", 1, TopicConfig::default())
        .await
        .expect("create");
    let producer = Producer::new(&client, ProducerConfig::default());
    let mut records = Vec::new();
    let mut topics = Vec::new();
    for n in 0..40 {
        let topic = if n % 4 == 0 { "other" } else { "cs.a" };
        records.push(Record::new(topic, format!("{topic} {n}")));
        topics.push(topic.to_string());
    }
    let mut delivered = send(&producer, records).await;

    let mut subscription = Subscription::open_pattern(&client, r"cs\..*", earliest())
        .await
        .expect("open_pattern");
    assert!(
        subscription
            .positions()
            .keys()
            .all(|(topic, _)| &**topic == "cs.a"),
        "{:?}",
        subscription.positions()
    );
    // A topic created after the subscription opened: read from its start.
    client
        .create_topic("cs.b", 3, TopicConfig::default())
        .await
        .expect("create");
    let created = Instant::now();
    let mut records = Vec::new();
    for n in 40..100 {
        let topic = ["cs.a", "cs.b", "other"][n % 3];
        records.push(Record::new(topic, format!("{topic} {n}")));
        topics.push(topic.to_string());
    }
    delivered.extend(send(&producer, records).await);
    let all = expected_places(&delivered, &topics);
    let wanted: BTreeSet<Place> = all.into_iter().filter(|(t, _, _)| t != "other").collect();

    let mut seen = Seen::default();
    seen.read_until(&mut subscription, |s| s.messages.len() >= wanted.len())
        .await;
    assert!(
        created.elapsed() < Duration::from_secs(5),
        "the new topic took {:?}",
        created.elapsed()
    );
    seen.assert_once_in_order();
    assert_eq!(seen.places().into_iter().collect::<BTreeSet<_>>(), wanted);
    for message in &seen.messages {
        let prefix = format!("{} ", message.topic);
        assert!(
            message.value.starts_with(prefix.as_bytes()),
            "{message:?} names the wrong topic"
        );
    }
    assert_eq!(
        seen.topics_added(),
        vec!["cs.a", "cs.b"],
        "{:?}",
        seen.events
    );
    // Nothing more: no repeat, nothing of "other".
    let extra = timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(extra.is_err(), "{extra:?}");
    // The positions name every partition of both topics, past what was read.
    let positions: BTreeMap<(String, u32), u64> = subscription
        .positions()
        .iter()
        .map(|((t, p), o)| ((t.to_string(), *p), *o))
        .collect();
    // (Partitions of the later topic that got nothing are not named: a resume starts
    // them at their log start, as new to the stream.)
    for (topic, partition, offset) in &wanted {
        assert!(positions[&(topic.clone(), *partition)] > *offset);
    }
    producer.close().await.expect("close");
}

// A multi-thread runtime: the client answers the broker's goodbye while `stop`
// blocks (see `TestBroker::stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_resumes_after_a_broker_restart_without_gap_or_repeat() {
    let mut broker = TestBroker::start();
    let client = client(&broker).await;
    for (topic, partitions) in [("rs.x", 2), ("rs.y", 1)] {
        client
            .create_topic(topic, partitions, TopicConfig::default())
            .await
            .expect("create");
    }
    let mut subscription = Subscription::open_pattern(&client, r"rs\..*", earliest())
        .await
        .expect("open_pattern");
    let producer = Producer::new(&client, ProducerConfig::default());
    let mut topics = Vec::new();
    let mut records = Vec::new();
    for n in 0..300 {
        let topic = if n % 3 == 0 { "rs.y" } else { "rs.x" };
        records.push(Record::new(topic, format!("before {n}")).key(format!("k{n}")));
        topics.push(topic.to_string());
    }
    let mut delivered = send(&producer, records).await;
    let mut seen = Seen::default();
    // Part of it before the restart: the rest is in flight or waits on the broker.
    seen.read_until(&mut subscription, |s| s.messages.len() >= 150)
        .await;

    broker.restart_on_the_same_ports();

    // The first call on the old connection may meet it broken: try again briefly.
    let deadline = Instant::now() + WAIT;
    while let Err(error) = client.create_topic("rs.z", 2, TopicConfig::default()).await {
        assert!(
            error.is_retryable() && Instant::now() < deadline,
            "create after the restart: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut records = Vec::new();
    for n in 300..600 {
        let topic = ["rs.x", "rs.y", "rs.z"][n % 3];
        records.push(Record::new(topic, format!("after {n}")).key(format!("k{n}")));
        topics.push(topic.to_string());
    }
    delivered.extend(send(&producer, records).await);
    let wanted = expected_places(&delivered, &topics);
    seen.read_until(&mut subscription, |s| s.messages.len() >= wanted.len())
        .await;
    seen.assert_once_in_order();
    assert_eq!(seen.places().into_iter().collect::<BTreeSet<_>>(), wanted);
    let extra = timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(extra.is_err(), "a repeat: {extra:?}");
    // The reader was told: lost, back, and the topic that appeared.
    let lost = seen
        .events
        .iter()
        .position(|e| matches!(e, Event::Disconnected { .. }))
        .expect("a Disconnected event");
    let back = seen
        .events
        .iter()
        .position(|e| matches!(e, Event::Reconnected))
        .expect("a Reconnected event");
    assert!(lost < back, "{:?}", seen.events);
    assert_eq!(
        seen.topics_added(),
        vec!["rs.x", "rs.y", "rs.z"],
        "{:?}",
        seen.events
    );
    producer.close().await.expect("close");
}

/// The value of message `n` of `len` bytes: its number, then filler, so a mix-up
/// or a cut shows.
fn sized_value(n: usize, len: usize) -> Bytes {
    let head = format!("{n}:");
    let mut value = head.into_bytes();
    value.extend((0..len).map(|i| b'a' + ((i + n) % 26) as u8));
    value.truncate(len);
    Bytes::from(value)
}

#[tokio::test]
async fn values_of_0_100_3k_and_1_mib_bytes_arrive_whole_on_a_pattern() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    for topic in ["sz.a", "sz.b"] {
        client
            .create_topic(topic, 2, config(2 << 20))
            .await
            .expect("create");
    }
    let mut subscription = Subscription::open_pattern(&client, r"sz\..*", earliest())
        .await
        .expect("open_pattern");
    // The same deliveries read in place.
    let in_place = SubscribeOptions {
        views: true,
        ..earliest()
    };
    let mut viewing = Subscription::open_pattern(&client, r"sz\..*", in_place)
        .await
        .expect("open_pattern with views");
    let producer = Producer::new(&client, ProducerConfig::default());
    let sizes = [0usize, 100, 3 * 1024, 1 << 20];
    let mut records = Vec::new();
    let mut topics = Vec::new();
    let mut values = BTreeMap::new();
    for n in 0..48 {
        let topic = if n % 2 == 0 { "sz.a" } else { "sz.b" };
        let size = sizes[(n * 7 / 3) % sizes.len()];
        let value = sized_value(n, size);
        records.push(Record::new(topic, value.clone()).partition((n % 4 / 2) as u32));
        topics.push(topic.to_string());
        values.insert(n, (topic, value));
    }
    let delivered = send(&producer, records).await;
    let mut by_place = BTreeMap::new();
    for (n, d) in delivered.iter().enumerate() {
        by_place.insert(
            (
                topics[n].clone(),
                d.partition,
                d.offset.expect("durable acks carry offsets"),
            ),
            values[&n].1.clone(),
        );
    }
    let mut seen = Seen::default();
    seen.read_until(&mut subscription, |s| s.messages.len() >= by_place.len())
        .await;
    seen.assert_once_in_order();
    for message in &seen.messages {
        let place = (message.topic.to_string(), message.partition, message.offset);
        assert_eq!(
            by_place.get(&place),
            Some(&message.value),
            "{place:?}: {} bytes",
            message.value.len()
        );
    }
    let sizes_seen: BTreeSet<usize> = seen.messages.iter().map(|m| m.value.len()).collect();
    assert_eq!(sizes_seen, sizes.into_iter().collect());
    let mut viewed = Seen::default();
    viewed
        .read_until(&mut viewing, |s| s.messages.len() >= by_place.len())
        .await;
    viewed.assert_once_in_order();
    let by_place_of = |seen: &Seen| -> BTreeMap<Place, Message> {
        let places = seen.places().into_iter();
        places.zip(seen.messages.iter().cloned()).collect()
    };
    assert!(
        by_place_of(&viewed) == by_place_of(&seen),
        "read in place, the messages differ"
    );
    producer.close().await.expect("close");
}

/// Property: random numbers of random-size messages, over topics of random partition
/// counts (some created after the subscription opened), all arrive exactly once, in
/// each partition's offset order, with their values. `SUBSCRIBE_CASES` cases (4).
#[tokio::test]
async fn random_messages_across_topics_and_partitions_arrive_once_in_partition_order() {
    let broker = TestBroker::start();
    let client = client(&broker).await;
    let cases = env_u64("SUBSCRIBE_CASES", 4);
    for case in 0..cases {
        let seed = 0x5eed_0000 + case;
        let mut rng = Rng::new(seed);
        let prefix = format!("pr{case}");
        let topic_count = 1 + rng.below(3) as usize;
        let mut names = Vec::new();
        let mut later = Vec::new();
        for t in 0..topic_count {
            let name = format!("{prefix}.t{t}");
            let partitions = 1 + rng.below(4) as u32;
            if rng.below(3) == 0 {
                later.push((name.clone(), partitions));
            } else {
                client
                    .create_topic(&name, partitions, config(1 << 20))
                    .await
                    .expect("create");
            }
            names.push(name);
        }
        let options = SubscribeOptions {
            start: StartAt::Earliest,
            max_batch_messages: [0, 1, 7, 500][rng.below(4) as usize],
            views: rng.below(2) == 0,
            ..SubscribeOptions::default()
        };
        let mut subscription =
            Subscription::open_pattern(&client, &format!(r"{prefix}\..*"), options)
                .await
                .expect("open_pattern");
        for (name, partitions) in &later {
            client
                .create_topic(name, *partitions, config(1 << 20))
                .await
                .expect("create later");
        }
        let config = ProducerConfig {
            batch_records: 1 + rng.below(50) as usize,
            linger: Duration::from_millis(rng.below(5)),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config);
        let count = rng.below(400) as usize;
        let mut records = Vec::new();
        let mut topics = Vec::new();
        let mut values = Vec::new();
        for _ in 0..count {
            let topic = &names[rng.below(names.len() as u64) as usize];
            let size = match rng.below(20) {
                0 => 0,
                1 => 20_000 + rng.below(200_000) as usize,
                _ => rng.below(2_000) as usize,
            };
            let value = Bytes::from(rng.bytes(size));
            let mut record = Record::new(topic.clone(), value.clone());
            if rng.below(2) == 0 {
                record = record.key(format!("key-{}", rng.below(50)));
            }
            records.push(record);
            topics.push(topic.clone());
            values.push(value);
        }
        let delivered = send(&producer, records).await;
        let mut expected: BTreeMap<Place, Bytes> = BTreeMap::new();
        for (n, d) in delivered.iter().enumerate() {
            expected.insert(
                (
                    topics[n].clone(),
                    d.partition,
                    d.offset.expect("durable acks carry offsets"),
                ),
                values[n].clone(),
            );
        }
        let mut seen = Seen::default();
        seen.read_until(&mut subscription, |s| s.messages.len() >= expected.len())
            .await;
        seen.assert_once_in_order();
        let got: BTreeMap<Place, Bytes> = seen
            .messages
            .iter()
            .map(|m| {
                (
                    (m.topic.to_string(), m.partition, m.offset),
                    m.value.clone(),
                )
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "seed {seed:#x}");
        assert!(got == expected, "seed {seed:#x}: the messages differ");
        let extra = timeout(Duration::from_millis(300), subscription.next()).await;
        assert!(extra.is_err(), "seed {seed:#x}: a repeat: {extra:?}");
        producer.close().await.expect("close");
    }
}

const DAMAGED: &str = "dmg";
/// Partition 1 holds offsets 0..=96 in one batch, a damaged batch 97..=127, then
/// 128..=139; partitions 0 and 2 hold 10 messages each.
const DAMAGED_FIRST: u64 = 97;

/// A topic of three partitions whose partition 1 has a CRC-damaged batch (as
/// `cli_damage.rs` makes one), and what each partition holds.
async fn broker_with_a_damaged_batch() -> TestBroker {
    let mut broker = TestBroker::start();
    let client = client(&broker).await;
    client
        .create_topic(
            DAMAGED,
            3,
            TopicConfig {
                fsync: always(),
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let producer = Producer::new(&client, ProducerConfig::default());
    for (partition, range) in [
        (0, 0..10),
        (1, 0..97),
        (1, 97..128),
        (1, 128..140),
        (2, 0..10),
    ] {
        // Each range one batch: sent at once, acked before the next.
        let records: Vec<Record> = range
            .map(|o| Record::new(DAMAGED, format!("p{partition}-{o}")))
            .collect();
        let batch = producer
            .send_batch(DAMAGED, partition, Ack::Durable, &records)
            .await
            .expect("send_batch");
        timeout(WAIT, batch).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
    drop(client);
    broker.stop();
    let logs = segment_logs(&broker.data_dir(), DAMAGED, 1);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    let batches = batch_positions(&bytes);
    assert_eq!(batches.len(), 3);
    let (start, length) = batches[1];
    bytes[start + length - 3] ^= 0x04;
    std::fs::write(&logs[0], &bytes).unwrap();
    broker.restart();
    broker
}

fn value_of(m: &Message) -> String {
    String::from_utf8_lossy(&m.value).into_owned()
}

// A multi-thread runtime: the client answers the broker's goodbye while `stop`
// blocks (see `TestBroker::stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_partition_is_dropped_and_the_others_are_read_on() {
    let broker = broker_with_a_damaged_batch().await;
    let client = client(&broker).await;

    // One topic: the damage stops the stream; the partition is found, dropped, and
    // the others go on (also with messages published afterwards).
    let mut subscription = Subscription::open(&client, DAMAGED, earliest())
        .await
        .expect("open");
    let mut got = Vec::new();
    let error = loop {
        match timeout(WAIT, subscription.next()).await.expect("in time") {
            Ok(message) => got.push(value_of(&message)),
            Err(error) => break error,
        }
    };
    assert!(error.is_data_loss(), "{error:?}");
    let damaged = subscription.damaged().await.expect("damaged");
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(
        (&*damaged[0].topic, damaged[0].partition, damaged[0].offset),
        (DAMAGED, 1, DAMAGED_FIRST)
    );
    assert!(damaged[0].error.is_data_loss());
    assert!(
        damaged[0].error.to_string().contains("97"),
        "{}",
        damaged[0].error
    );
    assert_eq!(subscription.drop_partition(DAMAGED, 1), Ok(true));
    assert_eq!(subscription.drop_partition(DAMAGED, 1), Ok(false));
    // With ids (the producer's default): the topic's dedup window is read back past
    // the damaged batch, so publishing goes on, to every partition.
    let producer = Producer::new(&client, ProducerConfig::default());
    let late: Vec<Record> = (10..12)
        .map(|o| Record::new(DAMAGED, format!("p2-{o}")))
        .collect();
    let sent = producer
        .send_batch(DAMAGED, 2, Ack::Durable, &late)
        .await
        .expect("send");
    timeout(WAIT, sent).await.expect("in time").expect("acked");
    let mut expected: Vec<String> = (0..10).map(|o| format!("p0-{o}")).collect();
    expected.extend((0..DAMAGED_FIRST).map(|o| format!("p1-{o}")));
    expected.extend((0..12).map(|o| format!("p2-{o}")));
    while got.len() < expected.len() {
        let message = timeout(WAIT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("stalled at {got:?}"))
            .expect("next after the drop");
        got.push(value_of(&message));
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(
        subscription
            .positions()
            .keys()
            .all(|(_, partition)| *partition != 1)
    );

    // A pattern: leaving a partition out is refused (it would start over); seeking
    // past the damaged batch reads on from there. Read in place (`next` makes the
    // messages of each delivery's views), which changes none of it.
    let in_place = SubscribeOptions {
        views: true,
        ..earliest()
    };
    let mut subscription = Subscription::open_pattern(&client, "dm.*", in_place)
        .await
        .expect("open_pattern");
    let mut got = Vec::new();
    let error = loop {
        match timeout(WAIT, subscription.next()).await.expect("in time") {
            Ok(message) => got.push(value_of(&message)),
            Err(error) => break error,
        }
    };
    assert!(error.is_data_loss(), "{error:?}");
    let damaged = subscription.damaged().await.expect("damaged");
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert!(subscription.drop_partition(DAMAGED, 1).is_err());
    subscription.seek(DAMAGED, 1, 128);
    expected.extend((128..140).map(|o| format!("p1-{o}")));
    expected.sort();
    while got.len() < expected.len() {
        let message = timeout(WAIT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("stalled at {got:?}"))
            .expect("next after the seek");
        got.push(value_of(&message));
    }
    got.sort();
    assert_eq!(got, expected);
    producer.close().await.expect("close");
}
