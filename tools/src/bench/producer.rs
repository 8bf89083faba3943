//! A producer: publishes batches of bench payloads, by unary `Publish` (one request
//! at a time, as Iggy's producers do), on a `PublishStream` with a bounded number
//! of requests in flight, or (`--batch-wire`) through tidelog-client's [`Producer`]
//! as one record batch per request ([`Producer::send_batch`]), and measures publish ->
//! ack per request.
//!
//! The per-message forms (unary `Publish`, `PublishStream` with `PublishRequest`s)
//! measure the broker's per-message API, which tidelog-client deliberately does not
//! offer (its producer always sends record batches): they stay on the generated
//! `PublisherClient`. The batch form is what a service using the library sends, so it
//! goes through the library: its window, its encoder call, its ack handling.
//!
//! Each request goes to one partition (round robin per request, starting at the
//! producer's id; with `--pin` always that one), so the broker appends it as one
//! record batch. The messages of a
//! request are written into one buffer and sent as `Bytes` slices of it; once the
//! broker acked the request and the transport dropped it, the buffer is reused.
//! With a target rate, requests are due at fixed times and latency counts from the
//! due time, so a stalled broker cannot hide its stall (no coordinated omission).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidelog_client::{
    Ack, BatchDeliveryFuture, Client, Conn, Delivered, IdMode, Producer, ProducerConfig,
};
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    AckLevel, Header as ProtoHeader, Message, MessageAck, PublishRequest, PublishStreamRequest,
    publish_stream_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use tidelog_storage::{Header as RecordHeader, NewRecord};

use super::Clock;
use super::payload::{Header, Pool, fill_body, seal};
use super::stats::{ActorResult, Role};
use super::validate::Errors;

/// How much a producer sends.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Messages(u64),
    Until(Instant),
}

/// Everything one producer needs.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub id: u32,
    pub run: u32,
    pub topic: String,
    pub partitions: u32,
    pub message_size: usize,
    pub batch: usize,
    pub ack: AckLevel,
    pub stream: bool,
    /// Every request goes to partition `id % partitions` (`--pin`).
    pub pin: bool,
    /// Each message carries a unique message id ([`message_id`]).
    pub ids: bool,
    /// Each message's `delay_ms` (queues hold it until then).
    pub delay_ms: Option<u64>,
    pub in_flight: usize,
    pub budget: Budget,
    /// Time between request starts, with a target rate.
    pub interval: Option<Duration>,
    pub pool: Arc<Pool>,
    pub clock: Clock,
    /// Give each message the header [`PCT_HEADER`] (its sequence mod 100), for filters.
    pub tag: bool,
    /// Send each request as one record batch through tidelog-client's producer
    /// (`Producer::send_batch`: PublishBatch on its stream), compressed so.
    pub batch_wire: Option<tidelog_storage::Compression>,
}

/// The header a bench message carries for `--filter`: its sequence number mod 100.
pub const PCT_HEADER: &str = "bench-pct";

/// What a producer did.
#[derive(Debug)]
pub struct ProducerOutcome {
    pub result: ActorResult,
    /// Messages acked per partition (index = partition).
    pub sent: Vec<u64>,
    pub errors: Errors,
}

/// Builds requests: sequences per partition, bodies from the pool, reused buffers.
struct Batcher {
    plan: ProducerPlan,
    next_partition: u32,
    sequences: Vec<u64>,
    number: u64,
    free: Vec<BytesMut>,
    /// Messages still to send (message budget), or `None` (time budget).
    remaining: Option<u64>,
}

impl Batcher {
    fn new(plan: ProducerPlan) -> Batcher {
        let remaining = match plan.budget {
            Budget::Messages(n) => Some(n),
            Budget::Until(_) => None,
        };
        Batcher {
            next_partition: plan.id % plan.partitions,
            sequences: vec![0; plan.partitions as usize],
            number: u64::from(plan.id) << 40,
            free: Vec::new(),
            remaining,
            plan,
        }
    }

