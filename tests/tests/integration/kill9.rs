//! The kill -9 loop (issue 6): producers publish with ack DURABLE and record every ack
//! in a ledger, tidelogd is killed with SIGKILL at a seeded moment and restarted, and
//! the ledger is read back: no acked message may be lost.
//!
//! `TIDELOG_KILL_CYCLES` (default 20) sets the number of cycles and `TIDELOG_KILL_SEED`
//! replays a run (the seed is printed).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    AckLevel, ConsumedMessage, Header, Message, PublishRequest, PublishStreamRequest, TopicConfig,
    publish_stream_response::Outcome,
};
use tidelog_tests::{TestBroker, create_topic, describe_topic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::{EVENT_TIMEOUT, Rng, always, assert_no_panic, env_u64, fetch_range};

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
                batch: None,
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
