//! Record batches on the wire: `Publisher.PublishBatch` (and batch requests on
//! `PublishStream`), `Consumer.FetchBatches` and `Consumer.SubscribeBatches`.
//!
//! The broker never parses the batch bytes itself: storage validates a published batch
//! (`tidelog_storage::client_batch`) and appends it as it came; reads hand out whole
//! stored batches (`Partition::read_batches`) as `Bytes` slices of the segment
//! mappings, which go to the gRPC encoder without a copy (the encoder copies once into
//! its frame). What a reader must skip in a batch is marked, not re-encoded: see
//! `tidelog_storage::segment::StoredBatch` and the proto's `StoredRecordBatch`.
//!
//! The services' trait methods (in [`crate::publish`] and [`crate::consume`]) call in
//! here; this module imports neither.

use std::collections::HashSet;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, MessageAck, PartitionPosition, PositionReset, Positioned,
    PublishBatchRequest, PublishBatchResponse, RecordBatches, ResetPolicy, ResetReason,
    StoredRecordBatch, SubscribeBatchesResponse, SubscribeRequest, start_position::Position,
    subscribe_batches_response::Event,
};
use tidelog_storage::{AckLevel, BatchReadResult, Error, Filter, Partition, StoredBatch, Topic};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::AppState;
use crate::convert;
use crate::read::{EventSource, ReadLimits, spawn_events};

/// A batch appended (or found a duplicate), and what a DURABLE ack still waits for.
#[derive(Debug)]
pub struct BatchWritten {
    ack: AckLevel,
    response: PublishBatchResponse,
    /// (partition, last offset the ack covers).
    durable_waits: Vec<(Arc<Partition>, u64)>,
}

/// Validates and appends one batch request (storage does the validating).
pub fn append(state: &AppState, request: PublishBatchRequest) -> Result<BatchWritten, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    let ack = convert::ack_level(request.ack)?;
    let partition = request.partition;
    convert::or_status(topic.partition(partition))?;
    let (placed, checked) =
        convert::or_status(topic.append_batch(partition, Vec::from(request.batch)))?;
    let count = checked.header.record_count;
    let mut durable_waits = Vec::new();
    let response = match placed.appended {
        Some(appended) => {
            state
                .metrics
                .published(topic.name(), u64::from(count), checked.payload_bytes);
            durable_waits.push((
                convert::or_status(topic.partition(partition))?.clone(),
                appended.last_offset,
            ));
            PublishBatchResponse {
                partition,
                base_offset: appended.base_offset,
                count,
                duplicate: false,
                acks: Vec::new(),
            }
        }
        None => {
            state
                .metrics
                .duplicates(topic.name(), placed.duplicates.len() as u64);
            let mut acks = Vec::with_capacity(placed.duplicates.len());
            for placement in placed.duplicates {
                let original = convert::or_status(topic.partition(placement.partition))?;
                durable_waits.push((original.clone(), placement.offset));
                acks.push(MessageAck {
                    partition: placement.partition,
                    offset: placement.offset,
                    id: Default::default(),
                    duplicate: true,
                });
            }
            PublishBatchResponse {
                partition,
                base_offset: 0,
                count,
                duplicate: true,
                acks,
            }
        }
    };
    state.queues.topic_published(&topic);
    Ok(BatchWritten {
        ack,
        response,
        durable_waits,
    })
}

/// Waits for what the ack level requires and returns the response.
pub async fn complete(written: BatchWritten) -> Result<PublishBatchResponse, Status> {
    match written.ack {
        AckLevel::None => Ok(PublishBatchResponse {
            partition: written.response.partition,
            count: written.response.count,
            ..PublishBatchResponse::default()
        }),
        AckLevel::Written => Ok(written.response),
        AckLevel::Durable => {
            for (partition, last_offset) in written.durable_waits {
                convert::or_status(partition.wait_durable(last_offset).await)?;
            }
            Ok(written.response)
        }
    }
}

/// Publisher.PublishBatch.
pub async fn publish(
    state: &AppState,
    request: PublishBatchRequest,
) -> Result<PublishBatchResponse, Status> {
    complete(append(state, request)?).await
}

/// A stored batch as the proto carries it (its bytes stay a slice of the mapping).
fn stored(batch: StoredBatch) -> StoredRecordBatch {
    StoredRecordBatch {
        batch: batch.bytes,
        base_offset: batch.base_offset,
        record_count: batch.record_count,
        skip_front: batch.skip_front,
        skip: batch.skip,
    }
}

fn read(
    partition: &Partition,
    offset: u64,
    limits: ReadLimits,
    filter: Option<&Filter>,
) -> Result<BatchReadResult, Status> {
    convert::or_status(read_partition(partition, offset, limits, filter))
}

/// One batch-form read of `partition` from `offset`: what Fetch's, SubscribeBatches'
/// and a batch-form group member's reads all are.
pub(crate) fn read_partition(
    partition: &Partition,
    offset: u64,
    limits: ReadLimits,
    filter: Option<&Filter>,
) -> tidelog_storage::Result<BatchReadResult> {
    partition.read_batches(offset, limits.max_messages, limits.max_bytes, filter)
}

