//! The soak (issue 6; ignored, `tests/soak.sh` runs it): produce and subscribe on a
//! TTL topic at a fixed rate, sampling the broker's RSS. `TIDELOG_SOAK_MINUTES`
//! (default 1) and `TIDELOG_SOAK_RATE` (messages per second, default 2000) set it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, GroupMembership, Message, PublishRequest, ResetPolicy, ResetReason, SubscribeRequest,
    SubscribeResponse, TopicConfig,
};
use tidelog_tests::{TestBroker, create_topic, describe_topic};
use tonic::Streaming;

use crate::support::{
    EVENT_TIMEOUT, ReaderReport, always, assert_no_panic, checked_value, consumer, env_u64, rss_mib,
};

/// Reads a Subscribe stream until `stop`, checking every message; returns
/// (messages, problems).
async fn soak_reader(
    mut stream: Streaming<SubscribeResponse>,
    consumed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut report = ReaderReport::default();
    let mut last = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(response))) => match response.event {
                Some(Event::Batch(batch)) => {
                    for message in &batch.messages {
                        report.check(&mut last, message);
                    }
                    consumed.fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
                }
                Some(Event::Assignment(_)) => {}
                // A new group starts each partition by its policy: documented, not a loss.
                Some(Event::PositionReset(reset))
                    if reset.reason == ResetReason::NoCommittedOffset as i32 => {}
                other => report.problems.push(format!("unexpected event {other:?}")),
            },
            Ok(Ok(None)) => {
                report.problems.push("the stream ended".into());
                break;
            }
            Ok(Err(status)) => {
                report.problems.push(format!("the stream failed: {status}"));
                break;
            }
        }
    }
    report.problems
}

/// Produce + subscribe on a topic with a TTL (so segments expire and are deleted all
/// along) at a fixed rate for `TIDELOG_SOAK_MINUTES` (default 1) minutes, sampling
/// the broker's RSS every 5 s. Errors must be 0. `tests/soak.sh` runs it against a
/// release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run tests/soak.sh, or --ignored with TIDELOG_SOAK_MINUTES"]
async fn soak_produce_subscribe_with_ttl() {
    const PRODUCERS: u64 = 4;
    // Long enough for a durable publish even when an fsync stalls; missed ticks are
    // caught up (the default burst behaviour), so the rate holds on average.
    const TICK: Duration = Duration::from_millis(100);
    let minutes = env_u64("TIDELOG_SOAK_MINUTES", 1);
    let rate = env_u64("TIDELOG_SOAK_RATE", 2000);
    let per_tick = (rate * TICK.as_millis() as u64 / 1000 / PRODUCERS).max(1);
    let mut broker = TestBroker::start_with(&["--retention-interval", "1s"]);
    let channel = broker.channel().await;
    create_topic(
        &channel,
        "soak",
        4,
        TopicConfig {
            default_ttl_ms: Some(10_000),
            segment_bytes: 1 << 20,
            segment_ms: Some(5_000),
            fsync: always(),
            ..Default::default()
        },
    )
    .await;

    // Producers stop first; readers once they have caught up.
    let stop = Arc::new(AtomicBool::new(false));
    let readers_stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let (plain, grouped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let plain_stream = consumer(&broker.channel().await)
        .subscribe(SubscribeRequest {
            topic: "soak".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let group_stream = consumer(&broker.channel().await)
        .subscribe(SubscribeRequest {
            topic: "soak".into(),
            group: Some(GroupMembership {
                group_id: "soakers".into(),
                auto_commit_interval_ms: 1000,
                ..Default::default()
            }),
            reset_policy: ResetPolicy::Latest as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let readers = [
        tokio::spawn(soak_reader(
            plain_stream,
            plain.clone(),
            readers_stop.clone(),
        )),
        tokio::spawn(soak_reader(
            group_stream,
            grouped.clone(),
            readers_stop.clone(),
        )),
    ];
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let mut client = PublisherClient::new(broker.channel().await);
        let (stop, published) = (stop.clone(), published.clone());
        producers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut ticker = tokio::time::interval(TICK);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let messages = (0..per_tick)
                    .map(|_| {
                        seq += 1;
                        Message {
                            value: checked_value(producer << 40 | seq, 256),
                            key: Bytes::from(format!("k{}", seq % 64)),
                            ..Default::default()
                        }
                    })
                    .collect();
                match client
                    .publish(PublishRequest {
                        topic: "soak".into(),
                        messages,
                        ack: AckLevel::Durable as i32,
                    })
                    .await
                {
                    Ok(_) => {
                        published.fetch_add(per_tick, Ordering::Relaxed);
                    }
                    Err(status) => errors.push(status.to_string()),
                }
            }
            errors
        }));
    }

    let started = Instant::now();
    let duration = Duration::from_secs(minutes * 60);
    let mut samples = vec![rss_mib(&broker)];
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5).min(duration.saturating_sub(started.elapsed())))
            .await;
        let (rss, anon) = rss_mib(&broker);
        let size: u64 = describe_topic(&channel, "soak")
            .await
            .partitions
            .iter()
            .map(|p| p.size_bytes)
            .sum();
        println!(
            "soak t={:>4}s rss={rss:.1}MiB anon={anon:.1}MiB disk={:.1}MiB published={} plain={} group={}",
            started.elapsed().as_secs(),
            size as f64 / (1 << 20) as f64,
            published.load(Ordering::Relaxed),
            plain.load(Ordering::Relaxed),
            grouped.load(Ordering::Relaxed),
        );
        samples.push((rss, anon));
        assert!(broker.is_running(), "tidelogd died: {}", broker.log());
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for producer in producers {
        errors.extend(producer.await.unwrap());
    }
    // The readers catch up with the last messages before they stop.
    let total = published.load(Ordering::Relaxed);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let caught_up =
        || plain.load(Ordering::Relaxed) >= total && grouped.load(Ordering::Relaxed) >= total;
    while !caught_up() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    readers_stop.store(true, Ordering::Relaxed);
    for reader in readers {
        errors.extend(reader.await.unwrap());
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let (first, last) = (samples[0], *samples.last().unwrap());
    let max = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    println!(
        "soak: minutes={minutes} rate={rate}/s achieved={achieved:.0}/s published={total} consumed_plain={} consumed_group={} \
         rss_start={:.1}MiB rss_end={:.1}MiB rss_max={max:.1}MiB anon_start={:.1}MiB anon_end={:.1}MiB errors={}",
        plain.load(Ordering::Relaxed),
        grouped.load(Ordering::Relaxed),
        first.0,
        last.0,
        first.1,
        last.1,
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        plain.load(Ordering::Relaxed),
        total,
        "the subscriber missed messages"
    );
    assert_eq!(
        grouped.load(Ordering::Relaxed),
        total,
        "the group member missed messages"
    );
    broker.stop();
    assert_no_panic(&broker);
}
