//! The `tidelog.v1.Publisher` service: unary `Publish` and the pipelined
//! `PublishStream`.
//!
//! A request goes through three steps:
//! 1. [`prepare`]: validate, choose each message's partition (explicit, else key hash,
//!    else round robin; see [`crate::partitioner`]) and group the messages by
//!    partition, keeping request order within each partition. On a topic with a dedup
//!    window, a message whose id an earlier message of the request carries is set
//!    aside as that message's duplicate here, in request order: the appends run in
//!    partition order, and would otherwise keep whichever went to the lower partition;
//! 2. [`append`]: one storage append (one record batch) per partition. An append is a
//!    short `pwrite` into the page cache, so it runs inline on the async worker;
//! 3. [`complete`]: for ack DURABLE, await each partition's durability future (the
//!    group-commit flusher fsyncs in the background), then answer.
//!
//! On a stream, steps 1-2 of request N+1 run while step 3 of request N still waits
//! for its fsync, so a producer pipelines many requests into one group commit; the
//! answers still go out in request order, because fsyncs complete in offset order.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tidelog_proto::v1::publisher_server::Publisher;
use tidelog_proto::v1::{
    MessageAck, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
    PublishStreamRequest, PublishStreamResponse, publish_stream_response::Outcome,
};
use tidelog_storage::{AckLevel, NewRecord, Partition, Placed, Topic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::auth::quota::QuotaKind;
use crate::auth::{Caller, Target};
use crate::convert;
use crate::partitioner;

/// Requests of one PublishStream that may be appended but not yet answered. Past
/// this the server stops reading the stream and HTTP/2 flow control pushes back on
/// the producer. 64 requests keep a group commit busy without holding much memory.
pub const PUBLISH_STREAM_IN_FLIGHT_MAX: usize = 64;

/// The Publisher service.
#[derive(Debug, Clone)]
pub struct PublisherService {
    state: Arc<AppState>,
}

impl PublisherService {
    pub fn new(state: Arc<AppState>) -> Self {
        PublisherService { state }
    }
}

/// The messages of one request that go to one partition.
#[derive(Debug)]
struct PartitionBatch {
    partition: u32,
    records: Vec<NewRecord>,
    /// Position of each record in the request, for the acks.
    indexes: Vec<usize>,
}

/// A validated request, grouped by partition.
#[derive(Debug)]
pub struct Prepared {
    topic: Arc<Topic>,
    ack: AckLevel,
    message_count: usize,
    batches: Vec<PartitionBatch>,
    /// (index, index of the earlier message of the request with the same id): not
    /// appended, acked as that message's duplicate.
    repeats: Vec<(usize, usize)>,
}

/// Appended messages and what a DURABLE ack still waits for.
#[derive(Debug)]
pub struct Written {
    ack: AckLevel,
    acks: Vec<MessageAck>,
    /// (partition, last offset appended to it).
    durable_waits: Vec<(Arc<Partition>, u64)>,
}

/// Validates `request` and chooses every message's partition.
pub fn prepare(state: &AppState, request: PublishRequest) -> Result<Prepared, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    if request.messages.is_empty() {
        return Err(Status::invalid_argument(
            "the request has no messages; send at least one",
        ));
    }
    let ack = convert::ack_level(request.ack)?;
    let partition_count = topic.partitions().len() as u32;
    let message_count = request.messages.len();
    // Requests usually send runs of messages to one partition (often all of them):
    // the partition map is only consulted when the partition changes, and the first
    // batch is sized for the rest of the request, so a 1000-message request to one
    // partition does no per-message map lookups and no Vec regrowth.
    let mut batches: Vec<PartitionBatch> = Vec::new();
    let mut positions: BTreeMap<u32, usize> = BTreeMap::new();
    let mut current = usize::MAX;
    let dedup = topic.deduplicates_ids();
    // Ids in this request so far, with the first message carrying each (dedup only).
    let mut first_with_id: HashMap<bytes::Bytes, usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (index, mut message) in request.messages.into_iter().enumerate() {
        let partition = match message.partition.take() {
            Some(partition) => {
                if partition >= partition_count {
                    // Names the valid range.
                    convert::or_status(topic.partition(partition))?;
                }
                partition
            }
            None if !message.key.is_empty() => {
                partitioner::partition_for_key(&message.key, partition_count)
            }
            None => state.round_robin.next(partition_count),
        };
        if dedup && !message.id.is_empty() {
            match first_with_id.entry(message.id.clone()) {
                Entry::Occupied(first) => {
                    // Still checked: a malformed duplicate fails the request.
                    convert::new_record(index, message)?;
                    repeats.push((index, *first.get()));
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(index);
                }
            }
        }
        if batches
            .get(current)
            .is_none_or(|b| b.partition != partition)
        {
            current = *positions.entry(partition).or_insert_with(|| {
                let capacity = if batches.is_empty() {
                    message_count - index
                } else {
                    0
                };
                batches.push(PartitionBatch {
                    partition,
                    records: Vec::with_capacity(capacity),
                    indexes: Vec::with_capacity(capacity),
                });
                batches.len() - 1
            });
        }
        let batch = &mut batches[current];
        // Made where it is pushed, so the record is built in place rather than moved.
        batch.records.push(convert::new_record(index, message)?);
        batch.indexes.push(index);
    }
    // Appends go in partition order, as before.
    batches.sort_unstable_by_key(|b| b.partition);
    check_queue_caps(state, &topic, &batches)?;
    Ok(Prepared {
        topic,
        ack,
        message_count,
        batches,
        repeats,
    })
}

