//! The producer's task: takes sealed batches from the front (see `front`), encodes
//! them, and owns the publish stream and the batches in flight (see the module docs of
//! `producer` for the rules).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::{
    PublishBatchRequest, PublishBatchResponse, PublishStreamRequest, PublishStreamResponse,
    publish_stream_response,
};
use tidelog_storage::NewRecord;
use tidelog_storage::batch::{EncodeOptions, encode_batch, encode_batch_into};
use tidelog_storage::dedup::BATCH_DEDUPLICATED_WHOLE;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::accumulator::BatchKey;
use super::config::ProducerConfig;
use super::front::{Core, Front, Outcome, SealedBatch, Slot, TopicState, now_ms};
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, partition_refused, retryable_status};
use crate::record::{Ack, Delivered};

pub(crate) enum Command {
    /// A caller's own batch (`send_batch`), encoded, with the buffer bytes it reserved.
    Batch {
        batch: EncodedOwn,
        reply: oneshot::Sender<Result<Vec<Delivered>>>,
        reserved: usize,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Who waits for a batch's ack: `send`'s records (through the batch's slot), or the
/// caller of `send_batch`.
enum Waiters {
    Records {
        slot: Arc<Slot>,
        /// Each record's id, or empty when none has one.
        ids: Vec<Option<Bytes>>,
    },
    Batch {
        reply: oneshot::Sender<Result<Vec<Delivered>>>,
        /// Per record, the id the producer attached; empty when it attached none. The
        /// caller's own ids are not kept (its answer does not repeat them: the caller
        /// has them, and holding each would cost two reference counts a record).
        attached: Vec<Option<Bytes>>,
        reserved: usize,
    },
    /// Record `index` of a batch sent again one record per batch (see
    /// [`Sender::split`]).
    Part {
        split: Arc<Split>,
        index: usize,
        id: Option<Bytes>,
    },
}

/// A batch the broker refused whole for mixing ids it had stored with new ones, sent
/// again one record per batch: the records' outcomes gather here, and the batch's own
/// waiters get them once the last is in.
struct Split {
    state: std::sync::Mutex<SplitState>,
}

struct SplitState {
    /// The batch's waiters, taken when the last part is answered (a part that fails
    /// to encode counts as answered).
    waiters: Option<Waiters>,
    outcomes: Vec<Option<Result<Delivered>>>,
    left: usize,
}

impl Split {
    fn done(&self, core: &Core, index: usize, outcome: Result<Delivered>) {
        let finished = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = state.outcomes.get_mut(index)
                && slot.is_none()
            {
                *slot = Some(outcome);
                state.left = state.left.saturating_sub(1);
            }
            if state.left > 0 {
                return;
            }
            let outcomes: Vec<Result<Delivered>> = std::mem::take(&mut state.outcomes)
                .into_iter()
                .map(|o| o.unwrap_or(Err(Error::Closed)))
                .collect();
            state.waiters.take().map(|waiters| (waiters, outcomes))
        };
        match finished {
            Some((Waiters::Records { slot, .. }, outcomes)) => {
                core.finish(&slot, Outcome::Each(outcomes));
            }
            Some((
                Waiters::Batch {
                    reply,
                    attached,
                    reserved,
                },
                outcomes,
            )) => {
                let _ = reply.send(batch_answer(outcomes, &attached));
                core.give_back(reserved);
            }
            Some((Waiters::Part { .. }, _)) | None => {}
        }
    }
}

/// An encoded batch, kept byte for byte until answered (a resend is identical).
struct Outgoing {
    key: BatchKey,
    bytes: Bytes,
    records: usize,
    waiters: Waiters,
    /// When its oldest record was handed over: the delivery timeout counts from here.
    opened: Instant,
    /// When it was first put on a stream: from then on the broker may have stored it,
    /// and giving up on it leaves its outcome unknown.
    first_sent: Option<Instant>,
    /// The topic's dedup window when the batch's records carry ids: it is sent again
    /// only within this of `first_sent` (less [`resend_margin`]).
    dedup_window: Option<Duration>,
    /// The batch's times are relative ([`relative_times`]): the broker moves them to
    /// its append time (`PublishBatchRequest.relative_times`).
    relative_times: bool,
}

/// Whether a batch of `records` may go with relative times
/// (`PublishBatchRequest.relative_times`: the broker moves the batch so that record
/// 0's timestamp is its append time): when no record has a timestamp or a deliver-at
/// the caller chose. Then every time in it is the producer's "now" plus a TTL or a
/// delay, which the broker's clock should count from, not the producer's; a caller's
/// own timestamp or deliver-at is absolute and the batch goes as it is. A broker
/// that predates the field ignores it and stores the producer's times.
pub(crate) fn relative_times<R: AsRef<NewRecord>>(records: &[R]) -> bool {
    records.iter().all(|record| {
        let record = record.as_ref();
        record.timestamp_ms.is_none() && record.deliver_at_ms.is_none()
    })
}

/// Bounds on how long opening the publish stream may take (until the oldest batch's
/// delivery timeout, within these).
const OPEN_TIMEOUT_MIN: Duration = Duration::from_millis(50);
const OPEN_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// How much earlier than the dedup window's end the producer stops sending a batch
/// again: a quarter of the window, at most 5 s. It covers the time a resend takes to
/// reach the broker and be appended, and a broker clock ahead of the producer's (after
/// a restart the broker times the ids by the records' timestamps, which the producer
/// sets when a record has a timestamp of its caller's, or the broker predates
/// relative times). The window itself counts from the first copy's append, after
/// `first_sent`.
pub(crate) fn resend_margin(window: Duration) -> Duration {
    (window / 4).min(Duration::from_secs(5))
}

/// Whether a batch first sent at `first_sent` may no longer be sent again at `now`
/// (its topic's dedup window, less the margin, has passed).
fn past_resend_window(first_sent: Option<Instant>, window: Option<Duration>, now: Instant) -> bool {
    match (first_sent, window) {
        (Some(first_sent), Some(window)) => {
            now >= first_sent + window.saturating_sub(resend_margin(window))
        }
        _ => false,
    }
}

impl Outgoing {
    fn fail(self, core: &Core, error: &Error) {
        match self.waiters {
            // Each record's future puts its own id into an `OutcomeUnknown`.
            Waiters::Records { slot, .. } => core.finish(&slot, Outcome::Failed(error.clone())),
            Waiters::Batch {
                reply,
                reserved,
                attached,
            } => {
                let _ = reply.send(Err(with_ids(error, || attached)));
                core.give_back(reserved);
            }
            Waiters::Part {
                split, index, id, ..
            } => split.done(core, index, Err(with_ids(error, || vec![id]))),
        }
    }

    /// What the batch is, for errors.
    fn what(&self) -> String {
        format!(
            "a batch of {} records for topic {:?} partition {}",
            self.records, self.key.topic, self.key.partition
        )
    }

    /// Gives up on the batch, sent and unanswered, because its topic's dedup window
    /// (less the margin) passed since it was first sent.
    fn fail_past_window(self, core: &Core) {
        let window = self.dedup_window.unwrap_or_default();
        let error = Error::OutcomeUnknown {
            what: self.what(),
            reason: format!(
                "it was sent and not answered (the connection broke), and sending it again \
                 now would not be deduplicated: more than topic {:?}'s dedup window \
                 ({} ms) less a margin of {} ms passed since it was first sent, so a copy \
                 the broker stored would be stored again; read the partition to see \
                 whether it is there, or send it again accepting a possible duplicate",
                self.key.topic,
                window.as_millis(),
                resend_margin(window).as_millis()
            ),
            ids: Vec::new(),
        };
        self.fail(core, &error);
    }

    /// Each record's [`Delivered`] from the batch's ack.
    /// Hands each waiter its outcome; returns the batch's bytes (a spare buffer, once
    /// nothing else holds them).
    fn resolve(self, core: &Core, ack: &PublishBatchResponse) -> Bytes {
        let level = self.key.ack;
        let all_ids = |ids: Vec<Option<Bytes>>, records: usize| {
            if ids.is_empty() {
                vec![None; records]
            } else {
                ids
            }
        };
        // A future may have been dropped: the caller stopped caring.
        match self.waiters {
            Waiters::Records { slot, ids } => {
                let outcome = if ack.duplicate {
                    Outcome::Each(deliveries_for(all_ids(ids, self.records), level, ack))
                } else {
                    Outcome::Stored {
                        partition: ack.partition,
                        base_offset: (level != Ack::None).then_some(ack.base_offset),
                    }
                };
                core.finish(&slot, outcome);
            }
            Waiters::Batch {
                reply,
                attached,
                reserved,
            } => {
                let outcome = if ack.duplicate {
                    // Which records carry ids decides which acks are whose: read from
                    // the batch itself (a rare answer; the ids are not kept for it).
                    batch_ids(&self.bytes)
                        .and_then(|ids| batch_answer(deliveries_for(ids, level, ack), &attached))
                } else {
                    deliveries_for(all_ids(attached, self.records), level, ack)
                        .into_iter()
                        .collect()
                };
                let _ = reply.send(outcome);
                core.give_back(reserved);
            }
            Waiters::Part { split, index, id } => {
                let outcome = deliveries_for(vec![id], level, ack)
                    .pop()
                    .unwrap_or(Err(Error::Closed));
                split.done(core, index, outcome);
            }
        }
        self.bytes
    }
}

/// `error` with the records' ids when it is an [`Error::OutcomeUnknown`].
fn with_ids(error: &Error, ids: impl FnOnce() -> Vec<Option<Bytes>>) -> Error {
    match error {
        Error::OutcomeUnknown { what, reason, .. } => Error::OutcomeUnknown {
            what: what.clone(),
            reason: reason.clone(),
            ids: ids(),
        },
        other => other.clone(),
    }
}

/// A caller's own batch (`send_batch`) checked against its topic, with the ids the
/// producer attaches; encoded in the caller's task ([`CheckedBatch::encode`]).
pub(crate) struct CheckedBatch {
    key: BatchKey,
    rules: TopicRules,
    /// Per record, the id the producer attached (`None`: it keeps its own, or none);
    /// empty when none was attached.
    attached: Vec<Option<Bytes>>,
    /// The topic's dedup window, when the records carry ids.
    dedup_window: Option<Duration>,
}

/// A caller's own batch as it goes on the wire.
pub(crate) struct EncodedOwn {
    key: BatchKey,
    bytes: Bytes,
    records: usize,
    /// Per record, the id the producer attached; empty when it attached none.
    attached: Vec<Option<Bytes>>,
    /// The topic's dedup window, when the records carry ids.
    dedup_window: Option<Duration>,
    /// See [`relative_times`].
    relative_times: bool,
}

/// The answer of a `send_batch` from each record's outcome: with only the ids the
/// producer attached (`attached`, per record; empty when it attached none).
fn batch_answer(
    outcomes: Vec<Result<Delivered>>,
    attached: &[Option<Bytes>],
) -> Result<Vec<Delivered>> {
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.map(|delivered| Delivered {
                id: attached.get(index).cloned().flatten(),
                ..delivered
            })
        })
        .collect()
}

