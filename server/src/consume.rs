//! The `tidelog.v1.Consumer` service: `Fetch` (unary, long poll) and `Subscribe`
//! (server stream), plus [`PartitionReader`], the reader that group members use too.
//!
//! Reads come straight from the segment mappings: the `Bytes` of keys and values
//! point into the mapping and go to the encoder as they are. Waiting for new data
//! uses the storage engine's `wait_for_data` futures (woken by the append or the
//! group commit that makes data visible), never a poll loop.
//!
//! Memory per Subscribe stream is bounded by [`SUBSCRIBE_QUEUE_EVENTS`] events of at
//! most `max_batch_bytes` each (one message can exceed it, up to the topic's
//! `max_message_bytes`): the reader task only reads the next batch once the queue has
//! room, and the queue only drains as fast as HTTP/2 flow control lets the client
//! receive. A slow subscriber therefore slows its own reader and nothing else.

use std::collections::HashSet;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tidelog_proto::v1::consumer_server::Consumer;
use tidelog_proto::v1::{
    ConsumedMessage, FetchRequest, FetchResponse, MessageBatch, PositionReset, ResetPolicy,
    ResetReason, SubscribeRequest, SubscribeResponse, start_position::Position,
    subscribe_response::Event,
};
use tidelog_storage::{Error, Partition, ReadResult, Topic};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::convert;

/// Messages per Fetch or batch when the client leaves it at 0.
pub const READ_MESSAGES_DEFAULT: u32 = 500;
/// Most messages per Fetch or batch, whatever the client asks.
pub const READ_MESSAGES_MAX: u32 = 10_000;
/// Bytes per Fetch or batch (soft) when the client leaves it at 0.
pub const READ_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Largest byte budget per Fetch or batch (soft: one message may be larger).
pub const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Longest long poll of a Fetch, whatever the client asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// A long poll answers this much before the call's deadline, so the answer arrives
/// in time instead of a DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
/// Events (message batches, resets) queued per Subscribe stream ahead of the client.
pub const SUBSCRIBE_QUEUE_EVENTS: usize = 4;
/// Reads in a row that only skip expired messages before a reader yields.
const EXPIRED_SKIPS_MAX: u32 = 64;

/// How much one read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_messages: u32,
    pub max_bytes: u64,
}

impl ReadLimits {
    /// The client's values (0 = default), capped at the server's maximums.
    pub fn from_request(max_messages: u32, max_bytes: u32) -> Self {
        ReadLimits {
            max_messages: match max_messages {
                0 => READ_MESSAGES_DEFAULT,
                n => n.min(READ_MESSAGES_MAX),
            },
            max_bytes: match max_bytes {
                0 => READ_BYTES_DEFAULT,
                n => u64::from(n).min(READ_BYTES_MAX),
            },
        }
    }
}

/// The Consumer service.
#[derive(Debug, Clone)]
pub struct ConsumerService {
    state: Arc<AppState>,
}

impl ConsumerService {
    pub fn new(state: Arc<AppState>) -> Self {
        ConsumerService { state }
    }

    async fn fetch(&self, request: &Request<FetchRequest>) -> Result<FetchResponse, Status> {
        let deadline = grpc_timeout(request.metadata());
        let request = request.get_ref();
        let topic = convert::or_status(self.state.store.topic(&request.topic))?;
        let partition = convert::or_status(topic.partition(request.partition))?.clone();
        let limits = ReadLimits::from_request(request.max_messages, request.max_bytes);
        let mut wait = Duration::from_millis(request.max_wait_ms).min(FETCH_WAIT_MAX);
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        let mut result = read(&partition, request.offset, limits)?;
        if result.records.is_empty() && result.next_offset == result.end_offset && !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::timeout(wait, partition.wait_for_data(result.next_offset)) => {}
                _ = self.state.shutdown.wait() => {}
            }
            result = read(&partition, result.next_offset, limits)?;
        }
        let bytes = result
            .records
            .iter()
            .map(tidelog_storage::Record::payload_bytes)
            .sum();
        self.state
            .metrics
            .fetched(topic.name(), result.records.len() as u64, bytes);
        let id = partition.id();
        Ok(FetchResponse {
            next_offset: result.next_offset,
            log_start_offset: result.log_start,
            end_offset: result.end_offset,
            messages: result
                .records
                .into_iter()
                .map(|r| convert::consumed_message(id, r))
                .collect(),
        })
    }
}