    /// Messages in the next request, or `None` when the budget is spent.
    fn next_count(&self, now: Instant) -> Option<usize> {
        match (self.remaining, self.plan.budget) {
            (Some(0), _) => None,
            (Some(n), _) => Some((n as usize).min(self.plan.batch)),
            (None, Budget::Until(deadline)) if now < deadline => Some(self.plan.batch),
            _ => None,
        }
    }

    /// The next request: its partition, messages and the buffer they point into.
    fn build(&mut self, count: usize, sent_ns: u64) -> (u32, Vec<Message>, Bytes) {
        let size = self.plan.message_size;
        let Filled {
            partition,
            first_sequence,
            buffer,
            ids,
        } = self.fill(count, sent_ns);
        let messages = (0..count)
            .map(|i| Message {
                key: Bytes::new(),
                value: buffer.slice(i * size..(i + 1) * size),
                headers: if self.plan.tag {
                    vec![ProtoHeader {
                        key: PCT_HEADER.into(),
                        value: pct(first_sequence + i as u64),
                    }]
                } else {
                    Vec::new()
                },
                timestamp_ms: None,
                ttl_ms: None,
                partition: Some(partition),
                id: if ids.is_empty() {
                    Bytes::new()
                } else {
                    ids.slice(i * ID_BYTES..(i + 1) * ID_BYTES)
                },
                delay_ms: self.plan.delay_ms,
                ..Message::default()
            })
            .collect();
        (partition, messages, buffer)
    }

    /// The next request as records for `Producer::send_batch` (which takes the topic,
    /// partition and ack level of the batch: the records carry none), written into
    /// `records` in place: one vector serves every request and only the fields that
    /// change are written (a whole record is about 190 bytes; moving one into a
    /// vector per message cost more than encoding it). `release` lets go of the
    /// buffer's slices once the batch is encoded.
    fn build_records(
        &mut self,
        count: usize,
        sent_ns: u64,
        records: &mut Vec<NewRecord>,
    ) -> (u32, Bytes) {
        let size = self.plan.message_size;
        let Filled {
            partition,
            first_sequence,
            buffer,
            ids,
        } = self.fill(count, sent_ns);
        records.resize_with(count, NewRecord::default);
        for (i, record) in records.iter_mut().enumerate() {
            record.value = buffer.slice(i * size..(i + 1) * size);
            if !ids.is_empty() {
                record.id = Some(ids.slice(i * ID_BYTES..(i + 1) * ID_BYTES));
            }
            if self.plan.tag {
                record.headers.clear();
                record.headers.push(RecordHeader {
                    key: PCT_HEADER.into(),
                    value: pct(first_sequence + i as u64),
                });
            }
            record.delay_ms = self.plan.delay_ms;
        }
        (partition, buffer)
    }

    /// Fills the next request's bodies (and ids, with `--ids`) and moves the partition
    /// and sequences on.
    fn fill(&mut self, count: usize, sent_ns: u64) -> Filled {
        let size = self.plan.message_size;
        let partition = self.next_partition;
        if !self.plan.pin {
            self.next_partition = (partition + 1) % self.plan.partitions;
        }
        let mut buffer = self.free.pop().unwrap_or_default();
        buffer.clear();
        buffer.resize(count * size, 0);
        let first_sequence = self.sequences[partition as usize];
        // Bodies first, then the headers and checksums (see `fill_body`).
        for (i, out) in buffer.chunks_exact_mut(size).enumerate() {
            fill_body(out, &self.plan.pool, self.number + i as u64);
        }
        for (i, out) in buffer.chunks_exact_mut(size).enumerate() {
            let header = Header {
                run: self.plan.run,
                producer: self.plan.id,
                partition,
                sequence: first_sequence + i as u64,
                sent_ns,
            };
            seal(out, &header);
        }
        self.number += count as u64;
        self.sequences[partition as usize] += count as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= count as u64;
        }
        let buffer = buffer.freeze();
        let ids = if self.plan.ids {
            let mut ids = BytesMut::with_capacity(count * ID_BYTES);
            for i in 0..count {
                let sequence = first_sequence + i as u64;
                ids.extend_from_slice(&message_id(
                    self.plan.run,
                    self.plan.id,
                    partition,
                    sequence,
                ));
            }
            ids.freeze()
        } else {
            Bytes::new()
        };
        Filled {
            partition,
            first_sequence,
            buffer,
            ids,
        }
    }

    /// Takes a buffer back once nothing else points into it.
    fn reclaim(&mut self, buffer: Bytes) {
        if let Ok(buffer) = buffer.try_into_mut()
            && self.free.len() < 4
        {
            self.free.push(buffer);
        }
    }
}