/// Backpressure: refuses the publish when it would put one of the topic's queues over
/// the topic's ready caps and the topic's overflow policy is to reject (discard new).
fn check_queue_caps(
    state: &AppState,
    topic: &Topic,
    batches: &[PartitionBatch],
) -> Result<(), Status> {
    let config = topic.config();
    if !config.has_queue_caps() {
        return Ok(());
    }
    // What the publish adds to the ready backlog now: delayed messages wait.
    let now_ms = state.store.clock().now_ms();
    let (messages, bytes) = batches
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.due_at(now_ms))
        .fold((0u64, 0u64), |(n, bytes), r| {
            (n + 1, bytes + r.payload_bytes())
        });
    convert::or_status(tidelog_storage::queue::admin::admit(
        &*state.store,
        topic,
        messages,
        bytes,
    ))
}

/// Appends each partition's messages as one batch. On an error the batches of
/// partitions appended before it stay stored (the API documents this).
pub fn append(state: &AppState, prepared: Prepared) -> Result<Written, Status> {
    let mut acks = vec![MessageAck::default(); prepared.message_count];
    // The last offset each partition's DURABLE ack waits for (a duplicate's original
    // may be in another partition than the one the message was sent to).
    let mut durable_ends: BTreeMap<u32, u64> = BTreeMap::new();
    let topic = &prepared.topic;
    for batch in prepared.batches {
        // Sizes one by one only when duplicates are possible, to leave them out.
        let sizes: Vec<u64> = if batch.records.iter().any(|r| r.id.is_some()) {
            batch.records.iter().map(NewRecord::payload_bytes).collect()
        } else {
            Vec::new()
        };
        let bytes: u64 = if sizes.is_empty() {
            batch.records.iter().map(NewRecord::payload_bytes).sum()
        } else {
            sizes.iter().sum()
        };
        let count = batch.records.len() as u64;
        match convert::or_status(topic.append(batch.partition, batch.records))? {
            Placed::All(appended) => {
                state.metrics.published(topic.name(), count, bytes);
                for (delta, &index) in batch.indexes.iter().enumerate() {
                    acks[index] = MessageAck {
                        partition: batch.partition,
                        offset: appended.base_offset + delta as u64,
                        ..MessageAck::default()
                    };
                }
                note_durable_end(&mut durable_ends, batch.partition, appended.last_offset);
            }
            Placed::Each {
                appended,
                placements,
            } => {
                let duplicates = placements.iter().filter(|p| p.duplicate).count() as u64;
                // Duplicates were not stored: count only the rest.
                let duplicate_bytes: u64 = placements
                    .iter()
                    .zip(&sizes)
                    .filter(|(p, _)| p.duplicate)
                    .map(|(_, size)| size)
                    .sum();
                let stored_bytes = bytes - duplicate_bytes;
                if appended.is_some() {
                    state
                        .metrics
                        .published(topic.name(), count - duplicates, stored_bytes);
                }
                state.metrics.duplicates(topic.name(), duplicates);
                for (placement, &index) in placements.into_iter().zip(&batch.indexes) {
                    note_durable_end(&mut durable_ends, placement.partition, placement.offset);
                    acks[index] = MessageAck {
                        partition: placement.partition,
                        offset: placement.offset,
                        id: placement.assigned_id.unwrap_or_default(),
                        duplicate: placement.duplicate,
                    };
                }
            }
        }
    }
    if !prepared.repeats.is_empty() {
        state
            .metrics
            .duplicates(topic.name(), prepared.repeats.len() as u64);
    }
    for (index, first) in prepared.repeats {
        acks[index] = MessageAck {
            id: bytes::Bytes::new(),
            duplicate: true,
            ..acks[first].clone()
        };
    }
    let durable_waits = durable_ends
        .into_iter()
        .map(|(partition, last)| {
            convert::or_status(topic.partition(partition)).map(|p| (p.clone(), last))
        })
        .collect::<Result<Vec<_>, Status>>()?;
    // Backpressure that dead-letters the oldest: the topic's queues look at once.
    state.queues.topic_published(&prepared.topic);
    Ok(Written {
        ack: prepared.ack,
        acks,
        durable_waits,
    })
}