fn read(partition: &Partition, offset: u64, limits: ReadLimits) -> Result<ReadResult, Status> {
    convert::or_status(partition.read(offset, limits.max_messages, limits.max_bytes))
}

/// The call's deadline from the `grpc-timeout` header ("<digits><unit>", unit one of
/// H M S m u n), if the client set one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    // ASCII only, so the split below falls on a character boundary.
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// One partition a [`PartitionReader`] follows.
#[derive(Debug)]
struct Cursor {
    partition: Arc<Partition>,
    /// The next offset to deliver.
    position: u64,
    /// Poisoned: nothing will be appended until a restart, so stop waiting on it
    /// (its wait future resolves at once and would make the reader spin).
    parked: bool,
}

/// Follows a set of partitions of one topic from given positions and yields their
/// messages as [`SubscribeResponse`] events, waiting (without spinning) when all are
/// caught up. Used by the plain Subscribe and by consumer-group members.
///
/// - Each [`PartitionReader::next_event`] returns one event: a [`MessageBatch`] from
///   one partition (partitions take turns, so a busy one does not starve the others),
///   or a [`PositionReset`] when a position fell outside the log and the reset
///   policy moved it (counted in the `tidelog_position_resets` metric). With
///   `RESET_POLICY_ERROR` it returns OUT_OF_RANGE instead.
/// - It is cancel-safe: dropping the future (e.g. in `tokio::select!` against a
///   rebalance signal) loses nothing; positions only move when an event is returned.
/// - It ends with UNAVAILABLE when the broker shuts down, NOT_FOUND when the topic is
///   deleted, DATA_LOSS on a corrupt batch.
///
/// [`PartitionReader::positions`] gives the next offset of each partition after the
/// events returned so far (what an auto-commit would store).
#[derive(Debug)]
pub struct PartitionReader {
    state: Arc<AppState>,
    topic: Arc<Topic>,
    cursors: Vec<Cursor>,
    /// Index of the cursor that reads first next time (round robin).
    turn: usize,
    reset_policy: ResetPolicy,
    limits: ReadLimits,
}