/// One request's bodies, written into one buffer.
struct Filled {
    partition: u32,
    first_sequence: u64,
    /// `count` bodies of `message_size` bytes, back to back.
    buffer: Bytes,
    /// `count` ids of [`ID_BYTES`] back to back, or empty without `--ids`.
    ids: Bytes,
}

/// The value of [`PCT_HEADER`] for a message's sequence.
fn pct(sequence: u64) -> Bytes {
    Bytes::from((sequence % 100).to_string())
}

const ID_BYTES: usize = 16;

/// The message id of `--ids`: run, producer, partition and sequence, so ids never repeat
/// within a run and runs do not share ids (producers <= 1,024 and partitions <= 10,000
/// fit in 16 bits).
fn message_id(run: u32, producer: u32, partition: u32, sequence: u64) -> [u8; ID_BYTES] {
    let mut id = [0; ID_BYTES];
    id[..4].copy_from_slice(&run.to_be_bytes());
    id[4..6].copy_from_slice(&(producer as u16).to_be_bytes());
    id[6..8].copy_from_slice(&(partition as u16).to_be_bytes());
    id[8..].copy_from_slice(&sequence.to_be_bytes());
    id
}

/// Checks the broker's acks of a request: one per message, in the partition it
/// was sent to, at consecutive offsets.
fn check_acks(
    acks: &[MessageAck],
    ack: AckLevel,
    partition: u32,
    count: usize,
    producer: u32,
    errors: &mut Errors,
) {
    if ack == AckLevel::None {
        return;
    }
    if acks.len() != count {
        let got = acks.len();
        errors.push(|| format!("producer {producer}: {count} messages published, {got} acks"));
        return;
    }
    if let Some(i) = acks.iter().position(|a| a.duplicate) {
        errors.push(|| {
            format!("producer {producer}: ack {i} of a request to partition {partition} says duplicate, but every message id of a run is new")
        });
        return;
    }
    let base = acks[0].offset;
    for (i, a) in acks.iter().enumerate() {
        if a.partition != partition || a.offset != base + i as u64 {
            let (p, o) = (a.partition, a.offset);
            errors.push(|| {
                format!(
                    "producer {producer}: ack {i} of a request to partition {partition} says partition {p} offset {o} (expected offset {})",
                    base + i as u64
                )
            });
            return;
        }
    }
}

/// Lets go of what `records` hold of a request's buffers (encoded by now), so a
/// buffer can be reused once its batch is acked; the records stay for the next request.
fn release(records: &mut [NewRecord]) {
    for record in records {
        record.value = Bytes::new();
        record.id = None;
        record.headers.clear();
    }
}

/// One request on its way: what its ack is matched with.
struct InFlight {
    request_id: u64,
    due: Instant,
    partition: u32,
    count: usize,
    buffer: Bytes,
}

/// Runs one producer on its own connection. `progress` counts acked messages.
pub async fn run(plan: ProducerPlan, client: Client, progress: Arc<AtomicU64>) -> ProducerOutcome {
    let mut outcome = ProducerOutcome {
        result: ActorResult::new(Role::Producer, plan.id),
        sent: vec![0; plan.partitions as usize],
        errors: Errors::default(),
    };
    if let Some(compression) = plan.batch_wire {
        run_batches(plan, compression, &client, &progress, &mut outcome).await;
    } else if plan.stream {
        run_stream(plan, client.publisher(), &progress, &mut outcome).await;
    } else {
        run_unary(plan, client.publisher(), &progress, &mut outcome).await;
    }
    outcome
}