/// Each record's id in a batch the producer encoded (its duplicate answer names
/// the records with ids).
fn batch_ids(bytes: &Bytes) -> Result<Vec<Option<Bytes>>> {
    let (_, records) =
        tidelog_storage::batch::decode_batch(bytes).map_err(|error| Error::Corrupt {
            reason: format!("a batch the producer made does not decode: {error}"),
        })?;
    Ok(records.into_iter().map(|record| record.id).collect())
}

/// Checks a caller's batch against its topic under the front's lock and attaches ids
/// where the topic wants them: `None` when the topic is not described yet.
pub(crate) fn check_batch<R: AsRef<NewRecord>>(
    front: &mut Front,
    topic: &str,
    partition: u32,
    ack: Ack,
    records: &[R],
) -> Option<Result<CheckedBatch>> {
    let name = front.known_topic(topic)?;
    let state = front.topic(topic)?;
    if state.may_have_grown_to(partition) {
        // Partitions may have been added since: describe the topic again first.
        return None;
    }
    if partition >= state.partitions {
        return Some(Err(Error::InvalidRecord {
            reason: tidelog_storage::topic::no_such_partition(
                topic,
                state.partitions as usize,
                partition,
            ),
        }));
    }
    if records.is_empty() {
        return Some(Err(Error::InvalidRecord {
            reason: "send_batch needs at least one record".into(),
        }));
    }
    if let Err(error) = records.iter().try_for_each(|r| state.check(r.as_ref())) {
        return Some(Err(error));
    }
    let rules = TopicRules::of(state);
    let attached = if state.attach_ids && records.iter().any(|r| r.as_ref().id.is_none()) {
        records
            .iter()
            .map(|r| r.as_ref().id.is_none().then(|| front.next_id()))
            .collect()
    } else {
        Vec::new()
    };
    let has_ids = !attached.is_empty() || records.iter().any(|r| r.as_ref().id.is_some());
    Some(Ok(CheckedBatch {
        key: BatchKey {
            topic: name,
            partition,
            ack,
        },
        rules,
        attached,
        dedup_window: rules.dedup_window.filter(|_| has_ids),
    }))
}