fn note_durable_end(ends: &mut BTreeMap<u32, u64>, partition: u32, offset: u64) {
    let end = ends.entry(partition).or_insert(offset);
    *end = (*end).max(offset);
}

/// Waits for what the ack level requires and builds the response.
pub async fn complete(written: Written) -> Result<PublishResponse, Status> {
    match written.ack {
        AckLevel::None => Ok(PublishResponse { acks: Vec::new() }),
        AckLevel::Written => Ok(PublishResponse { acks: written.acks }),
        AckLevel::Durable => {
            // The fsyncs run concurrently in the flusher; awaiting them one after the
            // other costs no more than the slowest.
            for (partition, last_offset) in written.durable_waits {
                convert::or_status(partition.wait_durable(last_offset).await)?;
            }
            Ok(PublishResponse { acks: written.acks })
        }
    }
}

/// One publish, all three steps.
pub async fn publish(state: &AppState, request: PublishRequest) -> Result<PublishResponse, Status> {
    state
        .queues
        .make_room(&request.topic, || prost::Message::encoded_len(&request))
        .await;
    let written = append(state, prepare(state, request)?)?;
    complete(written).await
}

/// A stream request appended: messages or a record batch.
enum Appended {
    Messages(Written),
    Batch(crate::batch::BatchWritten),
}