/// The library's ack level for the bench's.
fn client_ack(ack: AckLevel) -> Ack {
    match ack {
        AckLevel::None => Ack::None,
        AckLevel::Written => Ack::Written,
        AckLevel::Durable | AckLevel::Unspecified => Ack::Durable,
    }
}

/// A `send_batch` waiting for its ack.
struct Pending {
    due: Instant,
    partition: u32,
    count: usize,
    buffer: Bytes,
    delivery: BatchDeliveryFuture,
}

/// `--batch-wire`: every request is one `Producer::send_batch` (one record batch, one
/// ack) to the next partition in turn, with at most `--in-flight` unanswered; the
/// producer's window is as wide, so a request waits in the library only for the
/// broker. Latency counts from the due time to the batch's ack.
async fn run_batches(
    plan: ProducerPlan,
    compression: tidelog_storage::Compression,
    client: &Client,
    progress: &AtomicU64,
    outcome: &mut ProducerOutcome,
) {
    let in_flight_max = plan.in_flight.max(1);
    let config = ProducerConfig {
        compression,
        in_flight: in_flight_max,
        // Only `--ids` gives messages ids (the bench's own, checked on the way back);
        // the library's would make every run a dedup run.
        ids: IdMode::Never,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let ack = client_ack(plan.ack);
    let started = Instant::now();
    let mut batcher = Batcher::new(plan.clone());
    let mut in_flight: VecDeque<Pending> = VecDeque::with_capacity(in_flight_max);
    let mut records: Vec<NewRecord> = Vec::new();
    let mut request = 0u32;
    loop {
        // Send what is due while fewer than --in-flight wait.
        let mut next_due = None;
        let mut spent = false;
        while in_flight.len() < in_flight_max {
            let now = Instant::now();
            let Some(count) = batcher.next_count(now) else {
                spent = true;
                break;
            };
            let due = match plan.interval {
                Some(interval) => {
                    let due = started + interval * request;
                    if due > now {
                        next_due = Some(due);
                        break;
                    }
                    due
                }
                None => now,
            };
            let (partition, buffer) =
                batcher.build_records(count, plan.clock.unix_ns(due), &mut records);
            let sent = producer
                .send_batch(&plan.topic, partition, ack, &records)
                .await;
            release(&mut records);
            match sent {
                Ok(delivery) => in_flight.push_back(Pending {
                    due,
                    partition,
                    count,
                    buffer,
                    delivery,
                }),
                Err(error) => {
                    outcome
                        .errors
                        .push(|| format!("producer {}: send_batch failed: {error}", plan.id));
                    return;
                }
            }
            request = request.wrapping_add(1);
        }
        let Some(oldest) = in_flight.front_mut() else {
            if spent {
                break;
            }
            sleep_until_opt(next_due).await;
            continue;
        };
        let delivered = tokio::select! {
            delivered = &mut oldest.delivery => delivered,
            _ = sleep_until_opt(next_due), if next_due.is_some() => continue,
        };
        let acked = Instant::now();
        let Some(sent) = in_flight.pop_front() else {
            continue;
        };
        match delivered {
            Ok(delivered) => {
                outcome.result.latency.record(acked - sent.due);
                check_delivered(
                    &delivered,
                    ack,
                    sent.partition,
                    sent.count,
                    plan.id,
                    &mut outcome.errors,
                );
                drop(delivered);
                record(
                    outcome,
                    sent.partition,
                    sent.count,
                    plan.message_size,
                    started,
                    acked,
                );
                progress.fetch_add(sent.count as u64, Ordering::Relaxed);
                batcher.reclaim(sent.buffer);
            }
            Err(error) => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: a batch of {} messages to partition {} failed: {error}",
                        plan.id, sent.count, sent.partition
                    )
                });
                return;
            }
        }
    }
    if let Err(error) = producer.close().await {
        outcome
            .errors
            .push(|| format!("producer {}: closing the producer failed: {error}", plan.id));
    }
}