impl CheckedBatch {
    /// Encodes `records` (the ones checked) with the attached ids, where they lie
    /// unless an id had to be attached (then through copies that carry it).
    pub(crate) fn encode<R: AsRef<NewRecord>>(
        self,
        records: &[R],
        compression: tidelog_storage::Compression,
        buffer: Vec<u8>,
    ) -> Result<EncodedOwn> {
        let options = self.rules.options(compression);
        let encoded = if self.attached.is_empty() {
            encode_batch_into(records, &options, buffer)
        } else {
            let with_ids: Vec<NewRecord> = records
                .iter()
                .zip(&self.attached)
                .map(|(r, id)| {
                    let mut record = r.as_ref().clone();
                    if id.is_some() {
                        record.id.clone_from(id);
                    }
                    record
                })
                .collect();
            encode_batch_into(&with_ids, &options, buffer)
        };
        let encoded = encoded.map_err(|error| Error::InvalidRecord {
            reason: error.to_string(),
        })?;
        Ok(EncodedOwn {
            key: self.key,
            bytes: Bytes::from(encoded.bytes),
            records: records.len(),
            attached: self.attached,
            dedup_window: self.dedup_window,
            relative_times: relative_times(records),
        })
    }
}

/// What encoding a topic's batch needs to know of it.
#[derive(Debug, Clone, Copy)]
struct TopicRules {
    default_ttl_ms: Option<u64>,
    max_message_bytes: u64,
    priority_levels: u8,
    dedup_window: Option<Duration>,
}