/// What the stream's reader hands its responder, in request order.
enum Pending {
    Request {
        request_id: u64,
        outcome: Result<Appended, Status>,
    },
    /// The stream ends with this status after the earlier requests are answered.
    End(Status),
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let started = Instant::now();
        if self.state.shutdown.is_triggered() {
            return Err(shutting_down());
        }
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
        {
            Ok(()) => {
                self.state.auth.throttle_publish(&request).await;
                publish(&self.state, request.into_inner()).await
            }
            Err(status) => Err(status),
        };
        self.state.metrics.rpc_finished(
            "Publish",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let started = Instant::now();
        if self.state.shutdown.is_triggered() {
            return Err(shutting_down());
        }
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
        {
            Ok(()) => {
                self.state.auth.throttle_publish(&request).await;
                crate::batch::publish(&self.state, request.into_inner()).await
            }
            Err(status) => Err(status),
        };
        self.state.metrics.rpc_finished(
            "PublishBatch",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    type PublishStreamStream = ReceiverStream<Result<PublishStreamResponse, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Ok(self.publish_stream_from(request))
    }
}

impl PublisherService {
    /// PublishStream over the requests `request` carries: tonic's decoder of the
    /// stream, or the one [`crate::zero_copy`] uses.
    pub fn publish_stream_from<S>(
        &self,
        request: Request<S>,
    ) -> Response<ReceiverStream<Result<PublishStreamResponse, Status>>>
    where
        S: Stream<Item = Result<PublishStreamRequest, Status>> + Send + Unpin + 'static,
    {
        let started = Instant::now();
        // Each request names its topic: checked one by one, so a revoked token or a
        // changed rule applies from the next request on.
        let caller = request.extensions().get::<Caller>().cloned();
        let mut inbound = request.into_inner();
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(PUBLISH_STREAM_IN_FLIGHT_MAX);
        let (response_tx, response_rx) = mpsc::channel(PUBLISH_STREAM_IN_FLIGHT_MAX);
        let guard = self.state.metrics.open_stream("publish");

        // Reader: validates and appends in request order, without waiting for fsyncs.
        // After a batch request it takes every request that has already arrived (up to
        // a limit) before appending, so a partition's batches are written together.
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = state.shutdown.wait() => {
                        let _ = pending_tx.send(Pending::End(shutting_down())).await;
                        return;
                    }
                    next = inbound.next() => next,
                };
                // Only batches are written together: a per-message request is taken
                // and answered as it comes (reading ahead made that form slower).
                let arrived = read_ahead(next, &mut inbound).await;
                let mut answers = Vec::with_capacity(arrived.len());
                // Batch requests taken but not yet appended, in order.
                let mut batches: Vec<(u64, PublishBatchRequest)> = Vec::new();
                for next in arrived {
                    let step = match next {
                        Some(Ok(item)) => take(&state, caller.as_ref(), item).await,
                        // The client half-closed: answer what is outstanding, then end
                        // OK.
                        None => Step::Close,
                        // A message over the size limit breaks the stream's framing.
                        Some(Err(status)) => Step::End(crate::request_limit::rewrite_status(
                            status,
                            state.config.max_request_bytes,
                        )),
                    };
                    if !matches!(step, Step::Batch { .. }) {
                        // What came before is appended, and answered, first.
                        append_batches(&state, &mut batches, &mut answers);
                    }
                    let closes = matches!(step, Step::Close | Step::End(_));
                    match step {
                        Step::Batch { request_id, batch } => {
                            batches.push((request_id, batch));
                            continue;
                        }
                        Step::Messages {
                            request_id,
                            request,
                        } => answers.push(Pending::Request {
                            request_id,
                            outcome: prepare(&state, request)
                                .and_then(|p| append(&state, p))
                                .map(Appended::Messages),
                        }),
                        Step::Failed { request_id, status } => answers.push(Pending::Request {
                            request_id,
                            outcome: Err(status),
                        }),
                        Step::End(status) => answers.push(Pending::End(status)),
                        Step::Close => {}
                    }
                    if !hand_over(&pending_tx, &mut answers).await || closes {
                        return;
                    }
                }
                append_batches(&state, &mut batches, &mut answers);
                if !hand_over(&pending_tx, &mut answers).await {
                    return;
                }
            }
        });

        // Responder: answers in order, each once its ack level is met.
        let metrics = self.state.metrics.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut final_error = None;
            while let Some(pending) = pending_rx.recv().await {
                let response = match pending {
                    Pending::Request {
                        request_id,
                        outcome,
                    } => {
                        let result = match outcome {
                            Ok(Appended::Messages(written)) => {
                                complete(written).await.map(Outcome::Response)
                            }
                            Ok(Appended::Batch(written)) => crate::batch::complete(written)
                                .await
                                .map(Outcome::BatchResponse),
                            Err(status) => Err(status),
                        };
                        let outcome = match result {
                            Ok(outcome) => outcome,
                            Err(status) => {
                                metrics.rpc_error("PublishStream", status.code());
                                Outcome::Error(convert::error_status(&status))
                            }
                        };
                        Ok(PublishStreamResponse {
                            request_id,
                            outcome: Some(outcome),
                        })
                    }
                    Pending::End(status) => {
                        final_error = Some(status.code());
                        Err(status)
                    }
                };
                let end = response.is_err();
                if response_tx.send(response).await.is_err() || end {
                    break;
                }
            }
            metrics.rpc_finished("PublishStream", started, final_error);
        });
        Response::new(ReceiverStream::new(response_rx))
    }
}

/// The most requests the stream's reader takes at once, when they have arrived: as
/// many as a producer keeps in flight (tidelog-client's default is 8), a few hundred
/// KB to a few MB of batches, written together.
const STREAM_READ_AHEAD_MAX: usize = 16;

