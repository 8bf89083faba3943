//! Helpers shared by the reliability modules (`kill9`, `torn`, `bit_flips`,
//! `retention_race`, `bad_requests`, `garbage`, `stream_limits`, `soak`): a seeded
//! RNG, reads through the real gRPC port, the broker's RSS, segment files on disk,
//! self-checking values and a bystander client that proves others keep being served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, ConsumedMessage, CreateQueueRequest, FetchRequest, FetchResponse, FsyncPolicy,
    Message, PublishRequest, QueueConfig, StartPosition, SubscribeRequest, SubscribeResponse,
    fsync_policy::Policy,
};
use tidelog_tests::TestBroker;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Bound on every single wait for an answer or an event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// SplitMix64: small, seeded, good enough to pick sizes, bytes and moments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

pub fn always() -> Option<FsyncPolicy> {
    Some(FsyncPolicy {
        policy: Some(Policy::Always(Default::default())),
    })
}

pub fn never() -> Option<FsyncPolicy> {
    Some(FsyncPolicy {
        policy: Some(Policy::Never(Default::default())),
    })
}

/// Publishes one message a value to `topic`, durably (the broker picks partitions).
pub async fn publish_values(broker: &TestBroker, topic: &str, values: Vec<Vec<u8>>) {
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            messages: values
                .into_iter()
                .map(|v| Message {
                    value: v.into(),
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
}

/// Creates queue `name` on `topic`, from its earliest offset.
pub async fn create_queue(broker: &TestBroker, name: &str, topic: &str, config: QueueConfig) {
    QueuesClient::new(broker.channel().await)
        .create_queue(CreateQueueRequest {
            name: name.into(),
            topic: topic.into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            config: Some(config),
            ..Default::default()
        })
        .await
        .expect("create queue");
}

pub fn consumer(channel: &Channel) -> ConsumerClient<Channel> {
    ConsumerClient::new(channel.clone()).max_decoding_message_size(64 << 20)
}

pub async fn fetch(
    channel: &Channel,
    topic: &str,
    partition: u32,
    offset: u64,
    max_messages: u32,
) -> Result<FetchResponse, Status> {
    consumer(channel)
        .fetch(FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_messages,
            max_bytes: 8 << 20,
            max_wait_ms: 0,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every message of `partition` in `[from, end)`, through as many Fetches as needed.
pub async fn fetch_range(
    channel: &Channel,
    topic: &str,
    partition: u32,
    from: u64,
    end: u64,
) -> Result<Vec<ConsumedMessage>, Status> {
    let mut messages = Vec::new();
    let mut offset = from;
    while offset < end {
        let response = fetch(channel, topic, partition, offset, 10_000).await?;
        if response.next_offset == offset {
            panic!("{topic}/{partition}: fetch at {offset} made no progress (end {end})");
        }
        offset = response.next_offset;
        messages.extend(response.messages);
    }
    Ok(messages)
}

/// Opens a Subscribe stream (failing the test if the call is refused).
pub async fn subscribe(
    broker: &TestBroker,
    request: SubscribeRequest,
) -> Streaming<SubscribeResponse> {
    broker
        .consumer()
        .await
        .subscribe(request)
        .await
        .expect("Subscribe")
        .into_inner()
}

/// The next event on a stream within [`EVENT_TIMEOUT`]; `None` when it ended OK.
pub async fn next_event(
    stream: &mut Streaming<SubscribeResponse>,
) -> Result<Option<Event>, Status> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(Some(response.event.expect("an event is set"))),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
    }
}

/// A `/proc/<pid>/status` field in KiB (VmRSS, RssAnon, ...).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// (VmRSS, RssAnon) in MiB.
pub fn rss_mib(broker: &TestBroker) -> (f64, f64) {
    let pid = broker.pid().expect("tidelogd is running");
    (
        proc_status_kib(pid, "VmRSS") as f64 / 1024.0,
        proc_status_kib(pid, "RssAnon") as f64 / 1024.0,
    )
}

/// Asserts the broker never panicked: no "panicked" in anything it logged.
pub fn assert_no_panic(broker: &TestBroker) {
    let log = broker.log();
    assert!(
        !log.contains("panicked"),
        "tidelogd panicked; its log:\n{log}"
    );
}

/// The `.log` files of a partition, oldest first.
pub fn segment_logs(data: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let dir = data.join("topics").join(topic).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// (position, length) of every batch in a segment file, by its length fields.
pub fn batch_positions(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut batches = Vec::new();
    let mut position = 0;
    while position + 4 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position..position + 4].try_into().unwrap()) as usize;
        assert!(
            length >= 60 && position + length <= bytes.len(),
            "bad batch at {position}"
        );
        batches.push((position, length));
        position += length;
    }
    assert_eq!(position, bytes.len(), "the segment ends inside a batch");
    batches
}

