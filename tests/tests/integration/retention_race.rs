//! Retention and TTL deleting segments under readers, fast and slow: no crash, no
//! damaged message, and each reader follows its reset policy (issue 6).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, Message, PublishRequest, ResetPolicy, ResetReason, StartPosition, SubscribeRequest,
    TopicConfig,
};
use tidelog_tests::{TestBroker, create_topic, describe_topic, metric_value};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{
    EVENT_TIMEOUT, ReaderReport, assert_no_panic, checked_value, consumer, fetch, never,
};

/// A connection whose HTTP/2 windows are the protocol's minimum (64 KiB), so a slow
/// reader's backlog stays on the broker instead of in the client's receive buffer.
async fn small_window_channel(broker: &TestBroker) -> Channel {
    Channel::from_shared(broker.endpoint())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connecting to tidelogd")
}

/// A subscriber reading from the earliest offset with `policy`, pausing `pause`
/// after each batch, until `stop`.
async fn retention_subscriber(
    channel: Channel,
    topic: &'static str,
    policy: ResetPolicy,
    pause: Duration,
    stop: Arc<AtomicBool>,
    raced: Arc<AtomicBool>,
) -> ReaderReport {
    let mut report = ReaderReport {
        name: format!("subscriber {topic} {policy:?} pause {pause:?}"),
        ..Default::default()
    };
    let mut stream = match consumer(&channel)
        .subscribe(SubscribeRequest {
            topic: topic.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            reset_policy: policy as i32,
            max_batch_messages: 20,
            ..Default::default()
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            report.problems.push(format!("subscribe: {status}"));
            return report;
        }
    };
    let mut last = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let event = match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => continue,
            Ok(event) => event,
        };
        match event.map(|e| e.and_then(|r| r.event)) {
            Ok(Some(Event::Batch(batch))) => {
                for message in &batch.messages {
                    report.check(&mut last, message);
                }
                tokio::time::sleep(pause).await;
            }
            Ok(Some(Event::PositionReset(reset))) => {
                report.resets += 1;
                raced.store(true, Ordering::Relaxed);
                // Deliveries go on from where the reset says.
                if reset.reason != ResetReason::BelowLogStart as i32 {
                    report.problems.push(format!("unexpected reset {reset:?}"));
                }
                last.remove(&reset.partition);
            }
            Ok(other) => {
                report.problems.push(format!("unexpected event {other:?}"));
                break;
            }
            Err(status) if status.code() == Code::OutOfRange && policy == ResetPolicy::Error => {
                report.out_of_range += 1;
                raced.store(true, Ordering::Relaxed);
                break;
            }
            Err(status) => {
                report.problems.push(format!("stream ended: {status}"));
                break;
            }
        }
    }
    report
}

/// A Fetch loop over `partition` that reads `max_messages` at a time with a pause,
/// and on OUT_OF_RANGE jumps to the log start the broker names.
async fn retention_fetcher(
    channel: Channel,
    topic: &'static str,
    partition: u32,
    pause: Duration,
    stop: Arc<AtomicBool>,
    raced: Arc<AtomicBool>,
) -> ReaderReport {
    let mut report = ReaderReport {
        name: format!("fetcher {topic}/{partition}"),
        ..Default::default()
    };
    let mut last = BTreeMap::new();
    let mut offset = 0;
    while !stop.load(Ordering::Relaxed) {
        match fetch(&channel, topic, partition, offset, 5).await {
            Ok(response) => {
                for message in &response.messages {
                    report.check(&mut last, message);
                }
                offset = response.next_offset;
            }
            Err(status) if status.code() == Code::OutOfRange => {
                report.out_of_range += 1;
                raced.store(true, Ordering::Relaxed);
                offset = describe_topic(&channel, topic).await.partitions[partition as usize]
                    .log_start_offset;
                last.clear();
            }
            Err(status) => {
                report.problems.push(format!("fetch at {offset}: {status}"));
                break;
            }
        }
        tokio::time::sleep(pause).await;
    }
    report
}

