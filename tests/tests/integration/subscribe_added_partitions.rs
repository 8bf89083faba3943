//! A plain subscription to every partition of a topic follows the partition count:
//! partitions CreatePartitions adds while it runs (or while it reconnects) are read
//! from their start, so no message is skipped. Through tidelog-client's
//! `Subscription` (live, and across a broker restart), raw gRPC `Subscribe` (live, a
//! resume with `follow_partitions_from`, the refusals, and a pattern stream beside it)
//! and `tidelog consume TOPIC --follow`. Values of 3 KB, more than 1 MiB per test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_client::{Client, Event as ClientEvent, StartAt, SubscribeOptions, Subscription};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, CreatePartitionsRequest, Message, PublishRequest, SubscribeRequest,
    SubscribeResponse, TopicConfig,
};
use tidelog_tests::{TestBroker, tidelog_command};
use tokio::time::timeout;
use tonic::{Code, Streaming};

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Bytes per message value.
const VALUE_BYTES: usize = 3 * 1024;

/// (partition, offset) -> value.
type Stored = BTreeMap<(u32, u64), Bytes>;

/// A 3 KB value that names where it was sent: `tag-partition-n:` then filler.
fn value(tag: &str, partition: u32, n: usize) -> Bytes {
    let mut value = format!("{tag}-{partition}-{n}:").into_bytes();
    value.extend((0..VALUE_BYTES).map(|i| b'a' + ((i + n) % 26) as u8));
    value.truncate(VALUE_BYTES);
    Bytes::from(value)
}

/// Publishes `count` messages to each of `partitions` (explicitly placed, durably) and
/// returns where each was stored. Retries a refused call briefly (a broker that just
/// restarted).
async fn publish(
    broker: &TestBroker,
    topic: &str,
    partitions: std::ops::Range<u32>,
    count: usize,
    tag: &str,
) -> Stored {
    let mut stored = Stored::new();
    let mut publisher = broker.publisher().await;
    for partition in partitions {
        for chunk in (0..count).collect::<Vec<_>>().chunks(20) {
            let values: Vec<Bytes> = chunk.iter().map(|&n| value(tag, partition, n)).collect();
            let request = PublishRequest {
                topic: topic.into(),
                messages: values
                    .iter()
                    .map(|v| Message {
                        partition: Some(partition),
                        value: v.clone(),
                        ..Message::default()
                    })
                    .collect(),
                ack: AckLevel::Durable as i32,
            };
            let acks = publisher
                .publish(request)
                .await
                .expect("publish")
                .into_inner()
                .acks;
            for (ack, value) in acks.iter().zip(values) {
                assert_eq!(ack.partition, partition);
                stored.insert((ack.partition, ack.offset), value);
            }
        }
    }
    stored
}

async fn create_partitions(broker: &TestBroker, topic: &str, partitions: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut admin = broker.admin().await;
        match admin
            .create_partitions(CreatePartitionsRequest {
                name: topic.into(),
                partitions,
            })
            .await
        {
            Ok(_) => return,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("CreatePartitions {topic} to {partitions}: {status}"),
        }
    }
}

/// Asserts that `got` (in arrival order) holds every message of `wanted` once and
/// nothing else, each partition's in offset order.
fn assert_exactly(got: &[((u32, u64), Bytes)], wanted: &Stored) {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for ((partition, offset), _) in got {
        if let Some(before) = last.insert(*partition, *offset) {
            assert!(
                before < *offset,
                "partition {partition}: {offset} came after {before}"
            );
        }
    }
    let unique: BTreeSet<(u32, u64)> = got.iter().map(|(place, _)| *place).collect();
    assert_eq!(unique.len(), got.len(), "a message arrived twice");
    let missing: Vec<&(u32, u64)> = wanted.keys().filter(|k| !unique.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages missing, first {:?}",
        missing.len(),
        wanted.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.len(), wanted.len(), "messages nobody sent");
    for (place, value) in got {
        assert_eq!(Some(value), wanted.get(place), "the value at {place:?}");
    }
}

/// Per partition, how many of `got` came from it (for failure messages).
fn per_partition(got: &[((u32, u64), Bytes)]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for ((partition, _), _) in got {
        *counts.entry(*partition).or_default() += 1;
    }
    counts
}

/// Reads messages from `subscription` into `got` until it holds `count`, keeping the
/// other events in `events`.
async fn read_client(
    subscription: &mut Subscription,
    got: &mut Vec<((u32, u64), Bytes)>,
    events: &mut Vec<ClientEvent>,
    count: usize,
) {
    while got.len() < count {
        let event = timeout(WAIT, subscription.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stalled at {} of {count} messages; per partition {:?}",
                    got.len(),
                    per_partition(got)
                )
            })
            .expect("next_event");
        match event {
            ClientEvent::Messages(messages) => got.extend(
                messages
                    .into_iter()
                    .map(|m| ((m.partition, m.offset), m.value)),
            ),
            other => events.push(other),
        }
    }
}