impl TopicRules {
    fn of(state: &TopicState) -> TopicRules {
        TopicRules {
            dedup_window: state.dedup_window,
            default_ttl_ms: state.default_ttl_ms,
            max_message_bytes: state.max_message_bytes,
            priority_levels: state.priority_levels,
        }
    }

    fn options(self, compression: tidelog_storage::Compression) -> EncodeOptions {
        EncodeOptions {
            now_ms: now_ms(),
            default_ttl_ms: self.default_ttl_ms,
            compression,
            max_message_bytes: self.max_message_bytes,
            priority_levels: self.priority_levels,
        }
    }
}

/// The open publish stream.
struct Stream {
    requests: mpsc::Sender<PublishStreamRequest>,
    responses: tidelog_proto::frames::Messages<PublishStreamResponse>,
}

struct Sender {
    client: Client,
    config: ProducerConfig,
    core: Arc<Core>,
    /// Sealed and encoded, waiting for room in the window; resends go first.
    ready: VecDeque<Outgoing>,
    /// Sent, in the order the broker answers.
    in_flight: VecDeque<Outgoing>,
    stream: Option<Stream>,
    /// When to try to open the stream again.
    retry_at: Instant,
    backoff: Backoff,
    request_id: u64,
    flushes: Vec<oneshot::Sender<()>>,
    closing: Option<Vec<oneshot::Sender<()>>>,
}