/// A read of one partition as the RecordBatches event of a SubscribeBatches stream;
/// `topic` names the partition's topic on a stream of several topics ("" otherwise).
pub(crate) fn record_batches(
    partition: u32,
    result: BatchReadResult,
    topic: &str,
) -> SubscribeBatchesResponse {
    SubscribeBatchesResponse {
        event: Some(Event::Batches(RecordBatches {
            partition,
            batches: result.batches.into_iter().map(stored).collect(),
            position: Some(PartitionPosition {
                partition,
                next_offset: result.next_offset,
                end_offset: result.end_offset,
                topic: topic.to_string(),
            }),
            now_ms: result.now_ms,
        })),
    }
}

/// Records the client receives (a batch's records less those it skips) and bytes of
/// `batches`, for the fetched metrics.
pub(crate) fn delivered(batches: &[StoredBatch]) -> (u64, u64) {
    batches.iter().fold((0, 0), |(records, bytes), b| {
        (
            records + u64::from(b.delivered()),
            bytes + b.bytes.len() as u64,
        )
    })
}

/// Consumer.FetchBatches: Fetch's long poll, with whole batches.
pub async fn fetch(
    state: &AppState,
    request: &FetchRequest,
    wait: Duration,
) -> Result<FetchBatchesResponse, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    let partition = convert::or_status(topic.partition(request.partition))?.clone();
    let limits = ReadLimits::from_request(request.max_messages, request.max_bytes);
    let filter = convert::filter(&request.filter)?;
    let filter = filter.as_deref();
    let started = Instant::now();
    let mut result = read(&partition, request.offset, limits, filter)?;
    let mut filtered = result.filtered;
    while result.batches.is_empty() && result.next_offset == result.end_offset {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() || state.shutdown.is_triggered() {
            break;
        }
        tokio::select! {
            _ = tokio::time::timeout(left, partition.wait_for_data(result.next_offset)) => {}
            _ = state.shutdown.wait() => {}
        }
        let from = result.next_offset;
        result = read(&partition, from, limits, filter)?;
        filtered.skipped += result.filtered.skipped;
        filtered.not_json += result.filtered.not_json;
        if filter.is_none() || result.next_offset == from {
            break;
        }
    }
    state.metrics.filtered("fetch", filtered);
    let (records, bytes) = delivered(&result.batches);
    state.metrics.fetched(topic.name(), records, bytes);
    Ok(FetchBatchesResponse {
        batches: result.batches.into_iter().map(stored).collect(),
        next_offset: result.next_offset,
        log_start_offset: result.log_start,
        end_offset: result.end_offset,
        now_ms: result.now_ms,
    })
}

/// Reads a plain subscription's partitions in batch form, one partition per event,
/// partitions taking turns; waits for data when caught up. The batch twin of
/// [`crate::read::PartitionReader`] (group members in batch form are
/// [`crate::groups::subscribe_member_batches`]).
#[derive(Debug)]
pub struct BatchReader {
    state: Arc<AppState>,
    topic: Arc<Topic>,
    /// (partition, next offset).
    cursors: Vec<(Arc<Partition>, u64)>,
    parked: Vec<bool>,
    turn: usize,
    reset_policy: ResetPolicy,
    limits: ReadLimits,
    filter: Option<Arc<Filter>>,
    first: Option<SubscribeBatchesResponse>,
}

/// Where a plain subscription starts in `partition`.
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