/// A Subscription from latest on a 3-partition topic; CreatePartitions to 6 while it
/// is open; 60 messages to every partition before and after: every one arrives once,
/// those of the new partitions too, though the subscription started at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_every_partition_reads_partitions_added_while_it_runs() {
    let broker = TestBroker::start();
    broker.create_topic("grow", 3, TopicConfig::default()).await;
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let mut subscription = Subscription::open(&client, "grow", SubscribeOptions::default())
        .await
        .expect("open");
    let mut wanted = publish(&broker, "grow", 0..3, 60, "before").await;
    create_partitions(&broker, "grow", 6).await;
    wanted.extend(publish(&broker, "grow", 0..6, 60, "after").await);
    assert_eq!(wanted.len(), 540);
    let (mut got, mut events) = (Vec::new(), Vec::new());
    read_client(&mut subscription, &mut got, &mut events, wanted.len()).await;
    assert_exactly(&got, &wanted);
    let extra = timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(extra.is_err(), "a message nobody sent: {extra:?}");
    assert!(
        subscription.positions().keys().map(|(_, p)| *p).eq(0..6),
        "{:?}",
        subscription.positions()
    );
}

/// A Subscription on every partition across a broker restart: partitions added before
/// the restart (some of their messages read) go on where they stood, and partitions
/// added while the subscription was away (never seen by it) are read from their start
/// after it reconnects; nothing is skipped or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_every_partition_reads_partitions_added_while_it_reconnects() {
    let mut broker = TestBroker::start();
    broker
        .create_topic("regrow", 3, TopicConfig::default())
        .await;
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    let options = SubscribeOptions {
        start: StartAt::Earliest,
        ..SubscribeOptions::default()
    };
    let mut subscription = Subscription::open(&client, "regrow", options)
        .await
        .expect("open");
    let mut wanted = publish(&broker, "regrow", 0..3, 40, "a").await;
    create_partitions(&broker, "regrow", 5).await;
    wanted.extend(publish(&broker, "regrow", 0..5, 40, "b").await);
    let (mut got, mut events) = (Vec::new(), Vec::new());
    read_client(&mut subscription, &mut got, &mut events, wanted.len()).await;

    // While the subscription is not read (so it reconnects only afterwards): a
    // restart, two more partitions, messages everywhere.
    broker.restart_on_the_same_ports();
    create_partitions(&broker, "regrow", 7).await;
    wanted.extend(publish(&broker, "regrow", 0..7, 40, "c").await);
    assert_eq!(wanted.len(), 3 * 40 + 5 * 40 + 7 * 40);
    read_client(&mut subscription, &mut got, &mut events, wanted.len()).await;
    assert_exactly(&got, &wanted);
    let extra = timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(extra.is_err(), "a repeat: {extra:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, ClientEvent::Reconnected)),
        "{events:?}"
    );

    // And once more while it runs after the reconnect.
    create_partitions(&broker, "regrow", 8).await;
    wanted.extend(publish(&broker, "regrow", 0..8, 10, "d").await);
    read_client(&mut subscription, &mut got, &mut events, wanted.len()).await;
    assert_exactly(&got, &wanted);
}

/// The messages of Batch events on a raw stream until `count` arrived.
async fn read_raw(
    stream: &mut Streaming<SubscribeResponse>,
    got: &mut Vec<((u32, u64), Bytes)>,
    count: usize,
) {
    while got.len() < count {
        let response = timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stalled at {} of {count} messages; per partition {:?}",
                    got.len(),
                    per_partition(got)
                )
            })
            .expect("a stream event")
            .expect("the stream goes on");
        if let Some(Event::Batch(batch)) = response.event {
            got.extend(
                batch
                    .messages
                    .into_iter()
                    .map(|m| ((m.partition, m.offset), m.value)),
            );
        }
    }
}