/// Checks what `send_batch` resolved to: one [`Delivered`] per message, in the
/// partition it was sent to, at consecutive offsets, none a duplicate; with
/// [`Ack::None`], no offsets at all.
fn check_delivered(
    delivered: &[Delivered],
    ack: Ack,
    partition: u32,
    count: usize,
    producer: u32,
    errors: &mut Errors,
) {
    if delivered.len() != count {
        let got = delivered.len();
        errors.push(|| {
            format!("producer {producer}: a batch of {count} messages was answered for {got}")
        });
        return;
    }
    let base = delivered.first().and_then(|d| d.offset);
    for (i, d) in delivered.iter().enumerate() {
        let expected = if ack == Ack::None {
            None
        } else {
            base.map(|base| base + i as u64)
        };
        if d.partition != partition
            || d.duplicate
            || d.offset != expected
            || (ack != Ack::None && d.offset.is_none())
        {
            let (p, o, duplicate) = (d.partition, d.offset, d.duplicate);
            errors.push(|| {
                format!(
                    "producer {producer}: message {i} of a batch to partition {partition} was answered partition {p} offset {o:?} duplicate {duplicate} (expected offset {expected:?}, not a duplicate)"
                )
            });
            return;
        }
    }
}

async fn run_unary(
    plan: ProducerPlan,
    mut client: PublisherClient<Conn>,
    progress: &AtomicU64,
    outcome: &mut ProducerOutcome,
) {
    let started = Instant::now();
    let mut batcher = Batcher::new(plan.clone());
    let mut k = 0u32;
    while let Some(count) = batcher.next_count(Instant::now()) {
        let due = match plan.interval {
            Some(interval) => {
                let due = started + interval * k;
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        k = k.wrapping_add(1);
        let (partition, messages, buffer) = batcher.build(count, plan.clock.unix_ns(due));
        let request = PublishRequest {
            topic: plan.topic.clone(),
            messages,
            ack: plan.ack as i32,
        };
        match client.publish(request).await {
            Ok(response) => {
                let acked = Instant::now();
                outcome.result.latency.record(acked - due);
                check_acks(
                    &response.get_ref().acks,
                    plan.ack,
                    partition,
                    count,
                    plan.id,
                    &mut outcome.errors,
                );
                record(outcome, partition, count, plan.message_size, started, acked);
                progress.fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(status) => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: publish failed: {} ({:?})",
                        plan.id,
                        status.message(),
                        status.code()
                    )
                });
                return;
            }
        }
        batcher.reclaim(buffer);
    }
}

fn record(
    outcome: &mut ProducerOutcome,
    partition: u32,
    count: usize,
    size: usize,
    started: Instant,
    acked: Instant,
) {
    outcome.result.messages += count as u64;
    outcome.result.bytes += (count * size) as u64;
    outcome.result.requests += 1;
    outcome.result.elapsed = acked - started;
    outcome.sent[partition as usize] += count as u64;
}