/// The reader takes no more requests once those taken hold this many batch bytes, so a
/// stream of large requests holds a few of them at most (a write of 1 MiB already
/// costs the page cache as little a byte as larger ones).
const STREAM_READ_AHEAD_BYTES: usize = 4 << 20;

/// What the stream's reader does with one request, once its quota and access are
/// checked.
enum Step {
    /// Messages to prepare and append.
    Messages {
        request_id: u64,
        request: PublishRequest,
    },
    /// A batch to append, with the batches in a row to the same partition.
    Batch {
        request_id: u64,
        batch: PublishBatchRequest,
    },
    /// The request fails alone.
    Failed { request_id: u64, status: Status },
    /// The stream ends with this status after the earlier requests are answered.
    End(Status),
    /// The client half-closed the stream: it ends OK once the earlier requests are
    /// answered.
    Close,
}

/// Hands `answers` to the responder in order (emptying it); false once the stream is
/// over: the responder has gone, or an answer ended the stream.
async fn hand_over(to: &mpsc::Sender<Pending>, answers: &mut Vec<Pending>) -> bool {
    for pending in answers.drain(..) {
        let end = matches!(pending, Pending::End(_));
        if to.send(pending).await.is_err() || end {
            return false;
        }
    }
    true
}

/// Checks one PublishStream request against the caller's quotas (waiting while over
/// one) and access, and says what to do with it.
async fn take(state: &AppState, caller: Option<&Caller>, item: PublishStreamRequest) -> Step {
    // Over a quota, the stream stops reading for a while.
    state.auth.throttle(caller, QuotaKind::Requests, || 1).await;
    state
        .auth
        .throttle(caller, QuotaKind::PublishBytes, || {
            prost::Message::encoded_len(&item)
        })
        .await;
    let topic = match (&item.request, &item.batch) {
        (Some(request), _) => Some(request.topic.as_str()),
        (None, Some(batch)) => Some(batch.topic.as_str()),
        (None, None) => None,
    };
    let checked = match topic {
        Some(topic) => state.auth.check(caller, &[Target::topic(topic)]),
        None => Ok(()),
    };
    if let (Ok(()), Some(topic)) = (&checked, topic) {
        state
            .queues
            .make_room(topic, || prost::Message::encoded_len(&item))
            .await;
    }
    let request_id = item.request_id;
    match (checked, item.request, item.batch) {
        // A revoked or expired token ends the stream; a denied topic fails that
        // request only.
        (Err(status), _, _) if status.code() == tonic::Code::Unauthenticated => Step::End(status),
        (Err(status), _, _) => Step::Failed { request_id, status },
        (Ok(()), Some(request), None) => Step::Messages {
            request_id,
            request,
        },
        (Ok(()), None, Some(batch)) => Step::Batch { request_id, batch },
        (Ok(()), Some(_), Some(_)) => Step::Failed {
            request_id,
            status: Status::invalid_argument(
                "PublishStreamRequest has both request and batch; set one per request",
            ),
        },
        (Ok(()), None, None) => Step::Failed {
            request_id,
            status: Status::invalid_argument(
                "PublishStreamRequest.request is missing; set it (or batch) to the publish to perform",
            ),
        },
    }
}

/// Appends the batch requests taken (emptying `batches`), pushing their answers.
fn append_batches(
    state: &AppState,
    batches: &mut Vec<(u64, PublishBatchRequest)>,
    answers: &mut Vec<Pending>,
) {
    if batches.is_empty() {
        return;
    }
    let (ids, requests): (Vec<u64>, Vec<PublishBatchRequest>) = batches.drain(..).unzip();
    let written = crate::batch::append_all(state, requests);
    answers.extend(
        ids.into_iter()
            .zip(written)
            .map(|(request_id, outcome)| Pending::Request {
                request_id,
                outcome: outcome.map(Appended::Batch),
            }),
    );
}