/// Publishes self-checking messages to every partition of `topic` until `stop`.
async fn churn_producer(
    channel: Channel,
    topic: &'static str,
    producer: u64,
    ack: AckLevel,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut client = PublisherClient::new(channel);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let messages = (0..20)
            .map(|_| {
                seq += 1;
                Message {
                    value: checked_value(producer << 40 | seq, 200),
                    ..Default::default()
                }
            })
            .collect();
        let published = client
            .publish(PublishRequest {
                topic: topic.into(),
                messages,
                ack: ack as i32,
            })
            .await;
        if let Err(status) = published {
            return vec![format!("producer {producer} on {topic}: {status}")];
        }
    }
    Vec::new()
}

/// Retention and TTL delete segments continuously (4 KiB segments, a 16 KiB size
/// limit, a 200 ms TTL, a pass every 20 ms) while subscribers and fetchers read
/// them, fast and slow: the broker never crashes (no SIGBUS from a mapping whose file
/// went away), every message read is intact, and each reader either keeps reading or
/// gets OUT_OF_RANGE / a PositionReset as its policy says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_segments_under_readers_without_harm() {
    let mut broker = TestBroker::start_with(&["--retention-interval", "20ms"]);
    let channel = broker.channel().await;
    create_topic(
        &channel,
        "churn",
        2,
        TopicConfig {
            segment_bytes: 4096,
            retention_bytes: Some(16 * 1024),
            // Fast appends (ack WRITTEN, no group commit) so readers fall behind.
            fsync: never(),
            ..Default::default()
        },
    )
    .await;
    create_topic(
        &channel,
        "expiring",
        1,
        TopicConfig {
            segment_bytes: 4096,
            segment_ms: Some(100),
            default_ttl_ms: Some(200),
            fsync: never(),
            ..Default::default()
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for (producer, (topic, ack)) in [
        ("churn", AckLevel::Written),
        ("churn", AckLevel::Written),
        ("expiring", AckLevel::Written),
    ]
    .into_iter()
    .enumerate()
    {
        producers.push(tokio::spawn(churn_producer(
            broker.channel().await,
            topic,
            producer as u64,
            ack,
            stop.clone(),
        )));
    }
    // Each reader with what it must have met by the end: a slow reader of "churn"
    // falls below the log start and follows its policy (`Some(true)`: a PositionReset,
    // `Some(false)`: OUT_OF_RANGE); the others may or may not.
    let mut readers = Vec::new();
    // Set by each reader that has fallen below the log start at least once.
    let mut must_race = Vec::new();
    let fast = Duration::ZERO;
    let slow = Duration::from_millis(30);
    for (topic, policy, pause, expect) in [
        ("churn", ResetPolicy::Earliest, fast, None),
        ("churn", ResetPolicy::Earliest, slow, Some(true)),
        ("churn", ResetPolicy::Latest, slow, Some(true)),
        ("churn", ResetPolicy::Error, slow, Some(false)),
        ("expiring", ResetPolicy::Earliest, fast, None),
        ("expiring", ResetPolicy::Earliest, slow, None),
    ] {
        let raced = Arc::new(AtomicBool::new(false));
        if expect.is_some() {
            must_race.push(raced.clone());
        }
        let reader = tokio::spawn(retention_subscriber(
            small_window_channel(&broker).await,
            topic,
            policy,
            pause,
            stop.clone(),
            raced,
        ));
        readers.push((topic, expect, reader));
    }
    for (topic, partition, expect) in [
        ("churn", 0, Some(false)),
        ("churn", 1, Some(false)),
        ("expiring", 0, None),
    ] {
        let raced = Arc::new(AtomicBool::new(false));
        if expect.is_some() {
            must_race.push(raced.clone());
        }
        let reader = tokio::spawn(retention_fetcher(
            broker.channel().await,
            topic,
            partition,
            Duration::from_millis(10),
            stop.clone(),
            raced,
        ));
        readers.push((topic, expect, reader));
    }

    // Run until both topics have lost plenty of segments under the readers and every
    // slow reader of "churn" has fallen below the log start (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let deleted = |metrics: &str, topic: &str, reason: &str| {
        metric_value(
            metrics,
            &format!(
                "tidelog_retention_deleted_segments_total{{topic=\"{topic}\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    loop {
        let metrics = broker.metrics_text();
        if deleted(&metrics, "churn", "size") >= 50.0
            && deleted(&metrics, "expiring", "ttl") >= 5.0
            && must_race.iter().all(|raced| raced.load(Ordering::Relaxed))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s: slow readers fallen behind {:?}, metrics {metrics}",
            must_race
                .iter()
                .map(|raced| raced.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(broker.is_running(), "tidelogd died: {}", broker.log());
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        let errors = tokio::time::timeout(EVENT_TIMEOUT, producer)
            .await
            .expect("a producer hung")
            .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    let mut raced = 0;
    for (topic, expect, reader) in readers {
        let report = tokio::time::timeout(EVENT_TIMEOUT, reader)
            .await
            .expect("a reader hung")
            .unwrap();
        println!("{report:?}");
        let name = &report.name;
        assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
        assert!(report.messages > 0, "{name} read nothing");
        // Without TTL nothing is skipped in silence: a jump is always a reset.
        if topic == "churn" {
            assert_eq!(report.gaps, 0, "{name} skipped offsets without a reset");
        }
        match expect {
            Some(true) => assert!(report.resets > 0, "{name} was never reset: {report:?}"),
            Some(false) => assert!(report.out_of_range > 0, "{name}: {report:?}"),
            None => {}
        }
        raced += report.resets + report.out_of_range;
    }
    assert!(raced > 0, "no reader ever fell below the log start");
    let metrics = broker.metrics_text();
    println!(
        "retention vs readers: segments deleted churn={} expiring={}, readers reset or out of range {raced} times",
        deleted(&metrics, "churn", "size"),
        deleted(&metrics, "expiring", "ttl")
    );
    assert!(broker.is_running(), "tidelogd died: {}", broker.log());
    broker.stop();
    assert_no_panic(&broker);
}

/// Bug hunt 2026-12-06: on an `fsync = always` topic (the default) with a size limit,
/// producers acking WRITTEN keep data written but not yet durable, which readers do
/// not see; retention deleted such segments, so the log start went above the end
/// (every Fetch OUT_OF_RANGE, Subscribe streams resetting in a loop). For about two
/// seconds of such publishing under a retention pass every 20 ms, DescribeTopic must
/// never show a log start above the end, and a Fetch at the log start never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_never_moves_the_log_start_past_the_end_readers_see() {
    let broker = TestBroker::start_with(&["--retention-interval", "20ms"]);
    let channel = broker.channel().await;
    create_topic(
        &channel,
        "synced",
        1,
        TopicConfig {
            segment_bytes: 4096,
            retention_bytes: Some(12_000),
            ..Default::default()
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..2 {
        producers.push(tokio::spawn(churn_producer(
            broker.channel().await,
            "synced",
            producer,
            AckLevel::Written,
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let (mut polls, mut moved) = (0u64, 0u64);
    let mut last_start = 0;
    // Two seconds, and on a slow machine until retention has deleted something.
    let long_enough = |moved| {
        let elapsed = started.elapsed();
        elapsed > Duration::from_secs(20) || (elapsed > Duration::from_secs(2) && moved > 0)
    };
    while !long_enough(moved) {
        let partition = describe_topic(&channel, "synced").await.partitions[0].clone();
        let (start, end) = (partition.log_start_offset, partition.end_offset);
        assert!(
            start <= end,
            "poll {polls}: log start {start} above the end {end}"
        );
        moved += u64::from(start > last_start);
        last_start = start;
        polls += 1;
        if polls % 10 == 0 {
            let read = fetch(&channel, "synced", 0, start, 10).await;
            if let Err(status) = read {
                // Retention may have moved the start since the describe.
                assert_eq!(status.code(), Code::OutOfRange, "{status}");
                let now = describe_topic(&channel, "synced").await.partitions[0].clone();
                assert!(now.log_start_offset > start, "{status}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        assert_eq!(producer.await.unwrap(), Vec::<String>::new());
    }
    assert!(
        moved > 0,
        "retention deleted nothing to test: {polls} polls"
    );
}