impl BatchReader {
    /// Checks a SubscribeBatches request and fixes every partition's start.
    pub fn new(state: Arc<AppState>, request: SubscribeRequest) -> Result<Self, Status> {
        if request.group.is_some() {
            return Err(Status::internal(
                "a group member's SubscribeBatches is served by the group coordinator",
            ));
        }
        let topic = convert::or_status(state.store.topic(&request.topic))?;
        let reset_policy = convert::reset_policy(request.reset_policy)?;
        let limits = ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes);
        let filter = convert::filter(&request.filter)?;
        let mut starts: Vec<(u32, Option<u64>)> = Vec::new();
        let mut seen = HashSet::new();
        if !request.partition_starts.is_empty() {
            if !request.partitions.is_empty() || request.start.is_some() {
                return Err(Status::invalid_argument(
                    "partition_starts names the partitions and their starts: leave partitions and start empty",
                ));
            }
            for start in &request.partition_starts {
                if !seen.insert(start.partition) {
                    return Err(Status::invalid_argument(format!(
                        "partition {} is listed twice in partition_starts; list each once",
                        start.partition
                    )));
                }
                starts.push((start.partition, Some(start.offset)));
            }
        } else if request.partitions.is_empty() {
            starts.extend((0..topic.partitions().len() as u32).map(|p| (p, None)));
        } else {
            for &partition in &request.partitions {
                if !seen.insert(partition) {
                    return Err(Status::invalid_argument(format!(
                        "partition {partition} is listed twice in partitions; list each once"
                    )));
                }
                starts.push((partition, None));
            }
        }
        let position = request.start.and_then(|s| s.position);
        let mut cursors = Vec::with_capacity(starts.len());
        for (id, offset) in starts {
            let partition = convert::or_status(topic.partition(id))?.clone();
            let offset = match offset {
                Some(offset) => offset,
                None => start_offset(&partition, position)?,
            };
            cursors.push((partition, offset));
        }
        let first = request.send_positioned.then(|| SubscribeBatchesResponse {
            event: Some(Event::Positioned(Positioned {
                positions: cursors
                    .iter()
                    .map(|(p, offset)| PartitionPosition {
                        partition: p.id(),
                        next_offset: *offset,
                        end_offset: p.end_offset(),
                        // Batch streams read one topic: empty, as on single-topic
                        // Subscribe streams.
                        topic: String::new(),
                    })
                    .collect(),
            })),
        });
        Ok(BatchReader {
            state,
            topic,
            parked: vec![false; cursors.len()],
            cursors,
            turn: 0,
            reset_policy,
            limits,
            filter,
            first,
        })
    }

    /// Waits for and returns the next event. Cancel-safe: a read's result is returned
    /// in the same poll that made it.
    pub async fn next_event(&mut self) -> Result<SubscribeBatchesResponse, Status> {
        if let Some(event) = self.first.take() {
            return Ok(event);
        }
        let mut woke_empty = false;
        loop {
            if self.state.shutdown.is_triggered() {
                return Err(Status::unavailable(
                    "the broker is shutting down; subscribe again once it is back",
                ));
            }
            if !self
                .state
                .store
                .topic(self.topic.name())
                .is_ok_and(|t| t.is_same_topic(&self.topic))
            {
                return Err(Status::not_found(format!(
                    "topic {:?} was deleted",
                    self.topic.name()
                )));
            }
            for step in 0..self.cursors.len() {
                let index = (self.turn + step) % self.cursors.len();
                let (partition, position) = &self.cursors[index];
                let partition = partition.clone();
                let from = *position;
                let result =
                    match read_partition(&partition, from, self.limits, self.filter.as_deref()) {
                        Ok(result) => result,
                        Err(Error::OffsetOutOfRange {
                            requested,
                            log_start,
                            end,
                            ..
                        }) => return self.reset(index, requested, log_start, end),
                        Err(error) => return Err(convert::status(&error)),
                    };
                self.state.metrics.filtered("subscribe", result.filtered);
                self.cursors[index].1 = result.next_offset;
                if result.batches.is_empty() && result.next_offset == from {
                    continue;
                }
                self.turn = (index + 1) % self.cursors.len();
                let (records, bytes) = delivered(&result.batches);
                self.state
                    .metrics
                    .fetched(self.topic.name(), records, bytes);
                // Batch streams without a group read one topic: positions name none.
                return Ok(record_batches(partition.id(), result, ""));
            }
            if woke_empty {
                for ((partition, _), parked) in self.cursors.iter().zip(&mut self.parked) {
                    if !*parked && partition.poisoned().is_some() {
                        *parked = true;
                    }
                }
            }
            let mut waits: Vec<_> = self
                .cursors
                .iter()
                .zip(&self.parked)
                .filter(|(_, parked)| !**parked)
                .map(|((p, position), _)| p.wait_for_data(*position))
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

    fn reset(
        &mut self,
        index: usize,
        requested: u64,
        log_start: u64,
        end: u64,
    ) -> Result<SubscribeBatchesResponse, Status> {
        let partition = self.cursors[index].0.id();
        let (reason, label) = if requested < log_start {
            (ResetReason::BelowLogStart, "below_log_start")
        } else {
            (ResetReason::AboveEndOffset, "above_end_offset")
        };
        let to_offset = match self.reset_policy {
            ResetPolicy::Latest => end,
            ResetPolicy::Error => {
                return Err(convert::status(&Error::OffsetOutOfRange {
                    partition: format!("{}/{partition}", self.topic.name()),
                    requested,
                    log_start,
                    end,
                }));
            }
            ResetPolicy::Earliest | ResetPolicy::Unspecified => log_start,
        };
        self.cursors[index].1 = to_offset;
        self.state.metrics.position_reset(self.topic.name(), label);
        Ok(SubscribeBatchesResponse {
            event: Some(Event::PositionReset(PositionReset {
                partition,
                from_offset: Some(requested),
                to_offset,
                reason: reason as i32,
                topic: String::new(),
            })),
        })
    }
}

impl EventSource for BatchReader {
    type Event = SubscribeBatchesResponse;

    fn next_stream_event(
        &mut self,
    ) -> impl Future<Output = Result<SubscribeBatchesResponse, Status>> + Send + '_ {
        self.next_event()
    }
}

/// Runs `reader` as Subscribe runs its reader ([`spawn_events`]) and returns the
/// receiving side as the response stream.
pub fn spawn(
    state: &Arc<AppState>,
    reader: BatchReader,
) -> ReceiverStream<Result<SubscribeBatchesResponse, Status>> {
    spawn_events(state, "SubscribeBatches", reader)
}