impl PartitionReader {
    /// A reader of `starts` (partition, first offset) of `topic`. A start outside a
    /// partition's log is handled by the reset policy on the first read, so callers
    /// can pass a remembered or committed offset as it is.
    pub fn new(
        state: Arc<AppState>,
        topic: Arc<Topic>,
        starts: &[(u32, u64)],
        reset_policy: ResetPolicy,
        limits: ReadLimits,
    ) -> Result<Self, Status> {
        let cursors = starts
            .iter()
            .map(|&(id, position)| {
                Ok(Cursor {
                    partition: convert::or_status(topic.partition(id))?.clone(),
                    position,
                    parked: false,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(PartitionReader {
            state,
            topic,
            cursors,
            turn: 0,
            reset_policy,
            limits,
        })
    }

    /// (partition, next offset to deliver) for every partition read.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.cursors
            .iter()
            .map(|c| (c.partition.id(), c.position))
            .collect()
    }

    /// Waits for and returns the next event. Cancel-safe (see the type's docs).
    pub async fn next_event(&mut self) -> Result<SubscribeResponse, Status> {
        let mut woke_empty = false;
        loop {
            if self.state.shutdown.is_triggered() {
                return Err(Status::unavailable(
                    "the broker is shutting down; subscribe again once it is back",
                ));
            }
            if !self.topic_still_exists() {
                return Err(Status::not_found(format!(
                    "topic {:?} was deleted",
                    self.topic.name()
                )));
            }
            let count = self.cursors.len();
            for step in 0..count {
                let index = (self.turn + step) % count;
                if let Some(event) = self.poll_cursor(index)? {
                    self.turn = (index + 1) % count;
                    return Ok(event);
                }
            }
            if woke_empty {
                // Woken with nothing to read: a partition was poisoned (its wait
                // resolves at once from now on). Stop waiting on such partitions.
                for cursor in &mut self.cursors {
                    if !cursor.parked && cursor.partition.poisoned().is_some() {
                        tracing::warn!(
                            topic = self.topic.name(),
                            partition = cursor.partition.id(),
                            "partition is poisoned: the subscription stops waiting for it"
                        );
                        cursor.parked = true;
                    }
                }
            }
            let mut waits: Vec<_> = self
                .cursors
                .iter()
                .filter(|c| !c.parked)
                .map(|c| c.partition.wait_for_data(c.position))
                .collect();
            let any_data = poll_fn(|cx| {
                for wait in &mut waits {
                    if Pin::new(wait).poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                _ = any_data => {}
                _ = self.state.shutdown.wait() => {}
            }
            woke_empty = true;
        }
    }

    fn topic_still_exists(&self) -> bool {
        self.state
            .store
            .topic(self.topic.name())
            .is_ok_and(|t| Arc::ptr_eq(&t, &self.topic))
    }

    /// Reads the cursor's next batch, or applies the reset policy. `None` when it is
    /// caught up.
    fn poll_cursor(&mut self, index: usize) -> Result<Option<SubscribeResponse>, Status> {
        let limits = self.limits;
        let cursor = &mut self.cursors[index];
        for _ in 0..EXPIRED_SKIPS_MAX {
            let result =
                cursor
                    .partition
                    .read(cursor.position, limits.max_messages, limits.max_bytes);
            match result {
                Ok(result) if !result.records.is_empty() => {
                    cursor.position = result.next_offset;
                    let id = cursor.partition.id();
                    let bytes = result
                        .records
                        .iter()
                        .map(tidelog_storage::Record::payload_bytes)
                        .sum();
                    self.state.metrics.fetched(
                        self.topic.name(),
                        result.records.len() as u64,
                        bytes,
                    );
                    let messages: Vec<ConsumedMessage> = result
                        .records
                        .into_iter()
                        .map(|r| convert::consumed_message(id, r))
                        .collect();
                    return Ok(Some(SubscribeResponse {
                        event: Some(Event::Batch(MessageBatch { messages })),
                    }));
                }
                // Only expired messages were skipped: look again from past them.
                Ok(result) if result.next_offset > cursor.position => {
                    cursor.position = result.next_offset;
                }
                Ok(_) => return Ok(None),
                Err(Error::OffsetOutOfRange {
                    requested,
                    log_start,
                    end,
                    ..
                }) => {
                    let (reason, label) = if requested < log_start {
                        (ResetReason::BelowLogStart, "below_log_start")
                    } else {
                        (ResetReason::AboveEndOffset, "above_end_offset")
                    };
                    let to_offset = match self.reset_policy {
                        ResetPolicy::Latest => end,
                        ResetPolicy::Error => {
                            return Err(convert::status(&Error::OffsetOutOfRange {
                                partition: format!(
                                    "{}/{}",
                                    self.topic.name(),
                                    cursor.partition.id()
                                ),
                                requested,
                                log_start,
                                end,
                            }));
                        }
                        ResetPolicy::Earliest | ResetPolicy::Unspecified => log_start,
                    };
                    cursor.position = to_offset;
                    self.state.metrics.position_reset(self.topic.name(), label);
                    return Ok(Some(SubscribeResponse {
                        event: Some(Event::PositionReset(PositionReset {
                            partition: cursor.partition.id(),
                            from_offset: Some(requested),
                            to_offset,
                            reason: reason as i32,
                        })),
                    }));
                }
                Err(error) => return Err(convert::status(&error)),
            }
        }
        Ok(None)
    }
}

/// Where a plain (group-less) subscription starts in `partition`.
fn start_offset(partition: &Partition, position: Option<Position>) -> Result<u64, Status> {
    Ok(match position {
        Some(Position::Earliest(_)) => partition.log_start(),
        None | Some(Position::Latest(_)) => partition.end_offset(),
        Some(Position::Offset(offset)) => offset,
        Some(Position::TimestampMs(timestamp)) => {
            convert::or_status(partition.offset_for_timestamp(timestamp))?
                .unwrap_or_else(|| partition.end_offset())
        }
    })
}

/// Runs `reader` into a bounded queue until the client goes away or the reader
/// ends, and returns the receiving side as the response stream.
pub fn spawn_subscription(
    state: &Arc<AppState>,
    mut reader: PartitionReader,
) -> ReceiverStream<Result<SubscribeResponse, Status>> {
    let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE_EVENTS);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let _guard = metrics.open_stream("subscribe");
        let mut final_error = None;
        loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                // The client went away while the reader waited for data.
                _ = tx.closed() => break,
            };
            if let Err(status) = &event {
                final_error = Some(status.code());
            }
            let end = event.is_err();
            if tx.send(event).await.is_err() || end {
                break;
            }
        }
        metrics.rpc_finished("Subscribe", started, final_error);
    });
    ReceiverStream::new(rx)
}