async fn run_stream(
    plan: ProducerPlan,
    mut client: PublisherClient<Conn>,
    progress: &AtomicU64,
    outcome: &mut ProducerOutcome,
) {
    let in_flight_max = plan.in_flight.max(1);
    let (tx, rx) = mpsc::channel::<PublishStreamRequest>(in_flight_max);
    let started = Instant::now();
    let mut responses = match client.publish_stream(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            outcome.errors.push(|| {
                format!(
                    "producer {}: opening the publish stream failed: {}",
                    plan.id,
                    status.message()
                )
            });
            return;
        }
    };
    let mut batcher = Batcher::new(plan.clone());
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(in_flight_max);
    let mut request_id = 0u64;
    let mut sender = Some(tx);
    loop {
        // Fill the pipeline with what is due.
        let mut next_due = None;
        while in_flight.len() < in_flight_max {
            let now = Instant::now();
            let Some(count) = batcher.next_count(now) else {
                sender = None; // half-close: the broker answers the rest, then ends
                break;
            };
            let due = match plan.interval {
                Some(interval) => {
                    let due = started + interval * u32::try_from(request_id).unwrap_or(u32::MAX);
                    if due > now {
                        next_due = Some(due);
                        break;
                    }
                    due
                }
                None => now,
            };
            let Some(tx) = &sender else { break };
            let (partition, messages, buffer) = batcher.build(count, plan.clock.unix_ns(due));
            let request = PublishStreamRequest {
                batch: None,
                request_id,
                request: Some(PublishRequest {
                    topic: plan.topic.clone(),
                    messages,
                    ack: plan.ack as i32,
                }),
            };
            // Never full: the channel holds as many requests as may be in flight.
            if tx.try_send(request).is_err() {
                outcome
                    .errors
                    .push(|| format!("producer {}: the publish stream closed early", plan.id));
                return;
            }
            in_flight.push_back(InFlight {
                request_id,
                due,
                partition,
                count,
                buffer,
            });
            request_id += 1;
        }
        if in_flight.is_empty() && sender.is_none() {
            break;
        }
        let response = tokio::select! {
            response = responses.message(), if !in_flight.is_empty() => response,
            _ = sleep_until_opt(next_due), if next_due.is_some() => continue,
            else => break,
        };
        let acked = Instant::now();
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) => {
                let missing = in_flight.len();
                outcome.errors.push(|| {
                    format!(
                        "producer {}: the broker ended the publish stream with {missing} requests unanswered",
                        plan.id
                    )
                });
                return;
            }
            Err(status) => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: the publish stream failed: {} ({:?})",
                        plan.id,
                        status.message(),
                        status.code()
                    )
                });
                return;
            }
        };
        let Some(sent) = in_flight.pop_front() else {
            continue;
        };
        if response.request_id != sent.request_id {
            outcome.errors.push(|| {
                format!(
                    "producer {}: answer to request {} arrived when request {} was due (out of order)",
                    plan.id, response.request_id, sent.request_id
                )
            });
            return;
        }
        match response.outcome {
            Some(publish_stream_response::Outcome::Response(acks)) => {
                outcome.result.latency.record(acked - sent.due);
                check_acks(
                    &acks.acks,
                    plan.ack,
                    sent.partition,
                    sent.count,
                    plan.id,
                    &mut outcome.errors,
                );
                record(
                    outcome,
                    sent.partition,
                    sent.count,
                    plan.message_size,
                    started,
                    acked,
                );
                progress.fetch_add(sent.count as u64, Ordering::Relaxed);
                batcher.reclaim(sent.buffer);
            }
            Some(publish_stream_response::Outcome::Error(error)) => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: request {} failed: {} (code {})",
                        plan.id, sent.request_id, error.message, error.code
                    )
                });
                return;
            }
            Some(publish_stream_response::Outcome::BatchResponse(_)) => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: request {} (messages) was answered as a record batch",
                        plan.id, sent.request_id
                    )
                });
                return;
            }
            None => {
                outcome.errors.push(|| {
                    format!(
                        "producer {}: empty answer to request {}",
                        plan.id, sent.request_id
                    )
                });
                return;
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::{FillerKind, open};
    use super::*;

    fn plan(partitions: u32, budget: Budget) -> ProducerPlan {
        ProducerPlan {
            id: 1,
            run: 42,
            topic: "t".into(),
            partitions,
            message_size: 64,
            batch: 4,
            ack: AckLevel::Durable,
            stream: false,
            pin: false,
            ids: false,
            delay_ms: None,
            in_flight: 1,
            budget,
            interval: None,
            pool: Arc::new(Pool::new(FillerKind::Random, 1)),
            clock: Clock::new(),
            tag: false,
            batch_wire: None,
        }
    }

    #[test]
    fn batch_wire_records_hold_the_messages_as_built() {
        let plan = ProducerPlan {
            ids: true,
            tag: true,
            delay_ms: Some(5),
            ..plan(1, Budget::Messages(8))
        };
        // The same bodies, ids and headers as the per-message form.
        let (_, messages, _) = Batcher::new(plan.clone()).build(4, 7);
        let mut records = Vec::new();
        let (partition, _) = Batcher::new(plan).build_records(4, 7, &mut records);
        assert_eq!(partition, 0, "one partition");
        // Encoded in place as the producer does (records are `AsRef<NewRecord>`).
        let options = tidelog_storage::batch::EncodeOptions {
            now_ms: 1_000,
            default_ttl_ms: None,
            compression: tidelog_storage::Compression::None,
            max_message_bytes: 1 << 20,
            priority_levels: 0,
        };
        let batch = tidelog_storage::batch::encode_batch(&records, &options).unwrap();
        let (_, decoded) = tidelog_storage::batch::decode_batch(&Bytes::from(batch.bytes)).unwrap();
        assert_eq!(decoded.len(), 4);
        for (record, message) in decoded.iter().zip(&messages) {
            assert_eq!(record.value, message.value);
            assert_eq!(record.id.as_ref(), Some(&message.id));
            assert_eq!(record.headers[0].key, PCT_HEADER);
            assert_eq!(record.headers[0].value, message.headers[0].value);
            assert_eq!(record.deliver_at_ms, Some(1_005));
            assert_eq!(open(&record.value).unwrap().partition, 0);
        }
    }

    #[test]
    fn library_acks_are_checked() {
        let delivered = |offsets: &[Option<u64>]| -> Vec<Delivered> {
            offsets
                .iter()
                .map(|&offset| Delivered {
                    partition: 0,
                    offset,
                    id: None,
                    duplicate: false,
                })
                .collect()
        };
        let mut errors = Errors::default();
        check_delivered(
            &delivered(&[Some(5), Some(6)]),
            Ack::Durable,
            0,
            2,
            0,
            &mut errors,
        );
        check_delivered(&delivered(&[None, None]), Ack::None, 0, 2, 0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        // Too few, a gap, offsets missing, offsets where none were asked for, the
        // wrong partition, a duplicate.
        check_delivered(&delivered(&[Some(5)]), Ack::Written, 0, 2, 0, &mut errors);
        check_delivered(
            &delivered(&[Some(5), Some(7)]),
            Ack::Written,
            0,
            2,
            0,
            &mut errors,
        );
        check_delivered(
            &delivered(&[None, None]),
            Ack::Written,
            0,
            2,
            0,
            &mut errors,
        );
        check_delivered(
            &delivered(&[Some(5), Some(6)]),
            Ack::None,
            0,
            2,
            0,
            &mut errors,
        );
        check_delivered(
            &delivered(&[Some(5), Some(6)]),
            Ack::Written,
            1,
            2,
            0,
            &mut errors,
        );
        let mut duplicate = delivered(&[Some(5), Some(6)]);
        duplicate[1].duplicate = true;
        check_delivered(&duplicate, Ack::Durable, 0, 2, 0, &mut errors);
        assert_eq!(errors.count, 6, "{errors:?}");
    }

    #[test]
    fn tagged_messages_carry_their_sequence_mod_100() {
        let mut batcher = Batcher::new(ProducerPlan {
            tag: true,
            ..plan(1, Budget::Messages(250))
        });
        let mut tags = Vec::new();
        while let Some(count) = batcher.next_count(Instant::now()) {
            let (_, messages, _) = batcher.build(count, 7);
            for m in &messages {
                assert_eq!(m.headers.len(), 1);
                assert_eq!(m.headers[0].key, PCT_HEADER);
                tags.push(String::from_utf8(m.headers[0].value.to_vec()).unwrap());
            }
        }
        let expected: Vec<String> = (0..250).map(|s: u64| (s % 100).to_string()).collect();
        assert_eq!(tags, expected);
        // Untagged messages (every bench without --filter) have no header.
        let mut batcher = Batcher::new(plan(1, Budget::Messages(4)));
        let count = batcher.next_count(Instant::now()).unwrap();
        assert!(
            batcher
                .build(count, 7)
                .1
                .iter()
                .all(|m| m.headers.is_empty())
        );
    }

    #[test]
    fn batches_rotate_partitions_and_sequence_per_partition() {
        let mut batcher = Batcher::new(plan(2, Budget::Messages(10)));
        let mut seen = Vec::new();
        while let Some(count) = batcher.next_count(Instant::now()) {
            let (partition, messages, buffer) = batcher.build(count, 7);
            for m in &messages {
                let h = open(&m.value).unwrap();
                assert_eq!(
                    (h.run, h.producer, h.partition, h.sent_ns),
                    (42, 1, partition, 7)
                );
                assert_eq!(m.partition, Some(partition));
                seen.push((partition, h.sequence));
            }
            drop(messages);
            batcher.reclaim(buffer);
        }
        // Producer 1 starts at partition 1; batches of 4, 4, 2.
        assert_eq!(
            seen,
            vec![
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 4),
                (1, 5)
            ]
        );
        assert_eq!(batcher.free.len(), 1, "the buffer came back for reuse");
    }

    #[test]
    fn a_time_budget_ends_at_the_deadline() {
        let batcher = Batcher::new(plan(
            1,
            Budget::Until(Instant::now() + Duration::from_secs(60)),
        ));
        assert_eq!(batcher.next_count(Instant::now()), Some(4));
        assert_eq!(
            batcher.next_count(Instant::now() + Duration::from_secs(61)),
            None
        );
    }

    #[test]
    fn acks_are_checked() {
        let acks = |offsets: &[(u32, u64)]| -> Vec<MessageAck> {
            offsets
                .iter()
                .map(|&(partition, offset)| MessageAck {
                    partition,
                    offset,
                    ..MessageAck::default()
                })
                .collect()
        };
        let mut errors = Errors::default();
        check_acks(
            &acks(&[(0, 5), (0, 6)]),
            AckLevel::Durable,
            0,
            2,
            0,
            &mut errors,
        );
        check_acks(&[], AckLevel::None, 0, 2, 0, &mut errors);
        assert!(errors.is_empty());
        check_acks(&acks(&[(0, 5)]), AckLevel::Written, 0, 2, 0, &mut errors);
        check_acks(
            &acks(&[(0, 5), (0, 7)]),
            AckLevel::Written,
            0,
            2,
            0,
            &mut errors,
        );
        check_acks(
            &acks(&[(1, 5), (1, 6)]),
            AckLevel::Written,
            0,
            2,
            0,
            &mut errors,
        );
        let mut duplicate = acks(&[(0, 5), (0, 6)]);
        duplicate[1].duplicate = true;
        check_acks(&duplicate, AckLevel::Durable, 0, 2, 0, &mut errors);
        assert_eq!(errors.count, 4, "{errors:?}");
    }

    #[test]
    fn with_ids_every_message_has_its_own() {
        let mut plan = plan(3, Budget::Messages(30));
        plan.ids = true;
        let mut batcher = Batcher::new(plan);
        let mut ids = std::collections::HashSet::new();
        while let Some(count) = batcher.next_count(Instant::now()) {
            let (partition, messages, _) = batcher.build(count, 7);
            for m in &messages {
                let h = open(&m.value).unwrap();
                assert_eq!(
                    m.id.as_ref(),
                    message_id(42, 1, partition, h.sequence),
                    "the id names run, producer, partition and sequence"
                );
                assert!(ids.insert(m.id.clone()), "{:?} twice", m.id);
            }
        }
        assert_eq!(ids.len(), 30);
        assert_ne!(message_id(42, 1, 0, 0), message_id(43, 1, 0, 0));
        assert_ne!(message_id(42, 1, 0, 0), message_id(42, 2, 0, 0));
        assert_ne!(message_id(42, 1, 0, 0), message_id(42, 1, 1, 0));
    }
}