/// A client on its own connection that publishes and fetches one message every
/// 20 ms while something else goes on, and records its worst latency. Proves other
/// clients keep being served.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Duration, Vec<String>)>,
}

impl Bystander {
    pub async fn start(broker: &TestBroker, topic: &str) -> Bystander {
        let channel = broker.channel().await;
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut publisher = PublisherClient::new(channel.clone());
            let (mut rounds, mut worst, mut errors) = (0u64, Duration::ZERO, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let value = Bytes::from(format!("bystander-{rounds}"));
                let published = publisher
                    .publish(PublishRequest {
                        topic: topic.clone(),
                        messages: vec![Message {
                            value: value.clone(),
                            partition: Some(0),
                            ..Default::default()
                        }],
                        ack: AckLevel::Durable as i32,
                    })
                    .await;
                match published {
                    Ok(response) => {
                        let offset = response.into_inner().acks[0].offset;
                        match fetch(&channel, &topic, 0, offset, 1).await {
                            Ok(f) if f.messages.first().map(|m| &m.value) == Some(&value) => {}
                            other => errors.push(format!("fetch at {offset}: {other:?}")),
                        }
                    }
                    Err(status) => errors.push(format!("publish: {status}")),
                }
                worst = worst.max(started.elapsed());
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rounds, worst, errors)
        });
        Bystander { stop, task }
    }

    /// Stops it and asserts it was served throughout, within `max_latency` a round.
    pub async fn finish(self, max_latency: Duration) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (rounds, worst, errors) = self.task.await.unwrap();
        assert!(errors.is_empty(), "the bystander client failed: {errors:?}");
        assert!(rounds > 0, "the bystander client never got a round done");
        assert!(
            worst <= max_latency,
            "the bystander client waited {worst:?} for a round (bound {max_latency:?})"
        );
        (rounds, worst)
    }
}

pub fn assert_same(got: &ConsumedMessage, sent: &Message, what: &str) {
    assert_eq!(got.key, sent.key, "{what}: key");
    assert_eq!(got.value, sent.value, "{what}: value");
    assert_eq!(got.headers, sent.headers, "{what}: headers");
    if let Some(timestamp) = sent.timestamp_ms {
        assert_eq!(got.timestamp_ms, timestamp, "{what}: timestamp");
    }
}

/// A self-checking value: 8 bytes of id, then bytes derived from the id.
pub fn checked_value(id: u64, len: usize) -> Bytes {
    let mut value = Vec::with_capacity(len.max(8));
    value.extend_from_slice(&id.to_le_bytes());
    value.extend_from_slice(&Rng::new(id).bytes(len.saturating_sub(8)));
    Bytes::from(value)
}

/// True when `value` is exactly what [`checked_value`] wrote for its id.
fn value_is_intact(value: &[u8]) -> bool {
    value.len() >= 8
        && checked_value(
            u64::from_le_bytes(value[..8].try_into().unwrap()),
            value.len(),
        ) == value
}

/// What a reader saw while segments were deleted under it.
#[derive(Debug, Default)]
pub struct ReaderReport {
    pub name: String,
    pub messages: u64,
    pub resets: u64,
    pub out_of_range: u64,
    /// Offsets skipped between two deliveries with no reset between them (expired
    /// messages, on a TTL topic).
    pub gaps: u64,
    /// Anything else: wrong bytes, offsets going back, unexpected errors.
    pub problems: Vec<String>,
}

impl ReaderReport {
    pub fn check(&mut self, last: &mut BTreeMap<u32, u64>, message: &ConsumedMessage) {
        self.messages += 1;
        if !value_is_intact(&message.value) {
            self.problems.push(format!(
                "{}/{}: damaged bytes",
                message.partition, message.offset
            ));
        }
        if let Some(&previous) = last.get(&message.partition) {
            if message.offset <= previous {
                self.problems.push(format!(
                    "{}/{} after {previous}: offsets went back",
                    message.partition, message.offset
                ));
            } else if message.offset > previous + 1 {
                self.gaps += 1;
            }
        }
        last.insert(message.partition, message.offset);
    }
}
