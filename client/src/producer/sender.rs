//! The producer's task: owns the accumulator, the publish stream and the batches in
//! flight (see the module docs of `producer` for the rules).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidelog_proto::v1::{
    PublishBatchRequest, PublishBatchResponse, PublishStreamRequest, PublishStreamResponse,
    TopicDescription, publish_stream_response,
};
use tidelog_storage::NewRecord;
use tidelog_storage::batch::{EncodeOptions, encode_batch};
use tidelog_storage::limits::{MESSAGE_ID_BYTES_MAX, RECORD_HEADERS_MAX};
use tidelog_storage::msgid::IdGenerator;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::accumulator::{Accumulator, BatchKey, Limits, Sealed};
use super::{IdMode, ProducerConfig};
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};
use crate::record::{Delivered, Record};

pub(crate) enum Command {
    Record {
        record: Box<Record>,
        reply: oneshot::Sender<Result<Delivered>>,
        permit: OwnedSemaphorePermit,
    },
    Batch {
        topic: String,
        partition: u32,
        ack: crate::record::Ack,
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<Vec<Delivered>>>,
        permit: OwnedSemaphorePermit,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Most commands taken per turn of the task's loop (bounds how long acks and linger
/// timers wait behind a burst of sends).
const COMMANDS_PER_WAKE: usize = 1024;

/// A record waiting in an open batch.
struct Pending {
    record: NewRecord,
    waiter: Waiter,
}

/// What is kept of a record until its ack: who waits, its id, its buffer share.
struct Waiter {
    reply: oneshot::Sender<Result<Delivered>>,
    id: Option<Bytes>,
    _permit: OwnedSemaphorePermit,
}

/// Who waits for a batch's ack: each record (`send`), or the caller of `send_batch`.
enum Waiters {
    Records(Vec<Waiter>),
    Batch {
        reply: oneshot::Sender<Result<Vec<Delivered>>>,
        ids: Vec<Option<Bytes>>,
        _permit: OwnedSemaphorePermit,
    },
}

/// An encoded batch, kept byte for byte until answered (a resend is identical).
struct Outgoing {
    key: BatchKey,
    bytes: Bytes,
    waiters: Waiters,
    /// When its oldest record was handed over: the delivery timeout counts from here.
    opened: Instant,
}

impl Outgoing {
    fn records(&self) -> usize {
        match &self.waiters {
            Waiters::Records(waiters) => waiters.len(),
            Waiters::Batch { ids, .. } => ids.len(),
        }
    }

    fn fail(self, error: &Error) {
        match self.waiters {
            Waiters::Records(waiters) => {
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(error.clone()));
                }
            }
            Waiters::Batch { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// What the producer knows of a topic (from DescribeTopic), and its sticky partition.
struct TopicState {
    name: Arc<str>,
    partitions: u32,
    max_message_bytes: u64,
    default_ttl_ms: Option<u64>,
    priority_levels: u8,
    attach_ids: bool,
    sticky: u32,
}

impl TopicState {
    fn new(description: &TopicDescription, ids: IdMode) -> TopicState {
        let config = description.config.unwrap_or_default();
        let dedups = config.dedup_window_ms.unwrap_or(0) > 0 || config.assign_ids;
        let partitions = u32::try_from(description.partitions.len())
            .unwrap_or(u32::MAX)
            .max(1);
        TopicState {
            name: Arc::from(description.name.as_str()),
            partitions,
            max_message_bytes: if config.max_message_bytes == 0 {
                tidelog_storage::limits::MESSAGE_BYTES_DEFAULT
            } else {
                config.max_message_bytes
            },
            default_ttl_ms: config.default_ttl_ms.filter(|&ttl| ttl > 0),
            priority_levels: u8::try_from(config.priority_levels).unwrap_or(u8::MAX),
            attach_ids: match ids {
                IdMode::Auto => dedups,
                IdMode::Always => true,
                IdMode::Never => false,
            },
            sticky: tidelog_storage::msgid::process_seed() as u32 % partitions,
        }
    }

    /// The record's partition, or why it cannot go anywhere.
    fn partition(&self, record: &Record) -> Result<u32> {
        match (record.partition, &record.inner.key) {
            (Some(p), _) if p >= self.partitions => Err(Error::InvalidRecord {
                reason: format!(
                    "partition {p} is beyond topic {:?}'s {} partitions (0..{})",
                    record.topic, self.partitions, self.partitions
                ),
            }),
            (Some(p), _) => Ok(p),
            (None, Some(key)) => Ok(tidelog_storage::partitioner::partition_for_key(
                key,
                self.partitions,
            )),
            (None, None) => Ok(self.sticky),
        }
    }

    /// Checks the rules the broker would check on one record, so a bad record fails
    /// alone at once instead of failing the batch it would have joined.
    fn check(&self, record: &NewRecord) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidRecord { reason });
        let size = record.payload_bytes();
        if size > self.max_message_bytes {
            return invalid(format!(
                "{size} bytes of id, key, value and headers, over topic {:?}'s max_message_bytes {}",
                self.name, self.max_message_bytes
            ));
        }
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return invalid(format!(
                "{} headers, over the limit of {RECORD_HEADERS_MAX}",
                record.headers.len()
            ));
        }
        if let Some(id) = &record.id
            && !(1..=MESSAGE_ID_BYTES_MAX).contains(&id.len())
        {
            return invalid(format!(
                "an id of {} bytes; ids are 1 to {MESSAGE_ID_BYTES_MAX} bytes",
                id.len()
            ));
        }
        if record.timestamp_ms.is_some_and(|t| t < 0) {
            return invalid("a negative timestamp_ms".into());
        }
        if record.priority > 0 && record.priority >= self.priority_levels.max(1) {
            return invalid(format!(
                "priority {} but topic {:?} has {} priority levels",
                record.priority, self.name, self.priority_levels
            ));
        }
        Ok(())
    }
}

/// The open publish stream.
struct Stream {
    requests: mpsc::Sender<PublishStreamRequest>,
    responses: tonic::Streaming<PublishStreamResponse>,
}

struct Sender {
    client: Client,
    config: ProducerConfig,
    topics: HashMap<Arc<str>, TopicState>,
    accumulator: Accumulator<Pending>,
    /// Sealed, waiting for room in the window; resends go first.
    ready: VecDeque<Outgoing>,
    /// Sent, in the order the broker answers.
    in_flight: VecDeque<Outgoing>,
    stream: Option<Stream>,
    /// When to try to open the stream again.
    retry_at: Instant,
    backoff: Backoff,
    ids: IdGenerator,
    request_id: u64,
    flushes: Vec<oneshot::Sender<()>>,
    closing: Option<Vec<oneshot::Sender<()>>>,
    /// The topic of the last record (see `known_topic`).
    last_topic: Option<Arc<str>>,
}

pub(crate) async fn run(
    client: Client,
    config: ProducerConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let limits = Limits {
        max_bytes: config.batch_bytes,
        max_records: config
            .batch_records
            .min(tidelog_storage::limits::BATCH_RECORDS_MAX as usize),
        linger: config.linger,
    };
    let mut sender = Sender {
        client,
        backoff: Backoff::new(config.backoff.0, config.backoff.1),
        config,
        topics: HashMap::new(),
        accumulator: Accumulator::new(limits),
        ready: VecDeque::new(),
        in_flight: VecDeque::new(),
        stream: None,
        retry_at: Instant::now(),
        ids: IdGenerator::new(tidelog_storage::msgid::process_seed()),
        request_id: 0,
        flushes: Vec::new(),
        closing: None,
        last_topic: None,
    };
    let mut commands_open = true;
    loop {
        let idle =
            sender.accumulator.is_empty() && sender.ready.is_empty() && sender.in_flight.is_empty();
        if idle {
            for flush in sender.flushes.drain(..) {
                let _ = flush.send(());
            }
            if sender.closing.is_some() || !commands_open {
                break;
            }
        }
        if sender.stream.is_none() && !idle && Instant::now() >= sender.retry_at {
            sender.open().await;
        }
        sender.fill_window();
        let window_has_room = sender.in_flight.len() < sender.config.in_flight.max(1);
        let linger_due = if sender.stream.is_some() && window_has_room && sender.ready.is_empty() {
            sender.accumulator.next_deadline()
        } else {
            None
        };
        let retry_due = (sender.stream.is_none() && !idle).then_some(sender.retry_at);
        tokio::select! {
            command = commands.recv(), if commands_open && sender.closing.is_none() => match command {
                Some(command) => {
                    sender.command(command).await;
                    // Take what else is queued before going round the loop again:
                    // one wake-up and one pass of the select per many records.
                    for _ in 1..COMMANDS_PER_WAKE {
                        if sender.closing.is_some() {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(command) => sender.command(command).await,
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    commands_open = false;
                    sender.drain();
                }
            },
            response = next_response(&mut sender.stream) => sender.response(response),
            () = sleep_until(linger_due), if linger_due.is_some() => {}
            () = sleep_until(retry_due), if retry_due.is_some() => {}
        }
    }
    // Half-close: the broker ends the stream once it has answered everything (nothing
    // is outstanding here).
    sender.stream = None;
    if let Some(replies) = sender.closing.take() {
        for reply in replies {
            let _ = reply.send(());
        }
    }
}

async fn next_response(
    stream: &mut Option<Stream>,
) -> Result<Option<PublishStreamResponse>, tonic::Status> {
    match stream {
        Some(stream) => stream.responses.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

impl Sender {
    async fn command(&mut self, command: Command) {
        match command {
            Command::Record {
                record,
                reply,
                permit,
            } => {
                let topic = match self.known_topic(&record.topic) {
                    Some(topic) => topic,
                    None => match self.describe(&record.topic).await {
                        Ok(topic) => topic,
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            return;
                        }
                    },
                };
                self.last_topic = Some(topic.clone());
                self.add(topic, record, reply, permit);
            }
            Command::Batch {
                topic,
                partition,
                ack,
                records,
                reply,
                permit,
            } => {
                let topic = match self.known_topic(&topic) {
                    Some(topic) => topic,
                    None => match self.describe(&topic).await {
                        Ok(topic) => topic,
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            return;
                        }
                    },
                };
                self.add_batch(topic, partition, ack, records, reply, permit);
            }
            Command::Flush { reply } => {
                self.drain();
                self.flushes.push(reply);
            }
            Command::Close { reply } => {
                self.drain();
                self.closing.get_or_insert_with(Vec::new).push(reply);
            }
        }
    }

    /// The topic's key if it is described already (the last topic first: most
    /// producers send to one topic, and a string compare is cheaper than a hash).
    fn known_topic(&self, name: &str) -> Option<Arc<str>> {
        if let Some(last) = &self.last_topic
            && **last == *name
        {
            return Some(last.clone());
        }
        self.topics.get_key_value(name).map(|(key, _)| key.clone())
    }

    /// Seals every open batch (flush, close).
    fn drain(&mut self) {
        let mut sealed = Vec::new();
        self.accumulator.drain(&mut sealed);
        self.enqueue(sealed);
    }

    fn add(
        &mut self,
        topic: Arc<str>,
        record: Box<Record>,
        reply: oneshot::Sender<Result<Delivered>>,
        permit: OwnedSemaphorePermit,
    ) {
        let Some(state) = self.topics.get(&topic) else {
            let _ = reply.send(Err(Error::TopicNotFound {
                topic: topic.to_string(),
            }));
            return;
        };
        let partition = match state
            .partition(&record)
            .and_then(|p| state.check(&record.inner).map(|()| p))
        {
            Ok(partition) => partition,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let attach_id = state.attach_ids;
        let Record { inner, ack, .. } = *record;
        let mut inner = inner;
        if inner.id.is_none() && attach_id {
            inner.id = Some(Bytes::copy_from_slice(&self.ids.next(now_ms())));
        }
        let size = inner.payload_bytes() as usize;
        let key = BatchKey {
            topic,
            partition,
            ack,
        };
        let waiter = Waiter {
            reply,
            id: inner.id.clone(),
            _permit: permit,
        };
        let mut sealed = Vec::new();
        self.accumulator.push(
            key,
            Pending {
                record: inner,
                waiter,
            },
            size,
            Instant::now(),
            &mut sealed,
        );
        if !sealed.is_empty() {
            self.enqueue(sealed);
        }
    }

    /// A caller's batch: checked, given ids, encoded and queued as it is, behind
    /// the records `send` put in the same partition before it.
    fn add_batch(
        &mut self,
        topic: Arc<str>,
        partition: u32,
        ack: crate::record::Ack,
        mut records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<Vec<Delivered>>>,
        permit: OwnedSemaphorePermit,
    ) {
        let Some(state) = self.topics.get(&topic) else {
            let _ = reply.send(Err(Error::TopicNotFound {
                topic: topic.to_string(),
            }));
            return;
        };
        let checked = if partition >= state.partitions {
            Err(Error::InvalidRecord {
                reason: format!(
                    "partition {partition} is beyond topic {topic:?}'s {} partitions",
                    state.partitions
                ),
            })
        } else if records.is_empty() {
            Err(Error::InvalidRecord {
                reason: "send_batch needs at least one record".into(),
            })
        } else {
            records.iter().try_for_each(|r| state.check(r))
        };
        if let Err(error) = checked {
            let _ = reply.send(Err(error));
            return;
        }
        if state.attach_ids {
            let now = now_ms();
            for record in records.iter_mut().filter(|r| r.id.is_none()) {
                record.id = Some(Bytes::copy_from_slice(&self.ids.next(now)));
            }
        }
        let options = EncodeOptions {
            now_ms: now_ms(),
            default_ttl_ms: state.default_ttl_ms,
            compression: self.config.compression,
            max_message_bytes: state.max_message_bytes,
            priority_levels: state.priority_levels,
        };
        let key = BatchKey {
            topic,
            partition,
            ack,
        };
        // Order within the partition: what `send` gathered there goes first.
        let mut sealed = Vec::new();
        self.accumulator.seal(&key, &mut sealed);
        self.enqueue(sealed);
        match encode_batch(&records, &options) {
            Ok(encoded) => self.ready.push_back(Outgoing {
                key,
                bytes: Bytes::from(encoded.bytes),
                waiters: Waiters::Batch {
                    reply,
                    ids: records.into_iter().map(|r| r.id).collect(),
                    _permit: permit,
                },
                opened: Instant::now(),
            }),
            Err(error) => {
                let _ = reply.send(Err(Error::InvalidRecord {
                    reason: error.to_string(),
                }));
            }
        }
    }

    /// Describes a topic the producer has not seen (or forgot after a NOT_FOUND).
    async fn describe(&mut self, name: &str) -> Result<Arc<str>> {
        let description = self.client.describe_topic(name).await?;
        let state = TopicState::new(&description, self.config.ids);
        let key = state.name.clone();
        self.topics.insert(key.clone(), state);
        Ok(key)
    }

    /// Encodes sealed batches into the ready queue; moves sticky partitions on.
    fn enqueue(&mut self, sealed: Vec<Sealed<Pending>>) {
        for batch in sealed {
            tracing::trace!(
                records = batch.items.len(),
                bytes = batch.bytes,
                partition = batch.key.partition,
                "batch sealed"
            );
            if let Some(state) = self.topics.get_mut(&batch.key.topic)
                && state.sticky == batch.key.partition
            {
                state.sticky = (state.sticky + 1) % state.partitions;
            }
            if let Some(outgoing) = self.encode(batch) {
                self.ready.push_back(outgoing);
            }
        }
    }

    fn encode(&self, batch: Sealed<Pending>) -> Option<Outgoing> {
        let (records, waiters): (Vec<NewRecord>, Vec<Waiter>) = batch
            .items
            .into_iter()
            .map(|p| (p.record, p.waiter))
            .unzip();
        let Some(state) = self.topics.get(&batch.key.topic) else {
            // Forgotten after a NOT_FOUND: the topic was deleted under the producer.
            let error = Error::TopicNotFound {
                topic: batch.key.topic.to_string(),
            };
            for waiter in waiters {
                let _ = waiter.reply.send(Err(error.clone()));
            }
            return None;
        };
        let options = EncodeOptions {
            now_ms: now_ms(),
            default_ttl_ms: state.default_ttl_ms,
            compression: self.config.compression,
            max_message_bytes: state.max_message_bytes,
            priority_levels: state.priority_levels,
        };
        match encode_batch(&records, &options) {
            Ok(encoded) => Some(Outgoing {
                key: batch.key,
                bytes: Bytes::from(encoded.bytes),
                waiters: Waiters::Records(waiters),
                opened: batch.opened,
            }),
            Err(error) => {
                let error = Error::InvalidRecord {
                    reason: error.to_string(),
                };
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(error.clone()));
                }
                None
            }
        }
    }

    /// Sends ready batches (and lingered ones) while the window has room.
    fn fill_window(&mut self) {
        let window = self.config.in_flight.max(1);
        while self.stream.is_some() && self.in_flight.len() < window {
            if self.ready.is_empty() {
                let mut sealed = Vec::new();
                self.accumulator.expire(Instant::now(), &mut sealed);
                self.enqueue(sealed);
            }
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            if !self.send(&batch) {
                self.ready.push_front(batch);
                self.broken();
                break;
            }
            self.in_flight.push_back(batch);
        }
    }

    /// Puts one batch on the stream; false when the stream is gone.
    fn send(&mut self, batch: &Outgoing) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        self.request_id += 1;
        let request = PublishStreamRequest {
            request_id: self.request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                topic: batch.key.topic.to_string(),
                partition: batch.key.partition,
                batch: batch.bytes.clone(),
                ack: batch.key.ack.level() as i32,
            }),
        };
        stream.requests.try_send(request).is_ok()
    }

    /// Opens the publish stream, and sends again what was in flight.
    async fn open(&mut self) {
        let window = self.config.in_flight.max(1);
        let (requests, receiver) = mpsc::channel(window + 1);
        match self
            .client
            .publisher()
            .publish_stream(ReceiverStream::new(receiver))
            .await
        {
            Ok(response) => {
                self.stream = Some(Stream {
                    requests,
                    responses: response.into_inner(),
                });
                self.backoff.reset();
                // Unanswered batches first, in their order, then the ready ones.
                for batch in self.in_flight.drain(..).rev() {
                    self.ready.push_front(batch);
                }
            }
            Err(status) if retryable_status(&status) => {
                tracing::debug!(%status, "publish stream: broker unavailable, retrying");
                self.retry_later();
            }
            Err(status) => {
                // Not a broken connection (UNAUTHENTICATED, PERMISSION_DENIED, ...):
                // nothing queued can be sent.
                let error = Error::from_status("PublishStream", None, &status);
                self.fail_all(&error);
                self.retry_later();
            }
        }
    }

    fn retry_later(&mut self) {
        self.retry_at = Instant::now() + self.backoff.next_delay();
        self.expire_undeliverable();
    }

    /// Fails the batches that waited past the delivery timeout.
    fn expire_undeliverable(&mut self) {
        let timeout = self.config.delivery_timeout;
        let now = Instant::now();
        let expired = |batch: &Outgoing| batch.opened + timeout <= now;
        for queue in [&mut self.in_flight, &mut self.ready] {
            let (gone, kept): (VecDeque<Outgoing>, VecDeque<Outgoing>) =
                queue.drain(..).partition(expired);
            *queue = kept;
            for batch in gone {
                let what = format!(
                    "a batch of {} records for topic {:?} partition {}",
                    batch.records(),
                    batch.key.topic,
                    batch.key.partition
                );
                batch.fail(&Error::Timeout {
                    what,
                    after: timeout,
                });
            }
        }
    }

    fn fail_all(&mut self, error: &Error) {
        self.drain();
        for batch in self.in_flight.drain(..).chain(self.ready.drain(..)) {
            batch.fail(error);
        }
    }

    /// The stream broke: everything in flight goes back to the front of the queue.
    fn broken(&mut self) {
        self.stream = None;
        for batch in self.in_flight.drain(..).rev() {
            self.ready.push_front(batch);
        }
        self.retry_later();
    }

    fn response(&mut self, response: Result<Option<PublishStreamResponse>, tonic::Status>) {
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) => {
                tracing::debug!("publish stream ended by the broker");
                self.broken();
                return;
            }
            Err(status) => {
                tracing::debug!(%status, "publish stream failed");
                if retryable_status(&status) || status.code() == Code::Internal {
                    self.broken();
                } else {
                    let error = Error::from_status("PublishStream", None, &status);
                    self.stream = None;
                    for batch in self.in_flight.drain(..) {
                        batch.fail(&error);
                    }
                    self.retry_later();
                }
                return;
            }
        };
        let Some(batch) = self.in_flight.pop_front() else {
            tracing::warn!(
                request_id = response.request_id,
                "publish stream: an answer with nothing in flight"
            );
            self.broken();
            return;
        };
        match response.outcome {
            Some(publish_stream_response::Outcome::BatchResponse(ack)) => resolve(batch, &ack),
            Some(publish_stream_response::Outcome::Error(status)) => {
                let code = Code::from_i32(status.code);
                if code == Code::Unavailable {
                    // The broker is stopping or the partition is poisoned: send it
                    // (and what followed it) again after a backoff, in order.
                    self.in_flight.push_front(batch);
                    self.broken();
                } else {
                    if code == Code::NotFound {
                        self.topics.remove(&batch.key.topic);
                        self.last_topic = None;
                    }
                    let error = Error::from_code(
                        "PublishBatch",
                        Some(&batch.key.topic),
                        code,
                        &status.message,
                    );
                    batch.fail(&error);
                }
            }
            Some(publish_stream_response::Outcome::Response(_)) | None => {
                let error = Error::Broker {
                    rpc: "PublishStream",
                    code: Code::Internal,
                    message: "a batch was answered without a batch_response".into(),
                };
                batch.fail(&error);
            }
        }
    }
}