/// Raw Subscribe with `partitions` empty follows CreatePartitions; a resume with
/// `partition_starts` and `follow_partitions_from` reads unlisted partitions from that
/// number on from their start (and later ones), and leaves out unlisted ones below it;
/// a pattern stream beside them reads the new partitions too; the field's misuses are
/// INVALID_ARGUMENT.
#[tokio::test]
async fn raw_subscribe_on_every_partition_follows_create_partitions() {
    let broker = TestBroker::start();
    broker
        .create_topic("raw.grow", 2, TopicConfig::default())
        .await;
    let consumer = broker.consumer().await;
    let open = |request: SubscribeRequest| {
        let mut consumer = consumer.clone();
        async move {
            consumer
                .subscribe(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut all = open(SubscribeRequest {
        topic: "raw.grow".into(),
        send_positioned: true,
        ..SubscribeRequest::default()
    })
    .await
    .expect("subscribe");
    let first = timeout(WAIT, all.message()).await.expect("in time");
    assert!(
        matches!(
            first.expect("ok").and_then(|r| r.event),
            Some(Event::Positioned(_))
        ),
        "the first event is Positioned"
    );
    let mut pattern = open(SubscribeRequest {
        topic_pattern: r"raw\..*".into(),
        send_positioned: true,
        ..SubscribeRequest::default()
    })
    .await
    .expect("subscribe by pattern");
    // TopicsChanged, then Positioned: the pattern stream's starts are fixed.
    for _ in 0..2 {
        timeout(WAIT, pattern.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("an event");
    }

    let mut wanted = publish(&broker, "raw.grow", 0..2, 100, "before").await;
    create_partitions(&broker, "raw.grow", 4).await;
    wanted.extend(publish(&broker, "raw.grow", 0..4, 100, "after").await);
    assert_eq!(wanted.len(), 600);
    let mut got = Vec::new();
    read_raw(&mut all, &mut got, wanted.len()).await;
    assert_exactly(&got, &wanted);
    let mut by_pattern = Vec::new();
    read_raw(&mut pattern, &mut by_pattern, wanted.len()).await;
    assert_exactly(&by_pattern, &wanted);

    // A resume: partition 0 from its end, partition 1 left out (below 2, not
    // listed), 2 and 3 unlisted from 2 on: from their start; 4, added later, too.
    let end0 = wanted.keys().filter(|(p, _)| *p == 0).count() as u64;
    let mut resumed = open(SubscribeRequest {
        topic: "raw.grow".into(),
        partition_starts: vec![PartitionStart {
            partition: 0,
            offset: end0,
            topic: String::new(),
            topic_id: 0,
        }],
        follow_partitions_from: Some(2),
        ..SubscribeRequest::default()
    })
    .await
    .expect("resume");
    let mut wanted_resumed: Stored = wanted
        .iter()
        .filter(|((p, _), _)| *p >= 2)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    create_partitions(&broker, "raw.grow", 5).await;
    let later = publish(&broker, "raw.grow", 0..5, 30, "later").await;
    wanted_resumed.extend(
        later
            .iter()
            .filter(|((p, _), _)| *p != 1)
            .map(|(k, v)| (*k, v.clone())),
    );
    let mut got_resumed = Vec::new();
    read_raw(&mut resumed, &mut got_resumed, wanted_resumed.len()).await;
    assert_exactly(&got_resumed, &wanted_resumed);
    // The first stream goes on with the fifth partition too.
    wanted.extend(later);
    read_raw(&mut all, &mut got, wanted.len()).await;
    assert_exactly(&got, &wanted);

    for (request, needle) in [
        (
            SubscribeRequest {
                topic: "raw.grow".into(),
                follow_partitions_from: Some(0),
                ..SubscribeRequest::default()
            },
            "follow_partitions_from goes with partition_starts",
        ),
        (
            SubscribeRequest {
                topic_pattern: r"raw\..*".into(),
                follow_partitions_from: Some(0),
                ..SubscribeRequest::default()
            },
            "leave follow_partitions_from unset",
        ),
    ] {
        let status = open(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
        assert!(status.message().contains(needle), "{status}");
    }
}

/// `tidelog consume TOPIC --follow` without --partition reads the partitions
/// CreatePartitions adds while it runs.
#[tokio::test]
async fn cli_consume_follow_reads_partitions_added_while_it_runs() {
    let broker = TestBroker::start();
    broker
        .create_topic("cligrow", 2, TopicConfig::default())
        .await;
    let mut wanted = publish(&broker, "cligrow", 0..2, 100, "before").await;
    let total = wanted.len() + 4 * 100;
    let mut follower = tidelog_command()
        .args([
            "--server",
            &broker.endpoint(),
            "consume",
            "cligrow",
            "--follow",
            "--from",
            "earliest",
            "--print-meta",
            "-n",
            &total.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a follower");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = follower.stdout.take().expect("stdout is piped");
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                lines.lock().unwrap().push(line.expect("a line of output"));
            }
        })
    };
    // The follower has read what was there: it is positioned.
    let deadline = Instant::now() + WAIT;
    while lines.lock().unwrap().len() < wanted.len() {
        assert!(Instant::now() < deadline, "the follower printed too little");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create_partitions(&broker, "cligrow", 4).await;
    wanted.extend(publish(&broker, "cligrow", 0..4, 100, "after").await);
    assert_eq!(wanted.len(), total);
    let deadline = Instant::now() + WAIT;
    while matches!(follower.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            follower.kill().expect("kill the follower");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = follower.wait().expect("the follower's exit");
    reader.join().expect("the reader thread");
    let lines = lines.lock().unwrap();
    // `--print-meta`: "partition:offset time\tvalue".
    let got: Vec<((u32, u64), Bytes)> = lines
        .iter()
        .map(|line| {
            let (meta, value) = line.split_once('\t').expect("meta, then the value");
            let place = meta.split(' ').next().expect("partition:offset first");
            let (partition, offset) = place.split_once(':').expect("partition:offset");
            (
                (
                    partition.parse().expect("a partition"),
                    offset.parse().expect("an offset"),
                ),
                Bytes::from(value.to_string()),
            )
        })
        .collect();
    assert!(
        status.success(),
        "the follower ended with {status} after {} of {total} lines; per partition {:?}",
        got.len(),
        per_partition(&got)
    );
    assert_exactly(&got, &wanted);
}
