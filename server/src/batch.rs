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
//! here; this module imports neither. A `SubscribeBatches` stream without a group is
//! the plain reader's batch form ([`crate::read::PartitionReader::in_batch_form`]); the
//! batch reads themselves are in [`crate::read::batches`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, MessageAck, PublishBatchRequest, PublishBatchResponse,
};
use tidelog_storage::client_batch::{CheckedBatch, ClientBatch};
use tidelog_storage::{AckLevel, BatchPlaced, BatchReadResult, Filter, Partition, Topic};
use tonic::Status;

use crate::AppState;
use crate::convert;
use crate::read::ReadLimits;
use crate::read::batches::{delivered, read_partition, stored};

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
    append_all(state, vec![request]).pop().unwrap_or_else(|| {
        Err(Status::internal(
            "an append of one batch returned no result",
        ))
    })
}

/// [`append`] for requests that came one after the other (on one PublishStream), one
/// result a request, in their order. The requests to one topic are appended together
/// ([`tidelog_storage::Topic::append_batches_admitted`]): each partition's batches in one
/// write, which costs the page cache less a byte, and in request order wherever the
/// topic's dedup window has a say. Topics are independent (ids are per topic), so
/// requests to different topics may be appended in any order.
pub fn append_all(
    state: &AppState,
    requests: Vec<PublishBatchRequest>,
) -> Vec<Result<BatchWritten, Status>> {
    let count = requests.len();
    // topic -> the requests' places and the requests, in order.
    let mut groups: Vec<(Vec<usize>, Vec<PublishBatchRequest>)> = Vec::new();
    for (place, request) in requests.into_iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(_, group)| group[0].topic == request.topic)
        {
            Some((places, group)) => {
                places.push(place);
                group.push(request);
            }
            None => groups.push((vec![place], vec![request])),
        }
    }
    let mut results: Vec<Option<Result<BatchWritten, Status>>> = Vec::new();
    results.resize_with(count, || None);
    let mut written = Vec::with_capacity(count);
    for (places, group) in groups {
        append_group(state, group, &mut written);
        for (place, result) in places.into_iter().zip(written.drain(..)) {
            results[place] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(Status::internal("a batch request was not appended")))
        })
        .collect()
}

/// Appends requests to one topic, pushing one result a request.
fn append_group(
    state: &AppState,
    group: Vec<PublishBatchRequest>,
    results: &mut Vec<Result<BatchWritten, Status>>,
) {
    let topic = match convert::or_status(state.store.topic(&group[0].topic)) {
        Ok(topic) => topic,
        Err(status) => {
            results.extend(group.iter().map(|_| Err(status.clone())));
            return;
        }
    };
    // A request with an unknown ack level fails alone; the others are appended.
    let acks: Vec<(u32, Result<AckLevel, Status>)> = group
        .iter()
        .map(|r| (r.partition, convert::ack_level(r.ack)))
        .collect();
    let batches = group
        .into_iter()
        .zip(&acks)
        .filter(|(_, (_, ack))| ack.is_ok())
        .map(|(request, _)| ClientBatch {
            partition: request.partition,
            bytes: request.batch,
            relative_times: request.relative_times,
        })
        .collect();
    // Backpressure (the topic's queue caps), checked on each batch once it is valid.
    let capped = topic.config().has_queue_caps();
    let store = &*state.store;
    let mut appended = topic
        .append_batches_admitted(batches, &mut |messages, bytes| {
            if capped {
                tidelog_storage::queue::admin::admit(store, &topic, messages, bytes)
            } else {
                Ok(())
            }
        })
        .into_iter();
    let first = results.len();
    for (partition, ack) in acks {
        let result = ack.and_then(|ack| {
            let placed = appended.next().unwrap_or_else(|| {
                Err(tidelog_storage::Error::invalid(
                    "an append of batches returned fewer results than batches",
                ))
            });
            written(state, &topic, partition, ack, convert::or_status(placed)?)
        });
        results.push(result);
    }
    // Queue consumers of the topic look for new messages.
    if results[first..].iter().any(Result::is_ok) {
        state.queues.topic_published(&topic);
    }
}

/// The answer to an appended (or deduplicated) batch, and what its ack waits for.
fn written(
    state: &AppState,
    topic: &Topic,
    partition: u32,
    ack: AckLevel,
    (placed, checked): (BatchPlaced, CheckedBatch),
) -> Result<BatchWritten, Status> {
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
    state
        .queues
        .make_room(&request.topic, || request.batch.len())
        .await;
    complete(append(state, request)?).await
}

fn read(
    partition: &Partition,
    offset: u64,
    limits: ReadLimits,
    filter: Option<&Filter>,
) -> Result<BatchReadResult, Status> {
    convert::or_status(read_partition(partition, offset, limits, filter))
}

/// Consumer.FetchBatches: Fetch's long poll, with whole batches.
pub async fn fetch(
    state: &AppState,
    request: &FetchRequest,
    wait: Duration,
) -> Result<FetchBatchesResponse, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    convert::check_topic_id(&topic, request.topic_id, "nothing was read")?;
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
        topic_id: topic.id().get(),
    })
}