/// Each record's [`Delivered`] from the batch's ack.
fn resolve(batch: Outgoing, ack: &PublishBatchResponse) {
    // A receiver may have been dropped: the caller stopped caring.
    match batch.waiters {
        Waiters::Records(waiters) => {
            let ids: Vec<Option<Bytes>> = waiters.iter().map(|w| w.id.clone()).collect();
            let outcomes = deliveries_for(&ids, ack);
            for (waiter, delivered) in waiters.into_iter().zip(outcomes) {
                let _ = waiter.reply.send(delivered);
            }
        }
        Waiters::Batch { reply, ids, .. } => {
            let outcome = deliveries_for(&ids, ack).into_iter().collect();
            let _ = reply.send(outcome);
        }
    }
}

/// The outcome of each record of a batch: `base_offset + index`; for a duplicate
/// batch, the originals the ack names, one per record with an id.
fn deliveries_for(ids: &[Option<Bytes>], ack: &PublishBatchResponse) -> Vec<Result<Delivered>> {
    if !ack.duplicate {
        return ids
            .iter()
            .enumerate()
            .map(|(index, id)| {
                Ok(Delivered {
                    partition: ack.partition,
                    offset: ack.base_offset + index as u64,
                    id: id.clone(),
                    duplicate: false,
                })
            })
            .collect();
    }
    let mut originals = ack.acks.iter();
    ids.iter()
        .map(|id| match id {
            Some(id) => match originals.next() {
                Some(original) => Ok(Delivered {
                    partition: original.partition,
                    offset: original.offset,
                    id: Some(id.clone()),
                    duplicate: true,
                }),
                None => Err(Error::Broker {
                    rpc: "PublishBatch",
                    code: Code::Internal,
                    message: "a duplicate batch was answered with fewer acks than ids".into(),
                }),
            },
            None => Err(Error::InvalidArgument {
                rpc: "PublishBatch",
                message: "the batch was a duplicate (its ids were stored before) and this record, which has no id, was not stored: give every record of the batch an id (IdMode::Auto)".into(),
            }),
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_proto::v1::MessageAck;

    #[test]
    fn acks_name_each_record_once() {
        let ids = [None, Some(Bytes::from_static(b"a")), None];
        let ack = PublishBatchResponse {
            partition: 2,
            base_offset: 40,
            count: 3,
            duplicate: false,
            acks: vec![],
        };
        let got: Vec<u64> = deliveries_for(&ids, &ack)
            .into_iter()
            .map(|d| d.unwrap().offset)
            .collect();
        assert_eq!(got, [40, 41, 42]);
    }

    #[test]
    fn a_duplicate_batch_resolves_to_the_originals() {
        let ids = [
            Some(Bytes::from_static(b"a")),
            None,
            Some(Bytes::from_static(b"b")),
        ];
        let original = |offset| MessageAck {
            partition: 1,
            offset,
            id: Bytes::new(),
            duplicate: true,
        };
        let ack = PublishBatchResponse {
            partition: 1,
            base_offset: 0,
            count: 3,
            duplicate: true,
            acks: vec![original(7), original(9)],
        };
        let got = deliveries_for(&ids, &ack);
        assert_eq!(got[0].as_ref().unwrap().offset, 7);
        assert!(got[0].as_ref().unwrap().duplicate);
        assert!(matches!(got[1], Err(Error::InvalidArgument { .. })));
        assert_eq!(got[2].as_ref().unwrap().offset, 9);
    }
}