/// A plain subscription: checks the request, resolves the start of every partition.
fn plain_subscription(
    state: &Arc<AppState>,
    request: SubscribeRequest,
) -> Result<PartitionReader, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    let reset_policy = convert::reset_policy(request.reset_policy)?;
    let ids: Vec<u32> = if request.partitions.is_empty() {
        (0..topic.partitions().len() as u32).collect()
    } else {
        let mut seen = HashSet::new();
        if let Some(duplicate) = request.partitions.iter().find(|p| !seen.insert(**p)) {
            return Err(Status::invalid_argument(format!(
                "partition {duplicate} is listed twice in partitions; list each once"
            )));
        }
        request.partitions.clone()
    };
    let position = request.start.and_then(|s| s.position);
    let mut starts = Vec::with_capacity(ids.len());
    for id in ids {
        let partition = convert::or_status(topic.partition(id))?;
        starts.push((id, start_offset(partition, position)?));
    }
    PartitionReader::new(
        state.clone(),
        topic,
        &starts,
        reset_policy,
        ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes),
    )
}

/// The Subscribe stream type: a plain subscription or a group member's stream.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let started = Instant::now();
        let result = ConsumerService::fetch(self, &request).await;
        self.state
            .metrics
            .rpc_finished("Fetch", started, result.as_ref().err().map(Status::code));
        result.map(Response::new)
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let remote_addr = request.remote_addr();
        let request = request.into_inner();
        let result: Result<SubscribeStream, Status> = if self.state.shutdown.is_triggered() {
            Err(Status::unavailable("the broker is shutting down"))
        } else if request.group.is_some() {
            if !request.partitions.is_empty() || request.start.is_some() {
                Err(Status::invalid_argument(
                    "partitions and start must be empty with a group: the broker assigns partitions and starts at the group's committed offsets (move them with Groups.ResetOffsets)",
                ))
            } else {
                crate::groups::subscribe_member(self.state.clone(), request, remote_addr)
                    .await
                    .map(|stream| Box::pin(stream) as SubscribeStream)
            }
        } else {
            plain_subscription(&self.state, request)
                .map(|reader| Box::pin(spawn_subscription(&self.state, reader)) as SubscribeStream)
        };
        if let Err(status) = &result {
            // Streams that start are counted when they end (in spawn_subscription).
            self.state
                .metrics
                .rpc_finished("Subscribe", started, Some(status.code()));
        }
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limits_default_and_cap() {
        assert_eq!(
            ReadLimits::from_request(0, 0),
            ReadLimits {
                max_messages: READ_MESSAGES_DEFAULT,
                max_bytes: READ_BYTES_DEFAULT
            }
        );
        assert_eq!(
            ReadLimits::from_request(u32::MAX, u32::MAX),
            ReadLimits {
                max_messages: READ_MESSAGES_MAX,
                max_bytes: READ_BYTES_MAX
            }
        );
        assert_eq!(ReadLimits::from_request(3, 100).max_bytes, 100);
    }

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        for (text, expected) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            metadata.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(grpc_timeout(&metadata), Some(expected), "{text}");
        }
        metadata.insert("grpc-timeout", "xS".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }
}