/// `first` and, when it is a batch request, the requests that follow it and have
/// already arrived, while they are batch requests too: at most
/// [`STREAM_READ_AHEAD_MAX`] requests, stopping once they hold
/// [`STREAM_READ_AHEAD_BYTES`] of batches. The end of the stream or an error is taken
/// as the last item.
async fn read_ahead<S>(first: Option<S::Item>, inbound: &mut S) -> Vec<Option<S::Item>>
where
    S: Stream<Item = Result<PublishStreamRequest, Status>> + Unpin,
{
    let mut arrived = vec![first];
    let mut bytes = 0;
    while let Some(Some(Ok(PublishStreamRequest {
        batch: Some(batch), ..
    }))) = arrived.last()
    {
        bytes += batch.batch.len();
        if arrived.len() >= STREAM_READ_AHEAD_MAX || bytes >= STREAM_READ_AHEAD_BYTES {
            break;
        }
        match next_if_arrived(inbound).await {
            Poll::Ready(next) => arrived.push(next),
            Poll::Pending => break,
        }
    }
    arrived
}

/// The stream's next item if it has arrived, without waiting for one.
async fn next_if_arrived<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_next(cx))).await
}

fn shutting_down() -> Status {
    crate::shutdown::unavailable("retry against the restarted broker")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(request_id: u64, bytes: usize) -> Result<PublishStreamRequest, Status> {
        Ok(PublishStreamRequest {
            request_id,
            request: None,
            batch: Some(PublishBatchRequest {
                batch: vec![0; bytes].into(),
                ..Default::default()
            }),
        })
    }

    fn messages(request_id: u64) -> Result<PublishStreamRequest, Status> {
        Ok(PublishStreamRequest {
            request_id,
            request: Some(PublishRequest::default()),
            batch: None,
        })
    }

    /// The request ids taken; `None` for the end of the stream, `u64::MAX` for an error.
    fn ids(taken: &[Option<Result<PublishStreamRequest, Status>>]) -> Vec<Option<u64>> {
        taken
            .iter()
            .map(|item| {
                item.as_ref()
                    .map(|r| r.as_ref().map_or(u64::MAX, |r| r.request_id))
            })
            .collect()
    }

    /// `first`, then `rest` as arrived, then nothing more yet (the stream pends), or
    /// the end of the stream when `ends`.
    async fn taken(
        first: Result<PublishStreamRequest, Status>,
        rest: Vec<Result<PublishStreamRequest, Status>>,
        ends: bool,
    ) -> Vec<Option<u64>> {
        let arrived = tokio_stream::iter(rest);
        if ends {
            ids(&read_ahead(Some(first), &mut Box::pin(arrived)).await)
        } else {
            let mut stream = Box::pin(arrived.chain(tokio_stream::pending()));
            ids(&read_ahead(Some(first), &mut stream).await)
        }
    }

    #[tokio::test]
    async fn read_ahead_takes_the_batches_that_arrived_up_to_its_limits() {
        let small = |n| (1..n).map(|i| batch(i, 100)).collect::<Vec<_>>();
        let upto = |n: u64| (0..n).map(Some).collect::<Vec<_>>();
        // As many as have arrived, up to the count limit.
        assert_eq!(taken(batch(0, 100), small(5), false).await, upto(5));
        assert_eq!(
            taken(batch(0, 100), small(40), false).await,
            upto(STREAM_READ_AHEAD_MAX as u64)
        );
        // Large batches: it stops once they hold the byte limit.
        let mib = 1 << 20;
        let large = (1..10).map(|i| batch(i, mib)).collect();
        let limit = (STREAM_READ_AHEAD_BYTES / mib) as u64;
        assert_eq!(taken(batch(0, mib), large, false).await, upto(limit));
        let huge = vec![batch(1, 100)];
        assert_eq!(
            taken(batch(0, STREAM_READ_AHEAD_BYTES), huge, false).await,
            upto(1)
        );
        // A per-message request is not read ahead of, nor past.
        assert_eq!(taken(messages(0), small(5), false).await, upto(1));
        let mixed = vec![batch(1, 100), messages(2), batch(3, 100)];
        assert_eq!(taken(batch(0, 100), mixed, false).await, upto(3));
        // The end of the stream and an error are taken as the last item.
        assert_eq!(
            taken(batch(0, 100), small(3), true).await,
            vec![Some(0), Some(1), Some(2), None]
        );
        let failed = vec![
            batch(1, 100),
            Err(Status::invalid_argument("x")),
            batch(3, 1),
        ];
        assert_eq!(
            taken(batch(0, 100), failed, false).await,
            vec![Some(0), Some(1), Some(u64::MAX)]
        );
    }
}
