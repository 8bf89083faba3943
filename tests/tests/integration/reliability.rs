//! Reliability through the real broker (issue 6): a kill -9 loop that checks a ledger
//! of every durable ack, torn and bit-flipped segments, retention racing readers,
//! hostile input on the gRPC port, and a soak (ignored; `tests/soak.sh` runs it).
//!
//! Everything random is seeded and printed, so a failure can be replayed:
//! - `TIDELOG_KILL_CYCLES` (default 20) and `TIDELOG_KILL_SEED` for the kill loop;
//! - `TIDELOG_SOAK_MINUTES` (default 1) and `TIDELOG_SOAK_RATE` (messages per second,
//!   default 2000) for the soak.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::reset_offsets_request::{
    ExplicitOffsets, Scope, Spec, ToEarliest, TopicScope,
};
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, CommitOffsetsRequest, ConsumedMessage, CreateTopicRequest,
    DeleteGroupRequest, DeleteTopicRequest, DescribeGroupRequest, DescribeTopicRequest,
    FetchOffsetsRequest, FetchRequest, FetchResponse, FsyncPolicy, GroupMembership, Header,
    Message, PublishRequest, PublishStreamRequest, ResetOffsetsRequest, ResetPolicy, ResetReason,
    StartPosition, SubscribeRequest, SubscribeResponse, TopicConfig, TopicConfigUpdate,
    TopicPartitionOffset, fsync_policy::Policy, publish_stream_response::Outcome,
};
use tidelog_storage::batch::{self as storage_batch, EncodeOptions};
use tidelog_storage::{Compression, NewRecord};
use tidelog_tests::{TestBroker, create_topic, describe_topic, metric_value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Bound on every single wait for an answer or an event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// SplitMix64: small, seeded, good enough to pick sizes, bytes and moments.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

fn always() -> Option<FsyncPolicy> {
    Some(FsyncPolicy {
        policy: Some(Policy::Always(Default::default())),
    })
}

fn never() -> Option<FsyncPolicy> {
    Some(FsyncPolicy {
        policy: Some(Policy::Never(Default::default())),
    })
}

fn consumer(channel: &Channel) -> ConsumerClient<Channel> {
    ConsumerClient::new(channel.clone()).max_decoding_message_size(64 << 20)
}

/// Opens a Subscribe stream on `topic` from its end (no group); the future owns what
/// it needs, so it can be spawned.
fn subscribe_from_end(
    channel: &Channel,
    topic: &str,
) -> impl Future<Output = Result<Streaming<SubscribeResponse>, Status>> + Send + use<> {
    let mut client = consumer(channel);
    let topic = topic.to_string();
    async move {
        client
            .subscribe(SubscribeRequest {
                topic,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

async fn fetch(
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
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every message of `partition` in `[from, end)`, through as many Fetches as needed.
async fn fetch_range(
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

/// The next event on a stream within [`EVENT_TIMEOUT`]; `None` when it ended OK.
async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> Result<Option<Event>, Status> {
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
fn rss_mib(broker: &TestBroker) -> (f64, f64) {
    let pid = broker.pid().expect("tidelogd is running");
    (
        proc_status_kib(pid, "VmRSS") as f64 / 1024.0,
        proc_status_kib(pid, "RssAnon") as f64 / 1024.0,
    )
}

/// Asserts the broker never panicked: no "panicked" in anything it logged.
fn assert_no_panic(broker: &TestBroker) {
    let log = broker.log();
    assert!(
        !log.contains("panicked"),
        "tidelogd panicked; its log:\n{log}"
    );
}

/// The `.log` files of a partition, oldest first.
fn segment_logs(data: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
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
fn batch_positions(bytes: &[u8]) -> Vec<(usize, usize)> {
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
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Duration, Vec<String>)>,
}

impl Bystander {
    async fn start(broker: &TestBroker, topic: &str) -> Bystander {
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
    async fn finish(self, max_latency: Duration) -> (u64, Duration) {
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

// ---------------------------------------------------------------------------------
// 1. The kill -9 loop
// ---------------------------------------------------------------------------------

const LEDGER_TOPIC: &str = "ledger";
const LEDGER_PARTITIONS: u32 = 4;
/// Producers per cycle, each on its own connection; producer 0 pipelines on a
/// PublishStream, the others use unary Publish.
const LEDGER_PRODUCERS: u32 = 4;
/// Requests a stream producer keeps in flight.
const LEDGER_PIPELINE: usize = 8;

/// The key and value that producer `producer` sends as its message `seq`: derived from
/// the pair alone, so a reader regenerates every byte it should find.
fn ledger_payload(producer: u32, seq: u32) -> (Bytes, Bytes) {
    let mut rng = Rng::new((u64::from(producer) << 32 | u64::from(seq)) ^ 0x1ed6_e7c0_ffee_0000);
    let len = 16 + rng.below(185) as usize;
    let key = if rng.below(3) == 0 {
        Bytes::from(format!("key-{}", rng.below(17)))
    } else {
        Bytes::new()
    };
    (key, Bytes::from(rng.bytes(len)))
}

fn ledger_message(producer: u32, seq: u32, partition: Option<u32>) -> Message {
    let (key, value) = ledger_payload(producer, seq);
    Message {
        key,
        value,
        headers: vec![Header {
            key: "id".into(),
            value: Bytes::from(format!("{producer}:{seq}")),
        }],
        partition,
        ..Default::default()
    }
}

/// The (producer, seq) a stored message carries in its `id` header.
fn ledger_id(message: &ConsumedMessage) -> Option<(u32, u32)> {
    let header = message.headers.iter().find(|h| h.key == "id")?;
    let (producer, seq) = std::str::from_utf8(&header.value).ok()?.split_once(':')?;
    Some((producer.parse().ok()?, seq.parse().ok()?))
}

/// A request's worth of messages: 1 to 8, each with an explicit partition or none
/// (key hash or round robin).
fn ledger_request(
    rng: &mut Rng,
    producer: u32,
    seq: &mut u32,
) -> (PublishRequest, Vec<(u32, u32)>) {
    let count = 1 + rng.below(8) as usize;
    let mut messages = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = (rng.below(2) == 0).then(|| rng.below(u64::from(LEDGER_PARTITIONS)) as u32);
        messages.push(ledger_message(producer, *seq, partition));
        ids.push((producer, *seq));
        *seq += 1;
    }
    let request = PublishRequest {
        topic: LEDGER_TOPIC.into(),
        messages,
        ack: AckLevel::Durable as i32,
    };
    (request, ids)
}

/// Every durable ack the producers received.
#[derive(Debug, Default)]
struct Ledger {
    /// Per partition: offset -> (producer, seq).
    acked: Vec<BTreeMap<u64, (u32, u32)>>,
    /// Per partition: the end offset when the broker last came up. A new ack below it
    /// would hand out an offset a second time.
    floor: Vec<u64>,
    /// Offsets acked twice, or below the floor (must stay empty).
    reused: Vec<String>,
    /// Failures a producer saw while the broker was supposed to be up (must stay empty).
    errors: Vec<String>,
}

impl Ledger {
    fn record(&mut self, acks: &[tidelog_proto::v1::MessageAck], ids: &[(u32, u32)]) {
        if acks.len() != ids.len() {
            self.errors
                .push(format!("{} acks for {} messages", acks.len(), ids.len()));
            return;
        }
        for (ack, &id) in acks.iter().zip(ids) {
            let Some(partition) = self.acked.get_mut(ack.partition as usize) else {
                self.errors
                    .push(format!("ack for unknown partition {}", ack.partition));
                continue;
            };
            if ack.offset < self.floor[ack.partition as usize] {
                self.reused.push(format!(
                    "{}/{} acked for {id:?} is below the end {} the broker restarted with",
                    ack.partition, ack.offset, self.floor[ack.partition as usize]
                ));
            }
            if let Some(old) = partition.insert(ack.offset, id) {
                self.reused.push(format!(
                    "{}/{} acked for {old:?} and again for {id:?}",
                    ack.partition, ack.offset
                ));
            }
        }
    }
}

/// Publishes with ack DURABLE until the broker dies, recording every ack.
async fn unary_producer(
    channel: Channel,
    producer: u32,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    killed: Arc<AtomicBool>,
) {
    let mut client = PublisherClient::new(channel);
    let mut rng = Rng::new(seed);
    let mut seq = 0;
    loop {
        let (request, ids) = ledger_request(&mut rng, producer, &mut seq);
        match client.publish(request).await {
            Ok(response) => ledger
                .lock()
                .unwrap()
                .record(&response.into_inner().acks, &ids),
            Err(status) => {
                if !killed.load(Ordering::SeqCst) {
                    ledger
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("producer {producer}: {status}"));
                }
                return;
            }
        }
    }
}

/// Like [`unary_producer`] on a PublishStream with [`LEDGER_PIPELINE`] requests in
/// flight: answers come in request order.
async fn stream_producer(
    channel: Channel,
    producer: u32,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    killed: Arc<AtomicBool>,
) {
    let fail = |what: String| {
        if !killed.load(Ordering::SeqCst) {
            ledger
                .lock()
                .unwrap()
                .errors
                .push(format!("stream producer {producer}: {what}"));
        }
    };
    let mut client = PublisherClient::new(channel);
    let (tx, rx) = mpsc::channel(LEDGER_PIPELINE * 2);
    let mut responses = match client.publish_stream(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return fail(status.to_string()),
    };
    let mut rng = Rng::new(seed);
    let (mut seq, mut request_id) = (0, 0u64);
    let mut pending: VecDeque<(u64, Vec<(u32, u32)>)> = VecDeque::new();
    loop {
        while pending.len() < LEDGER_PIPELINE {
            let (request, ids) = ledger_request(&mut rng, producer, &mut seq);
            let item = PublishStreamRequest {
                request_id,
                request: Some(request),
            };
            if tx.send(item).await.is_err() {
                break;
            }
            pending.push_back((request_id, ids));
            request_id += 1;
        }
        match responses.message().await {
            Ok(Some(response)) => {
                let Some((expected, ids)) = pending.pop_front() else {
                    return fail("an answer to no request".into());
                };
                if response.request_id != expected {
                    return fail(format!(
                        "answer for request {} where {expected} was next",
                        response.request_id
                    ));
                }
                match response.outcome {
                    Some(Outcome::Response(acks)) => {
                        ledger.lock().unwrap().record(&acks.acks, &ids)
                    }
                    other => return fail(format!("request {expected}: {other:?}")),
                }
            }
            Ok(None) => return fail("the stream ended".into()),
            Err(status) => return fail(status.to_string()),
        }
    }
}

/// What one verification of the whole ledger found.
#[derive(Debug, Default)]
struct LedgerCheck {
    acks_checked: u64,
    acked_but_lost: u64,
    messages_read: u64,
    problems: Vec<String>,
}

/// Reads every partition from `from` to `ends` and checks it against the ledger:
/// offsets contiguous, every message byte for byte what its producer sent, every acked
/// offset from `from` on present and holding the message that was acked for it. With
/// `from` all 0 it checks the whole ledger.
async fn verify_ledger(
    channel: &Channel,
    ledger: &Ledger,
    from: &[u64],
    ends: &[u64],
) -> LedgerCheck {
    let mut check = LedgerCheck::default();
    for (partition, acked) in ledger.acked.iter().enumerate() {
        let (start, end) = (from[partition], ends[partition]);
        if end < start {
            check.problems.push(format!(
                "partition {partition} ends at {end}, below {start} which an earlier cycle verified"
            ));
            continue;
        }
        let messages = fetch_range(channel, LEDGER_TOPIC, partition as u32, start, end)
            .await
            .unwrap_or_else(|s| panic!("reading partition {partition}: {s}"));
        check.messages_read += messages.len() as u64;
        for (index, message) in messages.iter().enumerate() {
            let expected = start + index as u64;
            if message.offset != expected {
                check.problems.push(format!(
                    "{partition}/{}: expected offset {expected} (offsets must be contiguous)",
                    message.offset
                ));
                break;
            }
            let intact = ledger_id(message).is_some_and(|(producer, seq)| {
                ledger_payload(producer, seq) == (message.key.clone(), message.value.clone())
            });
            if !intact {
                check.problems.push(format!(
                    "{partition}/{} holds bytes no producer sent",
                    message.offset
                ));
            }
        }
        for (&offset, &id) in acked.range(start..) {
            check.acks_checked += 1;
            let found = messages.get((offset - start) as usize);
            let ok = found.is_some_and(|m| {
                m.offset == offset
                    && ledger_id(m) == Some(id)
                    && ledger_payload(id.0, id.1) == (m.key.clone(), m.value.clone())
            });
            if !ok {
                check.acked_but_lost += 1;
                if check.problems.len() < 20 {
                    check.problems.push(format!(
                        "{partition}/{offset} acked durable for {id:?} but the broker has {:?} (end {end})",
                        found.map(|m| (m.offset, ledger_id(m)))
                    ));
                }
            }
        }
    }
    check
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Producers publish with ack DURABLE on an fsync=always topic, recording every ack;
/// tidelogd is killed with SIGKILL at a random moment, restarted, and the ledger is
/// read back: what was written since the last restart every cycle, everything every
/// `FULL_CHECK_EVERY` cycles and after the last (re-reading it all every cycle made
/// 1,000 cycles take hours). `TIDELOG_KILL_CYCLES=N` runs N cycles (default 20),
/// `TIDELOG_KILL_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_loop_never_loses_a_durable_ack() {
    const FULL_CHECK_EVERY: u64 = 10;
    let cycles = env_u64("TIDELOG_KILL_CYCLES", 20);
    let seed = env_u64("TIDELOG_KILL_SEED", 0x7de1_0c4a_11ed);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut broker = TestBroker::start();
    create_topic(
        &broker.channel().await,
        LEDGER_TOPIC,
        LEDGER_PARTITIONS,
        TopicConfig {
            // Small segments: kills also land around segment rolls.
            segment_bytes: 64 * 1024,
            fsync: always(),
            ..Default::default()
        },
    )
    .await;
    let ledger = Arc::new(Mutex::new(Ledger {
        acked: vec![BTreeMap::new(); LEDGER_PARTITIONS as usize],
        floor: vec![0; LEDGER_PARTITIONS as usize],
        ..Default::default()
    }));
    let mut recoveries = Vec::with_capacity(cycles as usize);
    let (mut acks_checked, mut acked_but_lost) = (0u64, 0u64);
    for cycle in 0..cycles {
        let killed = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for index in 0..LEDGER_PRODUCERS {
            let producer = cycle as u32 * LEDGER_PRODUCERS + index;
            let args = (
                broker.channel().await,
                producer,
                rng.next_u64(),
                ledger.clone(),
                killed.clone(),
            );
            producers.push(if index == 0 {
                tokio::spawn(stream_producer(args.0, args.1, args.2, args.3, args.4))
            } else {
                tokio::spawn(unary_producer(args.0, args.1, args.2, args.3, args.4))
            });
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
        killed.store(true, Ordering::SeqCst);
        broker.kill9();
        for producer in producers {
            tokio::time::timeout(EVENT_TIMEOUT, producer)
                .await
                .expect("a producer hung after the broker died")
                .unwrap();
        }

        // Recovery time: process start to the first answered request.
        let restart_began = Instant::now();
        tokio::task::block_in_place(|| broker.restart());
        let channel = broker.channel().await;
        let description = describe_topic(&channel, LEDGER_TOPIC).await;
        recoveries.push(restart_began.elapsed());
        let ends: Vec<u64> = description
            .partitions
            .iter()
            .map(|p| p.end_offset)
            .collect();

        let snapshot = std::mem::take(&mut *ledger.lock().unwrap());
        let full = (cycle + 1) % FULL_CHECK_EVERY == 0 || cycle + 1 == cycles;
        let from = if full {
            vec![0; ends.len()]
        } else {
            snapshot.floor.clone()
        };
        let check = verify_ledger(&channel, &snapshot, &from, &ends).await;
        acks_checked += check.acks_checked;
        acked_but_lost += check.acked_but_lost;
        assert!(
            snapshot.errors.is_empty() && snapshot.reused.is_empty() && check.problems.is_empty(),
            "cycle {cycle} (seed {seed:#x}): errors {:?}, reused offsets {:?}, problems {:?}",
            snapshot.errors,
            snapshot.reused,
            check.problems
        );
        // New publishes must continue from the recovered end.
        *ledger.lock().unwrap() = Ledger {
            floor: ends,
            ..snapshot
        };
        if cycles > 20 && (cycle + 1) % 50 == 0 {
            println!(
                "kill -9 loop: {} cycles, {acks_checked} acks checked, {acked_but_lost} lost, {:?}",
                cycle + 1,
                started.elapsed()
            );
        }
    }
    broker.stop();
    assert_no_panic(&broker);

    recoveries.sort();
    let acked: usize = ledger.lock().unwrap().acked.iter().map(BTreeMap::len).sum();
    println!(
        "kill -9 loop: cycles={cycles} acked_messages={acked} acks_checked={acks_checked} \
         acked_but_lost={acked_but_lost} recovery_p50={:?} recovery_p99={:?} recovery_max={:?} \
         seed={seed:#x} elapsed={:?}",
        percentile(&recoveries, 0.50),
        percentile(&recoveries, 0.99),
        recoveries.last().copied().unwrap_or_default(),
        started.elapsed()
    );
    assert_eq!(acked_but_lost, 0, "acked-but-lost must be 0");
    assert!(acked > 0, "no publish was ever acked");
}

// ---------------------------------------------------------------------------------
// 2. Corruption through the broker
// ---------------------------------------------------------------------------------

const TORN_TOPIC: &str = "torn";
const TORN_BATCHES: usize = 3;
const TORN_PER_BATCH: usize = 2;
const TORN_TS: i64 = 1_700_000_000_000;

/// Message `index` of batch `batch` of `partition`: the same sizes and timestamps in
/// every partition, so every partition's log has the same layout.
fn torn_message(partition: u32, batch: usize, index: usize) -> Message {
    Message {
        key: Bytes::from(format!("k{batch}{index}")),
        value: Bytes::from(format!("p{partition:05}-b{batch}-m{index}-").repeat(3)),
        headers: vec![Header {
            key: "h".into(),
            value: Bytes::from_static(b"\x00\xff"),
        }],
        timestamp_ms: Some(TORN_TS + (batch * TORN_PER_BATCH + index) as i64),
        partition: Some(partition),
        ..Default::default()
    }
}

fn new_record(message: &Message) -> NewRecord {
    NewRecord {
        key: (!message.key.is_empty()).then(|| message.key.clone()),
        value: message.value.clone(),
        headers: message
            .headers
            .iter()
            .map(|h| tidelog_storage::Header {
                key: h.key.clone(),
                value: h.value.clone(),
            })
            .collect(),
        timestamp_ms: message.timestamp_ms,
        ttl_ms: message.ttl_ms,
    }
}

fn assert_same(got: &ConsumedMessage, sent: &Message, what: &str) {
    assert_eq!(got.key, sent.key, "{what}: key");
    assert_eq!(got.value, sent.value, "{what}: value");
    assert_eq!(got.headers, sent.headers, "{what}: headers");
    if let Some(timestamp) = sent.timestamp_ms {
        assert_eq!(got.timestamp_ms, timestamp, "{what}: timestamp");
    }
}

/// A crash tears the last batch of a partition at every possible byte (one partition
/// per cut, so one restart covers them all): the broker comes back serving exactly
/// the intact batches before it, byte for byte, and new messages continue from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_batch_at_every_byte_serves_exactly_the_intact_prefix() {
    // The last batch's length, from the engine's own encoder.
    let last: Vec<NewRecord> = (0..TORN_PER_BATCH)
        .map(|i| new_record(&torn_message(0, TORN_BATCHES - 1, i)))
        .collect();
    let options = EncodeOptions {
        now_ms: TORN_TS,
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
    };
    let last_len = storage_batch::encode_batch(&last, &options)
        .unwrap()
        .bytes
        .len();
    // Partition p keeps the first p bytes of its last batch: p = 0 cuts it whole,
    // p = last_len - 1 leaves all but its last byte; header bytes included.
    let partitions = last_len as u32;

    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    // fsync=never and ack WRITTEN: nothing is flushed, so the checkpoint stays where
    // the topic was created and the whole log is unsynced tail, which a crash may tear.
    create_topic(
        &channel,
        TORN_TOPIC,
        partitions,
        TopicConfig {
            fsync: never(),
            ..Default::default()
        },
    )
    .await;
    let mut publisher = PublisherClient::new(channel.clone());
    for batch in 0..TORN_BATCHES {
        let messages = (0..partitions)
            .flat_map(|p| (0..TORN_PER_BATCH).map(move |i| torn_message(p, batch, i)))
            .collect();
        publisher
            .publish(PublishRequest {
                topic: TORN_TOPIC.into(),
                messages,
                ack: AckLevel::Written as i32,
            })
            .await
            .unwrap();
    }
    broker.kill9();

    let data = broker.data_dir();
    for p in 0..partitions {
        let logs = segment_logs(&data, TORN_TOPIC, p);
        assert_eq!(logs.len(), 1, "partition {p}: {logs:?}");
        let batches = batch_positions(&std::fs::read(&logs[0]).unwrap());
        assert_eq!(batches.len(), TORN_BATCHES, "partition {p}");
        let (start, length) = batches[TORN_BATCHES - 1];
        assert_eq!(length, last_len, "partition {p}: the last batch's length");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&logs[0])
            .unwrap()
            .set_len((start + p as usize) as u64)
            .unwrap();
    }

    tokio::task::block_in_place(|| broker.restart());
    let channel = broker.channel().await;
    let prefix = ((TORN_BATCHES - 1) * TORN_PER_BATCH) as u64;
    let description = describe_topic(&channel, TORN_TOPIC).await;
    for p in 0..partitions {
        let what = format!("partition {p} (torn {p} bytes into its last batch)");
        assert_eq!(
            description.partitions[p as usize].end_offset, prefix,
            "{what}"
        );
        let messages = fetch_range(&channel, TORN_TOPIC, p, 0, prefix)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s}"));
        assert_eq!(messages.len() as u64, prefix, "{what}");
        for (offset, got) in messages.iter().enumerate() {
            assert_eq!(got.offset, offset as u64, "{what}");
            let sent = torn_message(p, offset / TORN_PER_BATCH, offset % TORN_PER_BATCH);
            assert_same(got, &sent, &format!("{what} offset {offset}"));
        }
        let beyond = fetch(&channel, TORN_TOPIC, p, prefix, 100).await.unwrap();
        assert!(beyond.messages.is_empty(), "{what}: {beyond:?}");
        if p > 0 {
            // FORMAT.md: the cut bytes are kept as <segment>.log.torn-at-<position>.
            let dir = data.join("topics").join(TORN_TOPIC).join(p.to_string());
            let kept = std::fs::read_dir(&dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".torn-at-")
            });
            assert!(kept, "{what}: no .torn-at- file in {}", dir.display());
        }
    }

    // New messages continue from the end of the intact prefix, and read back.
    let messages: Vec<Message> = (0..partitions)
        .map(|p| Message {
            value: Bytes::from(format!("after-{p}")),
            partition: Some(p),
            ..Default::default()
        })
        .collect();
    let acks = PublisherClient::new(channel.clone())
        .publish(PublishRequest {
            topic: TORN_TOPIC.into(),
            messages: messages.clone(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .acks;
    for (ack, sent) in acks.iter().zip(&messages) {
        assert_eq!(ack.offset, prefix, "partition {}", ack.partition);
        let got = fetch(&channel, TORN_TOPIC, ack.partition, prefix, 10)
            .await
            .unwrap();
        assert_eq!(got.messages.len(), 1);
        assert_same(&got.messages[0], sent, "after the restart");
    }
    broker.stop();
    assert_no_panic(&broker);
}

const FLIP_TOPIC: &str = "flip";
const FLIP_ROUNDS: u64 = 40;
/// The batch (= offset: one message per batch) whose bit is flipped in segment 0.
const FLIP_OFFSET: u64 = 5;

/// Which bit each damaged partition gets flipped, by byte position in its batch
/// (`usize::MAX` = the batch's last byte): every header field, those outside the CRC
/// too, and the records section.
const FLIPS: &[(usize, u8, &str)] = &[
    (0, 0x01, "batch_length"),
    (5, 0x01, "base_offset"),
    (12, 0x01, "crc"),
    (16, 0x01, "version"),
    (17, 0x01, "attributes (codec)"),
    (20, 0x01, "last_offset_delta"),
    (24, 0x02, "record_count"),
    (30, 0x10, "first_timestamp_ms"),
    (38, 0x01, "max_timestamp_ms"),
    (51, 0x80, "max_expiry_ms sign bit"),
    (52, 0x01, "records_length"),
    (56, 0x01, "uncompressed_length"),
    (60, 0x01, "first record's length"),
    (61, 0x02, "first record's attributes"),
    (100, 0x20, "inside the value"),
    (usize::MAX, 0x01, "the batch's last byte"),
];

fn flip_message(partition: u32, round: u64) -> Message {
    let mut rng = Rng::new(u64::from(partition) << 32 | round);
    Message {
        key: Bytes::from(format!("k{round}")),
        value: Bytes::from(rng.bytes(300)),
        partition: Some(partition),
        ..Default::default()
    }
}

/// Asserts a read of `partition` served only intact messages below `damaged` (or
/// failed with DATA_LOSS): the damaged record is never returned.
fn assert_never_damaged(
    result: Result<Vec<ConsumedMessage>, Status>,
    partition: u32,
    damaged: u64,
    what: &str,
) {
    match result {
        Ok(messages) => {
            for got in &messages {
                assert_ne!(got.offset, damaged, "{what}: the damaged record was served");
                assert_same(
                    got,
                    &flip_message(partition, got.offset),
                    &format!("{what}: offset {}", got.offset),
                );
            }
        }
        Err(status) => assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}"),
    }
}

/// A flipped bit in a batch the broker has already made durable (a sealed segment,
/// or the active one before its checkpoint): reads of that batch fail with DATA_LOSS,
/// the damaged record is never served, and the rest of the partition and the other
/// partitions keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_before_the_tail_is_data_loss_and_nothing_else_breaks() {
    // FLIPS in segment 0, then one flip in the active segment, then an intact control.
    let active_flip = FLIPS.len() as u32;
    let control = active_flip + 1;
    let partitions = control + 1;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    create_topic(
        &channel,
        FLIP_TOPIC,
        partitions,
        TopicConfig {
            segment_bytes: 4096,
            fsync: always(),
            ..Default::default()
        },
    )
    .await;
    let mut publisher = PublisherClient::new(channel.clone());
    for round in 0..FLIP_ROUNDS {
        publisher
            .publish(PublishRequest {
                topic: FLIP_TOPIC.into(),
                messages: (0..partitions).map(|p| flip_message(p, round)).collect(),
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    // A clean stop: everything is checkpointed, so every batch is trusted at restart.
    broker.stop();

    let data = broker.data_dir();
    // Per partition: (damaged offset, first offset of the next segment or None).
    let mut damage = Vec::new();
    for p in 0..=active_flip {
        let logs = segment_logs(&data, FLIP_TOPIC, p);
        assert!(logs.len() >= 3, "partition {p} has {} segments", logs.len());
        let segment_base =
            |path: &Path| -> u64 { path.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
        let (log, damaged, (at, bit)) = if p < active_flip {
            let (at, bit, _) = FLIPS[p as usize];
            (&logs[0], FLIP_OFFSET, (at, bit))
        } else {
            // The second-to-last batch of the active segment.
            let last = logs.last().unwrap();
            (last, FLIP_ROUNDS - 2, (100, 0x04))
        };
        let base = segment_base(log);
        let mut bytes = std::fs::read(log).unwrap();
        let (start, length) = batch_positions(&bytes)[(damaged - base) as usize];
        let at = if at == usize::MAX { length - 1 } else { at };
        bytes[start + at] ^= bit;
        std::fs::write(log, &bytes).unwrap();
        let next_segment = logs.iter().map(|l| segment_base(l)).find(|&b| b > damaged);
        damage.push((damaged, next_segment));
    }

    tokio::task::block_in_place(|| broker.restart());
    let channel = broker.channel().await;
    for p in 0..=active_flip {
        let (damaged, next_segment) = damage[p as usize];
        let what = if p < active_flip {
            format!("partition {p}, {} flipped", FLIPS[p as usize].2)
        } else {
            format!("partition {p}, value flipped in the active segment")
        };
        // The damaged batch itself: DATA_LOSS.
        let status = fetch(&channel, FLIP_TOPIC, p, damaged, 1)
            .await
            .expect_err(&format!("{what}: reading the damaged batch must fail"));
        assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}");
        // The segment's messages before it: intact.
        let first = if p < active_flip { 0 } else { damaged - 3 };
        let before = fetch(&channel, FLIP_TOPIC, p, first, (damaged - first) as u32)
            .await
            .unwrap_or_else(|s| panic!("{what}: reading before the damage: {s}"));
        assert_eq!(before.messages.len() as u64, damaged - first, "{what}");
        assert_never_damaged(Ok(before.messages), p, damaged, &what);
        // A large read that runs into it returns everything before it and stops there
        // (issue 12: one damaged batch must not hide the intact messages before it).
        let across = fetch(&channel, FLIP_TOPIC, p, first, 10_000)
            .await
            .unwrap_or_else(|s| panic!("{what}: a read across the damage: {s}"));
        assert_eq!(
            (
                across.messages.first().map(|m| m.offset),
                across.messages.len() as u64
            ),
            (Some(first), damaged - first),
            "{what}: a read across the damage returns what precedes it"
        );
        assert_eq!(across.next_offset, damaged, "{what}: and stops at it");
        assert_never_damaged(
            Ok(across.messages),
            p,
            damaged,
            &format!("{what}, a read across it"),
        );
        // Reads right after it.
        let result = fetch(&channel, FLIP_TOPIC, p, damaged + 1, 10_000)
            .await
            .map(|r| r.messages);
        assert_never_damaged(result, p, damaged, &format!("{what}, a read after it"));
        // A subscriber gets what precedes it, then DATA_LOSS.
        let mut stream = consumer(&channel)
            .subscribe(SubscribeRequest {
                topic: FLIP_TOPIC.into(),
                partitions: vec![p],
                start: Some(StartPosition {
                    position: Some(Position::Offset(first)),
                }),
                reset_policy: ResetPolicy::Error as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut received = Vec::new();
        let ended = loop {
            match next_event(&mut stream).await {
                Ok(Some(Event::Batch(batch))) => received.extend(batch.messages),
                Ok(other) => panic!("{what}: subscriber got {other:?}"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), Code::DataLoss, "{what}: {ended:?}");
        assert_eq!(
            received.len() as u64,
            damaged - first,
            "{what}: the subscriber gets every message before the damage"
        );
        assert_never_damaged(Ok(received), p, damaged, &format!("{what}, subscriber"));
        // The segments after it serve everything, byte for byte.
        if let Some(next) = next_segment {
            let rest = fetch_range(&channel, FLIP_TOPIC, p, next, FLIP_ROUNDS)
                .await
                .unwrap_or_else(|s| panic!("{what}: reading from {next}: {s}"));
            assert_eq!(rest.len() as u64, FLIP_ROUNDS - next, "{what}");
            assert_never_damaged(Ok(rest), p, damaged, &what);
        }
    }
    // The untouched partition serves everything.
    let all = fetch_range(&channel, FLIP_TOPIC, control, 0, FLIP_ROUNDS)
        .await
        .unwrap();
    assert_eq!(all.len() as u64, FLIP_ROUNDS);
    assert_never_damaged(Ok(all), control, u64::MAX, "control partition");
    // Every partition still takes new messages, at the end.
    let acks = PublisherClient::new(channel.clone())
        .publish(PublishRequest {
            topic: FLIP_TOPIC.into(),
            messages: (0..partitions)
                .map(|p| flip_message(p, FLIP_ROUNDS))
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .acks;
    assert!(acks.iter().all(|a| a.offset == FLIP_ROUNDS), "{acks:?}");
    broker.stop();
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------
// 3. Retention deleting segments under readers
// ---------------------------------------------------------------------------------

/// A self-checking value: 8 bytes of id, then bytes derived from the id.
fn checked_value(id: u64, len: usize) -> Bytes {
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
struct ReaderReport {
    name: String,
    messages: u64,
    resets: u64,
    out_of_range: u64,
    /// Offsets skipped between two deliveries with no reset between them (expired
    /// messages, on a TTL topic).
    gaps: u64,
    /// Anything else: wrong bytes, offsets going back, unexpected errors.
    problems: Vec<String>,
}

impl ReaderReport {
    fn check(&mut self, last: &mut BTreeMap<u32, u64>, message: &ConsumedMessage) {
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

// ---------------------------------------------------------------------------------
// 4. Bad input through the real gRPC port
// ---------------------------------------------------------------------------------

/// A codec that sends and receives raw bytes: lets a test put any bytes where a
/// protobuf request belongs.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A unary call to `path` whose request message is `body`, whatever it holds.
async fn raw_unary(channel: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A call to a streaming method with raw request messages; the status it ends with.
async fn raw_streaming(channel: &Channel, path: &'static str, bodies: Vec<Bytes>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let call = grpc.streaming(
        tonic::Request::new(tokio_stream::iter(bodies)),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    );
    let mut stream = match tokio::time::timeout(EVENT_TIMEOUT, call)
        .await
        .expect("an answer")
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Status::ok(""),
            Ok(Err(status)) => return status,
            Err(_) => panic!("{path}: no end within {EVENT_TIMEOUT:?}"),
        }
    }
}

/// An HTTP/2 gRPC request to `path` whose body is exactly `body` (length prefixes and
/// flags included, however wrong), sent on `channel`. Returns the grpc-status.
async fn raw_http2(channel: &Channel, path: &str, body: Vec<u8>) -> Code {
    use http_body_util::BodyExt;
    use tonic::codegen::{Service, http};
    let mut service = channel.clone();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .unwrap();
    std::future::poll_fn(|cx| Service::poll_ready(&mut service, cx))
        .await
        .expect("channel ready");
    let response = tokio::time::timeout(EVENT_TIMEOUT, Service::call(&mut service, request))
        .await
        .expect("an answer")
        .expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, http::StatusCode::OK, "{path}: {parts:?}");
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .map(Code::from_i32)
    };
    if let Some(code) = code(&parts.headers) {
        return code; // a trailers-only answer
    }
    let collected = tokio::time::timeout(EVENT_TIMEOUT, body.collect())
        .await
        .expect("the body ends")
        .expect("a body");
    collected
        .trailers()
        .and_then(code)
        .unwrap_or_else(|| panic!("{path}: no grpc-status"))
}

/// A gRPC frame: flag, big-endian length, payload.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Asserts `result` failed with `code`.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// The first event of a Subscribe (or the status that ended it).
async fn first_event(channel: &Channel, request: SubscribeRequest) -> Result<Event, Status> {
    let mut stream = consumer(channel).subscribe(request).await?.into_inner();
    next_event(&mut stream)
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without an event"))
}

fn bad_config(change: impl FnOnce(&mut TopicConfig)) -> TopicConfig {
    let mut config = TopicConfig::default();
    change(&mut config);
    config
}

/// Requests that break every rule of the API, with the status code the proto
/// documents for each: the broker answers them all, never panics, stays within a
/// memory bound, and a client beside them keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_documented_codes() {
    let mut broker = TestBroker::start_with(&["--max-request-bytes", "1048576"]);
    let channel = broker.channel().await;
    create_topic(
        &channel,
        "bad",
        2,
        TopicConfig {
            max_message_bytes: 1024,
            ..Default::default()
        },
    )
    .await;
    create_topic(&channel, "side", 1, TopicConfig::default()).await;
    let bystander = Bystander::start(&broker, "side").await;
    let rss_before = rss_mib(&broker);
    let mut admin = AdminClient::new(channel.clone());
    let mut publisher = PublisherClient::new(channel.clone());
    let mut groups = GroupsClient::new(channel.clone());
    let create = |name: &str, partitions: u32, config: Option<TopicConfig>| CreateTopicRequest {
        name: name.into(),
        partitions,
        config,
    };

    // Topic names and partition counts.
    let long = "x".repeat(250);
    for name in [
        "",
        &long,
        "a/b",
        "../escape",
        "a b",
        "ü",
        "nul\0",
        ".",
        "..",
        "__internal",
    ] {
        expect_code(
            &format!("create {name:?}"),
            admin.create_topic(create(name, 1, None)).await,
            Code::InvalidArgument,
        );
    }
    expect_code(
        "10001 partitions",
        admin.create_topic(create("many", 10_001, None)).await,
        Code::InvalidArgument,
    );
    // Config values.
    let configs = [
        ("segment_bytes 1", bad_config(|c| c.segment_bytes = 1)),
        (
            "segment_bytes 2 GiB",
            bad_config(|c| c.segment_bytes = 2 << 30),
        ),
        (
            "max_message_bytes 17 MiB",
            bad_config(|c| c.max_message_bytes = 17 << 20),
        ),
        ("retention_ms 0", bad_config(|c| c.retention_ms = Some(0))),
        (
            "retention_bytes 0",
            bad_config(|c| c.retention_bytes = Some(0)),
        ),
        (
            "default_ttl_ms 0",
            bad_config(|c| c.default_ttl_ms = Some(0)),
        ),
        ("segment_ms 0", bad_config(|c| c.segment_ms = Some(0))),
        (
            "fsync interval 0",
            bad_config(|c| {
                c.fsync = Some(FsyncPolicy {
                    policy: Some(Policy::IntervalMs(0)),
                })
            }),
        ),
        (
            "fsync with no policy",
            bad_config(|c| c.fsync = Some(FsyncPolicy { policy: None })),
        ),
        ("compression 99", bad_config(|c| c.compression = 99)),
        ("compression -1", bad_config(|c| c.compression = -1)),
    ];
    for (what, config) in configs {
        expect_code(
            what,
            admin.create_topic(create("cfg", 1, Some(config))).await,
            Code::InvalidArgument,
        );
    }
    let alter = |name: &str, update: TopicConfigUpdate| AlterTopicConfigRequest {
        name: name.into(),
        update: Some(update),
    };
    expect_code(
        "alter an unknown topic",
        admin
            .alter_topic_config(alter("nope", TopicConfigUpdate::default()))
            .await,
        Code::NotFound,
    );
    for (what, update) in [
        (
            "alter compression 99",
            TopicConfigUpdate {
                compression: Some(99),
                ..Default::default()
            },
        ),
        (
            "alter segment_bytes 1",
            TopicConfigUpdate {
                segment_bytes: Some(1),
                ..Default::default()
            },
        ),
        (
            "alter max_message_bytes u64::MAX",
            TopicConfigUpdate {
                max_message_bytes: Some(u64::MAX),
                ..Default::default()
            },
        ),
        (
            "alter fsync interval 0",
            TopicConfigUpdate {
                fsync: Some(FsyncPolicy {
                    policy: Some(Policy::IntervalMs(0)),
                }),
                ..Default::default()
            },
        ),
    ] {
        expect_code(
            what,
            admin.alter_topic_config(alter("bad", update)).await,
            Code::InvalidArgument,
        );
    }
    for name in ["", "../bad", "bad/../bad", "nope"] {
        expect_code(
            &format!("describe {name:?}"),
            admin
                .describe_topic(DescribeTopicRequest { name: name.into() })
                .await,
            Code::NotFound,
        );
        expect_code(
            &format!("delete {name:?}"),
            admin
                .delete_topic(DeleteTopicRequest { name: name.into() })
                .await,
            Code::NotFound,
        );
    }
    // Nothing above touched the real topic.
    assert_eq!(describe_topic(&channel, "bad").await.partitions.len(), 2);

    // Publish.
    let publish = |topic: &str, messages: Vec<Message>, ack: i32| PublishRequest {
        topic: topic.into(),
        messages,
        ack,
    };
    let one = |message: Message| vec![message];
    let durable = AckLevel::Durable as i32;
    for topic in ["nope", "", "../bad"] {
        expect_code(
            &format!("publish to {topic:?}"),
            publisher
                .publish(publish(topic, one(Message::default()), durable))
                .await,
            Code::NotFound,
        );
    }
    for ack in [99, -1, i32::MAX] {
        expect_code(
            &format!("ack {ack}"),
            publisher
                .publish(publish("bad", one(Message::default()), ack))
                .await,
            Code::InvalidArgument,
        );
    }
    let bad_messages = [
        (
            "partition u32::MAX",
            Message {
                partition: Some(u32::MAX),
                ..Default::default()
            },
        ),
        (
            "timestamp -1",
            Message {
                timestamp_ms: Some(-1),
                ..Default::default()
            },
        ),
        (
            "timestamp i64::MIN",
            Message {
                timestamp_ms: Some(i64::MIN),
                ..Default::default()
            },
        ),
        (
            "1025 headers",
            Message {
                headers: vec![Header::default(); 1025],
                ..Default::default()
            },
        ),
        (
            "over max_message_bytes",
            Message {
                value: vec![7; 2000].into(),
                ..Default::default()
            },
        ),
    ];
    for (what, message) in bad_messages {
        expect_code(
            what,
            publisher
                .publish(publish("bad", one(message), durable))
                .await,
            Code::InvalidArgument,
        );
    }
    expect_code(
        "no messages",
        publisher.publish(publish("bad", Vec::new(), durable)).await,
        Code::InvalidArgument,
    );
    expect_code(
        "a request over --max-request-bytes",
        publisher
            .publish(publish(
                "bad",
                (0..3)
                    .map(|_| Message {
                        value: vec![1; 900_000].into(),
                        ..Default::default()
                    })
                    .collect(),
                durable,
            ))
            .await,
        Code::ResourceExhausted,
    );
    // Extreme but legal values are stored and read back as sent.
    let extreme = Message {
        key: Bytes::from_static(b"extreme"),
        value: Bytes::from_static(b"v"),
        timestamp_ms: Some(i64::MAX),
        ttl_ms: Some(u64::MAX),
        partition: Some(1),
        ..Default::default()
    };
    let ack = publisher
        .publish(publish("bad", one(extreme.clone()), durable))
        .await
        .unwrap()
        .into_inner()
        .acks[0];
    let got = fetch(&channel, "bad", 1, ack.offset, 1).await.unwrap();
    assert_same(
        &got.messages[0],
        &extreme,
        "i64::MAX timestamp, u64::MAX ttl",
    );

    // Fetch.
    let fetch_request = |topic: &str, partition: u32, offset: u64| FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        ..Default::default()
    };
    let mut reader = consumer(&channel);
    expect_code(
        "fetch an unknown topic",
        reader.fetch(fetch_request("nope", 0, 0)).await,
        Code::NotFound,
    );
    expect_code(
        "fetch partition u32::MAX",
        reader.fetch(fetch_request("bad", u32::MAX, 0)).await,
        Code::InvalidArgument,
    );
    expect_code(
        "fetch offset u64::MAX",
        reader.fetch(fetch_request("bad", 0, u64::MAX)).await,
        Code::OutOfRange,
    );
    let all = reader
        .fetch(FetchRequest {
            max_messages: u32::MAX,
            max_bytes: u32::MAX,
            ..fetch_request("bad", 0, 0)
        })
        .await
        .expect("huge limits are capped, not refused")
        .into_inner();
    // A long poll of u64::MAX ms still answers before the call's deadline.
    let mut request = tonic::Request::new(FetchRequest {
        max_wait_ms: u64::MAX,
        ..fetch_request("bad", 0, all.end_offset)
    });
    request.set_timeout(Duration::from_millis(300));
    let asked = Instant::now();
    let answer = reader
        .fetch(request)
        .await
        .expect("an empty answer in time");
    assert!(answer.into_inner().messages.is_empty());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // Subscribe.
    let subscribe = |topic: &str| SubscribeRequest {
        topic: topic.into(),
        ..Default::default()
    };
    let group = |group_id: String, client_id: String| {
        Some(GroupMembership {
            group_id,
            client_id,
            ..Default::default()
        })
    };
    let subscribe_cases = [
        (
            "subscribe to an unknown topic",
            subscribe("nope"),
            Code::NotFound,
        ),
        (
            "reset_policy 99",
            SubscribeRequest {
                reset_policy: 99,
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "partition u32::MAX",
            SubscribeRequest {
                partitions: vec![u32::MAX],
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "duplicate partitions",
            SubscribeRequest {
                partitions: vec![0, 0],
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "start u64::MAX with policy ERROR",
            SubscribeRequest {
                start: Some(StartPosition {
                    position: Some(Position::Offset(u64::MAX)),
                }),
                reset_policy: ResetPolicy::Error as i32,
                ..subscribe("bad")
            },
            Code::OutOfRange,
        ),
        (
            "a group with partitions",
            SubscribeRequest {
                partitions: vec![0],
                group: group("g".into(), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "an empty group id",
            SubscribeRequest {
                group: group(String::new(), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a 256-byte group id",
            SubscribeRequest {
                group: group("g".repeat(256), String::new()),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a 256-byte client id",
            SubscribeRequest {
                group: group("g".into(), "c".repeat(256)),
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
        (
            "a group on an unknown topic",
            SubscribeRequest {
                group: group("g".into(), String::new()),
                ..subscribe("nope")
            },
            Code::NotFound,
        ),
        (
            "a group with reset_policy 99",
            SubscribeRequest {
                group: group("g".into(), String::new()),
                reset_policy: 99,
                ..subscribe("bad")
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in subscribe_cases {
        expect_code(what, first_event(&channel, request).await, code);
    }
    // A start beyond the end with policy EARLIEST is a PositionReset, not an error.
    let event = first_event(
        &channel,
        SubscribeRequest {
            partitions: vec![0],
            start: Some(StartPosition {
                position: Some(Position::Offset(u64::MAX)),
            }),
            ..subscribe("bad")
        },
    )
    .await
    .unwrap();
    match event {
        Event::PositionReset(reset) => {
            assert_eq!(reset.reason, ResetReason::AboveEndOffset as i32);
            assert_eq!(reset.from_offset, Some(u64::MAX));
        }
        other => panic!("expected a PositionReset, got {other:?}"),
    }
    // A timestamp before the epoch starts at the beginning.
    let event = first_event(
        &channel,
        SubscribeRequest {
            partitions: vec![1],
            start: Some(StartPosition {
                position: Some(Position::TimestampMs(i64::MIN)),
            }),
            ..subscribe("bad")
        },
    )
    .await
    .unwrap();
    match event {
        Event::Batch(batch) => assert_eq!(batch.messages[0].offset, 0),
        other => panic!("expected messages, got {other:?}"),
    }

    // Groups.
    expect_code(
        "describe an unknown group",
        groups
            .describe_group(DescribeGroupRequest {
                group_id: "nope".into(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        "delete an unknown group",
        groups
            .delete_group(DeleteGroupRequest {
                group_id: "nope".into(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        "describe a 256-byte group id",
        groups
            .describe_group(DescribeGroupRequest {
                group_id: "g".repeat(256),
            })
            .await,
        Code::InvalidArgument,
    );
    let offsets = groups
        .fetch_offsets(FetchOffsetsRequest {
            group_id: "nope".into(),
            topic: None,
        })
        .await
        .expect("an unknown group has no offsets")
        .into_inner();
    assert!(offsets.offsets.is_empty());
    let entry = |topic: &str, partition: u32, offset: u64, metadata: String| TopicPartitionOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata,
    };
    let commit = |group_id: &str, offsets: Vec<TopicPartitionOffset>| CommitOffsetsRequest {
        group_id: group_id.into(),
        offsets,
        ..Default::default()
    };
    let commit_cases = [
        (
            "commit for an empty group id",
            commit("", vec![entry("bad", 0, 0, String::new())]),
            Code::InvalidArgument,
        ),
        (
            "commit nothing",
            commit("g", Vec::new()),
            Code::InvalidArgument,
        ),
        (
            "commit 4097 bytes of metadata",
            commit("g", vec![entry("bad", 0, 0, "m".repeat(4097))]),
            Code::InvalidArgument,
        ),
        (
            "commit partition u32::MAX",
            commit("g", vec![entry("bad", u32::MAX, 0, String::new())]),
            Code::InvalidArgument,
        ),
        (
            "commit offset u64::MAX",
            commit("g", vec![entry("bad", 0, u64::MAX, String::new())]),
            Code::OutOfRange,
        ),
        (
            "commit to an unknown topic",
            commit("g", vec![entry("nope", 0, 0, String::new())]),
            Code::NotFound,
        ),
        (
            "commit with a member id and no generation",
            CommitOffsetsRequest {
                member_id: "m".into(),
                ..commit("g", vec![entry("bad", 0, 0, String::new())])
            },
            Code::InvalidArgument,
        ),
        (
            "commit as an unknown member",
            CommitOffsetsRequest {
                member_id: "m".into(),
                generation: Some(1),
                ..commit("g", vec![entry("bad", 0, 0, String::new())])
            },
            Code::FailedPrecondition,
        ),
    ];
    for (what, request, code) in commit_cases {
        expect_code(what, groups.commit_offsets(request).await, code);
    }
    let scope = |topic: &str, partitions: Vec<u32>| {
        Some(Scope::Topic(TopicScope {
            topic: topic.into(),
            partitions,
        }))
    };
    let reset = |scope, spec| ResetOffsetsRequest {
        group_id: "g".into(),
        scope,
        spec,
        execute: false,
    };
    let reset_cases = [
        (
            "reset without spec",
            reset(scope("bad", vec![]), None),
            Code::InvalidArgument,
        ),
        (
            "reset without scope",
            reset(None, Some(Spec::ToEarliest(ToEarliest {}))),
            Code::InvalidArgument,
        ),
        (
            "reset explicit with a scope",
            reset(
                scope("bad", vec![]),
                Some(Spec::Explicit(ExplicitOffsets {
                    offsets: vec![entry("bad", 0, 0, String::new())],
                })),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset explicit partition u32::MAX",
            reset(
                None,
                Some(Spec::Explicit(ExplicitOffsets {
                    offsets: vec![entry("bad", u32::MAX, 0, String::new())],
                })),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset partition u32::MAX",
            reset(
                scope("bad", vec![u32::MAX]),
                Some(Spec::ToEarliest(ToEarliest {})),
            ),
            Code::InvalidArgument,
        ),
        (
            "reset an unknown topic",
            reset(scope("nope", vec![]), Some(Spec::ToEarliest(ToEarliest {}))),
            Code::NotFound,
        ),
    ];
    for (what, request, code) in reset_cases {
        expect_code(what, groups.reset_offsets(request).await, code);
    }
    // Extreme targets are clamped to the log, never an error or a wrap-around.
    let end = describe_topic(&channel, "bad").await.partitions[0].end_offset;
    for spec in [
        Spec::ToOffset(u64::MAX),
        Spec::ShiftBy(i64::MIN),
        Spec::ShiftBy(i64::MAX),
        Spec::ByDurationMs(u64::MAX),
        Spec::ToDatetimeMs(i64::MIN),
        Spec::ToDatetimeMs(i64::MAX),
    ] {
        let changes = groups
            .reset_offsets(reset(scope("bad", vec![0]), Some(spec.clone())))
            .await
            .unwrap_or_else(|s| panic!("{spec:?}: {s}"))
            .into_inner()
            .changes;
        for change in changes {
            assert!(
                change.new_offset <= end,
                "{spec:?}: {change:?} past the end {end}"
            );
        }
    }

    let rss_after = rss_mib(&broker);
    bystander.finish(Duration::from_secs(5)).await;
    println!("bad requests: RSS {rss_before:?} MiB -> {rss_after:?} MiB (VmRSS, RssAnon)");
    assert!(
        rss_after.0 - rss_before.0 < 256.0,
        "RSS grew from {rss_before:?} to {rss_after:?} MiB"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// Bytes that are not a valid protobuf request, sent where every request type
/// belongs, and gRPC frames that break the framing itself: each is refused with a
/// status (INTERNAL for undecodable bytes, as gRPC prescribes; RESOURCE_EXHAUSTED
/// for a declared length over the limit), nothing panics, and the broker keeps
/// serving on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_broken_frames_are_refused() {
    let mut broker = TestBroker::start_with(&["--max-request-bytes", "1048576"]);
    let channel = broker.channel().await;
    create_topic(&channel, "raw", 1, TopicConfig::default()).await;
    let bystander = Bystander::start(&broker, "raw").await;
    let rss_before = rss_mib(&broker);

    let mut rng = Rng::new(0x6a_4ba6e);
    let mut garbage: Vec<(String, Bytes)> = vec![
        ("a truncated varint".into(), Bytes::from_static(b"\x08")),
        ("an overlong varint".into(), Bytes::from_static(&[0xff; 11])),
        (
            "a string field with invalid UTF-8".into(),
            Bytes::from_static(b"\x0a\x02\xff\xfe"),
        ),
        (
            "a length far past the end".into(),
            Bytes::from_static(b"\x0a\xff\xff\xff\xff\x0f"),
        ),
        ("field number 0".into(), Bytes::from_static(b"\x00\x01")),
        ("wire type 7".into(), Bytes::from_static(b"\x0f\x01")),
        (
            "an unterminated group".into(),
            Bytes::from_static(b"\x0b\x08\x01"),
        ),
        (
            "100,000 nested groups".into(),
            Bytes::from(vec![0x0b; 100_000]),
        ),
    ];
    for len in [1, 7, 64, 4096, 200_000] {
        garbage.push((format!("{len} random bytes"), Bytes::from(rng.bytes(len))));
    }
    let unary = [
        "/tidelog.v1.Admin/CreateTopic",
        "/tidelog.v1.Admin/AlterTopicConfig",
        "/tidelog.v1.Admin/DescribeTopic",
        "/tidelog.v1.Publisher/Publish",
        "/tidelog.v1.Consumer/Fetch",
        "/tidelog.v1.Groups/CommitOffsets",
        "/tidelog.v1.Groups/ResetOffsets",
        "/tidelog.v1.Groups/FetchOffsets",
    ];
    let mut refused = 0;
    for path in unary {
        for (what, bytes) in &garbage {
            // Random bytes can happen to decode; then the request is merely invalid.
            if let Err(status) = raw_unary(&channel, path, bytes.clone()).await {
                assert_ne!(status.code(), Code::Unknown, "{path} {what}: {status:?}");
                refused += 1;
            }
        }
        // The nested groups never decode.
        let status = raw_unary(&channel, path, garbage[7].1.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{path}: {status:?}");
    }
    for path in [
        "/tidelog.v1.Consumer/Subscribe",
        "/tidelog.v1.Publisher/PublishStream",
    ] {
        for (what, bytes) in &garbage[..8] {
            let status = raw_streaming(&channel, path, vec![bytes.clone()]).await;
            assert_eq!(status.code(), Code::Internal, "{path} {what}: {status:?}");
        }
    }
    // A PublishStream with a good request, then garbage: the good one is answered,
    // then the stream ends INTERNAL.
    use prost::Message as _;
    let good = PublishStreamRequest {
        request_id: 1,
        request: Some(PublishRequest {
            topic: "raw".into(),
            messages: vec![Message {
                value: Bytes::from_static(b"ok"),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        }),
    };
    let status = raw_streaming(
        &channel,
        "/tidelog.v1.Publisher/PublishStream",
        vec![Bytes::from(good.encode_to_vec()), garbage[0].1.clone()],
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // Broken framing, below the codec.
    let publish = "/tidelog.v1.Publisher/Publish";
    let frames = [
        (
            "compressed flag without grpc-encoding",
            frame(1, 5, b"hello"),
            Code::Internal,
        ),
        ("flag byte 7", frame(7, 0, b""), Code::Internal),
        (
            "a declared length of 4 GiB",
            frame(0, u32::MAX, b"abc"),
            Code::ResourceExhausted,
        ),
        (
            "a declared length past the end of the body",
            frame(0, 100, b"0123456789"),
            Code::Internal,
        ),
        ("a 3-byte body", vec![0, 0, 0], Code::Internal),
        ("an empty body", Vec::new(), Code::Internal),
    ];
    for (what, body, code) in frames {
        assert_eq!(raw_http2(&channel, publish, body).await, code, "{what}");
    }
    // An unknown method and service are UNIMPLEMENTED.
    assert_eq!(
        raw_http2(&channel, "/tidelog.v1.Publisher/Nope", frame(0, 0, b"")).await,
        Code::Unimplemented
    );
    assert_eq!(
        raw_http2(&channel, "/nope.Nope/Nope", frame(0, 0, b"")).await,
        Code::Unimplemented
    );

    // The same connection still works.
    describe_topic(&channel, "raw").await;
    let rss_after = rss_mib(&broker);
    bystander.finish(Duration::from_secs(5)).await;
    println!(
        "garbage: {refused} undecodable unary requests refused; RSS {rss_before:?} -> {rss_after:?} MiB"
    );
    assert!(refused >= unary.len() * 8, "{refused}");
    assert!(
        rss_after.0 - rss_before.0 < 256.0,
        "{rss_before:?} -> {rss_after:?}"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// Waits (bounded) until the broker reports `count` open streams of `kind`.
async fn wait_open_streams(broker: &TestBroker, kind: &str, expect: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let name = format!("tidelog_open_streams{{kind=\"{kind}\"}}");
    loop {
        let open = metric_value(&broker.metrics_text(), &name).unwrap_or(0.0);
        if expect(open) {
            return open;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {open}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 2,000 Subscribe streams on one HTTP/2 connection, and subscribers that never read
/// a topic holding far more than their queues: memory stays bounded, every stream is
/// served, the streams go away when their clients do, and a client beside them keeps
/// being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_streams_and_stalled_subscribers_stay_bounded() {
    const STREAMS: usize = 2000;
    const STALLED: usize = 16;
    const BIG_MESSAGES: usize = 128;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    for topic in ["fanout", "big", "side"] {
        create_topic(&channel, topic, 1, TopicConfig::default()).await;
    }
    // 32 MiB that the stalled subscribers will not read.
    let mut publisher = PublisherClient::new(channel.clone());
    for chunk in 0..BIG_MESSAGES / 8 {
        let messages = (0..8)
            .map(|i| Message {
                value: checked_value((chunk * 8 + i) as u64, 256 * 1024),
                ..Default::default()
            })
            .collect();
        publisher
            .publish(PublishRequest {
                topic: "big".into(),
                messages,
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    let bystander = Bystander::start(&broker, "side").await;
    let rss_before = rss_mib(&broker);

    // Thousands of streams on one connection.
    let shared = broker.channel().await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        opening.spawn(subscribe_from_end(&shared, "fanout"));
    }
    let mut streams = Vec::with_capacity(STREAMS);
    while let Some(opened) = opening.join_next().await {
        streams.push(opened.unwrap().expect("a subscribe among thousands"));
    }
    wait_open_streams(&broker, "subscribe", |open| open >= STREAMS as f64).await;
    let rss_streams = rss_mib(&broker);
    // Every one of them is served.
    let sent = Bytes::from_static(b"to all of them");
    publisher
        .publish(PublishRequest {
            topic: "fanout".into(),
            messages: vec![Message {
                value: sent.clone(),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap();
    for (index, stream) in streams.iter_mut().enumerate() {
        match next_event(stream).await {
            Ok(Some(Event::Batch(batch))) => assert_eq!(batch.messages[0].value, sent),
            other => panic!("stream {index}: {other:?}"),
        }
    }

    // Subscribers that never read, each on its own connection.
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let stream = consumer(&broker.channel().await)
            .subscribe(SubscribeRequest {
                topic: "big".into(),
                start: Some(StartPosition {
                    position: Some(Position::Earliest(Earliest {})),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stalled.push(stream);
    }
    // Their readers fill their bounded queues and flow-control windows, then wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher
        .publish(PublishRequest {
            topic: "big".into(),
            messages: vec![Message {
                value: checked_value(u64::MAX, 1024),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publishing is not held up by stalled subscribers");
    let rss_stalled = rss_mib(&broker);

    // Clients going away close their streams on the broker too.
    drop(streams);
    drop(stalled);
    drop(shared);
    wait_open_streams(&broker, "subscribe", |open| open == 0.0).await;
    let rss_after = rss_mib(&broker);
    let (rounds, worst) = bystander.finish(Duration::from_secs(5)).await;
    println!(
        "streams: RSS (VmRSS, RssAnon) MiB before {rss_before:?}, with {STREAMS} streams on one connection {rss_streams:?}, \
         with {STALLED} stalled subscribers over 32 MiB {rss_stalled:?}, after {rss_after:?}; \
         bystander {rounds} rounds, worst {worst:?}"
    );
    // Generous bounds: a few KiB per stream, a few MiB per stalled subscriber.
    assert!(
        rss_streams.1 - rss_before.1 < 256.0,
        "{STREAMS} streams took {rss_before:?} -> {rss_streams:?} MiB"
    );
    assert!(
        rss_stalled.1 - rss_streams.1 < (STALLED * 8) as f64 + 64.0,
        "{STALLED} stalled subscribers took {rss_streams:?} -> {rss_stalled:?} MiB"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// HTTP/2 frames written by hand: 9-byte header (length, type, flags, stream id).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// "MadeYouReset" (CVE-2025-8671): a client that makes the server reset stream after
/// stream (here malformed requests) costs the server work without counting against
/// the open-stream cap. tonic turns h2's limit on such
/// resets off; the broker turns it back on, so the connection is closed with GOAWAY
/// ENHANCE_YOUR_CALM while other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_provoking_endless_stream_resets_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FRAME_HEADERS: u8 = 0x1;
    const FRAME_GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    const STREAMS: u32 = 4000;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    create_topic(&channel, "calm", 1, TopicConfig::default()).await;

    let mut socket = tokio::net::TcpStream::connect(broker.grpc_addr())
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS, none changed
    // HPACK: :method POST, :scheme http, :path / (static table), then `connection: x`
    // as a literal, a header HTTP/2 forbids: a malformed request, reset by the server.
    let mut request = vec![0x83, 0x86, 0x84, 0x00, 10];
    request.extend_from_slice(b"connection");
    request.extend_from_slice(&[1, b'x']);
    for index in 0..STREAMS {
        out.extend(h2_frame(
            FRAME_HEADERS,
            END_HEADERS | END_STREAM,
            2 * index + 1,
            &request,
        ));
    }
    // The server may stop reading once it has had enough: a failed write is fine.
    let (mut reader, mut writer) = socket.split();
    let write = async {
        let _ = writer.write_all(&out).await;
    };
    let read = async {
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let (_, received) = tokio::time::timeout(EVENT_TIMEOUT, async { tokio::join!(write, read) })
        .await
        .expect("the server must close a connection that keeps provoking resets");
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= received.len() {
        let length = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]);
        let end = at + 9 + length as usize;
        if received[at + 3] == FRAME_GOAWAY && end <= received.len() {
            goaway = Some(u32::from_be_bytes(
                received[at + 13..at + 17].try_into().unwrap(),
            ));
        }
        at = end;
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));

    // Everyone else is still served.
    let description = describe_topic(&broker.channel().await, "calm").await;
    assert_eq!(description.partitions.len(), 1);
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// A connection may have at most `--max-streams-per-connection` calls open (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS): the client queues the next call until one ends,
/// and other connections are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped_and_the_next_call_waits_its_turn() {
    const CAP: usize = 8;
    let mut broker = TestBroker::start_with(&["--max-streams-per-connection", "8"]);
    let channel = broker.channel().await;
    create_topic(&channel, "capped", 1, TopicConfig::default()).await;
    let subscribe = |channel: &Channel| subscribe_from_end(channel, "capped");
    let shared = broker.channel().await;
    let mut streams = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        streams.push(
            subscribe(&shared)
                .await
                .expect("a subscribe within the cap"),
        );
    }
    let queued = tokio::spawn(subscribe(&shared));
    // Another connection is served at once, past the one that is full.
    let _other = subscribe(&channel)
        .await
        .expect("a subscribe on another connection");
    wait_open_streams(&broker, "subscribe", |open| open == (CAP + 1) as f64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !queued.is_finished(),
        "a call past the cap must wait for a free stream"
    );
    assert_eq!(
        wait_open_streams(&broker, "subscribe", |_| true).await,
        (CAP + 1) as f64
    );
    // One ends: the queued call gets its stream.
    drop(streams.pop());
    let opened = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued call opens once a stream is free")
        .unwrap();
    assert!(opened.is_ok(), "{opened:?}");
    wait_open_streams(&broker, "subscribe", |open| open == (CAP + 1) as f64).await;
    broker.stop();
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------
// 5. Soak (ignored; tests/soak.sh runs it)
// ---------------------------------------------------------------------------------

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