pub(crate) async fn run(
    client: Client,
    config: ProducerConfig,
    core: Arc<Core>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut sender = Sender {
        client,
        backoff: Backoff::new(config.backoff.0, config.backoff.1),
        config,
        core: core.clone(),
        ready: VecDeque::new(),
        in_flight: VecDeque::new(),
        stream: None,
        retry_at: Instant::now(),
        request_id: 0,
        flushes: Vec::new(),
        closing: None,
    };
    let mut commands_open = true;
    loop {
        sender.take_sealed(None);
        let idle =
            core.front().is_empty() && sender.ready.is_empty() && sender.in_flight.is_empty();
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
            core.front().next_deadline()
        } else {
            None
        };
        let retry_due = (sender.stream.is_none() && !idle).then_some(sender.retry_at);
        // A stream that stays open without answering (a frozen broker) is given up
        // when its oldest batch reaches the delivery timeout.
        let stall_due = if sender.stream.is_some() {
            sender
                .in_flight
                .iter()
                .map(|b| b.opened + sender.config.delivery_timeout)
                .min()
        } else {
            None
        };
        tokio::select! {
            () = core.wake.notified() => {}
            command = commands.recv(), if commands_open && sender.closing.is_none() => match command {
                Some(command) => sender.command(command).await,
                None => {
                    commands_open = false;
                    sender.drain();
                }
            },
            response = next_response(&mut sender.stream) => sender.response(response),
            () = sleep_until(linger_due), if linger_due.is_some() => {}
            () = sleep_until(retry_due), if retry_due.is_some() => {}
            () = sleep_until(stall_due), if stall_due.is_some() => {
                tracing::debug!("publish stream: no answer within the delivery timeout, reconnecting");
                // Its unanswered batches past the timeout fail (outcome unknown), the
                // others are sent again on a new stream.
                sender.broken();
            }
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

/// When the task ends (closed, every producer dropped, or its runtime shutting down),
/// nothing is left waiting forever: what it still held fails with [`Error::Closed`],
/// and later sends are refused.
impl Drop for Sender {
    fn drop(&mut self) {
        let left = {
            let mut front = self.core.front();
            front.closed = true;
            front.drain()
        };
        for batch in left {
            self.core
                .finish(&batch.handle, Outcome::Failed(Error::Closed));
        }
        for batch in self.in_flight.drain(..).chain(self.ready.drain(..)) {
            batch.fail(&self.core, &Error::Closed);
        }
    }
}

impl Sender {
    async fn command(&mut self, command: Command) {
        match command {
            Command::Batch {
                batch,
                reply,
                reserved,
            } => {
                // Order within the partition: what `send` gathered there goes first.
                let sealed = self.core.front().seal(&batch.key);
                self.enqueue(sealed);
                self.ready.push_back(Outgoing {
                    key: batch.key,
                    bytes: batch.bytes,
                    records: batch.records,
                    waiters: Waiters::Batch {
                        reply,
                        attached: batch.attached,
                        reserved,
                    },
                    opened: Instant::now(),
                    first_sent: None,
                    dedup_window: batch.dedup_window,
                    relative_times: batch.relative_times,
                });
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

    /// Seals every open batch (flush, close).
    fn drain(&mut self) {
        let sealed = self.core.front().drain();
        self.enqueue(sealed);
    }

    /// Takes what `send` sealed (and, with `expire_at`, what lingered long enough)
    /// and encodes it into the ready queue.
    fn take_sealed(&mut self, expire_at: Option<Instant>) {
        let sealed = self.core.front().take_sealed(expire_at);
        if !sealed.is_empty() {
            self.enqueue(sealed);
        }
    }

    /// Encodes sealed batches into the ready queue.
    fn enqueue(&mut self, sealed: Vec<SealedBatch>) {
        if sealed.is_empty() {
            return;
        }
        let batches: Vec<(SealedBatch, Option<TopicRules>)> = {
            let front = self.core.front();
            sealed
                .into_iter()
                .map(|batch| {
                    let rules = front.topic(&batch.key.topic).map(TopicRules::of);
                    (batch, rules)
                })
                .collect()
        };
        for (batch, rules) in batches {
            tracing::trace!(
                records = batch.items.len(),
                bytes = batch.bytes,
                partition = batch.key.partition,
                "batch sealed"
            );
            if let Some(outgoing) = self.encode(batch, rules) {
                self.ready.push_back(outgoing);
            }
        }
    }

    fn encode(&self, batch: SealedBatch, rules: Option<TopicRules>) -> Option<Outgoing> {
        let Some(rules) = rules else {
            // Forgotten after a NOT_FOUND: the topic was deleted under the producer.
            let error = Error::TopicNotFound {
                topic: batch.key.topic.to_string(),
            };
            self.core.finish(&batch.handle, Outcome::Failed(error));
            return None;
        };
        let options = rules.options(self.config.compression);
        match encode_batch_into(&batch.items, &options, self.core.encode_buffer()) {
            Ok(encoded) => {
                let ids = if batch.items.iter().any(|r| r.id.is_some()) {
                    batch.items.iter().map(|r| r.id.clone()).collect()
                } else {
                    Vec::new()
                };
                let dedup_window = rules.dedup_window.filter(|_| !ids.is_empty());
                Some(Outgoing {
                    key: batch.key,
                    bytes: Bytes::from(encoded.bytes),
                    records: batch.items.len(),
                    waiters: Waiters::Records {
                        slot: batch.handle,
                        ids,
                    },
                    opened: batch.opened,
                    first_sent: None,
                    dedup_window,
                    relative_times: relative_times(&batch.items),
                })
            }
            Err(error) => {
                let error = Error::InvalidRecord {
                    reason: error.to_string(),
                };
                self.core.finish(&batch.handle, Outcome::Failed(error));
                None
            }
        }
    }

    /// Sends the records of `batch` again, one per batch, ahead of what is ready (after
    /// what is already in flight to the partition: the only case where the producer
    /// does not keep a partition's order). Their outcomes go to the batch's waiters
    /// once all are in.
    fn split(&mut self, batch: Outgoing) {
        let records = match tidelog_storage::batch::decode_batch(&batch.bytes) {
            Ok((_, records)) => records,
            Err(error) => {
                let error = Error::Corrupt {
                    reason: format!("a batch the producer made does not decode: {error}"),
                };
                batch.fail(&self.core, &error);
                return;
            }
        };
        let rules = self
            .core
            .front()
            .topic(&batch.key.topic)
            .map(TopicRules::of);
        let Some(rules) = rules else {
            let error = Error::TopicNotFound {
                topic: batch.key.topic.to_string(),
            };
            batch.fail(&self.core, &error);
            return;
        };
        let Outgoing {
            key,
            waiters,
            opened,
            dedup_window,
            relative_times,
            ..
        } = batch;
        let split = Arc::new(Split {
            state: std::sync::Mutex::new(SplitState {
                waiters: Some(waiters),
                outcomes: (0..records.len()).map(|_| None).collect(),
                left: records.len(),
            }),
        });
        let now = now_ms();
        let mut parts = Vec::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            let id = record.id.clone();
            let again = NewRecord {
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp_ms: Some(record.timestamp_ms),
                // The expiry as encoded (the topic's default applied); none = never.
                ttl_ms: Some(record.expires_at_ms.map_or(0, |at| {
                    u64::try_from(at.saturating_sub(now)).unwrap_or(0).max(1)
                })),
                id: record.id,
                deliver_at_ms: record.deliver_at_ms,
                delay_ms: None,
                priority: record.priority,
            };
            match encode_batch(&[again], &rules.options(self.config.compression)) {
                Ok(encoded) => parts.push(Outgoing {
                    key: key.clone(),
                    bytes: Bytes::from(encoded.bytes),
                    records: 1,
                    waiters: Waiters::Part {
                        split: split.clone(),
                        index,
                        id,
                    },
                    opened,
                    // The batch was refused whole: these are first copies.
                    first_sent: None,
                    dedup_window,
                    // Each part keeps its record's distances from the batch's first
                    // timestamp, so it is moved as the batch would have been.
                    relative_times,
                }),
                Err(error) => {
                    let error = Error::InvalidRecord {
                        reason: error.to_string(),
                    };
                    split.done(&self.core, index, Err(error));
                }
            }
        }
        for part in parts.into_iter().rev() {
            self.ready.push_front(part);
        }
    }

    /// Sends ready batches (and lingered ones) while the window has room.
    fn fill_window(&mut self) {
        let window = self.config.in_flight.max(1);
        while self.stream.is_some() && self.in_flight.len() < window {
            if self.ready.is_empty() {
                self.take_sealed(Some(Instant::now()));
            }
            let Some(mut batch) = self.ready.pop_front() else {
                break;
            };
            if past_resend_window(batch.first_sent, batch.dedup_window, Instant::now()) {
                batch.fail_past_window(&self.core);
                continue;
            }
            if !self.send(&batch) {
                self.ready.push_front(batch);
                self.broken();
                break;
            }
            batch.first_sent.get_or_insert_with(Instant::now);
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
                relative_times: batch.relative_times,
            }),
        };
        stream.requests.try_send(request).is_ok()
    }

    /// Opens the publish stream, and sends again what was in flight.
    async fn open(&mut self) {
        let window = self.config.in_flight.max(1);
        let (requests, receiver) = mpsc::channel(window + 1);
        // A broker that accepts the connection and never answers (frozen) must not
        // hold the records past their delivery timeout.
        let now = Instant::now();
        let due = self
            .in_flight
            .iter()
            .chain(&self.ready)
            .map(|b| b.opened + self.config.delivery_timeout)
            .min()
            .unwrap_or(now + OPEN_TIMEOUT_MAX)
            .clamp(now + OPEN_TIMEOUT_MIN, now + OPEN_TIMEOUT_MAX);
        let opened = tokio::time::timeout_at(
            due.into(),
            crate::wire::publish_stream(self.client.conn(), ReceiverStream::new(receiver)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::unavailable(
                "opening the publish stream timed out",
            ))
        });
        match opened {
            Ok(responses) => {
                self.stream = Some(Stream {
                    requests,
                    responses,
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

    /// Fails the batches that waited past the delivery timeout, those still open
    /// included (while the broker is away, batches are not sealed by their linger).
    fn expire_undeliverable(&mut self) {
        let timeout = self.config.delivery_timeout;
        let now = Instant::now();
        if self
            .core
            .front()
            .next_deadline()
            .is_some_and(|due| due <= now)
        {
            self.take_sealed(Some(now));
        }
        let expired = |batch: &Outgoing| {
            batch.opened + timeout <= now
                || past_resend_window(batch.first_sent, batch.dedup_window, now)
        };
        for queue in [&mut self.in_flight, &mut self.ready] {
            let (gone, kept): (VecDeque<Outgoing>, VecDeque<Outgoing>) =
                queue.drain(..).partition(expired);
            *queue = kept;
            for batch in gone {
                if batch.opened + timeout > now {
                    batch.fail_past_window(&self.core);
                } else if batch.first_sent.is_some() {
                    // Sent and never answered: the broker may have stored it.
                    let error = Error::OutcomeUnknown {
                        what: batch.what(),
                        reason: format!(
                            "it was sent and no answer came within {timeout:?} \
                             (ProducerConfig::delivery_timeout): the broker may have stored it \
                             before the connection broke; on a topic with a dedup window, \
                             sending the same records again with the same ids (this error's ids) \
                             within the window is answered with the stored originals, not stored \
                             twice; without ids a resend may store them twice"
                        ),
                        ids: Vec::new(),
                    };
                    batch.fail(&self.core, &error);
                } else {
                    let what = batch.what();
                    batch.fail(
                        &self.core,
                        &Error::Timeout {
                            what,
                            after: timeout,
                        },
                    );
                }
            }
        }
    }

    fn fail_all(&mut self, error: &Error) {
        self.drain();
        for batch in self.in_flight.drain(..).chain(self.ready.drain(..)) {
            batch.fail(&self.core, error);
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
                        batch.fail(&self.core, &error);
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
            Some(publish_stream_response::Outcome::BatchResponse(ack)) => {
                let bytes = batch.resolve(&self.core, &ack);
                self.core.keep_buffer(bytes);
            }
            Some(publish_stream_response::Outcome::Error(status)) => {
                let code = Code::from_i32(status.code);
                if code == Code::Unavailable && !partition_refused(code, &status.message) {
                    // The broker is stopping or the partition is poisoned: send it
                    // (and what followed it) again after a backoff, in order. (A
                    // partition recovery refused to open fails the batch below: the
                    // broker answered, nothing was stored, a resend cannot help.)
                    self.in_flight.push_front(batch);
                    self.broken();
                } else {
                    if code == Code::InvalidArgument
                        && status.message.contains(BATCH_DEDUPLICATED_WHOLE)
                    {
                        // Some records' ids were stored before (a caller's resend), some
                        // are new: each record goes again in a batch of its own, and is
                        // stored or answered with its original.
                        self.split(batch);
                        return;
                    }
                    if code == Code::NotFound {
                        self.core.front().forget(&batch.key.topic);
                    }
                    if status.message.contains("there is no partition") {
                        // The producer's partition count is stale: describe again now.
                        self.core.refresh.notify_one();
                    }
                    let error = Error::from_code(
                        "PublishBatch",
                        Some(&batch.key.topic),
                        code,
                        &status.message,
                    );
                    batch.fail(&self.core, &error);
                }
            }
            Some(publish_stream_response::Outcome::Response(_)) | None => {
                let error = Error::Broker {
                    rpc: "PublishStream",
                    code: Code::Internal,
                    message: "a batch was answered without a batch_response".into(),
                };
                batch.fail(&self.core, &error);
            }
        }
    }
}

/// The outcome of each record of a batch: `base_offset + index` (no offset when sent
/// with [`Ack::None`]); for a duplicate batch, the originals the ack names, one per
/// record with an id. Each record's id moves into its outcome.
fn deliveries_for(
    ids: Vec<Option<Bytes>>,
    level: Ack,
    ack: &PublishBatchResponse,
) -> Vec<Result<Delivered>> {
    if !ack.duplicate {
        let offsets = level != Ack::None;
        return ids
            .into_iter()
            .enumerate()
            .map(|(index, id)| {
                Ok(Delivered {
                    partition: ack.partition,
                    offset: offsets.then(|| ack.base_offset + index as u64),
                    id,
                    duplicate: false,
                })
            })
            .collect();
    }
    let mut originals = ack.acks.iter();
    ids.into_iter()
        .map(|id| match id {
            Some(id) => match originals.next() {
                Some(original) => Ok(Delivered {
                    partition: original.partition,
                    offset: Some(original.offset),
                    id: Some(id),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_proto::v1::MessageAck;

    #[test]
    fn a_batch_is_sent_again_only_within_its_dedup_window_less_the_margin() {
        let first = Instant::now();
        let window = Some(Duration::from_secs(2));
        assert_eq!(
            resend_margin(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            resend_margin(Duration::from_secs(3600)),
            Duration::from_secs(5)
        );
        let at = |ms| first + Duration::from_millis(ms);
        assert!(!past_resend_window(Some(first), window, at(1_499)));
        assert!(past_resend_window(Some(first), window, at(1_500)));
        // Never sent, or no dedup window (or no ids): no limit but the delivery timeout.
        assert!(!past_resend_window(None, window, at(60_000)));
        assert!(!past_resend_window(Some(first), None, at(60_000)));
    }

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
        let got: Vec<Option<u64>> = deliveries_for(ids.to_vec(), Ack::Written, &ack)
            .into_iter()
            .map(|d| d.unwrap().offset)
            .collect();
        assert_eq!(got, [Some(40), Some(41), Some(42)]);
        // Ack::None: stored, no offsets (the broker answers base_offset 0).
        let none = PublishBatchResponse {
            base_offset: 0,
            ..ack.clone()
        };
        let got: Vec<Delivered> = deliveries_for(ids.to_vec(), Ack::None, &none)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(got.iter().all(|d| d.offset.is_none() && d.partition == 2));
        assert_eq!(got[1].id.as_deref(), Some(&b"a"[..]));
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
        let got = deliveries_for(ids.to_vec(), Ack::Durable, &ack);
        assert_eq!(got[0].as_ref().unwrap().offset, Some(7));
        assert!(got[0].as_ref().unwrap().duplicate);
        assert!(matches!(got[1], Err(Error::InvalidArgument { .. })));
        assert_eq!(got[2].as_ref().unwrap().offset, Some(9));
    }
}
